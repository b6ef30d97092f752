//! `Patient/$merge` and `Patient/$unmerge`, and the decisions of the duplicate review
//! worklist (`Task/[id]/$resolve`).
//!
//! **How a merge moves the record: rewritten references.** Every resource of the source
//! Patient's compartment gets a new version whose references to the source name the
//! target instead, so it belongs to the target's compartment. The alternative, a
//! compartment that follows `replaced-by` links, was rejected: the store is distributed by
//! patient compartment, so every read of the target would have to visit the source's
//! shard too, every search and `$everything` would need the link graph, and every client
//! and downstream system would go on seeing references to an inactive record. Rewriting
//! keeps one patient in one compartment, and history keeps the versions before.
//!
//! The source becomes inactive with a `replaced-by` link to the target (carrying the
//! merge's record, [`MERGE_RECORD`]); the target gains a `replaces` link and the source's
//! identifiers (as `old`). The merge's record is a `Provenance` (activity `merge` of
//! [`INDEX_SYSTEM`]) whose `target` lists each version the merge wrote and whose `entity`
//! lists, in the same order, the version before. All of it commits in one transaction,
//! audited. `$unmerge` writes the versions before back — the exact content, references
//! included — unless any of those resources changed since the merge, which it refuses,
//! naming them.
//!
//! Merging needs a permission of its own (`Role::merges_patients`): `trust` merges only
//! records whose data and registrations belong to the subject's trust alone; `domain` (the
//! built-in records-manager role) merges any. The gate applies it to the patient index's
//! own records too: worklist Tasks and merge Provenances are seen only by those who may
//! merge.

use crate::access::Access;
use crate::guard::{Decided, Gate};
use crate::patient_index::{merged_away, replaced_by, INDEX_SYSTEM, MERGE_RECORD, WORKLIST_CODE};
use crate::prepare::{new_id, prepare_write, Stamp};
use crate::{Engine, FhirError};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use tessera_domain::MergeScope;
use tessera_fhir::IssueType;
use tessera_store::search::{Clause, IndexQuery, Pred, SortKey};
use tessera_store::{Precondition, StoreError, Stored, Write};

/// The parameters of `$merge`.
struct MergeRequest {
    source: String,
    target: String,
    result: Option<Value>,
    preview: bool,
}

/// One resource a merge or unmerge rewrites: its current version and the new content.
struct Moved {
    current: Stored,
    content: Map<String, Value>,
}

/// The merge scope of a subject: the bootstrap account merges anything; users as their
/// role allows; service accounts not at all.
pub(crate) fn merge_scope(gate: &Gate<'_>) -> MergeScope {
    let access = gate.access();
    if access.is_domain_bootstrap() {
        return MergeScope::Domain;
    }
    if access.is_interface() {
        return MergeScope::Trust;
    }
    access.role.as_deref().and_then(|r| gate.domain().role(r)).map_or(MergeScope::None, |r| r.merges_patients)
}

/// Whether a stored resource is one of the patient index's own records (a worklist Task
/// or a merge Provenance). Most Tasks and Provenances are not: a byte search rules them
/// out before anything is parsed.
pub(crate) fn is_index_record(s: &Stored) -> bool {
    matches!(s.resource_type.as_str(), "Task" | "Provenance")
        && memchr::memmem::find(&s.json, INDEX_SYSTEM.as_bytes()).is_some()
        && serde_json::from_slice::<Value>(&s.json).is_ok_and(|v| is_index_content(&v))
}

/// Whether a resource is coded as a patient index record: a Task whose `code`, or a
/// Provenance whose `activity`, is of [`INDEX_SYSTEM`]. The one test both the gate (who
/// may see it) and the write paths (nobody writes one directly) use.
pub(crate) fn is_index_content(v: &Value) -> bool {
    let element = match v["resourceType"].as_str() {
        Some("Task") => &v["code"],
        Some("Provenance") => &v["activity"],
        _ => return false,
    };
    element["coding"].as_array().into_iter().flatten().any(|c| c["system"] == INDEX_SYSTEM)
}

