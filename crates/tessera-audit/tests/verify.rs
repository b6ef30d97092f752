//! Verification against real databases, tampered with behind the store's back.
//!
//! SQLite runs always; PostgreSQL when `TESSERA_TEST_DATABASE_URL` is set (each test in a
//! schema of its own). The read journal tests are SQLite's alone (PostgreSQL has none).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tessera_audit::{
    load_anchor, new_audit, verify, verify_with, Agent, Anchor, EventInput, EventKind, Interaction, Outcome,
    ProblemKind, VerifyOptions, VerifyReport, Who,
};
use tessera_store::postgres::PostgresStore;
use tessera_store::sqlite::SqliteStore;
use tessera_store::*;

/// Direct access to the database under a store.
enum Raw {
    Sqlite(std::path::PathBuf),
    Postgres(tokio_postgres::Client),
}

struct Backend {
    store: DynStore,
    /// PostgreSQL: the first store, kept (it owns the test's schema).
    _first: Option<DynStore>,
    raw: Raw,
    /// How to open another store on the same data.
    reopen: Reopen,
    /// The anchor file the store keeps.
    anchor: PathBuf,
    _dir: tempfile::TempDir,
}

enum Reopen {
    Sqlite(std::path::PathBuf),
    Postgres(String),
}

fn database_url() -> Option<String> {
    match std::env::var("TESSERA_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            eprintln!("TESSERA_TEST_DATABASE_URL is not set: PostgreSQL test not run");
            None
        }
    }
}

async fn sqlite() -> Option<Backend> {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let path = store.path().to_path_buf();
    Some(Backend {
        store: Arc::new(store),
        _first: None,
        raw: Raw::Sqlite(path),
        reopen: Reopen::Sqlite(dir.path().to_path_buf()),
        anchor: dir.path().join(anchor::FILE_NAME),
        _dir: dir,
    })
}

async fn postgres() -> Option<Backend> {
    let url = database_url()?;
    let dir = tempfile::tempdir().unwrap();
    let anchor = dir.path().join("audit.anchor");
    let store = PostgresStore::connect_isolated(&url).await.unwrap();
    store.set_audit_anchor(&anchor).await.unwrap();
    let schema = store.schema().unwrap().to_string();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let shared = format!("{url}{sep}options=-csearch_path%3D{schema}");
    Some(Backend {
        store: Arc::new(store),
        _first: None,
        raw: Raw::Postgres(client),
        reopen: Reopen::Postgres(shared),
        anchor,
        _dir: dir,
    })
}

impl Backend {
    async fn event(&self, seq: i64) -> Vec<u8> {
        match &self.raw {
            Raw::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .query_row("SELECT event FROM audit_log WHERE seq = ?1", [seq], |r| r.get(0))
                .unwrap(),
            Raw::Postgres(c) => {
                c.query_one("SELECT event FROM audit_log WHERE seq = $1", &[&seq]).await.unwrap().get(0)
            }
        }
    }

    /// Sets a column of a record (`event`, `hash`: bytes; `recorded`: an integer).
    async fn set_bytes(&self, seq: i64, column: &str, value: &[u8]) {
        let n = match &self.raw {
            Raw::Sqlite(path) => rusqlite::Connection::open(path)
                .unwrap()
                .execute(&format!("UPDATE audit_log SET {column} = ?1 WHERE seq = ?2"), rusqlite::params![value, seq])
                .unwrap() as u64,
            Raw::Postgres(c) => {
                c.execute(&format!("UPDATE audit_log SET {column} = $1 WHERE seq = $2"), &[&value, &seq]).await.unwrap()
            }
        };
        assert_eq!(n, 1);
    }

