//! Reading what the engine answered: batch/transaction response bundles and errors.

use serde_json::Value;
use tessera_engine::FhirError;

/// The HTTP status code at the start of a `response.status` (`"201 Created"` → 201).
pub fn status_code(status: &str) -> Option<u16> {
    status.split_whitespace().next()?.parse().ok()
}

/// The result of one response entry: `Ok(())` for a 2xx status, otherwise the status
/// code (0 if unreadable) and the error message.
pub type EntryResult = Result<(), (u16, String)>;

/// The result of each entry of a batch- or transaction-response Bundle, in entry order.
pub fn entry_results(response: &[u8]) -> Result<Vec<EntryResult>, String> {
    let bundle: Value = serde_json::from_slice(response).map_err(|e| format!("the engine returned an unreadable response bundle: {e}"))?;
    let entries = bundle.get("entry").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    Ok(entries
        .iter()
        .map(|entry| {
            let response = entry.get("response");
            let status = response.and_then(|r| r.get("status")).and_then(Value::as_str).unwrap_or("");
            match status_code(status) {
                Some(code) if (200..300).contains(&code) => Ok(()),
                _ => {
                    let outcome = response.and_then(|r| r.get("outcome"));
                    let details = outcome.map(outcome_message).filter(|m| !m.is_empty());
                    let message = match details {
                        Some(d) => format!("{status}: {d}"),
                        None => format!("response status '{status}'"),
                    };
                    Err((status_code(status).unwrap_or(0), message))
                }
            }
        })
        .collect())
}

/// The diagnostics of an OperationOutcome resource, with the elements they concern.
pub fn outcome_message(outcome: &Value) -> String {
    let issues = outcome.get("issue").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    issues
        .iter()
        .map(|issue| {
            let diagnostics = issue.get("diagnostics").and_then(Value::as_str).unwrap_or("");
            let expression: Vec<&str> =
                issue.get("expression").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).collect();
            if expression.is_empty() {
                diagnostics.to_string()
            } else {
                format!("{diagnostics} (at {})", expression.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// One message per issue of an engine error, each with the bundle entry it names
/// (from an expression `Bundle.entry[i]…`), if any.
pub fn error_messages(e: &FhirError) -> Vec<(Option<usize>, String)> {
    if e.issues.is_empty() {
        return vec![(None, format!("{}", e.status))];
    }
    e.issues
        .iter()
        .map(|issue| {
            let entry = issue.expression.iter().find_map(|x| bundle_entry_index(x));
            let mut message = format!("{}: {}", e.status, issue.diagnostics);
            if !issue.expression.is_empty() {
                message.push_str(&format!(" (at {})", issue.expression.join(", ")));
            }
            (entry, message)
        })
        .collect()
}

/// `Bundle.entry[12].resource.status` → 12.
pub fn bundle_entry_index(expression: &str) -> Option<usize> {
    let rest = expression.strip_prefix("Bundle.entry[")?;
    rest[..rest.find(']')?].parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entry_results() {
        let response = br#"{"resourceType":"Bundle","type":"batch-response","entry":[
            {"response":{"status":"201 Created"}},
            {"response":{"status":"400 Bad Request","outcome":{"resourceType":"OperationOutcome",
              "issue":[{"severity":"error","code":"invalid","diagnostics":"bad date","expression":["Bundle.entry[1].resource.birthDate"]}]}}},
            {"response":{"status":"200 OK"}}]}"#;
        let results = entry_results(response).unwrap();
        assert_eq!(results.len(), 3);
        assert!(results[0].is_ok() && results[2].is_ok());
        assert_eq!(results[1].as_ref().unwrap_err(), &(400, "400 Bad Request: bad date (at Bundle.entry[1].resource.birthDate)".to_string()));
    }

    #[test]
    fn finds_entry_index() {
        assert_eq!(bundle_entry_index("Bundle.entry[12].resource.status"), Some(12));
        assert_eq!(bundle_entry_index("Bundle.entry"), None);
        assert_eq!(bundle_entry_index("Patient.name"), None);
    }
}
