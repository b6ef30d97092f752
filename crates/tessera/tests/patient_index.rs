//! The patient index over real HTTP, on both backends: linking at registration (NHS
//! number, MRN, probabilistic), the review worklist, `$match`, `$merge`/`$unmerge`, IHE
//! PIXm and PDQm, concurrent registrations, and what each of them may reveal.

mod common;
use common::{Server, Who};
use serde_json::{json, Value};

on_both_backends!(
    nhs_number_links_across_organisations,
    hidden_record_links_without_revealing_it,
    probabilistic_link_review_and_worklist,
    match_grades_and_visibility,
    merge_preview_merge_and_unmerge_round_trip,
    unsafe_unmerge_is_refused,
    merging_needs_its_own_permission,
    concurrent_registrations_make_one_patient,
    pixm_and_pdqm,
    transaction_registration_links,
    scan_finds_existing_duplicates_once,
    put_creates_are_never_silent_duplicates,
);

const MURPHY: Who = ("dr.murphy", "doctor", "rx2-southbank-hc", Some("rx2-diabetes-clinic"));
const PATEL: Who = ("dr.patel", "doctor", "rx1-general", Some("ward-7a"));
const ALI: Who = ("reception.ali", "receptionist", "rx1-general", Some("rx1-ed"));
const BROWN: Who = ("reception.brown", "receptionist", "rx2-millbrook", Some("rx2-millbrook-clinic"));
const OBI: Who = ("records.obi", "records-manager", "rx1", None);
const RX1_MRN: &str = "https://fhir.rx1.nhs.example/Id/mrn";
const RX2_MRN: &str = "https://fhir.rx2.nhs.example/Id/mrn";
const NHS: &str = "https://fhir.nhs.uk/Id/nhs-number";

