//! Hostile input over real HTTP, on both backends: no input, however malformed, is
//! answered with a 5xx (or not answered at all), and every 4xx carries an
//! OperationOutcome.
//!
//! A fixed corpus (control characters in search parameter names and values, in ids and in
//! created resources; numbers out of range; very long strings; thousands of values,
//! parameters and sort keys; deeply nested JSON; invalid UTF-8; unknown modifiers and
//! prefixes) is sent as it is, and then combined by a seeded generator into many more
//! requests (`HOSTILE_SEED`, `HOSTILE_CASES` choose the seed and how many; a failure
//! prints the seed and the request, so it can be replayed; `HOSTILE_ONLY=text` keeps the
//! requests whose label holds `text`, and `HOSTILE_FORM=query` adds a POST
//! `Observation/_search` with that body). The requests are written on a
//! plain TCP socket, so that bytes an HTTP library would refuse to send (raw control
//! characters, invalid UTF-8) reach the server too.
//!
//! Also here: long values are indexed on both backends (PostgreSQL refuses index entries
//! over 2,704 bytes), found by their start, and matched exactly by `:exact` and tokens
//! (docs/search.md, "Limits").

mod common;
use common::Server;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_backends!(long_values_are_indexed_and_matched_exactly, hostile_corpus_is_never_a_server_error);

/// SplitMix64: a small deterministic generator.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// Prose that does not compress well: random words of random letters.
fn prose(rng: &mut Rng, chars: usize) -> String {
    let mut s = String::with_capacity(chars + 12);
    while s.len() < chars {
        if !s.is_empty() {
            s.push(if rng.chance(8) { '.' } else { ' ' });
            if s.ends_with('.') {
                s.push(' ');
            }
        }
        let n = 2 + rng.below(9);
        for i in 0..n {
            let c = (b'a' + rng.below(26) as u8) as char;
            s.push(if i == 0 && rng.chance(10) { c.to_ascii_uppercase() } else { c });
        }
    }
    s.truncate(chars);
    s
}

/// Percent-encodes every byte outside the unreserved set.
fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Percent-decodes (lossily), for the places where a query is written decoded.
fn form_urlencoded_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], b.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One request, as bytes on the wire.
#[derive(Clone)]
struct Case {
    label: String,
    method: &'static str,
    /// The request target after `/fhir/` (raw bytes: may hold anything).
    target: Vec<u8>,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Must the answer be a 4xx (FHIR forbids the input)?
    refuse: bool,
}

impl Case {
    /// A request target holding raw bytes that HTTP/1 does not allow in a request line
    /// (control characters, bytes above 0x7E): the parser, not the server, answers.
    fn transport_level(&self) -> bool {
        self.target.iter().any(|&b| b < 0x21 || b > 0x7e)
    }

    fn get(label: impl Into<String>, target: impl AsRef<[u8]>) -> Case {
        Case { label: label.into(), method: "GET", target: target.as_ref().to_vec(), headers: Vec::new(), body: Vec::new(), refuse: false }
    }
    fn send(label: impl Into<String>, method: &'static str, target: impl AsRef<[u8]>, body: Vec<u8>) -> Case {
        let mut c = Case::get(label, target);
        c.method = method;
        c.headers.push(("content-type".into(), "application/fhir+json".into()));
        c.body = body;
        c
    }
    fn json(label: impl Into<String>, method: &'static str, target: &str, body: &Value) -> Case {
        Case::send(label, method, target, serde_json::to_vec(body).unwrap())
    }
    fn form(label: impl Into<String>, target: &str, form: String) -> Case {
        let mut c = Case::get(label, target);
        c.method = "POST";
        c.headers.push(("content-type".into(), "application/x-www-form-urlencoded".into()));
        c.body = form.into_bytes();
        c
    }
    fn refused(mut self) -> Case {
        self.refuse = true;
        self
    }
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

/// Writes the request on a fresh connection and reads the answer (`Connection: close`).
async fn exchange(addr: &str, token: &str, c: &Case) -> Result<Answer, String> {
    let mut req = Vec::with_capacity(c.target.len() + c.body.len() + 256);
    req.extend_from_slice(c.method.as_bytes());
    req.extend_from_slice(b" /fhir/");
    req.extend_from_slice(&c.target);
    req.extend_from_slice(b" HTTP/1.1\r\n");
    req.extend_from_slice(format!("host: {addr}\r\nauthorization: Bearer {token}\r\nconnection: close\r\naccept: application/fhir+json\r\n").as_bytes());
    for (k, v) in &c.headers {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if c.method != "GET" || !c.body.is_empty() {
        req.extend_from_slice(format!("content-length: {}\r\n", c.body.len()).as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(&c.body);
    let io = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        // The server may answer (and close) before it has read a large body: what it
        // answered counts.
        let written = stream.write_all(&req).await;
        let mut raw = Vec::new();
        let read = stream.read_to_end(&mut raw).await;
        match (raw.is_empty(), written, read) {
            (false, _, _) => Ok(raw),
            (true, Err(e), _) => Err(format!("write: {e}")),
            (true, _, Err(e)) => Err(format!("read: {e}")),
            (true, Ok(()), Ok(_)) => Err("closed without an answer".to_string()),
        }
    };
    let raw = tokio::time::timeout(Duration::from_secs(120), io).await.map_err(|_| "no answer within 120 s".to_string())??;
    parse_answer(&raw)
}

fn parse_answer(raw: &[u8]) -> Result<Answer, String> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| format!("no complete answer ({} bytes): {:?}", raw.len(), String::from_utf8_lossy(&raw[..raw.len().min(200)])))?;
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| format!("bad status line: {head}"))?;
    let chunked = head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    let mut body = raw[end + 4..].to_vec();
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..nl]).split(';').next().unwrap().trim(), 16).unwrap_or(0);
            if size == 0 || rest.len() < nl + 2 + size {
                break;
            }
            out.extend_from_slice(&rest[nl + 2..nl + 2 + size]);
            rest = &rest[(nl + 4 + size).min(rest.len())..];
        }
        body = out;
    }
    Ok(Answer { status, body })
}

