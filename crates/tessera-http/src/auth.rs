//! Authentication at the HTTP edge: the OAuth2 token endpoint, SMART discovery, and the
//! middleware that turns a bearer token into the engine's [`Access`]. Nothing but
//! `/fhir/metadata`, the health endpoints, SMART discovery and the token endpoint answers
//! without a valid token.
//!
//! Hardening (see docs/integrators.md, docs/operators.md):
//! * Account lockout: consecutive failed passwords (or client secrets) lock the account
//!   for a while; the lock state is kept in the settings (`auth.lock:user:<id>`,
//!   `auth.lock:client:<id>`), shared by every server on the database and cleared by
//!   `tessera user unlock`. A locked account is refused with `invalid_grant` (clients:
//!   `invalid_client`), status 400 (401) and `Retry-After`.
//! * Address limit: failed attempts per client address in a token bucket; when it is empty,
//!   429 `slow_down` with `Retry-After`.
//! * Sessions: the password grant starts one (`auth.session:<sid>`) and returns a refresh
//!   token; access tokens carry the session and its context generation, checked on every
//!   request (cached for at most a few seconds). A context switch revokes the old token;
//!   a refresh token used twice revokes its whole session.
//! * Audit: every refused token and sign-in is recorded with its reason (never the token
//!   or secret); floods are recorded as a burst per address, then a summary count.

use crate::AppState;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, Extensions, HeaderMap, HeaderValue, StatusCode};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tessera_auth::{
    address_key, claims_standing, revoked_key, session_key, Account, Admission, AuditThrottle, AuthAction, AuthEvent, AuthPolicy, AuthSubject, Claims,
    Granted, InFlight, LockState, MemoryLocks, OAuthError, RateLimiter, RefreshRefusal, RefusalReason, Session, TokenRequest, TokenResponse,
    CLIENT_CREDENTIALS_GRANT, PASSWORD_GRANT, REFRESH_TOKEN_GRANT, SWITCH_CONTEXT_GRANT,
};
use tessera_engine::{Access, FhirError};
use tessera_fhir::IssueType;

/// Paths that answer without a token.
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/fhir/metadata" | "/healthz" | "/livez" | "/readyz" | "/.well-known/smart-configuration" | "/fhir/.well-known/smart-configuration" | "/auth/token"
    )
}

fn unauthorized(message: &str) -> Response {
    let body = serde_json::to_vec(&FhirError::new(401, IssueType::Login, message).outcome()).expect("outcome serialises");
    let mut r = (StatusCode::UNAUTHORIZED, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"tessera\""));
    r
}

fn unavailable(message: &str) -> Response {
    let body = serde_json::to_vec(&FhirError::new(503, IssueType::Exception, message).outcome()).expect("outcome serialises");
    let mut r = (StatusCode::SERVICE_UNAVAILABLE, body).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    r
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Settings read through a short cache (at most [`AuthPolicy::MAX_CACHE_SECONDS`]): lock
/// state, sessions and token revocations, so that the bearer check does not read the
/// database on every request. This server's own writes go through it at once; other
/// servers' (and `tessera user unlock`'s) are seen within the cache lifetime.
struct SettingCache {
    ttl: Duration,
    map: Mutex<HashMap<String, (Instant, Option<String>)>>,
}

impl SettingCache {
    const MAX_ENTRIES: usize = 50_000;

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Option<String>)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn get(&self, engine: &tessera_engine::Engine, key: &str) -> Result<Option<String>, FhirError> {
        if let Some((at, value)) = self.lock().get(key) {
            if at.elapsed() < self.ttl {
                return Ok(value.clone());
            }
        }
        let value = engine.setting(key).await?;
        self.put(key, value.clone());
        Ok(value)
    }

    fn put(&self, key: &str, value: Option<String>) {
        if self.ttl.is_zero() {
            return;
        }
        let mut map = self.lock();
        if map.len() >= Self::MAX_ENTRIES && !map.contains_key(key) {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
            if map.len() >= Self::MAX_ENTRIES {
                map.clear();
            }
        }
        map.insert(key.to_string(), (Instant::now(), value));
    }
}

