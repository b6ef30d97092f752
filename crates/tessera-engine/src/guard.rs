//! The one enforcement point.
//!
//! Every engine path that reads or writes clinical data goes through a [`Gate`]: it asks
//! the policy (`tessera-policy`) for a decision on each resource, given who is asking
//! ([`Access`]), the resource's facts (type, owner, patient, security labels, author) and
//! the patient's facts (care relationship, break-glass grant, confidentiality, consent),
//! and it records what happened for the audit trail. Deny unless a rule allows: hidden
//! data behaves as absent; data behind break-glass is withheld (with a marker when the
//! domain says so).

use crate::access::{Access, AccessKind};
use crate::{Engine, FhirError};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_domain::{Domain, RelationshipScope, Role};
use tessera_fhir::IssueType;
use tessera_policy::{Action, Confidentiality, Decision, PatientFacts, ResourceFacts, Subject, SubjectKind};
use tessera_store::{NewAudit, Stored};

/// Tessera's own coding systems.
pub const OWNER_SYSTEM: &str = "https://tessera.health/owner";
pub const AUTHOR_SYSTEM: &str = "https://tessera.health/author";

/// What a decision on one resource means for a reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Visibility {
    Visible,
    /// Exists, but only after breaking the glass.
    BehindGlass,
    /// Behaves as absent.
    Hidden,
}

/// A stored version that the [`Gate`] has released to the subject of one request.
///
/// Only this module makes one ([`Gate::release`], [`Gate::release_version`]), and only a
/// `Released` (or the subject's own write) can become the body of a response: a
/// [`VersionedResource`] is made from one, and the engine's Bundles take stored resources
/// only as `Released` ([`crate::bundle::BundleWriter::resource`]). The store hands out
/// [`Stored`] rows, which no response accepts: a read path that skipped the gate would not
/// compile.
#[derive(Debug, Clone)]
pub struct Released(Stored);

impl Released {
    /// A contained resource listed through its container (`_containedType=contained`):
    /// released because the container was.
    pub(crate) fn contained(&self, listed: Stored) -> Released {
        debug_assert_eq!(listed.seq, self.0.seq, "a contained resource is listed with its container's seq");
        Released(listed)
    }
}

impl std::ops::Deref for Released {
    type Target = Stored;
    fn deref(&self) -> &Stored {
        &self.0
    }
}

/// The gate's answer on one stored version.
#[derive(Debug)]
pub enum Decided {
    Visible(Released),
    /// Exists, but only after breaking the glass.
    BehindGlass,
    /// Behaves as absent.
    Hidden,
}

/// A resource version as the engine hands it out: its JSON bytes and the facts the
/// transport needs for headers (`ETag`, `Last-Modified`, `Location`). Made only from a
/// [`Released`] version or from a write the gate authorised.
#[derive(Debug, Clone)]
pub struct VersionedResource {
    resource_type: String,
    id: String,
    version: u64,
    last_updated_micros: i64,
    deleted: bool,
    /// The resource JSON (empty for a deletion, or when the response carries no body).
    json: Vec<u8>,
}

impl From<Released> for VersionedResource {
    fn from(Released(s): Released) -> Self {
        VersionedResource {
            resource_type: s.resource_type,
            id: s.id,
            version: s.version,
            last_updated_micros: s.last_updated_micros,
            deleted: s.deleted,
            json: s.json,
        }
    }
}

impl VersionedResource {
    /// The version a write (authorised by the gate) creates, with its body.
    pub(crate) fn written(w: &tessera_store::Write) -> Self {
        VersionedResource { json: w.json.clone(), ..Self::written_head(w) }
    }

    /// The answer to a registration the patient index linked to a record the subject may
    /// not see: the subject's own submission, under the linked record's id and version.
    /// Nothing of the existing record but its id is revealed.
    pub(crate) fn own_submission(linked: &Stored, submitted: &serde_json::Value) -> Self {
        let mut v = submitted.clone();
        if let Some(m) = v.as_object_mut() {
            m.insert("id".into(), linked.id.clone().into());
            m.insert(
                "meta".into(),
                serde_json::json!({"versionId": linked.version.to_string(), "lastUpdated": crate::prepare::format_instant(linked.last_updated_micros)}),
            );
        }
        VersionedResource {
            resource_type: linked.resource_type.clone(),
            id: linked.id.clone(),
            version: linked.version,
            last_updated_micros: linked.last_updated_micros,
            deleted: false,
            json: serde_json::to_vec(&v).unwrap_or_default(),
        }
    }

