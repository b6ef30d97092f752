//! The leak suite: role × location × relationship × sharing dial × sensitivity × consent
//! × read path → visible, behind break-glass, or hidden — on both storage backends, over
//! real HTTP, on the demo shared domain (docs/demo-domain.md).
//!
//! Every row is checked on every read path; each check asserts both that allowed data is
//! returned and that forbidden data is not — by body, by count (`total`), and by status
//! code.

mod common;
use common::Server;
use serde_json::{json, Value};
use tessera_engine::Access;

on_both_backends!(
    leak_matrix,
    break_glass_flow,
    writes_respect_role_and_ownership,
    tokens_are_required,
    audit_trail,
    worklists_follow_the_dials,
    conditional_operations_do_not_reveal_hidden_matches,
    leak_matrix_changed_data,
    service_accounts_are_bound,
    scopes_narrow_every_path,
    binary_is_as_protected_as_its_security_context,
    patient_index_paths_follow_the_gate,
    web_pages_follow_the_gate,
    patient_bound_tokens_reach_one_record,
    content_paths_follow_the_gate,
    subscriptions_deliver_only_what_the_subscriber_sees,
    hl7v2_subscriptions_send_only_what_the_subscriber_sees,
    hl7v2_interfaces_follow_the_gate,
);

/// Expected visibility.
#[derive(Clone, Copy, Debug, PartialEq)]
enum V {
    /// Visible.
    Yes,
    /// Behind break-glass (marker shown).
    Glass,
    /// Hidden: behaves as absent.
    No,
}

/// (user, role, organisation, location)
use common::Who;
const PATEL: Who = ("dr.patel", "doctor", "rx1-general", Some("ward-7a"));
const EVANS: Who = ("dr.evans", "doctor", "rx1-general", Some("rx1-ed"));
const MURPHY: Who = ("dr.murphy", "doctor", "rx2-southbank-hc", Some("rx2-diabetes-clinic"));
const KHAN: Who = ("dr.khan", "doctor", "rx3-riverside-house", Some("willow-ward"));
const OKORO: Who = ("nurse.okoro", "nurse", "rx2-southbank-hc", Some("rx2-district-nursing"));
const ALI: Who = ("reception.ali", "receptionist", "rx1-general", Some("rx1-ed"));
const LEE: Who = ("research.lee", "researcher", "rx1", None);
const WALSH: Who = ("privacy.walsh", "privacy-officer", "rx1", None);
const CARTER: Who = ("domain.carter", "domain-admin", "rx1", None);

/// Why each row expects what it does is in the comment: trust of owner → viewer dial,
/// relationship, sensitivity, consent, role.
const MATRIX: &[(Who, &str, V)] = &[
    (PATEL, "Patient/jane-smith", V::Yes),                      // demographics, inpatient on his ward
    (PATEL, "Observation/obs-jane-hr", V::Yes),                 // own trust, relationship
    (PATEL, "Observation/obs-jane-glucose", V::Yes),            // Southbank → * clinical shared
    (PATEL, "AllergyIntolerance/allergy-jane-penicillin", V::Yes),
    (PATEL, "Condition/cond-daniel-psy", V::No),                // Riverside psychiatry hidden from everyone else
    (PATEL, "DocumentReference/note-daniel-psy", V::No),
    (PATEL, "MedicationRequest/med-daniel-lithium", V::Glass),  // Riverside → Northgate clinical: break-glass
    (PATEL, "Encounter/enc-daniel-willow", V::Yes),             // Riverside → Northgate administrative shared
    (PATEL, "Observation/obs-tom-hr", V::Yes),                  // own trust; Tom's dissent only stops cross-trust
    (PATEL, "Consent/consent-tom-dissent", V::No),              // Southbank's, and Tom dissents from sharing
    (PATEL, "Patient/maria-nowak", V::Yes),                     // restricted (R) patient, but a relationship
    (PATEL, "Observation/obs-maria-bp", V::Yes),
    (MURPHY, "Patient/tom-hughes", V::Yes),                     // in his diabetes clinic now
    (MURPHY, "Observation/obs-tom-hr", V::No),                  // Northgate's, Tom dissents: not even break-glass
    (MURPHY, "Consent/consent-tom-dissent", V::Yes),            // own trust
    (MURPHY, "Patient/maria-nowak", V::Glass),                  // R patient, no relationship: no look-up
    (MURPHY, "Observation/obs-maria-bp", V::Glass),
    (MURPHY, "Patient/jane-smith", V::Yes),                     // look-up of an unrestricted patient
    (MURPHY, "Observation/obs-jane-hr", V::Glass),              // no relationship
    (OKORO, "Patient/jane-smith", V::Yes),
    (OKORO, "Observation/obs-jane-glucose", V::Glass),          // own trust but the district-nurse visit expired (57 days)
    (KHAN, "Condition/cond-daniel-psy", V::Yes),                // own trust, recent admission on his ward
    (KHAN, "DocumentReference/note-daniel-psy", V::Yes),
    (KHAN, "Observation/obs-daniel-hr", V::Yes),                // Northgate → Riverside clinical shared, relationship
    (KHAN, "Observation/obs-jane-hr", V::Glass),                // no relationship with Jane
    (EVANS, "Condition/cond-daniel-psy", V::No),
    (EVANS, "Observation/obs-daniel-hr", V::Yes),               // his ED attendance
    (EVANS, "MedicationRequest/med-daniel-lithium", V::Glass),
    (ALI, "Patient/jane-smith", V::Yes),                        // receptionist: demographics
    (ALI, "Encounter/enc-jane-7a", V::Yes),                     // and administrative
    (ALI, "Observation/obs-jane-hr", V::No),                    // but no clinical data
    (ALI, "AllergyIntolerance/allergy-jane-penicillin", V::No),
    (LEE, "Patient/jane-smith", V::No),                         // researcher: nothing identifiable
    (LEE, "Observation/obs-jane-hr", V::No),
    (WALSH, "Patient/jane-smith", V::Yes),                      // privacy officer: names patients
    (WALSH, "Observation/obs-jane-hr", V::No),                  // but no clinical data
    (CARTER, "Patient/jane-smith", V::No),                      // domain administrator: configuration only
    (CARTER, "Organization/rx1", V::Yes),
];

async fn load_demo(s: &Server) {
    s.load_demo().await;
}

fn token(s: &Server, who: Who) -> String {
    s.token(who)
}

fn ids_in(bundle: &Value, reference: &str) -> bool {
    bundle["entry"].as_array().into_iter().flatten().any(|e| {
        let r = &e["resource"];
        format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")) == reference
    })
}

async fn leak_matrix(s: &Server) {
    load_demo(s).await;
    // A List holding every resource of the matrix, for `_list`; as the system wrote it,
    // readers do not see it (so it lists nothing for them), and each reader's own copy.
    let entries: Vec<Value> = MATRIX.iter().map(|(_, r, _)| json!({"item": {"reference": r}})).collect();
    let list_body = json!({"resourceType": "List", "status": "current", "mode": "working", "entry": entries,
        "contained": [{"resourceType": "Basic", "id": "b", "code": {"coding": [{"system": "urn:tessera:test", "code": "leak-contained"}]}}]});
    let system_list = s.post("List", &list_body).await.json()["id"].as_str().unwrap().to_string();
    let mut list_seen = 0;
    for &(who, reference, expected) in MATRIX {
        let t = token(s, who);
        let row = format!("{} ({} at {}) → {reference}: expected {expected:?}", who.0, who.1, who.2);
        list_seen += check_paths(s, &t, &row, reference, expected, &list_body, &system_list).await;
    }
    assert!(list_seen > 0, "the shared List is visible to some readers, so _list is exercised");
}

