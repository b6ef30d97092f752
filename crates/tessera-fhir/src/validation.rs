//! Validation of resources against the R4 StructureDefinitions.
//!
//! [`validate`] walks the JSON once, following the shipped element tables
//! ([`crate::definitions`]), and reports every problem it finds, each with a FHIRPath-like
//! expression rooted at the resource type, with array indices:
//! `Patient.name[0].given[1]`, `Bundle.entry[3].resource.status`. Choice elements are
//! named by their JSON name (`Observation.valueQuantity`); `_x` primitive extensions by
//! the element they extend (`Patient.birthDate.extension[0]`).
//!
//! What is checked (JSON representation rules of R4, §2.6.2, and the structural part of
//! the StructureDefinitions):
//! * `resourceType` is present and a known type; nested resources (`contained`,
//!   `Bundle.entry.resource`, `Parameters.parameter.resource`, …) are validated as their
//!   own type;
//! * every property is a defined element (or the `_x` extension of a primitive one);
//! * cardinality: arrays exactly where `max = *`, never empty; required elements present;
//! * at most one type of a choice element, and only allowed types;
//! * JSON types and lexical forms of primitives, no `null`, `""` or `{}`;
//! * `_x` siblings are objects (or arrays of objects/nulls aligned with `x`);
//! * `Reference.reference` syntax and local (`#id`) references to contained resources;
//! * `Extension`: a value or nested extensions, not both (ext-1); elements have a value
//!   or children (ele-1); contained resources hold no `contained` (dom-2) nor
//!   `meta.versionId`/`meta.lastUpdated` (dom-4);
//! * nesting depth against [`Limits::max_depth`];
//! * terminology bindings of `code`, `Coding` and `CodeableConcept` elements against the
//!   shipped value sets ([`crate::bindings`]): a code outside the value set of a
//!   *required* binding is an error; outside that of an extensible or preferred binding, a
//!   warning ([`validate_full`] only); value sets that cannot be expanded here are not
//!   checked;
//! * reference target types: a literal reference (`Type/id`, an absolute URL ending in
//!   `Type/id`, a conditional `Type?…`, a contained `#id`, or a `urn:uuid:` the caller can
//!   resolve, see [`Options::resolve`]) must point at a type the element allows
//!   (`targetProfile`), and so must `Reference.type`;
//! * narrative XHTML (`xhtml`): FHIR's narrative rules txt-1 and txt-2 ([`crate::narrative`]).
//!
//! Not checked here: the FHIRPath invariants other than those above (the engine evaluates
//! them with `tessera-fhirpath`, which depends on this crate), profiles, and whether
//! referenced resources exist (the engine checks that against the store).
//!
//! Performance: the walk allocates nothing unless it finds a problem. The current path
//! is a linked list of stack frames (`Path`) turned into a string only for an issue,
//! element lookups are single hash probes on precomputed JSON names, seen elements are
//! tracked in a fixed bit set, and the hot primitive formats are checked by hand-written
//! byte scanners (equivalent to the published regexes; see the tests).

use crate::bindings::{self, Membership};
use crate::definitions::{self, Binding, BindingStrength, Definitions, ElementDef, JsonKind, Primitive, Target, TypeDef, TypeKind, MAX_ELEMENTS};
use crate::{Issue, IssueSeverity, IssueType};
use serde_json::{Map, Value};
use std::fmt::Write as _;

/// FHIR's limit on the size of one string value (R4 §2.1.28.0.1: 1 MB).
pub const MAX_STRING_BYTES: usize = 1024 * 1024;

/// Limits that protect the server from hostile input.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum nesting depth of JSON objects and arrays.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_depth: 64 }
    }
}

/// Is `s` a valid FHIR `id` (`[A-Za-z0-9\-\.]{1,64}`)?
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// How a resource is validated beyond the [`Limits`].
#[derive(Clone, Copy, Default)]
pub struct Options<'a> {
    /// Also report warnings (extensible and preferred bindings). Writes do not need them.
    pub warnings: bool,
    /// The resource type a `urn:uuid:`/`urn:oid:` reference stands for, when the caller
    /// knows it (the entries of a transaction), so that its target type is checked too.
    pub resolve: Option<&'a dyn Fn(&str) -> Option<&'static str>>,
}

/// Validates a resource; on failure returns every error found, each naming its element.
pub fn validate(resource: &Value, limits: &Limits) -> Result<(), Vec<Issue>> {
    validate_with(resource, limits, &Options::default())
}

/// [`validate`] with [`Options`]. `Err` holds every issue found when at least one is an
/// error (with [`Options::warnings`], warnings come along).
pub fn validate_with<'v>(resource: &'v Value, limits: &Limits, options: &Options<'v>) -> Result<(), Vec<Issue>> {
    let issues = run(resource, limits, options);
    if issues.iter().any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal)) {
        Err(issues)
    } else {
        Ok(())
    }
}

/// Every issue, errors and warnings (for `$validate`).
pub fn validate_full(resource: &Value, limits: &Limits) -> Vec<Issue> {
    run(resource, limits, &Options { warnings: true, resolve: None })
}

fn run<'v>(resource: &'v Value, limits: &Limits, options: &Options<'v>) -> Vec<Issue> {
    let mut v = Validator {
        defs: definitions::definitions(),
        max_depth: limits.max_depth,
        issues: Vec::new(),
        scope: None,
        warnings: options.warnings,
        resolve: options.resolve,
        targets: &[],
    };
    match resource {
        Value::Object(map) => v.resource(map, None, 1, false),
        _ => v.issues.push(Issue::error(IssueType::Structure, "a resource must be a JSON object")),
    }
    v.issues
}

/// One step of the path to the value being validated; the path is the chain of parents.
#[derive(Clone, Copy)]
struct Path<'v, 'p> {
    step: Step<'v>,
    parent: Option<&'p Path<'v, 'p>>,
}

#[derive(Clone, Copy)]
enum Step<'v> {
    Name(&'v str),
    Index(usize),
}

impl<'v, 'p> Path<'v, 'p> {
    fn root(name: &'v str) -> Self {
        Path { step: Step::Name(name), parent: None }
    }

