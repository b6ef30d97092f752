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
//!
//! # Audit log
//! A transaction may carry audit records ([`NewAudit`], [`Store::commit_audited`]); they
//! commit all-or-nothing with its writes. Reads are audited through
//! [`Store::append_audit`], which goes through the same group-commit writer (so many
//! reads share one fsync) and returns once the records are durable. (The SQLite backend
//! makes them durable in an append-only journal file and moves them into the database in
//! bulk, see `journal`; queries always see them.) The log is
//! append-only and hash-chained: the single writer gives each record the next `seq`
//! (gapless, starting at 1) and `hash = SHA-256(prev_hash ‖ seq ‖ recorded ‖ event)`, see
//! [`audit_hash`]. Records of a job that fails (precondition or database error) are not
//! stored and not chained.
//!
//! # Care links
//! Each [`Write`] carries the [`CareLink`]s its resource establishes (an encounter, an
//! appointment, a referral, care-team membership, a consent that denies access …). The
//! store keeps, per resource, the links of its current version only: a write replaces
//! them, a deletion removes them, atomically with the write. [`Store::care_links`] lists
//! a patient's links; access policy decides with them.

pub mod codec;
mod journal;
pub mod postgres;
pub mod search;
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
    /// The care links this version establishes; they replace the resource's previous
    /// ones (ignored for a deletion, which removes them).
    pub links: Vec<CareLink>,
    /// The search index entries of this version (`tessera_search::index_resource`); they
    /// replace the resource's previous ones (ignored for a deletion, which removes them).
    pub index: Vec<tessera_search::IndexEntry>,
}

/// A relationship between a patient and an organisation, location and/or practitioner,
/// established by a resource (its source): the index behind relationship-based access.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CareLink {
    /// `"encounter"`, `"appointment"`, `"referral"`, `"care-team"`, `"consent-deny"`, …
    pub kind: String,
    /// The patient id (as in [`Write::compartment`]).
    pub patient: String,
    /// Organization id (the `…` of `Organization/…`).
    pub organisation: Option<String>,
    /// Location id.
    pub location: Option<String>,
    /// Practitioner id (the user, for domain users).
    pub practitioner: Option<String>,
    /// Start and end of the relationship (microseconds since the epoch), if known.
    pub start_micros: Option<i64>,
    pub end_micros: Option<i64>,
    pub active: bool,
}

/// An audit record to append (see [`Store::commit_audited`], [`Store::append_audit`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewAudit {
    /// When the audited event happened (microseconds since the epoch).
    pub recorded_micros: i64,
    /// Who acted (e.g. `Practitioner/123`), if known.
    pub user: Option<String>,
    /// Ids of the patients whose data the event concerns.
    pub patients: Vec<String>,
    /// `"read"`, `"search"`, `"create"`, `"update"`, `"delete"`, `"break-glass"`, `"login"`,
    /// `"denied"`, …
    pub action: String,
    pub break_glass: bool,
    /// The FHIR AuditEvent, as JSON.
    pub event: Vec<u8>,
}

/// A stored audit record.
///
/// `user`, `patients`, `action` and `break_glass` are index columns for queries; the
/// record itself is `event`, which the hash covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Position in the chain: 1, 2, 3, … without gaps.
    pub seq: i64,
    pub recorded_micros: i64,
    pub user: Option<String>,
    pub patients: Vec<String>,
    pub action: String,
    pub break_glass: bool,
    /// The hash of the record before (32 zero bytes for the first).
    pub prev_hash: Vec<u8>,
    /// [`audit_hash`] of this record.
    pub hash: Vec<u8>,
    /// The FHIR AuditEvent, as JSON.
    pub event: Vec<u8>,
}

/// Which audit records to list (newest first). All criteria combine with AND.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    pub user: Option<String>,
    /// Records concerning this patient id.
    pub patient: Option<String>,
    /// `recorded >= since` (microseconds).
    pub since_micros: Option<i64>,
    /// `recorded < until` (microseconds).
    pub until_micros: Option<i64>,
    pub break_glass_only: bool,
    pub action: Option<String>,
    /// Only records with `seq < before_seq` (paging cursor).
    pub before_seq: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// The `prev_hash` of the first audit record.
pub const AUDIT_GENESIS_HASH: [u8; 32] = [0; 32];

/// The hash of an audit record:
/// `SHA-256(prev_hash ‖ seq ‖ recorded_micros ‖ event)`, where `seq` and `recorded_micros`
/// are 8-byte big-endian two's-complement integers and `event` the AuditEvent JSON bytes
/// exactly as stored (uncompressed).
pub fn audit_hash(prev_hash: &[u8], seq: i64, recorded_micros: i64, event: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(prev_hash);
    h.update(seq.to_be_bytes());
    h.update(recorded_micros.to_be_bytes());
    h.update(event);
    h.finalize().into()
}

/// An audit record on its way to the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingAudit {
    pub recorded_micros: i64,
    pub user: Option<String>,
    /// Distinct, sorted.
    pub patients: Vec<String>,
    pub action: String,
    pub break_glass: bool,
    /// As given (and hashed).
    pub event: Vec<u8>,
    /// The event as the database stores it (compressed), made by the caller so that the
    /// single writer does not; `None` when recovered from the journal.
    pub stored: Option<Vec<u8>>,
}