/// Asks one reader (token `t`) for one resource on every read path, and checks each answer
/// against the expected visibility. Returns how many `_list` Lists the reader could see.
async fn check_paths(s: &Server, t: &str, row: &str, reference: &str, expected: V, list_body: &Value, system_list: &str) -> usize {
    let (ty, id) = reference.split_once('/').unwrap();
    let mut list_seen = 0;
    let t = t.to_string();

    // read
    let r = s.request_as(&t, "GET", reference, None).await;
    match expected {
        V::Yes => assert_eq!((r.status, r.json()["id"].as_str().unwrap_or("").to_string()), (200, id.to_string()), "read: {row}"),
        V::Glass => {
            assert_eq!(r.status, 403, "read: {row}");
            assert_eq!(r.json()["issue"][0]["code"], "suppressed", "read marker: {row}");
            assert!(!String::from_utf8_lossy(&r.body).contains("\"meta\""), "read: no data behind glass: {row}");
        }
        V::No => assert_eq!(r.status, 404, "read: {row}"),
    }
    // HEAD, and a conditional read: the same status as the read, and never "not modified"
    // for what may not be seen
    let want = match expected { V::Yes => 200, V::Glass => 403, V::No => 404 };
    let r = s.request_as(&t, "HEAD", reference, None).await;
    assert_eq!(r.status, want, "HEAD: {row}");
    let r = s.request("GET", reference, &[("authorization", &format!("Bearer {t}")), ("if-none-match", "W/\"1\"")], None).await;
    match expected {
        V::Yes => assert!(r.status == 304 || r.status == 200, "conditional read {}: {row}", r.status),
        _ => assert_eq!(r.status, want, "conditional read: {row}"),
    }
    // vread
    let r = s.request_as(&t, "GET", &format!("{reference}/_history/1"), None).await;
    assert_eq!(r.status, match expected { V::Yes => 200, V::Glass => 403, V::No => 404 }, "vread: {row}");
    // $meta, by GET and by POST: the same view as the read
    for (method, body) in [("GET", None), ("POST", Some(&br#"{"resourceType":"Parameters"}"#[..]))] {
        let r = s.request_as(&t, method, &format!("{reference}/$meta"), body).await;
        assert_eq!(r.status, want, "{method} $meta: {row}");
        if expected != V::Yes {
            assert!(!String::from_utf8_lossy(&r.body).contains("versionId"), "{method} $meta: nothing of it: {row}");
        }
    }
    // _count=0: the total alone, counting only what may be seen
    let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}&_count=0"), None).await.json();
    assert_eq!(b["total"], json!(if expected == V::Yes { 1 } else { 0 }), "_count=0 total: {row}");
    assert!(!ids_in(&b, reference), "_count=0 lists nothing: {row}");
    // PATCH (JSON Patch and FHIRPath Patch) and $validate of what may not be seen: refused
    // as the read is, nothing written, nothing revealed
    if expected != V::Yes {
        let before = s.get(reference).await;
        let json_patch = br#"[{"op": "add", "path": "/language", "value": "en"}]"#;
        let r = s.request("PATCH", reference, &[("authorization", &format!("Bearer {t}")), ("content-type", "application/json-patch+json")], Some(json_patch)).await;
        assert_eq!(r.status, want, "JSON Patch: {row}");
        let fhirpath_patch = json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": [
            {"name": "type", "valueCode": "add"}, {"name": "path", "valueString": ty}, {"name": "name", "valueString": "language"}, {"name": "value", "valueCode": "en"}]}]});
        let r = s.request_as(&t, "PATCH", reference, Some(&serde_json::to_vec(&fhirpath_patch).unwrap())).await;
        assert_eq!(r.status, want, "FHIRPath Patch: {row}");
        let after = s.get(reference).await;
        assert_eq!((after.status, after.header("etag")), (before.status, before.header("etag")), "PATCH wrote nothing: {row}");
        let r = s.request_as(&t, "POST", &format!("{reference}/$validate?mode=delete"), Some(br#"{"resourceType":"Parameters"}"#)).await;
        assert!(!String::from_utf8_lossy(&r.body).contains("\"meta\""), "$validate: nothing of it: {row}");
        if r.status == 200 {
            let codes: Vec<String> = r.json()["issue"].as_array().into_iter().flatten().map(|i| i["code"].as_str().unwrap_or("").to_string()).collect();
            assert!(codes.iter().any(|c| c == "not-found" || c == "forbidden" || c == "suppressed"), "$validate mode=delete of what may not be seen: {codes:?}: {row}");
        } else {
            assert!((400..500).contains(&r.status), "$validate: {}: {row}", r.status);
        }
    }
    // instance history
    let r = s.request_as(&t, "GET", &format!("{reference}/_history"), None).await;
    match expected {
        V::Yes => assert!(r.status == 200 && ids_in(&r.json(), reference), "history: {row}"),
        _ => assert_eq!(r.status, 404, "history: {row}"),
    }
    // type history: listed only when visible; a total never counts what was withheld
    let r = s.request_as(&t, "GET", &format!("{ty}/_history?_count=1000"), None).await;
    assert_eq!(r.status, 200, "type history: {row}");
    let b = r.json();
    assert_eq!(ids_in(&b, reference), expected == V::Yes, "type history: {row}");
    if let Some(total) = b["total"].as_u64() {
        assert_eq!(total as usize, b["entry"].as_array().map_or(0, Vec::len), "type history total counts only what is shown: {row}");
    }
    // system history
    let b = s.request_as(&t, "GET", "_history?_count=1000", None).await.json();
    assert_eq!(ids_in(&b, reference), expected == V::Yes, "system history: {row}");
    // search by id, and its total
    let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}"), None).await.json();
    assert_eq!(ids_in(&b, reference), expected == V::Yes, "search: {row}");
    assert_eq!(b["total"], json!(if expected == V::Yes { 1 } else { 0 }), "search total: {row}");
    let marker = b["entry"].as_array().into_iter().flatten().any(|e| e["search"]["mode"] == "outcome");
    assert_eq!(marker, expected == V::Glass, "search break-glass marker: {row}");
    // system-level search, with and without _type, and _elements
    for path in [format!("?_type={ty}&_id={id}"), format!("?_id={id}&_total=accurate"), format!("{ty}?_id={id}&_elements=id")] {
        let r = s.request_as(&t, "GET", &path, None).await;
        if r.status == 403 {
            // A type the token's scopes do not cover: refused as a whole.
            assert_ne!(expected, V::Yes, "{path}: {row}");
            continue;
        }
        assert_eq!(r.status, 200, "{path}: {row}");
        let b = r.json();
        let listed = b["entry"].as_array().into_iter().flatten().any(|e| e["fullUrl"].as_str().is_some_and(|u| u.ends_with(&format!("/{reference}"))));
        assert_eq!(listed, expected == V::Yes, "{path}: {row}");
        if let Some(total) = b["total"].as_u64() {
            assert_eq!(total, u64::from(expected == V::Yes), "{path} total: {row}");
        }
    }
    // searches on the resource's own labels and dates: the same view
    for extra in ["_security:not=urn:tessera:test|none", "_lastUpdated=gt2000-01-01"] {
        let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}&{extra}&_total=accurate"), None).await.json();
        assert_eq!(ids_in(&b, reference), expected == V::Yes, "{extra}: {row}");
        assert_eq!(b["total"], json!(if expected == V::Yes { 1 } else { 0 }), "{extra} total: {row}");
    }
    // full search: _total and _summary=count count only what may be seen
    for extra in ["_total=accurate", "_summary=count"] {
        let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}&{extra}"), None).await.json();
        assert_eq!(b["total"], json!(if expected == V::Yes { 1 } else { 0 }), "search {extra}: {row}");
    }
    // sort order and paging: every page of the type sorted by id, two at a time — pages
    // before the last are full (a withheld resource leaves no gap), the resource is
    // listed only when visible, and the pages agree with the count
    let mut url = format!("{ty}?_sort=_id&_count=2");
    let mut listed: Vec<String> = Vec::new();
    for page in 0.. {
        assert!(page < 500, "paging ends: {row}");
        let b = s.request_as(&t, "GET", &url, None).await.json();
        let entries: Vec<String> = b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap_or(""), e["resource"]["id"].as_str().unwrap_or("")))
            .collect();
        let next = b["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(str::to_string);
        if next.is_some() {
            assert_eq!(entries.len(), 2, "a page before the last is full: {row}");
        }
        listed.extend(entries);
        match next {
            Some(n) => url = n.strip_prefix(&format!("{}/", s.base)).expect("next link on this server").to_string(),
            None => break,
        }
    }
    assert_eq!(listed.iter().any(|r| r == reference), expected == V::Yes, "sorted paging: {row}");
    let mut sorted = listed.clone();
    sorted.sort();
    assert_eq!(listed, sorted, "sorted by id across pages: {row}");
    let count = s.request_as(&t, "GET", &format!("{ty}?_summary=count"), None).await.json()["total"].as_u64().unwrap();
    assert_eq!(count as usize, listed.len(), "paging and _summary=count agree: {row}");
    // _list: a List the reader may see lists only what they may see; one they may not
    // see lists nothing
    let own = s.request_as(&t, "POST", "List", Some(&serde_json::to_vec(list_body).unwrap())).await;
    let mut lists = vec![system_list.to_string()];
    if own.status == 201 {
        lists.push(own.json()["id"].as_str().unwrap().to_string());
    }
    // `_contained`: a contained resource is found only through a container the reader sees
    let found = s.request_as(&t, "GET", "Basic?code=urn:tessera:test|leak-contained&_contained=true&_count=1000", None).await.json();
    for list_id in &lists {
        let list_visible = s.request_as(&t, "GET", &format!("List/{list_id}"), None).await.status == 200;
        assert_eq!(ids_in(&found, &format!("List/{list_id}")), list_visible, "_contained: {row}");
        let b = s.request_as(&t, "GET", &format!("{ty}?_list={list_id}&_total=accurate"), None).await.json();
        assert_eq!(ids_in(&b, reference), list_visible && expected == V::Yes, "_list: {row}");
        if list_visible {
            list_seen += 1;
        } else {
            assert_eq!(b["total"], 0, "_list of a List not visible: {row}");
        }
    }
    // a criterion checked on each candidate's content (every text of the resource
    // holds its id): the reader's view decides as for any other search
    let b = s.request_as(&t, "GET", &format!("{ty}?_content={id}&_total=accurate"), None).await.json();
    assert_eq!(ids_in(&b, reference), expected == V::Yes, "_content: {row}");
    assert_eq!(b["total"].as_u64().unwrap_or(0) as usize, b["entry"].as_array().map_or(0, |e| e.iter().filter(|e| e["search"]["mode"] == "match").count()), "_content total: {row}");
    // the paths that start from the patient: compartment search, $everything,
    // _revinclude, _has and a chain — hidden data must not show, nor reveal itself
    // through the patient being listed or not
    let stored = s.get(reference).await.json();
    let pid = if ty == "Patient" {
        Some(id.to_string())
    } else {
        ["patient", "subject"]
            .iter()
            .filter_map(|k| stored[*k]["reference"].as_str())
            .find_map(|r| r.strip_prefix("Patient/"))
            .map(str::to_string)
    };
    if let Some(pid) = pid {
        let patient_visible = s.request_as(&t, "GET", &format!("Patient/{pid}"), None).await.status == 200;
        let shown = expected == V::Yes;
        let b = s.request_as(&t, "GET", &format!("Patient/{pid}/{ty}?_id={id}"), None).await.json();
        assert_eq!(ids_in(&b, reference), shown, "compartment search: {row}");
        let r = s.request_as(&t, "GET", &format!("Patient/{pid}/$everything"), None).await;
        assert_eq!(r.status == 200 && ids_in(&r.json(), reference), shown && patient_visible, "$everything: {row}");
        if ty != "Patient" {
            let b = s.request_as(&t, "GET", &format!("Patient?_id={pid}&_revinclude={ty}:patient"), None).await.json();
            assert_eq!(ids_in(&b, reference), shown && patient_visible, "_revinclude: {row}");
            let b = s.request_as(&t, "GET", &format!("Patient?_id={pid}&_has:{ty}:patient:_id={id}"), None).await.json();
            assert_eq!(ids_in(&b, &format!("Patient/{pid}")), shown && patient_visible, "_has: {row}");
            let b = s.request_as(&t, "GET", &format!("{ty}?patient=Patient/{pid}&_count=1000"), None).await.json();
            assert_eq!(ids_in(&b, reference), shown, "reference search: {row}");
            let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}&patient._id={pid}"), None).await.json();
            assert_eq!(ids_in(&b, reference), shown && patient_visible, "chain: {row}");
            let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}&_include={ty}:patient"), None).await.json();
            assert_eq!(ids_in(&b, &format!("Patient/{pid}")), shown && patient_visible, "_include: {row}");
            let b = s.request_as(&t, "GET", &format!("{ty}?_id={id}&_include=*"), None).await.json();
            assert_eq!(ids_in(&b, &format!("Patient/{pid}")), shown && patient_visible, "_include=*: {row}");
            let b = s.request_as(&t, "GET", &format!("Patient?_id={pid}&_revinclude:iterate={ty}:patient"), None).await.json();
            assert_eq!(ids_in(&b, reference), shown && patient_visible, "_revinclude:iterate: {row}");
            let r = s.request_as(&t, "GET", &format!("Patient/{pid}/$everything?_type=Patient,{ty}"), None).await;
            assert_eq!(r.status == 200 && ids_in(&r.json(), reference), shown && patient_visible, "$everything?_type: {row}");
        }
    }
    // batch and transaction GET entries
    for kind in ["batch", "transaction"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": "GET", "url": reference}}]});
        let r = s.request_as(&t, "POST", "", Some(&serde_json::to_vec(&bundle).unwrap())).await;
        assert_eq!(r.status, 200, "{kind}: {row}");
        let b = r.json();
        let status = b["entry"][0]["response"]["status"].as_str().unwrap_or("").to_string();
        let want = match expected { V::Yes => "200", V::Glass => "403", V::No => "404" };
        assert!(status.starts_with(want), "{kind} GET entry {status}: {row}");
        assert_eq!(b["entry"][0]["resource"]["id"].as_str() == Some(id) && b["entry"][0]["resource"]["resourceType"] == ty, expected == V::Yes, "{kind} body: {row}");
    }
    list_seen
}

