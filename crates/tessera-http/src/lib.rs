//! The HTTP face of Tessera: maps FHIR REST over HTTP onto the [`tessera_engine::Engine`].
//!
//! This crate owns only HTTP concerns — routing, content negotiation (`Accept`, `_format`),
//! request headers (`If-Match`, `If-None-Exist`, `If-None-Match`, `Prefer`), response
//! headers (`ETag`, `Last-Modified`, `Location`), body limits, `/healthz` and Prometheus
//! `/metrics`. Every FHIR decision is the engine's.

mod auth;
mod cors;
mod edge;
mod handlers;
mod input;
mod metrics;
mod negotiate;
mod terminology;
mod transport;
mod websocket;

pub use cors::{check_origin as check_cors_origin, DEMO_ORIGINS as DEMO_CORS_ORIGINS};
pub use edge::{Edge, EdgeRefusal};
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
    /// Sign-in hardening: lockout, address rate limit, refresh-token lifetime (default: from
    /// the `TESSERA_AUTH_*` environment variables, see [`tessera_auth::AuthPolicy::from_env`]).
    pub auth_policy: tessera_auth::AuthPolicy,
    /// Origins whose browser apps may call the API (CORS; `tessera serve --cors-origin`):
    /// `scheme://host[:port]`, `scheme://host:*` (any port) or `*` (any origin). None by
    /// default: no CORS headers are sent (see `cors.rs`).
    pub cors_origins: Vec<String>,
}

impl HttpConfig {
    pub fn new(authenticator: Arc<tessera_auth::Authenticator>) -> Self {
        let auth_policy = tessera_auth::AuthPolicy::from_env().unwrap_or_else(|e| {
            tracing::warn!("{e}: using the default sign-in lockout and rate limits");
            tessera_auth::AuthPolicy::default()
        });
        HttpConfig { max_body_bytes: 64 * 1024 * 1024, authenticator, auth_policy, cors_origins: Vec::new() }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub metrics: Arc<Metrics>,
    pub config: Arc<HttpConfig>,
    /// Lockout, rate limits and caches of the authentication edge.
    pub auth: Arc<auth::AuthState>,
}

/// The complete router: `/fhir/…`, `/healthz`, `/metrics`.
pub fn router(engine: Engine, config: HttpConfig) -> Router {
    router_with_edge(engine, config).0
}

/// [`router`], and the [`Edge`] through which another transport on the same listener (the
/// web application) signs people in with the same lockout, sessions and audit.
pub fn router_with_edge(engine: Engine, config: HttpConfig) -> (Router, Edge) {
    let metrics = Arc::new(Metrics::new());
    let auth = Arc::new(auth::AuthState::new(config.auth_policy.clone()));
    let max_body_bytes = config.max_body_bytes;
    let cors = cors::layer(&config.cors_origins);
    let state = AppState { engine, metrics: metrics.clone(), config: Arc::new(config), auth };
    let edge_state = state.clone();
    use handlers::*;
    let fhir = Router::new()
        .route("/fhir", get(system_search).post(bundle))
        .route("/fhir/", get(system_search).post(bundle))
        .route("/fhir/metadata", get(metadata))
        .route("/fhir/_history", get(system_history))
        .route("/fhir/{type}", get(search).post(create).put(conditional_update).patch(conditional_patch).delete(conditional_delete))
        .route("/fhir/{type}/_search", post(search_post))
        .route("/fhir/{type}/_history", get(type_history))
        .route("/fhir/{type}/{id}", get(read).post(type_post).put(update).patch(patch).delete(delete))
        .route("/fhir/{type}/{id}/_history", get(instance_history))
        .route("/fhir/{type}/{id}/{operation}", get(instance_operation).post(instance_operation))
        .route("/fhir/{type}/{id}/_history/{vid}", get(vread))
        .fallback(not_found);
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(healthz))
        .route("/livez", get(livez))
        .route("/metrics", get(metrics::render))
        .route("/auth/token", post(auth::token))
        .route("/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/fhir/.well-known/smart-configuration", get(auth::smart_configuration))
        .route("/admin/domain", get(admin_domain_get).put(admin_domain_put))
        .route("/admin/users/{id}/unlock", post(admin_unlock))
        // Subscriptions' websocket channel (websocket.rs).
        .route("/fhir/$subscription-websocket", get(crate::websocket::subscription_websocket))
        // The server's OperationDefinitions: generated metadata, read-only (operations.rs).
        .route("/fhir/OperationDefinition", get(operation_definitions))
        .route("/fhir/OperationDefinition/{id}", get(operation_definition))
        .merge(fhir)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth::require_token))
        .layer(axum::middleware::from_fn(input::check_url))
        // Transport (transport.rs, cors.rs): gzip request bodies inflated within the body
        // limit, an OperationOutcome for every error, compressed responses, CORS outermost.
        .layer(axum::middleware::from_fn_with_state(max_body_bytes, transport::bound_inflated))
        .layer(transport::decompression())
        .layer(axum::middleware::from_fn(transport::compressed_body))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(handlers::panic_response))
        .with_state(state);
    // Outside the routes, so that the OperationOutcome of a 405 sees the `Allow` header the
    // method router adds last.
    let router = Router::new()
        .fallback_service(app)
        .layer(axum::middleware::from_fn(transport::outcomes))
        .layer(transport::compression())
        .layer(cors);
    (router, Edge::new(edge_state))
}

/// How connections are served.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// A connection that sends no complete request for this long is closed (idle
    /// keep-alive connections, and slow or stalled clients).
    pub idle_timeout: std::time::Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions { idle_timeout: std::time::Duration::from_secs(60) }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, shutdown, ServeOptions::default()).await
}

/// [`serve`] with options. Each connection is HTTP/1.1 with keep-alive; one that sends no
/// complete request within `idle_timeout` is closed, so idle sockets do not pile up. When
/// the process runs out of file descriptors, accepting pauses briefly and resumes — the
/// connections already open keep being served. The peer address is available to handlers
/// as `axum::extract::ConnectInfo<SocketAddr>`. On shutdown, open requests finish.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // Shutdown: every connection is told to finish its open request and close; `open`
    // counts the connections still running (one reference each).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let open = Arc::new(());
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(options.idle_timeout).keep_alive(true);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE/ENFILE (descriptor limit), ECONNABORTED …: the listener is fine.
                    tracing::warn!(error = %e, "cannot accept a connection now; retrying shortly");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = tower::ServiceExt::map_request(router.clone(), move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(axum::extract::ConnectInfo(peer));
            req
        });
        // With upgrades: the websocket channel of Subscriptions.
        let connection = http.serve_connection(TokioIo::new(stream), hyper_util::service::TowerToHyperService::new(service)).with_upgrades();
        let mut stopped = stopped.clone();
        let token = open.clone();
        tokio::spawn(async move {
            let _token = token;
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => return,
                _ = stopped.wait_for(|s| *s) => {}
            }
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        });
    }
    drop(listener);
    // Let open requests finish (bounded, so a stalled client cannot hold the shutdown).
    let _ = stop.send(true);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while Arc::strong_count(&open) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Ok(())
}
