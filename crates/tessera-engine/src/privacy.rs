//! Break-glass, the patient's access log and the privacy officer's audit queries.
//!
//! # Who reads the audit trail, and what they see
//!
//! * The domain's bootstrap account ([`Access::is_domain_bootstrap`]) sees every event,
//!   unredacted.
//! * A user whose role reads the Audit class (a privacy officer), and a service account
//!   whose scopes allow reading `AuditEvent`, read it *for their trust* T (the trust of the
//!   organisation they act for). Nobody else reads it.
//! * An event is listed for T when its agent acts for an organisation of T, or when it
//!   concerns data owned by T or domain-wide (unowned) data such as a Patient resource.
//! * In a listed event, every entity naming a resource T may not see — T neither owns it
//!   nor is it shared with T on the *shared* dial for every class it holds
//!   ([`tessera_policy::shared_with`]) — is replaced by [`tessera_audit::redacted_entity`]:
//!   its data classes and its owning trust only. A search's query text is shown only to
//!   the agent's own trust, and only when nothing in the event was withheld; otherwise it
//!   reads `redacted` ([`tessera_audit::redacted_query_entity`]).
//! * `Patient/[id]/$access-log` lists the events concerning that patient, each with only
//!   that patient's entities (other patients and their resources are removed).
//! * Both page through the whole trail: `_count`, and a `next` link with `_cursor=<seq>`;
//!   each page is filled with listed events, reading further store pages as needed.

use crate::access::{Access, AccessKind};
use crate::bundle::{Bundle, BundleWriter};
use crate::prepare::{format_instant, parse_instant};
use crate::{Engine, FhirError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use tessera_domain::{DataClass, Domain};
use tessera_fhir::IssueType;
use tessera_policy::{Confidentiality, PatientFacts, ResourceFacts};
use tessera_store::AuditQuery;

/// Reason codes for breaking the glass (v3 ActReason, purpose of use).
pub const BREAK_GLASS_REASONS: &[(&str, &str)] = &[
    ("ETREAT", "Emergency treatment"),
    ("BTG", "Break the glass"),
    ("TREAT", "Treatment"),
    ("PATSFTY", "Patient safety"),
    ("CLINTRL", "Clinical trial / urgent review"),
];

/// Store pages read at most to fill one page of the audit trail; a page that could not be
/// filled within them ends with a `next` link all the same.
const MAX_ROUNDS: usize = 32;

/// Audit records read at most to count what a reader sees (`_total`, `_summary=count`,
/// `_count=0`); beyond that the Bundle has no `total` and says why.
const MAX_AUDIT_COUNTED: usize = 20_000;

/// Through whose eyes the audit trail is read.
#[derive(Debug, Clone)]
enum AuditView {
    /// The domain's bootstrap account (or a build without enforcement): everything.
    Full,
    /// A privacy officer of, or a service account acting for, `organisation` (of `trust`).
    Trust { organisation: String, trust: String },
    /// The patient, signed in to the portal, reading the access log of their own record:
    /// every access to it, with who, from which organisation, and why.
    Patient,
}

/// What the audit view knows of one resource the trail names.
#[derive(Debug, Clone)]
struct Named {
    /// Some version of it is stored.
    exists: bool,
    /// The trust owning it; `None`: domain-wide (or unknown, when it does not exist).
    owner_trust: Option<String>,
    /// The patient whose record it is part of (a Patient is its own).
    patient: Option<String>,
    /// Its data classes: base, sensitive labels, the patient's R/V.
    classes: Vec<String>,
    /// The reader's trust may see it.
    visible: bool,
}

/// A parsed audit query: the store's criteria, the page size, and the parameters a `next`
/// link repeats (all but `_count` and `_cursor`).
struct AuditParams {
    query: AuditQuery,
    count: usize,
    kept: Vec<(String, String)>,
    /// `_total=accurate|estimate`, `_summary=count` or `_count=0`: the Bundle has a total.
    total: bool,
}

/// The view applied to one request's events, with what it learnt of the resources named.
struct Lens<'a> {
    engine: &'a Engine,
    domain: Arc<Domain>,
    view: AuditView,
    named: HashMap<(String, String), Named>,
}