async fn break_glass_flow(s: &Server) {
    load_demo(s).await;
    let okoro = token(s, OKORO);
    assert_eq!(s.request_as(&okoro, "GET", "Observation/obs-jane-glucose", None).await.status, 403);
    let params = |code: &str, text: &str| {
        serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [
            {"name": "reason", "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}},
            {"name": "text", "valueString": text}]}))
        .unwrap()
    };
    // A reason is required, coded and in words.
    assert_eq!(s.request_as(&okoro, "POST", "Patient/jane-smith/$break-glass", Some(&params("NOPE", "because"))).await.status, 400);
    assert_eq!(s.request_as(&okoro, "POST", "Patient/jane-smith/$break-glass", Some(&params("ETREAT", ""))).await.status, 400);
    // A receptionist may not break the glass.
    let ali = token(s, ALI);
    assert_eq!(s.request_as(&ali, "POST", "Patient/jane-smith/$break-glass", Some(&params("ETREAT", "urgent care needed"))).await.status, 403);
    let r = s.request_as(&okoro, "POST", "Patient/jane-smith/$break-glass", Some(&params("ETREAT", "Found collapsed at home visit"))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["parameter"].as_array().unwrap().iter().any(|p| p["name"] == "expires"));
    // Operators are alerted: the break-glass counter moved.
    let m = String::from_utf8(s.get("/metrics").await.body.to_vec()).unwrap();
    assert!(m.contains("tessera_break_glass_total 1"), "{m}");
    // Now visible, for this nurse and this patient only.
    assert_eq!(s.request_as(&okoro, "GET", "Observation/obs-jane-glucose", None).await.status, 200);
    assert_eq!(s.request_as(&okoro, "GET", "Observation/obs-maria-bp", None).await.status, 403, "the grant is for one patient");
    let murphy = token(s, MURPHY);
    assert_eq!(s.request_as(&murphy, "GET", "Observation/obs-jane-hr", None).await.status, 403, "the grant is for one user");
    // Breaking the glass never opens hidden data (consent dissent, hidden dials).
    let r = s.request_as(&murphy, "POST", "Patient/tom-hughes/$break-glass", Some(&params("ETREAT", "Emergency in clinic"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(s.request_as(&murphy, "GET", "Observation/obs-tom-hr", None).await.status, 404);
    // The privacy officer's review queue shows the break-glass, with who and why.
    let walsh = token(s, WALSH);
    let q = s.request_as(&walsh, "GET", "AuditEvent?purpose=BTG", None).await;
    assert_eq!(q.status, 200);
    let text = String::from_utf8_lossy(&q.body).to_string();
    assert!(text.contains("nurse.okoro") && text.contains("Found collapsed at home visit"), "{text}");
    // Access made under the grant is audited as break-glass too.
    assert!(q.json()["entry"].as_array().unwrap().len() >= 3, "grant + reads under it: {text}");
    // Clinicians cannot read the review queue.
    assert_eq!(s.request_as(&okoro, "GET", "AuditEvent?purpose=BTG", None).await.status, 403);
}

async fn writes_respect_role_and_ownership(s: &Server) {
    load_demo(s).await;
    let patel = token(s, PATEL);
    let obs = |id: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"}, "subject": {"reference": "Patient/jane-smith"},
            "valueQuantity": {"value": 80, "unit": "/min"},
            "meta": {"tag": [{"system": "https://tessera.health/owner", "code": "rx3"}]}});
        if let Some(id) = id {
            o["id"] = json!(id);
        }
        serde_json::to_vec(&o).unwrap()
    };
    // Creating: owned by the writer's organisation; a forged owner tag is replaced.
    let r = s.request_as(&patel, "POST", "Observation", Some(&obs(None))).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let tags = r.json()["meta"]["tag"].clone();
    assert!(tags.as_array().unwrap().iter().any(|t| t["system"] == "https://tessera.health/owner" && t["code"] == "rx1-general"), "{tags}");
    assert!(!tags.to_string().contains("\"rx3\""), "{tags}");
    // Changing another trust's data: refused.
    let r = s.request_as(&patel, "PUT", "Observation/obs-jane-glucose", Some(&obs(Some("obs-jane-glucose")))).await;
    assert_eq!(r.status, 403);
    assert_eq!(s.request_as(&patel, "DELETE", "Observation/obs-jane-glucose", None).await.status, 403);
    // Hidden data behaves as absent for writes too.
    let murphy = token(s, MURPHY);
    assert_eq!(s.request_as(&murphy, "PUT", "Observation/obs-tom-hr", Some(&obs(Some("obs-tom-hr")))).await.status, 404);
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/tom-hughes"}}, "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": "Observation/obs-tom-hr"}}]});
    let before = s.engine.stats().await.unwrap().versions;
    let r = s.request_as(&murphy, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.engine.stats().await.unwrap().versions, before, "nothing of the refused transaction is stored");
    // Roles: a receptionist cannot write clinical data; a researcher cannot register patients.
    let ali = token(s, ALI);
    assert_eq!(s.request_as(&ali, "POST", "Observation", Some(&obs(None))).await.status, 403);
    let lee = token(s, LEE);
    let p = serde_json::to_vec(&json!({"resourceType": "Patient", "name": [{"family": "New"}]})).unwrap();
    assert_eq!(s.request_as(&lee, "POST", "Patient", Some(&p)).await.status, 403);
    assert_eq!(s.request_as(&ali, "POST", "Patient", Some(&p)).await.status, 201, "receptionists register patients");
    // Scopes narrow a token further.
    let read_only = s.auth.issue_user_token(&s.engine.domain(), "dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"), Some("user/*.rs"), tessera_auth::now()).unwrap();
    assert_eq!(s.request_as(&read_only, "POST", "Observation", Some(&obs(None))).await.status, 403);
    assert_eq!(s.request_as(&read_only, "GET", "Observation/obs-jane-hr", None).await.status, 200);
    // Domain configuration: only the domain administrator.
    assert_eq!(s.request_as(&patel, "GET", "/admin/domain", None).await.status, 403);
    let carter = token(s, CARTER);
    let r = s.request_as(&carter, "GET", "/admin/domain", None).await;
    assert_eq!(r.status, 200);
    assert!(!String::from_utf8_lossy(&r.body).contains("argon2"), "no password hashes leave the server");
    let audited = s.store.audit_query(&tessera_store::AuditQuery { user: Some("Practitioner/domain.carter".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert!(audited.iter().any(|a| a.action == "domain-read"), "reading the domain configuration is audited");
}

async fn tokens_are_required(s: &Server) {
    load_demo(s).await;
    for path in ["Patient/jane-smith", "Patient?_id=jane-smith", "_history", "Observation/_history", "/admin/domain", "/metrics"] {
        let r = s.request_as("", "GET", path, None).await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(r.header("www-authenticate").is_some_and(|w| w.starts_with("Bearer")), "{path}");
        assert_eq!(s.request_as("not.a.token", "GET", path, None).await.status, 401, "{path} with a bad token");
    }
    for path in ["metadata", "/healthz", "/.well-known/smart-configuration"] {
        assert_eq!(s.request_as("", "GET", path, None).await.status, 200, "{path} is public");
    }
    // The token endpoint: password grant, wrong password, client credentials.
    let ok = form(s, "grant_type=password&username=dr.patel&password=demo-doctor-1&role=doctor&organisation=rx1-general").await;
    assert_eq!(ok.status, 200, "{}", String::from_utf8_lossy(&ok.body));
    let t = ok.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(s.request_as(&t, "GET", "Patient/jane-smith", None).await.status, 200);
    assert!(form(s, "grant_type=password&username=dr.patel&password=wrong").await.status >= 400);
    assert!(form(s, "grant_type=password&username=dr.patel&password=demo-doctor-1&role=doctor&organisation=rx3").await.status >= 400, "a context the user does not hold");
    // A user whose role was withdrawn loses access even with a live token.
    let mut domain = (*s.engine.domain()).clone();
    domain.remove_role("dr.patel", "rx1-general", "doctor").unwrap();
    s.engine.apply_domain(&Access::system("tessera"), domain).await.unwrap();
    assert_eq!(s.request_as(&t, "GET", "Patient/jane-smith", None).await.status, 401);
}

async fn audit_trail(s: &Server) {
    load_demo(s).await;
    let patel = token(s, PATEL);
    let before = s.store.audit_query(&tessera_store::AuditQuery { user: Some("Practitioner/dr.patel".into()), limit: 10_000, ..Default::default() }).await.unwrap().len();
    assert_eq!(s.request_as(&patel, "GET", "Observation/obs-jane-hr", None).await.status, 200);
    assert_eq!(s.request_as(&patel, "GET", "Condition/cond-daniel-psy", None).await.status, 404);
    s.request_as(&patel, "GET", "Patient?_id=jane-smith", None).await;
    let after = s.store.audit_query(&tessera_store::AuditQuery { user: Some("Practitioner/dr.patel".into()), limit: 10_000, ..Default::default() }).await.unwrap();
    assert_eq!(after.len(), before + 3, "every read, failed read and search is audited");
    assert!(after.iter().any(|r| r.patients.contains(&"daniel-okafor".to_string()) || String::from_utf8_lossy(&r.event).contains("cond-daniel-psy")), "the failed access is recorded");
    // A search through a List records the search and the List it used.
    let list = s.request_as(&patel, "POST", "List", Some(&serde_json::to_vec(&json!({"resourceType": "List", "status": "current", "mode": "working",
        "entry": [{"item": {"reference": "Observation/obs-jane-hr"}}]})).unwrap())).await;
    assert_eq!(list.status, 201);
    let list_id = list.json()["id"].as_str().unwrap().to_string();
    let mark = s.store.audit_query(&tessera_store::AuditQuery { user: Some("Practitioner/dr.patel".into()), limit: 10_000, ..Default::default() }).await.unwrap().len();
    assert_eq!(s.request_as(&patel, "GET", &format!("Observation?_list={list_id}"), None).await.status, 200);
    let records = s.store.audit_query(&tessera_store::AuditQuery { user: Some("Practitioner/dr.patel".into()), limit: 10_000, ..Default::default() }).await.unwrap();
    assert_eq!(records.len(), mark + 2, "the search and the List it read");
    assert!(records.iter().any(|r| String::from_utf8_lossy(&r.event).contains(&format!("List/{list_id}"))), "the List is named");
    // The patient's access log (privacy officer) names who looked.
    let walsh = token(s, WALSH);
    let log = s.request_as(&walsh, "GET", "Patient/jane-smith/$access-log", None).await;
    assert_eq!(log.status, 200);
    assert!(String::from_utf8_lossy(&log.body).contains("dr.patel"));
    assert_eq!(s.request_as(&patel, "GET", "Patient/jane-smith/$access-log", None).await.status, 403);
    // The chain verifies.
    let report = tessera_audit::verify(s.store.as_ref()).await.unwrap();
    assert!(report.problem.is_none(), "{}", report.summary());
    assert!(report.records > 10);
}

/// POSTs a form to the token endpoint without a bearer token.
async fn form(s: &Server, body: &str) -> common::Reply {
    s.request("POST", "/auth/token", &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "")], Some(body.as_bytes())).await
}

/// Worklists ("who is on my ward") follow the same dials and relationships as the data.
async fn worklists_follow_the_dials(s: &Server) {
    load_demo(s).await;
    let list = |who: Who, location: &'static str| {
        let t = token(s, who);
        async move { s.request_as(&t, "GET", &format!("Location/{location}/$worklist"), None).await }
    };
    // Ward 7A's own doctor and the site's reception see Jane's admission.
    for who in [PATEL, ALI] {
        let r = list(who, "ward-7a").await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        assert!(ids_in(&b, "Encounter/enc-jane-7a"), "{} sees the ward list: {b}", who.0);
        assert_eq!(b["total"], 1);
    }
    // Another trust's doctor without a relationship: not listed, not counted, but marked.
    let b = list(MURPHY, "ward-7a").await.json();
    assert!(!ids_in(&b, "Encounter/enc-jane-7a"));
    assert_eq!(b["total"], 0);
    assert!(b["entry"].as_array().into_iter().flatten().any(|e| e["search"]["mode"] == "outcome"));
    // A researcher sees no patients at all, and no marker either.
    let b = list(LEE, "ward-7a").await.json();
    assert_eq!(b["total"], 0);
    assert!(b.get("entry").is_none(), "{b}");
    // Discharged patients leave the list: Daniel's ED attendance is over.
    let b = list(EVANS, "rx1-ed").await.json();
    assert!(!ids_in(&b, "Encounter/enc-daniel-ed"));
    // Tom in the diabetes clinic now: his own clinic sees him.
    let b = list(MURPHY, "rx2-diabetes-clinic").await.json();
    assert!(ids_in(&b, "Encounter/enc-tom-dc"), "{b}");
    assert_eq!(s.request_as(&token(s, PATEL), "GET", "Location/ward-7a/$worklist?kind=nonsense", None).await.status, 400);
}

