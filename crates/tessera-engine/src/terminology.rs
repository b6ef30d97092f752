//! Terminology operations: `ValueSet/$expand`, `ValueSet/$validate-code`,
//! `CodeSystem/$lookup`, `CodeSystem/$validate-code`, `CodeSystem/$subsumes`,
//! `ConceptMap/$translate`.
//!
//! They work over the R4 CodeSystems and ValueSets shipped with the server
//! (`tessera_fhir::terminology`) and over the CodeSystem, ValueSet and ConceptMap resources
//! stored on it (a trust's own codes). Stored resources are read like every other read:
//! through the [`Gate`] (a resource the subject may not see is absent) and recorded in the
//! audit trail; a stored resource with the url of a shipped one takes precedence (the
//! newest one the subject may see). The stored resources a request needs are gathered
//! first, then the pure evaluation of `tessera_fhir::terminology` runs over them.
//!
//! A value set that cannot be expanded completely (it includes all of SNOMED CT or LOINC,
//! which are not shipped; an unsupported filter) is refused with 422 and an
//! OperationOutcome saying why — never answered with a partial expansion.

use crate::access::Access;
use crate::guard::{Decided, Gate};
use crate::{Engine, FhirError};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tessera_fhir::terminology::{self as tx, CodeSystem, ExpandOptions, Member, Problem, Source, ValueSet};
use tessera_fhir::IssueType;
use tessera_store::search::{Clause, IndexQuery, Pred, UriMode};

/// The most codes one expansion may hold (before paging).
pub const MAX_EXPANSION: usize = 100_000;
/// The most codes returned in one page of an expansion (`count` above this is lowered).
pub const MAX_COUNT: usize = 5_000;
/// The most value sets one request may load (imports included).
const MAX_VALUE_SETS: usize = 64;
/// The most ConceptMaps `$translate` consults when no map is named.
const MAX_MAPS: usize = 20;

/// The operations this module answers, as `(resource type, operation)`.
pub const OPERATIONS: &[(&str, &str)] = &[
    ("ValueSet", "$expand"),
    ("ValueSet", "$validate-code"),
    ("CodeSystem", "$lookup"),
    ("CodeSystem", "$validate-code"),
    ("CodeSystem", "$subsumes"),
    ("ConceptMap", "$translate"),
];

/// Whether `operation` on `resource_type` is a terminology operation.
pub fn is_terminology_operation(resource_type: &str, operation: &str) -> bool {
    OPERATIONS.iter().any(|(t, o)| *t == resource_type && *o == operation)
}

/// Parameters accepted (and ignored) by every operation.
const COMMON: &[&str] = &["_format", "_pretty"];

/// The input parameters of an operation, from a query string or a `Parameters` body, as
/// `Parameters.parameter` entries.
#[derive(Debug, Clone, Default)]
pub struct Params {
    items: Vec<Value>,
}

impl Params {
    /// From a query string: each `name=value` becomes a string parameter.
    pub fn from_query(query: &str) -> Params {
        let items = form_urlencoded::parse(query.as_bytes()).map(|(k, v)| json!({"name": k, "valueString": v})).collect();
        Params { items }
    }

    /// From a `Parameters` resource.
    pub fn from_parameters(body: &Value) -> Result<Params, FhirError> {
        if body["resourceType"].as_str() != Some("Parameters") {
            return Err(FhirError::bad_request("the body of a terminology operation must be a Parameters resource").at("resourceType"));
        }
        let items = match &body["parameter"] {
            Value::Null => Vec::new(),
            Value::Array(a) => a.clone(),
            _ => return Err(FhirError::bad_request("Parameters.parameter must be an array").at("Parameters.parameter")),
        };
        for (i, p) in items.iter().enumerate() {
            if p["name"].as_str().is_none() {
                return Err(FhirError::bad_request("a parameter without a name").at(format!("Parameters.parameter[{i}].name")));
            }
        }
        Ok(Params { items })
    }

    /// Adds the parameters of `other` (a POST's query string).
    pub fn extend(&mut self, other: Params) {
        self.items.extend(other.items);
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.items.iter().filter(move |p| p["name"].as_str() == Some(name))
    }

    fn one<'a>(&'a self, name: &'a str) -> Result<Option<&'a Value>, FhirError> {
        let mut it = self.all(name);
        let first = it.next();
        if it.next().is_some() {
            return Err(FhirError::bad_request(format!("the parameter '{name}' is given more than once")).at(name));
        }
        Ok(first)
    }

    /// The value of a parameter (`value[x]`) and its type suffix.
    fn value(p: &Value) -> Option<(&str, &Value)> {
        p.as_object()?.iter().find_map(|(k, v)| k.strip_prefix("value").map(|t| (t, v)))
    }

    /// A primitive parameter, as text.
    fn string(&self, name: &str) -> Result<Option<String>, FhirError> {
        let Some(p) = self.one(name)? else { return Ok(None) };
        match Self::value(p) {
            Some((_, Value::String(s))) => Ok(Some(s.clone())),
            Some((_, Value::Bool(b))) => Ok(Some(b.to_string())),
            Some((_, Value::Number(n))) => Ok(Some(n.to_string())),
            _ => Err(FhirError::bad_request(format!("the parameter '{name}' must have a primitive value")).at(name)),
        }
    }

    fn bool(&self, name: &str) -> Result<Option<bool>, FhirError> {
        match self.string(name)?.as_deref() {
            None => Ok(None),
            Some("true") => Ok(Some(true)),
            Some("false") => Ok(Some(false)),
            Some(other) => Err(FhirError::bad_request(format!("the parameter '{name}' must be true or false, not '{other}'")).at(name)),
        }
    }

