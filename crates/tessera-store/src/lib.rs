//! The versioned FHIR resource store.
//!
//! One interface ([`Store`]), two backends: [`sqlite::SqliteStore`] (embedded, the default)
//! and [`postgres::PostgresStore`] (production). Both pass the same conformance suite
//! (`tests/conformance.rs`).
//!
//! # Model
//! Every write creates a new *version* of a resource: `(type, id, version)` with its
//! `lastUpdated`, a deleted flag, the patient compartment it belongs to (the distribution
//! key), its owning organisation and the resource JSON (stored zstd-compressed, see
//! [`codec`]). History is never rewritten. A [`Transaction`] is a list of writes that
//! commits all-or-nothing; each write carries a [`Precondition`] that the backend checks
//! inside the database transaction, which makes optimistic locking (`If-Match`),
//! create-only-if-absent and conditional create race-free.
//!
//! # Group commit
//! Backends queue transactions to a single writer that commits many of them in one
//! database transaction (each isolated by a savepoint, so one failing precondition does
//! not affect the others) and one fsync, then acknowledges each. An acknowledged
//! transaction is durable.

pub mod codec;
pub mod postgres;
pub mod sqlite;

use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// One stored version of a resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    /// Global commit sequence number: orders all versions in the store.
    pub seq: i64,
    /// `meta.lastUpdated` as microseconds since the Unix epoch.
    pub last_updated_micros: i64,
    pub deleted: bool,
    /// Primary patient compartment (patient id), the distribution key.
    pub compartment: Option<String>,
    /// Owning organisation (reference), if any.
    pub owner: Option<String>,
    /// The resource as JSON, exactly as written (empty for a deletion).
    pub json: Vec<u8>,
}

/// An identifier-token criterion: `identifier=[system]|value` or `identifier=value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenMatch {
    /// `None` matches any system; `Some("")` matches identifiers without a system.
    pub system: Option<String>,
    pub value: String,
}

/// Criteria the store itself can evaluate (inside a write transaction).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Criteria {
    pub resource_type: String,
    /// `_id` equals this.
    pub id: Option<String>,
    /// Each must match one of the resource's identifiers (AND).
    pub identifiers: Vec<TokenMatch>,
}

/// What must hold of the current state for a write to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Always applies.
    None,
    /// No version of this resource exists (not even a deleted one).
    Absent,
    /// The current version is exactly this one (`If-Match`, or read-modify-write).
    Version(u64),
    /// The resource is absent or its current version is deleted.
    AbsentOrDeleted,
    /// No current, non-deleted resource matches the criteria (conditional create).
    NoneMatching(Criteria),
}

/// One write: a new version of a resource (or a deletion).
#[derive(Debug, Clone)]
pub struct Write {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    pub last_updated_micros: i64,
    pub deleted: bool,
    pub compartment: Option<String>,
    pub owner: Option<String>,
    /// The full resource JSON including `meta.versionId`/`meta.lastUpdated` (empty when deleted).
    pub json: Vec<u8>,
    /// `(system, value)` of the resource's business identifiers, kept for identifier lookups.
    pub identifiers: Vec<(String, String)>,
    pub precondition: Precondition,
}

/// Writes that commit all-or-nothing.
pub type Transaction = Vec<Write>;

/// Which history to list.
#[derive(Debug, Clone, Default)]
pub struct HistoryQuery {
    /// `None`: system history; `Some(t)`: type history (or instance history with `id`).
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// Only versions with `lastUpdated >= since` (microseconds).
    pub since_micros: Option<i64>,
    /// Only versions with `seq < before_seq` (paging cursor).
    pub before_seq: Option<i64>,
    /// Page size.
    pub count: usize,
}

