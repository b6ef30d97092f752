//! Search requests: the parameters of a FHIR R4 search, parsed and checked against the
//! search parameters of the searched type.
//!
//! [`parse`] takes the percent-decoded `name=value` pairs of a search in order and returns
//! a [`SearchRequest`]:
//!
//! * **Criteria.** Each search parameter becomes a [`Criterion`]; criteria are ANDed, and
//!   the comma-separated values of one criterion are ORed. A name may carry a modifier
//!   (`code:not`, `name:exact`, `subject:Patient`, `value-quantity:missing`), a chain
//!   (`subject:Patient.name`, `subject.organization.name`, to any depth) or a reverse
//!   chain (`_has:Observation:patient:code`, nested `_has` allowed).
//! * **Values** are parsed by parameter type into [`Value`]s: tokens `[system]|[code]`,
//!   strings (with their normalised form, see [`crate::normalize_string`]), dates with a
//!   prefix (`ge2020-03`) as an inclusive microsecond range, numbers and quantities with
//!   the range their precision implies, references (`Patient/123`, `123`, an absolute
//!   URL), URIs and composites (`code$value`). `\,` `\$` `\|` and `\\` escape the
//!   separators.
//! * **Result parameters**: `_sort`, `_count`, `_total`, `_summary`, `_elements`,
//!   `_include`, `_revinclude` (with `:iterate`), `_contained`, `_containedType`, and for
//!   a search across all types `_type`. `_format` and `_pretty` are accepted and left to
//!   the HTTP layer; `_cursor` is the engine's paging token and is passed over.
//!
//! Unknown parameters, and names the type cannot serve (an unknown modifier, a modifier
//! that does not apply to the parameter's type, a chain no target type can follow) are
//! errors in strict mode; in lenient mode the parameter is dropped and reported in
//! [`SearchRequest::warnings`]. A parameter with an empty value is ignored and reported
//! as a warning in both modes. Malformed values (`birthdate=abc`, `_count=-1`) are
//! always errors. Every error names the parameter and says what is wrong.
//!
//! A search across all types (`resource_type` `None`) knows only the common parameters
//! (`_id`, `_lastUpdated`, `_tag`, `_profile`, `_security`, `_source`, and `_text`,
//! `_content`, `_query` for the engine to accept or refuse) and `_type`.

use crate::params::{self, ParamKind};
use crate::values::{
    date_range, is_absolute, is_id, normalize_string, number_range, parse_reference, strip_version,
};
use std::fmt;
use tessera_fhir::definitions::{is_resource_type, SearchParameter};

/// A parsed search.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SearchRequest {
    /// The searched type; `None` for a search across all types.
    pub resource_type: Option<String>,
    /// `_type`, for a search across all types: the types to search (empty: all).
    pub types: Vec<String>,
    /// The criteria, all of which must match.
    pub criteria: Vec<Criterion>,
    /// `_sort`, in order.
    pub sort: Vec<SortKey>,
    /// `_count`.
    pub count: Option<usize>,
    /// `_total`.
    pub total: Total,
    /// `_summary`.
    pub summary: Option<Summary>,
    /// `_elements`: element names to return (empty: all).
    pub elements: Vec<String>,
    /// `_include` and `_revinclude`.
    pub includes: Vec<Include>,
    /// `_contained`.
    pub contained: Contained,
    /// `_containedType`.
    pub contained_type: ContainedType,
    /// Parameters dropped in lenient mode, and ignored empty parameters.
    pub warnings: Vec<QueryError>,
}

/// One search criterion: a parameter, optionally modified or chained, with its values
/// (any of which may match).
#[derive(Debug, Clone, PartialEq)]
pub struct Criterion {
    /// The parameter's code (`code`, `subject`, `_lastUpdated`), or `_has`.
    pub param: String,
    /// The parameter's type ([`ParamKind::Special`] for `_has`). `_profile` is a
    /// [`ParamKind::Reference`] to the profile's canonical URL.
    pub kind: ParamKind,
    pub modifier: Option<Modifier>,
    /// `subject:Patient.name=x`: the criterion applies to the resources `subject` refers
    /// to. `values` is then empty: the values belong to the innermost criterion.
    pub chain: Option<Box<Chain>>,
    /// `_has:Observation:patient:code=x`: the criterion holds when some Observation whose
    /// `patient` refers to the resource matches the inner criterion. `values` is then
    /// empty.
    pub has: Option<Box<Has>>,
    /// The values, ORed. Empty for chains and `_has`.
    pub values: Vec<Value>,
}

