//! The table behind `Idempotency-Key` in the replicated state machines (order records,
//! catalog updates): each key, when it was first used and what it answered, kept for a
//! retention window measured by age, under a stated bound on the number of keys.
//!
//! Time is what the replicated log says, never the clock of the replica applying an
//! entry: each entry carries the time its primary stamped on it, and the table's clock is
//! the latest such time ([`KeyTable::advance`]). So every replica forgets the same keys
//! at the same log position, and a retry finds the same answer whichever replica is
//! primary. Keys are forgotten only by age; a full table refuses new keys
//! ([`KeyTable::has_room`]) instead of forgetting young ones, so a key is never pushed
//! out by later requests.
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

/// An `Idempotency-Key`: 1 to 128 visible ASCII characters. Made where a key enters (a
/// header, a batch body: [`IdempotencyKey::parse`], `str::parse`) or by a frontend for a
/// client that sent none ([`IdempotencyKey::generate`]); the same text on the wire, in
/// the log and in snapshots (which are trusted as written, so decoding them does not
/// check again).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

/// Why a text is no [`IdempotencyKey`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("must be 1 to 128 visible ASCII characters")]
pub struct BadKey;

impl IdempotencyKey {
    /// The key whose text is `raw`.
    pub fn parse(raw: &[u8]) -> Result<IdempotencyKey, BadKey> {
        let ok = !raw.is_empty() && raw.len() <= 128 && raw.iter().all(|b| b.is_ascii_graphic());
        if !ok {
            return Err(BadKey);
        }
        Ok(IdempotencyKey(String::from_utf8_lossy(raw).into_owned()))
    }

    /// A new random key (32 hex digits).
    pub fn generate() -> IdempotencyKey {
        IdempotencyKey(uuid::Uuid::new_v4().simple().to_string())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for IdempotencyKey {
    type Err = BadKey;
    fn from_str(s: &str) -> Result<Self, BadKey> {
        IdempotencyKey::parse(s.as_bytes())
    }
}

impl std::fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Default retention window: 24 hours.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);

/// Default bound on the keys one table holds.
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// How long keys are kept and how many at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// A key is forgotten once the log's clock is more than this past its first use.
    pub window: Duration,
    /// The most keys held at once; past it new keys are refused (see [`KeyTable::has_room`]).
    pub max_keys: usize,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            window: DEFAULT_RETENTION,
            max_keys: DEFAULT_MAX_KEYS,
        }
    }
}

