//! The runtime of one replica: drives the pure [`Replica`] with real time, disk and
//! network.
//!
//! - a **driver task** owns the [`Replica`]; every input (tick, client write, message,
//!   view-service reply, disk completion) becomes an [`Event`], and the resulting
//!   [`Command`]s are executed in order;
//! - a **disk thread** owns the [`Wal`]: it takes every queued disk operation, writes them
//!   with one `fdatasync` (group commit) and reports completions in order;
//! - everything leaves through a [`Transport`] ([`Http`] unless [`Node::start_with`] is
//!   given another): one **sender task per peer** batches queued messages into one send
//!   (over HTTP a POST to `/replication/msg?from=ID`, bincode body, cluster token; a
//!   snapshot in parts of [`crate::transfer::PART_BYTES`]); its queue holds
//!   [`PEER_QUEUE`] messages, past which messages are dropped (the protocol retransmits
//!   whatever is unacknowledged at each heartbeat);
//! - pings to the view service go to the coordinator group's leader wherever it is (over
//!   HTTP `POST {coordinator}/vs/{kind}/ping`);
//! - every task of a running replica (driver, ticks, peer senders, pings) is owned by its
//!   [`Node`] (a `common::tasks::Tasks` set per boot): [`Node::crash`], which
//!   is also a service's graceful stop, cancels them and returns once they and the disk
//!   thread have ended;
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
//! The service's data plugs in as a [`StateMachine`]: typed commands and answers, the
//! commands' log encoding, a deterministic `apply`, plus `snapshot`/`restore` for
//! compaction and state transfer. Writes go through [`Node::submit`], or
//! [`Node::submit_all`] for a batch, whose writes then share one turn of the driver, one
//! `fdatasync` and one message per backup. Reads go through
//! [`Node::read`], which refuses while the replica is not caught up or, as primary, holds
//! no read lease.
//!
//! # Layout
//!
//! - this module: the options, the [`StateMachine`] trait, [`Node`] (start, boot from disk,
//!   the client-facing calls, crash and restart), the peer senders and [`receive`];
//! - `driver`: the driver task, which owns the [`Replica`] and executes its commands;
//! - `disk`: the disk thread, which owns the [`Wal`], and the encoding of entries and of
//!   the WAL's meta value.
//!
//! [`Command`]: crate::protocol::Command
use crate::lease::ReadLease;
use crate::protocol::{
    Config, DurableState, Epoch, Event, LogIndex, Msg, Replica, ReplicaId, Role, SnapshotMeta, View,
};
use crate::transport::{Http, Transport};
use crate::wal::{Wal, WalOptions};
use bookstore_common::client::Client;
use bookstore_common::tasks::Tasks;
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

mod disk;
mod driver;

use disk::{decode_entry, disk_loop, Meta};
use driver::Driver;

/// The replicated data of a service. `apply` must be deterministic: every replica
/// applies the same entries in the same order and must reach the same state.
///
/// A command travels as bytes (the log entry [`StateMachine::encode`] makes) and is
/// decoded again by every replica before it is applied; its answer stays in the process
/// of the primary that was asked. An entry that does not decode (it cannot come from a
/// replica of the same build; it would have to be a foreign or damaged peer's) is applied
/// as nothing by every replica alike, and logged.
pub trait StateMachine: Send + Sync + 'static {
    /// A write, as the service submits it.
    type Command: Send + 'static;
    /// What applying a command answers the client that submitted it.
    type Output: Send + 'static;
    /// The log entry of `command`.
    fn encode(command: &Self::Command) -> Vec<u8>;
    /// The command of a log entry, which may come from a peer or a disk: bounded by the
    /// entry's size, and an error rather than a panic whatever the bytes.
    fn decode(data: &[u8]) -> Result<Self::Command, DecodeError>;
    /// Applies the committed command at `index`; returns the answer for the client.
    fn apply(&mut self, index: LogIndex, command: Self::Command) -> Self::Output;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the state with a snapshot (which may come from a peer or a disk: an
    /// error rather than a panic whatever the bytes).
    fn restore(&mut self, data: &[u8]) -> Result<(), DecodeError>;
}

/// Why a replica could not start from its data directory.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{dir}: {source}")]
    DataDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] crate::wal::WalError),
    #[error("WAL meta: {0}")]
    Meta(bincode::Error),
    #[error("snapshot at index {index}: {reason}")]
    Snapshot { index: LogIndex, reason: String },
    #[error("WAL record {0} is too short")]
    ShortRecord(LogIndex),
    #[error("disk thread: {0}")]
    DiskThread(std::io::Error),
}

