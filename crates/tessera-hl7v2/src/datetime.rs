//! HL7 v2 dates and times (DT, DTM, and TS's first component) and their FHIR forms.
//!
//! A DTM is `YYYY[MM[DD[HH[MM[SS[.S[S[S[S]]]]]]]]][+/-ZZZZ]`: any prefix of the digits is a
//! value of that precision. FHIR `date` keeps the precision (`1980`, `1980-05`,
//! `1980-05-17`); FHIR `dateTime` needs a time zone for anything finer than a day, so a
//! time without an offset is cut to its date (HL7 leaves its zone to the sender's local
//! time, which a migration cannot know).

/// A DTM value, checked: real month, a day that the month has, hours, minutes and seconds
/// in range, an offset of at most 14 hours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtm {
    pub year: u16,
    pub month: Option<u8>,
    pub day: Option<u8>,
    pub hour: Option<u8>,
    pub minute: Option<u8>,
    pub second: Option<u8>,
    /// The digits after the decimal point of the seconds.
    pub fraction: Option<String>,
    /// `+0100` as (sign, hours, minutes): `('+', 1, 0)`.
    pub offset: Option<(char, u8, u8)>,
}

fn two(s: &str, at: usize) -> u8 {
    s[at..at + 2].parse().unwrap_or(u8::MAX)
}

/// The number of days in `month` of `year` (Gregorian).
pub fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        2 => 28,
        _ => 0,
    }
}

impl Dtm {
    /// Parses a DTM (spaces around it ignored); `None` when it is not one.
    pub fn parse(text: &str) -> Option<Dtm> {
        let text = text.trim();
        if !text.is_ascii() {
            return None;
        }
        let (main, offset) = match text.find(['+', '-']) {
            Some(p) => (&text[..p], Some(&text[p..])),
            None => (text, None),
        };
        let (digits, fraction) = match main.split_once('.') {
            Some((d, f)) => (d, Some(f)),
            None => (main, None),
        };
        if !digits.bytes().all(|b| b.is_ascii_digit()) || !matches!(digits.len(), 4 | 6 | 8 | 10 | 12 | 14) {
            return None;
        }
        let fraction = match fraction {
            Some(f) if digits.len() == 14 && (1..=4).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()) => Some(f.to_string()),
            Some(_) => return None,
            None => None,
        };
        let offset = match offset {
            Some(o) if o.len() == 5 && o[1..].bytes().all(|b| b.is_ascii_digit()) => {
                let (h, m) = (two(o, 1), two(o, 3));
                if h > 14 || m > 59 {
                    return None;
                }
                Some((o.chars().next().unwrap_or('+'), h, m))
            }
            Some(_) => return None,
            None => None,
        };
        let year: u16 = digits[..4].parse().ok()?;
        let part = |at: usize| (digits.len() > at).then(|| two(digits, at));
        let dtm = Dtm { year, month: part(4), day: part(6), hour: part(8), minute: part(10), second: part(12), fraction, offset };
        let ok = year >= 1
            && dtm.month.is_none_or(|m| (1..=12).contains(&m))
            && dtm.day.is_none_or(|d| d >= 1 && d <= days_in_month(year, dtm.month.unwrap_or(1)))
            && dtm.hour.is_none_or(|h| h <= 23)
            && dtm.minute.is_none_or(|m| m <= 59)
            && dtm.second.is_none_or(|s| s <= 59);
        ok.then_some(dtm)
    }

    /// The FHIR `date`, to the day at most: `1980`, `1980-05`, `1980-05-17`.
    pub fn fhir_date(&self) -> String {
        let mut s = format!("{:04}", self.year);
        if let Some(m) = self.month {
            s.push_str(&format!("-{m:02}"));
            if let Some(d) = self.day {
                s.push_str(&format!("-{d:02}"));
            }
        }
        s
    }

    /// The FHIR `dateTime`: with its time when the value has a time (to the hour at least)
    /// and an offset (`2023-01-02T10:30:00+01:00`), else the date.
    pub fn fhir_date_time(&self) -> String {
        match (self.hour, self.offset) {
            (Some(h), Some((sign, oh, om))) => {
                let mut s = format!("{}T{h:02}:{:02}:{:02}", self.fhir_date(), self.minute.unwrap_or(0), self.second.unwrap_or(0));
                if let Some(f) = &self.fraction {
                    s.push('.');
                    s.push_str(f);
                }
                s.push_str(&format!("{sign}{oh:02}:{om:02}"));
                s
            }
            _ => self.fhir_date(),
        }
    }

    /// The text as people read it, for reports: `1980-05-17 10:30`.
    pub fn readable(&self) -> String {
        match (self.hour, self.minute) {
            (Some(h), m) => format!("{} {h:02}:{:02}", self.fhir_date(), m.unwrap_or(0)),
            _ => self.fhir_date(),
        }
    }
}

/// The FHIR `date` of an HL7 date or date/time, or why it is not one.
pub fn fhir_date(text: &str) -> Result<String, String> {
    Dtm::parse(text).map(|d| d.fhir_date()).ok_or_else(|| format!("'{}' is not a date", text.trim()))
}

/// The FHIR `dateTime` of an HL7 date/time (see [`Dtm::fhir_date_time`]), or why it is not
/// one.
pub fn fhir_date_time(text: &str) -> Result<String, String> {
    Dtm::parse(text).map(|d| d.fhir_date_time()).ok_or_else(|| format!("'{}' is not a date/time", text.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(fhir_date("1980").unwrap(), "1980");
        assert_eq!(fhir_date("198005").unwrap(), "1980-05");
        assert_eq!(fhir_date("19800517").unwrap(), "1980-05-17");
        assert_eq!(fhir_date("198808181126+0215").unwrap(), "1988-08-18");
        assert_eq!(fhir_date("20150624084727.655-0500").unwrap(), "2015-06-24");
        assert_eq!(fhir_date(" 20000229 ").unwrap(), "2000-02-29");
        assert_eq!(fhir_date("19801345").unwrap_err(), "'19801345' is not a date");
        for bad in ["19000229", "1980051", "0000", "198005171", "1980-05-17", "19800517+01", "2020010112.5", "x", "", "１９８０"] {
            assert!(fhir_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn date_times() {
        assert_eq!(fhir_date_time("20080825111630+0115").unwrap(), "2008-08-25T11:16:30+01:15");
        assert_eq!(fhir_date_time("202301021030-0500").unwrap(), "2023-01-02T10:30:00-05:00");
        assert_eq!(fhir_date_time("20150624084727.655-0500").unwrap(), "2015-06-24T08:47:27.655-05:00");
        assert_eq!(fhir_date_time("20230102103000").unwrap(), "2023-01-02");
        assert_eq!(fhir_date_time("202301").unwrap(), "2023-01");
        assert_eq!(fhir_date_time("20230102+0000").unwrap(), "2023-01-02");
        assert!(fhir_date_time("20230102250000").is_err());
        assert!(fhir_date_time("20230102103000+1500").is_err());
        assert_eq!(Dtm::parse("202301021030").unwrap().readable(), "2023-01-02 10:30");
    }
}
