//! Properties: parsing never panics, whatever the names and values; date values always
//! cover a non-empty range; indexing never panics on odd JSON.

use proptest::prelude::*;
use serde_json::json;
use tessera_search::query::{parse, Value};
use tessera_search::{composite_entries, index_resource};

/// Parameter names built from real pieces (codes, modifiers, chains, `_has`) and noise.
fn name() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("code".to_string()),
        Just("subject".to_string()),
        Just("patient".to_string()),
        Just("name".to_string()),
        Just("birthdate".to_string()),
        Just("value-quantity".to_string()),
        Just("code-value-quantity".to_string()),
        Just("_has".to_string()),
        Just("Observation".to_string()),
        Just("Patient".to_string()),
        Just("_include".to_string()),
        Just("_sort".to_string()),
        Just("_count".to_string()),
        Just("missing".to_string()),
        Just("not".to_string()),
        Just("exact".to_string()),
        Just("of-type".to_string()),
        "[a-zA-Z_\\-]{0,8}",
        any::<String>(),
    ];
    let sep = prop_oneof![Just(":"), Just("."), Just("")];
    prop::collection::vec((piece, sep), 1..6)
        .prop_map(|parts| parts.into_iter().map(|(p, s)| p + s).collect())
}

fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z]{0,2}[0-9\\-:T.Z+|$,\\\\ ]{0,30}",
        "(eq|ne|gt|lt|ge|le|sa|eb|ap)?[0-9]{4}(-[0-9]{2}(-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\\.[0-9]{1,9})?)?(Z|[+\\-][0-9]{2}:[0-9]{2})?)?)?)?",
        any::<String>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_never_panics(
        rt in prop_oneof![Just(None), Just(Some("Observation")), Just(Some("Patient")), Just(Some("Encounter"))],
        params in prop::collection::vec((name(), value()), 0..5),
        strict in any::<bool>(),
    ) {
        let _ = parse(rt, &params, strict);
    }

    #[test]
    fn date_values_are_ranges(v in value()) {
        let params = vec![("birthdate".to_string(), v)];
        if let Ok(r) = parse(Some("Patient"), &params, true) {
            for c in &r.criteria {
                for value in &c.values {
                    match value {
                        Value::Date { low, high, .. } => prop_assert!(low <= high),
                        other => prop_assert!(false, "not a date: {:?}", other),
                    }
                }
            }
        }
    }

    #[test]
    fn valid_dates_parse(y in 1u32..=9999, m in 1u32..=12, d in 1u32..=28, h in 0u32..24, mi in 0u32..60, s in 0u32..60,
                         frac in prop::option::of(0u32..1_000_000), tz in prop::option::of(-14i32..=14)) {
        let mut text = format!("{y:04}-{m:02}-{d:02}T{h:02}:{mi:02}:{s:02}");
        if let Some(f) = frac { text += &format!(".{f:06}"); }
        if let Some(z) = tz { text += &if z == 0 { "Z".to_string() } else { format!("{}{:02}:00", if z < 0 { '-' } else { '+' }, z.abs()) }; }
        for candidate in [text.clone(), format!("{y:04}"), format!("{y:04}-{m:02}"), format!("{y:04}-{m:02}-{d:02}")] {
            let r = parse(Some("Patient"), &[("birthdate".to_string(), candidate.clone())], true);
            let r = r.map_err(|e| format!("{candidate}: {e:?}"));
            prop_assert!(r.is_ok(), "{:?}", r);
            match &r.unwrap().criteria[0].values[0] {
                Value::Date { low, high, .. } => prop_assert!(low <= high),
                other => prop_assert!(false, "{:?}", other),
            }
        }
    }

    #[test]
    fn index_never_panics(
        rt in prop_oneof![Just("Observation"), Just("Patient"), Just("Encounter"), Just("Condition")],
        key in prop_oneof![Just("code"), Just("subject"), Just("name"), Just("birthDate"), Just("valueQuantity"), Just("effectivePeriod"), Just("identifier"), Just("component"), Just("period")],
        leaf in prop_oneof![
            any::<String>().prop_map(|s| json!(s)),
            any::<f64>().prop_map(|f| json!(f)),
            any::<bool>().prop_map(|b| json!(b)),
            Just(json!(null)),
        ],
        inner in "[a-z]{1,8}",
    ) {
        for v in [leaf.clone(), json!([leaf.clone()]), json!({inner.clone(): leaf.clone()}), json!([{inner.clone(): [leaf.clone()]}]),
                  json!({"coding": [{"system": leaf.clone(), "code": leaf.clone()}]}), json!({"value": leaf.clone(), "code": leaf.clone()}),
                  json!({"start": leaf.clone(), "end": leaf.clone()}), json!({"reference": leaf.clone()})] {
            let r = json!({"resourceType": rt, "id": "x", key: v});
            let _ = index_resource(&r);
            let _ = composite_entries(&r);
        }
    }
}
