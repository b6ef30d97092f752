//! CSV extracts of a patient administration system (PAS): a header row, then one patient a
//! row.
//!
//! Column names are matched without regard to case, spaces, underscores and hyphens
//! (`Date of Birth`, `date_of_birth` and `DATE-OF-BIRTH` are one column); columns not
//! listed in [`COLUMNS`] are ignored. Only `mrn` is required. Empty cells are absent
//! values; cells are trimmed. A row whose number of cells differs from the header's, or
//! that has no MRN, a date that is not one or a sex that is not known, is an invalid
//! record whose reason starts with its line (`line 12: …`).

use crate::{Options, Record, IDENTIFIER_TYPE_SYSTEM};
use serde_json::{json, Map, Value};
use tessera_hl7v2::datetime::days_in_month;
use tessera_hl7v2::patient::NHS_NUMBER_SYSTEM;

/// The ODS organisation code system, for the GP practice.
pub const ODS_ORGANIZATION_SYSTEM: &str = "https://fhir.nhs.uk/Id/ods-organization-code";

/// The columns read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Mrn,
    NhsNumber,
    Title,
    Forename,
    MiddleNames,
    Surname,
    PreviousSurname,
    Sex,
    DateOfBirth,
    DateOfDeath,
    AddressLine1,
    AddressLine2,
    AddressLine3,
    Town,
    County,
    Postcode,
    PhoneHome,
    PhoneMobile,
    PhoneWork,
    Email,
    GpPracticeCode,
}

/// Each column with the names it is known by (normalised: lower case, no spaces,
/// underscores or hyphens). The first name is the documented one.
pub const COLUMNS: &[(Column, &[&str])] = &[
    (Column::Mrn, &["mrn", "hospitalnumber"]),
    (Column::NhsNumber, &["nhsnumber", "nhsno"]),
    (Column::Title, &["title"]),
    (Column::Forename, &["forename", "forenames", "given", "givenname", "firstname"]),
    (Column::MiddleNames, &["middlenames", "middlename"]),
    (Column::Surname, &["surname", "family", "familyname", "lastname"]),
    (Column::PreviousSurname, &["previoussurname", "maidenname"]),
    (Column::Sex, &["sex", "gender"]),
    (Column::DateOfBirth, &["dateofbirth", "dob", "birthdate"]),
    (Column::DateOfDeath, &["dateofdeath", "dod", "deathdate"]),
    (Column::AddressLine1, &["addressline1", "address1"]),
    (Column::AddressLine2, &["addressline2", "address2"]),
    (Column::AddressLine3, &["addressline3", "address3"]),
    (Column::Town, &["town", "city"]),
    (Column::County, &["county"]),
    (Column::Postcode, &["postcode", "postalcode"]),
    (Column::PhoneHome, &["phonehome", "homephone"]),
    (Column::PhoneMobile, &["phonemobile", "mobilephone", "mobile"]),
    (Column::PhoneWork, &["phonework", "workphone"]),
    (Column::Email, &["email", "emailaddress"]),
    (Column::GpPracticeCode, &["gppracticecode", "gppractice", "practicecode"]),
];

/// The column a header names, if any.
pub fn column(header: &str) -> Option<Column> {
    let key: String = header.chars().filter(|c| !matches!(c, ' ' | '_' | '-' | '\u{feff}')).flat_map(char::to_lowercase).collect();
    COLUMNS.iter().find(|(_, names)| names.contains(&key.as_str())).map(|(c, _)| *c)
}

/// A FHIR date from `YYYY-MM-DD`, `DD/MM/YYYY`, `DD-MM-YYYY` or `YYYYMMDD` (day and month
/// may have one digit in the day-first forms); `None` when it is none of them or not a day
/// of the calendar.
pub fn date(text: &str) -> Option<String> {
    let t = text.trim();
    let num = |s: &str| (!s.is_empty() && s.len() <= 4 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse::<u16>().ok()).flatten();
    let (y, m, d) = if t.len() == 8 && t.bytes().all(|b| b.is_ascii_digit()) {
        (num(&t[..4])?, num(&t[4..6])?, num(&t[6..])?)
    } else {
        let parts: Vec<&str> = t.split(['-', '/']).collect();
        let [a, b, c] = parts[..] else { return None };
        let sep_count = |s: char| t.matches(s).count();
        if a.len() == 4 && b.len() == 2 && c.len() == 2 && sep_count('-') == 2 {
            (num(a)?, num(b)?, num(c)?)
        } else if c.len() == 4 && (1..=2).contains(&a.len()) && (1..=2).contains(&b.len()) && (sep_count('/') == 2 || sep_count('-') == 2) {
            (num(c)?, num(b)?, num(a)?)
        } else {
            return None;
        }
    };
    let (m, d) = (u8::try_from(m).ok()?, u8::try_from(d).ok()?);
    (y >= 1 && (1..=12).contains(&m) && d >= 1 && d <= days_in_month(y, m)).then(|| format!("{y:04}-{m:02}-{d:02}"))
}

