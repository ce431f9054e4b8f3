//! The runtime of one replica: drives the pure [`Replica`] with real time, disk and
//! network.
//!
//! - a **driver task** owns the [`Replica`]; every input (tick, client write, message,
//!   view-service reply, disk completion) becomes an [`Event`], and the resulting
//!   [`Command`]s are executed in order;
//! - a **disk thread** owns the [`Wal`]: it takes every queued disk operation, writes them
//!   with one `fdatasync` (group commit) and reports completions in order;
//! - one **sender task per peer** batches queued messages into one HTTP POST
//!   (`/replication/msg?from=ID`, bincode body, cluster token; a snapshot in parts of
//!   [`crate::transfer::PART_BYTES`]); its queue holds
//!   [`PEER_QUEUE`] messages, past which messages are dropped (the protocol retransmits
//!   whatever is unacknowledged at each heartbeat);
//! - pings to the view service are HTTP POSTs to `{coordinator}/vs/{kind}/ping`, sent to
//!   the coordinator group's leader wherever it is ([`Coordinators`]);
//! - a primary serves reads only under a **read lease**: for [`NodeOptions::read_lease`]
//!   after it *sent* a ping that the view service answered with a view naming it
//!   primary of its current epoch. The view service declares a replica dead only
//!   [`crate::lease::DEAD_TICKS`] ticks after it *received* its last ping, and only then
//!   can a view without it be decided; the lease is one tick shorter. So a primary that
//!   is cut off, or paused, stops answering reads before any successor can commit, and a
//!   read never shows a state older than an acknowledged write (no stale read across a
//!   failover). While the view service is unreachable the primary keeps committing
//!   writes, but not answering reads: consistency over availability.
//!
//! The service's data plugs in as a [`StateMachine`]: deterministic `apply`, plus
//! `snapshot`/`restore` for compaction and state transfer. Reads go through
//! [`Node::read`], which refuses while the replica is not caught up or, as primary, holds
//! no read lease.
use crate::lease::ReadLease;
use crate::protocol::{
    Command, Config, DurableState, Entry, Epoch, Event, LogIndex, Msg, Outcome, Replica, ReplicaId,
    RequestId, Role, SnapshotMeta, View,
};
use crate::viewservice::Ping;
use crate::wal::{Wal, WalOptions};
use crate::wire::{PingAnswer, PingRequest};
use bookstore_common::client::Client;
use bookstore_common::coordinators::Coordinators;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// The replicated data of a service. `apply` must be deterministic: every replica
/// applies the same entries in the same order and must reach the same state.
pub trait StateMachine: Send + Sync + 'static {
    /// Applies the committed entry at `index`; returns the answer for the client.
    fn apply(&mut self, index: LogIndex, data: &[u8]) -> Vec<u8>;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
}

/// Why a write was not applied (or may not have been).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("not primary")]
    NotPrimary { hint: Option<ReplicaId> },
    #[error("outcome unknown (the primary stepped down); retry with the same request id")]
    Retry,
    #[error("replica is down")]
    Down,
}

/// What a replica reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub id: ReplicaId,
    pub up: bool,
    pub role: String,
    pub epoch: Epoch,
    pub primary: Option<ReplicaId>,
    pub backups: Vec<ReplicaId>,
    pub commit: LogIndex,
    pub applied: LogIndex,
    pub serving_reads: bool,
    /// Views (epochs) this replica has moved to since its process started.
    #[serde(default)]
    pub view_changes: u64,
}

/// Everything a replica needs to run.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    pub id: ReplicaId,
    /// Base URL of every replica of this kind, by id (this one included).
    pub peers: Vec<String>,
    /// This replica's kind (`catalog`, `order`): its view service is `/vs/{kind}`.
    pub kind: String,
    /// Base URLs of the coordinators (any of them; the leader is found from there).
    pub coordinators: Vec<String>,
    /// This replica's own base URL, sent with every ping: a replica registered at run time
    /// is trusted with the cluster token only once it pings from the URL it was
    /// registered with.
    pub url: String,
    /// The replica's data directory (WAL, snapshots, meta).
    pub data_dir: PathBuf,
    /// Length of one protocol tick (the view service's ticks must be as long: the read
    /// lease is counted in them).
    pub tick: Duration,
    pub protocol: Config,
    /// Cluster token for the HTTP calls.
    pub token: bookstore_common::auth::Secret,
}

