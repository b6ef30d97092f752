//! Search criteria the index does not hold, checked on each candidate resource after the
//! store has found it and before the enforcement point sees it: `_text` (the narrative),
//! `_content` (every text of the resource) and `Location?near=`. A search made only of
//! these walks the type's resources newest first, so they are meant to narrow other
//! criteria; they never widen what the reader may see (every candidate still goes through
//! the `Gate`).

use crate::FhirError;
use serde_json::Value as Json;
use tessera_fhir::IssueType;
use tessera_search::query::{Criterion, Modifier, Value};

/// One criterion evaluated on the resource.
#[derive(Debug, Clone)]
pub(crate) enum Residual {
    /// `_text` (narrative only) or `_content` (all text): any of `alternatives`, each a
    /// list of normalised words that must all occur; `negate` for `:not`.
    Text { narrative: bool, alternatives: Vec<Vec<String>>, negate: bool },
    /// `near=latitude|longitude|distance|units`: within `km` of the point (any of them).
    Near(Vec<(f64, f64, f64)>),
}

/// The residual form of a criterion, if it is one.
pub(crate) fn residual(c: &Criterion) -> Result<Option<Residual>, FhirError> {
    if c.chain.is_some() || c.has.is_some() {
        return Ok(None);
    }
    match c.param.as_str() {
        "_text" | "_content" => {
            let negate = match &c.modifier {
                None => false,
                Some(Modifier::Not) => true,
                Some(m) => return Err(bad(&c.param, &format!("the modifier ':{}' is not supported", m.as_str()))),
            };
            let alternatives = c
                .values
                .iter()
                .map(|v| match v {
                    Value::String { normalized, .. } => normalized.split_whitespace().map(str::to_string).collect::<Vec<_>>(),
                    _ => Vec::new(),
                })
                .filter(|words| !words.is_empty())
                .collect();
            Ok(Some(Residual::Text { narrative: c.param == "_text", alternatives, negate }))
        }
        "near" => {
            if c.modifier.is_some() {
                return Err(bad("near", "modifiers are not supported"));
            }
            let mut points = Vec::new();
            for v in &c.values {
                let Value::String { value, .. } = v else { continue };
                points.push(parse_near(value)?);
            }
            Ok(Some(Residual::Near(points)))
        }
        _ => Ok(None),
    }
}

fn bad(param: &str, msg: &str) -> FhirError {
    FhirError::new(400, IssueType::Invalid, format!("search parameter '{param}': {msg}")).at(param.to_string())
}

/// `latitude|longitude[|distance[|units]]`; the distance defaults to 5 km; units are
/// `km` (default), `m`, `[mi_i]` or `[nmi_i]` (UCUM).
fn parse_near(raw: &str) -> Result<(f64, f64, f64), FhirError> {
    let parts: Vec<&str> = raw.split('|').collect();
    let num = |s: &str, what: &str| -> Result<f64, FhirError> {
        s.trim().parse::<f64>().ok().filter(|f| f.is_finite()).ok_or_else(|| bad("near", &format!("'{raw}': the {what} '{s}' is not a number; use latitude|longitude|distance|units")))
    };
    if parts.len() < 2 || parts.len() > 4 {
        return Err(bad("near", &format!("'{raw}' is not valid; use latitude|longitude|distance|units")));
    }
    let (lat, lon) = (num(parts[0], "latitude")?, num(parts[1], "longitude")?);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return Err(bad("near", &format!("'{raw}': latitude or longitude out of range")));
    }
    let distance = match parts.get(2) {
        Some(d) if !d.is_empty() => num(d, "distance")?,
        _ => 5.0,
    };
    let factor = match parts.get(3).map(|u| u.trim()) {
        None | Some("") | Some("km") => 1.0,
        Some("m") => 0.001,
        Some("[mi_i]") | Some("mi") => 1.609_344,
        Some("[nmi_i]") => 1.852,
        Some(u) => return Err(bad("near", &format!("'{raw}': unknown distance unit '{u}' (use km, m, [mi_i] or [nmi_i])"))),
    };
    Ok((lat, lon, distance * factor))
}

