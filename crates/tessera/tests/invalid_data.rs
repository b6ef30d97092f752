//! Data no clinical record should accept, refused over real HTTP on both backends:
//! required bindings, FHIRPath invariants, reference target types, references to
//! resources that do not exist, and active narrative XHTML — alone, in a transaction and
//! in a batch — each answered with 4xx and an OperationOutcome naming the problem and the
//! element, with nothing stored. Also what must still be accepted (warnings, references
//! within a transaction, contained and external references, hidden-but-existing targets).

mod common;
use common::Server;
use serde_json::{json, Value};

on_both_backends!(bad_resources_are_refused, bad_transactions_are_refused, bad_batch_entries_are_refused, legitimate_references_are_accepted, nhs_numbers_are_checked_and_normalised);

/// Live resources of `ty` the system token sees.
async fn count(s: &Server, ty: &str) -> usize {
    let r = s.get(&format!("{ty}?_count=1000")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["entry"].as_array().map_or(0, |e| e.iter().filter(|e| e["search"]["mode"] == "match").count())
}

/// The issues of an OperationOutcome as "diagnostics @ expression" lines.
fn issues(outcome: &Value) -> Vec<String> {
    outcome["issue"]
        .as_array()
        .unwrap_or_else(|| panic!("not an OperationOutcome: {outcome}"))
        .iter()
        .map(|i| format!("{} {} @ {}", i["severity"].as_str().unwrap_or(""), i["diagnostics"].as_str().unwrap_or(""), i["expression"]))
        .collect()
}

/// Asserts a 4xx answer whose OperationOutcome has an error issue mentioning every
/// `needle` and located at `path`.
fn assert_refused(status: u16, outcome: &Value, path: &str, needles: &[&str], what: &str) {
    assert!((400..500).contains(&status), "{what}: status {status}: {outcome}");
    assert_eq!(outcome["resourceType"], "OperationOutcome", "{what}: {outcome}");
    let found = outcome["issue"].as_array().unwrap().iter().any(|i| {
        i["severity"] == "error"
            && i["expression"].as_array().is_some_and(|e| e.iter().any(|x| x.as_str() == Some(path)))
            && needles.iter().all(|n| i["diagnostics"].as_str().is_some_and(|d| d.contains(n)))
    });
    assert!(found, "{what}: no error at {path} mentioning {needles:?} in {:?}", issues(outcome));
}

fn patient() -> Value {
    json!({"resourceType": "Patient", "name": [{"family": "Valid"}], "gender": "female"})
}

fn observation(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": subject}, "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

/// The bad resources of the issue, each with the element path and words its refusal names.
fn bad_cases(patient_id: &str) -> Vec<(&'static str, Value, &'static str, Vec<&'static str>)> {
    let p = format!("Patient/{patient_id}");
    let mut gender = patient();
    gender["gender"] = json!("nonsense");
    let mut status = observation(&p);
    status["status"] = json!("bogus");
    let mut pat1 = patient();
    pat1["contact"] = json!([{"gender": "male"}]);
    let mut script = patient();
    script["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Hello</p><script>alert('x')</script></div>"});
    let mut onclick = patient();
    onclick["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"javascript:alert(1)\">x</a></div>"});
    let mut obs6 = observation(&p);
    obs6["dataAbsentReason"] = json!({"text": "not measured"});
    vec![
        ("Patient.gender: nonsense", gender, "Patient.gender", vec!["nonsense", "http://hl7.org/fhir/ValueSet/administrative-gender"]),
        ("Observation.status: bogus", status, "Observation.status", vec!["bogus", "http://hl7.org/fhir/ValueSet/observation-status"]),
        (
            "Encounter.status: whatever",
            json!({"resourceType": "Encounter", "status": "whatever", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": {"reference": p}}),
            "Encounter.status",
            vec!["whatever", "http://hl7.org/fhir/ValueSet/encounter-status"],
        ),
        ("pat-1", pat1, "Patient.contact[0]", vec!["pat-1"]),
        ("obs-6", obs6, "Observation", vec!["obs-6"]),
        ("narrative <script>", script, "Patient.text.div", vec!["<script>"]),
        ("narrative javascript: URL", onclick, "Patient.text.div", vec!["href"]),
        ("Observation.subject: Medication/x", observation("Medication/x"), "Observation.subject", vec!["Medication", "Patient"]),
        ("Observation.subject: Patient/does-not-exist", observation("Patient/does-not-exist"), "Observation.subject", vec!["Patient/does-not-exist", "does not exist"]),
        (
            "per-1",
            json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": {"reference": p}, "period": {"start": "2024-02-01", "end": "2024-01-01"}}),
            "Encounter.period",
            vec!["per-1"],
        ),
    ]
}

async fn bad_resources_are_refused(s: &Server) {
    let created = s.post("Patient", &patient()).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let patient_id = created.json()["id"].as_str().unwrap().to_string();
    let before = (count(s, "Patient").await, count(s, "Observation").await, count(s, "Encounter").await);
    for (what, resource, path, needles) in bad_cases(&patient_id) {
        let ty = resource["resourceType"].as_str().unwrap().to_string();
        let r = s.post(&ty, &resource).await;
        assert_refused(r.status, &r.json(), path, &needles, what);
        // An update is refused the same way.
        let mut with_id = resource.clone();
        with_id["id"] = json!("bad-1");
        let r = s.put(&format!("{ty}/bad-1"), &with_id).await;
        assert_refused(r.status, &r.json(), path, &needles, &format!("PUT {what}"));
    }
    assert_eq!((count(s, "Patient").await, count(s, "Observation").await, count(s, "Encounter").await), before, "nothing stored");
    // A patch that breaks a required binding is refused too.
    let patch = json!([{"op": "replace", "path": "/gender", "value": "nonsense"}]);
    let r = s
        .request("PATCH", &format!("Patient/{patient_id}"), &[("content-type", "application/json-patch+json")], Some(&serde_json::to_vec(&patch).unwrap()))
        .await;
    assert_refused(r.status, &r.json(), "Patient.gender", &["nonsense"], "PATCH gender");
    assert_eq!(s.get(&format!("Patient/{patient_id}")).await.json()["gender"], "female");
}

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

async fn bad_transactions_are_refused(s: &Server) {
    let before = (count(s, "Patient").await, count(s, "Observation").await, count(s, "Encounter").await);
    let good_patient = json!({"fullUrl": "urn:uuid:11111111-2222-3333-4444-555555555555", "resource": patient(), "request": {"method": "POST", "url": "Patient"}});
    let medication = json!({"fullUrl": "urn:uuid:99999999-2222-3333-4444-555555555555", "resource": {"resourceType": "Medication", "status": "active"}, "request": {"method": "POST", "url": "Medication"}});
    for (what, resource, path, needles) in bad_cases("11111111-2222-3333-4444-555555555555") {
        // The patient is the entry of the same transaction.
        let text = serde_json::to_string(&resource).unwrap().replace("Patient/11111111-2222-3333-4444-555555555555", "urn:uuid:11111111-2222-3333-4444-555555555555");
        let resource: Value = serde_json::from_str(&text).unwrap();
        let ty = resource["resourceType"].as_str().unwrap().to_string();
        let bundle = transaction(vec![good_patient.clone(), json!({"resource": resource, "request": {"method": "POST", "url": ty}})]);
        let r = s.post("", &bundle).await;
        let entry_path = format!("Bundle.entry[1].resource{}", path.split_once('.').map(|(_, rest)| format!(".{rest}")).unwrap_or_default());
        assert_refused(r.status, &r.json(), &entry_path, &needles, &format!("transaction: {what}"));
    }
    // A urn:uuid reference to an entry of the wrong type.
    let mut obs = observation("urn:uuid:99999999-2222-3333-4444-555555555555");
    obs["id"] = json!("x");
    let r = s.post("", &transaction(vec![medication.clone(), json!({"resource": obs, "request": {"method": "POST", "url": "Observation"}})])).await;
    assert_refused(r.status, &r.json(), "Bundle.entry[1].resource.subject", &["Medication"], "transaction: urn:uuid to a Medication");
    assert_eq!((count(s, "Patient").await, count(s, "Observation").await, count(s, "Encounter").await), before, "nothing stored");
    assert_eq!(count(s, "Medication").await, 0);
}

async fn bad_batch_entries_are_refused(s: &Server) {
    let created = s.post("Patient", &patient()).await;
    let patient_id = created.json()["id"].as_str().unwrap().to_string();
    let before = (count(s, "Patient").await, count(s, "Observation").await, count(s, "Encounter").await);
    let cases = bad_cases(&patient_id);
    let entries: Vec<Value> = cases
        .iter()
        .map(|(_, resource, _, _)| json!({"resource": resource, "request": {"method": "POST", "url": resource["resourceType"]}}))
        .collect();
    let r = s.post("", &json!({"resourceType": "Bundle", "type": "batch", "entry": entries})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let response = r.json();
    for (i, (what, _, path, needles)) in cases.iter().enumerate() {
        let entry = &response["entry"][i]["response"];
        let status: u16 = entry["status"].as_str().unwrap().split(' ').next().unwrap().parse().unwrap();
        let entry_path = format!("Bundle.entry[{i}].resource{}", path.split_once('.').map(|(_, rest)| format!(".{rest}")).unwrap_or_default());
        assert_refused(status, &entry["outcome"], &entry_path, needles, &format!("batch: {what}"));
    }
    assert_eq!((count(s, "Patient").await, count(s, "Observation").await, count(s, "Encounter").await), before, "nothing stored");
}

async fn legitimate_references_are_accepted(s: &Server) {
    // Within a transaction, by urn:uuid and by conditional reference.
    let bundle = transaction(vec![
        json!({"fullUrl": "urn:uuid:aaaaaaaa-2222-3333-4444-555555555555", "resource": {"resourceType": "Patient", "identifier": [{"system": "http://example.org/mrn", "value": "inv-1"}]}, "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": observation("urn:uuid:aaaaaaaa-2222-3333-4444-555555555555"), "request": {"method": "POST", "url": "Observation"}}),
    ]);
    let r = s.post("", &bundle).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = s.post("", &transaction(vec![json!({"resource": observation("Patient?identifier=http://example.org/mrn|inv-1"), "request": {"method": "POST", "url": "Observation"}})])).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // Contained, another server's URL, and a logical reference.
    let mut contained = observation("#p");
    contained["contained"] = json!([{"resourceType": "Patient", "id": "p", "name": [{"family": "Inline"}]}]);
    assert_eq!(s.post("Observation", &contained).await.status, 201);
    assert_eq!(s.post("Observation", &observation("https://other.example.org/fhir/Patient/123")).await.status, 201);
    let mut logical = observation("Patient/x");
    logical["subject"] = json!({"identifier": {"system": "http://example.org/mrn", "value": "elsewhere"}});
    assert_eq!(s.post("Observation", &logical).await.status, 201);
    // This server's own absolute URL is checked like a relative one.
    let r = s.post("Observation", &observation(&format!("{}/Patient/does-not-exist", s.base))).await;
    assert_refused(r.status, &r.json(), "Observation.subject", &["does not exist"], "absolute URL on this server");
    // An extensible binding broken is a warning, not a refusal (Patient.maritalStatus).
    let mut married = patient();
    married["maritalStatus"] = json!({"coding": [{"system": "http://example.org/local", "code": "xyz"}]});
    assert_eq!(s.post("Patient", &married).await.status, 201);
    // A value set that needs an external terminology (UCUM here) is not checked.
    let mut odd_unit = observation(&format!("Patient/{}", s.post("Patient", &patient()).await.json()["id"].as_str().unwrap()));
    odd_unit["valueQuantity"] = json!({"value": 1, "system": "http://unitsofmeasure.org", "code": "not-a-unit"});
    assert_eq!(s.post("Observation", &odd_unit).await.status, 201);
}

/// A Patient's NHS number must pass its check digit on every write path; a valid one is
/// stored as its ten digits, so that a search by the digits finds it however it was typed.
async fn nhs_numbers_are_checked_and_normalised(s: &Server) {
    let nhs = "https://fhir.nhs.uk/Id/nhs-number";
    let with = |value: &str| {
        let mut p = patient();
        p["identifier"] = json!([{"system": "http://example.org/mrn", "value": "m-1"}, {"system": nhs, "value": value}]);
        p
    };
    let before = count(s, "Patient").await;
    for bad in ["943 476 5918", "943476591", "94347659190", "not-a-number"] {
        let r = s.post("Patient", &with(bad)).await;
        assert_refused(r.status, &r.json(), "Patient.identifier[1].value", &["not a valid NHS number"], bad);
    }
    // In a transaction: refused, nothing stored.
    let r = s.post("", &transaction(vec![
        json!({"resource": patient(), "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": with("9434765918"), "request": {"method": "POST", "url": "Patient"}}),
    ])).await;
    assert!((400..500).contains(&r.status), "transaction: {}", r.status);
    assert_eq!(count(s, "Patient").await, before, "nothing stored");
    // Valid, with spaces: stored as ten digits and found by them.
    let r = s.post("Patient", &with("943 476 5919")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.get(&format!("Patient/{id}")).await.json()["identifier"][1]["value"], "9434765919");
    let found = s.get(&format!("Patient?identifier={nhs}|9434765919")).await.json();
    assert!(found["entry"].as_array().into_iter().flatten().any(|e| e["resource"]["id"] == id.as_str()), "{found}");
    // An update is checked too.
    let mut changed = with("9434765918");
    changed["id"] = json!(id);
    let r = s.request("PUT", &format!("Patient/{id}"), &[("content-type", "application/fhir+json")], Some(&serde_json::to_vec(&changed).unwrap())).await;
    assert_refused(r.status, &r.json(), "Patient.identifier[1].value", &["check digit"], "update");
}

