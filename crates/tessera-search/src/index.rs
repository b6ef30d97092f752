//! Index values: what each search parameter extracts from a resource.
//!
//! [`index_resource`] evaluates the FHIRPath `expression` of every R4 search parameter
//! that applies to the resource's type (the common `_id`, `_lastUpdated`, `_tag`,
//! `_profile`, `_security` and `_source` included) and converts each item found into
//! [`IndexValue`]s by parameter type and FHIR data type, following
//! <https://hl7.org/fhir/R4/search.html>:
//!
//! | parameter | data type | indexed as |
//! | --- | --- | --- |
//! | token | `Coding` | `system`/`code`, `display` as text |
//! | token | `CodeableConcept` | each coding as above (the concept's `text` standing in for a missing `display`, and added as a second entry when both differ); with no coded coding, one entry with an empty code and the `text` |
//! | token | `Identifier` | `system`/`value`, `type.text` as text; and for `:of-type`, the entry `{code}:of-type` per `type` coding: (coding system and code, value) |
//! | token | `ContactPoint` | `value` as code, no system (a ContactPoint's `system` is not a URI) |
//! | token | `code`, `string`, `id`, `uri`, … primitives | the value, no system |
//! | token | `boolean` | `true` / `false`, no system |
//! | string | `string`, `markdown` and other text primitives | the value |
//! | string | `HumanName` | each of `family`, `given`, `prefix`, `suffix`, `text` |
//! | string | `Address` | each `line`, `city`, `district`, `state`, `postalCode`, `country`, `text` |
//! | date | `date`, `dateTime`, `instant` | the range of the precision written (`2020` is the whole year; no time zone means UTC) |
//! | date | `Period` | `start` … `end`; an open end is `i64::MIN` / `i64::MAX` |
//! | date | `Timing` | each `event`, and `repeat.boundsPeriod` |
//! | number | `decimal`, `integer`, … | the value and the range its precision implies |
//! | number | `Range` | `low` … `high` |
//! | quantity | `Quantity` (and `Age`, `Duration`, `Distance`, `Count`, `SimpleQuantity`, `MoneyQuantity`) | value with precision range, `system`, `code`, `unit`; a `comparator` opens the range on its side |
//! | quantity | `Money` | `value`, `currency` as code, system `urn:iso:std:iso:4217` |
//! | quantity | `Range` | `low` … `high` (unit of `low`, else `high`); an open end is `f64::MIN` / `f64::MAX` |
//! | reference | `Reference` | `Type/id` → type and id (`/_history/…` removed); an absolute URL → url, plus type and id when it ends in `…/Type/id` |
//! | reference | `canonical`, `uri` | url, `\|version` removed (`_profile` is indexed this way) |
//! | uri | `uri`, `url`, `canonical`, `oid`, `uuid` | the value as written |
//!
//! Not indexed: `#contained` and `urn:uuid:`/`urn:oid:` references (nothing outside the
//! resource or its bundle can be found by them; a transaction resolves bundle-local
//! references before the resource is stored), references with only a `display`,
//! `SampledData`, embedded resources under reference parameters (`Bundle.composition`),
//! values a
//! parameter's type cannot hold (a `Range` under a date parameter), and the parameters
//! without an expression or of type `special` (`_text`, `_content`, `_query`, `near`).
//!
//! A reference's `identifier` is indexed as the token entry `{code}:identifier` (for the
//! `:identifier` modifier); contained resources by [`index_all`], under their own type.
//!
//! Composite parameters (`code-value-quantity`, `component-code-value-quantity`,
//! `combo-code-value-concept`, `context-type-value`, …) are indexed separately by
//! [`composite_entries`]: one [`CompositeEntry`] per combination of component values
//! within each node the composite's expression selects, so that a code and a value only
//! match together when they come from the same observation or component.
//!
//! Entries are deduplicated per parameter. An expression that fails to evaluate on a
//! resource contributes nothing; extraction never panics.
//!
//! Expressions are compiled once per resource type, on first use of the type: each
//! expression is reduced to the branches of its top-level union that can apply to the
//! type (`Patient.birthDate | Person.birthDate` → `Patient.birthDate` for a Patient), so
//! a resource pays only for the paths it can have.

use crate::params::{self, ParamKind};
use crate::values::{date_range, normalize_string, number_range, parse_reference, strip_version};
use serde_json::Value;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::OnceLock;
use tessera_fhir::definitions::{is_resource_type, resource_types, search_parameters_for, SearchParameter};
use tessera_fhirpath::{Context, Expression, Item, Node, Temporal};

