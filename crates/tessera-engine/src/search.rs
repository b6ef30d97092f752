//! FHIR search (`GET [type]?…`, `POST [type]/_search`, `GET [base]?…`), compartment search
//! (`Patient/[id]/[type]`) and `Patient/[id]/$everything`, inside the enforcement point.
//!
//! A request is parsed by `tessera-search`, compiled into a store [`IndexQuery`] and run
//! page by page: every candidate goes through [`Gate::visibility`] before it is counted,
//! listed, used as a chain or `_has` match, or followed by `_include`/`_revinclude`, so
//! hidden data changes no result, count, link or status. Chains and `_has` are resolved
//! here, into explicit id lists of *visible* resources, before the outer query runs.

use crate::access::Access;
use crate::bundle::{Bundle, BundleWriter};
use crate::guard::{Decided, Gate, Released, Visibility};
use crate::residual::{residual, Residual};
use crate::{Engine, FhirError};
use serde_json::{json, Value as Json};
use tessera_auth::ScopeOp;
use tessera_fhir::IssueType;
use tessera_search::query::{self, Contained, ContainedType, Criterion, Modifier, SearchRequest, Summary, Total, Value};
use tessera_search::ParamKind;
use tessera_store::search::{Clause, IndexQuery, Pred, SortKey, StringMode, Table, UriMode};
use tessera_store::Stored;

/// How many matches a chain or `_has` may resolve to before the search is refused as too
/// broad (the ids become part of the outer query).
const MAX_INNER: usize = 5_000;
/// How many candidates `near` checks at most.
const MAX_TOTAL: usize = 100_000;
/// How many candidates `_total` and `_summary=count` load and decide on one by one at most
/// (for readers the policy restricts: about 11 µs each on SQLite, 2 vCPU); beyond that the
/// total is left out, with a note.
const MAX_COUNTED: usize = 20_000;
/// How many `seq`s one statement of an index-only count reads.
const COUNT_PAGE: usize = 50_000;
/// The most referenced ids a part of a split count names (the store drives a query from a
/// reference naming at most 16).
const SPLIT_IDS: usize = 16;
/// How deep `:iterate` includes go.
const MAX_ITERATE: usize = 3;

/// Where a search runs.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// `GET [type]?…` (or all types).
    Type(Option<&'a str>),
    /// `GET Patient/[id]/[type]?…`.
    Compartment { patient: &'a str, resource_type: &'a str },
}

