//! Batch and transaction bundles, and the writer for every Bundle the engine returns.
//!
//! A **transaction** is all-or-nothing: every resource is validated, ids are assigned,
//! `urn:uuid:` full URLs and conditional references (`Practitioner?identifier=…`) are
//! resolved, and all writes go to the store as one [`tessera_store::Transaction`], whose
//! preconditions the store checks atomically. A lost optimistic race is retried from the
//! start; a failed client precondition (`ifMatch`) fails the transaction with 412.
//!
//! A **batch** runs each entry on its own (concurrently, so their writes share group
//! commits); one entry's failure is reported in its response entry.

use crate::access::Access;
use crate::criteria;
use crate::guard::Gate;
use tessera_policy::Action;
use crate::prepare::{format_instant, new_id, prepare_delete, prepare_write};
use crate::guard::Released;
use crate::{Engine, FhirError, ReturnPreference, VersionedResource};
use serde_json::{json, Value};
use std::collections::HashMap;
use tessera_fhir::IssueType;
use tessera_store::{Precondition, StoreError, Write};

const RETRIES: usize = 8;

/// A Bundle the engine built (JSON bytes). Only [`BundleWriter::finish`] makes one.
#[derive(Debug, Clone)]
pub struct Bundle(Vec<u8>);

impl Bundle {
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// Writes a Bundle as JSON bytes, embedding stored resources without re-parsing them.
///
/// An entry's resource is a stored version only as a [`Released`] (or a
/// [`VersionedResource`], made from one or from the subject's own write): the writer
/// cannot embed a row the [`Gate`](crate::guard::Gate) has not released.
pub struct BundleWriter {
    out: Vec<u8>,
    entries: usize,
}

impl BundleWriter {
    pub fn new(bundle_type: &str, total: Option<u64>, links: &[(&str, String)]) -> Self {
        let mut head = json!({
            "resourceType": "Bundle",
            "id": new_id(),
            "meta": {"lastUpdated": format_instant(tessera_store::now_micros())},
            "type": bundle_type,
        });
        if let Some(t) = total {
            head["total"] = json!(t);
        }
        if !links.is_empty() {
            head["link"] = links.iter().map(|(rel, url)| json!({"relation": rel, "url": url})).collect();
        }
        let mut out = serde_json::to_vec(&head).expect("bundle head serialises");
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"entry\":[");
        BundleWriter { out, entries: 0 }
    }

    /// An entry holding a released stored resource, as stored.
    pub fn resource(&mut self, full_url: Option<&str>, resource: &Released, extra: &[(&str, Value)]) {
        self.entry(full_url, Some(&resource.json), extra);
    }

    /// An entry holding a released stored resource, reshaped (`_elements`, `_summary`).
    pub fn shaped(&mut self, full_url: Option<&str>, resource: &Released, shape: impl FnOnce(&[u8]) -> Vec<u8>, extra: &[(&str, Value)]) {
        let body = shape(&resource.json);
        self.entry(full_url, Some(&body), extra);
    }

    /// An entry holding a version the engine hands out (a released read or the subject's
    /// own write), with or without its body.
    pub fn version(&mut self, full_url: Option<&str>, resource: &VersionedResource, with_body: bool, extra: &[(&str, Value)]) {
        self.entry(full_url, with_body.then_some(resource.json()), extra);
    }

    /// An entry holding a Bundle the engine built (a search inside a batch).
    pub fn bundle(&mut self, full_url: Option<&str>, bundle: &Bundle, extra: &[(&str, Value)]) {
        self.entry(full_url, Some(bundle.as_bytes()), extra);
    }

    /// An entry holding a resource the engine itself built (an OperationOutcome, an
    /// AuditEvent rendered from the audit log, Parameters) — never a stored resource.
    pub fn generated(&mut self, full_url: Option<&str>, resource: &Value, extra: &[(&str, Value)]) {
        let body = serde_json::to_vec(resource).expect("value serialises");
        self.entry(full_url, Some(&body), extra);
    }

    /// An entry without a resource (a response status, a deletion).
    pub fn empty(&mut self, full_url: Option<&str>, extra: &[(&str, Value)]) {
        self.entry(full_url, None, extra);
    }

    /// Adds an entry. `resource` is raw resource JSON; `extra` holds `search`, `request`,
    /// `response` members.
    fn entry(&mut self, full_url: Option<&str>, resource: Option<&[u8]>, extra: &[(&str, Value)]) {
        if self.entries > 0 {
            self.out.push(b',');
        }
        self.entries += 1;
        self.out.push(b'{');
        let mut first = true;
        let mut sep = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        if let Some(url) = full_url {
            sep(&mut self.out);
            self.out.extend_from_slice(b"\"fullUrl\":");
            serde_json::to_writer(&mut self.out, url).expect("string serialises");
        }
        if let Some(r) = resource.filter(|r| !r.is_empty()) {
            sep(&mut self.out);
            self.out.extend_from_slice(b"\"resource\":");
            self.out.extend_from_slice(r);
        }
        for (name, value) in extra {
            sep(&mut self.out);
            serde_json::to_writer(&mut self.out, name).expect("string serialises");
            self.out.push(b':');
            serde_json::to_writer(&mut self.out, value).expect("value serialises");
        }
        self.out.push(b'}');
    }

