//! The search corpus: queries over Synthea patients, on both backends, each checked against
//! an oracle — a plain scan of every stored resource of the type, written here without the
//! search code — so that every parameter type, modifier and prefix returns exactly the
//! ids it should, and both backends return the same.

mod common;
use common::Server;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use tessera_engine::Access;

on_both_backends!(synthea_queries_match_the_oracle, many_referenced_ids_page_and_count);

/// Loads the hospitals, practitioners and the first `n` patient bundles.
async fn load(s: &Server, n: usize) {
    let dir = common::shared_data().join("synthea");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (support, patients): (Vec<_>, Vec<_>) =
        files.into_iter().partition(|p| p.file_name().unwrap().to_string_lossy().starts_with("0-"));
    for f in support.iter().chain(patients.iter().take(n)) {
        let bundle = serde_json::to_vec(&common::read_json(f)).unwrap();
        s.engine.bundle_json(&Access::system("tessera"), &bundle, None).await.unwrap();
    }
}

/// Every resource a search returns (following `next` links), by id, in order.
async fn search(s: &Server, query: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut url = query.to_string();
    loop {
        let r = s.get(&url).await;
        assert_eq!(r.status, 200, "{query}: {}", String::from_utf8_lossy(&r.body));
        let b = r.json();
        for e in b["entry"].as_array().into_iter().flatten() {
            if e["search"]["mode"] == "match" {
                out.push(e["resource"].clone());
            }
        }
        match b["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next") {
            Some(next) => url = next["url"].as_str().unwrap().split("/fhir/").nth(1).unwrap().to_string(),
            None => return out,
        }
    }
}

