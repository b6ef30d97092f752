//! The token endpoint (`POST {base}/auth/token`), without the HTTP: the form body in, a
//! [`TokenResponse`] or an [`OAuthError`] out.
//!
//! Grants:
//! - `password` (local users): `username`, `password`, optional `scope`, `role`,
//!   `organisation` (or `organization`), `location`.
//! - `client_credentials` (service accounts): client id and secret by HTTP Basic or as
//!   `client_id` / `client_secret` form parameters; optional `scope`.
//! - `urn:tessera:switch-context` (a user changes role, organisation or location):
//!   `access_token`, and `role`, `organisation`, `location`, `scope` as for `password`.
//!   With neither `role` nor `organisation`, the current ones are kept (a change of location).
//!   Scopes may narrow but not widen; the new token expires when the old one would have, so
//!   switching never extends a session; a patient in context is not carried over.
//! - `refresh_token`: `refresh_token`, optional `scope` (narrowing). Needs the server's
//!   session store: [`grant`] leaves it to the caller, who loads the [`crate::Session`] and
//!   calls [`refresh_claims`].
//!
//! [`token`] and [`token_with_claims`] run a grant on their own (no sessions, no lockout).
//! The server uses the parts: [`TokenRequest::parse`], [`TokenRequest::account`] (whom to
//! throttle), [`grant`] (a [`Refusal`] says why it failed: a [`RefusalReason`] for the audit
//! trail and the lockout), then [`TokenResponse::issue`].

use crate::error::{AuthError, OAuthError};
use crate::event::{Account, RefusalReason};
use crate::password::{verify_against_dummy, verify_client_secret, verify_password};
use crate::scope::Scopes;
use crate::session::Session;
use crate::token::{system_claims, user_claims, Authenticator, Claims, TokenKind};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_domain::Domain;

pub const PASSWORD_GRANT: &str = "password";
pub const CLIENT_CREDENTIALS_GRANT: &str = "client_credentials";
pub const SWITCH_CONTEXT_GRANT: &str = "urn:tessera:switch-context";
pub const REFRESH_TOKEN_GRANT: &str = "refresh_token";

/// A successful token response (RFC 6749 §5.1, plus the active context).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds.
    pub expires_in: u64,
    /// The granted scopes (may be fewer than requested).
    pub scope: String,
    /// Password, context-switch and refresh grants: the refresh token (single use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    pub organisation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// SMART launch context: the patient in context.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// SMART: the app runs inside the EHR's patient banner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
}

impl TokenResponse {
    /// Signs `claims` and answers with the token (and `refresh_token`, if any).
    pub fn issue(auth: &Authenticator, claims: &Claims, now: u64, refresh_token: Option<String>) -> TokenResponse {
        TokenResponse {
            access_token: auth.sign(claims),
            token_type: "Bearer".to_string(),
            expires_in: claims.expires_in(now),
            scope: claims.scope.clone(),
            refresh_token,
            organisation: claims.org.clone(),
            role: claims.role.clone(),
            location: claims.loc.clone(),
            patient: claims.patient.clone(),
            need_patient_banner: None,
        }
    }
}

/// A refused token request: the OAuth error to answer with, and why (for the audit trail and
/// the lockout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub error: OAuthError,
    pub reason: RefusalReason,
    /// The credentials were right (the refusal came after: an inactive user, a context or
    /// scope not held).
    pub authenticated: bool,
}

impl Refusal {
    pub fn new(error: OAuthError, reason: RefusalReason) -> Self {
        Refusal { error, reason, authenticated: false }
    }

    fn request(error: OAuthError) -> Self {
        Refusal::new(error, RefusalReason::InvalidRequest)
    }

    fn after_authentication(mut self) -> Self {
        self.authenticated = true;
        self
    }
}

impl From<Refusal> for OAuthError {
    fn from(r: Refusal) -> OAuthError {
        r.error
    }
}

/// A parsed token request: the form body and the HTTP Basic client credentials. Its `Debug`
/// shows parameter names only, never values (passwords, secrets, tokens).
#[derive(Clone)]
pub struct TokenRequest {
    form: Form,
    basic: Option<(String, String)>,
}

