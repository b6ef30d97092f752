//! Outbound messages: FHIR R4 resources written as HL7 v2 ER7, for the systems that still
//! take v2 (PAS feeds, result routing). Pure: resources and a [`Header`] in, text out.
//!
//! * [`adt`] writes `ADT^A01` (admit), `A02` (transfer), `A03` (discharge), `A04`
//!   (register), `A08` (update) and the other `ADT^Ann` events: MSH, EVN, PID and, with an
//!   Encounter, PV1.
//! * [`oru_r01`] writes a DiagnosticReport and its Observations as `ORU^R01`: MSH, PID,
//!   PV1 (with an Encounter), ORC, OBR, NTE (the conclusion), then for each Observation its
//!   OBX (and one more for each of its components) followed by an NTE for each of its notes.
//!
//! The messages are built as [`Message`]s and written with [`Message::encode`], so every
//! text value is escaped with the message's delimiters (`|^~\&` as `\F\ \S\ \R\ \E\ \T\`,
//! line breaks as `\.br\`) and [`Message::parse`] reads the text back as written. Segments
//! end with `\r`; empty trailing fields and components are left out. PID is the inverse of
//! [`crate::patient::patient_from_pid`] and PV1 reads back with [`crate::Visit::from_message`].
//!
//! | FHIR | HL7 v2 |
//! | --- | --- |
//! | [`Header`] | MSH-3 to MSH-6 (applications and facilities), MSH-7 (time), MSH-10 (control id), MSH-11 `P`, MSH-12 (version, `2.5.1` when empty) |
//! | trigger | MSH-9 `ADT^A01^ADT_A01` (structure from the trigger: A01/A04/A05/A08/A13/A14/A28/A31 → ADT_A01, A02, A03, …), EVN-1; EVN-2 is MSH-7 |
//! | Patient.identifier, system `https://fhir.nhs.uk/Id/nhs-number` | PID-3 `value^^^NHS^NH` |
//! | Patient.identifier, other systems | PID-3 `value^^^mrn&https://example.org/Id/mrn&URI^MR`: the authority's namespace is the system's last path segment (an OID's universal id type is `ISO`) |
//! | Patient.name (each) | PID-5 XPN `family^given[0]^given[1..] (space-separated)^suffix[0]^prefix (space-separated)^suffix[1..]^use` (use: official L, usual D, maiden M, nickname N, anonymous S, temp TEMP, old BAD) |
//! | Patient.birthDate | PID-7 `YYYYMMDD` (at the precision given) |
//! | Patient.gender | PID-8: male M, female F, other O, unknown U |
//! | Patient.address (each) | PID-11 XAD `line[0]^line[1..] (comma-separated)^city^state^postalCode^country^type^^district`, type: home H, work B, temp C, old BA, billing BI, otherwise a postal address M |
//! | Patient.telecom, use not `work` | PID-13 XTN: phone `number^PRN^PH`, mobile `number^PRS^CP`, fax `^…^FX`, pager `number^BPN^BP`, email `^NET^Internet^address` |
//! | Patient.telecom, use `work` | PID-14, as PID-13 with use code `WPN` |
//! | Patient.maritalStatus | PID-16 CWE |
//! | Patient.multipleBirth[x] | PID-24 `Y`/`N`, PID-25 the birth order |
//! | Patient.deceasedDateTime | PID-29 TS, PID-30 `Y` |
//! | Patient.deceasedBoolean | PID-30 `Y`/`N` |
//! | Encounter.class | PV1-2 (table 0004): IMP/ACUTE/NONAC I, AMB/OBSENC/SS/FLD/HH/VR O, EMER E, PRENC P, a code of table 0004 itself as it is, else U |
//! | Encounter.location\[0\].location | PV1-3.1 point of care: the display, else the id of the reference (`Location/WARD7` → `WARD7`), else its identifier's value |
//! | Encounter.participant (type ATND or none, REF, CON, ADM) | PV1-7 attending, PV1-8 referring, PV1-9 consulting, PV1-17 admitting: XCN `identifier.value^display` |
//! | Encounter.identifier\[0\] | PV1-19 `value^^^authority^VN` |
//! | Encounter.period.start / end | PV1-44 / PV1-45 TS |
//! | DiagnosticReport.basedOn\[\].identifier (first) | ORC-2, OBR-2 placer order number EI `value^namespace` |
//! | DiagnosticReport.identifier\[0\] | ORC-3, OBR-3 filler order number |
//! | DiagnosticReport.status | ORC-1 `RE`; ORC-5 CM/IP/CA; OBR-25: registered I, partial A, preliminary P, final F, amended/corrected/appended C, cancelled and entered-in-error X |
//! | DiagnosticReport.code | OBR-4 CWE |
//! | DiagnosticReport.effective[x] | OBR-7 (dateTime or period start), OBR-8 (period end) |
//! | DiagnosticReport.issued | OBR-22, ORC-9 |
//! | DiagnosticReport.category (system v2-0074) | OBR-24 |
//! | DiagnosticReport.conclusion | NTE after OBR |
//! | Observation.code | OBX-3 CWE `code^display^system` (LOINC LN, SNOMED CT SCT, the other names of table 0396, `v2-NNNN` HL7NNNN, else the system's last path segment), second coding in components 4–6, text in 9 |
//! | Observation.valueQuantity | OBX-2 `NM`, OBX-5 the value; with a comparator `SN` `<^5`; OBX-6 `code^unit^UCUM` |
//! | Observation.valueRange | `SN` `^low^-^high` (`>=^low`, `<=^high` when open) |
//! | Observation.valueRatio | `SN` `^numerator^:^denominator` |
//! | Observation.valueString | `ST` (`TX` when longer than 199 characters or of several lines) |
//! | Observation.valueCodeableConcept | `CWE` |
//! | Observation.valueBoolean | `CWE` `Y^Yes^HL70136` / `N^No^HL70136` |
//! | Observation.valueInteger | `NM` |
//! | Observation.valueDateTime / valueTime / valuePeriod | `DTM` / `TM` / `DR` |
//! | Observation.referenceRange\[0\] | OBX-7 `low-high`, `>low`, `<high`, else its text |
//! | Observation.interpretation | OBX-8 (the first coding's code of each) |
//! | Observation.status | OBX-11: final F, amended/corrected C, preliminary P, registered I, cancelled X, entered-in-error W |
//! | Observation.effective[x] | OBX-14 (dateTime, instant or period start) |
//! | Observation.component | one more OBX each (its code, value, interpretation, range); all the Observation's OBX share OBX-4 = the Observation's position |
//! | Observation.note | NTE after the OBX (`NTE|n|L|text`) |
//!
//! ```
//! use serde_json::json;
//! use tessera_hl7v2::encode::{adt, Header};
//! use tessera_hl7v2::{Message, Visit};
//!
//! let patient = json!({"resourceType": "Patient", "name": [{"family": "O'Neil|Smith", "given": ["Jane"]}], "birthDate": "1980-05-17"});
//! let encounter = json!({"resourceType": "Encounter", "class": {"code": "IMP"}, "identifier": [{"value": "V1"}]});
//! let header = Header { sending_application: "TESSERA".into(), control_id: "1".into(), ..Header::default() };
//! let text = adt("A01", &patient, Some(&encounter), &header).unwrap();
//! assert!(text.contains("PID|1||||O'Neil\\F\\Smith^Jane||19800517\r"));
//! let msg = Message::parse(&text).unwrap();
//! assert_eq!(msg.segment("PID").unwrap().get(5, 1, 1, 1), Some("O'Neil|Smith"));
//! assert_eq!(Visit::from_message(&msg).unwrap().patient_class.as_deref(), Some("I"));
//! ```
//!
//! FHIR dates and times become HL7 TS at the precision given: `2024-07-01T10:30:00+01:00` →
//! `20240701103000+0100`, `Z` → `+0000`, fractions to four digits, `2024-07-01` →
//! `20240701`. A date that is not one is an [`EncodeError`] naming the element.
//!
//! Not encoded: Patient.name with only `text`, Patient.link, contact, communication,
//! generalPractitioner, managingOrganization, photo; telecoms of system `url` and
//! `other`; Encounter.status, type, serviceType, priority, hospitalization,
//! reasonCode, diagnosis and every location but the first; practitioners' names are the
//! references' display (in XCN.2), not split; DiagnosticReport.performer,
//! resultsInterpreter, specimen, conclusionCode, presentedForm, media;
//! Observation.valueSampledData, valueAttachment, dataAbsentReason, method, bodySite,
//! specimen, device, performer, hasMember and every reference range but the first.
//! Decimals are written as JSON numbers read (`5.40` is `5.4`).

