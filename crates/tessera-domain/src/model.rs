//! The domain model.
//!
//! Identifiers are short, stable, lower-case slugs chosen by the domain's administrators
//! (`rx1`, `rx1-general`, `ward-7a`, `dr.patel`); the FHIR resources created for them use
//! the same ids (`Organization/rx1`, `Location/ward-7a`, `Practitioner/dr.patel`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The classes of data the sharing agreements and role permissions speak of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataClass {
    /// Who the patient is: Patient, RelatedPerson, Person.
    Demographics,
    /// Encounters, appointments, episodes of care, schedules, referrals' administration.
    Administrative,
    /// Conditions, observations and results, notes, medications, orders, procedures, allergies…
    Clinical,
    /// Confidentiality R (restricted).
    Restricted,
    /// Confidentiality V (very restricted).
    VeryRestricted,
    /// HIV/AIDS information (`HIV`).
    Hiv,
    /// Psychiatry / mental health (`PSY`).
    Psychiatry,
    /// Sexual assault, abuse, domestic violence (`SDV`).
    DomesticViolence,
    /// Substance abuse (`ETH`).
    SubstanceAbuse,
    /// Sexually transmitted disease (`STD`).
    SexuallyTransmitted,
    /// Sexuality and reproductive health (`SEX`).
    Sexuality,
    /// Audit trail (AuditEvent): privacy officers.
    Audit,
    /// Domain configuration: Organization, Location, Practitioner, PractitionerRole, …
    Configuration,
}

impl DataClass {
    pub const ALL: [DataClass; 13] = [
        DataClass::Demographics,
        DataClass::Administrative,
        DataClass::Clinical,
        DataClass::Restricted,
        DataClass::VeryRestricted,
        DataClass::Hiv,
        DataClass::Psychiatry,
        DataClass::DomesticViolence,
        DataClass::SubstanceAbuse,
        DataClass::SexuallyTransmitted,
        DataClass::Sexuality,
        DataClass::Audit,
        DataClass::Configuration,
    ];

    /// The sensitive classes, which come from security labels rather than resource types.
    pub fn is_sensitive(self) -> bool {
        !matches!(self, DataClass::Demographics | DataClass::Administrative | DataClass::Clinical | DataClass::Audit | DataClass::Configuration)
    }
}

/// How far an owning organisation shares a class of its data with a viewing organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Sharing {
    /// Visible (subject to role and relationship).
    Shared,
    /// Visible only after the user breaks the glass.
    BreakGlass,
    /// Behaves as absent.
    Hidden,
}

/// What a role may do with a data class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Permission {
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
    #[serde(default)]
    pub delete: bool,
}

/// How close a care relationship must be for a role: which of a patient's care links
/// (encounters, appointments, episodes of care, referrals, care-team memberships) give a
/// user in that role a relationship with the patient.
///
/// Whatever the setting, a link naming the user personally always counts, and so does a
/// link at one of the locations of the user's role assignment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RelationshipScope {
    /// A care link anywhere at the user's organisation (the hospital or site of the role
    /// assignment) counts: for staff who are on call, consult or book across their site.
    #[default]
    Site,
    /// Only a care link at one of the user's own locations (wards, clinics, teams), or one
    /// naming the user, counts: for ward- or team-based staff.
    Location,
}

/// A role type from the role catalogue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    /// Slug, e.g. `doctor`.
    pub id: String,
    pub name: String,
    /// NHS national RBAC job role code (e.g. `R8000` Clinical Practitioner Access Role).
    pub nrbac_code: String,
    /// Permissions per data class; absent classes grant nothing.
    pub permissions: BTreeMap<DataClass, Permission>,
    /// Needs a legitimate care relationship (or break-glass) to open a patient's record.
    /// True unless a role says otherwise (e.g. a privacy officer reading the audit trail).
    #[serde(default = "yes")]
    pub needs_relationship: bool,
    /// How close a care relationship must be: `site` — a care link anywhere at the user's
    /// organisation (hospital or site) counts; `location` — only a link at one of the user's
    /// own locations, or one naming the user. Default `site`. Irrelevant to roles that need
    /// no relationship or see no patient data.
    #[serde(default)]
    pub relationship: RelationshipScope,
    /// May break the glass.
    #[serde(default)]
    pub may_break_glass: bool,
    /// May see data sealed by another organisation (named roles for sealed data).
    #[serde(default)]
    pub sees_sealed: bool,
    /// May merge and unmerge patient records (`Patient/$merge`, `$unmerge`, the patient
    /// index's review worklist), and how widely.
    #[serde(default)]
    pub merges_patients: MergeScope,
}

