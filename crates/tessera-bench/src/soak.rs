//! `tessera bench soak`: a mixed workload that grows the database while it runs, reporting
//! latency per operation kind and the server's resident memory over time.
//!
//! Each client owns one HTTP/1.1 keep-alive connection and loops, picking an operation by
//! weight ([`Op::weight`]): transactions that create a patient with encounters and
//! observations (so the data grows for as long as the run lasts), reads by id, searches by
//! name, identifier and date, `Patient?_summary=count`, `_total=accurate` with a filter,
//! a chain, and `$everything` of a recently created patient. Every `interval` one line is
//! printed: elapsed time, requests and errors over the interval, p50/p99 per operation kind
//! over the interval, what was created so far and the server's RSS (`VmRSS` of
//! `/proc/PID/status`, when the server's pid is given). At the end, a summary table:
//! percentiles over the whole run and the p99 of the first and last intervals.

use crate::http::{bearer, connect, diagnostics, is_refusal, refusal, Base, FHIR_JSON};
use crate::read::percentile;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The identifier system of the patients the soak creates.
pub const IDENTIFIER_SYSTEM: &str = "urn:tessera:soak";

/// What `tessera bench soak` runs.
#[derive(Clone)]
pub struct SoakOptions {
    /// FHIR base URL.
    pub url: String,
    pub token: String,
    pub duration: Duration,
    /// Concurrent clients (one connection each).
    pub clients: usize,
    /// How often a line is printed.
    pub interval: Duration,
    /// The server's process id, for its RSS.
    pub pid: Option<u32>,
    /// Where each progress line goes (`println!` for the command line).
    pub progress: Option<Progress>,
}

/// Receives each progress line.
pub type Progress = Arc<dyn Fn(&str) + Send + Sync>;

/// The kinds of request the soak sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A transaction: one Patient, two Encounters, eight Observations.
    Create,
    /// `Patient/[id]` or `Observation/[id]` of a created resource.
    Read,
    /// `Patient?name=[family]&_count=10`.
    Name,
    /// `Patient?identifier=urn:tessera:soak|[value]`.
    Identifier,
    /// `Observation?code=…8867-4&date=ge[a week ago]&_count=20`.
    Date,
    /// `Patient?_summary=count`.
    Count,
    /// `Observation?code=…8867-4&_total=accurate&_count=10`.
    Total,
    /// `Observation?patient.identifier=urn:tessera:soak|[value]&_count=20`.
    Chain,
    /// `Patient/[id]/$everything` of one of the 50 most recently created patients.
    Everything,
}

impl Op {
    pub const ALL: [Op; 9] = [Op::Create, Op::Read, Op::Name, Op::Identifier, Op::Date, Op::Count, Op::Total, Op::Chain, Op::Everything];

    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Read => "read",
            Op::Name => "name",
            Op::Identifier => "ident",
            Op::Date => "date",
            Op::Count => "count",
            Op::Total => "total",
            Op::Chain => "chain",
            Op::Everything => "everything",
        }
    }

    /// The request, as a reader of the table sees it.
    pub fn describe(self) -> &'static str {
        match self {
            Op::Create => "POST transaction: Patient + 2 Encounter + 8 Observation",
            Op::Read => "GET Patient/[id] or Observation/[id]",
            Op::Name => "GET Patient?name=[family]&_count=10",
            Op::Identifier => "GET Patient?identifier=urn:tessera:soak|[value]",
            Op::Date => "GET Observation?code=http://loinc.org|8867-4&date=ge[7 days ago]&_count=20",
            Op::Count => "GET Patient?_summary=count",
            Op::Total => "GET Observation?code=http://loinc.org|8867-4&_total=accurate&_count=10",
            Op::Chain => "GET Observation?patient.identifier=urn:tessera:soak|[value]&_count=20",
            Op::Everything => "GET Patient/[recent id]/$everything",
        }
    }

    /// Relative frequency (out of 100).
    pub fn weight(self) -> u32 {
        match self {
            Op::Create => 10,
            Op::Read => 25,
            Op::Name => 10,
            Op::Identifier => 10,
            Op::Date => 10,
            Op::Count => 7,
            Op::Total => 7,
            Op::Chain => 11,
            Op::Everything => 10,
        }
    }

    fn index(self) -> usize {
        Op::ALL.iter().position(|&o| o == self).expect("listed")
    }
}