fn body(r: &common::Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

async fn post(s: &Server, who: Who, path: &str, v: &Value) -> common::Reply {
    s.request_as(&s.token(who), "POST", path, Some(&serde_json::to_vec(v).unwrap())).await
}

async fn get(s: &Server, who: Who, path: &str) -> common::Reply {
    s.request_as(&s.token(who), "GET", path, None).await
}

fn person(family: &str, given: &str, born: &str, ids: Value) -> Value {
    let mut p = json!({"resourceType": "Patient", "identifier": ids, "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": "female", "birthDate": born,
        "address": [{"line": ["12 Mill Lane"], "city": "Northgate", "postalCode": "NG1 4AB"}],
        "telecom": [{"system": "phone", "value": "01632 960001"}]});
    if ids.as_array().is_some_and(|a| a.is_empty()) {
        p.as_object_mut().unwrap().remove("identifier");
    }
    p
}

/// The audit note (outcomeDesc) of the newest registration audit event.
async fn last_note(s: &Server, patient: &str) -> String {
    let r = s.get(&format!("AuditEvent?patient={patient}&_count=100")).await;
    let b = r.json();
    b["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["outcomeDesc"].as_str()).find(|d| d.contains("patient index")).unwrap_or_default().to_string()
}

/// A second trust registering a patient with the NHS number another trust registered:
/// linked, one record, both MRNs, provenance of the addition; a conditional create
/// answers 200.
async fn nhs_number_links_across_organisations(s: &Server) {
    s.load_demo().await;
    let first = post(s, ALI, "Patient", &person("Ashworth", "Nell", "1964-02-11", json!([{"system": NHS, "value": "401 023 2137"}, {"system": RX1_MRN, "value": "N100"}]))).await;
    assert_eq!(first.status, 201, "{}", body(&first));
    let id = first.json()["id"].as_str().unwrap().to_string();
    assert!(last_note(s, &id).await.contains("new person"), "the decision is on the audit record");
    // Southbank registers her again, with its own MRN and a new phone number.
    let mut again = person("Ashworth", "Nell", "1964-02-11", json!([{"system": NHS, "value": "4010232137"}, {"system": RX2_MRN, "value": "S-77"}]));
    again["telecom"] = json!([{"system": "phone", "value": "07700 900123"}]);
    let r = post(s, BROWN, "Patient", &again).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    assert_eq!(r.json()["id"], id.as_str(), "linked to the existing record, not stored beside it");
    let stored = s.get(&format!("Patient/{id}")).await.json();
    let ids: Vec<(String, String)> = stored["identifier"].as_array().unwrap().iter().map(|i| (i["system"].as_str().unwrap().into(), i["value"].as_str().unwrap().into())).collect();
    assert!(ids.contains(&(RX1_MRN.into(), "N100".into())) && ids.contains(&(RX2_MRN.into(), "S-77".into())), "{ids:?}");
    assert_eq!(ids.iter().filter(|(s, _)| s == NHS).count(), 1, "one NHS number");
    let added = stored["identifier"].as_array().unwrap().iter().find(|i| i["value"] == "S-77").unwrap();
    assert_eq!(added["extension"][0]["valueReference"]["identifier"]["value"], "rx2-millbrook", "who added it");
    assert!(stored["telecom"].as_array().unwrap().iter().any(|t| t["value"] == "07700 900123"));
    let author = stored["meta"]["tag"].as_array().unwrap().iter().find(|t| t["system"] == "https://tessera.health/author").unwrap()["code"].clone();
    assert_eq!(author, "reception.ali", "a link does not make the registrar the record's author");
    assert!(last_note(s, &id).await.contains("linked to Patient/"), "the link is audited: {}", last_note(s, &id).await);
    assert_eq!(s.get(&format!("Patient?identifier={NHS}|4010232137")).await.json()["total"], 1);
    // A conditional create that the subject cannot match itself: linked, 200.
    let r = s.request_as(&s.token(BROWN), "POST", "Patient", Some(&serde_json::to_vec(&again).unwrap())).await;
    assert_eq!(r.status, 201);
    let r = s
        .request("POST", "Patient", &[("authorization", &format!("Bearer {}", s.token(BROWN))), ("if-none-exist", "identifier=urn:nowhere|1")], Some(&serde_json::to_vec(&again).unwrap()))
        .await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.json()["id"], id.as_str());
    // An update that would give her number to a second record is refused.
    let other = post(s, ALI, "Patient", &person("Zimmer", "Olga", "1931-12-01", json!([]))).await.json();
    let mut stolen = other.clone();
    stolen["identifier"] = json!([{"system": NHS, "value": "4010232137"}]);
    let r = s.request_as(&s.token(ALI), "PUT", &format!("Patient/{}", other["id"].as_str().unwrap()), Some(&serde_json::to_vec(&stolen).unwrap())).await;
    assert_eq!(r.status, 409, "{}", body(&r));
}

/// H-015 closed: a registration by someone who cannot see the existing patient (Maria
/// Nowak is restricted; Southbank's receptionist has no relationship) links to her record
/// and answers with the registrar's own submission — nothing of the record is revealed.
async fn hidden_record_links_without_revealing_it(s: &Server) {
    s.load_demo().await;
    assert_eq!(get(s, BROWN, "Patient/maria-nowak").await.status, 404, "hidden from Southbank's receptionist");
    let submitted = json!({"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9449307342"}, {"system": RX2_MRN, "value": "S-1"}],
        "name": [{"family": "Nowak", "given": ["M"]}], "birthDate": "2001-06-25"});
    let r = post(s, BROWN, "Patient", &submitted).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let answer = r.json();
    assert_eq!(answer["id"], "maria-nowak", "linked to the one record");
    assert_eq!(answer["name"], submitted["name"], "the answer is the registrar's own submission");
    assert!(answer.get("meta").and_then(|m| m.get("security")).is_none() && answer.get("address").is_none() && answer.get("telecom").is_none(), "{answer}");
    // One record, now with Southbank's MRN; still hidden from the registrar.
    assert_eq!(s.get(&format!("Patient?identifier={NHS}|9449307342")).await.json()["total"], 1);
    assert!(body(&s.get("Patient/maria-nowak").await).contains("S-1"));
    assert_eq!(get(s, BROWN, "Patient/maria-nowak").await.status, 404);
    // The same through a transaction and a conditional create.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:9d5c2a52-0c8e-4a0e-9b8e-1f3f0f7d2a11", "resource": submitted, "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("identifier={NHS}|9449307342")}}]});
    let r = post(s, BROWN, "", &tx).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(r.json()["entry"][0]["response"]["location"].as_str().unwrap().contains("Patient/maria-nowak"));
    assert!(!body(&r).contains("security"), "nothing of the hidden record: {}", body(&r));
}