/// One value a resource holds for one search parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    /// The search parameter's `code` (`code`, `subject`, `birthdate`, `_lastUpdated` …).
    pub param: String,
    pub value: IndexValue,
}

/// An extracted value, by search parameter type.
#[derive(Debug, Clone, PartialEq)]
pub enum IndexValue {
    /// token: a coding, identifier, code, boolean (`true`/`false`) or id. `system` is
    /// `None` when the value has none (plain `code`, `boolean`). `text` carries the
    /// normalised display/text for `:text`, when there is one.
    ///
    /// A CodeableConcept with only a `text`, or a Coding with only a `display`, gives an
    /// entry with an empty `code`, so that `:text` and `:missing` see it.
    Token {
        system: Option<String>,
        code: String,
        text: Option<String>,
    },
    /// string: `normalized` is lower-cased with accents removed (for the default
    /// starts-with and `:contains` matches); `exact` is the value as written (`:exact`).
    String { normalized: String, exact: String },
    /// date: the instant range the value covers, in microseconds since the epoch,
    /// both ends inclusive (a date `2020-03` covers all of March 2020, UTC).
    Date { low: i64, high: i64 },
    /// number: the value and the range its precision implies (`100` covers
    /// [99.5, 100.5)): `low <= value < high`.
    Number { value: f64, low: f64, high: f64 },
    /// quantity: as for numbers, plus the unit (`system`/`code`, and `unit` as written).
    Quantity {
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
        unit: Option<String>,
    },
    /// reference: `target_type`/`target_id` for a relative or resolvable reference
    /// (`Patient/123`), `url` for an absolute or canonical one (`http://…`, with its
    /// `|version` removed), either or both.
    Reference {
        target_type: Option<String>,
        target_id: Option<String>,
        url: Option<String>,
    },
    /// uri: the value as written.
    Uri(String),
    /// composite: one value per component, in the parameter's component order (see
    /// [`index_all`]).
    Composite(Vec<IndexValue>),
}

/// The values of one composite parameter taken together from one context node: for
/// `component-code-value-quantity`, the code and the value-quantity of one
/// `Observation.component`. `parts` follow the order of the parameter's components.
#[derive(Debug, Clone, PartialEq)]
pub struct CompositeEntry {
    /// The composite parameter's code.
    pub param: String,
    pub parts: Vec<IndexValue>,
}

/// The name of the variable holding a composite's context node in component expressions.
const NODE_VAR: &str = "tesseraCompositeNode";

/// A search parameter compiled for one resource type.
struct Compiled {
    code: &'static str,
    kind: ParamKind,
    expr: Expression,
    /// Composite components: kind and `%node.select(expression)`.
    components: Vec<(ParamKind, Expression)>,
}

/// The compiled parameters of one resource type.
#[derive(Default)]
struct TypeParams {
    simple: Vec<Compiled>,
    composite: Vec<Compiled>,
}

fn compiled_for(resource_type: &str) -> Option<&'static TypeParams> {
    static TYPES: OnceLock<HashMap<&'static str, OnceLock<TypeParams>>> = OnceLock::new();
    let types = TYPES.get_or_init(|| resource_types().map(|t| (t, OnceLock::new())).collect());
    let cell = types.get(resource_type)?;
    Some(cell.get_or_init(|| compile(resource_type, true)))
}

/// Compiles the parameters of a type; `reduce` keeps only the union branches that can
/// apply to it (always, except to test that reducing changes nothing).
fn compile(resource_type: &str, reduce: bool) -> TypeParams {
    let mut out = TypeParams::default();
    for p in search_parameters_for(resource_type) {
        let Some(kind) = params::effective_kind(p) else {
            continue;
        };
        if kind == ParamKind::Special {
            continue;
        }
        let Some(source) = p.expression.as_deref() else {
            continue;
        };
        let branches = if reduce {
            applicable_branches(source, resource_type)
        } else {
            Branches::All
        };
        let expr = match branches {
            Branches::All => Expression::parse(source),
            Branches::None => continue,
            Branches::Some(reduced) => {
                Expression::parse(&reduced).or_else(|_| Expression::parse(source))
            }
        };
        let Ok(expr) = expr else { continue };
        if kind == ParamKind::Composite {
            let mut components = Vec::with_capacity(p.component.len());
            for c in &p.component {
                let Some(kind) = params::by_url(&c.definition).and_then(params::effective_kind)
                else {
                    break;
                };
                let Ok(e) = Expression::parse(&format!("%{NODE_VAR}.select({})", component_expression(p, c)))
                else {
                    break;
                };
                components.push((kind, e));
            }
            if components.len() == p.component.len() && !components.is_empty() {
                out.composite.push(Compiled {
                    code: &p.code,
                    kind,
                    expr,
                    components,
                });
            }
        } else {
            out.simple.push(Compiled {
                code: &p.code,
                kind,
                expr,
                components: Vec::new(),
            });
        }
    }
    out
}

