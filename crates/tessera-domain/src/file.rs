//! The declarative domain file (TOML).
//!
//! ```toml
//! name = "Example shared domain"
//!
//! [settings]                       # optional; each key optional (defaults shown)
//! relationship_days_after_discharge = 30
//! break_glass_minutes = 240
//! break_glass_marker = true
//! default_sharing = "break-glass"  # shared | break-glass | hidden
//! token_minutes = 60
//!
//! [[roles]]                        # optional: without any, the built-in catalogue
//! id = "doctor"
//! name = "Doctor"
//! nrbac_code = "R8000"             # NHS national RBAC job role code
//! may_break_glass = true           # default false
//! needs_relationship = true        # default true
//! relationship = "site"            # site | location; default site: how close a care
//!                                  # relationship must be (see below)
//! sees_sealed = false              # default false
//! permissions = { demographics = "rw", clinical = "rw", psychiatry = "r" }
//!                                  # "r", "rw", "rwd", "" or { read = true, write = true }
//!
//! [[organisations]]
//! id = "rx1"
//! name = "Northgate Hospitals NHS Trust"
//! ods_code = "RX1"
//!
//! [[organisations]]
//! id = "rx1-general"
//! name = "Northgate General Hospital"
//! ods_code = "RX1AA"
//! parent = "rx1"
//!
//! [[locations]]
//! id = "ward-7a"
//! name = "Ward 7A (Acute Medicine)"
//! organisation = "rx1-general"
//! parent = "…"                     # optional
//!
//! [[users]]
//! id = "dr.patel"
//! name = "Dr Asha Patel"
//! password = "…"                   # in clear (demo/dev), hashed on reading; or
//! # password_hash = "$argon2id$…"
//! active = true                    # default true
//! roles = [ { organisation = "rx1", role = "doctor", locations = ["ward-7a"] } ]
//!
//! [[service_accounts]]
//! id = "rx1-interface-engine"
//! name = "Northgate interface engine"
//! secret = "…"                     # or secret_hash
//! organisation = "rx1"
//! scopes = ["system/*.*"]
//!
//! [[portal_accounts]]             # a patient's sign-in to the portal (/portal)
//! id = "jane.smith"                # distinct from every user id
//! name = "Jane Smith"
//! nhs_number = "9449305552"        # the record it opens
//! password = "…"                   # or password_hash
//!
//! [[apps]]                         # a SMART on FHIR app (authorization-code grant)
//! id = "growth-chart"              # its client_id
//! name = "Growth chart"
//! organisation = "rx1"             # offered to this organisation's users
//! redirect_uris = ["https://apps.example.org/growth/callback"]
//! launch_url = "https://apps.example.org/growth/launch"   # optional: EHR launch
//! secret = "…"                     # optional: a confidential client (else public, PKCE)
//! scopes = ["launch", "launch/patient", "patient/*.rs", "openid", "fhirUser", "offline_access"]
//!
//! [[interfaces]]                   # an HL7 v2 interface (docs/hl7v2.md)
//! id = "rx1-pas"
//! name = "Northgate PAS"
//! organisation = "rx1"             # whose data its messages are
//! listen = "0.0.0.0:2575"          # optional: opened by `tessera serve`
//! sending_facility = "RX1"         # optional: MSH-4 must be this
//! identifier_systems = { RX1 = "https://northgate.example/Id/mrn" }   # CX.4 → system
//! wards = { "7A" = "ward-7a" }     # PL.1 → location id
//! require_order = false            # results must name their order
//! tls_cert = "/etc/tessera/mllp.crt"   # optional, with tls_key
//! tls_key = "/etc/tessera/mllp.key"
//!
//! [governance]                     # optional: joint governance (docs/governance.md)
//! enforced = true                  # production: content and configuration change only
//!                                  # through approved change requests
//! clinical_safety_officers = ["cso.lewis"]
//! emergency_approvers = ["cso.lewis", "domain.carter"]
//! emergency_approvals = 2          # default 2
//! leads = [{ organisation = "rx1", users = ["gov.north"] }]
//! freeze = [{ start = "2027-01-04T00:00:00Z", end = "2027-01-18T00:00:00Z", reason = "…" }]
//!
//! [[sharing]]
//! owner = "rx1"                    # a trust
//! viewer = "*"                     # a trust, or * for every other organisation
//! classes = { demographics = "shared", clinical = "break-glass", hiv = "hidden" }
//! ```
//!
//! Unknown keys are errors (a misspelt key would otherwise be silently ignored).
//!
//! A role's `relationship` is the granularity of the care relationship it needs:
//! `site` — a care link (encounter, appointment, care team, …) anywhere at the user's
//! organisation (hospital or site) counts; `location` — only a link at one of the user's own
//! locations (wards, clinics, teams), or one naming the user. The built-in catalogue makes
//! doctors, pharmacists and receptionists `site`, nurses, students and admin support
//! `location`.
//!
//! A `[[roles]]` entry is a whole role: there is no way to change one field of a built-in
//! role. To change, say, the nurses' granularity, declare the `nurse` role in full (id,
//! name, NRBAC code, permissions, flags) with the new `relationship`. A file with
//! `[[roles]]` read on its own ([`parse_domain_file`]) has exactly the roles it lists; applied
//! to a domain ([`Domain::apply_file`]) its roles replace those of the same ids and the
//! others stay — but a file without `[[roles]]` applied later brings back the built-in
//! definitions of the built-in ids.