impl Engine {
    /// A search; `query` is the raw query string (or form body), `strict` follows
    /// `Prefer: handling=strict`.
    pub async fn search(&self, access: &Access, scope: Scope<'_>, query: &str, strict: bool) -> Result<Bundle, FhirError> {
        let resource_type = match scope {
            Scope::Type(t) => t,
            Scope::Compartment { resource_type, .. } => Some(resource_type),
        };
        if let Some(t) = resource_type {
            self.check_type(t)?;
            access.require_scope(t, ScopeOp::Search)?;
        }
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut cursor: Option<i64> = None;
        let mut offset: usize = 0;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "_cursor" => cursor = Some(v.parse().map_err(|_| FhirError::bad_request(format!("_cursor '{v}' is not valid")))?),
                "_offset" => offset = v.parse().map_err(|_| FhirError::bad_request(format!("_offset '{v}' is not valid")))?,
                // `_totalMethod` (fhirpy's `count()` sends `_totalMethod=count`): how a server
                // should count, not a filter; every count here is exact.
                "_format" | "_pretty" | "_totalMethod" => {}
                _ => pairs.push((k.into_owned(), v.into_owned())),
            }
        }
        for (k, v) in &pairs {
            crate::criteria::refuse_controls(k, v)?;
        }
        let mut counted = pairs.clone();
        if offset > 0 {
            counted.push(("_offset".into(), offset.to_string()));
        }
        self.config().search_limits.check(&counted)?;
        let request = query::parse(resource_type, &pairs, strict).map_err(query_errors)?;
        // `GET [base]?_type=…` asks for each type as a type-level search would.
        for t in &request.types {
            access.require_scope(t, ScopeOp::Search)?;
        }
        let mut gate = self.gate(access);
        let mut q = IndexQuery::new(resource_type);
        if let Scope::Compartment { patient, resource_type } = scope {
            q.clauses.push(compartment_clause(patient, resource_type));
        }
        if !request.types.is_empty() {
            q.clauses.push(Clause { any: vec![Pred::Types(request.types.clone())], negate: false });
        }
        let mut residuals: Vec<Residual> = Vec::new();
        for c in &request.criteria {
            if let Some(r) = residual(c)? {
                residuals.push(r);
                continue;
            }
            let clause = Box::pin(self.compile(&mut gate, resource_type.unwrap_or(""), c)).await?;
            q.clauses.push(clause);
        }
        let sorted = !request.sort.is_empty();
        for key in &request.sort {
            q.sort.push(sort_key(resource_type.unwrap_or(""), &key.param, key.descending)?);
        }
        // With `_contained=both`, the search of the resources themselves, run after that of
        // the contained ones (whose `seq`s are all above theirs: one cursor pages both).
        let mut plain_too: Option<IndexQuery> = None;
        if request.contained != Contained::False {
            // `_contained=true`: the criteria apply to contained resources of the type; the
            // matches are their containers (or themselves, `_containedType=contained`).
            if resource_type.is_none() || !matches!(scope, Scope::Type(_)) {
                return Err(FhirError::new(400, IssueType::NotSupported, "_contained needs a type-level search ([type]?…&_contained=true)"));
            }
            if sorted {
                return Err(FhirError::new(400, IssueType::NotSupported, "_sort cannot be combined with _contained (matches are listed newest first)"));
            }
            if !residuals.is_empty() {
                return Err(FhirError::new(400, IssueType::NotSupported, "_text, _content and near cannot be combined with _contained"));
            }
            if request.contained == Contained::Both {
                plain_too = Some(q.clone());
            }
            q.contained = true;
            for clause in &mut q.clauses {
                to_contained(clause);
            }
            for key in &mut q.sort {
                if let SortKey::Param { param, .. } = key {
                    *param = format!("#{param}");
                }
            }
            // Containers of at least one resource of the type.
            q.clauses.push(Clause { any: vec![Pred::Token { param: "#_id".into(), system: None, code: None }], negate: false });
        }
        let count = request.count.unwrap_or(self.config().default_page_size).min(self.config().max_page_size);
        // `_summary=count` and `_count=0`: the total only, no entries, no paging.
        let count_only = request.summary == Some(Summary::Count) || count == 0;

        // The page: visible matches only.
        let mut page = Vec::new();
        let mut page_cursors: Vec<i64> = Vec::new();
        let mut behind_glass = 0usize;
        let mut more = false;
        let mut next_cursor = cursor;
        let mut next_offset = offset;
        // The searches to run, in order, with their contained mode: one, or with
        // `_contained=both` the contained resources' and then the resources' own.
        let mut phases: Vec<(IndexQuery, Option<ContainedType>)> = vec![(q, None)];
        if phases[0].0.contained {
            phases[0].1 = Some(request.contained_type);
        }
        if let Some(plain) = plain_too {
            phases.push((plain, None));
        }
        // `near` without `_sort`: nearest first, paged by offset.
        let by_distance = !sorted && phases.len() == 1 && !phases[0].0.contained && residuals.iter().any(Residual::is_near);
        let sorted = sorted || by_distance;
        if by_distance && !count_only {
            let (nearest, glass, further) = self.nearest_page(&mut gate, &phases[0].0, &residuals, offset, count).await?;
            next_offset = offset + nearest.len();
            page = nearest;
            behind_glass = glass;
            more = further;
        } else if !count_only {
            // A cursor below every contained `seq` resumes in the last phase.
            let mut phase = if phases.len() > 1 && cursor.is_some_and(|c| tessera_store::search::container_of(c).is_none()) { phases.len() - 1 } else { 0 };
            let mut before = if sorted { None } else { cursor };
            let mut skip = if sorted { offset } else { 0 };
            'fill: while phase < phases.len() {
                let (q, contained) = &mut phases[phase];
                q.before_seq = before;
                q.offset = skip;
                q.limit = (count + 1 - page.len().min(count)).max(16);
                let seqs = self.search_seqs(q).await?;
                let exhausted = seqs.len() < q.limit;
                for Candidate { cursor: at, decided_on, listed } in self.candidates(&seqs, *contained).await? {
                    if sorted {
                        next_offset += 1;
                    } else {
                        next_cursor = Some(at);
                    }
                    let through_container = tessera_store::search::container_of(at).is_some();
                    if !meets(&residuals, &decided_on) || (through_container && access.require_scope(&decided_on.resource_type, ScopeOp::Search).is_err()) {
                        continue;
                    }
                    match gate.release(decided_on).await? {
                        Decided::Visible(_) if page.len() == count => {
                            more = true;
                            if sorted {
                                next_offset -= 1;
                            }
                            break 'fill;
                        }
                        Decided::Visible(r) => {
                            page_cursors.push(at);
                            page.push(match listed {
                                Some(l) => r.contained(l),
                                None => r,
                            });
                        }
                        Decided::BehindGlass => behind_glass += 1,
                        Decided::Hidden => {}
                    }
                }
                if exhausted {
                    phase += 1;
                    before = None;
                    skip = 0;
                    continue;
                }
                if sorted {
                    skip = next_offset;
                } else {
                    before = next_cursor;
                }
            }
            if !sorted && more {
                // The cursor is the last listed match: the next page starts after it.
                next_cursor = page_cursors.last().copied();
            }
        }

        // _total (and _summary=count): visible matches only. A first page that holds every
        // match is its own count; otherwise the matches are counted (`count_visible`), and
        // the total is left out, with a note, when that would mean deciding on more than
        // MAX_COUNTED candidates one by one.
        let mut uncounted = false;
        let counted = count_only || matches!(request.total, Total::Accurate | Total::Estimate);
        let total = if !count_only && !more && cursor.is_none() && offset == 0 {
            Some(page.len() as u64)
        } else if counted {
            let mut n = Some(0usize);
            for (q, contained) in &phases {
                match self.count_visible(&mut gate, q, &residuals, *contained).await? {
                    Some(k) => n = n.map(|n| n + k),
                    None => {
                        n = None;
                        break;
                    }
                }
            }
            uncounted = n.is_none();
            n.map(|n| n as u64)
        } else {
            None
        };

        // Includes.
        let included = if count_only { Vec::new() } else { self.includes(&mut gate, &request, &page).await? };

        let base = &self.config().base_url;
        let path = match scope {
            Scope::Type(Some(t)) => t.to_string(),
            Scope::Type(None) => String::new(),
            Scope::Compartment { patient, resource_type } => format!("Patient/{patient}/{resource_type}"),
        };
        let plain: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(pairs.iter()).finish();
        let self_link = if query.is_empty() { format!("{base}/{path}") } else { format!("{base}/{path}?{query}") };
        let mut links = vec![("self", self_link)];
        if more {
            let sep = if plain.is_empty() { "" } else { "&" };
            let next = if sorted {
                format!("{base}/{path}?{plain}{sep}_offset={next_offset}")
            } else {
                format!("{base}/{path}?{plain}{sep}_cursor={}", next_cursor.unwrap_or(0))
            };
            links.push(("next", next));
        }
        let mut out = BundleWriter::new("searchset", total, &links);
        let mut patients = Vec::new();
        let mut entities = Vec::new();
        for (s, mode) in page.iter().map(|s| (s, "match")).chain(included.iter().map(|s| (s, "include"))) {
            for p in crate::rest::patients_of(s) {
                if !patients.contains(&p) {
                    patients.push(p);
                }
            }
            entities.push(format!("{}/{}", s.resource_type, s.id));
            out.shaped(Some(&format!("{base}/{}/{}", s.resource_type, s.id)), s, |json| shape(json, &request), &[("search", json!({ "mode": mode }))]);
        }
        if behind_glass > 0 {
            out.generated(None, &suppressed_outcome(), &[("search", json!({"mode": "outcome"}))]);
        }
        if !request.warnings.is_empty() {
            let issues: Vec<tessera_fhir::Issue> = request
                .warnings
                .iter()
                .map(|w| tessera_fhir::Issue {
                    severity: tessera_fhir::IssueSeverity::Warning,
                    code: IssueType::NotSupported,
                    diagnostics: w.message.clone(),
                    expression: vec![w.param.clone()],
                })
                .collect();
            out.generated(None, &tessera_fhir::outcome::operation_outcome(&issues), &[("search", json!({"mode": "outcome"}))]);
        }
        if uncounted {
            let issue = tessera_fhir::Issue {
                severity: tessera_fhir::IssueSeverity::Warning,
                code: IssueType::TooCostly,
                diagnostics: format!("no total: counting what you may see would mean checking more than {MAX_COUNTED} matches one by one; narrow the search"),
                expression: vec![if request.summary == Some(Summary::Count) { "_summary".into() } else if count == 0 { "_count".into() } else { "_total".into() }],
            };
            out.generated(None, &tessera_fhir::outcome::operation_outcome(&[issue]), &[("search", json!({"mode": "outcome"}))]);
        }
        let interaction = if resource_type.is_some() { "search-type" } else { "search-system" };
        let detail = if path.is_empty() { format!("?{query}") } else { format!("{path}?{query}") };
        gate.record_access(interaction, true, &entities, patients, Some(&detail));
        gate.finish().await?;
        Ok(out.finish())
    }

    /// `GET Patient/[id]/$everything`: the patient and every resource of their compartment
    /// the subject may see, oldest first, paged by `_count` (with `_since` and `_type`).
    pub async fn everything(&self, access: &Access, patient: &str, query: &str) -> Result<Bundle, FhirError> {
        access.require_scope("Patient", ScopeOp::Read)?;
        let mut since: Option<i64> = None;
        let mut types: Vec<String> = Vec::new();
        let mut count = self.config().max_page_size;
        let mut cursor: Option<i64> = None;
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "_since" => {
                    since = Some(crate::prepare::parse_instant(&v).ok_or_else(|| FhirError::bad_request(format!("_since '{v}' is not a valid instant")))?)
                }
                "_type" => types.extend(v.split(',').map(str::to_string)),
                "_count" => count = v.parse::<usize>().map_err(|_| FhirError::bad_request(format!("_count '{v}' is not a number")))?.min(self.config().max_page_size),
                "_cursor" => cursor = Some(v.parse().map_err(|_| FhirError::bad_request(format!("_cursor '{v}' is not valid")))?),
                "_format" | "_pretty" => {}
                other => return Err(FhirError::bad_request(format!("$everything does not support the parameter '{other}' (_since, _type, _count)"))),
            }
        }
        for t in &types {
            self.check_type(t)?;
        }
        Self::check_id("Patient", patient)?;
        let mut gate = self.gate(access);
        // The patient first: absent or hidden means 404, as for a read.
        let Some(person) = self.store().read("Patient", patient).await?.filter(|p| !p.deleted) else {
            gate.record_access("everything", false, &[format!("Patient/{patient}")], vec![patient.to_string()], None);
            gate.finish().await?;
            return Err(FhirError::not_found("Patient", patient));
        };
        let person = match gate.release(person).await? {
            Decided::Visible(r) => r,
            v => {
                gate.record_access("everything", false, &[format!("Patient/{patient}")], vec![patient.to_string()], None);
                gate.finish().await?;
                return Err(if matches!(v, Decided::BehindGlass) { crate::guard::behind_glass("Patient", patient) } else { FhirError::not_found("Patient", patient) });
            }
        };
        let mut q = IndexQuery::new(None);
        q.clauses.push(Clause { any: vec![Pred::Compartment(patient.to_string())], negate: false });
        if !types.is_empty() {
            q.clauses.push(Clause { any: vec![Pred::Types(types.clone())], negate: false });
        }
        q.sort.push(SortKey::LastUpdated { descending: false });
        q.before_seq = None;
        let mut page: Vec<Released> = Vec::new();
        let include_person = cursor.is_none() && (types.is_empty() || types.iter().any(|t| t == "Patient")) && since.is_none_or(|s| person.last_updated_micros >= s);
        if include_person {
            page.push(person.clone());
        }
        let mut behind_glass = 0;
        let mut more = false;
        let mut last_seq = cursor.unwrap_or(0);
        'fill: loop {
            q.limit = count + 1;
            // Oldest first, after the cursor.
            q.after_seq = Some(last_seq);
            let seqs: Vec<i64> = self.store().search(&q).await?;
            let exhausted = seqs.len() < q.limit;
            for s in self.store().load(&seqs).await? {
                last_seq = s.seq;
                if s.resource_type == "Patient" && s.id == patient {
                    continue;
                }
                if since.is_some_and(|t| s.last_updated_micros < t) {
                    continue;
                }
                match gate.release(s).await? {
                    Decided::Visible(_) if page.len() >= count => {
                        more = true;
                        break 'fill;
                    }
                    Decided::Visible(r) => page.push(r),
                    Decided::BehindGlass => behind_glass += 1,
                    Decided::Hidden => {}
                }
            }
            if exhausted {
                break;
            }
        }
        let base = &self.config().base_url;
        let self_link = if query.is_empty() { format!("{base}/Patient/{patient}/$everything") } else { format!("{base}/Patient/{patient}/$everything?{query}") };
        let mut links = vec![("self", self_link)];
        if more {
            let cursor_seq = page.last().map(|s| s.seq).unwrap_or(last_seq);
            let mut rest: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().filter(|(k, _)| k != "_cursor").collect();
            rest.push(("_cursor".into(), cursor_seq.to_string()));
            let q = form_urlencoded::Serializer::new(String::new()).extend_pairs(rest.iter()).finish();
            links.push(("next", format!("{base}/Patient/{patient}/$everything?{q}")));
        }
        let total = (!more && cursor.is_none()).then_some(page.len() as u64);
        let mut out = BundleWriter::new("searchset", total, &links);
        let mut entities = Vec::with_capacity(page.len());
        for s in &page {
            entities.push(format!("{}/{}", s.resource_type, s.id));
            out.resource(Some(&format!("{base}/{}/{}", s.resource_type, s.id)), s, &[("search", json!({"mode": "match"}))]);
        }
        if behind_glass > 0 {
            out.generated(None, &suppressed_outcome(), &[("search", json!({"mode": "outcome"}))]);
        }
        gate.record_access("everything", true, &entities, vec![patient.to_string()], Some(query));
        gate.finish().await?;
        Ok(out.finish())
    }

    /// The number of visible matches of `q`, or `None` when that would mean deciding on
    /// more than [`MAX_COUNTED`] candidates one by one.
    ///
    /// A reader the policy does not restrict (the domain's bootstrap account, or a build
    /// without enforcement) whose scopes cover the type sees every current resource the
    /// index matches: the count is that of the index's matches, `seq`s only, without
    /// loading a resource. Anyone else: every candidate is loaded and decided by the gate.
    /// A clause naming many referenced ids (a chain or `_has`) is counted as the union of
    /// queries naming a few each ([`split_references`]).
    async fn count_visible(&self, gate: &mut Gate<'_>, q: &IndexQuery, residuals: &[Residual], contained: Option<ContainedType>) -> Result<Option<usize>, FhirError> {
        let mut q = q.clone();
        q.sort.clear();
        q.offset = 0;
        q.before_seq = None;
        let unrestricted = !self.config().enforce() || gate.access().is_domain_bootstrap();
        // The gate decides only by scope for this reader, and only one type is searched.
        let by_index = unrestricted
            && residuals.is_empty()
            && contained.is_none()
            && !q.contained
            && q.resource_type.as_deref().is_some_and(|t| gate.scope_allows(t));
        let parts = if contained.is_none() { split_references(&q) } else { Vec::new() };
        if !parts.is_empty() {
            // Every match, once: the union of the parts' matches.
            let mut seqs: std::collections::HashSet<i64> = std::collections::HashSet::new();
            for mut part in parts {
                part.limit = COUNT_PAGE;
                loop {
                    let page = self.store().search(&part).await?;
                    let done = page.len() < part.limit;
                    part.before_seq = page.last().copied();
                    seqs.extend(page);
                    if !by_index && seqs.len() > MAX_COUNTED {
                        return Ok(None);
                    }
                    if done {
                        break;
                    }
                }
            }
            if by_index {
                return Ok(Some(seqs.len()));
            }
            let mut seqs: Vec<i64> = seqs.into_iter().collect();
            seqs.sort_unstable_by(|a, b| b.cmp(a));
            let mut n = 0;
            for chunk in seqs.chunks(1000) {
                for s in self.store().load(chunk).await? {
                    if meets(residuals, &s) && gate.visibility(&s).await? == Visibility::Visible {
                        n += 1;
                    }
                }
            }
            return Ok(Some(n));
        }
        if by_index {
            // The index holds current, live versions only: the store counts them (every
            // resource of a type from the count it keeps, in constant time).
            return Ok(Some(usize::try_from(self.store().count(&q).await?).unwrap_or(usize::MAX)));
        }
        q.limit = 1000;
        let mut n = 0;
        let mut seen = 0;
        loop {
            let seqs = self.search_seqs(&q).await?;
            let done = seqs.len() < q.limit;
            if seen + seqs.len() > MAX_COUNTED {
                return Ok(None);
            }
            for c in self.candidates(&seqs, contained).await? {
                let s = &c.decided_on;
                let in_scope = contained.is_none() || gate.access().require_scope(&s.resource_type, ScopeOp::Search).is_ok();
                if in_scope && meets(residuals, s) && gate.visibility(s).await? == Visibility::Visible {
                    n += 1;
                }
            }
            seen += seqs.len();
            if done {
                return Ok(Some(n));
            }
            // Below every contained resource of the last container (each is counted once).
            q.before_seq = seqs.last().map(|&v| match (contained, tessera_store::search::container_of(v)) {
                (Some(ContainedType::Container), Some((container, _))) => tessera_store::search::contained_seq(container, 0),
                _ => v,
            });
        }
    }

    /// The store's search, except that a clause naming many referenced ids (a chain or
    /// `_has` that matched many resources, a `_revinclude` of a page) runs as queries of
    /// [`SPLIT_IDS`] ids each, merged newest first: a long id list cannot drive the store's
    /// plan, which would then walk every resource of the type. Queries in another order
    /// than newest first go to the store as they are.
    async fn search_seqs(&self, q: &IndexQuery) -> Result<Vec<i64>, FhirError> {
        let newest_first = q.after_seq.is_none() && q.sort.iter().all(|k| matches!(k, SortKey::LastUpdated { descending: true }));
        let parts = if newest_first { split_references(q) } else { Vec::new() };
        if parts.is_empty() {
            return Ok(self.store().search(q).await?);
        }
        let mut all: Vec<i64> = Vec::new();
        for mut part in parts {
            part.limit = q.limit.saturating_add(q.offset);
            part.offset = 0;
            all.extend(self.store().search(&part).await?);
        }
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.dedup();
        Ok(all.into_iter().skip(q.offset).take(q.limit).collect())
    }

    /// The visible current resources of `resource_type` matching one criterion: used for
    /// chains and `_has`. Refused when too many.
    async fn visible_matches_of(&self, gate: &mut Gate<'_>, resource_type: &str, criterion: &Criterion) -> Result<Vec<Stored>, FhirError> {
        gate.access().require_scope(resource_type, ScopeOp::Search)?;
        let residuals: Vec<Residual> = residual(criterion)?.into_iter().collect();
        let mut q = IndexQuery::new(Some(resource_type));
        if residuals.is_empty() {
            let clause = Box::pin(self.compile(gate, resource_type, criterion)).await?;
            q.clauses.push(clause);
        }
        q.limit = MAX_INNER + 1;
        let seqs = self.store().search(&q).await?;
        if seqs.len() > MAX_INNER {
            return Err(FhirError::new(
                400,
                IssueType::TooCostly,
                format!("the chained or _has criterion on {resource_type} matches more than {MAX_INNER} resources; narrow it"),
            ));
        }
        let mut out = Vec::new();
        for s in self.store().load(&seqs).await? {
            if meets(&residuals, &s) && gate.visibility(&s).await? == Visibility::Visible {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// Compiles one criterion into a store clause.
    async fn compile(&self, gate: &mut Gate<'_>, resource_type: &str, c: &Criterion) -> Result<Clause, FhirError> {
        let param = c.param.clone();
        if let Some(has) = &c.has {
            // Resources of `has.resource_type` matching the inner criterion (visible ones
            // only), and the ids they refer to through `has.reference_param`.
            let sources = self.visible_matches_of(gate, &has.resource_type, &has.criterion).await?;
            let mut ids: Vec<String> = Vec::new();
            for source in &sources {
                for (t, id) in references_in(source, std::slice::from_ref(&has.reference_param)) {
                    if t == resource_type && !ids.contains(&id) {
                        ids.push(id);
                    }
                }
            }
            return Ok(Clause { any: vec![Pred::Ids(ids)], negate: false });
        }
        if let Some(chain) = &c.chain {
            let mut any = Vec::new();
            for target in &chain.target_types {
                let targets = self.visible_matches_of(gate, target, &chain.criterion).await?;
                any.push(Pred::Reference { param: param.clone(), target_type: Some(target.clone()), ids: targets.into_iter().map(|s| s.id).collect(), url: None });
            }
            return Ok(Clause { any, negate: false });
        }
        if param == "_list" {
            return self.list_members(gate, resource_type, &c.values).await;
        }
        if c.modifier == Some(Modifier::Missing) {
            let missing = matches!(c.values.first(), Some(Value::Boolean(true)));
            if param == "_id" {
                return Ok(Clause { any: vec![Pred::Ids(Vec::new())], negate: !missing });
            }
            let table = table_of(c.kind).ok_or_else(|| unsupported(&param, "':missing' on this parameter"))?;
            return Ok(Clause { any: vec![Pred::Missing { param, table, missing }], negate: false });
        }
        if matches!(c.modifier, Some(Modifier::In | Modifier::NotIn)) {
            // Codes of value sets the server holds (their expansion, or the concepts their
            // compose lists).
            let mut any = Vec::new();
            for v in &c.values {
                let url = match v {
                    Value::Uri(u) => u.clone(),
                    Value::String { value, .. } => value.clone(),
                    _ => return Err(unsupported(&param, "this value for ':in'")),
                };
                for (system, code) in self.value_set_codes(gate, &url).await? {
                    any.push(Pred::Token { param: param.clone(), system: Some(system), code: Some(code) });
                }
            }
            return Ok(Clause { any, negate: c.modifier == Some(Modifier::NotIn) });
        }
        if c.kind == ParamKind::Token && matches!(c.modifier, Some(Modifier::Below | Modifier::Above)) {
            // Subsumption within a code system the server holds (its `concept` hierarchy).
            let below = c.modifier == Some(Modifier::Below);
            let mut any = Vec::new();
            for v in &c.values {
                let Value::Token { system: Some(Some(system)), code: Some(code) } = v else {
                    return Err(unsupported(&param, "':below'/':above' without [system]|[code]"));
                };
                for code in self.subsumption(gate, system, code, below).await? {
                    any.push(Pred::Token { param: param.clone(), system: Some(system.clone()), code: Some(code) });
                }
            }
            return Ok(Clause { any, negate: false });
        }
        let negate = c.modifier == Some(Modifier::Not);
        let mut any = Vec::new();
        if param == "_id" {
            let ids: Vec<String> = c
                .values
                .iter()
                .filter_map(|v| match v {
                    Value::Token { code: Some(code), .. } => Some(code.clone()),
                    Value::String { value, .. } => Some(value.clone()),
                    Value::Reference { id: Some(id), .. } => Some(id.clone()),
                    Value::Uri(u) => Some(u.clone()),
                    _ => None,
                })
                .collect();
            return Ok(Clause { any: vec![Pred::Ids(ids)], negate });
        }
        for v in &c.values {
            let pred = match (v, &c.modifier) {
                (Value::Token { system, code }, None | Some(Modifier::Not)) => {
                    Pred::Token { param: param.clone(), system: system.clone().map(|s| s.unwrap_or_default()), code: code.clone() }
                }
                (Value::String { normalized, .. }, Some(Modifier::Text)) if c.kind == ParamKind::Token => {
                    Pred::TokenText { param: param.clone(), value: normalized.clone() }
                }
                (Value::String { normalized, value }, modifier) if c.kind == ParamKind::String => {
                    let (mode, value) = match modifier {
                        Some(Modifier::Exact) => (StringMode::Exact, value.clone()),
                        Some(Modifier::Contains) => (StringMode::Contains, normalized.clone()),
                        None => (StringMode::Prefix, normalized.clone()),
                        Some(m) => return Err(unsupported(&param, &format!("the modifier ':{}'", m.as_str()))),
                    };
                    Pred::String { param: param.clone(), mode, value }
                }
                (Value::Date { prefix, low, high }, None) => Pred::Date { param: param.clone(), prefix: *prefix, low: *low, high: *high },
                (Value::Number { prefix, value, low, high }, None) => Pred::Number {
                    param: param.clone(),
                    prefix: *prefix,
                    value: *value,
                    low: *low,
                    high: *high,
                    system: None,
                    code: None,
                },
                (Value::Quantity { prefix, value, low, high, system, code }, None) => Pred::Number {
                    param: param.clone(),
                    prefix: *prefix,
                    value: *value,
                    low: *low,
                    high: *high,
                    system: system.clone(),
                    code: code.clone(),
                },
                (Value::Reference { target_type, id, url }, None | Some(Modifier::Type(_))) => {
                    let target_type = match &c.modifier {
                        Some(Modifier::Type(t)) => Some(t.clone()),
                        _ => target_type.clone(),
                    };
                    Pred::Reference { param: param.clone(), target_type, ids: id.iter().cloned().collect(), url: url.clone() }
                }
                (Value::Token { system, code }, Some(Modifier::Identifier)) => {
                    Pred::Token { param: format!("{param}:identifier"), system: system.clone().map(|s| s.unwrap_or_default()), code: code.clone() }
                }
                (Value::OfType { system, code, value }, Some(Modifier::OfType)) => Pred::TokenToken {
                    param: format!("{param}:of-type"),
                    system: Some(system.clone().unwrap_or_default()),
                    code: code.clone(),
                    system2: None,
                    code2: value.clone(),
                    prefix2: false,
                },
                (Value::Uri(u), None) => Pred::Uri { param: param.clone(), mode: UriMode::Equals, value: u.clone() },
                (Value::Uri(u), Some(Modifier::Below)) => Pred::Uri { param: param.clone(), mode: UriMode::Below, value: u.clone() },
                (Value::Uri(u), Some(Modifier::Above)) => Pred::Uri { param: param.clone(), mode: UriMode::Above, value: u.clone() },
                (_, Some(m)) => return Err(unsupported(&param, &format!("the modifier ':{}'", m.as_str()))),
                (Value::Composite(parts), None) => match parts.as_slice() {
                    [Value::Token { system, code: Some(code) }, Value::Quantity { prefix, value, low, high, system: us, code: unit }] => Pred::TokenQuantity {
                        param: param.clone(),
                        system: system.clone().map(|s| s.unwrap_or_default()),
                        code: code.clone(),
                        prefix: *prefix,
                        value: *value,
                        low: *low,
                        high: *high,
                        unit_system: us.clone(),
                        unit: unit.clone(),
                    },
                    [Value::Token { system, code: Some(code) }, Value::Token { system: s2, code: Some(code2) }] => Pred::TokenToken {
                        param: param.clone(),
                        system: system.clone().map(|s| s.unwrap_or_default()),
                        code: code.clone(),
                        system2: s2.clone().map(|s| s.unwrap_or_default()),
                        code2: code2.clone(),
                        prefix2: false,
                    },
                    [Value::Token { system, code: Some(code) }, Value::String { normalized, .. }] => Pred::TokenToken {
                        param: param.clone(),
                        system: system.clone().map(|s| s.unwrap_or_default()),
                        code: code.clone(),
                        system2: None,
                        code2: normalized.clone(),
                        prefix2: true,
                    },
                    [Value::Token { system, code: Some(code) }, Value::Date { prefix, low, high }] => Pred::TokenDate {
                        param: param.clone(),
                        system: system.clone().map(|s| s.unwrap_or_default()),
                        code: code.clone(),
                        prefix: *prefix,
                        low: *low,
                        high: *high,
                    },
                    [Value::Reference { target_type, id, url }, Value::Token { system: s2, code: Some(code2) }] if id.is_some() || url.is_some() => {
                        Pred::TokenToken {
                            param: param.clone(),
                            system: if id.is_some() { target_type.clone() } else { None },
                            code: id.clone().or_else(|| url.clone()).unwrap_or_default(),
                            system2: s2.clone().map(|s| s.unwrap_or_default()),
                            code2: code2.clone(),
                            prefix2: false,
                        }
                    }
                    [Value::Token { system, code: Some(code) }, Value::Number { prefix: p1, value: v1, low: l1, high: h1 }, Value::Number { prefix: p2, value: v2, low: l2, high: h2 }] => {
                        Pred::TokenRange {
                            param: param.clone(),
                            system: system.clone().map(|s| s.unwrap_or_default()),
                            code: code.clone(),
                            start_prefix: *p1,
                            start: (*v1, *l1, *h1),
                            end_prefix: *p2,
                            end: (*v2, *l2, *h2),
                        }
                    }
                    _ => return Err(unsupported(&param, "this combination of composite values")),
                },
                _ => return Err(unsupported(&param, "this kind of value")),
            };
            any.push(pred);
        }
        let _ = resource_type;
        Ok(Clause { any, negate })
    }

    /// `near` without `_sort`: every visible match, nearest first, and the page at `offset`
    /// (with how many matches were behind break-glass, and whether more follow).
    async fn nearest_page(
        &self,
        gate: &mut Gate<'_>,
        q: &IndexQuery,
        residuals: &[Residual],
        offset: usize,
        count: usize,
    ) -> Result<(Vec<Released>, usize, bool), FhirError> {
        let mut q = q.clone();
        q.before_seq = None;
        q.limit = 1000;
        let mut found: Vec<(f64, Released)> = Vec::new();
        let mut behind_glass = 0;
        let mut seen = 0;
        loop {
            let seqs = self.store().search(&q).await?;
            let done = seqs.len() < q.limit;
            for s in self.store().load(&seqs).await? {
                let Ok(json) = serde_json::from_slice::<Json>(&s.json) else { continue };
                if !residuals.iter().all(|r| r.matches(&json)) {
                    continue;
                }
                let distance = residuals.iter().find_map(|r| r.distance_km(&json)).unwrap_or(f64::MAX);
                match gate.release(s).await? {
                    Decided::Visible(r) => found.push((distance, r)),
                    Decided::BehindGlass => behind_glass += 1,
                    Decided::Hidden => {}
                }
            }
            seen += seqs.len();
            if done {
                break;
            }
            if seen >= MAX_TOTAL {
                return Err(FhirError::new(400, IssueType::TooCostly, format!("'near' is checked on more than {MAX_TOTAL} candidates; add a criterion or a _sort")));
            }
            q.before_seq = seqs.last().copied();
        }
        // Stable: equally distant matches stay newest first.
        found.sort_by(|a, b| a.0.total_cmp(&b.0));
        let more = found.len() > offset + count;
        Ok((found.into_iter().skip(offset).take(count).map(|(_, s)| s).collect(), behind_glass, more))
    }

    /// The stored resources behind index matches (`seqs`, in order), each with its paging
    /// cursor and the resource access is decided on. With `_contained`, matches are
    /// contained resources: access is decided on their container, and what is listed is
    /// the container (once, however many of its contained resources match) or, with
    /// `_containedType=contained`, the contained resource itself.
    async fn candidates(&self, seqs: &[i64], contained: Option<ContainedType>) -> Result<Vec<Candidate>, FhirError> {
        use tessera_store::search::{contained_seq, container_of};
        let Some(mode) = contained else {
            return Ok(self.store().load(seqs).await?.into_iter().map(|s| Candidate { cursor: s.seq, decided_on: s, listed: None }).collect());
        };
        let mut containers: Vec<i64> = Vec::new();
        for &v in seqs {
            if let Some((c, _)) = container_of(v) {
                if containers.last() != Some(&c) {
                    containers.push(c);
                }
            }
        }
        let loaded: std::collections::HashMap<i64, Stored> = self.store().load(&containers).await?.into_iter().map(|s| (s.seq, s)).collect();
        let mut out = Vec::new();
        let mut last = None;
        for &v in seqs {
            let Some((c, sub)) = container_of(v) else { continue };
            let Some(container) = loaded.get(&c) else { continue };
            match mode {
                ContainedType::Container => {
                    if last == Some(c) {
                        continue;
                    }
                    last = Some(c);
                    out.push(Candidate { cursor: contained_seq(c, 0), decided_on: container.clone(), listed: None });
                }
                ContainedType::Contained => {
                    let Ok(json) = serde_json::from_slice::<Json>(&container.json) else { continue };
                    let Some(inner) = json["contained"].get(sub as usize - 1) else { continue };
                    let mut listed = container.clone();
                    listed.resource_type = container.resource_type.clone();
                    listed.id = format!("{}#{}", container.id, inner["id"].as_str().unwrap_or(""));
                    listed.json = serde_json::to_vec(inner).unwrap_or_default();
                    out.push(Candidate { cursor: v, decided_on: container.clone(), listed: Some(listed) });
                }
            }
        }
        Ok(out)
    }

    /// The codes `code` subsumes (`below`: itself and its descendants) or that subsume it
    /// (itself and its ancestors) in the CodeSystem with canonical `system`, by its nested
    /// `concept`s. A code system the server does not hold (or this subject may not see), or a
    /// code it does not define, is an error.
    async fn subsumption(&self, gate: &mut Gate<'_>, system: &str, code: &str, below: bool) -> Result<Vec<String>, FhirError> {
        let Some(json) = self.visible_by_url(gate, "CodeSystem", system).await? else {
            return Err(FhirError::new(400, IssueType::NotFound, format!("the code system {system} is not known to this server (':below' and ':above' use code systems stored as CodeSystem resources)")));
        };
        /// Finds `code` under `concepts`: the path of codes to it (ancestors first), and its node.
        fn find<'a>(concepts: &'a Json, code: &str, path: &mut Vec<String>) -> Option<&'a Json> {
            for c in concepts.as_array().into_iter().flatten() {
                let Some(this) = c["code"].as_str() else { continue };
                if this == code {
                    return Some(c);
                }
                path.push(this.to_string());
                if let Some(hit) = find(&c["concept"], code, path) {
                    return Some(hit);
                }
                path.pop();
            }
            None
        }
        fn descendants(node: &Json, out: &mut Vec<String>) {
            for c in node["concept"].as_array().into_iter().flatten() {
                if let Some(code) = c["code"].as_str() {
                    out.push(code.to_string());
                }
                descendants(c, out);
            }
        }
        let mut ancestors = Vec::new();
        let Some(node) = find(&json["concept"], code, &mut ancestors) else {
            return Err(FhirError::new(400, IssueType::NotFound, format!("the code {code} is not defined by the code system {system}")));
        };
        let mut out = vec![code.to_string()];
        if below {
            descendants(node, &mut out);
        } else {
            out.extend(ancestors);
        }
        Ok(out)
    }

    /// `_list=[id],…`: the resources of `resource_type` the Lists hold (`entry.item`). A List
    /// the subject may not see holds nothing for them; functional lists (`$current-…`)
    /// are not kept by this server.
    async fn list_members(&self, gate: &mut Gate<'_>, resource_type: &str, values: &[Value]) -> Result<Clause, FhirError> {
        gate.access().require_scope("List", ScopeOp::Read)?;
        let mut ids: Vec<String> = Vec::new();
        for v in values {
            let Value::String { value: id, .. } = v else { continue };
            if id.starts_with('$') {
                return Err(unsupported("_list", &format!("the functional list '{id}'")));
            }
            let Some(list) = self.store().read("List", id).await? else { continue };
            if list.deleted || gate.visibility(&list).await? != Visibility::Visible {
                continue;
            }
            // The List's membership decides the results: its use is an access of its own.
            gate.record_access("read", true, &[format!("List/{}", list.id)], crate::rest::patients_of(&list), Some(&format!("_list={id}")));
            let json: Json = serde_json::from_slice(&list.json).map_err(|e| FhirError::internal(format!("stored List: {e}")))?;
            for entry in json["entry"].as_array().into_iter().flatten() {
                if entry["deleted"].as_bool() == Some(true) {
                    continue;
                }
                let Some(reference) = entry["item"]["reference"].as_str() else { continue };
                let mut parts = reference.rsplit('/');
                let (Some(rid), Some(rtype)) = (parts.next(), parts.next()) else { continue };
                if (resource_type.is_empty() || rtype == resource_type) && !ids.iter().any(|x| x == rid) {
                    ids.push(rid.to_string());
                }
            }
        }
        Ok(Clause { any: vec![Pred::Ids(ids)], negate: false })
    }

    /// The newest `resource_type` (a canonical resource) with `url` that the subject may
    /// see, as JSON.
    async fn visible_by_url(&self, gate: &mut Gate<'_>, resource_type: &str, url: &str) -> Result<Option<Json>, FhirError> {
        let mut q = IndexQuery::new(Some(resource_type));
        q.clauses.push(Clause { any: vec![Pred::Uri { param: "url".into(), mode: UriMode::Equals, value: url.to_string() }], negate: false });
        q.limit = 16;
        let seqs = self.store().search(&q).await?;
        for s in self.store().load(&seqs).await? {
            if gate.visibility(&s).await? == Visibility::Visible {
                let json = serde_json::from_slice(&s.json).map_err(|e| FhirError::internal(format!("stored {resource_type}: {e}")))?;
                return Ok(Some(json));
            }
        }
        Ok(None)
    }

    /// The `(system, code)`s of the ValueSet with canonical `url` (its `expansion.contains`,
    /// nested ones included, or else the concepts listed in `compose.include`). A value set
    /// the server does not hold, or that this subject may not see, is an error.
    async fn value_set_codes(&self, gate: &mut Gate<'_>, url: &str) -> Result<Vec<(String, String)>, FhirError> {
        let Some(value) = self.visible_by_url(gate, "ValueSet", url).await? else {
            return Err(FhirError::new(400, IssueType::NotFound, format!("the value set {url} is not known to this server (':in' and ':not-in' use value sets stored as ValueSet resources)")));
        };
        let mut out = Vec::new();
        fn contains(list: &Json, out: &mut Vec<(String, String)>) {
            for c in list.as_array().into_iter().flatten() {
                if let Some(code) = c["code"].as_str() {
                    out.push((c["system"].as_str().unwrap_or("").to_string(), code.to_string()));
                }
                contains(&c["contains"], out);
            }
        }
        contains(&value["expansion"]["contains"], &mut out);
        if out.is_empty() {
            for include in value["compose"]["include"].as_array().into_iter().flatten() {
                let system = include["system"].as_str().unwrap_or("");
                for concept in include["concept"].as_array().into_iter().flatten() {
                    if let Some(code) = concept["code"].as_str() {
                        out.push((system.to_string(), code.to_string()));
                    }
                }
            }
        }
        Ok(out)
    }

    /// `_include` and `_revinclude` targets of `page` that the subject may see.
    async fn includes(&self, gate: &mut Gate<'_>, request: &SearchRequest, page: &[Released]) -> Result<Vec<Released>, FhirError> {
        let mut out: Vec<Released> = Vec::new();
        if request.includes.is_empty() || page.is_empty() {
            return Ok(out);
        }
        let mut seen: std::collections::HashSet<(String, String)> = page.iter().map(|s| (s.resource_type.clone(), s.id.clone())).collect();
        let mut frontier: Vec<Released> = page.to_vec();
        for depth in 0..=MAX_ITERATE {
            let mut found: Vec<Stored> = Vec::new();
            for inc in &request.includes {
                if depth > 0 && !inc.iterate {
                    continue;
                }
                if inc.reverse {
                    // Resources of `source_type` whose `param` refers to a frontier resource.
                    let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
                    for s in &frontier {
                        by_type.entry(s.resource_type.as_str()).or_default().push(s.id.clone());
                    }
                    if inc.source_type == "*" || inc.param == "*" {
                        continue;
                    }
                    gate.access().require_scope(&inc.source_type, ScopeOp::Read)?;
                    for (ty, ids) in by_type {
                        if inc.target_type.as_deref().is_some_and(|t| t != ty) {
                            continue;
                        }
                        let mut q = IndexQuery::new(Some(&inc.source_type));
                        q.clauses.push(Clause { any: vec![Pred::Reference { param: inc.param.clone(), target_type: Some(ty.to_string()), ids, url: None }], negate: false });
                        q.limit = self.config().max_page_size;
                        let seqs = self.search_seqs(&q).await?;
                        found.extend(self.store().load(&seqs).await?);
                    }
                } else {
                    for s in &frontier {
                        if inc.source_type != "*" && inc.source_type != s.resource_type {
                            continue;
                        }
                        let params: Vec<String> = if inc.param == "*" { Vec::new() } else { vec![inc.param.clone()] };
                        for (t, id) in references_in(s, &params) {
                            if inc.target_type.as_deref().is_some_and(|x| x != t) || t.is_empty() || seen.contains(&(t.clone(), id.clone())) {
                                continue;
                            }
                            if gate.access().require_scope(&t, ScopeOp::Read).is_err() {
                                continue;
                            }
                            if let Some(target) = self.store().read(&t, &id).await? {
                                found.push(target);
                            }
                        }
                    }
                }
            }
            let mut next = Vec::new();
            for s in found {
                if s.deleted || !seen.insert((s.resource_type.clone(), s.id.clone())) {
                    continue;
                }
                if let Decided::Visible(r) = gate.release(s).await? {
                    next.push(r.clone());
                    out.push(r);
                }
            }
            if next.is_empty() || !request.includes.iter().any(|i| i.iterate) {
                break;
            }
            frontier = next;
        }
        Ok(out)
    }
}

