//! Collection items: borrowed JSON nodes with their FHIR type, or computed System values.

use crate::datetime::{DateTimeValue, Temporal};
use crate::quantity::Quantity;
use rust_decimal::Decimal;
use serde_json::Value;
use std::str::FromStr;
use std::sync::Arc;
use tessera_fhir::definitions::{Primitive, TypeDef, TypeKind};

pub(crate) static NULL: Value = Value::Null;

/// The FHIR type of a [`Node`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum NodeType {
    /// A resource, complex data type or backbone element, with its element table.
    Complex(&'static TypeDef),
    /// A FHIR primitive (`string`, `dateTime`, `code`, …).
    Primitive(Primitive),
    /// JSON below an element the definitions do not describe: typed from its JSON shape.
    Untyped,
    /// The target of a reference that `resolve()` could not fetch: only its type is known.
    Unresolved(&'static TypeDef),
}

/// A borrowed node of the evaluated JSON resource, with its FHIR type.
///
/// For a primitive element, `json()` is its value (`null` when the element only has an
/// extension) and `extension_json()` the `_name` sibling carrying `id`/`extension`.
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub(crate) json: &'a Value,
    pub(crate) ext: Option<&'a Value>,
    pub(crate) ty: NodeType,
}

impl<'a> Node<'a> {
    pub(crate) fn new(json: &'a Value, ext: Option<&'a Value>, ty: NodeType) -> Node<'a> {
        Node { json, ext, ty }
    }

    /// The JSON value of this node (`null` for a primitive that only has extensions).
    pub fn json(&self) -> &'a Value {
        self.json
    }

    /// The `_name` sibling of a primitive element (its `id` and `extension`), if any.
    pub fn extension_json(&self) -> Option<&'a Value> {
        self.ext
    }

    /// The FHIR type name: `Patient`, `HumanName`, `dateTime`, `BackboneElement`. For JSON
    /// the definitions do not describe, `string`, `decimal`, `integer`, `boolean` or `Element`.
    pub fn type_name(&self) -> &'static str {
        match self.ty {
            NodeType::Complex(td) | NodeType::Unresolved(td) => complex_type_name(td),
            NodeType::Primitive(p) => p.name(),
            NodeType::Untyped => match self.json {
                Value::String(_) => "string",
                Value::Bool(_) => "boolean",
                Value::Number(n) if is_integer_text(n.as_str()) => "integer",
                Value::Number(_) => "decimal",
                _ => "Element",
            },
        }
    }

    /// Is this node a resource (the root, a contained or a Bundle entry resource)?
    pub fn is_resource(&self) -> bool {
        matches!(self.ty, NodeType::Complex(td) if td.kind == TypeKind::Resource)
    }

    /// Is this the placeholder for a reference target that could not be fetched?
    pub fn is_unresolved_reference(&self) -> bool {
        matches!(self.ty, NodeType::Unresolved(_))
    }

    /// Same node (pointer identity of the JSON and same type)?
    pub(crate) fn same(&self, other: &Node<'_>) -> bool {
        std::ptr::eq(self.json, other.json)
            && self.ext.map(|e| e as *const Value) == other.ext.map(|e| e as *const Value)
            && !std::ptr::eq(self.json, &NULL)
    }
}

pub(crate) fn complex_type_name(td: &'static TypeDef) -> &'static str {
    if td.kind == TypeKind::Backbone {
        if td.element("modifierExtension").is_some() {
            "BackboneElement"
        } else {
            "Element"
        }
    } else {
        td.name.as_str()
    }
}

pub(crate) fn is_integer_text(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .enumerate()
            .all(|(i, c)| c.is_ascii_digit() || (i == 0 && c == b'-'))
}

/// One item of a FHIRPath collection.
#[derive(Debug, Clone)]
pub enum Item<'a> {
    /// A node of the resource being evaluated.
    Node(Node<'a>),
    Boolean(bool),
    Integer(i64),
    Decimal(Decimal),
    String(Arc<str>),
    Date(DateTimeValue),
    DateTime(DateTimeValue),
    Time(DateTimeValue),
    Quantity(Quantity),
    /// The result of `type()`: a namespace (`System`/`FHIR`) and a type name.
    TypeInfo {
        namespace: &'static str,
        name: &'static str,
    },
}

/// A borrowed view of an item as a primitive value, for comparisons and functions.
#[derive(Debug, Clone)]
pub(crate) enum Prim<'x> {
    Bool(bool),
    Int(i64),
    Dec(Decimal),
    Str(&'x str),
    Date(DateTimeValue),
    DateTime(DateTimeValue),
    Time(DateTimeValue),
    Qty(Quantity),
    /// A complex node, or a primitive without value, or a type info.
    Other,
}

impl<'a> Item<'a> {
    pub(crate) fn string(s: &str) -> Item<'a> {
        Item::String(Arc::from(s))
    }

    /// The item as a primitive value (FHIR primitives converted to System values).
    pub(crate) fn prim(&self) -> Prim<'_> {
        match self {
            Item::Boolean(b) => Prim::Bool(*b),
            Item::Integer(i) => Prim::Int(*i),
            Item::Decimal(d) => Prim::Dec(*d),
            Item::String(s) => Prim::Str(s),
            Item::Date(d) => Prim::Date(*d),
            Item::DateTime(d) => Prim::DateTime(*d),
            Item::Time(d) => Prim::Time(*d),
            Item::Quantity(q) => Prim::Qty(q.clone()),
            Item::TypeInfo { .. } => Prim::Other,
            Item::Node(n) => node_prim(n),
        }
    }

    /// The string value of a string-like item (System String or FHIR string/code/uri/…).
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Item::String(s) => Some(s),
            Item::Node(n) => match (n.ty, n.json) {
                (NodeType::Primitive(p), Value::String(s)) if is_stringish(p) => Some(s),
                (NodeType::Untyped, Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Display form used by `toString()`, `join()` and tests.
    pub fn to_display_string(&self) -> Option<String> {
        Some(match self.prim() {
            Prim::Bool(b) => b.to_string(),
            Prim::Int(i) => i.to_string(),
            Prim::Dec(d) => d.to_string(),
            Prim::Str(s) => s.to_string(),
            Prim::Date(d) => d.format(Temporal::Date),
            Prim::DateTime(d) => d.format(Temporal::DateTime),
            Prim::Time(d) => d.format(Temporal::Time),
            Prim::Qty(q) => q.format(),
            Prim::Other => match self {
                Item::TypeInfo { namespace, name } => format!("{namespace}.{name}"),
                _ => return None,
            },
        })
    }
}

pub(crate) fn is_stringish(p: Primitive) -> bool {
    !matches!(
        p,
        Primitive::Boolean
            | Primitive::Integer
            | Primitive::PositiveInt
            | Primitive::UnsignedInt
            | Primitive::Decimal
            | Primitive::Date
            | Primitive::DateTime
            | Primitive::Instant
            | Primitive::Time
    )
}

pub(crate) fn parse_decimal(s: &str) -> Option<Decimal> {
    if s.contains(['e', 'E']) {
        Decimal::from_scientific(s).ok()
    } else {
        Decimal::from_str_exact(s).ok()
    }
}

fn json_number(n: &serde_json::Number) -> Prim<'static> {
    let s = n.as_str();
    if is_integer_text(s) {
        if let Ok(i) = s.parse::<i64>() {
            return Prim::Int(i);
        }
    }
    parse_decimal(s).map(Prim::Dec).unwrap_or(Prim::Other)
}

