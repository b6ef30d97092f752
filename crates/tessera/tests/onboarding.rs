//! The five onboarding options and domain upgrades, on both backends, each audited: a new
//! domain from the model content; a new domain from a copy (no patients); an organisation
//! joining as-is (applied, or a change request under enforced governance; a file that
//! changes others refused); joining a model client domain; joint optimisation as change
//! requests every affected trust signs off; a model content upgrade with a dry run, refused
//! during a freeze.

mod common;
use common::{Backend, Server};
use serde_json::{json, Value};
use tessera_content::{env, onboard, upgrade};

on_both_backends!(the_five_ways_to_join_and_upgrades);

const EASTFIELD: &str = r#"
[[organisations]]
id = "rx4"
name = "Eastfield Hospitals NHS Trust"
ods_code = "RX4"

[[organisations]]
id = "rx4-east"
name = "Eastfield General Hospital"
parent = "rx4"

[[locations]]
id = "rx4-ward-1"
name = "Ward 1"
organisation = "rx4-east"

[[users]]
id = "dr.east"
name = "Dr Eve East"
password = "demo-doctor-9"
roles = [{ organisation = "rx4-east", role = "doctor", locations = ["rx4-ward-1"] }]

[[sharing]]
owner = "rx4"
viewer = "*"
classes = { clinical = "shared" }
"#;

async fn another(s: &Server) -> Server {
    let backend = if s.database_url.is_some() { Backend::Postgres } else { Backend::Sqlite };
    common::start(backend).await.expect("a second database")
}

fn onboarding_audited(records: &[tessera_store::AuditRecord]) -> usize {
    records.iter().filter(|a| a.action == "$onboard").count()
}

async fn audited(s: &Server) -> usize {
    onboarding_audited(&s.store.audit_query(&tessera_store::AuditQuery { limit: 1000, ..Default::default() }).await.unwrap())
}

