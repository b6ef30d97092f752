//! The importer against a real SQLite store.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tessera_engine::{Access, Engine, EngineConfig};
use tessera_import::{Options, Summary};

const SYNTHEA: &str = "/work/shared/data/synthea";

/// Imports as the server's own system account, acting for the bootstrap organisation.
async fn run(engine: &Engine, paths: &[PathBuf], options: &Options) -> anyhow::Result<Summary> {
    tessera_import::run(engine, &Access::system("tessera"), paths, options).await
}

fn engine(dir: &Path) -> Engine {
    let store = tessera_store::sqlite::SqliteStore::open(dir).expect("open store");
    Engine::new(Arc::new(store), EngineConfig::default())
}

async fn current_resources(engine: &Engine) -> u64 {
    engine.stats().await.unwrap().current_resources
}

/// The hospital and practitioner bundles and the smallest patient bundle.
fn synthea_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(SYNTHEA).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let prerequisites: Vec<PathBuf> = files.iter().filter(|p| tessera_import::is_prerequisite(p)).cloned().collect();
    assert_eq!(prerequisites.len(), 2);
    let patient = files
        .iter()
        .filter(|p| !tessera_import::is_prerequisite(p) && p.to_string_lossy().ends_with(".json.bz2"))
        .min_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap()
        .clone();
    // The patient first on the command line: the importer must still load it last.
    vec![patient, prerequisites[0].clone(), prerequisites[1].clone()]
}

fn entries(path: &Path) -> u64 {
    let mut text = String::new();
    bzip2::read::MultiBzDecoder::new(std::fs::File::open(path).unwrap()).read_to_string(&mut text).unwrap();
    let bundle: serde_json::Value = serde_json::from_str(&text).unwrap();
    bundle["entry"].as_array().unwrap().len() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_synthea_bundles_and_skips_them_on_a_second_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let files = synthea_files();
    let expected: u64 = files.iter().map(|p| entries(p)).sum();

    let summary = run(&engine, &files, &Options { concurrency: 2 }).await.unwrap();
    assert!(summary.errors.is_empty(), "{summary}");
    assert_eq!((summary.files, summary.skipped_files, summary.resources), (3, 0, expected));
    assert_eq!(current_resources(&engine).await, expected);

    let again = run(&engine, &files, &Options::default()).await.unwrap();
    assert!(again.errors.is_empty(), "{again}");
    assert_eq!((again.files, again.skipped_files, again.resources), (0, 3, 0));
    assert_eq!(current_resources(&engine).await, expected);
    assert!(again.to_string().contains("0 files loaded, 3 skipped"), "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patient_bundle_without_its_prerequisites_fails_and_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let patient = synthea_files()[0].clone();
    let summary = run(&engine, std::slice::from_ref(&patient), &Options::default()).await.unwrap();
    assert_eq!((summary.files, summary.failed_files, summary.resources), (0, 1, 0));
    assert!(!summary.errors.is_empty());
    let error = &summary.errors[0];
    assert_eq!(error.file, patient);
    assert!(error.entry.is_some(), "{error}");
    assert!(error.message.contains("conditional reference"), "{error}");
    assert_eq!(current_resources(&engine).await, 0, "a transaction is atomic");

    // Not recorded as done: loading it with its prerequisites now works.
    let summary = run(&engine, &synthea_files(), &Options::default()).await.unwrap();
    assert!(summary.errors.is_empty(), "{summary}");
    assert_eq!(summary.files, 3);
}

fn ndjson_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..1200 {
        lines.push(match i {
            // Line 7 is not JSON, line 1001 names no resource type the engine knows.
            6 => "{\"resourceType\": \"Patient\", broken".to_string(),
            1000 => r#"{"resourceType": "NoSuchType", "id": "x"}"#.to_string(),
            _ if i % 3 == 0 => r#"{"resourceType": "Patient", "gender": "female", "birthDate": "1970-01-01"}"#.to_string(),
            _ => format!(r#"{{"resourceType": "Patient", "id": "p{i}", "name": [{{"family": "Doe{i}"}}]}}"#),
        });
        if i == 500 {
            lines.push(String::new()); // blank lines are ignored but counted
        }
    }
    lines
}

async fn check_ndjson(path: PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let lines = ndjson_lines();
    let valid = lines.iter().filter(|l| !l.is_empty()).count() as u64 - 2;

    let summary = run(&engine, std::slice::from_ref(&path), &Options::default()).await.unwrap();
    assert_eq!(summary.files, 1, "{summary}");
    assert_eq!(summary.resources, valid, "{summary}");
    assert_eq!(current_resources(&engine).await, valid);
    let located: Vec<(Option<usize>, &Path)> = summary.errors.iter().map(|e| (e.entry, e.file.as_path())).collect();
    assert_eq!(located, vec![(Some(7), path.as_path()), (Some(1002), path.as_path())], "{summary}");
    assert!(summary.errors[0].message.contains("not valid JSON"), "{summary}");
    assert!(summary.errors[1].message.starts_with("400"), "{summary}");
    assert!(summary.to_string().contains(" line 7: not valid JSON"), "{summary}");

    let again = run(&engine, &[path], &Options::default()).await.unwrap();
    assert_eq!((again.files, again.skipped_files, again.resources, again.errors.len()), (0, 1, 0, 0));
    assert_eq!(current_resources(&engine).await, valid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_plain_ndjson_reporting_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Patient.ndjson");
    std::fs::write(&path, ndjson_lines().join("\n") + "\n").unwrap();
    check_ndjson(path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loads_gzip_ndjson_from_a_folder_reporting_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested").join("Patient.ndjson.gz");
    std::fs::create_dir(path.parent().unwrap()).unwrap();
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path).unwrap(), flate2::Compression::fast());
    gz.write_all(ndjson_lines().join("\n").as_bytes()).unwrap();
    gz.finish().unwrap();
    check_ndjson(path).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_ndjson_after_the_recorded_line() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(dir.path());
    let path = dir.path().join("Observation.ndjson");
    // No ids: each line creates a resource, so a line loaded twice would show.
    let lines: Vec<String> = (0..10)
        .map(|i| format!(r#"{{"resourceType": "Patient", "name": [{{"family": "N{i}"}}]}}"#))
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    // As if an earlier run had committed the first 4 lines, then stopped.
    let identity_key = format!(
        "import.line:{}:{}:{}",
        std::fs::canonicalize(&path).unwrap().display(),
        std::fs::metadata(&path).unwrap().len(),
        {
            let m = std::fs::metadata(&path).unwrap().modified().unwrap().duration_since(std::time::UNIX_EPOCH).unwrap();
            format!("{}.{:09}", m.as_secs(), m.subsec_nanos())
        }
    );
    engine.set_setting(&identity_key, "4").await.unwrap();
    let summary = run(&engine, &[dir.path().to_path_buf()], &Options::default()).await.unwrap();
    assert!(summary.errors.is_empty(), "{summary}");
    assert_eq!(summary.resources, 6);
    assert_eq!(current_resources(&engine).await, 6);
}
