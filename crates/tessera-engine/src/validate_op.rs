//! `$validate` (type level `[type]/$validate`, instance level `[type]/[id]/$validate`): the
//! checks a write would meet, reported instead of applied.
//!
//! [`Engine::check_resource`] is the one function behind it: the validation every write
//! path runs ([`Engine::validated`], i.e. `invariants::check_write`) with its warnings
//! (`invariants::check_full`), the reference check (`Engine::check_references`), the Binary
//! `securityContext` resolution (`Engine::binary_context`) and, for a mode, the
//! [`Gate`] decision the write would get (`Gate::authorize_write`, as `create`, `update`
//! (`update_map`) and `delete` (`delete_gated`) in `rest.rs` ask it). Nothing is stored.
//! Only the base R4 definitions are checked: a `profile` (or `meta.profile`) other than the
//! base one is reported as not evaluated.

use crate::access::Access;
use crate::guard::Gate;
use crate::{Engine, FhirError};
use serde_json::{json, Value};
use tessera_fhir::{Issue, IssueSeverity, IssueType};
use tessera_policy::Action;

/// What `$validate` checks the resource for (`mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValidationMode {
    /// No mode: the content only.
    Content,
    /// As a create by this subject.
    Create,
    /// As an update by this subject of the current version (the resource's `id`).
    Update,
    /// Whether this subject may delete the resource (`resourceType` and `id` are used).
    Delete,
}

impl ValidationMode {
    pub fn parse(code: &str) -> Result<ValidationMode, FhirError> {
        match code {
            "create" => Ok(ValidationMode::Create),
            "update" => Ok(ValidationMode::Update),
            "delete" => Ok(ValidationMode::Delete),
            other => Err(FhirError::bad_request(format!("unknown $validate mode '{other}' (create, update, delete)")).at("mode")),
        }
    }
}

fn issue(severity: IssueSeverity, code: IssueType, diagnostics: impl Into<String>, at: Option<String>) -> Issue {
    Issue { severity, code, diagnostics: diagnostics.into(), expression: at.into_iter().collect() }
}

impl Engine {
    /// Every issue a write of `resource` (mode create/update) by this subject would meet —
    /// validation errors, and the gate's refusal — or, for [`ValidationMode::Delete`],
    /// whether this subject may delete it. Empty when the write would be accepted.
    /// Nothing is stored and nothing is audited (the `$validate` operation audits itself).
    pub async fn check_resource(&self, access: &Access, resource: &Value, mode: ValidationMode) -> Vec<Issue> {
        let mut gate = self.gate(access);
        self.check_with_gate(&mut gate, resource, mode).await
    }

