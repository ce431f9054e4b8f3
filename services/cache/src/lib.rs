//! Cache service: lookup and search answers, kept coherent with the catalog.
//!
//! - [`cli`]: the server's flags and `launch` (shared with `infra serve cache`).
//! - [`store`]: entries and the version rules (pure; shared with the frontends' near
//!   caches, in `bookstore_common::cache_store`).
//! - [`near`]: the frontends' near leases (pure): who must hear of an invalidation before
//!   the cache acknowledges it.
//! - this file: the routes (internal, cluster token), their OpenAPI document
//!   ([`internal_openapi`]) and the lease loop: the cache
//!   serves entries only while it holds a lease from the catalog, which lets a catalog
//!   that cannot reach the cache still guarantee no stale read after its write.
//!   `/metrics` (cluster or admin token) counts hits and misses
//!   (`bookstore_cache_requests_total{result}`), entries and whether a lease is held.
pub use bookstore_common::cache_store as store;
use bookstore_common::openapi::answers::MalformedBody;

pub mod near;

pub mod cli;

use actix_web::http::header::ContentType;
use actix_web::{web, HttpResponse};
use bookstore_common::auth::Tokens;
use bookstore_common::client::Client;
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::coordinators::Coordinators;
use bookstore_common::error::ErrorBody;
use bookstore_common::metrics::{self, Metrics};
use bookstore_common::openapi::{self, ItemQuery, TopicQuery};
use bookstore_common::oplog::OpLog;
use bookstore_common::params::{batch_len, Query};
use bookstore_common::router::{follow_views, Router};
use bookstore_common::tasks::Tasks;
use bookstore_common::types::{
    CacheFill, Health, LeaseReply, LeaseRequest, NearLeaseReply, NearLeaseRequest, Readiness,
    CACHE_VERSION_HEADER,
};
use bookstore_common::types::{Done, InvalidationBatch, ItemNumber};
use bookstore_common::{server, ApiError};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use store::Store;
use utoipa::OpenApi;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub cluster: ClusterConfig,
    pub tokens: Tokens,
    /// Where `cache_log` goes; `None` disables it.
    pub output_dir: Option<PathBuf>,
    /// How often the lease is renewed.
    pub renew_every: Duration,
    /// The most answers held (a new one beyond that evicts another).
    pub max_entries: usize,
    pub workers: usize,
}

pub struct Cache {
    store: RwLock<Store>,
    lease_until: Mutex<Option<Instant>>,
    /// The frontends' near leases.
    near: Mutex<near::Holders>,
    /// Each frontend's base URL (from the cluster file), where invalidations are pushed.
    frontends: HashMap<u32, String>,
    /// Pushes invalidations to the frontends.
    client: Client,
    /// When this cache started: for one near-lease length it holds back invalidation
    /// answers (see [`near::NEAR_LEASE`]).
    started: Instant,
    log: OpLog,
    hits: Counter,
    misses: Counter,
}

impl Cache {
    fn leased(&self) -> bool {
        self.lease_until.lock().is_some_and(|t| Instant::now() < t)
    }

    fn answer(&self, what: String, found: Option<(Bytes, u64)>) -> HttpResponse {
        match found {
            Some((body, version)) if self.leased() => {
                self.hits.inc();
                self.log.record(format!("{what},hit"));
                HttpResponse::Ok()
                    .insert_header(ContentType::json())
                    .insert_header((CACHE_VERSION_HEADER, version.to_string()))
                    .body(body)
            }
            _ => {
                self.misses.inc();
                self.log.record(format!("{what},miss"));
                HttpResponse::NotFound().json(serde_json::json!({"error": "not cached"}))
            }
        }
    }
}

type Ctx = web::Data<Cache>;

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", responses((status = 200, body = Health)))]
async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        service: "cache".into(),
        id: 0,
        role: None,
        epoch: None,
    })
}

/// A cached lookup answer (404 when not cached or not leased).
#[utoipa::path(get, path = "/lookup", params(ItemQuery), responses(
    (status = 200, body = serde_json::Value, description = "The stored public answer (a `LookupResponse` as the frontend stores it)"),
    (status = 400, description = "Malformed item_number", body = ErrorBody),
    (status = 404, description = "Not cached", body = ErrorBody),
))]
async fn lookup(ctx: Ctx, Query(q): Query<ItemQuery>) -> Result<HttpResponse, ApiError> {
    let item = q.item_number.0;
    let found = ctx.store.read().lookup_versioned(item);
    Ok(ctx.answer(format!("lookup,{item}"), found))
}

