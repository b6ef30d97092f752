//! The audit trail follows the sharing dials: a privacy officer (or a service account with
//! an AuditEvent read scope) sees the events of their own trust's agents and the events
//! concerning their trust's or domain-wide data, with every resource their trust may not
//! see redacted to its data classes and owning trust; `$access-log` names one patient
//! only; the audit queries page through everything; nobody breaks the glass into a very
//! restricted patient's record. On both storage backends, over real HTTP, on the demo
//! shared domain (docs/demo-domain.md).

mod common;
use common::Server;
use serde_json::{json, Value};
use std::collections::HashSet;
use tessera_engine::Access;

on_both_backends!(
    other_trusts_hidden_data_is_redacted,
    access_log_names_only_its_patient,
    audit_queries_page_through_everything,
    audit_reading_needs_the_role_or_a_scope,
    no_break_glass_into_a_very_restricted_patient,
);

/// (user, role, organisation, location)
use common::Who;
const PATEL: Who = ("dr.patel", "doctor", "rx1-general", Some("ward-7a"));
const MURPHY: Who = ("dr.murphy", "doctor", "rx2-southbank-hc", Some("rx2-diabetes-clinic"));
const KHAN: Who = ("dr.khan", "doctor", "rx3-riverside-house", Some("willow-ward"));
const WALSH: Who = ("privacy.walsh", "privacy-officer", "rx1", None);
const ADEYEMI: Who = ("privacy.adeyemi", "privacy-officer", "rx3", None);

const DATA_CLASS: &str = "https://tessera.health/data-class";
const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
const ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";

/// Riverside's data that Northgate may not see on the *shared* dial: psychiatry (hidden)
/// and clinical (break-glass) — every id of it.
const RX3_NOT_SHARED_WITH_RX1: &[&str] = &["cond-daniel-psy", "note-daniel-psy", "med-daniel-lithium"];

async fn load_demo(s: &Server) {
    s.load_demo().await;
}

fn token(s: &Server, who: Who) -> String {
    s.token(who)
}

/// Changes the domain as its administrator would.
async fn change_domain(s: &Server, change: impl FnOnce(&mut tessera_domain::Domain)) {
    let mut domain = (*s.engine.domain()).clone();
    change(&mut domain);
    s.engine.apply_domain(&Access::system("tessera"), domain).await.unwrap();
}

/// GET as `token`, expecting 200, and the JSON body.
async fn get_ok(s: &Server, token: &str, path: &str) -> Value {
    let r = s.request_as(token, "GET", path, None).await;
    assert_eq!(r.status, 200, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn base64_decode(text: &str) -> String {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in text.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c).expect("base64") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn events(bundle: &Value) -> Vec<&Value> {
    bundle["entry"].as_array().into_iter().flatten().map(|e| &e["resource"]).collect()
}

fn entities(event: &Value) -> Vec<&Value> {
    event["entity"].as_array().into_iter().flatten().collect()
}

/// The decoded query texts of an event's query entities.
fn queries(event: &Value) -> Vec<String> {
    entities(event).into_iter().filter_map(|e| e["query"].as_str()).map(base64_decode).collect()
}

/// Everything a reader of the bundle can read: its JSON and every decoded query.
fn readable(bundle: &Value) -> String {
    let mut text = bundle.to_string();
    for e in events(bundle) {
        for q in queries(e) {
            text.push('\n');
            text.push_str(&q);
        }
    }
    text
}

fn agent(event: &Value) -> &str {
    event["agent"][0]["who"]["reference"].as_str().unwrap_or("")
}

fn subtype(event: &Value) -> &str {
    event["subtype"][0]["code"].as_str().unwrap_or("")
}

fn names(event: &Value, reference: &str) -> bool {
    entities(event).iter().any(|e| e["what"]["reference"].as_str().is_some_and(|r| r == reference || r.starts_with(&format!("{reference}/"))))
}

/// The redacted entities of an event, as (classes, owner).
fn redacted(event: &Value) -> Vec<(Vec<String>, Option<String>)> {
    entities(event)
        .into_iter()
        .filter(|e| e["description"] == "redacted" && e.get("query").is_none())
        .map(|e| {
            let keys: Vec<&String> = e.as_object().unwrap().keys().collect();
            assert!(
                keys.iter().all(|k| ["type", "role", "securityLabel", "description", "detail"].contains(&k.as_str())),
                "a redacted entity names nothing: {e}"
            );
            let classes = e["securityLabel"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|l| {
                    assert_eq!(l["system"], DATA_CLASS);
                    l["code"].as_str().unwrap().to_string()
                })
                .collect();
            let owner = e["detail"].as_array().into_iter().flatten().find(|d| d["type"] == "owner").and_then(|d| d["valueString"].as_str()).map(str::to_string);
            (classes, owner)
        })
        .collect()
}

fn has_redacted(event: &Value, class: &str, owner: &str) -> bool {
    redacted(event).iter().any(|(classes, o)| classes.iter().any(|c| c == class) && o.as_deref() == Some(owner))
}

/// Follows `next` links from `path` to the end; returns each page's bundle.
async fn all_pages(s: &Server, token: &str, path: &str) -> Vec<Value> {
    let mut pages = Vec::new();
    let mut path = path.to_string();
    loop {
        let page = get_ok(s, token, &path).await;
        let next = page["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(str::to_string);
        pages.push(page);
        match next {
            Some(url) => path = url.strip_prefix(&format!("{}/", s.base)).expect("next link under the base").to_string(),
            None => return pages,
        }
        assert!(pages.len() < 100, "paging does not end");
    }
}

fn params(code: &str, text: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [
        {"name": "reason", "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": code}},
        {"name": "text", "valueString": text}]}))
    .unwrap()
}