/// The clause of a compartment search: the resource refers to the patient through one of
/// its Patient-compartment parameters (or is the patient).
/// For counting, the parts of a query whose matches are exactly the union of the parts'
/// matches, when one of its clauses refers to more than [`SPLIT_IDS`] ids (a chain or `_has`
/// resolved to many resources); empty when there is nothing to split. The store drives a
/// query from a reference only when it names a few ids; with more, it walks every resource
/// of the type and probes the whole list on each (a 400-id chain over 21,600 Encounters:
/// 9.9 s), while each part is driven from the reference index.
fn split_references(q: &IndexQuery) -> Vec<IndexQuery> {
    if q.contained {
        return Vec::new();
    }
    let ids_of = |c: &Clause| -> Option<usize> {
        if c.negate || c.any.is_empty() {
            return None;
        }
        let mut n = 0;
        for p in &c.any {
            match p {
                Pred::Reference { ids, url: None, .. } => n += ids.len(),
                _ => return None,
            }
        }
        Some(n)
    };
    // The listed clause with the fewest ids (the fewest parts).
    let Some((k, _)) = q.clauses.iter().enumerate().filter_map(|(k, c)| ids_of(c).map(|n| (k, n))).filter(|&(_, n)| n > SPLIT_IDS).min_by_key(|&(_, n)| n) else {
        return Vec::new();
    };
    let mut parts = Vec::new();
    for p in &q.clauses[k].any {
        let Pred::Reference { param, target_type, ids, .. } = p else { continue };
        for chunk in ids.chunks(SPLIT_IDS) {
            let mut part = q.clone();
            part.clauses[k] = Clause { any: vec![Pred::Reference { param: param.clone(), target_type: target_type.clone(), ids: chunk.to_vec(), url: None }], negate: false };
            parts.push(part);
        }
    }
    parts
}

