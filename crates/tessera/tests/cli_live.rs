//! Every command-line command run against a live store: the real `tessera serve` under
//! read and write load, on SQLite and PostgreSQL. Commands that only read answer while the
//! server runs; commands that write either work (PostgreSQL, which many processes share)
//! or are refused with a message that says why (SQLite, whose data directory belongs to
//! one process). Either way, nothing fails afterwards: every later read and write
//! succeeds, `/healthz` stays 200, and the audit chain verifies.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Target<'a> {
    data_dir: &'a std::path::Path,
    database_url: Option<&'a str>,
}

impl Target<'_> {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tessera"));
        cmd.args(args).arg("--data-dir").arg(self.data_dir);
        if let Some(url) = self.database_url {
            cmd.args(["--database-url", url]);
        }
        cmd
    }

    /// Runs a command to completion: (success, stdout + stderr).
    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().expect("run tessera");
        (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }

    fn serve(&self, port: u16) -> Child {
        let mut cmd = self.command(&["serve", "--demo", "--listen", &format!("127.0.0.1:{port}")]);
        cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("start tessera")
    }
}

async fn send(client: &HttpClient, token: &str, method: &str, url: &str, body: Option<Vec<u8>>) -> Option<(u16, Value)> {
    let mut req = http::Request::builder().method(method).uri(url).header("content-type", "application/fhir+json");
    if !token.is_empty() {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    let req = req.body(Full::new(Bytes::from(body.unwrap_or_default()))).unwrap();
    let resp = client.request(req).await.ok()?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null)))
}

async fn password_token(client: &HttpClient, host: &str) -> String {
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("{host}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("grant_type=password&username=dr.patel&password=demo-doctor-1&role=doctor&organisation=rx1-general&location=ward-7a")))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    v["access_token"].as_str().expect("a token").to_string()
}

/// Reads and writes as a doctor until `stop`; counts successes and failures.
fn load(client: HttpClient, base: String, token: String, stop: Arc<AtomicBool>, ok: Arc<AtomicUsize>, failed: Arc<AtomicUsize>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            i += 1;
            let r = if i % 4 == 0 {
                let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                    "subject": {"reference": "Patient/jane-smith"}, "valueQuantity": {"value": 60 + (i % 40), "unit": "/min"}});
                send(&client, &token, "POST", &format!("{base}/Observation"), Some(serde_json::to_vec(&obs).unwrap())).await
            } else if i % 4 == 1 {
                send(&client, &token, "GET", &format!("{base}/Observation?patient=jane-smith&_count=5"), None).await
            } else {
                send(&client, &token, "GET", &format!("{base}/Observation/obs-jane-hr"), None).await
            };
            match r {
                Some((s, _)) if s < 300 => ok.fetch_add(1, Ordering::Relaxed),
                _ => failed.fetch_add(1, Ordering::Relaxed),
            };
        }
    })
}

async fn every_command_against_a_live_server(data_dir: &std::path::Path, database_url: Option<&str>) {
    let target = Target { data_dir, database_url };
    let port = free_port();
    let mut server = target.serve(port);
    let host = format!("http://127.0.0.1:{port}");
    let base = format!("{host}/fhir");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let mut up = false;
    for _ in 0..300 {
        if let Some((200, _)) = send(&client, "", "GET", &format!("{host}/healthz"), None).await {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "server did not start");
    let token = password_token(&client, &host).await;
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let workers: Vec<_> = (0..4).map(|_| load(client.clone(), base.clone(), token.clone(), stop.clone(), ok.clone(), failed.clone())).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Commands that only read: they work beside the server.
    let domain_file = data_dir.with_extension("toml");
    std::fs::write(&domain_file, "[[organisations]]\nid = \"rx9\"\nname = \"Ninth trust\"\n").unwrap();
    let ndjson = data_dir.with_extension("ndjson");
    std::fs::write(&ndjson, "{\"resourceType\":\"Patient\",\"id\":\"cli-live-1\",\"name\":[{\"family\":\"Live\"}]}\n").unwrap();
    for args in [
        vec!["token", "--user", "dr.patel"],
        vec!["token", "--system"],
        vec!["token", "--system", "--org", "rx1"],
        vec!["domain", "show"],
        vec!["user", "list"],
        vec!["audit", "verify"],
    ] {
        let (success, out) = target.run(&args);
        assert!(success, "`tessera {}` beside a live server: {out}", args.join(" "));
    }
    // Commands that write: PostgreSQL is shared by many processes; an SQLite data
    // directory belongs to the server, so they are refused, saying why.
    let writes: Vec<Vec<&str>> = vec![
        vec!["user", "add", "cli.live", "--name", "Live User", "--role", "nurse", "--org", "rx1-general", "--password", "cli-live-password-1"],
        vec!["user", "passwd", "cli.live", "--password", "cli-live-password-2"],
        vec!["domain", "apply", domain_file.to_str().unwrap()],
        vec!["import", ndjson.to_str().unwrap()],
        vec!["reindex"],
        vec!["user", "unlock", "dr.patel"],
    ];
    for args in &writes {
        let (success, out) = target.run(args);
        if database_url.is_some() {
            assert!(success, "`tessera {}` on PostgreSQL beside a live server: {out}", args.join(" "));
        } else {
            assert!(!success, "`tessera {}` must not write an SQLite directory a server owns: {out}", args.join(" "));
            assert!(out.contains("in use by another Tessera process"), "the refusal says why: {out}");
        }
    }
    // The server keeps working: more load, then every later read and write succeeds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed while the commands ran ({} succeeded)", ok.load(Ordering::Relaxed));
    assert!(ok.load(Ordering::Relaxed) > 20, "the load ran");
    for i in 0..200 {
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "after"}, "subject": {"reference": "Patient/jane-smith"}});
        let (status, _) = send(&client, &token, "POST", &format!("{base}/Observation"), Some(serde_json::to_vec(&obs).unwrap())).await.unwrap();
        assert_eq!(status, 201, "write {i} after the commands");
        let (status, _) = send(&client, &token, "GET", &format!("{base}/Observation/obs-jane-hr"), None).await.unwrap();
        assert_eq!(status, 200, "read {i} after the commands");
    }
    let (status, _) = send(&client, "", "GET", &format!("{host}/healthz"), None).await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = send(&client, "", "GET", &format!("{host}/livez"), None).await.unwrap();
    assert_eq!(status, 200);
    server.kill().unwrap();
    server.wait().unwrap();
    // Stopped: the chain verifies as its owner sees it, and writing commands work again.
    let (success, out) = target.run(&["audit", "verify"]);
    assert!(success, "{out}");
    if database_url.is_none() {
        let (success, out) = target.run(&writes[0]);
        assert!(success, "with the server stopped, `user add` works: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_every_command_beside_a_live_server() {
    let dir = tempfile::tempdir().unwrap();
    every_command_against_a_live_server(&dir.path().join("data"), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_every_command_beside_a_live_server() {
    let Ok(url) = std::env::var("TESSERA_TEST_DATABASE_URL") else {
        eprintln!("TESSERA_TEST_DATABASE_URL is not set: PostgreSQL variant not run");
        return;
    };
    let schema = format!("cli_live_{}", std::process::id());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")).await.unwrap();
    let sep = if url.contains('?') { '&' } else { '?' };
    let scoped = format!("{url}{sep}options=-csearch_path%3D{schema}");
    let dir = tempfile::tempdir().unwrap();
    every_command_against_a_live_server(&dir.path().join("data"), Some(&scoped)).await;
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await.unwrap();
}