/// A composite component's expression. R4 pairs the components of
/// `DocumentReference.relationship` crosswise (the reference parameter `relatesto` with
/// `code`, the token `relation` with `target`); each is taken from the element its
/// parameter's own expression selects.
fn component_expression<'a>(p: &SearchParameter, c: &'a tessera_fhir::definitions::SearchComponent) -> &'a str {
    if p.id == "DocumentReference-relationship" {
        if c.definition.ends_with("/DocumentReference-relatesto") {
            return "target";
        }
        if c.definition.ends_with("/DocumentReference-relation") {
            return "code";
        }
    }
    &c.expression
}

enum Branches {
    /// Use the expression as it is.
    All,
    /// No branch can apply to the type.
    None,
    /// The union of the branches that can apply.
    Some(String),
}

/// Splits an expression on its top-level `|` and keeps the branches that can select
/// something from `resource_type`: those starting with that type, and those not starting
/// with a resource type at all (`Resource.id`, `%resource…`, `(…)`). An expression whose
/// top level has operators binding looser than `|` (comparisons, `and`, `or`, …) is kept
/// whole.
fn applicable_branches(source: &str, resource_type: &str) -> Branches {
    let Some(all) = union_branches(source) else {
        return Branches::All;
    };
    let total = all.len();
    let kept: Vec<&str> = all
        .into_iter()
        .filter(|branch| {
            let head = branch.trim_start_matches(|c: char| c == '(' || c.is_whitespace());
            let first: &str = head
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            first == resource_type || !is_resource_type(first)
        })
        .collect();
    match kept.len() {
        0 => Branches::None,
        n if n == total => Branches::All,
        _ => Branches::Some(kept.join(" | ")),
    }
}

/// The expression for `resource_type` of a parameter: its source reduced to the union
/// branches that can apply to the type (`None` when none can).
pub(crate) fn expression_for(source: &str, resource_type: &str) -> Option<String> {
    match applicable_branches(source, resource_type) {
        Branches::All => Some(source.trim().to_string()),
        Branches::None => None,
        Branches::Some(s) => Some(s),
    }
}

/// The top-level `|` branches of an expression, trimmed; `None` when its top level has
/// operators binding looser than `|`, or unbalanced brackets or quotes.
pub(crate) fn union_branches(source: &str) -> Option<Vec<&str>> {
    let b = source.as_bytes();
    let mut depth = 0i32;
    let mut quote: Option<u8> = None;
    let mut splits = Vec::new();
    let mut word_start: Option<usize> = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == b'\\' {
                i += 2;
                continue;
            }
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        let is_word = c.is_ascii_alphanumeric() || c == b'_';
        if is_word {
            if word_start.is_none() {
                word_start = Some(i);
            }
        } else if let Some(ws) = word_start.take() {
            if depth == 0 && is_loose_operator_word(&source[ws..i], b, ws, i) {
                return None;
            }
        }
        match c {
            b'\'' | b'`' | b'"' => quote = Some(c),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'|' if depth == 0 => splits.push(i),
            b'=' | b'<' | b'>' | b'~' | b'!' if depth == 0 => return None,
            _ => {}
        }
        i += 1;
    }
    if let Some(ws) = word_start {
        if depth == 0 && is_loose_operator_word(&source[ws..], b, ws, b.len()) {
            return None;
        }
    }
    if quote.is_some() || depth != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut start = 0;
    for end in splits.into_iter().chain(std::iter::once(b.len())) {
        out.push(source[start..end].trim());
        start = end + 1;
    }
    Some(out)
}

/// Is the word at `b[start..end]` an operator binding looser than `|`? Words after a `.`
/// are function or element names, not operators.
fn is_loose_operator_word(word: &str, b: &[u8], start: usize, _end: usize) -> bool {
    let after_dot = b[..start].iter().rev().find(|c| !c.is_ascii_whitespace()) == Some(&b'.');
    !after_dot && matches!(word, "and" | "or" | "xor" | "implies" | "in" | "contains")
}

