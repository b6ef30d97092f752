//! Index extraction over Synthea transaction bundles: every entry resource indexes
//! without panicking, with the values expected of Synthea data, and fast.
//!
//! The default test takes the hospital and practitioner bundles and a few patients;
//! `cargo test -p tessera-search --release --test synthea -- --ignored` takes them all and
//! prints the time per resource.

mod common;

use common::{read_json, synthea_files};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tessera_search::{composite_entries, index_resource, IndexValue};

struct Stats {
    resources: usize,
    entries: usize,
    composites: usize,
    time: Duration,
    by_type: BTreeMap<String, (usize, Duration)>,
}

fn index_bundles(files: &[std::path::PathBuf]) -> Stats {
    let mut s = Stats {
        resources: 0,
        entries: 0,
        composites: 0,
        time: Duration::ZERO,
        by_type: BTreeMap::new(),
    };
    for path in files {
        let bundle = read_json(path);
        for entry in bundle["entry"].as_array().expect("a bundle") {
            let resource = &entry["resource"];
            let rt = resource["resourceType"].as_str().unwrap().to_string();
            // The first call for a type compiles its expressions: time a second call.
            let entries = index_resource(resource);
            let start = Instant::now();
            let again = index_resource(resource);
            let spent = start.elapsed();
            assert_eq!(entries, again);
            let composites = composite_entries(resource);
            check(resource, &entries);
            s.resources += 1;
            s.entries += entries.len();
            s.composites += composites.len();
            s.time += spent;
            let t = s.by_type.entry(rt).or_default();
            t.0 += 1;
            t.1 += spent;
        }
    }
    s
}

/// Values every Synthea resource of these types has.
fn check(resource: &Value, entries: &[tessera_search::IndexEntry]) {
    let has = |param: &str| entries.iter().any(|e| e.param == param);
    assert!(has("_id"), "{resource}");
    match resource["resourceType"].as_str().unwrap() {
        "Patient" => {
            assert!(has("family") && has("birthdate") && has("gender") && has("identifier"));
        }
        "Observation" => {
            assert!(has("code") && has("date") && has("status") && has("category"));
            // Synthea subjects are `urn:uuid:` references inside the transaction: unresolved, not indexed.
            let subject = resource["subject"]["reference"].as_str().unwrap_or("");
            if subject.starts_with("urn:uuid:") {
                assert!(!has("subject"));
            }
            if resource.get("valueQuantity").is_some() {
                assert!(entries.iter().any(|e| e.param == "value-quantity"
                    && matches!(
                        &e.value,
                        IndexValue::Quantity {
                            system: Some(_),
                            ..
                        }
                    )));
            }
        }
        "Encounter" => assert!(has("class") && has("type") && has("date")),
        _ => {}
    }
}

fn report(label: &str, s: &Stats) {
    println!(
        "{label}: {} resources, {} entries, {} composite entries, {:.1} µs per resource",
        s.resources,
        s.entries,
        s.composites,
        s.time.as_secs_f64() * 1e6 / s.resources.max(1) as f64
    );
    for (t, (n, d)) in &s.by_type {
        println!(
            "  {t:<28} {n:>6} × {:>7.1} µs",
            d.as_secs_f64() * 1e6 / *n as f64
        );
    }
}

#[test]
fn synthea_sample() {
    let files = synthea_files();
    let sample: Vec<_> = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("Information"))
        .chain(
            files
                .iter()
                .filter(|p| !p.to_string_lossy().contains("Information"))
                .take(3),
        )
        .cloned()
        .collect();
    let s = index_bundles(&sample);
    assert!(s.resources > 500, "{}", s.resources);
    report("sample", &s);
}

#[test]
#[ignore = "every bundle: run with --release -- --ignored"]
fn synthea_all() {
    let s = index_bundles(&synthea_files());
    report("all", &s);
}
