//! Shared test data access (`../shared/data` next to the workspace, as in CI).

#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

pub fn data_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(name)
}

fn files(dir: &str, suffix: &str) -> Vec<PathBuf> {
    let dir = data_dir(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    files.sort();
    files
}

/// The official R4 examples: (file name, resource).
pub fn official_examples() -> Vec<(String, Value)> {
    files("fhir-r4-examples", ".json")
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_str(&text).unwrap())
        })
        .collect()
}

/// The Synthea bundles: (file name, bundle), decompressed with `bzcat`.
pub fn synthea_bundles() -> Vec<(String, Value)> {
    files("synthea", ".json.bz2")
        .into_iter()
        .map(|p| {
            let out = Command::new("bzcat").arg(&p).output().expect("bzcat");
            assert!(out.status.success(), "bzcat {}", p.display());
            (p.file_name().unwrap().to_string_lossy().into_owned(), serde_json::from_slice(&out.stdout).unwrap())
        })
        .collect()
}

/// The resources of a bundle's entries.
pub fn entry_resources(bundle: &Value) -> impl Iterator<Item = &Value> {
    bundle["entry"].as_array().into_iter().flatten().filter_map(|e| e.get("resource"))
}
