mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::{auth, domain, NOW};
use tessera_auth::{AuthError, Authenticator, Claims, TokenKind, ISSUER};

fn claims() -> Claims {
    Claims {
        iss: ISSUER.into(),
        sub: "dr.patel".into(),
        kind: TokenKind::User,
        org: "rx1-general".into(),
        loc: Some("ward-7a".into()),
        role: Some("doctor".into()),
        scope: "user/*.cruds".into(),
        iat: NOW,
        exp: NOW + 900,
        jti: tessera_auth::random_id(),
        patient: None,
        name: "Dr Asha Patel".into(),
        sid: None,
        ctx: None,
    }
}

#[test]
fn sign_and_verify_round_trip() {
    let auth = auth();
    let c = claims();
    let token = auth.sign(&c);
    assert_eq!(token.split('.').count(), 3);
    assert_eq!(auth.verify_at(&token, NOW).unwrap(), c);
    assert_eq!(auth.verify_at(&token, NOW + 899).unwrap(), c);
    // Optional claims are left out when absent.
    let payload = String::from_utf8(URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap();
    assert!(!payload.contains("patient"), "{payload}");
    assert!(payload.contains(r#""kind":"user""#), "{payload}");
}

#[test]
fn expired_token() {
    let auth = auth();
    let token = auth.sign(&claims());
    assert_eq!(auth.verify_at(&token, NOW + 900), Err(AuthError::Expired { expired_at: NOW + 900, now: NOW + 900 }));
    let err = auth.verify_at(&token, NOW + 10_000).unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    // Against the system clock.
    let old = auth.issue_system_token("system", "rx1", "system/*.*", 1_000, 1);
    assert!(matches!(auth.verify(&old), Err(AuthError::Expired { .. })));
}

#[test]
fn tampered_token() {
    let auth = auth();
    let token = auth.sign(&claims());
    let parts: Vec<&str> = token.split('.').collect();
    // Change the payload: claim to be a system token.
    let mut payload: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
    payload["kind"] = "system".into();
    payload["scope"] = "system/*.*".into();
    let forged = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(serde_json::to_vec(&payload).unwrap()), parts[2]);
    assert_eq!(auth.verify_at(&forged, NOW), Err(AuthError::BadSignature));
    // Change the signature.
    let mut sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let forged = format!("{}.{}.{}", parts[0], parts[1], URL_SAFE_NO_PAD.encode(sig));
    assert_eq!(auth.verify_at(&forged, NOW), Err(AuthError::BadSignature));
    // Signed with another key.
    let other = Authenticator::new(&Authenticator::generate_secret());
    assert_eq!(auth.verify_at(&other.sign(&claims()), NOW), Err(AuthError::BadSignature));
    // alg "none".
    let none_header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let unsigned = format!("{none_header}.{}.", parts[1]);
    assert!(matches!(auth.verify_at(&unsigned, NOW), Err(AuthError::Malformed(_))));
    assert_eq!(AuthError::BadSignature.to_string(), "the access token's signature is not valid");
}

#[test]
fn malformed_tokens() {
    let auth = auth();
    for bad in ["", "abc", "a.b", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.@@@.xyz"] {
        match auth.verify_at(bad, NOW) {
            Err(AuthError::Malformed(msg)) => assert!(!msg.is_empty()),
            other => panic!("{bad:?}: expected Malformed, got {other:?}"),
        }
    }
    // Well signed, but the claims are not ours.
    #[derive(serde::Serialize)]
    struct Other {
        sub: String,
        exp: u64,
    }
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Other { sub: "x".into(), exp: NOW + 60 },
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef"),
    )
    .unwrap();
    let err = auth.verify_at(&token, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Malformed(_)), "{err:?}");
    assert!(err.to_string().starts_with("the access token is malformed"), "{err}");
    // Another issuer.
    let mut c = claims();
    c.iss = "elsewhere".into();
    assert_eq!(auth.verify_at(&auth.sign(&c), NOW), Err(AuthError::WrongIssuer("elsewhere".into())));
}

#[test]
fn secrets() {
    let a = Authenticator::generate_secret();
    let b = Authenticator::generate_secret();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);
    let encoded = Authenticator::encode_secret(&a);
    let from_file = Authenticator::from_base64(&format!("{encoded}\n")).unwrap();
    let token = Authenticator::new(&a).sign(&claims());
    assert!(from_file.verify_at(&token, NOW).is_ok());
    assert!(matches!(Authenticator::from_base64("c2hvcnQ="), Err(AuthError::InvalidSecret(_))));
    assert!(matches!(Authenticator::from_base64("not base64!"), Err(AuthError::InvalidSecret(_))));
    assert!(!format!("{:?}", Authenticator::new(&a)).contains(&encoded));
}

