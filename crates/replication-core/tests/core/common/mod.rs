//! Deterministic in-memory harness: simulated network, disks, view service, replicas and a
//! toy stock state machine (one book; `buy(request_id)` sells a copy if any are left and
//! de-duplicates request ids). Shared by the simulation and targeted tests.
#![allow(dead_code)]

use bookstore_replication_core::lease::ReadLease;
use bookstore_replication_core::protocol::{
    Command, Config, DurableState, Entry, Event, LogIndex, Msg, Outcome, ReplicaId, RequestId,
    Role, SnapshotMeta, View,
};
use bookstore_replication_core::viewservice::{
    Ping, ViewService, VsCommand, VsConfig, VsEvent, VsState,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Toy state machine: stock of one book.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stock {
    pub remaining: u64,
    pub sold: u64,
    /// request id -> did the buy succeed
    pub seen: BTreeMap<u64, bool>,
    pub applied: LogIndex,
    pub applied_epoch: u64,
}

impl Stock {
    pub fn new(stock: u64) -> Self {
        Stock {
            remaining: stock,
            ..Default::default()
        }
    }
    pub fn apply(&mut self, e: &Entry) {
        assert_eq!(e.index, self.applied + 1, "apply out of order");
        self.applied = e.index;
        self.applied_epoch = e.epoch;
        if e.data.len() != 8 {
            return; // no-op
        }
        let req = u64::from_le_bytes(e.data[..8].try_into().unwrap());
        if self.seen.contains_key(&req) {
            return;
        }
        let ok = self.remaining > 0;
        if ok {
            self.remaining -= 1;
            self.sold += 1;
        }
        self.seen.insert(req, ok);
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap()
    }
    pub fn decode(b: &[u8]) -> Self {
        serde_json::from_slice(b).unwrap()
    }
}

pub fn buy(req: u64) -> Vec<u8> {
    req.to_le_bytes().to_vec()
}

/// Endpoint: a replica or the view service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Node {
    R(ReplicaId),
    Vs,
}

#[derive(Clone, Debug)]
pub enum Payload {
    Replica(Msg),
    /// A ping and the (global) tick it was sent at.
    Ping(Ping, u64),
    /// The view, `lead_from`, and the tick the answered ping was sent at.
    VsReply(Option<View>, u64, u64),
}

#[derive(Clone, Debug)]
pub struct Envelope {
    pub from: Node,
    pub to: Node,
    pub payload: Payload,
}

#[derive(Clone, Debug, Default)]
pub struct Disk {
    pub incarnation: u64,
    pub view: Option<View>,
    pub snapshot: Option<(SnapshotMeta, Stock)>,
    pub entries: Vec<Entry>,
}

#[derive(Clone, Debug)]
enum DiskOp {
    Entries(Vec<Entry>),
    View(View),
    Snapshot(SnapshotMeta, Stock),
    Install(SnapshotMeta, Stock),
}

pub struct Server {
    pub replica: Option<ReplicaBox>,
    pub sm: Stock,
    pub disk: Disk,
    queue: VecDeque<DiskOp>,
    /// The primary's read lease, in global ticks (volatile: a crash loses it).
    pub lease: ReadLease<u64>,
}

pub type ReplicaBox = bookstore_replication_core::protocol::Replica;

#[derive(Clone, Debug)]
pub struct Acked {
    pub request: u64,
    /// Epoch of the primary that acknowledged it.
    pub epoch: u64,
    pub index: LogIndex,
    pub success: bool,
}

pub struct Client {
    pub next_seq: u64,
    pub outstanding: Option<u64>,
    pub target: ReplicaId,
    pub waiting: u32,
}

pub struct Cluster {
    pub n: u32,
    pub stock: u64,
    pub cfg: Config,
    pub vs_cfg: VsConfig,
    pub servers: Vec<Server>,
    pub vs: Option<ViewService>,
    pub vs_disk: VsState,
    pub net: Vec<Envelope>,
    /// Cut links (unordered pairs).
    pub cut: BTreeSet<(Node, Node)>,
    pub acked: Vec<Acked>,
    pub replies: Vec<(u64, Outcome)>,
    /// index -> (epoch, data) of every entry applied anywhere
    pub applied_at: BTreeMap<LogIndex, (u64, Vec<u8>)>,
    pub violations: Vec<String>,
    pub clients: Vec<Client>,
    next_incarnation: u64,
    pub trace: bool,
    pub snapshots_installed: usize,
    /// Global time: how many times everything ticked (the view service's own ticks stop
    /// while it is down; replicas' ticks stop while they are down).
    pub now: u64,
    /// A restarted view service (a new coordinator leader) waits out earlier leases
    /// (`ViewService::take_over`); `false` is the mutation.
    pub lease_wait: bool,
    /// Reads answered by lease-holding primaries (every tick, each one reads).
    pub lease_reads: u64,
}

