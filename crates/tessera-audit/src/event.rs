//! IHE BALP-style FHIR R4 `AuditEvent`s.
//!
//! [`audit_event`] follows the Basic Audit Log Patterns (BALP) of IHE for RESTful
//! interactions:
//!
//! * `type`: `rest` ("RESTful Operation", `http://terminology.hl7.org/CodeSystem/audit-event-type`)
//!   with the interaction as `subtype` (`http://hl7.org/fhir/restful-interaction`: `read`,
//!   `vread`, `search-type`, `create`, …); DICOM `110110` "Patient Record" for patient
//!   record access outside the REST API; DICOM `110114` "User Authentication" with
//!   `110122` Login / `110123` Logout; DICOM `110113` "Security Alert" with `110127`
//!   "Emergency Override Started" when a user breaks the glass.
//! * `action`: C, R, U, D or E (searches, operations, logins are E, as in BALP).
//! * `outcome`: 0 success, 4 minor failure (e.g. access denied), 8 serious failure,
//!   12 major failure; `outcomeDesc` says why.
//! * `agent`: the user (who: `Practitioner/…` or `Device/…`, `requestor` true, role,
//!   network address), the organisation they act for, and the server (`Device/tessera`).
//! * `source`: the observer, `Device/tessera`, an application server.
//! * `entity`: each patient (`type` 1 Person, `role` 1 Patient), each resource
//!   (`type` 2 System Object, `role` 4 Domain Resource) and, for searches, the query
//!   (`role` 24 Query, the query string in base64 as `query`).
//! * `purposeOfEvent` and the user's `purposeOfUse`: `BTG` ("break the glass",
//!   `http://terminology.hl7.org/CodeSystem/v3-ActReason`) with the stated reason as text,
//!   when the access is an emergency override.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tessera_store::NewAudit;

const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const EVENT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-event-type";
const RESTFUL_INTERACTION: &str = "http://hl7.org/fhir/restful-interaction";
const PARTICIPATION_TYPE: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const ROLE_CLASS: &str = "http://terminology.hl7.org/CodeSystem/v3-RoleClass";
const ENTITY_TYPE: &str = "http://terminology.hl7.org/CodeSystem/audit-entity-type";
const OBJECT_ROLE: &str = "http://terminology.hl7.org/CodeSystem/object-role";
const SOURCE_TYPE: &str = "http://terminology.hl7.org/CodeSystem/security-source-type";
const ACT_REASON: &str = "http://terminology.hl7.org/CodeSystem/v3-ActReason";

/// The server, as observer and as the destination of requests.
pub const SERVER_DEVICE: &str = "Device/tessera";

/// A FHIR RESTful interaction (`http://hl7.org/fhir/restful-interaction`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Create,
    SearchType,
    SearchSystem,
    Capabilities,
    Transaction,
    Batch,
    /// An operation (`$name`).
    Operation(String),
}

impl Interaction {
    pub fn code(&self) -> &'static str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::Capabilities => "capabilities",
            Interaction::Transaction => "transaction",
            Interaction::Batch => "batch",
            Interaction::Operation(_) => "operation",
        }
    }

    /// The AuditEvent `action` (C, R, U, D, E).
    pub fn action(&self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Read
            | Interaction::Vread
            | Interaction::HistoryInstance
            | Interaction::HistoryType
            | Interaction::HistorySystem
            | Interaction::Capabilities => "R",
            Interaction::Update | Interaction::Patch => "U",
            Interaction::Delete => "D",
            Interaction::SearchType
            | Interaction::SearchSystem
            | Interaction::Transaction
            | Interaction::Batch
            | Interaction::Operation(_) => "E",
        }
    }

    /// The short action of the audit index (`NewAudit::action`).
    pub fn label(&self) -> &'static str {
        match self {
            Interaction::Read
            | Interaction::Vread
            | Interaction::HistoryInstance
            | Interaction::HistoryType
            | Interaction::HistorySystem => "read",
            Interaction::SearchType | Interaction::SearchSystem => "search",
            Interaction::Create => "create",
            Interaction::Update | Interaction::Patch => "update",
            Interaction::Delete => "delete",
            Interaction::Capabilities => "capabilities",
            Interaction::Transaction => "transaction",
            Interaction::Batch => "batch",
            Interaction::Operation(_) => "operation",
        }
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// A FHIR REST interaction.
    Rest(Interaction),
    /// Access to a patient's record by another path than the REST API (export, print, …).
    PatientRecord(Interaction),
    Login,
    Logout,
    /// A user declares an emergency and overrides access restrictions.
    BreakGlass,
}

