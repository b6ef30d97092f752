//! The knobs of sign-in hardening: account lockout, the per-address rate limit, refresh
//! token lifetime, how long revocation and lock state may be cached, and how refusals are
//! audited under a flood.

/// Sign-in hardening settings (server configuration; see [`AuthPolicy::from_env`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthPolicy {
    /// Consecutive failed passwords (or client secrets) after which the account is locked.
    /// 0 disables lockout.
    pub max_failures: u32,
    /// How long a lock lasts, in seconds (also how long failures are remembered).
    pub lock_seconds: u64,
    /// Failed attempts allowed per client address and minute (a token bucket of this size,
    /// refilled at this rate). 0 disables the address limit.
    pub attempts_per_minute: u32,
    /// Lifetime of a sign-in session, and so of its refresh tokens, in seconds (counted from
    /// the password grant; refreshing does not extend it).
    pub refresh_seconds: u64,
    /// How long lock state, session state and token revocations may be cached in memory, in
    /// seconds (at most [`AuthPolicy::MAX_CACHE_SECONDS`]).
    pub cache_seconds: u64,
    /// The audit window per client address, in seconds: within it, the first
    /// [`AuthPolicy::audit_burst`] refusals are recorded one by one, the rest as one summary
    /// count at its end.
    pub audit_window_seconds: u64,
    /// Refusals recorded one by one per address and window.
    pub audit_burst: u32,
    /// Refusals recorded one by one per window over all addresses.
    pub audit_global_burst: u32,
    /// Take the client address from the last entry of `X-Forwarded-For` (only behind a
    /// reverse proxy that sets it; otherwise clients could choose their address).
    pub trust_forwarded_for: bool,
}

impl AuthPolicy {
    /// The upper bound of [`AuthPolicy::cache_seconds`].
    pub const MAX_CACHE_SECONDS: u64 = 5;

    /// Failures before a lock, by default.
    pub const DEFAULT_MAX_FAILURES: u32 = 5;
    /// Lock duration by default: 15 minutes.
    pub const DEFAULT_LOCK_SECONDS: u64 = 15 * 60;
    /// Failed attempts per address and minute, by default.
    pub const DEFAULT_ATTEMPTS_PER_MINUTE: u32 = 10;
    /// Session (refresh token) lifetime by default: 8 hours.
    pub const DEFAULT_REFRESH_SECONDS: u64 = 8 * 3600;

    /// The policy from the environment, each unset variable taking its default:
    ///
    /// | variable | default |
    /// | --- | --- |
    /// | `TESSERA_AUTH_MAX_FAILURES` | 5 (0: no lockout) |
    /// | `TESSERA_AUTH_LOCK_MINUTES` | 15 |
    /// | `TESSERA_AUTH_ATTEMPTS_PER_MINUTE` | 10 (0: no address limit) |
    /// | `TESSERA_AUTH_REFRESH_HOURS` | 8 |
    /// | `TESSERA_TRUST_FORWARDED_FOR` | off (`1`/`true` to enable) |
    pub fn from_env() -> Result<AuthPolicy, String> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// As [`AuthPolicy::from_env`], reading variables through `lookup`.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<AuthPolicy, String> {
        fn number(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Result<Option<u64>, String> {
            match lookup(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => v.parse::<u64>().map(Some).map_err(|_| format!("{name}={v} is not a whole number")),
            }
        }
        let mut policy = AuthPolicy::default();
        if let Some(n) = number(&lookup, "TESSERA_AUTH_MAX_FAILURES")? {
            policy.max_failures = u32::try_from(n).map_err(|_| "TESSERA_AUTH_MAX_FAILURES is too large".to_string())?;
        }
        if let Some(n) = number(&lookup, "TESSERA_AUTH_LOCK_MINUTES")? {
            if n == 0 {
                return Err("TESSERA_AUTH_LOCK_MINUTES must be at least 1 (set TESSERA_AUTH_MAX_FAILURES=0 to turn lockout off)".into());
            }
            policy.lock_seconds = n.saturating_mul(60);
        }
        if let Some(n) = number(&lookup, "TESSERA_AUTH_ATTEMPTS_PER_MINUTE")? {
            policy.attempts_per_minute = u32::try_from(n).map_err(|_| "TESSERA_AUTH_ATTEMPTS_PER_MINUTE is too large".to_string())?;
        }
        if let Some(n) = number(&lookup, "TESSERA_AUTH_REFRESH_HOURS")? {
            if n == 0 {
                return Err("TESSERA_AUTH_REFRESH_HOURS must be at least 1".into());
            }
            policy.refresh_seconds = n.saturating_mul(3600);
        }
        if let Some(v) = lookup("TESSERA_TRUST_FORWARDED_FOR") {
            policy.trust_forwarded_for = match v.trim().to_ascii_lowercase().as_str() {
                "" | "0" | "false" | "no" | "off" => false,
                "1" | "true" | "yes" | "on" => true,
                other => return Err(format!("TESSERA_TRUST_FORWARDED_FOR={other}: use true or false")),
            };
        }
        Ok(policy)
    }

    /// The cache lifetime actually used: [`AuthPolicy::cache_seconds`], at most
    /// [`AuthPolicy::MAX_CACHE_SECONDS`].
    pub fn cache_ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.cache_seconds.min(Self::MAX_CACHE_SECONDS))
    }
}

impl Default for AuthPolicy {
    fn default() -> Self {
        AuthPolicy {
            max_failures: Self::DEFAULT_MAX_FAILURES,
            lock_seconds: Self::DEFAULT_LOCK_SECONDS,
            attempts_per_minute: Self::DEFAULT_ATTEMPTS_PER_MINUTE,
            refresh_seconds: Self::DEFAULT_REFRESH_SECONDS,
            cache_seconds: 2,
            audit_window_seconds: 60,
            audit_burst: 10,
            audit_global_burst: 600,
            trust_forwarded_for: false,
        }
    }
}
