//! Signed access tokens: HS256 JWTs carrying [`Claims`].

use crate::context::select_context;
use crate::error::AuthError;
use crate::scope::Scopes;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::fmt;
use tessera_domain::Domain;

/// The `iss` of every token this server signs.
pub const ISSUER: &str = "tessera";

/// What users may be granted: user-level access to every resource type (the role, the
/// sharing agreements and care relationships then decide what they actually see).
/// Patient-level scopes need a patient in context, which the password grant does not set.
pub const USER_ALLOWED_SCOPES: &str = "user/*.cruds";

/// What a user gets when no scope is requested.
pub const DEFAULT_USER_SCOPES: &str = "user/*.cruds";

/// Who a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// A person (a [`tessera_domain::User`]).
    User,
    /// A system or interface (a [`tessera_domain::ServiceAccount`], or the built-in one).
    System,
    /// A patient signed in to the portal (a [`tessera_domain::PortalAccount`]): reads their
    /// own record (`patient`) only.
    Patient,
}

/// The claims of an access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Always [`ISSUER`].
    pub iss: String,
    /// User id or service account id.
    pub sub: String,
    pub kind: TokenKind,
    /// Active organisation.
    pub org: String,
    /// Active location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loc: Option<String>,
    /// Active role id (users).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// Granted SMART scopes, space separated.
    pub scope: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Random token id.
    pub jti: String,
    /// Patient in context (patient-level launch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// Display name of the subject.
    pub name: String,
    /// The sign-in session the token was issued in (password, refresh and context-switch
    /// grants; see [`crate::Session`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// The session's context generation at issue: a context switch starts the next one, and
    /// tokens of an earlier one are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ctx: Option<u32>,
}

impl Claims {
    /// The granted scopes, parsed.
    pub fn scopes(&self) -> Result<Scopes, AuthError> {
        Scopes::parse(&self.scope)
    }

    pub fn is_user(&self) -> bool {
        self.kind == TokenKind::User
    }

    pub fn is_system(&self) -> bool {
        self.kind == TokenKind::System
    }

    pub fn is_patient(&self) -> bool {
        self.kind == TokenKind::Patient
    }

    /// Seconds left at `now` (0 once expired).
    pub fn expires_in(&self, now: u64) -> u64 {
        self.exp.saturating_sub(now)
    }
}

/// The current time in Unix seconds.
pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Fills a buffer from the operating system's random source.
pub(crate) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the operating system's random source is available");
    bytes
}

/// A random identifier (128 bits, base64url): token ids.
pub fn random_id() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<16>())
}

/// Signs and verifies access tokens with one HS256 secret.
pub struct Authenticator {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authenticator").field("algorithm", &"HS256").finish_non_exhaustive()
    }
}

impl Authenticator {
    /// An authenticator with this signing secret (32 random bytes from
    /// [`Authenticator::generate_secret`] are right).
    ///
    /// # Panics
    /// If the secret is empty.
    pub fn new(secret: &[u8]) -> Self {
        assert!(!secret.is_empty(), "the token signing secret must not be empty");
        let mut validation = Validation::new(Algorithm::HS256);
        // Expiry and issuer are checked by `verify_at`, against the caller's clock and with
        // specific errors.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        Authenticator { encoding: EncodingKey::from_secret(secret), decoding: DecodingKey::from_secret(secret), validation }
    }

    /// An authenticator from a base64 secret (as written by [`Authenticator::encode_secret`]);
    /// surrounding white space is ignored. The secret must be at least 32 bytes.
    pub fn from_base64(secret: &str) -> Result<Self, AuthError> {
        let bytes = STANDARD.decode(secret.trim()).map_err(|e| AuthError::InvalidSecret(format!("not base64: {e}")))?;
        if bytes.len() < 32 {
            return Err(AuthError::InvalidSecret(format!("{} bytes; at least 32 are needed", bytes.len())));
        }
        Ok(Authenticator::new(&bytes))
    }

    /// 32 random bytes, for a new signing secret.
    pub fn generate_secret() -> Vec<u8> {
        random_bytes::<32>().to_vec()
    }

    /// A secret as base64 (for keeping in a file or environment variable).
    pub fn encode_secret(secret: &[u8]) -> String {
        STANDARD.encode(secret)
    }