    async fn execute(&self, sql: &str) {
        match &self.raw {
            Raw::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.busy_timeout(Duration::from_secs(10)).unwrap();
                c.execute_batch(sql).unwrap()
            }
            Raw::Postgres(c) => c.batch_execute(sql).await.unwrap(),
        }
    }

    /// The anchor as the store keeps it, once it has reached `seq`.
    async fn anchor_at(&self, seq: i64) -> Anchor {
        for _ in 0..200 {
            if let Ok(Some(a)) = load_anchor(&self.anchor, None) {
                if a.seq >= seq {
                    return a;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the anchor {} did not reach seq {seq}", self.anchor.display());
    }

    /// Waits until the by-patient index covers record `seq` (SQLite builds it when idle).
    async fn indexed(&self, seq: i64) {
        for _ in 0..200 {
            if self.store.audit_index_upto().await.unwrap() >= seq {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the by-patient audit index did not reach seq {seq}");
    }

    /// Another store on the same data, as after a restart (SQLite: this one is closed
    /// first; PostgreSQL: another server, with the same anchor file; the first one stays
    /// open, as it owns the test's schema). `between` runs in between.
    async fn restart_with(self, between: impl FnOnce(&Path)) -> Backend {
        let Backend { store, _first, raw, reopen, anchor, _dir } = self;
        let (store, first): (DynStore, Option<DynStore>) = match &reopen {
            Reopen::Sqlite(dir) => {
                drop(store);
                between(&anchor);
                (Arc::new(SqliteStore::open(dir).unwrap()), None)
            }
            Reopen::Postgres(url) => {
                between(&anchor);
                let s = PostgresStore::connect(url).await.unwrap();
                s.set_audit_anchor(&anchor).await.unwrap();
                (Arc::new(s), Some(store))
            }
        };
        Backend { store, _first: first, raw, reopen, anchor, _dir }
    }

    async fn restart(self) -> Backend {
        self.restart_with(|_| {}).await
    }
}

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = super::sqlite().await { super::$name(b).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(b) = super::postgres().await { super::$name(b).await; }
            }
        )* }
    };
}

both!(
    intact_chain_verifies,
    altered_event_is_detected,
    altered_time_is_detected,
    deleted_record_is_detected,
    swapped_events_are_detected,
    swapped_records_are_detected,
    rehashed_record_breaks_the_next_link,
    truncation_is_detected_with_an_anchor,
    deleted_tail_from_a_break_glass_is_detected_with_the_kept_anchor,
    deleted_tail_is_recorded_in_the_chain_on_restart,
    removed_anchor_is_recorded_on_restart,
    deleted_index_row_is_detected,
    extra_index_row_is_detected,
    cleared_break_glass_is_detected,
    changed_user_is_detected,
    changed_patients_are_detected,
    changed_action_is_detected,
    undecodable_event_is_reported_as_altered,
    chain_continues_after_restart,
);

/// Record `n` as the engine would make it: a read by `u{n % 3}` of patient `p{n % 4}`; a
/// create every fourth; record 7 a break-glass.
fn event(n: i64) -> EventInput {
    let kind = match n {
        7 => EventKind::BreakGlass,
        n if n % 4 == 0 => EventKind::Rest(Interaction::Create),
        _ => EventKind::Rest(Interaction::Read),
    };
    EventInput {
        kind,
        recorded_micros: 1_700_000_000_000_000 + n * 1_000,
        outcome: Outcome::Success,
        outcome_desc: None,
        denied: false,
        agent: Agent {
            who: Who::Practitioner(format!("u{}", n % 3)),
            name: None,
            role: None,
            organisation: None,
            network_address: None,
        },
        resources: vec![format!("Observation/o{n}")],
        patients: vec![format!("p{}", n % 4)],
        query: None,
        break_glass: (n == 7).then(|| "emergency".to_string()),
        site: None,
    }
}

fn record(n: i64) -> NewAudit {
    new_audit(&event(n))
}

/// Ten records: reads, and creates committed with their writes.
async fn fill(s: &DynStore) {
    for n in 1..=10 {
        if n % 4 == 0 {
            let w = Write {
                resource_type: "Patient".into(),
                id: format!("p{n}"),
                version: 1,
                last_updated_micros: now_micros(),
                deleted: false,
                compartment: Some(format!("p{n}")),
                owner: None,
                json: br#"{"resourceType":"Patient"}"#.to_vec(),
                identifiers: Vec::new(),
                precondition: Precondition::None,
                links: Vec::new(),
                index: Vec::new(),
            };
            s.commit_audited(vec![w], vec![record(n)]).await.unwrap();
        } else {
            s.append_audit(vec![record(n)]).await.unwrap();
        }
    }
}

fn problems(report: &VerifyReport) -> String {
    report.problems.iter().map(|p| format!("\n  {p}")).collect()
}

/// The first problem found; for a break of the chain, the report's head is the record
/// before it.
async fn problem(s: &DynStore) -> (i64, ProblemKind, String) {
    problem_with(s, None).await
}