use crate::datetime::Dtm;
use crate::map::CODING_SYSTEMS;
use crate::message::{Component, Field, Message, Repetition, Segment};
use crate::patient::NHS_NUMBER_SYSTEM;
use crate::Delimiters;
use serde_json::Value;

/// Who sends and receives an outbound message.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-7, an HL7 TS (`20261207223000+0000`).
    pub timestamp: String,
    /// MSH-12, default "2.5.1" when empty.
    pub version: String,
}

/// Why resources cannot be written as a message: the element and the problem
/// (`Patient.birthDate: '1980-13-01' is not a FHIR date`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

/// MSH-12 when the header gives none.
pub const DEFAULT_VERSION: &str = "2.5.1";

/// ADT^{trigger} (A01 admit, A02 transfer, A03 discharge, A04 register, A08 update) for a FHIR R4 Patient and, when given, Encounter: MSH, EVN, PID, PV1. Segments end with '\r'.
///
/// The trigger is `A` and two digits (any case); other ADT events are written the same
/// way. An error when the trigger is not one, when `patient` is not a Patient or
/// `encounter` not an Encounter, or when a date, the gender or an Encounter's period is
/// not a FHIR value.
pub fn adt(trigger: &str, patient: &Value, encounter: Option<&Value>, header: &Header) -> Result<String, EncodeError> {
    let trigger = trigger.trim().to_ascii_uppercase();
    if !(trigger.len() == 3 && trigger.starts_with('A') && trigger[1..].bytes().all(|b| b.is_ascii_digit())) {
        return Err(EncodeError(format!("'{trigger}' is not an ADT trigger event (A01, A02, A03, A04, A08, …)")));
    }
    check_type(patient, "Patient", "patient")?;
    if let Some(e) = encounter {
        check_type(e, "Encounter", "encounter")?;
    }
    let mut segments = vec![msh(header, "ADT", &trigger, adt_structure(&trigger))];
    let mut evn = Seg::new("EVN");
    evn.text(1, &trigger);
    evn.text(2, &header.timestamp);
    segments.push(evn.build());
    segments.push(pid(patient)?);
    if let Some(e) = encounter {
        segments.push(pv1(e)?);
    }
    finish(segments)
}

/// ORU^R01 for a DiagnosticReport with its Observations (in `result` order; the observations given are the ones the report's `result` references): MSH, PID, (PV1 when encounter given), ORC, OBR, OBX…, NTE.
///
/// The report's conclusion is an NTE after OBR; each Observation's notes are NTEs after its
/// OBX. An error when a resource is not of its type or a date is not a FHIR date.
pub fn oru_r01(patient: &Value, encounter: Option<&Value>, report: &Value, observations: &[Value], header: &Header) -> Result<String, EncodeError> {
    check_type(patient, "Patient", "patient")?;
    if let Some(e) = encounter {
        check_type(e, "Encounter", "encounter")?;
    }
    check_type(report, "DiagnosticReport", "report")?;
    for (i, o) in observations.iter().enumerate() {
        check_type(o, "Observation", &format!("observations[{i}]"))?;
    }
    let mut segments = vec![msh(header, "ORU", "R01", Some("ORU_R01")), pid(patient)?];
    if let Some(e) = encounter {
        segments.push(pv1(e)?);
    }
    let (orc, obr) = order(report)?;
    segments.push(orc);
    segments.push(obr);
    if let Some(conclusion) = text(report, "conclusion") {
        segments.push(nte(1, conclusion));
    }
    let mut set_id = 0;
    for (i, obs) in observations.iter().enumerate() {
        let path = format!("Observation[{}]", i + 1);
        let components = list(obs, "component");
        let sub_id = (!components.is_empty()).then(|| (i + 1).to_string());
        if components.is_empty() || has_value(obs) {
            set_id += 1;
            segments.push(obx(set_id, sub_id.as_deref(), obs, obs, &path)?);
        }
        for (k, component) in components.iter().enumerate() {
            set_id += 1;
            segments.push(obx(set_id, sub_id.as_deref(), component, obs, &format!("{path}.component[{k}]"))?);
        }
        for (n, note) in list(obs, "note").iter().filter_map(|n| text(n, "text")).enumerate() {
            segments.push(nte(n + 1, note));
        }
    }
    finish(segments)
}

/// A FHIR `date`, `dateTime` or `instant` as an HL7 TS at the same precision:
/// `2024-07-01T10:30:00+01:00` → `20240701103000+0100`, `Z` → `+0000`, fractions of a
/// second to four digits, `2024-07` → `202407`. A time without a zone (not FHIR, but seen)
/// is written without one. `None` when the text is not such a value.
pub fn hl7_date_time(fhir: &str) -> Option<String> {
    let t = fhir.trim();
    if !t.is_ascii() {
        return None;
    }
    let (date, time) = match t.split_once('T') {
        Some((d, tm)) => (d, Some(tm)),
        None => (t, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    if parts.len() > 3 || parts.iter().zip([4, 2, 2]).any(|(p, w)| p.len() != w || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    let mut out: String = parts.concat();
    if let Some(time) = time {
        if parts.len() != 3 {
            return None;
        }
        let (clock, zone) = match time.find(['Z', '+', '-']) {
            Some(p) => (&time[..p], Some(&time[p..])),
            None => (time, None),
        };
        let (hms, fraction) = match clock.split_once('.') {
            Some((h, f)) => (h, Some(f)),
            None => (clock, None),
        };
        let fields: Vec<&str> = hms.split(':').collect();
        if !(2..=3).contains(&fields.len()) || fields.iter().any(|f| f.len() != 2 || !f.bytes().all(|b| b.is_ascii_digit())) {
            return None;
        }
        out.push_str(&fields.concat());
        if let Some(f) = fraction {
            if fields.len() != 3 || f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            out.push('.');
            out.push_str(&f[..f.len().min(4)]);
        }
        match zone {
            None => {}
            Some("Z") => out.push_str("+0000"),
            Some(z) if z.len() == 6 && &z[3..4] == ":" && z[1..3].bytes().chain(z[4..].bytes()).all(|b| b.is_ascii_digit()) => {
                out.push_str(&z[..3]);
                out.push_str(&z[4..]);
            }
            Some(_) => return None,
        }
    }
    Dtm::parse(&out).map(|_| out)
}

/// The table 0396 name of a FHIR code system: `http://loinc.org` → `LN`,
/// `http://snomed.info/sct` → `SCT`, `http://terminology.hl7.org/CodeSystem/v2-0078` →
/// `HL70078`, `urn:hl7v2:coding-system:L` → `L`, any other the URI's last path segment.
pub fn coding_system_name(system: &str) -> String {
    let system = system.trim();
    if let Some((name, _)) = CODING_SYSTEMS.iter().find(|(_, uri)| *uri == system) {
        return name.to_string();
    }
    if let Some(name) = system.strip_prefix("urn:hl7v2:coding-system:").filter(|n| !n.is_empty()) {
        return name.to_string();
    }
    if let Some(table) = system.strip_prefix("http://terminology.hl7.org/CodeSystem/v2-").filter(|t| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit())) {
        return format!("HL7{table}");
    }
    last_segment(system).to_string()
}

/// The last part of a URI's path (`https://example.org/Id/mrn` → `mrn`, `urn:oid:1.2.3` →
/// `1.2.3`), or the URI when it has no separator.
fn last_segment(uri: &str) -> &str {
    let trimmed = uri.trim_end_matches(['/', ':', '#']);
    trimmed.rsplit(['/', ':', '#']).next().filter(|s| !s.is_empty()).unwrap_or(uri)
}

fn check_type(resource: &Value, resource_type: &str, what: &str) -> Result<(), EncodeError> {
    let Some(o) = resource.as_object() else {
        return Err(EncodeError(format!("{what}: a {resource_type} is a JSON object, not {}", kind(resource))));
    };
    match o.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == resource_type => Ok(()),
        Some(t) => Err(EncodeError(format!("{what}: expected a {resource_type}, found a {t}"))),
        None => Err(EncodeError(format!("{what}: expected a {resource_type}, found no resourceType"))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A string element that says something (not empty, not only spaces).
fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key)?.as_str().filter(|s| !s.trim().is_empty())
}

fn list<'a>(v: &'a Value, key: &str) -> &'a [Value] {
    v.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

fn strings<'a>(v: &'a Value, key: &str) -> Vec<&'a str> {
    list(v, key).iter().filter_map(Value::as_str).filter(|s| !s.trim().is_empty()).collect()
}

