//! Messages to engine calls. Each supported message type and trigger event is one row of
//! [`SUPPORTED`]; its mapping (`tessera_hl7v2::map`) turns the message into the entries of
//! one FHIR transaction — the patient (through the patient index), the encounter, the
//! clinical resources — plus a `Provenance` that records the message and makes it
//! apply once. The transaction runs through the engine as the interface's organisation, so
//! the `Gate`, ownership and the audit apply, and it commits all or nothing: the `AA` is
//! sent only after it is durable. Everything else is refused with `AR`.

use crate::ack::{self, Code, Problem};
use crate::Interface;
use serde_json::{json, Value};
use sha2::Digest;
use tessera_engine::search::Scope;
use tessera_engine::{Access, Engine, FhirError};
use tessera_hl7v2::map::{self, adt, Context, Entry, FieldError, Method};
use tessera_hl7v2::{patient_from_pid, Message};

/// What an inbound message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// The patient, and the visit of PV1 as the event changes it.
    Visit(adt::Event),
    /// The patient only (registered through the patient index).
    Person,
    /// ADT^A40: the record of MRG-1 merged into the one of PID.
    Merge,
    Results,
    Order,
    LabOrder,
    Schedule,
    Document,
    Pharmacy,
    Vaccination,
}

/// (message code, trigger event, what it does).
const SUPPORTED: &[(&str, &str, Action)] = &[
    ("ADT", "A01", Action::Visit(adt::Event::Admit)),
    ("ADT", "A02", Action::Visit(adt::Event::Transfer)),
    ("ADT", "A03", Action::Visit(adt::Event::Discharge)),
    ("ADT", "A04", Action::Visit(adt::Event::Register)),
    ("ADT", "A05", Action::Visit(adt::Event::PreAdmit)),
    ("ADT", "A06", Action::Visit(adt::Event::ToInpatient)),
    ("ADT", "A07", Action::Visit(adt::Event::ToOutpatient)),
    ("ADT", "A08", Action::Visit(adt::Event::Update)),
    ("ADT", "A11", Action::Visit(adt::Event::CancelAdmit)),
    ("ADT", "A12", Action::Visit(adt::Event::CancelTransfer)),
    ("ADT", "A13", Action::Visit(adt::Event::CancelDischarge)),
    ("ADT", "A28", Action::Person),
    ("ADT", "A31", Action::Person),
    ("ADT", "A40", Action::Merge),
    ("ORU", "R01", Action::Results),
    ("ORM", "O01", Action::Order),
    ("OML", "O21", Action::LabOrder),
    ("SIU", "S12", Action::Schedule),
    ("SIU", "S13", Action::Schedule),
    ("SIU", "S14", Action::Schedule),
    ("SIU", "S15", Action::Schedule),
    ("MDM", "T02", Action::Document),
    ("RDE", "O11", Action::Pharmacy),
    ("VXU", "V04", Action::Vaccination),
];

/// The message types and events this interface applies, for documentation and checks.
pub fn supported() -> impl Iterator<Item = (&'static str, &'static str)> {
    SUPPORTED.iter().map(|(c, t, _)| (*c, *t))
}

fn problem(location: Option<String>, hl7_code: &'static str, text: impl Into<String>) -> Problem {
    Problem { location: location.filter(|l| !l.is_empty()), hl7_code, text: text.into() }
}

/// `OBX[3]-5` / `PID-7` → `OBX^3^5` / `PID^1^7` (ERR-2: segment, sequence, field).
fn location_of(field: &str) -> Option<String> {
    let (segment, n) = field.split_once('-')?;
    let (name, seq) = match segment.split_once('[') {
        Some((name, rest)) => (name, rest.trim_end_matches(']')),
        None => (segment, "1"),
    };
    Some(format!("{name}^{seq}^{n}"))
}

