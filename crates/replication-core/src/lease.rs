//! A primary's read lease, as a value: the rule that decides whether a primary may answer
//! a read now. Generic over the clock (`Instant` in the runtime, ticks in the tests).
//!
//! A ping answer that names the replica primary of the epoch it leads lets it serve
//! reads for [`LEASE_TICKS`] ticks, counted from when it *sent* that ping. The view
//! service declares a replica dead only [`DEAD_TICKS`] of its ticks after it *received*
//! that replica's last ping, and a new coordinator leader gives every member that same
//! grace from the moment it takes over (see `viewservice::ViewService::take_over`). The
//! lease is one tick shorter than either, so it ends before any view without the primary
//! can be decided.
use crate::terms::{Epoch, ReplicaId};

/// Ticks of silence after which the view service declares a replica dead.
pub const DEAD_TICKS: u64 = 6;

/// Ticks a ping answer lets a primary serve reads, from the ping's sending.
pub const LEASE_TICKS: u64 = DEAD_TICKS - 1;

/// The epoch a primary leads and until when it may serve reads in it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadLease<T> {
    held: Option<(Epoch, T)>,
}

impl<T: Copy + Ord> ReadLease<T> {
    pub fn new() -> Self {
        ReadLease { held: None }
    }

    /// A ping sent at `sent` was answered naming `primary` in `epoch`; `me` leads
    /// `leading` (its active view's epoch, if it is primary). Extends the lease to
    /// `until` (= `sent` + the lease length) when the answer names it primary of the
    /// epoch it leads; never shortens it within one epoch.
    pub fn renew(
        &mut self,
        me: ReplicaId,
        leading: Option<Epoch>,
        named: (Epoch, ReplicaId),
        until: T,
    ) {
        let (epoch, primary) = named;
        if primary != me || leading != Some(epoch) {
            return;
        }
        match self.held {
            Some((e, u)) if e == epoch && u >= until => {}
            _ => self.held = Some((epoch, until)),
        }
    }

    /// May a primary of `epoch` answer a read at `now`?
    pub fn holds(&self, epoch: Epoch, now: T) -> bool {
        self.held
            .is_some_and(|(e, until)| e == epoch && now < until)
    }
}
