//! Order service: takes a buy, has the catalog decrement the stock atomically, records
//! the order (id, item, price, time) in its replicated log and answers.
//!
//! A buy carries an idempotency key (the client's, or one the frontend made up). The key
//! goes to the catalog, which applies a decrement at most once per key, and into the
//! order record, which the replicated state machine also keeps at most once per key: a
//! retry, even one that reaches a new primary after a failover, never buys twice.
//!
//! - [`cli`]: flags, shared by the binary and `infra serve order`.
//! - [`state`]: the replicated state machine ([`OrderSm`]): orders and idempotency keys.
//! - this file: the buy, the routes (internal, cluster token, except
//!   `/health` and `/ready`; `/metrics` also takes the admin token), their OpenAPI
//!   document ([`internal_openapi`]) and [`run`].
pub mod cli;
pub mod state;

pub use state::{OrderSm, Record};

use actix_web::{web, HttpRequest, HttpResponse};
use bookstore_common::batch::Batcher;
use bookstore_common::client::{CallError, Client};
use bookstore_common::clock::now_ms;
use bookstore_common::config::Kind;
use bookstore_common::coordinators::Coordinators;
use bookstore_common::idempotency::IdempotencyKey;
use bookstore_common::metrics::{self, catch_up, Metrics};
use bookstore_common::openapi::answers::{
    KeyReused, MalformedBody, MalformedParameter, NoSuchBook, NotPrimary, OutOfStock,
};
use bookstore_common::openapi::{self, IdempotencyHeader, ItemQuery};
use bookstore_common::params::{batch_key, batch_len, idempotency_key, Query};
use bookstore_common::router::{self, batched_or_single, follow_views, Batched, Router};
use bookstore_common::tasks::Tasks;
use bookstore_common::timing::{Timing, SERVER_TIMING};
use bookstore_common::types::{
    BatchAnswer, Book, BuyBatch, BuySuccess, ItemNumber, Order, StockChange, UpdateBatch,
    Versioned, IDEMPOTENCY_KEY_HEADER,
};
use bookstore_common::{server, ApiError};
use bookstore_replication::control::ReplicaConfig;
use bookstore_replication::control::{self, Control};
use bookstore_replication::node::{Node, SubmitError};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;

/// What an order replica starts with: what every replica does, nothing more.
pub type OrderConfig = ReplicaConfig;

pub struct OrderService {
    control: web::Data<Control<OrderSm>>,
    catalog: Arc<Router>,
    /// Concurrent stock changes leave together as one `POST /update_batch`.
    updates: Batcher<StockChange, Batched<Versioned<Book>>>,
    /// Buys admitted under a new key and not yet recorded (they count against the
    /// bound on keys).
    reserved: Arc<AtomicUsize>,
    /// The catalog view follower.
    tasks: Tasks,
}

/// A buy's place under the bound on keys, from admission until it is recorded.
struct Reservation(Arc<AtomicUsize>);

/// One buy of [`OrderService::buy_all`]: the item, its idempotency key, whether it is
/// `fresh` (`StockChange::fresh`), and its timing.
pub struct Buy {
    pub item: ItemNumber,
    pub key: IdempotencyKey,
    pub fresh: bool,
    pub t: Timing,
}