    fn count(&self, name: &str) -> Result<Option<usize>, FhirError> {
        match self.string(name)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| FhirError::bad_request(format!("the parameter '{name}' must be a non-negative integer, not '{s}'")).at(name)),
        }
    }

    /// A Coding parameter (`valueCoding`, or `system|code` as text).
    fn coding(&self, name: &str) -> Result<Option<Coding>, FhirError> {
        let Some(p) = self.one(name)? else { return Ok(None) };
        match Self::value(p) {
            Some(("Coding", c)) => Coding::from_json(c).map(Some).ok_or_else(|| FhirError::bad_request(format!("the Coding '{name}' has no code")).at(name)),
            Some((_, Value::String(s))) => Ok(Some(Coding::from_text(s))),
            _ => Err(FhirError::bad_request(format!("the parameter '{name}' must be a Coding")).at(name)),
        }
    }

    /// A CodeableConcept parameter: its codings.
    fn codeable_concept(&self, name: &str) -> Result<Option<Vec<Coding>>, FhirError> {
        let Some(p) = self.one(name)? else { return Ok(None) };
        match Self::value(p) {
            Some(("CodeableConcept", c)) => {
                let codings: Vec<Coding> = c["coding"].as_array().into_iter().flatten().filter_map(Coding::from_json).collect();
                if codings.is_empty() {
                    return Err(FhirError::bad_request(format!("the CodeableConcept '{name}' has no coding with a code")).at(name));
                }
                Ok(Some(codings))
            }
            _ => Err(FhirError::bad_request(format!("the parameter '{name}' must be a CodeableConcept")).at(name)),
        }
    }

    /// A resource parameter (`resource`).
    fn resource<'a>(&'a self, name: &'a str) -> Result<Option<&'a Value>, FhirError> {
        let Some(p) = self.one(name)? else { return Ok(None) };
        match p.get("resource") {
            Some(r) => Ok(Some(r)),
            None => Err(FhirError::bad_request(format!("the parameter '{name}' must carry a resource")).at(name)),
        }
    }

    /// Refuses a parameter the operation does not know, naming it, rather than ignoring it.
    fn check(&self, operation: &str, known: &[&str]) -> Result<(), FhirError> {
        for p in &self.items {
            let name = p["name"].as_str().unwrap_or("");
            if !known.contains(&name) && !COMMON.contains(&name) {
                return Err(FhirError::bad_request(format!("{operation} does not support the parameter '{name}' (supported: {})", known.join(", "))).at(name));
            }
        }
        Ok(())
    }
}

/// A coding given to an operation.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Coding {
    system: Option<String>,
    version: Option<String>,
    code: String,
    display: Option<String>,
}

impl Coding {
    fn from_json(c: &Value) -> Option<Coding> {
        Some(Coding {
            system: c["system"].as_str().map(str::to_string),
            version: c["version"].as_str().map(str::to_string),
            code: c["code"].as_str()?.to_string(),
            display: c["display"].as_str().map(str::to_string),
        })
    }

    /// `system|code` or `code`.
    fn from_text(s: &str) -> Coding {
        match s.rsplit_once('|') {
            Some((system, code)) => Coding { system: (!system.is_empty()).then(|| system.to_string()), version: None, code: code.to_string(), display: None },
            None => Coding { system: None, version: None, code: s.to_string(), display: None },
        }
    }

    fn label(&self) -> String {
        match &self.system {
            Some(s) => format!("{s}#{}", self.code),
            None => self.code.clone(),
        }
    }
}

/// The code systems and value sets one request uses: the stored ones the subject may see
/// (gathered through the gate), else the shipped ones.
#[derive(Default)]
struct Resolved {
    code_systems: HashMap<String, Option<CodeSystem>>,
    value_sets: HashMap<String, Option<ValueSet>>,
}

impl Source for Resolved {
    fn code_system(&self, url: &str) -> Option<&CodeSystem> {
        match self.code_systems.get(url) {
            Some(Some(cs)) => Some(cs),
            _ => tx::shipped().code_system(url),
        }
    }

    fn value_set(&self, url: &str, version: Option<&str>) -> Option<&ValueSet> {
        match self.value_sets.get(&canonical(url, version)) {
            Some(Some(vs)) => Some(vs),
            _ => tx::shipped().value_set(url, version),
        }
    }
}

fn canonical(url: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("{url}|{v}"),
        None => url.to_string(),
    }
}

/// One request's terminology work: the gate, what it released, what was resolved.
struct Work<'a, 'g> {
    engine: &'a Engine,
    gate: &'a mut Gate<'g>,
    /// The stored resources read (`Type/id/_history/v`), for the audit record.
    entities: Vec<String>,
    resolved: Resolved,
}

fn problem(p: Problem) -> FhirError {
    match p {
        Problem::NotSupported(m) => FhirError::new(422, IssueType::NotSupported, m),
        Problem::TooCostly(m) => FhirError::new(422, IssueType::TooCostly, m),
        Problem::NotFound(m) => FhirError::new(422, IssueType::NotFound, m),
        Problem::Invalid(m) => FhirError::new(422, IssueType::Invalid, m),
    }
}

fn parse_error(what: &str, e: String) -> FhirError {
    FhirError::new(422, IssueType::Invalid, format!("the stored {what} cannot be used: {e}"))
}

