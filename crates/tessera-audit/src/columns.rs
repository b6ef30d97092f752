//! The index columns of an audit record, re-derived from its event.
//!
//! The store keeps, beside each record's event, the columns that audit queries filter on:
//! `user` (`AuditEvent?agent=`), `patients` (`Patient/[id]/$access-log`, `AuditEvent?patient=`,
//! and the by-patient index built from them), `break_glass` (`AuditEvent?purpose=BTG`, the
//! review queue) and `action` (`AuditEvent?action=`). The chain's hash covers the event
//! (and `recorded`), not these columns; [`columns_of`] says what they must be, so that
//! verification can report a row whose columns were changed.
//!
//! Two forms of event are understood: the compact [`EventInput`] the engine stores, and
//! complete FHIR AuditEvents (older records, and the damage records of the store, see
//! `tessera_store::AuditDamage`).

use crate::event::{EventInput, EventKind, Interaction};
use serde_json::Value;

/// What the index columns of a record must hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    /// The user column's possible values (the first is the one shown).
    pub users: Vec<Option<String>>,
    /// Distinct, sorted.
    pub patients: Vec<String>,
    pub break_glass: bool,
    /// The actions the record may be indexed under: the interaction's name (what the
    /// engine indexes: `read`, `vread`, `search-type`, `everything`, `break-glass`, …) and
    /// its short label ([`EventInput::action_label`], what [`crate::new_audit`] indexes:
    /// `read`, `search`, `denied`, …).
    pub actions: Vec<String>,
}

impl Columns {
    /// How the stored columns of `r` differ from these, one phrase per column (empty if
    /// they agree).
    pub fn differences(&self, r: &tessera_store::AuditRecord) -> Vec<String> {
        let mut out = Vec::new();
        if !self.users.contains(&r.user) {
            let event = self.users.first().cloned().flatten();
            out.push(format!("user is {} but the event's is {}", show(r.user.as_deref()), show(event.as_deref())));
        }
        if r.patients != self.patients {
            out.push(format!("patients are {:?} but the event's are {:?}", r.patients, self.patients));
        }
        if r.break_glass != self.break_glass {
            out.push(format!(
                "break-glass is {} but the event {} a break-glass access",
                r.break_glass,
                if self.break_glass { "is" } else { "is not" }
            ));
        }
        if !self.actions.contains(&r.action) {
            out.push(format!("action is {:?} but the event's is {}", r.action, self.actions.join(" or ")));
        }
        out
    }
}

fn show(v: Option<&str>) -> String {
    v.map_or_else(|| "empty".to_string(), |s| format!("{s:?}"))
}

/// The columns `event` implies, or `None` if it is neither form of audit event.
pub fn columns_of(event: &[u8]) -> Option<Columns> {
    if let Ok(input) = serde_json::from_slice::<EventInput>(event) {
        return Some(of_input(&input));
    }
    let v: Value = serde_json::from_slice(event).ok()?;
    (v["resourceType"] == "AuditEvent").then(|| of_audit_event(&v))
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// The name of an interaction as the engine indexes it (`Gate::record`).
fn interaction_name(i: &Interaction) -> String {
    match i {
        Interaction::Operation(name) => name.trim_start_matches('$').to_string(),
        other => other.code().to_string(),
    }
}

fn of_input(e: &EventInput) -> Columns {
    let name = match &e.kind {
        EventKind::Rest(i) | EventKind::PatientRecord(i) => interaction_name(i),
        EventKind::Login => "login".into(),
        EventKind::Logout => "logout".into(),
        EventKind::BreakGlass => "break-glass".into(),
    };
    let mut actions = vec![name, e.action_label().to_string()];
    actions.dedup();
    Columns {
        users: vec![Some(e.agent.who.reference())],
        patients: sorted(e.patients.clone()),
        break_glass: e.break_glass.is_some() || e.kind == EventKind::BreakGlass,
        actions,
    }
}

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

fn codings(v: &Value) -> impl Iterator<Item = &Value> {
    v.as_array().into_iter().flatten().flat_map(|c| c["coding"].as_array().into_iter().flatten())
}

/// The user an authentication event's requesting agent names: its reference, or (an
/// account the domain does not hold) the login name or client id it was tried with.
fn users_of(who: &Value) -> Vec<Option<String>> {
    if let Some(r) = who["reference"].as_str() {
        return vec![Some(r.to_string())];
    }
    let id = &who["identifier"];
    let prefix = match id["system"].as_str() {
        Some("https://tessera.health/login-name") => "Practitioner/",
        Some("https://tessera.health/client-id") => "Device/",
        _ => return vec![None],
    };
    let value = id["value"].as_str().unwrap_or_default();
    let mut users = vec![Some(format!("{prefix}{value}"))];
    if value == "(empty)" {
        // An empty name is recorded as "(empty)".
        users.push(Some(prefix.to_string()));
    }
    users
}

fn of_audit_event(v: &Value) -> Columns {
    let agents = v["agent"].as_array().map(Vec::as_slice).unwrap_or_default();
    let users = agents.iter().find(|a| a["requestor"] == true).map_or_else(|| vec![None], |a| users_of(&a["who"]));
    let patients = v["entity"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["role"]["code"] == "1")
        .filter_map(|e| e["what"]["reference"].as_str()?.strip_prefix("Patient/").map(str::to_string))
        .collect();
    let subtypes = v["subtype"].as_array().map(Vec::as_slice).unwrap_or_default();
    let is_btg = |c: &Value| c["code"] == "BTG";
    let break_glass = codings(&v["purposeOfEvent"]).any(is_btg)
        || agents.iter().any(|a| codings(&a["purposeOfUse"]).any(is_btg))
        || subtypes.iter().any(|s| s["system"] == DCM && s["code"] == "110127");
    let mut actions = Vec::new();
    for s in subtypes {
        let code = s["code"].as_str().unwrap_or_default();
        if s["system"] == DCM {
            match code {
                "110127" => actions.push("break-glass".to_string()),
                // A refused sign-in or token is indexed as `auth-refused`.
                "110122" if v["outcome"] != "0" => actions.extend(["auth-refused".to_string(), "login".to_string()]),
                "110122" => actions.push("login".to_string()),
                "110123" => actions.push("logout".to_string()),
                "110137" => actions.push("unlock".to_string()),
                _ => {}
            }
        } else {
            actions.push(code.to_string());
            if let Some(op) = s["display"].as_str().and_then(|d| d.strip_prefix('$')) {
                actions.push(op.to_string());
            }
        }
    }
    Columns { users, patients: sorted(patients), break_glass, actions }
}
