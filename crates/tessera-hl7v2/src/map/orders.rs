//! ORM^O01 (general orders) and OML^O21 (laboratory orders) to ServiceRequests.
//!
//! Each order (an ORC with its order detail segment: OBR, or RXO, ODS, ODT or RQD in an
//! ORM) becomes one ServiceRequest. An OBR with no ORC of its own shares the ORC (and TQ1)
//! before it; an OBR with no ORC before it at all is an order whose ORC-1 is taken as `NW`.
//!
//! | HL7 | FHIR |
//! | --- | --- |
//! | ORC-2.1 (else OBR-2.1) placer order number | ServiceRequest `identifier` (type PLAC, system `placer_order`); the key |
//! | ORC-3.1 (else OBR-3.1) filler order number | ServiceRequest `identifier` (type FILL, system `filler_order`); the key when there is no placer number |
//! | neither | refused (`ORC-2`) |
//! | ORC-4.1 placer group number | ServiceRequest `requisition` (system `placer_order`) |
//! | ORC-1 order control, ORC-5 order status | ServiceRequest `status` ([`ORDER_CONTROL`], [`ORDER_STATUS`]): a control that cancels, discontinues or holds the order decides; otherwise ORC-5 when it is a status of table 0038; otherwise ORC-1; `active` when there is no ORC-1 |
//! | (always) | ServiceRequest `intent` `order` |
//! | OBR-4 (RXO-1, ODS-3, ODT-1, RQD-2 for the other detail segments, [`DETAIL_CODE`]) | ServiceRequest `code` (required: refused when empty); further repetitions of the field in `orderDetail` |
//! | the message's patient and visit | `subject`, `encounter` |
//! | ORC-9 date/time of transaction | ServiceRequest `authoredOn` |
//! | ORC-12 (else OBR-16) ordering provider | ServiceRequest `requester` (a practitioner by identifier and name) |
//! | OBR-7, else TQ1-7, else ORC-7.4 | ServiceRequest `occurrenceDateTime` |
//! | TQ1-9, else ORC-7.6, else OBR-27.6, else OBR-5 priority | ServiceRequest `priority` ([`PRIORITY`]; other codes are left out) |
//! | OBR-31 reason for study | ServiceRequest `reasonCode` |
//! | NTE-3 after the ORC or the detail segment | ServiceRequest `note` |
//!
//! The key makes each order a conditional write, PUT
//! `ServiceRequest?identifier={placer_order}|{number}`, so that a change of status (`SC`,
//! `CA`, `DC`, `HD`, …) updates the order it is about. An order number that an earlier order
//! of the same message already has (one ORC with several OBR segments) is made unique with
//! the OBR's set id, `ORD1-2` (or its position in the message when that is not enough).
//!
//! Not mapped: OBX (answers to questions asked at order entry, prior results), SPM and SAC
//! (specimens), DG1, AL1, IN1, GT1, CTD, FT1, BLG, PRT, the rest of TQ1 and ORC-7, and the
//! fields not listed. A message with a second PID is refused.

use super::results::{concept, nte_text, put, put_list, reference, typed_identifier, when};
use super::{field_error, full_url, identifier_query, practitioner_reference, segment_label, value, Context, Entry, FieldError, Method};
use crate::message::{Message, Segment};
use serde_json::{json, Map, Value};

/// ORC-1 order control (HL7 table 0119) to ServiceRequest.status, and whether the control
/// decides the status even when ORC-5 says otherwise.
pub const ORDER_CONTROL: &[(&str, &str, bool)] = &[
    ("NW", "active", false), // new order
    ("OK", "active", false), // order accepted and OK
    ("SN", "active", false), // send order number (an order placed by the filler)
    ("NA", "active", false), // number assigned
    ("PA", "active", false), // parent order
    ("CH", "active", false), // child order
    ("RO", "active", false), // replacement order
    ("RE", "active", false), // observations to follow
    ("SC", "active", false), // status changed (ORC-5 says to what)
    ("SR", "active", false), // response to status request
    ("XO", "active", false), // change order request
    ("XX", "active", false), // order changed, unsolicited
    ("XR", "active", false), // changed as requested
    ("RL", "active", false), // release previous hold
    ("OE", "active", false), // order released
    ("OR", "active", false), // released as requested
    ("HD", "on-hold", true), // hold order request
    ("OH", "on-hold", true), // order held
    ("HR", "on-hold", true), // on hold as requested
    ("CA", "revoked", true), // cancel order request
    ("OC", "revoked", true), // order cancelled
    ("CR", "revoked", true), // cancelled as requested
    ("DC", "revoked", true), // discontinue order request
    ("OD", "revoked", true), // order discontinued
    ("DR", "revoked", true), // discontinued as requested
    ("RP", "revoked", true), // order replace request (this order is replaced)
    ("RU", "revoked", true), // replaced unsolicited
    ("UA", "revoked", true), // unable to accept order
];

