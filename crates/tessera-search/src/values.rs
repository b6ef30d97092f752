//! Value syntax shared by indexing and query parsing: string normalisation, date and
//! date-time ranges, numbers with their implied precision, and literal references.
//!
//! Both sides use the same functions, so an indexed value and a search value written the
//! same way always cover the same range.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;

/// Normalises a string for matching: compatibility decomposition (NFKD), combining marks
/// removed, lower-cased. `"Chalmers"`, `"CHALMERS"` and `"Chälmers"` all become
/// `"chalmers"`; `"ﬁ"` becomes `"fi"`.
///
/// Indexed string values and query string values go through this same function.
pub fn normalize_string(s: &str) -> String {
    if s.is_ascii() {
        return s.to_ascii_lowercase();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.nfkd() {
        if !is_combining_mark(c) {
            out.extend(c.to_lowercase());
        }
    }
    out
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const MICROS_PER_DAY: i64 = 86_400 * MICROS_PER_SECOND;

/// Days from 1970-01-01 to the given civil date (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = (if y >= 0 { y } else { y - 399 }) / 400;
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Reads exactly `n` ASCII digits at `*i`.
fn digits(b: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    let s = b.get(*i..*i + n)?;
    let mut v = 0u32;
    for &c in s {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    *i += n;
    Some(v)
}

/// The instant range a date, partial date or date-time covers, in microseconds since the
/// epoch, both ends inclusive.
///
/// Accepted: `YYYY`, `YYYY-MM`, `YYYY-MM-DD`, and `YYYY-MM-DDThh:mm[:ss[.f…]][Z|±hh:mm]`.
/// The range is that of the precision written: `2020` is all of 2020, `2020-03-04T10:15`
/// the whole minute, `…T10:15:30.25` the 10 ms from .250 to .259999. Values without a
/// time zone (dates, and date-times written without one) are taken as UTC. Years run from
/// 0001 to 9999; anything else is `None`.
pub(crate) fn date_range(s: &str) -> Option<(i64, i64)> {
    let b = s.as_bytes();
    let mut i = 0;
    let year = digits(b, &mut i, 4)? as i64;
    if year == 0 {
        return None;
    }
    if i == b.len() {
        let low = days_from_civil(year, 1, 1) * MICROS_PER_DAY;
        let high = days_from_civil(year + 1, 1, 1) * MICROS_PER_DAY - 1;
        return Some((low, high));
    }
    if b[i] != b'-' {
        return None;
    }
    i += 1;
    let month = digits(b, &mut i, 2)?;
    if !(1..=12).contains(&month) {
        return None;
    }
    if i == b.len() {
        let low = days_from_civil(year, month, 1) * MICROS_PER_DAY;
        let (ny, nm) = if month == 12 {
            (year + 1, 1)
        } else {
            (year, month + 1)
        };
        let high = days_from_civil(ny, nm, 1) * MICROS_PER_DAY - 1;
        return Some((low, high));
    }
    if b[i] != b'-' {
        return None;
    }
    i += 1;
    let day = digits(b, &mut i, 2)?;
    if day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let day_start = days_from_civil(year, month, day) * MICROS_PER_DAY;
    if i == b.len() {
        return Some((day_start, day_start + MICROS_PER_DAY - 1));
    }
    if b[i] != b'T' {
        return None;
    }
    i += 1;
    let hour = digits(b, &mut i, 2)? as i64;
    if b.get(i) != Some(&b':') {
        return None;
    }
    i += 1;
    let minute = digits(b, &mut i, 2)? as i64;
    if hour > 23 || minute > 59 {
        return None;
    }
    let mut low = day_start + (hour * 3600 + minute * 60) * MICROS_PER_SECOND;
    let mut span = 60 * MICROS_PER_SECOND;
    if b.get(i) == Some(&b':') {
        i += 1;
        let second = digits(b, &mut i, 2)? as i64;
        if second > 59 {
            return None;
        }
        low += second * MICROS_PER_SECOND;
        span = MICROS_PER_SECOND;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let start = i;
            let mut micros = 0i64;
            let mut scale = 100_000i64;
            while i < b.len() && b[i].is_ascii_digit() {
                micros += (b[i] - b'0') as i64 * scale;
                scale /= 10;
                i += 1;
            }
            let n = i - start;
            if n == 0 {
                return None;
            }
            low += micros;
            span = 10i64.pow(6u32.saturating_sub(n as u32));
        }
    }
    match b.get(i) {
        None => {}
        Some(b'Z') => i += 1,
        Some(&sign @ (b'+' | b'-')) => {
            i += 1;
            let oh = digits(b, &mut i, 2)? as i64;
            if b.get(i) != Some(&b':') {
                return None;
            }
            i += 1;
            let om = digits(b, &mut i, 2)? as i64;
            if oh > 14 || om > 59 {
                return None;
            }
            let offset = (oh * 60 + om) * 60 * MICROS_PER_SECOND;
            // Local time = UTC + offset, so UTC = local − offset.
            if sign == b'+' {
                low -= offset;
            } else {
                low += offset;
            }
        }
        _ => return None,
    }
    if i != b.len() {
        return None;
    }
    Some((low, low + span - 1))
}

/// A decimal number as written, with the range its precision implies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct NumberRange {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

/// Parses a decimal number (`100`, `-0.5`, `1e2`, `1.50E-3`) and the range its
/// precision implies: half a unit of the last significant digit either side, so `100`
/// covers [99.5, 100.5), `100.0` [99.95, 100.05) and `1e2` [50, 150) (one significant
/// figure; the R4 page's own example gives [95, 105) here, which is the range of
/// `1.0e2`).
pub(crate) fn number_range(s: &str) -> Option<NumberRange> {
    let b = s.as_bytes();
    let mut i = 0;
    if matches!(b.first(), Some(b'+' | b'-')) {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut decimals = 0i32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        decimals = (i - start) as i32;
        if decimals == 0 {
            return None;
        }
    }
    if int_digits == 0 {
        return None;
    }
    let mut exp = 0i32;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let neg = match b.get(i) {
            Some(b'-') => {
                i += 1;
                true
            }
            Some(b'+') => {
                i += 1;
                false
            }
            _ => false,
        };
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() && i - start < 4 {
            exp = exp * 10 + (b[i] - b'0') as i32;
            i += 1;
        }
        if i == start {
            return None;
        }
        if neg {
            exp = -exp;
        }
    }
    if i != b.len() {
        return None;
    }
    let value: f64 = s.parse().ok()?;
    if !value.is_finite() {
        return None;
    }
    let half = 0.5 * 10f64.powi(exp - decimals);
    Some(NumberRange {
        value,
        low: value - half,
        high: value + half,
    })
}

/// The parts of a literal reference.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ReferenceParts {
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub url: Option<String>,
}

