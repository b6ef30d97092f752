//! Joint governance in production, on both backends: direct edits of layered content and of
//! the domain configuration refused and pointed at the change-request route; a change
//! applied only with the sign-off of each affected trust (and the clinical safety officer for
//! clinical content); rejection and withdrawal change nothing; a freeze stops an approved
//! change, and an emergency change passes with its extra approvals, flagged in the audit.

mod common;
use common::{Server, Who};
use serde_json::{json, Value};

on_both_backends!(changes_need_sign_off_and_respect_freezes);

const CARTER: Who = ("domain.carter", "domain-admin", "rx1", None);
const NORTH: Who = ("gov.north", "domain-admin", "rx1", None);
const SOUTH: Who = ("gov.south", "domain-admin", "rx2", None);
const RIVER: Who = ("gov.river", "domain-admin", "rx3", None);
const LEWIS: Who = ("cso.lewis", "domain-admin", "rx1", None);
const PATEL: Who = ("dr.patel", "doctor", "rx1-general", Some("ward-7a"));

const GOVERNANCE: &str = r#"
[governance]
enforced = true
clinical_safety_officers = ["cso.lewis"]
emergency_approvers = ["cso.lewis", "domain.carter", "gov.north"]
emergency_approvals = 2
leads = [
  { organisation = "rx1", users = ["gov.north"] },
  { organisation = "rx2", users = ["gov.south"] },
  { organisation = "rx3", users = ["gov.river"] },
]
"#;

fn crp_override(title: &str) -> Value {
    json!({
        "resourceType": "ActivityDefinition", "id": "rx1-general-lab-crp", "status": "active",
        "url": "https://tessera.health/content/ActivityDefinition/lab-crp", "title": title,
        "meta": {"tag": [
            {"system": "https://tessera.health/CodeSystem/content-layer", "code": "site"},
            {"system": "https://tessera.health/CodeSystem/content-scope", "code": "rx1-general"}
        ]}
    })
}

fn content_request(title: &str, item: Value, emergency: bool) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "title", "valueString": title},
        {"name": "reason", "valueString": "agreed at the pathology user group"},
        {"name": "content", "resource": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": item}]}},
        {"name": "emergency", "valueBoolean": emergency}
    ]})
}

fn decision(d: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": d}, {"name": "note", "valueString": "reviewed"}]})).unwrap()
}

async fn post(s: &Server, who: Who, path: &str, body: &Value) -> common::Reply {
    s.request_as(&s.token(who), "POST", path, Some(&serde_json::to_vec(body).unwrap())).await
}

async fn approve(s: &Server, who: Who, id: &str, d: &str) -> common::Reply {
    s.request_as(&s.token(who), "POST", &format!("Task/{id}/$approve"), Some(&decision(d))).await
}

async fn apply(s: &Server, who: Who, id: &str) -> common::Reply {
    s.request_as(&s.token(who), "POST", &format!("Task/{id}/$apply"), Some(b"{\"resourceType\":\"Parameters\"}")).await
}

async fn crp_title(s: &Server) -> String {
    let eff = s.request_as(&s.token(PATEL), "GET", "ActivityDefinition/model-lab-crp/$effective", None).await.json();
    eff["title"].as_str().unwrap_or_default().to_string()
}

