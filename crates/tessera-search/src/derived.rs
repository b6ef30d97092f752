//! Parameters whose values follow from other parameters of the same type, so the index
//! need not hold them twice.
//!
//! R4 defines many parameters as a union or a filter of others: `Observation.combo-code`
//! is `Observation.code | Observation.component.code` (the values of `code` and
//! `component-code`), `Observation.patient` is `Observation.subject.where(resolve() is
//! Patient)` (the values of `subject` that point at a Patient). [`derived`] recognises
//! both shapes from the shipped expressions, so the store keeps rows for the base
//! parameters only and answers the derived one from them. A test evaluates every derived
//! parameter on the official examples and the Synthea records and checks that its values
//! are exactly those the derivation gives.

use crate::index::{expression_for, union_branches};
use crate::params::{self, ParamKind};
use std::collections::HashMap;
use std::sync::OnceLock;
use tessera_fhir::definitions::{resource_types, search_parameters_for, SearchParameter};

/// How a parameter's values follow from others of the same resource type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Derived {
    /// The union of these parameters' values (`combo-code` = `code` ∪ `component-code`;
    /// for composites, with the same components).
    Union(Vec<&'static str>),
    /// The values of this reference parameter that point at a Patient
    /// (`patient` = `subject.where(resolve() is Patient)`).
    PatientOf(&'static str),
}

/// How `code` of `resource_type` is derived from other parameters, if it is.
pub fn derived(resource_type: &str, code: &str) -> Option<&'static Derived> {
    static TABLE: OnceLock<HashMap<&'static str, HashMap<&'static str, Derived>>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            let mut by_type: HashMap<&'static str, HashMap<&'static str, Derived>> = HashMap::new();
            for ((t, code), d) in build() {
                by_type.entry(t).or_default().insert(code, d);
            }
            by_type
        })
        .get(resource_type)?
        .get(code)
}

/// Every derived parameter, as `(type, code, derivation)`.
pub fn all_derived() -> impl Iterator<Item = (&'static str, &'static str, &'static Derived)> {
    resource_types().flat_map(|t| {
        search_parameters_for(t).filter_map(move |p| derived(t, &p.code).map(|d| (t, p.code.as_str(), d)))
    })
}

/// The shape a parameter is compared by: its kind, its expression for the type and, for
/// composites, its components' kinds and expressions.
#[derive(PartialEq, Eq, Hash, Clone, Debug)]
struct Shape {
    kind: ParamKind,
    expression: String,
    components: Vec<(ParamKind, String)>,
}

fn shape(p: &'static SearchParameter, _resource_type: &str, expression: String) -> Option<Shape> {
    let kind = params::effective_kind(p)?;
    let mut components = Vec::new();
    for c in &p.component {
        let k = params::by_url(&c.definition).and_then(params::effective_kind)?;
        components.push((k, c.expression.trim().to_string()));
    }
    Some(Shape { kind, expression, components })
}

/// A union branch without enclosing parentheses or spaces.
fn normal_branch(b: &str) -> String {
    let mut b = b.trim();
    while b.starts_with('(') && b.ends_with(')') && union_branches(&b[1..b.len() - 1]).is_some() {
        // Only when the parentheses enclose the whole branch: `(a).b` stays.
        let inner = &b[1..b.len() - 1];
        let mut depth = 0i32;
        let balanced = inner.chars().all(|c| {
            match c {
                '(' => depth += 1,
                ')' => depth -= 1,
                _ => {}
            }
            depth >= 0
        });
        if !balanced {
            break;
        }
        b = inner.trim();
    }
    b.chars().filter(|c| !c.is_whitespace()).collect()
}

fn build() -> HashMap<(&'static str, &'static str), Derived> {
    let mut out = HashMap::new();
    for t in resource_types() {
        // Each parameter's shape and its set of union branches.
        let mut shapes: Vec<(&'static str, Shape, Vec<String>)> = Vec::new();
        for p in search_parameters_for(t).filter(|p| !p.code.starts_with('_')) {
            let Some(expr) = p.expression.as_deref().and_then(|s| expression_for(s, t)) else { continue };
            let Some(branches) = union_branches(&expr) else { continue };
            let mut set: Vec<String> = branches.iter().map(|b| normal_branch(b)).collect();
            set.sort();
            set.dedup();
            let Some(s) = shape(p, t, set.join("|")) else { continue };
            shapes.push((p.code.as_str(), s, set));
        }
        for (code, s, set) in &shapes {
            // `X.where(resolve() is Patient)` where `X` is a reference parameter.
            if s.kind == ParamKind::Reference && set.len() == 1 {
                if let Some(base) = set[0].strip_suffix(".where(resolve()isPatient)") {
                    if let Some((q, ..)) = shapes.iter().find(|(q, qs, qset)| q != code && qs.kind == ParamKind::Reference && qset.len() == 1 && qset[0] == base) {
                        out.insert((t, *code), Derived::PatientOf(q));
                        continue;
                    }
                }
            }
            // Branches that are exactly covered by the branches of other parameters of the
            // same kind (and components): `combo-value-quantity` = `value-quantity` ∪
            // `component-value-quantity`.
            if set.len() < 2 {
                continue;
            }
            let mut parts: Vec<(&'static str, &Vec<String>)> = shapes
                .iter()
                .filter(|(q, qs, qset)| {
                    q != code && qs.kind == s.kind && qs.components == s.components && qset.len() < set.len() && qset.iter().all(|b| set.contains(b))
                })
                .map(|(q, _, qset)| (*q, qset))
                .collect();
            // Keep the largest covers: drop parts within another part.
            let all = parts.clone();
            parts.retain(|(q, qset)| !all.iter().any(|(r, rset)| r != q && rset.len() > qset.len() && qset.iter().all(|b| rset.contains(b))));
            let covered = set.iter().all(|b| parts.iter().any(|(_, qset)| qset.contains(b)));
            if covered && !parts.is_empty() {
                out.insert((t, *code), Derived::Union(parts.into_iter().map(|(q, _)| q).collect()));
            }
        }
    }
    // A derivation must rest on stored parameters only.
    let keys: Vec<_> = out.keys().copied().collect();
    for (t, code) in keys {
        let bases: Vec<&str> = match &out[&(t, code)] {
            Derived::Union(v) => v.clone(),
            Derived::PatientOf(q) => vec![q],
        };
        if bases.iter().any(|b| out.contains_key(&(t, *b))) {
            out.remove(&(t, code));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_observation_derivations() {
        assert_eq!(derived("Observation", "combo-code"), Some(&Derived::Union(vec!["code", "component-code"])));
        assert_eq!(derived("Observation", "patient"), Some(&Derived::PatientOf("subject")));
        assert_eq!(
            derived("Observation", "combo-code-value-quantity"),
            Some(&Derived::Union(vec!["code-value-quantity", "component-code-value-quantity"]))
        );
        assert_eq!(derived("Observation", "code"), None);
        assert_eq!(derived("Patient", "name"), None);
        assert!(all_derived().count() > 40);
    }
}