/// A forward chain: the referenced resource, of one of `target_types`, must match
/// `criterion`.
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The type given as modifier (`subject:Patient.name`), or else every target type of
    /// the reference parameter that has the chained parameter.
    pub target_types: Vec<String>,
    pub criterion: Criterion,
}

/// A reverse chain (`_has`): some `resource_type` whose `reference_param` refers to the
/// searched resource matches `criterion`.
#[derive(Debug, Clone, PartialEq)]
pub struct Has {
    pub resource_type: String,
    pub reference_param: String,
    pub criterion: Criterion,
}

/// A search modifier (R4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    /// `:missing`, with values [`Value::Boolean`] `true`/`false`.
    Missing,
    /// `:exact` (string).
    Exact,
    /// `:contains` (string).
    Contains,
    /// `:text` (token): values are [`Value::String`].
    Text,
    /// `:not` (token).
    Not,
    /// `:above` (token, uri, reference).
    Above,
    /// `:below` (token, uri, reference).
    Below,
    /// `:in` (token): values are [`Value::Uri`] value-set URLs.
    In,
    /// `:not-in` (token): values are [`Value::Uri`] value-set URLs.
    NotIn,
    /// `:of-type` (token on identifiers): values are [`Value::OfType`].
    OfType,
    /// `:Patient` on a reference parameter: the referenced type.
    Type(String),
    /// `:identifier` (reference): values are [`Value::Token`]s matched against
    /// `Reference.identifier`.
    Identifier,
}

impl Modifier {
    /// The modifier as written after the `:`.
    pub fn as_str(&self) -> &str {
        match self {
            Modifier::Missing => "missing",
            Modifier::Exact => "exact",
            Modifier::Contains => "contains",
            Modifier::Text => "text",
            Modifier::Not => "not",
            Modifier::Above => "above",
            Modifier::Below => "below",
            Modifier::In => "in",
            Modifier::NotIn => "not-in",
            Modifier::OfType => "of-type",
            Modifier::Type(t) => t,
            Modifier::Identifier => "identifier",
        }
    }
}

/// A comparison prefix of date, number and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Prefix {
    #[default]
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    /// Starts after.
    Sa,
    /// Ends before.
    Eb,
    /// Approximately.
    Ap,
}

impl Prefix {
    fn from_code(s: &str) -> Option<Prefix> {
        Some(match s {
            "eq" => Prefix::Eq,
            "ne" => Prefix::Ne,
            "gt" => Prefix::Gt,
            "lt" => Prefix::Lt,
            "ge" => Prefix::Ge,
            "le" => Prefix::Le,
            "sa" => Prefix::Sa,
            "eb" => Prefix::Eb,
            "ap" => Prefix::Ap,
            _ => return None,
        })
    }
}

/// One search value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `code`, `|code`, `system|code`, `system|`.
    ///
    /// `system`: `None` matches any system; `Some(None)` only values without a system
    /// (`|code`); `Some(Some(s))` system `s`. `code` is `None` for `system|` (any code of
    /// the system).
    Token {
        system: Option<Option<String>>,
        code: Option<String>,
    },
    /// A string as given, and normalised (see [`crate::normalize_string`]).
    String { value: String, normalized: String },
    /// A date or date-time: the inclusive microsecond range of its precision (UTC when
    /// no zone is given).
    Date { prefix: Prefix, low: i64, high: i64 },
    /// A number with the range its precision implies (`100` → [99.5, 100.5)).
    Number {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
    },
    /// `[prefix]number[|system|code]` (also `number||code`): `system`/`code` are `None`
    /// when not given.
    Quantity {
        prefix: Prefix,
        value: f64,
        low: f64,
        high: f64,
        system: Option<String>,
        code: Option<String>,
    },
    /// `Type/id`, a bare `id` (with the type from the `:Type` modifier, or the
    /// parameter's only target type), or an absolute URL (canonical URLs without their
    /// `|version`; type and id also set when it ends in `…/Type/id`).
    Reference {
        target_type: Option<String>,
        id: Option<String>,
        url: Option<String>,
    },
    /// A URI as given; also the value-set URL of `:in` / `:not-in`.
    Uri(String),
    /// The `$`-separated parts of a composite value, by component.
    Composite(Vec<Value>),
    /// `:missing=true|false`.
    Boolean(bool),
    /// `:of-type=system|code|value` on an identifier: the identifier's type coding and
    /// value.
    OfType {
        system: Option<String>,
        code: String,
        value: String,
    },
}

/// A `_sort` key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SortKey {
    pub param: String,
    pub descending: bool,
}

/// `_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Total {
    #[default]
    None,
    Estimate,
    Accurate,
}

/// `_summary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Summary {
    True,
    False,
    Count,
    Data,
    Text,
}

