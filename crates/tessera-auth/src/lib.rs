//! Authentication for Tessera, as a library (the HTTP layer and the binary call it):
//!
//! - [`Authenticator`]: HS256-signed JWT access tokens ([`Claims`]): issue and verify.
//! - [`hash_password`] / [`verify_password`]: Argon2id PHC strings (m=19 MiB, t=2, p=1), for
//!   user passwords and service-account client secrets.
//! - [`Scopes`]: SMART on FHIR scopes, v1 and v2: parse, check ([`Scopes::allows`]),
//!   intersect.
//! - [`token()`]: the OAuth 2 token endpoint logic (password, client credentials and
//!   context-switch grants), returning a [`TokenResponse`] or an RFC 6749 [`OAuthError`];
//!   [`grant`] and [`refresh_claims`] are its parts, for a server that keeps sessions.
//! - Sign-in hardening, pure and in memory (the server persists what must be shared):
//!   [`AuthPolicy`] (the settings), [`LockState`] (account lockout), [`RateLimiter`] (failed
//!   attempts per address), [`AuditThrottle`] (bounded audit of refusal floods), [`Session`]
//!   (context generations and refresh-token families with reuse detection), and the audit
//!   vocabulary [`RefusalReason`] / [`AuthEvent`].
//! - [`smart_configuration`]: the `/.well-known/smart-configuration` document.

pub mod authorize;
pub mod context;
pub mod error;
pub mod event;
pub mod limit;
pub mod lockout;
pub mod oauth;
pub mod password;
pub mod policy;
pub mod scope;
pub mod session;
pub mod smart;
pub mod token;

pub use authorize::{
    code_key, granted_scopes, launch_key, new_code, pkce_challenge, redeem, redirect_matches, verify_pkce, AuthorizeError, AuthorizeRequest, CodeGrant,
    LaunchContext, AUTHORIZATION_CODE_GRANT, CODE_SECONDS, LAUNCH_SECONDS,
};
pub use context::{select_context, ActiveContext};
pub use error::{AuthError, OAuthError, OAuthErrorCode};
pub use event::{claims_standing, Account, AuthAction, AuthEvent, AuthSubject, RefusalReason};
pub use limit::{address_key, Admission, AuditSummary, AuditThrottle, RateLimiter};
pub use lockout::{client_lock_key, user_lock_key, InFlight, InFlightGuard, LockState, MemoryLocks};
pub use oauth::{
    grant, parse_basic_auth, refresh_claims, token, token_with_claims, Granted, Refusal, TokenRequest, TokenResponse, CLIENT_CREDENTIALS_GRANT,
    PASSWORD_GRANT, REFRESH_TOKEN_GRANT, SWITCH_CONTEXT_GRANT,
};
pub use password::{
    hash_client_secret, hash_password, password_hash_is_current, verify_client_secret, verify_password, ARGON2_ITERATIONS, ARGON2_MEMORY_KIB,
    ARGON2_OUTPUT_BYTES, ARGON2_PARALLELISM,
};
pub use policy::AuthPolicy;
pub use scope::{OpSet, ResourceScope, Scope, ScopeContext, ScopeOp, ScopeSyntax, Scopes};
pub use session::{refresh_token_hash, refresh_token_session, revoked_key, session_key, RefreshRefusal, Revocation, Session};
pub use smart::smart_configuration;
pub use token::{now, random_id, Authenticator, Claims, TokenKind, DEFAULT_USER_SCOPES, ISSUER, PATIENT_PORTAL_SCOPES, USER_ALLOWED_SCOPES};
