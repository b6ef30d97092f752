//! The encoding characters of a message (MSH-1 and MSH-2) and the escape sequences that
//! let text contain them.

/// The characters that separate a message's fields, repetitions, components and
/// subcomponents, read from MSH-1 (field) and MSH-2 (component, repetition, escape,
/// subcomponent and, from v2.7, truncation). The usual set is `|^~\&`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delimiters {
    /// MSH-1, usually `|`.
    pub field: char,
    /// MSH-2 position 1, usually `^`.
    pub component: char,
    /// MSH-2 position 2, usually `~`.
    pub repetition: char,
    /// MSH-2 position 3, usually `\`.
    pub escape: char,
    /// MSH-2 position 4, usually `&`.
    pub subcomponent: char,
    /// MSH-2 position 5 (v2.7 and later), usually `#`; absent in older messages. It marks
    /// truncated values and is not a separator: the parser keeps it as text.
    pub truncation: Option<char>,
}

impl Default for Delimiters {
    fn default() -> Self {
        Delimiters { field: '|', component: '^', repetition: '~', escape: '\\', subcomponent: '&', truncation: None }
    }
}

impl Delimiters {
    /// Reads the delimiters from MSH-1 and MSH-2: `field` is the character after `MSH`,
    /// `encoding` the text of MSH-2. Missing encoding characters take their usual value
    /// (an MSH-2 of `^~` means `^~\&`); more than five, or two separators that are the same
    /// character, or a letter, digit, space or line break as a separator are refused, with
    /// the reason.
    pub fn new(field: char, encoding: &str) -> Result<Delimiters, String> {
        let chars: Vec<char> = encoding.chars().collect();
        if chars.len() > 5 {
            return Err(format!("MSH-2 has {} encoding characters; it has four (^~\\&), or five from v2.7 (^~\\&#)", chars.len()));
        }
        let d = Delimiters::default();
        let delimiters = Delimiters {
            field,
            component: chars.first().copied().unwrap_or(d.component),
            repetition: chars.get(1).copied().unwrap_or(d.repetition),
            escape: chars.get(2).copied().unwrap_or(d.escape),
            subcomponent: chars.get(3).copied().unwrap_or(d.subcomponent),
            truncation: chars.get(4).copied(),
        };
        let all = delimiters.all();
        for (i, c) in all.iter().enumerate() {
            if c.is_alphanumeric() || c.is_whitespace() || c.is_control() {
                return Err(format!("{:?} cannot be an encoding character (letters, digits, spaces and control characters are text)", c));
            }
            if all[..i].contains(c) {
                return Err(format!("{:?} is used for two different encoding characters", c));
            }
        }
        Ok(delimiters)
    }

    /// The separators and escape character, with the truncation character when there is one.
    fn all(&self) -> Vec<char> {
        let mut all = vec![self.field, self.component, self.repetition, self.escape, self.subcomponent];
        all.extend(self.truncation);
        all
    }

    /// MSH-2 as written in a message: `^~\&`, or `^~\&#` with a truncation character.
    pub fn encoding_characters(&self) -> String {
        let mut s: String = [self.component, self.repetition, self.escape, self.subcomponent].iter().collect();
        s.extend(self.truncation);
        s
    }

    /// Whether `c` separates anything in this message (field, repetition, component or
    /// subcomponent).
    pub fn is_separator(&self, c: char) -> bool {
        c == self.field || c == self.component || c == self.repetition || c == self.subcomponent
    }

    /// Writes `text` so that it reads back as itself inside one subcomponent: separators and
    /// the escape character become `\F\ \S\ \T\ \R\ \E\`, a line feed becomes `\.br\`, and
    /// the characters that end a segment or frame a message (carriage return, vertical tab,
    /// file separator) become hexadecimal escapes (`\X0D\`).
    pub fn escape(&self, text: &str) -> String {
        let e = self.escape;
        let mut out = String::with_capacity(text.len());
        for c in text.chars() {
            let code = if c == self.field {
                Some("F")
            } else if c == self.component {
                Some("S")
            } else if c == self.subcomponent {
                Some("T")
            } else if c == self.repetition {
                Some("R")
            } else if c == e {
                Some("E")
            } else {
                match c {
                    '\n' => Some(".br"),
                    '\r' => Some("X0D"),
                    '\u{0b}' => Some("X0B"),
                    '\u{1c}' => Some("X1C"),
                    _ => None,
                }
            };
            match code {
                Some(code) => {
                    out.push(e);
                    out.push_str(code);
                    out.push(e);
                }
                None => out.push(c),
            }
        }
        out
    }