async fn problem_with(s: &DynStore, anchor: Option<Anchor>) -> (i64, ProblemKind, String) {
    let report = verify_with(&**s, &VerifyOptions { anchor, ..Default::default() }).await.unwrap();
    let p = report.problem.clone().expect("tampering detected");
    if p.kind.breaks_chain() && p.kind != ProblemKind::AnchorMismatch && report.last_seq < p.seq {
        assert_eq!(report.last_seq, p.seq - 1, "the report stops before the first bad record");
    }
    assert!(report.summary().contains(&format!("seq {}", p.seq)), "{}", report.summary());
    (p.seq, p.kind, p.message)
}

async fn intact_chain_verifies(b: Backend) {
    let s = &b.store;
    let empty = verify(&**s).await.unwrap();
    assert!(empty.is_ok(), "{}", empty.summary());
    assert_eq!((empty.records, empty.last_seq, empty.head_hash.clone()), (0, 0, vec![0u8; 32]));
    fill(s).await;
    // Pages smaller than the log.
    let report = verify_with(&**s, &VerifyOptions { page_size: 3, ..Default::default() }).await.unwrap();
    assert!(report.is_ok(), "{}{}", report.summary(), problems(&report));
    assert_eq!((report.records, report.last_seq), (10, 10));
    let last = s.audit_scan(9, 1).await.unwrap();
    assert_eq!(report.head_hash, last[0].hash);
    assert!(report.summary().contains("intact"));
    // The store's anchor and one from an earlier verification hold.
    assert_eq!(b.anchor_at(10).await, report.anchor());
    s.append_audit(vec![record(11)]).await.unwrap();
    let again = verify_with(&**s, &VerifyOptions { page_size: 4, anchor: Some(report.anchor()), ..Default::default() })
        .await
        .unwrap();
    assert!(again.is_ok(), "{}", again.summary());
    assert_eq!(again.records, 11);
    // With the index complete, too.
    b.indexed(11).await;
    let report =
        verify_with(&**s, &VerifyOptions { anchor: Some(b.anchor_at(11).await), ..Default::default() }).await.unwrap();
    assert!(report.is_ok(), "{}{}", report.summary(), problems(&report));
    assert_eq!(s.metrics().audit_head_seq.load(std::sync::atomic::Ordering::Relaxed), 11);
}

async fn altered_event_is_detected(b: Backend) {
    fill(&b.store).await;
    // A well-formed, stored-as-usual event with other content.
    let mut event: serde_json::Value = serde_json::from_slice(&codec::decode(&b.event(4).await).unwrap()).unwrap();
    event["resources"] = serde_json::json!(["Observation/something-else"]);
    b.set_bytes(4, "event", &codec::encode(&serde_json::to_vec(&event).unwrap()).unwrap()).await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (4, ProblemKind::Altered));
    assert!(message.contains("record 4 was altered"), "{message}");
}

async fn altered_time_is_detected(b: Backend) {
    fill(&b.store).await;
    b.execute("UPDATE audit_log SET recorded = recorded + 1 WHERE seq = 7").await;
    assert_eq!(problem(&b.store).await.0..=7, 7..=7);
    assert_eq!(problem(&b.store).await.1, ProblemKind::Altered);
}

async fn deleted_record_is_detected(b: Backend) {
    fill(&b.store).await;
    b.execute("DELETE FROM audit_log WHERE seq = 5").await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (5, ProblemKind::Missing));
    assert!(message.contains("record 5 is missing"), "{message}");
    // Deleting and renumbering the rest to close the gap breaks the link instead.
    b.execute("UPDATE audit_log SET seq = seq - 1 WHERE seq > 5").await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (5, ProblemKind::BrokenLink));
    assert!(message.contains("does not link to the hash of record 4"), "{message}");
}

async fn swapped_events_are_detected(b: Backend) {
    fill(&b.store).await;
    let (e3, e6) = (b.event(3).await, b.event(6).await);
    b.set_bytes(3, "event", &e6).await;
    b.set_bytes(6, "event", &e3).await;
    assert_eq!(problem(&b.store).await.0, 3);
    assert_eq!(problem(&b.store).await.1, ProblemKind::Altered);
}

async fn swapped_records_are_detected(b: Backend) {
    fill(&b.store).await;
    // Swap two whole records (everything but their position), i.e. reorder them.
    b.execute(
        "UPDATE audit_log SET seq = -1 WHERE seq = 2; \
         UPDATE audit_log SET seq = 2 WHERE seq = 3; \
         UPDATE audit_log SET seq = 3 WHERE seq = -1;",
    )
    .await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (2, ProblemKind::BrokenLink));
    assert!(message.contains("record 2 does not link"), "{message}");
}