fn field_problem(e: &FieldError) -> Problem {
    let code = if e.problem.contains("unknown location") || e.problem.contains("not in this interface's ward table") { "103" } else { "102" };
    problem(location_of(&e.field), code, e.to_string())
}

/// The segment each resource type comes from, for pointing at what the record refused.
const SEGMENT_OF: &[(&str, &str)] = &[
    ("Patient", "PID"),
    ("Encounter", "PV1"),
    ("DiagnosticReport", "OBR"),
    ("Observation", "OBX"),
    ("ServiceRequest", "ORC"),
    ("Appointment", "SCH"),
    ("DocumentReference", "TXA"),
    ("MedicationRequest", "RXE"),
    ("Immunization", "RXA"),
];

/// The PID field of each Patient element.
const PID_FIELD_OF: &[(&str, &str)] = &[("identifier", "3"), ("name", "5"), ("birthDate", "7"), ("gender", "8"), ("address", "11"), ("telecom", "13"), ("deceased", "29")];

/// Where an engine refusal points (`Bundle.entry[3].resource.valueQuantity` → `OBX^2`;
/// the Patient's elements → their PID field), as far as it can be told.
fn engine_location(e: &FhirError, types: &[&str]) -> Option<String> {
    let at = e.issues.first()?.expression.first()?;
    let rest = at.strip_prefix("Bundle.entry[")?;
    let (n, rest) = rest.split_once(']')?;
    let n: usize = n.parse().ok()?;
    let ty = *types.get(n)?;
    let segment = SEGMENT_OF.iter().find(|(t, _)| *t == ty)?.1;
    let sequence = types[..n].iter().filter(|t| **t == ty).count() + 1;
    let element = rest.strip_prefix(".resource.").unwrap_or("");
    let element = element.split(['.', '[']).next().unwrap_or("");
    match PID_FIELD_OF.iter().find(|(el, _)| ty == "Patient" && element.starts_with(el)) {
        Some((_, field)) => Some(format!("PID^1^{field}")),
        None => Some(format!("{segment}^{sequence}")),
    }
}

fn words(e: &FhirError) -> String {
    let parts: Vec<String> = e
        .issues
        .iter()
        .map(|i| match i.expression.first() {
            Some(at) => format!("{} ({at})", i.diagnostics),
            None => i.diagnostics.clone(),
        })
        .collect();
    if parts.is_empty() {
        format!("refused ({})", e.status)
    } else {
        parts.join("; ")
    }
}