/// Northgate's privacy officer never learns the ids of Riverside's hidden data from the
/// trail, but sees that (and by whom, and of which class) it was accessed; Riverside's
/// officer sees them. And the other way round for Northgate's HIV and sealed data.
async fn other_trusts_hidden_data_is_redacted(s: &Server) {
    load_demo(s).await;
    let khan = token(s, KHAN);
    for r in ["Condition/cond-daniel-psy", "DocumentReference/note-daniel-psy", "MedicationRequest/med-daniel-lithium"] {
        assert_eq!(s.request_as(&khan, "GET", r, None).await.status, 200, "{r}");
    }
    let b = get_ok(s, &khan, "Condition?patient=daniel-okafor").await;
    assert!(b.to_string().contains("cond-daniel-psy"), "Dr Khan's search finds the psychiatry condition");

    let walsh = token(s, WALSH);
    for path in ["Patient/daniel-okafor/$access-log", "AuditEvent?patient=daniel-okafor", "AuditEvent?agent=dr.khan"] {
        let b = get_ok(s, &walsh, path).await;
        let text = readable(&b);
        for id in RX3_NOT_SHARED_WITH_RX1 {
            assert!(!text.contains(id), "{path}: Northgate's officer must not see {id}: {text}");
        }
        // What Riverside shares with Northgate (administrative) is not redacted.
        if !path.contains("agent") {
            assert!(text.contains("enc-daniel-willow"), "{path}: shared data stays named");
        }
        let khans: Vec<&Value> = events(&b).into_iter().filter(|e| agent(e) == "Practitioner/dr.khan").collect();
        let reads: Vec<&&Value> = khans.iter().filter(|e| subtype(e) == "read").collect();
        assert!(reads.len() >= 3, "{path}: Dr Khan's reads are listed: {b}");
        assert!(reads.iter().any(|e| has_redacted(e, "psychiatry", "rx3")), "{path}: psychiatry, owned by rx3: {b}");
        assert!(
            reads.iter().any(|e| has_redacted(e, "clinical", "rx3") && !has_redacted(e, "psychiatry", "rx3")),
            "{path}: the lithium prescription is clinical: {b}"
        );
        assert!(reads.iter().all(|e| names(e, "Patient/daniel-okafor")), "{path}: the patient stays named");
        let search = khans.iter().find(|e| subtype(e) == "search-type").unwrap_or_else(|| panic!("{path}: Dr Khan's search is listed: {b}"));
        assert_eq!(queries(search), vec!["redacted".to_string()], "{path}: another trust's query text is withheld");
        // Riverside's own writes (the demo load) are listed too, redacted.
        if !path.contains("agent") {
            assert!(
                events(&b).iter().any(|e| agent(e) == "Device/system" && has_redacted(e, "psychiatry", "rx3")),
                "{path}: Riverside's load is listed, redacted"
            );
        }
    }

    let adeyemi = token(s, ADEYEMI);
    for path in ["Patient/daniel-okafor/$access-log", "AuditEvent?patient=daniel-okafor"] {
        let b = get_ok(s, &adeyemi, path).await;
        let khans: Vec<&Value> = events(&b).into_iter().filter(|e| agent(e) == "Practitioner/dr.khan").collect();
        for r in ["Condition/cond-daniel-psy", "DocumentReference/note-daniel-psy", "MedicationRequest/med-daniel-lithium"] {
            assert!(khans.iter().any(|e| names(e, r)), "{path}: Riverside's officer sees {r}: {b}");
        }
        assert!(khans.iter().all(|e| redacted(e).is_empty()), "{path}: nothing of Riverside's own is redacted for it");
        let search = khans.iter().find(|e| subtype(e) == "search-type").expect("the search is listed");
        assert_eq!(queries(search), vec!["Condition?patient=daniel-okafor".to_string()], "own trust's query text is shown");
    }

    // Northgate's HIV and sealed data, from Riverside's side.
    let patel = token(s, PATEL);
    let create = |security: Value| {
        let body = serde_json::to_vec(&json!({"resourceType": "Observation", "status": "final", "code": {"text": "viral load"},
            "subject": {"reference": "Patient/jane-smith"}, "meta": {"security": [security]}}))
        .unwrap();
        let patel = patel.clone();
        async move {
            let r = s.request_as(&patel, "POST", "Observation", Some(&body)).await;
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            r.json()["id"].as_str().unwrap().to_string()
        }
    };
    let hiv = create(json!({"system": ACT_CODE, "code": "HIV"})).await;
    let sealed = create(json!({"system": "https://tessera.health/security", "code": "SEALED"})).await;
    for id in [&hiv, &sealed] {
        assert_eq!(s.request_as(&patel, "GET", &format!("Observation/{id}"), None).await.status, 200);
    }
    let b = get_ok(s, &patel, "Observation?patient=jane-smith").await;
    assert!(b.to_string().contains(&hiv) && b.to_string().contains(&sealed));

    for path in ["Patient/jane-smith/$access-log", "AuditEvent?patient=jane-smith", "AuditEvent?agent=dr.patel"] {
        let b = get_ok(s, &adeyemi, path).await;
        let text = readable(&b);
        assert!(!text.contains(&hiv) && !text.contains(&sealed), "{path}: Riverside's officer must not see Northgate's HIV or sealed ids: {text}");
        let patels: Vec<&Value> = events(&b).into_iter().filter(|e| agent(e) == "Practitioner/dr.patel").collect();
        assert!(patels.iter().any(|e| subtype(e) == "create" && has_redacted(e, "hiv", "rx1")), "{path}: the HIV create is listed, redacted: {b}");
        assert!(patels.iter().filter(|e| subtype(e) == "read" && has_redacted(e, "clinical", "rx1")).count() >= 2, "{path}: both reads are listed: {b}");
        let search = patels.iter().find(|e| subtype(e) == "search-type").expect("Dr Patel's search is listed");
        assert_eq!(queries(search), vec!["redacted".to_string()]);
        // Northgate data shared with Riverside stays named.
        assert!(path.contains("agent") || text.contains("obs-jane-hr"), "{path}: Northgate's shared clinical data is named");
    }
    // Northgate's own officer sees them, and its own clinician's query text.
    let b = get_ok(s, &walsh, "AuditEvent?agent=dr.patel").await;
    let text = readable(&b);
    assert!(text.contains(&hiv) && text.contains(&sealed), "{text}");
    let search = events(&b).into_iter().find(|e| subtype(e) == "search-type").expect("the search");
    assert_eq!(queries(search), vec!["Observation?patient=jane-smith".to_string()]);
}

