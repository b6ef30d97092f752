//! One handler per FHIR interaction; each parses HTTP, calls the engine, and shapes the reply.

use crate::negotiate::{self, BodyKind};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use tessera_engine::search::Scope;
use tessera_engine::{Access, FhirError, ReturnPreference, VersionedResource, WriteOutcome};
use tessera_fhir::IssueType;

const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// A FHIR JSON response.
fn fhir(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    r
}

pub(crate) fn error(e: FhirError) -> Response {
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    fhir(status, serde_json::to_vec(&e.outcome()).expect("outcome serialises"))
}

type Result<T> = std::result::Result<T, Response>;

fn http_date(micros: i64) -> HeaderValue {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros.max(0) as u64);
    HeaderValue::from_str(&httpdate::fmt_http_date(t)).expect("http date is ascii")
}

fn version_headers(r: &mut Response, v: &VersionedResource) {
    let h = r.headers_mut();
    h.insert(header::ETAG, HeaderValue::from_str(&v.etag()).expect("etag is ascii"));
    h.insert(header::LAST_MODIFIED, http_date(v.last_updated_micros()));
}

fn negotiate(headers: &HeaderMap, query: &Option<String>) -> Result<()> {
    negotiate::response_format(headers, query.as_deref().unwrap_or("")).map_err(error)
}

fn prefer_return(headers: &HeaderMap) -> Option<ReturnPreference> {
    let prefer = headers.get_all("prefer").iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    prefer.split([',', ';']).find_map(|p| match p.trim().strip_prefix("return=")?.trim_matches('"') {
        "minimal" => Some(ReturnPreference::Minimal),
        "representation" => Some(ReturnPreference::Representation),
        "OperationOutcome" => Some(ReturnPreference::OperationOutcome),
        _ => None,
    })
}

fn if_match(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(v) = headers.get(header::IF_MATCH) else { return Ok(None) };
    let s = v.to_str().unwrap_or("");
    s.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .parse()
        .map(Some)
        .map_err(|_| error(FhirError::bad_request(format!("If-Match '{s}' is not a version ETag such as W/\"3\""))))
}

/// Reads a body of at most `limit` bytes. A larger body is answered with 413 after
/// discarding (not buffering) a bounded amount more of it, so that the client, still
/// sending, receives the answer instead of a reset connection.
async fn read_limited(body: Body, limit: usize) -> Result<bytes::Bytes> {
    use http_body_util::BodyExt;
    const DRAIN: usize = 16 * 1024 * 1024;
    let mut body = body;
    let mut buf = bytes::BytesMut::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| error(FhirError::bad_request(format!("cannot read the request body: {e}"))))?;
        if let Ok(data) = frame.into_data() {
            seen += data.len();
            if seen <= limit {
                buf.extend_from_slice(&data);
            } else if seen > limit + DRAIN {
                break;
            }
        }
    }
    if seen > limit {
        return Err(error(FhirError::new(413, IssueType::TooLong, format!("the request body is larger than the limit of {limit} bytes"))));
    }
    Ok(buf.freeze())
}

/// Reads and parses a JSON body within the configured limit.
async fn json_body(state: &AppState, req: Request, expect: BodyKind) -> Result<Value> {
    let kind = negotiate::request_body(req.headers()).map_err(error)?;
    if kind != expect && !(expect == BodyKind::JsonPatch && kind == BodyKind::Json) {
        return Err(error(FhirError::new(415, IssueType::NotSupported, match expect {
            BodyKind::JsonPatch => "PATCH takes a JSON Patch document (application/json-patch+json)",
            _ => "send the resource as application/fhir+json",
        })));
    }
    let limit = state.config.max_body_bytes;
    let bytes = read_limited(req.into_body(), limit).await?;
    if bytes.is_empty() {
        return Err(error(FhirError::bad_request("the request has no body")));
    }
    serde_json::from_slice(&bytes).map_err(|e| {
        let issue = if e.to_string().contains("recursion limit") {
            FhirError::new(400, IssueType::TooLong, "the JSON is nested too deeply")
        } else {
            FhirError::new(400, IssueType::Structure, format!("the body is not valid JSON: {e}"))
        };
        error(issue.at(format!("line {}, column {}", e.line(), e.column())))
    })
}

