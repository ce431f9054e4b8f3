//! The OpenAPI documents cannot drift from the routers: every operation a router serves
//! is in its server's documents, and every documented operation is served. The routers'
//! routes are read from actix's own resource map, and each (method, path) is probed.
use actix_web::{test, web, App, HttpRequest, HttpResponse};
use bookstore_common::auth::Tokens;
use bookstore_common::openapi::operations_of;
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
async fn frontend_documents_match_its_router() {
    check(
        "frontend",
        bookstore_frontend::routes,
        &[
            bookstore_frontend::public_openapi(),
            bookstore_frontend::internal_openapi(),
        ],
    )
    .await;
}

#[actix_web::test]
async fn coordinator_documents_match_its_router() {
    check(
        "coordinator",
        bookstore_coordinator::routes,
        &[
            bookstore_coordinator::internal_openapi(),
            bookstore_coordinator::admin_openapi(),
        ],
    )
    .await;
}

#[actix_web::test]
async fn catalog_document_matches_its_router() {
    check(
        "catalog",
        bookstore_catalog::routes,
        &[bookstore_catalog::internal_openapi()],
    )
    .await;
}

#[actix_web::test]
async fn order_document_matches_its_router() {
    check(
        "order",
        bookstore_order::routes,
        &[bookstore_order::internal_openapi()],
    )
    .await;
}

#[actix_web::test]
async fn cache_document_matches_its_router() {
    check(
        "cache",
        bookstore_cache::routes,
        &[bookstore_cache::internal_openapi()],
    )
    .await;
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
