//! Wire types shared by the services.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A book's item number: a positive integer below 2^32. It is parsed where it enters (a
/// query parameter, a JSON body, the books file), so code that holds one never checks it.
/// On the wire it is the bare number, as before.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ItemNumber(std::num::NonZeroU32);

impl ItemNumber {
    /// `n` as an item number, or `None` for 0.
    pub const fn new(n: u32) -> Option<ItemNumber> {
        match std::num::NonZeroU32::new(n) {
            Some(n) => Some(ItemNumber(n)),
            None => None,
        }
    }

    /// The number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }

    /// `n` as an item number, for literals in tests and benches.
    ///
    /// # Panics
    /// If `n` is 0.
    #[track_caller]
    pub const fn of(n: u32) -> ItemNumber {
        match ItemNumber::new(n) {
            Some(item) => item,
            None => panic!("item numbers are positive"),
        }
    }
}

impl From<ItemNumber> for u32 {
    fn from(item: ItemNumber) -> u32 {
        item.get()
    }
}

impl From<ItemNumber> for u64 {
    fn from(item: ItemNumber) -> u64 {
        item.get().into()
    }
}

impl PartialEq<u32> for ItemNumber {
    fn eq(&self, other: &u32) -> bool {
        self.get() == *other
    }
}

/// In OpenAPI documents: an integer of at least 1.
impl utoipa::PartialSchema for ItemNumber {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
            .minimum(Some(1))
            .into()
    }
}

impl ToSchema for ItemNumber {}

impl std::fmt::Display for ItemNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ItemNumber {
    type Err = String;

    /// A positive integer below 2^32, surrounding white space allowed.
    fn from_str(s: &str) -> Result<ItemNumber, String> {
        s.trim()
            .parse::<u32>()
            .ok()
            .and_then(ItemNumber::new)
            .ok_or_else(|| format!("{s:?} is not a positive integer below 2^32"))
    }
}

/// A book as the catalog holds it and as `lookup` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Book {
    pub item_number: ItemNumber,
    pub title: String,
    pub topic: String,
    pub stock: u32,
    pub cost: u32,
}

/// One hit of a topic search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    pub item_number: ItemNumber,
    pub title: String,
}

/// Public `GET /lookup` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LookupResponse {
    pub result: Book,
}

/// Public `GET /search` answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SearchResponse {
    pub result: Vec<SearchHit>,
}

/// Public `POST /buy` answer on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuySuccess {
    pub result: String,
    pub order_id: String,
}

/// Catalog's internal answer to a read or an update: the value plus the catalog
/// version it reflects (used to keep stale fills out of the cache).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Versioned<T> {
    pub result: T,
    pub version: u64,
}

/// An order as the order service records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Order {
    pub order_id: String,
    pub item_number: ItemNumber,
    pub price: u32,
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// `GET /health` answer of every service.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub service: String,
    pub id: u32,
    /// Replicated services: primary, backup, idle or down.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Replicated services: the epoch of the view the replica acts in.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// `GET /ready` answer of every service: `ready`, or `not ready` and what it waits for.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Readiness {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

impl Readiness {
    /// 200 `{"status":"ready"}`, or 503 (`Retry-After: 1`) naming what is missing.
    pub fn answer(waiting_for: Option<String>) -> actix_web::HttpResponse {
        match waiting_for {
            None => actix_web::HttpResponse::Ok().json(Readiness {
                status: "ready".into(),
                waiting_for: None,
            }),
            Some(w) => actix_web::HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "1"))
                .json(Readiness {
                    status: "not ready".into(),
                    waiting_for: Some(w),
                }),
        }
    }
}

/// Header carrying the cluster token on internal calls.
pub const CLUSTER_TOKEN_HEADER: &str = "x-cluster-token";
/// Header a client sets so a retried buy is not applied twice.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Set by the internal router on every send of a request after its first: the request
/// may have been received before, so its `fresh` flags do not hold.
pub const RESEND_HEADER: &str = "x-bookstore-resend";

/// Cache -> catalog: ask for (or renew) the lease that lets the cache serve entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    /// The floor the cache has flushed to, after a [`LeaseReply::Flush`].
    #[serde(default, deserialize_with = "whole::opt_u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub flushed_to: Option<u64>,
    /// A random number the cache draws at start. A cache the catalog has not heard from
    /// under this number (a restarted one) must flush first: it may hold fills read
    /// before its restart, below invalidations its predecessor acknowledged.
    #[serde(default, deserialize_with = "whole::u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub session: u64,
}

