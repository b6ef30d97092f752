//! What the audit trail records of authentication: why a sign-in or a token was refused
//! ([`RefusalReason`]) and the event itself ([`AuthEvent`]), for the engine to write. An
//! event never holds a password, a client secret, an access token or a refresh token.

use crate::error::AuthError;
use crate::token::{Claims, TokenKind};
use tessera_domain::Domain;

/// Why a sign-in or a bearer token was refused. [`RefusalReason::code`] is what the audit
/// trail shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RefusalReason {
    /// No `Authorization: Bearer` header.
    MissingToken,
    /// Not a token of ours in form: not a JWT, not HS256, undecodable claims.
    Malformed,
    /// Signed with another key, or altered.
    BadSignature,
    /// Signed with our key for another issuer.
    WrongIssuer,
    /// Past its expiry (or, for a refresh token, past the end of its session).
    Expired,
    /// Revoked: an old context after a switch, or a session revoked for refresh token reuse.
    Revoked,
    /// No such user (sign-in, or the subject of a token).
    UnknownUser,
    /// No such service account.
    UnknownClient,
    /// The user is not active.
    InactiveUser,
    /// The user no longer holds the token's role.
    WithdrawnRole,
    /// A wrong password for an existing user.
    WrongPassword,
    /// A wrong secret for an existing service account.
    WrongSecret,
    /// The account is locked after repeated failures.
    Locked,
    /// Too many failed attempts from the client's address (or at once on one account).
    RateLimited,
    /// A refresh token used a second time: suspected theft; its session is revoked.
    RefreshReuse,
    /// A refresh token that is no refresh token of a session.
    InvalidRefresh,
    /// The authenticated user asked for a context or scope they do not hold.
    InvalidContext,
    /// The request was not a valid token request (missing or repeated parameters, unknown
    /// grant type).
    InvalidRequest,
}

impl RefusalReason {
    pub fn code(self) -> &'static str {
        match self {
            RefusalReason::MissingToken => "missing-token",
            RefusalReason::Malformed => "malformed",
            RefusalReason::BadSignature => "bad-signature",
            RefusalReason::WrongIssuer => "wrong-issuer",
            RefusalReason::Expired => "expired",
            RefusalReason::Revoked => "revoked",
            RefusalReason::UnknownUser => "unknown-user",
            RefusalReason::UnknownClient => "unknown-client",
            RefusalReason::InactiveUser => "inactive-user",
            RefusalReason::WithdrawnRole => "withdrawn-role",
            RefusalReason::WrongPassword => "wrong-password",
            RefusalReason::WrongSecret => "wrong-secret",
            RefusalReason::Locked => "locked",
            RefusalReason::RateLimited => "rate-limited",
            RefusalReason::RefreshReuse => "refresh-reuse",
            RefusalReason::InvalidRefresh => "invalid-refresh",
            RefusalReason::InvalidContext => "invalid-context",
            RefusalReason::InvalidRequest => "invalid-request",
        }
    }

    /// A failed proof of identity (wrong or unknown credentials): counts towards the lockout
    /// of the account and the address limit.
    pub fn is_credential_failure(self) -> bool {
        matches!(self, RefusalReason::WrongPassword | RefusalReason::UnknownUser | RefusalReason::WrongSecret | RefusalReason::UnknownClient)
    }

    /// The reason of a token that failed verification.
    pub fn of_token_error(e: &AuthError) -> RefusalReason {
        match e {
            AuthError::Expired { .. } => RefusalReason::Expired,
            AuthError::BadSignature => RefusalReason::BadSignature,
            AuthError::WrongIssuer(_) => RefusalReason::WrongIssuer,
            AuthError::UnknownUser(_) => RefusalReason::UnknownUser,
            AuthError::InactiveUser(_) => RefusalReason::InactiveUser,
            AuthError::Context(_) | AuthError::InvalidScope { .. } => RefusalReason::InvalidContext,
            AuthError::Malformed(_) | AuthError::InvalidSecret(_) => RefusalReason::Malformed,
        }
    }

    /// A fixed description, free of anything the client sent.
    pub fn describe(self) -> &'static str {
        match self {
            RefusalReason::MissingToken => "no bearer token",
            RefusalReason::Malformed => "the token is malformed",
            RefusalReason::BadSignature => "the token's signature is not valid (forged or altered)",
            RefusalReason::WrongIssuer => "the token was issued by another server",
            RefusalReason::Expired => "the token has expired",
            RefusalReason::Revoked => "the token has been revoked",
            RefusalReason::UnknownUser => "no such user",
            RefusalReason::UnknownClient => "no such client",
            RefusalReason::InactiveUser => "the user is not active",
            RefusalReason::WithdrawnRole => "the user no longer holds the token's role",
            RefusalReason::WrongPassword => "wrong password",
            RefusalReason::WrongSecret => "wrong client secret",
            RefusalReason::Locked => "the account is temporarily locked after repeated failures",
            RefusalReason::RateLimited => "too many failed attempts",
            RefusalReason::RefreshReuse => "a refresh token was used again: suspected theft; its session is revoked",
            RefusalReason::InvalidRefresh => "not a valid refresh token",
            RefusalReason::InvalidContext => "a context or scope the user does not hold",
            RefusalReason::InvalidRequest => "not a valid token request",
        }
    }
}

