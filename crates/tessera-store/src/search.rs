//! The search index and the queries the store answers over it.
//!
//! Each [`Write`](crate::Write) carries the index entries of its resource
//! (`tessera_search::index_resource`). The store keeps the entries of current versions
//! only, one table per value kind (`sp_token`, `sp_string`, `sp_date`, `sp_quantity` (numbers
//! and quantities), `sp_reference`, `sp_uri`), each row holding the version's `seq`: a write
//! deletes the rows of the version it replaces and inserts its own, in the same
//! transaction; a deletion leaves none. (`_id` is answered by `resource_current`,
//! `_lastUpdated` by `resource_version`, and the parameters R4 derives from others
//! (`tessera_search::derived`) by those others' rows: none of them has rows of its own.
//! Contained resources' rows are kept at [`contained_seq`]s.) A parameter is identified by
//! [`param_key`], a stable
//! 31-bit hash of `Type.code` (a test checks the shipped parameters do not collide), so
//! rows stay small and no lookup table is needed.
//!
//! An [`IndexQuery`] is a conjunction of [`Clause`]s, each a disjunction of [`Pred`]icates,
//! over one resource type. Chains, `_has` and includes are resolved by the engine (through
//! the enforcement point) into explicit id lists before they reach the store, so the store
//! never evaluates anything about data the reader may not see.
//!
//! **Long values.** Every text column of the index tables holds [`index_key`] of its value,
//! and every text value a query compares with one goes through the same function: at most
//! [`KEY_BYTES`] bytes of the value, cut at a character boundary, followed, when the value
//! was longer, by [`CUT`] and a 128-bit digest of the whole value written in Unicode
//! noncharacters. (NUL and noncharacters of the value itself are kept as U+FFFD, so no
//! value, stored or queried, contains a noncharacter except as that mark.) Rows therefore
//! stay far below PostgreSQL's B-tree limit of 2,704 bytes per index tuple, and:
//! equality (tokens, `:exact`, URIs, references) is decided on the whole value, whatever
//! its length (the digest); a starts-with query of at most `KEY_BYTES` bytes is exact (a
//! longer one matches the values whose first `KEY_BYTES` bytes it starts with); `:contains`
//! finds text within the first `KEY_BYTES` bytes of a value.

use sha2::Digest;
use std::borrow::Cow;
use tessera_search::{IndexEntry, IndexValue};

/// The most bytes of a value an index row keeps (see [`index_key`]). With the mark and
/// digest a column holds at most `KEY_BYTES + 3 + 78` = 881 bytes, so the widest index
/// (two text columns and a few integers) stays under 1,800 bytes.
pub const KEY_BYTES: usize = 800;

/// The mark after the kept start of a value that was cut: U+FFFF, a noncharacter, which no
/// key contains otherwise.
pub const CUT: char = '\u{FFFF}';

/// The digits of the digest of a cut value: 26 five-bit digits (130 ≥ 128 bits), each a
/// noncharacter of U+FDD0..U+FDEF.
const DIGEST_DIGITS: usize = 26;

/// Characters that an index key never holds as themselves: NUL (PostgreSQL's `text` cannot
/// hold it) and the Unicode noncharacters (U+FDD0..U+FDEF and U+xFFFE/U+xFFFF of every
/// plane: the mark and digest of cut values are made of them).
fn unkeyable(c: char) -> bool {
    let u = c as u32;
    u == 0 || (0xFDD0..=0xFDEF).contains(&u) || u & 0xFFFE == 0xFFFE
}

/// The form in which a text value is kept in an index column, and compared with one.
///
/// NUL and noncharacters become U+FFFD. A value of at most [`KEY_BYTES`] bytes is then kept
/// as it is; a longer one as its first `KEY_BYTES` bytes (or fewer, at a character
/// boundary), [`CUT`], and the first 128 bits of the SHA-256 of the whole value in 26
/// noncharacters. A cut key is longer than `KEY_BYTES` bytes, and no other key is: two
/// keys are equal exactly when the values are (up to the substitutions above), and a key
/// of at most `KEY_BYTES` bytes is a prefix of another key exactly when it is a prefix of
/// that key's value.
pub fn index_key(s: &str) -> Cow<'_, str> {
    let clean = substituted(s);
    if clean.len() <= KEY_BYTES {
        return clean;
    }
    let mut end = KEY_BYTES;
    while !clean.is_char_boundary(end) {
        end -= 1;
    }
    let digest = sha2::Sha256::digest(clean.as_bytes());
    let mut bits = u128::from_be_bytes(digest[..16].try_into().expect("32 bytes"));
    let mut out = String::with_capacity(end + 3 + 3 * DIGEST_DIGITS);
    out.push_str(&clean[..end]);
    out.push(CUT);
    for _ in 0..DIGEST_DIGITS {
        out.push(char::from_u32(0xFDD0 + (bits & 31) as u32).expect("a noncharacter"));
        bits >>= 5;
    }
    Cow::Owned(out)
}

/// The value with NUL and noncharacters replaced by U+FFFD (the first step of
/// [`index_key`]).
fn substituted(s: &str) -> Cow<'_, str> {
    // The UTF-8 form of every noncharacter starts with 0xEF (U+FDD0…, U+FFFE/F) or 0xF0…0xF4
    // (the other planes'): most values are only scanned.
    if s.bytes().any(|b| b == 0 || b >= 0xEF) && s.chars().any(unkeyable) {
        Cow::Owned(s.chars().map(|c| if unkeyable(c) { '\u{FFFD}' } else { c }).collect())
    } else {
        Cow::Borrowed(s)
    }
}

/// [`index_key`] of an owned value, without a copy when the value is its own key.
fn key(s: String) -> String {
    match index_key(&s) {
        Cow::Borrowed(_) => s,
        Cow::Owned(k) => k,
    }
}

/// The start of the key of a value that every key starting with the value starts with:
/// the key itself when the value was not cut, else its kept start and [`CUT`] (all the
/// cut values with that start).
fn key_start(s: &str) -> Cow<'_, str> {
    match index_key(s) {
        Cow::Owned(mut k) if k.len() > KEY_BYTES => {
            let end = k.find(CUT).expect("a cut key has the mark") + CUT.len_utf8();
            k.truncate(end);
            Cow::Owned(k)
        }
        k => k,
    }
}

/// The stable key of search parameter `code` on `resource_type`: FNV-1a of `Type.code`,
/// 31 bits (positive, four bytes in SQLite's record format).
pub fn param_key(resource_type: &str, code: &str) -> i64 {
    let mut h: u32 = 0x811c_9dc5;
    for b in resource_type.bytes().chain(std::iter::once(b'.')).chain(code.bytes()) {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    (h & 0x7fff_ffff) as i64
}

/// The index tables, by value kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Token,
    PatientToken,
    String,
    Date,
    Quantity,
    Reference,
    Uri,
    TokenQuantity,
    TokenToken,
    TokenText,
}

impl Table {
    pub const ALL: [Table; 10] = [
        Table::Token,
        Table::PatientToken,
        Table::String,
        Table::Date,
        Table::Quantity,
        Table::Reference,
        Table::Uri,
        Table::TokenQuantity,
        Table::TokenToken,
        Table::TokenText,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Table::Token => "sp_token",
            Table::PatientToken => "sp_token_pc",
            Table::String => "sp_string",
            Table::Date => "sp_date",
            Table::Quantity => "sp_quantity",
            Table::Reference => "sp_reference",
            Table::Uri => "sp_uri",
            Table::TokenQuantity => "sp_token_quantity",
            Table::TokenToken => "sp_token_token",
            Table::TokenText => "sp_token_text",
        }
    }

    /// The table a search parameter type (`token`, `string`, …) is indexed in.
    pub fn for_kind(kind: &str) -> Option<Table> {
        Some(match kind {
            "token" => Table::Token,
            "string" => Table::String,
            "date" => Table::Date,
            "number" | "quantity" => Table::Quantity,
            "reference" => Table::Reference,
            "uri" => Table::Uri,
            _ => return None,
        })
    }
}

