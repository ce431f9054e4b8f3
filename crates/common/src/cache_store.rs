//! Cache entries and the version rules that keep stale answers out (pure): the cache
//! service's store, and each frontend's near cache (the same rules, fed the same
//! invalidations).
//!
//! Every entry carries the catalog version it was read at. `invalidate(item, v)` drops
//! entries of `item` read below `v` and remembers `v` as the item's watermark, so a slow
//! fill read before the write can never put the old value back. `flush(floor)` drops
//! everything and refuses fills read below `floor`.
//!
//! A store holds at most `limit` answers: a new one beyond that evicts an arbitrary
//! other (dropping an answer is always safe; the watermarks, which are not, are kept).
use crate::types::ItemNumber;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};

#[derive(Debug, Clone)]
struct Entry {
    version: u64,
    items: Vec<ItemNumber>,
    body: Bytes,
}

/// How many answers a store holds unless told otherwise.
pub const DEFAULT_LIMIT: usize = 100_000;

/// Cache entries for lookups (by item) and searches (by topic).
#[derive(Debug)]
pub struct Store {
    lookups: HashMap<ItemNumber, Entry>,
    searches: HashMap<String, Entry>,
    searches_by_item: HashMap<ItemNumber, HashSet<String>>,
    watermark: HashMap<ItemNumber, u64>,
    floor: u64,
    /// The newest catalog epoch seen (from a lease or an invalidation).
    epoch: u64,
    /// The most answers held.
    limit: usize,
}

impl Default for Store {
    fn default() -> Store {
        Store::with_limit(DEFAULT_LIMIT)
    }
}

impl Store {
    /// A store of at most `limit` answers (0: it stores nothing).
    pub fn with_limit(limit: usize) -> Store {
        Store {
            lookups: HashMap::new(),
            searches: HashMap::new(),
            searches_by_item: HashMap::new(),
            watermark: HashMap::new(),
            floor: 0,
            epoch: 0,
            limit,
        }
    }

    /// Makes room for one more answer; false if the store holds none.
    fn make_room(&mut self) -> bool {
        if self.limit == 0 {
            return false;
        }
        while self.len() >= self.limit {
            if let Some(item) = self.lookups.keys().next().copied() {
                self.lookups.remove(&item);
            } else if let Some(topic) = self.searches.keys().next().cloned() {
                self.remove_search(&topic);
            } else {
                break;
            }
        }
        true
    }

    pub fn lookup(&self, item: ItemNumber) -> Option<Bytes> {
        self.lookups.get(&item).map(|e| e.body.clone())
    }

    pub fn search(&self, topic: &str) -> Option<Bytes> {
        self.searches.get(topic).map(|e| e.body.clone())
    }

    /// A lookup answer and the catalog version it was read at.
    pub fn lookup_versioned(&self, item: ItemNumber) -> Option<(Bytes, u64)> {
        self.lookups.get(&item).map(|e| (e.body.clone(), e.version))
    }

    /// A search answer and the catalog version it was read at.
    pub fn search_versioned(&self, topic: &str) -> Option<(Bytes, u64)> {
        self.searches
            .get(topic)
            .map(|e| (e.body.clone(), e.version))
    }

    fn fresh(&self, version: u64, items: &[ItemNumber]) -> bool {
        version >= self.floor
            && items
                .iter()
                .all(|i| self.watermark.get(i).is_none_or(|w| version >= *w))
    }

    /// Stores a lookup answer read at `version`; false if it is already stale.
    pub fn put_lookup(&mut self, item: ItemNumber, version: u64, body: Bytes) -> bool {
        if !self.fresh(version, &[item]) {
            return false;
        }
        if self.lookups.get(&item).is_some_and(|e| e.version > version) {
            return false;
        }
        if !self.lookups.contains_key(&item) && !self.make_room() {
            return false;
        }
        self.lookups.insert(
            item,
            Entry {
                version,
                items: vec![item],
                body,
            },
        );
        true
    }

    /// Stores a search answer that depends on `items`, read at `version`.
    pub fn put_search(
        &mut self,
        topic: &str,
        version: u64,
        items: Vec<ItemNumber>,
        body: Bytes,
    ) -> bool {
        if !self.fresh(version, &items) {
            return false;
        }
        if self
            .searches
            .get(topic)
            .is_some_and(|e| e.version > version)
        {
            return false;
        }
        if !self.searches.contains_key(topic) && !self.make_room() {
            return false;
        }
        for i in &items {
            self.searches_by_item
                .entry(*i)
                .or_default()
                .insert(topic.to_string());
        }
        self.searches.insert(
            topic.to_string(),
            Entry {
                version,
                items,
                body,
            },
        );
        true
    }