/// ORC-5 order status (HL7 table 0038) to ServiceRequest.status. Codes that are not in the
/// table are ignored (ORC-1 decides).
pub const ORDER_STATUS: &[(&str, &str)] = &[
    ("A", "active"),            // some, but not all, results available
    ("IP", "active"),           // in process, unspecified
    ("SC", "active"),           // in process, scheduled
    ("CM", "completed"),        // order is completed
    ("CA", "revoked"),          // order was cancelled
    ("DC", "revoked"),          // order was discontinued
    ("RP", "revoked"),          // order has been replaced
    ("HD", "on-hold"),          // order is on hold
    ("ER", "entered-in-error"), // error, order not found
];

/// Priority (HL7 table 0027: TQ1-9, ORC-7.6, OBR-27.6, OBR-5) to ServiceRequest.priority.
pub const PRIORITY: &[(&str, &str)] = &[
    ("S", "stat"),    // stat
    ("A", "asap"),    // as soon as possible
    ("R", "routine"), // routine
    ("P", "urgent"),  // preoperative
    ("T", "urgent"),  // timing critical
];

/// The order detail segments and the field of each that names what is ordered.
pub const DETAIL_CODE: &[(&str, usize)] = &[("OBR", 4), ("RXO", 1), ("ODS", 3), ("ODT", 1), ("RQD", 2)];

/// One order: its ORC (and its number among the message's ORC), detail segment (and its
/// number among the segments of its name), TQ1 and notes.
#[derive(Clone)]
struct Order<'a> {
    orc: Option<(&'a Segment, usize)>,
    detail: Option<(&'a Segment, usize)>,
    tq1: Option<(&'a Segment, usize)>,
    ntes: Vec<&'a Segment>,
}

fn orders(msg: &Message) -> Vec<Order<'_>> {
    let mut out: Vec<Order> = Vec::new();
    let mut notes_open = false;
    let (mut orc_n, mut tq1_n) = (0, 0);
    let mut counts: Vec<(&str, usize)> = DETAIL_CODE.iter().map(|(s, _)| (*s, 0)).collect();
    for seg in msg.segments() {
        let name = seg.name();
        if name == "ORC" {
            orc_n += 1;
            out.push(Order { orc: Some((seg, orc_n)), detail: None, tq1: None, ntes: Vec::new() });
            notes_open = true;
        } else if let Some(count) = counts.iter_mut().find(|(s, _)| *s == name) {
            count.1 += 1;
            let n = count.1;
            match out.last_mut().filter(|o| o.detail.is_none()) {
                Some(o) => o.detail = Some((seg, n)),
                None => {
                    let (orc, tq1) = out.last().map_or((None, None), |o| (o.orc, o.tq1));
                    out.push(Order { orc, detail: Some((seg, n)), tq1, ntes: Vec::new() });
                }
            }
            notes_open = true;
        } else if name == "TQ1" {
            tq1_n += 1;
            if let Some(o) = out.last_mut().filter(|o| o.tq1.is_none()) {
                o.tq1 = Some((seg, tq1_n));
            }
            notes_open = false;
        } else if name == "NTE" {
            if let Some(o) = out.last_mut().filter(|_| notes_open) {
                o.ntes.push(seg);
            }
        } else if name != "PRT" {
            notes_open = false;
        }
    }
    out
}

/// The ServiceRequest.status of an order (see [`ORDER_CONTROL`]).
fn order_status(msg: &Message, orc: Option<(&Segment, usize)>) -> Result<&'static str, FieldError> {
    let Some((orc, n)) = orc else { return Ok("active") };
    let control = match value(orc, 1, 1) {
        Some(c) => Some(ORDER_CONTROL.iter().find(|(k, _, _)| k.eq_ignore_ascii_case(&c)).ok_or_else(|| field_error(format!("{}-1", segment_label(msg, "ORC", n)), format!("'{c}' is not an order control code (table 0119)")))?),
        None => None,
    };
    let status = value(orc, 5, 1).and_then(|s| ORDER_STATUS.iter().find(|(k, _)| k.eq_ignore_ascii_case(&s)));
    Ok(match (control, status) {
        (Some((_, s, true)), _) => s,
        (_, Some((_, s))) => s,
        (Some((_, s, false)), None) => s,
        (None, None) => "active",
    })
}

