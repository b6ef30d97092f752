//! The matcher on the cases a patient index meets: the same person written differently
//! (typos, nicknames, swapped names, transposed dates, a new address, a married name, no
//! NHS number) links or goes to review; different people (twins, namesakes) do not link.

use serde_json::{json, Value};
use tessera_empi::{blocking_keys, Config, Decision, Person};

fn patient(given: &str, family: &str, birth: &str, gender: &str, postcode: &str, nhs: Option<&str>) -> Value {
    let mut p = json!({"resourceType": "Patient",
        "name": [{"family": family, "given": given.split(' ').collect::<Vec<_>>()}],
        "birthDate": birth, "gender": gender,
        "address": [{"line": ["12 Acacia Avenue"], "postalCode": postcode}],
        "telecom": [{"system": "phone", "value": "020 7946 0018"}]});
    if let Some(n) = nhs {
        p["identifier"] = json!([{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": n}]);
    }
    p
}

fn decide(a: &Value, b: &Value) -> (Decision, f64) {
    let s = Config::default().score(&Person::from_patient(a), &Person::from_patient(b));
    (s.decision, s.total)
}

fn base() -> Value {
    patient("Margaret Ann", "Thompson", "1948-03-07", "female", "LS6 2AB", Some("943 476 5919"))
}

#[test]
fn the_same_person_written_differently_links() {
    let mut no_nhs = base();
    no_nhs.as_object_mut().unwrap().remove("identifier");
    let cases = [
        ("identical", base()),
        ("NHS number alone agrees, all else changed", patient("Peggy", "Brown", "1948-03-07", "female", "M1 1AE", Some("9434765919"))),
        ("no NHS number", no_nhs.clone()),
        ("typo in the family name, no NHS number", {
            let mut p = no_nhs.clone();
            p["name"][0]["family"] = json!("Thomson");
            p
        }),
        ("nickname, no NHS number", {
            let mut p = no_nhs.clone();
            p["name"][0]["given"] = json!(["Peggy"]);
            p
        }),
        ("day and month transposed, no NHS number", {
            let mut p = no_nhs.clone();
            p["birthDate"] = json!("1948-07-03");
            p
        }),
        ("names swapped, no NHS number", {
            let mut p = no_nhs.clone();
            p["name"][0]["family"] = json!("Margaret");
            p["name"][0]["given"] = json!(["Thompson"]);
            p
        }),
    ];
    for (what, other) in cases {
        let (d, total) = decide(&base(), &other);
        assert_eq!(d, Decision::Link, "{what}: {total:.1}");
    }
}

#[test]
fn uncertain_cases_go_to_review() {
    let mut married = base();
    married.as_object_mut().unwrap().remove("identifier");
    married["name"][0]["family"] = json!("Okafor");
    married["address"][0]["postalCode"] = json!("M1 1AE");
    married["address"][0]["line"] = json!(["3 Mill Lane"]);
    married["telecom"] = json!([]);
    let (d, total) = decide(&base(), &married);
    assert_eq!(d, Decision::Review, "married name and moved: {total:.1}");
}

#[test]
fn different_people_do_not_link() {
    let mut twin = base();
    twin.as_object_mut().unwrap().remove("identifier");
    twin["name"][0]["given"] = json!(["Elizabeth"]);
    let (d, total) = decide(&base(), &twin);
    assert_ne!(d, Decision::Link, "a twin: {total:.1}");
    let stranger = patient("David", "Jones", "1980-11-22", "male", "EX1 1AA", None);
    assert_eq!(decide(&base(), &stranger).0, Decision::Distinct);
    // Namesakes born on the same day elsewhere, with different NHS numbers.
    let namesake = patient("Margaret", "Thompson", "1948-03-07", "female", "EX1 1AA", Some("4010232137"));
    assert_ne!(decide(&base(), &namesake).0, Decision::Link);
}

#[test]
fn an_invalid_nhs_number_identifies_no_one() {
    let p = Person::from_patient(&patient("A", "B", "1990-01-01", "male", "LS6 2AB", Some("943 476 5918")));
    assert_eq!(p.nhs_number, None);
}

#[test]
fn candidates_share_a_blocking_key() {
    let a = Person::from_patient(&base());
    for other in [
        patient("Margaret", "Thomson", "1948-03-07", "female", "M1 1AE", None),
        patient("Margaret", "Thompson", "1948-07-03", "female", "M1 1AE", None),
        patient("Peggy", "Brown", "1951-01-01", "female", "M1 1AE", Some("9434765919")),
    ] {
        let b = Person::from_patient(&other);
        let (ka, kb) = (blocking_keys(&a), blocking_keys(&b));
        assert!(ka.iter().any(|k| kb.contains(k)), "{ka:?} / {kb:?}");
    }
}

#[test]
fn the_score_explains_itself() {
    let s = Config::default().score(&Person::from_patient(&base()), &Person::from_patient(&base()));
    let fields: Vec<&str> = s.fields.iter().map(|f| f.field).collect();
    assert_eq!(fields, ["nhs-number", "family", "given", "birth-date", "sex", "postcode", "address", "phone"]);
    assert!((s.total - s.fields.iter().map(|f| f.weight).sum::<f64>()).abs() < 1e-9);
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["decision"], "link");
}

/// The evaluation on synthetic originals (the Synthea evaluation is `tessera bench empi`):
/// the matcher keeps F1 ≥ 0.98 and false links ≤ 0.1 % of the non-matching pairs scored.
#[test]
fn evaluation_on_synthetic_people() {
    let mut rng = tessera_empi::eval::Rng::new(7);
    let originals: Vec<Person> = (0..300).map(|_| tessera_empi::eval::synthetic(&mut rng)).collect();
    let r = tessera_empi::eval::evaluate(&originals, 20_000, 10, &Config::default(), 11);
    eprintln!("{}", serde_json::to_string_pretty(&r).unwrap());
    assert!(r.f1 >= 0.98, "F1 {:.4}", r.f1);
    assert!(r.false_link_rate <= 0.001, "false link rate {:.5}", r.false_link_rate);
}