/// Conditional create and update match only what the subject may see: a hidden match
/// neither answers "exists" (200) nor blocks the write (409/412); the status codes are
/// those of an empty match.
async fn conditional_operations_do_not_reveal_hidden_matches(s: &Server) {
    load_demo(s).await;
    let obs = serde_json::to_vec(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
        "subject": {"reference": "Patient/tom-hughes"}})).unwrap();
    // Dr Patel sees Northgate's observation of Tom: the conditional create finds it.
    let patel = token(s, PATEL);
    let r = s.request("POST", "Observation", &[("authorization", &format!("Bearer {patel}")), ("if-none-exist", "_id=obs-tom-hr")], Some(&obs)).await;
    assert_eq!(r.status, 200, "a visible match answers with the existing resource");
    assert_eq!(r.json()["id"], "obs-tom-hr");
    // Dr Murphy (Southbank; Tom dissents from cross-trust sharing) must not learn it exists.
    let murphy = token(s, MURPHY);
    let r = s.request("POST", "Observation", &[("authorization", &format!("Bearer {murphy}")), ("if-none-exist", "_id=obs-tom-hr")], Some(&obs)).await;
    assert_eq!(r.status, 201, "a hidden match behaves as no match: {}", String::from_utf8_lossy(&r.body));
    assert_ne!(r.json()["id"], "obs-tom-hr");
    // Conditional update with only a hidden match: creates, like an empty match.
    let r = s.request("PUT", "Observation?_id=obs-tom-hr", &[("authorization", &format!("Bearer {murphy}"))], Some(&obs)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    // …and the hidden resource is untouched.
    assert_eq!(s.request_as(&patel, "GET", "Observation/obs-tom-hr", None).await.json()["meta"]["versionId"], "1");
    // Conditional delete with only a hidden match: nothing to delete.
    assert_eq!(s.request("DELETE", "Observation?_id=obs-tom-hr", &[("authorization", &format!("Bearer {murphy}"))], None).await.status, 204);
    assert_eq!(s.request_as(&patel, "GET", "Observation/obs-tom-hr", None).await.status, 200);
    // The same in a transaction.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/tom-hughes"}},
         "request": {"method": "POST", "url": "Observation", "ifNoneExist": "_id=obs-tom-hr"}}]});
    let r = s.request_as(&murphy, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["entry"][0]["response"]["status"], "201 Created");
}

const JONES: Who = ("nurse.jones", "nurse", "rx1-general", Some("ward-7a"));
const FRASER: Who = ("student.fraser", "student", "rx1-general", Some("ward-7a"));
const PATEL_ST_ANNES: Who = ("dr.patel", "doctor", "rx1-st-annes", Some("ward-3b"));
const WRIGHT: Who = ("nurse.wright", "nurse", "rx1-general", Some("rx1-ed"));

/// A system token bound to `org` (the built-in system account acting for one organisation,
/// as `tessera token --system --org ORG` issues it).
fn system_token(s: &Server, org: &str, scopes: &str) -> String {
    s.auth.issue_system_token("system", org, scopes, tessera_auth::now(), 60)
}

/// A service account's token from the token endpoint (client credentials).
async fn client_token(s: &Server, id: &str, secret: &str) -> String {
    let r = form(s, &format!("grant_type=client_credentials&client_id={id}&client_secret={secret}")).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()["access_token"].as_str().unwrap().to_string()
}

/// The data the demo does not have, written as the trusts would: a very restricted (`V`)
/// patient admitted to Ward 7A, a resource relabelled after it was read, a sealed one, and
/// deleted ones.
async fn load_changed_data(s: &Server) -> String {
    load_demo(s).await;
    let rx1 = system_token(s, "rx1-general", "system/*.*");
    let put = |path: &'static str, body: Value| {
        let rx1 = rx1.clone();
        async move {
            let r = s.request_as(&rx1, "PUT", path, Some(&serde_json::to_vec(&body).unwrap())).await;
            assert!(r.status == 200 || r.status == 201, "PUT {path}: {} {}", r.status, String::from_utf8_lossy(&r.body));
        }
    };
    let confidentiality = |code: &str| json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": code}]);
    let act = |code: &str| json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": code});
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let day_ago = tessera_domain::demo::relative_dates("{{DAYS_AGO:1}}", now);
    put("Patient/vera-v", json!({"resourceType": "Patient", "id": "vera-v", "meta": {"security": confidentiality("V")},
        "name": [{"family": "Vale", "given": ["Vera"]}], "gender": "female", "birthDate": "1990-01-01"})).await;
    put("Encounter/enc-vera-7a", json!({"resourceType": "Encounter", "id": "enc-vera-7a", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"}, "subject": {"reference": "Patient/vera-v"},
        "period": {"start": day_ago}, "location": [{"location": {"reference": "Location/ward-7a"}}],
        "serviceProvider": {"reference": "Organization/rx1-general"}})).await;
    let obs = |id: &str, patient: &str, security: Value| {
        json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "Heart rate"},
            "subject": {"reference": format!("Patient/{patient}")}, "valueQuantity": {"value": 70, "unit": "/min"}, "meta": {"security": security}})
    };
    let obs = |id: &str, patient: &str, security: Value| {
        let mut o = obs(id, patient, security);
        if o["meta"]["security"].as_array().is_some_and(Vec::is_empty) {
            o.as_object_mut().unwrap().remove("meta");
        }
        o
    };
    put("Observation/obs-vera-hr", obs("obs-vera-hr", "vera-v", json!([]))).await;
    // Relabelled: Daniel's heart rate, shared with Riverside, later found to be part of HIV care.
    put("Observation/obs-daniel-hr", obs("obs-daniel-hr", "daniel-okafor", json!([act("HIV")]))).await;
    // Sealed by Northgate.
    put("Observation/obs-jane-sealed", obs("obs-jane-sealed", "jane-smith", json!([{"system": "https://tessera.health/security", "code": "SEALED"}]))).await;
    // Deleted: a restricted encounter and a plain observation.
    put("Encounter/enc-jane-r", json!({"resourceType": "Encounter", "id": "enc-jane-r", "status": "finished", "meta": {"security": confidentiality("R")},
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}, "subject": {"reference": "Patient/jane-smith"}})).await;
    put("Observation/obs-jane-old", obs("obs-jane-old", "jane-smith", json!([]))).await;
    rx1
}

/// The deletions of the changed data (after the List that names them is written: a new
/// resource may not refer to a deleted one).
async fn delete_changed_data(s: &Server, rx1: &str) {
    for path in ["Encounter/enc-jane-r", "Observation/obs-jane-old"] {
        assert_eq!(s.request_as(rx1, "DELETE", path, None).await.status, 204, "{path}");
    }
}

/// The leak matrix on data that changed: relabelled, sealed, deleted, very restricted and
/// restricted patients, and service accounts bound to their organisation.
async fn leak_matrix_changed_data(s: &Server) {
    let rx1_system = load_changed_data(s).await;
    let rx2_system = system_token(s, "rx2-southbank-hc", "system/*.*");
    let rows: Vec<(String, String, &str, V)> = {
        let users: &[(Who, &str, V)] = &[
            (KHAN, "Observation/obs-daniel-hr", V::No),      // relabelled HIV: Northgate hides HIV from Riverside, in every version
            (EVANS, "Observation/obs-daniel-hr", V::Yes),    // own trust
            (PATEL, "Patient/vera-v", V::Yes),               // V patient on his ward
            (PATEL, "Observation/obs-vera-hr", V::Yes),
            (JONES, "Observation/obs-vera-hr", V::Yes),      // the ward's nurse
            (EVANS, "Observation/obs-vera-hr", V::Yes),      // a doctor: a relationship at his site (Ward 7A is at Northgate General)
            (WRIGHT, "Observation/obs-vera-hr", V::No),      // a nurse: relationships at her own location only (the ED)
            (WRIGHT, "Patient/vera-v", V::No),               // V, no relationship: no look-up, no glass
            (PATEL_ST_ANNES, "Patient/vera-v", V::No),       // another site of the same trust
            (PATEL_ST_ANNES, "Observation/obs-vera-hr", V::No),
            (MURPHY, "Patient/vera-v", V::No),
            (MURPHY, "Observation/obs-vera-hr", V::No),
            (ALI, "Encounter/enc-vera-7a", V::No),           // receptionists hold no very-restricted permission
            (FRASER, "Observation/obs-jane-hr", V::Yes),     // student on Ward 7A
            (FRASER, "Observation/obs-maria-bp", V::No),     // Maria is R: the whole record is restricted
            (FRASER, "Patient/maria-nowak", V::No),
            (PATEL, "Observation/obs-jane-sealed", V::Yes),  // sealed by his own trust
            (KHAN, "Observation/obs-jane-sealed", V::No),
            (MURPHY, "Observation/obs-jane-sealed", V::No),
            (MURPHY, "Encounter/enc-jane-r", V::No),         // deleted, and never visible to him: unknown
            (KHAN, "Observation/obs-jane-old", V::No),       // deleted; was behind glass for him: unknown
        ];
        let mut rows: Vec<(String, String, &str, V)> = users
            .iter()
            .map(|&(who, r, v)| (token(s, who), format!("{} ({} at {})", who.0, who.1, who.2), r, v))
            .collect();
        let systems: &[(&str, &str, V)] = &[
            ("rx1", "Observation/obs-jane-hr", V::Yes),              // own trust
            ("rx1", "Observation/obs-jane-glucose", V::Yes),         // Southbank shares clinical data
            ("rx1", "Condition/cond-daniel-psy", V::No),             // Riverside hides psychiatry
            ("rx1", "MedicationRequest/med-daniel-lithium", V::No),  // break-glass dial: a machine cannot break the glass
            ("rx1", "Consent/consent-tom-dissent", V::No),           // Tom dissents from sharing
            ("rx1", "Patient/vera-v", V::Yes),                       // V patient admitted to its own ward
            ("rx1", "Observation/obs-vera-hr", V::Yes),
            ("rx1", "Observation/obs-jane-sealed", V::Yes),
            ("rx2", "Patient/vera-v", V::No),                        // V patient unknown to Southbank
            ("rx2", "Observation/obs-vera-hr", V::No),
            ("rx2", "Patient/maria-nowak", V::No),                   // R patient unknown to Southbank
            ("rx2", "Observation/obs-jane-hr", V::No),               // Northgate: clinical on break-glass only
            ("rx2", "Observation/obs-jane-sealed", V::No),
            ("rx2", "Observation/obs-jane-glucose", V::Yes),         // own trust
            ("rx2", "Patient/jane-smith", V::Yes),
        ];
        for &(org, r, v) in systems {
            let t = if org == "rx1" { rx1_system.clone() } else { rx2_system.clone() };
            rows.push((t, format!("system account of {org}"), r, v));
        }
        rows
    };
    let list_body = json!({"resourceType": "List", "status": "current", "mode": "working",
        "entry": rows.iter().map(|(_, _, r, _)| json!({"item": {"reference": r}})).collect::<Vec<_>>(),
        "contained": [{"resourceType": "Basic", "id": "b", "code": {"coding": [{"system": "urn:tessera:test", "code": "leak-contained"}]}}]});
    let system_list = s.post("List", &list_body).await;
    let system_list = system_list.json()["id"].as_str().unwrap_or_else(|| panic!("the List: {}", String::from_utf8_lossy(&system_list.body))).to_string();
    delete_changed_data(s, &rx1_system).await;
    for (t, who, reference, expected) in &rows {
        let row = format!("{who} → {reference}: expected {expected:?}");
        check_paths(s, t, &row, reference, *expected, &list_body, &system_list).await;
    }
    // What the reader saw before a deletion reads as deleted (410); nothing else does.
    let patel = token(s, PATEL);
    assert_eq!(s.request_as(&patel, "GET", "Observation/obs-jane-old", None).await.status, 410);
    let h = s.request_as(&patel, "GET", "Observation/obs-jane-old/_history", None).await;
    assert_eq!(h.status, 200);
    assert_eq!(h.json()["entry"].as_array().map_or(0, Vec::len), 2, "both versions, the deletion included");
    let murphy = token(s, MURPHY);
    for path in ["Encounter/enc-jane-r", "Encounter/enc-jane-r/_history/1", "Encounter/enc-jane-r/_history/2", "Encounter/enc-jane-r/_history"] {
        assert_eq!(s.request_as(&murphy, "GET", path, None).await.status, 404, "{path}: a deletion never offered behind the glass");
    }
    let named = |b: &Value, reference: &str| {
        b["entry"].as_array().into_iter().flatten().any(|e| e["fullUrl"].as_str().is_some_and(|u| u.ends_with(&format!("/{reference}"))))
    };
    let ghost = s.request_as(&murphy, "GET", "Encounter/_history?_count=1000", None).await.json();
    assert!(!named(&ghost, "Encounter/enc-jane-r"), "type history lists no hidden deletion");
    let ghost = s.request_as(&murphy, "GET", "_history?_count=1000", None).await.json();
    assert!(!named(&ghost, "Encounter/enc-jane-r"), "system history lists no hidden deletion");
    // The relabelled resource: its first version is as hidden as the current one.
    let khan = token(s, KHAN);
    assert_eq!(s.request_as(&khan, "GET", "Observation/obs-daniel-hr/_history/1", None).await.status, 404);
    let sys_history = s.request_as(&khan, "GET", "_history?_count=1000", None).await.json();
    assert!(!named(&sys_history, "Observation/obs-daniel-hr"), "system history withholds every version");
    let type_history = s.request_as(&khan, "GET", "Observation/_history?_count=1000", None).await.json();
    assert!(!named(&type_history, "Observation/obs-daniel-hr"), "type history withholds every version");
    // No break-glass into a very restricted patient's record.
    let params = serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}},
        {"name": "text", "valueString": "Collapsed in the emergency department"}]})).unwrap();
    let elsewhere = token(s, PATEL_ST_ANNES);
    let r = s.request_as(&elsewhere, "POST", "Patient/vera-v/$break-glass", Some(&params)).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.request_as(&elsewhere, "GET", "Observation/obs-vera-hr", None).await.status, 404);
}

