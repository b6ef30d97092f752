//! Fuzz-style checks of the "never panics" invariant: random and mutated expression texts
//! must parse to a value or an error, and evaluate to a value or an error; deep nesting is
//! refused instead of overflowing the stack.

use serde_json::{json, Value};
use tessera_fhirpath::{Context, Expression};

/// xorshift64*: deterministic, dependency-free randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

const TOKENS: &[&str] = &[
    "Patient",
    "name",
    "given",
    "family",
    "Observation",
    "value",
    "code",
    "coding",
    "system",
    ".",
    ".",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    "'a'",
    "'x y'",
    "0",
    "1",
    "-1",
    "2.5",
    "1e3",
    "@2015",
    "@2015-02-04T14:34:28Z",
    "@T14",
    "@",
    "$this",
    "$index",
    "$total",
    "%resource",
    "%ucum",
    "%vs-x",
    "%undefined",
    " and ",
    " or ",
    " xor ",
    " implies ",
    " = ",
    " != ",
    " ~ ",
    " < ",
    " >= ",
    " | ",
    " + ",
    " - ",
    " * ",
    " / ",
    " div ",
    " mod ",
    " & ",
    " is ",
    " as ",
    " in ",
    " contains ",
    "Quantity",
    "System.Integer",
    "FHIR.string",
    "where(",
    "select(",
    "repeat(",
    "exists(",
    "all(",
    "iif(",
    "ofType(",
    "as(",
    "is(",
    "first()",
    "last()",
    "skip(",
    "take(",
    "substring(",
    "matches(",
    "replaceMatches(",
    "toQuantity(",
    "aggregate(",
    "sort(",
    "resolve()",
    "extension(",
    "children()",
    "descendants()",
    "lowBoundary(",
    "highBoundary(",
    "precision()",
    "power(",
    "log(",
    "round(",
    "encode(",
    "decode(",
    ",",
    "'mg'",
    " days",
    " 'wk'",
    "`x`",
    "//c\n",
    "/*",
    "*/",
    "\\",
    "'\\u00",
    "é",
    "🔥",
    "\u{0}",
    " ",
    "true",
    "false",
    "not()",
    "count()",
];

fn inputs() -> Vec<Value> {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/fhirpath-tests");
    let mut v = vec![
        Value::Null,
        json!({"resourceType": "Patient", "name": [{"given": ["a", null], "_given": [null, {"extension": []}]}], "birthDate": "1974-12-25"}),
        serde_json::from_str(r#"{"resourceType": "Observation", "valueQuantity": {"value": 1e400, "unit": "mg"}, "effectiveDateTime": "9999-12-31T23:59:59.9999999999+14:00", "subject": {"reference": "Patient/1"}}"#).unwrap(),
        json!({"resourceType": "Unknown", "deep": [[[{"x": 1}]]], "n": -0.0}),
    ];
    for f in [
        "patient-example.json",
        "observation-example.json",
        "questionnaire-example.json",
    ] {
        if let Some(j) = std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
        {
            v.push(j);
        }
    }
    v
}

/// Parses and evaluates `src`; returns how many evaluations succeeded.
fn exercise(src: &str, inputs: &[Value]) -> usize {
    let mut ok = 0;
    if let Ok(expr) = Expression::parse(src) {
        for input in inputs {
            for strict in [false, true] {
                ok += usize::from(expr.evaluate(input, &Context::new().strict(strict)).is_ok());
            }
        }
    }
    ok
}

#[test]
fn random_token_soup_never_panics() {
    let inputs = inputs();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut evaluated = 0;
    for _ in 0..20_000 {
        let n = 1 + rng.below(12);
        let src: String = (0..n).map(|_| TOKENS[rng.below(TOKENS.len())]).collect();
        evaluated += exercise(&src, &inputs);
    }
    assert!(evaluated > 1000, "only {evaluated} successful evaluations");
}

#[test]
fn random_bytes_never_panic() {
    let inputs = inputs();
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let n = rng.below(24);
        let bytes: Vec<u8> = (0..n).map(|_| (rng.next() & 0xff) as u8).collect();
        exercise(&String::from_utf8_lossy(&bytes), &inputs);
    }
}

