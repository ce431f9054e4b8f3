//! The catalog's data: books by item number, a topic index, a version counter and the
//! idempotency records of applied updates. Pure, no I/O: every write is one atomic
//! call, so a stock check and its decrement can never be split.
//!
//! An update's `Idempotency-Key` names one request: the key is kept with a fingerprint
//! of the request (item, change of stock, cost), so a retry gets the first answer and the
//! key reused for anything else is refused ([`UpdateError::KeyReused`]). Keys of updates
//! that changed the state are kept by age for the retention window
//! ([`bookstore_common::idempotency`]), under a bound past which new keyed updates are
//! refused; keys of answers that changed nothing (sold out) sit in a table of their own,
//! the newest [`MAX_REFUSED_RECORDS`], and never push the others out.
//!
//! Log entries carry the time their primary stamped on them ([`encode_entry`]), the
//! clock of the retention window. Entries and snapshots written before keys had times and
//! fingerprints still decode: see [`decode_entry`] and [`CatalogState::from_bytes`].
//!
//! What never changes after loading (item numbers, titles, topics, the topic index with
//! its prebuilt hits) lives in one `Shelf` behind an `Arc`, shared by every copy of the
//! state; only stock and cost (two `u32` per book) are per copy. A 1,000,000-book
//! catalog is then about 150 MB once, and a copy of it (the replication layer builds the
//! initial state more than once) costs 8 MB, not another full set of strings.
use bookstore_common::idempotency::{IdempotencyKey, KeyTable, Retention, SavedKeys, SavedKeysRef};
use bookstore_common::types::{Book, ItemNumber, SearchHit};
use bookstore_replication::protocol::decode;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
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
    /// Not produced any more (a log entry that does not decode is applied as nothing,
    /// `node::StateMachine`); kept so that the variants after it keep their encoding in
    /// saved snapshots.
    #[error("malformed update command")]
    Malformed,
    #[error(
        "header Idempotency-Key was already used for another request (an update of \
         item_number {first_item}); send a new key for a new request"
    )]
    KeyReused { first_item: ItemNumber },
    #[error(
        "too many updates within the idempotency window: the catalog retains as many keys \
         as it may; retry later"
    )]
    KeysFull,
}

/// One update: add `stock_delta` (negative to sell) and optionally set the cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    pub item_number: ItemNumber,
    pub stock_delta: i64,
    pub cost: Option<u32>,
    /// Set by callers that may retry: a second update with the same id returns the
    /// first one's outcome and changes nothing.
    pub request_id: Option<IdempotencyKey>,
}

/// How many keys of answers that changed nothing (sold out) a catalog keeps, newest
/// first. They are not needed for safety (a retry that buys after a sold-out answer buys
/// once), only for giving a retry the same answer.
pub const MAX_REFUSED_RECORDS: usize = 100_000;

/// What a key's first request asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub item_number: ItemNumber,
    /// Change of stock and cost; `None` for a key restored from a snapshot written before
    /// fingerprints (its item alone is compared).
    pub change: Option<(i64, Option<u32>)>,
}

impl Fingerprint {
    fn of(u: &Update) -> Fingerprint {
        Fingerprint {
            item_number: u.item_number,
            change: Some((u.stock_delta, u.cost)),
        }
    }

    fn matches(&self, u: &Update) -> bool {
        self.item_number == u.item_number
            && self.change.is_none_or(|c| c == (u.stock_delta, u.cost))
    }
}

/// The answer of an update that changed the state, kept under its key (the book's
/// title and topic never change: the answer is rebuilt from the shelf).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {
    pub fp: Fingerprint,
    pub stock: u32,
    pub cost: u32,
    pub version: u64,
}

/// Leads a log entry in the current format: the update and its primary's time.
pub const ENTRY_MAGIC: &[u8; 8] = b"BKCATUP2";

/// Leads a snapshot in the current format.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"BKCATSN2";

/// A log entry in the current format (after [`ENTRY_MAGIC`]).
#[derive(Serialize, Deserialize)]
struct Entry {
    update: Update,
    time_ms: u64,
}

/// The catalog's replicated command: an update and its primary's time (ms since the Unix
/// epoch; none in entries written before updates had times).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamped {
    pub update: Update,
    pub time_ms: Option<u64>,
}

/// The log entry of `u`, stamped by its primary at `time_ms` (ms since the Unix epoch).
pub fn encode_entry(u: &Update, time_ms: u64) -> Vec<u8> {
    let mut out = ENTRY_MAGIC.to_vec();
    let stamped = Entry {
        update: u.clone(),
        time_ms,
    };
    bincode::serialize_into(&mut out, &stamped).expect("update encodes");
    out
}

