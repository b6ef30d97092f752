//! The instance and type level interactions: read, vread, create, update, patch, delete
//! and their conditional forms, plus the identifier search they rest on. Each goes through
//! the [`Gate`](crate::guard::Gate): scopes, policy decision, audit.

use crate::access::Access;
use crate::criteria;
use crate::guard::{behind_glass, Decided, Gate, Released, Visibility};
use crate::patch::{PatchDoc, PatchFormat};
use crate::prepare::{new_id, prepare_delete, prepare_write, Stamp};
use crate::{Engine, FhirError, VersionedResource, WriteOutcome};
use serde_json::{Map, Value};
use tessera_auth::ScopeOp;
use tessera_fhir::IssueType;
use tessera_policy::Action;
use tessera_store::{ConflictReason, Criteria, Precondition, StoreError, Stored};

/// Attempts at a read-modify-write before giving up on a busy resource.
const RETRIES: usize = 8;

/// The patients a stored version concerns (for the audit trail).
pub(crate) fn patients_of(s: &Stored) -> Vec<String> {
    if s.resource_type == "Patient" {
        vec![s.id.clone()]
    } else {
        s.compartment.iter().cloned().collect()
    }
}

impl Engine {
    /// Checks that `resource_type` is an R4 resource type.
    pub fn check_type(&self, resource_type: &str) -> Result<(), FhirError> {
        if tessera_fhir::definitions::is_resource_type(resource_type) {
            Ok(())
        } else {
            Err(FhirError::unknown_type(resource_type))
        }
    }

    /// Refuses a write to a type the server renders itself: `AuditEvent` (the audit trail,
    /// appended by the server alone) and `OperationDefinition` (its own operations).
    pub fn check_writable(resource_type: &str) -> Result<(), FhirError> {
        match resource_type {
            "AuditEvent" => Err(FhirError::method_not_allowed(
                "AuditEvent is the server's audit trail: it is read and searched, and only the server appends to it",
            )),
            "OperationDefinition" => Err(FhirError::method_not_allowed("OperationDefinition lists the server's own operations: read and searched, never written")),
            _ => Ok(()),
        }
    }

    /// Validates a resource sent for `resource_type`; returns its members.
    pub fn validated(&self, resource_type: &str, body: Value) -> Result<Map<String, Value>, FhirError> {
        self.validated_resolving(resource_type, body, None)
    }

