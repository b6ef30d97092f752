//! Tessera driven by unmodified FHIR client libraries — Python's `fhirpy` and `fhirclient`,
//! npm's `fhir-kit-client` — over real HTTP, on both backends. The client-side suites are
//! in `clients/python` and `clients/node`; this test starts the server and runs them.
//!
//! The clients are installed by `.ci/run` (`pip install -r clients/python/requirements.txt`
//! into `clients/python/.venv`, `npm ci --prefix clients/node`). Where one is not installed
//! the test says so and skips it, unless `TESSERA_CLIENTS_REQUIRED=1` (set by CI), which
//! makes a missing client a failure.

mod common;
use common::Server;
use std::path::{Path, PathBuf};
use std::process::Command;

on_both_backends!(python_clients, node_clients);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn required() -> bool {
    std::env::var("TESSERA_CLIENTS_REQUIRED").is_ok_and(|v| v == "1")
}

fn missing(what: &str) {
    assert!(!required(), "{what} is not installed, and TESSERA_CLIENTS_REQUIRED=1");
    eprintln!("{what} is not installed: skipped (see crates/tessera/tests/clients.rs)");
}

/// Runs `command` (in a blocking thread: the server answers on this test's runtime) and
/// fails the test with its output when it fails.
async fn run(s: &Server, mut command: Command, what: &str) {
    command.env("TESSERA_BASE", &s.base).env("TESSERA_TOKEN", &s.system_token);
    let out = tokio::task::spawn_blocking(move || command.output()).await.unwrap().unwrap_or_else(|e| panic!("{what}: {e}"));
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{what} failed against {}:\n{text}", s.base);
    eprintln!("{what}:\n{text}");
}

async fn python_clients(s: &Server) {
    let dir = root().join("clients/python");
    let venv = dir.join(".venv/bin/python");
    let python = if venv.exists() { venv } else { PathBuf::from("python3") };
    let installed = Command::new(&python).args(["-c", "import fhirpy, fhirclient"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        return missing("fhirpy/fhirclient (Python)");
    }
    let mut c = Command::new(&python);
    c.current_dir(&dir).args(["-m", "unittest", "-v", "test_clients"]);
    run(s, c, "fhirpy and fhirclient").await;
}

async fn node_clients(s: &Server) {
    let dir = root().join("clients/node");
    let installed = dir.join("node_modules/fhir-kit-client").exists() && Command::new("node").arg("--version").output().is_ok_and(|o| o.status.success());
    if !installed {
        return missing("fhir-kit-client (npm)");
    }
    let mut c = Command::new("node");
    c.current_dir(&dir).args(["--test", "clients.test.mjs"]);
    run(s, c, "fhir-kit-client").await;
}
