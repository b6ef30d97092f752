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
//! stored and not chained. The head of the chain is also kept outside the database, in a
//! signed [`anchor`] file, and exported ([`StoreMetrics::audit_head_seq`]); damage the
//! store finds (records the anchor saw that are gone, a damaged SQLite read journal) is
//! recorded in the chain itself ([`AuditDamage`]).
//!
//! # Care links
//! Each [`Write`] carries the [`CareLink`]s its resource establishes (an encounter, an
//! appointment, a referral, care-team membership, a consent that denies access …). The
//! store keeps, per resource, the links of its current version only: a write replaces
//! them, a deletion removes them, atomically with the write. [`Store::care_links`] lists
//! a patient's links; access policy decides with them.

pub mod anchor;
pub mod codec;
mod journal;
pub mod postgres;
pub mod schema;
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
/// record itself is `event`, which the hash covers (verification re-derives the columns
/// from it: `tessera_audit::columns_of`).
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

/// [`parse_patients`] for verification: a malformed column reads as one patient holding
/// its text (which then disagrees with the event).
pub(crate) fn parse_patients_lenient(column: Option<&str>) -> Vec<String> {
    parse_patients(column).unwrap_or_else(|_| vec![column.unwrap_or_default().to_string()])
}

/// The `action` of the records the store itself adds to the audit chain to report damage
/// it found ([`AuditDamage`]).
pub const AUDIT_DAMAGE_ACTION: &str = "audit-damage";
/// The extension (its URL) of such a record's AuditEvent that says what was damaged.
pub const AUDIT_DAMAGE_EXTENSION: &str = "https://tessera.health/fhir/StructureDefinition/audit-damage";
/// The subtype system of such a record's AuditEvent (code [`AUDIT_DAMAGE_ACTION`]).
pub const AUDIT_EVENT_SUBTYPE_SYSTEM: &str = "https://tessera.health/audit-event";

/// What kind of damage a damage record reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DamageKind {
    /// SQLite: frames of the read journal could not be read (corrupt), or are missing
    /// between readable ones.
    JournalCorrupt,
    /// SQLite: the journal file was cut short (it is never shortened by the server).
    JournalTruncated,
    /// SQLite: the journal file was gone after the server stopped without moving it into
    /// the database.
    JournalDeleted,
    /// The chain ended before the head the anchor saw: records were removed from its end.
    ChainTruncated,
    /// The chain's record at the anchor's `seq` has another hash: the chain was rewritten.
    ChainRewritten,
    /// The anchor file was missing (while its key was there) or not validly signed.
    AnchorInvalid,
}

impl DamageKind {
    pub fn code(self) -> &'static str {
        match self {
            DamageKind::JournalCorrupt => "journal-corrupt",
            DamageKind::JournalTruncated => "journal-truncated",
            DamageKind::JournalDeleted => "journal-deleted",
            DamageKind::ChainTruncated => "chain-truncated",
            DamageKind::ChainRewritten => "chain-rewritten",
            DamageKind::AnchorInvalid => "anchor-invalid",
        }
    }

    fn from_code(code: &str) -> Option<DamageKind> {
        [
            DamageKind::JournalCorrupt,
            DamageKind::JournalTruncated,
            DamageKind::JournalDeleted,
            DamageKind::ChainTruncated,
            DamageKind::ChainRewritten,
            DamageKind::AnchorInvalid,
        ]
        .into_iter()
        .find(|k| k.code() == code)
    }
}

/// Damage to the audit trail, as recorded in the chain by the store when it finds it (on
/// start: recovering the SQLite read journal, comparing the chain with its anchor). The
/// record is an AuditEvent (a DICOM "Security Alert", subtype
/// [`AUDIT_EVENT_SUBTYPE_SYSTEM`]|[`AUDIT_DAMAGE_ACTION`], serious failure, the message as
/// `outcomeDesc`) with the [`AUDIT_DAMAGE_EXTENSION`]; `tessera audit verify` reports
/// every such record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditDamage {
    pub kind: DamageKind,
    /// The first record lost or changed.
    pub first: i64,
    /// The last one, when known.
    pub last: Option<i64>,
    /// This record stands in for a lost record, at its `seq`: its `prev_hash` and `hash`
    /// are the lost record's (known from its neighbours in the journal), so the records
    /// after it still link, but its hash is not that of its content. What could be read
    /// of the lost record (user, patients, break-glass), if anything, is in its columns
    /// and AuditEvent, unverified.
    pub placeholder: bool,
    pub message: String,
}

