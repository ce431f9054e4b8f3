//! The catalog's side of cache coherence.
//!
//! After a write is applied (new version `v`) and before it is acknowledged, the catalog
//! primary tells the cache to drop every entry of that item read below `v`. If the cache
//! cannot be reached, the write still must not be followed by a stale read, so the catalog
//! falls back on the lease: the cache serves entries only while it holds a lease (at most
//! `lease` long, counted from before it asked), the catalog stops granting leases, waits
//! until every lease that may have been granted has expired, and acknowledges. Before the
//! cache gets a new lease it must flush everything below the catalog's current version.
//!
//! Leases and invalidations carry the primary's **epoch**. A replica that becomes primary
//! (a new epoch) starts blocked: it grants no lease until the cache has flushed for it,
//! and a write whose invalidation fails waits until a lease's length after the promotion,
//! by which time every lease its predecessors granted has expired (a primary grants only
//! while it holds its own read lease from the view service, so one declared dead stopped
//! granting before its successor was promoted; see `lib.rs`, `cache_lease`). The cache ignores
//! grants from an epoch older than one it has seen, and drops every entry when it sees a
//! newer epoch.
use bookstore_common::batch::Batcher;
use bookstore_common::client::Client;
use bookstore_common::types::{Invalidation, InvalidationBatch, ItemNumber, LeaseReply, MAX_BATCH};
use parking_lot::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Invalidations reach the cache; leases are granted.
    Normal,
    /// An invalidation failed, or this replica just became primary: no lease until the
    /// cache has flushed.
    Blocked,
    /// The cache was told to flush below `floor`; no lease until it says it did.
    Flushing { floor: u64 },
}

#[derive(Debug)]
struct LinkState {
    mode: Mode,
    /// The epoch this link last acted in.
    epoch: u64,
    /// When this replica last granted a lease (in Normal mode).
    last_grant: Option<Instant>,
    /// When the current blocked period began (a failed invalidation or a promotion).
    blocked_since: Option<Instant>,
    /// The session of the cache process that last asked for a lease.
    cache_session: Option<u64>,
}

impl LinkState {
    /// A new epoch: whatever this replica knew about leases is void.
    fn enter(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.mode = Mode::Blocked;
            self.blocked_since = Some(Instant::now());
            self.last_grant = None;
        }
    }
}

/// The link from one catalog replica to the cache (if the cluster has one).
#[derive(Debug)]
pub struct CacheLink {
    lease: Duration,
    state: Mutex<LinkState>,
    /// Concurrent invalidations leave together as one `POST /invalidate_batch` (none
    /// without a cache).
    batcher: Option<Batcher<Invalidation, bool>>,
}

impl CacheLink {
    pub fn new(client: Client, cache_url: Option<String>, lease: Duration) -> CacheLink {
        let batcher = cache_url.map(|base| {
            let url = format!("{base}/invalidate_batch");
            Batcher::new(
                MAX_BATCH,
                bookstore_common::batch::in_flight("invalidations", 2),
                move |items: Vec<Invalidation>| {
                    let n = items.len();
                    let req = client
                        .raw()
                        .post(&url)
                        .timeout(Duration::from_millis(300))
                        .json(&InvalidationBatch { items });
                    let client = client.clone();
                    async move { vec![client.send(req).await.is_ok(); n] }
                },
            )
        });
        CacheLink {
            lease,
            state: Mutex::new(LinkState {
                mode: Mode::Blocked,
                epoch: 0,
                last_grant: None,
                blocked_since: Some(Instant::now()),
                cache_session: None,
            }),
            batcher,
        }
    }

    /// The counts of the invalidation batches (`None` without a cache).
    pub fn batch_stats(&self) -> Option<std::sync::Arc<bookstore_common::batch::BatchStats>> {
        self.batcher.as_ref().map(|b| b.stats())
    }

