//! SMART App Launch 2.0: the authorization-code grant with PKCE, without the HTTP.
//!
//! 1. The app sends the browser to the authorization endpoint
//!    ([`AuthorizeRequest::parse`]): `response_type=code`, `client_id` (an app registered in
//!    the domain file), `redirect_uri` (one of the app's, exactly — a loopback
//!    `http://127.0.0.1/…` or `http://localhost/…` URI matches on any port, RFC 8252 §7.3),
//!    `scope`, `state`, `aud` (this server's FHIR base), `code_challenge` with
//!    `code_challenge_method=S256` (required of every client), and `launch` for an EHR launch.
//!    Errors before the redirect URI is known to be the app's are shown to the user
//!    ([`AuthorizeError::Page`]); later ones go back to the app ([`AuthorizeError::Redirect`]).
//! 2. The signed-in user consents; the scopes granted are [`granted_scopes`]: what the app
//!    asked for, within what it is registered for, within what a user may hold — user-level
//!    scopes, and patient-level ones only with a patient in context. Scopes narrow what the
//!    user's role and the sharing table allow; they never widen it (the `Gate` decides every
//!    read as for the user).
//! 3. The server keeps a [`CodeGrant`] under the hash of a one-time code ([`code_key`]) for
//!    [`CODE_SECONDS`] and redirects with `code` and `state`.
//! 4. The app redeems the code at the token endpoint (`grant_type=authorization_code`,
//!    `code`, `redirect_uri`, `code_verifier`, `client_id`; a confidential app also
//!    authenticates with its secret): [`redeem`].

use crate::error::OAuthError;
use crate::event::RefusalReason;
use crate::oauth::{Refusal, TokenRequest};
use crate::password::{verify_against_dummy, verify_client_secret};
use crate::scope::{Scope, ScopeContext, Scopes};
use crate::token::{random_bytes, user_claims, Claims};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tessera_domain::{Domain, SmartApp};

pub const AUTHORIZATION_CODE_GRANT: &str = "authorization_code";

/// How long an authorization code may be redeemed (seconds).
pub const CODE_SECONDS: u64 = 60;

/// How long an EHR launch id may be used by the app it was made for (seconds).
pub const LAUNCH_SECONDS: u64 = 300;

/// Scopes that are not about resources and that this server grants when asked.
const CONTEXT_SCOPES: [&str; 5] = ["launch", "launch/patient", "offline_access", "online_access", "openid"];

/// A validated authorization request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    /// The scopes asked for (already parsed).
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: String,
    /// The EHR launch id, if any.
    pub launch: Option<String>,
}

/// Why an authorization request cannot go on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown to the user: the app or its redirect URI cannot be trusted with an answer.
    Page(String),
    /// Sent back to the app (RFC 6749 §4.1.2.1).
    Redirect { redirect_uri: String, error: &'static str, description: String, state: Option<String> },
}

impl AuthorizeError {
    /// The URL the browser is sent to, for [`AuthorizeError::Redirect`].
    pub fn location(&self) -> Option<String> {
        match self {
            AuthorizeError::Page(_) => None,
            AuthorizeError::Redirect { redirect_uri, error, description, state } => {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("error", error).append_pair("error_description", description);
                if let Some(s) = state {
                    query.append_pair("state", s);
                }
                Some(with_query(redirect_uri, &query.finish()))
            }
        }
    }

    pub fn message(&self) -> &str {
        match self {
            AuthorizeError::Page(m) => m,
            AuthorizeError::Redirect { description, .. } => description,
        }
    }
}

/// `uri` with `query` appended (`?` or `&`).
pub fn with_query(uri: &str, query: &str) -> String {
    let sep = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{sep}{query}")
}

/// Whether `given` is the registered redirect URI: equal, or — for loopback URIs — equal but
/// for the port.
pub fn redirect_matches(registered: &str, given: &str) -> bool {
    if registered == given {
        return true;
    }
    let (Some(a), Some(b)) = (loopback_parts(registered), loopback_parts(given)) else {
        return false;
    };
    a == b
}