/// `_contained`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Contained {
    #[default]
    False,
    True,
    Both,
}

/// `_containedType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ContainedType {
    #[default]
    Container,
    Contained,
}

/// `_include=Type:param[:targetType]` or `_revinclude=…`, `*` for any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    /// The type holding the reference, or `*`.
    pub source_type: String,
    /// The reference parameter, or `*` (every reference parameter).
    pub param: String,
    pub target_type: Option<String>,
    /// `:iterate` (or the older `:recurse`).
    pub iterate: bool,
    /// `_revinclude`.
    pub reverse: bool,
}

/// A problem with one search parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueryError {
    /// The parameter name as given (`subject:Patient.name`, `_count`).
    pub param: String,
    /// What is wrong, naming the parameter.
    pub message: String,
}

impl QueryError {
    fn new(param: &str, message: impl Into<String>) -> QueryError {
        QueryError {
            param: param.to_string(),
            message: message.into(),
        }
    }
}

/// Why a parameter could not be used.
enum Problem {
    /// The name is unknown or cannot be served here: dropped in lenient mode.
    Unsupported(String),
    /// A malformed value: always an error.
    Invalid(String),
}

type Parsed<T> = Result<T, Problem>;

fn unsupported<T>(msg: impl Into<String>) -> Parsed<T> {
    Err(Problem::Unsupported(msg.into()))
}

fn invalid<T>(msg: impl Into<String>) -> Parsed<T> {
    Err(Problem::Invalid(msg.into()))
}

/// How deep chains and `_has` may nest.
const MAX_DEPTH: usize = 8;

/// Parses a search: `params` are the percent-decoded `name=value` pairs in order.
/// `resource_type` is the searched type (`None` for a search across all types); `strict`
/// makes unknown parameters errors instead of warnings. Returns every error found.
pub fn parse(
    resource_type: Option<&str>,
    params: &[(String, String)],
    strict: bool,
) -> Result<SearchRequest, Vec<QueryError>> {
    let mut req = SearchRequest {
        resource_type: resource_type.map(str::to_string),
        ..SearchRequest::default()
    };
    let mut errors = Vec::new();
    if let Some(rt) = resource_type {
        if !is_resource_type(rt) {
            return Err(vec![QueryError::new(
                "",
                format!("'{rt}' is not a resource type"),
            )]);
        }
    }
    for (name, value) in params {
        let result = if name.starts_with('_') && is_result_param(name) {
            result_param(&mut req, resource_type, name, value, &mut errors, strict)
        } else if value.is_empty() {
            req.warnings.push(QueryError::new(
                name,
                format!("parameter '{name}' has no value and was ignored"),
            ));
            Ok(())
        } else {
            criterion(resource_type, name, value, 0).map(|c| req.criteria.push(c))
        };
        match result {
            Ok(()) => {}
            Err(Problem::Unsupported(msg)) if !strict => {
                req.warnings.push(QueryError::new(name, msg))
            }
            Err(Problem::Unsupported(msg) | Problem::Invalid(msg)) => {
                errors.push(QueryError::new(name, msg))
            }
        }
    }
    if errors.is_empty() {
        Ok(req)
    } else {
        Err(errors)
    }
}

const RESULT_PARAMS: [&str; 15] = [
    "_sort",
    // How a total is computed (sent by fhirpy's `count()`): Tessera counts one way, so
    // it is accepted and changes nothing — it never filters.
    "_totalMethod",
    "_count",
    "_total",
    "_summary",
    "_elements",
    "_include",
    "_revinclude",
    "_contained",
    "_containedType",
    "_format",
    "_pretty",
    "_cursor",
    "_type",
    "_has",
];

fn is_result_param(name: &str) -> bool {
    let base = name.split(':').next().unwrap_or(name);
    base != "_has" && RESULT_PARAMS.contains(&base)
}

fn split_list(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim)
}