/// A cached search answer (404 when not cached or not leased).
#[utoipa::path(get, path = "/search", params(TopicQuery), responses(
    (status = 200, body = serde_json::Value, description = "The stored public answer (a `SearchResponse` as the frontend stores it)"),
    (status = 400, description = "Malformed topic", body = ErrorBody),
    (status = 404, description = "Not cached", body = ErrorBody),
))]
async fn search(ctx: Ctx, Query(q): Query<TopicQuery>) -> Result<HttpResponse, ApiError> {
    let topic = q.topic.0.as_str();
    let found = ctx.store.read().search_versioned(topic);
    Ok(ctx.answer(format!("search,{topic}"), found))
}

/// The stored answer: a fill's `response`, which must be a JSON object (as every public
/// answer is).
fn body_of(fill: &CacheFill) -> Result<Bytes, ApiError> {
    if !fill.response.is_object() {
        return Err(ApiError::BadRequest(
            "a fill's response must be a JSON object".into(),
        ));
    }
    Ok(Bytes::from(
        serde_json::to_vec(&fill.response).unwrap_or_default(),
    ))
}

/// Stores a lookup answer read at a catalog version.
#[utoipa::path(post, path = "/put_lookup_cache", request_body = LookupFill, responses(
    (status = 200, body = Stored),
    MalformedBody,
))]
async fn put_lookup(ctx: Ctx, fill: web::Json<CacheFill>) -> Result<HttpResponse, ApiError> {
    let [item] = fill.items[..] else {
        return Err(ApiError::BadRequest(
            "a lookup fill names exactly one item".into(),
        ));
    };
    let stored = ctx
        .store
        .write()
        .put_lookup(item, fill.version, body_of(&fill)?);
    ctx.log.record(format!("put_lookup,{item},{stored}"));
    Ok(HttpResponse::Ok().json(Stored { stored }))
}

/// Stores a search answer read at a catalog version.
#[utoipa::path(post, path = "/put_search_cache", params(TopicQuery), request_body = CacheFill, responses(
    (status = 200, body = Stored),
    (status = 400, description = "Malformed topic or body", body = ErrorBody),
))]
async fn put_search(
    ctx: Ctx,
    Query(q): Query<TopicQuery>,
    fill: web::Json<CacheFill>,
) -> Result<HttpResponse, ApiError> {
    let topic = q.topic.0.as_str();
    let fill = fill.into_inner();
    let body = body_of(&fill)?;
    let stored = ctx
        .store
        .write()
        .put_search(topic, fill.version, fill.items, body);
    ctx.log.record(format!("put_search,{topic},{stored}"));
    Ok(HttpResponse::Ok().json(Stored { stored }))
}

/// Drops the entries of each item read below its version (the catalog's invalidations,
/// sent together), and answers once every frontend holding a near lease has done the
/// same or its lease has run out.
#[utoipa::path(post, path = "/invalidate_batch", request_body = InvalidationBatch, responses(
    (status = 200, body = Done),
    MalformedBody,
))]
async fn invalidate_batch(
    ctx: Ctx,
    body: web::Json<InvalidationBatch>,
) -> Result<HttpResponse, ApiError> {
    let batch = body.into_inner();
    batch_len("items", batch.items.len())?;
    {
        let mut store = ctx.store.write();
        for inv in &batch.items {
            if let Some(e) = inv.epoch {
                store.observe_epoch(e);
            }
            store.invalidate(inv.item_number, inv.version);
        }
    }
    for inv in &batch.items {
        ctx.log
            .record(format!("invalidate_cache,{}", inv.item_number));
    }
    push_to_frontends(&ctx, "/internal/near/invalidate_batch", Some(&batch)).await;
    Ok(HttpResponse::Ok().json(Done {
        result: "ok".into(),
    }))
}

/// Makes sure no frontend can answer from a near entry the invalidation `path` drops:
/// pushes it to every frontend holding a near lease and, for each push that fails, waits
/// until that frontend's lease has run out.
async fn push_to_frontends(ctx: &Cache, path: &str, body: Option<&InvalidationBatch>) {
    // A frontend may still hold a lease from this cache's previous incarnation.
    let fresh_until = ctx.started + near::NEAR_LEASE;
    if Instant::now() < fresh_until {
        tokio::time::sleep_until(fresh_until.into()).await;
    }
    let live = ctx.near.lock().live(Instant::now());
    let pushes = live.into_iter().map(|(id, until)| async move {
        let ok = match ctx.frontends.get(&id) {
            Some(base) => {
                let timeout = until.saturating_duration_since(Instant::now());
                let mut req = ctx
                    .client
                    .raw()
                    .post(format!("{base}{path}"))
                    .timeout(timeout.max(Duration::from_millis(1)));
                if let Some(b) = body {
                    req = req.json(b);
                }
                ctx.client.send(req).await.is_ok()
            }
            None => false,
        };
        if !ok {
            let until = ctx.near.lock().failed(id);
            tracing::debug!(
                frontend = id,
                "near invalidation failed; waiting out its lease"
            );
            if let Some(t) = until {
                tokio::time::sleep_until(t.into()).await;
            }
        }
    });
    futures::future::join_all(pushes).await;
}