const KINDS: usize = Op::ALL.len();

/// p50 and p99 of one operation kind over one interval.
#[derive(Debug, Clone, Copy, Default)]
pub struct KindInterval {
    pub requests: u64,
    pub errors: u64,
    pub p50: Duration,
    pub p99: Duration,
}

/// One printed line.
#[derive(Debug, Clone)]
pub struct IntervalRow {
    /// Time since the start, at the end of the interval.
    pub elapsed: Duration,
    pub seconds: f64,
    pub requests: u64,
    pub errors: u64,
    pub too_costly: u64,
    /// Created so far (patients, resources).
    pub patients: u64,
    pub resources: u64,
    /// Server RSS in KiB.
    pub rss_kib: Option<u64>,
    pub kinds: [KindInterval; KINDS],
}

/// Whole-run figures of one operation kind.
#[derive(Debug, Clone, Default)]
pub struct KindSummary {
    pub requests: u64,
    pub errors: u64,
    pub too_costly: u64,
    pub p50: Duration,
    pub p95: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub first_error: Option<String>,
}

/// The result of a soak run.
#[derive(Debug, Clone)]
pub struct SoakReport {
    pub clients: usize,
    pub seconds: f64,
    pub intervals: Vec<IntervalRow>,
    pub kinds: Vec<(Op, KindSummary)>,
    pub patients: u64,
    pub resources: u64,
    /// Whether the run was stopped early (Ctrl-C).
    pub interrupted: bool,
}

impl SoakReport {
    pub fn requests(&self) -> u64 {
        self.kinds.iter().map(|(_, k)| k.requests).sum()
    }

    pub fn errors(&self) -> u64 {
        self.kinds.iter().map(|(_, k)| k.errors).sum()
    }

    /// The first interval that saw requests of `op` and the last one.
    fn first_last(&self, op: Op) -> Option<(&KindInterval, &KindInterval)> {
        let i = op.index();
        let mut seen = self.intervals.iter().map(|r| &r.kinds[i]).filter(|k| k.requests > 0);
        let first = seen.next()?;
        Some((first, seen.next_back().unwrap_or(first)))
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: Option<u64>) -> String {
    kib.map(|k| format!("{:.0} MB", k as f64 / 1024.0)).unwrap_or_else(|| "-".into())
}

impl std::fmt::Display for SoakReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let minutes = self.seconds / 60.0;
        writeln!(
            f,
            "soak: {:.1} min{}, {} clients, {} requests ({:.0}/s), {} errors; created {} patients ({} resources)",
            minutes,
            if self.interrupted { " (interrupted)" } else { "" },
            self.clients,
            self.requests(),
            crate::rate(self.requests(), self.seconds),
            self.errors(),
            self.patients,
            self.resources
        )?;
        writeln!(
            f,
            "  {:<10} {:>9} {:>6} {:>8} {:>8} {:>8} {:>9} | {:>9} {:>9} {:>6}",
            "op", "requests", "errors", "p50 ms", "p95 ms", "p99 ms", "max ms", "p99 first", "p99 last", "last/first"
        )?;
        for (op, k) in &self.kinds {
            let (first, last) = match self.first_last(*op) {
                Some((a, b)) => (format!("{:.1}", ms(a.p99)), format!("{:.1}", ms(b.p99))),
                None => ("-".into(), "-".into()),
            };
            let ratio = self.first_last(*op).filter(|(a, _)| !a.p99.is_zero()).map(|(a, b)| format!("{:.2}×", b.p99.as_secs_f64() / a.p99.as_secs_f64()));
            writeln!(
                f,
                "  {:<10} {:>9} {:>6} {:>8.1} {:>8.1} {:>8.1} {:>9.1} | {:>9} {:>9} {:>6}",
                op.name(),
                k.requests,
                k.errors + k.too_costly,
                ms(k.p50),
                ms(k.p95),
                ms(k.p99),
                ms(k.max),
                first,
                last,
                ratio.unwrap_or_else(|| "-".into())
            )?;
        }
        let rss: Vec<u64> = self.intervals.iter().filter_map(|r| r.rss_kib).collect();
        if let (Some(first), Some(last)) = (rss.first(), rss.last()) {
            let max = rss.iter().max().copied();
            writeln!(f, "  server RSS: first interval {}, last {}, max {}", mib(Some(*first)), mib(Some(*last)), mib(max))?;
        }
        let mut errors = self.kinds.iter().filter_map(|(op, k)| Some((op, k.first_error.as_ref()?))).peekable();
        if errors.peek().is_some() {
            writeln!(f, "  first error per kind:")?;
            for (op, e) in errors {
                writeln!(f, "    {}: {e}", op.name())?;
            }
        }
        write!(f, "  requests: ")?;
        for (i, op) in Op::ALL.iter().enumerate() {
            write!(f, "{}{} = {}", if i > 0 { "; " } else { "" }, op.name(), op.describe())?;
        }
        Ok(())
    }
}

