//! The HTTP side of a run: the client, one request sent and its outcome classified,
//! and the lookups, restocks and searches a run makes besides its load.
use crate::workload::{Op, Request};
use bookstore_common::types::{LookupResponse, SearchResponse};
use std::time::Duration;

use super::results::ErrorKind;
use super::Error;

/// The HTTP client of a run: one pool for all client tasks, large enough that every task
/// keeps its own connection; no Nagle delay.
pub fn http_client(timeout: Duration, max_clients: usize) -> Result<reqwest::Client, Error> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(max_clients.max(1) * 2)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .timeout(timeout)
        .build()
        .map_err(|e| Error(format!("cannot build the HTTP client: {e}")))
}

/// Item numbers found by searching `topics` (sorted, no duplicates; empty if none).
pub async fn discover_items(http: &reqwest::Client, target: &str, topics: &[String]) -> Vec<u32> {
    let base = target.trim_end_matches('/');
    let mut items = Vec::new();
    for t in topics {
        let url = format!(
            "{base}/search?topic={}",
            bookstore_common::client::encode(t)
        );
        let Ok(resp) = http.get(&url).send().await else {
            continue;
        };
        if !resp.status().is_success() {
            continue;
        }
        if let Ok(s) = resp.json::<SearchResponse>().await {
            items.extend(s.result.iter().map(|h| h.item_number.get()));
        }
    }
    items.sort_unstable();
    items.dedup();
    items
}

/// The stock of `item` through the public lookup.
pub async fn lookup_stock(http: &reqwest::Client, target: &str, item: u32) -> Result<u32, Error> {
    let url = format!("{}/lookup?item_number={item}", target.trim_end_matches('/'));
    let resp = http
        .get(&url)
        .send()
        .await
        .map_err(|e| Error(format!("lookup of item {item} failed: {e}")))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(Error(format!("lookup of item {item}: status {status}")));
    }
    let body: LookupResponse = resp
        .json()
        .await
        .map_err(|e| Error(format!("lookup of item {item}: bad answer: {e}")))?;
    Ok(body.result.stock)
}

/// Adds `quantity` copies of `item` through the admin route.
pub async fn restock(
    http: &reqwest::Client,
    target: &str,
    token: &str,
    item: u32,
    quantity: u32,
) -> Result<(), Error> {
    let url = format!(
        "{}/admin/restock?item_number={item}&quantity={quantity}",
        target.trim_end_matches('/')
    );
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| Error(format!("restock of item {item} failed: {e}")))?;
    let status = resp.status();
    let _ = resp.bytes().await;
    if status.is_success() {
        Ok(())
    } else {
        Err(Error(format!("restock of item {item}: status {status}")))
    }
}

pub(super) enum Outcome {
    Ok,
    Bought,
    SoldOut,
    Failed(ErrorKind),
}

fn classify(e: &reqwest::Error) -> ErrorKind {
    if e.is_connect() {
        ErrorKind::Connect
    } else if e.is_timeout() {
        ErrorKind::Timeout
    } else {
        ErrorKind::Other
    }
}

/// Sends one request; returns its outcome and the answer's `Server-Timing` header.
pub(super) async fn send(
    http: &reqwest::Client,
    req: &Request,
    bypass_cache: bool,
) -> (Outcome, Option<String>) {
    let builder = match req.op {
        Op::Buy => http.post(&req.url),
        Op::Lookup | Op::Search if bypass_cache => {
            http.get(&req.url).header("cache-control", "no-cache")
        }
        Op::Lookup | Op::Search => http.get(&req.url),
    };
    let resp = match builder.send().await {
        Ok(r) => r,
        Err(e) => return (Outcome::Failed(classify(&e)), None),
    };
    let timing = resp
        .headers()
        .get(bookstore_common::timing::SERVER_TIMING)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (outcome(req.op, resp).await, timing)
}

async fn outcome(op: Op, resp: reqwest::Response) -> Outcome {
    let status = resp.status().as_u16();
    // Reading the whole body hands the connection back to the pool.
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => return Outcome::Failed(classify(&e)),
    };
    match (op, status) {
        (_, 200) if body.is_empty() => Outcome::Failed(ErrorKind::Other),
        (Op::Buy, 200) => Outcome::Bought,
        (_, 200) => Outcome::Ok,
        (Op::Buy, 409) => Outcome::SoldOut,
        (_, 500..=599) => Outcome::Failed(ErrorKind::Server5xx),
        (_, 400..=499) => Outcome::Failed(ErrorKind::Unexpected4xx),
        _ => Outcome::Failed(ErrorKind::Other),
    }
}
