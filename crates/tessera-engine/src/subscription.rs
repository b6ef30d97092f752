//! FHIR R4 Subscriptions and the outbox of their notifications.
//!
//! A `Subscription` is an ordinary resource, written through the engine and owned by the
//! writer's organisation (its class is configuration: domain administrators and service
//! accounts with the scope write it). [`check`] sets `status` to `active` when this server can
//! deliver what it asks for, and to `error` (with the reason in `error`) when it cannot. The engine keeps the active subscriptions in memory
//! ([`Engine::refresh_subscriptions`]: at start, and after every commit that writes a
//! Subscription).
//!
//! **The outbox invariant.** [`Engine::outbox_items`] turns the writes of a commit into
//! outbox items — one per written version and active subscription whose criteria type
//! matches — and `commit_gated` hands them to the store with the writes
//! (`Store::commit_outbox`): a change and its notifications commit together or not at all.
//!
//! **Delivery through the Gate.** The delivery worker (`tessera-outbound`) never reads a
//! stored row: [`Engine::outbox_prepare`] evaluates an item as the subscription owner's
//! system access (`Access::system(owner)`): a search `Type?{criteria}&_id={id}` through the
//! engine (criteria and visibility in one), then a vread of the version for the payload.
//! What that view may not see — hidden data, data behind the glass (a system account never
//! breaks the glass) — is *suppressed*, never delivered. Every attempt is audited
//! ([`Engine::outbox_audit`]).

use crate::access::Access;
use crate::search::Scope;
use crate::{Engine, FhirError};
use serde_json::{Map, Value};
use std::sync::Arc;
use tessera_fhir::IssueType;
use tessera_store::{OutboxEntry, OutboxItem, OutboxQuery, Write};

/// The `channel.payload` of an HL7 v2 message subscription.
pub const HL7V2_PAYLOAD: &str = "application/hl7-v2+er7";

/// How a subscription's notifications travel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Channel {
    /// HTTP POST to `endpoint` with the `channel.header` lines; the body is empty (no
    /// payload) or the resource as the owner's view returns it.
    RestHook { endpoint: String, headers: Vec<(String, String)>, payload: Option<String> },
    /// The R4 websocket protocol: a client bound to the subscription receives `ping {id}`.
    Websocket,
    /// HL7 v2 over MLLP to `host:port` (`message` channel, `mllp://host:port`, payload
    /// `application/hl7-v2+er7`): ADT for Patient and Encounter changes, ORU^R01 for
    /// DiagnosticReports.
    Mllp { address: String },
}

/// An active subscription, as the engine keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSubscription {
    pub id: String,
    /// The owning organisation (whose system view decides what is delivered).
    pub owner: String,
    /// The criteria's resource type.
    pub resource_type: String,
    /// The criteria's parameters (the query string after `?`, possibly empty).
    pub params: String,
    pub channel: Channel,
}

impl ActiveSubscription {
    /// Does a write of `resource_type` concern this subscription?
    pub fn concerns(&self, resource_type: &str) -> bool {
        if resource_type == self.resource_type {
            return true;
        }
        // An ADT feed follows the patients of its encounters too (A08 on a Patient change).
        matches!(self.channel, Channel::Mllp { .. }) && self.resource_type == "Encounter" && resource_type == "Patient"
    }
}

/// Splits `Type?params`; why not, in words.
fn split_criteria(criteria: &str) -> Result<(String, String), String> {
    let (t, q) = criteria.split_once('?').unwrap_or((criteria, ""));
    let t = t.trim_start_matches('/');
    if !tessera_fhir::definitions::is_resource_type(t) {
        return Err(format!("Subscription.criteria '{criteria}' does not start with a resource type (Type?params)"));
    }
    let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    for (k, _) in &pairs {
        if k.is_empty() || k.starts_with("_include") || k.starts_with("_revinclude") || matches!(k.as_str(), "_count" | "_sort" | "_summary" | "_elements" | "_total" | "_id" | "_offset" | "_cursor") {
            return Err(format!("Subscription.criteria: '{k}' is not a filter a subscription can use"));
        }
    }
    // Strictly: a misspelt parameter must not widen the subscription to every resource.
    if let Err(errors) = tessera_search::query::parse(Some(t), &pairs, true) {
        let messages: Vec<String> = errors.into_iter().map(|e| e.message).collect();
        return Err(format!("Subscription.criteria: {}", messages.join("; ")));
    }
    Ok((t.to_string(), q.to_string()))
}