/// A buy once the catalog has answered: an order to record (holding its place under the
/// bound on keys until it is), or the order already recorded under its key.
enum Sale {
    New { record: Record, slot: Reservation },
    Known(Order),
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to a key already used for another item.
fn key_reused(first_item: ItemNumber) -> ApiError {
    ApiError::Unprocessable(format!(
        "header Idempotency-Key was already used for another request (a buy of \
         item_number {first_item}); send a new key for a new request"
    ))
}

impl OrderService {
    pub fn new(config: &OrderConfig) -> std::io::Result<OrderService> {
        let log = config.oplog(Kind::Order)?;
        let retention = config.retention;
        let node = Node::start(config.node_options(Kind::Order), move || {
            OrderSm::new(retention)
        })
        .map_err(std::io::Error::other)?;
        let catalog = Arc::new(Router::new(
            Client::new(config.tokens.cluster()),
            config.cluster.urls(Kind::Catalog),
        ));
        // Follow the catalog's view: its primary and replicas added or retired at run time.
        let coordinators = Arc::new(Coordinators::new(
            Client::with_timeout(config.tokens.cluster(), Duration::from_millis(500)),
            config.cluster.urls(Kind::Coordinator),
        ));
        let tasks = Tasks::new();
        follow_views(&catalog, coordinators, "catalog", config.tick * 2, &tasks);
        let updates = router::batcher("updates", 2, &catalog, "/update_batch", |updates| {
            UpdateBatch { updates }
        });
        Ok(OrderService {
            control: web::Data::new(Control::new("order", config.id, node, log)),
            catalog,
            updates,
            reserved: Arc::new(AtomicUsize::new(0)),
            tasks,
        })
    }

    /// Holds a place for a buy under a new key, or refuses it (503) when the keys
    /// retained, with the buys already admitted, reach the bound: a key is never
    /// forgotten early to make room.
    fn admit(&self) -> Result<Reservation, ApiError> {
        let reserved = self.reserved.fetch_add(1, Ordering::AcqRel);
        let slot = Reservation(self.reserved.clone());
        let now = now_ms();
        let (room, max) = self.node().read_any(|sm| {
            let keys = sm.keys();
            (keys.has_room(now, reserved), keys.retention().max_keys)
        });
        if !room {
            return Err(ApiError::Unavailable(format!(
                "too many buys within the idempotency window: {max} keys are retained \
                 already; retry later"
            )));
        }
        Ok(slot)
    }

    fn node(&self) -> &Node<OrderSm> {
        &self.control.node
    }

    /// Buys one copy of `item` under idempotency key `key`; `t` records the catalog call
    /// and the replication of the order. `fresh`: no other attempt under `key` exists
    /// (see `StockChange::fresh`).
    pub async fn buy(
        &self,
        item: ItemNumber,
        key: &IdempotencyKey,
        fresh: bool,
        t: &mut Timing,
    ) -> Result<Order, ApiError> {
        let buy = Buy {
            item,
            key: key.clone(),
            fresh,
            t: std::mem::replace(t, Timing::start()),
        };
        let (r, timing) = self
            .buy_all(vec![buy])
            .await
            .pop()
            .expect("one answer per buy");
        *t = timing;
        r
    }

    /// Makes each of `buys` as [`OrderService::buy`] would, with their orders replicated
    /// together: one turn of the replica, one `fdatasync` and one message to each backup
    /// for all of them. One answer and its timing per buy, in order.
    pub async fn buy_all(&self, mut buys: Vec<Buy>) -> Vec<(Result<Order, ApiError>, Timing)> {
        let sales = futures::future::join_all(
            buys.iter_mut()
                .map(|b| self.sell(b.item, &b.key, b.fresh, &mut b.t)),
        )
        .await;
        let mut records = Vec::new();
        let mut slots = Vec::new();
        let sales: Vec<_> = sales
            .into_iter()
            .map(|sale| match sale {
                Ok(Sale::New { record, slot }) => {
                    records.push(record);
                    slots.push(slot);
                    None
                }
                Ok(Sale::Known(order)) => Some(Ok(order)),
                Err(e) => Some(Err(e)),
            })
            .collect();
        let started = std::time::Instant::now();
        let mut recorded = self.node().submit_all(&records).await.into_iter();
        let took = started.elapsed();
        drop(slots);
        buys.into_iter()
            .zip(sales)
            .map(|(mut b, sale)| {
                let r = sale.unwrap_or_else(|| {
                    b.t.record("replication", took);
                    let order = recorded.next().unwrap_or(Err(SubmitError::Retry))?;
                    if order.item_number != b.item {
                        return Err(key_reused(order.item_number));
                    }
                    self.control.log.record(format!("bought book {}", b.item));
                    Ok(order)
                });
                (r, b.t)
            })
            .collect()
    }

