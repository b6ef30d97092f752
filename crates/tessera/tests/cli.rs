//! The command-line contract: help texts, flags and environment variables, import.

use std::process::Command;

fn tessera(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(args).output().expect("run tessera");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn help_explains_every_command() {
    let (ok, text) = tessera(&["--help"]);
    assert!(ok);
    for word in ["serve", "import", "bench", "FHIR"] {
        assert!(text.contains(word), "--help mentions {word}: {text}");
    }
    let (ok, text) = tessera(&["serve", "--help"]);
    assert!(ok);
    for flag in ["--data-dir", "--database-url", "--listen", "--demo", "TESSERA_DATA_DIR", "TESSERA_DATABASE_URL", "TESSERA_LISTEN", "127.0.0.1:8080", "./tessera-data"] {
        assert!(text.contains(flag), "serve --help mentions {flag}");
    }
    let (ok, text) = tessera(&["import", "--help"]);
    assert!(ok);
    for word in ["--data-dir", "--database-url", ".gz", ".bz2", "NDJSON"] {
        assert!(text.contains(word), "import --help mentions {word}");
    }
    let (ok, text) = tessera(&["bench", "--help"]);
    assert!(ok && text.contains("ingest") && text.contains("read"));
}

#[test]
fn import_loads_ndjson_reports_errors_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("patients.ndjson.gz");
    let lines = [
        r#"{"resourceType":"Patient","id":"cli-1","name":[{"family":"One"}]}"#,
        r#"{"resourceType":"Patient","id":"cli-2","birthDate":"not-a-date"}"#,
        r#"{"resourceType":"Patient","name":[{"family":"Three"}]}"#,
    ];
    let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&file).unwrap(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, lines.join("\n").as_bytes()).unwrap();
    gz.finish().unwrap();

    let data_arg = data.to_str().unwrap();
    let (ok, text) = tessera(&["import", "--data-dir", data_arg, file.to_str().unwrap()]);
    assert!(!ok, "an import with errors exits non-zero");
    assert!(text.contains("2 resources") || text.contains("resources: 2") || text.contains(" 2 "), "{text}");
    assert!(text.contains("line 2"), "the error names its line: {text}");
    assert!(text.contains("birthDate"), "the error names the element: {text}");
    // The environment variable works like the flag; a finished file (its bad lines
    // reported) is not loaded twice, which would duplicate the lines without an id.
    let out = Command::new(env!("CARGO_BIN_EXE_tessera")).args(["import", file.to_str().unwrap()]).env("TESSERA_DATA_DIR", data_arg).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 skipped"), "{text}");

    let (ok, text) = tessera(&["import", "--data-dir", data_arg, "/nonexistent/path.ndjson"]);
    assert!(!ok);
    assert!(text.contains("/nonexistent/path.ndjson"), "{text}");
}

#[test]
fn tokens_domain_users_and_audit_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // A fresh data directory: bootstrap administrator and system account.
    let (ok, token) = tessera(&["token", "--system", "--data-dir", data]);
    assert!(ok, "{token}");
    assert_eq!(token.trim().split('.').count(), 3, "a JWT: {token}");
    let (ok, text) = tessera(&["token", "--user", "admin", "--data-dir", data]);
    assert!(ok, "{text}");
    // Apply a domain file twice: the second time changes nothing.
    let file = dir.path().join("domain.toml");
    std::fs::write(
        &file,
        r#"
name = "Test domain"
[[organisations]]
id = "t1"
name = "Test Trust"
[[organisations]]
id = "t1-site"
name = "Test Site"
parent = "t1"
[[locations]]
id = "t1-ward"
name = "Ward"
organisation = "t1-site"
"#,
    )
    .unwrap();
    let (ok, text) = tessera(&["domain", "apply", "--data-dir", data, file.to_str().unwrap()]);
    assert!(ok, "{text}");
    assert!(!text.contains("(0 resources changed)"), "{text}");
    let (ok, text) = tessera(&["domain", "apply", "--data-dir", data, file.to_str().unwrap()]);
    assert!(ok && text.contains("(0 resources changed)"), "applying again is a no-op: {text}");
    // Users.
    let (ok, text) = tessera(&["user", "add", "--data-dir", data, "nurse.test", "--name", "Nurse Test", "--role", "nurse", "--org", "t1-site", "--location", "t1-ward", "--password", "a-long-password"]);
    assert!(ok, "{text}");
    let (ok, text) = tessera(&["user", "list", "--data-dir", data]);
    assert!(ok && text.contains("nurse.test") && text.contains("nurse@t1-site [t1-ward]"), "{text}");
    let (ok, text) = tessera(&["user", "add", "--data-dir", data, "x", "--name", "X", "--role", "no-such-role", "--org", "t1"]);
    assert!(!ok && text.contains("no-such-role"), "{text}");
    let (ok, text) = tessera(&["domain", "show", "--data-dir", data]);
    assert!(ok && text.contains("\"t1-ward\"") && !text.contains("argon2"), "{text}");
    // The audit chain verifies.
    let (ok, text) = tessera(&["audit", "verify", "--data-dir", data]);
    assert!(ok, "{text}");
}

