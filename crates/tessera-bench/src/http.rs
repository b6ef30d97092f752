//! HTTP plumbing shared by the benchmarks.

use anyhow::Context;
use hyper::client::conn::http1::SendRequest;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use hyper_util::rt::TokioIo;

pub const FHIR_JSON: &str = "application/fhir+json";

/// The FHIR base URL, split the way the clients need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Base {
    /// `host:port`, for `TcpStream::connect` and the `Host` header.
    pub authority: String,
    /// The path of the base, without a trailing slash (`/fhir`, or empty).
    pub path: String,
    /// The base URL itself, where bundles are posted.
    pub uri: Uri,
}

impl Base {
    pub fn parse(url: &str) -> anyhow::Result<Base> {
        let uri: Uri = url.parse().with_context(|| format!("'{url}' is not a URL"))?;
        anyhow::ensure!(uri.scheme_str() == Some("http"), "only http:// URLs are supported, not '{url}'");
        let authority = uri.authority().with_context(|| format!("'{url}' names no host"))?;
        let port = authority.port_u16().unwrap_or(80);
        let path = uri.path().trim_end_matches('/').to_string();
        let authority = format!("{}:{port}", authority.host());
        let uri = format!("http://{authority}{}", if path.is_empty() { "/" } else { &path }).parse()?;
        Ok(Base { authority, path, uri })
    }
}

/// The `Authorization: Bearer …` header value for an access token.
pub fn bearer(token: &str) -> anyhow::Result<HeaderValue> {
    let token = token.trim();
    let token = token.strip_prefix("Bearer ").unwrap_or(token).trim();
    anyhow::ensure!(!token.is_empty(), "no access token given; get one with `tessera token --system --data-dir DIR`");
    let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
        .map_err(|_| anyhow::anyhow!("the access token contains characters not allowed in an HTTP header"))?;
    value.set_sensitive(true);
    Ok(value)
}

/// Whether the server refused the request's credentials (401) or their rights (403).
pub fn is_refusal(status: StatusCode) -> bool {
    status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN
}

/// The error for a 401/403 answer, with the server's OperationOutcome diagnostics.
pub fn refusal(status: StatusCode, request: &str, body: &[u8]) -> anyhow::Error {
    let hint = if status == StatusCode::UNAUTHORIZED {
        "the access token was not accepted; get one with `tessera token --system --data-dir DIR`"
    } else {
        "the access token does not allow this"
    };
    anyhow::anyhow!("{hint}: {request}: HTTP {status}: {}", diagnostics(body))
}

/// Opens one HTTP/1.1 keep-alive connection (no pool) and drives it on a background task.
pub async fn connect<B>(base: &Base) -> anyhow::Result<SendRequest<B>>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(&base.authority)
        .await
        .with_context(|| format!("cannot connect to {}", base.authority))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

/// The diagnostics of an OperationOutcome response body (or the start of the body).
pub fn diagnostics(body: &[u8]) -> String {
    let from_outcome = serde_json::from_slice::<serde_json::Value>(body).ok().and_then(|v| {
        let issues = v.get("issue")?.as_array()?;
        let texts: Vec<&str> = issues.iter().filter_map(|i| i.get("diagnostics")?.as_str()).collect();
        (!texts.is_empty()).then(|| texts.join("; "))
    });
    from_outcome.unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let b = Base::parse("http://127.0.0.1:8080/fhir/").unwrap();
        assert_eq!((b.authority.as_str(), b.path.as_str()), ("127.0.0.1:8080", "/fhir"));
        assert_eq!(b.uri.to_string(), "http://127.0.0.1:8080/fhir");
        let b = Base::parse("http://localhost").unwrap();
        assert_eq!((b.authority.as_str(), b.path.as_str(), b.uri.path()), ("localhost:80", "", "/"));
        assert!(Base::parse("https://example.org/fhir").is_err());
    }

    #[test]
    fn extracts_diagnostics() {
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"a"},{"diagnostics":"b"}]}"#;
        assert_eq!(diagnostics(body), "a; b");
        assert_eq!(diagnostics(b"plain"), "plain");
    }

    #[test]
    fn builds_bearer_headers_and_refusals() {
        assert_eq!(bearer(" abc.def ").unwrap(), "Bearer abc.def");
        assert_eq!(bearer("Bearer abc").unwrap(), "Bearer abc");
        assert!(bearer(" ").is_err());
        assert!(bearer("a\nb").is_err());
        assert!(is_refusal(StatusCode::UNAUTHORIZED) && is_refusal(StatusCode::FORBIDDEN) && !is_refusal(StatusCode::NOT_FOUND));
        let body = br#"{"resourceType":"OperationOutcome","issue":[{"diagnostics":"the access token is not valid: expired"}]}"#;
        let message = refusal(StatusCode::UNAUTHORIZED, "POST /fhir", body).to_string();
        assert!(message.contains("HTTP 401 Unauthorized: the access token is not valid: expired"), "{message}");
        assert!(message.contains("tessera token --system"), "{message}");
    }
}
