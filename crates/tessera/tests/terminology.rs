//! Terminology operations over real HTTP, on both backends: `$expand`, `$lookup`,
//! `$validate-code`, `$subsumes` over the shipped R4 terminology and over CodeSystems,
//! ValueSets and ConceptMaps stored on the server (a trust's own codes), by GET and by POST,
//! and the refusals (a SNOMED CT-wide value set, unknown value sets and code systems, bad
//! parameters).

mod common;
use common::Server;
use serde_json::{json, Value};

on_both_backends!(expands_shipped_value_sets, hierarchy_and_subsumption, looks_up_and_validates, trust_codes_are_used, stored_concept_map_translates, refusals);

const GENDER: &str = "http://hl7.org/fhir/ValueSet/administrative-gender";
const ISSUE_TYPE: &str = "http://hl7.org/fhir/issue-type";
const WARDS: &str = "https://trust.example.org/fhir/CodeSystem/wards";

/// GET `path`, expecting `status`; the JSON body.
async fn get(s: &Server, path: &str, status: u16) -> Value {
    let r = s.get(path).await;
    assert_eq!(r.status, status, "GET {path}: {}", String::from_utf8_lossy(&r.body));
    assert!(r.header("content-type").unwrap_or_default().starts_with("application/fhir+json"), "GET {path}: {:?}", r.header("content-type"));
    r.json()
}

/// POST a `Parameters` body with `parameter` to `path`, expecting `status`.
async fn post(s: &Server, path: &str, parameter: Value, status: u16) -> Value {
    let r = s.post(path, &json!({"resourceType": "Parameters", "parameter": parameter})).await;
    assert_eq!(r.status, status, "POST {path}: {}", String::from_utf8_lossy(&r.body));
    r.json()
}

fn codes(vs: &Value) -> Vec<String> {
    assert_eq!(vs["resourceType"], "ValueSet", "{vs}");
    vs["expansion"]["contains"].as_array().into_iter().flatten().map(|c| c["code"].as_str().unwrap().to_string()).collect()
}

/// The value of the output parameter `name` (`value[x]`).
fn out<'a>(p: &'a Value, name: &str) -> &'a Value {
    assert_eq!(p["resourceType"], "Parameters", "{p}");
    let entry = p["parameter"].as_array().unwrap().iter().find(|e| e["name"] == name).unwrap_or_else(|| panic!("no parameter {name} in {p}"));
    entry.as_object().unwrap().iter().find(|(k, _)| k.starts_with("value")).map(|(_, v)| v).unwrap_or(&Value::Null)
}

fn parts<'a>(p: &'a Value, name: &str) -> Vec<&'a Value> {
    p["parameter"].as_array().unwrap().iter().filter(|e| e["name"] == name).collect()
}

/// The first issue of an OperationOutcome: (code, diagnostics, expression).
fn issue(oo: &Value) -> (String, String, String) {
    assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
    let i = &oo["issue"][0];
    (i["code"].as_str().unwrap_or("").into(), i["diagnostics"].as_str().unwrap_or("").into(), i["expression"][0].as_str().unwrap_or("").into())
}

