//! Turning a validated resource into a stored version.
//!
//! The engine, not the client, decides `id`, `meta.versionId` and `meta.lastUpdated`; the
//! resource is serialised once here and those bytes are what the store keeps and what
//! reads return.

use crate::FhirError;
use serde_json::{Map, Value};
use tessera_store::{Precondition, Write};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A FHIR `instant` for microseconds since the epoch (UTC, microsecond precision).
pub fn format_instant(micros: i64) -> String {
    let t = OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let (y, mo, d) = (t.year(), t.month() as u8, t.day());
    let (h, mi, s, us) = (t.hour(), t.minute(), t.second(), t.microsecond());
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z")
}

/// Parses a FHIR `instant`/`dateTime` (or a date) into microseconds since the epoch.
/// Partial dates mean their start (`2020` = `2020-01-01T00:00:00Z`).
pub fn parse_instant(s: &str) -> Option<i64> {
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some((t.unix_timestamp_nanos() / 1000) as i64);
    }
    let padded = match s.len() {
        4 => format!("{s}-01-01T00:00:00Z"),
        7 => format!("{s}-01T00:00:00Z"),
        10 => format!("{s}T00:00:00Z"),
        _ => return None,
    };
    OffsetDateTime::parse(&padded, &Rfc3339).ok().map(|t| (t.unix_timestamp_nanos() / 1000) as i64)
}

/// The `(system, value)` pairs of a resource's business identifiers.
pub fn identifiers(resource: &Value) -> Vec<(String, String)> {
    let pair = |i: &Value| {
        let value = i.get("value")?.as_str()?;
        Some((i.get("system").and_then(Value::as_str).unwrap_or("").to_string(), value.to_string()))
    };
    match resource.get("identifier") {
        Some(Value::Array(ids)) => ids.iter().filter_map(pair).collect(),
        Some(obj @ Value::Object(_)) => pair(obj).into_iter().collect(),
        _ => Vec::new(),
    }
}

/// Sets `id` and `meta.versionId`/`meta.lastUpdated`, keeping `resourceType`, `id` and
/// `meta` first, and builds the write.
/// Who writes a version: recorded in the store's owner column and as `meta.tag` codings
/// under Tessera's systems (client-supplied codings of those systems are discarded).
#[derive(Debug, Clone, Default)]
pub struct Stamp {
    /// Owning organisation id (none for the Patient, which is domain-wide).
    pub owner: Option<String>,
    /// The writing user or system id.
    pub author: Option<String>,
}

fn stamp_tags(meta: &mut Map<String, Value>, stamp: &Stamp) {
    let mut tags: Vec<Value> = match meta.remove("tag") {
        Some(Value::Array(t)) => t,
        _ => Vec::new(),
    };
    tags.retain(|t| {
        let system = t.get("system").and_then(Value::as_str);
        system != Some(crate::guard::OWNER_SYSTEM) && system != Some(crate::guard::AUTHOR_SYSTEM)
    });
    if let Some(owner) = &stamp.owner {
        tags.push(serde_json::json!({"system": crate::guard::OWNER_SYSTEM, "code": owner}));
    }
    if let Some(author) = &stamp.author {
        tags.push(serde_json::json!({"system": crate::guard::AUTHOR_SYSTEM, "code": author}));
    }
    if !tags.is_empty() {
        meta.insert("tag".into(), Value::Array(tags));
    }
}

