//! `tessera bench mllp`: HL7 v2 messages over concurrent MLLP connections, each sent when
//! the one before on its connection is acknowledged — registrations (ADT^A04, each a new
//! person with a valid NHS number, so the patient index matches every one) or results
//! (ORU^R01 with N numeric results each, for a pool of patients).

use crate::read::percentile;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MllpKind {
    /// ADT^A04: a new patient each.
    Registrations,
    /// ORU^R01 with this many results each.
    Results(usize),
}

#[derive(Debug, Clone)]
pub struct MllpOptions {
    /// The interface's address.
    pub addr: String,
    pub kind: MllpKind,
    pub connections: usize,
    pub messages: usize,
    /// Distinguishes the runs (control ids and identifiers), so runs can repeat on one
    /// database.
    pub run: String,
}

#[derive(Debug, Clone)]
pub struct MllpReport {
    pub messages: usize,
    pub accepted: usize,
    pub first_refusal: Option<String>,
    pub elapsed: Duration,
    /// Latency from sending to the acknowledgement, microseconds.
    pub p50_us: u32,
    pub p99_us: u32,
    pub max_us: u32,
}

impl MllpReport {
    pub fn per_second(&self) -> f64 {
        self.accepted as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// A valid NHS number (mod 11 check digit) from a 9-digit stem.
pub fn nhs_number(mut stem: u64) -> String {
    loop {
        let digits: Vec<u64> = format!("{:09}", stem % 1_000_000_000).bytes().map(|b| (b - b'0') as u64).collect();
        let sum: u64 = digits.iter().enumerate().map(|(i, d)| d * (10 - i as u64)).sum();
        let check = (11 - sum % 11) % 11;
        if check != 10 {
            return format!("{}{check}", digits.iter().map(|d| d.to_string()).collect::<String>());
        }
        stem += 1;
    }
}

const FAMILIES: &[&str] = &["Smith", "Jones", "Taylor", "Brown", "Williams", "Wilson", "Johnson", "Davies", "Patel", "Wright", "Khan", "Evans", "Thomas", "Roberts", "Walker"];
const GIVENS: &[&str] = &["Oliver", "Amelia", "George", "Isla", "Harry", "Ava", "Noah", "Mia", "Jack", "Ivy", "Leo", "Grace", "Arthur", "Freya", "Muhammad"];

const SYLLABLES: &[&str] = &[
    "ash", "bel", "cor", "dun", "el", "far", "gar", "hal", "ing", "kel", "lan", "mor", "nor", "oak", "pen", "quin", "ros", "sal", "tor", "ul", "ven", "wal", "yar", "brook", "field", "ford", "ham", "ley", "ton", "wick",
];

/// A surname: a common one, or (mostly) one made of three syllables, so that most
/// registrations are distinct people as in a real feed.
fn family(n: usize) -> String {
    if n.is_multiple_of(10) {
        return FAMILIES[(n / 10) % FAMILIES.len()].to_string();
    }
    let k = SYLLABLES.len();
    let name: String = [n % k, (n / k) % k, (n / (k * k)) % k].iter().map(|i| SYLLABLES[*i]).collect();
    let mut c = name.chars();
    c.next().map(|f| f.to_uppercase().collect::<String>() + c.as_str()).unwrap_or_default()
}

/// A date of birth spread over 80 years, a different day for neighbouring people.
fn birth_date(n: usize) -> String {
    let mut day = (n * 7919) % 29_200;
    let mut year = 1930;
    loop {
        let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
        let len = if leap { 366 } else { 365 };
        if day < len {
            break;
        }
        day -= len;
        year += 1;
    }
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let months = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let mut month = 0;
    while day >= months[month] {
        day -= months[month];
        month += 1;
    }
    format!("{year}{:02}{:02}", month + 1, day + 1)
}

fn pid(n: usize, run: &str) -> String {
    let surname = family(n);
    let given = GIVENS[(n / 7) % GIVENS.len()];
    let stem = 400_000_000 + (n as u64 * 7919 + fnv(run)) % 500_000_000;
    let h = fnv(&format!("{run}{n}"));
    format!(
        "PID|1||{nhs}^^^NHS^NH~B{run}{n}^^^RX1^MR||{surname}^{given}^^^||{birth}|{sex}|||{house} {street} Road^^Northgate^^NG{d} {m}{a}{b}^GBR\r",
        nhs = nhs_number(stem),
        birth = birth_date(n),
        sex = if n.is_multiple_of(2) { "F" } else { "M" },
        house = 1 + h % 300,
        street = family(n / 3 + 7),
        d = 1 + h % 20,
        m = h / 20 % 10,
        a = (b'A' + (h / 200 % 26) as u8) as char,
        b = (b'A' + (h / 5200 % 26) as u8) as char,
    )
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3)) % 100_000_000
}

