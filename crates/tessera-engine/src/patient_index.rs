//! The domain's patient index: one Patient per person.
//!
//! Every registration (a create or conditional create of a Patient, by REST, in a
//! transaction or batch, by `tessera import`, `tessera migrate` or an interface) is
//! matched first, across the whole domain and whatever the registering subject may see:
//!
//! 1. a valid NHS number, or one of a domain organisation's MRNs, already on a Patient
//!    links to that Patient;
//! 2. otherwise the registration is scored against the candidates that share a blocking
//!    key with it (`tessera_empi`, with the domain's `[patient_index]` settings): at or
//!    above the upper threshold it links; between the thresholds a new Patient is created
//!    and the pair goes on the review worklist (a `Task`, [`WORKLIST_CODE`]); below the
//!    lower threshold a new Patient is created.
//!
//! Linking adds what the registration brings that the record lacks (the registering
//! organisation's MRN, other identifiers, names, addresses, contacts), each added element
//! marked with the organisation that added it ([`ADDED_BY`]); the response is the linked
//! Patient as the registering subject may see it — or, where the gate would hide it, the
//! subject's own submission under the linked record's id, so nothing of the existing
//! record is revealed. The matcher's decision and score are written on the audit record of
//! the registration.
//!
//! The index of candidates is kept in memory and caught up from the store's Patient
//! history before each match, so several servers on one PostgreSQL database see each
//! other's registrations. Registrations of one process are serialised around the match by
//! a reservation: a registration that matches another still being committed waits for it.
//! Across processes, a new Patient with an NHS number is written on the precondition that
//! no Patient has that number, checked by the database in the writing transaction.

use crate::access::Access;
use crate::guard::{Decided, Gate};
use crate::{Engine, FhirError, VersionedResource};
use serde_json::{json, Map, Value};
use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use tessera_empi::{BlockingKey, Config, Decision, Index, NhsNumber, Person, Score};
use tessera_fhir::IssueType;
use tessera_store::{Criteria, HistoryQuery, Precondition, Stored, TokenMatch};

/// Tessera's patient index code system (worklist and merge records).
pub const INDEX_SYSTEM: &str = "https://tessera.health/CodeSystem/patient-index";
/// The code of a review worklist `Task`.
pub const WORKLIST_CODE: &str = "possible-duplicate";
/// The identifier system of a worklist `Task`: the two Patient ids, sorted, `a|b`.
pub const PAIR_SYSTEM: &str = "https://tessera.health/Id/duplicate-pair";
/// The extension marking an element a registration added to a linked Patient: the
/// organisation whose registration added it.
pub const ADDED_BY: &str = "https://tessera.health/fhir/StructureDefinition/added-by";
/// The identifier system of the domain's organisations (their ids), for logical references.
pub const ORGANISATION_SYSTEM: &str = "https://tessera.health/organisation";
/// The extension of `Patient.link` (type `replaced-by`) naming the merge's record.
pub const MERGE_RECORD: &str = "https://tessera.health/fhir/StructureDefinition/merge-record";
/// The match-grade extension of `$match` results.
pub const MATCH_GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

const NHS_SYSTEM: &str = tessera_empi::nhs::SYSTEM;
/// How long a registration waits for a matching one still being committed.
const PENDING_WAIT: std::time::Duration = std::time::Duration::from_millis(5);
const PENDING_TRIES: usize = 2_000;
/// Candidates put on the worklist for one registration, at most.
const MAX_REVIEW: usize = 5;

/// The in-memory index (built on first use).
#[derive(Default)]
pub(crate) struct PatientIndex {
    state: Mutex<Option<Built>>,
    building: tokio::sync::Mutex<()>,
}

struct Built {
    blocking: Vec<BlockingKey>,
    index: Index,
    /// Index entry → Patient id.
    slots: Vec<String>,
    /// Patient id → the index entry of its version in force (absent: deleted or merged away).
    current: HashMap<String, u32>,
    /// The highest store `seq` applied.
    high_seq: i64,
    /// Registrations matched but not yet committed.
    pending: HashSet<String>,
}

impl Built {
    fn new(blocking: Vec<BlockingKey>) -> Built {
        Built { index: Index::with_blocking(blocking.clone()), blocking, slots: Vec::new(), current: HashMap::new(), high_seq: 0, pending: HashSet::new() }
    }

    fn put(&mut self, id: &str, person: Person) {
        let slot = self.index.insert(person);
        self.slots.push(id.to_string());
        self.current.insert(id.to_string(), slot);
    }

    /// Applies a page of Patient versions, newest first; `seen` holds the ids already
    /// applied by this catch-up (only each id's newest version counts).
    fn apply(&mut self, page: &[Stored], seen: &mut HashSet<String>) {
        for s in page {
            if s.seq <= self.high_seq || !seen.insert(s.id.clone()) {
                continue;
            }
            self.pending.remove(&s.id);
            let live = (!s.deleted).then(|| serde_json::from_slice::<Value>(&s.json).ok()).flatten().filter(|v| !merged_away(v));
            match live {
                Some(v) => self.put(&s.id, Person::from_patient(&v)),
                None => {
                    self.current.remove(&s.id);
                }
            }
        }
    }

    /// Candidates for `person`, best first, each Patient once, only versions in force.
    fn search(&self, person: &Person, config: &Config, exclude: Option<&str>) -> Vec<(String, Score)> {
        let mut out: Vec<(String, Score)> = Vec::new();
        for (slot, score) in self.index.search(person, config) {
            let id = &self.slots[slot as usize];
            if self.current.get(id) != Some(&slot) || exclude == Some(id.as_str()) || out.iter().any(|(o, _)| o == id) {
                continue;
            }
            out.push((id.clone(), score));
        }
        out
    }
}

