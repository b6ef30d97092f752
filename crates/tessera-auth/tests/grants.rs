mod common;

use common::{auth, domain, LAB_SECRET, NOW, PATEL_PASSWORD};
use tessera_auth::{
    parse_basic_auth, smart_configuration, token, token_with_claims, OAuthError, OAuthErrorCode, ScopeOp, TokenKind, TokenResponse,
};

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

fn password(extra: &[(&str, &str)]) -> Result<TokenResponse, OAuthError> {
    let mut pairs = vec![("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)];
    pairs.extend_from_slice(extra);
    token(&auth(), domain(), &form(&pairs), None, NOW)
}

fn assert_error(result: Result<TokenResponse, OAuthError>, code: OAuthErrorCode, description_part: &str) -> OAuthError {
    let err = result.expect_err("should be refused");
    assert_eq!(err.error, code, "{err}");
    assert!(err.error_description.contains(description_part), "{:?} lacks {description_part:?}", err.error_description);
    err
}

#[test]
fn password_grant() {
    let r = password(&[]).unwrap();
    assert_eq!(r.token_type, "Bearer");
    assert_eq!(r.expires_in, 15 * 60);
    assert_eq!(r.scope, "user/*.cruds");
    assert_eq!((r.organisation.as_str(), r.role.as_deref(), r.location.as_deref()), ("rx1-general", Some("doctor"), Some("ward-7a")));
    let claims = auth().verify_at(&r.access_token, NOW).unwrap();
    assert_eq!((claims.kind, claims.sub.as_str(), claims.org.as_str()), (TokenKind::User, "dr.patel", "rx1-general"));

    // The JSON body.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["token_type"], "Bearer");
    assert_eq!(json["organisation"], "rx1-general");
    assert_eq!(json["location"], "ward-7a");

    // Scope requested, narrowed to what users may have.
    let r = password(&[("scope", "openid fhirUser user/Observation.rs system/*.*")]).unwrap();
    assert_eq!(r.scope, "user/Observation.rs");
    let r = password(&[("scope", "user/*.read")]).unwrap();
    assert_eq!(r.scope, "user/*.read");
    assert_error(password(&[("scope", "system/*.*")]), OAuthErrorCode::InvalidScope, "can be granted to a user");
    assert_error(password(&[("scope", "user/*.xyz")]), OAuthErrorCode::InvalidScope, "user/*.xyz");
}

#[test]
fn password_grant_refusals() {
    let t = |pairs: &[(&str, &str)]| token(&auth(), domain(), &form(pairs), None, NOW);
    let wrong = assert_error(
        t(&[("grant_type", "password"), ("username", "dr.patel"), ("password", "wrong")]),
        OAuthErrorCode::InvalidGrant,
        "invalid username or password",
    );
    assert_eq!(wrong.status(), 400);
    assert_eq!(wrong.to_json(), serde_json::json!({"error": "invalid_grant", "error_description": "invalid username or password"}));
    assert_eq!(serde_json::to_value(&wrong).unwrap(), wrong.to_json());
    // Unknown users are refused in the same words.
    assert_eq!(t(&[("grant_type", "password"), ("username", "dr.who"), ("password", "x")]).unwrap_err(), wrong);
    assert_eq!(t(&[("grant_type", "password"), ("username", "no.password"), ("password", "")]).unwrap_err().error, OAuthErrorCode::InvalidRequest);
    assert_eq!(t(&[("grant_type", "password"), ("username", "no.password"), ("password", "x")]).unwrap_err(), wrong);
    // Inactive user: refused, even with the right password.
    assert_error(
        t(&[("grant_type", "password"), ("username", "nurse.jones"), ("password", "nurse-password")]),
        OAuthErrorCode::InvalidGrant,
        "not active",
    );
    assert_eq!(t(&[("grant_type", "password"), ("username", "nurse.jones"), ("password", "wrong")]).unwrap_err(), wrong);
    // Missing parameters.
    assert_error(t(&[("grant_type", "password"), ("password", "x")]), OAuthErrorCode::InvalidRequest, "missing parameter `username`");
    assert_error(t(&[("grant_type", "password"), ("username", "dr.patel")]), OAuthErrorCode::InvalidRequest, "missing parameter `password`");
    assert_error(t(&[("username", "dr.patel")]), OAuthErrorCode::InvalidRequest, "missing parameter `grant_type`");
    assert_error(t(&[("grant_type", "implicit")]), OAuthErrorCode::UnsupportedGrantType, "`implicit`");
    assert_error(
        t(&[("grant_type", "password"), ("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)]),
        OAuthErrorCode::InvalidRequest,
        "`grant_type` is repeated",
    );
}

#[test]
fn password_grant_context() {
    let r = password(&[("role", "consultant"), ("organisation", "rx2")]).unwrap();
    assert_eq!((r.organisation.as_str(), r.role.as_deref(), r.location.as_deref()), ("rx2", Some("consultant"), Some("clinic-2")));
    let r = password(&[("role", "doctor"), ("organization", "rx2")]).unwrap();
    assert_eq!((r.organisation.as_str(), r.role.as_deref(), r.location), ("rx2", Some("doctor"), None));
    let r = password(&[("location", "ward-7b")]).unwrap();
    assert_eq!((r.organisation.as_str(), r.location.as_deref()), ("rx1-general", Some("ward-7b")));
    // Empty values count as absent.
    let r = password(&[("role", ""), ("location", "")]).unwrap();
    assert_eq!(r.location.as_deref(), Some("ward-7a"));

    assert_error(password(&[("role", "nurse")]), OAuthErrorCode::InvalidRequest, "does not hold role `nurse`");
    assert_error(password(&[("role", "consultant"), ("organisation", "rx1-general")]), OAuthErrorCode::InvalidRequest, "does not hold");
    assert_error(password(&[("organisation", "rx9")]), OAuthErrorCode::InvalidRequest, "organisation `rx9`");
    // A location alone picks the assignment that covers it.
    let r = password(&[("location", "clinic-2")]).unwrap();
    assert_eq!((r.organisation.as_str(), r.role.as_deref()), ("rx2", Some("consultant")));
    assert_error(password(&[("location", "ward-9")]), OAuthErrorCode::InvalidRequest, "location `ward-9`");
    assert_error(
        password(&[("role", "doctor"), ("organisation", "rx1-general"), ("location", "clinic-2")]),
        OAuthErrorCode::InvalidRequest,
        "does not work at location `clinic-2` as `doctor` in `rx1-general`",
    );
    assert_error(password(&[("organisation", "rx1"), ("organization", "rx2")]), OAuthErrorCode::InvalidRequest, "disagree");
    let t = token(&auth(), domain(), &form(&[("grant_type", "password"), ("username", "no.roles"), ("password", "no-roles-password")]), None, NOW);
    assert_error(t, OAuthErrorCode::InvalidRequest, "no role");
}

#[test]
fn client_credentials_grant() {
    let auth = auth();
    let d = domain();
    // Form parameters; default scopes are the account's.
    let body = form(&[("grant_type", "client_credentials"), ("client_id", "lab"), ("client_secret", LAB_SECRET)]);
    let (r, claims) = token_with_claims(&auth, d, &body, None, NOW).unwrap();
    assert_eq!(r.scope, "system/Observation.cruds system/DiagnosticReport.cruds system/Patient.rs");
    assert_eq!((r.organisation.as_str(), r.role.as_deref(), r.location.as_deref()), ("rx1-general", None, None));
    assert_eq!((claims.kind, claims.sub.as_str(), claims.name.as_str()), (TokenKind::System, "lab", "Laboratory interface"));
    assert_eq!(auth.verify_at(&r.access_token, NOW).unwrap(), claims);
    let json = serde_json::to_value(&r).unwrap();
    assert!(json.get("role").is_none() && json.get("location").is_none());

    // HTTP Basic; requested scopes narrowed to the account's.
    let body = form(&[("grant_type", "client_credentials"), ("scope", "system/*.read system/Condition.rs")]);
    let r = token(&auth, d, &body, Some(("lab", LAB_SECRET)), NOW).unwrap();
    assert_eq!(r.scope, "system/Observation.read system/DiagnosticReport.read system/Patient.read");
    let scopes = auth.verify_at(&r.access_token, NOW).unwrap().scopes().unwrap();
    assert!(scopes.allows("Observation", ScopeOp::Search));
    assert!(!scopes.allows("Observation", ScopeOp::Create));
    assert!(!scopes.allows("Condition", ScopeOp::Read));
    // The client id may be repeated in the form if it matches.
    let body = form(&[("grant_type", "client_credentials"), ("client_id", "lab")]);
    assert!(token(&auth, d, &body, Some(("lab", LAB_SECRET)), NOW).is_ok());

    let body = form(&[("grant_type", "client_credentials"), ("scope", "system/Condition.rs")]);
    assert_error(token(&auth, d, &body, Some(("lab", LAB_SECRET)), NOW), OAuthErrorCode::InvalidScope, "may have: system/Observation.cruds");
    let body = form(&[("grant_type", "client_credentials"), ("scope", "user/*.rs")]);
    assert_error(token(&auth, d, &body, Some(("lab", LAB_SECRET)), NOW), OAuthErrorCode::InvalidScope, "none of the requested scopes");
}

#[test]
fn client_credentials_refusals() {
    let auth = auth();
    let d = domain();
    let cc = |extra: &[(&str, &str)], basic: Option<(&str, &str)>| {
        let mut pairs = vec![("grant_type", "client_credentials")];
        pairs.extend_from_slice(extra);
        token(&auth, d, &form(&pairs), basic, NOW)
    };
    let wrong = assert_error(cc(&[("client_id", "lab"), ("client_secret", "nope")], None), OAuthErrorCode::InvalidClient, "client authentication failed");
    assert_eq!(wrong.status(), 401);
    assert_eq!(wrong.www_authenticate(), Some("Basic realm=\"tessera\""));
    assert_eq!(cc(&[], Some(("lab", "nope"))).unwrap_err(), wrong);
    assert_eq!(cc(&[], Some(("unknown", LAB_SECRET))).unwrap_err(), wrong);
    assert_eq!(cc(&[], Some(("no-secret", ""))).unwrap_err(), wrong);
    assert_eq!(cc(&[("client_id", "no-secret"), ("client_secret", "anything")], None).unwrap_err(), wrong);
    // The domain's bootstrap account is never issued over HTTP, whatever its configuration.
    assert_eq!(cc(&[], Some(("system", LAB_SECRET))).unwrap_err(), wrong);
    // A user's password is not a client secret.
    assert_eq!(cc(&[("client_id", "dr.patel"), ("client_secret", PATEL_PASSWORD)], None).unwrap_err(), wrong);
    assert_error(cc(&[], None), OAuthErrorCode::InvalidClient, "client authentication is required");
    assert_error(cc(&[("client_id", "lab")], None), OAuthErrorCode::InvalidClient, "client_secret is required");
    let both = cc(&[("client_id", "lab"), ("client_secret", LAB_SECRET)], Some(("lab", LAB_SECRET)));
    assert_eq!(assert_error(both, OAuthErrorCode::InvalidRequest, "one client authentication method").status(), 400);
    assert_error(cc(&[("client_id", "other")], Some(("lab", LAB_SECRET))), OAuthErrorCode::InvalidRequest, "does not match");
    assert_error(cc(&[("scope", "system/*.bogus")], Some(("lab", LAB_SECRET))), OAuthErrorCode::InvalidScope, "system/*.bogus");
}

fn switch(access_token: &str, extra: &[(&str, &str)], now: u64) -> Result<TokenResponse, OAuthError> {
    let mut pairs = vec![("grant_type", "urn:tessera:switch-context"), ("access_token", access_token)];
    pairs.extend_from_slice(extra);
    token(&auth(), domain(), &form(&pairs), None, now)
}

#[test]
fn switch_context() {
    let first = password(&[("scope", "user/*.rs")]).unwrap();
    assert_eq!((first.organisation.as_str(), first.location.as_deref()), ("rx1-general", Some("ward-7a")));

    // Location only: same role and organisation.
    let r = switch(&first.access_token, &[("location", "ward-7b")], NOW + 60).unwrap();
    assert_eq!((r.organisation.as_str(), r.role.as_deref(), r.location.as_deref()), ("rx1-general", Some("doctor"), Some("ward-7b")));
    assert_eq!(r.scope, "user/*.rs", "scopes carried over");
    // The session is not extended: the new token expires with the old one.
    assert_eq!(r.expires_in, 15 * 60 - 60);
    let claims = auth().verify_at(&r.access_token, NOW + 60).unwrap();
    assert_eq!((claims.sub.as_str(), claims.iat, claims.exp), ("dr.patel", NOW + 60, NOW + 15 * 60));

    // Another role in another organisation.
    let r = switch(&first.access_token, &[("role", "consultant"), ("organisation", "rx2")], NOW).unwrap();
    assert_eq!((r.organisation.as_str(), r.role.as_deref(), r.location.as_deref()), ("rx2", Some("consultant"), Some("clinic-2")));
    // Then back, from the new token.
    let back = switch(&r.access_token, &[("organisation", "rx1-general")], NOW).unwrap();
    assert_eq!((back.organisation.as_str(), back.role.as_deref()), ("rx1-general", Some("doctor")));

    // Scopes may narrow, never widen.
    let r = switch(&first.access_token, &[("scope", "user/Patient.rs")], NOW).unwrap();
    assert_eq!(r.scope, "user/Patient.rs");
    let r = switch(&first.access_token, &[("scope", "user/*.cruds")], NOW).unwrap();
    assert_eq!(r.scope, "user/*.rs");
    assert_error(switch(&first.access_token, &[("scope", "user/*.cud")], NOW), OAuthErrorCode::InvalidScope, "within the current token");

    // Contexts the user does not hold.
    assert_error(switch(&first.access_token, &[("role", "nurse")], NOW), OAuthErrorCode::InvalidRequest, "does not hold role `nurse`");
    assert_error(switch(&first.access_token, &[("organisation", "rx1")], NOW), OAuthErrorCode::InvalidRequest, "organisation `rx1`");
    assert_error(switch(&first.access_token, &[("location", "clinic-2")], NOW), OAuthErrorCode::InvalidRequest, "location `clinic-2`");
}

#[test]
fn switch_context_refusals() {
    let first = password(&[]).unwrap();
    assert_error(switch(&first.access_token, &[("location", "ward-7b")], NOW + 15 * 60), OAuthErrorCode::InvalidGrant, "expired");
    // Change a signature character that carries full bits (the last base64url character of
    // a 32-byte signature also holds padding bits, so changing it may change nothing).
    let mut tampered: Vec<char> = first.access_token.chars().collect();
    let i = tampered.len() - 10;
    tampered[i] = if tampered[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    assert_error(switch(&tampered, &[], NOW), OAuthErrorCode::InvalidGrant, "signature");
    assert_error(switch("not-a-token", &[], NOW), OAuthErrorCode::InvalidGrant, "malformed");
    let system = auth().issue_system_token("lab", "rx1-general", "system/*.*", NOW, 10);
    assert_error(switch(&system, &[("organisation", "rx1")], NOW), OAuthErrorCode::InvalidGrant, "only a user's token");
    let other_key = tessera_auth::Authenticator::new(b"another key, another server......");
    let foreign = other_key.issue_user_token(domain(), "dr.patel", None, None, None, None, NOW).unwrap();
    assert_error(switch(&foreign, &[], NOW), OAuthErrorCode::InvalidGrant, "signature");
    // A user who has since become inactive (here: a token for the inactive nurse, signed by us).
    let mut claims = auth().verify_at(&first.access_token, NOW).unwrap();
    claims.sub = "nurse.jones".into();
    let stale = auth().sign(&claims);
    assert_error(switch(&stale, &[], NOW), OAuthErrorCode::InvalidGrant, "not active");
    let mut claims = auth().verify_at(&first.access_token, NOW).unwrap();
    claims.sub = "gone".into();
    assert_error(switch(&auth().sign(&claims), &[], NOW), OAuthErrorCode::InvalidGrant, "unknown user");
    assert_error(
        token(&auth(), domain(), "grant_type=urn%3Atessera%3Aswitch-context", None, NOW),
        OAuthErrorCode::InvalidRequest,
        "missing parameter `access_token`",
    );
}

#[test]
fn basic_auth_header() {
    use base64::Engine;
    let encode = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert_eq!(parse_basic_auth(&format!("Basic {}", encode("lab:s3cret"))), Some(("lab".into(), "s3cret".into())));
    assert_eq!(parse_basic_auth(&format!("basic {}", encode("lab:a%3Ab+c:d"))), Some(("lab".into(), "a:b c:d".into())));
    assert_eq!(parse_basic_auth(&format!("Bearer {}", encode("lab:s3cret"))), None);
    assert_eq!(parse_basic_auth(&format!("Basic {}", encode("no-colon"))), None);
    assert_eq!(parse_basic_auth("Basic !!!"), None);
    assert_eq!(parse_basic_auth(&format!("Basic {}", encode("lab:bad%zz"))), None);
}

#[test]
fn smart_configuration_document() {
    let doc = smart_configuration("https://ehr.example.org/fhir/");
    assert_eq!(doc["token_endpoint"], "https://ehr.example.org/fhir/auth/token");
    let grants: Vec<&str> = doc["grant_types_supported"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(grants, ["authorization_code", "password", "client_credentials", "refresh_token", "urn:tessera:switch-context"]);
    let capabilities = doc["capabilities"].as_array().unwrap();
    for c in ["permission-v2", "client-confidential-symmetric", "client-public", "launch-ehr", "launch-standalone", "context-ehr-patient", "context-standalone-patient"] {
        assert!(capabilities.contains(&c.into()), "{c} is supported");
    }
    // No OpenID Connect: no id_token is issued, so it is not claimed.
    assert!(!capabilities.contains(&"sso-openid-connect".into()));
    assert_eq!(doc["authorization_endpoint"], "https://ehr.example.org/fhir/oauth/authorize");
    assert_eq!(doc["code_challenge_methods_supported"], serde_json::json!(["S256"]));
    // Every scope advertised parses.
    for scope in doc["scopes_supported"].as_array().unwrap() {
        tessera_auth::Scopes::parse(scope.as_str().unwrap()).unwrap();
    }
}