async fn rehashed_record_breaks_the_next_link(b: Backend) {
    fill(&b.store).await;
    // Alter a record (consistently with its columns) and recompute its hash: the next
    // record's link no longer holds.
    let records = b.store.audit_scan(7, 1).await.unwrap();
    let r = &records[0];
    let mut forged = event(8);
    forged.resources = vec!["Observation/forged".into()];
    let forged = tessera_audit::encode_record(&forged);
    b.set_bytes(8, "event", &codec::encode(&forged).unwrap()).await;
    b.set_bytes(8, "hash", &audit_hash(&r.prev_hash, 8, r.recorded_micros, &forged)).await;
    let (seq, kind, _) = problem(&b.store).await;
    assert_eq!((seq, kind), (9, ProblemKind::BrokenLink));
}

async fn truncation_is_detected_with_an_anchor(b: Backend) {
    fill(&b.store).await;
    let anchor = verify(&*b.store).await.unwrap().anchor();
    assert_eq!(anchor.seq, 10);
    b.execute("DELETE FROM audit_log WHERE seq >= 9").await;
    // The chain alone cannot tell.
    let alone = verify(&*b.store).await.unwrap();
    assert!(alone.problems.iter().all(|p| p.kind != ProblemKind::Truncated), "{}", problems(&alone));
    let (seq, kind, message) = problem_with(&b.store, Some(anchor.clone())).await;
    assert_eq!((seq, kind), (9, ProblemKind::Truncated));
    assert!(message.contains("records 9..=10 were removed"), "{message}");
    // A rewritten record at the anchor's position.
    let forged = Anchor { seq: 5, hash: vec![7; 32] };
    let report = verify_with(&*b.store, &VerifyOptions { anchor: Some(forged), ..Default::default() }).await.unwrap();
    assert_eq!(report.problem.map(|p| (p.seq, p.kind)), Some((5, ProblemKind::AnchorMismatch)));
}

/// Every record from a break-glass onward deleted while the server runs: the anchor the
/// store keeps (not moved back) shows it.
async fn deleted_tail_from_a_break_glass_is_detected_with_the_kept_anchor(b: Backend) {
    fill(&b.store).await;
    let anchor = b.anchor_at(10).await;
    assert_eq!(anchor.seq, 10);
    b.store.audit_scan(0, 1).await.unwrap(); // SQLite: every record in the database
    b.execute("DELETE FROM audit_log WHERE seq >= 7").await;
    let (seq, kind, message) = problem_with(&b.store, Some(anchor)).await;
    assert_eq!((seq, kind), (7, ProblemKind::Truncated));
    assert!(message.contains("records 7..=10 were removed"), "{message}");
    // The store does not move its anchor back over the hole.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(load_anchor(&b.anchor, None).unwrap().unwrap().seq, 10);
}

/// The tail deleted while the server is stopped: on start the server records the loss in
/// the chain before its anchor moves on.
async fn deleted_tail_is_recorded_in_the_chain_on_restart(b: Backend) {
    fill(&b.store).await;
    let kept = b.anchor_at(10).await;
    b.store.audit_scan(0, 1).await.unwrap(); // SQLite: every record in the database
    b.execute("DELETE FROM audit_log WHERE seq >= 7; DELETE FROM audit_patient WHERE seq >= 7").await;
    let b = b.restart().await;
    let (seq, kind, message) = problem(&b.store).await;
    let sqlite = matches!(b.reopen, Reopen::Sqlite(_));
    if sqlite {
        // Records 9 and 10 (reads) were still in the read journal, already moved: they
        // are restored, 7 and 8 are reported deleted.
        assert_eq!((seq, kind), (7, ProblemKind::Missing), "{message}");
        assert!(message.contains("7..=8") && message.contains("restored"), "{message}");
        assert_eq!(b.store.audit_scan(8, 10).await.unwrap().iter().map(|r| r.seq).collect::<Vec<_>>(), vec![9, 10]);
        let report = verify_with(&*b.store, &VerifyOptions { anchor: Some(kept), ..Default::default() }).await.unwrap();
        assert_eq!((report.records, report.problems.len()), (10, 1), "{}", problems(&report));
        return;
    }
    assert_eq!((seq, kind), (7, ProblemKind::Truncated), "{message}");
    assert!(message.contains("7..=10"), "{message}");
    // With the anchor the old one: also reported (the chain's record 7 is the report).
    let report = verify_with(&*b.store, &VerifyOptions { anchor: Some(kept), ..Default::default() }).await.unwrap();
    assert_eq!(report.problem.map(|p| (p.seq, p.kind)), Some((7, ProblemKind::Truncated)));
    // The report is a record of the chain, shown like any other audit event.
    let r = b.store.audit_scan(6, 1).await.unwrap().remove(0);
    assert_eq!((r.seq, r.action.as_str(), r.user.as_deref()), (7, AUDIT_DAMAGE_ACTION, Some("Device/tessera")));
    let event = tessera_audit::render_record(&r.event, r.seq).unwrap();
    if let Err(issues) = tessera_fhir::validation::validate(&event, &Default::default()) {
        panic!("invalid AuditEvent {event:#}: {issues:?}");
    }
    assert!(event["outcomeDesc"].as_str().unwrap().contains("7..=10"), "{event}");
    // New records continue the chain after it, and the anchor follows.
    b.store.append_audit(vec![record(20)]).await.unwrap();
    assert_eq!(b.anchor_at(8).await.seq, 8);
}

