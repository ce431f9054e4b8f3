//! Frontend service: the public REST API. Modules: [`cli`] (flags and `launch`, shared
//! with `infra serve frontend`), [`near`] (the near cache), [`observe`] (`/cluster` and
//! the status page), [`admin`] (forwarding `/admin/cluster/*` to the coordinators).
//!
//! `GET /search?topic=`, `GET /lookup?item_number=`, `POST /buy?item_number=`,
//! `GET /health`, and the admin route `POST /admin/restock` (admin token). Reads go
//! to the cache first and fill it (asynchronously, versioned) on a miss; buys go to
//! the order service with an idempotency key.
//!
//! Writes go to the primary of catalog and order (learned from the coordinator leader's
//! views, and from `421` answers), failing over to the next replica when one does not
//! answer. Every frontend is the same: none hosts any part of the control plane, and the
//! admin membership routes (`/admin/cluster/*`) are forwarded to the coordinators. Lookups are read from the catalog primary;
//! searches (titles never change) from any caught-up replica in turn.
//!
//! The API is described by OpenAPI documents generated from the handlers' annotations:
//! [`public_openapi`] (served at `GET /openapi.json`) and [`internal_openapi`]
//! (`GET /internal/openapi.json`, cluster token).
//!
//! Each frontend keeps a **near cache** ([`near`]): answers held in this process under a
//! lease from the cache service, which pushes every invalidation here before it
//! acknowledges it, so a hit costs one HTTP hop and is never staler than the cache's.
//!
//! A lookup or search sent with `Cache-Control: no-cache` (or `no-store`) skips the
//! cache both ways: it is answered by the catalog and does not fill the cache (used by
//! `loadtest run --compare-cache` to measure what the cache saves).
//!
//! Operators: `GET /cluster` (cluster or admin token) maps every server, `GET /metrics`
//! (same tokens) exports Prometheus metrics, and the public `GET /status` page renders
//! `GET /status.json` (the map without addresses, and the stock of each book): see
//! [`observe`].
pub mod admin;
pub mod cli;
pub mod near;
pub mod observe;

use actix_web::http::header::ContentType;
use actix_web::{middleware::from_fn, web, HttpRequest, HttpResponse};
use bookstore_common::auth::{require_admin_token, require_operator_token, Tokens};
use bookstore_common::batch::Batcher;
use bookstore_common::client::{encode, CallError, Client};
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::coordinators::Coordinators;
use bookstore_common::error::ErrorBody;
use bookstore_common::idempotency::IdempotencyKey;
use bookstore_common::metrics::{self, Metrics};
use bookstore_common::openapi::answers::{KeyReused, MalformedBody, NoSuchBook};
use bookstore_common::openapi::{self, Access, IdempotencyHeader, ItemQuery, TopicQuery};
use bookstore_common::oplog::OpLog;
use bookstore_common::params::{batch_len, idempotency_key, Query};
use bookstore_common::router::{self, batched_or_single, follow_views, Batched, Read, Router};
use bookstore_common::tasks::Tasks;
use bookstore_common::timing::{Timing, SERVER_TIMING};
use bookstore_common::types::{
    Book, BuyBatch, BuyRequest, BuySuccess, CacheFill, Health, InvalidationBatch, ItemNumber,
    LookupResponse, Readiness, SearchHit, SearchResponse, Versioned, CACHE_VERSION_HEADER,
    IDEMPOTENCY_KEY_HEADER,
};
use bookstore_common::{server, ApiError};
use bytes::Bytes;
use near::{Near, Ticket};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;

#[derive(Debug, Clone)]
pub struct FrontendConfig {
    pub id: u32,
    pub cluster: ClusterConfig,
    /// Cluster token (to call the services) and admin token (for `/admin/*`).
    pub tokens: Tokens,
    pub output_dir: Option<PathBuf>,
    /// How often the routers ask the coordinators for the views: every two ticks.
    pub tick: Duration,
    pub workers: usize,
    /// The most answers the near cache holds; 0 turns it off.
    pub near_entries: usize,
}