/// Above the upper threshold a registration links without an NHS number; between the
/// thresholds it creates a record and a worklist Task the records manager sees (and
/// clinicians do not); decisions: not a duplicate (remembered), defer.
async fn probabilistic_link_review_and_worklist(s: &Server) {
    s.load_demo().await;
    let first = post(s, ALI, "Patient", &person("Fairweather", "Katherine", "1955-08-17", json!([{"system": RX1_MRN, "value": "F1"}]))).await;
    let id = first.json()["id"].as_str().unwrap().to_string();
    // A nickname, the same date of birth, address and phone: the same person.
    let r = post(s, BROWN, "Patient", &person("Fairweather", "Kate", "1955-08-17", json!([{"system": RX2_MRN, "value": "F2"}]))).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.json()["id"], id.as_str(), "linked by score");
    assert!(last_note(s, &id).await.contains("score"), "{}", last_note(s, &id).await);
    // Different given name, same family, date of birth and address: perhaps a relative.
    let r = post(s, BROWN, "Patient", &person("Fairweather", "Rosalind", "1955-08-17", json!([{"system": RX2_MRN, "value": "F3"}]))).await;
    assert_eq!(r.status, 201);
    let newer = r.json()["id"].as_str().unwrap().to_string();
    assert_ne!(newer, id, "a possible duplicate is a new record");
    let worklist = get(s, OBI, "Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate&status=requested").await.json();
    let task = worklist["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|t| t["focus"]["reference"] == format!("Patient/{newer}")).cloned();
    let task = task.unwrap_or_else(|| panic!("the pair is on the worklist: {worklist}"));
    assert_eq!(task["for"]["reference"], format!("Patient/{id}"));
    assert!(task["input"].as_array().unwrap().iter().any(|i| i["type"]["text"] == "given"), "field-by-field comparison");
    assert!(!task.to_string().contains("Rosalind"), "no demographic values on the worklist");
    // Clinicians and receptionists do not see the worklist.
    for who in [PATEL, ALI, BROWN, MURPHY] {
        let r = get(s, who, "Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate").await;
        assert!(!body(&r).contains(task["id"].as_str().unwrap()), "{who:?} must not see the worklist");
        assert_eq!(get(s, who, &format!("Task/{}", task["id"].as_str().unwrap())).await.status, 404);
    }
    // Nobody edits it directly.
    let r = s.request_as(&s.token(OBI), "DELETE", &format!("Task/{}", task["id"].as_str().unwrap()), None).await;
    assert_eq!(r.status, 405, "{}", body(&r));
    // Defer, then "not a duplicate".
    let tid = task["id"].as_str().unwrap();
    let decide = |d: &'static str| json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": d}]});
    let r = post(s, PATEL, &format!("Task/{tid}/$resolve"), &decide("not-duplicate")).await;
    assert_eq!(r.status, 404, "a clinician cannot decide: {}", body(&r));
    let r = post(s, OBI, &format!("Task/{tid}/$resolve"), &decide("defer")).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.json()["status"], "on-hold");
    let r = post(s, OBI, &format!("Task/{tid}/$resolve"), &decide("not-duplicate")).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.json()["businessStatus"]["text"], "not-duplicate");
    let open = get(s, OBI, "Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate&status=requested,on-hold").await;
    assert!(!body(&open).contains(tid), "decided pairs leave the open worklist");
    // Both records remain.
    assert_eq!(s.get("Patient?family=Fairweather").await.json()["total"], 2);
}

/// `$match`: identifier matches are certain, scored ones graded, results sorted, only
/// patients the caller may see.
async fn match_grades_and_visibility(s: &Server) {
    s.load_demo().await;
    post(s, ALI, "Patient", &person("Quennell", "Harriet", "1947-04-02", json!([{"system": RX1_MRN, "value": "Q1"}]))).await;
    let params = |p: Value, extra: Vec<Value>| {
        let mut v = vec![json!({"name": "resource", "resource": p})];
        v.extend(extra);
        json!({"resourceType": "Parameters", "parameter": v})
    };
    let q = json!({"resourceType": "Patient", "name": [{"family": "Quennell", "given": ["Harriet"]}], "birthDate": "1947-04-02"});
    let r = post(s, ALI, "Patient/$match", &params(q.clone(), vec![])).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let b = r.json();
    assert_eq!(b["type"], "searchset");
    let e = &b["entry"][0];
    assert_eq!(e["resource"]["name"][0]["family"], "Quennell");
    let grade = e["search"]["extension"][0]["valueCode"].as_str().unwrap();
    assert!(["certain", "probable"].contains(&grade), "{grade}");
    assert!(e["search"]["score"].as_f64().unwrap() > 0.5);
    // A verified NHS number: certain; onlyCertainMatches and count honoured.
    let q = json!({"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9449305552"}]});
    let b = post(s, PATEL, "Patient/$match", &params(q.clone(), vec![json!({"name": "onlyCertainMatches", "valueBoolean": true}), json!({"name": "count", "valueInteger": 1})])).await.json();
    assert_eq!(b["entry"].as_array().unwrap().len(), 1);
    assert_eq!(b["entry"][0]["resource"]["id"], "jane-smith");
    assert_eq!(b["entry"][0]["search"]["extension"][0]["valueCode"], "certain");
    // Someone who may not see the patient gets no match (Maria is restricted).
    let q = json!({"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9449307342"}]});
    let r = post(s, BROWN, "Patient/$match", &params(q, vec![])).await;
    assert_eq!(r.status, 200);
    assert!(!body(&r).contains("maria-nowak"), "{}", body(&r));
    assert_eq!(r.json()["total"], 0);
    // Bad input is named.
    let r = post(s, ALI, "Patient/$match", &json!({"resourceType": "Parameters", "parameter": [{"name": "count", "valueInteger": 2}]})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
}

