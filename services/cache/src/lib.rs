//! Cache service: lookup and search answers, kept coherent with the catalog.
//!
//! - [`store`]: entries and the version rules (pure).
//! - this file: the routes (internal, cluster token) and the lease loop: the cache
//!   serves entries only while it holds a lease from the catalog, which lets a catalog
//!   that cannot reach the cache still guarantee no stale read after its write.
//!   `/metrics` (cluster or admin token) counts hits and misses
//!   (`bookstore_cache_requests_total{result}`), entries and whether a lease is held.
pub mod store;

pub mod cli;

use actix_web::http::header::ContentType;
use actix_web::{middleware::from_fn, web, HttpRequest, HttpResponse};
use bookstore_common::auth::{require_cluster_token, Tokens};
use bookstore_common::client::Client;
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::metrics::{self, Metrics};
use bookstore_common::oplog::OpLog;
use bookstore_common::params::Params;
use bookstore_common::router::Router;
use bookstore_common::types::{CacheFill, Health, LeaseReply, LeaseRequest};
use bookstore_common::{server, ApiError};
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use store::Store;

#[derive(Debug, Clone)]
pub struct CacheConfig {
    pub cluster: ClusterConfig,
    pub tokens: Tokens,
    /// Where `cache_log` goes; `None` disables it.
    pub output_dir: Option<PathBuf>,
    /// How often the lease is renewed.
    pub renew_every: Duration,
    pub workers: usize,
}

pub struct Cache {
    store: RwLock<Store>,
    lease_until: Mutex<Option<Instant>>,
    log: OpLog,
    hits: Counter,
    misses: Counter,
}

impl Cache {
    fn leased(&self) -> bool {
        self.lease_until.lock().is_some_and(|t| Instant::now() < t)
    }

    fn answer(&self, what: String, found: Option<Bytes>) -> HttpResponse {
        match found {
            Some(body) if self.leased() => {
                self.hits.inc();
                self.log.record(format!("{what},hit"));
                HttpResponse::Ok()
                    .insert_header(ContentType::json())
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

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok".into(),
        service: "cache".into(),
        id: 0,
        role: None,
        epoch: None,
    })
}

async fn lookup(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let item = Params::parse(req.query_string()).item_number()?;
    let found = ctx.store.read().lookup(item);
    Ok(ctx.answer(format!("lookup,{item}"), found))
}

async fn search(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(req.query_string());
    let topic = params.topic()?;
    let found = ctx.store.read().search(topic);
    Ok(ctx.answer(format!("search,{topic}"), found))
}

fn body_of(fill: &CacheFill) -> Bytes {
    Bytes::from(serde_json::to_vec(&fill.response).unwrap_or_default())
}

async fn put_lookup(ctx: Ctx, fill: web::Json<CacheFill>) -> Result<HttpResponse, ApiError> {
    let [item] = fill.items[..] else {
        return Err(ApiError::BadRequest(
            "a lookup fill names exactly one item".into(),
        ));
    };
    let stored = ctx
        .store
        .write()
        .put_lookup(item, fill.version, body_of(&fill));
    ctx.log.record(format!("put_lookup,{item},{stored}"));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "stored": stored })))
}

async fn put_search(
    ctx: Ctx,
    req: HttpRequest,
    fill: web::Json<CacheFill>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(req.query_string());
    let topic = params.topic()?;
    let fill = fill.into_inner();
    let body = body_of(&fill);
    let stored = ctx
        .store
        .write()
        .put_search(topic, fill.version, fill.items, body);
    ctx.log.record(format!("put_search,{topic},{stored}"));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "stored": stored })))
}

async fn invalidate(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(req.query_string());
    let item = params.item_number()?;
    let version: u64 = params.required("version", "a whole number")?;
    let epoch: Option<u64> = params.optional("epoch", "a whole number")?;
    let mut store = ctx.store.write();
    if let Some(e) = epoch {
        store.observe_epoch(e);
    }
    store.invalidate(item, version);
    drop(store);
    ctx.log.record(format!("invalidate_cache,{item}"));
    Ok(HttpResponse::Ok().json(serde_json::json!({ "result": "ok" })))
}

async fn stats(ctx: Ctx) -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({
        "hits": ctx.hits.get(),
        "misses": ctx.misses.get(),
        "entries": ctx.store.read().len(),
        "leased": ctx.leased(),
    }))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .configure(metrics::routes)
        .service(
            web::scope("")
                .wrap(from_fn(require_cluster_token))
                .route("/lookup", web::get().to(lookup))
                .route("/search", web::get().to(search))
                .route("/put_lookup_cache", web::post().to(put_lookup))
                .route("/put_search_cache", web::post().to(put_search))
                .route("/invalidate", web::post().to(invalidate))
                .route("/stats", web::get().to(stats))
                .default_service(web::to(server::not_found)),
        );
}

/// Keeps the lease from the catalog primary alive.
async fn lease_loop(cache: web::Data<Cache>, catalog: Router, every: Duration) {
    let mut flushed_to = None;
    loop {
        let asked_at = Instant::now();
        match catalog
            .write_json::<_, LeaseReply>("/cache_lease", &LeaseRequest { flushed_to })
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
    let entries = Gauge::<i64>::default();
    let leased = Gauge::<i64>::default();
    metrics.register(
        "cache_requests",
        "Lookups and searches asked of the cache, by result (hit or miss)",
        requests,
    );
    metrics.register("cache_entries", "Entries held", entries.clone());
    metrics.register(
        "cache_leased",
        "1 while the cache holds a lease from the catalog primary",
        leased.clone(),
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
    let cache = web::Data::new(Cache {
        store: RwLock::new(Store::default()),
        lease_until: Mutex::new(None),
        log,
        hits,
        misses,
    });
    let metrics = web::Data::new(Metrics::new());
    register_metrics(&cache, requests, &metrics);
    let urls: Vec<String> = config
        .cluster
        .servers(Kind::Catalog)
        .iter()
        .map(|e| e.url())
        .collect();
    if urls.is_empty() {
        return Err(std::io::Error::other("the cluster has no catalog"));
    }
    let client = Client::with_timeout(config.tokens.cluster(), config.renew_every);
    let mut router = Router::new(client, urls);
    router.patience = config.renew_every;
    let lease = tokio::spawn(lease_loop(cache.clone(), router, config.renew_every));
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
    let r = server::serve(listener, config.workers, configure, shutdown).await;
    lease.abort();
    r
}
