//! The embedded SQLite backend.
//!
//! * One database file, `tessera.db`, in the data directory, in WAL mode with
//!   `synchronous=FULL`: a commit returns only after the WAL is fsynced.
//! * One writer thread owns the only write connection and group-commits: it takes every
//!   queued transaction, applies each inside its own savepoint, commits once and then
//!   acknowledges each caller.
//! * Reads use a small pool of read-only connections and run on the calling task: point
//!   reads are a few microseconds and WAL readers never wait for the writer.
//! * Audit records go through the same writer, which keeps the head of the hash chain in
//!   memory (loaded at start). The records of writes commit with them; the records of
//!   reads are made durable in the audit journal (`tessera-audit.journal`, see
//!   `crate::journal`) and moved into `audit_log` in bulk, so that auditing reads neither
//!   costs a database commit per group nor invalidates the readers' page caches. Queries
//!   of the log fold the journal first. A data directory belongs to one server process.
//! * `care_link` holds the links of each resource's current version, keyed
//!   `(patient, source_type, source_id, n)` (as on PostgreSQL) and indexed by source so a
//!   write can replace them.

use crate::journal::{self, Chained, Journal};
use crate::search;
use crate::{
    codec, parse_patients, AuditDamage, AuditQuery, AuditRecord, CareLink, ChainHead, ConflictReason, Criteria, DamageKind,
    HistoryQuery, NewAudit, OutboxEntry, OutboxItem, OutboxQuery, OutboxState, PendingAudit, Precondition, Result, Store,
    StoreError, StoreMetrics, StoreStats, Stored, Transaction, Write,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS resource_version (
    seq          INTEGER PRIMARY KEY,
    res_type     TEXT    NOT NULL,
    id           TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    last_updated INTEGER NOT NULL,
    deleted      INTEGER NOT NULL,
    compartment  TEXT,
    owner        TEXT,
    data         BLOB    NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS resource_version_key ON resource_version (res_type, id, version);
CREATE INDEX IF NOT EXISTS resource_version_type ON resource_version (res_type, seq);
CREATE TABLE IF NOT EXISTS resource_current (
    res_type    TEXT    NOT NULL,
    id          TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    deleted     INTEGER NOT NULL,
    compartment TEXT,
    owner       TEXT,
    PRIMARY KEY (res_type, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS resource_current_type_seq ON resource_current (res_type, seq);
CREATE INDEX IF NOT EXISTS resource_current_compartment ON resource_current (compartment, seq) WHERE compartment IS NOT NULL;
-- Live (current, not deleted) resources per type, kept by the writer with each change.
CREATE TABLE IF NOT EXISTS type_count (res_type TEXT PRIMARY KEY, live INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS token_count (p INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, live INTEGER NOT NULL,
    PRIMARY KEY (p, code, system)) WITHOUT ROWID;
-- Search index rows (see `search`): keyed by value then `seq`, no `seq` index — a write
-- that replaces a version deletes that version's rows by their full key.
CREATE TABLE IF NOT EXISTS sp_token (p INTEGER NOT NULL, code TEXT NOT NULL, seq INTEGER NOT NULL, system TEXT NOT NULL,
    PRIMARY KEY (p, code, seq, system)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_token_pc (p INTEGER NOT NULL, patient TEXT NOT NULL, code TEXT NOT NULL, seq INTEGER NOT NULL,
    system TEXT NOT NULL, PRIMARY KEY (p, patient, code, seq, system)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_string (p INTEGER NOT NULL, norm TEXT NOT NULL, exact TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (p, norm, exact, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_date (p INTEGER NOT NULL, seq INTEGER NOT NULL, low INTEGER NOT NULL, high INTEGER NOT NULL,
    PRIMARY KEY (p, seq, low, high)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sp_date_low ON sp_date (p, low);
CREATE INDEX IF NOT EXISTS sp_date_high ON sp_date (p, high);
CREATE TABLE IF NOT EXISTS sp_quantity (p INTEGER NOT NULL, seq INTEGER NOT NULL, value REAL NOT NULL, low REAL NOT NULL,
    high REAL NOT NULL, system TEXT NOT NULL, code TEXT NOT NULL, PRIMARY KEY (p, seq, value, system, code, low, high)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sp_quantity_value ON sp_quantity (p, value);
CREATE TABLE IF NOT EXISTS sp_reference (p INTEGER NOT NULL, target_id TEXT NOT NULL, target_type TEXT NOT NULL, seq INTEGER NOT NULL,
    url TEXT NOT NULL, PRIMARY KEY (p, target_id, target_type, seq, url)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_uri (p INTEGER NOT NULL, uri TEXT NOT NULL, seq INTEGER NOT NULL, PRIMARY KEY (p, uri, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_token_quantity (p INTEGER NOT NULL, code TEXT NOT NULL, seq INTEGER NOT NULL, system TEXT NOT NULL,
    value REAL NOT NULL, low REAL NOT NULL, high REAL NOT NULL, unit_system TEXT NOT NULL, unit TEXT NOT NULL,
    PRIMARY KEY (p, code, seq, system, value, unit_system, unit, low, high)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_token_text (p INTEGER NOT NULL, text TEXT NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY (p, text, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sp_token_token (p INTEGER NOT NULL, code TEXT NOT NULL, code2 TEXT NOT NULL, seq INTEGER NOT NULL,
    system TEXT NOT NULL, system2 TEXT NOT NULL, PRIMARY KEY (p, code, code2, seq, system, system2)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identifier_index (
    res_type TEXT NOT NULL,
    value    TEXT NOT NULL,
    system   TEXT NOT NULL,
    id       TEXT NOT NULL,
    PRIMARY KEY (res_type, value, system, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tessera_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS care_link (
    patient      TEXT    NOT NULL,
    source_type  TEXT    NOT NULL,
    source_id    TEXT    NOT NULL,
    n            INTEGER NOT NULL,
    kind         TEXT    NOT NULL,
    organisation TEXT,
    location     TEXT,
    practitioner TEXT,
    start_micros INTEGER,
    end_micros   INTEGER,
    active       INTEGER NOT NULL,
    PRIMARY KEY (patient, source_type, source_id, n)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS care_link_source ON care_link (source_type, source_id);
CREATE INDEX IF NOT EXISTS care_link_location ON care_link (location, kind) WHERE location IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit_log (
    seq         INTEGER PRIMARY KEY,
    recorded    INTEGER NOT NULL,
    user_id     TEXT,
    action      TEXT    NOT NULL,
    break_glass INTEGER NOT NULL,
    patients    TEXT,
    prev_hash   BLOB    NOT NULL,
    hash        BLOB    NOT NULL,
    event       BLOB    NOT NULL
);
-- Every index here is written on every audited read: keep only the rare break-glass
-- rows indexed; queries by user or period scan newest first (they are bounded by LIMIT).
DROP INDEX IF EXISTS audit_log_user;
DROP INDEX IF EXISTS audit_log_recorded;
CREATE INDEX IF NOT EXISTS audit_log_break_glass ON audit_log (seq) WHERE break_glass <> 0;
CREATE TABLE IF NOT EXISTS audit_patient (
    patient TEXT    NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (patient, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    seq          INTEGER PRIMARY KEY,
    subscription TEXT    NOT NULL,
    res_type     TEXT    NOT NULL,
    res_id       TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    patient      TEXT    NOT NULL,
    created      INTEGER NOT NULL,
    state        TEXT    NOT NULL,
    attempts     INTEGER NOT NULL,
    next_attempt INTEGER NOT NULL,
    last_error   TEXT,
    updated      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_open ON outbox (seq) WHERE state IN ('pending', 'failed');
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, seq);
CREATE INDEX IF NOT EXISTS outbox_group ON outbox (subscription, patient, seq) WHERE state IN ('pending', 'failed');
"#;

const MAX_BATCH_WRITES: usize = 20_000;

struct Job {
    writes: Transaction,
    /// The search index rows of each write (computed by the caller, off the writer thread).
    rows: Vec<Vec<search::Row>>,
    audit: Vec<PendingAudit>,
    /// Outbox items, stored if and only if the writes are.
    outbox: Vec<OutboxItem>,
    ack: oneshot::Sender<Result<()>>,
}

pub struct SqliteStore {
    path: PathBuf,
    /// The data directory's lock (`tessera.lock`), held while this store owns the
    /// directory; `None` for a store opened with [`SqliteStore::open_shared`].
    lock: Option<std::fs::File>,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    checkpointer: Mutex<Option<Checkpointer>>,
    metrics: Arc<StoreMetrics>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        // One process owns a data directory: its writer keeps the head of the audit
        // chain and the read journal, which no other process may touch.
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join("tessera.db");
        let conn = Connection::open(&path).map_err(db)?;
        // The writer's page cache is kept small (12 MiB): at the end of every write
        // transaction SQLite may scan the whole cache's hash table, which at 48 MiB took 15 %
        // of the CPU of a stream of HL7 v2 results; the pages it no longer holds are in the
        // operating system's cache.
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; \
             PRAGMA wal_autocheckpoint=65536; PRAGMA journal_size_limit=67108864; \
             PRAGMA cache_size=-12288; PRAGMA temp_store=MEMORY;",
        )
        .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        fill_type_count(&conn).map_err(db)?;
        fill_token_count(&conn).map_err(db)?;
        // Meta writes use their own connection; the writer waits for them rather than failing.
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db)?;
        let mut conn = conn;
        // Index rows go in as multi-row statements of many sizes: keep them prepared.
        conn.set_prepared_statement_cache_capacity(512);
        let head = recover_journal(&mut conn, data_dir)?;
        let (journal, _) = Journal::open(data_dir).map_err(|e| journal_error(data_dir, e))?;
        let metrics = Arc::new(StoreMetrics::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("tessera-sqlite-writer".into())
            .spawn(move || {
                let indexed = audit_indexed_upto(&conn).unwrap_or(0);
                let writer = Writer {
                    conn,
                    head,
                    journal,
                    pending: Vec::new(),
                    indexed,
                    wal_dirty: false,
                    metrics: &m,
                };
                writer_loop(writer, rx)
            })
            .map_err(|e| StoreError::Backend(format!("cannot start writer: {e}")))?;
        let checkpointer = Checkpointer::start(&path, metrics.clone())?;
        Ok(SqliteStore {
            path,
            lock: Some(lock),
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(handle)),
            checkpointer: Mutex::new(Some(checkpointer)),
            metrics,
        })
    }

    /// Opens the store in `data_dir` beside the process that owns it (a running server):
    /// reads, and the settings of `set_meta`, only. Resource and audit writes are refused;
    /// the audit log reads as the owner's log followed by its journal, untouched.
    pub fn open_shared(data_dir: &Path) -> Result<Self> {
        let path = data_dir.join("tessera.db");
        if !path.exists() {
            return Err(StoreError::Backend(format!("{} holds no Tessera database", data_dir.display())));
        }
        Ok(SqliteStore {
            path,
            lock: None,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(None),
            writer_thread: Mutex::new(None),
            checkpointer: Mutex::new(None),
            metrics: Arc::new(StoreMetrics::default()),
        })
    }

    /// Whether this store owns its data directory (it may write).
    pub fn owns_data_dir(&self) -> bool {
        self.lock.is_some()
    }

    /// For tests of crash recovery: from now on the writer leaves the records of reads in
    /// the audit journal (no move into the database when idle), and dropping the store
    /// stops it as if the process were killed (nothing moved, no clean stop recorded).
    #[doc(hidden)]
    pub fn simulate_crash_on_drop(&self) {
        journal::hold(self.path.parent().unwrap_or(&self.path));
    }

    fn no_writer(&self) -> StoreError {
        if self.lock.is_none() {
            StoreError::Backend(format!(
                "{} is open read-only beside the server that owns it: stop the server to change it, or change it through the server",
                self.path.parent().unwrap_or(&self.path).display()
            ))
        } else {
            StoreError::Closed
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write connection of its own, for maintenance commands run while no server uses
    /// the data directory (it waits for the writer rather than failing).
    fn maintenance_connection(&self) -> Result<Connection> {
        let c = Connection::open(&self.path).map_err(db)?;
        c.busy_timeout(std::time::Duration::from_secs(30)).map_err(db)?;
        c.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size=-65536;").map_err(db)?;
        Ok(c)
    }

    /// Moves the journaled audit records into `audit_log` (before the log is read).
    async fn fold_journal(&self) -> Result<()> {
        if self.lock.is_none() {
            return Ok(()); // the owner's journal is read as it is (see `audit_scan`)
        }
        let (ack, done) = oneshot::channel();
        {
            let writer = self.writer.lock().expect("writer");
            writer
                .as_ref()
                .ok_or(StoreError::Closed)?
                .send(Job { writes: Vec::new(), rows: Vec::new(), audit: Vec::new(), outbox: Vec::new(), ack })
                .map_err(|_| StoreError::Closed)?;
        }
        done.await.map_err(|_| StoreError::Closed)?
    }

    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.lock().expect("reader pool").pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                let c = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
                .map_err(db)?;
                c.execute_batch("PRAGMA cache_size=-4096;").map_err(db)?;
                c
            }
        };
        // A read that runs past the query timeout is interrupted (SQLITE_INTERRUPT).
        let timeout = crate::query_timeout();
        if let Some(t) = timeout {
            let deadline = std::time::Instant::now() + t;
            conn.progress_handler(20_000, Some(move || std::time::Instant::now() > deadline));
        }
        let out = f(&conn).map_err(|e| match (e.sqlite_error_code(), timeout) {
            (Some(rusqlite::ErrorCode::OperationInterrupted), Some(t)) => StoreError::TooCostly(t),
            _ => db(e),
        });
        if timeout.is_some() {
            conn.progress_handler(0, None::<fn() -> bool>);
        }
        let mut pool = self.readers.lock().expect("reader pool");
        if pool.len() < 16 {
            pool.push(conn);
        }
        out
    }
}

impl Drop for SqliteStore {
    fn drop(&mut self) {
        self.writer.lock().expect("writer").take();
        if let Some(h) = self.writer_thread.lock().expect("writer thread").take() {
            let _ = h.join();
        }
        if let Some(c) = self.checkpointer.lock().expect("checkpointer").take() {
            c.stop();
        }
    }
}

/// Copies the WAL into the database file on a thread of its own, so that the writer does
/// not (a passive checkpoint runs alongside the writer; the writer restarts the WAL once a
/// checkpoint has caught up). It runs when the writer has committed since its last run,
/// at most every [`CHECKPOINT_EVERY`]. The writer's own automatic checkpoint stays as a
/// backstop at 256 MB of WAL.
struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

impl Checkpointer {
    fn start(path: &Path, metrics: Arc<StoreMetrics>) -> Result<Checkpointer> {
        use std::sync::atomic::Ordering;
        let conn = Connection::open(path).map_err(db)?;
        conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA cache_size=-2048;").map_err(db)?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("tessera-sqlite-checkpoint".into())
            .spawn(move || {
                let commits = || metrics.commit_batches.load(Ordering::Relaxed);
                let mut seen = commits();
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(CHECKPOINT_EVERY);
                    let now = commits();
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                        tracing::warn!(error = %e, "checkpoint failed; retrying later");
                    }
                }
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// Takes the data directory's lock (`tessera.lock`, an exclusive `flock` held for the
/// life of the store), or says which process holds it.
fn lock_data_dir(dir: &Path) -> Result<std::fs::File> {
    use std::io::{Read, Seek, Write};
    use std::os::unix::io::AsRawFd;
    let path = dir.join("tessera.lock");
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| {
        StoreError::Backend(format!("cannot open the lock file {}: {e}", path.display()))
    })?;
    // SAFETY: flock on a file descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = holder.trim();
        return Err(StoreError::Backend(format!(
            "the data directory {} is in use by another Tessera process{}: a data directory belongs to one process at a time. \
             Stop that server to run this command, or use a command that only reads",
            dir.display(),
            if holder.is_empty() { String::new() } else { format!(" (pid {holder})") }
        )));
    }
    let _ = file.set_len(0);
    let _ = file.rewind();
    let _ = write!(file, "{}", std::process::id());
    let _ = file.flush();
    Ok(file)
}

fn journal_error(dir: &Path, e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("audit journal in {}: {e}", dir.display()))
}

/// Moves the records the audit journal holds beyond `audit_log` into it (after a crash or
/// a kill) and returns the head of the chain. Damage to the journal (frames unreadable or
/// missing, the file cut short or gone) and to the chain (records the anchor saw that are
/// gone or changed) is logged as an error and recorded in the chain (see `journal`'s
/// module documentation, [`crate::anchor`] and [`AuditDamage`]); the anchor then moves on.
fn recover_journal(conn: &mut Connection, dir: &Path) -> Result<ChainHead> {
    use crate::anchor::AnchorWriter;
    let stored = chain_head(conn)?;
    let state: Option<String> = conn
        .query_row("SELECT value FROM tessera_meta WHERE key = ?1", [journal::STATE_KEY], |r| r.get(0))
        .optional()
        .map_err(db)?;
    // `open`: the last server did not stop cleanly; `clean <seq>`: it did, at that head.
    let crashed = state.as_deref() == Some("open");
    let clean_seq: Option<i64> = state.as_deref().and_then(|s| s.strip_prefix("clean ")).and_then(|s| s.parse().ok());
    let path = dir.join(journal::FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(journal_error(dir, e)),
    };
    let scan = bytes.as_deref().map(|b| journal::scan(b, stored.seq)).unwrap_or_default();
    let mut anchor = match AnchorWriter::open(&dir.join(crate::anchor::FILE_NAME)) {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::error!(error = %e, dir = %dir.display(), "cannot open the audit anchor: the chain is not checked against it");
            None
        }
    };
    let anchored = anchor.as_ref().and_then(|a| a.current());
    let now = crate::now_micros();
    let plausible = |t: i64| if t > 0 && t < now + 86_400_000_000 { t } else { now };

    let mut head = stored;
    let mut rows: Vec<Chained> = Vec::new();
    let mut damage: Vec<AuditDamage> = Vec::new();
    let mut recovered = 0usize;
    for f in scan.frames {
        if f.seq <= head.seq {
            continue;
        }
        if f.seq > head.seq + 1 {
            // Frames missing or unreadable before this one: one placeholder per lost
            // record, carrying the hashes that keep the chain linked.
            let (first, last) = (head.seq + 1, f.seq - 1);
            let one = first == last;
            // Frames the last server had moved into the database before it stopped
            // cleanly: the database lost those records (its tail was removed), and the
            // journal still holds some after them.
            let folded = clean_seq.is_some_and(|c| c >= f.seq);
            let d = AuditDamage {
                kind: if folded { DamageKind::ChainTruncated } else { DamageKind::JournalCorrupt },
                first,
                last: Some(last),
                placeholder: true,
                message: if folded {
                    format!(
                        "audit record{} {} {} missing from the audit log (deleted); records after {} were restored from the read journal",
                        if one { "" } else { "s" },
                        range(first, Some(last)),
                        if one { "is" } else { "are" },
                        if one { "it" } else { "them" },
                    )
                } else {
                    format!(
                        "audit record{} {} lost: {} in the read journal could not be read (records after {} were recovered); \
                         what could be read of {} is kept here, unverified",
                        if one { "" } else { "s" },
                        range(first, Some(last)),
                        if one { "its frame" } else { "their frames" },
                        if one { "it" } else { "them" },
                        if one { "it" } else { "them" },
                    )
                },
            };
            let mut prev = head.hash;
            for seq in first..=last {
                let salvaged = scan.damaged.iter().find(|c| c.seq == seq).map(|c| &c.audit);
                let record = d.record(salvaged.map_or(now, |s| plausible(s.recorded_micros)), salvaged);
                let hash = if seq == last { f.prev_hash } else { crate::audit_hash(&prev, seq, record.recorded_micros, &record.event) };
                rows.push(Chained { seq, prev_hash: prev, hash, audit: record });
                prev = hash;
            }
            head = ChainHead { seq: last, hash: f.prev_hash };
            damage.push(d);
        }
        if f.prev_hash != head.hash {
            tracing::warn!(seq = f.seq, head = head.seq, "audit journal: a frame does not continue the chain (not of this log); ignored");
            continue;
        }
        head = ChainHead { seq: f.seq, hash: f.hash };
        rows.push(f);
        recovered += 1;
    }

    // Does the record the anchor saw still have its hash?
    let mut markers: Vec<(AuditDamage, Option<PendingAudit>)> = Vec::new();
    if let Some(a) = anchored.filter(|a| a.seq > 0 && a.seq <= head.seq) {
        let hash = match rows.iter().find(|r| r.seq == a.seq) {
            Some(r) => Some(r.hash.to_vec()),
            None => conn
                .query_row("SELECT hash FROM audit_log WHERE seq = ?1", [a.seq], |r| r.get::<_, Vec<u8>>(0))
                .optional()
                .map_err(db)?,
        };
        if hash.as_deref() != Some(&a.hash[..]) {
            markers.push((
                AuditDamage {
                    kind: DamageKind::ChainRewritten,
                    first: a.seq,
                    last: None,
                    placeholder: false,
                    message: format!(
                        "audit record {} {} the one the anchor saw (written {}): the chain was rewritten",
                        a.seq,
                        if hash.is_some() { "is not" } else { "is gone, and with it" },
                        crate::format_instant(a.written_micros)
                    ),
                },
                None,
            ));
        }
    }

    // Is anything missing after the head?
    let tail_damaged = scan.damaged.iter().find(|c| c.seq == head.seq + 1);
    let beyond = [anchored.map(|a| a.seq), clean_seq].into_iter().flatten().filter(|&s| s > head.seq).max();
    let mut tail: Option<(DamageKind, String)> = None;
    match bytes.as_ref().map(|b| b.len() as u64) {
        None if crashed => {
            tail = Some((DamageKind::JournalDeleted, "the read journal was gone after the server stopped without moving it into the database".into()))
        }
        None if state.is_some() && stored.seq > 0 => {
            tracing::warn!(journal = %path.display(), "the audit journal was removed; nothing was lost (the server had stopped cleanly)")
        }
        Some(n) if n < journal::CAPACITY && state.is_some() => {
            if crashed || beyond.is_some() {
                tail = Some((DamageKind::JournalTruncated, format!("the read journal was cut short ({n} of {} bytes)", journal::CAPACITY)));
            } else {
                tracing::warn!(journal = %path.display(), bytes = n, "the audit journal was cut short; nothing was lost (the server had stopped cleanly)");
            }
        }
        _ => {}
    }
    if tail.is_none() {
        if let Some(d) = tail_damaged {
            // Acknowledged (the anchor saw it), or there after a clean stop: damage.
            // Otherwise the torn write of a group that was never acknowledged.
            if beyond.is_some_and(|b| b >= d.seq) || clean_seq.is_some() {
                tail = Some((DamageKind::JournalCorrupt, format!("the frame of audit record {} in the read journal could not be read", d.seq)));
            } else {
                tracing::warn!(seq = d.seq, "audit journal: dropped a torn frame after the head (a write cut short by the crash, never acknowledged)");
            }
        } else if let Some(b) = beyond {
            tail = Some(if crashed {
                (DamageKind::JournalCorrupt, format!("the read journal does not hold the records up to {b} that the anchor saw"))
            } else {
                (DamageKind::ChainTruncated, format!("the audit log ends at record {} but reached record {b} before", head.seq))
            });
        }
    }
    if let Some((kind, why)) = tail {
        let first = head.seq + 1;
        let last = [beyond, scan.damaged.iter().map(|c| c.seq).max()].into_iter().flatten().filter(|&s| s >= first).max();
        let lost = match last {
            Some(l) if l == first => format!("audit record {first} lost"),
            Some(l) => format!("audit records {} lost (at least)", range(first, Some(l))),
            None => format!("audit records from {first} on may be lost (how many is unknown)"),
        };
        let salvaged = tail_damaged.map(|c| c.audit.clone());
        let message = format!("{why}: {lost}{}", if salvaged.is_some() { "; what could be read of the first is kept here, unverified" } else { "" });
        markers.push((AuditDamage { kind, first, last, placeholder: false, message }, salvaged));
    }
    if let Some(a) = &anchor {
        markers.extend(crate::anchor::unanchored_damage(&a.found, a.new_key, stored.seq > 0, head.seq + 1).map(|d| (d, None)));
    }
    for (d, salvaged) in markers {
        let record = d.record(now, salvaged.as_ref());
        let (seq, prev_hash, hash) = head.chain(&record);
        rows.push(Chained { seq, prev_hash, hash, audit: record });
        damage.push(d);
    }

    let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)?;
    // By-patient index rows of records no longer in the log (its tail was removed) would
    // attach to the records that take their `seq`s: remove them, and index from the head.
    let stale = txn.execute("DELETE FROM audit_patient WHERE seq > ?1", [stored.seq]).map_err(db)?;
    txn.execute(
        "UPDATE tessera_meta SET value = ?2 WHERE key = ?1 AND CAST(value AS INTEGER) > ?3",
        params![AUDIT_INDEXED_UPTO, stored.seq.to_string(), stored.seq],
    )
    .map_err(db)?;
    if stale > 0 {
        tracing::warn!(rows = stale, head = stored.seq, "removed by-patient audit index rows of records that are not in the log");
    }
    for r in &rows {
        insert_audit(&txn, r.seq, &r.prev_hash, &r.hash, &r.audit).map_err(db)?;
    }
    txn.execute(
        "INSERT INTO tessera_meta (key, value) VALUES (?1, 'open') ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [journal::STATE_KEY],
    )
    .map_err(db)?;
    txn.commit().map_err(db)?;
    if recovered > 0 {
        tracing::info!(records = recovered, "audit journal: recovered records moved into the audit log");
    }
    for d in &damage {
        tracing::error!(
            kind = d.kind.code(),
            first = d.first,
            last = d.last,
            "audit trail damage, recorded in the chain: {} (run `tessera audit verify`)",
            d.message
        );
    }
    // Everything the journal held is in the database now: start it afresh, so that
    // nothing read above is read again.
    if bytes.is_some() && (!rows.is_empty() || !scan.damaged.is_empty()) {
        let zeros = vec![0u8; journal::CAPACITY as usize];
        std::fs::write(&path, &zeros)
            .and_then(|()| std::fs::File::open(&path)?.sync_all())
            .map_err(|e| journal_error(dir, e))?;
    }
    if let Some(a) = &mut anchor {
        if damage.iter().any(|d| !d.placeholder) {
            a.force(head.seq, &head.hash);
        } else {
            a.update(head.seq, &head.hash);
        }
        a.sync_and_log(true);
    }
    Ok(head)
}

/// `first..=last`, or `first` alone.
fn range(first: i64, last: Option<i64>) -> String {
    match last {
        Some(l) if l != first => format!("{first}..={l}"),
        _ => first.to_string(),
    }
}

/// Records that the server stopped cleanly, with everything journaled in `audit_log`
/// (the journal then holds nothing that could be lost).
fn mark_journal_clean(conn: &Connection, head: ChainHead) {
    if let Err(e) = conn.execute(
        "INSERT INTO tessera_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![journal::STATE_KEY, format!("clean {}", head.seq)],
    ) {
        tracing::warn!(error = %e, "cannot record the clean stop of the audit journal");
    }
}

/// The head of the audit chain as stored.
fn chain_head(conn: &Connection) -> Result<ChainHead> {
    let last: Option<(i64, Vec<u8>)> = conn
        .query_row(
            "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(db)?;
    match last {
        Some((seq, hash)) => ChainHead::from_stored(seq, &hash),
        None => Ok(ChainHead::GENESIS),
    }
}

fn sql_value(a: &search::Arg) -> rusqlite::types::Value {
    match a {
        search::Arg::Int(i) => rusqlite::types::Value::Integer(*i),
        search::Arg::Real(f) => rusqlite::types::Value::Real(*f),
        search::Arg::Text(t) => rusqlite::types::Value::Text(t.clone()),
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

const COLUMNS: &str =
    "v.res_type, v.id, v.version, v.seq, v.last_updated, v.deleted, v.compartment, v.owner, v.data";

fn row_to_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let data: Vec<u8> = row.get(8)?;
    let json = codec::decode(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            8,
            rusqlite::types::Type::Blob,
            Box::new(std::io::Error::other(e.to_string())),
        )
    })?;
    Ok(Stored {
        resource_type: row.get(0)?,
        id: row.get(1)?,
        version: row.get::<_, i64>(2)? as u64,
        seq: row.get(3)?,
        last_updated_micros: row.get(4)?,
        deleted: row.get::<_, i64>(5)? != 0,
        compartment: row.get(6)?,
        owner: row.get(7)?,
        json,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Stored>> {
        self.with_reader(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
                 WHERE c.res_type = ?1 AND c.id = ?2"
            ))?
            .query_row(params![resource_type, id], row_to_stored)
            .optional()
        })
    }

    async fn vread(&self, resource_type: &str, id: &str, version: u64) -> Result<Option<Stored>> {
        self.with_reader(|c| {
            c.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM resource_version v WHERE v.res_type = ?1 AND v.id = ?2 AND v.version = ?3"
            ))?
            .query_row(params![resource_type, id, version as i64], row_to_stored)
            .optional()
        })
    }

    async fn history(&self, q: &HistoryQuery) -> Result<Vec<Stored>> {
        let (filter, args) = history_filter(q, true);
        let sql = format!(
            "SELECT {COLUMNS} FROM resource_version v WHERE {filter} ORDER BY v.seq DESC LIMIT {}",
            q.count
        );
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_to_stored)?;
            rows.collect()
        })
    }

    async fn history_count(&self, q: &HistoryQuery) -> Result<u64> {
        let (filter, args) = history_filter(q, false);
        let sql = format!("SELECT count(*) FROM resource_version v WHERE {filter}");
        self.with_reader(|c| {
            c.prepare_cached(&sql)?
                .query_row(rusqlite::params_from_iter(args.iter()), |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
        })
    }

    async fn find(&self, criteria: &Criteria) -> Result<Vec<String>> {
        self.with_reader(|c| find_ids(c, criteria))
    }

    async fn commit_outbox(&self, tx: Transaction, audit: Vec<NewAudit>, outbox: Vec<OutboxItem>) -> Result<()> {
        if tx.is_empty() && !outbox.is_empty() {
            return Err(StoreError::Backend("outbox items are committed with the writes they notify".into()));
        }
        if tx.is_empty() && audit.is_empty() {
            return Ok(());
        }
        let mut tx = tx;
        let mut rows = Vec::with_capacity(tx.len());
        for w in &mut tx {
            w.json = codec::encode(&w.json)?;
            rows.push(if w.deleted { Vec::new() } else { search::rows(&w.resource_type, &std::mem::take(&mut w.index)) });
        }
        let audit = PendingAudit::prepare(audit);
        let (ack, done) = oneshot::channel();
        {
            let writer = self.writer.lock().expect("writer");
            writer
                .as_ref()
                .ok_or_else(|| self.no_writer())?
                .send(Job { writes: tx, rows, audit, outbox, ack })
                .map_err(|_| StoreError::Closed)?;
        }
        done.await.map_err(|_| StoreError::Closed)?
    }

    async fn search(&self, q: &search::IndexQuery) -> Result<Vec<i64>> {
        let b = search::select_sql(q, search::Dialect::Sqlite);
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&b.sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(b.args.iter().map(sql_value)), |r| r.get(0))?;
            rows.collect()
        })
    }

    async fn count(&self, q: &search::IndexQuery) -> Result<u64> {
        if let Some(ty) = search::counts_whole_type(q) {
            return self.with_reader(|c| {
                let n: Option<i64> =
                    c.prepare_cached("SELECT live FROM type_count WHERE res_type = ?1")?.query_row([ty], |r| r.get(0)).optional()?;
                Ok(n.unwrap_or(0).max(0) as u64)
            });
        }
        if let Some((p, system, code)) = search::counts_one_token(q) {
            return self.with_reader(|c| {
                let n: Option<i64> = c
                    .prepare_cached("SELECT live FROM token_count WHERE p = ?1 AND code = ?2 AND system = ?3")?
                    .query_row(params![p, code, system], |r| r.get(0))
                    .optional()?;
                Ok(n.unwrap_or(0).max(0) as u64)
            });
        }
        let b = search::count_sql(q, search::Dialect::Sqlite);
        self.with_reader(|c| {
            let n: i64 = c.prepare_cached(&b.sql)?.query_row(rusqlite::params_from_iter(b.args.iter().map(sql_value)), |r| r.get(0))?;
            Ok(n.max(0) as u64)
        })
    }

    async fn load(&self, seqs: &[i64]) -> Result<Vec<Stored>> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!("SELECT {COLUMNS} FROM resource_version v WHERE v.seq = ?1"))?;
            let mut out = Vec::with_capacity(seqs.len());
            for seq in seqs {
                if let Some(s) = stmt.query_row([seq], row_to_stored).optional()? {
                    out.push(s);
                }
            }
            Ok(out)
        })
    }

    async fn clear_search_index(&self) -> Result<()> {
        let c = self.maintenance_connection()?;
        for table in search::Table::ALL {
            c.execute_batch(&format!("DELETE FROM {}", table.name())).map_err(db)?;
        }
        Ok(())
    }

    async fn reindex_chunk(&self, after_seq: i64, limit: usize) -> Result<Option<(i64, usize)>> {
        let mut c = self.maintenance_connection()?;
        let txn = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)?;
        let versions: Vec<(i64, String, Vec<u8>)> = {
            let mut stmt = txn
                .prepare(
                    "SELECT c.seq, c.res_type, v.data FROM resource_current c JOIN resource_version v ON v.seq = c.seq \
                     WHERE c.deleted = 0 AND c.seq > ?1 ORDER BY c.seq LIMIT ?2",
                )
                .map_err(db)?;
            let rows = stmt.query_map(params![after_seq, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(db)?;
            rows.collect::<rusqlite::Result<_>>().map_err(db)?
        };
        let Some(last) = versions.last().map(|v| v.0) else {
            // The end of a reindex: the per-code counts from the rows as they now are.
            recount_tokens(&txn).map_err(db)?;
            txn.commit().map_err(db)?;
            return Ok(None);
        };
        let mut rows = HashMap::new();
        for (seq, ty, data) in &versions {
            let json = codec::decode(data)?;
            let value: serde_json::Value = serde_json::from_slice(&json).map_err(|e| StoreError::Backend(format!("stored {ty} at {seq}: {e}")))?;
            rows.insert(*seq, search::rows(ty, &tessera_search::index_all(&value)));
        }
        insert_index_rows(&txn, rows, false).map_err(db)?;
        txn.commit().map_err(db)?;
        Ok(Some((last, versions.len())))
    }

    async fn audit_query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>> {
        use rusqlite::types::Value as V;
        if q.limit == 0 {
            return Ok(Vec::new());
        }
        self.fold_journal().await?;
        let mut args: Vec<V> = Vec::new();
        let mut from = String::from("audit_log a");
        let mut clauses = vec!["1 = 1".to_string()];
        if let Some(p) = &q.patient {
            // The index covers records up to `audit.indexed_upto`; the tail after it (short:
            // indexed in bulk by the writer) is scanned. Both read in one snapshot.
            args.push(V::Text(p.clone()));
            let n = args.len();
            args.push(V::Text(AUDIT_INDEXED_UPTO.into()));
            let k = args.len();
            from = format!(
                "(WITH upto(u) AS (SELECT COALESCE((SELECT CAST(value AS INTEGER) FROM tessera_meta WHERE key = ?{k}), 0)) \
                   SELECT a.* FROM audit_patient p JOIN audit_log a ON a.seq = p.seq AND p.patient = ?{n} WHERE a.seq <= (SELECT u FROM upto) \
                   UNION ALL \
                   SELECT a.* FROM audit_log a WHERE a.seq > (SELECT u FROM upto) AND a.patients LIKE '%\"' || ?{n} || '\"%') a"
            );
        }
        if let Some(u) = &q.user {
            args.push(V::Text(u.clone()));
            clauses.push(format!("a.user_id = ?{}", args.len()));
        }
        if let Some(since) = q.since_micros {
            args.push(V::Integer(since));
            clauses.push(format!("a.recorded >= ?{}", args.len()));
        }
        if let Some(until) = q.until_micros {
            args.push(V::Integer(until));
            clauses.push(format!("a.recorded < ?{}", args.len()));
        }
        if q.break_glass_only {
            clauses.push("a.break_glass <> 0".into());
        }
        if let Some(action) = &q.action {
            args.push(V::Text(action.clone()));
            clauses.push(format!("a.action = ?{}", args.len()));
        }
        if let Some(before) = q.before_seq {
            args.push(V::Integer(before));
            clauses.push(format!("a.seq < ?{}", args.len()));
        }
        args.push(V::Integer(i64::try_from(q.limit).unwrap_or(i64::MAX)));
        let sql = format!(
            "SELECT {AUDIT_COLUMNS} FROM {from} WHERE {} ORDER BY a.seq DESC LIMIT ?{}",
            clauses.join(" AND "),
            args.len()
        );
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args.iter()), row_to_audit)?;
            rows.collect()
        })
    }

    async fn audit_scan(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>> {
        self.fold_journal().await?;
        let max = i64::try_from(limit).unwrap_or(i64::MAX);
        let mut page: Vec<AuditRecord> = self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_log a WHERE a.seq > ?1 ORDER BY a.seq LIMIT ?2"
            ))?;
            let rows = stmt.query_map(params![after_seq, max], row_to_audit_lenient)?;
            rows.collect()
        })?;
        if self.lock.is_none() && page.len() < limit {
            // Beside a running server: its journal continues the log.
            let dir = self.path.parent().unwrap_or(&self.path);
            let frames = journal::read_frames(dir).map_err(|e| journal_error(dir, e))?;
            let mut last = page.last().map_or(after_seq, |r| r.seq);
            let stored_head = self.with_reader(|c| c.query_row("SELECT coalesce(max(seq), 0) FROM audit_log", [], |r| r.get::<_, i64>(0)))?;
            for f in frames {
                if f.seq <= stored_head.max(last) || page.len() >= limit {
                    continue;
                }
                if f.seq != last + 1 {
                    break;
                }
                last = f.seq;
                page.push(AuditRecord {
                    seq: f.seq,
                    recorded_micros: f.audit.recorded_micros,
                    user: f.audit.user.clone(),
                    patients: f.audit.patients.clone(),
                    action: f.audit.action.clone(),
                    break_glass: f.audit.break_glass,
                    prev_hash: f.prev_hash.to_vec(),
                    hash: f.hash.to_vec(),
                    event: f.audit.event.clone(),
                });
            }
        }
        Ok(page)
    }

    async fn audit_index_lookup(&self, pairs: &[(i64, String)]) -> Result<Vec<bool>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached("SELECT 1 FROM audit_patient WHERE patient = ?1 AND seq = ?2")?;
            pairs.iter().map(|(seq, patient)| stmt.exists(params![patient, seq])).collect()
        })
    }

    async fn audit_index_extra(&self, limit: usize) -> Result<Vec<(i64, String)>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT p.seq, p.patient FROM audit_patient p LEFT JOIN audit_log a ON a.seq = p.seq \
                 WHERE a.seq IS NULL OR instr(coalesce(a.patients, ''), '\"' || p.patient || '\"') = 0 \
                 ORDER BY p.seq, p.patient LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    async fn audit_index_upto(&self) -> Result<i64> {
        self.with_reader(audit_indexed_upto)
    }

    async fn set_audit_anchor(&self, path: &Path) -> Result<()> {
        let own = self.path.parent().unwrap_or(&self.path).join(crate::anchor::FILE_NAME);
        if path == own {
            return Ok(());
        }
        Err(StoreError::Backend(format!(
            "the SQLite store keeps its audit anchor in its data directory ({}); it cannot be moved",
            own.display()
        )))
    }

    async fn care_links(&self, patient: &str) -> Result<Vec<CareLink>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT kind, patient, organisation, location, practitioner, start_micros, end_micros, active \
                 FROM care_link WHERE patient = ?1 ORDER BY source_type, source_id, n",
            )?;
            let rows = stmt.query_map([patient], |r| {
                Ok(CareLink {
                    kind: r.get(0)?,
                    patient: r.get(1)?,
                    organisation: r.get(2)?,
                    location: r.get(3)?,
                    practitioner: r.get(4)?,
                    start_micros: r.get(5)?,
                    end_micros: r.get(6)?,
                    active: r.get::<_, i64>(7)? != 0,
                })
            })?;
            rows.collect()
        })
    }

    async fn ongoing_at(&self, location: &str, kind: &str) -> Result<Vec<(String, String)>> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT DISTINCT source_type, source_id FROM care_link \
                 WHERE location = ?1 AND kind = ?2 AND active <> 0 AND end_micros IS NULL ORDER BY source_type, source_id",
            )?;
            let rows = stmt.query_map(params![location, kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    async fn outbox_list(&self, q: &OutboxQuery) -> Result<Vec<OutboxEntry>> {
        let states: Vec<String> = q.states.iter().map(|s| format!("'{}'", s.code())).collect();
        let filter = if states.is_empty() { String::new() } else { format!(" AND state IN ({})", states.join(", ")) };
        let heads = if q.heads_only {
            " AND seq IN (SELECT min(seq) FROM outbox WHERE state IN ('pending', 'failed') GROUP BY subscription, patient)"
        } else {
            ""
        };
        let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq > ?1{filter}{heads} ORDER BY seq LIMIT ?2");
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![q.after_seq, q.limit.min(i64::MAX as usize) as i64], row_to_outbox)?;
            rows.collect()
        })
    }

    async fn outbox_update(&self, e: &OutboxEntry) -> Result<()> {
        let conn = self.maintenance_connection()?;
        conn.execute(
            "UPDATE outbox SET state = ?2, attempts = ?3, next_attempt = ?4, last_error = ?5, updated = ?6 WHERE seq = ?1",
            params![e.seq, e.state.code(), e.attempts as i64, e.next_attempt_micros, e.last_error, e.updated_micros],
        )
        .map_err(db)?;
        Ok(())
    }

    async fn outbox_replay(&self, seqs: &[i64]) -> Result<Vec<OutboxEntry>> {
        let mut conn = self.maintenance_connection()?;
        let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(db)?;
        let now = crate::now_micros();
        let mut replayed = Vec::new();
        {
            let chosen: Vec<OutboxEntry> = if seqs.is_empty() {
                let mut stmt = txn.prepare(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE state = 'dead' ORDER BY seq")).map_err(db)?;
                let rows = stmt.query_map([], row_to_outbox).map_err(db)?;
                rows.collect::<rusqlite::Result<_>>().map_err(db)?
            } else {
                let mut out = Vec::new();
                let mut stmt = txn.prepare(&format!("SELECT {OUTBOX_COLUMNS} FROM outbox WHERE seq = ?1")).map_err(db)?;
                for seq in seqs {
                    if let Some(e) = stmt.query_row([seq], row_to_outbox).optional().map_err(db)? {
                        out.push(e);
                    }
                }
                out
            };
            let mut upd = txn
                .prepare("UPDATE outbox SET state = 'pending', attempts = 0, next_attempt = ?2, last_error = NULL, updated = ?2 WHERE seq = ?1")
                .map_err(db)?;
            for e in chosen {
                if matches!(e.state, OutboxState::Dead | OutboxState::Failed | OutboxState::Suppressed) {
                    upd.execute(params![e.seq, now]).map_err(db)?;
                    replayed.push(e);
                }
            }
        }
        txn.commit().map_err(db)?;
        Ok(replayed)
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.with_reader(|c| {
            c.prepare_cached("SELECT value FROM tessera_meta WHERE key = ?1")?
                .query_row([key], |r| r.get(0))
                .optional()
        })
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        // Meta writes are rare; a separate connection keeps them off the group-commit path.
        let conn = Connection::open(&self.path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .map_err(db)?;
        conn.execute(
            "INSERT INTO tessera_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(db)?;
        Ok(())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let (current, versions) = self.with_reader(|c| {
            let current: i64 = c.query_row(
                "SELECT count(*) FROM resource_current WHERE deleted = 0",
                [],
                |r| r.get(0),
            )?;
            let versions: i64 =
                c.query_row("SELECT count(*) FROM resource_version", [], |r| r.get(0))?;
            Ok((current as u64, versions as u64))
        })?;
        let mut bytes = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        if let Some(dir) = self.path.parent() {
            bytes += std::fs::metadata(dir.join(crate::journal::FILE_NAME))
                .map(|m| m.len())
                .unwrap_or(0);
        }
        Ok(StoreStats {
            current_resources: current,
            versions,
            bytes,
        })
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}

const AUDIT_COLUMNS: &str =
    "a.seq, a.recorded, a.user_id, a.action, a.break_glass, a.patients, a.prev_hash, a.hash, a.event";

fn row_to_audit(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    let conversion = |i: usize, e: StoreError| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Blob,
            Box::new(std::io::Error::other(e.to_string())),
        )
    };
    let patients: Option<String> = row.get(5)?;
    let event: Vec<u8> = row.get(8)?;
    Ok(AuditRecord {
        seq: row.get(0)?,
        recorded_micros: row.get(1)?,
        user: row.get(2)?,
        action: row.get(3)?,
        break_glass: row.get::<_, i64>(4)? != 0,
        patients: parse_patients(patients.as_deref()).map_err(|e| conversion(5, e))?,
        prev_hash: row.get(6)?,
        hash: row.get(7)?,
        event: codec::decode(&event).map_err(|e| conversion(8, e))?,
    })
}

/// [`row_to_audit`] for verification: a damaged row is returned as well as it can be read
/// (see [`Store::audit_scan`]), never an error.
fn row_to_audit_lenient(row: &rusqlite::Row<'_>) -> rusqlite::Result<AuditRecord> {
    use rusqlite::types::Value as V;
    let text = |i: usize| -> rusqlite::Result<Option<String>> {
        Ok(match row.get::<_, V>(i)? {
            V::Null => None,
            V::Integer(n) => Some(n.to_string()),
            V::Real(f) => Some(f.to_string()),
            V::Text(t) => Some(t),
            V::Blob(b) => Some(String::from_utf8_lossy(&b).into_owned()),
        })
    };
    let bytes = |i: usize| -> rusqlite::Result<Vec<u8>> {
        Ok(match row.get::<_, V>(i)? {
            V::Blob(b) => b,
            V::Text(t) => t.into_bytes(),
            V::Integer(n) => n.to_string().into_bytes(),
            V::Real(f) => f.to_string().into_bytes(),
            V::Null => Vec::new(),
        })
    };
    let event = bytes(8)?;
    Ok(AuditRecord {
        seq: row.get(0)?,
        recorded_micros: row.get::<_, V>(1).map(|v| if let V::Integer(n) = v { n } else { i64::MIN })?,
        user: text(2)?,
        action: text(3)?.unwrap_or_default(),
        break_glass: !matches!(row.get::<_, V>(4)?, V::Integer(0) | V::Null),
        patients: crate::parse_patients_lenient(text(5)?.as_deref()),
        prev_hash: bytes(6)?,
        hash: bytes(7)?,
        event: codec::decode(&event).unwrap_or(event),
    })
}

fn history_filter(q: &HistoryQuery, paged: bool) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value as V;
    let mut clauses = vec!["1 = 1".to_string()];
    let mut args = Vec::new();
    if let Some(t) = &q.resource_type {
        args.push(V::Text(t.clone()));
        clauses.push(format!("v.res_type = ?{}", args.len()));
    }
    if let Some(id) = &q.id {
        args.push(V::Text(id.clone()));
        clauses.push(format!("v.id = ?{}", args.len()));
    }
    if let Some(since) = q.since_micros {
        args.push(V::Integer(since));
        clauses.push(format!("v.last_updated >= ?{}", args.len()));
    }
    if paged {
        if let Some(before) = q.before_seq {
            args.push(V::Integer(before));
            clauses.push(format!("v.seq < ?{}", args.len()));
        }
    }
    (clauses.join(" AND "), args)
}