/// Canonical JSON of a resource without its version facts (meta.versionId, lastUpdated).
fn content(mut v: Value) -> Value {
    if let Some(m) = v.get_mut("meta").and_then(Value::as_object_mut) {
        m.remove("versionId");
        m.remove("lastUpdated");
        m.remove("tag");
    }
    v
}

/// Two records of one person that the index did not link (registered with different
/// details), the source with observations and an encounter. `n` makes each call's people
/// different from the last.
async fn two_records_with_data(s: &Server, n: u32) -> (String, String, Vec<String>) {
    let family = ["Merriweather", "Abernethy", "Castellanos"][n as usize % 3];
    let source = post(s, ALI, "Patient", &person(family, "Bea", &format!("198{n}-01-30"), json!([{"system": RX1_MRN, "value": format!("M-SRC-{n}")}]))).await.json();
    let t = json!({"resourceType": "Patient", "identifier": [{"system": RX1_MRN, "value": format!("M-TGT-{n}")}], "name": [{"family": "Lindqvist", "given": ["Beatrix"]}],
        "gender": "female", "birthDate": format!("197{n}-06-02"), "address": [{"line": ["1 Harbour Row"], "postalCode": "SB2 9XY"}]});
    let target = post(s, ALI, "Patient", &t).await.json();
    let (src, tgt) = (source["id"].as_str().unwrap().to_string(), target["id"].as_str().unwrap().to_string());
    assert_ne!(src, tgt);
    let sys = s.auth.issue_system_token("system", "rx1-general", "system/*.*", tessera_auth::now(), 60);
    let mut moved = Vec::new();
    for code in ["pulse", "weight"] {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": code}, "subject": {"reference": format!("Patient/{src}")}});
        let r = s.request_as(&sys, "POST", "Observation", Some(&serde_json::to_vec(&obs).unwrap())).await;
        moved.push(format!("Observation/{}", r.json()["id"].as_str().unwrap()));
    }
    let enc = json!({"resourceType": "Encounter", "status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{src}")}});
    let r = s.request_as(&sys, "POST", "Encounter", Some(&serde_json::to_vec(&enc).unwrap())).await;
    moved.push(format!("Encounter/{}", r.json()["id"].as_str().unwrap()));
    (src, tgt, moved)
}

fn merge_params(src: &str, tgt: &str, preview: bool) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": format!("Patient/{src}")}},
        {"name": "target-patient", "valueReference": {"reference": format!("Patient/{tgt}")}},
        {"name": "preview", "valueBoolean": preview}]})
}