    /// Has the catalog take one copy of `item` off the stock under `key`, and makes the
    /// order to record; or finds the order already recorded under `key`.
    async fn sell(
        &self,
        item: ItemNumber,
        key: &IdempotencyKey,
        fresh: bool,
        t: &mut Timing,
    ) -> Result<Sale, ApiError> {
        self.control.check_primary()?;
        if let Some(Some(order)) = self.node().read(|sm| sm.by_key(key.as_str()).cloned()) {
            if order.item_number != item {
                return Err(key_reused(order.item_number));
            }
            return Ok(Sale::Known(order));
        }
        let slot = self.admit()?;
        // Sent with the other buys in flight; alone again (following the primary) if its
        // outcome is unknown. The catalog applies a key at most once.
        let path = format!("/update?item_number={item}&stock=-1");
        let headers = [(IDEMPOTENCY_KEY_HEADER, key.as_str())];
        let single = self.catalog.write_timed(&path, &headers);
        let change = StockChange {
            item_number: item,
            stock: -1,
            key: key.as_str().to_owned(),
            fresh,
        };
        let answer: Result<(Versioned<Book>, Option<String>), CallError> = t
            .time("catalog", async {
                batched_or_single(self.updates.call(change).await, single).await
            })
            .await;
        let book = match answer {
            Ok((v, timing)) => {
                if let Some(h) = timing {
                    t.nest("catalog", &h);
                }
                v.result
            }
            Err(CallError::Status { status: 409, .. }) => return Err(ApiError::OutOfStock),
            Err(CallError::Status { status: 404, body }) => {
                return Err(ApiError::NotFound(body.error))
            }
            Err(CallError::Status { status: 400, body }) => {
                return Err(ApiError::BadRequest(body.error))
            }
            Err(CallError::Status { status: 422, body }) => {
                return Err(ApiError::Unprocessable(body.error))
            }
            Err(e) => {
                tracing::warn!(item = item.get(), error = %e, "catalog call failed");
                return Err(ApiError::Unavailable(format!("catalog unavailable: {e}")));
            }
        };
        let record = Record {
            key: key.clone(),
            order: Order {
                order_id: uuid::Uuid::new_v4().simple().to_string(),
                item_number: item,
                price: book.cost,
                time_ms: now_ms(),
            },
        };
        Ok(Sale::New { record, slot })
    }

    /// Every order this replica has applied (it must be caught up).
    /// Every order this replica has applied (503 unless it is caught up).
    pub fn orders(&self) -> Result<Vec<Order>, ApiError> {
        self.control.read(|sm| sm.orders().to_vec())
    }

    fn check_up(&self) -> Result<(), ApiError> {
        self.control.check_up()
    }
}

type Ctx = web::Data<OrderService>;

/// The answer to a buy that recorded `order`.
fn success(order: Order) -> BuySuccess {
    BuySuccess {
        result: "Success".into(),
        order_id: order.order_id,
    }
}

/// Buys one copy under an idempotency key.
#[utoipa::path(post, path = "/buy", params(ItemQuery, IdempotencyHeader), responses(
    (status = 200, body = BuySuccess),
    MalformedParameter, NoSuchBook, OutOfStock, KeyReused, NotPrimary,
))]
async fn buy(
    ctx: Ctx,
    req: HttpRequest,
    Query(q): Query<ItemQuery>,
) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let item = q.item_number.0;
    let key = idempotency_key(
        req.headers()
            .get(IDEMPOTENCY_KEY_HEADER)
            .map(|v| v.as_bytes()),
    )?
    .unwrap_or_else(IdempotencyKey::generate);
    let mut t = Timing::start();
    let order = ctx.buy(item, &key, false, &mut t).await?;
    Ok(HttpResponse::Ok()
        .insert_header((SERVER_TIMING, t.header("order")))
        .json(success(order)))
}

