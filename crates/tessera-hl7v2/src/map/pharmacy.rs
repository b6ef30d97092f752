//! RDE^O11 (pharmacy/treatment encoded order) to FHIR R4 MedicationRequests: one for each
//! order (ORC with its RXE, RXR, TQ1 and NTE), written as a conditional update on its order
//! number.
//!
//! | HL7 | FHIR |
//! | --- | --- |
//! | ORC-2.1 placer, ORC-3.1 filler order number | `identifier` (placer/filler order systems); the conditional update is on the placer number, else the filler's; neither is error `ORC-2` |
//! | ORC-5 order status (table 0038), else ORC-1 order control (table 0119) | `status`: see `ORDER_STATUS` and `ORDER_CONTROL` (NW, XO, RP active; HD on-hold; CA, OC cancelled; DC, OD stopped; CM completed, …); neither: `unknown` |
//! | — | `intent` `order` |
//! | RXE-2 give code | `medicationCodeableConcept`; none is error `RXE-2` |
//! | the message's patient, encounter | `subject`, `encounter` |
//! | ORC-9 date/time of transaction | `authoredOn` |
//! | ORC-12 ordering provider | `requester` (practitioner by identifier) |
//! | RXE-27 give indication | `reasonCode` |
//! | RXE-7 provider's administration instructions (text of each), else RXE-1.8 (TQ text) | `dosageInstruction.text` (one line each) |
//! | TQ1-3 repeat pattern (the TQ1 after RXE, else the order's), else RXE-1.2 interval | `dosageInstruction.timing.code.text` |
//! | RXR-1 route (the RXR after RXE, else the order's) | `dosageInstruction.route` (system v2-0162 for a code of table 0162) |
//! | RXR-2 administration site | `dosageInstruction.site` (system v2-0163 for a code of table 0163) |
//! | RXE-3 give amount minimum (and RXE-4 maximum), RXE-5 give units | `dosageInstruction.doseAndRate.doseQuantity` (`doseRange` with a maximum) |
//! | RXE-23 give rate amount, RXE-24 give rate units | `dosageInstruction.doseAndRate.rateQuantity` |
//! | RXE-10 dispense amount, RXE-11 dispense units | `dispenseRequest.quantity` |
//! | RXE-12 number of refills | `dispenseRequest.numberOfRepeatsAllowed` |
//! | RXE-9 substitution status (table 0167: N no, G, T yes) | `substitution.allowedBoolean` |
//! | NTE-3 of the order's NTEs; RXE-21 dispensing instructions | `note` (one each) |
//!
//! Quantities keep the units' text (or code) as `unit`, and their code and system only when
//! the units name a coding system. Not mapped: RXO (the order as placed: RXE says what the
//! pharmacy encoded), RXC components, RXE-6 dosage form, RXE-8 deliver-to location,
//! RXE-13–20, RXE-22, RXE-25/26 strength, RXE-28 onward, the other TQ1 fields (quantity,
//! explicit times, start and end, priority), PRT, CDO, OBX, FT1, BLG.

use super::{codeable_concept, codeable_concept_in, date_time, field_error, full_url, identifier_query, lookup, part, practitioner_reference, put, quantity, repetitions, segment_label, value, Context, Entry, FieldError, Method};
use crate::message::{Message, Segment};
use serde_json::{json, Map, Value};

/// ORC-5 order status (table 0038) to `MedicationRequest.status`.
pub const ORDER_STATUS: &[(&str, &str)] = &[
    ("A", "active"),
    ("IP", "active"),
    ("SC", "active"),
    ("HD", "on-hold"),
    ("CA", "cancelled"),
    ("DC", "stopped"),
    ("RP", "stopped"),
    ("CM", "completed"),
    ("ER", "entered-in-error"),
];

/// ORC-1 order control (table 0119) to `MedicationRequest.status`, when ORC-5 is empty.
pub const ORDER_CONTROL: &[(&str, &str)] = &[
    ("NW", "active"),
    ("OK", "active"),
    ("XO", "active"),
    ("XX", "active"),
    ("RP", "active"),
    ("RO", "active"),
    ("RL", "active"),
    ("HD", "on-hold"),
    ("OH", "on-hold"),
    ("CA", "cancelled"),
    ("OC", "cancelled"),
    ("CR", "cancelled"),
    ("DC", "stopped"),
    ("OD", "stopped"),
    ("DR", "stopped"),
];

