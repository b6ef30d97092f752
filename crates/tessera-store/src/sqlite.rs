//! The embedded SQLite backend.
//!
//! * One database file, `tessera.db`, in the data directory, in WAL mode with
//!   `synchronous=FULL`: a commit returns only after the WAL is fsynced.
//! * One writer thread owns the only write connection and group-commits: it takes every
//!   queued transaction, applies each inside its own savepoint, commits once and then
//!   acknowledges each caller.
//! * Reads use a small pool of read-only connections and run on the calling task: point
//!   reads are a few microseconds and WAL readers never wait for the writer.

use crate::{
    codec, ConflictReason, Criteria, HistoryQuery, Precondition, Result, Store, StoreError, StoreMetrics, StoreStats,
    Stored, Transaction, Write,
};
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use tokio::sync::oneshot;

const SCHEMA: &str = r#"
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
"#;

const MAX_BATCH_WRITES: usize = 20_000;

type Job = (Transaction, oneshot::Sender<Result<()>>);

pub struct SqliteStore {
    path: PathBuf,
    readers: Mutex<Vec<Connection>>,
    writer: Mutex<Option<mpsc::Sender<Job>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    metrics: Arc<StoreMetrics>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Backend(format!("cannot create data directory {}: {e}", data_dir.display())))?;
        let path = data_dir.join("tessera.db");
        let conn = Connection::open(&path).map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; \
             PRAGMA wal_autocheckpoint=4000; PRAGMA cache_size=-16384;",
        )
        .map_err(db)?;
        conn.execute_batch(SCHEMA).map_err(db)?;
        // Meta writes use their own connection; the writer waits for them rather than failing.
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db)?;
        let metrics = Arc::new(StoreMetrics::default());
        let (tx, rx) = mpsc::channel::<Job>();
        let m = metrics.clone();
        let handle = std::thread::Builder::new()
            .name("tessera-sqlite-writer".into())
            .spawn(move || writer_loop(conn, rx, &m))
            .map_err(|e| StoreError::Backend(format!("cannot start writer: {e}")))?;
        Ok(SqliteStore {
            path,
            readers: Mutex::new(Vec::new()),
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(handle)),
            metrics,
        })
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
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
        let out = f(&conn).map_err(db);
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
    }
}

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(format!("sqlite: {e}"))
}

const COLUMNS: &str = "v.res_type, v.id, v.version, v.seq, v.last_updated, v.deleted, v.compartment, v.owner, v.data";

fn row_to_stored(row: &rusqlite::Row<'_>) -> rusqlite::Result<Stored> {
    let data: Vec<u8> = row.get(8)?;
    let json = codec::decode(&data).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(8, rusqlite::types::Type::Blob, Box::new(std::io::Error::other(e.to_string())))
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
        let sql = format!("SELECT {COLUMNS} FROM resource_version v WHERE {filter} ORDER BY v.seq DESC LIMIT {}", q.count);
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
                .query_row(rusqlite::params_from_iter(args.iter()), |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
        })
    }

    async fn find(&self, criteria: &Criteria) -> Result<Vec<String>> {
        self.with_reader(|c| find_ids(c, criteria))
    }

    async fn commit(&self, tx: Transaction) -> Result<()> {
        if tx.is_empty() {
            return Ok(());
        }
        let mut tx = tx;
        for w in &mut tx {
            w.json = codec::encode(&w.json)?;
        }
        let (ack, done) = oneshot::channel();
        {
            let writer = self.writer.lock().expect("writer");
            writer.as_ref().ok_or(StoreError::Closed)?.send((tx, ack)).map_err(|_| StoreError::Closed)?;
        }
        done.await.map_err(|_| StoreError::Closed)?
    }

    async fn get_meta(&self, key: &str) -> Result<Option<String>> {
        self.with_reader(|c| {
            c.prepare_cached("SELECT value FROM tessera_meta WHERE key = ?1")?.query_row([key], |r| r.get(0)).optional()
        })
    }

    async fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        // Meta writes are rare; a separate connection keeps them off the group-commit path.
        let conn = Connection::open(&self.path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(30)).map_err(db)?;
        conn.execute(
            "INSERT INTO tessera_meta (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        )
        .map_err(db)?;
        Ok(())
    }

    async fn stats(&self) -> Result<StoreStats> {
        let (current, versions) = self.with_reader(|c| {
            let current: i64 =
                c.query_row("SELECT count(*) FROM resource_current WHERE deleted = 0", [], |r| r.get(0))?;
            let versions: i64 = c.query_row("SELECT count(*) FROM resource_version", [], |r| r.get(0))?;
            Ok((current as u64, versions as u64))
        })?;
        let mut bytes = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.path.clone().into_os_string();
            p.push(suffix);
            bytes += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        Ok(StoreStats { current_resources: current, versions, bytes })
    }

    fn metrics(&self) -> &StoreMetrics {
        &self.metrics
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
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
    let mut stmt = c.prepare_cached("SELECT deleted FROM resource_current WHERE res_type = ?1 AND id = ?2")?;
    for id in candidates {
        let deleted: Option<i64> = stmt.query_row(params![criteria.resource_type, id], |r| r.get(0)).optional()?;
        if deleted == Some(0) && !live.contains(&id) {
            live.push(id);
        }
    }
    Ok(live)
}

