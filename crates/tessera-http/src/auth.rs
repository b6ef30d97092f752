//! Authentication at the HTTP edge: the OAuth2 token endpoint, SMART discovery, and the
//! middleware that turns a bearer token into the engine's [`Access`]. Nothing but
//! `/fhir/metadata`, `/healthz`, SMART discovery and the token endpoint answers without a
//! valid token.

use crate::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use tessera_engine::{Access, FhirError};
use tessera_fhir::IssueType;

/// Paths that answer without a token.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/fhir/metadata" | "/healthz" | "/.well-known/smart-configuration" | "/fhir/.well-known/smart-configuration" | "/auth/token"
    )
}

fn unauthorized(message: &str) -> Response {
    let body = serde_json::to_vec(&FhirError::new(401, IssueType::Login, message).outcome()).expect("outcome serialises");
    let mut r = (StatusCode::UNAUTHORIZED, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tessera\""));
    r
}

/// Middleware: every non-public request must carry a valid bearer token.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return unauthorized("this request needs an access token (Authorization: Bearer …); get one at /auth/token");
    };
    let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        return unauthorized("the Authorization header must be 'Bearer <token>'");
    };
    let claims = match state.config.authenticator.verify(token.trim()) {
        Ok(c) => c,
        Err(e) => return unauthorized(&format!("the access token is not valid: {e}")),
    };
    let access = match Access::from_claims(&claims, &state.engine.domain()) {
        Ok(a) => a,
        Err(e) => return unauthorized(&e.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_default()),
    };
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// `POST /auth/token` (application/x-www-form-urlencoded).
pub async fn token(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form = String::from_utf8_lossy(&body);
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(tessera_auth::parse_basic_auth);
    let basic_ref = basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str()));
    let domain = state.engine.domain();
    let result = tessera_auth::token_with_claims(&state.config.authenticator, &domain, &form, basic_ref, tessera_auth::now());
    let subject = form_urlencoded::parse(form.as_bytes())
        .find(|(k, _)| k == "username" || k == "client_id")
        .map(|(_, v)| v.into_owned())
        .or_else(|| basic.as_ref().map(|(u, _)| u.clone()))
        .unwrap_or_default();
    let _ = state.engine.record_login(&subject, result.as_ref().ok().map(|(_, c)| c), result.is_ok()).await;
    let mut r = match result {
        Ok((response, _claims)) => (StatusCode::OK, axum::Json(response)).into_response(),
        Err(e) => {
            let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_REQUEST);
            let mut r = (status, axum::Json(e.to_json())).into_response();
            if let Some(w) = e.www_authenticate() {
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(w));
            }
            r
        }
    };
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /.well-known/smart-configuration`
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    let base = state.engine.config().base_url.trim_end_matches("/fhir").to_string();
    axum::Json(tessera_auth::smart_configuration(&base)).into_response()
}
