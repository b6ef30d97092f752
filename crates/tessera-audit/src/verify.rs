//! Verification of the hash-chained audit log.
//!
//! The store gives each audit record a gapless `seq` (1, 2, 3, …) and
//! `hash = SHA-256(prev_hash ‖ seq ‖ recorded ‖ event)` where `prev_hash` is the hash of
//! the record before (32 zero bytes for the first), see [`tessera_store::audit_hash`].
//! [`verify`] walks the whole log, oldest first and page by page, and checks, for each
//! record:
//!
//! 1. its `seq` is the one after the previous record's: a gap means records were deleted;
//! 2. its `prev_hash` is the previous record's hash: otherwise records were deleted and
//!    renumbered, inserted or moved;
//! 3. its hash is the hash of its content: otherwise its event or time was altered (or
//!    swapped with another record's);
//! 4. its index columns (`user`, `patients`, `break_glass`, `action`: what audit queries
//!    filter on, which the hash does not cover) are those its event implies
//!    ([`crate::columns_of`]): otherwise the record was hidden from (or planted in) queries
//!    by user, patient, break-glass or action;
//! 5. the by-patient index (what `Patient/[id]/$access-log` reads) holds a row for each of
//!    its patients, as far as the store says the index is complete;
//! 6. it is not a record of damage the store found and recorded itself
//!    ([`tessera_store::AuditDamage`]: a damaged read journal, records the anchor saw
//!    that were gone) — those are reported as they say.
//!
//! After the walk, it checks that the by-patient index holds no row that no record
//! implies, and, given an [`Anchor`] (the head of the chain as kept outside the database,
//! see [`tessera_store::anchor`] and [`load_anchor`]), that the chain still reaches it with
//! the same hash: records removed from the *end* of the log leave no trace in the chain
//! itself.
//!
//! A break in the chain (1–3, or the anchor's record differing) ends the walk: what
//! follows cannot be trusted to be in place. Other problems are noted and the walk goes
//! on. The report lists every problem found (up to [`VerifyOptions::max_problems`]),
//! lowest `seq` first, each naming its record and its [`ProblemKind`].

use crate::columns::columns_of;
use crate::AuditError;
use std::path::Path;
use tessera_store::{audit_hash, AuditDamage, AuditRecord, DamageKind, Store, AUDIT_GENESIS_HASH};

/// A head of the chain seen earlier (kept in the anchor file, or noted from an earlier
/// verification).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: Vec<u8>,
}

/// Reads the anchor file at `path`, checking its signature with the key at `key` (by
/// default the anchor's path with `.key` appended). `Ok(None)` if there is no anchor;
/// an error if it cannot be read or is not validly signed.
pub fn load_anchor(path: &Path, key: Option<&Path>) -> Result<Option<Anchor>, String> {
    use tessera_store::anchor::{self, AnchorState};
    let key_path = key.map(Path::to_path_buf).unwrap_or_else(|| anchor::key_path(path));
    let key =
        anchor::read_key(&key_path).map_err(|e| format!("cannot read the anchor key {}: {e}", key_path.display()))?;
    match anchor::read(path, &key).map_err(|e| format!("cannot read the anchor {}: {e}", path.display()))? {
        AnchorState::Missing => Ok(None),
        AnchorState::Valid(h) => Ok(Some(Anchor { seq: h.seq, hash: h.hash.to_vec() })),
        AnchorState::Invalid(why) => Err(format!("the anchor {} is not valid: {why}", path.display())),
    }
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Records fetched per page.
    pub page_size: usize,
    /// A head recorded earlier: the chain must still contain it.
    pub anchor: Option<Anchor>,
    /// Problems listed at most (the others are counted).
    pub max_problems: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { page_size: 1000, anchor: None, max_problems: 100 }
    }
}

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A record's content does not match its hash (event or time altered, or swapped).
    Altered,
    /// Records are missing before this one (a gap in `seq`: deleted).
    Missing,
    /// A record does not link to the one before it (deleted and renumbered, inserted,
    /// reordered, or the previous record's hash was rewritten).
    BrokenLink,
    /// Records are not in `seq` order (a duplicate or lower `seq`).
    OutOfOrder,
    /// The anchor's record has another hash: the chain was rewritten.
    AnchorMismatch,
    /// The chain ends before the anchor: records were removed from its end.
    Truncated,
    /// A record's index columns (user, patients, break-glass, action) disagree with its
    /// event: it would be missing from (or wrongly in) audit queries.
    ColumnMismatch,
    /// The by-patient index lacks a row for one of a record's patients: it is missing
    /// from that patient's access log.
    MissingIndexRow,
    /// The by-patient index has a row no record implies.
    ExtraIndexRow,
    /// The store found the SQLite read journal damaged and recorded so: records were lost.
    JournalDamage,
    /// The store found its anchor missing or invalid and recorded so.
    AnchorInvalid,
}

