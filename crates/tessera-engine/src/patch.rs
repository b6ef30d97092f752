//! PATCH documents, applied to a resource's JSON before it is validated and written like any
//! update (`Engine::patch`, `Engine::conditional_patch`):
//!
//! * **JSON Patch** (RFC 6902, `application/json-patch+json`): an array of operations.
//! * **FHIRPath Patch** (FHIR R4 §3.1.0.6, `application/fhir+json`): a `Parameters` resource
//!   of `operation` parameters, each with the parts `type` (`add`, `insert`, `delete`,
//!   `replace`, `move`), `path` (a FHIRPath expression, evaluated with `tessera-fhirpath`),
//!   and as the type needs `name`, `value` (a `value[x]`, or `part`s for an anonymous
//!   (backbone) type), `index`, `source`, `destination`. Choice elements are named by the
//!   type of the value (`add` `name=deceased` with `valueBoolean` sets `deceasedBoolean`),
//!   lists are JSON arrays where the definitions say `max = *`, and an element left empty by
//!   a `delete` is removed with it (FHIR JSON has no empty objects or arrays).
//! * **JSON Merge Patch** (RFC 7386, `application/merge-patch+json`, or any other JSON
//!   object that is not a `Parameters`): the members given replace those of the resource,
//!   `null` removes one. This is what fhirpy's `patch(field=value)` sends.
//!
//! A patch that cannot be applied (a path selecting nothing where something is needed, an
//! index out of range) is a 422; a malformed patch document a 400.

use crate::FhirError;
use serde_json::{Map, Value};
use tessera_fhir::definitions::{self, Target, TypeDef};
use tessera_fhirpath::{Context, Expression, Item};

/// How the request said its body is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchFormat {
    /// `application/json-patch+json`.
    JsonPatch,
    /// `application/merge-patch+json`.
    MergePatch,
    /// `application/fhir+json` or `application/json`: an array is a JSON Patch, a
    /// `Parameters` a FHIRPath Patch, any other object a merge patch.
    Detect,
}

/// A parsed patch document.
#[derive(Debug, Clone)]
pub enum PatchDoc {
    Json(json_patch::Patch),
    FhirPath(Vec<Operation>),
    Merge(Value),
}

/// One FHIRPath Patch operation.
#[derive(Debug, Clone)]
pub struct Operation {
    kind: Kind,
    path: String,
    expr: Expression,
    name: Option<String>,
    value: Option<PatchValue>,
    index: Option<usize>,
    source: Option<usize>,
    destination: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Add,
    Insert,
    Delete,
    Replace,
    Move,
}

/// The `value` of an operation.
#[derive(Debug, Clone)]
enum PatchValue {
    /// `value[x]`: the type suffix (`Date`, `CodeableConcept`), the JSON value, and the
    /// `_value[x]` extension of a primitive.
    Typed { suffix: String, value: Value, ext: Option<Value> },
    /// An anonymous type given part by part.
    Parts(Vec<(String, PatchValue)>),
    /// A resource (`contained`).
    Resource(Value),
}

impl PatchDoc {
    /// Reads a patch document.
    pub fn parse(body: Value, format: PatchFormat) -> Result<PatchDoc, FhirError> {
        let json_patch = |body: Value| {
            serde_json::from_value::<json_patch::Patch>(body)
                .map(PatchDoc::Json)
                .map_err(|e| FhirError::bad_request(format!("the body is not a valid JSON Patch document: {e}")))
        };
        let is_parameters = body.get("resourceType").and_then(Value::as_str) == Some("Parameters");
        match format {
            PatchFormat::JsonPatch => json_patch(body),
            PatchFormat::MergePatch if body.is_object() => Ok(PatchDoc::Merge(body)),
            PatchFormat::MergePatch => Err(FhirError::bad_request("a JSON Merge Patch must be a JSON object")),
            PatchFormat::Detect if body.is_array() => json_patch(body),
            PatchFormat::Detect if is_parameters => parse_fhirpath_patch(&body).map(PatchDoc::FhirPath),
            PatchFormat::Detect if body.is_object() => Ok(PatchDoc::Merge(body)),
            PatchFormat::Detect => Err(FhirError::bad_request(
                "a PATCH body is a JSON Patch array (application/json-patch+json), a FHIRPath Patch Parameters resource (application/fhir+json) or a JSON Merge Patch object (application/merge-patch+json)",
            )),
        }
    }

