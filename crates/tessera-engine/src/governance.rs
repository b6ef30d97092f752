//! Joint governance: in production (the domain file's `[governance] enforced = true`),
//! layered content and the domain's configuration change only through approved change
//! requests, and not at all during a freeze unless as an emergency change with its extra
//! approvals.
//!
//! A change request is a FHIR `Task` coded [`GOVERNANCE_SYSTEM`]`|change-request`, made and
//! moved only by these operations (direct writes are refused, like the patient index's
//! records):
//!
//! * `POST Task/$change-request` (Parameters: `title`, `reason`, `content` — a Bundle of
//!   layered items — or `configuration` — a domain-file fragment —, `emergency`): records the
//!   proposal with its diff, its impact (the trusts whose content or configuration changes)
//!   and the approvals it needs: a governance lead of each affected trust, a clinical safety
//!   officer for clinical content, and for an emergency the named emergency approvers.
//!   Status `requested`.
//! * `POST Task/[id]/$approve` (`decision` approve | reject, `note`): a lead, officer or
//!   emergency approver signs off (or rejects: status `rejected`, nothing changes). When
//!   every approval is in, status `accepted`.
//! * `POST Task/[id]/$apply`: an accepted change, outside a freeze (or an emergency change
//!   with its approvals, flagged in the audit), is applied — content in one transaction with
//!   the Task's completion; configuration merged into the domain (idempotent). Status
//!   `completed`.
//! * `POST Task/[id]/$withdraw`: the requester withdraws it (status `cancelled`).
//!
//! Every step is audited with its note.

use crate::access::{Access, AccessKind};
use crate::guard::Gate;
use crate::prepare::prepare_write;
use crate::{Engine, FhirError};
use base64::Engine as _;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tessera_domain::{DataClass, Domain};
use tessera_fhir::IssueType;
use tessera_store::{Precondition, Stored};

pub const GOVERNANCE_SYSTEM: &str = "https://tessera.health/CodeSystem/governance";

/// Content types whose changes are clinical (a clinical safety officer signs them off).
const CLINICAL: &[&str] = &["ActivityDefinition", "PlanDefinition", "Questionnaire", "Library"];

/// Whether a resource is a change request (written only by the governance operations).
pub fn is_change_request_content(v: &Value) -> bool {
    v["resourceType"] == "Task" && v["code"]["coding"].as_array().into_iter().flatten().any(|c| c["system"] == GOVERNANCE_SYSTEM)
}

pub(crate) fn is_change_request(s: &Stored) -> bool {
    s.resource_type == "Task" && memchr::memmem::find(&s.json, GOVERNANCE_SYSTEM.as_bytes()).is_some() && serde_json::from_slice::<Value>(&s.json).is_ok_and(|v| is_change_request_content(&v))
}

/// The freeze window in force at `now` (RFC 3339 comparison of instants), if any.
pub fn freeze_at(domain: &Domain, now: time::OffsetDateTime) -> Option<&tessera_domain::FreezeWindow> {
    let parse = |s: &str| time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok();
    domain.governance.freeze.iter().find(|w| matches!((parse(&w.start), parse(&w.end)), (Some(a), Some(b)) if a <= now && now < b))
}

fn refused(message: impl Into<String>) -> FhirError {
    FhirError::new(409, IssueType::Conflict, message)
}

/// The refusal of a direct change to governed content or configuration.
pub fn direct_change_refused(what: &str) -> FhirError {
    FhirError::new(
        409,
        IssueType::Conflict,
        format!("{what} is governed in this domain: propose the change with POST [base]/Task/$change-request; it applies once each affected organisation has signed it off"),
    )
}

fn param<'a>(params: &'a Value, name: &str) -> Option<&'a Value> {
    params["parameter"].as_array()?.iter().find(|p| p["name"] == name)
}

fn input<'a>(task: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let kind = kind.to_string();
    task["input"].as_array().into_iter().flatten().filter(move |i| i["type"]["text"] == kind.as_str())
}

fn output<'a>(task: &'a Value, kind: &str) -> impl Iterator<Item = &'a Value> + 'a {
    let kind = kind.to_string();
    task["output"].as_array().into_iter().flatten().filter(move |i| i["type"]["text"] == kind.as_str())
}

fn now_instant() -> String {
    crate::prepare::format_instant(tessera_store::now_micros())
}

impl Engine {
    /// Records an operator's domain-wide operation (onboarding, upgrade) in the audit trail.
    pub async fn record_operation(&self, access: &Access, name: &str, note: &str) -> Result<(), FhirError> {
        let mut gate = self.gate(access);
        gate.record_noted(name, true, &["Domain".to_string()], Vec::new(), note);
        gate.finish().await
    }

