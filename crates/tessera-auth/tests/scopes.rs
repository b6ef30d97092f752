use tessera_auth::{AuthError, ScopeContext, ScopeOp, Scopes};

use ScopeOp::{Create, Delete, Read, Search, Update};

#[test]
fn parse_table() {
    // (input, canonical rendering)
    let valid = [
        ("patient/*.read", "patient/*.read"),
        ("user/Observation.write", "user/Observation.write"),
        ("system/*.*", "system/*.*"),
        ("user/Observation.rs", "user/Observation.rs"),
        ("patient/Patient.cruds", "patient/Patient.cruds"),
        ("system/*.cruds", "system/*.cruds"),
        ("user/Encounter.c", "user/Encounter.c"),
        ("user/Encounter.ud", "user/Encounter.ud"),
        ("openid fhirUser launch offline_access", "openid fhirUser launch offline_access"),
        ("launch/patient profile online_access", "launch/patient profile online_access"),
        ("  user/*.rs   system/Patient.s ", "user/*.rs system/Patient.s"),
        ("user/*.rs user/*.rs", "user/*.rs"),
        ("", ""),
    ];
    for (input, rendered) in valid {
        let scopes = Scopes::parse(input).unwrap_or_else(|e| panic!("{input:?} should parse: {e}"));
        assert_eq!(scopes.to_string(), rendered, "{input:?}");
        assert_eq!(Scopes::parse(&scopes.to_string()).unwrap(), scopes, "round trip of {input:?}");
    }

    // (input, the offending scope, words the reason must contain)
    let invalid = [
        ("user/Observation.rx", "user/Observation.rx", "unknown permissions"),
        ("user/Observation.sr", "user/Observation.sr", "order c, r, u, d, s"),
        ("user/Observation.rr", "user/Observation.rr", "order c, r, u, d, s"),
        ("user/Observation.", "user/Observation.", "empty permissions"),
        ("user/Observation", "user/Observation", "missing permissions"),
        ("doctor/Observation.read", "doctor/Observation.read", "unknown context `doctor`"),
        ("user/observation.read", "user/observation.read", "not a FHIR resource type"),
        ("user/Obs3rvation.read", "user/Obs3rvation.read", "not a FHIR resource type"),
        ("user/.read", "user/.read", "not a FHIR resource type"),
        ("patient/Observation.rs?category=laboratory", "patient/Observation.rs?category=laboratory", "search-parameter"),
        ("openid admin", "admin", "unknown scope"),
        ("user/*.rs Openid", "Openid", "unknown scope"),
        ("user/*.rs\tsystem/*.rs", "user/*.rs\tsystem/*.rs", "not allowed"),
        ("user/Patient.READ", "user/Patient.READ", "unknown permissions"),
    ];
    for (input, offending, reason_part) in invalid {
        match Scopes::parse(input) {
            Err(AuthError::InvalidScope { scope, reason }) => {
                assert_eq!(scope, offending, "{input:?}");
                assert!(reason.contains(reason_part), "{input:?}: reason {reason:?} lacks {reason_part:?}");
                let message = AuthError::InvalidScope { scope: scope.clone(), reason: reason.clone() }.to_string();
                assert!(message.contains(&scope) && message.contains(&reason));
            }
            other => panic!("{input:?} should be refused, got {other:?}"),
        }
    }
}

#[test]
fn allows_table() {
    // (scopes, resource type, op, allowed)
    let table = [
        ("patient/*.read", "Observation", Read, true),
        ("patient/*.read", "Observation", Search, true),
        ("patient/*.read", "Observation", Create, false),
        ("patient/*.read", "Observation", Update, false),
        ("patient/*.read", "Observation", Delete, false),
        ("user/Observation.write", "Observation", Create, true),
        ("user/Observation.write", "Observation", Update, true),
        ("user/Observation.write", "Observation", Delete, true),
        ("user/Observation.write", "Observation", Read, false),
        ("user/Observation.write", "Patient", Create, false),
        ("system/*.*", "AuditEvent", Delete, true),
        ("system/*.*", "Patient", Search, true),
        ("user/Observation.rs", "Observation", Read, true),
        ("user/Observation.rs", "Observation", Search, true),
        ("user/Observation.rs", "Observation", Update, false),
        ("user/Observation.rs", "Condition", Read, false),
        ("patient/Patient.cruds", "Patient", Delete, true),
        ("patient/Patient.cruds", "Encounter", Read, false),
        ("system/*.cruds", "Encounter", Create, true),
        ("user/Patient.r", "Patient", Search, false),
        ("user/Patient.s", "Patient", Read, false),
        ("user/Patient.r user/Patient.s", "Patient", Search, true),
        ("openid fhirUser launch offline_access", "Patient", Read, false),
        ("", "Patient", Read, false),
    ];
    for (scopes, resource, op, expected) in table {
        let parsed = Scopes::parse(scopes).unwrap();
        assert_eq!(parsed.allows(resource, op), expected, "{scopes:?} {op:?} {resource}");
    }
}

