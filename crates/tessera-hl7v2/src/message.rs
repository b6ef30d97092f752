//! Messages in ER7, HL7 v2's pipe-and-hat encoding: parsing into segments, fields,
//! repetitions, components and subcomponents, and writing back.
//!
//! Everything is numbered from 1, as HL7 numbers it: `PID-5.1.2` is
//! `segment("PID").get(5, 1, 1, 2)`. In MSH, field 1 is the field separator and field 2
//! the encoding characters, so MSH-9 is the message type as in the standard.
//!
//! Text is kept decoded: escape sequences are read once, while parsing, and
//! [`Message::encode`] writes them again.

use crate::delimiters::Delimiters;
use std::fmt;

/// Why text is not an HL7 v2 message, and where: the message in a batch, the segment
/// (counted from 1, blank lines not counted), its name and the field when known.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct ParseError {
    /// The message in a batch file, from 1; `None` for a single message and for text
    /// outside any message (then `segment` counts the segments of the whole file).
    pub message: Option<usize>,
    /// The segment, from 1.
    pub segment: usize,
    /// The segment's name as written (cut short when long), when it has one.
    pub segment_name: Option<String>,
    /// The field, numbered as in HL7 (MSH-2 is 2).
    pub field: Option<usize>,
    /// What is wrong.
    pub problem: String,
}

impl ParseError {
    pub(crate) fn new(segment: usize, name: Option<&str>, field: Option<usize>, problem: impl Into<String>) -> ParseError {
        let segment_name = name.map(|n| {
            let short: String = n.chars().take(20).collect();
            if short.len() < n.len() { format!("{short}…") } else { short }
        });
        ParseError { message: None, segment, segment_name, field, problem: problem.into() }
    }

    fn describe(&self) -> String {
        let mut s = String::new();
        if let Some(m) = self.message {
            s.push_str(&format!("message {m}, "));
        }
        s.push_str(&format!("segment {}", self.segment));
        if let Some(name) = &self.segment_name {
            s.push_str(&format!(" ({name})"));
        }
        if let Some(f) = self.field {
            s.push_str(&format!(", field {f}"));
        }
        s.push_str(": ");
        s.push_str(&self.problem);
        s
    }
}

/// One subcomponent-separated part of a repetition: its subcomponents' text, decoded.
/// Always at least one subcomponent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    subcomponents: Vec<String>,
}

impl Component {
    /// A component of these subcomponents (none gives one empty subcomponent).
    pub fn new(subcomponents: Vec<String>) -> Component {
        if subcomponents.is_empty() { Component { subcomponents: vec![String::new()] } } else { Component { subcomponents } }
    }

    /// All subcomponents, in order.
    pub fn subcomponents(&self) -> &[String] {
        &self.subcomponents
    }

    /// Subcomponent `n` (from 1).
    pub fn subcomponent(&self, n: usize) -> Option<&str> {
        n.checked_sub(1).and_then(|i| self.subcomponents.get(i)).map(String::as_str)
    }

    /// The first subcomponent's text: the whole component when it has no subcomponents.
    pub fn value(&self) -> &str {
        &self.subcomponents[0]
    }

    /// Whether every subcomponent is empty.
    pub fn is_empty(&self) -> bool {
        self.subcomponents.iter().all(String::is_empty)
    }
}

impl From<&str> for Component {
    fn from(text: &str) -> Component {
        Component::new(vec![text.to_string()])
    }
}

/// One occurrence of a field. Always at least one component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repetition {
    components: Vec<Component>,
}

impl Repetition {
    /// A repetition of these components (none gives one empty component).
    pub fn new(components: Vec<Component>) -> Repetition {
        if components.is_empty() { Repetition { components: vec![Component::new(Vec::new())] } } else { Repetition { components } }
    }

    /// All components, in order.
    pub fn components(&self) -> &[Component] {
        &self.components
    }

    /// Component `n` (from 1).
    pub fn component(&self, n: usize) -> Option<&Component> {
        n.checked_sub(1).and_then(|i| self.components.get(i))
    }

