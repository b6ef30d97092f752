//! The FHIR REST interactions over real HTTP, on both storage backends.

mod common;
use common::Server;
use serde_json::{json, Value};

on_both_backends!(
    create_read_vread_headers,
    update_history_and_if_match,
    update_as_create_and_id_rules,
    conditional_create_update_delete,
    delete_is_versioned,
    json_patch,
    prefer_return,
    format_negotiation,
    invalid_resources_are_refused_and_not_stored,
    transaction_resolves_references_and_is_atomic,
    transaction_conditional_references,
    batch_entries_are_independent,
    history_paging_and_since,
    metadata_health_metrics,
    bad_input_gets_operation_outcomes,
);

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family}], "gender": "female", "birthDate": "1970-01-01"})
}

fn id_of(r: &common::Reply) -> String {
    let loc = r.header("location").expect("Location header");
    let parts: Vec<&str> = loc.rsplit('/').collect();
    // …/Patient/{id}/_history/{v}
    parts[2].to_string()
}

async fn create_read_vread_headers(s: &Server) {
    let r = s.post("Patient", &patient("Alpha")).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("etag").as_deref(), Some("W/\"1\""));
    assert!(r.header("last-modified").is_some());
    assert!(r.header("content-type").unwrap().starts_with("application/fhir+json"));
    let id = id_of(&r);
    let created = r.json();
    assert_eq!(created["id"], json!(id));
    assert_eq!(created["meta"]["versionId"], "1");

    let read = s.get(&format!("Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json(), created);
    assert_eq!(read.header("etag").as_deref(), Some("W/\"1\""));
    let v = s.get(&format!("Patient/{id}/_history/1")).await;
    assert_eq!(v.status, 200);
    assert_eq!(v.json(), created);
    assert_eq!(s.get(&format!("Patient/{id}/_history/2")).await.status, 404);
    assert_eq!(s.get("Patient/does-not-exist").await.status, 404);
    assert_eq!(s.get("NotAType/1").await.status, 404);
    // If-None-Match with the current ETag: 304.
    let nm = s.request("GET", &format!("Patient/{id}"), &[("if-none-match", "W/\"1\"")], None).await;
    assert_eq!(nm.status, 304);
    // A client-supplied id on create is replaced by the server's.
    let mut with_id = patient("Beta");
    with_id["id"] = json!("client-chosen");
    let r = s.post("Patient", &with_id).await;
    assert_eq!(r.status, 201);
    assert_ne!(id_of(&r), "client-chosen");
}

async fn update_history_and_if_match(s: &Server) {
    let id = id_of(&s.post("Patient", &patient("Gamma")).await);
    let mut body = patient("Gamma2");
    body["id"] = json!(id);
    let r = s.put(&format!("Patient/{id}"), &body).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    // Stale If-Match: 412, nothing written.
    let stale = s
        .request("PUT", &format!("Patient/{id}"), &[("if-match", "W/\"1\"")], Some(&serde_json::to_vec(&body).unwrap()))
        .await;
    assert_eq!(stale.status, 412);
    assert_eq!(stale.json()["resourceType"], "OperationOutcome");
    let ok = s
        .request("PUT", &format!("Patient/{id}"), &[("if-match", "W/\"2\"")], Some(&serde_json::to_vec(&body).unwrap()))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("etag").as_deref(), Some("W/\"3\""));
    let h = s.get(&format!("Patient/{id}/_history")).await.json();
    assert_eq!(h["type"], "history");
    assert_eq!(h["total"], 3);
    let versions: Vec<&str> = h["entry"].as_array().unwrap().iter().map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap()).collect();
    assert_eq!(versions, vec!["3", "2", "1"]);
    assert_eq!(s.get(&format!("Patient/{id}/_history/1")).await.json()["name"][0]["family"], "Gamma");
}

async fn update_as_create_and_id_rules(s: &Server) {
    let mut body = patient("Delta");
    body["id"] = json!("delta-1");
    let r = s.put("Patient/delta-1", &body).await;
    assert_eq!(r.status, 201, "update-as-create");
    // Body id must match the URL.
    let r = s.put("Patient/other", &body).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["issue"][0]["expression"][0], "Patient.id");
    // Body without id.
    assert_eq!(s.put("Patient/delta-1", &patient("Delta")).await.status, 400);
    // Endpoint type must match.
    let mut obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}});
    obs["id"] = json!("delta-1");
    assert_eq!(s.put("Patient/delta-1", &obs).await.status, 400);
}