/// The search index entries of a resource: every value of every applicable search
/// parameter (see the module documentation). A resource without a known `resourceType`
/// has none.
pub fn index_resource(resource: &Value) -> Vec<IndexEntry> {
    match resource_params(resource) {
        Some(params) => index_with(params, resource),
        None => Vec::new(),
    }
}

fn index_with(params: &TypeParams, resource: &Value) -> Vec<IndexEntry> {
    let mut out = Vec::new();
    let ctx = Context::new();
    let mut values = Vec::new();
    for p in &params.simple {
        let Ok(items) = p.expr.evaluate(resource, &ctx) else {
            continue;
        };
        values.clear();
        for item in &items {
            convert(p.kind, item, &mut values);
        }
        dedup(&mut values);
        out.extend(values.drain(..).map(|value| IndexEntry {
            param: p.code.to_string(),
            value,
        }));
        if p.kind == ParamKind::Token {
            of_type_entries(p.code, &items, &mut out);
        }
        if p.kind == ParamKind::Reference {
            reference_identifier_entries(p.code, &items, &mut out);
        }
    }
    out
}

/// For `:identifier`: the `identifier` of each `Reference`, as the token entry
/// `{code}:identifier` (system, value).
fn reference_identifier_entries(code: &str, items: &[Item<'_>], out: &mut Vec<IndexEntry>) {
    let start = out.len();
    for item in items {
        let Item::Node(node) = item else { continue };
        let Some(identifier) = node.json().get("identifier") else { continue };
        let Some(value) = str_field(identifier, "value") else { continue };
        let entry = IndexEntry { param: format!("{code}:identifier"), value: token(str_field(identifier, "system"), value, None) };
        if !out[start..].contains(&entry) {
            out.push(entry);
        }
    }
}

/// For `:of-type`: each `Identifier` with a value, once per `type` coding, as the entry
/// `{code}:of-type` = (the type's system and code, the value).
fn of_type_entries(code: &str, items: &[Item<'_>], out: &mut Vec<IndexEntry>) {
    let start = out.len();
    for item in items {
        let Item::Node(node) = item else { continue };
        if node.type_name() != "Identifier" {
            continue;
        }
        let json = node.json();
        let Some(value) = str_field(json, "value") else { continue };
        let codings = json.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array);
        for c in codings.into_iter().flatten() {
            let Some(type_code) = str_field(c, "code") else { continue };
            let entry = IndexEntry {
                param: format!("{code}:of-type"),
                value: IndexValue::Composite(vec![token(str_field(c, "system"), type_code, None), token(None, value, None)]),
            };
            if !out[start..].contains(&entry) {
                out.push(entry);
            }
        }
    }
}

/// Removes repeated values, keeping the first of each in order: pairwise for the usual
/// handful of values, by hash for long lists.
fn dedup<T: PartialEq>(values: &mut Vec<T>)
where
    for<'x> HashKey<'x, T>: Hash,
{
    if values.len() <= 16 {
        let mut i = 0;
        while i < values.len() {
            if values[..i].contains(&values[i]) {
                values.remove(i);
            } else {
                i += 1;
            }
        }
        return;
    }
    let mut seen: HashMap<u64, Vec<usize>> = HashMap::with_capacity(values.len());
    let mut keep = vec![true; values.len()];
    for i in 0..values.len() {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        HashKey(&values[i]).hash(&mut h);
        let bucket = seen.entry(h.finish()).or_default();
        if bucket.iter().any(|&j| values[j] == values[i]) {
            keep[i] = false;
        } else {
            bucket.push(i);
        }
    }
    let mut k = keep.into_iter();
    values.retain(|_| k.next().unwrap_or(true));
}

/// Hashing for values holding floats (by bit pattern: equal values hash equally).
struct HashKey<'a, T>(&'a T);