    /// The first component's first subcomponent.
    pub fn value(&self) -> &str {
        self.components[0].value()
    }

    /// Whether every component is empty.
    pub fn is_empty(&self) -> bool {
        self.components.iter().all(Component::is_empty)
    }
}

impl From<&str> for Repetition {
    fn from(text: &str) -> Repetition {
        Repetition::new(vec![Component::from(text)])
    }
}

/// A field: its repetitions. An empty field (`||`) has none.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field {
    repetitions: Vec<Repetition>,
}

impl Field {
    /// A field of these repetitions. A single empty repetition is an empty field, as it
    /// reads back.
    pub fn new(repetitions: Vec<Repetition>) -> Field {
        if repetitions.len() == 1 && repetitions[0].components.len() == 1 && repetitions[0].components[0].subcomponents == [""] {
            Field::default()
        } else {
            Field { repetitions }
        }
    }

    /// All repetitions, in order; none when the field is empty.
    pub fn repetitions(&self) -> &[Repetition] {
        &self.repetitions
    }

    /// Repetition `n` (from 1).
    pub fn repetition(&self, n: usize) -> Option<&Repetition> {
        n.checked_sub(1).and_then(|i| self.repetitions.get(i))
    }

    /// Component `n` of the first repetition.
    pub fn component(&self, n: usize) -> Option<&Component> {
        self.repetition(1).and_then(|r| r.component(n))
    }

    /// The first subcomponent of the first component of the first repetition, or `""`.
    pub fn value(&self) -> &str {
        self.repetitions.first().map(Repetition::value).unwrap_or("")
    }

    /// Whether the field has no content.
    pub fn is_empty(&self) -> bool {
        self.repetitions.iter().all(Repetition::is_empty)
    }
}

impl From<&str> for Field {
    fn from(text: &str) -> Field {
        Field::new(vec![Repetition::from(text)])
    }
}

/// A segment: its name (`PID`) and fields, numbered from 1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    name: String,
    fields: Vec<Field>,
}

impl Segment {
    /// A segment named `name` with `fields` (the first is field 1). For MSH, fields 1 and 2
    /// are set from the message's delimiters by [`Message::new`].
    pub fn new(name: &str, fields: Vec<Field>) -> Segment {
        Segment { name: name.to_string(), fields }
    }

    /// The segment's name: `MSH`, `PID`, `ZPI`, …
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All fields; the first is field 1.
    pub fn fields(&self) -> &[Field] {
        &self.fields
    }

    /// Field `n` (from 1), `None` beyond the last field written.
    pub fn field(&self, n: usize) -> Option<&Field> {
        n.checked_sub(1).and_then(|i| self.fields.get(i))
    }

    /// The decoded text at field `field`, repetition `rep`, component `component`,
    /// subcomponent `sub` (all from 1); `None` when absent or empty.
    pub fn get(&self, field: usize, rep: usize, component: usize, sub: usize) -> Option<&str> {
        let text = self.field(field)?.repetition(rep)?.component(component)?.subcomponent(sub)?;
        (!text.is_empty()).then_some(text)
    }

    /// The decoded text of field `field`'s first repetition, first component, first
    /// subcomponent; `None` when empty.
    pub fn value(&self, field: usize) -> Option<&str> {
        self.get(field, 1, 1, 1)
    }

    fn encode_into(&self, d: &Delimiters, out: &mut String) {
        out.push_str(&self.name);
        let is_msh = self.name == "MSH";
        for (i, field) in self.fields.iter().enumerate() {
            if is_msh && i == 0 {
                out.push(d.field);
                continue;
            }
            if is_msh && i == 1 {
                out.push_str(&d.encoding_characters());
                continue;
            }
            out.push(d.field);
            for (r, rep) in field.repetitions.iter().enumerate() {
                if r > 0 {
                    out.push(d.repetition);
                }
                for (c, component) in rep.components.iter().enumerate() {
                    if c > 0 {
                        out.push(d.component);
                    }
                    for (s, sub) in component.subcomponents.iter().enumerate() {
                        if s > 0 {
                            out.push(d.subcomponent);
                        }
                        out.push_str(&d.escape(sub));
                    }
                }
            }
        }
    }
}

