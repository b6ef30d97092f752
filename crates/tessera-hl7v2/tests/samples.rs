//! Every sample message in the shared test data (`../shared/data/hl7v2`) parses, and every
//! ADT message with a PID gives a valid Patient.

use serde_json::Value;
use std::path::PathBuf;
use tessera_hl7v2::patient::{patient_from_pid, IdentifierMap};
use tessera_hl7v2::{split_batch, Message, Visit};

fn samples() -> Option<Vec<PathBuf>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/hl7v2");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        println!("note: {} does not exist; the sample message tests are skipped", dir.display());
        return None;
    };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    Some(files)
}

/// Panics at the first empty string, array or object (FHIR forbids them).
fn assert_no_empty(v: &Value, path: &str) {
    match v {
        Value::String(s) => assert!(!s.trim().is_empty(), "empty string at {path}"),
        Value::Array(a) => {
            assert!(!a.is_empty(), "empty array at {path}");
            a.iter().enumerate().for_each(|(i, x)| assert_no_empty(x, &format!("{path}[{i}]")));
        }
        Value::Object(o) => {
            assert!(!o.is_empty(), "empty object at {path}");
            o.iter().for_each(|(k, x)| assert_no_empty(x, &format!("{path}.{k}")));
        }
        _ => {}
    }
}

#[test]
fn every_sample_parses() {
    let Some(files) = samples() else { return };
    assert!(files.len() >= 70, "{} sample files", files.len());
    let map = IdentifierMap::new("https://example.org/Id/mrn");
    let mut patients = 0;
    for path in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        let msg = Message::parse(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(split_batch(&text).unwrap_or_else(|e| panic!("{name}: {e}")), vec![msg.clone()], "{name}");
        assert_eq!(Message::parse(&msg.encode()).unwrap(), msg, "{name}: encode and parse again");
        let kind = msg.message_type().unwrap_or_else(|| panic!("{name}: no MSH-9"));
        assert!(msg.control_id().is_some(), "{name}: no MSH-10");
        assert!(msg.version().is_some_and(|v| v.starts_with('2')), "{name}: version {:?}", msg.version());
        let _ = Visit::from_message(&msg);
        if kind.code == "ADT" && msg.segment("PID").is_some() {
            let patient = patient_from_pid(&msg, &map).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(patient["resourceType"], "Patient", "{name}");
            assert!(patient.get("id").is_none(), "{name}");
            assert_no_empty(&patient, &name);
            patients += 1;
        }
    }
    assert!(patients >= 25, "{patients} ADT patients");
}

#[test]
fn a01_sample_mapping() {
    let Some(files) = samples() else { return };
    let path = files.iter().find(|p| p.ends_with("ADT-A01-01.hl7")).expect("ADT-A01-01.hl7");
    let msg = Message::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
    let p = patient_from_pid(&msg, &IdentifierMap::new("https://example.org/Id/mrn")).unwrap();
    assert_eq!(p["gender"], "male");
    assert_eq!(p["birthDate"], "1988-08-18");
    assert_eq!(p["deceasedDateTime"], "2008-08-25T11:16:30+01:15");
    assert_eq!(p["name"][0]["family"], "EVERYMAN");
    assert_eq!(p["name"][0]["given"], serde_json::json!(["ADAM", "A"]));
    assert_eq!(p["name"][0]["use"], "usual");
    // 123456789^^^USSSA^SS is a social security number: not copied.
    assert!(!p["identifier"].as_array().unwrap().iter().any(|i| i["value"] == "123456789"));
    assert_eq!(p["identifier"][0]["value"], "PATID1234");
    assert_eq!(p["address"][0]["city"], "Ann Arbor");
    assert_eq!(p["address"][0]["type"], "postal");
    let visit = Visit::from_message(&msg).unwrap();
    assert_eq!(visit.patient_class.as_deref(), Some("P"));
    assert_eq!(visit.attending[0].family.as_deref(), Some("Alaz"));
}