#[test]
fn mutated_suite_expressions_never_panic() {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data/fhirpath-tests");
    let Ok(xml) = std::fs::read_to_string(dir.join("tests-fhir-r4.xml")) else {
        return;
    };
    let exprs: Vec<String> = xml
        .split("<expression")
        .skip(1)
        .filter_map(|s| {
            let body = &s[s.find('>')? + 1..];
            Some(
                body[..body.find("</expression>")?]
                    .replace("&lt;", "<")
                    .replace("&gt;", ">")
                    .replace("&amp;", "&"),
            )
        })
        .collect();
    assert!(exprs.len() > 900);
    let inputs = inputs();
    let mut rng = Rng(7);
    let mut evaluated = 0;
    for e in &exprs {
        evaluated += exercise(e, &inputs);
        for _ in 0..8 {
            let mut chars: Vec<char> = e.chars().collect();
            for _ in 0..1 + rng.below(3) {
                if chars.is_empty() {
                    break;
                }
                let i = rng.below(chars.len());
                match rng.below(4) {
                    0 => {
                        chars.remove(i);
                    }
                    1 => chars.insert(
                        i,
                        TOKENS[rng.below(TOKENS.len())]
                            .chars()
                            .next()
                            .unwrap_or('('),
                    ),
                    2 => {
                        let j = rng.below(chars.len());
                        chars.swap(i, j);
                    }
                    _ => chars.truncate(i),
                }
            }
            evaluated += exercise(&chars.iter().collect::<String>(), &inputs);
        }
    }
    println!("{evaluated} successful evaluations");
    assert!(
        evaluated > 10_000,
        "only {evaluated} successful evaluations"
    );
}

#[test]
fn deep_nesting_is_refused_not_overflowed() {
    let n = 100_000;
    for src in [
        format!("{}1{}", "(".repeat(n), ")".repeat(n)),
        format!("{}a", "a.".repeat(n)),
        format!("{}1", "1 + ".repeat(n)),
        format!("{}1", "-".repeat(n)),
        format!("1{}", ".not()".repeat(n)),
        format!("{}1{}", "iif(true, ".repeat(n), ")".repeat(n)),
        format!("{}1", "1 | ".repeat(n)),
        format!("Patient{}", "[0]".repeat(n)),
    ] {
        assert!(Expression::parse(&src).is_err(), "{}…", &src[..20]);
    }
}

#[test]
fn deepest_accepted_expressions_evaluate() {
    let patient = json!({"resourceType": "Patient", "name": [{"given": ["a"]}]});
    let ctx = Context::new();
    let mut accepted = 0;
    for depth in [10, 40, 60, 90, 120, 127, 128] {
        for src in [
            format!("{}1", "1 + ".repeat(depth)),
            format!("Patient{}", ".name".repeat(depth)),
            format!(
                "{}true{}",
                "iif(true, ".repeat(depth / 2),
                ", false)".repeat(depth / 2)
            ),
            format!("{}1{}", "(".repeat(depth), ")".repeat(depth)),
            format!("name{}", ".where(given.exists())".repeat(depth / 2)),
            format!("{}true", "true and ".repeat(depth)),
        ] {
            if let Ok(e) = Expression::parse(&src) {
                accepted += 1;
                e.evaluate(&patient, &ctx).unwrap();
            }
        }
    }
    assert!(accepted > 20);
}

#[test]
fn extreme_values_are_errors_or_values() {
    let ctx = Context::new();
    for src in [
        "1 'm9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9' = 1 'm'",
        "1 'm9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9' * 1 'm9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9'",
        "1 'km9/mm9' = 1 '1'",
        "@2015 + 9223372036854775807 days",
        "@2015-01-01T00:00 - 9223372036854775807 'ms'",
        "@2015-01-01T00:00 + 100000000000000 minutes",
        "@T10:00 + 9223372036854775807 hours",
        "9223372036854775807 + 1",
        "-9223372036854775807 - 2",
        "(-9223372036854775807 - 1).abs()",
        "9223372036854775807 * 9223372036854775807",
        "79228162514264337593543950335.0 * 10",
        "79228162514264337593543950335.0 + 79228162514264337593543950335.0",
        "1.0 / 0.0000000000000000000000000001",
        "1e400",
        "2.power(100000)",
        "10.0.power(1000)",
        "1000.exp()",
        "1.587.lowBoundary(28)",
        "99999999999999999999999999999.lowBoundary(0)",
        "0.0000000000000000000000000001.highBoundary(28)",
        "'abc'.substring(9223372036854775807, 9223372036854775807)",
        "'x'.matches('(((((((((((a*)*)*)*)*)*)*)*)*)*)*)')",
        "'x'.matches('[')",
        "(1|2|3).aggregate($this + $total, 0)",
        "'1 \\'m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9.m9\\''.toQuantity('m')",
    ] {
        if let Ok(e) = Expression::parse(src) {
            let _ = e.evaluate(&Value::Null, &ctx);
        }
    }
}
