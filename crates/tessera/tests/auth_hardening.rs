//! Sign-in hardening over real HTTP, on SQLite and PostgreSQL: account lockout (persisted,
//! shared by servers, cleared by an unlock), the per-address rate limit, the audit of
//! refused sign-ins and tokens (with the reason, without the token, bounded under a flood),
//! revocation on context switch, refresh-token rotation and reuse detection.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tessera_auth::{AuthPolicy, Authenticator};
use tessera_engine::{Access, Engine, EngineConfig};

const PATEL_PASSWORD: &str = "demo-doctor-1";
const ENGINE_SECRET: &str = "demo-rx1-interface-engine-secret";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

struct Reply {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.to_str().unwrap().to_string())
    }
}

/// One HTTP server (router) over an engine.
struct Http {
    origin: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Http {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

async fn serve(engine: Engine, auth: Arc<Authenticator>, policy: AuthPolicy) -> Http {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let mut http = tessera_http::HttpConfig::new(auth);
    http.auth_policy = policy;
    let router = tessera_http::router(engine, http);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(tessera_http::serve(listener, router, async move {
        let _ = rx.await;
    }));
    Http { origin, shutdown: Some(tx) }
}

struct Server {
    http: Http,
    engine: Engine,
    store: tessera_store::DynStore,
    auth: Arc<Authenticator>,
    policy: AuthPolicy,
    config: EngineConfig,
    system_token: String,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    _dir: Option<tempfile::TempDir>,
}

/// A server on `backend` with the demo domain (its users and service accounts), or `None`
/// when PostgreSQL is not configured.
async fn start(backend: Backend, policy: AuthPolicy) -> Option<Server> {
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
            (Arc::new(tessera_store::postgres::PostgresStore::connect_isolated(&url).await.unwrap()), None)
        }
    };
    let config = EngineConfig::default();
    let engine = Engine::new(store.clone(), config.clone());
    engine.load_domain().await.unwrap();
    let mut domain = (*engine.domain()).clone();
    domain.apply_file(tessera_domain::demo::DOMAIN_FILE).unwrap();
    engine.apply_domain(&Access::system("tessera"), domain).await.unwrap();
    let auth = Arc::new(Authenticator::new(&Authenticator::generate_secret()));
    let system_token = auth.issue_system_token("system", "tessera", "system/*.*", tessera_auth::now(), 60);
    let http = serve(engine.clone(), auth.clone(), policy.clone()).await;
    let client = Client::builder(TokioExecutor::new()).build_http();
    Some(Server { http, engine, store, auth, policy, config, system_token, client, _dir: dir })
}

impl Server {
    /// Another server on the same database: its own engine and its own (empty) caches.
    async fn second(&self) -> Http {
        let engine = Engine::new(self.store.clone(), self.config.clone());
        engine.load_domain().await.unwrap();
        serve(engine, self.auth.clone(), self.policy.clone()).await
    }

