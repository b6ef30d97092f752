//! Test harness: a real Tessera HTTP server on a loopback port, over a real SQLite file or
//! the real PostgreSQL (when `TESSERA_TEST_DATABASE_URL` is set), and a small HTTP client.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::Arc;
use tessera_engine::{Engine, EngineConfig};

pub struct Server {
    pub base: String,
    pub engine: Engine,
    /// The store under the engine: tests inspect the audit log and counts directly.
    pub store: tessera_store::DynStore,
    /// On PostgreSQL, a URL of the test's own schema (to open more connections to it).
    pub database_url: Option<String>,
    pub auth: Arc<tessera_auth::Authenticator>,
    /// A system token (`system/*.*`, acting for the domain's first organisation), sent
    /// with every request that does not carry its own Authorization header.
    pub system_token: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    _dir: Option<tempfile::TempDir>,
}

pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Starts a server on `backend`, or `None` (with a note) when PostgreSQL is not configured.
pub async fn start(backend: Backend) -> Option<Server> {
    start_with(backend, EngineConfig::default()).await
}

pub async fn start_with(backend: Backend, config: EngineConfig) -> Option<Server> {
    start_configured(backend, config, |_| {}).await
}

/// [`start_with`], with the HTTP settings adjusted by `http` (CORS origins, body limit …).
pub async fn start_configured(backend: Backend, config: EngineConfig, http: impl FnOnce(&mut tessera_http::HttpConfig)) -> Option<Server> {
    let adjust = http;
    let mut database_url = None;
    let (store, dir): (tessera_store::DynStore, _) = match backend {
        Backend::Sqlite => {
            let dir = tempfile::tempdir().unwrap();
            (Arc::new(tessera_store::sqlite::SqliteStore::open(dir.path()).unwrap()), Some(dir))
        }
        Backend::Postgres => {
            let url = match std::env::var("TESSERA_TEST_DATABASE_URL") {
                Ok(u) if !u.is_empty() => u,
                _ => {
                    eprintln!("TESSERA_TEST_DATABASE_URL is not set: PostgreSQL variant not run");
                    return None;
                }
            };
            let pg = tessera_store::postgres::PostgresStore::connect_isolated(&url).await.unwrap();
            let sep = if url.contains('?') { '&' } else { '?' };
            database_url = pg.schema().map(|schema| format!("{url}{sep}options=-csearch_path%3D{schema}"));
            (Arc::new(pg), None)
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}/fhir");
    let mut config = config;
    config.base_url = base.clone();
    let engine = Engine::new(store.clone(), config);
    engine.load_domain().await.unwrap();
    let auth = Arc::new(tessera_auth::Authenticator::new(&tessera_auth::Authenticator::generate_secret()));
    let system_token = auth.issue_system_token("system", "tessera", "system/*.*", tessera_auth::now(), 60);
    let mut http = tessera_http::HttpConfig::new(auth.clone());
    http.max_body_bytes = 8 * 1024 * 1024;
    adjust(&mut http);
    let router = tessera_web::app(engine.clone(), http, tessera_web::WebConfig::default());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tessera_http::serve(listener, router, async move {
        let _ = rx.await;
    }));
    let client = Client::builder(TokioExecutor::new()).build_http();
    Some(Server { base, engine, store, database_url, auth, system_token, client, shutdown: Some(tx), _dir: dir })
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Server {
    /// `path` is relative to the FHIR base (`Patient/1`) or absolute from the host (`/healthz`).
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        let url = if path.starts_with('/') {
            format!("{}{path}", self.base.trim_end_matches("/fhir"))
        } else if path.is_empty() {
            self.base.clone()
        } else {
            format!("{}/{path}", self.base)
        };
        let mut req = http::Request::builder().method(method).uri(url);
        let mut has_ct = false;
        let mut has_auth = false;
        for (k, v) in headers {
            has_ct |= k.eq_ignore_ascii_case("content-type");
            has_auth |= k.eq_ignore_ascii_case("authorization");
            if !v.is_empty() {
                req = req.header(*k, *v);
            }
        }
        if !has_auth {
            req = req.header("authorization", format!("Bearer {}", self.system_token));
        }
        if body.is_some() && !has_ct {
            req = req.header("content-type", "application/fhir+json");
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or(b"")))).unwrap();
        let resp = self.client.request(req).await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, body }
    }

    /// A request as the holder of `token` (an empty token sends no Authorization header).
    pub async fn request_as(&self, token: &str, method: &str, path: &str, body: Option<&[u8]>) -> Reply {
        let auth = if token.is_empty() { String::new() } else { format!("Bearer {token}") };
        self.request(method, path, &[("authorization", &auth)], body).await
    }

    /// A user token for a role context.
    pub fn user_token(&self, user: &str, role: Option<&str>, org: Option<&str>, location: Option<&str>) -> String {
        let domain = self.engine.domain();
        self.auth.issue_user_token(&domain, user, role, org, location, None, tessera_auth::now()).unwrap_or_else(|e| panic!("token for {user}: {e}"))
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request("GET", path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.request("POST", path, &[], Some(&serde_json::to_vec(body).unwrap())).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.request("PUT", path, &[], Some(&serde_json::to_vec(body).unwrap())).await
    }
}

/// Declares each async test fn once per backend: `mod sqlite { … }` and `mod postgres { … }`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(s) = $crate::common::start($crate::common::Backend::Sqlite).await { super::$name(&s).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(s) = $crate::common::start($crate::common::Backend::Postgres).await { super::$name(&s).await; }
            }
        )* }
    };
}

