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
//!    swapped with another record's).
//!
//! It stops at the first problem and reports that record's `seq`. Records removed from the
//! *end* of the log leave no trace in the chain itself: keep the head ([`VerifyReport`]'s
//! `last_seq` and `head_hash`) of an earlier verification somewhere else and pass it as
//! an [`Anchor`] to [`verify_with`] to detect that too.
//!
//! The index columns of a record (`user`, `patients`, `action`, `break_glass`) serve
//! queries and are not covered by the hash; the AuditEvent (`event`) is the record.
//! A record whose stored event cannot even be decoded makes the walk fail with a storage
//! error.

use crate::AuditError;
use tessera_store::{audit_hash, AuditRecord, Store, AUDIT_GENESIS_HASH};

/// A previously verified head of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    pub seq: i64,
    pub hash: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Records fetched per page.
    pub page_size: usize,
    /// A head recorded earlier: the chain must still contain it.
    pub anchor: Option<Anchor>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        VerifyOptions { page_size: 1000, anchor: None }
    }
}

/// What went wrong with the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A record's content does not match its hash (event or time altered, or swapped).
    Altered,
    /// Records are missing before this one (a gap in `seq`).
    Missing,
    /// A record does not link to the one before it (deleted and renumbered, inserted,
    /// reordered, or the previous record's hash was rewritten).
    BrokenLink,
    /// Records are not in `seq` order (a duplicate or lower `seq`).
    OutOfOrder,
    /// The anchor's record has another hash.
    AnchorMismatch,
    /// The chain ends before the anchor: records were removed from its end.
    Truncated,
}

/// The first problem found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainProblem {
    /// The first bad record (for [`ProblemKind::Missing`], the first missing one; for
    /// [`ProblemKind::Truncated`], the first record after the end of what is left).
    pub seq: i64,
    pub kind: ProblemKind,
    pub message: String,
}

impl std::fmt::Display for ChainProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records verified good (those before the first problem).
    pub records: u64,
    /// `seq` of the last good record (0 if none).
    pub last_seq: i64,
    /// Hash of the last good record (32 zero bytes if none): with `last_seq`, an
    /// [`Anchor`] for later verifications.
    pub head_hash: Vec<u8>,
    pub problem: Option<ChainProblem>,
}

impl VerifyReport {
    /// Is the chain intact?
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
            Some(p) => format!("audit chain broken at seq {}: {}", p.seq, p.message),
        }
    }
}

/// Verifies the whole audit chain (see the [module](self) documentation).
pub async fn verify<S: Store + ?Sized>(store: &S) -> Result<VerifyReport, AuditError> {
    verify_with(store, &VerifyOptions::default()).await
}

/// [`verify`] with options.
pub async fn verify_with<S: Store + ?Sized>(store: &S, options: &VerifyOptions) -> Result<VerifyReport, AuditError> {
    let mut walk = Walk { records: 0, last_seq: 0, prev_hash: AUDIT_GENESIS_HASH.to_vec(), anchor_seen: false };
    let page_size = options.page_size.max(1);
    loop {
        let page = store.audit_scan(walk.last_seq, page_size).await?;
        if page.is_empty() {
            break;
        }
        for record in &page {
            if let Some(problem) = walk.check(record, options.anchor.as_ref()) {
                return Ok(walk.report(Some(problem)));
            }
        }
        if page.len() < page_size {
            break;
        }
    }
    if let Some(anchor) = &options.anchor {
        if !walk.anchor_seen && anchor.seq > 0 {
            let problem = ChainProblem {
                seq: walk.last_seq + 1,
                kind: ProblemKind::Truncated,
                message: format!(
                    "the chain ends at seq {} but an earlier verification saw it reach seq {}: records {}..={} were removed",
                    walk.last_seq,
                    anchor.seq,
                    walk.last_seq + 1,
                    anchor.seq
                ),
            };
            return Ok(walk.report(Some(problem)));
        }
    }
    Ok(walk.report(None))
}

struct Walk {
    records: u64,
    last_seq: i64,
    prev_hash: Vec<u8>,
    anchor_seen: bool,
}

impl Walk {
    fn check(&mut self, r: &AuditRecord, anchor: Option<&Anchor>) -> Option<ChainProblem> {
        let expected = self.last_seq + 1;
        let problem = |kind, message| Some(ChainProblem { seq: r.seq, kind, message });
        if r.seq < expected {
            return problem(
                ProblemKind::OutOfOrder,
                format!(
                    "record {} comes after record {}: records are out of order or duplicated",
                    r.seq, self.last_seq
                ),
            );
        }
        if r.seq > expected {
            let missing = if r.seq == expected + 1 {
                format!("record {expected} is")
            } else {
                format!("records {expected}..={} are", r.seq - 1)
            };
            return Some(ChainProblem {
                seq: expected,
                kind: ProblemKind::Missing,
                message: format!(
                    "{missing} missing (deleted): the chain jumps from seq {} to seq {}",
                    self.last_seq, r.seq
                ),
            });
        }
        if r.prev_hash != self.prev_hash {
            let before = if self.last_seq == 0 {
                "the start of the chain".to_string()
            } else {
                format!("the hash of record {}", self.last_seq)
            };
            return problem(
                ProblemKind::BrokenLink,
                format!(
                    "record {} does not link to {before}: records before it were deleted, inserted or reordered, \
                     or its predecessor's hash was rewritten",
                    r.seq
                ),
            );
        }
        let hash = audit_hash(&r.prev_hash, r.seq, r.recorded_micros, &r.event);
        if r.hash != hash {
            return problem(
                ProblemKind::Altered,
                format!("record {} was altered: its content (event or time) does not match its hash", r.seq),
            );
        }
        if let Some(anchor) = anchor {
            if anchor.seq == r.seq {
                if anchor.hash != r.hash {
                    return problem(
                        ProblemKind::AnchorMismatch,
                        format!(
                            "record {} differs from the one an earlier verification saw: the chain was rewritten",
                            r.seq
                        ),
                    );
                }
                self.anchor_seen = true;
            }
        }
        self.records += 1;
        self.last_seq = r.seq;
        self.prev_hash = r.hash.clone();
        None
    }

    fn report(&self, problem: Option<ChainProblem>) -> VerifyReport {
        VerifyReport { records: self.records, last_seq: self.last_seq, head_hash: self.prev_hash.clone(), problem }
    }
}