#[test]
fn reindex_rebuilds_the_search_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("patients.ndjson");
    std::fs::write(
        &file,
        [r#"{"resourceType":"Patient","id":"ri-1","name":[{"family":"Reindex"}],"gender":"female"}"#, r#"{"resourceType":"Patient","id":"ri-2","name":[{"family":"Other"}],"gender":"male"}"#].join("\n"),
    )
    .unwrap();
    let data_arg = data.to_str().unwrap();
    let (ok, text) = tessera(&["import", "--data-dir", data_arg, file.to_str().unwrap()]);
    assert!(ok, "{text}");
    let family = |store: &tessera_store::DynStore| {
        let store = store.clone();
        async move {
            let mut q = tessera_store::search::IndexQuery::new(Some("Patient"));
            q.clauses.push(tessera_store::search::Clause {
                any: vec![tessera_store::search::Pred::String { param: "family".into(), mode: tessera_store::search::StringMode::Prefix, value: "rein".into() }],
                negate: false,
            });
            store.search(&q).await.unwrap().len()
        }
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = tessera_store::open(&data, None).await.unwrap();
        assert_eq!(family(&store).await, 1, "indexed on import");
        // Lose the index, as an upgrade that changes it would.
        store.clear_search_index().await.unwrap();
        assert_eq!(family(&store).await, 0);
    });
    let (ok, text) = tessera(&["reindex", "--data-dir", data_arg]);
    assert!(ok && text.contains("reindexed 2 resources"), "{text}");
    rt.block_on(async {
        let store = tessera_store::open(&data, None).await.unwrap();
        assert_eq!(family(&store).await, 1, "found again after reindex");
    });
    let (ok, text) = tessera(&["reindex", "--help"]);
    assert!(ok && text.contains("--database-url") && text.contains("search index"), "{text}");
}