impl ProblemKind {
    /// A short name, as `tessera audit verify` prints it.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Altered => "altered",
            ProblemKind::Missing => "deleted (gap)",
            ProblemKind::BrokenLink => "broken link (deleted, inserted or reordered)",
            ProblemKind::OutOfOrder => "reordered",
            ProblemKind::AnchorMismatch => "rewritten (differs from the anchor)",
            ProblemKind::Truncated => "truncated tail",
            ProblemKind::ColumnMismatch => "column mismatch",
            ProblemKind::MissingIndexRow => "missing index row",
            ProblemKind::ExtraIndexRow => "extra index row",
            ProblemKind::JournalDamage => "journal damage",
            ProblemKind::AnchorInvalid => "anchor missing or invalid",
        }
    }

    /// Does this problem break the chain (nothing after it can be trusted)?
    pub fn breaks_chain(self) -> bool {
        matches!(
            self,
            ProblemKind::Altered
                | ProblemKind::Missing
                | ProblemKind::BrokenLink
                | ProblemKind::OutOfOrder
                | ProblemKind::AnchorMismatch
        )
    }
}

/// One problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProblem {
    /// The first bad record (for [`ProblemKind::Missing`], [`ProblemKind::Truncated`] and
    /// [`ProblemKind::JournalDamage`], the first record lost).
    pub seq: i64,
    pub kind: ProblemKind,
    pub message: String,
}

impl std::fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "seq {}: {}: {}", self.seq, self.kind.name(), self.message)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose place in the chain verified (those before the first break).
    pub records: u64,
    /// `seq` of the last of them (0 if none).
    pub last_seq: i64,
    /// Hash of that record (32 zero bytes if none): with `last_seq`, an [`Anchor`].
    pub head_hash: Vec<u8>,
    /// The first problem (lowest `seq`), if any.
    pub problem: Option<ChainProblem>,
    /// Every problem found, lowest `seq` first (at most [`VerifyOptions::max_problems`]).
    pub problems: Vec<ChainProblem>,
    /// Problems found beyond those listed.
    pub more_problems: u64,
}

impl VerifyReport {
    /// Is the audit trail intact?
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }

    /// The head to keep as an [`Anchor`].
    pub fn anchor(&self) -> Anchor {
        Anchor { seq: self.last_seq, hash: self.head_hash.clone() }
    }

    /// A one-line summary.
    pub fn summary(&self) -> String {
        match &self.problem {
            None => format!("audit chain intact: {} records, head seq {}", self.records, self.last_seq),
            Some(p) => {
                let n = self.problems.len() as u64 + self.more_problems;
                format!(
                    "audit chain damaged: {n} problem{}; the first at seq {}: {}: {}",
                    if n == 1 { "" } else { "s" },
                    p.seq,
                    p.kind.name(),
                    p.message
                )
            }
        }
    }
}

/// Verifies the whole audit trail (see the [module](self) documentation).
pub async fn verify<S: Store + ?Sized>(store: &S) -> Result<VerifyReport, AuditError> {
    verify_with(store, &VerifyOptions::default()).await
}

