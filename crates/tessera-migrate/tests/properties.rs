//! Legacy extracts are hostile input: whatever the text, the readers answer records or an
//! error, never a panic, and every record they accept is a Patient without empty values.

use proptest::prelude::*;
use tessera_migrate::{fhir, has_empty, hl7, pas, Options};

fn options() -> Options {
    Options::new("https://fhir.rxx.nhs.example/Id/mrn")
}

fn check(records: &[tessera_migrate::Record]) {
    for r in records {
        if let Ok(p) = &r.patient {
            assert_eq!(p["resourceType"], "Patient", "{p}");
            assert!(!has_empty(p), "no empty strings, arrays or objects: {p}");
        }
    }
}

/// CSV-ish text: cells drawn from awkward values, quotes and separators included.
fn csv_text() -> impl Strategy<Value = String> {
    let cell = prop_oneof![
        Just(String::new()),
        "[A-Za-z ,'\"-]{0,12}",
        "[0-9/ -]{0,12}",
        Just("31/02/1980".to_string()),
        Just("943 476 5919".to_string()),
        Just("\"a, quoted\"\"cell\"".to_string()),
    ];
    let row = proptest::collection::vec(cell, 0..8).prop_map(|c| c.join(","));
    let header = proptest::sample::subsequence(
        vec!["MRN", "NHS Number", "Forename", "Surname", "Sex", "Date of Birth", "Postcode", "Phone Home", "Email", "Title", "Previous Surname"],
        0..11,
    )
    .prop_map(|h| h.join(","));
    (header, proptest::collection::vec(row, 0..6)).prop_map(|(h, rows)| format!("{h}\n{}", rows.join("\n")))
}

proptest! {
    #[test]
    fn csv_never_panics(text in csv_text()) {
        if let Ok(records) = pas::read_csv("x.csv", &text, &options()) {
            check(&records);
        }
    }

    #[test]
    fn any_text_never_panics(text in "\\PC{0,300}") {
        let _ = pas::read_csv("x.csv", &text, &options());
        check(&fhir::read_ndjson("x.ndjson", &text, &options()));
        let _ = fhir::read_json("x.json", &text, &options());
        check(&hl7::read_hl7("x.hl7", &text, &options()));
    }

    #[test]
    fn adt_like_text_never_panics(pid in "[A-Za-z0-9^~&|\\\\ .-]{0,80}", dob in "[0-9]{0,14}", sex in "[MFUOAN]?") {
        let text = format!("MSH|^~\\&|PAS|RXX|EPR|RXX|20240101||ADT^A04|1|P|2.4\rPID|1||{pid}||Doe^Jane||{dob}|{sex}\r");
        check(&hl7::read_hl7("x.hl7", &text, &options()));
    }
}