/// `AuditEvent.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Success,
    /// E.g. access denied, invalid request.
    MinorFailure,
    SeriousFailure,
    MajorFailure,
}

impl Outcome {
    pub fn code(self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::MinorFailure => "4",
            Outcome::SeriousFailure => "8",
            Outcome::MajorFailure => "12",
        }
    }
}

/// Who acted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Who {
    /// A practitioner id (`Practitioner/<id>`).
    Practitioner(String),
    /// A system acting on its own (`Device/<id>`).
    Device(String),
    /// Any other reference (`PractitionerRole/…`, `Patient/…`, `RelatedPerson/…`).
    Reference(String),
}

impl Who {
    pub fn reference(&self) -> String {
        match self {
            Who::Practitioner(id) => format!("Practitioner/{id}"),
            Who::Device(id) => format!("Device/{id}"),
            Who::Reference(r) => r.clone(),
        }
    }
}

/// A coded value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coded {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// The requesting user (or system).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Agent {
    pub who: Who,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The role the user acts in (e.g. a SNOMED CT or local role code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Coded>,
    /// `Organization/…` the user acts for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    /// The client's network address (IP address or host name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_address: Option<String>,
}

/// Everything [`audit_event`] records. This, not the AuditEvent, is what the store keeps
/// ([`encode_record`]), so that auditing an access stays cheap; the AuditEvent is rendered
/// when the log is read ([`render_record`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventInput {
    pub kind: EventKind,
    /// When it happened (microseconds since the epoch).
    pub recorded_micros: i64,
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_desc: Option<String>,
    /// The access was refused by policy (indexed as the action `"denied"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub denied: bool,
    pub agent: Agent,
    /// References of the resources involved (`Observation/1`, `Observation/1/_history/2`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resources: Vec<String>,
    /// Ids of the patients whose data is involved.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// For searches: the query (e.g. `Observation?patient=123&code=…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// Break-glass access: the reason the user gave.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// `source.site` (e.g. the deployment or domain name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
}

