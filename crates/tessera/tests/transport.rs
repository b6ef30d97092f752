//! What browsers and FHIR client libraries expect of the transport, over real HTTP on both
//! backends: CORS (preflights without a token, allowed and refused origins, exposed
//! headers), compression both ways (and a gzip bomb refused with 413 while the server stays
//! up), an OperationOutcome on every error (405 with `Allow`, unknown routes, extractor
//! rejections), and a CapabilityStatement that tells the truth — its security (SMART,
//! oauth-uris), and every declared interaction, search parameter and operation is called.

mod common;
use common::{Backend, Reply, Server};
use serde_json::{json, Map, Value};
use std::io::{Read, Write};
use tessera_engine::EngineConfig;
use tessera_fhir::definitions::{self, ElementDef, ElementType, Primitive, Target, TypeDef};

/// An origin the test server allows, and one it does not.
const APP: &str = "https://app.example.org";
const EVIL: &str = "https://evil.example.net";

async fn start_with_cors(backend: Backend) -> Option<Server> {
    common::start_configured(backend, EngineConfig::default(), |h| h.cors_origins = vec![APP.to_string(), "http://localhost:*".to_string()]).await
}

/// Each test once per backend, on a server that allows [`APP`] and `http://localhost:*`.
macro_rules! transport_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(s) = super::start_with_cors($crate::common::Backend::Sqlite).await { super::$name(&s).await; }
            }
        )* }
        mod postgres { $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(s) = super::start_with_cors($crate::common::Backend::Postgres).await { super::$name(&s).await; }
            }
        )* }
    };
}

transport_tests!(
    cors_preflights_and_requests,
    responses_and_requests_are_compressed,
    a_gzip_bomb_is_refused,
    every_error_is_an_operation_outcome,
    operation_definitions_are_served,
    capability_statement_tells_the_truth,
);

mod without_cors {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        if let Some(s) = crate::common::start(crate::common::Backend::Sqlite).await {
            super::no_cors_unless_configured(&s).await;
        }
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres() {
        if let Some(s) = crate::common::start(crate::common::Backend::Postgres).await {
            super::no_cors_unless_configured(&s).await;
        }
    }
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body[..r.body.len().min(600)]).into_owned()
}

/// The reply is an OperationOutcome; its first issue's code and diagnostics.
fn outcome(r: &Reply) -> (String, String) {
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{} is not JSON ({e}): {}", r.status, text(r)));
    assert_eq!(v["resourceType"], "OperationOutcome", "{} {v}", r.status);
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/fhir+json"), "{:?}", r.header("content-type"));
    (v["issue"][0]["code"].as_str().unwrap_or("").to_string(), v["issue"][0]["diagnostics"].as_str().unwrap_or("").to_string())
}

/// Every value of header `name`, joined by commas.
fn all(r: &Reply, name: &str) -> Option<String> {
    let values: Vec<&str> = r.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
    (!values.is_empty()).then(|| values.join(","))
}

fn has_token(list: Option<String>, token: &str) -> bool {
    list.unwrap_or_default().split(',').any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out).expect("a gzip body");
    out
}

async fn preflight(s: &Server, path: &str, origin: &str, method: &str) -> Reply {
    let headers = [("origin", origin), ("access-control-request-method", method), ("access-control-request-headers", "authorization, content-type, if-none-exist, prefer"), ("authorization", "")];
    s.request("OPTIONS", path, &headers, None).await
}

