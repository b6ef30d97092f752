//! Non-production environments on both backends: created from production with its
//! configuration and content and no production patient; drift between environments;
//! promotion of approved change requests only, one step at a time, into the next
//! environment's own sign-off; train refreshed from production.

mod common;
use common::{Backend, Server};
use serde_json::json;
use tessera_content::env::{self, EnvKind};

on_both_backends!(environments_hold_no_patients_and_promote_approved_changes_only);

async fn another(s: &Server) -> Server {
    let backend = if s.database_url.is_some() { Backend::Postgres } else { Backend::Sqlite };
    common::start(backend).await.expect("a second database")
}

async fn patients(s: &Server) -> u64 {
    s.get("Patient?_summary=count").await.json()["total"].as_u64().unwrap()
}

async fn environments_hold_no_patients_and_promote_approved_changes_only(s: &Server) {
    s.load_demo().await;
    assert!(patients(s).await >= 4);
    let test = another(s).await;
    let report = env::create(&s.engine, &test.engine, EnvKind::Test).await.unwrap();
    assert!(report.content_items >= 25, "{report}");
    assert_eq!(env::kind_of(&test.engine).await.unwrap(), EnvKind::Test);
    // No production patient: none of them, by id or NHS number; no record of any kind.
    assert_eq!(patients(&test).await, 0);
    for (id, nhs) in [("jane-smith", "9449305552"), ("daniel-okafor", "9449306613"), ("maria-nowak", "9449307342"), ("tom-hughes", "9449308020")] {
        assert_eq!(test.get(&format!("Patient/{id}")).await.status, 404);
        assert_eq!(test.get(&format!("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}&_summary=count")).await.json()["total"], 0);
    }
    for ty in ["Encounter", "Observation", "Condition", "MedicationRequest", "AllergyIntolerance", "DocumentReference", "Consent"] {
        assert_eq!(test.get(&format!("{ty}?_summary=count")).await.json()["total"], 0, "{ty}");
    }
    assert!(test.engine.domain().portal_accounts.is_empty(), "portal accounts name real patients");
    assert_eq!(test.engine.domain().organisations.len(), s.engine.domain().organisations.len());
    // Creating into a database that is not empty is refused; so is creating production.
    assert!(env::create(&s.engine, &test.engine, EnvKind::Test).await.is_err());
    assert!(env::create(&test.engine, &another(s).await.engine, EnvKind::Cert).await.is_err(), "environments are made from production");

    // Drift: only the differences made on purpose, then a content change made in test.
    let before = env::drift(&s.engine, &test.engine).await.unwrap();
    assert!(before.iter().all(|l| l.starts_with("configuration portal_accounts") || l.starts_with("configuration governance")), "{before:#?}");
    let carter = test.token(("domain.carter", "domain-admin", "rx1", None));
    let item = json!({
        "resourceType": "ActivityDefinition", "id": "rx1-general-lab-crp", "status": "active",
        "url": "https://tessera.health/content/ActivityDefinition/lab-crp", "title": "CRP (tested)",
        "meta": {"tag": [{"system": "https://tessera.health/CodeSystem/content-layer", "code": "site"}, {"system": "https://tessera.health/CodeSystem/content-scope", "code": "rx1-general"}]}
    });
    assert_eq!(test.request_as(&carter, "PUT", "ActivityDefinition/rx1-general-lab-crp", Some(&serde_json::to_vec(&item).unwrap())).await.status, 201);
    let after = env::drift(&s.engine, &test.engine).await.unwrap();
    assert!(after.iter().any(|l| l.starts_with("content + ActivityDefinition https://tessera.health/content/ActivityDefinition/lab-crp [site rx1-general]")), "{after:#?}");

    // Promotion: a change request of test, not yet approved, is refused …
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "title", "valueString": "CRP wording"},
        {"name": "content", "resource": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": item}]}}
    ]});
    let r = test.request_as(&carter, "POST", "Task/$change-request", Some(&serde_json::to_vec(&params).unwrap())).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let id = r.json()["id"].as_str().unwrap().to_string();
    let cert = another(s).await;
    let prod_before = s.engine.stats().await.unwrap().versions;
    let err = env::promote(&test.engine, &s.engine, &[id.clone()]).await.unwrap_err().to_string();
    assert!(err.contains("one step at a time"), "test promotes to cert, not production: {err}");
    cert.engine.set_setting("content.environment", "cert").await.unwrap();
    let err = env::promote(&test.engine, &cert.engine, &[id.clone()]).await.unwrap_err().to_string();
    assert!(err.contains("only approved changes are promoted"), "{err}");
    assert!(env::promote(&test.engine, &cert.engine, &[]).await.unwrap().is_empty(), "nothing approved, nothing promoted");
    // … approved, it moves to cert as a change request to be signed off there.
    for who in [("gov.north", "domain-admin", "rx1", None), ("cso.lewis", "domain-admin", "rx1", None)] {
        let t = test.token(who);
        let d = json!({"resourceType": "Parameters", "parameter": [{"name": "decision", "valueCode": "approve"}]});
        assert_eq!(test.request_as(&t, "POST", &format!("Task/{id}/$approve"), Some(&serde_json::to_vec(&d).unwrap())).await.status, 200);
    }
    let moved = env::promote(&test.engine, &cert.engine, &[id.clone()]).await.unwrap();
    assert_eq!(moved.len(), 1);
    let promoted = cert.get(&format!("Task/{}", moved[0].1)).await.json();
    assert_eq!(promoted["status"], "requested", "it goes through cert's own sign-off");
    assert!(env::promote(&test.engine, &cert.engine, &[]).await.unwrap().is_empty(), "a request is promoted once");
    assert_eq!(s.engine.stats().await.unwrap().versions, prod_before, "production untouched");

    // Train is refreshed from production: the test change is not production's.
    let train = another(s).await;
    env::create(&s.engine, &train.engine, EnvKind::Train).await.unwrap();
    let carter_train = train.token(("domain.carter", "domain-admin", "rx1", None));
    assert_eq!(train.request_as(&carter_train, "PUT", "ActivityDefinition/rx1-general-lab-crp", Some(&serde_json::to_vec(&item).unwrap())).await.status, 201);
    let (written, deleted) = env::refresh(&s.engine, &train.engine).await.unwrap();
    assert!(written >= 25);
    assert_eq!(deleted, 1);
    assert!(env::drift(&s.engine, &train.engine).await.unwrap().iter().all(|l| l.starts_with("configuration")));
}
