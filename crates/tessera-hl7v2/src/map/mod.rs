//! Messages to FHIR R4 resources: what one inbound message says, as the entries of one
//! transaction. Pure: the caller (the MLLP interface) supplies the patient's and the
//! encounter's references, the identifier systems and the ward table, and writes the
//! entries through the engine in one transaction.
//!
//! Each message family has its module and a table at its top that reads as the mapping
//! (segment-field → FHIR element), documented with a worked example in docs/hl7v2.md:
//!
//! | module | messages | resources |
//! | --- | --- | --- |
//! | [`adt`] | ADT A01–A13, A28, A31 (PV1) | Encounter |
//! | [`results`] | ORU^R01 | DiagnosticReport, Observation |
//! | [`orders`] | ORM^O01, OML^O21 | ServiceRequest |
//! | [`scheduling`] | SIU^S12–S15 | Appointment |
//! | [`documents`] | MDM^T02 | DocumentReference |
//! | [`pharmacy`] | RDE^O11 | MedicationRequest |
//! | [`immunisation`] | VXU^V04 | Immunization |
//!
//! Conventions every mapping follows:
//! * a field that must be there and is not, or that cannot be read, is a [`FieldError`]
//!   naming the field as HL7 does (`OBX-5`, with the segment's repetition when there are
//!   several: `OBX[3]-5`) and the problem in words — the interface answers `AE` with it;
//! * a business identifier (placer/filler order number, visit number, appointment id,
//!   document id) makes each resource a conditional write ([`Method::Upsert`] on
//!   `identifier=system|value`), so a correction or status change updates the resource it
//!   is about and a message applied again changes nothing;
//! * values are trimmed; empty values and HL7's explicit null `""` are absent; no element is
//!   ever an empty string, array or object;
//! * codes keep their coding system (table 0396: `LN` → LOINC, `SCT` → SNOMED CT, …, see
//!   [`coding_system`]) and their text.

pub mod adt;
pub mod documents;
pub mod immunisation;
pub mod orders;
pub mod pharmacy;
pub mod results;
pub mod scheduling;

use crate::message::{Message, Repetition, Segment};
pub use crate::patient::FieldError;
use crate::visit::Location;
use serde_json::{json, Map, Value};

/// The identifier systems of an interface's business identifiers (each organisation has
/// its own; see `Systems::for_organisation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Systems {
    /// Visit numbers (PV1-19).
    pub visit: String,
    /// Placer order numbers (ORC-2, OBR-2).
    pub placer_order: String,
    /// Filler order numbers (ORC-3, OBR-3): also the laboratory's report numbers.
    pub filler_order: String,
    /// Appointment ids (SCH-1, SCH-2).
    pub appointment: String,
    /// Document ids (TXA-12).
    pub document: String,
    /// Practitioner ids (XCN.1 of PV1-7, OBR-16, ORC-12, …).
    pub practitioner: String,
}

impl Systems {
    /// `https://tessera.health/Id/{org}/visit-number` and so on.
    pub fn for_organisation(org: &str) -> Systems {
        let s = |kind: &str| format!("https://tessera.health/Id/{org}/{kind}");
        Systems {
            visit: s("visit-number"),
            placer_order: s("placer-order"),
            filler_order: s("filler-order"),
            appointment: s("appointment"),
            document: s("document"),
            practitioner: s("practitioner"),
        }
    }
}

/// What a mapping is given besides the message.
pub struct Context<'a> {
    /// Identifier systems of the interface's organisation.
    pub systems: &'a Systems,
    /// The reference of the message's patient (`urn:uuid:…` of the Patient entry, or
    /// `Patient/id`).
    pub patient: &'a str,
    /// The reference of the message's encounter (PV1), if it has one.
    pub encounter: Option<&'a str>,
    /// `Organization/{id}`: the interface's organisation (performer of results, custodian of
    /// documents, …).
    pub organisation: &'a str,
    /// The interface's ward table: a PL (PV1-3, AIL-3, …) to `Location/{id}`, or `None`
    /// when the table does not know it (an error: the message names a place the domain
    /// does not have).
    pub location: &'a (dyn Fn(&Location) -> Option<String> + Sync),
    /// Results must be for an order the record has (ORU with no placer/filler order
    /// number is refused).
    pub require_order: bool,
}