/// A FHIR date/time element as an HL7 TS, or an error naming it.
fn ts(v: &Value, key: &str, path: &str) -> Result<Option<String>, EncodeError> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => hl7_date_time(s).map(Some).ok_or_else(|| EncodeError(format!("{path}.{key}: '{s}' is not a FHIR date/time"))),
        Some(other) => Err(EncodeError(format!("{path}.{key}: a date/time is a string, not {}", kind(other)))),
    }
}

/// One segment being written: fields from 1, set in any order.
struct Seg {
    name: &'static str,
    fields: Vec<Field>,
}

impl Seg {
    fn new(name: &'static str) -> Seg {
        Seg { name, fields: Vec::new() }
    }

    fn set(&mut self, n: usize, field: Field) {
        if field.is_empty() {
            return;
        }
        if self.fields.len() < n {
            self.fields.resize(n, Field::default());
        }
        self.fields[n - 1] = field;
    }

    fn text(&mut self, n: usize, text: &str) {
        self.set(n, Field::from(text));
    }

    fn one(&mut self, n: usize, rep: Repetition) {
        self.reps(n, vec![rep]);
    }

    fn reps(&mut self, n: usize, reps: Vec<Repetition>) {
        let reps: Vec<Repetition> = reps.into_iter().filter(|r| !r.is_empty()).collect();
        if !reps.is_empty() {
            self.set(n, Field::new(reps));
        }
    }

    fn build(self) -> Segment {
        Segment::new(self.name, self.fields)
    }
}

/// A repetition of these components, without the empty ones at the end.
fn comps(mut components: Vec<Component>) -> Repetition {
    while components.len() > 1 && components.last().is_some_and(Component::is_empty) {
        components.pop();
    }
    Repetition::new(components)
}

/// A repetition of these components, each one subcomponent.
fn rep(parts: &[&str]) -> Repetition {
    comps(parts.iter().map(|p| Component::from(*p)).collect())
}

fn finish(segments: Vec<Segment>) -> Result<String, EncodeError> {
    Message::new(Delimiters::default(), segments).map(|m| m.encode()).map_err(|e| EncodeError(e.to_string()))
}

/// The message structure (MSH-9.3) of an ADT trigger event, as HL7 v2.5.1 has it.
fn adt_structure(trigger: &str) -> Option<&'static str> {
    Some(match trigger {
        "A01" | "A04" | "A05" | "A08" | "A13" | "A14" | "A28" | "A31" => "ADT_A01",
        "A02" => "ADT_A02",
        "A03" => "ADT_A03",
        "A06" | "A07" => "ADT_A06",
        "A09" | "A10" | "A11" => "ADT_A09",
        "A12" => "ADT_A12",
        "A15" => "ADT_A15",
        "A16" => "ADT_A16",
        "A17" => "ADT_A17",
        "A21" | "A22" | "A23" | "A25" | "A26" | "A27" | "A29" | "A32" | "A33" => "ADT_A21",
        "A24" => "ADT_A24",
        "A30" | "A34" | "A35" | "A36" | "A46" | "A47" | "A48" | "A49" => "ADT_A30",
        "A38" => "ADT_A38",
        "A39" | "A40" | "A41" | "A42" => "ADT_A39",
        "A43" => "ADT_A43",
        "A45" => "ADT_A45",
        "A50" | "A51" => "ADT_A50",
        "A52" | "A53" | "A55" => "ADT_A52",
        "A54" => "ADT_A54",
        "A60" => "ADT_A60",
        "A61" | "A62" => "ADT_A61",
        _ => return None,
    })
}

fn msh(header: &Header, code: &str, trigger: &str, structure: Option<&str>) -> Segment {
    let mut s = Seg::new("MSH");
    s.text(3, &header.sending_application);
    s.text(4, &header.sending_facility);
    s.text(5, &header.receiving_application);
    s.text(6, &header.receiving_facility);
    s.text(7, &header.timestamp);
    s.one(9, rep(&[code, trigger, structure.unwrap_or("")]));
    s.text(10, &header.control_id);
    s.text(11, "P");
    s.text(12, if header.version.trim().is_empty() { DEFAULT_VERSION } else { &header.version });
    s.build()
}

/// An HD for an identifier or code system: namespace (the last path segment), universal id
/// and its type (`ISO` for an OID, else `URI`).
fn authority(system: &str) -> Component {
    let system = system.trim();
    if system.is_empty() {
        return Component::from("");
    }
    let (universal, kind) = match system.strip_prefix("urn:oid:") {
        Some(oid) => (oid, "ISO"),
        None => (system, "URI"),
    };
    Component::new(vec![last_segment(system).to_string(), universal.to_string(), kind.to_string()])
}

/// An EI (`value^namespace`) of an Identifier.
fn entity_identifier(identifier: &Value) -> Option<Repetition> {
    let value = text(identifier, "value")?;
    let namespace = text(identifier, "system").map(last_segment).unwrap_or("");
    Some(rep(&[value, namespace]))
}