fn param<'a>(parameters: &'a Value, name: &str) -> Option<&'a Value> {
    parameters["parameter"].as_array()?.iter().find(|p| p["name"] == name)
}

fn strip_version(map: &mut Map<String, Value>) {
    if let Some(Value::Object(meta)) = map.get_mut("meta") {
        meta.remove("versionId");
        meta.remove("lastUpdated");
    }
}

fn json_of(s: &Stored) -> Result<Value, FhirError> {
    serde_json::from_slice(&s.json).map_err(|e| FhirError::internal(format!("stored {} is not JSON: {e}", s.resource_type)))
}

pub(crate) fn author_of(v: &Value) -> Option<String> {
    v["meta"]["tag"].as_array()?.iter().find(|t| t["system"] == crate::guard::AUTHOR_SYSTEM).and_then(|t| t["code"].as_str()).map(str::to_string)
}

impl Engine {
    /// A patient given as a reference (`Patient/id`) or an identifier, in force.
    async fn merge_party(&self, parameters: &Value, name: &str) -> Result<Option<String>, FhirError> {
        if let Some(p) = param(parameters, name) {
            let reference = p["valueReference"]["reference"].as_str().ok_or_else(|| FhirError::bad_request(format!("{name} takes valueReference")).at(name.to_string()))?;
            let id = reference.strip_prefix("Patient/").filter(|id| !id.contains('/')).ok_or_else(|| {
                FhirError::bad_request(format!("{name} must be a reference to a Patient (Patient/[id]), not '{reference}'")).at(name.to_string())
            })?;
            return Ok(Some(id.to_string()));
        }
        let name_id = format!("{name}-identifier");
        if let Some(p) = param(parameters, &name_id) {
            let ident = &p["valueIdentifier"];
            let (Some(system), Some(value)) = (ident["system"].as_str(), ident["value"].as_str()) else {
                return Err(FhirError::bad_request(format!("{name_id} takes a valueIdentifier with system and value")).at(name_id));
            };
            return match self.patient_by_identifier(system, value).await? {
                Some(id) => Ok(Some(id)),
                None => Err(FhirError::new(404, IssueType::NotFound, format!("no patient is known by the identifier {system}|{value}")).at(name_id)),
            };
        }
        Ok(None)
    }

    fn merge_request_names(parameters: &Value) -> Result<(), FhirError> {
        if parameters["resourceType"] != "Parameters" {
            return Err(FhirError::bad_request("this operation takes a Parameters resource").at("resourceType"));
        }
        const KNOWN: [&str; 7] = ["source-patient", "source-patient-identifier", "target-patient", "target-patient-identifier", "result-patient", "preview", "merge-record"];
        for (i, p) in parameters["parameter"].as_array().into_iter().flatten().enumerate() {
            let name = p["name"].as_str().unwrap_or_default();
            if !KNOWN.contains(&name) {
                return Err(FhirError::bad_request(format!("unknown parameter '{name}' (source-patient, target-patient, their -identifier forms, result-patient, preview)"))
                    .at(format!("Parameters.parameter[{i}].name")));
            }
        }
        Ok(())
    }

    /// The trusts that hold a patient's record: the owners of its data and the trusts
    /// whose MRNs it carries.
    async fn holders(&self, patient: &Stored) -> Result<std::collections::BTreeSet<String>, FhirError> {
        let domain = self.domain();
        let mut out = std::collections::BTreeSet::new();
        let v = json_of(patient)?;
        for ident in v["identifier"].as_array().into_iter().flatten() {
            if let Some(o) = ident["system"].as_str().and_then(|s| domain.organisation_of_mrn_system(s)) {
                out.insert(domain.trust_of(&o.id).to_string());
            }
        }
        for s in self.compartment_members(&patient.id).await? {
            if let Some(o) = &s.owner {
                out.insert(domain.trust_of(o).to_string());
            }
        }
        Ok(out)
    }

