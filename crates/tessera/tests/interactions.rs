//! The interactions client libraries (fhirpy, fhirclient, fhir-kit-client) call beyond
//! CRUD and search, over real HTTP on both backends: `$validate`, FHIRPath Patch,
//! conditional PATCH, operations by POST and at every level, `$meta`/`$meta-add`/
//! `$meta-delete`, `_count=0` and `_summary=count`, POST with a query (conditional create),
//! raw Binary content — and, without a server, the official FHIRPath Patch test suite.

mod common;
use common::Server;
use serde_json::{json, Value};

on_both_backends!(
    validate_operation,
    fhirpath_patch,
    conditional_patch,
    operations_by_get_and_post,
    meta_operations,
    count_zero_and_summary_count,
    post_with_query_is_a_conditional_create,
    binary_raw_content,
    errors_are_operation_outcomes,
);

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}], "gender": "female", "birthDate": "1970-01-01"})
}

fn id_of(r: &common::Reply) -> String {
    let loc = r.header("location").unwrap_or_else(|| panic!("Location header: {} {}", r.status, String::from_utf8_lossy(&r.body)));
    loc.rsplit('/').nth(2).unwrap().to_string()
}

fn body(r: &common::Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

fn bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

/// A FHIRPath Patch of the given operations (each a list of parts).
fn patch_of(ops: &[Value]) -> Value {
    json!({"resourceType": "Parameters", "parameter": ops.iter().map(|parts| json!({"name": "operation", "part": parts})).collect::<Vec<_>>()})
}

/// The OperationOutcome issues of a reply, as (severity, code, diagnostics).
fn issues(r: &common::Reply) -> Vec<(String, String, String)> {
    let b = r.json();
    assert_eq!(b["resourceType"], "OperationOutcome", "{}", body(r));
    b["issue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i["severity"].as_str().unwrap_or("").to_string(), i["code"].as_str().unwrap_or("").to_string(), i["diagnostics"].as_str().unwrap_or("").to_string()))
        .collect()
}

async fn patient_count(s: &Server, family: &str) -> u64 {
    let r = s.get(&format!("Patient?family={family}&_summary=count")).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    r.json()["total"].as_u64().unwrap_or_else(|| panic!("a total: {}", body(&r)))
}

async fn validate_operation(s: &Server) {
    // Type level, the resource as the body: a clean resource (with a narrative: dom-6 warns
    // without one) gets one "no issues" information.
    let mut clean = patient("Valid");
    clean["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Valid</div>"});
    let r = s.post("Patient/$validate", &clean).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let i = issues(&r);
    assert_eq!(i.len(), 1, "{i:?}");
    assert_eq!((i[0].0.as_str(), i[0].1.as_str()), ("information", "informational"));
    // Every problem is listed, each an error naming its element; 200 all the same.
    let mut bad = patient("Invalid");
    bad["birthDate"] = json!("yesterday");
    bad["colour"] = json!("blue");
    let r = s.post("Patient/$validate", &bad).await;
    assert_eq!(r.status, 200);
    let oo = r.json();
    let errors: Vec<&Value> = oo["issue"].as_array().unwrap().iter().filter(|i| i["severity"] == "error").collect();
    assert!(errors.len() >= 2, "{oo}");
    let text = oo.to_string();
    assert!(text.contains("Patient.birthDate") && text.contains("colour"), "{text}");
    assert!(!text.contains("informational"), "no 'no issues' when there are errors: {text}");
    // Nothing is stored by $validate.
    assert_eq!(patient_count(s, "Valid").await, 0);
    assert_eq!(patient_count(s, "Invalid").await, 0);
    // A Parameters with resource, mode and a profile other than the base: the profile is
    // reported as not evaluated (a warning), never silently passed.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": patient("Params")},
        {"name": "mode", "valueCode": "create"},
        {"name": "profile", "valueUri": "http://example.org/StructureDefinition/my-patient"}]});
    let r = s.post("Patient/$validate", &params).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let i = issues(&r);
    assert!(i.iter().any(|(sev, code, d)| sev == "warning" && code == "not-supported" && d.contains("my-patient")), "{i:?}");
    assert!(!i.iter().any(|(sev, ..)| sev == "error"), "{i:?}");
    let base = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": clean}, {"name": "profile", "valueUri": "http://hl7.org/fhir/StructureDefinition/Patient"}]});
    assert_eq!(issues(&s.post("Patient/$validate", &base).await)[0].0, "information", "the base profile is what is checked");
    // The resource must be of the endpoint's type.
    let r = s.post("Observation/$validate", &patient("Wrong")).await;
    assert_eq!(r.status, 200);
    assert!(issues(&r).iter().any(|(sev, _, d)| sev == "error" && d.contains("does not match")), "{}", body(&r));
    // Instance level: update and delete against the current version.
    let id = id_of(&s.post("Patient", &patient("Instance")).await);
    let mut changed = patient("Instance");
    changed["id"] = json!(id);
    changed["gender"] = json!("male");
    let r = s.post(&format!("Patient/{id}/$validate?mode=update"), &changed).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(!issues(&r).iter().any(|(sev, ..)| sev == "error"), "{}", body(&r));
    let r = s.request("POST", &format!("Patient/{id}/$validate"), &[], Some(&bytes(&json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]})))).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let i = issues(&r);
    assert!(i[0].2.contains("may be deleted"), "{i:?}");
    // An id that does not match the URL.
    let mut other = changed.clone();
    other["id"] = json!("someone-else");
    assert!(issues(&s.post(&format!("Patient/{id}/$validate"), &other).await).iter().any(|(sev, _, d)| sev == "error" && d.contains("does not match")));
    // Still version 1, still female: nothing was written.
    let now = s.get(&format!("Patient/{id}")).await.json();
    assert_eq!((now["meta"]["versionId"].as_str(), now["gender"].as_str()), (Some("1"), Some("female")));
    // mode=delete of something absent.
    let r = s.request("POST", "Patient/never-was/$validate?mode=delete", &[], None).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert!(issues(&r).iter().any(|(sev, code, _)| sev == "error" && code == "not-found"));
    // The caller's view: a user who may not see a resource learns what a write would tell
    // them — that it is not known — and no more.
    s.load_demo().await;
    let patel = s.user_token("dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"));
    let hidden = s.request_as(&patel, "POST", "Condition/cond-daniel-psy/$validate?mode=delete", None).await;
    let absent = s.request_as(&patel, "POST", "Condition/no-such-condition/$validate?mode=delete", None).await;
    assert_eq!((hidden.status, absent.status), (200, 200));
    let (h, a) = (issues(&hidden), issues(&absent));
    assert_eq!(h[0].1, "not-found", "{h:?}");
    assert_eq!(h[0].1, a[0].1);
    // GET is not how $validate is invoked.
    let r = s.get("Patient/$validate").await;
    assert_eq!(r.status, 405, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(s.post("NotAType/$validate", &patient("X")).await.status, 404);
}