/// Is `s` a valid FHIR resource id (`[A-Za-z0-9\-\.]{1,64}`)?
pub(crate) fn is_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.')
}

/// Is `s` an absolute URL (`scheme:…` with an RFC 3986 scheme)?
pub(crate) fn is_absolute(s: &str) -> bool {
    match s.find(':') {
        Some(n) if n > 0 => {
            let scheme = &s.as_bytes()[..n];
            scheme[0].is_ascii_alphabetic()
                && scheme
                    .iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        }
        _ => false,
    }
}

/// Splits `…/Type/id[/_history/vid]` at its end, returning the type, id and the text up
/// to the id (the history part removed). The type must be an R4 resource type.
fn split_type_id(s: &str) -> Option<(&str, &str, &str)> {
    let s = match s.find("/_history/") {
        Some(n) => &s[..n],
        None => s,
    };
    let (rest, id) = s.rsplit_once('/')?;
    let ty = rest.rsplit('/').next()?;
    (is_id(id) && tessera_fhir::definitions::is_resource_type(ty)).then_some((ty, id, s))
}

/// Parses the `reference` of a Reference, or a reference search value.
///
/// * `Type/id` (optionally `/_history/vid`) → type and id;
/// * an absolute URL → `url` (history removed), plus type and id when it ends in
///   `…/Type/id`;
/// * `#contained` and `urn:uuid:`/`urn:oid:` bundle-local references → `None`: they
///   name nothing that can be found outside the resource or bundle;
/// * anything else → `None`.
pub(crate) fn parse_reference(s: &str) -> Option<ReferenceParts> {
    if s.is_empty() || s.starts_with('#') || s.starts_with("urn:uuid:") || s.starts_with("urn:oid:")
    {
        return None;
    }
    if is_absolute(s) {
        return Some(match split_type_id(s) {
            Some((ty, id, url)) => ReferenceParts {
                target_type: Some(ty.to_string()),
                target_id: Some(id.to_string()),
                url: Some(url.to_string()),
            },
            None => ReferenceParts {
                url: Some(s.to_string()),
                ..ReferenceParts::default()
            },
        });
    }
    let (ty, id, _) = split_type_id(s)?;
    // A relative reference is exactly `Type/id`: no further path segments.
    let relative = &s[..s.find("/_history/").unwrap_or(s.len())];
    if relative.len() != ty.len() + 1 + id.len() {
        return None;
    }
    Some(ReferenceParts {
        target_type: Some(ty.to_string()),
        target_id: Some(id.to_string()),
        url: None,
    })
}