/// A row of an index table, as the backends insert it. Text columns hold [`index_key`]s
/// ([`rows`] makes them so).
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Token { p: i64, system: String, code: String },
    /// A token of a resource in `patient`'s compartment (`sp_token_pc`): lets searches
    /// such as `Observation?patient=P&code=X` walk only that patient's rows.
    PatientToken { p: i64, patient: String, system: String, code: String },
    String { p: i64, norm: String, exact: String },
    Date { p: i64, low: i64, high: i64 },
    Quantity { p: i64, value: f64, low: f64, high: f64, system: String, code: String },
    Reference { p: i64, target_type: String, target_id: String, url: String },
    Uri { p: i64, uri: String },
    /// A composite of a token and a quantity (`code-value-quantity` …).
    TokenQuantity { p: i64, system: String, code: String, value: f64, low: f64, high: f64, unit_system: String, unit: String },
    /// A composite of two tokens (`code-value-concept` …).
    TokenToken { p: i64, system: String, code: String, system2: String, code2: String },
    /// The text of a coded value (display, `CodeableConcept.text`), normalised, for `:text`.
    TokenText { p: i64, text: String },
    /// A row of the `sub`-th contained resource (from 1): stored at [`contained_seq`].
    Contained { sub: u8, row: Box<Row> },
}

impl std::hash::Hash for Row {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        // Consistent with `PartialEq`: 0.0 and -0.0 are equal, so they hash alike.
        let f = |v: &f64, h: &mut H| h.write_u64(if *v == 0.0 { 0 } else { v.to_bits() });
        std::mem::discriminant(self).hash(h);
        match self {
            Row::Token { p, system, code } => (p, system, code).hash(h),
            Row::PatientToken { p, patient, system, code } => (p, patient, system, code).hash(h),
            Row::String { p, norm, exact } => (p, norm, exact).hash(h),
            Row::Date { p, low, high } => (p, low, high).hash(h),
            Row::Quantity { p, value, low, high, system, code } => {
                (p, system, code).hash(h);
                for v in [value, low, high] {
                    f(v, h);
                }
            }
            Row::Reference { p, target_type, target_id, url } => (p, target_type, target_id, url).hash(h),
            Row::Uri { p, uri } => (p, uri).hash(h),
            Row::TokenQuantity { p, system, code, value, low, high, unit_system, unit } => {
                (p, system, code, unit_system, unit).hash(h);
                for v in [value, low, high] {
                    f(v, h);
                }
            }
            Row::TokenToken { p, system, code, system2, code2 } => (p, system, code, system2, code2).hash(h),
            Row::TokenText { p, text } => (p, text).hash(h),
            Row::Contained { sub, row } => {
                sub.hash(h);
                row.hash(h);
            }
        }
    }
}

/// The rows of one resource, each once, in the order first made: linear in the number of
/// rows however many a resource has (a Patient with 16,000 names).
#[derive(Default)]
struct UniqueRows {
    rows: Vec<Row>,
    seen: std::collections::HashMap<u64, Vec<usize>>,
}

impl UniqueRows {
    fn push(&mut self, row: Row) {
        use std::hash::{BuildHasher, Hash, Hasher};
        let mut h = self.seen.hasher().build_hasher();
        row.hash(&mut h);
        let slot = self.seen.entry(h.finish()).or_default();
        if slot.iter().any(|&i| self.rows[i] == row) {
            return;
        }
        slot.push(self.rows.len());
        self.rows.push(row);
    }
}

impl Row {
    /// The row with every text column as its [`index_key`].
    fn keyed(self) -> Row {
        match self {
            Row::Token { p, system, code } => Row::Token { p, system: key(system), code: key(code) },
            Row::PatientToken { p, patient, system, code } => Row::PatientToken { p, patient: key(patient), system: key(system), code: key(code) },
            Row::String { p, norm, exact } => Row::String { p, norm: key(norm), exact: key(exact) },
            Row::Date { .. } => self,
            Row::Quantity { p, value, low, high, system, code } => Row::Quantity { p, value, low, high, system: key(system), code: key(code) },
            Row::Reference { p, target_type, target_id, url } => {
                Row::Reference { p, target_type: key(target_type), target_id: key(target_id), url: key(url) }
            }
            Row::Uri { p, uri } => Row::Uri { p, uri: key(uri) },
            Row::TokenQuantity { p, system, code, value, low, high, unit_system, unit } => Row::TokenQuantity {
                p,
                system: key(system),
                code: key(code),
                value,
                low,
                high,
                unit_system: key(unit_system),
                unit: key(unit),
            },
            Row::TokenToken { p, system, code, system2, code2 } => {
                Row::TokenToken { p, system: key(system), code: key(code), system2: key(system2), code2: key(code2) }
            }
            Row::TokenText { p, text } => Row::TokenText { p, text: key(text) },
            Row::Contained { sub, row } => Row::Contained { sub, row: Box::new(row.keyed()) },
        }
    }
}

/// The token parameter that also gets patient-scoped rows (`sp_token_pc`).
pub const PATIENT_SCOPED_PARAM: &str = "code";

