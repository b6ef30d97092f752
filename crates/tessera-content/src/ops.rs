//! The operator's content commands over a domain's database: export a layer as a signed
//! package, import (verify, then load) one, and the impact of a package's changes.
//! Everything is read and written through the engine as the domain's bootstrap account
//! (audited), so the engine's layering rules apply to an import like to any write.

use crate::diff::{self, Change, ItemKey};
use crate::package::{self, ContentKey, Manifest, Package};
use anyhow::Context;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tessera_engine::content::{Layer, LAYER_SYSTEM, LOCALISABLE, SCOPE_SYSTEM};
use tessera_engine::search::Scope;
use tessera_engine::{Access, Engine};

const KEY: &str = "content.signing-key";

/// The domain's content signing key (made on first use and kept in the database).
pub async fn domain_key(engine: &Engine) -> anyhow::Result<ContentKey> {
    if let Some(hex) = engine.setting(KEY).await? {
        return ContentKey::from_hex(&hex).context("the stored content signing key is damaged");
    }
    let key = ContentKey::generate();
    engine.set_setting(KEY, &key.to_hex()).await?;
    Ok(key)
}

fn enc(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The items of one layer (and organisation), as stored.
pub async fn layer_items(engine: &Engine, layer: Layer, organisation: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let access = Access::bootstrap();
    let mut out = Vec::new();
    for (ty, _) in LOCALISABLE {
        let mut query = format!("_tag={}&_count=1000", enc(&format!("{LAYER_SYSTEM}|{}", layer.code())));
        if let Some(o) = organisation {
            query.push_str(&format!("&_tag={}", enc(&format!("{SCOPE_SYSTEM}|{o}"))));
        }
        let bundle = engine.search(&access, Scope::Type(Some(ty)), &query, false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let v: Value = serde_json::from_slice(bundle.as_bytes())?;
        for e in v.get("entry").and_then(Value::as_array).into_iter().flatten() {
            let mut r = e["resource"].clone();
            if r.get("resourceType").and_then(Value::as_str) != Some(ty) {
                continue;
            }
            // What the store stamps (version, time, owner) is not content.
            if let Some(meta) = r.get_mut("meta").and_then(Value::as_object_mut) {
                meta.remove("versionId");
                meta.remove("lastUpdated");
                if let Some(tags) = meta.get_mut("tag").and_then(Value::as_array_mut) {
                    tags.retain(|t| matches!(t["system"].as_str(), Some(LAYER_SYSTEM) | Some(SCOPE_SYSTEM)));
                }
            }
            out.push(r);
        }
    }
    out.sort_by(|a, b| (a["resourceType"].as_str(), a["id"].as_str()).cmp(&(b["resourceType"].as_str(), b["id"].as_str())));
    Ok(out)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Exports a layer (of one organisation) as a signed package.
pub async fn export(engine: &Engine, layer: Layer, organisation: Option<&str>, version: Option<&str>) -> anyhow::Result<(Manifest, Vec<u8>)> {
    if matches!(layer, Layer::Organisation | Layer::Site) && organisation.is_none() {
        anyhow::bail!("an {} layer package is of one organisation: give --org", layer.code());
    }
    let items = layer_items(engine, layer, organisation).await?;
    let content = json!({"resourceType": "Bundle", "type": "collection", "entry": items.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()});
    let created = now_rfc3339();
    let manifest = Manifest {
        format: 1,
        version: version.map(str::to_string).unwrap_or_else(|| created.clone()),
        layer: layer.code().to_string(),
        organisation: organisation.map(str::to_string),
        domain: engine.domain().name.clone(),
        created,
        items: items.len(),
        sha256: String::new(),
        public_key: String::new(),
    };
    let key = domain_key(engine).await?;
    let bytes = package::write(&key, manifest, &content);
    let manifest = Package::parse(&bytes)?.manifest;
    Ok((manifest, bytes))
}

/// What an import did.
#[derive(Debug, Clone)]
pub struct ImportReport {
    pub manifest: Manifest,
    pub items: usize,
    pub changes: Vec<Change>,
}

/// Verifies a package (signed by the domain's key or one of `trusted`) and loads its items
/// in one transaction (all or nothing; the engine's layering rules apply).
pub async fn import(engine: &Engine, bytes: &[u8], trusted: &[String]) -> anyhow::Result<ImportReport> {
    let package = Package::parse(bytes)?;
    let mut keys = trusted.to_vec();
    keys.push(domain_key(engine).await?.public_hex());
    let content = package.verify(&keys)?;
    let layer = Layer::parse(&package.manifest.layer).with_context(|| format!("unknown layer '{}'", package.manifest.layer))?;
    let before = current(engine, layer, package.manifest.organisation.as_deref()).await?;
    let mut entries = Vec::new();
    for (i, e) in content.get("entry").and_then(Value::as_array).into_iter().flatten().enumerate() {
        let r = &e["resource"];
        let ty = r["resourceType"].as_str().with_context(|| format!("entry {i} has no resourceType"))?;
        let id = r["id"].as_str().with_context(|| format!("entry {i} ({ty}) has no id"))?;
        match tessera_engine::content::layer_of(r) {
            Some((l, _)) if l == layer => {}
            _ => anyhow::bail!("entry {i} ({ty}/{id}) is not of the package's layer ({})", layer.code()),
        }
        entries.push(json!({"resource": r, "request": {"method": "PUT", "url": format!("{ty}/{id}")}}));
    }
    let n = entries.len();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    engine.bundle(&Access::bootstrap(), tx, None).await.map_err(|e| anyhow::anyhow!("the package was verified but cannot be loaded: {e}"))?;
    let changes = diff::diff(&before, &content);
    Ok(ImportReport { manifest: package.manifest, items: n, changes })
}

/// The stored items of a layer, as a Bundle (for diffs).
pub async fn current(engine: &Engine, layer: Layer, organisation: Option<&str>) -> anyhow::Result<Value> {
    let items = layer_items(engine, layer, organisation).await?;
    Ok(json!({"resourceType": "Bundle", "type": "collection", "entry": items.iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()}))
}

/// Who and what a change reaches.
#[derive(Debug, Clone, Default)]
pub struct Impact {
    /// Organisations (trusts and sites) whose effective content changes.
    pub organisations: BTreeSet<String>,
    /// Users working at those organisations.
    pub users: BTreeSet<String>,
    /// Active records referring to the changed content: (what, count).
    pub references: Vec<(String, u64)>,
}

impl std::fmt::Display for Impact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "organisations and sites whose content changes ({}): {}", self.organisations.len(), self.organisations.iter().cloned().collect::<Vec<_>>().join(", "))?;
        writeln!(f, "users who see the change ({}): {}", self.users.len(), self.users.iter().cloned().collect::<Vec<_>>().join(", "))?;
        if self.references.is_empty() {
            writeln!(f, "active orders, plans and questionnaire responses referring to it: none")?;
        }
        for (what, n) in &self.references {
            writeln!(f, "  {n} {what}")?;
        }
        Ok(())
    }
}