/// Whether this server can deliver what a Subscription asks for; why not, in words.
pub fn deliverable(map: &Map<String, Value>) -> Result<(), String> {
    let criteria = map.get("criteria").and_then(Value::as_str).unwrap_or_default().to_string();
    let (resource_type, _) = split_criteria(&criteria)?;
    let channel = map.get("channel").cloned().unwrap_or(Value::Null);
    let kind = channel["type"].as_str().unwrap_or_default();
    let endpoint = channel["endpoint"].as_str().unwrap_or_default();
    let payload = channel["payload"].as_str();
    match kind {
        "rest-hook" => {
            if endpoint.starts_with("https://") {
                return Err("Subscription.channel.endpoint: this server delivers rest-hook notifications over http:// only (https:// is not supported yet: use a TLS-terminating relay)".into());
            }
            if !endpoint.starts_with("http://") || endpoint.len() <= "http://".len() {
                return Err("Subscription.channel.endpoint: a rest-hook needs an http:// URL".into());
            }
            if let Some(p) = payload {
                if !matches!(p, "application/fhir+json" | "application/json") {
                    return Err(format!("Subscription.channel.payload '{p}': rest-hook payloads are application/fhir+json (or none)"));
                }
            }
        }
        "websocket" => {}
        "message" => {
            let Some(address) = endpoint.strip_prefix("mllp://") else {
                return Err("Subscription.channel.endpoint: a message channel delivers HL7 v2 over MLLP to mllp://host:port".into());
            };
            if address.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()) {
                return Err(format!("Subscription.channel.endpoint: '{endpoint}' is not mllp://host:port"));
            }
            if payload != Some(HL7V2_PAYLOAD) {
                return Err(format!("Subscription.channel.payload: a message channel's payload is {HL7V2_PAYLOAD}"));
            }
            if !matches!(resource_type.as_str(), "Encounter" | "Patient" | "DiagnosticReport") {
                return Err(
                    "Subscription.criteria: an HL7 v2 subscription follows Encounter (ADT A01/A02/A03/A04/A08, and its patients' changes), Patient (ADT A08) or DiagnosticReport (ORU^R01)"
                        .into(),
                );
            }
        }
        other => {
            return Err(format!("Subscription.channel.type '{other}': this server delivers rest-hook, websocket and message (HL7 v2 over MLLP)"));
        }
    }
    Ok(())
}

/// A Subscription being written that asks to be active (`status` `requested` or `active`)
/// becomes `active` when this server can deliver it ([`deliverable`]), and `error` with the
/// reason in `error` when it cannot (R4: the server manages the status). Others (`off`,
/// `error`) are kept as written.
pub fn check(map: &mut Map<String, Value>) {
    if !matches!(map.get("status").and_then(Value::as_str), Some("requested" | "active")) {
        return;
    }
    match deliverable(map) {
        Ok(()) => {
            map.insert("status".into(), Value::String("active".into()));
            map.remove("error");
        }
        Err(why) => {
            map.insert("status".into(), Value::String("error".into()));
            map.insert("error".into(), Value::String(why));
        }
    }
}

/// The active subscription a stored Subscription describes, if it is one.
fn active_of(id: &str, owner: Option<&str>, resource: &Value) -> Option<ActiveSubscription> {
    if resource["status"] != "active" {
        return None;
    }
    let (resource_type, params) = split_criteria(resource["criteria"].as_str()?).ok()?;
    let channel = &resource["channel"];
    let channel = match channel["type"].as_str()? {
        "rest-hook" => Channel::RestHook {
            endpoint: channel["endpoint"].as_str()?.to_string(),
            headers: channel["header"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|h| h.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect(),
            payload: channel["payload"].as_str().map(str::to_string),
        },
        "websocket" => Channel::Websocket,
        "message" => Channel::Mllp { address: channel["endpoint"].as_str()?.strip_prefix("mllp://")?.to_string() },
        _ => return None,
    };
    Some(ActiveSubscription { id: id.to_string(), owner: owner?.to_string(), resource_type, params, channel })
}

/// What a delivery carries, read as the subscription owner's view.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub subscription: ActiveSubscription,
    /// The version notified, as the owner's view returns it.
    pub resource: Value,
    /// The version before it (Encounters of an HL7 v2 subscription: a location change is A02).
    pub previous: Option<Value>,
    /// HL7 v2: the patient, the encounter, and a report's observations (each as the view returns it).
    pub patient: Option<Value>,
    pub encounter: Option<Value>,
    pub observations: Vec<Value>,
}