async fn removed_anchor_is_recorded_on_restart(b: Backend) {
    fill(&b.store).await;
    b.anchor_at(10).await;
    let path = b.anchor.clone();
    // Removed while the server is stopped.
    let b = b.restart_with(|anchor| std::fs::remove_file(anchor).unwrap()).await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (11, ProblemKind::AnchorInvalid), "{message}");
    assert!(message.contains("anchor was removed"), "{message}");
    // A forged anchor (signed with another key) is refused.
    std::fs::write(anchor::key_path(&path), format!("{}\n", "ab".repeat(32))).unwrap();
    assert!(load_anchor(&path, None).unwrap_err().contains("signature"));
}

async fn deleted_index_row_is_detected(b: Backend) {
    fill(&b.store).await;
    b.indexed(10).await;
    let q = |p: &str| AuditQuery { patient: Some(p.into()), limit: 100, ..Default::default() };
    let seqs = |r: Vec<AuditRecord>| r.iter().map(|r| r.seq).collect::<Vec<_>>();
    assert_eq!(seqs(b.store.audit_query(&q("p1")).await.unwrap()), vec![9, 5, 1]);
    b.execute("DELETE FROM audit_patient WHERE seq = 5").await;
    // The read vanished from the patient's access log…
    assert_eq!(seqs(b.store.audit_query(&q("p1")).await.unwrap()), vec![9, 1]);
    // …and verify says which.
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (5, ProblemKind::MissingIndexRow), "{message}");
    assert!(message.contains("\"p1\""), "{message}");
}

async fn extra_index_row_is_detected(b: Backend) {
    fill(&b.store).await;
    b.indexed(10).await;
    b.execute("INSERT INTO audit_patient (patient, seq) VALUES ('someone', 3)").await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (3, ProblemKind::ExtraIndexRow), "{message}");
}

async fn cleared_break_glass_is_detected(b: Backend) {
    fill(&b.store).await;
    let btg = AuditQuery { break_glass_only: true, limit: 10, ..Default::default() };
    assert_eq!(b.store.audit_query(&btg).await.unwrap().len(), 1);
    b.execute("UPDATE audit_log SET break_glass = false WHERE seq = 7").await;
    // Out of the review queue…
    assert!(b.store.audit_query(&btg).await.unwrap().is_empty());
    // …but not out of sight.
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (7, ProblemKind::ColumnMismatch), "{message}");
    assert!(message.contains("break-glass is false but the event is a break-glass access"), "{message}");
}

async fn changed_user_is_detected(b: Backend) {
    fill(&b.store).await;
    b.execute("UPDATE audit_log SET user_id = 'Practitioner/someone-else' WHERE seq = 4").await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (4, ProblemKind::ColumnMismatch), "{message}");
    assert!(
        message.contains("user is \"Practitioner/someone-else\" but the event's is \"Practitioner/u1\""),
        "{message}"
    );
}

