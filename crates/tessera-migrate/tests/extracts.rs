//! Reading the fixture extracts (`tests/fixtures`), a folder of them, gzip, and the shared
//! test data (Synthea bundles and HL7 v2 samples) when it is there.

use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use tessera_migrate::{files, has_empty, read_path, Options, ReadError, Record};

const MRN: &str = "https://rxx.example.nhs.uk/Id/mrn";
const MR: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn shared(folder: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(folder);
    if dir.is_dir() {
        Some(dir)
    } else {
        println!("note: {} does not exist; skipped", dir.display());
        None
    }
}

fn options() -> Options {
    let mut o = Options::new(MRN);
    o.authorities.insert("RXX".into(), MRN.into());
    o
}

fn read(name: &str) -> Vec<Record> {
    read_path(&fixtures().join(name), &options()).unwrap()
}

fn sources(records: &[Record]) -> Vec<&str> {
    records.iter().map(|r| r.source.as_str()).collect()
}

fn valid(records: &[Record]) {
    for r in records {
        if let Ok(p) = &r.patient {
            assert_eq!(p["resourceType"], "Patient", "{}", r.source);
            assert!(!has_empty(p), "{}: {p}", r.source);
            assert!(p.get("id").is_none() && p.get("meta").is_none(), "{}", r.source);
        }
    }
}

#[test]
fn pas_csv() {
    let records = read("pas.csv");
    valid(&records);
    assert_eq!(sources(&records), ["pas.csv:2", "pas.csv:3", "pas.csv:4", "pas.csv:5", "pas.csv:6", "pas.csv:7"]);
    assert_eq!(records[0].local_id.as_deref(), Some("RXX100001"));
    assert_eq!(
        records[0].patient,
        Ok(json!({
            "resourceType": "Patient",
            "identifier": [
                {"type": {"coding": [{"system": MR, "code": "MR"}]}, "system": MRN, "value": "RXX100001"},
                {"system": NHS, "value": "9434765919"}
            ],
            "name": [
                {"use": "official", "family": "Smith", "given": ["Jane", "Ann"], "prefix": ["Mrs"]},
                {"use": "maiden", "family": "Jones", "given": ["Jane", "Ann"]}
            ],
            "telecom": [
                {"system": "phone", "value": "0113 496 0000", "use": "home"},
                {"system": "phone", "value": "07700 900123", "use": "mobile"},
                {"system": "email", "value": "jane.smith@example.org"}
            ],
            "gender": "female",
            "birthDate": "1980-05-17",
            "address": [{"use": "home", "line": ["Flat 2, Rose Court", "12 High Street"], "city": "Leeds", "district": "West Yorkshire", "postalCode": "LS1 1AA"}],
            "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "B86001"}}]
        }))
    );
    let tom = records[1].patient.as_ref().unwrap();
    assert_eq!(tom["deceasedDateTime"], "2023-11-02");
    assert_eq!(tom["birthDate"], "1975-01-31");
    assert_eq!(tom["telecom"], json!([{"system": "phone", "value": "0113 496 0999", "use": "work"}]));
    assert_eq!(tom["name"], json!([{"use": "official", "family": "Brown", "given": ["Tom"], "prefix": ["Mr"]}]));
    assert_eq!(records[2].patient, Err("line 4: no MRN (column 'MRN' is empty)".into()));
    assert_eq!(records[2].local_id, None);
    assert!(records[3].patient.as_ref().unwrap_err().starts_with("line 5: Date of Birth: '31/02/1980' is not a date"));
    assert_eq!(records[3].local_id.as_deref(), Some("RXX100004"));
    assert_eq!(records[4].patient, Err("line 6: 3 cells where the header has 22".into()));
    assert_eq!(
        records[5].patient,
        Ok(json!({"resourceType": "Patient", "identifier": [{"type": {"coding": [{"system": MR, "code": "MR"}]}, "system": MRN, "value": "RXX100006"}]}))
    );
}

#[test]
fn hl7_batch() {
    let records = read("adt.hl7");
    valid(&records);
    assert_eq!(sources(&records), ["adt.hl7:message 1 (MSG00001)", "adt.hl7:message 2 (MSG00002)", "adt.hl7:message 3 (MSG00003)"]);
    assert_eq!(records.iter().map(|r| r.local_id.as_deref()).collect::<Vec<_>>(), [Some("RXX200001"), Some("RXX200001"), Some("RXX200002")]);
    assert_eq!(
        records[0].patient,
        Ok(json!({
            "resourceType": "Patient",
            "identifier": [
                {"type": {"coding": [{"system": MR, "code": "MR"}]}, "system": MRN, "value": "RXX200001"},
                {"type": {"coding": [{"system": MR, "code": "NH"}]}, "system": NHS, "value": "9434765919"}
            ],
            "name": [{"use": "official", "family": "PATEL", "given": ["ASHA", "R"], "prefix": ["MS"]}],
            "telecom": [{"system": "phone", "value": "01274 000111", "use": "home"}, {"system": "email", "value": "asha@example.org", "use": "home"}],
            "gender": "female",
            "birthDate": "1962-03-20",
            "address": [{"use": "home", "line": ["22 Park Road"], "city": "Bradford", "postalCode": "BD1 2CD", "country": "GBR"}]
        }))
    );
    assert_eq!(records[1].patient, Err("ORU^R01 is not an ADT message: migration reads patient registrations".into()));
    let sean = records[2].patient.as_ref().unwrap();
    assert_eq!(sean["name"][0]["family"], "O'NEILL");
    assert_eq!(sean["address"][0]["line"], json!(["Rose & Crown Yard"]));
    assert_eq!(sean["deceasedDateTime"], "2023-12-24");
    assert_eq!(sean["identifier"][1], json!({"system": MRN, "value": "OLD-77"}));
}

