//! The catalog's data: books by item number, a topic index, a version counter and the
//! idempotency records of applied updates. Pure, no I/O: every write is one atomic
//! call, so a stock check and its decrement can never be split.
use bookstore_common::types::{Book, ItemNumber, SearchHit};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Why an update was refused. Refusals change nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum UpdateError {
    #[error("no book with item_number {0}")]
    UnknownItem(ItemNumber),
    #[error("out of stock")]
    OutOfStock,
    #[error("stock would exceed {max}", max = u32::MAX)]
    StockOverflow,
    #[error("malformed update command")]
    Malformed,
}

/// One update: add `stock_delta` (negative to sell) and optionally set the cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub item_number: ItemNumber,
    pub stock_delta: i64,
    pub cost: Option<u32>,
    /// Set by callers that may retry: a second update with the same id returns the
    /// first one's outcome and changes nothing.
    pub request_id: Option<String>,
}

/// How many idempotency records a catalog keeps: retries come within seconds, and at
/// 10k buys/s this still covers ten seconds.
pub const MAX_IDEMPOTENCY_RECORDS: usize = 100_000;

pub type UpdateOutcome = Result<(Book, u64), UpdateError>;

/// The catalog.
#[derive(Debug)]
pub struct CatalogState {
    books: HashMap<ItemNumber, Book>,
    /// Topic -> item numbers, sorted; titles never change so hits are prebuilt.
    topics: HashMap<String, Arc<Vec<SearchHit>>>,
    version: u64,
    applied: HashMap<String, UpdateOutcome>,
    applied_order: VecDeque<String>,
    max_applied: usize,
}

impl CatalogState {
    /// A catalog holding `books` at version `first_version`.
    pub fn new(books: Vec<Book>, first_version: u64) -> CatalogState {
        let mut topics: HashMap<String, Vec<SearchHit>> = HashMap::new();
        let mut map = HashMap::with_capacity(books.len());
        for b in books {
            topics.entry(b.topic.clone()).or_default().push(SearchHit {
                item_number: b.item_number,
                title: b.title.clone(),
            });
            map.insert(b.item_number, b);
        }
        let topics = topics
            .into_iter()
            .map(|(t, mut hits)| {
                hits.sort_by_key(|h| h.item_number);
                (t, Arc::new(hits))
            })
            .collect();
        CatalogState {
            books: map,
            topics,
            version: first_version,
            applied: HashMap::new(),
            applied_order: VecDeque::new(),
            max_applied: MAX_IDEMPOTENCY_RECORDS,
        }
    }

    /// How many idempotency records are kept (oldest forgotten first).
    pub fn set_max_applied(&mut self, n: usize) {
        self.max_applied = n.max(1);
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.books.len()
    }

    pub fn is_empty(&self) -> bool {
        self.books.is_empty()
    }

    pub fn lookup(&self, item: ItemNumber) -> Option<&Book> {
        self.books.get(&item)
    }

    /// The hits of a topic (empty for an unknown topic).
    pub fn search(&self, topic: &str) -> Arc<Vec<SearchHit>> {
        self.topics.get(topic).cloned().unwrap_or_default()
    }

    /// Every book, by item number.
    pub fn all(&self) -> Vec<Book> {
        let mut v: Vec<Book> = self.books.values().cloned().collect();
        v.sort_by_key(|b| b.item_number);
        v
    }

    /// The outcome already recorded under `u`'s request id, if any: a repeated request
    /// is answered from committed state, without a new log entry.
    ///
    /// (A sold-out sale is *not* answered from local state: a primary that has been
    /// deposed without knowing it yet could answer "out of stock" for a request whose
    /// first attempt the new primary applied. The chaos checker caught exactly that.)
    pub fn settled(&self, u: &Update) -> Option<UpdateOutcome> {
        u.request_id
            .as_ref()
            .and_then(|id| self.applied.get(id))
            .cloned()
    }

    /// Applies one update atomically as version `version` (the replicated log index,
    /// increasing); returns the book after it and the version it was written at.
    pub fn update(&mut self, u: &Update, version: u64) -> UpdateOutcome {
        self.version = self.version.max(version);
        if let Some(id) = &u.request_id {
            if let Some(prev) = self.applied.get(id) {
                return prev.clone();
            }
        }
        let outcome = self.apply(u);
        if let Some(id) = &u.request_id {
            if matches!(outcome, Ok(_) | Err(UpdateError::OutOfStock)) {
                self.remember(id.clone(), outcome.clone());
            }
        }
        outcome
    }

    fn apply(&mut self, u: &Update) -> UpdateOutcome {
        let book = self
            .books
            .get_mut(&u.item_number)
            .ok_or(UpdateError::UnknownItem(u.item_number))?;
        let stock = book.stock as i64 + u.stock_delta;
        if stock < 0 {
            return Err(UpdateError::OutOfStock);
        }
        let stock = u32::try_from(stock).map_err(|_| UpdateError::StockOverflow)?;
        book.stock = stock;
        if let Some(cost) = u.cost {
            book.cost = cost;
        }
        Ok((book.clone(), self.version))
    }

