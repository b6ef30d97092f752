//! The search index and the queries the store answers over it.
//!
//! Each [`Write`](crate::Write) carries the index entries of its resource
//! (`tessera_search::index_resource`). The store keeps the entries of current versions
//! only, one table per value kind (`sp_token`, `sp_string`, `sp_date`, `sp_quantity` (numbers
//! and quantities), `sp_reference`, `sp_uri`), each row keyed by the version's `seq`: a write
//! deletes the rows of the version it replaces and inserts its own, in the same
//! transaction; a deletion leaves none. A parameter is identified by [`param_key`], a stable
//! 31-bit hash of `Type.code` (a test checks the shipped parameters do not collide), so
//! rows stay small and no lookup table is needed.
//!
//! An [`IndexQuery`] is a conjunction of [`Clause`]s, each a disjunction of [`Pred`]icates,
//! over one resource type. Chains, `_has` and includes are resolved by the engine (through
//! the enforcement point) into explicit id lists before they reach the store, so the store
//! never evaluates anything about data the reader may not see.

use tessera_search::{IndexEntry, IndexValue};

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
    String,
    Date,
    Quantity,
    Reference,
    Uri,
}

impl Table {
    pub const ALL: [Table; 6] = [Table::Token, Table::String, Table::Date, Table::Quantity, Table::Reference, Table::Uri];

    pub fn name(self) -> &'static str {
        match self {
            Table::Token => "sp_token",
            Table::String => "sp_string",
            Table::Date => "sp_date",
            Table::Quantity => "sp_quantity",
            Table::Reference => "sp_reference",
            Table::Uri => "sp_uri",
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

/// A row of an index table, as the backends insert it.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Token { p: i64, system: String, code: String },
    String { p: i64, norm: String, exact: String },
    Date { p: i64, low: i64, high: i64 },
    Quantity { p: i64, value: f64, low: f64, high: f64, system: String, code: String },
    Reference { p: i64, target_type: String, target_id: String, url: String },
    Uri { p: i64, uri: String },
}

/// The rows a resource's index entries make (duplicates removed).
pub fn rows(resource_type: &str, entries: &[IndexEntry]) -> Vec<Row> {
    let mut out: Vec<Row> = Vec::with_capacity(entries.len());
    for e in entries {
        let p = param_key(resource_type, &e.param);
        let row = match &e.value {
            IndexValue::Token { system, code, .. } => Row::Token { p, system: system.clone().unwrap_or_default(), code: code.clone() },
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
        };
        if !out.contains(&row) {
            out.push(row);
        }
    }
    out
}

/// Date and number comparison prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

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
    /// Skip this many matches (sorted queries page by offset).
    pub offset: usize,
    pub limit: usize,
}