/// The authentication edge's state on this server: the address limit, attempts in
/// progress, lock state of names that are no account, the audit throttle and the settings
/// cache. What must be shared between servers — account locks, sessions, revocations — is
/// kept in the database's settings (`auth.lock:…`, `auth.session:…`, `auth.revoked:…`).
pub(crate) struct AuthState {
    policy: AuthPolicy,
    limiter: RateLimiter,
    inflight: Arc<InFlight>,
    unknown: MemoryLocks,
    throttle: Arc<AuditThrottle>,
    cache: SettingCache,
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AuthState {
    pub(crate) fn new(policy: AuthPolicy) -> Self {
        AuthState {
            limiter: RateLimiter::per_minute(policy.attempts_per_minute),
            inflight: InFlight::new(),
            unknown: MemoryLocks::new(10_000),
            throttle: Arc::new(AuditThrottle::new(policy.audit_window_seconds, policy.audit_burst, policy.audit_global_burst)),
            cache: SettingCache { ttl: policy.cache_ttl(), map: Mutex::new(HashMap::new()) },
            sessions: Mutex::new(HashMap::new()),
            policy,
        }
    }

    /// Serialises the changes of one session on this server (refresh, switch).
    async fn serialise(&self, sid: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut map = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            if map.len() > 1_000 {
                map.retain(|_, m| Arc::strong_count(m) > 1);
            }
            map.entry(sid.to_string()).or_default().clone()
        };
        lock.lock_owned().await
    }
}

/// The client's address: the TCP peer, or — only when the operator trusts a reverse proxy
/// (`TESSERA_TRUST_FORWARDED_FOR`) — the last address of `X-Forwarded-For`.
fn client_address(extensions: &Extensions, headers: &HeaderMap, policy: &AuthPolicy) -> Option<IpAddr> {
    if policy.trust_forwarded_for {
        // Only the entry the proxy appended (the last) is trusted; earlier ones are the
        // client's to choose.
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(|a| a.trim().parse::<IpAddr>().ok());
        if forwarded.is_some() {
            return forwarded;
        }
    }
    extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Where a request comes from: its address, and the key it is limited and audited under.
struct Origin {
    address: Option<String>,
    key: String,
}

impl Origin {
    fn of(extensions: &Extensions, headers: &HeaderMap, policy: &AuthPolicy) -> Origin {
        let address = client_address(extensions, headers, policy);
        Origin { address: address.map(|a| a.to_string()), key: address.map(address_key).unwrap_or_else(|| "unknown".to_string()) }
    }
}

/// Records an authentication event. A refusal goes through the audit throttle (unless
/// `always`): past the burst of its address it is only counted, and the count is recorded
/// as one summary when the window ends.
async fn audit(state: &AppState, origin: &Origin, event: AuthEvent, always: bool) {
    if event.ok || always {
        write_audit(state, &event).await;
        return;
    }
    let reason = event.reason.map(|r| r.code()).unwrap_or("refused");
    let (admission, summaries) = state.auth.throttle.admit(&origin.key, reason, tessera_auth::now());
    for s in &summaries {
        write_audit(state, &AuthEvent::summary(s)).await;
    }
    match admission {
        Admission::Record => write_audit(state, &event).await,
        Admission::Counted { first: true, window_end } => {
            let state = state.clone();
            tokio::spawn(async move {
                let wait = window_end.saturating_sub(tessera_auth::now()) + 1;
                tokio::time::sleep(Duration::from_secs(wait)).await;
                for s in state.auth.throttle.drain_expired(tessera_auth::now()) {
                    write_audit(&state, &AuthEvent::summary(&s)).await;
                }
            });
        }
        Admission::Counted { .. } => {}
    }
}

async fn write_audit(state: &AppState, event: &AuthEvent) {
    if let Err(e) = state.engine.record_auth(event).await {
        tracing::error!(error = %e, action = event.action.code(), "cannot record an authentication event in the audit log");
    }
}

/// Whether verified claims have been revoked: a token of a session must be of the session's
/// current context generation, and the session not revoked; a token without a session must
/// not be listed under `auth.revoked:<jti>`.
async fn is_revoked(state: &AppState, claims: &Claims) -> Result<bool, FhirError> {
    match &claims.sid {
        Some(sid) => {
            let stored = state.auth.cache.get(&state.engine, &session_key(sid)).await?;
            Ok(!stored.as_deref().and_then(Session::parse).is_some_and(|s| s.admits(claims)))
        }
        None => Ok(state.auth.cache.get(&state.engine, &revoked_key(&claims.jti)).await?.is_some_and(|v| !v.is_empty())),
    }
}

/// Middleware: every non-public request must carry a valid bearer token — well formed,
/// signed by this server, not expired, of a subject that still holds its role, and not
/// revoked. Every refusal is audited with its reason (never the token).
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let origin = Origin::of(req.extensions(), req.headers(), &state.auth.policy);
    let target = format!("{} {}", req.method(), req.uri().path());
    let refuse = |reason: RefusalReason, subject: Option<AuthSubject>| {
        let event = AuthEvent::refused(AuthAction::BearerToken, reason, subject, origin.address.clone()).with_description(&target);
        audit(&state, &origin, event, false)
    };
    let Some(value) = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        refuse(RefusalReason::MissingToken, None).await;
        return unauthorized("this request needs an access token (Authorization: Bearer …); get one at /auth/token");
    };
    let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) else {
        refuse(RefusalReason::Malformed, None).await;
        return unauthorized("the Authorization header must be 'Bearer <token>'");
    };
    let domain = state.engine.domain();
    let claims = match state.config.authenticator.verify_detailed(token.trim(), tessera_auth::now()) {
        Ok(c) => c,
        Err((e, claims)) => {
            refuse(RefusalReason::of_token_error(&e), claims.map(|c| AuthSubject::of_claims(&c, &domain))).await;
            return unauthorized(&format!("the access token is not valid: {e}"));
        }
    };
    let access = match Access::from_claims(&claims, &domain) {
        Ok(a) => a,
        Err(e) => {
            let reason = claims_standing(&claims, &domain).err().unwrap_or(RefusalReason::Malformed);
            refuse(reason, Some(AuthSubject::of_claims(&claims, &domain))).await;
            return unauthorized(&e.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_default());
        }
    };
    match is_revoked(&state, &claims).await {
        Ok(false) => {}
        Ok(true) => {
            refuse(RefusalReason::Revoked, Some(AuthSubject::of_claims(&claims, &domain))).await;
            return unauthorized(
                "the access token has been revoked: its user switched context, or its session ended; use the newest token or sign in again",
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot check whether an access token is revoked");
            return unavailable("cannot check the access token now; retry shortly");
        }
    }
    req.extensions_mut().insert(access);
    next.run(req).await
}