fn compartment_clause(patient: &str, resource_type: &str) -> Clause {
    if resource_type == "Patient" {
        return Clause { any: vec![Pred::Ids(vec![patient.to_string()])], negate: false };
    }
    let any = tessera_fhir::definitions::patient_compartment_params(resource_type)
        .iter()
        .map(|p| Pred::Reference { param: p.code.clone(), target_type: Some("Patient".into()), ids: vec![patient.to_string()], url: None })
        .collect();
    Clause { any, negate: false }
}

fn sort_key(resource_type: &str, param: &str, descending: bool) -> Result<SortKey, FhirError> {
    match param {
        "_lastUpdated" => Ok(SortKey::LastUpdated { descending }),
        "_id" => Ok(SortKey::Id { descending }),
        _ => {
            let sp = tessera_fhir::definitions::search_parameters_for(resource_type)
                .find(|p| p.code == param)
                .ok_or_else(|| FhirError::bad_request(format!("cannot sort by '{param}': not a search parameter of {resource_type}")))?;
            let table = Table::for_kind(&sp.kind).ok_or_else(|| FhirError::bad_request(format!("cannot sort by the {} parameter '{param}'", sp.kind)))?;
            Ok(SortKey::Param { param: param.to_string(), table, descending })
        }
    }
}