async fn cors_preflights_and_requests(s: &Server) {
    // A preflight from an allowed origin, without a token, on the API, the token endpoint
    // and SMART discovery.
    for (path, origin, method) in [
        ("Patient", APP, "POST"),
        ("Patient/123", APP, "PUT"),
        ("metadata", APP, "GET"),
        ("/auth/token", APP, "POST"),
        ("/.well-known/smart-configuration", APP, "GET"),
        ("Observation?code=x", "http://localhost:5173", "GET"),
        ("Patient/1", "http://localhost", "DELETE"),
    ] {
        let r = preflight(s, path, origin, method).await;
        assert!((200..300).contains(&r.status), "{path}: {} {}", r.status, text(&r));
        assert_eq!(r.header("access-control-allow-origin").as_deref(), Some(origin), "{path}");
        assert!(has_token(r.header("access-control-allow-methods"), method), "{path}: {:?}", r.header("access-control-allow-methods"));
        for h in ["authorization", "content-type", "prefer", "if-match", "if-none-exist", "if-none-match", "if-modified-since"] {
            assert!(has_token(r.header("access-control-allow-headers"), h), "{path}: {h} in {:?}", r.header("access-control-allow-headers"));
        }
        assert!(r.header("access-control-max-age").is_some());
    }
    // From an origin that is not allowed (or that only looks like one): no CORS headers.
    for origin in [EVIL, "https://app.example.org.evil.net", "http://app.example.org", "https://localhost:5173", "null"] {
        let r = preflight(s, "Patient", origin, "POST").await;
        assert_eq!(r.header("access-control-allow-origin"), None, "{origin}");
    }
    // OPTIONS that is not a preflight goes to the router: 405 with an OperationOutcome.
    let r = s.request("OPTIONS", "Patient", &[], None).await;
    assert_eq!(r.status, 405, "{}", text(&r));
    outcome(&r);

    // Actual requests from the page: the origin allowed, the headers it must read exposed.
    let created = s.request("POST", "Patient", &[("origin", APP)], Some(br#"{"resourceType":"Patient","name":[{"family":"Cors"}]}"#)).await;
    assert_eq!(created.status, 201, "{}", text(&created));
    assert_eq!(created.header("access-control-allow-origin").as_deref(), Some(APP));
    for h in ["etag", "location", "content-location", "last-modified"] {
        assert!(has_token(created.header("access-control-expose-headers"), h), "{h} exposed: {:?}", created.header("access-control-expose-headers"));
    }
    assert!(has_token(all(&created, "vary"), "origin"), "Vary: Origin in {:?}", all(&created, "vary"));
    let r = s.request("GET", "Patient?family=Cors", &[("origin", "http://localhost:3000")], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some("http://localhost:3000"));
    let r = s.request("GET", "Patient?family=Cors", &[("origin", EVIL)], None).await;
    assert_eq!(r.status, 200, "the request is served; the browser withholds it from the page");
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Errors carry the CORS headers too, so that the page can read the OperationOutcome.
    let r = s.request("GET", "Patient", &[("origin", APP), ("authorization", "")], None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some(APP));
    outcome(&r);
    // The public metadata, and the CapabilityStatement says CORS is on.
    let r = s.request("GET", "metadata", &[("origin", APP), ("authorization", "")], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin").as_deref(), Some(APP));
    assert_eq!(r.json()["rest"][0]["security"]["cors"], true);
}

async fn no_cors_unless_configured(s: &Server) {
    let r = preflight(s, "Patient", APP, "POST").await;
    assert_eq!(r.header("access-control-allow-origin"), None);
    // Let through without a token, and refused by the router.
    assert_eq!(r.status, 405, "{}", text(&r));
    outcome(&r);
    let r = s.request("GET", "Patient", &[("origin", APP)], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(s.get("metadata").await.json()["rest"][0]["security"]["cors"], false);
}

async fn responses_and_requests_are_compressed(s: &Server) {
    // The CapabilityStatement is large: gzip when asked, the same document once inflated.
    let plain = s.request("GET", "metadata", &[], None).await;
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("content-encoding"), None, "not compressed unless asked");
    let zipped = s.request("GET", "metadata", &[("accept-encoding", "gzip")], None).await;
    assert_eq!(zipped.status, 200);
    assert_eq!(zipped.header("content-encoding").as_deref(), Some("gzip"));
    assert!(has_token(all(&zipped, "vary"), "accept-encoding"), "{:?}", all(&zipped, "vary"));
    assert!(zipped.body.len() * 5 < plain.body.len(), "{} → {}", plain.body.len(), zipped.body.len());
    assert_eq!(gunzip(&zipped.body), plain.body.to_vec(), "the inflated body is the plain one");
    // Brotli is preferred when offered.
    let br = s.request("GET", "metadata", &[("accept-encoding", "br, gzip")], None).await;
    assert_eq!(br.header("content-encoding").as_deref(), Some("br"));
    assert!(br.body.len() < zipped.body.len() * 2);
    // Small answers (health) are sent as they are.
    let r = s.request("GET", "/healthz", &[("accept-encoding", "gzip")], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-encoding"), None);

    // A gzip request body: a resource and a transaction Bundle.
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Zipped", "given": ["Ann"]}]});
    let r = s.request("POST", "Patient", &[("content-encoding", "gzip")], Some(&gzip(&serde_json::to_vec(&patient).unwrap()))).await;
    assert_eq!(r.status, 201, "{}", text(&r));
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(s.get(&format!("Patient/{id}")).await.json()["name"][0]["family"], "Zipped");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": (0..50).map(|i| json!({
        "resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("zipped {i}")}, "subject": {"reference": format!("Patient/{id}")}},
        "request": {"method": "POST", "url": "Observation"}})).collect::<Vec<_>>()});
    let r = s.request("POST", "", &[("content-encoding", "gzip")], Some(&gzip(&serde_json::to_vec(&bundle).unwrap()))).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    // Compressed both ways, and a searchset compares with its plain form.
    let q = format!("Observation?subject=Patient/{id}&_count=100&_sort=_id");
    let plain = s.get(&q).await.json();
    let zipped = s.request("GET", &q, &[("accept-encoding", "gzip")], None).await;
    assert_eq!(zipped.header("content-encoding").as_deref(), Some("gzip"));
    let inflated: Value = serde_json::from_slice(&gunzip(&zipped.body)).unwrap();
    assert_eq!(inflated["entry"], plain["entry"]);
    assert_eq!(plain["entry"].as_array().unwrap().len(), 50);
    // A body that is not gzip, and an encoding not supported: OperationOutcomes.
    let r = s.request("POST", "Patient", &[("content-encoding", "gzip")], Some(br#"{"resourceType":"Patient"}"#)).await;
    assert_eq!(r.status, 400, "{}", text(&r));
    outcome(&r);
    let r = s.request("POST", "Patient", &[("content-encoding", "compress")], Some(b"xx")).await;
    assert_eq!(r.status, 415, "{}", text(&r));
    let (code, message) = outcome(&r);
    assert_eq!(code, "not-supported");
    assert!(message.contains("gzip"), "{message}");
}

/// The process's peak resident size, in bytes (Linux).
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kb| kb * 1024)
}