use crate::check::{Entry, Found, Section};
use crate::error::{DomainError, Problem};
use crate::model::{
    DataClass, Domain, Location, Organisation, Permission, PortalAccount, RelationshipScope, Role, RoleAssignment, ServiceAccount, Settings, Sharing, SharingAgreement, SmartApp, User,
};
use crate::roles::default_roles;
use crate::secret::{hash_file_secret, MIN_PASSWORD_LEN, MIN_SECRET_LEN};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDomain {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    settings: Option<Spanned<FileSettings>>,
    #[serde(default)]
    roles: Option<Vec<Spanned<FileRole>>>,
    #[serde(default)]
    organisations: Vec<Spanned<FileOrganisation>>,
    #[serde(default)]
    locations: Vec<Spanned<FileLocation>>,
    #[serde(default)]
    users: Vec<Spanned<FileUser>>,
    #[serde(default)]
    service_accounts: Vec<Spanned<FileServiceAccount>>,
    #[serde(default)]
    sharing: Vec<Spanned<FileSharing>>,
    #[serde(default)]
    portal_accounts: Vec<Spanned<FilePortalAccount>>,
    #[serde(default)]
    apps: Vec<Spanned<FileApp>>,
    #[serde(default)]
    patient_index: Option<tessera_empi::Config>,
    #[serde(default)]
    governance: Option<crate::model::Governance>,
    #[serde(default)]
    interfaces: Vec<Spanned<crate::model::Hl7Interface>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    relationship_days_after_discharge: Option<u32>,
    break_glass_minutes: Option<u32>,
    break_glass_marker: Option<bool>,
    default_sharing: Option<Sharing>,
    token_minutes: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRole {
    id: String,
    name: String,
    nrbac_code: String,
    #[serde(default)]
    permissions: BTreeMap<DataClass, PermissionSpec>,
    #[serde(default = "yes")]
    needs_relationship: bool,
    #[serde(default)]
    relationship: Option<RelationshipSpec>,
    #[serde(default)]
    may_break_glass: bool,
    #[serde(default)]
    sees_sealed: bool,
    #[serde(default)]
    merges_patients: crate::model::MergeScope,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOrganisation {
    id: String,
    name: String,
    #[serde(default)]
    ods_code: Option<String>,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    mrn_system: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLocation {
    id: String,
    name: String,
    organisation: String,
    #[serde(default)]
    parent: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAssignment {
    organisation: String,
    role: String,
    #[serde(default)]
    locations: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    id: String,
    name: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    roles: Vec<FileAssignment>,
    #[serde(default = "yes")]
    active: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileServiceAccount {
    id: String,
    name: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_hash: Option<String>,
    organisation: String,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePortalAccount {
    id: String,
    name: String,
    nhs_number: String,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default = "yes")]
    active: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    id: String,
    name: String,
    organisation: String,
    redirect_uris: Vec<String>,
    #[serde(default)]
    launch_url: Option<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    secret_hash: Option<String>,
    scopes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSharing {
    owner: String,
    viewer: String,
    classes: BTreeMap<DataClass, Sharing>,
}

/// A role's `relationship`, as written: any string, checked in [`read`] so that the error
/// names the role.
struct RelationshipSpec(String);

impl<'de> Deserialize<'de> for RelationshipSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = RelationshipSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a relationship granularity: \"site\" or \"location\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<RelationshipSpec, E> {
                Ok(RelationshipSpec(s.to_string()))
            }
        }
        deserializer.deserialize_str(Visitor)
    }
}

/// A permission written as letters (`"r"`, `"rw"`, `"rwd"`, `""`) or as a table.
struct PermissionSpec(Permission);

impl<'de> Deserialize<'de> for PermissionSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = PermissionSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a permission: \"r\", \"rw\", \"rwd\", \"\" or a table { read, write, delete }")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<PermissionSpec, E> {
                let mut p = Permission::default();
                for c in s.chars() {
                    let flag = match c {
                        'r' => &mut p.read,
                        'w' => &mut p.write,
                        'd' => &mut p.delete,
                        _ => return Err(E::custom(format!("permission `{s}`: use the letters r (read), w (write) and d (delete)"))),
                    };
                    if *flag {
                        return Err(E::custom(format!("permission `{s}` repeats `{c}`")));
                    }
                    *flag = true;
                }
                Ok(PermissionSpec(p))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<PermissionSpec, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Table {
                    #[serde(default)]
                    read: bool,
                    #[serde(default)]
                    write: bool,
                    #[serde(default)]
                    delete: bool,
                }
                let t = Table::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PermissionSpec(Permission { read: t.read, write: t.write, delete: t.delete }))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Where the entries of a domain file are: the line of each entry, per section, in order,
