//! One handler per FHIR interaction; each parses HTTP, calls the engine, and shapes the reply.

use crate::negotiate::{self, BodyKind};
use crate::AppState;
use axum::body::Body;
use axum::extract::{Extension, Path, RawQuery, Request, State};
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;
use tessera_engine::patch::{PatchDoc, PatchFormat};
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
            BodyKind::JsonPatch => "PATCH takes a JSON Patch (application/json-patch+json), a FHIRPath Patch Parameters (application/fhir+json) or a JSON Merge Patch (application/merge-patch+json)",
            _ => "send the resource as application/fhir+json",
        })));
    }
    let limit = state.config.max_body_bytes;
    let bytes = read_limited(req.into_body(), limit).await?;
    parse_json(&bytes)
}

/// Parses a JSON request body (not empty).
fn parse_json(bytes: &[u8]) -> Result<Value> {
    if bytes.is_empty() {
        return Err(error(FhirError::bad_request("the request has no body")));
    }
    serde_json::from_slice(bytes).map_err(|e| {
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
    fhir(StatusCode::OK, serde_json::to_vec(&state.engine.capability_statement_for(&crate::auth::rest_security(&state))).expect("capability serialises"))
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
    if id.starts_with('$') {
        return operation(&state, &access, OpLevel::Type(&ty), &id, &http::Method::GET, &headers, &q, None).await;
    }
    if ty == "Binary" && negotiate::wants_raw(&headers, q.as_deref().unwrap_or("")) {
        return binary_raw(&state, &access, &id, None, &headers).await;
    }
    try_or_respond!(negotiate(&headers, &q));
    if ty == "AuditEvent" {
        // Rendered from the audit trail, not a stored resource.
        return match state.engine.audit_read(&access, &id).await {
            Ok(event) => fhir(StatusCode::OK, serde_json::to_vec(&event).expect("an AuditEvent serialises")),
            Err(e) => error(e),
        };
    }
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
    if ty == "Binary" && negotiate::wants_raw(&headers, q.as_deref().unwrap_or("")) {
        return binary_raw(&state, &access, &id, Some(&vid), &headers).await;
    }
    try_or_respond!(negotiate(&headers, &q));
    match state.engine.vread(&access, &ty, &id, &vid).await {
        Ok(v) => resource_response(&headers, v),
        Err(e) => error(e),
    }
}

pub async fn create(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, RawQuery(q): RawQuery, req: Request) -> Response {
    if ty.starts_with('$') {
        let (parts, body) = req.into_parts();
        return operation(&state, &access, OpLevel::System, &ty, &parts.method, &parts.headers, &q, Some(body)).await;
    }
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let body = match negotiate::raw_media(&headers).filter(|_| ty == "Binary") {
        Some(media) => try_or_respond!(raw_binary_body(&state, &media, &headers, req.into_body(), None).await),
        None => try_or_respond!(json_body(&state, req, BodyKind::Json).await),
    };
    let if_none_exist = headers.get("if-none-exist").and_then(|v| v.to_str().ok()).map(|s| s.trim_start_matches('?').to_string());
    let if_none_exist = if_none_exist.map(|s| s.rsplit_once('?').map(|(_, q)| q.to_string()).unwrap_or(s));
    // `POST [type]?criteria` (fhirpy's get_or_create): the query is a conditional create,
    // as `If-None-Exist` — never silently ignored.
    let query = strip_format(q.as_deref().unwrap_or(""));
    let if_none_exist = match (if_none_exist, query.is_empty()) {
        (h, true) => h,
        (None, false) => Some(query),
        (Some(h), false) if strip_format(&h) == query => Some(query),
        (Some(_), false) => {
            return error(FhirError::bad_request("the request has both If-None-Exist and different search criteria in the URL: send the conditional create criteria once"))
        }
    };
    match state.engine.create(&access, &ty, body, if_none_exist.as_deref()).await {
        Ok(w) => write_response(&state, w, prefer_return(&headers)),
        Err(e) => error(e),
    }
}

pub async fn update(State(state): State<AppState>, Extension(access): Extension<Access>, Path((ty, id)): Path<(String, String)>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let if_match = try_or_respond!(if_match(&headers));
    let body = match negotiate::raw_media(&headers).filter(|_| ty == "Binary") {
        Some(media) => try_or_respond!(raw_binary_body(&state, &media, &headers, req.into_body(), Some(id.as_str())).await),
        None => try_or_respond!(json_body(&state, req, BodyKind::Json).await),
    };
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
    let (body, format) = try_or_respond!(patch_body(&state, req).await);
    let doc = try_or_respond!(PatchDoc::parse(body, format).map_err(error));
    match state.engine.patch_doc(&access, &ty, &id, &doc, if_match).await {
        Ok(w) => write_response(&state, w, prefer_return(&headers)),
        Err(e) => error(e),
    }
}

/// `PATCH [type]?criteria`: conditional patch (one match; none 404, several 412).
pub async fn conditional_patch(State(state): State<AppState>, Extension(access): Extension<Access>, Path(ty): Path<String>, RawQuery(q): RawQuery, req: Request) -> Response {
    let headers = req.headers().clone();
    try_or_respond!(negotiate(&headers, &q));
    let if_match = try_or_respond!(if_match(&headers));
    let (body, format) = try_or_respond!(patch_body(&state, req).await);
    let doc = try_or_respond!(PatchDoc::parse(body, format).map_err(error));
    let query = strip_format(q.as_deref().unwrap_or(""));
    match state.engine.conditional_patch(&access, &ty, &query, &doc, if_match).await {
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
    if ty.starts_with('$') {
        return operation(&state, &access, OpLevel::System, &ty, &http::Method::GET, &headers, &q, None).await;
    }
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

/// Strict handling of search parameters unless the request says `Prefer: handling=lenient`:
/// an unknown or unsupported parameter is refused (400), never dropped, because a misspelt
/// filter that was dropped would widen a clinical search to other patients' data.
fn strict_handling(headers: &HeaderMap) -> bool {
    !headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=lenient"))
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

/// `[base]/[type]/[id]/{operation}`: an instance operation (`$…`, GET or POST, see
/// [`operation`]) or a Patient compartment search (`GET Patient/[id]/[type]`).
pub async fn instance_operation(
    State(state): State<AppState>,
    Extension(access): Extension<Access>,
    Path((ty, id, operation_name)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    if operation_name.starts_with('$') {
        return operation(&state, &access, OpLevel::Instance(&ty, &id), &operation_name, &parts.method, &parts.headers, &q, Some(body)).await;
    }
    try_or_respond!(negotiate(&parts.headers, &q));
    if ty == "Patient" && matches!(parts.method, http::Method::GET | http::Method::HEAD) && tessera_fhir::definitions::is_resource_type(&operation_name) {
        let scope = Scope::Compartment { patient: &id, resource_type: &operation_name };
        return match state.engine.search(&access, scope, q.as_deref().unwrap_or(""), strict_handling(&parts.headers)).await {
            Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
            Err(e) => error(e),
        };
    }
    error(FhirError::new(404, IssueType::NotSupported, format!("no FHIR interaction at {} {ty}/{id}/{operation_name}", parts.method)))
}

/// `POST [base]/[type]/[id]`: only `POST [type]/$operation` lands here.
pub async fn type_post(State(state): State<AppState>, Extension(access): Extension<Access>, Path((ty, id)): Path<(String, String)>, RawQuery(q): RawQuery, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if id.starts_with('$') {
        return operation(&state, &access, OpLevel::Type(&ty), &id, &parts.method, &parts.headers, &q, Some(body)).await;
    }
    error(FhirError::method_not_allowed(format!("POST {ty}/{id} is not a FHIR interaction: PUT updates a resource, POST {ty}/{id}/$operation runs an operation")))
}

/// The level an operation is invoked at.
#[derive(Debug, Clone, Copy)]
pub(crate) enum OpLevel<'a> {
    /// `[base]/$op`
    System,
    /// `[base]/[type]/$op`
    Type(&'a str),
    /// `[base]/[type]/[id]/$op`
    Instance(&'a str, &'a str),
}

impl std::fmt::Display for OpLevel<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpLevel::System => f.write_str("the system"),
            OpLevel::Type(t) => write!(f, "{t}"),
            OpLevel::Instance(t, id) => write!(f, "{t}/{id}"),
        }
    }
}

/// The input of an operation: the URL query, and for POST the body — a `Parameters` (or a
/// resource) as FHIR JSON, or form parameters.
#[derive(Debug, Default)]
pub(crate) struct OpInput {
    pub query: String,
    pub json: Option<Value>,
    pub form: String,
}

impl OpInput {
    /// The parameters as one query string: the URL's, the form's, and the primitive
    /// parameters of a `Parameters` body (`_count`, `_since`, `_type` of `$everything` …).
    pub fn as_query(&self) -> String {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for part in [self.query.as_str(), self.form.as_str()] {
            s.extend_pairs(form_urlencoded::parse(part.as_bytes()));
        }
        if let Some(b) = self.json.as_ref().filter(|b| b.get("resourceType").and_then(Value::as_str) == Some("Parameters")) {
            for p in b.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = p.get("name").and_then(Value::as_str) else { continue };
                let value = p.as_object().into_iter().flatten().find_map(|(k, v)| {
                    k.strip_prefix("value").filter(|t| t.starts_with(|c: char| c.is_ascii_uppercase())).and_then(|_| match v {
                        Value::String(s) => Some(s.clone()),
                        Value::Number(n) => Some(n.to_string()),
                        Value::Bool(b) => Some(b.to_string()),
                        _ => None,
                    })
                });
                if let Some(v) = value {
                    s.append_pair(name, &v);
                }
            }
        }
        s.finish()
    }

    /// A parameter of a `Parameters` body, by name.
    pub fn param(&self, name: &str) -> Option<&Value> {
        self.json.as_ref()?.get("parameter")?.as_array()?.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name))
    }
}

