//! The SMART on FHIR discovery document (`GET {base}/.well-known/smart-configuration`).

use crate::oauth::{CLIENT_CREDENTIALS_GRANT, PASSWORD_GRANT, REFRESH_TOKEN_GRANT, SWITCH_CONTEXT_GRANT};
use serde_json::{json, Value};

/// The `/.well-known/smart-configuration` document for a server at `base_url` (the server's
/// root, e.g. `https://ehr.example.org`; a trailing `/` is ignored): SMART App Launch 2.0
/// with the authorization-code grant (PKCE S256 required), EHR and standalone launch with a
/// patient in context, public and confidential (client secret) apps, refresh tokens (single
/// use, rotated), SMART v1 and v2 scopes; plus the password, client-credentials and
/// context-switch grants of Tessera's own clients. No OpenID Connect (no `id_token`).
pub fn smart_configuration(base_url: &str) -> Value {
    let base = base_url.trim_end_matches('/');
    json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/auth/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "grant_types_supported": [crate::authorize::AUTHORIZATION_CODE_GRANT, PASSWORD_GRANT, CLIENT_CREDENTIALS_GRANT, REFRESH_TOKEN_GRANT, SWITCH_CONTEXT_GRANT],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": [
            "launch", "launch/patient", "offline_access", "online_access",
            "patient/*.rs", "patient/*.read", "patient/*.cruds",
            "user/*.cruds", "user/*.rs", "user/*.*", "user/*.read", "user/*.write",
            "system/*.cruds", "system/*.rs", "system/*.*", "system/*.read", "system/*.write"
        ],
        "capabilities": [
            "launch-ehr", "launch-standalone", "client-public", "client-confidential-symmetric",
            "context-ehr-patient", "context-standalone-patient", "context-banner",
            "permission-offline", "permission-online", "permission-patient", "permission-user", "permission-v1", "permission-v2"
        ]
    })
}
