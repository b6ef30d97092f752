//! Property tests: validation never panics, and agrees with the published regexes.

use proptest::prelude::*;
use regex::Regex;
use serde_json::{json, Map, Value};
use tessera_fhir::definitions::Primitive;
use tessera_fhir::validation::{check_format, is_valid_id, validate, Limits};

/// Property names mixing real FHIR element names with junk, so the walk goes deep.
const KEYS: &[&str] = &[
    "resourceType",
    "id",
    "meta",
    "versionId",
    "name",
    "given",
    "_given",
    "family",
    "extension",
    "url",
    "valueString",
    "valueQuantity",
    "_valueString",
    "value",
    "contained",
    "reference",
    "subject",
    "status",
    "code",
    "coding",
    "system",
    "entry",
    "resource",
    "item",
    "linkId",
    "birthDate",
    "_birthDate",
    "x",
    "",
];
const STRINGS: &[&str] = &[
    "Patient",
    "Observation",
    "Bundle",
    "Questionnaire",
    "Foo",
    "",
    " ",
    "Patient/1",
    "#a",
    "urn:uuid:x",
    "2020-13-01",
    "2020-01-01",
    "final",
    "http://x",
    "a b",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        prop::sample::select(STRINGS).prop_map(|s| json!(s)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(8, 256, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect::<Map<_, _>>())),
        ]
    })
}

fn resource() -> impl Strategy<Value = Value> {
    (prop::sample::select(&["Patient", "Observation", "Bundle", "Questionnaire", "Foo"][..]), json_value()).prop_map(|(ty, v)| {
        let mut map = match v {
            Value::Object(m) => m,
            other => Map::from_iter([("name".to_string(), other)]),
        };
        map.insert("resourceType".into(), json!(ty));
        Value::Object(map)
    })
}

fn anchored(p: Primitive) -> Regex {
    Regex::new(&format!("^(?:{})$", p.regex().unwrap())).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn validate_never_panics(v in json_value()) {
        let _ = validate(&v, &Limits::default());
        let _ = validate(&v, &Limits { max_depth: 3 });
    }

    #[test]
    fn validate_resources_never_panics(v in resource()) {
        if let Err(issues) = validate(&v, &Limits::default()) {
            prop_assert!(issues.iter().all(|i| !i.diagnostics.is_empty()));
        }
    }

    #[test]
    fn valid_ids_round_trip(id in "[A-Za-z0-9.-]{1,64}") {
        prop_assert!(is_valid_id(&id));
        let patient = json!({"resourceType": "Patient", "id": id});
        prop_assert!(validate(&patient, &Limits::default()).is_ok());
        let reference = format!("Patient/{id}");
        prop_assert_eq!(tessera_fhir::reference::parse_relative(&reference), Some(("Patient", id.as_str())));
        let serialised = serde_json::to_string(&patient).unwrap();
        let back: Value = serde_json::from_str(&serialised).unwrap();
        prop_assert_eq!(back["id"].as_str(), Some(id.as_str()));
    }

    #[test]
    fn invalid_ids_rejected(id in "[A-Za-z0-9.-]{0,70}[^A-Za-z0-9.-]?") {
        let valid = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        prop_assert_eq!(is_valid_id(&id), valid);
    }

    /// The hand-written date/time scanners accept exactly what the published regexes
    /// accept, except impossible calendar days (`2019-02-29`), which they reject too.
    #[test]
    fn dates_agree_with_regex(s in "[0-9]{4}(-[01][0-9](-[0-3][0-9](T[0-2][0-9]:[0-6][0-9](:[0-6][0-9](\\.[0-9]{0,3})?)?([Z+-]([01][0-9]:[0-6][0-9])?)?)?)?)?") {
        for p in [Primitive::Date, Primitive::DateTime, Primitive::Instant] {
            let by_regex = anchored(p).is_match(&s);
            let by_hand = check_format(p, &s);
            if by_hand {
                prop_assert!(by_regex, "{} {s}", p.name());
            } else if by_regex {
                let day: u32 = s[8..10].parse().unwrap();
                prop_assert!(day > 28, "{} {s}", p.name());
            }
        }
    }

    #[test]
    fn times_codes_and_ids_agree_with_regex(s in "[0-9:. a-z\\t-]{0,12}") {
        for p in [Primitive::Time, Primitive::Code, Primitive::Id, Primitive::Uri, Primitive::Oid] {
            if s.is_empty() { continue; }
            prop_assert_eq!(check_format(p, &s), anchored(p).is_match(&s), "{} {:?}", p.name(), s);
        }
    }
}

#[test]
fn regexes_agree_on_samples() {
    let samples = ["urn:oid:1.2.840.10008", "urn:oid:2", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", "aGVsbG8=", "YWJj ZGVm", "YQ=="];
    for s in samples {
        for p in [Primitive::Oid, Primitive::Uuid, Primitive::Base64Binary] {
            assert_eq!(check_format(p, s), anchored(p).is_match(s), "{} {s}", p.name());
        }
    }
    // Stricter than the regex, which lets `=` appear anywhere: padding only at the end.
    assert!(anchored(Primitive::Base64Binary).is_match("a==="));
    assert!(!check_format(Primitive::Base64Binary, "a==="));
}

/// Required-bound code elements: (resource with a placeholder, its path, its codes).
const REQUIRED_CODES: &[(&str, &str, &[&str])] = &[
    ("Patient", "gender", &["male", "female", "other", "unknown"]),
    ("Observation", "status", &["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"]),
    ("Encounter", "status", &["planned", "arrived", "triaged", "in-progress", "onleave", "finished", "cancelled", "entered-in-error", "unknown"]),
];

fn with_code(resource_type: &str, element: &str, code: &str) -> Value {
    let mut r = match resource_type {
        "Observation" => json!({"resourceType": "Observation", "code": {"text": "x"}}),
        "Encounter" => json!({"resourceType": "Encounter", "class": {"code": "AMB"}}),
        _ => json!({"resourceType": resource_type}),
    };
    r[element] = json!(code);
    r
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any code outside the value set of a required binding is refused, with the element
    /// path and the value set named; the value set's own codes are accepted.
    #[test]
    fn invalid_codes_on_required_bindings_are_refused(which in 0..REQUIRED_CODES.len(), code in "[A-Za-z0-9][A-Za-z0-9 .-]{0,20}[A-Za-z0-9]") {
        let (resource_type, element, codes) = REQUIRED_CODES[which];
        let resource = with_code(resource_type, element, &code);
        let result = validate(&resource, &Limits::default());
        if codes.contains(&code.as_str()) {
            prop_assert!(result.is_ok(), "{code}: {result:?}");
        } else if !code.contains("  ") {
            let issues = result.expect_err("refused");
            prop_assert_eq!(issues.len(), 1, "{:?}", issues);
            prop_assert_eq!(issues[0].code, tessera_fhir::IssueType::CodeInvalid);
            let path = format!("{resource_type}.{element}");
            prop_assert_eq!(&issues[0].expression, &vec![path]);
            prop_assert!(issues[0].diagnostics.contains("ValueSet/"), "{}", issues[0].diagnostics);
        }
    }
}

#[test]
fn valid_codes_on_required_bindings_are_accepted() {
    for (resource_type, element, codes) in REQUIRED_CODES {
        for code in *codes {
            let r = with_code(resource_type, element, code);
            assert!(validate(&r, &Limits::default()).is_ok(), "{r}");
        }
    }
}