impl Work<'_, '_> {
    /// The newest stored `resource_type` with canonical `url` (and `version`) the subject
    /// may see.
    async fn stored_by_url(&mut self, resource_type: &str, url: &str, version: Option<&str>) -> Result<Option<Value>, FhirError> {
        let mut q = IndexQuery::new(Some(resource_type));
        q.clauses.push(Clause { any: vec![Pred::Uri { param: "url".into(), mode: UriMode::Equals, value: url.to_string() }], negate: false });
        q.limit = 32;
        let seqs = self.engine.store().search(&q).await?;
        for s in self.engine.store().load(&seqs).await? {
            if s.deleted {
                continue;
            }
            let Decided::Visible(released) = self.gate.release(s).await? else { continue };
            let json: Value = serde_json::from_slice(&released.json).map_err(|e| FhirError::internal(format!("stored {resource_type}: {e}")))?;
            if version.is_some_and(|v| json["version"].as_str() != Some(v)) {
                continue;
            }
            self.entities.push(format!("{}/{}/_history/{}", released.resource_type, released.id, released.version));
            return Ok(Some(json));
        }
        Ok(None)
    }

    /// The stored `resource_type/id` the subject may see.
    async fn stored_by_id(&mut self, resource_type: &str, id: &str) -> Result<Option<Value>, FhirError> {
        if !tessera_fhir::validation::is_valid_id(id) {
            return Ok(None);
        }
        let Some(s) = self.engine.store().read(resource_type, id).await? else { return Ok(None) };
        if s.deleted {
            return Ok(None);
        }
        let Decided::Visible(released) = self.gate.release(s).await? else { return Ok(None) };
        self.entities.push(format!("{}/{}/_history/{}", released.resource_type, released.id, released.version));
        serde_json::from_slice(&released.json).map(Some).map_err(|e| FhirError::internal(format!("stored {resource_type}: {e}")))
    }

    /// Resolves the code system `url`: stored (newest visible), else shipped.
    async fn load_code_system(&mut self, url: &str) -> Result<(), FhirError> {
        if self.resolved.code_systems.contains_key(url) {
            return Ok(());
        }
        let stored = match self.stored_by_url("CodeSystem", url, None).await? {
            Some(json) => Some(CodeSystem::from_json(&json).map_err(|e| parse_error("CodeSystem", e))?),
            None => None,
        };
        self.resolved.code_systems.insert(url.to_string(), stored);
        Ok(())
    }

    async fn load_value_set(&mut self, url: &str, version: Option<&str>) -> Result<(), FhirError> {
        let key = canonical(url, version);
        if self.resolved.value_sets.contains_key(&key) {
            return Ok(());
        }
        if self.resolved.value_sets.len() >= MAX_VALUE_SETS {
            return Err(FhirError::new(422, IssueType::TooCostly, format!("the value set imports more than {MAX_VALUE_SETS} value sets")));
        }
        let stored = match self.stored_by_url("ValueSet", url, version).await? {
            Some(json) => Some(ValueSet::from_json(&json).map_err(|e| parse_error("ValueSet", e))?),
            None => None,
        };
        self.resolved.value_sets.insert(key, stored);
        Ok(())
    }

    /// Gathers every code system and value set `vs` needs, imports followed.
    async fn gather(&mut self, vs: &ValueSet) -> Result<(), FhirError> {
        let (systems, imports) = vs.references();
        let mut systems: Vec<String> = systems;
        let mut pending: Vec<String> = imports;
        let mut done: Vec<String> = Vec::new();
        while let Some(c) = pending.pop() {
            if done.contains(&c) {
                continue;
            }
            done.push(c.clone());
            let (url, version) = tx::split_canonical(&c);
            self.load_value_set(url, version).await?;
            if let Some(imported) = self.resolved.value_set(url, version) {
                let (s, i) = imported.references();
                systems.extend(s);
                pending.extend(i);
            }
        }
        systems.sort();
        systems.dedup();
        for s in systems {
            self.load_code_system(&s).await?;
        }
        Ok(())
    }

    /// The value set an operation names: the instance, an inline `valueSet`, or `url`
    /// (+ `valueSetVersion`), stored first, then shipped.
    async fn value_set(&mut self, id: Option<&str>, params: &Params) -> Result<ValueSet, FhirError> {
        let vs = if let Some(id) = id {
            match self.stored_by_id("ValueSet", id).await? {
                Some(json) => ValueSet::from_json(&json).map_err(|e| parse_error("ValueSet", e))?,
                None => tx::shipped().value_set_by_id(id).cloned().ok_or_else(|| FhirError::not_found("ValueSet", id))?,
            }
        } else if let Some(inline) = params.resource("valueSet")? {
            if inline["resourceType"].as_str() != Some("ValueSet") {
                return Err(FhirError::bad_request("the parameter 'valueSet' must carry a ValueSet").at("valueSet"));
            }
            ValueSet::from_json(inline).map_err(|e| FhirError::bad_request(e).at("valueSet"))?
        } else {
            let Some(url) = params.string("url")? else {
                return Err(FhirError::bad_request("name the value set: 'url' (with 'valueSetVersion' if needed), 'valueSet', or ValueSet/[id]/$…").at("url"));
            };
            let (url, mut version) = tx::split_canonical(&url);
            let given = params.string("valueSetVersion")?;
            if given.is_some() {
                version = given.as_deref();
            }
            self.load_value_set(url, version).await?;
            match self.resolved.value_set(url, version) {
                Some(vs) => vs.clone(),
                None => {
                    return Err(FhirError::new(404, IssueType::NotFound, format!("the value set {} is not known to this server", canonical(url, version))).at("url"));
                }
            }
        };
        self.gather(&vs).await?;
        Ok(vs)
    }