fn write_response(state: &AppState, outcome: WriteOutcome, prefer: Option<ReturnPreference>) -> Response {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let v = &outcome.resource;
    let mut r = match prefer.unwrap_or_default() {
        ReturnPreference::Representation => fhir(status, v.json().to_vec()),
        ReturnPreference::Minimal => {
            let mut r = Response::new(Body::empty());
            *r.status_mut() = status;
            r
        }
        ReturnPreference::OperationOutcome => {
            let what = if outcome.status == 201 { "created" } else { "updated" };
            let oo = tessera_fhir::outcome::information(format!("{} {what}", v.versioned_reference()));
            fhir(status, serde_json::to_vec(&oo).expect("outcome serialises"))
        }
    };
    version_headers(&mut r, v);
    let location = format!("{}/{}", state.engine.config().base_url, v.versioned_reference());
    if let Ok(l) = HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, l.clone());
        if outcome.status == 201 {
            r.headers_mut().insert(header::CONTENT_LOCATION, l);
        }
    }
    r
}

fn deleted_response(v: Option<VersionedResource>) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    if let Some(v) = v {
        version_headers(&mut r, &v);
    }
    r
}

fn resource_response(headers: &HeaderMap, v: VersionedResource) -> Response {
    let etag = v.etag();
    if headers.get(header::IF_NONE_MATCH).and_then(|h| h.to_str().ok()).is_some_and(|h| h.split(',').any(|t| t.trim() == etag)) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        version_headers(&mut r, &v);
        return r;
    }
    let mut r = fhir(StatusCode::OK, Vec::new());
    version_headers(&mut r, &v);
    *r.body_mut() = Body::from(v.into_json());
    r
}

/// `/healthz` and `/readyz`: 200 when the database answers and writes succeed; 503 with
/// the reason otherwise (take the server out of the load balancer, alert).
pub async fn healthz(State(state): State<AppState>) -> Response {
    match state.engine.health().await {
        Ok(_) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"ok"}"#).into_response(),
        Err(e) => {
            let body = serde_json::json!({"status": "unavailable", "error": e.to_string()}).to_string();
            (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
    }
}

/// `/livez`: the process answers (restart it if not); says nothing of the database.
pub async fn livez() -> Response {
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], r#"{"status":"alive"}"#).into_response()
}

pub async fn metadata(State(state): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    if let Err(r) = negotiate(&headers, &q) {
        return r;
    }
    fhir(StatusCode::OK, serde_json::to_vec(&state.engine.capability_statement()).expect("capability serialises"))
}

pub async fn not_found(req: Request) -> Response {
    error(FhirError::new(404, IssueType::NotSupported, format!("no FHIR interaction at {} {}", req.method(), req.uri().path())))
}

pub fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("request handler panicked");
    error(FhirError::internal("internal error; see the server log"))
}

macro_rules! try_or_respond {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

pub async fn read(State(state): State<AppState>, Extension(access): Extension<Access>, Path((ty, id)): Path<(String, String)>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    match state.engine.read(&access, &ty, &id).await {
        Ok(v) => resource_response(&headers, v),
        Err(e) => error(e),
    }
}

pub async fn vread(
    State(state): State<AppState>, Extension(access): Extension<Access>,
    Path((ty, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    match state.engine.vread(&access, &ty, &id, &vid).await {
        Ok(v) => resource_response(&headers, v),
        Err(e) => error(e),
    }
}

pub async fn create(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let body = try_or_respond!(json_body(&state, req, BodyKind::Json).await);
    let if_none_exist = headers.get("if-none-exist").and_then(|v| v.to_str().ok()).map(|s| s.trim_start_matches('?').to_string());
    let if_none_exist = if_none_exist.map(|s| s.rsplit_once('?').map(|(_, q)| q.to_string()).unwrap_or(s));
    match state.engine.create(&access, &ty, body, if_none_exist.as_deref()).await {
        Ok(w) => write_response(&state, w, prefer_return(&headers)),
        Err(e) => error(e),
    }
}

pub async fn update(State(state): State<AppState>, Extension(access): Extension<Access>, Path((ty, id)): Path<(String, String)>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let if_match = try_or_respond!(if_match(&headers));
    let body = try_or_respond!(json_body(&state, req, BodyKind::Json).await);
    match state.engine.update(&access, &ty, &id, body, if_match).await {
        Ok(w) => write_response(&state, w, prefer_return(&headers)),
        Err(e) => error(e),
    }
}

pub async fn conditional_update(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let if_match = try_or_respond!(if_match(&headers));
    let body = try_or_respond!(json_body(&state, req, BodyKind::Json).await);
    let query = strip_format(q.as_deref().unwrap_or(""));
    match state.engine.conditional_update(&access, &ty, &query, body, if_match).await {
        Ok(w) => write_response(&state, w, prefer_return(&headers)),
        Err(e) => error(e),
    }
}

pub async fn patch(State(state): State<AppState>, Extension(access): Extension<Access>, Path((ty, id)): Path<(String, String)>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let if_match = try_or_respond!(if_match(&headers));
    let body = try_or_respond!(json_body(&state, req, BodyKind::JsonPatch).await);
    if body.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        return error(FhirError::new(415, IssueType::NotSupported, "FHIRPath Patch is not supported yet; send a JSON Patch document (application/json-patch+json)"));
    }
    match state.engine.patch(&access, &ty, &id, body, if_match).await {
        Ok(w) => write_response(&state, w, prefer_return(&headers)),
        Err(e) => error(e),
    }
}

pub async fn delete(State(state): State<AppState>, Extension(access): Extension<Access>, Path((ty, id)): Path<(String, String)>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    let if_match = try_or_respond!(if_match(&headers));
    match state.engine.delete(&access, &ty, &id, if_match).await {
        Ok(v) => deleted_response(v),
        Err(e) => error(e),
    }
}

pub async fn conditional_delete(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    let query = strip_format(q.as_deref().unwrap_or(""));
    match state.engine.conditional_delete(&access, &ty, &query).await {
        Ok(v) => deleted_response(v),
        Err(e) => error(e),
    }
}

fn strip_format(query: &str) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        if k != "_format" && k != "_pretty" {
            s.append_pair(&k, &v);
        }
    }
    s.finish()
}