/// What to do with an outbox item.
#[derive(Debug, Clone)]
pub enum Prepared {
    Deliver(Box<Delivery>),
    /// Never delivered: why (the subscriber's view may not see it, it no longer matches,
    /// the subscription is gone).
    Suppressed(String),
}

#[derive(Default)]
pub(crate) struct Subscriptions {
    active: std::sync::RwLock<Arc<Vec<ActiveSubscription>>>,
    /// Websocket clients bound per subscription, and the channel they listen on.
    bound: std::sync::Mutex<std::collections::HashMap<String, usize>>,
    pings: std::sync::OnceLock<tokio::sync::broadcast::Sender<String>>,
}

impl Subscriptions {
    fn pings(&self) -> &tokio::sync::broadcast::Sender<String> {
        self.pings.get_or_init(|| tokio::sync::broadcast::channel(1024).0)
    }
}

/// A websocket client's binding to a subscription (unbound when dropped).
pub struct WebsocketBinding {
    engine: Engine,
    id: String,
    pub receiver: tokio::sync::broadcast::Receiver<String>,
}

impl WebsocketBinding {
    pub fn subscription(&self) -> &str {
        &self.id
    }
}

impl Drop for WebsocketBinding {
    fn drop(&mut self) {
        let mut bound = self.engine.inner.subscriptions.bound.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = bound.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                bound.remove(&self.id);
            }
        }
    }
}

