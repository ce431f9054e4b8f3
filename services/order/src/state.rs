//! The order service's replicated state machine: every order, and the idempotency key
//! of each buy, kept for the retention window ([`bookstore_common::idempotency`]).
//!
//! A log entry is a [`Record`]: a key and the order its primary made for it. The key's
//! time is the order's time (stamped by the primary), so every replica forgets the same
//! keys at the same entry. A key names one buy: [`OrderSm::record`] returns the order
//! already stored under a known key, and the caller refuses it when it is for another
//! item (`422`).
//!
//! Snapshots start with [`SNAPSHOT_MAGIC`]; a snapshot without it was written before keys
//! had times (the whole state as `bincode` wrote it then) and still restores: each key
//! gets the time of its order.
use bookstore_common::idempotency::{IdempotencyKey, KeyTable, Retention, SavedKeys, SavedKeysRef};
use bookstore_common::types::Order;
use bookstore_replication::node::{DecodeError, StateMachine};
use bookstore_replication::protocol::decode;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};

/// One replicated command: record an order under its idempotency key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub key: IdempotencyKey,
    pub order: Order,
}

/// Leads a snapshot in the current format.
pub const SNAPSHOT_MAGIC: &[u8; 8] = b"BKORDSN2";

/// The replicated orders: every order, and the order of each key still retained.
#[derive(Debug, Default)]
pub struct OrderSm {
    orders: Vec<Order>,
    /// Key -> position in `orders`.
    keys: KeyTable<usize>,
}

/// A snapshot in the current format (after [`SNAPSHOT_MAGIC`]).
#[derive(Serialize, Deserialize)]
struct Snapshot {
    orders: Vec<Order>,
    keys: SavedKeys<usize>,
}

/// What [`OrderSm::snapshot`] encodes: a [`Snapshot`] that borrows the orders and keys.
/// The bytes are the same, without a copy of every order and key on the replica's
/// driver while writes wait.
#[derive(Serialize)]
struct SnapshotRef<'a> {
    orders: &'a [Order],
    keys: SavedKeysRef<'a, usize>,
}

/// A snapshot written before keys had times.
#[derive(Deserialize)]
struct LegacySnapshot {
    orders: Vec<Order>,
    by_key: HashMap<String, usize>,
    keys: VecDeque<String>,
}

impl OrderSm {
    /// An empty state that keeps keys as `retention` says.
    pub fn new(retention: Retention) -> OrderSm {
        OrderSm {
            orders: Vec::new(),
            keys: KeyTable::new(retention),
        }
    }

    /// Records `r` unless its key is known; returns the order stored under the key
    /// (for a known key, the first one, which may be for another item).
    pub fn record(&mut self, r: Record) -> Order {
        self.keys.advance(r.order.time_ms);
        if let Some(i) = self.keys.get(r.key.as_str()) {
            return self.orders[*i].clone();
        }
        self.orders.push(r.order.clone());
        self.keys.insert(r.key.as_str(), self.orders.len() - 1);
        r.order
    }

    /// The order stored under `key`, if the key is still retained.
    pub fn by_key(&self, key: &str) -> Option<&Order> {
        self.keys.get(key).map(|i| &self.orders[*i])
    }

    pub fn orders(&self) -> &[Order] {
        &self.orders
    }

    /// The retained keys (for admission: see [`KeyTable::has_room`]).
    pub fn keys(&self) -> &KeyTable<usize> {
        &self.keys
    }

    /// The state from a snapshot, keeping `retention`; positions are checked.
    fn from_snapshot(data: &[u8], retention: Retention) -> Result<OrderSm, SnapshotError> {
        let (orders, saved) = match data.strip_prefix(SNAPSHOT_MAGIC) {
            Some(rest) => {
                let s: Snapshot = decode(rest)?;
                (s.orders, s.keys)
            }
            None => {
                let s: LegacySnapshot = decode(data)?;
                let mut keys = Vec::with_capacity(s.keys.len());
                for k in s.keys {
                    let i = *s
                        .by_key
                        .get(&k)
                        .ok_or_else(|| SnapshotError::NoOrder { key: k.clone() })?;
                    let at = s.orders.get(i).map_or(0, |o| o.time_ms);
                    keys.push((k, at, i));
                }
                let clock_ms = keys.iter().map(|(_, at, _)| *at).max().unwrap_or(0);
                (s.orders, SavedKeys { clock_ms, keys })
            }
        };
        if let Some((k, _, i)) = saved.keys.iter().find(|(_, _, i)| *i >= orders.len()) {
            return Err(SnapshotError::NoSuchOrder {
                key: k.clone(),
                order: *i,
                orders: orders.len(),
            });
        }
        Ok(OrderSm {
            orders,
            keys: KeyTable::from_saved(saved, retention),
        })
    }
}

