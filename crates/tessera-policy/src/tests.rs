use tessera_domain::{DataClass, Domain, Organisation, Role, Settings, Sharing, SharingAgreement};

use crate::*;

// ---------------------------------------------------------------------------------------
// A small domain: two acute trusts (north, south) and a mental-health trust (mind) with
// strict dials; each trust has one site, and users work at the sites.

const N: &str = "north-general";
const S: &str = "south-royal";
const M: &str = "mind-oak";
const USER: &str = "u1";

fn agreement(owner: &str, viewer: &str, classes: &[(DataClass, Sharing)]) -> SharingAgreement {
    SharingAgreement { owner: owner.into(), viewer: viewer.into(), classes: classes.iter().copied().collect() }
}

fn org(id: &str, parent: Option<&str>) -> Organisation {
    Organisation { id: id.into(), name: id.into(), ods_code: None, parent: parent.map(Into::into), mrn_system: None }
}

fn domain() -> Domain {
    use DataClass::*;
    use Sharing::*;
    let mut roles = default_roles();
    // A named role for sealed and very restricted records.
    let mut mh = roles.iter().find(|r| r.id == "doctor").unwrap().clone();
    mh.id = "mh-consultant".into();
    mh.sees_sealed = true;
    roles.push(mh);
    Domain {
        name: "test".into(),
        settings: Settings { default_sharing: BreakGlass, ..Settings::default() },
        roles,
        organisations: vec![
            org("north", None),
            org(N, Some("north")),
            org("south", None),
            org(S, Some("south")),
            org("mind", None),
            org(M, Some("mind")),
        ],
        locations: vec![],
        users: vec![],
        service_accounts: vec![],
        sharing: vec![
            agreement(
                "north",
                "*",
                &[
                    (Demographics, Shared),
                    (Administrative, Shared),
                    (Clinical, Shared),
                    (Restricted, BreakGlass),
                    (Psychiatry, BreakGlass),
                    (Hiv, Hidden),
                ],
            ),
            // A specific agreement overrides the general one, class by class.
            agreement("north", "south", &[(Hiv, Shared)]),
            agreement("south", "*", &[(Demographics, Shared), (Administrative, Shared), (Clinical, BreakGlass)]),
            agreement(
                "mind",
                "*",
                &[
                    (Demographics, Shared),
                    (Administrative, BreakGlass),
                    (Clinical, BreakGlass),
                    (Psychiatry, Hidden),
                    (SubstanceAbuse, Hidden),
                ],
            ),
        ],
        portal_accounts: Vec::new(),
        apps: Vec::new(),
        governance: Default::default(),
        patient_index: Default::default(),
        interfaces: Vec::new(),
    }
}

fn label(code: &str) -> (&'static str, &str) {
    match code {
        "R" | "V" | "N" => (CONFIDENTIALITY_SYSTEM, code),
        "SEALED" => (TESSERA_SECURITY_SYSTEM, SEALED),
        "LOCKED" => (TESSERA_SECURITY_SYSTEM, SEALED_LOCKED),
        _ => (ACT_CODE_SYSTEM, code),
    }
}

/// `-`: not patient data; `?`: patient data without facts; else `+`-joined flags:
/// `rel`, `none`, `glass`, `R`, `V`, `dissent`.
fn facts(spec: &str) -> (bool, Option<PatientFacts>) {
    match spec {
        "-" => return (false, None),
        "?" => return (true, None),
        _ => {}
    }
    let mut f = PatientFacts::default();
    for flag in spec.split('+') {
        match flag {
            "rel" => f.relationship = true,
            "none" => {}
            "glass" => f.break_glass = true,
            "R" => f.confidentiality = Some(Confidentiality::Restricted),
            "V" => f.confidentiality = Some(Confidentiality::VeryRestricted),
            "dissent" => f.dissents_from_sharing = true,
            other => panic!("unknown patient flag {other}"),
        }
    }
    (true, Some(f))
}

struct Row {
    role: &'static str,
    org: &'static str,
    owner: &'static str,
    resource_type: &'static str,
    labels: &'static str,
    author: &'static str,
    patient: &'static str,
    action: Action,
    expected: char,
}

fn run(domain: &Domain, row: &Row) -> Verdict {
    let role: Option<&Role> = match row.role {
        "-" | "system" | "domain" => None,
        id => Some(domain.role(id).unwrap_or_else(|| panic!("no role {id}"))),
    };
    let kind = match row.role {
        "system" => SubjectKind::System { account: "pas-feed" },
        "domain" => SubjectKind::Domain,
        _ => SubjectKind::User { id: USER },
    };
    let subject = Subject { kind, organisation: row.org, locations: &[], role };
    let security: Vec<(&str, &str)> = row.labels.split_whitespace().map(label).collect();
    let (is_patient, facts) = facts(row.patient);
    let resource = ResourceFacts {
        resource_type: row.resource_type,
        owner: (row.owner != "-").then_some(row.owner),
        patient: is_patient.then_some("p1"),
        security: &security,
        author: (row.author != "-").then_some(row.author),
    };
    evaluate(domain, &subject, row.action, &resource, facts.as_ref())
}