impl Hash for HashKey<'_, IndexValue> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        std::mem::discriminant(self.0).hash(h);
        match self.0 {
            IndexValue::Token { system, code, text } => (system, code, text).hash(h),
            IndexValue::String { normalized, exact } => (normalized, exact).hash(h),
            IndexValue::Date { low, high } => (low, high).hash(h),
            IndexValue::Number { value, .. } => value.to_bits().hash(h),
            IndexValue::Quantity {
                value,
                system,
                code,
                ..
            } => (value.to_bits(), system, code).hash(h),
            IndexValue::Reference {
                target_type,
                target_id,
                url,
            } => (target_type, target_id, url).hash(h),
            IndexValue::Uri(u) => u.hash(h),
            IndexValue::Composite(parts) => {
                for part in parts {
                    HashKey(part).hash(h);
                }
            }
        }
    }
}

impl Hash for HashKey<'_, Vec<IndexValue>> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        for v in self.0 {
            HashKey(v).hash(h);
        }
    }
}

fn resource_params(resource: &Value) -> Option<&'static TypeParams> {
    let rt = resource.get("resourceType")?.as_str()?;
    compiled_for(rt)
}

/// The composite parameter entries of a resource (see the module documentation),
/// deduplicated per parameter.
pub fn composite_entries(resource: &Value) -> Vec<CompositeEntry> {
    let mut out: Vec<CompositeEntry> = Vec::new();
    let Some(params) = resource_params(resource) else {
        return out;
    };
    let base_ctx = Context::new();
    for p in &params.composite {
        let Ok(nodes) = p.expr.evaluate(resource, &base_ctx) else {
            continue;
        };
        let mut found: Vec<Vec<IndexValue>> = Vec::new();
        for node in nodes {
            if !matches!(node, Item::Node(_)) {
                continue;
            }
            let ctx = Context::new().with_variable(NODE_VAR, vec![node]);
            let mut per_component: Vec<Vec<IndexValue>> = Vec::with_capacity(p.components.len());
            for (kind, e) in &p.components {
                let mut vals = Vec::new();
                if let Ok(items) = e.evaluate(resource, &ctx) {
                    for item in &items {
                        convert(*kind, item, &mut vals);
                    }
                }
                per_component.push(vals);
            }
            if per_component.iter().any(Vec::is_empty) {
                continue;
            }
            // Cartesian product of the component values.
            let mut combos: Vec<Vec<IndexValue>> = vec![Vec::new()];
            for vals in &per_component {
                let mut next = Vec::with_capacity(combos.len() * vals.len());
                for combo in &combos {
                    for v in vals {
                        let mut c = combo.clone();
                        c.push(v.clone());
                        next.push(c);
                    }
                }
                combos = next;
                if combos.len() > 1024 {
                    break;
                }
            }
            combos.retain(|parts| parts.len() == p.components.len());
            found.append(&mut combos);
        }
        dedup(&mut found);
        out.extend(found.into_iter().map(|parts| CompositeEntry {
            param: p.code.to_string(),
            parts,
        }));
    }
    out
}

// ---------------------------------------------------------------------------------------
// Conversion of FHIRPath items to index values.

fn str_field<'a>(json: &'a Value, key: &str) -> Option<&'a str> {
    json.get(key)?.as_str().filter(|s| !s.is_empty())
}

