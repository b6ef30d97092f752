//! Layered content: build once for the domain, localise only where allowed.
//!
//! Content — order catalogue (ActivityDefinition), order sets and pathways (PlanDefinition),
//! templates and assessments (Questionnaire), value sets and local code systems, decision
//! rules (Library), KPIs (Measure) — is stored as ordinary FHIR knowledge resources, read and
//! written through the `Gate`. An item is *layered* when it carries a layer tag
//! ([`LAYER_SYSTEM`]): `model` → `domain` → `organisation` → `site`; the organisation and site
//! layers also carry the organisation they are for ([`SCOPE_SYSTEM`]: a trust, or a site).
//! The items of one piece of content share its canonical `url`.
//!
//! * **Effective content** ([`Engine::effective`], `GET [type]/[id]/$effective` and
//!   `GET [type]/$effective`): for an organisation and location, the overlay of the layers
//!   that apply — the model item, the domain's, the trust's, the site's — element by element,
//!   each element marked with the layer and the item it came from ([`EFFECTIVE_URL`]).
//! * **Localisation is bounded**: a lower layer may change only the elements its content type
//!   declares localisable ([`LOCALISABLE`]), narrowed further by an upper item's own list
//!   ([`LOCALISABLE_URL`] extension). A write of a lower-layer item that changes anything
//!   else is refused with an OperationOutcome naming the element ([`Gate::authorize_write`]
//!   calls [`Engine::check_content_write`]).
//! * **Who writes which layer**: the model layer only the server itself (shipped content,
//!   `tessera content import`); the domain layer whoever may write configuration; an
//!   organisation's or site's layer only its own trust.
//!
//! Untagged knowledge resources are not layered: they behave as before.

use crate::access::{Access, AccessKind};
use crate::search::Scope;
use crate::{Engine, FhirError};
use serde_json::{json, Map, Value};
use tessera_domain::Domain;
use tessera_fhir::IssueType;

/// The tag naming an item's layer.
pub const LAYER_SYSTEM: &str = "https://tessera.health/CodeSystem/content-layer";
/// The tag naming the organisation an organisation or site layer item is for.
pub const SCOPE_SYSTEM: &str = "https://tessera.health/CodeSystem/content-scope";
/// An extension on an item listing (as `valueString`s) the elements lower layers may change.
pub const LOCALISABLE_URL: &str = "https://tessera.health/StructureDefinition/localisable";
/// The extension on an effective item marking where each element came from.
pub const EFFECTIVE_URL: &str = "https://tessera.health/StructureDefinition/effective-element";

/// The layers, top to bottom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    Model,
    Domain,
    Organisation,
    Site,
}

impl Layer {
    pub fn code(self) -> &'static str {
        match self {
            Layer::Model => "model",
            Layer::Domain => "domain",
            Layer::Organisation => "organisation",
            Layer::Site => "site",
        }
    }

    pub fn parse(code: &str) -> Option<Layer> {
        match code {
            "model" => Some(Layer::Model),
            "domain" => Some(Layer::Domain),
            "organisation" | "organization" => Some(Layer::Organisation),
            "site" => Some(Layer::Site),
            _ => None,
        }
    }
}

/// The content types, and the elements a lower layer may change by default.
///
/// | type | localisable |
/// |---|---|
/// | ActivityDefinition | title, description, usage, status, priority, timingTiming, timingDuration, location, participant, specimenRequirement |
/// | PlanDefinition | title, description, usage, status |
/// | Questionnaire | title, description, purpose, status |
/// | ValueSet | title, description, status, compose |
/// | CodeSystem | title, description, status, concept |
/// | Library | title, description, usage, status |
/// | Measure | title, description, usage, status, guidance |
///
/// Never localisable, whatever a list says: `resourceType`, `id`, `meta`, `text`, `url`,
/// `version`, `name`, `identifier`, `extension`.
pub const LOCALISABLE: &[(&str, &[&str])] = &[
    (
        "ActivityDefinition",
        &["title", "description", "usage", "status", "priority", "timingTiming", "timingDuration", "location", "participant", "specimenRequirement"],
    ),
    ("PlanDefinition", &["title", "description", "usage", "status"]),
    ("Questionnaire", &["title", "description", "purpose", "status"]),
    ("ValueSet", &["title", "description", "status", "compose"]),
    ("CodeSystem", &["title", "description", "status", "concept"]),
    ("Library", &["title", "description", "usage", "status"]),
    ("Measure", &["title", "description", "usage", "status", "guidance"]),
];

