//! ADT: the visit of PV1 as a FHIR Encounter, and what each trigger event does to it.
//!
//! | HL7 | FHIR Encounter |
//! | --- | --- |
//! | PV1-19 visit number | `identifier` (the interface organisation's visit-number system): the key that later events (A02, A03, A08, A11–A13) find the encounter by |
//! | PV1-2 patient class (table 0004, [`CLASSES`]) | `class` (v3 ActCode) |
//! | PV1-3 assigned location (PL.1 through the interface's ward table) | `location[]`: the new place `active`, the one before `completed` |
//! | PV1-7 attending, PV1-17 admitting doctor (XCN) | `participant[]` (`ATND`, `ADM`), by identifier and name |
//! | PV1-44 admit date/time (else EVN-6, EVN-2) | `period.start` |
//! | PV1-45 discharge date/time (else EVN-6, EVN-2) on A03 | `period.end` |
//! | trigger event ([`EVENTS`]) | `status`, and the changes below |
//!
//! | event | effect |
//! | --- | --- |
//! | A01 admit, A04 register, A05 pre-admit | the encounter, created or updated (`in-progress`; A05 `planned`) |
//! | A02 transfer | the new location becomes the active one, the previous one `completed` at the event time |
//! | A03 discharge | `finished`, with `period.end` |
//! | A06 outpatient → inpatient, A07 inpatient → outpatient | `class` becomes `IMP` / `AMB` |
//! | A08 update | the visit's details as sent; the status stays |
//! | A11 cancel admit/visit | `cancelled` (the care relationship it gave ends) |
//! | A12 cancel transfer | the transfer undone: the location before is active again |
//! | A13 cancel discharge | `in-progress` again, without `period.end` |
//!
//! A message that names a visit no encounter has is refused for A11–A13 (there is nothing
//! to cancel); A02, A03 and A08 for an unknown visit create it, as a feed joined mid-stay
//! sends them.

use super::{clean, date_time, field_error, practitioner_reference, Context, FieldError};
use crate::message::Message;
use crate::visit::Location;
use serde_json::{json, Map, Value};

/// What an ADT trigger event does to the encounter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    Admit,
    Transfer,
    Discharge,
    Register,
    PreAdmit,
    ToInpatient,
    ToOutpatient,
    Update,
    CancelAdmit,
    CancelTransfer,
    CancelDischarge,
}

/// Trigger events that carry a visit.
pub const EVENTS: &[(&str, Event)] = &[
    ("A01", Event::Admit),
    ("A02", Event::Transfer),
    ("A03", Event::Discharge),
    ("A04", Event::Register),
    ("A05", Event::PreAdmit),
    ("A06", Event::ToInpatient),
    ("A07", Event::ToOutpatient),
    ("A08", Event::Update),
    ("A11", Event::CancelAdmit),
    ("A12", Event::CancelTransfer),
    ("A13", Event::CancelDischarge),
];

/// HL7 table 0004 (patient class) → v3 ActCode.
pub const CLASSES: &[(&str, &str, &str)] = &[
    ("I", "IMP", "inpatient encounter"),
    ("B", "IMP", "inpatient encounter"),
    ("O", "AMB", "ambulatory"),
    ("R", "AMB", "ambulatory"),
    ("C", "AMB", "ambulatory"),
    ("N", "AMB", "ambulatory"),
    ("U", "AMB", "ambulatory"),
    ("E", "EMER", "emergency"),
    ("P", "PRENC", "pre-admission"),
];

const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";

/// The event of a trigger, if it carries a visit.
pub fn event(trigger: &str) -> Option<Event> {
    EVENTS.iter().find(|(t, _)| t.eq_ignore_ascii_case(trigger)).map(|(_, e)| *e)
}

/// PV1-19.1, the visit number.
pub fn visit_number(msg: &Message) -> Option<String> {
    clean(msg.segment("PV1")?.get(19, 1, 1, 1))
}

fn class_coding(code: &str) -> Value {
    let (_, act, display) = CLASSES.iter().find(|(_, a, _)| *a == code).copied().unwrap_or(("", code, code));
    json!({"system": ACT_CODE, "code": act, "display": display})
}

/// When the event happened: EVN-6 (occurred), EVN-2 (recorded), MSH-7.
fn event_time(msg: &Message) -> Result<Option<String>, FieldError> {
    for (seg, f, name) in [("EVN", 6, "EVN-6"), ("EVN", 2, "EVN-2"), ("MSH", 7, "MSH-7")] {
        if let Some(t) = msg.segment(seg).and_then(|s| clean(s.get(f, 1, 1, 1))) {
            return date_time(&t, name).map(Some);
        }
    }
    Ok(None)
}

