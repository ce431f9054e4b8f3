//! The seed's client scenarios, run against a frontend over HTTP, with every request
//! and answer written to a client log in the seed's format.
use crate::local::LocalCluster;
use anyhow::{anyhow, bail, Context};
use bookstore_common::config::Kind;
use bookstore_common::types::Book;
use parking_lot_free::Log;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One scenario's verdict.
#[derive(Debug, Clone)]
pub struct Verdict {
    pub name: String,
    pub passed: bool,
    /// Not run (the reason is in `detail`); counts as neither passed nor failed.
    pub skipped: bool,
    pub detail: String,
}

mod parking_lot_free {
    //! A tiny shared append-only log (std Mutex; written only by the test client).
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone)]
    pub struct Log(Arc<Mutex<std::io::BufWriter<std::fs::File>>>);

    impl Log {
        pub fn create(path: &std::path::Path) -> std::io::Result<Log> {
            if let Some(d) = path.parent() {
                std::fs::create_dir_all(d)?;
            }
            Ok(Log(Arc::new(Mutex::new(std::io::BufWriter::new(
                std::fs::File::create(path)?,
            )))))
        }

        pub fn line(&self, s: String) {
            if let Ok(mut w) = self.0.lock() {
                let _ = writeln!(w, "{s}");
            }
        }

        pub fn flush(&self) {
            if let Ok(mut w) = self.0.lock() {
                let _ = w.flush();
            }
        }
    }
}

/// A client that logs every request and answer.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    log: Log,
}

impl Client {
    async fn call(&self, who: usize, method: &str, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        self.log
            .line(format!("Client{who}: Send request {method} {url}"));
        let req = match method {
            "POST" => self.http.post(&url),
            _ => self.http.get(&url),
        };
        let r = req
            .send()
            .await
            .map_err(|e| anyhow!("{method} {url}: {e}"))?;
        let status = r.status().as_u16();
        let body: Value = r
            .json()
            .await
            .map_err(|e| anyhow!("{method} {url}: answer is not JSON: {e}"))?;
        self.log
            .line(format!("Client{who}: Get response {status} {body}"));
        Ok((status, body))
    }

    async fn stock(&self, item: u32) -> anyhow::Result<u64> {
        let (s, v) = self
            .call(0, "GET", &format!("/lookup?item_number={item}"))
            .await?;
        if s != 200 {
            bail!("lookup {item} answered {s}: {v}");
        }
        v["result"]["stock"]
            .as_u64()
            .with_context(|| format!("lookup {item}: no numeric stock in {v}"))
    }
}

fn check(cond: bool, msg: impl Into<String>) -> anyhow::Result<()> {
    if cond {
        Ok(())
    } else {
        let msg: String = msg.into();
        Err(anyhow::Error::msg(msg))
    }
}

