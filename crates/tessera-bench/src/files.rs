//! The bundle files of an ingest run: which, in what order, loaded into memory.

use anyhow::Context;
use bytes::Bytes;
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};

/// A bundle ready to send: decompressed, with what the report needs to know about it.
#[derive(Debug, Clone)]
pub struct LoadedBundle {
    /// File name, for failure messages.
    pub name: String,
    /// The Bundle JSON.
    pub body: Bytes,
    /// Number of entries (the resources it carries).
    pub entries: usize,
    /// Whether it is a `batch` (whose entries succeed or fail one by one).
    pub batch: bool,
}

impl LoadedBundle {
    /// Reads the bundle's type and counts its entries without building the JSON tree.
    pub fn from_bytes(name: String, body: Vec<u8>) -> anyhow::Result<Self> {
        #[derive(Deserialize)]
        struct Head {
            #[serde(rename = "resourceType")]
            resource_type: Option<String>,
            #[serde(rename = "type")]
            kind: Option<String>,
            #[serde(default)]
            entry: Vec<serde::de::IgnoredAny>,
        }
        let head: Head = serde_json::from_slice(&body).with_context(|| format!("{name} is not valid JSON"))?;
        anyhow::ensure!(head.resource_type.as_deref() == Some("Bundle"), "{name} does not hold a Bundle");
        Ok(LoadedBundle { name, entries: head.entry.len(), batch: head.kind.as_deref() == Some("batch"), body: Bytes::from(body) })
    }
}

/// Whether a file's bundle must go first: other bundles reference the organisations and
/// practitioners it creates.
pub fn is_prerequisite(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    name.contains("hospital") || name.contains("practitioner")
}

/// Whether a file found in a folder is a bundle: `.json`, `.json.gz` or `.json.bz2`.
fn is_bundle_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    !name.starts_with('.') && [".json", ".json.gz", ".json.bz2"].iter().any(|ext| name.ends_with(ext))
}

/// The files to send: explicit files as given, folders walked recursively (bundle files
/// only, sorted by path); prerequisite files first, otherwise in that order.
pub fn discover(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found = Vec::new();
            walk(path, &mut found).with_context(|| format!("cannot list {}", path.display()))?;
            found.sort();
            files.extend(found);
        } else {
            anyhow::ensure!(path.is_file(), "{} does not exist", path.display());
            files.push(path.clone());
        }
    }
    files.sort_by_key(|p| !is_prerequisite(p));
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if is_bundle_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// Reads and decompresses (by extension: `.gz`, `.bz2`) one file.
pub fn read(path: &Path) -> anyhow::Result<LoadedBundle> {
    let file = std::io::BufReader::new(std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut reader: Box<dyn Read> = if name.ends_with(".gz") {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else if name.ends_with(".bz2") {
        Box::new(bzip2::read::MultiBzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut body = Vec::new();
    reader.read_to_end(&mut body).with_context(|| format!("cannot read {}", path.display()))?;
    LoadedBundle::from_bytes(name, body)
}

/// Loads all files, in order, decompressing on all cores.
pub fn read_all(paths: &[PathBuf]) -> anyhow::Result<Vec<LoadedBundle>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(paths.len()).max(1);
    let mut loaded: Vec<Option<anyhow::Result<LoadedBundle>>> = (0..paths.len()).map(|_| None).collect();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || paths.iter().enumerate().skip(t).step_by(threads).map(|(i, p)| (i, read(p))).collect::<Vec<_>>()))
            .collect();
        for worker in workers {
            for (i, result) in worker.join().expect("reader thread panicked") {
                loaded[i] = Some(result);
            }
        }
    });
    loaded.into_iter().map(|r| r.expect("every file read")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_entries_and_detects_batches() {
        let b = LoadedBundle::from_bytes("t".into(), br#"{"resourceType":"Bundle","type":"transaction","entry":[{"a":1},{"b":[2]}]}"#.to_vec()).unwrap();
        assert_eq!((b.entries, b.batch), (2, false));
        let b = LoadedBundle::from_bytes("b".into(), br#"{"type":"batch","resourceType":"Bundle"}"#.to_vec()).unwrap();
        assert_eq!((b.entries, b.batch), (0, true));
        assert!(LoadedBundle::from_bytes("p".into(), br#"{"resourceType":"Patient"}"#.to_vec()).is_err());
    }

    #[test]
    fn orders_prerequisites_first() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["b.json.bz2", "a.json", "x.txt", "practitionerInformation.json.gz", "hospitalInformation.json"] {
            std::fs::write(dir.path().join(name), "{}").unwrap();
        }
        let names: Vec<String> = discover(&[dir.path().to_path_buf()])
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["hospitalInformation.json", "practitionerInformation.json.gz", "a.json", "b.json.bz2"]);
    }
}
