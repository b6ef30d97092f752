//! History (instance, type, system) and the identifier search the engine supports before
//! full search exists.

use crate::access::Access;
use crate::bundle::{Bundle, BundleWriter};
use crate::guard::{Decided, Gate, Visibility};
use tessera_auth::ScopeOp;
use crate::prepare::{format_instant, parse_instant};
use crate::{criteria, Engine, FhirError};
use serde_json::json;
use tessera_store::HistoryQuery;

/// Parameters of a history request.
#[derive(Debug, Clone, Default)]
pub struct HistoryParams {
    pub since: Option<String>,
    pub count: Option<usize>,
    /// Paging cursor: list versions committed before this sequence number.
    pub cursor: Option<i64>,
}

impl HistoryParams {
    /// Reads `_since`, `_count` and `_cursor` from a query string; other parameters are errors.
    pub fn parse(query: &str) -> Result<Self, FhirError> {
        let mut p = HistoryParams::default();
        for (k, v) in form_urlencoded::parse(query.as_bytes()) {
            match k.as_ref() {
                "_since" => p.since = Some(v.into_owned()),
                "_count" => p.count = Some(v.parse().map_err(|_| FhirError::bad_request(format!("_count '{v}' is not a number")))?),
                "_cursor" => p.cursor = Some(v.parse().map_err(|_| FhirError::bad_request(format!("_cursor '{v}' is not valid")))?),
                "_format" | "_pretty" => {}
                other => return Err(FhirError::bad_request(format!("history does not support the parameter '{other}'"))),
            }
        }
        Ok(p)
    }
}

impl Engine {
    /// `GET [[type]/[id]]/_history` — a `history` Bundle, newest first, with `next` links.
    /// Only versions the subject may see are listed; `total` is given only when nothing
    /// was withheld from this subject's view (a count must not reveal hidden versions).
    pub async fn history(&self, access: &Access, resource_type: Option<&str>, id: Option<&str>, params: &HistoryParams) -> Result<Bundle, FhirError> {
        if let Some(t) = resource_type {
            self.check_type(t)?;
            access.require_scope(t, ScopeOp::Read)?;
            if let Some(i) = id {
                Self::check_id(t, i)?;
            }
        }
        let since_micros = match &params.since {
            Some(s) => Some(parse_instant(s).ok_or_else(|| FhirError::bad_request(format!("_since '{s}' is not a valid instant")))?),
            None => None,
        };
        let count = params.count.unwrap_or(self.config().default_page_size).min(self.config().max_page_size);
        let mut gate = self.gate(access);
        let mut query = HistoryQuery {
            resource_type: resource_type.map(str::to_string),
            id: id.map(str::to_string),
            since_micros,
            before_seq: params.cursor,
            count: count + 1,
        };
        // Fill the page with visible versions, reading further pages of the store as needed.
        let mut versions = Vec::with_capacity(count + 1);
        let mut current: std::collections::HashMap<(String, String), Visibility> = std::collections::HashMap::new();
        let mut withheld = false;
        let mut exhausted;
        for _round in 0..16 {
            let batch = self.store().history(&query).await?;
            exhausted = batch.len() < query.count;
            let last_seq = batch.last().map(|v| v.seq);
            for v in batch {
                // Each version is decided with the strictest of its own facts and the
                // current version's (a later relabel or deletion covers the past).
                let key = (v.resource_type.clone(), v.id.clone());
                let now = match current.get(&key) {
                    Some(vis) => *vis,
                    None => {
                        let vis = match self.store().read(&v.resource_type, &v.id).await? {
                            Some(c) => gate.visibility(&c).await?,
                            None => Visibility::Hidden,
                        };
                        current.insert(key, vis);
                        vis
                    }
                };
                let released = match now {
                    Visibility::Visible => gate.release(v).await?,
                    _ => Decided::Hidden,
                };
                match released {
                    Decided::Visible(r) => versions.push(r),
                    _ => withheld = true,
                }
                if versions.len() > count {
                    break;
                }
            }
            if versions.len() > count || exhausted {
                break;
            }
            query.before_seq = last_seq;
        }
        if let (Some(t), Some(i)) = (resource_type, id) {
            if versions.is_empty() && params.cursor.is_none() {
                // Unknown and hidden look the same.
                let known = self.store().read(t, i).await?.is_some();
                if !known || withheld {
                    gate.record_access("history-instance", false, &[format!("{t}/{i}")], Vec::new(), None);
                    gate.finish().await?;
                    return Err(FhirError::not_found(t, i));
                }
            }
        }
        let has_next = versions.len() > count;
        // A count must not reveal versions this subject may not see: the domain's bootstrap
        // account (which sees everything) gets the store's count; everyone else only when
        // the whole result is on this page.
        let full_view = !self.config().enforce() || access.is_domain_bootstrap();
        let total = if full_view {
            Some(self.store().history_count(&HistoryQuery { before_seq: None, ..query.clone() }).await?)
        } else if !withheld && !has_next && params.cursor.is_none() {
            Some(versions.len() as u64)
        } else {
            None
        };
        versions.truncate(count);
        let base = &self.config().base_url;
        let path = match (resource_type, id) {
            (Some(t), Some(i)) => format!("{base}/{t}/{i}/_history"),
            (Some(t), None) => format!("{base}/{t}/_history"),
            _ => format!("{base}/_history"),
        };
        let mut common = format!("_count={count}");
        if let Some(s) = &params.since {
            common.push_str("&_since=");
            common.push_str(&percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string());
        }
        let mut links = vec![(
            "self",
            match params.cursor {
                Some(c) => format!("{path}?{common}&_cursor={c}"),
                None => format!("{path}?{common}"),
            },
        )];
        if has_next {
            if let Some(last) = versions.last() {
                links.push(("next", format!("{path}?{common}&_cursor={}", last.seq)));
            }
        }
        let mut out = BundleWriter::new("history", total, &links);
        let mut patients = Vec::new();
        let mut entities = Vec::new();
        for v in &versions {
            for p in crate::rest::patients_of(v) {
                if !patients.contains(&p) {
                    patients.push(p);
                }
            }
            entities.push(format!("{}/{}/_history/{}", v.resource_type, v.id, v.version));
            let full_url = format!("{base}/{}/{}", v.resource_type, v.id);
            let (method, url, status) = if v.deleted {
                ("DELETE", format!("{}/{}", v.resource_type, v.id), "204 No Content")
            } else if v.version == 1 {
                ("POST", v.resource_type.clone(), "201 Created")
            } else {
                ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK")
            };
            out.resource(
                Some(&full_url),
                v,
                &[
                    ("request", json!({"method": method, "url": url})),
                    ("response", json!({"status": status, "etag": format!("W/\"{}\"", v.version), "lastModified": format_instant(v.last_updated_micros)})),
                ],
            );
        }
        let interaction = match (resource_type, id) {
            (Some(_), Some(_)) => "history-instance",
            (Some(_), None) => "history-type",
            _ => "history-system",
        };
        gate.record_access(interaction, true, &entities, patients, None);
        gate.finish().await?;
        Ok(out.finish())
    }