impl Engine {
    /// The active subscriptions.
    pub fn active_subscriptions(&self) -> Arc<Vec<ActiveSubscription>> {
        self.inner.subscriptions.active.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reloads the active subscriptions from the store (at start, after a Subscription is
    /// written, and periodically by the delivery worker for subscriptions written by other
    /// servers of a PostgreSQL database).
    pub async fn refresh_subscriptions(&self) -> Result<(), FhirError> {
        let mut seen = std::collections::HashSet::new();
        let mut active = Vec::new();
        let mut before = None;
        loop {
            let page = self
                .store()
                .history(&tessera_store::HistoryQuery { resource_type: Some("Subscription".into()), id: None, since_micros: None, before_seq: before, count: 1000 })
                .await?;
            let Some(last) = page.last() else { break };
            before = Some(last.seq);
            let n = page.len();
            for s in page {
                if !seen.insert(s.id.clone()) || s.deleted {
                    continue;
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&s.json) {
                    if let Some(a) = active_of(&s.id, s.owner.as_deref(), &v) {
                        active.push(a);
                    }
                }
            }
            if n < 1000 {
                break;
            }
        }
        active.sort_by(|a, b| a.id.cmp(&b.id));
        *self.inner.subscriptions.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(active);
        Ok(())
    }

    /// The outbox items of a commit's writes: one per written (not deleted) version and
    /// active subscription it concerns.
    pub(crate) fn outbox_items(&self, writes: &[Write]) -> Vec<OutboxItem> {
        let subs = self.active_subscriptions();
        if subs.is_empty() {
            return Vec::new();
        }
        let now = tessera_store::now_micros();
        let mut items = Vec::new();
        for w in writes.iter().filter(|w| !w.deleted) {
            for s in subs.iter().filter(|s| s.concerns(&w.resource_type)) {
                let patient = if w.resource_type == "Patient" { w.id.clone() } else { w.compartment.clone().unwrap_or_default() };
                items.push(OutboxItem {
                    subscription: s.id.clone(),
                    resource_type: w.resource_type.clone(),
                    resource_id: w.id.clone(),
                    version: w.version,
                    patient,
                    created_micros: now,
                });
            }
        }
        items
    }

    /// Outbox items, oldest first (the delivery worker, `tessera outbox list`).
    pub async fn outbox_list(&self, query: &OutboxQuery) -> Result<Vec<OutboxEntry>, FhirError> {
        Ok(self.store().outbox_list(query).await?)
    }

    /// Records the outcome of a delivery attempt.
    pub async fn outbox_update(&self, entry: &OutboxEntry) -> Result<(), FhirError> {
        Ok(self.store().outbox_update(entry).await?)
    }

    /// Puts items back on the queue (`tessera outbox replay`): `seqs`, or every dead item
    /// when empty. Audited as `outbox-replay` by `access` (the operator's bootstrap access).
    pub async fn outbox_replay(&self, access: &Access, seqs: &[i64]) -> Result<Vec<OutboxEntry>, FhirError> {
        if !access.is_domain_bootstrap() {
            return Err(FhirError::new(403, IssueType::Forbidden, "replaying the outbox is an operator's action"));
        }
        let replayed = self.store().outbox_replay(seqs).await?;
        let mut gate = self.gate(access);
        for e in &replayed {
            let entities = [format!("{}/{}/_history/{}", e.item.resource_type, e.item.resource_id, e.item.version), format!("Subscription/{}", e.item.subscription)];
            let patients = if e.item.patient.is_empty() { Vec::new() } else { vec![e.item.patient.clone()] };
            gate.record("outbox-replay", true, &entities, patients, false, Some(&format!("outbox item {} replayed (was {})", e.seq, e.state.code())));
        }
        gate.finish().await?;
        Ok(replayed)
    }

    /// Decides an outbox item as its subscription owner's system view, and reads what the
    /// delivery carries through the Gate (see the module documentation).
    pub async fn outbox_prepare(&self, entry: &OutboxEntry) -> Result<Prepared, FhirError> {
        let item = &entry.item;
        let Some(sub) = self.active_subscriptions().iter().find(|s| s.id == item.subscription).cloned() else {
            return Ok(Prepared::Suppressed(format!("Subscription/{} is no longer active", item.subscription)));
        };
        let access = Access::system(&sub.owner);
        let id_param = format!("_id={}", percent_encoding::utf8_percent_encode(&item.resource_id, percent_encoding::NON_ALPHANUMERIC));
        let query = if item.resource_type == sub.resource_type && !sub.params.is_empty() { format!("{}&{id_param}", sub.params) } else { id_param };
        let hidden = || Prepared::Suppressed(format!("{}/{} does not match the criteria, or the subscriber's view may not see it", item.resource_type, item.resource_id));
        let bundle = match self.search(&access, Scope::Type(Some(&item.resource_type)), &query, true).await {
            Ok(b) => b,
            Err(e) if e.status == 403 => return Ok(Prepared::Suppressed(format!("the subscriber's scopes do not reach {}", item.resource_type))),
            Err(e) => return Err(e),
        };
        let bundle: Value = serde_json::from_slice(bundle.as_bytes()).map_err(|e| FhirError::internal(format!("search bundle: {e}")))?;
        let matched = bundle["entry"].as_array().into_iter().flatten().any(|e| {
            e["search"]["mode"] != "outcome" && e["resource"]["resourceType"] == item.resource_type.as_str() && e["resource"]["id"] == item.resource_id.as_str()
        });
        if !matched {
            return Ok(hidden());
        }
        let read_version = |v: u64| {
            let access = access.clone();
            async move {
                match self.vread(&access, &item.resource_type, &item.resource_id, &v.to_string()).await {
                    Ok(r) => serde_json::from_slice::<Value>(r.json()).ok(),
                    Err(_) => None,
                }
            }
        };
        let Some(resource) = read_version(item.version).await else { return Ok(hidden()) };
        let mut delivery = Delivery { subscription: sub.clone(), resource, previous: None, patient: None, encounter: None, observations: Vec::new() };
        if matches!(sub.channel, Channel::Mllp { .. }) {
            let read_ref = |reference: Option<String>| {
                let access = access.clone();
                async move {
                    let reference = reference?;
                    let (t, id) = reference.split_once('/')?;
                    let r = self.read(&access, t, id).await.ok()?;
                    serde_json::from_slice::<Value>(r.json()).ok()
                }
            };
            match item.resource_type.as_str() {
                "Patient" => delivery.patient = Some(delivery.resource.clone()),
                "Encounter" => {
                    if item.version > 1 {
                        delivery.previous = read_version(item.version - 1).await;
                    }
                    delivery.encounter = Some(delivery.resource.clone());
                    delivery.patient = read_ref(delivery.resource["subject"]["reference"].as_str().map(str::to_string)).await;
                }
                "DiagnosticReport" => {
                    delivery.patient = read_ref(delivery.resource["subject"]["reference"].as_str().map(str::to_string)).await;
                    delivery.encounter = read_ref(delivery.resource["encounter"]["reference"].as_str().map(str::to_string)).await;
                    let results: Vec<String> = delivery.resource["result"].as_array().into_iter().flatten().filter_map(|r| r["reference"].as_str().map(str::to_string)).collect();
                    for r in results {
                        // Each observation as the view returns it: one it may not see is left out.
                        if let Some(o) = read_ref(Some(r)).await {
                            delivery.observations.push(o);
                        }
                    }
                }
                _ => {}
            }
            if delivery.patient.is_none() {
                return Ok(Prepared::Suppressed("the subscriber's view may not see the patient".into()));
            }
        }
        Ok(Prepared::Deliver(Box::new(delivery)))
    }

    /// Audits a delivery attempt (`transmit`) as the subscription owner's system account:
    /// the resource version, the subscription, the patient, and what happened.
    pub async fn outbox_audit(&self, entry: &OutboxEntry, owner: Option<&str>, ok: bool, detail: &str) -> Result<(), FhirError> {
        let access = match owner {
            Some(o) => Access::system(o),
            None => Access::bootstrap(),
        };
        let mut gate = self.gate(&access);
        let item = &entry.item;
        let entities = [format!("{}/{}/_history/{}", item.resource_type, item.resource_id, item.version), format!("Subscription/{}", item.subscription)];
        let patients = if item.patient.is_empty() { Vec::new() } else { vec![item.patient.clone()] };
        gate.record("transmit", ok, &entities, patients, false, Some(detail));
        gate.finish().await
    }

    /// Binds a websocket client to a subscription (`bind {id}`): only a subject of the
    /// subscription's owning organisation may (a token of another organisation cannot).
    pub fn bind_websocket(&self, access: &Access, id: &str) -> Result<WebsocketBinding, FhirError> {
        let Some(sub) = self.active_subscriptions().iter().find(|s| s.id == id).cloned() else {
            return Err(FhirError::not_found("Subscription", id));
        };
        if sub.channel != Channel::Websocket {
            return Err(FhirError::bad_request(format!("Subscription/{id} is not a websocket subscription")));
        }
        let domain = self.domain();
        let same_trust = |a: &str, b: &str| a == b || domain.trust_of(a) == domain.trust_of(b);
        if !access.is_domain_bootstrap() && !same_trust(&access.organisation, &sub.owner) {
            // Another organisation's subscription behaves as absent.
            return Err(FhirError::not_found("Subscription", id));
        }
        let receiver = self.inner.subscriptions.pings().subscribe();
        *self.inner.subscriptions.bound.lock().unwrap_or_else(|p| p.into_inner()).entry(id.to_string()).or_default() += 1;
        Ok(WebsocketBinding { engine: self.clone(), id: id.to_string(), receiver })
    }

    /// Notifies the websocket clients bound to a subscription; how many are bound.
    pub fn ping_websocket(&self, id: &str) -> usize {
        let bound = self.inner.subscriptions.bound.lock().unwrap_or_else(|p| p.into_inner()).get(id).copied().unwrap_or(0);
        if bound > 0 {
            let _ = self.inner.subscriptions.pings().send(id.to_string());
        }
        bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => unreachable!(),
        }
    }

    #[test]
    fn accepts_and_activates() {
        let mut m = map(json!({"resourceType": "Subscription", "status": "requested", "criteria": "Observation?code=1234-5", "reason": "x",
            "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json", "header": ["Authorization: Bearer x"]}}));
        check(&mut m);
        assert_eq!(m["status"], "active");
        let a = active_of("s1", Some("rx1"), &Value::Object(m)).unwrap();
        assert_eq!(a.resource_type, "Observation");
        assert_eq!(a.params, "code=1234-5");
        assert_eq!(a.channel, Channel::RestHook { endpoint: "http://127.0.0.1:9/hook".into(), headers: vec![("Authorization".into(), "Bearer x".into())], payload: Some("application/fhir+json".into()) });
    }

