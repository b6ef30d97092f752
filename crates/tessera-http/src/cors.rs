//! Cross-origin requests (CORS) for browser apps, with `tower-http`'s CORS layer.
//!
//! Off unless origins are configured ([`crate::HttpConfig::cors_origins`], `tessera serve
//! --cors-origin`). An origin is allowed when it equals a configured one, or matches one
//! whose port is `*` (`http://localhost:*`: any port, or none), or when `*` is configured
//! (any origin). A disallowed origin gets no CORS headers, so the browser withholds the
//! response from the page.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered
//! here, without a token (browsers never send credentials on a preflight). Other `OPTIONS`
//! requests go on to the router (405 with an OperationOutcome). The token itself is sent
//! in `Authorization`, so no `Access-Control-Allow-Credentials` is ever sent: cookies play
//! no part in this API.

use axum::extract::Request;
use axum::response::Response;
use http::{header, HeaderName, HeaderValue, Method};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;
use tower::{Layer, Service, ServiceExt};
use tower_http::cors::{AllowOrigin, CorsLayer};

/// Request headers a page may send (beyond the CORS-safelisted ones).
const ALLOWED_HEADERS: [HeaderName; 10] = [
    header::AUTHORIZATION,
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::ACCEPT,
    HeaderName::from_static("prefer"),
    header::IF_MATCH,
    HeaderName::from_static("if-none-exist"),
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    HeaderName::from_static("x-request-id"),
];

/// Response headers a page may read (beyond the CORS-safelisted ones).
const EXPOSED_HEADERS: [HeaderName; 6] =
    [header::ETAG, header::LOCATION, header::CONTENT_LOCATION, header::LAST_MODIFIED, header::WWW_AUTHENTICATE, header::RETRY_AFTER];

const ALLOWED_METHODS: [Method; 6] = [Method::GET, Method::HEAD, Method::POST, Method::PUT, Method::PATCH, Method::DELETE];

/// How long a browser may cache a preflight's answer.
const MAX_AGE: Duration = Duration::from_secs(600);

/// One configured origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// `*`: any origin.
    Any,
    /// `scheme://host[:port]`, compared ignoring ASCII case.
    Exact(String),
    /// `scheme://host:*`: that scheme and host, with any port or none.
    AnyPort(String),
}

/// Checks one `--cors-origin` value: `*`, `scheme://host[:port]` or `scheme://host:*`
/// (scheme `http` or `https`, no path). A trailing `/` is ignored.
pub fn check_origin(origin: &str) -> Result<(), String> {
    parse_rule(origin).map(|_| ())
}

fn parse_rule(origin: &str) -> Result<Rule, String> {
    let o = origin.trim().trim_end_matches('/');
    if o == "*" {
        return Ok(Rule::Any);
    }
    let bad = |why: &str| Err(format!("CORS origin '{origin}' {why}; give scheme://host[:port], scheme://host:* (any port) or *"));
    let Some((scheme, rest)) = o.split_once("://") else { return bad("has no scheme") };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return bad("is not http or https");
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return bad("is not an origin (it has a path, query, user or space, or no host)");
    }
    if let Some(host) = rest.strip_suffix(":*") {
        if host.is_empty() || host.contains(':') && !host.ends_with(']') {
            return bad("has no host before :*");
        }
        return Ok(Rule::AnyPort(format!("{scheme}://{host}").to_ascii_lowercase()));
    }
    if let Some((_, port)) = rest.rsplit_once(':').filter(|(h, _)| !h.is_empty() && (!h.starts_with('[') || h.ends_with(']'))) {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return bad("has a port that is not a number or *");
        }
    }
    Ok(Rule::Exact(o.to_ascii_lowercase()))
}

fn matches(rules: &[Rule], origin: &str) -> bool {
    let origin = origin.to_ascii_lowercase();
    rules.iter().any(|r| match r {
        Rule::Any => true,
        Rule::Exact(o) => *o == origin,
        Rule::AnyPort(prefix) => origin.strip_prefix(prefix.as_str()).is_some_and(|rest| {
            rest.is_empty() || rest.strip_prefix(':').is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        }),
    })
}

/// The origins `--demo` allows: pages served from this machine, on any port.
pub const DEMO_ORIGINS: [&str; 3] = ["http://localhost:*", "http://127.0.0.1:*", "http://[::1]:*"];

/// The CORS layer for the configured origins (inactive when there are none). Invalid
/// entries are left out with a warning (`tessera serve` refuses them before this).
pub(crate) fn layer(origins: &[String]) -> Cors {
    let rules: Vec<Rule> = origins
        .iter()
        .filter_map(|o| parse_rule(o).map_err(|e| tracing::warn!("{e}: ignored")).ok())
        .collect();
    if rules.is_empty() {
        return Cors(None);
    }
    let allow_origin = if rules.contains(&Rule::Any) {
        AllowOrigin::any()
    } else {
        AllowOrigin::predicate(move |origin: &HeaderValue, _| origin.to_str().is_ok_and(|o| matches(&rules, o)))
    };
    Cors(Some(
        CorsLayer::new()
            .allow_origin(allow_origin)
            .allow_methods(ALLOWED_METHODS)
            .allow_headers(ALLOWED_HEADERS)
            .expose_headers(EXPOSED_HEADERS)
            .max_age(MAX_AGE),
    ))
}

/// A preflight: `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub(crate) fn is_preflight<B>(req: &http::Request<B>) -> bool {
    req.method() == Method::OPTIONS && req.headers().contains_key(header::ORIGIN) && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// `tower-http`'s CORS layer, applied to preflights and non-`OPTIONS` requests only (it
/// would answer every `OPTIONS` itself).
#[derive(Clone)]
pub(crate) struct Cors(Option<CorsLayer>);

impl<S: Clone> Layer<S> for Cors {
    type Service = CorsService<S>;

    fn layer(&self, inner: S) -> CorsService<S> {
        CorsService { cors: self.0.as_ref().map(|l| l.layer(inner.clone())), inner }
    }
}

#[derive(Clone)]
pub(crate) struct CorsService<S> {
    cors: Option<tower_http::cors::Cors<S>>,
    inner: S,
}

impl<S> Service<Request> for CorsService<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // Each call readies its own clone.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match &self.cors {
            Some(cors) if req.method() != Method::OPTIONS || is_preflight(&req) => Box::pin(cors.clone().oneshot(req)),
            _ => Box::pin(self.inner.clone().oneshot(req)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_parsed_and_matched() {
        let rules: Vec<Rule> = ["https://App.example.org/", "http://localhost:*", "http://[::1]:*", "https://x.example:8443"].iter().map(|o| parse_rule(o).unwrap()).collect();
        for ok in ["https://app.example.org", "http://localhost", "http://localhost:5173", "http://[::1]:3000", "https://x.example:8443"] {
            assert!(matches(&rules, ok), "{ok}");
        }
        for no in ["https://app.example.org.evil.com", "http://app.example.org", "https://localhost:5173", "http://localhost.evil.com", "http://localhost:", "http://localhost:80x", "https://x.example", "null"] {
            assert!(!matches(&rules, no), "{no}");
        }
        assert!(matches(&[parse_rule("*").unwrap()], "https://anything.example"));
        for bad in ["localhost", "ftp://x", "https://x/path", "https://x:port", "http://:*", "https://user@x"] {
            assert!(check_origin(bad).is_err(), "{bad}");
        }
    }
}
