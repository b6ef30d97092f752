//! Any UTF-8 text as an inbound message: every mapping (ADT encounter, results, orders,
//! appointments, documents, pharmacy, immunisations) must return entries or a field error,
//! never panic, and never give a resource with an empty string, array or object.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tessera_hl7v2::map::{self, adt, Context, Systems};
use tessera_hl7v2::Message;

fn has_empty(v: &Value) -> bool {
    match v {
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a.is_empty() || a.iter().any(has_empty),
        Value::Object(o) => o.is_empty() || o.values().any(has_empty),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(msg) = Message::parse(text) else { return };
    let systems = Systems::for_organisation("rx1");
    let ward = |l: &tessera_hl7v2::visit::Location| l.point_of_care.as_ref().filter(|p| p.len() < 4).map(|_| "Location/w".to_string());
    let ctx = Context {
        systems: &systems,
        patient: "urn:uuid:00000000-0000-4000-8000-000000000001",
        encounter: Some("urn:uuid:00000000-0000-4000-8000-000000000002"),
        organisation: "Organization/rx1",
        location: &ward,
        require_order: data.len() % 2 == 0,
    };
    let results = [
        map::results::oru_r01(&msg, &ctx),
        map::orders::orm_o01(&msg, &ctx),
        map::orders::oml_o21(&msg, &ctx),
        map::scheduling::siu(&msg, &ctx, "S12"),
        map::scheduling::siu(&msg, &ctx, "S15"),
        map::documents::mdm_t02(&msg, &ctx),
        map::pharmacy::rde_o11(&msg, &ctx),
        map::immunisation::vxu_v04(&msg, &ctx),
    ];
    for entries in results.into_iter().flatten() {
        for e in entries {
            assert!(!has_empty(&e.resource), "{}", e.resource);
        }
    }
    for (_, event) in adt::EVENTS {
        if let Ok(Some(e)) = adt::encounter(&msg, &ctx, *event, None) {
            assert!(!has_empty(&e), "{e}");
        }
    }
});
