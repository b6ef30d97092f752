//! Derives the compact definitions table shipped in `definitions/r4.json.gz` from the
//! official FHIR R4 (4.0.1) definition bundles.
//!
//! ```text
//! cargo run -p tessera-fhir --bin tessera-gen-definitions -- <dir> [output]
//! ```
//!
//! `<dir>` holds `profiles-types.json.gz`, `profiles-resources.json.gz`,
//! `search-parameters.json.gz`, `compartmentdefinition-patient.json.gz` and `valuesets.json.gz`.
//!
//! Element tables are built from each StructureDefinition's *differential* (the elements
//! the definition itself introduces) plus the elements inherited along `baseDefinition`
//! (`Resource` → `DomainResource` → `Patient`, `Element` → `BackboneElement` → `Dosage`, …).
//! The differential is the authoritative statement of what R4 defines; some
//! redistributions add non-R4 elements to the snapshots only, and those are ignored
//! (and listed on stderr). Definitions and search parameters that do not declare
//! version 4.0.1 are skipped for the same reason.
//!
//! The same run records, per element, its terminology binding, the allowed target types
//! of its References and its FHIRPath invariants (`constraint`), and writes
//! `definitions/bindings.json.gz`: the value sets of the recorded bindings that can be
//! expanded from `valuesets.json.gz` (see `definitions/README.md`).

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use tessera_fhir::definitions::format::*;

const FHIR_VERSION: &str = "4.0.1";
const SYSTEM_STRING: &str = "http://hl7.org/fhirpath/System.String";
const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const REGEX_EXT: &str = "http://hl7.org/fhir/StructureDefinition/regex";

type Result<T> = std::result::Result<T, String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(dir) = args.first() else {
        eprintln!("usage: tessera-gen-definitions <fhir-r4-definitions dir> [output.json.gz]");
        return ExitCode::from(2);
    };
    let out =
        args.get(1).map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("definitions").join("r4.json.gz"));
    let bindings_out = out.with_file_name("bindings.json.gz");
    match run(Path::new(dir), &out).and_then(|file| value_sets(Path::new(dir), &file, &bindings_out)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(dir: &Path, out: &Path) -> Result<DefinitionsFile> {
    let mut structure_definitions = BTreeMap::new();
    for file in ["profiles-types.json.gz", "profiles-resources.json.gz"] {
        for sd in bundle_resources(&read_gz_json(&dir.join(file))?) {
            if str_at(&sd, "resourceType") != Some("StructureDefinition") {
                continue;
            }
            let name = str_at(&sd, "name").ok_or("StructureDefinition without name")?.to_string();
            if str_at(&sd, "fhirVersion") != Some(FHIR_VERSION) {
                eprintln!("skipped StructureDefinition {name}: not FHIR {FHIR_VERSION}");
                continue;
            }
            structure_definitions.insert(name, sd);
        }
    }

    let primitives = primitives(&structure_definitions)?;
    let mut extras = Extras::default();
    let types = element_tables(&structure_definitions, &mut extras)?;
    check_type_references(&primitives, &types)?;
    let search_parameters = search_parameters(&read_gz_json(&dir.join("search-parameters.json.gz"))?)?;
    let patient_compartment = patient_compartment(&read_gz_json(&dir.join("compartmentdefinition-patient.json.gz"))?, &search_parameters)?;

    let file = DefinitionsFile {
        fhir_version: FHIR_VERSION.to_string(),
        primitives,
        types,
        search_parameters,
        patient_compartment,
        bindings: extras.bindings,
        reference_targets: extras.targets,
        constraints: extras.constraints,
    };
    let json = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
    // A fixed header (no file name, mtime 0) keeps the output reproducible.
    let bytes = write_gz(out, &json)?;
    eprintln!(
        "wrote {} ({} bytes, {} uncompressed): {} primitives, {} element tables ({} resources), {} search parameters, {} compartment rows, {} bindings, {} reference target rows, {} constraints",
        out.display(),
        bytes,
        json.len(),
        file.primitives.len(),
        file.types.len(),
        file.types.iter().filter(|t| t.kind == TypeKind::Resource).count(),
        file.search_parameters.len(),
        file.patient_compartment.len(),
        file.bindings.len(),
        file.reference_targets.len(),
        file.constraints.len(),
    );
    Ok(file)
}

fn write_gz(out: &Path, json: &[u8]) -> Result<usize> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::best());
    gz.write_all(json).map_err(|e| e.to_string())?;
    let bytes = gz.finish().map_err(|e| e.to_string())?;
    std::fs::write(out, &bytes).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(bytes.len())
}

