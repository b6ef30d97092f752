//! Loading one NDJSON file: one resource a line, sent to the engine in batch Bundles.
//!
//! A resource with an id is written with `PUT Type/id` (idempotent: loading a line twice
//! leaves one resource), one without with `POST Type`. Lines travel in batches of
//! [`BATCH_LINES`] so the store commits their writes together; entries that fail on the
//! server side (5xx) are retried (see `commit`). A blocking thread reads,
//! decompresses and parses the next batch while the engine commits the current one.
//!
//! After each batch the number of the last line it held is recorded in the store meta; an
//! interrupted import resumes after that line. Errors on the lines before it were reported
//! by the earlier run and are not repeated.

use crate::commit;
use crate::files::{self, Source};
use crate::{FileOutcome, ImportError};
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use tessera_engine::{Access, Engine};
use tokio::sync::mpsc;

/// Lines per batch Bundle.
pub const BATCH_LINES: usize = 500;

/// One non-blank line: its 1-based number and the parsed JSON.
struct Line {
    number: usize,
    json: Result<Value, String>,
}

/// What the reader thread sends: a batch of lines, or why reading stopped.
type Batch = Result<Vec<Line>, String>;

pub async fn load(engine: &Engine, access: &Access, source: &Source, identity: &str, progress: &ProgressBar) -> FileOutcome {
    let error = |entry: Option<usize>, message: String| ImportError { file: source.path.clone(), entry, message };
    let line_key = files::line_key(identity);
    let resume_after = match engine.setting(&line_key).await {
        Ok(value) => value.and_then(|v| v.parse::<usize>().ok()).unwrap_or(0),
        Err(e) => return FileOutcome::failed(vec![error(None, format!("cannot read the import progress: {e}"))]),
    };
    if resume_after > 0 {
        progress.suspend(|| tracing::info!(file = %source.path.display(), line = resume_after, "resuming after the last committed line"));
    }

    let (tx, mut rx) = mpsc::channel::<Batch>(2);
    let reader = {
        let source = source.clone();
        tokio::task::spawn_blocking(move || read_lines(&source, resume_after, &tx))
    };
    let mut outcome = FileOutcome { complete: true, ..FileOutcome::default() };
    while let Some(batch) = rx.recv().await {
        let lines = match batch {
            Ok(lines) => lines,
            Err(message) => {
                outcome.errors.push(error(None, message));
                outcome.complete = false;
                break;
            }
        };
        let Some(last) = lines.last().map(|l| l.number) else { continue };
        let mut entries = Vec::with_capacity(lines.len());
        let mut numbers = Vec::with_capacity(lines.len());
        for line in lines {
            match line.json.and_then(entry) {
                Ok(e) => {
                    entries.push(e);
                    numbers.push(line.number);
                }
                Err(message) => outcome.errors.push(error(Some(line.number), message)),
            }
        }
        let stored = commit(engine, access, entries, &numbers, &mut |number, message| outcome.errors.push(error(Some(number), message))).await;
        outcome.resources += stored;
        progress.inc(stored);
        if let Err(e) = engine.set_setting(&line_key, &last.to_string()).await {
            tracing::warn!(file = %source.path.display(), error = %e, "cannot record the import progress");
        }
    }
    if let Err(e) = reader.await {
        outcome.errors.push(error(None, format!("reading the file failed: {e}")));
        outcome.complete = false;
    }
    outcome
}

/// Commits one batch of lines and reports each failed entry by its line number. Returns
/// the number of resources stored.
async fn commit(engine: &Engine, access: &Access, entries: Vec<Value>, numbers: &[usize], failed: &mut impl FnMut(usize, String)) -> u64 {
    if entries.is_empty() {
        return 0;
    }
    let mut stored = 0;
    for (number, result) in numbers.iter().zip(commit::batch(engine, access, entries).await) {
        match result {
            Ok(()) => stored += 1,
            Err(message) => failed(*number, message),
        }
    }
    stored
}

/// The batch entry for one line's resource.
fn entry(resource: Value) -> Result<Value, String> {
    let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str) else {
        return Err("the line is not a FHIR resource: it has no resourceType".into());
    };
    let request = match resource.get("id") {
        None => json!({"method": "POST", "url": resource_type}),
        Some(Value::String(id)) => json!({"method": "PUT", "url": format!("{resource_type}/{id}")}),
        Some(_) => return Err(format!("{resource_type}.id must be a string")),
    };
    Ok(json!({"resource": resource, "request": request}))
}

/// Reads the file line by line (skipping the first `resume_after` lines and blank lines),
/// parses each line and sends batches of [`BATCH_LINES`]. Stops early when the receiver
/// is gone.
fn read_lines(source: &Source, resume_after: usize, tx: &mpsc::Sender<Batch>) {
    let mut reader = match source.open() {
        Ok(r) => BufReader::with_capacity(1 << 20, r),
        Err(e) => {
            let _ = tx.blocking_send(Err(format!("cannot read the file: {e}")));
            return;
        }
    };
    let mut batch = Vec::with_capacity(BATCH_LINES);
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => {
                number += 1;
                if number <= resume_after || buf.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let json = serde_json::from_slice(&buf).map_err(|e| format!("not valid JSON: {e}"));
                batch.push(Line { number, json });
                if batch.len() == BATCH_LINES && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
            }
            Err(e) => {
                if !batch.is_empty() && tx.blocking_send(Ok(std::mem::take(&mut batch))).is_err() {
                    return;
                }
                let _ = tx.blocking_send(Err(format!("cannot read line {}: {e}", number + 1)));
                return;
            }
        }
    }
    if !batch.is_empty() {
        let _ = tx.blocking_send(Ok(batch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_put_with_id_and_post_without() {
        let put = entry(json!({"resourceType": "Patient", "id": "p1"})).unwrap();
        assert_eq!(put["request"], json!({"method": "PUT", "url": "Patient/p1"}));
        let post = entry(json!({"resourceType": "Observation"})).unwrap();
        assert_eq!(post["request"], json!({"method": "POST", "url": "Observation"}));
        assert!(entry(json!({"id": "x"})).is_err());
        assert!(entry(json!([1, 2])).is_err());
    }
}
