//! Password and client-secret hashes: argon2id, stored as PHC strings.

use crate::error::DomainError;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};

/// Shortest password accepted.
pub const MIN_PASSWORD_LEN: usize = 8;
/// Shortest service-account secret accepted.
pub const MIN_SECRET_LEN: usize = 16;

/// Hashes `clear` with argon2id (default parameters) and a random salt.
pub fn hash_secret(clear: &str) -> Result<String, DomainError> {
    Argon2::default()
        .hash_password(clear.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| DomainError::Secret(format!("cannot hash the password: {e}")))
}

/// Hashes a password or secret given in clear in a domain file. The salt is derived from
/// what the secret belongs to (`kind`, `id`), so the same file always yields the same
/// hashes and applying it again changes nothing. Such secrets are written down in the
/// file anyway: this is for demonstration and development domains; passwords set with
/// [`crate::Domain::set_password`] get a random salt.
pub(crate) fn hash_file_secret(kind: &str, id: &str, clear: &str) -> Result<String, DomainError> {
    let salt = file_salt(kind, id);
    Argon2::default()
        .hash_password_with_salt(clear.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DomainError::Secret(format!("cannot hash the {kind} secret of `{id}`: {e}")))
}

/// Does `clear` match the argon2 PHC string `phc`?
pub fn verify_secret(phc: &str, clear: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(clear.as_bytes(), &hash).is_ok(),
        Err(_) => false,
    }
}

/// Is `phc` an argon2 PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`)?
pub fn is_argon2_phc(phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => hash.algorithm.as_str().starts_with("argon2") && hash.hash.is_some() && hash.salt.is_some(),
        Err(_) => false,
    }
}

/// 16 bytes from two FNV-1a 64-bit hashes (different offset bases) of the owner.
fn file_salt(kind: &str, id: &str) -> [u8; 16] {
    fn fnv1a(basis: u64, parts: &[&[u8]]) -> u64 {
        let mut h = basis;
        for part in parts {
            for b in part.iter().chain(std::iter::once(&0u8)) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
        h
    }
    let parts: [&[u8]; 3] = [b"tessera-domain-file", kind.as_bytes(), id.as_bytes()];
    let a = fnv1a(0xcbf2_9ce4_8422_2325, &parts);
    let b = fnv1a(0x6c62_272e_07bb_0142, &parts);
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&a.to_be_bytes());
    salt[8..].copy_from_slice(&b.to_be_bytes());
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_file_hashes_are_stable() {
        let h = hash_secret("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(is_argon2_phc(&h));
        assert!(verify_secret(&h, "correct horse"));
        assert!(!verify_secret(&h, "wrong horse"));
        assert_ne!(h, hash_secret("correct horse").unwrap(), "random salt");

        let a = hash_file_secret("user", "dr.patel", "demo-doctor-1").unwrap();
        assert_eq!(a, hash_file_secret("user", "dr.patel", "demo-doctor-1").unwrap());
        assert_ne!(a, hash_file_secret("user", "dr.evans", "demo-doctor-1").unwrap(), "salt per account");
        assert!(verify_secret(&a, "demo-doctor-1"));
        assert!(!is_argon2_phc("$2b$12$abcdefghijklmnopqrstuv"));
        assert!(!is_argon2_phc("secret"));
    }
}
