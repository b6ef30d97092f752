//! Acknowledgements (original mode): `MSH` answering the message's sender, `MSA` with the
//! acknowledgement code and the message's control id, and for an error an `ERR` segment
//! naming where (`PID^1^3`), the HL7 error code (table 0357) and the problem in words.

use tessera_hl7v2::Message;

/// An acknowledgement code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// Applied (after the durable commit).
    Accept,
    /// Read, but not applied: the message says something the record cannot take.
    Error,
    /// Not read, or not supported.
    Reject,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Accept => "AA",
            Code::Error => "AE",
            Code::Reject => "AR",
        }
    }

    /// The commit acknowledgement of enhanced mode: CA (committed), CE, CR.
    pub fn commit_str(self) -> &'static str {
        match self {
            Code::Accept => "CA",
            Code::Error => "CE",
            Code::Reject => "CR",
        }
    }
}

/// Whether an acknowledgement of the condition `wanted` (MSH-15/16: AL always, NE never,
/// ER on error only, SU on success only) is sent for an outcome.
fn wanted(condition: &str, code: Code) -> bool {
    match condition.trim().to_ascii_uppercase().as_str() {
        "NE" => false,
        "ER" => code != Code::Accept,
        "SU" => code == Code::Accept,
        _ => true,
    }
}

/// The replies to a message that was read: in original mode (MSH-15 and MSH-16 empty) the
/// application acknowledgement; in enhanced mode, the commit acknowledgement (CA/CE/CR) if
/// MSH-15 asks for it, then the application acknowledgement (AA/AE/AR) if MSH-16 does —
/// both on the connection, in that order. Either is sent only once the outcome is durable.
pub fn replies(msg: &Message, code: Code, text: &str, problem: Option<&Problem>) -> Vec<String> {
    let accept = msg.msh().value(15).unwrap_or("").trim().to_string();
    let application = msg.msh().value(16).unwrap_or("").trim().to_string();
    if accept.is_empty() && application.is_empty() {
        return vec![acknowledge(Some(msg), code, text, problem)];
    }
    let mut out = Vec::new();
    if wanted(&accept, code) {
        out.push(acknowledge_as(Some(msg), code.commit_str(), text, problem));
    }
    if wanted(&application, code) && !application.is_empty() {
        out.push(acknowledge(Some(msg), code, text, problem));
    }
    out
}

/// What an error acknowledgement says.
#[derive(Debug, Clone)]
pub struct Problem {
    /// `PID^1^3` (segment, its sequence, field), if known.
    pub location: Option<String>,
    /// HL7 table 0357: 100 segment sequence, 101 required field missing, 102 data type,
    /// 103 table value not found, 200 unsupported message type, 201 unsupported event,
    /// 207 application internal error.
    pub hl7_code: &'static str,
    pub text: String,
}

fn now() -> String {
    let t = time::OffsetDateTime::now_utc();
    format!("{:04}{:02}{:02}{:02}{:02}{:02}", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute(), t.second())
}

fn control_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("TES{nanos}")
}

/// The acknowledgement of `msg` (`None`: a message that could not be read).
pub fn acknowledge(msg: Option<&Message>, code: Code, text: &str, problem: Option<&Problem>) -> String {
    acknowledge_as(msg, code.as_str(), text, problem)
}

fn acknowledge_as(msg: Option<&Message>, code: &str, text: &str, problem: Option<&Problem>) -> String {
    let d = msg.map(|m| m.delimiters().clone()).unwrap_or_default();
    let esc = |s: &str| d.escape(s);
    let f = |n: usize| msg.and_then(|m| m.msh().value(n)).unwrap_or("").to_string();
    let raw_field = |n: usize| -> String {
        // Hierarchic designators are repeated as sent (already escaped).
        msg.and_then(|m| m.msh().field(n)).map(|f| f.repetitions().iter().map(|r| r.components().iter().map(|c| c.subcomponents().iter().map(|s| d.escape(s)).collect::<Vec<_>>().join(&d.subcomponent.to_string())).collect::<Vec<_>>().join(&d.component.to_string())).collect::<Vec<_>>().join(&d.repetition.to_string())).unwrap_or_default()
    };
    let trigger = msg.and_then(|m| m.message_type()).and_then(|t| t.trigger).unwrap_or_default();
    let version = msg.and_then(|m| m.version()).unwrap_or("2.5").to_string();
    let sep = d.field;
    let mut out = format!(
        "MSH{sep}{enc}{sep}TESSERA{sep}{fac}{sep}{app}{sep}{sfac}{sep}{now}{sep}{sep}ACK{c}{trigger}{c}ACK{sep}{id}{sep}{proc}{sep}{version}\r",
        enc = d.encoding_characters(),
        fac = raw_field(6),
        app = raw_field(3),
        sfac = raw_field(4),
        now = now(),
        c = d.component,
        id = control_id(),
        proc = if f(11).is_empty() { "P".to_string() } else { esc(&f(11)) },
    );
    let original = msg.and_then(|m| m.control_id()).unwrap_or("");
    out.push_str(&format!("MSA{sep}{}{sep}{}{sep}{}\r", code, esc(original), esc(text)));
    if let Some(p) = problem {
        let c = d.component;
        out.push_str(&format!(
            "ERR{sep}{sep}{loc}{sep}{code}{c}{words}{c}HL70357{sep}E{sep}{sep}{sep}{sep}{text}\r",
            loc = p.location.as_deref().unwrap_or(""),
            code = p.hl7_code,
            words = esc(hl7_words(p.hl7_code)),
            text = esc(&p.text)
        ));
    }
    out
}

fn hl7_words(code: &str) -> &'static str {
    match code {
        "100" => "Segment sequence error",
        "101" => "Required field missing",
        "102" => "Data type error",
        "103" => "Table value not found",
        "200" => "Unsupported message type",
        "201" => "Unsupported event code",
        "204" => "Unknown key identifier",
        "207" => "Application internal error",
        _ => "Error",
    }
}

/// The `AR` of bytes that are no HL7 message.
pub fn reject_unreadable(problem: &str) -> String {
    acknowledge(None, Code::Reject, "the message cannot be read", Some(&Problem { location: None, hl7_code: "100", text: problem.to_string() }))
}

