//! The FHIRPath invariants of the R4 definitions (`pat-1`, `obs-6`, `obs-7`, `per-1`,
//! `dom-3`, …), evaluated on every write with `tessera-fhirpath`, and the validation every
//! write path runs ([`check_write`]): `tessera_fhir::validation` first (structure,
//! cardinality, formats, required bindings, reference target types, narrative), then the
//! invariants.
//!
//! The shipped definitions attach each constraint to a table (a resource, a data type such
//! as `Period`, or a backbone element such as `Patient.contact`) or to one element of a
//! table. A walk over the resource, guided by the definitions like validation, finds the
//! *sites* where constrained tables and elements occur, each named by its FHIRPath path
//! from the resource (`Encounter.period`, `Observation.value.ofType(Quantity)`,
//! `Patient.contact`). For each site and constraint the expression
//! `<path>.where((<constraint>).not())` — the instances that break it — is parsed once and
//! cached (the cache is keyed by a hash of the path; it is bounded, see [`MAX_CACHED`]),
//! then evaluated against the resource. Contained resources and other embedded resources
//! (`Bundle.entry.resource`) are evaluated as resources of their own.
//!
//! A constraint that evaluates to false is an error (severity `error`) or a warning
//! (severity `warning`, computed only when asked, see [`evaluate`]); one that evaluates to
//! empty, or whose evaluation fails (an unsupported function such as `htmlChecks()` or
//! `memberOf()`, a run-time error), is not reported: the engine's limits must not refuse
//! data. Constraints checked natively instead (equivalently and faster) are in
//! [`NATIVE`]; those the evaluator cannot handle in [`SKIPPED`]; both lists are in
//! `crates/tessera-fhir/definitions/README.md`.

use serde_json::{Map, Value};
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::{Arc, LazyLock, RwLock};
use tessera_fhir::definitions::{definitions, Constraint, ConstraintSeverity, Target, TypeDef};
use tessera_fhir::validation::{Limits, Options};
use tessera_fhir::{Issue, IssueSeverity, IssueType};
use tessera_fhirpath::{Context, Expression, Item};

/// Constraints the validator of `tessera-fhir` checks natively, on every element, with the
/// same meaning: `ele-1` (a value or children; no empty objects or strings), `ext-1` (an
/// extension has a value or nested extensions, not both), `ref-1` (a local reference names
/// a contained resource), `dom-2`/`dom-4` (a contained resource has no `contained`, no
/// `meta.versionId`/`meta.lastUpdated`), `txt-1`/`txt-2` (narrative XHTML,
/// [`tessera_fhir::narrative`]; their expression is `htmlChecks()`, which FHIRPath engines
/// provide natively).
pub const NATIVE: &[&str] = &["ele-1", "ext-1", "ref-1", "dom-2", "dom-4", "txt-1", "txt-2"];

/// Constraints not evaluated: `ig-1` reads `%context` below the resource root, which the
/// evaluator binds to the resource.
pub const SKIPPED: &[&str] = &["ig-1"];

/// Most compiled site expressions kept; beyond that (only hostile input produces so many
/// distinct paths) expressions are compiled for the request and dropped.
pub const MAX_CACHED: usize = 20_000;

/// The validation of a write: structure, bindings, reference targets and narrative
/// (`tessera_fhir::validation`, with `resolve` naming the types of `urn:uuid:` references
/// of a transaction), then the error-severity invariants. `Err` holds the issues.
pub fn check_write(resource: &Value, limits: &Limits, resolve: Option<&dyn Fn(&str) -> Option<&'static str>>) -> Result<(), Vec<Issue>> {
    tessera_fhir::validation::validate_with(resource, limits, &Options { warnings: false, resolve })?;
    let issues = evaluate(resource, false);
    if issues.is_empty() {
        Ok(())
    } else {
        Err(issues)
    }
}

/// Every issue, errors and warnings: validation (with extensible and preferred bindings)
/// and every invariant (for `$validate`).
pub fn check_full(resource: &Value, limits: &Limits) -> Vec<Issue> {
    let mut issues = tessera_fhir::validation::validate_full(resource, limits);
    if !issues.iter().any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal)) {
        issues.extend(evaluate(resource, true));
    }
    issues
}

