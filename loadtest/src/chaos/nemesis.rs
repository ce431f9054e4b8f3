//! The nemesis: a seeded schedule of faults, carried out on the local cluster.
//!
//! Faults run in up to three lanes at once: one for the catalog replicas, one for the
//! order replicas, one for the cache and the frontend. Each lane deals its kinds from a
//! shuffled deck (so every enabled kind comes up equally often), carries a fault out,
//! undoes it, waits for its service to have every replica back in the view and synced
//! (bounded), pauses, and deals the next. The schedule (kinds, targets as roles, hold
//! times, pauses) depends only on the seed; which replica is primary at that moment is
//! asked of the view service.
use super::history::{FaultRecord, History};
use super::net::{Net, Rule};
use super::wrapper::gid_offset;
use bookstore_common::config::Kind;
use infra::local::LocalCluster;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// SIGKILL a catalog or order replica (primary with odds 3:1), restart it.
    Kill,
    /// SIGSTOP a replica (primary 3:1) for longer than the failure timeout, then SIGCONT.
    Pause,
    /// Cut the primary off from its backups (not from the frontend or anyone else).
    PartitionPrimary,
    /// Cut one replica off from everything.
    Isolate,
    /// SIGSTOP the backup, SIGKILL the primary before the view service notices, SIGCONT
    /// the backup (it takes over), restart the old primary.
    FreezeKill,
    /// SIGKILL the cache, restart it.
    KillCache,
    /// SIGKILL frontend 0 (which hosts the view service), restart it.
    RestartFrontend,
}

impl FaultKind {
    pub const ALL: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::PartitionPrimary,
        FaultKind::Isolate,
        FaultKind::FreezeKill,
        FaultKind::KillCache,
        FaultKind::RestartFrontend,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::PartitionPrimary => "partition-primary",
            FaultKind::Isolate => "isolate",
            FaultKind::FreezeKill => "freeze-backup-kill-primary",
            FaultKind::KillCache => "kill-cache",
            FaultKind::RestartFrontend => "restart-frontend",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "freeze-kill" && *k == FaultKind::FreezeKill))
    }

    /// Needs iptables.
    pub fn needs_net(self) -> bool {
        matches!(self, FaultKind::PartitionPrimary | FaultKind::Isolate)
    }

    fn replica_fault(self) -> bool {
        !matches!(self, FaultKind::KillCache | FaultKind::RestartFrontend)
    }

    /// A colour for the timeline.
    pub fn colour(self) -> &'static str {
        match self {
            FaultKind::Kill => "#d62728",
            FaultKind::Pause => "#9467bd",
            FaultKind::PartitionPrimary => "#ff7f0e",
            FaultKind::Isolate => "#8c564b",
            FaultKind::FreezeKill => "#e377c2",
            FaultKind::KillCache => "#2ca02c",
            FaultKind::RestartFrontend => "#1f77b4",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: FaultKind,
    /// Catalog or order for replica faults.
    pub service: Kind,
    /// Aim at the primary (else a backup).
    pub primary: bool,
    /// How long the fault lasts (down time, pause, partition).
    pub hold: Duration,
    /// Pause after the fault (and the settling) before the next.
    pub gap: Duration,
}

/// Lane `lane` of the schedule of `seed`: an endless, reproducible sequence of plans.
pub struct Lane {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    service: Option<Kind>,
    deck: Vec<FaultKind>,
    pub hold_scale: f64,
}

