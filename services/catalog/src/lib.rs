//! Catalog service: books, stock and cost; query by topic or item; atomic updates.
//!
//! - [`state`]: the data and its one atomic write (pure).
//! - [`cache_link`]: invalidating the cache before a write is acknowledged.
//! - this file: the HTTP routes (all internal, behind the cluster token, except
//!   `/health`) and [`run`], which serves on an already-bound listener.
pub mod cache_link;
pub mod state;

pub mod cli;

use actix_web::{middleware::from_fn, web, App, HttpRequest, HttpResponse, HttpServer};
use bookstore_common::auth::{require_cluster_token, Tokens};
use bookstore_common::client::Client;
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::oplog::OpLog;
use bookstore_common::params::{idempotency_key, Params};
use bookstore_common::types::{Book, Health, LeaseRequest, Versioned, IDEMPOTENCY_KEY_HEADER};
use bookstore_common::{server, ApiError};
use cache_link::CacheLink;
use parking_lot::RwLock;
use state::{CatalogState, Update, UpdateError};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Everything a catalog replica needs to start.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    pub id: u32,
    pub books: Vec<Book>,
    pub cluster: ClusterConfig,
    pub tokens: Tokens,
    /// Where `catalog{id}_log` goes; `None` disables it.
    pub output_dir: Option<PathBuf>,
    /// How long a cache lease lasts.
    pub lease: Duration,
    pub workers: usize,
}

/// A running replica's shared state.
pub struct Catalog {
    id: u32,
    state: RwLock<CatalogState>,
    cache: CacheLink,
    log: OpLog,
    down: AtomicBool,
}

impl Catalog {
    pub fn new(config: &CatalogConfig) -> std::io::Result<Catalog> {
        let log = match &config.output_dir {
            Some(dir) => OpLog::open(&dir.join(format!("catalog{}_log", config.id)))?,
            None => OpLog::disabled(),
        };
        for b in &config.books {
            log.record(format!(
                "init,{},{},{},{},{}",
                b.item_number, b.stock, b.cost, b.topic, b.title
            ));
        }
        let client = Client::new(config.tokens.cluster());
        let cache_url = config.cluster.servers(Kind::Cache).first().map(|e| e.url());
        Ok(Catalog {
            id: config.id,
            state: RwLock::new(CatalogState::new(config.books.clone(), first_version())),
            cache: CacheLink::new(client, cache_url, config.lease),
            log,
            down: AtomicBool::new(false),
        })
    }

    fn check_up(&self) -> Result<(), ApiError> {
        if self.down.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(format!(
                "catalog {} is shut down (POST /recover brings it back)",
                self.id
            )));
        }
        Ok(())
    }

    /// Applies an update, invalidates the cache, and only then returns.
    pub async fn update(&self, u: Update) -> Result<Versioned<Book>, ApiError> {
        let outcome = self.state.write().update(&u);
        self.log.record(format!(
            "update,{},{},{}",
            u.item_number,
            u.cost.map_or("na".to_string(), |c| c.to_string()),
            u.stock_delta
        ));
        match outcome {
            Ok((book, version)) => {
                self.cache.invalidate(book.item_number, version).await;
                Ok(Versioned {
                    result: book,
                    version,
                })
            }
            Err(UpdateError::OutOfStock) => Err(ApiError::OutOfStock),
            Err(e @ UpdateError::UnknownItem(_)) => Err(ApiError::NotFound(e.to_string())),
            Err(e @ UpdateError::StockOverflow) => Err(ApiError::BadRequest(e.to_string())),
        }
    }
}

/// Versions start at the boot time in microseconds, so a restarted catalog (which
/// keeps no state yet) never reuses a version the cache has already seen.
fn first_version() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

type Ctx = web::Data<Catalog>;

