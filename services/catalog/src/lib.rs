//! Catalog service: books, stock and cost; query by topic or item; atomic updates,
//! replicated primary-backup by `bookstore-replication`.
//!
//! - [`state`]: the data and its one atomic write (pure).
//! - [`cache_link`]: invalidating the cache before a write is acknowledged.
//! - [`barrier`]: no lookup or sold-out answer shows a write before its invalidation.
//! - [`cli`]: flags, shared by the binary and `infra serve catalog`.
//! - this file: the replicated state machine, the HTTP routes (all internal, behind the
//!   cluster token, except `/health` and `/ready`; `/metrics` also takes the admin token),
//!   their OpenAPI document ([`internal_openapi`]) and [`run`], which serves on a bound
//!   listener.
pub mod barrier;
pub mod cache_link;
pub mod cli;
pub mod state;

use actix_web::{web, HttpRequest, HttpResponse};
use bookstore_common::client::Client;
use bookstore_common::config::Kind;
use bookstore_common::error::ErrorBody;
use bookstore_common::metrics::{self, Metrics};
use bookstore_common::openapi::answers::{
    KeyReused, MalformedBody, MalformedParameter, NoSuchBook, NotPrimary, OutOfStock,
};
use bookstore_common::openapi::{self, IdempotencyHeader, ItemQuery, TopicQuery};
use bookstore_common::oplog::OpLog;
use bookstore_common::params::{batch_key, batch_len, idempotency_key, CostOrNa, Query};
use bookstore_common::timing::{Timing, SERVER_TIMING};
use bookstore_common::types::{BatchAnswer, LeaseReply, SearchHit, UpdateBatch};
use bookstore_common::types::{Book, ItemNumber, LeaseRequest, Versioned, IDEMPOTENCY_KEY_HEADER};
use bookstore_common::{server, ApiError};
use bookstore_replication::control::{self, Control, ReplicaConfig};
use bookstore_replication::node::{DecodeError, Node, ReplicaRole, StateMachine};
use cache_link::CacheLink;
use state::{CatalogState, Update, UpdateError, UpdateOutcome};
use std::future::Future;
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;

/// How long an answer waits for an update in flight to invalidate what it shows before
/// invalidating it itself.
const SETTLE_PATIENCE: Duration = Duration::from_millis(50);

/// Everything a catalog replica needs to start.
#[derive(Debug, Clone)]
pub struct CatalogConfig {
    /// What every replica starts with.
    pub replica: ReplicaConfig,
    pub books: Vec<Book>,
    /// How long a cache lease lasts.
    pub lease: Duration,
}

/// The replicated state machine: the catalog state, updated by log entries.
pub struct CatalogSm(pub CatalogState);

impl StateMachine for CatalogSm {
    type Command = state::Stamped;
    type Output = UpdateOutcome;

    fn encode(command: &state::Stamped) -> Vec<u8> {
        state::encode_entry(&command.update, command.time_ms.unwrap_or(0))
    }

    fn decode(data: &[u8]) -> Result<state::Stamped, DecodeError> {
        let (update, time_ms) = state::decode_entry(data)?;
        Ok(state::Stamped { update, time_ms })
    }

    fn apply(&mut self, index: u64, c: state::Stamped) -> UpdateOutcome {
        self.0.update_at(&c.update, index, c.time_ms)
    }

    fn snapshot(&self) -> Vec<u8> {
        self.0.to_bytes()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        self.0 = CatalogState::from_bytes_with(data, self.0.retention())?;
        Ok(())
    }
}

/// A running replica's shared state.
pub struct Catalog {
    control: web::Data<Control<CatalogSm>>,
    cache: CacheLink,
    barrier: barrier::Barrier,
}

/// Init lines per op-log record: a big catalog is logged in a few large records
/// instead of a million small queued ones.
const INIT_LINES_PER_RECORD: usize = 10_000;

impl Catalog {
    pub fn new(config: &CatalogConfig) -> std::io::Result<Catalog> {
        Catalog::with_books(config, config.books.clone())
    }

