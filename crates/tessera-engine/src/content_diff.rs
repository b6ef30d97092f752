//! Element-level differences between two sets of content items (two packages, or two
//! versions): items are matched by type, canonical `url`, layer and organisation; for an item
//! in both, every element path whose value differs is listed with both values.

use serde_json::Value;
use std::collections::BTreeMap;

/// What identifies an item across versions.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ItemKey {
    pub resource_type: String,
    pub url: String,
    pub layer: String,
    pub scope: Option<String>,
}

impl std::fmt::Display for ItemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} [{}{}]", self.resource_type, self.url, self.layer, self.scope.as_deref().map(|s| format!(" {s}")).unwrap_or_default())
    }
}

/// One difference.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added(ItemKey),
    Removed(ItemKey),
    /// An element of an item in both: its path (`title`, `action[2].title`) and the values.
    Changed { item: ItemKey, path: String, before: Option<Value>, after: Option<Value> },
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: &Option<Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "(absent)".into());
        match self {
            Change::Added(k) => write!(f, "+ {k}"),
            Change::Removed(k) => write!(f, "- {k}"),
            Change::Changed { item, path, before, after } => write!(f, "~ {item} {path}: {} → {}", show(before), show(after)),
        }
    }
}

/// The key of an item (`None` for an entry that is not a layered item with a url).
pub fn key_of(resource: &Value) -> Option<ItemKey> {
    let tags = resource.pointer("/meta/tag").and_then(Value::as_array);
    let tag = |system: &str| tags.into_iter().flatten().find(|t| t["system"] == system).and_then(|t| t["code"].as_str()).map(str::to_string);
    Some(ItemKey {
        resource_type: resource.get("resourceType")?.as_str()?.to_string(),
        url: resource.get("url")?.as_str()?.to_string(),
        layer: tag("https://tessera.health/CodeSystem/content-layer").unwrap_or_else(|| "unlayered".into()),
        scope: tag("https://tessera.health/CodeSystem/content-scope"),
    })
}

/// The items of a Bundle, by key.
pub fn items(bundle: &Value) -> BTreeMap<ItemKey, Value> {
    bundle
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|e| e.get("resource"))
        .filter_map(|r| Some((key_of(r)?, r.clone())))
        .collect()
}

/// Elements that change with every store and say nothing of the content.
const NOISE: &[&str] = &["meta", "id", "text"];

fn walk(path: &str, a: Option<&Value>, b: Option<&Value>, out: &mut Vec<(String, Option<Value>, Option<Value>)>) {
    match (a, b) {
        (Some(Value::Object(x)), Some(Value::Object(y))) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                if path.is_empty() && NOISE.contains(&k.as_str()) {
                    continue;
                }
                let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                walk(&p, x.get(k), y.get(k), out);
            }
        }
        (Some(Value::Array(x)), Some(Value::Array(y))) => {
            for i in 0..x.len().max(y.len()) {
                walk(&format!("{path}[{i}]"), x.get(i), y.get(i), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push((path.to_string(), a.cloned(), b.cloned())),
    }
}

/// The differences from `before` to `after` (two Bundles of items).
pub fn diff(before: &Value, after: &Value) -> Vec<Change> {
    let a = items(before);
    let b = items(after);
    let mut out = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => out.push(Change::Removed(k.clone())),
            Some(w) => {
                let mut changes = Vec::new();
                walk("", Some(v), Some(w), &mut changes);
                out.extend(changes.into_iter().map(|(path, before, after)| Change::Changed { item: k.clone(), path, before, after }));
            }
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        out.push(Change::Added(k.clone()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differences_are_element_level() {
        let item = |title: &str, actions: Value| json!({"resourceType": "PlanDefinition", "id": "x", "url": "u", "status": "active", "title": title, "action": actions,
            "meta": {"versionId": "1", "tag": [{"system": "https://tessera.health/CodeSystem/content-layer", "code": "model"}]}});
        let a = json!({"resourceType": "Bundle", "entry": [{"resource": item("Sepsis", json!([{"title": "Cultures"}]))}]});
        let mut changed = item("Sepsis Six", json!([{"title": "Cultures"}, {"title": "Lactate"}]));
        changed["meta"]["versionId"] = json!("2");
        let extra = json!({"resourceType": "ValueSet", "url": "v", "status": "active"});
        let b = json!({"resourceType": "Bundle", "entry": [{"resource": changed}, {"resource": extra}]});
        let d = diff(&a, &b);
        let text: Vec<String> = d.iter().map(|c| c.to_string()).collect();
        assert_eq!(d.len(), 3, "{text:?}");
        assert!(text.iter().any(|t| t.contains("title: \"Sepsis\" → \"Sepsis Six\"")), "{text:?}");
        assert!(text.iter().any(|t| t.contains("action[1]: (absent) → {\"title\":\"Lactate\"}")), "{text:?}");
        assert!(text.iter().any(|t| t.starts_with("+ ValueSet v [unlayered]")), "{text:?}");
        assert!(diff(&a, &a).is_empty());
    }
}