fn table_of(kind: ParamKind) -> Option<Table> {
    Some(match kind {
        ParamKind::Token => Table::Token,
        ParamKind::String => Table::String,
        ParamKind::Date => Table::Date,
        ParamKind::Number | ParamKind::Quantity => Table::Quantity,
        ParamKind::Reference => Table::Reference,
        ParamKind::Uri => Table::Uri,
        _ => return None,
    })
}

/// An index match as the search lists it (see [`Engine::candidates`]).
struct Candidate {
    /// Where the next page starts below.
    cursor: i64,
    /// The stored resource access is decided on (a contained resource's container).
    decided_on: Stored,
    /// What is listed instead, if not `decided_on` (a contained resource).
    listed: Option<Stored>,
}

/// A clause on resources made a clause on the contained resources of the type
/// (`_contained=true`): parameters become `#param`, `_id` the contained resource's id.
fn to_contained(clause: &mut Clause) {
    let mut any = Vec::with_capacity(clause.any.len());
    for mut pred in clause.any.drain(..) {
        match &mut pred {
            Pred::Ids(ids) => {
                any.extend(ids.drain(..).map(|id| Pred::Token { param: "#_id".into(), system: None, code: Some(id) }));
                continue;
            }
            Pred::Token { param, .. }
            | Pred::String { param, .. }
            | Pred::Date { param, .. }
            | Pred::Number { param, .. }
            | Pred::Reference { param, .. }
            | Pred::Uri { param, .. }
            | Pred::Missing { param, .. }
            | Pred::TokenQuantity { param, .. }
            | Pred::TokenToken { param, .. }
            | Pred::TokenDate { param, .. }
            | Pred::TokenRange { param, .. }
            | Pred::TokenText { param, .. } => {
                // `_lastUpdated` stays the container's (contained resources have no meta).
                if param != "_lastUpdated" {
                    *param = format!("#{param}");
                }
            }
            Pred::Compartment(_) | Pred::Types(_) => {}
        }
        any.push(pred);
    }
    clause.any = any;
}

