//! The CapabilityStatement: what this server really does, generated from the same tables
//! the engine uses — the R4 search parameters, the operation table
//! ([`crate::operations::OPERATIONS`]) — and what the transport says of its security.

use crate::operations::OPERATIONS;
use crate::Engine;
use serde_json::{json, Value};

/// `rest.security` as the transport in front of the engine provides it.
#[derive(Debug, Clone, Default)]
pub struct RestSecurity {
    /// Cross-origin requests from browser apps are answered (for the configured origins).
    pub cors: bool,
    /// The OAuth2 token endpoint (absolute URL); `None`: the one SMART discovery names for
    /// this base URL (`[origin]/auth/token`).
    pub token_endpoint: Option<String>,
}

/// Interactions of an ordinary resource type.
const INTERACTIONS: [&str; 9] = ["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// The search parameters of `AuditEvent`: the audit trail is queried by who, whose record,
/// when, why and what (see `privacy::audit_search`), not through the search index.
const AUDIT_SEARCH_PARAMETERS: &[(&str, &str, &str)] = &[
    ("agent", "reference", "the user who acted (`Practitioner/[id]` or the id); also `user`"),
    ("patient", "reference", "whose record was accessed"),
    ("date", "date", "when, with a ge, gt, le or lt prefix (repeat for a range)"),
    ("purpose", "token", "`BTG`: break-glass accesses only (the privacy review queue)"),
    ("action", "token", "what was done (read, search, create, …); also `subtype`"),
    ("subtype", "token", "same as `action`"),
];

impl Engine {
    /// `GET /metadata`, without CORS.
    pub fn capability_statement(&self) -> Value {
        self.capability_statement_for(&RestSecurity::default())
    }

    /// `GET /metadata` for a transport with `security`.
    pub fn capability_statement_for(&self, security: &RestSecurity) -> Value {
        let config = self.config();
        let base = &config.base_url;
        let resources: Vec<Value> = tessera_fhir::definitions::resource_types().map(|t| self.resource_capability(t)).collect();
        let system_operations: Vec<Value> = OPERATIONS.iter().filter(|o| o.system).map(|o| operation_entry(o, base)).collect();
        let origin = base.trim_end_matches('/').trim_end_matches("/fhir");
        let smart = tessera_auth::smart_configuration(origin);
        let token = security.token_endpoint.clone().unwrap_or_else(|| smart["token_endpoint"].as_str().unwrap_or_default().to_string());
        let authorize = smart["authorization_endpoint"].as_str().unwrap_or_default().to_string();
        let mut rest = json!({
            "mode": "server",
            "security": {
                "cors": security.cors,
                "service": [{
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR", "display": "SMART-on-FHIR"}],
                    "text": "OAuth2 bearer tokens (SMART on FHIR scopes)",
                }],
                "description": "Every request but `metadata`, the OperationDefinitions and SMART discovery needs `Authorization: Bearer <token>`. \
                    Tokens come from the token endpoint (authorization code with PKCE for SMART apps — EHR and standalone launch through the authorization endpoint — \
                    and password, client credentials and refresh token grants; see `.well-known/smart-configuration`). \
                    What a token reaches is further limited by the user's role, the sharing table and care relationships.",
                "extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": token}, {"url": "authorize", "valueUri": authorize}],
                }],
            },
            "resource": resources,
            "interaction": [{"code": "transaction"}, {"code": "batch"}, {"code": "history-system"}, {"code": "search-system"}],
            "searchParam": [
                {"name": "_id", "type": "token"},
                {"name": "_lastUpdated", "type": "date"},
                {"name": "_type", "type": "token", "documentation": "the resource types searched"},
            ],
        });
        if !system_operations.is_empty() {
            rest["operation"] = Value::Array(system_operations);
        }
        // Where the websocket channel of Subscriptions is (R4: bind, bound, ping).
        let websocket = format!("{}/$subscription-websocket", base.trim_end_matches('/').replacen("https://", "wss://", 1).replacen("http://", "ws://", 1));
        rest["extension"] = json!([{"url": "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket", "valueUrl": websocket}]);
        json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": &crate::prepare::format_instant(tessera_store::now_micros())[..10],
            "publisher": "Tessera",
            "kind": "instance",
            "software": {"name": "Tessera", "version": env!("CARGO_PKG_VERSION")},
            "implementation": {"description": "Tessera shared-domain EHR — FHIR R4 API", "url": base},
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json", "json"],
            "patchFormat": ["application/json-patch+json"],
            "rest": [rest],
        })
    }

    /// The `rest.resource` entry of one type.
    fn resource_capability(&self, t: &str) -> Value {
        let base = &self.config().base_url;
        let mut entry = json!({
            "type": t,
            "profile": format!("http://hl7.org/fhir/StructureDefinition/{t}"),
        });
        match t {
            // Rendered from the audit trail: read and searched, never written.
            "AuditEvent" => {
                entry["interaction"] = interactions(&["read", "search-type"]);
                entry["searchParam"] = AUDIT_SEARCH_PARAMETERS.iter().map(|(n, k, d)| json!({"name": n, "type": k, "documentation": d})).collect();
            }
            // The server's own OperationDefinitions (crate::operations): generated, not stored.
            "OperationDefinition" => {
                entry["interaction"] = interactions(&["read", "search-type"]);
                entry["searchParam"] = crate::operations::SEARCH_PARAMETERS.iter().map(|(n, k)| json!({"name": n, "type": k})).collect();
            }
            _ => {
                entry["interaction"] = interactions(&INTERACTIONS);
                for (k, v) in [
                    ("versioning", json!("versioned-update")),
                    ("readHistory", json!(true)),
                    ("updateCreate", json!(self.config().update_create)),
                    ("conditionalCreate", json!(true)),
                    ("conditionalRead", json!("not-supported")),
                    ("conditionalUpdate", json!(true)),
                    ("conditionalDelete", json!("single")),
                    ("referencePolicy", json!(["literal", "logical"])),
                    ("searchParam", Value::Array(search_params(t))),
                    ("searchInclude", json!(["*"])),
                    ("searchRevInclude", json!(["*"])),
                ] {
                    entry[k] = v;
                }
            }
        }
        let operations: Vec<Value> = OPERATIONS.iter().filter(|o| o.applies_to(t)).map(|o| operation_entry(o, base)).collect();
        if !operations.is_empty() {
            entry["operation"] = Value::Array(operations);
        }
        entry
    }
}

fn interactions(codes: &[&str]) -> Value {
    codes.iter().map(|c| json!({"code": c})).collect()
}

fn operation_entry(o: &crate::operations::Operation, base_url: &str) -> Value {
    json!({"name": o.code, "definition": o.canonical(base_url), "documentation": o.documentation})
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