impl EventInput {
    /// The short action of the audit index: `"denied"` for refused access, else
    /// `"read"`, `"search"`, `"create"`, `"update"`, `"delete"`, `"login"`, `"logout"`,
    /// `"break-glass"`, …
    pub fn action_label(&self) -> &'static str {
        if self.denied {
            return "denied";
        }
        match &self.kind {
            EventKind::Rest(i) | EventKind::PatientRecord(i) => i.label(),
            EventKind::Login => "login",
            EventKind::Logout => "logout",
            EventKind::BreakGlass => "break-glass",
        }
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn coded(c: &Coded) -> Value {
    let mut m = Map::new();
    m.insert("system".into(), c.system.clone().into());
    m.insert("code".into(), c.code.clone().into());
    if let Some(d) = &c.display {
        m.insert("display".into(), d.clone().into());
    }
    Value::Object(m)
}

/// A FHIR `instant` for microseconds since the epoch (UTC).
pub fn format_instant(micros: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

fn is_ip(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok()
}

/// Builds the AuditEvent (see the [module](self) documentation).
pub fn audit_event(e: &EventInput) -> Value {
    let (event_type, subtype, action) = match &e.kind {
        EventKind::Rest(i) => {
            let mut sub = coding(RESTFUL_INTERACTION, i.code(), i.code());
            if let Interaction::Operation(name) = i {
                sub["display"] = format!("${}", name.trim_start_matches('$')).into();
            }
            (
                coding(EVENT_TYPE, "rest", "RESTful Operation"),
                sub,
                i.action(),
            )
        }
        EventKind::PatientRecord(i) => (
            coding(DCM, "110110", "Patient Record"),
            coding(RESTFUL_INTERACTION, i.code(), i.code()),
            i.action(),
        ),
        EventKind::Login => (
            coding(DCM, "110114", "User Authentication"),
            coding(DCM, "110122", "Login"),
            "E",
        ),
        EventKind::Logout => (
            coding(DCM, "110114", "User Authentication"),
            coding(DCM, "110123", "Logout"),
            "E",
        ),
        EventKind::BreakGlass => (
            coding(DCM, "110113", "Security Alert"),
            coding(DCM, "110127", "Emergency Override Started"),
            "E",
        ),
    };
    let purpose = e.break_glass.as_ref().map(|reason| {
        let mut c = json!({"coding": [coding(ACT_REASON, "BTG", "break the glass")]});
        if !reason.trim().is_empty() {
            c["text"] = reason.clone().into();
        }
        json!([c])
    });

    // The user.
    let who = e.agent.who.reference();
    let mut user = Map::new();
    user.insert(
        "type".into(),
        json!({"coding": [coding(PARTICIPATION_TYPE, "IRCP", "information recipient")]}),
    );
    if let Some(role) = &e.agent.role {
        user.insert("role".into(), json!([{"coding": [coded(role)]}]));
    }
    user.insert("who".into(), json!({"reference": who}));
    if let Some(name) = &e.agent.name {
        user.insert("name".into(), name.clone().into());
    }
    user.insert("requestor".into(), true.into());
    if let Some(address) = &e.agent.network_address {
        user.insert(
            "network".into(),
            json!({"address": address, "type": if is_ip(address) { "2" } else { "1" }}),
        );
    }
    if let Some(p) = &purpose {
        user.insert("purposeOfUse".into(), p.clone());
    }
    let mut agents = vec![Value::Object(user)];
    if let Some(org) = &e.agent.organisation {
        agents.push(json!({
            "type": {"coding": [coding(ROLE_CLASS, "PROV", "healthcare provider")]},
            "who": {"reference": org},
            "requestor": false,
        }));
    }
    agents.push(json!({
        "type": {"coding": [coding(DCM, "110152", "Destination Role ID")]},
        "who": {"reference": SERVER_DEVICE},
        "requestor": false,
    }));

    // What.
    let mut entities = Vec::new();
    let mut patients: Vec<&String> = e.patients.iter().collect();
    patients.sort();
    patients.dedup();
    let patient_refs: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
    for r in &patient_refs {
        entities.push(json!({
            "what": {"reference": r},
            "type": coding(ENTITY_TYPE, "1", "Person"),
            "role": coding(OBJECT_ROLE, "1", "Patient"),
        }));
    }
    for r in &e.resources {
        if patient_refs.contains(r) {
            continue;
        }
        if r.contains('?') {
            // A type-level request (`AuditEvent?agent=…`): a query, not a reference.
            entities.push(json!({
                "type": coding(ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "24", "Query"),
                "query": base64::engine::general_purpose::STANDARD.encode(r.as_bytes()),
            }));
            continue;
        }
        if !is_reference(r) {
            // Something that is not a resource (the domain configuration, `Domain`): named.
            entities.push(json!({
                "type": coding(ENTITY_TYPE, "2", "System Object"),
                "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
                "name": r,
            }));
            continue;
        }
        entities.push(json!({
            "what": {"reference": r},
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "4", "Domain Resource"),
        }));
    }
    if let Some(q) = &e.query {
        entities.push(json!({
            "type": coding(ENTITY_TYPE, "2", "System Object"),
            "role": coding(OBJECT_ROLE, "24", "Query"),
            "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes()),
        }));
    }

    let mut out = Map::new();
    out.insert("resourceType".into(), "AuditEvent".into());
    out.insert("type".into(), event_type);
    out.insert("subtype".into(), json!([subtype]));
    out.insert("action".into(), action.into());
    out.insert("recorded".into(), format_instant(e.recorded_micros).into());
    out.insert("outcome".into(), e.outcome.code().into());
    if let Some(desc) = &e.outcome_desc {
        out.insert("outcomeDesc".into(), desc.clone().into());
    }
    if let Some(p) = purpose {
        out.insert("purposeOfEvent".into(), p);
    }
    out.insert("agent".into(), Value::Array(agents));
    let mut source = Map::new();
    if let Some(site) = &e.site {
        source.insert("site".into(), site.clone().into());
    }
    source.insert("observer".into(), json!({"reference": SERVER_DEVICE}));
    source.insert(
        "type".into(),
        json!([coding(SOURCE_TYPE, "4", "Application Server")]),
    );
    out.insert("source".into(), Value::Object(source));
    if !entities.is_empty() {
        out.insert("entity".into(), Value::Array(entities));
    }
    Value::Object(out)
}

/// The system of the data-class codes in a redacted entity's `securityLabel`
/// (`psychiatry`, `hiv`, `clinical`, `restricted`, … as the domain names its classes).
pub const DATA_CLASS_SYSTEM: &str = "https://tessera.health/data-class";

/// What stands in for a withheld entity or query.
pub const REDACTED: &str = "redacted";

/// An entity the reader may not see, as shown in its place: no reference, no id, no
/// display; only the data classes it holds (`securityLabel`, [`DATA_CLASS_SYSTEM`]) and the
/// trust that owns it (`detail` of type `owner`; absent when unknown), described as
/// [`REDACTED`].
pub fn redacted_entity<S: AsRef<str>>(classes: &[S], owner: Option<&str>) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), coding(ENTITY_TYPE, "2", "System Object"));
    m.insert("role".into(), coding(OBJECT_ROLE, "4", "Domain Resource"));
    if !classes.is_empty() {
        let labels: Vec<Value> = classes
            .iter()
            .map(|c| json!({"system": DATA_CLASS_SYSTEM, "code": c.as_ref()}))
            .collect();
        m.insert("securityLabel".into(), Value::Array(labels));
    }
    m.insert("description".into(), REDACTED.into());
    if let Some(owner) = owner {
        m.insert(
            "detail".into(),
            json!([{"type": "owner", "valueString": owner}]),
        );
    }
    Value::Object(m)
}

