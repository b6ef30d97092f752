//! Search request parsing: every modifier, prefix, escape, chain, `_has` and result
//! parameter form, and the error messages.

use tessera_search::query::*;
use tessera_search::ParamKind;

fn pairs(params: &[(&str, &str)]) -> Vec<(String, String)> {
    params
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn ok(rt: &str, params: &[(&str, &str)]) -> SearchRequest {
    parse(Some(rt), &pairs(params), true).unwrap_or_else(|e| panic!("{params:?}: {e:?}"))
}

fn one(rt: &str, name: &str, value: &str) -> Criterion {
    let mut r = ok(rt, &[(name, value)]);
    assert_eq!(r.criteria.len(), 1);
    r.criteria.remove(0)
}

fn err(rt: Option<&str>, params: &[(&str, &str)]) -> Vec<String> {
    match parse(rt, &pairs(params), true) {
        Ok(r) => panic!("{params:?} parsed: {r:?}"),
        Err(e) => e.into_iter().map(|e| e.to_string()).collect(),
    }
}

fn err1(rt: &str, name: &str, value: &str) -> String {
    let e = err(Some(rt), &[(name, value)]);
    assert_eq!(e.len(), 1, "{e:?}");
    e.into_iter().next().unwrap()
}

fn tok(system: Option<Option<&str>>, code: Option<&str>) -> Value {
    Value::Token {
        system: system.map(|s| s.map(str::to_string)),
        code: code.map(str::to_string),
    }
}

const Y2020: i64 = 1_577_836_800_000_000;
const Y2021: i64 = 1_609_459_200_000_000;

#[test]
fn tokens() {
    let c = one("Observation", "code", "http://loinc.org|1234-5");
    assert_eq!(
        (c.param.as_str(), c.kind, &c.modifier),
        ("code", ParamKind::Token, &None)
    );
    assert_eq!(
        c.values,
        [tok(Some(Some("http://loinc.org")), Some("1234-5"))]
    );
    assert_eq!(
        one("Observation", "code", "1234-5").values,
        [tok(None, Some("1234-5"))]
    );
    assert_eq!(
        one("Observation", "code", "|1234-5").values,
        [tok(Some(None), Some("1234-5"))]
    );
    assert_eq!(
        one("Observation", "code", "http://loinc.org|").values,
        [tok(Some(Some("http://loinc.org")), None)]
    );
    // OR values, and escapes.
    assert_eq!(
        one("Observation", "code", "a,b\\,c,s\\|x|d").values,
        [
            tok(None, Some("a")),
            tok(None, Some("b,c")),
            tok(Some(Some("s|x")), Some("d")),
        ]
    );
    assert_eq!(
        one("Observation", "code", "a\\\\").values,
        [tok(None, Some("a\\"))]
    );
    assert_eq!(
        one("Patient", "gender", "male").values,
        [tok(None, Some("male"))]
    );
    assert_eq!(one("Patient", "_id", "p1,p2").values.len(), 2);
}

#[test]
fn token_modifiers() {
    let c = one("Observation", "code:not", "1234");
    assert_eq!(c.modifier, Some(Modifier::Not));
    assert_eq!(c.values, [tok(None, Some("1234"))]);
    let c = one("Observation", "code:text", "Body Wéight");
    assert_eq!(c.modifier, Some(Modifier::Text));
    assert_eq!(
        c.values,
        [Value::String {
            value: "Body Wéight".into(),
            normalized: "body weight".into()
        }]
    );
    for (m, expected) in [("above", Modifier::Above), ("below", Modifier::Below)] {
        let c = one(
            "Observation",
            &format!("code:{m}"),
            "http://snomed.info/sct|123",
        );
        assert_eq!(c.modifier, Some(expected));
        assert_eq!(
            c.values,
            [tok(Some(Some("http://snomed.info/sct")), Some("123"))]
        );
    }
    let c = one("Observation", "code:in", "http://hl7.org/fhir/ValueSet/x");
    assert_eq!(
        (c.modifier, c.values),
        (
            Some(Modifier::In),
            vec![Value::Uri("http://hl7.org/fhir/ValueSet/x".into())]
        )
    );
    let c = one(
        "Observation",
        "code:not-in",
        "http://hl7.org/fhir/ValueSet/x",
    );
    assert_eq!(c.modifier, Some(Modifier::NotIn));
    let c = one(
        "Patient",
        "identifier:of-type",
        "http://terminology.hl7.org/CodeSystem/v2-0203|MR|446053",
    );
    assert_eq!(c.modifier, Some(Modifier::OfType));
    assert_eq!(
        c.values,
        [Value::OfType {
            system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
            code: "MR".into(),
            value: "446053".into()
        }]
    );
    assert!(
        err1("Patient", "identifier:of-type", "MR|446053").contains("use [system]|[code]|[value]")
    );
}

#[test]
fn missing() {
    for (rt, name) in [
        ("Observation", "code"),
        ("Patient", "birthdate"),
        ("Patient", "name"),
        ("Observation", "subject"),
        ("Observation", "value-quantity"),
    ] {
        let c = one(rt, &format!("{name}:missing"), "true");
        assert_eq!(
            (c.modifier, c.values),
            (Some(Modifier::Missing), vec![Value::Boolean(true)]),
            "{name}"
        );
    }
    assert_eq!(
        one("Patient", "gender:missing", "false").values,
        [Value::Boolean(false)]
    );
    assert_eq!(
        err1("Patient", "gender:missing", "yes"),
        "'gender:missing' takes true or false, not 'yes'"
    );
}

#[test]
fn strings() {
    let c = one("Patient", "name", "Chälmers");
    assert_eq!(c.kind, ParamKind::String);
    assert_eq!(
        c.values,
        [Value::String {
            value: "Chälmers".into(),
            normalized: "chalmers".into()
        }]
    );
    assert_eq!(
        one("Patient", "family:exact", "Chalmers").modifier,
        Some(Modifier::Exact)
    );
    assert_eq!(
        one("Patient", "address:contains", "erewhon").modifier,
        Some(Modifier::Contains)
    );
    assert_eq!(one("Patient", "name", "a\\,b,c").values.len(), 2);
}

#[test]
fn modifier_errors() {
    assert_eq!(
        err1("Observation", "code:exact", "x"),
        "modifier ':exact' does not apply to token parameter 'code'"
    );
    assert_eq!(
        err1("Patient", "name:not", "x"),
        "modifier ':not' does not apply to string parameter 'name'"
    );
    assert_eq!(
        err1("Patient", "birthdate:exact", "2020"),
        "modifier ':exact' does not apply to date parameter 'birthdate'"
    );
    assert_eq!(
        err1("Observation", "code:bogus", "x"),
        "unknown modifier ':bogus' on parameter 'code'"
    );
    assert_eq!(
        err1("Observation", "code:Patient", "x"),
        "type modifier ':Patient' does not apply to token parameter 'code'"
    );
    assert!(err1("Observation", "subject:Medication", "x")
        .starts_with("'Medication' is not a target type of reference parameter 'subject'"));
}

#[test]
fn dates() {
    let c = one("Patient", "birthdate", "2020");
    assert_eq!(
        c.values,
        [Value::Date {
            prefix: Prefix::Eq,
            low: Y2020,
            high: Y2021 - 1
        }]
    );
    let prefixes = [
        ("eq", Prefix::Eq),
        ("ne", Prefix::Ne),
        ("gt", Prefix::Gt),
        ("lt", Prefix::Lt),
        ("ge", Prefix::Ge),
        ("le", Prefix::Le),
        ("sa", Prefix::Sa),
        ("eb", Prefix::Eb),
        ("ap", Prefix::Ap),
    ];
    for (text, prefix) in prefixes {
        let c = one(
            "Observation",
            "date",
            &format!("{text}2020-01-01T00:00:00Z"),
        );
        assert_eq!(
            c.values,
            [Value::Date {
                prefix,
                low: Y2020,
                high: Y2020 + 999_999
            }],
            "{text}"
        );
    }
    assert_eq!(
        one("Observation", "date", "2020-01").values,
        [Value::Date {
            prefix: Prefix::Eq,
            low: Y2020,
            high: Y2020 + 31 * 86_400_000_000 - 1
        }]
    );
    assert_eq!(
        one("Observation", "date", "2020-01-01T01:00+01:00").values,
        [Value::Date {
            prefix: Prefix::Eq,
            low: Y2020,
            high: Y2020 + 60_000_000 - 1
        }]
    );
    // An unencoded `+` arrives as a space.
    assert_eq!(
        one("Observation", "date", "ge2020-01-01T01:00:00 01:00").values,
        [Value::Date {
            prefix: Prefix::Ge,
            low: Y2020,
            high: Y2020 + 999_999
        }]
    );
    // AND of two ranges.
    let r = ok("Observation", &[("date", "ge2020"), ("date", "lt2021")]);
    assert_eq!(r.criteria.len(), 2);
    assert_eq!(
        one("Patient", "_lastUpdated", "gt2020-01-01").kind,
        ParamKind::Date
    );
    assert_eq!(
        err1("Patient", "birthdate", "abc"),
        "date 'abc' for 'birthdate' is not a valid date; use YYYY, YYYY-MM, YYYY-MM-DD or a dateTime"
    );
    assert!(err1("Patient", "birthdate", "xx2020").contains("not a valid date"));
    assert!(err1("Patient", "birthdate", "2020-02-30").contains("not a valid date"));
}

#[test]
fn numbers_and_quantities() {
    let c = one("RiskAssessment", "probability", "gt0.8");
    match &c.values[..] {
        [Value::Number {
            prefix: Prefix::Gt,
            value,
            low,
            high,
        }] => {
            assert_eq!(*value, 0.8);
            assert!((low - 0.75).abs() < 1e-12 && (high - 0.85).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        one("RiskAssessment", "probability", "100").values,
        [Value::Number {
            prefix: Prefix::Eq,
            value: 100.0,
            low: 99.5,
            high: 100.5
        }]
    );
    assert_eq!(
        one("RiskAssessment", "probability", "1e2").values,
        [Value::Number {
            prefix: Prefix::Eq,
            value: 100.0,
            low: 50.0,
            high: 150.0
        }]
    );
    assert_eq!(
        err1("RiskAssessment", "probability", "ten"),
        "number 'ten' for 'probability' is not a valid number"
    );

    let c = one(
        "Observation",
        "value-quantity",
        "le5.4|http://unitsofmeasure.org|mg",
    );
    match &c.values[..] {
        [Value::Quantity {
            prefix: Prefix::Le,
            value,
            system,
            code,
            ..
        }] => {
            assert_eq!(*value, 5.4);
            assert_eq!(system.as_deref(), Some("http://unitsofmeasure.org"));
            assert_eq!(code.as_deref(), Some("mg"));
        }
        other => panic!("{other:?}"),
    }
    assert!(
        matches!(&one("Observation", "value-quantity", "5.4||mg").values[..],
        [Value::Quantity { system: None, code: Some(c), .. }] if c == "mg")
    );
    assert!(matches!(
        &one("Observation", "value-quantity", "ap5.4").values[..],
        [Value::Quantity {
            prefix: Prefix::Ap,
            system: None,
            code: None,
            ..
        }]
    ));
    assert!(err1("Observation", "value-quantity", "5.4|mg")
        .contains("use [prefix]number[|system|code]"));
    assert!(err1("Observation", "value-quantity", "x|s|c")
        .contains("does not start with a valid number"));
}

#[test]
fn references() {
    let c = one("Observation", "subject", "Patient/123");
    assert_eq!(c.kind, ParamKind::Reference);
    assert_eq!(
        c.values,
        [Value::Reference {
            target_type: Some("Patient".into()),
            id: Some("123".into()),
            url: None
        }]
    );
    // A bare id: the type from the modifier, or the only target.
    assert_eq!(
        one("Observation", "subject", "123").values,
        [Value::Reference {
            target_type: None,
            id: Some("123".into()),
            url: None
        }]
    );
    let c = one("Observation", "subject:Patient", "123");
    assert_eq!(c.modifier, Some(Modifier::Type("Patient".into())));
    assert_eq!(
        c.values,
        [Value::Reference {
            target_type: Some("Patient".into()),
            id: Some("123".into()),
            url: None
        }]
    );
    assert_eq!(
        one("Observation", "patient", "123").values,
        [Value::Reference {
            target_type: Some("Patient".into()),
            id: Some("123".into()),
            url: None
        }]
    );
    assert_eq!(
        one(
            "Observation",
            "subject",
            "http://example.org/fhir/Patient/123/_history/2"
        )
        .values,
        [Value::Reference {
            target_type: Some("Patient".into()),
            id: Some("123".into()),
            url: Some("http://example.org/fhir/Patient/123".into())
        }]
    );
    assert_eq!(
        one("Observation", "subject", "Patient/123/_history/2").values[0],
        Value::Reference {
            target_type: Some("Patient".into()),
            id: Some("123".into()),
            url: None
        }
    );
    // Canonical references lose their version.
    assert_eq!(
        one(
            "QuestionnaireResponse",
            "questionnaire",
            "http://example.org/Questionnaire/q|2.0"
        )
        .values,
        [Value::Reference {
            target_type: Some("Questionnaire".into()),
            id: Some("q".into()),
            url: Some("http://example.org/Questionnaire/q".into())
        }]
    );
    let c = one(
        "Patient",
        "_profile",
        "http://hl7.org/fhir/StructureDefinition/bp",
    );
    assert_eq!(c.kind, ParamKind::Reference);
    let c = one(
        "Observation",
        "subject:identifier",
        "http://hospital.org/mrn|123",
    );
    assert_eq!(
        (c.modifier, c.values),
        (
            Some(Modifier::Identifier),
            vec![tok(Some(Some("http://hospital.org/mrn")), Some("123"))]
        )
    );
    assert_eq!(
        one(
            "Observation",
            "subject:below",
            "http://example.org/fhir/Patient"
        )
        .modifier,
        Some(Modifier::Below)
    );

    assert_eq!(err1("Observation", "subject", "Medication/1"), "reference 'Medication/1': 'subject' does not refer to Medication (targets: Group, Device, Patient, Location)");
    assert_eq!(
        err1("Observation", "subject:Patient", "Group/1"),
        "reference 'Group/1' for 'subject:Patient' refers to a Group"
    );
    assert!(err1("Observation", "subject", "Foo/1")
        .contains("is not valid; use Type/id, an id or an absolute URL"));
    assert!(err1("Observation", "subject", "a b").contains("is not valid"));
}

#[test]
fn uris_and_composites() {
    let c = one("ValueSet", "url", "http://hl7.org/fhir/ValueSet/x");
    assert_eq!(
        (c.kind, c.values),
        (
            ParamKind::Uri,
            vec![Value::Uri("http://hl7.org/fhir/ValueSet/x".into())]
        )
    );
    assert_eq!(
        one("ValueSet", "url:below", "http://hl7.org/fhir/").modifier,
        Some(Modifier::Below)
    );
    assert_eq!(
        one("ValueSet", "url:above", "http://hl7.org/fhir/ValueSet/x/y").modifier,
        Some(Modifier::Above)
    );

    let c = one(
        "Observation",
        "code-value-quantity",
        "http://loinc.org|8480-6$lt60|http://unitsofmeasure.org|mm[Hg]",
    );
    assert_eq!(c.kind, ParamKind::Composite);
    match &c.values[..] {
        [Value::Composite(parts)] => {
            assert_eq!(
                parts[0],
                tok(Some(Some("http://loinc.org")), Some("8480-6"))
            );
            assert!(
                matches!(&parts[1], Value::Quantity { prefix: Prefix::Lt, value, code: Some(c), .. } if *value == 60.0 && c == "mm[Hg]")
            );
        }
        other => panic!("{other:?}"),
    }
    let c = one("Observation", "code-value-concept", "a$b,c$d\\$e");
    assert_eq!(
        c.values,
        [
            Value::Composite(vec![tok(None, Some("a")), tok(None, Some("b"))]),
            Value::Composite(vec![tok(None, Some("c")), tok(None, Some("d$e"))]),
        ]
    );
    assert!(
        matches!(&one("Observation", "code-value-date", "1234$ge2020").values[..],
        [Value::Composite(p)] if matches!(p[1], Value::Date { prefix: Prefix::Ge, low: Y2020, .. }))
    );
    assert_eq!(
        err1("Observation", "code-value-quantity", "1234"),
        "composite '1234' for 'code-value-quantity' has 1 part(s); it needs 2 separated by '$'"
    );
    assert!(err1("Observation", "code-value-date", "1234$soon")
        .ends_with("(in composite 'code-value-date')"));
    assert_eq!(
        err1("Observation", "code-value-quantity:exact", "1$2"),
        "modifier ':exact' does not apply to composite parameter 'code-value-quantity'"
    );
}

#[test]
fn chains() {
    let c = one("Observation", "subject:Patient.name", "peter");
    assert_eq!(c.param, "subject");
    assert_eq!(c.modifier, Some(Modifier::Type("Patient".into())));
    assert!(c.values.is_empty());
    let chain = c.chain.unwrap();
    assert_eq!(chain.target_types, ["Patient"]);
    assert_eq!(chain.criterion.param, "name");
    assert_eq!(chain.criterion.kind, ParamKind::String);
    assert_eq!(
        chain.criterion.values,
        [Value::String {
            value: "peter".into(),
            normalized: "peter".into()
        }]
    );

    // Without a type: every target that has the parameter.
    let c = one("Observation", "subject.name", "peter");
    let chain = c.chain.unwrap();
    assert_eq!(chain.target_types, ["Patient", "Location"]); // Group and Device have no `name`
                                                             // One target: no type needed.
    let c = one("Observation", "patient.birthdate", "ge2000");
    assert_eq!(c.chain.as_ref().unwrap().target_types, ["Patient"]);
    assert!(matches!(
        c.chain.unwrap().criterion.values[..],
        [Value::Date {
            prefix: Prefix::Ge,
            ..
        }]
    ));

    // Deep chains, with modifiers on the innermost parameter.
    let c = one(
        "Observation",
        "subject:Patient.organization.name:exact",
        "Acme",
    );
    let inner = c.chain.unwrap().criterion;
    assert_eq!(inner.param, "organization");
    let innermost = inner.chain.unwrap();
    assert_eq!(innermost.target_types, ["Organization"]);
    assert_eq!(innermost.criterion.param, "name");
    assert_eq!(innermost.criterion.modifier, Some(Modifier::Exact));
    let c = one(
        "Encounter",
        "subject:Patient.general-practitioner:Practitioner.name",
        "x",
    );
    assert_eq!(
        c.chain.unwrap().criterion.chain.unwrap().target_types,
        ["Practitioner"]
    );

    assert_eq!(
        err1("Observation", "code.name", "x"),
        "'code' is a token parameter and cannot be chained (in 'code.name')"
    );
    assert_eq!(
        err1("Observation", "subject.bogus", "x"),
        "no target type of 'subject' has a search parameter 'bogus' (in 'subject.bogus')"
    );
    assert_eq!(
        err1("Observation", "subject:Patient.bogus", "x"),
        "no target type of 'subject' has a search parameter 'bogus' (in 'subject:Patient.bogus')"
    );
    assert_eq!(
        err1("Observation", "subject:identifier.name", "x"),
        "modifier ':identifier' cannot be used with a chain (in 'subject:identifier.name')"
    );
    assert!(
        err1("Observation", "subject:Patient.birthdate", "nope").contains("is not a valid date")
    );
}

#[test]
fn reverse_chains() {
    let c = one("Patient", "_has:Observation:patient:code", "1234");
    assert_eq!((c.param.as_str(), c.kind), ("_has", ParamKind::Special));
    assert!(c.values.is_empty());
    let has = c.has.unwrap();
    assert_eq!(
        (has.resource_type.as_str(), has.reference_param.as_str()),
        ("Observation", "patient")
    );
    assert_eq!(has.criterion.param, "code");
    assert_eq!(has.criterion.values, [tok(None, Some("1234"))]);

    // Nested, and with modifiers and chains inside.
    let c = one(
        "Patient",
        "_has:Observation:patient:_has:AuditEvent:entity:agent",
        "Practitioner/1",
    );
    let inner = c.has.unwrap().criterion;
    assert_eq!(inner.param, "_has");
    let inner = inner.has.unwrap();
    assert_eq!(
        (inner.resource_type.as_str(), inner.criterion.param.as_str()),
        ("AuditEvent", "agent")
    );
    let c = one("Patient", "_has:Observation:subject:code:not", "1234");
    assert_eq!(c.has.unwrap().criterion.modifier, Some(Modifier::Not));
    let c = one(
        "Patient",
        "_has:Observation:subject:performer:Practitioner.name",
        "x",
    );
    assert!(c.has.unwrap().criterion.chain.is_some());

    assert_eq!(
        err1("Patient", "_has:Nope:patient:code", "1"),
        "_has: 'Nope' is not a resource type"
    );
    assert_eq!(
        err1("Patient", "_has:Observation:code:code", "1"),
        "_has: 'code' of Observation is a token parameter, not a reference parameter"
    );
    assert_eq!(
        err1("Patient", "_has:Observation:bogus:code", "1"),
        "_has: unknown search parameter 'bogus' for Observation"
    );
    assert_eq!(
        err1("Practitioner", "_has:Observation:patient:code", "1"),
        "_has: 'patient' of Observation does not refer to Practitioner"
    );
    assert_eq!(err1("Patient", "_has:Observation:patient", "1"), "'_has:Observation:patient' is not a valid _has parameter; use _has:Type:reference:parameter");
    assert_eq!(
        err1("Patient", "_has:Observation:patient:bogus", "1"),
        "unknown search parameter 'bogus' for Observation"
    );
}

#[test]
fn result_parameters() {
    let r = ok(
        "Observation",
        &[
            ("_sort", "-date,code,_lastUpdated"),
            ("_count", "50"),
            ("_total", "accurate"),
            ("_summary", "count"),
            ("_elements", "id,code,valueQuantity"),
            ("_include", "Observation:subject"),
            (
                "_include:iterate",
                "Patient:general-practitioner:Practitioner",
            ),
            ("_revinclude", "Provenance:target"),
            ("_revinclude:recurse", "*"),
            ("_contained", "both"),
            ("_containedType", "contained"),
            ("_format", "json"),
            ("_pretty", "true"),
            ("_cursor", "123"),
        ],
    );
    assert_eq!(
        r.sort,
        [
            SortKey {
                param: "date".into(),
                descending: true
            },
            SortKey {
                param: "code".into(),
                descending: false
            },
            SortKey {
                param: "_lastUpdated".into(),
                descending: false
            },
        ]
    );
    assert_eq!(r.count, Some(50));
    assert_eq!(r.total, Total::Accurate);
    assert_eq!(r.summary, Some(Summary::Count));
    assert_eq!(r.elements, ["id", "code", "valueQuantity"]);
    assert_eq!(
        r.includes,
        [
            Include {
                source_type: "Observation".into(),
                param: "subject".into(),
                target_type: None,
                iterate: false,
                reverse: false
            },
            Include {
                source_type: "Patient".into(),
                param: "general-practitioner".into(),
                target_type: Some("Practitioner".into()),
                iterate: true,
                reverse: false
            },
            Include {
                source_type: "Provenance".into(),
                param: "target".into(),
                target_type: None,
                iterate: false,
                reverse: true
            },
            Include {
                source_type: "*".into(),
                param: "*".into(),
                target_type: None,
                iterate: true,
                reverse: true
            },
        ]
    );
    assert_eq!(r.contained, Contained::Both);
    assert_eq!(r.contained_type, ContainedType::Contained);
    assert!(r.criteria.is_empty() && r.warnings.is_empty());
    assert_eq!(
        ok("Observation", &[("_include", "Observation:*")]).includes[0].param,
        "*"
    );

    let defaults = ok("Observation", &[]);
    assert_eq!(
        (
            defaults.total,
            defaults.summary,
            defaults.contained,
            defaults.count
        ),
        (Total::None, None, Contained::False, None)
    );
    for (s, v) in [
        ("true", Summary::True),
        ("false", Summary::False),
        ("data", Summary::Data),
        ("text", Summary::Text),
    ] {
        assert_eq!(ok("Patient", &[("_summary", s)]).summary, Some(v));
    }
    assert_eq!(
        ok("Patient", &[("_total", "estimate")]).total,
        Total::Estimate
    );
    assert_eq!(ok("Patient", &[("_total", "none")]).total, Total::None);
    assert_eq!(ok("Patient", &[("_count", "0")]).count, Some(0));
}

#[test]
fn result_parameter_errors() {
    assert_eq!(
        err1("Patient", "_count", "-1"),
        "_count '-1' is not a non-negative integer"
    );
    assert_eq!(
        err1("Patient", "_count", "ten"),
        "_count 'ten' is not a non-negative integer"
    );
    assert_eq!(
        err1("Patient", "_total", "all"),
        "_total 'all' is not valid; use none, estimate or accurate"
    );
    assert_eq!(
        err1("Patient", "_summary", "yes"),
        "_summary 'yes' is not valid; use true, false, count, data or text"
    );
    assert_eq!(
        err1("Patient", "_contained", "maybe"),
        "_contained 'maybe' is not valid; use true, false or both"
    );
    assert_eq!(
        err1("Patient", "_containedType", "x"),
        "_containedType 'x' is not valid; use container or contained"
    );
    assert_eq!(
        err1("Patient", "_sort", "bogus"),
        "_sort: unknown search parameter 'bogus' for Patient"
    );
    assert_eq!(err1("Patient", "_sort", "-"), "_sort has an empty sort key");
    assert_eq!(
        err1("Observation", "_sort", "code-value-quantity"),
        "_sort 'code-value-quantity': composite parameters cannot be sorted on"
    );
    assert_eq!(
        err1("Patient", "_include", "Patient"),
        "_include 'Patient' is not valid; use Type:parameter[:targetType] or *"
    );
    assert_eq!(
        err1("Patient", "_include", "Nope:x"),
        "_include 'Nope:x': 'Nope' is not a resource type"
    );
    assert_eq!(
        err1("Patient", "_include", "Patient:bogus"),
        "_include 'Patient:bogus': Patient has no search parameter 'bogus'"
    );
    assert_eq!(
        err1("Patient", "_include", "Patient:name"),
        "_include 'Patient:name': 'name' is a string parameter, not a reference parameter"
    );
    assert_eq!(
        err1("Patient", "_include", "Patient:organization:Practitioner"),
        "_include 'Patient:organization': Patient:organization does not refer to Practitioner"
            .replace(
                "'Patient:organization'",
                "'Patient:organization:Practitioner'"
            )
    );
    assert_eq!(
        err1("Patient", "_include:bogus", "Patient:organization"),
        "unknown modifier ':bogus' on parameter '_include'"
    );
    assert_eq!(
        err1("Patient", "_elements", "a b"),
        "_elements 'a b' is not an element name"
    );
    assert_eq!(
        err1("Patient", "_type", "Patient"),
        "_type applies only to a search across all types, not to Patient"
    );
}

#[test]
fn unknown_parameters_strict_and_lenient() {
    assert_eq!(
        err1("Observation", "foo", "1"),
        "unknown search parameter 'foo' for Observation"
    );
    let e = parse(
        Some("Observation"),
        &pairs(&[("foo", "1"), ("code", "x"), ("date", "bad")]),
        true,
    )
    .unwrap_err();
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].param, "foo");
    assert_eq!(e[1].param, "date");

    // Lenient: unknown names are dropped with a warning; bad values still fail.
    let r = parse(
        Some("Observation"),
        &pairs(&[
            ("foo", "1"),
            ("code:bogus", "x"),
            ("code", "x"),
            ("_sort", "nope,date"),
        ]),
        false,
    )
    .unwrap();
    assert_eq!(r.criteria.len(), 1);
    assert_eq!(
        r.sort,
        [SortKey {
            param: "date".into(),
            descending: false
        }]
    );
    let warned: Vec<_> = r.warnings.iter().map(|w| w.param.as_str()).collect();
    assert_eq!(warned, ["foo", "code:bogus", "_sort"]);
    assert_eq!(
        r.warnings[0].message,
        "unknown search parameter 'foo' for Observation"
    );
    assert!(parse(Some("Observation"), &pairs(&[("date", "bad")]), false).is_err());

    // Empty values are ignored, with a warning, in both modes.
    let r = parse(Some("Patient"), &pairs(&[("name", "")]), true).unwrap();
    assert!(r.criteria.is_empty());
    assert_eq!(
        r.warnings[0].message,
        "parameter 'name' has no value and was ignored"
    );
    assert_eq!(
        err1("Patient", "name", "a,,b"),
        "parameter 'name' has an empty value in 'a,,b'"
    );

    assert_eq!(err(Some("Nope"), &[]), ["'Nope' is not a resource type"]);
}

#[test]
fn system_level_search() {
    let r = parse(
        None,
        &pairs(&[
            ("_type", "Patient,Observation"),
            ("_lastUpdated", "ge2020"),
            ("_tag", "s|c"),
            ("_id", "1"),
        ]),
        true,
    )
    .unwrap();
    assert_eq!(r.resource_type, None);
    assert_eq!(r.types, ["Patient", "Observation"]);
    assert_eq!(r.criteria.len(), 3);
    for (name, value) in [
        ("_profile", "http://x/StructureDefinition/y"),
        ("_security", "R"),
        ("_source", "http://x"),
    ] {
        assert!(
            parse(None, &pairs(&[(name, value)]), true).is_ok(),
            "{name}"
        );
    }
    assert_eq!(
        err(None, &[("name", "x")]),
        ["unknown search parameter 'name' for a search across all types (only common parameters and _type)"]
    );
    assert_eq!(
        err(None, &[("_type", "Patient,Nope")]),
        ["_type 'Nope' is not a resource type"]
    );
    assert!(parse(None, &pairs(&[("_sort", "_lastUpdated")]), true).is_ok());
}

#[test]
fn query_error_display_and_param() {
    let e = parse(
        Some("Observation"),
        &pairs(&[("subject:Patient.birthdate", "x")]),
        true,
    )
    .unwrap_err();
    assert_eq!(e[0].param, "subject:Patient.birthdate");
    assert_eq!(e[0].to_string(), e[0].message);
}
