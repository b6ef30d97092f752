//! The storage conformance suite: every backend must pass every test here.
//!
//! SQLite runs always (a real database file in a temporary directory). PostgreSQL runs when
//! `TESSERA_TEST_DATABASE_URL` is set; each test then works in a schema of its own.

use std::sync::Arc;
use tessera_store::*;

mod backends {
    use super::*;

    pub struct Backend {
        pub store: DynStore,
        _dir: Option<tempfile::TempDir>,
    }

    pub async fn sqlite() -> Option<Backend> {
        let dir = tempfile::tempdir().unwrap();
        let store = tessera_store::sqlite::SqliteStore::open(dir.path()).unwrap();
        Some(Backend { store: Arc::new(store), _dir: Some(dir) })
    }

    pub async fn postgres() -> Option<Backend> {
        let url = match std::env::var("TESSERA_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => url,
            _ => {
                eprintln!("TESSERA_TEST_DATABASE_URL is not set: PostgreSQL conformance test not run");
                return None;
            }
        };
        let store = tessera_store::postgres::PostgresStore::connect_isolated(&url).await.expect("connect to PostgreSQL");
        Some(Backend { store: Arc::new(store), _dir: None })
    }
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = super::backends::sqlite().await { super::$name(&b.store).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = super::backends::postgres().await { super::$name(&b.store).await; }
            }
        )* }
    };
}

conformance!(
    create_read_vread,
    update_keeps_history,
    delete_is_a_version,
    preconditions_are_atomic,
    conditional_create_precondition,
    find_by_identifier,
    history_levels_and_paging,
    history_since,
    group_commit_many_concurrent,
    meta_and_stats,
    concurrent_conflicting_writes,
    same_resource_twice_in_one_transaction,
    conditional_create_sees_earlier_writes,
    identifiers_follow_updates_and_deletes,
    vread_deleted_and_large_unicode_round_trip,
    audit_records_are_chained,
    audit_commits_with_its_transaction,
    audit_concurrent_appends_form_one_chain,
    audit_query_filters_and_pages,
    care_links_follow_writes,
    care_links_commit_with_their_transaction,
    worklist_of_a_location,
    audit_by_patient_is_complete,
    counts_follow_writes,
    code_counts_follow_writes,
    outbox_commits_with_its_transaction,
);

fn write(ty: &str, id: &str, version: u64, body: serde_json::Value) -> Write {
    let json = serde_json::to_vec(&body).unwrap();
    Write {
        resource_type: ty.into(),
        id: id.into(),
        version,
        last_updated_micros: now_micros(),
        deleted: false,
        compartment: body.get("subject").and_then(|s| s["reference"].as_str()).map(|r| r.trim_start_matches("Patient/").to_string()),
        owner: Some("Organization/o1".into()),
        identifiers: body["identifier"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .map(|i| (i["system"].as_str().unwrap_or("").to_string(), i["value"].as_str().unwrap_or("").to_string()))
                    .collect()
            })
            .unwrap_or_default(),
        json,
        precondition: Precondition::None,
        links: Vec::new(),
        index: Vec::new(),
    }
}

fn deletion(ty: &str, id: &str, version: u64) -> Write {
    Write {
        resource_type: ty.into(),
        id: id.into(),
        version,
        last_updated_micros: now_micros(),
        deleted: true,
        compartment: None,
        owner: None,
        json: Vec::new(),
        identifiers: Vec::new(),
        precondition: Precondition::None,
        links: Vec::new(),
        index: Vec::new(),
    }
}

async fn create_read_vread(s: &DynStore) {
    let body = serde_json::json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"}});
    s.commit(vec![write("Observation", "o1", 1, body.clone())]).await.unwrap();
    let got = s.read("Observation", "o1").await.unwrap().expect("stored");
    assert_eq!(got.version, 1);
    assert!(!got.deleted);
    assert_eq!(got.compartment.as_deref(), Some("p1"));
    assert_eq!(got.owner.as_deref(), Some("Organization/o1"));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&got.json).unwrap(), body);
    assert_eq!(s.vread("Observation", "o1", 1).await.unwrap().unwrap().json, got.json);
    assert!(s.vread("Observation", "o1", 2).await.unwrap().is_none());
    assert!(s.read("Observation", "nope").await.unwrap().is_none());
    assert!(s.read("Patient", "o1").await.unwrap().is_none());
}

