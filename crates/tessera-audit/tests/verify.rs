//! Chain verification against real databases, tampered with behind the store's back.
//!
//! SQLite runs always; PostgreSQL when `TESSERA_TEST_DATABASE_URL` is set (each test in a
//! schema of its own).

use std::sync::Arc;
use tessera_audit::{verify, verify_with, Anchor, ProblemKind, VerifyOptions};
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
    raw: Raw,
    /// How to open another store on the same data.
    reopen: Reopen,
    _dir: Option<tempfile::TempDir>,
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
        raw: Raw::Sqlite(path),
        reopen: Reopen::Sqlite(dir.path().to_path_buf()),
        _dir: Some(dir),
    })
}

async fn postgres() -> Option<Backend> {
    let url = database_url()?;
    let store = PostgresStore::connect_isolated(&url).await.unwrap();
    let schema = store.schema().unwrap().to_string();
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("SET search_path TO {schema}")).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let shared = format!("{url}{sep}options=-csearch_path%3D{schema}");
    Some(Backend { store: Arc::new(store), raw: Raw::Postgres(client), reopen: Reopen::Postgres(shared), _dir: None })
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
            Raw::Sqlite(path) => rusqlite::Connection::open(path).unwrap().execute_batch(sql).unwrap(),
            Raw::Postgres(c) => c.batch_execute(sql).await.unwrap(),
        }
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
    undecodable_event_is_an_error,
    chain_continues_after_restart,
);

fn record(n: i64) -> NewAudit {
    let event = serde_json::json!({"resourceType": "AuditEvent", "n": n, "who": format!("Practitioner/u{}", n % 3)});
    NewAudit {
        recorded_micros: 1_700_000_000_000_000 + n * 1_000,
        user: Some(format!("Practitioner/u{}", n % 3)),
        patients: vec![format!("p{}", n % 4)],
        action: "read".into(),
        break_glass: false,
        event: serde_json::to_vec(&event).unwrap(),
    }
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

async fn problem(s: &DynStore) -> (i64, ProblemKind, String) {
    let report = verify(&**s).await.unwrap();
    let p = report.problem.clone().expect("tampering detected");
    assert_eq!(report.last_seq, p.seq - 1, "the report stops before the first bad record");
    (p.seq, p.kind, p.message)
}

async fn intact_chain_verifies(b: Backend) {
    let s = &b.store;
    let empty = verify(&**s).await.unwrap();
    assert!(empty.is_ok());
    assert_eq!((empty.records, empty.last_seq, empty.head_hash.clone()), (0, 0, vec![0u8; 32]));
    fill(s).await;
    // Pages smaller than the log.
    let report = verify_with(&**s, &VerifyOptions { page_size: 3, anchor: None }).await.unwrap();
    assert!(report.is_ok(), "{}", report.summary());
    assert_eq!((report.records, report.last_seq), (10, 10));
    let last = s.audit_scan(9, 1).await.unwrap();
    assert_eq!(report.head_hash, last[0].hash);
    assert!(report.summary().contains("intact"));
    // An anchor from an earlier verification holds.
    s.append_audit(vec![record(11)]).await.unwrap();
    let again = verify_with(&**s, &VerifyOptions { page_size: 4, anchor: Some(report.anchor()) }).await.unwrap();
    assert!(again.is_ok(), "{}", again.summary());
    assert_eq!(again.records, 11);
}

async fn altered_event_is_detected(b: Backend) {
    fill(&b.store).await;
    // A well-formed, stored-as-usual event with other content.
    let mut event: serde_json::Value = serde_json::from_slice(&codec::decode(&b.event(4).await).unwrap()).unwrap();
    event["who"] = "Practitioner/someone-else".into();
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
    // Alter a record and recompute its hash: the next record's link no longer holds.
    let records = b.store.audit_scan(7, 1).await.unwrap();
    let r = &records[0];
    let event = br#"{"resourceType":"AuditEvent","forged":true}"#;
    b.set_bytes(8, "event", &codec::encode(event).unwrap()).await;
    b.set_bytes(8, "hash", &audit_hash(&r.prev_hash, 8, r.recorded_micros, event)).await;
    let (seq, kind, _) = problem(&b.store).await;
    assert_eq!((seq, kind), (9, ProblemKind::BrokenLink));
}

async fn truncation_is_detected_with_an_anchor(b: Backend) {
    fill(&b.store).await;
    let anchor = verify(&*b.store).await.unwrap().anchor();
    assert_eq!(anchor.seq, 10);
    b.execute("DELETE FROM audit_log WHERE seq >= 9").await;
    // The chain alone cannot tell.
    assert!(verify(&*b.store).await.unwrap().is_ok());
    let report =
        verify_with(&*b.store, &VerifyOptions { anchor: Some(anchor.clone()), ..Default::default() }).await.unwrap();
    let p = report.problem.expect("truncation detected");
    assert_eq!((p.seq, p.kind), (9, ProblemKind::Truncated));
    assert!(p.message.contains("records 9..=10 were removed"), "{}", p.message);
    // A rewritten record at the anchor's position.
    let forged = Anchor { seq: 5, hash: vec![7; 32] };
    let report = verify_with(&*b.store, &VerifyOptions { anchor: Some(forged), ..Default::default() }).await.unwrap();
    assert_eq!(report.problem.map(|p| (p.seq, p.kind)), Some((5, ProblemKind::AnchorMismatch)));
}

async fn undecodable_event_is_an_error(b: Backend) {
    fill(&b.store).await;
    b.set_bytes(2, "event", b"\x01garbage").await;
    assert!(verify(&*b.store).await.is_err(), "an undecodable record fails the verification");
}

async fn chain_continues_after_restart(b: Backend) {
    fill(&b.store).await;
    // SQLite: the writer loads the head at start. PostgreSQL: another server on the same
    // database (the isolated store owns its schema, so it stays open).
    let Backend { store, reopen, raw: _raw, _dir } = b;
    let (second, _first) = match reopen {
        Reopen::Sqlite(_) => {
            drop(store);
            (reopen_store(&reopen).await, None)
        }
        Reopen::Postgres(_) => (reopen_store(&reopen).await, Some(store)),
    };
    second.append_audit(vec![record(11), record(12)]).await.unwrap();
    let report = verify(&*second).await.unwrap();
    assert!(report.is_ok(), "{}", report.summary());
    assert_eq!(report.records, 12);
}

async fn reopen_store(r: &Reopen) -> DynStore {
    match r {
        Reopen::Sqlite(dir) => Arc::new(SqliteStore::open(dir).unwrap()),
        Reopen::Postgres(url) => Arc::new(PostgresStore::connect(url).await.unwrap()),
    }
}
