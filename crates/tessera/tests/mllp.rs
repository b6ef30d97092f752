//! HL7 v2 over a real MLLP connection, on both backends: ADT registrations acknowledged `AA`
//! after the commit and filed through the patient index as the interface's organisation; a
//! resent message acknowledged again and applied once; `AE` with an `ERR` naming the field
//! for what the record refuses; `AR` for what cannot be read or is not supported; several
//! messages on one connection; the shared data's ADT registrations.

mod common;
use common::Server;
use std::time::Duration;

on_both_backends!(adt_over_mllp);

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
        async move { tessera_mllp::send(&addr, &messages, Duration::from_secs(30)).await.unwrap() }
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
    let ack = tessera_mllp::send(&rx2_addr, &[a04("S1", "9449307342", "SB1", "Different", "20010625")], Duration::from_secs(30)).await.unwrap();
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
