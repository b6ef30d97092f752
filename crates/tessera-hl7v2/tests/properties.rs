//! Properties: the parser never panics on any text, and the encoder and parser agree.

use proptest::prelude::*;
use tessera_hl7v2::patient::{patient_from_pid, IdentifierMap};
use tessera_hl7v2::{batch_messages, split_batch, Component, Delimiters, Field, Message, Repetition, Segment, Visit};

/// Text made of the characters that matter to HL7: separators, escapes, line ends, frame
/// characters, segment names, digits and a little Unicode.
fn hl7ish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            Just("MSH|^~\\&|".to_string()),
            Just("\rPID|".to_string()),
            Just("\nFHS|".to_string()),
            Just("\r\nBTS".to_string()),
            Just("\u{0b}MSH|".to_string()),
            Just("\u{1c}\r".to_string()),
            Just("\\X".to_string()),
            Just("\\.br\\".to_string()),
            Just("ADT^A01".to_string()),
            "[|^~\\\\&#\r\n\"0-9A-Z a-zé]{1,4}",
        ],
        0..60,
    )
    .prop_map(|parts| parts.concat())
}

/// Whether a JSON value holds an empty (or blank) string, array or object.
fn has_empty(v: &serde_json::Value) -> bool {
    use serde_json::Value;
    match v {
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty() || a.iter().any(has_empty),
        Value::Object(o) => o.is_empty() || o.values().any(has_empty),
        _ => false,
    }
}

fn exercise(text: &str) {
    let map = IdentifierMap::new("https://example.org/Id/mrn");
    let _ = split_batch(text);
    for msg in batch_messages(text).into_iter().flatten().chain(Message::parse(text).ok()) {
        assert_eq!(Message::parse(&msg.encode()).as_ref(), Ok(&msg));
        let _ = msg.message_type();
        let _ = Visit::from_message(&msg);
        if let Ok(p) = patient_from_pid(&msg, &map) {
            assert_eq!(p["resourceType"], "Patient");
            assert!(!has_empty(&p), "{p}");
        }
    }
}

/// Text for one subcomponent, with every character that needs escaping.
fn text() -> impl Strategy<Value = String> {
    "[|^~\\\\&!@*$%#\r\n\u{0b}\u{1c}A-Za-z0-9 é\"]{0,8}"
}

fn field() -> impl Strategy<Value = Field> {
    let component = prop::collection::vec(text(), 1..3).prop_map(Component::new);
    let repetition = prop::collection::vec(component, 1..4).prop_map(Repetition::new);
    prop::collection::vec(repetition, 0..3).prop_map(Field::new)
}

fn delimiters() -> impl Strategy<Value = Delimiters> {
    prop_oneof![
        Just(Delimiters::default()),
        Just(Delimiters { truncation: Some('#'), ..Delimiters::default() }),
        Just(Delimiters { field: '!', component: '@', repetition: '*', escape: '$', subcomponent: '%', truncation: None }),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    let name = "(Z[A-Z0-9]{2}|PID|PV1|OBX|NTE)";
    let segment = (name, prop::collection::vec(field(), 0..6)).prop_map(|(n, f)| Segment::new(&n, f));
    (delimiters(), prop::collection::vec(field(), 0..12), prop::collection::vec(segment, 0..6)).prop_map(|(d, msh, rest)| {
        let mut fields = vec![Field::default(), Field::default()];
        fields.extend(msh);
        let mut segments = vec![Segment::new("MSH", fields)];
        segments.extend(rest);
        Message::new(d, segments).unwrap()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_text_never_panics(text in any::<String>()) {
        exercise(&text);
    }

    #[test]
    fn hl7_like_text_never_panics(text in hl7ish()) {
        exercise(&text);
    }

    #[test]
    fn escape_round_trip(d in delimiters(), s in text()) {
        prop_assert_eq!(d.unescape(&d.escape(&s)), s);
    }

    #[test]
    fn encode_then_parse_is_identity(msg in message()) {
        let text = msg.encode();
        prop_assert_eq!(Message::parse(&text).unwrap(), msg.clone());
        let crlf = text.replace('\r', "\r\n");
        prop_assert_eq!(Message::parse(&crlf).unwrap(), msg.clone());
        let twice = format!("\u{0b}{text}\u{1c}\r\u{0b}{text}\u{1c}\r");
        prop_assert_eq!(split_batch(&twice).unwrap(), vec![msg.clone(), msg]);
    }
}