impl TokenRequest {
    /// Parses the `application/x-www-form-urlencoded` body (empty values count as absent; a
    /// repeated parameter is an error). `basic`: the client id and secret of an HTTP Basic
    /// `Authorization` header ([`parse_basic_auth`]).
    pub fn parse(body: &str, basic: Option<(&str, &str)>) -> Result<TokenRequest, OAuthError> {
        Ok(TokenRequest { form: Form::parse(body)?, basic: basic.map(|(u, p)| (u.to_string(), p.to_string())) })
    }

    /// A form parameter.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.form.get(name)
    }

    pub fn grant_type(&self) -> Option<&str> {
        self.get("grant_type")
    }

    /// The account the request authenticates as: the `username` of a password grant, the
    /// client of a client-credentials grant (HTTP Basic, else `client_id`).
    pub fn account(&self) -> Option<Account> {
        match self.grant_type()? {
            PASSWORD_GRANT => self.get("username").map(|u| Account::User(u.to_string())),
            CLIENT_CREDENTIALS_GRANT => {
                self.basic.as_ref().map(|(id, _)| id.as_str()).or_else(|| self.get("client_id")).map(|c| Account::Client(c.to_string()))
            }
            _ => None,
        }
    }

    /// The client id: HTTP Basic, else the `client_id` parameter.
    pub fn client_id(&self) -> Option<&str> {
        self.basic.as_ref().map(|(id, _)| id.as_str()).or_else(|| self.get("client_id"))
    }

    /// The client secret: HTTP Basic, else the `client_secret` parameter.
    pub fn client_secret(&self) -> Option<&str> {
        self.basic.as_ref().map(|(_, s)| s.as_str()).or_else(|| self.get("client_secret"))
    }

    fn basic(&self) -> Option<(&str, &str)> {
        self.basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }
}

/// What a grant yields (before signing).
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)]
pub enum Granted {
    /// A user authenticated by password.
    Password(Claims),
    /// A service account authenticated by its secret.
    Client(Claims),
    /// A user's token for a new context (`new`), replacing `old` (verified, not yet checked
    /// for revocation: the caller does that).
    Switch { new: Claims, old: Claims },
}

impl Granted {
    pub fn claims(&self) -> &Claims {
        match self {
            Granted::Password(c) | Granted::Client(c) | Granted::Switch { new: c, .. } => c,
        }
    }
}

/// Runs the password, client-credentials or context-switch grant of `request` at `now`.
/// `refresh_token` is refused here (see [`refresh_claims`]).
pub fn grant(auth: &Authenticator, domain: &Domain, request: &TokenRequest, now: u64) -> Result<Granted, Refusal> {
    let form = &request.form;
    match form.require("grant_type").map_err(Refusal::request)? {
        PASSWORD_GRANT => password_grant(domain, form, now).map(Granted::Password),
        CLIENT_CREDENTIALS_GRANT => client_credentials_grant(domain, form, request.basic(), now).map(Granted::Client),
        SWITCH_CONTEXT_GRANT => switch_context_grant(auth, domain, form, now),
        REFRESH_TOKEN_GRANT => Err(Refusal::request(OAuthError::unsupported_grant_type(
            "refresh tokens are redeemed by the server's token endpoint, which keeps the sessions",
        ))),
        other => Err(Refusal::request(OAuthError::unsupported_grant_type(format!(
            "grant type `{other}` is not supported; use {PASSWORD_GRANT}, {CLIENT_CREDENTIALS_GRANT}, {REFRESH_TOKEN_GRANT} or {SWITCH_CONTEXT_GRANT}"
        )))),
    }
}

/// Runs the token endpoint: `form` is the `application/x-www-form-urlencoded` body, `basic`
/// the client id and secret from an HTTP Basic `Authorization` header (see
/// [`parse_basic_auth`]), `now` the time in Unix seconds. No sessions: no refresh token, and
/// the `refresh_token` grant is not available.
pub fn token(auth: &Authenticator, domain: &Domain, form: &str, basic: Option<(&str, &str)>, now: u64) -> Result<TokenResponse, OAuthError> {
    token_with_claims(auth, domain, form, basic, now).map(|(response, _)| response)
}