/// The `n`th message of a run.
pub fn message(kind: MllpKind, n: usize, run: &str) -> String {
    let msh = |ty: &str| format!("MSH|^~\\&|BENCH|RX1|TESSERA|DOMAIN|20261207120000||{ty}|{run}-{n}|P|2.5\r");
    match kind {
        MllpKind::Registrations => format!("{}EVN|A04|20261207120000\r{}PV1|1|O|OPD\r", msh("ADT^A04^ADT_A01"), pid(n, run)),
        MllpKind::Results(results) => {
            // A pool of 500 patients, each with many reports.
            let mut m = format!("{}{}", msh("ORU^R01^ORU_R01"), pid(n % 500, run));
            m.push_str(&format!("OBR|1|P{run}{n}|F{run}{n}|58410-2^CBC panel^LN|||20261207101500|||||||||||||||20261207113000|||F\r"));
            const ANALYTES: &[(&str, &str, &str, &str)] = &[
                ("718-7", "Hemoglobin", "g/L", "115-165"),
                ("6690-2", "Leukocytes", "10*9/L", "4.0-11.0"),
                ("777-3", "Platelets", "10*9/L", "150-400"),
                ("789-8", "Erythrocytes", "10*12/L", "3.8-5.8"),
                ("4544-3", "Hematocrit", "L/L", "0.37-0.47"),
                ("787-2", "MCV", "fL", "80-100"),
                ("785-6", "MCH", "pg", "27-32"),
                ("786-4", "MCHC", "g/L", "320-360"),
                ("751-8", "Neutrophils", "10*9/L", "2.0-7.5"),
                ("731-0", "Lymphocytes", "10*9/L", "1.0-4.0"),
            ];
            for i in 0..results {
                let (code, name, unit, range) = ANALYTES[i % ANALYTES.len()];
                let value = 3.5 + ((n * 31 + i * 17) % 200) as f64 / 10.0;
                let sub = i / ANALYTES.len() + 1;
                m.push_str(&format!("OBX|{}|NM|{code}^{name}^LN|{sub}|{value:.1}|{unit}^^UCUM|{range}|N|||F|||20261207101500\r", i + 1));
            }
            m
        }
    }
}

/// Runs the benchmark; `progress` is told how many messages are acknowledged so far.
pub async fn run(options: &MllpOptions, progress: &(dyn Fn(usize) + Sync)) -> anyhow::Result<MllpReport> {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..options.connections.max(1) {
        let (next, done, options) = (next.clone(), done.clone(), options.clone());
        tasks.push(tokio::spawn(async move { connection(&options, &next, &done).await }));
    }
    let mut latencies = Vec::with_capacity(options.messages);
    let mut accepted = 0;
    let mut first_refusal = None;
    let watcher = {
        let done = done.clone();
        let total = options.messages;
        async move {
            loop {
                let d = done.load(Ordering::Relaxed);
                progress(d);
                if d >= total {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let joined = async {
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    };
    let (results, _) = tokio::join!(joined, async {
        tokio::select! {
            _ = watcher => {}
            _ = tokio::time::sleep(Duration::from_secs(24 * 3600)) => {}
        }
    });
    let elapsed = started.elapsed();
    for r in results {
        let (lat, ok, refusal) = r??;
        latencies.extend(lat);
        accepted += ok;
        if first_refusal.is_none() {
            first_refusal = refusal;
        }
    }
    latencies.sort_unstable();
    Ok(MllpReport {
        messages: options.messages,
        accepted,
        first_refusal,
        elapsed,
        p50_us: percentile(&latencies, 0.50),
        p99_us: percentile(&latencies, 0.99),
        max_us: latencies.last().copied().unwrap_or(0),
    })
}

async fn connection(options: &MllpOptions, next: &AtomicUsize, done: &AtomicUsize) -> anyhow::Result<(Vec<u32>, usize, Option<String>)> {
    let mut stream = tokio::net::TcpStream::connect(&options.addr).await?;
    stream.set_nodelay(true)?;
    let mut latencies = Vec::new();
    let mut accepted = 0;
    let mut refusal = None;
    let mut buf = vec![0u8; 16 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        if n >= options.messages {
            break;
        }
        let text = message(options.kind, n, &options.run);
        let mut framed = Vec::with_capacity(text.len() + 3);
        framed.push(0x0b);
        framed.extend_from_slice(text.as_bytes());
        framed.extend_from_slice(&[0x1c, 0x0d]);
        let sent = Instant::now();
        stream.write_all(&framed).await?;
        let ack = loop {
            if let Some(end) = pending.windows(2).position(|w| w == [0x1c, 0x0d]) {
                let frame: Vec<u8> = pending.drain(..end + 2).collect();
                break String::from_utf8_lossy(&frame[..end]).trim_start_matches('\u{0b}').to_string();
            }
            let read = tokio::time::timeout(Duration::from_secs(120), stream.read(&mut buf)).await??;
            anyhow::ensure!(read > 0, "the server closed the connection");
            pending.extend_from_slice(&buf[..read]);
        };
        latencies.push(sent.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if ack.contains("\rMSA|AA|") || ack.contains("\rMSA|CA|") {
            accepted += 1;
        } else if refusal.is_none() {
            refusal = Some(ack.replace('\r', "\n"));
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    Ok((latencies, accepted, refusal))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nhs_numbers_are_valid() {
        for stem in [400_000_000u64, 412_345_678, 899_999_999] {
            let n = nhs_number(stem);
            assert_eq!(n.len(), 10);
            let d: Vec<u32> = n.chars().map(|c| c.to_digit(10).unwrap()).collect();
            let sum: u32 = d[..9].iter().enumerate().map(|(i, x)| x * (10 - i as u32)).sum();
            assert_eq!((11 - sum % 11) % 11, d[9]);
        }
    }

    #[test]
    fn messages_differ() {
        assert_ne!(message(MllpKind::Registrations, 1, "r"), message(MllpKind::Registrations, 2, "r"));
        assert_eq!(message(MllpKind::Results(10), 3, "r").matches("\rOBX|").count(), 10);
    }
}