    fn name<'q>(&'q self, name: &'v str) -> Path<'v, 'q> {
        Path { step: Step::Name(name), parent: Some(self) }
    }

    fn index<'q>(&'q self, i: usize) -> Path<'v, 'q> {
        Path { step: Step::Index(i), parent: Some(self) }
    }

    /// `Patient.name[0].given`: built only when reporting.
    fn expression(&self) -> String {
        let mut steps = Vec::new();
        let mut at = Some(self);
        while let Some(p) = at {
            steps.push(p.step);
            at = p.parent;
        }
        let mut out = String::new();
        for step in steps.iter().rev() {
            match step {
                Step::Name(n) if out.is_empty() => out.push_str(n),
                Step::Name(n) => {
                    out.push('.');
                    out.push_str(n);
                }
                Step::Index(i) => {
                    let _ = write!(out, "[{i}]");
                }
            }
        }
        out
    }
}

/// The elements of one object seen so far.
#[derive(Default)]
struct Seen([u64; MAX_ELEMENTS / 64]);

impl Seen {
    fn set(&mut self, i: usize) -> bool {
        let (word, bit) = (i / 64, 1u64 << (i % 64));
        let was = self.0[word] & bit != 0;
        self.0[word] |= bit;
        was
    }

    fn get(&self, i: usize) -> bool {
        self.0[i / 64] & (1u64 << (i % 64)) != 0
    }
}

struct Validator<'v> {
    defs: &'static Definitions,
    max_depth: usize,
    issues: Vec<Issue>,
    /// The `contained` resources that local references (`#id`) resolve against, and
    /// whether we are inside one of them (where `#` alone names the container).
    scope: Option<(&'v [Value], bool)>,
    /// Report warnings too.
    warnings: bool,
    resolve: Option<&'v dyn Fn(&str) -> Option<&'static str>>,
    /// The allowed target types of the Reference being validated (empty: any).
    targets: &'static [String],
}

impl<'v> Validator<'v> {
    fn report(&mut self, code: IssueType, path: &Path<'v, '_>, message: impl Into<String>) {
        self.issues.push(Issue::error(code, message).at(path.expression()));
    }

    /// A code outside the value set of `binding`: an error for a required binding, else a
    /// warning (reported only when warnings are asked for).
    fn binding_issue(&mut self, binding: &Binding, path: &Path<'v, '_>, what: &str) {
        let expression = path.expression();
        let strength = binding.strength.code();
        let message = format!("{expression}: {what} is not in the value set {} ({strength} binding)", binding.value_set);
        let issue = match binding.strength {
            BindingStrength::Required => Issue::error(IssueType::CodeInvalid, message),
            _ => Issue::warning(IssueType::CodeInvalid, message),
        };
        self.issues.push(issue.at(expression));
    }

    fn checks_binding(&self, binding: &Option<Binding>) -> bool {
        binding.as_ref().is_some_and(|b| b.strength == BindingStrength::Required || self.warnings)
    }