/// A refused token request.
struct Refused {
    error: OAuthError,
    /// Seconds, for `Retry-After`.
    retry_after: Option<u64>,
    /// Counts against the address limit (a failed proof of identity or a bad token).
    charge: bool,
    /// The server could not decide (the database did not answer): 503.
    unavailable: bool,
}

impl Refused {
    fn new(error: OAuthError, charge: bool) -> Self {
        Refused { error, retry_after: None, charge, unavailable: false }
    }

    fn unavailable(e: FhirError) -> Self {
        tracing::error!(error = %e, "the token endpoint cannot reach the database");
        Refused {
            error: OAuthError::invalid_request("the server cannot process sign-ins now; retry shortly"),
            retry_after: Some(5),
            charge: false,
            unavailable: true,
        }
    }

    fn response(&self) -> Response {
        let mut r = if self.unavailable {
            let body = serde_json::json!({"error": "temporarily_unavailable", "error_description": self.error.error_description});
            (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response()
        } else {
            let status = StatusCode::from_u16(self.error.status()).unwrap_or(StatusCode::BAD_REQUEST);
            (status, axum::Json(self.error.to_json())).into_response()
        };
        if let Some(w) = self.error.www_authenticate() {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(w));
        }
        if let Some(secs) = self.retry_after {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        r
    }
}

/// `POST /auth/token` (application/x-www-form-urlencoded).
pub async fn token(State(state): State<AppState>, extensions: Extensions, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let origin = Origin::of(&extensions, &headers, &state.auth.policy);
    let form = String::from_utf8_lossy(&body).into_owned();
    let basic = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(tessera_auth::parse_basic_auth);
    let mut r = match token_response(&state, &origin, &form, basic).await {
        Ok(response) => (StatusCode::OK, axum::Json(response)).into_response(),
        Err(refused) => refused.response(),
    };
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r.headers_mut().insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    r
}

async fn token_response(state: &AppState, origin: &Origin, form: &str, basic: Option<(String, String)>) -> Result<TokenResponse, Refused> {
    let domain = state.engine.domain();
    let now = tessera_auth::now();
    let request = match TokenRequest::parse(form, basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))) {
        Ok(r) => r,
        Err(e) => {
            audit(state, origin, AuthEvent::refused(AuthAction::TokenRequest, RefusalReason::InvalidRequest, None, origin.address.clone()), false).await;
            return Err(Refused::new(e, false));
        }
    };
    let action = match request.grant_type() {
        Some(PASSWORD_GRANT) => AuthAction::Password,
        Some(CLIENT_CREDENTIALS_GRANT) => AuthAction::ClientCredentials,
        Some(REFRESH_TOKEN_GRANT) => AuthAction::Refresh,
        Some(SWITCH_CONTEXT_GRANT) => AuthAction::SwitchContext,
        _ => {
            // No grant to run: nothing is tried, nothing limited.
            let refusal = tessera_auth::grant(&state.config.authenticator, &domain, &request, now).err();
            let error = refusal.map(|r| r.error).unwrap_or_else(|| OAuthError::unsupported_grant_type("unsupported grant type"));
            audit(state, origin, AuthEvent::refused(AuthAction::TokenRequest, RefusalReason::InvalidRequest, None, origin.address.clone()), false).await;
            return Err(Refused::new(error, false));
        }
    };
    // The address limit: every attempt takes a token, a successful one gives it back.
    if let Err(retry) = state.auth.limiter.try_acquire(&origin.key, now_ms()) {
        let subject = request.account().map(|a| AuthSubject::attempted(&a, &domain));
        let event = AuthEvent::refused(action, RefusalReason::RateLimited, subject, origin.address.clone()).with_description(&format!("retry after {retry} s"));
        audit(state, origin, event, false).await;
        let mut refused = Refused::new(
            OAuthError::slow_down(format!("too many failed sign-in attempts from your address; retry after {retry} seconds")),
            false,
        );
        refused.retry_after = Some(retry);
        return Err(refused);
    }
    let result = match action {
        AuthAction::Refresh => refresh_grant(state, origin, &domain, &request, now).await,
        AuthAction::SwitchContext => switch_grant(state, origin, &domain, &request, now).await,
        _ => credentials_grant(state, origin, &domain, request, action, now).await,
    };
    match &result {
        Err(r) if r.charge => {}
        _ => state.auth.limiter.refund(&origin.key, now_ms()),
    }
    result
}

