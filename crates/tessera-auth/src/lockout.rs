//! Account lockout: consecutive failed passwords (or client secrets) lock an account for a
//! while ([`LockState`]). The state of domain accounts is kept in the server's settings
//! under [`user_lock_key`] / [`client_lock_key`], so that it survives a restart and is shared
//! by every server on one database; names that are no account are tracked in memory only
//! ([`MemoryLocks`]), so that they behave alike without filling the database.

use crate::policy::AuthPolicy;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The settings key of a user's lock state: `auth.lock:user:<id>`.
pub fn user_lock_key(user: &str) -> String {
    format!("auth.lock:user:{user}")
}

/// The settings key of a service account's lock state: `auth.lock:client:<id>`.
pub fn client_lock_key(client: &str) -> String {
    format!("auth.lock:client:{client}")
}

/// Failed attempts of one account, and its lock.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockState {
    /// Consecutive failures since the last success or lock.
    #[serde(default)]
    pub failures: u32,
    /// When the last failure happened (Unix seconds; 0: never).
    #[serde(default)]
    pub last_failure: u64,
    /// Locked until (Unix seconds; 0: not locked).
    #[serde(default)]
    pub locked_until: u64,
}

impl LockState {
    /// The state stored as `value` (absent, empty or unreadable: no failures).
    pub fn parse(value: Option<&str>) -> LockState {
        value.filter(|v| !v.trim().is_empty()).and_then(|v| serde_json::from_str(v).ok()).unwrap_or_default()
    }

    /// The value to store: empty when there is nothing to remember.
    pub fn encode(&self) -> String {
        if self.is_clear() {
            String::new()
        } else {
            serde_json::to_string(self).expect("lock state serialises")
        }
    }

    /// No failures and no lock.
    pub fn is_clear(&self) -> bool {
        self.failures == 0 && self.locked_until == 0
    }

    /// Seconds the lock still lasts at `now`, if the account is locked.
    pub fn locked_for(&self, now: u64) -> Option<u64> {
        (self.locked_until > now).then(|| self.locked_until - now)
    }

    /// Failures that count at `now`: none once a lock has run out or the last failure is older
    /// than the lock duration.
    pub fn current_failures(&self, now: u64, policy: &AuthPolicy) -> u32 {
        if self.locked_until != 0 && self.locked_until <= now {
            return 0;
        }
        if self.last_failure.saturating_add(policy.lock_seconds) <= now {
            return 0;
        }
        self.failures
    }

    /// Records a failed attempt at `now`. Returns `true` when this failure locked the account
    /// (for [`AuthPolicy::lock_seconds`]); the failure count then starts again from zero.
    pub fn fail(&mut self, now: u64, policy: &AuthPolicy) -> bool {
        if self.locked_for(now).is_some() {
            self.last_failure = now;
            return false;
        }
        let failures = self.current_failures(now, policy) + 1;
        self.locked_until = 0;
        self.last_failure = now;
        if policy.max_failures > 0 && failures >= policy.max_failures {
            self.failures = 0;
            self.locked_until = now.saturating_add(policy.lock_seconds);
            true
        } else {
            self.failures = failures;
            false
        }
    }

    /// A successful sign-in: forgets the failures.
    pub fn succeed(&mut self) {
        *self = LockState::default();
    }

    /// How many more failures the account takes at `now` before it locks (0 while locked).
    pub fn attempts_left(&self, now: u64, policy: &AuthPolicy) -> u32 {
        if self.locked_for(now).is_some() {
            return 0;
        }
        policy.max_failures.saturating_sub(self.current_failures(now, policy))
    }
}

/// Lock state of names that are no account, in memory (bounded: when full, stale entries are
/// dropped, then the oldest).
#[derive(Debug)]
pub struct MemoryLocks {
    capacity: usize,
    map: Mutex<HashMap<String, LockState>>,
}

impl MemoryLocks {
    pub fn new(capacity: usize) -> Self {
        MemoryLocks { capacity: capacity.max(1), map: Mutex::new(HashMap::new()) }
    }

    pub fn get(&self, key: &str) -> LockState {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned().unwrap_or_default()
    }

    pub fn set(&self, key: &str, state: LockState, now: u64) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if state.is_clear() {
            map.remove(key);
            return;
        }
        if map.len() >= self.capacity && !map.contains_key(key) {
            map.retain(|_, s| s.locked_for(now).is_some() || s.last_failure + 3600 > now);
            if map.len() >= self.capacity {
                if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_failure.max(s.locked_until)).map(|(k, _)| k.clone()) {
                    map.remove(&oldest);
                }
            }
        }
        map.insert(key.to_string(), state);
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Attempts in progress per account, so that parallel guesses cannot overshoot the lockout:
/// an account takes at most as many simultaneous attempts as it has failures left.
#[derive(Debug, Default)]
pub struct InFlight {
    map: Mutex<HashMap<String, u32>>,
}

/// One attempt in progress; dropping it ends the attempt.
#[derive(Debug)]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    key: String,
}

impl InFlight {
    pub fn new() -> Arc<InFlight> {
        Arc::new(InFlight::default())
    }

    /// Starts an attempt on `key` if fewer than `limit` are in progress.
    pub fn enter(self: &Arc<Self>, key: &str, limit: u32) -> Option<InFlightGuard> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let n = map.entry(key.to_string()).or_insert(0);
        if *n >= limit.max(1) {
            if *n == 0 {
                map.remove(key);
            }
            return None;
        }
        *n += 1;
        Some(InFlightGuard { owner: self.clone(), key: key.to_string() })
    }

    /// Attempts in progress on `key`.
    pub fn count(&self, key: &str) -> u32 {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(key).copied().unwrap_or(0)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.owner.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}