/// Preview changes nothing; merge moves every resource to the target's compartment and
/// links the records; unmerge restores every version's content exactly.
async fn merge_preview_merge_and_unmerge_round_trip(s: &Server) {
    s.load_demo().await;
    let (src, tgt, moved) = two_records_with_data(s, 0).await;
    let mut before = Vec::new();
    for r in moved.iter().chain([&format!("Patient/{src}"), &format!("Patient/{tgt}")]) {
        before.push((r.clone(), content(s.get(r).await.json())));
    }
    // Preview: a report, nothing written.
    let r = post(s, OBI, "Patient/$merge", &merge_params(&src, &tgt, true)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let outcome = r.json()["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "outcome").unwrap()["resource"]["issue"][0]["diagnostics"].as_str().unwrap().to_string();
    assert!(outcome.contains("would be merged"), "{outcome}");
    for (r, c) in &before {
        assert_eq!(&content(s.get(r).await.json()), c, "preview changed {r}");
    }
    // Merge.
    let r = post(s, OBI, "Patient/$merge", &merge_params(&src, &tgt, false)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let source = s.get(&format!("Patient/{src}")).await.json();
    assert_eq!(source["active"], false);
    assert!(source["link"].as_array().unwrap().iter().any(|l| l["type"] == "replaced-by" && l["other"]["reference"] == format!("Patient/{tgt}")));
    let target = s.get(&format!("Patient/{tgt}")).await.json();
    assert!(target["link"].as_array().unwrap().iter().any(|l| l["type"] == "replaces" && l["other"]["reference"] == format!("Patient/{src}")));
    assert!(body(&s.get(&format!("Patient/{tgt}")).await).contains("M-SRC-0"), "the source's identifiers travel to the target");
    for r in &moved {
        let v = s.get(r).await.json();
        assert_eq!(v["subject"]["reference"], format!("Patient/{tgt}"), "{r} now belongs to the target");
    }
    let everything = s.get(&format!("Patient/{tgt}/$everything")).await;
    for r in &moved {
        assert!(body(&everything).contains(r.split('/').nth(1).unwrap()), "{r} in the target's $everything");
    }
    assert_eq!(s.get(&format!("Observation?subject=Patient/{src}")).await.json()["total"], 0);
    // Merging again is refused clearly.
    let r = post(s, OBI, "Patient/$merge", &merge_params(&src, &tgt, false)).await;
    assert_eq!(r.status, 422, "{}", body(&r));
    // A registration naming the merged record's MRN links to the target.
    let r = post(s, ALI, "Patient", &json!({"resourceType": "Patient", "identifier": [{"system": RX1_MRN, "value": "M-SRC-0"}], "name": [{"family": "Merriweather"}]})).await;
    assert_eq!(r.json()["id"], tgt.as_str());
    // Unmerge: exactly the state before, references included. (The registration above
    // changed the target, so first a merge without it.)
    let (src, tgt, moved) = two_records_with_data(s, 1).await;
    let mut before = Vec::new();
    for r in moved.iter().chain([&format!("Patient/{src}"), &format!("Patient/{tgt}")]) {
        before.push((r.clone(), content(s.get(r).await.json())));
    }
    assert_eq!(post(s, OBI, "Patient/$merge", &merge_params(&src, &tgt, false)).await.status, 200);
    let unmerge = json!({"resourceType": "Parameters", "parameter": [{"name": "source-patient", "valueReference": {"reference": format!("Patient/{src}")}}]});
    let r = post(s, OBI, "Patient/$unmerge", &unmerge).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    for (r, c) in &before {
        assert_eq!(&content(s.get(r).await.json()), c, "unmerge restored {r}");
    }
    assert_eq!(s.get(&format!("Observation?subject=Patient/{src}")).await.json()["total"], 2);
    // The merge and unmerge are audited.
    let audit = s.get(&format!("AuditEvent?patient={src}&_count=100")).await;
    assert!(body(&audit).contains("unmerged from"), "{}", body(&audit));
}

/// A resource changed after the merge makes the unmerge unsafe: refused, nothing changed.
async fn unsafe_unmerge_is_refused(s: &Server) {
    s.load_demo().await;
    let (src, tgt, moved) = two_records_with_data(s, 2).await;
    assert_eq!(post(s, OBI, "Patient/$merge", &merge_params(&src, &tgt, false)).await.status, 200);
    let mut obs = s.get(&moved[0]).await.json();
    obs["status"] = json!("amended");
    let r = s.put(&moved[0], &obs).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let unmerge = json!({"resourceType": "Parameters", "parameter": [{"name": "source-patient", "valueReference": {"reference": format!("Patient/{src}")}}]});
    let r = post(s, OBI, "Patient/$unmerge", &unmerge).await;
    assert_eq!(r.status, 409, "{}", body(&r));
    let oo = r.json();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("not safe"), "{oo}");
    assert_eq!(s.get(&format!("Patient/{src}")).await.json()["active"], false, "still merged");
    assert_eq!(s.get(&moved[1]).await.json()["subject"]["reference"], format!("Patient/{tgt}"));
}

/// Merge and unmerge need the records-management permission; the decision is audited.
async fn merging_needs_its_own_permission(s: &Server) {
    s.load_demo().await;
    let (src, tgt, _) = two_records_with_data(s, 2).await;
    for who in [PATEL, ALI, MURPHY] {
        let r = post(s, who, "Patient/$merge", &merge_params(&src, &tgt, true)).await;
        assert_eq!(r.status, 403, "{who:?}: {}", body(&r));
        assert!(!body(&r).contains("Observation"), "nothing about the records: {}", body(&r));
    }
    // A service account (bound to its trust) cannot merge either.
    let sys = s.auth.issue_system_token("system", "rx1-general", "system/*.*", tessera_auth::now(), 60);
    let r = s.request_as(&sys, "POST", "Patient/$merge", Some(&serde_json::to_vec(&merge_params(&src, &tgt, false)).unwrap())).await;
    assert_eq!(r.status, 403, "{}", body(&r));
    // Preview by the records manager lists what it may see and counts the rest (a
    // Riverside psychiatric note stays unnamed).
    let sys3 = s.auth.issue_system_token("system", "rx3-riverside-house", "system/*.*", tessera_auth::now(), 60);
    let note = json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{src}")}, "code": {"text": "secret diagnosis"},
        "meta": {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"}]}});
    let r = s.request_as(&sys3, "POST", "Condition", Some(&serde_json::to_vec(&note).unwrap())).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let cid = r.json()["id"].as_str().unwrap().to_string();
    let r = post(s, OBI, "Patient/$merge", &merge_params(&src, &tgt, true)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(!body(&r).contains(&cid) && !body(&r).contains("secret") && !body(&r).contains("Condition"), "{}", body(&r));
    assert!(body(&r).contains("you may not see"), "{}", body(&r));
}

/// The same person registered at the same moment by two trusts, many times over: one
/// Patient at the end.
async fn concurrent_registrations_make_one_patient(s: &Server) {
    s.load_demo().await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let (who, mrn) = if i % 2 == 0 { (ALI, (RX1_MRN, format!("C{i}"))) } else { (BROWN, (RX2_MRN, format!("C{i}"))) };
        let token = s.token(who);
        let p = person("Concurrence", "Imogen", "1990-10-10", json!([{"system": mrn.0, "value": mrn.1}]));
        let url = s.base.clone();
        tasks.push(tokio::spawn(async move { reqwest_free_post(&url, &token, &p).await }));
    }
    let mut ids = std::collections::HashSet::new();
    for t in tasks {
        let (status, v) = t.await.unwrap();
        assert_eq!(status, 201, "{v}");
        ids.insert(v["id"].as_str().unwrap().to_string());
    }
    assert_eq!(ids.len(), 1, "one record: {ids:?}");
    assert_eq!(s.get("Patient?family=Concurrence").await.json()["total"], 1);
    let stored = s.get(&format!("Patient/{}", ids.iter().next().unwrap())).await.json();
    assert_eq!(stored["identifier"].as_array().unwrap().len(), 12, "every MRN attached");
    // With an NHS number too.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let who = if i % 2 == 0 { ALI } else { BROWN };
        let token = s.token(who);
        let family = ["Ng", "Ngata", "Nguyen", "Nash"][i % 4];
        let p = json!({"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9434765919"}], "name": [{"family": family}], "birthDate": "2010-01-01"});
        let url = s.base.clone();
        tasks.push(tokio::spawn(async move { reqwest_free_post(&url, &token, &p).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().0, 201);
    }
    assert_eq!(s.get(&format!("Patient?identifier={NHS}|9434765919")).await.json()["total"], 1);
}

/// A POST of a Patient over its own client, so that the registrations run concurrently.
async fn reqwest_free_post(base: &str, token: &str, body: &Value) -> (u16, Value) {
    use http_body_util::BodyExt;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{base}/Patient"))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/fhir+json")
        .body(http_body_util::Full::new(bytes::Bytes::from(serde_json::to_vec(body).unwrap())))
        .unwrap();
    let resp = client.request(req).await.expect("HTTP request");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// IHE PIXm cross-references identifiers through the gate; PDQm's parameters search.
async fn pixm_and_pdqm(s: &Server) {
    s.load_demo().await;
    let p = person("Pixley", "Ruth", "1966-05-05", json!([{"system": NHS, "value": "4010232137"}, {"system": RX1_MRN, "value": "P1"}]));
    let id = post(s, ALI, "Patient", &p).await.json()["id"].as_str().unwrap().to_string();
    post(s, BROWN, "Patient", &person("Pixley", "Ruth", "1966-05-05", json!([{"system": NHS, "value": "4010232137"}, {"system": RX2_MRN, "value": "P2"}]))).await;
    let r = get(s, ALI, &format!("Patient/$ihe-pix?sourceIdentifier={RX1_MRN}|P1&targetSystem={RX2_MRN}")).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let b = r.json();
    let params = b["parameter"].as_array().unwrap();
    assert!(params.iter().any(|p| p["name"] == "targetIdentifier" && p["valueIdentifier"]["value"] == "P2"), "{b}");
    assert!(params.iter().any(|p| p["name"] == "targetId" && p["valueReference"]["reference"] == format!("Patient/{id}")));
    assert!(!params.iter().any(|p| p["valueIdentifier"]["value"] == "4010232137"), "only the target system");
    assert_eq!(get(s, ALI, &format!("Patient/$ihe-pix?sourceIdentifier={RX1_MRN}|NOPE")).await.status, 404);
    assert_eq!(get(s, ALI, &format!("Patient/$ihe-pix?sourceIdentifier={RX1_MRN}|P1&targetSystem=urn:unknown")).await.status, 403);
    // Hidden patient: as unknown.
    assert_eq!(get(s, BROWN, &format!("Patient/$ihe-pix?sourceIdentifier={NHS}|9449307342")).await.status, 404);
    // PDQm.
    for q in [
        "family=Pixley",
        "family:exact=Pixley",
        "given=Ruth",
        "birthdate=1966-05-05",
        "gender=female&family=Pixley",
        &format!("identifier={RX2_MRN}|P2"),
        "address-postalcode=NG1%204AB&family=Pixley",
        "telecom=01632%20960001&family=Pixley",
    ] {
        let r = get(s, ALI, &format!("Patient?{q}")).await;
        assert_eq!(r.status, 200, "{q}: {}", body(&r));
        assert!(body(&r).contains(&id), "{q} finds the patient");
    }
    assert!(!body(&get(s, ALI, "Patient?family:exact=pixley").await).contains(&id), ":exact is case-sensitive");
    // PDQm never shows what the gate hides.
    assert!(!body(&get(s, BROWN, "Patient?family=Nowak").await).contains("maria-nowak"));
}

/// A transaction registering a known person links, and its other entries follow the link.
async fn transaction_registration_links(s: &Server) {
    s.load_demo().await;
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:3b1f6c1e-8d0a-4f5e-9a51-2b9f0a7c4d01",
         "resource": {"resourceType": "Patient", "identifier": [{"system": NHS, "value": "9449305552"}, {"system": RX2_MRN, "value": "JS-2"}], "name": [{"family": "Smith", "given": ["Jane"]}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "status": "planned", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": "urn:uuid:3b1f6c1e-8d0a-4f5e-9a51-2b9f0a7c4d01"}},
         "request": {"method": "POST", "url": "Encounter"}}]});
    let sys = s.auth.issue_system_token("system", "rx2-southbank-hc", "system/*.*", tessera_auth::now(), 60);
    let r = s.request_as(&sys, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let b = r.json();
    assert!(b["entry"][0]["response"]["location"].as_str().unwrap().contains("Patient/jane-smith"), "{b}");
    let enc = b["entry"][1]["response"]["location"].as_str().unwrap().split("/_history").next().unwrap().to_string();
    let enc = s.get(&enc[enc.find("Encounter").unwrap()..]).await.json();
    assert_eq!(enc["subject"]["reference"], "Patient/jane-smith");
    assert_eq!(s.get(&format!("Patient?identifier={NHS}|9449305552")).await.json()["total"], 1);
    assert!(body(&s.get("Patient/jane-smith").await).contains("JS-2"));
    // One person registered twice in one transaction: it does not wait on itself; two
    // records, and the pair on the worklist.
    let twice = person("Featherstonehaugh", "Cecily", "1933-03-03", json!([]));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": twice, "request": {"method": "POST", "url": "Patient"}},
        {"resource": twice, "request": {"method": "POST", "url": "Patient"}}]});
    let started = std::time::Instant::now();
    let r = s.request_as(&sys, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(started.elapsed() < std::time::Duration::from_secs(5), "{:?}", started.elapsed());
    assert_eq!(s.get("Patient?family=Featherstonehaugh").await.json()["total"], 2);
    let list = s.get("Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate").await;
    let ids: Vec<String> = r.json()["entry"].as_array().unwrap().iter().map(|e| e["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_string()).collect();
    assert!(ids.iter().all(|id| body(&list).contains(id.as_str())), "the pair is on the worklist");
}

/// Records that became alike after registration (an update) are found by a scan; a pair
/// decided "not a duplicate" is never proposed again.
async fn scan_finds_existing_duplicates_once(s: &Server) {
    s.load_demo().await;
    let a = post(s, ALI, "Patient", &person("Thistlewood", "Agnes", "1939-12-25", json!([{"system": RX1_MRN, "value": "T1"}]))).await.json();
    let b = post(s, BROWN, "Patient", &json!({"resourceType": "Patient", "name": [{"family": "Unrelated"}], "birthDate": "2001-01-01"})).await.json();
    let (a, b_id) = (a["id"].as_str().unwrap().to_string(), b["id"].as_str().unwrap().to_string());
    // Southbank corrects its record: now it looks like Northgate's Agnes, with another given name.
    let corrected = json!({"resourceType": "Patient", "id": b_id, "name": [{"family": "Thistlewood", "given": ["Winifred"]}], "gender": "female", "birthDate": "1939-12-25",
        "address": [{"line": ["12 Mill Lane"], "postalCode": "NG1 4AB"}]});
    assert_eq!(s.put(&format!("Patient/{b_id}"), &corrected).await.status, 200);
    let (scanned, added) = s.engine.scan_duplicates(&tessera_engine::Access::bootstrap(), &|_| {}).await.unwrap();
    assert!(scanned >= 6, "{scanned}");
    assert!(added >= 1, "the pair is found");
    let list = s.get("Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate&status=requested").await.json();
    let task = list["entry"].as_array().unwrap().iter().map(|e| &e["resource"]).find(|t| {
        let refs = [t["focus"]["reference"].as_str().unwrap_or_default(), t["for"]["reference"].as_str().unwrap_or_default()];
        refs.contains(&format!("Patient/{a}").as_str()) && refs.contains(&format!("Patient/{b_id}").as_str())
    });
    let task = task.unwrap_or_else(|| panic!("the scanned pair is on the worklist: {list}"))["id"].as_str().unwrap().to_string();
    let decide = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "not-duplicate"}, {"name": "note", "valueString": "sisters"}]});
    assert_eq!(post(s, OBI, &format!("Task/{task}/$resolve"), &decide).await.status, 200);
    let (_, again) = s.engine.scan_duplicates(&tessera_engine::Access::bootstrap(), &|_| {}).await.unwrap();
    assert_eq!(again, 0, "a decided pair never returns, and nothing else is new");
}