/// How an entry is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// POST: a new resource.
    Create,
    /// POST with `ifNoneExist` (`identifier=system|value`): created unless it exists.
    CreateIfNoneExist(String),
    /// PUT `Type?identifier=system|value`: created, or the one it identifies updated.
    Upsert(String),
}

/// One entry of the transaction a message becomes.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// `urn:uuid:…`, unique in the message: other entries refer to this one by it.
    pub full_url: String,
    pub method: Method,
    /// The resource, with `resourceType`, without `id`.
    pub resource: Value,
}

impl Entry {
    /// The transaction Bundle entry.
    pub fn to_bundle_entry(&self) -> Value {
        let rt = self.resource["resourceType"].as_str().unwrap_or_default();
        let request = match &self.method {
            Method::Create => json!({"method": "POST", "url": rt}),
            Method::CreateIfNoneExist(q) => json!({"method": "POST", "url": rt, "ifNoneExist": q}),
            Method::Upsert(q) => json!({"method": "PUT", "url": format!("{rt}?{q}")}),
        };
        json!({"fullUrl": self.full_url, "resource": self.resource, "request": request})
    }
}

/// A fresh `urn:uuid:` for an entry: `n` numbers the entries of one message.
pub fn full_url(kind: &str, n: usize) -> String {
    // Deterministic within a message; the engine assigns the ids.
    let mut h: u64 = 0xcbf29ce484222325;
    for b in kind.bytes().chain(n.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("urn:uuid:{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", (h >> 32) as u32, (h >> 16) as u16, (h & 0xfff) as u16, n & 0xfff, (h ^ n as u64) & 0xffff_ffff_ffff)
}

/// `system|value` for a conditional write, with the characters that would break a query
/// string percent-encoded.
pub fn identifier_query(system: &str, value: &str) -> String {
    let enc = |s: &str| {
        s.chars()
            .map(|c| match c {
                '&' | '=' | '#' | '%' | '+' | ' ' | ',' | '|' | '?' => format!("%{:02X}", c as u32),
                c => c.to_string(),
            })
            .collect::<String>()
    };
    format!("identifier={}|{}", enc(system), enc(value))
}

/// A value as the mappings use it: trimmed; empty, spaces and HL7's null `""` are absent.
pub fn clean(s: Option<&str>) -> Option<String> {
    let t = s?.trim();
    (!t.is_empty() && t != "\"\"").then(|| t.to_string())
}

/// Component `c`, subcomponent `s` of a repetition, cleaned.
pub fn part(rep: &Repetition, c: usize, s: usize) -> Option<String> {
    clean(rep.component(c).and_then(|x| x.subcomponent(s)))
}

/// Field `f`, first repetition, component `c` (subcomponent 1) of a segment, cleaned.
pub fn value(seg: &Segment, f: usize, c: usize) -> Option<String> {
    clean(seg.get(f, 1, c, 1))
}

/// The name of the `n`th (from 1) segment called `name` for errors: `OBX[3]` when the
/// message has several, `OBX` when one.
pub fn segment_label(msg: &Message, name: &str, n: usize) -> String {
    if msg.segments_named(name).count() > 1 {
        format!("{name}[{n}]")
    } else {
        name.to_string()
    }
}

/// HL7 table 0396 (coding systems) to FHIR system URIs; other names are kept as
/// `urn:hl7v2:coding-system:{name}`, and an empty one gives no system.
pub const CODING_SYSTEMS: &[(&str, &str)] = &[
    ("LN", "http://loinc.org"),
    ("LOINC", "http://loinc.org"),
    ("SCT", "http://snomed.info/sct"),
    ("SNM", "http://snomed.info/sct"),
    ("SNOMED", "http://snomed.info/sct"),
    ("SNM3", "http://snomed.info/sct"),
    ("I10", "http://hl7.org/fhir/sid/icd-10"),
    ("I10C", "http://hl7.org/fhir/sid/icd-10-cm"),
    ("I9C", "http://hl7.org/fhir/sid/icd-9-cm"),
    ("CVX", "http://hl7.org/fhir/sid/cvx"),
    ("MVX", "http://terminology.hl7.org/CodeSystem/MVX"),
    ("NDC", "http://hl7.org/fhir/sid/ndc"),
    ("RXNORM", "http://www.nlm.nih.gov/research/umls/rxnorm"),
    ("UCUM", "http://unitsofmeasure.org"),
    ("ANS+", "http://unitsofmeasure.org"),
    ("ISO+", "http://unitsofmeasure.org"),
    ("DMD", "https://dmd.nhs.uk"),
    ("CPT", "http://www.ama-assn.org/go/cpt"),
    ("HL70005", "http://terminology.hl7.org/CodeSystem/v2-0005"),
];

/// The FHIR system of a table 0396 coding-system name.
pub fn coding_system(name: &str) -> Option<String> {
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    if let Some((_, uri)) = CODING_SYSTEMS.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
        return Some(uri.to_string());
    }
    if let Some(table) = name.get(..3).filter(|p| p.eq_ignore_ascii_case("HL7")).and_then(|_| name.get(3..)).filter(|t| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit())) {
        return Some(format!("http://terminology.hl7.org/CodeSystem/v2-{table}"));
    }
    let safe: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-._~:/".contains(c) { c.to_string() } else { c.to_string().bytes().map(|b| format!("%{b:02X}")).collect() })
        .collect();
    Some(format!("urn:hl7v2:coding-system:{safe}"))
}

