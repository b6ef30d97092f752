//! Request URLs that no FHIR request needs are refused before any handler sees them: a
//! path or query that holds a control character (NUL, escape, …) once percent-decoded, or
//! that is not UTF-8. Answered with 400 and an OperationOutcome naming the part.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tessera_engine::FhirError;

pub(crate) async fn check_url(req: Request, next: Next) -> Response {
    match url_problem(req.uri()) {
        Some(message) => crate::handlers::error(FhirError::bad_request(message)),
        None => next.run(req).await,
    }
}

/// What is wrong with the URL, if anything.
fn url_problem(uri: &http::Uri) -> Option<String> {
    let parts = [("path", uri.path().to_string()), ("query", uri.query().unwrap_or("").replace('+', " "))];
    for (part, raw) in parts {
        let bytes: Vec<u8> = percent_encoding::percent_decode_str(&raw).collect();
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return Some(format!("the {part} of the URL is not valid UTF-8 once percent-decoded"));
        };
        if let Some((at, c)) = text.char_indices().find(|(_, c)| c.is_control()) {
            return Some(format!(
                "the {part} of the URL holds the control character U+{:04X} at byte {at} (percent-decoded): no FHIR id, parameter or value contains one",
                c as u32
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::url_problem;

    #[test]
    fn control_characters_and_bad_utf8_are_named() {
        let problem = |u: &str| url_problem(&u.parse().unwrap());
        assert_eq!(problem("/fhir/Patient?name=smith&birthdate=ge2000"), None);
        assert_eq!(problem("/fhir/Patient?name=J%C3%B6rg"), None);
        assert!(problem("/fhir/Patient/%00").unwrap().contains("path"));
        assert!(problem("/fhir/Patient?name=%00").unwrap().contains("U+0000"));
        assert!(problem("/fhir/AuditEvent?agent=a%1Bb").unwrap().contains("U+001B"));
        assert!(problem("/fhir/Patient?name=%FF%FE").unwrap().contains("UTF-8"));
    }
}