pub struct Frontend {
    id: u32,
    client: Client,
    cache: Option<String>,
    /// This frontend's near cache (when the cluster has a cache service).
    near: Option<Arc<Near>>,
    catalog: Arc<Router>,
    order: Arc<Router>,
    /// Concurrent buys leave together as one `POST /buy_batch`.
    buys: Batcher<BuyRequest, Batched<BuySuccess>>,
    coordinators: Arc<Coordinators>,
    log: OpLog,
    obs: observe::Observer,
    /// The view followers, the near lease loop and the cache fills.
    tasks: Tasks,
}

impl Frontend {
    pub fn new(config: &FrontendConfig) -> std::io::Result<Frontend> {
        let log = match &config.output_dir {
            Some(dir) => OpLog::open(&dir.join("frontend_log"))?,
            None => OpLog::disabled(),
        };
        let client = Client::new(config.tokens.cluster());
        let tasks = Tasks::new();
        let router = |kind: Kind| {
            let urls = config.cluster.urls(kind);
            if urls.is_empty() {
                return Err(std::io::Error::other(format!("the cluster has no {kind}")));
            }
            Ok(Arc::new(Router::new(client.clone(), urls)))
        };
        let catalog = router(Kind::Catalog)?;
        let order = router(Kind::Order)?;
        // Follow the coordinators' views: primaries and members.
        let coordinators = Arc::new(Coordinators::new(
            Client::with_timeout(config.tokens.cluster(), Duration::from_millis(500)),
            config.cluster.urls(Kind::Coordinator),
        ));
        for (kind, r) in [("catalog", &catalog), ("order", &order)] {
            follow_views(r, coordinators.clone(), kind, config.tick * 2, &tasks);
        }
        let obs = observe::Observer::new(
            config.id,
            config.cluster.clone(),
            config.tokens.cluster(),
            coordinators.clone(),
        );
        let cache = config.cluster.servers(Kind::Cache).first().map(|e| e.url());
        let near = cache
            .as_ref()
            .filter(|_| config.near_entries > 0)
            .map(|url| {
                let near = Arc::new(Near::new(config.near_entries));
                near::spawn_lease_loop(&near, client.clone(), url.clone(), config.id, &tasks);
                near
            });
        // One batch of buys on its way at a time: the others wait and leave together in
        // the next, larger one. Against two, 19 % less server CPU per sale at 16
        // connections for about 5 % fewer sales a second (docs/performance.md, round 5).
        let buys = router::batcher("buys", 1, &order, "/buy_batch", |buys| BuyBatch { buys });
        Ok(Frontend {
            obs,
            id: config.id,
            cache,
            near,
            catalog,
            buys,
            order,
            client,
            coordinators,
            log,
            tasks,
        })
    }

    /// Asks the cache service for `path`: the stored answer and the catalog version it
    /// was read at.
    async fn cached(&self, path: String, t: &mut Timing) -> Option<(Bytes, Option<u64>)> {
        let cache = self.cache.as_ref()?;
        let req = self
            .client
            .raw()
            .get(format!("{cache}{path}"))
            .timeout(Duration::from_millis(200));
        let found = t
            .time(
                "cache",
                self.client.send_with_header(req, CACHE_VERSION_HEADER),
            )
            .await
            .ok()
            .map(|(body, version)| (body, version.and_then(|v| v.parse().ok())));
        self.obs
            .cache_lookup(if found.is_some() { "hit" } else { "miss" });
        found
    }

    /// A near hit for `found` (a near-cache lookup), counted.
    fn near_hit(&self, found: Option<Bytes>, t: &Timing) -> Option<HttpResponse> {
        let body = found?;
        self.obs.cache_lookup("near");
        Some(json_answer(body, t))
    }

    /// Stores an answer in the cache without holding up the reply.
    fn fill(&self, path: String, fill: CacheFill) {
        let Some(cache) = &self.cache else { return };
        let req = self.client.raw().post(format!("{cache}{path}")).json(&fill);
        let client = self.client.clone();
        self.tasks.spawn(async move {
            if let Err(e) = client.send(req).await {
                tracing::debug!(error = %e, "cache fill failed");
            }
        });
    }
}

