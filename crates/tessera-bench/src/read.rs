//! `tessera bench read`: read resources by id over concurrent keep-alive connections.

use crate::http::{bearer, connect, diagnostics, is_refusal, refusal, Base, FHIR_JSON};
use crate::ReadReport;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, HOST};
use hyper::{Request, StatusCode};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What one connection measured.
#[derive(Debug, Default)]
struct ConnectionStats {
    /// Latency of each successful request, in microseconds.
    latencies: Vec<u32>,
    errors: u64,
    first_error: Option<String>,
}

impl ConnectionStats {
    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

fn get(base: &Base, authorization: &HeaderValue, path_and_query: &str) -> Request<Empty<Bytes>> {
    Request::get(path_and_query)
        .header(HOST, &base.authority)
        .header(AUTHORIZATION, authorization.clone())
        .header(ACCEPT, FHIR_JSON)
        .body(Empty::new())
        .expect("valid request")
}

/// Sends a request and reads the whole response; returns the status and, when `keep` is
/// set or the status is not `200 OK`, the body (otherwise the body frames are dropped as
/// they arrive).
async fn exchange(sender: &mut SendRequest<Empty<Bytes>>, request: Request<Empty<Bytes>>, keep: bool) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    if keep || status != StatusCode::OK {
        return Ok((status, body.collect().await?.to_bytes()));
    }
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok((status, Bytes::new()))
}

/// Ids of up to 1000 resources of the type, from a search.
async fn discover_ids(base: &Base, authorization: &HeaderValue, resource_type: &str) -> anyhow::Result<Vec<String>> {
    let mut sender = connect(base).await?;
    let search = format!("{}/{resource_type}?_count=1000", base.path);
    let (status, body) = exchange(&mut sender, get(base, authorization, &search), true).await?;
    if is_refusal(status) {
        return Err(refusal(status, &format!("GET {search}"), &body));
    }
    anyhow::ensure!(status == StatusCode::OK, "searching {resource_type} failed: HTTP {status}: {}", diagnostics(&body));
    let bundle: serde_json::Value = serde_json::from_slice(&body)?;
    let entries = bundle.get("entry").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default();
    Ok(entries.iter().filter_map(|e| Some(e.get("resource")?.get("id")?.as_str()?.to_string())).collect())
}

pub async fn read(url: &str, token: &str, resource_type: &str, connections: usize, duration: Duration) -> anyhow::Result<ReadReport> {
    let base = Arc::new(Base::parse(url)?);
    let authorization = bearer(token)?;
    let connections = connections.max(1);
    let ids = discover_ids(&base, &authorization, resource_type).await?;
    anyhow::ensure!(!ids.is_empty(), "the server has no {resource_type} resources to read; load some data first");
    let paths: Arc<Vec<String>> = Arc::new(ids.iter().map(|id| format!("{}/{resource_type}/{id}", base.path)).collect());

    let started = Instant::now();
    let deadline = started + duration;
    // The first 401/403 (say, the token expired during the run) stops every connection.
    let refused: Arc<OnceLock<String>> = Arc::new(OnceLock::new());
    let tasks: Vec<_> = (0..connections)
        .map(|task| {
            let (base, paths, authorization, refused) = (base.clone(), paths.clone(), authorization.clone(), refused.clone());
            // Each connection walks the ids round-robin from its own starting point.
            let mut next = task * paths.len() / connections;
            tokio::spawn(async move {
                let mut stats = ConnectionStats { latencies: Vec::with_capacity(1 << 16), ..ConnectionStats::default() };
                let mut sender = None;
                while Instant::now() < deadline && refused.get().is_none() {
                    let s = match &mut sender {
                        Some(s) => s,
                        None => match connect(&base).await {
                            Ok(s) => sender.insert(s),
                            Err(e) => {
                                stats.error(format!("{e:#}"));
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        },
                    };
                    let path = &paths[next % paths.len()];
                    next += 1;
                    let sent = Instant::now();
                    match exchange(s, get(&base, &authorization, path), false).await {
                        Ok((StatusCode::OK, _)) => {
                            stats.latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
                        }
                        Ok((status, body)) if is_refusal(status) => {
                            let _ = refused.set(refusal(status, &format!("GET {path}"), &body).to_string());
                        }
                        Ok((status, body)) => stats.error(format!("GET {path}: HTTP {status}: {}", diagnostics(&body))),
                        Err(e) => {
                            stats.error(format!("GET {path}: {e:#}"));
                            sender = None;
                        }
                    }
                }
                stats
            })
        })
        .collect();

    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let stats = task.await?;
        latencies.extend(stats.latencies);
        errors += stats.errors;
        first_error = first_error.or(stats.first_error);
    }
    if let Some(message) = refused.get() {
        anyhow::bail!("{message}");
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let micros = |p: f64| Duration::from_micros(percentile(&latencies, p) as u64);
    Ok(ReadReport {
        resource_type: resource_type.to_string(),
        connections,
        ids: ids.len(),
        requests: latencies.len() as u64,
        errors,
        first_error,
        seconds,
        p50: micros(0.50),
        p95: micros(0.95),
        p99: micros(0.99),
        max: micros(1.0),
    })
}

/// The value at quantile `q` (0–1] of sorted samples (nearest rank); 0 when empty.
pub(crate) fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::percentile;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&samples, 0.50), 50);
        assert_eq!(percentile(&samples, 0.95), 95);
        assert_eq!(percentile(&samples, 0.99), 99);
        assert_eq!(percentile(&samples, 1.0), 100);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }
}
