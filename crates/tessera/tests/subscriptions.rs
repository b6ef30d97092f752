//! Subscriptions and the outbox, over real HTTP and real MLLP, on both backends: a rest-hook
//! receives what matches and nothing else, in order per patient; failures are retried, then
//! dead, and a replay delivers them; the outbox commits with the change; a websocket client
//! bound to a subscription is pinged; an HL7 v2 subscription sends ADT^A01 over MLLP.

mod common;
use common::{Hook, MllpPeer};
use common::Server;
use serde_json::{json, Value};
use std::time::Duration;
use tessera_engine::Access;
use tessera_store::{OutboxQuery, OutboxState};

on_both_backends!(
    rest_hook_notifies_what_matches,
    delivery_is_in_order_per_patient,
    failures_are_retried_then_dead_then_replayed,
    the_outbox_commits_with_the_change,
    subscriptions_are_validated_and_owned,
    hl7v2_subscription_sends_adt_over_mllp,
    websocket_clients_bind_and_are_pinged,
);

fn subscription(criteria: &str, channel: Value) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "test", "criteria": criteria, "channel": channel})
}

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Test"]}], "birthDate": "1970-01-01", "gender": "female"})
}

fn observation(patient: &str, code: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")}, "valueQuantity": {"value": value, "unit": "/min"}})
}