/// Maps a failed call to catalog or order onto the public answer.
fn upstream_error(who: &str, e: CallError) -> ApiError {
    match e {
        CallError::Status { status: 404, body } => ApiError::NotFound(body.error),
        CallError::Status { status: 400, body } => ApiError::BadRequest(body.error),
        CallError::Status { status: 409, .. } => ApiError::OutOfStock,
        CallError::Status { status: 422, body } => ApiError::Unprocessable(body.error),
        other => {
            tracing::warn!(error = %other, "{who} call failed");
            ApiError::Unavailable(format!("{who} unavailable, try again"))
        }
    }
}

/// Whether the request asks to skip the cache: `Cache-Control: no-cache` or `no-store`.
pub fn bypasses_cache(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(actix_web::http::header::CACHE_CONTROL)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|d| {
            let d = d.trim();
            d.eq_ignore_ascii_case("no-cache") || d.eq_ignore_ascii_case("no-store")
        })
}

/// A JSON answer with this frontend's `Server-Timing`.
fn json_answer(body: Bytes, t: &Timing) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .insert_header((SERVER_TIMING, t.header("frontend")))
        .body(body)
}

fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadGateway(format!("bad catalog answer: {e}")))
}

type Ctx = web::Data<Frontend>;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health(ctx: Ctx) -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        service: "frontend".into(),
        id: ctx.id,
        role: None,
        epoch: None,
    })
}

/// A book by item number.
#[utoipa::path(get, path = "/lookup", params(ItemQuery), responses(
    (status = 200, body = LookupResponse),
    (status = 400, description = "Missing or malformed item_number", body = ErrorBody),
    NoSuchBook,
))]
async fn lookup(
    ctx: Ctx,
    req: HttpRequest,
    Query(q): Query<ItemQuery>,
) -> Result<HttpResponse, ApiError> {
    let item = q.item_number.0;
    ctx.log.record(format!("lookup,{item}"));
    read(&ctx, &req, Public::Lookup(item)).await
}

/// The books of a topic (an empty list for an unknown topic).
#[utoipa::path(get, path = "/search", params(TopicQuery), responses(
    (status = 200, body = SearchResponse),
    (status = 400, description = "Missing, empty or too long topic", body = ErrorBody),
))]
async fn search(
    ctx: Ctx,
    req: HttpRequest,
    Query(q): Query<TopicQuery>,
) -> Result<HttpResponse, ApiError> {
    let topic = q.topic.0.as_str();
    ctx.log.record(format!("search,{topic}"));
    read(&ctx, &req, Public::Search(topic)).await
}

/// A public answer built from the catalog's: its version, the items it depends on, the
/// bytes sent, and the JSON the cache stores.
type Answer = (u64, Vec<ItemNumber>, Bytes, serde_json::Value);

/// A public read: what a lookup and a search differ in on their one path.
#[derive(Clone, Copy)]
enum Public<'a> {
    Lookup(ItemNumber),
    Search(&'a str),
}