/// with its key.
#[derive(Default)]
pub(crate) struct Lines {
    entries: BTreeMap<Section, Vec<(String, usize)>>,
}

impl Lines {
    /// The line of the entry at `entry.index` of the file (the domain was read from it).
    fn by_index(&self, entry: &Entry) -> Option<usize> {
        self.entries.get(&entry.section)?.get(entry.index).map(|(_, line)| *line)
    }

    /// The line of the file entry with the same key (the domain was merged with it).
    fn by_key(&self, entry: &Entry) -> Option<usize> {
        self.entries.get(&entry.section)?.iter().rev().find(|(key, _)| *key == entry.key).map(|(_, line)| *line)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Reads a domain file into a [`Domain`] and checks it ([`Domain::validate`]).
///
/// A file without `[[roles]]` gets the built-in catalogue ([`default_roles`]). Passwords
/// and secrets given in clear (`password`, `secret`) are hashed with argon2id; the salt is
/// derived from the account, so reading the same file twice gives the same domain.
/// Errors name the line (and column, for syntax errors) of the file.
pub fn parse_domain_file(text: &str) -> Result<Domain, DomainError> {
    let (domain, lines) = read(text)?;
    domain.check().into_result(|e| lines.by_index(e))?;
    Ok(domain)
}

impl Domain {
    /// Applies a domain file to this domain: reads it (without requiring it to be complete:
    /// it may name organisations and roles this domain already has), [merges](Domain::merge)
    /// it, and checks the result. On error the domain is left unchanged. Like any file
    /// without `[[roles]]`, a fragment without them carries the built-in catalogue, whose
    /// roles then replace the domain's roles of the same ids.
    pub fn apply_file(&mut self, text: &str) -> Result<(), DomainError> {
        let (file, lines) = read(text)?;
        let mut merged = self.clone();
        merged.merge(file);
        merged.check().into_result(|e| lines.by_key(e))?;
        *self = merged;
        Ok(())
    }
}

/// Reads the file into a domain, without the cross-reference checks.
pub(crate) fn read(text: &str) -> Result<(Domain, Lines), DomainError> {
    let file: FileDomain = toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map_or((1, 1), |s| line_col(text, s.start));
        DomainError::Syntax { line, column, message: e.message().trim().to_string() }
    })?;
    let mut lines = Lines::default();
    let mut local = Found::default();
    let mut note = |section: Section, key: &str, span: std::ops::Range<usize>| {
        let line = line_col(text, span.start).0;
        let list = lines.entries.entry(section).or_default();
        list.push((key.to_string(), line));
        Entry { section, index: list.len() - 1, key: key.to_string() }
    };