impl Retention {
    fn window_ms(&self) -> u64 {
        u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Keys in order of first use, each with its time (ms since the Unix epoch) and value.
#[derive(Debug, Clone)]
pub struct KeyTable<V> {
    retention: Retention,
    /// The latest time the log has shown; 0 until it shows one.
    clock_ms: u64,
    /// Key -> its sequence number: its entry is `fifo[seq - front_seq]`.
    map: HashMap<Arc<str>, u64>,
    /// Every key, oldest first, with its time and value; times never decrease along it.
    /// (Values live here, not in `map`, so a snapshot walks the keys in order without a
    /// lookup each.)
    fifo: VecDeque<(u64, Arc<str>, V)>,
    /// The sequence number of `fifo`'s front.
    front_seq: u64,
}

impl<V> Default for KeyTable<V> {
    fn default() -> Self {
        KeyTable::new(Retention::default())
    }
}

impl<V> KeyTable<V> {
    pub fn new(retention: Retention) -> KeyTable<V> {
        KeyTable {
            retention,
            clock_ms: 0,
            map: HashMap::new(),
            fifo: VecDeque::new(),
            front_seq: 0,
        }
    }

    pub fn retention(&self) -> Retention {
        self.retention
    }

    /// Changes the retention (a state restored from a snapshot keeps the replica's own).
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = retention;
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        let seq = *self.map.get(key)?;
        self.fifo.get((seq - self.front_seq) as usize).map(|e| &e.2)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The latest time the log has shown (0: none yet).
    pub fn clock_ms(&self) -> u64 {
        self.clock_ms
    }

    /// Moves the clock to `now_ms` if that is later, and forgets the keys first used
    /// more than the retention window before it. Keys recorded before the table saw any
    /// time (entries and snapshots written before keys carried one) count as first used
    /// at the first time it sees.
    pub fn advance(&mut self, now_ms: u64) {
        if now_ms <= self.clock_ms {
            return;
        }
        if self.clock_ms == 0 {
            for entry in self.fifo.iter_mut() {
                entry.0 = now_ms;
            }
        }
        self.clock_ms = now_ms;
        let horizon = now_ms.saturating_sub(self.retention.window_ms());
        while self.fifo.front().is_some_and(|(at, _, _)| *at < horizon) {
            self.forget_oldest();
        }
    }

    /// How many keys would still be held at `now_ms` (by a primary's own clock, before
    /// it asks the log for a new key).
    pub fn live_at(&self, now_ms: u64) -> usize {
        let horizon = now_ms.saturating_sub(self.retention.window_ms());
        let expired = self
            .fifo
            .partition_point(|(at, _, _)| *at != 0 && *at < horizon);
        self.fifo.len() - expired
    }

    /// Whether a new key fits at `now_ms` beside `reserved` others on their way.
    pub fn has_room(&self, now_ms: u64, reserved: usize) -> bool {
        self.live_at(now_ms).saturating_add(reserved) < self.retention.max_keys
    }

    /// Whether a new key fits now, by the log's clock (what `apply` may check).
    pub fn is_full(&self) -> bool {
        self.len() >= self.retention.max_keys
    }

    /// Records `key` as first used now (the log's clock); a key already held keeps its
    /// first value. Does not check [`KeyTable::is_full`]: callers refuse first.
    pub fn insert(&mut self, key: &str, value: V) {
        if self.map.contains_key(key) {
            return;
        }
        let key: Arc<str> = Arc::from(key);
        let seq = self.front_seq + self.fifo.len() as u64;
        self.fifo.push_back((self.clock_ms, key.clone(), value));
        self.map.insert(key, seq);
    }

    /// Forgets the oldest key, if any.
    fn forget_oldest(&mut self) -> bool {
        let Some((_, key, _)) = self.fifo.pop_front() else {
            return false;
        };
        self.map.remove(&key);
        self.front_seq += 1;
        true
    }

    /// [`KeyTable::insert`], forgetting the oldest key first if the table is full: for
    /// answers that changed nothing, which are not needed for safety.
    pub fn insert_evicting(&mut self, key: &str, value: V) {
        if self.map.contains_key(key) {
            return;
        }
        while self.is_full() && self.forget_oldest() {}
        self.insert(key, value);
    }

    /// Every key, oldest first: `(key, first used at, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, &V)> {
        self.fifo.iter().map(|(at, k, v)| (&**k, *at, v))
    }

    /// The table as a snapshot stores it.
    pub fn to_saved(&self) -> SavedKeys<V>
    where
        V: Clone,
    {
        SavedKeys {
            clock_ms: self.clock_ms,
            keys: self
                .iter()
                .map(|(k, at, v)| (k.to_string(), at, v.clone()))
                .collect(),
        }
    }

    /// The table as [`SavedKeys`] encodes it, borrowed: it serializes to what
    /// [`KeyTable::to_saved`]'s value does, without copying a key (a snapshot of a
    /// replica holding a million keys is written while its writes wait).
    pub fn saved(&self) -> SavedKeysRef<'_, V> {
        SavedKeysRef(self)
    }

    /// A table from [`KeyTable::to_saved`], with this replica's `retention`. Times are
    /// made non-decreasing (a damaged snapshot cannot break the order eviction relies
    /// on), and a key listed twice keeps its first entry.
    pub fn from_saved(saved: SavedKeys<V>, retention: Retention) -> KeyTable<V> {
        let mut t = KeyTable::new(retention);
        let mut last = 0;
        for (k, at, v) in saved.keys {
            last = last.max(at);
            t.clock_ms = last;
            t.insert(&k, v);
        }
        t.clock_ms = saved.clock_ms.max(last);
        t
    }
}

