//! Referential integrity of writes: a literal reference to a resource on this server must
//! name one that exists.
//!
//! Checked on create, update, patch and in batches and transactions, after a transaction
//! has rewritten its `urn:uuid:` and conditional references: every relative literal
//! reference (`Type/id`, `Type/id/_history/vid`) and every absolute one on this server's
//! base URL must name a current (not deleted) resource — or version — in the store, or one
//! the same transaction writes. The reference's target *type* is checked by validation
//! (`tessera_fhir::validation`, from the definitions' `targetProfile`).
//!
//! Not checked (by design, see `docs/integrators.md`): contained references (`#id`,
//! checked by validation against `contained`), absolute URLs of other servers, `urn:`
//! references outside a transaction (validation refuses an unresolved one inside), logical
//! references (`identifier` only), and the references inside an embedded resource of a
//! `Bundle` or `Parameters` (they resolve within the bundle). A reference to a resource
//! the writer may not see, but which exists, is accepted: the check asks the store, not the
//! gate, so it neither refuses nor reveals anything hidden beyond "exists". Turned off with
//! [`EngineConfig::check_references`](crate::EngineConfig) (bulk loads whose files arrive in
//! any order).

use crate::{Engine, FhirError};
use serde_json::Value;
use tessera_fhir::{Issue, IssueType};

/// A relative literal reference found in a resource.
struct Found<'v> {
    /// The `reference` string value (for its path, found by identity when reporting).
    value: &'v Value,
    resource_type: &'v str,
    id: &'v str,
    version: Option<&'v str>,
}

impl Engine {
    /// Checks the literal references of `resource` against the store. `known("Type/id")`
    /// says a target needs no look-up (the resource itself, the writes of the same
    /// transaction, resolved conditional references). `prefix` places the issues in a
    /// bundle entry (`Bundle.entry[3].resource`).
    pub(crate) async fn check_references(&self, resource: &Value, prefix: Option<&str>, known: &(dyn Fn(&str) -> bool + Sync)) -> Result<(), FhirError> {
        if !self.config().check_references {
            return Ok(());
        }
        let found = self.literal_references(resource);
        if found.is_empty() {
            return Ok(());
        }
        let mut issues = Vec::new();
        let mut checked: Vec<(&str, &str, Option<&str>)> = Vec::new();
        let mut missing: Vec<(&str, &str, Option<&str>)> = Vec::new();
        for f in &found {
            let key = (f.resource_type, f.id, f.version);
            let absent = if missing.contains(&key) {
                true
            } else if checked.contains(&key) || known(&format!("{}/{}", f.resource_type, f.id)) {
                false
            } else {
                let exists = match f.version {
                    None => self.store().read(f.resource_type, f.id).await?.is_some_and(|s| !s.deleted),
                    Some(v) => match v.parse::<u64>() {
                        Ok(v) => self.store().vread(f.resource_type, f.id, v).await?.is_some_and(|s| !s.deleted),
                        Err(_) => false,
                    },
                };
                if exists {
                    checked.push(key);
                } else {
                    missing.push(key);
                }
                !exists
            };
            if absent {
                let path = crate::invariants::path_of(resource, f.value).unwrap_or_default();
                let path = path.strip_suffix(".reference").unwrap_or(&path).to_string();
                let target = match f.version {
                    Some(v) => format!("{}/{}/_history/{v}", f.resource_type, f.id),
                    None => format!("{}/{}", f.resource_type, f.id),
                };
                let issue = Issue::error(
                    IssueType::NotFound,
                    format!("{path}: the referenced resource {target} does not exist on this server (a reference must name an existing resource, a contained one (#id), an entry of the same transaction, or another server's URL)"),
                )
                .at(path);
                issues.push(match prefix {
                    Some(p) => issue.prefixed(p),
                    None => issue,
                });
            }
        }
        if issues.is_empty() {
            Ok(())
        } else {
            Err(FhirError::invalid(issues))
        }
    }

    /// The relative literal references of `resource` (absolute ones on this server's base
    /// URL included), outside embedded Bundle/Parameters resources.
    fn literal_references<'v>(&self, resource: &'v Value) -> Vec<Found<'v>> {
        let mut out = Vec::new();
        if matches!(resource.get("resourceType").and_then(Value::as_str), Some("Bundle" | "Parameters")) {
            return out;
        }
        let base = self.config().base_url.as_str();
        walk(resource, base, &mut out);
        out
    }
}

fn walk<'v>(value: &'v Value, base: &str, out: &mut Vec<Found<'v>>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("reference", Value::String(r)) => {
                        if let Some(found) = literal(r, v, base) {
                            out.push(found);
                        }
                    }
                    _ => walk(v, base, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, base, out)),
        _ => {}
    }
}

/// `Type/id[/_history/vid]`, relative or on this server's base URL.
fn literal<'v>(r: &'v str, value: &'v Value, base: &str) -> Option<Found<'v>> {
    let relative = if r.starts_with("http://") || r.starts_with("https://") {
        r.strip_prefix(base)?.strip_prefix('/')?
    } else {
        r
    };
    let (resource_type, id) = tessera_fhir::reference::parse_relative(relative)?;
    let version = relative.split_once("/_history/").map(|(_, v)| v);
    tessera_fhir::definitions::is_resource_type(resource_type).then_some(Found { value, resource_type, id, version })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn literal_references() {
        let base = "http://localhost:8080/fhir";
        let r = json!({"resourceType": "Observation",
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "http://localhost:8080/fhir/Practitioner/d1/_history/2"}, {"reference": "https://elsewhere.example/fhir/Practitioner/x"},
                {"reference": "#c"}, {"reference": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"}, {"identifier": {"value": "1"}}],
            "contained": [{"resourceType": "Device", "id": "c", "owner": {"reference": "Organization/o1"}}]});
        let mut out = Vec::new();
        walk(&r, base, &mut out);
        let found: Vec<_> = out.iter().map(|f| (f.resource_type, f.id, f.version)).collect();
        assert_eq!(found, [("Patient", "p1", None), ("Practitioner", "d1", Some("2")), ("Organization", "o1", None)]);
    }
}