/// `(host, path and query)` of an `http://127.0.0.1[:port]/…`, `http://[::1]…` or
/// `http://localhost…` URI.
fn loopback_parts(uri: &str) -> Option<(&str, &str)> {
    let rest = uri.strip_prefix("http://")?;
    let (authority, path) = rest.find('/').map(|i| rest.split_at(i)).unwrap_or((rest, "/"));
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let end = v6.find(']')?;
        &authority[..end + 2]
    } else {
        authority.split(':').next()?
    };
    let port = &authority[host.len()..];
    if !(port.is_empty() || port.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))) {
        return None;
    }
    matches!(host, "127.0.0.1" | "[::1]" | "localhost").then_some((host, path))
}

impl AuthorizeRequest {
    /// Checks an authorization request (the query parameters) against the domain's apps and
    /// this server's FHIR base (`aud`).
    pub fn parse<'d>(domain: &'d Domain, params: &[(String, String)], fhir_base: &str) -> Result<(AuthorizeRequest, &'d SmartApp), AuthorizeError> {
        let get = |name: &str| -> Result<Option<&str>, AuthorizeError> {
            let mut values = params.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
            let first = values.next();
            if values.next().is_some() {
                return Err(AuthorizeError::Page(format!("the parameter `{name}` is repeated")));
            }
            Ok(first)
        };
        let client_id = get("client_id")?.ok_or_else(|| AuthorizeError::Page("the app did not say who it is (no client_id)".into()))?;
        let app = domain
            .app(client_id)
            .ok_or_else(|| AuthorizeError::Page(format!("the app `{client_id}` is not registered in this domain; ask your organisation to register it")))?;
        let redirect_uri = match get("redirect_uri")? {
            Some(r) => r,
            None if app.redirect_uris.len() == 1 && loopback_parts(&app.redirect_uris[0]).is_none() => &app.redirect_uris[0],
            None => return Err(AuthorizeError::Page("the app did not name its redirect_uri".into())),
        };
        if !app.redirect_uris.iter().any(|r| redirect_matches(r, redirect_uri)) {
            return Err(AuthorizeError::Page(format!("`{redirect_uri}` is not a redirect URI registered for the app `{}`", app.id)));
        }
        let state = get("state")?.map(str::to_string);
        let back = |error: &'static str, description: String| AuthorizeError::Redirect { redirect_uri: redirect_uri.to_string(), error, description, state: state.clone() };
        match get("response_type")? {
            Some("code") => {}
            Some(other) => return Err(back("unsupported_response_type", format!("response_type `{other}` is not supported; use code"))),
            None => return Err(back("invalid_request", "missing parameter `response_type`".into())),
        }
        let aud = get("aud")?.ok_or_else(|| back("invalid_request", format!("missing parameter `aud` (this server's FHIR base: {fhir_base})")))?;
        if aud.trim_end_matches('/') != fhir_base.trim_end_matches('/') {
            return Err(back("invalid_request", format!("`aud` ({aud}) is not this server's FHIR base ({fhir_base})")));
        }
        let challenge = get("code_challenge")?.ok_or_else(|| back("invalid_request", "PKCE is required: send code_challenge with code_challenge_method=S256".into()))?;
        match get("code_challenge_method")? {
            Some("S256") => {}
            Some(other) => return Err(back("invalid_request", format!("code_challenge_method `{other}` is not supported; use S256"))),
            None => return Err(back("invalid_request", "missing code_challenge_method (S256)".into())),
        }
        if challenge.len() != 43 || !challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
            return Err(back("invalid_request", "code_challenge must be the base64url SHA-256 of the code verifier (43 characters)".into()));
        }
        let scope = get("scope")?.ok_or_else(|| back("invalid_scope", "missing parameter `scope`".into()))?;
        Scopes::parse(scope).map_err(|e| back("invalid_scope", e.to_string()))?;
        Ok((
            AuthorizeRequest {
                client_id: app.id.clone(),
                redirect_uri: redirect_uri.to_string(),
                scope: scope.to_string(),
                state,
                code_challenge: challenge.to_string(),
                launch: get("launch")?.map(str::to_string),
            },
            app,
        ))
    }

    /// The error answer of this request.
    pub fn error(&self, error: &'static str, description: impl Into<String>) -> AuthorizeError {
        AuthorizeError::Redirect { redirect_uri: self.redirect_uri.clone(), error, description: description.into(), state: self.state.clone() }
    }

    /// The requested scopes.
    pub fn scopes(&self) -> Scopes {
        Scopes::parse(&self.scope).unwrap_or_default()
    }

    /// Whether the app asks for a patient in context (`launch/patient`, or an EHR launch
    /// with patient-level scopes).
    pub fn wants_patient(&self) -> bool {
        let scopes = self.scopes();
        scopes.contains("launch/patient") || (self.launch.is_some() && scopes.has_context(ScopeContext::Patient))
    }
}