/// The rows a resource's index entries make (duplicates removed).
pub fn rows(resource_type: &str, entries: &[IndexEntry]) -> Vec<Row> {
    let mut out = UniqueRows { rows: Vec::with_capacity(entries.len()), seen: Default::default() };
    // The patients whose compartment the resource is in: those its compartment parameters
    // refer to.
    let compartment_params = tessera_fhir::definitions::patient_compartment_params(resource_type);
    let mut patients: Vec<&str> = Vec::new();
    for e in entries {
        if let IndexValue::Reference { target_type: Some(t), target_id: Some(id), .. } = &e.value {
            if t == "Patient" && compartment_params.iter().any(|c| c.code == e.param) && !patients.contains(&id.as_str()) {
                patients.push(id);
            }
        }
    }
    for e in entries {
        // A contained resource's entries (`#1:Medication.code`) are keyed by its type and
        // `#code`, and placed at the contained resource's own `seq` ([`contained_seq`]); its
        // `_id` gets a row (every contained resource has one).
        let (key_type, param, sub) = match e.param.strip_prefix('#').and_then(|r| r.split_once(':')).and_then(|(n, r)| Some((n.parse::<u8>().ok()?, r.split_once('.')?))) {
            Some((n, (t, p))) => (t, p, n),
            None => (resource_type, e.param.as_str(), 0),
        };
        let contained = sub > 0;
        let wrap = |row: Row| if contained { Row::Contained { sub, row: Box::new(row) } } else { row };
        if (param == "_id" && !contained) || param == "_lastUpdated" {
            continue; // answered by `resource_current` and `resource_version`
        }
        if tessera_search::derived(key_type, param).is_some() {
            continue; // answered from the rows of the parameters it derives from
        }
        let p = if contained { param_key(key_type, &format!("#{param}")) } else { param_key(resource_type, param) };
        let row = match &e.value {
            IndexValue::Token { system, code, text } => {
                // Tessera's own owner/author tags and seals: ownership is a column of its own.
                // (Its code systems — the patient index's worklist — are indexed as any.)
                if system.as_deref().is_some_and(|s| matches!(s, "https://tessera.health/owner" | "https://tessera.health/author" | "https://tessera.health/security")) {
                    continue;
                }
                if let Some(text) = text.as_ref().filter(|t| !t.is_empty()) {
                    let row = wrap(Row::TokenText { p, text: text.clone() }.keyed());
                    out.push(row);
                }
                // Patient-scoped rows for the resource's principal code only: the selective
                // value that patient-centred searches combine with the patient.
                let scoped: &[&str] = if !contained && param == PATIENT_SCOPED_PARAM { &patients } else { &[] };
                for patient in scoped {
                    let row = Row::PatientToken { p, patient: patient.to_string(), system: system.clone().unwrap_or_default(), code: code.clone() }.keyed();
                    out.push(row);
                }
                Row::Token { p, system: system.clone().unwrap_or_default(), code: code.clone() }
            }
            IndexValue::String { normalized, exact } => Row::String { p, norm: normalized.clone(), exact: exact.clone() },
            IndexValue::Date { low, high } => Row::Date { p, low: *low, high: *high },
            IndexValue::Number { value, low, high } => {
                Row::Quantity { p, value: *value, low: *low, high: *high, system: String::new(), code: String::new() }
            }
            IndexValue::Quantity { value, low, high, system, code, unit } => Row::Quantity {
                p,
                value: *value,
                low: *low,
                high: *high,
                system: system.clone().unwrap_or_default(),
                code: code.clone().or_else(|| unit.clone()).unwrap_or_default(),
            },
            IndexValue::Reference { target_type, target_id, url } => Row::Reference {
                p,
                target_type: target_type.clone().unwrap_or_default(),
                target_id: target_id.clone().unwrap_or_default(),
                url: url.clone().unwrap_or_default(),
            },
            IndexValue::Uri(uri) => Row::Uri { p, uri: uri.clone() },
            IndexValue::Composite(parts) => match parts.as_slice() {
                [IndexValue::Token { system, code, .. }, IndexValue::Quantity { value, low, high, system: us, code: uc, unit }] => {
                    Row::TokenQuantity {
                        p,
                        system: system.clone().unwrap_or_default(),
                        code: code.clone(),
                        value: *value,
                        low: *low,
                        high: *high,
                        unit_system: us.clone().unwrap_or_default(),
                        unit: uc.clone().or_else(|| unit.clone()).unwrap_or_default(),
                    }
                }
                [IndexValue::Token { system, code, .. }, IndexValue::Token { system: s2, code: c2, .. }] => Row::TokenToken {
                    p,
                    system: system.clone().unwrap_or_default(),
                    code: code.clone(),
                    system2: s2.clone().unwrap_or_default(),
                    code2: c2.clone(),
                },
                // Token + date: the date range in the quantity columns (microseconds are
                // exact in a double up to year 287,000).
                [IndexValue::Token { system, code, .. }, IndexValue::Date { low, high }] => Row::TokenQuantity {
                    p,
                    system: system.clone().unwrap_or_default(),
                    code: code.clone(),
                    value: *low as f64,
                    low: *low as f64,
                    high: *high as f64,
                    unit_system: String::new(),
                    unit: String::new(),
                },
                // Token + string: the normalised string as the second code.
                [IndexValue::Token { system, code, .. }, IndexValue::String { normalized, .. }] => Row::TokenToken {
                    p,
                    system: system.clone().unwrap_or_default(),
                    code: code.clone(),
                    system2: String::new(),
                    code2: normalized.clone(),
                },
                // Reference + token (`DocumentReference.relationship`): the target's type and
                // id (or its URL) as the first token.
                [IndexValue::Reference { target_type, target_id, url }, IndexValue::Token { system: s2, code: c2, .. }] => Row::TokenToken {
                    p,
                    system: target_type.clone().unwrap_or_default(),
                    code: target_id.clone().or_else(|| url.clone()).unwrap_or_default(),
                    system2: s2.clone().unwrap_or_default(),
                    code2: c2.clone(),
                },
                // Token + two numbers (`MolecularSequence` coordinates): start and end.
                [IndexValue::Token { system, code, .. }, IndexValue::Number { value: start, .. }, IndexValue::Number { value: end, .. }] => Row::TokenQuantity {
                    p,
                    system: system.clone().unwrap_or_default(),
                    code: code.clone(),
                    value: *start,
                    low: *start,
                    high: *end,
                    unit_system: String::new(),
                    unit: String::new(),
                },
                _ => continue,
            },
        };
        let row = wrap(row.keyed());
        out.push(row);
    }
    out.rows
}

/// The first `seq` beyond those of versions: contained resources are placed above it.
pub(crate) const CONTAINED_BASE: i64 = 1 << 56;

/// The `seq` at which the index rows of the `sub`-th contained resource (from 1) of the
/// version `seq` are kept: above every version's `seq`, growing with `seq`, so that the
/// rows of one contained resource match together and order as their container.
pub fn contained_seq(seq: i64, sub: u8) -> i64 {
    CONTAINED_BASE + seq * 64 + sub as i64
}

/// The container `seq` and position of a contained resource's `seq`, if it is one.
pub fn container_of(seq: i64) -> Option<(i64, u8)> {
    (seq >= CONTAINED_BASE).then(|| ((seq - CONTAINED_BASE) / 64, ((seq - CONTAINED_BASE) % 64) as u8))
}

/// The rows of a version at `seq`, each with the `seq` it is stored at (contained
/// resources' rows at theirs).
pub fn placed(seq: i64, rows: &[Row]) -> impl Iterator<Item = (i64, &Row)> {
    rows.iter().map(move |r| match r {
        Row::Contained { sub, row } => (contained_seq(seq, *sub), row.as_ref()),
        other => (seq, other),
    })
}

/// The same, taking the rows.
pub fn placed_owned(seq: i64, rows: Vec<Row>) -> impl Iterator<Item = (i64, Row)> {
    rows.into_iter().map(move |r| match r {
        Row::Contained { sub, row } => (contained_seq(seq, sub), *row),
        other => (seq, other),
    })
}

/// Date and number comparison prefixes (as parsed from the request).
pub use tessera_search::query::Prefix;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StringMode {
    /// Starts with (case- and accent-insensitive: the value is normalised).
    Prefix,
    Exact,
    Contains,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UriMode {
    Equals,
    /// The indexed URI starts with the value.
    Below,
    /// The value starts with the indexed URI.
    Above,
}

/// One condition on a resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Pred {
    /// `_id` is one of these.
    Ids(Vec<String>),
    /// A token: `system` `None` = any system, `Some("")` = no system; `code` `None` = any code.
    Token { param: String, system: Option<String>, code: Option<String> },
    String { param: String, mode: StringMode, value: String },
    /// The value's range `[low, high]` (microseconds, inclusive) against the prefix.
    Date { param: String, prefix: Prefix, low: i64, high: i64 },
    /// Numbers and quantities: `value` as given, `[low, high)` the range its precision
    /// implies; `system`/`code` restrict the unit (quantities).
    Number { param: String, prefix: Prefix, value: f64, low: f64, high: f64, system: Option<String>, code: Option<String> },
    /// A reference to one of `ids` (of `target_type` if given), or to `url`.
    Reference { param: String, target_type: Option<String>, ids: Vec<String>, url: Option<String> },
    Uri { param: String, mode: UriMode, value: String },
    /// `:missing`: the resource has (`false`) or lacks (`true`) a value for the parameter.
    Missing { param: String, table: Table, missing: bool },
    /// The resource is in this patient's compartment (by its primary compartment).
    Compartment(String),
    /// The resource is of one of these types.
    Types(Vec<String>),
    /// A token + quantity composite (`code-value-quantity=http://loinc.org|8480-6$gt140`).
    TokenQuantity {
        param: String,
        system: Option<String>,
        code: String,
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        unit_system: Option<String>,
        unit: Option<String>,
    },
    /// A token + token composite (`code-value-concept=…|…$…|…`); with `prefix2`, the second
    /// value is a normalised string the indexed one starts with (token + string), and a
    /// reference + token composite has the target type as `system` and its id as `code`.
    TokenToken { param: String, system: Option<String>, code: String, system2: Option<String>, code2: String, prefix2: bool },
    /// A token + date composite (`code-value-date=…$ge2020`).
    TokenDate { param: String, system: Option<String>, code: String, prefix: Prefix, low: i64, high: i64 },
    /// A token + start + end composite (`chromosome-variant-coordinate=1$ge100$lt200`):
    /// `value` compares with the start (`start_prefix`) and `end` with the end.
    TokenRange { param: String, system: Option<String>, code: String, start_prefix: Prefix, start: (f64, f64, f64), end_prefix: Prefix, end: (f64, f64, f64) },
    /// `:text` on a token: the normalised text starts with `value`.
    TokenText { param: String, value: String },
}