pub fn prepare_write(
    mut resource: Map<String, Value>,
    id: &str,
    version: u64,
    precondition: Precondition,
    stamp: &Stamp,
) -> Result<Write, FhirError> {
    let now = tessera_store::now_micros();
    let resource_type = match resource.remove("resourceType") {
        Some(Value::String(t)) => t,
        _ => return Err(FhirError::bad_request("resource has no resourceType").at("resourceType")),
    };
    resource.remove("id");
    let mut meta = match resource.remove("meta") {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    meta.remove("versionId");
    meta.remove("lastUpdated");
    stamp_tags(&mut meta, stamp);
    let mut new_meta = Map::with_capacity(meta.len() + 2);
    new_meta.insert("versionId".into(), Value::String(version.to_string()));
    new_meta.insert("lastUpdated".into(), Value::String(format_instant(now)));
    new_meta.extend(meta);

    let mut out = Map::with_capacity(resource.len() + 3);
    out.insert("resourceType".into(), Value::String(resource_type.clone()));
    out.insert("id".into(), Value::String(id.to_string()));
    out.insert("meta".into(), Value::Object(new_meta));
    out.extend(resource);
    let value = Value::Object(out);

    let compartment = tessera_fhir::compartment::patient_compartments(&value).into_iter().next();
    let identifiers = identifiers(&value);
    let links = crate::facts::care_links(&value);
    let index = tessera_search::index_all(&value);
    let json = serde_json::to_vec(&value).map_err(|e| FhirError::internal(format!("cannot serialise resource: {e}")))?;
    Ok(Write {
        resource_type,
        id: id.to_string(),
        version,
        last_updated_micros: now,
        deleted: false,
        compartment,
        owner: stamp.owner.clone(),
        json,
        identifiers,
        precondition,
        links,
        index,
    })
}

/// A deletion version.
pub fn prepare_delete(resource_type: &str, id: &str, version: u64, precondition: Precondition, current: &tessera_store::Stored) -> Write {
    Write {
        resource_type: resource_type.to_string(),
        id: id.to_string(),
        version,
        last_updated_micros: tessera_store::now_micros(),
        deleted: true,
        // A deletion keeps the owner and compartment: who may see that it happened.
        compartment: current.compartment.clone(),
        owner: current.owner.clone(),
        json: Vec::new(),
        identifiers: Vec::new(),
        precondition,
        links: Vec::new(),
        index: Vec::new(),
    }
}

/// A new server-assigned id: a time-ordered UUID (version 7: milliseconds since the
/// epoch, then 74 random bits). Ids made together sort together, so the rows keyed by them
/// (the current-version table, and index rows that refer to resources created in the same
/// transaction, such as a Provenance's targets) are appended rather than scattered over
/// the whole index, which keeps writes to a few pages. The id reveals its creation time to
/// the millisecond, which `meta.lastUpdated` of the first version shows anyway.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let t = 1_700_000_000_123_456;
        let s = format_instant(t);
        assert_eq!(s, "2023-11-14T22:13:20.123456Z");
        assert_eq!(parse_instant(&s), Some(t));
        assert_eq!(parse_instant("2023"), parse_instant("2023-01-01T00:00:00Z"));
        assert_eq!(parse_instant("nonsense"), None);
    }

    #[test]
    fn meta_is_set_and_first() {
        let r = serde_json::json!({"name": [{"family": "X"}], "resourceType": "Patient", "id": "old",
            "meta": {"versionId": "9", "tag": [{"code": "t"}]}});
        let stamp = Stamp { owner: None, author: Some("u1".into()) };
        let w = prepare_write(r.as_object().unwrap().clone(), "p1", 3, Precondition::None, &stamp).unwrap();
        let text = String::from_utf8(w.json).unwrap();
        assert!(text.starts_with(r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"3","lastUpdated":"#), "{text}");
        // The client's tag is kept; the author is recorded under Tessera's system; a forged
        // owner coding is dropped.
        assert!(text.contains(r#""tag":[{"code":"t"},{"system":"https://tessera.health/author","code":"u1"}]"#), "{text}");
        assert_eq!(w.compartment.as_deref(), Some("p1"));
        let forged = serde_json::json!({"resourceType": "Observation", "meta": {"tag": [{"system": crate::guard::OWNER_SYSTEM, "code": "evil"}]}});
        let stamp = Stamp { owner: Some("rx1".into()), author: None };
        let w = prepare_write(forged.as_object().unwrap().clone(), "o1", 1, Precondition::None, &stamp).unwrap();
        let text = String::from_utf8(w.json).unwrap();
        assert!(!text.contains("evil") && text.contains(r#"{"system":"https://tessera.health/owner","code":"rx1"}"#), "{text}");
        assert_eq!(w.owner.as_deref(), Some("rx1"));
    }
}