/// Catalog -> cache: either a lease of `millis` (counted by the cache from the moment it
/// sent its request), or an order to drop everything below version `floor` first. Both
/// carry the epoch of the primary that answered: the cache ignores grants from an epoch
/// older than one it has seen and drops every entry when it sees a newer one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LeaseReply {
    Grant { millis: u64, epoch: u64 },
    Flush { floor: u64, epoch: u64 },
}

/// Frontend -> cache: store a lookup or search answer read at catalog `version`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CacheFill {
    /// The catalog version the answer was read at.
    #[serde(deserialize_with = "whole::u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub version: u64,
    /// Item numbers the answer depends on (one for a lookup).
    #[serde(deserialize_with = "whole::items")]
    #[schema(schema_with = whole::items_schema)]
    pub items: Vec<ItemNumber>,
    /// The public JSON answer, stored and served as is.
    #[schema(value_type = Object)]
    pub response: serde_json::Value,
}

/// The header on a cache hit naming the catalog version the answer was read at (a
/// frontend's near cache stores the answer under it).
pub const CACHE_VERSION_HEADER: &str = "bookstore-version";

/// Frontend -> cache: ask for (or renew) the near-cache lease that lets this frontend
/// answer lookups and searches from its own memory. While it holds one, the cache pushes
/// every invalidation to it before acknowledging the invalidation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct NearLeaseRequest {
    /// The frontend's id (the cache pushes invalidations to this frontend's address in
    /// the cluster file).
    #[serde(deserialize_with = "whole::u63")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub frontend: u64,
    /// A random number the frontend draws at start: a lease asked under the same id by
    /// another process starts (and makes the next one start) with a flush.
    #[serde(default, deserialize_with = "whole::u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub session: u64,
}

/// Cache -> frontend: a near-cache lease of `millis` (counted by the frontend from the
/// moment it sent its request; 0 when the cache itself holds no lease), and whether the
/// frontend must first drop every near entry (it may have missed an invalidation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct NearLeaseReply {
    pub millis: u64,
    pub flush: bool,
}

/// A short acknowledgement: `{"result": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Done {
    pub result: String,
}

/// The most requests one batch call (`/buy_batch`, `/update_batch`, `/invalidate_batch`)
/// may carry.
pub const MAX_BATCH: usize = 256;

/// One buy in an order replica's `POST /buy_batch` (frontend -> order).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BuyRequest {
    #[serde(deserialize_with = "whole::item")]
    #[schema(value_type = u64, minimum = 1, maximum = 4294967295_u64)]
    pub item_number: ItemNumber,
    /// The buy's idempotency key (1 to 128 visible ASCII characters).
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub key: String,
    /// The key was made up for this request and this is its first send: no other
    /// attempt under it exists, so a sold-out answer need not be remembered under it
    /// (see [`StockChange::fresh`]). Ignored on a request sent again
    /// ([`RESEND_HEADER`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
}

/// `POST /buy_batch` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BuyBatch {
    #[schema(min_items = 1, max_items = 256)]
    pub buys: Vec<BuyRequest>,
}

/// One stock change in a catalog replica's `POST /update_batch` (order -> catalog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct StockChange {
    #[serde(deserialize_with = "whole::item")]
    #[schema(value_type = u64, minimum = 1, maximum = 4294967295_u64)]
    pub item_number: ItemNumber,
    /// The change of stock (`-1` for a buy).
    #[serde(deserialize_with = "whole::signed")]
    #[schema(minimum = -4294967295_i64, maximum = 4294967295_i64)]
    pub stock: i64,
    /// The idempotency key the change is applied at most once under (1 to 128 visible
    /// ASCII characters).
    #[schema(min_length = 1, max_length = 128, pattern = "^[!-~]+$")]
    pub key: String,
    /// No other attempt under `key` exists (a buy's first send, its key made up by the
    /// frontend). A catalog primary holding its read lease then answers a sale of a
    /// sold-out book from its state, with no log entry: no later attempt can find the
    /// key unrecorded and sell. Ignored on a request sent again ([`RESEND_HEADER`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub fresh: bool,
}

/// `POST /update_batch` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpdateBatch {
    #[schema(min_items = 1, max_items = 256)]
    pub updates: Vec<StockChange>,
}

/// One invalidation: drop the entries of `item_number` read below `version` (and, with
/// `epoch`, note the catalog primary's epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invalidation {
    #[serde(deserialize_with = "whole::item")]
    #[schema(value_type = u64, minimum = 1, maximum = 4294967295_u64)]
    pub item_number: ItemNumber,
    #[serde(deserialize_with = "whole::u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub version: u64,
    #[serde(default, deserialize_with = "whole::opt_u63")]
    #[schema(minimum = 0, maximum = 9223372036854775807_i64)]
    pub epoch: Option<u64>,
}