fn find_ids(c: &Connection, criteria: &Criteria) -> rusqlite::Result<Vec<String>> {
    let mut candidates: Option<Vec<String>> = criteria.id.as_ref().map(|id| vec![id.clone()]);
    for m in &criteria.identifiers {
        let ids: Vec<String> = match &m.system {
            Some(system) => c
                .prepare_cached("SELECT id FROM identifier_index WHERE res_type = ?1 AND value = ?2 AND system = ?3")?
                .query_map(params![criteria.resource_type, m.value, system], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
            None => c
                .prepare_cached("SELECT DISTINCT id FROM identifier_index WHERE res_type = ?1 AND value = ?2")?
                .query_map(params![criteria.resource_type, m.value], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?,
        };
        candidates = Some(match candidates {
            None => ids,
            Some(prev) => prev.into_iter().filter(|id| ids.contains(id)).collect(),
        });
    }
    let Some(candidates) = candidates else {
        // No criteria at all: every current resource of the type matches.
        return c
            .prepare_cached("SELECT id FROM resource_current WHERE res_type = ?1 AND deleted = 0")?
            .query_map([&criteria.resource_type], |r| r.get(0))?
            .collect();
    };
    let mut live = Vec::with_capacity(candidates.len());
    let mut stmt =
        c.prepare_cached("SELECT deleted FROM resource_current WHERE res_type = ?1 AND id = ?2")?;
    for id in candidates {
        let deleted: Option<i64> = stmt
            .query_row(params![criteria.resource_type, id], |r| r.get(0))
            .optional()?;
        if deleted == Some(0) && !live.contains(&id) {
            live.push(id);
        }
    }
    Ok(live)
}

/// Fold the journal once it holds this many records (or is full, or the writer is idle).
const FOLD_AT: usize = 128;

/// The writer thread's state.
struct Writer<'m> {
    conn: Connection,
    /// The head of the chain, journaled records included.
    head: ChainHead,
    journal: Journal,
    /// Journaled records not yet in `audit_log`, oldest first: the end of the chain.
    pending: Vec<Chained>,
    /// Where the by-patient audit index stands.
    indexed: i64,
    /// Commits since the last checkpoint made while idle.
    wal_dirty: bool,
    metrics: &'m StoreMetrics,
}

fn writer_loop(mut w: Writer<'_>, rx: mpsc::Receiver<Job>) {
    w.journal.anchor(w.head, w.metrics);
    loop {
        let first = match rx.recv_timeout(std::time::Duration::from_millis(250)) {
            Ok(job) => job,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // Idle: move journaled records into the database and index them.
                if !w.pending.is_empty() && !w.journal.held() {
                    w.commit(Vec::new());
                }
                w.index_audit();
                w.journal.sync_anchor(false);
                // Copy the WAL into the database file now rather than in the middle of
                // later work (after a bulk load that takes a while).
                if std::mem::take(&mut w.wal_dirty) {
                    if let Err(e) = w.conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::warn!(error = %e, "checkpoint failed; SQLite retries at its next automatic checkpoint");
                    }
                }
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                if w.journal.held() {
                    // Tests: stop as if killed.
                    w.journal.release_hold();
                    break;
                }
                if !w.pending.is_empty() {
                    w.commit(Vec::new());
                }
                if w.pending.is_empty() {
                    mark_journal_clean(&w.conn, w.head);
                }
                w.journal.sync_anchor(true);
                break;
            }
        };
        let mut jobs = vec![first];
        let mut size = jobs[0].writes.len() + jobs[0].audit.len();
        // Take everything queued: one commit (one fsync) serves all of it. (Waiting for
        // more was measured to cost more than it gathers.)
        while size < MAX_BATCH_WRITES {
            match rx.try_recv() {
                Ok(job) => {
                    size += job.writes.len() + job.audit.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        // Audit records alone (of reads) go to the journal; writes, and requests to fold
        // (no writes, no records), to the database.
        let (reads, rest): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            .partition(|j| j.writes.is_empty() && !j.audit.is_empty());
        let rest = if reads.is_empty() {
            rest
        } else {
            w.journal_reads(reads, rest)
        };
        if !rest.is_empty() || w.pending.len() >= FOLD_AT {
            w.commit(rest);
        }
        if w.folded_seq() - w.indexed >= AUDIT_INDEX_BATCH {
            w.index_audit();
        }
    }
}

impl Writer<'_> {
    /// The last `seq` in `audit_log`.
    fn folded_seq(&self) -> i64 {
        self.head.seq - self.pending.len() as i64
    }

    fn index_audit(&mut self) {
        if self.folded_seq() > self.indexed {
            if let Err(e) = index_audit_tail(&mut self.conn, &mut self.indexed) {
                tracing::warn!(error = %e, "indexing the audit log failed; will retry");
            }
        }
    }

    /// Chains the records of `reads`, appends them to the journal (one fdatasync) and
    /// acknowledges them. Returns `rest`, plus any job that must go through the database
    /// instead (a group too large for the journal).
    fn journal_reads(&mut self, reads: Vec<Job>, mut rest: Vec<Job>) -> Vec<Job> {
        let bytes: usize = reads
            .iter()
            .flat_map(|j| &j.audit)
            .map(journal::frame_len)
            .sum();
        if !self.journal.fits(bytes) && !self.pending.is_empty() {
            self.commit(Vec::new()); // empties the journal
        }
        if !self.journal.fits(bytes) {
            rest.extend(reads);
            return rest;
        }
        let mut chain = self.head;
        let mut frames = Vec::with_capacity(bytes);
        let mut records = Vec::new();
        let mut acks = Vec::with_capacity(reads.len());
        for job in reads {
            for audit in job.audit {
                let (seq, prev_hash, hash) = chain.chain(&audit);
                let c = Chained {
                    seq,
                    prev_hash,
                    hash,
                    audit,
                };
                journal::encode_frame(&c, &mut frames);
                records.push(c);
            }
            acks.push(job.ack);
        }
        match self.journal.append(&frames) {
            Ok(()) => {
                self.head = chain;
                self.metrics.record_audit(records.len() as u64);
                self.pending.extend(records);
                self.journal.anchor(self.head, self.metrics);
                for ack in acks {
                    let _ = ack.send(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, journal = %self.journal.path().display(), "appending to the audit journal failed");
                for ack in acks {
                    let _ = ack.send(Err(StoreError::Backend(format!("audit journal: {e}"))));
                }
            }
        }
        rest
    }

    /// Commits `jobs` in one database transaction, with the journaled records moved into
    /// `audit_log` first, and acknowledges each job.
    fn commit(&mut self, jobs: Vec<Job>) {
        match apply_batch(&mut self.conn, &jobs, &mut self.head, &self.pending) {
            Ok(results) => {
                self.wal_dirty = true;
                self.pending.clear();
                self.journal.reset();
                self.journal.anchor(self.head, self.metrics);
                let succeeded = || {
                    jobs.iter()
                        .zip(&results)
                        .filter(|(_, r)| r.is_ok())
                        .map(|(j, _)| j)
                };
                let transactions = succeeded().filter(|j| !j.writes.is_empty()).count() as u64;
                let written: u64 = succeeded().map(|j| j.writes.len() as u64).sum();
                let audited: u64 = succeeded().map(|j| j.audit.len() as u64).sum();
                if !jobs.is_empty() {
                    self.metrics.record_batch(transactions, written);
                }
                self.metrics.record_audit(audited);
                self.metrics.record_commit_ok();
                for (job, result) in jobs.into_iter().zip(results) {
                    let _ = job.ack.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                self.metrics.record_commit_failure(&e.to_string());
                for job in jobs {
                    let _ = job.ack.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

/// Applies every job in one database transaction, each inside a savepoint, after moving
/// the journaled records `pending` into `audit_log`. Returns each job's outcome, or an
/// error if the database transaction itself failed (nothing stored). The audit records of
/// the jobs that succeed are chained after `head`, which advances only once the
/// transaction has committed.
fn apply_batch(
    conn: &mut Connection,
    jobs: &[Job],
    head: &mut ChainHead,
    pending: &[Chained],
) -> rusqlite::Result<Vec<Result<()>>> {
    // IMMEDIATE: take the write lock up front, so the busy timeout applies (a deferred
    // transaction upgrading from read to write would fail at once if another connection wrote).
    let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for c in pending {
        insert_audit(&txn, c.seq, &c.prev_hash, &c.hash, &c.audit)?;
    }
    let mut chain = *head;
    let mut results = Vec::with_capacity(jobs.len());
    // Search index rows are inserted at the end of the batch, sorted, so that the B-trees
    // are written in key order; rows of versions superseded within the batch never are.
    let mut deferred: HashMap<i64, Vec<search::Row>> = HashMap::new();
    for job in jobs {
        if job.writes.is_empty() {
            // Audit records alone: nothing can conflict, no savepoint needed.
            append_audit(&txn, &job.audit, &mut chain)?;
            results.push(Ok(()));
            continue;
        }
        let sp = txn.unchecked_transaction_savepoint()?;
        let before = chain;
        let applied = apply_transaction(&txn, &job.writes, &job.rows, &deferred).and_then(|outcome| {
            if outcome.is_ok() {
                append_audit(&txn, &job.audit, &mut chain)?;
                insert_outbox(&txn, &job.outbox)?;
            }
            Ok(outcome)
        });
        match applied {
            Ok(Ok(index)) => {
                sp.commit()?;
                for seq in index.superseded {
                    deferred.remove(&seq);
                }
                deferred.extend(index.add);
                results.push(Ok(()));
            }
            Ok(Err(conflict)) => {
                drop(sp); // rolls back to the savepoint
                chain = before;
                results.push(Err(conflict));
            }
            Err(e) => {
                drop(sp);
                chain = before;
                results.push(Err(StoreError::Backend(format!("sqlite: {e}"))));
            }
        }
    }
    insert_index_rows(&txn, deferred, true)?;
    txn.commit()?;
    *head = chain;
    Ok(results)
}

/// What a transaction changes in the search index, for [`apply_batch`] to apply.
#[derive(Default)]
struct IndexChanges {
    /// Rows of the new versions, by `seq`.
    add: Vec<(i64, Vec<search::Row>)>,
    /// Versions written earlier in the batch (rows not inserted yet) that this one replaced.
    superseded: Vec<i64>,
}

/// Adds outbox items (pending, due now), in order.
fn insert_outbox(c: &Connection, items: &[OutboxItem]) -> rusqlite::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let mut ins = c.prepare_cached(
        "INSERT INTO outbox (subscription, res_type, res_id, version, patient, created, state, attempts, next_attempt, last_error, updated) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?6, NULL, ?6)",
    )?;
    for i in items {
        ins.execute(params![i.subscription, i.resource_type, i.resource_id, i.version as i64, i.patient, i.created_micros])?;
    }
    Ok(())
}

const OUTBOX_COLUMNS: &str = "seq, subscription, res_type, res_id, version, patient, created, state, attempts, next_attempt, last_error, updated";

fn row_to_outbox(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
    let state: String = r.get(7)?;
    Ok(OutboxEntry {
        seq: r.get(0)?,
        item: OutboxItem {
            subscription: r.get(1)?,
            resource_type: r.get(2)?,
            resource_id: r.get(3)?,
            version: r.get::<_, i64>(4)? as u64,
            patient: r.get(5)?,
            created_micros: r.get(6)?,
        },
        state: OutboxState::parse(&state).unwrap_or(OutboxState::Failed),
        attempts: r.get::<_, i64>(8)? as u32,
        next_attempt_micros: r.get(9)?,
        last_error: r.get(10)?,
        updated_micros: r.get(11)?,
    })
}

/// Appends audit records after `head`, advancing it.
fn append_audit(
    c: &Connection,
    audit: &[PendingAudit],
    head: &mut ChainHead,
) -> rusqlite::Result<()> {
    for a in audit {
        let (seq, prev_hash, hash) = head.chain(a);
        insert_audit(c, seq, &prev_hash, &hash, a)?;
    }
    Ok(())
}

/// Inserts one chained record into `audit_log`.
fn insert_audit(
    c: &Connection,
    seq: i64,
    prev_hash: &[u8; 32],
    hash: &[u8; 32],
    a: &PendingAudit,
) -> rusqlite::Result<()> {
    let event = a.stored_event().map_err(|e| {
        rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(e.to_string())))
    })?;
    c.prepare_cached(
        "INSERT INTO audit_log (seq, recorded, user_id, action, break_glass, patients, prev_hash, hash, event) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        seq,
        a.recorded_micros,
        a.user,
        a.action,
        a.break_glass as i64,
        a.patients_column(),
        &prev_hash[..],
        &hash[..],
        event
    ])?;
    Ok(())
}

/// The meta key recording up to which `seq` the by-patient audit index is complete.
const AUDIT_INDEXED_UPTO: &str = "audit.indexed_upto";
/// Index the audit tail once it is this long (or whenever the writer is idle).
const AUDIT_INDEX_BATCH: i64 = 256;

/// Where the by-patient audit index stands (records after it are found by scanning).
fn audit_indexed_upto(conn: &Connection) -> rusqlite::Result<i64> {
    let stored: Option<String> = conn
        .query_row(
            "SELECT value FROM tessera_meta WHERE key = ?1",
            [AUDIT_INDEXED_UPTO],
            |r| r.get(0),
        )
        .optional()?;
    match stored.and_then(|v| v.parse().ok()) {
        Some(v) => Ok(v),
        // Databases from before the lazy index kept it complete as they went.
        None => conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM audit_patient", [], |r| {
            r.get(0)
        }),
    }
}

/// Brings the by-patient audit index up to date, in one transaction of its own. The index
/// is derived data: the audited read path appends to `audit_log` only (one sequential page
/// instead of one random page per patient), and queries by patient scan the short tail.
fn index_audit_tail(conn: &mut Connection, upto: &mut i64) -> rusqlite::Result<()> {
    let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut last = *upto;
    {
        let mut rows =
            txn.prepare_cached("SELECT seq, patients FROM audit_log WHERE seq > ?1 ORDER BY seq")?;
        let mut insert = txn
            .prepare_cached("INSERT OR IGNORE INTO audit_patient (patient, seq) VALUES (?1, ?2)")?;
        let tail: Vec<(i64, Option<String>)> = rows
            .query_map([*upto], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        for (seq, patients) in tail {
            for p in crate::parse_patients(patients.as_deref()).unwrap_or_default() {
                insert.execute(params![p, seq])?;
            }
            last = seq;
        }
        txn.execute(
            "INSERT INTO tessera_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![AUDIT_INDEXED_UPTO, last.to_string()],
        )?;
    }
    txn.commit()?;
    *upto = last;
    Ok(())
}

trait SavepointExt {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>>;
}

/// A savepoint on a connection borrowed immutably (rusqlite's own needs `&mut`).
struct Savepoint<'a> {
    conn: &'a Connection,
    done: bool,
}

impl SavepointExt for rusqlite::Transaction<'_> {
    fn unchecked_transaction_savepoint(&self) -> rusqlite::Result<Savepoint<'_>> {
        self.execute_batch("SAVEPOINT tx")?;
        Ok(Savepoint {
            conn: self,
            done: false,
        })
    }
}