/// Buys under idempotency keys, each as `POST /buy` would, answered together (the
/// frontends' buys).
#[utoipa::path(post, path = "/buy_batch", request_body = BuyBatch, responses(
    (status = 200, description = "One answer per buy, with the status `/buy` would have given it", body = BatchAnswer<BuySuccess>),
    MalformedBody, NotPrimary,
))]
async fn buy_batch(
    ctx: Ctx,
    req: HttpRequest,
    body: web::Json<BuyBatch>,
) -> Result<HttpResponse, ApiError> {
    let t = Timing::start();
    let resent = router::is_resend(&req);
    ctx.check_up()?;
    ctx.control.check_primary()?;
    let buys = body.into_inner().buys;
    batch_len("buys", buys.len())?;
    let keys = buys
        .iter()
        .enumerate()
        .map(|(i, b)| batch_key("buys", i, &b.key))
        .collect::<Result<Vec<_>, _>>()?;
    let buys = buys
        .iter()
        .zip(keys)
        .map(|(b, key)| Buy {
            item: b.item_number,
            key,
            fresh: b.fresh && !resent,
            t: Timing::start(),
        })
        .collect();
    // On the replica's runtime, where the catalog calls and the replication go.
    let service = ctx.into_inner();
    let node = service.node().clone();
    control::answer_batch(&node, "order", t, async move {
        let answers = service.buy_all(buys).await;
        answers
            .into_iter()
            .map(|(r, t)| (r.map(success), t))
            .collect()
    })
    .await
}

/// `GET /orders` answer.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrdersAnswer {
    pub result: Vec<Order>,
}

/// Every order this replica has applied.
#[utoipa::path(get, path = "/orders", responses((status = 200, body = OrdersAnswer)))]
async fn orders(ctx: Ctx) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let result = ctx.orders()?;
    Ok(HttpResponse::Ok().json(OrdersAnswer { result }))
}

#[derive(OpenApi)]
#[openapi(paths(buy, buy_batch, orders))]
struct OrderPaths;

/// The order service's API (`GET /internal/openapi.json`, cluster token; `/health` is
/// public).
pub fn internal_openapi() -> utoipa::openapi::OpenApi {
    control::service_openapi(OrderPaths::openapi(), "bookstore order API")
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.app_data(server::json_config())
        .configure(control::public_routes::<OrderSm>)
        .configure(metrics::routes);
    openapi::serve_internal(cfg, internal_openapi(), |c| {
        c.route("/buy", web::post().to(buy))
            .route("/buy_batch", web::post().to(buy_batch))
            .route("/orders", web::get().to(orders))
            .configure(control::internal_routes::<OrderSm>);
    });
}

/// `bookstore_router_primary_switches_total{tier="catalog"}`: catalog failovers this
/// replica followed.
fn register_router_metrics(service: &web::Data<OrderService>, metrics: &Metrics) {
    type Tier = [(&'static str, &'static str); 1];
    let switches: Family<Tier, Counter> = metrics.add(
        "router_primary_switches",
        "Times this replica moved its catalog writes to another replica (failovers followed)",
    );
    let service = service.clone();
    metrics.on_scrape(move || {
        catch_up(
            &switches.get_or_create(&[("tier", "catalog")]),
            service.catalog.primary_switches(),
        );
    });
}

/// Serves an order replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    mut config: OrderConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    if config.url.is_none() {
        config.url = Some(format!("http://{}", listener.local_addr()?));
    }
    let service = OrderService::new(&config)?;
    let metrics = web::Data::new(Metrics::new());
    let service = web::Data::new(service);
    register_router_metrics(&service, &metrics);
    bookstore_common::batch::register_metrics(&metrics, "updates", service.updates.stats());
    tracing::info!(id = config.id, addr = %listener.local_addr()?, "order serving");
    let s = service.clone();
    let configure = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(s.clone());
        routes(cfg);
    };
    let control = service.control.clone();
    let served = control::serve(listener, &config, control, metrics, configure, shutdown);
    service.tasks.stop_after(served).await
}
