//! Reading FHIR resources for people: names, NHS numbers, dates, codes, quantities, the
//! owning organisation — and the engine calls the pages make (every one through the `Gate`).

use serde_json::Value;
use tessera_domain::Domain;
use tessera_engine::search::Scope;
use tessera_engine::{Access, Engine, FhirError};

/// What a search returned to this reader: the resources it may see, and whether more exists
/// behind the glass.
#[derive(Debug, Default)]
pub struct Found {
    pub resources: Vec<Value>,
    pub behind_glass: bool,
    /// Included resources (`_include`), by `Type/id`.
    pub included: Vec<Value>,
    /// The search failed: the list is unknown, never "none recorded".
    pub error: Option<String>,
}

impl From<Result<Found, FhirError>> for Found {
    /// A page's list: what the search found, or why it could not be loaded.
    fn from(r: Result<Found, FhirError>) -> Found {
        r.unwrap_or_else(|e| {
            tracing::warn!(status = e.status, "a list of the record could not be loaded: {e}");
            let why = e.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_else(|| format!("error {}", e.status));
            Found { error: Some(why), ..Found::default() }
        })
    }
}

/// A search of `resource_type` as `access` (through the engine's `Gate`, audited).
pub async fn search(engine: &Engine, access: &Access, resource_type: &str, query: &str) -> Result<Found, FhirError> {
    let bundle = engine.search(access, Scope::Type(Some(resource_type)), query, false).await?;
    let value: Value = serde_json::from_slice(bundle.as_bytes()).map_err(|e| FhirError::internal(format!("search bundle: {e}")))?;
    let mut found = Found::default();
    for entry in value.get("entry").and_then(Value::as_array).into_iter().flatten() {
        let mode = entry.pointer("/search/mode").and_then(Value::as_str).unwrap_or("match");
        let Some(resource) = entry.get("resource") else { continue };
        match (mode, resource.get("resourceType").and_then(Value::as_str)) {
            ("outcome", _) | (_, Some("OperationOutcome")) => {
                if resource.pointer("/issue/0/code").and_then(Value::as_str) == Some("suppressed") {
                    found.behind_glass = true;
                }
            }
            ("include", _) => found.included.push(resource.clone()),
            _ => found.resources.push(resource.clone()),
        }
    }
    Ok(found)
}

