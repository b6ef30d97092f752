//! Prometheus metrics: HTTP requests and latency by route, and the store's commit batches.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::Ordering;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 18))
}

/// The server's metrics registry.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register("tessera_http_requests", "HTTP requests by method, route and status", requests.clone());
        registry.register("tessera_http_request_duration_seconds", "HTTP request latency by method and route", latency.clone());
        Metrics { registry, requests, latency }
    }
}

/// Middleware recording every request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_string();
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str().to_string()).unwrap_or_else(|| "unmatched".into());
    let response = next.run(req).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    tracing::debug!(%method, %route, status, micros = elapsed.as_micros() as u64, "request");
    state.metrics.latency.get_or_create(&RouteLabels { method: method.clone(), route: route.clone() }).observe(elapsed.as_secs_f64());
    state.metrics.requests.get_or_create(&RequestLabels { method, route, status }).inc();
    response
}

/// `GET /metrics` in the Prometheus text format.
pub async fn render(State(state): State<AppState>) -> Response {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.metrics.registry).is_err() {
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics").into_response();
    }
    // The store's counters live in the store; append them before the end marker.
    let body = text.trim_end().strip_suffix("# EOF").unwrap_or(&text).to_string();
    let m = state.engine.store_metrics();
    let mut out = body;
    for (name, help, value) in [
        ("tessera_store_commit_batches", "Database transactions committed by the group-commit writer", m.commit_batches.load(Ordering::Relaxed)),
        ("tessera_store_transactions", "FHIR transactions acknowledged by the store", m.transactions.load(Ordering::Relaxed)),
        ("tessera_store_writes", "Resource versions written", m.writes.load(Ordering::Relaxed)),
    ] {
        out.push_str(&format!("# HELP {name} {help}.\n# TYPE {name} counter\n{name}_total {value}\n"));
    }
    let head = m.audit_head_seq.load(Ordering::Relaxed);
    out.push_str(&format!("# HELP tessera_audit_head_seq Sequence number of the head of the audit chain (compare with the anchor; it never goes down).\n# TYPE tessera_audit_head_seq gauge\ntessera_audit_head_seq {head}\n"));
    let failing = u8::from(m.write_failure().is_some());
    out.push_str(&format!("# HELP tessera_store_writes_failing 1 while group commits fail (the server cannot record writes or their audit).\n# TYPE tessera_store_writes_failing gauge\ntessera_store_writes_failing {failing}\n"));
    let bg = state.engine.break_glass_total();
    out.push_str(&format!("# HELP tessera_break_glass Break-glass grants (alert on any increase).\n# TYPE tessera_break_glass counter\ntessera_break_glass_total {bg}\n"));
    out.push_str("# EOF\n");
    ([(http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out).into_response()
}
