//! ORU^R01 (unsolicited observation results) to a DiagnosticReport and its Observations.
//!
//! Each ORDER_OBSERVATION group (an OBR with the OBX and NTE segments after it, up to the
//! next OBR, ORC or PID) becomes one DiagnosticReport, and each OBX of the group one
//! Observation that the report lists in `result`.
//!
//! | HL7 | FHIR |
//! | --- | --- |
//! | OBR-3.1 filler order number | DiagnosticReport `identifier` (type FILL, system `filler_order`); the report's key |
//! | OBR-2.1 placer order number | DiagnosticReport `identifier` (type PLAC, system `placer_order`), the key when OBR-3 is empty; `basedOn` the ServiceRequest with that identifier (report and observations) |
//! | OBR-2 and OBR-3 both empty | refused (`OBR-3`) when the interface requires an order, else the report is created (POST) and its observations too |
//! | OBR-4 universal service id | DiagnosticReport `code` (required) |
//! | OBR-24 diagnostic service section | DiagnosticReport `category` (table 0074), `LAB` when empty |
//! | OBR-25 result status | DiagnosticReport `status` ([`REPORT_STATUS`]); `unknown` when empty |
//! | OBR-7 observation date/time | DiagnosticReport `effectiveDateTime`; Observation `effectiveDateTime` when OBX-14 is empty |
//! | OBR-22 results reported / status change | DiagnosticReport and Observation `issued` (when it has a time to the minute) |
//! | OBR-32 principal result interpreter | DiagnosticReport `resultsInterpreter` (by identifier and name) |
//! | NTE-3 after the OBR | DiagnosticReport `conclusion` (one line per NTE) |
//! | the interface's organisation | DiagnosticReport and Observation `performer` |
//! | the message's patient and visit | `subject`, `encounter` |
//! | OBX-3 observation identifier | Observation `code` (required) |
//! | OBX-2 value type and OBX-5 value | Observation `value[x]`: NM `valueQuantity` (`<0.5` with its comparator); SN `valueQuantity` with comparator, `valueRange` (`1^-^3`) or `valueRatio` (`1^:^128`), other forms their text (`2+`); CE/CWE/CNE `valueCodeableConcept`; DT/DTM/TS `valueDateTime`; TM `valueTime`; ST/TX/FT and any other type `valueString` (repetitions one per line; RP its pointer) |
//! | OBX-6 units | the Quantity's `unit`, with UCUM `system` and `code` when the unit is one of [`UCUM_UNITS`] or OBX-6.3 is UCUM, ANS+ or ISO+ |
//! | OBX-7 reference range | Observation `referenceRange`: `3.5-5.0` or `3.5 to 5.0` low and high, `<5` high, `>2` low (in OBX-6's unit), anything else its text |
//! | OBX-8 abnormal flags | Observation `interpretation` ([`ABNORMAL_FLAGS`], v3 ObservationInterpretation; other flags in table 0078's system) |
//! | OBX-11 result status | Observation `status` ([`RESULT_STATUS`]); when empty, the report's status |
//! | OBX-14 observation date/time | Observation `effectiveDateTime` |
//! | NTE-3 after the OBX | Observation `note` |
//! | (always) | Observation `category` laboratory |
//!
//! Keys, so that a correction (OBR-25 `C`, OBX-11 `C`) updates what the first report
//! wrote and a message applied twice changes nothing:
//! * the report: PUT `DiagnosticReport?identifier={filler_order}|{OBR-3.1}` (placer system
//!   and OBR-2.1 when OBR-3 is empty);
//! * each observation: PUT `Observation?identifier={system}/observation|{number}/{OBX-3.1}`
//!   where `{system}` and `{number}` are the report's key, with `/{OBX-4}` added when the
//!   OBX has a sub-id, and `/2`, `/3`, … for a second and later OBX of the report that would
//!   otherwise have the same identifier. The set id (OBX-1) is not used: senders number the
//!   OBX of each message afresh, so a corrected report that adds or drops a result would
//!   renumber the others.
//!
//! Not mapped: OBX segments that are not in an OBR group (patient observations before the
//! first OBR, or after an ORC before its OBR), ORC (the order is the orders interface's),
//! SPM, TQ1, PRT, CTD, FT1, OBX-17 (method), OBX-20 (body site) and the other fields not
//! listed. A message with a second PID is refused: one patient's results per message.

use super::{clean, codeable_concept, date_time, field_error, full_url, identifier_query, part, segment_label, value, Context, Entry, FieldError, Method};
use crate::datetime::Dtm;
use crate::message::{Message, Repetition, Segment};
use serde_json::{json, Map, Number, Value};

/// OBR-25 result status (HL7 table 0123) to DiagnosticReport.status.
pub const REPORT_STATUS: &[(&str, &str)] = &[
    ("O", "registered"),       // order received; specimen not yet received
    ("I", "registered"),       // no results available; specimen received, procedure incomplete
    ("S", "partial"),          // no results available; procedure scheduled
    ("A", "partial"),          // some, not all, results available
    ("R", "partial"),          // results stored; not yet verified
    ("P", "preliminary"),      // preliminary
    ("F", "final"),            // final results
    ("C", "corrected"),        // correction to results
    ("M", "corrected"),        // corrected, not final (v2.7+)
    ("X", "cancelled"),        // no results available; order cancelled
    ("Y", "entered-in-error"), // no order on record for this test
    ("Z", "entered-in-error"), // no record of this patient
];

/// OBX-11 observation result status (HL7 table 0085) to Observation.status.
pub const RESULT_STATUS: &[(&str, &str)] = &[
    ("F", "final"),            // final results
    ("U", "final"),            // status changed to final without retransmitting results
    ("C", "corrected"),        // record coming over is a correction
    ("A", "amended"),          // amended based on adjustments (v2.7+)
    ("B", "amended"),          // appended report (v2.7+)
    ("P", "preliminary"),      // preliminary results
    ("R", "preliminary"),      // results entered, not verified
    ("S", "preliminary"),      // partial results
    ("I", "registered"),       // specimen in lab; results pending
    ("O", "registered"),       // order detail description only (no result)
    ("N", "cancelled"),        // not asked
    ("X", "cancelled"),        // results cannot be obtained for this observation
    ("D", "entered-in-error"), // deletes the OBX record
    ("W", "entered-in-error"), // post original as wrong
];

/// What an Observation with no OBX-11 inherits from its report's status.
const INHERITED_STATUS: &[(&str, &str)] = &[
    ("registered", "registered"),
    ("partial", "preliminary"),
    ("preliminary", "preliminary"),
    ("final", "final"),
    ("amended", "amended"),
    ("appended", "amended"),
    ("corrected", "corrected"),
    ("cancelled", "cancelled"),
    ("entered-in-error", "entered-in-error"),
    ("unknown", "unknown"),
];

/// The code system of Observation.interpretation.
pub const INTERPRETATION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation";

