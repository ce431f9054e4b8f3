//! Order service: takes a buy, has the catalog decrement the stock atomically, records
//! the order (id, item, price, time) and answers.
//!
//! A buy carries an idempotency key (the client's, or one the frontend made up). The
//! order service answers a repeated key with the first outcome, and passes the key to
//! the catalog, which also applies it at most once: a retry never buys twice.
pub mod cli;

use actix_web::{middleware::from_fn, web, App, HttpRequest, HttpResponse, HttpServer};
use bookstore_common::auth::{require_cluster_token, Tokens};
use bookstore_common::client::{CallError, Client};
use bookstore_common::config::{ClusterConfig, Kind};
use bookstore_common::oplog::OpLog;
use bookstore_common::params::{idempotency_key, Params};
use bookstore_common::types::{Book, BuySuccess, Health, Order, Versioned, IDEMPOTENCY_KEY_HEADER};
use bookstore_common::{server, ApiError};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::OnceCell;

#[derive(Debug, Clone)]
pub struct OrderConfig {
    pub id: u32,
    pub cluster: ClusterConfig,
    pub tokens: Tokens,
    pub output_dir: Option<PathBuf>,
    pub workers: usize,
}

/// The settled outcome of a buy (remembered per idempotency key).
type Settled = Result<Order, ApiError>;

#[derive(Default)]
struct Dedup {
    cells: HashMap<String, Arc<OnceCell<Settled>>>,
    order: VecDeque<String>,
}

pub struct OrderService {
    id: u32,
    client: Client,
    catalog: String,
    orders: RwLock<Vec<Order>>,
    dedup: Mutex<Dedup>,
    max_keys: usize,
    log: OpLog,
    down: AtomicBool,
}

impl OrderService {
    pub fn new(config: &OrderConfig) -> std::io::Result<OrderService> {
        let log = match &config.output_dir {
            Some(dir) => OpLog::open(&dir.join(format!("order{}_log", config.id)))?,
            None => OpLog::disabled(),
        };
        let catalog = config
            .cluster
            .servers(Kind::Catalog)
            .first()
            .map(|e| e.url())
            .ok_or_else(|| std::io::Error::other("the cluster has no catalog"))?;
        Ok(OrderService {
            id: config.id,
            client: Client::new(config.tokens.cluster()),
            catalog,
            orders: RwLock::new(Vec::new()),
            dedup: Mutex::new(Dedup::default()),
            max_keys: 100_000,
            log,
            down: AtomicBool::new(false),
        })
    }

    fn cell(&self, key: &str) -> Arc<OnceCell<Settled>> {
        let mut d = self.dedup.lock();
        if let Some(c) = d.cells.get(key) {
            return c.clone();
        }
        if d.order.len() >= self.max_keys {
            if let Some(old) = d.order.pop_front() {
                d.cells.remove(&old);
            }
        }
        let c = Arc::new(OnceCell::new());
        d.cells.insert(key.to_string(), c.clone());
        d.order.push_back(key.to_string());
        c
    }

    /// Buys one copy of `item` under idempotency key `key`.
    pub async fn buy(&self, item: u32, key: &str) -> Settled {
        let cell = self.cell(key);
        cell.get_or_try_init(|| self.buy_once(item, key))
            .await
            .map_err(|e| e.clone())?
            .clone()
    }

    /// `Ok(settled)` for an outcome to remember; `Err` for a failure that a retry may fix.
    async fn buy_once(&self, item: u32, key: &str) -> Result<Settled, ApiError> {
        let url = format!("{}/update?item_number={item}&stock=-1", self.catalog);
        let answer: Result<Versioned<Book>, CallError> = self
            .client
            .post_json(&url, &[(IDEMPOTENCY_KEY_HEADER, key)])
            .await;
        match answer {
            Ok(v) => {
                let order = Order {
                    order_id: uuid::Uuid::new_v4().simple().to_string(),
                    item_number: item,
                    price: v.result.cost,
                    time_ms: now_ms(),
                };
                self.orders.write().push(order.clone());
                self.log.record(format!("bought book {item}"));
                Ok(Ok(order))
            }
            Err(CallError::Status { status: 409, .. }) => Ok(Err(ApiError::OutOfStock)),
            Err(CallError::Status { status: 404, body }) => Ok(Err(ApiError::NotFound(body.error))),
            Err(CallError::Status { status: 400, body }) => {
                Ok(Err(ApiError::BadRequest(body.error)))
            }
            Err(e) => {
                tracing::warn!(item, error = %e, "catalog call failed");
                Err(ApiError::Unavailable(format!("catalog unavailable: {e}")))
            }
        }
    }

    pub fn orders(&self) -> Vec<Order> {
        self.orders.read().clone()
    }

    fn check_up(&self) -> Result<(), ApiError> {
        if self.down.load(Ordering::Acquire) {
            return Err(ApiError::Unavailable(format!(
                "order {} is shut down",
                self.id
            )));
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

type Ctx = web::Data<OrderService>;

async fn health(ctx: Ctx) -> HttpResponse {
    let down = ctx.down.load(Ordering::Acquire);
    let body = Health {
        status: if down { "down" } else { "ok" }.into(),
        service: "order".into(),
        id: ctx.id,
    };
    if down {
        HttpResponse::ServiceUnavailable().json(body)
    } else {
        HttpResponse::Ok().json(body)
    }
}

async fn buy(ctx: Ctx, req: HttpRequest) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let item = Params::parse(req.query_string()).item_number()?;
    let key = idempotency_key(
        req.headers()
            .get(IDEMPOTENCY_KEY_HEADER)
            .map(|v| v.as_bytes()),
    )?
    .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let order = ctx.buy(item, &key).await?;
    Ok(HttpResponse::Ok().json(BuySuccess {
        result: "Success".into(),
        order_id: order.order_id,
    }))
}

async fn orders(ctx: Ctx) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "result": ctx.orders() })))
}

async fn shutdown(ctx: Ctx) -> HttpResponse {
    ctx.down.store(true, Ordering::Release);
    HttpResponse::Ok().json(serde_json::json!({"result": "shut down"}))
}

async fn recover(ctx: Ctx) -> HttpResponse {
    ctx.down.store(false, Ordering::Release);
    HttpResponse::Ok().json(serde_json::json!({"result": "recovered"}))
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health)).service(
        web::scope("")
            .wrap(from_fn(require_cluster_token))
            .route("/buy", web::post().to(buy))
            .route("/orders", web::get().to(orders))
            .route("/shutdown", web::post().to(shutdown))
            .route("/recover", web::post().to(recover))
            .default_service(web::to(server::not_found)),
    );
}

/// Serves an order replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: OrderConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let service = web::Data::new(OrderService::new(&config)?);
    let tokens = web::Data::new(config.tokens.clone());
    tracing::info!(id = config.id, addr = %listener.local_addr()?, "order serving");
    let server = HttpServer::new(move || {
        App::new()
            .app_data(service.clone())
            .app_data(tokens.clone())
            .configure(routes)
    })
    .workers(config.workers.max(1))
    .disable_signals()
    .listen(listener)?
    .run();
    server::run_until(server, shutdown).await
}