/// A disjunction of predicates, optionally negated (`:not`, `ne`).
#[derive(Debug, Clone, PartialEq)]
pub struct Clause {
    pub any: Vec<Pred>,
    pub negate: bool,
}

/// How results are ordered.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    /// By commit order (= `_lastUpdated`).
    LastUpdated { descending: bool },
    Id { descending: bool },
    /// By the smallest (ascending) or largest (descending) value of a parameter.
    Param { param: String, table: Table, descending: bool },
}

/// A search over the index of one resource type (or all types).
#[derive(Debug, Clone, PartialEq)]
pub struct IndexQuery {
    pub resource_type: Option<String>,
    pub clauses: Vec<Clause>,
    /// Default: newest first.
    pub sort: Vec<SortKey>,
    /// Only versions committed before this `seq` (the paging cursor of unsorted queries).
    pub before_seq: Option<i64>,
    /// Only versions committed after this `seq` (the cursor of oldest-first listings).
    pub after_seq: Option<i64>,
    /// Skip this many matches (sorted queries page by offset).
    pub offset: usize,
    pub limit: usize,
    /// `_contained=true`: the parameters (written `#code`) are those of contained resources
    /// of `resource_type`, and the matches are their containers, of any type.
    pub contained: bool,
}

impl IndexQuery {
    pub fn new(resource_type: Option<&str>) -> IndexQuery {
        IndexQuery { resource_type: resource_type.map(str::to_string), clauses: Vec::new(), sort: Vec::new(), before_seq: None, after_seq: None, offset: 0, limit: 100, contained: false }
    }
}

/// A bind argument.
#[derive(Debug, Clone, PartialEq)]
pub enum Arg {
    Int(i64),
    Real(f64),
    Text(String),
}

/// The SQL dialects the backends speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// Builds SQL with numbered placeholders.
pub struct SqlBuilder {
    pub dialect: Dialect,
    pub sql: String,
    pub args: Vec<Arg>,
}

impl SqlBuilder {
    pub fn new(dialect: Dialect) -> SqlBuilder {
        SqlBuilder { dialect, sql: String::new(), args: Vec::new() }
    }

    /// Adds an argument and returns its placeholder.
    pub fn arg(&mut self, a: Arg) -> String {
        self.args.push(a);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.args.len()),
            Dialect::Postgres => {
                let cast = match self.args.last() {
                    Some(Arg::Int(_)) => "::bigint",
                    Some(Arg::Real(_)) => "::float8",
                    _ => "::text",
                };
                format!("${}{cast}", self.args.len())
            }
        }
    }

    /// A text value compared with an index column, as its [`index_key`]. (Ids, types and
    /// compartments of `resource_current` are their own keys: short, without NUL or
    /// noncharacters.)
    fn text(&mut self, s: &str) -> String {
        self.arg(Arg::Text(index_key(s).into_owned()))
    }

    /// A text argument as it is (a pattern made of keys).
    fn raw(&mut self, s: String) -> String {
        self.arg(Arg::Text(s))
    }

    /// `{col} = value`.
    fn eq(&mut self, col: &str, value: &str) -> String {
        let v = self.text(value);
        format!("{col} = {v}")
    }

    /// `{col}` starts with `value` (a range on the column, so that its key is used). Exact
    /// for a value of at most [`KEY_BYTES`] bytes (no key holds U+10FFFF); a longer value
    /// selects the cut values with the same first bytes.
    fn starts_with(&mut self, col: &str, value: &str) -> String {
        let start = key_start(value).into_owned();
        let lo = self.raw(start.clone());
        let hi = self.raw(format!("{start}\u{10ffff}"));
        format!("{col} >= {lo} AND {col} < {hi}")
    }

    fn int(&mut self, i: i64) -> String {
        self.arg(Arg::Int(i))
    }

    fn real(&mut self, f: f64) -> String {
        self.arg(Arg::Real(f))
    }

    fn not_deleted(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "c.deleted = 0",
            Dialect::Postgres => "NOT c.deleted",
        }
    }
}

/// `SELECT … seq …` for the query: the `seq`s of the matching current versions, in order.
///
/// Two plans. When results are in commit order (the default) and a clause can drive —
/// a single positive predicate on an index table — the query walks that table's rows
/// newest first and probes every other clause by `seq` (each index table has a key that
/// starts with the parameter and leads to `seq` quickly), stopping at the limit. Otherwise
/// it walks `resource_current` of the type with the same probes.
pub fn select_sql(q: &IndexQuery, dialect: Dialect) -> SqlBuilder {
    build_sql(q, dialect, false)
}

/// `SELECT count(…)` of the query's matches: the plan of [`select_sql`] without order,
/// offset or limit (sort keys are ignored).
pub fn count_sql(q: &IndexQuery, dialect: Dialect) -> SqlBuilder {
    let mut q = q.clone();
    q.sort.clear();
    q.offset = 0;
    build_sql(&q, dialect, true)
}

/// The per-code count that answers the query, when it is one token with a system and a
/// code on a parameter with rows of its own, and nothing else: `(p, system, code)`.
pub fn counts_one_token(q: &IndexQuery) -> Option<(i64, &str, &str)> {
    let ty = q.resource_type.as_deref()?;
    if q.before_seq.is_some() || q.after_seq.is_some() || q.contained {
        return None;
    }
    let [clause] = q.clauses.as_slice() else { return None };
    let ([Pred::Token { param, system: Some(system), code: Some(code) }], false) = (clause.any.as_slice(), clause.negate) else { return None };
    let p = param_key(ty, param);
    (tessera_search::derived(ty, param).is_none() && counted_token(p)).then_some((p, system.as_str(), code.as_str()))
}

/// Whether the writer keeps a per-code count (`token_count`) for the token parameter with
/// key `p`: coded values (codes, `Coding`, `CodeableConcept`, labels and tags), not
/// identifiers, telecoms or ids, whose values are nearly all distinct (a count per value
/// would double their rows for nothing).
pub fn counted_token(p: i64) -> bool {
    static COUNTED: std::sync::LazyLock<std::collections::HashSet<i64>> = std::sync::LazyLock::new(|| {
        let mut keys = std::collections::HashSet::new();
        for ty in tessera_fhir::definitions::resource_types() {
            for sp in tessera_fhir::definitions::search_parameters_for(ty) {
                let expression = sp.expression.as_deref().unwrap_or("");
                let distinct = ["identifier", "Identifier", "telecom", "phone", "email"].iter().any(|w| sp.code.contains(w) || expression.contains(w));
                if sp.kind == "token" && sp.code != "_id" && !distinct {
                    keys.insert(param_key(ty, &sp.code));
                }
            }
        }
        keys
    });
    COUNTED.contains(&p)
}

/// Per-code count changes (`token_count`) of the rows of one write: +1 for each row added,
/// -1 for each row removed, of the resources themselves (contained rows are not counted).
#[derive(Debug, Default)]
pub struct TokenCounts(pub std::collections::BTreeMap<(i64, String, String), i64>);

impl TokenCounts {
    pub fn add(&mut self, seq: i64, row: &Row, delta: i64) {
        if let Row::Token { p, system, code } = row {
            if seq < CONTAINED_BASE {
                self.add_key(*p, code, system, delta);
            }
        }
    }

    /// `delta` rows of the resources themselves (not contained) with this key.
    pub fn add_key(&mut self, p: i64, code: &str, system: &str, delta: i64) {
        if counted_token(p) {
            *self.0.entry((p, code.to_string(), system.to_string())).or_default() += delta;
        }
    }

    /// The changes that are not zero, in key order.
    pub fn changes(&self) -> impl Iterator<Item = (&(i64, String, String), i64)> {
        self.0.iter().filter(|(_, d)| **d != 0).map(|(k, d)| (k, *d))
    }
}

/// Whether the query counts every live resource of one type (a per-type count answers it).
pub fn counts_whole_type(q: &IndexQuery) -> Option<&str> {
    let whole = q.clauses.is_empty() && q.before_seq.is_none() && q.after_seq.is_none() && !q.contained;
    q.resource_type.as_deref().filter(|_| whole)
}