/// OBX-8 abnormal flags (HL7 table 0078) to v3 ObservationInterpretation code and display.
pub const ABNORMAL_FLAGS: &[(&str, &str, &str)] = &[
    ("L", "L", "Low"),
    ("H", "H", "High"),
    ("LL", "LL", "Critical low"),
    ("HH", "HH", "Critical high"),
    ("LU", "LU", "Significantly low"),
    ("HU", "HU", "Significantly high"),
    ("<", "<", "Off scale low"),
    (">", ">", "Off scale high"),
    ("N", "N", "Normal"),
    ("A", "A", "Abnormal"),
    ("AA", "AA", "Critical abnormal"),
    ("U", "U", "Significant change up"),
    ("D", "D", "Significant change down"),
    ("B", "B", "Better"),
    ("W", "W", "Worse"),
    ("S", "S", "Susceptible"),
    ("R", "R", "Resistant"),
    ("I", "I", "Intermediate"),
    ("MS", "MS", "moderately susceptible"),
    ("VS", "VS", "very susceptible"),
    ("NS", "NS", "Non-susceptible"),
    ("SDD", "SDD", "Susceptible-dose dependent"),
    ("POS", "POS", "Positive"),
    ("NEG", "NEG", "Negative"),
    ("IND", "IND", "Indeterminate"),
    ("DET", "DET", "Detected"),
    ("ND", "ND", "Not detected"),
    ("E", "E", "Equivocal"),
    ("EX", "EX", "outside threshold"),
    ("RR", "RR", "Reactive"),
    ("WR", "WR", "Weakly reactive"),
    ("NR", "NR", "Non-reactive"),
    ("AC", "AC", "Anti-complementary substances present"),
    ("QCF", "QCF", "Quality control failure"),
    ("TOX", "TOX", "Cytotoxic substance present"),
];

/// The UCUM system.
pub const UCUM: &str = "http://unitsofmeasure.org";

/// Units as laboratories write them (OBX-6.1 or OBX-6.2, compared exactly, then without
/// regard to case) to their UCUM codes.
pub const UCUM_UNITS: &[(&str, &str)] = &[
    ("mmol/L", "mmol/L"),
    ("umol/L", "umol/L"),
    ("µmol/L", "umol/L"),
    ("μmol/L", "umol/L"),
    ("nmol/L", "nmol/L"),
    ("pmol/L", "pmol/L"),
    ("mmol/mol", "mmol/mol"),
    ("mEq/L", "meq/L"),
    ("mOsm/kg", "mosm/kg"),
    ("g/L", "g/L"),
    ("g/dL", "g/dL"),
    ("g/mL", "g/mL"),
    ("mg/L", "mg/L"),
    ("mg/dL", "mg/dL"),
    ("ug/L", "ug/L"),
    ("µg/L", "ug/L"),
    ("ug/mL", "ug/mL"),
    ("ng/mL", "ng/mL"),
    ("ng/L", "ng/L"),
    ("pg/mL", "pg/mL"),
    ("U/L", "U/L"),
    ("IU/L", "[IU]/L"),
    ("mU/L", "mU/L"),
    ("mIU/L", "m[IU]/L"),
    ("10*9/L", "10*9/L"),
    ("x10^9/L", "10*9/L"),
    ("x10*9/L", "10*9/L"),
    ("10^9/L", "10*9/L"),
    ("giga.l-1", "10*9/L"),
    ("10*12/L", "10*12/L"),
    ("x10^12/L", "10*12/L"),
    ("x10*12/L", "10*12/L"),
    ("10^12/L", "10*12/L"),
    ("tera.l-1", "10*12/L"),
    ("10*3/uL", "10*3/uL"),
    ("10*6/uL", "10*6/uL"),
    ("/uL", "/uL"),
    ("{cells}/uL", "{cells}/uL"),
    ("%", "%"),
    ("fL", "fL"),
    ("pg", "pg"),
    ("pg/{cell}", "pg/{cell}"),
    ("L/L", "L/L"),
    ("mL/min/{1.73_m2}", "mL/min/{1.73_m2}"),
    ("mL/min/1.73m2", "mL/min/{1.73_m2}"),
    ("mL/min/1.73 m2", "mL/min/{1.73_m2}"),
    ("mm[Hg]", "mm[Hg]"),
    ("mmHg", "mm[Hg]"),
    ("/min", "/min"),
    ("beats/min", "/min"),
    ("bpm", "/min"),
    ("mm/h", "mm/h"),
    ("mm/hr", "mm/h"),
    ("s", "s"),
    ("sec", "s"),
    ("kg", "kg"),
    ("g", "g"),
    ("cm", "cm"),
    ("kg/m2", "kg/m2"),
    ("mL", "mL"),
    ("L", "L"),
    ("Cel", "Cel"),
    ("degC", "Cel"),
    ("°C", "Cel"),
    ("{ratio}", "{ratio}"),
    ("ratio", "{ratio}"),
];

/// OBX-6.3 coding systems whose units are taken as UCUM codes.
const UCUM_SYSTEMS: &[&str] = &["UCUM", "ANS+", "ISO+"];

/// The code system of DiagnosticReport.category (HL7 table 0074).
pub const SERVICE_SECTION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0074";

/// The code system of Observation.category.
pub const OBSERVATION_CATEGORY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

/// The code system of identifier types (HL7 table 0203).
pub(crate) const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// Identifier types (table 0203) of order numbers.
pub(crate) const ORDER_IDENTIFIER_TYPES: &[(&str, &str)] = &[("PLAC", "Placer Identifier"), ("FILL", "Filler Identifier")];

/// An identifier of type `PLAC` or `FILL` (table 0203).
pub(crate) fn typed_identifier(type_code: &str, system: &str, value: &str) -> Value {
    let display = ORDER_IDENTIFIER_TYPES.iter().find(|(c, _)| *c == type_code).map_or(type_code, |(_, d)| d);
    json!({"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": type_code, "display": display}]}, "system": system, "value": value})
}

/// Text as a FHIR `code`: runs of whitespace become one space.
pub(crate) fn code(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A CE/CWE as a CodeableConcept ([`codeable_concept`]) whose codes and systems are valid
/// FHIR `code` and `uri` values: runs of spaces in a code become one, and spaces in a
/// coding system's name (free text sent where a table 0396 name belongs) are
/// percent-encoded.
pub(crate) fn concept(rep: &Repetition) -> Option<Value> {
    let mut c = codeable_concept(rep)?;
    for coding in c.get_mut("coding").and_then(Value::as_array_mut).into_iter().flatten() {
        if let Some(code) = coding.get("code").and_then(Value::as_str) {
            coding["code"] = json!(self::code(code));
        }
        if let Some(system) = coding.get("system").and_then(Value::as_str).filter(|s| s.contains(char::is_whitespace)) {
            coding["system"] = json!(system.split_whitespace().collect::<Vec<_>>().join("%20"));
        }
    }
    Some(c)
}

/// A repetition as written: subcomponents joined by `&`, components by `^`, empty trailing
/// components left out; `None` when empty.
pub(crate) fn rep_text(rep: &Repetition) -> Option<String> {
    let comps: Vec<String> = rep.components().iter().map(|c| c.subcomponents().join("&")).collect();
    let last = comps.iter().rposition(|c| !c.trim().is_empty())?;
    clean(Some(&comps[..=last].join("^")))
}

/// The text of NTE-3 (one line per repetition), `None` when empty.
pub(crate) fn nte_text(nte: &Segment) -> Option<String> {
    let lines: Vec<String> = nte.field(3).map(|f| f.repetitions()).unwrap_or_default().iter().filter_map(rep_text).collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

/// The notes of some NTE segments as Annotations.
pub(crate) fn notes(ntes: &[&Segment]) -> Vec<Value> {
    ntes.iter().filter_map(|n| nte_text(n)).map(|t| json!({"text": t})).collect()
}

/// An HL7 NM (optional sign, digits, optional decimal point) as a JSON number that keeps
/// the digits as sent (`4.50` stays `4.50`); `None` when it is not one.
pub fn decimal(text: &str) -> Option<Number> {
    let t = text.trim();
    let (sign, digits) = match t.as_bytes().first()? {
        b'-' => ("-", &t[1..]),
        b'+' => ("", &t[1..]),
        _ => ("", t),
    };
    let (int, frac) = match digits.split_once('.') {
        Some((i, f)) => (i, f),
        None => (digits, ""),
    };
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int) || !all_digits(frac) || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let mut s = format!("{sign}{}", if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        s.push('.');
        s.push_str(frac);
    }
    s.parse().ok()
}

/// A unit of OBX-6: its text and, when known, its UCUM code.
#[derive(Debug, Clone, PartialEq)]
struct Unit {
    text: String,
    ucum: Option<String>,
}

fn ucum_code(written: &str) -> Option<&'static str> {
    UCUM_UNITS.iter().find(|(w, _)| *w == written).or_else(|| UCUM_UNITS.iter().find(|(w, _)| w.eq_ignore_ascii_case(written))).map(|(_, c)| *c)
}

