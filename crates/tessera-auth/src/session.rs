//! Sign-in sessions: what ties access tokens to their role context, and refresh tokens to
//! their family.
//!
//! A password grant starts a [`Session`] (kept in the server's settings under
//! [`session_key`]): the user, the role context, the scopes, an absolute expiry, a context
//! generation (`ctx`) and the hash of the one refresh token currently valid. Access tokens
//! issued in the session carry its id (`sid`) and generation (`ctx`); a token is admitted only
//! while the session is not revoked and is still in that generation ([`Session::admits`]).
//!
//! * A context switch moves the session to the new context and the next generation: every
//!   access token of the old context stops working ([`Session::switch`]).
//! * A refresh token is used once: presenting it returns a new one and the old one is
//!   remembered as used ([`Session::use_refresh`]). Presenting a used one again means two
//!   parties hold the session's tokens: the whole session — the family of every refresh and
//!   access token it issued — is revoked.
//!
//! Tokens without a session (issued by `tessera token`) are revoked one by one, by token id,
//! under [`revoked_key`].

use crate::token::{random_bytes, random_id, Claims};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::Digest;

/// How many used refresh tokens a session remembers (for reuse detection).
pub const USED_REFRESH_KEPT: usize = 64;

/// The settings key of a session: `auth.session:<sid>`.
pub fn session_key(sid: &str) -> String {
    format!("auth.session:{sid}")
}

/// The settings key marking a sessionless access token as revoked: `auth.revoked:<jti>`
/// (its value is the token's expiry, Unix seconds).
pub fn revoked_key(jti: &str) -> String {
    format!("auth.revoked:{jti}")
}

/// Why and when a session was revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub at: u64,
    /// A [`crate::RefusalReason`] code, e.g. `refresh-reuse`.
    pub reason: String,
}

/// A sign-in session (a refresh token family).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub sid: String,
    pub user: String,
    pub org: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loc: Option<String>,
    pub scope: String,
    /// The patient in context (a SMART launch, a portal sign-in): kept across refreshes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    /// The app the session was granted to (authorization-code grant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Started (Unix seconds).
    pub created: u64,
    /// Ends (Unix seconds): no refresh after this.
    pub exp: u64,
    /// Context generation: access tokens of an earlier one are no longer admitted.
    pub ctx: u32,
    /// SHA-256 (hex) of the refresh token currently valid.
    pub refresh: String,
    /// SHA-256 (hex) of the refresh tokens already used, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub used: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<Revocation>,
}

/// Why a refresh token is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshRefusal {
    /// Not a refresh token of this session.
    Unknown,
    /// The session has ended.
    Expired,
    /// The session was revoked before.
    Revoked,
    /// The token was used before: the session is now revoked.
    Reused,
}

/// The SHA-256 (hex) under which a refresh token is stored.
pub fn refresh_token_hash(token: &str) -> String {
    let digest = sha2::Sha256::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The session id of a refresh token (`<sid>.<secret>`), if it has that form.
pub fn refresh_token_session(token: &str) -> Option<&str> {
    let (sid, secret) = token.split_once('.')?;
    let ok = |s: &str, len: std::ops::RangeInclusive<usize>| len.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (ok(sid, 16..=64) && ok(secret, 32..=128)).then_some(sid)
}

fn new_refresh_token(sid: &str) -> String {
    format!("{sid}.{}", URL_SAFE_NO_PAD.encode(random_bytes::<32>()))
}

/// Constant-time comparison of two hex digests.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Session {
    /// Starts a session for a user's access token, ending at `exp` (Unix seconds): sets the
    /// token's `sid` and `ctx` and caps its expiry at the session's. Returns the session and its
    /// first refresh token (only its hash is kept).
    pub fn start(claims: &mut Claims, now: u64, exp: u64) -> (Session, String) {
        let sid = random_id();
        let token = new_refresh_token(&sid);
        claims.sid = Some(sid.clone());
        claims.ctx = Some(0);
        claims.exp = claims.exp.min(exp);
        let session = Session {
            sid,
            user: claims.sub.clone(),
            org: claims.org.clone(),
            role: claims.role.clone(),
            loc: claims.loc.clone(),
            scope: claims.scope.clone(),
            patient: claims.patient.clone(),
            client: None,
            created: now,
            exp,
            ctx: 0,
            refresh: refresh_token_hash(&token),
            used: Vec::new(),
            revoked: None,
        };
        (session, token)
    }

    /// The session stored as `value`, if readable.
    pub fn parse(value: &str) -> Option<Session> {
        serde_json::from_str(value).ok()
    }

    /// The value to store.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("a session serialises")
    }

    /// Whether an access token of this session is still admitted: the session is not revoked,
    /// and the token belongs to it and to its current context generation.
    pub fn admits(&self, claims: &Claims) -> bool {
        self.revoked.is_none() && claims.sid.as_deref() == Some(self.sid.as_str()) && claims.ctx == Some(self.ctx) && claims.sub == self.user
    }

    /// Presents a refresh token at `now`. The current one is rotated: the new refresh token is
    /// returned and the presented one remembered as used. A used one revokes the session.
    pub fn use_refresh(&mut self, token: &str, now: u64) -> Result<String, RefreshRefusal> {
        let hash = refresh_token_hash(token);
        if self.revoked.is_some() {
            return Err(RefreshRefusal::Revoked);
        }
        if same(&hash, &self.refresh) {
            if now >= self.exp {
                return Err(RefreshRefusal::Expired);
            }
            return Ok(self.rotate());
        }
        if self.used.iter().any(|u| same(u, &hash)) {
            self.revoke("refresh-reuse", now);
            return Err(RefreshRefusal::Reused);
        }
        Err(RefreshRefusal::Unknown)
    }

    /// Issues the next refresh token; the current one becomes used.
    fn rotate(&mut self) -> String {
        let token = new_refresh_token(&self.sid);
        let old = std::mem::replace(&mut self.refresh, refresh_token_hash(&token));
        self.used.push(old);
        if self.used.len() > USED_REFRESH_KEPT {
            let excess = self.used.len() - USED_REFRESH_KEPT;
            self.used.drain(..excess);
        }
        token
    }

    /// Moves the session to the context of `claims` (a new token for the same user): the next
    /// generation, so that the tokens of the old context are no longer admitted. Sets the new
    /// token's `sid` and `ctx`, caps its expiry at the session's, rotates the refresh token and
    /// returns the new one.
    pub fn switch(&mut self, claims: &mut Claims) -> String {
        self.ctx += 1;
        self.org = claims.org.clone();
        self.role = claims.role.clone();
        self.loc = claims.loc.clone();
        self.scope = claims.scope.clone();
        claims.sid = Some(self.sid.clone());
        claims.ctx = Some(self.ctx);
        claims.exp = claims.exp.min(self.exp);
        self.rotate()
    }

    /// Marks the token as one of this session's current generation, capping its expiry at the
    /// session's (a refreshed access token).
    pub fn stamp(&self, claims: &mut Claims) {
        claims.sid = Some(self.sid.clone());
        claims.ctx = Some(self.ctx);
        claims.exp = claims.exp.min(self.exp);
    }

    /// Revokes the session: no more refreshes, and none of its access tokens is admitted.
    pub fn revoke(&mut self, reason: &str, now: u64) {
        if self.revoked.is_none() {
            self.revoked = Some(Revocation { at: now, reason: reason.to_string() });
        }
    }
}