/// The shared test data folder (`../shared/data` from the repository root).
pub fn shared_data() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let candidates = [root.join("../shared/data"), root.join("shared/data")];
    candidates.into_iter().find(|p| p.exists()).expect("../shared/data is present")
}

/// Reads a `.json` or `.json.bz2` file.
pub fn read_json(path: &std::path::Path) -> Value {
    let bytes = if path.extension().is_some_and(|e| e == "bz2") {
        let out = std::process::Command::new("bzcat").arg(path).output().expect("bzcat");
        out.stdout
    } else {
        std::fs::read(path).unwrap()
    };
    serde_json::from_slice(&bytes).unwrap()
}

/// A user in a role context: (user, role, organisation, location).
pub type Who = (&'static str, &'static str, &'static str, Option<&'static str>);

impl Server {
    /// Loads the demo domain and each trust's record, as `tessera serve --demo` does.
    pub async fn load_demo(&self) {
        let engine = &self.engine;
        let mut domain = (*engine.domain()).clone();
        domain.apply_file(tessera_domain::demo::DOMAIN_FILE).unwrap();
        engine.apply_domain(&tessera_engine::Access::bootstrap(), domain).await.unwrap();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        for (site, bundle) in tessera_domain::demo::RECORDS {
            let bundle = tessera_domain::demo::relative_dates(bundle, now);
            engine.bundle_json(&tessera_engine::Access::system(site), bundle.as_bytes(), None).await.unwrap();
        }
        engine.bundle_json(&tessera_engine::Access::bootstrap(), tessera_content::MODEL_CONTENT.as_bytes(), None).await.unwrap();
        for (trust, bundle) in tessera_content::DEMO_LOCALISATIONS {
            engine.bundle_json(&tessera_engine::Access::system(trust), bundle.as_bytes(), None).await.unwrap();
        }
    }

    /// A token for a user in a role context.
    pub fn token(&self, who: Who) -> String {
        self.user_token(who.0, Some(who.1), Some(who.2), who.3)
    }
}

/// Delivery attempts of the test worker before an item is dead.
pub const WORKER_ATTEMPTS: u32 = 3;

/// The outbox delivery worker, with short waits, for as long as the guard lives.
pub fn start_worker(s: &Server) -> WorkerGuard {
    let config = tessera_outbound::Config {
        poll: std::time::Duration::from_millis(30),
        max_attempts: WORKER_ATTEMPTS,
        backoff_base: std::time::Duration::from_millis(40),
        backoff_cap: std::time::Duration::from_millis(160),
        timeout: std::time::Duration::from_secs(5),
        refresh: std::time::Duration::from_secs(60),
    };
    WorkerGuard(tessera_outbound::start(s.engine.clone(), config))
}

pub struct WorkerGuard(tokio::task::JoinHandle<()>);

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A request a [`Hook`] received.
#[derive(Debug, Clone)]
pub struct Received {
    pub headers: http::HeaderMap,
    pub raw: Vec<u8>,
    /// The body as JSON (`null` when empty or not JSON).
    pub body: Value,
    /// What the hook answered.
    pub status: u16,
    pub order_key: String,
}

/// A rest-hook receiver on a loopback port: records every request, answers 200 (or 500 for
/// the next [`Hook::fail_next`] requests).
pub struct Hook {
    pub addr: std::net::SocketAddr,
    received: Arc<std::sync::Mutex<Vec<Received>>>,
    failures: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Hook {
    pub async fn start() -> Hook {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<std::sync::Mutex<Vec<Received>>> = Default::default();
        let failures: Arc<std::sync::atomic::AtomicUsize> = Default::default();
        let (r, f) = (received.clone(), failures.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                let (r, f) = (r.clone(), f.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let (r, f) = (r.clone(), f.clone());
                        async move {
                            let headers = req.headers().clone();
                            let raw = req.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
                            let fail = f.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| if n == 0 { None } else if n == usize::MAX { Some(n) } else { Some(n - 1) }).is_ok();
                            let status = if fail { 500 } else { 200 };
                            let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
                            let order_key = body["id"].as_str().unwrap_or_default().to_string();
                            r.lock().unwrap().push(Received { headers, raw, body, status, order_key });
                            Ok::<_, std::convert::Infallible>(hyper::Response::builder().status(status).body(Full::new(Bytes::new())).unwrap())
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
                });
            }
        });
        Hook { addr, received, failures, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The next `n` requests are answered 500 (`usize::MAX`: all of them, until changed).
    pub fn fail_next(&self, n: usize) {
        self.failures.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An HL7 v2 receiver over MLLP on a loopback port: records each message and acknowledges
/// it with `code` (AA, AE, AR).
pub struct MllpPeer {
    pub addr: std::net::SocketAddr,
    received: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl MllpPeer {
    pub async fn start(code: &'static str) -> MllpPeer {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received: Arc<std::sync::Mutex<Vec<String>>> = Default::default();
        let r = received.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let r = r.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = stream.read(&mut chunk).await else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                            let frame: Vec<u8> = buf.drain(..end + 2).collect();
                            let text = String::from_utf8_lossy(&frame[..frame.len() - 2]).trim_start_matches('\u{0b}').to_string();
                            let control = text.split('\r').next().and_then(|msh| msh.split('|').nth(9)).unwrap_or("").to_string();
                            r.lock().unwrap().push(text);
                            let ack = format!("\u{0b}MSH|^~\\&|PEER|PEER|TESSERA|TESSERA|20261207000000||ACK|A{control}|P|2.5.1\rMSA|{code}|{control}\r\u{1c}\r");
                            if stream.write_all(ack.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        MllpPeer { addr, received, task }
    }

    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for MllpPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
