//! The CapabilityStatement: what this server really does, generated from the same tables
//! the engine uses.

use crate::Engine;
use serde_json::{json, Value};

impl Engine {
    /// `GET /metadata`
    pub fn capability_statement(&self) -> Value {
        let update_create = self.config().update_create;
        let resources: Vec<Value> = tessera_fhir::definitions::resource_types()
            .map(|t| {
                let interactions: Vec<Value> =
                    ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]
                        .iter()
                        .map(|c| json!({"code": c}))
                        .collect();
                json!({
                    "type": t,
                    "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
                    "interaction": interactions,
                    "versioning": "versioned-update",
                    "readHistory": true,
                    "updateCreate": update_create,
                    "conditionalCreate": true,
                    "conditionalRead": "not-supported",
                    "conditionalUpdate": true,
                    "conditionalDelete": "single",
                    "referencePolicy": ["literal", "logical"],
                    "searchParam": search_params(t),
                    "searchInclude": ["*"],
                    "searchRevInclude": ["*"],
                })
            })
            .collect();
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": &crate::prepare::format_instant(tessera_store::now_micros())[..10],
            "publisher": "Tessera",
            "kind": "instance",
            "software": {"name": "Tessera", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {"description": "Tessera shared-domain EHR — FHIR R4 API", "url": self.config().base_url},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "patchFormat": ["application/json-patch+json"],
            "rest": [{
                "mode": "server",
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}, {"code": "search-system"}],
                "operation": [{"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}],
            }],
        })
    }
}

/// The search parameters of a type: `_id`, `_lastUpdated`, the common `_tag`/`_profile`/
/// `_security`/`_source`, `_content` (and `_text` on domain resources), `_list`, and every
/// R4 parameter of the type (composites and `near` included).
fn search_params(resource_type: &str) -> Vec<Value> {
    let mut out = vec![
        json!({"name": "_id", "type": "token"}),
        json!({"name": "_lastUpdated", "type": "date"}),
        json!({"name": "_tag", "type": "token"}),
        json!({"name": "_profile", "type": "uri"}),
        json!({"name": "_security", "type": "token"}),
        json!({"name": "_source", "type": "uri"}),
        json!({"name": "_content", "type": "string", "documentation": "every text of the resource contains all the words; checked on each candidate"}),
        json!({"name": "_list", "type": "special", "documentation": "the resources a List (by id) holds"}),
    ];
    if !matches!(resource_type, "Bundle" | "Binary" | "Parameters") {
        out.push(json!({"name": "_text", "type": "string", "documentation": "the narrative contains all the words; checked on each candidate"}));
    }
    for p in tessera_fhir::definitions::search_parameters_for(resource_type) {
        if p.code.starts_with('_') {
            continue;
        }
        out.push(json!({"name": p.code, "definition": p.url, "type": p.kind}));
    }
    out
}
