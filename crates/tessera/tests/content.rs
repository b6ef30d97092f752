//! Layered content on both backends: the model content and the demo's localisations, the
//! effective item per organisation and location with every element's layer, and the rules of
//! localisation — within what the layers above allow (accepted), beyond it (refused, naming
//! the element), another trust's layer (refused), the model layer (server only), on every
//! write path (a transaction is refused whole).

mod common;
use common::{Server, Who};
use serde_json::{json, Value};

on_both_backends!(effective_content_overlays_the_layers, localisation_stays_within_what_is_allowed, packages_are_signed_verified_and_loaded_whole);

const PATEL: Who = ("dr.patel", "doctor", "rx1-general", Some("ward-7a"));
const MURPHY: Who = ("dr.murphy", "doctor", "rx2-southbank-hc", Some("rx2-diabetes-clinic"));
const CARTER: Who = ("domain.carter", "domain-admin", "rx1", None);

/// Element → layer marks of an effective item.
fn marks(item: &Value) -> std::collections::BTreeMap<String, String> {
    item["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["url"] == "https://tessera.health/StructureDefinition/effective-element")
        .map(|e| (e["extension"][0]["valueString"].as_str().unwrap().to_string(), e["extension"][1]["valueCode"].as_str().unwrap().to_string()))
        .collect()
}

async fn effective_content_overlays_the_layers(s: &Server) {
    s.load_demo().await;
    let patel = s.token(PATEL);
    // Northgate General, Ward 7A: the trust's wording of the FBC, the site's X-ray arrangements.
    let fbc = s.request_as(&patel, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await;
    assert_eq!(fbc.status, 200, "{}", String::from_utf8_lossy(&fbc.body));
    let fbc = fbc.json();
    assert_eq!(fbc["title"], "Full blood count (FBC) – Northgate pathology");
    let m = marks(&fbc);
    assert_eq!(m["title"], "organisation");
    assert_eq!(m["usage"], "organisation");
    assert_eq!(m["code"], "model", "the code is the model's");
    assert_eq!(m["status"], "model", "a value restated unchanged keeps its layer");
    let cxr = s.request_as(&patel, "GET", "ActivityDefinition/model-rad-chest/$effective", None).await.json();
    assert!(cxr["usage"].as_str().unwrap().starts_with("Northgate General"));
    assert_eq!(marks(&cxr)["usage"], "site");
    // The same item at St Anne's (another Northgate site): the trust's layer, not Northgate General's.
    let cxr_annes = s.request_as(&patel, "GET", "ActivityDefinition/model-rad-chest/$effective?organization=rx1-st-annes", None).await.json();
    assert_eq!(marks(&cxr_annes)["usage"], "model");
    // Southbank sees the model FBC, and its own sepsis order set usage.
    let murphy = s.token(MURPHY);
    let fbc2 = s.request_as(&murphy, "GET", "ActivityDefinition/rx1-lab-fbc/$effective", None).await.json();
    assert_eq!(fbc2["title"], "Full blood count (FBC)", "any item of the content gives the effective item for the caller's context");
    let sepsis = s.request_as(&murphy, "GET", "PlanDefinition/model-orderset-sepsis/$effective", None).await.json();
    assert_eq!(marks(&sepsis)["usage"], "organisation");
    assert_eq!(marks(&sepsis)["action"], "model");
    // Through search: every layered item of the type, effective for the context asked.
    let all = s.request_as(&patel, "GET", "ActivityDefinition/$effective?organization=rx1-general", None).await.json();
    let titles: Vec<&str> = all["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["title"].as_str()).collect();
    assert!(titles.contains(&"Full blood count (FBC) – Northgate pathology"), "{titles:?}");
    assert_eq!(all["total"].as_u64().unwrap() as usize, titles.len());
    assert!(titles.len() >= 15);
    let one = s.request_as(&patel, "GET", "ActivityDefinition/$effective?url=https://tessera.health/content/ActivityDefinition/lab-fbc&organization=rx2", None).await.json();
    assert_eq!(one["entry"].as_array().unwrap().len(), 1);
    assert_eq!(one["entry"][0]["resource"]["title"], "Full blood count (FBC)");
    // Bad context, and a type that is not content.
    assert_eq!(s.request_as(&patel, "GET", "ActivityDefinition/model-lab-fbc/$effective?organization=nowhere", None).await.status, 400);
    assert_eq!(s.request_as(&patel, "GET", "Patient/jane-smith/$effective", None).await.status, 404);
}

fn site_override(id: &str, fields: Value) -> Value {
    let mut v = json!({
        "resourceType": "ActivityDefinition", "id": id, "status": "active",
        "url": "https://tessera.health/content/ActivityDefinition/lab-crp",
        "meta": {"tag": [
            {"system": "https://tessera.health/CodeSystem/content-layer", "code": "site"},
            {"system": "https://tessera.health/CodeSystem/content-scope", "code": "rx1-general"}
        ]}
    });
    for (k, f) in fields.as_object().unwrap() {
        v[k] = f.clone();
    }
    v
}

async fn localisation_stays_within_what_is_allowed(s: &Server) {
    s.load_demo().await;
    let carter = s.token(CARTER);
    // Within what the domain allows: the title and the usage.
    let ok = site_override("rx1-general-lab-crp", json!({"title": "CRP (Northgate General, lithium heparin accepted)", "usage": "Green or gold top."}));
    let r = s.request_as(&carter, "PUT", "ActivityDefinition/rx1-general-lab-crp", Some(&serde_json::to_vec(&ok).unwrap())).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let patel = s.token(PATEL);
    let eff = s.request_as(&patel, "GET", "ActivityDefinition/model-lab-crp/$effective", None).await.json();
    assert_eq!(eff["title"], "CRP (Northgate General, lithium heparin accepted)");
    assert_eq!(marks(&eff)["title"], "site");
    // Beyond it: the code of an orderable is the domain's, not a site's.
    let beyond = site_override("rx1-general-lab-crp", json!({"code": {"coding": [{"system": "http://loinc.org", "code": "30522-7"}]}}));
    let r = s.request_as(&carter, "PUT", "ActivityDefinition/rx1-general-lab-crp", Some(&serde_json::to_vec(&beyond).unwrap())).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    let outcome = r.json();
    assert_eq!(outcome["issue"][0]["expression"][0], "ActivityDefinition.code");
    assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains("may not change"));
    let kept = s.request_as(&patel, "GET", "ActivityDefinition/model-lab-crp/$effective", None).await.json();
    assert_eq!(kept["title"], "CRP (Northgate General, lithium heparin accepted)", "the refused write changed nothing");
    // The same through a transaction: refused whole.
    let before = s.engine.stats().await.unwrap().versions;
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": site_override("rx1-general-lab-crp-2", json!({"title": "fine"})), "request": {"method": "PUT", "url": "ActivityDefinition/rx1-general-lab-crp-2"}},
        {"resource": site_override("rx1-general-lab-crp-3", json!({"kind": "Task"})), "request": {"method": "PUT", "url": "ActivityDefinition/rx1-general-lab-crp-3"}}
    ]});
    let r = s.request_as(&carter, "POST", "", Some(&serde_json::to_vec(&tx).unwrap())).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(s.engine.stats().await.unwrap().versions, before, "nothing of the refused transaction is stored");
    // An upper item can narrow the list: the NEWS2 escalation rule lets lower layers change its description only.
    let rule = json!({
        "resourceType": "Library", "id": "rx1-news2-escalation", "status": "active",
        "url": "https://tessera.health/content/Library/news2-escalation",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]},
        "usage": "Escalate at 4 instead",
        "meta": {"tag": [{"system": "https://tessera.health/CodeSystem/content-layer", "code": "organisation"}, {"system": "https://tessera.health/CodeSystem/content-scope", "code": "rx1"}]}
    });
    let r = s.request_as(&carter, "PUT", "Library/rx1-news2-escalation", Some(&serde_json::to_vec(&rule).unwrap())).await;
    assert_eq!(r.status, 422, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["issue"][0]["expression"][0], "Library.usage");
    // Another trust's layer: refused.
    let mut theirs = site_override("rx2-lab-crp", json!({"title": "Southbank CRP"}));
    theirs["meta"]["tag"] = json!([{"system": "https://tessera.health/CodeSystem/content-layer", "code": "organisation"}, {"system": "https://tessera.health/CodeSystem/content-scope", "code": "rx2"}]);
    assert_eq!(s.request_as(&carter, "PUT", "ActivityDefinition/rx2-lab-crp", Some(&serde_json::to_vec(&theirs).unwrap())).await.status, 403);
    // A site tag on a trust, a trust tag on a site: refused.
    let mut wrong = site_override("rx1-lab-crp-wrong", json!({}));
    wrong["meta"]["tag"][1]["code"] = json!("rx1");
    assert_eq!(s.request_as(&carter, "PUT", "ActivityDefinition/rx1-lab-crp-wrong", Some(&serde_json::to_vec(&wrong).unwrap())).await.status, 400);
    // The model layer: the server only.
    let mut model = site_override("fake-model", json!({"title": "x"}));
    model["url"] = json!("https://tessera.health/content/ActivityDefinition/new-thing");
    model["meta"]["tag"] = json!([{"system": "https://tessera.health/CodeSystem/content-layer", "code": "model"}]);
    assert_eq!(s.request_as(&carter, "PUT", "ActivityDefinition/fake-model", Some(&serde_json::to_vec(&model).unwrap())).await.status, 403);
    // A clinician writes no content at all.
    let ok2 = site_override("rx1-general-lab-crp-9", json!({"title": "x"}));
    assert_eq!(s.request_as(&patel, "PUT", "ActivityDefinition/rx1-general-lab-crp-9", Some(&serde_json::to_vec(&ok2).unwrap())).await.status, 403);
}

