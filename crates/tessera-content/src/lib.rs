//! Content built once for the domain.
//!
//! [`MODEL_CONTENT`] is the model layer Tessera ships (docs/content.md lists it): a starter
//! order catalogue (laboratory panels by LOINC, plain-film radiology and the ECG by SNOMED CT,
//! as `ActivityDefinition`s), order sets for chest pain and suspected sepsis
//! (`PlanDefinition`), the nursing admission assessment and the NEWS2 observations template
//! (`Questionnaire`), the NEWS2 escalation rule (`Library`), the emergency department 4-hour
//! standard (`Measure`), and a few local value sets and a local code system. Every item is
//! tagged with the `model` layer and has a canonical `url` under
//! `https://tessera.health/content/`; the engine's `content` module lays the domain's,
//! trusts' and sites' localisations over it.
//!
//! [`DEMO_LOCALISATIONS`] are the demo domain's own localisations, per trust: Northgate's
//! pathology wording of the full blood count and Northgate General's chest X-ray
//! arrangements; Southbank's community version of the sepsis order set's usage.
//!
//! [`package`]: a layer's content as one signed file (Ed25519 by the domain's content key,
//! SHA-256 of the content): written, read, verified — one altered byte is refused. [`diff`]:
//! element-level differences between two packages or versions. [`ops`]: the operator's
//! commands over a database (`tessera content export|import|diff|impact|key`), through the
//! engine as the bootstrap account, so the engine's layering rules apply to imports.
//!
//! **Invariant:** every shipped item is valid FHIR R4 (tested), of a content type, with a
//! `url`; a package is loaded only if its signature and checksum verify, in one transaction.

pub use tessera_engine::content_diff as diff;
pub mod env;
pub mod onboard;
pub mod ops;
pub mod upgrade;
pub mod package;

/// The model content: a FHIR transaction Bundle (PUT, stable ids `model-…`).
pub const MODEL_CONTENT: &str = include_str!("../model/model-content.json");

/// The demo domain's localisations: (the trust that writes them, a transaction Bundle).
pub const DEMO_LOCALISATIONS: &[(&str, &str)] =
    &[("rx1", include_str!("../demo/demo-localisations-rx1.json")), ("rx2", include_str!("../demo/demo-localisations-rx2.json"))];

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn model_content_is_valid_layered_fhir() {
        let bundle: Value = serde_json::from_str(MODEL_CONTENT).unwrap();
        let entries = bundle["entry"].as_array().unwrap();
        assert!(entries.len() >= 20);
        let mut urls = std::collections::HashSet::new();
        for e in entries {
            let r = &e["resource"];
            let ty = r["resourceType"].as_str().unwrap();
            assert!(["ActivityDefinition", "PlanDefinition", "Questionnaire", "ValueSet", "CodeSystem", "Library", "Measure"].contains(&ty), "{ty}");
            assert!(r["url"].as_str().unwrap().starts_with("https://tessera.health/content/"));
            assert!(urls.insert(r["url"].as_str().unwrap().to_string()), "one item per url");
            assert_eq!(r["meta"]["tag"][0]["code"], "model");
            if let Err(errors) = tessera_fhir::validation::validate(r, &tessera_fhir::validation::Limits::default()) {
                panic!("{ty}/{}: {errors:?}", r["id"]);
            }
        }
        // Order sets refer to catalogue items that exist.
        for e in entries.iter().filter(|e| e["resource"]["resourceType"] == "PlanDefinition") {
            for a in e["resource"]["action"].as_array().unwrap() {
                if let Some(c) = a["definitionCanonical"].as_str() {
                    assert!(urls.contains(c), "{c} is in the catalogue");
                }
            }
        }
    }

    #[test]
    fn demo_localisations_localise_model_items() {
        let model: Value = serde_json::from_str(MODEL_CONTENT).unwrap();
        let urls: Vec<&str> = model["entry"].as_array().unwrap().iter().filter_map(|e| e["resource"]["url"].as_str()).collect();
        for (_, b) in DEMO_LOCALISATIONS {
            let b: Value = serde_json::from_str(b).unwrap();
            for e in b["entry"].as_array().unwrap() {
                assert!(urls.contains(&e["resource"]["url"].as_str().unwrap()));
            }
        }
    }
}
