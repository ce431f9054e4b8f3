//! Pieces every service's server uses: running on a bound listener until a shutdown
//! future resolves, the limits every server enforces ([`Limits`], in one place), JSON
//! 404s, JSON body errors, binding with a clear error.
//!
//! Open files: a server raises its soft `RLIMIT_NOFILE` to the hard limit when it starts
//! ([`raise_open_file_limit`]), and takes at most half of it in connections
//! ([`Limits::fit_open_files`]), so its own files (WAL, logs) and its calls to other
//! services always find a descriptor.
//!
//! Over a limit a client gets an answer, never a hang: 413, 414 or 431 with a JSON body
//! naming the limit, 503 with a JSON body when too many requests are in flight or one
//! takes too long, and (from actix's HTTP/1 parser, with an empty body, see
//! `docs/security.md`) 408 when the request head is not received in time and 431 when
//! the head exceeds 128 KiB or 96 headers. Every other non-JSON error answer (a 405 of
//! an actix resource, a 413 of a body extractor) gets its body rewritten as JSON.
use crate::ApiError;
use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{Server, ServiceRequest, ServiceResponse};
use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use serde_json::json;
use std::future::Future;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The limits of one server. [`Limits::default`] is what every service uses, except the
/// body limit of the replicated services ([`Limits::replica`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body (`Content-Length`, or bytes read by a body extractor): 413.
    pub max_body: usize,
    /// Longest request target (path and query): 414.
    pub max_uri: usize,
    /// Largest sum of header names and values: 431.
    pub max_header_bytes: usize,
    /// Time to receive a request head (actix `client_request_timeout`): 408.
    pub head_timeout: Duration,
    /// Time for a handler to answer, reading the body included: 503.
    pub request_timeout: Duration,
    /// Requests in flight in the whole server: 503 above it.
    pub max_in_flight: usize,
    /// Open connections per worker thread; above it new connections wait in the backlog.
    pub max_connections_per_worker: usize,
    /// Listen backlog (connections the kernel queues before they are accepted).
    pub backlog: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_body: 1 << 20,
            max_uri: 8 << 10,
            max_header_bytes: 16 << 10,
            head_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            max_connections_per_worker: 4096,
            backlog: 1024,
        }
    }
}

impl Limits {
    /// These limits with the connection cap lowered so that the connections of `workers`
    /// workers take at most half of `open_files` descriptors: the other half stays for
    /// the server's own files and its calls to other services.
    pub fn fit_open_files(self, open_files: u64, workers: usize) -> Limits {
        let share = open_files / 2 / workers.max(1) as u64;
        let per_worker = usize::try_from(share).unwrap_or(usize::MAX).max(16);
        Limits {
            max_connections_per_worker: self.max_connections_per_worker.min(per_worker),
            ..self
        }
    }

    /// Catalog and order: a replication message is at most 4 MiB (larger batches, such as
    /// snapshots, travel in parts of that size: `bookstore_replication::transfer`), so
    /// their bodies may be up to 8 MiB, whatever the size of the state.
    pub fn replica() -> Limits {
        Limits {
            max_body: 8 << 20,
            ..Limits::default()
        }
    }
}

/// Serves an app on a bound `listener` with `workers` threads until `shutdown` resolves,
/// with [`Limits::default`]. `configure` registers the app's data and routes (it runs
/// once per worker). Every request is recorded by [`crate::metrics::track`] when the app
/// registers a `web::Data<Metrics>`.
pub async fn serve<F>(
    listener: TcpListener,
    workers: usize,
    configure: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    serve_with(listener, workers, Limits::default(), configure, shutdown).await
}

/// [`serve`] with explicit [`Limits`].
pub async fn serve_with<F>(
    listener: TcpListener,
    workers: usize,
    limits: Limits,
    configure: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    // (HttpServer::backlog only applies to sockets it binds itself.)
    set_backlog(&listener, limits.backlog)?;
    let open_files = raise_open_file_limit();
    let fitted = limits.fit_open_files(open_files, workers.max(1));
    if fitted != limits {
        tracing::warn!(
            open_files,
            connections_per_worker = fitted.max_connections_per_worker,
            "few open files allowed: fewer connections per worker (raise the hard RLIMIT_NOFILE)"
        );
    }
    let limits = fitted;
    let guard = web::Data::new(Guard {
        limits,
        in_flight: Arc::new(AtomicUsize::new(0)),
    });
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .app_data(guard.clone())
            .app_data(web::PayloadConfig::new(limits.max_body))
            .wrap(from_fn(crate::metrics::track))
            .wrap(from_fn(enforce_limits))
            .configure(configure.clone())
    })
    .workers(workers.max(1))
    .client_request_timeout(limits.head_timeout)
    .max_connections(limits.max_connections_per_worker)
    .disable_signals()
    .listen(listener)?
    .run();
    run_until(server, shutdown).await
}