async fn op_input(state: &AppState, headers: &HeaderMap, q: &Option<String>, body: Option<Body>) -> Result<OpInput> {
    let mut input = OpInput { query: q.clone().unwrap_or_default(), ..Default::default() };
    let Some(body) = body else { return Ok(input) };
    let bytes = read_limited(body, state.config.max_body_bytes).await?;
    if bytes.is_empty() {
        return Ok(input);
    }
    match negotiate::request_body(headers).map_err(error)? {
        BodyKind::Form => input.form = String::from_utf8_lossy(&bytes).into_owned(),
        BodyKind::Json => {
            input.json = Some(serde_json::from_slice(&bytes).map_err(|e| {
                error(FhirError::new(400, IssueType::Structure, format!("the body is not valid JSON: {e}")).at(format!("line {}, column {}", e.line(), e.column())))
            })?)
        }
        _ => return Err(error(FhirError::new(415, IssueType::NotSupported, "an operation takes a Parameters resource (application/fhir+json) or form parameters"))),
    }
    Ok(input)
}

/// The one dispatch point of `$`-operations, at every level, GET and POST: the
/// terminology operations first (`crate::terminology`), then Tessera's own. A new
/// operation is one arm here.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn operation(
    state: &AppState,
    access: &Access,
    level: OpLevel<'_>,
    op: &str,
    method: &http::Method,
    headers: &HeaderMap,
    q: &Option<String>,
    body: Option<Body>,
) -> Response {
    if crate::terminology::handles(level, op) {
        return crate::terminology::operation(state, access, level, op, method, headers, q, body).await;
    }
    try_or_respond!(negotiate(headers, q));
    let method = if *method == http::Method::HEAD { &http::Method::GET } else { method };
    let post = *method == http::Method::POST;
    if !post && *method != http::Method::GET {
        return error(FhirError::method_not_allowed(format!("operations are invoked with GET or POST, not {method}")));
    }
    let input = try_or_respond!(op_input(state, headers, q, if post { body } else { None }).await);
    let engine = &state.engine;
    let json = |r: std::result::Result<Value, FhirError>| match r {
        Ok(v) => fhir(StatusCode::OK, serde_json::to_vec(&v).expect("a resource serialises")),
        Err(e) => error(e),
    };
    let bundle = |r: std::result::Result<tessera_engine::bundle::Bundle, FhirError>| match r {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    };
    let post_only = || error(FhirError::method_not_allowed(format!("{op} changes or checks data: invoke it with POST")));
    match (level, op) {
        (OpLevel::System, "$meta") => json(engine.meta(access, None, None).await),
        (OpLevel::Type(ty), "$meta") => json(engine.meta(access, Some(ty), None).await),
        (OpLevel::Instance(ty, id), "$meta") => json(engine.meta(access, Some(ty), Some(id)).await),
        (OpLevel::Instance(ty, id), "$meta-add" | "$meta-delete") => {
            if !post {
                return post_only();
            }
            let Some(body) = &input.json else { return error(FhirError::bad_request(format!("{op} needs a Parameters body with a 'meta' parameter"))) };
            match engine.meta_change(access, ty, id, body, op == "$meta-add").await {
                Ok((params, v)) => {
                    let mut r = fhir(StatusCode::OK, serde_json::to_vec(&params).expect("parameters serialise"));
                    version_headers(&mut r, &v);
                    r
                }
                Err(e) => error(e),
            }
        }
        (OpLevel::Type(ty), "$validate") if post => json(engine.validate_operation(access, ty, None, input.json, &input.query).await),
        (OpLevel::Instance(ty, id), "$validate") if post => json(engine.validate_operation(access, ty, Some(id), input.json, &input.query).await),
        (_, "$validate") => post_only(),
        (OpLevel::Instance("Patient", id), "$everything") => bundle(engine.everything(access, id, &input.as_query()).await),
        (OpLevel::Instance("Patient", id), "$access-log") => bundle(engine.access_log(access, id, &input.as_query()).await),
        (OpLevel::Instance("Patient", id), "$break-glass") => {
            if !post {
                return post_only();
            }
            let param = |name: &str| input.param(name).cloned();
            let code = param("reason")
                .and_then(|p| p.get("valueCoding").or_else(|| p.get("valueCode")).cloned())
                .and_then(|v| v.get("code").and_then(Value::as_str).map(str::to_string).or_else(|| v.as_str().map(str::to_string)))
                .unwrap_or_default();
            let text = param("text").and_then(|p| p.get("valueString").and_then(Value::as_str).map(str::to_string)).unwrap_or_default();
            json(engine.break_glass(access, id, &code, &text).await)
        }
        (OpLevel::Type("Patient"), "$match" | "$merge" | "$unmerge") => {
            if !post {
                return post_only();
            }
            let Some(body) = input.json.clone() else { return error(FhirError::bad_request(format!("{op} needs a Parameters body"))) };
            match op {
                "$match" => bundle(engine.patient_match(access, body).await),
                "$merge" => json(engine.merge(access, body).await),
                _ => json(engine.unmerge(access, body).await),
            }
        }
        (OpLevel::Type("Patient"), "$ihe-pix") => {
            let query = input.as_query();
            let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            let Some(source) = pairs.iter().find(|(k, _)| k == "sourceIdentifier").map(|(_, v)| v.clone()) else {
                return error(FhirError::bad_request("$ihe-pix needs sourceIdentifier=system|value").at("sourceIdentifier"));
            };
            let targets: Vec<String> = pairs.iter().filter(|(k, _)| k == "targetSystem").flat_map(|(_, v)| v.split(',').map(str::to_string)).collect();
            json(engine.ihe_pix(access, &source, &targets).await)
        }
        (OpLevel::Instance("Task", id), "$resolve") => {
            if !post {
                return post_only();
            }
            let param = |name: &str| input.param(name).and_then(|p| p.get("valueCode").or_else(|| p.get("valueString"))).and_then(Value::as_str).map(str::to_string);
            let query = input.as_query();
            let from_query = |name: &str| form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
            let Some(decision) = param("decision").or_else(|| from_query("decision")) else {
                return error(FhirError::bad_request("$resolve needs decision: merge, not-duplicate or defer").at("decision"));
            };
            let note = param("note").or_else(|| from_query("note"));
            json(engine.resolve_candidate(access, id, &decision, note.as_deref()).await)
        }
        (OpLevel::Instance(ty, id), "$effective") => {
            let query = input.as_query();
            let get = |k: &str| form_urlencoded::parse(query.as_bytes()).find(|(n, _)| n == k || (k == "organization" && n == "organisation")).map(|(_, v)| v.into_owned());
            json(engine.effective(access, ty, id, get("organization").as_deref(), get("location").as_deref()).await)
        }
        (OpLevel::Type(ty), "$effective") => bundle(engine.effective_all(access, ty, &input.as_query()).await),
        (OpLevel::Type("Task"), "$change-request") => {
            if !post {
                return post_only();
            }
            let Some(body) = input.json.clone() else { return error(FhirError::bad_request("$change-request needs a Parameters body")) };
            match engine.propose_change(access, body).await {
                Ok(task) => fhir(StatusCode::CREATED, serde_json::to_vec(&task).expect("a Task serialises")),
                Err(e) => error(e),
            }
        }
        (OpLevel::Instance("Task", id), "$approve" | "$apply" | "$withdraw") => {
            if !post {
                return post_only();
            }
            let param = |name: &str| input.param(name).and_then(|p| p.get("valueCode").or_else(|| p.get("valueString"))).and_then(Value::as_str).map(str::to_string);
            match op {
                "$approve" => {
                    let Some(decision) = param("decision") else { return error(FhirError::bad_request("$approve needs decision: approve or reject").at("decision")) };
                    json(engine.decide_change(access, id, &decision, param("note").as_deref()).await)
                }
                "$apply" => json(engine.apply_change(access, id).await),
                _ => json(engine.withdraw_change(access, id).await),
            }
        }
        (OpLevel::Instance("Location", id), "$worklist") => {
            let query = input.as_query();
            let kind = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "kind").map(|(_, v)| v.into_owned()).unwrap_or_else(|| "encounter".into());
            bundle(engine.worklist(access, id, &kind).await)
        }
        _ => error(FhirError::new(404, IssueType::NotSupported, format!("no operation {op} on {level} with {method}"))),
    }
}