/// How widely a role may merge patient records.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeScope {
    /// Not at all (the default).
    #[default]
    None,
    /// Only records whose data is held by the subject's own trust alone.
    Trust,
    /// Any records of the domain, including those held by several organisations (the
    /// records-management role).
    Domain,
}

/// An organisation: a trust (no parent) or a hospital/site within one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Organisation {
    pub id: String,
    pub name: String,
    /// ODS code.
    #[serde(default)]
    pub ods_code: Option<String>,
    /// Parent organisation id (a site's trust).
    #[serde(default)]
    pub parent: Option<String>,
    /// The identifier system of this organisation's local patient numbers (MRNs). A site
    /// without one uses its trust's; see [`Domain::mrn_system`].
    #[serde(default)]
    pub mrn_system: Option<String>,
}

/// A place within an organisation: department, ward, clinic, bay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    pub id: String,
    pub name: String,
    /// Owning organisation id (usually a site).
    pub organisation: String,
    #[serde(default)]
    pub parent: Option<String>,
}

/// One role a user holds: in an organisation, at some of its locations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleAssignment {
    pub organisation: String,
    pub role: String,
    #[serde(default)]
    pub locations: Vec<String>,
}

/// A person who logs in (a Practitioner in FHIR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Login name and Practitioner id.
    pub id: String,
    pub name: String,
    /// argon2 PHC string.
    #[serde(default)]
    pub password_hash: Option<String>,
    pub roles: Vec<RoleAssignment>,
    #[serde(default = "yes")]
    pub active: bool,
}

fn yes() -> bool {
    true
}

/// A system or interface (client credentials).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    pub id: String,
    pub name: String,
    /// argon2 PHC string of the client secret.
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// The organisation it writes on behalf of.
    pub organisation: String,
    /// SMART scopes it may be granted, e.g. `system/*.*`.
    pub scopes: Vec<String>,
}

/// A patient's account for the patient portal (`/portal`): signs in with a password and
/// sees their own record — the Patient with this NHS number and its compartment — and who
/// accessed it. Read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortalAccount {
    /// Sign-in name (distinct from every user id).
    pub id: String,
    pub name: String,
    /// The NHS number of the patient's record (ten digits, no spaces).
    pub nhs_number: String,
    /// argon2 PHC string.
    #[serde(default)]
    pub password_hash: Option<String>,
    #[serde(default = "yes")]
    pub active: bool,
}

/// A SMART on FHIR app registered by an organisation (an OAuth client of the
/// authorization-code grant). Its users are that organisation's; what it may be granted is
/// at most `scopes`, and never more than the user's role and the sharing table allow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SmartApp {
    /// OAuth `client_id`.
    pub id: String,
    pub name: String,
    /// The organisation that registered it: offered to, and launched by, its users.
    pub organisation: String,
    /// Exact redirect URIs (a loopback `http://127.0.0.1…` URI matches on any port).
    pub redirect_uris: Vec<String>,
    /// Where an EHR launch sends the browser (`?iss=…&launch=…`): an absolute URL, or a path
    /// on this server (`/apps/…`); none: standalone launch only.
    #[serde(default)]
    pub launch_url: Option<String>,
    /// argon2 PHC string of the client secret: a confidential client; none: a public client
    /// (PKCE only).
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// The SMART scopes it may be granted at most, e.g. `patient/*.rs`, `launch`.
    pub scopes: Vec<String>,
}