pub async fn search(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    if ty == "AuditEvent" {
        return match state.engine.audit_search(&access, q.as_deref().unwrap_or("")).await {
            Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
            Err(e) => error(e),
        };
    }
    let strict = strict_handling(&headers);
    match state.engine.search(&access, Scope::Type(Some(&ty)), q.as_deref().unwrap_or(""), strict).await {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    }
}

/// `GET [base]?…`: a search across all resource types.
pub async fn system_search(State(state): State<AppState>, Extension(access): Extension<Access>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    let strict = strict_handling(&headers);
    match state.engine.search(&access, Scope::Type(None), q.as_deref().unwrap_or(""), strict).await {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    }
}

/// `Prefer: handling=strict` (lenient is the default).
fn strict_handling(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

pub async fn search_post(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    if try_or_respond!(negotiate::request_body(&headers).map_err(error)) != BodyKind::Form {
        return error(FhirError::new(415, IssueType::NotSupported, "POST _search takes application/x-www-form-urlencoded parameters"));
    }
    let bytes = try_or_respond!(read_limited(req.into_body(), state.config.max_body_bytes).await);
    let mut query = String::from_utf8_lossy(&bytes).into_owned();
    if let Some(q) = q.filter(|q| !q.is_empty()) {
        query = if query.is_empty() { q } else { format!("{q}&{query}") };
    }
    let strict = strict_handling(&headers);
    match state.engine.search(&access, Scope::Type(Some(&ty)), &query, strict).await {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    }
}

async fn history(state: &AppState, access: &Access, ty: Option<&str>, id: Option<&str>, headers: &HeaderMap, q: &Option<String>) -> Response {
    try_or_respond!(negotiate(headers, q));
    let params = match tessera_engine::history::HistoryParams::parse(q.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return error(e),
    };
    match state.engine.history(access, ty, id, &params).await {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    }
}

pub async fn system_history(State(state): State<AppState>, Extension(access): Extension<Access>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    history(&state, &access, None, None, &headers, &q).await
}

pub async fn type_history(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    history(&state, &access, Some(&ty), None, &headers, &q).await
}

pub async fn instance_history(
    State(state): State<AppState>, Extension(access): Extension<Access>,
    Path((ty, id)): Path<(String, String)>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    history(&state, &access, Some(&ty), Some(&id), &headers, &q).await
}

pub async fn bundle(State(state): State<AppState>, Extension(access): Extension<Access>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    if try_or_respond!(negotiate::request_body(&headers).map_err(error)) != BodyKind::Json {
        return error(FhirError::new(415, IssueType::NotSupported, "send the Bundle as application/fhir+json"));
    }
    let body = try_or_respond!(read_limited(req.into_body(), state.config.max_body_bytes).await);
    if body.is_empty() {
        return error(FhirError::bad_request("the request has no body"));
    }
    match state.engine.bundle_json(&access, &body, prefer_return(&headers)).await {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    }
}

/// `POST Patient/[id]/$break-glass`, `GET Patient/[id]/$access-log`, `GET Patient/[id]/$everything`,
/// `GET Patient/[id]/[type]` (compartment search), `GET Location/[id]/$worklist`.
pub async fn instance_operation(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id, operation)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let method = req.method().clone();
    match (ty.as_str(), operation.as_str(), method.as_str()) {
        ("Patient", "$break-glass", "POST") => {
            let body = try_or_respond!(json_body(&state, req, BodyKind::Json).await);
            let param = |name: &str| {
                body.get("parameter").and_then(Value::as_array).into_iter().flatten().find(|p| p.get("name").and_then(Value::as_str) == Some(name)).cloned()
            };
            let code = param("reason")
                .and_then(|p| p.get("valueCoding").or_else(|| p.get("valueCode")).cloned())
                .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string).or_else(|| v.as_str().map(str::to_string)))
                .unwrap_or_default();
            let text = param("text").and_then(|p| p.get("valueString").and_then(Value::as_str).map(str::to_string)).unwrap_or_default();
            match state.engine.break_glass(&access, &id, &code, &text).await {
                Ok(v) => fhir(StatusCode::OK, serde_json::to_vec(&v).expect("parameters serialise")),
                Err(e) => error(e),
            }
        }
        ("Patient", "$access-log", "GET") => {
            match state.engine.access_log(&access, &id, q.as_deref().unwrap_or("")).await {
                Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
                Err(e) => error(e),
            }
        }
        ("Patient", "$everything", "GET") => match state.engine.everything(&access, &id, q.as_deref().unwrap_or("")).await {
            Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
            Err(e) => error(e),
        },
        ("Patient", compartment_type, "GET") if tessera_fhir::definitions::is_resource_type(compartment_type) => {
            let scope = Scope::Compartment { patient: &id, resource_type: compartment_type };
            match state.engine.search(&access, scope, q.as_deref().unwrap_or(""), strict_handling(&headers)).await {
                Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
                Err(e) => error(e),
            }
        }
        ("Location", "$worklist", "GET") => {
            let kind = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()).find(|(k, _)| k == "kind").map(|(_, v)| v.into_owned()).unwrap_or_else(|| "encounter".into());
            match state.engine.worklist(&access, &id, &kind).await {
                Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
                Err(e) => error(e),
            }
        }
        _ => error(FhirError::new(404, IssueType::NotSupported, format!("no operation {operation} on {ty} with {method}"))),
    }
}

