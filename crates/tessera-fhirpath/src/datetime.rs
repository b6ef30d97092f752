//! Partial dates, date-times and times with FHIRPath precision semantics.

use std::cmp::Ordering;
use std::fmt;

/// How much of a date/time value is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Precision {
    Year,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    /// Seconds with a fractional part.
    Fraction,
}

/// A `Date`, `DateTime` or `Time` value (which one is carried by the enclosing
/// [`Item`](crate::Item) variant). Fields below the precision are zero.
///
/// For a `Time`, the date fields are unused and `precision` is at least `Hour`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DateTimeValue {
    pub year: i32,
    pub month: u8,
    pub day: u8,
    pub hour: u8,
    pub minute: u8,
    pub second: u8,
    /// Fractional second in nanoseconds.
    pub nanos: u32,
    /// Digits of the fractional second as written (for display), 0 when none.
    pub frac_digits: u8,
    pub precision: Precision,
    /// Offset from UTC in minutes, when given.
    pub offset: Option<i16>,
}

/// What kind of temporal value a string denotes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Temporal {
    Date,
    DateTime,
    Time,
}

impl DateTimeValue {
    fn empty(precision: Precision) -> DateTimeValue {
        DateTimeValue {
            year: 0,
            month: 1,
            day: 1,
            hour: 0,
            minute: 0,
            second: 0,
            nanos: 0,
            frac_digits: 0,
            precision,
            offset: None,
        }
    }

    /// Parses an ISO-8601 / FHIR date or date-time: `2015`, `2015-02`, `2015-02-04`,
    /// `2015-02-04T14`, `2015-02-04T14:34:28.123+10:00`, `2015T` (FHIRPath literal form).
    /// Returns the value and whether a time part was present.
    pub fn parse_date_time(s: &str) -> Option<(DateTimeValue, Temporal)> {
        let b = s.as_bytes();
        let mut v = DateTimeValue::empty(Precision::Year);
        let mut i = 0;
        v.year = digits(b, &mut i, 4)? as i32;
        if i < b.len() && b[i] == b'-' {
            i += 1;
            v.month = digits(b, &mut i, 2)? as u8;
            if !(1..=12).contains(&v.month) {
                return None;
            }
            v.precision = Precision::Month;
            if i < b.len() && b[i] == b'-' {
                i += 1;
                v.day = digits(b, &mut i, 2)? as u8;
                if v.day < 1 || v.day > days_in_month(v.year, v.month) {
                    return None;
                }
                v.precision = Precision::Day;
            }
        }
        if i == b.len() {
            return Some((v, Temporal::Date));
        }
        if b[i] != b'T' {
            return None;
        }
        i += 1;
        if i == b.len() {
            // `@2015T`: a DateTime with the date's precision.
            return Some((v, Temporal::DateTime));
        }
        if v.precision != Precision::Day {
            // A time part needs a full date (except the bare `T` above).
            if !(b[i] == b'Z' || b[i] == b'+' || b[i] == b'-') {
                return None;
            }
        } else if b[i].is_ascii_digit() {
            parse_time_part(b, &mut i, &mut v)?;
        }
        if i < b.len() {
            v.offset = Some(parse_offset(b, &mut i)?);
        }
        if i != b.len() {
            return None;
        }
        Some((v, Temporal::DateTime))
    }

    /// Parses a time of day: `14`, `14:34`, `14:34:28`, `14:34:28.123` (no offset).
    pub fn parse_time(s: &str) -> Option<DateTimeValue> {
        let b = s.as_bytes();
        let mut v = DateTimeValue::empty(Precision::Hour);
        v.year = 0;
        let mut i = 0;
        parse_time_part(b, &mut i, &mut v)?;
        if i != b.len() {
            return None;
        }
        Some(v)
    }

    /// The time-of-day part, as a Time value.
    pub(crate) fn time_part(&self) -> DateTimeValue {
        let mut t = *self;
        t.year = 0;
        t.month = 1;
        t.day = 1;
        t.offset = None;
        t
    }

    /// Converts to UTC when an offset is known (the precision is kept).
    pub(crate) fn in_utc(&self) -> DateTimeValue {
        match self.offset {
            Some(off) if off != 0 && self.precision >= Precision::Hour => {
                let mut v = self.add_minutes(-(off as i64));
                v.offset = Some(0);
                v
            }
            _ => *self,
        }
    }

