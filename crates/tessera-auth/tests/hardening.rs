//! Sign-in hardening, as pure parts: Argon2id parameters, account lockout, the address
//! limit, the audit throttle, sessions (context generations, refresh rotation and reuse
//! detection), refusal reasons.

mod common;

use common::{auth, domain, LAB_SECRET, NOW, PATEL_PASSWORD};
use std::net::IpAddr;
use tessera_auth::*;

fn form(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs).finish()
}

fn request(pairs: &[(&str, &str)]) -> TokenRequest {
    TokenRequest::parse(&form(pairs), None).unwrap()
}

fn refusal(pairs: &[(&str, &str)]) -> Refusal {
    grant(&auth(), domain(), &request(pairs), NOW).expect_err("refused")
}

#[test]
fn argon2id_at_documented_parameters_and_older_hashes_verify() {
    let phc = hash_password("s3cret");
    assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
    assert_eq!((ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, ARGON2_OUTPUT_BYTES), (19 * 1024, 2, 1, 32));
    assert!(password_hash_is_current(&phc));
    assert!(verify_password("s3cret", &phc));
    assert!(!verify_password("s3cret ", &phc));
    // Two hashes of one password differ (random salt).
    assert_ne!(phc, hash_password("s3cret"));

    // Hashes made with other parameters and variants keep verifying.
    use argon2::password_hash::PasswordHasher;
    for (algorithm, m, t, p) in [(argon2::Algorithm::Argon2i, 4096, 3, 1), (argon2::Algorithm::Argon2id, 8192, 1, 2), (argon2::Algorithm::Argon2d, 65536, 1, 1)]
    {
        let params = argon2::Params::new(m, t, p, None).unwrap();
        let old = argon2::Argon2::new(algorithm, argon2::Version::V0x13, params).hash_password(b"legacy password").unwrap().to_string();
        assert!(verify_password("legacy password", &old), "{old}");
        assert!(!verify_password("legacy passwort", &old), "{old}");
        assert!(!password_hash_is_current(&old), "{old}");
    }
    assert!(!verify_password("x", "not a hash"));
}

#[test]
fn lock_state_locks_after_consecutive_failures_and_expires() {
    let policy = AuthPolicy::default();
    assert_eq!((policy.max_failures, policy.lock_seconds, policy.attempts_per_minute, policy.refresh_seconds), (5, 900, 10, 8 * 3600));
    let mut s = LockState::default();
    assert!(s.is_clear());
    assert_eq!(s.encode(), "", "nothing to remember: empty value");
    for i in 1..5 {
        assert!(!s.fail(NOW + i, &policy), "failure {i} does not lock");
        assert_eq!(s.locked_for(NOW + i), None);
        assert_eq!(s.attempts_left(NOW + i, &policy), 5 - i as u32);
    }
    assert!(s.fail(NOW + 5, &policy), "the fifth consecutive failure locks");
    assert_eq!(s.locked_for(NOW + 5), Some(900));
    assert_eq!(s.locked_for(NOW + 5 + 899), Some(1));
    assert_eq!(s.locked_for(NOW + 5 + 900), None, "a lock runs out");
    assert_eq!(s.attempts_left(NOW + 6, &policy), 0);
    // Stored and read back (the server keeps it under auth.lock:user:<id>).
    let stored = s.encode();
    assert!(stored.contains("locked_until"), "{stored}");
    assert_eq!(LockState::parse(Some(&stored)), s);
    assert_eq!(LockState::parse(Some("")), LockState::default(), "an unlock stores the empty value");
    assert_eq!(LockState::parse(Some("garbage")), LockState::default());
    assert_eq!(LockState::parse(None), LockState::default());
    // After the lock, failures count from zero again.
    let after = NOW + 5 + 900;
    assert!(!s.fail(after, &policy));
    assert_eq!(s.failures, 1);
    assert_eq!(s.locked_for(after), None);

    // Success forgets the failures: not consecutive, no lock.
    let mut s = LockState::default();
    for i in 0..4 {
        s.fail(NOW + i, &policy);
    }
    s.succeed();
    assert!(s.is_clear());
    for i in 0..4 {
        assert!(!s.fail(NOW + 10 + i, &policy));
    }
    // Failures older than the lock duration are forgotten.
    assert!(!s.fail(NOW + 10 + 4 + 900, &policy), "stale failures do not count");
    assert_eq!(s.failures, 1);

    // A lockout of 0 failures is off.
    let off = AuthPolicy { max_failures: 0, ..AuthPolicy::default() };
    let mut s = LockState::default();
    for i in 0..100 {
        assert!(!s.fail(NOW + i, &off));
    }
    assert_eq!(s.locked_for(NOW + 100), None);
    assert_eq!(user_lock_key("dr.patel"), "auth.lock:user:dr.patel");
    assert_eq!(client_lock_key("lab"), "auth.lock:client:lab");
}

