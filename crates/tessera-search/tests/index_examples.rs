//! Index extraction over the official R4 examples: specific values per parameter type.

mod common;

use common::{example, examples};
use serde_json::json;
use tessera_search::{composite_entries, index_resource, IndexEntry, IndexValue};

fn values<'a>(entries: &'a [IndexEntry], param: &str) -> Vec<&'a IndexValue> {
    entries
        .iter()
        .filter(|e| e.param == param)
        .map(|e| &e.value)
        .collect()
}

fn token(system: Option<&str>, code: &str, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(Into::into),
        code: code.into(),
        text: text.map(Into::into),
    }
}

fn reference(ty: &str, id: &str) -> IndexValue {
    IndexValue::Reference {
        target_type: Some(ty.into()),
        target_id: Some(id.into()),
        url: None,
    }
}

fn string(normalized: &str, exact: &str) -> IndexValue {
    IndexValue::String {
        normalized: normalized.into(),
        exact: exact.into(),
    }
}

/// Microseconds since the epoch of a UTC date-time given as (y, m, d, h, min, s).
fn micros(y: i64, m: i64, d: i64, h: i64, min: i64, s: i64) -> i64 {
    // Days from civil, for the test's own independent arithmetic.
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    ((days * 24 + h) * 60 + min) * 60_000_000 + s * 1_000_000
}

const DAY: i64 = 86_400_000_000;

#[test]
fn observation_example() {
    let obs = example("observation-example.json");
    let e = index_resource(&obs);
    assert_eq!(values(&e, "_id"), [&token(None, "example", None)]);
    let code = values(&e, "code");
    assert_eq!(code.len(), 4);
    assert!(code.contains(&&token(
        Some("http://loinc.org"),
        "29463-7",
        Some("body weight")
    )));
    assert!(code.contains(&&token(
        Some("http://snomed.info/sct"),
        "27113001",
        Some("body weight")
    )));
    assert_eq!(values(&e, "subject"), [&reference("Patient", "example")]);
    assert_eq!(values(&e, "patient"), [&reference("Patient", "example")]);
    assert_eq!(
        values(&e, "encounter"),
        [&reference("Encounter", "example")]
    );
    assert_eq!(values(&e, "status"), [&token(None, "final", None)]);
    assert_eq!(
        values(&e, "category"),
        [&token(
            Some("http://terminology.hl7.org/CodeSystem/observation-category"),
            "vital-signs",
            Some("vital signs")
        )]
    );
    // effectiveDateTime 2016-03-28: the whole day, UTC.
    let day = micros(2016, 3, 28, 0, 0, 0);
    assert_eq!(
        values(&e, "date"),
        [&IndexValue::Date {
            low: day,
            high: day + DAY - 1
        }]
    );
    let q = IndexValue::Quantity {
        value: 185.0,
        low: 184.5,
        high: 185.5,
        system: Some("http://unitsofmeasure.org".into()),
        code: Some("[lb_av]".into()),
        unit: Some("lbs".into()),
    };
    assert_eq!(values(&e, "value-quantity"), [&q]);
    assert_eq!(values(&e, "combo-value-quantity"), [&q]);
    // No component: no component values.
    assert!(values(&e, "component-code").is_empty());
    // Composites pair every code with the value.
    let c = composite_entries(&obs);
    let cvq: Vec<_> = c
        .iter()
        .filter(|c| c.param == "code-value-quantity")
        .collect();
    assert_eq!(cvq.len(), 4);
    assert_eq!(
        cvq[0].parts,
        [
            token(Some("http://loinc.org"), "29463-7", Some("body weight")),
            q.clone()
        ]
    );
    assert_eq!(
        c.iter()
            .filter(|c| c.param == "combo-code-value-quantity")
            .count(),
        4
    );
    assert!(c
        .iter()
        .all(|c| c.param != "component-code-value-quantity" && c.param != "code-value-concept"));
}