/// 1 GiB of zeros, gzip-compressed (about 1 MB).
fn gzip_bomb() -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::with_capacity(1 << 21), flate2::Compression::default());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..1024 {
        e.write_all(&zeros).unwrap();
    }
    e.finish().unwrap()
}

async fn a_gzip_bomb_is_refused(s: &Server) {
    let bomb = gzip_bomb();
    assert!(bomb.len() < 4 << 20, "{}", bomb.len());
    let before = peak_rss();
    for path in ["Patient", "", "Patient/_search"] {
        let started = std::time::Instant::now();
        let content_type = if path.ends_with("_search") { "application/x-www-form-urlencoded" } else { "application/fhir+json" };
        let r = s.request("POST", path, &[("content-encoding", "gzip"), ("content-type", content_type)], Some(&bomb)).await;
        assert_eq!(r.status, 413, "{path}: {}", text(&r));
        let (code, message) = outcome(&r);
        assert_eq!(code, "too-long");
        assert!(message.contains("limit"), "{message}");
        assert!(started.elapsed() < std::time::Duration::from_secs(30), "{path}: refused in {:?}", started.elapsed());
    }
    if let (Some(before), Some(after)) = (before, peak_rss()) {
        // The server holds at most the body limit (8 MB in tests), never the inflated GiB.
        assert!(after.saturating_sub(before) < 256 << 20, "peak RSS grew by {} MB", (after - before) >> 20);
    }
    // The server is up and serves the next request on a fresh connection.
    assert_eq!(s.get("/healthz").await.status, 200);
    let r = s.post("Patient", &json!({"resourceType": "Patient"})).await;
    assert_eq!(r.status, 201);
    // Within the limit, inflated bodies are accepted.
    let r = s.request("POST", "Patient", &[("content-encoding", "gzip")], Some(&gzip(br#"{"resourceType":"Patient","gender":"female"}"#))).await;
    assert_eq!(r.status, 201, "{}", text(&r));
}

async fn every_error_is_an_operation_outcome(s: &Server) {
    // A route without that method: 405, Allow, OperationOutcome.
    for (method, path, allowed) in [("DELETE", "metadata", "GET"), ("POST", "_history", "GET"), ("PUT", "Patient/1/_history", "GET"), ("PATCH", "/healthz", "GET"), ("GET", "/auth/token", "POST")] {
        let r = s.request(method, path, &[], None).await;
        assert_eq!(r.status, 405, "{method} {path}: {}", text(&r));
        assert!(has_token(r.header("allow"), allowed), "{method} {path}: Allow {:?}", r.header("allow"));
        let (code, message) = outcome(&r);
        assert_eq!(code, "not-supported");
        assert!(message.contains(method) && message.contains(allowed), "{message}");
    }
    // Unknown routes: 404, OperationOutcome.
    for path in ["/nowhere", "/fhir/Patient/1/_history/1/more", "/admin/nothing"] {
        let r = s.request("GET", path, &[], None).await;
        assert_eq!(r.status, 404, "{path}: {}", text(&r));
        assert_eq!(outcome(&r).0, "not-supported");
    }
    // An unknown type, an unknown id.
    assert_eq!(s.get("Patientx/1").await.status, 404);
    let r = s.get("Patient/does-not-exist").await;
    assert_eq!((r.status, outcome(&r).0.as_str()), (404, "not-found"));
    // Rejections of axum's extractors: a body just above /admin/domain's limit (2 MiB).
    let big = vec![b'#'; (2 << 20) + 1];
    let r = s.request("PUT", "/admin/domain", &[("content-type", "application/toml")], Some(&big)).await;
    assert_eq!(r.status, 413, "{}", text(&r));
    assert_eq!(outcome(&r).0, "too-long");
    // Without a token, and with a bad one.
    let r = s.request("GET", "Patient", &[("authorization", "")], None).await;
    assert_eq!((r.status, outcome(&r).0.as_str()), (401, "login"));
    let r = s.request("GET", "Patient", &[("authorization", "Bearer nonsense")], None).await;
    assert_eq!(r.status, 401);
    outcome(&r);
    // Content negotiation and media types.
    let r = s.request("GET", "Patient", &[("accept", "application/fhir+xml")], None).await;
    assert_eq!(r.status, 406);
    outcome(&r);
    let r = s.request("POST", "Patient", &[("content-type", "text/plain")], Some(b"hello")).await;
    assert_eq!(r.status, 415);
    outcome(&r);
}

async fn operation_definitions_are_served(s: &Server) {
    // Public, like the CapabilityStatement.
    let r = s.request("GET", "OperationDefinition", &[("authorization", "")], None).await;
    assert_eq!(r.status, 200, "{}", text(&r));
    let list = r.json();
    assert_eq!(list["type"], "searchset");
    let ids: Vec<String> = list["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    for id in ["Patient-break-glass", "Patient-access-log", "Location-worklist"] {
        assert!(ids.iter().any(|i| i == id), "{id} in {ids:?}");
        let r = s.request("GET", &format!("OperationDefinition/{id}"), &[("authorization", "")], None).await;
        assert_eq!(r.status, 200, "{id}: {}", text(&r));
        let d = r.json();
        assert_eq!(d["resourceType"], "OperationDefinition");
        assert_eq!(d["url"], format!("{}/OperationDefinition/{id}", s.base));
        assert_eq!(d["instance"], true);
        assert!(!d["parameter"].as_array().unwrap().is_empty());
    }
    let r = s.get("OperationDefinition?code=worklist").await;
    assert_eq!(r.json()["total"], 1);
    assert_eq!(r.json()["entry"][0]["resource"]["id"], "Location-worklist");
    let r = s.get(&format!("OperationDefinition?url={}/OperationDefinition/Patient-access-log", s.base)).await;
    assert_eq!(r.json()["entry"][0]["resource"]["code"], "access-log");
    assert_eq!(s.get("OperationDefinition?name=patient_b").await.json()["total"], 1);
    let r = s.get("OperationDefinition?status=active").await;
    assert_eq!(r.status, 400);
    outcome(&r);
    let r = s.request("GET", "OperationDefinition/nope", &[("authorization", "")], None).await;
    assert_eq!((r.status, outcome(&r).0.as_str()), (404, "not-found"));
    // Read-only server metadata.
    let r = s.put("OperationDefinition/Location-worklist", &json!({"resourceType": "OperationDefinition"})).await;
    assert_eq!(r.status, 405);
    outcome(&r);
}

// ---------------------------------------------------------------------------------------
// The CapabilityStatement, called.

/// A value of `p` for FHIR type `t` that passes validation.
fn primitive(p: Primitive) -> Value {
    match p {
        Primitive::Base64Binary => json!("AAAA"),
        Primitive::Boolean => json!(true),
        Primitive::Canonical | Primitive::Uri | Primitive::Url => json!("http://example.org/x"),
        Primitive::Date => json!("2020-01-01"),
        Primitive::DateTime | Primitive::Instant => json!("2020-01-01T00:00:00Z"),
        Primitive::Decimal | Primitive::Integer | Primitive::PositiveInt => json!(1),
        Primitive::UnsignedInt => json!(0),
        Primitive::Oid => json!("urn:oid:1.2.3"),
        Primitive::Time => json!("00:00:00"),
        Primitive::Uuid => json!("urn:uuid:c757873d-ec9a-4326-a141-556f43239520"),
        Primitive::Xhtml => json!("<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"),
        Primitive::Code | Primitive::Id | Primitive::Markdown | Primitive::String => json!("x"),
    }
}

fn capitalised(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

/// The value sets of the R4 bindings the server checks (`definitions/bindings.json.gz`:
/// `valueSets`: url → `[[system, codes or null]]`, `codeSystems`: url → codes).
fn shipped_value_sets() -> &'static Value {
    static SETS: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    SETS.get_or_init(|| {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tessera-fhir/definitions/bindings.json.gz");
        let mut json = Vec::new();
        std::fs::read(path).ok().and_then(|gz| flate2::read::GzDecoder::new(&gz[..]).read_to_end(&mut json).ok()).and_then(|_| serde_json::from_slice(&json).ok()).unwrap_or(Value::Null)
    })
}

/// A code of a required binding's value set: `(system, code)`.
fn bound_code(e: &ElementDef) -> Option<(String, String)> {
    let b = e.binding.as_ref().filter(|b| b.strength == definitions::BindingStrength::Required)?;
    let sets = shipped_value_sets();
    let part = sets["valueSets"][b.value_set.split('|').next().unwrap_or("")].as_array()?.first()?;
    let system = part[0].as_str()?;
    let code = match part[1].as_array() {
        Some(codes) => codes.first()?.as_str()?,
        None => sets["codeSystems"][system].as_array()?.first()?.as_str()?,
    };
    Some((system.to_string(), code.to_string()))
}

fn put(m: &mut Map<String, Value>, e: &ElementDef, depth: usize) {
    let t = &e.types[0];
    let key = if e.choice { format!("{}{}", e.name, capitalised(&t.code)) } else { e.name.clone() };
    let v = match (bound_code(e), t.code.as_str()) {
        (Some((_, code)), "code") => json!(code),
        (Some((system, code)), "Coding") => json!({"system": system, "code": code}),
        (Some((system, code)), "CodeableConcept") => json!({"coding": [{"system": system, "code": code}]}),
        _ => sample(t, depth + 1),
    };
    m.insert(key, if e.many { json!([v]) } else { v });
}

fn required(td: &TypeDef, depth: usize) -> Map<String, Value> {
    let mut m = Map::new();
    for i in td.required() {
        put(&mut m, &td.elements[i], depth);
    }
    m
}

fn sample(t: &ElementType, depth: usize) -> Value {
    match t.target {
        Target::Primitive(p) => primitive(p),
        Target::Resource => json!({"resourceType": "Basic", "code": {"text": "x"}}),
        Target::Complex(id) => match t.code.as_str() {
            "Reference" => json!({"display": "x"}),
            "Extension" => json!({"url": "http://example.org/x", "valueString": "x"}),
            "Narrative" => json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>"}),
            _ => {
                let td = definitions::definitions().get(id);
                let mut m = required(td, depth);
                if m.is_empty() && depth < 8 {
                    // Elements must have a value or children: the first that can carry one.
                    if let Some(e) = td.elements.iter().find(|e| !matches!(e.name.as_str(), "id" | "extension" | "modifierExtension") && !e.types.is_empty()) {
                        put(&mut m, e, depth);
                    }
                }
                Value::Object(m)
            }
        },
    }
}

/// A minimal valid resource of `ty`: its required elements, filled.
fn minimal(ty: &str) -> Value {
    let td = definitions::definitions().resource(ty).unwrap_or_else(|| panic!("{ty}"));
    let mut m = Map::new();
    m.insert("resourceType".into(), json!(ty));
    m.extend(required(td, 0));
    // The required elements alone break some invariants of R4: what each type adds.
    let extra = match ty {
        "AllergyIntolerance" => json!({"clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]}}),
        "Appointment" => json!({"participant": [{"actor": {"display": "x"}, "status": "accepted"}]}),
        "AppointmentResponse" => json!({"actor": {"display": "x"}}),
        "Bundle" => json!({"type": "collection"}),
        "CapabilityStatement" => json!({"kind": "capability", "software": {"name": "x"}, "rest": [{"mode": "server"}]}),
        "Consent" => json!({"policyRule": {"text": "x"}}),
        "EventDefinition" => json!({"trigger": [{"type": "named-event", "name": "x"}]}),
        "ImmunizationRecommendation" => json!({"recommendation": [{"vaccineCode": [{"text": "x"}], "forecastStatus": {"text": "x"}}]}),
        "InsurancePlan" | "Organization" => json!({"name": "x"}),
        "Linkage" => json!({"item": [{"type": "source", "resource": {"display": "x"}}, {"type": "alternate", "resource": {"display": "y"}}]}),
        "StructureDefinition" => json!({"type": "Basic", "kind": "resource", "abstract": false, "derivation": "constraint",
            "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Basic", "differential": {"element": [{"id": "Basic", "path": "Basic"}]}}),
        "TerminologyCapabilities" => json!({"kind": "capability", "software": {"name": "x"}}),
        _ => json!({}),
    };
    if let Value::Object(extra) = extra {
        m.extend(extra);
    }
    Value::Object(m)
}

/// A value of search parameter `name` (of `kind`) on `ty` that the server should accept.
fn search_value(ty: &str, name: &str, kind: &str) -> String {
    let def = definitions::search_parameters_for(ty).find(|p| p.code == name);
    match kind {
        "token" => "BTG".into(),
        "string" => "x".into(),
        "date" => "ge2020-01-01".into(),
        "number" | "quantity" => "1".into(),
        "uri" => "http://example.org/x".into(),
        "reference" => match def.and_then(|d| d.target.first()) {
            Some(target) => format!("{target}/x"),
            None => "x".into(),
        },
        "composite" => {
            let parts: Vec<String> = def
                .map(|d| d.component.iter().filter_map(|c| definitions::search_parameters().iter().find(|p| p.url == c.definition)).map(|p| component_value(&p.kind)).collect())
                .unwrap_or_default();
            parts.join("$")
        }
        _ => match name {
            "near" => "1|1|1|km".into(),
            _ => "x".into(),
        },
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

fn component_value(kind: &str) -> String {
    match kind {
        "date" => "2020-01-01",
        "number" | "quantity" => "1",
        "uri" => "http://example.org/x",
        _ => "x",
    }
    .to_string()
}

/// What went wrong with one declared capability.
struct Findings(Vec<String>);

impl Findings {
    /// Records `what` unless `r` is answered: not 404/405/501 and not a server error (and
    /// a 2xx where `success` is required).
    fn check(&mut self, what: &str, r: &Reply, success: bool) -> bool {
        let missing = matches!(r.status, 404 | 405 | 501) || r.status >= 500;
        if missing || (success && !(200..300).contains(&r.status)) {
            self.0.push(format!("{what}: {} {}", r.status, text(r).replace('\n', " ")));
            false
        } else {
            true
        }
    }
}

/// The call of one declared operation, by code, resource type and level (`id`: instance).
fn operation_call(code: &str, ty: &str, id: Option<&str>, system: bool) -> Option<(&'static str, String, Option<Value>)> {
    let at = match (system, id) {
        (true, _) => format!("${code}"),
        (false, Some(id)) => format!("{ty}/{id}/${code}"),
        (false, None) => format!("{ty}/${code}"),
    };
    let gender = "system=http://hl7.org/fhir/administrative-gender";
    let params = |p: Value| Some(json!({"resourceType": "Parameters", "parameter": p}));
    Some(match code {
        "validate" => ("POST", at, params(json!([{"name": "resource", "resource": minimal(ty)}]))),
        "meta" => ("GET", at, None),
        "meta-add" | "meta-delete" => ("POST", at, params(json!([{"name": "meta", "valueMeta": {"tag": [{"system": "http://example.org/tags", "code": "checked"}]}}]))),
        "everything" => ("GET", at, None),
        "expand" if id.is_none() => ("GET", format!("{at}?url=http://hl7.org/fhir/ValueSet/administrative-gender"), None),
        "validate-code" if ty == "ValueSet" && id.is_none() => ("GET", format!("{at}?url=http://hl7.org/fhir/ValueSet/administrative-gender&{gender}&code=male"), None),
        "validate-code" if id.is_none() => ("GET", format!("{at}?url=http://hl7.org/fhir/administrative-gender&code=male"), None),
        "lookup" => ("GET", format!("{at}?{gender}&code=male"), None),
        "subsumes" if id.is_none() => ("GET", format!("{at}?{gender}&codeA=male&codeB=male"), None),
        "translate" if id.is_none() => ("GET", format!("{at}?{gender}&code=male"), None),
        "expand" | "validate-code" | "subsumes" | "translate" => ("GET", format!("{at}?code=x&codeA=x&codeB=x&system=http://example.org/x"), None),
        "break-glass" => ("POST", at, params(json!([{"name": "reason", "valueCoding": {"code": "ETREAT"}}, {"name": "text", "valueString": "transport test"}]))),
        "access-log" => ("GET", at, None),
        "worklist" => ("GET", format!("{at}?kind=encounter"), None),
        "match" => ("POST", at, params(json!([{"name": "resource", "resource": {"resourceType": "Patient", "name": [{"family": "Nobody"}], "birthDate": "1970-01-01"}}]))),
        // Refused before any record is looked up: the operation is there.
        "ihe-pix" => ("GET", format!("{at}?sourceIdentifier=urn:x|1&targetSystem=urn:unknown"), None),
        "merge" => ("POST", at, params(json!([{"name": "source-patient", "valueReference": {"reference": "Patient/x"}}, {"name": "target-patient", "valueReference": {"reference": "Patient/x"}}, {"name": "preview", "valueBoolean": true}]))),
        "unmerge" => ("POST", at, params(json!([{"name": "source-patient", "valueReference": {"reference": "Organization/x"}}]))),
        "resolve" => ("POST", at, params(json!([{"name": "decision", "valueCode": "reconsider"}]))),
        "effective" => ("GET", at, None),
        "change-request" => ("POST", at, params(json!([{"name": "title", "valueString": "transport test"}]))),
        "approve" => ("POST", at, params(json!([{"name": "decision", "valueCode": "approve"}]))),
        "apply" | "withdraw" => ("POST", at, params(json!([]))),
        _ => return None,
    })
}

async fn call(s: &Server, method: &str, path: &str, body: Option<&Value>, headers: &[(&str, &str)]) -> Reply {
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    s.request(method, path, headers, bytes.as_deref()).await
}

async fn capability_statement_tells_the_truth(s: &Server) {
    let r = s.request("GET", "metadata", &[("authorization", "")], None).await;
    assert_eq!(r.status, 200);
    let cs = r.json();
    let rest = &cs["rest"][0];

    // Security: SMART, the token endpoint (the one discovery names), nothing that does not exist.
    let security = &rest["security"];
    assert_eq!(security["cors"], true);
    let coding = &security["service"][0]["coding"][0];
    assert_eq!((coding["system"].as_str(), coding["code"].as_str()), (Some("http://terminology.hl7.org/CodeSystem/restful-security-service"), Some("SMART-on-FHIR")));
    let oauth = security["extension"].as_array().unwrap().iter().find(|e| e["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris").expect("oauth-uris");
    let uris: Map<String, Value> = oauth["extension"].as_array().unwrap().iter().map(|e| (e["url"].as_str().unwrap().to_string(), e["valueUri"].clone())).collect();
    assert_eq!(uris.keys().collect::<Vec<_>>(), ["token", "authorize"], "only the endpoints that exist");
    let smart = s.request("GET", "/.well-known/smart-configuration", &[("authorization", "")], None).await.json();
    assert_eq!(smart, s.request("GET", ".well-known/smart-configuration", &[("authorization", "")], None).await.json());
    assert_eq!(uris["token"], smart["token_endpoint"]);
    assert_eq!(uris["authorize"], smart["authorization_endpoint"]);
    // The authorization endpoint is served (an unknown app is told so, not a 404).
    let authorize = s.request("GET", "/oauth/authorize?client_id=nobody", &[("authorization", "")], None).await;
    assert_eq!(authorize.status, 400);
    for required in ["token_endpoint", "authorization_endpoint", "code_challenge_methods_supported", "grant_types_supported", "capabilities", "scopes_supported"] {
        assert!(smart.get(required).is_some(), "smart-configuration has {required}: {smart}");
    }
    for absent in ["revocation_endpoint", "introspection_endpoint", "registration_endpoint"] {
        assert!(smart.get(absent).is_none(), "no {absent}: the server has none");
    }
    let token_path = uris["token"].as_str().unwrap().strip_prefix(s.base.trim_end_matches("/fhir")).expect("token endpoint on this server").to_string();
    let r = s.request("POST", &token_path, &[("content-type", "application/x-www-form-urlencoded"), ("authorization", "")], Some(b"grant_type=client_credentials&client_id=nobody&client_secret=x")).await;
    assert!(matches!(r.status, 400 | 401), "the token endpoint answers: {}", r.status);

    let mut findings = Findings(Vec::new());
    let resources = rest["resource"].as_array().unwrap();
    assert_eq!(resources.len(), definitions::resource_types().count());

    // Every declared interaction of every type, on a resource created for it.
    let mut ids: std::collections::HashMap<String, String> = Default::default();
    for entry in resources {
        let ty = entry["type"].as_str().unwrap();
        let declared: Vec<&str> = entry["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        let mut id = None;
        if declared.contains(&"create") {
            let r = call(s, "POST", ty, Some(&minimal(ty)), &[]).await;
            if findings.check(&format!("create {ty}"), &r, true) {
                id = r.json()["id"].as_str().map(str::to_string);
            }
        } else {
            // Generated types: read one the server lists.
            let r = s.get(&format!("{ty}?_count=1")).await;
            id = serde_json::from_slice::<Value>(&r.body).ok().and_then(|b| b["entry"][0]["resource"]["id"].as_str().map(str::to_string));
            if id.is_none() {
                findings.0.push(format!("{ty}: none listed to read: {} {}", r.status, text(&r)));
            }
        }
        let Some(id) = id else { continue };
        ids.insert(ty.to_string(), id.clone());
        for interaction in &declared {
            let (method, path, body) = match *interaction {
                "create" => continue,
                "delete" => continue, // last, below
                "read" => ("GET", format!("{ty}/{id}"), None),
                "vread" => ("GET", format!("{ty}/{id}/_history/1"), None),
                "history-instance" => ("GET", format!("{ty}/{id}/_history"), None),
                "history-type" => ("GET", format!("{ty}/_history"), None),
                "search-type" => ("GET", ty.to_string(), None),
                "update" => {
                    let r = s.request("GET", &format!("{ty}/{id}"), &[("accept", "application/fhir+json")], None).await;
                    let mut current: Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| minimal(ty));
                    current["id"] = json!(id);
                    current.as_object_mut().unwrap().remove("meta");
                    ("PUT", format!("{ty}/{id}"), Some(current))
                }
                "patch" => ("PATCH", format!("{ty}/{id}"), Some(json!([{"op": "add", "path": "/language", "value": "en"}]))),
                other => {
                    findings.0.push(format!("{ty}: the test does not know interaction '{other}'"));
                    continue;
                }
            };
            let headers: &[(&str, &str)] = if method == "PATCH" { &[("content-type", "application/json-patch+json")] } else { &[] };
            let r = call(s, method, &path, body.as_ref(), headers).await;
            findings.check(&format!("{interaction} {method} {path}"), &r, true);
        }
        // Every declared search parameter is accepted.
        for p in entry["searchParam"].as_array().into_iter().flatten() {
            let name = p["name"].as_str().unwrap();
            let value = search_value(ty, name, p["type"].as_str().unwrap());
            let q = format!("{name}={}", encode(&value));
            let r = s.get(&format!("{ty}?{q}")).await;
            findings.check(&format!("search {ty}?{q}"), &r, true);
        }
    }
    // Conditional interactions as declared.
    let patient = &resources.iter().find(|e| e["type"] == "Patient").unwrap();
    assert_eq!(patient["conditionalCreate"], true);
    let r = call(s, "POST", "Patient", Some(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "cond"}]})), &[("if-none-exist", "identifier=urn:t|cond")]).await;
    findings.check("conditional create", &r, true);
    let r = call(s, "PUT", "Patient?identifier=urn:t|cond", Some(&json!({"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": "cond"}], "gender": "other"})), &[]).await;
    findings.check("conditional update", &r, true);
    let r = s.request("DELETE", "Patient?identifier=urn:t|cond", &[], None).await;
    findings.check("conditional delete", &r, true);

    // System level: interactions and search parameters.
    let system: Vec<&str> = rest["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    for interaction in system {
        let r = match interaction {
            "transaction" | "batch" => {
                let b = json!({"resourceType": "Bundle", "type": interaction, "entry": [{"resource": {"resourceType": "Basic", "code": {"text": "x"}}, "request": {"method": "POST", "url": "Basic"}}]});
                call(s, "POST", "", Some(&b), &[]).await
            }
            "history-system" => s.get("_history").await,
            "search-system" => s.get("?_type=Patient").await,
            other => {
                findings.0.push(format!("the test does not know system interaction '{other}'"));
                continue;
            }
        };
        findings.check(&format!("system {interaction}"), &r, true);
    }
    for p in rest["searchParam"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap();
        let value = if name == "_type" { "Patient".to_string() } else { search_value("Resource", name, p["type"].as_str().unwrap()) };
        let r = s.get(&format!("?{name}={}", encode(&value))).await;
        findings.check(&format!("system search {name}"), &r, true);
    }

    // Every declared operation: its definition (fetched when it is the server's own), and a
    // call at each level the server's table declares it for.
    let base = s.base.clone();
    let mut declared: Vec<(Option<String>, String, String)> = Vec::new(); // (type, name, definition)
    for o in rest["operation"].as_array().into_iter().flatten() {
        declared.push((None, o["name"].as_str().unwrap().into(), o["definition"].as_str().unwrap().into()));
    }
    for entry in resources {
        for o in entry["operation"].as_array().into_iter().flatten() {
            declared.push((entry["type"].as_str().map(str::to_string), o["name"].as_str().unwrap().into(), o["definition"].as_str().unwrap().into()));
        }
    }
    let table = tessera_engine::operations::OPERATIONS;
    let mut fetched = std::collections::HashSet::new();
    for (ty, name, definition) in &declared {
        let row = table.iter().find(|o| o.code == name && o.canonical(&base) == *definition);
        let Some(row) = row else {
            findings.0.push(format!("{ty:?} ${name} ({definition}) is not a row of the operation table"));
            continue;
        };
        if let Some(path) = definition.strip_prefix(&format!("{base}/")) {
            if fetched.insert(definition.clone()) {
                let r = s.request("GET", path, &[("authorization", "")], None).await;
                if findings.check(&format!("definition of ${name}"), &r, true) {
                    let d = r.json();
                    assert_eq!((d["resourceType"].as_str(), d["url"].as_str(), d["code"].as_str()), (Some("OperationDefinition"), Some(definition.as_str()), Some(name.as_str())));
                    assert_eq!((d["system"].as_bool(), d["type"].as_bool(), d["instance"].as_bool()), (Some(row.system), Some(row.type_level), Some(row.instance)), "{name}");
                }
            }
        } else {
            // Defined by FHIR, or by an IHE profile (PIXm).
            let standard = ["http://hl7.org/fhir/OperationDefinition/", "https://profiles.ihe.net/ITI/"];
            assert!(standard.iter().any(|p| definition.starts_with(p)), "a standard canonical: {definition}");
        }
        let ty_name = ty.as_deref().unwrap_or("");
        // Operations on every type are called on a few of them.
        if row.resources == ["Resource"] && !["Patient", "Observation", "Questionnaire"].contains(&ty_name) && ty.is_some() {
            continue;
        }
        let mut levels: Vec<(Option<String>, bool)> = Vec::new();
        match ty {
            None if row.system => levels.push((None, true)),
            None => {}
            Some(t) => {
                if row.type_level {
                    levels.push((None, false));
                }
                match ids.get(t) {
                    Some(id) if row.instance => levels.push((Some(id.clone()), false)),
                    None if row.instance => findings.0.push(format!("${name} on {t}: no {t} to call it on (its create failed)")),
                    _ => {}
                }
            }
        }
        for (id, at_system) in levels {
            let Some((method, path, body)) = operation_call(name, ty_name, id.as_deref(), at_system) else {
                findings.0.push(format!("${name}: the test has no call for it (add one to operation_call)"));
                continue;
            };
            let r = call(s, method, &path, body.as_ref(), &[]).await;
            findings.check(&format!("operation {method} {path}"), &r, false);
            if name == "everything" {
                let r = call(s, "POST", &path, Some(&json!({"resourceType": "Parameters"})), &[]).await;
                findings.check(&format!("operation POST {path}"), &r, false);
            }
        }
    }
    // Declared both ways: the table and the statement agree.
    for row in table {
        let listed = declared.iter().any(|(_, n, d)| n == row.code && *d == row.canonical(&base));
        assert!(listed, "${} is in the table but not in the CapabilityStatement", row.code);
    }

    // Deletes last (history and vread above needed the resources).
    for entry in resources {
        let ty = entry["type"].as_str().unwrap();
        if entry["interaction"].as_array().unwrap().iter().any(|i| i["code"] == "delete") {
            if let Some(id) = ids.get(ty) {
                let r = s.request("DELETE", &format!("{ty}/{id}"), &[], None).await;
                findings.check(&format!("delete {ty}/{id}"), &r, true);
            }
        }
    }
    assert!(findings.0.is_empty(), "{} declared capabilities not answered:\n{}", findings.0.len(), findings.0.join("\n"));
}
