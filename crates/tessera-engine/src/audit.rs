//! The AuditEvent of an access (IHE BALP style, built by `tessera-audit`) for the
//! hash-chained audit log.

use crate::access::{Access, AccessKind};
use tessera_audit::{Agent, Coded, EventInput, EventKind, Interaction, Outcome, Who};

fn interaction(name: &str) -> Interaction {
    match name {
        "read" => Interaction::Read,
        "vread" => Interaction::Vread,
        "update" => Interaction::Update,
        "patch" => Interaction::Patch,
        "delete" => Interaction::Delete,
        "history-instance" => Interaction::HistoryInstance,
        "history-type" => Interaction::HistoryType,
        "history-system" => Interaction::HistorySystem,
        "create" => Interaction::Create,
        "search-type" => Interaction::SearchType,
        "search-system" => Interaction::SearchSystem,
        "transaction" => Interaction::Transaction,
        "batch" => Interaction::Batch,
        other => Interaction::Operation(other.to_string()),
    }
}

/// The stored audit record of one access (its AuditEvent is rendered when read).
pub fn event(access: &Access, name: &str, outcome_ok: bool, entities: &[String], patients: &[String], break_glass: bool, detail: Option<&str>) -> Vec<u8> {
    let who = match access.kind {
        AccessKind::User => Who::Practitioner(access.subject.clone()),
        AccessKind::System => Who::Device(access.subject.clone()),
        AccessKind::Patient => Who::Reference(access.reference()),
    };
    let role = access.role.as_ref().map(|r| Coded { system: "https://tessera.health/role".into(), code: r.clone(), display: None });
    let kind = match name {
        "break-glass" => EventKind::BreakGlass,
        "login" => EventKind::Login,
        _ => EventKind::Rest(interaction(name)),
    };
    let input = EventInput {
        kind,
        recorded_micros: tessera_store::now_micros(),
        outcome: if outcome_ok { Outcome::Success } else { Outcome::MinorFailure },
        outcome_desc: if matches!(name, "transmit" | "outbox-replay") {
            // A delivery of the outbox: to whom, and what happened.
            detail.map(str::to_string)
        } else if outcome_ok {
            // A write's note: the patient index's decision, a merge's summary.
            detail.filter(|_| matches!(name, "create" | "update" | "transaction" | "batch" | "$merge" | "$unmerge" | "$resolve" | "$migrate-preview" | "$change-request" | "$approve" | "$apply" | "$withdraw" | "$onboard" | "$upgrade")).map(str::to_string)
        } else {
            Some("not found or not permitted".to_string())
        },
        denied: !outcome_ok,
        agent: Agent { who, name: Some(access.name.clone()), role, organisation: Some(access.organisation.as_str()).filter(|o| !o.is_empty()).map(|o| format!("Organization/{o}")), network_address: None },
        resources: entities.to_vec(),
        patients: patients.to_vec(),
        query: detail.filter(|_| name.starts_with("search")).map(str::to_string),
        break_glass: if break_glass { Some(detail.unwrap_or("break-glass").to_string()) } else { None },
        site: access.location.clone(),
    };
    tessera_audit::encode_record(&input)
}
