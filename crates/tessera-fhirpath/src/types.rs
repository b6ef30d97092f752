//! Type specifiers (`is`, `as`, `ofType`) and type tests against the R4 definitions.

use crate::item::{Item, Node, NodeType};
use tessera_fhir::definitions::{definitions, Primitive, TypeDef, TypeKind};

/// A System (FHIRPath) type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SysType {
    Any,
    Boolean,
    Integer,
    Decimal,
    String,
    Date,
    DateTime,
    Time,
    Quantity,
}

impl SysType {
    fn from_name(n: &str) -> Option<SysType> {
        Some(match n {
            "Any" => SysType::Any,
            "Boolean" => SysType::Boolean,
            "Integer" => SysType::Integer,
            "Decimal" => SysType::Decimal,
            "String" => SysType::String,
            "Date" => SysType::Date,
            "DateTime" => SysType::DateTime,
            "Time" => SysType::Time,
            "Quantity" => SysType::Quantity,
            _ => return None,
        })
    }
}

/// A FHIR type.
#[derive(Debug, Clone, Copy)]
pub(crate) enum FhirType {
    Primitive(Primitive),
    Complex(&'static TypeDef),
    Resource,
    DomainResource,
    Element,
    BackboneElement,
}

impl FhirType {
    pub(crate) fn from_name(n: &str) -> Option<FhirType> {
        if let Some(p) = Primitive::from_name(n) {
            return Some(FhirType::Primitive(p));
        }
        Some(match n {
            "Resource" => FhirType::Resource,
            "DomainResource" => FhirType::DomainResource,
            "Element" => FhirType::Element,
            "BackboneElement" => FhirType::BackboneElement,
            _ => match definitions().type_def(n) {
                Some(td) if td.kind != TypeKind::Backbone => FhirType::Complex(td),
                _ => return None,
            },
        })
    }
}

/// A resolved type specifier.
#[derive(Debug, Clone)]
pub(crate) enum TypeSpec {
    System(SysType),
    Fhir(FhirType),
    /// An unqualified name found in both namespaces (`Quantity`).
    Either(SysType, FhirType),
    /// A `System.X` name that is not a System type: nothing has it.
    Never,
    /// Not a known type: an error when evaluated.
    Unknown(Box<str>),
}

impl TypeSpec {
    /// Resolves `[name]` or `[namespace, name]`.
    pub(crate) fn resolve(parts: &[String]) -> TypeSpec {
        let unknown = || TypeSpec::Unknown(parts.join(".").into_boxed_str());
        match parts {
            [ns, n] if ns == "System" => SysType::from_name(n)
                .map(TypeSpec::System)
                .unwrap_or(TypeSpec::Never),
            [ns, n] if ns == "FHIR" => FhirType::from_name(n)
                .map(TypeSpec::Fhir)
                .unwrap_or_else(unknown),
            [n] => match (FhirType::from_name(n), SysType::from_name(n)) {
                (Some(f), Some(s)) => TypeSpec::Either(s, f),
                (Some(f), None) => TypeSpec::Fhir(f),
                (None, Some(s)) => TypeSpec::System(s),
                (None, None) => unknown(),
            },
            _ => unknown(),
        }
    }
}

/// Direct supertype of a primitive, per the R4 type hierarchy.
fn primitive_parent(p: Primitive) -> Option<Primitive> {
    Some(match p {
        Primitive::Code | Primitive::Id | Primitive::Markdown => Primitive::String,
        Primitive::Canonical | Primitive::Url | Primitive::Oid | Primitive::Uuid => Primitive::Uri,
        Primitive::PositiveInt | Primitive::UnsignedInt => Primitive::Integer,
        _ => return None,
    })
}

fn complex_parent(name: &str) -> Option<&'static str> {
    match name {
        "Age" | "Distance" | "Duration" | "Count" | "MoneyQuantity" | "SimpleQuantity" => {
            Some("Quantity")
        }
        _ => None,
    }
}

fn is_domain_resource(td: &TypeDef) -> bool {
    td.kind == TypeKind::Resource && !matches!(td.name.as_str(), "Bundle" | "Binary" | "Parameters")
}