impl Lane {
    /// The lanes for the enabled kinds: catalog, order, and cache+frontend.
    pub fn all(seed: u64, kinds: &[FaultKind], hold_scale: f64) -> Vec<Lane> {
        let replica: Vec<FaultKind> = kinds
            .iter()
            .copied()
            .filter(|k| k.replica_fault())
            .collect();
        let other: Vec<FaultKind> = kinds
            .iter()
            .copied()
            .filter(|k| !k.replica_fault())
            .collect();
        let mut lanes = Vec::new();
        for (i, (service, ks)) in [
            (Some(Kind::Catalog), replica.clone()),
            (Some(Kind::Order), replica),
            (None, other),
        ]
        .into_iter()
        .enumerate()
        {
            if !ks.is_empty() {
                lanes.push(Lane {
                    rng: StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(i as u64 + 1)),
                    kinds: ks,
                    service,
                    deck: Vec::new(),
                    hold_scale,
                });
            }
        }
        lanes
    }

    pub fn name(&self) -> &'static str {
        match self.service {
            Some(Kind::Catalog) => "catalog",
            Some(Kind::Order) => "order",
            _ => "cache+frontend",
        }
    }

    /// The next plan.
    pub fn next_plan(&mut self) -> Plan {
        if self.deck.is_empty() {
            self.deck = self.kinds.clone();
            self.deck.shuffle(&mut self.rng);
        }
        let kind = self.deck.pop().expect("a lane has kinds");
        let ms = |rng: &mut StdRng, lo: u64, hi: u64| Duration::from_millis(rng.gen_range(lo..=hi));
        let hold = match kind {
            FaultKind::Kill => ms(&mut self.rng, 150, 500),
            FaultKind::Pause => ms(&mut self.rng, 400, 800),
            FaultKind::PartitionPrimary | FaultKind::Isolate => ms(&mut self.rng, 400, 900),
            FaultKind::FreezeKill => ms(&mut self.rng, 200, 500),
            FaultKind::KillCache => ms(&mut self.rng, 100, 500),
            FaultKind::RestartFrontend => ms(&mut self.rng, 100, 400),
        };
        let hold = hold.mul_f64(self.hold_scale);
        let primary = match kind {
            FaultKind::Kill | FaultKind::Pause => self.rng.gen_bool(0.75),
            FaultKind::Isolate => self.rng.gen_bool(0.5),
            _ => true,
        };
        let service = match self.service {
            Some(s) => s,
            None if kind == FaultKind::KillCache => Kind::Cache,
            None => Kind::Frontend,
        };
        Plan {
            kind,
            service,
            primary,
            hold,
            // The cache+frontend lane is quicker: spread its faults out.
            gap: if self.service.is_some() {
                ms(&mut self.rng, 30, 120)
            } else {
                ms(&mut self.rng, 500, 1000)
            },
        }
    }
}