#[test]
fn policy_from_environment() {
    let env = |pairs: &'static [(&'static str, &'static str)]| move |k: &str| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
    assert_eq!(AuthPolicy::from_lookup(env(&[])).unwrap(), AuthPolicy::default());
    let p = AuthPolicy::from_lookup(env(&[
        ("TESSERA_AUTH_MAX_FAILURES", "3"),
        ("TESSERA_AUTH_LOCK_MINUTES", "30"),
        ("TESSERA_AUTH_ATTEMPTS_PER_MINUTE", "0"),
        ("TESSERA_AUTH_REFRESH_HOURS", "12"),
        ("TESSERA_TRUST_FORWARDED_FOR", "true"),
    ]))
    .unwrap();
    assert_eq!((p.max_failures, p.lock_seconds, p.attempts_per_minute, p.refresh_seconds, p.trust_forwarded_for), (3, 1800, 0, 12 * 3600, true));
    assert!(AuthPolicy::from_lookup(env(&[("TESSERA_AUTH_LOCK_MINUTES", "ten")])).unwrap_err().contains("TESSERA_AUTH_LOCK_MINUTES"));
    assert!(AuthPolicy::from_lookup(env(&[("TESSERA_AUTH_LOCK_MINUTES", "0")])).is_err());
    assert!(AuthPolicy::from_lookup(env(&[("TESSERA_TRUST_FORWARDED_FOR", "maybe")])).is_err());
    let p = AuthPolicy { cache_seconds: 60, ..AuthPolicy::default() };
    assert_eq!(p.cache_ttl().as_secs(), 5, "caches hold at most 5 s");
}

#[test]
fn address_rate_limit_is_a_token_bucket_of_failures() {
    let limiter = RateLimiter::per_minute(10);
    let t0 = 1_000_000;
    for i in 0..10 {
        assert_eq!(limiter.try_acquire("10.0.0.1", t0 + i), Ok(()), "attempt {i}");
    }
    let retry = limiter.try_acquire("10.0.0.1", t0 + 10).expect_err("the eleventh within a minute is refused");
    assert!((1..=6).contains(&retry), "one token comes back every 6 s: {retry}");
    // Another address is not affected.
    assert_eq!(limiter.try_acquire("10.0.0.2", t0 + 10), Ok(()));
    // A token refills after 6 s.
    assert_eq!(limiter.try_acquire("10.0.0.1", t0 + 6_100), Ok(()));
    assert!(limiter.try_acquire("10.0.0.1", t0 + 6_200).is_err());
    // A successful attempt gives its token back: only failures count.
    let limiter = RateLimiter::per_minute(2);
    for _ in 0..50 {
        limiter.try_acquire("a", t0).unwrap();
        limiter.refund("a", t0);
    }
    assert_eq!(limiter.available("a", t0), 2.0);
    // Off.
    let off = RateLimiter::per_minute(0);
    for _ in 0..100 {
        assert_eq!(off.try_acquire("a", t0), Ok(()));
    }
    // Address keys: IPv6 by /64, mapped IPv4 as IPv4.
    assert_eq!(address_key("192.0.2.7".parse::<IpAddr>().unwrap()), "192.0.2.7");
    assert_eq!(address_key("2001:db8:1:2:aaaa::1".parse::<IpAddr>().unwrap()), "2001:db8:1:2::/64");
    assert_eq!(address_key("2001:db8:1:2:bbbb::9".parse::<IpAddr>().unwrap()), "2001:db8:1:2::/64");
    assert_eq!(address_key("::ffff:192.0.2.7".parse::<IpAddr>().unwrap()), "192.0.2.7");
}

