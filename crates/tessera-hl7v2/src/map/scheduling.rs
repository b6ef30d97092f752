//! SIU^S12 (new), S13 (rescheduled), S14 (modified) and S15 (cancelled) booking
//! notifications to a FHIR R4 Appointment, written as a conditional update on its id.
//!
//! | HL7 | FHIR |
//! | --- | --- |
//! | SCH-2.1 filler appointment id, else SCH-1.1 placer appointment id | `identifier` (appointment system, type `FILL`/`PLAC`), and the conditional update `identifier=appointment\|id` |
//! | SCH-27.1 filler, else SCH-26.1 placer order number (v2.6+), when there is no appointment id | `identifier` (filler/placer order system), and the conditional update on it |
//! | none of these | error `SCH-2` |
//! | trigger S15 | `status` `cancelled` |
//! | SCH-25 filler status (table 0278), for S12–S14 | `status`: see `FILLER_STATUS` (Booked booked, Cancelled cancelled, Complete fulfilled, Noshow noshow, Pending pending, Waitlist waitlist, Deleted entered-in-error, …); none: `booked` |
//! | TQ1-7 start, TQ1-8 end; else SCH-11.4 start, SCH-11.5 end; else AIS-4 start | `start`, `end` (instants: a date without a time is no start) |
//! | SCH-9 duration, SCH-10 units (with TQ1/SCH-11); AIS-7 duration, AIS-8 units (with AIS-4) | `end` = start + duration, when no end is given (units `TIME_UNITS`, minutes by default) |
//! | end − start | `minutesDuration` |
//! | start or end missing | both absent; then a status other than proposed, cancelled or waitlist is error `SCH-11` (FHIR invariant app-3) |
//! | SCH-7 appointment reason, a code of table 0276 (CHECKUP, EMERGENCY, FOLLOWUP, ROUTINE, WALKIN) | `appointmentType` (system v2-0276) |
//! | SCH-7, any other code or text | `reasonCode` |
//! | AIS-3 universal service id (each AIS) | `serviceType` |
//! | AIS-3 text (first), else SCH-6 event reason text | `description` |
//! | SCH-26.1, SCH-27.1 placer/filler order numbers | `basedOn` (ServiceRequest by identifier) |
//! | NTE-3 of the NTEs after SCH and its TQ1 | `comment` (one line each) |
//! | the message's patient | `participant`: actor the patient, status `accepted` |
//! | AIP-3 personnel (each AIP, each repetition) | `participant`: actor the practitioner (by identifier), status from AIP-12 (`PARTICIPATION`; none: `accepted`) |
//! | AIL-3 location (each AIL), through the ward table | `participant`: actor the Location, status from AIL-12; a place the table does not know is error `AIL-3` |
//!
//! Not mapped: SCH-3–5, SCH-8 appointment type (table 0277: Normal/Tentative/Complete,
//! which FHIR has no element for), SCH-12–24 (placer and filler contacts), AIS-2 segment
//! actions, AIG (equipment: FHIR wants a Device reference), AIP-4/AIL-4 roles, the NTEs of
//! the resource groups, PV1 (an Appointment has no encounter), the other id when both
//! SCH-1 and SCH-2 are sent. The triggers other than S12–S15 are refused (`MSH-9`).

use super::{
    codeable_concept, codeable_concept_in, date_time, field_error, full_url, identifier_query, location_of, lookup, notes_after, part, practitioner_reference, put, repetitions, segment_label, value, Context, Entry, FieldError, Method,
};
use crate::message::{Message, Segment};
use crate::visit::Location;
use serde_json::{json, Map, Value};

/// The triggers mapped, and the status each imposes (`None`: from SCH-25).
pub const TRIGGERS: &[(&str, Option<&str>)] = &[("S12", None), ("S13", None), ("S14", None), ("S15", Some("cancelled"))];

