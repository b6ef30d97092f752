//! Membership of codes in the value sets of the R4 terminology bindings.
//!
//! `definitions/bindings.json.gz` (generated with `r4.json.gz` by `tessera-gen-definitions`,
//! see `definitions/README.md`) holds the value sets that the recorded bindings name and
//! that can be expanded from the official R4 `valuesets.json`: every value set of a
//! *required* binding that is made of enumerated codes or whole FHIR/HL7 code systems, and
//! the small ones of extensible and preferred bindings. Value sets that need an external
//! terminology (SNOMED CT, LOINC, UCUM, BCP-47, ISO 4217, MIME types) or filters are not
//! shipped: [`check`] answers [`Membership::Unknown`] for them, and an unknown answer never
//! refuses a write.
//!
//! Codes compare exactly (the R4 code systems are case-sensitive). The file is decoded
//! once, on first use.

use crate::definitions::format::{BindingsFile, ValueSetPart};
use crate::definitions::FastMap;
use std::collections::HashSet;
use std::hash::BuildHasherDefault;
use std::io::Read;
use std::sync::LazyLock;

static SHIPPED: &[u8] = include_bytes!("../definitions/bindings.json.gz");

static VALUE_SETS: LazyLock<ValueSets> =
    LazyLock::new(|| ValueSets::load(SHIPPED).unwrap_or_else(|e| panic!("shipped FHIR value sets: {e}")));

type FastSet = HashSet<Box<str>, BuildHasherDefault<crate::definitions::FxHasher>>;

/// Is a code in a value set?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    /// The value set is not shipped (external terminology, filters): nothing can be said.
    Unknown,
}

/// Is `code` (of `system`, when given) in the value set `value_set_url` (`url` or
/// `url|version`)? Without a system, a code of any of the value set's systems matches.
pub fn check(value_set_url: &str, system: Option<&str>, code: &str) -> Membership {
    VALUE_SETS.check(value_set_url, system, code)
}

pub fn is_known(value_set_url: &str) -> bool {
    VALUE_SETS.sets.contains_key(strip_version(value_set_url))
}

fn strip_version(url: &str) -> &str {
    url.split_once('|').map_or(url, |(u, _)| u)
}

enum Codes {
    /// Every code of the shipped code system with this index.
    All(usize),
    Listed(FastSet),
}

struct ValueSets {
    systems: Vec<FastSet>,
    sets: FastMap<String, Vec<(String, Codes)>>,
}

impl ValueSets {
    fn load(gz: &[u8]) -> Result<ValueSets, String> {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gz).read_to_end(&mut json).map_err(|e| e.to_string())?;
        let file: BindingsFile = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
        let mut index = FastMap::default();
        let mut systems = Vec::with_capacity(file.code_systems.len());
        for (url, codes) in file.code_systems {
            index.insert(url, systems.len());
            systems.push(codes.into_iter().map(String::into_boxed_str).collect());
        }
        let mut sets = FastMap::default();
        for (url, parts) in file.value_sets {
            let mut out = Vec::with_capacity(parts.len());
            for ValueSetPart(system, codes) in parts {
                let codes = match codes {
                    Some(codes) => Codes::Listed(codes.into_iter().map(String::into_boxed_str).collect()),
                    None => Codes::All(*index.get(&system).ok_or_else(|| format!("{url}: code system {system} not shipped"))?),
                };
                out.push((system, codes));
            }
            sets.insert(url, out);
        }
        Ok(ValueSets { systems, sets })
    }

    fn check(&self, value_set_url: &str, system: Option<&str>, code: &str) -> Membership {
        let Some(parts) = self.sets.get(strip_version(value_set_url)) else {
            return Membership::Unknown;
        };
        let found = parts.iter().filter(|(s, _)| system.is_none_or(|system| system == s.as_str())).any(|(_, codes)| match codes {
            Codes::All(i) => self.systems[*i].contains(code),
            Codes::Listed(set) => set.contains(code),
        });
        if found {
            Membership::Member
        } else {
            Membership::NotMember
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_value_sets() {
        let gender = "http://hl7.org/fhir/ValueSet/administrative-gender";
        assert_eq!(check(gender, None, "female"), Membership::Member);
        assert_eq!(check(&format!("{gender}|4.0.1"), None, "unknown"), Membership::Member);
        assert_eq!(check(gender, None, "nonsense"), Membership::NotMember);
        assert_eq!(check(gender, None, "Female"), Membership::NotMember, "codes are case-sensitive");
        assert_eq!(check(gender, Some("http://hl7.org/fhir/administrative-gender"), "male"), Membership::Member);
        assert_eq!(check(gender, Some("http://example.org/other"), "male"), Membership::NotMember);
        let status = "http://hl7.org/fhir/ValueSet/observation-status|4.0.1";
        assert_eq!(check(status, None, "final"), Membership::Member);
        assert_eq!(check(status, None, "bogus"), Membership::NotMember);
        assert_eq!(check("http://hl7.org/fhir/ValueSet/encounter-status", None, "whatever"), Membership::NotMember);
        assert_eq!(check("http://hl7.org/fhir/ValueSet/encounter-status", None, "finished"), Membership::Member);
        // Value sets built from other value sets and HL7 terminology code systems.
        let clinical = "http://hl7.org/fhir/ValueSet/condition-clinical";
        assert_eq!(check(clinical, Some("http://terminology.hl7.org/CodeSystem/condition-clinical"), "active"), Membership::Member);
        assert!(is_known(clinical));
    }

    #[test]
    fn unknown_value_sets_are_unknown() {
        // UCUM, MIME types and SNOMED CT based value sets need a terminology server.
        assert_eq!(check("http://hl7.org/fhir/ValueSet/ucum-units", Some("http://unitsofmeasure.org"), "mg"), Membership::Unknown);
        assert_eq!(check("http://hl7.org/fhir/ValueSet/mimetypes", None, "text/plain"), Membership::Unknown);
        assert_eq!(check("http://hl7.org/fhir/ValueSet/clinical-findings", None, "404684003"), Membership::Unknown);
        assert_eq!(check("http://example.org/no-such-value-set", None, "x"), Membership::Unknown);
        assert!(!is_known("http://hl7.org/fhir/ValueSet/mimetypes|4.0.1"));
    }
}