/// Bindings, reference targets and constraints, collected while building the tables.
#[derive(Default)]
struct Extras {
    bindings: Vec<BindingRow>,
    targets: Vec<TargetRow>,
    constraints: Vec<ConstraintRow>,
}

/// One `ElementDefinition.constraint`: key, severity, human, expression.
type Constraint = (String, String, String, String);

fn constraints_of(de: &Value) -> Vec<Constraint> {
    de.get("constraint")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                str_at(c, "key")?.to_string(),
                str_at(c, "severity")?.to_string(),
                str_at(c, "human").unwrap_or_default().to_string(),
                str_at(c, "expression")?.to_string(),
            ))
        })
        .collect()
}

/// Most codes a value set of an extensible or preferred binding may have to be shipped
/// (required bindings ship whatever their size).
const MAX_OPTIONAL_CODES: usize = 2_000;

/// Expands the value sets of the recorded bindings and writes `bindings.json.gz`.
fn value_sets(dir: &Path, file: &DefinitionsFile, out: &Path) -> Result<()> {
    let bundle = read_gz_json(&dir.join("valuesets.json.gz"))?;
    let mut vs_by_url = BTreeMap::new();
    let mut cs_by_url = BTreeMap::new();
    for r in bundle_resources(&bundle) {
        let Some(url) = str_at(&r, "url").map(str::to_string) else { continue };
        match str_at(&r, "resourceType") {
            Some("ValueSet") => {
                vs_by_url.insert(url, r);
            }
            Some("CodeSystem") => {
                cs_by_url.insert(url, r);
            }
            _ => {}
        }
    }
    let mut strongest: BTreeMap<String, bool> = BTreeMap::new(); // url → required?
    for BindingRow(_, _, strength, vs) in &file.bindings {
        let url = vs.split('|').next().unwrap_or(vs).to_string();
        *strongest.entry(url).or_default() |= strength == "required";
    }
    let mut out_file = BindingsFile { fhir_version: FHIR_VERSION.to_string(), code_systems: BTreeMap::new(), value_sets: BTreeMap::new() };
    let (mut unknown_required, mut skipped_optional) = (Vec::new(), 0);
    for (url, required) in &strongest {
        let parts = match expand(url, &vs_by_url, &cs_by_url, 0) {
            Some(parts) => parts,
            None => {
                if *required {
                    unknown_required.push(url.clone());
                } else {
                    skipped_optional += 1;
                }
                continue;
            }
        };
        let size: usize = parts
            .iter()
            .map(|(system, codes)| codes.as_ref().map_or_else(|| cs_codes(&cs_by_url[system]).len(), |c| c.len()))
            .sum();
        if !required && size > MAX_OPTIONAL_CODES {
            skipped_optional += 1;
            continue;
        }
        let mut rows = Vec::new();
        for (system, codes) in parts {
            if codes.is_none() && !out_file.code_systems.contains_key(&system) {
                out_file.code_systems.insert(system.clone(), cs_codes(&cs_by_url[&system]));
            }
            rows.push(ValueSetPart(system, codes.map(|c| c.into_iter().collect())));
        }
        out_file.value_sets.insert(url.clone(), rows);
    }
    let json = serde_json::to_vec(&out_file).map_err(|e| e.to_string())?;
    let size = write_gz(out, &json)?;
    eprintln!(
        "wrote {} ({size} bytes, {} uncompressed): {} value sets, {} code systems; not expandable (membership unknown) for required bindings: {unknown_required:?}; {skipped_optional} extensible/preferred value sets not shipped (not expandable or over {MAX_OPTIONAL_CODES} codes)",
        out.display(),
        json.len(),
        out_file.value_sets.len(),
        out_file.code_systems.len(),
    );
    Ok(())
}

/// Every code of a code system, nested concepts included, in definition order.
fn cs_codes(cs: &Value) -> Vec<String> {
    fn walk(concepts: &Value, out: &mut Vec<String>) {
        for c in concepts.as_array().into_iter().flatten() {
            if let Some(code) = str_at(c, "code") {
                out.push(code.to_string());
            }
            if let Some(nested) = c.get("concept") {
                walk(nested, out);
            }
        }
    }
    let mut out = Vec::new();
    if let Some(concepts) = cs.get("concept") {
        walk(concepts, &mut out);
    }
    out
}

