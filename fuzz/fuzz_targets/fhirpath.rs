//! Any text as a FHIRPath expression, parsed and evaluated on an Observation. Must never
//! panic (errors are values).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let Ok(expr) = tessera_fhirpath::Expression::parse(s) else { return };
    let obs = serde_json::json!({
        "resourceType": "Observation", "id": "f", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2020-01-02T03:04:05Z",
        "valueQuantity": {"value": 72.5, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
        "component": [{"code": {"text": "x"}, "valueString": "y"}]
    });
    let _ = expr.evaluate(&obs, &tessera_fhirpath::Context::new());
});