/// The priority code of TQ1-9, ORC-7.6, OBR-27.6 or OBR-5, the first given.
fn priority(order: &Order, obr: Option<&Segment>) -> Option<&'static str> {
    let code = order
        .tq1
        .and_then(|(t, _)| value(t, 9, 1))
        .or_else(|| order.orc.and_then(|(o, _)| value(o, 7, 6)))
        .or_else(|| obr.and_then(|o| value(o, 27, 6)))
        .or_else(|| obr.and_then(|o| value(o, 5, 1)))?;
    PRIORITY.iter().find(|(k, _)| k.eq_ignore_ascii_case(&code)).map(|(_, p)| *p)
}

fn service_requests(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    if msg.segments_named("PID").count() > 1 {
        return Err(field_error("PID[2]-3", "a second patient: this interface takes one patient's orders per message"));
    }
    let sys = ctx.systems;
    let mut entries = Vec::new();
    let mut keys: Vec<String> = Vec::new();
    for (i, order) in orders(msg).into_iter().enumerate() {
        let orc = order.orc.map(|(s, _)| s);
        let obr = order.detail.filter(|(d, _)| d.name() == "OBR").map(|(d, _)| d);
        let orc_label = order.orc.map(|(_, n)| segment_label(msg, "ORC", n));
        let obr_label = order.detail.filter(|(d, _)| d.name() == "OBR").map_or_else(|| "OBR".to_string(), |(_, n)| segment_label(msg, "OBR", n));
        let either = |f: usize| orc.and_then(|o| value(o, f, 1)).or_else(|| obr.and_then(|o| value(o, f, 1)));
        let (placer, filler) = (either(2), either(3));

        let (key_system, key_type, number) = match (&placer, &filler) {
            (Some(p), _) => (&sys.placer_order, "PLAC", p.clone()),
            (None, Some(f)) => (&sys.filler_order, "FILL", f.clone()),
            (None, None) => {
                let field = orc_label.as_ref().map_or_else(|| format!("{obr_label}-2"), |l| format!("{l}-2"));
                return Err(field_error(field, "the order has no placer or filler order number"));
            }
        };
        let mut number = number;
        if keys.contains(&identifier_query(key_system, &number)) {
            let set_id = obr.and_then(|o| value(o, 1, 1)).unwrap_or_else(|| (i + 1).to_string());
            let unique = format!("{number}-{set_id}");
            number = if keys.contains(&identifier_query(key_system, &unique)) { format!("{unique}-{}", i + 1) } else { unique };
        }
        let query = identifier_query(key_system, &number);
        keys.push(query.clone());

        let (code_field, code_label) = match order.detail {
            Some((d, n)) => {
                let f = DETAIL_CODE.iter().find(|(s, _)| *s == d.name()).map_or(4, |(_, f)| *f);
                (d.field(f), format!("{}-{f}", segment_label(msg, d.name(), n)))
            }
            None => (None, "OBR-4".to_string()),
        };
        let mut concepts = code_field.map(|f| f.repetitions()).unwrap_or_default().iter().filter_map(concept);
        let code = concepts.next().ok_or_else(|| field_error(&code_label, "the order names no service (the field is empty)"))?;
        let details: Vec<Value> = concepts.collect();

        let mut o = Map::new();
        o.insert("resourceType".into(), json!("ServiceRequest"));
        let mut identifiers = Vec::new();
        if let Some(p) = &placer {
            identifiers.push(typed_identifier("PLAC", &sys.placer_order, if key_type == "PLAC" { &number } else { p }));
        }
        if let Some(f) = &filler {
            identifiers.push(typed_identifier("FILL", &sys.filler_order, if key_type == "FILL" { &number } else { f }));
        }
        o.insert("identifier".into(), Value::Array(identifiers));
        put(&mut o, "requisition", orc.and_then(|c| value(c, 4, 1)).map(|g| json!({"system": sys.placer_order, "value": g})));
        o.insert("status".into(), json!(order_status(msg, order.orc)?));
        o.insert("intent".into(), json!("order"));
        put(&mut o, "priority", priority(&order, obr).map(Value::from));
        o.insert("code".into(), code);
        put_list(&mut o, "orderDetail", details);
        o.insert("subject".into(), reference(ctx.patient));
        put(&mut o, "encounter", ctx.encounter.map(reference));
        let occurrence = match obr.map(|b| when(b, 7, &obr_label)).transpose()?.flatten() {
            Some(t) => Some(t),
            None => match order.tq1.map(|(t, n)| when(t, 7, &segment_label(msg, "TQ1", n))).transpose()?.flatten() {
                Some(t) => Some(t),
                None => match (orc, &orc_label) {
                    (Some(c), Some(l)) => value(c, 7, 4).map(|t| super::date_time(&t, &format!("{l}-7"))).transpose()?,
                    _ => None,
                },
            },
        };
        put(&mut o, "occurrenceDateTime", occurrence.map(Value::from));
        if let (Some(c), Some(l)) = (orc, &orc_label) {
            put(&mut o, "authoredOn", when(c, 9, l)?.map(Value::from));
        }
        let requester = orc.and_then(|c| c.field(12)?.repetition(1).and_then(|r| practitioner_reference(r, sys))).or_else(|| obr.and_then(|b| b.field(16)?.repetition(1).and_then(|r| practitioner_reference(r, sys))));
        put(&mut o, "requester", requester);
        let reasons: Vec<Value> = obr.and_then(|b| b.field(31)).map(|f| f.repetitions()).unwrap_or_default().iter().filter_map(concept).collect();
        put_list(&mut o, "reasonCode", reasons);
        let notes: Vec<Value> = order.ntes.iter().filter_map(|n| nte_text(n)).map(|t| json!({"text": t})).collect();
        put_list(&mut o, "note", notes);
        entries.push(Entry { full_url: full_url("ServiceRequest", entries.len()), method: Method::Upsert(query), resource: Value::Object(o) });
    }
    Ok(entries)
}

