//! Derived parameters (`tessera_search::derived`): evaluated from their own expressions
//! over the official examples and Synthea records, their values are exactly what their
//! derivation gives from the stored parameters.

mod common;

use common::{examples, read_json, synthea_files};
use tessera_fhir::definitions::search_parameters_for;
use tessera_search::{composite_entries, derived, index_resource, Derived, IndexValue};

fn resources() -> Vec<serde_json::Value> {
    let mut out: Vec<serde_json::Value> = examples().into_iter().map(|(_, v)| v).collect();
    for path in synthea_files().iter().take(4) {
        let bundle = read_json(path);
        for e in bundle["entry"].as_array().into_iter().flatten() {
            out.push(e["resource"].clone());
        }
    }
    out
}

#[test]
fn derived_values_equal_their_derivation() {
    let resources = resources();
    let mut checked = 0;
    for r in &resources {
        let Some(t) = r["resourceType"].as_str() else { continue };
        let simple = index_resource(r);
        let composite = composite_entries(r);
        let values = |code: &str| -> Vec<String> {
            let mut v: Vec<String> = simple.iter().filter(|e| e.param == code).map(|e| format!("{:?}", e.value)).collect();
            v.extend(composite.iter().filter(|e| e.param == code).map(|e| format!("{:?}", e.parts)));
            v.sort();
            v.dedup();
            v
        };
        for p in search_parameters_for(t) {
            let Some(d) = derived(t, &p.code) else { continue };
            let own = values(&p.code);
            let mut from: Vec<String> = match d {
                Derived::Union(parts) => parts.iter().flat_map(|q| values(q)).collect(),
                Derived::PatientOf(q) => simple
                    .iter()
                    .filter(|e| e.param == *q)
                    .filter(|e| matches!(&e.value, IndexValue::Reference { target_type: Some(t), .. } if t == "Patient"))
                    .map(|e| format!("{:?}", e.value))
                    .collect(),
            };
            from.sort();
            from.dedup();
            // FHIRPath's `|` drops elements equal to earlier ones, and `1.0` equals `1.00`:
            // the derivation keeps both precisions. Every value of the parameter's own is
            // derived, and the two agree once precision is set aside.
            for v in &own {
                assert!(from.contains(v), "{t}.{}: {v} not derived on {}", p.code, r["id"]);
            }
            let imprecise = |v: &Vec<String>| -> Vec<String> {
                let mut out: Vec<String> = v.iter().map(|s| without_precision(s)).collect();
                out.sort();
                out.dedup();
                out
            };
            assert_eq!(imprecise(&own), imprecise(&from), "{t}.{} on {}", p.code, r["id"]);
            checked += own.len();
        }
    }
    assert!(checked > 1000, "{checked}");
}

/// A value's debug form without the `low`/`high` bounds its precision implies.
fn without_precision(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(", low: ") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 7..];
        let j = after.find(", system").unwrap_or(after.len());
        rest = &after[j..];
    }
    out.push_str(rest);
    out
}

#[test]
fn lists_the_derived_parameters() {
    let all: Vec<String> = tessera_search::all_derived().map(|(t, c, d)| format!("{t}.{c} = {d:?}")).collect();
    println!("{}", all.join("\n"));
    assert!(all.len() > 40);
}
