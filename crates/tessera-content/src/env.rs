//! Non-production environments of a domain: build, test, train and cert, each its own
//! database (an SQLite directory or a PostgreSQL database) with the production domain's
//! configuration and content and **no production patient**.
//!
//! * [`create`] copies the configuration (without portal accounts: they name real patients'
//!   NHS numbers; governance not enforced: changes are made freely there, then promoted) and
//!   every layered content item, and nothing of any record: no Patient, no clinical or
//!   administrative resource, no audit trail. Synthetic patients (Synthea bundles, or
//!   generated) are loaded separately (`tessera env create … --synthetic DIR`).
//! * [`drift`] lists the configuration and content differences between two environments.
//! * [`promote`] moves *approved* change requests (accepted or completed) one step along
//!   build → test → cert → production, as new change requests there that go through that
//!   environment's own sign-off; anything else is refused.
//! * [`refresh`] brings an environment's content (typically train's) back to production's.
//!
//! Each environment is marked (`content.environment` setting) with its kind; an unmarked
//! database is production.

use crate::ops;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use tessera_engine::content::Layer;
use tessera_engine::content_diff;
use tessera_engine::governance::GOVERNANCE_SYSTEM;
use tessera_engine::search::Scope;
use tessera_engine::{Access, Engine};

const ENV_KEY: &str = "content.environment";
const PROMOTED_PREFIX: &str = "content.promoted:";

/// The kinds of environment, in promotion order (train is refreshed from production).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EnvKind {
    Build,
    Test,
    Cert,
    Production,
    Train,
}

impl EnvKind {
    pub fn parse(s: &str) -> Option<EnvKind> {
        match s {
            "build" => Some(EnvKind::Build),
            "test" => Some(EnvKind::Test),
            "cert" => Some(EnvKind::Cert),
            "train" => Some(EnvKind::Train),
            "production" | "prod" => Some(EnvKind::Production),
            _ => None,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            EnvKind::Build => "build",
            EnvKind::Test => "test",
            EnvKind::Cert => "cert",
            EnvKind::Train => "train",
            EnvKind::Production => "production",
        }
    }

    /// The environment a change moves to from this one.
    pub fn next(self) -> Option<EnvKind> {
        match self {
            EnvKind::Build => Some(EnvKind::Test),
            EnvKind::Test => Some(EnvKind::Cert),
            EnvKind::Cert => Some(EnvKind::Production),
            EnvKind::Production | EnvKind::Train => None,
        }
    }
}

/// Marks a database as production (a domain of its own).
pub async fn mark_production(engine: &Engine) -> anyhow::Result<()> {
    engine.set_setting(ENV_KEY, EnvKind::Production.code()).await?;
    Ok(())
}

/// The kind of the environment a database holds (unmarked: production).
pub async fn kind_of(engine: &Engine) -> anyhow::Result<EnvKind> {
    Ok(match engine.setting(ENV_KEY).await? {
        Some(k) => EnvKind::parse(&k).with_context(|| format!("unknown environment '{k}'"))?,
        None => EnvKind::Production,
    })
}

async fn count(engine: &Engine, resource_type: &str) -> anyhow::Result<u64> {
    let b = engine.search(&Access::bootstrap(), Scope::Type(Some(resource_type)), "_summary=count", false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let v: Value = serde_json::from_slice(b.as_bytes())?;
    Ok(v["total"].as_u64().unwrap_or(0))
}

/// What [`create`] made.
#[derive(Debug, Clone)]
pub struct EnvReport {
    pub kind: EnvKind,
    pub organisations: usize,
    pub users: usize,
    pub content_items: usize,
}

impl std::fmt::Display for EnvReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} environment created: {} organisations, {} users, {} content items; no patients (load synthetic ones with --synthetic)",
            self.kind.code(),
            self.organisations,
            self.users,
            self.content_items
        )
    }
}

/// All layered content items of a database, every layer.
async fn all_items(engine: &Engine) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for layer in [Layer::Model, Layer::Domain, Layer::Organisation, Layer::Site] {
        out.extend(ops::layer_items(engine, layer, None).await?);
    }
    Ok(out)
}

async fn write_items(engine: &Engine, items: &[Value]) -> anyhow::Result<()> {
    if items.is_empty() {
        return Ok(());
    }
    let entries: Vec<Value> = items
        .iter()
        .map(|r| json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""))}}))
        .collect();
    engine
        .bundle(&Access::bootstrap(), json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}), None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot load the content: {e}"))?;
    Ok(())
}

