//! Derives the compact terminology file shipped in `definitions/terminology.json.gz` from
//! the official FHIR R4 (4.0.1) `valuesets.json` bundle (R4's CodeSystems and ValueSets).
//!
//! ```text
//! cargo run -p tessera-fhir --bin tessera-gen-terminology -- <dir> [output]
//! ```
//!
//! `<dir>` holds `valuesets.json.gz`. Each CodeSystem and ValueSet is kept as a trimmed FHIR
//! resource of the same shape (so that one parser, `tessera_fhir::terminology`, reads both
//! the shipped ones and those stored on the server): identity (`id`, `url`, `version`,
//! `name`, `title`, `status`), for a CodeSystem `content`, `caseSensitive`,
//! `hierarchyMeaning`, the property declarations and the concepts (code, display,
//! designations, properties, nested concepts — definitions, narrative and extensions are
//! dropped), for a ValueSet its `compose`. The output is byte-for-byte reproducible.

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

const FHIR_VERSION: &str = "4.0.1";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: tessera-gen-terminology <fhir-r4-definitions dir> [output.json.gz]");
        return ExitCode::from(2);
    };
    let out = args
        .get(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions").join("terminology.json.gz"));
    match run(Path::new(dir), &out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, out: &Path) -> Result<()> {
    let path = dir.join("valuesets.json.gz");
    let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    GzDecoder::new(file).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    let bundle: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut code_systems = Vec::new();
    let mut value_sets = Vec::new();
    for entry in bundle["entry"].as_array().ok_or("valuesets.json is not a Bundle with entries")? {
        let r = &entry["resource"];
        match r["resourceType"].as_str() {
            Some("CodeSystem") => code_systems.push(code_system(r)?),
            Some("ValueSet") => value_sets.push(value_set(r)?),
            other => eprintln!("skipped a {} entry", other.unwrap_or("(untyped)")),
        }
    }
    let concepts: usize = code_systems.iter().map(|c| count(&c["concept"])).sum();
    let file = json!({"fhirVersion": FHIR_VERSION, "codeSystems": code_systems, "valueSets": value_sets});
    let json = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
    // A fixed header (no file name, mtime 0) keeps the output reproducible.
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(&json).map_err(|e| e.to_string())?;
    let bytes = gz.finish().map_err(|e| e.to_string())?;
    std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "wrote {} ({} bytes, {} uncompressed): {} code systems ({concepts} concepts), {} value sets",
        out.display(),
        bytes.len(),
        json.len(),
        file["codeSystems"].as_array().map_or(0, Vec::len),
        file["valueSets"].as_array().map_or(0, Vec::len),
    );
    Ok(())
}

fn count(concepts: &Value) -> usize {
    concepts.as_array().into_iter().flatten().map(|c| 1 + count(&c["concept"])).sum()
}

/// The members `keys` of `from`, in that order, when present.
fn pick(from: &Value, keys: &[&str]) -> Map<String, Value> {
    keys.iter().filter_map(|k| from.get(*k).map(|v| (k.to_string(), v.clone()))).collect()
}

fn code_system(r: &Value) -> Result<Value> {
    let url = r["url"].as_str().ok_or("CodeSystem without url")?;
    let mut out = pick(r, &["resourceType", "id", "url", "version", "name", "title", "status", "content", "caseSensitive", "hierarchyMeaning", "valueSet"]);
    let properties: Vec<Value> = r["property"].as_array().into_iter().flatten().map(|p| Value::Object(pick(p, &["code", "uri", "type"]))).collect();
    if !properties.is_empty() {
        out.insert("property".into(), Value::Array(properties));
    }
    let concepts = concepts(&r["concept"]).map_err(|e| format!("CodeSystem {url}: {e}"))?;
    if !concepts.is_empty() {
        out.insert("concept".into(), Value::Array(concepts));
    }
    Ok(Value::Object(out))
}

fn concepts(list: &Value) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for c in list.as_array().into_iter().flatten() {
        if c["code"].as_str().is_none() {
            return Err("a concept without code".into());
        }
        let mut o = pick(c, &["code", "display"]);
        let designations: Vec<Value> = c["designation"].as_array().into_iter().flatten().map(|d| Value::Object(pick(d, &["language", "use", "value"]))).collect();
        if !designations.is_empty() {
            o.insert("designation".into(), Value::Array(designations));
        }
        let properties: Vec<Value> = c["property"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| Value::Object(p.as_object().map(|m| m.iter().filter(|(k, _)| *k == "code" || k.starts_with("value")).map(|(k, v)| (k.clone(), v.clone())).collect()).unwrap_or_default()))
            .collect();
        if !properties.is_empty() {
            o.insert("property".into(), Value::Array(properties));
        }
        let nested = concepts(&c["concept"])?;
        if !nested.is_empty() {
            o.insert("concept".into(), Value::Array(nested));
        }
        out.push(Value::Object(o));
    }
    Ok(out)
}

fn value_set(r: &Value) -> Result<Value> {
    r["url"].as_str().ok_or("ValueSet without url")?;
    let mut out = pick(r, &["resourceType", "id", "url", "version", "name", "title", "status"]);
    if let Some(compose) = r.get("compose") {
        let mut c = pick(compose, &["inactive"]);
        for part in ["include", "exclude"] {
            let rules: Vec<Value> = compose[part].as_array().into_iter().flatten().map(rule).collect();
            if !rules.is_empty() {
                c.insert(part.into(), Value::Array(rules));
            }
        }
        out.insert("compose".into(), Value::Object(c));
    }
    Ok(Value::Object(out))
}

fn rule(r: &Value) -> Value {
    let mut out = pick(r, &["system", "version"]);
    let concepts: Vec<Value> = r["concept"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            let mut o = pick(c, &["code", "display"]);
            let designations: Vec<Value> = c["designation"].as_array().into_iter().flatten().map(|d| Value::Object(pick(d, &["language", "use", "value"]))).collect();
            if !designations.is_empty() {
                o.insert("designation".into(), Value::Array(designations));
            }
            Value::Object(o)
        })
        .collect();
    if !concepts.is_empty() {
        out.insert("concept".into(), Value::Array(concepts));
    }
    let filters: Vec<Value> = r["filter"].as_array().into_iter().flatten().map(|f| Value::Object(pick(f, &["property", "op", "value"]))).collect();
    if !filters.is_empty() {
        out.insert("filter".into(), Value::Array(filters));
    }
    if let Some(vs) = r.get("valueSet") {
        out.insert("valueSet".into(), vs.clone());
    }
    Value::Object(out)
}