async fn changed_patients_are_detected(b: Backend) {
    fill(&b.store).await;
    b.execute(r#"UPDATE audit_log SET patients = '["p9"]' WHERE seq = 6"#).await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (6, ProblemKind::ColumnMismatch), "{message}");
    assert!(message.contains("patients are [\"p9\"] but the event's are [\"p2\"]"), "{message}");
    // Malformed, too.
    b.execute("UPDATE audit_log SET patients = 'not json' WHERE seq = 2").await;
    let (seq, kind, _) = problem(&b.store).await;
    assert_eq!((seq, kind), (2, ProblemKind::ColumnMismatch));
}

async fn changed_action_is_detected(b: Backend) {
    fill(&b.store).await;
    b.execute("UPDATE audit_log SET action = 'login' WHERE seq = 3").await;
    let (seq, kind, message) = problem(&b.store).await;
    assert_eq!((seq, kind), (3, ProblemKind::ColumnMismatch), "{message}");
}

async fn undecodable_event_is_reported_as_altered(b: Backend) {
    fill(&b.store).await;
    b.set_bytes(2, "event", b"\x01garbage").await;
    let (seq, kind, _) = problem(&b.store).await;
    assert_eq!((seq, kind), (2, ProblemKind::Altered));
}

async fn chain_continues_after_restart(b: Backend) {
    fill(&b.store).await;
    // SQLite: the writer loads the head at start. PostgreSQL: another server on the same
    // database (the isolated store owns its schema, so it stays open).
    let Backend { store, reopen, raw: _raw, anchor: _, _dir, _first } = b;
    let (second, _first) = match reopen {
        Reopen::Sqlite(_) => {
            drop(store);
            (reopen_store(&reopen).await, None)
        }
        Reopen::Postgres(_) => (reopen_store(&reopen).await, Some(store)),
    };
    second.append_audit(vec![record(11), record(12)]).await.unwrap();
    let report = verify(&*second).await.unwrap();
    assert!(report.is_ok(), "{}{}", report.summary(), problems(&report));
    assert_eq!(report.records, 12);
}

async fn reopen_store(r: &Reopen) -> DynStore {
    match r {
        Reopen::Sqlite(dir) => Arc::new(SqliteStore::open(dir).unwrap()),
        Reopen::Postgres(url) => Arc::new(PostgresStore::connect(url).await.unwrap()),
    }
}

// ---------------------------------------------------------------------------------------
// The SQLite read journal
// ---------------------------------------------------------------------------------------

/// A data directory whose server was killed with records 9..=80 (reads) still in the read
/// journal, acknowledged; returns it and the anchor it kept.
async fn killed_with_a_full_journal() -> (tempfile::TempDir, Anchor) {
    let dir = tempfile::tempdir().unwrap();
    let store: DynStore = {
        let s = SqliteStore::open(dir.path()).unwrap();
        s.simulate_crash_on_drop();
        Arc::new(s)
    };
    fill(&store).await;
    for n in 11..=80 {
        store.append_audit(vec![record(n)]).await.unwrap();
    }
    drop(store);
    let anchor = load_anchor(&dir.path().join(anchor::FILE_NAME), None).unwrap().unwrap();
    assert_eq!(anchor.seq, 80);
    (dir, anchor)
}

/// The journal's frames: `(seq, offset, size)`.
fn frames(dir: &Path) -> Vec<(i64, usize, usize)> {
    let bytes = std::fs::read(dir.join("tessera-audit.journal")).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        let seq = i64::from_be_bytes(bytes[at + 8..at + 16].try_into().unwrap());
        out.push((seq, at, 8 + len));
        at += 8 + len;
    }
    out
}

fn frame(dir: &Path, seq: i64) -> (usize, usize) {
    let f = frames(dir);
    let &(_, at, size) = f.iter().find(|f| f.0 == seq).unwrap_or_else(|| panic!("no frame {seq} in {f:?}"));
    (at, size)
}

