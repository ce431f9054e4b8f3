//! How a replica reaches the others: the [`Transport`] trait, the node's only way out, and
//! [`Http`], the transport the services use (replication messages as in [`crate::transfer`],
//! pings to the coordinator group's leader wherever it is).
//!
//! The way in is [`Node::deliver`](crate::node::Node::deliver), whatever carries the
//! messages (over HTTP, [`crate::node::receive`] decodes them first). A test can so run
//! replicas with no sockets, or drop, delay and reorder what they send.
use crate::protocol::{Msg, ReplicaId};
use crate::wire::{PingAnswer, PingRequest};
use bookstore_common::client::Client;
use bookstore_common::coordinators::Coordinators;
pub use futures::future::BoxFuture;
use std::time::Duration;

/// What the runtime needs from the network. Both calls are best effort: the protocol
/// resends what is lost, and a missing ping answer is a coordinator not heard from.
pub trait Transport: Send + Sync + 'static {
    /// Delivers `batch` from replica `from` to the replica whose base URL is `peer`.
    fn send<'a>(&'a self, peer: &'a str, from: ReplicaId, batch: Vec<Msg>) -> BoxFuture<'a, ()>;

    /// Pings the coordinator group's leader for `kind`; its answer, or `None` when none
    /// came. `tick` is the protocol's tick (a ping is worth nothing after a few).
    fn ping<'a>(
        &'a self,
        kind: &'a str,
        request: PingRequest,
        tick: Duration,
    ) -> BoxFuture<'a, Option<PingAnswer>>;
}

/// The transport over HTTP with the cluster token: `POST {peer}/replication/msg?from=ID`
/// (large batches in parts), and `POST /vs/{kind}/ping` at the coordinator that leads.
pub struct Http {
    client: Client,
    coordinators: Coordinators,
}

impl Http {
    /// Calls through `client`; finds the coordinator leader from `coordinators` (base URLs).
    pub fn new(client: Client, coordinators: Vec<String>) -> Http {
        Http {
            coordinators: Coordinators::new(client.clone(), coordinators),
            client,
        }
    }
}

impl Transport for Http {
    fn send<'a>(&'a self, peer: &'a str, from: ReplicaId, batch: Vec<Msg>) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let url = format!("{peer}/replication/msg?from={from}");
            let body = bincode::serialize(&batch).expect("messages encode");
            let sent = crate::transfer::post(&self.client, &url, body, crate::transfer::PART_BYTES);
            if let Err(e) = sent.await {
                tracing::trace!(error = %e, "replication message lost");
            }
        })
    }

    fn ping<'a>(
        &'a self,
        kind: &'a str,
        request: PingRequest,
        tick: Duration,
    ) -> BoxFuture<'a, Option<PingAnswer>> {
        Box::pin(async move {
            let body = bincode::serialize(&request).expect("ping encodes");
            let path = bookstore_common::coordinators::ping_path(kind);
            let answer = self
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
                .await
                .ok()?;
            match crate::protocol::decode::<PingAnswer>(&answer) {
                Ok(a) => {
                    self.coordinators
                        .learn(a.coordinators.iter().map(String::as_str));
                    Some(a)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "bad coordinator answer");
                    None
                }
            }
        })
    }
}
