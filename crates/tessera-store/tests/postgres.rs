//! PostgreSQL-specific tests (the shared behaviour is in `conformance.rs`). They run when
//! `TESSERA_TEST_DATABASE_URL` is set; each works in a schema of its own.

use std::sync::Arc;
use tessera_store::postgres::PostgresStore;
use tessera_store::*;

fn database_url() -> Option<String> {
    match std::env::var("TESSERA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TESSERA_TEST_DATABASE_URL is not set: PostgreSQL test not run");
            None
        }
    }
}

/// The URL of a store working in `schema` (as a second server on the same database would).
fn url_with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

fn observation(id: &str, patient: &str, identifier: &str) -> Write {
    let body = serde_json::json!({
        "resourceType": "Observation",
        "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T10:00:00.000Z"},
        "identifier": [{"system": "urn:lab:accession", "value": identifier}],
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel with all children optional"}], "text": "Blood pressure"},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": "2024-05-01T09:55:00Z",
        "performer": [{"reference": "Practitioner/3f1c2a8e-5b7d-4e21-9c61-0a2b3c4d5e6f"}],
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic blood pressure"}]},
             "valueQuantity": {"value": 120 + (id.len() % 17), "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4", "display": "Diastolic blood pressure"}]},
             "valueQuantity": {"value": 80, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]
    });
    Write {
        resource_type: "Observation".into(),
        id: id.into(),
        version: 1,
        last_updated_micros: now_micros(),
        deleted: false,
        compartment: Some(patient.into()),
        owner: Some("Organization/9a8b7c6d-0000-4000-8000-000000000001".into()),
        json: serde_json::to_vec(&body).unwrap(),
        identifiers: vec![("urn:lab:accession".into(), identifier.into())],
        precondition: Precondition::None,
        links: Vec::new(),
        index: Vec::new(),
    }
}