    /// Whether governance is enforced (production).
    pub fn governance_enforced(&self) -> bool {
        self.domain().governance.enforced
    }

    fn require_config_writer(&self, access: &Access) -> Result<(), FhirError> {
        if access.is_domain_bootstrap() {
            return Ok(());
        }
        let domain = self.domain();
        let ok = access.kind == AccessKind::User
            && access.role.as_deref().and_then(|r| domain.role(r)).and_then(|r| r.permissions.get(&DataClass::Configuration)).is_some_and(|p| p.write);
        if ok {
            Ok(())
        } else {
            Err(FhirError::new(403, IssueType::Forbidden, "only those who may change configuration propose changes"))
        }
    }

    /// `POST Task/$change-request`.
    pub async fn propose_change(&self, access: &Access, params: Value) -> Result<Value, FhirError> {
        self.require_config_writer(access)?;
        let domain = self.domain();
        let text = |name: &str| param(&params, name).and_then(|p| p["valueString"].as_str()).map(str::to_string);
        let title = text("title").filter(|t| !t.trim().is_empty()).ok_or_else(|| FhirError::bad_request("a change request needs a title").at("Parameters.parameter[title]"))?;
        let reason = text("reason").unwrap_or_default();
        let emergency = param(&params, "emergency").and_then(|p| p["valueBoolean"].as_bool()).unwrap_or(false);
        let content = param(&params, "content").map(|p| p["resource"].clone()).filter(|v| !v.is_null());
        let configuration = text("configuration");
        let mut affected: BTreeSet<String> = BTreeSet::new();
        let mut clinical = false;
        let mut inputs = vec![];
        let mut diff_lines = Vec::new();
        match (&content, &configuration) {
            (Some(bundle), None) => {
                if bundle["resourceType"] != "Bundle" {
                    return Err(FhirError::bad_request("content must be a Bundle of layered content items").at("Parameters.parameter[content]"));
                }
                let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
                if entries.is_empty() {
                    return Err(FhirError::bad_request("content has no items").at("Parameters.parameter[content]"));
                }
                for (i, e) in entries.iter().enumerate() {
                    let r = &e["resource"];
                    let at = format!("Parameters.parameter[content].resource.entry[{i}].resource");
                    let ty = r["resourceType"].as_str().unwrap_or("");
                    if !crate::content::is_content_type(ty) || r["id"].as_str().is_none() {
                        return Err(FhirError::bad_request(format!("each item is a content resource ({}) with an id", crate::content::content_types())).at(at));
                    }
                    let Some((layer, scope)) = crate::content::layer_of(r) else {
                        return Err(FhirError::bad_request("each item names its layer (tag https://tessera.health/CodeSystem/content-layer)").at(format!("{at}.meta.tag")));
                    };
                    clinical |= CLINICAL.contains(&ty);
                    match layer {
                        crate::content::Layer::Model | crate::content::Layer::Domain => affected.extend(trusts(&domain)),
                        _ => {
                            if let Some(s) = scope {
                                affected.insert(domain.trust_of(&s).to_string());
                            }
                        }
                    }
                    // The diff against what is stored now.
                    let id = r["id"].as_str().unwrap_or("");
                    let current = self.store().read(ty, id).await?.filter(|s| !s.deleted).and_then(|s| serde_json::from_slice::<Value>(&s.json).ok());
                    let before = json!({"resourceType": "Bundle", "entry": current.map(|c| vec![json!({"resource": c})]).unwrap_or_default()});
                    let after = json!({"resourceType": "Bundle", "entry": [{"resource": r}]});
                    diff_lines.extend(crate::content_diff::diff(&before, &after).into_iter().map(|c| c.to_string()));
                }
                let data = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(bundle).map_err(|e| FhirError::internal(e.to_string()))?);
                inputs.push(json!({"type": {"text": "content"}, "valueAttachment": {"contentType": "application/fhir+json", "data": data}}));
            }
            (None, Some(toml)) => {
                let mut merged = (*domain).clone();
                merged.apply_file(toml).map_err(|e| FhirError::bad_request(format!("the configuration is not a valid domain file fragment: {e}")).at("Parameters.parameter[configuration]"))?;
                affected.extend(trusts(&domain));
                diff_lines.extend(configuration_diff(&domain, &merged));
                inputs.push(json!({"type": {"text": "configuration"}, "valueString": toml}));
            }
            _ => return Err(FhirError::bad_request("give either content (a Bundle) or configuration (a domain file fragment)").at("Parameters")),
        }
        // Who must sign off.
        let mut required: Vec<String> = affected.iter().map(|t| format!("lead:{t}")).collect();
        if clinical {
            required.push("clinical-safety".into());
        }
        if emergency {
            required.push("emergency".into());
        }
        for r in &required {
            inputs.push(json!({"type": {"text": "required-approval"}, "valueString": r}));
        }
        inputs.push(json!({"type": {"text": "diff"}, "valueString": if diff_lines.is_empty() { "no change".to_string() } else { diff_lines.join("\n") }}));
        inputs.push(json!({"type": {"text": "impact"}, "valueString": format!("organisations whose content or configuration changes: {}", affected.iter().cloned().collect::<Vec<_>>().join(", "))}));
        if emergency {
            inputs.push(json!({"type": {"text": "emergency"}, "valueBoolean": true}));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let mut task = json!({
            "resourceType": "Task",
            "id": id,
            "status": "requested",
            "intent": "proposal",
            "code": {"coding": [{"system": GOVERNANCE_SYSTEM, "code": "change-request", "display": "Change request"}]},
            "description": title,
            "authoredOn": now_instant(),
            "lastModified": now_instant(),
            "requester": {"reference": access.reference()},
            "input": inputs,
        });
        if !reason.is_empty() {
            task["reasonCode"] = json!({"text": reason});
        }
        let mut gate = self.gate(access);
        gate.record_noted("$change-request", true, &[format!("Task/{id}")], Vec::new(), &format!("change request proposed: {title}{}", if emergency { " (EMERGENCY)" } else { "" }));
        self.write_task(&mut gate, task, None).await
    }

