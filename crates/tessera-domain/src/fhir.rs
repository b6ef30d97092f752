//! The FHIR resources that publish the domain: Organization, Location, Practitioner,
//! PractitionerRole and Device.

use crate::model::{Domain, Location, Organisation};
use crate::roles::nrbac_display;
use serde_json::{json, Map, Value};

/// Identifier system of ODS organisation codes.
pub const ODS_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// Code system of NHS national RBAC job role codes.
pub const NRBAC_SYSTEM: &str = "https://fhir.nhs.uk/CodeSystem/NHSDigital-SDS-JobRoleCode";
/// Code system of the domain's role catalogue (codes are role ids).
pub const ROLE_SYSTEM: &str = "urn:tessera:role";
/// Identifier system of login names (user ids) and service account ids.
pub const LOGIN_SYSTEM: &str = "urn:tessera:login";

/// Depth of an item in a parent hierarchy (0 for a root), bounded against cycles.
fn depth(parent: Option<&str>, parent_of: impl Fn(&str) -> Option<String>, bound: usize) -> usize {
    let mut d = 0;
    let mut current = parent.map(str::to_string);
    while let Some(p) = current {
        d += 1;
        if d > bound {
            break;
        }
        current = parent_of(&p);
    }
    d
}

fn reference(kind: &str, id: &str) -> Value {
    json!({ "reference": format!("{kind}/{id}") })
}

fn organization(o: &Organisation) -> Value {
    let mut r = Map::new();
    r.insert("resourceType".into(), json!("Organization"));
    r.insert("id".into(), json!(o.id));
    if let Some(ods) = &o.ods_code {
        r.insert("identifier".into(), json!([{ "system": ODS_SYSTEM, "value": ods }]));
    }
    r.insert("active".into(), json!(true));
    r.insert(
        "type".into(),
        json!([{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": "prov", "display": "Healthcare Provider" }] }]),
    );
    r.insert("name".into(), json!(o.name));
    if let Some(parent) = &o.parent {
        r.insert("partOf".into(), reference("Organization", parent));
    }
    Value::Object(r)
}

fn location(l: &Location) -> Value {
    let mut r = Map::new();
    r.insert("resourceType".into(), json!("Location"));
    r.insert("id".into(), json!(l.id));
    r.insert("status".into(), json!("active"));
    r.insert("name".into(), json!(l.name));
    r.insert("mode".into(), json!("instance"));
    r.insert("managingOrganization".into(), reference("Organization", &l.organisation));
    if let Some(parent) = &l.parent {
        r.insert("partOf".into(), reference("Location", parent));
    }
    Value::Object(r)
}

/// The FHIR R4 resources of the domain, each with its id, in a fixed order: organisations
/// (trusts before their sites), locations (parents first), then for each user (by id) its
/// Practitioner and PractitionerRoles (`{user}-{n}`, n from 1, in the order of its role
/// assignments), then a Device per service account (by id). The same domain always gives
/// the same resources; passwords and secrets never appear.
pub fn to_fhir_resources(domain: &Domain) -> Vec<Value> {
    let mut out = Vec::new();
    let bound = domain.organisations.len() + domain.locations.len();

    let mut orgs: Vec<&Organisation> = domain.organisations.iter().collect();
    orgs.sort_by_cached_key(|o| (depth(o.parent.as_deref(), |p| domain.organisation(p).and_then(|x| x.parent.clone()), bound), o.id.clone()));
    out.extend(orgs.into_iter().map(organization));

    let mut locs: Vec<&Location> = domain.locations.iter().collect();
    locs.sort_by_cached_key(|l| (depth(l.parent.as_deref(), |p| domain.location(p).and_then(|x| x.parent.clone()), bound), l.id.clone()));
    out.extend(locs.into_iter().map(location));

    let mut users: Vec<_> = domain.users.iter().collect();
    users.sort_by(|a, b| a.id.cmp(&b.id));
    for user in users {
        out.push(json!({
            "resourceType": "Practitioner",
            "id": user.id,
            "identifier": [{ "system": LOGIN_SYSTEM, "value": user.id }],
            "active": user.active,
            "name": [{ "text": user.name }],
        }));
        for (n, a) in user.roles.iter().enumerate() {
            let mut r = Map::new();
            r.insert("resourceType".into(), json!("PractitionerRole"));
            r.insert("id".into(), json!(format!("{}-{}", user.id, n + 1)));
            r.insert("active".into(), json!(user.active));
            r.insert("practitioner".into(), json!({ "reference": format!("Practitioner/{}", user.id), "display": user.name }));
            r.insert("organization".into(), reference("Organization", &a.organisation));
            let mut codes = Vec::new();
            let role = domain.role(&a.role);
            if let Some(role) = role {
                let mut coding = Map::new();
                coding.insert("system".into(), json!(NRBAC_SYSTEM));
                coding.insert("code".into(), json!(role.nrbac_code));
                if let Some(display) = nrbac_display(&role.nrbac_code) {
                    coding.insert("display".into(), json!(display));
                }
                codes.push(json!({ "coding": [coding] }));
            }
            let display = role.map_or(a.role.as_str(), |r| r.name.as_str());
            codes.push(json!({ "coding": [{ "system": ROLE_SYSTEM, "code": a.role, "display": display }] }));
            r.insert("code".into(), Value::Array(codes));
            if !a.locations.is_empty() {
                r.insert("location".into(), Value::Array(a.locations.iter().map(|l| reference("Location", l)).collect()));
            }
            out.push(Value::Object(r));
        }
    }

    let mut accounts: Vec<_> = domain.service_accounts.iter().collect();
    accounts.sort_by(|a, b| a.id.cmp(&b.id));
    for s in accounts {
        out.push(json!({
            "resourceType": "Device",
            "id": s.id,
            "identifier": [{ "system": LOGIN_SYSTEM, "value": s.id }],
            "status": "active",
            "deviceName": [{ "name": s.name, "type": "user-friendly-name" }],
            "type": { "text": "Service account" },
            "owner": reference("Organization", &s.organisation),
        }));
    }
    out
}
