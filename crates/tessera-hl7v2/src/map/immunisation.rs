//! VXU^V04 (unsolicited vaccination record update) to FHIR R4 Immunizations: one for each
//! RXA, with the ORC before it and the RXR and OBX after it, written as a conditional
//! update on the order number when there is one.
//!
//! | HL7 | FHIR |
//! | --- | --- |
//! | ORC-3.1 filler, ORC-2.1 placer order number | `identifier` (filler/placer order systems); the conditional update is on the filler number, else the placer's; neither (or no ORC): created |
//! | RXA-21 action code D (table 0323) | `status` `entered-in-error` |
//! | RXA-20 completion status (table 0322) | `status`: CP, PA completed (PA also `isSubpotent`), RE, NA not-done; none: completed |
//! | RXA-18 substance/treatment refusal reason, when not done | `statusReason` |
//! | RXA-5 administered code (CVX, NDC, …) | `vaccineCode`; none is error `RXA-5` |
//! | the message's patient, encounter | `patient`, `encounter` |
//! | RXA-3 date/time start of administration | `occurrenceDateTime`; none is error `RXA-3` |
//! | RXA-9 administration notes (NIP001): 00 new record | `primarySource` true; any other code false, and `reportOrigin` |
//! | RXA-15 substance lot number | `lotNumber` |
//! | RXA-16 substance expiration date | `expirationDate` (the date) |
//! | RXA-17 substance manufacturer (MVX) | `manufacturer`: display the name, identifier the code |
//! | RXR-2 administration site | `site` (system v2-0163 for a code of table 0163) |
//! | RXR-1 route | `route` (system v2-0162 for a code of table 0162) |
//! | RXA-6 administered amount (not 999, unknown), RXA-7 units | `doseQuantity` |
//! | RXA-10 administering provider | `performer`: function AP (v2-0443), actor the practitioner |
//! | ORC-12 ordering provider | `performer`: function OP |
//! | RXA-19 indication | `reasonCode` |
//! | OBX 30963-3 vaccine funding source | `fundingSource` |
//! | OBX 64994-7 funding program eligibility | `programEligibility` |
//! | OBX 69764-9 VIS document type (else 30956-7 vaccine type), 29768-9 VIS publication date, 29769-7 VIS presentation date, grouped by OBX-4 | `education`: documentType (text, else code), publicationDate, presentationDate |
//!
//! Not mapped: RXA-1/2 (sub-ids), RXA-4 end of administration, RXA-8 dosage form, RXA-11
//! administered-at location, RXA-12–14, RXA-22 onward, RXR-3/4, the other OBX (and
//! education groups with no document type, which FHIR does not allow), NTE, TQ1, PRT, and
//! the OBX before the first RXA (patient-level observations).

use super::pharmacy::{ROUTES, ROUTE_SYSTEM, SITES, SITE_SYSTEM};
use super::{codeable_concept, codeable_concept_in, coding_system, date_time, field_error, full_url, identifier_query, lookup, part, practitioner_reference, put, quantity, repetitions, segment_label, value, Context, Entry, FieldError, Method};
use crate::datetime::fhir_date;
use crate::message::{Message, Segment};
use serde_json::{json, Map, Value};

/// RXA-20 completion status (table 0322) to `Immunization.status`.
pub const COMPLETION: &[(&str, &str)] = &[("CP", "completed"), ("PA", "completed"), ("RE", "not-done"), ("NA", "not-done")];

/// RXA-21 action codes (table 0323) that set the status.
pub const ACTIONS: &[(&str, &str)] = &[("D", "entered-in-error")];

/// OBX-3 (LOINC) of the observations that are elements of the Immunization.
pub const OBSERVATIONS: &[(&str, &str)] = &[
    ("30963-3", "fundingSource"),
    ("64994-7", "programEligibility"),
    ("69764-9", "education.documentType"),
    ("30956-7", "education.vaccineType"),
    ("29768-9", "education.publicationDate"),
    ("29769-7", "education.presentationDate"),
];

const FUNCTION_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0443";