    /// The audit name of the format.
    pub fn format_name(&self) -> &'static str {
        match self {
            PatchDoc::Json(_) => "JSON Patch",
            PatchDoc::FhirPath(_) => "FHIRPath Patch",
            PatchDoc::Merge(_) => "JSON Merge Patch",
        }
    }

    /// Applies the patch to `doc` (a resource). On error `doc` may be partly changed.
    pub fn apply(&self, doc: &mut Value) -> Result<(), FhirError> {
        match self {
            PatchDoc::Json(p) => json_patch::patch(doc, p).map_err(|e| FhirError::unprocessable(format!("the patch cannot be applied: {e}"))),
            PatchDoc::Merge(m) => {
                json_patch::merge(doc, m);
                Ok(())
            }
            PatchDoc::FhirPath(ops) => {
                for (i, op) in ops.iter().enumerate() {
                    apply_operation(doc, op).map_err(|m| FhirError::unprocessable(m).at(format!("Parameters.parameter[{i}]")))?;
                }
                Ok(())
            }
        }
    }
}

fn parse_fhirpath_patch(body: &Value) -> Result<Vec<Operation>, FhirError> {
    let mut ops = Vec::new();
    for (i, p) in body.get("parameter").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let at = format!("Parameters.parameter[{i}]");
        let bad = |m: String| FhirError::bad_request(m).at(at.clone());
        if p.get("name").and_then(Value::as_str) != Some("operation") {
            return Err(bad("a FHIRPath Patch holds only parameters named 'operation'".into()));
        }
        let parts: Vec<&Value> = p.get("part").and_then(Value::as_array).into_iter().flatten().collect();
        let part = |name: &str| parts.iter().copied().find(|q| q.get("name").and_then(Value::as_str) == Some(name));
        let string = |name: &str, key: &str| part(name).and_then(|q| q.get(key)).and_then(Value::as_str).map(str::to_string);
        let number = |name: &str| -> Result<Option<usize>, FhirError> {
            match part(name) {
                None => Ok(None),
                Some(q) => q.get("valueInteger").and_then(Value::as_u64).map(|n| Some(n as usize)).ok_or_else(|| bad(format!("the part '{name}' must be a non-negative valueInteger"))),
            }
        };
        let kind = match string("type", "valueCode").as_deref() {
            Some("add") => Kind::Add,
            Some("insert") => Kind::Insert,
            Some("delete") => Kind::Delete,
            Some("replace") => Kind::Replace,
            Some("move") => Kind::Move,
            Some(other) => return Err(bad(format!("unknown FHIRPath Patch operation type '{other}' (add, insert, delete, replace, move)"))),
            None => return Err(bad("an operation needs a 'type' part (valueCode)".into())),
        };
        let path = string("path", "valueString").ok_or_else(|| bad("an operation needs a 'path' part (valueString)".into()))?;
        let expr = Expression::parse(&path).map_err(|e| bad(format!("the path '{path}' is not valid FHIRPath: {e}")))?;
        let value = match part("value") {
            Some(v) => Some(patch_value(v).map_err(&bad)?),
            None => None,
        };
        let op = Operation {
            kind,
            path,
            expr,
            name: string("name", "valueString"),
            value,
            index: number("index")?,
            source: number("source")?,
            destination: number("destination")?,
        };
        let missing = match kind {
            Kind::Add if op.name.is_none() || op.value.is_none() => Some("'name' and 'value'"),
            Kind::Insert if op.index.is_none() || op.value.is_none() => Some("'index' and 'value'"),
            Kind::Replace if op.value.is_none() => Some("'value'"),
            Kind::Move if op.source.is_none() || op.destination.is_none() => Some("'source' and 'destination'"),
            _ => None,
        };
        if let Some(what) = missing {
            return Err(bad(format!("a FHIRPath Patch '{}' operation needs the parts {what}", string("type", "valueCode").unwrap_or_default())));
        }
        ops.push(op);
    }
    Ok(ops)
}