/// A FHIR `instant` (UTC, microseconds) for microseconds since the epoch.
pub(crate) fn format_instant(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:06}Z", sod / 3600, sod % 3600 / 60, sod % 60)
}

impl AuditDamage {
    /// The record that reports this damage. `salvaged`: what could be read of a lost
    /// record (for a placeholder), which its columns and AuditEvent then carry.
    pub(crate) fn record(&self, recorded_micros: i64, salvaged: Option<&PendingAudit>) -> PendingAudit {
        use serde_json::json;
        const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
        const DEVICE: &str = "Device/tessera";
        let user = salvaged.and_then(|s| s.user.clone());
        let patients = salvaged.map(|s| s.patients.clone()).unwrap_or_default();
        let break_glass = salvaged.is_some_and(|s| s.break_glass);
        let mut agents = Vec::new();
        if let Some(u) = &user {
            agents.push(json!({"who": {"reference": u}, "requestor": true}));
        }
        agents.push(json!({
            "type": {"coding": [{"system": DCM, "code": "110150", "display": "Application"}]},
            "who": {"reference": DEVICE},
            "requestor": user.is_none(),
        }));
        let mut detail = vec![
            json!({"url": "kind", "valueCode": self.kind.code()}),
            json!({"url": "first", "valueString": self.first.to_string()}),
        ];
        if let Some(last) = self.last {
            detail.push(json!({"url": "last", "valueString": last.to_string()}));
        }
        detail.push(json!({"url": "placeholder", "valueBoolean": self.placeholder}));
        if let Some(s) = salvaged {
            detail.push(json!({"url": "salvagedAction", "valueString": s.action}));
            detail.push(json!({"url": "salvagedEvent", "valueString": String::from_utf8_lossy(&s.event)}));
        }
        let mut event = json!({
            "resourceType": "AuditEvent",
            "extension": [{"url": AUDIT_DAMAGE_EXTENSION, "extension": detail}],
            "type": {"system": DCM, "code": "110113", "display": "Security Alert"},
            "subtype": [{"system": AUDIT_EVENT_SUBTYPE_SYSTEM, "code": AUDIT_DAMAGE_ACTION, "display": "Audit trail damage"}],
            "action": "E",
            "recorded": format_instant(recorded_micros),
            "outcome": "8",
            "outcomeDesc": self.message,
            "agent": agents,
            "source": {"observer": {"reference": DEVICE}, "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]},
        });
        if break_glass {
            event["purposeOfEvent"] =
                json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG", "display": "break the glass"}]}]);
        }
        if !patients.is_empty() {
            event["entity"] = patients
                .iter()
                .map(|p| {
                    json!({
                        "what": {"reference": format!("Patient/{p}")},
                        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
                    })
                })
                .collect();
        }
        let event = serde_json::to_vec(&event).unwrap_or_default();
        PendingAudit {
            recorded_micros,
            user: Some(user.unwrap_or_else(|| DEVICE.to_string())),
            patients,
            action: AUDIT_DAMAGE_ACTION.to_string(),
            break_glass,
            stored: codec::encode_audit(&event).ok(),
            event,
        }
    }

    /// The damage a stored event reports, if it is a damage record.
    pub fn parse(event: &[u8]) -> Option<AuditDamage> {
        let v: serde_json::Value = serde_json::from_slice(event).ok()?;
        if v["resourceType"] != "AuditEvent" {
            return None;
        }
        let ext = v["extension"].as_array()?.iter().find(|e| e["url"] == AUDIT_DAMAGE_EXTENSION)?;
        let part = |name: &str| ext["extension"].as_array().and_then(|a| a.iter().find(|e| e["url"] == name)).cloned();
        let kind = DamageKind::from_code(part("kind")?["valueCode"].as_str()?)?;
        let first = part("first")?["valueString"].as_str()?.parse().ok()?;
        let last = part("last").and_then(|l| l["valueString"].as_str()?.parse().ok());
        let placeholder = part("placeholder").and_then(|p| p["valueBoolean"].as_bool()).unwrap_or(false);
        let message = v["outcomeDesc"].as_str().unwrap_or_default().to_string();
        Some(AuditDamage { kind, first, last, placeholder, message })
    }
}


/// A notification to deliver, added to the outbox in the transaction of the change it
/// notifies (see [`Store::commit_outbox`]): the change and its notifications commit together
/// or not at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// The id of the `Subscription` that asked for it.
    pub subscription: String,
    pub resource_type: String,
    pub resource_id: String,
    pub version: u64,
    /// The patient compartment of the resource (the Patient's own id for a Patient; `""`
    /// for a resource outside every compartment): delivery is in order per subscription
    /// and patient, and the table is distributed by it.
    pub patient: String,
    pub created_micros: i64,
}