/// SCH-25 filler status codes (HL7 table 0278) to `Appointment.status`.
pub const FILLER_STATUS: &[(&str, &str)] = &[
    ("Booked", "booked"),
    ("Overbook", "booked"),
    ("Started", "arrived"),
    ("Complete", "fulfilled"),
    ("Cancelled", "cancelled"),
    ("Dc", "cancelled"),
    ("Noshow", "noshow"),
    ("Pending", "pending"),
    ("Waitlist", "waitlist"),
    ("Deleted", "entered-in-error"),
];

/// AIP-12/AIL-12 filler status codes (table 0278) to `participant.status`.
pub const PARTICIPATION: &[(&str, &str)] = &[
    ("Booked", "accepted"),
    ("Overbook", "accepted"),
    ("Started", "accepted"),
    ("Complete", "accepted"),
    ("Pending", "tentative"),
    ("Waitlist", "needs-action"),
    ("Cancelled", "declined"),
    ("Dc", "declined"),
    ("Deleted", "declined"),
    ("Noshow", "declined"),
    ("Blocked", "declined"),
];

/// SCH-7 codes that are `appointmentType`s (table 0276, the FHIR binding).
pub const APPOINTMENT_REASONS: &[&str] = &["CHECKUP", "EMERGENCY", "FOLLOWUP", "ROUTINE", "WALKIN"];

/// Units of a duration (SCH-10, AIS-8) and their seconds.
pub const TIME_UNITS: &[(&str, i64)] = &[
    ("s", 1),
    ("sec", 1),
    ("second", 1),
    ("seconds", 1),
    ("min", 60),
    ("minute", 60),
    ("minutes", 60),
    ("h", 3600),
    ("hr", 3600),
    ("hour", 3600),
    ("hours", 3600),
    ("d", 86400),
    ("day", 86400),
    ("days", 86400),
];

const APPOINTMENT_REASON_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0276";
const IDENTIFIER_TYPE_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v2-0203";

