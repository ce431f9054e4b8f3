//! The leader's side of the coordinator: it runs the view service of each replicated
//! kind, and only it answers with authority.
//!
//! - **Decisions are committed before anyone sees them.** Each ping and each tick runs on
//!   a copy of the kind's [`ViewService`]; when its decided state changes, the new state
//!   is proposed to Raft ([`Proposal::Decide`]) and the copy is kept, and the ping
//!   answered, only once that proposal is committed on a majority.
//! - **Soft state stays here.** When each replica last pinged, what it reported, the
//!   fences: kept by this leader only, for as long as it leads one term.
//! - **Taking over.** In a new term the leader first makes sure everything earlier terms
//!   committed is applied, then builds each kind's view service from the committed state
//!   with [`ViewService::take_over`]: every member counts as just seen, so none is
//!   declared dead before the longest read lease an earlier leader could have granted has
//!   run out. `lease_wait = false` (a mutation switch for tests) skips that wait.
//! - **Authority.** Every answer that names a primary or grants a read lease is released
//!   only after a leadership confirmation that started after the request arrived
//!   ([`crate::confirm`]). A follower answers `421` naming the leader.
use crate::confirm::Confirmer;
use crate::raft::state_machine::StateMachineStore;
use crate::raft::{NodeId, Raft};
use crate::state::{Applied, CoordinatorId, KindState, Proposal, Refusal};
use bookstore_common::ApiError;
use bookstore_replication_core::protocol::{Epoch, ReplicaId, View};
use bookstore_replication_core::viewservice::{ViewService, VsCommand, VsEvent};
use bookstore_replication_core::wire::{
    DecidedBy, KindReport, Members, PingAnswer, PingRequest, ReplicaSeen,
};
use openraft::error::{ClientWriteError, RaftError};
use openraft::ServerState;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Why a coordinator did not answer with authority.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthorityError {
    #[error("not the coordinator leader")]
    NotLeader { leader: Option<String> },
    #[error("{0}")]
    Unconfirmed(String),
    #[error("no replicated service {0:?}")]
    UnknownKind(String),
    #[error("{kind} {id} is not a member of the cluster (never registered, or retired)")]
    NotMember { kind: String, id: ReplicaId },
    #[error("{kind} {id} was registered at {registered}, not {url}: it must ping from there")]
    WrongUrl {
        kind: String,
        id: ReplicaId,
        registered: String,
        url: String,
    },
    #[error(transparent)]
    Refused(Refusal),
}

impl From<AuthorityError> for ApiError {
    fn from(e: AuthorityError) -> ApiError {
        match e {
            AuthorityError::NotLeader { leader } => ApiError::NotLeader { leader },
            AuthorityError::Unconfirmed(m) => ApiError::Unavailable(m),
            AuthorityError::UnknownKind(_) => ApiError::NotFound(e.to_string()),
            AuthorityError::NotMember { .. } | AuthorityError::WrongUrl { .. } => {
                ApiError::Gone(e.to_string())
            }
            AuthorityError::Refused(r) => match r {
                Refusal::ViewChanging(_) | Refusal::Stale { .. } => {
                    ApiError::Unavailable(r.to_string())
                }
                Refusal::NotMember { .. } | Refusal::UnknownKind(_) => {
                    ApiError::NotFound(r.to_string())
                }
                Refusal::LastHolder { .. } => ApiError::Conflict(r.to_string()),
            },
        }
    }
}

/// One kind's view service while this coordinator leads.
struct Slot {
    vs: ViewService,
    /// The committed version of the kind that `vs` reflects.
    version: u64,
    members: Members,
    decided_by: Option<(CoordinatorId, u64)>,
    /// Last ping of each replica: when, and the epoch and applied index it reported.
    seen: BTreeMap<ReplicaId, (Instant, Epoch, u64)>,
    view_changes: u64,
    failovers: u64,
}

impl Slot {
    fn take_over(k: &KindState, lease_wait: bool) -> Slot {
        Slot {
            vs: ViewService::take_over(k.vs_config(), k.vs.clone(), lease_wait),
            version: k.version,
            members: k.members.clone(),
            decided_by: k.decided_by,
            seen: BTreeMap::new(),
            view_changes: 0,
            failovers: 0,
        }
    }

