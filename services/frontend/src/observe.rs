//! The frontend's operator views: `GET /cluster` (the cluster map, operator token),
//! `GET /status.json` (the same map without addresses and error texts, plus the stock of
//! each book; public) and `GET /status` (a self-contained HTML page that renders
//! `/status.json` every second).
//!
//! The map is assembled by whichever frontend is asked: the views come from the
//! coordinator leader (`GET /vs/{kind}/view`), and each server is asked about itself
//! (`/coordinator/status` of every coordinator, `/replication/status` of every catalog
//! and order replica, `/health` of the others), all at once with a short timeout. A map is reused for [`FRESH`], so many open status pages cost the servers
//! no more than one.
//!
//! `/status.json` is public, so what it costs is bounded: it shows the first
//! [`MAX_STATUS_BOOKS`] books (the catalog sends no more: `GET /books?limit=`), its
//! answer is serialised once per refresh and the same bytes served until the next, and
//! at most [`MAX_STATUS_REQUESTS`] requests are served at once (the others get `503` at
//! once).
use crate::{Ctx, Frontend};
use actix_web::http::header;
use actix_web::HttpResponse;
use bookstore_common::client::Client;
use bookstore_common::config::{ClusterConfig, Endpoint, Kind};
use bookstore_common::coordinators::Coordinators;
use bookstore_common::metrics::catch_up;
use bookstore_common::metrics::Metrics;
use bookstore_common::router::Read;
use bookstore_common::types::{
    Book, BookStock, ClusterMap, Health, KindView, ServerInfo, StatusPage, Versioned,
};
use bookstore_common::ApiError;
use bookstore_replication::node::{ReplicaRole, Status};
use bookstore_replication::wire::{CoordinatorRole, CoordinatorStatus, KindReport};
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an assembled map is served before it is assembled again.
pub const FRESH: Duration = Duration::from_millis(250);
/// How long each server (and the view service) has to answer.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// The most books `/status.json` shows (the first by item number).
pub const MAX_STATUS_BOOKS: usize = 1000;
/// The most `/status.json` requests served at once.
pub const MAX_STATUS_REQUESTS: usize = 32;

const STATUS_HTML: &str = include_str!("status.html");

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TierLabel {
    tier: &'static str,
}

/// The books shown and whether there are more, or why there are none.
type Books = Result<(Vec<BookStock>, bool), String>;

/// The frontend's observability state.
pub struct Observer {
    id: u32,
    cluster: ClusterConfig,
    client: Client,
    coordinators: Arc<Coordinators>,
    map: tokio::sync::Mutex<Option<(Instant, Arc<ClusterMap>)>>,
    /// `/status.json`'s answer, serialised once per refresh.
    status: tokio::sync::Mutex<Option<(Instant, Bytes)>>,
    /// Places for `/status.json` requests being served.
    status_slots: tokio::sync::Semaphore,
    cache_lookups: Family<ResultLabel, Counter>,
}

/// What one server said when asked.
enum Answer {
    Replica(Status),
    Coordinator(CoordinatorStatus),
    Plain,
    Down(String),
}

/// The view service's report for each replicated kind, or why there is none.
type Reports = [(Kind, Result<KindReport, String>)];

fn report_of(reports: &Reports, kind: Kind) -> Option<&KindReport> {
    reports
        .iter()
        .find(|(k, _)| *k == kind)
        .and_then(|(_, r)| r.as_ref().ok())
}

/// The view of one replicated kind as the map shows it.
fn kind_view(kind: Kind, report: &Result<KindReport, String>) -> KindView {
    match report {
        Ok(r) => KindView {
            kind: kind.name().into(),
            epoch: r.view.as_ref().map(|v| v.epoch),
            primary: r.view.as_ref().map(|v| v.primary),
            backups: r
                .view
                .as_ref()
                .map(|v| v.backups.clone())
                .unwrap_or_default(),
            synced: r.synced.clone(),
            view_changes: Some(r.view_changes),
            failovers: Some(r.failovers),
            decided_by: r.decided_by.map(|d| d.coordinator),
            decided_in_term: r.decided_by.map(|d| d.term),
            error: None,
        },
        Err(e) => KindView {
            kind: kind.name().into(),
            error: Some(e.clone()),
            ..KindView::default()
        },
    }
}