/// `GET /admin/domain`: the domain configuration (without secrets).
pub async fn admin_domain_get(State(state): State<AppState>, Extension(access): Extension<Access>) -> Response {
    let mut domain = match state.engine.domain_for_admin(&access).await {
        Ok(d) => (*d).clone(),
        Err(e) => return error(e),
    };
    for u in &mut domain.users {
        u.password_hash = None;
    }
    for s in &mut domain.service_accounts {
        s.secret_hash = None;
    }
    axum::Json(domain).into_response()
}

/// `PUT /admin/domain` with a domain file (TOML): merged into the domain and applied.
pub async fn admin_domain_put(State(state): State<AppState>, Extension(access): Extension<Access>, body: axum::body::Bytes) -> Response {
    if let Err(e) = state.engine.require_domain_admin(&access) {
        return error(e);
    }
    let text = String::from_utf8_lossy(&body);
    let mut domain = (*state.engine.domain()).clone();
    if let Err(e) = domain.apply_file(&text) {
        return error(FhirError::bad_request(format!("the domain file is not valid: {e}")));
    }
    match state.engine.apply_domain(&access, domain).await {
        Ok(changed) => axum::Json(serde_json::json!({"applied": true, "resources_changed": changed})).into_response(),
        Err(e) => error(e),
    }
}

/// `POST /admin/users/{id}/unlock[?client=true]`: clears a user's (or service account's)
/// sign-in lock, as `tessera user unlock` does — for a domain administrator, and the way to
/// unlock while a server owns an SQLite data directory. Audited.
pub async fn admin_unlock(State(state): State<AppState>, Extension(access): Extension<Access>, Path(id): Path<String>, RawQuery(q): RawQuery) -> Response {
    if let Err(e) = state.engine.require_domain_admin(&access) {
        return error(e);
    }
    let client = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()).any(|(k, v)| k == "client" && v == "true");
    let domain = state.engine.domain();
    let (account, known) = if client {
        (tessera_auth::Account::Client(id.clone()), domain.service_account(&id).is_some_and(|a| a.id != tessera_engine::SYSTEM_ACCOUNT))
    } else {
        (tessera_auth::Account::User(id.clone()), domain.user(&id).is_some())
    };
    if !known {
        return error(FhirError::not_found(if client { "service account" } else { "user" }, &id));
    }
    let key = account.lock_key();
    let result = async {
        let before = tessera_auth::LockState::parse(state.engine.setting(&key).await?.as_deref());
        state.engine.set_setting(&key, "").await?;
        let by = format!("{} via /admin", access.reference());
        state.engine.record_auth(&tessera_auth::AuthEvent::unlock(&account, &domain, &by)).await?;
        Ok::<_, FhirError>(before.locked_for(tessera_auth::now()))
    }
    .await;
    match result {
        Ok(locked_for) => axum::Json(serde_json::json!({"unlocked": id, "was_locked": locked_for.is_some()})).into_response(),
        Err(e) => error(e),
    }
}