/// Where an account's lock state lives: in the settings for accounts of the domain, in
/// memory for names that are none.
enum LockSlot {
    Stored(String),
    Memory(String),
}

impl LockSlot {
    fn of(account: &Account, domain: &tessera_domain::Domain) -> LockSlot {
        if account.exists(domain) {
            LockSlot::Stored(account.lock_key())
        } else {
            LockSlot::Memory(account.lock_key())
        }
    }

    fn key(&self) -> &str {
        match self {
            LockSlot::Stored(k) | LockSlot::Memory(k) => k,
        }
    }

    /// The lock state (`fresh`: bypassing the cache, before changing it).
    async fn load(&self, state: &AppState, fresh: bool) -> Result<LockState, FhirError> {
        match self {
            LockSlot::Stored(key) if fresh => {
                let value = state.engine.setting(key).await?;
                state.auth.cache.put(key, value.clone());
                Ok(LockState::parse(value.as_deref()))
            }
            LockSlot::Stored(key) => Ok(LockState::parse(state.auth.cache.get(&state.engine, key).await?.as_deref())),
            LockSlot::Memory(key) => Ok(state.auth.unknown.get(key)),
        }
    }

    async fn save(&self, state: &AppState, lock: LockState, now: u64) -> Result<(), FhirError> {
        match self {
            LockSlot::Stored(key) => {
                let value = lock.encode();
                state.engine.set_setting(key, &value).await?;
                state.auth.cache.put(key, Some(value));
            }
            LockSlot::Memory(key) => state.auth.unknown.set(key, lock, now),
        }
        Ok(())
    }
}

fn minutes(seconds: u64) -> String {
    let m = seconds.div_ceil(60);
    format!("{m} minute{}", if m == 1 { "" } else { "s" })
}