/// The primary's commit index for a replicated kind, from its own answer.
fn primary_commit(
    reports: &Reports,
    servers: &[(Kind, u32, Endpoint)],
    answers: &[Answer],
    kind: Kind,
) -> Option<u64> {
    let named = report_of(reports, kind).and_then(|r| r.view.as_ref().map(|v| v.primary));
    servers
        .iter()
        .zip(answers)
        .find_map(|((k, id, _), a)| match a {
            Answer::Replica(s)
                if *k == kind
                    && (named == Some(*id)
                        || (named.is_none() && s.role == ReplicaRole::Primary)) =>
            {
                Some(s.commit)
            }
            _ => None,
        })
}

/// One server's line of the map: its address, what it answered and, for a replica, its
/// place in the view and how far it lags the primary (`primary_commit`).
fn server_info(
    kind: Kind,
    id: u32,
    e: &Endpoint,
    answer: &Answer,
    report: Option<&KindReport>,
    primary_commit: impl Fn() -> Option<u64>,
) -> ServerInfo {
    let mut info = ServerInfo::down(kind.name(), id, Some(e.to_string()));
    info.heartbeat_age_ms = report
        .and_then(|r| r.replicas.iter().find(|s| s.id == id))
        .map(|s| s.heartbeat_age_ms);
    match answer {
        Answer::Down(why) => info.error = Some(why.clone()),
        Answer::Plain => {
            info.health = "up".into();
            info.role = "serving".into();
        }
        Answer::Coordinator(s) => {
            info.health = "up".into();
            info.role = match s.role {
                CoordinatorRole::Leader => "leader",
                CoordinatorRole::Follower => "follower",
                CoordinatorRole::Candidate => "candidate",
                CoordinatorRole::Learner => "learner",
                CoordinatorRole::Shutdown => "down",
            }
            .into();
            info.epoch = Some(s.term);
            info.leader = s.leader;
            info.commit_index = s.applied_index;
            info.applied_index = s.applied_index;
            info.heartbeat_age_ms = s.leader_contact_age_ms;
        }
        Answer::Replica(s) => {
            let view = report.and_then(|r| r.view.as_ref());
            info.health = "up".into();
            info.role = match view {
                Some(v) if v.primary == id => "primary".into(),
                Some(v) if v.backups.contains(&id) => "backup".into(),
                Some(_) => "idle".into(),
                None => s.role.to_string(),
            };
            if info.role == "backup" {
                info.synced = report.map(|r| r.synced.contains(&id));
            }
            info.epoch = Some(s.epoch);
            info.commit_index = Some(s.commit);
            info.applied_index = Some(s.applied);
            info.serving_reads = Some(s.serving_reads);
            info.lag_entries = primary_commit().map(|c| c.saturating_sub(s.applied));
        }
    }
    info
}

impl Observer {
    pub fn new(
        id: u32,
        cluster: ClusterConfig,
        token: &str,
        coordinators: Arc<Coordinators>,
    ) -> Observer {
        Observer {
            id,
            cluster,
            client: Client::with_timeout(token, POLL_TIMEOUT),
            coordinators,
            map: tokio::sync::Mutex::new(None),
            status: tokio::sync::Mutex::new(None),
            status_slots: tokio::sync::Semaphore::new(MAX_STATUS_REQUESTS),
            cache_lookups: Family::default(),
        }
    }