/// The Appointment of an SIU message; `trigger` is MSH-9.2 (`S12`…`S15`). See the module
/// documentation for the mapping.
pub fn siu(msg: &Message, ctx: &Context, trigger: &str) -> Result<Vec<Entry>, FieldError> {
    let trigger = trigger.trim().to_ascii_uppercase();
    let forced = TRIGGERS.iter().find(|(t, _)| *t == trigger).ok_or_else(|| field_error("MSH-9", format!("SIU^{trigger} is not mapped (S12, S13, S14 and S15 are)")))?.1;
    let (sch_index, sch) = msg.segments().iter().enumerate().find(|(_, s)| s.name() == "SCH").ok_or_else(|| field_error("SCH", "the message has no SCH segment"))?;

    let s = ctx.systems;
    let keys = [(2, "FILL", &s.appointment), (1, "PLAC", &s.appointment), (27, "FILL", &s.filler_order), (26, "PLAC", &s.placer_order)];
    let (id_type, system, id) = keys
        .iter()
        .find_map(|(f, t, system)| value(sch, *f, 1).map(|v| (*t, system.as_str(), v)))
        .ok_or_else(|| field_error("SCH-2", "the appointment has no id: no filler (SCH-2) or placer (SCH-1) appointment id, nor an order number (SCH-27, SCH-26)"))?;

    let status = match (forced, value(sch, 25, 1)) {
        (Some(s), _) => s,
        (None, Some(code)) => lookup(FILLER_STATUS, &code).ok_or_else(|| field_error("SCH-25", format!("'{code}' is not a filler status code (table 0278)")))?,
        (None, None) => "booked",
    };

    let mut a = Map::new();
    a.insert("resourceType".into(), json!("Appointment"));
    a.insert("identifier".into(), json!([{"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": id_type}]}, "system": system, "value": id}]));
    a.insert("status".into(), json!(status));

    // What and why.
    let services: Vec<&Segment> = msg.segments_named("AIS").collect();
    let mut service_types: Vec<Value> = Vec::new();
    for rep in services.iter().flat_map(|ais| repetitions(ais, 3)) {
        if let Some(cc) = codeable_concept(rep) {
            if !service_types.contains(&cc) {
                service_types.push(cc);
            }
        }
    }
    put(&mut a, "serviceType", Some(Value::Array(service_types)));
    if let Some(reason) = repetitions(sch, 7).first() {
        let code = part(reason, 1, 1).unwrap_or_default();
        if APPOINTMENT_REASONS.iter().any(|c| c.eq_ignore_ascii_case(&code)) {
            put(&mut a, "appointmentType", codeable_concept_in(reason, APPOINTMENT_REASON_SYSTEM, APPOINTMENT_REASONS));
        } else {
            put(&mut a, "reasonCode", codeable_concept(reason).map(|cc| json!([cc])));
        }
    }
    let description = services.iter().find_map(|ais| repetitions(ais, 3).first().and_then(|r| part(r, 2, 1)));
    let description = description.or_else(|| repetitions(sch, 6).first().and_then(|r| part(r, 2, 1).or_else(|| part(r, 1, 1))));
    put(&mut a, "description", description.map(Value::from));

    // When.
    match times(msg, sch)? {
        Some((start, end, minutes)) => {
            a.insert("start".into(), json!(start));
            a.insert("end".into(), json!(end));
            if minutes > 0 {
                a.insert("minutesDuration".into(), json!(minutes));
            }
        }
        None if !matches!(status, "proposed" | "cancelled" | "waitlist") => {
            return Err(field_error("SCH-11", format!("a {status} appointment has no start and end time (TQ1-7/8, SCH-11.4/5 or AIS-4 with a duration)")));
        }
        None => {}
    }

    let based_on: Vec<Value> = [(26, &s.placer_order), (27, &s.filler_order)]
        .iter()
        .filter_map(|(f, system)| value(sch, *f, 1).map(|v| json!({"type": "ServiceRequest", "identifier": {"system": system, "value": v}})))
        .collect();
    put(&mut a, "basedOn", Some(Value::Array(based_on)));
    let after_timing = msg.segments().iter().skip(sch_index + 1).take_while(|s| s.name() == "TQ1").count();
    put(&mut a, "comment", notes_after(msg, sch_index + after_timing).map(Value::from));

    // Who and where.
    let mut participants = vec![json!({"actor": {"type": "Patient", "reference": ctx.patient}, "status": "accepted"})];
    let mut add = |p: Value| {
        if !participants.iter().any(|q| q["actor"] == p["actor"]) {
            participants.push(p);
        }
    };
    for (n, aip) in msg.segments_named("AIP").enumerate() {
        let label = segment_label(msg, "AIP", n + 1);
        let status = participation(aip, &label)?;
        for rep in repetitions(aip, 3) {
            if let Some(actor) = practitioner_reference(rep, ctx.systems) {
                add(json!({"actor": actor, "status": status}));
            }
        }
    }
    for (n, ail) in msg.segments_named("AIL").enumerate() {
        let label = segment_label(msg, "AIL", n + 1);
        let status = participation(ail, &label)?;
        for loc in repetitions(ail, 3).iter().filter_map(location_of) {
            let reference = (ctx.location)(&loc).ok_or_else(|| field_error(format!("{label}-3"), format!("unknown location {}: the ward table does not have it", describe(&loc))))?;
            add(json!({"actor": {"type": "Location", "reference": reference}, "status": status}));
        }
    }
    a.insert("participant".into(), Value::Array(participants));

    Ok(vec![Entry { full_url: full_url("Appointment", 1), method: Method::Upsert(identifier_query(system, &id)), resource: Value::Object(a) }])
}

/// A resource's participation status from its filler status (field 12 of AIP and AIL).
fn participation(seg: &Segment, label: &str) -> Result<&'static str, FieldError> {
    match value(seg, 12, 1) {
        None => Ok("accepted"),
        Some(code) => lookup(PARTICIPATION, &code).ok_or_else(|| field_error(format!("{label}-12"), format!("'{code}' is not a filler status code (table 0278)"))),
    }
}