fn patch_value(part: &Value) -> Result<PatchValue, String> {
    let Some(m) = part.as_object() else { return Err("a part must be an object".into()) };
    if let Some(parts) = m.get("part").and_then(Value::as_array) {
        let mut out = Vec::new();
        for p in parts {
            let name = p.get("name").and_then(Value::as_str).ok_or("every part of an anonymous value needs a name")?;
            out.push((name.to_string(), patch_value(p)?));
        }
        return Ok(PatchValue::Parts(out));
    }
    if let Some(r) = m.get("resource") {
        return Ok(PatchValue::Resource(r.clone()));
    }
    for (k, v) in m {
        if let Some(suffix) = k.strip_prefix("value").filter(|s| s.starts_with(|c: char| c.is_ascii_uppercase())) {
            return Ok(PatchValue::Typed { suffix: suffix.to_string(), value: v.clone(), ext: m.get(&format!("_{k}")).cloned() });
        }
    }
    Err("the 'value' part has no value[x], part or resource".into())
}

/// One step of a location in the JSON tree.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

type Loc = Vec<Step>;

/// The locations of the elements `expr` selects in `doc`.
fn select(doc: &Value, expr: &Expression) -> Result<Vec<Loc>, String> {
    let items = expr.evaluate(doc, &Context::new()).map_err(|e| format!("the path '{}' cannot be evaluated: {e}", expr.source()))?;
    let mut out = Vec::with_capacity(items.len());
    for item in &items {
        let Item::Node(n) = item else {
            return Err(format!("the path '{}' selects a computed value, not an element of the resource", expr.source()));
        };
        let mut loc = Vec::new();
        if find(doc, n.json() as *const Value, &mut loc) {
            out.push(loc);
            continue;
        }
        // A primitive that has only an extension: found through its `_name` sibling.
        if let Some(ext) = n.extension_json() {
            let mut loc = Vec::new();
            if find(doc, ext as *const Value, &mut loc) {
                for step in loc.iter_mut().rev() {
                    if let Step::Key(k) = step {
                        *k = k.trim_start_matches('_').to_string();
                        break;
                    }
                }
                out.push(loc);
                continue;
            }
        }
        return Err(format!("the path '{}' selects something that is not an element of the resource", expr.source()));
    }
    Ok(out)
}

fn find(v: &Value, target: *const Value, path: &mut Loc) -> bool {
    if std::ptr::eq(v, target) {
        return true;
    }
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                path.push(Step::Key(k.clone()));
                if find(c, target, path) {
                    return true;
                }
                path.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                path.push(Step::Index(i));
                if find(c, target, path) {
                    return true;
                }
                path.pop();
            }
        }
        _ => {}
    }
    false
}

fn get<'a>(doc: &'a Value, loc: &[Step]) -> Option<&'a Value> {
    loc.iter().try_fold(doc, |v, s| match s {
        Step::Key(k) => v.get(k),
        Step::Index(i) => v.get(*i),
    })
}

fn get_mut<'a>(doc: &'a mut Value, loc: &[Step]) -> Option<&'a mut Value> {
    loc.iter().try_fold(doc, |v, s| match s {
        Step::Key(k) => v.get_mut(k),
        Step::Index(i) => v.get_mut(*i),
    })
}