    /// Counts a cache lookup made for a public read: `near` (answered from this
    /// frontend's near cache), `hit` (from the cache service) or `miss`.
    pub fn cache_lookup(&self, result: &'static str) {
        self.cache_lookups
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The current map (at most [`FRESH`] old).
    pub async fn map(&self) -> Arc<ClusterMap> {
        let mut slot = self.map.lock().await;
        if let Some((at, map)) = slot.as_ref() {
            if at.elapsed() < FRESH {
                return map.clone();
            }
        }
        let map = Arc::new(self.assemble().await);
        *slot = Some((Instant::now(), map.clone()));
        map
    }

    async fn report(&self, kind: Kind) -> Result<KindReport, String> {
        self.coordinators
            .view(kind.name(), POLL_TIMEOUT)
            .await
            .map_err(|e| format!("coordinators: {e}"))
    }

    async fn ask(&self, kind: Kind, id: u32, e: &Endpoint) -> Answer {
        match kind {
            Kind::Frontend if id == self.id => Answer::Plain,
            Kind::Coordinator => match self
                .client
                .get_json::<CoordinatorStatus>(&format!("{}/coordinator/status", e.url()))
                .await
            {
                Ok(s) => Answer::Coordinator(s),
                Err(err) => Answer::Down(err.to_string()),
            },
            Kind::Catalog | Kind::Order => {
                match self
                    .client
                    .get_json::<Status>(&format!("{}/replication/status", e.url()))
                    .await
                {
                    Ok(s) if s.up => Answer::Replica(s),
                    Ok(_) => Answer::Down("replica is shut down".into()),
                    Err(err) => Answer::Down(err.to_string()),
                }
            }
            _ => match self
                .client
                .get_json::<Health>(&format!("{}/health", e.url()))
                .await
            {
                Ok(h) if h.status == "ok" => Answer::Plain,
                Ok(h) => Answer::Down(format!("health says {:?}", h.status)),
                Err(err) => Answer::Down(err.to_string()),
            },
        }
    }

    async fn assemble(&self) -> ClusterMap {
        let (catalog, order) = tokio::join!(self.report(Kind::Catalog), self.report(Kind::Order));
        let reports = [(Kind::Catalog, catalog), (Kind::Order, order)];
        let servers = self.servers(&reports);
        let answers =
            futures::future::join_all(servers.iter().map(|(k, id, e)| self.ask(*k, *id, e))).await;
        let views = reports
            .iter()
            .map(|(kind, r)| kind_view(*kind, r))
            .collect();
        let servers = servers
            .iter()
            .zip(&answers)
            .map(|((kind, id, e), answer)| {
                let report = report_of(&reports, *kind);
                server_info(*kind, *id, e, answer, report, || {
                    primary_commit(&reports, &servers, &answers, *kind)
                })
            })
            .collect();
        ClusterMap {
            frontend: self.id,
            time_ms: bookstore_common::clock::now_ms(),
            views,
            servers,
        }
    }

    /// The servers to ask. The replicas are the view service's members (replicas added or
    /// retired at run time included); the cluster file's when the view service does not
    /// answer. The coordinators are the group's members as the leader reports them.
    fn servers(&self, reports: &Reports) -> Vec<(Kind, u32, Endpoint)> {
        let mut servers: Vec<(Kind, u32, Endpoint)> = Vec::new();
        let group = reports
            .iter()
            .find_map(|(_, r)| r.as_ref().ok())
            .map(|r| r.coordinators.clone())
            .filter(|g| !g.is_empty());
        if let Some(g) = &group {
            servers.extend(g.iter().filter_map(|(id, url)| {
                Endpoint::from_url(url).map(|e| (Kind::Coordinator, *id as u32, e))
            }));
        }
        for (kind, id, e) in self.cluster.all() {
            if kind == Kind::Coordinator && group.is_some() {
                continue;
            }
            let members = report_of(reports, kind)
                .map(|r| &r.members)
                .filter(|m| !m.is_empty());
            match members {
                None => servers.push((kind, id, e)),
                Some(m) if id == 0 => servers.extend(
                    m.iter()
                        .filter_map(|(id, url)| Endpoint::from_url(url).map(|e| (kind, *id, e))),
                ),
                Some(_) => {}
            }
        }
        servers
    }

    /// Registers the frontend's own metrics: cache hits and misses, the primary switches
    /// of its routers.
    pub fn register_metrics(&self, frontend: &actix_web::web::Data<Frontend>, metrics: &Metrics) {
        metrics.register(
            "frontend_cache_lookups",
            "Cache lookups of public reads, by result (near, hit or miss)",
            self.cache_lookups.clone(),
        );
        let switches: Family<TierLabel, Counter> = metrics.add(
            "router_primary_switches",
            "Times the frontend moved its writes to another replica (failovers followed)",
        );
        let near_entries: Gauge<i64> = metrics.add(
            "frontend_near_entries",
            "Answers held in this frontend's near cache",
        );
        let near_leased: Gauge<i64> = metrics.add(
            "frontend_near_leased",
            "1 while this frontend holds a near lease from the cache (answers from memory)",
        );
        let f = frontend.clone();
        metrics.on_scrape(move || {
            for (tier, router) in [("catalog", &f.catalog), ("order", &f.order)] {
                catch_up(
                    &switches.get_or_create(&TierLabel { tier }),
                    router.primary_switches(),
                );
            }
            let near = f.near.as_deref();
            near_entries.set(near.map_or(0, |n| n.len() as i64));
            near_leased.set(i64::from(near.is_some_and(|n| n.leased())));
        });
    }

    /// `/status.json`'s answer (at most [`FRESH`] old), serialised once per refresh.
    async fn status(&self, frontend: &Frontend) -> Bytes {
        let mut slot = self.status.lock().await;
        if let Some((at, bytes)) = slot.as_ref() {
            if at.elapsed() < FRESH {
                return bytes.clone();
            }
        }
        let (map, books) = tokio::join!(self.map(), self.books(frontend));
        let (books, books_truncated, books_error) = match books {
            Ok((b, more)) => (b, more, None),
            Err(e) => (Vec::new(), false, Some(e)),
        };
        let page = StatusPage {
            cluster: redact(&map),
            books,
            books_truncated,
            books_error,
        };
        let bytes = Bytes::from(serde_json::to_vec(&page).unwrap_or_default());
        *slot = Some((Instant::now(), bytes.clone()));
        bytes
    }

    /// The stock of the first [`MAX_STATUS_BOOKS`] books, read from the catalog primary,
    /// and whether it holds more.
    async fn books(&self, frontend: &Frontend) -> Books {
        let path = format!("/books?limit={}", MAX_STATUS_BOOKS + 1);
        let read = frontend.catalog.read(&path, Read::Primary);
        match tokio::time::timeout(Duration::from_secs(1), read).await {
            Ok(Ok(body)) => serde_json::from_slice::<Versioned<Vec<Book>>>(&body)
                .map(|v| {
                    let more = v.result.len() > MAX_STATUS_BOOKS;
                    let shown = v
                        .result
                        .into_iter()
                        .take(MAX_STATUS_BOOKS)
                        .map(|b| BookStock {
                            item_number: b.item_number,
                            title: b.title,
                            stock: b.stock,
                        })
                        .collect();
                    (shown, more)
                })
                .map_err(|_| "bad catalog answer".to_string()),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "status page: catalog call failed");
                Err("catalog unavailable".into())
            }
            Err(_) => Err("catalog did not answer within 1 s".into()),
        }
    }
}