/// `POST /invalidate_batch` body (catalog -> cache, cache -> frontend).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct InvalidationBatch {
    #[schema(min_items = 1, max_items = 256)]
    pub items: Vec<Invalidation>,
}

/// The answer to one request of a batch: the status the request would have had alone,
/// its answer or error, and its `Server-Timing`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchItem<T> {
    pub status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ok: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With a 421: the replica the answering one believes is primary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timing: Option<String>,
}

impl<T> BatchItem<T> {
    /// The answer to a request that returned `r` with `timing` (its `Server-Timing`).
    pub fn new(r: Result<T, crate::ApiError>, timing: Option<String>) -> BatchItem<T> {
        use actix_web::ResponseError;
        match r {
            Ok(v) => BatchItem {
                status: 200,
                ok: Some(v),
                error: None,
                primary: None,
                timing,
            },
            Err(e) => BatchItem {
                status: e.status_code().as_u16(),
                ok: None,
                primary: match e {
                    crate::ApiError::NotPrimary { primary } => primary,
                    _ => None,
                },
                error: Some(e.to_string()),
                timing,
            },
        }
    }

    /// What the request alone would have given its caller: the answer and its
    /// `Server-Timing`, or the error as a [`crate::client::CallError::Status`].
    pub fn into_result(self) -> Result<(T, Option<String>), crate::client::CallError> {
        match (self.status, self.ok) {
            (200, Some(v)) => Ok((v, self.timing)),
            (status, _) => Err(crate::client::CallError::Status {
                status: if status == 200 { 502 } else { status },
                body: crate::error::ErrorBody {
                    error: self.error.unwrap_or_else(|| "answer missing".into()),
                    result: (status == 409).then(|| "Failed".into()),
                    primary: self.primary,
                    leader: None,
                },
            }),
        }
    }
}

/// A batch call's answer: one [`BatchItem`] per request, in order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchAnswer<T> {
    pub results: Vec<BatchItem<T>>,
}

/// Whole numbers in JSON bodies, read as JSON Schema's `integer` defines them: `7` or
/// `7.0` (an integral float), within the documented range. Unsigned 64-bit values on the
/// wire stay below 2^63 (the `int64` range every JSON Schema tool knows).
pub mod whole {
    use super::ItemNumber;
    use serde::de::{Deserialize, Deserializer, Error, Visitor};
    use std::fmt;

    /// The largest 64-bit value accepted on the wire.
    pub const MAX_U63: u64 = i64::MAX as u64;

    struct Whole(u64);

    impl<'de> Deserialize<'de> for Whole {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Whole, D::Error> {
            struct V;
            impl Visitor<'_> for V {
                type Value = Whole;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a whole number >= 0")
                }
                fn visit_u64<E: Error>(self, v: u64) -> Result<Whole, E> {
                    Ok(Whole(v))
                }
                fn visit_i64<E: Error>(self, v: i64) -> Result<Whole, E> {
                    u64::try_from(v)
                        .map(Whole)
                        .map_err(|_| E::custom(format!("{v} is negative")))
                }
                fn visit_f64<E: Error>(self, v: f64) -> Result<Whole, E> {
                    if v.fract() == 0.0 && (0.0..=MAX_U63 as f64).contains(&v) {
                        Ok(Whole(v as u64))
                    } else {
                        Err(E::custom(format!("{v} is not a whole number in range")))
                    }
                }
            }
            d.deserialize_any(V)
        }
    }

    fn at_most<E: Error>(v: u64, max: u64) -> Result<u64, E> {
        if v <= max {
            Ok(v)
        } else {
            Err(E::custom(format!("{v} is larger than {max}")))
        }
    }

    /// A whole number in `0..=2^63-1`.
    pub fn u63<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        at_most(Whole::deserialize(d)?.0, MAX_U63)
    }

    /// An optional (`null` or absent) whole number in `0..=2^63-1`.
    pub fn opt_u63<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        match Option::<Whole>::deserialize(d)? {
            None => Ok(None),
            Some(w) => at_most(w.0, MAX_U63).map(Some),
        }
    }

    /// A signed whole number (`-3`, `-3.0`) in the `i64` range.
    pub fn signed<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: Error>(self, v: u64) -> Result<i64, E> {
                i64::try_from(v).map_err(|_| E::custom(format!("{v} is out of range")))
            }
            fn visit_f64<E: Error>(self, v: f64) -> Result<i64, E> {
                if v.fract() == 0.0 && v >= i64::MIN as f64 && v < i64::MAX as f64 {
                    Ok(v as i64)
                } else {
                    Err(E::custom(format!("{v} is not a whole number in range")))
                }
            }
        }
        d.deserialize_any(V)
    }

    /// An item number: a whole number in `1..=2^32-1`.
    pub fn item<'de, D: Deserializer<'de>>(d: D) -> Result<ItemNumber, D::Error> {
        let v = at_most(Whole::deserialize(d)?.0, u32::MAX.into())?;
        ItemNumber::new(v as u32).ok_or_else(|| D::Error::custom("item_number must be positive"))
    }

    /// A list of item numbers, each a whole number in `1..=2^32-1`.
    pub fn items<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<ItemNumber>, D::Error> {
        Vec::<Whole>::deserialize(d)?
            .into_iter()
            .map(|w| {
                let v = at_most(w.0, u32::MAX.into())?;
                ItemNumber::new(v as u32)
                    .ok_or_else(|| D::Error::custom("item numbers must be positive"))
            })
            .collect()
    }

    /// The schema [`items`] reads.
    pub fn items_schema() -> utoipa::openapi::Array {
        utoipa::openapi::ArrayBuilder::new()
            .items(
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::Type::Integer)
                    .minimum(Some(1))
                    .maximum(Some(u32::MAX)),
            )
            .build()
    }
}

