//! `tessera-migrate`: reading a migrating organisation's legacy extracts into FHIR
//! Patients, the first step of migration reconciliation (matching the legacy records with
//! the domain's patient index and reporting what was created, linked or refused).
//!
//! Reading is pure and synchronous (its only I/O is reading the extract files); [`run`]
//! then matches or registers each record through the engine's patient index.
//!
//! * [`read_path`] reads a file, or every file of a folder (recursively, in path order),
//!   into [`Record`]s: one per patient record, each the FHIR Patient it gives or the
//!   reason it is invalid, and where it came from. [`files`] lists what it will read.
//! * [`pas`] reads CSV extracts of a patient administration system (PAS): one patient a
//!   row, columns named loosely (`Date of Birth` = `date_of_birth`).
//! * [`hl7`] reads HL7 v2 files (one message, back to back messages, batch files,
//!   MLLP-framed) and maps each ADT message's PID with `tessera-hl7v2`.
//! * [`fhir`] reads FHIR Bundles and single Patients (`.json`) and NDJSON (`.ndjson`).
//!
//! Formats go by extension, each optionally gzip-compressed (`.csv.gz`): `.csv`, `.hl7`,
//! `.er7`, `.txt` (HL7 v2), `.json`, `.ndjson`. Text must be UTF-8 (a byte order mark is
//! allowed). The mapping of each format is documented in `docs/migration.md`.

pub mod fhir;
pub mod hl7;
pub mod pas;
pub mod run;

use serde_json::Value;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The identifier type code system (HL7 table 0203).
pub const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// One patient record of an extract.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where it came from: `pas.csv:12` (line 12), `adt.hl7:message 3 (MSG00012)` (with
    /// the message control id), `bundle.json:entry 0`, `patients.ndjson:line 5`. Files in a
    /// folder are named by their path below it.
    pub source: String,
    /// The record's MRN in the organisation's system ([`Options::mrn_system`]), when known
    /// (even when the record is invalid).
    pub local_id: Option<String>,
    /// The FHIR Patient, without `id` or `meta`, or the reason the record is invalid.
    pub patient: Result<Value, String>,
}

/// How to read the extracts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// The migrating organisation's MRN identifier system: given to CSV `mrn` values and
    /// to HL7 identifiers with no or an unknown assigning authority.
    pub mrn_system: String,
    /// HL7 assigning authority (CX.4 namespace or universal id) → identifier system.
    pub authorities: BTreeMap<String, String>,
}

impl Options {
    /// Options with this MRN system and no other authorities.
    pub fn new(mrn_system: impl Into<String>) -> Options {
        Options { mrn_system: mrn_system.into(), authorities: BTreeMap::new() }
    }

    /// The HL7 identifier rules of these options: NHS numbers recognised as usual.
    pub fn identifier_map(&self) -> tessera_hl7v2::IdentifierMap {
        let mut map = tessera_hl7v2::IdentifierMap::new(self.mrn_system.clone());
        map.by_authority = self.authorities.clone();
        map
    }

    /// The first identifier of a FHIR Patient in the MRN system.
    pub(crate) fn local_id(&self, patient: &Value) -> Option<String> {
        patient["identifier"]
            .as_array()?
            .iter()
            .find(|i| i["system"].as_str() == Some(&self.mrn_system))
            .and_then(|i| i["value"].as_str())
            .map(String::from)
    }
}

/// Why an extract could not be read at all (as opposed to an invalid record in it).
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The file or folder could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not in a format it claims or that is read.
    #[error("{}: {problem}", path.display())]
    Format { path: PathBuf, problem: String },
}

impl ReadError {
    fn io(path: &Path, source: std::io::Error) -> ReadError {
        ReadError::Io { path: path.to_path_buf(), source }
    }

    fn format(path: &Path, problem: impl Into<String>) -> ReadError {
        ReadError::Format { path: path.to_path_buf(), problem: problem.into() }
    }
}

/// The formats read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.csv`: a PAS extract ([`pas`]).
    Csv,
    /// `.hl7`, `.er7`, `.txt`: HL7 v2 messages ([`hl7`]).
    Hl7,
    /// `.json`: a FHIR Bundle or Patient ([`fhir`]).
    Json,
    /// `.ndjson`: FHIR resources, one a line ([`fhir`]).
    Ndjson,
}

