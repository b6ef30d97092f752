//! Load generators behind `tessera bench`, run against a live server over HTTP.
//!
//! * [`ingest`] posts FHIR Bundles (`.json`, `.json.gz`, `.json.bz2`; folders walked
//!   recursively) to the FHIR base URL with `Prefer: return=minimal`. All files are read
//!   and decompressed into memory **before** the clock starts, so the figure is the
//!   server's. Bundles whose file name contains `hospital` or `practitioner` are sent
//!   first, one at a time (the others reference what they create); the rest go out over
//!   `clients` concurrent keep-alive clients (hyper's pooled client), each taking the next
//!   unsent bundle. Throughput counts the entries of accepted bundles.
//! * [`read`] discovers up to 1000 ids with a search, then runs `connections` tasks, each
//!   owning one HTTP/1.1 keep-alive connection (no pool, no locks on the hot path), reading
//!   `Type/id` round-robin until the time is up. Every successful request's latency is
//!   kept, so percentiles are exact.
//! * [`soak`] runs a mixed workload that grows the database as it goes (transactions
//!   creating patients with encounters and observations; reads; searches by name,
//!   identifier and date; `_summary=count`; `_total=accurate`; a chain; `$everything`) for
//!   a given time, printing p50/p99 per operation kind and the server's RSS at every
//!   interval, then a summary table.
//!
//! Both send `Authorization: Bearer <token>` (get a token with `tessera token --system`);
//! a 401 or 403 answer ends the run with the server's OperationOutcome diagnostics rather
//! than being counted as an ordinary failure.
//!
//! * [`web`] (`tessera bench web`) signs a user in through the web application's form and
//!   times the record summary, results and results-trend pages of one patient (the busiest
//!   of a Synthea folder), with enforcement and audit on.
//!
//! The client side is kept lean because it usually shares the machine with the server.

mod empi;
mod files;
mod http;
mod ingest;
mod mllp;
mod read;
mod soak;
mod web;

pub use empi::{run as empi, EmpiOptions, EmpiReport};
pub use mllp::{message as mllp_message, run as mllp, MllpKind, MllpOptions, MllpReport};
pub use web::{run as web, PageTiming, WebOptions, WebReport};
pub use soak::{header as soak_header, rss_kib, IntervalRow, KindInterval, KindSummary, Op as SoakOp, SoakOptions, SoakReport};

use std::path::PathBuf;
use std::time::Duration;

/// The result of an ingest run.
#[derive(Debug, Clone)]
pub struct IngestReport {
    pub clients: usize,
    /// Bundles sent.
    pub bundles: usize,
    /// Resources (bundle entries) the server accepted.
    pub resources: u64,
    /// Wall time from the first request to the last response.
    pub seconds: f64,
    /// Bundles not answered `200 OK`.
    pub failed_bundles: usize,
    /// Failed entries inside batch bundles that were answered `200 OK`.
    pub failed_entries: usize,
    /// The first failure, with the server's OperationOutcome diagnostics.
    pub first_failure: Option<String>,
    /// The slowest bundle's round trip.
    pub max_latency: Duration,
}

impl IngestReport {
    pub fn resources_per_second(&self) -> f64 {
        rate(self.resources, self.seconds)
    }
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "ingest: {} bundles, {} resources, {} clients", self.bundles, self.resources, self.clients)?;
        writeln!(f, "  time:          {:.2} s", self.seconds)?;
        writeln!(f, "  throughput:    {:.0} resources/s", self.resources_per_second())?;
        writeln!(f, "  max latency:   {:.1} ms", ms(self.max_latency))?;
        write!(f, "  failures:      {} bundles, {} batch entries", self.failed_bundles, self.failed_entries)?;
        if let Some(first) = &self.first_failure {
            write!(f, "\n  first failure: {first}")?;
        }
        Ok(())
    }
}

/// The result of a read run.
#[derive(Debug, Clone)]
pub struct ReadReport {
    pub resource_type: String,
    pub connections: usize,
    /// Distinct ids read (round-robin).
    pub ids: usize,
    /// Successful (`200 OK`) reads.
    pub requests: u64,
    /// Failed reads and connection failures.
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl ReadReport {
    pub fn requests_per_second(&self) -> f64 {
        rate(self.requests, self.seconds)
    }
}

impl std::fmt::Display for ReadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "read {}/[id] ({} ids), {} connections", self.resource_type, self.ids, self.connections)?;
        writeln!(f, "  requests:    {} in {:.2} s", self.requests, self.seconds)?;
        writeln!(f, "  throughput:  {:.0} req/s", self.requests_per_second())?;
        writeln!(
            f,
            "  latency:     p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(self.p50),
            ms(self.p95),
            ms(self.p99),
            ms(self.max)
        )?;
        write!(f, "  errors:      {}", self.errors)?;
        if let Some(first) = &self.first_error {
            write!(f, " (first: {first})")?;
        }
        Ok(())
    }
}

fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Posts the bundles in `paths` to the FHIR base `url` with `clients` concurrent clients,
/// authenticating with the access `token` (`Authorization: Bearer …`). Fails, with the
/// server's diagnostics, as soon as the server refuses the token (401/403).
pub async fn ingest(url: &str, token: &str, paths: &[PathBuf], clients: usize) -> anyhow::Result<IngestReport> {
    ingest::ingest(url, token, paths, clients).await
}

/// Reads `resource_type` resources by id from the FHIR base `url` over `connections`
/// keep-alive connections for `duration`, authenticating with the access `token`. Fails,
/// with the server's diagnostics, as soon as the server refuses the token (401/403).
pub async fn read(url: &str, token: &str, resource_type: &str, connections: usize, duration: Duration) -> anyhow::Result<ReadReport> {
    read::read(url, token, resource_type, connections, duration).await
}

/// Runs the soak workload against the FHIR base in `options.url` (see [`SoakOptions`]);
/// progress lines go to `options.progress`. Fails, with the server's diagnostics, as soon
/// as the server refuses the token (401/403).
pub async fn soak(options: SoakOptions) -> anyhow::Result<SoakReport> {
    soak::soak(options).await
}