/// Service accounts write only their own organisation's data, and read within their
/// scopes; the bootstrap account is the only unrestricted subject.
async fn service_accounts_are_bound(s: &Server) {
    load_demo(s).await;
    let engine = client_token(s, "rx1-interface-engine", "demo-rx1-interface-engine-secret").await;
    let pas = client_token(s, "rx3-pas-feed", "demo-rx3-pas-feed-secret").await;
    // Reads outside the scopes: refused on the type-level and system-level paths alike.
    for path in ["?_type=Condition&_id=cond-daniel-psy", "Condition?_id=cond-daniel-psy", "Condition/cond-daniel-psy"] {
        assert_eq!(s.request_as(&engine, "GET", path, None).await.status, 403, "{path}");
    }
    for path in ["?_type=Patient&_id=daniel-okafor", "Patient?_id=daniel-okafor", "Patient/daniel-okafor"] {
        assert_eq!(s.request_as(&pas, "GET", path, None).await.status, 403, "{path}: write-only scopes");
    }
    for (t, what) in [(&engine, "interface engine"), (&pas, "PAS feed")] {
        let b = s.request_as(t, "GET", "?_id=cond-daniel-psy,daniel-okafor,obs-jane-hr&_total=accurate", None).await.json();
        let shown: Vec<String> = b["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str().map(str::to_string)).collect();
        assert!(!shown.iter().any(|i| i == "cond-daniel-psy" || i == "obs-jane-hr"), "{what}: {shown:?}");
        let h = s.request_as(t, "GET", "_history?_count=1000", None).await.json();
        assert!(!h.to_string().contains("cond-daniel-psy") && !h.to_string().contains("\"Observation\""), "{what}: history within scopes");
    }
    // $everything: only the types the scopes allow (Patient).
    let r = s.request_as(&engine, "GET", "Patient/daniel-okafor/$everything", None).await;
    assert_eq!(r.status, 200);
    let types: Vec<String> = r.json()["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["resourceType"].as_str().map(str::to_string)).collect();
    assert_eq!(types, vec!["Patient".to_string()], "$everything within the scopes");
    // Writes: another trust's data is refused, and nothing changes.
    let glucose = s.get("Observation/obs-jane-glucose").await.json();
    let mut changed = glucose.clone();
    changed["status"] = json!("amended");
    let r = s.request_as(&engine, "PUT", "Observation/obs-jane-glucose", Some(&serde_json::to_vec(&changed).unwrap())).await;
    assert!(r.status == 403 || r.status == 404, "PUT of Southbank's data: {}", r.status);
    assert!(matches!(s.request_as(&engine, "DELETE", "Observation/obs-jane-glucose", None).await.status, 403 | 404));
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"request": {"method": "DELETE", "url": "Observation/obs-jane-glucose"}}]});
    assert!(s.request_as(&engine, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await.status >= 400);
    assert_eq!(s.get("Observation/obs-jane-glucose").await.json()["meta"]["versionId"], glucose["meta"]["versionId"], "unchanged");
    // Its own trust's data it may change.
    let hr = s.get("Observation/obs-jane-hr").await.json();
    let r = s.request_as(&engine, "PUT", "Observation/obs-jane-hr", Some(&serde_json::to_vec(&hr).unwrap())).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    // The domain configuration is for administrators and the bootstrap account only.
    assert_eq!(s.request_as(&engine, "GET", "/admin/domain", None).await.status, 403);
    assert_eq!(s.get("/admin/domain").await.status, 200);
}

/// A token's scopes narrow every path: a user with `user/Patient.rs` sees no other type
/// through system search, history, $everything, includes, batches or operations.
async fn scopes_narrow_every_path(s: &Server) {
    load_demo(s).await;
    let t = s.auth.issue_user_token(&s.engine.domain(), "dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"), Some("user/Patient.rs"), tessera_auth::now()).unwrap();
    assert_eq!(s.request_as(&t, "GET", "Patient/jane-smith", None).await.status, 200);
    assert_eq!(s.request_as(&t, "GET", "?_type=Observation&_id=obs-jane-hr", None).await.status, 403);
    for path in [
        "?_id=obs-jane-hr,jane-smith",
        "_history?_count=1000",
        "Patient/jane-smith/_history",
        "Patient/jane-smith/$everything",
        "Patient?_id=jane-smith&_revinclude=Observation:patient&_revinclude=Encounter:subject",
        "Patient?_id=jane-smith&_revinclude:iterate=Observation:patient",
        "Location/ward-7a/$worklist",
    ] {
        let r = s.request_as(&t, "GET", path, None).await;
        if r.status == 403 {
            continue;
        }
        assert_eq!(r.status, 200, "{path}");
        for e in r.json()["entry"].as_array().into_iter().flatten() {
            let ty = e["resource"]["resourceType"].as_str().unwrap_or("");
            assert!(ty == "Patient" || ty == "OperationOutcome", "{path} lists a {ty} beyond the scopes");
        }
    }
    // The audit trail is an operation like any other: the privacy officer's scopes must cover it.
    let walsh = s.auth.issue_user_token(&s.engine.domain(), "privacy.walsh", Some("privacy-officer"), Some("rx1"), None, Some("user/Patient.rs"), tessera_auth::now()).unwrap();
    for path in ["AuditEvent?purpose=BTG", "Patient/jane-smith/$access-log"] {
        assert_eq!(s.request_as(&walsh, "GET", path, None).await.status, 403, "{path} beyond the scopes");
        assert_eq!(s.request_as(&token(s, WALSH), "GET", path, None).await.status, 200, "{path} within the scopes");
    }
    for kind in ["batch", "transaction"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [{"request": {"method": "GET", "url": "Observation/obs-jane-hr"}}, {"request": {"method": "GET", "url": "Observation?_id=obs-jane-hr"}}]});
        let r = s.request_as(&t, "POST", "", Some(&serde_json::to_vec(&bundle).unwrap())).await;
        assert!(!String::from_utf8_lossy(&r.body).contains("\"valueQuantity\""), "{kind}: {}", String::from_utf8_lossy(&r.body));
    }
}