/// What was wrong with an answer, if anything.
fn judge(c: &Case, a: &Result<Answer, String>) -> Option<String> {
    let a = match a {
        Ok(a) => a,
        Err(e) => return Some(format!("no answer: {e}")),
    };
    let text = String::from_utf8_lossy(&a.body);
    let diagnostics = || -> String {
        match serde_json::from_slice::<Value>(&a.body) {
            Ok(v) if v["resourceType"] == "OperationOutcome" => {
                let i = &v["issue"][0];
                format!("{} / {}", i["code"].as_str().unwrap_or("?"), i["diagnostics"].as_str().or(i["details"]["text"].as_str()).unwrap_or("?"))
            }
            _ => format!("body: {:?}", &text[..text.len().min(160)]),
        }
    };
    if a.status >= 500 || a.status < 200 {
        return Some(format!("{} {}", a.status, diagnostics()));
    }
    if (400..500).contains(&a.status) {
        match serde_json::from_slice::<Value>(&a.body) {
            Ok(v) if v["resourceType"] == "OperationOutcome" => {}
            // Refused by the HTTP/1 parser before any FHIR processing (a request line that
            // is not HTTP, a URI longer than the parser takes): a bare 400 or 414 is the
            // protocol's answer, and no FHIR handler ever saw the request.
            _ if a.body.is_empty() && (a.status == 414 || (a.status == 400 && c.transport_level())) => {}
            _ => return Some(format!("{} without an OperationOutcome ({})", a.status, diagnostics())),
        }
    } else if c.refuse {
        return Some(format!("{} where FHIR requires a refusal (4xx)", a.status));
    } else if let Ok(v) = serde_json::from_slice::<Value>(&a.body) {
        // A batch answers each entry: none may be a server error either.
        for (n, e) in v["entry"].as_array().into_iter().flatten().enumerate() {
            let st = e["response"]["status"].as_str().unwrap_or("");
            if st.starts_with('5') {
                let o = &e["response"]["outcome"]["issue"][0];
                return Some(format!("entry {n}: {st} {} / {}", o["code"].as_str().unwrap_or("?"), o["diagnostics"].as_str().unwrap_or("?")));
            }
            if st.starts_with('4') && e["response"]["outcome"]["resourceType"] != "OperationOutcome" {
                return Some(format!("entry {n}: {st} without an OperationOutcome"));
            }
        }
    }
    None
}

/// The answer's status, for the corpus's own setup.
async fn status(s: &Server, c: &Case) -> (u16, Value) {
    let a = exchange(addr(s), &s.system_token, c).await.unwrap_or_else(|e| panic!("{}: {e}", c.label));
    (a.status, serde_json::from_slice(&a.body).unwrap_or(Value::Null))
}

fn addr(s: &Server) -> &str {
    s.base.trim_start_matches("http://").trim_end_matches("/fhir")
}

/// The search parameters the generator combines, by resource type.
const PARAMS: &[(&str, &[&str])] = &[
    ("Patient", &["name", "family", "given", "birthdate", "identifier", "_id", "gender", "address", "telecom", "general-practitioner", "_lastUpdated", "_text", "_content", "_has:Observation:patient:code", "organization", "phonetic", "death-date"]),
    ("Observation", &["code", "value-quantity", "value-string", "date", "subject", "patient", "combo-code", "code-value-quantity", "component-code-value-quantity", "code-value-string", "identifier", "value-concept", "subject.name", "subject:Patient.birthdate", "_tag", "_profile", "_security", "_source"]),
    ("AuditEvent", &["agent", "date", "entity", "patient", "type", "action", "outcome"]),
    ("Location", &["near", "name", "address-city"]),
    ("Encounter", &["patient", "date", "class", "length"]),
];

const MODIFIERS: &[&str] = &["", "", "", ":exact", ":contains", ":missing", ":not", ":text", ":below", ":above", ":in", ":not-in", ":of-type", ":identifier", ":Patient", ":bogus", ":%00", ":", "::", ":%FF", ":iterate"];

const PREFIXES: &[&str] = &["", "", "", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "zz", "GE", "%00"];

