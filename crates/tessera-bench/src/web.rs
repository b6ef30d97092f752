//! `tessera bench web`: the clinician's pages as a browser asks for them, with enforcement
//! and audit on. Signs a user in through the sign-in form (a real web session, cookie and
//! all), opens the patient's record (breaking the glass through the form if the record is
//! behind it), then times, one request after another on a keep-alive connection, the record
//! summary and the results trend of the patient's most frequent quantitative analyte. Each
//! page is rendered from engine calls through the `Gate` and audited, as in use.
//!
//! The patient is given by id, or found as the busiest of a folder of Synthea bundles (the
//! bundle with the most resources; its Patient's identifier resolved through the API).

use crate::http::{connect, Base};
use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct WebOptions {
    /// The server's address (`http://127.0.0.1:8080`).
    pub url: String,
    pub user: String,
    pub password: String,
    /// The patient's id; or
    pub patient: Option<String>,
    /// the busiest patient of these Synthea bundles, resolved with `token`.
    pub busiest_from: Option<PathBuf>,
    pub token: Option<String>,
    /// Timed requests per page.
    pub requests: usize,
}

/// Latency of one page.
#[derive(Debug, Clone)]
pub struct PageTiming {
    pub page: String,
    pub requests: usize,
    pub bytes: usize,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

/// The result.
#[derive(Debug, Clone)]
pub struct WebReport {
    pub patient: String,
    /// Resources in the patient's compartment (when the bundle is known).
    pub resources: Option<usize>,
    pub broke_glass: bool,
    pub pages: Vec<PageTiming>,
}

impl std::fmt::Display for WebReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "patient {}{}{}",
            self.patient,
            self.resources.map(|n| format!(" ({n} resources in its bundle)")).unwrap_or_default(),
            if self.broke_glass { "; the glass was broken through the form first" } else { "" }
        )?;
        for p in &self.pages {
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            writeln!(
                f,
                "  {:<40} {:>5} requests  {:>7} bytes  p50 {:>7.2} ms  p95 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms",
                p.page,
                p.requests,
                p.bytes,
                ms(p.p50),
                ms(p.p95),
                ms(p.p99),
                ms(p.max)
            )?;
        }
        Ok(())
    }
}

struct Client {
    base: Base,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    cookie: Option<String>,
}

struct Answer {
    status: StatusCode,
    set_cookie: Option<String>,
    body: Bytes,
}

impl Client {
    async fn send(&mut self, method: Method, path: &str, form: Option<String>, bearer: Option<&str>) -> anyhow::Result<Answer> {
        if self.sender.ready().await.is_err() {
            self.sender = connect(&self.base).await?;
        }
        let mut req = Request::builder().method(method).uri(path).header("host", &self.base.authority);
        if let Some(c) = &self.cookie {
            req = req.header("cookie", c);
        }
        if let Some(t) = bearer {
            req = req.header("authorization", crate::http::bearer(t)?);
        }
        let body = match form {
            Some(f) => {
                req = req.header("content-type", HeaderValue::from_static("application/x-www-form-urlencoded"));
                Bytes::from(f)
            }
            None => Bytes::new(),
        };
        let resp = self.sender.send_request(req.body(Full::new(body))?).await.with_context(|| format!("{path}"))?;
        let status = resp.status();
        let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let set_cookie = header("set-cookie");
        let body = resp.into_body().collect().await?.to_bytes();
        Ok(Answer { status, set_cookie, body })
    }

    async fn get(&mut self, path: &str) -> anyhow::Result<Answer> {
        self.send(Method::GET, path, None, None).await
    }
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The value of the first `name="csrf"` field of a page.
fn csrf(page: &str) -> Option<String> {
    Some(page.split("name=\"csrf\" value=\"").nth(1)?.split('"').next()?.to_string())
}

/// The busiest patient of a folder of Synthea bundles: the file with the most entries, its
/// Patient's identifiers.
fn busiest(dir: &std::path::Path) -> anyhow::Result<(usize, Vec<(String, String)>)> {
    let mut best: Option<(usize, PathBuf)> = None;
    for path in crate::files::discover(&[dir.to_path_buf()])? {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.contains("hospital") || name.contains("practitioner") {
            continue;
        }
        let len = std::fs::metadata(&path).map(|m| m.len() as usize).unwrap_or(0);
        if best.as_ref().is_none_or(|(l, _)| len > *l) {
            best = Some((len, path));
        }
    }
    let (_, path) = best.context("no bundles in the folder")?;
    let loaded = crate::files::read(&path)?;
    let bundle: serde_json::Value = serde_json::from_slice(&loaded.body)?;
    let entries = bundle["entry"].as_array().context("not a Bundle")?;
    let patient = entries.iter().find(|e| e["resource"]["resourceType"] == "Patient").context("no Patient in the bundle")?;
    let identifiers = patient["resource"]["identifier"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["system"].as_str()?.to_string(), i["value"].as_str()?.to_string())))
        .collect();
    Ok((entries.len(), identifiers))
}