/// The scopes to grant: what was asked, within what the app is registered for, within what
/// a user may hold (user-level scopes; patient-level ones only with a patient in context;
/// never system-level), and the context scopes this server supports.
pub fn granted_scopes(requested: &Scopes, app: &SmartApp, patient_context: bool) -> Scopes {
    let registered = Scopes::parse_list(&app.scopes).unwrap_or_default();
    let mut ceiling = String::from("user/*.cruds");
    if patient_context {
        ceiling.push_str(" patient/*.cruds");
    }
    for c in CONTEXT_SCOPES {
        if c != "launch/patient" || patient_context {
            ceiling.push(' ');
            ceiling.push_str(c);
        }
    }
    let ceiling = Scopes::parse(&ceiling).expect("valid built-in scopes");
    let within_app = Scopes::intersect(requested, &registered);
    let mut granted = Scopes::intersect(&within_app, &ceiling);
    // `launch` only makes sense with a launch; keep it when asked (it names the flow).
    if requested.contains("launch") && registered.contains("launch") && !granted.contains("launch") {
        granted.push(Scope::parse("launch").expect("valid scope"));
    }
    granted
}

/// What an authorization code stands for, kept by the server until redeemed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeGrant {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub user: String,
    pub role: Option<String>,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loc: Option<String>,
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Expires (Unix seconds).
    pub exp: u64,
    /// Launched from the EHR's record (which shows the patient banner itself).
    #[serde(default)]
    pub ehr_launch: bool,
}

/// A new authorization code (256 random bits, base64url).
pub fn new_code() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// The settings key of a code: `auth.code:<sha256 hex>` (the code itself is never stored).
pub fn code_key(code: &str) -> String {
    format!("auth.code:{}", crate::session::refresh_token_hash(code))
}

/// The settings key of an EHR launch id: `auth.launch:<sha256 hex>`.
pub fn launch_key(launch: &str) -> String {
    format!("auth.launch:{}", crate::session::refresh_token_hash(launch))
}

/// An EHR launch: who launched which app for which patient, until when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaunchContext {
    pub client_id: String,
    pub user: String,
    pub patient: String,
    pub exp: u64,
}