impl Engine {
    /// Who may read the audit trail, and through whose eyes (`None`: nobody's).
    fn audit_view(&self, access: &Access) -> Option<AuditView> {
        if access.is_domain_bootstrap() || !self.config().enforce() {
            return Some(AuditView::Full);
        }
        if access.kind == AccessKind::Patient {
            // Their own record's log only (checked by `access_log`); never the trail at large.
            return access.scopes.allows("Patient", tessera_auth::ScopeOp::Read).then_some(AuditView::Patient);
        }
        let domain = self.domain();
        // The token's scopes must cover AuditEvent reads (a scope narrows, never widens);
        // a user's role must also read the audit class.
        let scoped = access.scopes.allows("AuditEvent", tessera_auth::ScopeOp::Read) || access.scopes.allows("AuditEvent", tessera_auth::ScopeOp::Search);
        let allowed = scoped
            && match access.kind {
                AccessKind::System => true,
                AccessKind::Patient => false,
                AccessKind::User => access.role.as_deref().and_then(|r| domain.role(r)).and_then(|r| r.permissions.get(&DataClass::Audit)).is_some_and(|p| p.read),
            };
        allowed.then(|| AuditView::Trust { organisation: access.organisation.clone(), trust: domain.trust_of(&access.organisation).to_string() })
    }

    /// Records a refused look at the audit trail, and refuses it.
    async fn refuse_audit<T>(&self, access: &Access, what: &str, patients: Vec<String>, message: &str) -> Result<T, FhirError> {
        let mut gate = self.gate(access);
        gate.record("audit-query", false, &[what.to_string()], patients, false, None);
        gate.finish().await?;
        Err(FhirError::new(403, IssueType::Forbidden, message))
    }