/// A CE/CWE (code ^ text ^ system ^ alternate code ^ alternate text ^ alternate system) as a
/// CodeableConcept; `None` when it has neither code nor text.
pub fn codeable_concept(rep: &Repetition) -> Option<Value> {
    let mut codings = Vec::new();
    for (code, display, system) in [(1, 2, 3), (4, 5, 6)] {
        let Some(c) = part(rep, code, 1) else { continue };
        let mut o = Map::new();
        if let Some(s) = part(rep, system, 1).and_then(|s| coding_system(&s)) {
            o.insert("system".into(), json!(s));
        }
        o.insert("code".into(), json!(c));
        if let Some(d) = part(rep, display, 1) {
            o.insert("display".into(), json!(d));
        }
        codings.push(Value::Object(o));
    }
    let text = part(rep, 9, 1).or_else(|| part(rep, 2, 1)).or_else(|| part(rep, 5, 1));
    if codings.is_empty() && text.is_none() {
        return None;
    }
    let mut o = Map::new();
    if !codings.is_empty() {
        o.insert("coding".into(), Value::Array(codings));
    }
    if let Some(t) = text {
        o.insert("text".into(), json!(t));
    }
    Some(Value::Object(o))
}

/// An XCN (id ^ family ^ given ^ … ^ prefix) as a Reference to a practitioner by
/// identifier and display, with no resolution (the record may not hold the person).
pub fn practitioner_reference(rep: &Repetition, systems: &Systems) -> Option<Value> {
    let id = part(rep, 1, 1);
    let family = part(rep, 2, 1);
    let given = part(rep, 3, 1);
    let prefix = part(rep, 6, 1);
    let display: Vec<String> = [prefix, given, family].into_iter().flatten().collect();
    if id.is_none() && display.is_empty() {
        return None;
    }
    let mut o = Map::new();
    o.insert("type".into(), json!("Practitioner"));
    if let Some(id) = id {
        o.insert("identifier".into(), json!({"system": systems.practitioner, "value": id}));
    }
    if !display.is_empty() {
        o.insert("display".into(), json!(display.join(" ")));
    }
    Some(Value::Object(o))
}