/// Evaluates the invariants of a structurally valid resource: error-severity ones, and
/// warning-severity ones when `warnings`.
pub fn evaluate(resource: &Value, warnings: bool) -> Vec<Issue> {
    let Value::Object(map) = resource else { return Vec::new() };
    let mut issues = Vec::new();
    let mut roots: Vec<(&Value, &Map<String, Value>)> = vec![(resource, map)];
    while let Some((json, map)) = roots.pop() {
        let Some(ty) = map.get("resourceType").and_then(Value::as_str) else { continue };
        let Some(td) = definitions().resource(ty) else { continue };
        let mut walk = Walk { warnings, sites: Vec::new(), nested: Vec::new(), steps: vec![Step::Type(td.name.as_str())], hashes: vec![step_hash(0, td.name.as_str(), "")] };
        walk.object(map, td, 0);
        for (_, compiled) in &walk.sites {
            for c in compiled.iter() {
                let Some(expression) = &c.expression else { continue };
                if c.severity == ConstraintSeverity::Warning && !warnings {
                    continue;
                }
                let failing = match expression.evaluate(json, &Context::new()) {
                    Ok(items) => items,
                    // Unsupported functions and run-time errors: not reported.
                    Err(_) => continue,
                };
                for item in failing {
                    let Item::Node(node) = item else { continue };
                    // Named from the resource written (a contained resource's from its container).
                    let at = path_of(resource, node.json()).unwrap_or_else(|| ty.to_string());
                    let message = format!("{}: {}", c.key, c.human);
                    let issue = match c.severity {
                        ConstraintSeverity::Error => Issue::error(IssueType::Invariant, message),
                        ConstraintSeverity::Warning => Issue::warning(IssueType::Invariant, message),
                    };
                    issues.push(issue.at(at));
                }
            }
        }
        for nested in walk.nested {
            if let Value::Object(m) = nested {
                roots.push((nested, m));
            }
        }
    }
    issues
}

/// One constraint compiled for one site.
struct Compiled {
    key: &'static str,
    human: &'static str,
    severity: ConstraintSeverity,
    /// `None`: not evaluated (native, skipped, or the expression does not parse).
    expression: Option<Expression>,
}

type SiteKey = (u64, usize, usize);

static CACHE: LazyLock<RwLock<HashMap<SiteKey, Arc<[Compiled]>>>> = LazyLock::new(Default::default);

#[derive(Clone, Copy)]
enum Step {
    /// The resource type at the root.
    Type(&'static str),
    /// An element; for a choice element, with the chosen type.
    Element(&'static str, Option<&'static str>),
}

struct Walk<'v> {
    warnings: bool,
    sites: Vec<(SiteKey, Arc<[Compiled]>)>,
    /// Embedded resources, evaluated on their own.
    nested: Vec<&'v Value>,
    steps: Vec<Step>,
    hashes: Vec<u64>,
}

fn step_hash(parent: u64, name: &str, ty: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    h.write_u64(parent);
    h.write(name.as_bytes());
    h.write_u8(0xff);
    h.write(ty.as_bytes());
    h.finish()
}

impl<'v> Walk<'v> {
    fn wanted(&self, c: &Constraint) -> bool {
        (c.severity == ConstraintSeverity::Error || self.warnings) && !NATIVE.contains(&c.key.as_str())
    }

    /// Registers the constraints of `td` (`element`: `None` for the table's own) at the
    /// current path.
    fn site(&mut self, td: &'static TypeDef, element: Option<usize>) {
        if !td.constraints.iter().any(|c| c.element == element && self.wanted(c)) {
            return;
        }
        let key: SiteKey = (*self.hashes.last().expect("root"), td as *const TypeDef as usize, element.map_or(usize::MAX, |e| e));
        if self.sites.iter().any(|(k, _)| *k == key) {
            return;
        }
        let cached = CACHE.read().ok().and_then(|c| c.get(&key).cloned());
        let compiled = match cached {
            Some(c) => c,
            None => {
                let compiled = self.compile(td, element);
                if let Ok(mut cache) = CACHE.write() {
                    if cache.len() < MAX_CACHED {
                        cache.insert(key, compiled.clone());
                    }
                }
                compiled
            }
        };
        self.sites.push((key, compiled));
    }