/// The FHIR type of a node, derived from JSON when the definitions do not say.
fn node_fhir(node: &Node<'_>) -> Option<Result<&'static TypeDef, Primitive>> {
    match node.ty {
        NodeType::Complex(td) | NodeType::Unresolved(td) => Some(Ok(td)),
        NodeType::Primitive(p) => Some(Err(p)),
        NodeType::Untyped => Primitive::from_name(node.type_name()).map(Err),
    }
}

/// Does `node` have FHIR type `t`? With `subtypes`, derived types match their bases.
fn node_is(node: &Node<'_>, t: FhirType, subtypes: bool) -> bool {
    let Some(actual) = node_fhir(node) else {
        return matches!(t, FhirType::Element) && node.json.is_object();
    };
    match (actual, t) {
        (Err(p), FhirType::Primitive(q)) => {
            let mut cur = Some(p);
            while let Some(c) = cur {
                if c == q {
                    return true;
                }
                if !subtypes {
                    return false;
                }
                cur = primitive_parent(c);
            }
            false
        }
        (Err(_), FhirType::Element) => subtypes,
        (Ok(td), FhirType::Complex(want)) => {
            std::ptr::eq(td, want)
                || td.name == want.name
                || (subtypes && complex_parent(&td.name) == Some(want.name.as_str()))
        }
        (Ok(td), FhirType::Resource) => td.kind == TypeKind::Resource,
        (Ok(td), FhirType::DomainResource) => is_domain_resource(td),
        (Ok(td), FhirType::Element) => {
            td.kind != TypeKind::Resource && (subtypes || td.name == "Element")
        }
        (Ok(td), FhirType::BackboneElement) => {
            td.kind == TypeKind::Backbone && td.element("modifierExtension").is_some()
        }
        _ => false,
    }
}

fn system_is(item: &Item<'_>, t: SysType) -> bool {
    match (item, t) {
        (Item::Node(_) | Item::TypeInfo { .. }, _) => false,
        (_, SysType::Any) => true,
        (Item::Boolean(_), SysType::Boolean)
        | (Item::Integer(_), SysType::Integer)
        | (Item::Decimal(_), SysType::Decimal)
        | (Item::String(_), SysType::String)
        | (Item::Date(_), SysType::Date)
        | (Item::DateTime(_), SysType::DateTime)
        | (Item::Time(_), SysType::Time)
        | (Item::Quantity(_), SysType::Quantity) => true,
        _ => false,
    }
}

/// `item is spec`. `Err` carries the unknown type name.
pub(crate) fn item_is(item: &Item<'_>, spec: &TypeSpec, subtypes: bool) -> Result<bool, String> {
    Ok(match spec {
        TypeSpec::Unknown(n) => return Err(n.to_string()),
        TypeSpec::Never => false,
        TypeSpec::System(s) => system_is(item, *s),
        TypeSpec::Fhir(f) => matches!(item, Item::Node(n) if node_is(n, *f, subtypes)),
        TypeSpec::Either(s, f) => match item {
            Item::Node(n) => node_is(n, *f, subtypes),
            other => system_is(other, *s),
        },
    })
}

/// `as`/`ofType` matching: derived complex types and resources match their bases;
/// primitives must match exactly (`code` is not returned by `as(string)`).
///
/// A FHIR primitive also matches the System type its value has (`valueDateTime` is
/// returned by `ofType(DateTime)`): R4's own search parameters are written that way
/// (`Observation-code-value-date` selects `value.ofType(DateTime)`).
pub(crate) fn item_as(item: &Item<'_>, spec: &TypeSpec) -> Result<bool, String> {
    let exact_primitive =
        matches!(item, Item::Node(n) if matches!(n.ty, NodeType::Primitive(_) | NodeType::Untyped));
    if let (TypeSpec::System(want), Item::Node(n)) = (spec, item) {
        if let Some(Err(p)) = node_fhir(n) {
            return Ok(primitive_system_type(p.name()) == Some(*want));
        }
    }
    item_is(item, spec, !exact_primitive)
}

/// The System type of a FHIR primitive's value.
fn primitive_system_type(name: &str) -> Option<SysType> {
    Some(match name {
        "boolean" => SysType::Boolean,
        "integer" | "unsignedInt" | "positiveInt" => SysType::Integer,
        "decimal" => SysType::Decimal,
        "date" => SysType::Date,
        "dateTime" | "instant" => SysType::DateTime,
        "time" => SysType::Time,
        "string" | "code" | "id" | "uri" | "url" | "canonical" | "oid" | "uuid" | "markdown" | "base64Binary" | "xhtml" => SysType::String,
        _ => return None,
    })
}

/// `type()` of an item: namespace and name.
pub(crate) fn type_info(item: &Item<'_>) -> (&'static str, &'static str) {
    match item {
        Item::Node(n) => ("FHIR", n.type_name()),
        Item::Boolean(_) => ("System", "Boolean"),
        Item::Integer(_) => ("System", "Integer"),
        Item::Decimal(_) => ("System", "Decimal"),
        Item::String(_) => ("System", "String"),
        Item::Date(_) => ("System", "Date"),
        Item::DateTime(_) => ("System", "DateTime"),
        Item::Time(_) => ("System", "Time"),
        Item::Quantity(_) => ("System", "Quantity"),
        Item::TypeInfo { .. } => ("System", "Object"),
    }
}
