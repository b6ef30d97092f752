//! Every R4 search-parameter expression parses, and evaluates without error on the
//! official R4 examples; spot checks of what typical parameters extract.

use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Instant;
use tessera_fhir::definitions::search_parameters;
use tessera_fhirpath::{Context, Expression, Item};

fn examples() -> Vec<(String, Value)> {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fhir-r4-examples");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        eprintln!("skipping examples: {} not found", dir.display());
        return Vec::new();
    };
    let mut out: Vec<(String, Value)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((
                e.file_name().to_string_lossy().into_owned(),
                serde_json::from_str(&text).ok()?,
            ))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_expression_parses() {
    let mut failures = Vec::new();
    let mut count = 0;
    for p in search_parameters() {
        let exprs = p
            .expression
            .iter()
            .map(String::as_str)
            .chain(p.component.iter().map(|c| c.expression.as_str()));
        for e in exprs {
            count += 1;
            if let Err(err) = Expression::parse(e) {
                failures.push(format!("{} ({}): {e}: {err}", p.id, p.code));
            }
        }
    }
    assert!(count > 1300, "only {count} expressions");
    assert!(
        failures.is_empty(),
        "{} expressions do not parse:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_expression_evaluates_on_the_examples() {
    let examples = examples();
    if examples.is_empty() {
        return;
    }
    let compiled: Vec<_> = search_parameters()
        .iter()
        .filter_map(|p| Some((p, Expression::parse(p.expression.as_deref()?).ok()?)))
        .collect();
    let ctx = Context::new();
    let (mut evaluated, mut non_empty) = (0, 0);
    let mut failures = Vec::new();
    for (file, resource) in &examples {
        let rt = resource["resourceType"].as_str().unwrap_or_default();
        for (p, expr) in &compiled {
            if !p
                .base
                .iter()
                .any(|b| b == rt || b == "Resource" || b == "DomainResource")
            {
                continue;
            }
            evaluated += 1;
            match expr.evaluate(resource, &ctx) {
                Ok(items) => non_empty += usize::from(!items.is_empty()),
                Err(e) => failures.push(format!("{file}: {} = {}: {e}", p.code, expr)),
            }
        }
    }
    println!(
        "{evaluated} evaluations on {} examples, {non_empty} non-empty",
        examples.len()
    );
    assert!(evaluated > 1000, "only {evaluated} evaluations");
    assert!(
        failures.is_empty(),
        "{} evaluations failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn example(name: &str) -> Option<Value> {
    examples()
        .into_iter()
        .find(|(f, _)| f == name)
        .map(|(_, v)| v)
}

fn param(resource: &str, code: &str) -> Expression {
    let p = search_parameters()
        .iter()
        .find(|p| p.code == code && p.base.iter().any(|b| b == resource || b == "Resource"))
        .unwrap_or_else(|| panic!("no {resource}.{code}"));
    Expression::parse(p.expression.as_deref().unwrap()).unwrap()
}

fn summary(items: &[Item<'_>]) -> Vec<String> {
    items
        .iter()
        .map(|i| match i {
            Item::Node(n) => format!("{}:{}", n.type_name(), n.json()),
            other => other.to_display_string().unwrap_or_default(),
        })
        .collect()
}

#[test]
fn typical_extractions() {
    let obs = json!({
        "resourceType": "Observation",
        "id": "o1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": "Patient/p1"},
        "performer": [{"reference": "Practitioner/x"}, {"reference": "#c1"}],
        "contained": [{"resourceType": "Organization", "id": "c1"}],
        "effectiveDateTime": "2016-03-28",
        "_effectiveDateTime": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
        "valueQuantity": {"value": 185, "unit": "lbs", "system": "http://unitsofmeasure.org", "code": "[lb_av]"},
        "component": [{"code": {"text": "a"}, "valueCodeableConcept": {"text": "b"}}]
    });
    let ctx = Context::new();
    let eval = |r: &str, c: &str| summary(&param(r, c).evaluate(&obs, &ctx).unwrap());
    assert_eq!(
        eval("Observation", "code"),
        [r#"CodeableConcept:{"coding":[{"system":"http://loinc.org","code":"29463-7"}]}"#]
    );
    assert_eq!(
        eval("Observation", "patient"),
        [r#"Reference:{"reference":"Patient/p1"}"#]
    );
    assert_eq!(
        eval("Observation", "subject"),
        [r#"Reference:{"reference":"Patient/p1"}"#]
    );
    assert_eq!(eval("Observation", "date"), [r#"dateTime:"2016-03-28""#]);
    assert_eq!(eval("Observation", "value-quantity").len(), 1);
    assert_eq!(eval("Observation", "value-concept"), Vec::<String>::new());
    assert_eq!(
        eval("Observation", "component-value-concept"),
        [r#"CodeableConcept:{"text":"b"}"#]
    );
    assert_eq!(eval("Observation", "performer").len(), 2);
    assert_eq!(eval("Observation", "_id"), [r#"id:"o1""#]);

    let check = |src: &str| {
        summary(
            &Expression::parse(src)
                .unwrap()
                .evaluate(&obs, &ctx)
                .unwrap(),
        )
    };
    assert_eq!(
        check("Observation.subject.where(resolve() is Patient)").len(),
        1
    );
    assert_eq!(
        check("Observation.subject.where(resolve() is Group)").len(),
        0
    );
    assert_eq!(
        check("Observation.performer.where(resolve() is Organization)"),
        [r##"Reference:{"reference":"#c1"}"##]
    );
    assert_eq!(
        check("Observation.performer.resolve().ofType(Organization).id"),
        [r#"id:"c1""#]
    );
    assert_eq!(
        check("(Observation.value as Quantity).value"),
        ["decimal:185"]
    );
    assert_eq!(
        check("Observation.value.ofType(Quantity).code"),
        [r#"code:"[lb_av]""#]
    );
    assert_eq!(
        check("Observation.effective.extension('http://example.org/x').value"),
        [r#"string:"y""#]
    );
    assert_eq!(check("Observation.value = 185 '[lb_av]'"), ["true"]);
    assert_eq!(check("Observation.effective >= @2016-01-01"), ["true"]);
    assert_eq!(check("Resource.id | DomainResource.id"), [r#"id:"o1""#]);
    assert_eq!(check("Patient.id"), Vec::<String>::new());
}

#[test]
fn examples_extract_expected_values() {
    let Some(patient) = example("patient-example.json") else {
        return;
    };
    let ctx = Context::new();
    let birthdate = summary(
        &param("Patient", "birthdate")
            .evaluate(&patient, &ctx)
            .unwrap(),
    );
    assert_eq!(birthdate, [r#"date:"1974-12-25""#]);
    let family = summary(&param("Patient", "family").evaluate(&patient, &ctx).unwrap());
    assert!(
        family.contains(&r#"string:"Chalmers""#.to_string()),
        "{family:?}"
    );
    let phone = param("Patient", "phone").evaluate(&patient, &ctx).unwrap();
    assert!(!phone.is_empty());
    let org = summary(
        &param("Patient", "organization")
            .evaluate(&patient, &ctx)
            .unwrap(),
    );
    assert_eq!(org.len(), 1, "{org:?}");
}

/// Prints the time per evaluation of typical search expressions (meaningful in release builds:
/// `cargo test --release -p tessera-fhirpath --test search_parameters -- --nocapture timing`).
#[test]
fn timing() {
    let obs = example("observation-example.json")
        .unwrap_or_else(|| json!({"resourceType": "Observation"}));
    let ctx = Context::new();
    // Warm up: the first evaluation loads the shipped definitions.
    Expression::parse("Observation.code")
        .unwrap()
        .evaluate(&obs, &ctx)
        .unwrap();
    for src in [
        "Observation.code",
        "Observation.subject.where(resolve() is Patient)",
        "(Observation.value as Quantity) | (Observation.value as SampledData)",
        "Observation.effective",
        "Observation.value.ofType(Quantity)",
        "Observation.code.coding.where(system = 'http://loinc.org').code",
    ] {
        let expr = Expression::parse(src).unwrap();
        let n = 20_000;
        let start = Instant::now();
        let mut total = 0;
        for _ in 0..n {
            total += expr.evaluate(&obs, &ctx).unwrap().len();
        }
        let per = start.elapsed().as_nanos() as f64 / n as f64;
        println!("{per:>8.0} ns  {src}  ({} items)", total / n);
    }
}
