//! Tessera in the browser: the clinician's record, the patient portal and the SMART App
//! Launch authorization endpoint, served on the same listener as the FHIR API.
//!
//! Server-rendered HTML (maud templates, NHS.UK frontend styles vendored in `assets/`), no
//! JavaScript build step: pages work without scripts. Every page is rendered from engine
//! calls made with the signed-in person's `Access`, so every datum passes the `Gate` and is
//! audited exactly as over FHIR; this crate never sees the store (it depends on the engine and
//! the HTTP edge only). Sign-in, refresh, context switch and sign-out go through the
//! authentication edge of `tessera-http` ([`tessera_http::Edge`]): the same lockout, rate
//! limits, sessions and audit as the token endpoint.
//!
//! Modules: `session` (cookies, server-side sessions, CSRF), `layout` (page shell, context
//! and patient banners), `view` (FHIR for people, and the engine calls), `signin` (sign-in,
//! sign-out, context switch), `patients` (search, my patients), `record` (the record's tabs,
//! break-glass, app launch), `write` (vital signs with NEWS2, allergies, notes), `portal`
//! (the patient portal), `smart` (`/oauth/authorize`: consent, patient picker, codes),
//! `news2` (the score), `chart` (server-drawn SVG trends), `assets` (static files and the demo
//! SMART app).

mod assets;
pub mod chart;
mod layout;
pub mod news2;
mod patients;
mod portal;
#[cfg(test)]
mod proptests;
mod record;
mod session;
mod signin;
mod smart;
pub mod view;
mod write;

pub use session::WebConfig;

use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_http::Edge;

/// The web application's state.
#[derive(Clone)]
pub struct WebState {
    pub(crate) edge: Edge,
    pub(crate) sessions: Arc<session::Sessions>,
    pub(crate) config: Arc<WebConfig>,
}

/// The whole server: the FHIR API of `tessera-http` and, on the same listener, the web
/// application (which signs people in through the API's authentication edge).
pub fn app(engine: tessera_engine::Engine, http: tessera_http::HttpConfig, web: WebConfig) -> Router {
    let (api, edge) = tessera_http::router_with_edge(engine, http);
    router(edge, web, api)
}

/// The routes of the web application; everything else (`/fhir`, `/auth`, …) goes to `api`.
pub fn router(edge: Edge, config: WebConfig, api: Router) -> Router {
    let state = WebState { edge, sessions: Arc::new(session::Sessions::default()), config: Arc::new(config) };
    Router::new()
        .route("/", get(signin::home))
        .route("/signin", get(signin::form).post(signin::submit))
        .route("/signout", post(signin::sign_out))
        .route("/context", get(signin::context_form).post(signin::switch))
        .route("/patients", get(patients::search))
        .route("/patients/mine", get(patients::mine))
        .route("/patients/{id}", get(record::summary))
        .route("/patients/{id}/encounters", get(record::encounters))
        .route("/patients/{id}/results", get(record::results))
        .route("/patients/{id}/results/trend", get(record::trend))
        .route("/patients/{id}/medications", get(record::medications))
        .route("/patients/{id}/documents", get(record::documents))
        .route("/patients/{id}/immunisations", get(record::immunisations))
        .route("/patients/{id}/break-glass", post(record::break_glass))
        .route("/patients/{id}/launch/{app}", post(record::launch))
        .route("/patients/{id}/vitals", get(write::vitals_form).post(write::vitals_submit))
        .route("/patients/{id}/allergies/new", get(write::allergy_form).post(write::allergy_submit))
        .route("/patients/{id}/notes/new", get(write::note_form).post(write::note_submit))
        .route("/portal", get(portal::summary))
        .route("/portal/signin", get(portal::signin_form).post(portal::signin_submit))
        .route("/portal/signout", post(portal::sign_out))
        .route("/portal/results", get(portal::results))
        .route("/portal/access", get(portal::access_log))
        .route("/oauth/authorize", get(smart::authorize).post(smart::decide))
        .route("/static/{*file}", get(assets::file))
        .route("/apps/demo/", get(assets::demo_app))
        .route("/apps/demo/app.js", get(assets::demo_app_js))
        .layer(tower_http::compression::CompressionLayer::new())
        .fallback_service(api)
        .with_state(state)
}

/// An HTML response with the headers every page carries: no caching of patient data, no
/// framing, a content security policy that allows only this server's own styles and scripts.
pub(crate) fn html(status: StatusCode, markup: maud::Markup) -> Response {
    let mut r = (status, markup.into_string()).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; frame-ancestors 'none'; form-action 'self' http: https:"),
    );
    r
}

/// `200 OK` page.
pub(crate) fn ok(markup: maud::Markup) -> Response {
    html(StatusCode::OK, markup)
}

/// A `303 See Other` to `to` (after a form).
pub(crate) fn see_other(to: &str) -> Response {
    let mut r = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

/// The fields of an `application/x-www-form-urlencoded` body (the first of a repeated name).
pub(crate) fn form(body: &[u8]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(body) {
        out.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    out
}

/// A local path to go back to after sign-in (never another site).
pub(crate) fn safe_next(next: Option<&str>, default: &str) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') && !n.chars().any(char::is_control) => n.to_string(),
        _ => default.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn next_is_a_local_path_only() {
        assert_eq!(super::safe_next(Some("/patients/x"), "/"), "/patients/x");
        assert_eq!(super::safe_next(Some("//evil.example/"), "/"), "/");
        assert_eq!(super::safe_next(Some("https://evil.example/"), "/"), "/");
        assert_eq!(super::safe_next(Some("/\\evil.example"), "/"), "/");
    }
}