/// A Patient created by PUT (the client chose the id) cannot become a link: it is created
/// as asked, and what it matches goes on the worklist; an NHS number already on another
/// record is refused, in a transaction too.
async fn put_creates_are_never_silent_duplicates(s: &Server) {
    s.load_demo().await;
    let first = post(s, ALI, "Patient", &person("Vandermeer", "Olive", "1944-07-07", json!([{"system": RX1_MRN, "value": "V1"}]))).await.json();
    let first = first["id"].as_str().unwrap().to_string();
    let mut again = person("Vandermeer", "Olive", "1944-07-07", json!([{"system": RX2_MRN, "value": "V2"}]));
    again["id"] = json!("olive-at-southbank");
    let sys = s.auth.issue_system_token("system", "rx2-southbank-hc", "system/*.*", tessera_auth::now(), 60);
    let r = s.request_as(&sys, "PUT", "Patient/olive-at-southbank", Some(&serde_json::to_vec(&again).unwrap())).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let list = s.get("Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate").await;
    assert!(body(&list).contains("olive-at-southbank") && body(&list).contains(&first), "the pair is on the worklist: {}", body(&list));
    // An NHS number another record has: refused (REST and transaction).
    let stolen = json!({"resourceType": "Patient", "id": "not-jane", "identifier": [{"system": NHS, "value": "9449305552"}], "name": [{"family": "Other"}]});
    let r = s.request_as(&sys, "PUT", "Patient/not-jane", Some(&serde_json::to_vec(&stolen).unwrap())).await;
    assert_eq!(r.status, 409, "{}", body(&r));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": stolen, "request": {"method": "PUT", "url": "Patient/not-jane"}}]});
    let r = s.request_as(&sys, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await;
    assert_eq!(r.status, 409, "{}", body(&r));
    assert_eq!(s.get("Patient/not-jane").await.status, 404, "nothing stored");
}
