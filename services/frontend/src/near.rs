//! The frontend's near cache: lookup and search answers kept in this process, so a hit
//! costs one HTTP hop (client to frontend) instead of two.
//!
//! It is a second copy of the cache service's entries under the same version rules
//! ([`Store`]), kept coherent by a **near lease** from the cache: the frontend answers
//! from memory only while its lease runs, and while it runs the cache pushes every
//! invalidation here before acknowledging it (a push that fails makes the cache wait
//! until the lease has run out). The lease is counted from before the frontend asked, so
//! it runs out here no later than the cache's record of it, which in turn never outlives
//! the cache's own lease from the catalog. A lease that lapsed, or that the cache grants
//! with `flush`, starts from an empty store, and fills that began before the flush are
//! refused (their generation is gone). The cache's side is `bookstore_cache::near`.
use bookstore_common::cache_store::Store;
use bookstore_common::client::Client;
use bookstore_common::types::{ItemNumber, NearLeaseReply, NearLeaseRequest};
use bytes::Bytes;
use parking_lot::RwLock;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the near lease is renewed (the cache grants at most 200 ms).
pub const RENEW_EVERY: Duration = Duration::from_millis(50);

#[derive(Debug, Default)]
struct State {
    store: Store,
    /// When the lease runs out (this process's clock); `None` before the first grant.
    until: Option<Instant>,
    /// Bumped by every flush: a fill that started under an older generation may have
    /// missed an invalidation and is dropped.
    generation: u64,
}

impl State {
    fn flush(&mut self) {
        self.store.flush(0);
        self.generation += 1;
    }
}

/// A frontend's near cache.
#[derive(Debug, Default)]
pub struct Near {
    state: RwLock<State>,
}

impl Near {
    /// A near cache of at most `limit` answers.
    pub fn new(limit: usize) -> Near {
        Near {
            state: RwLock::new(State {
                store: Store::with_limit(limit),
                ..State::default()
            }),
        }
    }
}

/// A fill's ticket: taken before asking the cache or the catalog, handed back to store
/// the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

impl Near {
    /// `f` of the store, if the lease runs.
    fn leased_read(&self, f: impl FnOnce(&Store) -> Option<Bytes>) -> Option<Bytes> {
        let s = self.state.read();
        if s.until? <= Instant::now() {
            return None;
        }
        f(&s.store)
    }

    /// A lookup answer, if held and the lease runs.
    pub fn lookup(&self, item: ItemNumber) -> Option<Bytes> {
        self.leased_read(|s| s.lookup(item))
    }

