//! Browser sessions: a random cookie naming a server-side session that holds the person's
//! access and refresh tokens (never sent to the browser), a CSRF token, and when it was last
//! used.
//!
//! * The cookie (`tessera_session`) is `HttpOnly`, `SameSite=Lax`, `Path=/`, and `Secure`
//!   when the server is reached over HTTPS; it holds 256 random bits, and the server keeps
//!   only their SHA-256.
//! * A session ends after [`WebConfig::idle`] without a request, at sign-out (the
//!   token session is revoked, so its tokens stop working everywhere), or when the sign-in
//!   session ends. Access tokens are refreshed (rotating the refresh token) shortly before
//!   they expire.
//! * Every state-changing form carries the session's CSRF token; a POST without it, or from
//!   another origin, is refused ([`check_csrf`]).
//! * Sessions are kept in this server's memory: behind a load balancer, browsers must stick
//!   to one server (a restart signs everyone out, which is safe).

use crate::WebState;
use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Redirect, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use http::request::Parts;
use http::{header, HeaderMap, HeaderValue};
use sha2::Digest;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tessera_auth::{Claims, TokenResponse};
use tessera_engine::Access;

pub const COOKIE: &str = "tessera_session";

/// Refresh an access token this long before it expires (seconds).
const REFRESH_MARGIN: u64 = 120;

/// Most sessions kept (the least recently used go first).
const MAX_SESSIONS: usize = 20_000;

/// The web application's settings.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// A session unused for this long ends.
    pub idle: Duration,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { idle: Duration::from_secs(30 * 60) }
    }
}

impl WebConfig {
    /// From `TESSERA_WEB_IDLE_MINUTES` (default 30).
    pub fn from_env() -> WebConfig {
        let minutes = std::env::var("TESSERA_WEB_IDLE_MINUTES").ok().and_then(|v| v.trim().parse::<u64>().ok()).filter(|m| *m > 0).unwrap_or(30);
        WebConfig { idle: Duration::from_secs(minutes * 60) }
    }
}

/// Who a session is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Clinician,
    Patient,
}

#[derive(Debug, Clone)]
struct Entry {
    kind: Kind,
    access_token: String,
    refresh_token: Option<String>,
    csrf: String,
    last_seen: Instant,
    /// A one-off message for the next page ("Vital signs recorded").
    notice: Option<String>,
}

/// The sessions of this server.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    URL_SAFE_NO_PAD.encode(bytes)
}

fn digest(cookie: &str) -> String {
    sha2::Sha256::digest(cookie.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time equality.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a session for freshly issued tokens; returns the cookie value.
    pub fn start(&self, kind: Kind, tokens: &TokenResponse) -> String {
        let cookie = random_token();
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, e)| e.last_seen).map(|(k, _)| k.clone()) {
                map.remove(&oldest);
            }
        }
        map.insert(
            digest(&cookie),
            Entry {
                kind,
                access_token: tokens.access_token.clone(),
                refresh_token: tokens.refresh_token.clone(),
                csrf: random_token(),
                last_seen: Instant::now(),
                notice: None,
            },
        );
        cookie
    }

    fn end(&self, key: &str) -> Option<Entry> {
        self.lock().remove(key)
    }

    fn replace_tokens(&self, key: &str, tokens: &TokenResponse) {
        if let Some(e) = self.lock().get_mut(key) {
            e.access_token = tokens.access_token.clone();
            if tokens.refresh_token.is_some() {
                e.refresh_token = tokens.refresh_token.clone();
            }
        }
    }

    /// Leaves a message for the next page of the session.
    pub fn notify(&self, key: &str, message: impl Into<String>) {
        if let Some(e) = self.lock().get_mut(key) {
            e.notice = Some(message.into());
        }
    }
}

/// The session cookie of a request, if any.
pub fn cookie_of(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE && !value.is_empty()).then(|| value.to_string())
    })
}

/// Whether the request reached the server over HTTPS (directly or through a proxy saying so).
fn secure(headers: &HeaderMap, state: &WebState) -> bool {
    state.edge.fhir_base().starts_with("https://") || headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()) == Some("https")
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(headers: &HeaderMap, state: &WebState, cookie: &str) -> HeaderValue {
    let secure = if secure(headers, state) { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{COOKIE}={cookie}; Path=/; HttpOnly; SameSite=Lax{secure}")).expect("cookie value is base64url")
}

/// `Set-Cookie` that removes the session cookie.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("tessera_session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0")
}

/// A signed-in person on this request: their engine access and token claims, the session's
/// CSRF token and key.
#[derive(Clone)]
pub struct Signed {
    pub access: Access,
    pub claims: Claims,
    pub csrf: String,
    pub kind: Kind,
    key: String,
    access_token: String,
    pub notice: Option<String>,
}

