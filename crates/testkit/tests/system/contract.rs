//! The OpenAPI documents cannot drift from the routers: every operation a router serves
//! is in its server's documents, and every documented operation is served. The routers'
//! routes are read from actix's own resource map, and each (method, path) is probed.
use actix_web::{test, web, App, HttpRequest, HttpResponse};
use bookstore_common::auth::Tokens;
use bookstore_common::openapi::{operations_of, routes_of, Access, RouteInfo};
use std::collections::BTreeSet;

type Configure = fn(&mut web::ServiceConfig);

const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
const PROBE: &str = "/__contract_probe_rmap";

/// Every full path pattern registered in `routes`, from actix's resource map.
///
/// The map's `Debug` output is a tree of `ResourceDef`s, each with `patterns: Single("..")`
/// relative to its parent scope; the nesting is read from the indentation of `{:#?}`.
async fn registered_paths(routes: Configure) -> BTreeSet<String> {
    let app = test::init_service(
        App::new()
            .route(
                PROBE,
                web::get().to(|r: HttpRequest| async move {
                    HttpResponse::Ok().body(format!("{:#?}", r.resource_map()))
                }),
            )
            .configure(routes),
    )
    .await;
    let body =
        test::call_and_read_body(&app, test::TestRequest::get().uri(PROBE).to_request()).await;
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    let lines: Vec<&str> = text.lines().collect();
    let mut stack: Vec<(usize, String)> = Vec::new();
    let mut leaves = BTreeSet::new();
    let mut all = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if line.trim() != "patterns: Single(" {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let fragment = lines[i + 1].trim().trim_end_matches(',').trim_matches('"');
        while stack.last().is_some_and(|(d, _)| *d >= indent) {
            stack.pop();
        }
        let parent: String = stack.iter().map(|(_, f)| f.as_str()).collect();
        let full = format!("{parent}{fragment}");
        stack.push((indent, fragment.to_string()));
        all.push(full);
    }
    // A path that is the prefix of another one is a scope, unless a probe finds a route.
    for p in &all {
        if p.is_empty() || p == PROBE {
            continue;
        }
        leaves.insert(p.clone());
    }
    assert!(
        leaves.contains("/health"),
        "the resource map could not be read (actix's Debug output changed?): {leaves:?}"
    );
    leaves
}

/// Every `(METHOD, path pattern)` the router of `routes` answers (with both tokens given).
/// Handlers are not run: without their app data, a matched route answers 500.
async fn routed(routes: Configure) -> BTreeSet<(String, String)> {
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(Tokens::new("c", Some("a"))))
            .configure(routes),
    )
    .await;
    let mut out = BTreeSet::new();
    for pattern in registered_paths(routes).await {
        let concrete = pattern.replace("{kind}", "catalog");
        assert!(
            !concrete.contains('{'),
            "a path parameter to fill in: {pattern}"
        );
        for m in METHODS {
            let req = test::TestRequest::default()
                .method(m.parse().unwrap())
                .uri(&concrete)
                .insert_header(("x-cluster-token", "c"))
                .insert_header(("authorization", "Bearer a"))
                .to_request();
            let resp = test::call_service(&app, req).await;
            let status = resp.status().as_u16();
            let body = test::read_body(resp).await;
            let no_route = status == 404 && String::from_utf8_lossy(&body).contains("no route");
            if status != 405 && !no_route {
                out.insert((m.to_string(), pattern.clone()));
            }
        }
    }
    out
}

fn documented(docs: &[utoipa::openapi::OpenApi]) -> BTreeSet<(String, String)> {
    docs.iter().flat_map(operations_of).collect()
}

type Diff = (Vec<(String, String)>, Vec<(String, String)>);

/// (routed but undocumented, documented but not routed).
async fn diff(routes: Configure, docs: &[utoipa::openapi::OpenApi]) -> Diff {
    let routed = routed(routes).await;
    assert!(routed.len() >= 3, "only {routed:?} found");
    let documented = documented(docs);
    (
        routed.difference(&documented).cloned().collect(),
        documented.difference(&routed).cloned().collect(),
    )
}