    /// `POST Patient/[id]/$break-glass`: grants this user time-limited access to the
    /// patient's record for a stated reason; alerts and queues it for privacy review. A
    /// very restricted patient (confidentiality `V`) cannot be broken into, except by a
    /// role that sees sealed data: the attempt is refused (403) and audited as a failed
    /// break-glass.
    pub async fn break_glass(&self, access: &Access, patient: &str, reason_code: &str, reason_text: &str) -> Result<serde_json::Value, FhirError> {
        if access.kind != AccessKind::User {
            return Err(FhirError::new(403, IssueType::Forbidden, "only a person can break the glass"));
        }
        let domain = self.domain();
        let role = access.role.as_deref().and_then(|r| domain.role(r));
        if !role.is_some_and(|r| r.may_break_glass) {
            return Err(FhirError::new(403, IssueType::Forbidden, "your role may not break the glass"));
        }
        let sees_sealed = role.is_some_and(|r| r.sees_sealed);
        if !BREAK_GLASS_REASONS.iter().any(|(c, _)| *c == reason_code) {
            let codes: Vec<&str> = BREAK_GLASS_REASONS.iter().map(|(c, _)| *c).collect();
            return Err(FhirError::bad_request(format!("reason code '{reason_code}' is not one of {}", codes.join(", "))).at("Parameters.parameter[reason]"));
        }
        if reason_text.trim().len() < 5 {
            return Err(FhirError::bad_request("give the reason in words (at least a few characters)").at("Parameters.parameter[text]"));
        }
        let stored = match self.store().read("Patient", patient).await? {
            Some(p) if !p.deleted => p,
            _ => return Err(FhirError::not_found("Patient", patient)),
        };
        let clean = reason_text.replace('|', "/");
        let reason = format!("{reason_code}: {clean}");
        if crate::guard::confidentiality_of(&stored.json) == Some(Confidentiality::VeryRestricted) && !sees_sealed {
            tracing::warn!(target: "tessera::alert", user = %access.subject, organisation = %access.organisation, %patient, reason = %reason_code, text = %clean, "break-glass refused: the patient is very restricted");
            let mut gate = self.gate(access);
            gate.record("break-glass", false, &[format!("Patient/{patient}")], vec![patient.to_string()], true, Some(&reason));
            gate.finish().await?;
            return Err(FhirError::new(
                403,
                IssueType::Forbidden,
                format!("Patient/{patient} is very restricted (confidentiality V): the glass cannot be broken for this record; access needs a care relationship"),
            ));
        }
        let now = tessera_store::now_micros();
        let expires = now + domain.settings.break_glass_minutes as i64 * 60_000_000;
        self.store().set_meta(&format!("break-glass/{}/{patient}", access.subject), &format!("{expires}|{reason_code}|{clean}")).await?;
        self.grant_changed(&access.subject, patient);
        self.count_break_glass();
        tracing::warn!(target: "tessera::alert", user = %access.subject, organisation = %access.organisation, %patient, reason = %reason_code, text = %clean, "break-glass: access to a patient record granted for review");
        let mut gate = self.gate(access);
        gate.record("break-glass", true, &[format!("Patient/{patient}")], vec![patient.to_string()], true, Some(&reason));
        gate.finish().await?;
        Ok(json!({
            "resourceType": "Parameters",
            "parameter": [
                {"name": "patient", "valueReference": {"reference": format!("Patient/{patient}")}},
                {"name": "expires", "valueInstant": format_instant(expires)},
                {"name": "reason", "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": reason_code}},
            ]
        }))
    }

    /// `GET Patient/[id]/$access-log`: who accessed the patient's record, newest first,
    /// each event showing only this patient's entities (see the [module](self) documentation
    /// for what each reader sees). Takes the parameters of [`Engine::audit_search`] but
    /// `patient`.
    pub async fn access_log(&self, access: &Access, patient: &str, query: &str) -> Result<Bundle, FhirError> {
        let path = format!("Patient/{patient}/$access-log");
        let Some(view) = self.audit_view(access).filter(|v| !matches!(v, AuditView::Patient) || access.patient.as_deref() == Some(patient)) else {
            return self.refuse_audit(access, &path, vec![patient.to_string()], "the access log is for privacy officers and the patient").await;
        };
        let mut params = self.audit_params(query, true)?;
        params.query.patient = Some(patient.to_string());
        let out = self.audit_bundle(view, params, Some(patient), &path, query).await?;
        let mut gate = self.gate(access);
        gate.record("audit-query", true, &[path], vec![patient.to_string()], false, None);
        gate.finish().await?;
        Ok(out)
    }

    /// `GET AuditEvent?agent=…&patient=…&date=ge…&date=le…&purpose=BTG&action=…&_count=…`:
    /// the privacy officer's queries over the audit trail (the break-glass review queue is
    /// `purpose=BTG`), paged with `_count` and `_cursor`.
    pub async fn audit_search(&self, access: &Access, query: &str) -> Result<Bundle, FhirError> {
        let path = format!("AuditEvent?{query}");
        let Some(view) = self.audit_view(access).filter(|v| !matches!(v, AuditView::Patient)) else {
            return self.refuse_audit(access, &path, Vec::new(), "the audit trail is for privacy officers").await;
        };
        let params = self.audit_params(query, false)?;
        let patients: Vec<String> = params.query.patient.iter().cloned().collect();
        let out = self.audit_bundle(view, params, None, "AuditEvent", query).await?;
        let mut gate = self.gate(access);
        gate.record("audit-query", true, &[path], patients, false, None);
        gate.finish().await?;
        Ok(out)
    }

    /// Parses the parameters of an audit query (`patient` is not one of `$access-log`'s).
    fn audit_params(&self, query: &str, fixed_patient: bool) -> Result<AuditParams, FhirError> {
        let mut q = AuditQuery::default();
        let mut count = self.config().default_page_size;
        let mut kept = Vec::new();
        let mut total = false;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "_count" => {
                    count = v.parse().map_err(|_| FhirError::bad_request("_count must be a number"))?;
                    total |= count == 0;
                    continue;
                }
                "_total" => match v.as_ref() {
                    "none" => {}
                    "estimate" | "accurate" => total = true,
                    _ => return Err(FhirError::bad_request(format!("_total '{v}' is not one of none, estimate, accurate"))),
                },
                "_summary" if v == "count" => {
                    total = true;
                    count = 0;
                    continue;
                }
                "_cursor" => {
                    q.before_seq = Some(v.parse().map_err(|_| FhirError::bad_request("_cursor is not a cursor of this audit query"))?);
                    continue;
                }
                "agent" | "user" => q.user = Some(if v.contains('/') { v.to_string() } else { format!("Practitioner/{v}") }),
                "patient" if !fixed_patient => q.patient = Some(v.trim_start_matches("Patient/").to_string()),
                "purpose" if v == "BTG" || v.ends_with("|BTG") => q.break_glass_only = true,
                "action" | "subtype" => q.action = Some(v.to_string()),
                "date" => {
                    let (prefix, value) = if v.len() > 2 && v.is_char_boundary(2) { v.split_at(2) } else { ("eq", v.as_ref()) };
                    let t = parse_instant(value).ok_or_else(|| FhirError::bad_request(format!("date '{v}' is not a valid date")))?;
                    match prefix {
                        "ge" | "gt" => q.since_micros = Some(t),
                        "le" | "lt" => q.until_micros = Some(t),
                        _ => return Err(FhirError::bad_request("date takes ge/gt/le/lt prefixes here")),
                    }
                }
                "_format" | "_pretty" => {}
                other => {
                    let supported = if fixed_patient { "agent, date, purpose, action, _count, _cursor, _total, _summary=count" } else { "agent, patient, date, purpose, action, _count, _cursor, _total, _summary=count" };
                    return Err(FhirError::bad_request(format!("audit search does not support '{other}' ({supported})")));
                }
            }
            kept.push((k.into_owned(), v.into_owned()));
        }
        Ok(AuditParams { query: q, count: count.min(self.config().max_page_size), kept, total })
    }

    /// One page of the audit trail as this view sees it: the events the store lists for
    /// `q`, newest first, of which those listed for the view (redacted, and scoped to
    /// `patient` for an access log) fill the page, reading further store pages as needed.
    async fn audit_bundle(&self, view: AuditView, params: AuditParams, patient: Option<&str>, path: &str, query: &str) -> Result<Bundle, FhirError> {
        let AuditParams { query: mut q, count, kept, total: wants_total } = params;
        let first_page = q.before_seq.is_none();
        let counted_query = q.clone();
        let mut lens = Lens { engine: self, domain: self.domain(), view, named: HashMap::new() };
        let mut listed: Vec<(i64, Value)> = Vec::new();
        let mut next: Option<i64> = None;
        if count > 0 {
            let batch = (count + 1).clamp(50, 1000);
            for round in 0..MAX_ROUNDS {
                q.limit = batch;
                let records = self.store().audit_query(&q).await?;
                let exhausted = records.len() < batch;
                let mut last_seq = None;
                for r in &records {
                    last_seq = Some(r.seq);
                    let Some(event) = tessera_audit::render_record(&r.event, r.seq) else {
                        tracing::error!(seq = r.seq, "audit record {} is not readable as an AuditEvent", r.seq);
                        continue;
                    };
                    if let Some(event) = lens.view(event, patient).await? {
                        listed.push((r.seq, event));
                        if listed.len() > count {
                            break;
                        }
                    }
                }
                if listed.len() > count {
                    listed.truncate(count);
                    next = listed.last().map(|(seq, _)| *seq);
                    break;
                }
                if exhausted || last_seq.is_none() {
                    break;
                }
                q.before_seq = last_seq;
                if round + 1 == MAX_ROUNDS {
                    // Not filled within the bound: the next page goes on from here.
                    next = last_seq;
                }
            }
        }
        let base = &self.config().base_url;
        let self_link = if query.is_empty() { format!("{base}/{path}") } else { format!("{base}/{path}?{query}") };
        let mut links = vec![("self", self_link)];
        if let Some(cursor) = next {
            let mut next_query = form_urlencoded::Serializer::new(String::new());
            next_query.extend_pairs(kept.iter());
            next_query.append_pair("_count", &count.to_string());
            next_query.append_pair("_cursor", &cursor.to_string());
            links.push(("next", format!("{base}/{path}?{}", next_query.finish())));
        }
        // The total: a first page that holds every event is its own; otherwise counted
        // when asked for, through the same view, up to MAX_AUDIT_COUNTED records.
        let total = if first_page && next.is_none() && count > 0 {
            Some(listed.len() as u64)
        } else if wants_total {
            self.count_audit(&mut lens, counted_query, patient).await?
        } else {
            None
        };
        let mut out = BundleWriter::new("searchset", total, &links);
        for (seq, event) in &listed {
            out.generated(Some(&format!("{base}/AuditEvent/{seq}")), event, &[("search", json!({"mode": "match"}))]);
        }
        if wants_total && total.is_none() {
            let issue = tessera_fhir::Issue {
                severity: tessera_fhir::IssueSeverity::Warning,
                code: IssueType::TooCostly,
                diagnostics: format!("no total: counting the events you may see would mean reading more than {MAX_AUDIT_COUNTED} audit records; narrow the query (agent, patient, date)"),
                expression: vec!["_total".into()],
            };
            out.generated(None, &tessera_fhir::outcome::operation_outcome(&[issue]), &[("search", json!({"mode": "outcome"}))]);
        }
        Ok(out.finish())
    }

    /// The number of events of `q` this lens lists, or `None` beyond MAX_AUDIT_COUNTED
    /// records read.
    async fn count_audit(&self, lens: &mut Lens<'_>, mut q: AuditQuery, patient: Option<&str>) -> Result<Option<u64>, FhirError> {
        let mut n = 0u64;
        let mut read = 0usize;
        loop {
            q.limit = 1000;
            let records = self.store().audit_query(&q).await?;
            read += records.len();
            if read > MAX_AUDIT_COUNTED {
                return Ok(None);
            }
            for r in &records {
                if let Some(event) = tessera_audit::render_record(&r.event, r.seq) {
                    if lens.view(event, patient).await?.is_some() {
                        n += 1;
                    }
                }
            }
            match records.last() {
                Some(last) if records.len() == q.limit => q.before_seq = Some(last.seq),
                _ => return Ok(Some(n)),
            }
        }
    }

    /// `GET AuditEvent/[id]`: one event of the audit trail (its id is its sequence number),
    /// as the reader's view shows it; 404 when it does not exist or is not listed for the
    /// reader. Only privacy officers (and the bootstrap account) read the trail.
    pub async fn audit_read(&self, access: &Access, id: &str) -> Result<Value, FhirError> {
        let path = format!("AuditEvent/{id}");
        let Some(view) = self.audit_view(access).filter(|v| !matches!(v, AuditView::Patient)) else {
            return self.refuse_audit(access, &path, Vec::new(), "the audit trail is for privacy officers").await;
        };
        let not_found = || FhirError::new(404, IssueType::NotFound, format!("AuditEvent/{id} is not known"));
        let seq: i64 = id.parse().ok().filter(|s| *s > 0).ok_or_else(not_found)?;
        let q = AuditQuery { before_seq: seq.checked_add(1), limit: 1, ..Default::default() };
        let record = self.store().audit_query(&q).await?.into_iter().next().filter(|r| r.seq == seq).ok_or_else(not_found)?;
        let event = tessera_audit::render_record(&record.event, record.seq).ok_or_else(|| FhirError::internal(format!("audit record {seq} is not readable as an AuditEvent")))?;
        let mut lens = Lens { engine: self, domain: self.domain(), view, named: HashMap::new() };
        let event = lens.view(event, None).await?.ok_or_else(not_found)?;
        let mut gate = self.gate(access);
        gate.record("audit-query", true, &[path], Vec::new(), false, None);
        gate.finish().await?;
        Ok(event)
    }
}

