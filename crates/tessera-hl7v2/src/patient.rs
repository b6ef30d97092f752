//! A FHIR R4 Patient from a message's PID segment.
//!
//! | PID | FHIR Patient |
//! | --- | --- |
//! | PID-3 identifiers, then PID-2 (external id) | `identifier` (see [`IdentifierMap`]) |
//! | PID-5 names (each repetition) | `name`: family (5.1.1), given (5.2, then 5.3 split on spaces), suffix (5.4, 5.6 degree), prefix (5.5), use (5.7, table 0200) |
//! | PID-7 date of birth | `birthDate`, the date only, at the precision given |
//! | PID-8 administrative sex | `gender`: M male, F female, O/A/N other, U unknown |
//! | PID-11 addresses | `address`: line (11.1, 11.2), city (11.3), state (11.4), postalCode (11.5), country (11.6), use/type (11.7, table 0190), district (11.9) |
//! | PID-13 home, PID-14 business telecoms | `telecom` (see [`patient_from_pid`]) |
//! | PID-29 date/time of death | `deceasedDateTime` (the date only unless the time has an offset) |
//! | PID-30 death indicator `Y` with no PID-29 | `deceasedBoolean: true` |
//!
//! Not copied: PID-6 (mother's maiden name), PID-19 (social security number) and
//! identifiers of type `SS` in PID-2/3, and the fields not listed. HL7's explicit null
//! (`""`) and values of spaces are absent values. The Patient has no `id`, and never an
//! empty string, array or object.

use crate::datetime::{fhir_date, fhir_date_time};
use crate::message::{Message, Repetition, Segment};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The identifier system of the NHS number.
pub const NHS_NUMBER_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// The code system of identifier types (HL7 table 0203).
pub const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// Why a PID field cannot be mapped: the field (`PID-7`) and the problem
/// (`'19801345' is not a date`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field, as HL7 names it: `PID-7`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl FieldError {
    fn new(field: &str, problem: impl Into<String>) -> FieldError {
        FieldError { field: field.to_string(), problem: problem.into() }
    }
}

/// How the identifiers of PID-3 (and PID-2) become FHIR identifier systems. Each CX is
/// read as value (CX.1), assigning authority (CX.4: its namespace id, else its universal
/// id) and identifier type (CX.5), and given, in this order:
///
/// 1. the NHS number system, value without spaces, when the authority is one of
///    `nhs_authorities` or the type one of `nhs_type_codes`;
/// 2. nothing (the identifier is dropped) when the type is `SS`, a social security
///    number, which is not copied (nor is PID-19);
/// 3. the system of the authority in `by_authority`;
/// 4. otherwise `default_system`: the migrating organisation's MRN system. An identifier
///    whose authority is empty, or not one that `by_authority` names, is taken to be the
///    organisation's own record number.
///
/// Authorities and types are compared without regard to case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifierMap {
    /// Assigning authorities meaning "NHS number": `NHS`, `NHSNMBR` by default.
    pub nhs_authorities: Vec<String>,
    /// Identifier types meaning "NHS number": `NH` by default.
    pub nhs_type_codes: Vec<String>,
    /// Assigning authority (namespace id or universal id) → identifier system.
    pub by_authority: BTreeMap<String, String>,
    /// The system of identifiers with no or an unknown authority.
    pub default_system: String,
}

impl IdentifierMap {
    /// The usual NHS recognition, no other authorities, and `default_system` for the rest.
    pub fn new(default_system: impl Into<String>) -> IdentifierMap {
        IdentifierMap {
            nhs_authorities: vec!["NHS".into(), "NHSNMBR".into()],
            nhs_type_codes: vec!["NH".into()],
            by_authority: BTreeMap::new(),
            default_system: default_system.into(),
        }
    }