async fn the_five_ways_to_join_and_upgrades(s: &Server) {
    // 1. A new domain from the model content.
    let fresh = another(s).await;
    let r = onboard::new_domain_from_model(&fresh.engine, Some(EASTFIELD)).await.unwrap();
    assert!(r.lines.iter().any(|l| l.contains("model content items loaded")), "{r}");
    assert!(fresh.engine.domain().organisation("rx4").is_some());
    let east = fresh.token(("dr.east", "doctor", "rx4-east", Some("rx4-ward-1")));
    let fbc = fresh.request_as(&east, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await.json();
    assert_eq!(fbc["title"], "Full blood count (FBC)");
    assert_eq!(audited(&fresh).await, 1);
    assert!(onboard::new_domain_from_model(&fresh.engine, None).await.is_err(), "only into an empty database");

    // 2. A new domain from a copy: configuration and content, no patients.
    s.load_demo().await;
    let copy = another(s).await;
    let r = onboard::new_domain_from_copy(&s.engine, &copy.engine).await.unwrap();
    assert!(r.lines[0].contains("no patients"), "{r}");
    assert_eq!(copy.get("Patient?_summary=count").await.json()["total"], 0);
    assert_eq!(env::kind_of(&copy.engine).await.unwrap(), env::EnvKind::Production);
    assert_eq!(copy.engine.domain().organisations.len(), s.engine.domain().organisations.len());
    assert_eq!(audited(&copy).await, 1);

    // 3. Joining an existing domain as-is: applied (governance not enforced) …
    let r = onboard::join(&s.engine, EASTFIELD, 3).await.unwrap();
    assert!(r.lines.iter().any(|l| l.contains("rx4")), "{r}");
    assert!(s.engine.domain().organisation("rx4-east").is_some());
    let east = s.token(("dr.east", "doctor", "rx4-east", Some("rx4-ward-1")));
    let fbc = s.request_as(&east, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await.json();
    assert_eq!(fbc["title"], "Full blood count (FBC)", "the joiner inherits the domain's content, not Northgate's wording");
    // … a joiner's file may only add.
    let grabby = format!("{EASTFIELD}\n[[organisations]]\nid = \"rx1\"\nname = \"Renamed\"\nods_code = \"RX1\"\n");
    assert!(onboard::join(&s.engine, &grabby, 3).await.unwrap_err().to_string().contains("only adds"));
    let dials = "[[sharing]]\nowner = \"rx3\"\nviewer = \"*\"\nclasses = { clinical = \"shared\" }\n[[organisations]]\nid = \"rx5\"\nname = \"Westfield\"\n";
    assert!(onboard::join(&s.engine, dials, 3).await.unwrap_err().to_string().contains("joint optimisation"));

    // 5. Joint optimisation: change requests that every affected trust signs off.
    let content = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {
        "resourceType": "PlanDefinition", "id": "domain-orderset-sepsis", "status": "active",
        "url": "https://tessera.health/content/PlanDefinition/suspected-sepsis",
        "usage": "Agreed across the four trusts: start within one hour.",
        "meta": {"tag": [{"system": "https://tessera.health/CodeSystem/content-layer", "code": "domain"}]}
    }}]});
    let r = onboard::optimise(&s.engine, Some("[settings]\nbreak_glass_minutes = 120\n"), Some(content), "Eastfield joint optimisation").await.unwrap();
    assert_eq!(r.change_requests.len(), 2, "{r}");
    let task: Value = s.get(&format!("Task/{}", r.change_requests[1])).await.json();
    let required: Vec<&str> = task["input"].as_array().unwrap().iter().filter(|i| i["type"]["text"] == "required-approval").filter_map(|i| i["valueString"].as_str()).collect();
    for t in ["lead:rx1", "lead:rx2", "lead:rx3", "lead:rx4", "clinical-safety"] {
        assert!(required.contains(&t), "{t} signs off: {required:?}");
    }
    assert_eq!(task["status"], "requested");

    // 3 under enforced governance: a change request, nothing applied yet.
    let governed = another(s).await;
    onboard::new_domain_from_copy(&s.engine, &governed.engine).await.unwrap();
    let mut d = (*governed.engine.domain()).clone();
    d.apply_file("[governance]\nenforced = true\nclinical_safety_officers = [\"cso.lewis\"]\nleads = [{ organisation = \"rx1\", users = [\"gov.north\"] }, { organisation = \"rx2\", users = [\"gov.south\"] }, { organisation = \"rx3\", users = [\"gov.river\"] }]\n").unwrap();
    governed.engine.apply_domain(&tessera_engine::Access::bootstrap(), d).await.unwrap();
    let westfield = EASTFIELD.replace("rx4", "rx6").replace("dr.east", "dr.west");
    let r = onboard::join(&governed.engine, &westfield, 3).await.unwrap();
    assert_eq!(r.change_requests.len(), 1, "{r}");
    assert!(governed.engine.domain().organisation("rx6").is_none(), "not applied before sign-off");

    // 4. Joining a model client domain as-is.
    let client = another(s).await;
    onboard::new_domain_from_model(&client.engine, None).await.unwrap();
    let r = onboard::join(&client.engine, EASTFIELD, 4).await.unwrap();
    assert_eq!(r.option, 4);
    assert!(client.engine.domain().organisation("rx4").is_some());
    assert_eq!(audited(&client).await, 2);

    // The schema of a database in use is current: nothing to migrate.
    if let Some(url) = &s.database_url {
        assert!(tessera_store::schema::pending_migrations(std::path::Path::new("."), Some(url)).await.unwrap().is_empty());
    }
    // Upgrades: an older model item in the database; a dry run lists the change, the real
    // run restores the shipped version — but not during a freeze.
    let model: Value = serde_json::from_str(tessera_content::MODEL_CONTENT).unwrap();
    let mut older = model["entry"].as_array().unwrap().iter().find(|e| e["resource"]["id"] == "model-lab-crp").unwrap()["resource"].clone();
    older["title"] = json!("CRP (old wording)");
    s.engine.update(&tessera_engine::Access::bootstrap(), "ActivityDefinition", "model-lab-crp", older, None).await.unwrap();
    let dry = upgrade::model_content(&s.engine, &model, true).await.unwrap();
    assert!(!dry.applied);
    assert_eq!(dry.changes.len(), 1, "{dry}");
    assert!(dry.changes[0].to_string().contains("title"), "{dry}");
    assert!(dry.impact.organisations.contains("rx4"), "every organisation sees a model change: {dry}");
    assert_eq!(crp_title(s).await, "CRP (old wording)", "a dry run changes nothing");
    let now = time::OffsetDateTime::now_utc();
    let fmt = |t: time::OffsetDateTime| t.format(&time::format_description::well_known::Rfc3339).unwrap();
    let mut frozen = (*s.engine.domain()).clone();
    frozen.governance.freeze = vec![tessera_domain::FreezeWindow { start: fmt(now - time::Duration::hours(1)), end: fmt(now + time::Duration::hours(1)), reason: "Eastfield go-live".into() }];
    s.engine.apply_domain(&tessera_engine::Access::bootstrap(), frozen.clone()).await.unwrap();
    assert!(upgrade::model_content(&s.engine, &model, false).await.unwrap_err().to_string().contains("frozen"));
    assert_eq!(crp_title(s).await, "CRP (old wording)");
    frozen.governance.freeze.clear();
    s.engine.apply_domain(&tessera_engine::Access::bootstrap(), frozen).await.unwrap();
    let done = upgrade::model_content(&s.engine, &model, false).await.unwrap();
    assert!(done.applied);
    assert_eq!(crp_title(s).await, "C-reactive protein (CRP)");
    assert!(upgrade::model_content(&s.engine, &model, false).await.unwrap().changes.is_empty(), "an upgrade applied twice changes nothing");
}

async fn crp_title(s: &Server) -> String {
    s.get("ActivityDefinition/model-lab-crp").await.json()["title"].as_str().unwrap().to_string()
}