/// The id of the Provenance that records a message of a sender: the same message — same
/// sending application, facility, control id, type and segments after MSH — always gives
/// the same id, so a resend (even one whose MSH-7 was stamped again) applies once. A
/// different message that reuses a control id is not taken for a resend: it is applied,
/// never dropped.
pub fn record_id(msg: &Message) -> String {
    let encoded = msg.encode();
    let body = encoded.split_once('\r').map(|(_, rest)| rest).unwrap_or("");
    let kind = msg.message_type().map(|t| t.to_string()).unwrap_or_default();
    let key = format!("{}|{}|{}|{kind}\r{body}", msg.sending_application().unwrap_or(""), msg.sending_facility().unwrap_or(""), msg.control_id().unwrap_or(""));
    sha2::Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads, applies and acknowledges one message (original or enhanced mode, as MSH-15/16
/// ask); the replies to send, in order.
pub async fn handle(engine: &Engine, interface: &Interface, text: &str) -> Vec<String> {
    let msg = match Message::parse(text) {
        Ok(m) => m,
        Err(e) => {
            let loc = e.segment_name.as_ref().map(|s| format!("{s}^{}{}", e.segment, e.field.map(|f| format!("^{f}")).unwrap_or_default()));
            return vec![ack::acknowledge(None, Code::Reject, "the message cannot be read", Some(&problem(loc, "100", e.to_string())))];
        }
    };
    let (code, text, p) = apply(engine, interface, &msg).await;
    ack::replies(&msg, code, &text, p.as_ref())
}

async fn apply(engine: &Engine, interface: &Interface, msg: &Message) -> (Code, String, Option<Problem>) {
    let reject = |loc: &str, hl7: &'static str, text: String| (Code::Reject, text.clone(), Some(problem(Some(loc.to_string()), hl7, text)));
    let Some(kind) = msg.message_type() else {
        return reject("MSH^1^9", "101", "MSH-9 (message type) is empty".into());
    };
    if msg.control_id().is_none_or(|c| c.trim().is_empty()) {
        return reject("MSH^1^10", "101", "MSH-10 (message control id) is empty".into());
    }
    if let Some(expected) = &interface.sending_facility {
        let sent = msg.sending_facility().unwrap_or("");
        if !sent.eq_ignore_ascii_case(expected) {
            return reject("MSH^1^4", "207", format!("MSH-4 '{sent}' is not this interface's sender ({expected})"));
        }
    }
    let trigger = kind.trigger.clone().unwrap_or_default().to_ascii_uppercase();
    let code = kind.code.to_ascii_uppercase();
    let Some((_, _, action)) = SUPPORTED.iter().find(|(c, t, _)| *c == code && *t == trigger) else {
        let (hl7, text) = if SUPPORTED.iter().any(|(c, _, _)| *c == code) {
            ("201", format!("{code}^{trigger} is not supported by this interface"))
        } else {
            ("200", format!("{code} messages are not supported by this interface"))
        };
        return reject("MSH^1^9", hl7, text);
    };
    let access = interface.access();
    // A message resent by its sender is acknowledged again and applied once: the
    // transaction writes the message's record (`ifNoneMatch: *`) with everything else, so a
    // resend fails as a whole on it. A merge is not one transaction: it checks first.
    let record = record_id(msg);
    if *action == Action::Merge {
        match already_applied(engine, &access, &record).await {
            Ok(true) => return (Code::Accept, "already applied".into(), None),
            Ok(false) => {}
            Err(e) => return (Code::Error, "the server cannot apply messages now; resend later".into(), Some(problem(None, "207", words(&e)))),
        }
    }
    let outcome = match action {
        Action::Merge => merge(engine, interface, &access, msg, &record).await,
        _ => transaction(engine, interface, &access, msg, *action, &record).await,
    };
    match outcome {
        Ok(done) => (Code::Accept, done, None),
        Err(p) => (Code::Error, p.text.clone(), Some(p)),
    }
}

async fn already_applied(engine: &Engine, access: &Access, record: &str) -> Result<bool, FhirError> {
    match engine.read(access, "Provenance", record).await {
        Ok(_) => Ok(true),
        Err(e) if e.status == 404 || e.status == 410 => Ok(false),
        Err(e) => Err(e),
    }
}

/// The first business-identifier match of `resource_type` visible to the interface.
async fn find_by_identifier(engine: &Engine, access: &Access, resource_type: &str, system: &str, value: &str) -> Result<Option<Value>, Problem> {
    let query = map::identifier_query(system, value);
    let bundle = engine.search(access, Scope::Type(Some(resource_type)), &query, false).await.map_err(|e| problem(None, "207", words(&e)))?;
    let v: Value = serde_json::from_slice(bundle.as_bytes()).map_err(|e| problem(None, "207", e.to_string()))?;
    Ok(v["entry"].as_array().and_then(|e| e.iter().find(|e| e["search"]["mode"] != "include")).map(|e| e["resource"].clone()))
}

/// Everything but a merge: one transaction.
async fn transaction(engine: &Engine, interface: &Interface, access: &Access, msg: &Message, action: Action, record: &str) -> Result<String, Problem> {
    let domain = engine.domain();
    let patient = patient_from_pid(msg, &interface.identifiers).map_err(|e| field_problem(&e))?;
    if patient.get("identifier").is_none() {
        return Err(problem(Some("PID^1^3".into()), "101", "PID-3 (patient identifier list) has no identifier this interface can file"));
    }
    let patient_url = map::full_url("Patient", 0);
    let encounter_url = map::full_url("Encounter", 0);
    let systems = map::Systems::for_organisation(&interface.organisation);
    let wards = |place: &tessera_hl7v2::visit::Location| interface.location(&domain, place);
    let mut entries = vec![Entry { full_url: patient_url.clone(), method: Method::Create, resource: patient }];

    // The visit: the encounter the message changes (ADT), or the one it refers to.
    let visit = adt::visit_number(msg);
    let existing = match &visit {
        Some(v) => find_by_identifier(engine, access, "Encounter", &systems.visit, v).await?,
        None => None,
    };
    let mut encounter_ref: Option<String> = existing.as_ref().and_then(|e| e["id"].as_str()).map(|id| format!("Encounter/{id}"));
    if let Action::Visit(event) = action {
        let ctx = Context { systems: &systems, patient: &patient_url, encounter: None, organisation: &interface.organisation_ref(), location: &wards, require_order: interface.require_order };
        if let Some(mut e) = adt::encounter(msg, &ctx, event, existing.as_ref()).map_err(|e| field_problem(&e))? {
            let provider = e["location"]
                .as_array()
                .and_then(|l| l.iter().rev().find_map(|l| l["location"]["reference"].as_str()))
                .and_then(|r| r.strip_prefix("Location/"))
                .and_then(|id| domain.location(id))
                .map(|l| l.organisation.clone())
                .unwrap_or_else(|| interface.organisation.clone());
            e["serviceProvider"] = json!({"reference": format!("Organization/{provider}")});
            let method = match &visit {
                Some(v) => Method::Upsert(map::identifier_query(&systems.visit, v)),
                None => Method::Create,
            };
            entries.push(Entry { full_url: encounter_url.clone(), method, resource: e });
            encounter_ref = Some(encounter_url.clone());
        }
    }
    let organisation_ref = interface.organisation_ref();
    let ctx = Context {
        systems: &systems,
        patient: &patient_url,
        encounter: encounter_ref.as_deref(),
        organisation: &organisation_ref,
        location: &wards,
        require_order: interface.require_order,
    };
    let trigger = msg.message_type().and_then(|t| t.trigger).unwrap_or_default().to_ascii_uppercase();
    let mapped = match action {
        Action::Visit(_) | Action::Person | Action::Merge => Ok(Vec::new()),
        Action::Results => map::results::oru_r01(msg, &ctx),
        Action::Order => map::orders::orm_o01(msg, &ctx),
        Action::LabOrder => map::orders::oml_o21(msg, &ctx),
        Action::Schedule => map::scheduling::siu(msg, &ctx, &trigger),
        Action::Document => map::documents::mdm_t02(msg, &ctx),
        Action::Pharmacy => map::pharmacy::rde_o11(msg, &ctx),
        Action::Vaccination => map::immunisation::vxu_v04(msg, &ctx),
    };
    entries.extend(mapped.map_err(|e| field_problem(&e))?);
    if interface.require_order && action == Action::Results {
        check_orders(engine, access, &systems, &entries).await?;
    }

    let mut bundle_entries: Vec<Value> = entries.iter().map(Entry::to_bundle_entry).collect();
    bundle_entries.push(provenance_entry(msg, interface, record, entries.iter().map(|e| json!({"reference": e.full_url})).collect()));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": bundle_entries});
    // Registrations of similar people at the same moment can conflict in the patient
    // index; the engine retries, and so does the interface before it answers AE.
    let mut attempt = 0u64;
    let result = loop {
        match engine.bundle(access, bundle.clone(), None).await {
            Err(e) if e.status == 409 && attempt < 6 => {
                attempt += 1;
                let jitter = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 20) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(10 * attempt * attempt + jitter)).await;
            }
            other => break other,
        }
    };
    match result {
        Ok(response) => Ok(summary(response.as_bytes())),
        Err(e) => {
            let types: Vec<&str> = entries.iter().map(|e| e.resource["resourceType"].as_str().unwrap_or("")).collect();
            let location = engine_location(&e, &types);
            refused(engine, access, record, e, location).await
        }
    }
}

