//! The audit trail as FHIR: AuditEvent search pages like any search (totals, `next` links,
//! `fullUrl`s), each event reads at its `fullUrl`, and every rendered AuditEvent — reads,
//! searches, refusals, break-glass, failed sign-ins, refused tokens — is valid FHIR. Both
//! backends, over real HTTP.

mod common;
use common::{Server, Who};
use serde_json::{json, Value};

on_both_backends!(audit_events_page_read_and_validate);

const PATEL: Who = ("dr.patel", "doctor", "rx1-general", Some("ward-7a"));
const WALSH: Who = ("privacy.walsh", "privacy-officer", "rx1", None);

async fn form(s: &Server, path: &str, fields: &[(&str, &str)]) -> u16 {
    let body: String = fields.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    s.request("POST", path, &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "")], Some(body.as_bytes())).await.status
}

async fn audit_events_page_read_and_validate(s: &Server) {
    s.load_demo().await;
    let patel = s.token(PATEL);
    // Something of every kind: reads, a search, a refusal, a break-glass, a failed sign-in,
    // a sign-in, a refused bearer token.
    assert_eq!(s.request_as(&patel, "GET", "Patient/jane-smith", None).await.status, 200);
    assert_eq!(s.request_as(&patel, "GET", "Observation?patient=jane-smith", None).await.status, 200);
    assert_eq!(s.request_as(&patel, "GET", "AuditEvent", None).await.status, 403);
    let glass = json!({"resourceType": "Parameters", "parameter": [{"name": "reason", "valueCode": "ETREAT"}, {"name": "text", "valueString": "collapsed in clinic"}]});
    let r = s.request_as(&patel, "POST", "Patient/daniel-okafor/$break-glass", Some(&serde_json::to_vec(&glass).unwrap())).await;
    assert!(r.status == 200 || r.status == 403, "break-glass: {}", r.status);
    assert_eq!(form(s, "/auth/token", &[("grant_type", "password"), ("username", "dr.patel"), ("password", "wrong")]).await, 400, "invalid_grant");
    assert_eq!(form(s, "/auth/token", &[("grant_type", "password"), ("username", "nobody-at-all"), ("password", "x")]).await, 400, "invalid_grant");
    assert_eq!(form(s, "/auth/token", &[("grant_type", "password"), ("username", "dr.patel"), ("password", "demo-doctor-1")]).await, 200);
    assert_eq!(s.request_as("not-a-token", "GET", "Patient/jane-smith", None).await.status, 401);

    // Every event, page by page (3 per page), as the bootstrap account sees them.
    let first = s.get("AuditEvent?_count=3&_total=accurate").await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let first = first.json();
    let total = first["total"].as_u64().expect("_total=accurate gives a total");
    assert!(total >= 8, "{total} events");
    let mut events: Vec<Value> = Vec::new();
    let mut page = first;
    let mut pages = 0;
    loop {
        pages += 1;
        for e in page["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                let full_url = e["fullUrl"].as_str().expect("every event has a fullUrl");
                assert!(full_url.ends_with(&format!("AuditEvent/{}", e["resource"]["id"].as_str().unwrap())), "{full_url}");
                events.push(e["resource"].clone());
            }
        }
        let Some(next) = page["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next") else { break };
        let next = next["url"].as_str().unwrap().split("/fhir/").nth(1).unwrap().to_string();
        page = s.get(&next).await.json();
        assert!(pages < 1000);
    }
    assert!(pages > 2, "{pages} pages");
    // Paging lists each event once; the total counted the events listed when it was taken.
    let mut ids: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "an event listed twice");
    assert!(events.len() as u64 >= total, "{} listed, total {total}", events.len());
    // Counts without entries.
    let b = s.get("AuditEvent?_summary=count").await.json();
    assert!(b["total"].as_u64().unwrap() >= total);
    assert!(b.get("entry").is_none_or(|e| e.as_array().unwrap().iter().all(|e| e["search"]["mode"] != "match")));
    let b = s.get("AuditEvent?_count=0").await.json();
    assert!(b["total"].as_u64().unwrap() >= total);

    // Each event reads at its id, and is valid FHIR.
    let kinds: Vec<String> = events.iter().map(|e| e["subtype"][0]["code"].as_str().unwrap_or("").to_string()).collect();
    for e in &events {
        let id = e["id"].as_str().unwrap();
        let r = s.get(&format!("AuditEvent/{id}")).await;
        assert_eq!(r.status, 200, "AuditEvent/{id}");
        assert_eq!(r.json(), *e, "AuditEvent/{id} reads as listed");
        if let Err(issues) = tessera_fhir::validation::validate(e, &Default::default()) {
            panic!("AuditEvent/{id} is not valid FHIR: {issues:?}\n{e:#}");
        }
        // No empty strings, no empty references.
        let text = e.to_string();
        assert!(!text.contains(":\"\""), "an empty string in {e}");
        assert!(!text.contains("\"Organization/\"") && !text.contains("\"Practitioner/\""), "an empty reference in {e}");
    }
    assert!(kinds.iter().any(|k| k == "110122"), "a sign-in event (DCM 110122 Login) is listed: {kinds:?}");
    assert_eq!(s.get("AuditEvent/999999999").await.status, 404);
    assert_eq!(s.get("AuditEvent/not-a-number").await.status, 404);

    // A doctor may not read the trail, by search or by id; a privacy officer may, through
    // the view of their trust.
    let some = events[0]["id"].as_str().unwrap();
    assert_eq!(s.request_as(&patel, "GET", &format!("AuditEvent/{some}"), None).await.status, 403);
    let walsh = s.token(WALSH);
    let b = s.request_as(&walsh, "GET", "AuditEvent?agent=dr.patel&_total=accurate&_count=2", None).await;
    assert_eq!(b.status, 200);
    let b = b.json();
    assert!(b["total"].as_u64().unwrap() >= 2);
    let listed = b["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    assert_eq!(s.request_as(&walsh, "GET", &format!("AuditEvent/{listed}"), None).await.status, 200);
}
