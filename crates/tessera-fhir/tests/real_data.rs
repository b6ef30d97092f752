//! Validation and compartments on real data: the official R4 examples and Synthea.

mod common;

use tessera_fhir::validation::{validate, Limits};
use tessera_fhir::IssueType;

/// Official R4 examples whose references point at a type the element does not allow (errata
/// in the examples, not in the definitions): file, element, and what R4 allows there.
const REFERENCE_ERRATA: [(&str, &str, &str); 3] = [
    ("devicemetric-example.json", "DeviceMetric.parent", "Reference(Device), the example names a DeviceDefinition"),
    ("deviceusestatement-example.json", "DeviceUseStatement.reasonReference[0]", "Reference(Condition|Observation|DiagnosticReport|DocumentReference|Media), the example names a Procedure"),
    ("medicationrequest0301.json", "MedicationRequest.dispenseRequest.performer", "Reference(Organization), the example names a Practitioner"),
];

#[test]
fn official_examples_validate() {
    let mut failures = Vec::new();
    let examples = common::official_examples();
    assert_eq!(examples.len(), 72);
    for (name, resource) in &examples {
        if name == "bundle-questionnaire.json" {
            // This official example (a Questionnaire generated from the Bundle definition)
            // is itself invalid: its `display` items have no `linkId`, which is 1..1 in R4
            // (Questionnaire.item.linkId). Those are the only issues it may have.
            let issues = validate(resource, &Limits::default()).unwrap_err();
            assert!(!issues.is_empty());
            for i in &issues {
                assert_eq!(i.code, IssueType::Required, "{i:?}");
                assert_eq!(i.diagnostics, "missing required element 'linkId'");
                assert!(i.expression[0].starts_with("Questionnaire.item[0].item[") && i.expression[0].ends_with("].linkId"), "{i:?}");
            }
            continue;
        }
        if let Some((_, expression, _)) = REFERENCE_ERRATA.iter().find(|(file, _, _)| file == name) {
            // A reference to a type its element does not allow: the only issue it may have.
            let issues = validate(resource, &Limits::default()).unwrap_err();
            assert_eq!(issues.len(), 1, "{name}: {issues:?}");
            assert_eq!(issues[0].code, IssueType::Value, "{name}: {issues:?}");
            assert_eq!(issues[0].expression, [*expression], "{name}");
            continue;
        }
        if let Err(issues) = validate(resource, &Limits::default()) {
            for i in issues {
                failures.push(format!("{name}: {} {:?} {}", i.code.code(), i.expression, i.diagnostics));
            }
        }
    }
    assert!(failures.is_empty(), "{} issues:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn synthea_validates() {
    let mut failures = Vec::new();
    let mut count = 0;
    for (name, bundle) in common::synthea_bundles() {
        // The transaction bundle as a whole, and each entry's resource on its own.
        if let Err(issues) = validate(&bundle, &Limits::default()) {
            failures.extend(issues.into_iter().map(|i| format!("{name}: {:?} {}", i.expression, i.diagnostics)));
        }
        for resource in common::entry_resources(&bundle) {
            count += 1;
            if let Err(issues) = validate(resource, &Limits::default()) {
                failures.extend(issues.into_iter().map(|i| format!("{name}: {:?} {}", i.expression, i.diagnostics)));
            }
        }
    }
    assert!(count > 60_000, "{count} resources");
    failures.truncate(50);
    assert!(failures.is_empty(), "issues:\n{}", failures.join("\n"));
}

/// As a transaction does, rewrite `urn:uuid:` references to the ids of the entries they
/// name; then every Synthea Encounter is in its patient's compartment.
#[test]
fn synthea_encounter_compartment() {
    use tessera_fhir::compartment::patient_compartments;
    use tessera_fhir::reference::for_each_reference_mut;

    let (_, mut bundle) = common::synthea_bundles().into_iter().find(|(name, _)| name.starts_with("057aa36e")).unwrap();
    let mut local_ids = std::collections::HashMap::new();
    for entry in bundle["entry"].as_array().unwrap() {
        let r = &entry["resource"];
        let full_url = entry["fullUrl"].as_str().unwrap().to_string();
        local_ids.insert(full_url, format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap()));
    }
    for_each_reference_mut(&mut bundle, &mut |r| {
        if let Some(local) = local_ids.get(r.as_str()) {
            *r = local.clone();
        }
    });
    let entries = bundle["entry"].as_array().unwrap();
    let patient = &entries[0]["resource"];
    assert_eq!(patient["resourceType"], "Patient");
    let patient_id = patient["id"].as_str().unwrap();
    assert_eq!(patient_compartments(patient), [patient_id]);
    let encounters: Vec<_> = entries.iter().map(|e| &e["resource"]).filter(|r| r["resourceType"] == "Encounter").collect();
    assert!(!encounters.is_empty());
    for encounter in encounters {
        assert_eq!(patient_compartments(encounter), [patient_id]);
    }
}

#[test]
fn synthea_practitioners_are_in_no_compartment() {
    let (_, bundle) = common::synthea_bundles().into_iter().find(|(name, _)| name.contains("practitionerInformation")).unwrap();
    let practitioners: Vec<_> = common::entry_resources(&bundle).filter(|r| r["resourceType"] == "Practitioner").collect();
    assert!(!practitioners.is_empty());
    for p in practitioners {
        assert!(tessera_fhir::compartment::patient_compartments(p).is_empty());
    }
}

/// Validation throughput on all Synthea resources:
/// `cargo test -p tessera-fhir --release -- --ignored --nocapture`
#[test]
#[ignore]
fn synthea_validation_throughput() {
    let bundles = common::synthea_bundles();
    let resources: Vec<_> = bundles.iter().flat_map(|(_, b)| common::entry_resources(b)).collect();
    let limits = Limits::default();
    // Warm up (loads the definitions).
    assert!(validate(resources[0], &limits).is_ok());
    let rounds = 3;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        for r in &resources {
            assert!(validate(r, &limits).is_ok());
        }
    }
    let elapsed = start.elapsed();
    let n = resources.len() * rounds;
    println!("validated {n} Synthea resources in {:.2?} on one thread: {:.0} resources/s", elapsed, n as f64 / elapsed.as_secs_f64());
}