    #[test]
    fn marks_what_cannot_be_delivered_as_error() {
        for (criteria, channel) in [
            ("Nothing?x=1", json!({"type": "rest-hook", "endpoint": "http://h/"})),
            ("Observation", json!({"type": "rest-hook", "endpoint": "ftp://h/"})),
            ("Observation", json!({"type": "rest-hook", "endpoint": "https://h/"})),
            ("Observation", json!({"type": "email", "endpoint": "mailto:a@b"})),
            ("Observation", json!({"type": "message", "endpoint": "mllp://h:2575", "payload": "application/hl7-v2+er7"})),
            ("Encounter", json!({"type": "message", "endpoint": "mllp://h", "payload": "application/hl7-v2+er7"})),
            ("Encounter", json!({"type": "message", "endpoint": "mllp://h:2575"})),
            ("Observation?_include=Observation:subject", json!({"type": "websocket"})),
            ("Observation?cdoe=1234-5", json!({"type": "websocket"})),
        ] {
            let mut m = map(json!({"resourceType": "Subscription", "status": "requested", "criteria": criteria, "reason": "x", "channel": channel}));
            check(&mut m);
            assert_eq!(m["status"], "error", "{criteria} {channel}");
            assert!(m["error"].as_str().is_some_and(|e| e.starts_with("Subscription.")), "{m:?}");
        }
    }
}