/// Does a stored resource meet every residual criterion?
fn meets(residuals: &[Residual], s: &Stored) -> bool {
    if residuals.is_empty() {
        return true;
    }
    let Ok(json) = serde_json::from_slice::<Json>(&s.json) else { return false };
    residuals.iter().all(|r| r.matches(&json))
}

fn unsupported(param: &str, what: &str) -> FhirError {
    FhirError::new(400, IssueType::NotSupported, format!("search parameter '{param}': {what} is not supported")).at(param.to_string())
}

fn query_errors(errors: Vec<query::QueryError>) -> FhirError {
    let issues: Vec<tessera_fhir::Issue> =
        errors.iter().map(|e| tessera_fhir::Issue::error(IssueType::Invalid, e.message.clone()).at(e.param.clone())).collect();
    FhirError::invalid(issues)
}

fn suppressed_outcome() -> Json {
    let oo = tessera_fhir::outcome::operation_outcome(&[tessera_fhir::Issue {
        severity: tessera_fhir::IssueSeverity::Information,
        code: IssueType::Suppressed,
        diagnostics: "more results exist but are protected: break the glass for the patient to view them".into(),
        expression: Vec::new(),
    }]);
    oo
}

/// The resource as `_elements` / `_summary=data` ask (marked `SUBSETTED`).
fn shape(json: &[u8], request: &SearchRequest) -> Vec<u8> {
    let keep: Option<Vec<&str>> = if !request.elements.is_empty() {
        Some(request.elements.iter().map(String::as_str).collect())
    } else {
        None
    };
    let summary = request.summary.filter(|s| matches!(s, Summary::True | Summary::Text | Summary::Data));
    if keep.is_none() && summary.is_none() {
        return json.to_vec();
    }
    let Ok(Json::Object(mut m)) = serde_json::from_slice::<Json>(json) else { return json.to_vec() };
    let resource_type = m.get("resourceType").and_then(Json::as_str).unwrap_or("").to_string();
    if let Some(keep) = keep {
        m.retain(|k, _| matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str()));
    }
    match summary {
        Some(Summary::Data) => {
            m.remove("text");
        }
        Some(Summary::True) => {
            if let Some(t) = tessera_fhir::definitions::definitions().resource(&resource_type) {
                summary_view(&mut m, t);
            }
        }
        Some(Summary::Text) => {
            // The narrative, `id`, `meta` and the mandatory top-level elements.
            if let Some(t) = tessera_fhir::definitions::definitions().resource(&resource_type) {
                m.retain(|k, _| {
                    matches!(k.as_str(), "resourceType" | "id" | "meta" | "text")
                        || t.lookup(k.trim_start_matches('_')).is_some_and(|(e, _)| t.elements[e].min >= 1)
                });
            }
        }
        _ => {}
    }
    let meta = m.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let tags = meta.entry("tag").or_insert_with(|| json!([]));
        if let Some(tags) = tags.as_array_mut() {
            tags.push(json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED", "display": "subsetted"}));
        }
    }
    serde_json::to_vec(&Json::Object(m)).unwrap_or_default()
}