impl Cluster {
    pub fn new(n: u32, stock: u64, cfg: Config, vs_cfg: VsConfig) -> Self {
        let mut c = Cluster {
            n,
            stock,
            cfg: cfg.clone(),
            vs_cfg: vs_cfg.clone(),
            servers: Vec::new(),
            vs: Some(ViewService::new(vs_cfg)),
            vs_disk: VsState::default(),
            net: Vec::new(),
            cut: BTreeSet::new(),
            acked: Vec::new(),
            replies: Vec::new(),
            applied_at: BTreeMap::new(),
            violations: Vec::new(),
            clients: Vec::new(),
            next_incarnation: 1,
            trace: std::env::var("TRACE").is_ok(),
            snapshots_installed: 0,
            now: 0,
            lease_wait: true,
            lease_reads: 0,
        };
        for id in 0..n {
            let inc = c.fresh_incarnation();
            let disk = Disk {
                incarnation: inc,
                ..Default::default()
            };
            let replica = ReplicaBox::recover(id, cfg.clone(), DurableState::empty(inc));
            c.servers.push(Server {
                replica: Some(replica),
                sm: Stock::new(stock),
                disk,
                queue: VecDeque::new(),
                lease: ReadLease::new(),
            });
        }
        c
    }

    fn fresh_incarnation(&mut self) -> u64 {
        self.next_incarnation += 1;
        self.next_incarnation
    }

    pub fn add_clients(&mut self, k: u32) {
        for c in 0..k {
            self.clients.push(Client {
                next_seq: (c as u64 + 1) * 1_000_000,
                outstanding: None,
                target: 0,
                waiting: 0,
            });
        }
    }

    pub fn replica(&self, r: ReplicaId) -> &ReplicaBox {
        self.servers[r as usize]
            .replica
            .as_ref()
            .expect("replica is up")
    }

    pub fn is_up(&self, r: ReplicaId) -> bool {
        self.servers[r as usize].replica.is_some()
    }

    pub fn linked(&self, a: Node, b: Node) -> bool {
        let k = if a <= b { (a, b) } else { (b, a) };
        !self.cut.contains(&k)
    }

    pub fn cut_link(&mut self, a: Node, b: Node) {
        let k = if a <= b { (a, b) } else { (b, a) };
        self.cut.insert(k);
    }