/// An HL7 date/time as a FHIR dateTime, or a [`FieldError`] for `field`. A time sent
/// without an offset is the United Kingdom's civil time (GMT, or BST from 01:00 UTC on the
/// last Sunday of March to 01:00 UTC on the last Sunday of October), so that an admission at
/// `202407011030` keeps its time; a date alone stays a date.
pub fn date_time(text: &str, field: &str) -> Result<String, FieldError> {
    let mut dtm = crate::datetime::Dtm::parse(text).ok_or_else(|| FieldError { field: field.to_string(), problem: format!("'{}' is not a date/time", text.trim()) })?;
    if dtm.hour.is_some() && dtm.offset.is_none() {
        dtm.offset = Some(if in_bst(&dtm) { ('+', 1, 0) } else { ('+', 0, 0) });
    }
    Ok(dtm.fhir_date_time())
}

/// Day of the week, 0 = Sunday (Sakamoto).
fn weekday(y: i32, m: u8, d: u8) -> u8 {
    const T: [i32; 12] = [0, 3, 2, 5, 0, 3, 5, 1, 4, 6, 2, 4];
    let y = if m < 3 { y - 1 } else { y };
    ((y + y / 4 - y / 100 + y / 400 + T[m as usize - 1] + d as i32).rem_euclid(7)) as u8
}

fn last_sunday(y: i32, m: u8) -> u8 {
    let last = crate::datetime::days_in_month(y as u16, m);
    last - weekday(y, m, last)
}

/// Whether a local UK time (no offset) falls in British Summer Time.
fn in_bst(t: &crate::datetime::Dtm) -> bool {
    let (y, m, d, h) = (t.year as i32, t.month.unwrap_or(1), t.day.unwrap_or(1), t.hour.unwrap_or(0));
    match m {
        4..=9 => true,
        3 => {
            let s = last_sunday(y, 3);
            d > s || (d == s && h >= 1)
        }
        10 => {
            let s = last_sunday(y, 10);
            d < s || (d == s && h < 1)
        }
        _ => false,
    }
}

/// A field error for `field` (`OBX[2]-5`).
pub fn field_error(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), problem: problem.into() }
}

/// The PL of a location field (PV1-3, AIL-3, …) if it names a place.
pub fn location_of(rep: &Repetition) -> Option<Location> {
    let l = Location { point_of_care: part(rep, 1, 1), room: part(rep, 2, 1), bed: part(rep, 3, 1), facility: part(rep, 4, 1) };
    (l != Location::default()).then_some(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coding_systems() {
        assert_eq!(coding_system("LN").as_deref(), Some("http://loinc.org"));
        assert_eq!(coding_system("hl70078").as_deref(), Some("http://terminology.hl7.org/CodeSystem/v2-0078"));
        assert_eq!(coding_system("L").as_deref(), Some("urn:hl7v2:coding-system:L"));
        assert_eq!(coding_system(" "), None);
        assert_eq!(coding_system("POST 12H").as_deref(), Some("urn:hl7v2:coding-system:POST%2012H"));
    }

    #[test]
    fn local_times_are_uk_civil_time() {
        assert_eq!(date_time("202407011030", "PV1-44").unwrap(), "2024-07-01T10:30:00+01:00");
        assert_eq!(date_time("202401151030", "PV1-44").unwrap(), "2024-01-15T10:30:00+00:00");
        assert_eq!(date_time("202403310030", "x").unwrap(), "2024-03-31T00:30:00+00:00");
        assert_eq!(date_time("202403310130", "x").unwrap(), "2024-03-31T01:30:00+01:00");
        assert_eq!(date_time("202410270030", "x").unwrap(), "2024-10-27T00:30:00+01:00");
        assert_eq!(date_time("202410270130", "x").unwrap(), "2024-10-27T01:30:00+00:00");
        assert_eq!(date_time("20240701", "x").unwrap(), "2024-07-01");
        assert_eq!(date_time("202407011030-0500", "x").unwrap(), "2024-07-01T10:30:00-05:00");
        assert_eq!(date_time("2024x", "OBR-7").unwrap_err().field, "OBR-7");
    }

    #[test]
    fn full_urls_differ() {
        assert_ne!(full_url("Observation", 1), full_url("Observation", 2));
        assert!(full_url("x", 0).starts_with("urn:uuid:"));
        assert_eq!(full_url("x", 7).len(), "urn:uuid:".len() + 36);
    }

    #[test]
    fn identifier_queries_escape() {
        assert_eq!(identifier_query("https://a/b", "X&1|2"), "identifier=https://a/b|X%261%7C2");
    }
}

/// A CE/CWE as a CodeableConcept (see [`codeable_concept`]) whose code, when it is one of
/// the HL7 table `codes` (compared without regard to case) and sent bare (no coding system,
/// CE.3) or with the table's name (`HL70162`), is given the table's `system`
/// (`http://terminology.hl7.org/CodeSystem/v2-0162` for RXR-1). Other codes keep no system:
/// a code the table does not have is not claimed to be of it.
pub fn codeable_concept_in(rep: &Repetition, system: &str, codes: &[&str]) -> Option<Value> {
    let mut cc = codeable_concept(rep)?;
    let table = system.rsplit('-').next().unwrap_or_default();
    let bare = part(rep, 3, 1).is_none_or(|s| s.eq_ignore_ascii_case(&format!("HL7{table}")));
    let code = part(rep, 1, 1).and_then(|c| codes.iter().find(|t| t.eq_ignore_ascii_case(&c)));
    if let (true, Some(code)) = (bare, code) {
        if let Some(first) = cc.get_mut("coding").and_then(|c| c.get_mut(0)).and_then(Value::as_object_mut) {
            first.insert("system".into(), json!(system));
            first.insert("code".into(), json!(code));
        }
    }
    Some(cc)
}

/// A decimal from an NM field, as a JSON number; a [`FieldError`] for `field` when it is
/// not one.
pub fn decimal(text: &str, field: &str) -> Result<Value, FieldError> {
    let t = text.trim();
    let unsigned = t.strip_prefix(['+', '-']).unwrap_or(t);
    let (whole, fraction) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let is_nm = !(whole.is_empty() && fraction.is_empty()) && whole.bytes().chain(fraction.bytes()).all(|b| b.is_ascii_digit());
    let bad = || field_error(field, format!("'{t}' is not a number"));
    if !is_nm {
        return Err(bad());
    }
    // Integers stay integers (`3`, not `3.0`).
    if let Ok(i) = t.trim_start_matches('+').parse::<i64>() {
        return Ok(json!(i));
    }
    t.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).ok_or_else(bad)
}