/// The `Type`/`id` a trail entity's reference names (`Type/id`, `Type/id/_history/n`,
/// `Type/id/$operation`); `None` for queries and anything else.
fn named_resource(reference: &str) -> Option<(&str, &str)> {
    if reference.contains('?') {
        return None;
    }
    let mut parts = reference.split('/');
    let (ty, id) = (parts.next()?, parts.next()?);
    (tessera_fhir::definitions::is_resource_type(ty) && !id.is_empty() && !id.starts_with('$')).then_some((ty, id))
}

/// The organisation an event's agent acted for (`Organization/<id>`, not the requestor).
fn agent_organisation(event: &Value) -> Option<&str> {
    event.get("agent")?.as_array()?.iter().filter(|a| a.get("requestor") != Some(&Value::Bool(true))).find_map(|a| a.pointer("/who/reference")?.as_str()?.strip_prefix("Organization/"))
}

/// The domain's name of a data class (`psychiatry`, `very-restricted`, …).
fn class_name(class: DataClass) -> String {
    serde_json::to_value(class).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

impl Lens<'_> {
    /// The event as this view shows it, or `None` when it is not listed for it.
    async fn view(&mut self, mut event: Value, patient: Option<&str>) -> Result<Option<Value>, FhirError> {
        let reader_trust = match &self.view {
            AuditView::Full if patient.is_none() => return Ok(Some(event)),
            AuditView::Full | AuditView::Patient => None,
            AuditView::Trust { trust, .. } => Some(trust.clone()),
        };
        let full = reader_trust.is_none();
        let own = full || agent_organisation(&event).is_some_and(|o| Some(self.domain.trust_of(o)) == reader_trust.as_deref());
        let entities = event.get_mut("entity").and_then(Value::as_array_mut).map(std::mem::take).unwrap_or_default();
        let mut out = Vec::with_capacity(entities.len());
        let mut queries = Vec::new();
        let mut concerns = false;
        let mut withheld = false;
        for entity in entities {
            if entity.get("query").is_some() {
                queries.push(out.len());
                out.push(entity);
                continue;
            }
            let reference = entity.pointer("/what/reference").and_then(Value::as_str).unwrap_or("").to_string();
            let Some((ty, id)) = named_resource(&reference) else {
                if reference.contains('?') {
                    // A query recorded as a reference (`AuditEvent?patient=…`).
                    queries.push(out.len());
                    out.push(entity);
                } else if patient.is_some() {
                    // Not this patient's: not in their log.
                    withheld = true;
                } else {
                    out.push(entity);
                }
                continue;
            };
            let named = self.named(ty, id).await?;
            if patient.is_some() && named.patient.as_deref() != patient {
                withheld = true;
                continue;
            }
            if (named.exists || ty == "Patient") && (named.owner_trust.is_none() || named.owner_trust == reader_trust) {
                concerns = true;
            }
            if full || named.visible {
                out.push(entity);
            } else {
                withheld = true;
                out.push(tessera_audit::redacted_entity(&named.classes, named.owner_trust.as_deref()));
            }
        }
        if !own || withheld {
            for i in queries {
                out[i] = tessera_audit::redacted_query_entity();
            }
        }
        if !(full || own || concerns) {
            return Ok(None);
        }
        if let Some(map) = event.as_object_mut() {
            if out.is_empty() {
                map.remove("entity");
            } else {
                map.insert("entity".into(), Value::Array(out));
            }
        }
        Ok(Some(event))
    }

    /// What this view knows of `ty/id` (looked up once per request).
    async fn named(&mut self, ty: &str, id: &str) -> Result<Named, FhirError> {
        let key = (ty.to_string(), id.to_string());
        if let Some(n) = self.named.get(&key) {
            return Ok(n.clone());
        }
        let n = self.look_up(ty, id).await?;
        self.named.insert(key, n.clone());
        Ok(n)
    }

    async fn look_up(&self, ty: &str, id: &str) -> Result<Named, FhirError> {
        let store = self.engine.store();
        let mut stored = store.read(ty, id).await?;
        // A deletion carries no labels: judge by the last version that had content.
        if let Some(deleted) = stored.as_ref().filter(|s| s.deleted) {
            let mut v = deleted.version;
            while v > 1 {
                v -= 1;
                if let Some(s) = store.vread(ty, id, v).await?.filter(|s| !s.deleted) {
                    stored = Some(s);
                    break;
                }
            }
        }
        let Some(s) = stored else {
            // Nothing stored under this name: unowned only if it is a person.
            let person = ty == "Patient";
            return Ok(Named {
                exists: false,
                owner_trust: None,
                patient: person.then(|| id.to_string()),
                classes: vec![class_name(tessera_policy::base_class(ty))],
                visible: person,
            });
        };
        let json: Value = if s.json.is_empty() { Value::Null } else { serde_json::from_slice(&s.json).unwrap_or(Value::Null) };
        let labels = crate::facts::security_labels(&json);
        let pairs: Vec<(&str, &str)> = labels.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let author = json
            .pointer("/meta/tag")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|c| c.get("system").and_then(Value::as_str) == Some(crate::guard::AUTHOR_SYSTEM))
            .and_then(|c| c.get("code").and_then(Value::as_str));
        let patient = if ty == "Patient" { Some(id.to_string()) } else { s.compartment.clone() };
        let facts = match &patient {
            Some(p) => {
                let record = self.engine.patient_record(p).await?;
                // A confidential patient's record is the officer's business when their
                // trust has (or had) a care relationship with the patient.
                let relationship = match &self.view {
                    AuditView::Full | AuditView::Patient => true,
                    AuditView::Trust { trust, .. } => record.links.iter().any(|l| {
                        let org = l.organisation.as_deref().or_else(|| l.location.as_deref().and_then(|loc| self.domain.location(loc)).map(|loc| loc.organisation.as_str()));
                        l.kind != "consent-deny" && org.is_some_and(|o| self.domain.trust_of(o) == trust.as_str())
                    }),
                };
                Some(PatientFacts {
                    confidentiality: record.confidentiality,
                    dissents_from_sharing: record.links.iter().any(|l| l.kind == "consent-deny" && l.active),
                    relationship,
                    ..PatientFacts::default()
                })
            }
            None => None,
        };
        let owner_trust = s.owner.as_deref().map(|o| self.domain.trust_of(o).to_string());
        let visible = match &self.view {
            AuditView::Full | AuditView::Patient => true,
            AuditView::Trust { organisation, trust } => {
                let rf = ResourceFacts { resource_type: ty, owner: s.owner.as_deref(), patient: patient.as_deref(), security: &pairs, author };
                owner_trust.as_deref() == Some(trust.as_str()) || tessera_policy::shared_with(&self.domain, organisation, &rf, facts.as_ref())
            }
        };
        let classes = tessera_policy::data_classes(ty, &pairs);
        let mut set: Vec<DataClass> = classes.iter().collect();
        if patient.is_some() {
            let extra = match facts.and_then(|f| f.confidentiality) {
                Some(Confidentiality::Restricted) => Some(DataClass::Restricted),
                Some(Confidentiality::VeryRestricted) => Some(DataClass::VeryRestricted),
                None => None,
            };
            if let Some(c) = extra.filter(|c| !set.contains(c)) {
                set.push(c);
            }
        }
        Ok(Named { exists: true, owner_trust, patient, classes: set.into_iter().map(class_name).collect(), visible })
    }
}