    /// The code system an operation names: the instance, or `url`/`system` (+ `version`).
    async fn code_system(&mut self, id: Option<&str>, url: Option<&str>, version: Option<&str>, param: &str) -> Result<CodeSystem, FhirError> {
        let cs = if let Some(id) = id {
            match self.stored_by_id("CodeSystem", id).await? {
                Some(json) => CodeSystem::from_json(&json).map_err(|e| parse_error("CodeSystem", e))?,
                None => tx::shipped().code_system_by_id(id).cloned().ok_or_else(|| FhirError::not_found("CodeSystem", id))?,
            }
        } else {
            let Some(url) = url else {
                return Err(FhirError::bad_request(format!("name the code system: '{param}' (or CodeSystem/[id]/$…)")).at(param));
            };
            let (url, v) = tx::split_canonical(url);
            let version = version.or(v);
            let stored = match self.stored_by_url("CodeSystem", url, version).await? {
                Some(json) => Some(CodeSystem::from_json(&json).map_err(|e| parse_error("CodeSystem", e))?),
                None => None,
            };
            let found = stored.or_else(|| tx::shipped().code_system(url).filter(|cs| version.is_none() || cs.version.as_deref() == version).cloned());
            found.ok_or_else(|| FhirError::new(404, IssueType::NotFound, format!("the code system {} is not known to this server", canonical(url, version))).at(param))?
        };
        if !cs.has_concepts() {
            let why = match cs.content.as_str() {
                "not-present" => "its content is not held by this server (SNOMED CT, LOINC and other large terminologies are not shipped)",
                "supplement" => "it is a supplement",
                _ => "it has no concepts",
            };
            return Err(FhirError::new(422, IssueType::NotSupported, format!("the code system {} cannot be used: {why}", cs.url)));
        }
        Ok(cs)
    }
}

/// A `Parameters` resource from `(name, value[x] member, value)` triples and parts.
fn parameters(items: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": items})
}

fn param(name: &str, kind: &str, value: Value) -> Value {
    let mut o = Map::new();
    o.insert("name".into(), Value::String(name.into()));
    o.insert(format!("value{kind}"), value);
    Value::Object(o)
}

impl Engine {
    /// Answers a terminology operation (see [`OPERATIONS`]) on `resource_type` (type level)
    /// or `resource_type/id` (instance level): a `Parameters` resource, or the expanded
    /// `ValueSet` for `$expand`. Reads of stored resources go through the gate and are
    /// audited.
    pub async fn terminology(&self, access: &Access, resource_type: &str, id: Option<&str>, operation: &str, params: Params) -> Result<Value, FhirError> {
        if !is_terminology_operation(resource_type, operation) {
            return Err(FhirError::new(404, IssueType::NotSupported, format!("no terminology operation {operation} on {resource_type}")));
        }
        let mut gate = self.gate(access);
        let mut work = Work { engine: self, gate: &mut gate, entities: Vec::new(), resolved: Resolved::default() };
        let result = match (resource_type, operation) {
            ("ValueSet", "$expand") => work.expand(id, &params).await,
            ("ValueSet", "$validate-code") => work.validate_value_set(id, &params).await,
            ("CodeSystem", "$lookup") => work.lookup(id, &params).await,
            ("CodeSystem", "$validate-code") => work.validate_code_system(id, &params).await,
            ("CodeSystem", "$subsumes") => work.subsumes(id, &params).await,
            _ => work.translate(id, &params).await,
        };
        let entities = std::mem::take(&mut work.entities);
        if !entities.is_empty() {
            let name = operation.trim_start_matches('$');
            gate.record_access(name, result.is_ok(), &entities, Vec::new(), Some(operation));
        }
        gate.finish().await?;
        result
    }
}

impl Work<'_, '_> {
    async fn expand(&mut self, id: Option<&str>, params: &Params) -> Result<Value, FhirError> {
        params.check(
            "$expand",
            &["url", "valueSetVersion", "valueSet", "filter", "offset", "count", "includeDesignations", "activeOnly", "excludeNested", "displayLanguage"],
        )?;
        let filter = params.string("filter")?.filter(|f| !f.trim().is_empty());
        let offset = params.count("offset")?.unwrap_or(0);
        let count = params.count("count")?;
        let designations = params.bool("includeDesignations")?.unwrap_or(false);
        let active_only = params.bool("activeOnly")?.unwrap_or(false);
        let vs = self.value_set(id, params).await?;
        let options = ExpandOptions { only_system: None, active_only, limit: MAX_EXPANSION };
        let expansion = tx::expand(&vs, &self.resolved, &options).map_err(problem)?;
        let mut members: Vec<Member> = expansion.members;
        if let Some(f) = &filter {
            members.retain(|m| m.matches_text(f));
        }
        let total = members.len();
        let count = match count {
            Some(c) => c.min(MAX_COUNT),
            None if total > MAX_COUNT => {
                return Err(FhirError::new(
                    422,
                    IssueType::TooCostly,
                    format!("the expansion of {} has {total} codes: ask for it in pages with 'count' (at most {MAX_COUNT}) and 'offset'", vs.label()),
                )
                .at("count"));
            }
            None => total,
        };
        let contains: Vec<Value> = members.iter().skip(offset).take(count).map(|m| m.to_json(designations)).collect();
        let mut parameter = Vec::new();
        if let Some(f) = &filter {
            parameter.push(param("filter", "String", json!(f)));
        }
        if offset > 0 || params.count("count")?.is_some() {
            parameter.push(param("offset", "Integer", json!(offset)));
            parameter.push(param("count", "Integer", json!(count)));
        }
        if designations {
            parameter.push(param("includeDesignations", "Boolean", json!(true)));
        }
        if active_only {
            parameter.push(param("activeOnly", "Boolean", json!(true)));
        }
        for used in &expansion.used_code_systems {
            parameter.push(param("used-codesystem", "Uri", json!(used)));
        }
        for (name, system) in &expansion.warnings {
            parameter.push(param(name, "Uri", json!(system)));
        }
        let mut out = Map::new();
        out.insert("resourceType".into(), json!("ValueSet"));
        if let Some(id) = &vs.id {
            out.insert("id".into(), json!(id));
        }
        for (k, v) in [("url", &vs.url), ("version", &vs.version), ("name", &vs.name), ("title", &vs.title)] {
            if let Some(v) = v {
                out.insert(k.into(), json!(v));
            }
        }
        out.insert("status".into(), json!(vs.status.as_deref().unwrap_or("unknown")));
        let mut exp = Map::new();
        exp.insert("identifier".into(), json!(format!("urn:uuid:{}", crate::prepare::new_id())));
        exp.insert("timestamp".into(), json!(crate::prepare::format_instant(tessera_store::now_micros())));
        exp.insert("total".into(), json!(total));
        exp.insert("offset".into(), json!(offset));
        if !parameter.is_empty() {
            exp.insert("parameter".into(), Value::Array(parameter));
        }
        if !contains.is_empty() {
            exp.insert("contains".into(), Value::Array(contains));
        }
        out.insert("expansion".into(), Value::Object(exp));
        Ok(Value::Object(out))
    }