/// A `Binary` answered as its raw content (`Accept` other than FHIR), after the engine
/// released it; `vid` for a vread.
async fn binary_raw(state: &AppState, access: &Access, id: &str, vid: Option<&str>, headers: &HeaderMap) -> Response {
    let v = match vid {
        Some(vid) => state.engine.vread(access, "Binary", id, vid).await,
        None => state.engine.read(access, "Binary", id).await,
    };
    let v = match v {
        Ok(v) => v,
        Err(e) => return error(e),
    };
    let etag = v.etag();
    if headers.get(header::IF_NONE_MATCH).and_then(|h| h.to_str().ok()).is_some_and(|h| h.split(',').any(|t| t.trim() == etag)) {
        let mut r = Response::new(Body::empty());
        *r.status_mut() = StatusCode::NOT_MODIFIED;
        version_headers(&mut r, &v);
        return r;
    }
    let raw = match tessera_engine::binary::raw_content(&v) {
        Ok(raw) => raw,
        Err(e) => return error(e),
    };
    let mut r = Response::new(Body::from(raw.data));
    version_headers(&mut r, &v);
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&raw.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream")));
    // Stored content is not this server's page: never sniffed, never run as one.
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("content-security-policy", HeaderValue::from_static("sandbox"));
    if let Some(ctx) = raw.security_context.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert("x-security-context", ctx);
    }
    r
}