impl Engine {
    /// Records a login attempt at the token endpoint (successful or not). `subject` is the
    /// user or client id the request named; `claims` those of the issued token, on success.
    /// The token endpoint itself records through [`Engine::record_auth`], which also says
    /// why an attempt failed.
    pub async fn record_login(&self, subject: &str, claims: Option<&tessera_auth::Claims>, ok: bool) -> Result<(), FhirError> {
        use tessera_auth::{Account, AuthAction, AuthEvent, AuthSubject, TokenKind};
        let domain = self.domain();
        let event = match claims {
            Some(c) if ok => {
                let action = if c.kind == TokenKind::System { AuthAction::ClientCredentials } else { AuthAction::Password };
                AuthEvent::granted(action, AuthSubject::of_claims(c, &domain), None, "signed in")
            }
            _ => {
                let account = if domain.service_account(subject).is_some() { Account::Client(subject.to_string()) } else { Account::User(subject.to_string()) };
                AuthEvent {
                    action: AuthAction::Password,
                    ok,
                    reason: None,
                    subject: Some(AuthSubject::attempted(&account, &domain)),
                    address: None,
                    description: if ok { "signed in".into() } else { "authentication failed".into() },
                    target: None,
                    serious: false,
                    count: None,
                }
            }
        };
        self.record_auth(&event).await
    }

