//! Property tests: every form and query the web application reads — any bytes — is answered
//! with a value or the problems to show, never a panic; and what is accepted is what the
//! record can hold.

use proptest::prelude::*;
use std::collections::HashMap;

fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[0-9 ./-]{0,16}", "[A-Za-z ,'-]{0,24}"]
}

proptest! {
    #[test]
    fn form_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let f = crate::form(&body);
        let _ = crate::safe_next(f.get("next").map(String::as_str), "/");
    }

    #[test]
    fn a_local_next_never_leaves_the_site(next in any::<String>()) {
        let n = crate::safe_next(Some(&next), "/");
        prop_assert!(n.starts_with('/') && !n.starts_with("//") && !n.contains('\\'));
    }

    #[test]
    fn dates_of_birth_are_valid_or_refused(s in any_text()) {
        if let Some(d) = crate::patients::parse_birth_date(&s) {
            prop_assert_eq!(d.len(), 10);
            prop_assert!(d.as_bytes()[4] == b'-' && d.as_bytes()[7] == b'-');
        }
    }

    #[test]
    fn vital_signs_are_scored_or_refused(rr in any_text(), spo2 in any_text(), sbp in any_text(), pulse in any_text(), temp in any_text(), acvpu in any_text(), oxygen in any_text()) {
        let values: HashMap<String, String> = [("rr", rr), ("spo2", spo2), ("sbp", sbp), ("pulse", pulse), ("temp", temp), ("acvpu", acvpu), ("oxygen", oxygen)]
            .into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        match crate::write::parse_vitals(&values) {
            Ok(v) => {
                let score = crate::news2::score(&v);
                prop_assert!(score.total <= 20);
                prop_assert!(crate::news2::check(&v).is_empty());
            }
            Err(problems) => prop_assert!(!problems.is_empty()),
        }
    }

    #[test]
    fn allergies_are_built_or_refused(substance in any_text(), other in any_text(), reaction in any_text(), criticality in any_text()) {
        let f: HashMap<String, String> = [("substance", substance), ("other", other), ("reaction", reaction), ("criticality", criticality)]
            .into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Ok(a) = crate::write::allergy_for(&f, "p", "Practitioner/u") {
            prop_assert_eq!(a["resourceType"].as_str(), Some("AllergyIntolerance"));
            prop_assert!(a["code"].is_object());
        }
    }

    #[test]
    fn view_helpers_never_panic(s in any::<String>()) {
        let _ = crate::view::date(&s);
        let _ = crate::view::format_nhs(&s);
        let _ = crate::view::age(&s, "2026-12-07");
        let _ = crate::view::age("1980-01-01", &s);
    }
}