fn string_array<'a>(json: &'a Value, key: &str) -> impl Iterator<Item = &'a str> {
    let v = json.get(key);
    let many = v
        .and_then(Value::as_array)
        .map(|a| a.as_slice())
        .unwrap_or(&[]);
    let one = v.filter(|v| v.is_string());
    many.iter()
        .chain(one)
        .filter_map(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn number_text(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn convert(kind: ParamKind, item: &Item<'_>, out: &mut Vec<IndexValue>) {
    match item {
        Item::Node(node) => convert_node(kind, node, out),
        Item::String(s) => convert_text(kind, s, out),
        Item::Boolean(b) if kind == ParamKind::Token => {
            out.push(token(None, if *b { "true" } else { "false" }, None))
        }
        Item::Integer(i) => convert_number_text(kind, &i.to_string(), out),
        Item::Decimal(d) => convert_number_text(kind, &d.to_string(), out),
        Item::Date(d) => convert_date_text(kind, &d.format(Temporal::Date), out),
        Item::DateTime(d) => convert_date_text(kind, &d.format(Temporal::DateTime), out),
        Item::Quantity(q) if kind == ParamKind::Quantity => {
            if let Some(r) = number_range(&q.value.to_string()) {
                let unit = q.unit.to_string();
                // Calendar keywords (`year`, `days`) are not UCUM codes.
                let calendar = matches!(
                    unit.trim_end_matches('s'),
                    "year"
                        | "month"
                        | "week"
                        | "day"
                        | "hour"
                        | "minute"
                        | "second"
                        | "millisecond"
                );
                let ucum = !calendar;
                out.push(IndexValue::Quantity {
                    value: r.value,
                    low: r.low,
                    high: r.high,
                    system: ucum.then(|| "http://unitsofmeasure.org".to_string()),
                    code: Some(unit.clone()),
                    unit: Some(unit),
                });
            }
        }
        _ => {}
    }
}

fn token(system: Option<&str>, code: &str, text: Option<&str>) -> IndexValue {
    IndexValue::Token {
        system: system.map(str::to_string),
        code: code.to_string(),
        text: text.map(normalize_string),
    }
}

fn string_value(s: &str) -> IndexValue {
    IndexValue::String {
        normalized: normalize_string(s),
        exact: s.to_string(),
    }
}

/// A string-like primitive under a parameter of `kind`.
fn convert_text(kind: ParamKind, s: &str, out: &mut Vec<IndexValue>) {
    if s.is_empty() {
        return;
    }
    match kind {
        ParamKind::Token => out.push(token(None, s, None)),
        ParamKind::String => out.push(string_value(s)),
        ParamKind::Uri => out.push(IndexValue::Uri(s.to_string())),
        ParamKind::Reference => {
            if let Some(r) = parse_reference(s) {
                out.push(IndexValue::Reference {
                    target_type: r.target_type,
                    target_id: r.target_id,
                    url: r.url,
                });
            }
        }
        ParamKind::Date => convert_date_text(kind, s, out),
        _ => {}
    }
}

fn convert_number_text(kind: ParamKind, s: &str, out: &mut Vec<IndexValue>) {
    match kind {
        ParamKind::Number => {
            if let Some(r) = number_range(s) {
                out.push(IndexValue::Number {
                    value: r.value,
                    low: r.low,
                    high: r.high,
                });
            }
        }
        ParamKind::Token | ParamKind::String => convert_text(kind, s, out),
        _ => {}
    }
}

fn convert_date_text(kind: ParamKind, s: &str, out: &mut Vec<IndexValue>) {
    match kind {
        ParamKind::Date => {
            if let Some((low, high)) = date_range(s) {
                out.push(IndexValue::Date { low, high });
            }
        }
        ParamKind::Token | ParamKind::String => convert_text(kind, s, out),
        _ => {}
    }
}

fn convert_node(kind: ParamKind, node: &Node<'_>, out: &mut Vec<IndexValue>) {
    let json = node.json();
    let ty = node.type_name();
    match json {
        Value::Null => {}
        Value::String(s) => match kind {
            ParamKind::Reference if matches!(ty, "canonical" | "uri" | "url") => {
                if !s.is_empty() {
                    let url = strip_version(s);
                    out.push(IndexValue::Reference {
                        target_type: None,
                        target_id: None,
                        url: Some(url.to_string()),
                    });
                }
            }
            _ => convert_text(kind, s, out),
        },
        Value::Bool(b) => {
            if kind == ParamKind::Token {
                out.push(token(None, if *b { "true" } else { "false" }, None));
            }
        }
        Value::Number(n) => convert_number_text(kind, &n.to_string(), out),
        Value::Object(_) => match kind {
            ParamKind::Token => token_from_complex(ty, json, out),
            ParamKind::String => string_from_complex(ty, json, out),
            ParamKind::Date => date_from_complex(ty, json, out),
            ParamKind::Number if ty == "Range" => out.extend(range_value(json, false)),
            ParamKind::Quantity => quantity_from_complex(ty, json, out),
            ParamKind::Reference if ty == "Reference" => {
                if let Some(r) = str_field(json, "reference").and_then(parse_reference) {
                    out.push(IndexValue::Reference {
                        target_type: r.target_type,
                        target_id: r.target_id,
                        url: r.url,
                    });
                }
            }
            _ => {}
        },
        Value::Array(_) => {}
    }
}

fn coding_token(coding: &Value, fallback_text: Option<&str>) -> Option<IndexValue> {
    let system = str_field(coding, "system");
    let code = str_field(coding, "code");
    let text = str_field(coding, "display").or(fallback_text);
    if code.is_none() && text.is_none() {
        return None;
    }
    Some(token(system, code.unwrap_or(""), text))
}

fn token_from_complex(ty: &str, json: &Value, out: &mut Vec<IndexValue>) {
    match ty {
        "Coding" => out.extend(coding_token(json, None)),
        "CodeableConcept" => {
            let text = str_field(json, "text");
            let codings = json
                .get("coding")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let mut any = false;
            for c in codings {
                if let Some(t) = coding_token(c, text) {
                    any = true;
                    // The concept's text also applies to every coding that has its own display.
                    if let (
                        Some(text),
                        IndexValue::Token {
                            system,
                            code,
                            text: Some(shown),
                        },
                    ) = (text, &t)
                    {
                        let normalized = normalize_string(text);
                        if *shown != normalized {
                            out.push(IndexValue::Token {
                                system: system.clone(),
                                code: code.clone(),
                                text: Some(normalized),
                            });
                        }
                    }
                    out.push(t);
                }
            }
            if !any {
                if let Some(text) = text {
                    out.push(token(None, "", Some(text)));
                }
            }
        }
        "Identifier" => {
            if let Some(value) = str_field(json, "value") {
                let text = json.get("type").and_then(|t| str_field(t, "text"));
                out.push(token(str_field(json, "system"), value, text));
            }
        }
        "ContactPoint" => {
            if let Some(value) = str_field(json, "value") {
                out.push(token(None, value, None));
            }
        }
        _ => {}
    }
}

fn string_from_complex(ty: &str, json: &Value, out: &mut Vec<IndexValue>) {
    let keys: &[&str] = match ty {
        "HumanName" => &["family", "given", "prefix", "suffix", "text"],
        "Address" => &[
            "line",
            "city",
            "district",
            "state",
            "postalCode",
            "country",
            "text",
        ],
        _ => return,
    };
    for key in keys {
        for s in string_array(json, key) {
            out.push(string_value(s));
        }
    }
}

fn period_range(json: &Value) -> Option<IndexValue> {
    let start = str_field(json, "start").map(date_range);
    let end = str_field(json, "end").map(date_range);
    let low = match start {
        Some(Some((l, _))) => l,
        Some(None) => return None,
        None => i64::MIN,
    };
    let high = match end {
        Some(Some((_, h))) => h,
        Some(None) => return None,
        None => i64::MAX,
    };
    (start.is_some() || end.is_some()).then_some(IndexValue::Date { low, high })
}

fn date_from_complex(ty: &str, json: &Value, out: &mut Vec<IndexValue>) {
    match ty {
        "Period" => out.extend(period_range(json)),
        "Timing" => {
            for e in string_array(json, "event") {
                if let Some((low, high)) = date_range(e) {
                    out.push(IndexValue::Date { low, high });
                }
            }
            if let Some(bounds) = json.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                out.extend(period_range(bounds));
            }
        }
        _ => {}
    }
}

/// A `Range` as a number (`unit == false`) or quantity range.
fn range_value(json: &Value, unit: bool) -> Option<IndexValue> {
    let bound = |key: &str| {
        let q = json.get(key)?;
        let r = number_range(&number_text(q.get("value")?)?)?;
        Some((r.value, q))
    };
    let low = bound("low");
    let high = bound("high");
    let (value, q) = low.or(high)?;
    let lo = low.map_or(f64::MIN, |(v, _)| v);
    let hi = high.map_or(f64::MAX, |(v, _)| v);
    Some(if unit {
        IndexValue::Quantity {
            value,
            low: lo,
            high: hi,
            system: str_field(q, "system").map(str::to_string),
            code: str_field(q, "code").map(str::to_string),
            unit: str_field(q, "unit").map(str::to_string),
        }
    } else {
        IndexValue::Number {
            value,
            low: lo,
            high: hi,
        }
    })
}

fn quantity_from_complex(ty: &str, json: &Value, out: &mut Vec<IndexValue>) {
    match ty {
        "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity"
        | "MoneyQuantity" => {
            let Some(r) = json
                .get("value")
                .and_then(number_text)
                .and_then(|t| number_range(&t))
            else {
                return;
            };
            let (mut low, mut high) = (r.low, r.high);
            match str_field(json, "comparator") {
                Some("<" | "<=") => low = f64::MIN,
                Some(">" | ">=") => high = f64::MAX,
                _ => {}
            }
            out.push(IndexValue::Quantity {
                value: r.value,
                low,
                high,
                system: str_field(json, "system").map(str::to_string),
                code: str_field(json, "code").map(str::to_string),
                unit: str_field(json, "unit").map(str::to_string),
            });
        }
        "Money" => {
            let Some(r) = json
                .get("value")
                .and_then(number_text)
                .and_then(|t| number_range(&t))
            else {
                return;
            };
            let currency = str_field(json, "currency");
            out.push(IndexValue::Quantity {
                value: r.value,
                low: r.low,
                high: r.high,
                system: currency.map(|_| "urn:iso:std:iso:4217".to_string()),
                code: currency.map(str::to_string),
                unit: currency.map(str::to_string),
            });
        }
        "Range" => out.extend(range_value(json, true)),
        _ => {}
    }
}

/// How many contained resources of one resource are indexed (for `_contained`).
pub const MAX_CONTAINED: usize = 63;

/// Every index entry of a resource: [`index_resource`] and, as
/// [`IndexValue::Composite`] entries, [`composite_entries`]; then the entries of each
/// contained resource (for `_contained`; the first [`MAX_CONTAINED`]), named
/// `#{n}:{type}.{param}` with `n` its position in `contained` from 1
/// (`#1:Medication.code`, and `#1:Medication._id` for its local id).
pub fn index_all(resource: &Value) -> Vec<IndexEntry> {
    let mut out = own_entries(resource);
    let contained = resource.get("contained").and_then(Value::as_array);
    for (n, c) in contained.into_iter().flatten().take(MAX_CONTAINED).enumerate() {
        let Some(ty) = c.get("resourceType").and_then(Value::as_str) else { continue };
        for e in own_entries(c) {
            out.push(IndexEntry { param: format!("#{}:{ty}.{}", n + 1, e.param), value: e.value });
        }
    }
    out
}

fn own_entries(resource: &Value) -> Vec<IndexEntry> {
    let mut out = index_resource(resource);
    out.extend(composite_entries(resource).into_iter().map(|c| IndexEntry { param: c.param, value: IndexValue::Composite(c.parts) }));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches() {
        let e = "Patient.birthDate | Person.birthDate | RelatedPerson.birthDate";
        assert!(
            matches!(applicable_branches(e, "Patient"), Branches::Some(s) if s == "Patient.birthDate")
        );
        assert!(matches!(
            applicable_branches(e, "Observation"),
            Branches::None
        ));
        assert!(matches!(
            applicable_branches("Resource.id", "Patient"),
            Branches::All
        ));
        let e = "(ActivityDefinition.useContext.value as CodeableConcept) | (Library.useContext.value as CodeableConcept)";
        assert!(
            matches!(applicable_branches(e, "Library"), Branches::Some(s) if s == "(Library.useContext.value as CodeableConcept)")
        );
        assert!(matches!(
            applicable_branches(
                "Patient.deceased.exists() and Patient.deceased != false",
                "Patient"
            ),
            Branches::All
        ));
        assert!(
            matches!(applicable_branches("Patient.name | Person.name.where(text = 'a|b')", "Patient"), Branches::Some(s) if s == "Patient.name")
        );
        assert!(matches!(
            applicable_branches("A.x | B.y or C.z", "A"),
            Branches::All
        ));
        assert!(matches!(
            applicable_branches(
                "Observation.code | Condition.code.contains('x')",
                "Observation"
            ),
            Branches::Some(_)
        ));
    }

    /// Reducing expressions to the branches of the type changes no entry.
    #[test]
    fn reduced_expressions_index_the_same() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data/fhir-r4-examples");
        let dir = if dir.exists() {
            dir
        } else {
            std::path::PathBuf::from("/work/shared/data/fhir-r4-examples")
        };
        let mut checked = 0;
        for file in std::fs::read_dir(dir).unwrap() {
            let resource: Value =
                serde_json::from_slice(&std::fs::read(file.unwrap().path()).unwrap()).unwrap();
            let rt = resource["resourceType"].as_str().unwrap();
            let full = compile(rt, false);
            assert_eq!(
                index_resource(&resource),
                index_with(&full, &resource),
                "{rt}"
            );
            checked += 1;
        }
        assert!(checked > 50);
    }

    #[test]
    fn every_type_compiles() {
        for t in resource_types() {
            let p = compiled_for(t).unwrap();
            assert!(p.simple.iter().any(|c| c.code == "_id"), "{t}");
        }
        let obs = compiled_for("Observation").unwrap();
        let codes: Vec<_> = obs.composite.iter().map(|c| c.code).collect();
        assert!(
            codes.contains(&"component-code-value-quantity"),
            "{codes:?}"
        );
        assert!(codes.contains(&"code-value-string"), "{codes:?}");
    }
}