/// The PKCE S256 challenge of a verifier: base64url(SHA-256(verifier)).
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// Whether `verifier` is well formed (RFC 7636 §4.1: 43–128 unreserved characters) and
/// hashes to `challenge`.
pub fn verify_pkce(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len()) && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    let computed = pkce_challenge(verifier);
    well_formed && computed.len() == challenge.len() && computed.bytes().zip(challenge.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Redeems a code at the token endpoint: the same app (authenticated by its secret if it
/// has one), the same redirect URI, the PKCE verifier, before expiry. Returns the claims of
/// the access token (the user's context, re-checked against the domain, with the granted
/// scopes and the patient in context).
pub fn redeem(domain: &Domain, grant: &CodeGrant, request: &TokenRequest, now: u64) -> Result<Claims, Refusal> {
    let invalid = |m: &str| Refusal::new(OAuthError::invalid_grant(m), RefusalReason::InvalidRequest);
    let client_id = request.client_id().ok_or_else(|| Refusal::new(OAuthError::invalid_client("client_id is required"), RefusalReason::UnknownClient))?;
    let Some(app) = domain.app(client_id) else {
        return Err(Refusal::new(OAuthError::invalid_client("unknown client"), RefusalReason::UnknownClient));
    };
    if let Some(hash) = app.secret_hash.as_deref() {
        match request.client_secret() {
            Some(secret) if verify_client_secret(secret, hash) => {}
            Some(_) => return Err(Refusal::new(OAuthError::invalid_client("client authentication failed"), RefusalReason::WrongSecret)),
            None => return Err(Refusal::new(OAuthError::invalid_client("this app is confidential: authenticate with its secret"), RefusalReason::WrongSecret)),
        }
    } else if let Some(secret) = request.client_secret() {
        verify_against_dummy(secret);
        return Err(Refusal::new(OAuthError::invalid_client("this app is public: it has no secret"), RefusalReason::WrongSecret));
    }
    if grant.client_id != app.id {
        return Err(invalid("the code was issued to another app"));
    }
    if now >= grant.exp {
        return Err(Refusal::new(OAuthError::invalid_grant("the authorization code has expired"), RefusalReason::Expired));
    }
    if request.get("redirect_uri") != Some(grant.redirect_uri.as_str()) {
        return Err(invalid("redirect_uri does not match the authorization request"));
    }
    let Some(verifier) = request.get("code_verifier") else {
        return Err(Refusal::new(OAuthError::invalid_request("missing parameter `code_verifier` (PKCE)"), RefusalReason::InvalidRequest));
    };
    if !verify_pkce(verifier, &grant.code_challenge) {
        return Err(invalid("code_verifier does not match the code_challenge"));
    }
    let mut claims = user_claims(domain, &grant.user, grant.role.as_deref(), Some(&grant.org), grant.loc.as_deref(), None, now).map_err(|e| {
        Refusal::new(OAuthError::invalid_grant(format!("the user can no longer be granted this: {e}")), RefusalReason::WithdrawnRole)
    })?;
    claims.scope = grant.scope.clone();
    claims.patient = grant.patient.clone();
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_the_rfc_example() {
        // RFC 7636 Appendix B.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        assert_eq!(pkce_challenge(verifier), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(verify_pkce(verifier, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!verify_pkce("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXX", "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"));
        assert!(!verify_pkce("short", &pkce_challenge("short")));
    }

    #[test]
    fn loopback_redirects_match_on_any_port_only() {
        assert!(redirect_matches("http://127.0.0.1/callback", "http://127.0.0.1:53123/callback"));
        assert!(redirect_matches("http://127.0.0.1:8080/apps/demo/", "http://127.0.0.1:9999/apps/demo/"));
        assert!(!redirect_matches("http://127.0.0.1/callback", "http://127.0.0.1:53123/other"));
        assert!(!redirect_matches("http://127.0.0.1/callback", "http://127.0.0.1.evil.example/callback"));
        assert!(!redirect_matches("https://app.example/cb", "https://app.example/cb?x=1"));
        assert!(redirect_matches("https://app.example/cb", "https://app.example/cb"));
    }

    #[test]
    fn scopes_never_exceed_the_app_or_a_user() {
        let app = SmartApp {
            id: "a".into(),
            name: "A".into(),
            organisation: "o".into(),
            redirect_uris: vec!["https://a.example/cb".into()],
            launch_url: None,
            secret_hash: None,
            scopes: vec!["launch".into(), "patient/*.rs".into(), "offline_access".into()],
        };
        let requested = Scopes::parse("launch patient/Observation.rs patient/Patient.cruds user/*.cruds system/*.* offline_access").unwrap();
        let granted = granted_scopes(&requested, &app, true);
        assert_eq!(granted.to_string(), "patient/Observation.rs patient/Patient.rs launch offline_access");
        let without_patient = granted_scopes(&requested, &app, false);
        assert!(!without_patient.has_context(ScopeContext::Patient), "{without_patient}");
    }
}