/// A query entity whose text the reader may not see: the query reads [`REDACTED`].
pub fn redacted_query_entity() -> Value {
    json!({
        "type": coding(ENTITY_TYPE, "2", "System Object"),
        "role": coding(OBJECT_ROLE, "24", "Query"),
        "description": REDACTED,
        "query": base64::engine::general_purpose::STANDARD.encode(REDACTED.as_bytes()),
    })
}

/// The audit record for the store: the AuditEvent with its index columns (user = the
/// agent's reference, the patients, [`EventInput::action_label`], break-glass).
pub fn new_audit(e: &EventInput) -> NewAudit {
    let mut patients = e.patients.clone();
    patients.sort();
    patients.dedup();
    NewAudit {
        recorded_micros: e.recorded_micros,
        user: Some(e.agent.who.reference()),
        patients,
        action: e.action_label().to_string(),
        break_glass: e.break_glass.is_some() || e.kind == EventKind::BreakGlass,
        event: encode_record(e),
    }
}

/// The bytes the store keeps for an event (and its hash covers): the [`EventInput`] as
/// compact JSON.
pub fn encode_record(e: &EventInput) -> Vec<u8> {
    serde_json::to_vec(e).unwrap_or_default()
}

/// The FHIR AuditEvent of a stored record, with `id` set to its position in the chain.
/// Records kept as complete AuditEvents are returned as they are, with the id added.
/// `None` if the bytes are neither.
pub fn render_record(stored: &[u8], seq: i64) -> Option<Value> {
    let mut event = match serde_json::from_slice::<EventInput>(stored) {
        Ok(input) => audit_event(&input),
        Err(_) => serde_json::from_slice::<Value>(stored)
            .ok()
            .filter(|v| v["resourceType"] == "AuditEvent")?,
    };
    let object = event.as_object_mut()?;
    let mut out = Map::with_capacity(object.len() + 1);
    out.insert("resourceType".into(), "AuditEvent".into());
    out.insert("id".into(), seq.to_string().into());
    for (k, v) in std::mem::take(object) {
        if k != "resourceType" && k != "id" {
            out.insert(k, v);
        }
    }
    Some(Value::Object(out))
}

/// A literal reference the audit can render as one: `Type/id` (optionally with
/// `/_history/v`), or an absolute URL.
fn is_reference(r: &str) -> bool {
    if r.starts_with("http://") || r.starts_with("https://") || r.starts_with("urn:") {
        return true;
    }
    let mut parts = r.split('/');
    let (Some(ty), Some(id)) = (parts.next(), parts.next()) else { return false };
    ty.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && ty.chars().all(|c| c.is_ascii_alphanumeric())
        && !id.is_empty()
        && id.len() <= 64
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}
