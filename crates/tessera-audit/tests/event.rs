//! The AuditEvents built are valid FHIR R4 and carry what BALP asks for.

use base64::Engine as _;
use serde_json::Value;
use tessera_audit::*;
use tessera_fhir::validation::{validate, Limits};

fn agent() -> Agent {
    Agent {
        who: Who::Practitioner("dr-1".into()),
        name: Some("Dr. Ada Example".into()),
        role: Some(Coded {
            system: "http://snomed.info/sct".into(),
            code: "309343006".into(),
            display: Some("Physician".into()),
        }),
        organisation: Some("Organization/hospital-a".into()),
        network_address: Some("10.1.2.3".into()),
    }
}

fn input(kind: EventKind) -> EventInput {
    EventInput {
        kind,
        recorded_micros: 1_714_557_600_123_456,
        outcome: Outcome::Success,
        outcome_desc: None,
        denied: false,
        agent: agent(),
        resources: Vec::new(),
        patients: Vec::new(),
        query: None,
        break_glass: None,
        site: Some("tessera-demo".into()),
    }
}

fn valid(event: &Value) {
    if let Err(issues) = validate(event, &Limits::default()) {
        panic!("invalid AuditEvent {event:#}: {issues:?}");
    }
}

fn codes(v: &Value) -> Vec<(String, String)> {
    let one = |c: &Value| (c["system"].as_str().unwrap().to_string(), c["code"].as_str().unwrap().to_string());
    match v {
        Value::Array(a) => a.iter().map(one).collect(),
        c => vec![one(c)],
    }
}

#[test]
fn read_of_a_patient_resource() {
    let mut e = input(EventKind::Rest(Interaction::Read));
    e.resources = vec!["Observation/bp-1".into()];
    e.patients = vec!["p1".into()];
    let event = audit_event(&e);
    valid(&event);
    assert_eq!(event["resourceType"], "AuditEvent");
    assert_eq!(
        codes(&event["type"]),
        vec![("http://terminology.hl7.org/CodeSystem/audit-event-type".into(), "rest".into())]
    );
    assert_eq!(codes(&event["subtype"]), vec![("http://hl7.org/fhir/restful-interaction".into(), "read".into())]);
    assert_eq!(event["action"], "R");
    assert_eq!(event["outcome"], "0");
    assert_eq!(event["recorded"], "2024-05-01T10:00:00.123456Z");
    let agents = event["agent"].as_array().unwrap();
    assert_eq!(agents[0]["who"]["reference"], "Practitioner/dr-1");
    assert_eq!(agents[0]["requestor"], true);
    assert_eq!(agents[0]["network"]["address"], "10.1.2.3");
    assert_eq!(agents[0]["network"]["type"], "2");
    assert_eq!(agents[0]["role"][0]["coding"][0]["code"], "309343006");
    assert_eq!(agents[1]["who"]["reference"], "Organization/hospital-a");
    assert_eq!(agents[2]["who"]["reference"], "Device/tessera");
    assert!(agents[1..].iter().all(|a| a["requestor"] == false));
    assert_eq!(event["source"]["observer"]["reference"], "Device/tessera");
    assert_eq!(event["source"]["site"], "tessera-demo");
    let entities = event["entity"].as_array().unwrap();
    assert_eq!(entities.len(), 2);
    assert_eq!(entities[0]["what"]["reference"], "Patient/p1");
    assert_eq!(entities[0]["role"]["code"], "1");
    assert_eq!(entities[0]["type"]["code"], "1");
    assert_eq!(entities[1]["what"]["reference"], "Observation/bp-1");
    assert_eq!(entities[1]["role"]["code"], "4");
    assert!(event.get("purposeOfEvent").is_none());
    // The validator does check AuditEvents: without `recorded` this one is invalid.
    let mut broken = event.clone();
    broken.as_object_mut().unwrap().remove("recorded");
    assert!(validate(&broken, &Limits::default()).is_err());

    let audit = new_audit(&e);
    assert_eq!(audit.action, "read");
    assert_eq!(audit.user.as_deref(), Some("Practitioner/dr-1"));
    assert_eq!(audit.patients, vec!["p1"]);
    assert!(!audit.break_glass);
    assert_eq!(audit.recorded_micros, e.recorded_micros);
    let mut rendered = tessera_audit::render_record(&audit.event, 7).unwrap();
    assert_eq!(rendered["id"], "7");
    rendered.as_object_mut().unwrap().remove("id");
    assert_eq!(rendered, event);
    // Records kept as complete AuditEvents are served as they are.
    let legacy = serde_json::to_vec(&event).unwrap();
    assert_eq!(tessera_audit::render_record(&legacy, 8).unwrap()["id"], "8");
    assert!(tessera_audit::render_record(b"{\"resourceType\":\"Patient\"}", 9).is_none());
}

#[test]
fn every_interaction_is_valid_with_its_action() {
    let cases = [
        (Interaction::Read, "read", "R", "read"),
        (Interaction::Vread, "vread", "R", "read"),
        (Interaction::HistoryInstance, "history-instance", "R", "read"),
        (Interaction::HistoryType, "history-type", "R", "read"),
        (Interaction::HistorySystem, "history-system", "R", "read"),
        (Interaction::SearchType, "search-type", "E", "search"),
        (Interaction::SearchSystem, "search-system", "E", "search"),
        (Interaction::Create, "create", "C", "create"),
        (Interaction::Update, "update", "U", "update"),
        (Interaction::Patch, "patch", "U", "update"),
        (Interaction::Delete, "delete", "D", "delete"),
        (Interaction::Capabilities, "capabilities", "R", "capabilities"),
        (Interaction::Transaction, "transaction", "E", "transaction"),
        (Interaction::Batch, "batch", "E", "batch"),
        (Interaction::Operation("everything".into()), "operation", "E", "operation"),
    ];
    for (interaction, code, action, label) in cases {
        let mut e = input(EventKind::Rest(interaction));
        e.resources = vec!["Patient/p7".into(), "Encounter/e1".into()];
        e.patients = vec!["p7".into()];
        let event = audit_event(&e);
        valid(&event);
        assert_eq!(event["subtype"][0]["code"], code);
        assert_eq!(event["action"], action, "{code}");
        assert_eq!(new_audit(&e).action, label);
        // The patient resource itself is listed once, as the patient.
        let entities = event["entity"].as_array().unwrap();
        assert_eq!(entities.iter().filter(|x| x["what"]["reference"] == "Patient/p7").count(), 1);
    }
}