    let mut domain = Domain { name: file.name.unwrap_or_default(), ..Domain::default() };

    if let Some(settings) = file.settings {
        note(Section::Settings, "", settings.span());
        let s = settings.into_inner();
        let d = Settings::default();
        domain.settings = Settings {
            relationship_days_after_discharge: s.relationship_days_after_discharge.unwrap_or(d.relationship_days_after_discharge),
            break_glass_minutes: s.break_glass_minutes.unwrap_or(d.break_glass_minutes),
            break_glass_marker: s.break_glass_marker.unwrap_or(d.break_glass_marker),
            default_sharing: s.default_sharing.unwrap_or(d.default_sharing),
            token_minutes: s.token_minutes.unwrap_or(d.token_minutes),
        };
    }

    match file.roles {
        None => domain.roles = default_roles(),
        Some(roles) => {
            for r in roles {
                let entry = note(Section::Role, &r.get_ref().id, r.span());
                let r = r.into_inner();
                let relationship = match r.relationship.as_ref().map(|s| s.0.as_str()) {
                    None | Some("site") => RelationshipScope::Site,
                    Some("location") => RelationshipScope::Location,
                    Some(other) => {
                        let message = format!(
                            "relationship `{other}` is not a relationship granularity: use \"site\" (a care link anywhere at the user's \
                             organisation) or \"location\" (only at the user's own locations, or naming the user)"
                        );
                        local.problems.push((problem(&format!("role `{}`", r.id), &message), Some(entry)));
                        RelationshipScope::Site
                    }
                };
                domain.roles.push(Role {
                    id: r.id,
                    name: r.name,
                    nrbac_code: r.nrbac_code,
                    permissions: r.permissions.into_iter().map(|(c, p)| (c, p.0)).collect(),
                    needs_relationship: r.needs_relationship,
                    relationship,
                    may_break_glass: r.may_break_glass,
                    sees_sealed: r.sees_sealed,
                    merges_patients: r.merges_patients,
                });
            }
        }
    }