/// The header of the progress lines.
pub fn header() -> String {
    let mut s = format!("{:>6} {:>7} {:>5} {:>8} {:>8} {:>7} |", "time", "req/s", "err", "patients", "res", "RSS");
    for op in Op::ALL {
        let _ = write!(s, " {:>11}", op.name());
    }
    s.push_str("   (p50/p99 ms per interval)");
    s
}

impl IntervalRow {
    /// The progress line.
    pub fn line(&self) -> String {
        let secs = self.elapsed.as_secs();
        let mut s = format!(
            "{:>3}:{:02} {:>7.0} {:>5} {:>8} {:>8} {:>7} |",
            secs / 60,
            secs % 60,
            crate::rate(self.requests, self.seconds),
            self.errors + self.too_costly,
            self.patients,
            self.resources,
            mib(self.rss_kib)
        );
        for k in &self.kinds {
            if k.requests == 0 {
                let _ = write!(s, " {:>11}", "-");
            } else {
                let _ = write!(s, " {:>11}", format!("{}/{}", short(k.p50), short(k.p99)));
            }
        }
        s
    }
}

/// A latency in ms, compact: `0.8`, `12`, `1234`.
fn short(d: Duration) -> String {
    let v = ms(d);
    if v < 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// The server's resident set size in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A small, fast PRNG (xorshift64*); the workload needs no more.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (((self.next() >> 32) * n as u64) >> 32) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    /// A random UUID (version 4 layout).
    fn uuid(&mut self) -> String {
        let (a, b) = (self.next(), self.next());
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | (b >> 48) & 0x3fff,
            b & 0xffff_ffff_ffff
        )
    }
}

const FAMILIES: [&str; 40] = [
    "Abbott", "Baker", "Carter", "Dawson", "Ellis", "Fletcher", "Graham", "Hughes", "Irving", "Jensen", "Keller", "Lawson", "Morgan", "Nash", "Owens",
    "Porter", "Quinn", "Reyes", "Sutton", "Turner", "Underwood", "Vaughn", "Walsh", "Young", "Zimmer", "Barker", "Cole", "Dunn", "Fox", "Grant", "Hale",
    "Kerr", "Lowe", "Marsh", "Noble", "Page", "Rowe", "Shaw", "Todd", "Wade",
];
const GIVEN: [&str; 20] =
    ["Ada", "Ben", "Cara", "Dev", "Eve", "Finn", "Gia", "Hugo", "Ida", "Jon", "Kai", "Lea", "Max", "Nia", "Oli", "Pia", "Raj", "Sam", "Tia", "Uma"];

/// The vital signs each encounter records: LOINC code, display, unit, typical value.
const VITALS: [(&str, &str, &str, f64); 4] =
    [("8867-4", "Heart rate", "/min", 72.0), ("29463-7", "Body weight", "kg", 75.0), ("8302-2", "Body height", "cm", 170.0), ("9279-1", "Respiratory rate", "/min", 15.0)];

/// A patient the soak created.
#[derive(Debug, Clone)]
struct Created {
    id: String,
    identifier: String,
    family: &'static str,
    observations: Vec<String>,
}

/// The created patients the other operations pick from: the most recent `CAP` (a ring, so
/// the load generator's own memory stays flat).
struct Pool {
    ring: Vec<Created>,
    next: usize,
}

const POOL_CAP: usize = 20_000;

