//! Delivery of the outbox: the notifications of FHIR Subscriptions (`rest-hook`,
//! `websocket`) and HL7 v2 messages over MLLP (`message` channel), sent by a task that
//! `tessera serve` starts ([`start`]).
//!
//! The engine adds an outbox item for every version written that an active subscription's
//! criteria type concerns, in the transaction of the change (`tessera_engine::subscription`).
//! This crate takes the open items oldest first and delivers, per subscription and patient,
//! one at a time and in order (items of different subscriptions or patients side by side):
//! an item is not attempted while an earlier item of the same
//! subscription and patient is open (pending, or failed and waiting for its retry). Before
//! sending, [`tessera_engine::Engine::outbox_prepare`] decides the item as the subscription
//! owner's system view and reads the payload through the Gate: what that view may not see is
//! *suppressed*, never sent. A failed attempt is retried with exponential backoff
//! ([`Config::backoff`]); after [`Config::max_attempts`] the item is *dead* — on the
//! dead-letter list that `tessera outbox list --state dead` shows and `tessera outbox replay`
//! puts back on the queue (a dead item no longer holds up the items after it). Every attempt
//! is audited (`transmit`, as the owner's system account).
//!
//! **Invariants:** the crate calls the engine, never the store; nothing leaves the server
//! that the owner's view would not return over FHIR.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use serde_json::Value;
use std::collections::HashSet;
use std::time::Duration;
use tessera_engine::subscription::{Channel, Delivery, Prepared};
use tessera_engine::Engine;
use tessera_store::{OutboxEntry, OutboxQuery, OutboxState};

/// How the delivery worker behaves (`tessera serve --outbox-…`).
#[derive(Debug, Clone)]
pub struct Config {
    /// How often the outbox is looked at when there is nothing to do.
    pub poll: Duration,
    /// Attempts before an item is dead.
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles after each further one…
    pub backoff_base: Duration,
    /// … up to this.
    pub backoff_cap: Duration,
    /// How long one delivery may take (connect, send, acknowledgement).
    pub timeout: Duration,
    /// How often the active subscriptions are reloaded (written by other servers of a
    /// PostgreSQL database).
    pub refresh: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            poll: Duration::from_millis(250),
            max_attempts: 8,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            refresh: Duration::from_secs(10),
        }
    }
}

impl Config {
    /// The wait before the next attempt after `attempts` failed ones: base × 2^(attempts−1), capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32.checked_shl(attempts.saturating_sub(1)).unwrap_or(u32::MAX);
        self.backoff_base.checked_mul(factor).unwrap_or(self.backoff_cap).min(self.backoff_cap)
    }
}

/// Deliveries made at the same time (each of another subscription or patient).
const CONCURRENT: usize = 16;

/// Starts the delivery worker.
pub fn start(engine: Engine, config: Config) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(engine, config))
}

async fn run(engine: Engine, config: Config) {
    let client = http_client();
    let mut refreshed = tokio::time::Instant::now();
    loop {
        if refreshed.elapsed() >= config.refresh {
            if let Err(e) = engine.refresh_subscriptions().await {
                tracing::warn!(error = %e, "reloading the active subscriptions failed");
            }
            refreshed = tokio::time::Instant::now();
        }
        match deliver_due(&engine, &config, &client).await {
            Ok(0) => tokio::time::sleep(config.poll).await,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "reading the outbox failed");
                tokio::time::sleep(config.poll * 4).await;
            }
        }
    }
}

type HttpClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

fn http_client() -> HttpClient {
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http()
}

/// One round: attempts the first open item of each subscription and patient that is due.
/// Returns how many items it attempted.
pub async fn deliver_due(engine: &Engine, config: &Config, client: &HttpClientHandle) -> Result<usize, tessera_engine::FhirError> {
    // The oldest open item of each subscription and patient (a long backlog of one
    // receiver does not hide the others').
    let open = engine.outbox_list(&OutboxQuery { states: vec![OutboxState::Pending, OutboxState::Failed], after_seq: 0, limit: 1000, heads_only: true }).await?;
    let now = tessera_store::now_micros();
    let mut heads = HashSet::new();
    let mut due = Vec::new();
    for entry in open {
        // Only the oldest open item of a subscription and patient; the others wait for it.
        if !heads.insert((entry.item.subscription.clone(), entry.item.patient.clone())) {
            continue;
        }
        if entry.next_attempt_micros <= now {
            due.push(entry);
        }
    }
    let attempted = due.len();
    // Items of different subscriptions or patients go out side by side (a slow receiver
    // does not hold up the others); each of them is the only one of its own.
    use futures::StreamExt;
    futures::stream::iter(due).for_each_concurrent(CONCURRENT, |entry| attempt(engine, config, client, entry)).await;
    Ok(attempted)
}