/// The Binary resource for a raw body (non-FHIR `Content-Type`), within the body limit.
async fn raw_binary_body(state: &AppState, media: &str, headers: &HeaderMap, body: Body, id: Option<&str>) -> Result<Value> {
    let bytes = read_limited(body, state.config.max_body_bytes).await?;
    let context = headers.get("x-security-context").and_then(|v| v.to_str().ok());
    tessera_engine::binary::binary_resource(media, &bytes, context, id).map_err(error)
}

/// Reads a PATCH body and the format its `Content-Type` names.
async fn patch_body(state: &AppState, req: Request) -> Result<(Value, PatchFormat)> {
    let format = match negotiate::request_body(req.headers()) {
        _ if negotiate::is_merge_patch(req.headers()) => PatchFormat::MergePatch,
        Err(e) => return Err(error(e)),
        Ok(BodyKind::JsonPatch) => PatchFormat::JsonPatch,
        Ok(BodyKind::Json) => PatchFormat::Detect,
        Ok(BodyKind::Form) => {
            return Err(error(FhirError::new(
                415,
                IssueType::NotSupported,
                "PATCH takes a JSON Patch (application/json-patch+json), a FHIRPath Patch Parameters (application/fhir+json) or a JSON Merge Patch (application/merge-patch+json)",
            )))
        }
    };
    let bytes = read_limited(req.into_body(), state.config.max_body_bytes).await?;
    Ok((parse_json(&bytes)?, format))
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
    for a in &mut domain.portal_accounts {
        a.password_hash = None;
    }
    for a in &mut domain.apps {
        a.secret_hash = None;
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

/// `GET /fhir/OperationDefinition/[id]`: one of the server's OperationDefinitions, generated
/// by the engine (`operations.rs`) — metadata like the CapabilityStatement that names them:
/// answered without a token, not stored, not audited.
pub async fn operation_definition(State(state): State<AppState>, Path(id): Path<String>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    match state.engine.operation_definition(&id) {
        Ok(d) => fhir(StatusCode::OK, serde_json::to_vec(&d).expect("definition serialises")),
        Err(e) => error(e),
    }
}

/// `GET /fhir/OperationDefinition[?_id|url|code|name=…]`: the server's OperationDefinitions.
pub async fn operation_definitions(State(state): State<AppState>, headers: HeaderMap, RawQuery(q): RawQuery) -> Response {
    try_or_respond!(negotiate(&headers, &q));
    match state.engine.operation_definition_search(q.as_deref().unwrap_or("")) {
        Ok(b) => fhir(StatusCode::OK, b.into_bytes()),
        Err(e) => error(e),
    }
}