impl PendingAudit {
    pub(crate) fn prepare(audit: Vec<NewAudit>) -> Vec<PendingAudit> {
        audit
            .into_iter()
            .map(|a| {
                let mut patients = a.patients;
                patients.sort();
                patients.dedup();
                PendingAudit {
                    recorded_micros: a.recorded_micros,
                    user: a.user,
                    patients,
                    action: a.action,
                    break_glass: a.break_glass,
                    stored: codec::encode_audit(&a.event).ok(),
                    event: a.event,
                }
            })
            .collect()
    }

    /// The event as stored in the database (compressed, see [`codec::encode_audit`]).
    pub(crate) fn stored_event(&self) -> Result<Vec<u8>> {
        match &self.stored {
            Some(stored) => Ok(stored.clone()),
            None => codec::encode_audit(&self.event),
        }
    }

    /// The patients, as stored in the `audit_log.patients` column (a JSON array, or none).
    pub(crate) fn patients_column(&self) -> Option<String> {
        (!self.patients.is_empty()).then(|| serde_json::to_string(&self.patients).unwrap_or_default())
    }
}

/// The head of the audit chain: the last record's `seq` and hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub seq: i64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub(crate) const GENESIS: ChainHead = ChainHead { seq: 0, hash: AUDIT_GENESIS_HASH };

    pub(crate) fn from_stored(seq: i64, hash: &[u8]) -> Result<ChainHead> {
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Backend(format!("audit record {seq} has a hash of {} bytes, not 32", hash.len())))?;
        Ok(ChainHead { seq, hash })
    }

    /// Chains `a` after this head: returns its `(seq, prev_hash, hash)` and advances.
    pub(crate) fn chain(&mut self, a: &PendingAudit) -> (i64, [u8; 32], [u8; 32]) {
        let seq = self.seq + 1;
        let prev = self.hash;
        let hash = audit_hash(&prev, seq, a.recorded_micros, &a.event);
        *self = ChainHead { seq, hash };
        (seq, prev, hash)
    }
}

/// Parses the `audit_log.patients` column.
pub(crate) fn parse_patients(column: Option<&str>) -> Result<Vec<String>> {
    match column {
        None | Some("") => Ok(Vec::new()),
        Some(text) => serde_json::from_str(text)
            .map_err(|e| StoreError::Backend(format!("malformed patients in audit_log: {e}"))),
    }
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
    /// Audit records appended.
    pub audit_records: AtomicU64,
}

impl StoreMetrics {
    pub fn record_batch(&self, transactions: u64, writes: u64) {
        self.commit_batches.fetch_add(1, Ordering::Relaxed);
        self.transactions.fetch_add(transactions, Ordering::Relaxed);
        self.writes.fetch_add(writes, Ordering::Relaxed);
    }

    pub fn record_audit(&self, records: u64) {
        self.audit_records.fetch_add(records, Ordering::Relaxed);
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
    async fn commit(&self, tx: Transaction) -> Result<()> {
        self.commit_audited(tx, Vec::new()).await
    }
    /// Commits all writes and appends the audit records, or does neither (if a
    /// precondition fails, the audit records are not stored either: audit the failure
    /// with [`Store::append_audit`]). Returns once durable.
    async fn commit_audited(&self, tx: Transaction, audit: Vec<NewAudit>) -> Result<()>;
    /// Appends audit records (of reads, searches, logins, refusals …) through the
    /// group-commit writer. Returns once durable.
    async fn append_audit(&self, audit: Vec<NewAudit>) -> Result<()> {
        self.commit_audited(Vec::new(), audit).await
    }
    /// Audit records matching the query, newest first.
    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// Audit records with `seq > after_seq`, oldest first (for verifying the chain).
    async fn audit_scan(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>>;
    /// The care links of a patient established by the current versions of resources
    /// (whatever their period or `active` flag).
    async fn care_links(&self, patient: &str) -> Result<Vec<CareLink>>;
    /// The resources (`(type, id)`, sorted) whose current version has an ongoing (active,
    /// no end) care link of `kind` at `location`: the worklist of a ward or clinic.
    async fn ongoing_at(&self, location: &str, kind: &str) -> Result<Vec<(String, String)>>;
    /// The `seq`s of the current versions matching a search, in the query's order.
    async fn search(&self, query: &search::IndexQuery) -> Result<Vec<i64>>;
    /// The versions with these `seq`s, in the order given (missing ones left out).
    async fn load(&self, seqs: &[i64]) -> Result<Vec<Stored>>;
    /// Rebuilding the search index (`tessera reindex`, after the definitions change): removes
    /// every index row.
    async fn clear_search_index(&self) -> Result<()>;
    /// Indexes the current versions with `seq > after_seq`, up to `limit` of them, in one
    /// transaction; returns the last `seq` done and how many, or `None` when none are left.
    async fn reindex_chunk(&self, after_seq: i64, limit: usize) -> Result<Option<(i64, usize)>>;
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
