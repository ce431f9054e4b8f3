//! The chaos workload: buyers, readers (lookups through the frontends, some searches), one
//! reader of the cache itself, and one restocker. Every operation goes to the history.
//! Buys and restocks whose outcome is unknown (timeout, 5xx, connection refused) are
//! retried with the same idempotency key until an answer or the operation's deadline
//! (one buy in four goes without a key, once, to exercise the frontend's fresh keys);
//! the operation spans all its attempts, so its linearization point lies in between.
//!
//! The clients are spread over the frontends (client `p` starts at frontend `p mod n`);
//! after an attempt without an answer a client moves to the next frontend, so a retry
//! goes to another frontend with the same key (any frontend may be down for a while).
use super::history::{History, OpKind, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the clients need to know.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Base URLs of the frontends (at least one).
    pub frontends: Vec<String>,
    pub cache: Option<String>,
    pub cluster_token: bookstore_common::auth::Secret,
    pub admin_token: bookstore_common::auth::Secret,
    /// Books and their starting stock.
    pub books: Vec<u32>,
    pub buyers: usize,
    pub readers: usize,
    /// Mean pause of the restocker between restocks.
    pub restock_every: Duration,
    /// Copies per restock (1..=max).
    pub restock_max: u32,
    /// Books the restocker tops up (the small ones).
    pub restock_books: Vec<u32>,
    /// Give up on an unknown outcome after this long (the op is then `info`).
    pub op_deadline: Duration,
    pub seed: u64,
    pub run_tag: String,
}

/// The answer of one attempt.
enum Attempt {
    Ok(serde_json::Value),
    /// A definite refusal (409 and other 4xx).
    Refused(u16, String),
    /// Unknown: retry.
    Unknown(String),
}

async fn attempt(req: reqwest::RequestBuilder) -> Attempt {
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            match status {
                200 => match serde_json::from_str(&body) {
                    Ok(v) => Attempt::Ok(v),
                    Err(e) => Attempt::Unknown(format!("bad body: {e}")),
                },
                400..=499 if status != 408 && status != 421 && status != 429 => {
                    Attempt::Refused(status, body)
                }
                s => Attempt::Unknown(format!("status {s}")),
            }
        }
        Err(e) => Attempt::Unknown(if e.is_timeout() {
            "timeout".into()
        } else if e.is_connect() {
            "connection refused".into()
        } else {
            "request failed".into()
        }),
    }
}

/// The frontend a client talks to: its own at first, the next one after an attempt that
/// got no answer.
struct Frontend {
    w: Arc<Workload>,
    at: usize,
}

impl Frontend {
    fn new(w: &Arc<Workload>, process: usize) -> Frontend {
        Frontend {
            w: w.clone(),
            at: process % w.frontends.len().max(1),
        }
    }

    fn url(&self) -> &str {
        self.w.frontends.get(self.at).map_or("", String::as_str)
    }

    fn next(&mut self) {
        self.at = (self.at + 1) % self.w.frontends.len().max(1);
    }
}

/// Buys or restocks with retries under one key, each retry on the next frontend:
/// (outcome, answer, error, attempts). `make` builds the request for a frontend's URL.
async fn write_op(
    frontend: &mut Frontend,
    make: impl Fn(&str) -> reqwest::RequestBuilder,
    deadline: Duration,
) -> (Outcome, Option<serde_json::Value>, Option<String>, u32) {
    let start = Instant::now();
    let mut attempts = 0;
    loop {
        attempts += 1;
        match attempt(make(frontend.url())).await {
            Attempt::Ok(v) => return (Outcome::Ok, Some(v), None, attempts),
            Attempt::Refused(409, _) => {
                return (Outcome::Fail, None, Some("out of stock".into()), attempts)
            }
            Attempt::Refused(s, body) => {
                return (
                    Outcome::Fail,
                    None,
                    Some(format!(
                        "status {s}: {}",
                        body.chars().take(120).collect::<String>()
                    )),
                    attempts,
                )
            }
            Attempt::Unknown(e) => {
                frontend.next();
                if start.elapsed() >= deadline {
                    return (Outcome::Info, None, Some(e), attempts);
                }
                tokio::time::sleep(Duration::from_millis(40 + 10 * attempts.min(10) as u64)).await;
            }
        }
    }
}