/// A PL as written: `055^Room01^^GH Clinic`.
fn describe(loc: &Location) -> String {
    let parts = [&loc.point_of_care, &loc.room, &loc.bed, &loc.facility].map(|p| p.clone().unwrap_or_default());
    parts.join("^").trim_end_matches('^').to_string()
}

/// One of the places a message gives the appointment's time: start (text, field), end
/// (text, field) and the duration (value, its field, units, their field).
type Source<'a> = (Option<String>, &'a str, Option<String>, &'a str, Option<(String, &'a str, Option<String>, &'a str)>);

/// The appointment's start, end and minutes: from the first of TQ1, SCH-11 and AIS that
/// gives a start; `None` when it gives no instant or neither an end nor a duration.
fn times(msg: &Message, sch: &Segment) -> Result<Option<(String, String, i64)>, FieldError> {
    let sch_duration = value(sch, 9, 1).map(|d| (d, "SCH-9", value(sch, 10, 1), "SCH-10"));
    let mut sources: Vec<Source> = Vec::new();
    if let Some(tq1) = msg.segment("TQ1") {
        sources.push((value(tq1, 7, 1), "TQ1-7", value(tq1, 8, 1), "TQ1-8", sch_duration.clone()));
    }
    sources.push((value(sch, 11, 4), "SCH-11", value(sch, 11, 5), "SCH-11", sch_duration));
    for ais in msg.segments_named("AIS") {
        sources.push((value(ais, 4, 1), "AIS-4", None, "AIS-4", value(ais, 7, 1).map(|d| (d, "AIS-7", value(ais, 8, 1), "AIS-8"))));
    }
    let Some((Some(start), start_field, end, end_field, duration)) = sources.into_iter().find(|s| s.0.is_some()) else {
        return Ok(None);
    };
    let start = date_time(&start, start_field)?;
    let Some(from) = Instant::parse(&start) else { return Ok(None) };
    let end = match (end, duration) {
        (Some(end), _) => date_time(&end, end_field)?,
        (None, Some((amount, amount_field, units, units_field))) => {
            let n: f64 = amount.parse().ok().filter(|n: &f64| n.is_finite() && *n >= 0.0 && *n < 1e9).ok_or_else(|| field_error(amount_field, format!("'{amount}' is not a duration")))?;
            let unit = match units {
                Some(u) => TIME_UNITS.iter().find(|(name, _)| name.eq_ignore_ascii_case(&u)).map(|(_, s)| *s).ok_or_else(|| field_error(units_field, format!("'{u}' is not a unit of time (s, min, h, d)")))?,
                None => 60,
            };
            from.plus((n * unit as f64).round() as i64).ok_or_else(|| field_error(amount_field, format!("a duration of {amount} ends after the year 9999")))?
        }
        (None, None) => return Ok(None),
    };
    let Some(to) = Instant::parse(&end) else { return Ok(None) };
    let seconds = to.utc() - from.utc();
    if seconds < 0 {
        return Err(field_error(end_field, format!("the appointment ends ({end}) before it starts ({start})")));
    }
    Ok(Some((start, end, seconds / 60)))
}

/// A FHIR instant as written by [`date_time`]: `2021-09-24T09:30:00+02:15`.
struct Instant {
    /// Seconds of the local time from 1970-01-01T00:00:00.
    local: i64,
    /// `.655`, or empty.
    fraction: String,
    /// The offset as written (`+02:15`) and in seconds.
    offset: String,
    offset_seconds: i64,
}