/// Elements that identify or describe the item rather than its content: never overlaid.
const FIXED: &[&str] = &["resourceType", "id", "meta", "text", "url", "version", "name", "identifier", "extension"];

/// Whether `resource_type` is a content type.
pub fn is_content_type(resource_type: &str) -> bool {
    LOCALISABLE.iter().any(|(t, _)| *t == resource_type)
}

/// The layer of an item and the organisation it is for, if layered.
pub fn layer_of(resource: &Value) -> Option<(Layer, Option<String>)> {
    let tags = resource.pointer("/meta/tag")?.as_array()?;
    let code = |system: &str| tags.iter().find(|t| t.get("system").and_then(Value::as_str) == Some(system)).and_then(|t| t.get("code").and_then(Value::as_str));
    let layer = Layer::parse(code(LAYER_SYSTEM)?)?;
    Some((layer, code(SCOPE_SYSTEM).map(str::to_string)))
}

/// The elements of `resource_type` a layer below `upper` may change: the type's list,
/// narrowed by `upper`'s own [`LOCALISABLE_URL`] list when it has one.
pub fn localisable(resource_type: &str, upper: Option<&Value>) -> Vec<String> {
    let base: Vec<String> = LOCALISABLE.iter().find(|(t, _)| *t == resource_type).map(|(_, l)| l.iter().map(|s| s.to_string()).collect()).unwrap_or_default();
    let narrowed: Option<Vec<String>> = upper.and_then(|u| u.get("extension")).and_then(Value::as_array).and_then(|exts| {
        let list: Vec<String> = exts
            .iter()
            .filter(|e| e.get("url").and_then(Value::as_str) == Some(LOCALISABLE_URL))
            .filter_map(|e| e.get("valueString").and_then(Value::as_str).map(str::to_string))
            .collect();
        (!list.is_empty()).then_some(list)
    });
    match narrowed {
        Some(list) => base.into_iter().filter(|e| list.contains(e)).collect(),
        None => base,
    }
}

/// Which layered items apply to a context: the site (an organisation with a parent) and the
/// trust of the organisation and location asked about.
#[derive(Debug, Clone)]
pub struct Context {
    pub trust: Option<String>,
    pub site: Option<String>,
}

impl Context {
    pub fn of(domain: &Domain, organisation: Option<&str>, location: Option<&str>) -> Context {
        let org = location.and_then(|l| domain.location(l)).map(|l| l.organisation.clone()).or_else(|| organisation.map(str::to_string));
        let Some(org) = org else { return Context { trust: None, site: None } };
        let trust = domain.trust_of(&org).to_string();
        let site = (trust != org).then_some(org);
        Context { trust: Some(trust), site }
    }

    fn applies(&self, layer: Layer, scope: Option<&str>) -> bool {
        match layer {
            Layer::Model | Layer::Domain => true,
            Layer::Organisation => scope.is_some() && scope == self.trust.as_deref(),
            Layer::Site => scope.is_some() && scope == self.site.as_deref(),
        }
    }
}

/// The overlay of `items` (each with its layer; one per layer at most is used, the
/// applicable ones, top to bottom): the top item, with each lower layer's localisable
/// elements laid over it, and every element marked with its layer and source item.
pub fn overlay(resource_type: &str, mut items: Vec<(Layer, Value)>) -> Option<Value> {
    items.sort_by_key(|(l, _)| *l);
    let (top_layer, top) = items.first()?.clone();
    let Value::Object(mut out) = top.clone() else { return None };
    let reference = |v: &Value| format!("{resource_type}/{}", v.get("id").and_then(Value::as_str).unwrap_or(""));
    let mut marks: Vec<(String, Layer, String)> = out.keys().filter(|k| !FIXED.contains(&k.as_str())).map(|k| (k.clone(), top_layer, reference(&top))).collect();
    let mut allowed = localisable(resource_type, Some(&top));
    for (layer, item) in items.iter().skip(1) {
        let Some(map) = item.as_object() else { continue };
        for (k, v) in map {
            // An element is marked with the layer that set its value: one restated unchanged
            // keeps the mark of the layer above.
            if FIXED.contains(&k.as_str()) || !allowed.contains(k) || out.get(k) == Some(v) {
                continue;
            }
            out.insert(k.clone(), v.clone());
            marks.retain(|(e, _, _)| e != k);
            marks.push((k.clone(), *layer, reference(item)));
        }
        // A lower layer may narrow what the next one may change, never widen it.
        let narrower = localisable(resource_type, Some(item));
        allowed.retain(|e| narrower.contains(e));
    }
    marks.sort_by(|a, b| a.0.cmp(&b.0));
    let mut extensions: Vec<Value> = out.get("extension").and_then(Value::as_array).cloned().unwrap_or_default();
    extensions.retain(|e| e.get("url").and_then(Value::as_str) != Some(EFFECTIVE_URL));
    for (element, layer, source) in marks {
        extensions.push(json!({
            "url": EFFECTIVE_URL,
            "extension": [
                {"url": "element", "valueString": element},
                {"url": "layer", "valueCode": layer.code()},
                {"url": "source", "valueReference": {"reference": source}},
            ]
        }));
    }
    out.insert("extension".into(), Value::Array(extensions));
    Some(Value::Object(out))
}

