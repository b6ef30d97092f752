//! The audit trail.
//!
//! * [`event`]: builds IHE BALP-style FHIR R4 `AuditEvent`s ([`audit_event`]) and the
//!   [`NewAudit`](tessera_store::NewAudit) records that carry them into the store
//!   ([`new_audit`]). The store keeps each event in compact form ([`encode_record`]: what
//!   happened, who, to which resources and patients); [`render_record`] turns a stored
//!   record back into its AuditEvent when the log is read.
//! * [`verify`](verify()): walks the store's hash-chained audit log and reports every
//!   record that was altered, deleted, moved, hidden from queries (its index columns or
//!   by-patient index rows changed) or lost (a damaged read journal, a tail cut off: with
//!   the [`Anchor`] kept outside the database, [`load_anchor`]), naming each by its `seq`.
//! * [`columns_of`]: the index columns a stored event implies.
//!
//! The log itself lives in the store (`tessera_store::Store::commit_audited`,
//! `append_audit`, `audit_query`, `audit_scan`); see `tessera_store::audit_hash` for the
//! chain's definition.

pub mod columns;
pub mod event;
pub mod verify;

pub use columns::{columns_of, Columns};

pub use event::{
    audit_event, encode_record, new_audit, redacted_entity, redacted_query_entity, render_record, Agent, Coded, EventInput, EventKind,
    Interaction, Outcome, Who, DATA_CLASS_SYSTEM, REDACTED,
};
pub use verify::{load_anchor, verify, verify_with, Anchor, ChainProblem, ProblemKind, VerifyOptions, VerifyReport};

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error(transparent)]
    Store(#[from] tessera_store::StoreError),
}
