//! The catalog's data: books by item number, a topic index, a version counter and the
//! idempotency records of applied updates. Pure, no I/O: every write is one atomic
//! call, so a stock check and its decrement can never be split.
//!
//! What never changes after loading (item numbers, titles, topics, the topic index with
//! its prebuilt hits) lives in one [`Shelf`] behind an `Arc`, shared by every copy of the
//! state; only stock and cost (two `u32` per book) are per copy. A 1,000,000-book
//! catalog is then about 150 MB once, and a copy of it (the replication layer builds the
//! initial state more than once) costs 8 MB, not another full set of strings.
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

/// The part of a catalog that never changes: by position, each book's item number,
/// title and topic; the position of each item number; the topic index.
#[derive(Debug)]
struct Shelf {
    position: HashMap<ItemNumber, u32>,
    items: Vec<ItemNumber>,
    titles: Vec<Box<str>>,
    /// Position -> index in `topic_names`.
    topic_of: Vec<u32>,
    topic_names: Vec<Box<str>>,
    /// Topic -> hits, sorted by item number; titles never change so hits are prebuilt.
    topics: HashMap<Box<str>, Arc<Vec<SearchHit>>>,
}

/// The catalog.
#[derive(Debug, Clone)]
pub struct CatalogState {
    shelf: Arc<Shelf>,
    /// Stock and cost by position.
    stock: Vec<u32>,
    cost: Vec<u32>,
    /// By position: the version of the last update that changed the book (the version
    /// the state was built at for books not changed since). Not in snapshots: a state
    /// built from one counts every book as written at the snapshot's version.
    written: Vec<u64>,
    version: u64,
    applied: HashMap<String, UpdateOutcome>,
    applied_order: VecDeque<String>,
    max_applied: usize,
}

impl CatalogState {
    /// A catalog holding `books` at version `first_version` (the titles are moved in,
    /// not copied).
    pub fn new(books: Vec<Book>, first_version: u64) -> CatalogState {
        let n = books.len();
        let mut shelf = Shelf {
            position: HashMap::with_capacity(n),
            items: Vec::with_capacity(n),
            titles: Vec::with_capacity(n),
            topic_of: Vec::with_capacity(n),
            topic_names: Vec::new(),
            topics: HashMap::new(),
        };
        let mut topic_ids: HashMap<String, u32> = HashMap::new();
        let mut stock = Vec::with_capacity(n);
        let mut cost = Vec::with_capacity(n);
        for b in books {
            let next = topic_ids.len() as u32;
            let topic = *topic_ids.entry(b.topic).or_insert(next);
            // A repeated item number keeps its last line, as the map it replaces did.
            match shelf.position.get(&b.item_number) {
                Some(&p) => {
                    let p = p as usize;
                    shelf.titles[p] = b.title.into_boxed_str();
                    shelf.topic_of[p] = topic;
                    stock[p] = b.stock;
                    cost[p] = b.cost;
                }
                None => {
                    shelf
                        .position
                        .insert(b.item_number, shelf.items.len() as u32);
                    shelf.items.push(b.item_number);
                    shelf.titles.push(b.title.into_boxed_str());
                    shelf.topic_of.push(topic);
                    stock.push(b.stock);
                    cost.push(b.cost);
                }
            }
        }
        let mut names: Vec<(String, u32)> = topic_ids.into_iter().collect();
        names.sort_by_key(|(_, id)| *id);
        shelf.topic_names = names.into_iter().map(|(t, _)| t.into_boxed_str()).collect();
        let mut hits: Vec<Vec<SearchHit>> = vec![Vec::new(); shelf.topic_names.len()];
        for (p, &t) in shelf.topic_of.iter().enumerate() {
            hits[t as usize].push(SearchHit {
                item_number: shelf.items[p],
                title: shelf.titles[p].to_string(),
            });
        }
        shelf.topics = hits
            .into_iter()
            .zip(&shelf.topic_names)
            .map(|(mut h, t)| {
                h.sort_by_key(|h| h.item_number);
                (t.clone(), Arc::new(h))
            })
            .collect();
        let written = vec![first_version; stock.len()];
        CatalogState {
            shelf: Arc::new(shelf),
            stock,
            cost,
            written,
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
        self.shelf.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shelf.items.is_empty()
    }

    fn book_at(&self, p: usize) -> Book {
        let s = &self.shelf;
        Book {
            item_number: s.items[p],
            title: s.titles[p].to_string(),
            topic: s.topic_names[s.topic_of[p] as usize].to_string(),
            stock: self.stock[p],
            cost: self.cost[p],
        }
    }

    /// The book `item`, if there is one.
    /// The version of the last update that changed `item` (0 for an unknown item).
    pub fn written_at(&self, item: ItemNumber) -> u64 {
        self.shelf
            .position
            .get(&item)
            .map_or(0, |&p| self.written[p as usize])
    }

    pub fn lookup(&self, item: ItemNumber) -> Option<Book> {
        let p = *self.shelf.position.get(&item)?;
        Some(self.book_at(p as usize))
    }

    /// The hits of a topic (empty for an unknown topic).
    pub fn search(&self, topic: &str) -> Arc<Vec<SearchHit>> {
        self.shelf.topics.get(topic).cloned().unwrap_or_default()
    }

    /// Every book, by item number.
    pub fn all(&self) -> Vec<Book> {
        let mut v: Vec<Book> = (0..self.len()).map(|p| self.book_at(p)).collect();
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
        let p = *self
            .shelf
            .position
            .get(&u.item_number)
            .ok_or(UpdateError::UnknownItem(u.item_number))? as usize;
        let stock = self.stock[p] as i64 + u.stock_delta;
        if stock < 0 {
            return Err(UpdateError::OutOfStock);
        }
        let stock = u32::try_from(stock).map_err(|_| UpdateError::StockOverflow)?;
        self.stock[p] = stock;
        if let Some(cost) = u.cost {
            self.cost[p] = cost;
        }
        self.written[p] = self.version;
        Ok((self.book_at(p), self.version))
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
        assert_eq!(c.written_at(1), 102, "a sold-out answer changes nothing");
        assert_eq!(
            CatalogState::from_bytes(&c.to_bytes())
                .unwrap()
                .written_at(1),
            103,
            "a snapshot counts every book as written at its version"
        );
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
    fn copies_share_titles_but_not_stock() {
        let a = CatalogState::new(vec![book(1, "x", 5), book(2, "x", 1)], 0);
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.shelf, &b.shelf));
        b.update(&sell(1, None), 1).unwrap();
        assert_eq!(a.lookup(1).unwrap().stock, 5);
        assert_eq!(
            b.lookup(1).unwrap(),
            Book {
                stock: 4,
                ..book(1, "x", 5)
            }
        );
        assert_eq!(a.all(), vec![book(1, "x", 5), book(2, "x", 1)]);
        assert_eq!(a.len(), 2);
        // A repeated item number keeps its last line.
        let c = CatalogState::new(vec![book(1, "x", 5), book(1, "y", 7)], 0);
        assert_eq!(c.len(), 1);
        assert_eq!(c.lookup(1).unwrap().topic, "y");
        assert!(c.search("x").is_empty());
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