/// `GET /cluster` on a frontend (operator token): every server of the cluster file with
/// what the view service and the server itself say about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClusterMap {
    /// The frontend that assembled the map.
    pub frontend: u32,
    /// When it was assembled, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The view of each replicated kind (catalog, order).
    pub views: Vec<KindView>,
    /// Every server, coordinators first, then frontends, cache, catalog, order, by id.
    pub servers: Vec<ServerInfo>,
}

/// What the view service says about one replicated kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KindView {
    pub kind: String,
    /// `None` when no view is decided yet or the view service did not answer.
    pub epoch: Option<u64>,
    pub primary: Option<u32>,
    pub backups: Vec<u32>,
    /// Backups known to hold every committed entry (those a failover may promote).
    pub synced: Vec<u32>,
    /// View changes the view service made since it started (any membership change).
    pub view_changes: Option<u64>,
    /// View changes that replaced a primary that left the view (not a handover to a
    /// lower-id backup, which keeps the old primary as a backup).
    pub failovers: Option<u64>,
    /// The coordinator that decided the current view, and the Raft term it led then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_in_term: Option<u64>,
    /// Why the view is unknown (the view service did not answer).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One server in a [`ClusterMap`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServerInfo {
    /// coordinator, frontend, cache, catalog or order.
    pub kind: String,
    pub id: u32,
    /// `host:port` (left out of the public `/status.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Replicated kinds: primary, backup (in the view), idle (up, not in the view) or
    /// down. Coordinators: leader, follower, candidate, learner or down. Frontends and
    /// cache: serving or down.
    pub role: String,
    /// up (it answered its health or status route) or down.
    pub health: String,
    /// The epoch of the view the replica acts in, as it reports it. Coordinators: their
    /// Raft term.
    pub epoch: Option<u64>,
    /// Milliseconds since the replica last pinged the view service. Coordinators: since
    /// their last contact with the leader (the leader: since a quorum acknowledged it).
    pub heartbeat_age_ms: Option<u64>,
    /// The replica's commit index (entries known durable on every replica of its view).
    /// Coordinators: their applied Raft index.
    pub commit_index: Option<u64>,
    /// The replica's applied index.
    pub applied_index: Option<u64>,
    /// Replication lag in log entries: the primary's commit index minus this replica's
    /// applied index (0 for a caught-up replica; `None` with no reachable primary).
    pub lag_entries: Option<u64>,
    /// A backup that the view service knows holds every committed entry.
    pub synced: Option<bool>,
    /// Whether the replica serves reads (caught up in its view).
    pub serving_reads: Option<bool>,
    /// Coordinators: the leader they know of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<u64>,
    /// Why the server is down (left out of the public `/status.json`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ServerInfo {
    /// A server that did not answer (yet): down, at `address`, nothing known.
    pub fn down(kind: &str, id: u32, address: Option<String>) -> ServerInfo {
        ServerInfo {
            kind: kind.into(),
            id,
            address,
            role: "down".into(),
            health: "down".into(),
            epoch: None,
            heartbeat_age_ms: None,
            commit_index: None,
            applied_index: None,
            lag_entries: None,
            synced: None,
            serving_reads: None,
            leader: None,
            error: None,
        }
    }
}

/// One book's stock on the public status page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BookStock {
    pub item_number: ItemNumber,
    pub title: String,
    pub stock: u32,
}

