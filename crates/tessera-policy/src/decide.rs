//! Rules 2–10: the decision.

use std::fmt;

use tessera_domain::{DataClass, Domain, Permission, Role, Sharing};

use crate::classes::{data_classes, Confidentiality, Seal};

/// What the subject wants to do with the resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Read, search, include, history, export.
    Read,
    /// Create a new resource; it will be owned by the subject's organisation. Needs the
    /// role's write permission.
    Create,
    /// Update an existing resource. Ask with the stored version's facts, and again with
    /// the new version's facts (as [`Action::Write`]) so that added labels are checked too.
    Write,
    /// Delete an existing resource.
    Delete,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Create => "create",
            Action::Write => "write",
            Action::Delete => "delete",
        }
    }

    fn allowed_by(self, permission: Permission) -> bool {
        match self {
            Action::Read => permission.read,
            Action::Create | Action::Write => permission.write,
            Action::Delete => permission.delete,
        }
    }

    fn is_write(self) -> bool {
        !matches!(self, Action::Read)
    }
}

/// The outcome of a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Decision {
    Permit,
    /// Allowed only after the subject breaks the glass for this patient. Until then the
    /// resource behaves as absent; callers may show a "more exists" marker
    /// (`Settings::break_glass_marker`).
    BreakGlass,
    /// Behaves as absent (not found, left out of search results and includes).
    Deny,
}

impl Decision {
    /// Whether the resource may be used now.
    pub fn is_permit(self) -> bool {
        self == Decision::Permit
    }
}

/// Who is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectKind<'a> {
    /// A person, by user (Practitioner) id.
    User { id: &'a str },
    /// A system (service account), bound to the organisation it acts for (rule 2).
    System { account: &'a str },
    /// The domain's own bootstrap account: the one unrestricted subject (an operator
    /// credential, never issued to an interface; every use is audited).
    Domain,
}

/// The subject of a decision: a user in its active role context, or a system.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub kind: SubjectKind<'a>,
    /// The organisation of the active role assignment (a system: the organisation it acts for).
    pub organisation: &'a str,
    /// The locations of the active role assignment. The decision itself does not read them:
    /// they go into the relationship the caller computes ([`PatientFacts::relationship`]).
    pub locations: &'a [String],
    /// The active role; `None` for systems. A user without a role is denied everything.
    pub role: Option<&'a Role>,
}

impl<'a> Subject<'a> {
    pub fn user(id: &'a str, organisation: &'a str, locations: &'a [String], role: &'a Role) -> Self {
        Subject { kind: SubjectKind::User { id }, organisation, locations, role: Some(role) }
    }

    pub fn system(account: &'a str, organisation: &'a str) -> Self {
        Subject { kind: SubjectKind::System { account }, organisation, locations: &[], role: None }
    }

    /// The domain's bootstrap account (unrestricted).
    pub fn domain(organisation: &'a str) -> Self {
        Subject { kind: SubjectKind::Domain, organisation, locations: &[], role: None }
    }
}

/// What the decision needs to know about one resource (one version of it).
#[derive(Debug, Clone, Copy)]
pub struct ResourceFacts<'a> {
    pub resource_type: &'a str,
    /// Owning organisation id (any level; compared by trust). `None`: domain-wide data
    /// (reference data, or a record that belongs to no one trust).
    pub owner: Option<&'a str>,
    /// The patient whose compartment the resource is in. A `Patient` resource is its own
    /// patient whether or not this is set.
    pub patient: Option<&'a str>,
    /// `meta.security` as `(system, code)` pairs.
    pub security: &'a [(&'a str, &'a str)],
    /// Id of the user who wrote it (for [`crate::SEALED_LOCKED`]).
    pub author: Option<&'a str>,
}

/// What the decision needs to know about the patient a resource belongs to. The caller
/// computes it once per patient and request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PatientFacts {
    /// The subject (its user, location or organisation) has a legitimate relationship with
    /// the patient.
    pub relationship: bool,
    /// The subject holds an active break-glass grant for the patient.
    pub break_glass: bool,
    /// Patient-level confidentiality, from `Patient.meta.security`
    /// ([`Confidentiality::from_security`]).
    pub confidentiality: Option<Confidentiality>,
    /// The patient's active Consent denies sharing beyond the organisations that hold the data.
    pub dissents_from_sharing: bool,
}

