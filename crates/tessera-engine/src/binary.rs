//! `Binary`: raw content in and out, and the protection its `securityContext` gives.
//!
//! A Binary is written like any resource (create, update, patch: validated, decided by the
//! [`Gate`], audited). What is particular to it:
//!
//! * **Raw content.** A transport that receives bytes with a non-FHIR `Content-Type` makes
//!   the resource with [`binary_resource`] (`data` in base64, `contentType` from the
//!   header, `securityContext` from `X-Security-Context`), and serves a read as raw bytes
//!   with [`raw_content`] — of a [`VersionedResource`], i.e. after the gate released it.
//! * **`securityContext`.** R4 puts Binary in no compartment, so by itself a Binary would be
//!   decided by its owner and type alone: a PDF of a psychiatry note, readable by anyone of
//!   the trust who may read clinical data. So on every write through the REST interactions
//!   the context is resolved *through the writer's gate* (the writer must be able to see
//!   it; otherwise it is unknown: 422), and the Binary takes its **patient compartment**,
//!   its **owner** and its **security labels** (added to `meta.security`). Every read path
//!   then decides on the Binary exactly as on the resource it belongs to at the time of
//!   writing: relationship, sharing dials, sensitivity classes, confidentiality, seals and
//!   consent. A later relabelling of the context resource is not carried over to Binaries
//!   written before it (write them again, or label them too).

use crate::guard::{Decided, Gate};
use crate::prepare::Stamp;
use crate::{Engine, FhirError, VersionedResource};
use serde_json::{json, Value};
use tessera_fhir::IssueType;

/// A Binary's content, as a raw response carries it.
#[derive(Debug, Clone)]
pub struct RawContent {
    pub content_type: String,
    pub data: Vec<u8>,
    /// The `securityContext` reference, for the `X-Security-Context` response header.
    pub security_context: Option<String>,
}

/// The Binary resource for raw bytes sent with `content_type` (and an `X-Security-Context`
/// reference). `id` is set for an update. Refused (413) when the base64 text would exceed
/// FHIR's 1 MB limit on one string.
pub fn binary_resource(content_type: &str, bytes: &[u8], security_context: Option<&str>, id: Option<&str>) -> Result<Value, FhirError> {
    let encoded_len = bytes.len().div_ceil(3) * 4;
    if encoded_len > tessera_fhir::validation::MAX_STRING_BYTES {
        return Err(FhirError::new(
            413,
            IssueType::TooLong,
            format!(
                "a Binary of {} bytes is larger than this server stores in one resource ({} bytes: its base64 text must stay within FHIR's 1 MB string limit)",
                bytes.len(),
                tessera_fhir::validation::MAX_STRING_BYTES / 4 * 3
            ),
        ));
    }
    let media = content_type.trim();
    if media.is_empty() || media.chars().any(char::is_control) {
        return Err(FhirError::bad_request("a raw Binary needs a Content-Type"));
    }
    let mut b = json!({"resourceType": "Binary"});
    if let Some(id) = id {
        b["id"] = json!(id);
    }
    b["contentType"] = json!(media);
    if let Some(ctx) = security_context.map(str::trim).filter(|c| !c.is_empty()) {
        b["securityContext"] = json!({"reference": ctx});
    }
    if !bytes.is_empty() {
        b["data"] = json!(base64_encode(bytes));
    }
    Ok(b)
}

/// The raw content of a Binary the engine released.
pub fn raw_content(v: &VersionedResource) -> Result<RawContent, FhirError> {
    let r: Value = serde_json::from_slice(v.json()).map_err(|e| FhirError::internal(format!("stored resource is not JSON: {e}")))?;
    if r.get("resourceType").and_then(Value::as_str) != Some("Binary") {
        return Err(FhirError::bad_request("only a Binary has raw content"));
    }
    let content_type = r.get("contentType").and_then(Value::as_str).unwrap_or("application/octet-stream").to_string();
    let data = match r.get("data").and_then(Value::as_str) {
        Some(d) => base64_decode(d).ok_or_else(|| FhirError::internal("the stored Binary's data is not base64"))?,
        None => Vec::new(),
    };
    let security_context = r.get("securityContext").and_then(|c| c.get("reference")).and_then(Value::as_str).map(str::to_string);
    Ok(RawContent { content_type, data, security_context })
}

/// What a Binary takes from its `securityContext`.
#[derive(Debug, Clone)]
pub(crate) struct BinaryContext {
    compartment: Option<String>,
    owner: Option<String>,
}

