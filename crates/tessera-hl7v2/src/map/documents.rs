//! MDM^T02 (original document notification and content) to a FHIR R4 DocumentReference,
//! written as a conditional update on the document's unique number.
//!
//! | HL7 | FHIR |
//! | --- | --- |
//! | TXA-12.1 unique document number | `identifier` (document system), and the conditional update `identifier=document\|number`; none is error `TXA-12` |
//! | TXA-19 document availability status (table 0273) | `status`: AV current, CA entered-in-error, OB superseded, UN current; none: current |
//! | TXA-17 document completion status (table 0271) | `docStatus`: AU, LA final; DI, DO, IP, IN, PA preliminary |
//! | TXA-2 document type | `type` (system v2-0270 for a code of table 0270 sent without a coding system) |
//! | the message's patient | `subject` |
//! | TXA-4 activity date/time, when it has a time | `date` (an instant) |
//! | TXA-9 originator, TXA-5 primary activity provider | `author` (practitioners by identifier) |
//! | TXA-22 authentication person, else TXA-10 assigned authenticator | `authenticator` |
//! | the interface's organisation | `custodian` |
//! | TXA-13 parent document number | `relatesTo`: appends, the parent by identifier |
//! | TXA-18 confidentiality status (table 0272) | `securityLabel`: V very restricted, R restricted, U normal (v3-Confidentiality) |
//! | the message's encounter | `context.encounter` |
//! | TXA-14.1 placer, TXA-15.1 filler order number | `context.related` (ServiceRequest by identifier) |
//! | OBX-5 of the OBX of value type TX, FT or ST after TXA (each repetition a line) | `content.attachment`: contentType `text/plain; charset=utf-8`, `data` the lines joined with `\n` in base64, `size` |
//! | OBX-5 of an OBX of value type ED: 5.2 type (table 0191), 5.3 subtype, 5.4 encoding (Base64, A, Hex), 5.5 data | `content.attachment`: contentType `type/subtype`, `data` (base64) |
//! | TXA-2 text, else "Clinical document" | `content.attachment.title` |
//! | TXA-4, else TXA-6 origination date/time | `content.attachment.creation` |
//!
//! With no text or ED OBX (a notification without content), the one `content` is an
//! attachment with only its title and creation date. Not mapped: OBX of other value types
//! (RP reference pointers, HD DICOM study ids, coded values), TXA-3 content presentation,
//! TXA-7/8 transcription and edit times, TXA-11 transcriptionist, TXA-16 file name, TXA-20
//! storage status, TXA-21 change reason, ORC/OBR, CON, NTE.

use super::{
    codeable_concept_in, date_time, field_error, full_url, identifier_query, lookup, part, practitioner_reference, put, repetitions, segment_label, value, Context, Entry, FieldError, Method,
};
use crate::message::{Message, Repetition};
use serde_json::{json, Map, Value};

/// TXA-19 document availability status (table 0273) to `DocumentReference.status`.
pub const AVAILABILITY: &[(&str, &str)] = &[("AV", "current"), ("CA", "entered-in-error"), ("OB", "superseded"), ("UN", "current")];

/// TXA-17 document completion status (table 0271) to `DocumentReference.docStatus`.
pub const COMPLETION: &[(&str, &str)] = &[("AU", "final"), ("LA", "final"), ("DI", "preliminary"), ("DO", "preliminary"), ("IP", "preliminary"), ("IN", "preliminary"), ("PA", "preliminary")];

/// TXA-18 confidentiality status (table 0272) to v3-Confidentiality.
pub const CONFIDENTIALITY: &[(&str, &str)] = &[("V", "V"), ("R", "R"), ("U", "N")];

/// The document types of table 0270 (TXA-2).
pub const DOCUMENT_TYPES: &[&str] = &["AR", "CD", "CN", "DI", "DS", "ED", "HP", "OP", "PC", "PH", "PN", "PR", "SP", "TS"];