#[test]
fn search_records_the_query() {
    let mut e = input(EventKind::Rest(Interaction::SearchType));
    e.query = Some("Observation?patient=p1&code=http://loinc.org|85354-9".into());
    e.patients = vec!["p1".into(), "p1".into()];
    let event = audit_event(&e);
    valid(&event);
    let query = event["entity"].as_array().unwrap().iter().find(|x| x["role"]["code"] == "24").expect("query entity");
    let decoded = base64::engine::general_purpose::STANDARD.decode(query["query"].as_str().unwrap()).unwrap();
    assert_eq!(decoded, e.query.as_ref().unwrap().as_bytes());
    assert_eq!(event["entity"].as_array().unwrap().len(), 2, "one patient, one query");
    assert_eq!(new_audit(&e).patients, vec!["p1"]);
}

#[test]
fn break_glass_access_carries_the_purpose() {
    let mut e = input(EventKind::Rest(Interaction::Read));
    e.resources = vec!["Condition/c1".into()];
    e.patients = vec!["p2".into()];
    e.break_glass = Some("unconscious patient in the emergency department".into());
    let event = audit_event(&e);
    valid(&event);
    for purpose in [&event["purposeOfEvent"], &event["agent"][0]["purposeOfUse"]] {
        assert_eq!(purpose[0]["coding"][0]["system"], "http://terminology.hl7.org/CodeSystem/v3-ActReason");
        assert_eq!(purpose[0]["coding"][0]["code"], "BTG");
        assert_eq!(purpose[0]["text"], "unconscious patient in the emergency department");
    }
    let audit = new_audit(&e);
    assert!(audit.break_glass);
    assert_eq!(audit.action, "read");

    // Declaring the emergency itself.
    let mut declare = input(EventKind::BreakGlass);
    declare.patients = vec!["p2".into()];
    declare.break_glass = Some("cardiac arrest".into());
    let event = audit_event(&declare);
    valid(&event);
    assert_eq!(codes(&event["type"]), vec![("http://dicom.nema.org/resources/ontology/DCM".into(), "110113".into())]);
    assert_eq!(event["subtype"][0]["code"], "110127");
    assert_eq!(event["action"], "E");
    let audit = new_audit(&declare);
    assert_eq!(audit.action, "break-glass");
    assert!(audit.break_glass);
}

#[test]
fn denied_access_and_logins() {
    let mut denied = input(EventKind::Rest(Interaction::Read));
    denied.resources = vec!["Observation/o9".into()];
    denied.patients = vec!["p3".into()];
    denied.outcome = Outcome::MinorFailure;
    denied.outcome_desc = Some("no care relationship with the patient".into());
    denied.denied = true;
    let event = audit_event(&denied);
    valid(&event);
    assert_eq!(event["outcome"], "4");
    assert_eq!(event["outcomeDesc"], "no care relationship with the patient");
    assert_eq!(new_audit(&denied).action, "denied");

    let mut login = input(EventKind::Login);
    login.agent.network_address = Some("workstation-12.hospital.example".into());
    login.agent.organisation = None;
    let event = audit_event(&login);
    valid(&event);
    assert_eq!(codes(&event["type"]), vec![("http://dicom.nema.org/resources/ontology/DCM".into(), "110114".into())]);
    assert_eq!(event["subtype"][0]["code"], "110122");
    assert_eq!(event["agent"][0]["network"]["type"], "1");
    assert_eq!(event["agent"].as_array().unwrap().len(), 2);
    assert!(event.get("entity").is_none());
    assert_eq!(new_audit(&login).action, "login");
    let mut failed = input(EventKind::Logout);
    failed.outcome = Outcome::SeriousFailure;
    let event = audit_event(&failed);
    valid(&event);
    assert_eq!(event["outcome"], "8");
    assert_eq!(new_audit(&failed).action, "logout");
}

#[test]
fn system_agents_and_patient_record_events() {
    let mut e = input(EventKind::PatientRecord(Interaction::Read));
    e.agent = Agent {
        who: Who::Device("importer".into()),
        name: None,
        role: None,
        organisation: None,
        network_address: None,
    };
    e.patients = vec!["p4".into()];
    e.outcome = Outcome::MajorFailure;
    let event = audit_event(&e);
    valid(&event);
    assert_eq!(codes(&event["type"]), vec![("http://dicom.nema.org/resources/ontology/DCM".into(), "110110".into())]);
    assert_eq!(event["agent"][0]["who"]["reference"], "Device/importer");
    assert_eq!(event["outcome"], "12");
    assert_eq!(new_audit(&e).user.as_deref(), Some("Device/importer"));
    let mut other = input(EventKind::Rest(Interaction::Read));
    other.agent.who = Who::Reference("PractitionerRole/r1".into());
    valid(&audit_event(&other));
    assert_eq!(audit_event(&other)["agent"][0]["who"]["reference"], "PractitionerRole/r1");
}