/// The worker's HTTP client (for [`deliver_due`]).
pub type HttpClientHandle = HttpClient;

/// A new HTTP client for [`deliver_due`].
pub fn client() -> HttpClientHandle {
    http_client()
}

async fn attempt(engine: &Engine, config: &Config, client: &HttpClient, mut entry: OutboxEntry) {
    let now = tessera_store::now_micros();
    let prepared = engine.outbox_prepare(&entry).await;
    let owner = engine.active_subscriptions().iter().find(|s| s.id == entry.item.subscription).map(|s| s.owner.clone());
    let outcome: Result<String, String> = match prepared {
        Ok(Prepared::Suppressed(reason)) => {
            entry.state = OutboxState::Suppressed;
            entry.last_error = Some(reason.clone());
            entry.updated_micros = now;
            finish(engine, &entry, owner.as_deref(), false, &format!("not delivered to Subscription/{}: {reason}", entry.item.subscription)).await;
            return;
        }
        Ok(Prepared::Deliver(delivery)) => send(engine, config, client, &entry, &delivery).await,
        Err(e) => Err(format!("preparing the notification failed: {e}")),
    };
    entry.updated_micros = tessera_store::now_micros();
    match outcome {
        Ok(note) => {
            entry.state = OutboxState::Delivered;
            entry.attempts += 1;
            entry.last_error = None;
            finish(engine, &entry, owner.as_deref(), true, &format!("delivered to Subscription/{}: {note}", entry.item.subscription)).await;
        }
        Err(error) => {
            entry.attempts += 1;
            entry.last_error = Some(error.clone());
            let detail = if entry.attempts >= config.max_attempts {
                entry.state = OutboxState::Dead;
                format!("delivery to Subscription/{} failed ({error}); attempt {} of {}: dead", entry.item.subscription, entry.attempts, config.max_attempts)
            } else {
                entry.state = OutboxState::Failed;
                let wait = config.backoff(entry.attempts);
                entry.next_attempt_micros = entry.updated_micros + wait.as_micros() as i64;
                format!("delivery to Subscription/{} failed ({error}); attempt {} of {}, retried in {wait:?}", entry.item.subscription, entry.attempts, config.max_attempts)
            };
            tracing::warn!(item = entry.seq, subscription = %entry.item.subscription, "{detail}");
            finish(engine, &entry, owner.as_deref(), false, &detail).await;
        }
    }
}

async fn finish(engine: &Engine, entry: &OutboxEntry, owner: Option<&str>, ok: bool, detail: &str) {
    if let Err(e) = engine.outbox_audit(entry, owner, ok, detail).await {
        // Not recorded, not counted: the attempt is made again (audited) next round.
        tracing::error!(error = %e, item = entry.seq, "auditing a delivery failed");
        return;
    }
    if let Err(e) = engine.outbox_update(entry).await {
        tracing::error!(error = %e, item = entry.seq, "recording a delivery's outcome failed");
    }
}

async fn send(engine: &Engine, config: &Config, client: &HttpClient, entry: &OutboxEntry, d: &Delivery) -> Result<String, String> {
    match &d.subscription.channel {
        Channel::RestHook { endpoint, headers, payload } => {
            let mut req = http::Request::builder().method("POST").uri(endpoint.as_str());
            for (k, v) in headers {
                req = req.header(k.as_str(), v.as_str());
            }
            let body = match payload {
                Some(p) => {
                    req = req.header("content-type", p.as_str());
                    serde_json::to_vec(&d.resource).map_err(|e| e.to_string())?
                }
                None => Vec::new(),
            };
            let req = req.body(Full::new(Bytes::from(body))).map_err(|e| format!("request: {e}"))?;
            let exchange = async {
                let resp = client.request(req).await.map_err(|e| format!("POST {endpoint}: {e}"))?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                if status.is_success() {
                    Ok(format!("POST {endpoint}: {status}"))
                } else {
                    Err(format!("POST {endpoint}: {status}"))
                }
            };
            tokio::time::timeout(config.timeout, exchange).await.map_err(|_| format!("POST {endpoint}: no answer in {:?}", config.timeout))?
        }
        Channel::Websocket => match engine.ping_websocket(&d.subscription.id) {
            0 => Err("no websocket client is bound to the subscription".into()),
            n => Ok(format!("ping sent to {n} bound websocket client(s)")),
        },
        Channel::Mllp { address } => {
            let message = hl7v2_message(entry, d)?;
            let acks = tessera_mllp::send(address, &[message], config.timeout).await.map_err(|e| format!("MLLP to {address}: {e}"))?;
            // The last reply: the application acknowledgement (or, in enhanced mode, the commit one).
            let ack = acks.first().and_then(|r| r.last()).ok_or_else(|| format!("MLLP to {address}: no acknowledgement"))?;
            let msa: Vec<&str> = ack.split(['\r', '\n']).find(|s| s.starts_with("MSA")).map(|s| s.split('|').collect()).unwrap_or_default();
            match msa.get(1).copied() {
                Some("AA" | "CA") => Ok(format!("MLLP to {address}: {}", msa[..].join("|"))),
                Some(code) => Err(format!("MLLP to {address}: acknowledged {code}{}", msa.get(3).map(|t| format!(" ({t})")).unwrap_or_default())),
                None => Err(format!("MLLP to {address}: the answer has no MSA segment")),
            }
        }
    }
}