impl Public<'_> {
    /// The near cache's answer, if it holds one under its lease.
    fn near(self, near: &Near) -> Option<Bytes> {
        match self {
            Public::Lookup(item) => near.lookup(item),
            Public::Search(topic) => near.search(topic),
        }
    }

    /// The cache service's route for it.
    fn cache_path(self) -> String {
        match self {
            Public::Lookup(item) => format!("/lookup?item_number={item}"),
            Public::Search(topic) => format!("/search?topic={}", encode(topic)),
        }
    }

    /// The catalog's route for it, and which replica may answer: the primary for a
    /// lookup (stock changes), any caught-up one for a search (titles never change).
    fn catalog(self) -> (String, Read) {
        match self {
            Public::Lookup(item) => (
                format!("/query_by_item?item_number={item}&consistent=1"),
                Read::Primary,
            ),
            Public::Search(topic) => (
                format!("/query_by_topic?topic={}", encode(topic)),
                Read::Any,
            ),
        }
    }

    /// The cache service's route that stores it.
    fn fill_path(self) -> String {
        match self {
            Public::Lookup(_) => "/put_lookup_cache".into(),
            Public::Search(topic) => format!("/put_search_cache?topic={}", encode(topic)),
        }
    }

    /// The public answer to the catalog's `body`: its version, the items it depends on,
    /// and the answer (as sent, and as the cache stores it).
    fn answer(self, body: &[u8]) -> Result<Answer, ApiError> {
        fn encoded<T: serde::Serialize>(r: &T) -> (Bytes, serde_json::Value) {
            (
                Bytes::from(serde_json::to_vec(r).unwrap_or_default()),
                serde_json::to_value(r).unwrap_or_default(),
            )
        }
        Ok(match self {
            Public::Lookup(item) => {
                let v: Versioned<Book> = decode(body)?;
                let (bytes, json) = encoded(&LookupResponse { result: v.result });
                (v.version, vec![item], bytes, json)
            }
            Public::Search(_) => {
                let v: Versioned<Vec<SearchHit>> = decode(body)?;
                let items = v.result.iter().map(|h| h.item_number).collect();
                let (bytes, json) = encoded(&SearchResponse { result: v.result });
                (v.version, items, bytes, json)
            }
        })
    }

    /// Keeps `body`, read at `version`, in the near cache; a search answer's items are
    /// read from the answer itself when not given.
    fn near_put(
        self,
        near: &Near,
        ticket: Ticket,
        version: u64,
        items: Option<Vec<ItemNumber>>,
        body: Bytes,
    ) {
        match self {
            Public::Lookup(item) => near.put_lookup(ticket, item, version, body),
            Public::Search(topic) => {
                #[derive(serde::Deserialize)]
                struct Hit {
                    item_number: ItemNumber,
                }
                #[derive(serde::Deserialize)]
                struct Hits {
                    result: Vec<Hit>,
                }
                let items = items.or_else(|| {
                    serde_json::from_slice::<Hits>(&body)
                        .ok()
                        .map(|h| h.result.into_iter().map(|h| h.item_number).collect())
                });
                if let Some(items) = items {
                    near.put_search(ticket, topic, version, items, body);
                }
            }
        }
    }
}

/// The read path: the near cache, then the cache service, then the catalog, whose
/// answer fills both caches on the way back. `Cache-Control: no-cache` skips the caches
/// both ways.
async fn read(
    ctx: &Frontend,
    req: &HttpRequest,
    key: Public<'_>,
) -> Result<HttpResponse, ApiError> {
    let mut t = Timing::start();
    let use_cache = !bypasses_cache(req);
    let near = ctx.near.as_ref().filter(|_| use_cache);
    let mut ticket = None;
    if let Some(near) = near {
        if let Some(hit) = ctx.near_hit(key.near(near), &t) {
            return Ok(hit);
        }
        ticket = Some(near.ticket());
    }
    if use_cache {
        if let Some((body, version)) = ctx.cached(key.cache_path(), &mut t).await {
            if let (Some(near), Some(ticket), Some(version)) = (near, ticket, version) {
                key.near_put(near, ticket, version, None, body.clone());
            }
            return Ok(json_answer(body, &t));
        }
    }
    let (path, from) = key.catalog();
    let body = t
        .time("catalog", ctx.catalog.read(&path, from))
        .await
        .map_err(|e| upstream_error("catalog", e))?;
    let (version, items, bytes, response) = key.answer(&body)?;
    if use_cache {
        if let (Some(near), Some(ticket)) = (near, ticket) {
            key.near_put(near, ticket, version, Some(items.clone()), bytes.clone());
        }
        ctx.fill(
            key.fill_path(),
            CacheFill {
                version,
                items,
                response,
            },
        );
    }
    Ok(json_answer(bytes, &t))
}

/// Cache -> frontend: drop the near entries of each item read below its version (the
/// cache's own invalidations, passed on before the cache acknowledges them).
#[utoipa::path(post, path = "/internal/near/invalidate_batch", request_body = InvalidationBatch, responses(
    (status = 200, body = bookstore_common::types::Done),
    MalformedBody,
))]
async fn near_invalidate(
    ctx: Ctx,
    body: web::Json<InvalidationBatch>,
) -> Result<HttpResponse, ApiError> {
    batch_len("items", body.items.len())?;
    if let Some(near) = &ctx.near {
        for inv in &body.items {
            near.invalidate(inv.item_number, inv.version, inv.epoch);
        }
    }
    Ok(done())
}

/// Cache -> frontend: drop every near entry (the cache flushed).
#[utoipa::path(post, path = "/internal/near/flush", responses(
    (status = 200, body = bookstore_common::types::Done),
))]
async fn near_flush(ctx: Ctx) -> HttpResponse {
    if let Some(near) = &ctx.near {
        near.flush();
    }
    done()
}