impl NodeOptions {
    /// Defaults that fail over in well under a second on one machine: a 50 ms tick,
    /// heartbeats every 2 ticks, a backup gives up on its primary after 10 ticks.
    pub fn new(
        id: ReplicaId,
        peers: Vec<String>,
        kind: &str,
        coordinators: Vec<String>,
        data_dir: PathBuf,
        token: &str,
    ) -> Self {
        let url = peers.get(id as usize).cloned().unwrap_or_default();
        NodeOptions {
            id,
            peers,
            kind: kind.to_string(),
            coordinators,
            url,
            data_dir,
            tick: Duration::from_millis(50),
            protocol: Config {
                heartbeat_ticks: 2,
                dead_ticks: 10,
                // Mutation switches, for proving that the fault tests and checkers bite.
                // Never set them in production: they make the cluster unsafe.
                sync_ack: std::env::var_os("BOOKSTORE_UNSAFE_NO_SYNC_ACK").is_none(),
                fencing: std::env::var_os("BOOKSTORE_UNSAFE_NO_FENCING").is_none(),
                ..Config::default()
            },
            token: token.into(),
        }
    }
}

impl NodeOptions {
    /// How long a view-service answer naming this replica primary lets it serve reads,
    /// counted from when the ping was sent: one tick shorter than the view service's
    /// dead time ([`crate::lease::DEAD_TICKS`] ticks).
    pub fn read_lease(&self) -> Duration {
        self.tick * crate::lease::LEASE_TICKS as u32
    }
}

type WriteReply = oneshot::Sender<Result<Vec<u8>, SubmitError>>;

/// Messages queued for one peer at most; past it new ones are dropped (and counted).
pub const PEER_QUEUE: usize = 1024;

/// A peer replica: its base URL and the queue of its sender task.
struct Peer {
    base: String,
    tx: mpsc::Sender<Msg>,
}

enum Input {
    Tick,
    /// The view service's member table (replica id -> base URL).
    Members(BTreeMap<ReplicaId, String>),
    Write {
        data: Vec<u8>,
        reply: WriteReply,
    },
    /// The view service's answer to a ping sent at `sent`.
    VsAnswer {
        view: Option<View>,
        lead_from: Epoch,
        sent: Instant,
    },
    Event(Event),
    Fatal(String),
    Stop,
}

enum DiskOp {
    Persist(Vec<Entry>),
    View(View),
    Snapshot {
        meta: SnapshotMeta,
        data: Vec<u8>,
        received: bool,
    },
}

/// What the WAL's meta value holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    incarnation: u64,
    view: Option<View>,
}

struct Inner<S> {
    opts: NodeOptions,
    sm: RwLock<S>,
    initial: Box<dyn Fn() -> S + Send + Sync>,
    status: RwLock<Status>,
    /// The epoch this replica leads and until when it may serve reads in it.
    read_lease: Mutex<ReadLease<Instant>>,
    tx: Mutex<Option<mpsc::UnboundedSender<Input>>>,
    disk_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    client: Client,
    coordinators: Coordinators,
    /// Why the replica stopped on its own (a disk failure), until it boots again.
    failure: tokio::sync::watch::Sender<Option<String>>,
    /// The other replicas (id -> base URL): who may send replication messages.
    members: RwLock<BTreeMap<ReplicaId, String>>,
    /// Messages dropped because a peer's queue was full.
    dropped: std::sync::atomic::AtomicU64,
    /// Batches arriving in parts (snapshots), one per peer.
    transfers: crate::transfer::Assemblies,
}

/// A running replica (cheap to clone).
pub struct Node<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + e.data.len());
    v.extend_from_slice(&e.epoch.to_le_bytes());
    v.extend_from_slice(&e.data);
    v
}

fn decode_entry(index: LogIndex, payload: &[u8]) -> Result<Entry, String> {
    if payload.len() < 8 {
        return Err(format!("WAL record {index} is too short"));
    }
    let epoch = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    Ok(Entry {
        index,
        epoch,
        data: payload[8..].to_vec(),
    })
}