fn http(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(Duration::from_millis(500))
        .pool_max_idle_per_host(4)
        .build()
        .expect("http client")
}

async fn buyer(w: Arc<Workload>, h: Arc<History>, stop: Arc<AtomicBool>, process: usize) {
    let mut rng = StdRng::seed_from_u64(w.seed ^ (0xb0b0 + process as u64));
    let client = http(Duration::from_secs(2));
    let mut frontend = Frontend::new(&w, process);
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let book = w.books[rng.gen_range(0..w.books.len())];
        n += 1;
        // One buy in four carries no key and is sent once (the frontend makes its key up,
        // so a sold-out answer may come from the catalog primary's state): an answer that
        // does not come is an unknown outcome, never retried.
        let keyless = rng.gen_bool(0.25);
        let key = format!("{}-p{process}-{n}", w.run_tag);
        let p = h.invoke(
            process,
            OpKind::Buy,
            book,
            None,
            (!keyless).then(|| key.clone()),
        );
        let (outcome, v, err, attempts) = if keyless {
            let url = format!("{}/buy?item_number={book}", frontend.url());
            match attempt(client.post(url)).await {
                Attempt::Ok(v) => (Outcome::Ok, Some(v), None, 1),
                Attempt::Refused(409, _) => (Outcome::Fail, None, Some("out of stock".into()), 1),
                Attempt::Refused(s, _) => (Outcome::Fail, None, Some(format!("status {s}")), 1),
                Attempt::Unknown(e) => {
                    frontend.next();
                    (Outcome::Info, None, Some(e), 1)
                }
            }
        } else {
            write_op(
                &mut frontend,
                |base| {
                    client
                        .post(format!("{base}/buy?item_number={book}"))
                        .header("Idempotency-Key", &key)
                },
                w.op_deadline,
            )
            .await
        };
        let order_id = v
            .as_ref()
            .and_then(|v| v["order_id"].as_str())
            .map(str::to_string);
        let (outcome, err) = if outcome == Outcome::Ok && order_id.is_none() {
            (Outcome::Info, Some("200 without an order id".into()))
        } else {
            (outcome, err)
        };
        h.complete(p, outcome, None, order_id, err, attempts);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..20))).await;
    }
}

fn stock_of(v: &serde_json::Value) -> Option<i64> {
    v["result"]["stock"].as_i64()
}