/// Why a decision came out as it did: one line for audit and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Permit: every rule passed.
    Allowed,
    /// Permit: the domain's bootstrap account (rule 2).
    System,
    /// Deny: a system account where a person would have to break the glass (rule 2).
    SystemNoGlass,
    /// Deny: a system account, a confidential patient, and no care relationship of its
    /// organisation (rule 7).
    ConfidentialPatientSystem,
    /// Permit: the subject holds an active break-glass grant for the patient.
    BreakGlassGrant,
    /// Permit: the Patient resource of a non-confidential patient, without a relationship (rule 6).
    PatientLookup,
    /// Permit: creating demographics or administrative data (registering, booking) without a
    /// relationship (rule 6).
    Registration,
    /// Permit: correcting a Patient resource (registration details: no sensitive labels, a
    /// patient who is not confidential) that the subject's own trust holds, without a
    /// relationship — whoever may register a patient (and look one up) may correct them.
    Correction,
    /// Permit: the role does not need a relationship (rule 6).
    RelationshipNotNeeded,
    /// Deny: a user without an active role.
    NoRole,
    /// Deny: the role does not grant the action on the class (rule 3).
    RoleLacks(Action, DataClass),
    /// Deny: sealed by another trust (rule 8).
    Sealed,
    /// Deny: sealed by its author (rule 8).
    SealedLocked,
    /// Deny: writing data another trust owns (rule 5).
    OtherTrustWrite,
    /// Deny: the patient dissents from sharing and another trust owns the data (rule 9).
    Dissent,
    /// Deny: the owner hides the class from the subject's trust (rule 4).
    Hidden(DataClass),
    /// Break-glass: the owner shares the class only after breaking the glass (rule 4).
    SharedAfterBreakGlass(DataClass),
    /// Break-glass: no relationship with the patient (rule 6).
    NoRelationship,
    /// Deny: a very restricted patient, without a relationship (rule 7).
    VeryRestrictedPatient,
    /// Deny: patient data, but the caller gave no patient facts (rule 10).
    NoPatientFacts,
    /// Deny: break-glass would be needed but there is no patient to break it for (rule 10).
    NoPatientToBreakGlassFor,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Allowed => f.write_str("allowed by role, ownership and relationship"),
            Reason::System => f.write_str("domain bootstrap account"),
            Reason::SystemNoGlass => f.write_str("a system account cannot break the glass"),
            Reason::ConfidentialPatientSystem => f.write_str("confidential patient without a relationship of the system's organisation"),
            Reason::BreakGlassGrant => f.write_str("allowed under an active break-glass grant"),
            Reason::PatientLookup => f.write_str("patient look-up without a relationship"),
            Reason::Registration => f.write_str("registration or booking without a relationship"),
            Reason::Correction => f.write_str("correction of registration details without a relationship"),
            Reason::RelationshipNotNeeded => f.write_str("role needs no relationship"),
            Reason::NoRole => f.write_str("no active role"),
            Reason::RoleLacks(action, class) => {
                write!(f, "role may not {} {} data", action.as_str(), class_name(*class))
            }
            Reason::Sealed => f.write_str("sealed by another trust"),
            Reason::SealedLocked => f.write_str("sealed by its author"),
            Reason::OtherTrustWrite => f.write_str("owned by another trust"),
            Reason::Dissent => f.write_str("patient dissents from sharing with other trusts"),
            Reason::Hidden(class) => write!(f, "owner does not share {} data", class_name(*class)),
            Reason::SharedAfterBreakGlass(class) => {
                write!(f, "owner shares {} data only after breaking the glass", class_name(*class))
            }
            Reason::NoRelationship => f.write_str("no relationship with the patient"),
            Reason::VeryRestrictedPatient => f.write_str("very restricted patient without a relationship"),
            Reason::NoPatientFacts => f.write_str("patient data without patient facts"),
            Reason::NoPatientToBreakGlassFor => f.write_str("break-glass needed but no patient to break it for"),
        }
    }
}

fn class_name(class: DataClass) -> &'static str {
    match class {
        DataClass::Demographics => "demographics",
        DataClass::Administrative => "administrative",
        DataClass::Clinical => "clinical",
        DataClass::Restricted => "restricted",
        DataClass::VeryRestricted => "very-restricted",
        DataClass::Hiv => "hiv",
        DataClass::Psychiatry => "psychiatry",
        DataClass::DomesticViolence => "domestic-violence",
        DataClass::SubstanceAbuse => "substance-abuse",
        DataClass::SexuallyTransmitted => "sexually-transmitted",
        DataClass::Sexuality => "sexuality",
        DataClass::Audit => "audit",
        DataClass::Configuration => "configuration",
    }
}