    /// [`Catalog::new`] with the books moved in instead of `config.books` (a big catalog
    /// is then not copied).
    pub fn with_books(config: &CatalogConfig, books: Vec<Book>) -> std::io::Result<Catalog> {
        let r = &config.replica;
        let log = r.oplog(Kind::Catalog)?;
        for chunk in books.chunks(INIT_LINES_PER_RECORD) {
            let lines = chunk
                .iter()
                .map(|b| {
                    format!(
                        "init,{},{},{},{},{}",
                        b.item_number, b.stock, b.cost, b.topic, b.title
                    )
                })
                .collect();
            log.record_lines(lines);
        }
        let client = Client::new(r.tokens.cluster());
        let cache_url = r.cluster.servers(Kind::Cache).first().map(|e| e.url());
        let opts = r.node_options(Kind::Catalog);
        // Copies of the state share the titles and the topic index: building the initial
        // state again (the node does at start and before installing a snapshot) is cheap.
        let mut initial = CatalogState::new(books, 0);
        initial.set_retention(r.retention);
        let node =
            Node::start(opts, move || CatalogSm(initial.clone())).map_err(std::io::Error::other)?;
        Ok(Catalog {
            control: web::Data::new(Control::new("catalog", r.id, node, log)),
            cache: CacheLink::new(client, cache_url, config.lease),
            barrier: barrier::Barrier::default(),
        })
    }

    fn check_up(&self) -> Result<(), ApiError> {
        self.control.check_up()
    }

    fn read<R>(&self, f: impl FnOnce(&CatalogState) -> R) -> Result<R, ApiError> {
        self.control.read(|sm| f(&sm.0))
    }

    fn node(&self) -> &Node<CatalogSm> {
        &self.control.node
    }

    fn log(&self) -> &OpLog {
        &self.control.log
    }

    /// Returns once no cache can serve `item` as it was before the write at `written`
    /// (see [`barrier`]): waits for the update in flight to invalidate it, or, after a
    /// short patience, invalidates it here.
    async fn settle(&self, item: ItemNumber, written: u64) {
        if self.barrier.wait(item, written, SETTLE_PATIENCE).await {
            return;
        }
        let epoch = self.node().status().epoch;
        self.cache.invalidate(item, written, epoch).await;
        self.barrier.invalidated(item, written);
    }

    /// Replicates an update, invalidates the cache, and only then returns. Runs to the
    /// end even if the caller goes away (its own task): an update that may commit always
    /// gets its invalidation.
    pub async fn update_detached(
        self: Arc<Self>,
        u: Update,
        fresh: bool,
        mut t: Timing,
    ) -> (Result<Versioned<Book>, ApiError>, Timing) {
        let node = self.node().clone();
        node.run_near(async move {
            let r = self.update(u, fresh, &mut t).await;
            (r, t)
        })
        .await
        .unwrap_or_else(|| {
            (
                Err(ApiError::Unavailable("update task failed".into())),
                Timing::start(),
            )
        })
    }

    /// Replicates an update, invalidates the cache, and only then returns. `fresh`: no
    /// other attempt under the update's key exists (`StockChange::fresh`).
    pub async fn update(
        &self,
        u: Update,
        fresh: bool,
        t: &mut Timing,
    ) -> Result<Versioned<Book>, ApiError> {
        let started = std::mem::replace(t, Timing::start());
        let mut answers = self.update_all(vec![(u, fresh, started)]).await;
        let (r, timing) = answers.pop().expect("one answer per update");
        *t = timing;
        r
    }

    /// Applies `updates` as [`Catalog::update`] would each, with the ones that need the
    /// log submitted together: they share one turn of the replica, one `fdatasync` and
    /// one message to each backup. Each update comes with its `fresh` flag and its
    /// timing; one answer and that timing per update, in order.
    pub async fn update_all(
        &self,
        updates: Vec<(Update, bool, Timing)>,
    ) -> Vec<(Result<Versioned<Book>, ApiError>, Timing)> {
        let (steps, commands): (Vec<Step>, Vec<Option<state::Stamped>>) = updates
            .into_iter()
            .map(|(u, fresh, t)| self.prepare(u, fresh, t))
            .unzip();
        let commands: Vec<state::Stamped> = commands.into_iter().flatten().collect();
        let started = std::time::Instant::now();
        let mut replicated = self.node().submit_all(&commands).await.into_iter();
        let took = started.elapsed();
        let finishing = steps.into_iter().map(|step| {
            let mut t = step.t;
            let outcome = match step.settled {
                Some(o) => Ok(o),
                None => {
                    t.record("replication", took);
                    replicated
                        .next()
                        .unwrap_or(Err(bookstore_replication::node::SubmitError::Retry))
                }
            };
            async move {
                let r = match outcome {
                    Ok(o) => self.finish(step.item, step.line, o, &mut t).await,
                    Err(e) => Err(e.into()),
                };
                (r, t)
            }
        });
        futures::future::join_all(finishing.collect::<Vec<_>>()).await
    }