fn pid(patient: &Value) -> Result<Segment, EncodeError> {
    let mut s = Seg::new("PID");
    s.text(1, "1");

    let mut ids: Vec<Repetition> = Vec::new();
    for id in list(patient, "identifier") {
        let Some(value) = text(id, "value") else { continue };
        let system = text(id, "system").unwrap_or("").trim();
        let r = if system == NHS_NUMBER_SYSTEM {
            rep(&[value, "", "", "NHS", "NH"])
        } else {
            comps(vec![value.into(), "".into(), "".into(), authority(system), "MR".into()])
        };
        if !ids.contains(&r) {
            ids.push(r);
        }
    }
    s.reps(3, ids);

    let mut names = Vec::new();
    for name in list(patient, "name") {
        let family = text(name, "family").unwrap_or("");
        let given = strings(name, "given");
        if family.is_empty() && given.is_empty() {
            continue;
        }
        let first = given.first().copied().unwrap_or("");
        let middle = given.get(1..).unwrap_or_default().join(" ");
        let prefix = strings(name, "prefix").join(" ");
        let suffixes = strings(name, "suffix");
        let suffix = suffixes.first().copied().unwrap_or("");
        let more = suffixes.get(1..).unwrap_or_default().join(" ");
        let name_type = match text(name, "use").unwrap_or("") {
            "official" => "L",
            "usual" => "D",
            "maiden" => "M",
            "nickname" => "N",
            "anonymous" => "S",
            "temp" => "TEMP",
            "old" => "BAD",
            _ => "",
        };
        names.push(rep(&[family, first, &middle, suffix, &prefix, &more, name_type]));
    }
    s.reps(5, names);

    if let Some(birth) = ts(patient, "birthDate", "Patient")? {
        s.text(7, &birth);
    }
    if let Some(g) = patient.get("gender").filter(|g| !g.is_null()) {
        let sex = match g.as_str().unwrap_or("") {
            "male" => "M",
            "female" => "F",
            "other" => "O",
            "unknown" => "U",
            other => return Err(EncodeError(format!("Patient.gender: '{other}' is not male, female, other or unknown"))),
        };
        s.text(8, sex);
    }

    let mut addresses = Vec::new();
    for a in list(patient, "address") {
        let lines = strings(a, "line");
        let street = lines.first().copied().unwrap_or("");
        let other = lines.get(1..).unwrap_or_default().join(", ");
        let address_type = match (text(a, "use"), text(a, "type")) {
            (Some("home"), _) => "H",
            (Some("work"), _) => "B",
            (Some("temp"), _) => "C",
            (Some("old"), _) => "BA",
            (Some("billing"), _) => "BI",
            (_, Some("postal")) => "M",
            _ => "",
        };
        let part = |k| text(a, k).unwrap_or("");
        addresses.push(rep(&[street, &other, part("city"), part("state"), part("postalCode"), part("country"), address_type, "", part("district")]));
    }
    s.reps(11, addresses);

    let (mut home, mut work) = (Vec::new(), Vec::new());
    for t in list(patient, "telecom") {
        let Some(value) = text(t, "value") else { continue };
        let usage = text(t, "use").unwrap_or("");
        let is_work = usage == "work";
        let phone_use = match usage {
            "work" => "WPN",
            "mobile" => "PRS",
            _ => "PRN",
        };
        let r = match text(t, "system").unwrap_or("phone") {
            "email" => rep(&["", "NET", "Internet", value]),
            "phone" => rep(&[value, phone_use, if usage == "mobile" { "CP" } else { "PH" }]),
            "sms" => rep(&[value, phone_use, "CP"]),
            "fax" => rep(&[value, phone_use, "FX"]),
            "pager" => rep(&[value, "BPN", "BP"]),
            _ => continue,
        };
        if is_work { work.push(r) } else { home.push(r) }
    }
    s.reps(13, home);
    s.reps(14, work);

    if let Some(status) = patient.get("maritalStatus") {
        s.one(16, cwe(status));
    }
    match patient.get("multipleBirthBoolean").and_then(Value::as_bool) {
        Some(b) => s.text(24, if b { "Y" } else { "N" }),
        None => {
            if let Some(order) = patient.get("multipleBirthInteger").and_then(Value::as_i64) {
                s.text(24, "Y");
                s.text(25, &order.to_string());
            }
        }
    }
    if let Some(death) = ts(patient, "deceasedDateTime", "Patient")? {
        s.text(29, &death);
        s.text(30, "Y");
    } else if let Some(dead) = patient.get("deceasedBoolean").and_then(Value::as_bool) {
        s.text(30, if dead { "Y" } else { "N" });
    }
    Ok(s.build())
}

/// PV1-2 (table 0004) for an Encounter.class coding.
fn patient_class(class: Option<&Value>) -> String {
    let Some(class) = class else { return "U".into() };
    let code = text(class, "code").unwrap_or("").trim();
    if text(class, "system") == Some("http://terminology.hl7.org/CodeSystem/v2-0004") && !code.is_empty() {
        return code.to_string();
    }
    match code {
        "IMP" | "ACUTE" | "NONAC" => "I",
        "AMB" | "OBSENC" | "SS" | "FLD" | "HH" | "VR" => "O",
        "EMER" => "E",
        "PRENC" => "P",
        _ => "U",
    }
    .into()
}

/// The id part of a reference: `Location/WARD7` → `WARD7` (a version is dropped).
fn reference_id(reference: &str) -> &str {
    let r = reference.split("/_history/").next().unwrap_or(reference);
    r.rsplit('/').next().unwrap_or(r)
}

/// An XCN (`id^display`) for a Reference to a practitioner.
fn xcn(individual: &Value) -> Repetition {
    let id = individual.get("identifier").and_then(|i| text(i, "value")).unwrap_or("");
    rep(&[id, text(individual, "display").unwrap_or("")])
}

fn pv1(encounter: &Value) -> Result<Segment, EncodeError> {
    let mut s = Seg::new("PV1");
    s.text(1, "1");
    s.text(2, &patient_class(encounter.get("class")));
    if let Some(place) = list(encounter, "location").first().and_then(|l| l.get("location")) {
        let point = text(place, "display")
            .or_else(|| text(place, "reference").map(reference_id))
            .or_else(|| place.get("identifier").and_then(|i| text(i, "value")))
            .unwrap_or("");
        s.one(3, rep(&[point]));
    }
    for (field, role) in [(7, "ATND"), (8, "REF"), (9, "CON"), (17, "ADM")] {
        let doctors: Vec<Repetition> = list(encounter, "participant")
            .iter()
            .filter(|p| {
                let codes: Vec<&str> = list(p, "type").iter().flat_map(|t| list(t, "coding")).filter_map(|c| text(c, "code")).collect();
                codes.contains(&role) || (role == "ATND" && codes.is_empty())
            })
            .filter_map(|p| p.get("individual"))
            .map(xcn)
            .collect();
        s.reps(field, doctors);
    }
    if let Some(id) = list(encounter, "identifier").first() {
        if let Some(value) = text(id, "value") {
            s.one(19, comps(vec![value.into(), "".into(), "".into(), authority(text(id, "system").unwrap_or("")), "VN".into()]));
        }
    }
    if let Some(period) = encounter.get("period") {
        if let Some(start) = ts(period, "start", "Encounter.period")? {
            s.text(44, &start);
        }
        if let Some(end) = ts(period, "end", "Encounter.period")? {
            s.text(45, &end);
        }
    }
    Ok(s.build())
}

/// A CWE for a CodeableConcept: the first two codings (code, display, table 0396 name) and
/// the text (in component 9, or 2 when there is no coding).
fn cwe(concept: &Value) -> Repetition {
    let codings: Vec<&Value> = list(concept, "coding").iter().filter(|c| text(c, "code").is_some() || text(c, "display").is_some()).take(2).collect();
    let label = text(concept, "text").unwrap_or("");
    if codings.is_empty() {
        return rep(&["", label]);
    }
    let mut parts: Vec<String> = Vec::new();
    for c in &codings {
        parts.push(text(c, "code").unwrap_or("").to_string());
        parts.push(text(c, "display").unwrap_or("").to_string());
        parts.push(text(c, "system").map(coding_system_name).unwrap_or_default());
    }
    let first_display = text(codings[0], "display").unwrap_or("");
    if !label.is_empty() && label != first_display {
        parts.resize(8, String::new());
        parts.push(label.to_string());
    }
    comps(parts.iter().map(|p| Component::from(p.as_str())).collect())
}

fn nte(set_id: usize, comment: &str) -> Segment {
    let mut s = Seg::new("NTE");
    s.text(1, &set_id.to_string());
    s.text(2, "L");
    s.text(3, comment);
    s.build()
}

/// ORC and OBR for the report.
fn order(report: &Value) -> Result<(Segment, Segment), EncodeError> {
    let placer = list(report, "basedOn").iter().filter_map(|b| b.get("identifier")).find_map(entity_identifier);
    let filler = list(report, "identifier").first().and_then(entity_identifier);
    let status = text(report, "status").unwrap_or("");
    let issued = ts(report, "issued", "DiagnosticReport")?;

    let mut orc = Seg::new("ORC");
    orc.text(1, "RE");
    orc.reps(2, placer.clone().into_iter().collect());
    orc.reps(3, filler.clone().into_iter().collect());
    orc.text(
        5,
        match status {
            "final" | "amended" | "corrected" | "appended" => "CM",
            "registered" | "partial" | "preliminary" => "IP",
            "cancelled" | "entered-in-error" => "CA",
            _ => "",
        },
    );
    orc.text(9, issued.as_deref().unwrap_or(""));

    let mut obr = Seg::new("OBR");
    obr.text(1, "1");
    obr.reps(2, placer.into_iter().collect());
    obr.reps(3, filler.into_iter().collect());
    if let Some(code) = report.get("code") {
        obr.one(4, cwe(code));
    }
    let (start, end) = effective(report, "DiagnosticReport")?;
    obr.text(7, start.as_deref().unwrap_or(""));
    obr.text(8, end.as_deref().unwrap_or(""));
    obr.text(22, issued.as_deref().unwrap_or(""));
    let section = list(report, "category")
        .iter()
        .flat_map(|c| list(c, "coding"))
        .find(|c| text(c, "system") == Some("http://terminology.hl7.org/CodeSystem/v2-0074"))
        .and_then(|c| text(c, "code"));
    obr.text(24, section.unwrap_or(""));
    obr.text(
        25,
        match status {
            "registered" => "I",
            "partial" => "A",
            "preliminary" => "P",
            "final" => "F",
            "amended" | "corrected" | "appended" => "C",
            "cancelled" | "entered-in-error" => "X",
            _ => "",
        },
    );
    Ok((orc.build(), obr.build()))
}