/// A read as `access`: `Ok(None)` when absent or hidden, `Err` with status 403 `suppressed`
/// when it exists behind the glass.
pub async fn read(engine: &Engine, access: &Access, resource_type: &str, id: &str) -> Result<Option<Value>, FhirError> {
    match engine.read(access, resource_type, id).await {
        Ok(r) => Ok(serde_json::from_slice(r.json()).ok()),
        Err(e) if e.status == 404 || e.status == 410 => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether an engine error is "exists, but behind the glass".
pub fn is_behind_glass(e: &FhirError) -> bool {
    e.status == 403 && e.issues.iter().any(|i| i.code == tessera_fhir::IssueType::Suppressed)
}

pub fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// A CodeableConcept for people: its text, else the first coding's display, else its code.
pub fn concept(cc: Option<&Value>) -> String {
    let Some(cc) = cc else { return String::new() };
    if let Some(t) = cc.get("text").and_then(Value::as_str).filter(|t| !t.trim().is_empty()) {
        return t.to_string();
    }
    for c in cc.get("coding").and_then(Value::as_array).into_iter().flatten() {
        if let Some(d) = c.get("display").and_then(Value::as_str).filter(|d| !d.trim().is_empty()) {
            return d.to_string();
        }
    }
    cc.pointer("/coding/0/code").and_then(Value::as_str).unwrap_or("").to_string()
}

/// The first coding of a CodeableConcept as `system|code` (for links and grouping).
pub fn code_key(cc: Option<&Value>) -> Option<String> {
    let c = cc?.pointer("/coding/0")?;
    let code = c.get("code")?.as_str()?;
    Some(match c.get("system").and_then(Value::as_str) {
        Some(s) => format!("{s}|{code}"),
        None => code.to_string(),
    })
}

/// A person's name as the NHS shows it: `FAMILY, Given Names`.
pub fn person_name(resource: &Value) -> String {
    let names = resource.get("name").and_then(Value::as_array);
    let name = names.and_then(|n| n.iter().find(|n| n.get("use").and_then(Value::as_str) == Some("official")).or_else(|| n.first()));
    let Some(name) = name else { return "(no name recorded)".to_string() };
    if let Some(text) = name.get("text").and_then(Value::as_str).filter(|_| name.get("family").is_none()) {
        return text.to_string();
    }
    let family = name.get("family").and_then(Value::as_str).unwrap_or("").to_uppercase();
    let given: Vec<&str> = name.get("given").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
    match (family.is_empty(), given.is_empty()) {
        (false, false) => format!("{family}, {}", given.join(" ")),
        (false, true) => family,
        (true, false) => given.join(" "),
        (true, true) => "(no name recorded)".to_string(),
    }
}

/// The patient's NHS number, formatted 3-3-4.
pub fn nhs_number(patient: &Value) -> Option<String> {
    patient
        .get("identifier")
        .and_then(Value::as_array)?
        .iter()
        .find(|i| i.get("system").and_then(Value::as_str) == Some(tessera_empi::nhs::SYSTEM))
        .and_then(|i| i.get("value").and_then(Value::as_str))
        .map(format_nhs)
}

/// Ten digits as 3-3-4 (`943 476 5919`); anything else as given.
pub fn format_nhs(value: &str) -> String {
    let digits: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
        format!("{} {} {}", &digits[..3], &digits[3..6], &digits[6..])
    } else {
        value.to_string()
    }
}

/// The patient's other identifiers (MRNs), as `(organisation or system, value)`.
pub fn local_identifiers(patient: &Value, domain: &Domain) -> Vec<(String, String)> {
    patient
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|i| {
            let system = i.get("system").and_then(Value::as_str).unwrap_or("");
            let value = i.get("value").and_then(Value::as_str)?;
            if system == tessera_empi::nhs::SYSTEM {
                return None;
            }
            let label = domain.organisation_of_mrn_system(system).map(|o| format!("{} MRN", o.name)).unwrap_or_else(|| {
                i.pointer("/type/text").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| if system.is_empty() { "Identifier".into() } else { system.to_string() })
            });
            Some((label, value.to_string()))
        })
        .collect()
}

/// The patient's confidentiality (`R` restricted, `V` very restricted), if any.
pub fn confidentiality(resource: &Value) -> Option<&'static str> {
    let codes = resource.pointer("/meta/security").and_then(Value::as_array)?;
    let mut out = None;
    for c in codes {
        if c.get("system").and_then(Value::as_str) == Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality") {
            match c.get("code").and_then(Value::as_str) {
                Some("V") => return Some("V"),
                Some("R") => out = Some("R"),
                _ => {}
            }
        }
    }
    out
}

/// The organisation that owns a resource, by name (from the owner tag the engine sets).
pub fn owner(resource: &Value, domain: &Domain) -> String {
    let code = resource.pointer("/meta/tag").and_then(Value::as_array).into_iter().flatten().find_map(|t| {
        (t.get("system").and_then(Value::as_str) == Some(tessera_engine::guard::OWNER_SYSTEM)).then(|| t.get("code").and_then(Value::as_str)).flatten()
    });
    match code {
        Some(c) => domain.organisation(c).map(|o| o.name.clone()).unwrap_or_else(|| c.to_string()),
        None => "Shared record".to_string(),
    }
}

/// The owner's trust id, if owned.
pub fn owner_id(resource: &Value) -> Option<&str> {
    resource.pointer("/meta/tag").and_then(Value::as_array)?.iter().find_map(|t| {
        (t.get("system").and_then(Value::as_str) == Some(tessera_engine::guard::OWNER_SYSTEM)).then(|| t.get("code").and_then(Value::as_str)).flatten()
    })
}

