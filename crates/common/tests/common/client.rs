//! The internal HTTP client as a hostile or broken server meets it: it does not follow
//! redirects (which would carry the cluster token to whatever host they name), and it
//! does not read an answer of any size.
use bookstore_common::client::Client;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

const TOKEN: &str = "client-test-cluster-token";

/// A one-thread HTTP server answering every request with `answer`; returns its URL and
/// the request heads it received.
fn server(answer: impl Fn() -> Vec<u8> + Send + 'static) -> (String, Arc<Mutex<Vec<String>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut head = String::new();
            let mut r = BufReader::new(conn.try_clone().unwrap());
            loop {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            s.lock().unwrap().push(head.to_ascii_lowercase());
            let _ = conn.write_all(&answer());
        }
    });
    (url, seen)
}

#[tokio::test]
async fn redirects_are_not_followed_and_the_token_stays_home() {
    let (elsewhere, seen) = server(|| b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec());
    let target = format!("{elsewhere}/steal");
    let (url, _) = server(move || {
        format!("HTTP/1.1 302 Found\r\nLocation: {target}\r\nContent-Length: 0\r\n\r\n")
            .into_bytes()
    });
    let r = Client::new(TOKEN).get_bytes(&format!("{url}/x")).await;
    assert!(r.is_err(), "a redirect was followed: {r:?}");
    assert_eq!(r.unwrap_err().status(), Some(302));
    let leaked = seen
        .lock()
        .unwrap()
        .iter()
        .any(|h| h.contains("x-cluster-token"));
    assert!(!leaked, "the redirect target received the cluster token");
}

#[tokio::test]
async fn an_answer_larger_than_the_limit_is_refused() {
    // 80 MiB, declared.
    let body = vec![b'x'; 80 << 20];
    let (url, _) = server(move || {
        let mut a =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        a.extend_from_slice(&body);
        a
    });
    let r = Client::new(TOKEN).get_bytes(&format!("{url}/big")).await;
    assert!(r.is_err(), "an 80 MiB answer was read whole");
}

/// The router marks every send of a request after its first (`x-bookstore-resend`): a
/// receiver must not take such a request's keys for fresh ones.
#[tokio::test]
async fn a_request_sent_again_says_so() {
    let n = Arc::new(Mutex::new(0));
    let (url, seen) = server(move || {
        let mut n = n.lock().unwrap();
        *n += 1;
        if *n == 1 {
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\n{}".to_vec()
        } else {
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}".to_vec()
        }
    });
    let router = bookstore_common::router::Router::new(Client::new(TOKEN), vec![url]);
    let (_, _): (serde_json::Value, _) = router
        .write_json_timed("/batch", &serde_json::json!({}))
        .await
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(!seen[0].contains("x-bookstore-resend"), "{}", seen[0]);
    assert!(seen[1].contains("x-bookstore-resend: 1"), "{}", seen[1]);
}
