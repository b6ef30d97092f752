//! Query strings the engine evaluates itself: conditional create (`If-None-Exist`),
//! conditional update and delete, and conditional references inside transactions
//! (`Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999999619`).
//! Parameters: `_id` and `identifier` (token: `system|value`, `|value`, `value`).

use crate::FhirError;
use tessera_store::{Criteria, TokenMatch};

/// Parses `a=b&c=d` for `resource_type` into store criteria.
pub fn parse(resource_type: &str, query: &str) -> Result<Criteria, FhirError> {
    let mut criteria = Criteria { resource_type: resource_type.to_string(), ..Default::default() };
    let mut any = false;
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        any = true;
        refuse_controls(&name, &value)?;
        match name.as_ref() {
            "_id" => {
                if criteria.id.as_ref().is_some_and(|id| id != value.as_ref()) {
                    // Two different ids ANDed: nothing can match (no identifier has an
                    // empty value).
                    criteria.identifiers.push(TokenMatch { system: Some(String::new()), value: String::new() });
                }
                criteria.id = Some(value.into_owned());
            }
            "identifier" => criteria.identifiers.push(parse_token(&value)?),
            other => {
                return Err(FhirError::bad_request(format!(
                    "search parameter '{other}' is not supported in conditional operations (supported: _id, identifier)"
                )))
            }
        }
    }
    if !any {
        return Err(FhirError::bad_request("a conditional operation needs at least one search criterion"));
    }
    Ok(criteria)
}

/// No id, identifier or search value holds a control character (NUL …): 400, not a
/// database error.
pub(crate) fn refuse_controls(name: &str, value: &str) -> Result<(), FhirError> {
    for text in [name, value] {
        if let Some(c) = text.chars().find(|c| c.is_control()) {
            return Err(FhirError::bad_request(format!("the parameter '{}' holds the control character U+{:04X}", name.escape_debug(), c as u32)).at(name.escape_debug().to_string()));
        }
    }
    Ok(())
}

fn parse_token(value: &str) -> Result<TokenMatch, FhirError> {
    if value.contains(',') {
        return Err(FhirError::bad_request("identifier lists (OR) are not supported in conditional operations"));
    }
    Ok(match value.split_once('|') {
        Some((system, code)) => TokenMatch { system: Some(system.to_string()), value: code.to_string() },
        None => TokenMatch { system: None, value: value.to_string() },
    })
}

/// Splits a conditional reference `Type?query` into its type and query.
pub fn split_conditional_reference(reference: &str) -> Option<(&str, &str)> {
    let (ty, query) = reference.split_once('?')?;
    tessera_fhir::definitions::is_resource_type(ty).then_some((ty, query))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_identifier_tokens() {
        let c = parse("Practitioner", "identifier=http://hl7.org/fhir/sid/us-npi%7C99").unwrap();
        assert_eq!(c.identifiers, vec![TokenMatch { system: Some("http://hl7.org/fhir/sid/us-npi".into()), value: "99".into() }]);
        let c = parse("Patient", "identifier=|x&_id=1").unwrap();
        assert_eq!(c.identifiers[0].system.as_deref(), Some(""));
        assert_eq!(c.id.as_deref(), Some("1"));
        assert!(parse("Patient", "name=x").is_err());
        assert!(parse("Patient", "").is_err());
    }
}
