//! Domain upgrades: a new version of the model content (the one this build of Tessera ships,
//! or a signed package) applied domain-wide. A dry run lists every element that changes and
//! who it reaches; the real run refuses during a freeze, applies the model layer in one
//! transaction, and is audited. The store's own schema is migrated when a database is opened
//! (and a search index rebuilt with `tessera reindex` when a release says so).

use crate::diff::{self, Change};
use crate::ops;
use anyhow::bail;
use serde_json::{json, Value};
use tessera_engine::content::Layer;
use tessera_engine::{Access, Engine};

/// What an upgrade changes (or changed).
#[derive(Debug, Clone)]
pub struct UpgradeReport {
    pub applied: bool,
    pub changes: Vec<Change>,
    pub impact: ops::Impact,
}

impl std::fmt::Display for UpgradeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in &self.changes {
            writeln!(f, "{c}")?;
        }
        write!(f, "{}", self.impact)?;
        writeln!(
            f,
            "{} change(s) to the model content: {}",
            self.changes.len(),
            if self.applied { "applied" } else if self.changes.is_empty() { "nothing to do" } else { "dry run, nothing changed" }
        )
    }
}

/// Upgrades the model layer to `model` (a Bundle of model items). `dry_run`: report only.
pub async fn model_content(engine: &Engine, model: &Value, dry_run: bool) -> anyhow::Result<UpgradeReport> {
    let before = ops::current(engine, Layer::Model, None).await?;
    let changes = diff::diff(&before, model);
    let impact = ops::impact(engine, &changes).await?;
    if dry_run || changes.is_empty() {
        return Ok(UpgradeReport { applied: false, changes, impact });
    }
    let domain = engine.domain();
    if let Some(w) = tessera_engine::governance::freeze_at(&domain, time::OffsetDateTime::now_utc()) {
        engine.record_operation(&Access::bootstrap(), "$upgrade", &format!("refused: change freeze ({})", w.reason)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        bail!("production changes are frozen until {} ({}): the upgrade waits", w.end, w.reason);
    }
    let mut entries = Vec::new();
    for e in model["entry"].as_array().into_iter().flatten() {
        let r = &e["resource"];
        entries.push(json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""))}}));
    }
    let access = Access { governed_change: Some("upgrade".into()), ..Access::bootstrap() };
    engine
        .bundle(&access, json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}), None)
        .await
        .map_err(|e| anyhow::anyhow!("the upgrade cannot be applied: {e}"))?;
    engine
        .record_operation(&Access::bootstrap(), "$upgrade", &format!("model content upgraded: {} change(s)", changes.len()))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(UpgradeReport { applied: true, changes, impact })
}