/// Raises this process's soft limit of open files to its hard limit (the default soft
/// limit, 1024, is far below 2 workers x 4096 connections); returns the limit in force.
pub fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
        }
    }
}

/// Re-listens on an already listening socket: Linux then uses the new backlog.
fn set_backlog(listener: &TcpListener, backlog: u32) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let n = i32::try_from(backlog).unwrap_or(i32::MAX);
        // SAFETY: `listen` on a socket descriptor this listener owns; no memory involved.
        if unsafe { libc::listen(listener.as_raw_fd(), n) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    #[cfg(not(unix))]
    let _ = (listener, backlog);
    Ok(())
}

struct Guard {
    limits: Limits,
    in_flight: Arc<AtomicUsize>,
}

/// Releases an in-flight slot when dropped.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn refuse(req: ServiceRequest, status: StatusCode, msg: String) -> ServiceResponse<BoxBody> {
    let mut resp = HttpResponse::build(status);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.insert_header((header::RETRY_AFTER, "1"));
    }
    // The unread body is not worth keeping the connection for.
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        resp.force_close();
    }
    req.into_response(resp.json(json!({ "error": msg })))
}

/// The middleware [`serve`] wraps every app in: checks the request against the
/// [`Limits`], bounds the handler's time, and makes every error answer JSON.
async fn enforce_limits(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        return next.call(req).await.map(jsonify);
    };
    let l = guard.limits;
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > l.max_uri {
        let msg = format!(
            "request target is {target} bytes; the limit is {} bytes",
            l.max_uri
        );
        return Ok(refuse(req, StatusCode::URI_TOO_LONG, msg));
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    if header_bytes > l.max_header_bytes {
        let msg = format!(
            "request headers are {header_bytes} bytes; the limit is {} bytes",
            l.max_header_bytes
        );
        return Ok(refuse(
            req,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            msg,
        ));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(n) = declared.filter(|n| *n > l.max_body as u64) {
        let msg = format!(
            "request body is {n} bytes; the limit is {} bytes",
            l.max_body
        );
        return Ok(refuse(req, StatusCode::PAYLOAD_TOO_LARGE, msg));
    }
    if guard.in_flight.fetch_add(1, Ordering::AcqRel) >= l.max_in_flight {
        guard.in_flight.fetch_sub(1, Ordering::AcqRel);
        let msg = format!(
            "server busy: {} requests in flight already; retry",
            l.max_in_flight
        );
        return Ok(refuse(req, StatusCode::SERVICE_UNAVAILABLE, msg));
    }
    let _slot = Slot(guard.in_flight.clone());
    // (No clone of the request may be held across `next.call`: routing needs it unique.)
    match tokio::time::timeout(l.request_timeout, next.call(req)).await {
        Ok(r) => r.map(jsonify),
        Err(_) => Err(ApiError::Unavailable(format!(
            "request not answered within {} s (slow body or overloaded server); retry",
            l.request_timeout.as_secs_f64()
        ))
        .into()),
    }
}

/// Gives a JSON body to an error answer that has none (actix's own 405, 413, ...).
fn jsonify<B: MessageBody + 'static>(res: ServiceResponse<B>) -> ServiceResponse<BoxBody> {
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return res.map_into_boxed_body();
    }
    let msg = match res.response().error() {
        Some(e) => e.to_string(),
        None => status.canonical_reason().unwrap_or("error").to_lowercase(),
    };
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for (k, v) in old.headers() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            new.append_header((k.clone(), v.clone()));
        }
    }
    ServiceResponse::new(req, new.json(json!({ "error": msg })))
}