#[test]
fn contexts() {
    let scopes = Scopes::parse("system/*.rs openid patient/Patient.r user/Observation.rs user/Condition.r").unwrap();
    assert_eq!(scopes.contexts(), vec![ScopeContext::Patient, ScopeContext::User, ScopeContext::System]);
    assert!(scopes.has_context(ScopeContext::User));
    assert!(scopes.allows_in(ScopeContext::User, "Observation", Search));
    assert!(!scopes.allows_in(ScopeContext::Patient, "Observation", Search));
    assert!(scopes.allows_in(ScopeContext::System, "Observation", Search));
    assert!(Scopes::parse("openid fhirUser").unwrap().contexts().is_empty());
    assert!(scopes.contains("openid") && scopes.contains("user/Condition.r") && !scopes.contains("user/Condition.rs"));
}

#[test]
fn intersection() {
    // (requested, allowed, granted)
    let table = [
        // Wildcard on the allowed side narrows to what is asked.
        ("system/Patient.rs", "system/*.*", "system/Patient.rs"),
        ("system/*.read", "system/*.*", "system/*.read"),
        // Wildcard on the requested side narrows to what is allowed.
        ("system/*.cruds", "system/Observation.cruds system/Patient.rs", "system/Observation.cruds system/Patient.rs"),
        // Permissions are intersected; v1 spelling kept where it can say it.
        ("system/*.*", "system/*.rs", "system/*.read"),
        ("system/*.write", "system/*.cruds", "system/*.write"),
        ("system/*.read", "system/*.r", "system/*.r"),
        ("user/Observation.cruds", "user/Observation.rs", "user/Observation.rs"),
        // Different contexts never meet.
        ("user/*.rs", "system/*.*", ""),
        ("patient/*.read", "user/*.cruds", ""),
        // Different resource types never meet.
        ("system/Patient.rs", "system/Observation.cruds", ""),
        // Disjoint permissions.
        ("system/Patient.cud", "system/Patient.rs", ""),
        // Non-resource scopes pass only if allowed.
        ("openid system/*.rs", "system/*.*", "system/*.rs"),
        ("openid system/*.rs", "openid system/*.*", "system/*.rs openid"),
        // Pieces of the same scope merge.
        ("system/Patient.r system/Patient.s", "system/*.*", "system/Patient.rs"),
        ("system/*.*", "system/*.rs system/*.cud", "system/*.*"),
        // Nothing requested: nothing granted.
        ("", "system/*.*", ""),
    ];
    for (requested, allowed, granted) in table {
        let result = Scopes::intersect(&Scopes::parse(requested).unwrap(), &Scopes::parse(allowed).unwrap());
        assert_eq!(result.to_string(), granted, "{requested:?} ∩ {allowed:?}");
    }
}

#[test]
fn serde_as_string() {
    let scopes = Scopes::parse("user/*.rs openid").unwrap();
    let json = serde_json::to_string(&scopes).unwrap();
    assert_eq!(json, r#""user/*.rs openid""#);
    assert_eq!(serde_json::from_str::<Scopes>(&json).unwrap(), scopes);
    assert!(serde_json::from_str::<Scopes>(r#""user/*.xyz""#).is_err());
}

#[test]
fn parse_list_of_account_scopes() {
    let scopes = Scopes::parse_list(&["system/Observation.cruds", "system/Patient.rs system/Encounter.r"]).unwrap();
    assert_eq!(scopes.to_string(), "system/Observation.cruds system/Patient.rs system/Encounter.r");
    assert!(Scopes::parse_list(&["system/Observation.cruds", "nonsense"]).is_err());
}