/// Grants (or renews) a frontend's near lease.
#[utoipa::path(post, path = "/near_lease", request_body = NearLeaseRequest, responses(
    (status = 200, body = NearLeaseReply),
    (status = 404, description = "No such frontend in the cluster file", body = ErrorBody),
    MalformedBody,
))]
async fn near_lease(ctx: Ctx, body: web::Json<NearLeaseRequest>) -> Result<HttpResponse, ApiError> {
    let id = u32::try_from(body.frontend)
        .ok()
        .filter(|id| ctx.frontends.contains_key(id))
        .ok_or_else(|| {
            ApiError::NotFound(format!("no frontend {} in the cluster file", body.frontend))
        })?;
    let cache_until = *ctx.lease_until.lock();
    let (grant, flush) = ctx
        .near
        .lock()
        .renew(id, body.session, Instant::now(), cache_until);
    Ok(HttpResponse::Ok().json(NearLeaseReply {
        millis: grant.as_millis() as u64,
        flush,
    }))
}

/// `GET /stats` answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Stats {
    pub hits: u64,
    pub misses: u64,
    pub entries: u64,
    /// Whether the cache holds a lease (serves hits).
    pub leased: bool,
    /// Frontends holding a near lease (answering hits from their own memory).
    #[serde(default)]
    pub near_leases: u64,
}

/// Hit and miss counts.
#[utoipa::path(get, path = "/stats", responses((status = 200, body = Stats)))]
async fn stats(ctx: Ctx) -> HttpResponse {
    HttpResponse::Ok().json(Stats {
        hits: ctx.hits.get(),
        misses: ctx.misses.get(),
        entries: ctx.store.read().len() as u64,
        leased: ctx.leased(),
        near_leases: ctx.near.lock().leased(Instant::now()) as u64,
    })
}

/// Answer of the fill routes.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Stored {
    /// False when the fill was older than what the cache knows.
    pub stored: bool,
}

/// The body of `POST /put_lookup_cache`: a [`CacheFill`] naming exactly one item
/// (documentation only).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
struct LookupFill {
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    version: u64,
    /// The one item the answer is about.
    #[schema(schema_with = lookup_items_schema)]
    items: Vec<ItemNumber>,
    /// The public JSON answer, stored and served as is.
    #[schema(value_type = Object)]
    response: serde_json::Value,
}

fn lookup_items_schema() -> utoipa::openapi::Array {
    let mut a = bookstore_common::types::whole::items_schema();
    a.min_items = Some(1);
    a.max_items = Some(1);
    a
}

/// Readiness: the cache needs nothing to answer (without a lease it only misses).
#[utoipa::path(get, path = "/ready", responses((status = 200, body = Readiness)))]
async fn ready() -> HttpResponse {
    Readiness::answer(None)
}

#[derive(OpenApi)]
#[openapi(paths(
    health,
    ready,
    lookup,
    search,
    put_lookup,
    put_search,
    invalidate_batch,
    near_lease,
    stats
))]
struct CachePaths;

/// The cache's API (`GET /internal/openapi.json`, cluster token; `/health` is public).
pub fn internal_openapi() -> utoipa::openapi::OpenApi {
    openapi::internal(CachePaths::openapi(), "bookstore cache API")
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(web::resource("/health").get(health))
        .service(web::resource("/ready").get(ready))
        .configure(metrics::routes);
    openapi::serve_internal(cfg, internal_openapi(), |c| {
        c.route("/lookup", web::get().to(lookup))
            .route("/search", web::get().to(search))
            .route("/put_lookup_cache", web::post().to(put_lookup))
            .route("/put_search_cache", web::post().to(put_search))
            .route("/invalidate_batch", web::post().to(invalidate_batch))
            .route("/near_lease", web::post().to(near_lease))
            .route("/stats", web::get().to(stats));
    });
}