    /// The binding of a `Coding` or `CodeableConcept` value.
    fn coded_binding(&mut self, map: &'v Map<String, Value>, type_code: &str, binding: &Binding, path: &Path<'v, '_>) {
        let coding_membership = |c: &Map<String, Value>| -> Option<Membership> {
            let code = c.get("code")?.as_str()?;
            Some(bindings::check(&binding.value_set, c.get("system").and_then(Value::as_str), code))
        };
        let describe = |c: &Map<String, Value>| {
            let code = c.get("code").and_then(Value::as_str).unwrap_or("");
            match c.get("system").and_then(Value::as_str) {
                Some(system) => format!("the code '{}' of {}", truncate(code), truncate(system)),
                None => format!("the code '{}' (no system)", truncate(code)),
            }
        };
        match type_code {
            "Coding" => {
                if coding_membership(map) == Some(Membership::NotMember) {
                    self.binding_issue(binding, path, &describe(map));
                }
            }
            "CodeableConcept" => {
                let codings: Vec<&Map<String, Value>> =
                    map.get("coding").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_object).collect();
                let memberships: Vec<Option<Membership>> = codings.iter().map(|c| coding_membership(c)).collect();
                let any_member = memberships.contains(&Some(Membership::Member));
                let any_unknown = memberships.contains(&Some(Membership::Unknown));
                if !any_member && !any_unknown {
                    if let Some(i) = memberships.iter().position(|m| *m == Some(Membership::NotMember)) {
                        let what = if codings.len() == 1 { describe(codings[i]) } else { format!("none of the {} codings ({} …)", codings.len(), describe(codings[i])) };
                        self.binding_issue(binding, path, &what);
                    }
                }
            }
            _ => {}
        }
    }

    /// Validates a resource object. `path` is `None` for the top-level resource (its
    /// path starts with its type), else the element holding it.
    fn resource(&mut self, map: &'v Map<String, Value>, path: Option<&Path<'v, '_>>, depth: usize, contained: bool) {
        let ty = match map.get("resourceType") {
            Some(Value::String(ty)) => ty.as_str(),
            other => {
                let message = match other {
                    None => "resource has no resourceType".to_string(),
                    Some(v) => format!("resourceType must be a string, not {}", json_type(v)),
                };
                self.resource_type_issue(IssueType::Required, path, message);
                return;
            }
        };
        let Some(td) = self.defs.resource(ty) else {
            self.resource_type_issue(IssueType::Value, path, format!("unknown resource type '{ty}'"));
            return;
        };
        let root = Path::root(ty);
        let path = path.unwrap_or(&root);
        if contained {
            self.check_contained(map, path);
        }
        // Local references resolve against this resource's `contained`, except inside a
        // contained resource, where they resolve against the container's.
        let saved = self.scope;
        if !contained {
            let own = map.get("contained").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            self.scope = Some((own, false));
        } else if let Some((siblings, _)) = self.scope {
            self.scope = Some((siblings, true));
        }
        self.object(map, td, path, depth, true);
        self.scope = saved;
    }

    fn resource_type_issue(&mut self, code: IssueType, path: Option<&Path<'v, '_>>, message: String) {
        let expression = match path {
            Some(p) => format!("{}.resourceType", p.expression()),
            None => "resourceType".to_string(),
        };
        self.issues.push(Issue::error(code, message).at(expression));
    }

    /// dom-2 and dom-4.
    fn check_contained(&mut self, map: &'v Map<String, Value>, path: &Path<'v, '_>) {
        if map.contains_key("contained") {
            self.report(IssueType::Invariant, &path.name("contained"), "a contained resource must not contain resources");
        }
        if let Some(Value::Object(meta)) = map.get("meta") {
            for key in ["versionId", "lastUpdated"] {
                if meta.contains_key(key) {
                    let p = path.name("meta");
                    self.report(IssueType::Invariant, &p.name(key), format!("a contained resource must not have meta.{key}"));
                }
            }
        }
    }

    /// Validates the properties of an object against a table.
    fn object(&mut self, map: &'v Map<String, Value>, td: &'static TypeDef, path: &Path<'v, '_>, depth: usize, is_resource: bool) {
        if map.is_empty() {
            self.report(IssueType::Structure, path, "empty objects are not allowed");
            return;
        }
        let mut seen = Seen::default();
        for (key, value) in map {
            if is_resource && key == "resourceType" {
                continue;
            }
            if let Some(name) = key.strip_prefix('_') {
                match td.lookup(name) {
                    Some((e, t)) if matches!(td.elements[e].types[t].target, Target::Primitive(_)) => {
                        if seen.set(e) {
                            self.check_single_choice(map, td, e, t, key, path);
                        }
                        let element = &td.elements[e];
                        self.primitive_extension(value, element, map.get(name), &path.name(name), depth);
                    }
                    _ => self.report(IssueType::Structure, &path.name(key), unknown_element(key, td)),
                }
                continue;
            }
            let Some((e, t)) = td.lookup(key) else {
                self.report(IssueType::Structure, &path.name(key), unknown_element(key, td));
                continue;
            };
            if seen.set(e) {
                self.check_single_choice(map, td, e, t, key, path);
            }
            let child = path.name(key);
            let element = &td.elements[e];
            if is_resource && key == "contained" {
                self.contained(value, &child, depth);
            } else {
                self.element(value, element, t, map, key, &child, depth);
            }
        }
        for e in td.required() {
            if !seen.get(e) {
                let name = td.elements[e].display_name();
                let issue = Issue::error(IssueType::Required, format!("missing required element '{name}'"));
                self.issues.push(issue.at(format!("{}.{name}", path.expression())));
            }
        }
        if !is_resource {
            self.type_rules(map, td, &seen, path);
        }
    }

    /// Rules of particular data types, and ele-1.
    fn type_rules(&mut self, map: &'v Map<String, Value>, td: &'static TypeDef, seen: &Seen, path: &Path<'v, '_>) {
        if map.len() == 1 && map.contains_key("id") {
            self.report(IssueType::Invariant, path, "an element must have a value or children, not only an id");
        }
        match td.name.as_str() {
            "Extension" => {
                let has = |name: &str| td.elements.iter().position(|e| e.name == name).is_some_and(|i| seen.get(i));
                if has("value") == has("extension") {
                    self.report(IssueType::Invariant, path, "an extension must have either a value[x] or nested extensions, not both");
                }
            }
            "Reference" => {
                if let Some(Value::String(reference)) = map.get("reference") {
                    match self.check_reference(reference) {
                        Err(problem) => self.report(IssueType::Value, &path.name("reference"), problem),
                        Ok(()) => {
                            if let Some(ty) = self.reference_type(reference) {
                                self.check_target(ty, path, &format!("'{}'", truncate(reference)));
                            }
                        }
                    }
                }
                if let Some(Value::String(ty)) = map.get("type") {
                    let name = ty.strip_prefix("http://hl7.org/fhir/StructureDefinition/").unwrap_or(ty);
                    if definitions::is_resource_type(name) {
                        self.check_target(name, &path.name("type"), &format!("type '{}'", truncate(ty)));
                    }
                }
            }
            _ => {}
        }
    }

    /// Called when a second property maps to the same element: fine for `x` + `_x`,
    /// an error for two types of one choice (`valueString` + `valueQuantity`).
    fn check_single_choice(&mut self, map: &'v Map<String, Value>, td: &TypeDef, e: usize, t: usize, key: &'v str, path: &Path<'v, '_>) {
        let element = &td.elements[e];
        if !element.choice {
            return; // `x` and `_x` of the same element
        }
        let other_type = map.keys().take_while(|k| k.as_str() != key).any(|k| {
            let k = k.strip_prefix('_').unwrap_or(k);
            td.lookup(k).is_some_and(|(e2, t2)| e2 == e && t2 != t)
        });
        if other_type {
            let name = element.display_name();
            self.report(IssueType::Structure, &path.name(key), format!("only one type of choice element '{name}' is allowed"));
        }
    }

    fn contained(&mut self, value: &'v Value, path: &Path<'v, '_>, depth: usize) {
        let Value::Array(items) = value else {
            self.report(IssueType::Structure, path, format!("'contained' must be an array, not {}", json_type(value)));
            return;
        };
        if items.is_empty() {
            self.report(IssueType::Structure, path, "empty arrays are not allowed");
        }
        if !self.enter(depth + 1, path) {
            return;
        }
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            match item {
                Value::Object(m) if self.enter(depth + 2, &p) => self.resource(m, Some(&p), depth + 2, true),
                Value::Object(_) => {}
                other => self.report(IssueType::Structure, &p, format!("a contained resource must be an object, not {}", json_type(other))),
            }
        }
    }

    /// Checks the depth limit before descending into an object or array at `depth`.
    fn enter(&mut self, depth: usize, path: &Path<'v, '_>) -> bool {
        if depth > self.max_depth {
            self.report(IssueType::TooLong, path, format!("nesting deeper than {} levels", self.max_depth));
            false
        } else {
            true
        }
    }

    /// The value of one element property, `key` in `parent`.
    #[allow(clippy::too_many_arguments)]
    fn element(
        &mut self,
        value: &'v Value,
        element: &'static ElementDef,
        t: usize,
        parent: &'v Map<String, Value>,
        key: &str,
        path: &Path<'v, '_>,
        depth: usize,
    ) {
        if !element.many {
            match value {
                Value::Array(_) => self.report(IssueType::Structure, path, format!("'{key}' must be a single value, not an array")),
                _ => self.single(value, element, t, path, depth),
            }
            return;
        }
        let Value::Array(items) = value else {
            self.report(IssueType::Structure, path, format!("'{key}' must be an array"));
            return;
        };
        if items.is_empty() {
            self.report(IssueType::Structure, path, "empty arrays are not allowed");
            return;
        }
        if !self.enter(depth + 1, path) {
            return;
        }
        for (i, item) in items.iter().enumerate() {
            let p = path.index(i);
            if item.is_null() {
                // Allowed only as a placeholder aligned with an `_x` extension.
                let extended = matches!(element.types[t].target, Target::Primitive(_))
                    && underscore_sibling(parent, key)
                        .and_then(Value::as_array)
                        .is_some_and(|ext| ext.get(i).is_some_and(Value::is_object));
                if !extended {
                    self.report(IssueType::Structure, &p, "null is not allowed here");
                }
                continue;
            }
            self.single(item, element, t, &p, depth + 1);
        }
    }

    /// One (non-array) value of type `element.types[t]`.
    fn single(&mut self, value: &'v Value, element: &'static ElementDef, t: usize, path: &Path<'v, '_>, depth: usize) {
        if value.is_null() {
            self.report(IssueType::Structure, path, "null is not allowed here");
            return;
        }
        let ty = &element.types[t];
        match ty.target {
            Target::Primitive(p) => {
                let before = self.issues.len();
                self.primitive(value, p, path);
                if p == Primitive::Code && self.issues.len() == before && self.checks_binding(&element.binding) {
                    if let (Some(binding), Value::String(code)) = (&element.binding, value) {
                        if bindings::check(&binding.value_set, None, code) == Membership::NotMember {
                            self.binding_issue(binding, path, &format!("'{}'", truncate(code)));
                        }
                    }
                }
            }
            Target::Complex(id) => match value {
                Value::Object(m) => {
                    if self.enter(depth + 1, path) {
                        let saved = self.targets;
                        if ty.code == "Reference" {
                            self.targets = &element.targets;
                        }
                        self.object(m, self.defs.get(id), path, depth + 1, false);
                        self.targets = saved;
                        if self.checks_binding(&element.binding) {
                            if let Some(binding) = &element.binding {
                                self.coded_binding(m, &ty.code, binding, path);
                            }
                        }
                    }
                }
                other => {
                    let what = if self.defs.get(id).kind == TypeKind::Backbone { "an object" } else { ty.code.as_str() };
                    let what = if what == "an object" { what.to_string() } else { format!("an object ({what})") };
                    self.report(IssueType::Structure, path, format!("expected {what}, found {}", json_type(other)));
                }
            },
            Target::Resource => match value {
                Value::Object(m) => {
                    if self.enter(depth + 1, path) {
                        self.resource(m, Some(path), depth + 1, false);
                    }
                }
                other => self.report(IssueType::Structure, path, format!("expected a resource, found {}", json_type(other))),
            },
        }
    }

    /// The `_x` sibling of primitive element `x`.
    fn primitive_extension(&mut self, ext: &'v Value, element: &ElementDef, value: Option<&'v Value>, path: &Path<'v, '_>, depth: usize) {
        let element_td = self.defs.element_type();
        let single = |v: &mut Self, item: &'v Value, p: &Path<'v, '_>, depth: usize| match item {
            Value::Object(m) => {
                if v.enter(depth, p) {
                    v.object(m, element_td, p, depth, false);
                }
            }
            other => v.report(IssueType::Structure, p, format!("a primitive extension must be an object, not {}", json_type(other))),
        };
        if !element.many {
            single(self, ext, path, depth + 1);
            return;
        }
        let Value::Array(items) = ext else {
            self.report(IssueType::Structure, path, "the '_' extension of a repeating element must be an array");
            return;
        };
        let values = value.and_then(Value::as_array);
        match values {
            Some(values) if values.len() != items.len() => self.report(
                IssueType::Structure,
                path,
                format!("{} extension entries for {} values; they must be aligned", items.len(), values.len()),
            ),
            None if items.is_empty() => self.report(IssueType::Structure, path, "empty arrays are not allowed"),
            _ => {}
        }
        if !self.enter(depth + 1, path) {
            return;
        }
        for (i, item) in items.iter().enumerate() {
            if item.is_null() {
                // With a value array, a null pair is reported once, on the value side.
                if values.is_none() {
                    self.report(IssueType::Structure, &path.index(i), "null is not allowed here");
                }
                continue;
            }
            single(self, item, &path.index(i), depth + 2);
        }
    }

    fn primitive(&mut self, value: &'v Value, p: Primitive, path: &Path<'v, '_>) {
        let ok = match (p.json_kind(), value) {
            (JsonKind::Boolean, Value::Bool(_)) => true,
            (JsonKind::Number, Value::Number(n)) => {
                let range = match p {
                    Primitive::Integer => Some(i32::MIN as i64),
                    Primitive::PositiveInt => Some(1),
                    Primitive::UnsignedInt => Some(0),
                    _ => None, // decimal: any JSON number
                };
                if let Some(min) = range {
                    match n.as_i64() {
                        Some(i) if (min..=i32::MAX as i64).contains(&i) => {}
                        Some(_) => {
                            self.report(IssueType::Value, path, format!("{n} is out of range for {}", p.name()));
                        }
                        None => self.report(IssueType::Value, path, format!("{n} is not a valid {}", p.name())),
                    }
                }
                true
            }
            (JsonKind::String, Value::String(s)) => {
                if s.is_empty() {
                    self.report(IssueType::Value, path, "empty strings are not allowed");
                } else if s.len() > MAX_STRING_BYTES {
                    self.report(IssueType::TooLong, path, format!("a string of {} bytes is longer than FHIR's limit of 1 MB ({MAX_STRING_BYTES} bytes)", s.len()));
                } else if let Some(at) = s.find(|c: char| c.is_control() && !matches!(c, '\t' | '\r' | '\n')) {
                    let c = s[at..].chars().next().unwrap_or('\0');
                    self.report(IssueType::Value, path, format!("control character U+{:04X} at byte {at}: strings may hold tab, carriage return and line feed only", c as u32));
                } else if !check_format(p, s) {
                    self.report(IssueType::Value, path, format!("'{}' is not a valid {}", truncate(s), p.name()));
                } else if p == Primitive::Xhtml {
                    if let Err(problem) = crate::narrative::check(s) {
                        self.report(IssueType::Invariant, path, problem);
                    }
                }
                true
            }
            _ => false,
        };
        if !ok {
            let expected = match p.json_kind() {
                JsonKind::Boolean => "a JSON boolean",
                JsonKind::Number => "a JSON number",
                JsonKind::String => "a JSON string",
            };
            self.report(IssueType::Structure, path, format!("expected {expected} ({}), found {}", p.name(), json_type(value)));
        }
    }

    /// The allowed targets of the Reference being validated include `ty`?
    fn check_target(&mut self, ty: &str, path: &Path<'v, '_>, what: &str) {
        let targets = self.targets;
        if targets.is_empty() || targets.iter().any(|t| t == ty) {
            return;
        }
        let allowed = match targets {
            [one] => one.clone(),
            [init @ .., last] => format!("{} or {last}", init.join(", ")),
            [] => unreachable!(),
        };
        let expression = path.expression();
        self.report(IssueType::Value, path, format!("{expression} may refer to {allowed}, not {ty} ({what})"));
    }

    /// The resource type a syntactically valid reference points at, when it can be told.
    fn reference_type(&self, r: &'v str) -> Option<&'v str> {
        if let Some(fragment) = r.strip_prefix('#') {
            let (contained, _) = self.scope?;
            let c = contained.iter().find(|c| c.get("id").and_then(Value::as_str) == Some(fragment))?;
            return c.get("resourceType").and_then(Value::as_str);
        }
        if r.starts_with("urn:") {
            let resolved = (self.resolve?)(r)?;
            return Some(resolved.split('/').next().unwrap_or(resolved));
        }
        if r.starts_with("http://") || r.starts_with("https://") {
            let path = r.split(['?', '#']).next().unwrap_or(r);
            let segments: Vec<&str> = path.split('/').collect();
            let n = segments.len();
            let ty = if n >= 6 && segments[n - 2] == "_history" { segments[n - 4] } else if n >= 5 { segments[n - 2] } else { return None };
            return definitions::is_resource_type(ty).then_some(ty);
        }
        if let Some((ty, _)) = r.split_once('?') {
            return Some(ty);
        }
        crate::reference::parse_relative(r).map(|(ty, _)| ty)
    }

    /// `Reference.reference` syntax; `#id` must name a contained resource.
    fn check_reference(&self, r: &str) -> Result<(), String> {
        if let Some(fragment) = r.strip_prefix('#') {
            let (contained, inside) = self.scope.unwrap_or((&[], false));
            if fragment.is_empty() {
                return if inside { Ok(()) } else { Err("'#' refers to the container and is only valid in a contained resource".into()) };
            }
            let found = contained.iter().any(|c| c.get("id").and_then(Value::as_str) == Some(fragment));
            return if found { Ok(()) } else { Err(format!("'{r}' does not refer to a contained resource")) };
        }
        if let Some(uuid) = r.strip_prefix("urn:uuid:") {
            return if is_uuid(uuid, true) { Ok(()) } else { Err(format!("'{}' is not a valid urn:uuid", truncate(r))) };
        }
        if r.starts_with("urn:oid:") {
            return if check_oid(r) { Ok(()) } else { Err(format!("'{}' is not a valid urn:oid", truncate(r))) };
        }
        if let Some(rest) = r.strip_prefix("http://").or_else(|| r.strip_prefix("https://")) {
            let host_ok = rest.split('/').next().is_some_and(|h| !h.is_empty());
            return if host_ok && !r.contains(char::is_whitespace) {
                Ok(())
            } else {
                Err(format!("'{}' is not a valid absolute reference", truncate(r)))
            };
        }
        if let Some((ty, query)) = r.split_once('?') {
            // A conditional reference, resolved by a transaction.
            return if definitions::is_resource_type(ty) && !query.is_empty() && !query.contains(char::is_whitespace) {
                Ok(())
            } else {
                Err(format!("'{}' is not a valid conditional reference", truncate(r)))
            };
        }
        match crate::reference::parse_relative(r) {
            Some((ty, _)) if definitions::is_resource_type(ty) => Ok(()),
            Some((ty, _)) => Err(format!("'{ty}' in reference '{}' is not a resource type", truncate(r))),
            None => {
                Err(format!("'{}' is not a valid reference (expected Type/id, an absolute URL, urn:uuid:, urn:oid: or #id)", truncate(r)))
            }
        }
    }
}