/// effective[x] as start and end TS.
fn effective(resource: &Value, path: &str) -> Result<(Option<String>, Option<String>), EncodeError> {
    if let Some(t) = ts(resource, "effectiveDateTime", path)? {
        return Ok((Some(t), None));
    }
    if let Some(t) = ts(resource, "effectiveInstant", path)? {
        return Ok((Some(t), None));
    }
    match resource.get("effectivePeriod") {
        Some(p) => {
            let path = format!("{path}.effectivePeriod");
            Ok((ts(p, "start", &path)?, ts(p, "end", &path)?))
        }
        None => Ok((None, None)),
    }
}

const VALUE_KEYS: [&str; 10] =
    ["valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger", "valueRange", "valueRatio", "valueTime", "valueDateTime", "valuePeriod"];

fn has_value(element: &Value) -> bool {
    VALUE_KEYS.iter().any(|k| element.get(*k).is_some_and(|v| !v.is_null()))
}

/// A number (JSON number, or a string of one) as HL7 NM text.
fn number(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if !s.trim().is_empty() && s.trim().parse::<f64>().is_ok_and(f64::is_finite) => Some(s.trim().to_string()),
        _ => None,
    }
}

/// OBX-6 for a Quantity: `code^unit^system`, or `^unit` when it has no code.
fn units(q: &Value) -> Repetition {
    let system = text(q, "system").map(coding_system_name).unwrap_or_default();
    rep(&[text(q, "code").unwrap_or(""), text(q, "unit").unwrap_or(""), &system])
}