/// A refusal of the transaction: a resend that raced the first copy is "already applied";
/// a server fault asks for a resend; the rest is the message's problem.
async fn refused(engine: &Engine, access: &Access, record: &str, e: FhirError, location: Option<String>) -> Result<String, Problem> {
    let on_record = e.issues.iter().any(|i| i.expression.iter().any(|x| x.ends_with(".request.ifNoneMatch")));
    if (e.status == 412 && on_record) || (e.status == 409 && already_applied(engine, access, record).await.unwrap_or(false)) {
        return Ok("already applied".into());
    }
    if e.status >= 500 || e.status == 409 {
        return Err(problem(None, "207", format!("not applied, resend later: {}", words(&e))));
    }
    Err(problem(location, "102", words(&e)))
}

/// With `require_order`: every report's order (`basedOn`) must be in the record.
async fn check_orders(engine: &Engine, access: &Access, systems: &map::Systems, entries: &[Entry]) -> Result<(), Problem> {
    for (n, e) in entries.iter().filter(|e| e.resource["resourceType"] == "DiagnosticReport").enumerate() {
        let placer = e.resource["basedOn"].as_array().and_then(|b| b.iter().find_map(|r| r["identifier"]["value"].as_str()));
        let filler = e.resource["identifier"].as_array().and_then(|ids| ids.iter().find(|i| i["system"] == systems.filler_order.as_str())).and_then(|i| i["value"].as_str());
        let known = match (placer, filler) {
            (Some(p), _) if find_by_identifier(engine, access, "ServiceRequest", &systems.placer_order, p).await?.is_some() => true,
            (_, Some(f)) => find_by_identifier(engine, access, "ServiceRequest", &systems.filler_order, f).await?.is_some(),
            _ => false,
        };
        if !known {
            let which = placer.or(filler).unwrap_or("");
            return Err(problem(Some(format!("OBR^{}^2", n + 1)), "204", format!("the result is for the order '{which}', which the record does not have (this interface requires results to follow their order)")));
        }
    }
    Ok(())
}