/// The ADT trigger of an Encounter or Patient change: a new encounter in progress is an
/// admission (A01; A04, a registration, when its class is not inpatient), a changed location
/// a transfer (A02), a finished encounter a discharge (A03), anything else an update (A08).
pub fn adt_trigger(resource: &Value, previous: Option<&Value>) -> &'static str {
    if resource["resourceType"] != "Encounter" {
        return "A08";
    }
    let status = resource["status"].as_str().unwrap_or_default();
    let was = previous.map(|p| p["status"].as_str().unwrap_or_default());
    let class = resource["class"]["code"].as_str().unwrap_or_default();
    let inpatient = matches!(class, "IMP" | "ACUTE" | "NONAC");
    if status == "in-progress" && was.is_none_or(|w| w != "in-progress" && w != "finished") {
        return if inpatient { "A01" } else { "A04" };
    }
    if status == "finished" && was.is_some_and(|w| w != "finished") {
        return "A03";
    }
    let location = |e: &Value| e["location"].as_array().and_then(|l| l.last()).map(|l| l["location"]["reference"].clone());
    if let Some(p) = previous {
        if location(resource) != location(p) && location(resource).is_some() {
            return "A02";
        }
    }
    "A08"
}

fn hl7v2_message(entry: &OutboxEntry, d: &Delivery) -> Result<String, String> {
    let patient = d.patient.as_ref().ok_or("no patient")?;
    let now = time::OffsetDateTime::now_utc();
    let timestamp = format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}+0000",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    );
    let header = tessera_hl7v2::encode::Header {
        sending_application: "TESSERA".into(),
        sending_facility: d.subscription.owner.clone(),
        receiving_application: String::new(),
        receiving_facility: String::new(),
        control_id: format!("TSO{}", entry.seq),
        timestamp,
        version: String::new(),
    };
    let encoded = match entry.item.resource_type.as_str() {
        "DiagnosticReport" => tessera_hl7v2::encode::oru_r01(patient, d.encounter.as_ref(), &d.resource, &d.observations, &header),
        _ => tessera_hl7v2::encode::adt(adt_trigger(&d.resource, d.previous.as_ref()), patient, d.encounter.as_ref(), &header),
    };
    encoded.map_err(|e| format!("HL7 v2: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let c = Config { backoff_base: Duration::from_secs(1), backoff_cap: Duration::from_secs(10), ..Config::default() };
        let waits: Vec<u64> = (1..=6).map(|a| c.backoff(a).as_secs()).collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 10, 10]);
        assert_eq!(c.backoff(200), Duration::from_secs(10));
    }

    #[test]
    fn triggers() {
        let enc = |status: &str, class: &str, ward: &str| json!({"resourceType": "Encounter", "status": status, "class": {"code": class}, "location": [{"location": {"reference": ward}}]});
        assert_eq!(adt_trigger(&enc("in-progress", "IMP", "Location/a"), None), "A01");
        assert_eq!(adt_trigger(&enc("in-progress", "AMB", "Location/a"), None), "A04");
        assert_eq!(adt_trigger(&enc("in-progress", "IMP", "Location/b"), Some(&enc("in-progress", "IMP", "Location/a"))), "A02");
        assert_eq!(adt_trigger(&enc("finished", "IMP", "Location/a"), Some(&enc("in-progress", "IMP", "Location/a"))), "A03");
        assert_eq!(adt_trigger(&enc("in-progress", "IMP", "Location/a"), Some(&enc("in-progress", "IMP", "Location/a"))), "A08");
        assert_eq!(adt_trigger(&json!({"resourceType": "Patient"}), None), "A08");
    }
}