    /// Shifts by whole minutes (calendar-correct).
    pub(crate) fn add_minutes(&self, minutes: i64) -> DateTimeValue {
        let total = days_from_civil(self.year as i64, self.month as u32, self.day as u32) * 1440
            + self.hour as i64 * 60
            + self.minute as i64
            + minutes;
        let days = total.div_euclid(1440);
        let rem = total.rem_euclid(1440);
        let (y, m, d) = civil_from_days(days);
        DateTimeValue {
            year: y as i32,
            month: m as u8,
            day: d as u8,
            hour: (rem / 60) as u8,
            minute: (rem % 60) as u8,
            ..*self
        }
    }

    /// Adds a number of nanoseconds-precision seconds; used for second/millisecond arithmetic.
    pub(crate) fn add_nanos(&self, nanos: i128) -> DateTimeValue {
        let cur = self.second as i128 * 1_000_000_000 + self.nanos as i128 + nanos;
        let minutes = cur.div_euclid(60_000_000_000);
        let rest = cur.rem_euclid(60_000_000_000);
        let mut v = self.add_minutes(minutes as i64);
        v.second = (rest / 1_000_000_000) as u8;
        v.nanos = (rest % 1_000_000_000) as u32;
        v
    }

    /// Adds calendar months, clamping the day to the month's length.
    pub(crate) fn add_months(&self, months: i64) -> Option<DateTimeValue> {
        let total = self.year as i64 * 12 + (self.month as i64 - 1) + months;
        let year = total.div_euclid(12);
        if !(1..=9999).contains(&year) {
            return None;
        }
        let month = (total.rem_euclid(12) + 1) as u8;
        let day = self.day.min(days_in_month(year as i32, month));
        Some(DateTimeValue {
            year: year as i32,
            month,
            day,
            ..*self
        })
    }

    /// Adds whole days.
    pub(crate) fn add_days(&self, days: i64) -> Option<DateTimeValue> {
        let (y, m, d) = civil_from_days(
            days_from_civil(self.year as i64, self.month as u32, self.day as u32) + days,
        );
        if !(1..=9999).contains(&y) {
            return None;
        }
        Some(DateTimeValue {
            year: y as i32,
            month: m as u8,
            day: d as u8,
            ..*self
        })
    }

    /// Compares two values (both dates/date-times, or both times) field by field.
    /// `None` when the result is unknown because the precisions differ (or only one
    /// side has a time-zone offset).
    pub(crate) fn partial_compare(
        &self,
        other: &DateTimeValue,
        time_only: bool,
    ) -> Option<Ordering> {
        let (a, b) = if time_only {
            (*self, *other)
        } else {
            match (self.offset, other.offset) {
                (Some(_), Some(_)) => (self.in_utc(), other.in_utc()),
                (None, None) => (*self, *other),
                _ => {
                    if self.precision >= Precision::Hour && other.precision >= Precision::Hour {
                        return None;
                    }
                    (*self, *other)
                }
            }
        };
        let start = if time_only {
            Precision::Hour
        } else {
            Precision::Year
        };
        let pa = a.precision.min(Precision::Second);
        let pb = b.precision.min(Precision::Second);
        let common = pa.min(pb);
        for p in [
            Precision::Year,
            Precision::Month,
            Precision::Day,
            Precision::Hour,
            Precision::Minute,
            Precision::Second,
        ] {
            if p < start {
                continue;
            }
            if p > common {
                break;
            }
            let ord = match p {
                Precision::Year => a.year.cmp(&b.year),
                Precision::Month => a.month.cmp(&b.month),
                Precision::Day => a.day.cmp(&b.day),
                Precision::Hour => a.hour.cmp(&b.hour),
                Precision::Minute => a.minute.cmp(&b.minute),
                _ => (a.second, a.nanos).cmp(&(b.second, b.nanos)),
            };
            if ord != Ordering::Equal {
                return Some(ord);
            }
        }
        if pa != pb {
            None
        } else {
            Some(Ordering::Equal)
        }
    }

    /// Number of digits of precision as reported by `precision()`.
    pub(crate) fn precision_digits(&self, kind: Temporal) -> i64 {
        let full = match self.precision {
            Precision::Year => 4,
            Precision::Month => 6,
            Precision::Day => 8,
            Precision::Hour => 10,
            Precision::Minute => 12,
            Precision::Second => 14,
            Precision::Fraction => 17,
        };
        if kind == Temporal::Time {
            full - 8
        } else {
            full
        }
    }