    /// The codings to validate: `coding`, `codeableConcept`, or `code` (+ `system`,
    /// `version`/`systemVersion`, `display`).
    fn codings(params: &Params, system_param: Option<&str>) -> Result<Vec<Coding>, FhirError> {
        if let Some(c) = params.coding("coding")? {
            return Ok(vec![c]);
        }
        if let Some(cc) = params.codeable_concept("codeableConcept")? {
            return Ok(cc);
        }
        let Some(code) = params.string("code")? else {
            return Err(FhirError::bad_request("give the code to check: 'code' (with 'system'), 'coding' or 'codeableConcept'").at("code"));
        };
        let system = match system_param {
            Some(p) => params.string(p)?,
            None => None,
        };
        let version = params.string("systemVersion")?;
        Ok(vec![Coding { system, version, code, display: params.string("display")? }])
    }

    async fn validate_value_set(&mut self, id: Option<&str>, params: &Params) -> Result<Value, FhirError> {
        params.check(
            "$validate-code",
            &["url", "valueSetVersion", "valueSet", "code", "system", "systemVersion", "display", "coding", "codeableConcept", "abstract", "activeOnly", "displayLanguage"],
        )?;
        let codings = Self::codings(params, Some("system"))?;
        let abstract_ok = params.bool("abstract")?.unwrap_or(true);
        let active_only = params.bool("activeOnly")?.unwrap_or(false);
        let vs = self.value_set(id, params).await?;
        let mut messages = Vec::new();
        for coding in &codings {
            let options = ExpandOptions { only_system: coding.system.clone(), active_only, limit: MAX_EXPANSION };
            let expansion = tx::expand(&vs, &self.resolved, &options).map_err(problem)?;
            let case_insensitive = |system: &str| self.resolved.code_system(system).is_some_and(|cs| cs.case_sensitive != Some(true));
            let found = expansion.members.iter().find(|m| m.code == coding.code).or_else(|| {
                expansion.members.iter().find(|m| m.code.eq_ignore_ascii_case(&coding.code) && case_insensitive(&m.system))
            });
            let Some(member) = found else {
                let unknown = coding.system.as_deref().and_then(|s| self.resolved.code_system(s)).filter(|cs| cs.has_concepts() && cs.find(&coding.code).is_none());
                messages.push(match unknown {
                    Some(cs) => format!("the code '{}' is not defined in the code system {}, so it is not in the value set {}", coding.code, cs.url, vs.label()),
                    None => format!("the code '{}' is not in the value set {}", coding.label(), vs.label()),
                });
                continue;
            };
            if member.is_abstract && !abstract_ok {
                messages.push(format!("the code '{}' is abstract and may not be used here", coding.label()));
                continue;
            }
            match display_problem(coding, member.display.as_deref(), &member.designations) {
                Some(m) => messages.push(m),
                None => return Ok(valid(member.display.as_deref())),
            }
        }
        Ok(invalid(messages, None))
    }

    async fn validate_code_system(&mut self, id: Option<&str>, params: &Params) -> Result<Value, FhirError> {
        params.check("$validate-code", &["url", "version", "code", "display", "coding", "codeableConcept", "displayLanguage", "abstract"])?;
        let codings = Self::codings(params, None)?;
        let url = params.string("url")?;
        let version = params.string("version")?;
        let url = url.or_else(|| if id.is_none() { codings.iter().find_map(|c| c.system.clone()) } else { None });
        let cs = self.code_system(id, url.as_deref(), version.as_deref(), "url").await?;
        let mut messages = Vec::new();
        for coding in &codings {
            if coding.system.as_deref().is_some_and(|s| s != cs.url) {
                messages.push(format!("the coding '{}' is not of the code system {}", coding.label(), cs.url));
                continue;
            }
            let Some(concept) = cs.concept(&coding.code) else {
                messages.push(format!("the code '{}' is not defined in the code system {}", coding.code, cs.url));
                continue;
            };
            match display_problem(coding, concept.display.as_deref(), &concept.designations) {
                Some(m) => messages.push(m),
                None => return Ok(valid(concept.display.as_deref())),
            }
        }
        Ok(invalid(messages, None))
    }