/// A value set as `(system, codes)` parts (`None`: every code of a complete code system
/// shipped in the bundle), or `None` when it cannot be expanded here (filters, excludes,
/// external or incomplete code systems, unknown value sets).
fn expand(url: &str, vs: &BTreeMap<String, Value>, cs: &BTreeMap<String, Value>, depth: usize) -> Option<Vec<(String, Option<BTreeSet<String>>)>> {
    if depth > 8 {
        return None;
    }
    let v = vs.get(url.split('|').next().unwrap_or(url))?;
    let compose = v.get("compose")?;
    if compose.get("exclude").is_some_and(|e| e.as_array().is_some_and(|a| !a.is_empty())) {
        return None;
    }
    let mut parts: BTreeMap<String, Option<BTreeSet<String>>> = BTreeMap::new();
    let mut add = |system: String, codes: Option<BTreeSet<String>>| match (parts.get_mut(&system), codes) {
        (None, codes) => {
            parts.insert(system, codes);
        }
        (Some(slot), None) => *slot = None,
        (Some(Some(existing)), Some(codes)) => existing.extend(codes),
        (Some(None), Some(_)) => {}
    };
    for include in compose.get("include")?.as_array()? {
        if include.get("filter").is_some() {
            return None;
        }
        let nested = strings_at(include, "valueSet");
        let system = str_at(include, "system");
        match (system, nested.is_empty()) {
            (None, false) => {
                for n in nested {
                    for (system, codes) in expand(&n, vs, cs, depth + 1)? {
                        add(system, codes);
                    }
                }
            }
            (Some(system), true) => match include.get("concept").and_then(Value::as_array) {
                Some(concepts) => {
                    let codes = concepts.iter().filter_map(|c| str_at(c, "code")).map(str::to_string).collect();
                    add(system.to_string(), Some(codes));
                }
                None => {
                    let code_system = cs.get(system)?;
                    if str_at(code_system, "content") != Some("complete") || cs_codes(code_system).is_empty() {
                        return None;
                    }
                    add(system.to_string(), None);
                }
            },
            _ => return None, // a system restricted to another value set, or nothing
        }
    }
    Some(parts.into_iter().collect())
}

fn read_gz_json(path: &Path) -> Result<Value> {
    let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut text = String::new();
    GzDecoder::new(file).read_to_string(&mut text).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

fn bundle_resources(bundle: &Value) -> Vec<Value> {
    let entries = bundle.get("entry").and_then(Value::as_array).cloned().unwrap_or_default();
    entries.into_iter().filter_map(|mut e| e.get_mut("resource").map(Value::take)).collect()
}

fn str_at<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn strings_at(v: &Value, key: &str) -> Vec<String> {
    v.get(key).and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_str).map(str::to_string).collect()).unwrap_or_default()
}

fn extension_value<'a>(v: &'a Value, url: &str) -> Option<&'a str> {
    v.get("extension")?
        .as_array()?
        .iter()
        .find(|e| str_at(e, "url") == Some(url))
        .and_then(|e| str_at(e, "valueString").or_else(|| str_at(e, "valueUrl")))
}

fn primitives(sds: &BTreeMap<String, Value>) -> Result<Vec<PrimitiveRow>> {
    let mut rows = Vec::new();
    for (name, sd) in sds {
        if str_at(sd, "kind") != Some("primitive-type") {
            continue;
        }
        let value_path = format!("{name}.value");
        let elements = sd.pointer("/snapshot/element").and_then(Value::as_array).ok_or("no snapshot")?;
        let regex = elements
            .iter()
            .filter(|e| str_at(e, "path") == Some(value_path.as_str()))
            .flat_map(|e| e.get("type").and_then(Value::as_array).into_iter().flatten())
            .find_map(|t| extension_value(t, REGEX_EXT))
            .map(str::to_string);
        rows.push(PrimitiveRow { name: name.clone(), regex });
    }
    Ok(rows)
}

/// One element as found in a differential, with its path relative to the type root.
#[derive(Debug, Clone)]
struct FlatElement {
    rel: String,
    min: u32,
    max: String,
    /// Type codes, or empty when `content_reference` is set.
    types: Vec<String>,
    content_reference: Option<String>,
    /// `ElementDefinition.isSummary`: part of the `_summary=true` view.
    summary: bool,
    /// `(strength, valueSet)` of a required, extensible or preferred binding.
    binding: Option<(String, String)>,
    /// Allowed Reference target types (empty: any).
    targets: Vec<String>,
    constraints: Vec<Constraint>,
}