/// The password and client-credentials grants: the account's lock first, then the
/// credentials (off the async workers: Argon2id takes tens of milliseconds), then the lock
/// state updated — a failure counted (the fifth in a row locks), a success clearing it.
async fn credentials_grant(
    state: &AppState,
    origin: &Origin,
    domain: &Arc<tessera_domain::Domain>,
    request: TokenRequest,
    action: AuthAction,
    now: u64,
) -> Result<TokenResponse, Refused> {
    let policy = &state.auth.policy;
    let account = request.account();
    let subject = account.as_ref().map(|a| AuthSubject::attempted(a, domain));
    let slot = account.as_ref().map(|a| LockSlot::of(a, domain));
    let lock = match &slot {
        Some(slot) => slot.load(state, false).await.map_err(Refused::unavailable)?,
        None => LockState::default(),
    };
    let locked_error = |secs: u64| {
        let text = format!(
            "the account is temporarily locked after repeated failed sign-ins; try again in {}, or ask an administrator to unlock it",
            minutes(secs)
        );
        let error = if action == AuthAction::ClientCredentials { OAuthError::invalid_client(text) } else { OAuthError::invalid_grant(text) };
        Refused { error, retry_after: Some(secs), charge: true, unavailable: false }
    };
    if let Some(secs) = lock.locked_for(now) {
        audit(state, origin, AuthEvent::refused(action, RefusalReason::Locked, subject, origin.address.clone()), false).await;
        return Err(locked_error(secs));
    }
    let _attempt = match &slot {
        Some(slot) => match state.auth.inflight.enter(slot.key(), lock.attempts_left(now, policy)) {
            Some(guard) => Some(guard),
            None => {
                let event = AuthEvent::refused(action, RefusalReason::RateLimited, subject, origin.address.clone())
                    .with_description("too many simultaneous attempts on one account");
                audit(state, origin, event, false).await;
                let mut refused = Refused::new(OAuthError::slow_down("too many simultaneous sign-in attempts for this account; retry in a second"), true);
                refused.retry_after = Some(1);
                return Err(refused);
            }
        },
        None => None,
    };
    let authenticator = state.config.authenticator.clone();
    let granted = {
        let domain = domain.clone();
        tokio::task::spawn_blocking(move || tessera_auth::grant(&authenticator, &domain, &request, now))
            .await
            .map_err(|e| Refused::unavailable(FhirError::internal(format!("the credential check failed: {e}"))))?
    };
    match granted {
        Ok(granted) => {
            if let Some(slot) = &slot {
                if !lock.is_clear() {
                    slot.save(state, LockState::default(), now).await.map_err(Refused::unavailable)?;
                }
            }
            let mut claims = granted.claims().clone();
            let refresh_token = if action == AuthAction::Password {
                let (session, refresh) = Session::start(&mut claims, now, now.saturating_add(policy.refresh_seconds));
                save_session(state, &session).await.map_err(Refused::unavailable)?;
                Some(refresh)
            } else {
                None
            };
            let event = AuthEvent::granted(action, AuthSubject::of_claims(&claims, domain), origin.address.clone(), "signed in");
            audit(state, origin, event, true).await;
            Ok(TokenResponse::issue(&state.config.authenticator, &claims, now, refresh_token))
        }
        Err(refusal) => {
            let mut event = AuthEvent::refused(action, refusal.reason, subject, origin.address.clone());
            let mut always = false;
            if let (Some(slot), true) = (&slot, refusal.reason.is_credential_failure()) {
                let mut current = slot.load(state, true).await.map_err(Refused::unavailable)?;
                if current.fail(now, policy) {
                    event = event.with_description(&format!("the account is now locked for {}", minutes(policy.lock_seconds)));
                    always = true;
                    tracing::warn!(target: "tessera::alert", account = %slot.key(), address = origin.address.as_deref().unwrap_or("unknown"), "sign-in locked after repeated failures");
                }
                slot.save(state, current, now).await.map_err(Refused::unavailable)?;
            } else if refusal.authenticated && !lock.is_clear() {
                if let Some(slot) = &slot {
                    slot.save(state, LockState::default(), now).await.map_err(Refused::unavailable)?;
                }
            }
            audit(state, origin, event, always).await;
            Err(Refused::new(refusal.error, refusal.reason.is_credential_failure()))
        }
    }
}