impl BinaryContext {
    /// The owner recorded for the Binary: that of its context.
    pub(crate) fn stamp(&self, stamp: &mut Stamp) {
        if self.owner.is_some() {
            stamp.owner = self.owner.clone();
        }
    }

    /// The compartment (and owner) stored with the Binary's version.
    pub(crate) fn apply(&self, w: &mut tessera_store::Write) {
        if self.compartment.is_some() {
            w.compartment = self.compartment.clone();
        }
        if self.owner.is_some() {
            w.owner = self.owner.clone();
        }
    }
}

impl Engine {
    /// For a Binary with a `securityContext`: resolves the context through `gate` (as the
    /// writer sees it), adds its security labels to the Binary's `meta.security`, and returns
    /// the compartment and owner the Binary takes. `None` for other types, or no context.
    pub(crate) async fn binary_context(&self, gate: &mut Gate<'_>, resource_type: &str, value: &mut Value) -> Result<Option<BinaryContext>, FhirError> {
        if resource_type != "Binary" {
            return Ok(None);
        }
        let Some(reference) = value.get("securityContext").map(|c| c.get("reference").and_then(Value::as_str).map(str::to_string)) else {
            return Ok(None);
        };
        let unknown = |r: &str| {
            FhirError::new(422, IssueType::Processing, format!("the securityContext '{r}' is not a resource you may see on this server")).at("Binary.securityContext")
        };
        let Some(reference) = reference else {
            return Err(FhirError::new(422, IssueType::Processing, "a Binary's securityContext must be a literal reference to a resource on this server (Type/id)").at("Binary.securityContext"));
        };
        let base = format!("{}/", self.config().base_url);
        let local = reference.strip_prefix(&base).unwrap_or(&reference);
        let mut parts = local.split('/');
        let (Some(ty), Some(id)) = (parts.next(), parts.next()) else { return Err(unknown(&reference)) };
        if !tessera_fhir::definitions::is_resource_type(ty) || !tessera_fhir::validation::is_valid_id(id) || !matches!(parts.next(), None | Some("_history")) {
            return Err(unknown(&reference));
        }
        let Some(target) = self.store().read(ty, id).await? else { return Err(unknown(&reference)) };
        if target.deleted {
            return Err(unknown(&reference));
        }
        let target = match gate.release(target).await? {
            Decided::Visible(r) => r,
            _ => return Err(unknown(&reference)),
        };
        let target_json: Value = serde_json::from_slice(&target.json).unwrap_or(Value::Null);
        let labels: Vec<Value> = target_json.get("meta").and_then(|m| m.get("security")).and_then(Value::as_array).cloned().unwrap_or_default();
        if !labels.is_empty() {
            let Some(obj) = value.as_object_mut() else { return Ok(None) };
            let meta = obj.entry("meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                let security = meta.entry("security").or_insert_with(|| json!([]));
                if let Some(security) = security.as_array_mut() {
                    let key = |c: &Value| (c.get("system").and_then(Value::as_str).unwrap_or("").to_string(), c.get("code").and_then(Value::as_str).unwrap_or("").to_string());
                    for label in labels {
                        if !security.iter().any(|s| key(s) == key(&label)) {
                            security.push(label);
                        }
                    }
                }
            }
        }
        Ok(Some(BinaryContext { compartment: target.compartment.clone(), owner: target.owner.clone() }))
    }
}

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64 (whitespace ignored, padding optional); `None` if invalid.
pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::engine::{general_purpose::GeneralPurposeConfig, DecodePaddingMode, GeneralPurpose};
    use base64::Engine;
    const LENIENT: GeneralPurpose =
        GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent));
    let compact: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    LENIENT.decode(compact).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for s in [&b""[..], b"f", b"fo", b"foo", b"foob", b"fooba", b"foobar", &[0u8, 255, 128, 7][..]] {
            let e = base64_encode(s);
            assert_eq!(base64_decode(&e).as_deref(), Some(s), "{e}");
        }
        assert_eq!(base64_encode(b"hello"), "aGVsbG8=");
        assert_eq!(base64_decode("aGVs\nbG8=").unwrap(), b"hello");
        assert!(base64_decode("a*b").is_none());
    }

    #[test]
    fn raw_binary_resource() {
        let b = binary_resource("application/pdf", b"%PDF", Some("DocumentReference/d1"), None).unwrap();
        assert_eq!(b["contentType"], "application/pdf");
        assert_eq!(b["securityContext"]["reference"], "DocumentReference/d1");
        assert_eq!(base64_decode(b["data"].as_str().unwrap()).unwrap(), b"%PDF");
        assert_eq!(binary_resource("x/y", &vec![0u8; 800 * 1024], None, None).unwrap_err().status, 413);
    }
}
