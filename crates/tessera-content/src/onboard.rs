//! The five ways a new organisation comes to a shared domain, as operations over databases
//! (`tessera onboard …`), each recorded in the audit trail and answered with a report:
//!
//! 1. [`new_domain_from_model`] — a new domain from the model content Tessera ships.
//! 2. [`new_domain_from_copy`] — a new domain from a copy of an existing domain's content and
//!    configuration (no patients, no portal accounts).
//! 3. [`join`] — a new organisation joins an existing domain as-is: it inherits the domain's
//!    content and brings its own sites, wards, users, sharing dials and interfaces (a domain
//!    file fragment that may only *add*); under enforced governance this is a change request
//!    every trust signs off, otherwise it is applied.
//! 4. A new organisation joins a *model client domain* as-is: (1) then (3).
//! 5. [`optimise`] — joint optimisation: changes that affect both the joiner and the existing
//!    organisations (domain-layer content, shared configuration), proposed as change
//!    requests that need the sign-off of each of them.
//!
//! The joiner's legacy data then comes with `tessera migrate` (docs/migration.md).

use crate::env;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use tessera_domain::Domain;
use tessera_engine::{Access, Engine};

/// What an onboarding did.
#[derive(Debug, Clone, Default)]
pub struct OnboardReport {
    pub option: u8,
    pub lines: Vec<String>,
    /// Change requests proposed (ids), when governance is enforced.
    pub change_requests: Vec<String>,
}

impl std::fmt::Display for OnboardReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "onboarding option {}:", self.option)?;
        for l in &self.lines {
            writeln!(f, "  {l}")?;
        }
        for c in &self.change_requests {
            writeln!(f, "  change request Task/{c} proposed: it applies once every affected trust has signed it off")?;
        }
        Ok(())
    }
}

async fn record(engine: &Engine, report: &OnboardReport) -> anyhow::Result<()> {
    let note = format!("onboarding option {}: {}", report.option, report.lines.join("; "));
    engine.record_operation(&Access::bootstrap(), "$onboard", &note).await.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn is_empty(engine: &Engine) -> anyhow::Result<bool> {
    let stats = engine.stats().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(engine.domain().organisations.len() <= 1 && stats.current_resources <= 16)
}

/// Option 1: a new domain, from the model content, in an empty database; `domain_file`
/// (optional) declares its organisations and people.
pub async fn new_domain_from_model(target: &Engine, domain_file: Option<&str>) -> anyhow::Result<OnboardReport> {
    if !is_empty(target).await? {
        bail!("a new domain is made in an empty database");
    }
    let mut report = OnboardReport { option: 1, ..Default::default() };
    if let Some(file) = domain_file {
        let mut domain = (*target.domain()).clone();
        domain.apply_file(file).context("the domain file")?;
        report.lines.push(format!("{} organisations, {} users from the domain file", domain.organisations.len(), domain.users.len()));
        target.apply_domain(&Access::bootstrap(), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    let bundle: Value = serde_json::from_str(crate::MODEL_CONTENT)?;
    let n = bundle["entry"].as_array().map(Vec::len).unwrap_or(0);
    target.bundle(&Access::bootstrap(), bundle, None).await.map_err(|e| anyhow::anyhow!("the model content: {e}"))?;
    report.lines.push(format!("{n} model content items loaded"));
    record(target, &report).await?;
    Ok(report)
}

/// Option 2: a new domain, from a copy of `source`'s configuration and content — no patients,
/// no portal accounts — in an empty database. It is a production domain of its own.
pub async fn new_domain_from_copy(source: &Engine, target: &Engine) -> anyhow::Result<OnboardReport> {
    if !is_empty(target).await? {
        bail!("a new domain is made in an empty database");
    }
    let made = env::create(source, target, env::EnvKind::Build).await?;
    // Not an environment: a domain of its own, governed as its source was declared.
    env::mark_production(target).await?;
    let mut domain = (*target.domain()).clone();
    domain.governance = source.domain().governance.clone();
    domain.governance.freeze.clear();
    target.apply_domain(&Access::bootstrap(), domain).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let report = OnboardReport {
        option: 2,
        lines: vec![format!("copied {} organisations, {} users and {} content items from '{}'; no patients", made.organisations, made.users, made.content_items, source.domain().name)],
        change_requests: Vec::new(),
    };
    record(target, &report).await?;
    Ok(report)
}

/// What a joining organisation's file adds, or why it may not.
fn check_join(domain: &Domain, joined: &Domain) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for o in &joined.organisations {
        if let Some(existing) = domain.organisation(&o.id) {
            if existing != o {
                bail!("the file changes the existing organisation '{}': a joiner only adds", o.id);
            }
        }
    }
    for u in &joined.users {
        if let Some(existing) = domain.user(&u.id) {
            if existing.roles != u.roles || existing.name != u.name {
                bail!("the file changes the existing user '{}': a joiner only adds", u.id);
            }
        }
    }
    let new_orgs: Vec<_> = joined.organisations.iter().filter(|o| domain.organisation(&o.id).is_none()).collect();
    if new_orgs.iter().all(|o| o.parent.is_some()) {
        bail!("the file brings no new trust: a joining organisation declares its trust (an organisation without a parent)");
    }
    let new_trusts: Vec<&str> = new_orgs.iter().filter(|o| o.parent.is_none()).map(|o| o.id.as_str()).collect();
    for a in &joined.sharing {
        let existing = domain.sharing.iter().find(|s| s.owner == a.owner && s.viewer == a.viewer);
        if existing.is_some_and(|e| e != a) && !new_trusts.contains(&a.owner.as_str()) {
            bail!("the file changes the sharing dials of '{}': a joiner sets its own dials only; changes to others' are joint optimisation (option 5)", a.owner);
        }
    }
    lines.push(format!("new organisations: {}", new_orgs.iter().map(|o| o.id.as_str()).collect::<Vec<_>>().join(", ")));
    lines.push(format!("new locations: {}", joined.locations.iter().filter(|l| domain.location(&l.id).is_none()).count()));
    lines.push(format!("new users: {}", joined.users.iter().filter(|u| domain.user(&u.id).is_none()).count()));
    lines.push(format!("new service accounts (interfaces): {}", joined.service_accounts.iter().filter(|s| domain.service_account(&s.id).is_none()).count()));
    lines.push(format!("sharing rows: {}", joined.sharing.len().saturating_sub(domain.sharing.len())));
    Ok(lines)
}

/// Option 3 (and 4, after option 1): a new organisation joins `engine`'s domain as-is with
/// the domain file fragment `file`. Under enforced governance, a change request; otherwise
/// applied at once.
pub async fn join(engine: &Engine, file: &str, option: u8) -> anyhow::Result<OnboardReport> {
    let domain = engine.domain();
    let mut joined = (*domain).clone();
    joined.apply_file(file).context("the joining organisation's domain file")?;
    let mut report = OnboardReport { option, lines: check_join(&domain, &joined)?, change_requests: Vec::new() };
    report.lines.push("inherits the domain's content as it is (model, domain layers)".into());
    if engine.governance_enforced() {
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "title", "valueString": format!("Onboarding: {}", report.lines[0])},
            {"name": "reason", "valueString": "a new organisation joins the domain as-is"},
            {"name": "configuration", "valueString": file}
        ]});
        let task = engine.propose_change(&Access::bootstrap(), params).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        report.change_requests.push(task["id"].as_str().unwrap_or("").to_string());
    } else {
        engine.apply_domain(&Access::bootstrap(), joined).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        report.lines.push("applied".into());
    }
    record(engine, &report).await?;
    Ok(report)
}

