//! In-memory limits of one server: the per-address token bucket of failed sign-in attempts
//! ([`RateLimiter`]) and the throttle that keeps floods of refusals from growing the audit
//! log without bound ([`AuditThrottle`]).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;

/// The key a client address is limited under: an IPv4 address as it is; an IPv6 address by
/// its /64 prefix (one site or host usually holds a whole /64); an IPv4-mapped IPv6 address
/// as its IPv4 address.
pub fn address_key(address: IpAddr) -> String {
    match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                let prefix = std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: u64,
}

/// A token bucket per key: `capacity` tokens, refilled at `capacity` per minute. Each attempt
/// takes a token ([`RateLimiter::try_acquire`]); an attempt that succeeds gives it back
/// ([`RateLimiter::refund`]), so only failures count, and parallel attempts cannot
/// overshoot. A capacity of 0 turns the limit off.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: f64,
    per_ms: f64,
    max_keys: usize,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    pub fn per_minute(capacity: u32) -> Self {
        let capacity = f64::from(capacity);
        RateLimiter { capacity, per_ms: capacity / 60_000.0, max_keys: 100_000, buckets: Mutex::new(HashMap::new()) }
    }

    fn refill(&self, b: &mut Bucket, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(b.updated_ms) as f64;
        b.tokens = (b.tokens + elapsed * self.per_ms).min(self.capacity);
        b.updated_ms = b.updated_ms.max(now_ms);
    }

    /// Takes a token for `key` at `now_ms` (milliseconds), or says in how many seconds (at
    /// least 1) one will be available.
    pub fn try_acquire(&self, key: &str, now_ms: u64) -> Result<(), u64> {
        if self.capacity <= 0.0 {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= self.max_keys && !buckets.contains_key(key) {
            // Drop the buckets that are full again: they hold nothing to remember.
            let (capacity, per_ms) = (self.capacity, self.per_ms);
            buckets.retain(|_, b| b.tokens + now_ms.saturating_sub(b.updated_ms) as f64 * per_ms < capacity);
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket { tokens: self.capacity, updated_ms: now_ms });
        self.refill(bucket, now_ms);
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait_ms = (1.0 - bucket.tokens) / self.per_ms;
            Err(((wait_ms / 1000.0).ceil() as u64).max(1))
        }
    }

    /// Gives back the token of an attempt that succeeded.
    pub fn refund(&self, key: &str, now_ms: u64) {
        if self.capacity <= 0.0 {
            return;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = buckets.get_mut(key) {
            self.refill(b, now_ms);
            b.tokens = (b.tokens + 1.0).min(self.capacity);
        }
    }

    /// Tokens left for `key` at `now_ms`.
    pub fn available(&self, key: &str, now_ms: u64) -> f64 {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        match buckets.get_mut(key) {
            Some(b) => {
                self.refill(b, now_ms);
                b.tokens
            }
            None => self.capacity,
        }
    }
}

/// Whether a refusal is to be recorded on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Record it.
    Record,
    /// Count it only. `first`: the first refusal counted in this window — a summary is due at
    /// `window_end` (Unix seconds).
    Counted { first: bool, window_end: u64 },
}

/// The refusals of one address (or `*`, everything beyond the address table) counted but not
/// recorded one by one in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSummary {
    pub key: String,
    /// Window start and end (Unix seconds).
    pub from: u64,
    pub to: u64,
    /// Refusals counted.
    pub count: u64,
    /// Per reason code, sorted.
    pub by_reason: Vec<(String, u64)>,
}

impl AuditSummary {
    /// E.g. `57 further refusals from 10.0.0.1 were not recorded one by one (wrong-password:
    /// 50, rate-limited: 7)`.
    pub fn describe(&self) -> String {
        let reasons: Vec<String> = self.by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect();
        format!(
            "{} further refusal{} from {} within {} s were not recorded one by one ({})",
            self.count,
            if self.count == 1 { "" } else { "s" },
            self.key,
            self.to.saturating_sub(self.from),
            reasons.join(", ")
        )
    }
}

#[derive(Debug, Clone)]
struct Window {
    start: u64,
    recorded: u32,
    counted: BTreeMap<String, u64>,
}

impl Window {
    fn new(start: u64) -> Self {
        Window { start, recorded: 0, counted: BTreeMap::new() }
    }
}

/// Limits the audit records of refused sign-ins and tokens: per address and window, the
/// first `burst` refusals are recorded, the others counted and recorded as one summary at
/// the end of the window ([`AuditThrottle::drain_expired`]); over all addresses, at most
/// `global_burst` per window are recorded one by one.
#[derive(Debug)]
pub struct AuditThrottle {
    window: u64,
    burst: u32,
    global_burst: u32,
    max_keys: usize,
    state: Mutex<ThrottleState>,
}

#[derive(Debug)]
struct ThrottleState {
    windows: HashMap<String, Window>,
    global: Window,
}

impl AuditThrottle {
    pub fn new(window_seconds: u64, burst: u32, global_burst: u32) -> Self {
        AuditThrottle {
            window: window_seconds.max(1),
            burst,
            global_burst,
            max_keys: 10_000,
            state: Mutex::new(ThrottleState { windows: HashMap::new(), global: Window::new(0) }),
        }
    }

    /// Decides about one refusal from `key` for `reason` at `now` (Unix seconds). Also
    /// returns the summaries of this key's window if it has ended.
    pub fn admit(&self, key: &str, reason: &str, now: u64) -> (Admission, Vec<AuditSummary>) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut summaries = Vec::new();
        if state.global.start + self.window <= now {
            state.global = Window::new(now);
        }
        let mut key = key.to_string();
        if !state.windows.contains_key(&key) && state.windows.len() >= self.max_keys {
            summaries.extend(Self::drain(&mut state, now, self.window));
            if state.windows.len() >= self.max_keys {
                key = "*".to_string();
            }
        }
        if let Some(w) = state.windows.get(&key) {
            if w.start + self.window <= now {
                let w = state.windows.remove(&key).expect("present");
                if let Some(s) = Self::summary(&key, &w, self.window) {
                    summaries.push(s);
                }
            }
        }
        let global_full = state.global.recorded >= self.global_burst;
        let w = state.windows.entry(key).or_insert_with(|| Window::new(now));
        if w.recorded < self.burst && !global_full {
            w.recorded += 1;
            state.global.recorded += 1;
            (Admission::Record, summaries)
        } else {
            let first = w.counted.is_empty();
            *w.counted.entry(reason.to_string()).or_insert(0) += 1;
            let window_end = w.start + self.window;
            (Admission::Counted { first, window_end }, summaries)
        }
    }

    /// The summaries of every window that has ended at `now` (and forgets those windows).
    pub fn drain_expired(&self, now: u64) -> Vec<AuditSummary> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Self::drain(&mut state, now, self.window)
    }

    fn drain(state: &mut ThrottleState, now: u64, window: u64) -> Vec<AuditSummary> {
        let expired: Vec<String> = state.windows.iter().filter(|(_, w)| w.start + window <= now).map(|(k, _)| k.clone()).collect();
        let mut out = Vec::new();
        for key in expired {
            if let Some(w) = state.windows.remove(&key) {
                out.extend(Self::summary(&key, &w, window));
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        out
    }

    fn summary(key: &str, w: &Window, window: u64) -> Option<AuditSummary> {
        let count: u64 = w.counted.values().sum();
        (count > 0).then(|| AuditSummary {
            key: key.to_string(),
            from: w.start,
            to: w.start + window,
            count,
            by_reason: w.counted.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        })
    }
}