#[test]
fn patient_example() {
    let patient = example("patient-example.json");
    let e = index_resource(&patient);
    assert_eq!(
        values(&e, "family"),
        [
            &string("chalmers", "Chalmers"),
            &string("windsor", "Windsor")
        ]
    );
    // Deduplicated: Peter and James appear in two names.
    assert_eq!(
        values(&e, "given"),
        [
            &string("peter", "Peter"),
            &string("james", "James"),
            &string("jim", "Jim")
        ]
    );
    let name = values(&e, "name");
    assert!(
        name.contains(&&string("chalmers", "Chalmers")) && name.contains(&&string("jim", "Jim"))
    );
    let day = micros(1974, 12, 25, 0, 0, 0);
    assert_eq!(
        values(&e, "birthdate"),
        [&IndexValue::Date {
            low: day,
            high: day + DAY - 1
        }]
    );
    assert_eq!(
        values(&e, "identifier"),
        [&token(
            Some("urn:oid:1.2.36.146.595.217.0.1"),
            "12345",
            None
        )]
    );
    assert_eq!(values(&e, "gender"), [&token(None, "male", None)]);
    assert_eq!(values(&e, "active"), [&token(None, "true", None)]);
    assert_eq!(values(&e, "deceased"), [&token(None, "false", None)]);
    assert_eq!(
        values(&e, "organization"),
        [&reference("Organization", "1")]
    );
    // ContactPoint: the value, no system; the telecom without a value gives nothing.
    assert_eq!(values(&e, "phone").len(), 3);
    assert!(values(&e, "telecom").contains(&&token(None, "(03) 5555 6473", None)));
    assert_eq!(
        values(&e, "address-city"),
        [&string("pleasantville", "PleasantVille")]
    );
    assert!(values(&e, "address").contains(&&string("534 erewhon st", "534 Erewhon St")));
    assert_eq!(values(&e, "address-use"), [&token(None, "home", None)]);
    // The contact's accented name is not a Patient.name.
    assert!(!values(&e, "family")
        .iter()
        .any(|v| matches!(v, IndexValue::String { exact, .. } if exact.contains("March"))));
}