fn unit_of(obx: &Segment) -> Option<Unit> {
    let rep = obx.field(6)?.repetition(1)?;
    let (code, text, system) = (part(rep, 1, 1), part(rep, 2, 1), part(rep, 3, 1));
    let shown = code.clone().or_else(|| text.clone())?;
    let known = code.as_deref().and_then(ucum_code).or_else(|| text.as_deref().and_then(ucum_code)).map(String::from);
    let declared = system.filter(|s| UCUM_SYSTEMS.iter().any(|u| u.eq_ignore_ascii_case(s))).and(code).map(|c| self::code(&c));
    Some(Unit { text: shown, ucum: known.or(declared) })
}

/// A Quantity (a SimpleQuantity when `comparator` is `None`).
fn quantity(n: Number, unit: Option<&Unit>, comparator: Option<&str>) -> Value {
    let mut o = Map::new();
    o.insert("value".into(), Value::Number(n));
    if let Some(c) = comparator {
        o.insert("comparator".into(), json!(c));
    }
    if let Some(u) = unit {
        o.insert("unit".into(), json!(u.text));
        if let Some(code) = &u.ucum {
            o.insert("system".into(), json!(UCUM));
            o.insert("code".into(), json!(code));
        }
    }
    Value::Object(o)
}

/// OBX-7 as a referenceRange.
fn reference_range(text: &str, unit: Option<&Unit>) -> Value {
    let t = text.trim();
    let num = |s: &str| decimal(s.trim());
    for prefix in COMPARATORS {
        let bound = if prefix.starts_with('<') { "high" } else { "low" };
        if let Some(n) = t.strip_prefix(prefix).and_then(num) {
            return json!({bound: quantity(n, unit, None), "text": t});
        }
    }
    let lower = t.to_ascii_lowercase();
    let split = lower.find(" to ").map(|p| (&t[..p], &t[p + 4..])).or_else(|| t.char_indices().skip(1).find(|&(_, c)| c == '-').map(|(p, _)| (&t[..p], &t[p + 1..])));
    if let Some((low, high)) = split {
        if let (Some(l), Some(h)) = (num(low), num(high)) {
            return json!({"low": quantity(l, unit, None), "high": quantity(h, unit, None)});
        }
    }
    json!({"text": t})
}

/// OBX-8's flags as interpretations.
fn interpretations(obx: &Segment) -> Vec<Value> {
    let reps = obx.field(8).map(|f| f.repetitions()).unwrap_or_default();
    reps.iter()
        .filter_map(|rep| part(rep, 1, 1))
        .map(|flag| match ABNORMAL_FLAGS.iter().find(|(f, _, _)| f.eq_ignore_ascii_case(&flag)) {
            Some((_, code, display)) => json!({"coding": [{"system": INTERPRETATION_SYSTEM, "code": code, "display": display}]}),
            None => json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": code(&flag)}], "text": flag}),
        })
        .collect()
}

/// An HL7 TM (`HHMM[SS]`) as a FHIR time, `None` when it is anything else.
fn fhir_time(text: &str) -> Option<String> {
    let t = text.trim();
    if !(t.len() == 4 || t.len() == 6) || !t.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m, s) = (&t[0..2], &t[2..4], if t.len() == 6 { &t[4..6] } else { "00" });
    (h < "24" && m < "60" && s < "60").then(|| format!("{h}:{m}:{s}"))
}

/// The comparators of a Quantity (longest first), as SN-1 and OBX-7 write them.
const COMPARATORS: &[&str] = &["<=", ">=", "<", ">"];

/// OBX-5 as the Observation's `value[x]`, by OBX-2; `None` when OBX-5 is empty. `label` is
/// the OBX's name for errors (`OBX[3]`).
fn observation_value(obx: &Segment, label: &str) -> Result<Option<(&'static str, Value)>, FieldError> {
    let value_type = value(obx, 2, 1).unwrap_or_default().to_ascii_uppercase();
    let reps: Vec<&Repetition> = obx.field(5).map(|f| f.repetitions()).unwrap_or_default().iter().filter(|r| rep_text(r).is_some()).collect();
    let Some(first) = reps.first().copied() else { return Ok(None) };
    let field = format!("{label}-5");
    let not_a_number = |s: &str| field_error(&field, format!("'{s}' is not a number (OBX-2 is {value_type})"));
    let number = |s: Option<String>| -> Result<Option<Number>, FieldError> { s.map(|s| decimal(&s).ok_or_else(|| not_a_number(&s))).transpose() };
    let lines = |f: &dyn Fn(&Repetition) -> Option<String>| {
        let lines: Vec<String> = reps.iter().filter_map(|r| f(r)).collect();
        (!lines.is_empty()).then(|| ("valueString", json!(lines.join("\n"))))
    };
    let unit = unit_of(obx);
    if reps.len() > 1 && !matches!(value_type.as_str(), "ST" | "TX" | "FT" | "RP") {
        // One value[x] holds one value: several are kept as text, one per line.
        if value_type == "NM" {
            for r in &reps {
                number(rep_text(r))?;
            }
        }
        return Ok(lines(&rep_text));
    }
    let v = match value_type.as_str() {
        "NM" => {
            // Laboratories often send a bound as NM (`<0.5`): it is read as SN would be.
            let text = rep_text(first).unwrap_or_default();
            let (comparator, digits) = COMPARATORS.iter().find_map(|c| text.strip_prefix(c).map(|rest| (Some(*c), rest))).unwrap_or((None, text.as_str()));
            let n = decimal(digits).ok_or_else(|| not_a_number(&text))?;
            Some(("valueQuantity", quantity(n, unit.as_ref(), comparator)))
        }
        "SN" => {
            let comparator = part(first, 1, 1);
            let (n1, separator, n2) = (number(part(first, 2, 1))?, part(first, 3, 1), number(part(first, 4, 1))?);
            match (comparator.as_deref(), n1, separator.as_deref(), n2) {
                (None | Some("="), Some(n), None, None) => Some(("valueQuantity", quantity(n, unit.as_ref(), None))),
                (Some(c), Some(n), None, None) if COMPARATORS.contains(&c) => Some(("valueQuantity", quantity(n, unit.as_ref(), Some(c)))),
                (None, Some(l), Some("-"), Some(h)) => Some(("valueRange", json!({"low": quantity(l, unit.as_ref(), None), "high": quantity(h, unit.as_ref(), None)}))),
                (None, Some(a), Some(":" | "/"), Some(b)) => Some(("valueRatio", json!({"numerator": {"value": a}, "denominator": {"value": b}}))),
                // `2+`, `<>3`, `>1:128`: as text.
                _ => lines(&|r: &Repetition| clean(Some(&(1..=4).filter_map(|c| part(r, c, 1)).collect::<String>()))),
            }
        }
        "CE" | "CWE" | "CNE" | "CF" => concept(first).map(|c| ("valueCodeableConcept", c)),
        "DT" | "DTM" | "TS" => {
            let text = part(first, 1, 1).unwrap_or_default();
            Some(("valueDateTime", json!(date_time(&text, &field)?)))
        }
        "TM" => match part(first, 1, 1).as_deref().and_then(fhir_time) {
            Some(t) => Some(("valueTime", json!(t))),
            None => lines(&rep_text),
        },
        "RP" => lines(&|r| part(r, 1, 1)),
        _ => lines(&rep_text),
    };
    Ok(v)
}