/// Where an outbox item stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutboxState {
    /// Not attempted yet.
    Pending,
    /// Attempted and failed; retried at `next_attempt_micros`.
    Failed,
    /// Delivered (the receiver acknowledged it).
    Delivered,
    /// Not delivered, and never will be: the subscriber's view may not see the resource, or
    /// it no longer matches the criteria.
    Suppressed,
    /// Failed too often: on the dead-letter list until an operator replays it.
    Dead,
}

impl OutboxState {
    pub const ALL: [OutboxState; 5] = [OutboxState::Pending, OutboxState::Failed, OutboxState::Delivered, OutboxState::Suppressed, OutboxState::Dead];

    pub fn code(self) -> &'static str {
        match self {
            OutboxState::Pending => "pending",
            OutboxState::Failed => "failed",
            OutboxState::Delivered => "delivered",
            OutboxState::Suppressed => "suppressed",
            OutboxState::Dead => "dead",
        }
    }

    pub fn parse(code: &str) -> Option<OutboxState> {
        OutboxState::ALL.into_iter().find(|s| s.code() == code)
    }

    /// Still to be delivered (pending or to be retried).
    pub fn is_open(self) -> bool {
        matches!(self, OutboxState::Pending | OutboxState::Failed)
    }
}

/// A stored outbox item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Position in the outbox (increasing in commit order): the item's id.
    pub seq: i64,
    pub item: OutboxItem,
    pub state: OutboxState,
    pub attempts: u32,
    /// When the next attempt is due (microseconds since the epoch).
    pub next_attempt_micros: i64,
    pub last_error: Option<String>,
    pub updated_micros: i64,
}

/// Which outbox items to list, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxQuery {
    /// Only items in one of these states (none: every state).
    pub states: Vec<OutboxState>,
    /// Only items with `seq > after_seq`.
    pub after_seq: i64,
    pub limit: usize,
    /// Only the oldest open (pending or failed) item of each subscription and patient: what
    /// the delivery worker may attempt (with `states` empty).
    pub heads_only: bool,
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
    /// A query ran longer than the query timeout ([`set_query_timeout`]) and was stopped.
    #[error("the query ran longer than {0:?} and was stopped")]
    TooCostly(std::time::Duration),
}

static QUERY_TIMEOUT_MS: AtomicU64 = AtomicU64::new(0);

/// How long one database query may run before it is stopped (PostgreSQL
/// `statement_timeout` on connections opened after this call; SQLite: a progress handler
/// on every read). Default: none (`tessera serve` sets one; maintenance commands run
/// unbounded).
pub fn set_query_timeout(timeout: std::time::Duration) {
    QUERY_TIMEOUT_MS.store(timeout.as_millis().clamp(1, u64::MAX as u128) as u64, Ordering::Relaxed);
}

