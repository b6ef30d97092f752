//! Shared test helpers: the shared data folder and JSON loading.
#![allow(dead_code)]

use serde_json::Value;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The shared test data folder (`../shared/data` from the repository root).
pub fn shared_data() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [
        root.join("../shared/data"),
        root.join("shared/data"),
        PathBuf::from("/work/shared/data"),
    ];
    candidates
        .into_iter()
        .find(|p| p.exists())
        .expect("../shared/data is present")
}

/// Reads a `.json` or `.json.bz2` file.
pub fn read_json(path: &Path) -> Value {
    let raw = std::fs::read(path).unwrap();
    let bytes = if path.extension().is_some_and(|e| e == "bz2") {
        let mut out = Vec::new();
        bzip2::read::BzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .unwrap();
        out
    } else {
        raw
    };
    serde_json::from_slice(&bytes).unwrap()
}

/// An official R4 example by file name.
pub fn example(name: &str) -> Value {
    read_json(&shared_data().join("fhir-r4-examples").join(name))
}

/// Every official R4 example.
pub fn examples() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shared_data().join("fhir-r4-examples"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
        .into_iter()
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                read_json(&p),
            )
        })
        .collect()
}

/// The Synthea bundles, sorted by name.
pub fn synthea_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(shared_data().join("synthea"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".json.bz2"))
        .collect();
    files.sort();
    files
}