/// The element table of the complex value at `loc` (`None` for primitives and JSON the
/// definitions do not describe).
fn type_at(doc: &Value, loc: &[Step]) -> Option<&'static TypeDef> {
    let defs = definitions::definitions();
    let mut td = defs.resource(doc.get("resourceType")?.as_str()?)?;
    let mut v = doc;
    let mut resource = false;
    for step in loc {
        match step {
            Step::Index(i) => v = v.get(*i)?,
            Step::Key(k) => {
                let (e, t) = td.lookup(k)?;
                v = v.get(k)?;
                resource = false;
                match td.elements[e].types[t].target {
                    Target::Complex(id) => td = defs.get(id),
                    Target::Resource => resource = true,
                    Target::Primitive(_) => return None,
                }
            }
        }
        if resource {
            if let Some(rt) = v.get("resourceType").and_then(Value::as_str) {
                td = defs.resource(rt)?;
                resource = false;
            }
        }
    }
    (!resource).then_some(td)
}

/// Where a value for the element `name` goes in an object of type `td`: its JSON key
/// (choice elements take the value's type), whether it is a list, and the value's table.
fn element_key(td: Option<&'static TypeDef>, name: &str, value: &PatchValue) -> Result<(String, bool, Option<&'static TypeDef>), String> {
    let Some(td) = td else {
        return Ok((name.to_string(), false, None));
    };
    let defs = definitions::definitions();
    let key = match td.element(name) {
        Some(e) if e.choice => match value {
            PatchValue::Typed { suffix, .. } => format!("{name}{suffix}"),
            _ => return Err(format!("{}.{name}[x] is a choice element: give the value as value[x] so that its type is known", td.name)),
        },
        Some(_) => name.to_string(),
        None if td.lookup(name).is_some() => name.to_string(),
        None => return Err(format!("{} has no element '{name}'", td.name)),
    };
    let Some((e, t)) = td.lookup(&key) else {
        return Err(format!("{}.{name} cannot hold a value of that type ({key})", td.name));
    };
    let element = &td.elements[e];
    let child = match element.types[t].target {
        Target::Complex(id) => Some(defs.get(id)),
        _ => None,
    };
    Ok((key, element.many, child))
}

/// The JSON of a patch value (and the `_x` extension of a primitive) for an element whose
/// type table is `td`.
fn to_json(v: &PatchValue, td: Option<&'static TypeDef>) -> Result<(Value, Option<Value>), String> {
    match v {
        PatchValue::Typed { value, ext, .. } => Ok((value.clone(), ext.clone())),
        PatchValue::Resource(r) => Ok((r.clone(), None)),
        PatchValue::Parts(parts) => {
            let mut out = Map::new();
            for (name, pv) in parts {
                let (key, many, child) = element_key(td, name, pv)?;
                let (j, ext) = to_json(pv, child)?;
                let repeated = td.is_none() && out.contains_key(&key);
                if many || repeated {
                    let slot = out.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                    if !slot.is_array() {
                        let first = slot.take();
                        *slot = Value::Array(vec![first]);
                    }
                    if let Value::Array(a) = slot {
                        a.push(j);
                    }
                } else {
                    if out.contains_key(&key) {
                        return Err(format!("the element '{name}' is given twice but holds one value"));
                    }
                    out.insert(key.clone(), j);
                    if let Some(ext) = ext {
                        out.insert(format!("_{key}"), ext);
                    }
                }
            }
            Ok((Value::Object(out), None))
        }
    }
}

/// The list a path names: the parent object and the key of the array that holds the
/// selected items — or, when the path selects nothing, the element its last step names.
fn list_of(doc: &Value, op: &Operation, locs: &[Loc]) -> Result<(Loc, String), String> {
    if let Some(first) = locs.first() {
        let parent_of = |l: &Loc| -> Option<(Loc, String)> {
            match l.as_slice() {
                [rest @ .., Step::Key(k), Step::Index(_)] => Some((rest.to_vec(), k.clone())),
                _ => None,
            }
        };
        let list = parent_of(first).ok_or_else(|| format!("the path '{}' does not select items of a list", op.path))?;
        if locs.iter().any(|l| parent_of(l).as_ref() != Some(&list)) {
            return Err(format!("the path '{}' selects items of more than one list", op.path));
        }
        return Ok(list);
    }
    // Nothing selected: `X.name` names the (absent or empty) list `name` of the one `X`.
    let (prefix, name) = op.path.rsplit_once('.').ok_or_else(|| format!("No content found at {}", op.path))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("No content found at {}", op.path));
    }
    let expr = Expression::parse(prefix).map_err(|e| e.to_string())?;
    match select(doc, &expr)?.as_slice() {
        [one] => Ok((one.clone(), name.to_string())),
        _ => Err(format!("No content found at {}", op.path)),
    }
}