/// The type of a message, from MSH-9: `ADT^A01^ADT_A01`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageType {
    /// MSH-9.1, the message code: `ADT`, `ORU`, …
    pub code: String,
    /// MSH-9.2, the trigger event: `A01`, `R01`, …
    pub trigger: Option<String>,
    /// MSH-9.3, the message structure: `ADT_A01`, …
    pub structure: Option<String>,
}

/// `ADT^A01`: the code and trigger, as people name a message type.
impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.code)?;
        if let Some(t) = &self.trigger {
            write!(f, "^{t}")?;
        }
        Ok(())
    }
}

/// An HL7 v2 message: its delimiters and segments, the first of which is MSH.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    delimiters: Delimiters,
    segments: Vec<Segment>,
}

/// The segments of a text: separated by carriage returns, line feeds or both, in any mix;
/// the MLLP frame characters (vertical tab, file separator) count as separators too. Blank
/// lines are skipped and a byte order mark at the start of a line is dropped.
pub(crate) fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.split(['\r', '\n', '\u{0b}', '\u{1c}']).map(|l| l.strip_prefix('\u{feff}').unwrap_or(l)).filter(|l| !l.trim().is_empty())
}

/// Whether `name` is a segment name: three capital letters or digits (`PID`, `ZU1`).
fn valid_name(name: &str) -> bool {
    name.len() == 3 && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

impl Message {
    /// Parses one message. Segments end with a carriage return, a line feed or both (any
    /// mix); blank lines are skipped, as are the MLLP frame characters and a byte order
    /// mark. The first segment must be MSH, and there must be no other: see
    /// [`crate::split_batch`] for files with several messages. Segments HL7 does not define
    /// (`Z` segments) are kept like any other.
    pub fn parse(text: &str) -> Result<Message, ParseError> {
        let lines: Vec<&str> = lines(text).collect();
        Message::parse_lines(&lines)
    }

    pub(crate) fn parse_lines(lines: &[&str]) -> Result<Message, ParseError> {
        let Some(first) = lines.first() else {
            return Err(ParseError::new(1, None, None, "no segments: a message starts with an MSH segment"));
        };
        let (delimiters, msh) = parse_msh(first)?;
        let mut segments = Vec::with_capacity(lines.len());
        segments.push(msh);
        for (i, line) in lines.iter().enumerate().skip(1) {
            let number = i + 1;
            let (name, rest) = match line.find(delimiters.field) {
                Some(p) => (&line[..p], Some(&line[p + delimiters.field.len_utf8()..])),
                None => (*line, None),
            };
            if !valid_name(name) {
                return Err(ParseError::new(number, Some(name), None, "a segment starts with its name: three capital letters or digits"));
            }
            if name == "MSH" {
                return Err(ParseError::new(number, Some(name), None, "a second MSH segment: a message has one (a file of several messages is a batch)"));
            }
            let fields = rest.map(|r| r.split(delimiters.field).map(|f| parse_field(f, &delimiters)).collect()).unwrap_or_default();
            segments.push(Segment { name: name.to_string(), fields });
        }
        Ok(Message { delimiters, segments })
    }

    /// A message of these delimiters and segments. The first segment must be MSH (its
    /// fields 1 and 2 are set from `delimiters`) and no other may be; every name must be
    /// three capital letters or digits.
    pub fn new(delimiters: Delimiters, mut segments: Vec<Segment>) -> Result<Message, ParseError> {
        if let Err(e) = Delimiters::new(delimiters.field, &delimiters.encoding_characters()) {
            return Err(ParseError::new(1, Some("MSH"), Some(2), e));
        }
        for (i, s) in segments.iter().enumerate() {
            if !valid_name(&s.name) {
                return Err(ParseError::new(i + 1, Some(&s.name), None, "a segment's name is three capital letters or digits"));
            }
            if (i == 0) != (s.name == "MSH") {
                return Err(ParseError::new(i + 1, Some(&s.name), None, "a message has one MSH segment, its first"));
            }
        }
        let Some(msh) = segments.first_mut() else {
            return Err(ParseError::new(1, None, None, "no segments: a message starts with an MSH segment"));
        };
        while msh.fields.len() < 2 {
            msh.fields.push(Field::default());
        }
        msh.fields[0] = Field::from(delimiters.field.to_string().as_str());
        msh.fields[1] = Field::from(delimiters.encoding_characters().as_str());
        Ok(Message { delimiters, segments })
    }

    /// Writes the message in ER7: each segment ended by a carriage return, text escaped.
    /// [`Message::parse`] reads it back as the same message.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for segment in &self.segments {
            segment.encode_into(&self.delimiters, &mut out);
            out.push('\r');
        }
        out
    }

    /// The message's delimiters.
    pub fn delimiters(&self) -> &Delimiters {
        &self.delimiters
    }

    /// All segments, MSH first.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// The first segment named `name`.
    pub fn segment(&self, name: &str) -> Option<&Segment> {
        self.segments.iter().find(|s| s.name == name)
    }

    /// Every segment named `name`, in order.
    pub fn segments_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Segment> + 'a {
        self.segments.iter().filter(move |s| s.name == name)
    }

    /// The MSH segment.
    pub fn msh(&self) -> &Segment {
        &self.segments[0]
    }

    /// MSH-9: the message code, trigger event and structure; `None` when MSH-9.1 is empty.
    pub fn message_type(&self) -> Option<MessageType> {
        let msh = self.msh();
        let code = msh.get(9, 1, 1, 1)?.trim().to_string();
        let part = |n| msh.get(9, 1, n, 1).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        (!code.is_empty()).then(|| MessageType { code, trigger: part(2), structure: part(3) })
    }

    /// MSH-10, the message control id.
    pub fn control_id(&self) -> Option<&str> {
        self.msh().value(10)
    }

    /// MSH-12.1, the HL7 version (`2.5.1`).
    pub fn version(&self) -> Option<&str> {
        self.msh().value(12)
    }

    /// MSH-3.1, the sending application.
    pub fn sending_application(&self) -> Option<&str> {
        self.msh().value(3)
    }

    /// MSH-4.1, the sending facility.
    pub fn sending_facility(&self) -> Option<&str> {
        self.msh().value(4)
    }
}