    async fn lookup(&mut self, id: Option<&str>, params: &Params) -> Result<Value, FhirError> {
        params.check("$lookup", &["system", "code", "version", "coding", "property", "displayLanguage"])?;
        let coding = match params.coding("coding")? {
            Some(c) => c,
            None => {
                let Some(code) = params.string("code")? else {
                    return Err(FhirError::bad_request("give the code to look up: 'code' with 'system', or 'coding'").at("code"));
                };
                Coding { system: params.string("system")?, version: None, code, display: None }
            }
        };
        let version = params.string("version")?.or(coding.version.clone());
        let cs = self.code_system(id, coding.system.as_deref(), version.as_deref(), "system").await?;
        let Some(i) = cs.find(&coding.code) else {
            return Err(FhirError::new(404, IssueType::NotFound, format!("the code '{}' is not defined in the code system {}", coding.code, cs.url)).at("code"));
        };
        let wanted: Vec<String> = params.all("property").filter_map(|p| Params::value(p).and_then(|(_, v)| v.as_str()).map(str::to_string)).collect();
        let want = |p: &str| wanted.is_empty() || wanted.iter().any(|w| w == p);
        let c = &cs.concepts[i];
        let mut out = vec![param("name", "String", json!(cs.title.clone().or_else(|| cs.name.clone()).unwrap_or_else(|| cs.url.clone())))];
        if let Some(v) = &cs.version {
            out.push(param("version", "String", json!(v)));
        }
        if let Some(d) = &c.display {
            out.push(param("display", "String", json!(d)));
        }
        if let Some(d) = &c.definition {
            out.push(param("definition", "String", json!(d)));
        }
        if c.is_abstract() {
            out.push(param("abstract", "Boolean", json!(true)));
        }
        for d in &c.designations {
            let mut part = Vec::new();
            if let Some(l) = d["language"].as_str() {
                part.push(param("language", "Code", json!(l)));
            }
            if d["use"].is_object() {
                part.push(param("use", "Coding", d["use"].clone()));
            }
            part.push(param("value", "String", d["value"].clone()));
            out.push(json!({"name": "designation", "part": part}));
        }
        let property = |code: &str, kind: &str, value: Value| json!({"name": "property", "part": [param("code", "Code", json!(code)), param("value", kind, value)]});
        if want("parent") {
            for &p in &c.parents {
                out.push(property("parent", "Code", json!(cs.concepts[p].code)));
            }
        }
        if want("child") {
            for &ch in &c.children {
                out.push(property("child", "Code", json!(cs.concepts[ch].code)));
            }
        }
        for p in &c.properties {
            let Some(code) = p["code"].as_str() else { continue };
            if matches!(code, "parent" | "child") || !want(code) {
                continue;
            }
            if let Some((kind, value)) = Params::value(p) {
                out.push(property(code, kind, value.clone()));
            }
        }
        Ok(parameters(out))
    }

    async fn subsumes(&mut self, id: Option<&str>, params: &Params) -> Result<Value, FhirError> {
        params.check("$subsumes", &["codeA", "codeB", "system", "version", "codingA", "codingB"])?;
        let system = params.string("system")?;
        let side = |coding: Option<Coding>, code: Option<String>, name: &str| -> Result<Coding, FhirError> {
            match (coding, code) {
                (Some(c), _) => Ok(c),
                (None, Some(code)) => Ok(Coding { system: system.clone(), version: None, code, display: None }),
                (None, None) => Err(FhirError::bad_request(format!("give 'code{name}' (with 'system') or 'coding{name}'")).at(format!("code{name}"))),
            }
        };
        let a = side(params.coding("codingA")?, params.string("codeA")?, "A")?;
        let b = side(params.coding("codingB")?, params.string("codeB")?, "B")?;
        if a.system.is_some() && b.system.is_some() && a.system != b.system {
            return Err(FhirError::bad_request("codingA and codingB are of different code systems: subsumption is tested within one code system").at("codingB"));
        }
        let url = system.clone().or(a.system.clone()).or(b.system.clone());
        let version = params.string("version")?;
        let cs = self.code_system(id, url.as_deref(), version.as_deref(), "system").await?;
        let find = |c: &Coding, name: &str| {
            cs.find(&c.code).ok_or_else(|| FhirError::new(400, IssueType::NotFound, format!("the code '{}' is not defined in the code system {}", c.code, cs.url)).at(name.to_string()))
        };
        let (ia, ib) = (find(&a, "codeA")?, find(&b, "codeB")?);
        let outcome = if ia == ib {
            "equivalent"
        } else if cs.subsumes(ia, ib) {
            "subsumes"
        } else if cs.subsumes(ib, ia) {
            "subsumed-by"
        } else {
            "not-subsumed"
        };
        Ok(parameters(vec![param("outcome", "Code", json!(outcome))]))
    }