const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

/// A FHIR date or dateTime as people read it: `7 Dec 2026`, `7 Dec 2026 14:05`.
pub fn date(value: &str) -> String {
    let v = value.trim();
    let (d, t) = v.split_once('T').unwrap_or((v, ""));
    let mut parts = d.split('-');
    let (Some(y), m, day) = (parts.next(), parts.next(), parts.next()) else { return v.to_string() };
    let month = m.and_then(|m| m.parse::<usize>().ok()).filter(|m| (1..=12).contains(m)).map(|m| MONTHS[m - 1]);
    let mut out = match (day.and_then(|d| d.parse::<u32>().ok()), month) {
        (Some(day), Some(month)) => format!("{day} {month} {y}"),
        (None, Some(month)) => format!("{month} {y}"),
        _ => y.to_string(),
    };
    if let Some(hm) = t.get(..5) {
        out.push(' ');
        out.push_str(hm);
    }
    out
}

/// The date of a resource's clinically relevant moment (effective, onset, period start, …).
pub fn when(resource: &Value) -> Option<&str> {
    for p in [
        "/effectiveDateTime",
        "/effectivePeriod/start",
        "/issued",
        "/onsetDateTime",
        "/recordedDate",
        "/period/start",
        "/authoredOn",
        "/occurrenceDateTime",
        "/date",
        "/meta/lastUpdated",
    ] {
        if let Some(s) = str_at(resource, p) {
            return Some(s);
        }
    }
    None
}

/// Age in whole years on `today` (`YYYY-MM-DD`) of someone born on `birth` (`YYYY[-MM[-DD]]`).
pub fn age(birth: &str, today: &str) -> Option<u32> {
    let parse = |s: &str| -> Option<(i32, u32, u32)> {
        let mut p = s.split('-');
        let y = p.next()?.parse().ok()?;
        let m = p.next().map(|m| m.parse().ok()).unwrap_or(Some(1))?;
        let d = p.next().map(|d| d.get(..2).unwrap_or(d).parse().ok()).unwrap_or(Some(1))?;
        Some((y, m, d))
    };
    let (by, bm, bd) = parse(birth)?;
    let (ty, tm, td) = parse(today)?;
    let mut years = ty - by;
    if (tm, td) < (bm, bd) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// Today's date (UTC), `YYYY-MM-DD`.
pub fn today() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}-{:02}", now.year(), u8::from(now.month()), now.day())
}

/// Now as a FHIR instant (UTC, seconds).
pub fn now_instant() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", now.year(), u8::from(now.month()), now.day(), now.hour(), now.minute(), now.second())
}

/// A Quantity for people: `5.4 mmol/L`.
pub fn quantity(q: &Value) -> String {
    let value = q.get("value").map(|v| match v {
        Value::Number(n) => n.to_string(),
        other => other.as_str().unwrap_or("").to_string(),
    });
    let unit = q.get("unit").or_else(|| q.get("code")).and_then(Value::as_str).unwrap_or("");
    match value {
        Some(v) if unit.is_empty() => v,
        Some(v) => format!("{v} {unit}"),
        None => String::new(),
    }
}