impl Pool {
    fn push(&mut self, c: Created) {
        if self.ring.len() < POOL_CAP {
            self.ring.push(c);
        } else {
            self.ring[self.next] = c;
        }
        self.next = (self.next + 1) % POOL_CAP;
    }

    /// Any of them.
    fn any(&self, rng: &mut Rng) -> Option<Created> {
        (!self.ring.is_empty()).then(|| self.ring[rng.below(self.ring.len())].clone())
    }

    /// One of the `n` most recent.
    fn recent(&self, rng: &mut Rng, n: usize) -> Option<Created> {
        let len = self.ring.len();
        if len == 0 {
            return None;
        }
        let back = 1 + rng.below(n.min(len));
        // Until the ring is full, the most recent is the last; then the one before `next`.
        let at = if len < POOL_CAP { len - back } else { (self.next + POOL_CAP - back) % POOL_CAP };
        Some(self.ring[at].clone())
    }
}

/// Latencies and errors per kind, since the last interval and since the start.
#[derive(Default)]
struct Samples {
    interval: [Vec<u32>; KINDS],
    interval_errors: [u64; KINDS],
    interval_too_costly: [u64; KINDS],
    all: [Vec<u32>; KINDS],
    errors: [u64; KINDS],
    too_costly: [u64; KINDS],
    first_error: [Option<String>; KINDS],
}

struct Shared {
    base: Base,
    authorization: HeaderValue,
    samples: Mutex<Samples>,
    pool: Mutex<Pool>,
    patients: AtomicU64,
    resources: AtomicU64,
    serial: AtomicU64,
    /// The run's tag, in every identifier it creates.
    run: String,
    stop: AtomicBool,
    /// The first 401/403: ends the run.
    refused: OnceLock<String>,
}

impl Shared {
    fn record(&self, op: Op, outcome: Outcome, latency: Duration) {
        let i = op.index();
        let mut s = self.samples.lock().expect("not poisoned");
        match outcome {
            Outcome::Ok => {
                let us = latency.as_micros().min(u32::MAX as u128) as u32;
                s.interval[i].push(us);
                s.all[i].push(us);
            }
            Outcome::TooCostly(message) => {
                s.interval_too_costly[i] += 1;
                s.too_costly[i] += 1;
                s.first_error[i].get_or_insert(message);
            }
            Outcome::Error(message) => {
                s.interval_errors[i] += 1;
                s.errors[i] += 1;
                s.first_error[i].get_or_insert(message);
            }
        }
    }
}

enum Outcome {
    Ok,
    /// A search refused as too costly (400/422 with issue code `too-costly`): a 4xx a server
    /// may answer to any search, counted apart from errors.
    TooCostly(String),
    Error(String),
}