/// Runs `server` until it stops by itself or `shutdown` resolves (then stops gracefully).
pub async fn run_until(server: Server, shutdown: impl Future<Output = ()>) -> std::io::Result<()> {
    let handle = server.handle();
    tokio::select! {
        r = server => r,
        _ = shutdown => {
            handle.stop(true).await;
            Ok(())
        }
    }
}

/// The methods each path pattern answers (e.g. `"/lookup"` -> `"GET"`), registered as app
/// data by a service from its OpenAPI documents: [`not_found`] answers a known path with
/// an unknown method 405 with `Allow` (a route added with `cfg.route(path, web::get()..)`
/// does not match other methods at all, so actix would answer 404).
#[derive(Debug, Default, Clone)]
pub struct AllowedMethods(pub std::collections::HashMap<String, String>);

/// The default service: a JSON 404 naming the route, or a JSON 405 with `Allow` for a
/// known path (see [`AllowedMethods`]).
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    let allow = req.match_pattern().and_then(|pattern| {
        req.app_data::<web::Data<AllowedMethods>>()
            .and_then(|a| a.0.get(&pattern).cloned())
    });
    if let Some(allow) = allow {
        return HttpResponse::MethodNotAllowed()
            .insert_header((header::ALLOW, allow.clone()))
            .json(json!({ "error": format!("method not allowed; use {allow}") }));
    }
    ApiError::NotFound(format!("no route {} {}", req.method(), req.path())).error_response()
}

/// The answer of a route used with the wrong method.
pub fn method_not_allowed(
    allow: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || std::future::ready(ApiError::MethodNotAllowed { allow }.error_response())
}

/// A resource at `path` answering `route` (e.g. `web::post().to(handler)`), and a JSON
/// 405 naming `allow` to any other method.
pub fn only(path: &str, allow: &'static str, route: actix_web::Route) -> actix_web::Resource {
    web::resource(path)
        .route(route)
        .default_service(web::to(method_not_allowed(allow)))
}

/// `server::get` and `server::post`: [`only`] for one method.
macro_rules! only_for {
    ($name:ident, $method:literal, $route:path) => {
        #[doc = concat!("`only(path, \"", $method, "\", ", stringify!($route), "().to(handler))`.")]
        pub fn $name<F, Args>(path: &str, handler: F) -> actix_web::Resource
        where
            F: actix_web::Handler<Args>,
            Args: actix_web::FromRequest + 'static,
            F::Output: actix_web::Responder + 'static,
        {
            only(path, $method, $route().to(handler))
        }
    };
}
only_for!(get, "GET", web::get);
only_for!(post, "POST", web::post);

/// JSON body extraction: 1 MiB at most, errors as 400 with a JSON body.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1 << 20)
        .error_handler(|err, _req| ApiError::BadRequest(format!("bad JSON body: {err}")).into())
}

/// Binds `addr`, naming the server in the error (e.g. "catalog 0: 127.0.0.1:8002 is
/// already in use").
pub fn bind(addr: &str, who: &str) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).map_err(|error| {
        let (who, addr) = (who.to_string(), addr.to_string());
        match error.kind() {
            std::io::ErrorKind::AddrInUse => BindError::InUse { who, addr },
            _ => BindError::Other { who, addr, error },
        }
    })
}

/// Why [`bind`] failed, naming the server and the address.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("{who}: {addr} is already in use")]
    InUse { who: String, addr: String },
    #[error("{who}: cannot listen on {addr}: {error}")]
    Other {
        who: String,
        addr: String,
        error: std::io::Error,
    },
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this is called,
/// not when the future is first polled, so a signal that comes in between is neither lost
/// nor left to its default action (which would end the process without its clean-up).
/// Call it inside a tokio runtime.
pub fn termination() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler installs");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler installs");
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_take_at_most_half_of_the_open_files() {
        let l = Limits::default();
        // The default soft limit: 1024 files, 2 workers -> 256 connections each.
        assert_eq!(l.fit_open_files(1024, 2).max_connections_per_worker, 256);
        // A raised limit leaves the configured cap.
        assert_eq!(l.fit_open_files(65_536, 2), l);
        assert_eq!(l.fit_open_files(1 << 20, 1), l);
        // Never below a floor that still serves.
        assert_eq!(l.fit_open_files(10, 4).max_connections_per_worker, 16);
        assert_eq!(l.fit_open_files(1024, 0).max_connections_per_worker, 512);
    }
}