fn element_tables(sds: &BTreeMap<String, Value>, extras: &mut Extras) -> Result<Vec<TypeRow>> {
    let mut cache = HashMap::new();
    let mut rows = Vec::new();
    for (name, sd) in sds {
        let kind = match (str_at(sd, "kind"), sd.get("abstract").and_then(Value::as_bool)) {
            (Some("resource"), Some(false)) => TypeKind::Resource,
            // `Element` stays: it is the shape of `_x` primitive extension objects.
            (Some("complex-type"), _) if name != "BackboneElement" => TypeKind::Complex,
            _ => continue,
        };
        if str_at(sd, "derivation") == Some("constraint") {
            continue; // profiles such as SimpleQuantity add no elements
        }
        let flat = flat_elements(name, sds, &mut cache)?;
        report_snapshot_only(name, sd, &flat);
        for (key, severity, human, expression) in root_constraints(name, sds) {
            extras.constraints.push(ConstraintRow(name.clone(), String::new(), key, severity, human, expression));
        }
        rows.extend(split_tables(name, kind, &flat, extras)?);
    }
    Ok(rows)
}

/// The constraints on the root element of `name` and of the types it derives from.
fn root_constraints(name: &str, sds: &BTreeMap<String, Value>) -> Vec<Constraint> {
    let Some(sd) = sds.get(name) else { return Vec::new() };
    let mut out = match str_at(sd, "baseDefinition").and_then(|b| b.rsplit('/').next()) {
        Some(base) if base != "Base" && sds.contains_key(base) => root_constraints(base, sds),
        _ => Vec::new(),
    };
    if let Some(root) = sd.pointer("/differential/element/0") {
        for c in constraints_of(root) {
            if !out.iter().any(|o| o.0 == c.0) {
                out.push(c);
            }
        }
    }
    out
}

/// The elements of `name`, inherited ones first, in definition order.
fn flat_elements(name: &str, sds: &BTreeMap<String, Value>, cache: &mut HashMap<String, Vec<FlatElement>>) -> Result<Vec<FlatElement>> {
    if let Some(done) = cache.get(name) {
        return Ok(done.clone());
    }
    let sd = sds.get(name).ok_or_else(|| format!("unknown StructureDefinition {name}"))?;
    let is_resource = str_at(sd, "kind") == Some("resource");
    let mut elements = match str_at(sd, "baseDefinition").and_then(|b| b.rsplit('/').next()) {
        Some(base) if base != "Base" && sds.contains_key(base) => flat_elements(base, sds, cache)?,
        _ => Vec::new(),
    };
    let differential = sd.pointer("/differential/element").and_then(Value::as_array).ok_or("no differential")?;
    for de in differential.iter().skip(1) {
        let path = str_at(de, "path").ok_or("element without path")?;
        let rel = path.split_once('.').map(|(_, r)| r).ok_or_else(|| format!("bad path {path}"))?;
        let types: Vec<String> = de
            .get("type")
            .and_then(Value::as_array)
            .map(|ts| ts.iter().map(|t| type_code(t, is_resource && rel == "id")).collect::<Result<_>>())
            .transpose()?
            .unwrap_or_default();
        let min = de.get("min").and_then(Value::as_u64).map(|m| m as u32);
        let max = str_at(de, "max").map(str::to_string);
        let content_reference = str_at(de, "contentReference").map(|c| c.trim_start_matches('#').to_string());
        let summary = de.get("isSummary").and_then(Value::as_bool);
        let binding = de.get("binding").and_then(|b| {
            let strength = str_at(b, "strength")?;
            let value_set = str_at(b, "valueSet")?;
            matches!(strength, "required" | "extensible" | "preferred").then(|| (strength.to_string(), value_set.to_string()))
        });
        let targets: Vec<String> = de
            .get("type")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|t| str_at(t, "code") == Some("Reference"))
            .flat_map(|t| strings_at(t, "targetProfile"))
            .filter_map(|p| p.rsplit('/').next().map(str::to_string))
            .collect();
        // A target of `Resource` (or of a profile that is no resource type) means any.
        let targets = if targets.iter().all(|t| sds.get(t).is_some_and(|sd| str_at(sd, "kind") == Some("resource") && t != "Resource")) { targets } else { Vec::new() };
        let constraints = constraints_of(de);
        if let Some(existing) = elements.iter_mut().find(|e| e.rel == rel) {
            // A derived type restating an inherited element (e.g. constraining it).
            if let Some(min) = min {
                existing.min = min;
            }
            if let Some(max) = max {
                existing.max = max;
            }
            if !types.is_empty() {
                existing.types = types;
            }
            if let Some(summary) = summary {
                existing.summary = summary;
            }
            if binding.is_some() {
                existing.binding = binding;
            }
            if !targets.is_empty() {
                existing.targets = targets;
            }
            existing.constraints.extend(constraints);
            continue;
        }
        let (Some(min), Some(max)) = (min, max) else {
            return Err(format!("{path}: new element without min/max"));
        };
        if types.is_empty() && content_reference.is_none() {
            return Err(format!("{path}: element without type"));
        }
        elements.push(FlatElement {
            rel: rel.to_string(),
            min,
            max,
            types,
            content_reference,
            summary: summary.unwrap_or(false),
            binding,
            targets,
            constraints,
        });
    }
    cache.insert(name.to_string(), elements.clone());
    Ok(elements)
}