    /// The system of an identifier with this authority (namespace and universal id) and
    /// type; `None` when the identifier is not copied.
    pub fn system(&self, namespace: Option<&str>, universal_id: Option<&str>, type_code: Option<&str>) -> Option<&str> {
        let is = |v: Option<&str>, list: &[String]| v.is_some_and(|v| list.iter().any(|l| l.eq_ignore_ascii_case(v)));
        if is(namespace, &self.nhs_authorities) || is(universal_id, &self.nhs_authorities) || is(type_code, &self.nhs_type_codes) {
            return Some(NHS_NUMBER_SYSTEM);
        }
        if type_code.is_some_and(|t| t.eq_ignore_ascii_case("SS")) {
            return None;
        }
        let lookup = |key: Option<&str>| {
            let key = key?;
            self.by_authority.get(key).or_else(|| self.by_authority.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        };
        Some(lookup(namespace).or_else(|| lookup(universal_id)).map(String::as_str).unwrap_or(&self.default_system))
    }
}

/// One identifier read from PID-3 or PID-2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatientIdentifier {
    /// Where it was: `PID-3` or `PID-2`.
    pub field: &'static str,
    /// Its FHIR system.
    pub system: String,
    /// Its value (spaces removed from NHS numbers).
    pub value: String,
    /// Its CX.5 identifier type (table 0203), when given as a code (up to ten letters or
    /// digits; free text there is ignored).
    pub type_code: Option<String>,
}

impl PatientIdentifier {
    fn to_json(&self) -> Value {
        let mut o = Map::new();
        if let Some(code) = &self.type_code {
            o.insert("type".into(), json!({"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": code}]}));
        }
        o.insert("system".into(), json!(self.system));
        o.insert("value".into(), json!(self.value));
        Value::Object(o)
    }
}

/// A value as the mapping uses it: trimmed; empty, spaces and HL7's null `""` are absent.
fn clean(s: Option<&str>) -> Option<String> {
    let t = s?.trim();
    (!t.is_empty() && t != "\"\"").then(|| t.to_string())
}

fn part(rep: &Repetition, component: usize, sub: usize) -> Option<String> {
    clean(rep.component(component).and_then(|c| c.subcomponent(sub)))
}

/// The identifiers of PID-3, then PID-2, with their systems (see [`IdentifierMap`]); each
/// system and value once. Empty when the message has no PID.
pub fn patient_identifiers(msg: &Message, map: &IdentifierMap) -> Vec<PatientIdentifier> {
    let mut out: Vec<PatientIdentifier> = Vec::new();
    let Some(pid) = msg.segment("PID") else { return out };
    for (n, name) in [(3, "PID-3"), (2, "PID-2")] {
        for rep in pid.field(n).map(|f| f.repetitions()).unwrap_or_default() {
            let Some(value) = part(rep, 1, 1) else { continue };
            // Table 0203 codes are short: a CX.5 of free text (`GOOD HEALTH HOSPITAL`) is not one.
            let type_code = part(rep, 5, 1).filter(|t| t.len() <= 10 && t.bytes().all(|b| b.is_ascii_alphanumeric()));
            let Some(system) = map.system(part(rep, 4, 1).as_deref(), part(rep, 4, 2).as_deref(), type_code.as_deref()) else { continue };
            let value = if system == NHS_NUMBER_SYSTEM { value.chars().filter(|c| !c.is_whitespace()).collect() } else { value };
            if !out.iter().any(|i| i.system == system && i.value == value) {
                out.push(PatientIdentifier { field: name, system: system.to_string(), value, type_code });
            }
        }
    }
    out
}

/// FHIR name use for an HL7 name type (table 0200), as the HL7 v2-to-FHIR mapping has it.
/// Other types (A alias, B birth, C adopted, …) have no FHIR use.
fn name_use(code: &str) -> Option<&'static str> {
    Some(match code.to_ascii_uppercase().as_str() {
        "L" => "official",
        "D" => "usual",
        "M" => "maiden",
        "N" => "nickname",
        "S" => "anonymous",
        "TEMP" => "temp",
        "BAD" | "NOUSE" => "old",
        _ => return None,
    })
}