    /// `GET [type]?identifier=…&_id=…` — the search the engine supports on its own
    /// (conditional operations need it); a `searchset` Bundle of what the subject may see.
    /// `total` counts visible matches only.
    pub async fn search_identifiers(&self, access: &Access, resource_type: &str, query: &str) -> Result<Bundle, FhirError> {
        self.check_type(resource_type)?;
        access.require_scope(resource_type, ScopeOp::Search)?;
        let (count, criteria_query) = split_paging(query, self.config().default_page_size, self.config().max_page_size)?;
        let criteria = if criteria_query.is_empty() {
            tessera_store::Criteria { resource_type: resource_type.to_string(), ..Default::default() }
        } else {
            criteria::parse(resource_type, &criteria_query)?
        };
        let mut ids = self.store().find(&criteria).await?;
        ids.sort();
        let sources: Vec<(String, String)> = ids.into_iter().map(|id| (resource_type.to_string(), id)).collect();
        let base = &self.config().base_url;
        let self_link = if query.is_empty() { format!("{base}/{resource_type}") } else { format!("{base}/{resource_type}?{query}") };
        let mut gate = self.gate(access);
        self.searchset(&mut gate, &sources, count, self_link, "search-type", query).await
    }

    /// The `searchset` Bundle of the current versions of `sources` that the gate lets this
    /// subject see: `total` counts only those, the first `count` are listed, a marker
    /// entry says when more exist behind break-glass; the access is audited.
    pub(crate) async fn searchset(
        &self,
        gate: &mut Gate<'_>,
        sources: &[(String, String)],
        count: usize,
        self_link: String,
        interaction: &str,
        detail: &str,
    ) -> Result<Bundle, FhirError> {
        let mut visible = Vec::new();
        let mut behind_glass = 0usize;
        for (ty, id) in sources {
            let Some(s) = self.store().read(ty, id).await? else { continue };
            if s.deleted {
                continue;
            }
            match gate.release(s).await? {
                Decided::Visible(r) => visible.push(r),
                Decided::BehindGlass => behind_glass += 1,
                Decided::Hidden => {}
            }
        }
        let base = &self.config().base_url;
        let mut out = BundleWriter::new("searchset", Some(visible.len() as u64), &[("self", self_link)]);
        let mut patients = Vec::new();
        let mut entities = Vec::new();
        for s in visible.iter().take(count) {
            for p in crate::rest::patients_of(s) {
                if !patients.contains(&p) {
                    patients.push(p);
                }
            }
            entities.push(format!("{}/{}", s.resource_type, s.id));
            out.resource(Some(&format!("{base}/{}/{}", s.resource_type, s.id)), s, &[("search", json!({"mode": "match"}))]);
        }
        if behind_glass > 0 {
            let oo = tessera_fhir::outcome::operation_outcome(&[tessera_fhir::Issue {
                severity: tessera_fhir::IssueSeverity::Information,
                code: tessera_fhir::IssueType::Suppressed,
                diagnostics: "more results exist but are protected: break the glass for the patient to view them".into(),
                expression: Vec::new(),
            }]);
            out.generated(None, &oo, &[("search", json!({"mode": "outcome"}))]);
        }
        gate.record_access(interaction, true, &entities, patients, Some(detail));
        gate.flush().await?;
        Ok(out.finish())
    }
}

/// Splits `_count` (and the format parameters) from the criteria of a search query.
fn split_paging(query: &str, default: usize, max: usize) -> Result<(usize, String), FhirError> {
    let mut count = default;
    let mut criteria = form_urlencoded::Serializer::new(String::new());
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        match k.as_ref() {
            "_count" => count = v.parse::<usize>().map_err(|_| FhirError::bad_request(format!("_count '{v}' is not a number")))?.min(max),
            "_format" | "_pretty" => {}
            _ => {
                criteria.append_pair(&k, &v);
            }
        }
    }
    Ok((count, criteria.finish()))
}