impl Residual {
    /// For `near`: the distance in km from the nearest of the points to the resource's
    /// position, if it has one.
    pub(crate) fn distance_km(&self, json: &Json) -> Option<f64> {
        let Residual::Near(points) = self else { return None };
        let pos = &json["position"];
        let (lat, lon) = (pos["latitude"].as_f64()?, pos["longitude"].as_f64()?);
        points.iter().map(|&(plat, plon, _)| haversine_km(lat, lon, plat, plon)).min_by(f64::total_cmp)
    }

    pub(crate) fn is_near(&self) -> bool {
        matches!(self, Residual::Near(_))
    }

    /// Does the stored resource (JSON) meet the criterion?
    pub(crate) fn matches(&self, json: &Json) -> bool {
        match self {
            Residual::Text { narrative, alternatives, negate } => {
                let mut text = String::new();
                if *narrative {
                    if let Some(div) = json.pointer("/text/div").and_then(Json::as_str) {
                        strip_tags(div, &mut text);
                    }
                } else {
                    collect_text(json, &mut text);
                }
                let text = tessera_search::normalize_string(&text);
                let found = alternatives.iter().any(|words| words.iter().all(|w| text.contains(w.as_str())));
                found != *negate
            }
            Residual::Near(points) => {
                let pos = &json["position"];
                let (Some(lat), Some(lon)) = (pos["latitude"].as_f64(), pos["longitude"].as_f64()) else { return false };
                points.iter().any(|&(plat, plon, km)| haversine_km(lat, lon, plat, plon) <= km)
            }
        }
    }
}

/// Every string value of a resource (keys excluded), space-separated.
fn collect_text(v: &Json, out: &mut String) {
    match v {
        Json::String(s) => {
            out.push(' ');
            if s.starts_with("<div") {
                strip_tags(s, out);
            } else {
                out.push_str(s);
            }
        }
        Json::Array(a) => a.iter().for_each(|x| collect_text(x, out)),
        Json::Object(o) => o.values().for_each(|x| collect_text(x, out)),
        _ => {}
    }
}

/// The text of an XHTML fragment, tags replaced by spaces, common entities decoded.
fn strip_tags(html: &str, out: &mut String) {
    let mut in_tag = false;
    for ch in html.chars() {
        match ch {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    for (entity, ch) in [("&amp;", "&"), ("&lt;", "<"), ("&gt;", ">"), ("&quot;", "\""), ("&#39;", "'"), ("&nbsp;", " ")] {
        if out.contains(entity) {
            *out = out.replace(entity, ch);
        }
    }
}

/// Great-circle distance on a sphere of the Earth's mean radius.
fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * 6_371.008_8 * a.sqrt().asin()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn distances_and_units() {
        // London to Paris: about 344 km.
        let d = haversine_km(51.5074, -0.1278, 48.8566, 2.3522);
        assert!((d - 343.5).abs() < 2.0, "{d}");
        assert_eq!(parse_near("51.5|-0.12|10|[mi_i]").unwrap().2, 16.09344);
        assert_eq!(parse_near("51.5|-0.12").unwrap().2, 5.0);
        assert!(parse_near("91|0|1|km").is_err());
        assert!(parse_near("a|0").is_err());
        assert!(parse_near("1|2|3|furlong").is_err());
    }

    #[test]
    fn narrative_words() {
        let r = Residual::Text { narrative: true, alternatives: vec![vec!["chest".into(), "pain".into()]], negate: false };
        let doc = json!({"text": {"div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><p>Chest <b>Pain</b> &amp; more</p></div>"}, "note": "x"});
        assert!(r.matches(&doc));
        assert!(!r.matches(&json!({"text": {"div": "<div>chest only</div>"}, "note": "pain"})));
        let content = Residual::Text { narrative: false, alternatives: vec![vec!["pain".into()]], negate: false };
        assert!(content.matches(&json!({"text": {"div": "<div>chest only</div>"}, "note": "pain"})));
    }
}