    /// Records an authentication event: a sign-in, a refused sign-in or bearer token (with its
    /// reason), a summary of refusals counted during a flood, an unlock by the operator.
    ///
    /// The AuditEvent is DICOM "User Authentication" / "Login" (an unlock: "Security Alert" /
    /// "User Security Attributes Changed", the account as entity), outcome 0, 4 or 8 (suspected
    /// theft), `outcomeDesc` starting with the reason code (`wrong-password: …`). The
    /// requesting agent's `who` names the account tried as an `identifier`
    /// (`https://tessera.health/login-name` or `…/client-id`), plus a `reference` when the
    /// domain holds the account; `name` only when known; `network.address` the client's
    /// address. Never a password, secret or token. Indexed under the agent
    /// (`Practitioner/<id>`, `Device/<id>`) with the action `login`, `auth-refused` or
    /// `unlock`. Recorded whether or not access enforcement is on.
    pub async fn record_auth(&self, e: &tessera_auth::AuthEvent) -> Result<(), FhirError> {
        use tessera_audit::{Agent, Coded, EventInput, EventKind, Outcome, Who};
        use tessera_auth::{AuthAction, TokenKind};
        const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
        let recorded = tessera_store::now_micros();
        let subject = e.subject.as_ref();
        let non_empty = |s: Option<String>| s.filter(|v| !v.trim().is_empty());
        let description = if e.description.trim().is_empty() {
            e.reason.map(|r| format!("{}: {}", r.code(), r.describe())).unwrap_or_else(|| if e.ok { "granted".into() } else { "refused".into() })
        } else {
            e.description.clone()
        };
        let input = EventInput {
            kind: EventKind::Login,
            recorded_micros: recorded,
            outcome: if e.ok {
                Outcome::Success
            } else if e.serious {
                Outcome::SeriousFailure
            } else {
                Outcome::MinorFailure
            },
            outcome_desc: Some(description),
            denied: !e.ok,
            agent: Agent {
                who: Who::Reference("Device/tessera".to_string()),
                name: non_empty(subject.and_then(|s| s.name.clone())),
                role: non_empty(subject.and_then(|s| s.role.clone())).map(|code| Coded { system: "https://tessera.health/role".into(), code, display: None }),
                organisation: non_empty(subject.and_then(|s| s.organisation.clone())).map(|o| format!("Organization/{o}")),
                network_address: non_empty(e.address.clone()),
            },
            resources: Vec::new(),
            patients: Vec::new(),
            query: None,
            break_glass: None,
            site: non_empty(subject.and_then(|s| s.location.clone())),
        };
        let mut event = tessera_audit::audit_event(&input);
        let who = match (e.action, subject) {
            (AuthAction::Unlock, _) => json!({"reference": format!("Device/{}", crate::SYSTEM_ACCOUNT), "display": "operator (tessera command line)"}),
            (_, Some(s)) => {
                let system = match s.kind {
                    TokenKind::User => "https://tessera.health/login-name",
                    TokenKind::System => "https://tessera.health/client-id",
                    TokenKind::Patient => "https://tessera.health/portal-account",
                };
                let mut who = serde_json::Map::new();
                if s.known {
                    who.insert("reference".into(), s.reference().into());
                }
                let id = if s.id.trim().is_empty() { "(empty)".to_string() } else { s.id.clone() };
                who.insert("identifier".into(), json!({"system": system, "value": id}));
                Value::Object(who)
            }
            (_, None) => json!({"display": "unidentified client"}),
        };
        if let Some(agent) = event.pointer_mut("/agent/0") {
            agent["who"] = who;
        }
        if e.action == AuthAction::Unlock {
            event["type"] = json!({"system": DCM, "code": "110113", "display": "Security Alert"});
            event["subtype"] = json!([{"system": DCM, "code": "110137", "display": "User Security Attributes Changed"}]);
            if let Some(target) = e.target.as_deref().filter(|t| !t.is_empty()) {
                event["entity"] = json!([{
                    "what": {"reference": target},
                    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": if target.starts_with("Practitioner/") { "1" } else { "2" }, "display": if target.starts_with("Practitioner/") { "Person" } else { "System Object" }},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "11", "display": "Security User Entity"},
                }]);
            }
        }
        let user = match (e.action, subject) {
            (AuthAction::Unlock, _) => Some(format!("Device/{}", crate::SYSTEM_ACCOUNT)),
            (_, Some(s)) => Some(s.reference()),
            (_, None) => None,
        };
        let action = match (e.action, e.ok) {
            (AuthAction::Unlock, _) => "unlock",
            (_, true) => "login",
            (_, false) => "auth-refused",
        };
        let record = tessera_store::NewAudit {
            recorded_micros: recorded,
            user,
            patients: Vec::new(),
            action: action.to_string(),
            break_glass: false,
            event: serde_json::to_vec(&event).map_err(|err| FhirError::internal(format!("audit event: {err}")))?,
        };
        self.store().append_audit(vec![record]).await?;
        Ok(())
    }
}
