//! Wire types shared by the services.
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A book's item number (positive).
pub type ItemNumber = u32;

/// A book as the catalog holds it and as `lookup` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Book {
    #[schema(minimum = 1)]
    pub item_number: ItemNumber,
    pub title: String,
    pub topic: String,
    pub stock: u32,
    pub cost: u32,
}

/// One hit of a topic search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct SearchHit {
    #[schema(minimum = 1)]
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Replicated services: the epoch of the view the replica acts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// Header carrying the cluster token on internal calls.
pub const CLUSTER_TOKEN_HEADER: &str = "x-cluster-token";
/// Header a client sets so a retried buy is not applied twice.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

/// Cache -> catalog: ask for (or renew) the lease that lets the cache serve entries.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
pub struct LeaseRequest {
    /// The floor the cache has flushed to, after a [`LeaseReply::Flush`].
    #[serde(default)]
    pub flushed_to: Option<u64>,
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
    pub version: u64,
    /// Item numbers the answer depends on (one for a lookup).
    pub items: Vec<ItemNumber>,
    /// The public JSON answer, stored and served as is.
    #[schema(value_type = Object)]
    pub response: serde_json::Value,
}

/// A short acknowledgement: `{"result": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Done {
    pub result: String,
}