/// As [`token`], also returning the claims of the issued token (for the audit trail).
pub fn token_with_claims(
    auth: &Authenticator,
    domain: &Domain,
    form: &str,
    basic: Option<(&str, &str)>,
    now: u64,
) -> Result<(TokenResponse, Claims), OAuthError> {
    let request = TokenRequest::parse(form, basic)?;
    let granted = grant(auth, domain, &request, now)?;
    let claims = granted.claims().clone();
    Ok((TokenResponse::issue(auth, &claims, now, None), claims))
}

/// The claims of a refreshed access token in `session` (whose refresh token the caller has
/// checked and rotated): the session's user and context, re-checked against the domain (an
/// inactive user or a withdrawn role is refused), `scope` of the request narrowing the
/// session's. The token carries the session's id and generation and ends no later than it.
pub fn refresh_claims(domain: &Domain, request: &TokenRequest, session: &Session, now: u64) -> Result<Claims, Refusal> {
    let held = Scopes::parse(&session.scope)
        .map_err(|e| Refusal::new(OAuthError::invalid_grant(format!("the session's scopes are invalid: {e}")), RefusalReason::InvalidRefresh))?;
    let scopes = match request.get("scope") {
        None => held,
        Some(requested) => {
            let requested = Scopes::parse(requested).map_err(|e| Refusal::new(oauth_error(e), RefusalReason::InvalidContext))?;
            let granted = Scopes::intersect(&requested, &held);
            if granted.resource_scopes().next().is_none() {
                return Err(Refusal::new(
                    OAuthError::invalid_scope(format!("none of the requested scopes are within the session's: {held}")),
                    RefusalReason::InvalidContext,
                ));
            }
            granted
        }
    };
    let refreshed = if domain.user(&session.user).is_none() && domain.portal_account(&session.user).is_some() {
        crate::token::portal_claims(domain, &session.user, now)
    } else if session.client.is_some() {
        // An app's session: the scopes were granted at consent (patient-level ones included).
        user_claims(domain, &session.user, session.role.as_deref(), Some(&session.org), session.loc.as_deref(), None, now).map(|mut c| {
            c.scope = scopes.to_string();
            c
        })
    } else {
        user_claims(domain, &session.user, session.role.as_deref(), Some(&session.org), session.loc.as_deref(), Some(&scopes.to_string()), now)
    };
    let mut claims = refreshed
        .map_err(|e| {
            let reason = match &e {
                AuthError::UnknownUser(_) => RefusalReason::UnknownUser,
                AuthError::InactiveUser(_) => RefusalReason::InactiveUser,
                AuthError::Context(_) => RefusalReason::WithdrawnRole,
                _ => RefusalReason::InvalidContext,
            };
            Refusal::new(OAuthError::invalid_grant(format!("the session cannot be refreshed: {e}")), reason)
        })?;
    claims.patient = session.patient.clone();
    session.stamp(&mut claims);
    Ok(claims)
}

fn password_grant(domain: &Domain, form: &Form, now: u64) -> Result<Claims, Refusal> {
    let username = form.require("username").map_err(Refusal::request)?;
    let password = form.require("password").map_err(Refusal::request)?;
    const REFUSED: &str = "invalid username or password";
    if domain.user(username).is_none() {
        if let Some(account) = domain.portal_account(username) {
            return portal_grant(domain, account, password, now);
        }
    }
    let Some(user) = domain.user(username) else {
        verify_against_dummy(password);
        return Err(Refusal::new(OAuthError::invalid_grant(REFUSED), RefusalReason::UnknownUser));
    };
    let Some(hash) = user.password_hash.as_deref() else {
        verify_against_dummy(password);
        return Err(Refusal::new(OAuthError::invalid_grant(REFUSED), RefusalReason::WrongPassword));
    };
    if !verify_password(password, hash) {
        return Err(Refusal::new(OAuthError::invalid_grant(REFUSED), RefusalReason::WrongPassword));
    }
    if !user.active {
        return Err(Refusal::new(OAuthError::invalid_grant(format!("user `{}` is not active", user.id)), RefusalReason::InactiveUser).after_authentication());
    }
    let organisation = form.organisation().map_err(|e| Refusal::request(e).after_authentication())?;
    user_claims(domain, &user.id, form.get("role"), organisation, form.get("location"), form.get("scope"), now)
        .map_err(|e| Refusal::new(oauth_error(e), RefusalReason::InvalidContext).after_authentication())
}