impl Savepoint<'_> {
    fn commit(mut self) -> rusqlite::Result<()> {
        self.done = true;
        self.conn.execute_batch("RELEASE tx")
    }
}

impl Drop for Savepoint<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.conn.execute_batch("ROLLBACK TO tx; RELEASE tx");
        }
    }
}

/// Deletes the search index rows of the stored version `seq`: they are the rows its JSON
/// yields (extraction is deterministic; after a change of definitions, `tessera reindex`
/// rebuilds the index).
fn delete_index_rows(c: &Connection, resource_type: &str, seq: i64) -> rusqlite::Result<()> {
    use search::Row;
    let data: Option<Vec<u8>> = c.prepare_cached("SELECT data FROM resource_version WHERE seq = ?1")?.query_row([seq], |r| r.get(0)).optional()?;
    let Some(data) = data else { return Ok(()) };
    let json = codec::decode(&data).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(e.to_string()))))?;
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(&json) else { return Ok(()) };
    let version_seq = seq;
    let mut counts = search::TokenCounts::default();
    for (seq, row) in search::placed_owned(version_seq, search::rows(resource_type, &tessera_search::index_all(&value))) {
        match row {
            Row::Token { ref p, ref system, ref code } => {
                let n = c.prepare_cached("DELETE FROM sp_token WHERE p = ?1 AND code = ?2 AND system = ?3 AND seq = ?4")?.execute(params![p, code, system, seq])?;
                if n > 0 {
                    counts.add(seq, &row, -1);
                }
                n
            }
            Row::PatientToken { p, patient, system, code } => c
                .prepare_cached("DELETE FROM sp_token_pc WHERE p = ?1 AND patient = ?2 AND code = ?3 AND seq = ?4 AND system = ?5")?
                .execute(params![p, patient, code, seq, system])?,
            Row::String { p, norm, exact } => {
                c.prepare_cached("DELETE FROM sp_string WHERE p = ?1 AND norm = ?2 AND exact = ?3 AND seq = ?4")?.execute(params![p, norm, exact, seq])?
            }
            Row::Date { p, low, high } => {
                c.prepare_cached("DELETE FROM sp_date WHERE p = ?1 AND low = ?2 AND high = ?3 AND seq = ?4")?.execute(params![p, low, high, seq])?
            }
            Row::Quantity { p, value, low, high, system, code } => c
                .prepare_cached(
                    "DELETE FROM sp_quantity WHERE p = ?1 AND value = ?2 AND system = ?3 AND code = ?4 AND low = ?5 AND high = ?6 AND seq = ?7",
                )?
                .execute(params![p, value, system, code, low, high, seq])?,
            Row::Reference { p, target_type, target_id, url } => c
                .prepare_cached("DELETE FROM sp_reference WHERE p = ?1 AND target_id = ?2 AND target_type = ?3 AND url = ?4 AND seq = ?5")?
                .execute(params![p, target_id, target_type, url, seq])?,
            Row::Uri { p, uri } => c.prepare_cached("DELETE FROM sp_uri WHERE p = ?1 AND uri = ?2 AND seq = ?3")?.execute(params![p, uri, seq])?,
            Row::TokenQuantity { p, system, code, value, low, high, unit_system, unit } => c
                .prepare_cached(
                    "DELETE FROM sp_token_quantity WHERE p = ?1 AND code = ?2 AND seq = ?3 AND system = ?4 AND value = ?5 \
                     AND unit_system = ?6 AND unit = ?7 AND low = ?8 AND high = ?9",
                )?
                .execute(params![p, code, seq, system, value, unit_system, unit, low, high])?,
            Row::TokenText { p, text } => {
                c.prepare_cached("DELETE FROM sp_token_text WHERE p = ?1 AND text = ?2 AND seq = ?3")?.execute(params![p, text, seq])?
            }
            Row::TokenToken { p, system, code, system2, code2 } => c
                .prepare_cached(
                    "DELETE FROM sp_token_token WHERE p = ?1 AND code = ?2 AND code2 = ?3 AND seq = ?4 AND system = ?5 AND system2 = ?6",
                )?
                .execute(params![p, code, code2, seq, system, system2])?,
            Row::Contained { .. } => unreachable!("placed_owned() unwraps contained rows"),
        };
    }
    add_token_counts(c, &counts)
}