fn ids(resources: &[Value]) -> BTreeSet<String> {
    resources.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

fn codings(v: &Value) -> Vec<(String, String)> {
    v["coding"].as_array().into_iter().flatten().map(|c| (c["system"].as_str().unwrap_or("").to_string(), c["code"].as_str().unwrap_or("").to_string())).collect()
}

/// Microseconds since the epoch of an RFC 3339 date-time, and its one-second range.
fn instant(s: &str) -> (i64, i64) {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
    let micros = (t.unix_timestamp_nanos() / 1000) as i64;
    (micros, micros + 999_999)
}

fn day(s: &str) -> (i64, i64) {
    instant(&format!("{s}T00:00:00Z")).0.pipe(|lo| (lo, lo + 86_400_000_000 - 1))
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

fn check(label: &str, got: &[Value], expected: BTreeSet<String>) {
    assert!(!expected.is_empty() || label.contains("(none)"), "{label}: the oracle expects nothing — not a useful case");
    assert_eq!(ids(got), expected, "{label}");
    assert_eq!(got.len(), expected.len(), "{label}: no resource twice");
}

async fn synthea_queries_match_the_oracle(s: &Server) {
    load(s, 3).await;
    // Values Synthea does not have, for the token + date, token + string and reference +
    // token composites.
    let extra = [
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "11778-8"}]}, "valueDateTime": "2021-03-04"}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "11778-8"}]}, "valueDateTime": "2019-12-31T23:00:00Z"}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "11778-8"}]}, "valuePeriod": {"start": "2020-06-01", "end": "2020-07-01"}}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8251-1"}]}, "valueString": "Chest pain on exertion"}),
        json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8251-1"}]}, "valueString": "Shortness of breath"}),
    ];
    for r in &extra {
        assert_eq!(s.post("Observation", r).await.status, 201);
    }
    let target = s.post("DocumentReference", &json!({"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {"contentType": "text/plain"}}]})).await.json();
    let target_id = target["id"].as_str().unwrap().to_string();
    let replacing = s
        .post("DocumentReference", &json!({"resourceType": "DocumentReference", "status": "current", "relatesTo": [{"code": "replaces", "target": {"reference": format!("DocumentReference/{target_id}")}}], "content": [{"attachment": {"contentType": "text/plain"}}]}))
        .await
        .json();
    let observations = search(s, "Observation?_count=500").await;
    let patients = search(s, "Patient?_count=500").await;
    let encounters = search(s, "Encounter?_count=500").await;
    let conditions = search(s, "Condition?_count=500").await;
    assert!(observations.len() > 300 && patients.len() == 3, "{} observations, {} patients", observations.len(), patients.len());
    let pid = patients[0]["id"].as_str().unwrap().to_string();
    let subject_of = |o: &Value| o["subject"]["reference"].as_str().unwrap_or("").trim_start_matches("Patient/").to_string();
    let where_obs = |f: &dyn Fn(&Value) -> bool| -> BTreeSet<String> { observations.iter().filter(|o| f(o)).map(|o| o["id"].as_str().unwrap().to_string()).collect() };
    let has_code = |o: &Value, system: Option<&str>, code: &str| codings(&o["code"]).iter().any(|(s, c)| c == code && system.is_none_or(|x| x == s));

    // token
    check("code system|code", &search(s, "Observation?code=http://loinc.org|8867-4").await, where_obs(&|o| has_code(o, Some("http://loinc.org"), "8867-4")));
    check("code, any system", &search(s, "Observation?code=8867-4").await, where_obs(&|o| has_code(o, None, "8867-4")));
    // Counts by the store's count plans: a whole key (system and code), a code in any system.
    let b = s.get("Observation?code=http://loinc.org|8867-4&_total=accurate&_count=1").await.json();
    assert_eq!(b["total"].as_u64().unwrap() as usize, where_obs(&|o| has_code(o, Some("http://loinc.org"), "8867-4")).len(), "count of system|code");
    let b = s.get("Observation?code=8867-4&_summary=count").await.json();
    assert_eq!(b["total"].as_u64().unwrap() as usize, where_obs(&|o| has_code(o, None, "8867-4")).len(), "count of a code");
    check("code OR", &search(s, "Observation?code=8867-4,9279-1").await, where_obs(&|o| has_code(o, None, "8867-4") || has_code(o, None, "9279-1")));
    check("category", &search(s, "Observation?category=laboratory").await, where_obs(&|o| o["category"].as_array().into_iter().flatten().any(|c| codings(c).iter().any(|(_, k)| k == "laboratory"))));
    check("status:not", &search(s, "Observation?category:not=laboratory").await, where_obs(&|o| !o["category"].as_array().into_iter().flatten().any(|c| codings(c).iter().any(|(_, k)| k == "laboratory"))));
    // reference
    check("subject=Patient/id", &search(s, &format!("Observation?subject=Patient/{pid}")).await, where_obs(&|o| subject_of(o) == pid));
    check("patient=id", &search(s, &format!("Observation?patient={pid}")).await, where_obs(&|o| subject_of(o) == pid));
    check(
        "patient + code (AND)",
        &search(s, &format!("Observation?patient={pid}&code=http://loinc.org|8867-4")).await,
        where_obs(&|o| subject_of(o) == pid && has_code(o, Some("http://loinc.org"), "8867-4")),
    );
    check("compartment search", &search(s, &format!("Patient/{pid}/Observation?code=8867-4")).await, where_obs(&|o| subject_of(o) == pid && has_code(o, None, "8867-4")));
    // date, each prefix (Synthea's effectiveDateTime has second precision)
    let eff = |o: &Value| o["effectiveDateTime"].as_str().map(instant);
    let (lo, hi) = day("2015-01-01");
    check("date=ge", &search(s, "Observation?date=ge2015-01-01").await, where_obs(&|o| eff(o).is_some_and(|(_, h)| h >= lo)));
    check("date=lt", &search(s, "Observation?date=lt2015-01-01").await, where_obs(&|o| eff(o).is_some_and(|(l, _)| l < lo)));
    check("date=gt", &search(s, "Observation?date=gt2015-01-01").await, where_obs(&|o| eff(o).is_some_and(|(_, h)| h > hi)));
    check("date=le", &search(s, "Observation?date=le2015-01-01").await, where_obs(&|o| eff(o).is_some_and(|(l, _)| l <= hi)));
    let some_day = observations.iter().find_map(|o| o["effectiveDateTime"].as_str()).unwrap();
    let t = instant(some_day).0;
    let (dlo, dhi) = (t - t.rem_euclid(86_400_000_000), t - t.rem_euclid(86_400_000_000) + 86_400_000_000 - 1);
    let d = time::OffsetDateTime::from_unix_timestamp(dlo / 1_000_000).unwrap().date().to_string();
    check("date=eq a day (UTC)", &search(s, &format!("Observation?date={d}")).await, where_obs(&|o| eff(o).is_some_and(|(l, h)| l >= dlo && h <= dhi)));
    check("date=ne a day", &search(s, &format!("Observation?date=ne{d}")).await, where_obs(&|o| eff(o).is_some_and(|(l, h)| !(l >= dlo && h <= dhi))));
    check("date=sa", &search(s, "Observation?date=sa2015-01-01").await, where_obs(&|o| eff(o).is_some_and(|(l, _)| l > hi)));
    check("date=eb", &search(s, "Observation?date=eb2015-01-01").await, where_obs(&|o| eff(o).is_some_and(|(_, h)| h < lo)));
    check("date=ge&date=lt (a range, AND)", &search(s, "Observation?date=ge2015-01-01&date=lt2016-01-01").await, where_obs(&|o| eff(o).is_some_and(|(l, h)| h >= lo && l < day("2016-01-01").0)));
    // `ap`: within 10 % of the distance from now (at least a day) of the given day
    let now = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64;
    let margin = ((now - dlo).abs() / 10).max(86_400_000_000);
    let near_day = |o: &Value| eff(o).is_some_and(|(l, h)| h >= dlo - margin && l <= dhi + margin);
    let ap = search(s, &format!("Observation?date=ap{d}")).await;
    let expected_ap = where_obs(&near_day);
    // Margins near the edge depend on the moment each side takes `now`: allow what moved.
    let edge = |o: &Value| eff(o).is_some_and(|(l, h)| (h - (dlo - margin)).abs() < 60_000_000 || (l - (dhi + margin)).abs() < 60_000_000);
    let got_ap = ids(&ap);
    let differ: Vec<&String> = got_ap.symmetric_difference(&expected_ap).collect();
    assert!(!expected_ap.is_empty() && differ.iter().all(|id| observations.iter().any(|o| o["id"].as_str() == Some(id.as_str()) && edge(o))), "date=ap: {differ:?}");
    // token forms: system| (any code of the system), |code (no system), :missing
    check("code=system|", &search(s, "Observation?category=http://terminology.hl7.org/CodeSystem/observation-category|").await, where_obs(&|o| o["category"].as_array().into_iter().flatten().any(|c| codings(c).iter().any(|(sys, _)| sys == "http://terminology.hl7.org/CodeSystem/observation-category"))));
    check("code=|code (no system) (none)", &search(s, "Observation?code=|8867-4").await, where_obs(&|o| codings(&o["code"]).iter().any(|(sys, c)| sys.is_empty() && c == "8867-4")));
    check("category:missing=true (none)", &search(s, "Observation?category:missing=true").await, where_obs(&|o| o.get("category").is_none()));
    check("encounter:missing=false", &search(s, "Observation?encounter:missing=false").await, where_obs(&|o| o.get("encounter").is_some()));
    check("date:missing=false", &search(s, "Observation?date:missing=false").await, where_obs(&|o| o.get("effectiveDateTime").is_some() || o.get("effectivePeriod").is_some() || o.get("effectiveInstant").is_some() || o.get("effectiveTiming").is_some()));
    // reference forms: :Type, an absolute URL on this server
    check("subject:Patient=id", &search(s, &format!("Observation?subject:Patient={pid}")).await, where_obs(&|o| subject_of(o) == pid));
    check("subject=absolute URL of this server", &search(s, &format!("Observation?subject={}/Patient/{pid}", s.base)).await, where_obs(&|o| subject_of(o) == pid));
    // period (Encounter.period)
    let period = |e: &Value| (instant(e["period"]["start"].as_str().unwrap()).0, e["period"]["end"].as_str().map_or(i64::MAX, |x| instant(x).1));
    let enc: BTreeSet<String> = encounters.iter().filter(|e| period(e).1 >= lo).map(|e| e["id"].as_str().unwrap().to_string()).collect();
    check("Encounter date=ge (period)", &search(s, "Encounter?date=ge2015-01-01").await, enc);
    // quantity
    let qv = |o: &Value| o["valueQuantity"]["value"].as_f64();
    check("value-quantity=gt100", &search(s, "Observation?value-quantity=gt100").await, where_obs(&|o| qv(o).is_some_and(|v| v > 100.0)));
    check("value-quantity=le5", &search(s, "Observation?value-quantity=le5").await, where_obs(&|o| qv(o).is_some_and(|v| v <= 5.0)));
    let unit = observations.iter().find_map(|o| o["valueQuantity"]["code"].as_str()).unwrap().to_string();
    check(
        "value-quantity with unit",
        &search(s, &format!("Observation?value-quantity=gt0|http://unitsofmeasure.org|{}", unit.replace('/', "%2F").replace('[', "%5B").replace(']', "%5D").replace('{', "%7B").replace('}', "%7D"))).await,
        where_obs(&|o| qv(o).is_some_and(|v| v > 0.0) && o["valueQuantity"]["code"].as_str() == Some(unit.as_str()) && o["valueQuantity"]["system"] == "http://unitsofmeasure.org"),
    );
    check("value-quantity=ap100 (±10 %)", &search(s, "Observation?value-quantity=ap100").await, where_obs(&|o| qv(o).is_some_and(|v| (90.0..=110.0).contains(&v))));
    check("value-quantity=ne100 and has a value", &search(s, "Observation?value-quantity=ne100&value-quantity:missing=false").await, where_obs(&|o| qv(o).is_some_and(|v| !(99.5..100.5).contains(&v))));
    check("value-quantity:missing=true", &search(s, "Observation?value-quantity:missing=true").await, where_obs(&|o| o.get("valueQuantity").is_none() && o.get("valueSampledData").is_none()));
    // :in / :not-in a value set the server holds
    let vs = serde_json::json!({"resourceType": "ValueSet", "id": "vitals-test", "url": "http://example.org/fhir/ValueSet/vitals-test", "status": "active",
        "compose": {"include": [{"system": "http://loinc.org", "concept": [{"code": "8867-4"}, {"code": "9279-1"}]}]}});
    assert!(s.put("ValueSet/vitals-test", &vs).await.status < 300);
    let in_set = |o: &Value| has_code(o, Some("http://loinc.org"), "8867-4") || has_code(o, Some("http://loinc.org"), "9279-1");
    check("code:in", &search(s, "Observation?code:in=http://example.org/fhir/ValueSet/vitals-test").await, where_obs(&|o| in_set(o)));
    // token :below / :above within a code system the server holds
    let cs = json!({"resourceType": "CodeSystem", "id": "loinc-groups", "url": "http://loinc.org", "status": "active", "content": "fragment",
        "concept": [{"code": "vitals-group", "concept": [{"code": "8867-4"}, {"code": "breathing-group", "concept": [{"code": "9279-1"}]}]}]});
    assert!(s.put("CodeSystem/loinc-groups", &cs).await.status < 300);
    let hr_or_rr = |o: &Value| has_code(o, Some("http://loinc.org"), "8867-4") || has_code(o, Some("http://loinc.org"), "9279-1");
    check("code:below", &search(s, "Observation?code:below=http://loinc.org|vitals-group").await, where_obs(&hr_or_rr));
    check("code:below, a leaf", &search(s, "Observation?code:below=http://loinc.org|breathing-group").await, where_obs(&|o| has_code(o, Some("http://loinc.org"), "9279-1")));
    check("code:above", &search(s, "Observation?code:above=http://loinc.org|9279-1").await, where_obs(&|o| has_code(o, Some("http://loinc.org"), "9279-1")));
    assert_eq!(s.get("Observation?code:below=http://example.org/unknown|x").await.status, 400, "an unknown code system is an error");
    // uri: equality, :below, :above
    let vs_id = BTreeSet::from(["vitals-test".to_string()]);
    check("url=", &search(s, "ValueSet?url=http://example.org/fhir/ValueSet/vitals-test").await, vs_id.clone());
    check("url:below", &search(s, "ValueSet?url:below=http://example.org/fhir/").await, vs_id.clone());
    check("url:above", &search(s, "ValueSet?url:above=http://example.org/fhir/ValueSet/vitals-test/extra").await, vs_id.clone());
    check("url:below, other base (none)", &search(s, "ValueSet?url:below=http://example.com/").await, BTreeSet::new());
    check("url:missing=false", &search(s, "ValueSet?url:missing=false").await, vs_id);

    check("code:not-in", &search(s, "Observation?code:not-in=http://example.org/fhir/ValueSet/vitals-test").await, where_obs(&|o| !in_set(o)));
    let r = s.get("Observation?code:in=http://example.org/fhir/ValueSet/unknown").await;
    assert_eq!(r.status, 400, "an unknown value set is an error");
    assert!(String::from_utf8_lossy(&r.body).contains("ValueSet/unknown"));
    // composite: token + quantity on the resource and on its components
    check(
        "code-value-quantity",
        &search(s, "Observation?code-value-quantity=http://loinc.org|8867-4$gt80").await,
        where_obs(&|o| has_code(o, Some("http://loinc.org"), "8867-4") && qv(o).is_some_and(|v| v > 80.0)),
    );
    check(
        "component-code-value-quantity",
        &search(s, "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt120").await,
        where_obs(&|o| {
            o["component"].as_array().into_iter().flatten().any(|c| has_code(c, Some("http://loinc.org"), "8480-6") && c["valueQuantity"]["value"].as_f64().is_some_and(|v| v > 120.0))
        }),
    );
    // composites of a token with a date, a string; of a reference with a token
    let value_range = |o: &Value| -> Option<(i64, i64)> {
        if let Some(d) = o["valueDateTime"].as_str() {
            return Some(if d.len() == 10 { day(d) } else { instant(d) });
        }
        let p = &o["valuePeriod"];
        Some((day(p["start"].as_str()?).0, day(p["end"].as_str()?).1))
    };
    let (y2020, _) = day("2020-01-01");
    check(
        "code-value-date=ge2020",
        &search(s, "Observation?code-value-date=http://loinc.org|11778-8$ge2020-01-01").await,
        where_obs(&|o| has_code(o, Some("http://loinc.org"), "11778-8") && value_range(o).is_some_and(|(_, h)| h >= y2020)),
    );
    check(
        "code-value-date=lt2020",
        &search(s, "Observation?code-value-date=11778-8$lt2020-01-01").await,
        where_obs(&|o| has_code(o, None, "11778-8") && value_range(o).is_some_and(|(l, _)| l < y2020)),
    );
    check(
        "code-value-string (starts with)",
        &search(s, "Observation?code-value-string=http://loinc.org|8251-1$chest").await,
        where_obs(&|o| has_code(o, None, "8251-1") && o["valueString"].as_str().is_some_and(|v| v.to_lowercase().starts_with("chest"))),
    );
    let rel = search(s, &format!("DocumentReference?relationship=DocumentReference/{target_id}$replaces")).await;
    assert_eq!(ids(&rel), BTreeSet::from([replacing["id"].as_str().unwrap().to_string()]), "relationship");
    assert!(search(s, &format!("DocumentReference?relationship=DocumentReference/{target_id}$transforms")).await.is_empty());
    // a composite of a token and two numbers (sequence coordinates)
    let mut seq = common::read_json(&common::shared_data().join("fhir-r4-examples/molecularsequence-example.json"));
    seq.as_object_mut().unwrap().remove("id");
    seq.as_object_mut().unwrap().remove("patient"); // Patient/example is not on this server
    let r = s.post("MolecularSequence", &seq).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let seq_id = r.json()["id"].as_str().unwrap().to_string();
    let found = search(s, "MolecularSequence?referenceseqid-variant-coordinate=NC_000009.11$ge22125500$le22125510").await;
    assert_eq!(ids(&found), BTreeSet::from([seq_id.clone()]), "variant within the window");
    assert!(search(s, "MolecularSequence?referenceseqid-variant-coordinate=NC_000009.11$ge22125504$le22125510").await.is_empty(), "starts before");
    assert!(search(s, "MolecularSequence?referenceseqid-variant-coordinate=NC_000009.12$ge22125500$le22125510").await.is_empty(), "other sequence");
    // number: prefixes and precision (variant start 22125503)
    let seq_only = BTreeSet::from([seq_id.clone()]);
    check("number eq", &search(s, "MolecularSequence?variant-start=22125503").await, seq_only.clone());
    check("number eq by precision (none)", &search(s, "MolecularSequence?variant-start=22125503.7").await, BTreeSet::new());
    check("number gt", &search(s, "MolecularSequence?variant-start=gt22125502").await, seq_only.clone());
    check("number lt (none)", &search(s, "MolecularSequence?variant-start=lt22125503").await, BTreeSet::new());
    check("number ap (within 10 %)", &search(s, "MolecularSequence?variant-start=ap21000000").await, seq_only.clone());
    check("number ne (none)", &search(s, "MolecularSequence?variant-start=ne22125503").await, BTreeSet::new());
    check("number :missing=false", &search(s, "MolecularSequence?variant-start:missing=false").await, seq_only);

    // derived parameters: answered from the rows of the parameters they are defined by
    let component_has = |o: &Value, code: &str| o["component"].as_array().into_iter().flatten().any(|c| has_code(c, None, code));
    check("combo-code (code or component code)", &search(s, "Observation?combo-code=8480-6,8867-4").await, where_obs(&|o| has_code(o, None, "8480-6") || has_code(o, None, "8867-4") || component_has(o, "8480-6") || component_has(o, "8867-4")));
    let component_values = |o: &Value| -> Vec<f64> { o["component"].as_array().into_iter().flatten().filter_map(|c| c["valueQuantity"]["value"].as_f64()).collect() };
    check(
        "combo-value-quantity=gt120",
        &search(s, "Observation?combo-value-quantity=gt120").await,
        where_obs(&|o| qv(o).is_some_and(|v| v > 120.0) || component_values(o).iter().any(|v| *v > 120.0)),
    );
    check(
        "combo-code-value-quantity",
        &search(s, "Observation?combo-code-value-quantity=http://loinc.org|8480-6$gt120").await,
        where_obs(&|o| {
            o["component"].as_array().into_iter().flatten().any(|c| has_code(c, Some("http://loinc.org"), "8480-6") && c["valueQuantity"]["value"].as_f64().is_some_and(|v| v > 120.0))
        }),
    );
    check("patient:missing=false", &search(s, "Observation?patient:missing=false").await, where_obs(&|o| o["subject"]["reference"].as_str().is_some_and(|r| r.starts_with("Patient/"))));
    check("combo-code:missing=true (none)", &search(s, "Observation?combo-code:missing=true").await, where_obs(&|o| o.get("code").is_none()));
    let sorted = search(s, &format!("Encounter?patient={pid}&_sort=-patient,date&_count=5")).await;
    let starts: Vec<i64> = sorted.iter().map(|e| instant(e["period"]["start"].as_str().unwrap()).0).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "sorted by a derived parameter, then by date");
    let of_pid: BTreeSet<String> = encounters.iter().filter(|e| subject_of(e) == pid).map(|e| e["id"].as_str().unwrap().to_string()).collect();
    check("Encounter patient, sorted", &sorted, of_pid);
    // _lastUpdated: the commit time of each version
    let mut stamps: Vec<String> = observations.iter().map(|o| o["meta"]["lastUpdated"].as_str().unwrap().to_string()).collect();
    stamps.sort();
    let mid = stamps[stamps.len() / 2].clone();
    let (mid_micros, _) = instant(&mid);
    let lu = |o: &Value| instant(o["meta"]["lastUpdated"].as_str().unwrap()).0;
    check("_lastUpdated=ge", &search(s, &format!("Observation?_lastUpdated=ge{}", mid.replace('+', "%2B"))).await, where_obs(&|o| lu(o) >= mid_micros));
    check("_lastUpdated=lt", &search(s, &format!("Observation?_lastUpdated=lt{}&code=8867-4", mid.replace('+', "%2B"))).await, where_obs(&|o| lu(o) < mid_micros && has_code(o, None, "8867-4")));
    check("_lastUpdated=eq", &search(s, &format!("Observation?_lastUpdated={}", mid.replace('+', "%2B"))).await, where_obs(&|o| lu(o) == mid_micros));
    // string
    let family = patients[1]["name"][0]["family"].as_str().unwrap().to_string();
    let expect_family = |f: &dyn Fn(&str) -> bool| -> BTreeSet<String> {
        patients.iter().filter(|p| p["name"].as_array().into_iter().flatten().any(|n| n["family"].as_str().is_some_and(f))).map(|p| p["id"].as_str().unwrap().to_string()).collect()
    };
    let prefix = family[..3].to_lowercase();
    check("family (starts with, any case)", &search(s, &format!("Patient?family={}", prefix.to_uppercase())).await, expect_family(&|f| f.to_lowercase().starts_with(&prefix)));
    check("family:exact", &search(s, &format!("Patient?family:exact={family}")).await, expect_family(&|f| f == family));
    let middle = family[1..4].to_lowercase();
    check("family:contains", &search(s, &format!("Patient?family:contains={middle}")).await, expect_family(&|f| f.to_lowercase().contains(&middle)));
    // chains and _has
    check(
        "chain subject:Patient.family",
        &search(s, &format!("Observation?subject:Patient.family={family}&code=8867-4")).await,
        where_obs(&|o| has_code(o, None, "8867-4") && patients.iter().any(|p| p["id"].as_str() == Some(subject_of(o).as_str()) && p["name"][0]["family"] == family.as_str())),
    );
    let with_hr: BTreeSet<String> = observations.iter().filter(|o| has_code(o, None, "8867-4")).map(subject_of).collect();
    check("_has:Observation:patient:code", &search(s, "Patient?_has:Observation:patient:code=8867-4").await, with_hr);
    // Condition tokens on CodeableConcept status
    let active: BTreeSet<String> = conditions.iter().filter(|c| codings(&c["clinicalStatus"]).iter().any(|(_, k)| k == "active")).map(|c| c["id"].as_str().unwrap().to_string()).collect();
    check("clinical-status", &search(s, "Condition?clinical-status=active").await, active);
    // :text on a token: the display or text starts with the value (any case)
    let text = conditions[0]["code"]["text"].as_str().or(conditions[0]["code"]["coding"][0]["display"].as_str()).unwrap().to_lowercase();
    let prefix = text[..5.min(text.len())].to_string();
    let texts = |c: &Value| {
        let mut t: Vec<String> = c["code"]["coding"].as_array().into_iter().flatten().filter_map(|x| x["display"].as_str()).map(str::to_lowercase).collect();
        t.extend(c["code"]["text"].as_str().map(str::to_lowercase));
        t
    };
    let expected: BTreeSet<String> = conditions.iter().filter(|c| texts(c).iter().any(|t| t.starts_with(&prefix))).map(|c| c["id"].as_str().unwrap().to_string()).collect();
    check("code:text", &search(s, &format!("Condition?code:text={}", prefix.to_uppercase().replace(' ', "%20").replace('(', "%28"))).await, expected);
    // sort: by date ascending, ties by commit order; descending the reverse
    let sorted = search(s, &format!("Observation?patient={pid}&code=8867-4&_sort=date")).await;
    let dates: Vec<i64> = sorted.iter().map(|o| eff(o).unwrap().0).collect();
    assert!(dates.windows(2).all(|w| w[0] <= w[1]), "_sort=date ascending");
    let sorted = search(s, &format!("Observation?patient={pid}&code=8867-4&_sort=-date&_count=3")).await;
    let dates: Vec<i64> = sorted.iter().map(|o| eff(o).unwrap().0).collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "_sort=-date descending, across pages");
    // _total and _summary=count agree with the oracle
    let n = where_obs(&|o| has_code(o, None, "8867-4")).len() as u64;
    assert_eq!(s.get("Observation?code=8867-4&_total=accurate&_count=1").await.json()["total"], n);
    assert_eq!(s.get("Observation?code=8867-4&_summary=count").await.json()["total"], n);
    // identifier:of-type (type coding, value)
    let mr = patients[2]["identifier"].as_array().unwrap().iter().find(|i| codings(&i["type"]).iter().any(|(_, c)| c == "MR")).expect("a Synthea MRN");
    let mr_value = mr["value"].as_str().unwrap().to_string();
    let v2 = "http://terminology.hl7.org/CodeSystem/v2-0203";
    let with_type = |code: &str, value: &str| -> BTreeSet<String> {
        patients
            .iter()
            .filter(|p| p["identifier"].as_array().into_iter().flatten().any(|i| i["value"] == value && codings(&i["type"]).iter().any(|(s, c)| s == v2 && c == code)))
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect()
    };
    check("identifier:of-type", &search(s, &format!("Patient?identifier:of-type={v2}|MR|{mr_value}")).await, with_type("MR", &mr_value));
    check("identifier:of-type, other type (none)", &search(s, &format!("Patient?identifier:of-type={v2}|SS|{mr_value}")).await, with_type("SS", &mr_value));
    // near: Locations within a distance (the oracle's own great-circle distance)
    let locations = search(s, "Location?_count=500").await;
    let first = locations.iter().find(|l| l["position"].is_object()).expect("a Synthea location with a position");
    let (lat, lon) = (first["position"]["latitude"].as_f64().unwrap(), first["position"]["longitude"].as_f64().unwrap());
    let km = |l: &Value| -> Option<f64> {
        let (a, b) = (l["position"]["latitude"].as_f64()?, l["position"]["longitude"].as_f64()?);
        let (p1, p2) = (lat.to_radians(), a.to_radians());
        let h = ((a - lat).to_radians() / 2.0).sin().powi(2) + p1.cos() * p2.cos() * ((b - lon).to_radians() / 2.0).sin().powi(2);
        Some(2.0 * 6371.0088 * h.sqrt().asin())
    };
    let within = |d: f64| -> BTreeSet<String> { locations.iter().filter(|l| km(l).is_some_and(|k| k <= d)).map(|l| l["id"].as_str().unwrap().to_string()).collect() };
    let nearest = search(s, &format!("Location?near={lat}|{lon}|25|km&_count=4")).await;
    check("near 25 km", &nearest, within(25.0));
    let distances: Vec<f64> = nearest.iter().map(|l| km(l).unwrap()).collect();
    assert!(distances.windows(2).all(|w| w[0] <= w[1] + 1e-9), "near: nearest first, across pages: {distances:?}");
    check("near 10 miles", &search(s, &format!("Location?near={lat}|{lon}|10|%5Bmi_i%5D")).await, within(16.09344));
    assert_eq!(s.get("Location?near=95|0|1|km").await.status, 400, "a latitude out of range is an error");
    // _content (every text of the resource) and _text (the narrative)
    let content_family = patients[0]["name"][0]["family"].as_str().unwrap().to_string();
    let strings_of = |v: &Value| serde_json::to_string(v).unwrap().to_lowercase();
    let expected: BTreeSet<String> = patients.iter().filter(|p| strings_of(p).contains(&content_family.to_lowercase())).map(|p| p["id"].as_str().unwrap().to_string()).collect();
    check("_content", &search(s, &format!("Patient?_content={}", content_family.to_uppercase())).await, expected);
    let narrated: BTreeSet<String> = patients.iter().filter(|p| p["text"]["div"].as_str().is_some_and(|d| d.contains("Synthea"))).map(|p| p["id"].as_str().unwrap().to_string()).collect();
    check("_text", &search(s, "Patient?_text=synthea").await, narrated);
    check("_text, a word no narrative has (none)", &search(s, "Patient?_text=synthea%20zyxwv").await, BTreeSet::new());
    assert_eq!(s.get("Patient?_text=synthea&_summary=count").await.json()["total"], 3);
    // _list: the resources a List holds
    let members: Vec<String> = observations.iter().take(2).map(|o| o["id"].as_str().unwrap().to_string()).collect();
    let list = s
        .post(
            "List",
            &json!({"resourceType": "List", "status": "current", "mode": "working", "entry": [
                {"item": {"reference": format!("Observation/{}", members[0])}},
                {"item": {"reference": format!("Observation/{}", members[1])}},
                {"item": {"reference": format!("Patient/{pid}")}}
            ]}),
        )
        .await
        .json();
    let list_id = list["id"].as_str().unwrap();
    check("_list", &search(s, &format!("Observation?_list={list_id}")).await, members.iter().cloned().collect());
    check("_list, with a criterion", &search(s, &format!("Patient?_list={list_id}&_id={pid}")).await, BTreeSet::from([pid.clone()]));
    check("_list, unknown (none)", &search(s, "Observation?_list=no-such-list").await, BTreeSet::new());
    // _contained=true: criteria on contained resources, their containers returned
    let eobs = search(s, "ExplanationOfBenefit?_count=500").await;
    let contained_of = |e: &Value, ty: &str| -> Vec<Value> { e["contained"].as_array().into_iter().flatten().filter(|c| c["resourceType"] == ty).cloned().collect() };
    let eobs_where = |f: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        eobs.iter().filter(|e| contained_of(e, "ServiceRequest").iter().any(f)).map(|e| e["id"].as_str().unwrap().to_string()).collect()
    };
    check("ServiceRequest?status&_contained=true", &search(s, "ServiceRequest?status=completed&_contained=true").await, eobs_where(&|c| c["status"] == "completed"));
    check(
        "ServiceRequest?subject&_contained=true",
        &search(s, &format!("ServiceRequest?subject=Patient/{pid}&_contained=true")).await,
        eobs_where(&|c| c["subject"]["reference"].as_str() == Some(&format!("Patient/{pid}"))),
    );
    let with_coverage: BTreeSet<String> = eobs.iter().filter(|e| !contained_of(e, "Coverage").is_empty()).map(|e| e["id"].as_str().unwrap().to_string()).collect();
    check("Coverage?_contained=true", &search(s, "Coverage?_contained=true").await, with_coverage.clone());
    assert!(search(s, "ServiceRequest?status=completed").await.iter().all(|r| r["resourceType"] == "ServiceRequest"), "without _contained, no containers");
    // _contained=both: the containers, then the resources themselves, one cursor across both
    let own_coverage = s.post("Coverage", &json!({"resourceType": "Coverage", "status": "active", "beneficiary": {"reference": format!("Patient/{pid}")}, "payor": [{"reference": format!("Patient/{pid}")}]})).await.json();
    let mut expected_both = with_coverage.clone();
    expected_both.insert(own_coverage["id"].as_str().unwrap().to_string());
    check("Coverage?_contained=both, paged by 3", &search(s, "Coverage?_contained=both&_count=3").await, expected_both.clone());
    assert_eq!(s.get("Coverage?_contained=both&_total=accurate&_count=1").await.json()["total"], expected_both.len());
    // criteria hold together on one contained resource; _containedType=contained lists them
    let both = |c: &Value| c["status"] == "completed" && c["subject"]["reference"].as_str() == Some(&format!("Patient/{pid}"));
    check("two criteria on one contained resource", &search(s, &format!("ServiceRequest?status=completed&subject=Patient/{pid}&_contained=true")).await, eobs_where(&both));
    let listed = search(s, &format!("ServiceRequest?subject=Patient/{pid}&_contained=true&_containedType=contained&_count=7")).await;
    let expected_n: usize = eobs.iter().map(|e| contained_of(e, "ServiceRequest").iter().filter(|c| both(c) || c["subject"]["reference"].as_str() == Some(&format!("Patient/{pid}"))).count()).sum();
    assert!(expected_n > 0 && listed.len() == expected_n, "{} contained ServiceRequests listed, {expected_n} expected", listed.len());
    assert!(listed.iter().all(|r| r["resourceType"] == "ServiceRequest"), "the contained resources themselves");
    // replacing a version replaces its contained resources' index rows
    let med = json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order", "subject": {"reference": format!("Patient/{pid}")},
        "contained": [{"resourceType": "Medication", "id": "m1", "code": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "999123"}]}}],
        "medicationReference": {"reference": "#m1"}});
    let created = s.post("MedicationRequest", &med).await.json();
    let mr_id = created["id"].as_str().unwrap().to_string();
    let found = search(s, "Medication?code=999123&_contained=true").await;
    assert_eq!(ids(&found), BTreeSet::from([mr_id.clone()]), "found through its contained Medication");
    let mut replaced = created.clone();
    replaced.as_object_mut().unwrap().remove("contained");
    replaced.as_object_mut().unwrap().remove("medicationReference");
    replaced["medicationCodeableConcept"] = json!({"text": "as prescribed"});
    assert_eq!(s.put(&format!("MedicationRequest/{mr_id}"), &replaced).await.status, 200);
    assert!(search(s, "Medication?code=999123&_contained=true").await.is_empty(), "the replaced version's contained rows are gone");
    let recent = search(s, &format!("ServiceRequest?_contained=true&_lastUpdated=ge{}", mid.replace('+', "%2B"))).await;
    assert!(recent.iter().all(|e| instant(e["meta"]["lastUpdated"].as_str().unwrap()).0 >= mid_micros), "_lastUpdated is the container's");
    // reference:identifier (the identifier written in the reference)
    let by_identifier = s
        .post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "note"}, "subject": {"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": "9434765919"}}}))
        .await
        .json();
    check(
        "subject:identifier",
        &search(s, "Observation?subject:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765919").await,
        BTreeSet::from([by_identifier["id"].as_str().unwrap().to_string()]),
    );
    check("subject:identifier, other value (none)", &search(s, "Observation?subject:identifier=https://fhir.nhs.uk/Id/nhs-number|9434765918").await, BTreeSet::new());
    // _summary=true: the elements marked isSummary, tagged SUBSETTED; _summary=text: the
    // narrative, id, meta and the mandatory elements
    let summary = search(s, "Patient?_summary=true").await;
    assert_eq!(ids(&summary), ids(&patients));
    for p in &summary {
        let keys: BTreeSet<&str> = p.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(keys.contains("name") && keys.contains("gender") && keys.contains("birthDate"), "{keys:?}");
        for absent in ["text", "extension", "maritalStatus", "communication", "multipleBirthBoolean"] {
            assert!(!keys.contains(absent), "_summary=true keeps {absent}");
        }
        assert!(p["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));
    }
    let text = search(s, &format!("Observation?patient={pid}&code=8867-4&_summary=text")).await;
    assert!(!text.is_empty());
    for o in &text {
        let keys: BTreeSet<&str> = o.as_object().unwrap().keys().map(String::as_str).collect();
        assert!(keys.contains("status") && keys.contains("code") && keys.contains("id"), "{keys:?}");
        assert!(!keys.contains("valueQuantity") && !keys.contains("subject") && !keys.contains("effectiveDateTime"), "{keys:?}");
    }
    // _include: exactly the subjects of the matches
    let b = s.get("Observation?code=8867-4&_include=Observation:subject&_count=500").await.json();
    let included: BTreeSet<String> = b["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    let subjects: BTreeSet<String> = observations.iter().filter(|o| has_code(o, None, "8867-4")).map(subject_of).collect();
    assert_eq!(included, subjects, "_include");
    // $everything: the patient and their compartment
    let everything = ids(&search(s, &format!("Patient/{pid}/$everything?_count=100")).await);
    assert!(everything.contains(&pid));
    assert!(where_obs(&|o| subject_of(o) == pid).is_subset(&everything), "$everything holds the patient's observations");
    // unknown parameters: refused by default and with `handling=strict` (a misspelt filter
    // must never widen a clinical search), ignored (with an outcome) only when lenient
    for prefer in [None, Some("handling=strict")] {
        let headers: Vec<(&str, &str)> = prefer.map(|p| ("prefer", p)).into_iter().collect();
        let r = s.request("GET", "Observation?code=8867-4&nonsense=1", &headers, None).await;
        assert_eq!(r.status, 400, "{prefer:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("nonsense"));
        let r = s.request("GET", &format!("Observation?patinet={pid}"), &headers, None).await;
        assert_eq!(r.status, 400, "misspelt patient: {prefer:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("patinet"));
    }
    let r = s.request("GET", "Observation?code=8867-4&nonsense=1", &[("prefer", "handling=lenient")], None).await;
    assert_eq!(r.status, 200);
    let b = r.json();
    let outcome = b["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").expect("an outcome entry names the ignored parameter");
    assert!(outcome.to_string().contains("nonsense"));
    // A batch GET entry is strict too.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [{"request": {"method": "GET", "url": "Observation?patinet=x"}}]});
    let b = s.post("", &batch).await.json();
    assert!(b["entry"][0]["response"]["status"].as_str().unwrap().starts_with("400"), "{b}");
}

/// A chain that matches more patients than one query can drive from (40), a `_revinclude`
/// of a page of 30 patients, and counts: every page newest first, nothing twice, nothing
/// missed, and totals that agree with the rows.
async fn many_referenced_ids_page_and_count(s: &Server) {
    let mut expected = Vec::new();
    for i in 0..40 {
        let p = s.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Manyfold", "given": [format!("P{i}")]}]})).await.json();
        let pid = p["id"].as_str().unwrap().to_string();
        for k in 0..2 {
            let o = s
                .post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": format!("m{k}")}, "subject": {"reference": format!("Patient/{pid}")}}))
                .await
                .json();
            expected.push(o["id"].as_str().unwrap().to_string());
        }
        // Others' data around them.
        let other = s.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Single"}]})).await.json();
        s.post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{}", other["id"].as_str().unwrap())}})).await;
    }
    expected.reverse(); // newest first
    let got: Vec<String> = search(s, "Observation?patient.name=Manyfold&_count=7").await.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(got, expected, "chain over 40 patients, paged by 7");
    let sorted: Vec<String> = search(s, "Observation?patient.name=Manyfold&_count=9&_sort=-_lastUpdated").await.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(sorted, expected, "the same, sorted by _lastUpdated and paged by offset");
    let b = s.get("Observation?patient.name=Manyfold&_total=accurate&_count=5").await.json();
    assert_eq!(b["total"], 80);
    let b = s.get("Observation?_summary=count").await.json();
    assert_eq!(b["total"], 120);
    let b = s.get("Patient?_summary=count").await.json();
    assert_eq!(b["total"], 80);
    let b = s.get("Patient?name=Manyfold&_total=accurate&_count=1").await.json();
    assert_eq!(b["total"], 40);
    // `_revinclude` of a page of 30 patients: their 60 Observations, no others.
    let b = s.get("Patient?name=Manyfold&_count=30&_revinclude=Observation:patient").await.json();
    let entries = b["entry"].as_array().unwrap();
    let patients: BTreeSet<String> = entries.iter().filter(|e| e["search"]["mode"] == "match").map(|e| e["resource"]["id"].as_str().unwrap().to_string()).collect();
    let included: Vec<&Value> = entries.iter().filter(|e| e["search"]["mode"] == "include").map(|e| &e["resource"]).collect();
    assert_eq!(patients.len(), 30);
    assert_eq!(included.len(), 60);
    for o in included {
        assert!(patients.contains(o["subject"]["reference"].as_str().unwrap().trim_start_matches("Patient/")), "{o}");
    }
}