    pub fn isolate(&mut self, r: ReplicaId) {
        for o in 0..self.n {
            if o != r {
                self.cut_link(Node::R(r), Node::R(o));
            }
        }
        self.cut_link(Node::R(r), Node::Vs);
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    // ----- executing events and commands ---------------------------------------------

    pub fn feed(&mut self, r: ReplicaId, ev: Event) {
        let Some(rep) = self.servers[r as usize].replica.as_mut() else {
            return;
        };
        if self.trace {
            eprintln!("r{r} <- {ev:?}");
        }
        let cmds = rep.handle(ev);
        self.run_commands(r, cmds);
    }

    fn run_commands(&mut self, r: ReplicaId, cmds: Vec<Command>) {
        for cmd in cmds {
            if self.trace {
                eprintln!("r{r} -> {cmd:?}");
            }
            match cmd {
                Command::Send { to, msg } => self.net.push(Envelope {
                    from: Node::R(r),
                    to: Node::R(to),
                    payload: Payload::Replica(msg),
                }),
                Command::PingVs(p) => self.net.push(Envelope {
                    from: Node::R(r),
                    to: Node::Vs,
                    payload: Payload::Ping(p, self.now),
                }),
                Command::Persist { entries } => self.servers[r as usize]
                    .queue
                    .push_back(DiskOp::Entries(entries)),
                Command::PersistView(v) => {
                    self.servers[r as usize].queue.push_back(DiskOp::View(v))
                }
                Command::Apply { entry } => {
                    match self.applied_at.get(&entry.index) {
                        Some((ep, d)) if *ep != entry.epoch || *d != entry.data => {
                            self.violations.push(format!(
                                "r{r} applied a different entry at index {}: {:?} vs {:?}",
                                entry.index,
                                (entry.epoch, &entry.data),
                                (ep, d)
                            ))
                        }
                        Some(_) => {}
                        None => {
                            self.applied_at
                                .insert(entry.index, (entry.epoch, entry.data.clone()));
                        }
                    }
                    self.servers[r as usize].sm.apply(&entry);
                }
                Command::Reply { request, outcome } => {
                    if let Outcome::Committed { index } = outcome {
                        let sm = &self.servers[r as usize].sm;
                        let epoch = self.servers[r as usize]
                            .replica
                            .as_ref()
                            .and_then(|x| x.view())
                            .map_or(0, |v| v.epoch);
                        match sm.seen.get(&request.0) {
                            Some(ok) => self.acked.push(Acked {
                                request: request.0,
                                epoch,
                                index,
                                success: *ok,
                            }),
                            None => self.violations.push(format!(
                                "r{r} acknowledged request {} that its state does not contain",
                                request.0
                            )),
                        }
                    }
                    self.on_client_reply(request.0, outcome);
                }
                Command::TakeSnapshot => {
                    let sm = self.servers[r as usize].sm.clone();
                    let meta = SnapshotMeta {
                        index: sm.applied,
                        epoch: sm.applied_epoch,
                    };
                    self.servers[r as usize]
                        .queue
                        .push_back(DiskOp::Snapshot(meta, sm));
                }
                Command::SendSnapshot { to } => {
                    let sm = self.servers[r as usize].sm.clone();
                    let meta = SnapshotMeta {
                        index: sm.applied,
                        epoch: sm.applied_epoch,
                    };
                    self.feed(
                        r,
                        Event::SnapshotForPeer {
                            to,
                            meta,
                            data: sm.encode(),
                        },
                    );
                }
                Command::InstallSnapshot { meta, data } => {
                    let sm = Stock::decode(&data);
                    assert_eq!(sm.applied, meta.index);
                    self.snapshots_installed += 1;
                    self.servers[r as usize].sm = sm.clone();
                    self.servers[r as usize]
                        .queue
                        .push_back(DiskOp::Install(meta, sm));
                }
            }
        }
    }

    /// Complete the oldest pending disk operation of `r`.
    pub fn flush_one(&mut self, r: ReplicaId) -> bool {
        let s = &mut self.servers[r as usize];
        if s.replica.is_none() {
            return false;
        }
        let Some(op) = s.queue.pop_front() else {
            return false;
        };
        let ev = match op {
            DiskOp::Entries(entries) => {
                let first = entries[0].index;
                s.disk.entries.retain(|e| e.index < first);
                let last = entries.last().unwrap();
                let ev = Event::Persisted {
                    index: last.index,
                    epoch: last.epoch,
                };
                s.disk.entries.extend(entries);
                ev
            }
            DiskOp::View(v) => {
                let epoch = v.epoch;
                s.disk.view = Some(v);
                Event::ViewPersisted { epoch }
            }
            DiskOp::Snapshot(meta, sm) => {
                let bytes = sm.encode().len() as u64;
                if s.disk
                    .snapshot
                    .as_ref()
                    .is_none_or(|(m, _)| m.index < meta.index)
                {
                    s.disk.snapshot = Some((meta, sm));
                    s.disk.entries.retain(|e| e.index > meta.index);
                }
                Event::SnapshotTaken { meta, bytes }
            }
            DiskOp::Install(meta, sm) => {
                s.disk.snapshot = Some((meta, sm));
                s.disk.entries.clear();
                Event::SnapshotInstalled { meta }
            }
        };
        self.feed(r, ev);
        true
    }

    pub fn flush_all(&mut self, r: ReplicaId) {
        while self.flush_one(r) {}
    }

    pub fn deliver(&mut self, env: Envelope) {
        if !self.linked(env.from, env.to) {
            return;
        }
        match (env.to, env.payload) {
            (Node::Vs, Payload::Ping(p, sent)) => {
                let Some(vs) = self.vs.as_mut() else {
                    return;
                };
                let cmds = vs.handle(VsEvent::Ping(p));
                self.run_vs(cmds, sent);
            }
            (Node::R(r), Payload::Replica(msg)) => {
                let Node::R(from) = env.from else {
                    unreachable!()
                };
                self.feed(r, Event::Message { from, msg });
            }
            (Node::R(r), Payload::VsReply(view, lead_from, sent)) => {
                let named = view.as_ref().map(|v| (v.epoch, v.primary));
                self.feed(r, Event::VsReply { view, lead_from });
                // As the runtime does: an answer naming this replica primary of the epoch
                // it leads renews its lease, counted from the ping's sending.
                let until = sent + self.lease_ticks();
                let s = &mut self.servers[r as usize];
                if let (Some(rep), Some(named)) = (s.replica.as_ref(), named) {
                    let leading = (rep.role() == Role::Primary)
                        .then(|| rep.view().map(|v| v.epoch))
                        .flatten();
                    s.lease.renew(r, leading, named, until);
                }
            }
            _ => unreachable!(),
        }
    }

    /// How long a lease lasts: one tick less than the view service's dead time.
    pub fn lease_ticks(&self) -> u64 {
        self.vs_cfg.dead_ticks - 1
    }

    fn run_vs(&mut self, cmds: Vec<VsCommand>, sent: u64) {
        for c in cmds {
            match c {
                VsCommand::Persist(st) => self.vs_disk = st,
                VsCommand::Reply {
                    to,
                    view,
                    lead_from,
                } => self.net.push(Envelope {
                    from: Node::Vs,
                    to: Node::R(to),
                    payload: Payload::VsReply(view, lead_from, sent),
                }),
            }
        }
    }

    pub fn tick_vs(&mut self) {
        if let Some(vs) = self.vs.as_mut() {
            let cmds = vs.handle(VsEvent::Tick);
            self.run_vs(cmds, 0);
        }
    }

    pub fn tick_all(&mut self) {
        self.now += 1;
        self.tick_vs();
        for r in 0..self.n {
            self.feed(r, Event::Tick);
        }
    }

    /// Deliver every in-flight message (FIFO) and complete all disk writes, repeatedly,
    /// until nothing is left (bounded: an endless exchange is recorded as a violation).
    pub fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            for r in 0..self.n {
                while self.flush_one(r) {
                    progressed = true;
                }
            }
            if !self.net.is_empty() {
                let msgs = std::mem::take(&mut self.net);
                for m in msgs {
                    self.deliver(m);
                }
                progressed = true;
            }
            if !progressed {
                return;
            }
        }
        self.net.clear();
        self.violations
            .push("livelock: messages kept flowing after 10,000 rounds".into());
    }

    /// `k` rounds of: tick everything, then settle.
    pub fn run_rounds(&mut self, k: usize) {
        for _ in 0..k {
            self.tick_all();
            self.settle();
            self.check();
        }
    }

    // ----- faults ----------------------------------------------------------------------

    pub fn crash(&mut self, r: ReplicaId, lose_disk: bool) {
        if self.trace {
            eprintln!("CRASH r{r} lose_disk={lose_disk}");
        }
        let inc = self.fresh_incarnation();
        let s = &mut self.servers[r as usize];
        s.replica = None;
        s.queue.clear();
        s.lease = ReadLease::new();
        if lose_disk {
            s.disk = Disk {
                incarnation: inc,
                ..Default::default()
            };
        }
    }

    pub fn restart(&mut self, r: ReplicaId) {
        let stock = self.stock;
        let cfg = self.cfg.clone();
        let s = &mut self.servers[r as usize];
        if s.replica.is_some() {
            return;
        }
        if self.trace {
            eprintln!("RESTART r{r}");
        }
        s.sm = s
            .disk
            .snapshot
            .as_ref()
            .map_or_else(|| Stock::new(stock), |(_, sm)| sm.clone());
        let durable = DurableState {
            incarnation: s.disk.incarnation,
            view: s.disk.view.clone(),
            snapshot: s.disk.snapshot.as_ref().map(|(m, _)| *m),
            entries: s.disk.entries.clone(),
        };
        s.replica = Some(ReplicaBox::recover(r, cfg, durable));
    }

    pub fn crash_vs(&mut self) {
        self.vs = None;
    }

    pub fn restart_vs(&mut self) {
        if self.vs.is_none() {
            self.vs = Some(ViewService::take_over(
                self.vs_cfg.clone(),
                self.vs_disk.clone(),
                self.lease_wait,
            ));
        }
    }

    // ----- clients ----------------------------------------------------------------------

    pub fn client_write(&mut self, r: ReplicaId, request: u64) {
        self.feed(
            r,
            Event::ClientWrite {
                request: RequestId(request),
                data: buy(request),
            },
        );
    }

    fn on_client_reply(&mut self, request: u64, outcome: Outcome) {
        self.replies.push((request, outcome.clone()));
        for c in self.clients.iter_mut() {
            if c.outstanding != Some(request) {
                continue;
            }
            match outcome {
                Outcome::Committed { .. } => c.outstanding = None,
                Outcome::NotPrimary { hint: Some(h) } => c.target = h,
                Outcome::NotPrimary { hint: None } => c.target = (c.target + 1) % self.n,
                Outcome::Retry => {}
            }
            c.waiting = 0;
        }
    }

    /// One client step: send a new request or retry the outstanding one (same id).
    pub fn client_step(&mut self, c: usize, rng: &mut StdRng) {
        let n = self.n;
        let cl = &mut self.clients[c];
        let req = match cl.outstanding {
            Some(r) => {
                cl.waiting += 1;
                if cl.waiting < 4 {
                    return; // still waiting for an answer
                }
                cl.waiting = 0;
                if rng.gen_bool(0.3) {
                    cl.target = rng.gen_range(0..n);
                }
                r
            }
            None => {
                cl.next_seq += 1;
                cl.outstanding = Some(cl.next_seq);
                cl.waiting = 0;
                cl.next_seq
            }
        };
        let target = cl.target;
        self.client_write(target, req);
    }

    // ----- checks ----------------------------------------------------------------------

    pub fn vs_view(&self) -> Option<View> {
        self.vs
            .as_ref()
            .and_then(|v| v.view().cloned())
            .or_else(|| self.vs_disk.view.clone())
    }

    /// Safety checks that must hold after every step.
    pub fn check(&mut self) {
        let sold_acked = self
            .acked
            .iter()
            .filter(|a| a.success)
            .map(|a| a.request)
            .collect::<BTreeSet<_>>()
            .len() as u64;
        if sold_acked > self.stock {
            self.violations.push(format!(
                "oversold: {sold_acked} acknowledged successful buys, stock {}",
                self.stock
            ));
        }
        for r in 0..self.n {
            let s = &self.servers[r as usize];
            let Some(rep) = s.replica.as_ref() else {
                continue;
            };
            if s.sm.sold > self.stock {
                self.violations
                    .push(format!("r{r} sold {} > stock", s.sm.sold));
            }
            // A serving primary of epoch E holds every write acknowledged in epochs <= E
            // (a deposed primary that does not know it yet may miss later ones: its reads
            // are stale, which is allowed).
            if rep.role() == Role::Primary && rep.can_serve_reads() {
                let e = rep.view().map_or(0, |v| v.epoch);
                for a in self.acked.iter().filter(|a| a.epoch <= e) {
                    match s.sm.seen.get(&a.request) {
                        Some(ok) if *ok == a.success => {}
                        other => self.violations.push(format!(
                            "serving primary r{r} (epoch {:?}) lost acknowledged request {} (success {}): has {:?}",
                            rep.view().map(|v| v.epoch),
                            a.request,
                            a.success,
                            other
                        )),
                    }
                }
            }
        }
        // Reads under a lease are linearizable: a primary that holds its read lease now
        // shows every write acknowledged so far, in any epoch.
        for r in 0..self.n {
            let s = &self.servers[r as usize];
            let Some(rep) = s.replica.as_ref() else {
                continue;
            };
            let epoch = rep.view().map_or(0, |v| v.epoch);
            if rep.role() != Role::Primary
                || !rep.can_serve_reads()
                || !s.lease.holds(epoch, self.now)
            {
                continue;
            }
            self.lease_reads += 1;
            if let Some(a) = self
                .acked
                .iter()
                .find(|a| s.sm.seen.get(&a.request) != Some(&a.success))
            {
                self.violations.push(format!(
                    "stale read: r{r}, primary of epoch {epoch} under its read lease (now {}), \
                     misses request {} acknowledged in epoch {}",
                    self.now, a.request, a.epoch
                ));
            }
        }
        // dedup so a persistent problem does not flood the list
        self.violations.dedup();
    }

    pub fn serving_primary(&self) -> Option<ReplicaId> {
        (0..self.n).find(|r| {
            self.is_up(*r)
                && self.replica(*r).role() == Role::Primary
                && self.replica(*r).can_serve_reads()
        })
    }

    pub fn assert_ok(&self) {
        assert!(
            self.violations.is_empty(),
            "violations: {:#?}",
            self.violations
        );
    }

    // ----- randomized steps -------------------------------------------------------------

    /// Deliver (or drop/duplicate) one random in-flight message.
    pub fn random_delivery(&mut self, rng: &mut StdRng, p_drop: f64, p_dup: f64) {
        if self.net.is_empty() {
            return;
        }
        let i = rng.gen_range(0..self.net.len());
        let env = if rng.gen_bool(p_dup) {
            self.net[i].clone()
        } else {
            self.net.swap_remove(i)
        };
        if rng.gen_bool(p_drop) {
            return;
        }
        self.deliver(env);
    }

    pub fn new_rng(seed: u64) -> StdRng {
        StdRng::seed_from_u64(seed)
    }
}
