//! The visit a message is about, from PV1: kept as HL7 gives it, for the interfaces that
//! will map encounters.

use crate::message::{Message, Repetition};

/// Where a patient is (PL): PV1-3's components.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Location {
    /// PL.1, the point of care (ward or clinic).
    pub point_of_care: Option<String>,
    /// PL.2, the room.
    pub room: Option<String>,
    /// PL.3, the bed.
    pub bed: Option<String>,
    /// PL.4, the facility (its namespace id).
    pub facility: Option<String>,
}

/// A doctor (XCN): PV1-7's repetitions.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Doctor {
    /// XCN.1, the doctor's id.
    pub id: Option<String>,
    /// XCN.2, the family name.
    pub family: Option<String>,
    /// XCN.3, the given name.
    pub given: Option<String>,
    /// XCN.6, the prefix (`Dr`).
    pub prefix: Option<String>,
}

/// A visit, from PV1. Dates are the HL7 text (`20240102103000`); see
/// [`crate::datetime::Dtm`] to read them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Visit {
    /// PV1-2, the patient class (table 0004): `I` inpatient, `O` outpatient, `E` emergency, …
    pub patient_class: Option<String>,
    /// PV1-3, the assigned location.
    pub location: Option<Location>,
    /// PV1-7, the attending doctors.
    pub attending: Vec<Doctor>,
    /// PV1-19.1, the visit number.
    pub visit_number: Option<String>,
    /// PV1-44.1, when the patient was admitted.
    pub admitted: Option<String>,
    /// PV1-45.1 (first repetition), when the patient was discharged.
    pub discharged: Option<String>,
}

fn text(s: Option<&str>) -> Option<String> {
    let t = s?.trim();
    (!t.is_empty() && t != "\"\"").then(|| t.to_string())
}

fn part(rep: &Repetition, component: usize, sub: usize) -> Option<String> {
    text(rep.component(component).and_then(|c| c.subcomponent(sub)))
}

impl Visit {
    /// The visit of the message's first PV1; `None` when it has none.
    pub fn from_message(msg: &Message) -> Option<Visit> {
        let pv1 = msg.segment("PV1")?;
        let location = pv1.field(3).and_then(|f| f.repetition(1)).map(|r| Location {
            point_of_care: part(r, 1, 1),
            room: part(r, 2, 1),
            bed: part(r, 3, 1),
            facility: part(r, 4, 1),
        });
        let attending = pv1
            .field(7)
            .map(|f| f.repetitions())
            .unwrap_or_default()
            .iter()
            .map(|r| Doctor { id: part(r, 1, 1), family: part(r, 2, 1), given: part(r, 3, 1), prefix: part(r, 6, 1) })
            .filter(|d| *d != Doctor::default())
            .collect();
        Some(Visit {
            patient_class: text(pv1.value(2)),
            location: location.filter(|l| *l != Location::default()),
            attending,
            visit_number: text(pv1.value(19)),
            admitted: text(pv1.value(44)),
            discharged: text(pv1.value(45)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pv1() {
        let msg = Message::parse(concat!(
            "MSH|^~\\&|PAS|RXX|||20240101||ADT^A01|1|P|2.4\r",
            "PV1|1|I|WARD7^12^B^RXX&1.2&ISO||||C123^JONES^ANN^^^DR~C456^LEE||||||||||||V0001|||||||||||||||||||||||||20240102103000|20240105\r"
        ))
        .unwrap();
        let v = Visit::from_message(&msg).unwrap();
        assert_eq!(v.patient_class.as_deref(), Some("I"));
        assert_eq!(v.location, Some(Location { point_of_care: Some("WARD7".into()), room: Some("12".into()), bed: Some("B".into()), facility: Some("RXX".into()) }));
        assert_eq!(v.attending.len(), 2);
        assert_eq!(v.attending[0], Doctor { id: Some("C123".into()), family: Some("JONES".into()), given: Some("ANN".into()), prefix: Some("DR".into()) });
        assert_eq!(v.visit_number.as_deref(), Some("V0001"));
        assert_eq!(v.admitted.as_deref(), Some("20240102103000"));
        assert_eq!(v.discharged.as_deref(), Some("20240105"));
        assert!(Visit::from_message(&Message::parse("MSH|^~\\&").unwrap()).is_none());
        let empty = Visit::from_message(&Message::parse("MSH|^~\\&\rPV1|1").unwrap()).unwrap();
        assert_eq!(empty, Visit::default());
    }
}