impl Signed {
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn access_token(&self) -> &str {
        &self.access_token
    }
}

/// Loads the session of a request: checks the idle timeout, refreshes the access token when
/// it is about to expire, and verifies it as the API would (standing, revocation).
pub async fn load(state: &WebState, parts: &Parts) -> Option<Signed> {
    let cookie = cookie_of(&parts.headers)?;
    let key = digest(&cookie);
    let entry = {
        let mut map = state.sessions.lock();
        let e = map.get_mut(&key)?;
        if e.last_seen.elapsed() > state.config.idle {
            map.remove(&key);
            return None;
        }
        e.last_seen = Instant::now();
        let notice = e.notice.take();
        let mut copy = e.clone();
        copy.notice = notice;
        copy
    };
    let mut token = entry.access_token.clone();
    let mut verified = state.edge.access(&token).await;
    let expiring = verified.as_ref().is_none_or(|(c, _)| c.exp.saturating_sub(tessera_auth::now()) < REFRESH_MARGIN);
    if expiring {
        if let Some(refresh) = &entry.refresh_token {
            match state.edge.refresh(&parts.extensions, &parts.headers, refresh).await {
                Ok(tokens) => {
                    state.sessions.replace_tokens(&key, &tokens);
                    token = tokens.access_token.clone();
                    verified = state.edge.access(&token).await;
                }
                Err(e) if !e.unavailable => {
                    state.sessions.end(&key);
                    return None;
                }
                Err(_) => {}
            }
        }
    }
    let Some((claims, access)) = verified else {
        state.sessions.end(&key);
        return None;
    };
    Some(Signed { access, claims, csrf: entry.csrf, kind: entry.kind, key, access_token: token, notice: entry.notice })
}

/// Ends the session of this request (and its token session, audited).
pub async fn sign_out(state: &WebState, parts: &Parts) {
    if let Some(signed) = load(state, parts).await {
        state.sessions.end(&signed.key);
        state.edge.sign_out(&parts.extensions, &parts.headers, &signed.claims).await;
    } else if let Some(cookie) = cookie_of(&parts.headers) {
        state.sessions.end(&digest(&cookie));
    }
}

/// Replaces the tokens of a session after a context switch.
pub fn switched(state: &WebState, signed: &Signed, tokens: &TokenResponse) {
    state.sessions.replace_tokens(&signed.key, tokens);
}

/// Whether a submitted CSRF token is the session's.
pub fn check_csrf(signed: &Signed, submitted: Option<&str>) -> bool {
    submitted.is_some_and(|s| same(s, &signed.csrf))
}

/// Whether a POST comes from this site: an `Origin` (or `Referer`) header, when the browser
/// sends one, must name the host the request was sent to.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("");
    let named = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER)).and_then(|v| v.to_str().ok());
    match named {
        None => true,
        Some(origin) => {
            let rest = origin.split_once("://").map(|(_, r)| r).unwrap_or(origin);
            let authority = rest.split('/').next().unwrap_or("");
            !host.is_empty() && authority.eq_ignore_ascii_case(host)
        }
    }
}

/// A signed-in clinician (a user of the domain). Anyone else is sent to sign in.
pub struct Clinician(pub Signed);

/// A patient signed in to the portal. Anyone else is sent to the portal's sign-in.
pub struct PortalPatient(pub Signed);

fn to_sign_in(parts: &Parts, path: &str) -> Response {
    let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = format!("{path}?next={}", percent_encoding::utf8_percent_encode(next, percent_encoding::NON_ALPHANUMERIC));
    Redirect::to(&target).into_response()
}

impl FromRequestParts<WebState> for Clinician {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        match load(state, parts).await {
            Some(s) if s.kind == Kind::Clinician => Ok(Clinician(s)),
            _ => Err(to_sign_in(parts, "/signin")),
        }
    }
}

impl FromRequestParts<WebState> for PortalPatient {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &WebState) -> Result<Self, Self::Rejection> {
        match load(state, parts).await {
            Some(s) if s.kind == Kind::Patient => Ok(PortalPatient(s)),
            _ => Err(to_sign_in(parts, "/portal/signin")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_static("a=1; tessera_session=abc; b=2"));
        assert_eq!(cookie_of(&h).as_deref(), Some("abc"));
        h.insert(header::COOKIE, HeaderValue::from_static("tessera_session="));
        assert_eq!(cookie_of(&h), None);
    }

    #[test]
    fn cross_origin_posts_are_refused() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://127.0.0.1:8080"));
        assert!(same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example"));
        assert!(!same_origin(&h));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h));
    }
}
