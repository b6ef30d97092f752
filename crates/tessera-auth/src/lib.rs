//! Authentication for Tessera, as a library (the HTTP layer and the binary call it):
//!
//! - [`Authenticator`]: HS256-signed JWT access tokens ([`Claims`]): issue and verify.
//! - [`hash_password`] / [`verify_password`]: argon2id PHC strings, for user passwords and
//!   service-account client secrets.
//! - [`Scopes`]: SMART on FHIR scopes, v1 and v2: parse, check ([`Scopes::allows`]),
//!   intersect.
//! - [`token()`]: the OAuth 2 token endpoint logic (password, client credentials and
//!   context-switch grants), returning a [`TokenResponse`] or an RFC 6749 [`OAuthError`].
//! - [`smart_configuration`]: the `/.well-known/smart-configuration` document.

pub mod context;
pub mod error;
pub mod oauth;
pub mod password;
pub mod scope;
pub mod smart;
pub mod token;

pub use context::{select_context, ActiveContext};
pub use error::{AuthError, OAuthError, OAuthErrorCode};
pub use oauth::{parse_basic_auth, token, token_with_claims, TokenResponse, CLIENT_CREDENTIALS_GRANT, PASSWORD_GRANT, SWITCH_CONTEXT_GRANT};
pub use password::{hash_client_secret, hash_password, verify_client_secret, verify_password};
pub use scope::{OpSet, ResourceScope, Scope, ScopeContext, ScopeOp, ScopeSyntax, Scopes};
pub use smart::smart_configuration;
pub use token::{now, random_id, Authenticator, Claims, TokenKind, DEFAULT_USER_SCOPES, ISSUER, USER_ALLOWED_SCOPES};