async fn conditional_create_update_delete(s: &Server) {
    let mut body = patient("Epsilon");
    body["identifier"] = json!([{"system": "urn:mrn", "value": "E-1"}]);
    let h = [("if-none-exist", "identifier=urn:mrn|E-1")];
    let bytes = serde_json::to_vec(&body).unwrap();
    let first = s.request("POST", "Patient", &h, Some(&bytes)).await;
    assert_eq!(first.status, 201);
    let second = s.request("POST", "Patient", &h, Some(&bytes)).await;
    assert_eq!(second.status, 200, "a matching conditional create returns the existing resource");
    assert_eq!(id_of(&first), id_of(&second));
    let found = s.get("Patient?identifier=urn:mrn|E-1").await.json();
    assert_eq!(found["total"], 1);
    // Conditional update: one match → update it.
    let mut upd = body.clone();
    upd["gender"] = json!("male");
    let r = s.put("Patient?identifier=urn:mrn|E-1", &upd).await;
    assert_eq!(r.status, 200);
    assert_eq!(id_of(&r), id_of(&first));
    assert_eq!(r.header("etag").as_deref(), Some("W/\"2\""));
    // No match → create.
    let mut other = patient("Zeta");
    other["identifier"] = json!([{"system": "urn:mrn", "value": "Z-1"}]);
    assert_eq!(s.put("Patient?identifier=urn:mrn|Z-1", &other).await.status, 201);
    // Two matches → 412: two different people given the same (non-domain) identifier.
    // (Two registrations of one person would be linked into one record by the patient index.)
    let mut dup = patient("Dup");
    dup["identifier"] = json!([{"system": "urn:mrn", "value": "D"}]);
    s.post("Patient", &dup).await;
    let mut other_dup = json!({"resourceType": "Patient", "name": [{"family": "Okonkwo", "given": ["Ada"]}], "gender": "male", "birthDate": "1991-06-23"});
    other_dup["identifier"] = dup["identifier"].clone();
    assert_eq!(s.post("Patient", &other_dup).await.status, 201);
    assert_eq!(s.put("Patient?identifier=urn:mrn|D", &dup).await.status, 412);
    assert_eq!(s.request("POST", "Patient", &[("if-none-exist", "identifier=urn:mrn|D")], Some(&serde_json::to_vec(&dup).unwrap())).await.status, 412);
    assert_eq!(s.request("DELETE", "Patient?identifier=urn:mrn|D", &[], None).await.status, 412);
    // Conditional delete of one match.
    assert_eq!(s.request("DELETE", "Patient?identifier=urn:mrn|Z-1", &[], None).await.status, 204);
    assert_eq!(s.get("Patient?identifier=urn:mrn|Z-1").await.json()["total"], 0);
    // Unsupported criteria are named.
    let r = s.request("POST", "Patient", &[("if-none-exist", "name=x")], Some(&bytes)).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("name"));
}

async fn delete_is_versioned(s: &Server) {
    let id = id_of(&s.post("Patient", &patient("Eta")).await);
    let d = s.request("DELETE", &format!("Patient/{id}"), &[], None).await;
    assert_eq!(d.status, 204);
    assert_eq!(d.header("etag").as_deref(), Some("W/\"2\""));
    assert_eq!(s.get(&format!("Patient/{id}")).await.status, 410);
    assert_eq!(s.get(&format!("Patient/{id}/_history/1")).await.status, 200);
    assert_eq!(s.get(&format!("Patient/{id}/_history/2")).await.status, 410);
    assert_eq!(s.request("DELETE", &format!("Patient/{id}"), &[], None).await.status, 204, "idempotent");
    let h = s.get(&format!("Patient/{id}/_history")).await.json();
    assert_eq!(h["total"], 2);
    assert_eq!(h["entry"][0]["request"]["method"], "DELETE");
    assert!(h["entry"][0].get("resource").is_none());
    // Re-creating a deleted resource by update gives version 3.
    let mut body = patient("Eta");
    body["id"] = json!(id);
    let r = s.put(&format!("Patient/{id}"), &body).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.header("etag").as_deref(), Some("W/\"3\""));
    assert_eq!(s.request("DELETE", "Patient/never-existed", &[], None).await.status, 404);
}