macro_rules! rows {
    ($( $role:literal $org:ident $owner:literal $ty:literal [$labels:literal] $author:literal $patient:literal $action:ident => $exp:literal ;)*) => {
        vec![$( Row {
            role: $role, org: $org, owner: $owner, resource_type: $ty, labels: $labels, author: $author,
            patient: $patient, action: Action::$action, expected: $exp,
        } ),*]
    };
}

/// role × trust × dial × sensitivity × relationship/break-glass × consent × action.
/// Columns: role, subject organisation, owner, type, labels, author, patient facts, action
/// => P(ermit) / G (break-glass) / D(eny).
#[test]
fn matrix() {
    let domain = domain();
    let rows = rows![
        // Rule 2: the bootstrap account; service accounts bound to their organisation;
        // users without a role.
        "domain" N "mind" "Observation" ["PSY"] "-" "?" Read => 'P';
        "domain" N "south" "Observation" [""] "-" "none+dissent" Delete => 'P';
        "domain" N "north" "Observation" ["LOCKED"] "u2" "?" Read => 'P';
        "system" N "north" "Observation" [""] "-" "none" Read => 'P';
        "system" N "north" "Observation" ["PSY"] "-" "none" Delete => 'P';
        "system" N "-" "Observation" [""] "-" "none" Create => 'P';
        "system" N "south" "Observation" [""] "-" "none" Create => 'D';
        "system" N "mind" "Observation" ["PSY"] "-" "none" Read => 'D';
        "system" N "mind" "Observation" [""] "-" "none" Read => 'D';
        "system" N "mind" "Observation" [""] "-" "glass" Read => 'D';
        "system" S "north" "Observation" [""] "-" "none" Read => 'P';
        "system" S "north" "Observation" ["PSY"] "-" "none" Read => 'D';
        "system" N "south" "Observation" [""] "-" "none" Delete => 'D';
        "system" N "south" "Observation" [""] "-" "none" Write => 'D';
        "system" S "north" "Observation" [""] "-" "none+dissent" Read => 'D';
        "system" N "north" "Observation" ["LOCKED"] "u2" "none" Read => 'D';
        "system" N "north" "Observation" ["SEALED"] "-" "none" Read => 'P';
        "system" S "north" "Observation" ["SEALED"] "-" "none" Read => 'D';
        "system" N "north" "Observation" [""] "-" "?" Read => 'D';
        "system" N "north" "Observation" [""] "-" "none+V" Read => 'D';
        "system" N "north" "Observation" [""] "-" "rel+V" Read => 'P';
        "system" N "-" "Patient" [""] "-" "none+R" Read => 'D';
        "system" N "-" "Patient" [""] "-" "none" Read => 'P';
        "system" N "-" "Encounter" [""] "-" "none+V" Create => 'P';
        "system" N "north" "Encounter" [""] "-" "none+V" Write => 'D';
        "system" S "north" "Observation" [""] "-" "rel+R" Read => 'D';
        "-" N "north" "Observation" [""] "-" "rel" Read => 'D';

        // Rule 3: role permission on base and sensitive classes.
        "receptionist" N "north" "Patient" [""] "-" "rel" Read => 'P';
        "receptionist" N "north" "Patient" [""] "-" "rel" Write => 'P';
        "receptionist" N "-" "Encounter" [""] "-" "rel" Create => 'P';
        "receptionist" N "north" "Observation" [""] "-" "rel" Read => 'D';
        "receptionist" N "north" "Patient" [""] "-" "rel" Delete => 'D';
        "nurse" N "north" "Observation" [""] "-" "rel" Read => 'P';
        "nurse" N "north" "Observation" [""] "-" "rel" Delete => 'D';
        "doctor" N "north" "Observation" [""] "-" "rel" Delete => 'D'; // no default role deletes patient data (entered-in-error instead)
        "pharmacist" N "north" "MedicationRequest" [""] "-" "rel" Write => 'P';
        "pharmacist" N "north" "Observation" ["HIV"] "-" "rel" Read => 'P';
        "pharmacist" N "north" "Observation" ["SDV"] "-" "rel" Read => 'D';
        "pharmacist" N "north" "Observation" ["HIV"] "-" "rel" Write => 'D';
        "pharmacist" N "north" "Observation" ["V"] "-" "rel" Read => 'D';
        "student" N "north" "Observation" [""] "-" "rel" Read => 'P';
        "student" N "north" "Observation" ["PSY"] "-" "rel" Read => 'D';
        "student" N "north" "Observation" [""] "-" "rel" Write => 'D';
        "researcher" N "north" "Observation" [""] "-" "rel" Read => 'D';
        "researcher" N "north" "Patient" [""] "-" "none" Read => 'D';
        "researcher" N "-" "ValueSet" [""] "-" "-" Read => 'P';
        "researcher" N "-" "ValueSet" [""] "-" "-" Write => 'D';
        "domain-admin" N "-" "Organization" [""] "-" "-" Write => 'P';
        "domain-admin" N "north" "Location" [""] "-" "-" Delete => 'P';
        "domain-admin" N "south" "Location" [""] "-" "-" Write => 'D';
        "domain-admin" N "north" "Observation" [""] "-" "rel" Read => 'D';
        "domain-admin" N "-" "AuditEvent" [""] "-" "-" Read => 'D';
        "privacy-officer" N "north" "AuditEvent" [""] "-" "none" Read => 'P';
        "privacy-officer" N "north" "AuditEvent" [""] "-" "none+V" Read => 'P';
        "privacy-officer" N "north" "Observation" [""] "-" "none" Read => 'D';
        "privacy-officer" N "north" "AuditEvent" [""] "-" "none" Write => 'D';
        "doctor" N "north" "AuditEvent" [""] "-" "rel" Read => 'D';
        "admin-support" N "north" "Observation" [""] "-" "rel" Read => 'P';
        "admin-support" N "north" "Observation" [""] "-" "rel" Write => 'D';

        // Rule 4: ownership and sharing dials on reads.
        "doctor" N "north" "Observation" ["PSY"] "-" "rel" Read => 'P';
        "doctor" N "-" "Observation" [""] "-" "rel" Read => 'P';
        "doctor" S "north" "Observation" [""] "-" "rel" Read => 'P';
        "doctor" S "north" "Observation" ["PSY"] "-" "rel" Read => 'G';
        "doctor" S "north" "Observation" ["PSY"] "-" "rel+glass" Read => 'P';
        "doctor" M "north" "Observation" ["HIV"] "-" "rel" Read => 'D';
        "doctor" S "north" "Observation" ["HIV"] "-" "rel" Read => 'P';
        "doctor" S "north" "Observation" ["SEX"] "-" "rel" Read => 'G';
        "doctor" S "north" "Patient" ["R"] "-" "rel+R" Read => 'G';
        "doctor" N "south" "Observation" [""] "-" "rel" Read => 'G';
        "receptionist" N "south" "Encounter" [""] "-" "rel" Read => 'P';
        "doctor" N "mind" "Observation" [""] "-" "rel" Read => 'G';
        "doctor" N "mind" "Observation" [""] "-" "rel+glass" Read => 'P';
        "doctor" N "mind" "Observation" ["PSY"] "-" "rel+glass" Read => 'D';
        "doctor" N "mind" "Observation" ["ETH"] "-" "rel" Read => 'D';
        "receptionist" N "mind" "Encounter" [""] "-" "rel" Read => 'D';
        "nurse" N "mind" "Encounter" [""] "-" "rel" Read => 'G';
        "nurse" N "mind" "Encounter" [""] "-" "rel+glass" Read => 'P';
        "pharmacist" S "north" "Observation" ["PSY"] "-" "rel" Read => 'D';
        "doctor" N "mind" "Questionnaire" [""] "-" "-" Read => 'P';
        "receptionist" N "south" "Schedule" [""] "-" "-" Read => 'P';
        "doctor" N "mind" "Schedule" [""] "-" "-" Read => 'D';
        "privacy-officer" S "north" "AuditEvent" [""] "-" "none" Read => 'D';

        // Rule 5: writes.
        "doctor" S "north" "Observation" [""] "-" "rel" Write => 'D';
        "doctor" S "north" "Observation" [""] "-" "rel+glass" Delete => 'D';
        "doctor" S "-" "Observation" [""] "-" "rel" Create => 'P';
        "doctor" S "north" "Observation" [""] "-" "rel" Create => 'D';
        "doctor" S "south" "Observation" [""] "-" "rel" Write => 'P';
        "doctor" N "north" "Observation" [""] "-" "none" Write => 'G';
        "doctor" N "-" "Observation" [""] "-" "none" Create => 'G';
        "receptionist" S "-" "Patient" [""] "-" "none" Create => 'P';
        // Who may register a patient may correct the registration (issue 11, point 8).
        "receptionist" N "-" "Patient" [""] "-" "none" Write => 'P';
        "receptionist" N "-" "Patient" ["PSY"] "-" "none" Write => 'D';
        "receptionist" N "-" "Patient" [""] "-" "none+R" Write => 'D';
        "receptionist" N "-" "Appointment" [""] "-" "none" Create => 'P';
        "receptionist" N "-" "Appointment" [""] "-" "none+R" Create => 'P';
        "receptionist" N "-" "Appointment" [""] "-" "none+V" Create => 'D';

        // Rule 6: relationship, patient look-up.
        "doctor" N "north" "Observation" [""] "-" "none" Read => 'G';
        "doctor" N "north" "Observation" [""] "-" "glass" Read => 'P';
        "nurse" N "north" "Observation" [""] "-" "none" Read => 'G';
        "student" N "north" "Observation" [""] "-" "none" Read => 'D';
        "pharmacist" N "north" "MedicationRequest" [""] "-" "none" Read => 'D';
        "receptionist" N "north" "Patient" [""] "-" "none" Read => 'P';
        "receptionist" S "north" "Patient" [""] "-" "none" Read => 'P';
        "receptionist" N "mind" "Patient" [""] "-" "none" Read => 'P';
        "receptionist" N "north" "RelatedPerson" [""] "-" "none" Read => 'D';
        "nurse" N "north" "Patient" ["PSY"] "-" "none" Read => 'G';
        "doctor" N "north" "Observation" [""] "-" "?" Read => 'D';
        "receptionist" N "north" "Patient" [""] "-" "?" Read => 'D';

        // Rule 7: confidential patients.
        "receptionist" N "north" "Patient" ["R"] "-" "none+R" Read => 'D';
        "receptionist" N "north" "Patient" ["R"] "-" "rel+R" Read => 'P';
        "doctor" N "north" "Patient" [""] "-" "none+R" Read => 'G';
        "doctor" N "north" "Patient" [""] "-" "glass+R" Read => 'P';
        "nurse" N "north" "Observation" [""] "-" "none+R" Read => 'G';
        "receptionist" N "north" "Patient" [""] "-" "none+V" Read => 'D';
        "doctor" N "north" "Observation" [""] "-" "none+V" Read => 'D';
        "doctor" N "north" "Observation" [""] "-" "glass+V" Read => 'D';
        "doctor" N "north" "Observation" [""] "-" "rel+V" Read => 'P';
        "doctor" S "north" "Observation" ["PSY"] "-" "rel+glass+V" Read => 'D';
        "mh-consultant" N "north" "Observation" [""] "-" "none+V" Read => 'G';
        "mh-consultant" N "north" "Observation" [""] "-" "glass+V" Read => 'P';

        // Rule 7: the patient's R/V covers every resource of the record.
        "student" N "north" "Observation" [""] "-" "rel+R" Read => 'D';
        "student" N "north" "Observation" [""] "-" "rel" Read => 'P';
        "receptionist" N "north" "Encounter" [""] "-" "rel+V" Read => 'D';
        "receptionist" N "north" "Encounter" [""] "-" "rel+R" Read => 'P';
        "doctor" S "north" "Observation" [""] "-" "rel+R" Read => 'G';
        "doctor" S "north" "Observation" [""] "-" "rel+V" Read => 'D';
        "privacy-officer" N "north" "AuditEvent" [""] "-" "none+R" Read => 'P';

        // Rule 8: sealed data.
        "doctor" N "north" "Observation" ["SEALED"] "-" "rel" Read => 'P';
        "doctor" S "north" "Observation" ["SEALED"] "-" "rel" Read => 'D';
        "doctor" S "north" "Observation" ["SEALED"] "-" "rel+glass" Read => 'D';
        "mh-consultant" S "north" "Observation" ["SEALED"] "-" "rel" Read => 'P';
        "mh-consultant" N "mind" "Observation" ["SEALED PSY"] "-" "rel+glass" Read => 'D';
        "doctor" N "-" "Observation" ["SEALED"] "-" "rel" Read => 'D';
        "doctor" N "north" "Observation" ["LOCKED"] "u1" "rel" Read => 'P';
        "doctor" N "north" "Observation" ["LOCKED"] "u2" "rel" Read => 'D';
        "mh-consultant" N "north" "Observation" ["LOCKED"] "u2" "rel" Read => 'D';
        "doctor" N "north" "Observation" ["LOCKED"] "-" "rel" Write => 'D';
        "doctor" N "-" "Observation" ["LOCKED"] "-" "rel" Create => 'P';
        "doctor" S "north" "Observation" ["LOCKED"] "u1" "rel" Read => 'P';

        // Rule 9: consent dissent.
        "doctor" S "north" "Observation" [""] "-" "rel+dissent" Read => 'D';
        "doctor" S "north" "Observation" [""] "-" "rel+glass+dissent" Read => 'D';
        "doctor" N "north" "Observation" [""] "-" "rel+dissent" Read => 'P';
        "doctor" S "-" "Observation" [""] "-" "rel+dissent" Read => 'P';
        "receptionist" S "north" "Patient" [""] "-" "none+dissent" Read => 'D';
        "receptionist" N "north" "Patient" [""] "-" "none+dissent" Read => 'P';
        "doctor" S "north" "Observation" [""] "-" "rel+dissent" Create => 'D';
    ];
    assert!(rows.len() >= 60);
    let mut failures = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let verdict = run(&domain, row);
        let got = match verdict.decision {
            Decision::Permit => 'P',
            Decision::BreakGlass => 'G',
            Decision::Deny => 'D',
        };
        if got != row.expected {
            failures.push(format!(
                "row {i}: {} at {} {:?} {}[{}] owner {} patient {} => expected {}, got {verdict}",
                row.role, row.org, row.action, row.resource_type, row.labels, row.owner, row.patient, row.expected
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

fn row(
    role: &'static str,
    org: &'static str,
    owner: &'static str,
    ty: &'static str,
    labels: &'static str,
    patient: &'static str,
    action: Action,
) -> Row {
    Row { role, org, owner, resource_type: ty, labels, author: "-", patient, action, expected: '?' }
}

#[test]
fn reasons() {
    let d = domain();
    let reason = |r: Row| run(&d, &r).reason;
    assert_eq!(reason(row("domain", N, "north", "Observation", "", "?", Action::Read)), Reason::System);
    assert_eq!(reason(row("system", N, "mind", "Observation", "", "none", Action::Read)), Reason::SystemNoGlass);
    assert_eq!(reason(row("system", N, "north", "Observation", "", "none+V", Action::Read)), Reason::ConfidentialPatientSystem);
    assert_eq!(reason(row("-", N, "north", "Observation", "", "rel", Action::Read)), Reason::NoRole);
    assert_eq!(
        reason(row("pharmacist", N, "north", "Observation", "SDV", "rel", Action::Read)),
        Reason::RoleLacks(Action::Read, DataClass::DomesticViolence)
    );
    assert_eq!(
        reason(row("doctor", M, "north", "Observation", "HIV", "rel", Action::Read)),
        Reason::Hidden(DataClass::Hiv)
    );
    assert_eq!(
        reason(row("doctor", S, "north", "Observation", "PSY", "rel", Action::Read)),
        Reason::SharedAfterBreakGlass(DataClass::Psychiatry)
    );
    assert_eq!(
        reason(row("doctor", S, "north", "Observation", "PSY", "rel+glass", Action::Read)),
        Reason::BreakGlassGrant
    );
    assert_eq!(reason(row("doctor", N, "north", "Observation", "", "none", Action::Read)), Reason::NoRelationship);
    assert_eq!(reason(row("receptionist", S, "north", "Patient", "", "none", Action::Read)), Reason::PatientLookup);
    assert_eq!(reason(row("receptionist", N, "-", "Patient", "", "none", Action::Create)), Reason::Registration);
    assert_eq!(
        reason(row("privacy-officer", N, "north", "AuditEvent", "", "none", Action::Read)),
        Reason::RelationshipNotNeeded
    );
    assert_eq!(reason(row("privacy-officer", N, "north", "AuditEvent", "", "rel", Action::Read)), Reason::Allowed);
    assert_eq!(reason(row("doctor", S, "north", "Observation", "", "rel", Action::Write)), Reason::OtherTrustWrite);
    assert_eq!(reason(row("doctor", S, "north", "Observation", "", "rel+dissent", Action::Read)), Reason::Dissent);
    assert_eq!(
        reason(row("doctor", N, "north", "Observation", "", "glass+V", Action::Read)),
        Reason::VeryRestrictedPatient
    );
    assert_eq!(reason(row("doctor", S, "north", "Observation", "SEALED", "rel", Action::Read)), Reason::Sealed);
    assert_eq!(reason(row("doctor", N, "north", "Observation", "LOCKED", "rel", Action::Read)), Reason::SealedLocked);
    assert_eq!(reason(row("doctor", N, "north", "Observation", "", "?", Action::Read)), Reason::NoPatientFacts);
    assert_eq!(reason(row("doctor", N, "mind", "Schedule", "", "-", Action::Read)), Reason::NoPatientToBreakGlassFor);
    // A role that may not break the glass is told why it may not see.
    assert_eq!(reason(row("student", N, "north", "Observation", "", "none", Action::Read)), Reason::NoRelationship);
}

#[test]
fn explain_is_one_line() {
    let d = domain();
    let role = d.role("pharmacist").unwrap();
    let subject = Subject::user(USER, N, &[], role);
    let security = [(ACT_CODE_SYSTEM, "SDV")];
    let resource = ResourceFacts {
        resource_type: "Observation",
        owner: Some("north"),
        patient: Some("p1"),
        security: &security,
        author: None,
    };
    let facts = PatientFacts { relationship: true, ..PatientFacts::default() };
    let line = explain(&d, &subject, Action::Read, &resource, Some(&facts));
    assert_eq!(line, "deny: role may not read domestic-violence data");
    assert!(!line.contains('\n'));
    assert_eq!(decide(&d, &subject, Action::Read, &resource, Some(&facts)), Decision::Deny);

    let bootstrap = Subject::domain("tessera");
    assert_eq!(explain(&d, &bootstrap, Action::Delete, &resource, None), "permit: domain bootstrap account");
    let grant = PatientFacts { break_glass: true, ..PatientFacts::default() };
    let doctor = Subject::user(USER, N, &[], d.role("doctor").unwrap());
    let plain = ResourceFacts { security: &[], ..resource };
    let verdict = evaluate(&d, &doctor, Action::Read, &plain, Some(&grant));
    assert!(verdict.decision.is_permit() && verdict.under_break_glass());
    assert_eq!(verdict.to_string(), "permit: allowed under an active break-glass grant");
}

#[test]
fn classes_by_type() {
    use DataClass::*;
    for (ty, class) in [
        ("Patient", Demographics),
        ("RelatedPerson", Demographics),
        ("Person", Demographics),
        ("Encounter", Administrative),
        ("Appointment", Administrative),
        ("AppointmentResponse", Administrative),
        ("EpisodeOfCare", Administrative),
        ("Schedule", Administrative),
        ("Slot", Administrative),
        ("Account", Administrative),
        ("Coverage", Administrative),
        ("Claim", Administrative),
        ("ExplanationOfBenefit", Administrative),
        ("Group", Administrative),
        ("AuditEvent", Audit),
        ("Organization", Configuration),
        ("Location", Configuration),
        ("Practitioner", Configuration),
        ("PractitionerRole", Configuration),
        ("HealthcareService", Configuration),
        ("Endpoint", Configuration),
        ("Medication", Configuration),
        ("ValueSet", Configuration),
        ("CodeSystem", Configuration),
        ("ConceptMap", Configuration),
        ("StructureDefinition", Configuration),
        ("SearchParameter", Configuration),
        ("OperationDefinition", Configuration),
        ("Questionnaire", Configuration),
        ("PlanDefinition", Configuration),
        ("ActivityDefinition", Configuration),
        ("Library", Configuration),
        ("MedicinalProduct", Configuration),
        ("SubstanceSpecification", Configuration),
        ("Condition", Clinical),
        ("Observation", Clinical),
        ("DiagnosticReport", Clinical),
        ("DocumentReference", Clinical),
        ("Composition", Clinical),
        ("MedicationRequest", Clinical),
        ("MedicationAdministration", Clinical),
        ("MedicationDispense", Clinical),
        ("MedicationStatement", Clinical),
        ("ServiceRequest", Clinical),
        ("Procedure", Clinical),
        ("AllergyIntolerance", Clinical),
        ("Immunization", Clinical),
        ("CarePlan", Clinical),
        ("CareTeam", Clinical),
        ("Consent", Clinical),
        ("Provenance", Clinical),
        ("ImagingStudy", Clinical),
        ("Flag", Clinical),
        ("Device", Clinical),
        ("Binary", Clinical),
        ("QuestionnaireResponse", Clinical),
        ("SomethingNew", Clinical),
    ] {
        let c = data_classes(ty, &[]);
        assert_eq!(c.base, class, "{ty}");
        assert!(c.sensitive.is_empty() && c.seal == Seal::None);
        assert_eq!(base_class(ty), class);
    }
}

#[test]
fn classes_from_labels() {
    use DataClass::*;
    let security = [
        (CONFIDENTIALITY_SYSTEM, "R"),
        (CONFIDENTIALITY_SYSTEM, "N"),
        (ACT_CODE_SYSTEM, "HIV"),
        (ACT_CODE_SYSTEM, "PSY"),
        (ACT_CODE_SYSTEM, "SDV"),
        (ACT_CODE_SYSTEM, "ETH"),
        (ACT_CODE_SYSTEM, "STD"),
        (ACT_CODE_SYSTEM, "SEX"),
        (ACT_CODE_SYSTEM, "TBOO"),
        ("http://example.org/other", "HIV"),
    ];
    let c = data_classes("Observation", &security);
    assert_eq!(c.base, Clinical);
    assert_eq!(
        c.sensitive.iter().collect::<Vec<_>>(),
        vec![Restricted, Hiv, Psychiatry, DomesticViolence, SubstanceAbuse, SexuallyTransmitted, Sexuality]
    );
    assert_eq!(c.iter().count(), 8);
    assert!(c.sensitive.iter().all(DataClass::is_sensitive));

    // Older spellings of the systems count too.
    let legacy = [("http://hl7.org/fhir/v3/Confidentiality", "V"), ("urn:oid:2.16.840.1.113883.5.4", "PSY")];
    let c = data_classes("Condition", &legacy);
    assert!(c.sensitive.contains(VeryRestricted) && c.sensitive.contains(Psychiatry) && c.sensitive.len() == 2);

    // Seals: the strictest wins, whatever the order.
    let sealed = [(TESSERA_SECURITY_SYSTEM, SEALED)];
    assert_eq!(data_classes("Observation", &sealed).seal, Seal::Sealed);
    let both = [(TESSERA_SECURITY_SYSTEM, SEALED_LOCKED), (TESSERA_SECURITY_SYSTEM, SEALED)];
    assert_eq!(data_classes("Observation", &both).seal, Seal::Locked);
    let wrong_system = [(ACT_CODE_SYSTEM, SEALED)];
    assert_eq!(data_classes("Observation", &wrong_system).seal, Seal::None);
}

#[test]
fn patient_confidentiality() {
    assert_eq!(Confidentiality::from_security(&[]), None);
    assert_eq!(Confidentiality::from_security(&[(CONFIDENTIALITY_SYSTEM, "N")]), None);
    assert_eq!(Confidentiality::from_security(&[(CONFIDENTIALITY_SYSTEM, "R")]), Some(Confidentiality::Restricted));
    assert_eq!(
        Confidentiality::from_security(&[(CONFIDENTIALITY_SYSTEM, "R"), (CONFIDENTIALITY_SYSTEM, "V")]),
        Some(Confidentiality::VeryRestricted)
    );
    assert_eq!(Confidentiality::from_security(&[(ACT_CODE_SYSTEM, "R")]), None);
}

#[test]
fn class_set() {
    let mut set = ClassSet::EMPTY;
    assert!(set.is_empty());
    set.insert(DataClass::Configuration);
    set.insert(DataClass::Demographics);
    set.insert(DataClass::Demographics);
    assert_eq!(set.len(), 2);
    assert_eq!(set.iter().collect::<Vec<_>>(), vec![DataClass::Demographics, DataClass::Configuration]);
    let all: ClassSet = DataClass::ALL.into_iter().collect();
    assert_eq!(all.len(), DataClass::ALL.len());
}

#[test]
fn default_role_catalogue() {
    let roles = default_roles();
    let ids: Vec<&str> = roles.iter().map(|r| r.id.as_str()).collect();
    for id in ["receptionist", "nurse", "doctor", "pharmacist", "researcher", "privacy-officer", "domain-admin"] {
        assert!(ids.contains(&id), "{id}");
    }
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ids.len());
    for role in &roles {
        assert!(nrbac_name(&role.nrbac_code).is_some(), "{}", role.nrbac_code);
        assert!(!role.sees_sealed);
    }
    let get = |id: &str| roles.iter().find(|r| r.id == id).unwrap();
    assert_eq!(get("doctor").nrbac_code, "R8000");
    assert_eq!(nrbac_name("R8000"), Some("Clinical Practitioner Access Role"));
    assert!(get("doctor").may_break_glass && get("doctor").needs_relationship);
    assert!(!get("privacy-officer").needs_relationship);
    // Researchers and administrators hold no patient data class; privacy officers may
    // name the patient (demographics, read only) but hold no administrative or clinical data.
    for id in ["researcher", "privacy-officer", "domain-admin"] {
        let role = get(id);
        for class in [DataClass::Demographics, DataClass::Administrative, DataClass::Clinical] {
            if id == "privacy-officer" && class == DataClass::Demographics {
                let p = role.permissions[&class];
                assert!(p.read && !p.write && !p.delete, "privacy officers only read demographics");
                continue;
            }
            assert!(role.permissions.get(&class).is_none_or(|p| !p.read && !p.write && !p.delete), "{id} {class:?}");
        }
    }
    // The catalogue round-trips through the domain file's serde form.
    let json = serde_json::to_string(&roles).unwrap();
    let back: Vec<Role> = serde_json::from_str(&json).unwrap();
    assert_eq!(back, roles);
}

#[test]
fn unknown_organisations_are_their_own_trust() {
    // A subject whose organisation is not in the domain is a trust of its own: it sees
    // other trusts' data only through `*` agreements and the default.
    let d = domain();
    let verdict = run(&d, &row("doctor", "elsewhere", "north", "Observation", "", "rel", Action::Read));
    assert_eq!(verdict.decision, Decision::Permit);
    let verdict = run(&d, &row("doctor", "elsewhere", "north", "Observation", "", "rel", Action::Write));
    assert_eq!(verdict.decision, Decision::Deny);
}

// ---------------------------------------------------------------------------------------
// The hot path does not allocate.

mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    pub struct Counting;

    thread_local! {
        pub static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            unsafe { System.alloc(layout) }
        }
        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            unsafe { System.dealloc(ptr, layout) }
        }
        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static GLOBAL: Counting = Counting;
}

#[test]
fn decide_does_not_allocate() {
    let d = domain();
    let subjects = [
        Subject::user(USER, S, &[], d.role("doctor").unwrap()),
        Subject::user(USER, N, &[], d.role("receptionist").unwrap()),
        Subject::user(USER, N, &[], d.role("mh-consultant").unwrap()),
    ];
    let security = [(ACT_CODE_SYSTEM, "PSY"), (CONFIDENTIALITY_SYSTEM, "R"), (TESSERA_SECURITY_SYSTEM, SEALED)];
    let resources = [
        ResourceFacts {
            resource_type: "Observation",
            owner: Some("north"),
            patient: Some("p1"),
            security: &security,
            author: None,
        },
        ResourceFacts { resource_type: "Patient", owner: Some("mind"), patient: None, security: &[], author: None },
        ResourceFacts { resource_type: "Schedule", owner: Some("south"), patient: None, security: &[], author: None },
    ];
    let facts = PatientFacts { relationship: false, break_glass: true, ..PatientFacts::default() };
    let before = counting::ALLOCATIONS.with(|c| c.get());
    let mut permits = 0;
    for subject in &subjects {
        for resource in &resources {
            for action in [Action::Read, Action::Create, Action::Write, Action::Delete] {
                for patient in [None, Some(&facts)] {
                    permits += decide(&d, subject, action, resource, patient).is_permit() as usize;
                }
            }
        }
    }
    let after = counting::ALLOCATIONS.with(|c| c.get());
    assert_eq!(after, before, "decide allocated");
    assert!(permits > 0);
    // The counter does see allocations.
    let boxed = std::hint::black_box(Box::new(permits));
    assert!(counting::ALLOCATIONS.with(|c| c.get()) > after && *boxed > 0);
}

/// Role permissions are coherent for every built-in role and data class: whatever a role
/// may create for a patient, it may also correct (update) once its trust holds it — with a
/// care relationship, and without one for the Patient resource (a doctor who registers a
/// patient may fix the patient's name) — and what it may update it may read. (A booking
/// made without a relationship gives one: the Appointment is a care link.)
#[test]
fn who_may_create_may_correct() {
    let d = domain();
    let types = [
        ("Patient", DataClass::Demographics),
        ("Appointment", DataClass::Administrative),
        ("Observation", DataClass::Clinical),
        ("Condition", DataClass::Clinical),
        ("MedicationRequest", DataClass::Clinical),
    ];
    let mut checked = 0;
    for role in &d.roles {
        for (ty, class) in types {
            for patient in ["rel", "none"] {
                if patient == "none" && ty == "Appointment" {
                    continue;
                }
                let (_, facts) = facts(patient);
                let subject = Subject { kind: SubjectKind::User { id: USER }, organisation: N, locations: &[], role: Some(role) };
                let new = ResourceFacts { resource_type: ty, owner: None, patient: Some("p1"), security: &[], author: None };
                let created = evaluate(&d, &subject, Action::Create, &new, facts.as_ref());
                let held = ResourceFacts { owner: Some(N), author: Some(USER), ..new };
                let updated = evaluate(&d, &subject, Action::Write, &held, facts.as_ref());
                let read = evaluate(&d, &subject, Action::Read, &held, facts.as_ref());
                let may_write = role.permissions.get(&class).is_some_and(|p| p.write);
                assert_eq!(created.decision == Decision::Permit, updated.decision == Decision::Permit, "{} {ty} patient {patient}: create {created:?}, update {updated:?}", role.id);
                if updated.decision == Decision::Permit {
                    assert!(may_write, "{} {ty}: update permitted without the write permission", role.id);
                    assert_eq!(read.decision, Decision::Permit, "{} {ty} patient {patient}: may update but not read ({read:?})", role.id);
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 8 * 9, "{checked}");
    // The case of the report: a doctor registers a patient, then corrects the record.
    let doctor = d.role("doctor").unwrap();
    let subject = Subject { kind: SubjectKind::User { id: USER }, organisation: N, locations: &[], role: Some(doctor) };
    let held = ResourceFacts { resource_type: "Patient", owner: Some(N), patient: Some("p1"), security: &[], author: Some(USER) };
    assert_eq!(evaluate(&d, &subject, Action::Write, &held, Some(&PatientFacts::default())).reason, Reason::Correction);
    // Not another trust's record, not a confidential patient's.
    let theirs = ResourceFacts { owner: Some(S), ..held };
    assert_eq!(evaluate(&d, &subject, Action::Write, &theirs, Some(&PatientFacts::default())).decision, Decision::Deny);
    let restricted = PatientFacts { confidentiality: Some(Confidentiality::Restricted), ..PatientFacts::default() };
    assert_ne!(evaluate(&d, &subject, Action::Write, &held, Some(&restricted)).decision, Decision::Permit);
}