impl std::fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.code())
    }
}

/// Whether the subject of verified claims still stands in `domain`: the service account
/// exists (or is the built-in one), the user exists, is active and holds the token's role in
/// the token's organisation. (The engine's `Access::from_claims` applies the same rules.)
pub fn claims_standing(claims: &Claims, domain: &Domain) -> Result<(), RefusalReason> {
    match claims.kind {
        TokenKind::System => {
            if claims.sub != tessera_domain::SYSTEM_ACCOUNT && domain.service_account(&claims.sub).is_none() {
                return Err(RefusalReason::UnknownClient);
            }
            Ok(())
        }
        TokenKind::Patient => {
            let account = domain.portal_account(&claims.sub).ok_or(RefusalReason::UnknownUser)?;
            if !account.active {
                return Err(RefusalReason::InactiveUser);
            }
            Ok(())
        }
        TokenKind::User => {
            let user = domain.user(&claims.sub).ok_or(RefusalReason::UnknownUser)?;
            if !user.active {
                return Err(RefusalReason::InactiveUser);
            }
            let role = claims.role.as_deref().unwrap_or("");
            if !user.roles.iter().any(|a| a.role == role && a.organisation == claims.org) {
                return Err(RefusalReason::WithdrawnRole);
            }
            Ok(())
        }
    }
}

/// The account a token request tries to authenticate as.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Account {
    /// A login name (password grant).
    User(String),
    /// A client id (client credentials).
    Client(String),
}

impl Account {
    pub fn id(&self) -> &str {
        match self {
            Account::User(id) | Account::Client(id) => id,
        }
    }

    /// Whether the domain holds this account (a client must have a secret and not be the
    /// built-in system account; a user must have a password).
    pub fn exists(&self, domain: &Domain) -> bool {
        match self {
            Account::User(id) => {
                domain.user(id).is_some_and(|u| u.password_hash.is_some()) || domain.portal_account(id).is_some_and(|a| a.password_hash.is_some())
            }
            Account::Client(id) => domain.service_account(id).is_some_and(|a| a.id != tessera_domain::SYSTEM_ACCOUNT && a.secret_hash.is_some()),
        }
    }

    /// The settings key of its lock state ([`crate::user_lock_key`], [`crate::client_lock_key`]).
    pub fn lock_key(&self) -> String {
        match self {
            Account::User(id) => crate::lockout::user_lock_key(id),
            Account::Client(id) => crate::lockout::client_lock_key(id),
        }
    }
}

