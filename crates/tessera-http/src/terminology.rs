//! Terminology operations over HTTP: `ValueSet/$expand`, `ValueSet/$validate-code`,
//! `CodeSystem/$lookup`, `CodeSystem/$validate-code`, `CodeSystem/$subsumes` and
//! `ConceptMap/$translate`, at type level (`/fhir/ValueSet/$expand`) and instance level
//! (`/fhir/ValueSet/[id]/$expand`).
//!
//! `GET` takes the parameters from the query string; `POST` from a `Parameters` body (or a
//! form body), plus the query string. The answer is the engine's (`Parameters`, or the
//! expanded `ValueSet`), errors an OperationOutcome.

use crate::handlers::{error, OpLevel};
use crate::negotiate::{self, BodyKind};
use crate::AppState;
use axum::body::Body;
use axum::response::Response;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use tessera_engine::terminology::{is_terminology_operation, Params};
use tessera_engine::{Access, FhirError};
use tessera_fhir::IssueType;

/// Whether the operation `op` at `level` is a terminology operation (answered by
/// [`operation`]).
pub(crate) fn handles(level: OpLevel<'_>, op: &str) -> bool {
    match level {
        OpLevel::Type(ty) | OpLevel::Instance(ty, _) => is_terminology_operation(ty, op),
        OpLevel::System => false,
    }
}

/// Answers a terminology operation ([`handles`]); `body` is the request body of a `POST`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn operation(
    state: &AppState,
    access: &Access,
    level: OpLevel<'_>,
    op: &str,
    method: &Method,
    headers: &HeaderMap,
    query: &Option<String>,
    body: Option<Body>,
) -> Response {
    let (resource_type, id) = match level {
        OpLevel::Type(ty) => (ty, None),
        OpLevel::Instance(ty, id) => (ty, Some(id)),
        OpLevel::System => return error(FhirError::new(404, IssueType::NotSupported, format!("{op} is not a system-level operation"))),
    };
    answer(state, access, resource_type, id, op, method, headers, query.as_deref().unwrap_or(""), body).await.unwrap_or_else(error)
}

#[allow(clippy::too_many_arguments)]
async fn answer(
    state: &AppState,
    access: &Access,
    resource_type: &str,
    id: Option<&str>,
    operation: &str,
    method: &Method,
    headers: &HeaderMap,
    query: &str,
    body: Option<Body>,
) -> Result<Response, FhirError> {
    negotiate::response_format(headers, query)?;
    let params = match *method {
        Method::GET | Method::HEAD => Params::from_query(query),
        Method::POST => {
            let kind = negotiate::request_body(headers)?;
            let limit = state.config.max_body_bytes;
            let bytes = match body {
                Some(b) => axum::body::to_bytes(b, limit)
                    .await
                    .map_err(|_| FhirError::new(413, IssueType::TooLong, format!("the request body is larger than the limit of {limit} bytes")))?,
                None => Default::default(),
            };
            let mut params = if bytes.iter().all(u8::is_ascii_whitespace) {
                Params::default()
            } else {
                match kind {
                    BodyKind::Form => Params::from_query(&String::from_utf8_lossy(&bytes)),
                    BodyKind::Json => {
                        let json: serde_json::Value = serde_json::from_slice(&bytes)
                            .map_err(|e| FhirError::new(400, IssueType::Structure, format!("the body is not valid JSON: {e}")).at(format!("line {}, column {}", e.line(), e.column())))?;
                        Params::from_parameters(&json)?
                    }
                    BodyKind::JsonPatch => return Err(FhirError::new(415, IssueType::NotSupported, "send the parameters as a Parameters resource (application/fhir+json)")),
                }
            };
            params.extend(Params::from_query(query));
            params
        }
        _ => return Err(FhirError::method_not_allowed(format!("{operation} takes GET or POST"))),
    };
    let value = state.engine.terminology(access, resource_type, id, operation, params).await?;
    let mut r = Response::new(Body::from(serde_json::to_vec(&value).expect("JSON serialises")));
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    Ok(r)
}
