//! Content negotiation: Tessera speaks FHIR JSON; XML is answered with 406.

use http::HeaderMap;
use tessera_engine::FhirError;
use tessera_fhir::IssueType;

const JSON_TYPES: &[&str] = &["application/fhir+json", "application/json", "application/json+fhir", "text/json"];

fn is_json(media: &str) -> bool {
    JSON_TYPES.contains(&media)
}

/// Checks `_format` and `Accept`; `Err` is a 406.
pub fn response_format(headers: &HeaderMap, query: &str) -> Result<(), FhirError> {
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "_format" {
            // Decoded without turning `+` into a space: `_format=application/fhir+json` is common.
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            let v = v.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if !(v == "json" || is_json(&v)) {
                return Err(not_acceptable(&v));
            }
            return Ok(());
        }
    }
    let Some(accept) = headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return Ok(());
    };
    if accept.trim().is_empty() {
        return Ok(());
    }
    let acceptable = accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let q_zero = part.split(';').skip(1).any(|p| matches!(p.trim(), "q=0" | "q=0.0" | "q=0.00" | "q=0.000"));
        !q_zero && (is_json(&media) || media == "*/*" || media == "application/*")
    });
    if acceptable {
        Ok(())
    } else {
        Err(not_acceptable(accept))
    }
}

fn not_acceptable(what: &str) -> FhirError {
    FhirError::new(406, IssueType::NotSupported, format!("cannot answer in '{what}': this server speaks FHIR JSON (application/fhir+json)"))
}

/// What the request body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    JsonPatch,
    Form,
}

/// Checks the request `Content-Type`; `Err` is a 415.
pub fn request_body(headers: &HeaderMap) -> Result<BodyKind, FhirError> {
    let Some(ct) = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return Ok(BodyKind::Json);
    };
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if is_json(&media) {
        Ok(BodyKind::Json)
    } else if media == "application/json-patch+json" {
        Ok(BodyKind::JsonPatch)
    } else if media == "application/x-www-form-urlencoded" {
        Ok(BodyKind::Form)
    } else {
        Err(FhirError::new(415, IssueType::NotSupported, format!("cannot read a body of type '{ct}': send application/fhir+json")))
    }
}

/// Whether the body is a JSON Merge Patch (`application/merge-patch+json`, RFC 7386), which
/// only PATCH takes ([`request_body`] refuses it).
pub fn is_merge_patch(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/merge-patch+json"))
}

/// The `Content-Type` of a body that is not FHIR, JSON Patch or a form — raw content for a
/// `Binary` — or `None`.
pub fn raw_media(headers: &HeaderMap) -> Option<String> {
    let ct = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok())?;
    let media = ct.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    if media.is_empty() || is_json(&media) || matches!(media.as_str(), "application/json-patch+json" | "application/merge-patch+json" | "application/x-www-form-urlencoded") {
        None
    } else {
        Some(ct.trim().to_string())
    }
}

/// Whether a read of a `Binary` answers its raw content: the request names no FHIR format
/// (`_format` absent, and an `Accept` that lists no FHIR or JSON type — `*/*` included).
pub fn wants_raw(headers: &HeaderMap, query: &str) -> bool {
    if query.split('&').any(|p| p.split('=').next() == Some("_format")) {
        return false;
    }
    let Some(accept) = headers.get(http::header::ACCEPT).and_then(|v| v.to_str().ok()).filter(|a| !a.trim().is_empty()) else {
        return false;
    };
    !accept.split(',').any(|part| {
        let media = part.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        is_json(&media) || matches!(media.as_str(), "application/fhir+xml" | "application/xml+fhir" | "application/xml" | "text/xml")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::ACCEPT, v.parse().unwrap());
        h
    }

    #[test]
    fn negotiates() {
        assert!(response_format(&HeaderMap::new(), "").is_ok());
        assert!(response_format(&accept("application/fhir+json"), "").is_ok());
        assert!(response_format(&accept("text/html, */*;q=0.8"), "").is_ok());
        assert_eq!(response_format(&accept("application/fhir+xml"), "").unwrap_err().status, 406);
        assert_eq!(response_format(&HeaderMap::new(), "_format=xml").unwrap_err().status, 406);
        assert!(response_format(&accept("application/fhir+xml"), "_format=json").is_ok());
        assert!(response_format(&HeaderMap::new(), "_format=application/fhir+json").is_ok());
        assert!(response_format(&HeaderMap::new(), "_format=application%2Ffhir%2Bjson").is_ok());
    }

    #[test]
    fn binary_negotiation() {
        assert!(!wants_raw(&HeaderMap::new(), ""));
        assert!(wants_raw(&accept("application/pdf"), ""));
        assert!(wants_raw(&accept("*/*"), ""));
        assert!(!wants_raw(&accept("application/fhir+json"), ""));
        assert!(!wants_raw(&accept("application/pdf"), "_format=json"));
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, "image/png".parse().unwrap());
        assert_eq!(raw_media(&h).as_deref(), Some("image/png"));
        h.insert(http::header::CONTENT_TYPE, "application/fhir+json; charset=utf-8".parse().unwrap());
        assert_eq!(raw_media(&h), None);
    }
}
