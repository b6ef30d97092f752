//! Sending writes to the engine, retrying transient failures.
//!
//! A server-side failure (status 5xx, e.g. a storage error) means the write was not
//! committed, so sending it again cannot duplicate anything: such failures are retried a
//! few times with a growing pause before they are reported. Client errors (4xx) are final.

use crate::response::{entry_results, error_messages, EntryResult};
use serde_json::{json, Value};
use std::time::Duration;
use tessera_engine::{Access, Engine, FhirError, ReturnPreference};

/// Attempts per write, the first included.
pub const ATTEMPTS: u32 = 4;

/// Whether a failure with this status is worth another attempt.
pub fn is_transient(status: u16) -> bool {
    status >= 500
}

/// The pause before attempt `attempt + 1`.
pub async fn pause(attempt: u32) {
    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
}

/// Commits `entries` as a batch Bundle and returns each entry's result, in order; an
/// error is the message to report.
pub async fn batch(engine: &Engine, access: &Access, entries: Vec<Value>) -> Vec<Result<(), String>> {
    let mut results: Vec<Option<Result<(), String>>> = vec![None; entries.len()];
    let mut pending: Vec<usize> = (0..entries.len()).collect();
    let mut entries: Vec<Option<Value>> = entries.into_iter().map(Some).collect();
    for attempt in 0..ATTEMPTS {
        if pending.is_empty() {
            break;
        }
        let last = attempt + 1 == ATTEMPTS;
        // The last attempt may consume the entries; earlier ones send copies.
        let sent: Vec<Value> =
            pending.iter().map(|&i| if last { entries[i].take() } else { entries[i].clone() }.expect("entry kept")).collect();
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": sent});
        let outcome = answer(engine.bundle(access, bundle, Some(ReturnPreference::Minimal)).await, pending.len());
        let mut retry = Vec::new();
        for (&i, result) in pending.iter().zip(outcome) {
            match result {
                Err((status, _)) if is_transient(status) && !last => retry.push(i),
                result => results[i] = Some(result.map_err(|(_, message)| message)),
            }
        }
        if !retry.is_empty() {
            tracing::warn!(entries = retry.len(), attempt = attempt + 1, "batch entries failed on the server side; retrying");
            pause(attempt).await;
        }
        pending = retry;
    }
    results.into_iter().map(|r| r.expect("every entry answered")).collect()
}

/// Each entry's result from the engine's answer to a batch of `n` entries.
fn answer(response: Result<tessera_engine::bundle::Bundle, FhirError>, n: usize) -> Vec<EntryResult> {
    let all = |status: u16, message: String| (0..n).map(|_| Err((status, message.clone()))).collect();
    match response {
        Ok(body) => match entry_results(body.as_bytes()) {
            Ok(results) if results.len() == n => results,
            Ok(results) => all(0, format!("the engine answered {} entries for {n}", results.len())),
            Err(message) => all(0, message),
        },
        // The engine refused the batch as a whole (not expected of a well-formed batch).
        Err(e) => all(e.status, error_messages(&e).into_iter().map(|(_, m)| m).collect::<Vec<_>>().join("; ")),
    }
}
