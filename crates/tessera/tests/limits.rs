//! Every request's work is bounded: too many search parameters, values, sort keys,
//! includes or elements, a huge offset, an oversized Bundle, an over-long string, a query
//! that runs past the query timeout — each answered with a 4xx OperationOutcome that names
//! the limit and the option that sets it, on both backends; idle connections are closed.

mod common;
use common::Server;
use serde_json::{json, Value};
use std::time::Duration;

on_both_backends!(search_limits_are_named, oversized_bundles_and_strings_are_refused, slow_queries_are_stopped);

fn outcome_text(r: &common::Reply) -> String {
    let v = r.json();
    assert_eq!(v["resourceType"], "OperationOutcome", "{v}");
    v["issue"][0]["diagnostics"].as_str().unwrap_or("").to_string()
}

async fn search_limits_are_named(s: &Server) {
    let many_params: String = (0..200).map(|i| format!("name=a{i}")).collect::<Vec<_>>().join("&");
    let many_values: String = (0..5000).map(|i| format!("a{i}")).collect::<Vec<_>>().join(",");
    let many_sort: String = (0..400).map(|_| "name").collect::<Vec<_>>().join(",");
    let many_includes: String = (0..40).map(|_| "_include=Observation:subject").collect::<Vec<_>>().join("&");
    for (query, option) in [
        (format!("Patient?{many_params}"), "--max-search-parameters"),
        (format!("Patient?name={many_values}"), "--max-search-values"),
        (format!("Patient?_sort={many_sort}"), "--max-sort-keys"),
        (format!("Observation?{many_includes}"), "--max-includes"),
        ("Patient?_sort=name&_offset=9223372036854775808".to_string(), "--max-offset"),
    ] {
        let r = s.get(&query).await;
        assert_eq!(r.status, 400, "{option}: {}", String::from_utf8_lossy(&r.body));
        let text = outcome_text(&r);
        assert!(text.contains(option) && text.contains("limit"), "the outcome names the limit and its option: {text}");
    }
    // Within the limits: answered.
    assert_eq!(s.get("Patient?name=a,b,c&_sort=name,-birthdate&_count=5").await.status, 200);
}

async fn oversized_bundles_and_strings_are_refused(s: &Server) {
    // A Bundle above the entry limit (the test server's limit is the default: 20,000).
    let entries: Vec<Value> = (0..20_001).map(|_| json!({"request": {"method": "GET", "url": "Patient/x"}})).collect();
    let r = s.post("", &json!({"resourceType": "Bundle", "type": "batch", "entry": entries})).await;
    assert_eq!(r.status, 413, "{}", String::from_utf8_lossy(&r.body[..200.min(r.body.len())]));
    assert!(outcome_text(&r).contains("--max-bundle-entries"));
    // FHIR's 1 MB limit per string.
    let long = "x".repeat(1024 * 1024 + 1);
    let r = s.post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": long})).await;
    assert_eq!(r.status, 400);
    assert!(outcome_text(&r).contains("1 MB"));
    // Control characters in a string and in the URL.
    let r = s.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "a\u{0}b"}]})).await;
    assert_eq!(r.status, 400);
    assert!(outcome_text(&r).contains("U+0000"));
    for path in ["Patient?name=%00", "Patient/%00", "AuditEvent?agent=%00", "Patient?name=%FF"] {
        let r = s.get(path).await;
        assert_eq!(r.status, 400, "{path}");
        outcome_text(&r);
    }
}

async fn slow_queries_are_stopped(s: &Server) {
    // Enough data for a search that takes more than a millisecond.
    let entries: Vec<Value> = (0..3000)
        .map(|i| {
            json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("code {}", i % 17)},
                "effectiveDateTime": format!("2020-01-{:02}", 1 + i % 28), "valueQuantity": {"value": i, "unit": "mg"}},
                "request": {"method": "POST", "url": "Observation"}})
        })
        .collect();
    let r = s.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body[..300.min(r.body.len())]));
    let query = "Observation?_sort=-date,code,status&_total=accurate&value-quantity=gt1&code:text=code";
    assert_eq!(s.get(query).await.status, 200, "unbounded, it is answered");
    tessera_store::set_query_timeout(Duration::from_millis(5));
    let text = match &s.database_url {
        // SQLite: every read of the running server is bounded at once.
        None => {
            let r = s.get(query).await;
            assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(&r.body));
            outcome_text(&r)
        }
        // PostgreSQL: connections opened from now on carry the statement timeout.
        Some(url) => {
            let mut store = None;
            for _ in 0..20 {
                if let Ok(s) = tessera_store::postgres::PostgresStore::connect(url).await {
                    store = Some(s);
                    break;
                }
            }
            let store = store.expect("connects under a 5 ms statement timeout");
            let engine = tessera_engine::Engine::new(std::sync::Arc::new(store), tessera_engine::EngineConfig::default());
            // Reading the domain is a query too: on a busy machine it may need a retry.
            let mut loaded = false;
            for _ in 0..50 {
                if engine.load_domain().await.is_ok() {
                    loaded = true;
                    break;
                }
            }
            assert!(loaded, "the domain loads under a 5 ms statement timeout");
            let (_, q) = query.split_once('?').unwrap();
            let e = engine.search(&tessera_engine::Access::bootstrap(), tessera_engine::search::Scope::Type(Some("Observation")), q, false).await.unwrap_err();
            assert_eq!(e.status, 400, "{e:?}");
            e.outcome()["issue"][0]["diagnostics"].as_str().unwrap_or("").to_string()
        }
    };
    assert!(text.contains("--query-timeout-seconds"), "{text}");
}

/// A connection that sends nothing is closed after the idle timeout.
#[tokio::test]
async fn idle_connections_are_closed() {
    use tokio::io::AsyncReadExt;
    let s = common::start(common::Backend::Sqlite).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = tessera_http::router(s.engine.clone(), tessera_http::HttpConfig::new(s.auth.clone()));
    tokio::spawn(tessera_http::serve_with(listener, router, std::future::pending(), tessera_http::ServeOptions { idle_timeout: Duration::from_millis(300) }));
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut buf)).await.expect("the server closes the idle connection");
    assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered: {read:?}");
    // A connection that asks gets its answer.
    let mut asking = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut asking, b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), asking.read(&mut buf)).await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

/// Writing a resource costs time in proportion to its size: a Patient with ten times the
/// names takes about ten times as long (not a hundred).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_cost_grows_linearly() {
    let s = common::start(common::Backend::Sqlite).await.unwrap();
    let patient = |n: usize| {
        let names: Vec<Value> = (0..n).map(|i| json!({"family": format!("Family{i}"), "given": [format!("Given{i}"), format!("Other{i}")]})).collect();
        json!({"resourceType": "Patient", "name": names})
    };
    let time = |n: usize| {
        let body = patient(n);
        let s = &s;
        async move {
            let start = std::time::Instant::now();
            let r = s.post("Patient", &body).await;
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body[..200.min(r.body.len())]));
            start.elapsed()
        }
    };
    time(200).await; // warm up
    let small = time(1_600).await;
    let large = time(16_000).await;
    let ratio = large.as_secs_f64() / small.as_secs_f64();
    assert!(ratio < 30.0, "10× the names took {ratio:.1}× as long ({small:?} → {large:?})");
}