#[test]
fn issue_user_token_contexts() {
    let auth = auth();
    let d = domain();
    let verify = |t: Result<String, AuthError>| auth.verify_at(&t.unwrap(), NOW).unwrap();

    // Default: the first assignment and its first location; default scopes.
    let c = verify(auth.issue_user_token(d, "dr.patel", None, None, None, None, NOW));
    assert_eq!((c.kind, c.sub.as_str(), c.org.as_str()), (TokenKind::User, "dr.patel", "rx1-general"));
    assert_eq!((c.role.as_deref(), c.loc.as_deref()), (Some("doctor"), Some("ward-7a")));
    assert_eq!(c.scope, "user/*.cruds");
    assert_eq!(c.name, "Dr Asha Patel");
    assert_eq!((c.iat, c.exp), (NOW, NOW + 15 * 60));

    // Role and organisation chosen; location chosen.
    let c = verify(auth.issue_user_token(d, "dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7b"), None, NOW));
    assert_eq!(c.loc.as_deref(), Some("ward-7b"));
    let c = verify(auth.issue_user_token(d, "dr.patel", Some("consultant"), None, None, Some("user/Patient.rs"), NOW));
    assert_eq!((c.org.as_str(), c.loc.as_deref(), c.scope.as_str()), ("rx2", Some("clinic-2"), "user/Patient.rs"));
    // An assignment without locations.
    let c = verify(auth.issue_user_token(d, "dr.patel", Some("doctor"), Some("rx2"), None, None, NOW));
    assert_eq!((c.role.as_deref(), c.loc), (Some("doctor"), None));
    // By organisation only.
    let c = verify(auth.issue_user_token(d, "dr.patel", None, Some("rx2"), None, None, NOW));
    assert_eq!(c.role.as_deref(), Some("consultant"));

    // Refusals.
    let err = auth.issue_user_token(d, "dr.patel", Some("nurse"), None, None, None, NOW).unwrap_err();
    assert_eq!(err, AuthError::Context("user `dr.patel` does not hold role `nurse` in any organisation".into()));
    let err = auth.issue_user_token(d, "dr.patel", Some("doctor"), Some("rx1"), None, None, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Context(ref m) if m.contains("role `doctor` in organisation `rx1`")), "{err}");
    let err = auth.issue_user_token(d, "dr.patel", None, None, Some("clinic-9"), None, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Context(ref m) if m.contains("location `clinic-9`")), "{err}");
    let err = auth.issue_user_token(d, "dr.patel", Some("doctor"), Some("rx2"), Some("clinic-2"), None, NOW).unwrap_err();
    assert!(matches!(err, AuthError::Context(_)), "{err}");
    assert_eq!(auth.issue_user_token(d, "nobody", None, None, None, None, NOW), Err(AuthError::UnknownUser("nobody".into())));
    assert_eq!(auth.issue_user_token(d, "nurse.jones", None, None, None, None, NOW), Err(AuthError::InactiveUser("nurse.jones".into())));
    assert!(matches!(auth.issue_user_token(d, "no.roles", None, None, None, None, NOW), Err(AuthError::Context(_))));
    // Users get no system scopes.
    assert!(matches!(auth.issue_user_token(d, "dr.patel", None, None, None, Some("system/*.*"), NOW), Err(AuthError::InvalidScope { .. })));
    let c = verify(auth.issue_user_token(d, "dr.patel", None, None, None, Some("system/*.* user/*.read openid"), NOW));
    assert_eq!(c.scope, "user/*.read");
}

#[test]
fn issue_system_token() {
    let auth = auth();
    let token = auth.issue_system_token("system", "rx1", "system/*.*", NOW, 60);
    let c = auth.verify_at(&token, NOW).unwrap();
    assert_eq!((c.kind, c.sub.as_str(), c.org.as_str(), c.scope.as_str()), (TokenKind::System, "system", "rx1", "system/*.*"));
    assert_eq!(c.exp, NOW + 3600);
    assert!(c.is_system() && c.role.is_none() && c.loc.is_none());
    assert!(c.scopes().unwrap().allows("AuditEvent", tessera_auth::ScopeOp::Read));
    // Token ids differ.
    let again = auth.verify_at(&auth.issue_system_token("system", "rx1", "system/*.*", NOW, 60), NOW).unwrap();
    assert_ne!(c.jti, again.jti);
}

#[test]
fn passwords() {
    let hash = tessera_auth::hash_password("s3cret pass");
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(tessera_auth::verify_password("s3cret pass", &hash));
    assert!(!tessera_auth::verify_password("s3cret pasS", &hash));
    assert!(!tessera_auth::verify_password("s3cret pass", "not a phc string"));
    assert!(!tessera_auth::verify_password("", ""));
    assert_ne!(tessera_auth::hash_password("s3cret pass"), hash, "salted");
    let secret = tessera_auth::hash_client_secret("client-secret");
    assert!(tessera_auth::verify_client_secret("client-secret", &secret));
    assert!(!tessera_auth::verify_client_secret("client-secreT", &secret));
}
