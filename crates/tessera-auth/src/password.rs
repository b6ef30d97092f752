//! Password and client-secret hashing: Argon2id (RFC 9106) with a random 16-byte salt,
//! stored as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
//!
//! New hashes use the parameters OWASP recommends for Argon2id, set explicitly here rather
//! than taken from the library's defaults: [`ARGON2_MEMORY_KIB`] (19 MiB),
//! [`ARGON2_ITERATIONS`] (2), [`ARGON2_PARALLELISM`] (1), a 32-byte output. Verification
//! uses the parameters (and variant: argon2id, argon2i, argon2d) written in the stored
//! hash itself, so hashes made with other settings keep verifying;
//! [`password_hash_is_current`] tells whether a stored hash uses today's parameters.

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::OnceLock;

/// Argon2id memory cost, in KiB: 19 MiB.
pub const ARGON2_MEMORY_KIB: u32 = 19 * 1024;
/// Argon2id time cost (passes over memory).
pub const ARGON2_ITERATIONS: u32 = 2;
/// Argon2id degree of parallelism (lanes).
pub const ARGON2_PARALLELISM: u32 = 1;
/// Length of the derived hash, in bytes.
pub const ARGON2_OUTPUT_BYTES: usize = 32;

/// The hasher for new hashes: Argon2id, version 0x13, at the parameters above.
fn hasher() -> Argon2<'static> {
    let params = Params::new(ARGON2_MEMORY_KIB, ARGON2_ITERATIONS, ARGON2_PARALLELISM, Some(ARGON2_OUTPUT_BYTES))
        .expect("the built-in Argon2id parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password (Argon2id at the documented parameters, random salt) to a PHC string.
pub fn hash_password(password: &str) -> String {
    hasher()
        .hash_password(password.as_bytes())
        .expect("argon2 hashing with valid parameters and a fresh salt does not fail")
        .to_string()
}

/// Whether `password` matches the PHC string. A malformed or unsupported hash never matches.
/// The hash's own variant and parameters are used, so hashes made with other settings still
/// verify.
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// Whether a stored hash is an Argon2id hash at today's parameters (a hash that is not could
/// be replaced the next time its password is set).
pub fn password_hash_is_current(phc: &str) -> bool {
    let current = format!("$argon2id$v=19$m={ARGON2_MEMORY_KIB},t={ARGON2_ITERATIONS},p={ARGON2_PARALLELISM}$");
    phc.starts_with(&current)
}

/// Hashes a client secret; the same scheme as passwords.
pub fn hash_client_secret(secret: &str) -> String {
    hash_password(secret)
}

/// Whether `secret` matches the client secret's PHC string.
pub fn verify_client_secret(secret: &str, phc: &str) -> bool {
    verify_password(secret, phc)
}

/// Spends about as long as a real verification, so that unknown accounts take as long to
/// refuse as wrong passwords.
pub(crate) fn verify_against_dummy(password: &str) {
    static DUMMY: OnceLock<String> = OnceLock::new();
    let dummy = DUMMY.get_or_init(|| hash_password("tessera-dummy-password"));
    let _ = verify_password(password, dummy);
}