/// A Binary takes the protection of its `securityContext`: the raw content attached to
/// Riverside's psychiatry note is exactly as visible as the note — raw or as FHIR, by read,
/// vread, history and search — and no one can attach content to a resource they may not see.
async fn binary_is_as_protected_as_its_security_context(s: &Server) {
    load_demo(s).await;
    let note = "DocumentReference/note-daniel-psy";
    let pdf: &[u8] = b"%PDF-1.4 psychiatric assessment, Willow Ward";
    let khan = token(s, KHAN);
    let auth = format!("Bearer {khan}");
    let r = s.request("POST", "Binary", &[("authorization", &auth), ("content-type", "application/pdf"), ("x-security-context", note)], Some(pdf)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.header("location").unwrap().rsplit('/').nth(2).unwrap().to_string();
    let binary = format!("Binary/{id}");
    // The note's author, with his relationship, reads the content raw and as FHIR.
    let raw = s.request("GET", &binary, &[("authorization", &auth), ("accept", "application/pdf")], None).await;
    assert_eq!((raw.status, raw.body.as_ref()), (200, pdf));
    let fhir = s.request_as(&khan, "GET", &binary, None).await.json();
    assert!(fhir["meta"]["security"].as_array().unwrap().iter().any(|l| l["code"] == "PSY"), "the note's labels: {fhir}");
    // Everyone else: the Binary answers as the note does, on every path, and its content
    // never appears.
    for who in [PATEL, EVANS, MURPHY, OKORO, ALI, LEE, WALSH, CARTER] {
        let t = token(s, who);
        let row = format!("{} ({})", who.0, who.1);
        let note_status = s.request_as(&t, "GET", note, None).await.status;
        assert_ne!(note_status, 200, "{row} may not see the note");
        let bearer = format!("Bearer {t}");
        for accept in ["application/pdf", "*/*", "application/fhir+json"] {
            let r = s.request("GET", &binary, &[("authorization", &bearer), ("accept", accept)], None).await;
            assert_eq!(r.status, note_status, "{row}, Accept {accept}: {}", String::from_utf8_lossy(&r.body));
            assert!(!String::from_utf8_lossy(&r.body).contains("psychiatric") && !String::from_utf8_lossy(&r.body).contains("\"data\""), "{row}, Accept {accept}");
        }
        let r = s.request("GET", &format!("{binary}/_history/1"), &[("authorization", &bearer), ("accept", "application/pdf")], None).await;
        assert_eq!(r.status, note_status, "vread: {row}");
        assert_ne!(s.request_as(&t, "GET", &format!("{binary}/_history"), None).await.status, 200, "history: {row}");
        for path in [format!("Binary?_id={id}"), "Binary/_history?_count=1000".to_string(), "_history?_count=1000".to_string(), format!("?_id={id}")] {
            let r = s.request_as(&t, "GET", &path, None).await;
            if r.status == 200 {
                assert!(!ids_in(&r.json(), &binary), "{path}: {row}");
                if let Some(total) = r.json()["total"].as_u64() {
                    assert!(path.contains("_history") || total == 0, "{path} total: {row}");
                }
            } else {
                assert!(r.status == 403 || r.status == 400, "{path}: {row}: {}", r.status);
            }
        }
        let r = s.request_as(&t, "GET", &format!("{binary}/$meta"), None).await;
        assert_eq!(r.status, note_status, "$meta: {row}");
    }
    // Attaching content to a resource one may not see is refused as if it did not exist.
    let patel = token(s, PATEL);
    let r = s.request("POST", "Binary", &[("authorization", &format!("Bearer {patel}")), ("content-type", "text/plain"), ("x-security-context", note)], Some(b"x")).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let absent = s.request("POST", "Binary", &[("authorization", &format!("Bearer {patel}")), ("content-type", "text/plain"), ("x-security-context", "DocumentReference/no-such-note")], Some(b"x")).await;
    assert_eq!(absent.status, 422);
    assert_eq!(absent.json()["issue"][0]["code"], r.json()["issue"][0]["code"]);
    // Nor can a Binary be moved out of its context by an update from someone who may not
    // see it (404: hidden behaves as absent).
    let r = s.request("PUT", &binary, &[("authorization", &format!("Bearer {patel}")), ("content-type", "text/plain")], Some(b"overwritten")).await;
    assert_eq!(r.status, 404, "{}", String::from_utf8_lossy(&r.body));
    let raw = s.request("GET", &binary, &[("authorization", &auth), ("accept", "application/pdf")], None).await;
    assert_eq!(raw.body.as_ref(), pdf, "unchanged");
}

/// The patient index's read paths — `$match`, IHE PIXm, PDQm search, the review worklist
/// and merge previews — release a patient exactly when a read of that patient would, for
/// every role; the worklist and merging belong to the records manager alone.
async fn patient_index_paths_follow_the_gate(s: &Server) {
    load_demo(s).await;
    const OBI: Who = ("records.obi", "records-manager", "rx1", None);
    let patients = [
        ("jane-smith", "9449305552", "Smith"),
        ("daniel-okafor", "9449306613", "Okafor"),
        ("maria-nowak", "9449307342", "Nowak"),
        ("tom-hughes", "9449308020", "Hughes"),
    ];
    // A possible duplicate of Jane, so that the worklist has a pair.
    let sys = system_token(s, "rx2-southbank-hc", "system/*.*");
    let lookalike = json!({"resourceType": "Patient", "name": [{"family": "Smith", "given": ["Judith"]}], "birthDate": "1958-03-14", "gender": "female"});
    let r = s.request_as(&sys, "POST", "Patient", Some(&serde_json::to_vec(&lookalike).unwrap())).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let newer = r.json()["id"].as_str().unwrap().to_string();
    let tasks = s.get("Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate").await.json();
    let task = tasks["entry"].as_array().and_then(|e| e.first()).map(|e| e["resource"]["id"].as_str().unwrap().to_string());
    let task = task.unwrap_or_else(|| panic!("a worklist pair: {tasks}"));
    let mut checked = 0;
    for who in [PATEL, EVANS, MURPHY, KHAN, OKORO, ALI, LEE, WALSH, CARTER, OBI] {
        let t = token(s, who);
        for (id, nhs, family) in patients {
            let visible = s.request_as(&t, "GET", &format!("Patient/{id}"), None).await.status == 200;
            let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource":
                {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}}]});
            let m = s.request_as(&t, "POST", "Patient/$match", Some(&serde_json::to_vec(&params).unwrap())).await;
            let m_body = String::from_utf8_lossy(&m.body).into_owned();
            assert_eq!(m_body.contains(&format!("Patient/{id}")), visible && m.status == 200, "{who:?} $match {id}: {m_body}");
            let pix = s.request_as(&t, "GET", &format!("Patient/$ihe-pix?sourceIdentifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"), None).await;
            assert_eq!(String::from_utf8_lossy(&pix.body).contains(&format!("Patient/{id}")), visible && pix.status == 200, "{who:?} PIXm {id}");
            if !visible {
                assert!(matches!(pix.status, 403 | 404), "{who:?} PIXm {id}: {}", pix.status);
            }
            let pdq = s.request_as(&t, "GET", &format!("Patient?family:exact={family}&birthdate=ge1900-01-01"), None).await;
            let pdq_body = String::from_utf8_lossy(&pdq.body).into_owned();
            assert_eq!(pdq_body.contains(&format!("Patient/{id}\"")) || pdq_body.contains(&format!("\"id\":\"{id}\"")), visible && pdq.status == 200, "{who:?} PDQm {id}: {pdq_body}");
            checked += 1;
        }
        // The worklist: the records manager only.
        let list = s.request_as(&t, "GET", "Task?code=https://tessera.health/CodeSystem/patient-index|possible-duplicate", None).await;
        let sees = String::from_utf8_lossy(&list.body).contains(&task);
        assert_eq!(sees, who.1 == "records-manager", "{who:?} worklist");
        assert_eq!(s.request_as(&t, "GET", &format!("Task/{task}"), None).await.status == 200, who.1 == "records-manager", "{who:?} Task read");
        let everything = s.request_as(&t, "GET", &format!("Patient/{newer}/$everything"), None).await;
        assert!(!String::from_utf8_lossy(&everything.body).contains(&task), "{who:?}: the worklist Task is not part of a record");
        // Merge previews: only the records manager, and only what it may see.
        let preview = json!({"resourceType": "Parameters", "parameter": [
            {"name": "source-patient", "valueReference": {"reference": format!("Patient/{newer}")}},
            {"name": "target-patient", "valueReference": {"reference": "Patient/jane-smith"}},
            {"name": "preview", "valueBoolean": true}]});
        let r = s.request_as(&t, "POST", "Patient/$merge", Some(&serde_json::to_vec(&preview).unwrap())).await;
        assert_eq!(r.status == 200, who.1 == "records-manager", "{who:?} merge preview: {}", String::from_utf8_lossy(&r.body));
        assert!(!String::from_utf8_lossy(&r.body).contains("obs-jane"), "{who:?}: no clinical ids in a preview");
        if who.1 != "records-manager" {
            // Unmerge and worklist decisions: refused before anything is looked up or told.
            let unmerge = json!({"resourceType": "Parameters", "parameter": [{"name": "source-patient", "valueReference": {"reference": format!("Patient/{newer}")}}]});
            let r = s.request_as(&t, "POST", "Patient/$unmerge", Some(&serde_json::to_vec(&unmerge).unwrap())).await;
            assert_eq!(r.status, 403, "{who:?} unmerge: {}", String::from_utf8_lossy(&r.body));
            let unknown = json!({"resourceType": "Parameters", "parameter": [{"name": "source-patient", "valueReference": {"reference": "Patient/no-such-patient"}}]});
            let r = s.request_as(&t, "POST", "Patient/$unmerge", Some(&serde_json::to_vec(&unknown).unwrap())).await;
            assert_eq!(r.status, 403, "{who:?}: an unknown record answers alike");
            let defer = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "defer"}]});
            let r = s.request_as(&t, "POST", &format!("Task/{task}/$resolve"), Some(&serde_json::to_vec(&defer).unwrap())).await;
            assert_eq!(r.status, 404, "{who:?} resolve: {}", String::from_utf8_lossy(&r.body));
        }
    }
    assert_eq!(checked, 40);
    // A service account (Southbank's interface) sees through $match and PIXm what it may
    // read, never the worklist, and cannot merge.
    let iface = system_token(s, "rx2-southbank-hc", "system/*.*");
    for (id, nhs, _) in patients {
        let visible = s.request_as(&iface, "GET", &format!("Patient/{id}"), None).await.status == 200;
        let params = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource":
            {"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs}]}}]});
        let m = s.request_as(&iface, "POST", "Patient/$match", Some(&serde_json::to_vec(&params).unwrap())).await;
        assert_eq!(String::from_utf8_lossy(&m.body).contains(&format!("Patient/{id}")), visible, "service account $match {id}");
        let pix = s.request_as(&iface, "GET", &format!("Patient/$ihe-pix?sourceIdentifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}"), None).await;
        assert_eq!(pix.status == 200, visible, "service account PIXm {id}");
    }
    assert_eq!(s.request_as(&iface, "GET", &format!("Task/{task}"), None).await.status, 404);
    let preview = json!({"resourceType": "Parameters", "parameter": [
        {"name": "source-patient", "valueReference": {"reference": format!("Patient/{newer}")}},
        {"name": "target-patient", "valueReference": {"reference": "Patient/jane-smith"}}]});
    assert_eq!(s.request_as(&iface, "POST", "Patient/$merge", Some(&serde_json::to_vec(&preview).unwrap())).await.status, 403);
}

/// The demo password of each user of the matrix.
fn password(user: &str) -> &'static str {
    match user {
        "dr.patel" => "demo-doctor-1",
        "dr.evans" => "demo-doctor-2",
        "dr.murphy" => "demo-doctor-3",
        "dr.khan" => "demo-doctor-4",
        "nurse.okoro" => "demo-nurse-3",
        "reception.ali" => "demo-receptionist-1",
        "research.lee" => "demo-researcher-1",
        "privacy.walsh" => "demo-privacy-officer-1",
        "domain.carter" => "demo-domain-admin-1",
        other => panic!("no demo password for {other}"),
    }
}