/// The identifier system of HL7 v2 messages: `{sending application}|{facility}|{control id}`.
pub const MESSAGE_SYSTEM: &str = "https://tessera.health/Id/hl7v2-message";

/// The Provenance that records the message (and, by its id, makes it apply once).
fn provenance_entry(msg: &Message, interface: &Interface, record: &str, targets: Vec<Value>) -> Value {
    let kind = msg.message_type().map(|t| t.to_string()).unwrap_or_default();
    let sender = format!("{}|{}", msg.sending_application().unwrap_or(""), msg.sending_facility().unwrap_or(""));
    let resource = json!({
        "resourceType": "Provenance",
        "id": record,
        "target": targets,
        "recorded": now(),
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "UPDATE"}], "text": format!("HL7 v2 {kind} applied by interface {}", interface.id)},
        "agent": [{
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "assembler"}]},
            "who": {"reference": interface.organisation_ref()}
        }],
        "entity": [{
            "role": "source",
            "what": {
                "identifier": {"system": MESSAGE_SYSTEM, "value": format!("{sender}|{}", msg.control_id().unwrap_or(""))},
                "display": format!("{kind} message {} from {sender}", msg.control_id().unwrap_or(""))
            }
        }]
    });
    json!({"fullUrl": format!("Provenance/{record}"), "resource": resource, "request": {"method": "PUT", "url": format!("Provenance/{record}"), "ifNoneMatch": "*"}})
}

fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