/// A snapshot [`OrderSm`] refused to restore.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Undecodable(#[from] bincode::Error),
    #[error("snapshot: key {key:?} has no order")]
    NoOrder { key: String },
    #[error("snapshot: key {key:?} names order {order} of {orders}")]
    NoSuchOrder {
        key: String,
        order: usize,
        orders: usize,
    },
}

impl StateMachine for OrderSm {
    type Command = Record;
    type Output = Order;

    fn encode(record: &Record) -> Vec<u8> {
        bincode::serialize(record).expect("a record encodes")
    }

    fn decode(data: &[u8]) -> Result<Record, DecodeError> {
        Ok(decode::<Record>(data)?)
    }

    fn apply(&mut self, _index: u64, record: Record) -> Order {
        self.record(record)
    }

    fn snapshot(&self) -> Vec<u8> {
        let snap = SnapshotRef {
            orders: &self.orders,
            keys: self.keys.saved(),
        };
        // About what each order and key takes (a uuid-sized id or key, its length and
        // the numbers beside it), so the buffer is not regrown and copied as it fills.
        let guess = 64 * (self.orders.len() + self.keys.len());
        let mut out = Vec::with_capacity(SNAPSHOT_MAGIC.len() + guess);
        out.extend_from_slice(SNAPSHOT_MAGIC);
        bincode::serialize_into(&mut out, &snap).expect("orders encode");
        out
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), DecodeError> {
        *self = OrderSm::from_snapshot(data, self.keys.retention())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bookstore_common::types::ItemNumber;

    fn record(key: &str, item: u32, time_ms: u64) -> Record {
        let item = ItemNumber::new(item).unwrap();
        Record {
            key: key.parse().unwrap(),
            order: Order {
                order_id: format!("o-{key}"),
                item_number: item,
                price: 1,
                time_ms,
            },
        }
    }

    #[test]
    fn a_known_key_returns_its_first_order_even_for_another_item() {
        let mut sm = OrderSm::default();
        let first = sm.record(record("k", 1, 5));
        let again = sm.record(record("k", 2, 6));
        assert_eq!(again, first);
        assert_eq!(sm.orders().len(), 1);
    }

    #[test]
    fn snapshots_round_trip_and_keep_the_replicas_retention() {
        let r = Retention {
            window: std::time::Duration::from_secs(60),
            max_keys: 7,
        };
        let mut sm = OrderSm::new(r);
        sm.record(record("a", 1, 1_000));
        sm.record(record("b", 2, 2_000));
        let mut back = OrderSm::default();
        back.restore(&sm.snapshot()).unwrap();
        assert_eq!(back.snapshot(), sm.snapshot());
        assert_eq!(back.keys().retention(), Retention::default());
        assert_eq!(back.by_key("b").unwrap().item_number.get(), 2);
    }

    /// The borrowed form writes exactly the bytes the owned form reads back.
    #[test]
    fn a_snapshot_is_the_owned_format_byte_for_byte() {
        let mut sm = OrderSm::default();
        for i in 0..50 {
            sm.record(record(&format!("k{i}"), 1 + i % 7, 1_000 + u64::from(i)));
        }
        let owned = Snapshot {
            orders: sm.orders().to_vec(),
            keys: sm.keys().to_saved(),
        };
        let mut expected = SNAPSHOT_MAGIC.to_vec();
        bincode::serialize_into(&mut expected, &owned).unwrap();
        assert_eq!(sm.snapshot(), expected);
    }

    /// A snapshot as the format before key times wrote it still restores, with each
    /// key at its order's time.
    #[test]
    fn a_legacy_snapshot_restores_with_the_orders_times() {
        #[derive(Serialize)]
        struct Old {
            orders: Vec<Order>,
            by_key: HashMap<String, usize>,
            keys: VecDeque<String>,
        }
        let orders = vec![record("a", 1, 1_000).order, record("b", 2, 2_000).order];
        let old = Old {
            orders,
            by_key: [("a".to_string(), 0), ("b".to_string(), 1)].into(),
            keys: ["a".to_string(), "b".to_string()].into(),
        };
        let mut sm = OrderSm::default();
        sm.restore(&bincode::serialize(&old).unwrap()).unwrap();
        let keys: Vec<(&str, u64)> = sm.keys().iter().map(|(k, at, _)| (k, at)).collect();
        assert_eq!(keys, vec![("a", 1_000), ("b", 2_000)]);
        assert_eq!(sm.keys().clock_ms(), 2_000);
        // A position past the orders is refused, not trusted.
        let bad = Old {
            by_key: [("a".to_string(), 5)].into(),
            keys: ["a".to_string()].into(),
            ..old
        };
        let err = sm.restore(&bincode::serialize(&bad).unwrap()).unwrap_err();
        assert!(err.to_string().contains("names order 5"), "{err}");
    }
}
