//! Which token each route needs, and who is ever sent the cluster token.
use super::*;

/// Every operation of every server's OpenAPI documents (which
/// crates/testkit/tests/system/contract.rs checks against the routers), with the server's URL,
/// the method, a concrete path and the security scheme the document gives it.
fn every_operation(c: &TestCluster) -> Vec<(String, String, String, Option<String>)> {
    let mut docs = vec![
        (c.frontend(), bookstore_frontend::public_openapi()),
        (c.frontend(), bookstore_frontend::internal_openapi()),
        (c.url(Kind::Cache, 0), bookstore_cache::internal_openapi()),
        (c.coordinator(), bookstore_coordinator::internal_openapi()),
        (c.coordinator(), bookstore_coordinator::admin_openapi()),
    ];
    for id in 0..2 {
        docs.push((
            c.url(Kind::Catalog, id),
            bookstore_catalog::internal_openapi(),
        ));
        docs.push((c.url(Kind::Order, id), bookstore_order::internal_openapi()));
    }
    let mut out = Vec::new();
    for (base, doc) in docs {
        let json = serde_json::to_value(&doc).unwrap();
        for (path, item) in json["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let scheme = op["security"][0]
                    .as_object()
                    .and_then(|o| o.keys().next().cloned());
                let path = path.replace("{kind}", "catalog");
                out.push((base.clone(), method.to_uppercase(), path, scheme));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_routes_need_the_cluster_token() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let ops = every_operation(&c);
    let cluster_ops: Vec<_> = ops
        .iter()
        .filter(|o| o.3.as_deref() == Some("cluster_token"))
        .collect();
    // Every internal route of every server, from the documents: at least the ones the
    // seed cluster is known to have.
    assert!(
        cluster_ops.len() >= 35,
        "{} cluster-token routes",
        cluster_ops.len()
    );
    for (base, method, path, _) in &cluster_ops {
        for token in [None, Some("wrong"), Some(ADMIN_TOKEN)] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(t) = token {
                req = req.header("x-cluster-token", t);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {base}{path} with {token:?}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("X-Cluster-Token"));
        }
    }
    // Every route the documents call public is public: none answers 401.
    for (base, method, path, scheme) in &ops {
        if scheme.is_none() && method == "GET" {
            let r = http.get(format!("{base}{path}")).send().await.unwrap();
            assert_ne!(r.status(), 401, "GET {base}{path}");
        }
    }
    // With the token, garbage is refused by name, not obeyed.
    for url in [
        c.url(Kind::Catalog, 1) + "/replication/msg?from=0",
        c.coordinator() + &bookstore_common::coordinators::ping_path("catalog"),
    ] {
        let r = http
            .post(&url)
            .header("x-cluster-token", CLUSTER_TOKEN)
            .body(vec![0xffu8; 64])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{url}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"].as_str().unwrap().contains("undecodable"),
            "{url}: {v}"
        );
    }
    // With the token, reads work.
    let r = http
        .get(c.url(Kind::Catalog, 0) + "/query_by_item?item_number=1")
        .header("x-cluster-token", CLUSTER_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // No state changed.
    let (_, v) = get(format!("{}/lookup?item_number=1", c.frontend())).await;
    assert_eq!(v["result"]["stock"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_restock_needs_the_admin_token_and_changes_stock_and_price() {
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    // Every admin route (from the documents) refuses a missing or wrong admin token, and
    // the cluster token in its place.
    let admin: Vec<_> = every_operation(&c)
        .into_iter()
        .filter(|o| o.3.as_deref() == Some("admin_token"))
        .collect();
    assert!(!admin.is_empty());
    for (base, method, path, _) in &admin {
        for auth in [
            None,
            Some("Bearer wrong".to_string()),
            Some(format!("Bearer {CLUSTER_TOKEN}")),
            Some(ADMIN_TOKEN.to_string()),
        ] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(a) = &auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await.unwrap();
            assert_eq!(r.status(), 401, "{method} {path} with {auth:?}");
            let v: Value = r.json().await.unwrap();
            assert!(v["error"].as_str().unwrap().contains("admin"), "{v}");
        }
    }
    let url = format!(
        "{}/admin/restock?item_number=7&quantity=4&cost=21",
        c.frontend()
    );
    for auth in [
        None,
        Some("Bearer wrong".to_string()),
        Some(format!("Bearer {CLUSTER_TOKEN}")),
    ] {
        let mut req = http.post(&url);
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    let auth = format!("Bearer {ADMIN_TOKEN}");
    let r = http
        .post(&url)
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (_, v) = get(format!("{}/lookup?item_number=7", c.frontend())).await;
    assert_eq!(
        (v["result"]["stock"].as_u64(), v["result"]["cost"].as_u64()),
        (Some(7), Some(21))
    );
    let bad = [
        format!("{}/admin/restock?item_number=7", c.frontend()),
        format!("{}/admin/restock?item_number=7&quantity=-1", c.frontend()),
        format!("{}/admin/restock?item_number=7&cost=abc", c.frontend()),
    ];
    for u in bad {
        let r = http
            .post(&u)
            .header("authorization", &auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{u}");
    }
    let r = http
        .post(format!(
            "{}/admin/restock?item_number=70&quantity=1",
            c.frontend()
        ))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// A fake server that answers every request 200 `{}` and records whether any request
/// carried the cluster token.
async fn token_trap() -> (
    String,
    Arc<std::sync::atomic::AtomicU64>,
    Arc<std::sync::atomic::AtomicU64>,
) {
    use std::sync::atomic::Ordering;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let leaked = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (s, l) = (seen.clone(), leaked.clone());
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (s, l) = (s.clone(), l.clone());
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
                    s.fetch_add(1, Ordering::Relaxed);
                    if head.contains(&CLUSTER_TOKEN.to_lowercase()) {
                        l.fetch_add(1, Ordering::Relaxed);
                    }
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                        .await;
                }
            });
        }
    });
    (url, seen, leaked)
}