#[test]
fn parallel_attempts_cannot_overshoot_the_lockout() {
    let inflight = InFlight::new();
    let a = inflight.enter("auth.lock:user:dr.patel", 2).unwrap();
    let b = inflight.enter("auth.lock:user:dr.patel", 2).unwrap();
    assert!(inflight.enter("auth.lock:user:dr.patel", 2).is_none(), "two failures left: two attempts at once");
    assert!(inflight.enter("auth.lock:user:other", 2).is_some());
    drop(a);
    assert_eq!(inflight.count("auth.lock:user:dr.patel"), 1);
    let _c = inflight.enter("auth.lock:user:dr.patel", 2).unwrap();
    drop(b);
    assert_eq!(inflight.count("auth.lock:user:dr.patel"), 1);

    let memory = MemoryLocks::new(3);
    let policy = AuthPolicy::default();
    for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        let mut s = memory.get(name);
        s.fail(NOW + i as u64, &policy);
        memory.set(name, s, NOW + i as u64);
    }
    assert_eq!(memory.len(), 3, "bounded");
    assert_eq!(memory.get("e").failures, 1);
    memory.set("e", LockState::default(), NOW);
    assert_eq!(memory.len(), 2);
}

#[test]
fn audit_throttle_records_a_burst_then_summarises() {
    let throttle = AuditThrottle::new(60, 3, 1000);
    for i in 0..3 {
        assert_eq!(throttle.admit("10.0.0.1", "wrong-password", NOW + i).0, Admission::Record);
    }
    assert_eq!(throttle.admit("10.0.0.1", "wrong-password", NOW + 3).0, Admission::Counted { first: true, window_end: NOW + 60 });
    for i in 4..50 {
        assert_eq!(
            throttle.admit("10.0.0.1", if i % 2 == 0 { "wrong-password" } else { "rate-limited" }, NOW + 4).0,
            Admission::Counted { first: false, window_end: NOW + 60 }
        );
    }
    // Another address has its own burst.
    assert_eq!(throttle.admit("10.0.0.2", "expired", NOW + 5).0, Admission::Record);
    assert!(throttle.drain_expired(NOW + 59).is_empty(), "the window is still open");
    let summaries = throttle.drain_expired(NOW + 60);
    assert_eq!(summaries.len(), 1, "only the address with counted refusals: {summaries:?}");
    let s = &summaries[0];
    assert_eq!((s.key.as_str(), s.count, s.from, s.to), ("10.0.0.1", 47, NOW, NOW + 60));
    assert_eq!(s.by_reason, vec![("rate-limited".to_string(), 23), ("wrong-password".to_string(), 24)]);
    assert!(s.describe().starts_with("47 further refusals from 10.0.0.1"), "{}", s.describe());
    let event = AuthEvent::summary(s);
    assert_eq!((event.count, event.address.as_deref(), event.ok), (Some(47), Some("10.0.0.1"), false));
    // A new window records again.
    assert_eq!(throttle.admit("10.0.0.1", "wrong-password", NOW + 61).0, Admission::Record);
    // A refusal after the window ended, before anyone drained it, carries its summary.
    let throttle = AuditThrottle::new(10, 1, 1000);
    throttle.admit("a", "expired", NOW);
    throttle.admit("a", "expired", NOW + 1);
    let (admission, summaries) = throttle.admit("a", "expired", NOW + 11);
    assert_eq!(admission, Admission::Record);
    assert_eq!(summaries.len(), 1);
    assert_eq!(summaries[0].count, 1);
    // The global burst bounds the records over all addresses.
    let throttle = AuditThrottle::new(60, 10, 5);
    let recorded = (0..20).filter(|i| throttle.admit(&format!("10.0.1.{i}"), "malformed", NOW).0 == Admission::Record).count();
    assert_eq!(recorded, 5);
}