async fn check(name: &str, routes: Configure, docs: &[utoipa::openapi::OpenApi]) {
    let (undocumented, unrouted) = diff(routes, docs).await;
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "{name}: routed but not in its OpenAPI documents: {undocumented:?}; \
         documented but not routed: {unrouted:?}"
    );
}

#[actix_web::test]
async fn every_servers_documents_match_its_router() {
    for (name, routes, docs) in servers() {
        check(name, routes, &docs).await;
    }
}

#[actix_web::test]
async fn the_check_sees_an_undocumented_route_and_a_missing_one() {
    fn with_extra(cfg: &mut web::ServiceConfig) {
        cfg.route("/sneaky", web::post().to(HttpResponse::Ok));
        bookstore_cache::routes(cfg);
    }
    let (undocumented, unrouted) = diff(with_extra, &[bookstore_cache::internal_openapi()]).await;
    assert_eq!(undocumented, [("POST".to_string(), "/sneaky".to_string())]);
    assert!(unrouted.is_empty(), "{unrouted:?}");
    // The catalog's document against the cache's router: both directions differ.
    let (undocumented, unrouted) = diff(
        bookstore_cache::routes,
        &[bookstore_catalog::internal_openapi()],
    )
    .await;
    assert!(undocumented.contains(&("GET".to_string(), "/stats".to_string())));
    assert!(unrouted.contains(&("POST".to_string(), "/update".to_string())));
}

/// Every `$ref` of a document resolves (utoipa does not collect every referenced schema).
fn check_refs(name: &str, doc: &utoipa::openapi::OpenApi) {
    fn walk(v: &serde_json::Value, refs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    refs.push(r.to_string());
                }
                m.values().for_each(|v| walk(v, refs));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, refs)),
            _ => {}
        }
    }
    let json = serde_json::to_value(doc).unwrap();
    let mut refs = Vec::new();
    walk(&json, &mut refs);
    assert!(!refs.is_empty(), "{name}: no $ref at all");
    for r in refs {
        let pointer = r.strip_prefix('#').expect("a local reference");
        assert!(
            json.pointer(pointer).is_some(),
            "{name}: {r} does not resolve"
        );
    }
}

#[actix_web::test]
async fn every_reference_of_every_document_resolves() {
    check_refs("public", &bookstore_frontend::public_openapi());
    check_refs("frontend", &bookstore_frontend::internal_openapi());
    check_refs("catalog", &bookstore_catalog::internal_openapi());
    check_refs("order", &bookstore_order::internal_openapi());
    check_refs("cache", &bookstore_cache::internal_openapi());
}

/// Every server's documents, with the server's name and its router.
fn servers() -> Vec<(&'static str, Configure, Vec<utoipa::openapi::OpenApi>)> {
    vec![
        (
            "frontend",
            bookstore_frontend::routes as Configure,
            vec![
                bookstore_frontend::public_openapi(),
                bookstore_frontend::internal_openapi(),
            ],
        ),
        (
            "coordinator",
            bookstore_coordinator::routes,
            vec![
                bookstore_coordinator::admin_openapi(),
                bookstore_coordinator::internal_openapi(),
            ],
        ),
        (
            "catalog",
            bookstore_catalog::routes,
            vec![bookstore_catalog::internal_openapi()],
        ),
        (
            "order",
            bookstore_order::routes,
            vec![bookstore_order::internal_openapi()],
        ),
        (
            "cache",
            bookstore_cache::routes,
            vec![bookstore_cache::internal_openapi()],
        ),
    ]
}