    /// A subject whose role may not merge at all is refused before any record is looked
    /// up: the answer must not tell which records exist or were merged.
    fn require_merge_role(gate: &Gate<'_>) -> Result<(), FhirError> {
        match merge_scope(gate) {
            MergeScope::None => Err(FhirError::new(
                403,
                IssueType::Forbidden,
                "merging patient records needs a role that may merge them (the records-manager role, or a role the domain gives merges_patients)",
            )),
            _ => Ok(()),
        }
    }

    /// May this subject merge (or unmerge) these two records?
    async fn check_merge_permission(&self, gate: &Gate<'_>, source: &Stored, target: &Stored) -> Result<(), FhirError> {
        match merge_scope(gate) {
            MergeScope::Domain => Ok(()),
            MergeScope::None => Err(FhirError::new(
                403,
                IssueType::Forbidden,
                "merging patient records needs a role that may merge them (the records-manager role, or a role the domain gives merges_patients)",
            )),
            MergeScope::Trust => {
                let domain = self.domain();
                let own = domain.trust_of(&gate.access().organisation).to_string();
                let mut holders = self.holders(source).await?;
                holders.extend(self.holders(target).await?);
                if holders.iter().all(|t| *t == own) {
                    Ok(())
                } else {
                    Err(FhirError::new(
                        403,
                        IssueType::Forbidden,
                        "these records are held by more than one organisation: only the records-management role may merge them",
                    ))
                }
            }
        }
    }

    /// Every current resource of a patient's compartment, except the Patient itself and
    /// the patient index's own records.
    async fn compartment_members(&self, patient: &str) -> Result<Vec<Stored>, FhirError> {
        let mut q = IndexQuery::new(None);
        q.clauses.push(Clause { any: vec![Pred::Compartment(patient.to_string())], negate: false });
        q.sort.push(SortKey::LastUpdated { descending: false });
        let mut out = Vec::new();
        let mut last = 0;
        loop {
            q.limit = 1_000;
            q.after_seq = Some(last);
            let seqs = self.store().search(&q).await?;
            let done = seqs.len() < q.limit;
            for s in self.store().load(&seqs).await? {
                last = last.max(s.seq);
                let itself = s.resource_type == "Patient" && s.id == patient;
                if !(itself || s.deleted || is_index_record(&s)) {
                    out.push(s);
                }
            }
            if done {
                break;
            }
        }
        Ok(out)
    }

    async fn merge_request(&self, parameters: &Value) -> Result<MergeRequest, FhirError> {
        Self::merge_request_names(parameters)?;
        let Some(source) = self.merge_party(parameters, "source-patient").await? else {
            return Err(FhirError::bad_request("$merge needs source-patient (or source-patient-identifier)").at("Parameters.parameter"));
        };
        let Some(target) = self.merge_party(parameters, "target-patient").await? else {
            return Err(FhirError::bad_request("$merge needs target-patient (or target-patient-identifier)").at("Parameters.parameter"));
        };
        if source == target {
            return Err(FhirError::unprocessable("source-patient and target-patient are the same record").at("source-patient"));
        }
        let preview = match param(parameters, "preview") {
            None => false,
            Some(p) => p["valueBoolean"].as_bool().ok_or_else(|| FhirError::bad_request("preview takes valueBoolean").at("preview"))?,
        };
        let result = param(parameters, "result-patient").map(|p| p["resource"].clone());
        Ok(MergeRequest { source, target, result, preview })
    }

