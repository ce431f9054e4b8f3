//! View service: the single authority that decides views (epochs), as a pure state
//! machine. Inputs are [`VsEvent::Ping`] from replicas and [`VsEvent::Tick`]; outputs are
//! [`VsCommand::Persist`] (the runtime makes the state durable **before** executing any
//! later command) and [`VsCommand::Reply`] (the current view, answering each ping).
//!
//! # Rules
//!
//! * A replica is *alive* if it pinged within `dead_ticks` ticks.
//! * **Cold start** (no view yet): the VS waits until all `replicas` have pinged or
//!   `startup_ticks` ticks have passed, then makes the lowest-id alive replica primary of
//!   epoch 1 and the other alive ones backups. All disks are empty at cold start, so
//!   every choice is safe; waiting just prefers the lowest id.
//! * The view changes only after the current view was **acknowledged** by its primary
//!   (a ping from it carrying the current epoch), except when that primary restarted
//!   with a new disk (it could never acknowledge; see `decide`).
//! * **Restarted primary.** A replica pings with the epoch of the view it had persisted
//!   when it (re)started ([`Ping::fence`]) and never leads that epoch again (it may have
//!   sent entries it had not persisted; see `protocol`, "Restart fence"). When the
//!   primary of the current view pings with a fence at that view's epoch, the VS moves
//!   to the next epoch with the same members, acknowledged or not: the primary holds
//!   every committed entry, and so does every synced backup.
//! * Otherwise at most one change per decision, in this priority:
//!   1. primary dead (or restarted with a new disk) -> the lowest-id alive **synced** backup
//!      becomes primary (epoch + 1); with no synced backup nothing changes (consistent
//!      but unavailable);
//!   2. dead or restarted backups are removed;
//!   3. alive replicas outside the view are added as **unsynced** backups;
//!   4. a synced backup with a lower id than the primary takes over (the old primary
//!      becomes a synced backup: it holds every committed entry).
//! * **Synced set.** The primary of the current epoch reports in [`Ping::synced`] the
//!   backups that durably hold every committed entry. The VS only adds to the set; it
//!   carries it over to the next view (minus removed members). This is sound because a
//!   primary commits only when *every* backup of its view acknowledged, so a synced
//!   backup stays synced while it stays in the view.
//! * **Incarnations.** Each replica's disk has an incarnation number. A ping with a
//!   higher incarnation than known means the replica lost its disk: it is dropped from
//!   the synced set at once, and, if it is a member of the view, it is *tainted* (its
//!   synced reports are ignored) until a view change removes it. Pings with a lower
//!   incarnation are stale and ignored.
//!
//! Invariant: every replica in the synced set of the current view holds every committed
//! entry durably; the primary of every view was in the synced set of the previous one
//! (or the view is the first one).

use crate::terms::{Epoch, LogIndex, ReplicaId, View};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Ping from a replica to the view service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Ping {
    pub from: ReplicaId,
    /// Incarnation of the replica's disk (see `protocol::DurableState::incarnation`).
    pub incarnation: u64,
    /// Epoch of the view the replica is acting in (0: none).
    pub epoch: Epoch,
    /// Highest applied log index (informational).
    pub applied: LogIndex,
    /// Primary only: backups that hold every committed entry.
    pub synced: Vec<ReplicaId>,
    /// Epoch of the view the replica had persisted when its process started (0: none);
    /// it will not lead that epoch.
    pub fence: Epoch,
}

/// View-service configuration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VsConfig {
    /// Number of replicas a new cluster starts with (ids `0..replicas`): a cold start
    /// waits for them. Replicas with other ids join as backups when they ping (the host
    /// decides who may: see `vs_host`).
    pub replicas: u32,
    /// A replica that has not pinged for more than this many ticks is dead.
    pub dead_ticks: u64,
    /// At cold start wait at most this many ticks for all replicas to ping.
    pub startup_ticks: u64,
}

impl Default for VsConfig {
    fn default() -> Self {
        VsConfig {
            replicas: 3,
            dead_ticks: 10,
            startup_ticks: 10,
        }
    }
}

/// Everything the view service must keep across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VsState {
    pub view: Option<View>,
    /// The primary of `view` acknowledged it.
    pub acked: bool,
    /// Backups (of `view`) known to hold every committed entry.
    pub synced: BTreeSet<ReplicaId>,
    /// Members of `view` that restarted with a new disk.
    pub tainted: BTreeSet<ReplicaId>,
    /// Latest known incarnation per replica, with the epoch of the view that was current
    /// when the VS first saw it (0: no view yet).
    pub incarnations: BTreeMap<ReplicaId, (u64, Epoch)>,
}

/// Inputs of the view service.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VsEvent {
    Ping(Ping),
    Tick,
}

/// Outputs of the view service, to be executed in order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum VsCommand {
    /// Durably store the state; must complete before later commands are executed.
    Persist(VsState),
    /// Answer a ping with the current view. `lead_from`: views with a smaller epoch were
    /// decided before the VS knew the pinger's current incarnation (disk), so a replica
    /// with a fresh disk must not lead them.
    Reply {
        to: ReplicaId,
        view: Option<View>,
        lead_from: Epoch,
    },
}