fn result_param(
    req: &mut SearchRequest,
    resource_type: Option<&str>,
    name: &str,
    value: &str,
    errors: &mut Vec<QueryError>,
    strict: bool,
) -> Parsed<()> {
    let (base, modifier) = match name.split_once(':') {
        Some((b, m)) => (b, Some(m)),
        None => (name, None),
    };
    let include = base == "_include" || base == "_revinclude";
    if let Some(m) = modifier {
        if !(include && (m == "iterate" || m == "recurse")) {
            return unsupported(format!("unknown modifier ':{m}' on parameter '{base}'"));
        }
    }
    match base {
        "_count" => match value.trim().parse::<usize>() {
            Ok(n) => req.count = Some(n),
            Err(_) => return invalid(format!("_count '{value}' is not a non-negative integer")),
        },
        "_totalMethod" => {}
        "_total" => {
            req.total = match value {
                "none" => Total::None,
                "estimate" => Total::Estimate,
                "accurate" => Total::Accurate,
                _ => {
                    return invalid(format!(
                        "_total '{value}' is not valid; use none, estimate or accurate"
                    ))
                }
            }
        }
        "_summary" => {
            req.summary = Some(match value {
                "true" => Summary::True,
                "false" => Summary::False,
                "count" => Summary::Count,
                "data" => Summary::Data,
                "text" => Summary::Text,
                _ => {
                    return invalid(format!(
                        "_summary '{value}' is not valid; use true, false, count, data or text"
                    ))
                }
            })
        }
        "_contained" => {
            req.contained = match value {
                "false" => Contained::False,
                "true" => Contained::True,
                "both" => Contained::Both,
                _ => {
                    return invalid(format!(
                        "_contained '{value}' is not valid; use true, false or both"
                    ))
                }
            }
        }
        "_containedType" => {
            req.contained_type = match value {
                "container" => ContainedType::Container,
                "contained" => ContainedType::Contained,
                _ => {
                    return invalid(format!(
                        "_containedType '{value}' is not valid; use container or contained"
                    ))
                }
            }
        }
        "_elements" => {
            for e in split_list(value) {
                let valid = e
                    .chars()
                    .next()
                    .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                    && e.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
                if !valid {
                    return invalid(format!("_elements '{e}' is not an element name"));
                }
                req.elements.push(e.to_string());
            }
        }
        "_type" => {
            if resource_type.is_some() {
                return unsupported(format!(
                    "_type applies only to a search across all types, not to {}",
                    resource_type.unwrap_or("")
                ));
            }
            for t in split_list(value) {
                if !is_resource_type(t) {
                    return invalid(format!("_type '{t}' is not a resource type"));
                }
                req.types.push(t.to_string());
            }
        }
        "_sort" => {
            for key in split_list(value) {
                let (code, descending) = match key.strip_prefix('-') {
                    Some(c) => (c, true),
                    None => (key, false),
                };
                if code.is_empty() {
                    return invalid("_sort has an empty sort key");
                }
                match params::lookup(resource_type, code).and_then(params::effective_kind) {
                    Some(ParamKind::Composite | ParamKind::Special) => {
                        return invalid(format!(
                            "_sort '{code}': {} parameters cannot be sorted on",
                            params::lookup(resource_type, code).map_or("", |p| p.kind.as_str())
                        ));
                    }
                    Some(_) => req.sort.push(SortKey {
                        param: code.to_string(),
                        descending,
                    }),
                    None => {
                        let msg = format!("_sort: {}", unknown_param_message(resource_type, code));
                        if strict {
                            errors.push(QueryError::new(name, msg));
                        } else {
                            req.warnings.push(QueryError::new(name, msg));
                        }
                    }
                }
            }
        }
        "_include" | "_revinclude" => {
            let iterate = modifier.is_some();
            let reverse = base == "_revinclude";
            req.includes
                .push(parse_include(base, value, iterate, reverse)?);
        }
        // `_format`, `_pretty`: the HTTP layer's; `_cursor`: the engine's paging token.
        _ => {}
    }
    Ok(())
}

fn parse_include(base: &str, value: &str, iterate: bool, reverse: bool) -> Parsed<Include> {
    if value == "*" {
        return Ok(Include {
            source_type: "*".into(),
            param: "*".into(),
            target_type: None,
            iterate,
            reverse,
        });
    }
    let parts: Vec<&str> = value.split(':').collect();
    if !(2..=3).contains(&parts.len()) {
        return invalid(format!(
            "{base} '{value}' is not valid; use Type:parameter[:targetType] or *"
        ));
    }
    let (source, param) = (parts[0], parts[1]);
    if source != "*" && !is_resource_type(source) {
        return invalid(format!(
            "{base} '{value}': '{source}' is not a resource type"
        ));
    }
    let target = parts.get(2).copied();
    if let Some(t) = target {
        if !is_resource_type(t) {
            return invalid(format!("{base} '{value}': '{t}' is not a resource type"));
        }
    }
    if param != "*" && source != "*" {
        let Some(p) = params::lookup(Some(source), param) else {
            return invalid(format!(
                "{base} '{value}': {source} has no search parameter '{param}'"
            ));
        };
        if params::effective_kind(p) != Some(ParamKind::Reference) || p.code == "_profile" {
            return invalid(format!(
                "{base} '{value}': '{param}' is a {} parameter, not a reference parameter",
                p.kind
            ));
        }
        if let Some(t) = target {
            if !p.target.is_empty() && !p.target.iter().any(|x| x == t) {
                return invalid(format!(
                    "{base} '{value}': {source}:{param} does not refer to {t}"
                ));
            }
        }
    }
    Ok(Include {
        source_type: source.into(),
        param: param.into(),
        target_type: target.map(str::to_string),
        iterate,
        reverse,
    })
}