fn unknown_element(key: &str, td: &TypeDef) -> String {
    format!("unknown element '{key}' in {}", td.name)
}

/// The `_key` member of `map`, found without allocating.
fn underscore_sibling<'v>(map: &'v Map<String, Value>, key: &str) -> Option<&'v Value> {
    map.iter().find(|(k, _)| k.strip_prefix('_') == Some(key)).map(|(_, v)| v)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Keeps diagnostics short when echoing hostile input.
fn truncate(s: &str) -> String {
    const MAX: usize = 100;
    match s.char_indices().nth(MAX) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

/// Checks the lexical form of a non-empty string primitive.
pub fn check_format(p: Primitive, s: &str) -> bool {
    let b = s.as_bytes();
    match p {
        Primitive::String | Primitive::Markdown => check_string(s),
        Primitive::Code => check_code(s),
        Primitive::Id => is_valid_id(s),
        Primitive::Uri | Primitive::Url | Primitive::Canonical => !s.contains(char::is_whitespace),
        Primitive::Oid => check_oid(s),
        Primitive::Uuid => s.strip_prefix("urn:uuid:").is_some_and(|u| is_uuid(u, false)),
        Primitive::Date => parse_date(b).is_some_and(|(n, _)| n == b.len()),
        Primitive::DateTime => check_date_time(b),
        Primitive::Instant => check_instant(b),
        Primitive::Time => parse_time(b) == Some(b.len()),
        Primitive::Base64Binary => check_base64(b),
        Primitive::Xhtml => s.trim_start().starts_with("<div"),
        // JSON numbers and booleans are checked by type.
        Primitive::Boolean | Primitive::Decimal | Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt => true,
    }
}

/// `[ \r\n\t\S]+` read with ASCII classes (as the reference Java implementation does):
/// no ASCII control characters other than tab, CR and LF. Non-ASCII text is allowed.
fn check_string(s: &str) -> bool {
    s.bytes().all(|b| (b >= 0x20 && b != 0x7f) || matches!(b, b'\t' | b'\r' | b'\n'))
}

/// `[^\s]+(\s[^\s]+)*`: no leading, trailing or repeated whitespace.
fn check_code(s: &str) -> bool {
    let mut previous_space = true; // at the start, whitespace is "leading"
    for c in s.chars() {
        let space = c.is_whitespace();
        if space && previous_space {
            return false;
        }
        previous_space = space;
    }
    !previous_space
}

/// `urn:oid:[0-2](\.(0|[1-9][0-9]*))+`
fn check_oid(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("urn:oid:") else { return false };
    let mut arcs = rest.split('.');
    let first_ok = matches!(arcs.next(), Some("0" | "1" | "2"));
    let mut count = 0;
    let rest_ok = arcs.all(|arc| {
        count += 1;
        !arc.is_empty() && arc.bytes().all(|b| b.is_ascii_digit()) && (arc == "0" || !arc.starts_with('0'))
    });
    first_ok && rest_ok && count > 0
}

/// `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}` (upper case allowed
/// only when `any_case`).
fn is_uuid(s: &str, any_case: bool) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c) || (any_case && (b'A'..=b'F').contains(&c)),
        })
}