#[test]
fn codeable_concept_text_and_identifier_type_text() {
    let condition = example("condition-example.json");
    let e = index_resource(&condition);
    let code = values(&e, "code");
    // The coding's display and the concept's text both serve `:text`.
    assert!(code.contains(&&token(
        Some("http://snomed.info/sct"),
        "39065001",
        Some("burn of ear")
    )));
    assert!(code.contains(&&token(
        Some("http://snomed.info/sct"),
        "39065001",
        Some("burnt ear")
    )));
    assert_eq!(
        values(&e, "clinical-status"),
        [&token(
            Some("http://terminology.hl7.org/CodeSystem/condition-clinical"),
            "active",
            None
        )]
    );
    let day = micros(2012, 5, 24, 0, 0, 0);
    assert_eq!(
        values(&e, "onset-date"),
        [&IndexValue::Date {
            low: day,
            high: day + DAY - 1
        }]
    );

    // A text-only concept: an entry with an empty code carries the text.
    let obs = example("observation-decimal.json");
    let e = index_resource(&obs);
    assert_eq!(
        values(&e, "code"),
        [&token(None, "", Some("decimal testing observation"))]
    );
    let c = composite_entries(&obs);
    // Seven components, six distinct (code, value) pairs: `1.0` and `1.00` differ in precision.
    let cvq: Vec<_> = c
        .iter()
        .filter(|c| c.param == "component-code-value-quantity")
        .collect();
    assert_eq!(cvq.len(), 6);
    match (&cvq[0].parts[1], &cvq[1].parts[1]) {
        (
            IndexValue::Quantity {
                value: a, low: la, ..
            },
            IndexValue::Quantity {
                value: b, low: lb, ..
            },
        ) => {
            assert_eq!((a, b), (&1.0, &1.0));
            assert!((la - 0.95).abs() < 1e-12 && (lb - 0.995).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }

    let id = json!({"resourceType": "Patient", "identifier": [{"type": {"text": "Medical Record Nº"}, "system": "urn:x", "value": "7"}]});
    assert_eq!(
        values(&index_resource(&id), "identifier"),
        [&token(Some("urn:x"), "7", Some("medical record no"))]
    );
}

#[test]
fn periods_timings_and_instants() {
    let appointment = example("appointment-example.json");
    let e = index_resource(&appointment);
    let start = micros(2013, 12, 10, 9, 0, 0);
    assert_eq!(
        values(&e, "date"),
        [&IndexValue::Date {
            low: start,
            high: start + 999_999
        }]
    );
    assert!(values(&e, "actor").contains(&&reference("Patient", "example")));
    assert!(values(&e, "practitioner").contains(&&reference("Practitioner", "example")));

    // An open-ended period.
    let careteam = example("careteam-example.json");
    let e = index_resource(&careteam);
    let end = micros(2013, 1, 1, 0, 0, 0) + DAY - 1;
    assert_eq!(
        values(&e, "date"),
        [&IndexValue::Date {
            low: i64::MIN,
            high: end
        }]
    );
    // `#pr1` is contained: not indexed as a participant.
    assert_eq!(
        values(&e, "participant"),
        [&reference("Patient", "example")]
    );

    let timing = json!({
        "resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": "Patient/p"},
        "medicationCodeableConcept": {"text": "x"},
        "dosageInstruction": [{"timing": {"event": ["2020-01-02T10:00:00+02:00"], "repeat": {"boundsPeriod": {"start": "2020-01-01", "end": "2020-01-31"}}}}],
        "authoredOn": "2020-01-01T00:00:00Z"
    });
    let e = index_resource(&timing);
    let at = micros(2020, 1, 2, 8, 0, 0);
    let bounds = IndexValue::Date {
        low: micros(2020, 1, 1, 0, 0, 0),
        high: micros(2020, 1, 31, 0, 0, 0) + DAY - 1,
    };
    assert_eq!(
        values(&e, "authoredon"),
        [&IndexValue::Date {
            low: micros(2020, 1, 1, 0, 0, 0),
            high: micros(2020, 1, 1, 0, 0, 0) + 999_999
        }]
    );
    // MedicationRequest `date` is dosageInstruction.timing.event only.
    assert_eq!(
        values(&e, "date"),
        [&IndexValue::Date {
            low: at,
            high: at + 999_999
        }]
    );
    let careplan = json!({"resourceType": "CarePlan", "status": "active", "intent": "plan", "subject": {"reference": "Patient/p"},
        "activity": [{"detail": {"status": "scheduled", "scheduledTiming": {"event": ["2020-01-02T10:00:00+02:00"],
            "repeat": {"boundsPeriod": {"start": "2020-01-01", "end": "2020-01-31"}}}}}]});
    assert_eq!(
        values(&index_resource(&careplan), "activity-date"),
        [
            &IndexValue::Date {
                low: at,
                high: at + 999_999
            },
            &bounds
        ]
    );
    // medicationCodeableConcept with text only.
    assert_eq!(values(&e, "code"), [&token(None, "", Some("x"))]);
}

#[test]
fn meta_parameters() {
    let r = json!({
        "resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "t"},
        "meta": {
            "lastUpdated": "2021-07-01T12:30:45.123+00:00",
            "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns|4.0.1"],
            "tag": [{"system": "http://example.org/tags", "code": "review", "display": "Needs Review"}],
            "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
            "source": "http://example.org/source#abc"
        }
    });
    let e = index_resource(&r);
    let t = micros(2021, 7, 1, 12, 30, 45) + 123_000;
    assert_eq!(
        values(&e, "_lastUpdated"),
        [&IndexValue::Date {
            low: t,
            high: t + 999
        }]
    );
    assert_eq!(
        values(&e, "_profile"),
        [&IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: Some("http://hl7.org/fhir/StructureDefinition/vitalsigns".into())
        }]
    );
    assert_eq!(
        values(&e, "_tag"),
        [&token(
            Some("http://example.org/tags"),
            "review",
            Some("needs review")
        )]
    );
    assert_eq!(
        values(&e, "_security"),
        [&token(
            Some("http://terminology.hl7.org/CodeSystem/v3-Confidentiality"),
            "R",
            None
        )]
    );
    assert_eq!(
        values(&e, "_source"),
        [&IndexValue::Uri("http://example.org/source#abc".into())]
    );
}

#[test]
fn references_of_every_form() {
    let r = json!({
        "resourceType": "Observation", "status": "final", "code": {"text": "t"},
        "subject": {"reference": "Patient/123/_history/4"},
        "performer": [
            {"reference": "http://example.org/fhir/Practitioner/abc"},
            {"reference": "urn:uuid:5f6e1c3a-0000-4000-8000-000000000000"},
            {"reference": "#contained"},
            {"reference": "https://example.org/elsewhere"},
            {"display": "display only"},
            {"reference": "Organization/o1"}
        ],
        "basedOn": [{"reference": "ServiceRequest/s1"}]
    });
    let e = index_resource(&r);
    assert_eq!(values(&e, "subject"), [&reference("Patient", "123")]);
    assert_eq!(
        values(&e, "performer"),
        [
            &IndexValue::Reference {
                target_type: Some("Practitioner".into()),
                target_id: Some("abc".into()),
                url: Some("http://example.org/fhir/Practitioner/abc".into())
            },
            &IndexValue::Reference {
                target_type: None,
                target_id: None,
                url: Some("https://example.org/elsewhere".into())
            },
            &reference("Organization", "o1"),
        ]
    );
    assert_eq!(values(&e, "based-on"), [&reference("ServiceRequest", "s1")]);
}