    /// Follows a change committed elsewhere (a registration or retirement).
    fn sync(&mut self, k: &KindState) {
        if k.version != self.version {
            self.vs.set_state(k.vs.clone());
            self.version = k.version;
            self.members = k.members.clone();
            self.decided_by = k.decided_by;
        }
    }
}

/// The view services of one term of leadership.
struct Term {
    term: u64,
    kinds: BTreeMap<String, Slot>,
}

/// Settings of the authority.
#[derive(Debug, Clone)]
pub struct AuthoritySettings {
    /// This coordinator's id.
    pub id: NodeId,
    /// Each replicated kind and the cluster file's replicas of it (the initial member
    /// tables, proposed once by the first leader).
    pub bootstrap: Vec<(String, Vec<String>)>,
    /// Wait out earlier leaders' read leases after taking over (never `false` outside
    /// tests: it is a mutation switch).
    pub lease_wait: bool,
    /// How long a proposal may take to commit before the leader gives up on it.
    pub propose_timeout: Duration,
}

/// The coordinator's authority over views.
pub struct Authority {
    settings: AuthoritySettings,
    raft: Raft,
    sm: StateMachineStore,
    confirmer: Confirmer,
    term: tokio::sync::Mutex<Option<Term>>,
    /// When the current term's take-over happened (for status), outside the async lock.
    leading_since: Mutex<Option<(u64, Instant)>>,
    /// The last report of each kind, refreshed every tick while leading (for `/metrics`).
    reports: Mutex<BTreeMap<String, KindReport>>,
}

impl Authority {
    pub fn new(
        settings: AuthoritySettings,
        raft: Raft,
        sm: StateMachineStore,
        confirmer: Confirmer,
    ) -> Authority {
        Authority {
            settings,
            raft,
            sm,
            confirmer,
            term: tokio::sync::Mutex::new(None),
            leading_since: Mutex::new(None),
            reports: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn state_machine(&self) -> &StateMachineStore {
        &self.sm
    }

    /// The base URL of coordinator `id`, from the current membership.
    pub fn url_of(&self, id: NodeId) -> Option<String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .map(|n| n.addr.clone())
    }

    /// Every member of the group: base URL by id.
    pub fn members(&self) -> BTreeMap<NodeId, String> {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }

    /// How long ago this coordinator took over as leader, if it leads.
    pub fn leading_for(&self) -> Option<Duration> {
        let (term, since) = (*self.leading_since.lock())?;
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.state == ServerState::Leader && m.current_term == term).then(|| since.elapsed())
    }

    fn not_leader(&self) -> AuthorityError {
        let leader = self.raft.metrics().borrow().current_leader;
        AuthorityError::NotLeader {
            leader: leader
                .filter(|l| *l != self.settings.id)
                .and_then(|l| self.url_of(l)),
        }
    }

