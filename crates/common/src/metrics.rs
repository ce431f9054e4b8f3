//! Prometheus metrics of one server, served at `GET /metrics` in the OpenMetrics text
//! format by the `prometheus-client` crate.
//!
//! Each server owns one [`Metrics`] (a registry, not a process-wide global: the test
//! cluster runs every server in one process). Register it as app data
//! (`web::Data<Metrics>`) and [`crate::server::serve`]'s [`track`] middleware records,
//! for every request:
//! - `bookstore_http_requests_total{route,method,status}`,
//! - `bookstore_http_request_duration_seconds{route,method,status}` (histogram),
//! - `bookstore_downstream_duration_seconds{route,tier}` (histogram): the time the
//!   request spent in each downstream tier, read from the `Server-Timing` header the
//!   handler set ([`crate::timing`]).
//!
//! `route` is the matched route *pattern*, written `/vs/:kind/ping` (never the raw path),
//! or `unmatched`, so the number of series is bounded whatever clients send. (`:kind`
//! rather than actix's `{kind}`: simple exposition parsers stop at a `}` in a label.)
//!
//! Services add their own metrics with [`Metrics::register`] and values owned elsewhere
//! (replication state, cache counts) with [`Metrics::on_scrape`] hooks, run just before
//! each encoding.
use crate::timing;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse};
use parking_lot::Mutex;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Metric, Registry};
use std::time::Instant;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Labels of the per-request metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub route: String,
    pub method: &'static str,
    pub status: u16,
}

/// Labels of the downstream-call histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabels {
    pub route: String,
    pub tier: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Latency buckets: 100 µs to about 3.3 s, doubling.
pub fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

type Hook = Box<dyn Fn() + Send + Sync>;

/// The metrics of one server.
pub struct Metrics {
    registry: Mutex<Registry>,
    hooks: Mutex<Vec<Hook>>,
    requests: Family<HttpLabels, Counter>,
    durations: HistogramFamily<HttpLabels>,
    downstream: HistogramFamily<TierLabels>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with the per-request metrics; every name starts with `bookstore_`.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("bookstore");
        let requests = Family::<HttpLabels, Counter>::default();
        let durations: HistogramFamily<HttpLabels> =
            Family::new_with_constructor(latency_histogram);
        let downstream: HistogramFamily<TierLabels> =
            Family::new_with_constructor(latency_histogram);
        registry.register(
            "http_requests",
            "HTTP requests answered, by route pattern, method and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request, by route pattern, method and status",
            durations.clone(),
        );
        registry.register(
            "downstream_duration_seconds",
            "Time a request spent calling each downstream tier (from its Server-Timing header)",
            downstream.clone(),
        );
        Metrics {
            registry: Mutex::new(registry),
            hooks: Mutex::new(Vec::new()),
            requests,
            durations,
            downstream,
        }
    }

    /// Registers a metric under `bookstore_<name>` (a counter gets `_total` appended).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.registry.lock().register(name, help, metric);
    }

    /// A new metric registered as by [`Metrics::register`], returned for updating.
    pub fn add<M: Metric + Clone + Default>(&self, name: &str, help: &str) -> M {
        let metric = M::default();
        self.register(name, help, metric.clone());
        metric
    }

    /// Runs `hook` before every encoding (to copy values owned elsewhere into gauges).
    pub fn on_scrape(&self, hook: impl Fn() + Send + Sync + 'static) {
        self.hooks.lock().push(Box::new(hook));
    }

    /// Records one answered request.
    pub fn observe_request(&self, labels: HttpLabels, seconds: f64, server_timing: Option<&str>) {
        if let Some(header) = server_timing {
            for (tier, ms) in timing::parse(header).into_iter().skip(1) {
                self.downstream
                    .get_or_create(&TierLabels {
                        route: labels.route.clone(),
                        tier: tier.to_string(),
                    })
                    .observe(ms / 1000.0);
            }
        }
        self.durations.get_or_create(&labels).observe(seconds);
        self.requests.get_or_create(&labels).inc();
    }

    /// The OpenMetrics text of every metric (runs the scrape hooks first).
    pub fn render(&self) -> String {
        for hook in self.hooks.lock().iter() {
            hook();
        }
        let mut out = String::new();
        encode(&mut out, &self.registry.lock()).expect("writing to a String cannot fail");
        out
    }
}