fn unknown_param_message(resource_type: Option<&str>, code: &str) -> String {
    match resource_type {
        Some(rt) => format!("unknown search parameter '{code}' for {rt}"),
        None => format!("unknown search parameter '{code}' for a search across all types (only common parameters and _type)"),
    }
}

/// The targets of a reference parameter; all resource types when it names none.
fn targets(p: &SearchParameter) -> Vec<&str> {
    if p.target.is_empty() || p.target.iter().any(|t| t == "Resource") {
        tessera_fhir::definitions::resource_types().collect()
    } else {
        p.target.iter().map(String::as_str).collect()
    }
}

/// Parses one criterion: `name` relative to `resource_type`, with its raw value.
fn criterion(
    resource_type: Option<&str>,
    name: &str,
    value: &str,
    depth: usize,
) -> Parsed<Criterion> {
    if depth > MAX_DEPTH {
        return unsupported(format!(
            "parameter '{name}' nests chains or _has more than {MAX_DEPTH} deep"
        ));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        return has_criterion(resource_type, name, rest, value, depth);
    }
    let (head, chained) = match name.split_once('.') {
        Some((h, c)) => (h, Some(c)),
        None => (name, None),
    };
    let (code, modifier_text) = match head.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (head, None),
    };
    if code == "_list" {
        // The resources a List holds (`_list=42`); answered by the engine.
        if modifier_text.is_some() || chained.is_some() {
            return unsupported("_list takes no modifier or chain");
        }
        return Ok(Criterion {
            param: code.to_string(),
            kind: ParamKind::Special,
            modifier: None,
            chain: None,
            has: None,
            values: split_unescaped(value, ',').iter().map(|v| string_value(v)).collect(),
        });
    }
    let Some(param) = params::lookup(resource_type, code) else {
        return unsupported(unknown_param_message(resource_type, code));
    };
    let Some(kind) = params::effective_kind(param) else {
        return unsupported(format!("search parameter '{code}' has an unknown type"));
    };
    let modifier = match modifier_text {
        None => None,
        Some(m) => Some(parse_modifier(param, kind, m)?),
    };
    if let Some(chained) = chained {
        return chain_criterion(param, kind, modifier, name, chained, value, depth);
    }
    let values = parse_values(param, kind, modifier.as_ref(), value)?;
    Ok(Criterion {
        param: code.to_string(),
        kind,
        modifier,
        chain: None,
        has: None,
        values,
    })
}

fn has_criterion(
    resource_type: Option<&str>,
    name: &str,
    rest: &str,
    value: &str,
    depth: usize,
) -> Parsed<Criterion> {
    let mut parts = rest.splitn(3, ':');
    let (Some(ty), Some(ref_code), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
        return unsupported(format!(
            "'{name}' is not a valid _has parameter; use _has:Type:reference:parameter"
        ));
    };
    if !is_resource_type(ty) {
        return unsupported(format!("_has: '{ty}' is not a resource type"));
    }
    let Some(p) = params::lookup(Some(ty), ref_code) else {
        return unsupported(format!(
            "_has: unknown search parameter '{ref_code}' for {ty}"
        ));
    };
    if params::effective_kind(p) != Some(ParamKind::Reference) || p.code == "_profile" {
        return unsupported(format!(
            "_has: '{ref_code}' of {ty} is a {} parameter, not a reference parameter",
            p.kind
        ));
    }
    if let Some(rt) = resource_type {
        if !targets(p).contains(&rt) {
            return unsupported(format!("_has: '{ref_code}' of {ty} does not refer to {rt}"));
        }
    }
    let inner = criterion(Some(ty), inner, value, depth + 1)?;
    Ok(Criterion {
        param: "_has".to_string(),
        kind: ParamKind::Special,
        modifier: None,
        chain: None,
        has: Some(Box::new(Has {
            resource_type: ty.to_string(),
            reference_param: ref_code.to_string(),
            criterion: inner,
        })),
        values: Vec::new(),
    })
}