fn build_sql(q: &IndexQuery, dialect: Dialect, count: bool) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    let ty = q.resource_type.clone().unwrap_or_default();
    let default_order = q.after_seq.is_none() && q.sort.iter().all(|k| matches!(k, SortKey::LastUpdated { descending: true }));
    let driver = if default_order && !ty.is_empty() { choose_driver(q) } else { None };
    if let Some((t, patient)) = if default_order && !ty.is_empty() { patient_token_driver(q, &ty) } else { None } {
        // The coded value within the patient's compartment drives; every clause (the
        // reference to the patient included) is probed.
        let Pred::Token { param, system, code } = &q.clauses[t].any[0] else { unreachable!("chosen as a token") };
        let k = b.int(param_key(&ty, param));
        let pv = b.text(&patient);
        let mut conditions = vec![format!("x.p = {k}"), format!("x.patient = {pv}")];
        if let Some(code) = code {
            conditions.push(b.eq("x.code", code));
        }
        if let Some(system) = system {
            conditions.push(b.eq("x.system", system));
        }
        if let Some(before) = q.before_seq {
            let v = b.int(before);
            conditions.push(format!("x.seq < {v}"));
        }
        for (n, clause) in q.clauses.iter().enumerate() {
            if n != t {
                conditions.push(clause_sql(&mut b, &ty, clause, "x.seq", false));
            }
        }
        if count {
            b.sql = format!("SELECT count(DISTINCT x.seq) FROM sp_token_pc x WHERE {}", conditions.join(" AND "));
            return b;
        }
        let limit = b.int(i64::try_from(q.limit).unwrap_or(i64::MAX));
        let offset = b.int(i64::try_from(q.offset).unwrap_or(i64::MAX));
        b.sql = format!(
            "SELECT DISTINCT x.seq FROM sp_token_pc x WHERE {} ORDER BY x.seq DESC LIMIT {limit} OFFSET {offset}",
            conditions.join(" AND ")
        );
        return b;
    }
    if let Some(d) = driver {
        let Some((table, conds)) = index_pred(&mut b, &ty, &q.clauses[d].any[0], "x", false) else { unreachable!("drivers are index predicates") };
        let mut conditions = conds;
        if let Some(before) = q.before_seq {
            let v = b.int(before);
            conditions.push(format!("x.seq < {v}"));
        }
        for (n, clause) in q.clauses.iter().enumerate() {
            if n != d {
                conditions.push(clause_sql(&mut b, &ty, clause, "x.seq", false));
            }
        }
        if count {
            // A token with system and code names whole keys: each `seq` once per row.
            let keyed = matches!(&q.clauses[d].any[0], Pred::Token { system: Some(_), code: Some(_), .. }) && table == Table::Token;
            let what = if keyed { "count(*)" } else { "count(DISTINCT x.seq)" };
            b.sql = format!("SELECT {what} FROM {} x WHERE {}", table.name(), conditions.join(" AND "));
            return b;
        }
        let limit = b.int(i64::try_from(q.limit).unwrap_or(i64::MAX));
        let offset = b.int(i64::try_from(q.offset).unwrap_or(i64::MAX));
        b.sql = format!(
            "SELECT DISTINCT x.seq FROM {} x WHERE {} ORDER BY x.seq DESC LIMIT {limit} OFFSET {offset}",
            table.name(),
            conditions.join(" AND ")
        );
        return b;
    }
    let mut conditions = vec![b.not_deleted().to_string()];
    if let Some(t) = q.resource_type.as_ref().filter(|_| !q.contained) {
        let t = b.text(t);
        conditions.push(format!("c.res_type = {t}"));
    }
    if let Some(before) = q.before_seq {
        let v = b.int(before);
        conditions.push(format!("c.seq < {v}"));
    }
    if let Some(after) = q.after_seq {
        let v = b.int(after);
        conditions.push(format!("c.seq > {v}"));
    }
    for clause in &q.clauses {
        conditions.push(clause_sql(&mut b, &ty, clause, "c.seq", true));
    }
    if count {
        b.sql = format!("SELECT count(*) FROM resource_current c WHERE {}", conditions.join(" AND "));
        return b;
    }
    let mut order = Vec::new();
    let mut joins: Vec<String> = Vec::new();
    for key in &q.sort {
        match key {
            SortKey::LastUpdated { descending } => order.push(format!("c.seq {}", dir(*descending))),
            SortKey::Id { descending } => order.push(format!("c.id {}", dir(*descending))),
            SortKey::Param { param, table, descending } => {
                let key = key_cond(&mut b, &ty, param, "s");
                let (column, agg) = match (table, descending) {
                    (Table::Date, false) => ("low", "MIN"),
                    (Table::Date, true) => ("high", "MAX"),
                    (Table::Quantity, false) => ("value", "MIN"),
                    (Table::Quantity, true) => ("value", "MAX"),
                    (Table::String, false) => ("norm", "MIN"),
                    (Table::String, true) => ("norm", "MAX"),
                    (Table::Token | Table::PatientToken, false) => ("code", "MIN"),
                    (Table::Token | Table::PatientToken, true) => ("code", "MAX"),
                    (Table::Reference, false) => ("target_id", "MIN"),
                    (Table::Reference, true) => ("target_id", "MAX"),
                    (Table::Uri, false) => ("uri", "MIN"),
                    (Table::Uri, true) => ("uri", "MAX"),
                    (Table::TokenQuantity | Table::TokenToken, false) => ("code", "MIN"),
                    (Table::TokenQuantity | Table::TokenToken, true) => ("code", "MAX"),
                    (Table::TokenText, false) => ("text", "MIN"),
                    (Table::TokenText, true) => ("text", "MAX"),
                };
                // One pass over the parameter's rows, grouped by resource; resources
                // without a value sort last either way.
                let n = joins.len();
                joins.push(format!(
                    " LEFT JOIN (SELECT s.seq AS seq, {agg}(s.{column}) AS k FROM {} s WHERE {key} GROUP BY s.seq) sk{n} ON sk{n}.seq = c.seq",
                    table.name()
                ));
                order.push(format!("sk{n}.k {} NULLS LAST", dir(*descending)));
            }
        }
    }
    // Ties (and the default) by commit order, newest first: stable under concurrent writes.
    order.push("c.seq DESC".to_string());
    let limit = b.int(i64::try_from(q.limit).unwrap_or(i64::MAX));
    let offset = b.int(i64::try_from(q.offset).unwrap_or(i64::MAX));
    b.sql = format!(
        "SELECT c.seq FROM resource_current c{} WHERE {} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        joins.concat(),
        conditions.join(" AND "),
        order.join(", ")
    );
    b
}

/// For a query that names one patient through a Patient-compartment reference parameter
/// and has a coded value: the token clause and the patient. Every resource that matches
/// the reference is in that patient's compartment, so `sp_token_pc` holds all candidates.
fn patient_token_driver(q: &IndexQuery, ty: &str) -> Option<(usize, String)> {
    if tessera_search::derived(ty, PATIENT_SCOPED_PARAM).is_some() {
        return None;
    }
    let compartment = tessera_fhir::definitions::patient_compartment_params(ty);
    let patient = q.clauses.iter().find_map(|c| match (c.negate, c.any.as_slice()) {
        (false, [Pred::Reference { param, target_type, ids, url: None }])
            if ids.len() == 1 && target_type.as_deref().is_none_or(|t| t == "Patient") && in_compartment(compartment, param) =>
        {
            Some(ids[0].clone())
        }
        _ => None,
    })?;
    let token = q.clauses.iter().position(
        |c| !c.negate && matches!(c.any.as_slice(), [Pred::Token { param, code: Some(_), .. }] if param == PATIENT_SCOPED_PARAM),
    )?;
    Some((token, patient))
}

