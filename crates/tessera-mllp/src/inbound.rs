//! Messages to engine calls, by message type and trigger event. Each supported type is one
//! row of [`SUPPORTED`]; everything else is refused with `AR` and the HL7 code for an
//! unsupported type or event.

use crate::ack::{self, Code, Problem};
use crate::Interface;
use sha2::Digest;
use tessera_engine::{Access, Engine, FhirError};
use tessera_hl7v2::{patient_from_pid, IdentifierMap, Message};

/// What an inbound message does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// The patient of PID: registered through the patient index (a known NHS number or a
    /// matched person links; the organisation's MRN and new details are added).
    RegisterPatient,
}

/// (message code, trigger event, what it does).
const SUPPORTED: &[(&str, &str, Action)] = &[
    ("ADT", "A01", Action::RegisterPatient),
    ("ADT", "A04", Action::RegisterPatient),
    ("ADT", "A05", Action::RegisterPatient),
    ("ADT", "A08", Action::RegisterPatient),
    ("ADT", "A28", Action::RegisterPatient),
    ("ADT", "A31", Action::RegisterPatient),
];

fn problem(location: Option<String>, hl7_code: &'static str, text: impl Into<String>) -> Problem {
    Problem { location, hl7_code, text: text.into() }
}

/// `PID-7` → `PID^1^7`.
fn location_of(field: &str) -> Option<String> {
    let (segment, n) = field.split_once('-')?;
    Some(format!("{segment}^1^{n}"))
}

/// Where an engine refusal points in the PID, as far as it can be told.
fn engine_location(e: &FhirError) -> Option<String> {
    let at = e.issues.first()?.expression.first()?;
    let field = if at.contains("identifier") {
        "PID-3"
    } else if at.contains("birthDate") {
        "PID-7"
    } else if at.contains("gender") {
        "PID-8"
    } else if at.contains("name") {
        "PID-5"
    } else if at.contains("address") {
        "PID-11"
    } else if at.contains("telecom") {
        "PID-13"
    } else {
        return None;
    };
    location_of(field)
}

fn words(e: &FhirError) -> String {
    let parts: Vec<String> = e.issues.iter().map(|i| i.diagnostics.clone()).collect();
    if parts.is_empty() {
        format!("refused ({})", e.status)
    } else {
        parts.join("; ")
    }
}

/// The settings key remembering an applied message of a sender.
fn seen_key(msg: &Message) -> String {
    let sender = format!("{}|{}|{}", msg.sending_application().unwrap_or(""), msg.sending_facility().unwrap_or(""), msg.control_id().unwrap_or(""));
    let digest: String = sha2::Sha256::digest(sender.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("hl7.seen:{digest}")
}

/// Reads, applies and acknowledges one message.
pub async fn handle(engine: &Engine, interface: &Interface, text: &str) -> String {
    let msg = match Message::parse(text) {
        Ok(m) => m,
        Err(e) => {
            let loc = e.segment_name.as_ref().map(|s| format!("{s}^{}{}", e.segment, e.field.map(|f| format!("^{f}")).unwrap_or_default()));
            return ack::acknowledge(None, Code::Reject, "the message cannot be read", Some(&problem(loc, "100", e.to_string())));
        }
    };
    let Some(kind) = msg.message_type() else {
        return ack::acknowledge(Some(&msg), Code::Reject, "no message type", Some(&problem(Some("MSH^1^9".into()), "101", "MSH-9 (message type) is empty")));
    };
    if msg.control_id().is_none_or(|c| c.trim().is_empty()) {
        return ack::acknowledge(Some(&msg), Code::Reject, "no control id", Some(&problem(Some("MSH^1^10".into()), "101", "MSH-10 (message control id) is empty")));
    }
    let trigger = kind.trigger.clone().unwrap_or_default();
    let Some((_, _, action)) = SUPPORTED.iter().find(|(c, t, _)| *c == kind.code && *t == trigger) else {
        let (code, text) = if SUPPORTED.iter().any(|(c, _, _)| *c == kind.code) {
            ("201", format!("{}^{trigger} is not supported by this interface", kind.code))
        } else {
            ("200", format!("{} messages are not supported by this interface", kind.code))
        };
        return ack::acknowledge(Some(&msg), Code::Reject, &text, Some(&problem(Some("MSH^1^9".into()), code, text.clone())));
    };
    // A message resent by its sender is acknowledged again and applied once.
    let key = seen_key(&msg);
    match engine.setting(&key).await {
        Ok(Some(earlier)) => return ack::acknowledge(Some(&msg), Code::Accept, &format!("already applied ({earlier})"), None),
        Ok(None) => {}
        Err(e) => return ack::acknowledge(Some(&msg), Code::Error, "the server cannot apply messages now; resend later", Some(&problem(None, "207", words(&e)))),
    }
    let outcome = match action {
        Action::RegisterPatient => register(engine, interface, &msg).await,
    };
    match outcome {
        Ok(done) => {
            if let Err(e) = engine.set_setting(&key, &done).await {
                tracing::warn!(error = %e, "MLLP: applied, but cannot remember the control id");
            }
            ack::acknowledge(Some(&msg), Code::Accept, &done, None)
        }
        Err(p) => ack::acknowledge(Some(&msg), Code::Error, &p.text.clone(), Some(&p)),
    }
}

/// ADT: the patient of PID, registered through the patient index as the interface's
/// organisation.
async fn register(engine: &Engine, interface: &Interface, msg: &Message) -> Result<String, Problem> {
    let domain = engine.domain();
    let map = IdentifierMap::new(domain.mrn_system(&interface.organisation));
    let patient = patient_from_pid(msg, &map).map_err(|e| problem(location_of(&e.field), "102", e.to_string()))?;
    if patient.get("identifier").is_none() {
        return Err(problem(Some("PID^1^3".into()), "101", "PID-3 (patient identifier list) has no identifier this interface can file"));
    }
    let access = Access::system(&interface.organisation);
    match engine.register_reporting(&access, patient).await {
        Ok((outcome, report)) => Ok(format!("Patient/{} ({})", outcome.resource.id(), report.decision)),
        Err(e) if e.status >= 500 => Err(problem(None, "207", words(&e))),
        Err(e) => Err(problem(engine_location(&e), "102", words(&e))),
    }
}