/// Counts and sizes, for benchmarks and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub current_resources: u64,
    pub versions: u64,
    /// Bytes on disk (database files), if the backend can tell.
    pub bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A write's precondition did not hold; nothing of the transaction was stored.
    #[error("precondition failed for write {index} ({resource_type}/{id}): {reason}")]
    Conflict { index: usize, resource_type: String, id: String, reason: ConflictReason },
    #[error("storage error: {0}")]
    Backend(String),
    #[error("the store is shutting down")]
    Closed,
}

/// Why a precondition failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictReason {
    /// The resource exists (for [`Precondition::Absent`] / [`Precondition::AbsentOrDeleted`]).
    Exists,
    /// The current version differs (`current` is `None` if the resource is absent).
    VersionMismatch { current: Option<u64> },
    /// A resource matches the criteria of a conditional create (its id).
    Matches(String),
}

impl std::fmt::Display for ConflictReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConflictReason::Exists => write!(f, "resource already exists"),
            ConflictReason::VersionMismatch { current: Some(v) } => write!(f, "current version is {v}"),
            ConflictReason::VersionMismatch { current: None } => write!(f, "resource does not exist"),
            ConflictReason::Matches(id) => write!(f, "an existing resource ({id}) matches"),
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// Counters the backends keep, exported as metrics.
#[derive(Debug, Default)]
pub struct StoreMetrics {
    /// Database transactions committed by the writer (each holds one or more [`Transaction`]s).
    pub commit_batches: AtomicU64,
    /// Transactions acknowledged.
    pub transactions: AtomicU64,
    /// Versions written.
    pub writes: AtomicU64,
}

impl StoreMetrics {
    pub fn record_batch(&self, transactions: u64, writes: u64) {
        self.commit_batches.fetch_add(1, Ordering::Relaxed);
        self.transactions.fetch_add(transactions, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
    }
}

/// The storage interface. All methods are safe to call concurrently.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current version of a resource (possibly a deletion), if any version exists.
    async fn read(&self, resource_type: &str, id: &str) -> Result<Option<Stored>>;
    /// One specific version.
    async fn vread(&self, resource_type: &str, id: &str, version: u64) -> Result<Option<Stored>>;
    /// Versions newest first (by commit sequence).
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Stored>>;
    /// Number of versions the history query would list without paging (ignores `before_seq`).
    async fn history_count(&self, query: &HistoryQuery) -> Result<u64>;
    /// Ids of current, non-deleted resources matching the criteria.
    async fn find(&self, criteria: &Criteria) -> Result<Vec<String>>;
    /// Commits all writes or none. Returns once durable.
    async fn commit(&self, tx: Transaction) -> Result<()>;
    /// A small key/value table for server state (e.g. import progress).
    async fn get_meta(&self, key: &str) -> Result<Option<String>>;
    async fn set_meta(&self, key: &str, value: &str) -> Result<()>;
    async fn stats(&self) -> Result<StoreStats>;
    fn metrics(&self) -> &StoreMetrics;
    /// A short name of the backend ("sqlite", "postgresql").
    fn backend(&self) -> &'static str;
}

pub type DynStore = Arc<dyn Store>;

/// Opens the store a command line asks for: PostgreSQL if a URL is given, otherwise SQLite
/// in `data_dir`.
pub async fn open(data_dir: &std::path::Path, database_url: Option<&str>) -> Result<DynStore> {
    match database_url {
        Some(url) => Ok(Arc::new(postgres::PostgresStore::connect(url).await?)),
        None => Ok(Arc::new(sqlite::SqliteStore::open(data_dir)?)),
    }
}

/// Current time in microseconds since the epoch, strictly increasing within this process.
pub fn now_micros() -> i64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let mut prev = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(prev + 1);
        match LAST.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next as i64,
            Err(p) => prev = p,
        }
    }
}

/// Does a stored identifier `(system, value)` satisfy a token criterion?
pub fn token_matches(m: &TokenMatch, system: &str, value: &str) -> bool {
    m.value == value && m.system.as_deref().is_none_or(|s| s == system)
}
