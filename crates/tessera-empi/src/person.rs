//! The demographics the index compares, read from a FHIR Patient.

use crate::nhs::{self, NhsNumber};
use serde_json::Value;

/// A date of birth (year, month, day); a partial date keeps what it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Birth {
    pub year: i32,
    pub month: Option<u8>,
    pub day: Option<u8>,
}

impl Birth {
    /// `YYYY`, `YYYY-MM` or `YYYY-MM-DD`.
    pub fn parse(value: &str) -> Option<Birth> {
        let mut parts = value.split('-');
        let year = parts.next()?.parse().ok()?;
        let month = parts.next().map(str::parse).transpose().ok()?;
        let day = parts.next().map(str::parse).transpose().ok()?;
        Some(Birth { year, month, day })
    }
}

/// A person as the matcher sees them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Person {
    /// A valid NHS number (an invalid one is kept out: it cannot identify anyone).
    pub nhs_number: Option<NhsNumber>,
    /// Family names, current and former (maiden names), as given.
    pub family: Vec<String>,
    /// Given names, first first.
    pub given: Vec<String>,
    pub birth: Option<Birth>,
    /// `male`, `female`, `other`, `unknown` (FHIR administrative gender).
    pub sex: Option<String>,
    /// Normalised postcodes ([`crate::text::postcode`]).
    pub postcodes: Vec<String>,
    /// First address lines, as given.
    pub address_lines: Vec<String>,
    /// Normalised phone numbers ([`crate::text::phone`]).
    pub phones: Vec<String>,
}

/// At most this many values of each kind are compared (a record with hundreds of names or
/// addresses costs no more to match than one with a few).
pub const MAX_VALUES: usize = 8;

impl Person {
    /// Reads the demographics of a FHIR Patient (at most [`MAX_VALUES`] of each kind).
    pub fn from_patient(patient: &Value) -> Person {
        let strings = |v: &Value| -> Vec<String> { v.as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect() };
        let mut p = Person::default();
        for id in patient["identifier"].as_array().into_iter().flatten() {
            if id["system"].as_str() == Some(nhs::SYSTEM) {
                if let Some(n) = id["value"].as_str().and_then(|v| NhsNumber::parse(v).ok()) {
                    p.nhs_number = Some(n);
                }
            }
        }
        for n in patient["name"].as_array().into_iter().flatten().take(MAX_VALUES) {
            if let Some(f) = n["family"].as_str() {
                if !p.family.iter().any(|x| x == f) {
                    p.family.push(f.to_string());
                }
            }
            for g in strings(&n["given"]).into_iter().take(MAX_VALUES) {
                if !p.given.contains(&g) {
                    p.given.push(g);
                }
            }
        }
        p.birth = patient["birthDate"].as_str().and_then(Birth::parse);
        p.sex = patient["gender"].as_str().map(str::to_string);
        for a in patient["address"].as_array().into_iter().flatten().take(MAX_VALUES) {
            if let Some(pc) = a["postalCode"].as_str().map(crate::text::postcode).filter(|p| !p.is_empty()) {
                p.postcodes.push(pc);
            }
            if let Some(line) = a["line"].as_array().and_then(|l| l.first()).and_then(Value::as_str) {
                p.address_lines.push(line.to_string());
            }
        }
        for t in patient["telecom"].as_array().into_iter().flatten().take(MAX_VALUES * 2) {
            if t["system"].as_str() == Some("phone") {
                if let Some(v) = t["value"].as_str().map(crate::text::phone).filter(|v| v.len() >= 6) {
                    p.phones.push(v);
                }
            }
        }
        p.family.truncate(MAX_VALUES);
        p.given.truncate(MAX_VALUES);
        p.postcodes.truncate(MAX_VALUES);
        p.address_lines.truncate(MAX_VALUES);
        p.phones.truncate(MAX_VALUES);
        p
    }
}