/// A decision with its reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Verdict {
    pub decision: Decision,
    pub reason: Reason,
}

impl Verdict {
    const fn new(decision: Decision, reason: Reason) -> Self {
        Verdict { decision, reason }
    }

    /// Permitted only because of an active break-glass grant: such access must be audited
    /// as break-glass access.
    pub fn under_break_glass(&self) -> bool {
        self.reason == Reason::BreakGlassGrant
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decision = match self.decision {
            Decision::Permit => "permit",
            Decision::BreakGlass => "break-glass",
            Decision::Deny => "deny",
        };
        write!(f, "{decision}: {}", self.reason)
    }
}

/// The decision (see the crate documentation for the rules).
#[inline]
pub fn decide(
    domain: &Domain,
    subject: &Subject,
    action: Action,
    resource: &ResourceFacts,
    patient: Option<&PatientFacts>,
) -> Decision {
    evaluate(domain, subject, action, resource, patient).decision
}

/// The decision and its reason, as one line for audit and logs.
pub fn explain(
    domain: &Domain,
    subject: &Subject,
    action: Action,
    resource: &ResourceFacts,
    patient: Option<&PatientFacts>,
) -> String {
    evaluate(domain, subject, action, resource, patient).to_string()
}

/// The decision with its reason. Allocation-free.
pub fn evaluate(
    domain: &Domain,
    subject: &Subject,
    action: Action,
    resource: &ResourceFacts,
    patient: Option<&PatientFacts>,
) -> Verdict {
    use Decision::{BreakGlass, Deny, Permit};

    // Rule 2: the bootstrap account; service accounts are bound like users, without a
    // role (their scopes stand in for it) and without the glass.
    let (user, role) = match subject.kind {
        SubjectKind::Domain => return Verdict::new(Permit, Reason::System),
        SubjectKind::System { account } => (account, None),
        SubjectKind::User { id } => match subject.role {
            Some(role) => (id, Some(role)),
            None => return Verdict::new(Deny, Reason::NoRole),
        },
    };
    let mut classes = data_classes(resource.resource_type, resource.security);
    // Rule 7: a patient's confidentiality covers every resource of their record.
    let is_patient_data = resource.patient.is_some() || resource.resource_type == "Patient";
    // (Audit records about the patient are governed by the audit rules instead.)
    if is_patient_data && classes.base != DataClass::Audit {
        match patient.and_then(|p| p.confidentiality) {
            Some(Confidentiality::Restricted) if classes.base != DataClass::Restricted => classes.sensitive.insert(DataClass::Restricted),
            Some(Confidentiality::VeryRestricted) => classes.sensitive.insert(DataClass::VeryRestricted),
            _ => {}
        }
    }

    // Rule 3: the role's permission on every class the resource holds. Configuration is
    // readable by every user.
    if let Some(role) = role {
        for class in classes.iter() {
            if action == Action::Read && class == DataClass::Configuration {
                continue;
            }
            let permission = role.permissions.get(&class).copied().unwrap_or_default();
            if !action.allowed_by(permission) {
                return Verdict::new(Deny, Reason::RoleLacks(action, class));
            }
        }
    }
    let sees_sealed = role.is_some_and(|r| r.sees_sealed);

    // Ownership: a new resource will belong to the subject's organisation.
    let owner = match (action, resource.owner) {
        (Action::Create, None) => Some(subject.organisation),
        (_, owner) => owner,
    };
    let subject_trust = domain.trust_of(subject.organisation);
    let same_trust = owner.is_none_or(|o| domain.trust_of(o) == subject_trust);

    // Rule 8: seals.
    match classes.seal {
        Seal::None => {}
        Seal::Sealed => {
            let owning_trust = owner.is_some() && same_trust;
            if !owning_trust && !sees_sealed {
                return Verdict::new(Deny, Reason::Sealed);
            }
        }
        Seal::Locked => {
            if action != Action::Create && resource.author != Some(user) {
                return Verdict::new(Deny, Reason::SealedLocked);
            }
        }
    }

    // Rules 4, 5 and 9: ownership, sharing dials, dissent.
    let mut glass: Option<Reason> = None;
    if !same_trust {
        if action.is_write() {
            return Verdict::new(Deny, Reason::OtherTrustWrite);
        }
        if patient.is_some_and(|p| p.dissents_from_sharing) {
            return Verdict::new(Deny, Reason::Dissent);
        }
        if classes.base != DataClass::Configuration {
            // Owner is Some: `same_trust` holds for unowned data.
            let owner = owner.unwrap_or_default();
            let mut strictest = (Sharing::Shared, classes.base);
            for class in classes.iter() {
                let sharing = domain.sharing(owner, subject.organisation, class);
                if sharing > strictest.0 {
                    strictest = (sharing, class);
                }
            }
            match strictest {
                (Sharing::Shared, _) => {}
                (Sharing::BreakGlass, class) => glass = Some(Reason::SharedAfterBreakGlass(class)),
                (Sharing::Hidden, class) => return Verdict::new(Deny, Reason::Hidden(class)),
            }
        }
    }

    // Rules 6 and 7: relationship and patient confidentiality.
    let mut permit_reason = Reason::Allowed;
    let facts = if is_patient_data {
        let Some(facts) = patient else {
            return Verdict::new(Deny, Reason::NoPatientFacts);
        };
        let very_restricted = facts.confidentiality == Some(Confidentiality::VeryRestricted);
        match role {
            // A system acts for its organisation and needs no care relationship, except
            // with a confidential (`R`/`V`) patient: then its organisation must have one
            // to read or change the record (recording new data, such as the admission
            // that starts the relationship, needs none).
            None if facts.confidentiality.is_some() && !facts.relationship && action != Action::Create => {
                return Verdict::new(Deny, Reason::ConfidentialPatientSystem);
            }
            None => {}
            Some(_) if facts.relationship => {}
            Some(role) if !role.needs_relationship => permit_reason = Reason::RelationshipNotNeeded,
            Some(_) => {
                let lookup = action == Action::Read
                    && resource.resource_type == "Patient"
                    && classes.sensitive.is_empty()
                    && facts.confidentiality.is_none();
                let registration = action == Action::Create
                    && matches!(classes.base, DataClass::Demographics | DataClass::Administrative)
                    && !very_restricted;
                // Writes to other trusts' data were refused above: this is the trust's own.
                let correction = action == Action::Write
                    && resource.resource_type == "Patient"
                    && classes.sensitive.is_empty()
                    && facts.confidentiality.is_none();
                if lookup {
                    permit_reason = Reason::PatientLookup;
                } else if registration {
                    permit_reason = Reason::Registration;
                } else if correction {
                    permit_reason = Reason::Correction;
                } else if very_restricted && !sees_sealed {
                    return Verdict::new(Deny, Reason::VeryRestrictedPatient);
                } else {
                    glass.get_or_insert(Reason::NoRelationship);
                }
            }
        }
        // Rule 7: no breaking the glass into a very restricted patient's record.
        if glass.is_some() && very_restricted && !sees_sealed {
            return Verdict::new(Deny, Reason::VeryRestrictedPatient);
        }
        Some(facts)
    } else {
        None
    };

    match glass {
        None => Verdict::new(Permit, permit_reason),
        Some(_) if role.is_none() => Verdict::new(Deny, Reason::SystemNoGlass),
        Some(why) => match facts {
            None => Verdict::new(Deny, Reason::NoPatientToBreakGlassFor),
            Some(f) if f.break_glass => Verdict::new(Permit, Reason::BreakGlassGrant),
            Some(_) if role.is_some_and(|r| r.may_break_glass) => Verdict::new(BreakGlass, why),
            Some(_) => Verdict::new(Deny, why),
        },
    }
}

/// Whether `organisation`'s trust may see a resource under the sharing table alone: it owns
/// it, or the owner shares every class of it with that organisation on the *shared* dial
/// (the view of a service account of that organisation). Used to redact the audit trail.
pub fn shared_with(domain: &Domain, organisation: &str, resource: &ResourceFacts, patient: Option<&PatientFacts>) -> bool {
    let subject = Subject::system("", organisation);
    let relationship = PatientFacts { break_glass: false, ..patient.copied().unwrap_or_default() };
    evaluate(domain, &subject, Action::Read, resource, Some(&relationship)).decision == Decision::Permit
}