    async fn check_with_gate(&self, gate: &mut Gate<'_>, resource: &Value, mode: ValidationMode) -> Vec<Issue> {
        let mut issues = Vec::new();
        let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
            issues.push(Issue::error(IssueType::Structure, "the resource has no resourceType").at("resourceType"));
            return issues;
        };
        if let Err(e) = self.check_type(ty) {
            issues.extend(e.issues);
            return issues;
        }
        let id = resource.get("id").and_then(Value::as_str).map(str::to_string);
        let mut value = resource.clone();
        if mode != ValidationMode::Delete {
            // The write paths' validation (`Engine::validated`: `invariants::check_write`),
            // with the warnings it leaves out (`invariants::check_full`), then the
            // references and the Binary context, as the write paths check them.
            issues.extend(crate::invariants::check_full(resource, &self.config().limits));
            if !issues.iter().any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal)) {
                let own = format!("{ty}/{}", id.as_deref().unwrap_or(""));
                if let Err(e) = self.check_references(resource, None, &|r| r == own).await {
                    issues.extend(e.issues);
                }
            }
            if let Err(e) = self.binary_context(gate, ty, &mut value).await {
                issues.extend(e.issues);
            }
        }
        let result = match mode {
            ValidationMode::Content => Ok(()),
            ValidationMode::Create => gate.authorize_write(Action::Create, ty, "", None, Some(&value)).await,
            ValidationMode::Update | ValidationMode::Delete => {
                let Some(id) = id.filter(|i| tessera_fhir::validation::is_valid_id(i)) else {
                    issues.push(Issue::error(IssueType::Required, format!("mode {} needs the resource id", if mode == ValidationMode::Update { "update" } else { "delete" })).at(format!("{ty}.id")));
                    return issues;
                };
                match self.store().read(ty, &id).await {
                    Err(e) => Err(e.into()),
                    Ok(current) if mode == ValidationMode::Update => {
                        let live = current.as_ref().is_some_and(|c| !c.deleted);
                        if current.is_none() && !self.config().update_create {
                            Err(FhirError::method_not_allowed(format!("{ty}/{id} does not exist and this server does not create resources by update")))
                        } else {
                            gate.authorize_write(if live { Action::Write } else { Action::Create }, ty, &id, current.as_ref(), Some(&value)).await
                        }
                    }
                    Ok(None) => Err(FhirError::not_found(ty, &id)),
                    Ok(Some(current)) => match gate.authorize_write(Action::Delete, ty, &id, Some(&current), None).await {
                        Ok(()) if current.deleted => {
                            issues.push(issue(IssueSeverity::Information, IssueType::Informational, format!("{ty}/{id} is already deleted"), None));
                            Ok(())
                        }
                        other => other,
                    },
                }
            }
        };
        if let Err(e) = result {
            issues.extend(e.issues);
        }
        issues
    }

    /// `POST [type]/$validate` and `POST [type]/[id]/$validate`: `body` is the resource, or
    /// a `Parameters` with `resource`, `mode` and `profile`; `query` may carry `mode` and
    /// `profile` too. Answers an OperationOutcome listing every issue (200 whatever they
    /// are); nothing is stored.
    pub async fn validate_operation(&self, access: &Access, resource_type: &str, id: Option<&str>, body: Option<Value>, query: &str) -> Result<Value, FhirError> {
        self.check_type(resource_type)?;
        if let Some(id) = id {
            Self::check_id(resource_type, id)?;
        }
        let mut resource = None;
        let mut mode: Option<String> = None;
        let mut profiles: Vec<String> = Vec::new();
        let is_parameters = |b: &Value| {
            b.get("resourceType").and_then(Value::as_str) == Some("Parameters")
                && (resource_type != "Parameters" || b.get("parameter").and_then(Value::as_array).into_iter().flatten().any(|p| p.get("name").and_then(Value::as_str) == Some("resource")))
        };
        match body {
            Some(b) if is_parameters(&b) => {
                for p in b.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                    let text = ["valueCode", "valueString", "valueUri", "valueCanonical", "valueUrl"].iter().find_map(|k| p.get(*k).and_then(Value::as_str)).map(str::to_string);
                    match p.get("name").and_then(Value::as_str) {
                        Some("resource") => resource = p.get("resource").cloned(),
                        Some("mode") => mode = text,
                        Some("profile") => profiles.extend(text),
                        _ => {}
                    }
                }
            }
            Some(b) => resource = Some(b),
            None => {}
        }
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "mode" => mode = Some(v.into_owned()),
                "profile" => profiles.push(v.into_owned()),
                _ => {}
            }
        }
        let mode = match mode.as_deref() {
            None | Some("") => ValidationMode::Content,
            Some(m) => ValidationMode::parse(m)?,
        };
        let resource = match (resource, mode, id) {
            (Some(r), _, _) => r,
            (None, ValidationMode::Delete, Some(id)) => json!({"resourceType": resource_type, "id": id}),
            (None, ValidationMode::Delete, None) => return Err(FhirError::bad_request("mode=delete needs the resource or its id: use [type]/[id]/$validate")),
            (None, _, _) => return Err(FhirError::bad_request("$validate needs the resource to check: the body, or a Parameters with a 'resource' parameter")),
        };
        if !resource.is_object() {
            return Err(FhirError::bad_request("the resource to validate must be a JSON object"));
        }
        let mut issues = Vec::new();
        let mut resource = resource;
        match resource.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == resource_type => {}
            Some(t) => issues.push(Issue::error(IssueType::Invalid, format!("resourceType '{t}' does not match the endpoint type '{resource_type}'")).at("resourceType")),
            None => {}
        }
        if let Some(id) = id {
            match resource.get("id").and_then(Value::as_str) {
                Some(rid) if rid != id => {
                    issues.push(Issue::error(IssueType::Invalid, format!("the resource id '{rid}' does not match the URL id '{id}'")).at(format!("{resource_type}.id")))
                }
                Some(_) => {}
                None if mode == ValidationMode::Create => {}
                None => resource["id"] = json!(id),
            }
        }
        let base = format!("http://hl7.org/fhir/StructureDefinition/{resource_type}");
        let claimed = resource.get("meta").and_then(|m| m.get("profile")).and_then(Value::as_array).into_iter().flatten().filter_map(Value::as_str).map(str::to_string);
        for p in profiles.iter().cloned().chain(claimed) {
            if p.split('|').next() != Some(base.as_str()) {
                issues.push(issue(
                    IssueSeverity::Warning,
                    IssueType::NotSupported,
                    format!("only the base R4 definition of {resource_type} is checked: the profile '{p}' was not evaluated"),
                    None,
                ));
            }
        }
        let mut gate = self.gate(access);
        issues.extend(self.check_with_gate(&mut gate, &resource, mode).await);
        let failed = issues.iter().any(|i| matches!(i.severity, IssueSeverity::Error | IssueSeverity::Fatal));
        if issues.is_empty() || (!failed && issues.iter().all(|i| i.severity == IssueSeverity::Information)) {
            let what = match (mode, id) {
                (ValidationMode::Delete, _) => format!("{resource_type}/{} may be deleted by you", resource.get("id").and_then(Value::as_str).unwrap_or("")),
                (ValidationMode::Create, _) => "no issues detected: the resource may be created by you".to_string(),
                (ValidationMode::Update, _) => "no issues detected: the resource may be updated by you".to_string(),
                (ValidationMode::Content, _) => "no issues detected".to_string(),
            };
            issues.push(issue(IssueSeverity::Information, IssueType::Informational, what, None));
        }
        let entity = match id {
            Some(id) => format!("{resource_type}/{id}"),
            None => resource_type.to_string(),
        };
        let patients = tessera_fhir::compartment::patient_compartments(&resource);
        gate.record_access("validate", !failed, &[entity], patients, None);
        gate.finish().await?;
        Ok(tessera_fhir::outcome::operation_outcome(&issues))
    }
}
