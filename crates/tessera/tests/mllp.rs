//! HL7 v2 over a real MLLP connection, on both backends: ADT registrations acknowledged `AA`
//! after the commit and filed through the patient index as the interface's organisation; a
//! resent message acknowledged again and applied once; `AE` with an `ERR` naming the field
//! for what the record refuses; `AR` for what cannot be read or is not supported; several
//! messages on one connection; the shared data's ADT registrations.

mod common;
use common::Server;
use serde_json::Value;
use std::time::Duration;
use tessera_hl7v2::map::{self, Context, Method};

on_both_backends!(adt_over_mllp, every_shared_sample_over_mllp, an_independent_hl7_implementation, a_stay_and_its_results, an_interface_over_tls);

fn a04(control: &str, nhs: &str, mrn: &str, family: &str, birth: &str) -> String {
    format!(
        "MSH|^~\\&|PAS|NORTHGATE|TESSERA|DOMAIN|20261207120000||ADT^A04^ADT_A01|{control}|P|2.5\r\
         EVN|A04|20261207120000\r\
         PID|1||{nhs}^^^NHS^NH~{mrn}^^^RX1^MR||{family}^Ada^^^Ms||{birth}|F|||1 High Street^^Northgate^^NG1 1AA^GBR\r\
         PV1|1|O\r"
    )
}

fn msa(ack: &str) -> (String, String) {
    let line = ack.split('\r').find(|l| l.starts_with("MSA|")).unwrap_or_else(|| panic!("no MSA: {ack}"));
    let f: Vec<&str> = line.split('|').collect();
    (f[1].to_string(), f.get(2).unwrap_or(&"").to_string())
}