impl<S: StateMachine> Node<S> {
    /// Opens the data directory, recovers, and starts the replica. Must be called
    /// inside a tokio runtime. `initial` builds the state before any entry (the same
    /// on every replica).
    pub fn start(
        opts: NodeOptions,
        initial: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<Node<S>, String> {
        let client = Client::with_timeout(&opts.token, Duration::from_secs(2));
        let inner = Arc::new(Inner {
            sm: RwLock::new(initial()),
            initial: Box::new(initial),
            status: RwLock::new(Status {
                id: opts.id,
                ..Status::default()
            }),
            read_lease: Mutex::new(ReadLease::new()),
            tx: Mutex::new(None),
            disk_thread: Mutex::new(None),
            coordinators: Coordinators::new(client.clone(), opts.coordinators.clone()),
            client,
            failure: tokio::sync::watch::Sender::new(None),
            members: RwLock::new(
                (0..)
                    .zip(opts.peers.iter().cloned())
                    .filter(|(id, _)| *id != opts.id)
                    .collect(),
            ),
            dropped: std::sync::atomic::AtomicU64::new(0),
            transfers: Default::default(),
            opts,
        });
        let node = Node { inner };
        node.boot()?;
        Ok(node)
    }

    fn boot(&self) -> Result<(), String> {
        self.inner.failure.send_replace(None);
        let opts = &self.inner.opts;
        std::fs::create_dir_all(&opts.data_dir)
            .map_err(|e| format!("{}: {e}", opts.data_dir.display()))?;
        let (mut wal, rec) =
            Wal::open(&opts.data_dir, WalOptions::default()).map_err(|e| e.to_string())?;
        if let Some(repair) = &rec.tail_repair {
            tracing::warn!(?repair, "repaired a torn WAL tail");
        }
        let meta = match &rec.meta {
            Some(m) => bincode::deserialize::<Meta>(m).map_err(|e| format!("WAL meta: {e}"))?,
            None => {
                let m = Meta {
                    // Never 0 (a clock before 1970): 0 is no disk yet.
                    incarnation: bookstore_common::clock::now_ms().max(1),
                    view: None,
                };
                wal.write_meta(&bincode::serialize(&m).expect("meta encodes"))
                    .map_err(|e| e.to_string())?;
                m
            }
        };
        let mut sm = (self.inner.initial)();
        let mut applied = (0, 0);
        let snapshot = match rec.snapshot {
            Some(s) => {
                if s.data.len() < 8 {
                    return Err("snapshot too short".into());
                }
                let epoch = u64::from_le_bytes(s.data[..8].try_into().expect("8 bytes"));
                sm.restore(&s.data[8..])?;
                applied = (s.index, epoch);
                Some(SnapshotMeta {
                    index: s.index,
                    epoch,
                })
            }
            None => None,
        };
        *self.inner.sm.write() = sm;
        let entries = rec
            .records
            .iter()
            .map(|r| decode_entry(r.index, &r.payload))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::info!(
            id = opts.id,
            entries = entries.len(),
            snapshot = ?snapshot,
            view = ?meta.view,
            "replica recovered from disk"
        );
        let durable = DurableState {
            incarnation: meta.incarnation,
            view: meta.view,
            snapshot,
            entries,
        };
        let replica = Replica::recover(opts.id, opts.protocol.clone(), durable);

        let (tx, rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std::sync::mpsc::channel();
        let incarnation = meta.incarnation;
        let disk_events = tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("wal-{}", opts.id))
            .spawn(move || disk_loop(wal, disk_rx, disk_events, incarnation))
            .map_err(|e| e.to_string())?;
        *self.inner.disk_thread.lock() = Some(handle);

        let mut peers = HashMap::new();
        for (id, base) in opts.peers.iter().enumerate() {
            if id as ReplicaId != opts.id {
                peers.insert(id as ReplicaId, self.peer(base));
            }
        }

        let ticks = tx.clone();
        let tick = opts.tick;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                if ticks.send(Input::Tick).is_err() {
                    break;
                }
            }
        });
        let _ = tx.send(Input::Tick);
        *self.inner.tx.lock() = Some(tx.clone());
        self.inner.status.write().up = true;
        let driver = Driver {
            inner: self.inner.clone(),
            replica,
            tx,
            disk: disk_tx,
            peers,
            applied,
            pending: HashMap::new(),
            outputs: HashMap::new(),
            next_request: 0,
        };
        tokio::spawn(driver.run(rx));
        Ok(())
    }

    fn peer(&self, base: &str) -> Peer {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let url = format!("{base}/replication/msg?from={}", self.inner.opts.id);
        tokio::spawn(crate::transfer::peer_sender(
            self.inner.client.clone(),
            url,
            rx,
        ));
        Peer {
            base: base.to_string(),
            tx,
        }
    }

    /// Replicates `data` and returns the state machine's answer once it is committed
    /// (durable on every replica of the view) and applied here.
    pub async fn submit(&self, data: Vec<u8>) -> Result<Vec<u8>, SubmitError> {
        let (reply, rx) = oneshot::channel();
        {
            let tx = self.inner.tx.lock();
            let tx = tx.as_ref().ok_or(SubmitError::Down)?;
            tx.send(Input::Write { data, reply })
                .map_err(|_| SubmitError::Down)?;
        }
        rx.await.unwrap_or(Err(SubmitError::Retry))
    }

    /// Reads the state machine if this replica is caught up: a primary holding its read
    /// lease, or a backup that has applied everything its primary told it was committed.
    pub fn read<R>(&self, f: impl FnOnce(&S) -> R) -> Option<R> {
        if !self.serving_reads() {
            return None;
        }
        Some(f(&self.inner.sm.read()))
    }

    /// May this replica answer reads now? Caught up and, as primary, holding its read
    /// lease. Anything that lends out the right to answer reads (the catalog's cache
    /// leases) must ask this too.
    pub fn serving_reads(&self) -> bool {
        let s = self.inner.status.read();
        s.serving_reads && (s.role != "primary" || self.leased(s.epoch))
    }

    /// Does this replica hold a read lease for `epoch` now?
    fn leased(&self, epoch: Epoch) -> bool {
        self.inner.read_lease.lock().holds(epoch, Instant::now())
    }

    /// Reads the state machine whatever the replica's state (diagnostics, tests).
    pub fn read_any<R>(&self, f: impl FnOnce(&S) -> R) -> R {
        f(&self.inner.sm.read())
    }

    pub fn status(&self) -> Status {
        self.inner.status.read().clone()
    }

    pub fn id(&self) -> ReplicaId {
        self.inner.opts.id
    }

    /// Whether replica `from` may send this replica messages: another replica of the
    /// current member table. (Its address is not compared with the request's: a replica
    /// on a loopback alias or a host with several interfaces sends from another one, and
    /// with one cluster token for all there is no per-replica identity to prove.)
    pub fn check_sender(&self, from: ReplicaId) -> Result<(), String> {
        if from == self.inner.opts.id {
            return Err(format!("from={from} is this replica itself"));
        }
        if !self.inner.members.read().contains_key(&from) {
            return Err(format!("from={from} is not a replica of this cluster"));
        }
        Ok(())
    }

    /// Hands messages from a peer to the protocol.
    pub fn deliver(&self, from: ReplicaId, msgs: Vec<Msg>) {
        if from == self.inner.opts.id {
            return;
        }
        if let Some(tx) = self.inner.tx.lock().as_ref() {
            for msg in msgs {
                let _ = tx.send(Input::Event(Event::Message { from, msg }));
            }
        }
    }

    /// Stops the replica as a crash would: volatile state is lost, pending writes get
    /// an unknown outcome, nothing more is sent. The disk keeps what was synced.
    pub async fn crash(&self) {
        let tx = self.inner.tx.lock().take();
        if let Some(tx) = tx {
            let _ = tx.send(Input::Stop);
        }
        let handle = self.inner.disk_thread.lock().take();
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        let mut s = self.inner.status.write();
        *s = Status {
            id: s.id,
            view_changes: s.view_changes,
            ..Status::default()
        };
    }

    /// Messages dropped because a peer's queue ([`PEER_QUEUE`]) was full.
    pub fn dropped_messages(&self) -> u64 {
        self.inner
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Why the replica stopped on its own (its disk failed), if it did: it serves
    /// nothing more until it boots again, from its disk.
    pub fn failure(&self) -> Option<String> {
        self.inner.failure.borrow().clone()
    }

    /// Resolves with [`Node::failure`] once the replica has stopped on its own (a
    /// service exits then, so that its supervisor restarts it from its disk).
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut rx = self.inner.failure.subscribe();
        async move {
            loop {
                if let Some(e) = rx.borrow_and_update().clone() {
                    return e;
                }
                if rx.changed().await.is_err() {
                    return std::future::pending().await;
                }
            }
        }
    }

    /// Restarts a crashed replica from its disk (the same path as a process restart).
    pub async fn restart(&self) -> Result<(), String> {
        self.crash().await;
        self.boot()
    }
}