/// FHIR gender from the usual ways of writing sex: M/male/1, F/female/2, I/O
/// (indeterminate, other), U/unknown/0/9/X (not known, not specified).
pub fn gender(text: &str) -> Option<&'static str> {
    Some(match text.trim().to_ascii_lowercase().as_str() {
        "m" | "male" | "1" => "male",
        "f" | "female" | "2" => "female",
        "i" | "o" | "other" | "indeterminate" => "other",
        "u" | "unknown" | "0" | "9" | "x" | "not known" | "not specified" => "unknown",
        _ => return None,
    })
}

/// A row's cells by column: the first header naming each column.
struct Row<'a> {
    cells: Vec<(Column, &'a str, &'a str)>,
}

impl<'a> Row<'a> {
    fn get(&self, c: Column) -> Option<&'a str> {
        self.cells.iter().find(|(col, _, _)| *col == c).map(|(_, _, v)| v.trim()).filter(|v| !v.is_empty())
    }

    /// The header the file gives this column, for messages.
    fn header(&self, c: Column) -> &'a str {
        self.cells.iter().find(|(col, _, _)| *col == c).map(|(_, h, _)| h.trim()).unwrap_or("?")
    }
}

fn words(s: Option<&str>) -> Vec<String> {
    s.map(|s| s.split_whitespace().map(String::from).collect()).unwrap_or_default()
}

/// The Patient of one row, or why the row is invalid.
fn patient(row: &Row, mrn: &str, options: &Options) -> Result<Value, String> {
    use Column::*;
    let mut p = Map::new();
    p.insert("resourceType".into(), json!("Patient"));
    let mut identifiers = vec![json!({
        "type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "MR"}]},
        "system": options.mrn_system,
        "value": mrn
    })];
    if let Some(nhs) = row.get(NhsNumber) {
        let value: String = nhs.chars().filter(|c| !c.is_whitespace()).collect();
        identifiers.push(json!({"system": NHS_NUMBER_SYSTEM, "value": value}));
    }
    p.insert("identifier".into(), Value::Array(identifiers));

    let gender = match row.get(Sex) {
        Some(s) => Some(gender(s).ok_or_else(|| format!("{}: '{s}' is not a sex (M, F, U, I, male, female, …)", row.header(Sex)))?),
        None => None,
    };
    let mut given = words(row.get(Forename));
    given.extend(words(row.get(MiddleNames)));
    let mut names = Vec::new();
    let family = row.get(Surname);
    if family.is_some() || !given.is_empty() {
        let mut name = Map::new();
        name.insert("use".into(), json!("official"));
        if let Some(f) = family {
            name.insert("family".into(), json!(f));
        }
        if !given.is_empty() {
            name.insert("given".into(), json!(given));
        }
        if let Some(t) = row.get(Title) {
            name.insert("prefix".into(), json!([t]));
        }
        names.push(Value::Object(name));
    }
    if let Some(previous) = row.get(PreviousSurname) {
        let mut name = Map::new();
        name.insert("use".into(), json!(if gender == Some("female") { "maiden" } else { "old" }));
        name.insert("family".into(), json!(previous));
        if !given.is_empty() {
            name.insert("given".into(), json!(given));
        }
        names.push(Value::Object(name));
    }
    if !names.is_empty() {
        p.insert("name".into(), Value::Array(names));
    }

    let telecom: Vec<Value> = [(PhoneHome, "phone", Some("home")), (PhoneMobile, "phone", Some("mobile")), (PhoneWork, "phone", Some("work")), (Email, "email", None)]
        .into_iter()
        .filter_map(|(c, system, usage)| {
            let value = row.get(c)?;
            let mut t = Map::new();
            t.insert("system".into(), json!(system));
            t.insert("value".into(), json!(value));
            if let Some(u) = usage {
                t.insert("use".into(), json!(u));
            }
            Some(Value::Object(t))
        })
        .collect();
    if !telecom.is_empty() {
        p.insert("telecom".into(), Value::Array(telecom));
    }
    if let Some(g) = gender {
        p.insert("gender".into(), json!(g));
    }
    let formats = "YYYY-MM-DD, DD/MM/YYYY, DD-MM-YYYY or YYYYMMDD";
    if let Some(dob) = row.get(DateOfBirth) {
        let d = date(dob).ok_or_else(|| format!("{}: '{dob}' is not a date ({formats})", row.header(DateOfBirth)))?;
        p.insert("birthDate".into(), json!(d));
    }
    if let Some(dod) = row.get(DateOfDeath) {
        let d = date(dod).ok_or_else(|| format!("{}: '{dod}' is not a date ({formats})", row.header(DateOfDeath)))?;
        p.insert("deceasedDateTime".into(), json!(d));
    }

    let lines: Vec<&str> = [AddressLine1, AddressLine2, AddressLine3].into_iter().filter_map(|c| row.get(c)).collect();
    let parts = [("city", row.get(Town)), ("district", row.get(County)), ("postalCode", row.get(Postcode))];
    if !lines.is_empty() || parts.iter().any(|(_, v)| v.is_some()) {
        let mut a = Map::new();
        a.insert("use".into(), json!("home"));
        if !lines.is_empty() {
            a.insert("line".into(), json!(lines));
        }
        for (key, value) in parts {
            if let Some(v) = value {
                a.insert(key.into(), json!(v));
            }
        }
        p.insert("address".into(), json!([Value::Object(a)]));
    }
    if let Some(gp) = row.get(GpPracticeCode) {
        p.insert("generalPractitioner".into(), json!([{"identifier": {"system": ODS_ORGANIZATION_SYSTEM, "value": gp}}]));
    }
    Ok(Value::Object(p))
}