async fn adt_over_mllp(s: &Server) {
    s.load_demo().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(tessera_mllp::serve(s.engine.clone(), tessera_mllp::Interface::new(&s.engine.domain(), "rx1"), listener));
    let send = |messages: Vec<String>| {
        let addr = addr.clone();
        async move { tessera_mllp::send(&addr, &messages, Duration::from_secs(30)).await.unwrap().into_iter().map(|r| r.join("")).collect::<Vec<String>>() }
    };
    // A new patient, and a second message on the same connection: an update of Jane Smith
    // (her NHS number) from Northgate's PAS.
    let acks = send(vec![a04("M1", "9434765919", "NG123456", "Lovelace", "19801210"), a04("M2", "9449305552", "NG000777", "Smith", "19580314")]).await;
    assert_eq!(acks.len(), 2);
    assert_eq!(msa(&acks[0]), ("AA".to_string(), "M1".to_string()), "{}", acks[0]);
    assert!(acks[0].starts_with("MSH|^~\\&|TESSERA|DOMAIN|PAS|NORTHGATE|"), "the ACK answers the sender: {}", acks[0]);
    assert!(acks[0].contains("|ACK^A04^ACK|"), "{}", acks[0]);
    assert_eq!(msa(&acks[1]).0, "AA", "{}", acks[1]);
    assert!(acks[1].contains("Patient/jane-smith"), "a known NHS number links: {}", acks[1]);
    let found = s.get("Patient?identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919").await.json();
    let p = &found["entry"][0]["resource"];
    assert_eq!(p["name"][0]["family"], "Lovelace");
    assert_eq!(p["birthDate"], "1980-12-10");
    let mrn_system = s.engine.domain().mrn_system("rx1");
    assert!(p["identifier"].as_array().unwrap().iter().any(|i| i["system"] == mrn_system.as_str() && i["value"] == "NG123456"), "the organisation's MRN: {p}");
    let jane = s.get("Patient/jane-smith").await.json();
    assert!(jane["identifier"].as_array().unwrap().iter().any(|i| i["value"] == "NG000777"), "the MRN is added to the linked record");

    // Resent with the same control id: acknowledged again, applied once.
    let versions = s.engine.stats().await.unwrap().versions;
    let again = send(vec![a04("M1", "9434765919", "NG123456", "Lovelace", "19801210")]).await;
    assert_eq!(msa(&again[0]).0, "AA");
    assert!(again[0].contains("already applied"), "{}", again[0]);
    assert_eq!(s.engine.stats().await.unwrap().versions, versions, "nothing applied twice");

    // What the record refuses: AE with ERR naming the field.
    let bad_nhs = send(vec![a04("M3", "9434765910", "NG999", "Wrong", "19801210")]).await;
    assert_eq!(msa(&bad_nhs[0]).0, "AE", "{}", bad_nhs[0]);
    assert!(bad_nhs[0].contains("\rERR||PID^1^3|"), "ERR names PID-3: {}", bad_nhs[0]);
    let bad_date = send(vec![a04("M4", "9434765919", "NG124", "Lovelace", "19801340")]).await;
    assert_eq!(msa(&bad_date[0]).0, "AE");
    assert!(bad_date[0].contains("\rERR||PID^1^7|102^"), "{}", bad_date[0]);
    // What cannot be read, or is not supported: AR.
    let garbage = send(vec!["this is not HL7".to_string()]).await;
    assert_eq!(msa(&garbage[0]).0, "AR", "{}", garbage[0]);
    let oru = a04("M5", "9434765919", "NG1", "X", "19801210").replace("ADT^A04^ADT_A01", "QRY^A19^QRY_A19");
    let r = send(vec![oru]).await;
    assert_eq!(msa(&r[0]).0, "AR");
    assert!(r[0].contains("|200^Unsupported message type^HL70357|"), "{}", r[0]);
    let a17 = a04("M6", "9434765919", "NG1", "X", "19801210").replace("ADT^A04^ADT_A01", "ADT^A17^ADT_A17");
    assert!(send(vec![a17]).await[0].contains("|201^Unsupported event code^HL70357|"));
    // Nothing refused was stored.
    assert_eq!(s.get("Patient?family=Wrong&_summary=count").await.json()["total"], 0);

    // An interface of another trust links to a restricted patient it may not see: the ACK
    // names the record it filed into, and nothing of the record.
    let rx2 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let rx2_addr = rx2.local_addr().unwrap().to_string();
    tokio::spawn(tessera_mllp::serve(s.engine.clone(), tessera_mllp::Interface::new(&s.engine.domain(), "rx2"), rx2));
    let ack: Vec<String> = tessera_mllp::send(&rx2_addr, &[a04("S1", "9449307342", "SB1", "Different", "20010625")], Duration::from_secs(30)).await.unwrap().into_iter().map(|r| r.join("")).collect();
    assert_eq!(msa(&ack[0]).0, "AA", "{}", ack[0]);
    assert!(!ack[0].contains("Nowak") && !ack[0].contains("Maria"), "the ACK reveals nothing of the record: {}", ack[0]);

    // The shared data's registrations (their identifiers have no NHS number: filed under
    // the interface's MRN system), each acknowledged.
    let dir = common::shared_data().join("hl7v2");
    for name in ["ADT-A04-01.hl7", "ADT-A28-01.hl7", "ADT-A08-01.hl7"] {
        let text = std::fs::read_to_string(dir.join(name)).unwrap();
        let msg = tessera_hl7v2::Message::parse(&text).unwrap().encode();
        let ack = send(vec![msg]).await;
        let (code, _) = msa(&ack[0]);
        assert!(code == "AA" || code == "AE", "{name}: {}", ack[0]);
        if code == "AE" {
            assert!(ack[0].contains("\rERR|"), "{name}: an AE names the problem: {}", ack[0]);
        }
    }
}

/// An interface of Northgate whose ward table knows every place the shared samples name
/// (each one mapped to Ward 7A).
fn sample_interface(s: &Server) -> tessera_mllp::Interface {
    let mut interface = tessera_mllp::Interface::new(&s.engine.domain(), "rx1");
    interface.id = "samples".into();
    for (_, text) in samples() {
        let Ok(msg) = tessera_hl7v2::Message::parse(&text) else { continue };
        for (segment, field) in [("PV1", 3), ("AIL", 3)] {
            for seg in msg.segments_named(segment) {
                if let Some(poc) = seg.get(field, 1, 1, 1).filter(|p| !p.trim().is_empty()) {
                    interface.wards.insert(poc.trim().to_string(), "ward-7a".into());
                }
            }
        }
    }
    interface
}

