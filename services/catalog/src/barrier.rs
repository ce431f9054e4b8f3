//! Read barrier: no answer of the primary shows a write whose cache invalidation has not
//! finished.
//!
//! A write is applied (and so visible to reads here) before its invalidation reaches the
//! cache and the frontends' near caches; while the cache is unreachable that takes up to
//! a lease. A lookup answered from the new state in that window, or a sold-out answer
//! decided by it, would let a client see the new stock and then, from a cache, the old
//! one: not linearizable (the chaos checker found this with the cache killed while a
//! buy's invalidation waited). So each update registers before it is submitted, learns
//! its version once applied, and leaves once invalidated; an answer that read the state at
//! version `v` waits until no registered update of the same item has a version `<= v` (or
//! an unknown one it may still get). Later updates never hold a read up: they get
//! versions above `v`.
use bookstore_common::types::ItemNumber;
use parking_lot::Mutex;
use std::collections::HashMap;
use tokio::sync::Notify;

#[derive(Debug, Default)]
struct Registered {
    next: u64,
    /// Update id -> (item, version once applied).
    updates: HashMap<u64, (ItemNumber, Option<u64>)>,
}

/// Updates between "submitted" and "invalidated".
#[derive(Debug, Default)]
pub struct Barrier {
    state: Mutex<Registered>,
    changed: Notify,
}

/// An update's registration; leaves the barrier when dropped.
#[derive(Debug)]
pub struct Entry<'a> {
    barrier: &'a Barrier,
    id: u64,
}

impl Entry<'_> {
    /// The update was applied at `version`.
    pub fn applied(&self, version: u64) {
        if let Some(u) = self.barrier.state.lock().updates.get_mut(&self.id) {
            u.1 = Some(version);
        }
        self.barrier.changed.notify_waiters();
    }
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        self.barrier.state.lock().updates.remove(&self.id);
        self.barrier.changed.notify_waiters();
    }
}

impl Barrier {
    /// Registers an update of `item` (before it is submitted).
    pub fn enter(&self, item: ItemNumber) -> Entry<'_> {
        let mut s = self.state.lock();
        let id = s.next;
        s.next += 1;
        s.updates.insert(id, (item, None));
        Entry { barrier: self, id }
    }

    /// Whether an answer about `item` read at `version` must wait for `ids`.
    fn blocked(&self, item: ItemNumber, version: u64, ids: &[u64]) -> bool {
        let s = self.state.lock();
        ids.iter().any(|id| match s.updates.get(id) {
            Some((i, v)) => *i == item && v.is_none_or(|v| v <= version),
            None => false,
        })
    }

    /// Waits until every update of `item` that may be part of the state at `version` has
    /// been invalidated. Call after reading the state.
    pub async fn settle(&self, item: ItemNumber, version: u64) {
        let ids: Vec<u64> = {
            let s = self.state.lock();
            s.updates
                .iter()
                .filter(|(_, (i, _))| *i == item)
                .map(|(id, _)| *id)
                .collect()
        };
        if ids.is_empty() {
            return;
        }
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.blocked(item, version, &ids) {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    async fn settles(b: &Arc<Barrier>, item: ItemNumber, version: u64) -> bool {
        tokio::time::timeout(Duration::from_millis(50), b.settle(item, version))
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_read_waits_for_updates_it_may_show_and_no_others() {
        let b = Arc::new(Barrier::default());
        let e = b.enter(1);
        assert!(!settles(&b, 1, 10).await, "version not known yet");
        assert!(settles(&b, 2, 10).await, "another item");
        e.applied(11);
        assert!(
            settles(&b, 1, 10).await,
            "the read is older than the update"
        );
        assert!(!settles(&b, 1, 11).await, "the read shows the update");
        drop(e);
        assert!(settles(&b, 1, 11).await, "invalidated");
    }

    #[tokio::test]
    async fn later_updates_do_not_hold_a_read_up() {
        let b = Arc::new(Barrier::default());
        let first = b.enter(1);
        first.applied(5);
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.settle(1, 5).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let later = b.enter(1); // registered after the read: not waited for
        drop(first);
        tokio::time::timeout(Duration::from_millis(500), waiter)
            .await
            .expect("the read settled")
            .unwrap();
        drop(later);
    }
}