/// A CSV PAS extract: one record per row, named `name:line` (the line the row starts on,
/// the header being line 1). An empty file has no records; a file without an `mrn` column,
/// or with two columns for the same thing, is an error.
pub fn read_csv(name: &str, text: &str, options: &Options) -> Result<Vec<Record>, String> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(text.as_bytes());
    let headers = reader.headers().map_err(|e| format!("the header row cannot be read: {e}"))?.clone();
    let mut columns: Vec<Option<Column>> = Vec::with_capacity(headers.len());
    for h in headers.iter() {
        let c = column(h);
        if let Some(c) = c {
            if let Some(j) = columns.iter().position(|x| *x == Some(c)) {
                return Err(format!("columns '{}' and '{}' are the same column; keep one", headers[j].trim(), h.trim()));
            }
        }
        columns.push(c);
    }
    if !columns.contains(&Some(Column::Mrn)) {
        return Err("no mrn column: every row needs the patient's record number (MRN)".to_string());
    }
    let mut out = Vec::new();
    for (n, result) in reader.records().enumerate() {
        let record = match result {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(n as u64 + 2);
                out.push(Record { source: format!("{name}:{line}"), local_id: None, patient: Err(format!("line {line}: {e}")) });
                continue;
            }
        };
        let line = record.position().map(|p| p.line()).unwrap_or(n as u64 + 2);
        let source = format!("{name}:{line}");
        if record.len() != headers.len() {
            let reason = format!("line {line}: {} cells where the header has {}", record.len(), headers.len());
            out.push(Record { source, local_id: None, patient: Err(reason) });
            continue;
        }
        let row = Row { cells: columns.iter().zip(headers.iter().zip(record.iter())).filter_map(|(c, (h, v))| c.map(|c| (c, h, v))).collect() };
        let Some(mrn) = row.get(Column::Mrn) else {
            out.push(Record { source, local_id: None, patient: Err(format!("line {line}: no MRN (column '{}' is empty)", row.header(Column::Mrn))) });
            continue;
        };
        let patient = patient(&row, mrn, options).map_err(|e| format!("line {line}: {e}"));
        out.push(Record { source, local_id: Some(mrn.to_string()), patient });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_names() {
        assert_eq!(column("Date of Birth"), Some(Column::DateOfBirth));
        assert_eq!(column("date_of_birth"), Some(Column::DateOfBirth));
        assert_eq!(column("DATE-OF-BIRTH"), Some(Column::DateOfBirth));
        assert_eq!(column("\u{feff}MRN"), Some(Column::Mrn));
        assert_eq!(column("Address Line 1"), Some(Column::AddressLine1));
        assert_eq!(column("GP_Practice_Code"), Some(Column::GpPracticeCode));
        assert_eq!(column("religion"), None);
    }

    #[test]
    fn dates() {
        assert_eq!(date("1980-05-17").as_deref(), Some("1980-05-17"));
        assert_eq!(date("17/05/1980").as_deref(), Some("1980-05-17"));
        assert_eq!(date("7/5/1980").as_deref(), Some("1980-05-07"));
        assert_eq!(date("17-05-1980").as_deref(), Some("1980-05-17"));
        assert_eq!(date("19800517").as_deref(), Some("1980-05-17"));
        assert_eq!(date("29/02/2000").as_deref(), Some("2000-02-29"));
        for bad in ["29/02/1900", "1980-5-17", "05/17/1980", "1980/05/17", "17/05-1980", "17.05.1980", "1980", "", "2020-13-01", "00/01/2000", "1980-05-17 10:00"] {
            assert_eq!(date(bad), None, "{bad}");
        }
    }

    #[test]
    fn genders() {
        assert_eq!(gender("M"), Some("male"));
        assert_eq!(gender("female"), Some("female"));
        assert_eq!(gender("I"), Some("other"));
        assert_eq!(gender("9"), Some("unknown"));
        assert_eq!(gender("q"), None);
    }

    #[test]
    fn rows() {
        let text = "MRN,Surname,Forename,Middle Names,Title,Sex,Date of Birth,Previous Surname,Postcode,Town,NHS Number,Religion\n\
K1,Smith,Jane,Ann Marie,Mrs,F,17/05/1980,Jones,LS1 1AA,Leeds,943 476 5919,none\n\
K2,Brown,Tom,,,X,,Green,,,,\n\
,Nobody,,,,,,,,,,\n\
K4,Bad,Date,,,M,31/02/1980,,,,,\n\
K5,Short\n";
        let records = read_csv("pas.csv", text, &Options::new("urn:mrn")).unwrap();
        assert_eq!(records.len(), 5);
        let p = records[0].patient.as_ref().unwrap();
        assert_eq!(records[0].source, "pas.csv:2");
        assert_eq!(records[0].local_id.as_deref(), Some("K1"));
        assert_eq!(
            *p,
            json!({
                "resourceType": "Patient",
                "identifier": [
                    {"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "MR"}]}, "system": "urn:mrn", "value": "K1"},
                    {"system": NHS_NUMBER_SYSTEM, "value": "9434765919"}
                ],
                "name": [
                    {"use": "official", "family": "Smith", "given": ["Jane", "Ann", "Marie"], "prefix": ["Mrs"]},
                    {"use": "maiden", "family": "Jones", "given": ["Jane", "Ann", "Marie"]}
                ],
                "gender": "female",
                "birthDate": "1980-05-17",
                "address": [{"use": "home", "city": "Leeds", "postalCode": "LS1 1AA"}]
            })
        );
        let p = records[1].patient.as_ref().unwrap();
        assert_eq!(p["gender"], "unknown");
        assert_eq!(p["name"][1]["use"], "old");
        assert_eq!(records[2].patient, Err("line 4: no MRN (column 'MRN' is empty)".to_string()));
        assert_eq!(records[2].local_id, None);
        assert_eq!(records[3].patient, Err("line 5: Date of Birth: '31/02/1980' is not a date (YYYY-MM-DD, DD/MM/YYYY, DD-MM-YYYY or YYYYMMDD)".to_string()));
        assert_eq!(records[3].local_id.as_deref(), Some("K4"));
        assert_eq!(records[4].patient, Err("line 6: 2 cells where the header has 12".to_string()));
    }

    #[test]
    fn file_errors() {
        let options = Options::new("urn:mrn");
        assert!(read_csv("a.csv", "", &options).unwrap().is_empty());
        assert!(read_csv("a.csv", "surname,forename\nA,B\n", &options).unwrap_err().starts_with("no mrn column"));
        assert_eq!(read_csv("a.csv", "mrn,Surname,family\n", &options).unwrap_err(), "columns 'Surname' and 'family' are the same column; keep one");
        assert!(read_csv("a.csv", "mrn\n", &options).unwrap().is_empty());
    }
}