/// Base64 with optional whitespace: groups of four of `[A-Za-z0-9+/=]`, `=` only as padding.
fn check_base64(b: &[u8]) -> bool {
    let mut count = 0usize;
    let mut padding = 0usize;
    for &c in b {
        match c {
            b' ' | b'\t' | b'\r' | b'\n' => {}
            b'=' => {
                padding += 1;
                count += 1;
            }
            c if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' => {
                if padding > 0 {
                    return false;
                }
                count += 1;
            }
            _ => return false,
        }
    }
    count > 0 && count & 3 == 0 && padding <= 2
}

fn digits(b: &[u8], at: usize, n: usize) -> Option<u32> {
    let slice = b.get(at..at + n)?;
    slice.iter().try_fold(0u32, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + (c - b'0') as u32))
}

/// A date prefix `YYYY(-MM(-DD)?)?` at the start of `b`: (bytes used, full date?).
/// The year is 0001–9999 and the day must exist in its month.
fn parse_date(b: &[u8]) -> Option<(usize, bool)> {
    let year = digits(b, 0, 4).filter(|&y| y > 0)?;
    if b.get(4) != Some(&b'-') {
        return Some((4, false));
    }
    let month = digits(b, 5, 2).filter(|m| (1..=12).contains(m))?;
    if b.get(7) != Some(&b'-') {
        return Some((7, false));
    }
    let day = digits(b, 8, 2)?;
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days = match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    };
    (1..=days).contains(&day).then_some((10, true))
}