/// The FHIR type of one `ElementDefinition.type` entry. FHIRPath system types (used for
/// `id`, `Extension.url` and primitive values) carry the FHIR type in an extension.
fn type_code(t: &Value, is_resource_id: bool) -> Result<String> {
    let code = str_at(t, "code").ok_or("type without code")?;
    if is_resource_id {
        // Resource.id is declared as System.String, but its values are FHIR `id`s.
        return Ok("id".to_string());
    }
    if code == SYSTEM_STRING {
        return Ok(extension_value(t, FHIR_TYPE_EXT).unwrap_or("string").to_string());
    }
    Ok(code.to_string())
}

/// Lists snapshot elements that no differential defines (so they are not R4 elements).
fn report_snapshot_only(name: &str, sd: &Value, flat: &[FlatElement]) {
    let known: BTreeSet<&str> = flat.iter().map(|e| e.rel.as_str()).collect();
    let snapshot = sd.pointer("/snapshot/element").and_then(Value::as_array);
    let extra: Vec<&str> = snapshot
        .into_iter()
        .flatten()
        .filter_map(|e| str_at(e, "path")?.split_once('.').map(|(_, r)| r))
        .filter(|rel| !known.contains(rel))
        .filter(|rel| {
            // id/extension/modifierExtension of nested elements are inherited, not listed.
            let inherited = ["id", "extension", "modifierExtension"];
            !matches!(rel.rsplit_once('.'), Some((parent, child)) if known.contains(parent) && inherited.contains(&child))
        })
        .collect();
    if !extra.is_empty() {
        eprintln!("{name}: ignored snapshot-only elements {extra:?}");
    }
}

/// Splits a flat element list into the type's own table and one table per nested
/// (BackboneElement / Element) element.
fn split_tables(name: &str, kind: TypeKind, flat: &[FlatElement], extras: &mut Extras) -> Result<Vec<TypeRow>> {
    let has_children =
        |rel: &str| flat.iter().any(|e| e.rel.len() > rel.len() && e.rel.starts_with(rel) && e.rel.as_bytes()[rel.len()] == b'.');
    let mut tables: Vec<TypeRow> = vec![TypeRow { name: name.to_string(), kind, elements: Vec::new() }];
    for e in flat {
        if e.max == "0" {
            continue; // prohibited
        }
        let (parent, child) = match e.rel.rsplit_once('.') {
            Some((p, c)) => (format!("{name}.{p}"), c.to_string()),
            None => (name.to_string(), e.rel.clone()),
        };
        let types = if let Some(target) = &e.content_reference {
            vec![target.clone()]
        } else if has_children(&e.rel) {
            let table = format!("{name}.{}", e.rel);
            // Nested elements inherit id/extension (and modifierExtension for BackboneElement).
            let mut inherited = vec![
                ElementRow("id".into(), vec!["string".into()], 0, "1".into(), false),
                ElementRow("extension".into(), vec!["Extension".into()], 0, "*".into(), false),
            ];
            match e.types.as_slice() {
                [t] if t == "BackboneElement" => {
                    inherited.push(ElementRow("modifierExtension".into(), vec!["Extension".into()], 0, "*".into(), true))
                }
                [t] if t == "Element" => {}
                other => return Err(format!("{name}.{}: nested element of type {other:?}", e.rel)),
            }
            tables.push(TypeRow { name: table.clone(), kind: TypeKind::Backbone, elements: inherited });
            // A constraint on a backbone element holds for each instance of its table.
            for (key, severity, human, expression) in &e.constraints {
                extras.constraints.push(ConstraintRow(table.clone(), String::new(), key.clone(), severity.clone(), human.clone(), expression.clone()));
            }
            vec![table]
        } else {
            e.types.clone()
        };
        let table = tables
            .iter_mut()
            .find(|t| t.name == parent)
            .ok_or_else(|| format!("{name}.{}: parent {parent} not defined before it", e.rel))?;
        if !has_children(&e.rel) {
            for (key, severity, human, expression) in &e.constraints {
                extras.constraints.push(ConstraintRow(parent.clone(), child.clone(), key.clone(), severity.clone(), human.clone(), expression.clone()));
            }
        }
        if let Some((strength, value_set)) = &e.binding {
            extras.bindings.push(BindingRow(parent.clone(), child.clone(), strength.clone(), value_set.clone()));
        }
        if !e.targets.is_empty() {
            extras.targets.push(TargetRow(parent.clone(), child.clone(), e.targets.clone()));
        }
        table.elements.push(ElementRow(child, types, e.min, e.max.clone(), e.summary));
    }
    Ok(tables)
}