    pub fn finish(mut self) -> Bundle {
        if self.entries == 0 {
            // `entry` must not be empty: drop `,"entry":[`.
            self.out.truncate(self.out.len() - ",\"entry\":[".len());
            self.out.push(b'}');
        } else {
            self.out.extend_from_slice(b"]}");
        }
        Bundle(self.out)
    }
}

/// What a GET entry read: a resource, or a searchset.
enum Got {
    Resource(VersionedResource),
    Bundle(Bundle),
}

/// What a batch entry did.
enum Done {
    Read(Got),
    Written(VersionedResource),
}

/// The parsed `request` of a bundle entry.
#[derive(Debug, Clone)]
struct EntryRequest {
    method: String,
    resource_type: String,
    id: Option<String>,
    version: Option<String>,
    query: Option<String>,
    if_none_exist: Option<String>,
    if_match: Option<u64>,
    /// `ifNoneMatch: *` on a PUT: only if the resource does not exist (a create with the
    /// client's id, once).
    if_none_match: bool,
}

/// Parses `[base/]Type[/id[/_history/vid]][?query]`.
fn parse_url(base: &str, url: &str) -> Option<(String, Option<String>, Option<String>, Option<String>)> {
    let url = url.strip_prefix(base).unwrap_or(url).trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (url, None),
    };
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        [ty] => Some((ty.to_string(), None, None, query)),
        [ty, id] => Some((ty.to_string(), Some(id.to_string()), None, query)),
        [ty, id, "_history", v] => Some((ty.to_string(), Some(id.to_string()), Some(v.to_string()), query)),
        _ => None,
    }
}

fn parse_etag(s: &str) -> Option<u64> {
    s.trim().trim_start_matches("W/").trim_matches('"').parse().ok()
}

fn entry_request(base: &str, request: Option<&Value>, at: &str) -> Result<EntryRequest, FhirError> {
    let request = request.ok_or_else(|| FhirError::bad_request("entry has no request").at(format!("{at}.request")))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::bad_request("entry request has no method").at(format!("{at}.request.method")))?;
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::bad_request("entry request has no url").at(format!("{at}.request.url")))?;
    let (resource_type, id, version, query) =
        parse_url(base, url).ok_or_else(|| FhirError::bad_request(format!("cannot interpret request url '{url}'")).at(format!("{at}.request.url")))?;
    if !tessera_fhir::definitions::is_resource_type(&resource_type) {
        return Err(FhirError::bad_request(format!("'{resource_type}' is not a resource type")).at(format!("{at}.request.url")));
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(s) => Some(parse_etag(s).ok_or_else(|| FhirError::bad_request(format!("bad ifMatch '{s}'")).at(format!("{at}.request.ifMatch")))?),
        None => None,
    };
    let if_none_match = match request.get("ifNoneMatch").and_then(Value::as_str) {
        None => false,
        Some("*") if method == "PUT" => true,
        Some(other) => {
            return Err(FhirError::bad_request(format!("ifNoneMatch '{other}' is not supported: only '*' on a PUT (create once)")).at(format!("{at}.request.ifNoneMatch")))
        }
    };
    Ok(EntryRequest {
        method: method.to_string(),
        if_none_match,
        resource_type,
        id,
        version,
        query,
        if_none_exist: request.get("ifNoneExist").and_then(Value::as_str).map(str::to_string),
        if_match,
    })
}

fn status_line(status: u16) -> String {
    let reason = match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        409 => "Conflict",
        410 => "Gone",
        412 => "Precondition Failed",
        422 => "Unprocessable Entity",
        _ => "",
    };
    format!("{status} {reason}").trim_end().to_string()
}

fn response_member(r: &VersionedResource, status: u16) -> Value {
    let mut resp = json!({"status": status_line(status), "etag": r.etag(), "lastModified": r.last_updated()});
    if status == 201 || status == 200 {
        resp["location"] = json!(r.versioned_reference());
    }
    resp
}

/// What one transaction entry will do.
enum Plan {
    /// Write this version (index into the writes).
    Write { write: usize, status: u16 },
    /// A conditional create that matched an existing resource.
    Existing { resource_type: String, id: String },
    /// A delete of an absent or already deleted resource: nothing to write.
    Noop,
    /// Read after the writes.
    Get(EntryRequest),
    /// A Patient registration the patient index linked to an existing record: answered
    /// with the record as the subject may see it (`stored`: the version written, or the
    /// existing one when the registration added nothing).
    Linked { stored: Box<tessera_store::Stored>, submitted: Box<Value>, status: u16 },
}

/// A bundle as received: the shell is parsed, each entry's resource stays raw JSON text
/// until its turn, so a large bundle never exists as one big JSON tree in memory.
#[derive(serde::Deserialize)]
struct BundleIn<'a> {
    #[serde(rename = "resourceType")]
    resource_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    #[serde(borrow, default)]
    entry: Vec<EntryIn<'a>>,
}

