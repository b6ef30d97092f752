//! The SMART on FHIR discovery document (`GET {base}/.well-known/smart-configuration`).

use crate::oauth::{CLIENT_CREDENTIALS_GRANT, PASSWORD_GRANT, REFRESH_TOKEN_GRANT, SWITCH_CONTEXT_GRANT};
use serde_json::{json, Value};

/// The `/.well-known/smart-configuration` document for a server at `base_url` (the FHIR
/// base, e.g. `https://ehr.example.org/fhir`; a trailing `/` is ignored). Lists only what
/// the token endpoint really does: no authorization endpoint (no app launch), no OpenID
/// Connect; refresh tokens (single use, rotated) for users; client secrets by HTTP Basic or
/// form parameters; SMART v1 and v2 scope syntax at user and system level.
pub fn smart_configuration(base_url: &str) -> Value {
    let base = base_url.trim_end_matches('/');
    json!({
        "token_endpoint": format!("{base}/auth/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": [PASSWORD_GRANT, CLIENT_CREDENTIALS_GRANT, REFRESH_TOKEN_GRANT, SWITCH_CONTEXT_GRANT],
        "scopes_supported": [
            "user/*.cruds", "user/*.rs", "user/*.*", "user/*.read", "user/*.write",
            "system/*.cruds", "system/*.rs", "system/*.*", "system/*.read", "system/*.write"
        ],
        "capabilities": ["client-confidential-symmetric", "permission-v1", "permission-v2", "permission-user"]
    })
}
