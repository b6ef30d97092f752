//! Bulk loading of FHIR data through the [`Engine`] (`tessera import`).
//!
//! [`run`] loads FHIR **Bundles** (`.json`, one `transaction` or `batch` Bundle a file) and
//! **NDJSON** (`.ndjson`, one resource a line), each plain, gzip (`.gz`) or bzip2 (`.bz2`)
//! compressed. Folders are walked recursively.
//!
//! # Invariants
//! * Every write goes through the engine — validation, reference resolution and
//!   transaction semantics are exactly those of the FHIR API. The store is used directly
//!   only for its meta table (import progress).
//! * A transaction Bundle is atomic: it is stored whole or not at all. A batch Bundle is
//!   stored entry by entry.
//! * NDJSON lines with an id are written with `PUT` semantics, so loading a line twice
//!   leaves one resource; lines without an id are created. Lines are sent in batch
//!   Bundles of 500 so that the store commits their writes together.
//! * Order: files whose name contains `hospitalInformation` or `practitionerInformation`
//!   (Synthea's shared organisations and practitioners, which patient bundles reference
//!   conditionally) load first, one at a time; then the other files, sorted by path,
//!   up to [`Options::concurrency`] at a time.
//! * Failures on the server side (5xx: nothing was stored) are retried a few times before
//!   they are reported; client errors (4xx) are reported at once.
//! * Errors are collected, never fatal to other files: each names its file and, when
//!   known, the Bundle entry index or NDJSON line number.
//! * Resumable: a file that was read to its end (all entries attempted) is recorded in the
//!   store meta under `import.done:<canonical path>:<size>:<mtime>` and skipped by later
//!   runs. A file that could not be read or whose transaction was refused is not recorded,
//!   so a later run tries it again. Within an NDJSON file the last committed line is
//!   recorded after each batch, and an interrupted file resumes after it.

mod bundle;
mod commit;
mod files;
mod ndjson;
mod response;

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tessera_engine::{Access, Engine};

pub use files::is_prerequisite;

/// Import settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Files loaded at once (after the prerequisite files, which load alone). At least 1.
    pub concurrency: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { concurrency: 4 }
    }
}

/// One failure, located.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportError {
    pub file: PathBuf,
    /// For a Bundle file the 0-based entry index (as in `Bundle.entry[i]`); for an NDJSON
    /// file the 1-based line number; `None` when the failure concerns the whole file.
    pub entry: Option<usize>,
    /// What went wrong, with the diagnostics of the OperationOutcome.
    pub message: String,
}

impl std::fmt::Display for ImportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.file.display())?;
        match (self.entry, files::classify(&self.file)) {
            (Some(n), Some((files::Kind::Ndjson, _))) => write!(f, " line {n}")?,
            (Some(n), _) => write!(f, " entry {n}")?,
            (None, _) => {}
        }
        write!(f, ": {}", self.message)
    }
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Files read to their end in this run (possibly with some failed entries).
    pub files: usize,
    /// Files skipped because an earlier run loaded them completely.
    pub skipped_files: usize,
    /// Files that could not be loaded (unreadable, or a transaction refused).
    pub failed_files: usize,
    /// Resources stored in this run.
    pub resources: u64,
    pub seconds: f64,
    pub errors: Vec<ImportError>,
}

impl Summary {
    pub fn resources_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.resources as f64 / self.seconds
        } else {
            0.0
        }
    }

    fn absorb(&mut self, result: FileResult) {
        match result.outcome {
            None => self.skipped_files += 1,
            Some(outcome) => {
                if outcome.complete {
                    self.files += 1;
                } else {
                    self.failed_files += 1;
                }
                self.resources += outcome.resources;
                self.errors.extend(outcome.errors);
            }
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} files loaded, {} skipped (already imported)", self.files, self.skipped_files)?;
        if self.failed_files > 0 {
            write!(f, ", {} failed", self.failed_files)?;
        }
        writeln!(
            f,
            "; {} resources in {:.1} s ({:.0} resources/s)",
            self.resources,
            self.seconds,
            self.resources_per_second()
        )?;
        if !self.errors.is_empty() {
            writeln!(f, "{} error(s):", self.errors.len())?;
            for e in &self.errors {
                writeln!(f, "  {e}")?;
            }
        }
        Ok(())
    }
}