fn apply_operation(doc: &mut Value, op: &Operation) -> Result<(), String> {
    let locs = select(doc, &op.expr)?;
    match op.kind {
        Kind::Add => {
            let loc = match locs.as_slice() {
                [] => return Err(format!("No content found at {} when adding", op.path)),
                [one] => one.clone(),
                _ => return Err(format!("the path '{}' selects {} elements: add needs exactly one", op.path, locs.len())),
            };
            let name = op.name.as_deref().unwrap_or_default();
            let value = op.value.as_ref().ok_or("add needs a value")?;
            let (key, many, child) = element_key(type_at(doc, &loc), name, value)?;
            let (j, ext) = to_json(value, child)?;
            let Some(Value::Object(obj)) = get_mut(doc, &loc) else {
                return Err(format!("'{}' is not an element that can hold '{name}'", op.path));
            };
            if many {
                let arr = obj.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
                let Value::Array(arr) = arr else { return Err(format!("{}.{key} is not a list", op.path)) };
                arr.push(j);
                let len = arr.len();
                push_ext(obj, &key, len - 1, ext);
            } else {
                if obj.contains_key(&key) {
                    return Err(format!("{}.{key} already has a value: use replace", op.path));
                }
                obj.insert(key.clone(), j);
                if let Some(ext) = ext {
                    obj.insert(format!("_{key}"), ext);
                }
            }
            Ok(())
        }
        Kind::Insert => {
            let (parent, key) = list_of(doc, op, &locs)?;
            let value = op.value.as_ref().ok_or("insert needs a value")?;
            let (_, _, child) = element_key(type_at(doc, &parent), &key, value)?;
            let (j, ext) = to_json(value, child)?;
            let index = op.index.unwrap_or(0);
            let Some(Value::Object(obj)) = get_mut(doc, &parent) else { return Err(format!("No content found at {}", op.path)) };
            let arr = obj.entry(key.clone()).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(arr) = arr else { return Err(format!("'{}' is not a list", op.path)) };
            if index > arr.len() {
                return Err(format!("index {index} is beyond the end of the list '{}' ({} items)", op.path, arr.len()));
            }
            arr.insert(index, j);
            let len = arr.len();
            match obj.get_mut(&format!("_{key}")) {
                Some(Value::Array(exts)) => {
                    exts.resize(len - 1, Value::Null);
                    exts.insert(index, ext.unwrap_or(Value::Null));
                }
                _ => {
                    if let Some(ext) = ext {
                        let mut exts = vec![Value::Null; len];
                        exts[index] = ext;
                        obj.insert(format!("_{key}"), Value::Array(exts));
                    }
                }
            }
            Ok(())
        }
        Kind::Delete => match locs.as_slice() {
            [] => Ok(()),
            [one] if one.is_empty() => Err("a patch cannot delete the resource itself".into()),
            [one] => {
                remove(doc, one);
                Ok(())
            }
            _ => Err(format!("the path '{}' selects {} elements: delete removes one at a time", op.path, locs.len())),
        },
        Kind::Replace => {
            let loc = match locs.as_slice() {
                [] => return Err(format!("No content found at {} when replacing", op.path)),
                [one] if one.is_empty() => return Err("a patch cannot replace the resource itself".into()),
                [one] => one.clone(),
                _ => return Err(format!("the path '{}' selects {} elements: replace needs exactly one", op.path, locs.len())),
            };
            let value = op.value.as_ref().ok_or("replace needs a value")?;
            // The key of the element (for a list item, of its list).
            let (owner, key, index) = match loc.as_slice() {
                [rest @ .., Step::Key(k), Step::Index(i)] => (rest.to_vec(), k.clone(), Some(*i)),
                [rest @ .., Step::Key(k)] => (rest.to_vec(), k.clone(), None),
                _ => return Err(format!("'{}' is not an element", op.path)),
            };
            let td = type_at(doc, &owner);
            // A choice element takes the new value's type: `valueString` → `valueQuantity`.
            let element_name = td.and_then(|t| t.lookup(&key).map(|(e, _)| t.elements[e].name.clone())).unwrap_or_else(|| key.clone());
            let (new_key, _, child) = element_key(td, &element_name, value)?;
            let (j, ext) = to_json(value, child)?;
            let Some(Value::Object(obj)) = get_mut(doc, &owner) else { return Err(format!("No content found at {}", op.path)) };
            match index {
                Some(i) => {
                    if let Some(slot) = obj.get_mut(&key).and_then(|a| a.get_mut(i)) {
                        *slot = j;
                    }
                    if let Some(ext) = ext {
                        let len = obj.get(&key).and_then(Value::as_array).map_or(0, Vec::len);
                        let exts = obj.entry(format!("_{key}")).or_insert_with(|| Value::Array(vec![Value::Null; len]));
                        if let Some(slot) = exts.get_mut(i) {
                            *slot = ext;
                        }
                    }
                }
                None if new_key != key => {
                    obj.remove(&key);
                    obj.remove(&format!("_{key}"));
                    obj.insert(new_key.clone(), j);
                    if let Some(ext) = ext {
                        obj.insert(format!("_{new_key}"), ext);
                    }
                }
                None => {
                    obj.insert(key.clone(), j);
                    if let Some(ext) = ext {
                        obj.insert(format!("_{key}"), ext);
                    }
                }
            }
            Ok(())
        }
        Kind::Move => {
            let (parent, key) = list_of(doc, op, &locs)?;
            let (source, destination) = (op.source.unwrap_or(0), op.destination.unwrap_or(0));
            let Some(Value::Object(obj)) = get_mut(doc, &parent) else { return Err(format!("No content found at {}", op.path)) };
            for k in [key.clone(), format!("_{key}")] {
                let Some(Value::Array(arr)) = obj.get_mut(&k) else {
                    if k == key {
                        return Err(format!("No content found at {}", op.path));
                    }
                    continue;
                };
                if source >= arr.len() || destination >= arr.len() {
                    return Err(format!("move from {source} to {destination} is outside the list '{}' ({} items)", op.path, arr.len()));
                }
                let item = arr.remove(source);
                arr.insert(destination, item);
            }
            Ok(())
        }
    }
}