/// ED type of data (table 0191, or a MIME type) to the MIME top-level type.
pub const MIME_TYPES: &[(&str, &str)] = &[
    ("AP", "application"),
    ("application", "application"),
    ("IM", "image"),
    ("image", "image"),
    ("AU", "audio"),
    ("audio", "audio"),
    ("video", "video"),
    ("TEXT", "text"),
    ("TX", "text"),
    ("multipart", "multipart"),
    ("model", "model"),
];

/// The value types whose OBX-5 is the document's text.
pub const TEXT_TYPES: &[(&str, &str)] = &[("TX", "text"), ("FT", "text"), ("ST", "text")];

const DOCUMENT_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0270";
const CONFIDENTIALITY_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

/// The DocumentReference of an MDM^T02 message. See the module documentation for the
/// mapping.
pub fn mdm_t02(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    let (txa_index, txa) = msg.segments().iter().enumerate().find(|(_, s)| s.name() == "TXA").ok_or_else(|| field_error("TXA", "the message has no TXA segment"))?;
    let number = value(txa, 12, 1).ok_or_else(|| field_error("TXA-12", "the document has no unique document number"))?;
    let status = match value(txa, 19, 1) {
        Some(code) => lookup(AVAILABILITY, &code).ok_or_else(|| field_error("TXA-19", format!("'{code}' is not a document availability status (table 0273)")))?,
        None => "current",
    };
    let doc_status = match value(txa, 17, 1) {
        Some(code) => Some(lookup(COMPLETION, &code).ok_or_else(|| field_error("TXA-17", format!("'{code}' is not a document completion status (table 0271)")))?),
        None => None,
    };
    let s = ctx.systems;

    let mut d = Map::new();
    d.insert("resourceType".into(), json!("DocumentReference"));
    d.insert("identifier".into(), json!([{"system": s.document, "value": number}]));
    d.insert("status".into(), json!(status));
    put(&mut d, "docStatus", doc_status.map(Value::from));
    let doc_type = repetitions(txa, 2).first();
    put(&mut d, "type", doc_type.and_then(|r| codeable_concept_in(r, DOCUMENT_TYPE_SYSTEM, DOCUMENT_TYPES)));
    d.insert("subject".into(), json!({"reference": ctx.patient}));
    let activity = value(txa, 4, 1).map(|t| date_time(&t, "TXA-4")).transpose()?;
    put(&mut d, "date", activity.clone().filter(|t| t.contains('T')).map(Value::from));
    let mut authors: Vec<Value> = Vec::new();
    for rep in repetitions(txa, 9).iter().chain(repetitions(txa, 5)) {
        if let Some(r) = practitioner_reference(rep, s) {
            if !authors.contains(&r) {
                authors.push(r);
            }
        }
    }
    put(&mut d, "author", Some(Value::Array(authors)));
    let authenticator = repetitions(txa, 22).iter().chain(repetitions(txa, 10)).find_map(|r| practitioner_reference(r, s));
    put(&mut d, "authenticator", authenticator);
    d.insert("custodian".into(), json!({"reference": ctx.organisation}));
    let parent = value(txa, 13, 1).map(|p| json!([{"code": "appends", "target": {"type": "DocumentReference", "identifier": {"system": s.document, "value": p}}}]));
    put(&mut d, "relatesTo", parent);
    let label = match value(txa, 18, 1) {
        Some(code) => Some(lookup(CONFIDENTIALITY, &code).ok_or_else(|| field_error("TXA-18", format!("'{code}' is not a confidentiality status (table 0272)")))?),
        None => None,
    };
    put(&mut d, "securityLabel", label.map(|c| json!([{"coding": [{"system": CONFIDENTIALITY_SYSTEM, "code": c}]}])));

    // Content.
    let title = doc_type.and_then(|r| part(r, 2, 1)).unwrap_or_else(|| "Clinical document".to_string());
    let creation = match activity {
        Some(a) => Some(a),
        None => value(txa, 6, 1).map(|t| date_time(&t, "TXA-6")).transpose()?,
    };
    let mut lines: Vec<String> = Vec::new();
    let mut attachments: Vec<Map<String, Value>> = Vec::new();
    let observations: Vec<_> = msg.segments().iter().skip(txa_index + 1).filter(|s| s.name() == "OBX").collect();
    for (n, obx) in observations.iter().enumerate() {
        let field = format!("{}-5", segment_label(msg, "OBX", n + 1));
        let value_type = value(obx, 2, 1).unwrap_or_default();
        if lookup(TEXT_TYPES, &value_type).is_some() {
            // A line's components (text sent with unescaped `^`) are one text again.
            lines.extend(repetitions(obx, 5).iter().map(|r| r.components().iter().map(|c| c.subcomponents().join("&")).collect::<Vec<_>>().join("^")));
        } else if value_type.eq_ignore_ascii_case("ED") {
            for rep in repetitions(obx, 5) {
                attachments.push(encapsulated(rep, &field)?);
            }
        }
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    if lines.iter().any(|l| !l.trim().is_empty()) {
        let text = lines.join("\n");
        let mut a = Map::new();
        a.insert("contentType".into(), json!("text/plain; charset=utf-8"));
        a.insert("data".into(), json!(base64(text.as_bytes())));
        a.insert("size".into(), json!(text.len()));
        attachments.insert(0, a);
    }
    if attachments.is_empty() {
        attachments.push(Map::new());
    }
    let content: Vec<Value> = attachments
        .into_iter()
        .map(|mut a| {
            a.insert("title".into(), json!(title));
            put(&mut a, "creation", creation.clone().map(Value::from));
            json!({"attachment": a})
        })
        .collect();
    d.insert("content".into(), Value::Array(content));

    let mut context = Map::new();
    put(&mut context, "encounter", ctx.encounter.map(|e| json!([{"reference": e}])));
    let related: Vec<Value> = [(14, &s.placer_order), (15, &s.filler_order)]
        .iter()
        .filter_map(|(f, system)| value(txa, *f, 1).map(|v| json!({"type": "ServiceRequest", "identifier": {"system": system, "value": v}})))
        .collect();
    put(&mut context, "related", Some(Value::Array(related)));
    if !context.is_empty() {
        d.insert("context".into(), Value::Object(context));
    }

    Ok(vec![Entry { full_url: full_url("DocumentReference", 1), method: Method::Upsert(identifier_query(&s.document, &number)), resource: Value::Object(d) }])
}

/// An ED (source ^ type of data ^ subtype ^ encoding ^ data) as an attachment without title.
fn encapsulated(rep: &Repetition, field: &str) -> Result<Map<String, Value>, FieldError> {
    let mut a = Map::new();
    let kind = part(rep, 2, 1).and_then(|t| lookup(MIME_TYPES, &t));
    let subtype = part(rep, 3, 1).map(|s| s.to_ascii_lowercase()).filter(|s| s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-+.".contains(&b)));
    let content_type = match (kind, subtype) {
        (Some(k), Some(s)) => Some(format!("{k}/{s}")),
        (Some("text"), None) => Some("text/plain".to_string()),
        _ => None,
    };
    let data = match part(rep, 5, 1) {
        None => None,
        Some(raw) => {
            let encoding = part(rep, 4, 1).unwrap_or_else(|| "A".into());
            Some(match encoding.to_ascii_uppercase().as_str() {
                "BASE64" => {
                    let b: String = raw.chars().filter(|c| !c.is_whitespace()).collect();
                    let ok = !b.is_empty() && b.len().is_multiple_of(4) && b.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'+' || c == b'/' || c == b'=');
                    if !ok {
                        return Err(field_error(field, "the data is not base64"));
                    }
                    b
                }
                "A" => base64(raw.as_bytes()),
                "HEX" => base64(&hex(&raw).ok_or_else(|| field_error(field, "the data is not hexadecimal"))?),
                other => return Err(field_error(field, format!("'{other}' is not an encoding of data (Base64, A or Hex)"))),
            })
        }
    };
    match (content_type, &data) {
        (Some(t), _) => {
            a.insert("contentType".into(), json!(t));
        }
        (None, Some(_)) => {
            a.insert("contentType".into(), json!("application/octet-stream"));
        }
        (None, None) => {}
    }
    put(&mut a, "data", data.map(Value::from));
    Ok(a)
}

/// Bytes of hexadecimal text (spaces ignored).
fn hex(text: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits.chunks(2).map(|p| std::str::from_utf8(p).ok().and_then(|s| u8::from_str_radix(s, 16).ok())).collect()
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_clean, sample, with_context};
    use super::*;
    use proptest::prelude::*;

    fn map(text: &str) -> Result<Vec<Entry>, FieldError> {
        let msg = Message::parse(text).unwrap();
        with_context(|ctx| mdm_t02(&msg, ctx))
    }

    #[test]
    fn every_sample_maps() {
        // MDM-T01-01 is a T02 without its OBX content and MDM_01 an ADT^A01 that carries a
        // TXA: both map (a document with no content).
        for name in ["MDM-T02-01.hl7", "MDM-T01-01.hl7", "MDM_01.hl7"] {
            let Some(msgs) = sample(name) else { continue };
            let first = with_context(|ctx| mdm_t02(&msgs[0], ctx)).unwrap_or_else(|e| panic!("{name}: {e}"));
            for msg in &msgs {
                let entries = with_context(|ctx| mdm_t02(msg, ctx)).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(entries, first);
                assert_clean(&entries);
                assert_eq!(entries[0].resource["resourceType"], "DocumentReference");
            }
        }
    }

    #[test]
    fn t02_field_by_field() {
        let Some(msgs) = sample("MDM-T02-01.hl7") else { return };
        let e = with_context(|ctx| mdm_t02(&msgs[0], ctx)).unwrap().remove(0);
        let doc = "https://tessera.health/Id/rx1/document";
        assert_eq!(e.method, Method::Upsert(format!("identifier={doc}|1.2.840.317.5947431.51.20080131160038")));
        let prac = |id: &str| json!({"type": "Practitioner", "identifier": {"system": "https://tessera.health/Id/rx1/practitioner", "value": id}});
        let mut ivan = prac("54321");
        ivan["display"] = json!("Ivan Doctorovich");
        let expected = json!({
            "resourceType": "DocumentReference",
            "identifier": [{"system": doc, "value": "1.2.840.317.5947431.51.20080131160038"}],
            "status": "current",
            "docStatus": "final",
            "type": {"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "DI"}]},
            "subject": {"reference": "urn:uuid:p"},
            "date": "2008-01-31T15:55:00+02:15",
            "author": [prac("IvanDoctorovich")],
            "authenticator": ivan,
            "custodian": {"reference": "Organization/rx1"},
            "relatesTo": [{"code": "appends", "target": {"type": "DocumentReference", "identifier": {"system": doc, "value": "1.2.840.317.5947431.51.20080131155715"}}}],
            "content": [{"attachment": {"contentType": "application/pdf", "title": "Clinical document", "creation": "2008-01-31T15:55:00+02:15"}}],
            "context": {
                "encounter": [{"reference": "urn:uuid:e"}],
                "related": [
                    {"type": "ServiceRequest", "identifier": {"system": "https://tessera.health/Id/rx1/placer-order", "value": "00012345"}},
                    {"type": "ServiceRequest", "identifier": {"system": "https://tessera.health/Id/rx1/filler-order", "value": "1-1"}}
                ]
            }
        });
        assert_eq!(e.resource, expected, "{}", serde_json::to_string_pretty(&e.resource).unwrap());
    }

    const MINIMAL: &str = "MSH|^~\\&|S|F|||20240101||MDM^T02|1|P|2.5\rEVN|T02\rPID|1||42\rTXA|1|DS^Discharge summary|TX|20240115||20240114|||D1^WHO^DOC|||DOC-1|||||LA|U|OB\rOBX|1|TX|||Line one~Line \\T\\ two\rOBX|2|FT|||Line three\rOBX|3|ED|||^AP^PDF^Base64^JVBERi0=~^TEXT^^A^hi\rOBX|4|NM|||5";

    #[test]
    fn text_and_encapsulated_content() {
        let r = map(MINIMAL).unwrap().remove(0).resource;
        assert_eq!(r["status"], "superseded");
        assert_eq!(r["docStatus"], "final");
        assert_eq!(r["type"], json!({"coding": [{"system": DOCUMENT_TYPE_SYSTEM, "code": "DS", "display": "Discharge summary"}], "text": "Discharge summary"}));
        assert_eq!(r["date"], Value::Null, "a date without a time is no instant");
        assert_eq!(r["securityLabel"][0]["coding"][0]["code"], "N");
        let content = r["content"].as_array().unwrap();
        assert_eq!(content.len(), 3);
        assert_eq!(content[0]["attachment"]["data"], base64(b"Line one\nLine & two\nLine three"));
        assert_eq!(content[0]["attachment"]["contentType"], "text/plain; charset=utf-8");
        assert_eq!(content[0]["attachment"]["title"], "Discharge summary");
        assert_eq!(content[0]["attachment"]["creation"], "2024-01-15");
        assert_eq!(content[1]["attachment"]["contentType"], "application/pdf");
        assert_eq!(content[1]["attachment"]["data"], "JVBERi0=");
        assert_eq!(content[2]["attachment"]["contentType"], "text/plain");
        assert_eq!(content[2]["attachment"]["data"], "aGk=");
        // A code outside table 0270 keeps no system.
        let r = map(&MINIMAL.replace("DS^Discharge summary", "DIS")).unwrap().remove(0).resource;
        assert_eq!(r["type"], json!({"coding": [{"code": "DIS"}]}));
    }

    #[test]
    fn errors() {
        assert_eq!(map(&MINIMAL.replace("|DOC-1|", "||")).unwrap_err().field, "TXA-12");
        assert_eq!(map(&MINIMAL.replace("|LA|", "|XX|")).unwrap_err().field, "TXA-17");
        assert_eq!(map(&MINIMAL.replace("|OB\r", "|ZZ\r")).unwrap_err().field, "TXA-19");
        assert_eq!(map(&MINIMAL.replace("JVBERi0=", "JVB!")).unwrap_err().field, "OBX[3]-5");
        assert_eq!(map(&MINIMAL.replace("20240115", "2024x")).unwrap_err().field, "TXA-4");
        assert_eq!(map("MSH|^~\\&|S|F|||20240101||MDM^T02|1\rPID|1").unwrap_err().field, "TXA");
    }

    #[test]
    fn base64_encodes() {
        for (plain, encoded) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE="), ("foobar", "Zm9vYmFy")] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
        assert_eq!(base64(&[0xff, 0xfe]), "//4=");
        assert_eq!(hex("48 69"), Some(b"Hi".to_vec()));
        assert_eq!(hex("4"), None);
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(f in proptest::collection::vec("[ -~]{0,24}", 10), vt in prop::sample::select(vec!["TX", "FT", "ED", "ST", "NM", ""])) {
            let text = format!(
                "MSH|^~\\&|S|F|||20240101||MDM^T02|1|P|2.5\rPID|1\rTXA|1|{}|TX|{}||{}|||{}|||D{}|{}||||{}|{}|{}\rOBX|1|{}|||{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], vt, f[9]
            );
            if let Ok(msg) = Message::parse(&text) {
                if let Ok(entries) = with_context(|ctx| mdm_t02(&msg, ctx)) {
                    assert_clean(&entries);
                }
            }
        }
    }
}