fn chain_criterion(
    param: &'static SearchParameter,
    kind: ParamKind,
    modifier: Option<Modifier>,
    name: &str,
    chained: &str,
    value: &str,
    depth: usize,
) -> Parsed<Criterion> {
    let code = &param.code;
    if kind != ParamKind::Reference || code == "_profile" {
        return unsupported(format!(
            "'{code}' is a {kind} parameter and cannot be chained (in '{name}')"
        ));
    }
    let candidates: Vec<&str> = match &modifier {
        None => targets(param),
        Some(Modifier::Type(t)) => vec![t.as_str()],
        Some(m) => {
            return unsupported(format!(
                "modifier ':{}' cannot be used with a chain (in '{name}')",
                m.as_str()
            ))
        }
    };
    let chained_code = chained.split([':', '.']).next().unwrap_or("");
    let mut first_problem = None;
    let mut found: Option<Criterion> = None;
    let mut target_types = Vec::new();
    for t in candidates {
        if params::lookup(Some(t), chained_code).is_none() {
            continue;
        }
        match criterion(Some(t), chained, value, depth + 1) {
            Ok(c) => {
                target_types.push(t.to_string());
                if found.is_none() {
                    found = Some(c);
                }
            }
            Err(p) => {
                if first_problem.is_none() {
                    first_problem = Some(p);
                }
            }
        }
    }
    match found {
        Some(inner) => Ok(Criterion {
            param: code.clone(),
            kind,
            modifier,
            chain: Some(Box::new(Chain {
                target_types,
                criterion: inner,
            })),
            has: None,
            values: Vec::new(),
        }),
        None => match first_problem {
            Some(p) => Err(p),
            None => unsupported(format!(
                "no target type of '{code}' has a search parameter '{chained_code}' (in '{name}')"
            )),
        },
    }
}

fn parse_modifier(param: &SearchParameter, kind: ParamKind, m: &str) -> Parsed<Modifier> {
    let code = &param.code;
    let modifier = match m {
        "missing" => return Ok(Modifier::Missing),
        "exact" => Modifier::Exact,
        "contains" => Modifier::Contains,
        "text" => Modifier::Text,
        "not" => Modifier::Not,
        "above" => Modifier::Above,
        "below" => Modifier::Below,
        "in" => Modifier::In,
        "not-in" => Modifier::NotIn,
        "of-type" => Modifier::OfType,
        "identifier" => Modifier::Identifier,
        t if is_resource_type(t) => {
            if kind != ParamKind::Reference || code == "_profile" {
                return unsupported(format!(
                    "type modifier ':{t}' does not apply to {kind} parameter '{code}'"
                ));
            }
            if !targets(param).contains(&t) {
                return unsupported(format!(
                    "'{t}' is not a target type of reference parameter '{code}' (targets: {})",
                    param.target.join(", ")
                ));
            }
            return Ok(Modifier::Type(t.to_string()));
        }
        _ => return unsupported(format!("unknown modifier ':{m}' on parameter '{code}'")),
    };
    let applies = match kind {
        ParamKind::String => matches!(modifier, Modifier::Exact | Modifier::Contains),
        ParamKind::Token => {
            matches!(
                modifier,
                Modifier::Text
                    | Modifier::Not
                    | Modifier::Above
                    | Modifier::Below
                    | Modifier::In
                    | Modifier::NotIn
                    | Modifier::OfType
            )
        }
        ParamKind::Reference => matches!(
            modifier,
            Modifier::Identifier | Modifier::Above | Modifier::Below
        ),
        ParamKind::Uri => matches!(modifier, Modifier::Above | Modifier::Below),
        _ => false,
    };
    if applies {
        Ok(modifier)
    } else {
        unsupported(format!(
            "modifier ':{m}' does not apply to {kind} parameter '{code}'"
        ))
    }
}

// ---------------------------------------------------------------------------------------
// Values.