/// The current query timeout (`None`: unbounded).
pub fn query_timeout() -> Option<std::time::Duration> {
    match QUERY_TIMEOUT_MS.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(std::time::Duration::from_millis(ms)),
    }
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
    /// `seq` of the head of the audit chain as this process last saw it (export as
    /// `tessera_audit_head_seq`; 0 until known).
    pub audit_head_seq: std::sync::atomic::AtomicI64,
    /// Why the last group commit failed, until one succeeds again (the server is then
    /// unhealthy: it cannot record writes or their audit).
    pub write_failure: std::sync::Mutex<Option<String>>,
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

    /// A group commit succeeded: writes work.
    pub fn record_commit_ok(&self) {
        let mut f = self.write_failure.lock().unwrap_or_else(|p| p.into_inner());
        if f.is_some() {
            tracing::info!("group commits succeed again");
            *f = None;
        }
    }

    /// A group commit failed as a whole.
    pub fn record_commit_failure(&self, error: &str) {
        *self.write_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(error.to_string());
    }

    /// Why writes are failing, if they are.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
    async fn commit_audited(&self, tx: Transaction, audit: Vec<NewAudit>) -> Result<()> {
        self.commit_outbox(tx, audit, Vec::new()).await
    }
    /// [`Store::commit_audited`], with outbox items added in the same database
    /// transaction: stored if and only if the writes are.
    async fn commit_outbox(&self, tx: Transaction, audit: Vec<NewAudit>, outbox: Vec<OutboxItem>) -> Result<()>;
    /// Outbox items, oldest first.
    async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxEntry>>;
    /// Records the outcome of a delivery attempt (state, attempts, next attempt, error) of
    /// the item `entry.seq`.
    async fn outbox_update(&self, entry: &OutboxEntry) -> Result<()>;
    /// Puts items back on the queue (state pending, attempts 0, due now): those of `seqs`
    /// that are dead, failed or suppressed, or every dead item when `seqs` is empty. Returns
    /// the items it changed, as they were.
    async fn outbox_replay(&self, seqs: &[i64]) -> Result<Vec<OutboxEntry>>;
    /// Appends audit records (of reads, searches, logins, refusals …) through the
    /// group-commit writer. Returns once durable.
    async fn append_audit(&self, audit: Vec<NewAudit>) -> Result<()> {
        self.commit_audited(Vec::new(), audit).await
    }
    /// Audit records matching the query, newest first.
    async fn audit_query(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>>;
    /// Audit records with `seq > after_seq`, oldest first (for verifying the chain). A
    /// damaged row does not fail the scan: an event that cannot be decompressed comes as
    /// stored (its hash then fails), a malformed `patients` column as one patient holding
    /// the column's text (it then disagrees with the event).
    async fn audit_scan(&self, after_seq: i64, limit: usize) -> Result<Vec<AuditRecord>>;
    /// Of these `(seq, patient)` pairs, which the by-patient index of the log holds (for
    /// verification), in the order given.
    async fn audit_index_lookup(&self, pairs: &[(i64, String)]) -> Result<Vec<bool>>;
    /// Rows of the by-patient index that no record implies (no record with that `seq`, or
    /// one whose `patients` do not list the patient), lowest `seq` first, at most `limit`.
    async fn audit_index_extra(&self, limit: usize) -> Result<Vec<(i64, String)>>;
    /// The `seq` up to which the by-patient index is complete: queries by patient use it
    /// up to there and scan the records after it (SQLite builds it in bulk; PostgreSQL
    /// with each record, so there it is the head).
    async fn audit_index_upto(&self) -> Result<i64>;
    /// Keeps the head of the audit chain in a signed anchor file at `path` too (see
    /// [`anchor`]): checks the file against the chain first (recording any damage it shows
    /// in the chain), then updates it. PostgreSQL only: the SQLite backend always keeps its
    /// anchor in the data directory.
    async fn set_audit_anchor(&self, path: &std::path::Path) -> Result<()>;
    /// The care links of a patient established by the current versions of resources
    /// (whatever their period or `active` flag).
    async fn care_links(&self, patient: &str) -> Result<Vec<CareLink>>;
    /// The resources (`(type, id)`, sorted) whose current version has an ongoing (active,
    /// no end) care link of `kind` at `location`: the worklist of a ward or clinic.
    async fn ongoing_at(&self, location: &str, kind: &str) -> Result<Vec<(String, String)>>;
    /// The `seq`s of the current versions matching a search, in the query's order.
    async fn search(&self, query: &search::IndexQuery) -> Result<Vec<i64>>;
    /// The number of current versions matching a search (order, offset and limit ignored).
    /// Every live resource of one type is counted in constant time: the writer keeps a count
    /// per type in the transaction that changes it.
    async fn count(&self, query: &search::IndexQuery) -> Result<u64>;
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

/// Opens the store for a command that runs beside a server: on SQLite read-only (plus
/// settings) and without touching the owner's writer or audit journal
/// ([`sqlite::SqliteStore::open_shared`]); PostgreSQL is shared by design.
pub async fn open_shared(data_dir: &std::path::Path, database_url: Option<&str>) -> Result<DynStore> {
    match database_url {
        Some(url) => Ok(Arc::new(postgres::PostgresStore::connect(url).await?)),
        None => match sqlite::SqliteStore::open(data_dir) {
            // Nobody owns the directory: open it as its owner (it may be new).
            Ok(store) => Ok(Arc::new(store)),
            Err(_) if data_dir.join("tessera.db").exists() => Ok(Arc::new(sqlite::SqliteStore::open_shared(data_dir)?)),
            Err(e) => Err(e),
        },
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