async fn json_patch(s: &Server) {
    let id = id_of(&s.post("Patient", &patient("Theta")).await);
    let patch = json!([{"op": "replace", "path": "/gender", "value": "male"}, {"op": "add", "path": "/active", "value": true}]);
    let r = s
        .request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/json-patch+json")], Some(&serde_json::to_vec(&patch).unwrap()))
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(body["gender"], "male");
    assert_eq!(body["active"], true);
    assert_eq!(body["meta"]["versionId"], "2");
    // A patch producing an invalid resource is refused.
    let bad = json!([{"op": "replace", "path": "/gender", "value": 42}]);
    let r = s
        .request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/json-patch+json")], Some(&serde_json::to_vec(&bad).unwrap()))
        .await;
    assert_eq!(r.status, 400);
    // A patch that does not apply: 422.
    let bad = json!([{"op": "remove", "path": "/nothing/here"}]);
    let r = s
        .request("PATCH", &format!("Patient/{id}"), &[("content-type", "application/json-patch+json")], Some(&serde_json::to_vec(&bad).unwrap()))
        .await;
    assert_eq!(r.status, 422);
    // Stale If-Match.
    let r = s
        .request(
            "PATCH",
            &format!("Patient/{id}"),
            &[("content-type", "application/json-patch+json"), ("if-match", "W/\"1\"")],
            Some(&serde_json::to_vec(&patch).unwrap()),
        )
        .await;
    assert_eq!(r.status, 412);
    assert_eq!(s.get(&format!("Patient/{id}")).await.json()["meta"]["versionId"], "2");
}

async fn prefer_return(s: &Server) {
    let bytes = serde_json::to_vec(&patient("Iota")).unwrap();
    let min = s.request("POST", "Patient", &[("prefer", "return=minimal")], Some(&bytes)).await;
    assert_eq!(min.status, 201);
    assert!(min.body.is_empty());
    assert!(min.header("location").is_some());
    let oo = s.request("POST", "Patient", &[("prefer", "return=OperationOutcome")], Some(&bytes)).await;
    assert_eq!(oo.json()["resourceType"], "OperationOutcome");
    let rep = s.request("POST", "Patient", &[("prefer", "return=representation")], Some(&bytes)).await;
    assert_eq!(rep.json()["resourceType"], "Patient");
}

async fn format_negotiation(s: &Server) {
    let id = id_of(&s.post("Patient", &patient("Kappa")).await);
    let path = format!("Patient/{id}");
    assert_eq!(s.request("GET", &path, &[("accept", "application/fhir+json")], None).await.status, 200);
    assert_eq!(s.request("GET", &path, &[("accept", "application/json")], None).await.status, 200);
    assert_eq!(s.request("GET", &path, &[("accept", "*/*")], None).await.status, 200);
    assert_eq!(s.request("GET", &path, &[("accept", "application/fhir+xml")], None).await.status, 406);
    assert_eq!(s.get(&format!("{path}?_format=xml")).await.status, 406);
    assert_eq!(s.get(&format!("{path}?_format=json")).await.status, 200);
    assert_eq!(s.get("metadata?_format=application/fhir+json").await.status, 200);
    let xml = s.request("POST", "Patient", &[("content-type", "application/fhir+xml")], Some(b"<Patient/>")).await;
    assert_eq!(xml.status, 415);
}