/// Does a reference to a patient through `param` put the resource in that patient's
/// compartment? The compartment's own parameters do; so does `patient` where the
/// compartment goes by `subject` (R4 defines `patient` there as
/// `subject.where(resolve() is Patient)`).
fn in_compartment(compartment: &[tessera_fhir::definitions::CompartmentParam], param: &str) -> bool {
    compartment.iter().any(|p| p.code == param) || (param == "patient" && compartment.iter().any(|p| p.code == "subject"))
}

/// The clause to drive the query from, if any: a positive single-predicate clause on an
/// index table, preferring references to given resources (one patient's records), then
/// coded values with a system, other tokens, dates and the rest.
fn choose_driver(q: &IndexQuery) -> Option<usize> {
    let rank = |c: &Clause| -> Option<u8> {
        if c.negate || c.any.len() != 1 {
            return None;
        }
        Some(match &c.any[0] {
            Pred::Reference { ids, url: None, .. } if !ids.is_empty() && ids.len() <= 16 => 0,
            Pred::Token { system: Some(_), code: Some(_), .. } => 1,
            Pred::Token { code: Some(_), .. } => 2,
            Pred::Token { code: None, system: None, .. } => 7,
            Pred::Uri { mode: UriMode::Equals, .. } => 3,
            Pred::String { mode: StringMode::Exact | StringMode::Prefix, .. } => 4,
            Pred::Date { param, .. } if param != LAST_UPDATED => 5,
            Pred::Number { .. } => 6,
            _ => return None,
        })
    };
    q.clauses.iter().enumerate().filter_map(|(i, c)| rank(c).map(|r| (r, i))).min().map(|(_, i)| i)
}

/// A clause as a condition on the resource whose `seq` is `target` (`in_current`: the
/// query walks `resource_current` as `c`).
fn clause_sql(b: &mut SqlBuilder, ty: &str, clause: &Clause, target: &str, in_current: bool) -> String {
    let parts: Vec<String> = clause.any.iter().map(|p| probe_sql(b, ty, p, target, in_current)).collect();
    let joined = if parts.is_empty() { "0 = 1".to_string() } else { parts.join(" OR ") };
    if clause.negate {
        format!("NOT ({joined})")
    } else {
        format!("({joined})")
    }
}

/// One predicate as a condition on the resource whose `seq` is `target`.
fn probe_sql(b: &mut SqlBuilder, ty: &str, p: &Pred, target: &str, in_current: bool) -> String {
    match p {
        Pred::Ids(ids) => {
            if ids.is_empty() {
                return "0 = 1".into();
            }
            let list: Vec<String> = ids.iter().map(|i| b.text(i)).collect();
            if in_current {
                format!("c.id IN ({})", list.join(", "))
            } else {
                let t = b.text(ty);
                format!("{target} IN (SELECT r.seq FROM resource_current r WHERE r.res_type = {t} AND r.id IN ({}))", list.join(", "))
            }
        }
        Pred::Compartment(patient) => {
            let v = b.text(patient);
            if in_current {
                format!("c.compartment = {v}")
            } else {
                format!("{target} IN (SELECT r.seq FROM resource_current r WHERE r.compartment = {v})")
            }
        }
        Pred::Types(types) => {
            if types.is_empty() {
                return "0 = 1".into();
            }
            let list: Vec<String> = types.iter().map(|t| b.text(t)).collect();
            if in_current {
                format!("c.res_type IN ({})", list.join(", "))
            } else {
                format!("{target} IN (SELECT r.seq FROM resource_current r WHERE r.res_type IN ({}))", list.join(", "))
            }
        }
        Pred::Date { param, prefix, low, high } if param == LAST_UPDATED => last_updated_sql(b, *prefix, *low, *high, target),
        // Every version has a commit time.
        Pred::Missing { param, missing, .. } if param == LAST_UPDATED => if *missing { "0 = 1".into() } else { "1 = 1".into() },
        Pred::Missing { param, table, missing } => {
            let k = key_cond(b, ty, param, "m");
            let has = format!("EXISTS (SELECT 1 FROM {} m WHERE {k} AND m.seq = {target})", table.name());
            if *missing {
                format!("NOT {has}")
            } else {
                has
            }
        }
        _ => {
            let Some((table, conds)) = index_pred(b, ty, p, "x2", true) else { return "0 = 1".into() };
            format!("EXISTS (SELECT 1 FROM {} x2 WHERE {} AND x2.seq = {target})", table.name(), conds.join(" AND "))
        }
    }
}

/// `{alias}.p = key` (or, for a search across all types, any type's key for the parameter).
/// A derived parameter (`tessera_search::derived`) is answered from the rows of the
/// parameters it derives from: `combo-code` by the keys of `code` and `component-code`,
/// `patient` by the key of `subject` and a Patient target.
fn key_cond(b: &mut SqlBuilder, ty: &str, param: &str, alias: &str) -> String {
    use tessera_search::Derived;
    let types: Vec<&str> = if ty.is_empty() { tessera_fhir::definitions::resource_types().collect() } else { vec![ty] };
    let mut plain: Vec<i64> = Vec::new();
    let mut patient_of: Vec<i64> = Vec::new();
    // `#code`: the parameter of contained resources of the type (`_contained`).
    let (param, mark) = match param.strip_prefix('#') {
        Some(p) => (p, "#"),
        None => (param, ""),
    };
    let key = |t: &str, q: &str| param_key(t, &format!("{mark}{q}"));
    for t in types {
        match tessera_search::derived(t, param) {
            None => plain.push(key(t, param)),
            Some(Derived::Union(parts)) => plain.extend(parts.iter().map(|q| key(t, q))),
            Some(Derived::PatientOf(q)) => patient_of.push(key(t, q)),
        }
    }
    let list = |keys: &[i64]| keys.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
    let mut alternatives = Vec::new();
    match plain.as_slice() {
        [] => {}
        [k] if ty.is_empty() => alternatives.push(format!("{alias}.p = {k}")),
        [k] => {
            let v = b.int(*k);
            alternatives.push(format!("{alias}.p = {v}"));
        }
        keys => alternatives.push(format!("{alias}.p IN ({})", list(keys))),
    }
    if !patient_of.is_empty() {
        let keys = if patient_of.len() == 1 {
            let v = b.int(patient_of[0]);
            format!("{alias}.p = {v}")
        } else {
            format!("{alias}.p IN ({})", list(&patient_of))
        };
        alternatives.push(format!("{keys} AND {alias}.target_type = 'Patient'"));
    }
    match alternatives.len() {
        0 => "0 = 1".to_string(),
        1 => alternatives.remove(0),
        _ => format!("(({}))", alternatives.join(") OR (")),
    }
}

/// `_lastUpdated` is the version's commit time (`resource_version.last_updated`, to the
/// microsecond): a condition on that row instead of index rows.
const LAST_UPDATED: &str = "_lastUpdated";

fn last_updated_sql(b: &mut SqlBuilder, prefix: Prefix, low: i64, high: i64, target: &str) -> String {
    let cond = date_cond(b, "v.last_updated", "v.last_updated", prefix, low, high, false);
    // A contained resource's `seq` stands for its container's version.
    format!("EXISTS (SELECT 1 FROM resource_version v WHERE v.seq = (CASE WHEN {target} >= {CONTAINED_BASE} THEN ({target} - {CONTAINED_BASE}) / 64 ELSE {target} END) AND {cond})")
}