async fn search_topics(c: &Client, books: &[Book]) -> anyhow::Result<String> {
    let mut topics: BTreeMap<&str, Vec<(u32, &str)>> = BTreeMap::new();
    for b in books {
        topics
            .entry(&b.topic)
            .or_default()
            .push((b.item_number.get(), &b.title));
    }
    for (topic, mut want) in topics.clone() {
        want.sort();
        let q: String = form_encode(topic);
        let (s, v) = c.call(0, "GET", &format!("/search?topic={q}")).await?;
        check(s == 200, format!("search {topic:?} answered {s}"))?;
        let got: Vec<(u32, String)> = v["result"]
            .as_array()
            .with_context(|| format!("search {topic:?}: no result list in {v}"))?
            .iter()
            .map(|h| {
                (
                    h["item_number"].as_u64().unwrap_or(0) as u32,
                    h["title"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let want: Vec<(u32, String)> = want.iter().map(|(n, t)| (*n, t.to_string())).collect();
        check(
            got == want,
            format!("search {topic:?}: got {got:?}, want {want:?}"),
        )?;
    }
    Ok(format!("{} topics", topics.len()))
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn lookup_all(c: &Client, books: &[Book]) -> anyhow::Result<String> {
    for b in books {
        let (s, v) = c
            .call(0, "GET", &format!("/lookup?item_number={}", b.item_number))
            .await?;
        check(s == 200, format!("lookup {} answered {s}", b.item_number))?;
        let r = &v["result"];
        check(
            r["title"] == b.title.as_str() && r["topic"] == b.topic.as_str(),
            format!("lookup {}: got {r}", b.item_number),
        )?;
        check(
            r["stock"].is_u64() && r["cost"].is_u64(),
            format!(
                "lookup {}: stock and cost must be numbers: {r}",
                b.item_number
            ),
        )?;
    }
    Ok(format!("{} books", books.len()))
}

async fn buy_until_fail(c: &Client, item: u32) -> anyhow::Result<String> {
    let stock = c.stock(item).await?;
    check(
        stock <= 1000,
        format!("book {item} has {stock} copies; refusing to buy them all"),
    )?;
    for i in 0..stock {
        let (s, v) = c
            .call(0, "POST", &format!("/buy?item_number={item}"))
            .await?;
        check(
            s == 200 && v["result"] == "Success" && v["order_id"].is_string(),
            format!("buy {} of {stock}: {s} {v}", i + 1),
        )?;
    }
    let (s, v) = c
        .call(0, "POST", &format!("/buy?item_number={item}"))
        .await?;
    check(
        s == 409 && v["result"] == "Failed",
        format!("buy past the stock: want 409 Failed, got {s} {v}"),
    )?;
    let left = c.stock(item).await?;
    check(left == 0, format!("stock after selling out is {left}"))?;
    Ok(format!("{stock} Success, then Failed"))
}

async fn concurrent_buyers(c: &Client, item: u32, buyers: usize) -> anyhow::Result<String> {
    let stock = c.stock(item).await?;
    let tasks: Vec<_> = (1..=buyers)
        .map(|who| {
            let c = c.clone();
            tokio::spawn(async move {
                c.call(who, "POST", &format!("/buy?item_number={item}"))
                    .await
            })
        })
        .collect();
    let mut ok = 0u64;
    for t in tasks {
        let (s, v) = t.await??;
        match s {
            200 => ok += 1,
            409 => {}
            _ => bail!("unexpected answer {s} {v}"),
        }
    }
    let want = stock.min(buyers as u64);
    check(
        ok == want,
        format!("{ok} of {buyers} buyers succeeded; want {want} (stock {stock})"),
    )?;
    let left = c.stock(item).await?;
    check(
        left == stock - want,
        format!("stock {stock} -> {left} after {want} sales"),
    )?;
    Ok(format!("{ok} of {buyers} succeeded on stock {stock}"))
}

async fn replicas_agree(lc: &LocalCluster) -> anyhow::Result<Vec<Value>> {
    let client = bookstore_common::client::Client::with_timeout(
        &lc.options.cluster_token,
        Duration::from_secs(2),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut seen = Vec::new();
        for e in lc.cluster.servers(Kind::Catalog) {
            let v: Option<Value> = client.get_json(&format!("{}/books", e.url())).await.ok();
            seen.push(v.map(|v| v["result"].clone()).unwrap_or_default());
        }
        if !seen[0].is_null() && seen.iter().all(|s| *s == seen[0]) {
            return Ok(seen);
        }
        if std::time::Instant::now() > deadline {
            bail!("catalog replicas disagree: {seen:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes replica `victim` of `kind` down (`down`) or brings it back: with SIGKILL and a
/// process restart when `kill`, else with the seed's `/shutdown` and `/recover`.
async fn set_down(
    lc: &mut LocalCluster,
    kind: Kind,
    victim: u32,
    kill: bool,
    down: bool,
) -> anyhow::Result<()> {
    match (kill, down) {
        (true, true) => lc.kill9(kind, victim).await,
        (true, false) => lc.restart(kind, victim).await,
        (false, _) => {
            let url = lc.cluster.server(kind, victim).expect("exists").url();
            let route = if down { "shutdown" } else { "recover" };
            let internal = bookstore_common::client::Client::new(&lc.options.cluster_token);
            internal
                .post_json::<Value>(&format!("{url}/{route}"), &[])
                .await?;
            Ok(())
        }
    }
}

/// A fault in the middle of buying: the primary of `kind` is shut down (the seed's
/// `/shutdown`) or SIGKILLed; the buy must succeed by failing over; after the replica
/// is back (`/recover` or a process restart) every catalog replica must hold the same
/// books, with the sale counted once.
async fn buy_through_fault(
    c: &Client,
    lc: &mut LocalCluster,
    kind: Kind,
    kill: bool,
) -> anyhow::Result<String> {
    let item = 4;
    let before = c.stock(item).await?;
    let victim = lc.primary(kind).await?;
    set_down(lc, kind, victim, kill, true).await?;
    let started = std::time::Instant::now();
    let bought = c.call(0, "POST", &format!("/buy?item_number={item}")).await;
    let took = started.elapsed();
    // Bring the replica back whatever happened, so later scenarios find a whole cluster.
    set_down(lc, kind, victim, kill, false).await?;
    lc.wait_ready(Duration::from_secs(15)).await?;
    let (s, v) = bought?;
    check(
        s == 200 && v["result"] == "Success",
        format!("buy with {kind} {victim} down: {s} {v}"),
    )?;
    let books = replicas_agree(lc).await?;
    let after = c.stock(item).await?;
    check(
        after + 1 == before,
        format!("stock of book {item}: {before} -> {after}"),
    )?;
    let held = books[0]
        .as_array()
        .and_then(|a| a.iter().find(|b| b["item_number"] == item))
        .and_then(|b| b["stock"].as_u64());
    check(
        held == Some(after),
        format!("replicas hold stock {held:?}, the frontend says {after}"),
    )?;
    Ok(format!(
        "{kind} {victim} {}: the buy took {} ms; it came back, caught up, replicas agree",
        if kill { "SIGKILLed" } else { "shut down" },
        took.as_millis()
    ))
}

/// Runs every scenario in order against `frontend`; `books` is the catalog it started
/// with. The fault scenarios need `cluster` (a cluster this process started).
pub async fn run_all(
    frontend: &str,
    books: &[Book],
    client_log: &Path,
    mut cluster: Option<&mut LocalCluster>,
) -> anyhow::Result<Vec<Verdict>> {
    let log = Log::create(client_log).with_context(|| client_log.display().to_string())?;
    let c = Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?,
        base: frontend.trim_end_matches('/').to_string(),
        log: log.clone(),
    };
    let mut out = Vec::new();
    let mut record = |name: &str, r: Option<anyhow::Result<String>>| {
        let (passed, skipped, detail) = match r {
            Some(Ok(d)) => (true, false, d),
            Some(Err(e)) => (false, false, format!("{e:#}")),
            None => (
                false,
                true,
                "skipped: needs a cluster started by `local test` (drop --frontend)".into(),
            ),
        };
        out.push(Verdict {
            name: name.into(),
            passed,
            skipped,
            detail,
        });
    };
    record("search every topic", Some(search_topics(&c, books).await));
    record("look up every book", Some(lookup_all(&c, books).await));
    record(
        "buy book 1 until it fails",
        Some(buy_until_fail(&c, 1).await),
    );
    record(
        "4 concurrent buyers of book 2",
        Some(concurrent_buyers(&c, 2, 4).await),
    );
    let faults = [
        (
            "shut down catalog primary, buy, recover",
            Kind::Catalog,
            false,
        ),
        ("kill -9 catalog primary, buy, restart", Kind::Catalog, true),
        ("kill -9 order primary, buy, restart", Kind::Order, true),
    ];
    for (name, kind, kill) in faults {
        let r = match cluster.as_deref_mut() {
            Some(lc) => Some(buy_through_fault(&c, lc, kind, kill).await),
            None => None,
        };
        record(name, r);
    }
    log.flush();
    Ok(out)
}

/// The verdicts as a table.
pub fn table(verdicts: &[Verdict]) -> String {
    let w = verdicts
        .iter()
        .map(|v| v.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    let mut s = format!("{:<w$}  result  detail\n", "scenario");
    for v in verdicts {
        let r = match (v.passed, v.skipped) {
            (true, _) => "PASS",
            (_, true) => "SKIP",
            _ => "FAIL",
        };
        s.push_str(&format!("{:<w$}  {r:<6}  {}\n", v.name, v.detail));
    }
    let passed = verdicts.iter().filter(|v| v.passed).count();
    let skipped = verdicts.iter().filter(|v| v.skipped).count();
    s.push_str(&format!(
        "scenarios: {passed} passed, {} failed, {skipped} skipped\n",
        verdicts.len() - passed - skipped
    ));
    s
}