fn writer_loop(mut conn: Connection, rx: mpsc::Receiver<Job>, metrics: &StoreMetrics) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let mut writes = jobs[0].0.len();
        while writes < MAX_BATCH_WRITES {
            match rx.try_recv() {
                Ok(job) => {
                    writes += job.0.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let outcomes = apply_batch(&mut conn, &jobs);
        match outcomes {
            Ok(results) => {
                let ok = results.iter().filter(|r| r.is_ok()).count() as u64;
                let written: u64 =
                    jobs.iter().zip(&results).filter(|(_, r)| r.is_ok()).map(|((t, _), _)| t.len() as u64).sum();
                metrics.record_batch(ok, written);
                for ((_, ack), result) in jobs.into_iter().zip(results) {
                    let _ = ack.send(result);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed");
                for (_, ack) in jobs {
                    let _ = ack.send(Err(StoreError::Backend(e.to_string())));
                }
            }
        }
    }
}

/// Applies every job in one database transaction, each inside a savepoint. Returns each
/// job's outcome, or an error if the database transaction itself failed (nothing stored).
fn apply_batch(conn: &mut Connection, jobs: &[Job]) -> rusqlite::Result<Vec<Result<()>>> {
    // IMMEDIATE: take the write lock up front, so the busy timeout applies (a deferred
    // transaction upgrading from read to write would fail at once if another connection wrote).
    let txn = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut results = Vec::with_capacity(jobs.len());
    for (writes, _) in jobs {
        let sp = txn.unchecked_transaction_savepoint()?;
        match apply_transaction(&txn, writes) {
            Ok(Ok(())) => {
                sp.commit()?;
                results.push(Ok(()));
            }
            Ok(Err(conflict)) => {
                drop(sp); // rolls back to the savepoint
                results.push(Err(conflict));
            }
            Err(e) => {
                drop(sp);
                results.push(Err(StoreError::Backend(format!("sqlite: {e}"))));
            }
        }
    }
    txn.commit()?;
    Ok(results)
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
        Ok(Savepoint { conn: self, done: false })
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

/// Applies one transaction's writes; `Ok(Err(_))` is a failed precondition.
fn apply_transaction(c: &Connection, writes: &[Write]) -> rusqlite::Result<Result<()>> {
    for (index, w) in writes.iter().enumerate() {
        let current: Option<(i64, i64)> = c
            .prepare_cached("SELECT version, deleted FROM resource_current WHERE res_type = ?1 AND id = ?2")?
            .query_row(params![w.resource_type, w.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let conflict = |reason| StoreError::Conflict { index, resource_type: w.resource_type.clone(), id: w.id.clone(), reason };
        let current_version = current.map(|(v, _)| v as u64);
        let failed = match &w.precondition {
            Precondition::None => None,
            Precondition::Absent => current.map(|_| ConflictReason::Exists),
            Precondition::AbsentOrDeleted => match current {
                Some((_, 0)) => Some(ConflictReason::Exists),
                _ => None,
            },
            Precondition::Version(v) => {
                (current_version != Some(*v)).then_some(ConflictReason::VersionMismatch { current: current_version })
            }
            Precondition::NoneMatching(criteria) => find_ids(c, criteria)?.into_iter().next().map(ConflictReason::Matches),
        };
        if let Some(reason) = failed {
            return Ok(Err(conflict(reason)));
        }
        // Versions are strictly increasing per resource whatever the caller computed.
        if let Some(cur) = current_version {
            if w.version <= cur {
                return Ok(Err(conflict(ConflictReason::VersionMismatch { current: Some(cur) })));
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
        if current.is_some() {
            c.prepare_cached("DELETE FROM identifier_index WHERE res_type = ?1 AND id = ?2")?
                .execute(params![w.resource_type, w.id])?;
        }
        if !w.deleted {
            let mut ins = c.prepare_cached(
                "INSERT OR IGNORE INTO identifier_index (res_type, value, system, id) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for (system, value) in &w.identifiers {
                ins.execute(params![w.resource_type, value, system, w.id])?;
            }
        }
    }
    Ok(Ok(()))
}