async fn fhirpath_patch(s: &Server) {
    let mut p = patient("Patchy");
    p["identifier"] = json!([{"system": "urn:t", "value": "1"}, {"system": "urn:t", "value": "2"}]);
    let id = id_of(&s.post("Patient", &p).await);
    let ct = [("content-type", "application/fhir+json")];
    let patch = patch_of(&[
        json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "1971-02-03"}]),
        json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "deceased"}, {"name": "value", "valueBoolean": false}]),
        json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "index", "valueInteger": 0}, {"name": "value", "valueIdentifier": {"system": "urn:t", "value": "0"}}]),
        json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.identifier.where(value = '2')"}]),
        json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.gender"}]),
        json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "contact"},
            {"name": "value", "part": [{"name": "name", "valueHumanName": {"family": "Kin"}}, {"name": "telecom", "valueContactPoint": {"system": "phone", "value": "123"}}]}]),
    ]);
    let r = s.request("PATCH", &format!("Patient/{id}"), &ct, Some(&bytes(&patch))).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    let got = s.get(&format!("Patient/{id}")).await.json();
    assert_eq!(got["birthDate"], "1971-02-03");
    assert_eq!(got["deceasedBoolean"], false);
    assert_eq!(got["identifier"], json!([{"system": "urn:t", "value": "0"}, {"system": "urn:t", "value": "1"}]));
    assert!(got.get("gender").is_none());
    assert_eq!(got["contact"], json!([{"name": {"family": "Kin"}, "telecom": [{"system": "phone", "value": "123"}]}]));
    // The patched result is validated like any update: refused, nothing written.
    let bad = patch_of(&[json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueString": "last spring"}])]);
    let r = s.request("PATCH", &format!("Patient/{id}"), &ct, Some(&bytes(&bad))).await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert!(body(&r).contains("Patient.birthDate"), "{}", body(&r));
    // A path that selects nothing where an element is needed: 422, naming the operation.
    let missing = patch_of(&[json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient.identifier.where(use = 'official').period"}, {"name": "name", "valueString": "end"}, {"name": "value", "valueDate": "2021-12-01"}])]);
    let r = s.request("PATCH", &format!("Patient/{id}"), &ct, Some(&bytes(&missing))).await;
    assert_eq!(r.status, 422, "{}", body(&r));
    assert!(body(&r).contains("No content found") && body(&r).contains("Parameters.parameter[0]"), "{}", body(&r));
    // Malformed: 400.
    let r = s.request("PATCH", &format!("Patient/{id}"), &ct, Some(&bytes(&patch_of(&[json!([{"name": "type", "valueCode": "shuffle"}, {"name": "path", "valueString": "Patient"}])])))).await;
    assert_eq!(r.status, 400, "{}", body(&r));
    let r = s.request("PATCH", &format!("Patient/{id}"), &ct, Some(&bytes(&patch_of(&[json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name.where("}])])))).await;
    assert_eq!(r.status, 400, "{}", body(&r));
    // Changing the id is refused.
    let r = s.request("PATCH", &format!("Patient/{id}"), &ct, Some(&bytes(&patch_of(&[json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.id"}, {"name": "value", "valueId": "other"}])])))).await;
    assert_eq!(r.status, 422, "{}", body(&r));
    assert_eq!(s.get(&format!("Patient/{id}")).await.json()["meta"]["versionId"], "2", "nothing written by the refused patches");
    // fhirpy's patch(field=value): a JSON object sent as application/json (a merge patch).
    let r = s.request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/json")], Some(br#"{"active": true, "deceasedBoolean": null}"#)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let got = r.json();
    assert_eq!((got["active"].as_bool(), got.get("deceasedBoolean")), (Some(true), None));
    let r = s.request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/merge-patch+json")], Some(br#"{"gender": "other"}"#)).await;
    assert_eq!((r.status, r.json()["gender"].as_str()), (200, Some("other")));
    // JSON Patch as before, and If-Match for every format.
    let r = s.request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/json-patch+json"), ("if-match", "W/\"1\"")], Some(br#"[{"op": "remove", "path": "/active"}]"#)).await;
    assert_eq!(r.status, 412);
    let r = s.request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/json-patch+json"), ("if-match", "W/\"4\"")], Some(br#"[{"op": "remove", "path": "/active"}]"#)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    // Not a patch format: 415.
    let r = s.request("PATCH", &format!("Patient/{id}"), &[("content-type", "text/plain")], Some(b"active=false")).await;
    assert_eq!(r.status, 415);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
}

async fn conditional_patch(s: &Server) {
    let mut a = patient("CondPatch");
    a["identifier"] = json!([{"system": "urn:cp", "value": "A"}]);
    let a_id = id_of(&s.post("Patient", &a).await);
    // Two different people given the same (non-domain) identifier B.
    let mut b = json!({"resourceType": "Patient", "name": [{"family": "Brandt", "given": ["Uma"]}], "gender": "male", "birthDate": "1948-02-29"});
    b["identifier"] = json!([{"system": "urn:cp", "value": "B"}]);
    assert_eq!(s.post("Patient", &b).await.status, 201);
    let mut b2 = json!({"resourceType": "Patient", "name": [{"family": "Osei", "given": ["Kofi"]}], "gender": "female", "birthDate": "2012-12-12"});
    b2["identifier"] = b["identifier"].clone();
    assert_eq!(s.post("Patient", &b2).await.status, 201);
    // One match: patched (FHIRPath Patch).
    let patch = patch_of(&[json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.gender"}, {"name": "value", "valueCode": "male"}])]);
    let r = s.request("PATCH", "Patient?identifier=urn:cp|A", &[], Some(&bytes(&patch))).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(id_of(&r), a_id);
    assert_eq!(s.get(&format!("Patient/{a_id}")).await.json()["gender"], "male");
    // And with JSON Patch.
    let r = s.request("PATCH", "Patient?identifier=urn:cp|A", &[("content-type", "application/json-patch+json")], Some(br#"[{"op": "add", "path": "/active", "value": false}]"#)).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    assert_eq!(r.header("etag").as_deref(), Some("W/\"3\""));
    // No match: 404; several: 412 — nothing written either way.
    let r = s.request("PATCH", "Patient?identifier=urn:cp|none", &[], Some(&bytes(&patch))).await;
    assert_eq!(r.status, 404, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    let r = s.request("PATCH", "Patient?identifier=urn:cp|B", &[("content-type", "application/json-patch+json")], Some(br#"[{"op": "add", "path": "/active", "value": false}]"#)).await;
    assert_eq!(r.status, 412, "{}", body(&r));
    let found = s.get("Patient?identifier=urn:cp|B").await.json();
    for e in found["entry"].as_array().unwrap() {
        assert_eq!(e["resource"]["meta"]["versionId"], "1");
    }
    // No criteria at all is not a conditional patch.
    assert_eq!(s.request("PATCH", "Patient", &[], Some(&bytes(&patch))).await.status, 400);
}

async fn operations_by_get_and_post(s: &Server) {
    let pid = id_of(&s.post("Patient", &patient("Ops")).await);
    for i in 0..3 {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("o{i}")}, "subject": {"reference": format!("Patient/{pid}")}});
        assert_eq!(s.post("Observation", &obs).await.status, 201);
    }
    // $everything by GET and by POST (Parameters, or form parameters): the same answer.
    let get = s.get(&format!("Patient/{pid}/$everything?_count=2")).await;
    assert_eq!(get.status, 200, "{}", body(&get));
    let params = json!({"resourceType": "Parameters", "parameter": [{"name": "_count", "valueInteger": 2}]});
    let post = s.post(&format!("Patient/{pid}/$everything"), &params).await;
    assert_eq!(post.status, 200, "{}", body(&post));
    let ids = |r: &common::Reply| r.json()["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(ids(&get), ids(&post));
    assert_eq!(ids(&post).len(), 2);
    assert!(post.json()["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"), "paged: {}", body(&post));
    let form = s.request("POST", &format!("Patient/{pid}/$everything"), &[("content-type", "application/x-www-form-urlencoded")], Some(b"_type=Observation")).await;
    assert_eq!(form.status, 200, "{}", body(&form));
    assert_eq!(ids(&form).len(), 3);
    let empty = s.request("POST", &format!("Patient/{pid}/$everything"), &[], None).await;
    assert_eq!((empty.status, ids(&empty).len()), (200, 4));
    // $meta at every level, GET and POST.
    for path in ["$meta".to_string(), "Patient/$meta".to_string(), format!("Patient/{pid}/$meta")] {
        for method in ["GET", "POST"] {
            let r = s.request(method, &path, &[], None).await;
            assert_eq!(r.status, 200, "{method} {path}: {}", body(&r));
            let b = r.json();
            assert_eq!((b["resourceType"].as_str(), b["parameter"][0]["name"].as_str()), (Some("Parameters"), Some("return")), "{method} {path}");
        }
    }
    // Routing: `GET [type]/$op` is not a read of the id "$op"; POST [type]/[id] is not an
    // interaction; unknown operations are 404 — all as OperationOutcomes.
    let r = s.get("Patient/$everything").await;
    assert_eq!(r.status, 404, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert!(body(&r).contains("$everything"));
    let r = s.post(&format!("Patient/{pid}"), &patient("Ops")).await;
    assert_eq!(r.status, 405, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    for (method, path) in [("GET", "$nothing".to_string()), ("POST", "Patient/$nothing".to_string()), ("POST", format!("Patient/{pid}/$nothing"))] {
        let r = s.request(method, &path, &[], None).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(r.json()["resourceType"], "OperationOutcome");
    }
    // An operation body that is neither FHIR JSON nor a form: 415.
    let r = s.request("POST", &format!("Patient/{pid}/$everything"), &[("content-type", "text/plain")], Some(b"x")).await;
    assert_eq!(r.status, 415);
}

async fn meta_operations(s: &Server) {
    let pid = id_of(&s.post("Patient", &patient("Meta")).await);
    let params = |meta: Value| json!({"resourceType": "Parameters", "parameter": [{"name": "meta", "valueMeta": meta}]});
    let tag = json!({"system": "urn:tags", "code": "vip"});
    let label = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"});
    let r = s.post(&format!("Patient/{pid}/$meta-add"), &params(json!({"tag": [tag], "security": [label], "profile": ["http://example.org/p"]}))).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let meta = r.json()["parameter"][0]["valueMeta"].clone();
    assert!(meta["tag"].as_array().unwrap().iter().any(|t| t["code"] == "vip"), "{meta}");
    assert_eq!(meta["security"][0]["code"], "R");
    assert_eq!(meta["profile"], json!(["http://example.org/p"]));
    // Written as a new version (Tessera keeps versions immutable), and read back.
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    let stored = s.get(&format!("Patient/{pid}")).await.json();
    assert_eq!(stored["meta"]["security"][0]["code"], "R");
    // Adding what is there already changes nothing and writes nothing.
    let r = s.post(&format!("Patient/{pid}/$meta-add"), &params(json!({"tag": [{"system": "urn:tags", "code": "vip", "display": "V.I.P."}]}))).await;
    assert_eq!((r.status, r.header("etag").as_deref()), (200, Some("W/\"2\"")));
    // $meta: instance, type and system.
    let m = s.get(&format!("Patient/{pid}/$meta")).await.json();
    assert_eq!(m["parameter"][0]["valueMeta"]["versionId"], "2");
    for path in ["Patient/$meta", "$meta"] {
        let m = s.get(path).await.json();
        let v = &m["parameter"][0]["valueMeta"];
        assert!(v["tag"].as_array().is_some_and(|t| t.iter().any(|t| t["code"] == "vip")), "{path}: {m}");
        assert!(v["security"].as_array().is_some_and(|t| t.iter().any(|t| t["code"] == "R")), "{path}: {m}");
        assert!(!m.to_string().contains("tessera.health/author"), "Tessera's bookkeeping tags are left out: {m}");
    }
    // $meta-delete.
    let r = s.post(&format!("Patient/{pid}/$meta-delete"), &params(json!({"security": [label], "tag": [tag]}))).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let stored = s.get(&format!("Patient/{pid}")).await.json();
    assert!(stored["meta"].get("security").is_none(), "{stored}");
    assert_eq!(stored["meta"]["versionId"], "3");
    assert_eq!(s.get(&format!("Patient/{pid}/$meta-add")).await.status, 405, "$meta-add changes data: POST only");
    assert_eq!(s.post(&format!("Patient/{pid}/$meta-add"), &json!({"resourceType": "Parameters"})).await.status, 400);
    assert_eq!(s.post("Patient/nobody/$meta-add", &params(json!({"tag": [tag]}))).await.status, 404);
    // Security labels decide who sees data: changing them is decided as an update. A label
    // that hides data from a user cannot be removed by them (they cannot see it) …
    s.load_demo().await;
    let patel = s.user_token("dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"));
    let psy = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "PSY"});
    let r = s.request_as(&patel, "POST", "Condition/cond-daniel-psy/$meta-delete", Some(&bytes(&params(json!({"security": [psy]}))))).await;
    assert_eq!(r.status, 404, "{}", body(&r));
    let sealed = s.get("Condition/cond-daniel-psy").await.json();
    assert_eq!(sealed["meta"]["versionId"], "1");
    assert!(sealed.to_string().contains("PSY"));
    assert_eq!(s.request_as(&patel, "GET", "Condition/cond-daniel-psy/$meta", None).await.status, 404);
    // … and data another trust owns cannot be relabelled, even when visible.
    assert_eq!(s.request_as(&patel, "GET", "Observation/obs-jane-glucose", None).await.status, 200);
    let r = s.request_as(&patel, "POST", "Observation/obs-jane-glucose/$meta-add", Some(&bytes(&params(json!({"security": [label]}))))).await;
    assert_eq!(r.status, 403, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(s.get("Observation/obs-jane-glucose").await.json()["meta"]["versionId"], "1");
    // The type-level $meta counts only what the caller may see.
    let m = s.request_as(&patel, "GET", "Condition/$meta", None).await;
    assert_eq!(m.status, 200, "{}", body(&m));
    assert!(!body(&m).contains("PSY"), "a hidden resource's label is not listed: {}", body(&m));
}

async fn count_zero_and_summary_count(s: &Server) {
    let mut pid = String::new();
    // Three different people of one family (the same person registered three times would
    // be one record).
    for (given, born) in [("Ann", "1950-03-04"), ("Bob", "1977-11-19"), ("Cat", "2004-07-30")] {
        let p = json!({"resourceType": "Patient", "name": [{"family": "Counted", "given": [given]}], "gender": "female", "birthDate": born});
        pid = id_of(&s.post("Patient", &p).await);
    }
    for _ in 0..2 {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "c"}, "subject": {"reference": format!("Patient/{pid}")}});
        s.post("Observation", &obs).await;
    }
    let check = |r: common::Reply, total: u64, what: &str| {
        assert_eq!(r.status, 200, "{what}: {}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert_eq!(b["total"].as_u64(), Some(total), "{what}: {b}");
        assert!(b.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()), "{what}: no entries: {b}");
        assert!(!b["link"].as_array().into_iter().flatten().any(|l| l["relation"] == "next"), "{what}: no next link: {b}");
    };
    // fhirpy's count(): `_count=0&_totalMethod=count`.
    check(s.get("Patient?family=Counted&_count=0").await, 3, "_count=0");
    check(s.get("Patient?family=Counted&_count=0&_totalMethod=count").await, 3, "fhirpy count()");
    check(s.get("Patient?family=Counted&_summary=count").await, 3, "type");
    let all = s.get("Patient?_summary=count").await.json()["total"].as_u64().unwrap();
    assert!(all >= 3);
    check(s.get("?_type=Patient&_summary=count").await, all, "system");
    check(s.get("?_type=Patient&_count=0").await, all, "system _count=0");
    check(s.get(&format!("Patient/{pid}/Observation?_summary=count")).await, 2, "compartment");
    check(s.get(&format!("Patient/{pid}/Observation?_count=0")).await, 2, "compartment _count=0");
    check(s.request("POST", "Patient/_search", &[("content-type", "application/x-www-form-urlencoded")], Some(b"family=Counted&_summary=count")).await, 3, "_search");
    check(s.request("POST", "Patient/_search", &[("content-type", "application/x-www-form-urlencoded")], Some(b"family=Counted&_count=0")).await, 3, "_search _count=0");
    // A user the policy restricts: counted through the gate.
    s.load_demo().await;
    let patel = s.user_token("dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"));
    let all = s.request_as(&patel, "GET", "Condition?_count=1000", None).await.json();
    let visible = all["entry"].as_array().map_or(0, |e| e.iter().filter(|e| e["search"]["mode"] == "match").count()) as u64;
    check(s.request_as(&patel, "GET", "Condition?_count=0", None).await, visible, "restricted reader");
}

async fn post_with_query_is_a_conditional_create(s: &Server) {
    let mut p = patient("GetOrCreate");
    p["identifier"] = json!([{"system": "urn:goc", "value": "1"}]);
    // fhirpy's get_or_create: POST [type]?criteria with the resource.
    let first = s.post("Patient?identifier=urn:goc|1", &p).await;
    assert_eq!(first.status, 201, "{}", body(&first));
    let second = s.post("Patient?identifier=urn:goc%7C1", &p).await;
    assert_eq!(second.status, 200, "{}", body(&second));
    assert_eq!(id_of(&first), id_of(&second));
    assert_eq!(patient_count(s, "GetOrCreate").await, 1);
    // _format is not a criterion (another person of the same family: a new record).
    let sibling = json!({"resourceType": "Patient", "name": [{"family": "GetOrCreate", "given": ["Sib"]}], "gender": "male", "birthDate": "1999-09-09"});
    let r = s.post("Patient?_format=json", &sibling).await;
    assert_eq!(r.status, 201);
    // The header and the URL agreeing is fine; disagreeing is refused.
    let r = s.request("POST", "Patient?identifier=urn:goc|1", &[("if-none-exist", "identifier=urn:goc|1")], Some(&bytes(&p))).await;
    assert_eq!(r.status, 200);
    let r = s.request("POST", "Patient?identifier=urn:goc|1", &[("if-none-exist", "identifier=urn:goc|2")], Some(&bytes(&p))).await;
    assert_eq!(r.status, 400, "{}", body(&r));
    // Criteria a conditional create cannot evaluate: refused, not ignored (nothing created).
    let r = s.post("Patient?family=GetOrCreate", &patient("GetOrCreate")).await;
    assert_eq!(r.status, 400, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(patient_count(s, "GetOrCreate").await, 2);
}

async fn binary_raw_content(s: &Server) {
    let pdf: Vec<u8> = b"%PDF-1.4\n\x00\x01\x02\xff binary".to_vec();
    let r = s.request("POST", "Binary", &[("content-type", "application/pdf")], Some(&pdf)).await;
    assert_eq!(r.status, 201, "{}", body(&r));
    let id = id_of(&r);
    // Raw when asked for something other than FHIR.
    for accept in ["application/pdf", "*/*"] {
        let raw = s.request("GET", &format!("Binary/{id}"), &[("accept", accept)], None).await;
        assert_eq!(raw.status, 200);
        assert_eq!(raw.header("content-type").as_deref(), Some("application/pdf"), "{accept}");
        assert_eq!(raw.body.as_ref(), pdf.as_slice(), "{accept}");
        assert_eq!(raw.header("etag").as_deref(), Some("W/\"1\""));
    }
    // FHIR JSON when asked for it (or by default).
    for headers in [vec![("accept", "application/fhir+json")], vec![]] {
        let r = s.request("GET", &format!("Binary/{id}"), &headers, None).await;
        assert_eq!(r.status, 200);
        let b = r.json();
        assert_eq!((b["resourceType"].as_str(), b["contentType"].as_str()), (Some("Binary"), Some("application/pdf")));
        assert!(b["data"].as_str().is_some_and(|d| !d.is_empty()));
    }
    // PUT raw: a new version, with the security context from the header.
    let ctx_patient = id_of(&s.post("Patient", &patient("BinaryOwner")).await);
    let ctx = format!("Patient/{ctx_patient}");
    let r = s.request("PUT", &format!("Binary/{id}"), &[("content-type", "image/png"), ("x-security-context", &ctx)], Some(b"\x89PNG")).await;
    assert_eq!(r.status, 200, "{}", body(&r));
    let raw = s.request("GET", &format!("Binary/{id}"), &[("accept", "image/*")], None).await;
    assert_eq!((raw.header("content-type").as_deref(), raw.body.as_ref()), (Some("image/png"), &b"\x89PNG"[..]));
    assert_eq!(raw.header("x-security-context").as_deref(), Some(ctx.as_str()));
    let fhir = s.get(&format!("Binary/{id}")).await.json();
    assert_eq!(fhir["securityContext"]["reference"], json!(ctx));
    let v1 = s.request("GET", &format!("Binary/{id}/_history/1"), &[("accept", "application/pdf")], None).await;
    assert_eq!(v1.body.as_ref(), pdf.as_slice(), "vread raw");
    // A security context that does not exist: refused, nothing stored.
    let r = s.request("POST", "Binary", &[("content-type", "text/plain"), ("x-security-context", "DocumentReference/nowhere")], Some(b"x")).await;
    assert_eq!(r.status, 422, "{}", body(&r));
    // Absent: 404 as an OperationOutcome, also when raw content was asked for.
    let r = s.request("GET", "Binary/nothing-here", &[("accept", "application/pdf")], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    // Size limits: the body limit (413), and FHIR's 1 MB string limit on the base64 text.
    let big = vec![7u8; 900 * 1024];
    let r = s.request("POST", "Binary", &[("content-type", "application/octet-stream")], Some(&big)).await;
    assert_eq!(r.status, 413, "{}", body(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    let huge = vec![7u8; 9 * 1024 * 1024];
    let r = s.request("POST", "Binary", &[("content-type", "application/octet-stream")], Some(&huge)).await;
    assert_eq!(r.status, 413);
    // Only Binary takes raw content.
    let r = s.request("POST", "Patient", &[("content-type", "application/pdf")], Some(&pdf)).await;
    assert_eq!(r.status, 415);
}

async fn errors_are_operation_outcomes(s: &Server) {
    let pid = id_of(&s.post("Patient", &patient("Errors")).await);
    let cases: Vec<(&str, String, Vec<(&str, &str)>, Option<Vec<u8>>, u16)> = vec![
        ("PATCH", format!("Patient/{pid}"), vec![("content-type", "application/x-www-form-urlencoded")], Some(b"a=b".to_vec()), 415),
        ("PATCH", format!("Patient/{pid}"), vec![("content-type", "application/json-patch+json")], Some(b"{".to_vec()), 400),
        ("PATCH", format!("Patient/{pid}"), vec![("content-type", "application/json-patch+json")], Some(b"{}".to_vec()), 400),
        ("PATCH", "Patient/absent".to_string(), vec![], Some(bytes(&patch_of(&[]))), 404),
        ("PATCH", "Patient?name=x".to_string(), vec![], Some(bytes(&patch_of(&[]))), 400),
        ("POST", "Patient/$validate".to_string(), vec![], None, 400),
        ("POST", "Patient/$validate".to_string(), vec![], Some(b"[1,".to_vec()), 400),
        ("POST", "Patient/$validate?mode=sideways".to_string(), vec![], Some(bytes(&patient("X"))), 400),
        ("GET", "Patient/$meta-delete".to_string(), vec![], None, 404),
        ("POST", format!("Patient/{pid}/$break-glass"), vec![("content-type", "application/xml")], Some(b"<x/>".to_vec()), 415),
    ];
    for (method, path, headers, body_bytes, status) in cases {
        let r = s.request(method, &path, &headers, body_bytes.as_deref()).await;
        assert_eq!(r.status, status, "{method} {path}: {}", body(&r));
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{method} {path}");
    }
}

// ---------------------------------------------------------------------------------------
// The official FHIRPath Patch test suite (`fhir-patch-tests.xml`), applied with the engine's
// patch code. The cases are XML: they are turned into FHIR JSON here, element by element,
// with the shipped R4 definitions (lists where `max = *`, primitive JSON types, `_x`
// extensions, xhtml as text).

mod xml {
    use serde_json::{Map, Value};
    use tessera_fhir::definitions::{self, JsonKind, Primitive, Target, TypeDef};

    #[derive(Debug, Default, Clone)]
    pub struct El {
        pub name: String,
        pub attrs: Vec<(String, String)>,
        pub children: Vec<Node>,
    }

    #[derive(Debug, Clone)]
    pub enum Node {
        El(El),
        Text(String),
    }

    impl El {
        pub fn attr(&self, name: &str) -> Option<&str> {
            self.attrs.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
        }
        pub fn elements(&self) -> impl Iterator<Item = &El> {
            self.children.iter().filter_map(|c| match c {
                Node::El(e) => Some(e),
                Node::Text(_) => None,
            })
        }
        pub fn child(&self, name: &str) -> Option<&El> {
            self.elements().find(|e| e.name == name)
        }
    }

    /// Parses XML into a synthetic root element holding the document's elements.
    pub fn parse(xml: &str) -> El {
        use quick_xml::events::Event;
        let mut reader = quick_xml::Reader::from_str(xml);
        let mut stack = vec![El::default()];
        let start = |e: &quick_xml::events::BytesStart<'_>| El {
            name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
            attrs: e
                .attributes()
                .filter_map(Result::ok)
                .map(|a| (String::from_utf8_lossy(a.key.as_ref()).into_owned(), a.unescape_value().map(|v| v.into_owned()).unwrap_or_default()))
                .collect(),
            children: Vec::new(),
        };
        let text = |stack: &mut Vec<El>, t: String| {
            if let Some(top) = stack.last_mut() {
                top.children.push(Node::Text(t));
            }
        };
        loop {
            match reader.read_event().expect("well-formed XML") {
                Event::Start(e) => stack.push(start(&e)),
                Event::Empty(e) => {
                    let el = start(&e);
                    stack.last_mut().unwrap().children.push(Node::El(el));
                }
                Event::End(_) => {
                    let el = stack.pop().unwrap();
                    stack.last_mut().unwrap().children.push(Node::El(el));
                }
                Event::Text(t) => {
                    let raw = String::from_utf8_lossy(t.as_ref()).into_owned();
                    text(&mut stack, quick_xml::escape::unescape(&raw).map(|c| c.into_owned()).unwrap_or(raw));
                }
                Event::GeneralRef(r) => {
                    let entity = format!("&{};", String::from_utf8_lossy(r.as_ref()));
                    text(&mut stack, quick_xml::escape::unescape(&entity).map(|c| c.into_owned()).unwrap_or(entity));
                }
                Event::CData(t) => text(&mut stack, String::from_utf8_lossy(t.as_ref()).into_owned()),
                Event::Eof => break,
                _ => {}
            }
        }
        stack.pop().unwrap()
    }

    /// A FHIR resource element as FHIR JSON.
    pub fn resource(el: &El) -> Value {
        let defs = definitions::definitions();
        let td = defs.resource(&el.name).unwrap_or_else(|| panic!("unknown resource type {}", el.name));
        let mut obj = Map::new();
        obj.insert("resourceType".into(), Value::String(el.name.clone()));
        fill(&mut obj, el, td);
        Value::Object(obj)
    }

    fn fill(obj: &mut Map<String, Value>, el: &El, td: &'static TypeDef) {
        let defs = definitions::definitions();
        for (k, v) in &el.attrs {
            if k != "xmlns" && !k.starts_with("xmlns:") && k != "value" {
                obj.insert(k.clone(), Value::String(v.clone()));
            }
        }
        for child in el.elements() {
            let (e, t) = td.lookup(&child.name).unwrap_or_else(|| panic!("{} has no element {}", td.name, child.name));
            let element = &td.elements[e];
            let (value, ext) = match element.types[t].target {
                Target::Primitive(Primitive::Xhtml) => (Value::String(xhtml(child)), None),
                Target::Primitive(p) => {
                    let value = match child.attr("value") {
                        None => Value::Null,
                        Some(v) => match p.json_kind() {
                            JsonKind::Boolean => Value::Bool(v == "true"),
                            JsonKind::Number => serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string())),
                            JsonKind::String => Value::String(v.to_string()),
                        },
                    };
                    let mut ext = Map::new();
                    if let Some(id) = child.attr("id") {
                        ext.insert("id".into(), Value::String(id.to_string()));
                    }
                    let extensions: Vec<Value> = child.elements().filter(|c| c.name == "extension").map(|c| complex(c, defs.type_def("Extension").unwrap())).collect();
                    if !extensions.is_empty() {
                        ext.insert("extension".into(), Value::Array(extensions));
                    }
                    (value, (!ext.is_empty()).then_some(Value::Object(ext)))
                }
                Target::Complex(id) => (complex(child, defs.get(id)), None),
                Target::Resource => (resource(child.elements().next().expect("a contained resource")), None),
            };
            let key = child.name.clone();
            if element.many {
                let arr = obj.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                arr.as_array_mut().unwrap().push(value);
                let len = arr.as_array().unwrap().len();
                if ext.is_some() || obj.contains_key(&format!("_{key}")) {
                    let exts = obj.entry(format!("_{key}")).or_insert_with(|| Value::Array(Vec::new())).as_array_mut().unwrap();
                    exts.resize(len - 1, Value::Null);
                    exts.push(ext.unwrap_or(Value::Null));
                }
            } else {
                if !value.is_null() {
                    obj.insert(key.clone(), value);
                }
                if let Some(ext) = ext {
                    obj.insert(format!("_{key}"), ext);
                }
            }
        }
    }

    fn complex(el: &El, td: &'static TypeDef) -> Value {
        let mut obj = Map::new();
        fill(&mut obj, el, td);
        Value::Object(obj)
    }

    /// Rewrites every narrative `div` string in canonical form (as [`xhtml`] writes it), so
    /// that a div given as text by a patch compares with one read from XML.
    pub fn normalize_divs(v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, c) in m.iter_mut() {
                    if k == "div" {
                        if let Value::String(text) = c {
                            if let Some(div) = parse(text).elements().next() {
                                *text = xhtml(div);
                            }
                        }
                    } else {
                        normalize_divs(c);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(normalize_divs),
            _ => {}
        }
    }

    /// The `div` as text, whitespace collapsed (the same for the input and the output).
    fn xhtml(el: &El) -> String {
        fn write(el: &El, out: &mut String) {
            out.push('<');
            out.push_str(&el.name);
            for (k, v) in &el.attrs {
                out.push_str(&format!(" {k}=\"{v}\""));
            }
            out.push('>');
            // Adjacent text (entities arrive as their own events) is joined, then its
            // whitespace collapsed.
            let mut text = String::new();
            let flush = |text: &mut String, out: &mut String| {
                let t = text.split_whitespace().collect::<Vec<_>>().join(" ");
                out.push_str(&quick_xml::escape::escape(&t));
                text.clear();
            };
            for c in &el.children {
                match c {
                    Node::El(e) => {
                        flush(&mut text, out);
                        write(e, out);
                    }
                    Node::Text(t) => text.push_str(t),
                }
            }
            flush(&mut text, out);
            out.push_str(&format!("</{}>", el.name));
        }
        let mut out = String::new();
        write(el, &mut out);
        out
    }
}

/// Cases of the suite not run, with the reason (none so far).
const SKIPPED: &[(&str, &str)] = &[];

#[test]
fn official_fhirpath_patch_suite() {
    use tessera_engine::patch::{PatchDoc, PatchFormat};
    let path = common::shared_data().join("fhirpath-tests/fhir-patch-tests.xml");
    let root = xml::parse(&std::fs::read_to_string(&path).unwrap());
    let tests = root.child("tests").expect("<tests>");
    let (mut passed, mut failed) = (0, Vec::new());
    let cases: Vec<&xml::El> = tests.elements().filter(|c| c.name == "case").collect();
    assert!(cases.len() >= 30, "the suite has its cases: {}", cases.len());
    for case in &cases {
        let name = case.attr("name").unwrap_or("?").to_string();
        if SKIPPED.iter().any(|(n, _)| *n == name) {
            continue;
        }
        let input = xml::resource(case.child("input").and_then(|i| i.elements().next()).expect("input"));
        let patch = xml::resource(case.child("diff").and_then(|d| d.elements().next()).expect("diff"));
        let expected_error = case.child("error").and_then(|e| e.attr("msg")).map(str::to_string);
        let expected = case.child("output").and_then(|o| o.elements().next()).map(xml::resource);
        let mut doc = input.clone();
        let result = PatchDoc::parse(patch.clone(), PatchFormat::Detect).and_then(|p| p.apply(&mut doc));
        xml::normalize_divs(&mut doc);
        let expected = expected.map(|mut e| {
            xml::normalize_divs(&mut e);
            e
        });
        let ok = match (&expected_error, &expected, &result) {
            (Some(_), _, Err(e)) => e.status == 422,
            (None, Some(want), Ok(())) => &doc == want,
            _ => false,
        };
        if ok {
            passed += 1;
        } else {
            failed.push(format!("{name}: expected {}, got {}", expected_error.clone().unwrap_or_else(|| expected.clone().unwrap_or_default().to_string()), match &result {
                Ok(()) => doc.to_string(),
                Err(e) => e.to_string(),
            }));
        }
    }
    eprintln!("FHIRPath Patch suite: {passed} of {} cases pass ({} skipped)", cases.len(), SKIPPED.len());
    assert!(failed.is_empty(), "{} failing:\n{}", failed.len(), failed.join("\n"));
    assert_eq!(passed + SKIPPED.len(), cases.len());
}