/// `tessera migrate`: a dry run reports and changes nothing (table and JSON), a real run
/// registers, a repeat writes nothing; `tessera empi scan` and `review` list the worklist.
#[test]
fn migrate_dry_run_real_run_and_the_review_worklist() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let domain = concat!(env!("CARGO_MANIFEST_DIR"), "/../tessera-domain/demo/demo-domain.toml");
    let (ok, text) = tessera(&["domain", "apply", "--data-dir", data, domain]);
    assert!(ok, "{text}");
    let csv = dir.path().join("pas.csv");
    std::fs::write(
        &csv,
        "MRN,NHS Number,Forename,Surname,Sex,Date of Birth,Postcode\n\
         S1,943 476 5919,Ivy,Quartermaine,F,03/04/1950,NG1 4AB\n\
         S2,,Ivan,Quartermaine,M,1950-04-03,NG1 4AB\n\
         S3,943 476 5918,Bad,Check,M,1960-01-01,\n\
         S4,,No,Date,M,30/02/1960,\n",
    )
    .unwrap();
    let csv = csv.to_str().unwrap();
    let (ok, text) = tessera(&["migrate", "--data-dir", data, "--org", "rx2", "--dry-run", csv]);
    assert!(ok, "{text}");
    assert!(text.contains("would create") && text.contains("invalid") && text.contains("dry run, nothing changed"), "{text}");
    assert!(text.contains("not a valid NHS number"), "the reason is given: {text}");
    let json_path = dir.path().join("report.json");
    let (ok, text) = tessera(&["migrate", "--data-dir", data, "--org", "rx2", "--dry-run", "--json", json_path.to_str().unwrap(), csv]);
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["invalid"], 2, "{report}");
    assert_eq!(report["records"].as_array().unwrap().len(), 4);
    let (ok, text) = tessera(&["migrate", "--data-dir", data, "--org", "rx2", csv]);
    assert!(ok, "{text}");
    assert!(text.contains("migrated: 0 linked, 1 created, 1 created for review, 2 invalid"), "Ivan may be Ivy: {text}");
    let (ok, text) = tessera(&["migrate", "--data-dir", data, "--org", "rx2", csv]);
    assert!(ok && text.contains("migrated: 2 linked, 0 created"), "a repeat writes nothing: {text}");
    // Unknown organisations are named.
    let (ok, text) = tessera(&["migrate", "--data-dir", data, "--org", "nowhere", csv]);
    assert!(!ok && text.contains("nowhere"), "{text}");
    // Ivy and Ivan (same family, birth date transposed, postcode) are on the worklist
    // already; a scan adds nothing new.
    let (ok, text) = tessera(&["empi", "scan", "--data-dir", data]);
    assert!(ok && text.contains("0 new pair(s)"), "{text}");
    let (ok, text) = tessera(&["empi", "review", "--data-dir", data]);
    assert!(ok, "{text}");
    assert!(text.contains("open pair(s)"), "{text}");
    let (ok, text) = tessera(&["empi", "review", "--data-dir", data, "--json"]);
    assert!(ok, "{text}");
    let start = text.find('[').unwrap();
    let pairs: serde_json::Value = serde_json::from_str(text[start..].trim_end().rsplit_once(']').map(|(a, _)| format!("{a}]")).unwrap().as_str()).unwrap();
    let first = &pairs.as_array().unwrap()[0];
    assert!(first["fields"].as_array().unwrap().iter().any(|f| f[0] == "birth-date"), "{first}");
    assert_eq!(first["older_trusts"][0], "rx2");
    let task = first["task"].as_str().unwrap();
    let (ok, text) = tessera(&["empi", "review", "--data-dir", data, "--decide", task, "--as", "not-duplicate"]);
    assert!(ok && text.contains("not-duplicate"), "{text}");
    let (ok, text) = tessera(&["empi", "review", "--data-dir", data]);
    assert!(ok && text.contains("0 open pair(s)"), "{text}");
}

#[test]
fn content_packages_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let (ok, key) = tessera(&["content", "key", "--data-dir", data]);
    assert!(ok, "{key}");
    let key = key.lines().map(str::trim).find(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit())).unwrap_or_else(|| panic!("a key: {key}")).to_string();
    assert_eq!(key.len(), 64, "an Ed25519 public key in hex: {key}");
    let (ok, again) = tessera(&["content", "key", "--data-dir", data]);
    assert!(ok && again.contains(&key), "the key is kept");
    let file = dir.path().join("model.tcp");
    let (ok, text) = tessera(&["content", "export", "--data-dir", data, "--layer", "model", "--version", "1", "--out", file.to_str().unwrap()]);
    assert!(ok && text.contains("items of the model layer") && text.contains(&key), "{text}");
    let (ok, text) = tessera(&["content", "diff", file.to_str().unwrap(), file.to_str().unwrap()]);
    assert!(ok && text.contains("0 difference(s)"), "{text}");
    let (ok, text) = tessera(&["content", "import", "--data-dir", data, file.to_str().unwrap()]);
    assert!(ok && text.contains("verified and loaded"), "{text}");
    // One byte altered: refused, with the reason.
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0x20;
    std::fs::write(&file, &bytes).unwrap();
    let (ok, text) = tessera(&["content", "import", "--data-dir", data, file.to_str().unwrap()]);
    assert!(!ok && text.contains("altered"), "{text}");
    let (ok, text) = tessera(&["content", "export", "--data-dir", data, "--layer", "site", "--out", file.to_str().unwrap()]);
    assert!(!ok && text.contains("--org"), "{text}");
}