/// An HL7 v2 interface (the domain file's `[[interfaces]]`): an MLLP listener owned by an
/// organisation, whose messages are applied as that organisation's system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hl7Interface {
    pub id: String,
    pub name: String,
    /// The organisation whose data the messages are.
    pub organisation: String,
    /// Where it listens (`0.0.0.0:2575`); none: declared but not opened by `serve`.
    #[serde(default)]
    pub listen: Option<String>,
    /// MSH-4 the sender must give (its facility); none: any.
    #[serde(default)]
    pub sending_facility: Option<String>,
    /// Assigning authority (CX.4) → identifier system, for PID-3 identifiers other than the
    /// NHS number; an identifier with no or another authority is the organisation's MRN.
    #[serde(default)]
    pub identifier_systems: BTreeMap<String, String>,
    /// Point of care (PL.1 of PV1-3, AIL-3, …) → location id of the domain. A message naming
    /// a place not in the table is refused (`AE`); an empty table accepts places whose PL.1
    /// is itself a location id of the organisation.
    #[serde(default)]
    pub wards: BTreeMap<String, String>,
    /// Results (ORU) must name their order (OBR-2/OBR-3).
    #[serde(default)]
    pub require_order: bool,
    /// TLS: PEM certificate chain and private key files (both, or neither).
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    /// A connection idle this long is closed (default 300).
    #[serde(default = "default_read_timeout")]
    pub read_timeout_seconds: u64,
    /// The largest message accepted, in bytes (default 4 MiB).
    #[serde(default = "default_max_message")]
    pub max_message_bytes: usize,
}

fn default_read_timeout() -> u64 {
    300
}

fn default_max_message() -> usize {
    4 << 20
}

/// Joint governance of the domain's content and configuration (the domain file's
/// `[governance]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Governance {
    /// Production: layered content and the domain's configuration change only through
    /// approved change requests; direct edits are refused.
    #[serde(default)]
    pub enforced: bool,
    /// Each trust's governance leads: one of them signs off every change that affects it.
    #[serde(default)]
    pub leads: Vec<GovernanceLead>,
    /// Users who sign off changes to clinical content (one of them for each such change).
    #[serde(default)]
    pub clinical_safety_officers: Vec<String>,
    /// Users who may approve an emergency change during a freeze.
    #[serde(default)]
    pub emergency_approvers: Vec<String>,
    /// How many of them must approve an emergency change (other than its requester).
    #[serde(default = "two")]
    pub emergency_approvals: u32,
    /// Windows during which production changes are refused.
    #[serde(default)]
    pub freeze: Vec<FreezeWindow>,
}

fn two() -> u32 {
    2
}

/// A trust's governance leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GovernanceLead {
    /// A trust.
    pub organisation: String,
    pub users: Vec<String>,
}

/// A change freeze (RFC 3339 instants; `start` inclusive, `end` exclusive).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeWindow {
    pub start: String,
    pub end: String,
    pub reason: String,
}

/// One row of the sharing table: owner → viewer, per data class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharingAgreement {
    /// Owning organisation (a trust).
    pub owner: String,
    /// Viewing organisation (a trust), or `*` for every other organisation.
    pub viewer: String,
    pub classes: BTreeMap<DataClass, Sharing>,
}

/// Domain-wide settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    /// Days a care relationship lasts after an encounter ends (discharge).
    pub relationship_days_after_discharge: u32,
    /// Minutes a break-glass grant lasts.
    pub break_glass_minutes: u32,
    /// Show a "more exists — break glass to view" marker where data is behind break-glass.
    pub break_glass_marker: bool,
    /// Sharing for classes no agreement mentions, between different organisations.
    pub default_sharing: Sharing,
    /// Lifetime of access tokens, in minutes.
    pub token_minutes: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            relationship_days_after_discharge: 30,
            break_glass_minutes: 240,
            break_glass_marker: true,
            default_sharing: Sharing::BreakGlass,
            token_minutes: 60,
        }
    }
}