/// Who an authentication event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthSubject {
    pub kind: TokenKind,
    /// The user or client id — as verified, or as the client sent it.
    pub id: String,
    /// The domain holds this account (the id may then be used as a reference).
    pub known: bool,
    /// Display name: only when known.
    pub name: Option<String>,
    pub organisation: Option<String>,
    pub role: Option<String>,
    pub location: Option<String>,
}

/// Longest id recorded for a name the client sent.
const MAX_ATTEMPTED_ID: usize = 128;

impl AuthSubject {
    /// The subject of verified claims.
    pub fn of_claims(claims: &Claims, domain: &Domain) -> AuthSubject {
        let known = match claims.kind {
            TokenKind::User => domain.user(&claims.sub).is_some(),
            TokenKind::System => claims.sub == tessera_domain::SYSTEM_ACCOUNT || domain.service_account(&claims.sub).is_some(),
            TokenKind::Patient => domain.portal_account(&claims.sub).is_some(),
        };
        AuthSubject {
            kind: claims.kind,
            id: claims.sub.clone(),
            known,
            name: Some(claims.name.clone()).filter(|n| !n.trim().is_empty()),
            organisation: Some(claims.org.clone()).filter(|o| !o.is_empty()),
            role: claims.role.clone().filter(|r| !r.is_empty()),
            location: claims.loc.clone().filter(|l| !l.is_empty()),
        }
    }

    /// The account a request tried to authenticate as: name and organisation only if the
    /// domain holds it (a user's first role assignment, a service account's organisation).
    /// An id longer than 128 characters is cut.
    pub fn attempted(account: &Account, domain: &Domain) -> AuthSubject {
        let mut id: String = account.id().chars().take(MAX_ATTEMPTED_ID).collect();
        if id.trim().is_empty() {
            id = "(empty)".to_string();
        }
        match account {
            Account::User(name) if domain.user(name).is_none() && domain.portal_account(name).is_some() => {
                let account = domain.portal_account(name);
                AuthSubject {
                    kind: TokenKind::Patient,
                    id,
                    known: true,
                    name: account.map(|a| a.name.clone()).filter(|n| !n.trim().is_empty()),
                    organisation: None,
                    role: None,
                    location: None,
                }
            }
            Account::User(name) => {
                let user = domain.user(name);
                AuthSubject {
                    kind: TokenKind::User,
                    id,
                    known: user.is_some(),
                    name: user.map(|u| u.name.clone()).filter(|n| !n.trim().is_empty()),
                    organisation: user.and_then(|u| u.roles.first()).map(|a| a.organisation.clone()),
                    role: None,
                    location: None,
                }
            }
            Account::Client(client) => {
                let sa = domain.service_account(client).filter(|a| a.id != tessera_domain::SYSTEM_ACCOUNT);
                AuthSubject {
                    kind: TokenKind::System,
                    id,
                    known: sa.is_some(),
                    name: sa.map(|a| a.name.clone()).filter(|n| !n.trim().is_empty()),
                    organisation: sa.map(|a| a.organisation.clone()),
                    role: None,
                    location: None,
                }
            }
        }
    }

    /// The audit index reference: `Practitioner/<id>`, `Device/<id>`, or `Person/<id>` for
    /// a portal account.
    pub fn reference(&self) -> String {
        match self.kind {
            TokenKind::User => format!("Practitioner/{}", self.id),
            TokenKind::System => format!("Device/{}", self.id),
            TokenKind::Patient => format!("Person/{}", self.id),
        }
    }
}

/// What was attempted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthAction {
    /// `grant_type=password`.
    Password,
    /// `grant_type=client_credentials`.
    ClientCredentials,
    /// `grant_type=refresh_token`.
    Refresh,
    /// `grant_type=urn:tessera:switch-context`.
    SwitchContext,
    /// `grant_type=authorization_code` (a SMART app).
    AuthorizationCode,
    /// A user signed out (their session is revoked).
    SignOut,
    /// A token request that named no usable grant.
    TokenRequest,
    /// A request to the API with a bearer token.
    BearerToken,
    /// Refusals counted, not recorded one by one ([`crate::AuditSummary`]).
    Summary,
    /// An operator cleared an account's lock.
    Unlock,
}

