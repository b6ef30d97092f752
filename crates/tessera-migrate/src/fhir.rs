//! FHIR extracts: a Bundle or a single Patient (`.json`), and NDJSON (`.ndjson`, one
//! resource a line). Patients are kept as given, except that `id` and `meta` are removed:
//! the migration gives every record its identity in the domain.

use crate::{Options, Record};
use serde_json::Value;

/// The Patient as the migration reads it: `id` and `meta` removed.
fn strip(mut patient: Value) -> Value {
    if let Some(o) = patient.as_object_mut() {
        o.remove("id");
        o.remove("meta");
    }
    patient
}

fn record(source: String, patient: Value, options: &Options) -> Record {
    let patient = strip(patient);
    Record { source, local_id: options.local_id(&patient), patient: Ok(patient) }
}

fn resource_type(v: &Value) -> Option<&str> {
    v.get("resourceType").and_then(Value::as_str)
}

/// A `.json` file: a Bundle gives one record per Patient entry (`name:entry 0`, entries
/// counted from 0 as in the Bundle; other entries are skipped); a Patient gives one record
/// (`name`). Anything else is an error: the file is not an extract.
pub fn read_json(name: &str, text: &str, options: &Options) -> Result<Vec<Record>, String> {
    let value: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
    match resource_type(&value) {
        Some("Bundle") => {
            let entries = value.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
            Ok(entries
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let resource = e.get("resource")?;
                    (resource_type(resource) == Some("Patient")).then(|| record(format!("{name}:entry {i}"), resource.clone(), options))
                })
                .collect())
        }
        Some("Patient") => Ok(vec![record(name.to_string(), value, options)]),
        Some(other) => Err(format!("its resourceType is {other}: a Bundle or a Patient is expected")),
        None => Err("not a FHIR resource (no resourceType): a Bundle or a Patient is expected".to_string()),
    }
}

/// An `.ndjson` file: each Patient line gives a record (`name:line 5`, lines counted from
/// 1); other resources and blank lines are skipped; a line that is not JSON, or not a FHIR
/// resource, gives an invalid record with the reason.
pub fn read_ndjson(name: &str, text: &str, options: &Options) -> Vec<Record> {
    let mut out = Vec::new();
    for (i, line) in text.split('\n').enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let source = format!("{name}:line {}", i + 1);
        match serde_json::from_str::<Value>(line) {
            Err(e) => out.push(Record { source, local_id: None, patient: Err(format!("not JSON: {e}")) }),
            Ok(v) => match resource_type(&v) {
                Some("Patient") => out.push(record(source, v, options)),
                Some(_) => {}
                None => out.push(Record { source, local_id: None, patient: Err("not a FHIR resource (no resourceType)".to_string()) }),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn options() -> Options {
        Options::new("https://example.org/Id/mrn")
    }

    #[test]
    fn bundle_and_patient() {
        let bundle = json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Organization", "id": "o"}},
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"},
                "identifier": [{"system": "other", "value": "x"}, {"system": "https://example.org/Id/mrn", "value": "M1"}], "gender": "female"}},
            {"request": {"method": "DELETE", "url": "Patient/9"}}
        ]});
        let records = read_json("b.json", &bundle.to_string(), &options()).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].source, "b.json:entry 1");
        assert_eq!(records[0].local_id.as_deref(), Some("M1"));
        let p = records[0].patient.as_ref().unwrap();
        assert!(p.get("id").is_none() && p.get("meta").is_none());
        assert_eq!(p["gender"], "female");
        let single = read_json("p.json", r#"{"resourceType": "Patient", "id": "x"}"#, &options()).unwrap();
        assert_eq!(single, vec![Record { source: "p.json".into(), local_id: None, patient: Ok(json!({"resourceType": "Patient"})) }]);
        assert_eq!(read_json("o.json", r#"{"resourceType": "Observation"}"#, &options()).unwrap_err(), "its resourceType is Observation: a Bundle or a Patient is expected");
        assert!(read_json("o.json", "[1]", &options()).unwrap_err().contains("no resourceType"));
        assert!(read_json("o.json", "{", &options()).unwrap_err().starts_with("not JSON"));
        assert!(read_json("e.json", r#"{"resourceType": "Bundle"}"#, &options()).unwrap().is_empty());
    }

    #[test]
    fn ndjson_lines() {
        let text = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\r\n\n{\"resourceType\":\"Observation\"}\nnot json\n{\"x\":1}\n";
        let records = read_ndjson("p.ndjson", text, &options());
        assert_eq!(records.iter().map(|r| r.source.as_str()).collect::<Vec<_>>(), ["p.ndjson:line 1", "p.ndjson:line 4", "p.ndjson:line 5"]);
        assert!(records[0].patient.is_ok());
        assert!(records[1].patient.as_ref().unwrap_err().starts_with("not JSON"));
        assert!(records[2].patient.as_ref().unwrap_err().contains("no resourceType"));
    }
}