/// Why a replica refuses a peer's messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SenderError {
    #[error("from={0} is this replica itself")]
    Itself(ReplicaId),
    #[error("from={0} is not a replica of this cluster")]
    NotAMember(ReplicaId),
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

/// A replica's role as it reports it: its role in the view, or `down` once its node has
/// stopped (its disk failed, or it is shutting down).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaRole {
    Primary,
    Backup,
    /// Up, and not (yet) primary or backup of a view it may act in.
    #[default]
    Idle,
    Down,
}

impl ReplicaRole {
    /// The name the JSON and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaRole::Primary => "primary",
            ReplicaRole::Backup => "backup",
            ReplicaRole::Idle => "idle",
            ReplicaRole::Down => "down",
        }
    }
}

impl From<Role> for ReplicaRole {
    fn from(r: Role) -> Self {
        match r {
            Role::Primary => ReplicaRole::Primary,
            Role::Backup => ReplicaRole::Backup,
            Role::Idle => ReplicaRole::Idle,
        }
    }
}

impl std::fmt::Display for ReplicaRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a replica reports about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Status {
    pub id: ReplicaId,
    pub up: bool,
    pub role: ReplicaRole,
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

/// The protocol's safety mechanisms. Each is switched off only to prove that a test
/// catches its removal (a mutation switch, `--unsafe-no-sync-ack`, `--unsafe-no-fencing`);
/// never in production. Default: all on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Safety {
    /// A write is acknowledged only once every backup of the view holds it.
    pub sync_ack: bool,
    /// Messages from an older epoch are refused.
    pub fencing: bool,
}

impl Default for Safety {
    fn default() -> Self {
        Safety {
            sync_ack: true,
            fencing: true,
        }
    }
}