/// `/vs/{kind}/ping` -> `/vs/:kind/ping` (a regex segment `{id:\d+}` -> `:id`).
pub fn route_label(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut depth = 0;
    let mut in_name = false;
    for c in pattern.chars() {
        match c {
            '{' => {
                if depth == 0 {
                    out.push(':');
                    in_name = true;
                }
                depth += 1;
            }
            '}' if depth > 0 => depth -= 1,
            ':' if depth > 0 => in_name = false,
            _ if depth > 0 => {
                if in_name {
                    out.push(c);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Middleware: records every request in the server's [`Metrics`] (a no-op when none is
/// registered as app data). Wrapped around every app by [`crate::server::serve`].
pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let Some(metrics) = req.app_data::<web::Data<Metrics>>().cloned() else {
        return next.call(req).await;
    };
    let start = Instant::now();
    let route = req
        .match_pattern()
        .map_or_else(|| "unmatched".to_string(), |p| route_label(&p));
    let method = method_label(req.method());
    let res = next.call(req).await;
    let seconds = start.elapsed().as_secs_f64();
    let (status, timing) = match &res {
        Ok(r) => (
            r.status().as_u16(),
            r.headers()
                .get(timing::SERVER_TIMING)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
        ),
        Err(e) => (e.as_response_error().status_code().as_u16(), None),
    };
    metrics.observe_request(
        HttpLabels {
            route,
            method,
            status,
        },
        seconds,
        timing.as_deref(),
    );
    res
}

/// The server's Prometheus metrics (OpenMetrics text). Takes the cluster token, or the
/// admin token, also as `Authorization: Bearer` (what a Prometheus scrape job sends).
#[utoipa::path(get, path = "/metrics", responses(
    (status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text"),
))]
pub async fn route(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(CONTENT_TYPE)
        .body(metrics.render())
}

/// `GET /metrics`, for each server's internal OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(paths(route))]
pub struct MetricsApi;

/// Registers `GET /metrics` behind [`crate::auth::require_operator_token`] (the cluster
/// token, or the admin token; both also as `Authorization: Bearer`, which Prometheus
/// sends). Register it before a catch-all scope.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/metrics")
            .wrap(from_fn(crate::auth::require_operator_token))
            .route(web::get().to(route))
            .default_service(web::to(crate::server::method_not_allowed("GET"))),
    );
}

/// Raises a counter to `value` (counters only go up; values owned elsewhere are copied
/// in at scrape time).
pub fn catch_up(counter: &Counter, value: u64) {
    let now = counter.get();
    if value > now {
        counter.inc_by(value - now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::gauge::Gauge;

    fn labels(route: &str, status: u16) -> HttpLabels {
        HttpLabels {
            route: route.into(),
            method: "GET",
            status,
        }
    }

    #[test]
    fn renders_requests_downstream_tiers_and_hooked_gauges() {
        let m = Metrics::new();
        let g: Gauge = Gauge::default();
        m.register("answer", "a gauge set by a scrape hook", g.clone());
        m.on_scrape(move || {
            g.set(42);
        });
        m.observe_request(
            labels("/lookup", 200),
            0.002,
            Some("frontend;dur=2.000, cache;dur=0.500, catalog;dur=1.000"),
        );
        m.observe_request(labels("/lookup", 200), 0.001, None);
        m.observe_request(labels("/lookup", 404), 0.001, None);
        let text = m.render();
        assert!(text.contains(
            "bookstore_http_requests_total{route=\"/lookup\",method=\"GET\",status=\"200\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "bookstore_http_requests_total{route=\"/lookup\",method=\"GET\",status=\"404\"} 1\n"
        ));
        assert!(text.contains(
            "bookstore_downstream_duration_seconds_count{route=\"/lookup\",tier=\"catalog\"} 1\n"
        ));
        assert!(text.contains(
            "bookstore_downstream_duration_seconds_count{route=\"/lookup\",tier=\"cache\"} 1\n"
        ));
        // The server's own time is not a downstream tier.
        assert!(!text.contains("tier=\"frontend\""));
        assert!(text.contains("bookstore_answer 42\n"));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn route_labels_name_parameters_without_braces() {
        assert_eq!(route_label("/lookup"), "/lookup");
        assert_eq!(route_label("/vs/{kind}/ping"), "/vs/:kind/ping");
        assert_eq!(route_label("/a/{id:\\d{1,3}}/b"), "/a/:id/b");
    }
}
