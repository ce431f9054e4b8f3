//! The schedule of the nemesis: the kinds of fault, and the lanes that deal them. A
//! lane deals its kinds from a shuffled deck, so every enabled kind comes up equally
//! often, and draws each fault's target (as a role), hold time and the pause after it.
//! All of it depends only on the seed; [`super::nemesis`] carries the plans out.
use bookstore_common::config::Kind;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use std::time::Duration;

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
    /// SIGKILL one of the frontends, restart it.
    RestartFrontend,
    /// SIGKILL a coordinator (the leader with odds 2:1), restart it from its data.
    KillCoordinator,
    /// SIGSTOP a coordinator (leader 2:1) for longer than an election, then SIGCONT.
    PauseCoordinator,
    /// Cut a coordinator (leader 2:1) off from every other server, then heal.
    IsolateCoordinator,
}

/// Which lane deals a kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LaneKind {
    /// Catalog or order replicas (one lane each).
    Replica,
    CacheFrontend,
    Coordinator,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::PartitionPrimary,
        FaultKind::Isolate,
        FaultKind::FreezeKill,
        FaultKind::KillCache,
        FaultKind::RestartFrontend,
        FaultKind::KillCoordinator,
        FaultKind::PauseCoordinator,
        FaultKind::IsolateCoordinator,
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
            FaultKind::KillCoordinator => "kill-coordinator",
            FaultKind::PauseCoordinator => "pause-coordinator",
            FaultKind::IsolateCoordinator => "isolate-coordinator",
        }
    }

    pub fn parse(s: &str) -> Option<FaultKind> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.name() == s || (s == "freeze-kill" && *k == FaultKind::FreezeKill))
    }

    /// Needs iptables.
    pub fn needs_net(self) -> bool {
        matches!(
            self,
            FaultKind::PartitionPrimary | FaultKind::Isolate | FaultKind::IsolateCoordinator
        )
    }

    pub(super) fn lane(self) -> LaneKind {
        match self {
            FaultKind::KillCache | FaultKind::RestartFrontend => LaneKind::CacheFrontend,
            FaultKind::KillCoordinator
            | FaultKind::PauseCoordinator
            | FaultKind::IsolateCoordinator => LaneKind::Coordinator,
            _ => LaneKind::Replica,
        }
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
            FaultKind::KillCoordinator => "#17becf",
            FaultKind::PauseCoordinator => "#bcbd22",
            FaultKind::IsolateCoordinator => "#7f7f7f",
        }
    }
}

/// One planned fault.
#[derive(Debug, Clone)]
pub struct Plan {
    pub kind: FaultKind,
    /// Catalog or order for replica faults; cache, frontend or coordinator for the others.
    pub service: Kind,
    /// Aim at the primary (else a backup); for a coordinator fault, at the leader (else
    /// a follower).
    pub primary: bool,
    /// Which frontend a `restart-frontend` kills (modulo the number of frontends).
    pub pick: u32,
    /// How long the fault lasts (down time, pause, partition).
    pub hold: Duration,
    /// Pause after the fault (and the settling) before the next.
    pub gap: Duration,
}

/// Lane `lane` of the schedule of `seed`: an endless, reproducible sequence of plans.
pub struct Lane {
    rng: StdRng,
    kinds: Vec<FaultKind>,
    /// The replicated service of a replica lane.
    service: Option<Kind>,
    lane: LaneKind,
    deck: Vec<FaultKind>,
    pub hold_scale: f64,
}

impl Lane {
    /// The lanes for the enabled kinds: catalog, order, cache+frontend, coordinator.
    pub fn all(seed: u64, kinds: &[FaultKind], hold_scale: f64) -> Vec<Lane> {
        let of = |lane: LaneKind| -> Vec<FaultKind> {
            kinds.iter().copied().filter(|k| k.lane() == lane).collect()
        };
        let mut lanes = Vec::new();
        for (i, (service, lane)) in [
            (Some(Kind::Catalog), LaneKind::Replica),
            (Some(Kind::Order), LaneKind::Replica),
            (None, LaneKind::CacheFrontend),
            (None, LaneKind::Coordinator),
        ]
        .into_iter()
        .enumerate()
        {
            let ks = of(lane);
            if !ks.is_empty() {
                lanes.push(Lane {
                    rng: StdRng::seed_from_u64(seed.wrapping_mul(31).wrapping_add(i as u64 + 1)),
                    kinds: ks,
                    service,
                    lane,
                    deck: Vec::new(),
                    hold_scale,
                });
            }
        }
        lanes
    }

    pub fn name(&self) -> &'static str {
        match (self.lane, self.service) {
            (LaneKind::Replica, Some(Kind::Catalog)) => "catalog",
            (LaneKind::Replica, _) => "order",
            (LaneKind::CacheFrontend, _) => "cache+frontend",
            (LaneKind::Coordinator, _) => "coordinator",
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
            // From at once (a restarted leader leads again without an election, with
            // read leases of its former self still running) to past an election.
            FaultKind::KillCoordinator => ms(&mut self.rng, 0, 500),
            // A paused or cut-off leader stays away until a successor leads, then this
            // long more (it comes back while its successor takes over); a follower stays
            // away the length of an election and this long more.
            FaultKind::PauseCoordinator | FaultKind::IsolateCoordinator => {
                ms(&mut self.rng, 0, 400)
            }
        };
        let hold = hold.mul_f64(self.hold_scale);
        let primary = match kind {
            FaultKind::Kill | FaultKind::Pause => self.rng.gen_bool(0.75),
            FaultKind::Isolate => self.rng.gen_bool(0.5),
            FaultKind::KillCoordinator
            | FaultKind::PauseCoordinator
            | FaultKind::IsolateCoordinator => self.rng.gen_bool(2.0 / 3.0),
            _ => true,
        };
        let pick = if kind == FaultKind::RestartFrontend {
            self.rng.gen()
        } else {
            0
        };
        let service = match (self.lane, self.service) {
            (LaneKind::Replica, Some(s)) => s,
            (LaneKind::Coordinator, _) => Kind::Coordinator,
            _ if kind == FaultKind::KillCache => Kind::Cache,
            _ => Kind::Frontend,
        };
        let gap = match self.lane {
            LaneKind::Replica => ms(&mut self.rng, 30, 120),
            // The cache+frontend lane is quicker: spread its faults out.
            LaneKind::CacheFrontend => ms(&mut self.rng, 500, 1000),
            LaneKind::Coordinator => ms(&mut self.rng, 100, 300),
        };
        Plan {
            kind,
            service,
            primary,
            pick,
            hold,
            gap,
        }
    }
}