/// `hh:mm:ss(.f+)?` at the start of `b`; returns the bytes used.
fn parse_time(b: &[u8]) -> Option<usize> {
    digits(b, 0, 2).filter(|&h| h <= 23)?;
    (b.get(2) == Some(&b':')).then_some(())?;
    digits(b, 3, 2).filter(|&m| m <= 59)?;
    (b.get(5) == Some(&b':')).then_some(())?;
    digits(b, 6, 2).filter(|&s| s <= 60)?;
    if b.get(8) != Some(&b'.') {
        return Some(8);
    }
    let fraction = b[9..].iter().take_while(|c| c.is_ascii_digit()).count();
    (fraction > 0).then_some(9 + fraction)
}

/// `Z` or `(+|-)hh:mm` with hours up to 13 (or exactly 14:00): the whole of `b`.
fn check_zone(b: &[u8]) -> bool {
    match b {
        [b'Z'] => true,
        [b'+' | b'-', rest @ ..] if rest.len() == 5 && rest[2] == b':' => match (digits(rest, 0, 2), digits(rest, 3, 2)) {
            (Some(h), Some(m)) => (h <= 13 && m <= 59) || (h == 14 && m == 0),
            _ => false,
        },
        _ => false,
    }
}

/// `date(Thh:mm:ss(.f+)?zone)?`: a time needs a full date and a zone.
fn check_date_time(b: &[u8]) -> bool {
    match parse_date(b) {
        Some((n, _)) if n == b.len() => true,
        Some((10, true)) if b[10] == b'T' => check_time_and_zone(&b[11..]),
        _ => false,
    }
}

/// A full date, time and zone.
fn check_instant(b: &[u8]) -> bool {
    matches!(parse_date(b), Some((10, true))) && b.get(10) == Some(&b'T') && check_time_and_zone(&b[11..])
}