/// The result of loading one file.
#[derive(Debug, Default)]
struct FileOutcome {
    /// Whether every entry was attempted (the file is then recorded as done).
    complete: bool,
    resources: u64,
    errors: Vec<ImportError>,
}

impl FileOutcome {
    fn failed(errors: Vec<ImportError>) -> Self {
        FileOutcome { complete: false, resources: 0, errors }
    }
}

/// A file's outcome, `None` when it was skipped.
struct FileResult {
    outcome: Option<FileOutcome>,
}

/// Loads the files and folders in `paths`; see the crate documentation for the rules.
///
/// Fails only when a path does not exist or the progress record cannot be read; every
/// other problem is reported in [`Summary::errors`].
pub async fn run(engine: &Engine, access: &Access, paths: &[PathBuf], options: &Options) -> anyhow::Result<Summary> {
    let started = Instant::now();
    let (sources, errors) = files::discover(paths)?;
    let mut summary = Summary { failed_files: errors.len(), errors, ..Summary::default() };
    let total = sources.len();
    let progress = progress_bar(total);
    let mut done = 0;
    let (first, rest): (Vec<_>, Vec<_>) = sources.into_iter().partition(files::Source::is_prerequisite);

    for source in first {
        let result = load_file(engine.clone(), access.clone(), source, progress.clone()).await?;
        summary.absorb(result);
        done += 1;
        progress.set_message(format!("{done}/{total} files"));
    }

    let mut pending = rest.into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < options.concurrency.max(1) {
            let Some(source) = pending.next() else { break };
            running.spawn(load_file(engine.clone(), access.clone(), source, progress.clone()));
        }
        let Some(joined) = running.join_next().await else { break };
        let result = match joined {
            Ok(result) => result?,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => anyhow::bail!("an import task was cancelled: {e}"),
        };
        summary.absorb(result);
        done += 1;
        progress.set_message(format!("{done}/{total} files"));
    }
    progress.finish_and_clear();
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Loads one file unless an earlier run completed it, and records it when complete.
async fn load_file(engine: Engine, access: Access, source: files::Source, progress: ProgressBar) -> anyhow::Result<FileResult> {
    let identity = match files::identity(&source.path) {
        Ok(identity) => identity,
        Err(e) => {
            let error = ImportError { file: source.path.clone(), entry: None, message: format!("cannot read the file: {e}") };
            return Ok(FileResult { outcome: Some(FileOutcome::failed(vec![error])) });
        }
    };
    let done_key = files::done_key(&identity);
    if engine.setting(&done_key).await?.is_some() {
        return Ok(FileResult { outcome: None });
    }
    let outcome = match source.kind {
        files::Kind::Bundle => bundle::load(&engine, &access, &source, &progress).await,
        files::Kind::Ndjson => ndjson::load(&engine, &access, &source, &identity, &progress).await,
    };
    if outcome.complete {
        if let Err(e) = engine.set_setting(&done_key, &outcome.resources.to_string()).await {
            tracing::warn!(file = %source.path.display(), error = %e, "cannot record the file as imported");
        }
    }
    Ok(FileResult { outcome: Some(outcome) })
}

/// A spinner counting resources, on stderr; hidden when stderr is not a terminal.
fn progress_bar(files: usize) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {human_pos} resources ({rate} resources/s) {msg}")
            .expect("valid progress template")
            .with_key("rate", |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = write!(w, "{:.0}", state.per_sec());
            }),
    );
    bar.set_message(format!("0/{files} files"));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

