//! The HTTP face of Tessera: maps FHIR REST over HTTP onto the [`tessera_engine::Engine`].
//!
//! This crate owns only HTTP concerns — routing, content negotiation (`Accept`, `_format`),
//! request headers (`If-Match`, `If-None-Exist`, `If-None-Match`, `Prefer`), response
//! headers (`ETag`, `Last-Modified`, `Location`), body limits, `/healthz` and Prometheus
//! `/metrics`. Every FHIR decision is the engine's.

mod auth;
mod handlers;
mod metrics;
mod negotiate;

pub use metrics::Metrics;

use axum::routing::{get, post};
use axum::Router;
use std::sync::Arc;
use tessera_engine::Engine;

/// HTTP settings.
#[derive(Clone)]
pub struct HttpConfig {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Signs and verifies access tokens.
    pub authenticator: Arc<tessera_auth::Authenticator>,
}

impl HttpConfig {
    pub fn new(authenticator: Arc<tessera_auth::Authenticator>) -> Self {
        HttpConfig { max_body_bytes: 64 * 1024 * 1024, authenticator }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub config: Arc<HttpConfig>,
}

/// The complete router: `/fhir/…`, `/healthz`, `/metrics`.
pub fn router(engine: Engine, config: HttpConfig) -> Router {
    let metrics = Arc::new(Metrics::new());
    let state = AppState { engine, metrics: metrics.clone(), config: Arc::new(config) };
    use handlers::*;
    let fhir = Router::new()
        .route("/fhir", get(system_search).post(bundle))
        .route("/fhir/", get(system_search).post(bundle))
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/_history", get(system_history))
        .route("/fhir/{type}", get(search).post(create).put(conditional_update).delete(conditional_delete))
        .route("/fhir/{type}/_search", post(search_post))
        .route("/fhir/{type}/_history", get(type_history))
        .route("/fhir/{type}/{id}", get(read).put(update).patch(patch).delete(delete))
        .route("/fhir/{type}/{id}/_history", get(instance_history))
        .route("/fhir/{type}/{id}/{operation}", get(instance_operation).post(instance_operation))
        .route("/fhir/{type}/{id}/_history/{vid}", get(vread))
        .fallback(not_found);
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::render))
        .route("/auth/token", post(auth::token))
        .route("/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/fhir/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/admin/domain", get(admin_domain_get).put(admin_domain_put))
        .merge(fhir)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(handlers::panic_response))
        .with_state(state)
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}