fn done() -> HttpResponse {
    HttpResponse::Ok().json(bookstore_common::types::Done {
        result: "ok".into(),
    })
}

#[derive(OpenApi)]
#[openapi(paths(near_invalidate, near_flush))]
struct NearApi;

/// The request's idempotency key, and whether it is fresh: made up here, so that no
/// other attempt under it can exist.
fn client_key(req: &HttpRequest) -> Result<(IdempotencyKey, bool), ApiError> {
    let given = idempotency_key(
        req.headers()
            .get(IDEMPOTENCY_KEY_HEADER)
            .map(|v| v.as_bytes()),
    )?;
    Ok(match given {
        Some(key) => (key, false),
        None => (IdempotencyKey::generate(), true),
    })
}

/// Buys one copy.
#[utoipa::path(post, path = "/buy", params(ItemQuery, IdempotencyHeader), responses(
    (status = 200, body = BuySuccess),
    (status = 400, description = "Malformed item_number or Idempotency-Key", body = ErrorBody),
    (status = 409, description = "Sold out: `{\"result\":\"Failed\",\"error\":\"out of stock\"}`", body = ErrorBody),
    NoSuchBook, KeyReused,
))]
async fn buy(
    ctx: Ctx,
    req: HttpRequest,
    Query(q): Query<ItemQuery>,
) -> Result<HttpResponse, ApiError> {
    let item = q.item_number.0;
    let (key, fresh) = client_key(&req)?;
    ctx.log.record(format!("buy,{item}"));
    let mut t = Timing::start();
    // Sent with other buys in flight. A buy whose outcome is unknown is sent again with
    // the same key, alone (the router follows the primary): it cannot buy twice.
    let path = format!("/buy?item_number={item}");
    let headers = [(IDEMPOTENCY_KEY_HEADER, key.as_str())];
    let single = ctx.order.write_timed(&path, &headers);
    let request = BuyRequest {
        item_number: item,
        key: key.as_str().to_owned(),
        fresh,
    };
    let (ok, timing): (BuySuccess, _) = t
        .time("order", async {
            batched_or_single(ctx.buys.call(request).await, single).await
        })
        .await
        .map_err(|e| upstream_error("order", e))?;
    if let Some(h) = timing {
        t.nest("order", &h);
    }
    Ok(HttpResponse::Ok()
        .insert_header((SERVER_TIMING, t.header("frontend")))
        .json(ok))
}

/// `POST /admin/restock?item_number=N&quantity=Q[&cost=C]`: adds Q copies and
/// optionally sets the price.
#[utoipa::path(post, path = "/admin/restock", params(ItemQuery, RestockQuery, IdempotencyHeader), responses(
    (status = 200, body = LookupResponse),
    (status = 400, description = "Malformed parameter, or neither quantity nor cost", body = ErrorBody),
    NoSuchBook, KeyReused,
))]
async fn restock(
    ctx: Ctx,
    req: HttpRequest,
    Query(item): Query<ItemQuery>,
    Query(q): Query<RestockQuery>,
) -> Result<HttpResponse, ApiError> {
    let item = item.item_number.0;
    let quantity = q.quantity.unwrap_or(0);
    let cost = q.cost;
    if quantity == 0 && cost.is_none() {
        return Err(ApiError::BadRequest(
            "give quantity (copies to add) or cost (new price), or both".into(),
        ));
    }
    let (key, _) = client_key(&req)?;
    let cost_param = cost.map_or("na".to_string(), |c| c.to_string());
    let path = format!("/update?item_number={item}&stock={quantity}&cost={cost_param}");
    ctx.log
        .record(format!("restock,{item},{quantity},{cost_param}"));
    let v: Versioned<Book> = ctx
        .catalog
        .write(&path, &[(IDEMPOTENCY_KEY_HEADER, key.as_str())])
        .await
        .map_err(|e| upstream_error("catalog", e))?;
    Ok(HttpResponse::Ok().json(LookupResponse { result: v.result }))
}

