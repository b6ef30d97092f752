//! Loading one Bundle file: a transaction commits atomically, a batch entry by entry.

use crate::commit;
use crate::files::Source;
use crate::response::{entry_results, error_messages};
use crate::{FileOutcome, ImportError};
use indicatif::ProgressBar;
use serde_json::Value;
use std::io::Read;
use tessera_engine::{Access, Engine, ReturnPreference};

pub async fn load(engine: &Engine, access: &Access, source: &Source, progress: &ProgressBar) -> FileOutcome {
    let error = |entry: Option<usize>, message: String| ImportError { file: source.path.clone(), entry, message };
    let (bytes, kind) = match read(source).await {
        Ok(read) => read,
        Err(message) => return FileOutcome::failed(vec![error(None, message)]),
    };
    let results = if kind == "batch" {
        let mut bundle: Value = match serde_json::from_slice(&bytes) {
            Ok(v) => v,
            Err(e) => return FileOutcome::failed(vec![error(None, format!("not valid JSON: {e}"))]),
        };
        drop(bytes);
        let entries = match bundle.get_mut("entry").map(Value::take) {
            None => Vec::new(),
            Some(Value::Array(entries)) => entries,
            Some(_) => return FileOutcome::failed(vec![error(None, "Bundle.entry must be an array".into())]),
        };
        commit::batch(engine, access, entries).await
    } else {
        let mut attempt = 0;
        loop {
            // The engine parses the transaction entry by entry from the text itself.
            match engine.bundle_json(access, &bytes, Some(ReturnPreference::Minimal)).await {
                Ok(response) => match entry_results(response.as_bytes()) {
                    Ok(results) => break results.into_iter().map(|r| r.map_err(|(_, message)| message)).collect(),
                    Err(message) => return FileOutcome::failed(vec![error(None, message)]),
                },
                // Nothing of the transaction was stored: try again, or report it. The file
                // is then not complete, so a later run tries it again as well.
                Err(e) if commit::is_transient(e.status) && attempt + 1 < commit::ATTEMPTS => {
                    tracing::warn!(file = %source.path.display(), error = %e, "transaction failed on the server side; retrying");
                    commit::pause(attempt).await;
                    attempt += 1;
                }
                Err(e) => {
                    return FileOutcome::failed(error_messages(&e).into_iter().map(|(entry, message)| error(entry, message)).collect())
                }
            }
        }
    };
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

/// Reads and decompresses the file off the async workers; returns its text and its
/// `Bundle.type`.
async fn read(source: &Source) -> Result<(Vec<u8>, String), String> {
    let source = source.clone();
    tokio::task::spawn_blocking(move || read_bundle(&source))
        .await
        .unwrap_or_else(|e| Err(format!("reading the file failed: {e}")))
}

/// Reads and decompresses the file; it must hold a Bundle.
fn read_bundle(source: &Source) -> Result<(Vec<u8>, String), String> {
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(rename = "resourceType")]
        resource_type: Option<String>,
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let mut bytes = Vec::new();
    source
        .open()
        .and_then(|mut r| r.read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the file: {e}"))?;
    // Only the head is decoded here (the rest is skipped without building values).
    let head: Head = serde_json::from_slice(&bytes).map_err(|e| format!("not valid JSON: {e}"))?;
    match head.resource_type.as_deref() {
        Some("Bundle") => Ok((bytes, head.kind.unwrap_or_default())),
        Some(other) => Err(format!("expected a Bundle, found a {other}")),
        None => Err("expected a Bundle: the JSON has no resourceType".into()),
    }
}