async fn expands_shipped_value_sets(s: &Server) {
    let all = get(s, &format!("ValueSet/$expand?url={GENDER}"), 200).await;
    assert_eq!(codes(&all), ["male", "female", "other", "unknown"]);
    assert_eq!(all["url"], GENDER);
    assert_eq!(all["expansion"]["total"], 4);
    assert_eq!(all["expansion"]["offset"], 0);
    assert!(all["expansion"]["contains"].as_array().unwrap().iter().all(|c| c["system"] == "http://hl7.org/fhir/administrative-gender"));
    assert!(all["expansion"]["parameter"].as_array().unwrap().iter().any(|p| p["name"] == "used-codesystem" && p["valueUri"] == "http://hl7.org/fhir/administrative-gender|4.0.1"));
    assert_eq!(all["expansion"]["contains"][1]["display"], "Female");

    // Filter: case-insensitive, on display and code.
    let f = get(s, &format!("ValueSet/$expand?url={GENDER}&filter=FEM"), 200).await;
    assert_eq!(codes(&f), ["female"]);
    assert_eq!(f["expansion"]["total"], 1);
    assert_eq!(codes(&get(s, &format!("ValueSet/$expand?url={GENDER}&filter=male"), 200).await), ["male", "female"]);
    assert_eq!(codes(&get(s, &format!("ValueSet/$expand?url={GENDER}&filter=nothing-like-it"), 200).await), Vec::<String>::new());

    // Paging: total and offset say which part this is.
    let page = get(s, &format!("ValueSet/$expand?url={GENDER}&offset=1&count=2"), 200).await;
    assert_eq!(codes(&page), ["female", "other"]);
    assert_eq!(page["expansion"]["total"], 4);
    assert_eq!(page["expansion"]["offset"], 1);
    assert_eq!(codes(&get(s, &format!("ValueSet/$expand?url={GENDER}&offset=4&count=2"), 200).await), Vec::<String>::new());

    // Instance level, by the shipped id; a version that matches.
    assert_eq!(codes(&get(s, "ValueSet/administrative-gender/$expand", 200).await).len(), 4);
    assert_eq!(codes(&get(s, &format!("ValueSet/$expand?url={GENDER}&valueSetVersion=4.0.1"), 200).await).len(), 4);
    assert_eq!(codes(&get(s, &format!("ValueSet/$expand?url={GENDER}%7C4.0.1"), 200).await).len(), 4);

    // POST with Parameters, and with an inline value set importing a shipped one.
    let posted = post(s, "ValueSet/$expand", json!([{"name": "url", "valueUri": GENDER}, {"name": "count", "valueInteger": 2}]), 200).await;
    assert_eq!(codes(&posted), ["male", "female"]);
    assert_eq!(posted["expansion"]["total"], 4);
    let inline = json!({"resourceType": "ValueSet", "status": "active", "compose": {
        "include": [{"valueSet": [GENDER]}],
        "exclude": [{"system": "http://hl7.org/fhir/administrative-gender", "concept": [{"code": "other"}, {"code": "unknown"}]}]
    }});
    assert_eq!(codes(&post(s, "ValueSet/$expand", json!([{"name": "valueSet", "resource": inline}]), 200).await), ["male", "female"]);

    // Designations come with includeDesignations.
    let oo = get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/operation-outcome&filter=MSG_AUTH_REQUIRED&includeDesignations=true", 200).await;
    assert_eq!(codes(&oo), ["MSG_AUTH_REQUIRED"]);
    assert!(oo["expansion"]["contains"][0]["designation"].as_array().is_some_and(|d| d.iter().any(|d| d["language"] == "fr")), "{oo}");
    let plain = get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/operation-outcome&filter=MSG_AUTH_REQUIRED", 200).await;
    assert!(plain["expansion"]["contains"][0].get("designation").is_none());
}

