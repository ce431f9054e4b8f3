//! Slow clients (slowloris): hundreds of connections each sending a request head one
//! byte a second do not stop normal clients of the frontend from being served quickly;
//! the server drops each slow one with 408 at the head timeout (5 s).
use bookstore_testkit::TestCluster;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SLOW_CLIENTS: usize = 300;
const ATTACK: Duration = Duration::from_secs(10);

/// One slow client: connects, sends a request head a byte a second until the server
/// answers or closes, then starts again, until `until`. Returns the 408s it got.
async fn slow_client(addr: String, until: Instant) -> u32 {
    let head = b"GET /lookup?item_number=1 HTTP/1.1\r\nHost: x\r\nX-Slow: 1\r\n\r\n";
    let mut timeouts = 0;
    while Instant::now() < until {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let mut buf = [0u8; 512];
        for b in head.iter().cycle() {
            if Instant::now() >= until {
                return timeouts;
            }
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            // Wait a second, or less if the server answers (or closes) meanwhile.
            match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
                Err(_) => continue,
                Ok(Ok(n)) if n > 0 => {
                    if buf[..n].starts_with(b"HTTP/1.1 408") {
                        timeouts += 1;
                    }
                    break;
                }
                Ok(_) => break,
            }
        }
    }
    timeouts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_do_not_stop_normal_clients() {
    let c = TestCluster::start().await;
    let addr = c.frontend().trim_start_matches("http://").to_string();
    let until = Instant::now() + ATTACK;
    let attackers: Vec<_> = (0..SLOW_CLIENTS)
        .map(|_| tokio::spawn(slow_client(addr.clone(), until)))
        .collect();
    // Let every slow connection open first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let mut latencies = Vec::new();
    let mut failures = Vec::new();
    let mut i = 0u32;
    while Instant::now() + Duration::from_millis(200) < until {
        let url = match i % 2 {
            0 => format!("{}/lookup?item_number={}", c.frontend(), i % 7 + 1),
            _ => format!("{}/search?topic=distributed%20systems", c.frontend()),
        };
        i += 1;
        let t = Instant::now();
        match http.get(&url).send().await {
            Ok(r) if r.status() == 200 => latencies.push(t.elapsed()),
            Ok(r) => failures.push(format!("{url}: {}", r.status())),
            Err(e) => failures.push(format!("{url}: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut timeouts = 0;
    for a in attackers {
        timeouts += a.await.unwrap();
    }
    latencies.sort();
    let n = latencies.len();
    let p99 = latencies[(n * 99 / 100).min(n - 1)];
    let max = latencies[n - 1];
    eprintln!(
        "{SLOW_CLIENTS} slow clients for {ATTACK:?}: {n} normal requests served, p50 {:?}, \
         p99 {p99:?}, max {max:?}; {timeouts} slow requests ended with 408",
        latencies[n / 2]
    );
    assert!(failures.is_empty(), "normal requests failed: {failures:?}");
    assert!(n >= 100, "only {n} normal requests in {ATTACK:?}");
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?}");
    // Every slow connection was cut at the 5 s head timeout at least once.
    assert!(
        timeouts as usize >= SLOW_CLIENTS,
        "{timeouts} 408s for {SLOW_CLIENTS} slow clients"
    );
}