    /// The lowest (or highest) value within the value's precision, expressed at `digits`
    /// precision (4/6/8/10/12/14/17 for dates, 2/4/6/9 for times).
    pub(crate) fn boundary(
        &self,
        kind: Temporal,
        digits: Option<i64>,
        high: bool,
    ) -> Option<(DateTimeValue, Temporal)> {
        let digits = digits.unwrap_or(if kind == Temporal::Time { 9 } else { 17 });
        let digits = if kind == Temporal::Time {
            digits + 8
        } else {
            digits
        };
        let target = match digits {
            4 => Precision::Year,
            6 => Precision::Month,
            8 => Precision::Day,
            10 => Precision::Hour,
            12 => Precision::Minute,
            14 => Precision::Second,
            17 => Precision::Fraction,
            _ => return None,
        };
        if kind == Temporal::Time && target < Precision::Hour {
            return None;
        }
        let mut v = *self;
        // An hour without minutes is not a FHIR dateTime: read `T08` as `T08:00`.
        if kind == Temporal::DateTime && v.precision == Precision::Hour {
            v.precision = Precision::Minute;
        }
        let p = v.precision;
        if p < Precision::Month {
            v.month = if high { 12 } else { 1 };
        }
        if p < Precision::Day {
            v.day = if high {
                days_in_month(v.year, v.month)
            } else {
                1
            };
        }
        if p < Precision::Hour {
            v.hour = if high { 23 } else { 0 };
        }
        if p < Precision::Minute {
            v.minute = if high { 59 } else { 0 };
        }
        if p < Precision::Second {
            v.second = if high { 59 } else { 0 };
        }
        if p < Precision::Fraction {
            v.nanos = if high { 999_000_000 } else { 0 };
        }
        v.precision = target;
        v.frac_digits = if target == Precision::Fraction { 3 } else { 0 };
        let out_kind = if kind == Temporal::Time {
            Temporal::Time
        } else if target <= Precision::Day {
            Temporal::Date
        } else {
            Temporal::DateTime
        };
        if out_kind == Temporal::DateTime && v.offset.is_none() {
            v.offset = Some(if high { -12 * 60 } else { 14 * 60 });
        }
        if out_kind == Temporal::Date {
            v.offset = None;
        }
        // Clear fields below the target precision.
        if target < Precision::Month {
            v.month = 1;
        }
        if target < Precision::Day {
            v.day = 1;
        }
        Some((v, out_kind))
    }

    /// Formats as a FHIRPath/FHIR string (without the `@` of literals).
    pub fn format(&self, kind: Temporal) -> String {
        let mut s = String::with_capacity(32);
        self.write(kind, &mut s).ok();
        s
    }

    fn write(&self, kind: Temporal, f: &mut impl fmt::Write) -> fmt::Result {
        if kind != Temporal::Time {
            write!(f, "{:04}", self.year)?;
            if self.precision >= Precision::Month {
                write!(f, "-{:02}", self.month)?;
            }
            if self.precision >= Precision::Day {
                write!(f, "-{:02}", self.day)?;
            }
            if kind == Temporal::Date || self.precision < Precision::Hour {
                if kind == Temporal::DateTime && self.precision < Precision::Hour {
                    if let Some(off) = self.offset {
                        write_offset(f, off)?;
                    }
                }
                return Ok(());
            }
            f.write_char('T')?;
        }
        write!(f, "{:02}", self.hour)?;
        if self.precision >= Precision::Minute {
            write!(f, ":{:02}", self.minute)?;
        }
        if self.precision >= Precision::Second {
            write!(f, ":{:02}", self.second)?;
        }
        if self.precision >= Precision::Fraction && self.frac_digits > 0 {
            let digits = format!("{:09}", self.nanos);
            let n = (self.frac_digits as usize).min(9);
            write!(f, ".{}", &digits[..n])?;
        }
        if kind == Temporal::DateTime {
            if let Some(off) = self.offset {
                write_offset(f, off)?;
            }
        }
        Ok(())
    }

