//! Normalised names, postcodes and phone numbers, and the NYSIIS phonetic code.

use unicode_normalization::UnicodeNormalization;

/// A name as compared: letters only, lower case, accents removed (`O'Brien` → `obrien`,
/// `Zoë` → `zoe`).
pub fn name(value: &str) -> String {
    if value.is_ascii() {
        // The same result without decomposing (most names, and every normalised one).
        return value.bytes().filter(u8::is_ascii_alphabetic).map(|b| char::from(b.to_ascii_lowercase())).collect();
    }
    value.nfkd().filter(|c| c.is_alphabetic()).flat_map(char::to_lowercase).filter(char::is_ascii_lowercase).collect()
}

/// The parts of a name: `Smith-Jones` and `Smith Jones` are `smith` and `jones`, besides
/// the whole.
pub fn name_parts(value: &str) -> Vec<String> {
    let mut out: Vec<String> = value.split(|c: char| c == '-' || c.is_whitespace()).map(name).filter(|p| !p.is_empty()).collect();
    let whole = name(value);
    if out.len() > 1 && !whole.is_empty() {
        out.push(whole);
    }
    out
}

/// A UK postcode without spaces, upper case (`sw1a 1aa` → `SW1A1AA`).
pub fn postcode(value: &str) -> String {
    value.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_uppercase()).collect()
}

/// The outward code of a normalised postcode (`SW1A1AA` → `SW1A`): all but the last three.
pub fn outward(postcode: &str) -> &str {
    if postcode.len() > 3 {
        &postcode[..postcode.len() - 3]
    } else {
        postcode
    }
}

/// A phone number's last ten digits (`+44 20 7946 0018` and `020 7946 0018` agree).
pub fn phone(value: &str) -> String {
    let digits: String = value.chars().filter(char::is_ascii_digit).collect();
    digits[digits.len().saturating_sub(10)..].to_string()
}

fn vowel(c: u8) -> bool {
    matches!(c, b'A' | b'E' | b'I' | b'O' | b'U')
}

/// The NYSIIS code of a name (New York State Identification and Intelligence System), the
/// original algorithm, without a length limit: names that sound alike share it
/// (`MacDonald`/`McDonald`, `Phillips`/`Filips`).
pub fn nysiis(value: &str) -> String {
    let mut w: Vec<u8> = name(value).to_ascii_uppercase().into_bytes();
    if w.is_empty() {
        return String::new();
    }
    // 1. The start.
    for (from, to) in [(&b"MAC"[..], &b"MCC"[..]), (b"KN", b"NN"), (b"K", b"C"), (b"PH", b"FF"), (b"PF", b"FF"), (b"SCH", b"SSS")] {
        if w.starts_with(from) {
            w.splice(..from.len(), to.iter().copied());
            break;
        }
    }
    // 2. The end.
    let n = w.len();
    if n >= 2 {
        let end = &w[n - 2..];
        if end == b"EE" || end == b"IE" {
            w.truncate(n - 2);
            w.push(b'Y');
        } else if [&b"DT"[..], b"RT", b"RD", b"NT", b"ND"].contains(&end) {
            w.truncate(n - 2);
            w.push(b'D');
        }
    }
    // 3–4. The first letter as it is; the rest transcoded.
    let mut key = vec![w[0]];
    let mut i = 1;
    while i < w.len() {
        let c = w[i];
        let next = w.get(i + 1).copied();
        let replaced: Vec<u8> = match c {
            b'E' if next == Some(b'V') => {
                i += 1;
                b"AF".to_vec()
            }
            c if vowel(c) => b"A".to_vec(),
            b'Q' => b"G".to_vec(),
            b'Z' => b"S".to_vec(),
            b'M' => b"N".to_vec(),
            b'K' if next == Some(b'N') => b"N".to_vec(),
            b'K' => b"C".to_vec(),
            b'S' if w.get(i + 1..i + 3) == Some(&b"CH"[..]) => {
                i += 2;
                b"SSS".to_vec()
            }
            b'P' if next == Some(b'H') => {
                i += 1;
                b"FF".to_vec()
            }
            b'H' if !vowel(w[i - 1]) || next.is_some_and(|n| !vowel(n)) || next.is_none() => vec![w[i - 1]],
            b'W' if vowel(w[i - 1]) => vec![w[i - 1]],
            c => vec![c],
        };
        for r in replaced {
            if key.last() != Some(&r) {
                key.push(r);
            }
        }
        i += 1;
    }
    // 5–7. The end of the key.
    if key.len() > 1 && key.last() == Some(&b'S') {
        key.pop();
    }
    if key.len() > 2 && key.ends_with(b"AY") {
        key.truncate(key.len() - 2);
        key.push(b'Y');
    }
    if key.len() > 1 && key.last() == Some(&b'A') {
        key.pop();
    }
    String::from_utf8(key).expect("ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_and_codes() {
        assert_eq!(name("O'Brien"), "obrien");
        assert_eq!(name("Zoë"), "zoe");
        assert_eq!(name_parts("Smith-Jones"), ["smith", "jones", "smithjones"]);
        assert_eq!(postcode("sw1a 1aa"), "SW1A1AA");
        assert_eq!(outward("SW1A1AA"), "SW1A");
        assert_eq!(phone("+44 20 7946 0018"), phone("020 7946 0018"));
        assert_eq!(nysiis("Smith"), "SNAT");
        assert_eq!(nysiis("MacDonald"), nysiis("McDonald"));
        assert_eq!(nysiis("Phillips"), nysiis("Filips"));
        assert_ne!(nysiis("Smith"), nysiis("Jones"));
        assert_eq!(nysiis(""), "");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,40}") {
            let _ = (nysiis(&s), name_parts(&s), postcode(&s), phone(&s));
        }
    }
}