/// Option 5: joint optimisation — the joiner's configuration and content changes that affect
/// the existing organisations too, each as a change request that every affected trust signs
/// off (the joiner's own lead included, once it is in the domain).
pub async fn optimise(engine: &Engine, configuration: Option<&str>, content: Option<Value>, title: &str) -> anyhow::Result<OnboardReport> {
    let mut report = OnboardReport { option: 5, ..Default::default() };
    if configuration.is_none() && content.is_none() {
        bail!("joint optimisation proposes configuration, content, or both");
    }
    if let Some(c) = configuration {
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "title", "valueString": format!("{title} (configuration)")},
            {"name": "reason", "valueString": "joint optimisation with a joining organisation"},
            {"name": "configuration", "valueString": c}
        ]});
        let task = engine.propose_change(&Access::bootstrap(), params).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        report.change_requests.push(task["id"].as_str().unwrap_or("").to_string());
        report.lines.push("configuration change proposed: every trust signs it off".into());
    }
    if let Some(bundle) = content {
        let params = json!({"resourceType": "Parameters", "parameter": [
            {"name": "title", "valueString": format!("{title} (content)")},
            {"name": "reason", "valueString": "joint optimisation with a joining organisation"},
            {"name": "content", "resource": bundle}
        ]});
        let task = engine.propose_change(&Access::bootstrap(), params).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let required: Vec<String> = task["input"].as_array().into_iter().flatten().filter(|i| i["type"]["text"] == "required-approval").filter_map(|i| i["valueString"].as_str().map(str::to_string)).collect();
        report.change_requests.push(task["id"].as_str().unwrap_or("").to_string());
        report.lines.push(format!("content change proposed: sign-off needed from {}", required.join(", ")));
    }
    record(engine, &report).await?;
    Ok(report)
}
