//! HL7 v2 extracts: each ADT message's PID as a FHIR Patient (mapped by
//! `tessera_hl7v2::patient`); other messages are invalid records, since a migration reads
//! patient registrations.

use crate::{Options, Record};
use tessera_hl7v2::patient::{patient_from_pid, patient_identifiers};
use tessera_hl7v2::{batch_messages, Message};

/// The record of one message: its Patient when it is an ADT message, and its MRN (the
/// first PID-3 identifier in the MRN system).
fn message_record(source: String, msg: &Message, options: &Options) -> Record {
    let map = options.identifier_map();
    let local_id = patient_identifiers(msg, &map).into_iter().find(|i| i.field == "PID-3" && i.system == options.mrn_system).map(|i| i.value);
    let patient = match msg.message_type() {
        Some(t) if t.code.eq_ignore_ascii_case("ADT") => patient_from_pid(msg, &map).map_err(|e| e.to_string()),
        Some(t) => Err(format!("{t} is not an ADT message: migration reads patient registrations")),
        None => Err("the message has no type (MSH-9): migration reads patient registrations (ADT)".to_string()),
    };
    Record { source, local_id, patient }
}

/// An HL7 v2 file: one message, messages back to back, a batch file or MLLP-framed
/// messages. Each message gives a record named `name:message 3 (MSG00012)` (messages
/// counted from 1, with the control id MSH-10 when there is one); a message that does not
/// parse gives an invalid record with the reason, and so does text outside any message
/// (`name:segment 1`).
pub fn read_hl7(name: &str, text: &str, options: &Options) -> Vec<Record> {
    let mut out = Vec::new();
    let mut number = 0;
    for item in batch_messages(text) {
        match item {
            Ok(msg) => {
                number += 1;
                let source = match msg.control_id() {
                    Some(id) => format!("{name}:message {number} ({id})"),
                    None => format!("{name}:message {number}"),
                };
                out.push(message_record(source, &msg, options));
            }
            Err(e) => {
                let source = match e.message {
                    Some(m) => {
                        number = m;
                        format!("{name}:message {m}")
                    }
                    None => format!("{name}:segment {}", e.segment),
                };
                out.push(Record { source, local_id: None, patient: Err(e.to_string()) });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_to_records() {
        let text = "MSH|^~\\&|PAS|RXX|||2024||ADT^A04|C1|P|2.4\rPID|1||X9^^^OTHER~M1^^^^MR||DOE^JO\r\
MSH|^~\\&|LAB|RXX|||2024||ORU^R01|C2|P|2.4\rPID|1||M2\rOBX|1\r\
MSH|^~\\&|PAS\r\
MSH|^^\r\
MSH|^~\\&|PAS|RXX|||2024||ADT^A01|C5|P|2.4\rPID|1||M5||DOE^JO||1980131\r";
        let mut options = Options::new("https://example.org/Id/mrn");
        options.authorities.insert("OTHER".into(), "https://other.example/Id".into());
        let records = read_hl7("adt.hl7", text, &options);
        let sources: Vec<_> = records.iter().map(|r| r.source.as_str()).collect();
        assert_eq!(sources, ["adt.hl7:message 1 (C1)", "adt.hl7:message 2 (C2)", "adt.hl7:message 3", "adt.hl7:message 4", "adt.hl7:message 5 (C5)"]);
        assert_eq!(records[0].local_id.as_deref(), Some("M1"));
        let p = records[0].patient.as_ref().unwrap();
        assert_eq!(p["identifier"][0]["system"], "https://other.example/Id");
        assert_eq!(records[1].patient, Err("ORU^R01 is not an ADT message: migration reads patient registrations".to_string()));
        assert_eq!(records[1].local_id.as_deref(), Some("M2"));
        assert!(records[2].patient.as_ref().unwrap_err().contains("no type (MSH-9)"));
        assert!(records[3].patient.as_ref().unwrap_err().starts_with("message 4, segment 1 (MSH), field 2"));
        assert_eq!(records[4].patient, Err("PID-7: '1980131' is not a date".to_string()));
        assert_eq!(records[4].local_id.as_deref(), Some("M5"));
        let stray = read_hl7("x.hl7", "hello\rMSH|^~\\&", &options);
        assert_eq!(stray[0].source, "x.hl7:segment 1");
        assert_eq!(stray[1].source, "x.hl7:message 1");
    }
}