impl Format {
    /// The format of a file by its name, and whether it is gzip-compressed (`.gz` after
    /// the format's extension); `None` for other files. Case does not matter.
    pub fn of(path: &Path) -> Option<(Format, bool)> {
        let name = path.file_name()?.to_str()?.to_ascii_lowercase();
        let (name, gz) = match name.strip_suffix(".gz") {
            Some(n) => (n.to_string(), true),
            None => (name, false),
        };
        let format = match name.rsplit_once('.')?.1 {
            "csv" => Format::Csv,
            "hl7" | "er7" | "txt" => Format::Hl7,
            "json" => Format::Json,
            "ndjson" => Format::Ndjson,
            _ => return None,
        };
        Some((format, gz))
    }
}

/// The files [`read_path`] reads, in the order it reads them: `path` itself when it is a
/// file; for a folder, every file below it whose extension is read, sorted by path. Names
/// starting with `.` are skipped, and so are symbolic links to folders (a link to a file
/// is read).
pub fn files(path: &Path) -> Result<Vec<PathBuf>, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::io(path, e))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    walk(path, &mut out)?;
    out.sort();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), ReadError> {
    let entries = std::fs::read_dir(dir).map_err(|e| ReadError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ReadError::io(dir, e))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(|e| ReadError::io(&path, e))?;
        let is_dir = if kind.is_symlink() { std::fs::metadata(&path).map(|m| m.is_dir()).unwrap_or(true) } else { kind.is_dir() };
        if is_dir {
            if !kind.is_symlink() {
                walk(&path, out)?;
            }
        } else if Format::of(&path).is_some() {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads a file, or every file of a folder (see [`files`]), into records. A file of an
/// unknown extension is an error when named, skipped in a folder. Records are named by
/// the file's name, or for a folder by the path below it (`2019/adt.hl7:message 3`).
pub fn read_path(path: &Path, options: &Options) -> Result<Vec<Record>, ReadError> {
    let meta = std::fs::metadata(path).map_err(|e| ReadError::io(path, e))?;
    if !meta.is_dir() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| path.display().to_string());
        return read_file(path, &name, options);
    }
    let mut records = Vec::new();
    for file in files(path)? {
        let relative = file.strip_prefix(path).unwrap_or(&file);
        let name = relative.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/");
        records.extend(read_file(&file, &name, options)?);
    }
    Ok(records)
}

/// Reads one file, naming its records after `name`.
pub fn read_file(path: &Path, name: &str, options: &Options) -> Result<Vec<Record>, ReadError> {
    let Some((format, gz)) = Format::of(path) else {
        return Err(ReadError::format(path, "unknown extension: extracts are .csv, .hl7, .er7, .txt, .json or .ndjson, each optionally .gz"));
    };
    let raw = std::fs::read(path).map_err(|e| ReadError::io(path, e))?;
    let bytes = if gz {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw.as_slice()).read_to_end(&mut out).map_err(|e| ReadError::format(path, format!("not gzip data: {e}")))?;
        out
    } else {
        raw
    };
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ReadError::format(path, format!("not UTF-8 text (the first bad byte is at offset {}): convert it to UTF-8, e.g. with iconv -f WINDOWS-1252 -t UTF-8", e.valid_up_to()))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let result = match format {
        Format::Csv => pas::read_csv(name, text, options),
        Format::Hl7 => Ok(hl7::read_hl7(name, text, options)),
        Format::Json => fhir::read_json(name, text, options),
        Format::Ndjson => Ok(fhir::read_ndjson(name, text, options)),
    };
    result.map_err(|problem| ReadError::format(path, problem))
}

/// Whether a JSON value holds an empty (or blank) string, array or object, which FHIR
/// forbids.
pub fn has_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty() || a.iter().any(has_empty),
        Value::Object(o) => o.is_empty() || o.values().any(has_empty),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(Format::of(Path::new("a/PAS.CSV")), Some((Format::Csv, false)));
        assert_eq!(Format::of(Path::new("x.hl7.gz")), Some((Format::Hl7, true)));
        assert_eq!(Format::of(Path::new("x.er7")), Some((Format::Hl7, false)));
        assert_eq!(Format::of(Path::new("x.txt")), Some((Format::Hl7, false)));
        assert_eq!(Format::of(Path::new("b.json")), Some((Format::Json, false)));
        assert_eq!(Format::of(Path::new("b.ndjson.gz")), Some((Format::Ndjson, true)));
        assert_eq!(Format::of(Path::new("b.json.bz2")), None);
        assert_eq!(Format::of(Path::new("gz")), None);
        assert_eq!(Format::of(Path::new("README")), None);
    }

    #[test]
    fn empties() {
        assert!(has_empty(&serde_json::json!({"a": [{"b": ""}]})));
        assert!(has_empty(&serde_json::json!({"a": []})));
        assert!(has_empty(&serde_json::json!({"a": {}})));
        assert!(!has_empty(&serde_json::json!({"a": [1, {"b": "x"}], "c": true})));
    }
}