    async fn write_task(&self, gate: &mut Gate<'_>, task: Value, current: Option<&Stored>) -> Result<Value, FhirError> {
        let Value::Object(mut map) = task else { unreachable!() };
        map.remove("meta");
        crate::invariants::check_write(&Value::Object(map.clone()), &self.config().limits, None).map_err(FhirError::invalid)?;
        let id = map["id"].as_str().unwrap_or_default().to_string();
        let (version, pre) = match current {
            Some(c) => (c.version + 1, Precondition::Version(c.version)),
            None => (1, Precondition::Absent),
        };
        let stamp = crate::prepare::Stamp { owner: Some(tessera_domain::BOOTSTRAP_ORGANISATION.to_string()), author: Some(gate.access().subject.clone()) };
        let write = prepare_write(map, &id, version, pre, &stamp)?;
        let json = write.json.clone();
        self.commit_gated(gate, vec![write]).await?;
        serde_json::from_slice(&json).map_err(|e| FhirError::internal(e.to_string()))
    }

    /// A change request, read first through the `Gate` as `access` (hidden: absent).
    async fn load_change(&self, access: &Access, id: &str) -> Result<(Stored, Value), FhirError> {
        self.read(access, "Task", id).await?;
        let stored = self.store().read("Task", id).await?.filter(|s| !s.deleted).ok_or_else(|| FhirError::not_found("Task", id))?;
        if !is_change_request(&stored) {
            return Err(FhirError::unprocessable(format!("Task/{id} is not a change request")));
        }
        let v: Value = serde_json::from_slice(&stored.json).map_err(|e| FhirError::internal(e.to_string()))?;
        Ok((stored, v))
    }

    /// The approvals `access` can give on `task`: the required approvals not yet given that
    /// this user holds.
    fn approvals_for(&self, access: &Access, task: &Value) -> Vec<String> {
        let domain = self.domain();
        let g = &domain.governance;
        let given: Vec<String> = output(task, "approval").filter_map(|o| o["valueString"].as_str()).map(|s| s.split('|').next().unwrap_or("").to_string()).collect();
        let requester = task["requester"]["reference"].as_str().unwrap_or("");
        input(task, "required-approval")
            .filter_map(|i| i["valueString"].as_str())
            .filter(|r| *r == "emergency" || !given.iter().any(|g| g == r))
            .filter(|r| match r.strip_prefix("lead:") {
                Some(trust) => g.leads.iter().any(|l| l.organisation == trust && l.users.contains(&access.subject)),
                None if *r == "clinical-safety" => g.clinical_safety_officers.contains(&access.subject),
                None if *r == "emergency" => {
                    g.emergency_approvers.contains(&access.subject)
                        && access.reference() != requester
                        && !output(task, "approval").any(|o| o["valueString"].as_str().is_some_and(|v| v.starts_with("emergency|") && v.split('|').nth(1) == Some(&access.subject)))
                }
                None => false,
            })
            .map(str::to_string)
            .collect()
    }