/// Applies per-code count changes to `token_count`.
fn add_token_counts(c: &Connection, counts: &search::TokenCounts) -> rusqlite::Result<()> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO token_count (p, code, system, live) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (p, code, system) DO UPDATE SET live = live + excluded.live",
    )?;
    for ((p, code, system), delta) in counts.changes() {
        stmt.execute(params![p, code, system, delta])?;
    }
    Ok(())
}

/// Inserts the search index rows of a batch, table by table in key order. With `counted`,
/// the rows are new (a write's) and their per-code counts are kept; a reindex, whose rows
/// may be there already, recounts at its end instead.
fn insert_index_rows(c: &Connection, rows: HashMap<i64, Vec<search::Row>>, counted: bool) -> rusqlite::Result<()> {
    use search::Row;
    let mut all: Vec<(i64, Row)> = rows.into_iter().flat_map(|(seq, rows)| search::placed_owned(seq, rows)).collect();
    if counted {
        let mut counts = search::TokenCounts::default();
        for (seq, row) in &all {
            counts.add(*seq, row, 1);
        }
        add_token_counts(c, &counts)?;
    }
    // Order by table, then (roughly) the tables' keys, then seq.
    fn rank(r: &Row) -> u8 {
        match r {
            Row::Token { .. } => 0,
            Row::PatientToken { .. } => 6,
            Row::TokenQuantity { .. } => 7,
            Row::TokenToken { .. } => 8,
            Row::TokenText { .. } => 9,
            Row::Contained { .. } => 10,
            Row::String { .. } => 1,
            Row::Date { .. } => 2,
            Row::Quantity { .. } => 3,
            Row::Reference { .. } => 4,
            Row::Uri { .. } => 5,
        }
    }
    all.sort_by(|(sa, a), (sb, b)| {
        rank(a).cmp(&rank(b)).then_with(|| match (a, b) {
            (Row::Token { p: p1, code: c1, system: s1 }, Row::Token { p: p2, code: c2, system: s2 }) => (p1, c1, s1).cmp(&(p2, c2, s2)),
            (Row::PatientToken { p: p1, patient: a1, code: c1, .. }, Row::PatientToken { p: p2, patient: a2, code: c2, .. }) => (p1, a1, c1).cmp(&(p2, a2, c2)),
            (Row::String { p: p1, norm: n1, exact: e1 }, Row::String { p: p2, norm: n2, exact: e2 }) => (p1, n1, e1).cmp(&(p2, n2, e2)),
            (Row::Date { p: p1, .. }, Row::Date { p: p2, .. }) => p1.cmp(p2),
            (Row::Quantity { p: p1, .. }, Row::Quantity { p: p2, .. }) => p1.cmp(p2),
            (Row::Reference { p: p1, target_id: i1, target_type: t1, url: u1 }, Row::Reference { p: p2, target_id: i2, target_type: t2, url: u2 }) => {
                (p1, i1, t1, u1).cmp(&(p2, i2, t2, u2))
            }
            (Row::Uri { p: p1, uri: u1 }, Row::Uri { p: p2, uri: u2 }) => (p1, u1).cmp(&(p2, u2)),
            _ => std::cmp::Ordering::Equal,
        })
        .then(sa.cmp(sb))
    });
    // Multi-row INSERTs (up to CHUNK rows a statement): one statement step per chunk.
    const CHUNK: usize = 64;
    use rusqlite::types::Value as V;
    let t = |s: &String| V::Text(s.clone());
    let values: Vec<(usize, Vec<V>)> = all
        .iter()
        .map(|(seq, row)| {
            let seq = V::Integer(*seq);
            match row {
                Row::Token { p, system, code } => (0, vec![V::Integer(*p), t(code), t(system), seq]),
                Row::String { p, norm, exact } => (1, vec![V::Integer(*p), t(norm), t(exact), seq]),
                Row::Date { p, low, high } => (2, vec![V::Integer(*p), V::Integer(*low), V::Integer(*high), seq]),
                Row::Quantity { p, value, low, high, system, code } => {
                    (3, vec![V::Integer(*p), V::Real(*value), V::Real(*low), V::Real(*high), t(system), t(code), seq])
                }
                Row::Reference { p, target_type, target_id, url } => (4, vec![V::Integer(*p), t(target_id), t(target_type), t(url), seq]),
                Row::Uri { p, uri } => (5, vec![V::Integer(*p), t(uri), seq]),
                Row::PatientToken { p, patient, system, code } => (6, vec![V::Integer(*p), t(patient), t(code), t(system), seq]),
                Row::TokenQuantity { p, system, code, value, low, high, unit_system, unit } => (
                    7,
                    vec![V::Integer(*p), t(code), seq, t(system), V::Real(*value), V::Real(*low), V::Real(*high), t(unit_system), t(unit)],
                ),
                Row::TokenToken { p, system, code, system2, code2 } => (8, vec![V::Integer(*p), t(code), t(code2), seq, t(system), t(system2)]),
                Row::TokenText { p, text } => (9, vec![V::Integer(*p), t(text), seq]),
                Row::Contained { .. } => unreachable!("placed_owned() unwraps contained rows"),
            }
        })
        .collect();
    const TABLES: [(&str, usize); 10] = [
        ("sp_token (p, code, system, seq)", 4),
        ("sp_string (p, norm, exact, seq)", 4),
        ("sp_date (p, low, high, seq)", 4),
        ("sp_quantity (p, value, low, high, system, code, seq)", 7),
        ("sp_reference (p, target_id, target_type, url, seq)", 5),
        ("sp_uri (p, uri, seq)", 3),
        ("sp_token_pc (p, patient, code, system, seq)", 5),
        ("sp_token_quantity (p, code, seq, system, value, low, high, unit_system, unit)", 9),
        ("sp_token_token (p, code, code2, seq, system, system2)", 6),
        ("sp_token_text (p, text, seq)", 3),
    ];
    let mut start = 0;
    while start < values.len() {
        let table = values[start].0;
        let mut end = start;
        while end < values.len() && values[end].0 == table && end - start < CHUNK {
            end += 1;
        }
        let (name, width) = TABLES[table];
        let one = format!("({})", vec!["?"; width].join(", "));
        let sql = format!("INSERT OR IGNORE INTO {name} VALUES {}", vec![one.as_str(); end - start].join(", "));
        c.prepare_cached(&sql)?.execute(rusqlite::params_from_iter(values[start..end].iter().flat_map(|(_, v)| v.iter())))?;
        start = end;
    }
    Ok(())
}

