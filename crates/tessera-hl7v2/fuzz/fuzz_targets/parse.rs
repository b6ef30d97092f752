//! Any UTF-8 text as an HL7 file: splitting it into messages, parsing each, writing it
//! back and mapping its PID must never panic; what parses must read back the same after
//! encoding, and a Patient must have no empty strings, arrays or objects.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera_hl7v2::patient::{patient_from_pid, IdentifierMap};
use tessera_hl7v2::{batch_messages, split_batch, Message, Visit};

fn has_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty() || a.iter().any(has_empty),
        Value::Object(o) => o.is_empty() || o.values().any(has_empty),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let map = IdentifierMap::new("https://example.org/Id/mrn");
    let _ = split_batch(text);
    for msg in batch_messages(text).into_iter().flatten() {
        assert_eq!(Message::parse(&msg.encode()).as_ref(), Ok(&msg));
        let _ = Visit::from_message(&msg);
        if let Ok(patient) = patient_from_pid(&msg, &map) {
            assert!(!has_empty(&patient), "{patient}");
        }
    }
});
