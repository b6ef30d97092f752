//! The instance and type level interactions: read, vread, create, update, patch, delete
//! and their conditional forms, plus the identifier search they rest on.

use crate::criteria;
use crate::prepare::{new_id, prepare_delete, prepare_write};
use crate::{Engine, FhirError, VersionedResource, WriteOutcome};
use serde_json::{Map, Value};
use tessera_fhir::IssueType;
use tessera_store::{ConflictReason, Precondition, StoreError};

/// Attempts at a read-modify-write before giving up on a busy resource.
const RETRIES: usize = 8;

impl Engine {
    /// Checks that `resource_type` is an R4 resource type.
    pub fn check_type(&self, resource_type: &str) -> Result<(), FhirError> {
        if tessera_fhir::definitions::is_resource_type(resource_type) {
            Ok(())
        } else {
            Err(FhirError::unknown_type(resource_type))
        }
    }

    /// Validates a resource sent for `resource_type`; returns its members.
    pub fn validated(&self, resource_type: &str, body: Value) -> Result<Map<String, Value>, FhirError> {
        let Value::Object(map) = body else {
            return Err(FhirError::bad_request("the body must be a JSON object (a FHIR resource)"));
        };
        match map.get("resourceType").and_then(Value::as_str) {
            Some(t) if t == resource_type => {}
            Some(t) => {
                return Err(FhirError::bad_request(format!(
                    "resourceType '{t}' does not match the endpoint type '{resource_type}'"
                ))
                .at("resourceType"))
            }
            None => return Err(FhirError::bad_request("resource has no resourceType").at("resourceType")),
        }
        let value = Value::Object(map);
        tessera_fhir::validation::validate(&value, &self.config().limits).map_err(FhirError::invalid)?;
        match value {
            Value::Object(map) => Ok(map),
            _ => unreachable!("checked above"),
        }
    }

    /// `GET [type]/[id]`
    pub async fn read(&self, resource_type: &str, id: &str) -> Result<VersionedResource, FhirError> {
        self.check_type(resource_type)?;
        match self.store().read(resource_type, id).await? {
            None => Err(FhirError::not_found(resource_type, id)),
            Some(s) if s.deleted => Err(FhirError::gone(resource_type, id)),
            Some(s) => Ok(s.into()),
        }
    }

    /// `GET [type]/[id]/_history/[vid]`
    pub async fn vread(&self, resource_type: &str, id: &str, version: &str) -> Result<VersionedResource, FhirError> {
        self.check_type(resource_type)?;
        let Ok(v) = version.parse::<u64>() else {
            return Err(FhirError::new(404, IssueType::NotFound, format!("'{version}' is not a version of {resource_type}/{id}")));
        };
        match self.store().vread(resource_type, id, v).await? {
            None => Err(FhirError::new(404, IssueType::NotFound, format!("{resource_type}/{id} has no version {v}"))),
            Some(s) if s.deleted => Err(FhirError::gone(resource_type, id)),
            Some(s) => Ok(s.into()),
        }
    }

