//! Pieces every service's server uses: running on a bound listener until a shutdown
//! future resolves, JSON 404s, JSON body errors, binding with a clear error.
use crate::ApiError;
use actix_web::dev::Server;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use std::future::Future;
use std::net::TcpListener;

/// Serves an app on a bound `listener` with `workers` threads until `shutdown` resolves.
/// `configure` registers the app's data and routes (it runs once per worker). Every
/// request is recorded by [`crate::metrics::track`] when the app registers a
/// `web::Data<Metrics>`.
pub async fn serve<F>(
    listener: TcpListener,
    workers: usize,
    configure: F,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()>
where
    F: Fn(&mut web::ServiceConfig) + Send + Clone + 'static,
{
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new()
            .wrap(actix_web::middleware::from_fn(crate::metrics::track))
            .configure(configure.clone())
    })
    .workers(workers.max(1))
    .disable_signals()
    .listen(listener)?
    .run();
    run_until(server, shutdown).await
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

/// The default service: a JSON 404 naming the route.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    ApiError::NotFound(format!("no route {} {}", req.method(), req.path())).error_response()
}

/// The answer of a route used with the wrong method.
pub fn method_not_allowed(
    allow: &'static str,
) -> impl Fn() -> std::future::Ready<HttpResponse> + Clone {
    move || std::future::ready(ApiError::MethodNotAllowed { allow }.error_response())
}

/// JSON body extraction: 1 MiB at most, errors as 400 with a JSON body.
pub fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(1 << 20)
        .error_handler(|err, _req| ApiError::BadRequest(format!("bad JSON body: {err}")).into())
}

/// Binds `addr`, naming the server in the error (e.g. "catalog 0: 127.0.0.1:8002 is
/// already in use").
pub fn bind(addr: &str, who: &str) -> Result<TcpListener, String> {
    TcpListener::bind(addr).map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!("{who}: {addr} is already in use"),
        _ => format!("{who}: cannot listen on {addr}: {e}"),
    })
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn termination() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler installs");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