/// An update and its time from a log entry; an entry without [`ENTRY_MAGIC`] was
/// written before updates had times (the bare [`Update`]) and has none.
pub fn decode_entry(data: &[u8]) -> Result<(Update, Option<u64>), bincode::Error> {
    match data.strip_prefix(ENTRY_MAGIC) {
        Some(rest) => decode::<Entry>(rest).map(|s| (s.update, Some(s.time_ms))),
        None => decode::<Update>(data).map(|u| (u, None)),
    }
}

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
    /// Keys of updates that changed the state, by age.
    done: KeyTable<Done>,
    /// Keys of answers that changed nothing (sold out), the newest only.
    refused: KeyTable<(Fingerprint, UpdateError)>,
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
            done: KeyTable::default(),
            refused: KeyTable::new(refused_retention()),
        }
    }

    /// How long and how many keys of updates that changed the state are kept.
    pub fn set_retention(&mut self, retention: Retention) {
        self.done.set_retention(retention);
    }

    pub fn retention(&self) -> Retention {
        self.done.retention()
    }

    /// The keys of updates that changed the state.
    pub fn done_keys(&self) -> &KeyTable<Done> {
        &self.done
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

    /// The first `n` books by item number.
    pub fn first(&self, n: usize) -> Vec<Book> {
        if n >= self.len() {
            return self.all();
        }
        let mut order: Vec<(ItemNumber, usize)> = self
            .shelf
            .items
            .iter()
            .enumerate()
            .map(|(p, &i)| (i, p))
            .collect();
        order.select_nth_unstable(n);
        order.truncate(n);
        order.sort_unstable();
        order.into_iter().map(|(_, p)| self.book_at(p)).collect()
    }

    /// Every book, by item number.
    pub fn all(&self) -> Vec<Book> {
        let mut v: Vec<Book> = (0..self.len()).map(|p| self.book_at(p)).collect();
        v.sort_by_key(|b| b.item_number);
        v
    }

    /// The outcome already recorded under `u`'s request id, if any: a repeated request
    /// is answered from committed state, without a new log entry; the key reused for
    /// another request is refused.
    ///
    /// (A sold-out sale is *not* answered from local state: a primary that has been
    /// deposed without knowing it yet could answer "out of stock" for a request whose
    /// first attempt the new primary applied. The chaos checker caught exactly that.)
    pub fn settled(&self, u: &Update) -> Option<UpdateOutcome> {
        let id = u.request_id.as_ref()?.as_str();
        let reused = |fp: &Fingerprint| UpdateError::KeyReused {
            first_item: fp.item_number,
        };
        if let Some(d) = self.done.get(id) {
            if !d.fp.matches(u) {
                return Some(Err(reused(&d.fp)));
            }
            return Some(self.answer(d));
        }
        let (fp, e) = self.refused.get(id)?;
        Some(Err(if fp.matches(u) { e.clone() } else { reused(fp) }))
    }

    /// A sale (a decrement of stock with no change of price) that this state refuses as
    /// sold out, answered without a log entry when no other attempt under its key can
    /// exist (`StockChange::fresh`); `None` for anything else.
    pub fn sold_out(&self, u: &Update) -> Option<UpdateOutcome> {
        if u.cost.is_some() || u.stock_delta >= 0 {
            return None;
        }
        let p = *self.shelf.position.get(&u.item_number)? as usize;
        let after = i64::from(self.stock[p]).checked_add(u.stock_delta)?;
        (after < 0).then_some(Err(UpdateError::OutOfStock))
    }

    /// The first answer of a key whose update changed the state.
    fn answer(&self, d: &Done) -> UpdateOutcome {
        let p = *self
            .shelf
            .position
            .get(&d.fp.item_number)
            .ok_or(UpdateError::UnknownItem(d.fp.item_number))? as usize;
        let book = Book {
            stock: d.stock,
            cost: d.cost,
            ..self.book_at(p)
        };
        Ok((book, d.version))
    }

    /// Applies one update atomically as version `version` (the replicated log index,
    /// increasing), with no time: the retention clock stays where it is (entries
    /// written before updates had times). See [`CatalogState::update_at`].
    pub fn update(&mut self, u: &Update, version: u64) -> UpdateOutcome {
        self.update_at(u, version, None)
    }

    /// Applies one update atomically as version `version`, stamped by its primary at
    /// `time_ms`; returns the book after it and the version it was written at.
    pub fn update_at(&mut self, u: &Update, version: u64, time_ms: Option<u64>) -> UpdateOutcome {
        self.version = self.version.max(version);
        if let Some(t) = time_ms {
            self.done.advance(t);
            self.refused.advance(t);
        }
        if let Some(prev) = self.settled(u) {
            return prev;
        }
        let (p, stock) = self.check(u)?;
        if u.request_id.is_some() && self.done.is_full() {
            return Err(UpdateError::KeysFull);
        }
        self.stock[p] = stock;
        if let Some(cost) = u.cost {
            self.cost[p] = cost;
        }
        self.written[p] = self.version;
        let book = self.book_at(p);
        if let Some(id) = &u.request_id {
            let done = Done {
                fp: Fingerprint::of(u),
                stock: book.stock,
                cost: book.cost,
                version: self.version,
            };
            self.done.insert(id.as_str(), done);
        }
        Ok((book, self.version))
    }

    /// Where `u` applies and the stock after it, or why it is refused (a sold-out
    /// answer is remembered under its key).
    fn check(&mut self, u: &Update) -> Result<(usize, u32), UpdateError> {
        let p = *self
            .shelf
            .position
            .get(&u.item_number)
            .ok_or(UpdateError::UnknownItem(u.item_number))? as usize;
        // Checked here, not only at the HTTP layer: a log entry may carry any change.
        let stock = i64::from(self.stock[p])
            .checked_add(u.stock_delta)
            .ok_or(UpdateError::StockOverflow)?;
        if stock < 0 {
            if let Some(id) = &u.request_id {
                self.refused
                    .insert_evicting(id.as_str(), (Fingerprint::of(u), UpdateError::OutOfStock));
            }
            return Err(UpdateError::OutOfStock);
        }
        let stock = u32::try_from(stock).map_err(|_| UpdateError::StockOverflow)?;
        Ok((p, stock))
    }

    /// The state as bytes (for a snapshot), after [`SNAPSHOT_MAGIC`].
    pub fn to_bytes(&self) -> Vec<u8> {
        let snap = SnapshotRef {
            books: self.all(),
            version: self.version,
            done: self.done.saved(),
            refused: self.refused.saved(),
        };
        let mut out = SNAPSHOT_MAGIC.to_vec();
        bincode::serialize_into(&mut out, &snap).expect("catalog state encodes");
        out
    }

    /// The state from [`CatalogState::to_bytes`], keeping keys as the default
    /// [`Retention`] says.
    pub fn from_bytes(bytes: &[u8]) -> Result<CatalogState, SnapshotError> {
        CatalogState::from_bytes_with(bytes, Retention::default())
    }

    /// The state from a snapshot, keeping keys as `retention` says (the replica's own
    /// setting, not the snapshot's). Every key must name a book of the snapshot.
    ///
    /// A snapshot without [`SNAPSHOT_MAGIC`] was written before keys had times and
    /// fingerprints: its successful updates' keys are kept, compared by item alone and
    /// counted from the first time the log shows; its sold-out answers are dropped (they
    /// name no item, and are not needed for safety).
    pub fn from_bytes_with(
        bytes: &[u8],
        retention: Retention,
    ) -> Result<CatalogState, SnapshotError> {
        let snap = match bytes.strip_prefix(SNAPSHOT_MAGIC) {
            Some(rest) => decode::<Snapshot>(rest)?,
            None => decode::<LegacySnapshot>(bytes)?.upgrade(),
        };
        let mut s = CatalogState::new(snap.books, snap.version);
        let known = |item: ItemNumber| s.shelf.position.contains_key(&item);
        let unknown = snap
            .done
            .keys
            .iter()
            .map(|(_, _, d)| d.fp.item_number)
            .chain(
                snap.refused
                    .keys
                    .iter()
                    .map(|(_, _, (fp, _))| fp.item_number),
            )
            .find(|i| !known(*i));
        if let Some(item) = unknown {
            return Err(SnapshotError::UnknownItem(item));
        }
        s.done = KeyTable::from_saved(snap.done, retention);
        s.refused = KeyTable::from_saved(snap.refused, refused_retention());
        Ok(s)
    }
}