    async fn translate(&mut self, id: Option<&str>, params: &Params) -> Result<Value, FhirError> {
        params.check(
            "$translate",
            &["url", "conceptMapVersion", "code", "system", "version", "source", "coding", "codeableConcept", "target", "targetsystem", "reverse"],
        )?;
        let codings = Self::codings(params, Some("system"))?;
        let source = params.string("source")?;
        let target = params.string("target")?;
        let target_system = params.string("targetsystem")?;
        let reverse = params.bool("reverse")?.unwrap_or(false);
        let maps: Vec<Value> = if let Some(id) = id {
            vec![self.stored_by_id("ConceptMap", id).await?.ok_or_else(|| FhirError::not_found("ConceptMap", id))?]
        } else if let Some(url) = params.string("url")? {
            let (url, v) = tx::split_canonical(&url);
            let version = params.string("conceptMapVersion")?.or(v.map(str::to_string));
            let map = self.stored_by_url("ConceptMap", url, version.as_deref()).await?;
            vec![map.ok_or_else(|| FhirError::new(404, IssueType::NotFound, format!("the concept map {} is not known to this server", canonical(url, version.as_deref()))).at("url"))?]
        } else {
            self.candidate_maps(&codings, reverse).await?
        };
        let scope = |map: &Value, side: &str, wanted: &Option<String>| match wanted {
            None => true,
            Some(w) => [format!("{side}Uri"), format!("{side}Canonical")].iter().any(|k| map[k].as_str().map(|u| tx::split_canonical(u).0) == Some(tx::split_canonical(w).0)),
        };
        let (from, to) = if reverse { ("target", "source") } else { ("source", "target") };
        let mut matches = Vec::new();
        for map in maps.iter().filter(|m| scope(m, from, &source) && scope(m, to, &target)) {
            for coding in &codings {
                for t in tx::translate(map, coding.system.as_deref(), &coding.code, target_system.as_deref(), reverse) {
                    matches.push((t, map["url"].as_str().map(str::to_string)));
                }
            }
        }
        let result = matches.iter().any(|(t, _)| t.is_match());
        let mut out = vec![param("result", "Boolean", json!(result))];
        if !result {
            let codes: Vec<String> = codings.iter().map(Coding::label).collect();
            out.push(param("message", "String", json!(format!("no mapping found for {}", codes.join(", ")))));
        }
        for (t, url) in matches {
            let mut part = vec![param("equivalence", "Code", json!(t.equivalence))];
            if t.code.is_some() {
                let mut coding = Map::new();
                for (k, v) in [("system", &t.system), ("version", &t.version), ("code", &t.code), ("display", &t.display)] {
                    if let Some(v) = v {
                        coding.insert(k.into(), json!(v));
                    }
                }
                part.push(param("concept", "Coding", Value::Object(coding)));
            }
            if let Some(comment) = &t.comment {
                part.push(param("comment", "String", json!(comment)));
            }
            if let Some(url) = url {
                part.push(param("source", "Uri", json!(url)));
            }
            out.push(json!({"name": "match", "part": part}));
        }
        Ok(parameters(out))
    }

    /// The stored ConceptMaps the subject may see that list one of the codes (as a source
    /// code, or a target code when `reverse`).
    async fn candidate_maps(&mut self, codings: &[Coding], reverse: bool) -> Result<Vec<Value>, FhirError> {
        let index_param = if reverse { "target-code" } else { "source-code" };
        let mut q = IndexQuery::new(Some("ConceptMap"));
        let any = codings.iter().map(|c| Pred::Token { param: index_param.into(), system: None, code: Some(c.code.clone()) }).collect();
        q.clauses.push(Clause { any, negate: false });
        q.limit = MAX_MAPS;
        let seqs = self.engine.store().search(&q).await?;
        let mut out = Vec::new();
        for s in self.engine.store().load(&seqs).await? {
            if s.deleted {
                continue;
            }
            let Decided::Visible(released) = self.gate.release(s).await? else { continue };
            self.entities.push(format!("{}/{}/_history/{}", released.resource_type, released.id, released.version));
            out.push(serde_json::from_slice(&released.json).map_err(|e| FhirError::internal(format!("stored ConceptMap: {e}")))?);
        }
        Ok(out)
    }
}

/// Why `coding.display` is not a display of the concept (`None`: it is, or none was given).
fn display_problem(coding: &Coding, display: Option<&str>, designations: &[Value]) -> Option<String> {
    let given = coding.display.as_deref()?;
    let norm = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase();
    let ok = display.is_some_and(|d| norm(d) == norm(given)) || designations.iter().any(|d| d["value"].as_str().is_some_and(|v| norm(v) == norm(given)));
    if ok {
        return None;
    }
    Some(match display {
        Some(d) => format!("the display '{given}' is not a display of the code '{}': it is '{d}'", coding.label()),
        None => format!("the display '{given}' is not a display of the code '{}'", coding.label()),
    })
}

fn valid(display: Option<&str>) -> Value {
    let mut out = vec![param("result", "Boolean", json!(true))];
    if let Some(d) = display {
        out.push(param("display", "String", json!(d)));
    }
    parameters(out)
}

fn invalid(messages: Vec<String>, display: Option<&str>) -> Value {
    let mut out = vec![param("result", "Boolean", json!(false)), param("message", "String", json!(messages.join("; ")))];
    if let Some(d) = display {
        out.push(param("display", "String", json!(d)));
    }
    parameters(out)
}

