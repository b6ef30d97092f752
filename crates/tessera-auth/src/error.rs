//! Errors: [`AuthError`] for the library's own operations, [`OAuthError`] for the token
//! endpoint (RFC 6749 §5.2).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why a token could not be issued or verified, or a scope string parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token's `exp` has passed.
    #[error("the access token has expired (at {expired_at}; it is now {now})")]
    Expired { expired_at: u64, now: u64 },
    /// The token is well formed but its signature does not match: tampered with, or signed
    /// with another key.
    #[error("the access token's signature is not valid")]
    BadSignature,
    /// The token cannot be decoded: not a JWT, not HS256, bad base64 or JSON, missing claims.
    #[error("the access token is malformed: {0}")]
    Malformed(String),
    /// The token is signed with our key but names another issuer.
    #[error("the access token was issued by `{0}`, not by this server")]
    WrongIssuer(String),
    /// A scope that is not valid SMART syntax, or that cannot be granted.
    #[error("invalid scope `{scope}`: {reason}")]
    InvalidScope { scope: String, reason: String },
    /// No user with this id.
    #[error("unknown user `{0}`")]
    UnknownUser(String),
    /// The user exists but is not active.
    #[error("user `{0}` is not active")]
    InactiveUser(String),
    /// The user does not hold the requested role / organisation / location.
    #[error("{0}")]
    Context(String),
    /// A signing secret that cannot be used.
    #[error("invalid signing secret: {0}")]
    InvalidSecret(String),
}

impl AuthError {
    pub(crate) fn scope(scope: &str, reason: impl Into<String>) -> Self {
        AuthError::InvalidScope { scope: scope.to_string(), reason: reason.into() }
    }
}

/// The RFC 6749 §5.2 error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    /// Too many failed attempts from the client's address: retry later (HTTP 429 with
    /// `Retry-After`). The code is RFC 8628's (OAuth Extensions Error Registry).
    SlowDown,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            OAuthErrorCode::InvalidRequest => "invalid_request",
            OAuthErrorCode::InvalidClient => "invalid_client",
            OAuthErrorCode::InvalidGrant => "invalid_grant",
            OAuthErrorCode::UnauthorizedClient => "unauthorized_client",
            OAuthErrorCode::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorCode::InvalidScope => "invalid_scope",
            OAuthErrorCode::SlowDown => "slow_down",
        }
    }

    /// The HTTP status to answer with: 401 for `invalid_client`, 429 for `slow_down`, 400
    /// otherwise.
    pub fn status(self) -> u16 {
        match self {
            OAuthErrorCode::InvalidClient => 401,
            OAuthErrorCode::SlowDown => 429,
            _ => 400,
        }
    }
}

impl fmt::Display for OAuthErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token endpoint error. Serialises to the RFC 6749 JSON body
/// (`{"error":"invalid_grant","error_description":"…"}`); [`OAuthError::status`] is the HTTP
/// status to send it with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OAuthError {
    pub error: OAuthErrorCode,
    pub error_description: String,
}

impl OAuthError {
    pub fn new(error: OAuthErrorCode, description: impl Into<String>) -> Self {
        OAuthError { error, error_description: description.into() }
    }

    pub fn invalid_request(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidRequest, description)
    }

    pub fn invalid_client(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidClient, description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidGrant, description)
    }

    pub fn unsupported_grant_type(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::UnsupportedGrantType, description)
    }

    pub fn invalid_scope(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::InvalidScope, description)
    }

    pub fn slow_down(description: impl Into<String>) -> Self {
        Self::new(OAuthErrorCode::SlowDown, description)
    }

    /// The HTTP status: 401 for `invalid_client`, 429 for `slow_down`, 400 otherwise.
    pub fn status(&self) -> u16 {
        self.error.status()
    }

    /// The `WWW-Authenticate` header value to send with a 401 (RFC 6749 §5.2).
    pub fn www_authenticate(&self) -> Option<&'static str> {
        (self.error == OAuthErrorCode::InvalidClient).then_some("Basic realm=\"tessera\"")
    }

    /// The JSON body.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "error": self.error.as_str(), "error_description": self.error_description })
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.error, self.error_description)
    }
}

impl std::error::Error for OAuthError {}