/// A patient's sign-in to the portal: the password of their portal account.
fn portal_grant(domain: &Domain, account: &tessera_domain::PortalAccount, password: &str, now: u64) -> Result<Claims, Refusal> {
    const REFUSED: &str = "invalid username or password";
    let Some(hash) = account.password_hash.as_deref() else {
        verify_against_dummy(password);
        return Err(Refusal::new(OAuthError::invalid_grant(REFUSED), RefusalReason::WrongPassword));
    };
    if !verify_password(password, hash) {
        return Err(Refusal::new(OAuthError::invalid_grant(REFUSED), RefusalReason::WrongPassword));
    }
    if !account.active {
        return Err(Refusal::new(OAuthError::invalid_grant(format!("account `{}` is not active", account.id)), RefusalReason::InactiveUser).after_authentication());
    }
    crate::token::portal_claims(domain, &account.id, now).map_err(|e| Refusal::new(oauth_error(e), RefusalReason::InvalidContext).after_authentication())
}

fn client_credentials_grant(domain: &Domain, form: &Form, basic: Option<(&str, &str)>, now: u64) -> Result<Claims, Refusal> {
    let (client_id, secret) = match basic {
        Some((id, secret)) => {
            if form.get("client_secret").is_some() {
                return Err(Refusal::request(OAuthError::invalid_request("use one client authentication method: HTTP Basic or client_secret, not both")));
            }
            if form.get("client_id").is_some_and(|form_id| form_id != id) {
                return Err(Refusal::request(OAuthError::invalid_request("client_id does not match the HTTP Basic client")));
            }
            (id, secret)
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id, secret),
            (None, _) => {
                return Err(Refusal::request(OAuthError::invalid_client(
                    "client authentication is required (HTTP Basic, or client_id and client_secret)",
                )))
            }
            (Some(_), None) => return Err(Refusal::request(OAuthError::invalid_client("client_secret is required"))),
        },
    };
    const REFUSED: &str = "client authentication failed: unknown client or wrong secret";
    // The built-in system account is the domain's bootstrap: never issued over HTTP.
    let Some(account) = domain.service_account(client_id).filter(|a| a.id != tessera_domain::SYSTEM_ACCOUNT) else {
        verify_against_dummy(secret);
        return Err(Refusal::new(OAuthError::invalid_client(REFUSED), RefusalReason::UnknownClient));
    };
    let Some(hash) = account.secret_hash.as_deref() else {
        verify_against_dummy(secret);
        return Err(Refusal::new(OAuthError::invalid_client(REFUSED), RefusalReason::WrongSecret));
    };
    if !verify_client_secret(secret, hash) {
        return Err(Refusal::new(OAuthError::invalid_client(REFUSED), RefusalReason::WrongSecret));
    }
    let context = |e: OAuthError| Refusal::new(e, RefusalReason::InvalidContext).after_authentication();
    let allowed = Scopes::parse_list(&account.scopes)
        .map_err(|e| context(OAuthError::invalid_scope(format!("service account `{}` is configured with an invalid scope: {e}", account.id))))?;
    let granted = match form.get("scope") {
        None => allowed,
        Some(requested) => {
            let requested = Scopes::parse(requested).map_err(|e| context(oauth_error(e)))?;
            let granted = Scopes::intersect(&requested, &allowed);
            if granted.resource_scopes().next().is_none() {
                return Err(context(OAuthError::invalid_scope(format!(
                    "none of the requested scopes can be granted to `{}`; it may have: {allowed}",
                    account.id
                ))));
            }
            granted
        }
    };
    Ok(system_claims(&account.id, &account.name, &account.organisation, granted.to_string(), now, domain.settings.token_minutes))
}