/// RXE-9 substitution status (table 0167) to `substitution.allowedBoolean`.
pub const SUBSTITUTION: &[(&str, &str)] = &[("N", "false"), ("G", "true"), ("T", "true")];

/// Routes of administration (HL7 table 0162).
pub const ROUTES: &[&str] = &[
    "AP", "B", "DT", "GU", "IA", "IB", "IC", "ID", "IH", "IHA", "IM", "IMR", "IN", "IO", "IP", "IS", "IT", "IU", "IV", "MM", "MTH", "NG", "NP", "NS", "NT", "OP", "OT", "OTH", "PF", "PO", "PR", "RM", "SC", "SD", "SL", "TD", "TL", "TP", "TRA", "UR", "VG", "VM", "WND",
];

/// Administration sites (HL7 table 0163).
pub const SITES: &[&str] = &[
    "BE", "BN", "BU", "CT", "LA", "LAC", "LACF", "LD", "LE", "LEJ", "LF", "LG", "LH", "LIJ", "LLAQ", "LLFA", "LMFA", "LN", "LPC", "LSC", "LT", "LUA", "LUAQ", "LUFA", "LVG", "LVL", "NB", "OD", "OS", "OU", "PA", "PERIN", "RA", "RAC", "RACF", "RD", "RE", "REJ", "RF", "RG", "RH", "RIJ", "RLAQ", "RLFA", "RMFA", "RN", "RPC", "RSC", "RT", "RUA", "RUAQ", "RUFA", "RVG", "RVL",
];

pub const ROUTE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0162";
pub const SITE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0163";

/// An order of the message: its ORC and the segments up to the next ORC.
pub(crate) struct Order<'a> {
    /// Which ORC (from 1) and its label for errors (`ORC[2]`).
    pub n: usize,
    pub label: String,
    pub orc: &'a Segment,
    pub segments: &'a [Segment],
}

impl<'a> Order<'a> {
    /// The orders of a message, in order.
    pub fn all(msg: &'a Message) -> Vec<Order<'a>> {
        let all = msg.segments();
        let starts: Vec<usize> = all.iter().enumerate().filter(|(_, s)| s.name() == "ORC").map(|(i, _)| i).collect();
        starts
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let end = starts.get(k + 1).copied().unwrap_or(all.len());
                Order { n: k + 1, label: segment_label(msg, "ORC", k + 1), orc: &all[i], segments: &all[i + 1..end] }
            })
            .collect()
    }

    /// The first segment called `name` after the first `after`, else the first in the order.
    pub fn find(&self, name: &str, after: &str) -> Option<&'a Segment> {
        let from = self.segments.iter().position(|s| s.name() == after).unwrap_or(0);
        self.segments[from..].iter().find(|s| s.name() == name).or_else(|| self.segments.iter().find(|s| s.name() == name))
    }

    /// The label of the `n`th segment called `name` of the message (counting the earlier
    /// orders' segments), for errors.
    pub fn label_of(&self, msg: &Message, seg: &Segment) -> String {
        let n = msg.segments_named(seg.name()).position(|s| std::ptr::eq(s, seg)).map_or(1, |p| p + 1);
        segment_label(msg, seg.name(), n)
    }
}

/// The MedicationRequests of an RDE^O11 message, one for each ORC. See the module
/// documentation for the mapping.
pub fn rde_o11(msg: &Message, ctx: &Context) -> Result<Vec<Entry>, FieldError> {
    let orders = Order::all(msg);
    if orders.is_empty() {
        return Err(field_error("ORC", "the message has no ORC segment"));
    }
    orders.iter().map(|o| medication_request(msg, ctx, o)).collect()
}