/// A snapshot [`CatalogState::from_bytes_with`] refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Undecodable(#[from] bincode::Error),
    #[error("snapshot: a key names item {0}, not in its books")]
    UnknownItem(ItemNumber),
}

/// The table of answers that changed nothing: the newest [`MAX_REFUSED_RECORDS`], for
/// the same window.
fn refused_retention() -> Retention {
    Retention {
        max_keys: MAX_REFUSED_RECORDS,
        ..Retention::default()
    }
}

/// A snapshot in the current format (after [`SNAPSHOT_MAGIC`]).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    books: Vec<Book>,
    version: u64,
    done: SavedKeys<Done>,
    refused: SavedKeys<(Fingerprint, UpdateError)>,
}

/// What [`CatalogState::to_bytes`] encodes: a [`Snapshot`] whose keys are borrowed (the
/// same bytes, without a copy of every key).
#[derive(Serialize)]
struct SnapshotRef<'a> {
    books: Vec<Book>,
    version: u64,
    done: SavedKeysRef<'a, Done>,
    refused: SavedKeysRef<'a, (Fingerprint, UpdateError)>,
}

/// A snapshot written before keys had times and fingerprints.
#[derive(Deserialize)]
struct LegacySnapshot {
    books: Vec<Book>,
    version: u64,
    applied: Vec<(String, UpdateOutcome)>,
    #[allow(dead_code)]
    max_applied: usize,
}