fn patel_claims() -> Claims {
    match grant(&auth(), domain(), &request(&[("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD)]), NOW).unwrap() {
        Granted::Password(c) => c,
        other => panic!("{other:?}"),
    }
}

#[test]
fn sessions_rotate_refresh_tokens_and_revoke_the_family_on_reuse() {
    let mut claims = patel_claims();
    assert_eq!((claims.sid.as_deref(), claims.ctx), (None, None), "a grant alone starts no session");
    let (mut session, first) = Session::start(&mut claims, NOW, NOW + 8 * 3600);
    assert_eq!(claims.sid.as_deref(), Some(session.sid.as_str()));
    assert_eq!(claims.ctx, Some(0));
    assert_eq!(refresh_token_session(&first), Some(session.sid.as_str()));
    assert!(!session.encode().contains(&first), "only the hash of a refresh token is stored");
    assert!(!session.encode().contains(first.split_once('.').unwrap().1));
    assert_eq!(session.refresh, refresh_token_hash(&first));
    assert_eq!(Session::parse(&session.encode()).as_ref(), Some(&session));
    assert_eq!(session_key(&session.sid), format!("auth.session:{}", session.sid));
    assert!(session.admits(&claims));
    // The signed token carries sid and ctx.
    let signed = auth().sign(&claims);
    let verified = auth().verify_at(&signed, NOW).unwrap();
    assert_eq!((verified.sid.as_deref(), verified.ctx), (Some(session.sid.as_str()), Some(0)));

    // Rotation: the first refresh token gives a second; the first is now used.
    let second = session.use_refresh(&first, NOW + 60).unwrap();
    assert_ne!(second, first);
    assert_eq!(session.used, vec![refresh_token_hash(&first)]);
    let refreshed = refresh_claims(domain(), &request(&[("grant_type", "refresh_token")]), &session, NOW + 60).unwrap();
    assert_eq!((refreshed.sub.as_str(), refreshed.org.as_str(), refreshed.role.as_deref()), ("dr.patel", "rx1-general", Some("doctor")));
    assert!(session.admits(&refreshed), "a refreshed token is of the same generation");
    assert!(session.admits(&claims), "and so is the first access token, until it expires");
    let third = session.use_refresh(&second, NOW + 120).unwrap();

    // Unknown tokens are refused without harm.
    let stranger = format!("{}.{}", session.sid, "A".repeat(43));
    assert_eq!(session.use_refresh(&stranger, NOW + 130), Err(RefreshRefusal::Unknown));
    assert!(session.revoked.is_none());

    // Reuse of the first (already used) refresh token revokes the family.
    assert_eq!(session.use_refresh(&first, NOW + 180), Err(RefreshRefusal::Reused));
    assert_eq!(session.revoked.as_ref().map(|r| r.reason.as_str()), Some("refresh-reuse"));
    assert_eq!(session.use_refresh(&third, NOW + 181), Err(RefreshRefusal::Revoked), "the newest refresh token is dead too");
    assert!(!session.admits(&refreshed), "and every access token of the session");
    assert!(!session.admits(&claims));
    let stored = Session::parse(&session.encode()).unwrap();
    assert!(stored.revoked.is_some());

    // Sessions end.
    let mut claims = patel_claims();
    let (mut session, rt) = Session::start(&mut claims, NOW, NOW + 100);
    assert!(claims.exp <= NOW + 100, "an access token ends no later than its session");
    assert_eq!(session.use_refresh(&rt, NOW + 100), Err(RefreshRefusal::Expired));

    // Malformed refresh tokens have no session.
    assert_eq!(refresh_token_session("abc"), None);
    assert_eq!(refresh_token_session("a.b"), None);
    assert_eq!(refresh_token_session(&format!("{}.{}", "s".repeat(22), "x/y".repeat(15))), None);
}

#[test]
fn a_context_switch_moves_the_session_to_the_next_generation() {
    let mut old = patel_claims();
    let (mut session, first) = Session::start(&mut old, NOW, NOW + 8 * 3600);
    let token = auth().sign(&old);
    let switched = grant(
        &auth(),
        domain(),
        &request(&[("grant_type", SWITCH_CONTEXT_GRANT), ("access_token", &token), ("role", "consultant"), ("organisation", "rx2")]),
        NOW + 10,
    )
    .unwrap();
    let Granted::Switch { mut new, old: presented } = switched else { panic!("a switch") };
    assert_eq!(presented, old, "the old token's claims come back for revocation");
    let second = session.switch(&mut new);
    assert_eq!((session.ctx, new.ctx, new.sid.as_deref()), (1, Some(1), Some(session.sid.as_str())));
    assert_eq!((session.org.as_str(), session.role.as_deref()), ("rx2", Some("consultant")));
    assert!(session.admits(&new));
    assert!(!session.admits(&old), "the old context's token is no longer admitted");
    // The refresh token was rotated too: the pre-switch one is used.
    assert!(session.use_refresh(&second, NOW + 20).is_ok());
    let refreshed = refresh_claims(domain(), &request(&[]), &session, NOW + 20).unwrap();
    assert_eq!((refreshed.org.as_str(), refreshed.role.as_deref(), refreshed.ctx), ("rx2", Some("consultant"), Some(1)));
    assert_eq!(session.use_refresh(&first, NOW + 30), Err(RefreshRefusal::Reused));
}

#[test]
fn refusals_say_why() {
    let wrong = refusal(&[("grant_type", "password"), ("username", "dr.patel"), ("password", "wrong")]);
    assert_eq!((wrong.reason, wrong.authenticated, wrong.error.error), (RefusalReason::WrongPassword, false, OAuthErrorCode::InvalidGrant));
    assert!(wrong.reason.is_credential_failure());
    let unknown = refusal(&[("grant_type", "password"), ("username", "dr.who"), ("password", "x")]);
    assert_eq!(unknown.reason, RefusalReason::UnknownUser);
    assert_eq!(unknown.error, wrong.error, "unknown users are refused in the same words");
    let inactive = refusal(&[("grant_type", "password"), ("username", "nurse.jones"), ("password", "nurse-password")]);
    assert_eq!((inactive.reason, inactive.authenticated), (RefusalReason::InactiveUser, true));
    let context = refusal(&[("grant_type", "password"), ("username", "dr.patel"), ("password", PATEL_PASSWORD), ("organisation", "rx9")]);
    assert_eq!((context.reason, context.authenticated), (RefusalReason::InvalidContext, true));
    assert!(!context.reason.is_credential_failure());
    let missing = refusal(&[("grant_type", "password"), ("username", "dr.patel")]);
    assert_eq!(missing.reason, RefusalReason::InvalidRequest);
    let secret = refusal(&[("grant_type", "client_credentials"), ("client_id", "lab"), ("client_secret", "nope")]);
    assert_eq!((secret.reason, secret.error.error), (RefusalReason::WrongSecret, OAuthErrorCode::InvalidClient));
    let client = refusal(&[("grant_type", "client_credentials"), ("client_id", "nobody"), ("client_secret", "nope")]);
    assert_eq!(client.reason, RefusalReason::UnknownClient);
    let system = refusal(&[("grant_type", "client_credentials"), ("client_id", "system"), ("client_secret", LAB_SECRET)]);
    assert_eq!(system.reason, RefusalReason::UnknownClient, "the bootstrap account is no client");
    let refresh = refusal(&[("grant_type", "refresh_token"), ("refresh_token", "x.y")]);
    assert_eq!(refresh.error.error, OAuthErrorCode::UnsupportedGrantType, "the library alone keeps no sessions");
    // Switches with bad tokens.
    let other = Authenticator::new(b"another key, another key, another");
    let forged = other.sign(&patel_claims());
    let r = refusal(&[("grant_type", SWITCH_CONTEXT_GRANT), ("access_token", &forged)]);
    assert_eq!(r.reason, RefusalReason::BadSignature);
    let mut old = patel_claims();
    old.exp = NOW - 1;
    let r = refusal(&[("grant_type", SWITCH_CONTEXT_GRANT), ("access_token", &auth().sign(&old))]);
    assert_eq!(r.reason, RefusalReason::Expired);
    let r = refusal(&[("grant_type", SWITCH_CONTEXT_GRANT), ("access_token", "not-a-token")]);
    assert_eq!(r.reason, RefusalReason::Malformed);

    // The account a request names, for the lockout.
    assert_eq!(request(&[("grant_type", "password"), ("username", "dr.patel")]).account(), Some(Account::User("dr.patel".into())));
    assert_eq!(request(&[("grant_type", "client_credentials"), ("client_id", "lab")]).account(), Some(Account::Client("lab".into())));
    let basic = TokenRequest::parse("grant_type=client_credentials", Some(("lab", LAB_SECRET))).unwrap();
    assert_eq!(basic.account(), Some(Account::Client("lab".into())));
    assert_eq!(Account::User("dr.patel".into()).lock_key(), "auth.lock:user:dr.patel");
    assert!(Account::User("dr.patel".into()).exists(domain()));
    assert!(!Account::User("dr.who".into()).exists(domain()));
    assert!(!Account::Client("system".into()).exists(domain()));
    // Debug output never shows values.
    let r = request(&[("grant_type", "password"), ("username", "dr.patel"), ("password", "hunter2-secret")]);
    let shown = format!("{r:?} {basic:?}");
    assert!(!shown.contains("hunter2-secret") && !shown.contains(LAB_SECRET), "{shown}");
}

#[test]
fn refused_bearer_tokens_name_their_reason() {
    let a = auth();
    let mut c = patel_claims();
    c.exp = NOW - 5;
    let expired = a.sign(&c);
    let (e, claims) = a.verify_detailed(&expired, NOW).unwrap_err();
    assert_eq!(RefusalReason::of_token_error(&e), RefusalReason::Expired);
    assert_eq!(claims.map(|c| c.sub), Some("dr.patel".to_string()), "an expired token still names its subject");
    let forged = Authenticator::new(b"another key, another key, another").sign(&patel_claims());
    let (e, claims) = a.verify_detailed(&forged, NOW).unwrap_err();
    assert_eq!((RefusalReason::of_token_error(&e), claims), (RefusalReason::BadSignature, None), "a forged token names nobody");
    let (e, _) = a.verify_detailed("a.b.c", NOW).unwrap_err();
    assert_eq!(RefusalReason::of_token_error(&e), RefusalReason::Malformed);

    // Standing against the domain.
    let c = patel_claims();
    assert_eq!(claims_standing(&c, domain()), Ok(()));
    let mut withdrawn = c.clone();
    withdrawn.role = Some("surgeon".into());
    assert_eq!(claims_standing(&withdrawn, domain()), Err(RefusalReason::WithdrawnRole));
    let mut gone = c.clone();
    gone.sub = "dr.gone".into();
    assert_eq!(claims_standing(&gone, domain()), Err(RefusalReason::UnknownUser));
    let mut inactive = c.clone();
    inactive.sub = "nurse.jones".into();
    assert_eq!(claims_standing(&inactive, domain()), Err(RefusalReason::InactiveUser));

    // The audit event of a refusal holds the reason, never the token.
    let event = AuthEvent::refused(AuthAction::BearerToken, RefusalReason::Expired, Some(AuthSubject::of_claims(&c, domain())), Some("10.0.0.1".into()));
    assert!(event.description.starts_with("expired: "), "{}", event.description);
    assert!(!format!("{event:?}").contains(&expired));
    let attempted = AuthSubject::attempted(&Account::User("dr.who".into()), domain());
    assert_eq!((attempted.known, attempted.name.as_deref(), attempted.organisation.as_deref()), (false, None, None), "names only when known");
    let known = AuthSubject::attempted(&Account::User("dr.patel".into()), domain());
    assert_eq!((known.known, known.name.as_deref(), known.organisation.as_deref()), (true, Some("Dr Asha Patel"), Some("rx1-general")));
    let long = AuthSubject::attempted(&Account::User("x".repeat(1000)), domain());
    assert_eq!(long.id.len(), 128);
    let reuse = AuthEvent::refused(AuthAction::Refresh, RefusalReason::RefreshReuse, None, None);
    assert!(reuse.serious);
}