    /// `POST Patient/$merge` (R5-style Parameters in and out).
    pub async fn merge(&self, access: &Access, parameters: Value) -> Result<Value, FhirError> {
        access.require_scope("Patient", tessera_auth::ScopeOp::Update)?;
        Self::require_merge_role(&self.gate(access))?;
        let request = self.merge_request(&parameters).await?;
        let mut gate = self.gate(access);
        for _ in 0..8 {
            match self.try_merge(&mut gate, &request, &parameters).await {
                Err(e) if e.status == 409 && e.issues.first().is_some_and(|i| i.code == IssueType::Conflict) => continue,
                other => return other,
            }
        }
        Err(FhirError::new(409, IssueType::Conflict, "the records kept changing during the merge; try again"))
    }

    async fn try_merge(&self, gate: &mut Gate<'_>, request: &MergeRequest, parameters: &Value) -> Result<Value, FhirError> {
        let (source_id, target_id) = (&request.source, &request.target);
        let load = |id: &str| {
            let id = id.to_string();
            async move { self.store().read("Patient", &id).await.map(|s| s.filter(|s| !s.deleted)) }
        };
        let Some(source) = load(source_id).await? else { return Err(FhirError::not_found("Patient", source_id)) };
        let Some(target) = load(target_id).await? else { return Err(FhirError::not_found("Patient", target_id)) };
        let (source_json, target_json) = (json_of(&source)?, json_of(&target)?);
        // A subject who may not merge learns nothing about the records.
        self.check_merge_permission(gate, &source, &target).await?;
        if merged_away(&source_json) {
            let into = replaced_by(&source_json).unwrap_or_default();
            return Err(FhirError::unprocessable(format!("Patient/{source_id} has already been merged (into Patient/{into})")).at("source-patient"));
        }
        if merged_away(&target_json) {
            return Err(FhirError::unprocessable(format!("Patient/{target_id} has been merged into another record: merge into that one")).at("target-patient"));
        }
        let record_id = new_id();
        // The target: the result given, or the target with the source's identifiers.
        let mut target_new = match &request.result {
            Some(r) => {
                let map = self.validated("Patient", r.clone()).map_err(|e| e.within("result-patient"))?;
                if map.get("id").and_then(Value::as_str).is_some_and(|id| id != target_id) {
                    return Err(FhirError::unprocessable("result-patient must have the id of the target-patient").at("result-patient.id"));
                }
                map
            }
            None => {
                let Value::Object(mut map) = target_json.clone() else { return Err(FhirError::internal("stored Patient is not an object")) };
                let mut idents: Vec<Value> = map.get("identifier").and_then(Value::as_array).cloned().unwrap_or_default();
                for ident in source_json["identifier"].as_array().into_iter().flatten() {
                    let key = (ident["system"].as_str(), ident["value"].as_str());
                    if !idents.iter().any(|e| (e["system"].as_str(), e["value"].as_str()) == key) {
                        let mut ident = ident.clone();
                        ident["use"] = "old".into();
                        idents.push(ident);
                    }
                }
                if !idents.is_empty() {
                    map.insert("identifier".into(), Value::Array(idents));
                }
                map
            }
        };
        strip_version(&mut target_new);
        target_new.insert("resourceType".into(), "Patient".into());
        target_new.insert("id".into(), target_id.clone().into());
        let mut links: Vec<Value> = target_new.get("link").and_then(Value::as_array).cloned().unwrap_or_default();
        links.retain(|l| l["other"]["reference"] != format!("Patient/{source_id}"));
        links.push(json!({"other": {"reference": format!("Patient/{source_id}")}, "type": "replaces"}));
        target_new.insert("link".into(), Value::Array(links));
        let Value::Object(mut source_new) = source_json.clone() else { return Err(FhirError::internal("stored Patient is not an object")) };
        strip_version(&mut source_new);
        source_new.insert("active".into(), false.into());
        let mut links: Vec<Value> = source_new.get("link").and_then(Value::as_array).cloned().unwrap_or_default();
        links.push(json!({
            "extension": [{"url": MERGE_RECORD, "valueReference": {"reference": format!("Provenance/{record_id}")}}],
            "other": {"reference": format!("Patient/{target_id}")},
            "type": "replaced-by",
        }));
        source_new.insert("link".into(), Value::Array(links));
        let target_new = self.validated("Patient", Value::Object(target_new)).map_err(|e| e.within("result-patient"))?;
        let source_new = self.validated("Patient", Value::Object(source_new))?;

        // Everything of the source's compartment now refers to the target.
        let from = format!("Patient/{source_id}");
        let to = format!("Patient/{target_id}");
        let mut moved = vec![Moved { current: target.clone(), content: target_new }, Moved { current: source.clone(), content: source_new }];
        for s in self.compartment_members(source_id).await? {
            let mut v = json_of(&s)?;
            tessera_fhir::reference::for_each_reference_mut(&mut v, &mut |r| {
                if r == &from || r.ends_with(&format!("/{from}")) {
                    *r = to.clone();
                } else if let Some(rest) = r.strip_prefix(&format!("{from}/_history/")) {
                    *r = format!("{to}/_history/{rest}");
                }
            });
            let Value::Object(mut content) = v else { continue };
            strip_version(&mut content);
            moved.push(Moved { current: s, content });
        }

        // The answer: what changes, without showing what the subject may not see.
        let mut visible: BTreeMap<String, usize> = BTreeMap::new();
        let mut unseen = 0usize;
        for m in &moved[2..] {
            match gate.visibility(&m.current).await? {
                crate::guard::Visibility::Visible => *visible.entry(m.current.resource_type.clone()).or_default() += 1,
                _ => unseen += 1,
            }
        }
        let summary = {
            let mut parts: Vec<String> = visible.iter().map(|(t, n)| format!("{n} {t}")).collect();
            if unseen > 0 {
                parts.push(format!("{unseen} further resource(s) you may not see"));
            }
            let list = if parts.is_empty() { "no other resources".to_string() } else { parts.join(", ") };
            format!("Patient/{source_id} {} merged into Patient/{target_id}: {list} move to the target's record", if request.preview { "would be" } else { "was" })
        };

        let mut writes = Vec::with_capacity(moved.len() + 1);
        for m in &moved {
            let author = author_of(&json_of(&m.current)?);
            let stamp = Stamp { owner: m.current.owner.clone(), author };
            writes.push(prepare_write(m.content.clone(), &m.current.id, m.current.version + 1, Precondition::Version(m.current.version), &stamp)?);
        }
        let result_patient = writes[0].clone();
        if !request.preview {
            let provenance = self.index_provenance(gate, &record_id, "merge", "Patient merge", &moved, &writes)?;
            writes.push(provenance);
            let entities = vec![format!("Patient/{source_id}"), format!("Patient/{target_id}"), format!("Provenance/{record_id}")];
            gate.record_noted("$merge", true, &entities, vec![source_id.clone(), target_id.clone()], &summary);
            match self.commit_gated(gate, writes).await {
                Ok(()) => {}
                Err(StoreError::Conflict { .. }) => {
                    gate.take_audit();
                    return Err(FhirError::new(409, IssueType::Conflict, "a record changed during the merge"));
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            gate.record_noted("$merge", true, &[format!("Patient/{source_id}"), format!("Patient/{target_id}")], vec![source_id.clone(), target_id.clone()], &format!("preview: {summary}"));
            gate.flush().await?;
        }
        let mut out = vec![
            json!({"name": "input", "resource": parameters}),
            json!({"name": "outcome", "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": summary}]}}),
        ];
        let result = crate::patient_index::stored_of(&result_patient);
        if let Decided::Visible(r) = gate.release(result).await? {
            let v: Value = serde_json::from_slice(&r.json).unwrap_or(Value::Null);
            out.push(json!({"name": "result", "resource": v}));
        }
        gate.flush().await?;
        Ok(json!({"resourceType": "Parameters", "parameter": out}))
    }

    /// The record of a merge or unmerge: a Provenance whose `target` lists the versions
    /// written and whose `entity` lists, in the same order, the versions before.
    fn index_provenance(&self, gate: &Gate<'_>, id: &str, code: &str, display: &str, moved: &[Moved], writes: &[Write]) -> Result<Write, FhirError> {
        let targets: Vec<Value> = writes.iter().map(|w| json!({"reference": format!("{}/{}/_history/{}", w.resource_type, w.id, w.version)})).collect();
        let entities: Vec<Value> = moved
            .iter()
            .map(|m| json!({"role": "revision", "what": {"reference": format!("{}/{}/_history/{}", m.current.resource_type, m.current.id, m.current.version)}}))
            .collect();
        let access = gate.access();
        let provenance = json!({
            "resourceType": "Provenance",
            "target": targets,
            "recorded": crate::prepare::format_instant(tessera_store::now_micros()),
            "activity": {"coding": [{"system": INDEX_SYSTEM, "code": code, "display": display}]},
            "agent": [{"who": {"reference": access.reference()}, "onBehalfOf": {"reference": format!("Organization/{}", access.organisation)}}],
            "entity": entities,
        });
        crate::invariants::check_write(&provenance, &self.config().limits, None).map_err(FhirError::invalid)?;
        let Value::Object(map) = provenance else { unreachable!() };
        let stamp = Stamp { owner: Some(access.organisation.clone()), author: Some(access.subject.clone()) };
        prepare_write(map, id, 1, Precondition::Absent, &stamp)
    }

    /// `POST Patient/$unmerge`: restores the records as they were before the merge of
    /// `source-patient`, unless later writes make that unsafe.
    pub async fn unmerge(&self, access: &Access, parameters: Value) -> Result<Value, FhirError> {
        access.require_scope("Patient", tessera_auth::ScopeOp::Update)?;
        let mut gate = self.gate(access);
        Self::require_merge_role(&gate)?;
        Self::merge_request_names(&parameters)?;
        let Some(source_id) = self.merge_party(&parameters, "source-patient").await? else {
            return Err(FhirError::bad_request("$unmerge needs source-patient: the record that was merged away").at("Parameters.parameter"));
        };
        let Some(source) = self.store().read("Patient", &source_id).await?.filter(|s| !s.deleted) else {
            return Err(FhirError::not_found("Patient", &source_id));
        };
        let source_json = json_of(&source)?;
        let link = source_json["link"].as_array().and_then(|l| l.iter().rev().find(|l| l["type"] == "replaced-by")).cloned();
        let record = link.as_ref().and_then(|l| l["extension"].as_array()?.iter().find(|e| e["url"] == MERGE_RECORD)?["valueReference"]["reference"].as_str().map(str::to_string));
        let (Some(link), Some(record)) = (link, record) else {
            return Err(FhirError::unprocessable(format!("Patient/{source_id} was not merged by this server's $merge: nothing to unmerge")).at("source-patient"));
        };
        let target_id = link["other"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).unwrap_or_default().to_string();
        if let Some(t) = self.merge_party(&parameters, "target-patient").await? {
            if t != target_id {
                return Err(FhirError::unprocessable(format!("Patient/{source_id} was merged into Patient/{target_id}, not Patient/{t}")).at("target-patient"));
            }
        }
        let Some(target) = self.store().read("Patient", &target_id).await? else { return Err(FhirError::not_found("Patient", &target_id)) };
        self.check_merge_permission(&gate, &source, &target).await?;
        let record_id = record.trim_start_matches("Provenance/");
        let Some(provenance) = self.store().read("Provenance", record_id).await?.filter(|p| !p.deleted) else {
            return Err(FhirError::unprocessable(format!("the record of this merge ({record}) is missing: cannot unmerge")));
        };
        let provenance = json_of(&provenance)?;
        let written: Vec<&str> = provenance["target"].as_array().into_iter().flatten().filter_map(|t| t["reference"].as_str()).collect();
        let before: Vec<&str> = provenance["entity"].as_array().into_iter().flatten().filter_map(|e| e["what"]["reference"].as_str()).collect();
        if written.len() != before.len() {
            return Err(FhirError::internal(format!("the merge record {record} is malformed")));
        }
        // Safe only if nothing the merge wrote has changed since.
        let mut moved = Vec::with_capacity(written.len());
        let mut changed_visible = Vec::new();
        let mut changed_hidden = 0usize;
        for (w, b) in written.iter().zip(&before) {
            let parse = |r: &str| -> Option<(String, String, u64)> {
                let mut it = r.split('/');
                let (t, id, _, v) = (it.next()?, it.next()?, it.next()?, it.next()?.parse().ok()?);
                Some((t.to_string(), id.to_string(), v))
            };
            let (Some((ty, id, wv)), Some((_, _, bv))) = (parse(w), parse(b)) else {
                return Err(FhirError::internal(format!("the merge record {record} is malformed")));
            };
            let Some(current) = self.store().read(&ty, &id).await? else { continue };
            if current.version != wv {
                match gate.visibility(&current).await? {
                    crate::guard::Visibility::Visible => changed_visible.push(format!("{ty}/{id} (version {} now, {wv} after the merge)", current.version)),
                    _ => changed_hidden += 1,
                }
                continue;
            }
            let Some(old) = self.store().vread(&ty, &id, bv).await? else {
                return Err(FhirError::internal(format!("{ty}/{id} version {bv} is missing")));
            };
            let Value::Object(mut content) = json_of(&old)? else { continue };
            strip_version(&mut content);
            moved.push((current, content, old));
        }
        if !changed_visible.is_empty() || changed_hidden > 0 {
            let mut what = changed_visible;
            if changed_hidden > 0 {
                what.push(format!("{changed_hidden} resource(s) you may not see"));
            }
            gate.record_noted("$unmerge", false, &[format!("Patient/{source_id}"), format!("Patient/{target_id}")], vec![source_id.clone(), target_id.clone()], "refused: records changed since the merge");
            gate.finish().await?;
            return Err(FhirError::new(
                409,
                IssueType::Conflict,
                format!(
                    "unmerging Patient/{source_id} from Patient/{target_id} is not safe: these changed after the merge, and restoring the records would undo or misplace those changes: {}. Review them, then correct the records by hand",
                    what.join("; ")
                ),
            ));
        }
        let mut writes = Vec::with_capacity(moved.len() + 1);
        let mut pairs = Vec::with_capacity(moved.len());
        for (current, content, old) in moved {
            let author = author_of(&json_of(&old)?);
            let stamp = Stamp { owner: old.owner.clone(), author };
            writes.push(prepare_write(content.clone(), &current.id, current.version + 1, Precondition::Version(current.version), &stamp)?);
            pairs.push(Moved { current, content });
        }
        let restored = writes.len();
        let id = new_id();
        let provenance = self.index_provenance(&gate, &id, "unmerge", "Patient unmerge", &pairs, &writes)?;
        writes.push(provenance);
        let summary = format!("Patient/{source_id} unmerged from Patient/{target_id}: {restored} versions restored as they were before the merge ({record})");
        gate.record_noted("$unmerge", true, &[format!("Patient/{source_id}"), format!("Patient/{target_id}"), format!("Provenance/{id}")], vec![source_id.clone(), target_id.clone()], &summary);
        match self.commit_gated(&mut gate, writes).await {
            Ok(()) => {}
            Err(StoreError::Conflict { .. }) => {
                return Err(FhirError::new(409, IssueType::Conflict, "a record changed during the unmerge; try again"));
            }
            Err(e) => return Err(e.into()),
        }
        Ok(json!({
            "resourceType": "Parameters",
            "parameter": [{"name": "outcome", "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational", "diagnostics": summary}]}}],
        }))
    }

    /// `POST Task/[id]/$resolve` (and `tessera empi review`): a decision on a worklist
    /// pair — `merge` (the newer record into the older), `not-duplicate` (remembered: the
    /// pair never returns) or `defer`.
    pub async fn resolve_candidate(&self, access: &Access, task_id: &str, decision: &str, note: Option<&str>) -> Result<Value, FhirError> {
        if !matches!(decision, "merge" | "not-duplicate" | "defer") {
            return Err(FhirError::bad_request(format!("'{decision}' is not a decision: merge, not-duplicate or defer")).at("decision"));
        }
        let mut gate = self.gate(access);
        let Some(task) = self.store().read("Task", task_id).await?.filter(|t| !t.deleted && is_index_record(t)) else {
            return Err(FhirError::not_found("Task", task_id));
        };
        if !matches!(gate.visibility(&task).await?, crate::guard::Visibility::Visible) {
            return Err(FhirError::not_found("Task", task_id));
        }
        let v = json_of(&task)?;
        if v["code"]["coding"][0]["code"] != WORKLIST_CODE {
            return Err(FhirError::not_found("Task", task_id));
        }
        if !matches!(v["status"].as_str(), Some("requested" | "on-hold")) {
            return Err(FhirError::unprocessable(format!("Task/{task_id} has been decided already ({})", v["businessStatus"]["text"].as_str().unwrap_or("completed"))));
        }
        let newer = v["focus"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).unwrap_or_default().to_string();
        let older = v["for"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).unwrap_or_default().to_string();
        let (status, business) = match decision {
            "merge" => ("completed", "merged"),
            "not-duplicate" => ("completed", "not-duplicate"),
            "defer" => ("on-hold", "deferred"),
            other => return Err(FhirError::bad_request(format!("'{other}' is not a decision: merge, not-duplicate or defer")).at("decision")),
        };
        if decision == "merge" {
            let params = json!({"resourceType": "Parameters", "parameter": [
                {"name": "source-patient", "valueReference": {"reference": format!("Patient/{newer}")}},
                {"name": "target-patient", "valueReference": {"reference": format!("Patient/{older}")}},
            ]});
            self.merge(access, params).await?;
        } else {
            // Deciding needs the same permission as merging the pair would.
            let (Some(a), Some(b)) = (self.store().read("Patient", &newer).await?, self.store().read("Patient", &older).await?) else {
                return Err(FhirError::unprocessable("a record of this pair no longer exists"));
            };
            self.check_merge_permission(&gate, &a, &b).await?;
        }
        let Value::Object(mut map) = v else { unreachable!() };
        strip_version(&mut map);
        map.insert("status".into(), status.into());
        map.insert("businessStatus".into(), json!({"coding": [{"system": INDEX_SYSTEM, "code": business}], "text": business}));
        map.insert("lastModified".into(), crate::prepare::format_instant(tessera_store::now_micros()).into());
        map.insert("owner".into(), json!({"reference": access.reference()}));
        if let Some(n) = note.filter(|n| !n.trim().is_empty()) {
            map.insert("note".into(), json!([{"text": n}]));
        }
        crate::invariants::check_write(&Value::Object(map.clone()), &self.config().limits, None).map_err(FhirError::invalid)?;
        let author = Some(access.subject.clone());
        let write = prepare_write(map, task_id, task.version + 1, Precondition::Version(task.version), &Stamp { owner: task.owner.clone(), author })?;
        let json = write.json.clone();
        gate.record_noted("$resolve", true, &[format!("Task/{task_id}")], vec![newer, older], &format!("duplicate review: {decision}"));
        self.commit_gated(&mut gate, vec![write]).await?;
        serde_json::from_slice(&json).map_err(|e| FhirError::internal(e.to_string()))
    }
}