    /// Makes sure no cache entry of `item` older than `version` can be served once this
    /// returns. `epoch` is the epoch this replica is primary in.
    pub async fn invalidate(&self, item: ItemNumber, version: u64, epoch: u64) {
        let Some(batcher) = &self.batcher else {
            return;
        };
        let attempts = {
            let mut s = self.state.lock();
            s.enter(epoch);
            if s.mode == Mode::Blocked {
                1
            } else {
                2
            }
        };
        let inv = Invalidation {
            item_number: item,
            version,
            epoch: Some(epoch),
        };
        for attempt in 1..=attempts {
            if batcher.call(inv.clone()).await.unwrap_or(false) {
                return;
            }
            if attempt == attempts {
                tracing::debug!(
                    item = item.get(),
                    version,
                    "cache invalidation failed; relying on the cache lease"
                );
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let wait_until = {
            let mut s = self.state.lock();
            if s.mode == Mode::Normal {
                s.blocked_since = Some(Instant::now());
            }
            s.mode = Mode::Blocked;
            let ours = s.last_grant.map(|g| g + self.lease);
            let predecessors = s.blocked_since.map(|b| b + self.lease);
            ours.max(predecessors)
        };
        if let Some(t) = wait_until {
            tokio::time::sleep_until(t.into()).await;
        }
    }

    /// Answers the cache's lease request. `current_version` is read after the mode change,
    /// so every write at or below the floor is covered by the flush. A cache process not
    /// seen before (`session`: a restarted cache) must flush first: it may have been
    /// given fills read before its restart, below invalidations its predecessor
    /// acknowledged.
    pub fn lease(
        &self,
        flushed_to: Option<u64>,
        session: u64,
        epoch: u64,
        current_version: impl FnOnce() -> u64,
    ) -> LeaseReply {
        let mut s = self.state.lock();
        s.enter(epoch);
        if s.cache_session != Some(session) {
            s.cache_session = Some(session);
            s.mode = Mode::Blocked;
        }
        match s.mode {
            Mode::Normal => {}
            Mode::Blocked => {
                let floor = current_version();
                s.mode = Mode::Flushing { floor };
                return LeaseReply::Flush { floor, epoch };
            }
            Mode::Flushing { floor } => {
                if flushed_to.unwrap_or(0) < floor {
                    return LeaseReply::Flush { floor, epoch };
                }
                s.mode = Mode::Normal;
            }
        }
        s.last_grant = Some(Instant::now());
        LeaseReply::Grant {
            millis: self.lease.as_millis() as u64,
            epoch,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(lease_ms: u64) -> CacheLink {
        // Nothing listens on port 9 of 127.0.0.1 in a test sandbox.
        CacheLink::new(
            Client::new("t"),
            Some("http://127.0.0.1:9".into()),
            Duration::from_millis(lease_ms),
        )
    }

    #[tokio::test]
    async fn a_new_primary_makes_the_cache_flush_before_its_first_lease() {
        let link = link(50);
        assert_eq!(
            link.lease(None, 1, 3, || 7),
            LeaseReply::Flush { floor: 7, epoch: 3 }
        );
        assert_eq!(
            link.lease(Some(6), 1, 3, || 8),
            LeaseReply::Flush { floor: 7, epoch: 3 }
        );
        assert_eq!(
            link.lease(Some(7), 1, 3, || 8),
            LeaseReply::Grant {
                millis: 50,
                epoch: 3
            }
        );
        // A later epoch (this replica was deposed and promoted again) starts over.
        assert_eq!(
            link.lease(None, 1, 5, || 9),
            LeaseReply::Flush { floor: 9, epoch: 5 }
        );
    }

    #[tokio::test]
    async fn an_unreachable_cache_is_waited_out_and_must_flush_again() {
        let link = link(50);
        link.lease(None, 1, 1, || 1);
        assert!(matches!(
            link.lease(Some(1), 1, 1, || 1),
            LeaseReply::Grant { .. }
        ));
        let started = Instant::now();
        link.invalidate(ItemNumber::of(1), 5, 1).await;
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "waited out the lease"
        );
        assert_eq!(
            link.lease(None, 1, 1, || 7),
            LeaseReply::Flush { floor: 7, epoch: 1 }
        );
        assert_eq!(
            link.lease(Some(7), 1, 1, || 8),
            LeaseReply::Grant {
                millis: 50,
                epoch: 1
            }
        );
    }

    #[tokio::test]
    async fn after_a_promotion_a_failed_invalidation_waits_out_the_predecessors_leases() {
        let link = link(60);
        let promoted = Instant::now();
        link.invalidate(ItemNumber::of(1), 5, 2).await; // first sight of epoch 2, cache unreachable
        assert!(promoted.elapsed() >= Duration::from_millis(50));
        // Later failures in the same blocked period do not wait again.
        let again = Instant::now();
        link.invalidate(ItemNumber::of(1), 6, 2).await;
        assert!(again.elapsed() < Duration::from_millis(50));
    }

    #[tokio::test]
    async fn a_restarted_cache_must_flush_before_its_first_lease() {
        let link = link(50);
        link.lease(None, 1, 1, || 3);
        assert!(matches!(
            link.lease(Some(3), 1, 1, || 4),
            LeaseReply::Grant { .. }
        ));
        // Renewals by the same process are granted; a new process (session 2) flushes
        // to the current version, even though nothing failed.
        assert!(matches!(
            link.lease(None, 1, 1, || 5),
            LeaseReply::Grant { .. }
        ));
        assert_eq!(
            link.lease(None, 2, 1, || 9),
            LeaseReply::Flush { floor: 9, epoch: 1 }
        );
        assert!(matches!(
            link.lease(Some(9), 2, 1, || 9),
            LeaseReply::Grant { .. }
        ));
    }
}
