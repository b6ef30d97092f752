//! Files of several messages: HL7 batch files (`FHS`/`BHS` … `BTS`/`FTS`), messages back
//! to back, and MLLP-framed messages (vertical tab before, file separator and carriage
//! return after).

use crate::message::{lines, Message, ParseError};

/// The batch envelope segments: file and batch headers and trailers. They carry no patient
/// data and are skipped.
const ENVELOPE: [&str; 4] = ["FHS", "BHS", "BTS", "FTS"];

/// Whether `line` is segment `name` (its name followed by a field separator or nothing).
fn is_segment(line: &str, name: &str) -> bool {
    line.strip_prefix(name).is_some_and(|rest| rest.chars().next().is_none_or(|c| !c.is_alphanumeric()))
}

/// Every message in `text`, each parsed on its own: one item per message, in order, so
/// that one broken message does not hide the others. A message starts at each MSH
/// segment; batch envelope segments (FHS, BHS, BTS, FTS) are skipped, and MLLP frame
/// characters and blank lines are ignored. Segments before the first MSH that are not part
/// of the envelope give an error item (one for each run of such segments), whose
/// `segment` counts the segments of the whole file.
pub fn batch_messages(text: &str) -> Vec<Result<Message, ParseError>> {
    let mut out = Vec::new();
    let mut current: Vec<&str> = Vec::new();
    let mut stray = false;
    let mut count = 0;
    let flush = |current: &mut Vec<&str>, out: &mut Vec<Result<Message, ParseError>>, count: &mut usize| {
        if !current.is_empty() {
            *count += 1;
            out.push(Message::parse_lines(current).map_err(|mut e| {
                e.message = Some(*count);
                e
            }));
            current.clear();
        }
    };
    for (i, line) in lines(text).enumerate() {
        if ENVELOPE.iter().any(|name| is_segment(line, name)) {
            flush(&mut current, &mut out, &mut count);
            stray = false;
        } else if is_segment(line, "MSH") {
            flush(&mut current, &mut out, &mut count);
            current.push(line);
            stray = false;
        } else if !current.is_empty() {
            current.push(line);
        } else if !stray {
            stray = true;
            let name = line.split(|c: char| !c.is_alphanumeric()).next().unwrap_or(line);
            out.push(Err(ParseError::new(i + 1, Some(name), None, "outside any message: each message starts with an MSH segment")));
        }
    }
    flush(&mut current, &mut out, &mut count);
    out
}

/// Splits an HL7 file into its messages: a batch file (`FHS`, `BHS`, messages, `BTS`,
/// `FTS`), one or more messages back to back, or MLLP-framed messages. An empty file has
/// none. The first message that does not parse is the error; [`batch_messages`] reads
/// past it.
pub fn split_batch(text: &str) -> Result<Vec<Message>, ParseError> {
    batch_messages(text).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: &str = "FHS|^~\\&|PAS|RXX|||20240101\r\
BHS|^~\\&|PAS|RXX\r\
MSH|^~\\&|PAS|RXX|||20240101||ADT^A04|1|P|2.4\r\
PID|1||111^^^RXX^MR||ONE^ANNA\r\
MSH|^~\\&|PAS|RXX|||20240101||ADT^A08|2|P|2.4\r\
PID|1||222^^^RXX^MR||TWO^BEN\r\
PV1|1|I\r\
BTS|2\r\
FTS|1\r";

    #[test]
    fn batch_file() {
        let messages = split_batch(BATCH).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].control_id(), Some("1"));
        assert_eq!(messages[0].segments().len(), 2);
        assert_eq!(messages[1].segment("PID").unwrap().get(5, 1, 1, 1), Some("TWO"));
        assert_eq!(messages[1].segments().len(), 3);
    }

    #[test]
    fn back_to_back_and_empty() {
        let text = "MSH|^~\\&|A||||||ADT^A01|1\nPID|1\n\nMSH|^~\\&|A||||||ORU^R01|2\nOBX|1\n";
        let messages = split_batch(text).unwrap();
        assert_eq!(messages.iter().map(|m| m.control_id().unwrap()).collect::<Vec<_>>(), ["1", "2"]);
        assert!(split_batch("").unwrap().is_empty());
        assert!(split_batch("\r\n\r\n").unwrap().is_empty());
        assert!(split_batch("FHS|^~\\&\rFTS|0\r").unwrap().is_empty());
    }

    #[test]
    fn mllp_frames() {
        let framed = "\u{0b}MSH|^~\\&|A||||||ADT^A01|1\rPID|1\r\u{1c}\r\u{0b}MSH|^~\\&|A||||||ADT^A03|2\rPID|2\r\u{1c}\r";
        let messages = split_batch(framed).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1].segment("PID").unwrap().value(1), Some("2"));
        assert_eq!(Message::parse("\u{0b}MSH|^~\\&|A\rPID|1\r\u{1c}\r").unwrap().segments().len(), 2);
    }

    #[test]
    fn errors_per_message() {
        let text = "junk line\rmore junk\rMSH|^~\\&|A||||||ADT^A01|1\rMSH|^^|B\rMSH|^~\\&|C||||||ADT^A01|3\r";
        let items = batch_messages(text);
        assert_eq!(items.len(), 4);
        let stray = items[0].as_ref().unwrap_err();
        assert_eq!((stray.message, stray.segment, stray.segment_name.as_deref()), (None, 1, Some("junk")));
        assert!(items[1].is_ok());
        let bad = items[2].as_ref().unwrap_err();
        assert_eq!((bad.message, bad.segment, bad.field), (Some(2), 1, Some(2)));
        assert!(bad.to_string().starts_with("message 2, segment 1 (MSH), field 2: "));
        assert!(items[3].is_ok());
        assert_eq!(split_batch(text).unwrap_err(), stray.clone());
    }
}