/// `Patient/a, Encounter/b, …` from a transaction-response.
fn summary(bytes: &[u8]) -> String {
    let v: Value = serde_json::from_slice(bytes).unwrap_or_default();
    let written: Vec<String> = v["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["response"]["location"].as_str())
        .filter(|l| !l.starts_with("Provenance/"))
        .map(|l| l.split("/_history").next().unwrap_or(l).to_string())
        .collect();
    format!("applied: {}", written.join(", "))
}

/// ADT^A40: the record MRG-1 names merged into the one of PID-3, through the engine's
/// `$merge` (the interface may merge within its own trust).
async fn merge(engine: &Engine, interface: &Interface, access: &Access, msg: &Message, record: &str) -> Result<String, Problem> {
    let target = tessera_hl7v2::patient::patient_identifiers(msg, &interface.identifiers);
    let Some(target) = target.iter().find(|i| i.field == "PID-3") else {
        return Err(problem(Some("PID^1^3".into()), "101", "PID-3 names no patient to keep"));
    };
    let mrg = msg.segment("MRG").ok_or_else(|| problem(Some("MRG^1^1".into()), "101", "an A40 needs an MRG segment naming the record merged away"))?;
    let rep = mrg.field(1).and_then(|f| f.repetition(1)).ok_or_else(|| problem(Some("MRG^1^1".into()), "101", "MRG-1 (prior patient identifier) is empty"))?;
    let value = map::part(rep, 1, 1).ok_or_else(|| problem(Some("MRG^1^1".into()), "101", "MRG-1 (prior patient identifier) is empty"))?;
    let namespace = map::part(rep, 4, 1);
    let universal = map::part(rep, 4, 2);
    let type_code = map::part(rep, 5, 1);
    let Some(system) = interface.identifiers.system(namespace.as_deref(), universal.as_deref(), type_code.as_deref()) else {
        return Err(problem(Some("MRG^1^1".into()), "102", "MRG-1 is an identifier this interface does not file"));
    };
    let value = if system == tessera_hl7v2::patient::NHS_NUMBER_SYSTEM { value.replace(' ', "") } else { value };
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient-identifier", "valueIdentifier": {"system": system, "value": value}},
        {"name": "target-patient-identifier", "valueIdentifier": {"system": target.system, "value": target.value}}
    ]});
    let result = engine.merge(access, parameters).await.map_err(|e| {
        let at = e.issues.first().and_then(|i| i.expression.first()).map(String::as_str).unwrap_or("");
        let location = if at.starts_with("source") { Some("MRG^1^1".to_string()) } else if at.starts_with("target") { Some("PID^1^3".to_string()) } else { None };
        let code = if e.status == 404 { "204" } else if e.status >= 500 { "207" } else { "102" };
        problem(location, code, words(&e))
    })?;
    let kept = result["parameter"].as_array().and_then(|p| p.iter().find(|p| p["name"] == "result")).and_then(|p| p["resource"]["id"].as_str()).map(|id| format!("Patient/{id}"));
    let kept = match kept {
        Some(k) => k,
        None => find_by_identifier(engine, access, "Patient", &target.system, &target.value).await?.and_then(|p| p["id"].as_str().map(|id| format!("Patient/{id}"))).unwrap_or_default(),
    };
    if !kept.is_empty() {
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [provenance_entry(msg, interface, record, vec![json!({"reference": kept})])]});
        if let Err(e) = engine.bundle(access, bundle, None).await {
            tracing::warn!(error = %e, "MLLP: merged, but cannot record the message");
        }
    }
    Ok(format!("merged {system}|{value} into {kept}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_read_as_err_2() {
        assert_eq!(location_of("OBX[3]-5").as_deref(), Some("OBX^3^5"));
        assert_eq!(location_of("PID-7").as_deref(), Some("PID^1^7"));
        assert_eq!(location_of("nonsense"), None);
    }

    #[test]
    fn every_row_is_distinct() {
        let mut rows: Vec<(&str, &str)> = supported().collect();
        let n = rows.len();
        rows.sort();
        rows.dedup();
        assert_eq!(rows.len(), n);
    }
}