/// Today minus `days`, as a FHIR date; and a dateTime `seconds` before now.
fn date_days_ago(days: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let (y, m, d) = civil((now / 86_400).saturating_sub(days) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

fn datetime_seconds_ago(seconds: u64) -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let t = now.saturating_sub(seconds);
    let (y, m, d) = civil((t / 86_400) as i64);
    let s = t % 86_400;
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", s / 3600, s / 60 % 60, s % 60)
}

/// Days since 1970-01-01 → (year, month, day) (H. Hinnant's `civil_from_days`).
fn civil(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A valid NHS number for a soak identifier (`run-n`): distinct for the patients of one
/// run, so that every created patient is a new person to the patient index.
fn nhs_number(identifier: &str) -> String {
    let (run, n) = identifier.rsplit_once('-').unwrap_or((identifier, "0"));
    let base = run.bytes().fold(1_469_598_103_934_665_603u64, |h, b| (h ^ b as u64).wrapping_mul(1_099_511_628_211)) % 400_000_000;
    let mut candidate = 100_000_000 + base + n.parse::<u64>().unwrap_or(0) * 3;
    loop {
        let digits: Vec<u8> = format!("{:09}", candidate % 1_000_000_000).bytes().map(|b| b - b'0').collect();
        let nine: [u8; 9] = digits.try_into().expect("nine digits");
        if let Some(check) = tessera_empi::nhs::check_digit(&nine) {
            return format!("{}{check}", nine.iter().map(|d| char::from(b'0' + d)).collect::<String>());
        }
        candidate += 1;
    }
}

/// The transaction that creates one patient: the Patient, two Encounters and four vital
/// signs per encounter, dated within the last year. Returns the body and the patient's
/// identifier value and family name.
fn patient_bundle(rng: &mut Rng, identifier: &str) -> (String, &'static str) {
    let family = *rng.pick(&FAMILIES);
    let nhs = nhs_number(identifier);
    let given = *rng.pick(&GIVEN);
    let patient = rng.uuid();
    let birth = date_days_ago(365 * 20 + rng.below(365 * 60) as u64);
    let mut entries = vec![serde_json::json!({
        "fullUrl": format!("urn:uuid:{patient}"),
        "resource": {
            "resourceType": "Patient",
            "identifier": [{"system": IDENTIFIER_SYSTEM, "value": identifier}, {"system": tessera_empi::nhs::SYSTEM, "value": nhs}],
            "name": [{"family": family, "given": [given]}],
            "gender": if rng.below(2) == 0 { "female" } else { "male" },
            "birthDate": birth,
        },
        "request": {"method": "POST", "url": "Patient"},
    })];
    for _ in 0..2 {
        let encounter = rng.uuid();
        let ago = rng.below(365 * 86_400) as u64;
        entries.push(serde_json::json!({
            "fullUrl": format!("urn:uuid:{encounter}"),
            "resource": {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": format!("urn:uuid:{patient}")},
                "period": {"start": datetime_seconds_ago(ago + 1800), "end": datetime_seconds_ago(ago)},
            },
            "request": {"method": "POST", "url": "Encounter"},
        }));
        for (code, display, unit, typical) in VITALS {
            let value = (typical * (0.8 + 0.4 * rng.below(1000) as f64 / 1000.0) * 10.0).round() / 10.0;
            entries.push(serde_json::json!({
                "fullUrl": format!("urn:uuid:{}", rng.uuid()),
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
                    "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
                    "subject": {"reference": format!("urn:uuid:{patient}")},
                    "encounter": {"reference": format!("urn:uuid:{encounter}")},
                    "effectiveDateTime": datetime_seconds_ago(ago + 900),
                    "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                },
                "request": {"method": "POST", "url": "Observation"},
            }));
        }
    }
    let bundle = serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    (bundle.to_string(), family)
}

/// Resources (and their ids) the server reports created in a transaction-response:
/// `response.location` = `Type/id/_history/n`.
fn created_locations(body: &[u8]) -> Vec<(String, String)> {
    let Ok(bundle) = serde_json::from_slice::<serde_json::Value>(body) else { return Vec::new() };
    let entries = bundle.get("entry").and_then(|e| e.as_array()).map(Vec::as_slice).unwrap_or_default();
    entries
        .iter()
        .filter_map(|e| {
            let location = e.get("response")?.get("location")?.as_str()?;
            let location = location.find("/_history").map_or(location, |end| &location[..end]);
            let mut parts = location.rsplit('/');
            let id = parts.next()?;
            Some((parts.next()?.to_string(), id.to_string()))
        })
        .collect()
}

/// Whether a 4xx body is an OperationOutcome with issue code `too-costly`.
fn is_too_costly(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).ok().is_some_and(|v| {
        v.get("issue").and_then(|i| i.as_array()).is_some_and(|issues| issues.iter().any(|i| i.get("code").and_then(|c| c.as_str()) == Some("too-costly")))
    })
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

type Sender = SendRequest<Full<Bytes>>;

/// Sends one request and reads the whole answer.
async fn exchange(shared: &Shared, sender: &mut Sender, method: Method, path: &str, body: Option<String>) -> anyhow::Result<(StatusCode, Bytes)> {
    let mut request = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, &shared.base.authority)
        .header(AUTHORIZATION, shared.authorization.clone())
        .header(ACCEPT, FHIR_JSON);
    let body = match body {
        Some(b) => {
            request = request.header(CONTENT_TYPE, FHIR_JSON).header("prefer", "return=minimal");
            Full::new(Bytes::from(b))
        }
        None => Full::new(Bytes::new()),
    };
    let request = request.body(body)?;
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// How long one request may take before it counts as an error (and the connection is
/// replaced).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One client: picks operations until told to stop.
async fn client(shared: Arc<Shared>, seed: u64) {
    let mut rng = Rng::new(seed);
    let total_weight: u32 = Op::ALL.iter().map(|o| o.weight()).sum();
    let mut sender: Option<Sender> = None;
    while !shared.stop.load(Ordering::Relaxed) && shared.refused.get().is_none() {
        let s = match &mut sender {
            Some(s) => s,
            None => match connect::<Full<Bytes>>(&shared.base).await {
                Ok(s) => sender.insert(s),
                Err(e) => {
                    shared.record(Op::Read, Outcome::Error(format!("{e:#}")), Duration::ZERO);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let picked = {
            let pool = shared.pool.lock().expect("not poisoned");
            let mut roll = rng.below(total_weight as usize) as u32;
            let mut op = Op::Create;
            for o in Op::ALL {
                if roll < o.weight() {
                    op = o;
                    break;
                }
                roll -= o.weight();
            }
            // Until something is created, every client creates.
            let chosen = if pool.ring.is_empty() { Op::Create } else { op };
            let target = match chosen {
                Op::Everything => pool.recent(&mut rng, 50),
                _ => pool.any(&mut rng),
            };
            (chosen, target)
        };
        let (op, target) = picked;
        let base = &shared.base.path;
        let (method, path, body, identifier) = match (op, &target) {
            (Op::Create, _) => {
                let n = shared.serial.fetch_add(1, Ordering::Relaxed);
                let identifier = format!("{}-{n}", shared.run);
                let (body, family) = patient_bundle(&mut rng, &identifier);
                (Method::POST, base.clone(), Some(body), Some((identifier, family)))
            }
            (_, None) => continue,
            (Op::Read, Some(t)) => {
                let which = rng.below(t.observations.len() + 1);
                let path = match t.observations.get(which) {
                    Some(o) => format!("{base}/Observation/{o}"),
                    None => format!("{base}/Patient/{}", t.id),
                };
                (Method::GET, path, None, None)
            }
            (Op::Name, Some(t)) => (Method::GET, format!("{base}/Patient?name={}&_count=10", t.family), None, None),
            (Op::Identifier, Some(t)) => {
                (Method::GET, format!("{base}/Patient?identifier={}", encode(&format!("{IDENTIFIER_SYSTEM}|{}", t.identifier))), None, None)
            }
            (Op::Date, Some(_)) => {
                (Method::GET, format!("{base}/Observation?code={}&date=ge{}&_count=20", encode("http://loinc.org|8867-4"), date_days_ago(7)), None, None)
            }
            (Op::Count, Some(_)) => (Method::GET, format!("{base}/Patient?_summary=count"), None, None),
            (Op::Total, Some(_)) => (Method::GET, format!("{base}/Observation?code={}&_total=accurate&_count=10", encode("http://loinc.org|8867-4")), None, None),
            (Op::Chain, Some(t)) => (
                Method::GET,
                format!("{base}/Observation?patient.identifier={}&_count=20", encode(&format!("{IDENTIFIER_SYSTEM}|{}", t.identifier))),
                None,
                None,
            ),
            (Op::Everything, Some(t)) => (Method::GET, format!("{base}/Patient/{}/$everything", t.id), None, None),
        };
        let started = Instant::now();
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, exchange(&shared, s, method.clone(), &path, body)).await;
        let latency = started.elapsed();
        let what = format!("{method} {path}");
        match answer {
            Err(_) => {
                shared.record(op, Outcome::Error(format!("{what}: no answer within {} s", REQUEST_TIMEOUT.as_secs())), latency);
                sender = None;
            }
            Ok(Err(e)) => {
                shared.record(op, Outcome::Error(format!("{what}: {e:#}")), latency);
                sender = None;
            }
            Ok(Ok((status, body))) if is_refusal(status) => {
                let _ = shared.refused.set(refusal(status, &what, &body).to_string());
            }
            Ok(Ok((status, body))) if status.is_success() => {
                if let Some((identifier, family)) = identifier {
                    let created = created_locations(&body);
                    let id = created.iter().find(|(t, _)| t == "Patient").map(|(_, id)| id.clone());
                    match id {
                        Some(id) => {
                            let observations: Vec<String> = created.iter().filter(|(t, _)| t == "Observation").map(|(_, id)| id.clone()).take(2).collect();
                            shared.patients.fetch_add(1, Ordering::Relaxed);
                            shared.resources.fetch_add(created.len() as u64, Ordering::Relaxed);
                            shared.pool.lock().expect("not poisoned").push(Created { id, identifier, family, observations });
                            shared.record(op, Outcome::Ok, latency);
                        }
                        None => shared.record(op, Outcome::Error(format!("{what}: the transaction-response names no Patient")), latency),
                    }
                } else {
                    shared.record(op, Outcome::Ok, latency);
                }
            }
            Ok(Ok((status, body))) if status.is_client_error() && is_too_costly(&body) => {
                shared.record(op, Outcome::TooCostly(format!("{what}: HTTP {status}: {}", diagnostics(&body))), latency);
            }
            Ok(Ok((status, body))) => {
                shared.record(op, Outcome::Error(format!("{what}: HTTP {status}: {}", diagnostics(&body))), latency);
            }
        }
    }
}

/// Runs the soak.
pub async fn soak(options: SoakOptions) -> anyhow::Result<SoakReport> {
    let base = Base::parse(&options.url)?;
    let authorization = bearer(&options.token)?;
    let clients = options.clients.max(1);
    let interval = options.interval.max(Duration::from_millis(100));
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let shared = Arc::new(Shared {
        base,
        authorization,
        samples: Mutex::new(Samples::default()),
        pool: Mutex::new(Pool { ring: Vec::new(), next: 0 }),
        patients: AtomicU64::new(0),
        resources: AtomicU64::new(0),
        serial: AtomicU64::new(0),
        run: format!("soak-{:x}", now.as_secs()),
        stop: AtomicBool::new(false),
        refused: OnceLock::new(),
    });
    // The server must answer and accept the token before the clock starts.
    {
        let mut sender = connect::<Full<Bytes>>(&shared.base).await?;
        let path = format!("{}/Patient?_count=1", shared.base.path);
        let (status, body) = exchange(&shared, &mut sender, Method::GET, &path, None).await?;
        if is_refusal(status) {
            return Err(refusal(status, &format!("GET {path}"), &body));
        }
        anyhow::ensure!(status == StatusCode::OK, "GET {path}: HTTP {status}: {}", diagnostics(&body));
    }
    let say = |line: &str| {
        if let Some(p) = &options.progress {
            p(line);
        }
    };
    say(&header());
    let started = Instant::now();
    let deadline = started + options.duration;
    let seed = now.as_nanos() as u64;
    let tasks: Vec<_> = (0..clients).map(|i| tokio::spawn(client(shared.clone(), seed ^ (i as u64 + 1).wrapping_mul(0xD134_2543_DE82_EF95)))).collect();

    let mut intervals: Vec<IntervalRow> = Vec::new();
    let mut last = started;
    let mut interrupted = false;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let next = (last + interval).min(deadline);
        let finished = tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => Instant::now() >= deadline,
            _ = &mut ctrl_c => { interrupted = true; true }
        };
        if shared.refused.get().is_some() {
            break;
        }
        let at = Instant::now();
        // The last, partial interval is reported only when it is long enough to mean something.
        if !finished || at.duration_since(last) >= interval / 4 {
            let row = take_interval(&shared, at.duration_since(started), at.duration_since(last), options.pid);
            say(&row.line());
            intervals.push(row);
        }
        last = at;
        if finished {
            break;
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for task in tasks {
        // A client stuck on a slow request is not waited for beyond the timeout.
        let _ = tokio::time::timeout(REQUEST_TIMEOUT, task).await;
    }
    if let Some(message) = shared.refused.get() {
        anyhow::bail!("{message}");
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut samples = shared.samples.lock().expect("not poisoned");
    let kinds = Op::ALL
        .iter()
        .map(|&op| {
            let i = op.index();
            let mut all = std::mem::take(&mut samples.all[i]);
            all.sort_unstable();
            let micros = |p: f64| Duration::from_micros(percentile(&all, p) as u64);
            let summary = KindSummary {
                requests: all.len() as u64,
                errors: samples.errors[i],
                too_costly: samples.too_costly[i],
                p50: micros(0.50),
                p95: micros(0.95),
                p99: micros(0.99),
                max: micros(1.0),
                first_error: samples.first_error[i].clone(),
            };
            (op, summary)
        })
        .collect();
    Ok(SoakReport {
        clients,
        seconds,
        intervals,
        kinds,
        patients: shared.patients.load(Ordering::Relaxed),
        resources: shared.resources.load(Ordering::Relaxed),
        interrupted,
    })
}

/// Closes an interval: its percentiles per kind, and the server's RSS.
fn take_interval(shared: &Shared, elapsed: Duration, length: Duration, pid: Option<u32>) -> IntervalRow {
    let taken: Vec<(Vec<u32>, u64, u64)> = {
        let mut s = shared.samples.lock().expect("not poisoned");
        (0..KINDS)
            .map(|i| (std::mem::take(&mut s.interval[i]), std::mem::take(&mut s.interval_errors[i]), std::mem::take(&mut s.interval_too_costly[i])))
            .collect()
    };
    let mut kinds = [KindInterval::default(); KINDS];
    let (mut requests, mut errors, mut too_costly) = (0, 0, 0);
    for (i, (mut latencies, e, t)) in taken.into_iter().enumerate() {
        latencies.sort_unstable();
        let micros = |p: f64| Duration::from_micros(percentile(&latencies, p) as u64);
        kinds[i] = KindInterval { requests: latencies.len() as u64, errors: e + t, p50: micros(0.50), p99: micros(0.99) };
        requests += latencies.len() as u64 + e + t;
        errors += e;
        too_costly += t;
    }
    IntervalRow {
        elapsed,
        seconds: length.as_secs_f64(),
        requests,
        errors,
        too_costly,
        patients: shared.patients.load(Ordering::Relaxed),
        resources: shared.resources.load(Ordering::Relaxed),
        rss_kib: pid.and_then(rss_kib),
        kinds,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_723), (2024, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn bundles_are_transactions_of_eleven_resources() {
        let mut rng = Rng::new(7);
        let (body, family) = patient_bundle(&mut rng, "soak-1-0");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["type"], "transaction");
        let entries = v["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 11);
        assert_eq!(entries[0]["resource"]["name"][0]["family"], family);
        assert_eq!(entries[0]["resource"]["identifier"][0]["value"], "soak-1-0");
        let patient = entries[0]["fullUrl"].as_str().unwrap();
        assert!(entries[1..].iter().all(|e| e["resource"]["subject"]["reference"] == patient));
    }

    #[test]
    fn reads_created_locations() {
        let body = br#"{"resourceType":"Bundle","type":"transaction-response","entry":[
            {"response":{"status":"201 Created","location":"Patient/p1/_history/1"}},
            {"response":{"status":"201 Created","location":"http://x/fhir/Observation/o1/_history/1"}},
            {"response":{"status":"201 Created","location":"Encounter/e1"}}]}"#;
        assert_eq!(
            created_locations(body),
            [("Patient".to_string(), "p1".to_string()), ("Observation".into(), "o1".into()), ("Encounter".into(), "e1".into())]
        );
    }

    #[test]
    fn recognises_too_costly() {
        assert!(is_too_costly(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"too-costly"}]}"#));
        assert!(!is_too_costly(br#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"invalid"}]}"#));
    }

    #[test]
    fn pool_picks_recent_patients() {
        let mut pool = Pool { ring: Vec::new(), next: 0 };
        let mut rng = Rng::new(1);
        assert!(pool.recent(&mut rng, 5).is_none());
        for n in 0..10 {
            pool.push(Created { id: n.to_string(), identifier: String::new(), family: "A", observations: Vec::new() });
        }
        for _ in 0..100 {
            let id: usize = pool.recent(&mut rng, 3).unwrap().id.parse().unwrap();
            assert!((7..10).contains(&id), "{id}");
        }
    }

    #[test]
    fn percent_encodes_query_values() {
        assert_eq!(encode("http://loinc.org|8867-4"), "http%3A%2F%2Floinc.org%7C8867-4");
    }

    #[test]
    fn weights_cover_every_kind() {
        assert_eq!(Op::ALL.iter().map(|o| o.weight()).sum::<u32>(), 100);
        assert!(Op::ALL.iter().all(|o| o.weight() > 0));
    }
}