/// The Immunizations of a VXU^V04 message, one for each RXA. See the module documentation
/// for the mapping.
pub fn vxu_v04(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    let all = msg.segments();
    let administrations: Vec<usize> = all.iter().enumerate().filter(|(_, s)| s.name() == "RXA").map(|(i, _)| i).collect();
    if administrations.is_empty() {
        return Err(field_error("RXA", "the message has no RXA segment"));
    }
    let mut entries = Vec::new();
    let mut from = 0;
    for (k, &i) in administrations.iter().enumerate() {
        let orc = all[from..i].iter().rev().take_while(|s| s.name() != "RXA").find(|s| s.name() == "ORC");
        let after: Vec<&Segment> = all[i + 1..].iter().take_while(|s| s.name() != "ORC" && s.name() != "RXA").collect();
        entries.push(immunization(msg, ctx, k + 1, orc, &all[i], &after)?);
        from = i + 1;
    }
    Ok(entries)
}

fn immunization(msg: &Message, ctx: &Context, n: usize, orc: Option<&Segment>, rxa: &Segment, after: &[&Segment]) -> Result<Entry, FieldError> {
    let s = ctx.systems;
    let label = segment_label(msg, "RXA", n);
    let f = |k: usize| format!("{label}-{k}");

    let filler = orc.and_then(|o| value(o, 3, 1));
    let placer = orc.and_then(|o| value(o, 2, 1));
    let status = match (value(rxa, 21, 1).and_then(|a| lookup(ACTIONS, &a)), value(rxa, 20, 1)) {
        (Some(s), _) => s,
        (None, Some(code)) => lookup(COMPLETION, &code).ok_or_else(|| field_error(f(20), format!("'{code}' is not a completion status (table 0322)")))?,
        (None, None) => "completed",
    };
    let vaccine = repetitions(rxa, 5).first().and_then(codeable_concept).ok_or_else(|| field_error(f(5), "the administration names no vaccine"))?;
    let when = value(rxa, 3, 1).ok_or_else(|| field_error(f(3), "the administration has no date/time"))?;
    let when = date_time(&when, &f(3))?;

    let mut m = Map::new();
    m.insert("resourceType".into(), json!("Immunization"));
    let identifiers: Vec<Value> = [(&s.filler_order, &filler), (&s.placer_order, &placer)].iter().filter_map(|(system, v)| v.as_ref().map(|v| json!({"system": system, "value": v}))).collect();
    put(&mut m, "identifier", Some(Value::Array(identifiers)));
    m.insert("status".into(), json!(status));
    if status == "not-done" {
        put(&mut m, "statusReason", repetitions(rxa, 18).first().and_then(codeable_concept));
    }
    m.insert("vaccineCode".into(), vaccine);
    m.insert("patient".into(), json!({"reference": ctx.patient}));
    put(&mut m, "encounter", ctx.encounter.map(|e| json!({"reference": e})));
    m.insert("occurrenceDateTime".into(), json!(when));
    if let Some(note) = repetitions(rxa, 9).first() {
        if let Some(code) = part(note, 1, 1) {
            let primary = code == "00";
            m.insert("primarySource".into(), json!(primary));
            if !primary {
                put(&mut m, "reportOrigin", codeable_concept(note));
            }
        }
    }
    put(&mut m, "lotNumber", value(rxa, 15, 1).map(Value::from));
    put(&mut m, "expirationDate", value(rxa, 16, 1).map(|d| fhir_date(&d).map_err(|e| field_error(f(16), e))).transpose()?.map(Value::from));
    if let Some(maker) = repetitions(rxa, 17).first() {
        let mut r = Map::new();
        if let Some(code) = part(maker, 1, 1) {
            let mut id = Map::new();
            put(&mut id, "system", part(maker, 3, 1).and_then(|s| coding_system(&s)).map(Value::from));
            id.insert("value".into(), json!(code));
            r.insert("identifier".into(), Value::Object(id));
        }
        put(&mut r, "display", part(maker, 2, 1).map(Value::from));
        if !r.is_empty() {
            m.insert("manufacturer".into(), Value::Object(r));
        }
    }
    let rxr = after.iter().find(|x| x.name() == "RXR");
    put(&mut m, "site", rxr.and_then(|r| repetitions(r, 2).first()).and_then(|r| codeable_concept_in(r, SITE_SYSTEM, SITES)));
    put(&mut m, "route", rxr.and_then(|r| repetitions(r, 1).first()).and_then(|r| codeable_concept_in(r, ROUTE_SYSTEM, ROUTES)));
    if let Some(amount) = value(rxa, 6, 1).filter(|a| a != "999") {
        m.insert("doseQuantity".into(), quantity(&amount, repetitions(rxa, 7).first(), &f(6))?);
    }
    let mut performers: Vec<Value> = Vec::new();
    let roles = [("AP", "Administering Provider", repetitions(rxa, 10)), ("OP", "Ordering Provider", orc.map(|o| repetitions(o, 12)).unwrap_or_default())];
    for (code, display, reps) in roles {
        for actor in reps.iter().filter_map(|r| practitioner_reference(r, s)) {
            performers.push(json!({"function": {"coding": [{"system": FUNCTION_SYSTEM, "code": code, "display": display}]}, "actor": actor}));
        }
    }
    put(&mut m, "performer", Some(Value::Array(performers)));
    put(&mut m, "reasonCode", Some(Value::Array(repetitions(rxa, 19).iter().filter_map(codeable_concept).collect())));
    if value(rxa, 20, 1).is_some_and(|c| c.eq_ignore_ascii_case("PA")) && status == "completed" {
        m.insert("isSubpotent".into(), json!(true));
    }
    observations(msg, after, &mut m)?;

    let method = match (filler.as_ref().map(|v| (&s.filler_order, v)), placer.as_ref().map(|v| (&s.placer_order, v))) {
        (Some((system, v)), _) | (None, Some((system, v))) => Method::Upsert(identifier_query(system, v)),
        (None, None) => Method::Create,
    };
    Ok(Entry { full_url: full_url("Immunization", n), method, resource: Value::Object(m) })
}

