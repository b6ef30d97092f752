//! `$meta`, `$meta-add`, `$meta-delete` (R4 Resource operations), through the [`Gate`].
//!
//! * `$meta` at instance level is the `meta` of the current version, read like a `read`;
//!   at type and system level, the profiles, tags and security labels in use on what the
//!   caller may see — bounded: the [`META_SCAN`] most recently changed resources (of the
//!   type) are looked at, each decided by the gate; Tessera's own owner and author tags are
//!   left out (they are bookkeeping, one per organisation and user).
//! * `$meta-add` / `$meta-delete` change the tags, profiles and security labels of the
//!   current version. The final R4 text does not say whether a new version results
//!   (earlier drafts said the meta is updated in place); in Tessera versions are immutable
//!   and a security label decides who may see the data, so the change is written as a new
//!   version (`versionId` + 1, audited as `meta-add`/`meta-delete`), decided exactly as an
//!   update: the subject must see the resource and may change only what its trust owns,
//!   and the resource with the new labels must be one it may write — so no one can remove
//!   a label that hides data from them (they cannot see it), nor add one they may not
//!   write. A change that changes nothing writes nothing.

use crate::access::Access;
use crate::guard::Visibility;
use crate::{Engine, FhirError, VersionedResource};
use serde_json::{json, Value};
use tessera_auth::ScopeOp;
use tessera_store::search::IndexQuery;

/// How many resources `$meta` at type or system level looks at, most recent first.
pub const META_SCAN: usize = 1000;

fn coding_key(c: &Value) -> (String, String) {
    (c.get("system").and_then(Value::as_str).unwrap_or("").to_string(), c.get("code").and_then(Value::as_str).unwrap_or("").to_string())
}

fn internal(c: &Value) -> bool {
    matches!(c.get("system").and_then(Value::as_str), Some(crate::guard::OWNER_SYSTEM) | Some(crate::guard::AUTHOR_SYSTEM))
}

/// The `Parameters` answer of the meta operations.
fn parameters(meta: Value) -> Value {
    json!({"resourceType": "Parameters", "parameter": [{"name": "return", "valueMeta": meta}]})
}

/// The union of the profiles, tags and security labels of `metas`.
#[derive(Default)]
struct MetaUnion {
    profile: Vec<String>,
    tag: Vec<Value>,
    security: Vec<Value>,
}

impl MetaUnion {
    fn add(&mut self, meta: &Value) {
        for p in meta.get("profile").and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str) {
            if !self.profile.iter().any(|q| q == p) {
                self.profile.push(p.to_string());
            }
        }
        for (key, list) in [("tag", &mut self.tag), ("security", &mut self.security)] {
            for c in meta.get(key).and_then(Value::as_array).into_iter().flatten() {
                if internal(c) || list.iter().any(|d| coding_key(d) == coding_key(c)) {
                    continue;
                }
                let mut c = c.clone();
                if let Some(o) = c.as_object_mut() {
                    o.retain(|k, _| matches!(k.as_str(), "system" | "code" | "display"));
                }
                list.push(c);
            }
        }
    }

    fn into_meta(mut self) -> Value {
        self.profile.sort();
        self.tag.sort_by_key(coding_key);
        self.security.sort_by_key(coding_key);
        let mut m = serde_json::Map::new();
        if !self.profile.is_empty() {
            m.insert("profile".into(), json!(self.profile));
        }
        if !self.tag.is_empty() {
            m.insert("tag".into(), Value::Array(self.tag));
        }
        if !self.security.is_empty() {
            m.insert("security".into(), Value::Array(self.security));
        }
        Value::Object(m)
    }
}

/// Adds (or deletes) the profiles, tags and security labels of `change` to (from) the
/// resource's `meta`. Tags and labels are identified by system and code, profiles by URL.
pub fn change_meta(resource: &mut Value, change: &Value, add: bool) -> Result<(), FhirError> {
    let Some(obj) = resource.as_object_mut() else { return Err(FhirError::internal("the resource is not an object")) };
    let meta = obj.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return Err(FhirError::unprocessable("the resource's meta is not an object")) };
    for key in ["profile", "tag", "security"] {
        let given: Vec<Value> = change.get(key).and_then(Value::as_array).cloned().unwrap_or_default();
        if given.is_empty() {
            continue;
        }
        let same = |a: &Value, b: &Value| if key == "profile" { a == b } else { coding_key(a) == coding_key(b) };
        let list = meta.entry(key).or_insert_with(|| json!([]));
        let Some(list) = list.as_array_mut() else { return Err(FhirError::unprocessable(format!("the resource's meta.{key} is not a list"))) };
        for g in given {
            if add {
                if !list.iter().any(|e| same(e, &g)) {
                    list.push(g);
                }
            } else {
                list.retain(|e| !same(e, &g));
            }
        }
        if list.is_empty() {
            meta.remove(key);
        }
    }
    Ok(())
}