    /// The state as bytes (for a snapshot).
    pub fn to_bytes(&self) -> Vec<u8> {
        let snap = SnapshotRef {
            books: self.all(),
            version: self.version,
            applied: self
                .applied_order
                .iter()
                .filter_map(|k| self.applied.get(k).map(|o| (k.clone(), o.clone())))
                .collect(),
            max_applied: self.max_applied,
        };
        bincode::serialize(&snap).expect("catalog state encodes")
    }

    /// The state from [`CatalogState::to_bytes`].
    pub fn from_bytes(bytes: &[u8]) -> Result<CatalogState, String> {
        let snap: SnapshotRef =
            bookstore_replication::protocol::decode(bytes).map_err(|e| e.to_string())?;
        let mut s = CatalogState::new(snap.books, snap.version);
        s.max_applied = snap.max_applied;
        for (k, o) in snap.applied {
            s.applied_order.push_back(k.clone());
            s.applied.insert(k, o);
        }
        Ok(s)
    }

    fn remember(&mut self, id: String, outcome: UpdateOutcome) {
        if self.applied_order.len() >= self.max_applied {
            if let Some(old) = self.applied_order.pop_front() {
                self.applied.remove(&old);
            }
        }
        self.applied_order.push_back(id.clone());
        self.applied.insert(id, outcome);
    }
}

#[derive(Serialize, Deserialize)]
struct SnapshotRef {
    books: Vec<Book>,
    version: u64,
    applied: Vec<(String, UpdateOutcome)>,
    max_applied: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(n: u32, topic: &str, stock: u32) -> Book {
        Book {
            item_number: n,
            title: format!("t{n}"),
            topic: topic.into(),
            stock,
            cost: 10,
        }
    }

    fn sell(n: u32, id: Option<&str>) -> Update {
        Update {
            item_number: n,
            stock_delta: -1,
            cost: None,
            request_id: id.map(Into::into),
        }
    }

    #[test]
    fn sells_until_out_of_stock_and_changes_nothing_after() {
        let mut c = CatalogState::new(vec![book(1, "a", 2)], 100);
        assert_eq!(c.update(&sell(1, None), 101).unwrap().0.stock, 1);
        assert_eq!(
            c.update(&sell(1, None), 102).unwrap(),
            (book(1, "a", 0), 102)
        );
        assert_eq!(c.update(&sell(1, None), 103), Err(UpdateError::OutOfStock));
        assert_eq!(c.version(), 103);
        assert_eq!(
            c.update(&sell(9, None), 104),
            Err(UpdateError::UnknownItem(9))
        );
    }

    #[test]
    fn a_retried_request_is_applied_once() {
        let mut c = CatalogState::new(vec![book(1, "a", 5)], 0);
        let first = c.update(&sell(1, Some("k1")), 1).unwrap();
        assert_eq!(c.update(&sell(1, Some("k1")), 2).unwrap(), first);
        assert_eq!(c.lookup(1).unwrap().stock, 4);
        // The record survives a snapshot.
        let mut again = CatalogState::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(again.update(&sell(1, Some("k1")), 3).unwrap(), first);
        assert_eq!(again.lookup(1).unwrap().stock, 4);
        assert_eq!(again.search("a").len(), 1);
    }

    #[test]
    fn repeated_requests_are_settled_without_the_log_and_sold_out_is_not() {
        let mut c = CatalogState::new(vec![book(1, "a", 1)], 0);
        assert_eq!(c.settled(&sell(1, Some("k"))), None);
        let first = c.update(&sell(1, Some("k")), 1);
        assert_eq!(c.settled(&sell(1, Some("k"))), Some(first));
        assert_eq!(
            c.settled(&sell(1, Some("other"))),
            None,
            "sold out uses the log"
        );
        assert_eq!(c.settled(&sell(9, None)), None);
    }

    #[test]
    fn idempotency_records_are_bounded() {
        let mut c = CatalogState::new(vec![book(1, "a", 100)], 0);
        c.set_max_applied(2);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            c.update(&sell(1, Some(k)), i as u64 + 1).unwrap();
        }
        assert_eq!(c.applied.len(), 2);
        assert!(!c.applied.contains_key("a"));
    }

    #[test]
    fn topics_are_indexed_and_sorted() {
        let c = CatalogState::new(vec![book(3, "x", 1), book(1, "x", 1), book(2, "y", 1)], 0);
        let hits: Vec<u32> = c.search("x").iter().map(|h| h.item_number).collect();
        assert_eq!(hits, vec![1, 3]);
        assert!(c.search("nope").is_empty());
    }

    #[test]
    fn restock_and_price_change_and_overflow() {
        let mut c = CatalogState::new(vec![book(1, "a", 0)], 0);
        let up = Update {
            item_number: 1,
            stock_delta: 5,
            cost: Some(12),
            request_id: None,
        };
        let (b, _) = c.update(&up, 1).unwrap();
        assert_eq!((b.stock, b.cost), (5, 12));
        let huge = Update {
            stock_delta: i64::from(u32::MAX),
            ..up
        };
        assert_eq!(c.update(&huge, 2), Err(UpdateError::StockOverflow));
        assert_eq!(c.lookup(1).unwrap().stock, 5);
    }
}