/// The OperationDefinitions of the operations this module implements (for the
/// CapabilityStatement), under the canonical URLs of the standard R4 operations.
pub fn operation_definitions() -> Vec<Value> {
    type P = (&'static str, &'static str, u32, &'static str, &'static str);
    fn def(resource: &str, code: &str, title: &str, instance: bool, params: &[P]) -> Value {
        let id = format!("{resource}-{code}");
        let parameter: Vec<Value> = params
            .iter()
            .map(|(name, use_, min, max, ty)| {
                let mut p = json!({"name": name, "use": use_, "min": min, "max": max});
                if !ty.is_empty() {
                    p["type"] = json!(ty);
                }
                p
            })
            .collect();
        json!({
            "resourceType": "OperationDefinition",
            "id": id,
            "url": format!("http://hl7.org/fhir/OperationDefinition/{id}"),
            "version": "4.0.1",
            "name": title.replace(' ', ""),
            "title": title,
            "status": "active",
            "kind": "operation",
            "affectsState": false,
            "code": code,
            "resource": [resource],
            "system": false,
            "type": true,
            "instance": instance,
            "parameter": parameter,
        })
    }
    vec![
        def("ValueSet", "expand", "Value Set Expansion", true, &[
            ("url", "in", 0, "1", "uri"),
            ("valueSet", "in", 0, "1", "ValueSet"),
            ("valueSetVersion", "in", 0, "1", "string"),
            ("filter", "in", 0, "1", "string"),
            ("offset", "in", 0, "1", "integer"),
            ("count", "in", 0, "1", "integer"),
            ("includeDesignations", "in", 0, "1", "boolean"),
            ("activeOnly", "in", 0, "1", "boolean"),
            ("return", "out", 1, "1", "ValueSet"),
        ]),
        def("ValueSet", "validate-code", "Value Set based Validation", true, &[
            ("url", "in", 0, "1", "uri"),
            ("valueSet", "in", 0, "1", "ValueSet"),
            ("valueSetVersion", "in", 0, "1", "string"),
            ("code", "in", 0, "1", "code"),
            ("system", "in", 0, "1", "uri"),
            ("systemVersion", "in", 0, "1", "string"),
            ("display", "in", 0, "1", "string"),
            ("coding", "in", 0, "1", "Coding"),
            ("codeableConcept", "in", 0, "1", "CodeableConcept"),
            ("abstract", "in", 0, "1", "boolean"),
            ("activeOnly", "in", 0, "1", "boolean"),
            ("result", "out", 1, "1", "boolean"),
            ("message", "out", 0, "1", "string"),
            ("display", "out", 0, "1", "string"),
        ]),
        def("CodeSystem", "lookup", "Concept Look Up & Decomposition", false, &[
            ("code", "in", 0, "1", "code"),
            ("system", "in", 0, "1", "uri"),
            ("version", "in", 0, "1", "string"),
            ("coding", "in", 0, "1", "Coding"),
            ("property", "in", 0, "*", "code"),
            ("name", "out", 1, "1", "string"),
            ("version", "out", 0, "1", "string"),
            ("display", "out", 1, "1", "string"),
            ("designation", "out", 0, "*", ""),
            ("property", "out", 0, "*", ""),
        ]),
        def("CodeSystem", "validate-code", "Code System based Validation", true, &[
            ("url", "in", 0, "1", "uri"),
            ("version", "in", 0, "1", "string"),
            ("code", "in", 0, "1", "code"),
            ("display", "in", 0, "1", "string"),
            ("coding", "in", 0, "1", "Coding"),
            ("codeableConcept", "in", 0, "1", "CodeableConcept"),
            ("result", "out", 1, "1", "boolean"),
            ("message", "out", 0, "1", "string"),
            ("display", "out", 0, "1", "string"),
        ]),
        def("CodeSystem", "subsumes", "Subsumption Testing", true, &[
            ("codeA", "in", 0, "1", "code"),
            ("codeB", "in", 0, "1", "code"),
            ("system", "in", 0, "1", "uri"),
            ("version", "in", 0, "1", "string"),
            ("codingA", "in", 0, "1", "Coding"),
            ("codingB", "in", 0, "1", "Coding"),
            ("outcome", "out", 1, "1", "code"),
        ]),
        def("ConceptMap", "translate", "Concept Translation", true, &[
            ("url", "in", 0, "1", "uri"),
            ("conceptMapVersion", "in", 0, "1", "string"),
            ("code", "in", 0, "1", "code"),
            ("system", "in", 0, "1", "uri"),
            ("source", "in", 0, "1", "uri"),
            ("coding", "in", 0, "1", "Coding"),
            ("codeableConcept", "in", 0, "1", "CodeableConcept"),
            ("target", "in", 0, "1", "uri"),
            ("targetsystem", "in", 0, "1", "uri"),
            ("reverse", "in", 0, "1", "boolean"),
            ("result", "out", 1, "1", "boolean"),
            ("message", "out", 0, "1", "string"),
            ("match", "out", 0, "*", ""),
        ]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_from_query_and_body() {
        let p = Params::from_query("url=http%3A%2F%2Fhl7.org%2Ffhir%2FValueSet%2Fadministrative-gender&count=2&coding=http://x|y");
        assert_eq!(p.string("url").unwrap().as_deref(), Some("http://hl7.org/fhir/ValueSet/administrative-gender"));
        assert_eq!(p.count("count").unwrap(), Some(2));
        assert_eq!(p.coding("coding").unwrap().unwrap().system.as_deref(), Some("http://x"));
        assert!(p.check("$expand", &["url", "count"]).is_err(), "coding is not an $expand parameter");
        let body = json!({"resourceType": "Parameters", "parameter": [{"name": "coding", "valueCoding": {"system": "s", "code": "c"}}, {"name": "abstract", "valueBoolean": false}]});
        let p = Params::from_parameters(&body).unwrap();
        assert_eq!(p.coding("coding").unwrap().unwrap().code, "c");
        assert_eq!(p.bool("abstract").unwrap(), Some(false));
        assert!(Params::from_parameters(&json!({"resourceType": "Patient"})).is_err());
    }

    #[test]
    fn operation_definitions_name_the_standard_urls() {
        let defs = operation_definitions();
        assert_eq!(defs.len(), OPERATIONS.len());
        assert!(defs.iter().any(|d| d["url"] == "http://hl7.org/fhir/OperationDefinition/ValueSet-expand"));
        assert!(defs.iter().any(|d| d["url"] == "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate"));
    }
}