/// Recounts `token_count` from the token rows of the resources themselves (not contained).
const RECOUNT_TOKENS: &str = "DELETE FROM token_count; \
     INSERT INTO token_count SELECT p, code, system, count(*) FROM sp_token WHERE seq < 72057594037927936 GROUP BY p, code, system;";

/// Fills `token_count` once, for a database written before the writer kept it: every
/// group of rows is counted, then those of parameters without a count are removed.
fn fill_token_count(c: &Connection) -> rusqlite::Result<()> {
    let done: Option<String> =
        c.query_row("SELECT value FROM tessera_meta WHERE key = 'token_count'", [], |r| r.get(0)).optional()?;
    if done.is_some() {
        return Ok(());
    }
    c.execute_batch("BEGIN IMMEDIATE")?;
    let filled = recount_tokens(c).and_then(|()| {
        c.execute_batch(
            "INSERT INTO tessera_meta (key, value) VALUES ('token_count', '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value; COMMIT;",
        )
    });
    if filled.is_err() {
        let _ = c.execute_batch("ROLLBACK");
    }
    filled
}

/// Recounts `token_count` from the rows of `sp_token` (within the caller's transaction).
fn recount_tokens(c: &Connection) -> rusqlite::Result<()> {
    c.execute_batch(RECOUNT_TOKENS)?;
    let keys: Vec<i64> = c.prepare("SELECT DISTINCT p FROM token_count")?.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    let mut delete = c.prepare_cached("DELETE FROM token_count WHERE p = ?1")?;
    for p in keys.into_iter().filter(|p| !search::counted_token(*p)) {
        delete.execute([p])?;
    }
    Ok(())
}