/// A Quantity of `value` (an NM, see [`decimal`]) in the units of a CE (code ^ text ^
/// system): `unit` is the text, else the code; `system` and `code` only when the units
/// name their coding system (FHIR wants both or neither).
pub fn quantity(value: &str, units: Option<&Repetition>, field: &str) -> Result<Value, FieldError> {
    let mut o = Map::new();
    o.insert("value".into(), decimal(value, field)?);
    if let Some(u) = units {
        let (code, text) = (part(u, 1, 1), part(u, 2, 1));
        if let Some(unit) = text.clone().or_else(|| code.clone()) {
            o.insert("unit".into(), json!(unit));
        }
        if let (Some(code), Some(system)) = (code, part(u, 3, 1).and_then(|s| coding_system(&s))) {
            o.insert("system".into(), json!(system));
            o.insert("code".into(), json!(code));
        }
    }
    Ok(Value::Object(o))
}

/// Inserts `value` under `key` unless it is absent (`None`) or an empty array.
pub fn put(o: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    match value {
        None => {}
        Some(Value::Array(a)) if a.is_empty() => {}
        Some(v) => {
            o.insert(key.into(), v);
        }
    }
}

/// The repetitions of field `f` of a segment (none when empty or absent).
pub fn repetitions(seg: &Segment, f: usize) -> &[Repetition] {
    seg.field(f).map(|x| x.repetitions()).unwrap_or_default()
}