#[derive(serde::Deserialize)]
struct EntryIn<'a> {
    #[serde(rename = "fullUrl")]
    full_url: Option<String>,
    #[serde(borrow)]
    resource: Option<&'a serde_json::value::RawValue>,
    request: Option<Value>,
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<String>,
}

/// Parses a raw resource of an entry.
fn parse_resource(raw: &serde_json::value::RawValue, at: &str) -> Result<Value, FhirError> {
    serde_json::from_str(raw.get()).map_err(|e| FhirError::bad_request(format!("the resource is not valid JSON: {e}")).at(format!("{at}.resource")))
}

impl Engine {
    /// Processes a `batch` or `transaction` Bundle given as a JSON value.
    pub async fn bundle(&self, access: &Access, body: Value, prefer: Option<ReturnPreference>) -> Result<Bundle, FhirError> {
        let bytes = serde_json::to_vec(&body).map_err(|e| FhirError::internal(format!("cannot serialise bundle: {e}")))?;
        self.bundle_json(access, &bytes, prefer).await
    }

    /// Processes a `batch` or `transaction` Bundle given as JSON text and returns the
    /// response Bundle JSON.
    pub async fn bundle_json(&self, access: &Access, body: &[u8], prefer: Option<ReturnPreference>) -> Result<Bundle, FhirError> {
        let bundle: BundleIn<'_> = serde_json::from_slice(body).map_err(|e| {
            let what = if e.to_string().contains("recursion limit") { "the JSON is nested too deeply".to_string() } else { format!("the body is not a valid Bundle: {e}") };
            FhirError::new(400, IssueType::Structure, what).at(format!("line {}, column {}", e.line(), e.column()))
        })?;
        if bundle.resource_type.as_deref() != Some("Bundle") {
            return Err(FhirError::bad_request("only a Bundle can be posted to the base URL").at("resourceType"));
        }
        let limit = self.config().max_bundle_entries;
        if bundle.entry.len() > limit {
            return Err(FhirError::new(
                413,
                IssueType::TooCostly,
                format!(
                    "a Bundle of {} entries is larger than this server's limit of {limit} (set by `tessera serve --max-bundle-entries`); send it in parts",
                    bundle.entry.len()
                ),
            )
            .at("Bundle.entry"));
        }
        match bundle.kind.as_deref().unwrap_or("") {
            "transaction" => self.transaction(access, bundle.entry, prefer).await,
            "batch" => Ok(self.batch(access, bundle.entry, prefer).await),
            other => Err(FhirError::bad_request(format!("a Bundle of type '{other}' cannot be processed; use batch or transaction")).at("Bundle.type")),
        }
    }

    async fn transaction(&self, access: &Access, entries: Vec<EntryIn<'_>>, prefer: Option<ReturnPreference>) -> Result<Bundle, FhirError> {
        let base = self.config().base_url.clone();
        let mut requests = Vec::with_capacity(entries.len());
        let mut raws = Vec::with_capacity(entries.len());
        let mut full_urls = Vec::with_capacity(entries.len());
        for (i, entry) in entries.into_iter().enumerate() {
            let at = format!("Bundle.entry[{i}]");
            let req = entry_request(&base, entry.request.as_ref(), &at)?;
            match (req.method.as_str(), entry.resource) {
                ("POST" | "PUT", None) => {
                    return Err(FhirError::bad_request(format!("{} entry has no resource", req.method)).at(format!("{at}.resource")))
                }
                ("POST" | "PUT" | "DELETE", _) => Self::check_writable(&req.resource_type).map_err(|e| e.at(format!("{at}.request.url")))?,
                ("GET" | "HEAD", _) => {}
                (m, _) => return Err(FhirError::bad_request(format!("method '{m}' is not supported in a transaction")).at(format!("{at}.request.method"))),
            }
            full_urls.push(entry.full_url);
            raws.push(if matches!(req.method.as_str(), "POST" | "PUT") { entry.resource } else { None });
            requests.push(req);
        }
        let mut gate = self.gate(access);
        for _attempt in 0..RETRIES {
            let (plans, writes, registrations) = self.try_transaction(&mut gate, &requests, &raws, &full_urls).await?;
            let written: Vec<VersionedResource> = match prefer {
                Some(ReturnPreference::Representation) => writes.iter().map(crate::rest::written).collect(),
                _ => writes.iter().map(crate::rest::written_head).collect(),
            };
            match self.commit_gated(&mut gate, writes).await {
                Ok(()) => {
                    registrations.into_iter().for_each(crate::patient_index::Registration::confirm);
                    return self.transaction_response(&mut gate, plans, written, prefer).await;
                }
                Err(StoreError::Conflict { index, reason, .. }) => {
                    if let Some(req) = user_precondition(&plans, &requests, index) {
                        return Err(FhirError::precondition_failed(format!("{}/{}: {reason}", req.resource_type, req.id.as_deref().unwrap_or(""))));
                    }
                    continue; // lost a race: plan again against the new state
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FhirError::new(409, IssueType::Conflict, "the transaction kept conflicting with concurrent writes; try again"))
    }

    /// Plans a transaction against the current state: ids, references, versions,
    /// preconditions; parses, validates and serialises each resource in turn.
    async fn try_transaction(
        &self,
        gate: &mut Gate<'_>,
        requests: &[EntryRequest],
        raws: &[Option<&serde_json::value::RawValue>],
        full_urls: &[Option<String>],
    ) -> Result<(Vec<Plan>, Vec<Write>, Vec<crate::patient_index::Registration>), FhirError> {
        let store = self.store();
        // Patient registrations: the patient index's decisions (linked: the note; new: the
        // worklist candidates), by entry.
        let mut registrations = Vec::new();
        let mut linked: HashMap<usize, String> = HashMap::new();
        let mut reviews: Vec<(String, Vec<(String, tessera_empi::Score)>)> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let mut put_reviews: Vec<Write> = Vec::new();
        // Patient registrations validated for matching, not validated again.
        let mut prevalidated: HashMap<usize, serde_json::Map<String, Value>> = HashMap::new();
        let entry_types: HashMap<&str, &str> =
            full_urls.iter().zip(requests).filter_map(|(f, r)| Some((f.as_deref()?, r.resource_type.as_str()))).collect();
        let entry_type = |r: &str| -> Option<&'static str> { tessera_fhir::definitions::definitions().resource(entry_types.get(r)?).map(|td| td.name.as_str()) };
        // 1. Decide the id of every written entry.
        let mut ids: Vec<Option<String>> = vec![None; requests.len()];
        let mut plans: Vec<Option<Plan>> = (0..requests.len()).map(|_| None).collect();
        let mut preconditions: Vec<Precondition> = vec![Precondition::None; requests.len()];
        for (i, req) in requests.iter().enumerate() {
            let at = format!("Bundle.entry[{i}].request");
            match req.method.as_str() {
                "POST" if req.resource_type == "Patient" => {
                    let mut conditional = None;
                    if let Some(q) = &req.if_none_exist {
                        let criteria = criteria::parse(&req.resource_type, q).map_err(|e| e.at(format!("{at}.ifNoneExist")))?;
                        let (matches, precondition) = self.conditional_matches(gate, &criteria).await?;
                        match matches.as_slice() {
                            [] => conditional = Some(precondition),
                            [id] => {
                                ids[i] = Some(id.clone());
                                plans[i] = Some(Plan::Existing { resource_type: req.resource_type.clone(), id: id.clone() });
                                continue;
                            }
                            _ => return Err(multiple(&req.resource_type, q).at(format!("{at}.ifNoneExist"))),
                        }
                    }
                    let entry_at = format!("Bundle.entry[{i}]");
                    // Invalid resources are reported with the others in step 3.
                    let Some(value) = raws[i].and_then(|raw| parse_resource(raw, &entry_at).ok()).and_then(|v| self.validated_resolving("Patient", v, Some(&entry_type)).ok()).map(Value::Object) else {
                        ids[i] = Some(new_id());
                        preconditions[i] = Precondition::Absent;
                        continue;
                    };
                    prevalidated.insert(i, value.as_object().cloned().expect("a validated resource is an object"));
                    let own: Vec<String> = own_new_ids(&registrations);
                    let registration = self.register_among(&value, &new_id(), true, &own).await?;
                    notes.push(registration.note.clone());
                    match registration.outcome.clone() {
                        crate::patient_index::Outcome::Link { id } => {
                            ids[i] = Some(id);
                            linked.insert(i, registration.note.clone());
                        }
                        crate::patient_index::Outcome::New { id, precondition, review } => {
                            ids[i] = Some(id.clone());
                            preconditions[i] = match (precondition, conditional) {
                                (Precondition::Absent, Some(c)) => c,
                                (p, _) => p,
                            };
                            if !review.is_empty() {
                                reviews.push((id, review));
                            }
                        }
                    }
                    registrations.push(registration);
                }
                "POST" => match &req.if_none_exist {
                    Some(q) => {
                        let criteria = criteria::parse(&req.resource_type, q).map_err(|e| e.at(format!("{at}.ifNoneExist")))?;
                        let (matches, precondition) = self.conditional_matches(gate, &criteria).await?;
                        match matches.as_slice() {
                            [] => {
                                ids[i] = Some(new_id());
                                preconditions[i] = precondition;
                            }
                            [id] => {
                                ids[i] = Some(id.clone());
                                plans[i] = Some(Plan::Existing { resource_type: req.resource_type.clone(), id: id.clone() });
                            }
                            _ => return Err(multiple(&req.resource_type, q).at(format!("{at}.ifNoneExist"))),
                        }
                    }
                    None => {
                        ids[i] = Some(new_id());
                        preconditions[i] = Precondition::Absent;
                    }
                },
                "PUT" | "DELETE" => match (&req.id, &req.query) {
                    (Some(id), _) => ids[i] = Some(id.clone()),
                    (None, Some(q)) => {
                        let criteria = criteria::parse(&req.resource_type, q).map_err(|e| e.at(format!("{at}.url")))?;
                        let (matches, precondition) = self.conditional_matches(gate, &criteria).await?;
                        match matches.as_slice() {
                            [] if req.method == "PUT" => {
                                let body_id = raws[i].and_then(|r| serde_json::from_str::<IdOnly>(r.get()).ok()).and_then(|b| b.id);
                                ids[i] = Some(body_id.unwrap_or_else(new_id));
                                preconditions[i] = precondition;
                            }
                            [] => plans[i] = Some(Plan::Noop),
                            [id] => ids[i] = Some(id.clone()),
                            _ => return Err(multiple(&req.resource_type, q).at(format!("{at}.url"))),
                        }
                    }
                    (None, None) => return Err(FhirError::bad_request(format!("{} needs an id or criteria", req.method)).at(format!("{at}.url"))),
                },
                _ => plans[i] = Some(Plan::Get(req.clone())),
            }
        }
        // 2. Map full URLs to the assigned ids; a resource may be written only once.
        let mut resolved: HashMap<String, String> = HashMap::new();
        let mut touched = std::collections::HashSet::new();
        for (i, req) in requests.iter().enumerate() {
            let Some(id) = &ids[i] else { continue };
            if req.method != "GET" && !matches!(plans[i], Some(Plan::Existing { .. })) && !touched.insert((req.resource_type.clone(), id.clone())) {
                return Err(FhirError::bad_request(format!("{}/{id} is changed by more than one entry", req.resource_type)).at(format!("Bundle.entry[{i}]")));
            }
            if let Some(full) = &full_urls[i] {
                resolved.insert(full.clone(), format!("{}/{id}", req.resource_type));
            }
        }
        // The resources this transaction writes (references to them need no look-up), and
        // the types of its `urn:uuid:` references (for validation's target type check).
        let in_transaction: std::collections::HashSet<String> = touched.iter().map(|(t, id)| format!("{t}/{id}")).chain(resolved.values().cloned()).collect();
        let resolve_type = |r: &str| -> Option<&'static str> {
            let ty = resolved.get(r)?.split('/').next()?;
            tessera_fhir::definitions::definitions().resource(ty).map(|td| td.name.as_str())
        };
        // 3. Parse, validate, rewrite references and prepare the writes, one entry at a time.
        let mut conditional_cache: HashMap<String, String> = HashMap::new();
        let mut writes = Vec::new();
        let mut out_plans = Vec::with_capacity(requests.len());
        let mut issues = Vec::new();
        let mut entities = Vec::new();
        let mut patients: Vec<String> = Vec::new();
        for (i, req) in requests.iter().enumerate() {
            if let Some(plan) = plans[i].take() {
                out_plans.push(plan);
                continue;
            }
            let at = format!("Bundle.entry[{i}]");
            let id = ids[i].clone().expect("every write has an id");
            let map = match raws[i] {
                Some(_) if prevalidated.contains_key(&i) => prevalidated.remove(&i),
                Some(raw) => match parse_resource(raw, &at).and_then(|v| self.validated_resolving(&req.resource_type, v, Some(&resolve_type))) {
                    Ok(map) => Some(map),
                    Err(e) => {
                        issues.extend(e.within(&format!("{at}.resource")).issues);
                        out_plans.push(Plan::Noop);
                        continue;
                    }
                },
                None => None,
            };
            if !issues.is_empty() {
                // Already failing: only keep validating the remaining entries.
                out_plans.push(Plan::Noop);
                continue;
            }
            if linked.contains_key(&i) {
                // A registration linked to an existing Patient: it gains what this one adds.
                let Some(existing) = store.read("Patient", &id).await?.filter(|s| !s.deleted) else {
                    return Err(FhirError::new(409, IssueType::Conflict, "the patient record this registration matched has changed; try again"));
                };
                let mut value = Value::Object(map.expect("POST carries a resource"));
                self.resolve_references(gate, &mut value, &resolved, &mut conditional_cache, i).await?;
                gate.authorize_write(Action::Create, "Patient", &id, None, Some(&value)).await.map_err(|e| e.at(at.to_string()))?;
                let status = if req.if_none_exist.is_some() { 200 } else { 201 };
                let organisation = gate.access().organisation.clone();
                let stored = match self.linked_content(&existing, &value, &organisation)? {
                    None => existing,
                    Some(map) => {
                        let w = prepare_write(map, &id, existing.version + 1, Precondition::Version(existing.version), &Self::link_stamp(&existing))?;
                        entities.push(format!("Patient/{id}/_history/{}", w.version));
                        let stored = crate::patient_index::stored_of(&w);
                        writes.push(w);
                        stored
                    }
                };
                if !patients.contains(&id) {
                    patients.push(id.clone());
                }
                out_plans.push(Plan::Linked { stored: Box::new(stored), submitted: Box::new(value), status });
                continue;
            }
            let current = match req.method.as_str() {
                "POST" => None,
                _ => store.read(&req.resource_type, &id).await?,
            };
            if let (Some(expected), cur) = (req.if_match, &current) {
                if cur.as_ref().map(|c| c.version) != Some(expected) {
                    return Err(FhirError::precondition_failed(format!(
                        "{}/{id}: ifMatch expected version {expected}, current is {}",
                        req.resource_type,
                        cur.as_ref().map(|c| c.version.to_string()).unwrap_or_else(|| "absent".into())
                    ))
                    .at(format!("{at}.request.ifMatch")));
                }
            }
            if req.if_none_match && current.as_ref().is_some_and(|c| !c.deleted) {
                return Err(FhirError::precondition_failed(format!("{}/{id} exists (ifNoneMatch: *)", req.resource_type)).at(format!("{at}.request.ifNoneMatch")));
            }
            let (version, precondition, status) = match &current {
                Some(c) => (c.version + 1, Precondition::Version(c.version), if c.deleted { 201 } else { 200 }),
                None => {
                    let p = std::mem::replace(&mut preconditions[i], Precondition::None);
                    (1, if matches!(p, Precondition::None) { Precondition::Absent } else { p }, 201)
                }
            };
            if req.method == "DELETE" {
                match &current {
                    Some(c) if !c.deleted => {
                        gate.authorize_write(Action::Delete, &req.resource_type, &id, Some(c), None).await.map_err(|e| e.at(at.to_string()))?;
                        let w = prepare_delete(&req.resource_type, &id, version, precondition, c);
                        entities.push(format!("{}/{}/_history/{}", w.resource_type, w.id, w.version));
                        writes.push(w);
                        out_plans.push(Plan::Write { write: writes.len() - 1, status: 204 });
                    }
                    _ => out_plans.push(Plan::Noop),
                }
                continue;
            }
            if req.method == "PUT" && current.is_none() && !self.config().update_create && !req.if_none_match {
                return Err(FhirError::method_not_allowed(format!("{}/{id} does not exist and this server does not create resources by update", req.resource_type))
                    .at(format!("{at}.request")));
            }
            let mut value = Value::Object(map.expect("POST and PUT carry a resource"));
            if req.method == "PUT" {
                if let (Some(url_id), Some(body_id)) = (&req.id, value.get("id").and_then(Value::as_str)) {
                    if url_id != body_id {
                        return Err(FhirError::bad_request(format!("resource id '{body_id}' does not match the request url id '{url_id}'"))
                            .at(format!("{at}.resource.id")));
                    }
                }
            }
            self.resolve_references(gate, &mut value, &resolved, &mut conditional_cache, i).await?;
            let action = if current.as_ref().is_some_and(|c| !c.deleted) { Action::Write } else { Action::Create };
            gate.authorize_write(action, &req.resource_type, &id, current.as_ref(), Some(&value)).await.map_err(|e| e.at(at.to_string()))?;
            let resolved_conditionally = &conditional_cache;
            self.check_references(&value, Some(&format!("{at}.resource")), &|r: &str| in_transaction.contains(r) || resolved_conditionally.values().any(|c| c == r)).await?;
            if req.method == "PUT" && req.resource_type == "Patient" {
                self.check_nhs_unique(&value, &id).await.map_err(|e| e.within(&format!("{at}.resource")))?;
            }
            if req.method == "PUT" && req.resource_type == "Patient" && status == 201 {
                let (review, note) = self.put_create_reviews(gate, &value, &id).await?;
                put_reviews.extend(review);
                notes.extend(note);
            }
            let Value::Object(map) = value else { unreachable!() };
            let w = prepare_write(map, &id, version, precondition, &Self::stamp(gate, &req.resource_type, current.as_ref()))?;
            entities.push(format!("{}/{}/_history/{}", w.resource_type, w.id, w.version));
            if let Some(p) = if w.resource_type == "Patient" { Some(&w.id) } else { w.compartment.as_ref() } {
                if !patients.contains(p) {
                    patients.push(p.clone());
                }
            }
            writes.push(w);
            out_plans.push(Plan::Write { write: writes.len() - 1, status });
        }
        if !issues.is_empty() {
            return Err(FhirError::invalid(issues));
        }
        for (id, review) in &reviews {
            writes.extend(self.review_writes(gate, id, review).await?);
        }
        writes.extend(put_reviews);
        gate.take_audit(); // a previous attempt's record
        let note = notes.join("; ");
        gate.record("transaction", true, &entities, patients, false, (!note.is_empty()).then_some(note.as_str()));
        Ok((out_plans, writes, registrations))
    }

    /// Rewrites `urn:uuid:`/full-URL references to the entries' ids and resolves
    /// conditional references (`Type?criteria`), which must match exactly one resource.
    async fn resolve_references(
        &self,
        gate: &mut Gate<'_>,
        value: &mut Value,
        resolved: &HashMap<String, String>,
        cache: &mut HashMap<String, String>,
        entry: usize,
    ) -> Result<(), FhirError> {
        let mut conditional = Vec::new();
        let mut unresolved = None;
        tessera_fhir::reference::for_each_reference_mut(value, &mut |r| {
            if let Some(target) = resolved.get(r.as_str()) {
                *r = target.clone();
            } else if let Some(target) = cache.get(r.as_str()) {
                *r = target.clone();
            } else if r.starts_with("urn:uuid:") || r.starts_with("urn:oid:") {
                unresolved.get_or_insert_with(|| r.clone());
            } else if criteria::split_conditional_reference(r).is_some() {
                conditional.push(r.clone());
            }
        });
        if let Some(r) = unresolved {
            return Err(FhirError::bad_request(format!("reference '{r}' does not match the fullUrl of any entry in the transaction"))
                .at(format!("Bundle.entry[{entry}].resource")));
        }
        if conditional.is_empty() {
            return Ok(());
        }
        for r in conditional {
            if cache.contains_key(&r) {
                continue;
            }
            let (ty, query) = criteria::split_conditional_reference(&r).expect("checked above");
            let criteria = criteria::parse(ty, query).map_err(|e| e.at(format!("Bundle.entry[{entry}].resource")))?;
            let ids = self.visible_matches(gate, &criteria).await?;
            match ids.as_slice() {
                [id] => {
                    cache.insert(r.clone(), format!("{ty}/{id}"));
                }
                [] => {
                    return Err(FhirError::new(400, IssueType::NotFound, format!("conditional reference '{r}' matches no resource"))
                        .at(format!("Bundle.entry[{entry}].resource")))
                }
                _ => return Err(multiple(ty, query).at(format!("Bundle.entry[{entry}].resource"))),
            }
        }
        tessera_fhir::reference::for_each_reference_mut(value, &mut |r| {
            if let Some(target) = cache.get(r.as_str()) {
                *r = target.clone();
            }
        });
        Ok(())
    }

    async fn transaction_response(&self, gate: &mut Gate<'_>, plans: Vec<Plan>, written: Vec<VersionedResource>, prefer: Option<ReturnPreference>) -> Result<Bundle, FhirError> {
        let access = gate.access().clone();
        let mut out = BundleWriter::new("transaction-response", None, &[]);
        let base = &self.config().base_url;
        for plan in plans {
            match plan {
                Plan::Write { write, status } => {
                    let r = &written[write];
                    let with_body = prefer == Some(ReturnPreference::Representation) && !r.deleted();
                    let full_url = (!r.deleted()).then(|| format!("{base}/{}/{}", r.resource_type(), r.id()));
                    out.version(full_url.as_deref(), r, with_body, &[("response", response_member(r, status))]);
                }
                Plan::Existing { resource_type, id } => {
                    let r = self.read(&access, &resource_type, &id).await?;
                    let with_body = prefer == Some(ReturnPreference::Representation);
                    out.version(Some(&format!("{base}/{resource_type}/{id}")), &r, with_body, &[("response", response_member(&r, 200))]);
                }
                Plan::Noop => out.empty(None, &[("response", json!({"status": status_line(204)}))]),
                Plan::Linked { stored, submitted, status } => {
                    let r = self.link_answer(gate, &stored, &submitted).await?;
                    let with_body = prefer == Some(ReturnPreference::Representation);
                    out.version(Some(&format!("{base}/Patient/{}", r.id())), &r, with_body, &[("response", response_member(&r, status))]);
                }
                Plan::Get(req) => {
                    let response = |status: u16| [("response", json!({"status": status_line(status)}))];
                    match self.get_entry(&access, &req).await {
                        Ok(Got::Resource(r)) => out.version(None, &r, true, &response(200)),
                        Ok(Got::Bundle(b)) => out.bundle(None, &b, &response(200)),
                        Err(e) => out.generated(None, &e.outcome(), &response(e.status)),
                    }
                }
            }
        }
        Ok(out.finish())
    }

    async fn get_entry(&self, access: &Access, req: &EntryRequest) -> Result<Got, FhirError> {
        match (&req.id, &req.version) {
            (Some(id), Some(v)) => Ok(Got::Resource(self.vread(access, &req.resource_type, id, v).await?)),
            (Some(id), None) => Ok(Got::Resource(self.read(access, &req.resource_type, id).await?)),
            (None, _) => {
                let scope = crate::search::Scope::Type(Some(&req.resource_type));
                Ok(Got::Bundle(Box::pin(self.search(access, scope, req.query.as_deref().unwrap_or(""), true)).await?))
            }
        }
    }

    async fn batch(&self, access: &Access, entries: Vec<EntryIn<'_>>, prefer: Option<ReturnPreference>) -> Bundle {
        let base = self.config().base_url.clone();
        let futures = entries.into_iter().enumerate().map(|(i, entry)| {
            let base = base.clone();
            async move {
                let at = format!("Bundle.entry[{i}]");
                let req = entry_request(&base, entry.request.as_ref(), &at)?;
                let resource = match entry.resource {
                    Some(raw) => Some(parse_resource(raw, &at)?),
                    None => None,
                };
                self.batch_entry(access, req, resource, i).await.map_err(|e| e.within_entry(i))
            }
        });
        let results = futures::future::join_all(futures).await;
        let mut out = BundleWriter::new("batch-response", None, &[]);
        for result in results {
            match result {
                Ok((_, Some(Done::Read(Got::Resource(r))))) => {
                    let full_url = format!("{base}/{}/{}", r.resource_type(), r.id());
                    out.version(Some(&full_url), &r, true, &[("response", json!({"status": status_line(200)}))]);
                }
                Ok((_, Some(Done::Read(Got::Bundle(b))))) => out.bundle(None, &b, &[("response", json!({"status": status_line(200)}))]),
                Ok((status, Some(Done::Written(r)))) => {
                    // A write returns the resource only when asked.
                    let with_body = prefer == Some(ReturnPreference::Representation) && !r.deleted();
                    let full_url = (!r.deleted()).then(|| format!("{base}/{}/{}", r.resource_type(), r.id()));
                    out.version(full_url.as_deref(), &r, with_body, &[("response", response_member(&r, status))]);
                }
                Ok((status, None)) => out.empty(None, &[("response", json!({"status": status_line(status)}))]),
                Err(e) => out.empty(None, &[("response", json!({"status": status_line(e.status), "outcome": e.outcome()}))]),
            }
        }
        out.finish()
    }

    async fn batch_entry(&self, access: &Access, req: EntryRequest, resource: Option<Value>, i: usize) -> Result<(u16, Option<Done>), FhirError> {
        let need = |r: Option<Value>| r.ok_or_else(|| FhirError::bad_request(format!("{} entry has no resource", req.method)).at(format!("Bundle.entry[{i}].resource")));
        match req.method.as_str() {
            "POST" => {
                let mut value = need(resource)?;
                self.resolve_references(&mut self.gate(access), &mut value, &HashMap::new(), &mut HashMap::new(), i).await?;
                let w = self.create(access, &req.resource_type, value, req.if_none_exist.as_deref()).await?;
                Ok((w.status, Some(Done::Written(w.resource))))
            }
            "PUT" => {
                let mut value = need(resource)?;
                self.resolve_references(&mut self.gate(access), &mut value, &HashMap::new(), &mut HashMap::new(), i).await?;
                let w = match (&req.id, &req.query) {
                    (Some(id), _) => self.update(access, &req.resource_type, id, value, req.if_match).await?,
                    (None, Some(q)) => self.conditional_update(access, &req.resource_type, q, value, req.if_match).await?,
                    (None, None) => return Err(FhirError::bad_request("PUT needs an id or criteria")),
                };
                Ok((w.status, Some(Done::Written(w.resource))))
            }
            "DELETE" => {
                let r = match (&req.id, &req.query) {
                    (Some(id), _) => self.delete(access, &req.resource_type, id, req.if_match).await?,
                    (None, Some(q)) => self.conditional_delete(access, &req.resource_type, q).await?,
                    (None, None) => return Err(FhirError::bad_request("DELETE needs an id or criteria")),
                };
                Ok((204, r.map(Done::Written)))
            }
            "GET" | "HEAD" => Ok((200, Some(Done::Read(self.get_entry(access, &req).await?)))),
            m => Err(FhirError::bad_request(format!("method '{m}' is not supported in a batch"))),
        }
    }
}