async fn save_session(state: &AppState, session: &Session) -> Result<(), FhirError> {
    let key = session_key(&session.sid);
    let value = session.encode();
    state.engine.set_setting(&key, &value).await?;
    state.auth.cache.put(&key, Some(value));
    Ok(())
}

/// The subject of a session (its user in its current context).
fn session_subject(session: &Session, domain: &tessera_domain::Domain) -> AuthSubject {
    let mut subject = AuthSubject::attempted(&Account::User(session.user.clone()), domain);
    subject.organisation = Some(session.org.clone());
    subject.role = session.role.clone();
    subject.location = session.loc.clone();
    subject
}

/// `grant_type=refresh_token`: rotates the session's refresh token and issues a new access
/// token; a refresh token presented a second time revokes the whole session.
async fn refresh_grant(state: &AppState, origin: &Origin, domain: &Arc<tessera_domain::Domain>, request: &TokenRequest, now: u64) -> Result<TokenResponse, Refused> {
    let refused = |reason: RefusalReason, subject: Option<AuthSubject>| AuthEvent::refused(AuthAction::Refresh, reason, subject, origin.address.clone());
    let Some(presented) = request.get("refresh_token") else {
        audit(state, origin, refused(RefusalReason::InvalidRequest, None), false).await;
        return Err(Refused::new(OAuthError::invalid_request("missing parameter `refresh_token`"), false));
    };
    let invalid = || Refused::new(OAuthError::invalid_grant("the refresh token is not valid"), true);
    let Some(sid) = tessera_auth::refresh_token_session(presented) else {
        audit(state, origin, refused(RefusalReason::InvalidRefresh, None), false).await;
        return Err(invalid());
    };
    let _serial = state.auth.serialise(sid).await;
    let key = session_key(sid);
    let stored = state.engine.setting(&key).await.map_err(Refused::unavailable)?;
    let Some(mut session) = stored.as_deref().and_then(Session::parse) else {
        audit(state, origin, refused(RefusalReason::InvalidRefresh, None), false).await;
        return Err(invalid());
    };
    let subject = session_subject(&session, domain);
    match session.use_refresh(presented, now) {
        Ok(next) => {
            let claims = match tessera_auth::refresh_claims(domain, request, &session, now) {
                Ok(c) => c,
                Err(refusal) => {
                    // Not saved: the presented refresh token stays the current one.
                    audit(state, origin, refused(refusal.reason, Some(subject)), false).await;
                    return Err(Refused::new(refusal.error, false));
                }
            };
            save_session(state, &session).await.map_err(Refused::unavailable)?;
            // Another server may have rotated the same token at the same moment: the last
            // write wins, and whoever reads back another token than its own revokes the
            // session — one refresh token was used twice.
            let check = state.engine.setting(&key).await.map_err(Refused::unavailable)?;
            let latest = check.as_deref().and_then(Session::parse);
            if latest.as_ref().map(|s| s.refresh.as_str()) != Some(session.refresh.as_str()) {
                let mut latest = latest.unwrap_or(session);
                latest.revoke(RefusalReason::RefreshReuse.code(), now);
                save_session(state, &latest).await.map_err(Refused::unavailable)?;
                audit(state, origin, refused(RefusalReason::RefreshReuse, Some(subject)).with_description("used twice at the same moment"), true).await;
                return Err(Refused::new(OAuthError::invalid_grant("this refresh token was used twice: the session is revoked; sign in again"), true));
            }
            let event = AuthEvent::granted(AuthAction::Refresh, AuthSubject::of_claims(&claims, domain), origin.address.clone(), "access token refreshed");
            audit(state, origin, event, true).await;
            Ok(TokenResponse::issue(&state.config.authenticator, &claims, now, Some(next)))
        }
        Err(RefreshRefusal::Reused) => {
            save_session(state, &session).await.map_err(Refused::unavailable)?;
            tracing::warn!(target: "tessera::alert", user = %session.user, address = origin.address.as_deref().unwrap_or("unknown"), "a used refresh token was presented again: its session is revoked");
            audit(state, origin, refused(RefusalReason::RefreshReuse, Some(subject)), true).await;
            Err(Refused::new(
                OAuthError::invalid_grant("this refresh token was already used: suspected theft, so its session and every token of it are revoked; sign in again"),
                true,
            ))
        }
        Err(RefreshRefusal::Revoked) => {
            audit(state, origin, refused(RefusalReason::Revoked, Some(subject)), false).await;
            Err(Refused::new(OAuthError::invalid_grant("the session of this refresh token has been revoked; sign in again"), true))
        }
        Err(RefreshRefusal::Expired) => {
            audit(state, origin, refused(RefusalReason::Expired, Some(subject)), false).await;
            Err(Refused::new(OAuthError::invalid_grant("the session of this refresh token has ended; sign in again"), true))
        }
        Err(RefreshRefusal::Unknown) => {
            audit(state, origin, refused(RefusalReason::InvalidRefresh, Some(subject)), false).await;
            Err(invalid())
        }
    }
}

