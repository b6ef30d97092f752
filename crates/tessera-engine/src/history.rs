//! History (instance, type, system) and the identifier search the engine supports before
//! full search exists.

use crate::bundle::BundleWriter;
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
    pub async fn history(&self, resource_type: Option<&str>, id: Option<&str>, params: &HistoryParams) -> Result<Vec<u8>, FhirError> {
        if let Some(t) = resource_type {
            self.check_type(t)?;
        }
        let since_micros = match &params.since {
            Some(s) => Some(parse_instant(s).ok_or_else(|| FhirError::bad_request(format!("_since '{s}' is not a valid instant")))?),
            None => None,
        };
        let count = params.count.unwrap_or(self.config().default_page_size).min(self.config().max_page_size);
        let query = HistoryQuery {
            resource_type: resource_type.map(str::to_string),
            id: id.map(str::to_string),
            since_micros,
            before_seq: params.cursor,
            count: count + 1,
        };
        let mut versions = self.store().history(&query).await?;
        if let (Some(t), Some(i)) = (resource_type, id) {
            if versions.is_empty() && params.cursor.is_none() && self.store().read(t, i).await?.is_none() {
                return Err(FhirError::not_found(t, i));
            }
        }
        let total = self.store().history_count(&query).await?;
        let has_next = versions.len() > count;
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
        let mut out = BundleWriter::new("history", Some(total), &links);
        for v in &versions {
            let full_url = format!("{base}/{}/{}", v.resource_type, v.id);
            let (method, url, status) = if v.deleted {
                ("DELETE", format!("{}/{}", v.resource_type, v.id), "204 No Content")
            } else if v.version == 1 {
                ("POST", v.resource_type.clone(), "201 Created")
            } else {
                ("PUT", format!("{}/{}", v.resource_type, v.id), "200 OK")
            };
            out.entry(
                Some(&full_url),
                (!v.deleted).then_some(v.json.as_slice()),
                &[
                    ("request", json!({"method": method, "url": url})),
                    (
                        "response",
                        json!({"status": status, "etag": format!("W/\"{}\"", v.version), "lastModified": format_instant(v.last_updated_micros)}),
                    ),
                ],
            );
        }
        Ok(out.finish())
    }

    /// `GET [type]?identifier=…&_id=…` — the search the engine supports on its own
    /// (conditional operations need it); a `searchset` Bundle.
    pub async fn search_identifiers(&self, resource_type: &str, query: &str) -> Result<Vec<u8>, FhirError> {
        self.check_type(resource_type)?;
        let (count, criteria_query) = split_paging(query, self.config().default_page_size, self.config().max_page_size)?;
        let mut ids = if criteria_query.is_empty() {
            self.store().find(&tessera_store::Criteria { resource_type: resource_type.to_string(), ..Default::default() }).await?
        } else {
            self.store().find(&criteria::parse(resource_type, &criteria_query)?).await?
        };
        ids.sort();
        let total = ids.len() as u64;
        let base = &self.config().base_url;
        let self_link = if query.is_empty() { format!("{base}/{resource_type}") } else { format!("{base}/{resource_type}?{query}") };
        let mut out = BundleWriter::new("searchset", Some(total), &[("self", self_link)]);
        for id in ids.iter().take(count) {
            if let Some(s) = self.store().read(resource_type, id).await? {
                if !s.deleted {
                    out.entry(Some(&format!("{base}/{resource_type}/{id}")), Some(&s.json), &[("search", json!({"mode": "match"}))]);
                }
            }
        }
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