fn enc(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// A browser session of the web application for `who`, in `who`'s role context: signed in
/// with the password form, then switched with the context form (CSRF token and all).
async fn web_session(s: &Server, who: Who) -> String {
    let form = [("content-type", "application/x-www-form-urlencoded"), ("authorization", "")];
    let body = format!("username={}&password={}&next=%2Fpatients%2Fmine", who.0, password(who.0));
    let r = s.request("POST", "/signin", &form, Some(body.as_bytes())).await;
    assert_eq!(r.status, 303, "{who:?} signs in: {}", String::from_utf8_lossy(&r.body));
    let cookie = r.header("set-cookie").expect("a session cookie").split(';').next().unwrap().to_string();
    assert!(r.header("set-cookie").unwrap().contains("HttpOnly") && r.header("set-cookie").unwrap().contains("SameSite=Lax"));
    let page = s.request("GET", "/context", &[("cookie", &cookie), ("authorization", "")], None).await;
    let html = String::from_utf8_lossy(&page.body).into_owned();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("a CSRF token").to_string();
    let context = format!("{}|{}|{}", who.1, who.2, who.3.unwrap_or(""));
    let body = format!("csrf={}&next=%2Fpatients%2Fmine&context={}", enc(&csrf), enc(&context));
    let headers = [("cookie", cookie.as_str()), ("content-type", "application/x-www-form-urlencoded"), ("authorization", "")];
    let r = s.request("POST", "/context", &headers, Some(body.as_bytes())).await;
    assert_eq!(r.status, 303, "{who:?} switches context: {}", String::from_utf8_lossy(&r.body));
    // Without the CSRF token, a form is refused.
    let r = s.request("POST", "/context", &headers, Some(format!("context={}", enc(&context)).as_bytes())).await;
    assert_eq!(r.status, 403, "a form without its CSRF token is refused");
    cookie
}

/// The web application, row by row of the leak matrix: the page of the record where each
/// resource would be shown lists it (marked `data-id="Type/id"`) exactly when the API shows
/// it; behind the glass, the page says so instead; hidden, the page shows neither.
async fn web_pages_follow_the_gate(s: &Server) {
    load_demo(s).await;
    let mut sessions: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    let mut checked = 0;
    for (who, reference, expected) in MATRIX {
        let (ty, id) = reference.split_once('/').unwrap();
        let patient = match ty {
            "Patient" => id.to_string(),
            _ => {
                let r = s.get(reference).await.json();
                let subject = r["subject"]["reference"].as_str().or(r["patient"]["reference"].as_str()).map(str::to_string);
                match subject.and_then(|p| p.strip_prefix("Patient/").map(str::to_string)) {
                    Some(p) => p,
                    None => continue, // not part of a record: no page shows it
                }
            }
        };
        let tab = match ty {
            "Patient" | "Condition" | "AllergyIntolerance" => "",
            "Observation" => "/results",
            "MedicationRequest" => "/medications",
            "Encounter" => "/encounters",
            "DocumentReference" => "/documents",
            _ => continue, // Consent, …: not shown by the web application
        };
        if !sessions.contains_key(who.0) {
            sessions.insert(who.0, web_session(s, *who).await);
        }
        let cookie = &sessions[who.0];
        let page = s.request("GET", &format!("/patients/{patient}{tab}"), &[("cookie", cookie), ("authorization", "")], None).await;
        let html = String::from_utf8_lossy(&page.body).into_owned();
        let listed = html.contains(&format!("data-id=\"{reference}\""));
        let marker = html.contains("More exists — break the glass to view");
        // What the API says for the same person.
        let api = s.request_as(&token(s, *who), "GET", reference, None).await.status;
        match expected {
            V::Yes => {
                assert_eq!(api, 200);
                if ty == "Patient" {
                    assert_eq!(page.status, 200, "{who:?} {reference}: the record opens");
                    assert!(html.contains("data-nhs-number"), "{who:?} {reference}: the banner");
                } else {
                    assert!(listed, "{who:?} sees {reference} on /patients/{patient}{tab}");
                }
            }
            V::Glass => {
                assert!(!listed, "{who:?} must not see {reference} before breaking the glass");
                assert!(marker, "{who:?} {reference}: the page says more exists behind the glass");
                if ty == "Patient" {
                    assert_eq!(page.status, 403);
                    assert!(!html.contains("data-nhs-number"), "{who:?} {reference}: no banner behind the glass");
                }
            }
            V::No => {
                assert!(!listed, "{who:?} must not see {reference} on /patients/{patient}{tab}: {html}");
                if ty == "Patient" {
                    assert_eq!(page.status, 404, "{who:?} {reference}: behaves as absent");
                    assert!(!marker, "{who:?} {reference}: hidden data leaves no marker");
                }
            }
        }
        checked += 1;
    }
    assert!(checked >= 30, "{checked} rows checked through the web application");
    // No session: every page sends the browser to sign in, and shows nothing.
    let page = s.request("GET", "/patients/jane-smith", &[("authorization", "")], None).await;
    assert_eq!(page.status, 303);
    assert!(!String::from_utf8_lossy(&page.body).contains("SMITH"));
    // A bearer token is not a web session.
    let page = s.request_as(&token(s, PATEL), "GET", "/patients/jane-smith", None).await;
    assert_eq!(page.status, 303);
}

/// Tokens bound to one patient — a SMART app's patient-level scopes, a patient's portal
/// sign-in — reach that patient's record and nothing else, on every read path; they write
/// only where their scopes and the user's role allow, and the portal writes nothing.
async fn patient_bound_tokens_reach_one_record(s: &Server) {
    load_demo(s).await;
    let now = tessera_auth::now();
    let domain = s.engine.domain();
    let issued = s.auth.issue_user_token(&domain, "dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"), None, now).unwrap();
    let mut app = s.auth.verify_at(&issued, now).unwrap();
    app.scope = "patient/*.rs launch".into();
    app.patient = Some("jane-smith".into());
    let app_token = s.auth.sign(&app);
    let mut portal = app.clone();
    portal.kind = tessera_auth::TokenKind::Patient;
    portal.sub = "daniel.okafor".into();
    portal.name = "Daniel Okafor".into();
    portal.org = String::new();
    portal.role = None;
    portal.loc = None;
    portal.scope = tessera_auth::PATIENT_PORTAL_SCOPES.into();
    portal.patient = Some("daniel-okafor".into());
    let portal_token = s.auth.sign(&portal);
    for (t, own, other) in [(&app_token, "jane-smith", "daniel-okafor"), (&portal_token, "daniel-okafor", "jane-smith")] {
        assert_eq!(s.request_as(t, "GET", &format!("Patient/{own}"), None).await.status, 200);
        for path in [
            format!("Patient/{other}"),
            format!("Patient/{other}/$everything"),
            format!("Patient/{other}/_history"),
            format!("Patient/{other}/Observation"),
        ] {
            let r = s.request_as(t, "GET", &path, None).await;
            let body = String::from_utf8_lossy(&r.body).into_owned();
            assert!(r.status >= 400 || !body.contains(&format!("Patient/{other}\"")) && !body.contains("\"resourceType\":\"Observation\""), "{path}: {} {body}", r.status);
        }
        for path in ["Observation?_count=500", "Encounter?_count=500", "_history?_count=500", "Patient?_count=500", "Condition?_count=500", "MedicationRequest?_count=500"] {
            let r = s.request_as(t, "GET", path, None).await;
            assert_eq!(r.status, 200, "{path}");
            let b = r.json();
            for e in b["entry"].as_array().into_iter().flatten() {
                let res = &e["resource"];
                if res["resourceType"] == "OperationOutcome" {
                    continue;
                }
                let subject = if res["resourceType"] == "Patient" { format!("Patient/{}", res["id"].as_str().unwrap_or("")) } else { res["subject"]["reference"].as_str().or(res["patient"]["reference"].as_str()).unwrap_or("").to_string() };
                assert_eq!(subject, format!("Patient/{own}"), "{path} lists only the patient in context: {res}");
            }
        }
        let own_obs = s.request_as(t, "GET", &format!("Observation?patient={own}&_summary=count"), None).await.json();
        assert!(own_obs["total"].as_u64().unwrap_or(0) >= 1, "the own record is readable: {own_obs}");
        // Writes: read-only scopes, and the portal never writes.
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{own}")}});
        assert_eq!(s.request_as(t, "POST", "Observation", Some(&serde_json::to_vec(&obs).unwrap())).await.status, 403);
    }
    // The patient's access log: their own only; the audit trail at large: never.
    assert_eq!(s.request_as(&portal_token, "GET", "Patient/daniel-okafor/$access-log", None).await.status, 200);
    assert_eq!(s.request_as(&portal_token, "GET", "Patient/jane-smith/$access-log", None).await.status, 403);
    assert_eq!(s.request_as(&portal_token, "GET", "AuditEvent?patient=daniel-okafor", None).await.status, 403);
    // A patient-scoped app with write scopes writes into its patient's record only, and only
    // what the user's role may write.
    let mut writer = app.clone();
    writer.scope = "patient/*.cruds".into();
    writer.jti = tessera_auth::random_id();
    let writer = s.auth.sign(&writer);
    let mine = json!({"resourceType": "Observation", "status": "final", "code": {"text": "App note"}, "subject": {"reference": "Patient/jane-smith"}});
    assert_eq!(s.request_as(&writer, "POST", "Observation", Some(&serde_json::to_vec(&mine).unwrap())).await.status, 201);
    let theirs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "App note"}, "subject": {"reference": "Patient/tom-hughes"}});
    assert_eq!(s.request_as(&writer, "POST", "Observation", Some(&serde_json::to_vec(&theirs).unwrap())).await.status, 403);
    // Patient-level scopes without a patient in context reach nothing.
    let mut unbound = app.clone();
    unbound.patient = None;
    unbound.jti = tessera_auth::random_id();
    let unbound = s.auth.sign(&unbound);
    assert!(matches!(s.request_as(&unbound, "GET", "Patient/jane-smith", None).await.status, 403 | 404));
}