/// A status by its table; `None` for an empty field, an error for a code the table does
/// not have.
fn status(table: &[(&str, &'static str)], code: Option<String>, field: &str, name: &str) -> Result<Option<&'static str>, FieldError> {
    let Some(code) = code else { return Ok(None) };
    match table.iter().find(|(c, _)| c.eq_ignore_ascii_case(&code)) {
        Some((_, s)) => Ok(Some(s)),
        None => Err(field_error(field, format!("'{code}' is not a {name}"))),
    }
}

/// A date/time field as a FHIR dateTime, `None` when empty.
pub(crate) fn when(seg: &Segment, f: usize, label: &str) -> Result<Option<String>, FieldError> {
    value(seg, f, 1).map(|t| date_time(&t, &format!("{label}-{f}"))).transpose()
}

/// OBR-22 as an instant: only when it has a time to the minute.
fn issued(obr: &Segment, label: &str) -> Result<Option<String>, FieldError> {
    let Some(text) = value(obr, 22, 1) else { return Ok(None) };
    let dt = date_time(&text, &format!("{label}-22"))?;
    Ok(Dtm::parse(&text).filter(|d| d.hour.is_some() && d.minute.is_some()).map(|_| dt))
}

/// OBR-32 (NDL, its name a CNN in subcomponents) as a Reference to a practitioner.
fn interpreter(obr: &Segment, ctx: &Context) -> Option<Value> {
    let rep = obr.field(32)?.repetition(1)?;
    let sub = |s| part(rep, 1, s);
    let id = sub(1);
    let display: Vec<String> = [sub(6), sub(3), sub(2)].into_iter().flatten().collect();
    if id.is_none() && display.is_empty() {
        return None;
    }
    let mut o = Map::new();
    o.insert("type".into(), json!("Practitioner"));
    if let Some(id) = id {
        o.insert("identifier".into(), json!({"system": ctx.systems.practitioner, "value": id}));
    }
    if !display.is_empty() {
        o.insert("display".into(), json!(display.join(" ")));
    }
    Some(Value::Object(o))
}

/// One OBX and its notes.
struct Obx<'a> {
    seg: &'a Segment,
    /// Its number among the message's OBX segments, from 1.
    n: usize,
    ntes: Vec<&'a Segment>,
}

/// One ORDER_OBSERVATION group.
struct Group<'a> {
    obr: &'a Segment,
    /// Its number among the message's OBR segments, from 1.
    n: usize,
    ntes: Vec<&'a Segment>,
    obxs: Vec<Obx<'a>>,
}

/// The OBR groups of a message. An NTE belongs to the OBR or OBX before it when only NTE
/// and PRT segments come between.
fn groups(msg: &Message) -> Vec<Group<'_>> {
    #[derive(Clone, Copy)]
    enum Notes {
        None,
        Report,
        Result,
    }
    let (mut out, mut open, mut notes): (Vec<Group>, bool, Notes) = (Vec::new(), false, Notes::None);
    let (mut obr_n, mut obx_n) = (0, 0);
    for seg in msg.segments() {
        match seg.name() {
            "OBR" => {
                obr_n += 1;
                out.push(Group { obr: seg, n: obr_n, ntes: Vec::new(), obxs: Vec::new() });
                (open, notes) = (true, Notes::Report);
            }
            "OBX" => {
                obx_n += 1;
                match out.last_mut().filter(|_| open) {
                    Some(g) => {
                        g.obxs.push(Obx { seg, n: obx_n, ntes: Vec::new() });
                        notes = Notes::Result;
                    }
                    None => notes = Notes::None,
                }
            }
            "NTE" => match (notes, out.last_mut()) {
                (Notes::Report, Some(g)) => g.ntes.push(seg),
                (Notes::Result, Some(g)) => {
                    if let Some(o) = g.obxs.last_mut() {
                        o.ntes.push(seg)
                    }
                }
                _ => {}
            },
            "PRT" => {}
            "ORC" | "PID" => (open, notes) = (false, Notes::None),
            _ => notes = Notes::None,
        }
    }
    out
}

pub(crate) fn reference(r: &str) -> Value {
    json!({"reference": r})
}

/// Inserts `key: v` when `v` is `Some`.
pub(crate) fn put(o: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        o.insert(key.into(), v);
    }
}

/// Inserts `key: list` when the list is not empty.
pub(crate) fn put_list(o: &mut Map<String, Value>, key: &str, list: Vec<Value>) {
    if !list.is_empty() {
        o.insert(key.into(), Value::Array(list));
    }
}