impl Instant {
    fn parse(s: &str) -> Option<Instant> {
        let (date, rest) = s.split_once('T')?;
        let num = |t: &str| t.parse::<i64>().ok();
        let mut d = date.split('-');
        let (y, m, day) = (num(d.next()?)?, num(d.next()?)?, num(d.next()?)?);
        let at = rest.find(['+', '-', 'Z'])?;
        let (clock, offset) = rest.split_at(at);
        let (hms, fraction) = match clock.split_once('.') {
            Some((hms, f)) => (hms, format!(".{f}")),
            None => (clock, String::new()),
        };
        let mut t = hms.split(':');
        let (h, mi, sec) = (num(t.next()?)?, num(t.next()?)?, num(t.next()?)?);
        let offset_seconds = match offset {
            "Z" => 0,
            o => {
                let (oh, om) = o.get(1..)?.split_once(':')?;
                let v = num(oh)? * 3600 + num(om)? * 60;
                if o.starts_with('-') { -v } else { v }
            }
        };
        let local = days_from_civil(y, m, day) * 86400 + h * 3600 + mi * 60 + sec;
        Some(Instant { local, fraction, offset: offset.to_string(), offset_seconds })
    }

    fn utc(&self) -> i64 {
        self.local - self.offset_seconds
    }

    /// This instant `seconds` later, written with the same offset; `None` after 9999.
    fn plus(&self, seconds: i64) -> Option<String> {
        let t = self.local.checked_add(seconds)?;
        let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
        let (y, m, d) = civil_from_days(days);
        if !(1..=9999).contains(&y) {
            return None;
        }
        Some(format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}{}{}", secs / 3600, secs % 3600 / 60, secs % 60, self.fraction, self.offset))
    }
}

/// Days from 1970-01-01 of a Gregorian date (Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