/// [`verify`] with options.
pub async fn verify_with<S: Store + ?Sized>(store: &S, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let mut walk = Walk {
        records: 0,
        last_seq: 0,
        prev_hash: AUDIT_GENESIS_HASH.to_vec(),
        anchor_seen: false,
        broken: false,
        problems: Vec::new(),
        damage_run: None,
    };
    let page_size = options.page_size.max(1);
    // Read first: the index only grows, so what it covers now it covers during the walk.
    let indexed_upto = store.audit_index_upto().await?;
    let mut retries = 0;
    loop {
        let page = store.audit_scan(walk.last_seq, page_size).await?;
        let mut expected: Vec<(i64, String)> = Vec::new();
        for record in &page {
            if !walk.check(record, options.anchor.as_ref()) {
                break;
            }
            let patients = match columns_of(&record.event) {
                Some(columns) => {
                    let diff = columns.differences(record);
                    if !diff.is_empty() {
                        walk.problem(
                            record.seq,
                            ProblemKind::ColumnMismatch,
                            format!("record {}'s columns disagree with its event: {}", record.seq, diff.join("; ")),
                        );
                    }
                    columns.patients
                }
                None => {
                    walk.problem(
                        record.seq,
                        ProblemKind::ColumnMismatch,
                        format!("record {}'s event is not an audit event: its columns cannot be checked", record.seq),
                    );
                    record.patients.clone()
                }
            };
            if record.seq <= indexed_upto {
                expected.extend(patients.into_iter().map(|p| (record.seq, p)));
            }
        }
        if !expected.is_empty() {
            let found = store.audit_index_lookup(&expected).await?;
            for ((seq, patient), present) in expected.iter().zip(found) {
                if !present {
                    walk.problem(
                        *seq,
                        ProblemKind::MissingIndexRow,
                        format!(
                            "the by-patient index has no row for patient {patient:?} of record {seq}: it is missing from that patient's access log"
                        ),
                    );
                }
            }
        }
        if walk.broken {
            break;
        }
        if page.len() < page_size {
            // The end, unless the anchor says the chain goes further: look again (beside a
            // running SQLite server, records may have been moving from its journal into
            // the database while they were read).
            let short = options.anchor.as_ref().is_some_and(|a| a.seq > walk.last_seq);
            if short && retries < 3 {
                retries += 1;
                continue;
            }
            break;
        }
    }
    if !walk.broken {
        if let Some(anchor) = &options.anchor {
            if !walk.anchor_seen && anchor.seq > 0 {
                let (first, last) = (walk.last_seq + 1, anchor.seq);
                walk.problem(
                    first,
                    ProblemKind::Truncated,
                    format!(
                        "the chain ends at seq {} but the anchor saw it reach seq {last}: record{} {} {} removed",
                        walk.last_seq,
                        if first == last { "" } else { "s" },
                        if first == last { first.to_string() } else { format!("{first}..={last}") },
                        if first == last { "was" } else { "were" },
                    ),
                );
            }
        }
        if indexed_upto > walk.last_seq {
            walk.problem(
                walk.last_seq + 1,
                ProblemKind::MissingIndexRow,
                format!(
                    "the by-patient index claims to cover records up to seq {indexed_upto} but the log ends at seq {}: \
                     records after it would be missing from access logs",
                    walk.last_seq
                ),
            );
        }
    }
    for (seq, patient) in store.audit_index_extra(options.max_problems.max(1)).await? {
        walk.problem(
            seq,
            ProblemKind::ExtraIndexRow,
            format!("the by-patient index lists record {seq} for patient {patient:?}, which that record does not concern (or which does not exist)"),
        );
    }
    Ok(walk.report(options.max_problems))
}

/// How a damage record of the store is reported.
fn damage_kind(kind: DamageKind) -> ProblemKind {
    match kind {
        DamageKind::JournalCorrupt | DamageKind::JournalTruncated | DamageKind::JournalDeleted => {
            ProblemKind::JournalDamage
        }
        DamageKind::ChainTruncated => ProblemKind::Truncated,
        DamageKind::ChainRewritten => ProblemKind::AnchorMismatch,
        DamageKind::AnchorInvalid => ProblemKind::AnchorInvalid,
    }
}

