//! `tessera-hl7v2`: HL7 version 2 messages in ER7 (the `|^~\&` encoding), the start of
//! Tessera's HL7 v2 interface layer. Pure and synchronous: text in, values out.
//!
//! * [`delimiters`] reads the encoding characters from MSH-1 and MSH-2 (four, five from
//!   v2.7, or fewer with the usual ones for the rest) and escapes and unescapes text
//!   (`\F\ \S\ \T\ \R\ \E\`, `\Xhh\`, `\.br\`).
//! * [`message`] parses one message into segments, fields, repetitions, components and
//!   subcomponents, numbered from 1 as HL7 numbers them (in MSH, field 1 is the field
//!   separator, so MSH-9 is the message type), and writes it back with
//!   [`Message::encode`]. Segments may end with CR, LF or CRLF; `Z` segments are kept.
//! * [`batch`] splits a file into messages: batch files (FHS/BHS … BTS/FTS), messages back
//!   to back, and MLLP-framed messages.
//! * [`datetime`] reads HL7 dates and times and writes FHIR `date` and `dateTime`.
//! * [`patient`] maps PID to a FHIR R4 Patient (identifiers with NHS number and MRN
//!   systems, names, birth date, gender, addresses, telecoms, death).
//! * [`visit`] reads PV1 (class, location, attending doctors, visit number, dates).
//! * [`encode`] writes the other way: a FHIR Patient and Encounter as `ADT^A01`…`A08`, a
//!   DiagnosticReport and its Observations as `ORU^R01`.
//!
//! Parsing never panics, whatever the input, and uses memory in proportion to it. Errors
//! say where: the message in a batch, the segment (from 1) and its name, the field.
//!
//! ```
//! use tessera_hl7v2::patient::{patient_from_pid, IdentifierMap};
//! use tessera_hl7v2::Message;
//!
//! let msg = Message::parse("MSH|^~\\&|PAS|RXX|||20240101||ADT^A04|1|P|2.4\rPID|1||K123^^^^MR||SMITH^JANE||19800517|F").unwrap();
//! assert_eq!(msg.message_type().unwrap().to_string(), "ADT^A04");
//! assert_eq!(msg.segment("PID").unwrap().get(5, 1, 2, 1), Some("JANE"));
//! let patient = patient_from_pid(&msg, &IdentifierMap::new("https://example.org/Id/mrn")).unwrap();
//! assert_eq!(patient["birthDate"], "1980-05-17");
//! assert_eq!(patient["identifier"][0]["value"], "K123");
//! ```

pub mod batch;
pub mod datetime;
pub mod delimiters;
pub mod encode;
pub mod message;
pub mod patient;
pub mod map;
pub mod visit;

pub use batch::{batch_messages, split_batch};
pub use delimiters::Delimiters;
pub use message::{Component, Field, Message, MessageType, ParseError, Repetition, Segment};
pub use patient::{patient_from_pid, FieldError, IdentifierMap};
pub use visit::Visit;