/// `GET /status.json` (public, what the `/status` page shows): the [`ClusterMap`]
/// without addresses and error texts, and the stock of each book.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatusPage {
    pub cluster: ClusterMap,
    /// The first books by item number (at most a fixed number: see `books_truncated`).
    pub books: Vec<BookStock>,
    /// Set when the catalog holds more books than are shown.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub books_truncated: bool,
    /// Set when the catalog did not answer (the books are then left empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub books_error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::CallError;
    use crate::ApiError;

    fn through_the_wire<T: Serialize + serde::de::DeserializeOwned>(
        item: BatchItem<T>,
    ) -> BatchItem<T> {
        serde_json::from_slice(&serde_json::to_vec(&item).unwrap()).unwrap()
    }

    #[test]
    fn a_batch_item_gives_its_caller_what_the_single_call_would_have() {
        let ok = through_the_wire(BatchItem::new(Ok(7u32), Some("order;dur=1".into())));
        assert_eq!(ok.into_result().unwrap(), (7, Some("order;dur=1".into())));

        let sold_out = through_the_wire(BatchItem::<u32>::new(Err(ApiError::OutOfStock), None));
        match sold_out.into_result() {
            Err(CallError::Status { status: 409, body }) => {
                assert_eq!(body.result.as_deref(), Some("Failed"))
            }
            other => panic!("{other:?}"),
        }
        let moved = through_the_wire(BatchItem::<u32>::new(
            Err(ApiError::NotPrimary { primary: Some(1) }),
            None,
        ));
        match moved.into_result() {
            Err(CallError::Status { status: 421, body }) => assert_eq!(body.primary, Some(1)),
            other => panic!("{other:?}"),
        }
        let missing = through_the_wire(BatchItem::<u32>::new(
            Err(ApiError::NotFound("no book with item_number 9".into())),
            None,
        ));
        match missing.into_result() {
            Err(CallError::Status { status: 404, body }) => {
                assert_eq!(body.error, "no book with item_number 9")
            }
            other => panic!("{other:?}"),
        }
        // A 200 without an answer is the callee's fault, never a success.
        let empty: BatchItem<u32> = serde_json::from_str(r#"{"status":200}"#).unwrap();
        assert!(matches!(
            empty.into_result(),
            Err(CallError::Status { status: 502, .. })
        ));
    }

    #[test]
    fn batch_bodies_refuse_item_number_zero_and_out_of_range() {
        let ok: BuyBatch =
            serde_json::from_str(r#"{"buys":[{"item_number":3,"key":"k"}]}"#).unwrap();
        assert_eq!(ok.buys[0].item_number.get(), 3);
        for bad in [
            r#"{"buys":[{"item_number":0,"key":"k"}]}"#,
            r#"{"buys":[{"item_number":4294967296,"key":"k"}]}"#,
            r#"{"buys":[{"item_number":-1,"key":"k"}]}"#,
            r#"{"buys":[{"key":"k"}]}"#,
        ] {
            assert!(serde_json::from_str::<BuyBatch>(bad).is_err(), "{bad}");
        }
        let change: StockChange =
            serde_json::from_str(r#"{"item_number":2.0,"stock":-3.0,"key":"k"}"#).unwrap();
        assert_eq!((change.item_number.get(), change.stock), (2, -3));
        assert!(
            serde_json::from_str::<StockChange>(r#"{"item_number":2,"stock":-3.5,"key":"k"}"#)
                .is_err()
        );
    }
}

/// Query of `POST /admin/cluster/register` (scale out).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RegisterQuery {
    /// The replicated service: `catalog` or `order`.
    pub kind: String,
    /// The new replica's base URL, `http://host:port`.
    pub url: String,
}

/// Query of `POST /admin/cluster/unregister` (scale in).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnregisterQuery {
    /// The replicated service: `catalog` or `order`.
    pub kind: String,
    /// The replica's id.
    pub id: u32,
}

/// Answer of `POST /admin/cluster/register` and `/unregister`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberChange {
    pub kind: String,
    pub id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
}

/// Query of `POST /admin/coordinators/add`: a coordinator started with `--join` and the
/// id `POST /admin/coordinators/reserve` gave it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CoordinatorAddQuery {
    /// The id reserved for it.
    pub id: u64,
    /// Its base URL, `http://host:port`.
    pub url: String,
}

/// Query of `POST /admin/coordinators/remove`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CoordinatorRemoveQuery {
    /// The coordinator's id.
    pub id: u64,
}

/// Answer of the `/admin/coordinators/*` routes: the coordinator concerned and the voting
/// members after the change.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CoordinatorChange {
    pub id: u64,
    #[serde(default)]
    pub voters: Vec<u64>,
}
