//! The nemesis: carries out the faults of the seeded schedule ([`super::schedule`]) on
//! the local cluster.
//!
//! Faults run in up to four lanes at once: one for the catalog replicas, one for the
//! order replicas, one for the cache and the frontends, one for the coordinators. Each
//! lane carries a fault out, undoes it, waits (bounded) until its service has every
//! replica back in the view and synced (for a coordinator fault: until a leader answers,
//! the coordinator hit is back in the group, and every catalog and order replica is in
//! its view and synced), pauses, and deals the next. The coordinators have a lane of
//! their own so that at most one of them is down at a time (two of three would stop the
//! group, a different fault). Which replica is primary, and which coordinator leads, at
//! the moment of a fault is asked of the cluster.
use super::history::{FaultRecord, History};
use super::net::{Net, Rule};
use super::schedule::{FaultKind, Lane, LaneKind, Plan};
use super::wrapper::gid_offset;
use anyhow::anyhow;
use bookstore_common::config::Kind;
use bookstore_replication_core::wire::CoordinatorRole;
use infra::local::LocalCluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The primary and a backup of a service, and whether the view service said so (or they
/// are guesses).
type Roles = (u32, u32, bool);

/// What the lanes share.
pub struct Nemesis {
    pub lc: tokio::sync::Mutex<LocalCluster>,
    pub net: Option<Net>,
    pub history: Arc<History>,
    pub gid_base: u32,
    pub settle_limit: Duration,
    coordinators: bookstore_common::coordinators::Coordinators,
    /// For asking one coordinator about itself (`/coordinator/status`).
    status_client: bookstore_common::client::Client,
    /// How many servers of each kind (replicas of a service, coordinators, frontends).
    counts: BTreeMap<Kind, usize>,
    hosts: BTreeMap<(Kind, u32), String>,
    urls: BTreeMap<(Kind, u32), String>,
}

/// About the length of a coordinator election: a follower campaigns once it has heard
/// nothing for its leader lease and election timeout (300 ms + 150-300 ms at the default
/// 50 ms heartbeat), then needs a round of votes (0.57-0.63 s measured in release builds).
const ELECTION: Duration = Duration::from_millis(700);

/// What a coordinator says of itself (the fields of `CoordinatorStatus` used here).
#[derive(Debug, Clone, serde::Deserialize)]
struct CoordinatorSays {
    role: CoordinatorRole,
    term: u64,
    leader: Option<u64>,
}

impl Nemesis {
    pub fn new(
        lc: LocalCluster,
        net: Option<Net>,
        history: Arc<History>,
        gid_base: u32,
    ) -> Nemesis {
        let client = bookstore_common::client::Client::with_timeout(
            &lc.options.cluster_token,
            Duration::from_millis(300),
        );
        let coordinators = bookstore_common::coordinators::Coordinators::new(
            client.clone(),
            lc.cluster.urls(Kind::Coordinator),
        );
        let mut counts = BTreeMap::new();
        let mut hosts = BTreeMap::new();
        let mut urls = BTreeMap::new();
        for (kind, id, e) in lc.cluster.all() {
            *counts.entry(kind).or_insert(0) += 1;
            hosts.insert((kind, id), e.host.clone());
            urls.insert((kind, id), e.url());
        }
        Nemesis {
            lc: tokio::sync::Mutex::new(lc),
            net,
            history,
            gid_base,
            settle_limit: Duration::from_secs(6),
            coordinators,
            status_client: client,
            counts,
            hosts,
            urls,
        }
    }

    fn gid(&self, kind: Kind, id: u32) -> u32 {
        self.gid_base + gid_offset(kind.name(), id)
    }

    fn host(&self, kind: Kind, id: u32) -> String {
        self.hosts.get(&(kind, id)).cloned().unwrap_or_default()
    }

    /// The view of `kind` from the coordinator leader: (primary, backups, synced).
    pub async fn view(&self, kind: Kind) -> Option<(u32, Vec<u32>, Vec<u32>)> {
        let r = self
            .coordinators
            .view(kind.name(), Duration::from_millis(300))
            .await
            .ok()?;
        let v = r.view?;
        Some((v.primary, v.backups, r.synced))
    }

    /// Primary and one backup of `kind` (asks the view service for up to 1 s; falls
    /// back to replica 0 as primary).
    async fn roles(&self, kind: Kind, rng: &mut StdRng) -> Roles {
        let n = *self.counts.get(&kind).unwrap_or(&1) as u32;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if let Some((p, backups, _)) = self.view(kind).await {
                let others: Vec<u32> = if backups.is_empty() {
                    (0..n).filter(|i| *i != p).collect()
                } else {
                    backups
                };
                let b = others.choose(rng).copied().unwrap_or((p + 1) % n);
                return (p, b, true);
            }
            if Instant::now() > deadline {
                return (0, 1 % n, false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every replica of `kind` is in the view and synced (bounded).
    pub async fn settle(&self, kind: Kind) -> bool {
        let n = *self.counts.get(&kind).unwrap_or(&1);
        let deadline = Instant::now() + self.settle_limit;
        while Instant::now() < deadline {
            if let Some((_, backups, synced)) = self.view(kind).await {
                if backups.len() + 1 == n && synced.len() == backups.len() {
                    return true;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// What coordinator `id` says of itself, if it answers within 300 ms.
    async fn coordinator_says(&self, id: u32) -> Option<CoordinatorSays> {
        let url = self.urls.get(&(Kind::Coordinator, id))?;
        self.status_client
            .get_json(&format!("{url}/coordinator/status"))
            .await
            .ok()
    }

    /// The coordinator that says it leads in the highest term above `above`, among
    /// all but `except`: (id, term).
    async fn coordinator_leader(&self, except: Option<u32>, above: u64) -> Option<(u32, u64)> {
        let n = *self.counts.get(&Kind::Coordinator).unwrap_or(&1) as u32;
        let mut leader: Option<(u32, u64)> = None;
        for id in (0..n).filter(|i| Some(*i) != except) {
            if let Some(s) = self.coordinator_says(id).await {
                if s.role == CoordinatorRole::Leader
                    && s.term > above
                    && leader.is_none_or(|(_, t)| s.term > t)
                {
                    leader = Some((id, s.term));
                }
            }
        }
        leader
    }

    /// The coordinator leader and its term, and one follower chosen with `rng`; asks
    /// for up to 1 s, then falls back to coordinator 0 as leader (`None`: no leader
    /// found).
    async fn coordinator_roles(&self, rng: &mut StdRng) -> (u32, u32, Option<u64>) {
        let n = *self.counts.get(&Kind::Coordinator).unwrap_or(&1) as u32;
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            if let Some((l, term)) = self.coordinator_leader(None, 0).await {
                let others: Vec<u32> = (0..n).filter(|i| *i != l).collect();
                return (l, others.choose(rng).copied().unwrap_or(l), Some(term));
            }
            if Instant::now() > deadline {
                return (0, 1 % n, None);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to `limit`) until a coordinator other than `old` leads in a term
    /// above `term`: (its id, how long it took).
    async fn new_leader(&self, old: u32, term: u64, limit: Duration) -> Option<(u32, Duration)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some((l, _)) = self.coordinator_leader(Some(old), term).await {
                return Some((l, start.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        None
    }

    /// Holds a pause or isolation of coordinator `id`: a leader (of `term`) until a
    /// successor leads (at most 3 s) and `hold` more, a follower an election's length and
    /// `hold` more. Returns who succeeded it and when, for the fault's target, or that
    /// nobody did (a problem, for the fault's note).
    async fn hold_coordinator(
        &self,
        id: u32,
        term: Option<u64>,
        hold: Duration,
    ) -> anyhow::Result<String> {
        let said = match term {
            Some(term) => match self.new_leader(id, term, Duration::from_secs(3)).await {
                Some((l, after)) => Ok(format!(
                    ", coordinator {l} led after {:.2} s",
                    after.as_secs_f64()
                )),
                None => Err(anyhow!("no successor to coordinator {id} within 3 s")),
            },
            None => {
                tokio::time::sleep(ELECTION).await;
                Ok(String::new())
            }
        };
        tokio::time::sleep(hold).await;
        said
    }

    /// Waits (bounded) until a coordinator leader answers with authority and coordinator
    /// `id` follows it (or is it) in the same term.
    async fn coordinator_back(&self, id: u32) -> bool {
        let deadline = Instant::now() + self.settle_limit;
        while Instant::now() < deadline {
            if self.view(Kind::Catalog).await.is_some() {
                if let Some(me) = self.coordinator_says(id).await {
                    let in_term = match me.leader {
                        Some(l) if l == u64::from(id) => me.role == CoordinatorRole::Leader,
                        Some(l) => {
                            me.role == CoordinatorRole::Follower
                                && self.coordinator_says(l as u32).await.is_some_and(|ls| {
                                    ls.role == CoordinatorRole::Leader && ls.term == me.term
                                })
                        }
                        None => false,
                    };
                    if in_term {
                        return true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    async fn kill(&self, kind: Kind, id: u32) -> anyhow::Result<()> {
        self.lc.lock().await.kill9(kind, id).await
    }

    async fn restart(&self, kind: Kind, id: u32) -> anyhow::Result<()> {
        let mut last = anyhow::anyhow!("not restarted");
        for _ in 0..3 {
            match self.lc.lock().await.restart(kind, id).await {
                Ok(()) => return Ok(()),
                Err(e) if e.to_string().contains("still running") => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last)
    }

    async fn signal(&self, kind: Kind, id: u32, sig: i32) -> anyhow::Result<()> {
        self.lc.lock().await.signal(kind, id, sig)
    }

    /// Kills `kind` `id` (SIGKILL), waits `hold` and starts it again.
    async fn kill_for(&self, kind: Kind, id: u32, hold: Duration, notes: &mut Notes) {
        notes.add(self.kill(kind, id).await);
        tokio::time::sleep(hold).await;
        notes.add(self.restart(kind, id).await);
    }

    /// Stops `kind` `id` (SIGSTOP) while `during` runs, then lets it go on (SIGCONT).
    async fn paused_during<T>(
        &self,
        kind: Kind,
        id: u32,
        notes: &mut Notes,
        during: impl Future<Output = T>,
    ) -> T {
        notes.add(self.signal(kind, id, libc::SIGSTOP).await);
        let out = during.await;
        notes.add(self.signal(kind, id, libc::SIGCONT).await);
        out
    }

    /// Cuts `kind` `id` off the network while `during` runs; `None` (and a note) when it
    /// could not be cut.
    async fn isolated_during<T>(
        &self,
        kind: Kind,
        id: u32,
        notes: &mut Notes,
        during: impl Future<Output = T>,
    ) -> Option<T> {
        let net = self.net.as_ref().expect("partitions need the net");
        match net.isolate(self.gid(kind, id), &self.host(kind, id)) {
            Ok(rules) => {
                let out = during.await;
                for r in &rules {
                    notes.add(net.remove(r));
                }
                Some(out)
            }
            Err(e) => {
                notes.add(Err(e));
                None
            }
        }
    }

    /// Carries out one fault and undoes it; returns the record.
    pub async fn run(&self, plan: &Plan, rng: &mut StdRng) -> FaultRecord {
        let mut notes = Notes::default();
        // The coordinator a coordinator fault hit.
        let mut coordinator = 0;
        let (target, start_ns) = match plan.kind {
            FaultKind::Kill
            | FaultKind::Pause
            | FaultKind::Isolate
            | FaultKind::PartitionPrimary
            | FaultKind::FreezeKill => {
                let roles = self.roles(plan.service, rng).await;
                match plan.kind {
                    FaultKind::PartitionPrimary => {
                        self.partition_primary(plan, roles, &mut notes).await
                    }
                    FaultKind::FreezeKill => self.freeze_kill(plan, roles, rng, &mut notes).await,
                    _ => self.replica_fault(plan, roles, &mut notes).await,
                }
            }
            FaultKind::KillCache | FaultKind::RestartFrontend => {
                let kind = plan.service;
                let n = *self.counts.get(&kind).unwrap_or(&1) as u32;
                let id = plan.pick % n.max(1);
                let target = format!("{kind} {id}");
                let t = self.history.fault_started(plan.kind.name(), &target);
                self.kill_for(kind, id, plan.hold, &mut notes).await;
                (target, t)
            }
            FaultKind::KillCoordinator
            | FaultKind::PauseCoordinator
            | FaultKind::IsolateCoordinator => {
                let (id, target, t) = self.coordinator_fault(plan, rng, &mut notes).await;
                coordinator = id;
                (target, t)
            }
        };
        let end_ns = self.history.now_ns();
        for u in self.unsettled(plan, coordinator).await {
            notes.add(Err(anyhow!("{u} within {:?}", self.settle_limit)));
        }
        let record = FaultRecord {
            kind: plan.kind.name().to_string(),
            target,
            start_ns,
            end_ns,
            note: notes.0.join("; "),
        };
        self.history.fault_ended(record.clone());
        record
    }

    /// Kill, pause or isolate a replica (the primary or a backup, as planned).
    async fn replica_fault(
        &self,
        plan: &Plan,
        (p, b, known): Roles,
        notes: &mut Notes,
    ) -> (String, u64) {
        let kind = plan.service;
        let id = if plan.primary { p } else { b };
        let role = if plan.primary { "primary" } else { "backup" };
        let target = format!(
            "{kind} {id} ({role}{})",
            if known {
                ""
            } else {
                "?, view service unreachable"
            }
        );
        let t = self.history.fault_started(plan.kind.name(), &target);
        let hold = async { tokio::time::sleep(plan.hold).await };
        match plan.kind {
            FaultKind::Kill => self.kill_for(kind, id, plan.hold, notes).await,
            FaultKind::Pause => self.paused_during(kind, id, notes, hold).await,
            _ => self
                .isolated_during(kind, id, notes, hold)
                .await
                .unwrap_or(()),
        }
        (target, t)
    }

    /// Cut the primary off from its backups (both ways), the rest of the network intact.
    async fn partition_primary(
        &self,
        plan: &Plan,
        (p, _, known): Roles,
        notes: &mut Notes,
    ) -> (String, u64) {
        let kind = plan.service;
        let n = *self.counts.get(&kind).unwrap_or(&1) as u32;
        let target = format!(
            "{kind} {p} (primary{}) | its backups",
            if known { "" } else { "?" }
        );
        let t = self.history.fault_started(plan.kind.name(), &target);
        let net = self.net.as_ref().expect("partitions need the net");
        let mut rules: Vec<Rule> = Vec::new();
        for b in (0..n).filter(|b| *b != p) {
            for (from, to) in [(p, b), (b, p)] {
                match net.block_group_to(self.gid(kind, from), &self.host(kind, to)) {
                    Ok(r) => rules.push(r),
                    Err(e) => notes.add(Err(e)),
                }
            }
        }
        tokio::time::sleep(plan.hold).await;
        for r in &rules {
            notes.add(net.remove(r));
        }
        (target, t)
    }

    /// Freeze a backup, kill the primary before the freeze is noticed, then thaw.
    async fn freeze_kill(
        &self,
        plan: &Plan,
        (p, b, known): Roles,
        rng: &mut StdRng,
        notes: &mut Notes,
    ) -> (String, u64) {
        let kind = plan.service;
        let target = format!(
            "{kind} {b} (backup) frozen, {kind} {p} (primary{}) killed",
            if known { "" } else { "?" }
        );
        let t = self.history.fault_started(plan.kind.name(), &target);
        notes.add(self.signal(kind, b, libc::SIGSTOP).await);
        // Less than the failure timeout (300 ms): the view service must not
        // notice the frozen backup before the primary dies.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(80..=150))).await;
        notes.add(self.kill(kind, p).await);
        notes.add(self.signal(kind, b, libc::SIGCONT).await);
        tokio::time::sleep(plan.hold).await;
        notes.add(self.restart(kind, p).await);
        (target, t)
    }

    /// Kill, pause or isolate a coordinator (the leader or a follower, as planned).
    /// Returns the coordinator it hit, the target and the start.
    async fn coordinator_fault(
        &self,
        plan: &Plan,
        rng: &mut StdRng,
        notes: &mut Notes,
    ) -> (u32, String, u64) {
        let kind = plan.service;
        let (l, f, term) = self.coordinator_roles(rng).await;
        let id = if plan.primary { l } else { f };
        let role = if plan.primary { "leader" } else { "follower" };
        let mut target = format!(
            "coordinator {id} ({role}{})",
            if term.is_some() {
                ""
            } else {
                "?, no leader found"
            }
        );
        let t = self.history.fault_started(plan.kind.name(), &target);
        // Only a leader known to be one waits for its successor.
        let term = term.filter(|_| plan.primary);
        let hold = self.hold_coordinator(id, term, plan.hold);
        let held = match plan.kind {
            FaultKind::KillCoordinator => {
                self.kill_for(kind, id, plan.hold, notes).await;
                None
            }
            FaultKind::PauseCoordinator => Some(self.paused_during(kind, id, notes, hold).await),
            _ => self.isolated_during(kind, id, notes, hold).await,
        };
        match held {
            Some(Ok(said)) => target.push_str(&said),
            Some(Err(e)) => notes.add(Err(e)),
            None => {}
        }
        (id, target, t)
    }

    /// After a fault: what did not come back in sync within the settle limit.
    async fn unsettled(&self, plan: &Plan, coordinator: u32) -> Vec<String> {
        let mut unsettled = Vec::new();
        match plan.kind.lane() {
            LaneKind::Replica => {
                if !self.settle(plan.service).await {
                    unsettled.push(format!("{} not back in sync", plan.service));
                }
            }
            LaneKind::Coordinator => {
                if !self.coordinator_back(coordinator).await {
                    unsettled.push(format!("no leader, or coordinator {coordinator} not back"));
                }
                for service in [Kind::Catalog, Kind::Order] {
                    if !self.settle(service).await {
                        unsettled.push(format!("{service} not back in sync"));
                    }
                }
            }
            LaneKind::CacheFrontend => {}
        }
        unsettled
    }

    /// Runs one lane until `until`; the fault under way when it comes is finished.
    pub async fn run_lane(self: Arc<Self>, mut lane: Lane, seed: u64, until: Instant) {
        let mut rng = StdRng::seed_from_u64(seed ^ 0x6e6d);
        // Let the load start first.
        tokio::time::sleep(Duration::from_millis(300)).await;
        while Instant::now() < until {
            let plan = lane.next_plan();
            self.run(&plan, &mut rng).await;
            let left = until.saturating_duration_since(Instant::now());
            tokio::time::sleep(plan.gap.min(left)).await;
        }
    }

    /// Undoes everything: removes every partition, SIGCONTs every replica, restarts
    /// every server that is down. Returns what could not be done.
    pub async fn heal(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(net) = &self.net {
            if let Err(e) = net.heal() {
                problems.push(format!("{e:#}"));
            }
        }
        let mut lc = self.lc.lock().await;
        let servers: Vec<(Kind, u32)> = lc.servers.iter().map(|s| (s.kind, s.id)).collect();
        for (kind, id) in servers {
            if lc.pid_of(kind, id).is_some() {
                let _ = lc.signal(kind, id, libc::SIGCONT);
            }
        }
        while let Some((name, status)) = lc.exited() {
            problems.push(format!("{name} had exited by itself: {status}"));
        }
        let servers: Vec<(Kind, u32)> = lc.servers.iter().map(|s| (s.kind, s.id)).collect();
        for (kind, id) in servers {
            if lc.pid_of(kind, id).is_none() {
                if let Err(e) = lc.restart(kind, id).await {
                    problems.push(format!("{e:#}"));
                }
            }
        }
        problems
    }
}

/// What went wrong while a fault was carried out or undone, in order.
#[derive(Default)]
struct Notes(Vec<String>);

impl Notes {
    fn add(&mut self, r: anyhow::Result<()>) {
        if let Err(e) = r {
            self.0.push(format!("{e:#}"));
        }
    }
}