/// Keeps the lease from the catalog primary alive.
async fn lease_loop(cache: web::Data<Cache>, catalog: Arc<Router>, every: Duration) {
    let mut flushed_to = None;
    let session = uuid::Uuid::new_v4().as_u64_pair().0 >> 1;
    loop {
        let asked_at = Instant::now();
        match catalog
            .write_json::<_, LeaseReply>(
                "/cache_lease",
                &LeaseRequest {
                    flushed_to,
                    session,
                },
            )
            .await
        {
            Ok(LeaseReply::Grant { millis, epoch }) => {
                // A grant from a primary older than one already seen is not a lease.
                if cache.store.write().observe_epoch(epoch) {
                    *cache.lease_until.lock() = Some(asked_at + Duration::from_millis(millis));
                }
            }
            Ok(LeaseReply::Flush { floor, epoch }) => {
                *cache.lease_until.lock() = None;
                let mut store = cache.store.write();
                store.observe_epoch(epoch);
                store.flush(floor);
                drop(store);
                cache.log.record(format!("flush,{floor}"));
                // The frontends' near caches drop everything too (they would stop at the
                // end of their leases anyway: those never outlive the cache's).
                let c = cache.clone();
                tokio::spawn(
                    async move { push_to_frontends(&c, "/internal/near/flush", None).await },
                );
                flushed_to = Some(floor);
                continue;
            }
            Err(e) => tracing::debug!(error = %e, "lease renewal failed"),
        }
        tokio::time::sleep(every).await;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// `bookstore_cache_requests_total{result="hit"|"miss"}`, `bookstore_cache_entries` and
/// `bookstore_cache_leased` (1 while the cache holds a lease and may serve hits).
fn register_metrics(
    cache: &web::Data<Cache>,
    requests: Family<ResultLabel, Counter>,
    metrics: &Metrics,
) {
    let entries: Gauge<i64> = metrics.add("cache_entries", "Entries held");
    let leased: Gauge<i64> = metrics.add(
        "cache_leased",
        "1 while the cache holds a lease from the catalog primary",
    );
    metrics.register(
        "cache_requests",
        "Lookups and searches asked of the cache, by result (hit or miss)",
        requests,
    );
    let cache = cache.clone();
    metrics.on_scrape(move || {
        entries.set(cache.store.read().len() as i64);
        leased.set(i64::from(cache.leased()));
    });
}

/// Serves the cache on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: CacheConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let log = match &config.output_dir {
        Some(dir) => OpLog::open(&dir.join("cache_log"))?,
        None => OpLog::disabled(),
    };
    // The hit and miss counters are the metric's own (a counter clone shares its value).
    // (One statement each: the family's read guard must be gone before the next insert.)
    let requests = Family::<ResultLabel, Counter>::default();
    let hits = requests.get_or_create_owned(&ResultLabel { result: "hit" });
    let misses = requests.get_or_create_owned(&ResultLabel { result: "miss" });
    let frontends = (0..).zip(config.cluster.urls(Kind::Frontend)).collect();
    let cache = web::Data::new(Cache {
        store: RwLock::new(Store::with_limit(config.max_entries)),
        lease_until: Mutex::new(None),
        near: Mutex::new(near::Holders::default()),
        frontends,
        client: Client::new(config.tokens.cluster()),
        started: Instant::now(),
        log,
        hits,
        misses,
    });
    let metrics = web::Data::new(Metrics::new());
    register_metrics(&cache, requests, &metrics);
    cache.log.register_metrics(&metrics);
    let urls = config.cluster.urls(Kind::Catalog);
    if urls.is_empty() {
        return Err(std::io::Error::other("the cluster has no catalog"));
    }
    let client = Client::with_timeout(config.tokens.cluster(), config.renew_every);
    let mut router = Router::new(client.clone(), urls);
    router.patience = config.renew_every;
    let router = Arc::new(router);
    // Follow the catalog's view (its primary, replicas added or retired at run time).
    let coordinators = Arc::new(Coordinators::new(
        client,
        config.cluster.urls(Kind::Coordinator),
    ));
    let tasks = Tasks::new();
    follow_views(
        &router,
        coordinators,
        "catalog",
        Duration::from_millis(100),
        &tasks,
    );
    tasks.spawn(lease_loop(cache.clone(), router, config.renew_every));
    let tokens = web::Data::new(config.tokens.clone());
    tracing::info!(addr = %listener.local_addr()?, "cache serving");
    let c = cache.clone();
    let json = server::json_config();
    let configure = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(c.clone())
            .app_data(metrics.clone())
            .app_data(tokens.clone())
            .app_data(json.clone());
        routes(cfg);
    };
    tasks
        .stop_after(server::serve(listener, config.workers, configure, shutdown))
        .await
}
