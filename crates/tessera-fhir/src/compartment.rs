//! Patient compartment membership (from the official Patient CompartmentDefinition).
//!
//! The shipped definitions resolve each compartment parameter of a resource type into
//! element paths (`Observation.subject`, `Appointment.participant.actor`, …). A resource
//! is in the compartment of every patient that a relative `Patient/{id}` reference along
//! one of those paths names; a Patient is in its own compartment (and, per the
//! definition, in those of the patients it links to).
//!
//! The primary compartment, the one used as the storage distribution key, is the first
//! patient found: a Patient's own id, else the first match in CompartmentDefinition
//! parameter order (e.g. `subject` before `performer` for an Observation).

use crate::definitions::patient_compartment_params;
use crate::reference::parse_relative;
use serde_json::Value;

/// The ids of the patients whose compartment `resource` belongs to, the primary one first
/// (the one used as the storage distribution key), without duplicates. Empty when it
/// belongs to none.
pub fn patient_compartments(resource: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let Some(ty) = resource.get("resourceType").and_then(Value::as_str) else {
        return out;
    };
    if ty == "Patient" {
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            out.push(id.to_string());
        }
    }
    for param in patient_compartment_params(ty) {
        for path in &param.paths {
            collect(resource, path, &mut out);
        }
    }
    out
}

/// Follows `path` from `value` (through arrays) and records the patients referenced there.
fn collect(value: &Value, path: &[String], out: &mut Vec<String>) {
    match value {
        Value::Array(items) => items.iter().for_each(|v| collect(v, path, out)),
        Value::Object(map) => match path.split_first() {
            Some((first, rest)) => {
                if let Some(child) = map.get(first.as_str()) {
                    collect(child, rest, out);
                }
            }
            None => {
                let reference = map.get("reference").and_then(Value::as_str);
                if let Some(("Patient", id)) = reference.and_then(parse_relative) {
                    if !out.iter().any(|seen| seen == id) {
                        out.push(id.to_string());
                    }
                }
            }
        },
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn observation_subject() {
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"}});
        assert_eq!(patient_compartments(&obs), ["p1"]);
    }

    #[test]
    fn primary_follows_parameter_order_and_dedupes() {
        let obs = json!({"resourceType": "Observation",
            "performer": [{"reference": "Patient/p2"}, {"reference": "Practitioner/x"}, {"reference": "Patient/p1"}],
            "subject": {"reference": "Patient/p1/_history/3"}});
        assert_eq!(patient_compartments(&obs), ["p1", "p2"]);
    }

    #[test]
    fn nested_paths_and_non_patient_targets() {
        let appt = json!({"resourceType": "Appointment", "status": "booked",
            "participant": [{"actor": {"reference": "Practitioner/d"}, "status": "accepted"},
                            {"actor": {"reference": "Patient/a"}, "status": "accepted"}]});
        assert_eq!(patient_compartments(&appt), ["a"]);
        let obs = json!({"resourceType": "Observation", "subject": {"reference": "Group/g"}});
        assert!(patient_compartments(&obs).is_empty());
    }

    #[test]
    fn patient_and_unrelated_types() {
        let patient = json!({"resourceType": "Patient", "id": "me",
            "link": [{"other": {"reference": "Patient/other"}, "type": "seealso"}]});
        assert_eq!(patient_compartments(&patient), ["me", "other"]);
        let practitioner = json!({"resourceType": "Practitioner", "id": "d"});
        assert!(patient_compartments(&practitioner).is_empty());
        assert!(patient_compartments(&json!({"no": "type"})).is_empty());
    }
}
