//! The transport between coordinators: each Raft RPC is one HTTP POST with a bincode body
//! (`/raft/append`, `/raft/vote`, `/raft/snapshot`, cluster token), answered with the
//! bincode `Result` of the receiving node's Raft. [`routes`] serves the receiving side
//! and notes when the leader last reached this node ([`LeaderContact`]).
use super::{NodeId, Raft, TypeConfig};
use actix_web::{web, HttpResponse};
use bookstore_common::client::Client;
use bookstore_common::openapi::answers::Undecodable;
use bookstore_common::ApiError;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Instant;

/// Creates a [`Peer`] for each coordinator openraft talks to.
#[derive(Clone)]
pub struct Network {
    client: Client,
}

impl Network {
    pub fn new(client: Client) -> Network {
        Network { client }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Peer {
        Peer {
            client: self.client.clone(),
            target,
            base: node.addr.trim_end_matches('/').to_string(),
        }
    }
}

/// One other coordinator, by its base URL.
pub struct Peer {
    client: Client,
    target: NodeId,
    base: String,
}

/// Why an RPC got no usable answer, as openraft wants it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

impl Peer {
    async fn call<Req, Resp, E>(
        &self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, BasicNode, E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let body = bincode::serialize(req).expect("RPCs encode");
        let url = format!("{}{path}", self.base);
        let request = self
            .client
            .raw()
            .post(&url)
            .timeout(option.hard_ttl())
            .header("content-type", "application/octet-stream")
            .body(body);
        let resp = request.send().await.map_err(|e| {
            let err = TransportError(format!("{url}: {e}"));
            if e.is_connect() {
                RPCError::Unreachable(Unreachable::new(&err))
            } else {
                RPCError::Network(NetworkError::new(&err))
            }
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| {
            RPCError::Network(NetworkError::new(&TransportError(format!("{url}: {e}"))))
        })?;
        if !status.is_success() {
            let text: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
            return Err(RPCError::Network(NetworkError::new(&TransportError(
                format!("{url}: status {status}: {text}"),
            ))));
        }
        let answer: Result<Resp, E> = bookstore_replication_core::protocol::decode(&bytes)
            .map_err(|e| {
                RPCError::Network(NetworkError::new(&TransportError(format!(
                    "{url}: undecodable answer: {e}"
                ))))
            })?;
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/append", &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call("/raft/snapshot", &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.call("/raft/vote", &rpc, &option).await
    }
}

/// When this node last accepted an AppendEntries from a leader (a follower's "age of
/// its last contact with the leader").
#[derive(Default)]
pub struct LeaderContact(Mutex<Option<Instant>>);

impl LeaderContact {
    pub fn touch(&self) {
        *self.0.lock() = Some(Instant::now());
    }

    pub fn age(&self) -> Option<std::time::Duration> {
        self.0.lock().map(|t| t.elapsed())
    }
}

fn decode<T: DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    bookstore_replication_core::protocol::decode(body)
        .map_err(|e| ApiError::BadRequest(format!("undecodable {what}: {e}")))
}

/// Decodes a `what` request from `body`, has Raft `answer` it, and encodes the answer.
async fn rpc<Q: DeserializeOwned, A: Serialize>(
    body: &[u8],
    what: &str,
    answer: impl AsyncFnOnce(Q) -> A,
) -> Result<HttpResponse, ApiError> {
    let request = decode(body, what)?;
    Ok(bincode_answer(&answer(request).await))
}

fn bincode_answer<T: Serialize>(answer: &T) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/octet-stream")
        .body(bincode::serialize(answer).expect("answers encode"))
}

/// Raft AppendEntries from the leader (bincode in and out).
#[utoipa::path(post, path = "/raft/append", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream", description = "bincode Result<AppendEntriesResponse, RaftError>"), Undecodable))]
pub async fn append(
    raft: web::Data<Raft>,
    contact: web::Data<LeaderContact>,
    body: bytes::Bytes,
) -> Result<HttpResponse, ApiError> {
    let append = async |r: AppendEntriesRequest<TypeConfig>| {
        let answer = raft.append_entries(r).await;
        if matches!(answer, Ok(AppendEntriesResponse::Success)) {
            contact.touch();
        }
        answer
    };
    rpc(&body, "AppendEntries", append).await
}

/// Raft RequestVote from a candidate (bincode in and out).
#[utoipa::path(post, path = "/raft/vote", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream", description = "bincode Result<VoteResponse, RaftError>"), Undecodable))]
pub async fn vote(raft: web::Data<Raft>, body: bytes::Bytes) -> Result<HttpResponse, ApiError> {
    let vote = async |r: VoteRequest<NodeId>| raft.vote(r).await;
    rpc(&body, "RequestVote", vote).await
}

/// Raft InstallSnapshot from the leader (bincode in and out).
#[utoipa::path(post, path = "/raft/snapshot", request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 200, body = Vec<u8>, content_type = "application/octet-stream", description = "bincode Result<InstallSnapshotResponse, RaftError>"), Undecodable))]
pub async fn snapshot(raft: web::Data<Raft>, body: bytes::Bytes) -> Result<HttpResponse, ApiError> {
    let install = async |r: InstallSnapshotRequest<TypeConfig>| raft.install_snapshot(r).await;
    rpc(&body, "InstallSnapshot", install).await
}

/// The transport's routes, for the internal document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(append, vote, snapshot))]
pub struct RaftApi;

/// The receiving side of the transport, under `/raft` (cluster token).
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(bookstore_common::server::post("/append", append))
        .service(bookstore_common::server::post("/vote", vote))
        .service(bookstore_common::server::post("/snapshot", snapshot));
}