#[test]
fn bundle_and_ndjson() {
    let records = read("bundle.json");
    valid(&records);
    assert_eq!(sources(&records), ["bundle.json:entry 0", "bundle.json:entry 2"]);
    assert_eq!(records[0].local_id.as_deref(), Some("RXX300001"));
    assert_eq!(records[1].local_id, None);
    assert_eq!(records[1].patient, Ok(json!({"resourceType": "Patient", "name": [{"family": "Nowak", "given": ["Ewa"]}], "gender": "female"})));
    let records = read("patients.ndjson");
    valid(&records);
    assert_eq!(sources(&records), ["patients.ndjson:line 1", "patients.ndjson:line 4", "patients.ndjson:line 5"]);
    assert_eq!(records[0].local_id.as_deref(), Some("RXX400001"));
    assert_eq!(records[1].patient, Ok(json!({"resourceType": "Patient", "name": [{"family": "Hughes", "given": ["Mair"]}]})));
    assert!(records[2].patient.as_ref().unwrap_err().starts_with("not JSON"));
}

#[test]
fn folder_and_gzip() {
    let dir = fixtures();
    let listed: Vec<String> = files(&dir).unwrap().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(listed, ["adt.hl7", "bundle.json", "pas.csv", "patients.ndjson"]);
    let all = read_path(&dir, &options()).unwrap();
    assert_eq!(all.len(), 3 + 2 + 6 + 3);
    assert_eq!(all[0].source, "adt.hl7:message 1 (MSG00001)");

    let tmp = tempfile::tempdir().unwrap();
    let nested = tmp.path().join("2019/pas");
    std::fs::create_dir_all(&nested).unwrap();
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(nested.join("PAS.CSV.GZ")).unwrap(), flate2::Compression::default());
    gz.write_all(&std::fs::read(dir.join("pas.csv")).unwrap()).unwrap();
    gz.finish().unwrap();
    std::fs::write(tmp.path().join("notes.docx"), "not an extract").unwrap();
    std::fs::write(tmp.path().join(".hidden.csv"), "not read").unwrap();
    let records = read_path(tmp.path(), &options()).unwrap();
    let plain = read("pas.csv");
    assert_eq!(records.len(), plain.len());
    assert_eq!(records[0].source, "2019/pas/PAS.CSV.GZ:2");
    assert!(records.iter().zip(&plain).all(|(a, b)| a.patient == b.patient && a.local_id == b.local_id));

    let named = read_path(&tmp.path().join("notes.docx"), &options()).unwrap_err();
    assert!(matches!(named, ReadError::Format { .. }));
    assert!(named.to_string().contains("unknown extension"), "{named}");
    assert!(matches!(read_path(&tmp.path().join("missing.csv"), &options()).unwrap_err(), ReadError::Io { .. }));
    std::fs::write(tmp.path().join("obs.json"), r#"{"resourceType": "Observation"}"#).unwrap();
    let e = read_path(tmp.path(), &options()).unwrap_err();
    assert!(e.to_string().contains("obs.json") && e.to_string().contains("Observation"), "{e}");
    std::fs::write(tmp.path().join("obs.json"), b"\xff\xfe{}").unwrap();
    assert!(read_path(&tmp.path().join("obs.json"), &options()).unwrap_err().to_string().contains("not UTF-8"));
    std::fs::write(tmp.path().join("bad.csv.gz"), "plain text").unwrap();
    assert!(read_path(&tmp.path().join("bad.csv.gz"), &options()).unwrap_err().to_string().contains("not gzip"));
}

#[test]
fn synthea_bundle() {
    let Some(dir) = shared("synthea") else { return };
    let mut bundles: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy();
            n.ends_with(".json.bz2") && !n.contains("Information")
        })
        .collect();
    bundles.sort();
    let first = bundles.first().expect("a Synthea patient bundle");
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut bzip2::read::BzDecoder::new(std::fs::File::open(first).unwrap()), &mut text).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let json = tmp.path().join("synthea.json");
    std::fs::write(&json, &text).unwrap();
    let records = read_path(&json, &options()).unwrap();
    assert_eq!(records.len(), 1, "{}", first.display());
    let p = records[0].patient.as_ref().unwrap();
    assert_eq!(p["resourceType"], "Patient");
    assert!(p.get("id").is_none() && p.get("meta").is_none());
    assert!(records[0].source.starts_with("synthea.json:entry "));
    let original: Value = serde_json::from_slice(&text).unwrap();
    let n: usize = records[0].source.rsplit(' ').next().unwrap().parse().unwrap();
    assert_eq!(original["entry"][n]["resource"]["name"], p["name"]);
}

#[test]
fn hl7_samples() {
    let Some(dir) = shared("hl7v2") else { return };
    let records = read_path(&dir, &options()).unwrap();
    valid(&records);
    assert_eq!(records.len(), files(&dir).unwrap().len());
    let ok = records.iter().filter(|r| r.patient.is_ok()).count();
    assert!(ok >= 25, "{ok} patients");
    for r in &records {
        let file = r.source.split(':').next().unwrap();
        match &r.patient {
            Ok(_) => assert!(Path::new(file).file_name().is_some()),
            Err(e) => assert!(e.contains("is not an ADT message") || e.contains("no PID"), "{}: {e}", r.source),
        }
    }
}
