//! Durability: the real `tessera` binary is killed with SIGKILL during concurrent ingest.
//! After a restart, every acknowledged transaction must be present in full, and no
//! unacknowledged transaction may be partly present. Likewise during concurrent reads:
//! the audit record of every answered read survives, and the hash chain verifies.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const PER_TX: usize = 25;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start(data_dir: &std::path::Path, port: u16, database_url: Option<&str>) -> Child {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]).arg("--data-dir").arg(data_dir);
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start tessera")
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// A system token from the operator command, for the server's database.
fn system_token(data_dir: &std::path::Path, database_url: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
    cmd.args(["token", "--system"]).arg("--data-dir").arg(data_dir);
    if let Some(url) = database_url {
        cmd.args(["--database-url", url]);
    }
    let out = cmd.output().expect("tessera token");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

async fn send(client: &HttpClient, token: &str, method: &str, url: String, body: Option<Vec<u8>>) -> Option<(u16, Value)> {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/fhir+json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .unwrap();
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

async fn wait_ready(client: &HttpClient, base: &str) {
    for _ in 0..200 {
        if let Some((200, _)) = send(client, "", "GET", format!("{base}/metadata"), None).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("server did not start");
}

fn transaction(tag: &str) -> Value {
    let entries: Vec<Value> = (0..PER_TX)
        .map(|i| {
            json!({
                "fullUrl": format!("urn:uuid:{}", uuid_like(tag, i)),
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:tessera:test:tx", "value": tag}],
                             "name": [{"family": format!("Durable{i}")}]},
                "request": {"method": "POST", "url": "Patient"}
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn uuid_like(tag: &str, i: usize) -> String {
    let n: u64 = tag.bytes().fold(i as u64 + 1, |a, b| a.wrapping_mul(31).wrapping_add(b as u64));
    format!("{:08x}-0000-4000-8000-{:012x}", (n >> 32) as u32, n & 0xffff_ffff_ffff)
}

async fn count(client: &HttpClient, token: &str, base: &str, tag: &str) -> u64 {
    let (status, bundle) = send(client, token, "GET", format!("{base}/Patient?identifier=urn:tessera:test:tx%7C{tag}&_count=1&_total=accurate"), None).await.expect("search");
    assert_eq!(status, 200);
    bundle["total"].as_u64().unwrap()
}

async fn kill_during_ingest(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut server = start(dir.path(), port, database_url);
    wait_ready(&client, &base).await;
    let token = system_token(dir.path(), database_url);

    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let sent = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, base, acked, sent, token) = (client.clone(), base.clone(), acked.clone(), sent.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            for n in 0.. {
                let tag = format!("w{w}-t{n}");
                sent.lock().unwrap().push(tag.clone());
                let body = serde_json::to_vec(&transaction(&tag)).unwrap();
                match send(&client, &token, "POST", base.clone(), Some(body)).await {
                    Some((200, _)) => acked.lock().unwrap().push(tag),
                    Some((status, body)) => panic!("transaction refused: {status} {body}"),
                    None => return, // the server died
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // SIGKILL: no shutdown, no flush.
    server.kill().unwrap();
    server.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(acked.len() >= 8, "the ingest made progress before the kill ({} transactions)", acked.len());

    let mut server = start(dir.path(), port, database_url);
    wait_ready(&client, &base).await;
    for tag in &sent {
        let n = count(&client, &token, &base, tag).await;
        if acked.contains(tag) {
            assert_eq!(n, PER_TX as u64, "acknowledged transaction {tag} is present in full");
        } else {
            assert!(n == 0 || n == PER_TX as u64, "unacknowledged transaction {tag} is all or nothing (found {n})");
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    eprintln!("{} transactions acknowledged before SIGKILL, {} sent; all verified", acked.len(), sent.len());
}

/// Reads (each of a distinct version, so each audit record can be told apart) from four
/// clients, SIGKILL, then: every answered read has its audit record, and the chain holds.
async fn kill_during_reads(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}/fhir");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut server = start(dir.path(), port, database_url);
    wait_ready(&client, &base).await;
    let token = system_token(dir.path(), database_url);
    let patient = json!({"resourceType": "Patient", "id": "audited", "name": [{"family": "Read"}]});
    let (status, _) = send(&client, &token, "PUT", format!("{base}/Patient/audited"), Some(serde_json::to_vec(&patient).unwrap())).await.unwrap();
    assert!(status == 201 || status == 200);

    let answered = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (client, base, answered, token) = (client.clone(), base.clone(), answered.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            for n in 0.. {
                let version = format!("{}", 1_000_000 + w * 100_000 + n);
                match send(&client, &token, "GET", format!("{base}/Patient/audited/_history/{version}"), None).await {
                    Some((404, _)) => answered.lock().unwrap().push(version),
                    Some((status, body)) => panic!("unexpected answer: {status} {body}"),
                    None => return,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.kill().unwrap();
    server.wait().unwrap();
    for w in workers {
        w.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 50, "reads were answered before the kill ({})", answered.len());

    // Open the store as the server would after the crash.
    let store = tessera_store::open(dir.path(), database_url).await.unwrap();
    let report = tessera_audit::verify(store.as_ref()).await.unwrap();
    assert!(report.problem.is_none(), "the audit chain verifies after SIGKILL: {:?}", report.problem);
    let mut recorded = std::collections::HashSet::new();
    let mut after = 0;
    loop {
        let page = store.audit_scan(after, 10_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.seq;
        for r in &page {
            let text = String::from_utf8_lossy(&r.event);
            if let Some(i) = text.find("Patient/audited/_history/") {
                let rest = &text[i + "Patient/audited/_history/".len()..];
                recorded.insert(rest.chars().take_while(|c| c.is_ascii_digit()).collect::<String>());
            }
        }
    }
    let missing: Vec<&String> = answered.iter().filter(|v| !recorded.contains(*v)).collect();
    assert!(missing.is_empty(), "{} of {} answered reads have no audit record, e.g. {:?}", missing.len(), answered.len(), &missing[..missing.len().min(5)]);
    eprintln!("{} reads answered before SIGKILL; each has its audit record; chain of {} records verifies", answered.len(), report.records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_audit_of_answered_reads_survives_sigkill() {
    kill_during_reads(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_audit_of_answered_reads_survives_sigkill() {
    on_postgres_schema("tessera_killr", async |url| kill_during_reads(Some(url)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_transactions_survive_sigkill() {
    kill_during_ingest(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_transactions_survive_sigkill() {
    on_postgres_schema("tessera_kill", async |url| kill_during_ingest(Some(url)).await).await;
}

/// Runs `f` with a database URL scoped to a fresh schema of its own (so earlier runs and
/// other tests don't interfere), dropped afterwards; says so when PostgreSQL is not
/// configured.
async fn on_postgres_schema(prefix: &str, f: impl AsyncFnOnce(&str)) {
    let Ok(url) = std::env::var("TESSERA_TEST_DATABASE_URL") else {
        eprintln!("TESSERA_TEST_DATABASE_URL is not set: PostgreSQL variant not run");
        return;
    };
    let schema = format!("{prefix}_{}", std::process::id());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    f(&format!("{url}{sep}options=-csearch_path%3D{schema}")).await;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
}