    fn compile(&self, td: &'static TypeDef, element: Option<usize>) -> Arc<[Compiled]> {
        let mut path = String::new();
        for step in &self.steps {
            match step {
                Step::Type(t) => path.push_str(t),
                Step::Element(name, ty) => {
                    path.push_str(".`");
                    path.push_str(name);
                    path.push('`');
                    if let Some(ty) = ty {
                        path.push_str(".ofType(");
                        path.push_str(ty);
                        path.push(')');
                    }
                }
            }
        }
        let below_root = self.steps.len() > 1;
        td.constraints
            .iter()
            .filter(|c| c.element == element)
            .map(|c| {
                let evaluated = !NATIVE.contains(&c.key.as_str())
                    && !SKIPPED.contains(&c.key.as_str())
                    && !(below_root && c.expression.contains("%context"));
                let expression = evaluated.then(|| Expression::parse(&format!("{path}.where(({}).not())", c.expression)).ok()).flatten();
                Compiled { key: c.key.as_str(), human: c.human.as_str(), severity: c.severity, expression }
            })
            .collect()
    }

    fn push(&mut self, step: Step) {
        let (name, ty) = match step {
            Step::Type(t) => (t, ""),
            Step::Element(n, t) => (n, t.unwrap_or("")),
        };
        let h = step_hash(*self.hashes.last().unwrap_or(&0), name, ty);
        self.steps.push(step);
        self.hashes.push(h);
    }

    fn pop(&mut self) {
        self.steps.pop();
        self.hashes.pop();
    }

    /// An object of table `td` at the current path.
    fn object(&mut self, map: &'v Map<String, Value>, td: &'static TypeDef, depth: usize) {
        if depth > 64 {
            return;
        }
        self.site(td, None);
        for (key, value) in map {
            if key == "resourceType" {
                continue;
            }
            if let Some(name) = key.strip_prefix('_') {
                // The `id`/`extension` of primitive values: an Element.
                if let Some((e, _)) = td.lookup(name) {
                    let element = &td.elements[e];
                    self.push(Step::Element(element.name.as_str(), None));
                    let element_td = definitions().element_type();
                    for_each_object(value, |m| self.object(m, element_td, depth + 1));
                    self.pop();
                }
                continue;
            }
            let Some((e, t)) = td.lookup(key) else { continue };
            let element = &td.elements[e];
            let ty = &element.types[t];
            self.push(Step::Element(element.name.as_str(), element.choice.then_some(ty.code.as_str())));
            self.site(td, Some(e));
            match ty.target {
                Target::Complex(id) => {
                    let child = definitions().get(id);
                    for_each_object(value, |m| self.object(m, child, depth + 1));
                }
                Target::Resource => match value {
                    Value::Array(items) => self.nested.extend(items.iter()),
                    item => self.nested.push(item),
                },
                Target::Primitive(_) => {}
            }
            self.pop();
        }
    }
}

fn for_each_object<'v>(value: &'v Value, mut f: impl FnMut(&'v Map<String, Value>)) {
    match value {
        Value::Object(m) => f(m),
        Value::Array(items) => items.iter().filter_map(Value::as_object).for_each(f),
        _ => {}
    }
}

