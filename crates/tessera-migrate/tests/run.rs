//! A migration through a real engine (SQLite): the dry run changes nothing and reports
//! every record; the real run registers through the patient index; a repeat adds nothing.

use std::path::Path;
use std::sync::Arc;
use tessera_engine::{Access, Engine, EngineConfig};
use tessera_migrate::run::run;
use tessera_migrate::{read_path, Options};

async fn demo_engine(dir: &Path) -> Engine {
    let store = tessera_store::sqlite::SqliteStore::open(dir).expect("open store");
    let engine = Engine::new(Arc::new(store), EngineConfig::default());
    engine.load_domain().await.unwrap();
    let mut domain = (*engine.domain()).clone();
    domain.apply_file(tessera_domain::demo::DOMAIN_FILE).unwrap();
    engine.apply_domain(&Access::bootstrap(), domain).await.unwrap();
    engine
}

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_then_real_run_then_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo_engine(dir.path()).await;
    let options = Options::new(engine.domain().mrn_system("rx2"));
    let access = Access::system("rx2");
    // A patient the domain knows already, by NHS number (the CSV's first row).
    let known = serde_json::json!({"resourceType": "Patient", "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}],
        "name": [{"family": "Smith", "given": ["Jane"]}], "birthDate": "1980-05-17"});
    let known = engine.create(&Access::system("rx1"), "Patient", known, None).await.unwrap().resource.id().to_string();
    let before = engine.stats().await.unwrap();

    let records = read_path(&fixtures(), &options).unwrap();
    let n = records.len();
    let dry = run(&engine, &access, records.clone(), true, &|| {}).await;
    assert_eq!(engine.stats().await.unwrap(), before, "a dry run changes nothing");
    assert_eq!(dry.records.len(), n);
    assert_eq!(dry.link + dry.create + dry.review + dry.invalid, n);
    let first = dry.records.iter().find(|r| r.source == "pas.csv:2").unwrap();
    assert_eq!((first.decision, first.patient.as_deref()), ("link", Some(known.as_str())), "{first:?}");
    let bad_date = dry.records.iter().find(|r| r.source == "pas.csv:5").unwrap();
    assert_eq!(bad_date.decision, "invalid");
    assert!(bad_date.detail.contains("31/02/1980"), "the reason names the value: {bad_date:?}");
    assert!(dry.invalid >= 3, "{dry}");
    let json = serde_json::to_value(&dry).unwrap();
    assert_eq!(json["dry_run"], true);
    assert!(dry.to_string().contains("would link"), "{dry}");

    let real = run(&engine, &access, records.clone(), false, &|| {}).await;
    assert_eq!(real.invalid, dry.invalid, "{real}");
    let linked = real.records.iter().find(|r| r.source == "pas.csv:2").unwrap();
    assert_eq!(linked.patient.as_deref(), Some(known.as_str()));
    // The organisation's MRN is attached to the record it joined.
    let stored = engine.read(&Access::bootstrap(), "Patient", &known).await.unwrap();
    let stored: serde_json::Value = serde_json::from_slice(stored.json()).unwrap();
    assert!(stored["identifier"].as_array().unwrap().iter().any(|i| i["system"] == options.mrn_system.as_str() && i["value"] == "RXX100001"), "{stored}");
    let after = engine.stats().await.unwrap();
    assert!(after.current_resources > before.current_resources);

    // Repeating the run registers nothing new.
    let again = run(&engine, &access, records, false, &|| {}).await;
    assert_eq!(again.create + again.review, 0, "{again}");
    assert_eq!(again.link, real.link + real.create + real.review, "{again}");
    assert_eq!(engine.stats().await.unwrap().current_resources, after.current_resources, "{again}");
}

/// The same person twice in one legacy extract: the dry run says so (nothing is written
/// for it to match), and the real run makes one record of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_within_an_extract() {
    let dir = tempfile::tempdir().unwrap();
    let engine = demo_engine(dir.path()).await;
    let options = Options::new(engine.domain().mrn_system("rx3"));
    let csv = dir.path().join("pas.csv");
    std::fs::write(
        &csv,
        "MRN,NHS Number,Forename,Surname,Sex,Date of Birth,Postcode\n\
         R1,401 023 2137,Gwendolyn,Ashdown,F,1952-06-30,RV1 2AB\n\
         R2,4010232137,Gwen,Ashdown,F,30/06/1952,RV1 2AB\n\
         R3,,Imelda,Ashdown,F,1952-06-30,RV1 2AB\n",
    )
    .unwrap();
    let records = read_path(&csv, &options).unwrap();
    let access = Access::system("rx3");
    let dry = run(&engine, &access, records.clone(), true, &|| {}).await;
    let decisions: Vec<&str> = dry.records.iter().map(|r| r.decision).collect();
    assert_eq!(decisions, ["create", "link", "review"], "{dry}");
    assert!(dry.records[1].detail.contains("pas.csv:2"), "names the earlier row: {dry}");
    let real = run(&engine, &access, records, false, &|| {}).await;
    assert_eq!((real.create, real.link, real.review), (1, 1, 1), "{real}");
    assert_eq!(real.records[0].patient, real.records[1].patient, "one record for the same person: {real}");
}