    /// Reads the escape sequences in `raw`, the text of one subcomponent: `\F\ \S\ \T\ \R\
    /// \E\` give the delimiters, `\P\` the truncation character (when the message has one),
    /// `\.br\` a line break, `\Xhh…\` the bytes `hh…` (as UTF-8 when they are, else one
    /// character a byte, as ISO-8859-1). Any other sequence (highlighting `\H\ \N\`,
    /// character sets `\C…\ \M…\`, formatting `\.sp\`, local `\Z…\`), and an escape
    /// character without its closing one, are kept as written.
    pub fn unescape(&self, raw: &str) -> String {
        let e = self.escape;
        if !raw.contains(e) {
            return raw.to_string();
        }
        let mut out = String::with_capacity(raw.len());
        let mut rest = raw;
        while let Some(start) = rest.find(e) {
            out.push_str(&rest[..start]);
            let after = &rest[start + e.len_utf8()..];
            let Some(end) = after.find(e) else {
                // An escape character that nothing closes: text.
                out.push_str(&rest[start..]);
                return out;
            };
            let code = &after[..end];
            match self.decode(code) {
                Some(text) => out.push_str(&text),
                None => {
                    out.push(e);
                    out.push_str(code);
                    out.push(e);
                }
            }
            rest = &after[end + e.len_utf8()..];
        }
        out.push_str(rest);
        out
    }

    /// The text of one escape sequence (`code` without its escape characters), or `None`
    /// when it is not one this parser reads.
    fn decode(&self, code: &str) -> Option<String> {
        let c = match code {
            "F" => self.field,
            "S" => self.component,
            "T" => self.subcomponent,
            "R" => self.repetition,
            "E" => self.escape,
            "P" => self.truncation?,
            ".br" => '\n',
            _ => return code.strip_prefix('X').and_then(decode_hex),
        };
        Some(c.to_string())
    }
}

/// `\Xhh…\`: pairs of hexadecimal digits, read as UTF-8 when they form it, else one
/// character a byte (ISO-8859-1).
fn decode_hex(hex: &str) -> Option<String> {
    if hex.is_empty() || !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Vec<u8> = (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0)).collect();
    match String::from_utf8(bytes) {
        Ok(s) => Some(s),
        Err(e) => Some(e.into_bytes().iter().map(|&b| char::from(b)).collect()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usual_and_short_encoding_characters() {
        let d = Delimiters::new('|', "^~\\&").unwrap();
        assert_eq!(d, Delimiters::default());
        assert_eq!(d.encoding_characters(), "^~\\&");
        let short = Delimiters::new('|', "^~").unwrap();
        assert_eq!((short.escape, short.subcomponent), ('\\', '&'));
        assert_eq!(Delimiters::new('|', "").unwrap(), Delimiters::default());
        let v27 = Delimiters::new('|', "^~\\&#").unwrap();
        assert_eq!(v27.truncation, Some('#'));
        assert_eq!(v27.encoding_characters(), "^~\\&#");
        let odd = Delimiters::new('!', "@*$%").unwrap();
        assert_eq!((odd.field, odd.component, odd.repetition, odd.escape, odd.subcomponent), ('!', '@', '*', '$', '%'));
    }

    #[test]
    fn bad_encoding_characters() {
        assert!(Delimiters::new('|', "^~\\&#!").unwrap_err().contains("encoding characters"));
        assert!(Delimiters::new('|', "^^\\&").unwrap_err().contains("two different"));
        assert!(Delimiters::new('|', "^|").unwrap_err().contains("two different"));
        assert!(Delimiters::new('A', "^~\\&").is_err());
        assert!(Delimiters::new('|', "^ \\&").is_err());
    }

    #[test]
    fn escapes() {
        let d = Delimiters::default();
        assert_eq!(d.unescape(r"A\F\B\S\C\T\D\R\E\E\F"), "A|B^C&D~E\\F");
        assert_eq!(d.unescape(r"line 1\.br\line 2"), "line 1\nline 2");
        assert_eq!(d.unescape(r"\X41\\X0D0A\\XC3A9\\XE9\"), "A\r\né\u{e9}");
        assert_eq!(d.unescape(r"\H\bold\N\ \Cxxyy\ \X4\ \XZZ\"), r"\H\bold\N\ \Cxxyy\ \X4\ \XZZ\");
        assert_eq!(d.unescape(r"\P\"), r"\P\");
        assert_eq!(Delimiters::new('|', "^~\\&#").unwrap().unescape(r"abc\P\"), "abc#");
        assert_eq!(d.unescape(r"open \F"), r"open \F");
        assert_eq!(d.unescape(r"\\F\"), r"\\F\");
        let text = "a|b^c&d~e\\f\ng\rh\u{b}\u{1c}#é";
        assert_eq!(d.unescape(&d.escape(text)), text);
        assert_eq!(d.escape("A&E"), r"A\T\E");
    }
}
