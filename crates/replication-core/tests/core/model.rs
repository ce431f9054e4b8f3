//! Stateright model check of the real protocol and view-service code.
//!
//! The model runs the pure [`Replica`] and [`ViewService`] state machines under a
//! nondeterministic environment: 2 clients each buying one copy (retrying with the same
//! request id), a lossy reordering network (a message may be delivered in any order or
//! never), at most one replica crash (volatile state lost, disk kept) and restart, and
//! partitions from the view service (a `Round` in which one replica's pings are lost).
//! Disk writes complete synchronously, to keep the state space small; the primary's
//! sending before its own write lands (and the restart fence that makes it safe) is
//! checked by `sim.rs` and `targeted.rs`, whose disks are queues a crash empties.
//!
//! It starts from a steady state (view acknowledged, every backup synced) computed by
//! running the same code, and checks with bounded BFS:
//! * `always` never more copies acknowledged as sold than in stock;
//! * `always` every acknowledged buy is in the state of every serving primary of the
//!   same or a later epoch (and a primary never acknowledges what it has not applied).
//!
//! Each mutation knob (`fencing = false`, `sync_ack = false`) must produce a
//! counter-example: a model that cannot fail proves nothing.
use crate::common;

use bookstore_replication_core::protocol::{
    Command, Config, DurableState, Entry, Event, Msg, Outcome, Replica, ReplicaId, RequestId, Role,
    View,
};
use bookstore_replication_core::viewservice::{ViewService, VsCommand, VsConfig, VsEvent};
use common::{buy, Stock};
use stateright::{Checker, HasDiscoveries, Model, Property};
use std::collections::{BTreeSet, VecDeque};

