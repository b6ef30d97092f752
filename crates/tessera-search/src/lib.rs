//! FHIR R4 search, the parts that need no storage: what a resource contributes to the
//! search index ([`index`]) and what a search request asks ([`query`]).
//!
//! The store keeps the [`IndexEntry`]s (and [`CompositeEntry`]s) of each resource's
//! current version, replaced on every write; the engine turns a parsed
//! [`query::SearchRequest`] into a store query and sends every result through the
//! enforcement point.
//!
//! # Indexing
//!
//! [`index_resource`] evaluates the FHIRPath expression of every R4 search parameter of
//! the resource's type (and the common `_id`, `_lastUpdated`, `_tag`, `_profile`,
//! `_security`, `_source`) and converts what it finds by parameter type: tokens
//! (`system`/`code`, with a normalised text for `:text`), strings (normalised and exact),
//! dates (an inclusive microsecond range by precision), numbers and quantities (with the
//! range their precision implies), references (type and id, or URL) and URIs.
//! [`composite_entries`] gives the composite parameters (`code-value-quantity`, …), whose
//! parts must match together. The [`index`] module lists every conversion and what is not
//! indexed. Expressions are compiled once per resource type; a typical Observation
//! indexes in about 10 µs (release build).
//!
//! ```
//! use tessera_search::{index_resource, IndexValue};
//! let obs = serde_json::json!({
//!     "resourceType": "Observation", "id": "bp", "status": "final",
//!     "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6", "display": "Systolic BP"}]},
//!     "subject": {"reference": "Patient/123"},
//!     "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}
//! });
//! let entries = index_resource(&obs);
//! assert!(entries.iter().any(|e| e.param == "code"
//!     && e.value == IndexValue::Token { system: Some("http://loinc.org".into()), code: "8480-6".into(), text: Some("systolic bp".into()) }));
//! assert!(entries.iter().any(|e| e.param == "subject"
//!     && e.value == IndexValue::Reference { target_type: Some("Patient".into()), target_id: Some("123".into()), url: None }));
//! ```
//!
//! # Queries
//!
//! [`query::parse`] reads the `name=value` pairs of a search into criteria (ANDed, each
//! with ORed values), modifiers, chains and `_has`, and the result parameters (`_sort`,
//! `_count`, `_include`, …), checking every name against the parameters of the searched
//! type. Values are parsed with the same rules as indexed values: a query string goes
//! through the same [`normalize_string`], a query date covers the same range as an
//! indexed date written the same way.
//!
//! ```
//! use tessera_search::query::{parse, Modifier, Value};
//! let params = vec![
//!     ("subject:Patient.name".to_string(), "chalmers".to_string()),
//!     ("code:not".to_string(), "http://loinc.org|8480-6".to_string()),
//!     ("_count".to_string(), "10".to_string()),
//! ];
//! let req = parse(Some("Observation"), &params, true).unwrap();
//! assert_eq!(req.count, Some(10));
//! let chain = req.criteria[0].chain.as_ref().unwrap();
//! assert_eq!((chain.target_types.as_slice(), chain.criterion.param.as_str()), (&["Patient".to_string()][..], "name"));
//! assert_eq!(req.criteria[1].modifier, Some(Modifier::Not));
//! assert_eq!(req.criteria[1].values, [Value::Token { system: Some(Some("http://loinc.org".into())), code: Some("8480-6".into()) }]);
//! ```

mod derived;
pub mod index;
mod params;
pub mod query;
mod values;

pub use derived::{all_derived, derived, Derived};
pub use index::{composite_entries, index_all, index_resource, CompositeEntry, IndexEntry, IndexValue};
pub use params::{ParamKind, COMMON_PARAMS};
pub use values::normalize_string;