impl IndexQuery {
    pub fn new(resource_type: Option<&str>) -> IndexQuery {
        IndexQuery { resource_type: resource_type.map(str::to_string), clauses: Vec::new(), sort: Vec::new(), before_seq: None, offset: 0, limit: 100 }
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

    fn text(&mut self, s: &str) -> String {
        self.arg(Arg::Text(s.to_string()))
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

/// `SELECT c.seq …` for the query: the `seq`s of the matching current versions, in order.
pub fn select_sql(q: &IndexQuery, dialect: Dialect) -> SqlBuilder {
    let mut b = SqlBuilder::new(dialect);
    let mut conditions = vec![b.not_deleted().to_string()];
    if let Some(t) = &q.resource_type {
        let t = b.text(t);
        conditions.push(format!("c.res_type = {t}"));
    }
    if let Some(before) = q.before_seq {
        let v = b.int(before);
        conditions.push(format!("c.seq < {v}"));
    }
    let ty = q.resource_type.clone().unwrap_or_default();
    for clause in &q.clauses {
        let parts: Vec<String> = clause.any.iter().map(|p| pred_sql(&mut b, &ty, p)).collect();
        let joined = if parts.is_empty() { "0 = 1".to_string() } else { parts.join(" OR ") };
        conditions.push(if clause.negate { format!("NOT ({joined})") } else { format!("({joined})") });
    }
    let mut order = Vec::new();
    for key in &q.sort {
        match key {
            SortKey::LastUpdated { descending } => order.push(format!("c.seq {}", dir(*descending))),
            SortKey::Id { descending } => order.push(format!("c.id {}", dir(*descending))),
            SortKey::Param { param, table, descending } => {
                let p = b.int(param_key(&ty, param));
                let (column, agg) = match (table, descending) {
                    (Table::Date, false) => ("low", "MIN"),
                    (Table::Date, true) => ("high", "MAX"),
                    (Table::Quantity, false) => ("value", "MIN"),
                    (Table::Quantity, true) => ("value", "MAX"),
                    (Table::String, false) => ("norm", "MIN"),
                    (Table::String, true) => ("norm", "MAX"),
                    (Table::Token, false) => ("code", "MIN"),
                    (Table::Token, true) => ("code", "MAX"),
                    (Table::Reference, false) => ("target_id", "MIN"),
                    (Table::Reference, true) => ("target_id", "MAX"),
                    (Table::Uri, false) => ("uri", "MIN"),
                    (Table::Uri, true) => ("uri", "MAX"),
                };
                // Resources without a value sort last either way.
                order.push(format!(
                    "(SELECT {agg}(s.{column}) FROM {} s WHERE s.p = {p} AND s.seq = c.seq) {} NULLS LAST",
                    table.name(),
                    dir(*descending)
                ));
            }
        }
    }
    // Ties (and the default) by commit order, newest first: stable under concurrent writes.
    order.push("c.seq DESC".to_string());
    let limit = b.int(q.limit as i64);
    let offset = b.int(q.offset as i64);
    b.sql = format!(
        "SELECT c.seq FROM resource_current c WHERE {} ORDER BY {} LIMIT {limit} OFFSET {offset}",
        conditions.join(" AND "),
        order.join(", ")
    );
    b
}

fn dir(descending: bool) -> &'static str {
    if descending {
        "DESC"
    } else {
        "ASC"
    }
}

fn pred_sql(b: &mut SqlBuilder, ty: &str, p: &Pred) -> String {
    let key = |b: &mut SqlBuilder, param: &str| b.int(param_key(ty, param));
    match p {
        Pred::Ids(ids) => {
            if ids.is_empty() {
                return "0 = 1".into();
            }
            let list: Vec<String> = ids.iter().map(|i| b.text(i)).collect();
            format!("c.id IN ({})", list.join(", "))
        }
        Pred::Types(types) => {
            if types.is_empty() {
                return "0 = 1".into();
            }
            let list: Vec<String> = types.iter().map(|t| b.text(t)).collect();
            format!("c.res_type IN ({})", list.join(", "))
        }
        Pred::Compartment(patient) => {
            let v = b.text(patient);
            format!("c.compartment = {v}")
        }
        Pred::Token { param, system, code } => {
            let k = key(b, param);
            let mut w = vec![format!("s.p = {k}")];
            if let Some(code) = code {
                let v = b.text(code);
                w.push(format!("s.code = {v}"));
            }
            if let Some(system) = system {
                let v = b.text(system);
                w.push(format!("s.system = {v}"));
            }
            format!("c.seq IN (SELECT s.seq FROM sp_token s WHERE {})", w.join(" AND "))
        }
        Pred::String { param, mode, value } => {
            let k = key(b, param);
            let cond = match mode {
                StringMode::Exact => {
                    let v = b.text(value);
                    format!("s.exact = {v}")
                }
                StringMode::Prefix => {
                    // A range, so that the index is used: [value, value + U+10FFFF).
                    let lo = b.text(value);
                    let hi = b.text(&format!("{value}\u{10ffff}"));
                    format!("s.norm >= {lo} AND s.norm < {hi}")
                }
                StringMode::Contains => {
                    let escaped = value.replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_");
                    let v = b.text(&format!("%{escaped}%"));
                    format!("s.norm LIKE {v} ESCAPE '\\'")
                }
            };
            format!("c.seq IN (SELECT s.seq FROM sp_string s WHERE s.p = {k} AND {cond})")
        }
        Pred::Date { param, prefix, low, high } => {
            let k = key(b, param);
            let (lo, hi) = (b.int(*low), b.int(*high));
            let cond = match prefix {
                Prefix::Eq => format!("s.low >= {lo} AND s.high <= {hi}"),
                Prefix::Ne => format!("NOT (s.low >= {lo} AND s.high <= {hi})"),
                Prefix::Gt => format!("s.high > {hi}"),
                Prefix::Lt => format!("s.low < {lo}"),
                Prefix::Ge => format!("s.high >= {lo}"),
                Prefix::Le => format!("s.low <= {hi}"),
                Prefix::Sa => format!("s.low > {hi}"),
                Prefix::Eb => format!("s.high < {lo}"),
                Prefix::Ap => {
                    // Approximately: overlaps the value widened by 10 % of its distance from now.
                    let now = crate::now_micros();
                    let margin = ((now - low).abs() / 10).max(86_400_000_000);
                    let (alo, ahi) = (b.int(low.saturating_sub(margin)), b.int(high.saturating_add(margin)));
                    format!("s.high >= {alo} AND s.low <= {ahi}")
                }
            };
            format!("c.seq IN (SELECT s.seq FROM sp_date s WHERE s.p = {k} AND {cond})")
        }
        Pred::Number { param, prefix, value, low, high, system, code } => {
            let k = key(b, param);
            let mut w = vec![format!("s.p = {k}")];
            let v = b.real(*value);
            w.push(match prefix {
                Prefix::Eq => {
                    let (lo, hi) = (b.real(*low), b.real(*high));
                    format!("s.value >= {lo} AND s.value < {hi}")
                }
                Prefix::Ne => {
                    let (lo, hi) = (b.real(*low), b.real(*high));
                    format!("NOT (s.value >= {lo} AND s.value < {hi})")
                }
                Prefix::Gt | Prefix::Sa => format!("s.value > {v}"),
                Prefix::Lt | Prefix::Eb => format!("s.value < {v}"),
                Prefix::Ge => format!("s.value >= {v}"),
                Prefix::Le => format!("s.value <= {v}"),
                Prefix::Ap => {
                    let margin = (value.abs() * 0.1).max(f64::EPSILON);
                    let (lo, hi) = (b.real(value - margin), b.real(value + margin));
                    format!("s.value >= {lo} AND s.value <= {hi}")
                }
            });
            if let Some(system) = system {
                let v = b.text(system);
                w.push(format!("s.system = {v}"));
            }
            if let Some(code) = code {
                let v = b.text(code);
                w.push(format!("s.code = {v}"));
            }
            format!("c.seq IN (SELECT s.seq FROM sp_quantity s WHERE {})", w.join(" AND "))
        }
        Pred::Reference { param, target_type, ids, url } => {
            let k = key(b, param);
            let mut alternatives = Vec::new();
            if !ids.is_empty() {
                let list: Vec<String> = ids.iter().map(|i| b.text(i)).collect();
                let mut c = format!("s.target_id IN ({})", list.join(", "));
                if let Some(t) = target_type {
                    let v = b.text(t);
                    c.push_str(&format!(" AND s.target_type = {v}"));
                }
                alternatives.push(format!("({c})"));
            }
            if let Some(url) = url {
                let v = b.text(url);
                alternatives.push(format!("s.url = {v}"));
            }
            if alternatives.is_empty() {
                return "0 = 1".into();
            }
            format!("c.seq IN (SELECT s.seq FROM sp_reference s WHERE s.p = {k} AND ({}))", alternatives.join(" OR "))
        }
        Pred::Uri { param, mode, value } => {
            let k = key(b, param);
            let cond = match mode {
                UriMode::Equals => {
                    let v = b.text(value);
                    format!("s.uri = {v}")
                }
                UriMode::Below => {
                    let lo = b.text(value);
                    let hi = b.text(&format!("{value}\u{10ffff}"));
                    format!("s.uri >= {lo} AND s.uri < {hi}")
                }
                UriMode::Above => {
                    let v = b.text(value);
                    match b.dialect {
                        Dialect::Sqlite => format!("substr({v}, 1, length(s.uri)) = s.uri"),
                        Dialect::Postgres => format!("left({v}, length(s.uri)) = s.uri"),
                    }
                }
            };
            format!("c.seq IN (SELECT s.seq FROM sp_uri s WHERE s.p = {k} AND {cond})")
        }
        Pred::Missing { param, table, missing } => {
            let k = key(b, param);
            let exists = format!("EXISTS (SELECT 1 FROM {} s WHERE s.p = {k} AND s.seq = c.seq)", table.name());
            if *missing {
                format!("NOT {exists}")
            } else {
                exists
            }
        }
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
    fn sql_names_every_argument() {
        let mut q = IndexQuery::new(Some("Observation"));
        q.clauses.push(Clause { any: vec![Pred::Token { param: "code".into(), system: Some("http://loinc.org".into()), code: Some("8867-4".into()) }], negate: false });
        q.clauses.push(Clause { any: vec![Pred::Reference { param: "subject".into(), target_type: Some("Patient".into()), ids: vec!["p1".into()], url: None }], negate: false });
        let b = select_sql(&q, Dialect::Sqlite);
        assert_eq!(b.args.len(), 9, "{}", b.sql);
        assert!(b.sql.contains("?9") && !b.sql.contains("?10"));
        let pg = select_sql(&q, Dialect::Postgres);
        assert!(pg.sql.contains("$9::bigint"), "{}", pg.sql);
    }
}