    /// What an update needs before its outcome: the answer from the primary's committed
    /// state if it has one, else (with the step) the command to replicate.
    fn prepare(&self, u: Update, fresh: bool, t: Timing) -> (Step, Option<state::Stamped>) {
        let item = u.item_number;
        // A repeated request is answered from the primary's committed state: no log
        // entry, no fsync. So is a fresh sale of a sold-out book: under the read lease the
        // state shows every acknowledged write, and no other attempt under its key can
        // find the key unrecorded later and sell.
        let status = self.node().status();
        let settled = if status.role == ReplicaRole::Primary {
            self.node()
                .read(|sm| {
                    sm.0.settled(&u)
                        .or_else(|| fresh.then(|| sm.0.sold_out(&u)).flatten())
                })
                .flatten()
        } else {
            None
        };
        // Written once the update is answered; made now, so that the update itself can
        // move into the log entry.
        let line = format!(
            "update,{},{},{}",
            u.item_number,
            u.cost.map_or("na".to_string(), |c| c.to_string()),
            u.stock_delta
        );
        let command = settled.is_none().then(|| state::Stamped {
            update: u,
            time_ms: Some(bookstore_common::clock::now_ms()),
        });
        let step = Step {
            item,
            line,
            settled,
            t,
        };
        (step, command)
    }

    /// Answers an update whose outcome is known: after the cache is told of a change, or,
    /// when sold out, after the updates before it are invalidated.
    async fn finish(
        &self,
        item: ItemNumber,
        line: String,
        outcome: UpdateOutcome,
        t: &mut Timing,
    ) -> Result<Versioned<Book>, ApiError> {
        self.log().record(line);
        match outcome {
            Ok((book, version)) => {
                // Only now: the lease fallback's flush floor and a restarted cache's empty
                // state are safe only for writes already applied (docs/chaos.md, bug 4).
                let epoch = self.node().status().epoch;
                t.time(
                    "cache",
                    self.cache.invalidate(book.item_number, version, epoch),
                )
                .await;
                self.barrier.invalidated(item, version);
                Ok(Versioned {
                    result: book,
                    version,
                })
            }
            Err(UpdateError::OutOfStock) => {
                // Sold out may be the work of updates still invalidating: answer once they
                // are done, or a cache could still show copies after this answer.
                let written = self.read(|s| s.written_at(item))?;
                t.time("cache", self.settle(item, written)).await;
                Err(ApiError::OutOfStock)
            }
            Err(e @ UpdateError::UnknownItem(_)) => Err(ApiError::NotFound(e.to_string())),
            Err(e @ UpdateError::KeyReused { .. }) => Err(ApiError::Unprocessable(e.to_string())),
            Err(e @ UpdateError::KeysFull) => Err(ApiError::Unavailable(e.to_string())),
            Err(e) => Err(ApiError::BadRequest(e.to_string())),
        }
    }
}

/// One update of [`Catalog::update_all`] between its preparation and its answer.
struct Step {
    item: ItemNumber,
    line: String,
    /// Answered from the primary's committed state; `None`: its command went into the log.
    settled: Option<UpdateOutcome>,
    t: Timing,
}

type Ctx = web::Data<Catalog>;

/// `?consistent=1` asks for the primary's answer (a backup answers 421).
fn require_primary(ctx: &Catalog, consistent: &ConsistentQuery) -> Result<(), ApiError> {
    if consistent.wanted() {
        ctx.control.check_primary()?;
    }
    Ok(())
}

/// A book and the catalog version it reflects.
#[utoipa::path(get, path = "/query_by_item", params(ItemQuery, ConsistentQuery), responses(
    (status = 200, body = Versioned<Book>),
    (status = 421, description = "`consistent=1` on a replica that is not the primary", body = ErrorBody),
    MalformedParameter, NoSuchBook,
))]
async fn query_by_item(
    ctx: Ctx,
    Query(q): Query<ItemQuery>,
    Query(consistent): Query<ConsistentQuery>,
) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let item = q.item_number.0;
    require_primary(&ctx, &consistent)?;
    ctx.log().record(format!("query_by_item,{item}"));
    let found = ctx.read(|s| s.lookup(item).map(|b| (b, s.version(), s.written_at(item))))?;
    let (book, version, written) =
        found.ok_or_else(|| ApiError::NotFound(format!("no book with item_number {item}")))?;
    if consistent.wanted() {
        // The primary's answer: never ahead of what the caches have been told.
        ctx.settle(item, written).await;
    }
    Ok(HttpResponse::Ok().json(Versioned {
        result: book,
        version,
    }))
}