/// `$access-log` lists the events concerning one patient, and in them only that patient's
/// entities, for every reader; the audit search by patient still shows whole events.
async fn access_log_names_only_its_patient(s: &Server) {
    load_demo(s).await;
    // Events about several patients: the demo load (one transaction per trust) and a search.
    let b = get_ok(s, &s.system_token, "Observation?_id=obs-jane-hr,obs-daniel-hr,obs-tom-hr,obs-maria-bp").await;
    assert_eq!(b["total"], 4);
    let patel = token(s, PATEL);
    get_ok(s, &patel, "Observation?patient=jane-smith").await;
    // The whole events do name other patients (so the log below has something to leave out).
    let whole = get_ok(s, &s.system_token, "AuditEvent?patient=jane-smith&_count=1000").await;
    let text = readable(&whole);
    assert!(text.contains("obs-daniel-hr") && text.contains("Patient/tom-hughes"), "{text}");

    let others = ["daniel", "maria", "tom-hughes", "-tom-"];
    for (who, t) in [("bootstrap", s.system_token.clone()), ("walsh", token(s, WALSH)), ("adeyemi", token(s, ADEYEMI))] {
        let b = get_ok(s, &t, "Patient/jane-smith/$access-log?_count=1000").await;
        let text = readable(&b);
        for other in others {
            assert!(!text.contains(other), "{who}: Jane's access log names '{other}': {text}");
        }
        for e in events(&b) {
            for en in entities(e) {
                if let Some(r) = en["what"]["reference"].as_str() {
                    assert!(!r.starts_with("Patient/") || r.starts_with("Patient/jane-smith"), "{who}: {r}");
                }
            }
            assert!(names(e, "Patient/jane-smith"), "{who}: every event names Jane: {e}");
        }
        // The multi-patient search is listed, with Jane's result only and its query withheld.
        let search = events(&b)
            .into_iter()
            .find(|e| agent(e) == "Device/system" && subtype(e) == "search-type" && names(e, "Observation/obs-jane-hr"))
            .unwrap_or_else(|| panic!("{who}: the search is in Jane's log: {b}"));
        assert_eq!(queries(search), vec!["redacted".to_string()], "{who}");
        // The loads of the trusts that hold Jane's data are listed, with Jane's resources.
        assert!(events(&b).iter().any(|e| agent(e) == "Device/system" && names(e, "Observation/obs-jane-glucose")), "{who}");
        // Dr Patel's search of Jane alone: its text for Northgate (and the bootstrap), not for Riverside.
        let search = events(&b).into_iter().find(|e| agent(e) == "Practitioner/dr.patel" && subtype(e) == "search-type").expect("Dr Patel's search");
        let expected = if who == "adeyemi" { "redacted" } else { "Observation?patient=jane-smith" };
        assert_eq!(queries(search), vec![expected.to_string()], "{who}");
    }
    assert_eq!(s.request_as(&token(s, WALSH), "GET", "Patient/jane-smith/$access-log?patient=tom-hughes", None).await.status, 400);
}