    /// The current instant in UTC, at millisecond precision.
    pub fn now() -> DateTimeValue {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let secs = since.as_secs() as i64;
        let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
        let rem = secs.rem_euclid(86_400);
        DateTimeValue {
            year: y as i32,
            month: m as u8,
            day: d as u8,
            hour: (rem / 3600) as u8,
            minute: ((rem % 3600) / 60) as u8,
            second: (rem % 60) as u8,
            nanos: (since.subsec_millis()) * 1_000_000,
            frac_digits: 3,
            precision: Precision::Fraction,
            offset: Some(0),
        }
    }
}

fn write_offset(f: &mut impl fmt::Write, off: i16) -> fmt::Result {
    if off == 0 {
        f.write_char('Z')
    } else {
        let sign = if off < 0 { '-' } else { '+' };
        let a = off.unsigned_abs();
        write!(f, "{sign}{:02}:{:02}", a / 60, a % 60)
    }
}

fn digits(b: &[u8], i: &mut usize, n: usize) -> Option<u32> {
    if *i + n > b.len() {
        return None;
    }
    let mut v = 0u32;
    for k in 0..n {
        let c = b[*i + k];
        if !c.is_ascii_digit() {
            return None;
        }
        v = v * 10 + (c - b'0') as u32;
    }
    *i += n;
    Some(v)
}

fn parse_time_part(b: &[u8], i: &mut usize, v: &mut DateTimeValue) -> Option<()> {
    v.hour = digits(b, i, 2)? as u8;
    if v.hour > 23 {
        return None;
    }
    v.precision = Precision::Hour;
    if *i < b.len() && b[*i] == b':' {
        *i += 1;
        v.minute = digits(b, i, 2)? as u8;
        if v.minute > 59 {
            return None;
        }
        v.precision = Precision::Minute;
        if *i < b.len() && b[*i] == b':' {
            *i += 1;
            v.second = digits(b, i, 2)? as u8;
            if v.second > 59 {
                return None;
            }
            v.precision = Precision::Second;
            if *i < b.len() && b[*i] == b'.' {
                *i += 1;
                let start = *i;
                let mut nanos = 0u64;
                while *i < b.len() && b[*i].is_ascii_digit() {
                    if *i - start < 9 {
                        nanos = nanos * 10 + (b[*i] - b'0') as u64;
                    }
                    *i += 1;
                }
                let n = *i - start;
                if n == 0 {
                    return None;
                }
                for _ in n.min(9)..9 {
                    nanos *= 10;
                }
                v.nanos = nanos as u32;
                v.frac_digits = n.min(9) as u8;
                v.precision = Precision::Fraction;
            }
        }
    }
    Some(())
}

fn parse_offset(b: &[u8], i: &mut usize) -> Option<i16> {
    match b.get(*i)? {
        b'Z' => {
            *i += 1;
            Some(0)
        }
        c @ (b'+' | b'-') => {
            let neg = *c == b'-';
            *i += 1;
            let h = digits(b, i, 2)?;
            if b.get(*i) != Some(&b':') {
                return None;
            }
            *i += 1;
            let m = digits(b, i, 2)?;
            if h > 14 || m > 59 {
                return None;
            }
            let off = (h * 60 + m) as i16;
            Some(if neg { -off } else { off })
        }
        _ => None,
    }
}

pub(crate) fn is_leap(y: i32) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(crate) fn days_in_month(y: i32, m: u8) -> u8 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if is_leap(y) => 29,
        2 => 28,
        _ => 0,
    }
}

/// Days since 1970-01-01 (proleptic Gregorian).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        for s in [
            "2015",
            "2015-02",
            "2015-02-04",
            "2015-02-04T14:34:28.123+10:00",
            "2015-02-04T14:34Z",
            "2015-02-04T14",
        ] {
            let (v, k) = DateTimeValue::parse_date_time(s).unwrap();
            assert_eq!(v.format(k), s);
        }
        assert!(DateTimeValue::parse_date_time("2015-13").is_none());
        assert!(DateTimeValue::parse_date_time("2015-02-30").is_none());
        assert_eq!(
            DateTimeValue::parse_time("14:34:28.123")
                .unwrap()
                .format(Temporal::Time),
            "14:34:28.123"
        );
    }

    #[test]
    fn civil_roundtrip() {
        for d in [-1000, 0, 1, 365, 10_000, 20_000] {
            let (y, m, dd) = civil_from_days(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
