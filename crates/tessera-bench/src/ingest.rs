//! `tessera bench ingest`: POST bundles with concurrent keep-alive clients.

use crate::files::{self, LoadedBundle};
use crate::http::{bearer, diagnostics, is_refusal, refusal, Base, FHIR_JSON};
use crate::IngestReport;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What every client shares: where and how to send, and whether the server has refused
/// the token (401/403) — the first refusal's message stops the run.
struct Target {
    uri: Uri,
    authorization: HeaderValue,
    refused: OnceLock<String>,
}

/// Running totals of one client (merged at the end).
#[derive(Debug, Default)]
struct Totals {
    bundles: usize,
    resources: u64,
    failed_bundles: usize,
    failed_entries: usize,
    first_failure: Option<String>,
    max_latency: Duration,
}

impl Totals {
    fn fail(&mut self, message: String) {
        self.first_failure.get_or_insert(message);
    }

    fn merge(&mut self, other: Totals) {
        self.bundles += other.bundles;
        self.resources += other.resources;
        self.failed_bundles += other.failed_bundles;
        self.failed_entries += other.failed_entries;
        self.max_latency = self.max_latency.max(other.max_latency);
        if let Some(f) = other.first_failure {
            self.fail(f);
        }
    }

    /// Sends one bundle and accounts for the answer. A 401/403 is not counted: it is
    /// recorded in `target.refused`, which ends the run.
    async fn send(&mut self, client: &HttpClient, target: &Target, bundle: &LoadedBundle) {
        let request = Request::post(target.uri.clone())
            .header(AUTHORIZATION, target.authorization.clone())
            .header(CONTENT_TYPE, FHIR_JSON)
            .header(ACCEPT, FHIR_JSON)
            .header("prefer", "return=minimal")
            .body(Full::new(bundle.body.clone()))
            .expect("valid request");
        let started = Instant::now();
        let answer = async {
            let response = client.request(request).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            anyhow::Ok((status, body))
        }
        .await;
        if let Ok((status, body)) = &answer {
            if is_refusal(*status) {
                let _ = target.refused.set(refusal(*status, &format!("POST {} ({})", target.uri, bundle.name), body).to_string());
                return;
            }
        }
        self.max_latency = self.max_latency.max(started.elapsed());
        self.bundles += 1;
        match answer {
            Err(e) => {
                self.failed_bundles += 1;
                self.fail(format!("{}: request failed: {e:#}", bundle.name));
            }
            Ok((status, body)) if status != StatusCode::OK => {
                self.failed_bundles += 1;
                self.fail(format!("{}: HTTP {status}: {}", bundle.name, diagnostics(&body)));
            }
            Ok((_, body)) if bundle.batch => {
                let failed = failed_entries(&body);
                self.resources += (bundle.entries - failed.len().min(bundle.entries)) as u64;
                self.failed_entries += failed.len();
                if let Some(first) = failed.into_iter().next() {
                    self.fail(format!("{}: {first}", bundle.name));
                }
            }
            Ok(_) => self.resources += bundle.entries as u64,
        }
    }
}

/// The failures in a batch-response Bundle: `entry i: status: diagnostics`.
fn failed_entries(body: &[u8]) -> Vec<String> {
    let Ok(bundle) = serde_json::from_slice::<serde_json::Value>(body) else {
        return vec!["unreadable batch response".into()];
    };
    let entries = bundle.get("entry").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .enumerate()
        .filter_map(|(i, e)| {
            let response = e.get("response")?;
            let status = response.get("status")?.as_str()?;
            if status.starts_with('2') {
                return None;
            }
            let outcome = response.get("outcome").map(|o| diagnostics(o.to_string().as_bytes())).unwrap_or_default();
            Some(format!("entry {i}: {status}: {outcome}"))
        })
        .collect()
}

pub async fn ingest(url: &str, token: &str, paths: &[PathBuf], clients: usize) -> anyhow::Result<IngestReport> {
    let base = Base::parse(url)?;
    let target = Arc::new(Target { uri: base.uri.clone(), authorization: bearer(token)?, refused: OnceLock::new() });
    let clients = clients.max(1);
    let files = files::discover(paths)?;
    anyhow::ensure!(!files.is_empty(), "no bundle files (.json, .json.gz, .json.bz2) found");
    let ordered = files.clone();
    let bundles = tokio::task::spawn_blocking(move || files::read_all(&ordered)).await??;
    let (first, rest): (Vec<_>, Vec<_>) = files.iter().zip(bundles).partition(|(path, _)| files::is_prerequisite(path));
    let first: Vec<LoadedBundle> = first.into_iter().map(|(_, b)| b).collect();
    let rest: Arc<Vec<LoadedBundle>> = Arc::new(rest.into_iter().map(|(_, b)| b).collect());

    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(clients).build_http();
    let started = Instant::now();
    let mut totals = Totals::default();
    for bundle in &first {
        if target.refused.get().is_some() {
            break;
        }
        totals.send(&client, &target, bundle).await;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (client, target, rest, next) = (client.clone(), target.clone(), rest.clone(), next.clone());
            tokio::spawn(async move {
                let mut totals = Totals::default();
                while target.refused.get().is_none() {
                    let Some(bundle) = rest.get(next.fetch_add(1, Ordering::Relaxed)) else { break };
                    totals.send(&client, &target, bundle).await;
                }
                totals
            })
        })
        .collect();
    for worker in workers {
        totals.merge(worker.await?);
    }
    if let Some(message) = target.refused.get() {
        anyhow::bail!("{message}");
    }
    Ok(IngestReport {
        clients,
        bundles: totals.bundles,
        resources: totals.resources,
        seconds: started.elapsed().as_secs_f64(),
        failed_bundles: totals.failed_bundles,
        failed_entries: totals.failed_entries,
        first_failure: totals.first_failure,
        max_latency: totals.max_latency,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_failed_batch_entries() {
        let body = br#"{"resourceType":"Bundle","type":"batch-response","entry":[
            {"response":{"status":"201 Created"}},
            {"response":{"status":"400 Bad Request","outcome":{"resourceType":"OperationOutcome","issue":[{"diagnostics":"bad"}]}}}]}"#;
        assert_eq!(failed_entries(body), ["entry 1: 400 Bad Request: bad"]);
    }
}