async fn health(ctx: Ctx) -> HttpResponse {
    let down = ctx.down.load(Ordering::Acquire);
    let body = Health {
        status: if down { "down" } else { "ok" }.into(),
        service: "catalog".into(),
        id: ctx.id,
    };
    if down {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

async fn query_by_item(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let item = Params::parse(req.query_string()).item_number()?;
    ctx.log.record(format!("query_by_item,{item}"));
    let s = ctx.state.read();
    let book = s
        .lookup(item)
        .ok_or_else(|| ApiError::NotFound(format!("no book with item_number {item}")))?;
    Ok(HttpResponse::Ok().json(Versioned {
        result: book,
        version: s.version(),
    }))
}

async fn query_by_topic(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let params = Params::parse(req.query_string());
    let topic = params.topic()?;
    ctx.log.record(format!("query_by_topic,{topic}"));
    let (hits, version) = {
        let s = ctx.state.read();
        (s.search(topic), s.version())
    };
    Ok(HttpResponse::Ok().json(Versioned {
        result: &*hits,
        version,
    }))
}

/// `POST /update?item_number=N&stock=DELTA&cost=C|na` (the seed's parameters).
async fn update(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let params = Params::parse(req.query_string());
    let item_number = params.item_number()?;
    let stock_delta: i64 = params
        .optional("stock", "a whole number (the change of stock)")?
        .unwrap_or(0);
    if stock_delta.unsigned_abs() > u64::from(u32::MAX) {
        return Err(ApiError::BadRequest(
            "parameter stock is out of range".into(),
        ));
    }
    let cost = match params.optional_str("cost")? {
        None | Some("na") => None,
        Some(_) => params.optional::<u32>("cost", "a whole number or \"na\"")?,
    };
    let request_id = idempotency_key(
        req.headers()
            .get(IDEMPOTENCY_KEY_HEADER)
            .map(|v| v.as_bytes()),
    )?;
    let out = ctx
        .update(Update {
            item_number,
            stock_delta,
            cost,
            request_id,
        })
        .await?;
    Ok(HttpResponse::Ok().json(out))
}

async fn books(ctx: Ctx) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let s = ctx.state.read();
    Ok(HttpResponse::Ok().json(Versioned {
        result: s.all(),
        version: s.version(),
    }))
}

async fn cache_lease(ctx: Ctx, body: web::Json<LeaseRequest>) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let reply = ctx
        .cache
        .lease(body.flushed_to, || ctx.state.read().version());
    Ok(HttpResponse::Ok().json(reply))
}

async fn shutdown(ctx: Ctx) -> HttpResponse {
    ctx.down.store(true, Ordering::Release);
    ctx.log.record("shutdown".into());
    tracing::warn!(id = ctx.id, "shut down by request");
    HttpResponse::Ok().json(serde_json::json!({"result": "shut down"}))
}

async fn recover(ctx: Ctx) -> HttpResponse {
    ctx.down.store(false, Ordering::Release);
    ctx.log.record("recover".into());
    tracing::info!(id = ctx.id, "recovered by request");
    HttpResponse::Ok().json(serde_json::json!({"result": "recovered"}))
}

/// Registers the routes of a catalog replica.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health)).service(
        web::scope("")
            .wrap(from_fn(require_cluster_token))
            .route("/query_by_item", web::get().to(query_by_item))
            .route("/query_by_topic", web::get().to(query_by_topic))
            .route("/update", web::post().to(update))
            .route("/books", web::get().to(books))
            .route("/cache_lease", web::post().to(cache_lease))
            .route("/shutdown", web::post().to(shutdown))
            .route("/recover", web::post().to(recover))
            .default_service(web::to(server::not_found)),
    );
}

/// Serves a catalog replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: CatalogConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let catalog = web::Data::new(Catalog::new(&config)?);
    let tokens = web::Data::new(config.tokens.clone());
    tracing::info!(id = config.id, addr = %listener.local_addr()?, books = config.books.len(), "catalog serving");
    let server = HttpServer::new(move || {
        App::new()
            .app_data(catalog.clone())
            .app_data(tokens.clone())
            .app_data(server::json_config())
            .configure(routes)
    })
    .workers(config.workers.max(1))
    .disable_signals()
    .listen(listener)?
    .run();
    server::run_until(server, shutdown).await
}

/// Shared handle type for tests that want to peek at a replica.
pub type SharedCatalog = Arc<Catalog>;
