//! FHIR R4 (4.0.1) knowledge that every other crate relies on.
//!
//! * [`definitions`] — the compact, shipped form of the official StructureDefinitions,
//!   SearchParameters and the Patient CompartmentDefinition (see `definitions/README.md`).
//! * [`validation`] — structural validation of incoming resources against those definitions.
//! * [`compartment`] — which patient compartment(s) a resource belongs to.
//! * [`reference`] — walking and rewriting the references inside a resource.
//! * [`outcome`] — issues and `OperationOutcome` resources.
//!
//! This crate is pure: no I/O, no async, no storage.

pub mod compartment;
pub mod definitions;
pub mod outcome;
pub mod reference;
pub mod validation;

pub use outcome::{Issue, IssueSeverity, IssueType};