fn timing(page: &str, mut samples: Vec<Duration>, bytes: usize) -> PageTiming {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    PageTiming { page: page.to_string(), requests: samples.len(), bytes, p50: at(0.50), p95: at(0.95), p99: at(0.99), max: *samples.last().unwrap_or(&Duration::ZERO) }
}

/// Runs the benchmark.
pub async fn run(options: WebOptions) -> anyhow::Result<WebReport> {
    anyhow::ensure!(options.requests >= 1, "--requests must be at least 1");
    let base = Base::parse(options.url.trim_end_matches('/'))?;
    let sender = connect(&base).await?;
    let mut c = Client { base, sender, cookie: None };
    let mut resources = None;
    let patient = match (&options.patient, &options.busiest_from) {
        (Some(p), _) => p.clone(),
        (None, Some(dir)) => {
            let token = options.token.as_deref().context("--busiest-from needs --token (a system token) to find the patient's id")?;
            let (n, identifiers) = busiest(dir)?;
            resources = Some(n);
            let mut found = None;
            for (system, value) in identifiers {
                let a = c.send(Method::GET, &format!("/fhir/Patient?identifier={}&_elements=id", enc(&format!("{system}|{value}"))), None, Some(token)).await?;
                let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap_or_default();
                if let Some(id) = v["entry"][0]["resource"]["id"].as_str() {
                    found = Some(id.to_string());
                    break;
                }
            }
            found.context("the busiest patient of the folder is not on the server: import the folder first")?
        }
        (None, None) => anyhow::bail!("name the patient (--patient ID) or a folder of Synthea bundles (--busiest-from DIR --token T)"),
    };
    // Sign in through the form.
    let form = format!("username={}&password={}&next=%2Fpatients%2Fmine", enc(&options.user), enc(&options.password));
    let a = c.send(Method::POST, "/signin", Some(form), None).await?;
    anyhow::ensure!(a.status == StatusCode::SEE_OTHER, "sign-in refused ({}): {}", a.status, String::from_utf8_lossy(&a.body).chars().take(300).collect::<String>());
    c.cookie = a.set_cookie.and_then(|v| v.split(';').next().map(str::to_string));
    anyhow::ensure!(c.cookie.is_some(), "no session cookie");
    // Open the record; break the glass if it is behind it.
    let record = format!("/patients/{}", enc(&patient));
    let mut page = c.get(&record).await?;
    let mut broke_glass = false;
    if page.status == StatusCode::FORBIDDEN || String::from_utf8_lossy(&page.body).contains("break the glass to view") {
        let text = String::from_utf8_lossy(&page.body).into_owned();
        let token = csrf(&text).context("no CSRF token on the record page")?;
        let form = format!("csrf={}&back={}&reason=CLINTRL&text={}", enc(&token), enc(&record), enc("Benchmark of the record pages"));
        let a = c.send(Method::POST, &format!("{record}/break-glass"), Some(form), None).await?;
        anyhow::ensure!(a.status == StatusCode::SEE_OTHER, "break-glass refused ({}): {}", a.status, String::from_utf8_lossy(&a.body).chars().take(300).collect::<String>());
        broke_glass = true;
        page = c.get(&record).await?;
    }
    anyhow::ensure!(page.status == StatusCode::OK, "the record does not open ({})", page.status);
    // The trend of the most frequent analyte: the first trend link of the results page.
    let results = c.get(&format!("{record}/results")).await?;
    let results_text = String::from_utf8_lossy(&results.body).into_owned();
    let trend = results_text
        .split("href=\"")
        .skip(1)
        .filter_map(|s| s.split('"').next())
        .find(|h| h.contains("/results/trend?code="))
        .map(|h| h.replace("&amp;", "&"));
    let mut pages = vec![("record summary".to_string(), record.clone())];
    if let Some(t) = trend {
        pages.push(("results trend".to_string(), t));
    }
    pages.push(("results".to_string(), format!("{record}/results")));
    let mut out = Vec::new();
    for (name, path) in pages {
        for _ in 0..5.min(options.requests) {
            let a = c.get(&path).await?;
            anyhow::ensure!(a.status == StatusCode::OK, "{path}: {}", a.status);
        }
        let mut samples = Vec::with_capacity(options.requests);
        let mut bytes = 0;
        for _ in 0..options.requests {
            let started = Instant::now();
            let a = c.get(&path).await?;
            samples.push(started.elapsed());
            anyhow::ensure!(a.status == StatusCode::OK, "{path}: {}", a.status);
            bytes = a.body.len();
        }
        let label = if name == "results trend" { format!("{name} ({})", path.split("code=").nth(1).unwrap_or("")) } else { name };
        out.push(timing(&label, samples, bytes));
    }
    Ok(WebReport { patient, resources, broke_glass, pages: out })
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_the_csrf_token() {
        assert_eq!(super::csrf(r#"<input type="hidden" name="csrf" value="abc-123">"#).as_deref(), Some("abc-123"));
        assert_eq!(super::csrf("<p>none</p>"), None);
    }
}
