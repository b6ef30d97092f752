//! The web application in a real browser, on both backends: headless Chromium driven by
//! Selenium (`clients/browser/test_browser.py`) through sign-in, context switch, patient
//! search, every tab of the record, break-glass, writing vital signs, an allergy and a note,
//! the portal's access list, SMART EHR and standalone launches, and a user of another trust
//! seeing what the API (and so the sharing table) gives her — with axe-core checking every
//! page for serious or critical accessibility violations. Then an unmodified SMART client
//! library, Python's `fhirclient`, completes a launch (`clients/browser/test_smart_fhirclient.py`).
//!
//! Screenshots of every page are kept under `target/browser-screenshots/<backend>/`.
//!
//! Needs Chromium and chromedriver (Debian: `chromium`, `chromium-driver`), Selenium and
//! fhirclient in `clients/python/.venv`, and axe-core in `clients/node/node_modules` — all
//! installed by `.ci/run`. Where one is missing the test says so and skips, unless
//! `TESSERA_CLIENTS_REQUIRED=1` (set by CI).

mod common;
use common::Server;
use std::path::{Path, PathBuf};
use std::process::Command;

on_both_backends!(browser_journeys);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

fn required() -> bool {
    std::env::var("TESSERA_CLIENTS_REQUIRED").is_ok_and(|v| v == "1")
}

fn chromedriver() -> Option<PathBuf> {
    ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"].into_iter().map(PathBuf::from).find(|p| p.exists())
}

async fn browser_journeys(s: &Server) {
    let root = root();
    let python = root.join("clients/python/.venv/bin/python");
    let axe = root.join("clients/node/node_modules/axe-core/axe.min.js");
    let selenium = python.exists() && Command::new(&python).args(["-c", "import selenium, fhirclient, requests"]).output().is_ok_and(|o| o.status.success());
    let missing: Vec<&str> = [
        (!selenium).then_some("Selenium/fhirclient in clients/python/.venv"),
        (!axe.exists()).then_some("axe-core in clients/node"),
        chromedriver().is_none().then_some("chromedriver"),
        (!Path::new("/usr/bin/chromium").exists()).then_some("chromium"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        assert!(!required(), "{} not installed, and TESSERA_CLIENTS_REQUIRED=1", missing.join(", "));
        eprintln!("{} not installed: browser suite skipped (see crates/tessera/tests/browser.rs)", missing.join(", "));
        return;
    }
    s.load_demo().await;
    let web = s.base.trim_end_matches("/fhir").to_string();
    let backend = if s.database_url.is_some() { "postgres" } else { "sqlite" };
    let shots = root.join("target/browser-screenshots").join(backend);
    let _ = std::fs::remove_dir_all(&shots);
    for module in ["test_browser", "test_smart_fhirclient"] {
        let mut c = Command::new(&python);
        c.current_dir(root.join("clients/browser"))
            .args(["-m", "unittest", "-v", module])
            .env("TESSERA_WEB", &web)
            .env("TESSERA_SCREENSHOTS", &shots)
            .env("TESSERA_AXE", &axe)
            .env("CHROMEDRIVER", chromedriver().unwrap());
        let out = tokio::task::spawn_blocking(move || c.output()).await.unwrap().unwrap_or_else(|e| panic!("{module}: {e}"));
        let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{module} failed against {web}:\n{text}");
        eprintln!("{module}:\n{text}");
    }
    let taken = std::fs::read_dir(&shots).map(|d| d.count()).unwrap_or(0);
    assert!(taken >= 30, "a screenshot of every page visited is kept ({taken} in {})", shots.display());
}