/// The books of a topic and the catalog version.
#[utoipa::path(get, path = "/query_by_topic", params(TopicQuery, ConsistentQuery), responses(
    (status = 200, body = Versioned<Vec<SearchHit>>),
    (status = 421, description = "`consistent=1` on a replica that is not the primary", body = ErrorBody),
    MalformedParameter,
))]
async fn query_by_topic(
    ctx: Ctx,
    Query(q): Query<TopicQuery>,
    Query(consistent): Query<ConsistentQuery>,
) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let topic = q.topic.0.as_str();
    require_primary(&ctx, &consistent)?;
    ctx.log().record(format!("query_by_topic,{topic}"));
    let (hits, version) = ctx.read(|s| (s.search(topic), s.version()))?;
    Ok(HttpResponse::Ok().json(Versioned {
        result: &*hits,
        version,
    }))
}

/// `POST /update?item_number=N&stock=DELTA&cost=C|na` (the seed's parameters).
#[utoipa::path(post, path = "/update", params(ItemQuery, UpdateQuery, IdempotencyHeader), responses(
    (status = 200, body = Versioned<Book>),
    (status = 400, description = "Malformed parameter, or stock would leave its range", body = ErrorBody),
    NoSuchBook, OutOfStock, KeyReused, NotPrimary,
))]
async fn update(
    ctx: Ctx,
    req: HttpRequest,
    Query(item): Query<ItemQuery>,
    Query(q): Query<UpdateQuery>,
) -> Result<HttpResponse, ApiError> {
    let t = Timing::start();
    ctx.check_up()?;
    let item_number = item.item_number.0;
    let stock_delta = q.stock.unwrap_or(0);
    if stock_delta.unsigned_abs() > u64::from(u32::MAX) {
        return Err(ApiError::BadRequest(
            "parameter stock is out of range".into(),
        ));
    }
    let cost = q.cost.and_then(|c| c.0);
    let request_id = idempotency_key(
        req.headers()
            .get(IDEMPOTENCY_KEY_HEADER)
            .map(|v| v.as_bytes()),
    )?;
    let (out, t) = ctx
        .into_inner()
        .update_detached(
            Update {
                item_number,
                stock_delta,
                cost,
                request_id,
            },
            false,
            t,
        )
        .await;
    let out = out?;
    Ok(HttpResponse::Ok()
        .insert_header((SERVER_TIMING, t.header("catalog")))
        .json(out))
}

/// `POST /update_batch`: stock changes under idempotency keys, each applied as
/// `POST /update` would apply it, answered together (the order service's buys).
#[utoipa::path(post, path = "/update_batch", request_body = UpdateBatch, responses(
    (status = 200, description = "One answer per change, with the status `/update` would have given it", body = BatchAnswer<Versioned<Book>>),
    MalformedBody, NotPrimary,
))]
async fn update_batch(
    ctx: Ctx,
    req: HttpRequest,
    body: web::Json<UpdateBatch>,
) -> Result<HttpResponse, ApiError> {
    let t = Timing::start();
    // Sent again by a router: an earlier send may have been received, so no key in it is
    // fresh.
    let resent = bookstore_common::router::is_resend(&req);
    ctx.check_up()?;
    ctx.control.check_primary()?;
    let changes = body.into_inner().updates;
    batch_len("updates", changes.len())?;
    let mut updates = Vec::with_capacity(changes.len());
    for (i, c) in changes.into_iter().enumerate() {
        if c.stock.unsigned_abs() > u64::from(u32::MAX) {
            return Err(ApiError::BadRequest(format!(
                "updates[{i}].stock is out of range"
            )));
        }
        let update = Update {
            item_number: c.item_number,
            stock_delta: c.stock,
            cost: None,
            request_id: Some(batch_key("updates", i, &c.key)?),
        };
        updates.push((update, c.fresh && !resent, Timing::start()));
    }
    // One task for the whole batch, on the replica's runtime (it runs to the end even if
    // the caller goes away: every update that may commit gets its invalidation), and its
    // writes reach the replica together.
    let catalog = ctx.into_inner();
    let node = catalog.node().clone();
    control::answer_batch(&node, "catalog", t, async move {
        catalog.update_all(updates).await
    })
    .await
}