/// Keeps a primitive list's `_x` array aligned after an item was appended at `index`.
fn push_ext(obj: &mut Map<String, Value>, key: &str, index: usize, ext: Option<Value>) {
    let ext_key = format!("_{key}");
    match obj.get_mut(&ext_key) {
        Some(Value::Array(exts)) => {
            exts.resize(index, Value::Null);
            exts.push(ext.unwrap_or(Value::Null));
        }
        _ => {
            if let Some(ext) = ext {
                let mut exts = vec![Value::Null; index + 1];
                exts[index] = ext;
                obj.insert(ext_key, Value::Array(exts));
            }
        }
    }
}

/// Removes the element at `loc` (with its `_x` extension), then every object or array the
/// removal left empty, up to (not including) the resource.
fn remove(doc: &mut Value, loc: &[Step]) {
    let Some((last, parent)) = loc.split_last() else { return };
    match last {
        Step::Key(k) => {
            if let Some(Value::Object(obj)) = get_mut(doc, parent) {
                obj.remove(k);
                obj.remove(&format!("_{k}"));
            }
        }
        Step::Index(i) => {
            if let [owner @ .., Step::Key(k)] = parent {
                if let Some(Value::Object(obj)) = get_mut(doc, owner) {
                    if let Some(Value::Array(a)) = obj.get_mut(k) {
                        if *i < a.len() {
                            a.remove(*i);
                        }
                    }
                    let ext_key = format!("_{k}");
                    if let Some(Value::Array(a)) = obj.get_mut(&ext_key) {
                        if *i < a.len() {
                            a.remove(*i);
                        }
                        if a.iter().all(Value::is_null) {
                            obj.remove(&ext_key);
                        }
                    }
                }
            }
        }
    }
    // Prune what became empty.
    let mut at = parent.to_vec();
    while !at.is_empty() {
        let empty = match get(doc, &at) {
            Some(Value::Object(m)) => m.is_empty(),
            Some(Value::Array(a)) => a.is_empty(),
            _ => false,
        };
        if !empty {
            break;
        }
        remove_exact(doc, &at);
        at.pop();
    }
}