async fn created(s: &Server, path: &str, body: &Value) -> Value {
    let r = s.post(path, body).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

async fn outbox(s: &Server, states: &[OutboxState]) -> Vec<tessera_store::OutboxEntry> {
    s.engine.outbox_list(&OutboxQuery { states: states.to_vec(), after_seq: 0, limit: 1000, heads_only: false }).await.unwrap()
}

async fn wait_for<F: std::future::Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rest_hook_notifies_what_matches(s: &Server) {
    let hook = Hook::start().await;
    let _worker = common::start_worker(s);
    let sub = created(
        s,
        "Subscription",
        &subscription(
            "Observation?code=http://loinc.org|8867-4",
            json!({"type": "rest-hook", "endpoint": hook.url(), "payload": "application/fhir+json", "header": ["X-Hook-Token: secret-1"]}),
        ),
    )
    .await;
    assert_eq!(sub["status"], "active", "accepted: {sub}");
    let p = created(s, "Patient", &patient("Hook")).await;
    let pid = p["id"].as_str().unwrap();
    let hr = created(s, "Observation", &observation(pid, "8867-4", 72.0)).await;
    let other = created(s, "Observation", &observation(pid, "9279-1", 16.0)).await;
    wait_for("both items decided", || async { outbox(s, &[OutboxState::Pending, OutboxState::Failed]).await.is_empty() && outbox(s, &[]).await.len() == 2 }).await;
    let got = hook.received();
    assert_eq!(got.len(), 1, "one notification: {got:?}");
    assert_eq!(got[0].body["id"], hr["id"], "the matching Observation, as the owner's view returns it");
    assert_eq!(got[0].headers.get("x-hook-token").map(|v| v.to_str().unwrap()), Some("secret-1"));
    assert_eq!(got[0].headers.get("content-type").map(|v| v.to_str().unwrap()), Some("application/fhir+json"));
    let items = outbox(s, &[]).await;
    let state_of = |id: &Value| items.iter().find(|e| e.item.resource_id == id.as_str().unwrap()).map(|e| e.state);
    assert_eq!(state_of(&hr["id"]), Some(OutboxState::Delivered));
    assert_eq!(state_of(&other["id"]), Some(OutboxState::Suppressed), "does not match the criteria");
    assert!(items.iter().all(|e| e.item.patient == pid && e.item.subscription == sub["id"].as_str().unwrap()));
    // Every attempt is audited.
    let audit = s.store.audit_query(&tessera_store::AuditQuery { action: Some("transmit".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(audit.len(), 2, "a transmit record per decided item");
    assert!(audit.iter().all(|a| a.patients == vec![pid.to_string()]));
    let events: Vec<String> = audit.iter().map(|a| String::from_utf8_lossy(&a.event).into_owned()).collect();
    assert!(events.iter().any(|e| e.contains(&format!("Subscription/{}", sub["id"].as_str().unwrap())) && e.contains("delivered")), "{events:?}");
    // A deletion is not notified; an update that matches is.
    let mut changed = hr.clone();
    changed["valueQuantity"]["value"] = json!(80.0);
    assert_eq!(s.put(&format!("Observation/{}", hr["id"].as_str().unwrap()), &changed).await.status, 200);
    wait_for("the update's notification", || async { hook.received().len() == 2 }).await;
    assert_eq!(hook.received()[1].body["meta"]["versionId"], "2");
}

async fn delivery_is_in_order_per_patient(s: &Server) {
    let hook = Hook::start().await;
    // The first two requests fail: the patient's later items wait for the retried first one.
    hook.fail_next(2);
    let _worker = common::start_worker(s);
    created(s, "Subscription", &subscription("Observation", json!({"type": "rest-hook", "endpoint": hook.url(), "payload": "application/fhir+json"}))).await;
    let a = created(s, "Patient", &patient("Ordera")).await["id"].as_str().unwrap().to_string();
    let b = created(s, "Patient", &patient("Orderb")).await["id"].as_str().unwrap().to_string();
    let mut written = Vec::new();
    for i in 0..5 {
        for p in [&a, &b] {
            let o = created(s, "Observation", &observation(p, "8867-4", 60.0 + i as f64)).await;
            written.push((p.clone(), o["id"].as_str().unwrap().to_string()));
        }
    }
    wait_for("ten deliveries", || async { outbox(s, &[OutboxState::Delivered]).await.len() == 10 }).await;
    let delivered: Vec<(String, String)> = hook
        .received()
        .iter()
        .filter(|r| r.status < 300)
        .map(|r| (r.body["subject"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_string(), r.body["id"].as_str().unwrap().to_string()))
        .collect();
    for p in [&a, &b] {
        let sent: Vec<&String> = delivered.iter().filter(|(q, _)| q == p).map(|(_, id)| id).collect();
        let wrote: Vec<&String> = written.iter().filter(|(q, _)| q == p).map(|(_, id)| id).collect();
        assert_eq!(sent, wrote, "in order for Patient/{p}");
    }
    // The two failed requests were of a patient's first item (the patients' items go out
    // side by side): the items after it waited for it.
    let received = hook.received();
    let failed: Vec<&str> = received.iter().filter(|r| r.status >= 300).filter_map(|r| r.body["id"].as_str()).collect();
    assert_eq!(failed.len(), 2);
    let firsts: Vec<&str> = [&a, &b].iter().map(|p| written.iter().find(|(q, _)| q == *p).unwrap().1.as_str()).collect();
    assert!(failed.iter().all(|id| firsts.contains(id)), "{failed:?} are first items {firsts:?}");
}

async fn failures_are_retried_then_dead_then_replayed(s: &Server) {
    let hook = Hook::start().await;
    hook.fail_next(usize::MAX);
    let _worker = common::start_worker(s);
    created(s, "Subscription", &subscription("Observation", json!({"type": "rest-hook", "endpoint": hook.url()}))).await;
    let p = created(s, "Patient", &patient("Dead")).await["id"].as_str().unwrap().to_string();
    let first = created(s, "Observation", &observation(&p, "8867-4", 70.0)).await["id"].as_str().unwrap().to_string();
    let second = created(s, "Observation", &observation(&p, "8867-4", 71.0)).await["id"].as_str().unwrap().to_string();
    // The first is tried max_attempts (3) times, then dead; only then is the second tried.
    wait_for("both dead", || async { outbox(s, &[OutboxState::Dead]).await.len() == 2 }).await;
    let dead = outbox(s, &[OutboxState::Dead]).await;
    assert!(dead.iter().all(|e| e.attempts == common::WORKER_ATTEMPTS && e.last_error.as_deref().is_some_and(|m| m.contains("500"))), "{dead:?}");
    assert_eq!(hook.received().len(), 2 * common::WORKER_ATTEMPTS as usize, "no body (no payload): {} requests", hook.received().len());
    assert!(hook.received().iter().all(|r| r.raw.is_empty()), "no payload: an empty notification");
    let (first_dead, second_dead) = (dead.iter().find(|e| e.item.resource_id == first).unwrap(), dead.iter().find(|e| e.item.resource_id == second).unwrap());
    assert!(first_dead.updated_micros < second_dead.updated_micros, "the second waited for the first");
    // Replayed: delivered once the endpoint works.
    hook.fail_next(0);
    let replayed = s.engine.outbox_replay(&Access::bootstrap(), &[]).await.unwrap();
    assert_eq!(replayed.len(), 2);
    wait_for("both delivered after the replay", || async { outbox(s, &[OutboxState::Delivered]).await.len() == 2 }).await;
    let audit = s.store.audit_query(&tessera_store::AuditQuery { action: Some("outbox-replay".into()), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(audit.len(), 2, "each replayed item audited");
    // Only the operator replays.
    assert!(s.engine.outbox_replay(&Access::system("tessera-x"), &[]).await.is_err());
}

async fn the_outbox_commits_with_the_change(s: &Server) {
    let hook = Hook::start().await;
    created(s, "Subscription", &subscription("Observation", json!({"type": "rest-hook", "endpoint": hook.url()}))).await;
    let p = created(s, "Patient", &patient("Atomic")).await["id"].as_str().unwrap().to_string();
    // A transaction refused (its second entry is invalid) stores nothing: no outbox item either.
    let mut bad = observation(&p, "8867-4", 1.0);
    bad["status"] = json!("not-a-status");
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": observation(&p, "8867-4", 2.0)},
        {"request": {"method": "POST", "url": "Observation"}, "resource": bad},
    ]});
    let r = s.post("", &tx).await;
    assert!(r.status >= 400, "{}", r.status);
    // A conflicting update (If-Match on an old version) neither.
    let o = created(s, "Observation", &observation(&p, "8867-4", 3.0)).await;
    assert_eq!(outbox(s, &[]).await.len(), 1, "the one create");
    let r = s.request("PUT", &format!("Observation/{}", o["id"].as_str().unwrap()), &[("if-match", "W/\"7\"")], Some(&serde_json::to_vec(&o).unwrap())).await;
    assert_eq!(r.status, 412);
    // A transaction that commits adds an item per entry, in the same commit.
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Observation"}, "resource": observation(&p, "8867-4", 4.0)},
        {"request": {"method": "POST", "url": "Observation"}, "resource": observation(&p, "8867-4", 5.0)},
    ]});
    assert_eq!(s.post("", &tx).await.status, 200);
    let items = outbox(s, &[]).await;
    assert_eq!(items.len(), 3, "{items:?}");
    assert!(items.iter().all(|e| e.state == OutboxState::Pending), "no worker runs in this test");
    assert!(items.windows(2).all(|w| w[0].seq < w[1].seq));
    // What the worker may attempt: the oldest open item of each subscription and patient.
    let heads = s.engine.outbox_list(&OutboxQuery { states: vec![], after_seq: 0, limit: 1000, heads_only: true }).await.unwrap();
    assert_eq!(heads.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![items[0].seq], "one patient, one subscription: its first item");
    // Without an active subscription, nothing is added.
    let sub = s.get("Subscription").await.json()["entry"][0]["resource"].clone();
    let mut off = sub.clone();
    off["status"] = json!("off");
    assert_eq!(s.put(&format!("Subscription/{}", sub["id"].as_str().unwrap()), &off).await.status, 200);
    created(s, "Observation", &observation(&p, "8867-4", 6.0)).await;
    assert_eq!(outbox(s, &[]).await.len(), 3, "the subscription is off");
}

async fn subscriptions_are_validated_and_owned(s: &Server) {
    for channel in [
        json!({"type": "rest-hook", "endpoint": "ftp://example.org/"}),
        json!({"type": "rest-hook", "endpoint": "https://example.org/"}),
        json!({"type": "email", "endpoint": "mailto:someone@example.org"}),
        json!({"type": "message", "endpoint": "mllp://127.0.0.1:2575"}),
    ] {
        // Stored (a valid resource), but not active: `error`, with the reason.
        let r = s.post("Subscription", &subscription("Encounter", channel.clone())).await;
        assert_eq!(r.status, 201, "{channel}: {}", String::from_utf8_lossy(&r.body));
        let sub = r.json();
        assert_eq!(sub["status"], "error", "{channel}: {sub}");
        assert!(sub["error"].as_str().is_some_and(|e| e.contains("Subscription.channel")), "{sub}");
    }
    for criteria in ["NotAType?x=1", "Observation?cdoe=8867-4", "Observation?_sort=date"] {
        // A misspelt filter would widen the subscription to every Observation: not active.
        let r = s.post("Subscription", &subscription(criteria, json!({"type": "websocket"}))).await.json();
        assert_eq!(r["status"], "error", "{criteria}");
        assert!(r["error"].as_str().unwrap().contains("Subscription.criteria"), "{r}");
    }
    assert!(s.engine.active_subscriptions().is_empty(), "none of them is active");
    // The websocket endpoint is in the CapabilityStatement.
    let cs = s.get("metadata").await.json();
    assert_eq!(cs["rest"][0]["extension"][0]["valueUrl"], format!("{}/$subscription-websocket", s.base.replace("http://", "ws://")));
    // A clinician cannot subscribe (configuration is written by administrators and systems).
    load_demo(s).await;
    let patel = s.user_token("dr.patel", Some("doctor"), Some("rx1-general"), Some("ward-7a"));
    let body = serde_json::to_vec(&subscription("Observation", json!({"type": "websocket"}))).unwrap();
    let r = s.request_as(&patel, "POST", "Subscription", Some(&body)).await;
    assert_eq!(r.status, 403, "{}", String::from_utf8_lossy(&r.body));
    // A system account of an organisation can; the subscription is its organisation's.
    let w = s.engine.create(&Access::system("rx2"), "Subscription", serde_json::from_slice(&body).unwrap(), None).await.unwrap();
    assert_eq!(w.status, 201);
    let active = s.engine.active_subscriptions();
    let sub = active.iter().find(|a| a.id == w.resource.id()).expect("active");
    assert_eq!(sub.owner, "rx2");
}

async fn load_demo(s: &Server) {
    s.load_demo().await;
}

async fn hl7v2_subscription_sends_adt_over_mllp(s: &Server) {
    let peer = MllpPeer::start("AA").await;
    let _worker = common::start_worker(s);
    let r = s.post("Subscription", &subscription("Encounter", json!({"type": "message", "endpoint": format!("mllp://{}", peer.addr), "payload": "application/hl7-v2+er7"}))).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let mut p = patient("Mllp");
    p["identifier"] = json!([{"system": "https://example.org/mrn", "value": "MRN-4242"}]);
    let p = created(s, "Patient", &p).await;
    let pid = p["id"].as_str().unwrap();
    let enc = json!({"resourceType": "Encounter", "status": "in-progress",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
        "subject": {"reference": format!("Patient/{pid}")}, "period": {"start": "2026-12-07T10:00:00Z"}});
    created(s, "Encounter", &enc).await;
    wait_for("an ADT message", || async { peer.received().iter().any(|m| m.contains("ADT^A01")) }).await;
    let messages = peer.received();
    let adt = messages.iter().find(|m| m.contains("ADT^A01")).unwrap();
    let msg = tessera_hl7v2::message::Message::parse(adt).unwrap_or_else(|e| panic!("{e}: {adt:?}"));
    let msh = msg.segment("MSH").unwrap();
    assert!(msh.fields().iter().any(|f| f.value().starts_with("ADT")), "{adt:?}");
    let pid_segment = msg.segment("PID").unwrap_or_else(|| panic!("PID: {adt:?}"));
    assert!(pid_segment.fields().iter().any(|f| f.value().contains("MRN-4242")) || adt.contains("MRN-4242"), "PID-3 carries the identifier: {adt:?}");
    assert!(adt.contains("|Mllp^Test|"), "PID-5 the name: {adt:?}");
    let pv1 = msg.segment("PV1").unwrap_or_else(|| panic!("PV1 of the encounter: {adt:?}"));
    assert!(pv1.fields().iter().any(|f| f.value() == "I"), "PV1-2 inpatient: {adt:?}");
    wait_for("the ADT delivered", || async { outbox(s, &[OutboxState::Delivered]).await.iter().any(|e| e.item.resource_type == "Encounter") }).await;
    // The Patient's own change (its registration) was an A08 of the same feed.
    assert!(outbox(s, &[]).await.iter().any(|e| e.item.resource_type == "Patient"));
}

async fn websocket(s: &Server, token: &str) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/$subscription-websocket", s.base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(request).await.unwrap_or_else(|e| panic!("websocket upgrade: {e}")).0
}