async fn hierarchy_and_subsumption(s: &Server) {
    let all = get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/issue-type", 200).await;
    assert_eq!(all["expansion"]["total"], 31);
    assert!(codes(&all).contains(&"deleted".to_string()), "nested codes are in the expansion");
    // Abstract concepts are marked.
    let items = get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/item-type&filter=question", 200).await;
    assert_eq!(items["expansion"]["contains"][0]["abstract"], true, "{items}");

    // is-a / descendent-of filters over the shipped hierarchy, in a value set given inline.
    let below = |op: &str, code: &str| {
        json!([{"name": "valueSet", "resource": {"resourceType": "ValueSet", "status": "active", "compose": {"include": [{"system": ISSUE_TYPE, "filter": [{"property": "concept", "op": op, "value": code}]}]}}}])
    };
    let is_a = post(s, "ValueSet/$expand", below("is-a", "not-found"), 200).await;
    assert_eq!(codes(&is_a), ["not-found", "deleted"]);
    let descendants = post(s, "ValueSet/$expand", below("descendent-of", "invalid"), 200).await;
    assert_eq!(codes(&descendants), ["structure", "required", "value", "invariant"]);
    assert_eq!(codes(&post(s, "ValueSet/$expand", below("=", "invalid"), 200).await), ["invalid"]);

    let subsumes = |a: &str, b: &str| format!("CodeSystem/$subsumes?system={ISSUE_TYPE}&codeA={a}&codeB={b}");
    assert_eq!(out(&get(s, &subsumes("processing", "deleted"), 200).await, "outcome"), "subsumes");
    assert_eq!(out(&get(s, &subsumes("deleted", "processing"), 200).await, "outcome"), "subsumed-by");
    assert_eq!(out(&get(s, &subsumes("deleted", "deleted"), 200).await, "outcome"), "equivalent");
    assert_eq!(out(&get(s, &subsumes("invalid", "deleted"), 200).await, "outcome"), "not-subsumed");
    let posted = post(
        s,
        "CodeSystem/$subsumes",
        json!([{"name": "codingA", "valueCoding": {"system": ISSUE_TYPE, "code": "security"}}, {"name": "codingB", "valueCoding": {"system": ISSUE_TYPE, "code": "login"}}]),
        200,
    )
    .await;
    assert_eq!(out(&posted, "outcome"), "subsumes");
    let (code, _, expression) = issue(&get(s, &subsumes("processing", "no-such-code"), 400).await);
    assert_eq!((code.as_str(), expression.as_str()), ("not-found", "codeB"));
}

