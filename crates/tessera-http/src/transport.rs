//! Transport concerns around every route: compressed responses and request bodies, and an
//! OperationOutcome for every error answered by the HTTP machinery rather than a handler.
//!
//! * **Responses** are compressed (gzip or Brotli, as `Accept-Encoding` prefers) when they
//!   are larger than [`COMPRESS_ABOVE`] bytes (`tower-http`'s compression layer, streaming).
//! * **Request bodies** sent with `Content-Encoding: gzip` are inflated as they are read
//!   (`tower-http`'s request decompression, streaming); other encodings are refused (415).
//!   The body limit (`HttpConfig::max_body_bytes`, 413) applies to the *inflated* size:
//!   [`compressed_body`] and [`bound_inflated`] stop inflating once the limit is passed and
//!   read (without inflating or keeping) a bounded amount more of what the client sends,
//!   so that a "gzip bomb" costs neither memory nor much time, and the client still
//!   sending receives the 413 rather than a reset connection.
//! * **Errors** that the HTTP machinery answers itself — 405 of a route without that
//!   method (with `Allow`), 415 of an unsupported `Content-Encoding`, 413 and 400 of axum's
//!   extractors — carry an OperationOutcome like every handler error ([`outcomes`]).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use http::{header, HeaderValue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tessera_engine::FhirError;
use tessera_fhir::IssueType;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::CompressionLayer;

/// Responses at most this large are sent as they are.
pub const COMPRESS_ABOVE: u16 = 1024;

/// Compressed bytes read at most, and dropped, after an inflated body passed the limit.
const DRAIN: usize = 16 * 1024 * 1024;

/// Compressed input is handed to the inflater in pieces of at most this size, so that what
/// it still inflates once the limit is passed is small.
const PIECE: usize = 16 * 1024;

/// Response compression: gzip and Brotli (quality 4), above [`COMPRESS_ABOVE`] bytes, not
/// for images or event streams.
pub(crate) fn compression() -> CompressionLayer<impl Predicate> {
    let predicate = SizeAbove::new(COMPRESS_ABOVE).and(NotForContentType::IMAGES).and(NotForContentType::SSE).and(NotForContentType::GRPC);
    CompressionLayer::new().gzip(true).br(true).compress_when(predicate)
}

/// Request decompression: gzip only.
pub(crate) fn decompression() -> tower_http::decompression::RequestDecompressionLayer {
    tower_http::decompression::RequestDecompressionLayer::new().gzip(true)
}

/// The compressed body of a request, shared by [`compressed_body`] (outside the
/// inflater) and [`bound_inflated`] (inside it).
#[derive(Clone)]
struct Compressed(Arc<AtomicBool>);

/// Middleware outside the request decompression: hands a compressed body to the inflater
/// in small pieces, and once [`bound_inflated`] says the inflated body passed the limit,
/// drains (at most [`DRAIN`] bytes) and ends it.
pub(crate) async fn compressed_body(req: Request, next: Next) -> Response {
    if !req.headers().contains_key(header::CONTENT_ENCODING) {
        return next.run(req).await;
    }
    let over = Arc::new(AtomicBool::new(false));
    let (mut parts, body) = req.into_parts();
    parts.extensions.insert(Compressed(over.clone()));
    let stream = futures::stream::unfold((body.into_data_stream(), over, Bytes::new()), |(mut body, over, mut rest)| async move {
        if over.load(Ordering::Acquire) {
            let mut drained = 0usize;
            while drained <= DRAIN {
                match body.next().await {
                    Some(Ok(chunk)) => drained += chunk.len(),
                    _ => break,
                }
            }
            return None;
        }
        if rest.is_empty() {
            match body.next().await? {
                Ok(chunk) => rest = chunk,
                Err(e) => return Some((Err(e), (body, over, rest))),
            }
        }
        let piece = rest.split_to(rest.len().min(PIECE));
        Some((Ok(piece), (body, over, rest)))
    })
    .fuse();
    next.run(Request::from_parts(parts, Body::from_stream(stream))).await
}

/// Middleware inside the request decompression: counts the inflated bytes; past `limit`,
/// passes on the piece that crossed it (so that the handler's own limit answers 413), tells
/// [`compressed_body`] to drain, and ends the body.
pub(crate) async fn bound_inflated(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let Some(Compressed(over)) = req.extensions().get::<Compressed>().cloned() else {
        return next.run(req).await;
    };
    let (parts, body) = req.into_parts();
    let stream = futures::stream::unfold((body.into_data_stream(), over, 0usize, false), move |(mut body, over, mut seen, done)| async move {
        if done {
            // The compressed side now drains and ends; what the inflater still holds (one
            // piece at most) is inflated and dropped.
            while let Some(Ok(_)) = body.next().await {}
            return None;
        }
        let item = body.next().await?;
        if let Ok(chunk) = &item {
            seen = seen.saturating_add(chunk.len());
            if seen > limit {
                over.store(true, Ordering::Release);
                return Some((item, (body, over, seen, true)));
            }
        }
        Some((item, (body, over, seen, false)))
    })
    .fuse();
    next.run(Request::from_parts(parts, Body::from_stream(stream))).await
}

/// Middleware: an error response without a JSON body (answered by axum or a `tower-http`
/// layer, not by a handler) gets an OperationOutcome saying what happened; its headers
/// (`Allow`, `Accept-Encoding`, `WWW-Authenticate`, `Retry-After`) are kept. JSON errors
/// — handlers' OperationOutcomes, the token endpoint's OAuth errors, `/healthz` — pass as
/// they are.
pub(crate) async fn outcomes(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let uri = req.uri().clone();
    let response = next.run(req).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let json = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|ct| ct.contains("json"));
    if json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 2048).await.map(|b| String::from_utf8_lossy(&b).trim().to_string()).unwrap_or_default();
    let header_text = |name: header::HeaderName| parts.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let path = uri.path();
    let (code, message) = match status.as_u16() {
        405 => {
            let allow = header_text(header::ALLOW);
            let allowed = if allow.is_empty() { "none".to_string() } else { allow.replace(',', ", ") };
            (IssueType::NotSupported, format!("{method} is not supported at {path} (allowed: {allowed})"))
        }
        415 if parts.headers.contains_key(header::ACCEPT_ENCODING) => {
            let accepted = header_text(header::ACCEPT_ENCODING);
            (IssueType::NotSupported, format!("the request's Content-Encoding is not supported; send the body as {accepted} or uncompressed"))
        }
        413 => (IssueType::TooLong, format!("the request body is larger than {method} {path} accepts{}", detail(&text))),
        404 => (IssueType::NotSupported, format!("no FHIR interaction at {method} {path}{}", detail(&text))),
        401 => (IssueType::Login, format!("this request needs a valid access token{}", detail(&text))),
        403 => (IssueType::Forbidden, format!("not permitted{}", detail(&text))),
        n if n < 500 => (IssueType::Invalid, format!("{n} {}{}", status.canonical_reason().unwrap_or("request refused"), detail(&text))),
        n => (IssueType::Exception, format!("{n} {}{}", status.canonical_reason().unwrap_or("server error"), detail(&text))),
    };
    let outcome = FhirError::new(status.as_u16(), code, message).outcome();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+json; charset=utf-8"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(serde_json::to_vec(&outcome).expect("outcome serialises")))
}

fn detail(text: &str) -> String {
    if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    }
}
