//! Any text as a search query string (`name=value&…`), parsed for a few resource types in
//! strict and lenient mode, and any JSON object indexed. Must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(s.as_bytes()).into_owned().collect();
    for ty in [Some("Observation"), Some("Patient"), Some("Location"), None] {
        let _ = tessera_search::query::parse(ty, &pairs, true);
        let _ = tessera_search::query::parse(ty, &pairs, false);
    }
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(s) {
        let _ = tessera_search::index_all(&v);
    }
});
