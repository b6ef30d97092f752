//! Finding the files to load, their order, their format and their identity.

use crate::ImportError;
use anyhow::Context;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One FHIR Bundle (`.json`).
    Bundle,
    /// One resource per line (`.ndjson`).
    Ndjson,
}

/// How a file is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Bzip2,
}

/// A file to load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub path: PathBuf,
    pub kind: Kind,
    pub compression: Compression,
}

impl Source {
    /// Whether other files may depend on this one (Synthea's hospital and practitioner
    /// bundles, which patient bundles reference conditionally): such files load first.
    pub fn is_prerequisite(&self) -> bool {
        is_prerequisite(&self.path)
    }

    /// A decompressing reader over the file.
    pub fn open(&self) -> io::Result<Box<dyn Read + Send>> {
        let file = BufReader::with_capacity(1 << 16, File::open(&self.path)?);
        Ok(match self.compression {
            Compression::None => Box::new(file),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
            Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(file)),
        })
    }
}

/// Whether a file's name marks it as one that others depend on.
pub fn is_prerequisite(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    name.contains("hospitalInformation") || name.contains("practitionerInformation")
}

/// The kind and compression of a file, from its name (`x.json`, `x.ndjson.gz`, `x.json.bz2`, …).
pub fn classify(path: &Path) -> Option<(Kind, Compression)> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let (stem, compression) = if let Some(s) = name.strip_suffix(".gz") {
        (s, Compression::Gzip)
    } else if let Some(s) = name.strip_suffix(".bz2") {
        (s, Compression::Bzip2)
    } else {
        (name.as_str(), Compression::None)
    };
    let kind = if stem.ends_with(".ndjson") {
        Kind::Ndjson
    } else if stem.ends_with(".json") {
        Kind::Bundle
    } else {
        return None;
    };
    Some((kind, compression))
}

/// Expands the command-line paths into the ordered list of files to load.
///
/// Folders are walked recursively and their loadable files sorted by path (other files are
/// ignored); a file named explicitly that is not loadable is reported as an error. The
/// result holds each file once, prerequisite files first, otherwise in argument order.
/// A path that does not exist fails the whole import: it is a usage error.
pub fn discover(paths: &[PathBuf]) -> anyhow::Result<(Vec<Source>, Vec<ImportError>)> {
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
        if meta.is_dir() {
            let mut files = Vec::new();
            walk(path, &mut files).with_context(|| format!("cannot list {}", path.display()))?;
            files.sort();
            found.extend(files.into_iter().filter_map(|p| classify(&p).map(|(kind, compression)| Source { path: p, kind, compression })));
        } else {
            match classify(path) {
                Some((kind, compression)) => found.push(Source { path: path.clone(), kind, compression }),
                None => errors.push(ImportError {
                    file: path.clone(),
                    entry: None,
                    message: "not a loadable file: expected .json (a Bundle) or .ndjson, optionally .gz or .bz2".into(),
                }),
            }
        }
    }
    let mut seen = std::collections::HashSet::new();
    found.retain(|s| seen.insert(std::fs::canonicalize(&s.path).unwrap_or_else(|_| s.path.clone())));
    // A stable sort keeps the argument and path order within each group.
    found.sort_by_key(|s| !s.is_prerequisite());
    Ok((found, errors))
}

/// Collects the regular files under `dir` (following symlinks to files, not to folders;
/// skipping hidden entries).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            walk(&path, out)?;
        } else if file_type.is_file() || (file_type.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

/// What identifies one version of a file across runs: its canonical path, size and
/// modification time. A changed file is a different file and loads again.
pub fn identity(path: &Path) -> io::Result<String> {
    let canonical = std::fs::canonicalize(path)?;
    let meta = std::fs::metadata(&canonical)?;
    let mtime = meta.modified()?.duration_since(UNIX_EPOCH).unwrap_or_default();
    Ok(format!("{}:{}:{}.{:09}", canonical.display(), meta.len(), mtime.as_secs(), mtime.subsec_nanos()))
}

/// Store-meta key recording that a file was loaded completely.
pub fn done_key(identity: &str) -> String {
    format!("import.done:{identity}")
}

/// Store-meta key recording the last NDJSON line committed of a partially loaded file.
pub fn line_key(identity: &str) -> String {
    format!("import.line:{identity}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_name() {
        assert_eq!(classify(Path::new("a/b.json")), Some((Kind::Bundle, Compression::None)));
        assert_eq!(classify(Path::new("b.JSON.bz2")), Some((Kind::Bundle, Compression::Bzip2)));
        assert_eq!(classify(Path::new("Patient.ndjson.gz")), Some((Kind::Ndjson, Compression::Gzip)));
        assert_eq!(classify(Path::new("Patient.ndjson")), Some((Kind::Ndjson, Compression::None)));
        assert_eq!(classify(Path::new("readme.md")), None);
        assert_eq!(classify(Path::new("x.gz")), None);
    }

    #[test]
    fn walks_sorted_with_prerequisites_first() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        for name in ["b.json", "a.ndjson.gz", "notes.txt", "zz-practitionerInformation1.json.bz2", ".hidden.json"] {
            std::fs::write(dir.path().join(name), "").unwrap();
        }
        std::fs::write(sub.join("0-hospitalInformation1.json"), "").unwrap();
        std::fs::write(sub.join("c.json"), "").unwrap();
        let (files, errors) = discover(&[dir.path().to_path_buf(), dir.path().join("b.json")]).unwrap();
        assert!(errors.is_empty());
        let names: Vec<String> = files.iter().map(|s| s.path.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
        assert_eq!(
            names,
            ["sub/0-hospitalInformation1.json", "zz-practitionerInformation1.json.bz2", "a.ndjson.gz", "b.json", "sub/c.json"]
        );
    }

    #[test]
    fn explicit_unloadable_file_is_an_error_and_missing_path_fails() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        let (files, errors) = discover(&[dir.path().join("notes.txt")]).unwrap();
        assert!(files.is_empty());
        assert_eq!(errors.len(), 1);
        assert!(discover(&[dir.path().join("absent.json")]).is_err());
    }
}