impl LegacySnapshot {
    fn upgrade(self) -> Snapshot {
        let keys = self
            .applied
            .into_iter()
            .filter_map(|(k, o)| {
                let (book, version) = o.ok()?;
                let done = Done {
                    fp: Fingerprint {
                        item_number: book.item_number,
                        change: None,
                    },
                    stock: book.stock,
                    cost: book.cost,
                    version,
                };
                Some((k, 0, done))
            })
            .collect();
        Snapshot {
            books: self.books,
            version: self.version,
            done: SavedKeys { clock_ms: 0, keys },
            refused: SavedKeys {
                clock_ms: 0,
                keys: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(n: u32, topic: &str, stock: u32) -> Book {
        Book {
            item_number: ItemNumber::of(n),
            title: format!("t{n}"),
            topic: topic.into(),
            stock,
            cost: 10,
        }
    }

    fn sell(n: u32, id: Option<&str>) -> Update {
        Update {
            item_number: ItemNumber::of(n),
            stock_delta: -1,
            cost: None,
            request_id: id.map(|k| k.parse().unwrap()),
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
            c.written_at(ItemNumber::of(1)),
            102,
            "a sold-out answer changes nothing"
        );
        assert_eq!(
            CatalogState::from_bytes(&c.to_bytes())
                .unwrap()
                .written_at(ItemNumber::of(1)),
            103,
            "a snapshot counts every book as written at its version"
        );
        assert_eq!(
            c.update(&sell(9, None), 104),
            Err(UpdateError::UnknownItem(ItemNumber::of(9)))
        );
    }

    #[test]
    fn a_retried_request_is_applied_once() {
        let mut c = CatalogState::new(vec![book(1, "a", 5)], 0);
        let first = c.update(&sell(1, Some("k1")), 1).unwrap();
        assert_eq!(c.update(&sell(1, Some("k1")), 2).unwrap(), first);
        assert_eq!(c.lookup(ItemNumber::of(1)).unwrap().stock, 4);
        // The record survives a snapshot.
        let mut again = CatalogState::from_bytes(&c.to_bytes()).unwrap();
        assert_eq!(again.update(&sell(1, Some("k1")), 3).unwrap(), first);
        assert_eq!(again.lookup(ItemNumber::of(1)).unwrap().stock, 4);
        assert_eq!(again.search("a").len(), 1);
    }

    /// The borrowed snapshot writes exactly the bytes the owned form reads back.
    #[test]
    fn a_snapshot_is_the_owned_format_byte_for_byte() {
        let mut c = CatalogState::new(vec![book(1, "a", 3), book(2, "b", 0)], 0);
        c.update(&sell(1, Some("k1")), 1).unwrap();
        c.update(&sell(2, Some("k2")), 2).unwrap_err();
        let owned = Snapshot {
            books: c.all(),
            version: c.version(),
            done: c.done.to_saved(),
            refused: c.refused.to_saved(),
        };
        assert_eq!((owned.done.keys.len(), owned.refused.keys.len()), (1, 1));
        let mut expected = SNAPSHOT_MAGIC.to_vec();
        bincode::serialize_into(&mut expected, &owned).unwrap();
        assert_eq!(c.to_bytes(), expected);
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
    fn a_full_table_refuses_new_keys_instead_of_forgetting_old_ones() {
        let mut c = CatalogState::new(vec![book(1, "a", 100)], 0);
        c.set_retention(Retention {
            max_keys: 2,
            ..Retention::default()
        });
        const H: u64 = 3_600_000;
        c.update_at(&sell(1, Some("a")), 1, Some(H)).unwrap();
        c.update_at(&sell(1, Some("b")), 2, Some(H)).unwrap();
        let full = c.update_at(&sell(1, Some("c")), 3, Some(2 * H));
        assert_eq!(full, Err(UpdateError::KeysFull));
        assert_eq!(
            c.lookup(ItemNumber::of(1)).unwrap().stock,
            98,
            "a refusal changes nothing"
        );
        assert!(c.settled(&sell(1, Some("a"))).is_some());
        // Without a key, or once the old keys aged out, updates go through.
        c.update_at(&sell(1, None), 4, Some(2 * H)).unwrap();
        c.update_at(&sell(1, Some("c")), 5, Some(25 * H + 1))
            .unwrap();
        assert_eq!(c.settled(&sell(1, Some("a"))), None);
        assert_eq!(c.done.len(), 1);
    }

    #[test]
    fn entries_and_snapshots_of_the_format_before_key_times_still_decode() {
        let u = sell(1, Some("k"));
        assert_eq!(
            decode_entry(&bincode::serialize(&u).unwrap()).unwrap(),
            (u.clone(), None)
        );
        assert_eq!(decode_entry(&encode_entry(&u, 7)).unwrap(), (u, Some(7)));
        #[derive(Serialize)]
        struct Old {
            books: Vec<Book>,
            version: u64,
            applied: Vec<(String, UpdateOutcome)>,
            max_applied: usize,
        }
        let old = Old {
            books: vec![book(1, "a", 4)],
            version: 9,
            applied: vec![
                ("sold".into(), Ok((book(1, "a", 4), 9))),
                ("none".into(), Err(UpdateError::OutOfStock)),
            ],
            max_applied: 100_000,
        };
        let mut c = CatalogState::from_bytes(&bincode::serialize(&old).unwrap()).unwrap();
        assert_eq!(
            c.settled(&sell(1, Some("sold"))),
            Some(Ok((book(1, "a", 4), 9)))
        );
        assert_eq!(c.settled(&sell(1, Some("none"))), None);
        // Kept for a window from the first time the log shows.
        const H: u64 = 3_600_000;
        c.update_at(&sell(1, None), 10, Some(100 * H)).unwrap();
        c.update_at(&sell(1, None), 11, Some(124 * H)).unwrap();
        assert!(c.settled(&sell(1, Some("sold"))).is_some());
        c.update_at(&sell(1, None), 12, Some(124 * H + 1)).unwrap();
        assert_eq!(c.settled(&sell(1, Some("sold"))), None);
        // A key naming a book the snapshot does not hold is refused, not trusted.
        let bad = Old {
            applied: vec![("x".into(), Ok((book(5, "a", 4), 9)))],
            ..old
        };
        let err = CatalogState::from_bytes(&bincode::serialize(&bad).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("item 5"), "{err}");
    }

    #[test]
    fn the_first_books_by_item_number() {
        let c = CatalogState::new(vec![book(3, "x", 1), book(1, "x", 1), book(2, "y", 1)], 0);
        let items = |v: Vec<Book>| v.into_iter().map(|b| b.item_number).collect::<Vec<_>>();
        assert_eq!(items(c.first(2)), vec![1, 2]);
        assert_eq!(items(c.first(5)), vec![1, 2, 3]);
        assert_eq!(items(c.first(0)), Vec::<u32>::new());
    }

    #[test]
    fn topics_are_indexed_and_sorted() {
        let c = CatalogState::new(vec![book(3, "x", 1), book(1, "x", 1), book(2, "y", 1)], 0);
        let hits: Vec<u32> = c.search("x").iter().map(|h| h.item_number.get()).collect();
        assert_eq!(hits, vec![1, 3]);
        assert!(c.search("nope").is_empty());
    }

    #[test]
    fn copies_share_titles_but_not_stock() {
        let a = CatalogState::new(vec![book(1, "x", 5), book(2, "x", 1)], 0);
        let mut b = a.clone();
        assert!(Arc::ptr_eq(&a.shelf, &b.shelf));
        b.update(&sell(1, None), 1).unwrap();
        assert_eq!(a.lookup(ItemNumber::of(1)).unwrap().stock, 5);
        assert_eq!(
            b.lookup(ItemNumber::of(1)).unwrap(),
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
        assert_eq!(c.lookup(ItemNumber::of(1)).unwrap().topic, "y");
        assert!(c.search("x").is_empty());
    }

    #[test]
    fn restock_and_price_change_and_overflow() {
        let mut c = CatalogState::new(vec![book(1, "a", 0)], 0);
        let up = Update {
            item_number: ItemNumber::of(1),
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
        assert_eq!(c.lookup(ItemNumber::of(1)).unwrap().stock, 5);
    }
}