    /// Signs the claims as an HS256 JWT.
    pub fn sign(&self, claims: &Claims) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding).expect("HS256 signing of serialisable claims does not fail")
    }

    /// Verifies a token against the system clock.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_at(token, now())
    }

    /// Verifies a token's signature, issuer and expiry at `now` (Unix seconds), and returns
    /// its claims.
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Claims, AuthError> {
        self.verify_detailed(token, now).map_err(|(e, _)| e)
    }

    /// As [`Authenticator::verify_at`]; when the signature is good but the token is refused
    /// (expired, another issuer), the error comes with the token's claims, so that the refusal
    /// can name whose token it was.
    pub fn verify_detailed(&self, token: &str, now: u64) -> Result<Claims, (AuthError, Option<Box<Claims>>)> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation).map_err(|e| match e.kind() {
            ErrorKind::InvalidSignature => AuthError::BadSignature,
            ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm | ErrorKind::InvalidAlgorithmName | ErrorKind::UnsupportedAlgorithm => {
                AuthError::Malformed("not signed with HS256".into())
            }
            ErrorKind::InvalidToken => AuthError::Malformed("not a JSON web token (header.payload.signature)".into()),
            ErrorKind::Base64(e) => AuthError::Malformed(format!("bad base64: {e}")),
            ErrorKind::Json(e) => AuthError::Malformed(format!("bad claims: {e}")),
            ErrorKind::Utf8(e) => AuthError::Malformed(format!("not UTF-8: {e}")),
            _ => AuthError::Malformed(e.to_string()),
        })
        .map_err(|e| (e, None))?;
        let claims = data.claims;
        if claims.iss != ISSUER {
            return Err((AuthError::WrongIssuer(claims.iss.clone()), Some(Box::new(claims))));
        }
        if now >= claims.exp {
            return Err((AuthError::Expired { expired_at: claims.exp, now }, Some(Box::new(claims))));
        }
        Ok(claims)
    }

    /// Issues a token for a local user in the given context (see
    /// [`crate::context::select_context`]). `scopes` (default [`DEFAULT_USER_SCOPES`]) is
    /// narrowed to [`USER_ALLOWED_SCOPES`]; it is an error if nothing is left. Lifetime:
    /// `Settings.token_minutes`. The user must be active; no password is checked.
    #[allow(clippy::too_many_arguments)]
    pub fn issue_user_token(
        &self,
        domain: &Domain,
        user_id: &str,
        role: Option<&str>,
        organisation: Option<&str>,
        location: Option<&str>,
        scopes: Option<&str>,
        now: u64,
    ) -> Result<String, AuthError> {
        Ok(self.sign(&user_claims(domain, user_id, role, organisation, location, scopes, now)?))
    }

    /// Issues a system token (`kind: system`) for `subject_id` acting for `organisation`,
    /// valid for `minutes`. The scopes are taken as given (e.g. `system/*.*` for the built-in
    /// system account); they should be valid SMART scopes.
    pub fn issue_system_token(&self, subject_id: &str, organisation: &str, scopes: &str, now: u64, minutes: u32) -> String {
        self.sign(&system_claims(subject_id, subject_id, organisation, scopes.to_string(), now, minutes))
    }
}

pub(crate) fn system_claims(subject_id: &str, name: &str, organisation: &str, scope: String, now: u64, minutes: u32) -> Claims {
    Claims {
        iss: ISSUER.to_string(),
        sub: subject_id.to_string(),
        kind: TokenKind::System,
        org: organisation.to_string(),
        loc: None,
        role: None,
        scope,
        iat: now,
        exp: now + u64::from(minutes) * 60,
        jti: random_id(),
        patient: None,
        name: name.to_string(),
        sid: None,
        ctx: None,
    }
}

/// The scopes a user is granted for `requested` (default [`DEFAULT_USER_SCOPES`]).
pub(crate) fn user_scopes(requested: Option<&str>) -> Result<Scopes, AuthError> {
    let requested_text = requested.unwrap_or(DEFAULT_USER_SCOPES);
    let requested = Scopes::parse(requested_text)?;
    let allowed = Scopes::parse(USER_ALLOWED_SCOPES).expect("valid built-in scopes");
    let granted = Scopes::intersect(&requested, &allowed);
    if granted.resource_scopes().next().is_none() {
        return Err(AuthError::scope(
            requested_text,
            format!("none of these scopes can be granted to a user; users may have {USER_ALLOWED_SCOPES} (or part of it)"),
        ));
    }
    Ok(granted)
}

/// What a patient signed in to the portal may be granted: reading their own record.
pub const PATIENT_PORTAL_SCOPES: &str = "patient/*.rs";

/// The claims of a portal account: the patient's own record is named later, by the server
/// that resolves the account's NHS number (`patient`).
pub(crate) fn portal_claims(domain: &Domain, account_id: &str, now: u64) -> Result<Claims, AuthError> {
    let account = domain.portal_account(account_id).ok_or_else(|| AuthError::UnknownUser(account_id.to_string()))?;
    if !account.active {
        return Err(AuthError::InactiveUser(account_id.to_string()));
    }
    Ok(Claims {
        iss: ISSUER.to_string(),
        sub: account.id.clone(),
        kind: TokenKind::Patient,
        org: String::new(),
        loc: None,
        role: None,
        scope: PATIENT_PORTAL_SCOPES.to_string(),
        iat: now,
        exp: now + u64::from(domain.settings.token_minutes) * 60,
        jti: random_id(),
        patient: None,
        name: account.name.clone(),
        sid: None,
        ctx: None,
    })
}

pub(crate) fn user_claims(
    domain: &Domain,
    user_id: &str,
    role: Option<&str>,
    organisation: Option<&str>,
    location: Option<&str>,
    scopes: Option<&str>,
    now: u64,
) -> Result<Claims, AuthError> {
    let user = domain.user(user_id).ok_or_else(|| AuthError::UnknownUser(user_id.to_string()))?;
    if !user.active {
        return Err(AuthError::InactiveUser(user_id.to_string()));
    }
    let context = select_context(user, role, organisation, location)?;
    let scopes = user_scopes(scopes)?;
    Ok(Claims {
        iss: ISSUER.to_string(),
        sub: user.id.clone(),
        kind: TokenKind::User,
        org: context.organisation,
        loc: context.location,
        role: Some(context.role),
        scope: scopes.to_string(),
        iat: now,
        exp: now + u64::from(domain.settings.token_minutes) * 60,
        jti: random_id(),
        patient: None,
        name: user.name.clone(),
        sid: None,
        ctx: None,
    })
}