fn uuid_like(n: u64) -> String {
    let x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    format!("{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}", x >> 32, (x >> 16) & 0xffff, x & 0xfff, n & 0xfff, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_share_one_schema() {
    let Some(url) = database_url() else { return };
    let first = PostgresStore::connect_isolated(&url).await.unwrap();
    let shared = url_with_schema(&url, first.schema().unwrap());
    // Several servers starting at once against the same schema: all succeed.
    let starts: Vec<_> = (0..4).map(|_| PostgresStore::connect(&shared)).collect();
    let stores: Vec<PostgresStore> = futures::future::try_join_all(starts).await.unwrap();
    let stores: Vec<DynStore> = stores.into_iter().map(|s| Arc::new(s) as DynStore).collect();

    // Conditional creates racing across servers: exactly one wins.
    let criteria = Criteria {
        resource_type: "Observation".into(),
        identifiers: vec![TokenMatch { system: Some("urn:lab:accession".into()), value: "A-1".into() }],
        ..Default::default()
    };
    let mut tasks = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        for k in 0..8 {
            let (store, criteria) = (store.clone(), criteria.clone());
            tasks.push(tokio::spawn(async move {
                let mut w = observation(&format!("s{n}-{k}"), "p1", "A-1");
                w.precondition = Precondition::NoneMatching(criteria);
                store.commit(vec![w]).await
            }));
        }
    }
    let mut winners = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(()) => winners += 1,
            Err(StoreError::Conflict { reason: ConflictReason::Matches(_), .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!(winners, 1);
    let found = stores[0].find(&criteria).await.unwrap();
    assert_eq!(found.len(), 1);
    // Every server sees the winner.
    for store in &stores {
        assert!(store.read("Observation", &found[0]).await.unwrap().is_some());
    }
    drop(stores);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_error_fails_only_its_transaction() {
    let Some(url) = database_url() else { return };
    let store: DynStore = Arc::new(PostgresStore::connect_isolated(&url).await.unwrap());
    // PostgreSQL text cannot hold NUL: that write (a NUL in its id, which the engine never
    // sends) fails in the database, not in a precondition. The transactions committed
    // alongside it must not suffer.
    let mut tasks = Vec::new();
    for t in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let id = if t == 5 { "bad\u{0}id".to_string() } else { format!("e{t}") };
            store.commit(vec![observation(&id, "p1", &format!("ok-{t}"))]).await
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if t == 5 {
            assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        } else {
            result.unwrap();
        }
    }
    assert!(store.read("Observation", "e5").await.unwrap().is_none());
    assert_eq!(store.stats().await.unwrap().current_resources, 11);
    // The writer carries on.
    store.commit(vec![observation("after", "p1", "after")]).await.unwrap();
    assert!(store.read("Observation", "after").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_url_is_an_error() {
    let Err(e) = PostgresStore::connect("postgres://nobody@127.0.0.1:1/none?connect_timeout=2").await else {
        panic!("connected to nothing")
    };
    assert!(matches!(e, StoreError::Backend(_)), "{e}");
    assert!(PostgresStore::connect("this is not a url").await.is_err());
}

/// Ingests realistic resources and checks the bytes each takes, indexes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_per_resource() {
    let Some(url) = database_url() else { return };
    let store = PostgresStore::connect_isolated(&url).await.unwrap();
    let before = store.stats().await.unwrap().bytes;
    let n = 5_000u64;
    for chunk in 0..(n / 500) {
        let writes = (0..500)
            .map(|i| {
                let k = chunk * 500 + i;
                observation(&uuid_like(k), &uuid_like(1_000_000 + k % 200), &format!("ACC-{k:08}"))
            })
            .collect();
        store.commit(writes).await.unwrap();
    }
    let stats = store.stats().await.unwrap();
    assert_eq!(stats.current_resources, n);
    let per_resource = (stats.bytes - before) / n;
    eprintln!("PostgreSQL: {per_resource} bytes per resource (indexes included)");
    assert!(per_resource <= 3 * 1024, "{per_resource} bytes per resource");
}

/// Ingest throughput with many concurrent small transactions (run with `--ignored`,
/// preferably `--release`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn ingest_throughput() {
    let Some(url) = database_url() else { return };
    let store: DynStore = Arc::new(PostgresStore::connect_isolated(&url).await.unwrap());
    let (clients, per_client, per_tx) = (64u64, 40u64, 10u64);
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for t in 0..per_client {
                let writes = (0..per_tx)
                    .map(|i| {
                        let k = (c * per_client + t) * per_tx + i;
                        observation(&uuid_like(k), &uuid_like(1_000_000 + k % 1000), &format!("ACC-{k:08}"))
                    })
                    .collect();
                store.commit(writes).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = clients * per_client * per_tx;
    let secs = start.elapsed().as_secs_f64();
    let m = store.metrics();
    eprintln!(
        "PostgreSQL: {n} resources in {secs:.2}s = {:.0}/s, {} group commits",
        n as f64 / secs,
        m.commit_batches.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(store.stats().await.unwrap().current_resources, n);
}

fn audit_record(user: &str, patient: &str) -> NewAudit {
    NewAudit {
        recorded_micros: now_micros(),
        user: Some(user.into()),
        patients: vec![patient.into()],
        action: "read".into(),
        break_glass: false,
        event: serde_json::to_vec(&serde_json::json!({"resourceType": "AuditEvent", "user": user})).unwrap(),
    }
}

/// Checks that the records form one chain: seq 1, 2, … each linked to the one before.
async fn assert_one_chain(store: &PostgresStore, expected: usize) {
    let mut prev = AUDIT_GENESIS_HASH.to_vec();
    let mut after = 0;
    let mut n = 0;
    loop {
        let page = store.audit_scan(after, 100).await.unwrap();
        if page.is_empty() {
            break;
        }
        for r in page {
            n += 1;
            assert_eq!(r.seq, n as i64);
            assert_eq!(r.prev_hash, prev);
            assert_eq!(r.hash, audit_hash(&r.prev_hash, r.seq, r.recorded_micros, &r.event).to_vec());
            prev = r.hash.clone();
            after = r.seq;
        }
    }
    assert_eq!(n, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_a_database_extend_one_audit_chain() {
    let Some(url) = database_url() else { return };
    let first = PostgresStore::connect_isolated(&url).await.unwrap();
    first.append_audit(vec![audit_record("Practitioner/first", "p0")]).await.unwrap();
    let shared = url_with_schema(&url, first.schema().unwrap());
    let stores: Vec<DynStore> = futures::future::try_join_all((0..3).map(|_| PostgresStore::connect(&shared)))
        .await
        .unwrap()
        .into_iter()
        .map(|s| Arc::new(s) as DynStore)
        .collect();
    let mut tasks = Vec::new();
    for (n, store) in stores.iter().enumerate() {
        for k in 0..10 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                if k % 3 == 0 {
                    let w = observation(&format!("s{n}-{k}"), "p1", &format!("A-{n}-{k}"));
                    store.commit_audited(vec![w], vec![audit_record(&format!("Practitioner/{n}"), "p1")]).await
                } else {
                    store.append_audit(vec![audit_record(&format!("Practitioner/{n}"), "p1"); 2]).await
                }
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    // 1 + 3 servers × (4 audited commits + 6 × 2 appended reads).
    assert_one_chain(&first, 1 + 3 * (4 + 12)).await;
    drop(stores);
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_error_in_an_audit_record_fails_only_its_job() {
    let Some(url) = database_url() else { return };
    let store: DynStore = Arc::new(PostgresStore::connect_isolated(&url).await.unwrap());
    // PostgreSQL text cannot hold NUL: that job fails in the database; the others commit
    // and the chain has no gap.
    let mut tasks = Vec::new();
    for t in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let user = if t == 5 { "bad\u{0}user".to_string() } else { format!("Practitioner/{t}") };
            let audit = vec![audit_record(&user, "p1"), audit_record("Practitioner/x", "p1")];
            if t % 2 == 0 {
                store.append_audit(audit).await
            } else {
                store.commit_audited(vec![observation(&format!("e{t}"), "p1", &format!("ok-{t}"))], audit).await
            }
        }));
    }
    for (t, task) in tasks.into_iter().enumerate() {
        let result = task.await.unwrap();
        if t == 5 {
            assert!(matches!(result, Err(StoreError::Backend(_))), "{result:?}");
        } else {
            result.unwrap();
        }
    }
    assert!(store.read("Observation", "e5").await.unwrap().is_none(), "the write of the failed job is not stored");
    let mut records = Vec::new();
    let mut after = 0;
    loop {
        let page = store.audit_scan(after, 5).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        records.extend(page);
    }
    assert_eq!(records.len(), 11 * 2);
    let mut prev = AUDIT_GENESIS_HASH.to_vec();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1);
        assert_eq!(r.prev_hash, prev);
        assert_eq!(r.hash, audit_hash(&prev, r.seq, r.recorded_micros, &r.event).to_vec());
        prev = r.hash.clone();
    }
    store.append_audit(vec![audit_record("Practitioner/after", "p1")]).await.unwrap();
    assert_eq!(store.audit_scan(22, 10).await.unwrap().len(), 1);
}
