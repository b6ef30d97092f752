//! The policy decision point: may this subject do this with this resource?
//!
//! Pure and synchronous: no I/O; [`decide`] and [`evaluate`] do not allocate. The engine
//! asks it on every read and write path (read, search results, includes, history,
//! transactions, export) once per resource, with facts it has gathered itself: the [`Subject`] (user and active role context, or a
//! system), the [`ResourceFacts`] of the resource (version) and, for patient data, the
//! [`PatientFacts`] (relationship, break-glass grant, patient confidentiality, dissent).
//!
//! [`decide`] answers [`Decision::Permit`], [`Decision::BreakGlass`] (allowed only after
//! breaking the glass; until then absent, perhaps with a marker) or [`Decision::Deny`]
//! (behaves as absent). [`evaluate`] adds the [`Reason`]; [`explain`] renders it as one line.
//!
//! # Rules
//!
//! Deny unless a rule allows. The first rule that denies decides; "needs break-glass"
//! outcomes are collected and resolved at the end, so any denial outranks them.
//!
//! 1. **Data class by type** ([`data_classes`]). `Patient`, `RelatedPerson`, `Person` are
//!    demographics. `Encounter`, `EpisodeOfCare`, `Appointment`, `AppointmentResponse`,
//!    `Schedule`, `Slot`, `Account`, `Coverage`, claims, invoices and payments, and `Group`
//!    (a patient list is identifiable) are administrative. `AuditEvent` is audit.
//!    Organisations, locations, practitioners, services, endpoints, medication and
//!    substance definitions, terminology, conformance and knowledge artefacts
//!    (`Questionnaire`, `PlanDefinition`, `Library`, `Measure`, …) and `ResearchStudy` are
//!    configuration. Everything else is clinical, including `Flag` (alerts can be
//!    clinical), `Consent` (it can record treatment decisions), `Provenance`, `Device`
//!    (R4: in the patient compartment), `Binary` and unknown types. `meta.security` adds
//!    sensitive classes: confidentiality `R` → restricted, `V` → very-restricted
//!    ([`CONFIDENTIALITY_SYSTEM`]); act codes `HIV`, `PSY`, `SDV`, `ETH`, `STD`, `SEX`
//!    ([`ACT_CODE_SYSTEM`]) → the matching class. The older `http://hl7.org/fhir/v3/…` and
//!    OID spellings of both systems are recognised too.
//! 2. **Systems.** The domain's bootstrap account ([`SubjectKind::Domain`]) is the one
//!    unrestricted subject: an operator credential, never issued to an interface. A service
//!    account ([`SubjectKind::System`]) is bound like a user of the organisation it acts
//!    for: its SMART scopes stand in for a role (rule 3 is the engine's scope check), it
//!    needs no care relationship (rule 6) — except with a confidential patient (rule 7) —,
//!    it sees only what sealed data a role without
//!    `sees_sealed` sees (rule 8), it writes only its own trust's data (rule 5), and it
//!    cannot break the glass — where a person would need to, it is denied
//!    ([`Reason::SystemNoGlass`]). A user without an active role is denied everything.
//! 3. **Role permission**: the role must grant the action (read; write for create and
//!    update; delete) on the base class and on every sensitive class. Configuration data is
//!    readable by every user; writing it needs write on configuration. Audit data needs
//!    read on audit.
//! 4. **Ownership and sharing dials** (reads): data that is unowned or owned by the
//!    subject's trust (compared with `Domain::trust_of`) passes. Otherwise the strictest of
//!    `Domain::sharing(owner, subject organisation, class)` over the base and sensitive
//!    classes applies: hidden → deny; break-glass → break-glass (permit under an active
//!    grant); shared → pass. Configuration data is exempt: it is domain reference data.
//! 5. **Writes**: updates and deletes only of data owned by the subject's trust (or
//!    unowned, domain-wide data); anything another trust owns is denied. Creating needs
//!    write permission only; the new resource is owned by the subject's organisation (a
//!    create naming another trust as owner is denied).
//! 6. **Relationship**: patient data (`ResourceFacts::patient` set, or a `Patient`
//!    resource) needs patient facts (none → deny). A role with `needs_relationship` needs a
//!    relationship or an active break-glass grant; without either the answer is
//!    break-glass if the role `may_break_glass`, else deny. Exceptions, so that front-desk
//!    work is possible: (a) *patient look-up*: reading a `Patient` resource that carries no
//!    sensitive label, of a patient without patient-level confidentiality, needs no
//!    relationship (rule 4 still applies, so another trust's patient must have its
//!    demographics *shared* with the subject's trust, and rule 9 still hides dissenting
//!    patients' records held elsewhere); related persons still need a relationship;
//!    (b) *registration*: creating demographics or administrative data (registering a
//!    patient, booking, admitting, which is how a relationship starts) needs none. Roles
//!    without `needs_relationship` (a privacy officer reading audit) skip this rule.
//! 7. **Confidential patients** (`PatientFacts::confidentiality`): the patient's `R` or `V`
//!    adds the restricted or very-restricted class to *every* resource of their record,
//!    labelled or not (rules 3 and 4 then apply to it). `R` removes the
//!    patient look-up exception of rule 6 (registration stays); break-glass stays possible.
//!    `V` removes both exceptions, and break-glass is not allowed: where a user would need
//!    to break the glass (no relationship, or a break-glass dial), the answer is deny, even
//!    with an active grant, unless the role `sees_sealed` (then rules 4 and 6 apply as for
//!    anyone). Roles without `needs_relationship` still need no relationship. A system
//!    account sees an `R` or `V` patient's record only when its organisation's trust has a
//!    care relationship with the patient (`PatientFacts::relationship`, computed at the
//!    trust for systems).
//! 8. **Sealed data** ([`TESSERA_SECURITY_SYSTEM`]): [`SEALED`] → only the owning trust or
//!    roles with `sees_sealed` (unowned sealed data: only `sees_sealed`); [`SEALED_LOCKED`] →
//!    only the author (`ResourceFacts::author` equals the user id), whatever the role. The
//!    other rules still apply.
//! 9. **Consent dissent** (`PatientFacts::dissents_from_sharing`): reading data owned by
//!    another trust is denied, with no break-glass, so the data stays with the trusts that
//!    hold it. Unowned data and the subject's own trust's data are unaffected.
//! 10. **Deny by default**: patient data without patient facts, break-glass needed where
//!     there is no patient to break the glass for, and everything no rule allows.
//!
//! An active break-glass grant turns every break-glass outcome into [`Decision::Permit`]
//! with [`Reason::BreakGlassGrant`] ([`Verdict::under_break_glass`]), which callers should
//! audit as break-glass access.

mod classes;
mod decide;

pub use classes::{
    base_class, data_classes, sensitivity_class, ClassSet, Classes, Confidentiality, Seal, ACT_CODE_SYSTEM,
    CONFIDENTIALITY_SYSTEM, SEALED, SEALED_LOCKED, TESSERA_SECURITY_SYSTEM,
};
pub use decide::{
    decide, evaluate, explain, shared_with, Action, Decision, PatientFacts, Reason, ResourceFacts, Subject, SubjectKind,
    Verdict,
};
/// The role catalogue lives with the domain model; re-exported for callers of the policy.
pub use tessera_domain::{default_roles, nrbac_display as nrbac_name};

#[cfg(test)]
mod tests;
