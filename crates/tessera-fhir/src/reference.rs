//! References inside a resource.
//!
//! A FHIR `Reference` is any JSON object with a string `reference` member; that shape is
//! unique to the Reference data type in R4, so walking the JSON tree finds them all,
//! including those inside extensions and contained resources.

use serde_json::Value;

/// Calls `f` with every `Reference.reference` string in `value`.
pub fn for_each_reference(value: &Value, f: &mut impl FnMut(&str)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(s)) => f(s),
                    _ => for_each_reference(v, f),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| for_each_reference(v, f)),
        _ => {}
    }
}

/// Calls `f` with a mutable handle on every `Reference.reference` string in `value`.
pub fn for_each_reference_mut(value: &mut Value, f: &mut impl FnMut(&mut String)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                match v {
                    Value::String(s) if k == "reference" => f(s),
                    _ => for_each_reference_mut(v, f),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| for_each_reference_mut(v, f)),
        _ => {}
    }
}

/// A literal relative reference `Type/id` (optionally `Type/id/_history/vid`), split.
pub fn parse_relative(reference: &str) -> Option<(&str, &str)> {
    let mut parts = reference.split('/');
    let ty = parts.next()?;
    let id = parts.next()?;
    match (parts.next(), parts.next(), parts.next()) {
        (None, None, None) | (Some("_history"), Some(_), None) => {}
        _ => return None,
    }
    let valid_type = ty.starts_with(|c: char| c.is_ascii_uppercase()) && ty.chars().all(|c| c.is_ascii_alphanumeric());
    (valid_type && crate::validation::is_valid_id(id)).then_some((ty, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_nested_references() {
        let r = json!({"resourceType": "Observation", "subject": {"reference": "Patient/1"},
            "extension": [{"url": "x", "valueReference": {"reference": "Practitioner/2"}}]});
        let mut seen = Vec::new();
        for_each_reference(&r, &mut |s| seen.push(s.to_string()));
        assert_eq!(seen, vec!["Patient/1", "Practitioner/2"]);
    }

    #[test]
    fn parses_relative_references() {
        assert_eq!(parse_relative("Patient/123"), Some(("Patient", "123")));
        assert_eq!(parse_relative("Patient/123/_history/2"), Some(("Patient", "123")));
        assert_eq!(parse_relative("urn:uuid:abc"), None);
        assert_eq!(parse_relative("Patient"), None);
        assert_eq!(parse_relative("http://x/Patient/1"), None);
    }
}
