//! Any text as a conditional-operation query string. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = tessera_engine::criteria::parse("Patient", s);
        let _ = tessera_engine::criteria::split_conditional_reference(s);
        let _ = tessera_fhir::reference::parse_relative(s);
    }
});
