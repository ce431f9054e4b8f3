//! Every limit of `server::serve_with`, hit over a real socket with raw HTTP/1.1: the
//! client gets 413, 414, 431, 408 or 503 (JSON where actix lets us), never a hang.
use actix_web::{web, HttpResponse};
use bookstore_common::server::{self, Limits};
use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

fn limits() -> Limits {
    Limits {
        max_body: 1000,
        max_uri: 500,
        max_header_bytes: 2000,
        head_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_millis(1500),
        max_in_flight: 2,
        max_connections_per_worker: 4,
        backlog: 64,
    }
}

fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route(
        "/ok",
        web::get().to(|| async { HttpResponse::Ok().json("ok") }),
    )
    .route(
        "/sleep",
        web::get().to(
            |q: web::Query<std::collections::HashMap<String, u64>>| async move {
                tokio::time::sleep(Duration::from_millis(q["ms"])).await;
                HttpResponse::Ok().json("slept")
            },
        ),
    )
    .route(
        "/echo",
        web::post().to(|b: web::Bytes| async move { HttpResponse::Ok().body(b) }),
    );
}

struct Server {
    addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

fn start(limits: Limits) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(server::serve_with(l, 1, limits, routes, async move {
        let _ = rx.await;
    }));
    Server { addr, _stop: tx }
}

/// An answer read off the socket: status, head and body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn error(&self) -> String {
        let v: serde_json::Value =
            serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        v["error"].as_str().expect("an error field").to_string()
    }
}

async fn connect(addr: SocketAddr) -> TcpStream {
    for _ in 0..100 {
        if let Ok(s) = TcpStream::connect(addr).await {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("cannot connect to {addr}");
}

/// Reads one answer (the server closes or sends Content-Length), within `within`.
async fn read_answer(s: &mut TcpStream, within: Duration) -> Answer {
    let mut buf = Vec::new();
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let mut chunk = [0u8; 8192];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "no complete answer within {within:?}: {:?}",
                    String::from_utf8_lossy(&buf)
                )
            })
            .unwrap_or(0);
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = text[..end].to_string();
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let body = &text[end + 4..];
            if body.len() >= len || n == 0 {
                let status = head.split(' ').nth(1).unwrap().parse().unwrap();
                return Answer {
                    status,
                    head,
                    body: body.to_string(),
                };
            }
        }
        assert!(n > 0, "closed without an answer: {text:?}");
    }
}

async fn send(addr: SocketAddr, raw: &[u8]) -> Answer {
    let mut s = connect(addr).await;
    s.write_all(raw).await.unwrap();
    read_answer(&mut s, Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_within_every_limit_is_served() {
    let srv = start(limits());
    let a = send(srv.addr, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status, 200, "{a:?}");
    let a = send(
        srv.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .await;
    assert_eq!((a.status, a.body.as_str()), (200, "hello"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_gets_413_with_json() {
    let srv = start(limits());
    // Declared too large: refused before the body is read.
    let a = send(
        srv.addr,
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1001\r\n\r\n",
    )
    .await;
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.error().contains("limit is 1000 bytes"), "{a:?}");
    // Chunked, no length: refused when the reader passes the limit.
    let mut raw = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        raw.extend_from_slice(b"190\r\n");
        raw.extend(std::iter::repeat_n(b'a', 0x190));
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let a = send(srv.addr, &raw).await;
    assert_eq!(a.status, 413, "{a:?}");
    assert!(a.error().to_lowercase().contains("limit"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_uri_gets_414_with_json() {
    let srv = start(limits());
    let raw = format!("GET /ok?x={} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(600));
    let a = send(srv.addr, raw.as_bytes()).await;
    assert_eq!(a.status, 414, "{a:?}");
    assert!(a.error().contains("the limit is 500 bytes"), "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_headers_get_431() {
    let srv = start(limits());
    let raw = format!(
        "GET /ok HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let a = send(srv.addr, raw.as_bytes()).await;
    assert_eq!(a.status, 431, "{a:?}");
    assert!(a.error().contains("the limit is 2000 bytes"), "{a:?}");
    // Past actix's own parser limit (a 128 KiB head): still 431, with an empty body.
    let raw = format!(
        "GET /ok HTTP/1.1\r\nHost: x\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(140 << 10)
    );
    let mut s = connect(srv.addr).await;
    let _ = s.write_all(raw.as_bytes()).await; // the server may close before all is sent
    let a = read_answer(&mut s, Duration::from_secs(5)).await;
    assert_eq!((a.status, a.body.as_str()), (431, ""), "{a:?}");
    // So do more than 96 headers.
    let mut raw = String::from("GET /ok HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        raw.push_str(&format!("X-H{i}: 1\r\n"));
    }
    raw.push_str("\r\n");
    let a = send(srv.addr, raw.as_bytes()).await;
    assert_eq!(a.status, 431, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_gets_408_after_the_head_timeout() {
    let srv = start(limits());
    let mut s = connect(srv.addr).await;
    let t = Instant::now();
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap(); // never finished
    let a = read_answer(&mut s, Duration::from_secs(4)).await;
    assert_eq!(a.status, 408, "{a:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_over_the_request_timeout_gets_503_with_json() {
    let srv = start(limits());
    let t = Instant::now();
    let a = send(srv.addr, b"GET /sleep?ms=5000 HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status, 503, "{a:?}");
    assert!(a.error().contains("not answered within 1.5 s"), "{a:?}");
    assert!(a.head.to_lowercase().contains("retry-after: 1"), "{a:?}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_in_flight_limit_get_503_with_json() {
    let srv = start(limits());
    let slow = || send(srv.addr, b"GET /sleep?ms=700 HTTP/1.1\r\nHost: x\r\n\r\n");
    let (a, b, c) = tokio::join!(slow(), slow(), async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send(srv.addr, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await
    });
    assert_eq!((a.status, b.status), (200, 200), "{a:?} {b:?}");
    assert_eq!(c.status, 503, "{c:?}");
    assert!(c.error().contains("2 requests in flight"), "{c:?}");
    // Once they are done, the server takes requests again.
    let a = send(srv.addr, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status, 200, "{a:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_the_limit_waits_at_most_the_head_timeout() {
    let srv = start(limits());
    // Fill the worker's 4 connection slots with clients that send nothing.
    let mut idle = Vec::new();
    for _ in 0..4 {
        idle.push(connect(srv.addr).await);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The fifth connects (the kernel queues it) and is served once the idle ones are
    // dropped by the head timeout, not never.
    let t = Instant::now();
    let a = send(srv.addr, b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(a.status, 200, "{a:?}");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(3),
        "served after {waited:?}: it should wait for a slot, about the 1 s head timeout"
    );
    for mut s in idle {
        let a = read_answer(&mut s, Duration::from_secs(2)).await;
        assert_eq!(a.status, 408, "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_method_on_a_resource_gets_json() {
    let srv = start(limits());
    let a = send(srv.addr, b"DELETE /ok HTTP/1.1\r\nHost: x\r\n\r\n").await;
    // A route without a JSON default service: actix's 404, given a JSON body by serve.
    assert!(a.status == 404 || a.status == 405, "{a:?}");
    assert!(!a.error().is_empty());
}