/// The access a router enforces on `route`, read from which tokens it refuses with 401.
async fn enforced(routes: Configure, route: &RouteInfo) -> Access {
    let app = test::init_service(
        App::new()
            .app_data(web::Data::new(Tokens::new(
                "cluster-token-0123456789",
                Some("admin-token-0123456789"),
            )))
            .configure(routes),
    )
    .await;
    let uri = route.path.replace("{kind}", "catalog");
    let mut refused = Vec::new();
    for headers in [
        vec![],
        vec![("x-cluster-token", "cluster-token-0123456789")],
        vec![("authorization", "Bearer admin-token-0123456789")],
    ] {
        let mut req = test::TestRequest::default()
            .method(route.method.parse().unwrap())
            .uri(&uri);
        for h in headers {
            req = req.insert_header(h);
        }
        let status = match test::try_call_service(&app, req.to_request()).await {
            Ok(resp) => resp.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        refused.push(status == 401);
    }
    match refused.as_slice() {
        [false, false, false] => Access::Public,
        [true, false, true] => Access::Cluster,
        [true, true, false] => Access::Admin,
        [true, false, false] => Access::Operator,
        other => panic!(
            "{} {}: refuses (none, cluster, admin) = {other:?}",
            route.method, uri
        ),
    }
}

#[actix_web::test]
async fn every_route_enforces_the_token_its_document_states() {
    let mut checked = 0;
    for (name, routes, docs) in servers() {
        for doc in &docs {
            for route in routes_of(doc) {
                let got = enforced(routes, &route).await;
                assert_eq!(
                    got, route.access,
                    "{name} {} {}: the document says {:?}, the router enforces {got:?}",
                    route.method, route.path, route.access
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 60, "only {checked} routes");
}

#[actix_web::test]
async fn the_check_sees_a_route_whose_token_check_is_missing() {
    fn without_auth(cfg: &mut web::ServiceConfig) {
        cfg.route("/stats", web::get().to(HttpResponse::Ok));
    }
    let stats = routes_of(&bookstore_cache::internal_openapi())
        .into_iter()
        .find(|r| r.path == "/stats")
        .unwrap();
    assert_eq!(stats.access, Access::Cluster);
    assert_eq!(enforced(without_auth, &stats).await, Access::Public);
}

const SECURITY_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/security.md");
const TABLE_BEGIN: &str =
    "<!-- route-table: generated by crates/testkit/tests/system/contract.rs -->";
const TABLE_END: &str = "<!-- route-table end -->";

/// The first sentence of a handler's doc (its lines joined).
fn first_sentence(doc: &str) -> String {
    let text = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    match text.find(". ") {
        Some(end) => text[..=end].to_string(),
        None => text,
    }
}

/// docs/security.md's route table, from the documents (which the tests above tie to the
/// routers and to what the routers enforce).
fn route_table() -> String {
    let mut out = String::from(
        "| server | method | path | needs | what |\n| --- | --- | --- | --- | --- |\n",
    );
    for (name, _, docs) in servers() {
        let mut rows: Vec<RouteInfo> = docs.iter().flat_map(routes_of).collect();
        rows.sort();
        rows.dedup();
        for r in rows {
            out.push_str(&format!(
                "| {name} | {} | `{}` | {} | {} |\n",
                r.method,
                r.path,
                r.access.describe(),
                first_sentence(&r.summary).replace('|', "\\|")
            ));
        }
    }
    out
}

/// The route table in docs/security.md is this test's output. After changing a route, run
/// `BOOKSTORE_BLESS=1 cargo test -p bookstore-testkit --test system contract` to rewrite it.
#[actix_web::test]
async fn the_route_table_of_docs_security_md_is_generated_from_the_documents() {
    let doc = std::fs::read_to_string(SECURITY_MD).expect("docs/security.md");
    let (head, rest) = doc
        .split_once(TABLE_BEGIN)
        .expect("docs/security.md has the route-table marker");
    let (old, tail) = rest.split_once(TABLE_END).expect("the table's end marker");
    let table = route_table();
    let new = format!("\n{table}");
    if old == new {
        return;
    }
    if std::env::var_os("BOOKSTORE_BLESS").is_some() {
        std::fs::write(
            SECURITY_MD,
            format!("{head}{TABLE_BEGIN}{new}{TABLE_END}{tail}"),
        )
        .unwrap();
        return;
    }
    panic!(
        "docs/security.md's route table is out of date; rewrite it with \
         `BOOKSTORE_BLESS=1 cargo test -p bookstore-testkit --test system contract`. It should be:\n{table}"
    );
}