async fn update_keeps_history(s: &DynStore) {
    s.commit(vec![write("Patient", "p", 1, serde_json::json!({"resourceType": "Patient", "active": true}))]).await.unwrap();
    s.commit(vec![write("Patient", "p", 2, serde_json::json!({"resourceType": "Patient", "active": false}))]).await.unwrap();
    let cur = s.read("Patient", "p").await.unwrap().unwrap();
    assert_eq!(cur.version, 2);
    let v1 = s.vread("Patient", "p", 1).await.unwrap().unwrap();
    assert!(String::from_utf8(v1.json).unwrap().contains("true"));
    // A version that does not increase is refused.
    let err = s.commit(vec![write("Patient", "p", 2, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap_err();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err}");
}

async fn delete_is_a_version(s: &DynStore) {
    s.commit(vec![write("Patient", "d", 1, serde_json::json!({"resourceType": "Patient", "identifier": [{"system": "s", "value": "v"}]}))])
        .await
        .unwrap();
    s.commit(vec![deletion("Patient", "d", 2)]).await.unwrap();
    let cur = s.read("Patient", "d").await.unwrap().unwrap();
    assert!(cur.deleted);
    assert_eq!(cur.version, 2);
    assert!(cur.json.is_empty());
    assert!(s.vread("Patient", "d", 1).await.unwrap().is_some());
    let found = s
        .find(&Criteria { resource_type: "Patient".into(), identifiers: vec![TokenMatch { system: None, value: "v".into() }], ..Default::default() })
        .await
        .unwrap();
    assert!(found.is_empty(), "deleted resources are not found");
}

async fn preconditions_are_atomic(s: &DynStore) {
    s.commit(vec![write("Patient", "a", 1, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap();
    // Second write's precondition fails: the first must not be stored either.
    let mut w2 = write("Patient", "a", 2, serde_json::json!({"resourceType": "Patient"}));
    w2.precondition = Precondition::Version(7);
    let err = s.commit(vec![write("Patient", "b", 1, serde_json::json!({"resourceType": "Patient"})), w2]).await.unwrap_err();
    match err {
        StoreError::Conflict { index, reason, .. } => {
            assert_eq!(index, 1);
            assert_eq!(reason, ConflictReason::VersionMismatch { current: Some(1) });
        }
        other => panic!("{other}"),
    }
    assert!(s.read("Patient", "b").await.unwrap().is_none(), "nothing of a failed transaction is stored");
    let mut absent = write("Patient", "a", 2, serde_json::json!({"resourceType": "Patient"}));
    absent.precondition = Precondition::Absent;
    assert!(matches!(s.commit(vec![absent]).await, Err(StoreError::Conflict { reason: ConflictReason::Exists, .. })));
    let mut ok = write("Patient", "a", 2, serde_json::json!({"resourceType": "Patient"}));
    ok.precondition = Precondition::Version(1);
    s.commit(vec![ok]).await.unwrap();
    s.commit(vec![deletion("Patient", "a", 3)]).await.unwrap();
    let mut again = write("Patient", "a", 4, serde_json::json!({"resourceType": "Patient"}));
    again.precondition = Precondition::AbsentOrDeleted;
    s.commit(vec![again]).await.unwrap();
}

async fn conditional_create_precondition(s: &DynStore) {
    let body = serde_json::json!({"resourceType": "Practitioner", "identifier": [{"system": "npi", "value": "42"}]});
    let criteria = Criteria {
        resource_type: "Practitioner".into(),
        identifiers: vec![TokenMatch { system: Some("npi".into()), value: "42".into() }],
        ..Default::default()
    };
    let mut first = write("Practitioner", "x1", 1, body.clone());
    first.precondition = Precondition::NoneMatching(criteria.clone());
    let mut second = write("Practitioner", "x2", 1, body.clone());
    second.precondition = Precondition::NoneMatching(criteria.clone());
    // Concurrent conditional creates: exactly one wins.
    let (a, b) = tokio::join!(s.commit(vec![first]), s.commit(vec![second]));
    assert!(a.is_ok() ^ b.is_ok(), "exactly one conditional create succeeds: {a:?} {b:?}");
    let loser = if a.is_ok() { b } else { a };
    assert!(matches!(loser, Err(StoreError::Conflict { reason: ConflictReason::Matches(_), .. })));
    assert_eq!(s.find(&criteria).await.unwrap().len(), 1);
}

async fn find_by_identifier(s: &DynStore) {
    let a = serde_json::json!({"resourceType": "Organization", "identifier": [{"system": "sys", "value": "1"}, {"value": "nosys"}]});
    let b = serde_json::json!({"resourceType": "Organization", "identifier": [{"system": "other", "value": "1"}]});
    s.commit(vec![write("Organization", "a", 1, a), write("Organization", "b", 1, b)]).await.unwrap();
    let q = |system: Option<&str>, value: &str| Criteria {
        resource_type: "Organization".into(),
        identifiers: vec![TokenMatch { system: system.map(String::from), value: value.into() }],
        ..Default::default()
    };
    let mut any = s.find(&q(None, "1")).await.unwrap();
    any.sort();
    assert_eq!(any, vec!["a", "b"]);
    assert_eq!(s.find(&q(Some("sys"), "1")).await.unwrap(), vec!["a"]);
    assert_eq!(s.find(&q(Some(""), "nosys")).await.unwrap(), vec!["a"]);
    assert!(s.find(&q(Some("sys"), "2")).await.unwrap().is_empty());
    let by_id = Criteria { resource_type: "Organization".into(), id: Some("b".into()), ..Default::default() };
    assert_eq!(s.find(&by_id).await.unwrap(), vec!["b"]);
    // Updating replaces the identifiers.
    s.commit(vec![write("Organization", "a", 2, serde_json::json!({"resourceType": "Organization"}))]).await.unwrap();
    assert!(s.find(&q(Some("sys"), "1")).await.unwrap().is_empty());
}

async fn history_levels_and_paging(s: &DynStore) {
    for v in 1..=5u64 {
        s.commit(vec![write("Patient", "h", v, serde_json::json!({"resourceType": "Patient", "n": v}))]).await.unwrap();
    }
    s.commit(vec![write("Observation", "h", 1, serde_json::json!({"resourceType": "Observation"}))]).await.unwrap();
    let inst = HistoryQuery { resource_type: Some("Patient".into()), id: Some("h".into()), count: 3, ..Default::default() };
    let page1 = s.history(&inst).await.unwrap();
    assert_eq!(page1.iter().map(|v| v.version).collect::<Vec<_>>(), vec![5, 4, 3]);
    let page2 = s.history(&HistoryQuery { before_seq: Some(page1[2].seq), ..inst.clone() }).await.unwrap();
    assert_eq!(page2.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 1]);
    assert_eq!(s.history_count(&inst).await.unwrap(), 5);
    let ty = HistoryQuery { resource_type: Some("Observation".into()), count: 10, ..Default::default() };
    assert_eq!(s.history(&ty).await.unwrap().len(), 1);
    let sys = HistoryQuery { count: 100, ..Default::default() };
    let all = s.history(&sys).await.unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].resource_type, "Observation", "newest first");
    assert!(all.windows(2).all(|w| w[0].seq > w[1].seq));
}

async fn history_since(s: &DynStore) {
    s.commit(vec![write("Patient", "s1", 1, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cut = now_micros();
    s.commit(vec![write("Patient", "s2", 1, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap();
    let q = HistoryQuery { resource_type: Some("Patient".into()), since_micros: Some(cut), count: 10, ..Default::default() };
    let got = s.history(&q).await.unwrap();
    assert_eq!(got.iter().map(|v| v.id.as_str()).collect::<Vec<_>>(), vec!["s2"]);
    assert_eq!(s.history_count(&q).await.unwrap(), 1);
}

async fn group_commit_many_concurrent(s: &DynStore) {
    let mut tasks = Vec::new();
    for t in 0..64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let writes = (0..20)
                .map(|i| write("Observation", &format!("g{t}-{i}"), 1, serde_json::json!({"resourceType": "Observation", "t": t})))
                .collect();
            s.commit(writes).await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.current_resources, 64 * 20);
    let m = s.metrics();
    assert_eq!(m.transactions.load(std::sync::atomic::Ordering::Relaxed), 64);
    assert!(m.commit_batches.load(std::sync::atomic::Ordering::Relaxed) >= 1);
}

async fn meta_and_stats(s: &DynStore) {
    assert_eq!(s.get_meta("k").await.unwrap(), None);
    s.set_meta("k", "v1").await.unwrap();
    s.set_meta("k", "v2").await.unwrap();
    assert_eq!(s.get_meta("k").await.unwrap().as_deref(), Some("v2"));
    s.commit(vec![write("Patient", "m", 1, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap();
    s.commit(vec![deletion("Patient", "m", 2)]).await.unwrap();
    let stats = s.stats().await.unwrap();
    assert_eq!(stats.current_resources, 0);
    assert_eq!(stats.versions, 2);
    assert!(!s.backend().is_empty());
}

async fn concurrent_conflicting_writes(s: &DynStore) {
    // Many transactions that race for the same resource (likely in one group commit):
    // exactly one of each kind wins, the others get a conflict and leave no trace.
    s.commit(vec![write("Patient", "race", 1, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut update = write("Patient", "race", 2, serde_json::json!({"resourceType": "Patient", "t": t}));
            update.precondition = Precondition::Version(1);
            let mut create = write("Patient", "fresh", 1, serde_json::json!({"resourceType": "Patient", "t": t}));
            create.precondition = Precondition::Absent;
            let ok = write("Patient", &format!("ok{t}"), 1, serde_json::json!({"resourceType": "Patient"}));
            let (a, b, c) = tokio::join!(s.commit(vec![update]), s.commit(vec![create]), s.commit(vec![ok]));
            c.unwrap();
            (a, b)
        }));
    }
    let (mut updates, mut creates) = (0, 0);
    for task in tasks {
        let (a, b) = task.await.unwrap();
        match a {
            Ok(()) => updates += 1,
            Err(StoreError::Conflict { index: 0, reason: ConflictReason::VersionMismatch { current: Some(2) }, .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
        match b {
            Ok(()) => creates += 1,
            Err(StoreError::Conflict { index: 0, reason: ConflictReason::Exists, .. }) => {}
            Err(e) => panic!("unexpected: {e}"),
        }
    }
    assert_eq!((updates, creates), (1, 1));
    let race = HistoryQuery { resource_type: Some("Patient".into()), id: Some("race".into()), count: 100, ..Default::default() };
    assert_eq!(s.history_count(&race).await.unwrap(), 2);
    let fresh = HistoryQuery { id: Some("fresh".into()), ..race.clone() };
    assert_eq!(s.history_count(&fresh).await.unwrap(), 1);
    assert_eq!(s.stats().await.unwrap().current_resources, 2 + 16);
    for t in 0..16 {
        assert!(s.read("Patient", &format!("ok{t}")).await.unwrap().is_some());
    }
}

async fn same_resource_twice_in_one_transaction(s: &DynStore) {
    let v1 = write("Device", "twice", 1, serde_json::json!({"resourceType": "Device", "identifier": [{"system": "s", "value": "first"}]}));
    let v2 = write("Device", "twice", 2, serde_json::json!({"resourceType": "Device", "identifier": [{"system": "s", "value": "second"}]}));
    s.commit(vec![v1, v2]).await.unwrap();
    let cur = s.read("Device", "twice").await.unwrap().unwrap();
    assert_eq!(cur.version, 2);
    let hist = s
        .history(&HistoryQuery { resource_type: Some("Device".into()), id: Some("twice".into()), count: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(hist.iter().map(|v| v.version).collect::<Vec<_>>(), vec![2, 1]);
    let q = |value: &str| Criteria {
        resource_type: "Device".into(),
        identifiers: vec![TokenMatch { system: Some("s".into()), value: value.into() }],
        ..Default::default()
    };
    assert!(s.find(&q("first")).await.unwrap().is_empty());
    assert_eq!(s.find(&q("second")).await.unwrap(), vec!["twice"]);
    // A transaction whose second write refuses the first's version is refused whole.
    let mut v3 = write("Device", "twice", 3, serde_json::json!({"resourceType": "Device"}));
    v3.precondition = Precondition::Version(2);
    let mut v4 = write("Device", "twice", 4, serde_json::json!({"resourceType": "Device"}));
    v4.precondition = Precondition::Version(2);
    let err = s.commit(vec![v3, v4]).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Conflict { index: 1, reason: ConflictReason::VersionMismatch { current: Some(3) }, .. }),
        "{err}"
    );
    assert_eq!(s.read("Device", "twice").await.unwrap().unwrap().version, 2);
    assert_eq!(s.find(&q("second")).await.unwrap(), vec!["twice"]);
}

async fn conditional_create_sees_earlier_writes(s: &DynStore) {
    let body = serde_json::json!({"resourceType": "Location", "identifier": [{"system": "loc", "value": "L1"}]});
    let criteria = Criteria {
        resource_type: "Location".into(),
        identifiers: vec![TokenMatch { system: Some("loc".into()), value: "L1".into() }],
        ..Default::default()
    };
    // Within one transaction, a conditional create sees the earlier write.
    let mut second = write("Location", "l2", 1, body.clone());
    second.precondition = Precondition::NoneMatching(criteria.clone());
    let err = s.commit(vec![write("Location", "l1", 1, body.clone()), second]).await.unwrap_err();
    match err {
        StoreError::Conflict { index, reason, .. } => {
            assert_eq!(index, 1);
            assert_eq!(reason, ConflictReason::Matches("l1".into()));
        }
        other => panic!("{other}"),
    }
    assert!(s.read("Location", "l1").await.unwrap().is_none());
    // Many concurrent conditional creates on the same identifier: exactly one wins.
    let mut tasks = Vec::new();
    for t in 0..24 {
        let (s, body, criteria) = (s.clone(), body.clone(), criteria.clone());
        tasks.push(tokio::spawn(async move {
            let mut w = write("Location", &format!("c{t}"), 1, body);
            w.precondition = Precondition::NoneMatching(criteria);
            s.commit(vec![w]).await
        }));
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
    let found = s.find(&criteria).await.unwrap();
    assert_eq!(found.len(), 1);
    // Once the match is deleted, a conditional create succeeds again.
    let winner = s.read("Location", &found[0]).await.unwrap().unwrap();
    s.commit(vec![deletion("Location", &found[0], winner.version + 1)]).await.unwrap();
    let mut again = write("Location", "again", 1, body);
    again.precondition = Precondition::NoneMatching(criteria.clone());
    s.commit(vec![again]).await.unwrap();
    assert_eq!(s.find(&criteria).await.unwrap(), vec!["again"]);
}

async fn identifiers_follow_updates_and_deletes(s: &DynStore) {
    let q = |system: Option<&str>, value: &str| Criteria {
        resource_type: "Patient".into(),
        identifiers: vec![TokenMatch { system: system.map(String::from), value: value.into() }],
        ..Default::default()
    };
    let both = |a: (&str, &str), b: (&str, &str)| Criteria {
        resource_type: "Patient".into(),
        identifiers: vec![
            TokenMatch { system: Some(a.0.into()), value: a.1.into() },
            TokenMatch { system: Some(b.0.into()), value: b.1.into() },
        ],
        ..Default::default()
    };
    let p = |ids: serde_json::Value| serde_json::json!({"resourceType": "Patient", "identifier": ids});
    s.commit(vec![write("Patient", "i", 1, p(serde_json::json!([{"system": "mrn", "value": "1"}, {"system": "ssn", "value": "9"}])))])
        .await
        .unwrap();
    s.commit(vec![write("Patient", "j", 1, p(serde_json::json!([{"system": "mrn", "value": "2"}, {"system": "ssn", "value": "9"}])))])
        .await
        .unwrap();
    assert_eq!(s.find(&both(("mrn", "1"), ("ssn", "9"))).await.unwrap(), vec!["i"]);
    assert!(s.find(&both(("mrn", "1"), ("ssn", "8"))).await.unwrap().is_empty());
    // Keep one identifier, change the other, repeat one.
    s.commit(vec![write(
        "Patient",
        "i",
        2,
        p(serde_json::json!([{"system": "mrn", "value": "1"}, {"system": "ssn", "value": "7"}, {"system": "mrn", "value": "1"}])),
    )])
    .await
    .unwrap();
    assert_eq!(s.find(&q(Some("mrn"), "1")).await.unwrap(), vec!["i"]);
    assert_eq!(s.find(&q(None, "9")).await.unwrap(), vec!["j"]);
    assert_eq!(s.find(&q(Some("ssn"), "7")).await.unwrap(), vec!["i"]);
    // `_id` and identifiers together.
    let by_id = Criteria { id: Some("j".into()), ..q(Some("ssn"), "9") };
    assert_eq!(s.find(&by_id).await.unwrap(), vec!["j"]);
    let wrong_id = Criteria { id: Some("i".into()), ..q(Some("ssn"), "9") };
    assert!(s.find(&wrong_id).await.unwrap().is_empty());
    // Deleting removes them; re-creating brings them back.
    s.commit(vec![deletion("Patient", "i", 3)]).await.unwrap();
    assert!(s.find(&q(Some("mrn"), "1")).await.unwrap().is_empty());
    s.commit(vec![write("Patient", "i", 4, p(serde_json::json!([{"system": "mrn", "value": "1"}])))]).await.unwrap();
    assert_eq!(s.find(&q(Some("mrn"), "1")).await.unwrap(), vec!["i"]);
    // No criteria at all: every current resource of the type.
    let mut all = s.find(&Criteria { resource_type: "Patient".into(), ..Default::default() }).await.unwrap();
    all.sort();
    assert_eq!(all, vec!["i", "j"]);
}

async fn vread_deleted_and_large_unicode_round_trip(s: &DynStore) {
    // Ids, identifiers and content beyond ASCII, and a resource of more than 1 MB.
    let id = "ünïcødé-😀-日本";
    let text: String = (0..200_000).map(|i| format!("{:x}é", i * 7919 % 65_521)).collect();
    assert!(text.len() > 1_000_000);
    let body = serde_json::json!({
        "resourceType": "DocumentReference",
        "identifier": [{"system": "urn:sys|with|pipes", "value": "värde 値\t%|"}],
        "description": text,
        "subject": {"reference": "Patient/пациент"},
    });
    let w = write("DocumentReference", id, 1, body.clone());
    let json = w.json.clone();
    s.commit(vec![w]).await.unwrap();
    let got = s.read("DocumentReference", id).await.unwrap().unwrap();
    assert_eq!(got.json, json, "stored bytes come back exactly");
    assert_eq!(got.compartment.as_deref(), Some("пациент"));
    let found = s
        .find(&Criteria {
            resource_type: "DocumentReference".into(),
            identifiers: vec![TokenMatch { system: Some("urn:sys|with|pipes".into()), value: "värde 値\t%|".into() }],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(found, vec![id]);
    // The deletion is itself a version that vread returns; the version before it stays.
    s.commit(vec![deletion("DocumentReference", id, 2)]).await.unwrap();
    let del = s.vread("DocumentReference", id, 2).await.unwrap().unwrap();
    assert!(del.deleted);
    assert!(del.json.is_empty());
    assert_eq!(del.compartment, None);
    assert_eq!(s.vread("DocumentReference", id, 1).await.unwrap().unwrap().json, json);
    let hist = s
        .history(&HistoryQuery { resource_type: Some("DocumentReference".into()), id: Some(id.into()), count: 10, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(hist.iter().map(|v| (v.version, v.deleted)).collect::<Vec<_>>(), vec![(2, true), (1, false)]);
}

// ---------------------------------------------------------------------------------------
// Audit log
// ---------------------------------------------------------------------------------------

fn audit(user: &str, patients: &[&str], action: &str, recorded: i64) -> NewAudit {
    let event = serde_json::json!({"resourceType": "AuditEvent", "user": user, "patients": patients, "action": action, "n": recorded});
    NewAudit {
        recorded_micros: recorded,
        user: Some(user.into()),
        patients: patients.iter().map(|p| p.to_string()).collect(),
        action: action.into(),
        break_glass: false,
        event: serde_json::to_vec(&event).unwrap(),
    }
}

async fn all_audit(s: &DynStore) -> Vec<AuditRecord> {
    let mut out: Vec<AuditRecord> = Vec::new();
    loop {
        let page = s.audit_scan(out.last().map_or(0, |r| r.seq), 7).await.unwrap();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// Checks the chain: seq 1, 2, …, each linked to the one before and hashed as documented.
fn assert_chain(records: &[AuditRecord]) {
    let mut prev = AUDIT_GENESIS_HASH.to_vec();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1, "gapless from 1");
        assert_eq!(r.prev_hash, prev, "record {} links to the one before", r.seq);
        // The documented formula, computed independently.
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(&prev);
        h.update(r.seq.to_be_bytes());
        h.update(r.recorded_micros.to_be_bytes());
        h.update(&r.event);
        let expected: Vec<u8> = h.finalize().to_vec();
        assert_eq!(r.hash, expected, "hash of record {}", r.seq);
        assert_eq!(audit_hash(&r.prev_hash, r.seq, r.recorded_micros, &r.event).to_vec(), expected);
        prev = r.hash.clone();
    }
}

async fn audit_records_are_chained(s: &DynStore) {
    assert!(s.audit_scan(0, 10).await.unwrap().is_empty());
    let first = audit("Practitioner/u1", &["p1", "p2", "p1"], "read", now_micros());
    s.append_audit(vec![first.clone()]).await.unwrap();
    s.append_audit(vec![audit("Practitioner/u2", &[], "login", now_micros()), audit("Practitioner/u1", &["p3"], "search", now_micros())])
        .await
        .unwrap();
    s.append_audit(Vec::new()).await.unwrap();
    let records = all_audit(s).await;
    assert_eq!(records.len(), 3);
    assert_chain(&records);
    let r = &records[0];
    assert_eq!(r.prev_hash, vec![0u8; 32]);
    assert_eq!(r.event, first.event, "event bytes come back exactly");
    assert_eq!(r.recorded_micros, first.recorded_micros);
    assert_eq!(r.user.as_deref(), Some("Practitioner/u1"));
    assert_eq!(r.patients, vec!["p1", "p2"], "distinct patients");
    assert_eq!(r.action, "read");
    assert!(!r.break_glass);
    assert_eq!(records[1].action, "login");
    assert!(records[1].patients.is_empty());
    // Scanning after a seq, with a limit.
    let tail = s.audit_scan(1, 1).await.unwrap();
    assert_eq!(tail.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![2]);
    assert!(s.audit_scan(3, 10).await.unwrap().is_empty());
    assert_eq!(s.metrics().audit_records.load(std::sync::atomic::Ordering::Relaxed), 3);
    // Audit-only commits are not counted as FHIR transactions.
    assert_eq!(s.metrics().transactions.load(std::sync::atomic::Ordering::Relaxed), 0);
}

async fn audit_commits_with_its_transaction(s: &DynStore) {
    let body = serde_json::json!({"resourceType": "Patient"});
    s.commit_audited(vec![write("Patient", "a1", 1, body.clone())], vec![audit("Practitioner/u", &["a1"], "create", now_micros())])
        .await
        .unwrap();
    // A failed precondition: neither the write nor its audit record is stored.
    let mut bad = write("Patient", "a1", 2, body.clone());
    bad.precondition = Precondition::Version(9);
    let err = s
        .commit_audited(vec![write("Patient", "a2", 1, body.clone()), bad], vec![audit("Practitioner/u", &["a1"], "update", now_micros())])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { index: 1, .. }), "{err}");
    assert!(s.read("Patient", "a2").await.unwrap().is_none());
    let records = all_audit(s).await;
    assert_eq!(records.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), vec!["create"]);
    // The chain goes on without a gap.
    s.append_audit(vec![audit("Practitioner/u", &["a1"], "denied", now_micros())]).await.unwrap();
    s.commit_audited(vec![deletion("Patient", "a1", 2)], vec![audit("Practitioner/u", &["a1"], "delete", now_micros())]).await.unwrap();
    let records = all_audit(s).await;
    assert_eq!(records.iter().map(|r| r.action.as_str()).collect::<Vec<_>>(), vec!["create", "denied", "delete"]);
    assert_chain(&records);

    // Many concurrent transactions, half of which fail (likely in one group commit): only
    // the audit records of those that succeed are chained, without gaps.
    s.commit(vec![write("Patient", "hot", 1, body.clone())]).await.unwrap();
    let mut tasks = Vec::new();
    for t in 0..24u64 {
        let s = s.clone();
        let body = body.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = write("Patient", &format!("c{t}"), 1, body.clone());
            if t % 2 == 1 {
                w.precondition = Precondition::Version(5); // never holds
            }
            let audit = vec![audit("Practitioner/c", &[&format!("c{t}")], "create", now_micros()); 2];
            (t, s.commit_audited(vec![w], audit).await)
        }));
    }
    for task in tasks {
        let (t, result) = task.await.unwrap();
        assert_eq!(result.is_ok(), t % 2 == 0, "{t}: {result:?}");
    }
    let records = all_audit(s).await;
    assert_eq!(records.len(), 3 + 12 * 2);
    assert_chain(&records);
    let patients: std::collections::BTreeSet<String> = records[3..].iter().flat_map(|r| r.patients.clone()).collect();
    assert_eq!(patients, (0..24).step_by(2).map(|t| format!("c{t}")).collect());
}

async fn audit_concurrent_appends_form_one_chain(s: &DynStore) {
    let mut tasks = Vec::new();
    for t in 0..48u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..5u64 {
                if i == 2 {
                    let w = write("Observation", &format!("x{t}"), 1, serde_json::json!({"resourceType": "Observation"}));
                    s.commit_audited(vec![w], vec![audit("Device/d", &["p"], "create", now_micros())]).await.unwrap();
                } else {
                    s.append_audit(vec![audit(&format!("Practitioner/{t}"), &["p"], "read", now_micros())]).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let records = all_audit(s).await;
    assert_eq!(records.len(), 48 * 5);
    assert_chain(&records);
    let m = s.metrics();
    assert_eq!(m.audit_records.load(std::sync::atomic::Ordering::Relaxed), 48 * 5);
    assert_eq!(m.transactions.load(std::sync::atomic::Ordering::Relaxed), 48);
    assert!(m.commit_batches.load(std::sync::atomic::Ordering::Relaxed) <= 48 * 5);
}

async fn audit_query_filters_and_pages(s: &DynStore) {
    let base = 1_700_000_000_000_000i64;
    let mut batch = Vec::new();
    for i in 0..20i64 {
        let user = if i % 2 == 0 { "Practitioner/even" } else { "Practitioner/odd" };
        let patients: Vec<&str> = if i % 3 == 0 { vec!["p3", "all"] } else { vec!["all"] };
        let action = if i % 5 == 0 { "search" } else { "read" };
        let mut a = audit(user, &patients, action, base + i * 1000);
        a.break_glass = i == 7 || i == 14;
        batch.push(a);
    }
    s.append_audit(batch).await.unwrap();
    let q = |f: &dyn Fn(&mut AuditQuery)| {
        let mut q = AuditQuery { limit: 100, ..Default::default() };
        f(&mut q);
        q
    };
    let seqs = |rs: Vec<AuditRecord>| rs.iter().map(|r| r.seq).collect::<Vec<_>>();
    // Newest first.
    let all = s.audit_query(&q(&|_| {})).await.unwrap();
    assert_eq!(seqs(all), (1..=20).rev().collect::<Vec<_>>());
    let even = s.audit_query(&q(&|q| q.user = Some("Practitioner/even".into()))).await.unwrap();
    assert_eq!(seqs(even), (1..=20).rev().filter(|s| (s - 1) % 2 == 0).collect::<Vec<_>>());
    let p3 = s.audit_query(&q(&|q| q.patient = Some("p3".into()))).await.unwrap();
    assert_eq!(seqs(p3), vec![19, 16, 13, 10, 7, 4, 1]);
    assert!(p3_has_patients(&s.audit_query(&q(&|q| q.patient = Some("p3".into()))).await.unwrap()));
    let window = s.audit_query(&q(&|q| {
        q.since_micros = Some(base + 5000);
        q.until_micros = Some(base + 9000);
    }))
    .await
    .unwrap();
    assert_eq!(seqs(window), vec![9, 8, 7, 6], "since inclusive, until exclusive");
    let glass = s.audit_query(&q(&|q| q.break_glass_only = true)).await.unwrap();
    assert_eq!(seqs(glass), vec![15, 8]);
    assert!(s.audit_query(&q(&|q| q.break_glass_only = true)).await.unwrap().iter().all(|r| r.break_glass));
    let searches = s.audit_query(&q(&|q| q.action = Some("search".into()))).await.unwrap();
    assert_eq!(seqs(searches), vec![16, 11, 6, 1]);
    let combined = s
        .audit_query(&q(&|q| {
            q.user = Some("Practitioner/even".into());
            q.patient = Some("p3".into());
            q.action = Some("read".into());
        }))
        .await
        .unwrap();
    assert_eq!(seqs(combined), vec![19, 13, 7]);
    assert!(s.audit_query(&q(&|q| q.patient = Some("nobody".into()))).await.unwrap().is_empty());
    // Paging through one patient's accesses, newest first.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = s
            .audit_query(&AuditQuery { patient: Some("all".into()), before_seq: before, limit: 6, ..Default::default() })
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.seq);
        pages.push(seqs(page));
    }
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), vec![6, 6, 6, 2]);
    assert_eq!(pages.concat(), (1..=20).rev().collect::<Vec<_>>());
    assert!(s.audit_query(&AuditQuery::default()).await.unwrap().is_empty(), "limit 0");
}

fn p3_has_patients(records: &[AuditRecord]) -> bool {
    records.iter().all(|r| r.patients == vec!["all".to_string(), "p3".to_string()])
}

// ---------------------------------------------------------------------------------------
// Care links
// ---------------------------------------------------------------------------------------

fn link(kind: &str, patient: &str, org: Option<&str>, practitioner: Option<&str>) -> CareLink {
    CareLink {
        kind: kind.into(),
        patient: patient.into(),
        organisation: org.map(String::from),
        location: None,
        practitioner: practitioner.map(String::from),
        start_micros: None,
        end_micros: None,
        active: true,
    }
}

fn with_links(mut w: Write, links: Vec<CareLink>) -> Write {
    w.links = links;
    w
}

async fn care_links_follow_writes(s: &DynStore) {
    assert!(s.care_links("p1").await.unwrap().is_empty());
    let enc = |v: u64| write("Encounter", "e1", v, serde_json::json!({"resourceType": "Encounter", "subject": {"reference": "Patient/p1"}}));
    let full = CareLink {
        kind: "encounter".into(),
        patient: "p1".into(),
        organisation: Some("Organization/o1".into()),
        location: Some("Location/ward-7".into()),
        practitioner: Some("Practitioner/dr1".into()),
        start_micros: Some(1_000),
        end_micros: Some(2_000),
        active: false,
    };
    s.commit(vec![with_links(enc(1), vec![full.clone(), link("encounter", "p1", Some("Organization/o2"), None)])]).await.unwrap();
    let got = s.care_links("p1").await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(got.contains(&full), "every field round-trips: {got:?}");
    // A care team linking two patients; another resource's links stay.
    let team = write("CareTeam", "t1", 1, serde_json::json!({"resourceType": "CareTeam"}));
    s.commit(vec![with_links(team, vec![link("care-team", "p1", None, Some("Practitioner/a")), link("care-team", "p2", None, Some("Practitioner/a"))])])
        .await
        .unwrap();
    assert_eq!(s.care_links("p1").await.unwrap().len(), 3);
    assert_eq!(s.care_links("p2").await.unwrap(), vec![link("care-team", "p2", None, Some("Practitioner/a"))]);
    // An update replaces the resource's links (here: fewer, and for another patient).
    s.commit(vec![with_links(enc(2), vec![link("encounter", "p9", Some("Organization/o3"), None)])]).await.unwrap();
    let p1 = s.care_links("p1").await.unwrap();
    assert_eq!(p1, vec![link("care-team", "p1", None, Some("Practitioner/a"))]);
    assert_eq!(s.care_links("p9").await.unwrap(), vec![link("encounter", "p9", Some("Organization/o3"), None)]);
    // An update without links removes them.
    s.commit(vec![enc(3)]).await.unwrap();
    assert!(s.care_links("p9").await.unwrap().is_empty());
    // A deletion removes them; links on a deletion are ignored.
    let mut del = deletion("CareTeam", "t1", 2);
    del.links = vec![link("care-team", "p2", None, None)];
    s.commit(vec![del]).await.unwrap();
    assert!(s.care_links("p1").await.unwrap().is_empty());
    assert!(s.care_links("p2").await.unwrap().is_empty());
    // Re-created: links come back. Twice in one transaction: the last version's count.
    let t2 = |v: u64, links| with_links(write("CareTeam", "t1", v, serde_json::json!({"resourceType": "CareTeam"})), links);
    s.commit(vec![t2(3, vec![link("care-team", "p2", None, Some("Practitioner/x"))]), t2(4, vec![link("consent-deny", "p2", Some("Organization/o1"), None)])])
        .await
        .unwrap();
    assert_eq!(s.care_links("p2").await.unwrap(), vec![link("consent-deny", "p2", Some("Organization/o1"), None)]);
    // Several links of one kind for one patient from one resource are all kept.
    let appt = write("Appointment", "ap", 1, serde_json::json!({"resourceType": "Appointment"}));
    s.commit(vec![with_links(appt, vec![link("appointment", "p5", None, Some("Practitioner/a")), link("appointment", "p5", None, Some("Practitioner/b"))])])
        .await
        .unwrap();
    assert_eq!(s.care_links("p5").await.unwrap().len(), 2);
}

async fn care_links_commit_with_their_transaction(s: &DynStore) {
    let referral = |v: u64, patient: &str| {
        with_links(
            write("ServiceRequest", "r1", v, serde_json::json!({"resourceType": "ServiceRequest"})),
            vec![link("referral", patient, Some("Organization/specialist"), None)],
        )
    };
    s.commit(vec![referral(1, "p1")]).await.unwrap();
    // The second write fails: the first's links change is not stored.
    let mut bad = write("Patient", "nobody", 1, serde_json::json!({"resourceType": "Patient"}));
    bad.precondition = Precondition::Version(3);
    assert!(s.commit(vec![referral(2, "p2"), bad]).await.is_err());
    assert_eq!(s.care_links("p1").await.unwrap().len(), 1);
    assert!(s.care_links("p2").await.unwrap().is_empty());
    // Concurrent updates of one resource racing: exactly one wins, and its links are the
    // only ones.
    let mut tasks = Vec::new();
    for t in 0..12 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = referral(2, &format!("q{t}"));
            w.precondition = Precondition::Version(1);
            (t, s.commit(vec![w]).await)
        }));
    }
    let mut winners = Vec::new();
    for task in tasks {
        let (t, result) = task.await.unwrap();
        if result.is_ok() {
            winners.push(t);
        }
    }
    assert_eq!(winners.len(), 1);
    assert!(s.care_links("p1").await.unwrap().is_empty());
    for t in 0..12 {
        assert_eq!(s.care_links(&format!("q{t}")).await.unwrap().len(), usize::from(winners[0] == t));
    }
}

async fn worklist_of_a_location(s: &DynStore) {
    let link = |patient: &str, location: &str, end: Option<i64>, active: bool| CareLink {
        kind: "encounter".into(),
        patient: patient.into(),
        location: Some(location.into()),
        end_micros: end,
        active,
        ..Default::default()
    };
    let mut a = write("Encounter", "e1", 1, serde_json::json!({"resourceType": "Encounter"}));
    a.links = vec![link("p1", "ward-1", None, true), CareLink { location: None, ..link("p1", "x", None, true) }];
    let mut b = write("Encounter", "e2", 1, serde_json::json!({"resourceType": "Encounter"}));
    b.links = vec![link("p2", "ward-1", Some(5), true)]; // discharged
    let mut c = write("Encounter", "e3", 1, serde_json::json!({"resourceType": "Encounter"}));
    c.links = vec![link("p3", "ward-1", None, false)]; // cancelled
    let mut d = write("Encounter", "e4", 1, serde_json::json!({"resourceType": "Encounter"}));
    d.links = vec![link("p4", "ward-2", None, true)];
    s.commit(vec![a, b, c, d]).await.unwrap();
    assert_eq!(s.ongoing_at("ward-1", "encounter").await.unwrap(), vec![("Encounter".to_string(), "e1".to_string())]);
    assert!(s.ongoing_at("ward-1", "appointment").await.unwrap().is_empty());
    // Discharging (a new version with an end) takes the encounter off the worklist.
    let mut done = write("Encounter", "e1", 2, serde_json::json!({"resourceType": "Encounter"}));
    done.links = vec![link("p1", "ward-1", Some(9), true)];
    s.commit(vec![done]).await.unwrap();
    assert!(s.ongoing_at("ward-1", "encounter").await.unwrap().is_empty());
}

async fn audit_by_patient_is_complete(s: &DynStore) {
    // Enough records that an index built in bulk (SQLite) covers part of them and the
    // rest is the unindexed tail: queries must see both, once each, newest first.
    for chunk in 0..30 {
        let records = (0..100)
            .map(|i| NewAudit {
                recorded_micros: now_micros(),
                user: Some("Practitioner/u".into()),
                patients: vec![if (chunk * 100 + i) % 2 == 0 { "pa".into() } else { "pb".into() }],
                action: "read".into(),
                event: format!(r#"{{"resourceType":"AuditEvent","n":{}}}"#, chunk * 100 + i).into_bytes(),
                ..Default::default()
            })
            .collect();
        s.append_audit(records).await.unwrap();
    }
    let q = AuditQuery { patient: Some("pa".into()), limit: 10_000, ..Default::default() };
    let got = s.audit_query(&q).await.unwrap();
    assert_eq!(got.len(), 1500);
    assert!(got.windows(2).all(|w| w[0].seq > w[1].seq), "newest first, no duplicates");
    assert!(got.iter().all(|r| r.patients == vec!["pa".to_string()]));
    let page = s.audit_query(&AuditQuery { limit: 7, before_seq: Some(got[100].seq), ..q.clone() }).await.unwrap();
    assert_eq!(page.iter().map(|r| r.seq).collect::<Vec<_>>(), got[101..108].iter().map(|r| r.seq).collect::<Vec<_>>());
}

/// Every live resource of the type, by walking the index (the reference for `count`).
async fn walked(s: &DynStore, q: &search::IndexQuery) -> u64 {
    let mut q = q.clone();
    q.limit = 1_000_000;
    s.search(&q).await.unwrap().len() as u64
}

async fn counts_follow_writes(s: &DynStore) {
    let whole = |ty: &str| search::IndexQuery::new(Some(ty));
    let body = |ty: &str| serde_json::json!({"resourceType": ty});
    assert_eq!(s.count(&whole("Device")).await.unwrap(), 0);
    // Creates, an update (no change), a delete, a create after a delete, two versions of
    // one resource in one transaction.
    s.commit((0..5).map(|i| write("Device", &format!("d{i}"), 1, body("Device"))).collect()).await.unwrap();
    s.commit(vec![write("Device", "d0", 2, body("Device")), deletion("Device", "d1", 2)]).await.unwrap();
    s.commit(vec![deletion("Device", "d2", 2), write("Device", "d2", 3, body("Device"))]).await.unwrap();
    s.commit(vec![write("Device", "d5", 1, body("Device")), deletion("Device", "d5", 2)]).await.unwrap();
    // Deleting what is already deleted changes nothing.
    s.commit(vec![deletion("Device", "d1", 3)]).await.unwrap();
    // A refused transaction changes nothing.
    let mut refused = write("Device", "d3", 9, body("Device"));
    refused.precondition = Precondition::Version(7);
    s.commit(vec![deletion("Device", "d4", 2), refused]).await.unwrap_err();
    // Concurrent transactions.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![write("Device", &format!("c{t}"), 1, serde_json::json!({"resourceType": "Device"}))]).await.unwrap();
            s.commit(vec![write("Patient", &format!("c{t}"), 1, serde_json::json!({"resourceType": "Patient"}))]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    s.commit(vec![deletion("Patient", "c0", 2)]).await.unwrap();
    for ty in ["Device", "Patient", "Observation"] {
        let q = whole(ty);
        assert_eq!(s.count(&q).await.unwrap(), walked(s, &q).await, "{ty}");
    }
    assert_eq!(s.count(&whole("Device")).await.unwrap(), 4 + 8); // d0 d2 d3 d4, c0..c7
    assert_eq!(s.count(&whole("Patient")).await.unwrap(), 7);
    // A count with clauses counts what the search finds.
    let mut ids = whole("Device");
    ids.clauses.push(search::Clause { any: vec![search::Pred::Ids(vec!["d0".into(), "d1".into(), "d2".into(), "c3".into(), "nope".into()])], negate: false });
    assert_eq!(s.count(&ids).await.unwrap(), 3);
    assert_eq!(s.count(&ids).await.unwrap(), walked(s, &ids).await);
    ids.clauses[0].negate = true;
    assert_eq!(s.count(&ids).await.unwrap(), 9);
    assert_eq!(s.count(&ids).await.unwrap(), walked(s, &ids).await);
}

/// An Observation with `code` (LOINC) and `status`, `contained` Observations inside it.
fn coded(id: &str, version: u64, code: &str, status: &str, contained: &[&str]) -> Write {
    let mut body = serde_json::json!({"resourceType": "Observation", "id": id, "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "identifier": [{"system": "urn:test", "value": id}]});
    if !contained.is_empty() {
        body["contained"] = contained
            .iter()
            .enumerate()
            .map(|(i, c)| serde_json::json!({"resourceType": "Observation", "id": format!("c{i}"), "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": c}]}}))
            .collect();
    }
    let mut w = write("Observation", id, version, body.clone());
    w.index = tessera_search::index_all(&body);
    w
}

/// Per-code counts (a token with system and code, and nothing else) follow creates,
/// updates that change or keep the code, deletions, refused and concurrent transactions and
/// a reindex, and never count contained resources; each equals the search's own count.
async fn code_counts_follow_writes(s: &DynStore) {
    let token = |param: &str, system: &str, code: &str| {
        let mut q = search::IndexQuery::new(Some("Observation"));
        q.clauses.push(search::Clause { any: vec![search::Pred::Token { param: param.into(), system: Some(system.into()), code: Some(code.into()) }], negate: false });
        q
    };
    let hr = token("code", "http://loinc.org", "8867-4");
    assert!(search::counts_one_token(&hr).is_some(), "a code is counted per value");
    assert!(search::counts_one_token(&token("identifier", "urn:test", "o1")).is_none(), "identifiers are not");
    assert_eq!(s.count(&hr).await.unwrap(), 0);
    s.commit((0..6).map(|i| coded(&format!("o{i}"), 1, "8867-4", "final", &[])).collect()).await.unwrap();
    // A contained heart rate is not an Observation of the type's own.
    s.commit(vec![coded("o6", 1, "2708-6", "final", &["8867-4", "8867-4"])]).await.unwrap();
    // The code changes; the code stays (status changes); deleted; deleted and recreated.
    s.commit(vec![coded("o0", 2, "2708-6", "final", &[]), coded("o1", 2, "8867-4", "amended", &[])]).await.unwrap();
    s.commit(vec![deletion("Observation", "o2", 2)]).await.unwrap();
    s.commit(vec![deletion("Observation", "o3", 2), coded("o3", 3, "8867-4", "final", &[])]).await.unwrap();
    // A refused transaction changes nothing.
    let mut refused = coded("o4", 9, "2708-6", "final", &[]);
    refused.precondition = Precondition::Version(7);
    s.commit(vec![deletion("Observation", "o5", 2), refused]).await.unwrap_err();
    // Concurrent transactions.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            s.commit(vec![coded(&format!("p{t}"), 1, "8867-4", "final", &[])]).await.unwrap();
            s.commit(vec![coded(&format!("p{t}"), 2, if t % 2 == 0 { "2708-6" } else { "8867-4" }, "final", &[])]).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Each count equals the search's own, and the heart rates are `hr`; 2708-6 is o0, o6
    // and the even p's.
    let expect = |s: &DynStore, hr: u64| {
        let s = s.clone();
        async move {
            for q in [
                token("code", "http://loinc.org", "8867-4"),
                token("code", "http://loinc.org", "2708-6"),
                token("status", "http://hl7.org/fhir/observation-status", "amended"),
                token("identifier", "urn:test", "o1"),
            ] {
                assert_eq!(s.count(&q).await.unwrap(), walked(&s, &q).await, "{q:?}");
            }
            assert_eq!(s.count(&token("code", "http://loinc.org", "8867-4")).await.unwrap(), hr);
            assert_eq!(s.count(&token("code", "http://loinc.org", "2708-6")).await.unwrap(), 6);
        }
    };
    // o1 o3 o4 o5 and the odd p's.
    expect(s, 4 + 4).await;
    // A reindex leaves the counts as they were.
    let mut after = 0;
    while let Some((last, _)) = s.reindex_chunk(after, 5).await.unwrap() {
        after = last;
    }
    expect(s, 4 + 4).await;
    s.commit(vec![deletion("Observation", "o4", 2)]).await.unwrap();
    expect(s, 3 + 4).await;
}


fn outbox_item(subscription: &str, id: &str, version: u64, patient: &str) -> OutboxItem {
    OutboxItem { subscription: subscription.into(), resource_type: "Observation".into(), resource_id: id.into(), version, patient: patient.into(), created_micros: now_micros() }
}

async fn outbox_commits_with_its_transaction(s: &DynStore) {
    let obs = |id: &str, v: u64, patient: &str| write("Observation", id, v, serde_json::json!({"resourceType": "Observation", "subject": {"reference": format!("Patient/{patient}")}}));
    let all = || OutboxQuery { states: vec![], after_seq: 0, limit: 100, heads_only: false };
    s.commit_outbox(vec![obs("o1", 1, "p1")], Vec::new(), vec![outbox_item("s1", "o1", 1, "p1"), outbox_item("s2", "o1", 1, "p1")]).await.unwrap();
    // A transaction whose precondition fails stores none of its items …
    let mut bad = obs("o1", 2, "p1");
    bad.precondition = Precondition::Version(7);
    assert!(s.commit_outbox(vec![obs("o2", 1, "p1"), bad], Vec::new(), vec![outbox_item("s1", "o2", 1, "p1")]).await.is_err());
    // … also when it fails beside others committed in the same group.
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let mut w = obs("o1", 2, "p1");
            w.precondition = Precondition::Version(1);
            s.commit_outbox(vec![w], Vec::new(), vec![outbox_item("s1", "o1", 2, &format!("race{t}"))]).await.is_ok()
        }));
    }
    let mut won = 0;
    for t in tasks {
        won += usize::from(t.await.unwrap());
    }
    assert_eq!(won, 1);
    let items = s.outbox_list(&all()).await.unwrap();
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items.windows(2).all(|w| w[0].seq < w[1].seq), "in commit order");
    assert!(items.iter().all(|e| e.state == OutboxState::Pending && e.attempts == 0));
    assert_eq!(items.iter().filter(|e| e.item.patient.starts_with("race")).count(), 1, "the winner's item only");
    // Items alone are refused: they commit with the writes they notify.
    assert!(s.commit_outbox(Vec::new(), Vec::new(), vec![outbox_item("s1", "o9", 1, "p1")]).await.is_err());
    // Heads: the oldest open item of each subscription and patient.
    s.commit_outbox(vec![obs("o3", 1, "p1")], Vec::new(), vec![outbox_item("s1", "o3", 1, "p1")]).await.unwrap();
    let heads = s.outbox_list(&OutboxQuery { heads_only: true, ..all() }).await.unwrap();
    assert_eq!(heads.len(), 3, "s1/p1, s2/p1, s1/race: {heads:?}");
    assert!(heads.iter().any(|e| e.item.subscription == "s1" && e.item.resource_id == "o1"));
    assert!(!heads.iter().any(|e| e.item.resource_id == "o3"), "waits for s1/p1's first");
    // Updates and the dead-letter list.
    let mut first = heads.iter().find(|e| e.item.subscription == "s1" && e.item.patient == "p1").unwrap().clone();
    first.state = OutboxState::Dead;
    first.attempts = 8;
    first.last_error = Some("POST: 500".into());
    first.updated_micros = now_micros();
    s.outbox_update(&first).await.unwrap();
    let dead = s.outbox_list(&OutboxQuery { states: vec![OutboxState::Dead], ..all() }).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].attempts, dead[0].last_error.as_deref()), (8, Some("POST: 500")));
    let heads = s.outbox_list(&OutboxQuery { heads_only: true, ..all() }).await.unwrap();
    assert!(heads.iter().any(|e| e.item.resource_id == "o3"), "a dead item no longer holds up the next: {heads:?}");
    // Replay: dead → pending, attempts reset; a pending item is left alone.
    let replayed = s.outbox_replay(&[]).await.unwrap();
    assert_eq!(replayed.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![first.seq]);
    assert!(s.outbox_replay(&[first.seq]).await.unwrap().is_empty(), "pending now: not replayed again");
    let again = s.outbox_list(&all()).await.unwrap().into_iter().find(|e| e.seq == first.seq).unwrap();
    assert_eq!((again.state, again.attempts, again.last_error), (OutboxState::Pending, 0, None));
}
