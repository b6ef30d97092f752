//! Loading one Bundle file: a transaction commits atomically, a batch entry by entry.

use crate::files::Source;
use crate::response::{entry_results, error_messages};
use crate::{FileOutcome, ImportError};
use indicatif::ProgressBar;
use serde_json::Value;
use std::io::Read;
use tessera_engine::{Engine, ReturnPreference};

pub async fn load(engine: &Engine, source: &Source, progress: &ProgressBar) -> FileOutcome {
    let error = |entry: Option<usize>, message: String| ImportError { file: source.path.clone(), entry, message };
    let read = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || read_bundle(&source)).await
    };
    let bundle = match read {
        Ok(Ok(bundle)) => bundle,
        Ok(Err(message)) => return FileOutcome::failed(vec![error(None, message)]),
        Err(e) => return FileOutcome::failed(vec![error(None, format!("reading the file failed: {e}"))]),
    };
    match engine.bundle(bundle, Some(ReturnPreference::Minimal)).await {
        Ok(response) => match entry_results(&response) {
            Ok(results) => {
                let mut outcome = FileOutcome { complete: true, ..FileOutcome::default() };
                for (i, result) in results.into_iter().enumerate() {
                    match result {
                        Ok(()) => outcome.resources += 1,
                        Err(message) => outcome.errors.push(error(Some(i), message)),
                    }
                }
                progress.inc(outcome.resources);
                outcome
            }
            Err(message) => FileOutcome::failed(vec![error(None, message)]),
        },
        // The whole bundle was refused (a transaction stores nothing): not complete, so a
        // later run tries it again.
        Err(e) => FileOutcome::failed(error_messages(&e).into_iter().map(|(entry, message)| error(entry, message)).collect()),
    }
}

/// Reads, decompresses and parses the file; it must hold a Bundle.
fn read_bundle(source: &Source) -> Result<Value, String> {
    let mut bytes = Vec::new();
    source
        .open()
        .and_then(|mut r| r.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match value.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => Ok(value),
        Some(other) => Err(format!("expected a Bundle, found a {other}")),
        None => Err("expected a Bundle: the JSON has no resourceType".into()),
    }
}
