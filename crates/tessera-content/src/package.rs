//! Content packages: a layer's content (or one organisation's part of it) as one signed,
//! versioned file.
//!
//! ```text
//! TESSERA-CONTENT-PACKAGE 1
//! {"format":1,"version":"…","layer":"organisation","organisation":"rx1",…,"sha256":"…","public_key":"…"}
//! <Ed25519 signature of the manifest line, base64>
//! {"resourceType":"Bundle","type":"collection","entry":[…]}
//! ```
//!
//! The manifest names the layer, the organisation, the domain, the version, when and how
//! many items, the SHA-256 of the content bytes exactly as written (everything after the
//! third line), and the public key that signed it. Verification ([`Package::verify`]) checks
//! the signature of the manifest line with a trusted key, then the checksum of the content
//! bytes: a package altered by one byte anywhere is refused.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

const MAGIC: &str = "TESSERA-CONTENT-PACKAGE 1";

/// What a package says of itself (signed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    /// The package's version: when it was exported (RFC 3339) unless given.
    pub version: String,
    /// `model`, `domain`, `organisation` or `site`.
    pub layer: String,
    /// The organisation of an organisation or site layer package.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub organisation: Option<String>,
    /// The domain it was exported from.
    pub domain: String,
    pub created: String,
    pub items: usize,
    /// SHA-256 (hex) of the content bytes.
    pub sha256: String,
    /// The Ed25519 public key (hex) whose signature the package carries.
    pub public_key: String,
}

/// A package read from a file, not yet verified.
#[derive(Debug, Clone)]
pub struct Package {
    pub manifest: Manifest,
    manifest_line: String,
    signature: Vec<u8>,
    content_bytes: Vec<u8>,
}

/// Why a package is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackageError {
    #[error("not a Tessera content package (the first line must be `{MAGIC}`)")]
    NotAPackage,
    #[error("the package is cut short: {0}")]
    Truncated(&'static str),
    #[error("the manifest is not valid: {0}")]
    Manifest(String),
    #[error("the signature is not valid base64 Ed25519")]
    BadSignature,
    #[error("the package is signed by {0}, which is not a trusted content key")]
    UntrustedKey(String),
    #[error("the signature does not match the manifest: the package was altered")]
    SignatureMismatch,
    #[error("the content does not match the manifest's checksum: the package was altered")]
    ChecksumMismatch,
    #[error("the content is not a FHIR Bundle: {0}")]
    Content(String),
}

/// A content signing key.
pub struct ContentKey(SigningKey);

impl ContentKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> ContentKey {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source is available");
        ContentKey(SigningKey::from_bytes(&seed))
    }

    /// The key kept as hex (its 32-byte seed).
    pub fn from_hex(hex: &str) -> Option<ContentKey> {
        let bytes = from_hex(hex)?;
        let seed: [u8; 32] = bytes.try_into().ok()?;
        Some(ContentKey(SigningKey::from_bytes(&seed)))
    }

    pub fn to_hex(&self) -> String {
        to_hex(&self.0.to_bytes())
    }

    /// The public key, hex.
    pub fn public_hex(&self) -> String {
        to_hex(self.0.verifying_key().as_bytes())
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    to_hex(&sha2::Sha256::digest(bytes))
}

