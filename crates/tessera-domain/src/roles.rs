//! The built-in role catalogue, used when a domain file has no `[[roles]]`.
//!
//! Each role carries the NHS national RBAC (NRBAC) job role code that best matches it, so
//! that the PractitionerRoles Tessera publishes, and the audit trail, speak the national
//! vocabulary. Permissions are per data class; the sharing dials, the care relationship
//! and consent still apply on top of them (a role's permission is necessary, never
//! sufficient).

use crate::model::{DataClass, MergeScope, Permission, RelationshipScope, Role};
use std::collections::BTreeMap;

/// Ids of the built-in roles.
pub const RECEPTIONIST: &str = "receptionist";
pub const ADMIN_SUPPORT: &str = "admin-support";
pub const NURSE: &str = "nurse";
pub const DOCTOR: &str = "doctor";
pub const PHARMACIST: &str = "pharmacist";
pub const STUDENT: &str = "student";
pub const RESEARCHER: &str = "researcher";
pub const PRIVACY_OFFICER: &str = "privacy-officer";
pub const DOMAIN_ADMIN: &str = "domain-admin";
pub const RECORDS_MANAGER: &str = "records-manager";

/// The NRBAC job role codes Tessera knows the display text of (NHS national RBAC
/// database, "rationalised" access roles).
const NRBAC: [(&str, &str); 15] = [
    ("R0001", "Privacy Officer"),
    ("R5105", "Caldicott Guardian"),
    ("R8000", "Clinical Practitioner Access Role"),
    ("R8001", "Nurse Access Role"),
    ("R8002", "Nurse Manager Access Role"),
    ("R8003", "Health Professional Access Role"),
    ("R8004", "Healthcare Student Access Role"),
    ("R8006", "Medical Secretary Access Role"),
    ("R8007", "Clinical Coder Access Role"),
    ("R8008", "Admin/Clinical Support Access Role"),
    ("R8009", "Receptionist Access Role"),
    ("R8010", "Clerical Access Role"),
    ("R8011", "Clerical Manager Access Role"),
    ("R8012", "Information Officer Access Role"),
    ("R8015", "Systems Support Access Role"),
];

/// The display text of an NRBAC job role code, when Tessera knows it.
pub fn nrbac_display(code: &str) -> Option<&'static str> {
    NRBAC.iter().find(|(c, _)| *c == code).map(|(_, d)| *d)
}

const R: Permission = Permission { read: true, write: false, delete: false };
const RW: Permission = Permission { read: true, write: true, delete: false };
const RWD: Permission = Permission { read: true, write: true, delete: true };

fn role(id: &str, name: &str, nrbac_code: &str, permissions: &[(DataClass, Permission)]) -> Role {
    Role {
        id: id.into(),
        name: name.into(),
        nrbac_code: nrbac_code.into(),
        permissions: permissions.iter().copied().collect::<BTreeMap<_, _>>(),
        needs_relationship: true,
        relationship: RelationshipScope::Site,
        may_break_glass: false,
        sees_sealed: false,
        merges_patients: MergeScope::None,
    }
}

fn with_sensitive(mut base: Vec<(DataClass, Permission)>, permission: Permission) -> Vec<(DataClass, Permission)> {
    base.extend(DataClass::ALL.into_iter().filter(|c| c.is_sensitive()).map(|c| (c, permission)));
    base
}