/// Readiness: 200 once this frontend knows who the catalog and order primaries are
/// (from the coordinators' views), else 503 naming what it waits for. A load balancer sends requests only to ready frontends.
#[utoipa::path(get, path = "/ready", responses(
    (status = 200, body = Readiness),
    (status = 503, description = "No view of catalog or order yet", body = Readiness),
))]
async fn ready(ctx: Ctx) -> HttpResponse {
    let waiting: Vec<&str> = [("catalog", &ctx.catalog), ("order", &ctx.order)]
        .into_iter()
        .filter(|(_, r)| !r.knows_view())
        .map(|(k, _)| k)
        .collect();
    Readiness::answer(
        (!waiting.is_empty())
            .then(|| format!("a view of {} from the coordinators", waiting.join(" and "))),
    )
}

/// Query of `POST /admin/restock` besides `item_number`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RestockQuery {
    /// Copies to add (give this, `cost`, or both; `0` adds none).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub quantity: Option<u32>,
    /// The new price.
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub cost: Option<u32>,
}

/// The paths of the public document.
#[derive(OpenApi)]
#[openapi(paths(health, ready, lookup, search, buy, restock))]
struct PublicPaths;

/// The public API (`GET /openapi.json`): search, lookup, buy, health, admin restock.
pub fn public_openapi() -> utoipa::openapi::OpenApi {
    let mut paths = PublicPaths::openapi();
    paths.merge(admin::MembershipApi::openapi());
    paths.merge(observe::StatusApi::openapi());
    openapi::finish(
        paths,
        "bookstore public API",
        openapi::PUBLIC_DOC_PATH,
        |path| {
            if path.starts_with("/admin/") {
                Access::Admin
            } else {
                Access::Public
            }
        },
    )
}

/// The frontend's internal API (`GET /internal/openapi.json`, cluster token): `/cluster`
/// and `/metrics` (which also take the admin token), and the near cache's routes.
pub fn internal_openapi() -> utoipa::openapi::OpenApi {
    let mut doc = observe::ClusterApi::openapi();
    doc.merge(NearApi::openapi());
    openapi::internal(doc, "bookstore frontend internal API")
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    let (public, internal) = (public_openapi(), internal_openapi());
    cfg.app_data(openapi::allowed_methods(&[&public, &internal]))
        .app_data(server::json_config());
    openapi::serve_doc(cfg, openapi::PUBLIC_DOC_PATH, &public);
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .route("/search", web::get().to(search))
        .route("/lookup", web::get().to(lookup))
        .service(server::post("/buy", buy))
        .service(
            web::scope("/admin")
                .wrap(from_fn(require_admin_token))
                .service(server::post("/restock", restock))
                .service(server::post("/cluster/register", admin::register))
                .service(server::post("/cluster/unregister", admin::unregister)),
        )
        .service(server::get("/cluster", observe::cluster).wrap(from_fn(require_operator_token)))
        .service(server::get("/status", observe::status_page))
        .service(server::get("/status.json", observe::status_json))
        .configure(metrics::routes)
        .service(
            web::scope("/internal")
                .wrap(from_fn(bookstore_common::auth::require_cluster_token))
                .service(server::post("/near/invalidate_batch", near_invalidate))
                .service(server::post("/near/flush", near_flush))
                .configure(move |c| {
                    let path = openapi::INTERNAL_DOC_PATH.trim_start_matches("/internal");
                    openapi::serve_doc(c, path, &internal)
                }),
        )
        .default_service(web::to(server::not_found));
}

/// Serves the frontend on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: FrontendConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let frontend = Frontend::new(&config)?;
    let frontend = web::Data::new(frontend);
    let tasks = frontend.tasks.clone();
    let metrics = web::Data::new(Metrics::new());
    frontend.obs.register_metrics(&frontend, &metrics);
    frontend.log.register_metrics(&metrics);
    bookstore_common::batch::register_metrics(&metrics, "buys", frontend.buys.stats());
    let tokens = web::Data::new(config.tokens.clone());
    tracing::info!(addr = %listener.local_addr()?, "frontend serving");
    let configure = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(frontend.clone())
            .app_data(metrics.clone())
            .app_data(tokens.clone());
        routes(cfg);
    };
    tasks
        .stop_after(server::serve(listener, config.workers, configure, shutdown))
        .await
}