/// Whether a Patient was merged into another (inactive, with a `replaced-by` link).
pub(crate) fn merged_away(patient: &Value) -> bool {
    patient["active"] == Value::Bool(false) && replaced_by(patient).is_some()
}

/// The Patient id a merged Patient was replaced by.
pub(crate) fn replaced_by(patient: &Value) -> Option<String> {
    patient["link"].as_array()?.iter().find(|l| l["type"] == "replaced-by").and_then(|l| l["other"]["reference"].as_str()).and_then(|r| r.strip_prefix("Patient/")).map(str::to_string)
}

/// What the matcher decided for one registration.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The person is registered already: link to this Patient.
    Link { id: String },
    /// A new person: create the Patient with this id, under `precondition`; `review` are
    /// the candidates for the worklist.
    New { id: String, precondition: Precondition, review: Vec<(String, Score)> },
}

/// A registration's decision, holding its reservation in the index until committed.
pub(crate) struct Registration {
    pub outcome: Outcome,
    /// The decision in words, for the audit record.
    pub note: String,
    /// The decision for reports.
    pub report: MatchReport,
    reservation: Option<(Engine, String)>,
}

/// What the patient index decided for one registration (for migration reports).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MatchReport {
    /// `link`, `create` or `review` (created, and a candidate put on the worklist).
    pub decision: &'static str,
    /// The Patient linked to, or the review candidate.
    pub other: Option<String>,
    /// The score of that pair (none for a link by identifier).
    pub score: Option<f64>,
    /// How it was decided, in words.
    pub note: String,
}

impl Registration {
    /// The registration was committed: its Patient stays in the index.
    pub fn confirm(mut self) {
        if let Some((engine, id)) = self.reservation.take() {
            if let Some(b) = engine.inner_index().state.lock().expect("index lock").as_mut() {
                b.pending.remove(&id);
            }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Not committed: forget the reserved Patient.
        if let Some((engine, id)) = self.reservation.take() {
            if let Some(b) = engine.inner_index().state.lock().expect("index lock").as_mut() {
                if b.pending.remove(&id) {
                    b.current.remove(&id);
                }
            }
        }
    }
}

/// A `$match` or registration candidate.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    /// The Fellegi–Sunter total (bits); `None` for an identifier match.
    pub score: Option<Score>,
    /// Matched on a verified NHS number or a domain MRN.
    pub by_identifier: Option<String>,
}

impl Engine {
    /// Builds the index if needed and applies the Patient versions committed since.
    async fn catch_up(&self) -> Result<(), FhirError> {
        let blocking = self.domain().patient_index.blocking.clone();
        let state = &self.inner_index().state;
        let needs_build = state.lock().expect("index lock").as_ref().is_none_or(|b| b.blocking != blocking);
        if needs_build {
            let _building = self.inner_index().building.lock().await;
            let still = state.lock().expect("index lock").as_ref().is_none_or(|b| b.blocking != blocking);
            if still {
                let started = std::time::Instant::now();
                let mut built = Built::new(blocking);
                let mut seen = HashSet::new();
                let mut before = None;
                let mut high = 0;
                loop {
                    let page = self.patient_history(before, 2_000).await?;
                    let Some(last) = page.last() else { break };
                    before = Some(last.seq);
                    high = high.max(page[0].seq);
                    built.apply(&page, &mut seen);
                    if page.len() < 2_000 {
                        break;
                    }
                }
                built.high_seq = high;
                tracing::info!(patients = built.current.len(), elapsed_ms = started.elapsed().as_millis() as u64, "patient index built");
                *state.lock().expect("index lock") = Some(built);
                return Ok(());
            }
        }
        let high = state.lock().expect("index lock").as_ref().map_or(0, |b| b.high_seq);
        // Newest first, in pages that start small (usually a registration or two arrived
        // since the last match) and grow while they hold only news.
        let mut pages = Vec::new();
        let mut before = None;
        let mut count = 8;
        loop {
            let page = self.patient_history(before, count).await?;
            let done = page.len() < count || page.last().is_none_or(|s| s.seq <= high);
            before = page.last().map(|s| s.seq);
            pages.push(page);
            if done {
                break;
            }
            count = (count * 4).min(2_000);
        }
        let mut guard = state.lock().expect("index lock");
        if let Some(b) = guard.as_mut() {
            let mut seen = HashSet::new();
            let mut top = b.high_seq;
            for page in &pages {
                b.apply(page, &mut seen);
                top = top.max(page.first().map_or(0, |s| s.seq));
            }
            b.high_seq = top;
        }
        Ok(())
    }

    async fn patient_history(&self, before_seq: Option<i64>, count: usize) -> Result<Vec<Stored>, FhirError> {
        let q = HistoryQuery { resource_type: Some("Patient".into()), id: None, since_micros: None, before_seq, count };
        Ok(self.store().history(&q).await?)
    }

    /// Builds the patient index now (at start-up, so that the first registration does not
    /// wait for it). Returns the number of patients indexed.
    pub async fn warm_patient_index(&self) -> Result<usize, FhirError> {
        self.catch_up().await?;
        Ok(self.inner_index().state.lock().expect("index lock").as_ref().map_or(0, |b| b.current.len()))
    }