/// The FHIR code of an HL7 code in a table of (HL7 code, FHIR code) pairs, compared
/// without regard to case.
pub fn lookup(table: &[(&str, &'static str)], code: &str) -> Option<&'static str> {
    table.iter().find(|(h, _)| h.eq_ignore_ascii_case(code.trim())).map(|(_, f)| *f)
}

/// The text of NTE-3 (each repetition) of the NTE segments that follow the segment at
/// `index` in the message (stopping at the first other segment), one per line.
pub fn notes_after(msg: &Message, index: usize) -> Option<String> {
    let lines: Vec<String> = msg.segments().iter().skip(index + 1).take_while(|s| s.name() == "NTE").flat_map(|s| repetitions(s, 3).iter().filter_map(|r| part(r, 1, 1))).collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// What the mapping tests share: the test context, the sample messages and the check that
/// a resource holds no empty string, array or object.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;
    use crate::visit::Location;

    /// Runs `f` with the usual test context (organisation `rx1`, patient `urn:uuid:p`,
    /// encounter `urn:uuid:e`, every location known as `Location/w`).
    pub fn with_context<R>(f: impl FnOnce(&Context) -> R) -> R {
        with_locations(&|_| Some("Location/w".into()), f)
    }

    /// As [`with_context`], with this ward table.
    pub fn with_locations<R>(location: &(dyn Fn(&Location) -> Option<String> + Sync), f: impl FnOnce(&Context) -> R) -> R {
        let systems = Systems::for_organisation("rx1");
        let ctx = Context { systems: &systems, patient: "urn:uuid:p", encounter: Some("urn:uuid:e"), organisation: "Organization/rx1", location, require_order: false };
        f(&ctx)
    }

    /// A sample message of the shared data, as sent and with its segments ended by CR, LF
    /// and CRLF; `None` (and a note) when the data is not there.
    pub fn sample(name: &str) -> Option<Vec<Message>> {
        let text = sample_text(name)?;
        let mut out = vec![Message::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"))];
        let one: String = text.replace("\r\n", "\r").replace('\n', "\r");
        for sep in ["\r", "\n", "\r\n"] {
            out.push(Message::parse(&one.replace('\r', sep)).unwrap_or_else(|e| panic!("{name}: {e}")));
        }
        Some(out)
    }

    /// The paths of what a mapped resource must not have: empty strings, arrays and
    /// objects, nulls, a resource `id`, a `system` or `reference` with spaces, a `code` with
    /// leading, trailing or doubled spaces.
    pub fn empties(v: &Value, path: &str, out: &mut Vec<String>) {
        match v {
            Value::Null => out.push(path.to_string()),
            Value::String(s) if s.trim().is_empty() => out.push(path.to_string()),
            Value::Array(a) if a.is_empty() => out.push(path.to_string()),
            Value::Object(o) if o.is_empty() => out.push(path.to_string()),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| empties(x, &format!("{path}[{i}]"), out)),
            Value::Object(o) => {
                if path.matches('.').count() == 0 && o.contains_key("id") {
                    out.push(format!("{path}.id"));
                }
                for (k, x) in o {
                    let bad_text = match (k.as_str(), x.as_str()) {
                        ("system" | "reference", Some(s)) => s.contains(char::is_whitespace),
                        ("code", Some(s)) => s.split_whitespace().collect::<Vec<_>>().join(" ") != s,
                        _ => false,
                    };
                    if bad_text {
                        out.push(format!("{path}.{k}"));
                    }
                    empties(x, &format!("{path}.{k}"), out);
                }
            }
            _ => {}
        }
    }

    /// The text of a sample message of the shared data, as it is; `None` (and a note) when
    /// the data is not there.
    pub fn sample_text(name: &str) -> Option<String> {
        let path = format!("{}/../../../shared/data/hl7v2/{name}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path);
        if text.is_err() {
            eprintln!("skipped: {path} is not there");
        }
        text.ok()
    }

    /// Panics when an entry's resource has an `id` or anything empty, or two entries share
    /// a full URL.
    pub fn assert_clean(entries: &[Entry]) {
        for e in entries {
            let mut bad = Vec::new();
            empties(&e.resource, "", &mut bad);
            assert!(bad.is_empty(), "empty or forbidden elements {bad:?} in {}", serde_json::to_string_pretty(&e.resource).unwrap_or_default());
            assert!(e.full_url.starts_with("urn:uuid:"));
        }
        for (i, a) in entries.iter().enumerate() {
            assert!(entries[i + 1..].iter().all(|b| b.full_url != a.full_url), "two entries share {}", a.full_url);
        }
    }
}
