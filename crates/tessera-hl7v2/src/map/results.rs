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
//! | OBX-2 value type and OBX-5 value | Observation `value[x]`: NM `valueQuantity`; SN `valueQuantity` with comparator, `valueRange` (`1^-^3`) or `valueRatio` (`1^:^128`); CE/CWE/CNE `valueCodeableConcept`; DT/DTM/TS `valueDateTime`; TM `valueTime`; ST/TX/FT and any other type `valueString` (repetitions one per line; RP its pointer) |
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
pub(crate) const ORDER_IDENTIFIER_TYPES: &[(&str, &str)] = &[("PLAC", "Placer Identifier"), ("FILL", "Filler Identifier"), ("PGN", "Placer Group Number")];

/// An identifier of type `PLAC`, `FILL` or `PGN` (table 0203).
pub(crate) fn typed_identifier(type_code: &str, system: &str, value: &str) -> Value {
    let display = ORDER_IDENTIFIER_TYPES.iter().find(|(c, _)| *c == type_code).map_or(type_code, |(_, d)| d);
    json!({"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": type_code, "display": display}]}, "system": system, "value": value})
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
    let declared = system.filter(|s| UCUM_SYSTEMS.iter().any(|u| u.eq_ignore_ascii_case(s))).and(code);
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
    for (prefix, bound) in [("<=", "high"), (">=", "low"), ("<", "high"), (">", "low")] {
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
            None => json!({"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0078", "code": flag}], "text": flag}),
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
            let text = rep_text(first).unwrap_or_default();
            let n = decimal(&text).ok_or_else(|| not_a_number(&text))?;
            Some(("valueQuantity", quantity(n, unit.as_ref(), None)))
        }
        "SN" => {
            let comparator = part(first, 1, 1);
            let (n1, separator, n2) = (number(part(first, 2, 1))?, part(first, 3, 1), number(part(first, 4, 1))?);
            match (comparator.as_deref(), n1, separator.as_deref(), n2) {
                (None | Some("="), Some(n), None, None) => Some(("valueQuantity", quantity(n, unit.as_ref(), None))),
                (Some(c @ ("<" | ">" | "<=" | ">=")), Some(n), None, None) => Some(("valueQuantity", quantity(n, unit.as_ref(), Some(c)))),
                (None, Some(l), Some("-"), Some(h)) => Some(("valueRange", json!({"low": quantity(l, unit.as_ref(), None), "high": quantity(h, unit.as_ref(), None)}))),
                (None, Some(a), Some(":" | "/"), Some(b)) => Some(("valueRatio", json!({"numerator": {"value": a}, "denominator": {"value": b}}))),
                _ => lines(&rep_text),
            }
        }
        "CE" | "CWE" | "CNE" | "CF" => codeable_concept(first).map(|c| ("valueCodeableConcept", c)),
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
        let code = g.obr.field(4).and_then(|f| f.repetition(1)).and_then(codeable_concept).ok_or_else(|| field_error(format!("{label}-4"), "the report names no test (OBR-4 is empty)"))?;
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
            let obs_code = obx.seg.field(3).and_then(|f| f.repetition(1)).and_then(codeable_concept).ok_or_else(|| field_error(format!("{ol}-3"), "the observation names no test (OBX-3 is empty)"))?;
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
        let section = value(g.obr, 24, 1).unwrap_or_else(|| "LAB".into());
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