const CLIENTS: usize = 2;
const ATTEMPTS: u8 = 2;
/// Bound on in-flight messages; heartbeats (sent in a `Round`) are dropped earlier.
const MAX_NET: usize = 10;
const MAX_NET_HEARTBEAT: usize = 4;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Disk {
    view: Option<View>,
    entries: Vec<Entry>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Client {
    target: ReplicaId,
    attempts_left: u8,
    done: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct State {
    reps: Vec<Option<Replica>>,
    sms: Vec<Stock>,
    disks: Vec<Disk>,
    vs: ViewService,
    net: BTreeSet<(ReplicaId, ReplicaId, Msg)>,
    clients: Vec<Client>,
    /// (request, success, epoch of the acknowledging primary)
    acked: BTreeSet<(u64, bool, u64)>,
    /// A primary acknowledged a request its state machine does not contain.
    bad_ack: bool,
    crashes_left: u8,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Action {
    /// `Round(None)`: one heartbeat round: the VS ticks, every live replica ticks and pings
    /// the VS. `Round(Some(r))`: `dead_ticks + 1` such rounds in which `r`'s pings are lost
    /// (long enough for the VS to declare `r` dead).
    Round(Option<ReplicaId>),
    Deliver(ReplicaId, ReplicaId, Msg),
    Write(usize),
    Crash(ReplicaId),
    Restart(ReplicaId),
}

struct BookModel {
    n: u32,
    stock: u64,
    crashes: u8,
    /// In-flight bound for heartbeat messages (0: heartbeats are always lost).
    max_net_heartbeat: usize,
    cfg: Config,
}

impl BookModel {
    fn vs_config(&self) -> VsConfig {
        VsConfig {
            replicas: self.n,
            dead_ticks: 1,
            startup_ticks: 1,
        }
    }

    /// Feed `ev` to `r` and run the runtime until quiescent. Pings are delivered only if
    /// `pings` (otherwise they are lost).
    fn run(&self, s: &mut State, r: ReplicaId, ev: Event, pings: bool) {
        let cap = if matches!(ev, Event::Tick) {
            self.max_net_heartbeat
        } else {
            MAX_NET
        };
        let mut work = VecDeque::from([(r, ev)]);
        while let Some((r, ev)) = work.pop_front() {
            let Some(rep) = s.reps[r as usize].as_mut() else {
                continue;
            };
            for cmd in rep.handle(ev) {
                match cmd {
                    Command::Send { to, msg } => {
                        if s.net.len() < cap {
                            s.net.insert((r, to, msg));
                        }
                    }
                    Command::PingVs(p) => {
                        if !pings {
                            continue;
                        }
                        for vc in s.vs.handle(VsEvent::Ping(p)) {
                            if let VsCommand::Reply {
                                view, lead_from, ..
                            } = vc
                            {
                                work.push_back((r, Event::VsReply { view, lead_from }));
                            }
                        }
                    }
                    Command::Persist { entries } => {
                        let d = &mut s.disks[r as usize];
                        let first = entries[0].index;
                        d.entries.retain(|e| e.index < first);
                        let last = entries.last().unwrap();
                        work.push_back((
                            r,
                            Event::Persisted {
                                index: last.index,
                                epoch: last.epoch,
                            },
                        ));
                        d.entries.extend(entries);
                    }
                    Command::PersistView(v) => {
                        let epoch = v.epoch;
                        s.disks[r as usize].view = Some(v);
                        work.push_back((r, Event::ViewPersisted { epoch }));
                    }
                    Command::Apply { entry } => s.sms[r as usize].apply(&entry),
                    Command::Reply { request, outcome } => {
                        let epoch = s.reps[r as usize]
                            .as_ref()
                            .and_then(|x| x.view())
                            .map_or(0, |v| v.epoch);
                        self.on_reply(s, r, request, outcome, epoch)
                    }
                    Command::TakeSnapshot
                    | Command::SendSnapshot { .. }
                    | Command::InstallSnapshot { .. } => {
                        unreachable!("the model retains the whole log")
                    }
                }
            }
        }
    }

    fn on_reply(&self, s: &mut State, r: ReplicaId, req: RequestId, out: Outcome, epoch: u64) {
        let c = (req.0 - 1) as usize;
        match out {
            Outcome::Committed { .. } => {
                match s.sms[r as usize].seen.get(&req.0) {
                    Some(ok) => {
                        s.acked.insert((req.0, *ok, epoch));
                    }
                    None => s.bad_ack = true,
                }
                s.clients[c].done = true;
            }
            Outcome::NotPrimary { hint } => {
                s.clients[c].target = hint.unwrap_or((s.clients[c].target + 1) % self.n)
            }
            Outcome::Retry => {}
        }
    }

    fn round(&self, s: &mut State, silent: Option<ReplicaId>) {
        s.vs.handle(VsEvent::Tick);
        for r in 0..self.n {
            self.run(s, r, Event::Tick, Some(r) != silent);
        }
    }

    /// Start all replicas and run rounds (delivering everything) until the view is
    /// acknowledged and every backup is synced.
    fn steady_state(&self) -> State {
        let mut s = State {
            reps: (0..self.n)
                .map(|id| {
                    Some(Replica::recover(
                        id,
                        self.cfg.clone(),
                        DurableState::empty(1),
                    ))
                })
                .collect(),
            sms: vec![Stock::new(self.stock); self.n as usize],
            disks: vec![
                Disk {
                    view: None,
                    entries: vec![]
                };
                self.n as usize
            ],
            vs: ViewService::new(self.vs_config()),
            net: BTreeSet::new(),
            // Client c first guesses replica c (a wrong guess is answered with a hint).
            clients: (0..CLIENTS)
                .map(|c| Client {
                    target: c as ReplicaId % self.n,
                    attempts_left: ATTEMPTS,
                    done: false,
                })
                .collect(),
            acked: BTreeSet::new(),
            bad_ack: false,
            crashes_left: self.crashes,
        };
        for _ in 0..20 {
            self.round(&mut s, None);
            while let Some((from, to, msg)) = s.net.pop_first() {
                self.run(&mut s, to, Event::Message { from, msg }, false);
            }
            let synced = s.vs.view().is_some_and(|v| {
                s.vs.acked()
                    && v.backups.len() + 1 == self.n as usize
                    && v.backups.iter().all(|b| s.vs.synced().contains(b))
            });
            if synced {
                s.net.clear();
                return s;
            }
        }
        panic!("no steady state: {:?}", s.vs.state());
    }
}

impl Model for BookModel {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![self.steady_state()]
    }

    fn actions(&self, s: &State, actions: &mut Vec<Action>) {
        actions.push(Action::Round(None));
        for r in 0..self.n {
            actions.push(Action::Round(Some(r)));
        }
        for (from, to, msg) in &s.net {
            actions.push(Action::Deliver(*from, *to, msg.clone()));
        }
        for (c, cl) in s.clients.iter().enumerate() {
            if !cl.done && cl.attempts_left > 0 && s.reps[cl.target as usize].is_some() {
                actions.push(Action::Write(c));
            }
        }
        for r in 0..self.n {
            if s.reps[r as usize].is_some() {
                if s.crashes_left > 0 {
                    actions.push(Action::Crash(r));
                }
            } else {
                actions.push(Action::Restart(r));
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let mut s = last.clone();
        match action {
            Action::Round(None) => self.round(&mut s, None),
            Action::Round(Some(r)) => {
                for _ in 0..=self.vs_config().dead_ticks {
                    self.round(&mut s, Some(r));
                }
            }
            Action::Deliver(from, to, msg) => {
                s.net.remove(&(from, to, msg.clone()));
                self.run(&mut s, to, Event::Message { from, msg }, false);
            }
            Action::Write(c) => {
                s.clients[c].attempts_left -= 1;
                let req = c as u64 + 1;
                let target = s.clients[c].target;
                self.run(
                    &mut s,
                    target,
                    Event::ClientWrite {
                        request: RequestId(req),
                        data: buy(req),
                    },
                    false,
                );
            }
            Action::Crash(r) => {
                s.crashes_left -= 1;
                s.reps[r as usize] = None;
                s.sms[r as usize] = Stock::new(self.stock);
                s.net.retain(|(_, to, _)| *to != r);
            }
            Action::Restart(r) => {
                let d = &s.disks[r as usize];
                s.reps[r as usize] = Some(Replica::recover(
                    r,
                    self.cfg.clone(),
                    DurableState {
                        incarnation: 1,
                        view: d.view.clone(),
                        snapshot: None,
                        entries: d.entries.clone(),
                    },
                ));
                self.run(&mut s, r, Event::Tick, false);
            }
        }
        Some(s)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::<Self>::always("never oversold", |m, s| {
                let sold: BTreeSet<u64> = s.acked.iter().filter(|a| a.1).map(|a| a.0).collect();
                sold.len() as u64 <= m.stock && s.sms.iter().all(|sm| sm.sold <= m.stock)
            }),
            Property::<Self>::always("acknowledged buy never lost", |_, s| {
                if s.bad_ack {
                    return false;
                }
                s.reps.iter().zip(&s.sms).all(|(rep, sm)| {
                    let Some(rep) = rep else { return true };
                    if rep.role() != Role::Primary || !rep.can_serve_reads() {
                        return true;
                    }
                    let e = rep.view().map_or(0, |v| v.epoch);
                    s.acked
                        .iter()
                        .filter(|a| a.2 <= e)
                        .all(|a| sm.seen.get(&a.0) == Some(&a.1))
                })
            }),
        ]
    }
}

fn cfg(fencing: bool, sync_ack: bool) -> Config {
    Config {
        heartbeat_ticks: 1,
        dead_ticks: 2,
        max_entries_per_msg: 8,
        max_retained_log: 1000,
        fencing,
        sync_ack,
        restart_fence: true,
    }
}

fn model(n: u32, stock: u64, fencing: bool, sync_ack: bool) -> BookModel {
    BookModel {
        n,
        stock,
        crashes: 1,
        max_net_heartbeat: MAX_NET_HEARTBEAT,
        cfg: cfg(fencing, sync_ack),
    }
}

fn check(m: BookModel, depth: usize, stop_at_failure: bool) -> impl Checker<BookModel> {
    let mut b = m.checker().target_max_depth(depth);
    if stop_at_failure {
        b = b.finish_when(HasDiscoveries::AnyFailures);
    }
    let c = b.spawn_bfs().join();
    eprintln!(
        "states: {} unique, max depth {}",
        c.unique_state_count(),
        c.max_depth()
    );
    c
}

#[test]
fn model_two_replicas_is_safe() {
    check(model(2, 1, true, true), 8, false).assert_properties();
}

#[test]
fn model_three_replicas_is_safe() {
    check(model(3, 1, true, true), 6, false).assert_properties();
}

#[test]
fn model_finds_bug_without_sync_ack() {
    let c = check(model(2, 1, true, false), 9, true);
    let path = c.assert_any_discovery("acknowledged buy never lost");
    eprintln!("counter-example: {:#?}", path.into_actions());
}

#[test]
fn model_finds_bug_without_fencing() {
    // Neither a crash nor a heartbeat is needed to break an unfenced protocol; leaving
    // them out keeps the search to depth 8 small.
    let m = BookModel {
        crashes: 0,
        max_net_heartbeat: 0,
        ..model(3, 1, false, true)
    };
    let c = check(m, 8, true);
    let found = c
        .discovery("acknowledged buy never lost")
        .or(c.discovery("never oversold"));
    let path = found.expect("a counter-example without fencing");
    eprintln!("counter-example: {:#?}", path.into_actions());
}

/// One step of a replayed scenario: the action it takes in a state.
type Step = Box<dyn Fn(&State) -> Action>;

/// The step that delivers the first message in the network from `from` to `to` that `is`.
fn deliver_first(from: ReplicaId, to: ReplicaId, is: fn(&Msg) -> bool) -> Step {
    Box::new(move |s| {
        let (f, t, m) = s
            .net
            .iter()
            .find(|(f, t, m)| *f == from && *t == to && is(m))
            .unwrap()
            .clone();
        Action::Deliver(f, t, m)
    })
}

/// Replays, step by step, the hand-derived counter-example for `fencing = false`:
/// `cargo test -p bookstore-replication-core --test core model::replay -- --ignored --nocapture`.
#[test]
#[ignore]
fn replay_fencing_scenario() {
    let m = model(3, 1, false, true);
    let mut s = m.init_states().pop().unwrap();
    let replicate = |m: &Msg| matches!(m, Msg::Replicate { entries, .. } if !entries.is_empty());
    let steps: Vec<Step> = vec![
        Box::new(|_| Action::Round(Some(0))),
        Box::new(|_| Action::Write(1)),
        deliver_first(1, 2, replicate),
        Box::new(|_| Action::Write(0)),
        deliver_first(0, 1, replicate),
        deliver_first(2, 1, |m| matches!(m, Msg::Ack { matched: 1, .. })),
    ];
    for st in steps {
        let a = st(&s);
        eprintln!("== {a:?}");
        s = m.next_state(&s, a).unwrap();
        eprintln!("vs {:?} net {:#?}", s.vs.view(), s.net);
        for (i, r) in s.reps.iter().enumerate() {
            let r = r.as_ref().unwrap();
            eprintln!(
                "r{i} {:?} e{} last {} commit {}",
                r.role(),
                r.known_epoch(),
                r.last_index(),
                r.commit_index()
            );
        }
        eprintln!("acked {:?} bad {}", s.acked, s.bad_ack);
        for p in m.properties() {
            eprintln!("{}: {}", p.name, (p.condition)(&m, &s));
        }
    }
}