/// The Gregorian date of a day from 1970-01-01.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { yoe + era * 400 + 1 } else { yoe + era * 400 }, m, d)
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{assert_clean, sample, with_context, with_locations};
    use super::*;
    use proptest::prelude::*;

    const SAMPLES: &[(&str, &str)] = &[("SIU-S12-01.hl7", "S12"), ("SIU-S12_1.hl7", "S12"), ("SIU_12.hl7", "S12"), ("SIU-S13-01.hl7", "S13"), ("SIU-S14-01.hl7", "S14"), ("SIU-S15-01.hl7", "S15")];

    fn map(text: &str, trigger: &str) -> Result<Vec<Entry>, FieldError> {
        let msg = Message::parse(text).unwrap();
        with_context(|ctx| siu(&msg, ctx, trigger))
    }

    #[test]
    fn every_sample_maps() {
        for (name, trigger) in SAMPLES {
            let Some(msgs) = sample(name) else { continue };
            let first = with_context(|ctx| siu(&msgs[0], ctx, trigger)).unwrap_or_else(|e| panic!("{name}: {e}"));
            for msg in &msgs {
                let entries = with_context(|ctx| siu(msg, ctx, trigger)).unwrap_or_else(|e| panic!("{name}: {e}"));
                assert_eq!(entries, first, "{name}: the segment endings change the mapping");
                assert_clean(&entries);
                assert_eq!(entries.len(), 1);
                assert_eq!(entries[0].resource["resourceType"], "Appointment");
            }
        }
    }

    #[test]
    fn s12_field_by_field() {
        let Some(msgs) = sample("SIU-S12-01.hl7") else { return };
        let entries = with_context(|ctx| siu(&msgs[0], ctx, "S12")).unwrap();
        let e = &entries[0];
        assert_eq!(e.method, Method::Upsert("identifier=https://tessera.health/Id/rx1/appointment|36996".into()));
        let prac = |id: &str, display: &str| json!({"type": "Practitioner", "identifier": {"system": "https://tessera.health/Id/rx1/practitioner", "value": id}, "display": display});
        let expected = json!({
            "resourceType": "Appointment",
            "identifier": [{"type": {"coding": [{"system": IDENTIFIER_TYPE_SYSTEM, "code": "FILL"}]}, "system": "https://tessera.health/Id/rx1/appointment", "value": "36996"}],
            "status": "booked",
            "serviceType": [{"coding": [
                {"system": "http://snomed.info/sct", "code": "76164006", "display": "Biopsy of colon (procedure)"},
                {"code": "1212", "display": "Biopsy"}
            ], "text": "Biopsy of colon (procedure)"}],
            "appointmentType": {"coding": [{"system": APPOINTMENT_REASON_SYSTEM, "code": "EMERGENCY"}]},
            "description": "Biopsy of colon (procedure)",
            "start": "2021-09-24T09:30:00+02:15",
            "end": "2021-09-24T10:20:00+02:15",
            "minutesDuration": 50,
            "comment": "Appointment booked for emergency procedure",
            "participant": [
                {"actor": {"type": "Patient", "reference": "urn:uuid:p"}, "status": "accepted"},
                {"actor": prac("1210", "Robert GE"), "status": "accepted"},
                {"actor": {"type": "Location", "reference": "Location/w"}, "status": "accepted"}
            ]
        });
        assert_eq!(e.resource, expected, "{}", serde_json::to_string_pretty(&e.resource).unwrap());
    }

    #[test]
    fn other_samples() {
        let get = |name: &str, trigger: &str| sample(name).map(|m| with_context(|ctx| siu(&m[0], ctx, trigger)).unwrap().remove(0).resource);
        if let Some(r) = get("SIU-S15-01.hl7", "S15") {
            assert_eq!(r["status"], "cancelled");
            assert_eq!(r["participant"][1]["status"], "declined");
            assert_eq!(r["comment"], Value::Null, "the sample's text is in NTE-2, not NTE-3");
        }
        if let Some(r) = get("SIU-S12_1.hl7", "S12") {
            // TQ1-7/8 (2020-10-04 to 2020-10-08) before SCH-11.4/5 (2020-10-01 to 2020-10-09).
            assert_eq!(r["start"], "2020-10-04T11:26:00+02:15");
            assert_eq!(r["serviceType"].as_array().unwrap().len(), 3);
            assert_eq!(r["participant"].as_array().unwrap().len(), 5, "patient, three practitioners, one ward (all Location/w)");
        }
        if let Some(r) = get("SIU_12.hl7", "S12") {
            // No appointment id: the order number; no TQ1 or SCH-11: AIS-4 (UK summer time) + 50 minutes.
            assert_eq!(r["identifier"][0]["system"], "https://tessera.health/Id/rx1/filler-order");
            assert_eq!(r["identifier"][0]["value"], "123-1");
            assert_eq!(r["start"], "2021-09-24T09:30:00+01:00");
            assert_eq!(r["end"], "2021-09-24T10:20:00+01:00");
            assert_eq!(r["basedOn"].as_array().unwrap().len(), 2);
        }
    }

    const MINIMAL: &str = "MSH|^~\\&|S|F|||20240101||SIU^S12|1|P|2.5\rSCH|P1|F1|||||ROUTINE||30|min|^^^202401151000||||||||||||||Pending\rNTE|1||line one~line two\rPID|1||42\rRGS|1\rAIS|1||X1^Clinic visit\rAIL|1||W1^R2\rAIP|1||D1^WHO^DOC|||||||||Pending";

    #[test]
    fn duration_status_and_reason() {
        let r = map(MINIMAL, "S12").unwrap().remove(0).resource;
        assert_eq!(r["start"], "2024-01-15T10:00:00+00:00");
        assert_eq!(r["end"], "2024-01-15T10:30:00+00:00");
        assert_eq!(r["minutesDuration"], 30);
        assert_eq!(r["status"], "pending");
        assert_eq!(r["appointmentType"]["coding"][0]["code"], "ROUTINE");
        assert_eq!(r["comment"], "line one\nline two");
        assert_eq!(r["participant"][1]["status"], "tentative");
        assert_eq!(r["identifier"][0]["value"], "F1");
        let r = map(&MINIMAL.replace("ROUTINE", "Back pain"), "S14").unwrap().remove(0).resource;
        assert_eq!(r["reasonCode"], json!([{"coding": [{"code": "Back pain"}]}]));
        assert_eq!(map(MINIMAL, "S15").unwrap()[0].resource["status"], "cancelled");
        // The end crosses midnight and a month.
        let r = map(&MINIMAL.replace("^^^202401151000", "^^^202401312350"), "S12").unwrap().remove(0).resource;
        assert_eq!(r["end"], "2024-02-01T00:20:00+00:00");
    }

    #[test]
    fn errors() {
        let e = map(&MINIMAL.replace("SCH|P1|F1|", "SCH|||"), "S12").unwrap_err();
        assert_eq!(e.field, "SCH-2");
        let e = map(&MINIMAL.replace("^^^202401151000", ""), "S12").unwrap_err();
        assert_eq!((e.field.as_str(), e.problem.starts_with("a pending appointment has no start and end time")), ("SCH-11", true));
        let e = map(&MINIMAL.replace("^^^202401151000", "").replace("Pending\rNTE", "\rNTE"), "S12").unwrap_err();
        assert!(e.problem.starts_with("a booked appointment has no start and end time"), "{e}");
        assert!(map(&MINIMAL.replace("^^^202401151000", ""), "S15").is_ok(), "a cancelled appointment needs no times");
        assert_eq!(map(MINIMAL, "S16").unwrap_err().field, "MSH-9");
        assert_eq!(map(&MINIMAL.replace("|Pending\rNTE", "|Blocked\rNTE"), "S12").unwrap_err().field, "SCH-25");
        assert_eq!(map(&MINIMAL.replace("30|min", "30|fortnights"), "S12").unwrap_err().field, "SCH-10");
        assert_eq!(map(&MINIMAL.replace("30|min", "99999999|d"), "S12").unwrap_err().field, "SCH-9");
        assert_eq!(map(&MINIMAL.replace("^^^202401151000", "^^^2024011510xx"), "S12").unwrap_err().field, "SCH-11");
        let msg = Message::parse(MINIMAL).unwrap();
        let e = with_locations(&|_| None, |ctx| siu(&msg, ctx, "S12")).unwrap_err();
        assert_eq!(e.to_string(), "AIL-3: unknown location W1^R2: the ward table does not have it");
        let msg = Message::parse(&MINIMAL.replace("AIL|1||W1^R2", "AIL|1||")).unwrap();
        assert!(with_locations(&|_| None, |ctx| siu(&msg, ctx, "S12")).is_ok(), "an AIL naming no place needs no ward");
    }

    #[test]
    fn instants() {
        let i = Instant::parse("2024-03-31T00:30:00.5-05:00").unwrap();
        assert_eq!(i.plus(90 * 60).unwrap(), "2024-03-31T02:00:00.5-05:00");
        assert_eq!(Instant::parse("2000-02-28T23:00:00+00:00").unwrap().plus(3600).unwrap(), "2000-02-29T00:00:00+00:00");
        assert_eq!(Instant::parse("9999-12-31T23:00:00+00:00").unwrap().plus(3600), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(civil_from_days(days_from_civil(2100, 3, 1)), (2100, 3, 1));
        assert!(Instant::parse("2024-03-31").is_none());
    }

    proptest! {
        #[test]
        fn arbitrary_fields_never_panic(f in proptest::collection::vec("[ -~]{0,24}", 12), trigger in "S1[2-6]") {
            let text = format!(
                "MSH|^~\\&|S|F|||20240101||SIU^S12|1|P|2.5\rSCH|{}|{}||||{}|{}||{}|{}|{}|||||||||||||{}\rTQ1|||||||{}|{}\rNTE|1||{}\rRGS|1\rAIS|1||{}\rAIL|1||{}\rAIP|1||X^Y",
                f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7], f[8], f[9], f[10], f[11], f[2]
            );
            if let Ok(msg) = Message::parse(&text) {
                if let Ok(entries) = with_context(|ctx| siu(&msg, ctx, &trigger)) {
                    assert_clean(&entries);
                }
            }
        }
    }
}
