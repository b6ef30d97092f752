//! Both benchmarks against an in-process server on a real SQLite store.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tessera_engine::{Engine, EngineConfig};

const SYNTHEA: &str = "/work/shared/data/synthea";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_then_read_against_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = tessera_store::sqlite::SqliteStore::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/fhir");
    let mut config = EngineConfig::default();
    config.base_url = url.clone();
    let engine = Engine::new(Arc::new(store), config);
    let auth = tessera_auth::Authenticator::new(&tessera_auth::Authenticator::generate_secret());
    let token = auth.issue_system_token("system", "tessera", "system/*.*", tessera_auth::now(), 60);
    // Signed with another key: the server must refuse it.
    let foreign = tessera_auth::Authenticator::new(&tessera_auth::Authenticator::generate_secret());
    let forged = foreign.issue_system_token("system", "tessera", "system/*.*", tessera_auth::now(), 60);
    // Valid, but allowed to read Observations only.
    let narrow = auth.issue_system_token("system", "tessera", "system/Observation.read", tessera_auth::now(), 60);
    let router = tessera_http::router(engine.clone(), tessera_http::HttpConfig::new(Arc::new(auth)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tessera_http::serve(listener, router, async {
        let _ = stopped.await;
    }));

    // Hospital, practitioners and three patients; the patients are named first and must
    // still be sent after the bundles they reference.
    let mut files: Vec<PathBuf> = std::fs::read_dir(SYNTHEA).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (mut prerequisites, mut patients): (Vec<_>, Vec<_>) =
        files.into_iter().filter(|p| p.to_string_lossy().ends_with(".json.bz2")).partition(|p| {
            let name = p.file_name().unwrap().to_string_lossy();
            name.contains("hospital") || name.contains("practitioner")
        });
    patients.sort_by_key(|p| std::fs::metadata(p).unwrap().len());
    patients.truncate(3);
    patients.append(&mut prerequisites);

    // A refused token ends the run with the server's diagnostics, and nothing is stored.
    let refused = tessera_bench::ingest(&url, &forged, &patients, 2).await.unwrap_err().to_string();
    assert!(refused.contains("HTTP 401") && refused.contains("the access token is not valid"), "{refused}");
    assert_eq!(engine.stats().await.unwrap().current_resources, 0);

    let report = tessera_bench::ingest(&url, &token, &patients, 2).await.unwrap();
    assert_eq!(report.bundles, 5, "{report}");
    assert_eq!((report.failed_bundles, report.failed_entries), (0, 0), "{report}");
    let stored = engine.stats().await.unwrap().current_resources;
    assert_eq!(report.resources, stored, "{report}");
    assert!(report.resources_per_second() > 0.0 && report.to_string().contains("resources/s"));

    let report = tessera_bench::read(&url, &token, "Patient", 2, Duration::from_millis(500)).await.unwrap();
    assert_eq!(report.ids, 3, "{report}");
    assert_eq!(report.errors, 0, "{report}");
    assert!(report.requests > 0, "{report}");
    assert!(report.p50 <= report.p99 && report.p99 <= report.max, "{report}");

    let missing = tessera_bench::read(&url, &token, "Medication", 1, Duration::from_millis(100)).await;
    assert!(missing.is_err());

    let refused = tessera_bench::read(&url, &forged, "Patient", 1, Duration::from_millis(100)).await.unwrap_err().to_string();
    assert!(refused.contains("HTTP 401") && refused.contains("the access token is not valid"), "{refused}");
    let forbidden = tessera_bench::read(&url, &narrow, "Patient", 1, Duration::from_millis(100)).await.unwrap_err().to_string();
    assert!(forbidden.contains("HTTP 403") && forbidden.contains("do not allow"), "{forbidden}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// The soak against an empty server: every kind of request is sent and answered, the data
/// grows, a line per interval is printed and the server's RSS is read (this process).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_grows_the_data_and_reports_every_kind() {
    let dir = tempfile::tempdir().unwrap();
    let store = tessera_store::sqlite::SqliteStore::open(dir.path()).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let url = format!("http://{addr}/fhir");
    let mut config = EngineConfig::default();
    config.base_url = url.clone();
    let engine = Engine::new(Arc::new(store), config);
    let auth = tessera_auth::Authenticator::new(&tessera_auth::Authenticator::generate_secret());
    let token = auth.issue_system_token("system", "tessera", "system/*.*", tessera_auth::now(), 60);
    let router = tessera_http::router(engine.clone(), tessera_http::HttpConfig::new(Arc::new(auth)));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tessera_http::serve(listener, router, async {
        let _ = stopped.await;
    }));

    let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = lines.clone();
    let options = tessera_bench::SoakOptions {
        url: url.clone(),
        token: token.clone(),
        duration: Duration::from_secs(4),
        clients: 2,
        interval: Duration::from_secs(1),
        pid: Some(std::process::id()),
        progress: Some(Arc::new(move |line: &str| sink.lock().unwrap().push(line.to_string()))),
    };
    let report = tessera_bench::soak(options).await.unwrap();
    assert_eq!(report.errors(), 0, "{report}");
    assert!(report.patients > 0 && report.resources == report.patients * 11, "{report}");
    for (op, k) in &report.kinds {
        assert!(k.requests > 0, "no {} requests: {report}", op.name());
        assert!(k.p50 <= k.p99 && k.p99 <= k.max, "{report}");
    }
    assert!(report.intervals.len() >= 3, "{report}");
    assert!(report.intervals.iter().all(|r| r.rss_kib.is_some_and(|k| k > 0)), "{report}");
    let printed = lines.lock().unwrap().clone();
    assert_eq!(printed.len(), report.intervals.len() + 1, "{printed:?}");
    assert!(printed[0].contains("everything") && printed[0].contains("p50/p99"), "{printed:?}");
    let text = report.to_string();
    assert!(text.contains("p99 first") && text.contains("server RSS"), "{text}");
    // What the server holds is what the soak created, and the patient index's review
    // worklist (Tasks it writes for registrations that may be duplicates).
    let query = "code=https://tessera.health/CodeSystem/patient-index|possible-duplicate&_summary=count";
    let counted = engine.search(&tessera_engine::Access::bootstrap(), tessera_engine::search::Scope::Type(Some("Task")), query, true).await.unwrap();
    let counted: serde_json::Value = serde_json::from_slice(counted.as_bytes()).unwrap();
    let worklist = counted["total"].as_u64().unwrap();
    assert_eq!(engine.stats().await.unwrap().current_resources, report.resources + worklist, "{report}");

    let forged = tessera_auth::Authenticator::new(&tessera_auth::Authenticator::generate_secret())
        .issue_system_token("system", "tessera", "system/*.*", tessera_auth::now(), 60);
    let options = tessera_bench::SoakOptions {
        url,
        token: forged,
        duration: Duration::from_secs(1),
        clients: 1,
        interval: Duration::from_secs(1),
        pid: None,
        progress: None,
    };
    let refused = tessera_bench::soak(options).await.unwrap_err().to_string();
    assert!(refused.contains("HTTP 401"), "{refused}");

    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
