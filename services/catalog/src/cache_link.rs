//! The catalog's side of cache coherence.
//!
//! After a write is applied (new version `v`) and before it is acknowledged, the catalog
//! tells the cache to drop every entry of that item read below `v`. If the cache cannot
//! be reached, the write still must not be followed by a stale read, so the catalog falls
//! back on the lease: the cache serves entries only while it holds a lease (at most
//! `lease` long, counted from before it asked), the catalog stops granting leases, waits
//! until every lease it granted has expired, and acknowledges. Before the cache gets a
//! new lease it must flush everything below the catalog's current version.
use bookstore_common::client::Client;
use bookstore_common::types::{ItemNumber, LeaseReply};
use parking_lot::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Invalidations reach the cache; leases are granted.
    Normal,
    /// An invalidation failed: no lease until the cache has flushed.
    Blocked,
    /// The cache was told to flush below `floor`; invalidations are sent again.
    Flushing { floor: u64 },
}

#[derive(Debug)]
struct LinkState {
    mode: Mode,
    last_grant: Option<Instant>,
}

/// The link from one catalog replica to the cache (if the cluster has one).
#[derive(Debug)]
pub struct CacheLink {
    client: Client,
    url: Option<String>,
    lease: Duration,
    state: Mutex<LinkState>,
}

impl CacheLink {
    pub fn new(client: Client, cache_url: Option<String>, lease: Duration) -> CacheLink {
        CacheLink {
            client,
            url: cache_url,
            lease,
            state: Mutex::new(LinkState {
                mode: Mode::Normal,
                last_grant: None,
            }),
        }
    }

    /// Makes sure no cache entry of `item` older than `version` can be served once this
    /// returns.
    pub async fn invalidate(&self, item: ItemNumber, version: u64) {
        let Some(base) = &self.url else { return };
        if self.state.lock().mode == Mode::Blocked {
            return; // the cache serves nothing until it has flushed past this write
        }
        let url = format!("{base}/invalidate?item_number={item}&version={version}");
        for attempt in 0..2 {
            let req = self
                .client
                .raw()
                .post(&url)
                .timeout(Duration::from_millis(300));
            match self.client.send(req).await {
                Ok(_) => return,
                Err(e) if attempt == 1 => {
                    tracing::warn!(item, version, error = %e, "cache invalidation failed; waiting out the cache lease")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        let wait_until = {
            let mut s = self.state.lock();
            s.mode = Mode::Blocked;
            s.last_grant.map(|g| g + self.lease)
        };
        if let Some(t) = wait_until {
            tokio::time::sleep_until(t.into()).await;
        }
    }

    /// Answers the cache's lease request; `current_version` is read after the mode
    /// change, so every write at or below the floor is covered by the flush.
    pub fn lease(
        &self,
        flushed_to: Option<u64>,
        current_version: impl FnOnce() -> u64,
    ) -> LeaseReply {
        let mut s = self.state.lock();
        match s.mode {
            Mode::Normal => {}
            Mode::Blocked => {
                let floor = current_version();
                s.mode = Mode::Flushing { floor };
                return LeaseReply::Flush { floor };
            }
            Mode::Flushing { floor } => {
                if flushed_to.unwrap_or(0) < floor {
                    return LeaseReply::Flush { floor };
                }
                s.mode = Mode::Normal;
            }
        }
        s.last_grant = Some(Instant::now());
        LeaseReply::Grant {
            millis: self.lease.as_millis() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_cache_blocks_leases_until_it_flushes() {
        // Nothing listens on port 9 of 127.0.0.1 in a test sandbox.
        let link = CacheLink::new(
            Client::new("t"),
            Some("http://127.0.0.1:9".into()),
            Duration::from_millis(50),
        );
        assert_eq!(link.lease(None, || 1), LeaseReply::Grant { millis: 50 });
        let started = Instant::now();
        link.invalidate(1, 5).await;
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "waited out the lease"
        );
        assert_eq!(link.lease(None, || 7), LeaseReply::Flush { floor: 7 });
        assert_eq!(link.lease(Some(6), || 8), LeaseReply::Flush { floor: 7 });
        assert_eq!(link.lease(Some(7), || 8), LeaseReply::Grant { millis: 50 });
    }
}