/// The view service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ViewService {
    config: VsConfig,
    state: VsState,
    now: u64,
    last_seen: BTreeMap<ReplicaId, u64>,
    /// Latest [`Ping::fence`] per replica (volatile: every ping repeats it).
    fences: BTreeMap<ReplicaId, Epoch>,
}

impl ViewService {
    /// A view service with no persisted state (cold start of a new cluster).
    pub fn new(config: VsConfig) -> Self {
        Self::recover(config, VsState::default())
    }

    /// Restart from persisted state. Members of the view get a full `dead_ticks` of grace.
    pub fn recover(config: VsConfig, state: VsState) -> Self {
        Self::take_over(config, state, true)
    }

    /// Takes over decided state from an earlier view service (a new coordinator leader,
    /// or a restart): the soft state (who pinged when, fences) starts empty.
    ///
    /// With `lease_wait`, every member of the view counts as seen *now*, so none is
    /// declared dead for `dead_ticks` ticks from here. An earlier view service granted a
    /// primary's read lease only in answer to a ping sent before this take-over, and that
    /// lease is `dead_ticks - 1` ticks long ([`crate::lease`]), so it has run out before
    /// this view service can decide a view without that primary.
    ///
    /// `lease_wait = false` is a MUTATION SWITCH for tests: members not yet heard from
    /// count as dead at once, and a new leader can promote a backup while the old primary
    /// still serves reads under its lease.
    pub fn take_over(config: VsConfig, state: VsState, lease_wait: bool) -> Self {
        let mut last_seen = BTreeMap::new();
        if let (Some(v), true) = (&state.view, lease_wait) {
            last_seen.insert(v.primary, 0);
            for b in &v.backups {
                last_seen.insert(*b, 0);
            }
        }
        ViewService {
            config,
            state,
            now: 0,
            last_seen,
            fences: BTreeMap::new(),
        }
    }

    /// Replaces the decided state with one decided elsewhere (a registration or a
    /// retirement committed by the coordinator group), keeping the soft state.
    pub fn set_state(&mut self, state: VsState) {
        self.state = state;
    }

    pub fn config(&self) -> &VsConfig {
        &self.config
    }

    pub fn view(&self) -> Option<&View> {
        self.state.view.as_ref()
    }
    pub fn state(&self) -> &VsState {
        &self.state
    }
    pub fn acked(&self) -> bool {
        self.state.acked
    }
    pub fn synced(&self) -> &BTreeSet<ReplicaId> {
        &self.state.synced
    }
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Feed one event; returns the commands to execute in order.
    pub fn handle(&mut self, event: VsEvent) -> Vec<VsCommand> {
        let mut out = Vec::new();
        let mut changed = false;
        let reply_to = match event {
            VsEvent::Tick => {
                self.now += 1;
                None
            }
            VsEvent::Ping(p) => {
                changed |= self.on_ping(&p);
                Some((p.from, p.incarnation))
            }
        };
        changed |= self.decide();
        if changed {
            out.push(VsCommand::Persist(self.state.clone()));
        }
        if let Some((to, incarnation)) = reply_to {
            let lead_from = match self.state.incarnations.get(&to) {
                Some((inc, since)) if *inc == incarnation => since + 1,
                _ => Epoch::MAX, // stale ping
            };
            out.push(VsCommand::Reply {
                to,
                view: self.state.view.clone(),
                lead_from,
            });
        }
        out
    }

    fn on_ping(&mut self, p: &Ping) -> bool {
        let mut changed = false;
        let epoch = self.state.view.as_ref().map_or(0, |v| v.epoch);
        match self.state.incarnations.get(&p.from).copied() {
            Some((known, _)) if p.incarnation < known => return false, // stale ping
            Some((known, _)) if p.incarnation > known => {
                self.state.synced.remove(&p.from);
                if self.state.view.as_ref().is_some_and(|v| v.contains(p.from)) {
                    self.state.tainted.insert(p.from);
                }
                self.state
                    .incarnations
                    .insert(p.from, (p.incarnation, epoch));
                changed = true;
            }
            Some(_) => {}
            None => {
                self.state
                    .incarnations
                    .insert(p.from, (p.incarnation, epoch));
                changed = true;
            }
        }
        self.last_seen.insert(p.from, self.now);
        self.fences.insert(p.from, p.fence);
        let Some(v) = &self.state.view else {
            return changed;
        };
        if p.from == v.primary && p.epoch == v.epoch && !self.state.tainted.contains(&p.from) {
            if !self.state.acked {
                self.state.acked = true;
                changed = true;
            }
            for s in &p.synced {
                if v.is_backup(*s) && !self.state.tainted.contains(s) {
                    changed |= self.state.synced.insert(*s);
                }
            }
        }
        changed
    }

    fn alive(&self, r: ReplicaId) -> bool {
        self.last_seen
            .get(&r)
            .is_some_and(|t| self.now - t <= self.config.dead_ticks)
    }