/// Every file of the shared HL7 v2 samples, by name.
fn samples() -> Vec<(String, String)> {
    let dir = common::shared_data().join("hl7v2");
    let mut out: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "hl7"))
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    out.sort();
    out
}

async fn listen(s: &Server, interface: tessera_mllp::Interface) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(tessera_mllp::serve(s.engine.clone(), interface, listener));
    addr
}

fn err_segment(ack: &str) -> String {
    ack.split('\r').find(|l| l.starts_with("ERR|")).unwrap_or("").to_string()
}

async fn every_shared_sample_over_mllp(s: &Server) {
    s.load_demo().await;
    let addr = listen(s, sample_interface(s)).await;
    let all = samples();
    assert!(all.len() >= 79, "the shared samples: {}", all.len());
    // The record ADT-A40-01 merges away (MRG-1 56789), registered first.
    let prior = "MSH|^~\\&|Ntierprise|Ntierprise Clinic|Healthmatics EHR|Healthmatics Clinic|20190423150000||ADT^A28^ADT_A05|8919-28|P|2.8\rEVN|A28|20190423150000\rPID|1||56789^^^BCBS^MR||Tester^Toby||20171111|M\r";
    let kept = "MSH|^~\\&|Ntierprise|Ntierprise Clinic|Healthmatics EHR|Healthmatics Clinic|20190423150000||ADT^A28^ADT_A05|8919-27|P|2.8\rEVN|A28|20190423150000\rPID|1||12345^^^BCBS^MR||Test^Test^A||20180205|F\r";
    let r = tessera_mllp::send(&addr, &[prior.to_string(), kept.to_string()], Duration::from_secs(60)).await.unwrap();
    assert_eq!(tessera_mllp::msa_code(&r[0][0]), "AA", "{}", r[0][0]);
    assert_eq!(tessera_mllp::msa_code(&r[1][0]), "AA", "{}", r[1][0]);
    let mut report = Vec::new();
    for (name, text) in &all {
        // Each file as it is (CR, LF or CRLF segment ends), on its own connection.
        let mut replies = tessera_mllp::send(&addr, std::slice::from_ref(text), Duration::from_secs(60)).await.unwrap_or_else(|e| panic!("{name}: {e}")).remove(0);
        let msg = tessera_hl7v2::Message::parse(text).unwrap();
        let kind = msg.message_type().unwrap();
        let supported = tessera_mllp::inbound::supported().any(|(c, t)| c == kind.code && Some(t) == kind.trigger.as_deref());
        if replies.is_empty() {
            // It asked for no acknowledgement (MSH-15 and MSH-16 NE): the record shows it.
            assert_eq!(msg.msh().value(15), Some("NE"), "{name}: no acknowledgement");
            let record = tessera_mllp::inbound::record_id(&msg);


            // Nothing comes back: wait for the record to show it.
            let mut applied = false;
            for _ in 0..50 {
                applied = s.engine.read(&tessera_engine::Access::system("rx1"), "Provenance", &record).await.is_ok();
                if applied {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            assert_eq!(applied, supported, "{name}: applied exactly when supported");
            report.push(format!("{name}: {kind} (no ack asked)"));
            continue;
        }
        // Enhanced mode: the commit acknowledgement first (CA/CR), then the application's.
        if replies.len() == 2 {
            assert!(matches!(tessera_mllp::msa_code(&replies[0]).as_str(), "CA" | "CR"), "{name}: {}", replies[0]);
        }
        let ack = vec![replies.pop().unwrap()];
        let expected = if supported { ["AA", "CA"] } else { ["AR", "CR"] };
        assert!(expected.contains(&tessera_mllp::msa_code(&ack[0]).as_str()), "{name} ({kind}): {}", ack[0]);
        let (_, control) = msa(&ack[0]);
        let code = if supported { "AA" } else { "AR" };
        assert_eq!(control, msg.control_id().unwrap_or(""), "{name}: MSA-2 names the message");
        if !supported {
            let err = err_segment(&ack[0]);
            assert!(err.contains("|200^") || err.contains("|201^"), "{name}: {err}");
        }
        if supported {
            check_stored(s, name, &msg).await;
        }
        report.push(format!("{name}: {kind} {code}"));
    }
    // A40: the prior record merged into the kept one.
    let prior = s.get("Patient?identifier=https://fhir.rx1.nhs.example/Id/mrn|56789").await.json();
    let kept = s.get("Patient?identifier=https://fhir.rx1.nhs.example/Id/mrn|12345").await.json();
    let kept_id = kept["entry"][0]["resource"]["id"].as_str().unwrap().to_string();
    let links: Vec<Value> = prior["entry"].as_array().unwrap().iter().map(|e| e["resource"].clone()).filter(|p| p["id"] != kept_id.as_str()).collect();
    for p in &links {
        assert_eq!(p["active"], false, "the record merged away is inactive: {p}");
        assert_eq!(p["link"][0]["type"], "replaced-by");
        assert_eq!(p["link"][0]["other"]["reference"], format!("Patient/{kept_id}"));
    }
    eprintln!("{}", report.join("\n"));
    // Sent again: every applied one is acknowledged and applied once.
    let versions = s.engine.stats().await.unwrap().versions;
    for (name, text) in &all {
        let replies = tessera_mllp::send(&addr, std::slice::from_ref(text), Duration::from_secs(60)).await.unwrap().remove(0);
        for r in &replies {
            assert!(matches!(tessera_mllp::msa_code(r).as_str(), "AA" | "AR" | "CA" | "CR"), "{name}: {r}");
        }
    }
    assert_eq!(s.engine.stats().await.unwrap().versions, versions, "a resent sample changes nothing");
}

/// What a supported sample left in the record agrees, element by element, with what its
/// mapping says (references aside, which the engine resolves); for ADT, the encounter of
/// the visit is there, at the mapped ward, for the right patient.
async fn check_stored(s: &Server, name: &str, msg: &tessera_hl7v2::Message) {
    let kind = msg.message_type().unwrap();
    let systems = map::Systems::for_organisation("rx1");
    let ward = |_: &tessera_hl7v2::visit::Location| Some("Location/ward-7a".to_string());
    let ctx = Context {
        systems: &systems,
        patient: "urn:uuid:00000000-0000-4000-8000-000000000001",
        encounter: None,
        organisation: "Organization/rx1",
        location: &ward,
        require_order: false,
    };
    let trigger = kind.trigger.clone().unwrap_or_default();
    let entries = match kind.code.as_str() {
        "ORU" => map::results::oru_r01(msg, &ctx),
        "ORM" => map::orders::orm_o01(msg, &ctx),
        "OML" => map::orders::oml_o21(msg, &ctx),
        "SIU" => map::scheduling::siu(msg, &ctx, &trigger),
        "MDM" => map::documents::mdm_t02(msg, &ctx),
        "RDE" => map::pharmacy::rde_o11(msg, &ctx),
        "VXU" => map::immunisation::vxu_v04(msg, &ctx),
        _ => {
            if let (Some(visit), Some(event)) = (map::adt::visit_number(msg), map::adt::event(&trigger)) {
                let q = map::identifier_query(&systems.visit, &visit);
                let found = s.get(&format!("Encounter?{q}")).await.json();
                assert_eq!(found["total"], 1, "{name}: the encounter of visit {visit}");
                let e = &found["entry"][0]["resource"];
                let status = e["status"].as_str().unwrap();
                let expected: &[&str] = match event {
                    map::adt::Event::Discharge => &["finished"],
                    map::adt::Event::PreAdmit => &["planned"],
                    map::adt::Event::CancelAdmit => &["cancelled"],
                    map::adt::Event::Update => &["in-progress", "finished", "planned", "cancelled"],
                    _ => &["in-progress"],
                };
                assert!(expected.contains(&status), "{name}: status {status}");
                assert!(e["subject"]["reference"].as_str().unwrap().starts_with("Patient/"), "{name}");
                if msg.segment("PV1").and_then(|p| p.get(3, 1, 1, 1)).is_some_and(|p| !p.trim().is_empty()) {
                    let locs = e["location"].as_array().unwrap_or_else(|| panic!("{name}: {e}"));
                    assert!(locs.iter().any(|l| l["location"]["reference"] == "Location/ward-7a"), "{name}: {e}");
                }
                assert_eq!(e["serviceProvider"]["reference"], "Organization/rx1-general", "{name}: the ward's hospital provides the care");
            }
            return;
        }
    }
    .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(!entries.is_empty(), "{name}");
    for entry in &entries {
        let ty = entry.resource["resourceType"].as_str().unwrap();
        let Method::Upsert(q) = &entry.method else { continue };
        let found = s.get(&format!("{ty}?{q}")).await.json();
        assert_eq!(found["total"], 1, "{name}: {ty}?{q}");
        let stored = &found["entry"][0]["resource"];
        agree(&entry.resource, stored, &format!("{name}: {ty}"));
    }
}

fn agree(mapped: &Value, stored: &Value, at: &str) {
    match (mapped, stored) {
        (Value::Object(m), Value::Object(st)) => {
            for (k, v) in m {
                if k == "reference" && v.as_str().is_some_and(|r| r.starts_with("urn:uuid:")) {
                    assert!(st.get(k).and_then(Value::as_str).is_some_and(|r| !r.starts_with("urn:")), "{at}.{k}: resolved");
                    continue;
                }
                agree(v, st.get(k).unwrap_or(&Value::Null), &format!("{at}.{k}"));
            }
        }
        (Value::Array(m), Value::Array(st)) => {
            assert_eq!(m.len(), st.len(), "{at}: {mapped} / {stored}");
            for (i, (a, b)) in m.iter().zip(st).enumerate() {
                agree(a, b, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(a), Value::Number(b)) => assert_eq!(a.to_string().parse::<f64>().ok(), b.to_string().parse::<f64>().ok(), "{at}"),
        (a, b) => assert_eq!(a, b, "{at}"),
    }
}

/// The interface driven by an independent implementation: messages built with the Python
/// package `hl7apy`, sent and their acknowledgements parsed with the package `hl7`
/// (clients/python/test_hl7_peer.py; installed by `.ci/run`), malformed ones included.
async fn an_independent_hl7_implementation(s: &Server) {
    s.load_demo().await;
    let domain = s.engine.domain();
    let declared = domain.interface("rx1-pas").expect("the demo declares Northgate's interface");
    let addr = listen(s, tessera_mllp::Interface::from_domain(&domain, declared)).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap();
    let dir = root.join("clients/python");
    let venv = dir.join(".venv/bin/python");
    let python = if venv.exists() { venv } else { std::path::PathBuf::from("python3") };
    let installed = std::process::Command::new(&python).args(["-c", "import hl7, hl7apy"]).output().is_ok_and(|o| o.status.success());
    if !installed {
        assert!(std::env::var("TESSERA_CLIENTS_REQUIRED").as_deref() != Ok("1"), "hl7/hl7apy (Python) are not installed, and TESSERA_CLIENTS_REQUIRED=1");
        eprintln!("hl7/hl7apy (Python) are not installed: skipped");
        return;
    }
    let mut c = std::process::Command::new(&python);
    c.current_dir(&dir).args(["-m", "unittest", "-v", "test_hl7_peer"]).env("TESSERA_MLLP", &addr).env("TESSERA_BASE", &s.base).env("TESSERA_TOKEN", &s.system_token);
    let out = tokio::task::spawn_blocking(move || c.output()).await.unwrap().unwrap();
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the hl7/hl7apy peer failed:\n{text}");
    eprintln!("{text}");
}

fn northgate(kind: &str, control: &str, rest: &str) -> String {
    format!("MSH|^~\\&|PAS|RX1|TESSERA|DOMAIN|20261207120000||{kind}|{control}|P|2.5\rEVN||20261207120000\rPID|1||9449305552^^^NHS^NH~NG000777^^^RX1^MR||SMITH^JANE||19580314|F\r{rest}")
}

fn oru(control: &str, placer: &str, filler: &str, status: &str, potassium: &str) -> String {
    northgate(
        "ORU^R01^ORU_R01",
        control,
        &format!(
            "PV1|1|I|7A||||||||||||||||V100\rOBR|1|{placer}|{filler}|24326-1^Electrolytes panel^LN|||202612071015|||||||||||||||202612071100|||{status}\r\
             OBX|1|NM|2823-3^Potassium^LN||{potassium}|mmol/L^^UCUM|3.5-5.3|{flag}|||{status}\r\
             OBX|2|NM|2951-2^Sodium^LN||131|mmol/L^^UCUM|133-146|L|||{status}\r",
            flag = if potassium.parse::<f64>().unwrap() > 5.3 { "H" } else { "N" }
        ),
    )
}

/// A stay through every ADT event, results filed to the right patient and encounter and
/// corrected in place, a duplicate admission, a result for an unknown order.
async fn a_stay_and_its_results(s: &Server) {
    s.load_demo().await;
    let domain = s.engine.domain();
    let addr = listen(s, tessera_mllp::Interface::from_domain(&domain, domain.interface("rx1-pas").unwrap())).await;
    let send = |messages: Vec<String>| {
        let addr = addr.clone();
        async move { tessera_mllp::send(&addr, &messages, Duration::from_secs(30)).await.unwrap().into_iter().map(|mut r| r.remove(0)).collect::<Vec<String>>() }
    };
    let encounter = || async { s.get("Encounter?identifier=https://tessera.health/Id/rx1/visit-number|V100").await.json() };
    let pv1 = |ward: &str, extra: &str| format!("PV1|1|I|{ward}^1^A||||C123^JONES^ANN^^^DR||||||||||||V100|||||||||||||||||||||||||202612071000{extra}\r");

    // The care relationship an admission gives: a nurse of Ward 7A sees a new patient's
    // results once the patient is admitted there, and not once the admission is cancelled.
    let jones = s.token(("nurse.jones", "nurse", "rx1-general", Some("ward-7a")));
    let ada = "PID|1||9434765919^^^NHS^NH~NG5555^^^RX1^MR||LOVELACE^ADA||19801210|F";
    let result = format!(
        "MSH|^~\\&|LAB|RX1|TESSERA|DOMAIN|20261207120000||ORU^R01^ORU_R01|C0|P|2.5\r{ada}\rOBR|1||FADA|2345-7^Glucose^LN|||202612071015|||||||||||||||202612071100|||F\rOBX|1|NM|2345-7^Glucose^LN||5.4|mmol/L^^UCUM|3.5-7.8|N|||F\r"
    );
    assert_eq!(tessera_mllp::msa_code(&send(vec![result]).await[0]), "AA");
    let report = s.get("DiagnosticReport?identifier=https://tessera.health/Id/rx1/filler-order|FADA").await.json();
    let glucose = report["entry"][0]["resource"]["result"][0]["reference"].as_str().unwrap().to_string();
    let seen = |token: String, path: String| async move { s.request_as(&token, "GET", &path, None).await.status };
    assert_ne!(seen(jones.clone(), glucose.clone()).await, 200, "no relationship before the admission");
    let admit = format!("MSH|^~\\&|PAS|RX1|TESSERA|DOMAIN|20261207120000||ADT^A01^ADT_A01|C1|P|2.5\rEVN||20261207120000\r{ada}\rPV1|1|I|7A||||||||||||||||V700\r");
    assert_eq!(tessera_mllp::msa_code(&send(vec![admit.clone()]).await[0]), "AA");
    assert_eq!(seen(jones.clone(), glucose.clone()).await, 200, "the admission to Ward 7A gives its nurses the relationship");
    let cancel = admit.replace("ADT^A01^ADT_A01|C1", "ADT^A11^ADT_A09|C2");
    assert_eq!(tessera_mllp::msa_code(&send(vec![cancel]).await[0]), "AA");
    assert_ne!(seen(jones.clone(), glucose.clone()).await, 200, "a cancelled admission gives none");

    // Admission, and the same admission sent again under a new control id.
    let acks = send(vec![northgate("ADT^A01^ADT_A01", "S1", &pv1("7A", "")), northgate("ADT^A01^ADT_A01", "S1b", &pv1("7A", ""))]).await;
    assert!(acks.iter().all(|a| tessera_mllp::msa_code(a) == "AA"), "{acks:?}");
    let found = encounter().await;
    assert_eq!(found["total"], 1, "one encounter for the visit, however often it is admitted");
    let e = &found["entry"][0]["resource"];
    let id = e["id"].as_str().unwrap().to_string();
    assert_eq!(e["subject"]["reference"], "Patient/jane-smith", "filed to the patient the NHS number names");
    assert_eq!(e["status"], "in-progress");
    assert_eq!(e["location"][0]["location"]["reference"], "Location/ward-7a");
    assert_eq!(e["serviceProvider"]["reference"], "Organization/rx1-general");
    assert_eq!(e["participant"][0]["individual"]["identifier"]["value"], "C123");

    // Transfer to 3B, cancelled; discharge, cancelled; the admission cancelled.
    let step = |kind: &'static str, control: &'static str, ward: &'static str, extra: &'static str| northgate(kind, control, &pv1(ward, extra));
    assert_eq!(tessera_mllp::msa_code(&send(vec![step("ADT^A02^ADT_A02", "S2", "3B", "")]).await[0]), "AA");
    let e = encounter().await["entry"][0]["resource"].clone();
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["location"][1]["location"]["reference"], "Location/ward-3b");
    assert_eq!(e["location"][1]["status"], "active");
    assert_eq!(e["location"][0]["status"], "completed");
    assert_eq!(e["serviceProvider"]["reference"], "Organization/rx1-st-annes", "the ward's hospital");
    send(vec![step("ADT^A12^ADT_A12", "S3", "3B", "")]).await;
    let e = encounter().await["entry"][0]["resource"].clone();
    assert_eq!(e["location"].as_array().unwrap().len(), 1, "the transfer undone: {e}");
    assert_eq!(e["location"][0]["status"], "active");
    send(vec![step("ADT^A03^ADT_A03", "S4", "7A", "|202612081200")]).await;
    let e = encounter().await["entry"][0]["resource"].clone();
    assert_eq!(e["status"], "finished");
    assert_eq!(e["period"]["end"], "2026-12-08T12:00:00+00:00");
    send(vec![step("ADT^A13^ADT_A01", "S5", "7A", "")]).await;
    let e = encounter().await["entry"][0]["resource"].clone();
    assert_eq!(e["status"], "in-progress");
    assert!(e["period"].get("end").is_none());

    // Results: filed to Jane and to the encounter of PV1-19; corrected in place.
    let ack = &send(vec![oru("R1", "P100", "F100", "F", "4.1")]).await[0];
    assert_eq!(tessera_mllp::msa_code(ack), "AA", "{ack}");
    let reports = s.get("DiagnosticReport?identifier=https://tessera.health/Id/rx1/filler-order|F100").await.json();
    assert_eq!(reports["total"], 1);
    let report = reports["entry"][0]["resource"].clone();
    assert_eq!(report["subject"]["reference"], "Patient/jane-smith");
    assert_eq!(report["encounter"]["reference"], format!("Encounter/{id}"));
    assert_eq!(report["status"], "final");
    let first = report["result"][0]["reference"].as_str().unwrap().to_string();
    let k = s.get(&first).await.json();
    assert_eq!(k["valueQuantity"]["value"], serde_json::json!(4.1));
    assert_eq!(k["subject"]["reference"], "Patient/jane-smith");
    let ack = &send(vec![oru("R2", "P100", "F100", "C", "5.9")]).await[0];
    assert_eq!(tessera_mllp::msa_code(ack), "AA", "{ack}");
    let again = s.get("DiagnosticReport?identifier=https://tessera.health/Id/rx1/filler-order|F100").await.json();
    assert_eq!(again["total"], 1, "the correction updates the report, it does not add one");
    let corrected = &again["entry"][0]["resource"];
    assert_eq!(corrected["status"], "corrected");
    assert_eq!(corrected["result"][0]["reference"], first.as_str(), "the same observation, corrected");
    let k = s.get(&first).await.json();
    assert_eq!(k["status"], "corrected");
    assert_eq!(k["valueQuantity"]["value"], serde_json::json!(5.9));
    assert_eq!(k["interpretation"][0]["coding"][0]["code"], "H");
    assert_eq!(k["meta"]["versionId"], "2");

    // A message naming two patients is refused whole.
    let two = oru("R3", "P101", "F101", "F", "4.0").replace("PV1|", "PID|2||9434765919^^^NHS^NH||LOVELACE^ADA||19801210|F\rPV1|");
    let ack = &send(vec![two]).await[0];
    assert_eq!(tessera_mllp::msa_code(ack), "AE", "{ack}");
    assert_eq!(s.get("DiagnosticReport?identifier=https://tessera.health/Id/rx1/filler-order|F101&_summary=count").await.json()["total"], 0);

    // The admission cancelled: the encounter too.
    send(vec![step("ADT^A11^ADT_A09", "S6", "7A", "")]).await;
    assert_eq!(encounter().await["entry"][0]["resource"]["status"], "cancelled");

    // An interface that requires orders: a result for an order the record lacks is AE
    // naming OBR; once the order is placed (ORM), the result is filed.
    let mut strict = tessera_mllp::Interface::from_domain(&domain, domain.interface("rx1-pas").unwrap());
    strict.require_order = true;
    strict.id = "rx1-lab".into();
    let lab = listen(s, strict).await;
    let r = tessera_mllp::send(&lab, &[oru("L1", "P300", "F300", "F", "4.4")], Duration::from_secs(30)).await.unwrap();
    assert_eq!(tessera_mllp::msa_code(&r[0][0]), "AE", "{}", r[0][0]);
    assert!(err_segment(&r[0][0]).contains("|OBR^1^2|204^"), "{}", r[0][0]);
    let orm = northgate("ORM^O01^ORM_O01", "L2", "ORC|NW|P300\rOBR|1|P300||24326-1^Electrolytes panel^LN\r");
    let r = tessera_mllp::send(&lab, &[orm, oru("L3", "P300", "F300", "F", "4.4")], Duration::from_secs(30)).await.unwrap();
    assert_eq!(tessera_mllp::msa_code(&r[0][0]), "AA", "{}", r[0][0]);
    assert_eq!(tessera_mllp::msa_code(&r[1][0]), "AA", "{}", r[1][0]);
}

/// An interface over TLS: a client trusting its certificate is answered; a plain MLLP
/// client gets nothing it can read.
async fn an_interface_over_tls(s: &Server) {
    s.load_demo().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("mllp.crt"), dir.path().join("mllp.key"));
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    let interface = tessera_mllp::Interface::new(&s.engine.domain(), "rx1").with_tls(&cert, &key).unwrap();
    let addr = listen(s, interface).await;
    let r = tessera_mllp::send_tls(&addr, "127.0.0.1", &cert, &[a04("T1", "9434765919", "TLS1", "Lovelace", "19801210")], Duration::from_secs(30)).await.unwrap();
    assert_eq!(tessera_mllp::msa_code(&r[0][0]), "AA", "{}", r[0][0]);
    assert!(tessera_mllp::send(&addr, &[a04("T2", "9434765919", "TLS2", "Lovelace", "19801210")], Duration::from_secs(5)).await.is_err(), "plain MLLP to a TLS interface");
    assert!(tessera_mllp::Interface::new(&s.engine.domain(), "rx1").with_tls(&key, &key).is_err(), "a key is no certificate");
}