/// Every book (or the first `limit` by item number) and the catalog version.
#[utoipa::path(get, path = "/books", params(BooksQuery), responses(
    (status = 200, body = Versioned<Vec<Book>>),
    (status = 400, description = "Malformed limit", body = ErrorBody),
))]
async fn books(ctx: Ctx, Query(q): Query<BooksQuery>) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let limit = q.limit;
    let (all, version) = ctx.read(|s| {
        let books = match limit {
            Some(n) => s.first(n as usize),
            None => s.all(),
        };
        (books, s.version())
    })?;
    Ok(HttpResponse::Ok().json(Versioned {
        result: all,
        version,
    }))
}

/// The cache's lease (or an order to flush first).
#[utoipa::path(post, path = "/cache_lease", request_body = LeaseRequest, responses(
    (status = 200, body = LeaseReply),
    MalformedBody, NotPrimary,
))]
async fn cache_lease(ctx: Ctx, body: web::Json<LeaseRequest>) -> Result<HttpResponse, ApiError> {
    ctx.check_up()?;
    let s = ctx.node().status();
    // A primary without a read lease lends none: a deposed primary that does not know it
    // yet stops renewing the cache's lease before a successor can exist.
    if s.role != ReplicaRole::Primary || !ctx.node().serving_reads() {
        return Err(ApiError::NotPrimary { primary: s.primary });
    }
    let reply = ctx.cache.lease(body.flushed_to, body.session, s.epoch, || {
        ctx.node().read_any(|sm| sm.0.version())
    });
    Ok(HttpResponse::Ok().json(reply))
}

/// Query of `GET /books`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BooksQuery {
    /// Only the first this many books by item number.
    #[param(minimum = 0, maximum = 4294967295_u64)]
    pub limit: Option<u32>,
}

/// Query `consistent`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ConsistentQuery {
    /// `1` or `true`: answer only if this replica is the primary (else 421); anything
    /// else, or nothing, any caught-up replica answers.
    pub consistent: Option<String>,
}

impl ConsistentQuery {
    /// Does the request want the primary's answer?
    fn wanted(&self) -> bool {
        matches!(self.consistent.as_deref(), Some("1" | "true"))
    }
}

/// Query of `POST /update` besides `item_number`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UpdateQuery {
    /// Change of stock (negative to sell).
    #[param(minimum = -4294967295_i64, maximum = 4294967295_i64)]
    pub stock: Option<i64>,
    /// New price (a whole number below 2^32), or `na` to keep it.
    #[param(value_type = Option<String>, pattern = r"^(na|\s*[0-9]+\s*)$")]
    pub cost: Option<CostOrNa>,
}

#[derive(OpenApi)]
#[openapi(paths(
    query_by_item,
    query_by_topic,
    update,
    update_batch,
    books,
    cache_lease
))]
struct CatalogPaths;

/// The catalog's API (`GET /internal/openapi.json`, cluster token; `/health` is public).
pub fn internal_openapi() -> utoipa::openapi::OpenApi {
    control::service_openapi(CatalogPaths::openapi(), "bookstore catalog API")
}

/// Registers the routes of a catalog replica.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(control::public_routes::<CatalogSm>)
        .configure(metrics::routes);
    openapi::serve_internal(cfg, internal_openapi(), |c| {
        c.route("/query_by_item", web::get().to(query_by_item))
            .route("/query_by_topic", web::get().to(query_by_topic))
            .route("/update", web::post().to(update))
            .route("/update_batch", web::post().to(update_batch))
            .route("/books", web::get().to(books))
            .route("/cache_lease", web::post().to(cache_lease))
            .configure(control::internal_routes::<CatalogSm>);
    });
}

/// Serves a catalog replica on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    mut config: CatalogConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    if config.replica.url.is_none() {
        config.replica.url = Some(format!("http://{}", listener.local_addr()?));
    }
    let books = std::mem::take(&mut config.books);
    let n_books = books.len();
    let catalog = Catalog::with_books(&config, books)?;
    let metrics = web::Data::new(Metrics::new());
    let catalog = web::Data::new(catalog);
    if let Some(stats) = catalog.cache.batch_stats() {
        bookstore_common::batch::register_metrics(&metrics, "invalidations", stats);
    }
    tracing::info!(id = config.replica.id, addr = %listener.local_addr()?, books = n_books, "catalog serving");
    let c = catalog.clone();
    let json = server::json_config();
    let configure = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(c.clone()).app_data(json.clone());
        routes(cfg);
    };
    let control = catalog.control.clone();
    control::serve(
        listener,
        &config.replica,
        control,
        metrics,
        configure,
        shutdown,
    )
    .await
}

/// Shared handle type for tests that want to peek at a replica.
pub type SharedCatalog = Arc<Catalog>;