    /// Whether every required approval is in.
    fn fully_approved(&self, task: &Value) -> bool {
        let domain = self.domain();
        let approvals: Vec<&str> = output(task, "approval").filter_map(|o| o["valueString"].as_str()).collect();
        input(task, "required-approval").filter_map(|i| i["valueString"].as_str()).all(|r| {
            let n = approvals.iter().filter(|a| a.split('|').next() == Some(r)).count();
            if r == "emergency" {
                n >= domain.governance.emergency_approvals.max(1) as usize
            } else {
                n >= 1
            }
        })
    }

    /// `POST Task/[id]/$approve`.
    pub async fn decide_change(&self, access: &Access, id: &str, decision: &str, note: Option<&str>) -> Result<Value, FhirError> {
        let (stored, mut task) = self.load_change(access, id).await?;
        if task["status"] != "requested" {
            return Err(refused(format!("the change request is {}: only a requested change is approved or rejected", task["status"].as_str().unwrap_or("?"))));
        }
        let mine = self.approvals_for(access, &task);
        let mut gate = self.gate(access);
        if mine.is_empty() {
            gate.record_noted("$approve", false, &[format!("Task/{id}")], Vec::new(), "not an approver of this change request");
            gate.finish().await?;
            return Err(FhirError::new(403, IssueType::Forbidden, "you hold none of the approvals this change request still needs (a governance lead of an affected trust, a clinical safety officer, an emergency approver)"));
        }
        let stamp = now_instant();
        match decision {
            "approve" => {
                let outputs = task["output"].as_array().cloned().unwrap_or_default();
                let mut outputs = outputs;
                for a in &mine {
                    outputs.push(json!({"type": {"text": "approval"}, "valueString": format!("{a}|{}|{stamp}|{}", access.subject, note.unwrap_or("").replace('|', "/"))}));
                }
                task["output"] = Value::Array(outputs);
                if self.fully_approved(&task) {
                    task["status"] = json!("accepted");
                }
            }
            "reject" => {
                task["status"] = json!("rejected");
                task["statusReason"] = json!({"text": format!("rejected by {} ({}): {}", access.subject, mine.join(", "), note.unwrap_or(""))});
            }
            other => return Err(FhirError::bad_request(format!("decision '{other}' is not approve or reject")).at("decision")),
        }
        task["lastModified"] = json!(stamp);
        gate.record_noted("$approve", true, &[format!("Task/{id}")], Vec::new(), &format!("change request {decision}d as {}{}", mine.join(", "), note.map(|n| format!(": {n}")).unwrap_or_default()));
        self.write_task(&mut gate, task, Some(&stored)).await
    }

    /// `POST Task/[id]/$withdraw`: the requester withdraws a change that is not applied.
    pub async fn withdraw_change(&self, access: &Access, id: &str) -> Result<Value, FhirError> {
        let (stored, mut task) = self.load_change(access, id).await?;
        if task["requester"]["reference"].as_str() != Some(access.reference().as_str()) && !access.is_domain_bootstrap() {
            return Err(FhirError::new(403, IssueType::Forbidden, "only the requester withdraws a change request"));
        }
        if !matches!(task["status"].as_str(), Some("requested" | "accepted")) {
            return Err(refused("only a change that is not applied, rejected or withdrawn can be withdrawn"));
        }
        task["status"] = json!("cancelled");
        task["lastModified"] = json!(now_instant());
        let mut gate = self.gate(access);
        gate.record_noted("$withdraw", true, &[format!("Task/{id}")], Vec::new(), "change request withdrawn");
        self.write_task(&mut gate, task, Some(&stored)).await
    }

