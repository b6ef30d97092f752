//! Any UTF-8 text as a legacy extract — a PAS CSV, NDJSON, a FHIR JSON file, an HL7 v2
//! file: reading it must never panic, and every Patient a reader accepts must have no
//! empty strings, arrays or objects.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tessera_migrate::{fhir, has_empty, hl7, pas, Options, Record};

fn check(records: &[Record]) {
    for r in records {
        if let Ok(p) = &r.patient {
            assert_eq!(p["resourceType"], "Patient");
            assert!(!has_empty(p), "{p}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let options = Options::new("https://example.org/Id/mrn");
    if let Ok(records) = pas::read_csv("x.csv", text, &options) {
        check(&records);
    }
    check(&fhir::read_ndjson("x.ndjson", text, &options));
    if let Ok(records) = fhir::read_json("x.json", text, &options) {
        check(&records);
    }
    check(&hl7::read_hl7("x.hl7", text, &options));
});
