//! The on-disk format of `definitions/r4.json.gz`, shared by the generator
//! (`tessera-gen-definitions`) and the runtime loader.
//!
//! The file is deliberately small: only what validation, search and compartment
//! membership need, with elements stored as short JSON arrays.

use serde::{Deserialize, Serialize};

/// The whole shipped file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefinitionsFile {
    /// Always `4.0.1`.
    pub fhir_version: String,
    /// Primitive data types and the regex of their value (from the
    /// `http://hl7.org/fhir/StructureDefinition/regex` extension), if any.
    pub primitives: Vec<PrimitiveRow>,
    /// Resources, complex data types and their nested (BackboneElement) element tables.
    pub types: Vec<TypeRow>,
    /// The R4 search parameters.
    pub search_parameters: Vec<SearchParameter>,
    /// The Patient CompartmentDefinition, resolved into element paths.
    pub patient_compartment: Vec<CompartmentRow>,
    /// Terminology bindings of coded elements (`required`, `extensible`, `preferred`;
    /// `example` bindings are not recorded).
    #[serde(default)]
    pub bindings: Vec<BindingRow>,
    /// Allowed target types of Reference elements (from `targetProfile`); elements
    /// whose Reference may point at any resource are not listed.
    #[serde(default)]
    pub reference_targets: Vec<TargetRow>,
    /// The FHIRPath invariants (`ElementDefinition.constraint`), inherited ones included.
    #[serde(default)]
    pub constraints: Vec<ConstraintRow>,
}

/// `[table, element, strength, valueSet]`, e.g.
/// `["Observation", "status", "required", "http://hl7.org/fhir/ValueSet/observation-status|4.0.1"]`.
/// `element` is the name in the table (`value[x]` for choice elements).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingRow(pub String, pub String, pub String, pub String);

/// `[table, element, [resource types]]`, e.g. `["Observation", "subject", ["Patient", "Group", "Device", "Location"]]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetRow(pub String, pub String, pub Vec<String>);

/// One invariant: `[table, element, key, severity, human, expression]`. `element` is empty
/// for a constraint on the table itself (on a type, or on a backbone element such as
/// `Patient.contact`), else the name of the element it constrains in that table.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConstraintRow(pub String, pub String, pub String, pub String, pub String, pub String);

/// The shipped value sets (`definitions/bindings.json.gz`), expanded by the generator.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BindingsFile {
    pub fhir_version: String,
    /// Code system URL → every code it defines (nested concepts flattened).
    pub code_systems: std::collections::BTreeMap<String, Vec<String>>,
    /// Value set URL (without version) → its content, as `[system, codes]` pairs; `codes`
    /// is `null` for "every code of the system" (then found in `code_systems`).
    pub value_sets: std::collections::BTreeMap<String, Vec<ValueSetPart>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ValueSetPart(pub String, pub Option<Vec<String>>);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrimitiveRow {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// What a [`TypeRow`] describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TypeKind {
    /// A resource type (`Patient`).
    Resource,
    /// A complex data type (`HumanName`, also the abstract `Element`).
    Complex,
    /// A nested element table, named by its path (`Patient.contact`, `Timing.repeat`).
    Backbone,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TypeRow {
    pub name: String,
    pub kind: TypeKind,
    pub elements: Vec<ElementRow>,
}

/// `[name, types, min, max, summary]`, e.g. `["value[x]", ["Quantity", "string"], 0, "1", true]`.
///
/// * `name` ends in `[x]` for choice elements.
/// * `types` are primitive or complex type names, `Resource` for an embedded resource,
///   or the name of a nested element table (it contains a dot: `Patient.contact`,
///   also the target of a `contentReference` such as `Questionnaire.item`).
/// * `max` is `"1"` or `"*"`.
/// * `summary` is `ElementDefinition.isSummary` (the `_summary=true` view).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ElementRow(pub String, pub Vec<String>, pub u32, pub String, pub bool);

/// One R4 `SearchParameter`, reduced to what a server needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchParameter {
    pub id: String,
    pub url: String,
    pub name: String,
    pub code: String,
    /// `number`, `date`, `string`, `token`, `reference`, `composite`, `quantity`, `uri`, `special`.
    #[serde(rename = "type")]
    pub kind: String,
    pub base: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expression: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modifier: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub comparator: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub component: Vec<SearchComponent>,
}

/// A component of a composite search parameter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SearchComponent {
    /// Canonical URL of the component's SearchParameter.
    pub definition: String,
    pub expression: String,
}

/// The parameters that put a resource type in the patient compartment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompartmentRow {
    pub resource: String,
    /// In CompartmentDefinition order.
    pub params: Vec<CompartmentParamRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompartmentParamRow {
    pub code: String,
    /// Dotted element paths below the resource, e.g. `participant.actor`.
    pub paths: Vec<String>,
}
