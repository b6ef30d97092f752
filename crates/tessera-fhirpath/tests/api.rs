//! Behaviour of the public API on FHIR-specific features.

use serde_json::json;
use tessera_fhirpath::{Context, EvalError, Expression, Item};

fn eval(src: &str, resource: &serde_json::Value) -> Vec<String> {
    eval_with(src, resource, &Context::new()).unwrap()
}

fn eval_with<'a>(
    src: &str,
    resource: &'a serde_json::Value,
    ctx: &Context<'a>,
) -> Result<Vec<String>, EvalError> {
    let items = Expression::parse(src).unwrap().evaluate(resource, ctx)?;
    Ok(items
        .iter()
        .map(|i| match i {
            Item::Node(n) => format!("{}:{}", n.type_name(), n.json()),
            other => other.to_display_string().unwrap(),
        })
        .collect())
}

#[test]
fn expressions_are_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Expression>();
    assert_send_sync::<Context<'static>>();
}

#[test]
fn choice_elements_and_subtypes() {
    let obs = json!({
        "resourceType": "Observation",
        "extension": [{"url": "http://example.com/age", "valueAge": {"value": 41, "system": "http://unitsofmeasure.org", "code": "a"}}],
        "valueString": "x",
        "_valueString": {"id": "v1"}
    });
    assert_eq!(eval("Observation.value", &obs), [r#"string:"x""#]);
    assert_eq!(eval("Observation.value.id", &obs), [r#"string:"v1""#]);
    assert_eq!(eval("Observation.value is string", &obs), ["true"]);
    assert_eq!(
        eval("Observation.value.ofType(Quantity)", &obs),
        Vec::<String>::new()
    );
    let age = "Observation.extension('http://example.com/age').value";
    assert_eq!(eval(&format!("{age} is Age"), &obs), ["true"]);
    assert_eq!(eval(&format!("{age} is Quantity"), &obs), ["true"]);
    assert_eq!(eval(&format!("{age} is Duration"), &obs), ["false"]);
    assert_eq!(
        eval(&format!("{age}.ofType(Quantity).value"), &obs),
        ["decimal:41"]
    );
    assert_eq!(eval(&format!("{age} = 41 'a'"), &obs), ["true"]);
}

#[test]
fn primitive_extensions() {
    let p = json!({
        "resourceType": "Patient",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime", "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "name": [{"given": ["Peter", null], "_given": [null, {"extension": [{"url": "u", "valueString": "J"}]}]}]
    });
    assert_eq!(
        eval(
            "Patient.birthDate.extension(%`ext-patient-birthTime`).value",
            &p
        ),
        [r#"dateTime:"1974-12-25T14:35:45-05:00""#]
    );
    assert_eq!(eval("Patient.name.given.count()", &p), ["2"]);
    assert_eq!(
        eval("Patient.name.given.select(hasValue())", &p),
        ["true", "false"]
    );
    assert_eq!(
        eval("Patient.name.given.extension('u').value", &p),
        [r#"string:"J""#]
    );
    assert_eq!(
        eval("Patient.birthDate.getValue() = @1974-12-25", &p),
        ["true"]
    );
    assert_eq!(eval("Patient.birthDate < @2000", &p), ["true"]);
}

#[test]
fn resolve_and_references() {
    let bundle = json!({
        "resourceType": "Bundle",
        "entry": [
            {"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Patient", "id": "p"}},
            {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Observation", "subject": {"reference": "urn:uuid:1"}}}
        ]
    });
    assert_eq!(
        eval(
            "Bundle.entry.resource.ofType(Observation).subject.resolve().id",
            &bundle
        ),
        [r#"id:"p""#]
    );
    let obs = json!({"resourceType": "Observation", "subject": {"reference": "http://x.org/fhir/Group/7/_history/2"}, "performer": [{"type": "Practitioner", "display": "Dr"}]});
    assert_eq!(
        eval(
            "Observation.subject.where(resolve() is Group).reference",
            &obs
        ),
        [r#"string:"http://x.org/fhir/Group/7/_history/2""#]
    );
    assert_eq!(
        eval("Observation.subject.resolve().is(Patient)", &obs),
        ["false"]
    );
    assert_eq!(
        eval(
            "Observation.performer.where(resolve() is Practitioner).display",
            &obs
        ),
        [r#"string:"Dr""#]
    );
    assert_eq!(
        eval("Observation.subject.resolve().id", &obs),
        Vec::<String>::new()
    );
}

#[test]
fn variables_and_strict_mode() {
    let p = json!({"resourceType": "Patient", "active": true});
    let ctx = Context::new().with_variable("flag", vec![Item::Boolean(true)]);
    assert_eq!(
        eval_with("%flag and Patient.active", &p, &ctx).unwrap(),
        ["true"]
    );
    assert_eq!(
        eval_with("%resource.active", &p, &ctx).unwrap(),
        ["boolean:true"]
    );
    assert!(matches!(
        eval_with("%missing", &p, &ctx),
        Err(EvalError::Execution(_))
    ));
    let strict = Context::new().strict(true);
    assert!(matches!(
        eval_with("Patient.nmae", &p, &strict),
        Err(EvalError::Semantic(_))
    ));
    assert!(matches!(
        eval_with("Encounter.status", &p, &strict),
        Err(EvalError::Semantic(_))
    ));
    assert_eq!(
        eval_with("Patient.nmae", &p, &Context::new()).unwrap(),
        Vec::<String>::new()
    );
    assert!(matches!(
        eval_with("Patient.active.memberOf('x')", &p, &Context::new()),
        Err(EvalError::Unsupported(_))
    ));
}

#[test]
fn values_and_operators() {
    let none = serde_json::Value::Null;
    assert_eq!(
        eval(
            "@2012-04-15T15:00:00+02:00 = @2012-04-15T16:00:00+03:00",
            &none
        ),
        ["true"]
    );
    assert_eq!(
        eval("@2012-04-15 = @2012-04-15T10:00:00", &none),
        Vec::<String>::new()
    );
    assert_eq!(eval("4.0000 'g' = 4000.0 'mg'", &none), ["true"]);
    assert_eq!(eval("7 days = 1 week", &none), ["true"]);
    assert_eq!(eval("1 year = 1 'a'", &none), Vec::<String>::new());
    assert_eq!(eval("@1973-12-25 + 1 month", &none), ["1974-01-25"]);
    assert_eq!(eval("1 / 3", &none), ["0.3333333333333333333333333333"]);
    assert_eq!(eval("(1 | 2 | 2 | 3).count()", &none), ["3"]);
    assert_eq!(eval("'a,b'.split(',').join('-')", &none), ["a-b"]);
    assert!(Expression::parse("1 +").is_err());
    assert!(Expression::parse("foo()").is_err());
}