impl NodeOptions {
    /// Applies `safety` to the protocol's configuration.
    pub fn with_safety(mut self, safety: Safety) -> Self {
        self.protocol.sync_ack = safety.sync_ack;
        self.protocol.fencing = safety.fencing;
        self
    }
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

/// Why a log entry is no command: its decoder's error.
pub type DecodeError = Box<dyn std::error::Error + Send + Sync>;

/// Where the answers to writes submitted together go, all at once.
type WriteReply<O> = oneshot::Sender<Vec<Result<O, SubmitError>>>;

/// Messages queued for one peer at most; past it new ones are dropped (and counted).
pub const PEER_QUEUE: usize = 1024;

/// A peer replica: its base URL and the queue of its sender task.
struct Peer {
    base: String,
    tx: mpsc::Sender<Msg>,
}

/// What the driver task takes, in order. The queue is unbounded because its producers
/// are: a write waits for its reply (HTTP connections bound them), a tick comes per tick,
/// a disk completion per queued disk operation, a peer's message per HTTP request that
/// carries it, a view-service answer per ping in flight.
enum Input<O> {
    Tick,
    /// The view service's member table (replica id -> base URL).
    Members(BTreeMap<ReplicaId, String>),
    /// Writes submitted together (one or more): consecutive entries, one answer.
    Write {
        data: Vec<Vec<u8>>,
        reply: WriteReply<O>,
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

struct Inner<S: StateMachine> {
    opts: NodeOptions,
    sm: RwLock<S>,
    initial: Box<dyn Fn() -> S + Send + Sync>,
    status: RwLock<Status>,
    /// The epoch this replica leads and until when it may serve reads in it.
    read_lease: Mutex<ReadLease<Instant>>,
    tx: Mutex<Option<mpsc::UnboundedSender<Input<S::Output>>>>,
    disk_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Every task of the running incarnation (driver, ticks, peer senders, pings): a stop
    /// cancels them and waits for them all.
    /// A new set per boot: a stopped set cancels what is spawned into it.
    tasks: Mutex<Tasks>,
    /// The way out to the peers and the coordinators.
    transport: Arc<dyn Transport>,
    /// The runtime the replica was started on, where its driver and senders run.
    runtime: tokio::runtime::Handle,
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
pub struct Node<S: StateMachine> {
    inner: Arc<Inner<S>>,
}

impl<S: StateMachine> Clone for Node<S> {
    fn clone(&self) -> Self {
        Node {
            inner: self.inner.clone(),
        }
    }
}

impl<S: StateMachine> Node<S> {
    /// Opens the data directory, recovers, and starts the replica. Must be called
    /// inside a tokio runtime. `initial` builds the state before any entry (the same
    /// on every replica).
    pub fn start(
        opts: NodeOptions,
        initial: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<Node<S>, StartError> {
        let client = Client::with_timeout(&opts.token, Duration::from_secs(2));
        let transport = Arc::new(Http::new(client, opts.coordinators.clone()));
        Node::start_with(opts, transport, initial)
    }

    /// [`Node::start`] with another way out than HTTP (messages come in through
    /// [`Node::deliver`]).
    pub fn start_with(
        opts: NodeOptions,
        transport: Arc<dyn Transport>,
        initial: impl Fn() -> S + Send + Sync + 'static,
    ) -> Result<Node<S>, StartError> {
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
            tasks: Mutex::new(Tasks::new()),
            transport,
            runtime: tokio::runtime::Handle::current(),
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

    fn boot(&self) -> Result<(), StartError> {
        self.inner.failure.send_replace(None);
        *self.inner.tasks.lock() = Tasks::new();
        let opts = &self.inner.opts;
        std::fs::create_dir_all(&opts.data_dir).map_err(|source| StartError::DataDir {
            dir: opts.data_dir.clone(),
            source,
        })?;
        let (mut wal, rec) = Wal::open(&opts.data_dir, WalOptions::default())?;
        if let Some(repair) = &rec.tail_repair {
            tracing::warn!(?repair, "repaired a torn WAL tail");
        }
        let meta = match &rec.meta {
            Some(m) => crate::protocol::decode::<Meta>(m).map_err(StartError::Meta)?,
            None => {
                let m = Meta {
                    // Never 0 (a clock before 1970): 0 is no disk yet.
                    incarnation: bookstore_common::clock::now_ms().max(1),
                    view: None,
                };
                wal.write_meta(&bincode::serialize(&m).expect("meta encodes"))?;
                m
            }
        };
        let mut sm = (self.inner.initial)();
        let mut applied = (0, 0);
        let snapshot = match rec.snapshot {
            Some(s) => {
                if s.data.len() < 8 {
                    return Err(StartError::Snapshot {
                        index: s.index,
                        reason: "too short".into(),
                    });
                }
                let epoch = u64::from_le_bytes(s.data[..8].try_into().expect("8 bytes"));
                sm.restore(&s.data[8..]).map_err(|e| StartError::Snapshot {
                    index: s.index,
                    reason: e.to_string(),
                })?;
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

        // Both queues are unbounded because their producers are (see [`Input`]): the disk
        // thread's operations come from the driver, one per protocol command that
        // persists, and the disk thread takes all that are queued at each turn.
        let (tx, rx) = mpsc::unbounded_channel();
        let (disk_tx, disk_rx) = std::sync::mpsc::channel();
        let incarnation = meta.incarnation;
        let disk_events = tx.clone();
        let handle = std::thread::Builder::new()
            .name(format!("wal-{}", opts.id))
            .spawn(move || disk_loop(wal, disk_rx, disk_events, incarnation))
            .map_err(StartError::DiskThread)?;
        *self.inner.disk_thread.lock() = Some(handle);

        let mut peers = HashMap::new();
        for (id, base) in opts.peers.iter().enumerate() {
            if id as ReplicaId != opts.id {
                peers.insert(id as ReplicaId, self.peer(base));
            }
        }

        let ticks = tx.clone();
        let tick = opts.tick;
        self.spawn(async move {
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
            batches: BTreeMap::new(),
            outputs: HashMap::new(),
            next_request: 0,
        };
        // The driver ends on `Input::Stop` (or a disk failure), never by cancellation: it
        // answers every pending write first.
        self.inner.tasks.lock().spawn_uncancelled(driver.run(rx));
        Ok(())
    }

    /// Runs `task` as one of this incarnation's tasks: it ends when the incarnation
    /// stops (cancelled), and a stop waits for it.
    pub(crate) fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tasks.lock().spawn(task);
    }

    fn peer(&self, base: &str) -> Peer {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        self.spawn(peer_sender(
            self.inner.transport.clone(),
            base.to_string(),
            self.inner.opts.id,
            rx,
        ));
        Peer {
            base: base.to_string(),
            tx,
        }
    }

    /// Runs `task` to its end on the runtime the replica runs on (even if the caller goes
    /// away) and returns its output. Work that submits writes and calls other services
    /// from there hands its writes to the driver, and its calls to the HTTP client, on
    /// that runtime's threads: an HTTP worker's own runtime is another thread, which each
    /// hand-off would wake. `None` if the task panicked or the runtime is shutting down.
    pub async fn run_near<T: Send + 'static>(
        &self,
        task: impl std::future::Future<Output = T> + Send + 'static,
    ) -> Option<T> {
        self.inner.runtime.spawn(task).await.ok()
    }

    /// Replicates `command` and returns the state machine's answer once it is committed
    /// (durable on every replica of the view) and applied here.
    pub async fn submit(&self, command: S::Command) -> Result<S::Output, SubmitError> {
        self.submit_all(&[command])
            .await
            .pop()
            .unwrap_or(Err(SubmitError::Retry))
    }

    /// Replicates `commands` as consecutive entries and returns each one's answer, as
    /// [`Node::submit`] would, once all have one. Submitted together, they share one turn
    /// of the driver, one `fdatasync` on each replica and one message to each backup;
    /// submitted one by one from concurrent tasks, they would trickle in one at a time.
    pub async fn submit_all(&self, commands: &[S::Command]) -> Vec<Result<S::Output, SubmitError>> {
        if commands.is_empty() {
            return Vec::new();
        }
        let data = commands.iter().map(S::encode).collect();
        let (reply, rx) = oneshot::channel();
        let sent = {
            let tx = self.inner.tx.lock();
            tx.as_ref()
                .is_some_and(|tx| tx.send(Input::Write { data, reply }).is_ok())
        };
        if !sent {
            return commands.iter().map(|_| Err(SubmitError::Down)).collect();
        }
        // The driver answers every write; none came if it stopped without answering.
        let mut answers = rx.await.unwrap_or_default().into_iter();
        commands
            .iter()
            .map(|_| answers.next().unwrap_or(Err(SubmitError::Retry)))
            .collect()
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
        s.serving_reads && (s.role != ReplicaRole::Primary || self.leased(s.epoch))
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
    pub fn check_sender(&self, from: ReplicaId) -> Result<(), SenderError> {
        if from == self.inner.opts.id {
            return Err(SenderError::Itself(from));
        }
        if !self.inner.members.read().contains_key(&from) {
            return Err(SenderError::NotAMember(from));
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
    /// an unknown outcome, nothing more is sent. The disk keeps what was synced. Returns
    /// once every task and the disk thread of the replica have ended; a service's
    /// graceful stop is this too.
    pub async fn crash(&self) {
        let tx = self.inner.tx.lock().take();
        if let Some(tx) = tx {
            let _ = tx.send(Input::Stop);
        }
        let tasks = self.inner.tasks.lock().clone();
        tasks.stop().await;
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

    /// Tasks of the running incarnation that have not ended (none after [`Node::crash`]).
    pub fn running_tasks(&self) -> usize {
        self.inner.tasks.lock().len()
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
    pub async fn restart(&self) -> Result<(), StartError> {
        self.crash().await;
        self.boot()
    }
}

/// The sender task of one peer: batches what is queued (up to 1024 messages) into one
/// send. Ends when the queue's sender is dropped.
async fn peer_sender(
    transport: Arc<dyn Transport>,
    peer: String,
    me: ReplicaId,
    mut rx: mpsc::Receiver<Msg>,
) {
    let mut batch = Vec::new();
    while let Some(m) = rx.recv().await {
        batch.push(m);
        while batch.len() < 1024 {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        transport.send(&peer, me, std::mem::take(&mut batch)).await;
    }
}

/// Decodes messages from a peer (`POST /replication/msg?from=ID`, bincode `Vec<Msg>`, or
/// a part of one: [`crate::transfer`]) and hands them to the protocol. Served by [`crate::control`], behind the cluster token.
pub fn receive<S: StateMachine>(
    node: &Node<S>,
    q: &crate::transfer::MsgQuery,
    body: &[u8],
) -> Result<(), bookstore_common::ApiError> {
    let from = q.from;
    node.check_sender(from)
        .map_err(|e| bookstore_common::ApiError::BadRequest(format!("refused: {e}")))?;
    let whole;
    let body = match crate::transfer::part_of(q)? {
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