/// The built-in role catalogue.
///
/// | role | NRBAC | grants | relationship |
/// |---|---|---|---|
/// | `receptionist` | R8009 Receptionist Access Role | demographics, administrative and restricted rw | site |
/// | `admin-support` | R8008 Admin/Clinical Support Access Role | as receptionist, plus clinical r | location |
/// | `nurse` | R8001 Nurse Access Role | demographics r; administrative, clinical and sensitive rw; may break the glass | location |
/// | `doctor` | R8000 Clinical Practitioner Access Role | demographics, administrative, clinical and sensitive rw; may break the glass | site |
/// | `pharmacist` | R8003 Health Professional Access Role | clinical rw; demographics, administrative, restricted, HIV, psychiatry, substance abuse, STD r | site |
/// | `student` | R8004 Healthcare Student Access Role | demographics, administrative, clinical r | location |
/// | `researcher` | R8012 Information Officer Access Role | no patient data | site (no effect) |
/// | `privacy-officer` | R0001 Privacy Officer | audit r, demographics r; no care relationship needed | site (no effect) |
/// | `domain-admin` | R8015 Systems Support Access Role | configuration rwd; no patient data | site (no effect) |
/// | `records-manager` | R8011 Clerical Manager Access Role | demographics rw, administrative r; merges patient records domain-wide; no care relationship needed | site (no effect) |
///
/// *relationship* is the granularity of the care relationship ([`RelationshipScope`]):
/// `site` — a care link anywhere at the user's organisation (hospital or site) counts;
/// `location` — only a link at one of the user's own locations, or one naming the user.
/// Doctors, pharmacists and receptionists work across their site (on call, consulting,
/// booking for any of its clinics); nurses, students and ward clerks work on a ward or in a
/// team. The researcher, privacy officer and domain administrator keep the default: they
/// need no relationship or see no patient data.
///
/// The sensitive classes are restricted, very restricted and the topic classes (HIV,
/// psychiatry, domestic violence, substance abuse, sexually transmitted disease,
/// sexuality). A role's permission is necessary, never sufficient: the care relationship,
/// the sharing dials, patient confidentiality and consent apply on top. Nothing grants
/// deletion of patient data (records are corrected, or marked entered in error); every
/// user may read configuration (domain reference data) without saying so. No built-in
/// role sees sealed data: a domain names those roles itself.
pub fn default_roles() -> Vec<Role> {
    use DataClass::*;
    vec![
        // R8009 Receptionist Access Role: registration, appointments, admissions. Restricted
        // rw so that front-desk work is possible for patients whose records are labelled R.
        // Site-level relationship: receptionists book across the site's clinics.
        role(RECEPTIONIST, "Receptionist", "R8009", &[(Demographics, RW), (Administrative, RW), (Restricted, RW)]),
        // R8008 Admin/Clinical Support Access Role: ward clerks, clinical support workers.
        // Location-level relationship: they work on their ward or in their team.
        Role {
            relationship: RelationshipScope::Location,
            ..role(
                ADMIN_SUPPORT,
                "Admin and clinical support",
                "R8008",
                &[(Demographics, RW), (Administrative, RW), (Clinical, R), (Restricted, R)],
            )
        },
        // R8001 Nurse Access Role. Nurses write notes that carry sensitive labels (a mental
        // health nurse's notes are psychiatry), so sensitive rw; demographics read only.
        // Location-level relationship: nurses are ward or team based.
        Role {
            may_break_glass: true,
            relationship: RelationshipScope::Location,
            ..role(NURSE, "Nurse", "R8001", &with_sensitive(vec![(Demographics, R), (Administrative, RW), (Clinical, RW)], RW))
        },
        // R8000 Clinical Practitioner Access Role: doctors (and staff doing the same work).
        // Doctors record diagnoses that carry sensitive labels (an HIV result, a psychiatric
        // assessment), so they write the sensitive classes as well as read them; the dials
        // still decide what they see of other trusts' data. Site-level relationship: doctors
        // are on call and consult across their hospital.
        Role {
            may_break_glass: true,
            ..role(DOCTOR, "Doctor", "R8000", &with_sensitive(vec![(Demographics, RW), (Administrative, RW), (Clinical, RW)], RW))
        },
        // R8003 Health Professional Access Role: pharmacists among the allied and other
        // health professionals. Clinical rw for medicines work (prescriptions, dispensing,
        // reconciliation), which needs allergies, conditions and results as well, and read
        // of the sensitive classes medicines reveal (antiretrovirals, antipsychotics, opioid
        // substitution). Site-level relationship: pharmacists serve every ward of their site.
        role(
            PHARMACIST,
            "Pharmacist",
            "R8003",
            &[
                (Demographics, R),
                (Administrative, R),
                (Clinical, RW),
                (Restricted, R),
                (Hiv, R),
                (Psychiatry, R),
                (SubstanceAbuse, R),
                (SexuallyTransmitted, R),
            ],
        ),
        // R8004 Healthcare Student Access Role: reads the records of the patients they help
        // care for: location-level relationship, on their placement's ward or team.
        Role {
            relationship: RelationshipScope::Location,
            ..role(STUDENT, "Healthcare student", "R8004", &[(Demographics, R), (Administrative, R), (Clinical, R)])
        },
        // R8012 Information Officer Access Role: works on de-identified extracts outside
        // the record; nothing identifiable here.
        role(RESEARCHER, "Researcher", "R8012", &[]),
        // R0001 Privacy Officer: monitors the use of the record (delegated by the Caldicott
        // Guardian). Reads the audit trail and enough demographics to name the patient, for
        // any patient, without a care relationship; never clinical data.
        Role { needs_relationship: false, ..role(PRIVACY_OFFICER, "Privacy officer", "R0001", &[(Audit, R), (Demographics, R)]) },
        // R8015 Systems Support Access Role: maintains the domain's organisations,
        // locations, users and roles; no patient data.
        role(DOMAIN_ADMIN, "Domain administrator", "R8015", &[(Configuration, RWD)]),
        // R8011 Clerical Manager Access Role: the health records (patient index) team. Works
        // the duplicate worklist and merges records across the whole domain: reads and
        // corrects demographics and sees administrative data (what refers to a record),
        // for any patient, without a care relationship; never clinical data.
        Role {
            needs_relationship: false,
            merges_patients: MergeScope::Domain,
            ..role(RECORDS_MANAGER, "Health records manager", "R8011", &[(Demographics, RW), (Administrative, R)])
        },
    ]
}