fn check_type_references(primitives: &[PrimitiveRow], types: &[TypeRow]) -> Result<()> {
    let known: BTreeSet<&str> =
        primitives.iter().map(|p| p.name.as_str()).chain(types.iter().map(|t| t.name.as_str())).chain(["Resource"]).collect();
    for t in types {
        for ElementRow(name, element_types, _, max, _) in &t.elements {
            if max != "1" && max != "*" {
                return Err(format!("{}.{name}: unsupported max {max}", t.name));
            }
            if let Some(missing) = element_types.iter().find(|ty| !known.contains(ty.as_str())) {
                return Err(format!("{}.{name}: unknown type {missing}", t.name));
            }
        }
    }
    Ok(())
}

fn search_parameters(bundle: &Value) -> Result<Vec<SearchParameter>> {
    let mut params = Vec::new();
    for sp in bundle_resources(bundle) {
        if str_at(&sp, "resourceType") != Some("SearchParameter") {
            continue;
        }
        let id = str_at(&sp, "id").ok_or("SearchParameter without id")?.to_string();
        if str_at(&sp, "version") != Some(FHIR_VERSION) {
            eprintln!("skipped SearchParameter {id}: not FHIR {FHIR_VERSION}");
            continue;
        }
        let component = sp
            .get("component")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(|c| SearchComponent {
                definition: str_at(c, "definition").unwrap_or_default().to_string(),
                expression: str_at(c, "expression").unwrap_or_default().to_string(),
            })
            .collect();
        let required = |key: &str| str_at(&sp, key).map(str::to_string).ok_or_else(|| format!("SearchParameter {id}: no {key}"));
        params.push(SearchParameter {
            url: required("url")?,
            name: required("name")?,
            code: required("code")?,
            kind: required("type")?,
            base: strings_at(&sp, "base"),
            expression: str_at(&sp, "expression").map(str::to_string),
            target: strings_at(&sp, "target"),
            modifier: strings_at(&sp, "modifier"),
            comparator: strings_at(&sp, "comparator"),
            component,
            id,
        });
    }
    Ok(params)
}

fn patient_compartment(definition: &Value, params: &[SearchParameter]) -> Result<Vec<CompartmentRow>> {
    let mut rows = Vec::new();
    for entry in definition.get("resource").and_then(Value::as_array).ok_or("CompartmentDefinition without resource")? {
        let resource = str_at(entry, "code").ok_or("compartment resource without code")?;
        let mut row = CompartmentRow { resource: resource.to_string(), params: Vec::new() };
        for code in strings_at(entry, "param") {
            let sp = params
                .iter()
                .find(|p| p.code == code && p.base.iter().any(|b| b == resource))
                .ok_or_else(|| format!("no search parameter {resource}.{code}"))?;
            let expression = sp.expression.as_deref().ok_or_else(|| format!("{}: no expression", sp.id))?;
            let paths = compartment_paths(resource, expression);
            if paths.is_empty() {
                return Err(format!("{}: no path for {resource} in {expression}", sp.id));
            }
            row.params.push(CompartmentParamRow { code, paths });
        }
        if !row.params.is_empty() {
            rows.push(row);
        }
    }
    Ok(rows)
}

/// `AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient)` for
/// `CarePlan` gives `["subject"]`.
fn compartment_paths(resource: &str, expression: &str) -> Vec<String> {
    expression
        .split('|')
        .filter_map(|part| part.trim().strip_prefix(resource)?.strip_prefix('.'))
        .map(|path| path.split(".where(").next().unwrap_or(path).to_string())
        .collect()
}
