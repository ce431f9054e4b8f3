//! The public `/status.json` under load: it shows a bounded number of books however
//! large the catalog, and a bounded number of requests is served at once (the others
//! get `503` with a JSON error at once instead of piling up).
use bookstore_common::config::Kind;
use bookstore_common::types::{Book, ItemNumber};
use bookstore_testkit::{Options, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_shows_a_bounded_number_of_books() {
    let books: Vec<Book> = (1..=3000)
        .map(|n| Book {
            item_number: ItemNumber::of(n),
            title: format!("book {n}"),
            topic: "many".into(),
            stock: 5,
            cost: 10,
        })
        .collect();
    let c = TestCluster::with(Options {
        books,
        ..Options::default()
    })
    .await;
    let v: serde_json::Value = reqwest::get(format!("{}/status.json", c.frontend()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let shown = v["books"].as_array().unwrap().len();
    assert!(shown <= 1000, "status.json shows {shown} books");
    assert_eq!(v["books"][0]["item_number"], 1, "the first books, in order");
    assert_eq!(v["books_truncated"], true, "the page says there are more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_status_requests_are_bounded() {
    let mut c = TestCluster::start().await;
    // With the catalog gone, assembling the page takes its full timeout (1 s): requests
    // that arrive meanwhile must not all wait.
    c.stop(Kind::Catalog, 0).await;
    c.stop(Kind::Catalog, 1).await;
    let http = reqwest::Client::new();
    let url = format!("{}/status.json", c.frontend());
    let calls = (0..64).map(|_| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let retry = r.headers().contains_key("retry-after");
            let body: serde_json::Value = r.json().await.unwrap();
            (status, retry, body)
        }
    });
    let answers = futures::future::join_all(calls).await;
    let busy: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(
        !busy.is_empty(),
        "64 concurrent /status.json requests all waited for the page"
    );
    for (s, retry, body) in &answers {
        assert!(*s == 200 || *s == 503, "{s} {body}");
        if *s == 503 {
            assert!(*retry && body["error"].is_string(), "{body}");
        }
    }
}