    /// [`VersionedResource::written`] without the body (for responses that carry none).
    pub(crate) fn written_head(w: &tessera_store::Write) -> Self {
        VersionedResource {
            resource_type: w.resource_type.clone(),
            id: w.id.clone(),
            version: w.version,
            last_updated_micros: w.last_updated_micros,
            deleted: w.deleted,
            json: Vec::new(),
        }
    }

    pub fn resource_type(&self) -> &str {
        &self.resource_type
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn last_updated_micros(&self) -> i64 {
        self.last_updated_micros
    }

    pub fn deleted(&self) -> bool {
        self.deleted
    }

    /// The resource JSON (empty for a deletion).
    pub fn json(&self) -> &[u8] {
        &self.json
    }

    pub fn into_json(self) -> Vec<u8> {
        self.json
    }

    /// `W/"<version>"`
    pub fn etag(&self) -> String {
        format!("W/\"{}\"", self.version)
    }

    /// `Type/id/_history/version`
    pub fn versioned_reference(&self) -> String {
        format!("{}/{}/_history/{}", self.resource_type, self.id, self.version)
    }

    /// `meta.lastUpdated` as a FHIR instant.
    pub fn last_updated(&self) -> String {
        crate::prepare::format_instant(self.last_updated_micros)
    }
}

/// Facts read from a stored resource's `meta` without building its JSON tree.
#[derive(Default)]
struct MetaFacts {
    security: Vec<(String, String)>,
    author: Option<String>,
}

fn meta_facts(json: &[u8]) -> MetaFacts {
    #[derive(serde::Deserialize)]
    struct Coding {
        system: Option<String>,
        code: Option<String>,
    }
    #[derive(serde::Deserialize, Default)]
    struct Meta {
        #[serde(default)]
        security: Vec<Coding>,
        #[serde(default)]
        tag: Vec<Coding>,
    }
    #[derive(serde::Deserialize)]
    struct Head {
        #[serde(default)]
        meta: Option<Meta>,
    }
    // Most resources carry no security labels, and the author matters only for sealed
    // (labelled) data: skip the parse unless labels are present.
    if memchr::memmem::find(json, b"\"security\"").is_none() {
        return MetaFacts::default();
    }
    let Ok(head) = serde_json::from_slice::<Head>(json) else { return MetaFacts::default() };
    let meta = head.meta.unwrap_or_default();
    MetaFacts {
        security: meta.security.into_iter().filter_map(|c| Some((c.system.unwrap_or_default(), c.code?))).collect(),
        author: meta.tag.into_iter().find(|c| c.system.as_deref() == Some(AUTHOR_SYSTEM)).and_then(|c| c.code),
    }
}

/// A patient's confidentiality from the `meta.security` of their Patient resource.
pub fn confidentiality_of(patient_json: &[u8]) -> Option<Confidentiality> {
    let labels = meta_facts(patient_json).security;
    let pairs: Vec<(&str, &str)> = labels.iter().map(|(s, c)| (s.as_str(), c.as_str())).collect();
    Confidentiality::from_security(&pairs)
}

/// The enforcement state of one request.
pub struct Gate<'a> {
    engine: &'a Engine,
    access: &'a Access,
    domain: Arc<Domain>,
    role: Option<Role>,
    patients: HashMap<String, PatientFacts>,
    audit: Vec<NewAudit>,
    /// Whether a decision since the last audit record relied on a break-glass grant.
    used_break_glass: bool,
}

impl Engine {
    /// Opens the enforcement point for one request.
    pub fn gate<'a>(&'a self, access: &'a Access) -> Gate<'a> {
        let domain = self.domain();
        let role = access.role.as_deref().and_then(|r| domain.role(r)).cloned();
        Gate { engine: self, access, domain, role, patients: HashMap::new(), audit: Vec::new(), used_break_glass: false }
    }
}