/// The `meta` of a `$meta-add`/`$meta-delete` request: a Parameters with `meta`
/// (valueMeta), or a bare Meta.
fn requested_meta(body: &Value) -> Result<Value, FhirError> {
    if body.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        return body
            .get("parameter")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|p| p.get("name").and_then(Value::as_str) == Some("meta"))
            .and_then(|p| p.get("valueMeta"))
            .cloned()
            .ok_or_else(|| FhirError::bad_request("the Parameters need a 'meta' parameter (valueMeta)").at("Parameters.parameter"));
    }
    Err(FhirError::bad_request("send a Parameters resource with a 'meta' parameter (valueMeta)"))
}

impl Engine {
    /// `$meta`: at instance level (`id`), the current version's `meta`; at type level
    /// (`resource_type`) or system level, the profiles, tags and security labels in use on
    /// the [`META_SCAN`] most recent resources the caller may see. A Parameters with `return`.
    pub async fn meta(&self, access: &Access, resource_type: Option<&str>, id: Option<&str>) -> Result<Value, FhirError> {
        if let (Some(ty), Some(id)) = (resource_type, id) {
            let v = self.read(access, ty, id).await?;
            let r: Value = serde_json::from_slice(v.json()).map_err(|e| FhirError::internal(format!("stored resource is not JSON: {e}")))?;
            return Ok(parameters(r.get("meta").cloned().unwrap_or_else(|| json!({}))));
        }
        if let Some(ty) = resource_type {
            self.check_type(ty)?;
            access.require_scope(ty, ScopeOp::Search)?;
        }
        let mut gate = self.gate(access);
        let mut q = IndexQuery::new(resource_type);
        q.limit = META_SCAN;
        let seqs = self.store().search(&q).await?;
        let mut union = MetaUnion::default();
        for s in self.store().load(&seqs).await? {
            if s.deleted || gate.visibility(&s).await? != Visibility::Visible {
                continue;
            }
            if let Ok(r) = serde_json::from_slice::<Value>(&s.json) {
                if let Some(m) = r.get("meta") {
                    union.add(m);
                }
            }
        }
        let scope = resource_type.unwrap_or("*").to_string();
        gate.record_access("meta", true, &[scope], Vec::new(), Some("profiles, tags and security labels in use"));
        gate.finish().await?;
        Ok(parameters(union.into_meta()))
    }

    /// `POST [type]/[id]/$meta-add` (`add`) or `$meta-delete`: changes the current version's
    /// tags, profiles and security labels, decided and written as an update (a new version).
    /// Returns the resulting `meta` as Parameters, and the version.
    pub async fn meta_change(&self, access: &Access, resource_type: &str, id: &str, body: &Value, add: bool) -> Result<(Value, VersionedResource), FhirError> {
        self.check_type(resource_type)?;
        Self::check_id(resource_type, id)?;
        let change = requested_meta(body)?;
        let mut gate = self.gate(access);
        let interaction = if add { "meta-add" } else { "meta-delete" };
        let outcome = self.modify(&mut gate, resource_type, id, None, interaction, true, |doc| change_meta(doc, &change, add)).await?;
        let r: Value = serde_json::from_slice(outcome.resource.json()).map_err(|e| FhirError::internal(format!("stored resource is not JSON: {e}")))?;
        Ok((parameters(r.get("meta").cloned().unwrap_or_else(|| json!({}))), outcome.resource))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_sets() {
        let mut r = json!({"resourceType": "Patient", "meta": {"tag": [{"system": "s", "code": "a", "display": "A"}]}});
        change_meta(&mut r, &json!({"tag": [{"system": "s", "code": "a"}, {"system": "s", "code": "b"}], "profile": ["p"]}), true).unwrap();
        assert_eq!(r["meta"]["tag"].as_array().unwrap().len(), 2, "no duplicates by system and code");
        assert_eq!(r["meta"]["profile"], json!(["p"]));
        change_meta(&mut r, &json!({"tag": [{"system": "s", "code": "a", "display": "other"}], "profile": ["p"]}), false).unwrap();
        assert_eq!(r["meta"], json!({"tag": [{"system": "s", "code": "b"}]}));
    }
}