    /// `POST Task/[id]/$apply`.
    pub async fn apply_change(&self, access: &Access, id: &str) -> Result<Value, FhirError> {
        self.require_config_writer(access)?;
        let (stored, mut task) = self.load_change(access, id).await?;
        if task["status"] != "accepted" {
            return Err(refused(format!(
                "the change request is {}: only an accepted change (every required approval given) is applied",
                task["status"].as_str().unwrap_or("?")
            )));
        }
        let domain = self.domain();
        let emergency = input(&task, "emergency").any(|i| i["valueBoolean"] == true);
        let frozen = freeze_at(&domain, time::OffsetDateTime::now_utc()).cloned();
        if let Some(w) = &frozen {
            if !emergency {
                let mut gate = self.gate(access);
                gate.record_noted("$apply", false, &[format!("Task/{id}")], Vec::new(), &format!("refused: change freeze ({})", w.reason));
                gate.finish().await?;
                return Err(refused(format!(
                    "production changes are frozen until {} ({}); an emergency change needs its own request with the emergency approvals",
                    w.end, w.reason
                )));
            }
        }
        let note = match (&frozen, emergency) {
            (Some(w), true) => format!("EMERGENCY change applied during the freeze '{}'", w.reason),
            (None, true) => "EMERGENCY change applied".to_string(),
            _ => "change request applied".to_string(),
        };
        task["status"] = json!("completed");
        task["lastModified"] = json!(now_instant());
        task["output"].as_array_mut().map(|o| o.push(json!({"type": {"text": "applied"}, "valueString": format!("{}|{}", access.subject, now_instant())})));
        let governed = Access { governed_change: Some(id.to_string()), ..access.clone() };
        if let Some(content) = input(&task, "content").next().and_then(|i| i["valueAttachment"]["data"].as_str()) {
            let bytes = base64::engine::general_purpose::STANDARD.decode(content).map_err(|e| FhirError::internal(e.to_string()))?;
            let bundle: Value = serde_json::from_slice(&bytes).map_err(|e| FhirError::internal(e.to_string()))?;
            let mut entries: Vec<Value> = Vec::new();
            for e in bundle["entry"].as_array().into_iter().flatten() {
                let r = &e["resource"];
                entries.push(json!({"resource": r, "request": {"method": "PUT", "url": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or(""))}}));
            }
            // The Task's completion in the same transaction: all of it, or nothing.
            let Value::Object(mut t) = task.clone() else { unreachable!() };
            t.remove("meta");
            entries.push(json!({"resource": Value::Object(t), "request": {"method": "PUT", "url": format!("Task/{id}"), "ifMatch": format!("W/\"{}\"", stored.version)}}));
            let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            self.bundle(&governed, tx, None).await?;
            let mut gate = self.gate(access);
            gate.record_noted("$apply", true, &[format!("Task/{id}")], Vec::new(), &note);
            gate.finish().await?;
            let (_, done) = self.load_change(access, id).await?;
            return Ok(done);
        }
        let configuration = input(&task, "configuration").next().and_then(|i| i["valueString"].as_str()).map(str::to_string);
        if let Some(toml) = configuration {
            let mut merged = (*domain).clone();
            merged.apply_file(&toml).map_err(|e| FhirError::unprocessable(format!("the configuration no longer applies: {e}")))?;
            self.apply_domain(&governed, merged).await?;
            let mut gate = self.gate(access);
            gate.record_noted("$apply", true, &[format!("Task/{id}")], Vec::new(), &note);
            return self.write_task(&mut gate, task, Some(&stored)).await;
        }
        Err(FhirError::internal("the change request carries no change"))
    }
}

/// A domain as a document, without secrets (password and client secret hashes).
pub fn domain_without_secrets(domain: &Domain) -> Value {
    let mut d = domain.clone();
    for u in &mut d.users {
        u.password_hash = None;
    }
    for s in &mut d.service_accounts {
        s.secret_hash = None;
    }
    for a in &mut d.portal_accounts {
        a.password_hash = None;
    }
    for a in &mut d.apps {
        a.secret_hash = None;
    }
    serde_json::to_value(d).unwrap_or(Value::Null)
}

/// The element-level differences between two domain configurations, one line each
/// (`configuration sharing[4].classes.clinical: "break-glass" → "shared"`).
pub fn configuration_diff(before: &Domain, after: &Domain) -> Vec<String> {
    let wrap = |v: Value| json!({"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Domain", "url": "domain", "domain": v}}]});
    let show = |v: &Option<Value>| v.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "(absent)".into());
    crate::content_diff::diff(&wrap(domain_without_secrets(before)), &wrap(domain_without_secrets(after)))
        .into_iter()
        .filter_map(|c| match c {
            crate::content_diff::Change::Changed { path, before, after, .. } => {
                Some(format!("configuration {}: {} → {}", path.trim_start_matches("domain."), show(&before), show(&after)))
            }
            _ => None,
        })
        .collect()
}

fn trusts(domain: &Domain) -> Vec<String> {
    domain.organisations.iter().filter(|o| o.parent.is_none() && o.id != tessera_domain::BOOTSTRAP_ORGANISATION).map(|o| o.id.clone()).collect()
}
