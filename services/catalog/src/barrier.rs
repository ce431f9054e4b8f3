//! Read barrier: no answer of the primary shows a write whose cache invalidation has not
//! finished.
//!
//! A write is applied (and so visible to reads here) before its invalidation reaches the
//! cache and the frontends' near caches; while the cache is unreachable that takes up to
//! a lease. A lookup answered from the new state in that window, or a sold-out answer
//! decided by it, would let a client see the new stock and then, from a cache, the old
//! one: not linearizable (the chaos checker found both: with the cache killed while a
//! buy's invalidation waited, and with a write that committed after its caller had given
//! up, so nobody invalidated it until the retry came).
//!
//! The state knows, per book, the version of the last write that changed it
//! (`CatalogState::written_at`); this barrier knows, per book, up to which version an
//! invalidation has finished in this process. An answer about a book written at `w`
//! waits until the book is invalidated up to `w` (an update in flight does that before it
//! answers); if that takes longer than a short patience (the write's caller is gone, or
//! this process restarted), the reader invalidates it itself.
use bookstore_common::types::ItemNumber;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::Notify;

/// Per book, the version up to which its invalidation has finished.
#[derive(Debug, Default)]
pub struct Barrier {
    done: Mutex<HashMap<ItemNumber, u64>>,
    changed: Notify,
}

impl Barrier {
    /// `item`'s entries read below `version` can no longer be served by any cache.
    pub fn invalidated(&self, item: ItemNumber, version: u64) {
        {
            let mut done = self.done.lock();
            let d = done.entry(item).or_insert(0);
            *d = (*d).max(version);
        }
        self.changed.notify_waiters();
    }

    /// Whether an answer showing `item` as written at `written` may go out.
    pub fn covers(&self, item: ItemNumber, written: u64) -> bool {
        written == 0 || self.done.lock().get(&item).is_some_and(|d| *d >= written)
    }

    /// Waits up to `patience` for `item` to be invalidated up to `written`; false if it
    /// was not (the caller must invalidate it itself).
    pub async fn wait(&self, item: ItemNumber, written: u64, patience: Duration) -> bool {
        let waiting = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.covers(item, written) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(patience, waiting).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const SHORT: Duration = Duration::from_millis(30);

    #[tokio::test]
    async fn an_answer_waits_for_the_invalidation_of_what_it_shows() {
        let b = Arc::new(Barrier::default());
        assert!(
            b.covers(ItemNumber::of(1), 0),
            "never written since the initial load"
        );
        assert!(
            !b.wait(ItemNumber::of(1), 5, SHORT).await,
            "written at 5, not invalidated"
        );
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.wait(ItemNumber::of(1), 5, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        b.invalidated(ItemNumber::of(2), 9);
        b.invalidated(ItemNumber::of(1), 4);
        assert!(
            !waiter.is_finished(),
            "other books and older versions do not count"
        );
        b.invalidated(ItemNumber::of(1), 7);
        assert!(
            waiter.await.unwrap(),
            "a later invalidation covers earlier writes"
        );
        assert!(b.covers(ItemNumber::of(1), 7) && !b.covers(ItemNumber::of(1), 8));
    }
}
