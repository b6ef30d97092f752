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

/// An admission (ADT^A01) of person `n`: a registration and an encounter.
fn admission(tag: &str, n: usize) -> String {
    let letters: String = [n % 26, n / 26 % 26, n / 676 % 26].iter().map(|i| (b'a' + *i as u8) as char).collect();
    let (year, month, day) = (1930 + n % 80, 1 + n % 12, 1 + n % 28);
    format!(
        "MSH|^~\\&|PAS|KILLTEST|TESSERA|DOMAIN|20261207120000||ADT^A01^ADT_A01|{tag}-{n}|P|2.5\r\
         EVN|A01|20261207120000\r\
         PID|1||K{tag}{n}^^^KT^MR||Crash{letters}^Test^^^||{year}{month:02}{day:02}|F\r\
         PV1|1|I|||||||||||||||||V{tag}{n}|||||||||||||||||||||||||20261207110000\r"
    )
}

/// Messages streamed over MLLP while the server is killed with SIGKILL: after a restart,
/// every message acknowledged `AA` is in the record; the sender then resends every message
/// (as a sender does after losing its connection) and each is in the record exactly once —
/// one patient and one encounter each, none applied twice.
async fn kill_during_mllp(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let (port, mllp) = (free_port(), free_port());
    let start_mllp = |dir: &std::path::Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(["serve", "--demo", "--listen", &format!("127.0.0.1:{port}"), "--mllp-listen", &format!("127.0.0.1:{mllp}")]).arg("--data-dir").arg(dir);
        if let Some(url) = database_url {
            cmd.args(["--database-url", url]);
        }
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start tessera")
    };
    let mut server = start_mllp(dir.path());
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let base = format!("http://127.0.0.1:{port}/fhir");
    wait_ready(&client, &base).await;
    let token = system_token(dir.path(), database_url);
    let addr = format!("127.0.0.1:{mllp}");
    let tag = format!("k{}", std::process::id());
    const SENDERS: usize = 4;
    const EACH: usize = 120;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for s in 0..SENDERS {
        let (addr, tag, acked) = (addr.clone(), tag.clone(), acked.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                let n = s * EACH + i;
                match tessera_mllp::send(&addr, &[admission(&tag, n)], Duration::from_secs(10)).await {
                    Ok(r) if r[0].first().is_some_and(|a| tessera_mllp::msa_code(a) == "AA") => acked.lock().unwrap().push(n),
                    Ok(r) => panic!("message {n} refused: {r:?}"),
                    Err(_) => return,
                }
            }
        }));
    }
    // Kill once a good number are acknowledged, mid-stream.
    for _ in 0..600 {
        if acked.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.kill().unwrap();
    server.wait().unwrap();
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= 40 && acked.len() < SENDERS * EACH, "killed mid-stream ({} acknowledged)", acked.len());

    let mut server = start_mllp(dir.path());
    wait_ready(&client, &base).await;
    let count = |ty: &'static str, system: &'static str, value: String| {
        let (client, token, base) = (&client, &token, &base);
        async move {
            let url = format!("{base}/{ty}?identifier={system}|{value}&_summary=count");
            send(client, token, "GET", url, None).await.unwrap().1["total"].as_u64().unwrap()
        }
    };
    let mrn = "https://fhir.rx1.nhs.example/Id/mrn";
    for &n in &acked {
        assert_eq!(count("Patient", mrn, format!("K{tag}{n}")).await, 1, "acknowledged message {n} is in the record");
    }
    // The sender resends everything it sent (acknowledged or not).
    let all: Vec<String> = (0..SENDERS * EACH).map(|n| admission(&tag, n)).collect();
    for chunk in all.chunks(200) {
        let replies = tessera_mllp::send(&addr, chunk, Duration::from_secs(30)).await.unwrap();
        for r in replies {
            assert_eq!(tessera_mllp::msa_code(&r[0]), "AA", "{}", r[0]);
        }
    }
    let visits = "https://tessera.health/Id/rx1/visit-number";
    for n in (0..SENDERS * EACH).step_by(5).chain(acked.iter().copied()) {
        assert_eq!(count("Patient", mrn, format!("K{tag}{n}")).await, 1, "message {n}: one patient");
        assert_eq!(count("Encounter", visits, format!("V{tag}{n}")).await, 1, "message {n}: one encounter");
    }
    let total = send(&client, &token, "GET", format!("{base}/Provenance?agent=Organization/rx1&_summary=count"), None).await.unwrap().1["total"].as_u64().unwrap();
    assert_eq!(total as usize, SENDERS * EACH, "one record of each message");
    eprintln!("{} of {} messages acknowledged before SIGKILL; all in the record once after the resend", acked.len(), SENDERS * EACH);
    server.kill().unwrap();
    server.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_acknowledged_hl7_messages_survive_sigkill_and_apply_once() {
    kill_during_mllp(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_acknowledged_hl7_messages_survive_sigkill_and_apply_once() {
    on_postgres_schema("tessera_killm", async |url| kill_during_mllp(Some(url)).await).await;
}