/// The impact of `changes`: the organisations whose effective content they change (all, for
/// the model and domain layers; the trust and its sites; the site), their users, and the
/// active orders, care plans and questionnaire responses that refer to the changed content.
pub async fn impact(engine: &Engine, changes: &[Change]) -> anyhow::Result<Impact> {
    let domain = engine.domain();
    let mut out = Impact::default();
    let touched: BTreeSet<&ItemKey> = changes
        .iter()
        .map(|c| match c {
            Change::Added(k) | Change::Removed(k) => k,
            Change::Changed { item, .. } => item,
        })
        .collect();
    for k in &touched {
        let orgs: Vec<String> = match k.layer.as_str() {
            "organisation" => domain.organisations.iter().filter(|o| Some(domain.trust_of(&o.id)) == k.scope.as_deref()).map(|o| o.id.clone()).collect(),
            "site" => k.scope.iter().cloned().collect(),
            _ => domain.organisations.iter().filter(|o| o.id != tessera_domain::BOOTSTRAP_ORGANISATION).map(|o| o.id.clone()).collect(),
        };
        for o in &orgs {
            for u in domain.users.iter().filter(|u| u.active && u.roles.iter().any(|a| &a.organisation == o)) {
                out.users.insert(u.id.clone());
            }
        }
        out.organisations.extend(orgs);
        let searches: &[(&str, &str, &str)] = match k.resource_type.as_str() {
            "ActivityDefinition" => &[("ServiceRequest", "instantiates-canonical", "status=active,on-hold,draft")],
            "PlanDefinition" => &[("CarePlan", "instantiates-canonical", "status=active,on-hold,draft"), ("RequestGroup", "instantiates-canonical", "status=active,on-hold,draft")],
            "Questionnaire" => &[("QuestionnaireResponse", "questionnaire", "status=in-progress")],
            "Measure" => &[("MeasureReport", "measure", "status=pending")],
            _ => &[],
        };
        for (ty, param, status) in searches {
            let query = format!("{param}={}&{status}&_summary=count", enc(&k.url));
            let bundle = engine.search(&Access::bootstrap(), Scope::Type(Some(ty)), &query, false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let v: Value = serde_json::from_slice(bundle.as_bytes())?;
            let n = v.get("total").and_then(Value::as_u64).unwrap_or(0);
            if n > 0 {
                out.references.push((format!("active {ty} referring to {}", k.url), n));
            }
        }
    }
    Ok(out)
}