/// Content packages: a layer exported, signed; loaded into another domain's database only if
/// signed by a trusted key and unaltered; one altered byte refused; a package that changes
/// what may not be localised refused whole; the impact of a change named — organisations,
/// users, and the active orders that refer to it.
async fn packages_are_signed_verified_and_loaded_whole(s: &Server) {
    use tessera_content::{diff, ops};
    use tessera_engine::content::Layer;
    s.load_demo().await;
    let engine = &s.engine;
    let (manifest, bytes) = ops::export(engine, Layer::Organisation, Some("rx1"), Some("2026.12")).await.unwrap();
    assert_eq!(manifest.items, 1, "Northgate's own layer: its FBC wording");
    assert_eq!(manifest.version, "2026.12");
    let (model, model_bytes) = ops::export(engine, Layer::Model, None, None).await.unwrap();
    assert!(model.items >= 20);
    assert!(ops::export(engine, Layer::Site, None, None).await.is_err(), "a site package names its site");
    // Re-importing the same package: verified, nothing changes.
    let report = ops::import(engine, &bytes, &[]).await.unwrap();
    assert_eq!(report.items, 1);
    assert!(report.changes.is_empty(), "{:?}", report.changes);
    // One byte altered anywhere: refused, nothing loaded.
    let versions = engine.stats().await.unwrap().versions;
    let at = bytes.windows(9).position(|w| w == b"Northgate").expect("the title is in the package") + 1;
    let mut altered = bytes.clone();
    altered[at] = b'X';
    let err = ops::import(engine, &altered, &[]).await.unwrap_err().to_string();
    assert!(err.contains("altered"), "{err}");
    assert_eq!(engine.stats().await.unwrap().versions, versions);
    // A package signed by a key the domain does not trust: refused (unless trusted by name).
    let foreign = tessera_content::package::ContentKey::generate();
    let content = tessera_content::package::Package::parse(&bytes).unwrap().content_unverified().unwrap();
    let mut changed = content.clone();
    changed["entry"][0]["resource"]["title"] = serde_json::json!("FBC – Northgate (revised)");
    let foreign_bytes = tessera_content::package::write(&foreign, manifest.clone(), &changed);
    assert!(ops::import(engine, &foreign_bytes, &[]).await.unwrap_err().to_string().contains("not a trusted content key"));
    // The difference, element by element, and its impact before loading it.
    let changes = diff::diff(&content, &changed);
    assert_eq!(changes.len(), 1);
    assert!(changes[0].to_string().contains("title"), "{}", changes[0]);
    // An active order for an FBC refers to the content being changed.
    let sys = s.auth.issue_system_token("system", "rx1-general", "system/*.*", tessera_auth::now(), 60);
    let order = serde_json::json!({"resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "instantiatesCanonical": ["https://tessera.health/content/ActivityDefinition/lab-fbc"],
        "code": {"text": "FBC"}, "subject": {"reference": "Patient/jane-smith"}});
    assert_eq!(s.request_as(&sys, "POST", "ServiceRequest", Some(&serde_json::to_vec(&order).unwrap())).await.status, 201);
    let impact = ops::impact(engine, &changes).await.unwrap();
    assert!(impact.organisations.contains("rx1") && impact.organisations.contains("rx1-general") && !impact.organisations.contains("rx2"), "{impact}");
    assert!(impact.users.contains("dr.patel") && !impact.users.contains("dr.murphy"), "{impact}");
    assert_eq!(impact.references.iter().map(|(_, n)| n).sum::<u64>(), 1, "{impact}");
    let report = ops::import(engine, &foreign_bytes, &[foreign.public_hex()]).await.unwrap();
    assert_eq!(report.changes.len(), 1);
    let patel = s.token(PATEL);
    let eff = s.request_as(&patel, "GET", "ActivityDefinition/model-lab-fbc/$effective", None).await.json();
    assert_eq!(eff["title"], "FBC – Northgate (revised)");
    // A package that changes what its layer may not localise: refused whole by the engine.
    let mut beyond = changed.clone();
    beyond["entry"][0]["resource"]["code"] = serde_json::json!({"text": "something else"});
    let beyond_bytes = tessera_content::package::write(&foreign, manifest, &beyond);
    let err = ops::import(engine, &beyond_bytes, &[foreign.public_hex()]).await.unwrap_err().to_string();
    assert!(err.contains("may not change"), "{err}");
    // The model package loads into a fresh domain's database (another server).
    let _ = model_bytes;
}