    /// `POST [type]`, optionally conditional (`If-None-Exist`).
    pub async fn create(&self, resource_type: &str, body: Value, if_none_exist: Option<&str>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let map = self.validated(resource_type, body)?;
        for _ in 0..RETRIES {
            let precondition = match if_none_exist {
                None => Precondition::Absent,
                Some(query) => {
                    let criteria = criteria::parse(resource_type, query)?;
                    match self.store().find(&criteria).await?.as_slice() {
                        [] => Precondition::NoneMatching(criteria),
                        [id] => return Ok(WriteOutcome { status: 200, resource: self.read(resource_type, id).await? }),
                        _ => return Err(multiple_matches(resource_type, query)),
                    }
                }
            };
            let write = prepare_write(map.clone(), &new_id(), 1, precondition)?;
            let resource = written(&write);
            match self.store().commit(vec![write]).await {
                Ok(()) => return Ok(WriteOutcome { status: 201, resource }),
                Err(StoreError::Conflict { reason: ConflictReason::Matches(_), .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }

    /// `PUT [type]/[id]`, with optional `If-Match` version.
    pub async fn update(&self, resource_type: &str, id: &str, body: Value, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let map = self.validated(resource_type, body)?;
        match map.get("id").and_then(Value::as_str) {
            Some(body_id) if body_id == id => {}
            Some(body_id) => {
                return Err(FhirError::bad_request(format!("the resource id '{body_id}' does not match the URL id '{id}'")).at(format!("{resource_type}.id")))
            }
            None => return Err(FhirError::bad_request("an update must carry the resource id").at(format!("{resource_type}.id"))),
        }
        self.update_map(resource_type, id, map, if_match).await
    }

    async fn update_map(
        &self,
        resource_type: &str,
        id: &str,
        map: Map<String, Value>,
        if_match: Option<u64>,
    ) -> Result<WriteOutcome, FhirError> {
        for _ in 0..RETRIES {
            let current = self.store().read(resource_type, id).await?;
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
            let write = prepare_write(map.clone(), id, version, precondition)?;
            let resource = written(&write);
            match self.store().commit(vec![write]).await {
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
    pub async fn conditional_update(&self, resource_type: &str, query: &str, body: Value, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let criteria = criteria::parse(resource_type, query)?;
        let map = self.validated(resource_type, body)?;
        let body_id = map.get("id").and_then(Value::as_str).map(str::to_string);
        for _ in 0..RETRIES {
            match self.store().find(&criteria).await?.as_slice() {
                [] => {
                    let id = body_id.clone().unwrap_or_else(new_id);
                    if let Some(existing) = self.store().read(resource_type, &id).await? {
                        if !existing.deleted {
                            return Err(FhirError::conflict(format!(
                                "{resource_type}/{id} exists but does not match the criteria '{query}'"
                            )));
                        }
                    }
                    let write = prepare_write(map.clone(), &id, 1, Precondition::NoneMatching(criteria.clone()))?;
                    let resource = written(&write);
                    let write = match self.store().read(resource_type, &id).await? {
                        Some(deleted) => tessera_store::Write { version: deleted.version + 1, ..write },
                        None => write,
                    };
                    let resource = VersionedResource { version: write.version, ..resource };
                    match self.store().commit(vec![write]).await {
                        Ok(()) => return Ok(WriteOutcome { status: 201, resource }),
                        Err(StoreError::Conflict { .. }) => continue,
                        Err(e) => return Err(e.into()),
                    }
                }
                [id] => {
                    if body_id.as_deref().is_some_and(|b| b != id) {
                        return Err(FhirError::bad_request(format!(
                            "the resource id does not match the id of the resource the criteria found ({id})"
                        ))
                        .at(format!("{resource_type}.id")));
                    }
                    return self.update_map(resource_type, id, map, if_match).await;
                }
                _ => return Err(multiple_matches(resource_type, query)),
            }
        }
        Err(busy(resource_type))
    }

    /// `DELETE [type]/[id]`. Returns the deletion version, or `None` when the resource was
    /// already deleted (deleting is idempotent).
    pub async fn delete(&self, resource_type: &str, id: &str, if_match: Option<u64>) -> Result<Option<VersionedResource>, FhirError> {
        self.check_type(resource_type)?;
        for _ in 0..RETRIES {
            let Some(current) = self.store().read(resource_type, id).await? else {
                return Err(FhirError::not_found(resource_type, id));
            };
            if let Some(v) = if_match {
                if v != current.version {
                    return Err(stale(resource_type, id, v, Some(current.version)));
                }
            }
            if current.deleted {
                return Ok(None);
            }
            let write = prepare_delete(resource_type, id, current.version + 1, Precondition::Version(current.version));
            let resource = written(&write);
            match self.store().commit(vec![write]).await {
                Ok(()) => return Ok(Some(resource)),
                Err(StoreError::Conflict { .. }) if if_match.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }

    /// `DELETE [type]?[criteria]` (single-match mode: more than one match is refused).
    pub async fn conditional_delete(&self, resource_type: &str, query: &str) -> Result<Option<VersionedResource>, FhirError> {
        self.check_type(resource_type)?;
        let criteria = criteria::parse(resource_type, query)?;
        match self.store().find(&criteria).await?.as_slice() {
            [] => Ok(None),
            [id] => self.delete(resource_type, id, None).await,
            _ => Err(multiple_matches(resource_type, query)),
        }
    }

    /// `PATCH [type]/[id]` with a JSON Patch document.
    pub async fn patch(&self, resource_type: &str, id: &str, patch: Value, if_match: Option<u64>) -> Result<WriteOutcome, FhirError> {
        self.check_type(resource_type)?;
        let patch: json_patch::Patch = serde_json::from_value(patch)
            .map_err(|e| FhirError::bad_request(format!("the body is not a valid JSON Patch document: {e}")))?;
        for _ in 0..RETRIES {
            let current = self.read(resource_type, id).await?;
            if let Some(v) = if_match {
                if v != current.version {
                    return Err(stale(resource_type, id, v, Some(current.version)));
                }
            }
            let mut doc: Value = serde_json::from_slice(&current.json)
                .map_err(|e| FhirError::internal(format!("stored resource is not JSON: {e}")))?;
            json_patch::patch(&mut doc, &patch).map_err(|e| FhirError::unprocessable(format!("the patch cannot be applied: {e}")))?;
            if doc.get("id").and_then(Value::as_str) != Some(id) {
                return Err(FhirError::unprocessable("a patch must not change or remove the resource id").at(format!("{resource_type}.id")));
            }
            let map = self.validated(resource_type, doc)?;
            let write = prepare_write(map, id, current.version + 1, Precondition::Version(current.version))?;
            let resource = written(&write);
            match self.store().commit(vec![write]).await {
                Ok(()) => return Ok(WriteOutcome { status: 200, resource }),
                Err(StoreError::Conflict { .. }) if if_match.is_none() => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(busy(resource_type))
    }

    /// Ids of the current resources matching a conditional query.
    pub async fn matching_ids(&self, resource_type: &str, query: &str) -> Result<Vec<String>, FhirError> {
        self.check_type(resource_type)?;
        let criteria = criteria::parse(resource_type, query)?;
        Ok(self.store().find(&criteria).await?)
    }
}

/// The version a write will create, as the engine reports it.
pub(crate) fn written(w: &tessera_store::Write) -> VersionedResource {
    VersionedResource {
        resource_type: w.resource_type.clone(),
        id: w.id.clone(),
        version: w.version,
        last_updated_micros: w.last_updated_micros,
        deleted: w.deleted,
        json: w.json.clone(),
    }
}

/// Like [`written`] without the resource body (for responses that do not carry it).
pub(crate) fn written_head(w: &tessera_store::Write) -> VersionedResource {
    VersionedResource {
        resource_type: w.resource_type.clone(),
        id: w.id.clone(),
        version: w.version,
        last_updated_micros: w.last_updated_micros,
        deleted: w.deleted,
        json: Vec::new(),
    }
}

fn stale(resource_type: &str, id: &str, expected: u64, current: Option<u64>) -> FhirError {
    match current {
        Some(c) => FhirError::precondition_failed(format!(
            "If-Match expected version {expected} of {resource_type}/{id} but the current version is {c}"
        )),
        None => FhirError::precondition_failed(format!("If-Match given but {resource_type}/{id} does not exist")),
    }
}

fn multiple_matches(resource_type: &str, query: &str) -> FhirError {
    FhirError::new(412, IssueType::MultipleMatches, format!("more than one {resource_type} matches '{query}'"))
}

fn busy(resource_type: &str) -> FhirError {
    FhirError::new(409, IssueType::Conflict, format!("the {resource_type} is being changed concurrently; try again"))
}