/// A date range `[lo_col, hi_col]` against the query's range `[low, high]` by prefix.
/// Only the bounds a prefix uses become arguments (PostgreSQL refuses unused ones).
fn date_cond(b: &mut SqlBuilder, lo_col: &str, hi_col: &str, prefix: Prefix, low: i64, high: i64, real: bool) -> String {
    let bind = |b: &mut SqlBuilder, v: i64| if real { b.real(v as f64) } else { b.int(v) };
    match prefix {
        Prefix::Eq => format!("{lo_col} >= {} AND {hi_col} <= {}", bind(b, low), bind(b, high)),
        Prefix::Ne => format!("NOT ({lo_col} >= {} AND {hi_col} <= {})", bind(b, low), bind(b, high)),
        Prefix::Gt => format!("{hi_col} > {}", bind(b, high)),
        Prefix::Lt => format!("{lo_col} < {}", bind(b, low)),
        Prefix::Ge => format!("{hi_col} >= {}", bind(b, low)),
        Prefix::Le => format!("{lo_col} <= {}", bind(b, high)),
        Prefix::Sa => format!("{lo_col} > {}", bind(b, high)),
        Prefix::Eb => format!("{hi_col} < {}", bind(b, low)),
        Prefix::Ap => {
            // Approximately: overlaps the value widened by 10 % of its distance from now.
            let now = crate::now_micros();
            let margin = ((now - low).abs() / 10).max(86_400_000_000);
            let (alo, ahi) = (bind(b, low.saturating_sub(margin)), bind(b, high.saturating_add(margin)));
            format!("{hi_col} >= {alo} AND {lo_col} <= {ahi}")
        }
    }
}

/// The parameter's key, and the coded value (`code`, `system`) where given: the start of
/// every token-keyed predicate.
fn coded(b: &mut SqlBuilder, ty: &str, param: &str, a: &str, code: Option<&str>, system: Option<&str>) -> Vec<String> {
    let mut w = vec![key_cond(b, ty, param, a)];
    if let Some(code) = code {
        w.push(b.eq(&format!("{a}.code"), code));
    }
    if let Some(system) = system {
        w.push(b.eq(&format!("{a}.system"), system));
    }
    w
}

/// An index predicate as its table and conditions on `alias` (without the `seq`). For a
/// `probe` (looked up by `seq`), range conditions on SQLite are written `+column`, which
/// keeps the planner on the key that leads to `seq` instead of a range index.
fn index_pred(b: &mut SqlBuilder, ty: &str, p: &Pred, alias: &str, probe: bool) -> Option<(Table, Vec<String>)> {
    let a = alias;
    let ranged = if probe && b.dialect == Dialect::Sqlite { format!("+{alias}") } else { alias.to_string() };
    let r = ranged.as_str();
    Some(match p {
        Pred::Token { param, system, code } => (Table::Token, coded(b, ty, param, a, code.as_deref(), system.as_deref())),
        Pred::String { param, mode, value } => {
            let mut w = vec![key_cond(b, ty, param, a)];
            w.push(match mode {
                StringMode::Exact => {
                    let n = b.text(&tessera_search::normalize_string(value));
                    let v = b.text(value);
                    // `norm` first, so that the key is used; `exact` decides.
                    format!("{a}.norm = {n} AND {a}.exact = {v}")
                }
                StringMode::Prefix => b.starts_with(&format!("{a}.norm"), value),
                // Within the kept start of long values: never within their mark and digest,
                // as the value (a key) holds no noncharacter; a value longer than the kept
                // start is not within it.
                StringMode::Contains => match index_key(value) {
                    k if k.len() > KEY_BYTES => "0 = 1".to_string(),
                    k => {
                        let escaped = k.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                        let v = b.raw(format!("%{escaped}%"));
                        format!("{a}.norm LIKE {v} ESCAPE '\\'")
                    }
                },
            });
            (Table::String, w)
        }
        Pred::Date { param, prefix, low, high } => {
            let mut w = vec![key_cond(b, ty, param, a)];
            w.push(date_cond(b, &format!("{r}.low"), &format!("{r}.high"), *prefix, *low, *high, false));
            (Table::Date, w)
        }
        Pred::Number { param, prefix, value, low, high, system, code } => {
            let mut w = vec![key_cond(b, ty, param, a)];
            w.push(number_cond(b, &format!("{r}.value"), *prefix, *value, *low, *high));
            if let Some(system) = system {
                w.push(b.eq(&format!("{a}.system"), system));
            }
            if let Some(code) = code {
                w.push(b.eq(&format!("{a}.code"), code));
            }
            (Table::Quantity, w)
        }
        Pred::Reference { param, target_type, ids, url } => {
            let mut w = vec![key_cond(b, ty, param, a)];
            let mut alternatives = Vec::new();
            if !ids.is_empty() {
                let list: Vec<String> = ids.iter().map(|i| b.text(i)).collect();
                let mut c = format!("{a}.target_id IN ({})", list.join(", "));
                if let Some(t) = target_type {
                    let v = b.text(t);
                    c.push_str(&format!(" AND {a}.target_type = {v}"));
                }
                alternatives.push(format!("({c})"));
            }
            if let Some(url) = url {
                let v = b.text(url);
                alternatives.push(format!("{a}.url = {v}"));
            }
            if alternatives.is_empty() {
                alternatives.push("0 = 1".into());
            }
            w.push(format!("({})", alternatives.join(" OR ")));
            (Table::Reference, w)
        }
        Pred::Uri { param, mode, value } => {
            let mut w = vec![key_cond(b, ty, param, a)];
            w.push(match mode {
                UriMode::Equals => b.eq(&format!("{a}.uri"), value),
                UriMode::Below => b.starts_with(&format!("{a}.uri"), value),
                // The value starts with the indexed URI. A cut URI never equals the start of
                // the (uncut) value: with a value longer than `KEY_BYTES`, the cut URIs with
                // the same first bytes also match.
                UriMode::Above => {
                    let whole = substituted(value).into_owned();
                    let long = whole.len() > KEY_BYTES;
                    let v = b.raw(whole);
                    let above = match b.dialect {
                        Dialect::Sqlite => format!("substr({v}, 1, length({a}.uri)) = {a}.uri"),
                        Dialect::Postgres => format!("left({v}, length({a}.uri)) = {a}.uri"),
                    };
                    if long {
                        format!("({above} OR ({}))", b.starts_with(&format!("{a}.uri"), value))
                    } else {
                        above
                    }
                }
            });
            (Table::Uri, w)
        }
        Pred::TokenQuantity { param, system, code, prefix, value, low, high, unit_system, unit } => {
            let mut w = coded(b, ty, param, a, Some(code), system.as_deref());
            w.push(number_cond(b, &format!("{r}.value"), *prefix, *value, *low, *high));
            if let Some(us) = unit_system {
                w.push(b.eq(&format!("{a}.unit_system"), us));
            }
            if let Some(unit) = unit {
                w.push(b.eq(&format!("{a}.unit"), unit));
            }
            (Table::TokenQuantity, w)
        }
        Pred::TokenToken { param, system, code, system2, code2, prefix2 } => {
            let mut w = coded(b, ty, param, a, Some(code), system.as_deref());
            if *prefix2 {
                w.push(b.starts_with(&format!("{a}.code2"), code2));
            } else {
                w.push(b.eq(&format!("{a}.code2"), code2));
            }
            if let Some(system2) = system2 {
                w.push(b.eq(&format!("{a}.system2"), system2));
            }
            (Table::TokenToken, w)
        }
        Pred::TokenDate { param, system, code, prefix, low, high } => {
            let mut w = coded(b, ty, param, a, Some(code), system.as_deref());
            w.push(date_cond(b, &format!("{r}.low"), &format!("{r}.high"), *prefix, *low, *high, true));
            (Table::TokenQuantity, w)
        }
        Pred::TokenRange { param, system, code, start_prefix, start, end_prefix, end } => {
            let mut w = coded(b, ty, param, a, Some(code), system.as_deref());
            w.push(number_cond(b, &format!("{r}.value"), *start_prefix, start.0, start.1, start.2));
            w.push(number_cond(b, &format!("{r}.high"), *end_prefix, end.0, end.1, end.2));
            (Table::TokenQuantity, w)
        }
        Pred::TokenText { param, value } => {
            let mut w = vec![key_cond(b, ty, param, a)];
            w.push(b.starts_with(&format!("{a}.text"), value));
            (Table::TokenText, w)
        }
        Pred::Ids(_) | Pred::Compartment(_) | Pred::Types(_) | Pred::Missing { .. } => return None,
    })
}