/// MSH: the field separator is the character after `MSH`, MSH-2 runs to the next one.
fn parse_msh(line: &str) -> Result<(Delimiters, Segment), ParseError> {
    let name: String = line.chars().take(3).collect();
    if name != "MSH" {
        return Err(ParseError::new(1, Some(&name), None, "the first segment of a message is MSH"));
    }
    let rest = &line[3..];
    let Some(field) = rest.chars().next() else {
        return Err(ParseError::new(1, Some("MSH"), Some(1), "MSH has no field separator"));
    };
    if field.is_alphanumeric() || field.is_whitespace() || field.is_control() {
        return Err(ParseError::new(1, Some("MSH"), Some(1), format!("{field:?} cannot be the field separator (letters, digits, spaces and control characters are text)")));
    }
    let rest = &rest[field.len_utf8()..];
    let (encoding, rest) = match rest.find(field) {
        Some(p) => (&rest[..p], Some(&rest[p + field.len_utf8()..])),
        None => (rest, None),
    };
    let delimiters = Delimiters::new(field, encoding).map_err(|e| ParseError::new(1, Some("MSH"), Some(2), e))?;
    let mut fields = vec![Field::from(field.to_string().as_str()), Field::from(delimiters.encoding_characters().as_str())];
    if let Some(rest) = rest {
        fields.extend(rest.split(field).map(|f| parse_field(f, &delimiters)));
    }
    Ok((delimiters, Segment { name, fields }))
}