/// `grant_type=urn:tessera:switch-context`: a token for the new context, and the presented
/// token revoked — through its session's context generation, or by its id for a token
/// without a session.
async fn switch_grant(state: &AppState, origin: &Origin, domain: &Arc<tessera_domain::Domain>, request: &TokenRequest, now: u64) -> Result<TokenResponse, Refused> {
    let refused = |reason: RefusalReason, subject: Option<AuthSubject>| AuthEvent::refused(AuthAction::SwitchContext, reason, subject, origin.address.clone());
    let (mut new, old) = match tessera_auth::grant(&state.config.authenticator, domain, request, now) {
        Ok(Granted::Switch { new, old }) => (new, old),
        Ok(_) => return Err(Refused::new(OAuthError::invalid_request("not a context switch"), false)),
        Err(refusal) => {
            // Name the token's user when its signature holds (expired, or a context not held).
            let subject = request
                .get("access_token")
                .and_then(|t| match state.config.authenticator.verify_detailed(t, now) {
                    Ok(c) => Some(Box::new(c)),
                    Err((_, c)) => c,
                })
                .map(|c| AuthSubject::of_claims(&c, domain));
            audit(state, origin, refused(refusal.reason, subject), false).await;
            let charge = !refusal.authenticated && refusal.reason != RefusalReason::InvalidRequest;
            return Err(Refused::new(refusal.error, charge));
        }
    };
    let subject = AuthSubject::of_claims(&old, domain);
    let revoked = || Refused::new(OAuthError::invalid_grant("the access token has been revoked; use the newest token or sign in again"), true);
    let refresh_token = match &old.sid {
        Some(sid) => {
            let _serial = state.auth.serialise(sid).await;
            let stored = state.engine.setting(&session_key(sid)).await.map_err(Refused::unavailable)?;
            let Some(mut session) = stored.as_deref().and_then(Session::parse).filter(|s| s.admits(&old)) else {
                audit(state, origin, refused(RefusalReason::Revoked, Some(subject)), false).await;
                return Err(revoked());
            };
            let refresh = session.switch(&mut new);
            save_session(state, &session).await.map_err(Refused::unavailable)?;
            refresh
        }
        None => {
            let key = revoked_key(&old.jti);
            let listed = state.engine.setting(&key).await.map_err(Refused::unavailable)?;
            if listed.is_some_and(|v| !v.is_empty()) {
                audit(state, origin, refused(RefusalReason::Revoked, Some(subject)), false).await;
                return Err(revoked());
            }
            let value = old.exp.to_string();
            state.engine.set_setting(&key, &value).await.map_err(Refused::unavailable)?;
            state.auth.cache.put(&key, Some(value));
            // The new token starts a session that ends when the old token would have.
            let (session, refresh) = Session::start(&mut new, now, old.exp);
            save_session(state, &session).await.map_err(Refused::unavailable)?;
            refresh
        }
    };
    let description = format!(
        "context switched from {} at {} to {} at {}; the previous token is revoked",
        old.role.as_deref().unwrap_or("-"),
        old.org,
        new.role.as_deref().unwrap_or("-"),
        new.org
    );
    audit(state, origin, AuthEvent::granted(AuthAction::SwitchContext, AuthSubject::of_claims(&new, domain), origin.address.clone(), description), true).await;
    Ok(TokenResponse::issue(&state.config.authenticator, &new, now, Some(refresh_token)))
}

/// `GET /.well-known/smart-configuration`
pub async fn smart_configuration(State(state): State<AppState>) -> Response {
    let base = state.engine.config().base_url.trim_end_matches("/fhir").to_string();
    axum::Json(tessera_auth::smart_configuration(&base)).into_response()
}