    /// Drops every entry of `item` read below `version`.
    pub fn invalidate(&mut self, item: ItemNumber, version: u64) {
        let w = self.watermark.entry(item).or_insert(0);
        *w = (*w).max(version);
        if self.lookups.get(&item).is_some_and(|e| e.version < version) {
            self.lookups.remove(&item);
        }
        if let Some(topics) = self.searches_by_item.get(&item).cloned() {
            for t in topics {
                if self.searches.get(&t).is_some_and(|e| e.version < version) {
                    self.remove_search(&t);
                }
            }
        }
    }

    fn remove_search(&mut self, topic: &str) {
        if let Some(e) = self.searches.remove(topic) {
            for i in e.items {
                if let Some(set) = self.searches_by_item.get_mut(&i) {
                    set.remove(topic);
                    if set.is_empty() {
                        self.searches_by_item.remove(&i);
                    }
                }
            }
        }
    }

    /// Notes a catalog epoch. A newer one drops every entry (the new primary may hold
    /// writes the old one never invalidated); returns false for an older one.
    pub fn observe_epoch(&mut self, epoch: u64) -> bool {
        if epoch > self.epoch {
            self.epoch = epoch;
            self.lookups.clear();
            self.searches.clear();
            self.searches_by_item.clear();
        }
        epoch >= self.epoch
    }

    /// Drops everything and refuses fills read below `floor`.
    pub fn flush(&mut self, floor: u64) {
        self.lookups.clear();
        self.searches.clear();
        self.searches_by_item.clear();
        self.floor = self.floor.max(floor);
    }

    pub fn len(&self) -> usize {
        self.lookups.len() + self.searches.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it(n: u32) -> ItemNumber {
        ItemNumber::new(n).unwrap()
    }

    fn b(s: &str) -> Bytes {
        Bytes::from(s.to_string())
    }

    #[test]
    fn a_slow_fill_never_puts_an_old_value_back() {
        let mut s = Store::default();
        assert!(s.put_lookup(it(1), 10, b("v10")));
        s.invalidate(it(1), 11);
        assert!(s.lookup(it(1)).is_none());
        assert!(
            !s.put_lookup(it(1), 10, b("v10 again")),
            "read before the write"
        );
        assert!(s.put_lookup(it(1), 11, b("v11")));
        assert!(
            !s.put_lookup(it(1), 10, b("older")),
            "never replaced by an older read"
        );
        assert_eq!(s.lookup(it(1)).unwrap(), b("v11"));
    }

    #[test]
    fn searches_containing_a_changed_item_are_dropped() {
        let mut s = Store::default();
        assert!(s.put_search("t", 5, vec![it(1), it(2)], b("s")));
        assert!(s.put_search("u", 5, vec![it(3)], b("u")));
        s.invalidate(it(2), 6);
        assert!(s.search("t").is_none());
        assert!(s.search("u").is_some());
        assert!(!s.put_search("t", 5, vec![it(1), it(2)], b("s")));
        assert!(s.put_search("t", 6, vec![it(1), it(2)], b("s6")));
    }

    #[test]
    fn a_newer_epoch_drops_everything_and_an_older_one_is_refused() {
        let mut s = Store::default();
        assert!(s.observe_epoch(2));
        s.put_lookup(it(1), 5, b("x"));
        assert!(s.observe_epoch(2));
        assert!(!s.is_empty());
        assert!(s.observe_epoch(3));
        assert!(s.is_empty());
        assert!(!s.observe_epoch(2));
    }

    #[test]
    fn a_full_store_evicts_and_keeps_its_watermarks() {
        let mut s = Store::with_limit(3);
        for i in 1..=5 {
            assert!(s.put_lookup(it(i), 10, b("x")));
            assert!(s.len() <= 3);
        }
        assert!(s.put_search("t", 10, vec![it(1), it(2)], b("s")));
        assert_eq!(s.len(), 3);
        assert!(s.search("t").is_some(), "the newest answer is kept");
        s.invalidate(it(9), 12);
        assert!(
            !s.put_lookup(it(9), 11, b("old")),
            "the watermark survives eviction"
        );
        // Replacing an answer makes no room.
        assert!(s.put_search("t", 11, vec![it(1), it(2)], b("s11")));
        assert_eq!(s.len(), 3);
        let mut none = Store::with_limit(0);
        assert!(!none.put_lookup(it(1), 1, b("x")));
        assert!(!none.put_search("t", 1, vec![it(1)], b("x")));
        assert!(none.is_empty());
    }

    #[test]
    fn flush_drops_everything_below_the_floor() {
        let mut s = Store::default();
        s.put_lookup(it(1), 5, b("x"));
        s.flush(9);
        assert!(s.is_empty());
        assert!(!s.put_lookup(it(1), 8, b("x")));
        assert!(s.put_lookup(it(1), 9, b("x")));
    }
}
