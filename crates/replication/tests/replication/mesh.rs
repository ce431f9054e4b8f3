//! Replicas with no sockets, for the `transport` tests and the `node` bench: real nodes
//! (disk, driver, read lease) whose [`Transport`] is an in-memory mesh, with the core's
//! view service answering their pings.
use bookstore_replication::node::{Node, NodeOptions, ReplicaRole, StateMachine};
use bookstore_replication::protocol::{Msg, ReplicaId};
use bookstore_replication::transport::{BoxFuture, Transport};
use bookstore_replication::viewservice::{ViewService, VsCommand, VsConfig, VsEvent};
use bookstore_replication::wire::{PingAnswer, PingRequest};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Keeps every applied command.
#[derive(Default)]
pub struct Log(pub Vec<u8>);

impl StateMachine for Log {
    type Command = u8;
    type Output = usize;
    fn encode(command: &u8) -> Vec<u8> {
        vec![*command]
    }
    fn decode(data: &[u8]) -> Result<u8, bookstore_replication::node::DecodeError> {
        Ok(data.first().copied().unwrap_or(0))
    }
    fn apply(&mut self, _index: u64, command: u8) -> usize {
        self.0.push(command);
        self.0.len()
    }
    fn snapshot(&self) -> Vec<u8> {
        self.0.clone()
    }
    fn restore(&mut self, data: &[u8]) -> Result<(), bookstore_replication::node::DecodeError> {
        self.0 = data.to_vec();
        Ok(())
    }
}

/// The network: replicas by base URL, and one view service.
#[derive(Default)]
pub struct Mesh {
    pub nodes: Mutex<HashMap<String, Node<Log>>>,
    pub vs: Mutex<Option<ViewService>>,
}

struct End(Arc<Mesh>);

impl Transport for End {
    fn send<'a>(&'a self, peer: &'a str, from: ReplicaId, batch: Vec<Msg>) -> BoxFuture<'a, ()> {
        let node = self.0.nodes.lock().get(peer).cloned();
        Box::pin(async move {
            if let Some(node) = node {
                node.deliver(from, batch);
            }
        })
    }

    fn ping<'a>(
        &'a self,
        _kind: &'a str,
        request: PingRequest,
        _tick: Duration,
    ) -> BoxFuture<'a, Option<PingAnswer>> {
        let from = request.ping.from;
        let commands = match self.0.vs.lock().as_mut() {
            Some(vs) => vs.handle(VsEvent::Ping(request.ping)),
            None => vec![],
        };
        let answer = commands.into_iter().find_map(|c| match c {
            VsCommand::Reply {
                to,
                view,
                lead_from,
            } if to == from => Some(PingAnswer {
                view,
                lead_from,
                ..PingAnswer::default()
            }),
            _ => None,
        });
        Box::pin(std::future::ready(answer))
    }
}

pub const TICK: Duration = Duration::from_millis(10);

pub fn url(id: usize) -> String {
    format!("mem://replica-{id}")
}

pub async fn primary(nodes: &[Node<Log>], except: Option<usize>) -> usize {
    for _ in 0..500 {
        for (i, n) in nodes.iter().enumerate() {
            if Some(i) != except && n.status().role == ReplicaRole::Primary {
                if let Some(true) = n.read(|_| true) {
                    return i;
                }
            }
        }
        tokio::time::sleep(TICK).await;
    }
    panic!("no primary with a read lease");
}

/// `n` replicas on disks in `dirs` (one each), and the task that ticks the view service.
pub fn start(
    n: usize,
    dirs: &[tempfile::TempDir],
) -> (Arc<Mesh>, Vec<Node<Log>>, tokio::task::JoinHandle<()>) {
    let mesh = Arc::new(Mesh::default());
    *mesh.vs.lock() = Some(ViewService::new(VsConfig {
        replicas: n as u32,
        ..VsConfig::default()
    }));
    let peers: Vec<String> = (0..n).map(url).collect();
    let mut nodes = Vec::new();
    for (id, dir) in dirs.iter().enumerate().take(n) {
        let mut opts = NodeOptions::new(
            id as ReplicaId,
            peers.clone(),
            "catalog",
            vec!["mem://coordinator".into()],
            dir.path().to_path_buf(),
            "in-memory-cluster-token",
        );
        opts.tick = TICK;
        let end = Arc::new(End(mesh.clone()));
        let node = Node::start_with(opts, end, Log::default).unwrap();
        mesh.nodes.lock().insert(url(id), node.clone());
        nodes.push(node);
    }
    let ticker = {
        let mesh = mesh.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(TICK).await;
                if let Some(vs) = mesh.vs.lock().as_mut() {
                    vs.handle(VsEvent::Tick);
                }
            }
        })
    };
    (mesh, nodes, ticker)
}