    /// The Patient in force that an identifier names: follows `replaced-by` links of merged
    /// records; skips deleted ones.
    pub(crate) async fn patient_by_identifier(&self, system: &str, value: &str) -> Result<Option<String>, FhirError> {
        let criteria = Criteria { resource_type: "Patient".into(), id: None, identifiers: vec![TokenMatch { system: Some(system.into()), value: value.into() }] };
        let mut ids = self.store().find(&criteria).await?;
        ids.sort();
        for id in ids {
            if let Some(found) = self.patient_in_force(&id).await? {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// The record a portal account opens: the Patient in force with this NHS number (a
    /// merged record leads to the one it was merged into), for the sign-in of a patient.
    pub async fn portal_patient(&self, nhs_number: &str) -> Result<Option<String>, FhirError> {
        let Ok(n) = tessera_empi::nhs::NhsNumber::parse(nhs_number) else { return Ok(None) };
        self.patient_by_identifier(NHS_SYSTEM, n.as_str()).await
    }

    /// `id`, or the Patient it was merged into (transitively); `None` if deleted.
    pub async fn patient_in_force(&self, id: &str) -> Result<Option<String>, FhirError> {
        let mut id = id.to_string();
        for _ in 0..16 {
            let Some(s) = self.store().read("Patient", &id).await? else { return Ok(None) };
            if s.deleted {
                return Ok(None);
            }
            let v: Value = serde_json::from_slice(&s.json).map_err(|e| FhirError::internal(format!("stored Patient is not JSON: {e}")))?;
            match merged_away(&v).then(|| replaced_by(&v)).flatten() {
                Some(next) => id = next,
                None => return Ok(Some(id)),
            }
        }
        Ok(None)
    }

    /// The identifiers of a registration that identify a person on their own: a valid NHS
    /// number and the domain organisations' MRNs.
    fn identifying(&self, patient: &Value) -> Vec<(String, String)> {
        let domain = self.domain();
        let mut out = Vec::new();
        // A registration names a few identifiers; a flood of them is looked up no further.
        for id in patient["identifier"].as_array().into_iter().flatten().take(tessera_empi::person::MAX_VALUES * 4) {
            let (Some(system), Some(value)) = (id["system"].as_str(), id["value"].as_str()) else { continue };
            if system == NHS_SYSTEM {
                if NhsNumber::parse(value).is_ok() {
                    out.insert(0, (system.to_string(), value.to_string()));
                }
            } else if domain.organisation_of_mrn_system(system).is_some() {
                out.push((system.to_string(), value.to_string()));
            }
        }
        out
    }

    /// Matches a registration (see the module documentation). `new_id` is the id a new
    /// Patient gets; with `reserve`, a new person is reserved in the index until the
    /// returned [`Registration`] is confirmed or dropped.
    pub(crate) async fn register(&self, patient: &Value, new_id: &str, reserve: bool) -> Result<Registration, FhirError> {
        self.register_among(patient, new_id, reserve, &[]).await
    }

    /// [`Engine::register`] within a transaction that has reserved `own` already: those
    /// are not waited for (they commit with this one), and a registration that would link
    /// to one of them (one person registered twice in one Bundle) creates its record and
    /// puts the pair on the worklist instead.
    pub(crate) async fn register_among(&self, patient: &Value, new_id: &str, reserve: bool, own: &[String]) -> Result<Registration, FhirError> {
        for (system, value) in self.identifying(patient) {
            if let Some(id) = self.patient_by_identifier(&system, &value).await? {
                let what = if system == NHS_SYSTEM { "NHS number".to_string() } else { format!("MRN ({system})") };
                let note = format!("patient index: linked to Patient/{id} by {what}");
                let report = MatchReport { decision: "link", other: Some(id.clone()), score: None, note: note.clone() };
                return Ok(Registration { note, report, outcome: Outcome::Link { id }, reservation: None });
            }
        }
        let person = Person::from_patient(patient);
        let config = self.domain().patient_index.clone();
        self.catch_up().await?;
        for _ in 0..PENDING_TRIES {
            let decided = {
                let mut guard = self.inner_index().state.lock().expect("index lock");
                let built = guard.as_mut().expect("built by catch_up");
                let mut candidates = built.search(&person, &config, None);
                for (id, s) in candidates.iter_mut() {
                    if own.contains(id) && s.decision == Decision::Link {
                        s.decision = Decision::Review;
                    }
                }
                let waiting = candidates.iter().any(|(id, s)| s.decision != Decision::Distinct && built.pending.contains(id) && !own.contains(id));
                if waiting {
                    None
                } else {
                    let best = candidates.first().map(|(id, s)| (id.clone(), s.total, s.decision));
                    match best {
                        Some((id, total, Decision::Link)) => {
                            let note = format!("patient index: linked to Patient/{id} (score {total:.1}, at or above the upper threshold {})", config.upper);
                            let report = MatchReport { decision: "link", other: Some(id.clone()), score: Some(round1(total)), note: note.clone() };
                            Some(Registration { note, report, outcome: Outcome::Link { id }, reservation: None })
                        }
                        _ => {
                            let review: Vec<(String, Score)> = candidates.into_iter().filter(|(_, s)| s.decision == Decision::Review).take(MAX_REVIEW).collect();
                            let note = match (review.first(), best.clone()) {
                                (Some((id, s)), _) => format!(
                                    "patient index: new person; possible duplicate of Patient/{id} (score {:.1}; thresholds {} and {}; {}), put on the review worklist",
                                    s.total,
                                    config.lower,
                                    config.upper,
                                    if s.total >= config.upper { "not linked automatically: a guard applies" } else { "between the thresholds" }
                                ),
                                (None, Some((_, total, _))) => format!("patient index: new person (best candidate score {total:.1}, below {})", config.lower),
                                (None, None) => "patient index: new person (no candidates)".to_string(),
                            };
                            let reservation = reserve.then(|| {
                                built.put(new_id, person.clone());
                                built.pending.insert(new_id.to_string());
                                (self.clone(), new_id.to_string())
                            });
                            let precondition = match &person.nhs_number {
                                Some(n) => Precondition::NoneMatching(Criteria {
                                    resource_type: "Patient".into(),
                                    id: None,
                                    identifiers: vec![TokenMatch { system: Some(NHS_SYSTEM.into()), value: n.as_str().to_string() }],
                                }),
                                None => Precondition::Absent,
                            };
                            let report = match (review.first(), best) {
                                (Some((id, s)), _) => MatchReport { decision: "review", other: Some(id.clone()), score: Some(round1(s.total)), note: note.clone() },
                                (None, Some((id, total, _))) => MatchReport { decision: "create", other: Some(id), score: Some(round1(total)), note: note.clone() },
                                (None, None) => MatchReport { decision: "create", other: None, score: None, note: note.clone() },
                            };
                            Some(Registration { note, report, outcome: Outcome::New { id: new_id.to_string(), precondition, review }, reservation })
                        }
                    }
                }
            };
            match decided {
                Some(r) => return Ok(r),
                None => {
                    tokio::time::sleep(PENDING_WAIT).await;
                    self.catch_up().await?;
                }
            }
        }
        Err(FhirError::new(409, IssueType::Conflict, "a registration of a matching person is still being committed; try again"))
    }

    /// What the patient index would decide for this Patient if `access` registered it,
    /// without writing anything (a migration's dry run): validated and authorised as a
    /// registration would be, and audited (it names the record a registration would join).
    pub async fn registration_preview(&self, access: &Access, patient: Value) -> Result<MatchReport, FhirError> {
        let map = self.validated("Patient", patient)?;
        let value = Value::Object(map);
        let mut gate = self.gate(access);
        gate.authorize_write(tessera_policy::Action::Create, "Patient", "", None, Some(&value)).await?;
        let registration = self.register(&value, &crate::prepare::new_id(), false).await?;
        let report = registration.report.clone();
        let patients: Vec<String> = report.other.iter().cloned().collect();
        let entities: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
        gate.record_noted("$migrate-preview", true, &entities, patients, &format!("dry run: {}", report.note));
        gate.finish().await?;
        Ok(report)
    }

    /// Candidates for `$match` and migration dry runs: identifier matches first, then the
    /// scored candidates, best first. Nothing is reserved or written.
    pub async fn match_candidates(&self, patient: &Value, exclude: Option<&str>) -> Result<Vec<Candidate>, FhirError> {
        let mut out: Vec<Candidate> = Vec::new();
        for (system, value) in self.identifying(patient) {
            if let Some(id) = self.patient_by_identifier(&system, &value).await? {
                if exclude != Some(id.as_str()) && !out.iter().any(|c| c.id == id) {
                    out.push(Candidate { id, score: None, by_identifier: Some(system) });
                }
            }
        }
        self.catch_up().await?;
        let person = Person::from_patient(patient);
        let config = self.domain().patient_index.clone();
        let scored = {
            let guard = self.inner_index().state.lock().expect("index lock");
            guard.as_ref().map(|b| b.search(&person, &config, exclude)).unwrap_or_default()
        };
        for (id, score) in scored {
            match out.iter_mut().find(|c| c.id == id) {
                Some(c) => c.score = Some(score),
                None => out.push(Candidate { id, score: Some(score), by_identifier: None }),
            }
        }
        Ok(out)
    }

    /// The Patient of a link, with what the registration adds (`None`: nothing new).
    pub(crate) fn linked_content(&self, existing: &Stored, submitted: &Value, organisation: &str) -> Result<Option<Map<String, Value>>, FhirError> {
        let mut record: Value = serde_json::from_slice(&existing.json).map_err(|e| FhirError::internal(format!("stored Patient is not JSON: {e}")))?;
        let domain = self.domain();
        let org_name = domain.organisation(organisation).map_or(organisation, |o| o.name.as_str()).to_string();
        let mark = |v: &Value| -> Value {
            let mut v = v.clone();
            if let Some(m) = v.as_object_mut() {
                let mut ext = m.get("extension").and_then(Value::as_array).cloned().unwrap_or_default();
                ext.retain(|e| e["url"] != ADDED_BY);
                ext.push(json!({"url": ADDED_BY, "valueReference": {"identifier": {"system": ORGANISATION_SYSTEM, "value": organisation}, "display": org_name}}));
                m.insert("extension".into(), Value::Array(ext));
            }
            v
        };
        let mut changed = false;
        // Each list: append the submitted elements whose key the record does not have yet
        // (keys hashed, so a long list costs linear time).
        let mut add = |record: &mut Value, list: &str, key: &dyn Fn(&Value) -> String, adjust: &dyn Fn(&mut Value, &[Value])| {
            let Some(items) = submitted[list].as_array() else { return };
            let target = array_member(record, list);
            let mut seen: HashSet<String> = target.iter().map(key).collect();
            for item in items {
                if seen.insert(key(item)) {
                    let mut item = mark(item);
                    adjust(&mut item, target);
                    target.push(item);
                    changed = true;
                }
            }
        };
        let none = |_: &mut Value, _: &[Value]| {};
        add(&mut record, "identifier", &|e| format!("{}|{}", e["system"].as_str().unwrap_or_default(), e["value"].as_str().unwrap_or_default()), &none);
        // Names: new family + given combinations (never a second official name).
        let name_key = |n: &Value| -> String {
            let given: Vec<String> = n["given"].as_array().into_iter().flatten().filter_map(Value::as_str).map(tessera_empi::text::name).collect();
            format!("{}|{}", n["family"].as_str().map(tessera_empi::text::name).unwrap_or_default(), given.join(" "))
        };
        add(&mut record, "name", &name_key, &|n, list| {
            if n["use"] == "official" && list.iter().any(|e| e["use"] == "official") {
                n["use"] = "usual".into();
            }
        });
        add(&mut record, "telecom", &|t| format!("{}|{}", t["system"].as_str().unwrap_or_default(), t["value"].as_str().map(tessera_empi::text::phone).unwrap_or_default()), &none);
        add(
            &mut record,
            "address",
            &|a| {
                format!(
                    "{}|{}",
                    a["postalCode"].as_str().map(tessera_empi::text::postcode).unwrap_or_default(),
                    a["line"].get(0).and_then(Value::as_str).map(tessera_empi::text::name).unwrap_or_default()
                )
            },
            &none,
        );
        // Single facts the record lacks.
        for field in ["birthDate", "gender"] {
            if record.get(field).is_none() {
                if let Some(v) = submitted.get(field) {
                    record[field] = v.clone();
                    changed = true;
                }
            }
        }
        for list in ["identifier", "name", "telecom", "address"] {
            if record.get(list).and_then(Value::as_array).is_some_and(Vec::is_empty) {
                record.as_object_mut().expect("object").remove(list);
            }
        }
        if !changed {
            return Ok(None);
        }
        let Value::Object(mut map) = record else { return Err(FhirError::internal("stored Patient is not an object")) };
        // Keep the record's own meta (labels), without the version facts.
        if let Some(mut m) = map.remove("meta") {
            if let Some(o) = m.as_object_mut() {
                o.remove("versionId");
                o.remove("lastUpdated");
            }
            map.insert("meta".into(), m);
        }
        let map = self.validated("Patient", Value::Object(map))?;
        Ok(Some(map))
    }

    /// The stamp of a link's write: the record keeps its owner and its author (a
    /// registration by another user must not make them the author of a record that only
    /// its author may see).
    pub(crate) fn link_stamp(existing: &Stored) -> crate::prepare::Stamp {
        let author = serde_json::from_slice::<Value>(&existing.json).ok().and_then(|v| crate::merge::author_of(&v));
        crate::prepare::Stamp { owner: existing.owner.clone(), author }
    }

    /// The answer to a registration that linked: the linked Patient as the subject may see
    /// it, or — where the gate hides it — the subject's own submission under its id.
    pub(crate) async fn link_answer(&self, gate: &mut Gate<'_>, linked: &Stored, submitted: &Value) -> Result<VersionedResource, FhirError> {
        Ok(match gate.release(linked.clone()).await? {
            Decided::Visible(r) => r.into(),
            Decided::BehindGlass | Decided::Hidden => VersionedResource::own_submission(linked, submitted),
        })
    }

    /// The worklist `Task` for a possible duplicate: `focus` the newer record, `for` the
    /// older, the score and each field's comparison as inputs (no demographic values).
    pub(crate) fn worklist_task(&self, gate: &Gate<'_>, newer: &str, older: &str, score: &Score) -> Result<Option<tessera_store::Write>, FhirError> {
        let (a, b) = if newer < older { (newer, older) } else { (older, newer) };
        let mut inputs = vec![json!({"type": {"coding": [{"system": INDEX_SYSTEM, "code": "score", "display": "match score"}]}, "valueDecimal": round1(score.total)})];
        for f in &score.fields {
            let level = match f.level {
                tessera_empi::score::Level::Agree => "agree".to_string(),
                tessera_empi::score::Level::Partial(x) => format!("partly agree ({:.0} %)", x * 100.0),
                tessera_empi::score::Level::Disagree => "disagree".to_string(),
                tessera_empi::score::Level::Missing => "missing".to_string(),
            };
            let note = if f.note.is_empty() { String::new() } else { format!(", {}", f.note) };
            inputs.push(json!({
                "type": {"coding": [{"system": INDEX_SYSTEM, "code": "field", "display": "field comparison"}], "text": f.field},
                "valueString": format!("{level}{note} ({:+.1})", f.weight),
            }));
        }
        let task = json!({
            "resourceType": "Task",
            "identifier": [{"system": PAIR_SYSTEM, "value": format!("{a}|{b}")}],
            "status": "requested",
            "intent": "proposal",
            "priority": "routine",
            "code": {"coding": [{"system": INDEX_SYSTEM, "code": WORKLIST_CODE, "display": "Possible duplicate patient records"}]},
            "description": format!("Possible duplicate: Patient/{newer} (new registration) and Patient/{older} (score {:.1})", score.total),
            "focus": {"reference": format!("Patient/{newer}")},
            "for": {"reference": format!("Patient/{older}")},
            "authoredOn": crate::prepare::format_instant(tessera_store::now_micros()),
            "requester": {"reference": format!("Organization/{}", gate.access().organisation)},
            "input": inputs,
        });
        let Value::Object(map) = task else { unreachable!() };
        crate::invariants::check_write(&Value::Object(map.clone()), &self.config().limits, None).map_err(FhirError::invalid)?;
        let stamp = crate::prepare::Stamp { owner: Some(gate.access().organisation.clone()), author: Some(gate.access().subject.clone()) };
        let criteria = Criteria { resource_type: "Task".into(), id: None, identifiers: vec![TokenMatch { system: Some(PAIR_SYSTEM.into()), value: format!("{a}|{b}") }] };
        let w = crate::prepare::prepare_write(map, &crate::prepare::new_id(), 1, Precondition::NoneMatching(criteria), &stamp)?;
        Ok(Some(w))
    }

    /// Whether a pair is on the worklist already, decided or not (a pair decided "not a
    /// duplicate" never returns).
    pub(crate) async fn pair_known(&self, a: &str, b: &str) -> Result<bool, FhirError> {
        let (a, b) = if a < b { (a, b) } else { (b, a) };
        let criteria = Criteria { resource_type: "Task".into(), id: None, identifiers: vec![TokenMatch { system: Some(PAIR_SYSTEM.into()), value: format!("{a}|{b}") }] };
        Ok(!self.store().find(&criteria).await?.is_empty())
    }

    /// The worklist writes of a new registration (pairs not known already).
    pub(crate) async fn review_writes(&self, gate: &Gate<'_>, new_id: &str, review: &[(String, Score)]) -> Result<Vec<tessera_store::Write>, FhirError> {
        let mut out = Vec::new();
        for (other, score) in review {
            if !self.pair_known(new_id, other).await? {
                out.extend(self.worklist_task(gate, new_id, other, score)?);
            }
        }
        Ok(out)
    }

    pub(crate) fn inner_index(&self) -> &PatientIndex {
        self.patient_index()
    }

    /// A Patient's NHS number must not identify another Patient in force (an update that
    /// would give one person's number to a second record is refused: merge instead).
    pub(crate) async fn check_nhs_unique(&self, patient: &Value, id: &str) -> Result<(), FhirError> {
        for (i, ident) in patient["identifier"].as_array().into_iter().flatten().enumerate() {
            if ident["system"] != NHS_SYSTEM {
                continue;
            }
            let Some(value) = ident["value"].as_str() else { continue };
            if let Some(other) = self.patient_by_identifier(NHS_SYSTEM, value).await? {
                if other != id {
                    return Err(FhirError::new(
                        409,
                        IssueType::Duplicate,
                        "this NHS number already identifies another patient record; register with POST (which links to it) or merge the two records (Patient/$merge)",
                    )
                    .at(format!("Patient.identifier[{i}].value")));
                }
            }
        }
        Ok(())
    }

    /// `POST Patient/$match`: the Patients that may be the person described, graded, best
    /// first, only those the subject may see.
    pub async fn patient_match(&self, access: &Access, parameters: Value) -> Result<crate::bundle::Bundle, FhirError> {
        access.require_scope("Patient", tessera_auth::ScopeOp::Search)?;
        let params = parameters["parameter"].as_array().cloned().unwrap_or_default();
        if parameters["resourceType"] != "Parameters" {
            return Err(FhirError::bad_request("$match takes a Parameters resource").at("resourceType"));
        }
        let mut resource = None;
        let mut only_certain = false;
        let mut count = 10usize;
        for (i, p) in params.iter().enumerate() {
            let at = format!("Parameters.parameter[{i}]");
            match p["name"].as_str() {
                Some("resource") => resource = Some(p["resource"].clone()),
                Some("onlyCertainMatches") => {
                    only_certain = p["valueBoolean"].as_bool().ok_or_else(|| FhirError::bad_request("onlyCertainMatches takes valueBoolean").at(format!("{at}.valueBoolean")))?
                }
                Some("count") => {
                    count = p["valueInteger"].as_u64().filter(|n| *n >= 1).ok_or_else(|| FhirError::bad_request("count takes a positive valueInteger").at(format!("{at}.valueInteger")))?
                        as usize;
                    count = count.min(self.config().max_page_size);
                }
                Some(other) => return Err(FhirError::bad_request(format!("$match has no parameter '{other}' (resource, onlyCertainMatches, count)")).at(format!("{at}.name"))),
                None => return Err(FhirError::bad_request("a parameter has no name").at(format!("{at}.name"))),
            }
        }
        let Some(resource) = resource else {
            return Err(FhirError::bad_request("$match needs the parameter 'resource' (the Patient to match)").at("Parameters.parameter"));
        };
        if resource["resourceType"] != "Patient" {
            return Err(FhirError::bad_request("the 'resource' of $match must be a Patient").at("Parameters.parameter.resource.resourceType"));
        }
        let map = self.validated("Patient", resource).map_err(|e| e.within("Parameters.parameter.resource"))?;
        let resource = Value::Object(map);
        let config = self.domain().patient_index.clone();
        let mut gate = self.gate(access);
        let mut out = Vec::new();
        for c in self.match_candidates(&resource, None).await? {
            let (grade, score) = grade(&c, &config);
            if grade == "certainly-not" || (only_certain && grade != "certain") {
                continue;
            }
            out.push((c, grade, score));
        }
        out.sort_by(|a, b| b.2.total_cmp(&a.2));
        let base = self.config().base_url.clone();
        let mut released = Vec::new();
        for (c, grade, score) in out {
            if released.len() >= count {
                break;
            }
            let Some(s) = self.store().read("Patient", &c.id).await? else { continue };
            if let Decided::Visible(r) = gate.release(s).await? {
                let search = json!({"mode": "match", "score": round2(score), "extension": [{"url": MATCH_GRADE, "valueCode": grade}]});
                released.push((c.id, r, search));
            }
        }
        let mut writer = crate::bundle::BundleWriter::new("searchset", Some(released.len() as u64), &[("self", format!("{base}/Patient/$match"))]);
        let mut returned = Vec::new();
        for (id, r, search) in released {
            writer.resource(Some(&format!("{base}/Patient/{id}")), &r, &[("search", search)]);
            returned.push(id);
        }
        let entities: Vec<String> = returned.iter().map(|id| format!("Patient/{id}")).collect();
        gate.record_access("$match", true, &entities, returned, None);
        gate.finish().await?;
        Ok(writer.finish())
    }

    /// `GET Patient/$ihe-pix?sourceIdentifier=system|value[&targetSystem=…]` (IHE PIXm,
    /// ITI-83): the identifiers of the person in other identifier domains, as Parameters.
    pub async fn ihe_pix(&self, access: &Access, source: &str, target_systems: &[String]) -> Result<Value, FhirError> {
        access.require_scope("Patient", tessera_auth::ScopeOp::Read)?;
        let Some((system, value)) = source.split_once('|').filter(|(s, v)| !s.is_empty() && !v.is_empty()) else {
            return Err(FhirError::bad_request("sourceIdentifier must be system|value").at("sourceIdentifier"));
        };
        let domain = self.domain();
        for t in target_systems {
            let known = t == NHS_SYSTEM || domain.organisation_of_mrn_system(t).is_some();
            if !known {
                return Err(FhirError::new(403, IssueType::CodeInvalid, format!("targetSystem '{t}' is not an identifier domain this patient index knows")).at("targetSystem"));
            }
        }
        let criteria = Criteria { resource_type: "Patient".into(), id: None, identifiers: vec![TokenMatch { system: Some(system.into()), value: value.into() }] };
        let mut gate = self.gate(access);
        let mut parameters = Vec::new();
        let mut patients = Vec::new();
        let mut ids = self.store().find(&criteria).await?;
        ids.sort();
        for id in ids {
            let Some(id) = self.patient_in_force(&id).await? else { continue };
            let Some(s) = self.store().read("Patient", &id).await? else { continue };
            let Decided::Visible(r) = gate.release(s).await? else { continue };
            let patient: Value = serde_json::from_slice(&r.json).map_err(|e| FhirError::internal(format!("stored Patient is not JSON: {e}")))?;
            for ident in patient["identifier"].as_array().into_iter().flatten() {
                let s = ident["system"].as_str().unwrap_or_default();
                if (target_systems.is_empty() || target_systems.iter().any(|t| t == s)) && !(s == system && ident["value"] == value) {
                    let mut ident = ident.clone();
                    if let Some(m) = ident.as_object_mut() {
                        m.remove("extension");
                    }
                    parameters.push(json!({"name": "targetIdentifier", "valueIdentifier": ident}));
                }
            }
            parameters.push(json!({"name": "targetId", "valueReference": {"reference": format!("Patient/{id}")}}));
            patients.push(id);
        }
        let entities: Vec<String> = patients.iter().map(|id| format!("Patient/{id}")).collect();
        gate.record_access("$ihe-pix", !patients.is_empty(), &entities, patients.clone(), None);
        gate.finish().await?;
        if patients.is_empty() {
            return Err(FhirError::new(404, IssueType::NotFound, format!("no patient is known by the identifier {system}|{value}")).at("sourceIdentifier"));
        }
        Ok(json!({"resourceType": "Parameters", "parameter": parameters}))
    }
}

/// A `$match` grade and its 0–1 score: an identifier match is certain (1.0); at or above
/// the upper threshold certain (0.9–1.0); between the thresholds probable (0.6–0.9); in
/// the lower half below the lower threshold possible (0.3–0.6); else certainly-not.
pub fn grade(c: &Candidate, config: &Config) -> (&'static str, f64) {
    if c.by_identifier.is_some() {
        return ("certain", 1.0);
    }
    let Some(s) = &c.score else { return ("certainly-not", 0.0) };
    let t = s.total;
    let possible = config.lower / 2.0;
    let frac = |x: f64, lo: f64, hi: f64| if hi > lo { ((x - lo) / (hi - lo)).clamp(0.0, 1.0) } else { 1.0 };
    if t >= config.upper && s.decision == Decision::Link {
        ("certain", 0.9 + 0.1 * frac(t, config.upper, config.upper + 10.0))
    } else if t >= config.lower {
        ("probable", 0.6 + 0.3 * frac(t, config.lower, config.upper))
    } else if t >= possible {
        ("possible", 0.3 + 0.3 * frac(t, possible, config.lower))
    } else {
        ("certainly-not", 0.3 * frac(t, 0.0, possible))
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn array_member<'a>(record: &'a mut Value, name: &str) -> &'a mut Vec<Value> {
    let m = record.as_object_mut().expect("a Patient is an object");
    let entry = m.entry(name.to_string()).or_insert_with(|| Value::Array(Vec::new()));
    if !entry.is_array() {
        *entry = Value::Array(Vec::new());
    }
    entry.as_array_mut().expect("array")
}

/// A write as the stored row it will become (for a decision before commit).
pub(crate) fn stored_of(w: &tessera_store::Write) -> Stored {
    Stored {
        resource_type: w.resource_type.clone(),
        id: w.id.clone(),
        version: w.version,
        seq: 0,
        last_updated_micros: w.last_updated_micros,
        deleted: w.deleted,
        compartment: w.compartment.clone(),
        owner: w.owner.clone(),
        json: w.json.clone(),
    }
}

/// One open pair of the review worklist, for `tessera empi review`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OpenPair {
    pub task: String,
    /// `requested` or `on-hold` (deferred).
    pub status: String,
    pub newer: String,
    pub older: String,
    pub score: f64,
    /// Each field's comparison, as the worklist records it.
    pub fields: Vec<(String, String)>,
    /// The trusts that hold each record (by their MRNs on it), `—` when none.
    pub newer_trusts: Vec<String>,
    pub older_trusts: Vec<String>,
}

impl Engine {
    /// The open pairs of the duplicate review worklist this subject may see, oldest first.
    pub async fn open_duplicates(&self, access: &Access) -> Result<Vec<OpenPair>, FhirError> {
        let mut out = Vec::new();
        let mut offset = 0;
        let mut gate = self.gate(access);
        loop {
            let query = format!("code={INDEX_SYSTEM}|{WORKLIST_CODE}&status=requested,on-hold&_sort=_lastUpdated&_count=500&_offset={offset}");
            let page = self.search(access, crate::search::Scope::Type(Some("Task")), &query, true).await?;
            let page: Value = serde_json::from_slice(page.as_bytes()).map_err(|e| FhirError::internal(e.to_string()))?;
            let entries = page["entry"].as_array().cloned().unwrap_or_default();
            for e in &entries {
                let t = &e["resource"];
                let patient = |k: &str| t[k]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")).unwrap_or_default().to_string();
                let mut fields = Vec::new();
                let mut score = 0.0;
                for i in t["input"].as_array().into_iter().flatten() {
                    match i["type"]["coding"][0]["code"].as_str() {
                        Some("score") => score = i["valueDecimal"].as_f64().unwrap_or_default(),
                        _ => fields.push((i["type"]["text"].as_str().unwrap_or_default().to_string(), i["valueString"].as_str().unwrap_or_default().to_string())),
                    }
                }
                let (newer, older) = (patient("focus"), patient("for"));
                out.push(OpenPair {
                    task: t["id"].as_str().unwrap_or_default().to_string(),
                    status: t["status"].as_str().unwrap_or_default().to_string(),
                    newer_trusts: self.trusts_of_mrns(&mut gate, &newer).await?,
                    older_trusts: self.trusts_of_mrns(&mut gate, &older).await?,
                    newer,
                    older,
                    score,
                    fields,
                });
            }
            if entries.len() < 500 {
                break;
            }
            offset += 500;
        }
        let patients: Vec<String> = out.iter().flat_map(|p| [p.newer.clone(), p.older.clone()]).collect();
        let entities: Vec<String> = patients.iter().map(|p| format!("Patient/{p}")).collect();
        gate.record_access("read", true, &entities, patients, None);
        gate.finish().await?;
        Ok(out)
    }

    /// The trusts whose MRNs a Patient carries (the organisations that registered it), as
    /// far as the subject may read the Patient (none otherwise).
    async fn trusts_of_mrns(&self, gate: &mut Gate<'_>, id: &str) -> Result<Vec<String>, FhirError> {
        let domain = self.domain();
        let Some(s) = self.store().read("Patient", id).await? else { return Ok(Vec::new()) };
        let Decided::Visible(s) = gate.release(s).await? else { return Ok(Vec::new()) };
        let v: Value = serde_json::from_slice(&s.json).unwrap_or(Value::Null);
        let mut out: Vec<String> = v["identifier"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i["system"].as_str().and_then(|s| domain.organisation_of_mrn_system(s)))
            .map(|o| domain.trust_of(&o.id).to_string())
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }
}

impl Engine {
    /// Finds possible duplicates among the records already in the domain (after a
    /// migration, or a change of the matcher's settings) and puts each new pair on the
    /// review worklist: pairs at or above the lower threshold, never merged automatically.
    /// A pair already on the worklist — open or decided, "not a duplicate" included — is not
    /// proposed again. `progress` is called with the records scanned so far. Returns the
    /// records scanned and the pairs added.
    pub async fn scan_duplicates(&self, access: &Access, progress: &dyn Fn(usize)) -> Result<(usize, usize), FhirError> {
        self.catch_up().await?;
        let config = self.domain().patient_index.clone();
        // A snapshot of who is in force, then each one's candidates (each pair once).
        let people: Vec<(String, Person)> = {
            let guard = self.inner_index().state.lock().expect("index lock");
            let Some(b) = guard.as_ref() else { return Ok((0, 0)) };
            let mut v: Vec<(String, Person)> = b.current.iter().filter_map(|(id, slot)| Some((id.clone(), b.index.get(*slot)?.clone()))).collect();
            v.sort_by(|a, b| a.0.cmp(&b.0));
            v
        };
        let mut added = 0;
        for (n, (id, person)) in people.iter().enumerate() {
            let pairs: Vec<(String, Score)> = {
                let guard = self.inner_index().state.lock().expect("index lock");
                let b = guard.as_ref().expect("built");
                b.search(person, &config, Some(id)).into_iter().filter(|(other, s)| other > id && s.decision != Decision::Distinct).collect()
            };
            for (other, score) in pairs {
                if self.pair_known(id, &other).await? {
                    continue;
                }
                // The later registration is the newer record (ids are time-ordered).
                let (newer, older) = if id > &other { (id.as_str(), other.as_str()) } else { (other.as_str(), id.as_str()) };
                let mut gate = self.gate(access);
                let Some(task) = self.worklist_task(&gate, newer, older, &score)? else { continue };
                gate.record_noted(
                    "create",
                    true,
                    &[format!("Task/{}", task.id)],
                    vec![newer.to_string(), older.to_string()],
                    &format!("patient index scan: possible duplicate (score {:.1})", score.total),
                );
                match self.commit_gated(&mut gate, vec![task]).await {
                    Ok(()) => added += 1,
                    // Proposed meanwhile by a registration: known now.
                    Err(tessera_store::StoreError::Conflict { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            if n % 1000 == 999 {
                progress(n + 1);
            }
        }
        progress(people.len());
        Ok((people.len(), added))
    }
}

impl Engine {
    /// The worklist writes for a Patient created by `PUT` with a client-chosen id (an
    /// update that creates): the id cannot be changed into a link, so the person is created
    /// as asked, and any record it matches — linkable or doubtful — goes on the review
    /// worklist with it, never silently beside it. (An NHS number already on a record is
    /// refused before this: `check_nhs_unique`.)
    pub(crate) async fn put_create_reviews(&self, gate: &Gate<'_>, patient: &Value, id: &str) -> Result<(Vec<tessera_store::Write>, Option<String>), FhirError> {
        let registration = self.register(patient, id, false).await?;
        let config = self.domain().patient_index.clone();
        let pairs: Vec<(String, Score)> = match &registration.outcome {
            Outcome::New { review, .. } => review.clone(),
            Outcome::Link { id: other } if other != id => {
                let Some(s) = self.store().read("Patient", other).await? else { return Ok((Vec::new(), None)) };
                let v: Value = serde_json::from_slice(&s.json).map_err(|e| FhirError::internal(e.to_string()))?;
                vec![(other.clone(), config.score(&Person::from_patient(patient), &Person::from_patient(&v)))]
            }
            Outcome::Link { .. } => Vec::new(),
        };
        let note = match (&registration.outcome, pairs.first()) {
            (Outcome::Link { id: other }, Some(_)) => {
                Some(format!("patient index: created with the id asked for; matches Patient/{other}, put on the review worklist ({})", registration.note))
            }
            (_, Some(_)) => Some(registration.note.clone()),
            _ => None,
        };
        Ok((self.review_writes(gate, id, &pairs).await?, note))
    }
}