/// Layered content is read through the `Gate` like everything else: `$effective` (instance
/// and type) releases only what the reader's scopes and role let them read, and a token bound
/// to one patient reads no content.
async fn content_paths_follow_the_gate(s: &Server) {
    load_demo(s).await;
    // A clinician reads the content (configuration is readable by every role that reads it).
    let patel = token(s, PATEL);
    assert_eq!(s.request_as(&patel, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await.status, 200);
    // Scopes narrow: a token that may read Observations only reads no content.
    let narrow = s.auth.issue_user_token(&s.engine.domain(), "dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"), Some("user/Observation.rs"), tessera_auth::now()).unwrap();
    let r = s.request_as(&narrow, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await;
    assert!(matches!(r.status, 403 | 404), "{}", r.status);
    let all = s.request_as(&narrow, "GET", "ActivityDefinition/$effective", None).await;
    assert!(all.status == 403 || all.json()["entry"].as_array().is_none_or(|e| e.is_empty()), "{}", String::from_utf8_lossy(&all.body));
    // A patient's portal token: their own record only, no content.
    let now = tessera_auth::now();
    let issued = s.auth.issue_user_token(&s.engine.domain(), "dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"), None, now).unwrap();
    let mut portal = s.auth.verify_at(&issued, now).unwrap();
    portal.kind = tessera_auth::TokenKind::Patient;
    portal.sub = "daniel.okafor".into();
    portal.org = String::new();
    portal.role = None;
    portal.loc = None;
    portal.scope = tessera_auth::PATIENT_PORTAL_SCOPES.into();
    portal.patient = Some("daniel-okafor".into());
    let portal = s.auth.sign(&portal);
    assert!(matches!(s.request_as(&portal, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await.status, 403 | 404));
    let all = s.request_as(&portal, "GET", "PlanDefinition/$effective", None).await;
    assert!(all.status == 403 || all.json()["entry"].as_array().is_none_or(|e| e.is_empty()));
    // A service account of another trust sees the model and its own trust's layer, not Northgate's.
    let rx2 = system_token(s, "rx2", "system/*.rs");
    let fbc = s.request_as(&rx2, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await.json();
    assert_eq!(fbc["title"], "Full blood count (FBC)");
    // Change requests: read by those who read configuration or sign changes off; nobody else,
    // on any path; never written directly.
    let carter = token(s, CARTER);
    let proposal = json!({"resourceType": "Parameters", "parameter": [
        {"name": "title", "valueString": "Leak check"},
        {"name": "configuration", "valueString": "[settings]\nbreak_glass_minutes = 120\n"}
    ]});
    let r = s.request_as(&carter, "POST", "Task/$change-request", Some(&serde_json::to_vec(&proposal).unwrap())).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let north = s.token(("gov.north", "domain-admin", "rx1", None));
    assert_eq!(s.request_as(&north, "GET", &format!("Task/{id}"), None).await.status, 200);
    for who in [PATEL, MURPHY, ALI, LEE] {
        let t = token(s, who);
        assert_eq!(s.request_as(&t, "GET", &format!("Task/{id}"), None).await.status, 404, "{who:?} reads no change request");
        for path in ["Task?_count=500", "Task?code=https://tessera.health/CodeSystem/governance|change-request", "Task/_history?_count=500"] {
            let body = String::from_utf8_lossy(&s.request_as(&t, "GET", path, None).await.body).into_owned();
            assert!(!body.contains(&id), "{who:?} {path} lists no change request");
        }
        assert!(matches!(s.request_as(&t, "POST", &format!("Task/{id}/$approve"), Some(b"{\"resourceType\":\"Parameters\",\"parameter\":[{\"name\":\"decision\",\"valueCode\":\"approve\"}]}")).await.status, 403 | 404));
    }
    assert!(matches!(s.request_as(&token(s, PATEL), "DELETE", &format!("Task/{id}"), None).await.status, 404 | 405));
}

/// Writes an Observation for a patient as a trust's system, labelled with `security`.
async fn labelled_observation(s: &Server, org: &str, patient: &str, code: &str, value: f64, security: Value) -> String {
    let mut o = json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")}, "valueQuantity": {"value": value, "unit": "1"}});
    if !security.is_null() {
        o["meta"] = json!({"security": security});
    }
    s.engine.create(&Access::system(org), "Observation", o, None).await.unwrap().resource.id().to_string()
}

const HIV: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

async fn outbox_settled(s: &Server, expected: usize) -> Vec<tessera_store::OutboxEntry> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let all = s.engine.outbox_list(&tessera_store::OutboxQuery { states: vec![], after_seq: 0, limit: 1000, heads_only: false }).await.unwrap();
        if all.len() >= expected && all.iter().all(|e| !e.state.is_open()) {
            return all;
        }
        assert!(tokio::time::Instant::now() < deadline, "outbox not settled: {all:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A FHIR subscription of another organisation receives what that organisation's system
/// view may see under the sharing table — and never hidden data, data behind the glass, or
/// the record of a patient who dissents from sharing.
async fn subscriptions_deliver_only_what_the_subscriber_sees(s: &Server) {
    load_demo(s).await;
    let riverside = common::Hook::start().await;
    let southbank = common::Hook::start().await;
    let _worker = common::start_worker(s);
    for (org, hook) in [("rx3", &riverside), ("rx2-southbank-hc", &southbank)] {
        let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "results feed", "criteria": "Observation",
            "channel": {"type": "rest-hook", "endpoint": hook.url(), "payload": "application/fhir+json"}});
        s.engine.create(&Access::system(org), "Subscription", sub, None).await.unwrap();
    }
    // Northgate writes: plain clinical (shared with Riverside, break-glass for Southbank),
    // HIV-labelled (hidden from both), restricted (break-glass: a system never breaks the
    // glass), and Tom Hughes's (he dissents from sharing).
    let plain = labelled_observation(s, "rx1-general", "jane-smith", "8867-4", 71.0, Value::Null).await;
    let hiv = labelled_observation(s, "rx1-general", "jane-smith", "8867-4", 72.0, json!([{"system": HIV, "code": "HIV"}])).await;
    let restricted = labelled_observation(s, "rx1-general", "jane-smith", "8867-4", 73.0, json!([{"system": CONFIDENTIALITY, "code": "R"}])).await;
    let dissent = labelled_observation(s, "rx1-general", "tom-hughes", "8867-4", 74.0, Value::Null).await;
    // Southbank's own, which it receives.
    let own = labelled_observation(s, "rx2-southbank-hc", "jane-smith", "8867-4", 75.0, Value::Null).await;
    let items = outbox_settled(s, 10).await;
    let ids = |h: &common::Hook| -> Vec<String> { h.received().iter().filter_map(|r| r.body["id"].as_str().map(str::to_string)).collect() };
    assert_eq!(ids(&riverside), vec![plain.clone(), own.clone()], "Riverside: Northgate's shared clinical data and Southbank's (shared with all)");
    assert_eq!(ids(&southbank), vec![own.clone()], "Southbank: its own only (Northgate's clinical data is break-glass for it)");
    for hidden in [&hiv, &restricted, &dissent] {
        for h in [&riverside, &southbank] {
            assert!(!h.received().iter().any(|r| String::from_utf8_lossy(&r.raw).contains(hidden.as_str())), "{hidden} never sent");
        }
        assert!(items.iter().filter(|e| &e.item.resource_id == hidden).all(|e| e.state == tessera_store::OutboxState::Suppressed), "{hidden}: suppressed");
    }
    // The suppressions are audited (as refused transmits of the subscriber).
    let audit = s.store.audit_query(&tessera_store::AuditQuery { action: Some("transmit".into()), limit: 100, ..Default::default() }).await.unwrap();
    assert_eq!(audit.len(), 10);
    assert_eq!(audit.iter().filter(|a| String::from_utf8_lossy(&a.event).contains("not delivered")).count(), 7);
    // A subscription (its receiver's address and credentials) is read, searched and
    // changed only by its own trust: absent for everyone else, domain administrators included.
    let subs = s.engine.active_subscriptions();
    let southbank_sub = subs.iter().find(|a| a.owner == "rx2-southbank-hc").unwrap().id.clone();
    let southbank_token = s.auth.issue_system_token("system", "rx2", "system/*.*", tessera_auth::now(), 60);
    let r = s.request_as(&southbank_token, "GET", &format!("Subscription/{southbank_sub}"), None).await;
    assert_eq!(r.status, 200, "its own trust: {}", String::from_utf8_lossy(&r.body));
    let northgate_system = s.auth.issue_system_token("system", "rx1", "system/*.*", tessera_auth::now(), 60);
    for t in [northgate_system, token(s, CARTER), token(s, PATEL)] {
        assert_eq!(s.request_as(&t, "GET", &format!("Subscription/{southbank_sub}"), None).await.status, 404);
        let b = s.request_as(&t, "GET", "Subscription?_total=accurate", None).await.json();
        assert!(!b.to_string().contains(&southbank_sub) && !b.to_string().contains(&southbank.url()), "{b}");
        let h = s.request_as(&t, "GET", "Subscription/_history", None).await;
        assert!(!String::from_utf8_lossy(&h.body).contains(&southbank.url()));
        let off = json!({"resourceType": "Subscription", "id": southbank_sub, "status": "off", "reason": "x", "criteria": "Observation", "channel": {"type": "websocket"}});
        let r = s.request_as(&t, "PUT", &format!("Subscription/{southbank_sub}"), Some(&serde_json::to_vec(&off).unwrap())).await;
        assert!(matches!(r.status, 403 | 404), "{}", r.status);
    }
    assert!(s.engine.active_subscriptions().iter().any(|a| a.id == southbank_sub), "still active");
}

/// The same for HL7 v2: an ORU^R01 subscription of another organisation is sent the reports
/// its view may see, each with only the observations that view may see.
async fn hl7v2_subscriptions_send_only_what_the_subscriber_sees(s: &Server) {
    load_demo(s).await;
    let riverside = common::MllpPeer::start("AA").await;
    let southbank = common::MllpPeer::start("AA").await;
    let _worker = common::start_worker(s);
    for (org, peer) in [("rx3", &riverside), ("rx2", &southbank)] {
        let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "results feed", "criteria": "DiagnosticReport",
            "channel": {"type": "message", "endpoint": format!("mllp://{}", peer.addr), "payload": "application/hl7-v2+er7"}});
        s.engine.create(&Access::system(org), "Subscription", sub, None).await.unwrap();
    }
    let plain = labelled_observation(s, "rx1-general", "jane-smith", "2345-7", 5.5, Value::Null).await;
    let hiv = labelled_observation(s, "rx1-general", "jane-smith", "2345-7", 777.25, json!([{"system": HIV, "code": "HIV"}])).await;
    let report = |results: &[&String], security: Value| {
        let mut r = json!({"resourceType": "DiagnosticReport", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "24323-8"}]},
            "subject": {"reference": "Patient/jane-smith"}, "issued": "2026-12-07T09:00:00Z",
            "result": results.iter().map(|id| json!({"reference": format!("Observation/{id}")})).collect::<Vec<_>>()});
        if !security.is_null() {
            r["meta"] = json!({"security": security});
        }
        r
    };
    let shared = s.engine.create(&Access::system("rx1-general"), "DiagnosticReport", report(&[&plain, &hiv], Value::Null), None).await.unwrap().resource.id().to_string();
    let hidden = s.engine.create(&Access::system("rx1-general"), "DiagnosticReport", report(&[&plain], json!([{"system": HIV, "code": "HIV"}])), None).await.unwrap().resource.id().to_string();
    let items = outbox_settled(s, 4).await;
    let state = |org_peer_sub: &str, id: &str| items.iter().find(|e| e.item.subscription == org_peer_sub && e.item.resource_id == id).map(|e| e.state);
    let subs = s.engine.active_subscriptions();
    let sub_of = |owner: &str| subs.iter().find(|a| a.owner == owner).unwrap().id.clone();
    assert_eq!(state(&sub_of("rx3"), &shared), Some(tessera_store::OutboxState::Delivered));
    assert_eq!(state(&sub_of("rx3"), &hidden), Some(tessera_store::OutboxState::Suppressed));
    assert_eq!(state(&sub_of("rx2"), &shared), Some(tessera_store::OutboxState::Suppressed), "break-glass for Southbank's system");
    assert_eq!(riverside.received().len(), 1, "one ORU^R01 for Riverside");
    assert!(southbank.received().is_empty(), "nothing for Southbank");
    let oru = &riverside.received()[0];
    assert!(oru.contains("ORU^R01"), "{oru:?}");
    assert!(oru.contains("OBX") && oru.contains("5.5"), "the visible observation is in the message: {oru:?}");
    assert!(!oru.contains("777.25") && !oru.contains(&hiv), "the hidden observation is not in the message: {oru:?}");
}

/// HL7 v2 interfaces write as their organisation through the Gate: an interface of another
/// trust cannot reach, change, cancel or merge away what it does not own, and its
/// acknowledgements name nothing of a record but the ids it wrote.
async fn hl7v2_interfaces_follow_the_gate(s: &Server) {
    load_demo(s).await;
    let domain = s.engine.domain();
    let serve = |interface: tessera_mllp::Interface| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(tessera_mllp::serve(s.engine.clone(), interface, listener));
        addr
    };
    let northgate = serve(tessera_mllp::Interface::from_domain(&domain, domain.interface("rx1-pas").unwrap())).await;
    let mut southbank = tessera_mllp::Interface::new(&domain, "rx2");
    southbank.wards.insert("DC".into(), "rx2-diabetes-clinic".into());
    let southbank = serve(southbank).await;
    let send = |addr: String, message: String| async move { tessera_mllp::send(&addr, &[message], std::time::Duration::from_secs(30)).await.unwrap().remove(0).remove(0) };
    let adt = |kind: &str, control: &str, pid: &str, pv1: &str| format!("MSH|^~\\&|PAS|X|TESSERA|DOMAIN|20261207120000||{kind}|{control}|P|2.5\rEVN||20261207120000\r{pid}\r{pv1}\r");
    let jane = "PID|1||9449305552^^^NHS^NH||SMITH^JANE||19580314|F";
    let daniel = "PID|1||9449306613^^^NHS^NH||OKAFOR^DANIEL||19900101|M";

    // Northgate admits Jane (visit V900).
    let ack = send(northgate.clone(), adt("ADT^A01^ADT_A01", "G1", jane, "PV1|1|I|7A||||||||||||||||V900")).await;
    assert_eq!(tessera_mllp::msa_code(&ack), "AA", "{ack}");
    let visit = "Encounter?identifier=https://tessera.health/Id/rx1/visit-number|V900";
    assert_eq!(s.get(visit).await.json()["entry"][0]["resource"]["status"], "in-progress");

    // Southbank's interface names the same visit number: it cannot cancel or discharge
    // Northgate's stay (its visits are its own), and learns nothing of it.
    let ack = send(southbank.clone(), adt("ADT^A11^ADT_A09", "G2", jane, "PV1|1|O|DC||||||||||||||||V900")).await;
    assert_eq!(tessera_mllp::msa_code(&ack), "AE", "{ack}");
    assert!(!ack.contains("Encounter/") && !ack.to_lowercase().contains("ward"), "{ack}");
    let ack = send(southbank.clone(), adt("ADT^A03^ADT_A03", "G3", jane, "PV1|1|O|DC||||||||||||||||V900")).await;
    assert_eq!(tessera_mllp::msa_code(&ack), "AA", "{ack}");
    assert_eq!(s.get(visit).await.json()["entry"][0]["resource"]["status"], "in-progress", "Northgate's stay untouched");
    // A place of another trust is refused, not borrowed.
    let ack = send(southbank.clone(), adt("ADT^A01^ADT_A01", "G4", jane, "PV1|1|I|7A||||||||||||||||S901")).await;
    assert_eq!(tessera_mllp::msa_code(&ack), "AE", "{ack}");

    // A result for a patient with hidden data: the acknowledgement names only what it wrote.
    let oru = format!("MSH|^~\\&|LAB|X|TESSERA|DOMAIN|20261207120000||ORU^R01^ORU_R01|G5|P|2.5\r{daniel}\rOBR|1||SB1|2345-7^Glucose^LN|||202612071015|||||||||||||||202612071100|||F\rOBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|3.5-7.8|N|||F\r");
    let ack = send(southbank.clone(), oru).await;
    assert_eq!(tessera_mllp::msa_code(&ack), "AA", "{ack}");
    for secret in ["Okafor", "OKAFOR", "psy", "Condition", "daniel-okafor/"] {
        assert!(!ack.contains(secret), "the ACK reveals nothing of the record ({secret}): {ack}");
    }

    // A merge across trusts: Southbank's interface cannot merge Northgate's patient away.
    let merge = format!(
        "MSH|^~\\&|PAS|X|TESSERA|DOMAIN|20261207120000||ADT^A40^ADT_A39|G6|P|2.5\rEVN|A40|20261207120000\rPID|1||SB777^^^RX2^MR||SMITH^JANE||19580314|F\rMRG|9449305552^^^NHS^NH\r"
    );
    send(southbank.clone(), adt("ADT^A28^ADT_A05", "G7", "PID|1||SB777^^^RX2^MR||SMYTHE^JANET||19600101|F", "PV1|1|N")).await;
    let ack = send(southbank.clone(), merge).await;
    assert_eq!(tessera_mllp::msa_code(&ack), "AE", "{ack}");
    assert!(ack.contains("merge"), "refused as a merge it may not make: {ack}");
    let jane_now = s.get("Patient/jane-smith").await.json();
    assert_ne!(jane_now["active"], false, "Jane's record is not merged away");
    assert!(jane_now.get("link").is_none_or(|l| !l.to_string().contains("replaced-by")), "{jane_now}");
}