/// The map as the public may see it: no addresses, no error texts.
pub fn redact(map: &ClusterMap) -> ClusterMap {
    let mut map = map.clone();
    for s in &mut map.servers {
        s.address = None;
        s.error = None;
    }
    for v in &mut map.views {
        if v.error.is_some() {
            v.error = Some("view service unavailable".into());
        }
    }
    map
}

/// The cluster map: every server with its role, health, epoch, lag and last heartbeat.
/// Takes the cluster token, or the admin token (also as `Authorization: Bearer`).
#[utoipa::path(get, path = "/cluster", responses((status = 200, body = ClusterMap)))]
pub async fn cluster(ctx: Ctx) -> HttpResponse {
    let map = ctx.obs.map().await;
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(&*map)
}

/// What the status page shows: the cluster map without addresses and error texts, and
/// the stock of the first books. At most [`MAX_STATUS_REQUESTS`] are served at once.
#[utoipa::path(get, path = "/status.json", responses(
    (status = 200, body = StatusPage),
    (status = 503, description = "Too many status requests at once", body = bookstore_common::error::ErrorBody),
))]
pub async fn status_json(ctx: Ctx) -> Result<HttpResponse, ApiError> {
    let _slot = ctx.obs.status_slots.try_acquire().map_err(|_| {
        ApiError::Unavailable(format!(
            "status page busy: {MAX_STATUS_REQUESTS} requests are being served; retry"
        ))
    })?;
    let body = ctx.obs.status(&ctx).await;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header(header::ContentType::json())
        .body(body))
}

/// The status page (HTML); everything it shows comes from `/status.json`.
#[utoipa::path(get, path = "/status", responses(
    (status = 200, description = "The page", body = String, content_type = "text/html"),
))]
pub async fn status_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             connect-src 'self'",
        ))
        .body(STATUS_HTML)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_addresses_and_error_texts() {
        let map = ClusterMap {
            frontend: 0,
            time_ms: 1,
            views: vec![KindView {
                kind: "catalog".into(),
                error: Some("unreachable: http://10.0.0.1:8000".into()),
                ..KindView::default()
            }],
            servers: vec![ServerInfo {
                heartbeat_age_ms: Some(5),
                error: Some("connection refused to 10.0.0.1:8002".into()),
                ..ServerInfo::down("catalog", 0, Some("10.0.0.1:8002".into()))
            }],
        };
        let text = serde_json::to_string(&redact(&map)).unwrap();
        assert!(!text.contains("10.0.0.1"), "{text}");
        assert!(text.contains("\"heartbeat_age_ms\":5"), "{text}");
    }
}

/// The public observability routes (`/status`, `/status.json`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(status_page, status_json))]
pub struct StatusApi;

/// The operator routes (`/cluster`; `/metrics` is in `metrics::MetricsApi`).
#[derive(utoipa::OpenApi)]
#[openapi(paths(cluster))]
pub struct ClusterApi;