struct Driver<S> {
    inner: Arc<Inner<S>>,
    replica: Replica,
    tx: mpsc::UnboundedSender<Input>,
    disk: std::sync::mpsc::Sender<DiskOp>,
    peers: HashMap<ReplicaId, Peer>,
    /// Index and epoch of the last entry applied to the state machine.
    applied: (LogIndex, Epoch),
    pending: HashMap<u64, WriteReply>,
    outputs: HashMap<LogIndex, Vec<u8>>,
    next_request: u64,
}

impl<S: StateMachine> Driver<S> {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        let mut cmds = Vec::new();
        while let Some(first) = rx.recv().await {
            let mut next = Some(first);
            let mut handled = 0;
            while let Some(input) = next.take() {
                match input {
                    Input::Tick => self.replica.step(Event::Tick, &mut cmds),
                    Input::Members(members) => self.set_members(members),
                    Input::Write { data, reply } => {
                        self.next_request += 1;
                        self.pending.insert(self.next_request, reply);
                        let request = RequestId(self.next_request);
                        self.replica
                            .step(Event::ClientWrite { request, data }, &mut cmds);
                    }
                    Input::VsAnswer {
                        view,
                        lead_from,
                        sent,
                    } => {
                        let names_me = view.as_ref().map(|v| (v.epoch, v.primary));
                        self.replica
                            .step(Event::VsReply { view, lead_from }, &mut cmds);
                        self.renew_lease(names_me, sent);
                    }
                    Input::Event(e) => self.replica.step(e, &mut cmds),
                    Input::Fatal(e) => {
                        tracing::error!(id = self.replica.id(), error = %e, "disk failure: replica stops");
                        self.stop();
                        self.inner.failure.send_replace(Some(e));
                        return;
                    }
                    Input::Stop => {
                        self.stop();
                        return;
                    }
                }
                self.execute(&mut cmds);
                handled += 1;
                if handled < 512 {
                    next = rx.try_recv().ok();
                }
            }
            self.publish_status();
        }
    }

    fn stop(&mut self) {
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(SubmitError::Retry));
        }
        let mut s = self.inner.status.write();
        s.up = false;
        s.serving_reads = false;
        s.role = "down".into();
    }

    /// A view-service answer naming this replica primary of the epoch it leads renews
    /// its read lease, counted from when the ping was sent.
    fn renew_lease(&self, view: Option<(Epoch, ReplicaId)>, sent: Instant) {
        let Some((epoch, primary)) = view else {
            return;
        };
        let leading = (self.replica.role() == Role::Primary)
            .then(|| self.replica.view().map(|v| v.epoch))
            .flatten();
        self.inner.read_lease.lock().renew(
            self.replica.id(),
            leading,
            (epoch, primary),
            sent + self.inner.opts.read_lease(),
        );
    }

    fn publish_status(&self) {
        let r = &self.replica;
        let view = r.view();
        let mut s = self.inner.status.write();
        s.up = true;
        s.role = match r.role() {
            Role::Primary => "primary",
            Role::Backup => "backup",
            Role::Idle => "idle",
        }
        .into();
        let epoch = view.map_or(0, |v| v.epoch);
        if epoch != s.epoch && epoch != 0 {
            s.view_changes += 1;
        }
        s.epoch = epoch;
        s.primary = view.map(|v| v.primary);
        s.backups = view.map(|v| v.backups.clone()).unwrap_or_default();
        s.commit = r.commit_index();
        s.applied = r.applied_index();
        s.serving_reads = r.can_serve_reads();
    }

    fn execute(&mut self, cmds: &mut Vec<Command>) {
        for cmd in cmds.drain(..) {
            match cmd {
                Command::Send { to, msg } => {
                    if let Some(p) = self.peers.get(&to) {
                        // Full: the peer is not keeping up. Dropping is safe, the
                        // protocol retransmits what is unacknowledged at each heartbeat.
                        if p.tx.try_send(msg).is_err() {
                            self.inner
                                .dropped
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                }
                Command::PingVs(ping) => self.ping_vs(ping),
                Command::Persist { entries } => {
                    let _ = self.disk.send(DiskOp::Persist(entries));
                }
                Command::PersistView(view) => {
                    let _ = self.disk.send(DiskOp::View(view));
                }
                Command::Apply { entry } => {
                    let out = self.inner.sm.write().apply(entry.index, &entry.data);
                    self.applied = (entry.index, entry.epoch);
                    self.outputs.insert(entry.index, out);
                }
                Command::Reply { request, outcome } => {
                    let answer = match outcome {
                        Outcome::Committed { index } => match self.outputs.remove(&index) {
                            Some(out) => Ok(out),
                            None => {
                                tracing::error!(index, "committed entry without an applied answer");
                                Err(SubmitError::Retry)
                            }
                        },
                        Outcome::NotPrimary { hint } => Err(SubmitError::NotPrimary { hint }),
                        Outcome::Retry => Err(SubmitError::Retry),
                    };
                    if let Some(reply) = self.pending.remove(&request.0) {
                        let _ = reply.send(answer);
                    }
                }
                Command::TakeSnapshot => {
                    let data = self.inner.sm.read().snapshot();
                    let meta = SnapshotMeta {
                        index: self.applied.0,
                        epoch: self.applied.1,
                    };
                    let _ = self.disk.send(DiskOp::Snapshot {
                        meta,
                        data,
                        received: false,
                    });
                }
                Command::SendSnapshot { to } => {
                    let data = self.inner.sm.read().snapshot();
                    let meta = SnapshotMeta {
                        index: self.applied.0,
                        epoch: self.applied.1,
                    };
                    let _ = self
                        .tx
                        .send(Input::Event(Event::SnapshotForPeer { to, meta, data }));
                }
                Command::InstallSnapshot { meta, data } => {
                    let mut sm = (self.inner.initial)();
                    match sm.restore(&data) {
                        Ok(()) => {
                            *self.inner.sm.write() = sm;
                            self.applied = (meta.index, meta.epoch);
                            let _ = self.disk.send(DiskOp::Snapshot {
                                meta,
                                data,
                                received: true,
                            });
                        }
                        Err(e) => {
                            // A peer's snapshot that does not restore is refused: the
                            // state and the disk stay as they were.
                            tracing::warn!(error = %e, index = meta.index, "refused a snapshot that does not restore");
                            let _ = self.tx.send(Input::Event(Event::SnapshotRefused { meta }));
                        }
                    }
                }
            }
        }
        // Answers not claimed by a reply in the same step belong to entries applied on a
        // backup or replayed after a restart: nobody waits for them.
        self.outputs.clear();
    }

    /// Follows the member table: a sender for every new peer, none for retired ones.
    fn set_members(&mut self, members: BTreeMap<ReplicaId, String>) {
        let me = self.inner.opts.id;
        *self.inner.members.write() = members
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, u)| (*id, u.clone()))
            .collect();
        let before = self.peers.len();
        self.peers
            .retain(|id, p| members.get(id).is_some_and(|u| *u == p.base));
        for (id, base) in members {
            if id != me && !self.peers.contains_key(&id) {
                let node = Node {
                    inner: self.inner.clone(),
                };
                self.peers.insert(id, node.peer(&base));
                tracing::info!(id, base, "new peer");
            }
        }
        if self.peers.len() != before {
            tracing::info!(me, peers = ?self.peers.keys().collect::<Vec<_>>(), "peers changed");
        }
    }

    /// Pings the coordinator leader. The read lease an answer grants is counted from
    /// before the first attempt, wherever the answer came from.
    fn ping_vs(&self, ping: Ping) {
        let inner = self.inner.clone();
        let tx = self.tx.clone();
        let tick = self.inner.opts.tick;
        tokio::spawn(async move {
            let sent = Instant::now();
            let body = bincode::serialize(&PingRequest {
                ping,
                url: inner.opts.url.clone(),
            })
            .expect("ping encodes");
            let path = bookstore_common::coordinators::ping_path(&inner.opts.kind);
            let answer = inner
                .coordinators
                .call(
                    |c, base| {
                        c.post(format!("{base}{path}"))
                            .header("content-type", "application/octet-stream")
                            .body(body.clone())
                    },
                    tick * 2,
                    tick * 4,
                )
                .await;
            let Ok(bytes) = answer else { return };
            match crate::protocol::decode::<PingAnswer>(&bytes) {
                Ok(PingAnswer {
                    view,
                    lead_from,
                    members,
                    coordinators,
                }) => {
                    inner
                        .coordinators
                        .learn(coordinators.iter().map(String::as_str));
                    if !members.is_empty() {
                        let _ = tx.send(Input::Members(members));
                    }
                    let _ = tx.send(Input::VsAnswer {
                        view,
                        lead_from,
                        sent,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "bad coordinator answer"),
            }
        });
    }
}

fn disk_loop(
    mut wal: Wal,
    rx: std::sync::mpsc::Receiver<DiskOp>,
    events: mpsc::UnboundedSender<Input>,
    incarnation: u64,
) {
    while let Ok(op) = rx.recv() {
        let mut ops = vec![op];
        while ops.len() < 4096 {
            match rx.try_recv() {
                Ok(op) => ops.push(op),
                Err(_) => break,
            }
        }
        let mut done = Vec::with_capacity(ops.len());
        let result = (|| -> Result<(), crate::wal::WalError> {
            for op in ops {
                match op {
                    DiskOp::Persist(entries) => {
                        let Some(first) = entries.first().map(|e| e.index) else {
                            continue;
                        };
                        if wal.last_index().is_some_and(|l| l >= first) {
                            wal.truncate_suffix(first)?;
                        }
                        for e in &entries {
                            wal.append(e.index, &encode_entry(e))?;
                        }
                        let last = entries.last().expect("non-empty");
                        done.push(Event::Persisted {
                            index: last.index,
                            epoch: last.epoch,
                        });
                    }
                    DiskOp::View(view) => {
                        wal.sync()?;
                        let epoch = view.epoch;
                        let meta = Meta {
                            incarnation,
                            view: Some(view),
                        };
                        wal.write_meta(&bincode::serialize(&meta).expect("meta encodes"))?;
                        done.push(Event::ViewPersisted { epoch });
                    }
                    DiskOp::Snapshot {
                        meta,
                        data,
                        received,
                    } => {
                        if received {
                            let from = wal.snapshot_index().map_or(1, |s| s + 1);
                            if wal.last_index().is_some_and(|l| l >= from) {
                                wal.truncate_suffix(from)?;
                            }
                        }
                        let mut bytes = Vec::with_capacity(8 + data.len());
                        bytes.extend_from_slice(&meta.epoch.to_le_bytes());
                        bytes.extend_from_slice(&data);
                        wal.install_snapshot(meta.index, &bytes)?;
                        done.push(if received {
                            Event::SnapshotInstalled { meta }
                        } else {
                            Event::SnapshotTaken { meta }
                        });
                    }
                }
            }
            wal.sync()
        })();
        match result {
            Ok(()) => {
                for e in done {
                    let _ = events.send(Input::Event(e));
                }
            }
            Err(e) => {
                let _ = events.send(Input::Fatal(e.to_string()));
                return;
            }
        }
    }
}

/// Decodes messages from a peer (`POST /replication/msg?from=ID`, bincode `Vec<Msg>`, or
/// a part of one: [`crate::transfer`]) and hands them to the protocol. Served by [`crate::control`], behind the cluster token.
pub fn receive<S: StateMachine>(
    node: &Node<S>,
    req: &actix_web::HttpRequest,
    body: &[u8],
) -> Result<(), bookstore_common::ApiError> {
    let params = bookstore_common::params::Params::parse(req.query_string());
    let from: ReplicaId = params.required("from", "a replica id")?;
    node.check_sender(from)
        .map_err(|e| bookstore_common::ApiError::BadRequest(format!("refused: {e}")))?;
    let whole;
    let body = match crate::transfer::part_of(&params)? {
        None => body,
        Some(part) => match node.inner.transfers.add(from, part, body)? {
            None => return Ok(()),
            Some(all) => {
                whole = all;
                &whole[..]
            }
        },
    };
    let msgs: Vec<Msg> = crate::protocol::decode(body).map_err(|e| {
        bookstore_common::ApiError::BadRequest(format!("undecodable replication messages: {e}"))
    })?;
    node.deliver(from, msgs);
    Ok(())
}