/// Creates a non-production environment in `target` (a new, empty database) from
/// `production`: configuration and content, no patients.
pub async fn create(production: &Engine, target: &Engine, kind: EnvKind) -> anyhow::Result<EnvReport> {
    if kind == EnvKind::Production {
        bail!("an environment is build, test, train or cert; production is the database itself");
    }
    if kind_of(production).await? != EnvKind::Production {
        bail!("environments are created from production (the source is a {} environment)", kind_of(production).await?.code());
    }
    if target.setting(ENV_KEY).await?.is_some() || count(target, "Patient").await? > 0 || !all_items(target).await?.is_empty() {
        bail!("the target database is not empty: an environment is created in a new database");
    }
    let mut domain = (*production.domain()).clone();
    // No real patient's identity: portal accounts name NHS numbers.
    domain.portal_accounts.clear();
    // Changes are made freely here, then promoted through sign-off.
    domain.governance.enforced = false;
    domain.governance.freeze.clear();
    let (organisations, users) = (domain.organisations.len(), domain.users.len());
    target.apply_domain(&Access::bootstrap(), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let items = all_items(production).await?;
    write_items(target, &items).await?;
    target.set_setting(ENV_KEY, kind.code()).await?;
    Ok(EnvReport { kind, organisations, users, content_items: items.len() })
}

/// Brings `target`'s content back to `production`'s (train's refresh): every production
/// item written, every item production does not have deleted. Returns (written, deleted).
pub async fn refresh(production: &Engine, target: &Engine) -> anyhow::Result<(usize, usize)> {
    if kind_of(target).await? == EnvKind::Production {
        bail!("production is not refreshed from anything");
    }
    let items = all_items(production).await?;
    let keep: std::collections::HashSet<(String, String)> = items.iter().map(|r| (r["resourceType"].as_str().unwrap_or("").to_string(), r["id"].as_str().unwrap_or("").to_string())).collect();
    write_items(target, &items).await?;
    let mut deleted = 0;
    for r in all_items(target).await? {
        let key = (r["resourceType"].as_str().unwrap_or("").to_string(), r["id"].as_str().unwrap_or("").to_string());
        if !keep.contains(&key) {
            target.delete(&Access::bootstrap(), &key.0, &key.1, None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            deleted += 1;
        }
    }
    Ok((items.len(), deleted))
}

/// Configuration and content differences from `a` to `b`, one line each.
pub async fn drift(a: &Engine, b: &Engine) -> anyhow::Result<Vec<String>> {
    // Configuration: the domains as documents (without secrets).
    let mut out = tessera_engine::governance::configuration_diff(&a.domain(), &b.domain());
    let bundle = |items: Vec<Value>| json!({"resourceType": "Bundle", "entry": items.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()});
    for c in content_diff::diff(&bundle(all_items(a).await?), &bundle(all_items(b).await?)) {
        out.push(format!("content {c}"));
    }
    Ok(out)
}

/// The change requests of a database, with their status.
async fn change_requests(engine: &Engine) -> anyhow::Result<Vec<Value>> {
    let q = format!("code={}&_count=1000", percent_encoding::utf8_percent_encode(&format!("{GOVERNANCE_SYSTEM}|change-request"), percent_encoding::NON_ALPHANUMERIC));
    let b = engine.search(&Access::bootstrap(), Scope::Type(Some("Task")), &q, false).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let v: Value = serde_json::from_slice(b.as_bytes())?;
    Ok(v["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()).collect())
}

/// Promotes approved change requests from `from` to the next environment `to`: each becomes
/// a new change request there (status `requested`: it goes through that environment's own
/// sign-off), once. `only`: just these requests (an unapproved one is refused). Returns
/// (source id, new id) pairs.
pub async fn promote(from: &Engine, to: &Engine, only: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    let (a, b) = (kind_of(from).await?, kind_of(to).await?);
    if a.next() != Some(b) {
        bail!(
            "changes move build → test → cert → production one step at a time; {} does not promote to {}",
            a.code(),
            b.code()
        );
    }
    let requests = change_requests(from).await?;
    for id in only {
        match requests.iter().find(|t| t["id"].as_str() == Some(id.as_str())) {
            None => bail!("{id} is not a change request of the {} environment", a.code()),
            Some(t) if !matches!(t["status"].as_str(), Some("accepted" | "completed")) => {
                bail!("change request {id} is {}: only approved changes are promoted", t["status"].as_str().unwrap_or("?"))
            }
            Some(_) => {}
        }
    }
    let mut out = Vec::new();
    for t in requests.iter().filter(|t| matches!(t["status"].as_str(), Some("accepted" | "completed"))) {
        let id = t["id"].as_str().unwrap_or("").to_string();
        if !only.is_empty() && !only.contains(&id) {
            continue;
        }
        let marker = format!("{PROMOTED_PREFIX}{}:{id}", a.code());
        if to.setting(&marker).await?.is_some() {
            continue;
        }
        let input = |kind: &str| t["input"].as_array().into_iter().flatten().find(|i| i["type"]["text"] == kind).cloned();
        let mut params = vec![
            json!({"name": "title", "valueString": format!("{} (promoted from {} {id})", t["description"].as_str().unwrap_or("change"), a.code())}),
            json!({"name": "reason", "valueString": t["reasonCode"]["text"].as_str().unwrap_or("")}),
        ];
        if let Some(c) = input("content") {
            use base64::Engine as _;
            let data = c["valueAttachment"]["data"].as_str().unwrap_or("");
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).context("a change request's content is not base64")?;
            let bundle: Value = serde_json::from_slice(&bytes)?;
            params.push(json!({"name": "content", "resource": bundle}));
        } else if let Some(c) = input("configuration") {
            params.push(json!({"name": "configuration", "valueString": c["valueString"]}));
        } else {
            continue;
        }
        if input("emergency").is_some_and(|e| e["valueBoolean"] == true) {
            params.push(json!({"name": "emergency", "valueBoolean": true}));
        }
        let task = to
            .propose_change(&Access::bootstrap(), json!({"resourceType": "Parameters", "parameter": params}))
            .await
            .map_err(|e| anyhow::anyhow!("change request {id} cannot be proposed in {}: {e}", b.code()))?;
        let new_id = task["id"].as_str().unwrap_or("").to_string();
        to.set_setting(&marker, &new_id).await?;
        out.push((id, new_id));
    }
    Ok(out)
}