fn medication_request(msg: &Message, ctx: &Context, order: &Order) -> Result<Entry, FieldError> {
    let (orc, label, s) = (order.orc, &order.label, ctx.systems);
    let rxe = order.segments.iter().find(|x| x.name() == "RXE").ok_or_else(|| field_error("RXE", format!("the order of {label} has no RXE segment")))?;
    let rxe_label = order.label_of(msg, rxe);
    let f = |seg: &str, n: usize| format!("{seg}-{n}");

    let placer = value(orc, 2, 1);
    let filler = value(orc, 3, 1);
    let key = placer.as_ref().map(|v| (&s.placer_order, v)).or(filler.as_ref().map(|v| (&s.filler_order, v)));
    let (key_system, key_value) = key.ok_or_else(|| field_error(f(label, 2), "the order has no placer (ORC-2) or filler (ORC-3) order number"))?;

    let status = match (value(orc, 5, 1), value(orc, 1, 1)) {
        (Some(code), _) => lookup(ORDER_STATUS, &code).ok_or_else(|| field_error(f(label, 5), format!("'{code}' is not an order status (table 0038)")))?,
        (None, Some(control)) => lookup(ORDER_CONTROL, &control).unwrap_or("unknown"),
        (None, None) => "unknown",
    };
    let medication = repetitions(rxe, 2).first().and_then(codeable_concept).ok_or_else(|| field_error(f(&rxe_label, 2), "the order names no medication (give code)"))?;

    let mut m = Map::new();
    m.insert("resourceType".into(), json!("MedicationRequest"));
    let identifiers: Vec<Value> = [(&s.placer_order, &placer), (&s.filler_order, &filler)].iter().filter_map(|(system, v)| v.as_ref().map(|v| json!({"system": system, "value": v}))).collect();
    m.insert("identifier".into(), Value::Array(identifiers));
    m.insert("status".into(), json!(status));
    m.insert("intent".into(), json!("order"));
    m.insert("medicationCodeableConcept".into(), medication);
    m.insert("subject".into(), json!({"reference": ctx.patient}));
    put(&mut m, "encounter", ctx.encounter.map(|e| json!({"reference": e})));
    put(&mut m, "authoredOn", value(orc, 9, 1).map(|t| date_time(&t, &f(label, 9))).transpose()?.map(Value::from));
    put(&mut m, "requester", repetitions(orc, 12).iter().find_map(|r| practitioner_reference(r, s)));
    put(&mut m, "reasonCode", Some(Value::Array(repetitions(rxe, 27).iter().filter_map(codeable_concept).collect())));

    // How it is given.
    let mut dosage = Map::new();
    let instructions: Vec<String> = repetitions(rxe, 7).iter().filter_map(|r| part(r, 2, 1).or_else(|| part(r, 1, 1))).collect();
    let text = if instructions.is_empty() { repetitions(rxe, 1).first().and_then(|r| part(r, 8, 1)) } else { Some(instructions.join("\n")) };
    put(&mut dosage, "text", text.map(Value::from));
    let tq1 = order.find("TQ1", "RXE");
    let pattern = tq1.and_then(|t| repetitions(t, 3).first()).and_then(|r| part(r, 1, 2).or_else(|| part(r, 1, 1)));
    let pattern = pattern.or_else(|| repetitions(rxe, 1).first().and_then(|r| part(r, 2, 1)));
    put(&mut dosage, "timing", pattern.map(|p| json!({"code": {"text": p}})));
    let rxr = order.find("RXR", "RXE");
    put(&mut dosage, "site", rxr.and_then(|r| repetitions(r, 2).first()).and_then(|r| codeable_concept_in(r, SITE_SYSTEM, SITES)));
    put(&mut dosage, "route", rxr.and_then(|r| repetitions(r, 1).first()).and_then(|r| codeable_concept_in(r, ROUTE_SYSTEM, ROUTES)));
    let units = repetitions(rxe, 5).first();
    let mut dose_and_rate = Map::new();
    match (value(rxe, 3, 1), value(rxe, 4, 1)) {
        (Some(min), Some(max)) => {
            let range = json!({"low": quantity(&min, units, &f(&rxe_label, 3))?, "high": quantity(&max, units, &f(&rxe_label, 4))?});
            dose_and_rate.insert("doseRange".into(), range);
        }
        (Some(amount), None) | (None, Some(amount)) => {
            dose_and_rate.insert("doseQuantity".into(), quantity(&amount, units, &f(&rxe_label, 3))?);
        }
        (None, None) => {}
    }
    if let Some(rate) = value(rxe, 23, 1) {
        dose_and_rate.insert("rateQuantity".into(), quantity(&rate, repetitions(rxe, 24).first(), &f(&rxe_label, 23))?);
    }
    if !dose_and_rate.is_empty() {
        dosage.insert("doseAndRate".into(), json!([dose_and_rate]));
    }
    if !dosage.is_empty() {
        m.insert("dosageInstruction".into(), json!([dosage]));
    }

    // What is supplied.
    let mut dispense = Map::new();
    if let Some(amount) = value(rxe, 10, 1) {
        dispense.insert("quantity".into(), quantity(&amount, repetitions(rxe, 11).first(), &f(&rxe_label, 10))?);
    }
    if let Some(refills) = value(rxe, 12, 1) {
        let n: u32 = refills.parse().map_err(|_| field_error(f(&rxe_label, 12), format!("'{refills}' is not a number of refills")))?;
        dispense.insert("numberOfRepeatsAllowed".into(), json!(n));
    }
    if !dispense.is_empty() {
        m.insert("dispenseRequest".into(), Value::Object(dispense));
    }
    if let Some(code) = value(rxe, 9, 1) {
        let allowed = lookup(SUBSTITUTION, &code).ok_or_else(|| field_error(f(&rxe_label, 9), format!("'{code}' is not a substitution status (table 0167)")))?;
        m.insert("substitution".into(), json!({"allowedBoolean": allowed == "true"}));
    }
    let mut notes: Vec<Value> = order.segments.iter().filter(|x| x.name() == "NTE").flat_map(|n| repetitions(n, 3).iter().filter_map(|r| part(r, 1, 1))).map(|t| json!({"text": t})).collect();
    notes.extend(repetitions(rxe, 21).iter().filter_map(|r| part(r, 2, 1).or_else(|| part(r, 1, 1))).map(|t| json!({"text": t})));
    put(&mut m, "note", Some(Value::Array(notes)));

    Ok(Entry { full_url: full_url("MedicationRequest", order.n), method: Method::Upsert(identifier_query(key_system, key_value)), resource: Value::Object(m) })
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_clean, sample, with_context};
    use super::*;
    use proptest::prelude::*;

    fn map(text: &str) -> Result<Vec<Entry>, FieldError> {
        let msg = Message::parse(text).unwrap();
        with_context(|ctx| rde_o11(&msg, ctx))
    }

    #[test]
    fn every_sample_maps() {
        let Some(msgs) = sample("RDE-O11-01.hl7") else { return };
        let first = with_context(|ctx| rde_o11(&msgs[0], ctx)).unwrap();
        for msg in &msgs {
            let entries = with_context(|ctx| rde_o11(msg, ctx)).unwrap();
            assert_eq!(entries, first);
            assert_clean(&entries);
        }
    }

    #[test]
    fn rde_field_by_field() {
        let Some(msgs) = sample("RDE-O11-01.hl7") else { return };
        let entries = with_context(|ctx| rde_o11(&msgs[0], ctx)).unwrap();
        assert_eq!(entries.len(), 1);
        let e = &entries[0];
        let placer = "https://tessera.health/Id/rx1/placer-order";
        assert_eq!(e.method, Method::Upsert(format!("identifier={placer}|1163422591")));
        let expected = json!({
            "resourceType": "MedicationRequest",
            "identifier": [{"system": placer, "value": "1163422591"}],
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": {
                "coding": [{"system": "http://hl7.org/fhir/sid/ndc", "code": "0143963401", "display": "200 ML BAG : NICARDIPINE IN NACL (ISO-OS) 40 MG/200 ML IV PGBK"}],
                "text": "niCARdipine (CARDENE) in NaCl IV infusion 40 mg/200 mL (0.2 mg/mL)"
            },
            "subject": {"reference": "urn:uuid:p"},
            "encounter": {"reference": "urn:uuid:e"},
            "authoredOn": "2019-11-04T06:27:26+02:15",
            "dosageInstruction": [{
                "text": "Titrate to BP less than 180\nStarting dose is 5 mg/hr. Titrate by 2.5 mg/hr increments every 5 minutes as needed to a maximum dose of 15 mg/hr. Call Physician if ineffective.\nNicardipine is light sensitivie. Store in carton/overwrap until ready to use.",
                "timing": {"code": {"text": "Post (after)"}},
                "site": {"coding": [{"code": "HAND", "display": "HAND"}], "text": "HAND"},
                "route": {"coding": [{"system": ROUTE_SYSTEM, "code": "IV", "display": "Intravenous"}], "text": "Intravenous"},
                "doseAndRate": [{"doseQuantity": {"value": 5, "unit": "mg/hr"}, "rateQuantity": {"value": 23, "unit": "mL/hr"}}]
            }],
            "dispenseRequest": {"quantity": {"value": 3, "unit": "Bag"}, "numberOfRepeatsAllowed": 12}
        });
        assert_eq!(e.resource, expected, "{}", serde_json::to_string_pretty(&e.resource).unwrap());
    }

    const TWO: &str = "MSH|^~\\&|S|F|||20240101||RDE^O11|1|P|2.5\rPID|1||42\r\
ORC|NW|P1||||||||||D1^WHO^DOC\rRXE|^Q8H^^^^^^take with food|AMOX^Amoxicillin^L|250|500|mg^milligram^UCUM||||G|21|TAB^tablet|0|||||||||Keep cool||||||GI^Infection\rNTE|1||First note\rRXR|PO^Oral|LA\r\
ORC|CA||F2|||||||||\rRXE||PARA^Paracetamol|1||g\rTQ1|||BID&twice a day&HL70335";

    #[test]
    fn two_orders() {
        let entries = map(TWO).unwrap();
        assert_eq!(entries.len(), 2);
        assert_ne!(entries[0].full_url, entries[1].full_url);
        let a = &entries[0].resource;
        assert_eq!(a["status"], "active");
        assert_eq!(a["requester"]["display"], "DOC WHO");
        let d = &a["dosageInstruction"][0];
        assert_eq!(d["text"], "take with food");
        assert_eq!(d["timing"]["code"]["text"], "Q8H");
        assert_eq!(d["route"]["coding"][0]["system"], ROUTE_SYSTEM);
        assert_eq!(d["site"]["coding"][0], json!({"system": SITE_SYSTEM, "code": "LA"}));
        assert_eq!(d["doseAndRate"][0]["doseRange"]["high"], json!({"value": 500, "unit": "milligram", "system": "http://unitsofmeasure.org", "code": "mg"}));
        assert_eq!(a["dispenseRequest"]["numberOfRepeatsAllowed"], 0);
        assert_eq!(a["substitution"], json!({"allowedBoolean": true}));
        assert_eq!(a["note"], json!([{"text": "First note"}, {"text": "Keep cool"}]));
        assert_eq!(a["reasonCode"][0]["coding"][0]["code"], "GI");
        let b = &entries[1];
        assert_eq!(b.method, Method::Upsert("identifier=https://tessera.health/Id/rx1/filler-order|F2".into()));
        assert_eq!(b.resource["status"], "cancelled");
        assert_eq!(b.resource["dosageInstruction"][0]["timing"]["code"]["text"], "twice a day");
        assert_clean(&entries);
    }

    #[test]
    fn errors() {
        let e = map(&TWO.replace("RXE||PARA^Paracetamol|", "RXE|||")).unwrap_err();
        assert_eq!((e.field.as_str(), e.problem.as_str()), ("RXE[2]-2", "the order names no medication (give code)"));
        assert_eq!(map(&TWO.replace("ORC|CA||F2|", "ORC|CA|||")).unwrap_err().field, "ORC[2]-2");
        assert_eq!(map(&TWO.replace("|250|500|", "|x|500|")).unwrap_err().field, "RXE[1]-3");
        assert_eq!(map(&TWO.replace("|TAB^tablet|0|", "|TAB^tablet|-1|")).unwrap_err().field, "RXE[1]-12");
        assert_eq!(map(&TWO.replace("ORC|CA||F2|||", "ORC|CA||F2||ZZ|")).unwrap_err().field, "ORC[2]-5");
        assert_eq!(map("MSH|^~\\&|S|F|||20240101||RDE^O11|1\rPID|1").unwrap_err().field, "ORC");
        assert_eq!(map("MSH|^~\\&|S|F|||20240101||RDE^O11|1\rPID|1\rORC|NW|P1").unwrap_err().field, "RXE");
        let one = "MSH|^~\\&|S|F|||20240101||RDE^O11|1\rPID|1\rORC|NW|P1\rRXE|||5";
        assert_eq!(map(one).unwrap_err().field, "RXE-2");
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(f in proptest::collection::vec("[ -~]{0,24}", 12), control in prop::sample::select(vec!["NW", "CA", "XX", ""])) {
            let text = format!(
                "MSH|^~\\&|S|F|||20240101||RDE^O11|1|P|2.5\rPID|1\rORC|{control}|P{}|{}||{}||||{}|||{}\rRXE|{}|{}|{}|{}|{}||||||{}|{}\rRXR|{}\rNTE|1||{}",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[0], f[1]
            );
            if let Ok(msg) = Message::parse(&text) {
                if let Ok(entries) = with_context(|ctx| rde_o11(&msg, ctx)) {
                    assert_clean(&entries);
                }
            }
        }
    }
}