async fn invalid_resources_are_refused_and_not_stored(s: &Server) {
    let before = s.engine.stats().await.unwrap().versions;
    let cases = [
        (json!({"resourceType": "Patient", "birthDate": "1970-13-45"}), "Patient.birthDate"),
        (json!({"resourceType": "Patient", "nonsense": true}), "Patient.nonsense"),
        (json!({"resourceType": "Patient", "gender": 1}), "Patient.gender"),
        (json!({"resourceType": "Observation", "code": {"text": "x"}}), "Observation.status"),
    ];
    for (body, expr) in cases {
        let ty = body["resourceType"].as_str().unwrap().to_string();
        let r = s.post(&ty, &body).await;
        assert_eq!(r.status, 400, "{body}");
        let oo = r.json();
        assert_eq!(oo["resourceType"], "OperationOutcome");
        let exprs: Vec<String> = oo["issue"].as_array().unwrap().iter().flat_map(|i| i["expression"].as_array().cloned().unwrap_or_default()).map(|e| e.as_str().unwrap().to_string()).collect();
        assert!(exprs.iter().any(|e| e == expr), "{expr} not in {exprs:?}");
    }
    assert_eq!(s.engine.stats().await.unwrap().versions, before, "nothing stored");
}

async fn transaction_resolves_references_and_is_atomic(s: &Server) {
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111", "resource": patient("Lambda"), "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:22222222-2222-2222-2222-222222222222",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
                      "subject": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}},
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": {"resourceType": "Patient", "id": "tx-put", "active": true}, "request": {"method": "PUT", "url": "Patient/tx-put"}}
    ]});
    let r = s.post("", &tx).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let resp = r.json();
    assert_eq!(resp["type"], "transaction-response");
    let entries = resp["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    let pat_loc = entries[0]["response"]["location"].as_str().unwrap();
    let pat_id = pat_loc.split('/').nth(1).unwrap();
    let obs_loc = entries[1]["response"]["location"].as_str().unwrap();
    let obs = s.get(obs_loc.trim_end_matches("/_history/1")).await.json();
    assert_eq!(obs["subject"]["reference"], format!("Patient/{pat_id}"));

    // One invalid entry: nothing of the transaction is stored, and the error names it.
    let before = s.engine.stats().await.unwrap().versions;
    let bad = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Mu"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "birthDate": "not-a-date"}, "request": {"method": "POST", "url": "Patient"}}
    ]});
    let r = s.post("", &bad).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["issue"][0]["expression"][0], "Bundle.entry[1].resource.birthDate");
    // A stale ifMatch fails the whole transaction.
    let stale = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": patient("Nu"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "id": "tx-put"}, "request": {"method": "PUT", "url": "Patient/tx-put", "ifMatch": "W/\"9\""}}
    ]});
    assert_eq!(s.post("", &stale).await.status, 412);
    // An unresolvable urn:uuid reference.
    let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "urn:uuid:99999999-9999-9999-9999-999999999999"}},
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    assert_eq!(s.post("", &dangling).await.status, 400);
    assert_eq!(s.engine.stats().await.unwrap().versions, before, "failed transactions store nothing");
}

async fn transaction_conditional_references(s: &Server) {
    let org = json!({"resourceType": "Organization", "name": "Trust", "identifier": [{"system": "https://example.org/ods", "value": "RX1"}]});
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": org, "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=https://example.org/ods|RX1"}}
    ]});
    assert_eq!(s.post("", &batch).await.json()["entry"][0]["response"]["status"], "201 Created");
    // Sent twice: the conditional create matches.
    assert_eq!(s.post("", &batch).await.json()["entry"][0]["response"]["status"], "200 OK");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:33333333-3333-3333-3333-333333333333",
         "resource": {"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=https://example.org/ods|RX1"}},
         "request": {"method": "POST", "url": "Patient"}}
    ]});
    let r = s.post("", &tx).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let loc = r.json()["entry"][0]["response"]["location"].as_str().unwrap().to_string();
    let p = s.get(loc.trim_end_matches("/_history/1")).await.json();
    let org_ref = p["managingOrganization"]["reference"].as_str().unwrap();
    assert!(org_ref.starts_with("Organization/") && !org_ref.contains('?'), "{org_ref}");
    // No match: the transaction fails.
    let none = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient", "managingOrganization": {"reference": "Organization?identifier=https://example.org/ods|NOPE"}},
         "request": {"method": "POST", "url": "Patient"}}
    ]});
    assert_eq!(s.post("", &none).await.status, 400);
}

