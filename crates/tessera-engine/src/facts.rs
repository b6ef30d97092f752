//! Facts about a resource that access decisions need, extracted once when it is written:
//! the care relationships it establishes (an encounter at a ward, an appointment, a
//! referral, care-team membership, a patient's dissent from sharing) and its security
//! labels.

use serde_json::Value;
use tessera_store::CareLink;

const ACT_REASON_CONSENT_DENY: &str = "deny";

fn reference_id<'a>(v: &'a Value, ty: &str) -> Option<&'a str> {
    v.get("reference")?.as_str()?.strip_prefix(ty)?.strip_prefix('/')
}

fn period(v: Option<&Value>) -> (Option<i64>, Option<i64>) {
    let p = |k: &str| v.and_then(|p| p.get(k)).and_then(Value::as_str).and_then(crate::prepare::parse_instant);
    (p("start"), p("end"))
}

fn array<'a>(v: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    v.get(key).and_then(Value::as_array).into_iter().flatten()
}

/// The care links a resource establishes (empty for most resources).
pub fn care_links(resource: &Value) -> Vec<CareLink> {
    let ty = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
    let status = resource.get("status").and_then(Value::as_str).unwrap_or("");
    let mut out = Vec::new();
    match ty {
        "Encounter" => {
            let Some(patient) = resource.get("subject").and_then(|s| reference_id(s, "Patient")) else { return out };
            let (start, end) = period(resource.get("period"));
            let active = !matches!(status, "cancelled" | "entered-in-error");
            let organisation = resource.get("serviceProvider").and_then(|s| reference_id(s, "Organization")).map(str::to_string);
            let mut link = |location: Option<String>, practitioner: Option<String>| {
                out.push(CareLink {
                    kind: "encounter".into(),
                    patient: patient.to_string(),
                    organisation: organisation.clone(),
                    location,
                    practitioner,
                    start_micros: start,
                    end_micros: if matches!(status, "in-progress" | "arrived" | "triaged" | "onleave" | "planned") { None } else { end },
                    active,
                });
            };
            link(None, None);
            for l in array(resource, "location") {
                if let Some(loc) = l.get("location").and_then(|r| reference_id(r, "Location")) {
                    link(Some(loc.to_string()), None);
                }
            }
            for p in array(resource, "participant") {
                if let Some(pr) = p.get("individual").and_then(|r| reference_id(r, "Practitioner")) {
                    link(None, Some(pr.to_string()));
                }
            }
        }
        "Appointment" => {
            let participants: Vec<&Value> = array(resource, "participant").filter_map(|p| p.get("actor")).collect();
            let Some(patient) = participants.iter().find_map(|a| reference_id(a, "Patient")) else { return out };
            let start = resource.get("start").and_then(Value::as_str).and_then(crate::prepare::parse_instant);
            let end = resource.get("end").and_then(Value::as_str).and_then(crate::prepare::parse_instant);
            let active = !matches!(status, "cancelled" | "entered-in-error" | "noshow");
            for a in &participants {
                let location = reference_id(a, "Location").map(str::to_string);
                let practitioner = reference_id(a, "Practitioner").map(str::to_string);
                if location.is_some() || practitioner.is_some() {
                    out.push(CareLink { kind: "appointment".into(), patient: patient.to_string(), organisation: None, location, practitioner, start_micros: start, end_micros: end, active });
                }
            }
        }
        "ServiceRequest" => {
            let Some(patient) = resource.get("subject").and_then(|s| reference_id(s, "Patient")) else { return out };
            let active = matches!(status, "active" | "on-hold" | "draft");
            let start = resource.get("authoredOn").and_then(Value::as_str).and_then(crate::prepare::parse_instant);
            for p in array(resource, "performer") {
                let organisation = reference_id(p, "Organization").map(str::to_string);
                let practitioner = reference_id(p, "Practitioner").map(str::to_string);
                if organisation.is_some() || practitioner.is_some() {
                    out.push(CareLink { kind: "referral".into(), patient: patient.to_string(), organisation, location: None, practitioner, start_micros: start, end_micros: None, active });
                }
            }
            for l in array(resource, "locationReference") {
                if let Some(loc) = reference_id(l, "Location") {
                    out.push(CareLink { kind: "referral".into(), patient: patient.to_string(), organisation: None, location: Some(loc.to_string()), practitioner: None, start_micros: start, end_micros: None, active });
                }
            }
        }
        "CareTeam" => {
            let Some(patient) = resource.get("subject").and_then(|s| reference_id(s, "Patient")) else { return out };
            let (start, end) = period(resource.get("period"));
            let active = matches!(status, "active" | "proposed" | "suspended" | "");
            let mut push = |organisation: Option<String>, practitioner: Option<String>| {
                out.push(CareLink { kind: "care-team".into(), patient: patient.to_string(), organisation, location: None, practitioner, start_micros: start, end_micros: end, active });
            };
            for p in array(resource, "participant") {
                if let Some(m) = p.get("member") {
                    let org = reference_id(m, "Organization").map(str::to_string);
                    let pr = reference_id(m, "Practitioner").map(str::to_string);
                    if org.is_some() || pr.is_some() {
                        push(org, pr);
                    }
                }
                if let Some(org) = p.get("onBehalfOf").and_then(|o| reference_id(o, "Organization")) {
                    push(Some(org.to_string()), None);
                }
            }
            for o in array(resource, "managingOrganization") {
                if let Some(org) = reference_id(o, "Organization") {
                    push(Some(org.to_string()), None);
                }
            }
        }
        "Consent" => {
            let Some(patient) = resource.get("patient").and_then(|s| reference_id(s, "Patient")) else { return out };
            let deny = resource.get("provision").and_then(|p| p.get("type")).and_then(Value::as_str) == Some(ACT_REASON_CONSENT_DENY);
            if deny {
                let (start, end) = period(resource.get("provision").and_then(|p| p.get("period")));
                out.push(CareLink {
                    kind: "consent-deny".into(),
                    patient: patient.to_string(),
                    organisation: None,
                    location: None,
                    practitioner: None,
                    start_micros: start,
                    end_micros: end,
                    active: status == "active",
                });
            }
        }
        _ => {}
    }
    out
}

/// `(system, code)` of `meta.security`.
pub fn security_labels(resource: &Value) -> Vec<(String, String)> {
    resource
        .get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c.get("system").and_then(Value::as_str).unwrap_or("").to_string(), c.get("code")?.as_str()?.to_string())))
        .collect()
}