/// A number compared by prefix, on column `col`: `eq`/`ne` against the range the query
/// value's precision implies (`[low, high)`), the others against the value itself. Only
/// the bounds a prefix uses become arguments (PostgreSQL refuses unused ones).
fn number_cond(b: &mut SqlBuilder, col: &str, prefix: Prefix, value: f64, low: f64, high: f64) -> String {
    match prefix {
        Prefix::Eq => format!("{col} >= {} AND {col} < {}", b.real(low), b.real(high)),
        Prefix::Ne => format!("NOT ({col} >= {} AND {col} < {})", b.real(low), b.real(high)),
        Prefix::Gt | Prefix::Sa => format!("{col} > {}", b.real(value)),
        Prefix::Lt | Prefix::Eb => format!("{col} < {}", b.real(value)),
        Prefix::Ge => format!("{col} >= {}", b.real(value)),
        Prefix::Le => format!("{col} <= {}", b.real(value)),
        Prefix::Ap => {
            let margin = (value.abs() * 0.1).max(f64::EPSILON);
            format!("{col} >= {} AND {col} <= {}", b.real(value - margin), b.real(value + margin))
        }
    }
}

fn dir(descending: bool) -> &'static str {
    if descending {
        "DESC"
    } else {
        "ASC"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_parameters_have_distinct_keys() {
        let mut seen = std::collections::HashMap::new();
        for sp in tessera_fhir::definitions::search_parameters() {
            for base in &sp.base {
                let k = param_key(base, &sp.code);
                if let Some(other) = seen.insert(k, format!("{base}.{}", sp.code)) {
                    assert_eq!(other, format!("{base}.{}", sp.code), "key collision");
                }
            }
        }
        assert!(seen.len() > 1000);
    }

    #[test]
    fn long_values_are_cut_with_a_mark_and_digest() {
        assert!(matches!(index_key("chalmers"), Cow::Borrowed("chalmers")));
        assert_eq!(index_key("a\u{0}b\u{FFFF}c\u{FDD0}\u{10FFFF}"), "a\u{FFFD}b\u{FFFD}c\u{FFFD}\u{FFFD}");
        let exactly = "x".repeat(KEY_BYTES);
        assert_eq!(index_key(&exactly), exactly.as_str());
        // Cut at a character boundary (one- to four-byte characters), never over the bound;
        // the key of a cut value is longer than the bound, the kept start followed by the
        // mark and 26 digits.
        for (unit, len) in [("a", 3000), ("é", 1500), ("€", 1000), ("𝄞", 750), ("a", 200_000)] {
            let v = unit.repeat(len);
            let k = index_key(&v);
            assert!(k.len() > KEY_BYTES && k.len() <= KEY_BYTES + 3 + 3 * DIGEST_DIGITS, "{unit}: {}", k.len());
            let (start, rest) = k.split_once(CUT).unwrap();
            assert!(v.starts_with(start) && start.len() + unit.len() > KEY_BYTES);
            assert_eq!(rest.chars().count(), DIGEST_DIGITS);
            assert!(rest.chars().all(|c| (0xFDD0..=0xFDEF).contains(&(c as u32))));
            assert_eq!(key_start(&v), format!("{start}{CUT}"));
            // The same value, the same key; a different value with the same start, another.
            assert_eq!(index_key(&v.clone()), k);
            assert_ne!(index_key(&format!("{v}!")), k);
            let mut other = v.clone();
            other.pop();
            other.push('b');
            assert_ne!(index_key(&other), k);
        }
    }

    #[test]
    fn rows_keep_keys() {
        let long = "lorem ipsum ".repeat(300);
        let entries = vec![
            IndexEntry { param: "value-string".into(), value: IndexValue::String { normalized: long.clone(), exact: long.to_uppercase() } },
            IndexEntry { param: "identifier".into(), value: IndexValue::Token { system: Some(long.clone()), code: long.clone(), text: Some(long.clone()) } },
            IndexEntry { param: "value-string".into(), value: IndexValue::String { normalized: "a\u{0}".into(), exact: "A\u{0}".into() } },
        ];
        let rows = rows("Observation", &entries);
        assert_eq!(rows.len(), 4, "{rows:?}");
        for row in &rows {
            let texts: Vec<&String> = match row {
                Row::String { norm, exact, .. } => vec![norm, exact],
                Row::Token { system, code, .. } => vec![system, code],
                Row::TokenText { text, .. } => vec![text],
                other => panic!("{other:?}"),
            };
            for t in texts {
                assert!(t.len() <= KEY_BYTES + 3 + 3 * DIGEST_DIGITS && !t.contains('\u{0}'), "{}", t.len());
            }
        }
        assert!(rows.contains(&Row::String { p: param_key("Observation", "value-string"), norm: "a\u{FFFD}".into(), exact: "A\u{FFFD}".into() }));
    }

    #[test]
    fn queries_compare_keys() {
        let long = "lorem ipsum ".repeat(300);
        let q = |mode: StringMode, value: &str| {
            let mut q = IndexQuery::new(Some("Observation"));
            q.clauses.push(Clause { any: vec![Pred::String { param: "value-string".into(), mode, value: value.into() }], negate: false });
            q.offset = usize::MAX;
            select_sql(&q, Dialect::Postgres)
        };
        let texts = |b: &SqlBuilder| b.args.iter().filter_map(|a| if let Arg::Text(t) = a { Some(t.clone()) } else { None }).collect::<Vec<_>>();
        // `:exact`: both columns by their keys.
        let b = q(StringMode::Exact, &long);
        assert_eq!(texts(&b), vec![index_key(&long).into_owned(), index_key(&long).into_owned()]);
        assert!(b.args.contains(&Arg::Int(i64::MAX)), "{:?}", b.args);
        // Starts with: up to the bound exactly; beyond it, the cut values with that start.
        let b = q(StringMode::Prefix, "lorem");
        assert_eq!(texts(&b), vec!["lorem".to_string(), "lorem\u{10FFFF}".to_string()]);
        let b = q(StringMode::Prefix, &long);
        assert_eq!(texts(&b)[0], key_start(&long));
        // `:contains`: within the kept start; longer than it, nothing.
        assert_eq!(texts(&q(StringMode::Contains, "a\u{0}_%")).last().unwrap(), "%a\u{FFFD}\\_\\%%");
        assert!(q(StringMode::Contains, &long).sql.contains("0 = 1"));
    }

    #[test]
    fn sql_names_every_argument() {
        let mut q = IndexQuery::new(Some("Observation"));
        q.clauses.push(Clause { any: vec![Pred::Token { param: "code".into(), system: Some("http://loinc.org".into()), code: Some("8867-4".into()) }], negate: false });
        q.clauses.push(Clause { any: vec![Pred::Reference { param: "subject".into(), target_type: Some("Patient".into()), ids: vec!["p1".into()], url: None }], negate: false });
        // One patient's coded values drive (the subject reference puts the Observation in
        // that patient's compartment); the reference itself is still probed.
        let b = select_sql(&q, Dialect::Sqlite);
        assert_eq!(b.args.len(), 9, "{}", b.sql);
        assert!(b.sql.starts_with("SELECT DISTINCT x.seq FROM sp_token_pc x"), "{}", b.sql);
        assert!(b.sql.contains("FROM sp_reference x2") && b.sql.contains("?9") && !b.sql.contains("?10"));
        let pg = select_sql(&q, Dialect::Postgres);
        assert!(pg.sql.contains("$9::bigint"), "{}", pg.sql);
        // Without the patient, the coded value drives over all patients.
        let mut coded = q.clone();
        coded.clauses.truncate(1);
        assert!(select_sql(&coded, Dialect::Sqlite).sql.starts_with("SELECT DISTINCT x.seq FROM sp_token x"));
        // Sorted by a parameter: the type's current resources are walked.
        q.sort.push(SortKey::Param { param: "date".into(), table: Table::Date, descending: true });
        assert!(select_sql(&q, Dialect::Sqlite).sql.starts_with("SELECT c.seq FROM resource_current c"));
    }
}