impl<'a> Gate<'a> {
    pub fn access(&self) -> &Access {
        self.access
    }

    fn enforced(&self) -> bool {
        self.engine.config().enforce()
    }

    fn subject(&self) -> Subject<'_> {
        match self.access.kind {
            AccessKind::System if self.access.is_domain_bootstrap() => Subject::domain(&self.access.organisation),
            AccessKind::System => Subject::system(&self.access.subject, &self.access.organisation),
            // Decided before the policy (`read_decision`, `authorize_write`): never reaches it
            // but as a subject of no organisation, which no rule permits.
            AccessKind::Patient => Subject::system(&self.access.subject, ""),
            AccessKind::User => Subject {
                kind: SubjectKind::User { id: &self.access.subject },
                organisation: &self.access.organisation,
                locations: &self.access.locations,
                role: self.role.as_ref(),
            },
        }
    }

    /// The patient facts the policy needs, once per patient per request (their
    /// ingredients are cached across requests; see [`crate::cache`]).
    pub async fn patient_facts(&mut self, patient: &str) -> Result<PatientFacts, FhirError> {
        if let Some(f) = self.patients.get(patient) {
            return Ok(*f);
        }
        let now = tessera_store::now_micros();
        let record = self.engine.patient_record(patient).await?;
        let expiry = self.domain.settings.relationship_days_after_discharge as i64 * 86_400_000_000;
        let subject_trust = self.domain.trust_of(&self.access.organisation).to_string();
        let mut facts = PatientFacts { confidentiality: record.confidentiality, ..PatientFacts::default() };
        // The role's granularity: a care link anywhere at the user's site, or only at the
        // user's own locations (a link naming the user always counts).
        let site_level = self.role.as_ref().is_none_or(|r| r.relationship == RelationshipScope::Site);
        for link in record.links.iter() {
            let current = link.active
                && link.start_micros.is_none_or(|s| s <= now + 86_400_000_000)
                && link.end_micros.is_none_or(|e| e + if link.kind == "consent-deny" { 0 } else { expiry } >= now);
            if !current {
                continue;
            }
            if link.kind == "consent-deny" {
                facts.dissents_from_sharing = true;
                continue;
            }
            if facts.relationship {
                continue; // only dissent is still to be found
            }
            let by_person = link.practitioner.as_deref().is_some_and(|p| self.access.kind == AccessKind::User && p == self.access.subject);
            let by_location = link.location.as_ref().is_some_and(|l| self.access.locations.contains(l));
            if by_person || by_location {
                facts.relationship = true;
                continue;
            }
            // Systems act for their whole trust; site-level users without locations too.
            let trust_wide = self.access.kind == AccessKind::System || (site_level && self.access.locations.is_empty());
            if !site_level && !trust_wide {
                continue;
            }
            let org = link.organisation.as_deref().or_else(|| link.location.as_deref().and_then(|l| self.domain.location(l)).map(|l| l.organisation.as_str()));
            let by_site = site_level && org.is_some_and(|o| o == self.access.organisation);
            if by_site || (trust_wide && org.is_some_and(|o| self.domain.trust_of(o) == subject_trust)) {
                facts.relationship = true;
            }
        }
        if self.access.kind == AccessKind::User {
            facts.break_glass = self.engine.break_glass_expiry(&self.access.subject, patient).await? > now;
        }
        self.patients.insert(patient.to_string(), facts);
        Ok(facts)
    }

    /// Whether the token's scopes let this subject see resources of `resource_type` at all
    /// (read or search). A scope only ever narrows what the policy allows.
    pub fn scope_allows(&self, resource_type: &str) -> bool {
        let scopes = &self.access.scopes;
        scopes.allows(resource_type, tessera_auth::ScopeOp::Read) || scopes.allows(resource_type, tessera_auth::ScopeOp::Search)
    }

    /// The policy decision on reading one stored version with content (a deletion is
    /// decided by the version before it: see [`Gate::visibility`]).
    async fn read_decision(&mut self, s: &Stored) -> Result<Decision, FhirError> {
        if !self.scope_allows(&s.resource_type) {
            return Ok(Decision::Deny);
        }
        if let Some(patient) = self.access.compartment_bound(&s.resource_type) {
            let in_record = if s.resource_type == "Patient" { s.id == patient } else { s.compartment.as_deref() == Some(patient) };
            if patient.is_empty() || !in_record || crate::merge::is_index_record(s) {
                return Ok(Decision::Deny);
            }
            if self.access.kind == AccessKind::Patient {
                // The patient's own record, read-only: every resource of it.
                return Ok(Decision::Permit);
            }
        }
        self.policy_read_decision(s).await
    }

    /// [`Gate::read_decision`] by the policy alone: for writes, whose scope is checked as a
    /// write (a write-only interface may change what its organisation owns).
    async fn policy_read_decision(&mut self, s: &Stored) -> Result<Decision, FhirError> {
        // The bootstrap account is unrestricted: no facts to gather.
        if !self.enforced() || self.access.is_domain_bootstrap() {
            return Ok(Decision::Permit);
        }
        // Change requests: for those who read configuration and those who sign them off.
        if crate::governance::is_change_request(s) {
            let g = &self.domain.governance;
            let user = &self.access.subject;
            let signs = g.leads.iter().any(|l| l.users.contains(user)) || g.clinical_safety_officers.contains(user) || g.emergency_approvers.contains(user);
            let reads_config = self.role.as_ref().and_then(|r| r.permissions.get(&tessera_domain::DataClass::Configuration)).is_some_and(|p| p.read);
            return Ok(if self.access.kind == AccessKind::User && (signs || reads_config) { Decision::Permit } else { Decision::Deny });
        }
        // The patient index's own records (worklist, merge records): for those who merge.
        if crate::merge::is_index_record(s) {
            let own = self.domain.trust_of(&self.access.organisation);
            return Ok(match crate::merge::merge_scope(self) {
                tessera_domain::MergeScope::Domain => Decision::Permit,
                tessera_domain::MergeScope::Trust if s.owner.as_deref().is_some_and(|o| self.domain.trust_of(o) == own) => Decision::Permit,
                _ => Decision::Deny,
            });
        }
        // Subscriptions name their receivers and carry their credentials (`channel.header`):
        // only their own trust reads (and so changes) them.
        if s.resource_type == "Subscription" {
            let own = self.domain.trust_of(&self.access.organisation);
            if s.owner.as_deref().is_none_or(|o| self.domain.trust_of(o) != own) {
                return Ok(Decision::Deny);
            }
        }
        let facts = meta_facts(&s.json);
        let patient = if s.resource_type == "Patient" { Some(s.id.as_str()) } else { s.compartment.as_deref() };
        let pf = match patient {
            Some(p) => Some(self.patient_facts(p).await?),
            None => None,
        };
        let security: Vec<(&str, &str)> = facts.security.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let rf = ResourceFacts {
            resource_type: &s.resource_type,
            owner: s.owner.as_deref(),
            patient,
            security: &security,
            author: facts.author.as_deref(),
        };
        let verdict = tessera_policy::evaluate(&self.domain, &self.subject(), Action::Read, &rf, pf.as_ref());
        if verdict.decision == Decision::Permit && verdict.under_break_glass() {
            self.used_break_glass = true;
        }
        Ok(verdict.decision)
    }

    /// The last version of a resource that had content, for a deletion (`None` if it never
    /// had any): a deletion is decided with the facts of what it deleted.
    async fn last_live(&self, deleted: &Stored) -> Result<Option<Stored>, FhirError> {
        let mut version = deleted.version;
        while version > 1 {
            version -= 1;
            if let Some(v) = self.engine.store().vread(&deleted.resource_type, &deleted.id, version).await? {
                if !v.deleted {
                    return Ok(Some(v));
                }
            }
        }
        Ok(None)
    }

    /// Visibility of one stored version to this reader. A deletion is decided like the
    /// version it deleted, and is never offered behind the glass: a deleted resource the
    /// reader could not have seen behaves as an unknown id.
    pub async fn visibility(&mut self, s: &Stored) -> Result<Visibility, FhirError> {
        if s.deleted {
            let decision = match self.last_live(s).await? {
                Some(live) => self.read_decision(&live).await?,
                // Nothing to judge by but the type, owner and compartment.
                None => self.read_decision(s).await?,
            };
            return Ok(if decision == Decision::Permit { Visibility::Visible } else { Visibility::Hidden });
        }
        Ok(match self.read_decision(s).await? {
            Decision::Permit => Visibility::Visible,
            Decision::BreakGlass if self.domain.settings.break_glass_marker => Visibility::BehindGlass,
            _ => Visibility::Hidden,
        })
    }

    /// Decides on a current version and, when the subject may see it, releases it.
    pub async fn release(&mut self, s: Stored) -> Result<Decided, FhirError> {
        Ok(match self.visibility(&s).await? {
            Visibility::Visible => Decided::Visible(Released(s)),
            Visibility::BehindGlass => Decided::BehindGlass,
            Visibility::Hidden => Decided::Hidden,
        })
    }

    /// [`Gate::release`] for an older version ([`Gate::version_visibility`]).
    pub async fn release_version(&mut self, version: Stored, current: Option<&Stored>) -> Result<Decided, FhirError> {
        Ok(match self.version_visibility(&version, current).await? {
            Visibility::Visible => Decided::Visible(Released(version)),
            Visibility::BehindGlass => Decided::BehindGlass,
            Visibility::Hidden => Decided::Hidden,
        })
    }

    /// Visibility of an older version (vread, history): the strictest of that version's
    /// and the current version's, so that relabelling, sealing or deleting a resource
    /// also covers its past.
    pub async fn version_visibility(&mut self, version: &Stored, current: Option<&Stored>) -> Result<Visibility, FhirError> {
        let mine = self.visibility(version).await?;
        let now = match current {
            Some(c) if c.version != version.version => self.visibility(c).await?,
            _ => mine,
        };
        Ok(strictest(mine, now))
    }

    /// May this subject write (`action`) a resource? `existing` is the current version
    /// (for updates and deletes), `new` the resource to be stored (creates and updates).
    /// A hidden existing resource is reported as absent (404).
    pub async fn authorize_write(
        &mut self,
        action: Action,
        resource_type: &str,
        id: &str,
        existing: Option<&Stored>,
        new: Option<&serde_json::Value>,
    ) -> Result<(), FhirError> {
        let op = match action {
            Action::Create => tessera_auth::ScopeOp::Create,
            Action::Write => tessera_auth::ScopeOp::Update,
            Action::Delete => tessera_auth::ScopeOp::Delete,
            Action::Read => tessera_auth::ScopeOp::Read,
        };
        self.access.require_scope(resource_type, op)?;
        if self.access.kind == AccessKind::Patient {
            return Err(FhirError::new(403, IssueType::Forbidden, "the patient portal is read-only: ask your care team to correct your record"));
        }
        // Change requests are written only by the governance operations.
        let change_request = existing.is_some_and(|c| !c.deleted && crate::governance::is_change_request(c)) || new.is_some_and(crate::governance::is_change_request_content);
        if change_request && self.access.governed_change.as_deref() != Some(id) {
            return Err(FhirError::method_not_allowed(
                "change requests are made and moved by Task/$change-request, Task/[id]/$approve, $apply and $withdraw",
            ));
        }
        if change_request {
            // The governance operation moving it has decided who may (governance.rs).
            return Ok(());
        }
        // Layered content: who writes which layer, and what a lower layer may localise; in
        // production, only through an approved change request.
        let layered = |v: &serde_json::Value| crate::content::layer_of(v).is_some();
        if crate::content::is_content_type(resource_type)
            && (new.is_some_and(layered) || existing.and_then(|c| serde_json::from_slice::<serde_json::Value>(&c.json).ok()).is_some_and(|v| layered(&v)))
            && self.engine.governance_enforced()
            && self.access.governed_change.is_none()
        {
            return Err(crate::governance::direct_change_refused(&format!("{resource_type}/{id} (layered content)")));
        }
        if let Some(value) = new.filter(|_| crate::content::is_content_type(resource_type)) {
            self.engine.check_content_write(self.access, resource_type, id, value).await?;
        }
        if let Some(patient) = self.access.compartment_bound(resource_type) {
            let in_record = |compartment: Option<&str>, own_id: &str| if resource_type == "Patient" { own_id == patient } else { compartment == Some(patient) };
            let existing_ok = existing.is_none_or(|c| in_record(c.compartment.as_deref(), &c.id));
            let new_ok = new.is_none_or(|v| {
                if resource_type == "Patient" {
                    id == patient
                } else {
                    tessera_fhir::compartment::patient_compartments(v).iter().any(|p| p == patient)
                }
            });
            if patient.is_empty() || !existing_ok || !new_ok {
                return Err(FhirError::new(
                    403,
                    IssueType::Forbidden,
                    format!("the token's patient-level scopes reach only the patient in context; {resource_type}/{id} is not in that patient's record"),
                ));
            }
        }
        if existing.is_some_and(|c| !c.deleted && crate::merge::is_index_record(c)) {
            return Err(FhirError::method_not_allowed(
                "this record is kept by the patient index: decide a worklist pair with Task/[id]/$resolve, undo a merge with Patient/$unmerge",
            ));
        }
        if !self.enforced() {
            return Ok(());
        }
        if let Some(gone) = existing.filter(|c| c.deleted) {
            // Writing over a deletion: one the subject could not have seen is an unknown id.
            let live = self.last_live(gone).await?;
            if self.policy_read_decision(live.as_ref().unwrap_or(gone)).await? != Decision::Permit {
                return Err(FhirError::not_found(resource_type, id));
            }
        }
        if let Some(cur) = existing.filter(|c| !c.deleted) {
            let seen = match self.policy_read_decision(cur).await? {
                Decision::Permit => Visibility::Visible,
                Decision::BreakGlass if self.domain.settings.break_glass_marker => Visibility::BehindGlass,
                _ => Visibility::Hidden,
            };
            match seen {
                Visibility::Hidden => return Err(FhirError::not_found(resource_type, id)),
                Visibility::BehindGlass => return Err(behind_glass(resource_type, id)),
                Visibility::Visible => {}
            }
            let facts = meta_facts(&cur.json);
            let security: Vec<(&str, &str)> = facts.security.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let patient = if cur.resource_type == "Patient" { Some(cur.id.as_str()) } else { cur.compartment.as_deref() };
            let pf = match patient {
                Some(p) => Some(self.patient_facts(p).await?),
                None => None,
            };
            let rf = ResourceFacts { resource_type, owner: cur.owner.as_deref(), patient, security: &security, author: facts.author.as_deref() };
            let a = if action == Action::Create { Action::Write } else { action };
            if tessera_policy::decide(&self.domain, &self.subject(), a, &rf, pf.as_ref()) != Decision::Permit {
                return Err(forbidden(action, resource_type, id));
            }
        }
        if let Some(value) = new {
            let security = crate::facts::security_labels(value);
            let pairs: Vec<(&str, &str)> = security.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            let patients = tessera_fhir::compartment::patient_compartments(value);
            let patient = if resource_type == "Patient" { Some(id) } else { patients.first().map(String::as_str) };
            let pf = match patient {
                Some(p) if resource_type != "Patient" || existing.is_some_and(|e| !e.deleted) => Some(self.patient_facts(p).await?),
                // Registering a new person: no relationship can exist yet.
                Some(_) => Some(PatientFacts::default()),
                None => None,
            };
            let owner = existing.and_then(|e| e.owner.clone()).or_else(|| self.owner_for(resource_type));
            let rf = ResourceFacts { resource_type, owner: owner.as_deref(), patient, security: &pairs, author: Some(&self.access.subject) };
            let a = if existing.is_some_and(|e| !e.deleted) { Action::Write } else { Action::Create };
            if tessera_policy::decide(&self.domain, &self.subject(), a, &rf, pf.as_ref()) != Decision::Permit {
                return Err(forbidden(action, resource_type, id));
            }
        }
        Ok(())
    }

    /// The owner recorded for a new resource written by this subject: its organisation;
    /// none for the Patient (the person is domain-wide).
    pub fn owner_for(&self, resource_type: &str) -> Option<String> {
        (resource_type != "Patient").then(|| self.access.organisation.clone())
    }

    /// Records a read-type access (read, search, history …) for the audit trail.
    pub fn record_access(&mut self, interaction: &str, outcome_ok: bool, entities: &[String], patients: Vec<String>, detail: Option<&str>) {
        let break_glass = std::mem::take(&mut self.used_break_glass);
        self.record(interaction, outcome_ok, entities, patients, break_glass, detail);
    }

    /// Records a write for the audit trail (committed with it).
    pub fn record_write(&mut self, interaction: &str, w: &tessera_store::Write) {
        let patients = if w.resource_type == "Patient" { vec![w.id.clone()] } else { w.compartment.iter().cloned().collect() };
        let entity = format!("{}/{}/_history/{}", w.resource_type, w.id, w.version);
        let break_glass = std::mem::take(&mut self.used_break_glass);
        self.record(interaction, true, &[entity], patients, break_glass, None);
    }

    /// [`Gate::record_write`] with a note on the audit record (the patient index's decision).
    pub fn record_write_noted(&mut self, interaction: &str, w: &tessera_store::Write, note: &str) {
        let patients = if w.resource_type == "Patient" { vec![w.id.clone()] } else { w.compartment.iter().cloned().collect() };
        let entity = format!("{}/{}/_history/{}", w.resource_type, w.id, w.version);
        let break_glass = std::mem::take(&mut self.used_break_glass);
        self.record(interaction, true, &[entity], patients, break_glass, Some(note));
    }

    /// Records an action with a note on its audit record (rendered as `outcomeDesc`).
    pub fn record_noted(&mut self, interaction: &str, outcome_ok: bool, entities: &[String], patients: Vec<String>, note: &str) {
        let break_glass = std::mem::take(&mut self.used_break_glass);
        self.record(interaction, outcome_ok, entities, patients, break_glass, Some(note));
    }

    /// Records an access for the audit trail (nothing when enforcement is off, which only a
    /// benchmark build can do).
    pub fn record(&mut self, interaction: &str, outcome_ok: bool, entities: &[String], patients: Vec<String>, break_glass: bool, detail: Option<&str>) {
        if !self.enforced() {
            return;
        }
        let event = crate::audit::event(self.access, interaction, outcome_ok, entities, &patients, break_glass, detail);
        self.audit.push(NewAudit {
            recorded_micros: tessera_store::now_micros(),
            user: Some(self.access.reference()),
            patients,
            action: interaction.to_string(),
            break_glass,
            event,
        });
    }

    /// Audit records gathered so far (to commit with a write).
    pub fn take_audit(&mut self) -> Vec<NewAudit> {
        std::mem::take(&mut self.audit)
    }

    /// Makes the gathered audit records durable (reads answer only after this).
    pub async fn flush(&mut self) -> Result<(), FhirError> {
        let audit = self.take_audit();
        if !audit.is_empty() {
            self.engine.store().append_audit(audit).await?;
        }
        Ok(())
    }

    /// [`Gate::flush`], at the end of a request.
    pub async fn finish(mut self) -> Result<(), FhirError> {
        self.flush().await
    }

    pub fn domain(&self) -> &Domain {
        &self.domain
    }
}

/// 403 for a refused write.
pub fn forbidden(action: Action, resource_type: &str, id: &str) -> FhirError {
    let verb = match action {
        Action::Read => "read",
        Action::Create => "create",
        Action::Write => "change",
        Action::Delete => "delete",
    };
    FhirError::new(403, IssueType::Forbidden, format!("your role does not allow you to {verb} {resource_type}/{id}"))
}

/// The stricter of two visibilities (hidden over behind glass over visible).
pub fn strictest(a: Visibility, b: Visibility) -> Visibility {
    use Visibility::*;
    match (a, b) {
        (Hidden, _) | (_, Hidden) => Hidden,
        (BehindGlass, _) | (_, BehindGlass) => BehindGlass,
        _ => Visible,
    }
}

/// The marker for data behind break-glass.
pub fn behind_glass(resource_type: &str, id: &str) -> FhirError {
    FhirError::new(
        403,
        IssueType::Suppressed,
        format!("{resource_type}/{id} exists but is protected: break the glass (POST Patient/[id]/$break-glass) to view it"),
    )
}