/// The admin token alone cannot make an address a member that is sent the cluster
/// token: a registered replica is shown to routers, observers and peers only once it has
/// pinged (with the cluster token) from the URL it was registered at, and an address
/// outside the cluster cannot be registered at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_registered_with_the_admin_token_never_receives_the_cluster_token() {
    use std::sync::atomic::Ordering;
    let c = TestCluster::start().await;
    let http = reqwest::Client::new();
    let register = |url: String| {
        let http = http.clone();
        let c = c.coordinator();
        async move {
            http.post(format!("{c}/admin/cluster/register"))
                .query(&[("kind", "catalog"), ("url", url.as_str())])
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .unwrap()
        }
    };
    let r = register("http://192.0.2.7:9000".into()).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not inside the cluster"),
        "{v}"
    );

    let (trap, seen, leaked) = token_trap().await;
    let r = register(trap.clone()).await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // Everything that would send a member the token: the cluster map (which asks every
    // member for its status), searches (spread over members), lookups and buys (the
    // primary's backups).
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(2500);
    while std::time::Instant::now() < deadline {
        let _ = http
            .get(format!("{}/cluster", c.frontend()))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await;
        for topic in ["distributed%20systems", "graduate%20school"] {
            let _ = http
                .get(format!("{}/search?topic={topic}", c.frontend()))
                .header("cache-control", "no-cache")
                .send()
                .await;
        }
        let _ = http
            .post(format!("{}/buy?item_number=4", c.frontend()))
            .send()
            .await;
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        leaked.load(Ordering::Relaxed),
        0,
        "the registered URL received the cluster token ({} requests in all)",
        seen.load(Ordering::Relaxed)
    );
    let view: Value = c
        .internal()
        .get_json(&c.view_url(Kind::Catalog))
        .await
        .unwrap();
    assert!(view["members"].get("2").is_none(), "{view}");
    assert_eq!(view["unproven"]["2"], trap.as_str(), "{view}");
}
