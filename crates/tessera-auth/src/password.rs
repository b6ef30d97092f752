//! Password and client-secret hashing: argon2id with a random salt, stored as a PHC string
//! (`$argon2id$v=19$m=19456,t=2,p=1$…`).

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::Argon2;
use std::sync::OnceLock;

/// Hashes a password (argon2id, default parameters, random salt) to a PHC string.
pub fn hash_password(password: &str) -> String {
    Argon2::default()
        .hash_password(password.as_bytes())
        .expect("argon2 hashing with default parameters and a fresh salt does not fail")
        .to_string()
}

/// Whether `password` matches the PHC string. A malformed or unsupported hash never matches.
/// The hash's own parameters are used, so hashes made with other settings still verify.
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
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
