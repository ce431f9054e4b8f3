//! The cache's side of the frontends' near caches (pure: no I/O, times passed in).
//!
//! A frontend answers lookups and searches from its own memory only while it holds a
//! **near lease** from the cache. While a lease may be running, the cache pushes every
//! invalidation to that frontend before acknowledging the invalidation to the catalog; a
//! push that fails marks the frontend **dirty** and the invalidation waits until its lease
//! has run out. A dirty or lapsed frontend is told to drop everything with its next lease.
//!
//! Leases nest: a near lease never outlives the cache's own lease from the catalog, so a
//! catalog that waits out the cache's lease (it could not reach the cache) has waited out
//! every near lease too. The frontend counts its lease from before it asked, so its clock
//! runs out no later than the cache's record of it.
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The longest near lease (also how long a freshly started cache holds back its first
/// invalidation answers: a frontend may still hold a lease from the cache's previous
/// incarnation, which the new one knows nothing about).
pub const NEAR_LEASE: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy)]
struct Holder {
    /// When this frontend's lease runs out, by the cache's clock.
    until: Instant,
    /// A push failed: the frontend may hold entries an invalidation should have dropped.
    dirty: bool,
    /// The frontend process that asked last (a random number each frontend draws at
    /// start): a lease asked by another process (a restarted frontend, or anyone else
    /// with the cluster token asking in its name) starts with a flush, and the next ask
    /// of the first one flushes too.
    session: u64,
}

/// Every frontend's near lease.
#[derive(Debug, Default)]
pub struct Holders {
    holders: HashMap<u32, Holder>,
}

impl Holders {
    /// A lease request from `frontend` at `now`, when the cache's own lease runs until
    /// `cache_until`. Returns the lease length and whether the frontend must flush first.
    pub fn renew(
        &mut self,
        frontend: u32,
        session: u64,
        now: Instant,
        cache_until: Option<Instant>,
    ) -> (Duration, bool) {
        let grant = cache_until
            .map(|u| u.saturating_duration_since(now).min(NEAR_LEASE))
            .unwrap_or_default();
        let h = self.holders.entry(frontend).or_insert(Holder {
            until: now,
            dirty: true,
            session,
        });
        // A lease that ran out may have missed invalidations (they were not pushed).
        let flush = h.dirty || h.until <= now || h.session != session;
        h.session = session;
        if grant.is_zero() {
            // No lease. A lease of the previous session may still run: the record keeps
            // its end (pushes go on until then) and the next grant flushes.
            h.dirty = true;
            return (Duration::ZERO, true);
        }
        h.dirty = false;
        // Pushes go on until every lease granted under this id has run out.
        h.until = h.until.max(now + grant);
        (grant, flush)
    }

    /// The frontends an invalidation must reach at `now`, with their leases' ends.
    pub fn live(&self, now: Instant) -> Vec<(u32, Instant)> {
        self.holders
            .iter()
            .filter(|(_, h)| h.until > now)
            .map(|(id, h)| (*id, h.until))
            .collect()
    }

    /// A push to `frontend` failed: returns when its lease runs out (the invalidation must
    /// wait until then) and makes its next lease start with a flush.
    pub fn failed(&mut self, frontend: u32) -> Option<Instant> {
        let h = self.holders.get_mut(&frontend)?;
        h.dirty = true;
        Some(h.until)
    }

    /// Frontends holding a lease at `now`.
    pub fn leased(&self, now: Instant) -> usize {
        self.holders.values().filter(|h| h.until > now).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A start, no holders yet, and a cache lease that runs 1 s from the start.
    fn start() -> (Instant, Holders, Option<Instant>) {
        let t0 = Instant::now();
        (t0, Holders::default(), Some(t0 + ms(1000)))
    }

    #[test]
    fn a_first_lease_flushes_and_renewals_in_time_do_not() {
        let (t0, mut h, cache) = start();
        assert_eq!(h.renew(1, 7, t0, cache), (NEAR_LEASE, true));
        assert_eq!(h.renew(1, 7, t0 + ms(50), cache), (NEAR_LEASE, false));
        assert_eq!(h.live(t0 + ms(100)), vec![(1, t0 + ms(50) + NEAR_LEASE)]);
        // Renewed after it ran out: flush.
        let late = t0 + ms(50) + NEAR_LEASE;
        assert!(h.live(late).is_empty());
        assert_eq!(h.renew(1, 7, late, cache), (NEAR_LEASE, true));
    }

    #[test]
    fn a_near_lease_never_outlives_the_caches_own() {
        let t0 = Instant::now();
        let mut h = Holders::default();
        assert_eq!(h.renew(1, 7, t0, Some(t0 + ms(30))), (ms(30), true));
        assert_eq!(
            h.renew(1, 7, t0 + ms(10), Some(t0 + ms(30))),
            (ms(20), false)
        );
        // The cache lost its lease: no near lease, and the next one flushes.
        assert_eq!(h.renew(1, 7, t0 + ms(20), None), (Duration::ZERO, true));
        assert!(h.live(t0 + ms(30)).is_empty());
        assert_eq!(
            h.renew(1, 7, t0 + ms(21), Some(t0 + ms(500))),
            (NEAR_LEASE, true)
        );
    }

    #[test]
    fn a_failed_push_waits_out_the_lease_and_the_next_lease_flushes() {
        let (t0, mut h, cache) = start();
        h.renew(1, 7, t0, cache);
        h.renew(2, 7, t0, cache);
        assert_eq!(h.failed(2), Some(t0 + NEAR_LEASE));
        assert_eq!(h.failed(9), None, "never leased");
        assert_eq!(h.renew(2, 7, t0 + ms(10), cache), (NEAR_LEASE, true));
        assert_eq!(h.renew(1, 7, t0 + ms(10), cache), (NEAR_LEASE, false));
        assert_eq!(h.leased(t0 + ms(20)), 2);
    }

    #[test]
    fn another_session_under_the_same_id_flushes_both() {
        let (t0, mut h, cache) = start();
        assert_eq!(h.renew(1, 7, t0, cache), (NEAR_LEASE, true));
        assert_eq!(h.renew(1, 7, t0 + ms(10), cache), (NEAR_LEASE, false));
        // Someone else asks in frontend 1's name (or frontend 1 restarted).
        assert_eq!(h.renew(1, 8, t0 + ms(20), cache), (NEAR_LEASE, true));
        assert_eq!(h.renew(1, 7, t0 + ms(30), cache), (NEAR_LEASE, true));
        assert_eq!(h.renew(1, 7, t0 + ms(40), cache), (NEAR_LEASE, false));
    }
}