async fn looks_up_and_validates(s: &Server) {
    let female = get(s, "CodeSystem/$lookup?system=http://hl7.org/fhir/administrative-gender&code=female", 200).await;
    assert_eq!(out(&female, "name"), "AdministrativeGender");
    assert_eq!(out(&female, "version"), "4.0.1");
    assert_eq!(out(&female, "display"), "Female");
    let deleted = post(s, "CodeSystem/$lookup", json!([{"name": "coding", "valueCoding": {"system": ISSUE_TYPE, "code": "not-found"}}]), 200).await;
    let props: Vec<(String, String)> = parts(&deleted, "property")
        .iter()
        .map(|p| (p["part"][0]["valueCode"].as_str().unwrap().to_string(), p["part"][1]["valueCode"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(props, [("parent".to_string(), "processing".to_string()), ("child".to_string(), "deleted".to_string())]);
    let designations = get(s, "CodeSystem/$lookup?system=http://terminology.hl7.org/CodeSystem/operation-outcome&code=MSG_AUTH_REQUIRED", 200).await;
    assert!(parts(&designations, "designation").len() >= 5, "{designations}");
    issue(&get(s, "CodeSystem/$lookup?system=http://hl7.org/fhir/administrative-gender&code=woman", 404).await);
    issue(&get(s, "CodeSystem/$lookup?system=https://nowhere.example.org/codes&code=x", 404).await);

    // ValueSet/$validate-code: true with the display, false with a message.
    let ok = get(s, &format!("ValueSet/$validate-code?url={GENDER}&system=http://hl7.org/fhir/administrative-gender&code=female"), 200).await;
    assert_eq!(out(&ok, "result"), true);
    assert_eq!(out(&ok, "display"), "Female");
    let bad = get(s, &format!("ValueSet/$validate-code?url={GENDER}&system=http://hl7.org/fhir/administrative-gender&code=woman"), 200).await;
    assert_eq!(out(&bad, "result"), false);
    assert!(out(&bad, "message").as_str().unwrap().contains("woman"), "{bad}");
    let other_system = get(s, &format!("ValueSet/$validate-code?url={GENDER}&system=http://hl7.org/fhir/issue-type&code=invalid"), 200).await;
    assert_eq!(out(&other_system, "result"), false);
    let wrong_display = get(s, &format!("ValueSet/$validate-code?url={GENDER}&system=http://hl7.org/fhir/administrative-gender&code=male&display=Female"), 200).await;
    assert_eq!(out(&wrong_display, "result"), false);
    let right_display = get(s, &format!("ValueSet/$validate-code?url={GENDER}&system=http://hl7.org/fhir/administrative-gender&code=male&display=male"), 200).await;
    assert_eq!(out(&right_display, "result"), true, "displays compare case-insensitively");
    let concept = json!({"coding": [{"system": "http://snomed.info/sct", "code": "248153007"}, {"system": "http://hl7.org/fhir/administrative-gender", "code": "male"}]});
    let cc = post(s, "ValueSet/$validate-code", json!([{"name": "url", "valueUri": GENDER}, {"name": "codeableConcept", "valueCodeableConcept": concept}]), 200).await;
    assert_eq!(out(&cc, "result"), true);
    let instance = post(s, "ValueSet/administrative-gender/$validate-code", json!([{"name": "coding", "valueCoding": {"system": "http://hl7.org/fhir/administrative-gender", "code": "unknown"}}]), 200).await;
    assert_eq!(out(&instance, "result"), true);

    // CodeSystem/$validate-code.
    let cs_ok = get(s, "CodeSystem/$validate-code?url=http://hl7.org/fhir/administrative-gender&code=other", 200).await;
    assert_eq!(out(&cs_ok, "result"), true);
    assert_eq!(out(&cs_ok, "display"), "Other");
    let cs_bad = get(s, "CodeSystem/$validate-code?url=http://hl7.org/fhir/administrative-gender&code=x", 200).await;
    assert_eq!(out(&cs_bad, "result"), false);
}

async fn trust_codes_are_used(s: &Server) {
    let cs = json!({"resourceType": "CodeSystem", "url": WARDS, "version": "2026-1", "name": "TrustWards", "title": "Trust wards", "status": "active", "content": "complete", "caseSensitive": true, "hierarchyMeaning": "is-a", "concept": [
        {"code": "MED", "display": "Medical wards", "concept": [
            {"code": "M1", "display": "Acute medical unit"},
            {"code": "M2", "display": "Elderly care", "property": [{"code": "status", "valueCode": "retired"}]}
        ]},
        {"code": "SUR", "display": "Surgical wards", "concept": [{"code": "S1", "display": "Day surgery"}]}
    ]});
    assert_eq!(s.post("CodeSystem", &cs).await.status, 201);
    let vs = json!({"resourceType": "ValueSet", "url": "https://trust.example.org/fhir/ValueSet/medical-wards", "status": "active", "compose": {
        "inactive": false,
        "include": [{"system": WARDS, "filter": [{"property": "concept", "op": "is-a", "value": "MED"}]}]
    }});
    let created = s.post("ValueSet", &vs).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_string();

    let expanded = get(s, "ValueSet/$expand?url=https://trust.example.org/fhir/ValueSet/medical-wards", 200).await;
    assert_eq!(codes(&expanded), ["MED", "M1"], "the retired ward is left out");
    assert!(expanded["expansion"]["parameter"].as_array().unwrap().iter().any(|p| p["valueUri"] == format!("{WARDS}|2026-1")));
    assert_eq!(codes(&get(s, &format!("ValueSet/{id}/$expand?filter=acute"), 200).await), ["M1"]);
    let ok = get(s, &format!("ValueSet/{id}/$validate-code?system={WARDS}&code=M1"), 200).await;
    assert_eq!((out(&ok, "result"), out(&ok, "display")), (&json!(true), &json!("Acute medical unit")));
    let surgical = get(s, &format!("ValueSet/{id}/$validate-code?system={WARDS}&code=S1"), 200).await;
    assert_eq!(out(&surgical, "result"), false);
    let lookup = get(s, &format!("CodeSystem/$lookup?system={WARDS}&code=M2"), 200).await;
    assert_eq!((out(&lookup, "name"), out(&lookup, "version"), out(&lookup, "display")), (&json!("Trust wards"), &json!("2026-1"), &json!("Elderly care")));
    assert_eq!(out(&get(s, &format!("CodeSystem/$subsumes?system={WARDS}&codeA=MED&codeB=M2"), 200).await, "outcome"), "subsumes");

    // A stored value set with the url of a shipped one takes precedence.
    let local_gender = json!({"resourceType": "ValueSet", "url": GENDER, "version": "trust-1", "status": "active", "compose": {
        "include": [{"system": "http://hl7.org/fhir/administrative-gender", "concept": [{"code": "male"}, {"code": "female"}]}]
    }});
    assert_eq!(s.post("ValueSet", &local_gender).await.status, 201);
    let g = get(s, &format!("ValueSet/$expand?url={GENDER}"), 200).await;
    assert_eq!(codes(&g), ["male", "female"]);
    assert_eq!(g["version"], "trust-1");
    let other = get(s, &format!("ValueSet/$validate-code?url={GENDER}&system=http://hl7.org/fhir/administrative-gender&code=other"), 200).await;
    assert_eq!(out(&other, "result"), false);

    // The trust's value set is read through the gate and audited like any read.
    let records = s.store.audit_scan(0, 100_000).await.unwrap();
    let entity = format!("ValueSet/{id}/_history/1");
    assert!(
        records.iter().any(|r| r.action == "expand" && String::from_utf8_lossy(&r.event).contains(&entity)),
        "the expansion of a stored value set is in the audit trail"
    );
}

async fn stored_concept_map_translates(s: &Server) {
    let map = json!({"resourceType": "ConceptMap", "url": "https://trust.example.org/fhir/ConceptMap/wards-to-specialty", "status": "active",
        "sourceUri": "https://trust.example.org/fhir/ValueSet/wards", "targetUri": "https://trust.example.org/fhir/ValueSet/specialties",
        "group": [{"source": WARDS, "target": "https://trust.example.org/fhir/CodeSystem/specialty", "element": [
            {"code": "M1", "display": "Acute medical unit", "target": [{"code": "acute-medicine", "display": "Acute medicine", "equivalence": "wider"}]},
            {"code": "S1", "display": "Day surgery", "target": [{"code": "general-surgery", "display": "General surgery", "equivalence": "wider"}, {"code": "anaesthetics", "equivalence": "relatedto"}]},
            {"code": "X9", "target": [{"equivalence": "unmatched", "comment": "closed ward"}]}
        ]}]});
    let created = s.post("ConceptMap", &map).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let id = created.json()["id"].as_str().unwrap().to_string();

    let t = get(s, &format!("ConceptMap/$translate?url=https://trust.example.org/fhir/ConceptMap/wards-to-specialty&system={WARDS}&code=M1"), 200).await;
    assert_eq!(out(&t, "result"), true);
    let m = parts(&t, "match");
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["part"][0]["valueCode"], "wider");
    assert_eq!(m[0]["part"][1]["valueCoding"], json!({"system": "https://trust.example.org/fhir/CodeSystem/specialty", "code": "acute-medicine", "display": "Acute medicine"}));

    // Instance level, POST with a coding; two targets.
    let posted = post(s, &format!("ConceptMap/{id}/$translate"), json!([{"name": "coding", "valueCoding": {"system": WARDS, "code": "S1"}}]), 200).await;
    assert_eq!(parts(&posted, "match").len(), 2);
    // Without a map named: the stored maps that list the code.
    let found = get(s, &format!("ConceptMap/$translate?system={WARDS}&code=S1&targetsystem=https://trust.example.org/fhir/CodeSystem/specialty"), 200).await;
    assert_eq!(out(&found, "result"), true);
    // Reverse: from the target back to the source.
    let back = get(s, &format!("ConceptMap/$translate?url=https://trust.example.org/fhir/ConceptMap/wards-to-specialty&system=https://trust.example.org/fhir/CodeSystem/specialty&code=acute-medicine&reverse=true"), 200).await;
    assert_eq!(out(&back, "result"), true);
    assert_eq!(parts(&back, "match")[0]["part"][0]["valueCode"], "narrower");
    assert_eq!(parts(&back, "match")[0]["part"][1]["valueCoding"]["code"], "M1");
    // Unmatched, and not mapped at all.
    let unmatched = get(s, &format!("ConceptMap/{id}/$translate?system={WARDS}&code=X9"), 200).await;
    assert_eq!(out(&unmatched, "result"), false);
    assert_eq!(parts(&unmatched, "match")[0]["part"][0]["valueCode"], "unmatched");
    let none = get(s, &format!("ConceptMap/{id}/$translate?system={WARDS}&code=M2"), 200).await;
    assert_eq!(out(&none, "result"), false);
    assert!(out(&none, "message").as_str().unwrap().contains("M2"));
    issue(&get(s, "ConceptMap/$translate?url=https://nowhere.example.org/map&code=M1&system=x", 404).await);
}

async fn refusals(s: &Server) {
    // All of SNOMED CT: refused, never a partial expansion.
    let oo = get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/clinical-findings", 422).await;
    let (code, diagnostics, _) = issue(&oo);
    assert_eq!(code, "too-costly");
    assert!(diagnostics.contains("SNOMED CT"), "{diagnostics}");
    let (code, _, _) = issue(&get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/observation-codes", 422).await);
    assert_eq!(code, "too-costly", "all of LOINC");
    // A value set importing value sets this server does not hold.
    let (code, diagnostics, _) = issue(&get(s, "ValueSet/$expand?url=http://hl7.org/fhir/ValueSet/use-context", 422).await);
    assert!(code == "not-found" || code == "not-supported" || code == "too-costly", "{code}: {diagnostics}");
    // Validating a SNOMED CT code against a SNOMED CT-wide value set cannot be decided here.
    issue(&get(s, "ValueSet/$validate-code?url=http://hl7.org/fhir/ValueSet/clinical-findings&system=http://snomed.info/sct&code=22298006", 422).await);
    // $lookup in SNOMED CT: its content is not held.
    issue(&get(s, "CodeSystem/$lookup?system=http://snomed.info/sct&code=22298006", 422).await);

    // Unknown value set, code system, instance.
    let (code, _, expression) = issue(&get(s, "ValueSet/$expand?url=https://nowhere.example.org/ValueSet/x", 404).await);
    assert_eq!((code.as_str(), expression.as_str()), ("not-found", "url"));
    issue(&get(s, "ValueSet/no-such-value-set/$expand", 404).await);
    issue(&post(s, "ValueSet/$expand", json!([{"name": "url", "valueUri": "https://nowhere.example.org/ValueSet/x"}]), 404).await);
    issue(&get(s, "CodeSystem/$subsumes?system=https://nowhere.example.org/cs&codeA=a&codeB=b", 404).await);

    // Bad requests name the parameter.
    let (_, _, expression) = issue(&get(s, "ValueSet/$expand", 400).await);
    assert_eq!(expression, "url");
    let (_, _, expression) = issue(&get(s, &format!("ValueSet/$expand?url={GENDER}&count=many"), 400).await);
    assert_eq!(expression, "count");
    let (_, _, expression) = issue(&get(s, &format!("ValueSet/$expand?url={GENDER}&colour=red"), 400).await);
    assert_eq!(expression, "colour");
    let (_, _, expression) = issue(&get(s, &format!("ValueSet/$validate-code?url={GENDER}"), 400).await);
    assert_eq!(expression, "code");
    let r = s.post("ValueSet/$expand", &json!({"resourceType": "Patient"})).await;
    assert_eq!(r.status, 400);
    // An operation that is not a terminology operation is still not one.
    let r = s.get("Patient/$expand").await;
    assert!(r.status == 404 || r.status == 400, "{}", r.status);
}
