//! Runs the official FHIRPath R4 conformance suite (`tests-fhir-r4.xml`) against the JSON
//! forms of its input resources.
//!
//! Tests whose input only exists as XML are skipped and counted as "no JSON input". Tests
//! that expect a semantic error, or are marked `mode="strict"`, run in strict mode (where
//! semantic errors are reported); the others run in the default lenient mode.

use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value;
use std::collections::HashMap;
use std::path::PathBuf;
use tessera_fhirpath::{Context, Expression, Item};

/// The number of tests known to pass; the suite fails if fewer pass.
const PASS_FLOOR: usize = 918;

#[derive(Debug, Default)]
struct Test {
    name: String,
    group: String,
    input: Option<String>,
    expression: String,
    invalid: Option<String>,
    mode: Option<String>,
    predicate: bool,
    ordered: bool,
    outputs: Vec<(Option<String>, String)>,
}

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/fhirpath-tests")
}

fn attrs(e: &quick_xml::events::BytesStart<'_>) -> HashMap<String, String> {
    e.attributes()
        .filter_map(Result::ok)
        .map(|a| {
            (
                String::from_utf8_lossy(a.key.as_ref()).into_owned(),
                a.unescape_value()
                    .map(|v| v.into_owned())
                    .unwrap_or_default(),
            )
        })
        .collect()
}

fn load_tests(xml: &str) -> Vec<Test> {
    let mut reader = Reader::from_str(xml);
    let mut tests = Vec::new();
    let mut group = String::new();
    let mut current: Option<Test> = None;
    let mut text: Option<String> = None;
    let mut output_type: Option<Option<String>> = None;
    loop {
        match reader.read_event().expect("well-formed test XML") {
            Event::Start(e) => {
                let a = attrs(&e);
                match e.name().as_ref() {
                    b"group" => group = a.get("name").cloned().unwrap_or_default(),
                    b"test" | b"modeTest" => {
                        current = Some(Test {
                            name: a.get("name").cloned().unwrap_or_default(),
                            group: group.clone(),
                            input: a.get("inputfile").cloned(),
                            mode: a.get("mode").cloned(),
                            predicate: a.get("predicate").is_some_and(|p| p == "true"),
                            ordered: a.get("ordered").is_none_or(|o| o != "false"),
                            ..Test::default()
                        })
                    }
                    b"expression" => {
                        if let Some(t) = current.as_mut() {
                            t.invalid = a.get("invalid").cloned();
                            if let Some(m) = a.get("mode") {
                                t.mode = Some(m.clone());
                            }
                        }
                        text = Some(String::new());
                    }
                    b"output" => {
                        output_type = Some(a.get("type").cloned());
                        text = Some(String::new());
                    }
                    _ => {}
                }
            }
            Event::Empty(e) if e.name().as_ref() == b"output" => {
                if let Some(t) = current.as_mut() {
                    t.outputs
                        .push((attrs(&e).get("type").cloned(), String::new()));
                }
            }
            Event::Text(t) => {
                if let Some(buf) = text.as_mut() {
                    let raw = String::from_utf8_lossy(t.as_ref()).into_owned();
                    buf.push_str(
                        &quick_xml::escape::unescape(&raw)
                            .map(|c| c.into_owned())
                            .unwrap_or(raw),
                    );
                }
            }
            Event::GeneralRef(r) => {
                if let Some(buf) = text.as_mut() {
                    let name = String::from_utf8_lossy(r.as_ref()).into_owned();
                    let entity = format!("&{name};");
                    buf.push_str(
                        &quick_xml::escape::unescape(&entity)
                            .map(|c| c.into_owned())
                            .unwrap_or(entity),
                    );
                }
            }
            Event::CData(t) => {
                if let Some(buf) = text.as_mut() {
                    buf.push_str(&String::from_utf8_lossy(t.as_ref()));
                }
            }
            Event::End(e) => match e.name().as_ref() {
                b"expression" => {
                    if let (Some(t), Some(s)) = (current.as_mut(), text.take()) {
                        t.expression = s;
                    }
                }
                b"output" => {
                    if let (Some(t), Some(s), Some(ty)) =
                        (current.as_mut(), text.take(), output_type.take())
                    {
                        t.outputs.push((ty, s));
                    }
                }
                b"test" | b"modeTest" => tests.extend(current.take()),
                _ => {}
            },
            Event::Eof => break,
            _ => {}
        }
    }
    tests
}

/// Renders an item for comparison with an expected output.
fn render(item: &Item<'_>) -> String {
    item.to_display_string().unwrap_or_else(|| match item {
        Item::Node(n) => {
            let json = n.json().to_string();
            format!(
                "{}{}",
                n.type_name(),
                json.chars().take(60).collect::<String>()
            )
        }
        other => format!("{other:?}"),
    })
}