fn node_prim<'x>(n: &Node<'x>) -> Prim<'x> {
    match n.ty {
        NodeType::Primitive(p) => match (p, n.json) {
            (Primitive::Boolean, Value::Bool(b)) => Prim::Bool(*b),
            (
                Primitive::Integer | Primitive::PositiveInt | Primitive::UnsignedInt,
                Value::Number(num),
            ) => match json_number(num) {
                Prim::Dec(d) => Prim::Dec(d),
                other => other,
            },
            (Primitive::Decimal, Value::Number(num)) => match json_number(num) {
                Prim::Int(i) => parse_decimal(num.as_str())
                    .map(Prim::Dec)
                    .unwrap_or(Prim::Dec(Decimal::from(i))),
                other => other,
            },
            (Primitive::Date | Primitive::DateTime | Primitive::Instant, Value::String(s)) => {
                match DateTimeValue::parse_date_time(s) {
                    Some((v, Temporal::Date)) if p == Primitive::Date => Prim::Date(v),
                    Some((v, _)) => Prim::DateTime(v),
                    None => Prim::Other,
                }
            }
            (Primitive::Time, Value::String(s)) => DateTimeValue::parse_time(s)
                .map(Prim::Time)
                .unwrap_or(Prim::Other),
            (_, Value::String(s)) => Prim::Str(s),
            (_, Value::Bool(b)) => Prim::Bool(*b),
            (_, Value::Number(num)) => json_number(num),
            _ => Prim::Other,
        },
        NodeType::Untyped => match n.json {
            Value::String(s) => Prim::Str(s),
            Value::Bool(b) => Prim::Bool(*b),
            Value::Number(num) => json_number(num),
            _ => Prim::Other,
        },
        NodeType::Complex(td) => {
            if is_quantity_type(td) {
                quantity_of(n.json).map(Prim::Qty).unwrap_or(Prim::Other)
            } else {
                Prim::Other
            }
        }
        NodeType::Unresolved(_) => Prim::Other,
    }
}

pub(crate) fn is_quantity_type(td: &TypeDef) -> bool {
    matches!(
        td.name.as_str(),
        "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "MoneyQuantity" | "SimpleQuantity"
    )
}

/// A FHIR Quantity object as a System Quantity (UCUM `code` preferred over `unit`).
pub(crate) fn quantity_of(json: &Value) -> Option<Quantity> {
    let obj = json.as_object()?;
    let value = match obj.get("value")? {
        Value::Number(n) => parse_decimal(n.as_str())?,
        _ => return None,
    };
    let ucum = matches!(obj.get("system"), None | Some(Value::String(_)))
        && obj
            .get("system")
            .and_then(Value::as_str)
            .is_none_or(|s| s == "http://unitsofmeasure.org");
    let unit = match (
        obj.get("code").and_then(Value::as_str),
        obj.get("unit").and_then(Value::as_str),
    ) {
        (Some(code), _) if ucum => code,
        (_, Some(unit)) => unit,
        (Some(code), None) => code,
        (None, None) => "1",
    };
    Some(Quantity::new(value, unit))
}

impl<'a> From<bool> for Item<'a> {
    fn from(b: bool) -> Item<'a> {
        Item::Boolean(b)
    }
}

pub(crate) fn decimal_from_str(s: &str) -> Option<Decimal> {
    let t = s.trim();
    if t.is_empty() || t.starts_with('+') && t.len() == 1 {
        return None;
    }
    let body = t.strip_prefix(['+', '-']).unwrap_or(t);
    let mut seen_dot = false;
    let mut digits = 0;
    for c in body.chars() {
        match c {
            '0'..='9' => digits += 1,
            '.' if !seen_dot => seen_dot = true,
            _ => return None,
        }
    }
    if digits == 0 || body.ends_with('.') || body.starts_with('.') {
        return None;
    }
    Decimal::from_str(t).ok()
}