    /// Alive and not restarted with a new disk.
    fn usable(&self, r: ReplicaId) -> bool {
        self.alive(r) && !self.state.tainted.contains(&r)
    }

    fn install(&mut self, view: View, synced: BTreeSet<ReplicaId>) {
        self.state.synced = synced.into_iter().filter(|s| view.is_backup(*s)).collect();
        self.state.tainted.retain(|t| view.contains(*t));
        self.state.acked = false;
        self.state.view = Some(view);
    }

    /// Apply at most one view change. Returns whether the state changed.
    fn decide(&mut self) -> bool {
        let Some(v) = self.state.view.clone() else {
            return self.decide_first_view();
        };
        // A primary that restarted within this view will not lead it again: the same
        // members move on to the next epoch.
        if self.usable(v.primary) && self.fences.get(&v.primary).is_some_and(|f| *f >= v.epoch) {
            let synced = self.state.synced.clone();
            let next = v.epoch + 1;
            self.install(View { epoch: next, ..v }, synced);
            return true;
        }
        // A primary that restarted with a new disk can never acknowledge (a fresh replica
        // refuses to lead views older than its restart), so waiting for its ack would
        // block forever; replacing it is safe because every commit of the unacknowledged
        // view still needed every backup's ack.
        if !self.state.acked && !self.state.tainted.contains(&v.primary) {
            return false;
        }
        let change = if !self.usable(v.primary) {
            self.with_new_primary(&v)
        } else {
            self.without_dead_backups(&v)
                .or_else(|| self.with_joiners(&v))
                .or_else(|| self.with_lower_primary(&v))
        };
        let Some((view, synced)) = change else {
            return false;
        };
        self.install(view, synced);
        true
    }

    /// Cold start: once everyone pinged or `startup_ticks` passed, the lowest-id alive
    /// replica leads epoch 1 and the other alive ones back it up.
    fn decide_first_view(&mut self) -> bool {
        let alive: Vec<ReplicaId> = self
            .last_seen
            .keys()
            .copied()
            .filter(|r| self.alive(*r))
            .collect();
        let everyone = (0..self.config.replicas).all(|r| alive.contains(&r));
        if alive.is_empty() || !(everyone || self.now >= self.config.startup_ticks) {
            return false;
        }
        let view = View {
            epoch: 1,
            primary: alive[0],
            backups: alive[1..].to_vec(),
        };
        self.install(view, BTreeSet::new());
        true
    }

    /// Rule 1, the primary is dead or restarted with a new disk: the lowest-id usable
    /// synced backup takes over. `None` when nobody holds every committed entry: wait.
    fn with_new_primary(&self, v: &View) -> Option<(View, BTreeSet<ReplicaId>)> {
        let p = v
            .backups
            .iter()
            .copied()
            .filter(|b| self.usable(*b) && self.state.synced.contains(b))
            .min()?;
        let backups = v.backups.iter().copied().filter(|b| *b != p).collect();
        let synced = self.state.synced.clone();
        let view = View {
            epoch: v.epoch + 1,
            primary: p,
            backups,
        };
        Some((view, synced))
    }

    /// Rule 2: dead or restarted backups leave the view.
    fn without_dead_backups(&self, v: &View) -> Option<(View, BTreeSet<ReplicaId>)> {
        let keep: Vec<ReplicaId> = v
            .backups
            .iter()
            .copied()
            .filter(|b| self.usable(*b))
            .collect();
        if keep.len() == v.backups.len() {
            return None;
        }
        let synced = self.state.synced.clone();
        let view = View {
            epoch: v.epoch + 1,
            primary: v.primary,
            backups: keep,
        };
        Some((view, synced))
    }

    /// Rule 3: alive replicas outside the view join it as unsynced backups.
    fn with_joiners(&self, v: &View) -> Option<(View, BTreeSet<ReplicaId>)> {
        let joiners: Vec<ReplicaId> = self
            .last_seen
            .keys()
            .copied()
            .filter(|r| !v.contains(*r) && self.alive(*r))
            .collect();
        if joiners.is_empty() {
            return None;
        }
        let mut backups = v.backups.clone();
        backups.extend(joiners);
        backups.sort_unstable();
        let synced = self.state.synced.clone();
        let view = View {
            epoch: v.epoch + 1,
            primary: v.primary,
            backups,
        };
        Some((view, synced))
    }

    /// Rule 4: a synced backup with a lower id than the primary takes over; the old
    /// primary stays as a synced backup (it holds every committed entry).
    fn with_lower_primary(&self, v: &View) -> Option<(View, BTreeSet<ReplicaId>)> {
        let p = v
            .backups
            .iter()
            .copied()
            .filter(|b| *b < v.primary && self.state.synced.contains(b))
            .min()?;
        let mut backups: Vec<ReplicaId> = v.backups.iter().copied().filter(|b| *b != p).collect();
        backups.push(v.primary);
        backups.sort_unstable();
        let mut synced = self.state.synced.clone();
        synced.remove(&p);
        synced.insert(v.primary);
        let view = View {
            epoch: v.epoch + 1,
            primary: p,
            backups,
        };
        Some((view, synced))
    }
}