    /// A search answer, if held and the lease runs.
    pub fn search(&self, topic: &str) -> Option<Bytes> {
        self.leased_read(|s| s.search(topic))
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.state.read().generation)
    }

    /// Stores a lookup answer read at catalog `version` (dropped if a flush came between
    /// the ticket and now, or if an invalidation already covers it).
    pub fn put_lookup(&self, ticket: Ticket, item: ItemNumber, version: u64, body: Bytes) {
        let mut s = self.state.write();
        if s.generation == ticket.0 {
            s.store.put_lookup(item, version, body);
        }
    }

    /// Stores a search answer that depends on `items`, read at catalog `version`.
    pub fn put_search(
        &self,
        ticket: Ticket,
        topic: &str,
        version: u64,
        items: Vec<ItemNumber>,
        body: Bytes,
    ) {
        let mut s = self.state.write();
        if s.generation == ticket.0 {
            s.store.put_search(topic, version, items, body);
        }
    }

    /// An invalidation pushed by the cache (same rules as the cache's own store).
    pub fn invalidate(&self, item: ItemNumber, version: u64, epoch: Option<u64>) {
        let mut s = self.state.write();
        if let Some(e) = epoch {
            s.store.observe_epoch(e);
        }
        s.store.invalidate(item, version);
    }

    /// Drops every entry (and every fill under way).
    pub fn flush(&self) {
        self.state.write().flush();
    }

    /// The cache's answer to a lease request sent at `sent`.
    pub fn renewed(&self, sent: Instant, reply: &NearLeaseReply) {
        let mut s = self.state.write();
        let lapsed = s.until.is_none_or(|u| u <= sent);
        if reply.flush || lapsed {
            s.flush();
        }
        s.until = (reply.millis > 0).then(|| sent + Duration::from_millis(reply.millis));
    }

    /// Whether a lease runs now.
    pub fn leased(&self) -> bool {
        self.state.read().until.is_some_and(|u| u > Instant::now())
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.state.read().store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Keeps this frontend's near lease from the cache at `cache` alive, until `near` is
/// dropped or `tasks` stop.
pub fn spawn_lease_loop(
    near: &Arc<Near>,
    client: Client,
    cache: String,
    frontend: u32,
    tasks: &bookstore_common::tasks::Tasks,
) {
    let near = Arc::downgrade(near);
    tasks.spawn(async move {
        let url = format!("{cache}/near_lease");
        let body = NearLeaseRequest {
            frontend: frontend.into(),
            session: uuid::Uuid::new_v4().as_u64_pair().0 >> 1,
        };
        let mut warned = false;
        let mut interval = tokio::time::interval(RENEW_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            let Some(near) = near.upgrade() else { break };
            let sent = Instant::now();
            let req = client
                .raw()
                .post(&url)
                .json(&body)
                .timeout(Duration::from_millis(200));
            match client.send(req).await {
                Ok(bytes) => match serde_json::from_slice::<NearLeaseReply>(&bytes) {
                    Ok(reply) => {
                        near.renewed(sent, &reply);
                        warned = false;
                    }
                    Err(e) => tracing::warn!(error = %e, "bad near-lease answer from the cache"),
                },
                Err(e) if !warned => {
                    // Until a lease comes back, hits go to the cache service.
                    tracing::debug!(error = %e, "near-lease renewal failed");
                    warned = true;
                }
                Err(_) => {}
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(millis: u64, flush: bool) -> NearLeaseReply {
        NearLeaseReply { millis, flush }
    }

    #[test]
    fn answers_only_under_a_lease() {
        let n = Near::default();
        let t = n.ticket();
        n.put_lookup(t, ItemNumber::of(1), 5, Bytes::from_static(b"x"));
        assert!(n.lookup(ItemNumber::of(1)).is_none(), "no lease yet");
        // The first lease flushes (it may have missed invalidations before).
        n.renewed(Instant::now(), &grant(1000, true));
        assert!(n.lookup(ItemNumber::of(1)).is_none());
        let t = n.ticket();
        n.put_lookup(t, ItemNumber::of(1), 5, Bytes::from_static(b"x"));
        assert_eq!(
            n.lookup(ItemNumber::of(1)).unwrap(),
            Bytes::from_static(b"x")
        );
        n.renewed(Instant::now(), &grant(0, true));
        assert!(
            n.lookup(ItemNumber::of(1)).is_none(),
            "the cache withdrew the lease"
        );
    }

    #[test]
    fn a_fill_across_a_flush_is_dropped_and_one_across_an_invalidation_too() {
        let n = Near::default();
        n.renewed(Instant::now(), &grant(1000, true));
        let before = n.ticket();
        n.flush();
        n.put_lookup(before, ItemNumber::of(1), 5, Bytes::from_static(b"old"));
        assert!(n.lookup(ItemNumber::of(1)).is_none());
        let t = n.ticket();
        n.invalidate(ItemNumber::of(1), 6, None);
        n.put_lookup(t, ItemNumber::of(1), 5, Bytes::from_static(b"old"));
        assert!(
            n.lookup(ItemNumber::of(1)).is_none(),
            "read before the write"
        );
        n.put_lookup(t, ItemNumber::of(1), 6, Bytes::from_static(b"new"));
        assert_eq!(
            n.lookup(ItemNumber::of(1)).unwrap(),
            Bytes::from_static(b"new")
        );
    }

    #[test]
    fn a_lapsed_lease_flushes_even_when_the_cache_does_not_say_so() {
        let n = Near::default();
        let t0 = Instant::now();
        n.renewed(t0, &grant(10, true));
        let t = n.ticket();
        n.put_search(t, "x", 3, vec![ItemNumber::of(1)], Bytes::from_static(b"s"));
        std::thread::sleep(Duration::from_millis(20));
        assert!(n.search("x").is_none(), "lease ran out");
        n.renewed(Instant::now(), &grant(1000, false));
        assert!(n.is_empty(), "entries from before the gap are gone");
        assert!(n.leased());
    }
}
