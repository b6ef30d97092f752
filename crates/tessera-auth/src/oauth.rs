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

use crate::error::{AuthError, OAuthError};
use crate::password::{verify_against_dummy, verify_client_secret, verify_password};
use crate::scope::Scopes;
use crate::token::{system_claims, user_claims, Authenticator, Claims, TokenKind};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tessera_domain::Domain;

pub const PASSWORD_GRANT: &str = "password";
pub const CLIENT_CREDENTIALS_GRANT: &str = "client_credentials";
pub const SWITCH_CONTEXT_GRANT: &str = "urn:tessera:switch-context";

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
    pub organisation: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

/// Runs the token endpoint: `form` is the `application/x-www-form-urlencoded` body, `basic`
/// the client id and secret from an HTTP Basic `Authorization` header (see
/// [`parse_basic_auth`]), `now` the time in Unix seconds.
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
    let form = Form::parse(form)?;
    let claims = match form.require("grant_type")? {
        PASSWORD_GRANT => password_grant(domain, &form, now)?,
        CLIENT_CREDENTIALS_GRANT => client_credentials_grant(domain, &form, basic, now)?,
        SWITCH_CONTEXT_GRANT => switch_context_grant(auth, domain, &form, now)?,
        other => {
            return Err(OAuthError::unsupported_grant_type(format!(
                "grant type `{other}` is not supported; use {PASSWORD_GRANT}, {CLIENT_CREDENTIALS_GRANT} or {SWITCH_CONTEXT_GRANT}"
            )))
        }
    };
    let response = TokenResponse {
        access_token: auth.sign(&claims),
        token_type: "Bearer".to_string(),
        expires_in: claims.expires_in(now),
        scope: claims.scope.clone(),
        organisation: claims.org.clone(),
        role: claims.role.clone(),
        location: claims.loc.clone(),
    };
    Ok((response, claims))
}

fn password_grant(domain: &Domain, form: &Form, now: u64) -> Result<Claims, OAuthError> {
    let username = form.require("username")?;
    let password = form.require("password")?;
    const REFUSED: &str = "invalid username or password";
    let Some(user) = domain.user(username) else {
        verify_against_dummy(password);
        return Err(OAuthError::invalid_grant(REFUSED));
    };
    let Some(hash) = user.password_hash.as_deref() else {
        verify_against_dummy(password);
        return Err(OAuthError::invalid_grant(REFUSED));
    };
    if !verify_password(password, hash) {
        return Err(OAuthError::invalid_grant(REFUSED));
    }
    if !user.active {
        return Err(OAuthError::invalid_grant(format!("user `{}` is not active", user.id)));
    }
    user_claims(domain, &user.id, form.get("role"), form.organisation()?, form.get("location"), form.get("scope"), now).map_err(oauth_error)
}

fn client_credentials_grant(domain: &Domain, form: &Form, basic: Option<(&str, &str)>, now: u64) -> Result<Claims, OAuthError> {
    let (client_id, secret) = match basic {
        Some((id, secret)) => {
            if form.get("client_secret").is_some() {
                return Err(OAuthError::invalid_request("use one client authentication method: HTTP Basic or client_secret, not both"));
            }
            if form.get("client_id").is_some_and(|form_id| form_id != id) {
                return Err(OAuthError::invalid_request("client_id does not match the HTTP Basic client"));
            }
            (id, secret)
        }
        None => match (form.get("client_id"), form.get("client_secret")) {
            (Some(id), Some(secret)) => (id, secret),
            (None, _) => return Err(OAuthError::invalid_client("client authentication is required (HTTP Basic, or client_id and client_secret)")),
            (Some(_), None) => return Err(OAuthError::invalid_client("client_secret is required")),
        },
    };
    const REFUSED: &str = "client authentication failed: unknown client or wrong secret";
    // The built-in system account is the domain's bootstrap: never issued over HTTP.
    let Some(account) = domain.service_account(client_id).filter(|a| a.id != tessera_domain::SYSTEM_ACCOUNT) else {
        verify_against_dummy(secret);
        return Err(OAuthError::invalid_client(REFUSED));
    };
    let Some(hash) = account.secret_hash.as_deref() else {
        verify_against_dummy(secret);
        return Err(OAuthError::invalid_client(REFUSED));
    };
    if !verify_client_secret(secret, hash) {
        return Err(OAuthError::invalid_client(REFUSED));
    }
    let allowed = Scopes::parse_list(&account.scopes)
        .map_err(|e| OAuthError::invalid_scope(format!("service account `{}` is configured with an invalid scope: {e}", account.id)))?;
    let granted = match form.get("scope") {
        None => allowed,
        Some(requested) => {
            let requested = Scopes::parse(requested).map_err(oauth_error)?;
            let granted = Scopes::intersect(&requested, &allowed);
            if granted.resource_scopes().next().is_none() {
                return Err(OAuthError::invalid_scope(format!(
                    "none of the requested scopes can be granted to `{}`; it may have: {allowed}",
                    account.id
                )));
            }
            granted
        }
    };
    Ok(system_claims(&account.id, &account.name, &account.organisation, granted.to_string(), now, domain.settings.token_minutes))
}

fn switch_context_grant(auth: &Authenticator, domain: &Domain, form: &Form, now: u64) -> Result<Claims, OAuthError> {
    let current = auth.verify_at(form.require("access_token")?, now).map_err(|e| OAuthError::invalid_grant(e.to_string()))?;
    if current.kind != TokenKind::User {
        return Err(OAuthError::invalid_grant("only a user's token can switch context"));
    }
    let (role, organisation) = match (form.get("role"), form.organisation()?) {
        // Only the location changes: stay in the current role and organisation.
        (None, None) => (current.role.as_deref(), Some(current.org.as_str())),
        given => given,
    };
    let held = current.scopes().map_err(|e| OAuthError::invalid_grant(format!("the access token's scopes are invalid: {e}")))?;
    let scopes = match form.get("scope") {
        None => held,
        Some(requested) => {
            let requested = Scopes::parse(requested).map_err(oauth_error)?;
            let granted = Scopes::intersect(&requested, &held);
            if granted.resource_scopes().next().is_none() {
                return Err(OAuthError::invalid_scope(format!("none of the requested scopes are within the current token's: {held}")));
            }
            granted
        }
    };
    let mut claims = user_claims(domain, &current.sub, role, organisation, form.get("location"), Some(&scopes.to_string()), now)
        .map_err(|e| match e {
            AuthError::UnknownUser(_) | AuthError::InactiveUser(_) => OAuthError::invalid_grant(e.to_string()),
            e => oauth_error(e),
        })?;
    claims.exp = claims.exp.min(current.exp);
    Ok(claims)
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
struct Form {
    params: BTreeMap<String, String>,
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