async fn next_text(ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, within: Duration) -> Option<String> {
    use futures::StreamExt;
    loop {
        match tokio::time::timeout(within, ws.next()).await {
            Ok(Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t)))) => return Some(t.to_string()),
            Ok(Some(Ok(_))) => continue,
            _ => return None,
        }
    }
}

async fn websocket_clients_bind_and_are_pinged(s: &Server) {
    use futures::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    load_demo(s).await;
    let _worker = common::start_worker(s);
    let sub = json!({"resourceType": "Subscription", "status": "requested", "reason": "ward display", "criteria": "Observation?code=http://loinc.org|8867-4", "channel": {"type": "websocket"}});
    let id = s.engine.create(&Access::system("rx1"), "Subscription", sub, None).await.unwrap().resource.id().to_string();
    let northgate = s.auth.issue_system_token("system", "rx1-general", "system/*.*", tessera_auth::now(), 60);
    let southbank = s.auth.issue_system_token("system", "rx2", "system/*.*", tessera_auth::now(), 60);
    // No token: no upgrade.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let request = format!("{}/$subscription-websocket", s.base.replace("http://", "ws://")).into_client_request().unwrap();
        assert!(tokio_tungstenite::connect_async(request).await.is_err(), "a token is required");
    }
    let mut own = websocket(s, &northgate).await;
    own.send(Message::Text(format!("bind {id}").into())).await.unwrap();
    assert_eq!(next_text(&mut own, Duration::from_secs(5)).await.as_deref(), Some(format!("bound {id}").as_str()));
    // Another organisation's token cannot bind: the subscription is absent for it.
    let mut other = websocket(s, &southbank).await;
    other.send(Message::Text(format!("bind {id}").into())).await.unwrap();
    let answer = next_text(&mut other, Duration::from_secs(5)).await.unwrap();
    assert!(answer.starts_with(&format!("error {id}")), "{answer}");
    // A matching Observation: the bound client is pinged; the other receives nothing.
    let o = observation("jane-smith", "8867-4", 64.0);
    s.engine.create(&Access::system("rx1-general"), "Observation", o, None).await.unwrap();
    assert_eq!(next_text(&mut own, Duration::from_secs(10)).await.as_deref(), Some(format!("ping {id}").as_str()));
    assert_eq!(next_text(&mut other, Duration::from_millis(500)).await, None);
    wait_for("the ping recorded", || async { outbox(s, &[OutboxState::Delivered]).await.len() == 1 }).await;
    // With no client bound, a notification fails and is retried (then dead, replayable).
    drop(own);
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.engine.create(&Access::system("rx1-general"), "Observation", observation("jane-smith", "8867-4", 65.0), None).await.unwrap();
    wait_for("dead without a client", || async { outbox(s, &[OutboxState::Dead]).await.len() == 1 }).await;
}