#[test]
fn onboarding_environments_and_upgrades_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let prod = dir.path().join("prod");
    let test = dir.path().join("test");
    let (prod, test) = (prod.to_str().unwrap(), test.to_str().unwrap());
    let (ok, text) = tessera(&["onboard", "new-domain", "--data-dir", prod]);
    assert!(ok && text.contains("onboarding option 1") && text.contains("model content items loaded"), "{text}");
    let (ok, text) = tessera(&["upgrade", "--dry-run", "--data-dir", prod]);
    assert!(ok && text.contains("0 change(s) to the model content: nothing to do") && text.contains("schema: up to date"), "{text}");
    // A dry run on a database that does not exist yet: what would be created, and nothing is.
    let new = dir.path().join("new");
    let (ok, text) = tessera(&["upgrade", "--dry-run", "--data-dir", new.to_str().unwrap()]);
    assert!(ok && text.contains("schema: a new database"), "{text}");
    assert!(!new.join("tessera.db").exists(), "a dry run creates nothing");
    let (ok, text) = tessera(&["env", "create", "test", "--from-data-dir", prod, "--to-data-dir", test]);
    assert!(ok && text.contains("test environment created") && text.contains("no patients"), "{text}");
    let (ok, text) = tessera(&["env", "drift", "--from-data-dir", prod, "--to-data-dir", test]);
    assert!(ok && text.contains("from production to test"), "{text}");
    let (ok, text) = tessera(&["env", "promote", "--from-data-dir", test, "--to-data-dir", prod]);
    assert!(!ok && text.contains("one step at a time"), "{text}");
    let (ok, text) = tessera(&["onboard", "--help"]);
    assert!(ok && ["new-domain", "copy-domain", "join", "join-model", "optimise"].iter().all(|c| text.contains(c)), "{text}");
}

#[test]
fn outbox_list_and_replay_from_the_command_line() {
    let (ok, text) = tessera(&["outbox", "--help"]);
    assert!(ok && text.contains("list") && text.contains("replay") && text.contains("dead"), "{text}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let subscription = dir.path().join("subscription.ndjson");
    std::fs::write(
        &subscription,
        r#"{"resourceType":"Subscription","id":"cli-sub","status":"requested","reason":"cli","criteria":"Observation","channel":{"type":"rest-hook","endpoint":"http://127.0.0.1:9/hook"}}"#,
    )
    .unwrap();
    let observations = dir.path().join("observations.ndjson");
    std::fs::write(
        &observations,
        r#"{"resourceType":"Observation","id":"cli-obs","status":"final","code":{"text":"heart rate"}}"#,
    )
    .unwrap();
    for file in [&subscription, &observations] {
        let (ok, text) = tessera(&["import", "--data-dir", data_arg, file.to_str().unwrap()]);
        assert!(ok, "{text}");
    }
    // The import's Observation was committed with its notification.
    let (ok, text) = tessera(&["outbox", "list", "--data-dir", data_arg]);
    assert!(ok, "{text}");
    assert!(text.contains("SUBSCRIPTION") && text.contains("cli-sub") && text.contains("Observation/cli-obs/_history/1") && text.contains("pending"), "{text}");
    assert!(text.contains("1 item(s)"), "{text}");
    let (ok, text) = tessera(&["outbox", "list", "--state", "dead", "--data-dir", data_arg]);
    assert!(ok && text.contains("0 item(s)"), "{text}");
    let (ok, text) = tessera(&["outbox", "list", "--state", "lost", "--data-dir", data_arg]);
    assert!(!ok && text.contains("pending, failed, dead"), "{text}");
    // A pending item is not replayed; nothing named is refused.
    let (ok, text) = tessera(&["outbox", "replay", "1", "--data-dir", data_arg]);
    assert!(ok && text.contains("0 item(s) back on the queue") && text.contains("not replayed"), "{text}");
    let (ok, text) = tessera(&["outbox", "replay", "--data-dir", data_arg]);
    assert!(!ok && text.contains("--dead"), "{text}");
    let (ok, text) = tessera(&["outbox", "replay", "--dead", "--data-dir", data_arg]);
    assert!(ok && text.contains("0 item(s) back on the queue"), "{text}");
}