fn kind_matches(item: &Item<'_>, ty: &str) -> bool {
    let node_type = match item {
        Item::Node(n) => Some(n.type_name()),
        _ => None,
    };
    match ty {
        "boolean" => matches!(item, Item::Boolean(_)) || node_type == Some("boolean"),
        "integer" => {
            matches!(item, Item::Integer(_))
                || matches!(node_type, Some("integer" | "positiveInt" | "unsignedInt"))
        }
        "decimal" => {
            matches!(item, Item::Decimal(_) | Item::Integer(_)) || node_type == Some("decimal")
        }
        "date" => matches!(item, Item::Date(_)) || node_type == Some("date"),
        "dateTime" => {
            matches!(item, Item::DateTime(_)) || matches!(node_type, Some("dateTime" | "instant"))
        }
        "time" => matches!(item, Item::Time(_)) || node_type == Some("time"),
        "Quantity" => matches!(item, Item::Quantity(_)) || node_type == Some("Quantity"),
        _ => matches!(item, Item::String(_)) || node_type.is_some(),
    }
}

fn output_matches(item: &Item<'_>, ty: Option<&str>, expected: &str) -> bool {
    if let Some(ty) = ty {
        if !kind_matches(item, ty) {
            return false;
        }
    }
    let got = render(item);
    let want = expected
        .strip_prefix("@T")
        .or_else(|| expected.strip_prefix('@'))
        .unwrap_or(expected);
    if got == want {
        return true;
    }
    // Numbers compare by value (`1` vs `1.0`) when the expected type says decimal.
    if ty == Some("decimal") {
        if let (Ok(a), Ok(b)) = (got.parse::<f64>(), want.parse::<f64>()) {
            return a == b;
        }
    }
    false
}

enum Outcome {
    Pass,
    Fail(String),
    NoJson,
}

fn run(test: &Test, inputs: &mut HashMap<String, Option<Value>>) -> Outcome {
    let resource = match &test.input {
        None => Value::Null,
        Some(file) => {
            let json_name = file
                .strip_suffix(".xml")
                .map(|b| format!("{b}.json"))
                .unwrap_or_else(|| file.clone());
            let entry = inputs.entry(json_name.clone()).or_insert_with(|| {
                std::fs::read_to_string(data_dir().join(&json_name))
                    .ok()
                    .and_then(|s| serde_json::from_str(&s).ok())
            });
            match entry {
                Some(v) => v.clone(),
                None => return Outcome::NoJson,
            }
        }
    };
    let strict =
        test.mode.as_deref() == Some("strict") || test.invalid.as_deref() == Some("semantic");
    let ctx = Context::new().strict(strict);
    let result = Expression::parse(&test.expression)
        .map_err(|e| e.to_string())
        .and_then(|e| e.evaluate(&resource, &ctx).map_err(|e| e.to_string()));
    let items = match (result, &test.invalid) {
        (Err(_), Some(_)) => return Outcome::Pass,
        (Ok(r), Some(kind)) => {
            return Outcome::Fail(format!(
                "expected a {kind} error, got {:?}",
                r.iter().map(render).collect::<Vec<_>>()
            ))
        }
        (Err(e), None) => return Outcome::Fail(format!("error: {e}")),
        (Ok(r), None) => r,
    };
    let items = if test.predicate {
        vec![Item::Boolean(!items.is_empty())]
    } else {
        items
    };
    let got: Vec<String> = items.iter().map(render).collect();
    let fail = || {
        Outcome::Fail(format!(
            "expected {:?}, got {got:?}",
            test.outputs.iter().map(|(_, v)| v).collect::<Vec<_>>()
        ))
    };
    if items.len() != test.outputs.len() {
        return fail();
    }
    if test.ordered {
        for (item, (ty, want)) in items.iter().zip(&test.outputs) {
            if !output_matches(item, ty.as_deref(), want) {
                return fail();
            }
        }
    } else {
        let mut used = vec![false; items.len()];
        for (ty, want) in &test.outputs {
            match items
                .iter()
                .enumerate()
                .find(|(i, item)| !used[*i] && output_matches(item, ty.as_deref(), want))
            {
                Some((i, _)) => used[i] = true,
                None => return fail(),
            }
        }
    }
    Outcome::Pass
}

#[test]
fn official_r4_suite() {
    let path = data_dir().join("tests-fhir-r4.xml");
    let Ok(xml) = std::fs::read_to_string(&path) else {
        eprintln!("skipping: {} not found", path.display());
        return;
    };
    let tests = load_tests(&xml);
    assert!(tests.len() > 900, "parsed only {} tests", tests.len());
    let mut inputs = HashMap::new();
    let (mut passed, mut no_json) = (0, 0);
    let mut failures = Vec::new();
    for t in &tests {
        // Guard: a panic is a failure of the "never panics" invariant, reported per test.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(t, &mut inputs)))
                .unwrap_or_else(|_| Outcome::Fail("PANIC".into()));
        match outcome {
            Outcome::Pass => passed += 1,
            Outcome::NoJson => no_json += 1,
            Outcome::Fail(why) => failures.push(format!(
                "{} ({}): {} => {}",
                t.name,
                t.group,
                t.expression.replace('\n', " "),
                why
            )),
        }
    }
    let total = tests.len() - no_json;
    println!("FHIRPath R4 suite: {passed} passed / {} failed of {total} with JSON input; {no_json} skipped (no JSON input)", failures.len());
    for f in &failures {
        println!("  FAIL {f}");
    }
    assert!(
        failures.iter().all(|f| !f.ends_with("PANIC")),
        "a test panicked"
    );
    assert!(
        passed >= PASS_FLOOR,
        "regression: {passed} passed, floor is {PASS_FLOOR}"
    );
}