    async fn send(&self, origin: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Reply {
        let mut req = http::Request::builder().method(method).uri(format!("{origin}{path}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body.unwrap_or(b"")))).unwrap();
        let resp = self.client.request(req).await.expect("HTTP request");
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Reply { status, headers, body }
    }

    /// POSTs a form to the token endpoint of `origin`, from `from` (X-Forwarded-For, when the
    /// policy trusts it).
    async fn token_at(&self, origin: &str, pairs: &[(&str, &str)], from: Option<&str>) -> Reply {
        let body = form(pairs);
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(f) = from {
            headers.push(("x-forwarded-for", f));
        }
        self.send(origin, "POST", "/auth/token", &headers, Some(body.as_bytes())).await
    }

    async fn token(&self, pairs: &[(&str, &str)]) -> Reply {
        self.token_at(&self.http.origin, pairs, None).await
    }

    async fn login(&self, user: &str, password: &str) -> Reply {
        self.token(&[("grant_type", "password"), ("username", user), ("password", password)]).await
    }

    /// A FHIR request with `token` (empty: no Authorization header) to `origin`.
    async fn get_at(&self, origin: &str, token: &str, path: &str) -> Reply {
        let auth = format!("Bearer {token}");
        let headers: Vec<(&str, &str)> = if token.is_empty() { vec![] } else { vec![("authorization", auth.as_str())] };
        self.send(origin, "GET", &format!("/fhir/{path}"), &headers, None).await
    }

    async fn get(&self, token: &str, path: &str) -> Reply {
        self.get_at(&self.http.origin, token, path).await
    }

    /// The audit records with this action (newest first), as stored.
    async fn audit(&self, action: &str) -> Vec<tessera_store::AuditRecord> {
        self.store.audit_query(&tessera_store::AuditQuery { action: Some(action.into()), limit: 10_000, ..Default::default() }).await.unwrap()
    }

    /// The rendered AuditEvents with this action (newest first).
    async fn events(&self, action: &str) -> Vec<Value> {
        self.audit(action).await.iter().map(|r| tessera_audit::render_record(&r.event, r.seq).expect("readable")).collect()
    }

    /// Everything in the audit log, as text.
    async fn all_audit_text(&self) -> String {
        let all = self.store.audit_query(&tessera_store::AuditQuery { limit: 100_000, ..Default::default() }).await.unwrap();
        all.iter().map(|r| String::from_utf8_lossy(&r.event).into_owned()).collect::<Vec<_>>().join("\n")
    }
}

/// `application/x-www-form-urlencoded`.
fn form(pairs: &[(&str, &str)]) -> String {
    let encode = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => (b as char).to_string(),
                b' ' => "+".to_string(),
                b => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect::<Vec<_>>().join("&")
}

/// The default lockout (5 failures, 15 minutes), with a short cache so that an unlock shows
/// within a second, and the address limit and audit burst out of the way (they have tests
/// of their own).
fn policy() -> AuthPolicy {
    AuthPolicy { cache_seconds: 1, attempts_per_minute: 1_000, audit_burst: 1_000, audit_global_burst: 10_000, ..AuthPolicy::default() }
}

fn field<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{pointer} in {v}"))
}

/// Paths of every empty string in a JSON value.
fn empty_strings(v: &Value, path: &str, out: &mut Vec<String>) {
    match v {
        Value::String(s) if s.trim().is_empty() => out.push(path.to_string()),
        Value::Array(a) => a.iter().enumerate().for_each(|(i, x)| empty_strings(x, &format!("{path}[{i}]"), out)),
        Value::Object(o) => o.iter().for_each(|(k, x)| empty_strings(x, &format!("{path}.{k}"), out)),
        _ => {}
    }
}

fn assert_valid_login_event(event: &Value) {
    let mut empties = Vec::new();
    empty_strings(event, "AuditEvent", &mut empties);
    assert!(empties.is_empty(), "empty strings at {empties:?} in {event}");
    assert!(!event.to_string().contains("\"Organization/\""), "{event}");
    assert_eq!(field(event, "/type/code"), "110114");
    let agent = &event["agent"][0];
    assert_eq!(agent["requestor"], true);
    assert!(agent["who"].get("reference").is_some() || agent["who"].get("identifier").is_some() || agent["who"].get("display").is_some(), "{event}");
}

/// Wrong passwords lock the account; the right password is then refused (also by another
/// server on the database) until an unlock; the failed logins are valid AuditEvents.
async fn wrong_passwords_lock_the_account(s: &Server) {
    for i in 1..=4 {
        let r = s.login("dr.patel", &format!("guess-{i}")).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error"], "invalid_grant");
        assert_eq!(r.json()["error_description"], "invalid username or password");
    }
    // Four failures: the right password still works, and forgets them.
    let r = s.login("dr.patel", PATEL_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    for i in 1..=5 {
        let r = s.login("dr.patel", &format!("guess-again-{i}")).await;
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.json()["error_description"], "invalid username or password", "attempt {i}");
    }
    // Locked: the right password is refused, in the same OAuth shape, with Retry-After.
    let r = s.login("dr.patel", PATEL_PASSWORD).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_grant");
    let description = r.json()["error_description"].as_str().unwrap().to_string();
    assert!(description.contains("temporarily locked") && description.contains("15 minutes"), "{description}");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((880..=900).contains(&retry), "{retry}");
    assert!(r.json().get("access_token").is_none());
    // The lock is in the database's settings: another server (a restart) refuses too.
    let stored = s.engine.setting("auth.lock:user:dr.patel").await.unwrap().expect("lock state stored");
    assert!(stored.contains("locked_until"), "{stored}");
    let other = s.second().await;
    let r = s.token_at(&other.origin, &[("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)], None).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error_description"].as_str().unwrap().contains("temporarily locked"));
    // Another account is not affected.
    assert_eq!(s.engine.setting("auth.lock:user:nurse.jones").await.unwrap(), None);

    // The unlock, through the server (as an administrator does while a server owns an
    // SQLite directory; `tessera user unlock dr.patel` does the same): a clinician may not.
    let origin = s.http.origin.clone();
    let patel = s.auth.issue_user_token(&s.engine.domain(), "nurse.jones", None, None, None, None, tessera_auth::now()).unwrap();
    let r = s.send(&origin, "POST", "/admin/users/dr.patel/unlock", &[("authorization", &format!("Bearer {patel}"))], None).await;
    assert_eq!(r.status, 403, "{}", r.text());
    let r = s.send(&origin, "POST", "/admin/users/dr.patel/unlock", &[("authorization", &format!("Bearer {}", s.system_token))], None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["was_locked"], true);
    tokio::time::sleep(Duration::from_millis(1_200)).await; // the servers' caches (1 s here)
    let r = s.login("dr.patel", PATEL_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["refresh_token"].is_string());
    let r = s.token_at(&other.origin, &[("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)], None).await;
    assert_eq!(r.status, 200, "the other server sees the unlock: {}", r.text());

    // The audit trail: each wrong password, the lock, the refusals while locked, the unlock.
    let refused = s.events("auth-refused").await;
    let of_patel: Vec<&Value> = refused.iter().filter(|e| e["agent"][0]["who"]["reference"] == "Practitioner/dr.patel").collect();
    let with = |code: &str| of_patel.iter().filter(|e| field(e, "/outcomeDesc").starts_with(&format!("{code}:"))).count();
    assert_eq!(with("wrong-password"), 9, "{of_patel:#?}");
    assert_eq!(with("locked"), 2, "one refusal on each server");
    assert_eq!(of_patel.iter().filter(|e| field(e, "/outcomeDesc").contains("now locked for 15 minutes")).count(), 1);
    for e in &of_patel {
        assert_valid_login_event(e);
        assert_eq!(e["outcome"], "4");
        assert_eq!(field(e, "/agent/0/who/identifier/value"), "dr.patel");
        assert_eq!(field(e, "/agent/0/who/identifier/system"), "https://tessera.health/login-name");
        assert_eq!(field(e, "/agent/0/name"), "Dr Asha Patel");
        assert_eq!(field(e, "/agent/0/network/address"), "127.0.0.1");
    }
    let unlocks = s.events("unlock").await;
    assert_eq!(unlocks.len(), 1);
    assert_eq!(field(&unlocks[0], "/entity/0/what/reference"), "Practitioner/dr.patel");
    assert_eq!(field(&unlocks[0], "/subtype/0/code"), "110137");
    assert!(field(&unlocks[0], "/outcomeDesc").contains("dr.patel"));
    // Successful logins are recorded too.
    assert!(s.events("login").await.iter().filter(|e| e["agent"][0]["who"]["reference"] == "Practitioner/dr.patel").count() >= 3);
    // No password ever reaches the audit log.
    let all = s.all_audit_text().await;
    assert!(!all.contains(PATEL_PASSWORD) && !all.contains("guess-"), "a password is in the audit log");
}

/// A failed login for a name the domain does not hold: an identifier, no reference, no
/// name, no organisation — and no empty strings; served as such by the audit API.
async fn failed_login_audit_event_is_valid(s: &Server) {
    let r = s.login("dr.nobody", "whatever-1").await;
    assert_eq!(r.status, 400);
    let r = s.token(&[("grant_type", "client_credentials"), ("client_id", "rx1-interface-engine"), ("client_secret", "wrong")]).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"], "invalid_client");
    let bundle = s.get(&s.system_token, "AuditEvent?action=auth-refused&agent=dr.nobody").await;
    assert_eq!(bundle.status, 200, "{}", bundle.text());
    let bundle = bundle.json();
    let entries = bundle["entry"].as_array().expect("entries");
    assert_eq!(entries.len(), 1, "{bundle}");
    let event = &entries[0]["resource"];
    assert_valid_login_event(event);
    let who = &event["agent"][0]["who"];
    assert_eq!(field(who, "/identifier/value"), "dr.nobody");
    assert!(who.get("reference").is_none(), "no reference to an account that does not exist: {who}");
    assert!(event["agent"][0].get("name").is_none(), "a name only when known");
    assert!(field(event, "/outcomeDesc").starts_with("unknown-user:"), "{event}");
    assert_eq!(event["agent"].as_array().unwrap().len(), 2, "the user and the server, no empty organisation: {event}");
    // The service account: a client id, its reference and name (it exists).
    let client = s.events("auth-refused").await.into_iter().find(|e| e["agent"][0]["who"]["identifier"]["value"] == "rx1-interface-engine").expect("recorded");
    assert_valid_login_event(&client);
    assert_eq!(field(&client, "/agent/0/who/identifier/system"), "https://tessera.health/client-id");
    assert_eq!(field(&client, "/agent/0/who/reference"), "Device/rx1-interface-engine");
    assert!(field(&client, "/outcomeDesc").starts_with("wrong-secret:"));
    assert_eq!(field(&client, "/agent/1/who/reference"), "Organization/rx1");
}

/// Client credentials lock the same way, per client id.
async fn wrong_client_secrets_lock_the_client(s: &Server) {
    for _ in 0..5 {
        let r = s.token(&[("grant_type", "client_credentials"), ("client_id", "rx1-interface-engine"), ("client_secret", "nope")]).await;
        assert_eq!(r.status, 401, "{}", r.text());
    }
    let r = s.token(&[("grant_type", "client_credentials"), ("client_id", "rx1-interface-engine"), ("client_secret", ENGINE_SECRET)]).await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.json()["error_description"].as_str().unwrap().contains("temporarily locked"));
    assert!(r.header("retry-after").is_some());
    assert!(s.engine.setting("auth.lock:client:rx1-interface-engine").await.unwrap().is_some_and(|v| v.contains("locked_until")));
    let account = tessera_auth::Account::Client("rx1-interface-engine".into());
    s.engine.set_setting(&account.lock_key(), "").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let r = s.token(&[("grant_type", "client_credentials"), ("client_id", "rx1-interface-engine"), ("client_secret", ENGINE_SECRET)]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json().get("refresh_token").is_none(), "client credentials get no refresh token");
}

fn limited_policy() -> AuthPolicy {
    AuthPolicy { attempts_per_minute: 3, max_failures: 100, trust_forwarded_for: true, ..policy() }
}

/// The address limit: failures beyond the bucket get 429 with Retry-After — even with the
/// right password — while other addresses are not affected.
async fn address_rate_limit_answers_429(s: &Server) {
    let flood = Some("192.0.2.66");
    for i in 0..3 {
        let r = s.token_at(&s.http.origin, &[("grant_type", "password"), ("username", &format!("nobody-{i}")), ("password", "x")], flood).await;
        assert_eq!(r.status, 400, "{}", r.text());
    }
    let r = s.token_at(&s.http.origin, &[("grant_type", "password"), ("username", "nobody-3"), ("password", "x")], flood).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"], "slow_down");
    let retry: u64 = r.header("retry-after").expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&retry), "one attempt back every 20 s: {retry}");
    // Even the right password is not tried from that address now.
    let r = s.token_at(&s.http.origin, &[("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)], flood).await;
    assert_eq!(r.status, 429);
    // Client credentials are limited by the same bucket.
    let r = s
        .token_at(&s.http.origin, &[("grant_type", "client_credentials"), ("client_id", "rx1-interface-engine"), ("client_secret", ENGINE_SECRET)], flood)
        .await;
    assert_eq!(r.status, 429);
    // Another address signs in; successes do not use up its attempts.
    for _ in 0..5 {
        let r = s.token_at(&s.http.origin, &[("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)], Some("192.0.2.7")).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let limited: Vec<Value> = s.events("auth-refused").await.into_iter().filter(|e| field(e, "/outcomeDesc").starts_with("rate-limited:")).collect();
    assert_eq!(limited.len(), 3, "{limited:#?}");
    assert!(limited.iter().all(|e| e["agent"][0]["network"]["address"] == "192.0.2.66"));
}

/// Refused bearer tokens are each audited with their reason, never with the token.
async fn refused_bearer_tokens_are_audited(s: &Server) {
    let domain = s.engine.domain();
    let now = tessera_auth::now();
    let expired = s.auth.issue_user_token(&domain, "dr.patel", Some("doctor"), Some("rx1-general"), None, None, now - 24 * 3600).unwrap();
    let forged = Authenticator::new(&Authenticator::generate_secret()).issue_user_token(&domain, "dr.patel", None, None, None, None, now).unwrap();
    let malformed = "Zm9vYmFyYmF6cXV4.x7Qp9Lm2".to_string();
    let withdrawn = s.auth.issue_user_token(&domain, "dr.patel", Some("doctor"), Some("rx1-st-annes"), None, None, now).unwrap();
    assert_eq!(s.get(&withdrawn, "Patient?_count=1").await.status, 200, "valid before the role is withdrawn");
    let mut changed = (*domain).clone();
    changed.remove_role("dr.patel", "rx1-st-annes", "doctor").unwrap();
    s.engine.apply_domain(&Access::system("tessera"), changed).await.unwrap();

    let cases: [(&str, &str); 5] =
        [("expired", &expired), ("bad-signature", &forged), ("malformed", &malformed), ("withdrawn-role", &withdrawn), ("missing-token", "")];
    for (reason, token) in cases {
        let before = s.audit("auth-refused").await.len();
        let r = s.get(token, "Patient?_count=1").await;
        assert_eq!(r.status, 401, "{reason}: {}", r.text());
        assert!(r.header("www-authenticate").is_some_and(|w| w.starts_with("Bearer")));
        let records = s.audit("auth-refused").await;
        assert_eq!(records.len(), before + 1, "{reason}: one audit record");
        let event = tessera_audit::render_record(&records[0].event, records[0].seq).unwrap();
        let desc = field(&event, "/outcomeDesc");
        assert!(desc.starts_with(&format!("{reason}:")), "{reason}: {desc}");
        assert!(desc.contains("GET /fhir/Patient"), "the request refused: {desc}");
        assert_valid_login_event(&event);
        assert_eq!(field(&event, "/agent/0/network/address"), "127.0.0.1");
        let text = String::from_utf8_lossy(&records[0].event);
        if !token.is_empty() {
            let signature = token.rsplit('.').next().unwrap();
            assert!(!text.contains(token) && !text.contains(signature), "{reason}: the token is in the audit record: {text}");
        }
        match reason {
            // Verified tokens name their subject.
            "expired" | "withdrawn-role" => assert_eq!(field(&event, "/agent/0/who/reference"), "Practitioner/dr.patel", "{reason}"),
            // Unverifiable ones name nobody.
            _ => assert!(event["agent"][0]["who"].get("reference").is_none(), "{reason}: {event}"),
        }
    }
}

/// A context switch revokes the old token — at once on this server, within the cache
/// lifetime on the others; sessionless tokens (`tessera token`) are revoked by their id.
async fn context_switch_revokes_the_old_token(s: &Server) {
    let r = s.login("dr.patel", PATEL_PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let first = r.json();
    let old = first["access_token"].as_str().unwrap().to_string();
    assert_eq!(first["organisation"], "rx1-general");
    let other = s.second().await;
    assert_eq!(s.get(&old, "Patient?_count=1").await.status, 200);
    assert_eq!(s.get_at(&other.origin, &old, "Patient?_count=1").await.status, 200);
    let r = s.token(&[("grant_type", "urn:tessera:switch-context"), ("access_token", &old), ("organisation", "rx1-st-annes")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let switched = r.json();
    assert_eq!(switched["organisation"], "rx1-st-annes");
    assert!(switched["refresh_token"].is_string());
    let new = switched["access_token"].as_str().unwrap().to_string();
    let r = s.get(&old, "Patient?_count=1").await;
    assert_eq!(r.status, 401, "the old context's token is revoked: {}", r.text());
    assert!(r.text().contains("revoked"));
    assert_eq!(s.get(&new, "Patient?_count=1").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(s.get_at(&other.origin, &old, "Patient?_count=1").await.status, 401, "other servers after their cache");
    assert_eq!(s.get_at(&other.origin, &new, "Patient?_count=1").await.status, 200);
    // The old token cannot switch again either.
    let r = s.token(&[("grant_type", "urn:tessera:switch-context"), ("access_token", &old), ("organisation", "rx1-general")]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_grant");
    // Switching back gives a third token; the second is revoked then.
    let r = s.token(&[("grant_type", "urn:tessera:switch-context"), ("access_token", &new), ("organisation", "rx1-general")]).await;
    assert_eq!(r.status, 200);
    let third = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(s.get(&new, "Patient?_count=1").await.status, 401);
    assert_eq!(s.get(&old, "Patient?_count=1").await.status, 401, "back in the first context, the first token stays revoked");
    assert_eq!(s.get(&third, "Patient?_count=1").await.status, 200);

    // A token without a session (as `tessera token` issues them).
    let cli = s.auth.issue_user_token(&s.engine.domain(), "dr.patel", Some("doctor"), Some("rx1-general"), None, None, tessera_auth::now()).unwrap();
    assert_eq!(s.get(&cli, "Patient?_count=1").await.status, 200);
    let r = s.token(&[("grant_type", "urn:tessera:switch-context"), ("access_token", &cli), ("organisation", "rx1-st-annes")]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.get(&cli, "Patient?_count=1").await.status, 401);
    let jti = s.auth.verify(&cli).unwrap().jti;
    assert!(s.engine.setting(&format!("auth.revoked:{jti}")).await.unwrap().is_some());
    assert_eq!(s.get(r.json()["access_token"].as_str().unwrap(), "Patient?_count=1").await.status, 200);
    // The refusals are audited as revoked.
    let revoked = s.events("auth-refused").await.into_iter().filter(|e| field(e, "/outcomeDesc").starts_with("revoked:")).count();
    assert!(revoked >= 4, "{revoked}");
}

/// Refresh tokens rotate; an old one presented again revokes the family.
async fn refresh_rotation_and_reuse_detection(s: &Server) {
    let r = s.login("dr.patel", PATEL_PASSWORD).await;
    assert_eq!(r.status, 200);
    let (a1, r1) = (r.json()["access_token"].as_str().unwrap().to_string(), r.json()["refresh_token"].as_str().unwrap().to_string());
    // Stored hashed, with its session.
    let sid = r1.split('.').next().unwrap();
    let stored = s.engine.setting(&format!("auth.session:{sid}")).await.unwrap().expect("session stored");
    assert!(!stored.contains(&r1) && !stored.contains(r1.split('.').nth(1).unwrap()), "only a hash is stored: {stored}");
    assert!(stored.contains("\"user\":\"dr.patel\""), "{stored}");

    let refresh = |token: String| async move { s.token(&[("grant_type", "refresh_token"), ("refresh_token", &token)]).await };
    let r = refresh(r1.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (a2, r2) = (r.json()["access_token"].as_str().unwrap().to_string(), r.json()["refresh_token"].as_str().unwrap().to_string());
    assert_ne!(r2, r1);
    assert_ne!(a2, a1);
    assert_eq!(r.json()["organisation"], "rx1-general");
    assert_eq!(s.get(&a2, "Patient?_count=1").await.status, 200);
    assert_eq!(s.get(&a1, "Patient?_count=1").await.status, 200, "rotation alone does not revoke the earlier access token");
    let r = refresh(r2.clone()).await;
    assert_eq!(r.status, 200);
    let (a3, r3) = (r.json()["access_token"].as_str().unwrap().to_string(), r.json()["refresh_token"].as_str().unwrap().to_string());
    assert_eq!(s.get(&a3, "Patient?_count=1").await.status, 200);
    // A made-up token of the same session is refused without harm.
    let r = refresh(format!("{sid}.{}", "A".repeat(43))).await;
    assert_eq!(r.status, 400);
    assert_eq!(s.get(&a3, "Patient?_count=1").await.status, 200);

    // Reuse of r1: suspected theft — the family is revoked.
    let r = refresh(r1.clone()).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "invalid_grant");
    assert!(r.json()["error_description"].as_str().unwrap().contains("already used"));
    let r = refresh(r3.clone()).await;
    assert_eq!(r.status, 400, "the newest refresh token is revoked too: {}", r.text());
    for (name, token) in [("a1", &a1), ("a2", &a2), ("a3", &a3)] {
        assert_eq!(s.get(token, "Patient?_count=1").await.status, 401, "{name} is revoked with its family");
    }
    let reuse: Vec<Value> = s.events("auth-refused").await.into_iter().filter(|e| field(e, "/outcomeDesc").starts_with("refresh-reuse:")).collect();
    assert_eq!(reuse.len(), 1);
    assert_eq!(reuse[0]["outcome"], "8", "a serious failure");
    assert_eq!(field(&reuse[0], "/agent/0/who/reference"), "Practitioner/dr.patel");
    let all = s.all_audit_text().await;
    for t in [&r1, &r2, &r3, &a1, &a3] {
        assert!(!all.contains(t.as_str()), "a token is in the audit log");
    }

    // After a switch, the pre-switch refresh token is used up.
    let r = s.login("dr.patel", PATEL_PASSWORD).await;
    let (a, rt) = (r.json()["access_token"].as_str().unwrap().to_string(), r.json()["refresh_token"].as_str().unwrap().to_string());
    let r = s.token(&[("grant_type", "urn:tessera:switch-context"), ("access_token", &a), ("organisation", "rx1-st-annes")]).await;
    assert_eq!(r.status, 200);
    let switched_rt = r.json()["refresh_token"].as_str().unwrap().to_string();
    let r = refresh(switched_rt).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["organisation"], "rx1-st-annes", "the session follows the switch");
    assert_eq!(refresh(rt).await.status, 400);
    assert_eq!(s.get(r.json()["access_token"].as_str().unwrap(), "Patient?_count=1").await.status, 401, "reuse revoked the session");
}

fn flood_policy() -> AuthPolicy {
    AuthPolicy { audit_window_seconds: 2, audit_burst: 3, ..policy() }
}

/// A flood of refused tokens records a burst, then one summary count.
async fn refusal_floods_are_summarised(s: &Server) {
    let before = s.audit("auth-refused").await.len();
    for i in 0..25 {
        assert_eq!(s.get(&format!("junk-{i}"), "Patient?_count=1").await.status, 401);
    }
    assert_eq!(s.audit("auth-refused").await.len(), before + 3, "only the burst is recorded one by one");
    tokio::time::sleep(Duration::from_millis(5_000)).await;
    let events = s.events("auth-refused").await;
    assert_eq!(events.len(), before + 4, "plus one summary");
    let summary = &events[0];
    let desc = field(summary, "/outcomeDesc");
    assert!(desc.starts_with("22 further refusals from 127.0.0.1"), "{desc}");
    assert!(desc.contains("malformed: 22"), "{desc}");
    assert_valid_login_event(summary);
}

macro_rules! on_both_backends {
    ($($name:ident => $policy:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(s) = super::start(super::Backend::Sqlite, super::$policy()).await { super::$name(&s).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(s) = super::start(super::Backend::Postgres, super::$policy()).await { super::$name(&s).await; }
            }
        )* }
    };
}

on_both_backends!(
    wrong_passwords_lock_the_account => policy,
    failed_login_audit_event_is_valid => policy,
    wrong_client_secrets_lock_the_client => policy,
    address_rate_limit_answers_429 => limited_policy,
    refused_bearer_tokens_are_audited => policy,
    context_switch_revokes_the_old_token => policy,
    refresh_rotation_and_reuse_detection => policy,
    refusal_floods_are_summarised => flood_policy,
);
