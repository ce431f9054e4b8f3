//! OpenAPI 3 documents generated from the code (utoipa): handlers carry
//! `#[utoipa::path]`, wire types derive `ToSchema`, and each service assembles its
//! documents with [`finish`], which adds what every route shares: the security scheme
//! of the token a route needs, the error answers of the limits in [`crate::server`]
//! and the route that serves the document itself.
//!
//! The frontend serves the public document at `GET /openapi.json`; every server serves
//! its internal document at `GET /internal/openapi.json` (cluster token).
//!
//! The error answers that routes of several services share are typed in [`answers`].
pub mod answers;

use crate::error::ErrorBody;
use actix_web::{web, HttpResponse};
use utoipa::openapi::path::{HttpMethod, Operation, OperationBuilder, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ContentBuilder, ObjectBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder,
};
use utoipa::{PartialSchema, ToSchema};

/// Where the frontend serves the public document.
pub const PUBLIC_DOC_PATH: &str = "/openapi.json";
/// Where every server serves its internal document (cluster token).
pub const INTERNAL_DOC_PATH: &str = "/internal/openapi.json";

/// The token a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// Anyone.
    Public,
    /// `X-Cluster-Token: <cluster token>` (service-to-service routes).
    Cluster,
    /// `Authorization: Bearer <admin token>` (`/admin/*`).
    Admin,
    /// Either token (operator routes: `/metrics`, `/cluster`, `/coordinator/status`):
    /// `X-Cluster-Token`, or `Authorization: Bearer` with the cluster or the admin token.
    Operator,
}

/// The routes of internal documents that take either token ([`Access::Operator`]).
pub const OPERATOR_ROUTES: [&str; 3] = ["/metrics", "/cluster", "/coordinator/status"];

impl Access {
    /// The security schemes a request may satisfy (any one of them).
    fn schemes(self) -> &'static [&'static str] {
        match self {
            Access::Public => &[],
            Access::Cluster => &["cluster_token"],
            Access::Admin => &["admin_token"],
            Access::Operator => &["cluster_token", "admin_token"],
        }
    }

    /// The access a document's operation states, from its security requirements.
    pub fn of(op: &Operation) -> Access {
        let json = serde_json::to_value(&op.security).unwrap_or_default();
        let names: Vec<&str> = json
            .as_array()
            .map(|reqs| {
                reqs.iter()
                    .filter_map(|r| r.as_object()?.keys().next().map(String::as_str))
                    .collect()
            })
            .unwrap_or_default();
        match names.as_slice() {
            [] => Access::Public,
            ["cluster_token"] => Access::Cluster,
            ["admin_token"] => Access::Admin,
            _ => Access::Operator,
        }
    }

    /// How the route table of docs/security.md names it.
    pub fn describe(self) -> &'static str {
        match self {
            Access::Public => "nothing",
            Access::Cluster => "cluster token",
            Access::Admin => "admin token",
            Access::Operator => "cluster or admin token",
        }
    }
}

fn error_response(description: &str) -> RefOr<Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

fn operations(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        &mut item.get,
        &mut item.post,
        &mut item.put,
        &mut item.delete,
        &mut item.patch,
        &mut item.head,
        &mut item.options,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

/// A server's internal document (served at [`INTERNAL_DOC_PATH`]): `doc` plus
/// `GET /metrics`, with `/health` and `/ready` public and every other route behind the
/// cluster token.
pub fn internal(mut doc: OpenApi, title: &str) -> OpenApi {
    doc.merge(<crate::metrics::MetricsApi as utoipa::OpenApi>::openapi());
    finish(doc, title, INTERNAL_DOC_PATH, |path| {
        if matches!(path, "/health" | "/ready") {
            Access::Public
        } else if OPERATOR_ROUTES.contains(&path) {
            Access::Operator
        } else {
            Access::Cluster
        }
    })
}

/// Completes a service's document: `title`; the route serving it at `doc_path`; the
/// security requirement `access(path)` says each route has; the `ErrorBody` answers every
/// route can give (the limits of [`crate::server::serve`], 401 on token routes).
pub fn finish(
    mut doc: OpenApi,
    title: &str,
    doc_path: &str,
    access: impl Fn(&str) -> Access,
) -> OpenApi {
    doc.info.title = title.to_string();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.info.description = Some(
        "Generated from the bookstore's code (utoipa). Every error answer is JSON \
         `{\"error\": \"...\"}` naming the problem."
            .into(),
    );
    let doc_op = OperationBuilder::new()
        .summary(Some("This document"))
        .operation_id(Some(format!("get{}", doc_path.replace(['/', '.'], "_"))))
        .response(
            "200",
            ResponseBuilder::new()
                .description("The OpenAPI document")
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ObjectBuilder::new().build()))
                        .build(),
                ),
        )
        .build();
    doc.paths
        .paths
        .insert(doc_path.to_string(), PathItem::new(HttpMethod::Get, doc_op));
    let components = doc.components.get_or_insert_with(Default::default);
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    let mut used = Vec::new();
    for (path, item) in doc.paths.paths.iter_mut() {
        let access = access(path);
        for op in operations(item) {
            let responses = &mut op.responses.responses;
            for (code, what) in [
                ("413", "Body larger than the server's limit"),
                (
                    "414",
                    "Request target (path and query) longer than the limit",
                ),
                ("431", "Request headers larger than the limit"),
                (
                    "503",
                    "Unavailable: overloaded, timed out, or a dependency is down (Retry-After)",
                ),
            ] {
                responses
                    .entry(code.to_string())
                    .or_insert_with(|| error_response(what));
            }
            let schemes = access.schemes();
            if !schemes.is_empty() {
                responses
                    .entry("401".to_string())
                    .or_insert_with(|| error_response("Missing or wrong token"));
                op.security = Some(
                    schemes
                        .iter()
                        .map(|s| SecurityRequirement::new::<_, _, &str>(*s, []))
                        .collect(),
                );
                used.extend_from_slice(schemes);
            }
        }
    }
    if used.contains(&"cluster_token") {
        components.add_security_scheme(
            "cluster_token",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                crate::types::CLUSTER_TOKEN_HEADER,
                "The cluster token (BOOKSTORE_CLUSTER_TOKEN)",
            ))),
        );
    }
    if used.contains(&"admin_token") {
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("The admin token (BOOKSTORE_ADMIN_TOKEN)"))
                    .build(),
            ),
        );
    }
    doc
}

