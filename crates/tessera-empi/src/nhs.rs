//! NHS numbers: ten digits, the last a modulus-11 check digit
//! (<https://www.datadictionary.nhs.uk/attributes/nhs_number.html>).

use std::fmt;

/// The identifier system of the NHS number in FHIR.
pub const SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

/// A valid NHS number, normalised to its ten digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NhsNumber(String);

/// Why a value is not an NHS number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NhsError {
    /// Not ten digits once spaces and hyphens are removed.
    Format,
    /// The check digit does not match the first nine (or the remainder gives 10, which no
    /// NHS number has).
    CheckDigit,
}

impl fmt::Display for NhsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NhsError::Format => f.write_str("an NHS number is ten digits (spaces allowed, as in 943 476 5919)"),
            NhsError::CheckDigit => f.write_str("the NHS number's check digit is wrong: a digit is mistyped or two are swapped"),
        }
    }
}

impl std::error::Error for NhsError {}

/// The check digit of nine digits: 11 − (Σ digit × (10 − position)) mod 11, where 11 gives
/// 0; `None` when it would be 10 (such numbers are never issued).
pub fn check_digit(first_nine: &[u8; 9]) -> Option<u8> {
    let sum: u32 = first_nine.iter().enumerate().map(|(i, d)| u32::from(*d) * (10 - i as u32)).sum();
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        d => Some(d as u8),
    }
}

impl NhsNumber {
    /// Parses a value as given by a person or a system: ten digits, with any spaces or
    /// hyphens between them.
    pub fn parse(value: &str) -> Result<NhsNumber, NhsError> {
        let digits: String = value.chars().filter(|c| !matches!(c, ' ' | '-' | '\u{a0}')).collect();
        if digits.len() != 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(NhsError::Format);
        }
        let d: Vec<u8> = digits.bytes().map(|b| b - b'0').collect();
        let first: [u8; 9] = d[..9].try_into().expect("nine digits");
        match check_digit(&first) {
            Some(c) if c == d[9] => Ok(NhsNumber(digits)),
            _ => Err(NhsError::CheckDigit),
        }
    }

    /// The ten digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// As people read it: 3-3-4 (`943 476 5919`).
impl fmt::Display for NhsNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", &self.0[..3], &self.0[3..6], &self.0[6..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_numbers() {
        // Published test numbers.
        for n in ["9434765919", "943 476 5919", "943-476-5919", "4010232137", "9990001234"] {
            let parsed = NhsNumber::parse(n);
            if n == "9990001234" {
                assert!(parsed.is_err(), "{n}");
            } else {
                assert_eq!(parsed.unwrap().as_str(), n.replace([' ', '-'], ""), "{n}");
            }
        }
        assert_eq!(NhsNumber::parse("9434765919").unwrap().to_string(), "943 476 5919");
        assert_eq!(NhsNumber::parse("9434765918"), Err(NhsError::CheckDigit));
        assert_eq!(NhsNumber::parse("943476591"), Err(NhsError::Format));
        assert_eq!(NhsNumber::parse("94347659190"), Err(NhsError::Format));
        assert_eq!(NhsNumber::parse("94347a5919"), Err(NhsError::Format));
        assert_eq!(NhsNumber::parse(""), Err(NhsError::Format));
    }

    proptest! {
        /// Every nine digits with a valid check digit parse; changing any one digit, or
        /// swapping two different adjacent digits among the first nine, is caught.
        #[test]
        fn check_digit_catches_single_errors(first in proptest::array::uniform9(0u8..10), at in 0usize..10, to in 0u8..10) {
            let Some(check) = check_digit(&first) else { return Ok(()) };
            let mut digits: Vec<u8> = first.to_vec();
            digits.push(check);
            let text: String = digits.iter().map(|d| char::from(b'0' + d)).collect();
            prop_assert!(NhsNumber::parse(&text).is_ok());
            if digits[at] != to {
                let mut wrong = digits.clone();
                wrong[at] = to;
                let text: String = wrong.iter().map(|d| char::from(b'0' + d)).collect();
                prop_assert!(NhsNumber::parse(&text).is_err(), "{text}");
            }
            if at < 8 && digits[at] != digits[at + 1] {
                let mut swapped = digits.clone();
                swapped.swap(at, at + 1);
                let text: String = swapped.iter().map(|d| char::from(b'0' + d)).collect();
                prop_assert!(NhsNumber::parse(&text).is_err(), "{text}");
            }
        }

        /// Any input gives a number or an error, never a panic.
        #[test]
        fn never_panics(s in ".{0,30}") {
            let _ = NhsNumber::parse(&s);
        }
    }
}