/// Removes exactly the value at `loc` (no pruning).
fn remove_exact(doc: &mut Value, loc: &[Step]) {
    let Some((last, parent)) = loc.split_last() else { return };
    match (get_mut(doc, parent), last) {
        (Some(Value::Object(obj)), Step::Key(k)) => {
            obj.remove(k);
        }
        (Some(Value::Array(a)), Step::Index(i)) if *i < a.len() => {
            a.remove(*i);
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn op(parts: Value) -> Value {
        json!({"resourceType": "Parameters", "parameter": [{"name": "operation", "part": parts}]})
    }

    fn apply(doc: Value, patch: Value) -> Result<Value, FhirError> {
        let mut doc = doc;
        PatchDoc::parse(patch, PatchFormat::Detect)?.apply(&mut doc)?;
        Ok(doc)
    }

    #[test]
    fn fhirpath_patch_operations() {
        let p = json!({"resourceType": "Patient", "birthDate": "1920-01-01", "identifier": [{"value": "1"}, {"value": "2"}]});
        let out = apply(p.clone(), op(json!([{"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Patient.birthDate"}, {"name": "value", "valueDate": "1930-01-01"}]))).unwrap();
        assert_eq!(out["birthDate"], "1930-01-01");
        let out = apply(p.clone(), op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "deceased"}, {"name": "value", "valueBoolean": true}]))).unwrap();
        assert_eq!(out["deceasedBoolean"], true);
        let out = apply(p.clone(), op(json!([{"name": "type", "valueCode": "insert"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "index", "valueInteger": 1}, {"name": "value", "valueIdentifier": {"value": "3"}}]))).unwrap();
        assert_eq!(out["identifier"], json!([{"value": "1"}, {"value": "3"}, {"value": "2"}]));
        let out = apply(p.clone(), op(json!([{"name": "type", "valueCode": "move"}, {"name": "path", "valueString": "Patient.identifier"}, {"name": "source", "valueInteger": 1}, {"name": "destination", "valueInteger": 0}]))).unwrap();
        assert_eq!(out["identifier"], json!([{"value": "2"}, {"value": "1"}]));
        let out = apply(p.clone(), op(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.identifier[0].value"}]))).unwrap();
        assert_eq!(out["identifier"], json!([{"value": "2"}]), "an emptied element goes with it");
        let out = apply(p.clone(), op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"}, {"name": "name", "valueString": "contact"},
            {"name": "value", "part": [{"name": "name", "valueHumanName": {"text": "a"}}, {"name": "telecom", "valueContactPoint": {"value": "1"}}]}]))).unwrap();
        assert_eq!(out["contact"], json!([{"name": {"text": "a"}, "telecom": [{"value": "1"}]}]));
        let e = apply(p.clone(), op(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient.contact"}, {"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "male"}]))).unwrap_err();
        assert_eq!(e.status, 422);
        let e = apply(p, op(json!([{"name": "type", "valueCode": "explode"}, {"name": "path", "valueString": "Patient"}]))).unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn merge_patch() {
        let out = apply(json!({"resourceType": "Patient", "active": true, "gender": "male"}), json!({"active": false, "gender": null})).unwrap();
        assert_eq!(out, json!({"resourceType": "Patient", "active": false}));
    }
}