async fn verify_dir(dir: &Path, anchor: Option<Anchor>) -> VerifyReport {
    let store = SqliteStore::open(dir).unwrap();
    verify_with(&store, &VerifyOptions { anchor, ..Default::default() }).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_recovers_silently_after_a_kill() {
    let (dir, anchor) = killed_with_a_full_journal().await;
    assert_eq!(frames(dir.path()).first().map(|f| f.0), Some(9), "records 9.. are in the journal");
    let report = verify_dir(dir.path(), Some(anchor)).await;
    assert!(report.is_ok(), "{}{}", report.summary(), problems(&report));
    assert_eq!(report.records, 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_byte_flip_is_reported_and_the_rest_recovered() {
    let (dir, anchor) = killed_with_a_full_journal().await;
    let (at, size) = frame(dir.path(), 35);
    let path = dir.path().join("tessera-audit.journal");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at + size - 3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let store = SqliteStore::open(dir.path()).unwrap();
    let report = verify_with(&store, &VerifyOptions { anchor: Some(anchor), ..Default::default() }).await.unwrap();
    let p = report.problem.clone().unwrap();
    assert_eq!((p.seq, p.kind), (35, ProblemKind::JournalDamage), "{}", problems(&report));
    assert!(p.message.contains("record 35 lost"), "{}", p.message);
    assert_eq!(report.problems.len(), 1, "only record 35 is lost: {}", problems(&report));
    // Every other record is back, in place; the lost one keeps what could be read of it.
    assert_eq!(report.records, 80);
    let r = store.audit_scan(34, 1).await.unwrap().remove(0);
    assert_eq!((r.seq, r.action.as_str(), r.user.as_deref()), (35, AUDIT_DAMAGE_ACTION, Some("Practitioner/u2")));
    assert_eq!(r.patients, vec!["p3"]);
    let q = AuditQuery { patient: Some("p3".into()), limit: 100, ..Default::default() };
    assert!(store.audit_query(&q).await.unwrap().iter().any(|r| r.seq == 35), "still in the patient's access log");
    // Later records verify and continue the chain.
    store.append_audit(vec![record(81)]).await.unwrap();
    let report = verify(&store).await.unwrap();
    assert_eq!((report.records, report.problems.len()), (81, 1), "{}", problems(&report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_truncation_is_reported() {
    let (dir, anchor) = killed_with_a_full_journal().await;
    let (at, _) = frame(dir.path(), 36);
    let path = dir.path().join("tessera-audit.journal");
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(at as u64 + 10).unwrap();
    let report = verify_dir(dir.path(), Some(anchor)).await;
    let p = report.problem.clone().unwrap();
    assert_eq!((p.seq, p.kind), (36, ProblemKind::JournalDamage), "{}", problems(&report));
    assert!(p.message.contains("cut short") && p.message.contains("36..=80"), "{}", p.message);
    // With the anchor from before: the chain (35 records and the report) is shorter.
    assert!(report.problems.iter().any(|p| p.kind == ProblemKind::Truncated), "{}", problems(&report));
    // After the restart the report is in the chain: it stays reported.
    let report = verify_dir(dir.path(), None).await;
    assert_eq!(report.problem.clone().map(|p| (p.seq, p.kind)), Some((36, ProblemKind::JournalDamage)));
    assert_eq!(report.records, 36, "{}", problems(&report));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_deletion_is_reported() {
    let (dir, _) = killed_with_a_full_journal().await;
    std::fs::remove_file(dir.path().join("tessera-audit.journal")).unwrap();
    let report = verify_dir(dir.path(), None).await;
    let p = report.problem.clone().unwrap();
    assert_eq!((p.seq, p.kind), (9, ProblemKind::JournalDamage), "{}", problems(&report));
    assert!(p.message.contains("journal was gone") && p.message.contains("9..=80"), "{}", p.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_tail_zeroed_is_reported() {
    // The last frames overwritten with zeros (the file keeps its size): only the anchor
    // knows they were there.
    let (dir, _) = killed_with_a_full_journal().await;
    let (at, _) = frame(dir.path(), 71);
    let path = dir.path().join("tessera-audit.journal");
    let mut bytes = std::fs::read(&path).unwrap();
    let end = frames(dir.path()).last().map(|f| f.1 + f.2).unwrap();
    bytes[at..end].fill(0);
    std::fs::write(&path, &bytes).unwrap();
    let report = verify_dir(dir.path(), None).await;
    let p = report.problem.clone().unwrap();
    assert_eq!((p.seq, p.kind), (71, ProblemKind::JournalDamage), "{}", problems(&report));
    assert!(p.message.contains("71..=80"), "{}", p.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_last_frame_flip_is_reported() {
    let (dir, _) = killed_with_a_full_journal().await;
    let (at, size) = frame(dir.path(), 80);
    let path = dir.path().join("tessera-audit.journal");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[at + size - 3] ^= 0x20;
    std::fs::write(&path, &bytes).unwrap();
    let report = verify_dir(dir.path(), None).await;
    let p = report.problem.clone().unwrap();
    assert_eq!((p.seq, p.kind), (80, ProblemKind::JournalDamage), "{}", problems(&report));
}