    /// Commits `p`; its outcome once applied.
    async fn propose(&self, p: Proposal) -> Result<Applied, AuthorityError> {
        match tokio::time::timeout(self.settings.propose_timeout, self.raft.client_write(p)).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(AuthorityError::NotLeader {
                    leader: f.leader_node.map(|n| n.addr),
                })
            }
            Ok(Err(e)) => Err(AuthorityError::Unconfirmed(format!(
                "cannot commit a decision: {e}"
            ))),
            Err(_) => Err(AuthorityError::Unconfirmed(format!(
                "a decision was not committed within {} ms (no quorum?)",
                self.settings.propose_timeout.as_millis()
            ))),
        }
    }

    /// Locks the current term's view services, taking over first if this node has just
    /// become leader of a new term.
    async fn acquire(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Term>>, AuthorityError> {
        let (state, term) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (m.state, m.current_term)
        };
        if state != ServerState::Leader {
            return Err(self.not_leader());
        }
        let mut g = self.term.lock().await;
        if g.as_ref().is_some_and(|t| t.term == term) {
            return Ok(g);
        }
        *g = None;
        // Every entry committed in earlier terms is applied before we read the state.
        tokio::time::timeout(
            self.settings.propose_timeout,
            self.raft.ensure_linearizable(),
        )
        .await
        .map_err(|_| AuthorityError::Unconfirmed("cannot confirm leadership in time".into()))?
        .map_err(|e| AuthorityError::Unconfirmed(format!("cannot confirm leadership: {e}")))?;
        let missing: Vec<(String, Vec<String>)> = self.sm.read(|d| {
            self.settings
                .bootstrap
                .iter()
                .filter(|(k, _)| !d.control.kinds.contains_key(k))
                .cloned()
                .collect()
        });
        if !missing.is_empty() {
            self.propose(Proposal::Bootstrap { kinds: missing }).await?;
        }
        let lease_wait = self.settings.lease_wait;
        let kinds = self.sm.read(|d| {
            d.control
                .kinds
                .iter()
                .map(|(k, s)| (k.clone(), Slot::take_over(s, lease_wait)))
                .collect()
        });
        let since = Instant::now();
        *g = Some(Term { term, kinds });
        *self.leading_since.lock() = Some((term, since));
        tracing::info!(
            id = self.settings.id,
            term,
            lease_wait,
            "took over the view services as coordinator leader"
        );
        Ok(g)
    }

    /// Runs one event through `kind`'s view service; a changed decided state is
    /// committed before the change is kept. Returns the reply to a ping. On any failure
    /// the term's soft state is dropped (leadership is in doubt).
    async fn step(
        &self,
        g: &mut Option<Term>,
        kind: &str,
        event: VsEvent,
    ) -> Result<Option<(Option<View>, Epoch)>, AuthorityError> {
        let result = self.step_in(g, kind, event).await;
        if matches!(
            result,
            Err(AuthorityError::NotLeader { .. }
                | AuthorityError::Unconfirmed(_)
                | AuthorityError::Refused(_))
        ) {
            *g = None;
        }
        result
    }

    async fn step_in(
        &self,
        g: &mut Option<Term>,
        kind: &str,
        event: VsEvent,
    ) -> Result<Option<(Option<View>, Epoch)>, AuthorityError> {
        let t = g.as_mut().expect("acquired");
        let term = t.term;
        let slot = t
            .kinds
            .get_mut(kind)
            .ok_or_else(|| AuthorityError::UnknownKind(kind.into()))?;
        let pinger = match &event {
            VsEvent::Ping(p) => Some(p.from),
            VsEvent::Tick => None,
        };
        let mut next = slot.vs.clone();
        let mut decided = None;
        let mut reply = None;
        for cmd in next.handle(event) {
            match cmd {
                VsCommand::Persist(state) => decided = Some(state),
                VsCommand::Reply {
                    to,
                    view,
                    lead_from,
                } if Some(to) == pinger => reply = Some((view, lead_from)),
                VsCommand::Reply { .. } => {}
            }
        }
        if let Some(state) = decided {
            let before = slot.vs.view().map(|v| (v.epoch, v.primary));
            let proposal = Proposal::Decide {
                kind: kind.into(),
                base: slot.version,
                state: state.clone(),
                by: self.settings.id,
                term,
            };
            match self.propose(proposal).await? {
                Applied::Done { version } => slot.version = version,
                Applied::Refused(r) => return Err(AuthorityError::Refused(r)),
                other => {
                    return Err(AuthorityError::Unconfirmed(format!(
                        "unexpected outcome of a decision: {other:?}"
                    )))
                }
            }
            if let Some(v) = &state.view {
                if Some(v.epoch) != before.map(|b| b.0) {
                    slot.view_changes += 1;
                    slot.decided_by = Some((self.settings.id, term));
                    if before.is_some_and(|(_, p)| p != v.primary && !v.contains(p)) {
                        slot.failovers += 1;
                    }
                    tracing::info!(kind, view = ?v, synced = ?state.synced, "view decided and committed");
                }
            }
        }
        slot.vs = next;
        Ok(reply)
    }

    /// Brings `kind`'s slot level with the committed state.
    fn sync(&self, t: &mut Term, kind: &str) -> Result<(), AuthorityError> {
        let slot = t
            .kinds
            .get_mut(kind)
            .ok_or_else(|| AuthorityError::UnknownKind(kind.into()))?;
        self.sm.read(|d| {
            if let Some(k) = d.control.kinds.get(kind) {
                slot.sync(k);
            }
        });
        Ok(())
    }

    /// Answers a replica's ping (received at `received`).
    /// A member registered at run time pings from its URL for the first time: committed,
    /// it becomes a proven member that others may send the cluster token.
    async fn prove(
        &self,
        g: &mut Option<Term>,
        kind: &str,
        id: ReplicaId,
    ) -> Result<(), AuthorityError> {
        let p = Proposal::Prove {
            kind: kind.into(),
            id,
        };
        match self.propose(p).await {
            Ok(_) => {
                if let Some(t) = g.as_mut() {
                    self.sync(t, kind)?;
                }
                tracing::info!(kind, id, "registered replica proven (pinged from its URL)");
                Ok(())
            }
            Err(e) => {
                *g = None;
                Err(e)
            }
        }
    }

    /// Answers a replica's ping (received at `received`).
    pub async fn ping(
        &self,
        kind: &str,
        request: PingRequest,
        received: Instant,
    ) -> Result<PingAnswer, AuthorityError> {
        let PingRequest { ping, url } = request;
        let from = ping.from;
        let (view, lead_from, members) = {
            let mut g = self.acquire().await?;
            let t = g.as_mut().expect("acquired");
            self.sync(t, kind)?;
            let slot = t.kinds.get_mut(kind).expect("synced");
            let Some(registered) = slot.members.urls.get(&from).cloned() else {
                return Err(AuthorityError::NotMember {
                    kind: kind.into(),
                    id: from,
                });
            };
            if slot.members.unproven.contains(&from) {
                if registered.trim_end_matches('/') != url.trim_end_matches('/') {
                    return Err(AuthorityError::WrongUrl {
                        kind: kind.into(),
                        id: from,
                        registered,
                        url,
                    });
                }
                self.prove(&mut g, kind, from).await?;
            }
            let t = g.as_mut().expect("acquired");
            let slot = t.kinds.get_mut(kind).expect("synced");
            slot.seen
                .insert(ping.from, (received, ping.epoch, ping.applied));
            let members = slot.members.proven();
            let current = slot.vs.view().cloned();
            match self.step(&mut g, kind, VsEvent::Ping(ping)).await? {
                Some((view, lead_from)) => (view, lead_from, members),
                None => (current, Epoch::MAX, members),
            }
        };
        // Only an answer naming the pinger primary renews a read lease; it needs a
        // leadership confirmation. Any other answer is a committed view, harmless if it is
        // old (a replica never goes back to a lower epoch).
        if view.as_ref().is_some_and(|v| v.primary == from) {
            self.confirmer
                .confirm()
                .await
                .map_err(AuthorityError::Unconfirmed)?;
        }
        Ok(PingAnswer {
            view,
            lead_from,
            members,
            coordinators: self.members().into_values().collect(),
        })
    }

    /// One tick of every kind's view service (a no-op unless this node leads).
    pub async fn tick(&self) {
        let Ok(mut g) = self.acquire().await else {
            return;
        };
        let kinds: Vec<String> = g
            .as_ref()
            .map_or_else(Vec::new, |t| t.kinds.keys().cloned().collect());
        for kind in kinds {
            if let Some(t) = g.as_mut() {
                let _ = self.sync(t, &kind);
            } else {
                return;
            }
            if let Err(e) = self.step(&mut g, &kind, VsEvent::Tick).await {
                tracing::warn!(kind, error = %e, "view service tick not committed");
                return;
            }
        }
        if let Some(t) = g.as_ref() {
            let reports = t
                .kinds
                .iter()
                .map(|(k, slot)| (k.clone(), self.report_of(slot)))
                .collect();
            *self.reports.lock() = reports;
        }
    }

    fn report_of(&self, slot: &Slot) -> KindReport {
        KindReport {
            view: slot.vs.view().cloned(),
            acked: slot.vs.acked(),
            synced: slot.vs.synced().iter().copied().collect(),
            members: slot.members.proven(),
            unproven: slot
                .members
                .unproven
                .iter()
                .filter_map(|id| Some((*id, slot.members.urls.get(id)?.clone())))
                .collect(),
            view_changes: slot.view_changes,
            failovers: slot.failovers,
            replicas: slot
                .seen
                .iter()
                .map(|(id, (at, epoch, applied))| ReplicaSeen {
                    id: *id,
                    heartbeat_age_ms: at.elapsed().as_millis() as u64,
                    epoch: *epoch,
                    applied: *applied,
                })
                .collect(),
            decided_by: slot
                .decided_by
                .map(|(coordinator, term)| DecidedBy { coordinator, term }),
            coordinators: self.members(),
            version: slot.version,
        }
    }

    /// The last reports made while leading (empty on a follower): for `/metrics`.
    pub fn cached_reports(&self) -> BTreeMap<String, KindReport> {
        if self.leading_for().is_none() {
            return BTreeMap::new();
        }
        self.reports.lock().clone()
    }

    /// The leader's report of `kind` once its committed version differs from `known`,
    /// or after `wait` (a long poll: routers learn of a change at once without asking
    /// ten times a second).
    pub async fn report_after(
        &self,
        kind: &str,
        known: u64,
        wait: Duration,
    ) -> Result<KindReport, AuthorityError> {
        let mut changes = self.sm.changes();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let version = self
                .sm
                .read(|d| d.control.kinds.get(kind).map(|k| k.version))
                .ok_or_else(|| AuthorityError::UnknownKind(kind.into()))?;
            if version != known {
                break;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => continue,
                _ => break,
            }
        }
        self.report(kind).await
    }

    /// The leader's report of `kind` (`GET /vs/{kind}/view`).
    pub async fn report(&self, kind: &str) -> Result<KindReport, AuthorityError> {
        let report = {
            let mut g = self.acquire().await?;
            let t = g.as_mut().expect("acquired");
            self.sync(t, kind)?;
            self.report_of(&t.kinds[kind])
        };
        self.confirmer
            .confirm()
            .await
            .map_err(AuthorityError::Unconfirmed)?;
        Ok(report)
    }

    /// The replicated kinds this group decides.
    pub fn kinds(&self) -> Vec<String> {
        self.sm.read(|d| d.control.kinds.keys().cloned().collect())
    }

    /// Scale out: adds a replica at `url` to `kind`; answers its id.
    pub async fn register(&self, kind: &str, url: &str) -> Result<ReplicaId, AuthorityError> {
        let mut g = self.acquire().await?;
        let p = Proposal::Register {
            kind: kind.into(),
            url: url.into(),
        };
        match self.propose(p).await {
            Ok(Applied::Registered { id, .. }) => {
                if let Some(t) = g.as_mut() {
                    self.sync(t, kind)?;
                }
                tracing::info!(kind, id, url, "replica registered");
                Ok(id)
            }
            Ok(Applied::Refused(r)) => Err(AuthorityError::Refused(r)),
            Ok(other) => Err(AuthorityError::Unconfirmed(format!(
                "unexpected outcome of a registration: {other:?}"
            ))),
            Err(e) => {
                *g = None;
                Err(e)
            }
        }
    }

    /// Scale in: retires replica `id` of `kind` (refused while that would lose the last
    /// copy of committed writes, or while the view is unacknowledged).
    pub async fn unregister(&self, kind: &str, id: ReplicaId) -> Result<(), AuthorityError> {
        let mut g = self.acquire().await?;
        let p = Proposal::Unregister {
            kind: kind.into(),
            id,
        };
        match self.propose(p).await {
            Ok(Applied::Done { .. }) => {
                if let Some(t) = g.as_mut() {
                    self.sync(t, kind)?;
                }
                tracing::info!(kind, id, "replica retired");
                Ok(())
            }
            Ok(Applied::Refused(r)) => Err(AuthorityError::Refused(r)),
            Ok(other) => Err(AuthorityError::Unconfirmed(format!(
                "unexpected outcome of a retirement: {other:?}"
            ))),
            Err(e) => {
                *g = None;
                Err(e)
            }
        }
    }

    /// Reserves the id of a coordinator about to be added (ids are never reused).
    pub async fn reserve_coordinator(&self) -> Result<CoordinatorId, AuthorityError> {
        if self.raft.metrics().borrow().state != ServerState::Leader {
            return Err(self.not_leader());
        }
        match self.propose(Proposal::ReserveCoordinator).await? {
            Applied::Coordinator { id } => Ok(id),
            other => Err(AuthorityError::Unconfirmed(format!(
                "unexpected outcome of a reservation: {other:?}"
            ))),
        }
    }
}