/// Splits on `sep` where it is not escaped by a backslash; escapes are kept.
fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Removes the escapes `\,` `\$` `\|` `\\`; other backslashes stay.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&n) = chars.peek() {
                if matches!(n, ',' | '$' | '|' | '\\') {
                    out.push(n);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    out
}

fn parse_values(
    param: &SearchParameter,
    kind: ParamKind,
    modifier: Option<&Modifier>,
    value: &str,
) -> Parsed<Vec<Value>> {
    let mut out = Vec::new();
    for raw in split_unescaped(value, ',') {
        if raw.is_empty() {
            return invalid(format!(
                "parameter '{}' has an empty value in '{value}'",
                param.code
            ));
        }
        out.push(parse_value(param, kind, modifier, raw)?);
    }
    Ok(out)
}

fn parse_value(
    param: &SearchParameter,
    kind: ParamKind,
    modifier: Option<&Modifier>,
    raw: &str,
) -> Parsed<Value> {
    let code = param.code.as_str();
    match modifier {
        Some(Modifier::Missing) => {
            return match raw {
                "true" => Ok(Value::Boolean(true)),
                "false" => Ok(Value::Boolean(false)),
                _ => invalid(format!("'{code}:missing' takes true or false, not '{raw}'")),
            }
        }
        Some(Modifier::Text) => return Ok(string_value(raw)),
        Some(Modifier::In | Modifier::NotIn) => return Ok(Value::Uri(unescape(raw))),
        Some(Modifier::OfType) => return of_type_value(code, raw),
        Some(Modifier::Identifier) => return token_value(code, raw),
        _ => {}
    }
    match kind {
        ParamKind::String | ParamKind::Special => Ok(string_value(raw)),
        ParamKind::Token => token_value(code, raw),
        ParamKind::Uri => Ok(Value::Uri(unescape(raw))),
        ParamKind::Date => date_value(code, raw),
        ParamKind::Number => number_value(code, raw),
        ParamKind::Quantity => quantity_value(code, raw),
        ParamKind::Reference => reference_value(param, modifier, raw),
        ParamKind::Composite => composite_value(param, raw),
    }
}

fn string_value(raw: &str) -> Value {
    let value = unescape(raw);
    Value::String {
        normalized: normalize_string(&value),
        value,
    }
}

fn token_value(code: &str, raw: &str) -> Parsed<Value> {
    let parts = split_unescaped(raw, '|');
    let unesc = |s: &str| (!s.is_empty()).then(|| unescape(s));
    match parts.as_slice() {
        [c] => Ok(Value::Token {
            system: None,
            code: Some(unescape(c)),
        }),
        [s, c] => {
            if s.is_empty() && c.is_empty() {
                return invalid(format!(
                    "token '{raw}' for '{code}' has neither system nor code"
                ));
            }
            Ok(Value::Token {
                system: Some(unesc(s)),
                code: unesc(c),
            })
        }
        _ => invalid(format!(
            "token '{raw}' for '{code}' has more than one '|'; use [system]|[code]"
        )),
    }
}

fn of_type_value(code: &str, raw: &str) -> Parsed<Value> {
    let parts = split_unescaped(raw, '|');
    match parts.as_slice() {
        [s, c, v] if !c.is_empty() && !v.is_empty() => Ok(Value::OfType {
            system: (!s.is_empty()).then(|| unescape(s)),
            code: unescape(c),
            value: unescape(v),
        }),
        _ => invalid(format!(
            "'{code}:of-type' value '{raw}' is not valid; use [system]|[code]|[value]"
        )),
    }
}

/// Splits a two-letter comparison prefix off a date, number or quantity value.
fn split_prefix(raw: &str) -> (Prefix, &str) {
    if raw.len() > 2 && raw.is_char_boundary(2) {
        if let Some(p) = Prefix::from_code(&raw[..2]) {
            return (p, &raw[2..]);
        }
    }
    (Prefix::Eq, raw)
}

fn date_value(code: &str, raw: &str) -> Parsed<Value> {
    let (prefix, text) = split_prefix(raw);
    // A `+` of a zone offset that was not percent-encoded arrives as a space.
    let fixed;
    let text = if text.len() > 10 && text.contains(' ') {
        fixed = text.replace(' ', "+");
        fixed.as_str()
    } else {
        text
    };
    match date_range(text) {
        Some((low, high)) => Ok(Value::Date { prefix, low, high }),
        None => invalid(format!("date '{raw}' for '{code}' is not a valid date; use YYYY, YYYY-MM, YYYY-MM-DD or a dateTime")),
    }
}

fn number_value(code: &str, raw: &str) -> Parsed<Value> {
    let (prefix, text) = split_prefix(raw);
    match number_range(text) {
        Some(r) => Ok(Value::Number {
            prefix,
            value: r.value,
            low: r.low,
            high: r.high,
        }),
        None => invalid(format!("number '{raw}' for '{code}' is not a valid number")),
    }
}

fn quantity_value(code: &str, raw: &str) -> Parsed<Value> {
    let parts = split_unescaped(raw, '|');
    let (number, system, unit) = match parts.as_slice() {
        [n] => (*n, None, None),
        [n, s, c] => (
            *n,
            (!s.is_empty()).then(|| unescape(s)),
            (!c.is_empty()).then(|| unescape(c)),
        ),
        _ => {
            return invalid(format!(
                "quantity '{raw}' for '{code}' is not valid; use [prefix]number[|system|code]"
            ))
        }
    };
    let (prefix, text) = split_prefix(number);
    match number_range(text) {
        Some(r) => Ok(Value::Quantity {
            prefix,
            value: r.value,
            low: r.low,
            high: r.high,
            system,
            code: unit,
        }),
        None => invalid(format!(
            "quantity '{raw}' for '{code}' does not start with a valid number"
        )),
    }
}

fn reference_value(
    param: &SearchParameter,
    modifier: Option<&Modifier>,
    raw: &str,
) -> Parsed<Value> {
    let code = &param.code;
    let text = unescape(raw);
    let modifier_type = match modifier {
        Some(Modifier::Type(t)) => Some(t.as_str()),
        _ => None,
    };
    if is_absolute(&text) {
        let url = strip_version(&text);
        let parts = parse_reference(url).unwrap_or_default();
        let (target_type, id) = (parts.target_type, parts.target_id);
        // `…/_history/…` removed.
        let url = parts.url.unwrap_or_else(|| url.to_string());
        if let (Some(m), Some(t)) = (modifier_type, target_type.as_deref()) {
            if m != t {
                return invalid(format!(
                    "reference '{raw}' for '{code}:{m}' refers to a {t}"
                ));
            }
        }
        return Ok(Value::Reference {
            target_type,
            id,
            url: Some(url),
        });
    }
    if text.contains('/') {
        let Some(p) = parse_reference(&text) else {
            return invalid(format!("reference '{raw}' for '{code}' is not valid; use Type/id, an id or an absolute URL"));
        };
        let t = p.target_type.unwrap_or_default();
        if let Some(m) = modifier_type {
            if m != t {
                return invalid(format!(
                    "reference '{raw}' for '{code}:{m}' refers to a {t}"
                ));
            }
        }
        if !targets(param).contains(&t.as_str()) {
            return invalid(format!(
                "reference '{raw}': '{code}' does not refer to {t} (targets: {})",
                param.target.join(", ")
            ));
        }
        return Ok(Value::Reference {
            target_type: Some(t),
            id: p.target_id,
            url: None,
        });
    }
    if !is_id(&text) {
        return invalid(format!(
            "reference '{raw}' for '{code}' is not valid; use Type/id, an id or an absolute URL"
        ));
    }
    let target_type = modifier_type.map(str::to_string).or_else(|| {
        (param.target.len() == 1 && param.target[0] != "Resource").then(|| param.target[0].clone())
    });
    Ok(Value::Reference {
        target_type,
        id: Some(text),
        url: None,
    })
}

fn composite_value(param: &SearchParameter, raw: &str) -> Parsed<Value> {
    let code = &param.code;
    let parts = split_unescaped(raw, '$');
    if parts.len() != param.component.len() {
        return invalid(format!(
            "composite '{raw}' for '{code}' has {} part(s); it needs {} separated by '$'",
            parts.len(),
            param.component.len()
        ));
    }
    let mut values = Vec::with_capacity(parts.len());
    for (part, component) in parts.iter().zip(&param.component) {
        let Some(def) = params::by_url(&component.definition) else {
            return unsupported(format!(
                "composite parameter '{code}' has an unknown component"
            ));
        };
        let Some(kind) = params::effective_kind(def) else {
            return unsupported(format!(
                "composite parameter '{code}' has a component of unknown type"
            ));
        };
        if part.is_empty() {
            return invalid(format!("composite '{raw}' for '{code}' has an empty part"));
        }
        // Components are checked with the composite's name in messages.
        let mut value = parse_value(def, kind, None, part);
        if let Err(Problem::Invalid(msg)) = &mut value {
            *msg = format!("{msg} (in composite '{code}')");
        }
        values.push(value?);
    }
    Ok(Value::Composite(values))
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Prefix::Eq => "eq",
            Prefix::Ne => "ne",
            Prefix::Gt => "gt",
            Prefix::Lt => "lt",
            Prefix::Ge => "ge",
            Prefix::Le => "le",
            Prefix::Sa => "sa",
            Prefix::Eb => "eb",
            Prefix::Ap => "ap",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(split_unescaped("a,b\\,c,", ','), ["a", "b\\,c", ""]);
        assert_eq!(split_unescaped("a\\\\,b", ','), ["a\\\\", "b"]);
        assert_eq!(split_unescaped("", ','), [""]);
        assert_eq!(unescape("a\\,b\\$c\\|d\\\\e\\x"), "a,b$c|d\\e\\x");
        assert_eq!(unescape("end\\"), "end\\");
    }

    #[test]
    fn prefixes() {
        assert_eq!(split_prefix("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(split_prefix("2020"), (Prefix::Eq, "2020"));
        assert_eq!(split_prefix("ge"), (Prefix::Eq, "ge"));
        assert_eq!(split_prefix("xx5"), (Prefix::Eq, "xx5"));
        assert_eq!(split_prefix("gé5"), (Prefix::Eq, "gé5"));
        assert_eq!(Prefix::Sa.to_string(), "sa");
    }
}