async fn reader(w: Arc<Workload>, h: Arc<History>, stop: Arc<AtomicBool>, process: usize) {
    let mut rng = StdRng::seed_from_u64(w.seed ^ (0x4ead + process as u64));
    let client = http(Duration::from_secs(1));
    let mut frontend = Frontend::new(&w, process);
    while !stop.load(Ordering::Relaxed) {
        if rng.gen_bool(0.1) {
            let p = h.invoke(process, OpKind::Search, 0, None, None);
            let url = format!("{}/search?topic=t", frontend.url());
            let (o, e) = match attempt(client.get(&url)).await {
                Attempt::Ok(_) => (Outcome::Ok, None),
                Attempt::Refused(s, _) => (Outcome::Fail, Some(format!("status {s}"))),
                Attempt::Unknown(e) => {
                    frontend.next();
                    (Outcome::Fail, Some(e))
                }
            };
            h.complete(p, o, None, None, e, 1);
        } else {
            let book = w.books[rng.gen_range(0..w.books.len())];
            let p = h.invoke(process, OpKind::Read, book, None, None);
            let url = format!("{}/lookup?item_number={book}", frontend.url());
            let (o, v, e) = match attempt(client.get(&url)).await {
                Attempt::Ok(v) => match stock_of(&v) {
                    Some(s) => (Outcome::Ok, Some(s), None),
                    None => (Outcome::Fail, None, Some("no stock in the answer".into())),
                },
                Attempt::Refused(s, _) => (Outcome::Fail, None, Some(format!("status {s}"))),
                // A read has no effect: an unanswered one is simply a failed read.
                Attempt::Unknown(e) => {
                    frontend.next();
                    (Outcome::Fail, None, Some(e))
                }
            };
            let failed = o != Outcome::Ok;
            h.complete(p, o, v, None, e, 1);
            if failed {
                // Do not spin on a server that is down.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..10))).await;
    }
}

async fn cache_reader(w: Arc<Workload>, h: Arc<History>, stop: Arc<AtomicBool>, process: usize) {
    let Some(cache) = w.cache.clone() else { return };
    let mut rng = StdRng::seed_from_u64(w.seed ^ (0xcace + process as u64));
    let client = http(Duration::from_millis(500));
    while !stop.load(Ordering::Relaxed) {
        let book = w.books[rng.gen_range(0..w.books.len())];
        let p = h.invoke(process, OpKind::CacheRead, book, None, None);
        let req = client
            .get(format!("{cache}/lookup?item_number={book}"))
            .header("X-Cluster-Token", w.cluster_token.expose());
        let (o, v, e) = match attempt(req).await {
            Attempt::Ok(v) => match stock_of(&v) {
                Some(s) => (Outcome::Ok, Some(s), None),
                None => (Outcome::Fail, None, Some("no stock in the answer".into())),
            },
            Attempt::Refused(404, _) => (Outcome::Fail, None, Some("miss".into())),
            Attempt::Refused(s, _) => (Outcome::Fail, None, Some(format!("status {s}"))),
            Attempt::Unknown(e) => (Outcome::Fail, None, Some(e)),
        };
        h.complete(p, o, v, None, e, 1);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(5..25))).await;
    }
}

async fn restocker(w: Arc<Workload>, h: Arc<History>, stop: Arc<AtomicBool>, process: usize) {
    if w.restock_books.is_empty() {
        return;
    }
    let mut rng = StdRng::seed_from_u64(w.seed ^ (0x5e5e + process as u64));
    let client = http(Duration::from_secs(2));
    let mut frontend = Frontend::new(&w, process);
    let mut n = 0u64;
    loop {
        let ms = w.restock_every.as_millis() as u64;
        let pause = Duration::from_millis(rng.gen_range(ms / 2..=ms + ms / 2));
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let book = w.restock_books[rng.gen_range(0..w.restock_books.len())];
        let q = rng.gen_range(1..=w.restock_max.max(1)) as i64;
        n += 1;
        let key = format!("{}-r{process}-{n}", w.run_tag);
        let p = h.invoke(process, OpKind::Restock, book, Some(q), Some(key.clone()));
        let (o, v, e, attempts) = write_op(
            &mut frontend,
            |base| {
                client
                    .post(format!(
                        "{base}/admin/restock?item_number={book}&quantity={q}"
                    ))
                    .header("Idempotency-Key", &key)
                    .bearer_auth(w.admin_token.expose())
            },
            w.op_deadline,
        )
        .await;
        h.complete(p, o, v.as_ref().and_then(stock_of), None, e, attempts);
    }
}

/// What one client process does.
#[derive(Debug, Clone, Copy)]
enum Role {
    Buyer,
    Reader,
    CacheReader,
    Restocker,
}

/// Starts every client; they stop (each finishing its operation) once `stop` is set.
/// Processes are numbered buyers first, then readers, the cache reader, the restocker.
pub fn spawn(
    w: Workload,
    h: Arc<History>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let w = Arc::new(w);
    let roles = std::iter::repeat_n(Role::Buyer, w.buyers)
        .chain(std::iter::repeat_n(Role::Reader, w.readers))
        .chain([Role::CacheReader, Role::Restocker]);
    roles
        .enumerate()
        .map(|(process, role)| {
            let (w, h, stop) = (w.clone(), h.clone(), stop.clone());
            tokio::spawn(async move {
                match role {
                    Role::Buyer => buyer(w, h, stop, process).await,
                    Role::Reader => reader(w, h, stop, process).await,
                    Role::CacheReader => cache_reader(w, h, stop, process).await,
                    Role::Restocker => restocker(w, h, stop, process).await,
                }
            })
        })
        .collect()
}