#[test]
fn numbers_ranges_money_and_canonicals() {
    let risk = example("riskassessment-example.json");
    let e = index_resource(&risk);
    let p = values(&e, "probability");
    assert!(p.len() >= 3, "{p:?}");
    match p[0] {
        IndexValue::Number { value, low, high } => {
            assert_eq!(*value, 0.000168);
            assert!((low - 0.0001675).abs() < 1e-15 && (high - 0.0001685).abs() < 1e-15);
        }
        other => panic!("{other:?}"),
    }

    // useContext with a `>` comparator opens the range upwards.
    let vs = example("valueset-example.json");
    let e = index_resource(&vs);
    assert!(
        matches!(values(&e, "context-quantity")[..], [IndexValue::Quantity { value, high, .. }] if *value == 18.0 && *high == f64::MAX)
    );
    assert_eq!(
        values(&e, "url"),
        [&IndexValue::Uri(
            "http://hl7.org/fhir/ValueSet/example-extensional".into()
        )]
    );
    let ctv = composite_entries(&vs);
    assert!(ctv.iter().any(|c| c.param == "context-type-quantity"
        && c.parts[0]
            == token(
                Some("http://terminology.hl7.org/CodeSystem/usage-context-type"),
                "age",
                None
            )));

    let range = json!({"resourceType": "Group", "type": "person", "actual": true,
        "characteristic": [{"code": {"text": "age"}, "valueRange": {"low": {"value": 18, "code": "a", "system": "http://unitsofmeasure.org"}}, "exclude": false}]});
    let c = composite_entries(&range);
    assert!(
        c.is_empty(),
        "characteristic-value takes a token value, not a Range: {c:?}"
    );

    let claim = json!({"resourceType": "ChargeItem", "status": "billable", "code": {"text": "x"}, "subject": {"reference": "Patient/p"},
        "priceOverride": {"value": 12.5, "currency": "EUR"}, "factorOverride": 0.8});
    let e = index_resource(&claim);
    assert_eq!(
        values(&e, "price-override"),
        [&IndexValue::Quantity {
            value: 12.5,
            low: 12.45,
            high: 12.55,
            system: Some("urn:iso:std:iso:4217".into()),
            code: Some("EUR".into()),
            unit: Some("EUR".into())
        }]
    );
    assert!(
        matches!(values(&e, "factor-override")[..], [IndexValue::Number { value, .. }] if *value == 0.8)
    );

    // A canonical under a reference parameter: the URL without its version.
    let q = json!({"resourceType": "QuestionnaireResponse", "status": "completed", "questionnaire": "http://example.org/Questionnaire/q1|2.0"});
    assert_eq!(
        values(&index_resource(&q), "questionnaire"),
        [&IndexValue::Reference {
            target_type: None,
            target_id: None,
            url: Some("http://example.org/Questionnaire/q1".into())
        }]
    );
}

#[test]
fn every_example_indexes() {
    let mut total = 0;
    for (name, resource) in examples() {
        let entries = index_resource(&resource);
        let composites = composite_entries(&resource);
        assert!(
            entries.iter().any(|e| e.param == "_id") || resource.get("id").is_none(),
            "{name}"
        );
        for (i, a) in entries.iter().enumerate() {
            assert!(!entries[i + 1..].contains(a), "{name}: duplicate {a:?}");
            match &a.value {
                IndexValue::Date { low, high } => assert!(low <= high, "{name}: {a:?}"),
                IndexValue::Number { value, low, high }
                | IndexValue::Quantity {
                    value, low, high, ..
                } => {
                    assert!(low <= value && value <= high, "{name}: {a:?}")
                }
                _ => {}
            }
        }
        total += entries.len() + composites.len();
    }
    assert!(total > 500, "{total}");
}

#[test]
fn robustness() {
    for r in [
        json!(null),
        json!({}),
        json!({"resourceType": "NoSuchType", "id": "x"}),
        json!({"resourceType": 7}),
        json!({"resourceType": "Patient", "name": "not an array", "birthDate": 12, "gender": {"x": 1}}),
        json!({"resourceType": "Observation", "effectiveDateTime": "not a date", "valueQuantity": {"value": "1"}, "code": []}),
        json!({"resourceType": "Patient", "birthDate": "2020-02-30", "identifier": [{"system": 1, "value": ["x"]}]}),
    ] {
        let _ = index_resource(&r);
        let _ = composite_entries(&r);
    }
    assert!(index_resource(&json!({"resourceType": "NoSuchType", "id": "x"})).is_empty());
    let e = index_resource(&json!({"resourceType": "Patient", "birthDate": "2020-02-30"}));
    assert!(values(&e, "birthdate").is_empty());
}
