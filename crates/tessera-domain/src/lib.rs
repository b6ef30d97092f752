//! The shared domain: who the organisations are, where their sites and wards are, who the
//! users are and in which role they work, what each role may do, and how far each
//! organisation shares each class of its data with the others.
//!
//! [`model`] holds the types every other crate uses; the domain file (TOML, see [`mod@file`])
//! is parsed into a [`model::Domain`] by [`parse_domain_file`] and applied to an existing
//! domain with [`Domain::merge`] or [`Domain::apply_file`]. [`Domain::validate`] checks a
//! domain's consistency, [`Domain::bootstrap`] is what a fresh data directory starts with,
//! [`default_roles`] is the built-in role catalogue, and [`to_fhir_resources`] publishes the
//! domain as FHIR Organization, Location, Practitioner, PractitionerRole and Device
//! resources.

pub mod demo;
pub mod model;

mod check;
mod error;
pub mod fhir;
pub mod file;
mod manage;
pub mod roles;
mod secret;

pub use check::is_valid_fhir_id;
pub use error::{DomainError, Problem};
pub use fhir::to_fhir_resources;
pub use file::parse_domain_file;
pub use manage::{BOOTSTRAP_ADMIN, BOOTSTRAP_ORGANISATION, SYSTEM_ACCOUNT};
pub use model::*;
pub use roles::{default_roles, nrbac_display};
pub use secret::{hash_secret, is_argon2_phc, verify_secret, MIN_PASSWORD_LEN, MIN_SECRET_LEN};
