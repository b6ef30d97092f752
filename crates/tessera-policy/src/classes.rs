//! Rule 1: which classes of data a resource holds, from its type and its `meta.security`.

use std::fmt;
use tessera_domain::DataClass;

/// `meta.security` system of confidentiality codes (`R`, `V`, …).
pub const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";
/// `meta.security` system of sensitivity act codes (`HIV`, `PSY`, …).
pub const ACT_CODE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// `meta.security` system of Tessera's own labels ([`SEALED`], [`SEALED_LOCKED`]).
pub const TESSERA_SECURITY_SYSTEM: &str = "https://tessera.health/security";
/// Sealed by the owning organisation: visible to the owning trust and to roles that see sealed data.
pub const SEALED: &str = "SEALED";
/// Sealed by its author: visible to the author only.
pub const SEALED_LOCKED: &str = "SEALED-LOCKED";

/// Older spellings of the HL7 v3 systems, still found in imported data. Recognising more
/// labels only ever makes a decision stricter.
const CONFIDENTIALITY_ALIASES: [&str; 3] =
    [CONFIDENTIALITY_SYSTEM, "http://hl7.org/fhir/v3/Confidentiality", "urn:oid:2.16.840.1.113883.5.25"];
const ACT_CODE_ALIASES: [&str; 3] =
    [ACT_CODE_SYSTEM, "http://hl7.org/fhir/v3/ActCode", "urn:oid:2.16.840.1.113883.5.4"];

fn is_confidentiality(system: &str) -> bool {
    CONFIDENTIALITY_ALIASES.contains(&system)
}

fn is_act_code(system: &str) -> bool {
    ACT_CODE_ALIASES.contains(&system)
}

/// Patient-level confidentiality, from `Patient.meta.security` (rule 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Confidentiality {
    /// `R`: no relationship-free look-up; break-glass allowed.
    Restricted,
    /// `V`: a relationship is required; break-glass is not allowed (except for roles that see sealed data).
    VeryRestricted,
}

impl Confidentiality {
    /// The strictest confidentiality code among `security` labels (`V` over `R`); `None` for
    /// `U`, `L`, `M`, `N` or no code.
    pub fn from_security(security: &[(&str, &str)]) -> Option<Confidentiality> {
        let mut found = None;
        for &(system, code) in security {
            if is_confidentiality(system) {
                match code {
                    "V" => return Some(Confidentiality::VeryRestricted),
                    "R" => found = Some(Confidentiality::Restricted),
                    _ => {}
                }
            }
        }
        found
    }
}

/// A set of data classes, as a bit set (no allocation).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ClassSet(u16);

impl ClassSet {
    pub const EMPTY: ClassSet = ClassSet(0);

    const fn bit(class: DataClass) -> u16 {
        1 << (class as u16)
    }

    pub fn insert(&mut self, class: DataClass) {
        self.0 |= Self::bit(class);
    }