async fn batch_entries_are_independent(s: &Server) {
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": patient("Xi"), "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": 42}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}}
    ]});
    let r = s.post("", &batch).await;
    assert_eq!(r.status, 200);
    let b = r.json();
    assert_eq!(b["type"], "batch-response");
    assert_eq!(b["entry"][0]["response"]["status"], "201 Created");
    assert_eq!(b["entry"][1]["response"]["status"], "400 Bad Request");
    assert_eq!(b["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    assert_eq!(b["entry"][2]["response"]["status"], "404 Not Found");
}

async fn history_paging_and_since(s: &Server) {
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(id_of(&s.post("Practitioner", &json!({"resourceType": "Practitioner", "name": [{"family": format!("P{i}")}]})).await));
    }
    let page = s.get("Practitioner/_history?_count=3").await.json();
    assert_eq!(page["total"], 7);
    assert_eq!(page["entry"].as_array().unwrap().len(), 3);
    let mut seen = Vec::new();
    let mut next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_string());
    seen.extend(page["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()));
    // Paging is stable across concurrent writes: a write between pages does not shift them.
    s.post("Practitioner", &json!({"resourceType": "Practitioner"})).await;
    while let Some(url) = next {
        let path = url.strip_prefix(&format!("{}/", s.base)).unwrap().to_string();
        let p = s.get(&path).await.json();
        seen.extend(p["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()));
        next = p["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").map(|l| l["url"].as_str().unwrap().to_string());
    }
    ids.reverse();
    assert_eq!(seen, ids);
    // _since
    let last = s.get(&format!("Practitioner/{}", ids[0])).await.json();
    let since = last["meta"]["lastUpdated"].as_str().unwrap().to_string();
    let h = s.get(&format!("Practitioner/_history?_since={}", since.replace(':', "%3A"))).await.json();
    assert_eq!(h["total"], 2, "{h}");
    assert_eq!(s.get("Practitioner/_history?_since=yesterday").await.status, 400);
    let sys = s.get("_history?_count=1").await.json();
    assert_eq!(sys["entry"].as_array().unwrap().len(), 1);
}

async fn metadata_health_metrics(s: &Server) {
    let cs = s.get("metadata").await.json();
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    let resources = cs["rest"][0]["resource"].as_array().unwrap();
    assert!(resources.len() >= 140, "every R4 resource type is listed");
    assert!(resources.iter().any(|r| r["type"] == "Patient" && r["conditionalCreate"] == true));
    assert_eq!(s.get("/healthz").await.status, 200);
    s.get("Patient/x").await;
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(m.contains("tessera_http_requests_total{"), "{m}");
    assert!(m.contains("tessera_http_request_duration_seconds_bucket"));
    assert!(m.contains("tessera_store_commit_batches_total"));
}

async fn bad_input_gets_operation_outcomes(s: &Server) {
    for (method, path, body) in [
        ("POST", "Patient", &b"{not json"[..]),
        ("POST", "Patient", &b""[..]),
        ("POST", "Patient", &b"[1,2]"[..]),
        ("POST", "", &br#"{"resourceType":"Bundle","type":"collection"}"#[..]),
        ("POST", "", &br#"{"resourceType":"Patient"}"#[..]),
        ("PUT", "Patient/x", &br#"{"resourceType":"Patient","id":"x","name":"notalist"}"#[..]),
        ("GET", "Patient/_history?_count=abc", &b""[..]),
    ] {
        let r = s.request(method, path, &[], if body.is_empty() && method == "GET" { None } else { Some(body) }).await;
        assert!((400..500).contains(&r.status), "{method} {path}: {}", r.status);
        assert_eq!(r.json()["resourceType"], "OperationOutcome", "{method} {path}");
    }
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let body = format!(r#"{{"resourceType":"Patient","extension":{deep}}}"#);
    let r = s.request("POST", "Patient", &[], Some(body.as_bytes())).await;
    assert_eq!(r.status, 400);
    let big = vec![b' '; 9 * 1024 * 1024];
    let r = s.request("POST", "Patient", &[], Some(&big)).await;
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    assert_eq!(s.get("Patient/x/_history/1/extra").await.status, 404);
}