impl AuthAction {
    pub fn code(self) -> &'static str {
        match self {
            AuthAction::Password => "password",
            AuthAction::ClientCredentials => "client-credentials",
            AuthAction::Refresh => "refresh-token",
            AuthAction::SwitchContext => "switch-context",
            AuthAction::AuthorizationCode => "authorization-code",
            AuthAction::SignOut => "sign-out",
            AuthAction::TokenRequest => "token-request",
            AuthAction::BearerToken => "bearer-token",
            AuthAction::Summary => "summary",
            AuthAction::Unlock => "unlock",
        }
    }
}

/// An authentication event for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthEvent {
    pub action: AuthAction,
    /// Granted (or, for [`AuthAction::Unlock`], done).
    pub ok: bool,
    /// Why it was refused.
    pub reason: Option<RefusalReason>,
    /// Who acted or tried to (for an unlock: the operator is the agent, the account the
    /// `target`).
    pub subject: Option<AuthSubject>,
    /// The client's network address.
    pub address: Option<String>,
    /// What happened, in words; never a secret or a token.
    pub description: String,
    /// The request refused (`GET /fhir/Patient/1`, without its query), or the unlocked account.
    pub target: Option<String>,
    /// A serious failure (suspected theft).
    pub serious: bool,
    /// For summaries: how many refusals it stands for.
    pub count: Option<u64>,
}

impl AuthEvent {
    /// A refusal of `action` for `reason`.
    pub fn refused(action: AuthAction, reason: RefusalReason, subject: Option<AuthSubject>, address: Option<String>) -> AuthEvent {
        AuthEvent {
            action,
            ok: false,
            reason: Some(reason),
            subject,
            address,
            description: format!("{}: {}", reason.code(), reason.describe()),
            target: None,
            serious: reason == RefusalReason::RefreshReuse,
            count: None,
        }
    }

    /// A granted `action`.
    pub fn granted(action: AuthAction, subject: AuthSubject, address: Option<String>, description: impl Into<String>) -> AuthEvent {
        AuthEvent {
            action,
            ok: true,
            reason: None,
            subject: Some(subject),
            address,
            description: description.into(),
            target: None,
            serious: false,
            count: None,
        }
    }

    /// The record of refusals counted in one window.
    pub fn summary(s: &crate::limit::AuditSummary) -> AuthEvent {
        AuthEvent {
            action: AuthAction::Summary,
            ok: false,
            reason: None,
            subject: None,
            address: (s.key != "*").then(|| s.key.clone()),
            description: s.describe(),
            target: None,
            serious: false,
            count: Some(s.count),
        }
    }

    /// An operator cleared the lock of `account` (`operator`: who, e.g. `command line`).
    pub fn unlock(account: &Account, domain: &Domain, operator: &str) -> AuthEvent {
        let target = AuthSubject::attempted(account, domain);
        AuthEvent {
            action: AuthAction::Unlock,
            ok: true,
            reason: None,
            subject: None,
            address: None,
            description: format!(
                "the sign-in lock of {} `{}` was cleared by the operator ({operator})",
                match account {
                    Account::User(_) => "user",
                    Account::Client(_) => "client",
                },
                target.id
            ),
            target: Some(target.reference()),
            serious: false,
            count: None,
        }
    }

    /// Adds detail to the description.
    pub fn with_description(mut self, extra: &str) -> AuthEvent {
        if !extra.is_empty() {
            self.description.push_str("; ");
            self.description.push_str(extra);
        }
        self
    }

    pub fn with_target(mut self, target: impl Into<String>) -> AuthEvent {
        self.target = Some(target.into());
        self
    }
}