fn names(pid: &Segment) -> Vec<Value> {
    let mut out = Vec::new();
    for rep in pid.field(5).map(|f| f.repetitions()).unwrap_or_default() {
        let family = part(rep, 1, 1);
        let mut given: Vec<String> = part(rep, 2, 1).into_iter().collect();
        if let Some(more) = part(rep, 3, 1) {
            given.extend(more.split_whitespace().map(String::from));
        }
        let prefix: Vec<String> = part(rep, 5, 1).into_iter().collect();
        let suffix: Vec<String> = [part(rep, 4, 1), part(rep, 6, 1)].into_iter().flatten().collect();
        if family.is_none() && given.is_empty() {
            continue;
        }
        let mut o = Map::new();
        if let Some(u) = part(rep, 7, 1).as_deref().and_then(name_use) {
            o.insert("use".into(), json!(u));
        }
        if let Some(f) = family {
            o.insert("family".into(), json!(f));
        }
        for (key, list) in [("given", given), ("prefix", prefix), ("suffix", suffix)] {
            if !list.is_empty() {
                o.insert(key.into(), json!(list));
            }
        }
        let name = Value::Object(o);
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// FHIR gender for an HL7 administrative sex (table 0001).
fn gender(code: &str) -> Option<&'static str> {
    Some(match code.to_ascii_uppercase().as_str() {
        "M" | "MALE" => "male",
        "F" | "FEMALE" => "female",
        "O" | "A" | "N" | "OTHER" => "other",
        "U" | "UNKNOWN" => "unknown",
        _ => return None,
    })
}

/// Address use and type for an HL7 address type (table 0190): H, P and RH home; B and O
/// work; C and V temp; BA old; BI billing; M mailing is a postal address (no use).
fn address_use(code: &str) -> (Option<&'static str>, Option<&'static str>) {
    match code.to_ascii_uppercase().as_str() {
        "H" | "P" | "RH" => (Some("home"), None),
        "B" | "O" => (Some("work"), None),
        "C" | "V" => (Some("temp"), None),
        "BA" => (Some("old"), None),
        "BI" => (Some("billing"), None),
        "M" => (None, Some("postal")),
        _ => (None, None),
    }
}

fn addresses(pid: &Segment) -> Vec<Value> {
    let mut out = Vec::new();
    for rep in pid.field(11).map(|f| f.repetitions()).unwrap_or_default() {
        let street: Vec<String> = rep.component(1).map(|c| c.subcomponents().iter().filter_map(|s| clean(Some(s))).collect()).unwrap_or_default();
        let mut line: Vec<String> = Vec::new();
        if !street.is_empty() {
            line.push(street.join(" "));
        }
        line.extend(part(rep, 2, 1));
        let fields = [("city", part(rep, 3, 1)), ("district", part(rep, 9, 1)), ("state", part(rep, 4, 1)), ("postalCode", part(rep, 5, 1)), ("country", part(rep, 6, 1))];
        if line.is_empty() && fields.iter().all(|(_, v)| v.is_none()) {
            continue;
        }
        let mut o = Map::new();
        let (u, t) = part(rep, 7, 1).map(|c| address_use(&c)).unwrap_or((None, None));
        if let Some(u) = u {
            o.insert("use".into(), json!(u));
        }
        if let Some(t) = t {
            o.insert("type".into(), json!(t));
        }
        if !line.is_empty() {
            o.insert("line".into(), json!(line));
        }
        for (key, value) in fields {
            if let Some(v) = value {
                o.insert(key.into(), json!(v));
            }
        }
        let address = Value::Object(o);
        if !out.contains(&address) {
            out.push(address);
        }
    }
    out
}

/// One XTN as a FHIR ContactPoint; `default_use` is `home` for PID-13, `work` for PID-14.
fn contact_point(rep: &Repetition, default_use: &'static str) -> Option<Value> {
    let use_code = part(rep, 2, 1).map(|s| s.to_ascii_uppercase());
    let equipment = part(rep, 3, 1).map(|s| s.to_ascii_uppercase());
    let is_email = use_code.as_deref() == Some("NET") || matches!(equipment.as_deref(), Some("INTERNET" | "X.400"));
    let (system, value) = if is_email {
        ("email", part(rep, 4, 1).or_else(|| part(rep, 1, 1))?)
    } else {
        let number = part(rep, 1, 1).or_else(|| {
            let local = part(rep, 7, 1)?;
            let mut n = String::new();
            if let Some(country) = part(rep, 5, 1) {
                n.push_str(&format!("+{} ", country.trim_start_matches('+')));
            }
            if let Some(area) = part(rep, 6, 1) {
                n.push_str(&format!("{area} "));
            }
            n.push_str(&local);
            if let Some(ext) = part(rep, 8, 1) {
                n.push_str(&format!(" ext. {ext}"));
            }
            Some(n)
        });
        let system = match (equipment.as_deref(), use_code.as_deref()) {
            (Some("FX"), _) => "fax",
            (Some("BP"), _) | (_, Some("BPN")) => "pager",
            _ => "phone",
        };
        (system, number.or_else(|| part(rep, 12, 1))?)
    };
    let usage = match use_code.as_deref() {
        Some("PRN" | "ORN" | "VHN") => Some("home"),
        Some("WPN") => Some("work"),
        Some("PRS") => Some("mobile"),
        Some("EMR" | "ASN" | "BPN") => None,
        _ if system == "phone" && equipment.as_deref() == Some("CP") => Some("mobile"),
        _ => Some(default_use),
    };
    let mut o = Map::new();
    o.insert("system".into(), json!(system));
    o.insert("value".into(), json!(value));
    if let Some(u) = usage {
        o.insert("use".into(), json!(u));
    }
    Some(Value::Object(o))
}

/// A FHIR R4 Patient (without `id`) from the message's PID segment; the mapping is in the
/// module documentation. Telecoms (XTN): the number is component 1, or else the country
/// (5), area (6), local number (7) and extension (8), or else the unformatted number (12);
/// use code (2) PRN, ORN and VHN give use `home`, WPN `work`, PRS `mobile`, none gives
/// `mobile` for a cell phone (equipment CP) and otherwise `home` in PID-13, `work` in
/// PID-14; equipment FX is a fax, BP (or use BPN) a pager; use NET or equipment Internet
/// or X.400 an email address, component 4 (or 1).
///
/// A date that is not one, or a sex code outside table 0001, is a [`FieldError`] naming
/// the field, as is a message without PID.
pub fn patient_from_pid(msg: &Message, map: &IdentifierMap) -> Result<Value, FieldError> {
    let pid = msg.segment("PID").ok_or_else(|| FieldError::new("PID", "the message has no PID segment"))?;
    let mut patient = Map::new();
    patient.insert("resourceType".into(), json!("Patient"));
    let identifiers: Vec<Value> = patient_identifiers(msg, map).iter().map(PatientIdentifier::to_json).collect();
    if !identifiers.is_empty() {
        patient.insert("identifier".into(), Value::Array(identifiers));
    }
    let names = names(pid);
    if !names.is_empty() {
        patient.insert("name".into(), Value::Array(names));
    }
    let mut telecom: Vec<Value> = Vec::new();
    for (n, default_use) in [(13, "home"), (14, "work")] {
        for rep in pid.field(n).map(|f| f.repetitions()).unwrap_or_default() {
            if let Some(t) = contact_point(rep, default_use) {
                if !telecom.contains(&t) {
                    telecom.push(t);
                }
            }
        }
    }
    if !telecom.is_empty() {
        patient.insert("telecom".into(), Value::Array(telecom));
    }
    if let Some(sex) = clean(pid.get(8, 1, 1, 1)) {
        let g = gender(&sex).ok_or_else(|| FieldError::new("PID-8", format!("'{sex}' is not an administrative sex (M, F, O, A, N or U)")))?;
        patient.insert("gender".into(), json!(g));
    }
    if let Some(birth) = clean(pid.get(7, 1, 1, 1)) {
        let date = fhir_date(&birth).map_err(|e| FieldError::new("PID-7", e))?;
        patient.insert("birthDate".into(), json!(date));
    }
    if let Some(death) = clean(pid.get(29, 1, 1, 1)) {
        let when = fhir_date_time(&death).map_err(|e| FieldError::new("PID-29", e))?;
        patient.insert("deceasedDateTime".into(), json!(when));
    } else if clean(pid.get(30, 1, 1, 1)).is_some_and(|y| y.eq_ignore_ascii_case("Y")) {
        patient.insert("deceasedBoolean".into(), json!(true));
    }
    let addresses = addresses(pid);
    if !addresses.is_empty() {
        patient.insert("address".into(), Value::Array(addresses));
    }
    Ok(Value::Object(patient))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MRN: &str = "https://example.org/Id/mrn";

    fn patient(pid: &str) -> Result<Value, FieldError> {
        let msg = Message::parse(&format!("MSH|^~\\&|PAS|RXX|||20240101||ADT^A04|1|P|2.4\r{pid}\r")).unwrap();
        let mut map = IdentifierMap::new(MRN);
        map.by_authority.insert("OTHERHOSP".into(), "https://other.example/Id/mrn".into());
        patient_from_pid(&msg, &map)
    }

    #[test]
    fn full_pid() {
        let p = patient(concat!(
            "PID|1|OLD1^^^RXX|K123^^^RXX^MR~943 476 5919^^^NHS^NH~777^^^otherhosp~123-45-6789^^^USSSA^SS~555^^^^NH~556^^^^NOT A CODE||",
            "SMITH&van^JOHN^PAUL JAMES^JR^DR^MD^L~SMYTHE^JOHN^^^^^M~\"\"|JONES|19800517|M|||",
            "1&High Street^Flat 2^Leeds^West Yorkshire^LS1 1AA^GBR^H^^WYK~^^^^^^M|GL|",
            "0113 496 0000^PRN^PH~^PRN^CP^^44^7700^900123~^NET^Internet^john@example.org|^^PH^^^0113^4960001^22~^^^^^^^^^^^01134960002|",
            "||||123456789||||||||||20230102103000+0100|Y"
        ))
        .unwrap();
        let expected = json!({
            "resourceType": "Patient",
            "identifier": [
                {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "MR"}]}, "system": MRN, "value": "K123"},
                {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "NH"}]}, "system": NHS_NUMBER_SYSTEM, "value": "9434765919"},
                {"system": "https://other.example/Id/mrn", "value": "777"},
                {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "NH"}]}, "system": NHS_NUMBER_SYSTEM, "value": "555"},
                {"system": MRN, "value": "556"},
                {"system": MRN, "value": "OLD1"}
            ],
            "name": [
                {"use": "official", "family": "SMITH", "given": ["JOHN", "PAUL", "JAMES"], "prefix": ["DR"], "suffix": ["JR", "MD"]},
                {"use": "maiden", "family": "SMYTHE", "given": ["JOHN"]}
            ],
            "telecom": [
                {"system": "phone", "value": "0113 496 0000", "use": "home"},
                {"system": "phone", "value": "+44 7700 900123", "use": "home"},
                {"system": "email", "value": "john@example.org", "use": "home"},
                {"system": "phone", "value": "0113 4960001 ext. 22", "use": "work"},
                {"system": "phone", "value": "01134960002", "use": "work"}
            ],
            "gender": "male",
            "birthDate": "1980-05-17",
            "deceasedDateTime": "2023-01-02T10:30:00+01:00",
            "address": [
                {"use": "home", "line": ["1 High Street", "Flat 2"], "city": "Leeds", "district": "WYK", "state": "West Yorkshire", "postalCode": "LS1 1AA", "country": "GBR"}
            ]
        });
        assert_eq!(p, expected, "{}", serde_json::to_string_pretty(&p).unwrap());
    }

    #[test]
    fn small_pid_and_deceased_flag() {
        let p = patient("PID|1||42||DOE^JANE||1980|F||||||||||||||||||||||Y").unwrap();
        assert_eq!(p, json!({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "42"}], "name": [{"family": "DOE", "given": ["JANE"]}], "gender": "female", "birthDate": "1980", "deceasedBoolean": true}));
        assert_eq!(patient("PID|1").unwrap(), json!({"resourceType": "Patient"}));
        let p = patient("PID|1||42||DOE||20230102103000|U|||||^^CP~7777^^CP||||||||||||||||20230102103000|N").unwrap();
        assert_eq!(p["gender"], "unknown");
        assert_eq!(p["birthDate"], "2023-01-02");
        assert_eq!(p["deceasedDateTime"], "2023-01-02");
        assert_eq!(p["telecom"], json!([{"system": "phone", "value": "7777", "use": "mobile"}]));
        assert_eq!(patient("PID|1||||||| O ").unwrap()["gender"], "other");
    }

    #[test]
    fn errors_name_the_field() {
        let e = patient("PID|1||42||DOE||19801345").unwrap_err();
        assert_eq!(e.to_string(), "PID-7: '19801345' is not a date");
        assert_eq!(patient("PID|1||42||DOE||1980|X").unwrap_err().field, "PID-8");
        assert_eq!(patient("PID|1||42||DOE||1980|M|||||||||||||||||||||bad").unwrap_err().field, "PID-29");
        let msg = Message::parse("MSH|^~\\&|A||||||ADT^A01|1\rEVN|A01").unwrap();
        assert_eq!(patient_from_pid(&msg, &IdentifierMap::new(MRN)).unwrap_err().to_string(), "PID: the message has no PID segment");
    }

    #[test]
    fn identifier_systems() {
        let map = IdentifierMap::new(MRN);
        assert_eq!(map.system(Some("nhs"), None, None), Some(NHS_NUMBER_SYSTEM));
        assert_eq!(map.system(None, Some("NHSNMBR"), Some("MR")), Some(NHS_NUMBER_SYSTEM));
        assert_eq!(map.system(None, None, Some("ss")), None);
        assert_eq!(map.system(Some("UNKNOWN"), None, Some("MR")), Some(MRN));
        assert_eq!(map.system(None, None, None), Some(MRN));
    }
}