    pub fn contains(self, class: DataClass) -> bool {
        self.0 & Self::bit(class) != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The classes, in [`DataClass::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = DataClass> {
        DataClass::ALL.into_iter().filter(move |c| self.contains(*c))
    }
}

impl FromIterator<DataClass> for ClassSet {
    fn from_iter<I: IntoIterator<Item = DataClass>>(iter: I) -> Self {
        let mut set = ClassSet::EMPTY;
        for class in iter {
            set.insert(class);
        }
        set
    }
}

impl fmt::Debug for ClassSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// A resource's seal (rule 8), from the [`TESSERA_SECURITY_SYSTEM`] labels.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Seal {
    #[default]
    None,
    /// [`SEALED`]: the owning trust and roles with `sees_sealed`.
    Sealed,
    /// [`SEALED_LOCKED`]: the author only.
    Locked,
}

/// The classes of data one resource holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classes {
    /// From the resource type.
    pub base: DataClass,
    /// From `meta.security` (confidentiality and sensitivity labels); never contains `base`.
    pub sensitive: ClassSet,
    /// The strictest seal among the labels.
    pub seal: Seal,
}

impl Classes {
    /// `base` followed by the sensitive classes.
    pub fn iter(&self) -> impl Iterator<Item = DataClass> {
        std::iter::once(self.base).chain(self.sensitive.iter())
    }
}

/// Classifies a resource (rule 1): the base class from its type, the sensitive classes and
/// the seal from its `meta.security` labels, given as `(system, code)` pairs.
pub fn data_classes(resource_type: &str, security: &[(&str, &str)]) -> Classes {
    let base = base_class(resource_type);
    let mut sensitive = ClassSet::EMPTY;
    let mut seal = Seal::None;
    for &(system, code) in security {
        let class = if is_confidentiality(system) {
            match code {
                "R" => Some(DataClass::Restricted),
                "V" => Some(DataClass::VeryRestricted),
                _ => None,
            }
        } else if is_act_code(system) {
            sensitivity_class(code)
        } else {
            if system == TESSERA_SECURITY_SYSTEM {
                match code {
                    SEALED => seal = seal.max(Seal::Sealed),
                    SEALED_LOCKED => seal = Seal::Locked,
                    _ => {}
                }
            }
            None
        };
        if let Some(class) = class {
            sensitive.insert(class);
        }
    }
    Classes { base, sensitive, seal }
}

/// The sensitive class an HL7 v3 ActCode sensitivity label stands for.
pub fn sensitivity_class(code: &str) -> Option<DataClass> {
    Some(match code {
        "HIV" => DataClass::Hiv,
        "PSY" => DataClass::Psychiatry,
        "SDV" => DataClass::DomesticViolence,
        "ETH" => DataClass::SubstanceAbuse,
        "STD" => DataClass::SexuallyTransmitted,
        "SEX" => DataClass::Sexuality,
        _ => return None,
    })
}

/// The class of a resource type (rule 1). Unknown types are clinical: the class fewest roles
/// may read apart from the sensitive ones.
pub fn base_class(resource_type: &str) -> DataClass {
    match resource_type {
        "Patient" | "RelatedPerson" | "Person" => DataClass::Demographics,

        "Encounter"
        | "EpisodeOfCare"
        | "Appointment"
        | "AppointmentResponse"
        | "Schedule"
        | "Slot"
        | "Account"
        | "ChargeItem"
        | "Coverage"
        | "CoverageEligibilityRequest"
        | "CoverageEligibilityResponse"
        | "EnrollmentRequest"
        | "EnrollmentResponse"
        | "Claim"
        | "ClaimResponse"
        | "ExplanationOfBenefit"
        | "Invoice"
        | "PaymentNotice"
        | "PaymentReconciliation"
        | "Group" => DataClass::Administrative,

        "AuditEvent" => DataClass::Audit,

        "Organization"
        | "OrganizationAffiliation"
        | "Location"
        | "Practitioner"
        | "PractitionerRole"
        | "HealthcareService"
        | "Endpoint"
        | "InsurancePlan"
        | "Medication"
        | "MedicationKnowledge"
        | "DeviceDefinition"
        | "DeviceMetric"
        | "ValueSet"
        | "CodeSystem"
        | "ConceptMap"
        | "NamingSystem"
        | "TerminologyCapabilities"
        | "StructureDefinition"
        | "StructureMap"
        | "SearchParameter"
        | "OperationDefinition"
        | "CapabilityStatement"
        | "CompartmentDefinition"
        | "ImplementationGuide"
        | "GraphDefinition"
        | "MessageDefinition"
        | "EventDefinition"
        | "ExampleScenario"
        | "Questionnaire"
        | "PlanDefinition"
        | "ActivityDefinition"
        | "Library"
        | "Measure"
        | "ObservationDefinition"
        | "SpecimenDefinition"
        | "ChargeItemDefinition"
        | "ResearchDefinition"
        | "ResearchElementDefinition"
        | "ResearchStudy"
        | "Evidence"
        | "EvidenceVariable"
        | "EffectEvidenceSynthesis"
        | "RiskEvidenceSynthesis"
        | "CatalogEntry"
        | "TestScript"
        | "TestReport"
        | "Subscription" => DataClass::Configuration,
        // Product and substance definitions (MedicinalProduct*, Substance*).
        t if t.starts_with("Medicinal") || t.starts_with("Substance") => DataClass::Configuration,

        _ => DataClass::Clinical,
    }
}
