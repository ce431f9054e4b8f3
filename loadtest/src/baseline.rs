//! A bare one-hop HTTP server answering with fixed bodies the size of the frontend's,
//! to show what this machine and this load generator can do without the bookstore.
use actix_web::dev::Server;
use actix_web::http::header::ContentType;
use actix_web::{web, App, HttpResponse, HttpServer};
use std::future::Future;
use std::net::TcpListener;

/// What `GET /lookup` answers: the seed's first book, as the frontend sends it.
pub const LOOKUP_BODY: &str = r#"{"result":{"cost":10,"item_number":1,"stock":3,"title":"How to get a good grade in 677 in 20 minutes a day","topic":"distributed systems"}}"#;

/// What `GET /search` answers: the seed's two distributed-systems books.
pub const SEARCH_BODY: &str = r#"{"result":[{"item_number":1,"title":"How to get a good grade in 677 in 20 minutes a day"},{"item_number":2,"title":"RPCs for Dummies"}]}"#;

async fn lookup() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(LOOKUP_BODY)
}

async fn search() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(SEARCH_BODY)
}

async fn health() -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(ContentType::json())
        .body(r#"{"status":"ok","service":"baseline","id":0}"#)
}

/// The baseline server on `listener` with `workers` threads (0: one per core), not yet
/// awaited.
pub fn server(listener: TcpListener, workers: usize) -> std::io::Result<Server> {
    let mut server = HttpServer::new(|| {
        App::new()
            .route("/lookup", web::get().to(lookup))
            .route("/search", web::get().to(search))
            .route("/health", web::get().to(health))
    })
    .disable_signals();
    if workers > 0 {
        server = server.workers(workers);
    }
    Ok(server.listen(listener)?.run())
}

/// Serves `GET /lookup`, `GET /search` and `GET /health` on `listener` with `workers`
/// threads (0: one per core) until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let server = server(listener, workers)?;
    bookstore_common::server::run_until(server, shutdown).await
}
