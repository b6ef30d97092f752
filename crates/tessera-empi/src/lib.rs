//! `tessera-empi`: how the domain's patient index tells whether two Patient records are
//! the same person. Pure and synchronous: no store, no I/O.
//!
//! * [`nhs`] validates and normalises NHS numbers (modulus 11).
//! * [`text`] normalises names, postcodes and phone numbers, and codes names by sound
//!   (NYSIIS).
//! * [`person`] reads the demographics of a FHIR Patient.
//! * [`score`] compares two people field by field (Fellegi–Sunter weights, Jaro–Winkler on
//!   names, nicknames, names swapped between given and family, day and month transposed)
//!   and decides: link, review or distinct; [`score::blocking_keys`] chooses which records
//!   are compared at all.
//! * [`index`] keeps people by blocking key in memory and scores a newcomer's candidates.
//! * [`eval`] builds a labelled evaluation set (realistic corruptions of real records,
//!   twins, strangers) and measures precision, recall and false links.

pub mod eval;
pub mod index;
pub mod nhs;
pub mod person;
pub mod score;
pub mod text;

pub use index::Index;
pub use nhs::{NhsError, NhsNumber};
pub use person::{Birth, Person};
pub use score::{blocking_keys, BlockingKey, Config, Decision, Score};