    for o in file.organisations {
        note(Section::Organisation, &o.get_ref().id, o.span());
        let o = o.into_inner();
        domain.organisations.push(Organisation { id: o.id, name: o.name, ods_code: o.ods_code, parent: o.parent, mrn_system: o.mrn_system });
    }
    for l in file.locations {
        note(Section::Location, &l.get_ref().id, l.span());
        let l = l.into_inner();
        domain.locations.push(Location { id: l.id, name: l.name, organisation: l.organisation, parent: l.parent });
    }
    for u in file.users {
        let entry = note(Section::User, &u.get_ref().id, u.span());
        let u = u.into_inner();
        let at = format!("user `{}`", u.id);
        let password_hash = file_secret(&mut local, &at, entry, "user", &u.id, "password", u.password, u.password_hash, MIN_PASSWORD_LEN)?;
        let roles = u.roles.into_iter().map(|a| RoleAssignment { organisation: a.organisation, role: a.role, locations: a.locations }).collect();
        domain.users.push(User { id: u.id, name: u.name, password_hash, roles, active: u.active });
    }
    for s in file.service_accounts {
        let entry = note(Section::ServiceAccount, &s.get_ref().id, s.span());
        let s = s.into_inner();
        let at = format!("service account `{}`", s.id);
        let secret_hash = file_secret(&mut local, &at, entry, "service-account", &s.id, "secret", s.secret, s.secret_hash, MIN_SECRET_LEN)?;
        domain.service_accounts.push(ServiceAccount { id: s.id, name: s.name, secret_hash, organisation: s.organisation, scopes: s.scopes });
    }
    for a in file.sharing {
        let key = format!("{}→{}", a.get_ref().owner, a.get_ref().viewer);
        note(Section::Sharing, &key, a.span());
        let a = a.into_inner();
        domain.sharing.push(SharingAgreement { owner: a.owner, viewer: a.viewer, classes: a.classes });
    }

    for a in file.portal_accounts {
        let entry = note(Section::PortalAccount, &a.get_ref().id, a.span());
        let a = a.into_inner();
        let at = format!("portal account `{}`", a.id);
        let password_hash = file_secret(&mut local, &at, entry, "portal-account", &a.id, "password", a.password, a.password_hash, MIN_PASSWORD_LEN)?;
        let nhs_number: String = a.nhs_number.chars().filter(|c| !c.is_whitespace()).collect();
        domain.portal_accounts.push(PortalAccount { id: a.id, name: a.name, nhs_number, password_hash, active: a.active });
    }
    for a in file.apps {
        let entry = note(Section::App, &a.get_ref().id, a.span());
        let a = a.into_inner();
        let at = format!("app `{}`", a.id);
        let secret_hash = file_secret(&mut local, &at, entry, "app", &a.id, "secret", a.secret, a.secret_hash, MIN_SECRET_LEN)?;
        domain.apps.push(SmartApp {
            id: a.id,
            name: a.name,
            organisation: a.organisation,
            redirect_uris: a.redirect_uris,
            launch_url: a.launch_url,
            secret_hash,
            scopes: a.scopes,
        });
    }

    if let Some(config) = file.patient_index {
        domain.patient_index = config;
    }
    if let Some(g) = file.governance {
        domain.governance = g;
    }
    for i in file.interfaces {
        note(Section::Interface, &i.get_ref().id, i.span());
        domain.interfaces.push(i.into_inner());
    }

    local.into_result(|e| lines.by_index(e))?;
    Ok((domain, lines))
}

/// A secret of the file, given in clear (hashed here, if long enough) or as its hash — not
/// both. A problem is noted (and `None` returned) for a secret given twice or too short.
#[allow(clippy::too_many_arguments)]
fn file_secret(
    local: &mut Found,
    at: &str,
    entry: Entry,
    kind: &str,
    id: &str,
    word: &str,
    clear: Option<String>,
    hash: Option<String>,
    min: usize,
) -> Result<Option<String>, DomainError> {
    match (clear, hash) {
        (Some(_), Some(_)) => {
            local.problems.push((problem(at, &format!("give either {word} or {word}_hash, not both")), Some(entry)));
            Ok(None)
        }
        (Some(clear), None) if clear.chars().count() < min => {
            local.problems.push((problem(at, &format!("the {word} is shorter than {min} characters")), Some(entry)));
            Ok(None)
        }
        (Some(clear), None) => Ok(Some(hash_file_secret(kind, id, &clear)?)),
        (None, hash) => Ok(hash),
    }
}

fn problem(at: &str, message: &str) -> Problem {
    Problem { line: None, at: at.to_string(), message: message.to_string() }
}