/// The elements a lower-layer item changes that are not localisable (with the list that
/// is), compared with the effective item of the layers above it.
pub fn forbidden_changes(resource_type: &str, upper_effective: &Value, allowed: &[String], item: &Value) -> Vec<String> {
    let Some(map) = item.as_object() else { return Vec::new() };
    map.iter()
        .filter(|(k, _)| !FIXED.contains(&k.as_str()) && !allowed.contains(k))
        .filter(|(k, v)| upper_effective.get(k.as_str()) != Some(v))
        .map(|(k, _)| format!("{resource_type}.{k}"))
        .collect()
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Engine {
    /// The layered items sharing the canonical `url` of `resource_type` that `access` may see
    /// (through the `Gate`).
    async fn layered_items(&self, access: &Access, resource_type: &str, url: &str) -> Result<Vec<(Layer, Option<String>, Value)>, FhirError> {
        let bundle = self.search(access, Scope::Type(Some(resource_type)), &format!("url={}&_count=100", enc(url)), false).await?;
        let value: Value = serde_json::from_slice(bundle.as_bytes()).map_err(|e| FhirError::internal(e.to_string()))?;
        let mut out = Vec::new();
        for e in value.get("entry").and_then(Value::as_array).into_iter().flatten() {
            let r = &e["resource"];
            if r.get("resourceType").and_then(Value::as_str) != Some(resource_type) {
                continue;
            }
            if let Some((layer, scope)) = layer_of(r) {
                out.push((layer, scope, r.clone()));
            }
        }
        Ok(out)
    }

    /// `GET [type]/[id]/$effective?organization=…&location=…`: the item as it applies to
    /// that organisation and location (default: the caller's), every element marked with the
    /// layer it came from.
    pub async fn effective(&self, access: &Access, resource_type: &str, id: &str, organisation: Option<&str>, location: Option<&str>) -> Result<Value, FhirError> {
        if !is_content_type(resource_type) {
            return Err(FhirError::new(404, IssueType::NotSupported, format!("$effective applies to content types ({}), not {resource_type}", content_types())));
        }
        let item = self.read(access, resource_type, id).await?;
        let item: Value = serde_json::from_slice(item.json()).map_err(|e| FhirError::internal(e.to_string()))?;
        let Some(url) = item.get("url").and_then(Value::as_str) else {
            return Ok(item);
        };
        if layer_of(&item).is_none() {
            return Ok(item);
        }
        let domain = self.domain();
        let context = self.effective_context(access, &domain, organisation, location)?;
        let items = self.layered_items(access, resource_type, url).await?;
        let applicable: Vec<(Layer, Value)> = items.into_iter().filter(|(l, s, _)| context.applies(*l, s.as_deref())).map(|(l, _, v)| (l, v)).collect();
        overlay(resource_type, applicable).ok_or_else(|| FhirError::not_found(resource_type, id))
    }

    /// `GET [type]/$effective?organization=…&location=…[&url=…]`: the effective item of every
    /// layered piece of content of the type (or of one canonical `url`), as a searchset.
    pub async fn effective_all(&self, access: &Access, resource_type: &str, query: &str) -> Result<crate::bundle::Bundle, FhirError> {
        if !is_content_type(resource_type) {
            return Err(FhirError::new(404, IssueType::NotSupported, format!("$effective applies to content types ({}), not {resource_type}", content_types())));
        }
        let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        let get = |k: &str| params.iter().find(|(n, _)| n == k || (k == "organization" && n == "organisation")).map(|(_, v)| v.clone());
        let domain = self.domain();
        let context = self.effective_context(access, &domain, get("organization").as_deref(), get("location").as_deref())?;
        let filter = match get("url") {
            Some(u) => format!("url={}&", enc(&u)),
            None => String::new(),
        };
        let bundle = self.search(access, Scope::Type(Some(resource_type)), &format!("{filter}_tag={}&_count=1000", enc(&format!("{LAYER_SYSTEM}|"))), false).await?;
        let value: Value = serde_json::from_slice(bundle.as_bytes()).map_err(|e| FhirError::internal(e.to_string()))?;
        let mut by_url: std::collections::BTreeMap<String, Vec<(Layer, Value)>> = std::collections::BTreeMap::new();
        for e in value.get("entry").and_then(Value::as_array).into_iter().flatten() {
            let r = &e["resource"];
            let (Some(url), Some((layer, scope))) = (r.get("url").and_then(Value::as_str), layer_of(r)) else { continue };
            if context.applies(layer, scope.as_deref()) {
                by_url.entry(url.to_string()).or_default().push((layer, r.clone()));
            }
        }
        let mut writer = crate::bundle::BundleWriter::new("searchset", Some(by_url.len() as u64), &[]);
        for (_, items) in by_url {
            if let Some(effective) = overlay(resource_type, items) {
                writer.generated(None, &effective, &[("search", json!({"mode": "match"}))]);
            }
        }
        Ok(writer.finish())
    }

    fn effective_context(&self, access: &Access, domain: &Domain, organisation: Option<&str>, location: Option<&str>) -> Result<Context, FhirError> {
        if let Some(o) = organisation {
            if domain.organisation(o).is_none() {
                return Err(FhirError::bad_request(format!("organization '{o}' is not an organisation of the domain")).at("organization"));
            }
        }
        if let Some(l) = location {
            if domain.location(l).is_none() {
                return Err(FhirError::bad_request(format!("location '{l}' is not a location of the domain")).at("location"));
            }
        }
        let (org, loc) = match (organisation, location) {
            (None, None) => (Some(access.organisation.as_str()).filter(|o| !o.is_empty()), access.location.as_deref()),
            given => given,
        };
        Ok(Context::of(domain, org, loc))
    }

    /// The checks of writing a layered content item (called by the `Gate` on every write
    /// path): who may write the layer, the organisation it is for, and — for an item below
    /// the top of its content — that it changes only what the layers above let it localise.
    pub(crate) async fn check_content_write(&self, access: &Access, resource_type: &str, id: &str, new: &Value) -> Result<(), FhirError> {
        let Some((layer, scope)) = layer_of(new) else { return Ok(()) };
        let domain = self.domain();
        let at = |e: FhirError| e.at(format!("{resource_type}.meta.tag"));
        let server = access.is_domain_bootstrap() || (access.kind == AccessKind::System && access.subject == crate::SYSTEM_ACCOUNT);
        match layer {
            Layer::Model if !server => {
                return Err(at(FhirError::new(403, IssueType::Forbidden, "the model layer is written only by the server itself (shipped content, `tessera content import`)")));
            }
            Layer::Model | Layer::Domain => {
                if scope.is_some() {
                    return Err(at(FhirError::bad_request(format!("a {} layer item is for the whole domain: it has no content-scope tag", layer.code()))));
                }
            }
            Layer::Organisation | Layer::Site => {
                let Some(scope) = scope.as_deref() else {
                    return Err(at(FhirError::bad_request(format!("an {} layer item names the organisation it is for (tag {SCOPE_SYSTEM})", layer.code()))));
                };
                let Some(org) = domain.organisation(scope) else {
                    return Err(at(FhirError::bad_request(format!("content-scope '{scope}' is not an organisation of the domain"))));
                };
                let is_site = org.parent.is_some();
                if (layer == Layer::Site) != is_site {
                    let want = if layer == Layer::Site { "a site (an organisation within a trust)" } else { "a trust" };
                    return Err(at(FhirError::bad_request(format!("the {} layer is for {want}; '{scope}' is not one", layer.code()))));
                }
                if !server && domain.trust_of(scope) != domain.trust_of(&access.organisation) {
                    return Err(at(FhirError::new(
                        403,
                        IssueType::Forbidden,
                        format!("only {}'s own people localise its content; you act for {}", domain.trust_of(scope), access.organisation),
                    )));
                }
            }
        }
        // Localisation: what the layers above say, for this item's scope.
        let Some(url) = new.get("url").and_then(Value::as_str) else { return Ok(()) };
        if layer == Layer::Model {
            return Ok(());
        }
        let context = match layer {
            Layer::Site => Context::of(&domain, scope.as_deref(), None),
            Layer::Organisation => Context { trust: scope.clone(), site: None },
            _ => Context { trust: None, site: None },
        };
        let above: Vec<(Layer, Value)> = self
            .layered_items(access, resource_type, url)
            .await?
            .into_iter()
            .filter(|(l, s, v)| *l < layer && context.applies(*l, s.as_deref()) && v.get("id").and_then(Value::as_str) != Some(id))
            .map(|(l, _, v)| (l, v))
            .collect();
        if above.is_empty() {
            return Ok(()); // new content of this layer, localising nothing
        }
        // What the layers above allow this one to change.
        let mut sorted = above.clone();
        sorted.sort_by_key(|(l, _)| *l);
        let mut allowed = localisable(resource_type, sorted.first().map(|(_, v)| v));
        for (_, v) in sorted.iter().skip(1) {
            let narrower = localisable(resource_type, Some(v));
            allowed.retain(|e| narrower.contains(e));
        }
        let upper = overlay(resource_type, above).unwrap_or(Value::Null);
        let bad = forbidden_changes(resource_type, &upper, &allowed, new);
        if let Some(first) = bad.first() {
            let list = if allowed.is_empty() { "nothing".to_string() } else { allowed.join(", ") };
            return Err(FhirError::new(
                422,
                IssueType::Processing,
                format!("the {} layer may not change {} (the layers above let it localise: {list}); change it at the layer that owns it, through a change request", layer.code(), bad.join(", ")),
            )
            .at(first.clone()));
        }
        Ok(())
    }
}

/// The content types, for messages.
pub fn content_types() -> String {
    LOCALISABLE.iter().map(|(t, _)| *t).collect::<Vec<_>>().join(", ")
}

/// The layer tags of a new item (for callers building content).
pub fn layer_tags(layer: Layer, scope: Option<&str>) -> Vec<Value> {
    let mut tags = vec![json!({"system": LAYER_SYSTEM, "code": layer.code()})];
    if let Some(s) = scope {
        tags.push(json!({"system": SCOPE_SYSTEM, "code": s}));
    }
    tags
}

/// Sets `resource`'s layer tags (replacing any).
pub fn set_layer(resource: &mut Map<String, Value>, layer: Layer, scope: Option<&str>) {
    let meta = resource.entry("meta").or_insert_with(|| json!({}));
    let Some(meta) = meta.as_object_mut() else { return };
    let tags = meta.entry("tag").or_insert_with(|| json!([]));
    if let Some(tags) = tags.as_array_mut() {
        tags.retain(|t| !matches!(t.get("system").and_then(Value::as_str), Some(LAYER_SYSTEM) | Some(SCOPE_SYSTEM)));
        tags.extend(layer_tags(layer, scope));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, layer: Layer, scope: Option<&str>, fields: Value) -> Value {
        let mut v = json!({"resourceType": "ActivityDefinition", "id": id, "url": "https://x/ad/fbc", "status": "active", "meta": {"tag": layer_tags(layer, scope)}});
        for (k, f) in fields.as_object().unwrap() {
            v[k] = f.clone();
        }
        v
    }

    #[test]
    fn lower_layers_overlay_only_what_is_localisable() {
        let model = item("m", Layer::Model, None, json!({"title": "Full blood count", "code": {"text": "FBC"}, "description": "model"}));
        let site = item("s", Layer::Site, Some("site-a"), json!({"title": "FBC (purple top)", "code": {"text": "changed"}}));
        let out = overlay("ActivityDefinition", vec![(Layer::Site, site.clone()), (Layer::Model, model.clone())]).unwrap();
        assert_eq!(out["title"], "FBC (purple top)");
        assert_eq!(out["code"]["text"], "FBC", "code is not localisable: the model's stands");
        let marks: Vec<(String, String)> = out["extension"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["extension"][0]["valueString"].as_str().unwrap().to_string(), e["extension"][1]["valueCode"].as_str().unwrap().to_string()))
            .collect();
        assert!(marks.contains(&("title".into(), "site".into())));
        assert!(marks.contains(&("code".into(), "model".into())));
        let bad = forbidden_changes("ActivityDefinition", &model, &localisable("ActivityDefinition", Some(&model)), &site);
        assert_eq!(bad, ["ActivityDefinition.code"]);
    }

    #[test]
    fn an_upper_item_can_narrow_what_is_localisable() {
        let mut model = item("m", Layer::Model, None, json!({"title": "t"}));
        model["extension"] = json!([{"url": LOCALISABLE_URL, "valueString": "description"}]);
        assert_eq!(localisable("ActivityDefinition", Some(&model)), ["description"]);
        let org = item("o", Layer::Organisation, Some("rx1"), json!({"title": "mine"}));
        let out = overlay("ActivityDefinition", vec![(Layer::Model, model), (Layer::Organisation, org)]).unwrap();
        assert_eq!(out["title"], "t");
    }
}