/// The Encounter a message leaves: `existing` (the stored encounter of the visit, without
/// `id`/`meta`, if any) changed as the event says; `None` when the message has no PV1.
pub fn encounter(msg: &Message, ctx: &Context, event: Event, existing: Option<&Value>) -> Result<Option<Value>, FieldError> {
    let Some(pv1) = msg.segment("PV1") else { return Ok(None) };
    let cancel = matches!(event, Event::CancelAdmit | Event::CancelTransfer | Event::CancelDischarge);
    let visit = visit_number(msg);
    if cancel && existing.is_none() {
        return Err(match &visit {
            Some(v) => field_error("PV1-19", format!("no encounter has the visit number '{v}': there is nothing to cancel")),
            None => field_error("PV1-19", "a cancellation must give the visit number (PV1-19) of the encounter it cancels"),
        });
    }
    let when = event_time(msg)?;
    let mut e: Map<String, Value> = match existing {
        Some(Value::Object(m)) => m.clone(),
        _ => Map::new(),
    };
    e.remove("id");
    e.remove("meta");
    e.insert("resourceType".into(), json!("Encounter"));
    if let Some(v) = &visit {
        let mut ids: Vec<Value> = e.get("identifier").and_then(Value::as_array).cloned().unwrap_or_default();
        if !ids.iter().any(|i| i["system"] == ctx.systems.visit.as_str() && i["value"] == v.as_str()) {
            ids.push(json!({"system": ctx.systems.visit, "value": v}));
        }
        e.insert("identifier".into(), Value::Array(ids));
    }
    e.insert("subject".into(), json!({"reference": ctx.patient}));

    match event {
        Event::CancelAdmit => {
            e.insert("status".into(), json!("cancelled"));
            return Ok(Some(Value::Object(e)));
        }
        Event::CancelTransfer => {
            undo_transfer(&mut e);
            return Ok(Some(Value::Object(e)));
        }
        Event::CancelDischarge => {
            e.insert("status".into(), json!("in-progress"));
            if let Some(Value::Object(p)) = e.get_mut("period") {
                p.remove("end");
            }
            if let Some(Value::Array(locs)) = e.get_mut("location") {
                if let Some(Value::Object(last)) = locs.last_mut() {
                    last.insert("status".into(), json!("active"));
                    if let Some(Value::Object(p)) = last.get_mut("period") {
                        p.remove("end");
                    }
                }
            }
            return Ok(Some(Value::Object(e)));
        }
        _ => {}
    }

    // Class: the message's, else the one kept, else by event.
    let sent_class = clean(pv1.get(2, 1, 1, 1));
    let class = match event {
        Event::ToInpatient => Some("IMP".to_string()),
        Event::ToOutpatient => Some("AMB".to_string()),
        _ => match &sent_class {
            Some(c) => Some(
                CLASSES
                    .iter()
                    .find(|(k, _, _)| k.eq_ignore_ascii_case(c))
                    .map(|(_, a, _)| a.to_string())
                    .ok_or_else(|| field_error("PV1-2", format!("'{c}' is not a patient class of HL7 table 0004 (I, O, E, P, R, B, C, N, U)")))?,
            ),
            None => None,
        },
    };
    match class {
        Some(c) => {
            e.insert("class".into(), class_coding(&c));
        }
        None if !e.contains_key("class") => {
            e.insert("class".into(), class_coding(if event == Event::Admit { "IMP" } else { "AMB" }));
        }
        None => {}
    }

    let status = match event {
        Event::PreAdmit => "planned",
        Event::Discharge => "finished",
        Event::Update => match e.get("status").and_then(Value::as_str) {
            Some(s) => s,
            None if clean(pv1.get(45, 1, 1, 1)).is_some() => "finished",
            None => "in-progress",
        },
        _ => "in-progress",
    }
    .to_string();
    e.insert("status".into(), json!(status));

    // Period.
    let mut period = e.get("period").and_then(Value::as_object).cloned().unwrap_or_default();
    if let Some(start) = clean(pv1.get(44, 1, 1, 1)) {
        period.insert("start".into(), json!(date_time(&start, "PV1-44")?));
    } else if !period.contains_key("start") && matches!(event, Event::Admit | Event::Register) {
        if let Some(t) = &when {
            period.insert("start".into(), json!(t));
        }
    }
    if event == Event::Discharge {
        let end = match clean(pv1.get(45, 1, 1, 1)) {
            Some(t) => Some(date_time(&t, "PV1-45")?),
            None => when.clone(),
        };
        if let Some(end) = end {
            period.insert("end".into(), json!(end));
        }
    } else if let Some(end) = clean(pv1.get(45, 1, 1, 1)) {
        period.insert("end".into(), json!(date_time(&end, "PV1-45")?));
    }
    if !period.is_empty() {
        e.insert("period".into(), Value::Object(period));
    }

    // Participants: as sent, when sent.
    let mut participants = Vec::new();
    for (field, code, display) in [(7, "ATND", "attender"), (17, "ADM", "admitter")] {
        for rep in pv1.field(field).map(|f| f.repetitions()).unwrap_or_default() {
            if let Some(who) = practitioner_reference(rep, ctx.systems) {
                participants.push(json!({"type": [{"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}], "individual": who}));
            }
        }
    }
    if !participants.is_empty() {
        e.insert("participant".into(), Value::Array(participants));
    }

    // Location: the new place active, the one before completed.
    if let Some(place) = pv1.field(3).and_then(|f| f.repetition(1)).and_then(super::location_of) {
        let reference = resolve(ctx, &place)?;
        let mut locs: Vec<Value> = e.get("location").and_then(Value::as_array).cloned().unwrap_or_default();
        let current = locs.iter().rposition(|l| l["status"] != "completed");
        let same = current.is_some_and(|i| locs[i]["location"]["reference"] == reference.as_str());
        if !same {
            if let Some(i) = current {
                if let Value::Object(l) = &mut locs[i] {
                    l.insert("status".into(), json!("completed"));
                    if let Some(t) = &when {
                        let mut p = l.get("period").and_then(Value::as_object).cloned().unwrap_or_default();
                        p.insert("end".into(), json!(t));
                        l.insert("period".into(), Value::Object(p));
                    }
                }
            }
            let mut l = Map::new();
            l.insert("location".into(), json!({"reference": reference, "display": place_text(&place)}));
            l.insert("status".into(), json!(if status == "planned" { "planned" } else { "active" }));
            if let Some(t) = &when {
                l.insert("period".into(), json!({"start": t}));
            }
            locs.push(Value::Object(l));
        }
        if status == "finished" {
            if let Some(Value::Object(last)) = locs.last_mut() {
                last.insert("status".into(), json!("completed"));
            }
        }
        e.insert("location".into(), Value::Array(locs));
    } else if status == "finished" {
        if let Some(Value::Array(locs)) = e.get_mut("location") {
            if let Some(Value::Object(last)) = locs.last_mut() {
                last.insert("status".into(), json!("completed"));
            }
        }
    }
    if matches!(event, Event::Transfer) && !e.contains_key("location") {
        return Err(field_error("PV1-3", "a transfer must give the new location (PV1-3)"));
    }
    Ok(Some(Value::Object(e)))
}

/// The place as people read it: `7A, room 12, bed B`.
fn place_text(p: &Location) -> String {
    let mut parts = vec![p.point_of_care.clone().unwrap_or_default()];
    if let Some(r) = &p.room {
        parts.push(format!("room {r}"));
    }
    if let Some(b) = &p.bed {
        parts.push(format!("bed {b}"));
    }
    parts.retain(|s| !s.is_empty());
    if parts.is_empty() {
        p.facility.clone().unwrap_or_else(|| "location".into())
    } else {
        parts.join(", ")
    }
}

fn resolve(ctx: &Context, place: &Location) -> Result<String, FieldError> {
    (ctx.location)(place).ok_or_else(|| {
        let name = place.point_of_care.clone().or_else(|| place.facility.clone()).unwrap_or_default();
        field_error("PV1-3", format!("the location '{name}' is not in this interface's ward table"))
    })
}

/// A12: the latest location removed, the one before it active again.
fn undo_transfer(e: &mut Map<String, Value>) {
    let Some(Value::Array(locs)) = e.get_mut("location") else { return };
    if locs.len() < 2 {
        return;
    }
    locs.pop();
    if let Some(Value::Object(last)) = locs.last_mut() {
        last.insert("status".into(), json!("active"));
        if let Some(Value::Object(p)) = last.get_mut("period") {
            p.remove("end");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::map::Systems;

    fn ctx<'a>(systems: &'a Systems, loc: &'a (dyn Fn(&Location) -> Option<String> + Sync)) -> Context<'a> {
        Context { systems, patient: "urn:uuid:p", encounter: None, organisation: "Organization/rx1", location: loc, require_order: false }
    }

    fn msg(trigger: &str, pv1: &str) -> Message {
        Message::parse(&format!("MSH|^~\\&|PAS|RX1|||20240701103000||ADT^{trigger}|1|P|2.4\rEVN|{trigger}|20240701103000\rPID|1||K1^^^RX1^MR||SMITH^JANE\r{pv1}")).unwrap()
    }

    fn wards(l: &Location) -> Option<String> {
        match l.point_of_care.as_deref() {
            Some("7A") => Some("Location/ward-7a".into()),
            Some("3B") => Some("Location/ward-3b".into()),
            _ => None,
        }
    }

    #[test]
    fn a_stay_from_admission_to_discharge() {
        let s = Systems::for_organisation("rx1");
        let c = ctx(&s, &wards);
        let a01 = encounter(&msg("A01", "PV1|1|I|7A^12^B||||C1^JONES^ANN^^^DR||||||||||||V1|||||||||||||||||||||||||202407011000"), &c, Event::Admit, None).unwrap().unwrap();
        assert_eq!(a01["status"], "in-progress");
        assert_eq!(a01["class"]["code"], "IMP");
        assert_eq!(a01["identifier"][0]["value"], "V1");
        assert_eq!(a01["period"]["start"], "2024-07-01T10:00:00+01:00");
        assert_eq!(a01["location"][0]["location"]["reference"], "Location/ward-7a");
        assert_eq!(a01["location"][0]["location"]["display"], "7A, room 12, bed B");
        assert_eq!(a01["participant"][0]["individual"]["display"], "DR ANN JONES");
        let a02 = encounter(&msg("A02", "PV1|1|I|3B||||||||||||||||V1"), &c, Event::Transfer, Some(&a01)).unwrap().unwrap();
        assert_eq!(a02["location"].as_array().unwrap().len(), 2);
        assert_eq!(a02["location"][0]["status"], "completed");
        assert_eq!(a02["location"][0]["period"]["end"], "2024-07-01T10:30:00+01:00");
        assert_eq!(a02["location"][1]["status"], "active");
        let a12 = encounter(&msg("A12", "PV1|1|I|3B||||||||||||||||V1"), &c, Event::CancelTransfer, Some(&a02)).unwrap().unwrap();
        assert_eq!(a12["location"].as_array().unwrap().len(), 1);
        assert_eq!(a12["location"][0]["status"], "active");
        assert!(a12["location"][0]["period"].get("end").is_none());
        let a03 = encounter(&msg("A03", "PV1|1|I|7A||||||||||||||||V1|||||||||||||||||||||||||202407011000|202407051200"), &c, Event::Discharge, Some(&a12)).unwrap().unwrap();
        assert_eq!(a03["status"], "finished");
        assert_eq!(a03["period"]["end"], "2024-07-05T12:00:00+01:00");
        let a13 = encounter(&msg("A13", "PV1|1|I|7A||||||||||||||||V1"), &c, Event::CancelDischarge, Some(&a03)).unwrap().unwrap();
        assert_eq!(a13["status"], "in-progress");
        assert!(a13["period"].get("end").is_none());
        let a11 = encounter(&msg("A11", "PV1|1|I|7A||||||||||||||||V1"), &c, Event::CancelAdmit, Some(&a13)).unwrap().unwrap();
        assert_eq!(a11["status"], "cancelled");
        assert_eq!(a11["identifier"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn refusals_name_the_field() {
        let s = Systems::for_organisation("rx1");
        let c = ctx(&s, &wards);
        let e = encounter(&msg("A01", "PV1|1|I|9Z||||||||||||||||V1"), &c, Event::Admit, None).unwrap_err();
        assert_eq!(e.field, "PV1-3");
        assert!(e.problem.contains("9Z"), "{e}");
        assert_eq!(encounter(&msg("A11", "PV1|1|I|7A||||||||||||||||V9"), &c, Event::CancelAdmit, None).unwrap_err().field, "PV1-19");
        assert_eq!(encounter(&msg("A01", "PV1|1|Q|7A"), &c, Event::Admit, None).unwrap_err().field, "PV1-2");
        assert_eq!(encounter(&msg("A01", "PV1|1|I|7A|||||||||||||||||||||||||||||||||||||||||2024x"), &c, Event::Admit, None).unwrap_err().field, "PV1-44");
        assert!(encounter(&msg("A28", ""), &c, Event::Update, None).unwrap().is_none());
    }

    #[test]
    fn class_changes() {
        let s = Systems::for_organisation("rx1");
        let c = ctx(&s, &wards);
        let a04 = encounter(&msg("A04", "PV1|1|O|7A||||||||||||||||V2"), &c, Event::Register, None).unwrap().unwrap();
        assert_eq!(a04["class"]["code"], "AMB");
        let a06 = encounter(&msg("A06", "PV1|1||7A||||||||||||||||V2"), &c, Event::ToInpatient, Some(&a04)).unwrap().unwrap();
        assert_eq!(a06["class"]["code"], "IMP");
        assert_eq!(a06["location"].as_array().unwrap().len(), 1);
    }
}