/// Fills `type_count` from `resource_current` once, for a database written before the
/// writer kept it (marked done in `tessera_meta`).
fn fill_type_count(c: &Connection) -> rusqlite::Result<()> {
    let done: Option<String> =
        c.query_row("SELECT value FROM tessera_meta WHERE key = 'type_count'", [], |r| r.get(0)).optional()?;
    if done.is_some() {
        return Ok(());
    }
    c.execute_batch(
        "BEGIN IMMEDIATE; DELETE FROM type_count; \
         INSERT INTO type_count SELECT res_type, count(*) FROM resource_current WHERE deleted = 0 GROUP BY res_type; \
         INSERT INTO tessera_meta (key, value) VALUES ('type_count', '1') ON CONFLICT (key) DO UPDATE SET value = excluded.value; \
         COMMIT;",
    )
}

/// Applies one transaction's writes; `Ok(Err(_))` is a failed precondition.
fn apply_transaction(
    c: &Connection,
    writes: &[Write],
    rows: &[Vec<search::Row>],
    deferred: &HashMap<i64, Vec<search::Row>>,
) -> rusqlite::Result<Result<IndexChanges>> {
    let mut changes = IndexChanges::default();
    for (index, w) in writes.iter().enumerate() {
        let current: Option<(i64, i64, i64)> = c
            .prepare_cached("SELECT version, deleted, seq FROM resource_current WHERE res_type = ?1 AND id = ?2")?
            .query_row(params![w.resource_type, w.id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()?;
        let conflict = |reason| StoreError::Conflict {
            index,
            resource_type: w.resource_type.clone(),
            id: w.id.clone(),
            reason,
        };
        let current_version = current.map(|(v, _, _)| v as u64);
        let failed = match &w.precondition {
            Precondition::None => None,
            Precondition::Absent => current.map(|_| ConflictReason::Exists),
            Precondition::AbsentOrDeleted => match current {
                Some((_, 0, _)) => Some(ConflictReason::Exists),
                _ => None,
            },
            Precondition::Version(v) => {
                (current_version != Some(*v)).then_some(ConflictReason::VersionMismatch {
                    current: current_version,
                })
            }
            Precondition::NoneMatching(criteria) => find_ids(c, criteria)?
                .into_iter()
                .next()
                .map(ConflictReason::Matches),
        };
        if let Some(reason) = failed {
            return Ok(Err(conflict(reason)));
        }
        // Versions are strictly increasing per resource whatever the caller computed.
        if let Some(cur) = current_version {
            if w.version <= cur {
                return Ok(Err(conflict(ConflictReason::VersionMismatch {
                    current: Some(cur),
                })));
            }
        }
        c.prepare_cached(
            "INSERT INTO resource_version (res_type, id, version, last_updated, deleted, compartment, owner, data) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?
        .execute(params![
            w.resource_type,
            w.id,
            w.version as i64,
            w.last_updated_micros,
            w.deleted as i64,
            w.compartment,
            w.owner,
            w.json
        ])?;
        let seq = c.last_insert_rowid();
        c.prepare_cached(
            "INSERT INTO resource_current (res_type, id, version, seq, deleted, compartment, owner) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
             ON CONFLICT (res_type, id) DO UPDATE SET version = excluded.version, seq = excluded.seq, \
             deleted = excluded.deleted, compartment = excluded.compartment, owner = excluded.owner",
        )?
        .execute(params![w.resource_type, w.id, w.version as i64, seq, w.deleted as i64, w.compartment, w.owner])?;
        let was_live = matches!(current, Some((_, 0, _)));
        if was_live == w.deleted {
            c.prepare_cached(
                "INSERT INTO type_count (res_type, live) VALUES (?1, ?2) \
                 ON CONFLICT (res_type) DO UPDATE SET live = live + excluded.live",
            )?
            .execute(params![w.resource_type, if w.deleted { -1i64 } else { 1 }])?;
        }
        if current.is_some() {
            c.prepare_cached("DELETE FROM identifier_index WHERE res_type = ?1 AND id = ?2")?
                .execute(params![w.resource_type, w.id])?;
        }
        if current.is_some() {
            c.prepare_cached("DELETE FROM care_link WHERE source_type = ?1 AND source_id = ?2")?
                .execute(params![w.resource_type, w.id])?;
        }
        if let Some((_, 0, old_seq)) = current {
            if let Some(i) = changes.add.iter().position(|(s, _)| *s == old_seq) {
                changes.add.swap_remove(i);
            } else if deferred.contains_key(&old_seq) {
                changes.superseded.push(old_seq);
            } else {
                delete_index_rows(c, &w.resource_type, old_seq)?;
            }
        }
        if !w.deleted {
            changes.add.push((seq, rows.get(index).cloned().unwrap_or_default()));
        }
        if !w.deleted {
            let mut ins = c.prepare_cached(
                "INSERT OR IGNORE INTO identifier_index (res_type, value, system, id) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (system, value) in &w.identifiers {
                ins.execute(params![w.resource_type, value, system, w.id])?;
            }
            let mut link = c.prepare_cached(
                "INSERT INTO care_link (patient, source_type, source_id, n, kind, organisation, location, \
                 practitioner, start_micros, end_micros, active) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            for (n, l) in w.links.iter().enumerate() {
                link.execute(params![
                    l.patient,
                    w.resource_type,
                    w.id,
                    n as i64,
                    l.kind,
                    l.organisation,
                    l.location,
                    l.practitioner,
                    l.start_micros,
                    l.end_micros,
                    l.active as i64
                ])?;
            }
        }
    }
    Ok(Ok(changes))
}