/// An OBX value: its type (OBX-2), the value (OBX-5) and the units (OBX-6).
type ObxValue = (&'static str, Repetition, Option<Repetition>);

/// OBX-2, OBX-5 and OBX-6 for the value[x] of an Observation or component.
fn observation_value(element: &Value, path: &str) -> Result<Option<ObxValue>, EncodeError> {
    if let Some(q) = element.get("valueQuantity") {
        let Some(n) = number(q.get("value")) else { return Ok(None) };
        let unit = Some(units(q));
        return Ok(Some(match text(q, "comparator") {
            Some(c @ ("<" | "<=" | ">" | ">=")) => ("SN", rep(&[c, &n]), unit),
            _ => ("NM", rep(&[&n]), unit),
        }));
    }
    if let Some(c) = element.get("valueCodeableConcept") {
        return Ok(Some(("CWE", cwe(c), None)));
    }
    if let Some(s) = element.get("valueString").and_then(Value::as_str) {
        let kind = if s.chars().count() > 199 || s.contains(['\n', '\r']) { "TX" } else { "ST" };
        return Ok(Some((kind, rep(&[s]), None)));
    }
    if let Some(b) = element.get("valueBoolean").and_then(Value::as_bool) {
        let r = if b { rep(&["Y", "Yes", "HL70136"]) } else { rep(&["N", "No", "HL70136"]) };
        return Ok(Some(("CWE", r, None)));
    }
    if let Some(i) = element.get("valueInteger").and_then(Value::as_i64) {
        return Ok(Some(("NM", rep(&[&i.to_string()]), None)));
    }
    if let Some(range) = element.get("valueRange") {
        let low = range.get("low");
        let high = range.get("high");
        let (l, h) = (number(low.and_then(|q| q.get("value"))), number(high.and_then(|q| q.get("value"))));
        let unit = low.filter(|_| l.is_some()).or(high).map(units);
        let value = match (l, h) {
            (Some(l), Some(h)) => rep(&["", &l, "-", &h]),
            (Some(l), None) => rep(&[">=", &l]),
            (None, Some(h)) => rep(&["<=", &h]),
            (None, None) => return Ok(None),
        };
        return Ok(Some(("SN", value, unit)));
    }
    if let Some(ratio) = element.get("valueRatio") {
        let n = number(ratio.get("numerator").and_then(|q| q.get("value")));
        let d = number(ratio.get("denominator").and_then(|q| q.get("value")));
        return Ok(match (n, d) {
            (Some(n), Some(d)) => Some(("SN", rep(&["", &n, ":", &d]), None)),
            _ => None,
        });
    }
    if let Some(t) = element.get("valueTime").and_then(Value::as_str) {
        let hl7 = hl7_date_time(&format!("2000-01-01T{}", t.trim())).filter(|_| !t.contains(['Z', '+', '-']));
        let Some(hl7) = hl7 else { return Err(EncodeError(format!("{path}.valueTime: '{t}' is not a FHIR time"))) };
        return Ok(Some(("TM", rep(&[&hl7[8..]]), None)));
    }
    if let Some(t) = ts(element, "valueDateTime", path)? {
        return Ok(Some(("DTM", rep(&[&t]), None)));
    }
    if let Some(p) = element.get("valuePeriod") {
        let path = format!("{path}.valuePeriod");
        let (start, end) = (ts(p, "start", &path)?, ts(p, "end", &path)?);
        if start.is_none() && end.is_none() {
            return Ok(None);
        }
        return Ok(Some(("DR", rep(&[start.as_deref().unwrap_or(""), end.as_deref().unwrap_or("")]), None)));
    }
    Ok(None)
}

/// OBX-7 for a reference range: `low-high`, `>low`, `<high`, else its text.
fn reference_range(range: &Value) -> String {
    let low = number(range.get("low").and_then(|q| q.get("value")));
    let high = number(range.get("high").and_then(|q| q.get("value")));
    match (low, high) {
        (Some(l), Some(h)) => format!("{l}-{h}"),
        (Some(l), None) => format!(">{l}"),
        (None, Some(h)) => format!("<{h}"),
        (None, None) => text(range, "text").unwrap_or("").to_string(),
    }
}

/// One OBX: code, value, range and interpretation from `element` (the Observation or one of
/// its components), status and time from `observation`.
fn obx(set_id: usize, sub_id: Option<&str>, element: &Value, observation: &Value, path: &str) -> Result<Segment, EncodeError> {
    let mut s = Seg::new("OBX");
    s.text(1, &set_id.to_string());
    if let Some((kind, value, unit)) = observation_value(element, path)? {
        s.text(2, kind);
        s.one(5, value);
        if let Some(u) = unit {
            s.one(6, u);
        }
    }
    if let Some(code) = element.get("code") {
        s.one(3, cwe(code));
    }
    s.text(4, sub_id.unwrap_or(""));
    if let Some(range) = list(element, "referenceRange").first() {
        s.text(7, &reference_range(range));
    }
    let flags: Vec<Repetition> = list(element, "interpretation").iter().filter_map(|i| list(i, "coding").iter().find_map(|c| text(c, "code"))).map(|c| rep(&[c])).collect();
    s.reps(8, flags);
    s.text(
        11,
        match text(observation, "status").unwrap_or("") {
            "final" => "F",
            "amended" | "corrected" => "C",
            "preliminary" => "P",
            "registered" => "I",
            "cancelled" => "X",
            "entered-in-error" => "W",
            _ => "",
        },
    );
    let (start, _) = effective(observation, path)?;
    s.text(14, start.as_deref().unwrap_or(""));
    Ok(s.build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patient::{patient_from_pid, IdentifierMap};
    use crate::visit::{Location, Visit};
    use proptest::prelude::*;
    use serde_json::json;

    const MRN: &str = "https://example.org/Id/mrn";

    fn header() -> Header {
        Header {
            sending_application: "TESSERA".into(),
            sending_facility: "RXX".into(),
            receiving_application: "PAS".into(),
            receiving_facility: "RXX".into(),
            control_id: "MSG0001".into(),
            timestamp: "20261207223000+0000".into(),
            version: String::new(),
        }
    }

    fn patient() -> Value {
        json!({
            "resourceType": "Patient",
            "identifier": [
                {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"},
                {"system": MRN, "value": "K123"}
            ],
            "name": [{"use": "official", "family": "Smith", "given": ["Jane", "Mary", "Ann"], "prefix": ["Dr"], "suffix": ["Jr", "MD"]}],
            "gender": "female",
            "birthDate": "1980-05-17",
            "address": [{"use": "home", "line": ["1 High Street", "Flat 2"], "city": "Leeds", "district": "West Yorkshire", "postalCode": "LS1 1AA", "country": "GBR"}],
            "telecom": [
                {"system": "phone", "value": "0113 496 0000", "use": "home"},
                {"system": "phone", "value": "07700 900123", "use": "mobile"},
                {"system": "email", "value": "jane@example.org"},
                {"system": "phone", "value": "0113 496 0001", "use": "work"}
            ],
            "deceasedDateTime": "2024-07-01T10:30:00+01:00"
        })
    }

    fn encounter() -> Value {
        json!({
            "resourceType": "Encounter",
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "identifier": [{"system": "https://example.org/Id/visit", "value": "V0001"}],
            "location": [{"location": {"reference": "Location/WARD7"}}],
            "participant": [
                {"type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "ATND"}]}],
                 "individual": {"identifier": {"value": "C123"}, "display": "Dr Ann Jones"}},
                {"type": [{"coding": [{"code": "REF"}]}], "individual": {"display": "Dr Lee"}}
            ],
            "period": {"start": "2024-07-01T10:30:00+01:00", "end": "2024-07-05"}
        })
    }

    fn id_map() -> IdentifierMap {
        let mut map = IdentifierMap::new("https://example.org/Id/unknown");
        map.by_authority.insert("mrn".into(), MRN.into());
        map
    }

    #[test]
    fn adt_round_trip() {
        let text = adt("A01", &patient(), Some(&encounter()), &header()).unwrap();
        assert!(text.ends_with('\r'));
        assert_eq!(text.split('\r').filter(|s| !s.is_empty()).map(|s| &s[..3]).collect::<Vec<_>>(), ["MSH", "EVN", "PID", "PV1"]);
        let msg = Message::parse(&text).unwrap();
        let t = msg.message_type().unwrap();
        assert_eq!((t.code.as_str(), t.trigger.as_deref(), t.structure.as_deref()), ("ADT", Some("A01"), Some("ADT_A01")));
        assert_eq!(msg.control_id(), Some("MSG0001"));
        assert_eq!(msg.version(), Some("2.5.1"));
        assert_eq!(msg.sending_application(), Some("TESSERA"));
        assert_eq!(msg.msh().value(7), Some("20261207223000+0000"));
        assert_eq!(msg.segment("EVN").unwrap().value(1), Some("A01"));

        let p = patient_from_pid(&msg, &id_map()).unwrap();
        assert_eq!(p["name"][0]["family"], "Smith");
        assert_eq!(p["name"][0]["given"], json!(["Jane", "Mary", "Ann"]));
        assert_eq!(p["name"][0]["prefix"], json!(["Dr"]));
        assert_eq!(p["name"][0]["suffix"], json!(["Jr", "MD"]));
        assert_eq!(p["name"][0]["use"], "official");
        assert_eq!(p["birthDate"], "1980-05-17");
        assert_eq!(p["gender"], "female");
        assert_eq!(p["identifier"][0]["system"], NHS_NUMBER_SYSTEM);
        assert_eq!(p["identifier"][0]["value"], "9434765919");
        assert_eq!(p["identifier"][1]["system"], MRN);
        assert_eq!(p["identifier"][1]["value"], "K123");
        assert_eq!(p["address"][0], json!({"use": "home", "line": ["1 High Street", "Flat 2"], "city": "Leeds", "district": "West Yorkshire", "postalCode": "LS1 1AA", "country": "GBR"}));
        assert_eq!(
            p["telecom"],
            json!([
                {"system": "phone", "value": "0113 496 0000", "use": "home"},
                {"system": "phone", "value": "07700 900123", "use": "mobile"},
                {"system": "email", "value": "jane@example.org", "use": "home"},
                {"system": "phone", "value": "0113 496 0001", "use": "work"}
            ])
        );
        assert_eq!(p["deceasedDateTime"], "2024-07-01T10:30:00+01:00");

        let v = Visit::from_message(&msg).unwrap();
        assert_eq!(v.patient_class.as_deref(), Some("I"));
        assert_eq!(v.visit_number.as_deref(), Some("V0001"));
        assert_eq!(v.location, Some(Location { point_of_care: Some("WARD7".into()), ..Location::default() }));
        assert_eq!(v.attending.len(), 1);
        assert_eq!(v.attending[0].id.as_deref(), Some("C123"));
        assert_eq!(v.attending[0].family.as_deref(), Some("Dr Ann Jones"));
        assert_eq!(v.admitted.as_deref(), Some("20240701103000+0100"));
        assert_eq!(v.discharged.as_deref(), Some("20240705"));
        let pv1 = msg.segment("PV1").unwrap();
        assert_eq!(pv1.get(8, 1, 2, 1), Some("Dr Lee"));
        assert_eq!(pv1.get(19, 1, 4, 1), Some("visit"));
        assert_eq!(pv1.get(19, 1, 5, 1), Some("VN"));
    }

    #[test]
    fn adt_without_encounter_and_other_triggers() {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Lee"}], "deceasedBoolean": true});
        let text = adt("a08", &p, None, &Header { version: "2.4".into(), ..Header::default() }).unwrap();
        let msg = Message::parse(&text).unwrap();
        assert_eq!(msg.message_type().unwrap().structure.as_deref(), Some("ADT_A01"));
        assert_eq!(msg.version(), Some("2.4"));
        assert!(msg.segment("PV1").is_none());
        assert_eq!(msg.segment("PID").unwrap().value(30), Some("Y"));
        for (trigger, structure) in [("A02", Some("ADT_A02")), ("A03", Some("ADT_A03")), ("A04", Some("ADT_A01")), ("A99", None)] {
            let msg = Message::parse(&adt(trigger, &p, None, &header()).unwrap()).unwrap();
            assert_eq!(msg.message_type().unwrap().structure.as_deref(), structure);
        }
        assert!(adt("R01", &p, None, &header()).is_err());
        assert!(adt("A1", &p, None, &header()).is_err());
    }

    #[test]
    fn classes() {
        for (code, class) in [("IMP", "I"), ("AMB", "O"), ("EMER", "E"), ("ACUTE", "I"), ("OBSENC", "O"), ("VR", "O"), ("PRENC", "P"), ("XYZ", "U")] {
            let e = json!({"resourceType": "Encounter", "class": {"code": code}});
            let msg = Message::parse(&adt("A04", &patient(), Some(&e), &header()).unwrap()).unwrap();
            assert_eq!(Visit::from_message(&msg).unwrap().patient_class.as_deref(), Some(class), "{code}");
        }
        let e = json!({"resourceType": "Encounter", "class": {"system": "http://terminology.hl7.org/CodeSystem/v2-0004", "code": "R"}, "location": [{"location": {"display": "Ward 7"}}]});
        let v = Visit::from_message(&Message::parse(&adt("A04", &patient(), Some(&e), &header()).unwrap()).unwrap()).unwrap();
        assert_eq!(v.patient_class.as_deref(), Some("R"));
        assert_eq!(v.location.unwrap().point_of_care.as_deref(), Some("Ward 7"));
    }

    #[test]
    fn delimiters_in_text_are_escaped() {
        let awkward = r"O|Brien^Smith~Jones\Wong&Co";
        let mut p = patient();
        p["name"][0]["family"] = json!(awkward);
        p["address"][0]["city"] = json!("A&E | Ward ^ 3\nnext line");
        let text = adt("A01", &p, None, &Header { control_id: "1|2".into(), ..header() }).unwrap();
        assert!(text.contains(r"O\F\Brien\S\Smith\R\Jones\E\Wong\T\Co"));
        let msg = Message::parse(&text).unwrap();
        assert_eq!(msg.segments().len(), 3);
        assert_eq!(msg.control_id(), Some("1|2"));
        let back = patient_from_pid(&msg, &id_map()).unwrap();
        assert_eq!(back["name"][0]["family"], awkward);
        assert_eq!(back["address"][0]["city"], "A&E | Ward ^ 3\nnext line");
    }

    fn report() -> Value {
        json!({
            "resourceType": "DiagnosticReport",
            "status": "final",
            "identifier": [{"system": "https://example.org/Id/lab-report", "value": "R123"}],
            "basedOn": [{"reference": "ServiceRequest/1", "identifier": {"system": "https://example.org/Id/order", "value": "ORD9"}}],
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "HM"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "58410-2", "display": "CBC panel"}], "text": "Full blood count"},
            "effectiveDateTime": "2024-07-01T09:00:00Z",
            "issued": "2024-07-01T10:30:00.123456+01:00",
            "conclusion": "Normal | nothing ^ to report"
        })
    }

    fn observations() -> Vec<Value> {
        vec![
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "718-7", "display": "Hemoglobin"}]},
                   "effectiveDateTime": "2024-07-01T09:00:00Z",
                   "valueQuantity": {"value": 13.2, "unit": "g/dL", "system": "http://unitsofmeasure.org", "code": "g/dL"},
                   "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N"}]}],
                   "referenceRange": [{"low": {"value": 12}, "high": {"value": 16.5}}]}),
            json!({"resourceType": "Observation", "status": "preliminary",
                   "code": {"coding": [{"system": "https://example.org/CodeSystem/local", "code": "CMT"}]},
                   "valueString": "See A&E note | follow up",
                   "note": [{"text": "Phoned to ward"}]}),
            json!({"resourceType": "Observation", "status": "corrected",
                   "code": {"coding": [{"system": "http://snomed.info/sct", "code": "365861007", "display": "Finding of blood group"}]},
                   "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "278149003", "display": "Blood group A Rh(D) positive"}], "text": "A pos"}}),
            json!({"resourceType": "Observation", "status": "entered-in-error",
                   "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7"}]},
                   "valueRange": {"low": {"value": 3.9, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}, "high": {"value": 5.6}},
                   "interpretation": [{"coding": [{"code": "H"}]}, {"coding": [{"code": "A"}]}],
                   "referenceRange": [{"high": {"value": 7}}]}),
            json!({"resourceType": "Observation", "status": "final",
                   "code": {"text": "Blood pressure"},
                   "component": [
                       {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "comparator": "<", "code": "mm[Hg]", "system": "http://unitsofmeasure.org"}},
                       {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "code": "mm[Hg]", "system": "http://unitsofmeasure.org"}}
                   ]})
        ]
    }

    #[test]
    fn oru_reads_back() {
        let text = oru_r01(&patient(), Some(&encounter()), &report(), &observations(), &header()).unwrap();
        let msg = Message::parse(&text).unwrap();
        let names: Vec<&str> = msg.segments().iter().map(Segment::name).collect();
        assert_eq!(names, ["MSH", "PID", "PV1", "ORC", "OBR", "NTE", "OBX", "OBX", "NTE", "OBX", "OBX", "OBX", "OBX"]);
        let t = msg.message_type().unwrap();
        assert_eq!((t.code.as_str(), t.trigger.as_deref(), t.structure.as_deref()), ("ORU", Some("R01"), Some("ORU_R01")));
        assert_eq!(patient_from_pid(&msg, &id_map()).unwrap()["identifier"][0]["value"], "9434765919");

        let orc = msg.segment("ORC").unwrap();
        assert_eq!((orc.value(1), orc.value(2), orc.value(3), orc.value(5)), (Some("RE"), Some("ORD9"), Some("R123"), Some("CM")));
        let obr = msg.segment("OBR").unwrap();
        assert_eq!(obr.value(2), Some("ORD9"));
        assert_eq!(obr.get(2, 1, 2, 1), Some("order"));
        assert_eq!(obr.value(3), Some("R123"));
        assert_eq!((obr.get(4, 1, 1, 1), obr.get(4, 1, 2, 1), obr.get(4, 1, 3, 1), obr.get(4, 1, 9, 1)), (Some("58410-2"), Some("CBC panel"), Some("LN"), Some("Full blood count")));
        assert_eq!(obr.value(7), Some("20240701090000+0000"));
        assert_eq!(obr.value(22), Some("20240701103000.1234+0100"));
        assert_eq!(obr.value(24), Some("HM"));
        assert_eq!(obr.value(25), Some("F"));
        assert_eq!(msg.segment("NTE").unwrap().value(3), Some("Normal | nothing ^ to report"));

        let obx: Vec<&Segment> = msg.segments_named("OBX").collect();
        let nm = obx[0];
        assert_eq!(nm.value(1), Some("1"));
        assert_eq!(nm.value(2), Some("NM"));
        assert_eq!((nm.get(3, 1, 1, 1), nm.get(3, 1, 2, 1), nm.get(3, 1, 3, 1)), (Some("718-7"), Some("Hemoglobin"), Some("LN")));
        assert_eq!(nm.value(5), Some("13.2"));
        assert_eq!((nm.get(6, 1, 1, 1), nm.get(6, 1, 2, 1), nm.get(6, 1, 3, 1)), (Some("g/dL"), Some("g/dL"), Some("UCUM")));
        assert_eq!(nm.value(7), Some("12-16.5"));
        assert_eq!(nm.value(8), Some("N"));
        assert_eq!(nm.value(11), Some("F"));
        assert_eq!(nm.value(14), Some("20240701090000+0000"));

        let st = obx[1];
        assert_eq!((st.value(2), st.value(5), st.value(11)), (Some("ST"), Some("See A&E note | follow up"), Some("P")));
        assert_eq!(st.get(3, 1, 3, 1), Some("local"));
        assert_eq!(msg.segments()[8].value(3), Some("Phoned to ward"));

        let cwe = obx[2];
        assert_eq!(cwe.value(2), Some("CWE"));
        assert_eq!((cwe.get(5, 1, 1, 1), cwe.get(5, 1, 2, 1), cwe.get(5, 1, 3, 1), cwe.get(5, 1, 9, 1)), (Some("278149003"), Some("Blood group A Rh(D) positive"), Some("SCT"), Some("A pos")));
        assert_eq!(cwe.get(3, 1, 3, 1), Some("SCT"));
        assert_eq!(cwe.value(11), Some("C"));

        let sn = obx[3];
        assert_eq!(sn.value(2), Some("SN"));
        assert_eq!((sn.get(5, 1, 1, 1), sn.get(5, 1, 2, 1), sn.get(5, 1, 3, 1), sn.get(5, 1, 4, 1)), (None, Some("3.9"), Some("-"), Some("5.6")));
        assert_eq!(sn.get(6, 1, 1, 1), Some("mmol/L"));
        assert_eq!(sn.value(7), Some("<7"));
        assert_eq!((sn.get(8, 1, 1, 1), sn.get(8, 2, 1, 1)), (Some("H"), Some("A")));
        assert_eq!(sn.value(11), Some("W"));

        let (systolic, diastolic) = (obx[4], obx[5]);
        assert_eq!((systolic.value(1), systolic.value(4), systolic.value(2)), (Some("5"), Some("5"), Some("SN")));
        assert_eq!((systolic.get(5, 1, 1, 1), systolic.get(5, 1, 2, 1)), (Some("<"), Some("120")));
        assert_eq!((diastolic.value(1), diastolic.value(4), diastolic.value(2), diastolic.value(5)), (Some("6"), Some("5"), Some("NM"), Some("80")));
        assert_eq!(diastolic.get(3, 1, 1, 1), Some("8462-4"));
        assert_eq!(diastolic.get(6, 1, 3, 1), Some("UCUM"));
    }

    #[test]
    fn other_value_types() {
        let obs = |value: Value| {
            let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
            o.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
            let text = oru_r01(&patient(), None, &report(), &[o], &header()).unwrap();
            let msg = Message::parse(&text).unwrap();
            assert!(msg.segment("PV1").is_none());
            msg.segment("OBX").unwrap().clone()
        };
        let b = obs(json!({"valueBoolean": true}));
        assert_eq!((b.value(2), b.value(5)), (Some("CWE"), Some("Y")));
        let i = obs(json!({"valueInteger": -3}));
        assert_eq!((i.value(2), i.value(5)), (Some("NM"), Some("-3")));
        let d = obs(json!({"valueDateTime": "2024-07-01"}));
        assert_eq!((d.value(2), d.value(5)), (Some("DTM"), Some("20240701")));
        let t = obs(json!({"valueTime": "10:30:15"}));
        assert_eq!((t.value(2), t.value(5)), (Some("TM"), Some("103015")));
        let p = obs(json!({"valuePeriod": {"start": "2024-07-01T10:00:00Z", "end": "2024-07-02T10:00:00Z"}}));
        assert_eq!((p.value(2), p.get(5, 1, 1, 1), p.get(5, 1, 2, 1)), (Some("DR"), Some("20240701100000+0000"), Some("20240702100000+0000")));
        let r = obs(json!({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}));
        assert_eq!((r.value(2), r.get(5, 1, 2, 1), r.get(5, 1, 3, 1), r.get(5, 1, 4, 1)), (Some("SN"), Some("1"), Some(":"), Some("128")));
        let long = obs(json!({"valueString": "line 1\nline 2"}));
        assert_eq!((long.value(2), long.value(5)), (Some("TX"), Some("line 1\nline 2")));
        let none = obs(json!({"dataAbsentReason": {"text": "lost"}}));
        assert_eq!((none.value(2), none.value(5), none.get(3, 1, 2, 1)), (None, None, Some("x")));
        assert!(oru_r01(&patient(), None, &report(), &[json!({"resourceType": "Observation", "valueDateTime": "yesterday"})], &header()).unwrap_err().0.contains("valueDateTime"));
    }

    #[test]
    fn date_times() {
        assert_eq!(hl7_date_time("2024-07-01T10:30:00+01:00").as_deref(), Some("20240701103000+0100"));
        assert_eq!(hl7_date_time("2024-07-01").as_deref(), Some("20240701"));
        assert_eq!(hl7_date_time("2024-07").as_deref(), Some("202407"));
        assert_eq!(hl7_date_time("2024").as_deref(), Some("2024"));
        assert_eq!(hl7_date_time("2024-07-01T10:30:00Z").as_deref(), Some("20240701103000+0000"));
        assert_eq!(hl7_date_time("2024-07-01T10:30:00.5-05:00").as_deref(), Some("20240701103000.5-0500"));
        assert_eq!(hl7_date_time("2024-07-01T10:30:00.123456Z").as_deref(), Some("20240701103000.1234+0000"));
        assert_eq!(hl7_date_time("2024-07-01T10:30").as_deref(), Some("202407011030"));
        for bad in ["", "2024-13-01", "2024-02-30", "24-07-01", "2024-07-01T", "2024-07-01T25:00:00Z", "2024-07T10:00:00Z", "2024-07-01T10:30:00+1", "2024/07/01", "２０２４"] {
            assert_eq!(hl7_date_time(bad), None, "{bad}");
        }
        assert_eq!(coding_system_name("http://loinc.org"), "LN");
        assert_eq!(coding_system_name("http://snomed.info/sct"), "SCT");
        assert_eq!(coding_system_name("http://terminology.hl7.org/CodeSystem/v2-0078"), "HL70078");
        assert_eq!(coding_system_name("urn:hl7v2:coding-system:L"), "L");
        assert_eq!(coding_system_name("https://example.org/CodeSystem/local/"), "local");
        assert_eq!(coding_system_name("urn:oid:1.2.3"), "1.2.3");
    }

    #[test]
    fn errors() {
        let h = header();
        for bad in [json!("Patient"), json!([]), json!(null), json!({"name": []}), json!({"resourceType": "Practitioner"})] {
            let e = adt("A01", &bad, None, &h).unwrap_err();
            assert!(e.0.starts_with("patient: "), "{e}");
            assert!(oru_r01(&bad, None, &report(), &[], &h).is_err());
        }
        let p = patient();
        assert!(adt("A01", &p, Some(&json!({"resourceType": "Patient"})), &h).unwrap_err().0.contains("Encounter"));
        assert!(oru_r01(&p, None, &json!({"resourceType": "Observation"}), &[], &h).unwrap_err().0.contains("DiagnosticReport"));
        assert!(oru_r01(&p, None, &report(), &[json!({"resourceType": "Patient"})], &h).unwrap_err().0.contains("observations[0]"));
        let mut bad_date = p.clone();
        bad_date["birthDate"] = json!("1980-13-01");
        assert_eq!(adt("A01", &bad_date, None, &h).unwrap_err(), EncodeError("Patient.birthDate: '1980-13-01' is not a FHIR date/time".into()));
        let mut bad_gender = p.clone();
        bad_gender["gender"] = json!("F");
        assert!(adt("A01", &bad_gender, None, &h).unwrap_err().0.contains("Patient.gender"));
        let bad_period = json!({"resourceType": "Encounter", "period": {"start": 20240701}});
        assert!(adt("A01", &p, Some(&bad_period), &h).unwrap_err().0.contains("Encounter.period.start"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics_and_parses(family in any::<String>(), given in any::<String>(), value in any::<String>(), unit in any::<String>(), app in any::<String>(), trigger in any::<String>()) {
            let p = json!({"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "identifier": [{"system": value, "value": family}],
                           "address": [{"line": [value], "city": given}], "telecom": [{"system": "email", "value": value}]});
            let e = json!({"resourceType": "Encounter", "class": {"code": unit}, "identifier": [{"value": value}], "location": [{"location": {"display": family}}],
                           "participant": [{"individual": {"display": given, "identifier": {"value": unit}}}]});
            let h = Header { sending_application: app.clone(), control_id: value.clone(), ..Header::default() };
            let text = adt("A01", &p, Some(&e), &h).unwrap();
            let msg = Message::parse(&text).unwrap();
            prop_assert_eq!(msg.segments().len(), 4);
            prop_assert_eq!(msg.sending_application(), (!app.is_empty()).then_some(app.as_str()));
            if !family.trim().is_empty() {
                prop_assert_eq!(msg.segment("PID").unwrap().get(5, 1, 1, 1), Some(family.as_str()));
            }
            let _ = adt(&trigger, &p, None, &h);

            let obs = vec![
                json!({"resourceType": "Observation", "status": value, "code": {"coding": [{"system": unit, "code": family, "display": given}], "text": value}, "valueString": value, "note": [{"text": given}]}),
                json!({"resourceType": "Observation", "code": {"text": family}, "valueQuantity": {"value": 1.5, "unit": unit, "comparator": given}, "referenceRange": [{"text": value}]}),
                json!({"resourceType": "Observation", "code": {"text": family}, "valueCodeableConcept": {"coding": [{"code": value, "system": given}]}, "interpretation": [{"coding": [{"code": unit}]}]}),
            ];
            let r = json!({"resourceType": "DiagnosticReport", "status": given, "code": {"text": value}, "conclusion": family, "identifier": [{"value": unit}]});
            let text = oru_r01(&p, Some(&e), &r, &obs, &h).unwrap();
            let msg = Message::parse(&text).unwrap();
            let obx = msg.segment("OBX").unwrap();
            if !value.trim().is_empty() {
                prop_assert_eq!(obx.value(5), Some(value.as_str()));
            }
            prop_assert_eq!(msg.segments_named("OBX").count(), 3);
        }
    }
}