/// The OBX of an administration that are elements of the Immunization (`OBSERVATIONS`).
fn observations(msg: &Message, after: &[&Segment], m: &mut Map<String, Value>) -> Result<(), FieldError> {
    let mut eligibility: Vec<Value> = Vec::new();
    // Education by OBX-4 sub-id: (sub-id, element → value).
    let mut education: Vec<(String, Map<String, Value>)> = Vec::new();
    for obx in after.iter().filter(|x| x.name() == "OBX") {
        let Some(element) = value(obx, 3, 1).and_then(|code| lookup(OBSERVATIONS, &code)) else { continue };
        let n = msg.segments_named("OBX").position(|x| std::ptr::eq(x, *obx)).map_or(1, |p| p + 1);
        let field = format!("{}-5", segment_label(msg, "OBX", n));
        let Some(answer) = repetitions(obx, 5).first() else { continue };
        let coded = codeable_concept(answer);
        let sub = value(obx, 4, 1).unwrap_or_default();
        let mut educate = |key: &str, v: Value| {
            match education.iter_mut().find(|(s, _)| *s == sub) {
                Some((_, e)) => {
                    e.entry(key).or_insert(v);
                }
                None => education.push((sub.clone(), Map::from_iter([(key.to_string(), v)]))),
            };
        };
        match element {
            "fundingSource" => put(m, "fundingSource", coded),
            "programEligibility" => eligibility.extend(coded),
            "education.documentType" | "education.vaccineType" => {
                if let Some(text) = part(answer, 2, 1).or_else(|| part(answer, 1, 1)) {
                    educate(element, json!(text));
                }
            }
            date => {
                if let Some(text) = part(answer, 1, 1) {
                    educate(date, json!(date_time(&text, &field)?));
                }
            }
        }
    }
    put(m, "programEligibility", Some(Value::Array(eligibility)));
    let education: Vec<Value> = education
        .into_iter()
        .filter_map(|(_, e)| {
            let document = e.get("education.documentType").or_else(|| e.get("education.vaccineType"))?;
            let mut o = Map::new();
            o.insert("documentType".into(), document.clone());
            put(&mut o, "publicationDate", e.get("education.publicationDate").cloned());
            put(&mut o, "presentationDate", e.get("education.presentationDate").cloned());
            Some(Value::Object(o))
        })
        .collect();
    put(m, "education", Some(Value::Array(education)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_clean, sample, with_context};
    use super::*;
    use proptest::prelude::*;

    fn map(text: &str) -> Result<Vec<Entry>, FieldError> {
        let msg = Message::parse(text).unwrap();
        with_context(|ctx| vxu_v04(&msg, ctx))
    }

    #[test]
    fn every_sample_maps() {
        for (name, count) in [("VXU-V04-01.hl7", 1), ("VXU.hl7", 3), ("IZ_1_1.1_Admin_Child_Max_Message.hl7", 1)] {
            let Some(msgs) = sample(name) else { continue };
            let first = with_context(|ctx| vxu_v04(&msgs[0], ctx)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(first.len(), count, "{name}");
            for msg in &msgs {
                let entries = with_context(|ctx| vxu_v04(msg, ctx)).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(entries, first);
                assert_clean(&entries);
            }
        }
    }

    #[test]
    fn vxu_field_by_field() {
        let Some(msgs) = sample("VXU.hl7") else { return };
        let entries = with_context(|ctx| vxu_v04(&msgs[0], ctx)).unwrap();
        let filler = "https://tessera.health/Id/rx1/filler-order";
        let placer = "https://tessera.health/Id/rx1/placer-order";
        assert_eq!(entries[0].method, Method::Upsert(format!("identifier={filler}|13696")));
        let prac = |id: &str, display: &str| json!({"type": "Practitioner", "identifier": {"system": "https://tessera.health/Id/rx1/practitioner", "value": id}, "display": display});
        let expected = json!({
            "resourceType": "Immunization",
            "identifier": [{"system": filler, "value": "13696"}, {"system": placer, "value": "4422"}],
            "status": "completed",
            "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "49281-0215-88", "display": "TENIVAC"}], "text": "TENIVAC"},
            "patient": {"reference": "urn:uuid:p"},
            "encounter": {"reference": "urn:uuid:e"},
            "occurrenceDateTime": "2015-06-24",
            "primarySource": true,
            "lotNumber": "315841",
            "expirationDate": "2015-12-16",
            "manufacturer": {"identifier": {"system": "http://terminology.hl7.org/CodeSystem/MVX", "value": "PMC"}, "display": "Sanofi Pasteur"},
            "site": {"coding": [{"system": SITE_SYSTEM, "code": "RD", "display": "Right Deltoid"}], "text": "Right Deltoid"},
            "route": {"coding": [{"system": "urn:hl7v2:coding-system:NCIT", "code": "C28161", "display": "Intramuscular"}], "text": "Intramuscular"},
            "doseQuantity": {"value": 0.5, "unit": "mL", "system": "http://unitsofmeasure.org", "code": "mL"},
            "performer": [
                {"function": {"coding": [{"system": FUNCTION_SYSTEM, "code": "AP", "display": "Administering Provider"}]}, "actor": prac("7824", "Lily Jackson")},
                {"function": {"coding": [{"system": FUNCTION_SYSTEM, "code": "OP", "display": "Ordering Provider"}]}, "actor": prac("654", "Wilma Thomas")}
            ],
            "fundingSource": {"coding": [{"system": "urn:hl7v2:coding-system:CDCPHINVS", "code": "PHC70", "display": "Private"}], "text": "Private"},
            "programEligibility": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0064", "code": "V01", "display": "Not VFC Eligible"}], "text": "Not VFC Eligible"}],
            "education": [{"documentType": "Tetanus/Diphtheria (Td) Vaccine VIS", "presentationDate": "2015-06-24"}]
        });
        assert_eq!(entries[0].resource, expected, "{}", serde_json::to_string_pretty(&entries[0].resource).unwrap());
        // Historical doses: no amount (999), not from the source, the filler number only.
        let h = &entries[1].resource;
        assert_eq!(entries[1].method, Method::Upsert(format!("identifier={filler}|38760")));
        assert_eq!(h["primarySource"], false);
        assert_eq!(h["reportOrigin"]["coding"][0]["code"], "01");
        assert_eq!(h["doseQuantity"], Value::Null);
        assert_eq!(h["vaccineCode"]["coding"][0], json!({"system": "http://hl7.org/fhir/sid/cvx", "code": "88", "display": "influenza, unspecified formulation"}));
        assert_eq!(h.get("performer"), None, "ORC-12 and RXA-10 are empty");
    }

    #[test]
    fn child_education_from_vaccine_type() {
        let Some(msgs) = sample("IZ_1_1.1_Admin_Child_Max_Message.hl7") else { return };
        let r = with_context(|ctx| vxu_v04(&msgs[0], ctx)).unwrap().remove(0).resource;
        assert_eq!(r["education"], json!([{"documentType": "Influenza, unspecified formulation", "publicationDate": "2012-07-02", "presentationDate": "2012-08-14"}]));
        assert_eq!(r["lotNumber"], "Z0860BB");
        assert_eq!(r["site"]["coding"][0]["code"], "LD");
    }

    const ONE: &str = "MSH|^~\\&|S|F|||20240101||VXU^V04|1|P|2.5.1\rPID|1||42\rRXA|0|1|202401151030||08^HepB^CVX|999||||||||||||00^Parental refusal^NIP002||RE";

    #[test]
    fn refusals_deletions_and_no_order() {
        let e = map(ONE).unwrap().remove(0);
        assert_eq!(e.method, Method::Create);
        assert_eq!(e.resource["status"], "not-done");
        assert_eq!(e.resource["statusReason"]["coding"][0]["code"], "00");
        assert_eq!(e.resource["occurrenceDateTime"], "2024-01-15T10:30:00+00:00");
        assert_eq!(e.resource.get("identifier"), None);
        let d = map(&format!("{ONE}|D")).unwrap().remove(0).resource;
        assert_eq!(d["status"], "entered-in-error");
        assert_eq!(d.get("statusReason"), None);
        let p = map(&ONE.replace("|RE", "|PA")).unwrap().remove(0).resource;
        assert_eq!((p["status"].as_str(), p["isSubpotent"].as_bool()), (Some("completed"), Some(true)));
    }

    #[test]
    fn errors() {
        let e = map(&ONE.replace("|202401151030|", "||")).unwrap_err();
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("RXA-3", "the administration has no date/time"));
        assert_eq!(map(&ONE.replace("|08^HepB^CVX|", "||")).unwrap_err().field, "RXA-5");
        assert_eq!(map(&ONE.replace("|RE", "|XX")).unwrap_err().field, "RXA-20");
        assert_eq!(map(&ONE.replace("|999|", "|lots|")).unwrap_err().field, "RXA-6");
        assert_eq!(map(&format!("{ONE}\rRXA|0|1|2024x||08^HepB^CVX")).unwrap_err().field, "RXA[2]-3");
        assert_eq!(map("MSH|^~\\&|S|F|||20240101||VXU^V04|1\rPID|1").unwrap_err().field, "RXA");
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(f in proptest::collection::vec("[ -~]{0,24}", 12), code in prop::sample::select(vec!["30963-3", "64994-7", "69764-9", "29769-7", "X"])) {
            let text = format!(
                "MSH|^~\\&|S|F|||20240101||VXU^V04|1|P|2.5.1\rPID|1\rORC|RE|{}|{}|||||||||{}\rRXA|0|1|2024{}||{}|{}|{}||{}|{}||||||{}|{}|{}||{}\rRXR|{}|{}\rOBX|1|CE|{code}|1|{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[0], f[1], f[2], f[3]
            );
            if let Ok(msg) = Message::parse(&text) {
                if let Ok(entries) = with_context(|ctx| vxu_v04(&msg, ctx)) {
                    assert_clean(&entries);
                }
            }
        }
    }
}