/// Every `(METHOD, path)` a document lists, e.g. `("POST", "/vs/{kind}/ping")`.
pub fn operations_of(doc: &OpenApi) -> Vec<(String, String)> {
    routes_of(doc)
        .into_iter()
        .map(|r| (r.method, r.path))
        .collect()
}

/// One operation of a document: what docs/security.md's route table lists.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RouteInfo {
    pub path: String,
    pub method: String,
    pub access: Access,
    /// The operation's summary and description (its handler's doc).
    pub summary: String,
}

/// Every operation of a document, with the access it states.
pub fn routes_of(doc: &OpenApi) -> Vec<RouteInfo> {
    let mut out = Vec::new();
    for (path, item) in &doc.paths.paths {
        for (m, op) in [
            ("GET", &item.get),
            ("POST", &item.post),
            ("PUT", &item.put),
            ("DELETE", &item.delete),
            ("PATCH", &item.patch),
            ("HEAD", &item.head),
            ("OPTIONS", &item.options),
            ("TRACE", &item.trace),
        ] {
            if let Some(op) = op {
                out.push(RouteInfo {
                    path: path.clone(),
                    method: m.to_string(),
                    access: Access::of(op),
                    summary: [op.summary.as_deref(), op.description.as_deref()]
                        .into_iter()
                        .flatten()
                        .collect::<Vec<_>>()
                        .join(" "),
                });
            }
        }
    }
    out
}

/// The methods of each path of `docs`, for [`crate::server::not_found`]'s 405s.
pub fn allowed_methods(docs: &[&OpenApi]) -> web::Data<crate::server::AllowedMethods> {
    let mut map = std::collections::HashMap::<String, Vec<String>>::new();
    for doc in docs {
        for (method, path) in operations_of(doc) {
            map.entry(path).or_default().push(method);
        }
    }
    let map = map.into_iter().map(|(k, v)| (k, v.join(", "))).collect();
    web::Data::new(crate::server::AllowedMethods(map))
}

/// Registers the token-guarded part of an internal service (cache, catalog, order): the
/// routes `routes` registers, behind the cluster token; `doc` at [`INTERNAL_DOC_PATH`];
/// and a 404 (or 405, from `doc`'s methods) for every other path. Its scope matches every
/// path, so register open routes such as `/health` before it.
pub fn serve_internal(
    cfg: &mut web::ServiceConfig,
    doc: OpenApi,
    routes: impl FnOnce(&mut web::ServiceConfig) + 'static,
) {
    cfg.app_data(allowed_methods(&[&doc])).service(
        web::scope("")
            .wrap(actix_web::middleware::from_fn(
                crate::auth::require_cluster_token,
            ))
            .configure(routes)
            .configure(move |c| serve_doc(c, INTERNAL_DOC_PATH, &doc))
            .default_service(web::to(crate::server::not_found)),
    );
}

/// Registers `GET path` answering with `doc` (serialized once).
pub fn serve_doc(cfg: &mut web::ServiceConfig, path: &str, doc: &OpenApi) {
    let body = web::Bytes::from(doc.to_json().expect("an OpenAPI document serializes"));
    cfg.route(
        path,
        web::get().to(move || {
            let body = body.clone();
            async move {
                HttpResponse::Ok()
                    .content_type("application/json")
                    .body(body)
            }
        }),
    );
}

/// Query `item_number` (handlers take it as [`crate::params::Query`]`<ItemQuery>`).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ItemQuery {
    /// The book's item number.
    #[param(value_type = u64, minimum = 1, maximum = 4294967295_u64)]
    pub item_number: crate::params::ItemNumberParam,
}

/// Query `topic`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TopicQuery {
    /// A topic, e.g. `distributed systems` (not only whitespace).
    #[param(value_type = String, min_length = 1, max_length = 256, pattern = r"\S")]
    pub topic: crate::params::Topic,
}

/// Header `Idempotency-Key` (documentation only).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// 1 to 128 visible ASCII characters; a retried request with the same key is applied
    /// once and answered like the first.
    #[param(rename = "Idempotency-Key", pattern = r"^[!-~]{1,128}$")]
    pub key: Option<String>,
}