/// ORU^R01: a DiagnosticReport for each OBR, and an Observation for each of its OBX, in
/// that order (each report before its observations).
pub fn oru_r01(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    if msg.segments_named("PID").count() > 1 {
        return Err(field_error("PID[2]-3", "a second patient: this interface takes one patient's results per message"));
    }
    let sys = ctx.systems;
    let mut entries = Vec::new();
    let mut report_keys: Vec<String> = Vec::new();
    for g in groups(msg) {
        let label = segment_label(msg, "OBR", g.n);
        let (placer, filler) = (value(g.obr, 2, 1), value(g.obr, 3, 1));
        let key: Option<(&str, &str)> = filler.as_deref().map(|f| (sys.filler_order.as_str(), f)).or(placer.as_deref().map(|p| (sys.placer_order.as_str(), p)));
        if key.is_none() && ctx.require_order {
            return Err(field_error(format!("{label}-3"), "the result names no order (OBR-2/OBR-3 are empty) and this interface requires one"));
        }
        let method = match key {
            Some((s, v)) => {
                let q = identifier_query(s, v);
                if report_keys.contains(&q) {
                    return Err(field_error(format!("{label}-{}", if filler.is_some() { 3 } else { 2 }), format!("order number '{v}' is already the number of an earlier report of this message")));
                }
                report_keys.push(q.clone());
                Method::Upsert(q)
            }
            None => Method::Create,
        };
        let code = g.obr.field(4).and_then(|f| f.repetition(1)).and_then(concept).ok_or_else(|| field_error(format!("{label}-4"), "the report names no test (OBR-4 is empty)"))?;
        let report_status = status(REPORT_STATUS, value(g.obr, 25, 1), &format!("{label}-25"), "result status (table 0123)")?.unwrap_or("unknown");
        let effective = when(g.obr, 7, &label)?;
        let issued = issued(g.obr, &label)?;
        let based_on = placer.as_deref().map(|p| json!([{"type": "ServiceRequest", "identifier": {"system": sys.placer_order, "value": p}}]));
        let mut identifiers = Vec::new();
        if let Some(f) = &filler {
            identifiers.push(typed_identifier("FILL", &sys.filler_order, f));
        }
        if let Some(p) = &placer {
            identifiers.push(typed_identifier("PLAC", &sys.placer_order, p));
        }

        let report_url = full_url("DiagnosticReport", entries.len());
        let report_index = entries.len();
        entries.push(Entry { full_url: report_url, method, resource: Value::Null });

        let mut results = Vec::new();
        let mut obs_keys: Vec<String> = Vec::new();
        for obx in &g.obxs {
            let ol = segment_label(msg, "OBX", obx.n);
            let obs_code = obx.seg.field(3).and_then(|f| f.repetition(1)).and_then(concept).ok_or_else(|| field_error(format!("{ol}-3"), "the observation names no test (OBX-3 is empty)"))?;
            let obs_status = match status(RESULT_STATUS, value(obx.seg, 11, 1), &format!("{ol}-11"), "result status (table 0085)")? {
                Some(s) => s,
                None => INHERITED_STATUS.iter().find(|(r, _)| *r == report_status).map_or("unknown", |(_, o)| o),
            };
            let mut o = Map::new();
            o.insert("resourceType".into(), json!("Observation"));
            let method = match key {
                Some((s, number)) => {
                    let test = value(obx.seg, 3, 1).or_else(|| value(obx.seg, 3, 2)).unwrap_or_default();
                    let mut id = format!("{number}/{test}");
                    if let Some(sub) = value(obx.seg, 4, 1) {
                        id.push_str(&format!("/{sub}"));
                    }
                    let seen = obs_keys.iter().filter(|k| **k == id).count();
                    obs_keys.push(id.clone());
                    if seen > 0 {
                        id.push_str(&format!("/{}", seen + 1));
                    }
                    let system = format!("{s}/observation");
                    o.insert("identifier".into(), json!([{"system": system, "value": id}]));
                    Method::Upsert(identifier_query(&system, &id))
                }
                None => Method::Create,
            };
            put(&mut o, "basedOn", based_on.clone());
            o.insert("status".into(), json!(obs_status));
            o.insert("category".into(), json!([{"coding": [{"system": OBSERVATION_CATEGORY_SYSTEM, "code": "laboratory", "display": "Laboratory"}]}]));
            o.insert("code".into(), obs_code);
            o.insert("subject".into(), reference(ctx.patient));
            put(&mut o, "encounter", ctx.encounter.map(reference));
            put(&mut o, "effectiveDateTime", when(obx.seg, 14, &ol)?.or_else(|| effective.clone()).map(Value::from));
            put(&mut o, "issued", issued.clone().map(Value::from));
            o.insert("performer".into(), json!([reference(ctx.organisation)]));
            if let Some((k, v)) = observation_value(obx.seg, &ol)? {
                o.insert(k.into(), v);
            }
            put_list(&mut o, "interpretation", interpretations(obx.seg));
            put_list(&mut o, "note", notes(&obx.ntes));
            let range = obx.seg.field(7).and_then(|f| f.repetition(1)).and_then(rep_text);
            put(&mut o, "referenceRange", range.map(|t| json!([reference_range(&t, unit_of(obx.seg).as_ref())])));
            let url = full_url("Observation", entries.len());
            results.push(reference(&url));
            entries.push(Entry { full_url: url, method, resource: Value::Object(o) });
        }

        let mut r = Map::new();
        r.insert("resourceType".into(), json!("DiagnosticReport"));
        put_list(&mut r, "identifier", identifiers);
        put(&mut r, "basedOn", based_on);
        r.insert("status".into(), json!(report_status));
        let section = value(g.obr, 24, 1).map_or_else(|| "LAB".into(), |s| self::code(&s));
        let mut coding = json!({"system": SERVICE_SECTION_SYSTEM, "code": section});
        if section == "LAB" {
            coding["display"] = json!("Laboratory");
        }
        r.insert("category".into(), json!([{"coding": [coding]}]));
        r.insert("code".into(), code);
        r.insert("subject".into(), reference(ctx.patient));
        put(&mut r, "encounter", ctx.encounter.map(reference));
        put(&mut r, "effectiveDateTime", effective.map(Value::from));
        put(&mut r, "issued", issued.map(Value::from));
        r.insert("performer".into(), json!([reference(ctx.organisation)]));
        put(&mut r, "resultsInterpreter", interpreter(g.obr, ctx).map(|i| json!([i])));
        put_list(&mut r, "result", results);
        let conclusion: Vec<String> = g.ntes.iter().filter_map(|n| nte_text(n)).collect();
        put(&mut r, "conclusion", (!conclusion.is_empty()).then(|| json!(conclusion.join("\n"))));
        entries[report_index].resource = Value::Object(r);
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_clean, sample_text as sample};
    use super::*;
    use crate::map::Systems;
    use proptest::prelude::*;

    fn with_ctx<T>(require_order: bool, f: impl FnOnce(&Context) -> T) -> T {
        let systems = Systems::for_organisation("rx1");
        let ctx = Context { systems: &systems, patient: "urn:uuid:p", encounter: Some("urn:uuid:e"), organisation: "Organization/rx1", location: &|_| Some("Location/w".into()), require_order };
        f(&ctx)
    }

    fn map(text: &str) -> Result<Vec<Entry>, FieldError> {
        let msg = Message::parse(text).expect("parses");
        with_ctx(false, |ctx| oru_r01(&msg, ctx))
    }

    fn assert_entries_clean(entries: &[Entry]) {
        assert_clean(entries);
        let mut queries: Vec<String> = entries.iter().filter_map(|e| if let Method::Upsert(q) = &e.method { Some(format!("{}?{q}", e.resource["resourceType"])) } else { None }).collect();
        let n = queries.len();
        queries.sort();
        queries.dedup();
        assert_eq!(queries.len(), n, "conditional writes are unique");
        for e in entries {
            let rt = e.resource["resourceType"].as_str().unwrap();
            assert!(e.resource.get("status").is_some() && e.resource.get("code").is_some(), "{rt} has status and code");
        }
    }

    fn count(entries: &[Entry], rt: &str) -> usize {
        entries.iter().filter(|e| e.resource["resourceType"] == rt).count()
    }

    #[test]
    fn every_sample_maps() {
        let expected = [("ORU-R01-01.hl7", 1, 3), ("ORU-R01-RMGEAD.hl7", 1, 1), ("LAB-ORU-1.hl7", 2, 10), ("LAB-ORU-2.hl7", 2, 10), ("LRI_2.0-NG_CBC_Typ_Message.hl7", 1, 28)];
        for (name, reports, observations) in expected {
            let Some(text) = sample(name) else {
                eprintln!("{name} is not there: skipped");
                continue;
            };
            let entries = map(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_entries_clean(&entries);
            assert_eq!((count(&entries, "DiagnosticReport"), count(&entries, "Observation")), (reports, observations), "{name}");
            for e in entries.iter().filter(|e| e.resource["resourceType"] == "DiagnosticReport") {
                let results = e.resource["result"].as_array().map_or(0, Vec::len);
                for r in e.resource["result"].as_array().into_iter().flatten() {
                    assert!(entries.iter().any(|o| o.full_url == r["reference"]), "{name}: result resolves");
                }
                assert!(results > 0, "{name}");
            }
        }
    }

    #[test]
    fn cbc_report_field_by_field() {
        let Some(text) = sample("LRI_2.0-NG_CBC_Typ_Message.hl7") else { return };
        let entries = map(&text).unwrap();
        let report = &entries[0];
        let filler = "https://tessera.health/Id/rx1/filler-order";
        assert_eq!(report.method, Method::Upsert(format!("identifier={filler}|R-991133")));
        let r = &report.resource;
        assert_eq!(r["resourceType"], "DiagnosticReport");
        assert_eq!(r["status"], "final");
        assert_eq!(r["identifier"][0]["value"], "R-991133");
        assert_eq!(r["identifier"][0]["system"], filler);
        assert_eq!(r["identifier"][0]["type"]["coding"][0]["code"], "FILL");
        assert_eq!(r["identifier"][1]["value"], "ORD666555");
        assert_eq!(r["basedOn"][0], json!({"type": "ServiceRequest", "identifier": {"system": "https://tessera.health/Id/rx1/placer-order", "value": "ORD666555"}}));
        assert_eq!(r["code"]["coding"][0], json!({"system": "http://loinc.org", "code": "57021-8", "display": "CBC W Auto Differential panel in Blood"}));
        assert_eq!(r["code"]["coding"][1]["system"], "urn:hl7v2:coding-system:99USI");
        assert_eq!(r["category"][0]["coding"][0]["code"], "LAB");
        assert_eq!(r["subject"]["reference"], "urn:uuid:p");
        assert_eq!(r["encounter"]["reference"], "urn:uuid:e");
        assert_eq!(r["performer"][0]["reference"], "Organization/rx1");
        assert_eq!(r["effectiveDateTime"], "2011-01-03T14:34:28-08:00");
        assert_eq!(r["issued"], "2011-01-04T17:00:28-08:00");
        assert_eq!(r["result"].as_array().unwrap().len(), 28);
        assert_eq!(r["result"][0]["reference"], json!(entries[1].full_url));

        let hb = &entries[2];
        assert_eq!(hb.method, Method::Upsert(format!("identifier={filler}/observation|R-991133/718-7")));
        let o = &hb.resource;
        assert_eq!(o["identifier"][0], json!({"system": format!("{filler}/observation"), "value": "R-991133/718-7"}));
        assert_eq!(o["status"], "final");
        assert_eq!(o["code"]["coding"][0]["code"], "718-7");
        assert_eq!(o["category"][0]["coding"][0]["code"], "laboratory");
        assert_eq!(o["valueQuantity"], json!({"value": 12.5, "unit": "g/mL", "system": UCUM, "code": "g/mL"}));
        assert_eq!(o["referenceRange"][0]["low"]["value"], json!(13));
        assert_eq!(o["referenceRange"][0]["high"], json!({"value": 18, "unit": "g/mL", "system": UCUM, "code": "g/mL"}));
        assert_eq!(o["interpretation"][0]["coding"][0], json!({"system": INTERPRETATION_SYSTEM, "code": "L", "display": "Low"}));
        assert_eq!(o["effectiveDateTime"], "2011-01-03T14:34:28-08:00");
        assert_eq!(o["subject"]["reference"], "urn:uuid:p");
        assert_eq!(o["performer"][0]["reference"], "Organization/rx1");
        assert_eq!(entries[4].resource["interpretation"][0]["coding"][0]["display"], "Critical high");
        assert_eq!(entries[20].resource["valueCodeableConcept"]["coding"][0]["code"], "260348001");
        assert_eq!(entries[26].resource["valueString"], "Many spherocytes present.");
    }

    #[test]
    fn other_samples_in_detail() {
        if let Some(text) = sample("ORU-R01-RMGEAD.hl7") {
            let e = map(&text).unwrap();
            let o = &e[1].resource;
            assert_eq!(o["valueQuantity"], json!({"value": 182, "unit": "mg/dl", "system": UCUM, "code": "mg/dL"}));
            assert_eq!(o["referenceRange"][0], json!({"text": "70_105"}));
            assert_eq!(o["interpretation"][0]["coding"][0]["code"], "H");
            // Free text where the coding system belongs is kept, as a valid uri.
            assert_eq!(o["code"]["coding"][0]["system"], "urn:hl7v2:coding-system:POST%2012H%20CFST:MCNC:PT:SER/PLAS:QN");
        }
        if let Some(text) = sample("ORU-R01-01.hl7") {
            let e = map(&text).unwrap();
            let r = &e[0].resource;
            assert_eq!(r["category"][0]["coding"][0]["code"], "BLB");
            assert_eq!(r["resultsInterpreter"][0]["display"], "Dr. Geny Raud");
            assert!(r["conclusion"].as_str().unwrap().starts_with("Enteric culture includes testing for Salmonella, Shigella, Campylobacter, Yersinia, E.coli O157:H7 & other"));
            assert_eq!(e[1].resource["note"].as_array().unwrap().len(), 2);
            assert_eq!(e[1].resource["status"], "preliminary");
            assert_eq!(e[2].resource["valueString"], "https://testurl.com");
            assert_eq!(e[2].resource["status"], "registered");
            assert_eq!(e[3].resource["valueString"], "27\n25");
        }
        if let Some(text) = sample("LAB-ORU-1.hl7") {
            let e = map(&text).unwrap();
            assert_eq!(e[1].resource.get("valueQuantity"), None);
            assert_eq!(e[1].resource["status"], "registered");
            assert_eq!(e[2].resource["valueQuantity"], json!({"value": 4.06, "unit": "tera.l-1", "system": UCUM, "code": "10*12/L"}));
            assert_eq!(e[6].resource["status"], "unknown");
            assert_eq!(e[7].resource["status"], "preliminary");
        }
    }

    const ORU: &str = "MSH|^~\\&|LAB|RX1|EPR|RX1|202401021030||ORU^R01^ORU_R01|1|P|2.5.1\r\
PID|1||K123^^^RX1^MR\r\
OBR|1|PL1^EPR|FI1^LAB|U&E^Urea and electrolytes^L|||202401020900|||||||||||||||202401021015||CH|F\r\
OBX|1|NM|2823-3^Potassium^LN||4.50|mmol/L^^UCUM|3.5-5.0|N|||F\r\
NTE|1||Haemolysed sample\r\
OBX|2|NM|2951-2^Sodium^LN||150|mmol/L|133 - 146|H|||F|||202401020905\r";

    #[test]
    fn a_small_report() {
        let e = map(ORU).unwrap();
        assert_eq!(e.len(), 3);
        let r = &e[0].resource;
        assert_eq!(r["category"][0]["coding"][0]["code"], "CH");
        assert_eq!(r["effectiveDateTime"], "2024-01-02T09:00:00+00:00");
        assert_eq!(r["issued"], "2024-01-02T10:15:00+00:00");
        let k = &e[1].resource;
        assert_eq!(serde_json::to_string(&k["valueQuantity"]).unwrap(), r#"{"value":4.50,"unit":"mmol/L","system":"http://unitsofmeasure.org","code":"mmol/L"}"#);
        assert_eq!(k["note"], json!([{"text": "Haemolysed sample"}]));
        assert_eq!(k["effectiveDateTime"], "2024-01-02T09:00:00+00:00");
        assert_eq!(e[2].resource["effectiveDateTime"], "2024-01-02T09:05:00+00:00");
        assert_eq!(e[2].resource["referenceRange"][0]["low"]["value"], json!(133));
        assert_eq!(e[2].resource["referenceRange"][0]["high"]["code"], "mmol/L");
        // The date alone is not an instant: no issued.
        let e = map(&ORU.replace("202401021015", "20240102")).unwrap();
        assert!(e[0].resource.get("issued").is_none());
    }

    #[test]
    fn corrections_update_what_the_first_report_wrote() {
        let first = map(ORU).unwrap();
        let corrected = map(&ORU.replace("|CH|F", "|CH|C").replace("|F\r", "|C\r").replace("4.50", "4.70")).unwrap();
        assert_eq!(corrected[0].resource["status"], "corrected");
        assert_eq!(corrected[1].resource["status"], "corrected");
        assert_eq!(corrected[1].resource["valueQuantity"]["value"].to_string(), "4.70");
        let methods = |e: &[Entry]| e.iter().map(|x| x.method.clone()).collect::<Vec<_>>();
        assert_eq!(methods(&first), methods(&corrected));
        let ids = |e: &[Entry]| e.iter().map(|x| x.resource["identifier"].clone()).collect::<Vec<_>>();
        assert_eq!(ids(&first), ids(&corrected));
        assert!(matches!(&first[1].method, Method::Upsert(q) if q == "identifier=https://tessera.health/Id/rx1/filler-order/observation|FI1/2823-3"));
        // The placer number is the key when there is no filler number.
        let placer_only = map(&ORU.replace("FI1^LAB", "")).unwrap();
        assert_eq!(placer_only[0].method, Method::Upsert("identifier=https://tessera.health/Id/rx1/placer-order|PL1".into()));
        assert_eq!(placer_only[1].method, Method::Upsert("identifier=https://tessera.health/Id/rx1/placer-order/observation|PL1/2823-3".into()));
        // The same test twice in a report: a second identifier.
        let twice = map(&ORU.replace("2951-2^Sodium", "2823-3^Potassium")).unwrap();
        assert_eq!(twice[2].resource["identifier"][0]["value"], "FI1/2823-3/2");
        // Deleted results.
        let deleted = map(&ORU.replace("|N|||F", "|N|||D")).unwrap();
        assert_eq!(deleted[1].resource["status"], "entered-in-error");
    }

    #[test]
    fn results_need_an_order_when_the_interface_says_so() {
        let text = ORU.replace("PL1^EPR|FI1^LAB", "|");
        let msg = Message::parse(&text).unwrap();
        let err = with_ctx(true, |ctx| oru_r01(&msg, ctx)).unwrap_err();
        assert_eq!(err.field, "OBR-3");
        assert_eq!(err.problem, "the result names no order (OBR-2/OBR-3 are empty) and this interface requires one");
        let entries = with_ctx(false, |ctx| oru_r01(&msg, ctx)).unwrap();
        assert!(entries.iter().all(|e| e.method == Method::Create));
        assert!(entries.iter().all(|e| e.resource.get("identifier").is_none() && e.resource.get("basedOn").is_none()));
        assert_entries_clean(&entries);
    }

    #[test]
    fn errors_name_the_field() {
        let err = map(&ORU.replace("|150|", "|abc|")).unwrap_err();
        assert_eq!((err.field.as_str(), err.problem.as_str()), ("OBX[2]-5", "'abc' is not a number (OBX-2 is NM)"));
        let one = "MSH|^~\\&|L\rPID|1\rOBR|1||F1|X^Y\rOBX|1|NM|A^B||1,5\r";
        assert_eq!(map(one).unwrap_err().field, "OBX-5");
        assert_eq!(map(&ORU.replace("2823-3^Potassium^LN", "")).unwrap_err().field, "OBX[1]-3");
        assert_eq!(map(&ORU.replace("U&E^Urea and electrolytes^L", "")).unwrap_err().field, "OBR-4");
        assert_eq!(map(&ORU.replace("202401020900", "2024x")).unwrap_err().field, "OBR-7");
        assert_eq!(map(&ORU.replace("|CH|F", "|CH|Q")).unwrap_err().field, "OBR-25");
        assert_eq!(map(&ORU.replace("|N|||F", "|N|||Q")).unwrap_err().field, "OBX[1]-11");
        assert_eq!(map(&format!("{ORU}PID|2\r")).unwrap_err().field, "PID[2]-3");
        let two = format!("{ORU}OBR|2||FI1|X^Y\r");
        assert_eq!(map(&two).unwrap_err().field, "OBR[2]-3");
    }

    fn value_of(value_type: &str, value: &str, units: &str) -> Value {
        let text = format!("MSH|^~\\&|L\rPID|1\rOBR|1||F1|X^Y|||20240102\rOBX|1|{value_type}|A^B||{value}|{units}\r");
        let e = map(&text).unwrap();
        let o = e[1].resource.as_object().unwrap();
        let key = o.keys().find(|k| k.starts_with("value")).cloned();
        key.map_or(Value::Null, |k| json!({k.clone(): o[&k]}))
    }

    #[test]
    fn structured_numbers() {
        assert_eq!(value_of("SN", "<^5", "mmol/L"), json!({"valueQuantity": {"value": 5, "comparator": "<", "unit": "mmol/L", "system": UCUM, "code": "mmol/L"}}));
        assert_eq!(value_of("SN", ">=^10.0", ""), json!({"valueQuantity": {"value": 10.0, "comparator": ">="}}));
        assert_eq!(value_of("SN", "=^7", ""), json!({"valueQuantity": {"value": 7}}));
        assert_eq!(value_of("SN", "^2^-^4", "g/L"), json!({"valueRange": {"low": {"value": 2, "unit": "g/L", "system": UCUM, "code": "g/L"}, "high": {"value": 4, "unit": "g/L", "system": UCUM, "code": "g/L"}}}));
        assert_eq!(value_of("SN", "^1^:^128", ""), json!({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 128}}}));
        assert_eq!(value_of("SN", "^1^/^2", ""), json!({"valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 2}}}));
        assert_eq!(value_of("SN", "^2^+", ""), json!({"valueString": "2+"}));
        assert_eq!(value_of("SN", "<>^3", ""), json!({"valueString": "<>3"}));
        assert_eq!(value_of("SN", ">^1^:^128", ""), json!({"valueString": ">1:128"}));
        let err = map("MSH|^~\\&|L\rPID|1\rOBR|1||F1|X^Y\rOBX|1|SN|A^B||<^x\r").unwrap_err();
        assert_eq!((err.field.as_str(), err.problem.as_str()), ("OBX-5", "'x' is not a number (OBX-2 is SN)"));
    }

    #[test]
    fn values_by_type() {
        assert_eq!(value_of("NM", "+.5", "x10\\S\\9/L"), json!({"valueQuantity": {"value": 0.5, "unit": "x10^9/L", "system": UCUM, "code": "10*9/L"}}));
        assert_eq!(value_of("NM", "-007.10", "furlongs").to_string(), r#"{"valueQuantity":{"value":-7.10,"unit":"furlongs"}}"#);
        assert_eq!(value_of("NM", "12", "beats/min^^ISO+"), json!({"valueQuantity": {"value": 12, "unit": "beats/min", "system": UCUM, "code": "/min"}}));
        assert_eq!(value_of("NM", "3", "kat/kg^^UCUM"), json!({"valueQuantity": {"value": 3, "unit": "kat/kg", "system": UCUM, "code": "kat/kg"}}));
        assert_eq!(value_of("NM", "3", "^per minute^L"), json!({"valueQuantity": {"value": 3, "unit": "per minute"}}));
        assert_eq!(value_of("NM", "<0.5", "mg/L"), json!({"valueQuantity": {"value": 0.5, "comparator": "<", "unit": "mg/L", "system": UCUM, "code": "mg/L"}}));
        assert_eq!(value_of("NM", ">=90", ""), json!({"valueQuantity": {"value": 90, "comparator": ">="}}));
        assert_eq!(value_of("NM", "", ""), Value::Null);
        assert_eq!(value_of("NM", "\"\"", ""), Value::Null);
        assert_eq!(value_of("ST", "Positive", ""), json!({"valueString": "Positive"}));
        assert_eq!(value_of("TX", "line one~line two", ""), json!({"valueString": "line one\nline two"}));
        assert_eq!(value_of("FT", "a\\.br\\b", ""), json!({"valueString": "a\nb"}));
        assert_eq!(value_of("CWE", "260373001^Detected^SCT", ""), json!({"valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "260373001", "display": "Detected"}], "text": "Detected"}}));
        assert_eq!(value_of("DT", "20240102", ""), json!({"valueDateTime": "2024-01-02"}));
        assert_eq!(value_of("TS", "202407011030", ""), json!({"valueDateTime": "2024-07-01T10:30:00+01:00"}));
        assert_eq!(value_of("TM", "1030", ""), json!({"valueTime": "10:30:00"}));
        assert_eq!(value_of("TM", "2575", ""), json!({"valueString": "2575"}));
        assert_eq!(value_of("XYZ", "odd^value", ""), json!({"valueString": "odd^value"}));
        assert_eq!(value_of("", "untyped", ""), json!({"valueString": "untyped"}));
        let err = map("MSH|^~\\&|L\rPID|1\rOBR|1||F1|X^Y\rOBX|1|DT|A^B||2024133\r").unwrap_err();
        assert_eq!(err.field, "OBX-5");
    }

    #[test]
    fn numbers_keep_their_digits() {
        for (text, json) in [("4.50", "4.50"), ("+1", "1"), (".5", "0.5"), ("-.25", "-0.25"), ("007", "7"), ("10.", "10"), ("0", "0"), ("-0.0", "-0.0")] {
            assert_eq!(serde_json::to_string(&decimal(text).unwrap()).unwrap(), json, "{text}");
        }
        for bad in ["", "-", ".", "1e5", "1.2.3", "abc", "1,5", "--1", "1-"] {
            assert!(decimal(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn reference_ranges() {
        let unit = Unit { text: "mmol/L".into(), ucum: Some("mmol/L".into()) };
        let q = |v: f64| json!({"value": v, "unit": "mmol/L", "system": UCUM, "code": "mmol/L"});
        assert_eq!(reference_range("3.5-5.0", Some(&unit)), json!({"low": q(3.5), "high": q(5.0)}));
        assert_eq!(reference_range("13 to 18", None), json!({"low": {"value": 13}, "high": {"value": 18}}));
        assert_eq!(reference_range("-2 - 2", None), json!({"low": {"value": -2}, "high": {"value": 2}}));
        assert_eq!(reference_range("<5", None), json!({"high": {"value": 5}, "text": "<5"}));
        assert_eq!(reference_range("<= 5", None), json!({"high": {"value": 5}, "text": "<= 5"}));
        assert_eq!(reference_range(">2", None), json!({"low": {"value": 2}, "text": ">2"}));
        assert_eq!(reference_range("negative", None), json!({"text": "negative"}));
        assert_eq!(reference_range("3.5-", None), json!({"text": "3.5-"}));
        assert_eq!(reference_range("a-b", None), json!({"text": "a-b"}));
    }

    #[test]
    fn interpretations_and_units_from_tables() {
        let seg = |s: &str| Message::parse(&format!("MSH|^~\\&\r{s}")).unwrap().segments()[1].clone();
        let i = interpretations(&seg("OBX|1|NM|A||1||| hh ~A^Abnormal^HL70078~Z  Z"));
        assert_eq!(i[0]["coding"][0]["code"], "HH");
        assert_eq!(i[1]["coding"][0]["display"], "Abnormal");
        assert_eq!(i[2], json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": "Z Z"}], "text": "Z  Z"}));
        assert_eq!(unit_of(&seg("OBX|1|NM|A||1|MG/DL")).unwrap().ucum.as_deref(), Some("mg/dL"));
        assert_eq!(unit_of(&seg("OBX|1|NM|A||1|^mL/min/1.73m2")).unwrap(), Unit { text: "mL/min/1.73m2".into(), ucum: Some("mL/min/{1.73_m2}".into()) });
        assert_eq!(unit_of(&seg("OBX|1|NM|A||1|\"\"")), None);
        for (code, _) in REPORT_STATUS.iter().chain(RESULT_STATUS) {
            assert!(code.len() == 1);
        }
    }

    proptest! {
        #[test]
        fn any_value_maps_or_says_why(value_type in prop_oneof![Just("NM".to_string()), Just("SN".to_string()), Just("CWE".to_string()), Just("ST".to_string()), Just("TS".to_string()), Just("TM".to_string()), Just("RP".to_string()), "[A-Z]{0,3}"],
                                     value in "[^\r\n]{0,40}", range in "[^\r\n]{0,20}", units in "[^\r\n]{0,12}", flags in "[^\r\n]{0,8}") {
            let text = format!("MSH|^~\\&|L\rPID|1\rOBR|1|P1|F1|X^Y|||20240102\rOBX|1|{value_type}|A^B||{value}|{units}|{range}|{flags}|||F\rOBX|2|{value_type}|C^D||{range}|{units}|{value}\r");
            if let Ok(msg) = Message::parse(&text) {
                match with_ctx(false, |ctx| oru_r01(&msg, ctx)) {
                    Ok(entries) => assert_entries_clean(&entries),
                    Err(e) => prop_assert!(e.field.starts_with("OBX") && !e.problem.is_empty(), "{e}"),
                }
            }
        }
    }
}