fn parse_field(raw: &str, d: &Delimiters) -> Field {
    if raw.is_empty() {
        return Field::default();
    }
    let repetitions = raw
        .split(d.repetition)
        .map(|rep| Repetition { components: rep.split(d.component).map(|c| Component { subcomponents: c.split(d.subcomponent).map(|s| d.unescape(s)).collect() }).collect() })
        .collect();
    Field { repetitions }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADT: &str = "MSH|^~\\&|PAS|RXX|EPR|RXX|20240102103000||ADT^A01^ADT_A01|MSG0001|P|2.5.1\r\
EVN|A01|20240102103000\r\
PID|1||123456^^^RXX^MR~9434765919^^^NHS^NH||SMITH^JOHN^PAUL^^MR~SMYTHE^JOHN||19800101|M|||1 HIGH ST^^LEEDS^^LS1 1AA^GBR^H\r\
ZPI|custom|A\\T\\E\r";

    #[test]
    fn fields_repetitions_components_subcomponents() {
        let msg = Message::parse(ADT).unwrap();
        assert_eq!(msg.segments().len(), 4);
        let pid = msg.segment("PID").unwrap();
        assert_eq!(pid.name(), "PID");
        assert_eq!(pid.value(1), Some("1"));
        assert_eq!(pid.value(2), None);
        let ids = pid.field(3).unwrap();
        assert_eq!(ids.repetitions().len(), 2);
        assert_eq!(ids.repetition(2).unwrap().component(1).unwrap().value(), "9434765919");
        assert_eq!(pid.get(3, 2, 4, 1), Some("NHS"));
        assert_eq!(pid.get(5, 1, 5, 1), Some("MR"));
        assert_eq!(pid.get(5, 2, 1, 1), Some("SMYTHE"));
        assert_eq!(pid.get(5, 3, 1, 1), None);
        assert_eq!(pid.get(11, 1, 7, 1), Some("H"));
        assert_eq!(pid.get(99, 1, 1, 1), None);
        assert_eq!(pid.get(0, 1, 1, 1), None);
        let msh = msg.msh();
        assert_eq!(msh.value(1), Some("|"));
        assert_eq!(msh.value(2), Some("^~\\&"));
        assert_eq!(msh.get(9, 1, 2, 1), Some("A01"));
        let t = msg.message_type().unwrap();
        assert_eq!((t.code.as_str(), t.trigger.as_deref(), t.structure.as_deref()), ("ADT", Some("A01"), Some("ADT_A01")));
        assert_eq!(t.to_string(), "ADT^A01");
        assert_eq!(msg.control_id(), Some("MSG0001"));
        assert_eq!(msg.version(), Some("2.5.1"));
        assert_eq!(msg.sending_application(), Some("PAS"));
        assert_eq!(msg.sending_facility(), Some("RXX"));
    }

    #[test]
    fn subcomponents_and_z_segments() {
        let msg = Message::parse("MSH|^~\\&|A|B\rPID|1||42^^^RXX&1.2.3&ISO^MR\rZPI|custom|A\\T\\E\rZU1\r").unwrap();
        let pid = msg.segment("PID").unwrap();
        let authority = pid.field(3).unwrap().component(4).unwrap();
        assert_eq!(authority.subcomponents(), ["RXX", "1.2.3", "ISO"]);
        assert_eq!(authority.subcomponent(2), Some("1.2.3"));
        assert_eq!(authority.subcomponent(4), None);
        let z = msg.segment("ZPI").unwrap();
        assert_eq!(z.value(2), Some("A&E"));
        assert_eq!(msg.segment("ZU1").unwrap().fields().len(), 0);
        assert_eq!(msg.segments_named("Z").count(), 0);
    }

    #[test]
    fn segment_endings() {
        let cr = Message::parse(ADT).unwrap();
        for sep in ["\n", "\r\n", "\r\r\n\n  \n"] {
            let text = ADT.replace('\r', sep);
            assert_eq!(Message::parse(&text).unwrap(), cr, "{sep:?}");
        }
        let mixed = "\u{feff}MSH|^~\\&|A\r\nEVN|A01\nPID|1\r\rZZZ|x\r\n";
        let msg = Message::parse(mixed).unwrap();
        assert_eq!(msg.segments().iter().map(Segment::name).collect::<Vec<_>>(), ["MSH", "EVN", "PID", "ZZZ"]);
    }

    #[test]
    fn repeated_segments() {
        let msg = Message::parse("MSH|^~\\&\rOBX|1|NM\rOBX|2|ST\rNTE|1\rOBX|3|TX").unwrap();
        let set: Vec<_> = msg.segments_named("OBX").map(|s| s.value(1).unwrap()).collect();
        assert_eq!(set, ["1", "2", "3"]);
        assert_eq!(msg.segment("OBX").unwrap().value(2), Some("NM"));
    }

    #[test]
    fn other_delimiters() {
        let msg = Message::parse("MSH!@*$%!APP!FAC!!!!!ADT@A04\rPID!1!!7@@@X%Y!!DOE@JANE*ROE@JO!!!!!!A$F$B").unwrap();
        assert_eq!(msg.delimiters().field, '!');
        assert_eq!(msg.message_type().unwrap().to_string(), "ADT^A04");
        let pid = msg.segment("PID").unwrap();
        assert_eq!(pid.get(3, 1, 4, 2), Some("Y"));
        assert_eq!(pid.get(5, 2, 2, 1), Some("JO"));
        assert_eq!(pid.value(11), Some("A!B"));
    }

    #[test]
    fn truncated_msh2() {
        let msg = Message::parse("MSH|^~|A\rPID|1||a&b\\F\\").unwrap();
        assert_eq!(msg.delimiters().subcomponent, '&');
        assert_eq!(msg.segment("PID").unwrap().get(3, 1, 1, 2), Some("b|"));
        let v27 = Message::parse("MSH|^~\\&#|A\rPID|1||AB#\\P\\").unwrap();
        assert_eq!(v27.segment("PID").unwrap().value(3), Some("AB##"));
        assert_eq!(v27.msh().value(2), Some("^~\\&#"));
    }

    #[test]
    fn errors_say_where() {
        let e = Message::parse("").unwrap_err();
        assert!(e.problem.contains("no segments"));
        let e = Message::parse("PID|1\rMSH|^~\\&").unwrap_err();
        assert_eq!((e.segment, e.segment_name.as_deref()), (1, Some("PID")));
        let e = Message::parse("MSH").unwrap_err();
        assert_eq!(e.field, Some(1));
        let e = Message::parse("MSH|^^\\&|A").unwrap_err();
        assert_eq!((e.segment, e.field), (1, Some(2)));
        assert_eq!(e.to_string(), "segment 1 (MSH), field 2: '^' is used for two different encoding characters");
        let e = Message::parse("MSH|^~\\&|A\rPID|1\rfree text here\r").unwrap_err();
        assert_eq!((e.segment, e.segment_name.as_deref()), (3, Some("free text here")));
        let e = Message::parse("MSH|^~\\&|A\rMSH|^~\\&|B").unwrap_err();
        assert!(e.problem.contains("second MSH"));
    }

    #[test]
    fn encode_round_trip() {
        let msg = Message::parse(ADT).unwrap();
        let text = msg.encode();
        assert!(text.starts_with("MSH|^~\\&|PAS|RXX|"));
        assert!(text.contains("ZPI|custom|A\\T\\E\r"));
        assert_eq!(Message::parse(&text).unwrap(), msg);
        let built = Message::new(
            Delimiters::default(),
            vec![
                Segment::new("MSH", vec![Field::default(), Field::default(), Field::from("APP")]),
                Segment::new("NTE", vec![Field::from("1"), Field::default(), Field::from("a|b^c\nd")]),
            ],
        )
        .unwrap();
        assert_eq!(built.encode(), "MSH|^~\\&|APP\rNTE|1||a\\F\\b\\S\\c\\.br\\d\r");
        assert_eq!(Message::parse(&built.encode()).unwrap(), built);
        assert!(Message::new(Delimiters::default(), vec![Segment::new("PID", vec![])]).is_err());
        assert!(Message::new(Delimiters::default(), vec![]).is_err());
    }
}
