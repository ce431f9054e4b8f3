//! The control API of a running `infra local up`: `infra local add|remove|rolling-restart`
//! (other processes) ask the supervisor, which owns the server processes, to change the
//! cluster. It listens on a free loopback port, requires the admin token (Bearer), and
//! its address is written to `<output-dir>/local-up.json` (mode 0600: it holds the token).
//!
//! The HTTP side only queues [`Request`]s; the supervisor's loop executes them on the
//! runtime that owns the child processes, one at a time.
use crate::local::LocalCluster;
use actix_web::{middleware::from_fn, web, HttpResponse};
use anyhow::{anyhow, bail, Context};
use bookstore_common::auth::{require_admin_token, Tokens};
use bookstore_common::config::Kind;
use bookstore_common::ApiError;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use tokio::sync::{mpsc, oneshot};

/// What a control request asks for.
#[derive(Debug, Clone)]
pub enum Op {
    Add(Kind),
    Remove(Kind, u32),
    RollingRestart,
}

/// The answer: a result document and the progress lines.
pub type Answer = Result<(serde_json::Value, Vec<String>), String>;

/// One queued control request.
pub struct Request {
    pub op: Op,
    pub reply: oneshot::Sender<Answer>,
}

/// What `<output-dir>/local-up.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UpState {
    pub pid: u32,
    pub frontend: String,
    pub control: String,
    pub admin_token: bookstore_common::auth::Secret,
}

pub fn state_file(output_dir: &Path) -> PathBuf {
    output_dir.join("local-up.json")
}

/// Writes the state file (it holds the admin token) atomically, readable by the owner
/// only.
pub fn write_state(output_dir: &Path, state: &UpState) -> anyhow::Result<()> {
    let text = serde_json::to_vec_pretty(state).expect("state encodes");
    bookstore_common::files::replace(
        &state_file(output_dir),
        &[&text],
        bookstore_common::files::Replace::PRIVATE,
    )?;
    Ok(())
}

/// Runs one request against the cluster; `progress` hears every step.
pub async fn execute(
    lc: &mut LocalCluster,
    op: Op,
    progress: &dyn Fn(&str),
) -> anyhow::Result<serde_json::Value> {
    match op {
        Op::Add(kind) => {
            let id = lc.add(kind, progress).await?;
            let s = lc
                .servers
                .iter()
                .find(|s| s.kind == kind && s.id == id)
                .expect("just added");
            Ok(
                serde_json::json!({"kind": kind.name(), "id": id, "address": s.endpoint.addr(), "pid": s.pid()}),
            )
        }
        Op::Remove(kind, id) => {
            lc.remove(kind, id, progress).await?;
            Ok(serde_json::json!({"kind": kind.name(), "id": id, "result": "retired"}))
        }
        Op::RollingRestart => {
            let started = std::time::Instant::now();
            lc.rolling_restart(progress).await?;
            Ok(
                serde_json::json!({"result": "restarted", "seconds": started.elapsed().as_secs_f64()}),
            )
        }
    }
}

#[derive(Deserialize)]
struct KindQuery {
    kind: String,
    id: Option<u32>,
}

fn replicated(kind: &str) -> Result<Kind, ApiError> {
    match Kind::parse(kind) {
        Some(k @ (Kind::Catalog | Kind::Order | Kind::Coordinator)) => Ok(k),
        _ => Err(ApiError::BadRequest(format!(
            "kind must be catalog, order or coordinator, not {kind:?}"
        ))),
    }
}

async fn ask(tx: &mpsc::Sender<Request>, op: Op) -> Result<HttpResponse, ApiError> {
    let (reply, rx) = oneshot::channel();
    tx.send(Request { op, reply })
        .await
        .map_err(|_| ApiError::Unavailable("the cluster is stopping".into()))?;
    match rx.await {
        Ok(Ok((result, progress))) => Ok(
            HttpResponse::Ok().json(serde_json::json!({"result": result, "progress": progress}))
        ),
        Ok(Err(e)) => Err(ApiError::Conflict(e)),
        Err(_) => Err(ApiError::Unavailable("the cluster is stopping".into())),
    }
}

async fn add(
    tx: web::Data<mpsc::Sender<Request>>,
    q: web::Query<KindQuery>,
) -> Result<HttpResponse, ApiError> {
    ask(&tx, Op::Add(replicated(&q.kind)?)).await
}

async fn remove(
    tx: web::Data<mpsc::Sender<Request>>,
    q: web::Query<KindQuery>,
) -> Result<HttpResponse, ApiError> {
    let kind = replicated(&q.kind)?;
    let id =
        q.id.ok_or_else(|| ApiError::BadRequest("give the replica's id (id=N)".into()))?;
    ask(&tx, Op::Remove(kind, id)).await
}

async fn rolling_restart(tx: web::Data<mpsc::Sender<Request>>) -> Result<HttpResponse, ApiError> {
    ask(&tx, Op::RollingRestart).await
}

/// Serves the control API on `listener` until `shutdown`; requests go to `tx`.
pub async fn serve(
    listener: TcpListener,
    admin_token: String,
    tx: mpsc::Sender<Request>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let tx = web::Data::new(tx);
    let tokens = web::Data::new(Tokens::new(&admin_token, Some(&admin_token)));
    let configure = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(tx.clone()).app_data(tokens.clone()).service(
            web::scope("")
                .wrap(from_fn(require_admin_token))
                .route("/add", web::post().to(add))
                .route("/remove", web::post().to(remove))
                .route("/rolling-restart", web::post().to(rolling_restart))
                .default_service(web::to(bookstore_common::server::not_found)),
        );
    };
    bookstore_common::server::serve(listener, 1, configure, shutdown).await
}

/// Client side: sends `POST {control}{path}` to the `local up` whose state file is in
/// `output_dir`, and returns its answer.
pub async fn call(output_dir: &Path, path: &str) -> anyhow::Result<serde_json::Value> {
    let file = state_file(output_dir);
    let text = std::fs::read(&file).map_err(|e| {
        anyhow!(
            "{}: {e}; is `infra local up --output-dir {}` running?",
            file.display(),
            output_dir.display()
        )
    })?;
    let state: UpState =
        serde_json::from_slice(&text).with_context(|| file.display().to_string())?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(600))
        .build()?;
    let r = http
        .post(format!("{}{path}", state.control))
        .bearer_auth(state.admin_token.expose())
        .send()
        .await
        .map_err(|e| {
            anyhow!(
                "cannot reach `local up` (pid {}) at {}: {e}; is it still running?",
                state.pid,
                state.control
            )
        })?;
    let status = r.status();
    let body: serde_json::Value = r.json().await.map_err(|e| anyhow!("{e}"))?;
    if !status.is_success() {
        bail!("{}", body["error"].as_str().unwrap_or("failed"));
    }
    Ok(body)
}