/// The path of `target` (found by identity) in `resource`, with JSON names and indices:
/// `Patient.contact[1]`, `Observation.valueQuantity`.
pub fn path_of(resource: &Value, target: &Value) -> Option<String> {
    fn find(v: &Value, target: *const Value, out: &mut String) -> bool {
        if std::ptr::eq(v, target) {
            return true;
        }
        let len = out.len();
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    out.push('.');
                    out.push_str(k);
                    if find(child, target, out) {
                        return true;
                    }
                    out.truncate(len);
                }
            }
            Value::Array(items) => {
                for (i, child) in items.iter().enumerate() {
                    out.push_str(&format!("[{i}]"));
                    if find(child, target, out) {
                        return true;
                    }
                    out.truncate(len);
                }
            }
            _ => {}
        }
        false
    }
    let mut out = resource.get("resourceType")?.as_str()?.to_string();
    find(resource, target, &mut out).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(resource: Value) -> Vec<(String, String)> {
        evaluate(&resource, false).into_iter().map(|i| (i.diagnostics.split(':').next().unwrap().to_string(), i.expression.join(","))).collect()
    }

    #[test]
    fn errors_are_found_with_their_paths() {
        assert_eq!(keys(json!({"resourceType": "Patient", "contact": [{"gender": "male"}]})), [("pat-1".to_string(), "Patient.contact[0]".to_string())]);
        assert_eq!(keys(json!({"resourceType": "Patient", "contact": [{"name": {"family": "X"}}]})), []);
        assert_eq!(
            keys(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a", "dataAbsentReason": {"text": "gone"}})),
            [("obs-6".to_string(), "Observation".to_string())]
        );
        assert_eq!(
            keys(json!({"resourceType": "Encounter", "status": "finished", "class": {"code": "AMB"}, "period": {"start": "2020-02-01", "end": "2020-01-01"}})),
            [("per-1".to_string(), "Encounter.period".to_string())]
        );
        assert_eq!(
            keys(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1, "code": "mg"}})),
            [("qty-3".to_string(), "Observation.valueQuantity".to_string())]
        );
        assert_eq!(
            keys(json!({"resourceType": "Patient", "contact": [{"name": {"family": "X"}, "period": {"start": "2021-01-01", "end": "2020-01-01"}}]})),
            [("per-1".to_string(), "Patient.contact[0].period".to_string())]
        );
        // In a contained resource: named from the container.
        assert_eq!(
            keys(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "#p"},
                "contained": [{"resourceType": "Patient", "id": "p", "contact": [{"name": {"family": "X"}, "period": {"start": "2021", "end": "2020"}}]}]})),
            [("per-1".to_string(), "Observation.contained[0].contact[0].period".to_string())]
        );
        // org-1: an Organization needs a name or an identifier, contained or not.
        assert_eq!(
            keys(json!({"resourceType": "Patient", "managingOrganization": {"reference": "#o"}, "contained": [{"resourceType": "Organization", "id": "o"}]})),
            [("org-1".to_string(), "Patient.contained[0]".to_string())]
        );
    }

    /// Official R4 examples that break an error-severity invariant of R4 itself (errata in
    /// the examples): file and the invariant's key.
    pub(crate) const INVARIANT_ERRATA: [(&str, &str); 1] = [
        // The code 'chol-mass' is defined twice (csd-1: codes are unique in a code system).
        ("codesystem-example.json", "csd-1"),
    ];

    fn shared_data(name: &str) -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data").join(name)
    }

    /// The official R4 examples keep every error-severity invariant; a failure would be an
    /// evaluator bug (or an erratum of the example, to be documented here).
    #[test]
    fn official_examples_keep_their_invariants() {
        let mut files: Vec<_> = std::fs::read_dir(shared_data("fhir-r4-examples")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut failures = Vec::new();
        for f in &files {
            let resource: Value = serde_json::from_slice(&std::fs::read(f).unwrap()).unwrap();
            let name = f.file_name().unwrap().to_str().unwrap();
            let issues = evaluate(&resource, false);
            if let Some((_, key)) = INVARIANT_ERRATA.iter().find(|(file, _)| *file == name) {
                assert!(!issues.is_empty() && issues.iter().all(|i| i.diagnostics.starts_with(&format!("{key}:"))), "{name}: {issues:?}");
                continue;
            }
            for i in issues {
                failures.push(format!("{}: {} at {:?}", f.display(), i.diagnostics, i.expression));
            }
        }
        assert_eq!(files.len(), 72);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Every Synthea resource keeps its invariants; prints the evaluation rate
    /// (`cargo test -p tessera-engine --release synthea_keeps -- --nocapture`).
    #[test]
    fn synthea_keeps_its_invariants() {
        let mut files: Vec<_> = std::fs::read_dir(shared_data("synthea")).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        let mut resources = Vec::new();
        for f in files.iter().take(12) {
            let out = std::process::Command::new("bzcat").arg(f).output().expect("bzcat");
            let bundle: Value = serde_json::from_slice(&out.stdout).unwrap();
            resources.extend(bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()));
        }
        let start = std::time::Instant::now();
        let mut failures = Vec::new();
        for r in &resources {
            for i in evaluate(r, false) {
                failures.push(format!("{} {}: {} at {:?}", r["resourceType"], r["id"], i.diagnostics, i.expression));
            }
        }
        let elapsed = start.elapsed();
        println!("invariants of {} Synthea resources in {elapsed:.2?}: {:.0} resources/s", resources.len(), resources.len() as f64 / elapsed.as_secs_f64());
        failures.truncate(20);
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn warnings_only_when_asked() {
        let patient = json!({"resourceType": "Patient", "active": true});
        assert!(evaluate(&patient, false).is_empty());
        let all = evaluate(&patient, true);
        assert!(all.iter().any(|i| i.severity == IssueSeverity::Warning && i.diagnostics.starts_with("dom-6")), "{all:?}");
    }
}