/// The whole domain configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    pub name: String,
    #[serde(default)]
    pub settings: Settings,
    #[serde(default)]
    pub roles: Vec<Role>,
    #[serde(default)]
    pub organisations: Vec<Organisation>,
    #[serde(default)]
    pub locations: Vec<Location>,
    #[serde(default)]
    pub users: Vec<User>,
    #[serde(default)]
    pub service_accounts: Vec<ServiceAccount>,
    #[serde(default)]
    pub sharing: Vec<SharingAgreement>,
    /// Patients' portal accounts.
    #[serde(default)]
    pub portal_accounts: Vec<PortalAccount>,
    /// SMART apps registered by the organisations.
    #[serde(default)]
    pub apps: Vec<SmartApp>,
    /// Joint governance: sign-off, clinical safety, freezes.
    #[serde(default)]
    pub governance: Governance,
    /// HL7 v2 interfaces (MLLP listeners) and who owns them.
    #[serde(default)]
    pub interfaces: Vec<Hl7Interface>,
    /// How the patient index matches registrations: weights, thresholds, nicknames,
    /// blocking keys (the domain file's `[patient_index]`; documented defaults).
    #[serde(default)]
    pub patient_index: tessera_empi::Config,
}

impl Domain {
    pub fn organisation(&self, id: &str) -> Option<&Organisation> {
        self.organisations.iter().find(|o| o.id == id)
    }

    pub fn location(&self, id: &str) -> Option<&Location> {
        self.locations.iter().find(|l| l.id == id)
    }

    pub fn role(&self, id: &str) -> Option<&Role> {
        self.roles.iter().find(|r| r.id == id)
    }

    pub fn user(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    pub fn portal_account(&self, id: &str) -> Option<&PortalAccount> {
        self.portal_accounts.iter().find(|a| a.id == id)
    }

    pub fn interface(&self, id: &str) -> Option<&Hl7Interface> {
        self.interfaces.iter().find(|i| i.id == id)
    }

    pub fn app(&self, id: &str) -> Option<&SmartApp> {
        self.apps.iter().find(|a| a.id == id)
    }

    pub fn service_account(&self, id: &str) -> Option<&ServiceAccount> {
        self.service_accounts.iter().find(|s| s.id == id)
    }

    /// The identifier system of an organisation's local patient numbers: its own
    /// `mrn_system`, else its trust's, else `https://tessera.health/Id/mrn/<trust id>`.
    pub fn mrn_system(&self, org: &str) -> String {
        let own = self.organisation(org).and_then(|o| o.mrn_system.clone());
        let trust = self.trust_of(org);
        own.or_else(|| self.organisation(trust).and_then(|o| o.mrn_system.clone())).unwrap_or_else(|| format!("https://tessera.health/Id/mrn/{trust}"))
    }

    /// The organisation (trust or site) whose MRN system is `system`, if any.
    pub fn organisation_of_mrn_system(&self, system: &str) -> Option<&Organisation> {
        self.organisations.iter().find(|o| o.mrn_system.as_deref() == Some(system)).or_else(|| {
            let trust = system.strip_prefix("https://tessera.health/Id/mrn/")?;
            self.organisation(trust)
        })
    }

    /// The trust an organisation belongs to (itself if it has no parent).
    pub fn trust_of<'a>(&'a self, org: &'a str) -> &'a str {
        let mut current = org;
        for _ in 0..16 {
            match self.organisation(current).and_then(|o| o.parent.as_deref()) {
                Some(parent) => current = parent,
                None => return current,
            }
        }
        current
    }

    /// Sharing of `class` data owned by `owner` when viewed from `viewer` (organisation ids,
    /// any level; compared by trust). Same trust: shared.
    pub fn sharing(&self, owner: &str, viewer: &str, class: DataClass) -> Sharing {
        let (owner, viewer) = (self.trust_of(owner), self.trust_of(viewer));
        if owner == viewer {
            return Sharing::Shared;
        }
        let specific = self.sharing.iter().find(|a| a.owner == owner && a.viewer == viewer).and_then(|a| a.classes.get(&class));
        let general = || self.sharing.iter().find(|a| a.owner == owner && a.viewer == "*").and_then(|a| a.classes.get(&class));
        specific.or_else(general).copied().unwrap_or(self.settings.default_sharing)
    }
}