fn check_time_and_zone(b: &[u8]) -> bool {
    parse_time(b).is_some_and(|n| check_zone(&b[n..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(resource: Value) -> Vec<(IssueType, String)> {
        match validate(&resource, &Limits::default()) {
            Ok(()) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| (i.code, i.expression.join(","))).collect(),
        }
    }

    #[test]
    fn formats() {
        use Primitive::*;
        let cases: &[(Primitive, &str, bool)] = &[
            (Date, "2020", true),
            (Date, "2020-02", true),
            (Date, "2020-02-29", true),
            (Date, "2019-02-29", false),
            (Date, "2020-13-01", false),
            (Date, "0000", false),
            (Date, "2020-1-01", false),
            (Date, "2020-01-01T10:00:00Z", false),
            (DateTime, "2020-01-01T10:00:00Z", true),
            (DateTime, "2020-01-01T10:00:00.123+14:00", true),
            (DateTime, "2020-01-01T10:00:00+14:30", false),
            (DateTime, "2020-01-01T10:00:00", false),
            (DateTime, "2020-01-01T24:00:00Z", false),
            (DateTime, "2020-01T10:00:00Z", false),
            (DateTime, "2020-01-01T10:00Z", false),
            (DateTime, "2020-01-01T10:00:00.Z", false),
            (Instant, "2020-01-01T10:00:00Z", true),
            (Instant, "2020-01-01", false),
            (Time, "23:59:60", true),
            (Time, "23:59", false),
            (Time, "12:00:00.5", true),
            (Code, "a b", true),
            (Code, " a", false),
            (Code, "a ", false),
            (Code, "a  b", false),
            (Id, "a.b-C9", true),
            (Id, "a_b", false),
            (Uri, "http://x y", false),
            (Uri, "urn:x", true),
            (Oid, "urn:oid:1.2.3", true),
            (Oid, "urn:oid:1.02", false),
            (Oid, "urn:oid:3.1", false),
            (Uuid, "urn:uuid:c757873d-ec9a-4326-a141-556f43239520", true),
            (Uuid, "urn:uuid:C757873D-ec9a-4326-a141-556f43239520", false),
            (Base64Binary, "aGVsbG8=", true),
            (Base64Binary, "aGVs\nbG8=", true),
            (Base64Binary, "aGVsbG8", false),
            (Base64Binary, "aG=sbG8=", false),
            (String, "tab\tand\nnewline", true),
            (String, "bell\u{7}", false),
            (Markdown, "  spaced  ", true),
            (Xhtml, "<div xmlns=\"http://www.w3.org/1999/xhtml\">x</div>", true),
            (Xhtml, "plain", false),
        ];
        for &(p, s, expected) in cases {
            assert_eq!(check_format(p, s), expected, "{} {s:?}", p.name());
        }
    }

    #[test]
    fn valid_resource() {
        let patient = json!({
            "resourceType": "Patient", "id": "p1",
            "meta": {"versionId": "1", "lastUpdated": "2020-01-01T00:00:00Z"},
            "name": [{"family": "Doe", "given": ["Jane", null], "_given": [null, {"extension": [{"url": "http://x", "valueString": "J"}]}]}],
            "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]},
            "deceasedBoolean": false,
            "contained": [{"resourceType": "Organization", "id": "org", "name": "X"}],
            "managingOrganization": {"reference": "#org"},
            "generalPractitioner": [{"reference": "Practitioner/1/_history/2"}, {"reference": "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"},
                {"reference": "Practitioner?identifier=http://x|1"}, {"reference": "https://example.org/fhir/Practitioner/1"}],
            "multipleBirthInteger": 2,
        });
        assert_eq!(issues(patient), vec![]);
    }

    #[test]
    fn invalid_resources() {
        use IssueType::*;
        let cases: Vec<(serde_json::Value, Vec<(IssueType, &str)>)> = vec![
            (json!({"id": "x"}), vec![(Required, "resourceType")]),
            (json!({"resourceType": "Patient", "foo": 1}), vec![(Structure, "Patient.foo")]),
            (json!({"resourceType": "Patient", "active": "true"}), vec![(Structure, "Patient.active")]),
            (json!({"resourceType": "Patient", "birthDate": "2020-13-01"}), vec![(Value, "Patient.birthDate")]),
            (json!({"resourceType": "Patient", "id": "a b"}), vec![(Value, "Patient.id")]),
            (json!({"resourceType": "Observation"}), vec![(Required, "Observation.status"), (Required, "Observation.code")]),
            (json!({"resourceType": "Patient", "gender": ["male"]}), vec![(Structure, "Patient.gender")]),
            (json!({"resourceType": "Patient", "name": {"family": "Doe"}}), vec![(Structure, "Patient.name")]),
            (
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a", "valueQuantity": {"value": 1}}),
                vec![(Structure, "Observation.valueQuantity")],
            ),
            (
                json!({"resourceType": "Patient", "link": [{"other": {"reference": "Patient/"}, "type": "seealso"}]}),
                vec![(Value, "Patient.link[0].other.reference")],
            ),
            (json!({"resourceType": "Patient", "name": [{"given": ["a", ""]}]}), vec![(Value, "Patient.name[0].given[1]")]),
            (json!({"resourceType": "Patient", "gender": null}), vec![(Structure, "Patient.gender")]),
            (json!({"resourceType": "Patient", "name": [{"given": [null]}]}), vec![(Structure, "Patient.name[0].given[0]")]),
            (json!({"resourceType": "Patient", "maritalStatus": {}}), vec![(Structure, "Patient.maritalStatus")]),
            (json!({"resourceType": "Patient", "name": []}), vec![(Structure, "Patient.name")]),
            (
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Foo"}]}),
                vec![(Value, "Patient.contained[0].resourceType")],
            ),
            (json!({"resourceType": "Foo"}), vec![(Value, "resourceType")]),
            (json!({"resourceType": "Patient", "extension": [{"url": "http://x"}]}), vec![(Invariant, "Patient.extension[0]")]),
            (json!({"resourceType": "Patient", "extension": [{"valueBoolean": true}]}), vec![(Required, "Patient.extension[0].url")]),
            (
                json!({"resourceType": "Patient", "managingOrganization": {"reference": "#nope"}}),
                vec![(Value, "Patient.managingOrganization.reference")],
            ),
            (
                json!({"resourceType": "Patient", "managingOrganization": {"reference": "Foo/1"}}),
                vec![(Value, "Patient.managingOrganization.reference")],
            ),
            (json!({"resourceType": "Patient", "_gender": "x"}), vec![(Structure, "Patient.gender")]),
            (json!({"resourceType": "Patient", "_name": {}}), vec![(Structure, "Patient._name")]),
            (
                json!({"resourceType": "Patient", "name": [{"given": ["a"], "_given": [null, null]}]}),
                vec![(Structure, "Patient.name[0].given")],
            ),
            (json!({"resourceType": "Patient", "multipleBirthInteger": 1.5}), vec![(Value, "Patient.multipleBirthInteger")]),
            (json!({"resourceType": "Patient", "contact": [{"name": {"family": 1}}]}), vec![(Structure, "Patient.contact[0].name.family")]),
            (
                json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "Observation", "status": "final"}}]}),
                vec![(Required, "Bundle.entry[0].resource.code")],
            ),
            (
                json!({"resourceType": "Patient", "contained": [{"resourceType": "Organization", "id": "o", "meta": {"versionId": "1"}}]}),
                vec![(Invariant, "Patient.contained[0].meta.versionId")],
            ),
            (
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "component": [{"code": {"text": "y"}, "valueFoo": 1}]}),
                vec![(Structure, "Observation.component[0].valueFoo")],
            ),
            (
                json!({"resourceType": "Questionnaire", "status": "draft", "item": [{"linkId": "1", "type": "group", "item": [{"linkId": "1.1"}]}]}),
                vec![(Required, "Questionnaire.item[0].item[0].type")],
            ),
            (json!({"resourceType": "Patient", "meta": {"project": "x"}}), vec![(Structure, "Patient.meta.project")]),
        ];
        for (resource, expected) in cases {
            let expected: Vec<_> = expected.into_iter().map(|(c, e)| (c, e.to_string())).collect();
            assert_eq!(issues(resource.clone()), expected, "{resource}");
        }
    }

    fn errors(resource: Value) -> Vec<(IssueType, String, String)> {
        match validate(&resource, &Limits::default()) {
            Ok(()) => Vec::new(),
            Err(issues) => issues.into_iter().map(|i| (i.code, i.expression.join(","), i.diagnostics)).collect(),
        }
    }

    #[test]
    fn required_bindings() {
        let found = errors(json!({"resourceType": "Patient", "gender": "nonsense"}));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0, found[0].1.as_str()), (IssueType::CodeInvalid, "Patient.gender"));
        assert!(found[0].2.contains("'nonsense'") && found[0].2.contains("http://hl7.org/fhir/ValueSet/administrative-gender"), "{}", found[0].2);
        let obs = |status: &str| json!({"resourceType": "Observation", "status": status, "code": {"text": "x"}});
        assert_eq!(errors(obs("final")), vec![]);
        assert_eq!(errors(obs("bogus")).iter().map(|e| e.1.as_str()).collect::<Vec<_>>(), ["Observation.status"]);
        assert_eq!(errors(json!({"resourceType": "Encounter", "status": "whatever", "class": {"code": "AMB"}}))[0].1, "Encounter.status");
        // In nested data types and backbone elements.
        assert_eq!(errors(json!({"resourceType": "Patient", "telecom": [{"system": "beeper", "value": "1"}]}))[0].1, "Patient.telecom[0].system");
        assert_eq!(errors(json!({"resourceType": "Patient", "contact": [{"gender": "x", "name": {"family": "A"}}]}))[0].1, "Patient.contact[0].gender");
        // A CodeableConcept with a required binding: one coding from the value set suffices.
        let clinical = |codings: Value| json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "clinicalStatus": {"coding": codings}});
        let cs = "http://terminology.hl7.org/CodeSystem/condition-clinical";
        assert_eq!(errors(clinical(json!([{"system": cs, "code": "active"}]))), vec![]);
        assert_eq!(errors(clinical(json!([{"system": "http://example.org", "code": "x"}, {"system": cs, "code": "active"}]))), vec![]);
        assert_eq!(errors(clinical(json!([{"system": cs, "code": "dormant"}])))[0].1, "Condition.clinicalStatus");
        assert_eq!(errors(clinical(json!([{"system": "http://example.org", "code": "active"}])))[0].1, "Condition.clinicalStatus");
        // Value sets that cannot be expanded here (UCUM, MIME types) are not checked.
        assert_eq!(errors(json!({"resourceType": "Binary", "contentType": "application/x-whatever"})), vec![]);
    }

    #[test]
    fn weaker_bindings_are_warnings() {
        // Observation.category: preferred binding to observation-category.
        let obs = |system: &str, code: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "category": [{"coding": [{"system": system, "code": code}]}]});
        let local = obs("http://terminology.hl7.org/CodeSystem/observation-category", "gossip");
        assert!(validate(&local, &Limits::default()).is_ok(), "preferred: not an error");
        let full = validate_full(&local, &Limits::default());
        assert_eq!(full.len(), 1, "{full:?}");
        assert_eq!(full[0].severity, IssueSeverity::Warning);
        assert_eq!(full[0].expression, ["Observation.category[0]"]);
        assert!(full[0].diagnostics.contains("preferred"), "{}", full[0].diagnostics);
        let ok = obs("http://terminology.hl7.org/CodeSystem/observation-category", "vital-signs");
        assert_eq!(validate_full(&ok, &Limits::default()), vec![]);
        // A value set whose code system is not shipped (v3 MaritalStatus): membership unknown, no warning.
        let married = json!({"resourceType": "Patient", "maritalStatus": {"coding": [{"system": "http://example.org/local", "code": "xyz"}]}});
        assert_eq!(validate_full(&married, &Limits::default()), vec![]);
    }

    #[test]
    fn reference_target_types() {
        let obs = |reference: &str| json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": reference}});
        let found = errors(obs("Medication/x"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0, found[0].1.as_str()), (IssueType::Value, "Observation.subject"));
        assert!(found[0].2.contains("Patient, Group, Device or Location, not Medication"), "{}", found[0].2);
        for ok in ["Patient/1", "Group/g/_history/2", "https://example.org/fhir/Device/d", "Location?identifier=x|1", "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"] {
            assert_eq!(errors(obs(ok)), vec![], "{ok}");
        }
        assert_eq!(errors(obs("https://example.org/fhir/Medication/m"))[0].1, "Observation.subject");
        assert_eq!(errors(obs("Medication?code=x"))[0].1, "Observation.subject");
        // Contained targets by their resourceType; Reference.type too.
        let mut contained = obs("#m");
        contained["contained"] = json!([{"resourceType": "Medication", "id": "m"}]);
        assert_eq!(errors(contained)[0].1, "Observation.subject");
        let typed = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"type": "Medication", "identifier": {"value": "1"}}});
        assert_eq!(errors(typed)[0].1, "Observation.subject.type");
        // Elements that may refer to any resource, and nested references with their own targets.
        assert_eq!(errors(json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "focus": [{"reference": "Medication/x"}]})), vec![]);
        let assigner = json!({"resourceType": "Patient", "identifier": [{"value": "1", "assigner": {"reference": "Patient/2"}}]});
        assert_eq!(errors(assigner)[0].1, "Patient.identifier[0].assigner");
        // A transaction's urn:uuid references, typed by the caller.
        let resolve = |r: &str| (r == "urn:uuid:c757873d-ec9a-4326-a141-556f43239520").then_some("Medication");
        let options = Options { warnings: false, resolve: Some(&resolve) };
        let urn = obs("urn:uuid:c757873d-ec9a-4326-a141-556f43239520");
        assert!(validate_with(&urn, &Limits::default(), &options).is_err());
    }

    #[test]
    fn narrative_xhtml() {
        let with_div = |div: &str| json!({"resourceType": "Patient", "text": {"status": "generated", "div": div}});
        assert_eq!(errors(with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Jane <b>Doe</b></p></div>")), vec![]);
        let found = errors(with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\"><script>alert(1)</script>x</div>"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].0, found[0].1.as_str()), (IssueType::Invariant, "Patient.text.div"));
        assert!(found[0].2.contains("txt-1") && found[0].2.contains("<script>"), "{}", found[0].2);
        assert_eq!(errors(with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\"><img src=\"x.png\" onerror=\"alert(1)\"/></div>"))[0].1, "Patient.text.div");
        let nested = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": with_div("<div xmlns=\"http://www.w3.org/1999/xhtml\"><iframe/>x</div>")}]});
        assert_eq!(errors(nested)[0].1, "Bundle.entry[0].resource.text.div");
    }

    #[test]
    fn too_deep() {
        let mut extension = json!({"url": "http://x", "valueString": "leaf"});
        for _ in 0..40 {
            extension = json!({"url": "http://x", "extension": [extension]});
        }
        let patient = json!({"resourceType": "Patient", "extension": [extension]});
        let found = validate(&patient, &Limits::default()).unwrap_err();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].code, IssueType::TooLong);
        assert!(found[0].expression[0].starts_with("Patient.extension[0].extension[0]"));
        assert!(validate(&patient, &Limits { max_depth: 200 }).is_ok());
    }

    #[test]
    fn issue_messages_are_clear() {
        let found = validate(&json!({"resourceType": "Patient", "birthDate": "2020-13-01"}), &Limits::default()).unwrap_err();
        assert_eq!(found[0].diagnostics, "'2020-13-01' is not a valid date");
        assert_eq!(found[0].expression, ["Patient.birthDate"]);
    }
}