/// Hostile values, already as they go in the query string (percent-encoded where needed).
fn values(long_prose: &str) -> Vec<String> {
    let mut v: Vec<String> = [
        "", "%00", "a%00b", "%00%00%00", "%01", "%07", "%08", "%09", "%0A", "%0D", "%1B", "%1F", "%7F", "%C2%80", "%FF", "%FF%FE", "%C0%80", "%ED%A0%80",
        "%EF%BF%BF", "%F4%8F%BF%BF", "%F4%90%80%80", "%E2%80%AE", "%EF%BB%BF", "%F0%9D%84%9E", "99999999999999999999", "9223372036854775808",
        "-9223372036854775809", "1e400", "-1e400", "1e-400", "1e308", "NaN", "inf", "-0", "0.00000000000000000000000000001",
        "99999-01-01", "ge99999-01-01", "0000-00-00", "2020-13-45", "2020-01-01T25:61:61Z", "2020-02-30", "9999-12-31T23:59:59%2B14:00",
        "0001-01-01T00:00:00-14:00", "-2020", "http://loinc.org%7C%00", "%7C", "%7C%7C", "%24", "%24%24", "a%24b%24c", "%5C", "%5C%2C", "%2C", "%2C%2C%2C",
        "Patient/%00", "Patient/..%2F..%2Fetc", "Patient/", "%23x", "urn:uuid:%00", "'%20OR%201%3D1%20--", "%25", "%25%25", "_", "%2A", "%5B%5D", "%7B%7D",
        "1%7C%7Ckg", "1%7Chttp://unitsofmeasure.org%7C%00", "0%7C0%7C0%7C0", "-91%7C181%7C-1%7Ckm", "Patient%3Fname%3Dx",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.push(enc(long_prose));
    v.push("x".repeat(10_000));
    v.push(enc(&"𝄞".repeat(300)));
    v
}

/// The fixed corpus.
fn corpus(rng: &mut Rng, patient: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let long_prose = prose(rng, 3000);
    // C0 control characters (and DEL) in search values, parameter names and ids.
    for b in (0u8..0x20).chain([0x7f]) {
        let e = format!("%{b:02X}");
        cases.push(Case::get(format!("value {e}"), format!("Patient?name=a{e}b")));
        cases.push(Case::get(format!("token value {e}"), format!("Observation?code=http://loinc.org%7C{e}")));
        cases.push(Case::get(format!("name {e}"), format!("Patient?na{e}me=x")));
        cases.push(Case::get(format!("id {e}"), format!("Patient/{e}")));
    }
    for (label, target) in [
        ("Patient/%00", "Patient/%00".to_string()),
        ("Patient/a%00b/_history/1", "Patient/a%00b/_history/1".into()),
        ("Patient/{id}/_history/%00", format!("Patient/{patient}/_history/%00")),
        ("Patient/%00/$everything", "Patient/%00/$everything".into()),
        ("Patient/{id}/%00", format!("Patient/{patient}/%00")),
        ("%00 type", "%00?name=x".into()),
        ("%00/_search type", "%00/_history".into()),
        ("AuditEvent?agent=%00", "AuditEvent?agent=%00".into()),
        ("AuditEvent?patient=%00", "AuditEvent?patient=%00".into()),
        ("AuditEvent?entity=Patient/%00", "AuditEvent?entity=Patient/%00".into()),
        ("parameter name %00", "Patient?%00=x".into()),
        ("modifier %00", "Patient?name:%00=x".into()),
        ("_id=%00", "Patient?_id=%00".into()),
        ("_sort=%00", "Patient?_sort=%00".into()),
        ("_include=%00", "Observation?_include=%00".into()),
        ("_include=Observation:%00", "Observation?_include=Observation:%00".into()),
        ("_elements=%00", "Patient?_elements=%00".into()),
        ("_cursor=%00", "Patient?_cursor=%00".into()),
        ("_format=%00", "Patient?_format=%00".into()),
        ("_summary=%00", "Patient?_summary=%00".into()),
        ("_has with %00", "Patient?_has:Observation:patient:%00=x".into()),
        ("chain with %00", "Observation?subject.%00=x".into()),
        ("compartment %00", "Patient/%00/Observation?code=x".into()),
        ("system search %00", "?_type=%00".into()),
        ("history _since=%00", "Patient/_history?_since=%00".into()),
        ("history _count=%00", "_history?_count=%00".into()),
        // Numbers out of range.
        ("_count huge", "Patient?_count=99999999999999999999".into()),
        ("_count i64::MAX", "Patient?_count=9223372036854775807".into()),
        ("_count negative", "Patient?_count=-1".into()),
        ("_offset 2^63", "Patient?_offset=9223372036854775808".into()),
        ("_offset 2^63 sorted", "Patient?_sort=name&_offset=9223372036854775808".into()),
        ("_offset u64::MAX", "Patient?_sort=family&_offset=18446744073709551615".into()),
        ("_offset i64::MAX sorted", "Patient?_sort=family&_offset=9223372036854775807".into()),
        ("_offset negative", "Patient?_offset=-1".into()),
        ("history _count huge", "Patient/_history?_count=99999999999999999999".into()),
        ("value-quantity=1e400", "Observation?value-quantity=1e400".into()),
        ("value-quantity=-1e400", "Observation?value-quantity=-1e400".into()),
        ("value-quantity=ap1e308", "Observation?value-quantity=ap1e308".into()),
        ("value-quantity=gt1e-400", "Observation?value-quantity=gt1e-400".into()),
        ("value-quantity huge digits", format!("Observation?value-quantity={}", "9".repeat(400))),
        ("value-quantity=ap-1.7976931348623157e308", "Observation?value-quantity=ap-1.7976931348623157e308".into()),
        ("date=ge99999-01-01", "Observation?date=ge99999-01-01".into()),
        ("birthdate=0000-00-00", "Patient?birthdate=0000-00-00".into()),
        ("birthdate=ap0001-01-01", "Patient?birthdate=ap0001-01-01".into()),
        ("birthdate=ap9999-12-31", "Patient?birthdate=ap9999-12-31T23:59:59-14:00".into()),
        ("_lastUpdated=ap0001", "Patient?_lastUpdated=ap0001".into()),
        ("_lastUpdated=gt9999-12-31T23:59:59.999999999%2B14:00", "Patient?_lastUpdated=gt9999-12-31T23:59:59.999999999%2B14:00".into()),
        ("near huge", "Location?near=1e400%7C1e400%7C1e400%7Ckm".into()),
        ("near out of range", "Location?near=-91%7C181%7C99999999999%7Ckm".into()),
        ("component range huge", "MolecularSequence?chromosome-variant-coordinate=1%24ge1e400%24lt-1e400".into()),
        // Unknown modifiers and prefixes.
        ("unknown modifier", "Patient?name:bogus=x".into()),
        ("unknown prefix on a date", "Patient?birthdate=zz2020".into()),
        ("unknown prefix on a number", "Observation?value-quantity=xx5".into()),
        ("prefix only", "Observation?value-quantity=gt".into()),
        ("modifier on a chain", "Observation?subject:Patient.name:exact:bogus=x".into()),
        ("type modifier unknown", "Observation?subject:NotAType=1".into()),
        ("missing=maybe", "Patient?name:missing=maybe".into()),
        ("_has too deep", format!("Patient?{}code=x", "_has:Observation:patient:".repeat(40))),
        ("chain too deep", format!("Observation?{}name=x", "subject:Patient.link:Patient.".repeat(40))),
        // Invalid UTF-8 (escaped; raw bytes below).
        ("%FF in a value", "Patient?name=%FF".into()),
        ("%FF in a name", "Patient?%FF=x".into()),
        ("overlong NUL", "Patient?name=%C0%80".into()),
        ("surrogate", "Patient?name=%ED%A0%80".into()),
        ("truncated sequence", "Patient?name=%E2%82".into()),
        ("%FF in an id", "Patient/%FF".into()),
        ("bad escape", "Patient?name=%G0%".into()),
        // Many values, parameters and sort keys.
        ("5,000 values", format!("Patient?family={}", vec!["a"; 5000].join(","))),
        ("5,000 distinct values", format!("Patient?name={}", (0..5000).map(|i| format!("n{i}")).collect::<Vec<_>>().join(","))),
        ("5,000 ids", format!("Patient?_id={}", (0..5000).map(|i| format!("id{i}")).collect::<Vec<_>>().join(","))),
        ("5,000 codes", format!("Observation?code={}", (0..5000).map(|i| format!("http://loinc.org%7C{i}")).collect::<Vec<_>>().join(","))),
        ("5,000 references", format!("Observation?subject={}", (0..5000).map(|i| format!("Patient/p{i}")).collect::<Vec<_>>().join(","))),
        ("200 repeated parameters", format!("Patient?{}", vec!["family=a"; 200].join("&"))),
        ("200 distinct parameters", format!("Observation?{}", (0..200).map(|i| format!("code=c{i}")).collect::<Vec<_>>().join("&"))),
        ("_sort with 400 keys", format!("Patient?_sort={}", vec!["family"; 400].join(","))),
        ("_sort with 400 mixed keys", format!("Patient?_sort={}", (0..400).map(|i| ["family", "-birthdate", "_id", "-_lastUpdated"][i % 4]).collect::<Vec<_>>().join(","))),
        ("200 _include", format!("Observation?{}", vec!["_include=Observation:subject"; 200].join("&"))),
        ("_elements with 5,000", format!("Patient?_elements={}", vec!["name"; 5000].join(","))),
        // Very long strings in queries.
        ("3,000-char prose query", format!("Observation?value-string={}", enc(&long_prose))),
        ("3,000-char prose :exact", format!("Observation?value-string:exact={}", enc(&long_prose))),
        ("3,000-char prose :contains", format!("Observation?value-string:contains={}", enc(&long_prose))),
        ("3,000-char token", format!("Observation?code={}%7C{}", enc(&long_prose), enc(&long_prose))),
        ("3,000-char uri :above", format!("ValueSet?url:above=http://x/{}", "a".repeat(3000))),
        ("3,000-char uri :below", format!("ValueSet?url:below=http://x/{}", "a".repeat(3000))),
        ("3,000-char reference", format!("Observation?subject=http://x/{}", "a".repeat(3000))),
        ("3,000-char :text", format!("Observation?code:text={}", enc(&long_prose))),
        ("3,000-char composite", format!("Observation?code-value-string=x%24{}", enc(&long_prose))),
        ("3,000-char sort key", format!("Patient?_sort={}", "a".repeat(3000))),
        ("3,000-char id", format!("Patient/{}", "a".repeat(3000))),
        ("3,000-char type", format!("{}?name=x", "A".repeat(3000))),
        ("10,000-char parameter name", format!("Patient?{}=x", "a".repeat(10_000))),
        ("30,000-char value", format!("Patient?name={}", "a".repeat(30_000))),
    ] {
        cases.push(Case::get(label, target));
    }
    // The same hostile queries through every way in: the URL, a POST _search body, an
    // If-None-Exist header, a batch entry.
    for (ty, query) in [
        ("Patient", "name=%00"),
        ("Patient", "_id=%00"),
        ("Patient", "identifier=%00"),
        ("Patient", "identifier=urn:x%7C%00"),
        ("Patient", "_list=%00"),
        ("Patient", "_list=a%00b"),
        ("Patient", "_has:Observation:patient:code=%00"),
        ("Patient", "_sort=%00"),
        ("Patient", "_cursor=%00"),
        ("Patient", "_elements=%00"),
        ("Patient", "_include=%00"),
        ("Patient", "_revinclude=Observation:%00"),
        ("Patient", "general-practitioner=Practitioner/%00"),
        ("Patient", "general-practitioner:Practitioner.name=%00"),
        ("Patient", "birthdate=%00"),
        ("Patient", "_lastUpdated=gt%00"),
        ("Patient", "_text=%00"),
        ("Patient", "_content=%00"),
        ("Patient", "_tag=%00%7C%00"),
        ("Patient", "_count=99999999999999999999"),
        ("Patient", "_sort=family&_offset=9223372036854775808"),
        ("Observation", "subject=Patient/%00"),
        ("Observation", "patient=%00"),
        ("Observation", "code=%00%7C%00"),
        ("Observation", "value-quantity=1e400"),
        ("Observation", "date=ge99999-01-01"),
        ("Observation", "value-string:exact=%00"),
        ("Observation", "code-value-quantity=%00%24gt%00"),
        ("AuditEvent", "agent=%00"),
        ("AuditEvent", "patient=%00"),
        ("AuditEvent", "entity=%00"),
        ("AuditEvent", "date=ge%00"),
        ("AuditEvent", "_count=99999999999999999999"),
        ("AuditEvent", "_offset=9223372036854775808"),
        ("AuditEvent", "_cursor=%00"),
        ("Location", "near=%00"),
        ("ValueSet", "url:above=%00"),
        ("ValueSet", "url:below=%00"),
    ] {
        cases.push(Case::get(format!("GET {ty}?{query}"), format!("{ty}?{query}")));
        cases.push(Case::form(format!("POST {ty}/_search {query}"), &format!("{ty}/_search"), query.to_string()));
        let mut conditional = Case::json(format!("If-None-Exist {query}"), "POST", "Patient", &json!({"resourceType": "Patient"}));
        conditional.headers.push(("if-none-exist".into(), query.to_string()));
        cases.push(conditional);
        let decoded: String = form_urlencoded_decode(&format!("{ty}?{query}"));
        cases.push(Case::json(
            format!("batch GET {ty}?{query}"),
            "POST",
            "",
            &json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": format!("{ty}?{query}")}}, {"request": {"method": "GET", "url": decoded}}]}),
        ));
    }
    // Raw bytes that an HTTP library would refuse to send.
    cases.push(Case::get("raw 0xFF in the query", b"Patient?name=\xff\xfe"));
    cases.push(Case::get("raw NUL in the query", b"Patient?name=a\x00b"));
    cases.push(Case::get("raw tab in the query", b"Patient?name=a\tb"));
    cases.push(Case::get("raw UTF-8 in the query", "Patient?name=Zoë".as_bytes()));
    // POST _search with the same hostile parameters in the body.
    cases.push(Case::form("_search %00", "Patient/_search", "name=%00&family=a%00b".into()));
    cases.push(Case::form("_search %FF", "Patient/_search", "name=%FF".into()));
    cases.push(Case::form("_search raw invalid UTF-8", "Patient/_search", String::from_utf8_lossy(b"name=\xff").into_owned()));
    cases.push(Case::form("_search 5,000 values", "Observation/_search", format!("value-string={}", vec!["a"; 5000].join(","))));
    cases.push(Case::form("_search 3,000-char :exact", "Observation/_search", format!("value-string:exact={}", enc(&long_prose))));
    cases.push(Case::form("_search 100,000-char value", "Observation/_search", format!("value-string={}", "a".repeat(100_000))));
    // Created resources.
    let obs = |v: Value| json!({"resourceType": "Observation", "status": "final", "code": {"text": "hostile"}, "valueString": v});
    cases.push(Case::json("3,000-char prose valueString", "POST", "Observation", &obs(json!(long_prose))));
    cases.push(Case::json("2 MB valueString", "POST", "Observation", &obs(json!("y".repeat(2 * 1024 * 1024)))).refused());
    cases.push(Case::json("1 MB + 1 valueString", "POST", "Observation", &obs(json!("z".repeat(1024 * 1024 + 1)))).refused());
    for b in (0u8..0x20).filter(|b| ![b'\t', b'\n', b'\r'].contains(b)) {
        let v = format!("a{}b", b as char);
        cases.push(Case::json(format!("family with U+{b:04X}"), "POST", "Patient", &json!({"resourceType": "Patient", "name": [{"family": v}]})).refused());
    }
    cases.push(Case::json("identifier value with NUL", "POST", "Patient", &json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "a\u{0}b"}]})).refused());
    cases.push(Case::json("system with NUL", "POST", "Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "urn:\u{0}", "code": "x"}]}})).refused());
    cases.push(Case::json("id with NUL (PUT)", "PUT", "Patient/a%00b", &json!({"resourceType": "Patient", "id": "a\u{0}b"})));
    cases.push(Case::json("id with NUL in body", "PUT", "Patient/ab", &json!({"resourceType": "Patient", "id": "a\u{0}b"})));
    cases.push(Case::json("reference with NUL", "POST", "Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/\u{0}"}})).refused());
    cases.push(Case::json("extension url with NUL", "POST", "Patient", &json!({"resourceType": "Patient", "extension": [{"url": "http://x/\u{0}", "valueString": "x"}]})).refused());
    cases.push(Case::json("narrative with NUL", "POST", "Patient", &json!({"resourceType": "Patient", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">a\u{0}b</div>"}})).refused());
    cases.push(Case::json("U+FFFF in a string", "POST", "Patient", &json!({"resourceType": "Patient", "name": [{"family": "a\u{FFFF}b"}]})));
    cases.push(Case::json("numbers out of range", "POST", "Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1}})));
    // A valid FHIR decimal (its syntax sets no range), outside a double's: not indexed.
    cases.push(Case::send("valueQuantity 1e400", "POST", "Observation", br#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e400}}"#.to_vec()));
    cases.push(Case::send("valueInteger 2^63", "POST", "Observation", br#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueInteger":9223372036854775808}"#.to_vec()).refused());
    cases.push(Case::send("valueQuantity 400 digits", "POST", "Observation", format!(r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{}}}}}"#, "9".repeat(400)).into_bytes()));
    cases.push(Case::json("birthDate 0000-00-00", "POST", "Patient", &json!({"resourceType": "Patient", "birthDate": "0000-00-00"})).refused());
    cases.push(Case::json("birthDate 99999-01-01", "POST", "Patient", &json!({"resourceType": "Patient", "birthDate": "99999-01-01"})).refused());
    cases.push(Case::json("effective far future", "POST", "Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "effectiveDateTime": "9999-12-31T23:59:59.999999999+14:00"})));
    cases.push(Case::send("raw invalid UTF-8 in JSON", "POST", "Patient", b"{\"resourceType\":\"Patient\",\"name\":[{\"family\":\"\xff\xfe\"}]}".to_vec()).refused());
    cases.push(Case::send("lone surrogate escape in JSON", "POST", "Patient", br#"{"resourceType":"Patient","name":[{"family":"\ud800"}]}"#.to_vec()).refused());
    cases.push(Case::send("NUL escape in a key", "POST", "Patient", br#"{"resourceType":"Patient","na\u0000me":[{"family":"x"}]}"#.to_vec()).refused());
    let deep_arrays = format!("{{\"resourceType\":\"Patient\",\"extension\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    cases.push(Case::send("100,000 nested arrays", "POST", "Patient", deep_arrays.into_bytes()).refused());
    let deep_objects = format!("{{\"resourceType\":\"Patient\",\"extension\":[{}{}]}}", "{\"url\":\"http://x\",\"extension\":[".repeat(20_000), "]}".repeat(20_000));
    cases.push(Case::send("20,000 nested extensions", "POST", "Patient", deep_objects.into_bytes()).refused());
    let mut nested = json!({"url": "http://x", "valueString": "leaf"});
    for _ in 0..50 {
        nested = json!({"url": "http://x", "extension": [nested]});
    }
    cases.push(Case::json("50 nested extensions", "POST", "Patient", &json!({"resourceType": "Patient", "extension": [nested]})));
    let mut contained = json!({"resourceType": "Patient", "id": "c"});
    for _ in 0..60 {
        contained = json!({"resourceType": "Patient", "id": "c", "contained": [contained]});
    }
    cases.push(Case::json("60 nested contained", "POST", "Patient", &contained));
    cases.push(Case::json("5,000 names", "POST", "Patient", &json!({"resourceType": "Patient", "name": (0..5000).map(|i| json!({"family": format!("f{i}")})).collect::<Vec<_>>()})));
    cases.push(Case::json("5,000 identifiers", "POST", "Patient", &json!({"resourceType": "Patient", "identifier": (0..5000).map(|i| json!({"system": "urn:x", "value": format!("v{i}")})).collect::<Vec<_>>()})));
    let mut conditional = Case::json("If-None-Exist with %00", "POST", "Patient", &json!({"resourceType": "Patient"}));
    conditional.headers.push(("if-none-exist".into(), "identifier=%00".into()));
    cases.push(conditional);
    let mut conditional = Case::json("If-None-Exist _id=a&_id=b", "POST", "Patient", &json!({"resourceType": "Patient"}));
    conditional.headers.push(("if-none-exist".into(), "_id=a&_id=b".into()));
    cases.push(conditional);
    let mut conditional = Case::json("If-None-Exist with 5,000 values", "POST", "Patient", &json!({"resourceType": "Patient"}));
    conditional.headers.push(("if-none-exist".into(), format!("identifier={}", vec!["a"; 5000].join(","))));
    cases.push(conditional);
    cases.push(Case::json("conditional update %00", "PUT", "Patient?identifier=%00", &json!({"resourceType": "Patient"})));
    cases.push(Case { method: "DELETE", ..Case::get("conditional delete %00", "Patient?identifier=%00") });
    let mut patch = Case::json("PATCH with NUL path", "PATCH", &format!("Patient/{patient}"), &json!([{"op": "add", "path": "/name/0/family\u{0}", "value": "x"}]));
    patch.headers = vec![("content-type".into(), "application/json-patch+json".into())];
    cases.push(patch);
    let mut patch = Case::json("PATCH adding NUL", "PATCH", &format!("Patient/{patient}"), &json!([{"op": "add", "path": "/name/0/family", "value": "a\u{0}b"}]));
    patch.headers = vec![("content-type".into(), "application/json-patch+json".into())];
    cases.push(patch.refused());
    cases.push(Case::json(
        "transaction with hostile urls",
        "POST",
        "",
        &json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": "urn:uuid:\u{0}", "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient", "ifNoneExist": "name=%00"}},
            {"request": {"method": "GET", "url": "Patient?name=%00&_count=99999999999999999999"}}
        ]}),
    ));
    cases.push(Case::json(
        "batch with hostile urls",
        "POST",
        "",
        &json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "GET", "url": "Patient/%00"}},
            {"request": {"method": "GET", "url": "Patient?_offset=9223372036854775808&_sort=name"}},
            {"request": {"method": "GET", "url": "AuditEvent?agent=%00"}},
            {"request": {"method": "GET", "url": "\u{0}"}}
        ]}),
    ));
    cases
}

/// The generated part: the corpus's parameters, modifiers, prefixes and values combined.
fn generated(rng: &mut Rng, n: usize, patient: &str) -> Vec<Case> {
    let long_prose = prose(rng, 3000);
    let values = values(&long_prose);
    let results = ["_count", "_offset", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_contained", "_containedType", "_cursor", "_type", "_list"];
    let mut cases = Vec::with_capacity(n);
    for i in 0..n {
        let (ty, params) = rng.pick(PARAMS);
        let mut parts = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let name = if rng.chance(15) { (*rng.pick(&results)).to_string() } else { format!("{}{}", rng.pick(params), rng.pick(MODIFIERS)) };
            let mut vs = Vec::new();
            let n_values = if rng.chance(20) { 1 + rng.below(4) } else { 1 };
            for _ in 0..n_values {
                vs.push(format!("{}{}", rng.pick(PREFIXES), rng.pick(&values)));
            }
            parts.push(format!("{name}={}", vs.join(",")));
        }
        let query = parts.join("&");
        let case = match rng.below(14) {
            0 => Case::form(format!("generated #{i}: POST {ty}/_search {query}"), &format!("{ty}/_search"), query),
            1 => Case::get(format!("generated #{i}: ?_type={ty}&{query}"), format!("?_type={ty}&{query}")),
            2 => {
                let c = Case::get(format!("generated #{i}: lenient {ty}?{query}"), format!("{ty}?{query}"));
                Case { headers: vec![("prefer".into(), "handling=lenient".into())], ..c }
            }
            3 => Case::get(format!("generated #{i}: Patient/P/{ty}?{query}"), format!("Patient/{patient}/{ty}?{query}")),
            4 => Case::get(format!("generated #{i}: Patient/P/$everything?{query}"), format!("Patient/{patient}/$everything?{query}")),
            5 => Case::get(format!("generated #{i}: {ty}/_history?{query}"), format!("{ty}/_history?{query}")),
            6 => {
                let url = format!("{ty}?{query}");
                let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": url}}, {"request": {"method": "GET", "url": form_urlencoded_decode(&url)}}]});
                Case::json(format!("generated #{i}: batch GET {ty}?{query}"), "POST", "", &bundle)
            }
            _ => Case::get(format!("generated #{i}: {ty}?{query}"), format!("{ty}?{query}")),
        };
        cases.push(case);
    }
    cases
}

async fn hostile_corpus_is_never_a_server_error(s: &Server) {
    let seed: u64 = std::env::var("HOSTILE_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x7e55_e7a0);
    let n: usize = std::env::var("HOSTILE_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(600);
    let mut rng = Rng(seed);
    // Some data for the searches to walk: a patient, observations of it, an audit trail.
    let (st, p) = status(s, &Case::json("setup", "POST", "Patient", &json!({"resourceType": "Patient", "name": [{"family": "Hostile", "given": ["Ann"]}], "birthDate": "1970-01-01", "identifier": [{"system": "urn:x", "value": "h1"}]}))).await;
    assert_eq!(st, 201, "{p}");
    let patient = p["id"].as_str().unwrap().to_string();
    for i in 0..5 {
        let (st, b) = status(
            s,
            &Case::json(
                "setup",
                "POST",
                "Observation",
                &json!({"resourceType": "Observation", "status": "final", "subject": {"reference": format!("Patient/{patient}")},
                    "code": {"coding": [{"system": "http://loinc.org", "code": format!("{i}")}], "text": "hostile"},
                    "effectiveDateTime": "2020-01-01", "valueQuantity": {"value": i, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
            ),
        )
        .await;
        assert_eq!(st, 201, "{b}");
    }
    let mut cases = corpus(&mut rng, &patient);
    let fixed = cases.len();
    cases.extend(generated(&mut rng, n, &patient));
    if let Ok(only) = std::env::var("HOSTILE_ONLY") {
        cases.retain(|c| c.label.contains(&only));
        for c in &cases {
            eprintln!("{} {} {}", c.method, String::from_utf8_lossy(&c.target), String::from_utf8_lossy(&c.body[..c.body.len().min(4000)]));
        }
        cases.extend(std::env::var("HOSTILE_FORM").ok().map(|q| Case::form(format!("HOSTILE_FORM {q}"), "Observation/_search", q)));
    }
    let total = cases.len();
    let mut failures: Vec<(String, String)> = Vec::new();
    for c in &cases {
        let answer = exchange(addr(s), &s.system_token, c).await;
        if let Some(problem) = judge(c, &answer) {
            failures.push((c.label.chars().take(160).collect(), problem));
        }
    }
    // The server still answers.
    let (st, _) = status(s, &Case::get("after", format!("Patient/{patient}"))).await;
    assert_eq!(st, 200, "the server still answers after the corpus");
    if !failures.is_empty() {
        let mut report = format!("{} of {total} hostile requests ({fixed} fixed, {n} generated from seed {seed}) were answered badly:\n", failures.len());
        for (label, problem) in &failures {
            let _ = writeln!(report, "  {label:<60} → {problem}");
        }
        panic!("{report}");
    }
}

/// Values longer than the index keeps (docs/search.md, "Limits"): stored on both backends,
/// found by their start, and told apart by `:exact` and token searches even when their
/// first `KEY_BYTES` bytes are the same.
async fn long_values_are_indexed_and_matched_exactly(s: &Server) {
    let bound = tessera_store::search::KEY_BYTES;
    let mut rng = Rng(42);
    let a = prose(&mut rng, 3000);
    // The same first 2,999 characters, another last one.
    let b = format!("{}{}", &a[..2999], if a.ends_with('q') { 'r' } else { 'q' });
    let huge = prose(&mut rng, 200 * 1024);
    let clef = "𝄞".repeat(1000);
    let id_a = format!("ID-{}", prose(&mut rng, 3000).replace(' ', "-"));
    let id_b = format!("{}X", &id_a[..id_a.len() - 1]);
    assert!(a.len() > bound && a[..bound] == b[..bound] && a != b);
    assert!(id_a[..bound] == id_b[..bound] && id_a != id_b);
    let ids = std::sync::Mutex::new(std::collections::BTreeMap::<String, &str>::new());
    let short = "short".to_string();
    let create = |name: &'static str, value: &str, identifier: &str| {
        let body = json!({"resourceType": "Observation", "status": "final", "code": {"text": "long"},
            "identifier": [{"system": "urn:long", "value": identifier}], "valueString": value});
        let ids = &ids;
        async move {
            let r = s.post("Observation", &body).await;
            assert_eq!(r.status, 201, "{name}: {}", String::from_utf8_lossy(&r.body));
            ids.lock().unwrap().insert(r.json()["id"].as_str().unwrap().to_string(), name);
        }
    };
    let id_of = |name: &str| ids.lock().unwrap().iter().find(|(_, n)| **n == name).unwrap().0.clone();
    let found = |form: String| {
        let ids = &ids;
        async move {
            let r = s.request("POST", "Observation/_search", &[("content-type", "application/x-www-form-urlencoded")], Some(form.as_bytes())).await;
            assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
            let ids = ids.lock().unwrap();
            let mut names: Vec<&str> = r.json()["entry"].as_array().into_iter().flatten().map(|e| *ids.get(e["resource"]["id"].as_str().unwrap()).unwrap()).collect();
            names.sort();
            names
        }
    };
    create("a", &a, &short).await;
    create("b", &b, &short).await;
    create("huge", &huge, &short).await;
    create("clef", &clef, &short).await;
    // Found by their start (the default string search).
    assert_eq!(found(format!("value-string={}", enc(&a[..20]))).await, ["a", "b"]);
    assert_eq!(found(format!("value-string={}", enc(&a[..bound - 1].to_uppercase()))).await, ["a", "b"]);
    assert_eq!(found(format!("value-string={}", enc(&a[..bound]))).await, ["a", "b"]);
    assert_eq!(found(format!("value-string={}", enc(&format!("{}~", &a[..bound - 1])))).await, Vec::<&str>::new());
    assert_eq!(found(format!("value-string={}", enc(&huge[..40]))).await, ["huge"]);
    assert_eq!(found(format!("value-string={}", enc(&clef[..8]))).await, ["clef"]);
    assert_eq!(found(format!("value-string={}", enc(&format!("{}x", &huge[..30])))).await, Vec::<&str>::new());
    // Longer than the bound: matched on the first bytes (documented).
    assert_eq!(found(format!("value-string={}", enc(&a))).await, ["a", "b"]);
    // `:exact`: the whole value decides.
    assert_eq!(found(format!("value-string:exact={}", enc(&a))).await, ["a"]);
    assert_eq!(found(format!("value-string:exact={}", enc(&b))).await, ["b"]);
    assert_eq!(found(format!("value-string:exact={}", enc(&a[..2999]))).await, Vec::<&str>::new());
    assert_eq!(found(format!("value-string:exact={}", enc(&a.to_uppercase()))).await, Vec::<&str>::new());
    assert_eq!(found(format!("value-string:exact={}", enc(&clef))).await, ["clef"]);
    // `:contains`: within the first bytes.
    let middle = &huge[300..330];
    assert_eq!(found(format!("value-string:contains={}", enc(middle))).await, ["huge"]);
    // Tokens: the whole identifier decides.
    create("id-a", &short, &id_a).await;
    create("id-b", &short, &id_b).await;
    assert_eq!(found(format!("identifier=urn:long%7C{}", enc(&id_a))).await, ["id-a"]);
    assert_eq!(found(format!("identifier={}", enc(&id_b))).await, ["id-b"]);
    assert_eq!(found(format!("identifier={}", enc(&id_a[..id_a.len() - 1]))).await, Vec::<&str>::new());
    assert_eq!(found(format!("identifier=urn:long%7C{},{}", enc(&id_a), enc(&id_b))).await, ["id-a", "id-b"]);
    assert_eq!(found("identifier=urn:long%7Cshort".to_string()).await, ["a", "b", "clef", "huge"]);
    // Updating and deleting a long value leaves no row behind.
    let id = id_of("a");
    let r = s.put(&format!("Observation/{id}"), &json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "long"}, "valueString": "short now"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(found(format!("value-string:exact={}", enc(&a))).await, Vec::<&str>::new());
    assert_eq!(found(format!("value-string={}", enc(&a[..20]))).await, ["b"]);
    let id = id_of("id-a");
    let r = s.put(&format!("Observation/{id}"), &json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "long"}, "valueString": "short"})).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(found(format!("identifier={}", enc(&id_a))).await, Vec::<&str>::new());
    let id = id_of("huge");
    let r = s.request("DELETE", &format!("Observation/{id}"), &[], None).await;
    assert!(r.status < 300, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(found(format!("value-string={}", enc(&huge[..40]))).await, Vec::<&str>::new());
}