/// A [`KeyTable`] in a snapshot: its clock and its keys, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedKeys<V> {
    pub clock_ms: u64,
    pub keys: Vec<(String, u64, V)>,
}

/// [`KeyTable::saved`]: a table that serializes as its [`SavedKeys`].
pub struct SavedKeysRef<'a, V>(&'a KeyTable<V>);

impl<V: Serialize> Serialize for SavedKeysRef<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("SavedKeys", 2)?;
        st.serialize_field("clock_ms", &self.0.clock_ms)?;
        st.serialize_field("keys", &KeysRef(self.0))?;
        st.end()
    }
}

/// The keys of a table, oldest first, as `SavedKeys::keys` serializes them.
struct KeysRef<'a, V>(&'a KeyTable<V>);

impl<V: Serialize> Serialize for KeysRef<'_, V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        // Formats such as bincode write the length first.
        let mut seq = s.serialize_seq(Some(self.0.fifo.len()))?;
        for key in self.0.iter() {
            seq.serialize_element(&key)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    fn table(max_keys: usize) -> KeyTable<u32> {
        KeyTable::new(Retention {
            window: Duration::from_secs(24 * 3600),
            max_keys,
        })
    }

    #[test]
    fn keys_are_forgotten_by_age_only() {
        let mut t = table(10);
        t.advance(H);
        t.insert("a", 1);
        t.advance(2 * H);
        t.insert("b", 2);
        t.insert("a", 9);
        assert_eq!(t.get("a"), Some(&1), "a key keeps its first value");
        t.advance(25 * H);
        assert_eq!(t.get("a"), Some(&1), "24 h old exactly: kept");
        t.advance(25 * H + 1);
        assert_eq!((t.get("a"), t.get("b")), (None, Some(&2)));
        // A clock going back (another primary's) changes nothing.
        t.advance(H);
        assert_eq!(t.clock_ms(), 25 * H + 1);
    }

    #[test]
    fn room_counts_what_is_still_live_and_what_is_reserved() {
        let mut t = table(2);
        t.advance(H);
        t.insert("a", 1);
        assert!(t.has_room(H, 0));
        assert!(!t.has_room(H, 1));
        t.insert("b", 2);
        assert!(t.is_full() && !t.has_room(H, 0));
        assert!(t.has_room(25 * H + 1, 0), "both will have expired by then");
    }

    #[test]
    fn keys_without_time_count_from_the_first_time_seen() {
        let mut t = table(10);
        t.insert("legacy", 1);
        t.advance(100 * H);
        t.advance(123 * H);
        assert_eq!(t.get("legacy"), Some(&1));
        t.advance(124 * H + 1);
        assert_eq!(t.get("legacy"), None);
    }

    #[test]
    fn evicting_inserts_drop_the_oldest() {
        let mut t = table(2);
        for (i, k) in ["a", "b", "c"].into_iter().enumerate() {
            t.insert_evicting(k, i as u32);
        }
        assert_eq!((t.get("a"), t.len()), (None, 2));
    }

    #[test]
    fn saved_tables_round_trip_and_stay_ordered() {
        let mut t = table(10);
        t.advance(5 * H);
        t.insert("a", 1);
        t.advance(6 * H);
        t.insert("b", 2);
        let back = KeyTable::from_saved(t.to_saved(), t.retention());
        assert_eq!(back.to_saved(), t.to_saved());
        // The borrowed form serializes as the owned one.
        assert_eq!(
            serde_json::to_string(&t.saved()).unwrap(),
            serde_json::to_string(&t.to_saved()).unwrap()
        );
        // Out of order times (a damaged snapshot) are made non-decreasing.
        let saved = SavedKeys {
            clock_ms: 0,
            keys: vec![
                ("x".into(), 9 * H, 1),
                ("y".into(), H, 2),
                ("x".into(), H, 3),
            ],
        };
        let t = KeyTable::from_saved(saved, Retention::default());
        let keys: Vec<(&str, u64, &u32)> = t.iter().collect();
        assert_eq!(keys, vec![("x", 9 * H, &1), ("y", 9 * H, &2)]);
        assert_eq!(t.clock_ms(), 9 * H);
    }
}