/// `_summary=true`: keeps the elements the definitions mark `isSummary` (with their
/// `_x` primitive extensions), and within nested backbone elements their summary
/// elements in turn; data types are kept whole.
fn summary_view(m: &mut serde_json::Map<String, Json>, t: &tessera_fhir::definitions::TypeDef) {
    use tessera_fhir::definitions::{definitions, Target, TypeKind};
    m.retain(|k, _| k == "resourceType" || t.lookup(k.trim_start_matches('_')).is_some_and(|(e, _)| t.elements[e].summary));
    for (k, v) in m.iter_mut() {
        let Some((e, ty)) = t.lookup(k) else { continue };
        let Some(Target::Complex(id)) = t.elements[e].types.get(ty).map(|x| x.target) else { continue };
        let nested = definitions().get(id);
        if nested.kind != TypeKind::Backbone {
            continue;
        }
        let items: Vec<&mut Json> = match v {
            Json::Array(a) => a.iter_mut().collect(),
            other => vec![other],
        };
        for item in items {
            if let Json::Object(o) = item {
                summary_view(o, nested);
            }
        }
    }
}

/// The `(type, id)` references a stored resource holds in the reference parameters
/// `params` (all of them if empty), as its search index has them.
fn references_in(s: &Stored, params: &[String]) -> Vec<(String, String)> {
    let Ok(value) = serde_json::from_slice::<Json>(&s.json) else { return Vec::new() };
    let mut out: Vec<(String, String)> = Vec::new();
    for e in tessera_search::index_resource(&value) {
        if !params.is_empty() && !params.contains(&e.param) {
            continue;
        }
        if let tessera_search::IndexValue::Reference { target_type: Some(t), target_id: Some(id), .. } = e.value {
            if !out.iter().any(|(a, b)| *a == t && *b == id) {
                out.push((t, id));
            }
        }
    }
    out
}
