//! Any bytes: parsed as JSON, then validated as a resource. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = tessera_fhir::validation::validate(&value, &tessera_fhir::validation::Limits::default());
        let _ = tessera_fhir::compartment::patient_compartments(&value);
    }
});