async fn changes_need_sign_off_and_respect_freezes(s: &Server) {
    s.load_demo().await;
    // Production: governance on (the last change made without it).
    let mut domain = (*s.engine.domain()).clone();
    domain.apply_file(GOVERNANCE).unwrap();
    s.engine.apply_domain(&tessera_engine::Access::bootstrap(), domain).await.unwrap();
    assert!(s.engine.governance_enforced());

    // Direct edits are refused, pointing at the change-request route.
    let r = s.request_as(&s.token(CARTER), "PUT", "ActivityDefinition/rx1-general-lab-crp", Some(&serde_json::to_vec(&crp_override("Direct")).unwrap())).await;
    assert_eq!(r.status, 409, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("Task/$change-request"));
    let dial = "[[sharing]]\nowner = \"rx3\"\nviewer = \"*\"\nclasses = { clinical = \"shared\" }\n";
    let r = s.request_as(&s.token(CARTER), "PUT", "/admin/domain", Some(dial.as_bytes())).await;
    assert_eq!(r.status, 409, "a dial change without sign-off is refused: {}", String::from_utf8_lossy(&r.body));

    // A content change: proposed, needs Northgate's lead and the clinical safety officer.
    let r = post(s, CARTER, "Task/$change-request", &content_request("CRP title at Northgate General", crp_override("CRP (NG: green top)"), false)).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let task = r.json();
    let id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["status"], "requested");
    let required: Vec<&str> = task["input"].as_array().unwrap().iter().filter(|i| i["type"]["text"] == "required-approval").filter_map(|i| i["valueString"].as_str()).collect();
    assert_eq!(required, ["lead:rx1", "clinical-safety"]);
    let diff = task["input"].as_array().unwrap().iter().find(|i| i["type"]["text"] == "diff").unwrap()["valueString"].as_str().unwrap();
    assert!(diff.contains("rx1-general"), "{diff}");
    // Not yet approved: not applied.
    assert_eq!(apply(s, CARTER, &id).await.status, 409);
    // Southbank's lead holds none of its approvals.
    assert_eq!(approve(s, SOUTH, &id, "approve").await.status, 403);
    // A change request is not written directly.
    let mut forged = task.clone();
    forged["status"] = json!("accepted");
    assert_eq!(s.request_as(&s.token(CARTER), "PUT", &format!("Task/{id}"), Some(&serde_json::to_vec(&forged).unwrap())).await.status, 405);
    let r = approve(s, NORTH, &id, "approve").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "requested", "the clinical safety officer has not signed yet");
    assert_eq!(approve(s, NORTH, &id, "approve").await.status, 403, "an approval is given once");
    let r = approve(s, LEWIS, &id, "approve").await;
    assert_eq!(r.json()["status"], "accepted");
    let r = apply(s, CARTER, &id).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["status"], "completed");
    assert_eq!(crp_title(s).await, "CRP (NG: green top)");

    // A dial change: every trust signs off; a rejection changes nothing.
    let config = json!({"resourceType": "Parameters", "parameter": [{"name": "title", "valueString": "Riverside shares clinical data"}, {"name": "configuration", "valueString": dial}]});
    let r = post(s, CARTER, "Task/$change-request", &config).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let dial_task = r.json();
    let dial_id = dial_task["id"].as_str().unwrap().to_string();
    let dial_diff = dial_task["input"].as_array().unwrap().iter().find(|i| i["type"]["text"] == "diff").unwrap()["valueString"].as_str().unwrap().to_string();
    assert!(dial_diff.contains("configuration sharing") && dial_diff.contains("\"shared\""), "the dial change, element by element: {dial_diff}");
    assert_eq!(approve(s, NORTH, &dial_id, "approve").await.status, 200);
    assert_eq!(apply(s, CARTER, &dial_id).await.status, 409, "two trusts have not signed off");
    let r = approve(s, RIVER, &dial_id, "reject").await;
    assert_eq!(r.json()["status"], "rejected");
    assert_eq!(apply(s, CARTER, &dial_id).await.status, 409);
    let sharing_before = s.engine.domain().sharing.clone();
    assert_eq!(s.engine.domain().sharing, sharing_before, "a rejected change changes nothing");

    // Withdrawal: only the requester; nothing changes.
    let r = post(s, CARTER, "Task/$change-request", &content_request("Withdrawn idea", crp_override("Never"), false)).await;
    let w = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.request_as(&s.token(NORTH), "POST", &format!("Task/{w}/$withdraw"), Some(b"{\"resourceType\":\"Parameters\"}")).await.status, 403);
    let r = s.request_as(&s.token(CARTER), "POST", &format!("Task/{w}/$withdraw"), Some(b"{\"resourceType\":\"Parameters\"}")).await;
    assert_eq!(r.json()["status"], "cancelled");
    assert_eq!(approve(s, NORTH, &w, "approve").await.status, 409);

    // A freeze, itself a governed configuration change signed off by every trust.
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let freeze = format!(
        "{GOVERNANCE}freeze = [{{ start = \"{}\", end = \"{}\", reason = \"Go-live of a new trust\" }}]\n",
        fmt(now - time::Duration::hours(1)),
        fmt(now + time::Duration::days(1))
    );
    let config = json!({"resourceType": "Parameters", "parameter": [{"name": "title", "valueString": "Freeze for the go-live"}, {"name": "configuration", "valueString": freeze}]});
    let fid = post(s, CARTER, "Task/$change-request", &config).await.json()["id"].as_str().unwrap().to_string();
    for who in [NORTH, SOUTH, RIVER] {
        assert_eq!(approve(s, who, &fid, "approve").await.status, 200);
    }
    let r = apply(s, CARTER, &fid).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.engine.domain().governance.freeze.len(), 1);

    // During the freeze an approved change is refused …
    let nid = post(s, CARTER, "Task/$change-request", &content_request("Routine change", crp_override("CRP routine"), false)).await.json()["id"].as_str().unwrap().to_string();
    approve(s, NORTH, &nid, "approve").await;
    approve(s, LEWIS, &nid, "approve").await;
    let r = apply(s, CARTER, &nid).await;
    assert_eq!(r.status, 409);
    assert!(r.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("frozen"));
    assert_eq!(crp_title(s).await, "CRP (NG: green top)");
    // … and an emergency change passes with its two extra approvals (not the requester's).
    let eid = post(s, CARTER, "Task/$change-request", &content_request("Urgent: wrong tube colour", crp_override("CRP (NG: gold top ONLY)"), true)).await.json()["id"].as_str().unwrap().to_string();
    assert_eq!(approve(s, CARTER, &eid, "approve").await.status, 403, "the requester does not approve their own emergency change");
    let r = approve(s, NORTH, &eid, "approve").await.json();
    let emergency_approvals = |t: &Value| t["output"].as_array().into_iter().flatten().filter(|o| o["valueString"].as_str().is_some_and(|v| v.starts_with("emergency|"))).count();
    assert_eq!(emergency_approvals(&r), 1);
    assert_eq!(r["status"], "requested", "one emergency approval is not enough");
    let r = approve(s, LEWIS, &eid, "approve").await.json();
    assert_eq!(emergency_approvals(&r), 2);
    assert_eq!(r["status"], "accepted", "{r}");
    let r = apply(s, CARTER, &eid).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(crp_title(s).await, "CRP (NG: gold top ONLY)");
    let audited = s.store.audit_query(&tessera_store::AuditQuery { limit: 1000, ..Default::default() }).await.unwrap();
    let flagged = audited.iter().filter(|a| a.action == "$apply").count();
    assert!(flagged >= 3, "every apply is audited ({flagged})");
    let events = s.request_as(&s.token(("privacy.walsh", "privacy-officer", "rx1", None)), "GET", "AuditEvent?action=$apply&_count=100", None).await;
    assert!(String::from_utf8_lossy(&events.body).contains("EMERGENCY change applied during the freeze"), "the emergency is flagged in the audit");
}