/// A canonical URL without its `|version`.
pub(crate) fn strip_version(s: &str) -> &str {
    s.split_once('|').map_or(s, |(u, _)| u)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YEAR_2020: i64 = 1_577_836_800_000_000;

    #[test]
    fn normalization() {
        assert_eq!(normalize_string("Chalmers"), "chalmers");
        assert_eq!(normalize_string("Chälmers"), "chalmers");
        assert_eq!(normalize_string("ÉLODIE"), "elodie");
        assert_eq!(normalize_string("ﬁne"), "fine");
        assert_eq!(normalize_string("Zoë Ångström"), "zoe angstrom");
    }

    #[test]
    fn date_ranges() {
        assert_eq!(
            date_range("2020"),
            Some((YEAR_2020, 1_609_459_200_000_000 - 1))
        );
        let (l, h) = date_range("2020-02").unwrap();
        assert_eq!(l, date_range("2020-02-01").unwrap().0);
        assert_eq!(h, date_range("2020-02-29").unwrap().1);
        assert_eq!(
            date_range("2020-01-01T00:00:00Z"),
            Some((YEAR_2020, YEAR_2020 + 999_999))
        );
        assert_eq!(
            date_range("2020-01-01T00:00:00"),
            Some((YEAR_2020, YEAR_2020 + 999_999))
        );
        assert_eq!(
            date_range("2020-01-01T01:00:00+01:00"),
            Some((YEAR_2020, YEAR_2020 + 999_999))
        );
        assert_eq!(
            date_range("2019-12-31T23:00:00-01:00"),
            Some((YEAR_2020, YEAR_2020 + 999_999))
        );
        assert_eq!(
            date_range("2020-01-01T00:00"),
            Some((YEAR_2020, YEAR_2020 + 60_000_000 - 1))
        );
        assert_eq!(
            date_range("2020-01-01T00:00:00.25Z"),
            Some((YEAR_2020 + 250_000, YEAR_2020 + 259_999))
        );
        assert_eq!(
            date_range("2020-01-01T00:00:00.1234567Z"),
            Some((YEAR_2020 + 123_456, YEAR_2020 + 123_456))
        );
        assert_eq!(date_range("1970-01-01"), Some((0, MICROS_PER_DAY - 1)));
        for bad in [
            "",
            "20",
            "2020-13",
            "2021-02-29",
            "2020-01-01T",
            "2020-01-01T24:00",
            "2020-01-01T10",
            "2020-1-01",
            "abc",
            "0000",
            "2020-01-01T10:00:00.Z",
            "2020-01-01T10:00+1:00",
        ] {
            assert_eq!(date_range(bad), None, "{bad}");
        }
        assert!(date_range("2020-02-29").is_some());
        assert!(date_range("0001-01-01T00:00:00+14:00").is_some());
    }

    #[test]
    fn number_ranges() {
        assert_eq!(
            number_range("100"),
            Some(NumberRange {
                value: 100.0,
                low: 99.5,
                high: 100.5
            })
        );
        let r = number_range("100.00").unwrap();
        assert!((r.low - 99.995).abs() < 1e-9 && (r.high - 100.005).abs() < 1e-9);
        assert_eq!(
            number_range("1e2"),
            Some(NumberRange {
                value: 100.0,
                low: 50.0,
                high: 150.0
            })
        );
        let r = number_range("-0.5").unwrap();
        assert!((r.low + 0.55).abs() < 1e-12 && (r.high + 0.45).abs() < 1e-12);
        for bad in [
            "", "-", ".5", "5.", "1e", "abc", "1,5", "NaN", "inf", "1e99999",
        ] {
            assert_eq!(number_range(bad), None, "{bad}");
        }
    }

    #[test]
    fn references() {
        let p = parse_reference("Patient/123").unwrap();
        assert_eq!(
            (p.target_type.as_deref(), p.target_id.as_deref(), p.url),
            (Some("Patient"), Some("123"), None)
        );
        let p = parse_reference("Patient/123/_history/2").unwrap();
        assert_eq!(p.target_id.as_deref(), Some("123"));
        let p = parse_reference("http://example.org/fhir/Patient/123/_history/2").unwrap();
        assert_eq!(
            p.url.as_deref(),
            Some("http://example.org/fhir/Patient/123")
        );
        assert_eq!(p.target_type.as_deref(), Some("Patient"));
        let p = parse_reference("http://example.org/fhir/ValueSet").unwrap();
        assert_eq!(
            (p.target_type, p.url.as_deref()),
            (None, Some("http://example.org/fhir/ValueSet"))
        );
        for none in [
            "#p1",
            "urn:uuid:1234",
            "",
            "Patient",
            "Foo/123",
            "a/Patient/1",
            "Patient/",
        ] {
            assert_eq!(parse_reference(none), None, "{none}");
        }
    }
}