struct Walk {
    records: u64,
    last_seq: i64,
    prev_hash: Vec<u8>,
    anchor_seen: bool,
    /// The chain broke: the walk ends.
    broken: bool,
    problems: Vec<ChainProblem>,
    /// The first `seq` of the run of journal placeholders being walked.
    damage_run: Option<i64>,
}

impl Walk {
    fn problem(&mut self, seq: i64, kind: ProblemKind, message: String) {
        if kind.breaks_chain() {
            self.broken = true;
        }
        self.problems.push(ChainProblem { seq, kind, message });
    }

    /// Checks a record's place in the chain (and reports the damage it records); `false`
    /// if the chain breaks here.
    fn check(&mut self, r: &AuditRecord, anchor: Option<&Anchor>) -> bool {
        let expected = self.last_seq + 1;
        if r.seq < expected {
            self.problem(
                r.seq,
                ProblemKind::OutOfOrder,
                format!(
                    "record {} comes after record {}: records are out of order or duplicated",
                    r.seq, self.last_seq
                ),
            );
            return false;
        }
        if r.seq > expected {
            let missing = if r.seq == expected + 1 {
                format!("record {expected} is")
            } else {
                format!("records {expected}..={} are", r.seq - 1)
            };
            self.problem(
                expected,
                ProblemKind::Missing,
                format!("{missing} missing (deleted): the chain jumps from seq {} to seq {}", self.last_seq, r.seq),
            );
            return false;
        }
        if r.prev_hash != self.prev_hash {
            let before = if self.last_seq == 0 {
                "the start of the chain".to_string()
            } else {
                format!("the hash of record {}", self.last_seq)
            };
            self.problem(
                r.seq,
                ProblemKind::BrokenLink,
                format!(
                    "record {} does not link to {before}: records before it were deleted, inserted or reordered, \
                     or its predecessor's hash was rewritten",
                    r.seq
                ),
            );
            return false;
        }
        let damage = AuditDamage::parse(&r.event);
        match &damage {
            // A stand-in for a record lost from the journal: it carries the lost record's
            // hash (so the chain links on), not the hash of its own content.
            Some(d) if d.placeholder => {
                if self.damage_run.is_none_or(|first| first != d.first) {
                    self.damage_run = Some(d.first);
                    // Reported, not a break: the chain links on through it.
                    let kind = match damage_kind(d.kind) {
                        ProblemKind::Truncated => ProblemKind::Missing,
                        other => other,
                    };
                    self.problems.push(ChainProblem {
                        seq: r.seq,
                        kind,
                        message: format!("record {}: {}", r.seq, d.message),
                    });
                }
            }
            _ => {
                self.damage_run = None;
                if r.hash != audit_hash(&r.prev_hash, r.seq, r.recorded_micros, &r.event) {
                    self.problem(
                        r.seq,
                        ProblemKind::Altered,
                        format!("record {} was altered: its content (event or time) does not match its hash", r.seq),
                    );
                    return false;
                }
                if let Some(d) = &damage {
                    // Reported, not a break: the record itself is sound.
                    self.problems.push(ChainProblem {
                        seq: d.first,
                        kind: damage_kind(d.kind),
                        message: format!("recorded by the server in record {}: {}", r.seq, d.message),
                    });
                }
            }
        }
        if let Some(anchor) = anchor {
            if anchor.seq == r.seq {
                if anchor.hash != r.hash {
                    self.problem(
                        r.seq,
                        ProblemKind::AnchorMismatch,
                        format!("record {} differs from the one the anchor saw: the chain was rewritten", r.seq),
                    );
                    return false;
                }
                self.anchor_seen = true;
            }
        }
        self.records += 1;
        self.last_seq = r.seq;
        self.prev_hash = r.hash.clone();
        true
    }

    fn report(mut self, max: usize) -> VerifyReport {
        self.problems.sort_by_key(|p| p.seq);
        let more = self.problems.len().saturating_sub(max) as u64;
        self.problems.truncate(max.max(1));
        VerifyReport {
            records: self.records,
            last_seq: self.last_seq,
            head_hash: self.prev_hash,
            problem: self.problems.first().cloned(),
            problems: self.problems,
            more_problems: more,
        }
    }
}