/// ORM^O01: a ServiceRequest for each order.
pub fn orm_o01(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    service_requests(msg, ctx)
}

/// OML^O21: a ServiceRequest for each order (ORC, TQ1, OBR, NTE; the specimens are not
/// mapped).
pub fn oml_o21(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    service_requests(msg, ctx)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_clean, sample_text as sample, with_context as with_ctx};
    use super::*;

    fn map(text: &str) -> Result<Vec<Entry>, FieldError> {
        let msg = Message::parse(text).expect("parses");
        let oml = msg.message_type().is_some_and(|t| t.code == "OML");
        with_ctx(|ctx| if oml { oml_o21(&msg, ctx) } else { orm_o01(&msg, ctx) })
    }

    fn assert_entries_clean(entries: &[Entry]) {
        let mut queries: Vec<String> = entries.iter().map(|e| format!("{:?}", e.method)).collect();
        queries.sort();
        queries.dedup();
        assert_eq!(queries.len(), entries.len(), "conditional writes are unique");
        for e in entries {
            let r = &e.resource;
            assert_eq!(r["resourceType"], "ServiceRequest");
            assert!(r.get("id").is_none());
            assert!(r.get("status").is_some() && r.get("code").is_some() && r.get("subject").is_some());
            assert_eq!(r["intent"], "order");
        }
        assert_clean(entries);
    }

    #[test]
    fn every_sample_maps() {
        let expected = [("ORM-O01-01.hl7", 1), ("ORM-O01-04.hl7", 1), ("ORM-O01-06.hl7", 1), ("LAB-ORM-1.hl7", 1), ("OML-O21-01.hl7", 1), ("MDHHS-OML-O21-1.hl7", 1), ("MDHHS-OML-O21-2.hl7", 2)];
        for (name, n) in expected {
            let Some(text) = sample(name) else {
                eprintln!("{name} is not there: skipped");
                continue;
            };
            let entries = map(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_entries_clean(&entries);
            assert_eq!(entries.len(), n, "{name}");
        }
    }

    #[test]
    fn orm_field_by_field() {
        let Some(text) = sample("ORM-O01-01.hl7") else { return };
        let e = map(&text).unwrap();
        assert_eq!(e[0].method, Method::Upsert("identifier=https://tessera.health/Id/rx1/placer-order|1101".into()));
        let r = &e[0].resource;
        assert_eq!(r["identifier"][0]["type"]["coding"][0]["code"], "PLAC");
        assert_eq!(r["identifier"][0]["value"], "1101");
        assert_eq!(r["identifier"][1], json!({"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "FILL", "display": "Filler Identifier"}]}, "system": "https://tessera.health/Id/rx1/filler-order", "value": "1201"}));
        assert_eq!(r["status"], "active");
        assert_eq!(r["intent"], "order");
        assert_eq!(r["code"]["coding"][0], json!({"system": "http://loinc.org", "code": "24725-4", "display": "CT Head"}));
        assert_eq!(r["subject"]["reference"], "urn:uuid:p");
        assert_eq!(r["encounter"]["reference"], "urn:uuid:e");
        assert_eq!(r["authoredOn"], "2021-10-20T11:26:00+02:15");
        assert_eq!(r["occurrenceDateTime"], "2021-10-20T12:00:00+02:15");
        assert_eq!(r["requester"], json!({"type": "Practitioner", "identifier": {"system": "https://tessera.health/Id/rx1/practitioner", "value": "3850"}, "display": "JONES ORDPROVIDER"}));
        assert!(r.get("priority").is_none());
        assert!(r.get("note").is_none());

        if let Some(text) = sample("OML-O21-01.hl7") {
            let r = &map(&text).unwrap()[0].resource;
            assert_eq!(r["priority"], "routine");
            assert_eq!(r["note"], json!([{"text": "Urgent"}]));
            assert_eq!(r["code"]["coding"][0]["code"], "57698-3");
        }
        if let Some(text) = sample("ORM-O01-04.hl7") {
            let r = &map(&text).unwrap()[0].resource;
            assert_eq!(r["code"]["coding"][0]["code"], "P-1");
            assert_eq!(r["orderDetail"][0]["coding"][0]["code"], "P-2");
            assert_eq!(r["note"], json!([{"text": "CT Scan to be done urgent"}]));
        }
        if let Some(text) = sample("ORM-O01-06.hl7") {
            let r = &map(&text).unwrap()[0].resource;
            assert_eq!(r["code"]["coding"][0]["system"], "http://hl7.org/fhir/sid/ndc");
            assert_eq!(r["occurrenceDateTime"], "1924-03-15");
        }
        if let Some(text) = sample("LAB-ORM-1.hl7") {
            let r = &map(&text).unwrap()[0].resource;
            assert_eq!(r["status"], "active");
            assert_eq!(r["authoredOn"], "2014-10-06T09:29:00+01:00");
            assert_eq!(r["requester"]["display"], "DR URO");
        }
        if let Some(text) = sample("MDHHS-OML-O21-2.hl7") {
            let e = map(&text).unwrap();
            assert_eq!(e[0].resource["identifier"][0]["value"], "ORD723222");
            assert_eq!(e[1].resource["identifier"][0]["value"], "ORD723222-2");
            assert_eq!(e[1].resource["requisition"]["value"], "GORD874211");
            assert_eq!(e[1].resource["reasonCode"][0]["coding"][0]["code"], "RFS01");
            assert_eq!(e[1].resource["note"], json!([{"text": "the sky is blue"}]));
            assert_eq!(e[1].resource["authoredOn"], e[0].resource["authoredOn"]);
        }
    }

    const ORM: &str = "MSH|^~\\&|EPR|RX1|LAB|RX1|202401021030||ORM^O01^ORM_O01|1|P|2.4\r\
PID|1||K123^^^RX1^MR\r\
ORC|NW|PL1^EPR|||IP||^^^202401030900^^S|||||C1^SMITH^ANN^^^DR\r\
OBR|1|PL1^EPR||FBC^Full blood count^L|||||||||||||||||||||||||||R69^Illness^I10\r\
NTE|1||Fasting\r";

    #[test]
    fn a_small_order() {
        let e = map(ORM).unwrap();
        let r = &e[0].resource;
        assert_eq!(r["status"], "active");
        assert_eq!(r["priority"], "stat");
        assert_eq!(r["occurrenceDateTime"], "2024-01-03T09:00:00+00:00");
        assert_eq!(r["requester"]["display"], "DR ANN SMITH");
        assert_eq!(r["reasonCode"][0]["coding"][0]["system"], "http://hl7.org/fhir/sid/icd-10");
        assert_eq!(r["note"], json!([{"text": "Fasting"}]));
        assert_eq!(r["identifier"].as_array().unwrap().len(), 1);
        assert_entries_clean(&e);
    }

    #[test]
    fn statuses_from_order_control_and_status() {
        let status = |control: &str, st: &str| map(&ORM.replace("ORC|NW|PL1^EPR|||IP|", &format!("ORC|{control}|PL1^EPR|||{st}|"))).map(|e| e[0].resource["status"].as_str().unwrap().to_string());
        assert_eq!(status("NW", "").unwrap(), "active");
        assert_eq!(status("NW", "NW").unwrap(), "active");
        assert_eq!(status("SC", "CM").unwrap(), "completed");
        assert_eq!(status("SC", "HD").unwrap(), "on-hold");
        assert_eq!(status("SC", "").unwrap(), "active");
        assert_eq!(status("CA", "IP").unwrap(), "revoked");
        assert_eq!(status("OC", "CA").unwrap(), "revoked");
        assert_eq!(status("DC", "").unwrap(), "revoked");
        assert_eq!(status("HD", "").unwrap(), "on-hold");
        assert_eq!(status("", "CM").unwrap(), "completed");
        assert_eq!(status("", "").unwrap(), "active");
        let err = status("ZZ", "").unwrap_err();
        assert_eq!((err.field.as_str(), err.problem.as_str()), ("ORC-1", "'ZZ' is not an order control code (table 0119)"));
        // A change of status updates the same order.
        let first = map(ORM).unwrap();
        let cancelled = map(&ORM.replace("ORC|NW", "ORC|CA")).unwrap();
        assert_eq!(first[0].method, cancelled[0].method);
    }

    #[test]
    fn orders_need_a_number_and_a_service() {
        let err = map(&ORM.replace("PL1^EPR", "")).unwrap_err();
        assert_eq!((err.field.as_str(), err.problem.as_str()), ("ORC-2", "the order has no placer or filler order number"));
        let filler = map(&ORM.replace("|PL1^EPR||", "||F9|").replace("|PL1^EPR|", "||")).unwrap();
        assert_eq!(filler[0].method, Method::Upsert("identifier=https://tessera.health/Id/rx1/filler-order|F9".into()));
        let err = map(&ORM.replace("FBC^Full blood count^L", "")).unwrap_err();
        assert_eq!(err.field, "OBR-4");
        let err = map("MSH|^~\\&|A||||||ORM^O01\rPID|1\rORC|CA|PL9\r").unwrap_err();
        assert_eq!(err.field, "OBR-4");
        let err = map(&ORM.replace("|||||C1^SMITH", "||x|||C1^SMITH")).unwrap_err();
        assert_eq!(err.field, "ORC-9");
        assert_eq!(map(&format!("{ORM}PID|2\r")).unwrap_err().field, "PID[2]-3");
    }

    #[test]
    fn several_orders() {
        let text = format!("{ORM}ORC|NW|PL2\rTQ1|1||||||202401040800||A\rOBR|1|PL2||U&E^Urea^L\rOBR|2|PL2||LFT^Liver^L\r");
        let e = map(&text).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[1].resource["priority"], "asap");
        assert_eq!(e[1].resource["occurrenceDateTime"], "2024-01-04T08:00:00+00:00");
        assert_eq!(e[2].resource["priority"], "asap");
        assert_eq!(e[2].resource["identifier"][0]["value"], "PL2-2");
        assert_entries_clean(&e);
        let err = map(&format!("{ORM}ORC|NW|PL3\rOBR|1|PL3\r")).unwrap_err();
        assert_eq!(err.field, "OBR[2]-4");
    }
}