    /// [`Engine::validated`], with the types of a transaction's `urn:uuid:` references.
    pub(crate) fn validated_resolving(&self, resource_type: &str, body: Value, resolve: Option<&dyn Fn(&str) -> Option<&'static str>>) -> Result<Map<String, Value>, FhirError> {
        Self::check_writable(resource_type)?;
        let Value::Object(map) = body else {
            return Err(FhirError::bad_request("the body must be a JSON object (a FHIR resource)"));
        };
        match map.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == resource_type => {}
            Some(t) => {
                return Err(FhirError::bad_request(format!("resourceType '{t}' does not match the endpoint type '{resource_type}'")).at("resourceType"))
            }
            None => return Err(FhirError::bad_request("resource has no resourceType").at("resourceType")),
        }
        let value = Value::Object(map);
        crate::invariants::check_write(&value, &self.config().limits, resolve).map_err(FhirError::invalid)?;
        if crate::merge::is_index_content(&value) {
            return Err(FhirError::unprocessable(
                "Tasks and Provenances of the patient index are written by the server: decide a worklist pair with Task/[id]/$resolve, merge with Patient/$merge",
            ));
        }
        match value {
            Value::Object(mut map) => {
                if resource_type == "Patient" {
                    normalise_nhs_numbers(&mut map)?;
                }
                if resource_type == "Subscription" {
                    crate::subscription::check(&mut map);
                }
                Ok(map)
            }
            _ => unreachable!("checked above"),
        }
    }

    /// Reads the current version through the gate: hidden → 404, behind glass → marker.
    pub(crate) async fn gated_current(&self, gate: &mut Gate<'_>, resource_type: &str, id: &str) -> Result<Released, FhirError> {
        let Some(s) = self.store().read(resource_type, id).await? else {
            return Err(FhirError::not_found(resource_type, id));
        };
        match gate.release(s).await? {
            Decided::Hidden => Err(FhirError::not_found(resource_type, id)),
            Decided::BehindGlass => Err(behind_glass(resource_type, id)),
            Decided::Visible(r) => Ok(r),
        }
    }

    /// An id that is not a FHIR id (`[A-Za-z0-9\-.]{1,64}`) names nothing: 404.
    pub(crate) fn check_id(resource_type: &str, id: &str) -> Result<(), FhirError> {
        if tessera_fhir::validation::is_valid_id(id) {
            Ok(())
        } else {
            Err(FhirError::not_found(resource_type, &id.escape_debug().to_string()))
        }
    }

    /// `GET [type]/[id]`
    pub async fn read(&self, access: &Access, resource_type: &str, id: &str) -> Result<VersionedResource, FhirError> {
        self.check_type(resource_type)?;
        Self::check_id(resource_type, id)?;
        access.require_scope(resource_type, ScopeOp::Read)?;
        let mut gate = self.gate(access);
        let result = self.gated_current(&mut gate, resource_type, id).await;
        let patients = result.as_ref().map(|r| patients_of(r)).unwrap_or_default();
        let result = result.and_then(|s| if s.deleted { Err(FhirError::gone(resource_type, id)) } else { Ok(s.into()) });
        gate.record_access("read", result.is_ok(), &[format!("{resource_type}/{id}")], patients, None);
        gate.finish().await?;
        result
    }

    /// `GET [type]/[id]/_history/[vid]`
    pub async fn vread(&self, access: &Access, resource_type: &str, id: &str, version: &str) -> Result<VersionedResource, FhirError> {
        self.check_type(resource_type)?;
        Self::check_id(resource_type, id)?;
        access.require_scope(resource_type, ScopeOp::Read)?;
        let not_found = || FhirError::new(404, IssueType::NotFound, format!("{resource_type}/{id} has no version {version}"));
        let mut gate = self.gate(access);
        let result = match version.parse::<u64>() {
            Err(_) => Err(not_found()),
            Ok(v) => match self.store().vread(resource_type, id, v).await? {
                None => Err(not_found()),
                Some(s) => match gate.release_version(s, self.store().read(resource_type, id).await?.as_ref()).await? {
                    Decided::Hidden => Err(not_found()),
                    Decided::BehindGlass => Err(behind_glass(resource_type, id)),
                    Decided::Visible(r) if r.deleted => Err(FhirError::gone(resource_type, id)),
                    Decided::Visible(r) => Ok(r),
                },
            },
        };
        let patients = result.as_ref().map(|r| patients_of(r)).unwrap_or_default();
        gate.record_access("vread", result.is_ok(), &[format!("{resource_type}/{id}/_history/{version}")], patients, None);
        gate.finish().await?;
        result.map(Into::into)
    }

    /// Ids of current resources matching `criteria` that this subject may see.
    pub(crate) async fn visible_matches(&self, gate: &mut Gate<'_>, criteria: &Criteria) -> Result<Vec<String>, FhirError> {
        Ok(self.conditional_matches(gate, criteria).await?.0)
    }

    /// The visible matches of a conditional create, and the precondition the create must
    /// carry when there are none: "still none matching" (race-free) — unless resources the
    /// subject may not see match, in which case the create goes ahead as if they did not
    /// exist (answering otherwise would reveal them).
    pub(crate) async fn conditional_matches(&self, gate: &mut Gate<'_>, criteria: &Criteria) -> Result<(Vec<String>, Precondition), FhirError> {
        let ids = self.store().find(criteria).await?;
        let mut visible = Vec::with_capacity(ids.len());
        let mut hidden = false;
        for id in ids {
            if let Some(s) = self.store().read(&criteria.resource_type, &id).await? {
                if s.deleted {
                    continue;
                }
                if gate.visibility(&s).await? == Visibility::Visible {
                    visible.push(id);
                } else {
                    hidden = true;
                }
            }
        }
        let precondition = if hidden { Precondition::Absent } else { Precondition::NoneMatching(criteria.clone()) };
        Ok((visible, precondition))
    }

    /// The stamp for a version written by this gate's subject.
    pub(crate) fn stamp(gate: &Gate<'_>, resource_type: &str, existing: Option<&Stored>) -> Stamp {
        let owner = match existing {
            Some(e) if !e.deleted || e.owner.is_some() => e.owner.clone(),
            _ => gate.owner_for(resource_type),
        };
        Stamp { owner, author: Some(gate.access().subject.clone()) }
    }

    /// Commits writes together with the gate's audit records; forgets cached facts of the
    /// patients they concern.
    pub(crate) async fn commit_gated(&self, gate: &mut Gate<'_>, writes: Vec<tessera_store::Write>) -> Result<(), StoreError> {
        let audit = gate.take_audit();
        let mut touched: Vec<String> = Vec::new();
        for w in &writes {
            if w.resource_type == "Patient" {
                touched.push(w.id.clone());
            }
            touched.extend(w.compartment.iter().cloned());
            touched.extend(w.links.iter().map(|l| l.patient.clone()));
        }
        // Notifications of active subscriptions commit with the change (the outbox).
        let outbox = self.outbox_items(&writes);
        let subscriptions = writes.iter().any(|w| w.resource_type == "Subscription");
        // Before and after: a concurrent reader must not cache the state in between.
        self.cache().invalidate(touched.iter().map(String::as_str));
        let result = self.store().commit_outbox(writes, audit, outbox).await;
        self.cache().invalidate(touched.iter().map(String::as_str));
        if subscriptions && result.is_ok() {
            if let Err(e) = self.refresh_subscriptions().await {
                tracing::warn!(error = %e, "reloading the active subscriptions failed; the delivery worker retries");
            }
        }
        result
    }

    /// `POST [type]`, optionally conditional (`If-None-Exist`).
    pub async fn create(&self, access: &Access, resource_type: &str, body: Value, if_none_exist: Option<&str>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let map = self.validated(resource_type, body)?;
        let mut gate = self.gate(access);
        let mut value = Value::Object(map);
        let binary = self.binary_context(&mut gate, resource_type, &mut value).await?;
        gate.authorize_write(Action::Create, resource_type, "", None, Some(&value)).await?;
        self.check_references(&value, None, &|_: &str| false).await?;
        if resource_type == "Patient" {
            return Ok(self.register_patient(&mut gate, value, if_none_exist).await?.0);
        }
        let Value::Object(map) = value else { unreachable!() };
        for _ in 0..RETRIES {
            let precondition = match if_none_exist {
                None => Precondition::Absent,
                Some(query) => {
                    let criteria = criteria::parse(resource_type, query)?;
                    let (matches, precondition) = self.conditional_matches(&mut gate, &criteria).await?;
                    match matches.as_slice() {
                        [] => precondition,
                        [id] => {
                            let existing = self.gated_current(&mut gate, resource_type, id).await?;
                            let patients = patients_of(&existing);
                            gate.record_access("read", true, &[format!("{resource_type}/{id}")], patients, Some("conditional create matched"));
                            gate.finish().await?;
                            return Ok(WriteOutcome { status: 200, resource: existing.into() });
                        }
                        _ => return Err(multiple_matches(resource_type, query)),
                    }
                }
            };
            let mut stamp = Self::stamp(&gate, resource_type, None);
            if let Some(b) = &binary {
                b.stamp(&mut stamp);
            }
            let mut write = prepare_write(map.clone(), &new_id(), 1, precondition, &stamp)?;
            if let Some(b) = &binary {
                b.apply(&mut write);
            }
            let resource = written(&write);
            gate.record_write("create", &write);
            match self.commit_gated(&mut gate, vec![write]).await {
                Ok(()) => return Ok(WriteOutcome { status: 201, resource }),
                Err(StoreError::Conflict { reason: ConflictReason::Matches(_), .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }

    /// `POST Patient` as a registration, with the patient index's decision (for migration
    /// reports): [`Engine::create`] of a Patient.
    pub async fn register_reporting(&self, access: &Access, body: Value) -> Result<(WriteOutcome, crate::patient_index::MatchReport), FhirError> {
        let map = self.validated("Patient", body)?;
        let mut gate = self.gate(access);
        let value = Value::Object(map);
        gate.authorize_write(Action::Create, "Patient", "", None, Some(&value)).await?;
        self.check_references(&value, None, &|_: &str| false).await?;
        let (outcome, report) = self.register_patient(&mut gate, value, None).await?;
        Ok((outcome, report.expect("a registration without criteria is always decided by the index")))
    }

    /// A Patient create: matched by the patient index first ([`crate::patient_index`]).
    /// A conditional create answers a match the subject may see as usual; otherwise the
    /// index decides, over the whole domain: link (the record gains what the registration
    /// adds; 201, or 200 for a conditional create) or a new Patient (201), with possible
    /// duplicates put on the review worklist in the same transaction.
    async fn register_patient(
        &self,
        gate: &mut Gate<'_>,
        value: Value,
        if_none_exist: Option<&str>,
    ) -> Result<(WriteOutcome, Option<crate::patient_index::MatchReport>), FhirError> {
        // Registrations of one person at once all add to one record: more patience.
        for attempt in 0..RETRIES * 8 {
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(1 + (tessera_store::now_micros() as u64 % 7))).await;
            }
            let mut conditional = None;
            if let Some(query) = if_none_exist {
                let criteria = criteria::parse("Patient", query)?;
                let (matches, precondition) = self.conditional_matches(gate, &criteria).await?;
                match matches.as_slice() {
                    [] => conditional = Some(precondition),
                    [id] => {
                        let existing = self.gated_current(gate, "Patient", id).await?;
                        gate.record_access("read", true, &[format!("Patient/{id}")], vec![id.clone()], Some("conditional create matched"));
                        gate.flush().await?;
                        return Ok((WriteOutcome { status: 200, resource: existing.into() }, None));
                    }
                    _ => return Err(multiple_matches("Patient", query)),
                }
            }
            let registration = self.register(&value, &new_id(), true).await?;
            match registration.outcome.clone() {
                crate::patient_index::Outcome::Link { id } => {
                    let Some(existing) = self.store().read("Patient", &id).await?.filter(|s| !s.deleted) else { continue };
                    let status = if if_none_exist.is_some() { 200 } else { 201 };
                    let organisation = gate.access().organisation.clone();
                    match self.linked_content(&existing, &value, &organisation)? {
                        None => {
                            gate.record_noted("create", true, &[format!("Patient/{id}")], vec![id.clone()], &registration.note);
                            gate.flush().await?;
                            let resource = self.link_answer(gate, &existing, &value).await?;
                            return Ok((WriteOutcome { status, resource }, Some(registration.report.clone())));
                        }
                        Some(map) => {
                            let stamp = Self::link_stamp(&existing);
                            let write = prepare_write(map, &id, existing.version + 1, Precondition::Version(existing.version), &stamp)?;
                            let stored = crate::patient_index::stored_of(&write);
                            gate.record_write_noted("create", &write, &registration.note);
                            match self.commit_gated(gate, vec![write]).await {
                                Ok(()) => {
                                    let resource = self.link_answer(gate, &stored, &value).await?;
                                    return Ok((WriteOutcome { status, resource }, Some(registration.report.clone())));
                                }
                                Err(StoreError::Conflict { .. }) => continue,
                                Err(e) => return Err(e.into()),
                            }
                        }
                    }
                }
                crate::patient_index::Outcome::New { id, precondition, review } => {
                    let precondition = match (precondition, conditional) {
                        (Precondition::Absent, Some(c)) => c,
                        (p, _) => p,
                    };
                    let Value::Object(map) = value.clone() else { unreachable!() };
                    let write = prepare_write(map, &id, 1, precondition, &Self::stamp(gate, "Patient", None))?;
                    let resource = written(&write);
                    let mut writes = vec![write];
                    writes.extend(self.review_writes(gate, &id, &review).await?);
                    gate.record_write_noted("create", &writes[0], &registration.note);
                    match self.commit_gated(gate, writes).await {
                        Ok(()) => {
                            let report = registration.report.clone();
                            registration.confirm();
                            return Ok((WriteOutcome { status: 201, resource }, Some(report)));
                        }
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Err(busy("Patient"))
    }

    /// `PUT [type]/[id]`, with optional `If-Match` version.
    pub async fn update(&self, access: &Access, resource_type: &str, id: &str, body: Value, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let map = self.validated(resource_type, body)?;
        match map.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(FhirError::bad_request(format!("the resource id '{body_id}' does not match the URL id '{id}'")).at(format!("{resource_type}.id")))
            }
            None => return Err(FhirError::bad_request("an update must carry the resource id").at(format!("{resource_type}.id"))),
        }
        let mut gate = self.gate(access);
        self.update_map(&mut gate, resource_type, id, map, if_match).await
    }

    async fn update_map(
        &self,
        gate: &mut Gate<'_>,
        resource_type: &str,
        id: &str,
        map: Map<String, Value>,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        let mut value = Value::Object(map);
        let binary = self.binary_context(gate, resource_type, &mut value).await?;
        for _ in 0..RETRIES {
            let current = self.store().read(resource_type, id).await?;
            let action = if current.as_ref().is_some_and(|c| !c.deleted) { Action::Write } else { Action::Create };
            gate.authorize_write(action, resource_type, id, current.as_ref(), Some(&value)).await?;
            self.check_references(&value, None, &|r: &str| r.split_once('/') == Some((resource_type, id))).await?;
            if resource_type == "Patient" {
                self.check_nhs_unique(&value, id).await?;
            }
            let (version, precondition, status) = match (&current, if_match) {
                (Some(c), Some(v)) if c.version != v => return Err(stale(resource_type, id, v, Some(c.version))),
                (None, Some(v)) => return Err(stale(resource_type, id, v, None)),
                (Some(c), _) => (c.version + 1, Precondition::Version(c.version), if c.deleted { 201 } else { 200 }),
                (None, None) if !self.config().update_create => {
                    return Err(FhirError::method_not_allowed(format!(
                        "{resource_type}/{id} does not exist and this server does not create resources by update"
                    )))
                }
                (None, None) => (1, Precondition::Absent, 201),
            };
            let Value::Object(map) = value.clone() else { unreachable!() };
            let mut stamp = Self::stamp(gate, resource_type, current.as_ref());
            if let Some(b) = &binary {
                b.stamp(&mut stamp);
            }
            let mut write = prepare_write(map, id, version, precondition, &stamp)?;
            if let Some(b) = &binary {
                b.apply(&mut write);
            }
            let resource = written(&write);
            let (reviews, note) = if resource_type == "Patient" && status == 201 { self.put_create_reviews(gate, &value, id).await? } else { (Vec::new(), None) };
            match &note {
                Some(n) => gate.record_write_noted("create", &write, n),
                None => gate.record_write(if status == 201 { "create" } else { "update" }, &write),
            }
            let mut writes = vec![write];
            writes.extend(reviews);
            match self.commit_gated(gate, writes).await {
                Ok(()) => return Ok(WriteOutcome { status, resource }),
                Err(StoreError::Conflict { .. }) if if_match.is_none() => continue,
                Err(StoreError::Conflict { reason: ConflictReason::VersionMismatch { current }, .. }) => {
                    return Err(stale(resource_type, id, if_match.unwrap_or(0), current))
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }

    /// `PUT [type]?[criteria]`
    pub async fn conditional_update(&self, access: &Access, resource_type: &str, query: &str, body: Value, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let criteria = criteria::parse(resource_type, query)?;
        let map = self.validated(resource_type, body)?;
        let body_id = map.get("id").and_then(Value::as_str).map(str::to_string);
        let mut gate = self.gate(access);
        for _ in 0..RETRIES {
            let (matches, precondition) = self.conditional_matches(&mut gate, &criteria).await?;
            match matches.as_slice() {
                [] => {
                    let id = body_id.clone().unwrap_or_else(new_id);
                    let existing = self.store().read(resource_type, &id).await?;
                    let mut value = Value::Object(map.clone());
                    let binary = self.binary_context(&mut gate, resource_type, &mut value).await?;
                    // Authorised first: a hidden resource with that id answers as absent (404).
                    gate.authorize_write(Action::Create, resource_type, &id, existing.as_ref(), Some(&value)).await?;
                    self.check_references(&value, None, &|r: &str| r.split_once('/') == Some((resource_type, id.as_str()))).await?;
                    if existing.as_ref().is_some_and(|e| !e.deleted) {
                        return Err(FhirError::conflict(format!("{resource_type}/{id} exists but does not match the criteria '{query}'")));
                    }
                    if resource_type == "Patient" {
                        self.check_nhs_unique(&value, &id).await?;
                    }
                    let version = existing.as_ref().map_or(1, |d| d.version + 1);
                    let precondition = match (&existing, precondition) {
                        // Re-creating a deleted id: its version must not have moved.
                        (Some(d), Precondition::Absent) => Precondition::Version(d.version),
                        (_, p) => p,
                    };
                    let Value::Object(labelled) = value else { unreachable!() };
                    let mut stamp = Self::stamp(&gate, resource_type, existing.as_ref());
                    if let Some(b) = &binary {
                        b.stamp(&mut stamp);
                    }
                    let mut write = prepare_write(labelled, &id, version, precondition, &stamp)?;
                    if let Some(b) = &binary {
                        b.apply(&mut write);
                    }
                    let resource = written(&write);
                    gate.record_write("create", &write);
                    match self.commit_gated(&mut gate, vec![write]).await {
                        Ok(()) => return Ok(WriteOutcome { status: 201, resource }),
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                [id] => {
                    if body_id.as_deref().is_some_and(|b| b != id) {
                        return Err(FhirError::bad_request(format!("the resource id does not match the id of the resource the criteria found ({id})"))
                            .at(format!("{resource_type}.id")));
                    }
                    let id = id.clone();
                    return self.update_map(&mut gate, resource_type, &id, map, if_match).await;
                }
                _ => return Err(multiple_matches(resource_type, query)),
            }
        }
        Err(busy(resource_type))
    }

    /// `DELETE [type]/[id]`. Returns the deletion version, or `None` when the resource was
    /// already deleted (deleting is idempotent).
    pub async fn delete(&self, access: &Access, resource_type: &str, id: &str, if_match: Option<u64>) -> Result<Option<VersionedResource>, FhirError> {
        self.check_type(resource_type)?;
        Self::check_writable(resource_type)?;
        Self::check_id(resource_type, id)?;
        let mut gate = self.gate(access);
        self.delete_gated(&mut gate, resource_type, id, if_match).await
    }

    async fn delete_gated(&self, gate: &mut Gate<'_>, resource_type: &str, id: &str, if_match: Option<u64>) -> Result<Option<VersionedResource>, FhirError> {
        for _ in 0..RETRIES {
            // Decided as a write (a write-only interface deletes what its trust owns).
            let Some(current) = self.store().read(resource_type, id).await? else {
                return Err(FhirError::not_found(resource_type, id));
            };
            gate.authorize_write(Action::Delete, resource_type, id, Some(&current), None).await?;
            if let Some(v) = if_match {
                if v != current.version {
                    return Err(stale(resource_type, id, v, Some(current.version)));
                }
            }
            if current.deleted {
                return Ok(None);
            }
            if crate::merge::is_index_record(&current) {
                return Err(FhirError::method_not_allowed(
                    "this record is kept by the patient index: decide a worklist pair with Task/[id]/$resolve, undo a merge with Patient/$unmerge",
                ));
            }
            let write = prepare_delete(resource_type, id, current.version + 1, Precondition::Version(current.version), &current);
            let resource = written(&write);
            gate.record_write("delete", &write);
            match self.commit_gated(gate, vec![write]).await {
                Ok(()) => return Ok(Some(resource)),
                Err(StoreError::Conflict { .. }) if if_match.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }

    /// `DELETE [type]?[criteria]` (single-match mode: more than one match is refused).
    pub async fn conditional_delete(&self, access: &Access, resource_type: &str, query: &str) -> Result<Option<VersionedResource>, FhirError> {
        self.check_type(resource_type)?;
        Self::check_writable(resource_type)?;
        let criteria = criteria::parse(resource_type, query)?;
        let mut gate = self.gate(access);
        match self.visible_matches(&mut gate, &criteria).await?.as_slice() {
            [] => Ok(None),
            [id] => {
                let id = id.clone();
                self.delete_gated(&mut gate, resource_type, &id, None).await
            }
            _ => Err(multiple_matches(resource_type, query)),
        }
    }

    /// `PATCH [type]/[id]`: `patch` is a JSON Patch (array), a FHIRPath Patch
    /// (`Parameters`) or a JSON Merge Patch (other object); see [`crate::patch`].
    pub async fn patch(&self, access: &Access, resource_type: &str, id: &str, patch: Value, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        let doc = PatchDoc::parse(patch, PatchFormat::Detect)?;
        self.patch_doc(access, resource_type, id, &doc, if_match).await
    }

    /// `PATCH [type]/[id]` with a parsed patch document: applied to the current version the
    /// subject may see, then validated and decided like an update.
    pub async fn patch_doc(&self, access: &Access, resource_type: &str, id: &str, doc: &PatchDoc, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        Self::check_id(resource_type, id)?;
        let mut gate = self.gate(access);
        self.modify(&mut gate, resource_type, id, if_match, "update", false, |v| doc.apply(v)).await
    }

    /// `PATCH [type]?[criteria]`: the one visible match is patched; none is 404, several 412.
    pub async fn conditional_patch(&self, access: &Access, resource_type: &str, query: &str, doc: &PatchDoc, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let criteria = criteria::parse(resource_type, query)?;
        let mut gate = self.gate(access);
        let id = match self.visible_matches(&mut gate, &criteria).await?.as_slice() {
            [] => return Err(FhirError::new(404, IssueType::NotFound, format!("no {resource_type} matches '{query}'"))),
            [id] => id.clone(),
            _ => return Err(multiple_matches(resource_type, query)),
        };
        self.modify(&mut gate, resource_type, &id, if_match, "update", false, |v| doc.apply(v)).await
    }

    /// Read-modify-write of the current version the subject may see: `change` edits its
    /// JSON; the result is validated, decided by the gate as an update (of the version read,
    /// to the new content) and written as the next version, audited as `interaction`.
    /// With `skip_unchanged`, a change that changes nothing writes nothing (and answers the
    /// current version).
    pub(crate) async fn modify(
        &self,
        gate: &mut Gate<'_>,
        resource_type: &str,
        id: &str,
        if_match: Option<u64>,
        interaction: &str,
        skip_unchanged: bool,
        change: impl Fn(&mut Value) -> Result<(), FhirError>,
    ) -> Result<WriteOutcome, FhirError> {
        for _ in 0..RETRIES {
            let current = self.gated_current(gate, resource_type, id).await?;
            if current.deleted {
                return Err(FhirError::gone(resource_type, id));
            }
            if let Some(v) = if_match {
                if v != current.version {
                    return Err(stale(resource_type, id, v, Some(current.version)));
                }
            }
            let before: Value = serde_json::from_slice(&current.json).map_err(|e| FhirError::internal(format!("stored resource is not JSON: {e}")))?;
            let mut doc = before.clone();
            change(&mut doc)?;
            if doc.get("id").and_then(Value::as_str) != Some(id) || doc.get("resourceType") != before.get("resourceType") {
                return Err(FhirError::unprocessable("a patch must not change or remove the resource type or id").at(format!("{resource_type}.id")));
            }
            if skip_unchanged && doc == before {
                let patients = patients_of(&current);
                gate.record_access(interaction, true, &[format!("{resource_type}/{id}")], patients, Some("no change"));
                gate.flush().await?;
                return Ok(WriteOutcome { status: 200, resource: current.into() });
            }
            let map = self.validated(resource_type, doc)?;
            let mut value = Value::Object(map);
            let binary = self.binary_context(gate, resource_type, &mut value).await?;
            gate.authorize_write(Action::Write, resource_type, id, Some(&current), Some(&value)).await?;
            self.check_references(&value, None, &|r: &str| r.split_once('/') == Some((resource_type, id))).await?;
            if resource_type == "Patient" {
                self.check_nhs_unique(&value, id).await?;
            }
            let Value::Object(map) = value else { unreachable!() };
            let mut stamp = Self::stamp(gate, resource_type, Some(&current));
            if let Some(b) = &binary {
                b.stamp(&mut stamp);
            }
            let mut write = prepare_write(map, id, current.version + 1, Precondition::Version(current.version), &stamp)?;
            if let Some(b) = &binary {
                b.apply(&mut write);
            }
            let resource = written(&write);
            gate.record_write(interaction, &write);
            match self.commit_gated(gate, vec![write]).await {
                Ok(()) => return Ok(WriteOutcome { status: 200, resource }),
                Err(StoreError::Conflict { .. }) if if_match.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }
}

/// The version a write will create, as the engine reports it.
pub(crate) fn written(w: &tessera_store::Write) -> VersionedResource {
    VersionedResource::written(w)
}

/// Like [`written`] without the resource body (for responses that do not carry it).
pub(crate) fn written_head(w: &tessera_store::Write) -> VersionedResource {
    VersionedResource::written_head(w)
}

fn stale(resource_type: &str, id: &str, expected: u64, current: Option<u64>) -> FhirError {
    match current {
        Some(c) => FhirError::precondition_failed(format!("If-Match expected version {expected} of {resource_type}/{id} but the current version is {c}")),
        None => FhirError::precondition_failed(format!("If-Match given but {resource_type}/{id} does not exist")),
    }
}

fn multiple_matches(resource_type: &str, query: &str) -> FhirError {
    FhirError::new(412, IssueType::MultipleMatches, format!("more than one {resource_type} matches '{query}'"))
}

fn busy(resource_type: &str) -> FhirError {
    FhirError::new(409, IssueType::Conflict, format!("the {resource_type} is being changed concurrently; try again"))
}

/// A Patient's NHS numbers (`identifier` of system `https://fhir.nhs.uk/Id/nhs-number`)
/// must pass the modulus-11 check; they are stored as their ten digits (`943 476 5919` →
/// `9434765919`), so that one number is one value for search and matching.
fn normalise_nhs_numbers(patient: &mut Map<String, Value>) -> Result<(), FhirError> {
    let Some(Value::Array(ids)) = patient.get_mut("identifier") else { return Ok(()) };
    for (i, id) in ids.iter_mut().enumerate() {
        if id.get("system").and_then(Value::as_str) != Some(tessera_empi::nhs::SYSTEM) {
            continue;
        }
        let Some(value) = id.get("value").and_then(Value::as_str) else { continue };
        match tessera_empi::NhsNumber::parse(value) {
            Ok(n) => id["value"] = Value::String(n.as_str().to_string()),
            Err(e) => {
                return Err(FhirError::new(400, IssueType::Value, format!("'{value}' is not a valid NHS number: {e}")).at(format!("Patient.identifier[{i}].value")))
            }
        }
    }
    Ok(())
}