/// The break-glass review queue and the other audit queries page through everything:
/// `_count`, a `next` link with a cursor, each page filled with what the reader may see.
async fn audit_queries_page_through_everything(s: &Server) {
    load_demo(s).await;
    let murphy = token(s, MURPHY);
    let khan = token(s, KHAN);
    for i in 0..60 {
        let (t, patient) = if i % 2 == 0 { (&murphy, "jane-smith") } else { (&khan, "tom-hughes") };
        let r = s.request_as(t, "POST", &format!("Patient/{patient}/$break-glass"), Some(&params("ETREAT", &format!("emergency number {i}")))).await;
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    }
    let walsh = token(s, WALSH);
    // The default page stops at 50, but says there is more.
    let first = get_ok(s, &walsh, "AuditEvent?purpose=BTG").await;
    assert_eq!(events(&first).len(), 50);
    assert!(first["link"].as_array().unwrap().iter().any(|l| l["relation"] == "next"), "a next link: {first}");

    let pages = all_pages(s, &walsh, "AuditEvent?purpose=BTG&_count=20").await;
    assert!(pages.len() >= 3, "{} pages", pages.len());
    let mut seen = HashSet::new();
    let mut reasons = HashSet::new();
    for (n, page) in pages.iter().enumerate() {
        let entries = page["entry"].as_array().cloned().unwrap_or_default();
        assert!(entries.len() <= 20);
        if n + 1 < pages.len() {
            assert_eq!(entries.len(), 20, "page {n} is full");
        }
        for e in &entries {
            let id = e["resource"]["id"].as_str().unwrap().to_string();
            assert_eq!(e["fullUrl"], format!("{}/AuditEvent/{id}", s.base));
            assert!(seen.insert(id.clone()), "event {id} listed twice");
            if e["resource"]["subtype"][0]["code"] == "110127" {
                reasons.insert(e["resource"]["purposeOfEvent"][0]["text"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(seen.len() >= 60, "{} events", seen.len());
    for i in 0..60 {
        assert!(reasons.contains(&format!("ETREAT: emergency number {i}")), "break-glass {i} is in the queue");
    }

    // Pages are filled with what the reader may see: Riverside's officer's queries (no
    // patient, another trust) are interleaved with Northgate's and skipped.
    let adeyemi = token(s, ADEYEMI);
    for _ in 0..3 {
        get_ok(s, &walsh, "AuditEvent?purpose=BTG&_count=1").await;
        for _ in 0..60 {
            get_ok(s, &adeyemi, "AuditEvent?purpose=BTG&_count=1").await;
        }
    }
    let all = get_ok(s, &s.system_token, "AuditEvent?action=audit-query&_count=1000").await;
    let riverside: Vec<&Value> = events(&all).into_iter().filter(|e| agent(e) == "Practitioner/privacy.adeyemi").collect();
    assert!(riverside.len() >= 180);
    let expected: HashSet<String> = events(&all)
        .into_iter()
        .filter(|e| agent(e) != "Practitioner/privacy.adeyemi" && agent(e) != "Device/system")
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let pages = all_pages(s, &walsh, "AuditEvent?action=audit-query&_count=3").await;
    let mut listed = HashSet::new();
    for (n, page) in pages.iter().enumerate() {
        let evs = events(page);
        if n + 1 < pages.len() {
            assert_eq!(evs.len(), 3, "page {n} is filled past the events Northgate may not see");
        }
        for e in evs {
            assert_ne!(agent(e), "Practitioner/privacy.adeyemi");
            assert!(listed.insert(e["id"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(listed, expected);

    // The access log pages the same way.
    let pages = all_pages(s, &walsh, "Patient/tom-hughes/$access-log?_count=7").await;
    let ids: Vec<String> = pages.iter().flat_map(|p| events(p).into_iter().map(|e| e["id"].as_str().unwrap().to_string()).collect::<Vec<_>>()).collect();
    assert!(ids.len() >= 30 && pages.len() >= 5, "{} events on {} pages", ids.len(), pages.len());
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "no event twice");
    assert_eq!(s.request_as(&walsh, "GET", "AuditEvent?purpose=BTG&_cursor=nonsense", None).await.status, 400);
}

/// Reading the trail: the bootstrap account sees everything; another system account needs
/// an AuditEvent read scope and then sees what its trust's privacy officer sees; users
/// need a role that reads the audit class.
async fn audit_reading_needs_the_role_or_a_scope(s: &Server) {
    load_demo(s).await;
    change_domain(s, |d| {
        for (id, scopes) in [("rx1-audit-reader", vec!["system/AuditEvent.read".to_string()]), ("rx1-feed", vec!["system/Patient.read".to_string()])] {
            d.service_accounts.push(tessera_domain::ServiceAccount { id: id.into(), name: id.into(), secret_hash: None, organisation: "rx1".into(), scopes });
        }
    })
    .await;
    let khan = token(s, KHAN);
    assert_eq!(s.request_as(&khan, "GET", "Condition/cond-daniel-psy", None).await.status, 200);
    let now = tessera_auth::now();
    let reader = s.auth.issue_system_token("rx1-audit-reader", "rx1", "system/AuditEvent.read", now, 60);
    let reader_unscoped = s.auth.issue_system_token("rx1-audit-reader", "rx1", "system/Patient.read", now, 60);
    let feed = s.auth.issue_system_token("rx1-feed", "rx1", "system/Patient.read", now, 60);
    let system_rx1 = s.auth.issue_system_token("system", "rx1", "system/*.*", now, 60);
    let paths = ["Patient/daniel-okafor/$access-log", "AuditEvent?patient=daniel-okafor"];

    for path in paths {
        // The bootstrap account: everything, unredacted.
        let b = get_ok(s, &s.system_token, path).await;
        let text = readable(&b);
        assert!(text.contains("cond-daniel-psy") && text.contains("note-daniel-psy"), "{path}: {text}");
        assert!(events(&b).iter().all(|e| redacted(e).is_empty()), "{path}: nothing redacted for the bootstrap");
        // A service account with the scope, and the system account acting for Northgate:
        // Northgate's view.
        for t in [&reader, &system_rx1] {
            let b = get_ok(s, t, path).await;
            let text = readable(&b);
            for id in RX3_NOT_SHARED_WITH_RX1 {
                assert!(!text.contains(id), "{path}: {text}");
            }
            assert!(events(&b).iter().any(|e| agent(e) == "Practitioner/dr.khan" && has_redacted(e, "psychiatry", "rx3")), "{path}: {b}");
        }
        // Without the scope, or without the audit role: refused.
        for t in [&reader_unscoped, &feed, &token(s, PATEL), &token(s, KHAN)] {
            let r = s.request_as(t, "GET", path, None).await;
            assert_eq!(r.status, 403, "{path}: {}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.json()["resourceType"], "OperationOutcome");
        }
        assert_eq!(s.request_as(&token(s, WALSH), "GET", path, None).await.status, 200);
    }
    // The refusals are audited.
    let refused = get_ok(s, &s.system_token, "AuditEvent?agent=Device/rx1-feed").await;
    assert!(events(&refused).iter().any(|e| e["outcome"] == "4"), "{refused}");
}

/// No one breaks the glass into a very restricted patient's record (confidentiality V),
/// except a role that sees sealed data; nothing is granted, the attempt is audited.
async fn no_break_glass_into_a_very_restricted_patient(s: &Server) {
    load_demo(s).await;
    let patient = json!({"resourceType": "Patient", "id": "vera-stone", "name": [{"family": "Stone", "given": ["Vera"]}],
        "meta": {"security": [{"system": CONFIDENTIALITY, "code": "V"}]}});
    let r = s.put("Patient/vera-stone", &patient).await;
    assert!(r.status == 201 || r.status == 200, "{}", String::from_utf8_lossy(&r.body));

    let murphy = token(s, MURPHY);
    let r = s.request_as(&murphy, "POST", "Patient/vera-stone/$break-glass", Some(&params("ETREAT", "Collapsed in clinic"))).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    let oo = r.json();
    assert_eq!(oo["resourceType"], "OperationOutcome");
    assert!(oo["issue"][0]["diagnostics"].as_str().unwrap().contains("very restricted"), "{oo}");
    // Nothing granted, nothing opened.
    assert_eq!(s.store.get_meta("break-glass/dr.murphy/vera-stone").await.unwrap(), None);
    assert_ne!(s.request_as(&murphy, "GET", "Patient/vera-stone", None).await.status, 200);
    assert_eq!(s.engine.break_glass_total(), 0, "no grant counted");
    // The attempt is in the review queue, as a failure.
    let queue = get_ok(s, &s.system_token, "AuditEvent?purpose=BTG").await;
    let attempts: Vec<&Value> = events(&queue).into_iter().filter(|e| names(e, "Patient/vera-stone")).collect();
    assert_eq!(attempts.len(), 1, "{queue}");
    assert_eq!(attempts[0]["outcome"], "4");
    assert_eq!(agent(attempts[0]), "Practitioner/dr.murphy");
    // A privacy officer, who may not see a very restricted patient, sees the attempt
    // without the patient's id.
    let queue = get_ok(s, &token(s, WALSH), "AuditEvent?purpose=BTG").await;
    assert!(!readable(&queue).contains("vera-stone"), "{queue}");
    let attempts: Vec<&Value> = events(&queue).into_iter().filter(|e| agent(e) == "Practitioner/dr.murphy").collect();
    assert_eq!(attempts.len(), 1, "{queue}");
    assert_eq!(attempts[0]["outcome"], "4");
    assert_eq!(redacted(attempts[0]), vec![(vec!["demographics".to_string(), "very-restricted".to_string()], None)]);
    // An ordinary patient: the glass still breaks.
    let r = s.request_as(&murphy, "POST", "Patient/jane-smith/$break-glass", Some(&params("ETREAT", "Collapsed in clinic"))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));

    // A role that sees sealed data may.
    change_domain(s, |d| {
        let mut role = d.role("doctor").unwrap().clone();
        role.id = "sealed-records-doctor".into();
        role.name = "Doctor (sealed records)".into();
        role.sees_sealed = true;
        d.roles.push(role);
        let user = d.users.iter_mut().find(|u| u.id == "dr.murphy").unwrap();
        user.roles.push(tessera_domain::RoleAssignment {
            organisation: "rx2-southbank-hc".into(),
            role: "sealed-records-doctor".into(),
            locations: vec!["rx2-diabetes-clinic".into()],
        });
    })
    .await;
    let sealed = s.user_token("dr.murphy", Some("sealed-records-doctor"), Some("rx2-southbank-hc"), Some("rx2-diabetes-clinic"));
    let r = s.request_as(&sealed, "POST", "Patient/vera-stone/$break-glass", Some(&params("ETREAT", "Collapsed in clinic"))).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(s.store.get_meta("break-glass/dr.murphy/vera-stone").await.unwrap().is_some());
}