/// The numeric value of a Quantity.
pub fn number(q: &Value) -> Option<f64> {
    match q.get("value")? {
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// An Observation's value for people (quantity, code, string, …).
pub fn observation_value(o: &Value) -> String {
    if let Some(q) = o.get("valueQuantity") {
        return quantity(q);
    }
    if let Some(cc) = o.get("valueCodeableConcept") {
        return concept(Some(cc));
    }
    for key in ["valueString", "valueDateTime", "valueTime"] {
        if let Some(s) = o.get(key).and_then(Value::as_str) {
            return s.to_string();
        }
    }
    if let Some(b) = o.get("valueBoolean").and_then(Value::as_bool) {
        return if b { "Yes".into() } else { "No".into() };
    }
    if let Some(i) = o.get("valueInteger") {
        return i.to_string();
    }
    if let Some(r) = o.get("valueRange") {
        return format!("{}–{}", r.get("low").map(quantity).unwrap_or_default(), r.get("high").map(quantity).unwrap_or_default());
    }
    if let Some(c) = o.get("component").and_then(Value::as_array) {
        let parts: Vec<String> = c.iter().map(|c| format!("{} {}", concept(c.get("code")), observation_value(c))).collect();
        return parts.join("; ");
    }
    o.pointer("/dataAbsentReason").map(|d| concept(Some(d))).unwrap_or_default()
}

/// The reference range of an Observation: `(low, high, text)`.
pub fn reference_range(o: &Value) -> (Option<f64>, Option<f64>, String) {
    let Some(r) = o.pointer("/referenceRange/0") else { return (None, None, String::new()) };
    let low = r.get("low").and_then(number);
    let high = r.get("high").and_then(number);
    let text = r.get("text").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| match (r.get("low"), r.get("high")) {
        (Some(l), Some(h)) => format!("{}–{}", quantity(l), quantity(h)),
        (Some(l), None) => format!("≥ {}", quantity(l)),
        (None, Some(h)) => format!("≤ {}", quantity(h)),
        (None, None) => String::new(),
    });
    (low, high, text)
}

/// The abnormal flag of an Observation: its interpretation code (`H`, `L`, `HH`, `LL`, `A`,
/// `AA`, `N`…), else computed from the reference range (`H`/`L`).
pub fn abnormal_flag(o: &Value) -> Option<String> {
    let interpretation = o.pointer("/interpretation/0/coding/0/code").and_then(Value::as_str);
    if let Some(code) = interpretation {
        return (code != "N").then(|| code.to_string());
    }
    let value = o.get("valueQuantity").and_then(number)?;
    let (low, high, _) = reference_range(o);
    if low.is_some_and(|l| value < l) {
        Some("L".into())
    } else if high.is_some_and(|h| value > h) {
        Some("H".into())
    } else {
        None
    }
}

/// Words for an abnormal flag.
pub fn flag_words(flag: &str) -> &'static str {
    match flag {
        "H" => "High",
        "HH" | "HU" => "Critically high",
        "L" => "Low",
        "LL" | "LU" => "Critically low",
        "A" => "Abnormal",
        "AA" => "Critically abnormal",
        ">" => "Above measurable range",
        "<" => "Below measurable range",
        _ => "Abnormal",
    }
}

/// `Type/id` of a reference.
pub fn reference_id<'a>(reference: Option<&'a Value>, resource_type: &str) -> Option<&'a str> {
    reference?.get("reference")?.as_str()?.strip_prefix(resource_type)?.strip_prefix('/')
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_dates_and_numbers_read_as_people_expect() {
        let p = json!({"name": [{"use": "official", "family": "Smith", "given": ["Jane", "Anne"]}], "identifier": [{"system": tessera_empi::nhs::SYSTEM, "value": "9449305552"}]});
        assert_eq!(person_name(&p), "SMITH, Jane Anne");
        assert_eq!(nhs_number(&p).as_deref(), Some("944 930 5552"));
        assert_eq!(date("2026-12-07T14:05:00Z"), "7 Dec 2026 14:05");
        assert_eq!(date("1980-03"), "Mar 1980");
        assert_eq!(age("1980-12-08", "2026-12-07"), Some(45));
        assert_eq!(age("1980-12-07", "2026-12-07"), Some(46));
    }

    #[test]
    fn abnormal_flags_come_from_interpretation_or_range() {
        let o = json!({"valueQuantity": {"value": 6.1, "unit": "mmol/L"}, "referenceRange": [{"low": {"value": 3.5}, "high": {"value": 5.3}}]});
        assert_eq!(abnormal_flag(&o).as_deref(), Some("H"));
        let o = json!({"valueQuantity": {"value": 4.0}, "interpretation": [{"coding": [{"code": "N"}]}]});
        assert_eq!(abnormal_flag(&o), None);
    }
}
