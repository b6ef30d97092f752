//! The search parameters known to the server: the R4 definitions shipped with
//! `tessera-fhir`, by resource type, with their types.

use std::collections::HashMap;
use std::sync::OnceLock;
use tessera_fhir::definitions::{search_parameters, SearchParameter};

/// The type of a search parameter (R4 `SearchParameter.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamKind {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    /// `near`, and parameters the server evaluates itself (`_text`, `_content`, `_query`).
    Special,
}

impl ParamKind {
    /// The kind named by an R4 `SearchParameter.type` code.
    pub fn from_code(code: &str) -> Option<ParamKind> {
        Some(match code {
            "number" => ParamKind::Number,
            "date" => ParamKind::Date,
            "string" => ParamKind::String,
            "token" => ParamKind::Token,
            "reference" => ParamKind::Reference,
            "composite" => ParamKind::Composite,
            "quantity" => ParamKind::Quantity,
            "uri" => ParamKind::Uri,
            "special" => ParamKind::Special,
            _ => return None,
        })
    }

    /// The R4 code: `token`, `date`, …
    pub fn as_str(self) -> &'static str {
        match self {
            ParamKind::Number => "number",
            ParamKind::Date => "date",
            ParamKind::String => "string",
            ParamKind::Token => "token",
            ParamKind::Reference => "reference",
            ParamKind::Composite => "composite",
            ParamKind::Quantity => "quantity",
            ParamKind::Uri => "uri",
            ParamKind::Special => "special",
        }
    }
}

impl std::fmt::Display for ParamKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The codes of the parameters every resource type has (base `Resource`/`DomainResource`).
pub const COMMON_PARAMS: [&str; 6] = [
    "_id",
    "_lastUpdated",
    "_tag",
    "_profile",
    "_security",
    "_source",
];

/// The kind of a parameter as this server indexes and searches it. `_profile`, a `uri`
/// parameter in R4, is treated as a reference to the profile's canonical URL, so that
/// `_profile:below` and versioned canonicals behave as for other canonical references.
pub(crate) fn effective_kind(p: &SearchParameter) -> Option<ParamKind> {
    if p.code == "_profile" {
        return Some(ParamKind::Reference);
    }
    ParamKind::from_code(&p.kind)
}

fn is_common(p: &SearchParameter) -> bool {
    p.base
        .iter()
        .any(|b| b == "Resource" || b == "DomainResource")
}

/// Lookup tables over the shipped definitions.
struct Tables {
    /// (resource type, code) → parameter.
    by_type: HashMap<&'static str, HashMap<&'static str, &'static SearchParameter>>,
    /// Common parameters by code.
    common: HashMap<&'static str, &'static SearchParameter>,
    /// Canonical URL → parameter (for composite components).
    by_url: HashMap<&'static str, &'static SearchParameter>,
}

fn tables() -> &'static Tables {
    static TABLES: OnceLock<Tables> = OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = Tables {
            by_type: HashMap::new(),
            common: HashMap::new(),
            by_url: HashMap::new(),
        };
        for p in search_parameters() {
            t.by_url.insert(p.url.as_str(), p);
            if is_common(p) {
                t.common.insert(p.code.as_str(), p);
            } else {
                for b in &p.base {
                    t.by_type
                        .entry(b.as_str())
                        .or_default()
                        .insert(p.code.as_str(), p);
                }
            }
        }
        t
    })
}

/// The parameter `code` of `resource_type` (or, with `None`, a common parameter).
pub(crate) fn lookup(resource_type: Option<&str>, code: &str) -> Option<&'static SearchParameter> {
    let t = tables();
    if let Some(p) = t.common.get(code) {
        return Some(p);
    }
    t.by_type.get(resource_type?)?.get(code).copied()
}

/// The parameter a composite component's `definition` names.
pub(crate) fn by_url(url: &str) -> Option<&'static SearchParameter> {
    tables().by_url.get(url).copied()
}