impl FhirError {
    fn within_entry(self, i: usize) -> Self {
        // Errors from the single-resource path name `Type.element`; place them in the entry.
        let prefix = format!("Bundle.entry[{i}].resource");
        let mut e = self;
        for issue in &mut e.issues {
            for ex in &mut issue.expression {
                if !ex.starts_with("Bundle.") {
                    let rest = ex.split_once('.').map(|(_, r)| r).unwrap_or("");
                    *ex = if rest.is_empty() { prefix.clone() } else { format!("{prefix}.{rest}") };
                }
            }
        }
        e
    }
}

fn multiple(resource_type: &str, query: &str) -> FhirError {
    FhirError::new(412, IssueType::MultipleMatches, format!("more than one {resource_type} matches '{query}'"))
}

/// If write `index` failed on a precondition the client set (`ifMatch`), that request.
fn user_precondition<'a>(plans: &[Plan], requests: &'a [EntryRequest], index: usize) -> Option<&'a EntryRequest> {
    plans.iter().zip(requests).find_map(|(p, r)| match p {
        Plan::Write { write, .. } if *write == index && r.if_match.is_some() => Some(r),
        _ => None,
    })
}

/// The Patients a transaction's registrations are creating (reserved in the index).
fn own_new_ids(registrations: &[crate::patient_index::Registration]) -> Vec<String> {
    registrations
        .iter()
        .filter_map(|r| match &r.outcome {
            crate::patient_index::Outcome::New { id, .. } => Some(id.clone()),
            crate::patient_index::Outcome::Link { .. } => None,
        })
        .collect()
}