/// What the lanes share.
pub struct Nemesis {
    pub lc: tokio::sync::Mutex<LocalCluster>,
    pub net: Option<Net>,
    pub history: Arc<History>,
    pub gid_base: u32,
    pub settle_limit: Duration,
    coordinators: bookstore_common::coordinators::Coordinators,
    replicas: BTreeMap<Kind, usize>,
    hosts: BTreeMap<(Kind, u32), String>,
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
            client,
            lc.cluster.urls(Kind::Coordinator),
        );
        let mut replicas = BTreeMap::new();
        let mut hosts = BTreeMap::new();
        for (kind, id, e) in lc.cluster.all() {
            *replicas.entry(kind).or_insert(0) += 1;
            hosts.insert((kind, id), e.host.clone());
        }
        Nemesis {
            lc: tokio::sync::Mutex::new(lc),
            net,
            history,
            gid_base,
            settle_limit: Duration::from_secs(6),
            coordinators,
            replicas,
            hosts,
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
    async fn roles(&self, kind: Kind, rng: &mut StdRng) -> (u32, u32, bool) {
        let n = *self.replicas.get(&kind).unwrap_or(&1) as u32;
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
        let n = *self.replicas.get(&kind).unwrap_or(&1);
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

    async fn kill(&self, kind: Kind, id: u32) -> Result<(), String> {
        self.lc.lock().await.kill9(kind, id).await
    }

    async fn restart(&self, kind: Kind, id: u32) -> Result<(), String> {
        let mut last = String::new();
        for _ in 0..3 {
            match self.lc.lock().await.restart(kind, id).await {
                Ok(()) => return Ok(()),
                Err(e) if e.contains("still running") => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(last)
    }

    async fn signal(&self, kind: Kind, id: u32, sig: i32) -> Result<(), String> {
        self.lc.lock().await.signal(kind, id, sig)
    }

    /// Carries out one fault and undoes it; returns the record.
    pub async fn run(&self, plan: &Plan, rng: &mut StdRng) -> FaultRecord {
        let kind = plan.service;
        let mut notes: Vec<String> = Vec::new();
        let mut note = |r: Result<(), String>| {
            if let Err(e) = r {
                notes.push(e);
            }
        };
        let (target, start_ns) = match plan.kind {
            FaultKind::Kill | FaultKind::Pause | FaultKind::Isolate => {
                let (p, b, known) = self.roles(kind, rng).await;
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
                match plan.kind {
                    FaultKind::Kill => {
                        note(self.kill(kind, id).await);
                        tokio::time::sleep(plan.hold).await;
                        note(self.restart(kind, id).await);
                    }
                    FaultKind::Pause => {
                        note(self.signal(kind, id, libc::SIGSTOP).await);
                        tokio::time::sleep(plan.hold).await;
                        note(self.signal(kind, id, libc::SIGCONT).await);
                    }
                    _ => {
                        let net = self.net.as_ref().expect("partitions need the net");
                        match net.isolate(self.gid(kind, id), &self.host(kind, id)) {
                            Ok(rules) => {
                                tokio::time::sleep(plan.hold).await;
                                for r in &rules {
                                    note(net.remove(r));
                                }
                            }
                            Err(e) => note(Err(e)),
                        }
                    }
                }
                (target, t)
            }
            FaultKind::PartitionPrimary => {
                let (p, _, known) = self.roles(kind, rng).await;
                let n = *self.replicas.get(&kind).unwrap_or(&1) as u32;
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
                            Err(e) => note(Err(e)),
                        }
                    }
                }
                tokio::time::sleep(plan.hold).await;
                for r in &rules {
                    note(net.remove(r));
                }
                (target, t)
            }
            FaultKind::FreezeKill => {
                let (p, b, known) = self.roles(kind, rng).await;
                let target = format!(
                    "{kind} {b} (backup) frozen, {kind} {p} (primary{}) killed",
                    if known { "" } else { "?" }
                );
                let t = self.history.fault_started(plan.kind.name(), &target);
                note(self.signal(kind, b, libc::SIGSTOP).await);
                // Less than the failure timeout (300 ms): the view service must not
                // notice the frozen backup before the primary dies.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(80..=150))).await;
                note(self.kill(kind, p).await);
                note(self.signal(kind, b, libc::SIGCONT).await);
                tokio::time::sleep(plan.hold).await;
                note(self.restart(kind, p).await);
                (target, t)
            }
            FaultKind::KillCache | FaultKind::RestartFrontend => {
                let target = format!("{kind} 0");
                let t = self.history.fault_started(plan.kind.name(), &target);
                note(self.kill(kind, 0).await);
                tokio::time::sleep(plan.hold).await;
                note(self.restart(kind, 0).await);
                (target, t)
            }
        };
        let end_ns = self.history.now_ns();
        let mut note_text = notes.join("; ");
        if plan.kind.replica_fault() && !self.settle(kind).await {
            if !note_text.is_empty() {
                note_text.push_str("; ");
            }
            note_text.push_str(&format!(
                "{kind} not back in sync within {:?}",
                self.settle_limit
            ));
        }
        let record = FaultRecord {
            kind: plan.kind.name().to_string(),
            target,
            start_ns,
            end_ns,
            note: note_text,
        };
        self.history.fault_ended(record.clone());
        record
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
                problems.push(e);
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
                    problems.push(e);
                }
            }
        }
        problems
    }
}
