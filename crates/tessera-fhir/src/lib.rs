//! FHIR R4 (4.0.1) knowledge that every other crate relies on.
//!
//! * [`definitions`] — the compact, shipped form of the official StructureDefinitions,
//!   SearchParameters and the Patient CompartmentDefinition (see `definitions/README.md`).
//! * [`validation`] — validation of incoming resources against those definitions:
//!   structure, cardinality, formats, required bindings ([`bindings`]), reference target
//!   types and narrative XHTML ([`narrative`]).
//! * [`bindings`] — membership of codes in the shipped R4 value sets.
//! * [`compartment`] — which patient compartment(s) a resource belongs to.
//! * [`reference`] — walking and rewriting the references inside a resource.
//! * [`outcome`] — issues and `OperationOutcome` resources.
//!
//! This crate is pure: no I/O, no async, no storage.

pub mod bindings;
pub mod compartment;
pub mod definitions;
pub mod narrative;
pub mod outcome;
pub mod reference;
pub mod terminology;
pub mod validation;

pub use outcome::{Issue, IssueSeverity, IssueType};