/// Writes a package of `content` (a Bundle) signed with `key`.
pub fn write(key: &ContentKey, mut manifest: Manifest, content: &Value) -> Vec<u8> {
    let content_bytes = serde_json::to_vec_pretty(content).expect("a Bundle serialises");
    manifest.format = 1;
    manifest.sha256 = sha256_hex(&content_bytes);
    manifest.public_key = key.public_hex();
    let manifest_line = serde_json::to_string(&manifest).expect("a manifest serialises");
    let signature = key.0.sign(manifest_line.as_bytes());
    let mut out = Vec::with_capacity(content_bytes.len() + 512);
    out.extend_from_slice(MAGIC.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(manifest_line.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(STANDARD.encode(signature.to_bytes()).as_bytes());
    out.push(b'\n');
    out.extend_from_slice(&content_bytes);
    out
}

impl Package {
    /// Reads a package's parts (nothing is trusted yet: see [`Package::verify`]).
    pub fn parse(bytes: &[u8]) -> Result<Package, PackageError> {
        let mut rest = bytes;
        let mut line = |what: &'static str| -> Result<&[u8], PackageError> {
            let at = rest.iter().position(|b| *b == b'\n').ok_or(PackageError::Truncated(what))?;
            let (l, r) = rest.split_at(at);
            rest = &r[1..];
            Ok(l)
        };
        if line("the first line")? != MAGIC.as_bytes() {
            return Err(PackageError::NotAPackage);
        }
        let manifest_line = String::from_utf8(line("the manifest")?.to_vec()).map_err(|_| PackageError::Manifest("not UTF-8".into()))?;
        let manifest: Manifest = serde_json::from_str(&manifest_line).map_err(|e| PackageError::Manifest(e.to_string()))?;
        let signature = STANDARD.decode(line("the signature")?).map_err(|_| PackageError::BadSignature)?;
        Ok(Package { manifest, manifest_line, signature, content_bytes: rest.to_vec() })
    }

    /// Verifies the package against the trusted public keys (hex): the signature of the
    /// manifest, then the checksum of the content. Returns the content Bundle.
    pub fn verify(&self, trusted: &[String]) -> Result<Value, PackageError> {
        let key_hex = &self.manifest.public_key;
        if !trusted.iter().any(|t| t.eq_ignore_ascii_case(key_hex)) {
            return Err(PackageError::UntrustedKey(key_hex.clone()));
        }
        let key_bytes: [u8; 32] = from_hex(key_hex).and_then(|b| b.try_into().ok()).ok_or(PackageError::UntrustedKey(key_hex.clone()))?;
        let key = VerifyingKey::from_bytes(&key_bytes).map_err(|_| PackageError::UntrustedKey(key_hex.clone()))?;
        let signature: [u8; 64] = self.signature.clone().try_into().map_err(|_| PackageError::BadSignature)?;
        key.verify(self.manifest_line.as_bytes(), &Signature::from_bytes(&signature)).map_err(|_| PackageError::SignatureMismatch)?;
        if sha256_hex(&self.content_bytes) != self.manifest.sha256 {
            return Err(PackageError::ChecksumMismatch);
        }
        let content: Value = serde_json::from_slice(&self.content_bytes).map_err(|e| PackageError::Content(e.to_string()))?;
        if content.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
            return Err(PackageError::Content("not a Bundle".into()));
        }
        Ok(content)
    }

    /// The content without verification (for `diff` of packages one merely compares).
    pub fn content_unverified(&self) -> Result<Value, PackageError> {
        serde_json::from_slice(&self.content_bytes).map_err(|e| PackageError::Content(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Manifest {
        Manifest {
            format: 1,
            version: "2026-12-07".into(),
            layer: "organisation".into(),
            organisation: Some("rx1".into()),
            domain: "Demo".into(),
            created: "2026-12-07T20:00:00Z".into(),
            items: 1,
            sha256: String::new(),
            public_key: String::new(),
        }
    }

    #[test]
    fn a_package_verifies_and_any_altered_byte_is_refused() {
        let key = ContentKey::generate();
        let content = json!({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": {"resourceType": "ActivityDefinition", "status": "active", "title": "FBC"}}]});
        let bytes = write(&key, manifest(), &content);
        let trusted = vec![key.public_hex()];
        assert_eq!(Package::parse(&bytes).unwrap().verify(&trusted).unwrap(), content);
        // Every single byte altered (flipped) is refused — or the file no longer parses.
        for i in 0..bytes.len() {
            let mut altered = bytes.clone();
            altered[i] ^= 0x01;
            let verdict = Package::parse(&altered).and_then(|p| p.verify(&trusted));
            assert!(verdict.is_err(), "byte {i} ({:?}) altered and still accepted", bytes[i] as char);
        }
        // Another key is not trusted.
        let other = ContentKey::generate();
        assert!(matches!(Package::parse(&bytes).unwrap().verify(&[other.public_hex()]), Err(PackageError::UntrustedKey(_))));
        // A key survives hex.
        assert_eq!(ContentKey::from_hex(&key.to_hex()).unwrap().public_hex(), key.public_hex());
    }
}