fn switch_context_grant(auth: &Authenticator, domain: &Domain, form: &Form, now: u64) -> Result<Granted, Refusal> {
    let presented = form.require("access_token").map_err(Refusal::request)?;
    let current = auth.verify_at(presented, now).map_err(|e| {
        let reason = RefusalReason::of_token_error(&e);
        Refusal::new(OAuthError::invalid_grant(e.to_string()), reason)
    })?;
    if current.kind != TokenKind::User {
        return Err(Refusal::request(OAuthError::invalid_grant("only a user's token can switch context")));
    }
    let context = |e: OAuthError| Refusal::new(e, RefusalReason::InvalidContext).after_authentication();
    let (role, organisation) = match (form.get("role"), form.organisation().map_err(context)?) {
        // Only the location changes: stay in the current role and organisation.
        (None, None) => (current.role.as_deref(), Some(current.org.as_str())),
        given => given,
    };
    let held = current.scopes().map_err(|e| context(OAuthError::invalid_grant(format!("the access token's scopes are invalid: {e}"))))?;
    let scopes = match form.get("scope") {
        None => held,
        Some(requested) => {
            let requested = Scopes::parse(requested).map_err(|e| context(oauth_error(e)))?;
            let granted = Scopes::intersect(&requested, &held);
            if granted.resource_scopes().next().is_none() {
                return Err(context(OAuthError::invalid_scope(format!("none of the requested scopes are within the current token's: {held}"))));
            }
            granted
        }
    };
    let mut claims = user_claims(domain, &current.sub, role, organisation, form.get("location"), Some(&scopes.to_string()), now)
        .map_err(|e| match e {
            AuthError::UnknownUser(_) => Refusal::new(OAuthError::invalid_grant(e.to_string()), RefusalReason::UnknownUser),
            AuthError::InactiveUser(_) => Refusal::new(OAuthError::invalid_grant(e.to_string()), RefusalReason::InactiveUser),
            e => context(oauth_error(e)),
        })?;
    claims.exp = claims.exp.min(current.exp);
    Ok(Granted::Switch { new: claims, old: current })
}

fn oauth_error(e: AuthError) -> OAuthError {
    match e {
        AuthError::InvalidScope { .. } => OAuthError::invalid_scope(e.to_string()),
        AuthError::Context(_) => OAuthError::invalid_request(e.to_string()),
        _ => OAuthError::invalid_grant(e.to_string()),
    }
}

/// The form parameters. Empty values count as absent; a repeated parameter is an error
/// (RFC 6749 §3.1).
#[derive(Clone)]
struct Form {
    params: BTreeMap<String, String>,
}

impl std::fmt::Debug for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.params.keys()).finish()
    }
}

impl std::fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRequest").field("grant_type", &self.grant_type()).field("parameters", &self.form).field("basic", &self.basic.is_some()).finish()
    }
}

impl Form {
    fn parse(body: &str) -> Result<Form, OAuthError> {
        let mut params = BTreeMap::new();
        for (name, value) in form_urlencoded::parse(body.as_bytes()) {
            if value.is_empty() {
                continue;
            }
            if params.insert(name.to_string(), value.into_owned()).is_some() {
                return Err(OAuthError::invalid_request(format!("parameter `{name}` is repeated")));
            }
        }
        Ok(Form { params })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    fn require(&self, name: &str) -> Result<&str, OAuthError> {
        self.get(name).ok_or_else(|| OAuthError::invalid_request(format!("missing parameter `{name}`")))
    }

    /// `organisation`, or its spelling `organization`.
    fn organisation(&self) -> Result<Option<&str>, OAuthError> {
        match (self.get("organisation"), self.get("organization")) {
            (Some(a), Some(b)) if a != b => Err(OAuthError::invalid_request("`organisation` and `organization` disagree")),
            (a, b) => Ok(a.or(b)),
        }
    }
}

/// The client id and secret from an `Authorization: Basic …` header value (RFC 6749
/// §2.3.1: each form-urlencoded, then joined by `:` and base64-encoded). `None` if the header
/// is not a well-formed Basic credential.
pub fn parse_basic_auth(header: &str) -> Option<(String, String)> {
    let (scheme, encoded) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = String::from_utf8(STANDARD.decode(encoded.trim()).ok()?).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}
