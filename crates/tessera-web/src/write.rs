//! Writing to the record: vital signs (with NEWS2 computed and stored), an allergy, a
//! free-text clinical note. Each is validated here for people (what to fix, field by field),
//! then written through the engine as the user — validated again, owned by the user's
//! organisation, refused with a readable message when the role may not write. A set of
//! vital signs is one transaction: all of it or nothing.

use crate::layout;
use crate::news2::{self, Consciousness, Vitals};
use crate::record::{self, message, record_page};
use crate::session::{self, Clinician, Signed};
use crate::view::{self, enc};
use crate::{form, see_other, WebState};
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine as _;
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use maud::{html, Markup};
use serde_json::{json, Value};
use std::collections::HashMap;

const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const UCUM: &str = "http://unitsofmeasure.org";
/// SNOMED CT: Royal College of Physicians NEWS2 (National Early Warning Score 2) total score.
pub const NEWS2_CODE: &str = "1104051000000101";

fn checked(s: &Signed, parts: &Parts, f: &HashMap<String, String>) -> bool {
    session::check_csrf(s, f.get("csrf").map(String::as_str)) && session::same_origin(&parts.headers)
}

fn expired(state: &WebState, s: &Signed) -> Response {
    crate::signin::refused(state, s, StatusCode::FORBIDDEN, "Form expired", "The form has expired; reload the page and try again.")
}

fn field(label: &str, name: &str, value: &str, hint: Option<&str>, error: Option<&String>, width: &str) -> Markup {
    html! {
        div class=(if error.is_some() { "nhsuk-form-group nhsuk-form-group--error" } else { "nhsuk-form-group" }) {
            label class="nhsuk-label" for=(name) { (label) }
            @if let Some(h) = hint { div class="nhsuk-hint" id=(format!("{name}-hint")) { (h) } }
            @if let Some(e) = error { span class="nhsuk-error-message" id=(format!("{name}-error")) { span class="nhsuk-u-visually-hidden" { "Error: " } (e) } }
            input class=(format!("nhsuk-input {width}{}", if error.is_some() { " nhsuk-input--error" } else { "" })) id=(name) name=(name) type="text" inputmode="decimal" value=(value)
                aria-describedby=[hint.map(|_| format!("{name}-hint"))];
        }
    }
}

// ---------------------------------------------------------------- vital signs and NEWS2

/// The vital-signs form's values, as typed.
#[derive(Default)]
struct VitalsForm {
    values: HashMap<String, String>,
}

impl VitalsForm {
    fn get(&self, k: &str) -> &str {
        self.values.get(k).map(String::as_str).unwrap_or("")
    }

    /// The vitals, or the problems by field.
    fn parse(&self) -> Result<Vitals, Vec<(String, String)>> {
        let mut problems = Vec::new();
        let mut num = |k: &str, label: &str| -> Option<f64> {
            let v = self.get(k).trim();
            if v.is_empty() {
                return None;
            }
            match v.parse::<f64>() {
                Ok(n) if n.is_finite() => Some(n),
                _ => {
                    problems.push((k.to_string(), format!("{label} must be a number")));
                    None
                }
            }
        };
        let mut v = Vitals {
            respiratory_rate: num("rr", "Respiration rate"),
            spo2: num("spo2", "Oxygen saturation"),
            systolic: num("sbp", "Systolic blood pressure"),
            pulse: num("pulse", "Pulse"),
            temperature: num("temp", "Temperature"),
            hypercapnic: self.get("scale2") == "yes",
            on_oxygen: self.get("oxygen") == "oxygen",
            consciousness: None,
        };
        let _diastolic = num("dbp", "Diastolic blood pressure");
        v.consciousness = match self.get("acvpu") {
            "" => None,
            code => match Consciousness::parse(code) {
                Some(c) => Some(c),
                None => {
                    problems.push(("acvpu".into(), "Choose the level of consciousness (ACVPU)".into()));
                    None
                }
            },
        };
        for p in news2::check(&v) {
            let key = if p.contains("espiration") {
                "rr"
            } else if p.contains("SpO2") || p.contains("saturation") {
                "spo2"
            } else if p.contains("ystolic") {
                "sbp"
            } else if p.contains("ulse") {
                "pulse"
            } else {
                "temp"
            };
            problems.push((key.to_string(), p));
        }
        let present = [v.respiratory_rate, v.spo2, v.systolic, v.pulse, v.temperature].iter().filter(|x| x.is_some()).count() + usize::from(v.consciousness.is_some());
        if present == 0 && problems.is_empty() {
            problems.push(("rr".into(), "Enter at least one observation".into()));
        }
        if problems.is_empty() {
            Ok(v)
        } else {
            Err(problems)
        }
    }
}

fn vitals_form_markup(s: &Signed, id: &str, f: &VitalsForm, problems: &[(String, String)]) -> Markup {
    let err = |k: &str| problems.iter().find(|(f, _)| f == k).map(|(_, m)| m);
    let all: Vec<String> = problems.iter().map(|(_, m)| m.clone()).collect();
    html! {
        (layout::error_summary(&all))
        h2 { "Record vital signs" }
        form method="post" action=(format!("/patients/{id}/vitals")) novalidate {
            input type="hidden" name="csrf" value=(s.csrf);
            div class="tessera-form-columns" {
                (field("Respiration rate (breaths per minute)", "rr", f.get("rr"), None, err("rr"), "nhsuk-input--width-4"))
                (field("Oxygen saturation SpO2 (%)", "spo2", f.get("spo2"), None, err("spo2"), "nhsuk-input--width-4"))
                div class="nhsuk-form-group" {
                    div class="nhsuk-checkboxes" {
                        div class="nhsuk-checkboxes__item" {
                            input class="nhsuk-checkboxes__input" id="scale2" name="scale2" type="checkbox" value="yes" checked[f.get("scale2") == "yes"];
                            label class="nhsuk-label nhsuk-checkboxes__label" for="scale2" { "Use SpO2 Scale 2 (hypercapnic respiratory failure, target 88–92%)" }
                        }
                    }
                }
                div class="nhsuk-form-group" {
                    fieldset class="nhsuk-fieldset" {
                        legend class="nhsuk-fieldset__legend" { "Air or oxygen" }
                        div class="nhsuk-radios nhsuk-radios--inline" {
                            div class="nhsuk-radios__item" { input class="nhsuk-radios__input" id="oxygen-air" name="oxygen" type="radio" value="air" checked[f.get("oxygen") != "oxygen"]; label class="nhsuk-label nhsuk-radios__label" for="oxygen-air" { "Air" } }
                            div class="nhsuk-radios__item" { input class="nhsuk-radios__input" id="oxygen-o2" name="oxygen" type="radio" value="oxygen" checked[f.get("oxygen") == "oxygen"]; label class="nhsuk-label nhsuk-radios__label" for="oxygen-o2" { "Oxygen" } }
                        }
                    }
                }
                (field("Systolic blood pressure (mmHg)", "sbp", f.get("sbp"), None, err("sbp"), "nhsuk-input--width-4"))
                (field("Diastolic blood pressure (mmHg)", "dbp", f.get("dbp"), Some("Not part of NEWS2"), err("dbp"), "nhsuk-input--width-4"))
                (field("Pulse (beats per minute)", "pulse", f.get("pulse"), None, err("pulse"), "nhsuk-input--width-4"))
                div class=(if err("acvpu").is_some() { "nhsuk-form-group nhsuk-form-group--error" } else { "nhsuk-form-group" }) {
                    fieldset class="nhsuk-fieldset" {
                        legend class="nhsuk-fieldset__legend" { "Consciousness (ACVPU)" }
                        @if let Some(e) = err("acvpu") { span class="nhsuk-error-message" { (e) } }
                        div class="nhsuk-radios" {
                            @for (code, label) in [("A", "Alert"), ("C", "New confusion"), ("V", "Responds to voice"), ("P", "Responds to pain"), ("U", "Unresponsive")] {
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id=(format!("acvpu-{code}")) name="acvpu" type="radio" value=(code) checked[f.get("acvpu") == code];
                                    label class="nhsuk-label nhsuk-radios__label" for=(format!("acvpu-{code}")) { (label) }
                                }
                            }
                        }
                    }
                }
                (field("Temperature (°C)", "temp", f.get("temp"), None, err("temp"), "nhsuk-input--width-4"))
            }
            button class="nhsuk-button" type="submit" { "Save vital signs" }
        }
    }
}

/// The latest vital-sign sets (NEWS2 observations with their members' values).
async fn recent_news(state: &WebState, s: &Signed, id: &str) -> Markup {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let found = view::Found::from(view::search(engine, &s.access, "Observation", &format!("patient={}&code={SNOMED}|{NEWS2_CODE}&_count=10&_sort=-date", enc(id))).await);
    html! {
        @if !found.resources.is_empty() {
            h2 { "Recent NEWS2 scores" }
            table class="nhsuk-table" data-section="news2" {
                caption class="nhsuk-u-visually-hidden" { "Recent NEWS2 scores" }
                thead { tr { th scope="col" { "Taken" } th scope="col" { "NEWS2" } th scope="col" { "Clinical risk" } th scope="col" { "Organisation" } } }
                tbody { @for o in &found.resources { tr {
                    td { (view::when(o).map(view::date).unwrap_or_default()) }
                    td data-news2-score { (view::observation_value(o)) }
                    td { (o.pointer("/interpretation/0/text").and_then(Value::as_str).unwrap_or("")) }
                    td { (view::owner(o, &domain)) }
                } } }
            }
        }
    }
}

/// `GET /patients/{id}/vitals`
pub async fn vitals_form(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match record::load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let recent = recent_news(&state, &s, &id).await;
    let body = html! { (vitals_form_markup(&s, &id, &VitalsForm::default(), &[])) (recent) };
    record_page(&state, &s, &r, "vitals", "Record vital signs", body)
}

fn quantity_obs(code: &str, display: &str, value: f64, unit: &str, ucum: &str, patient: &str, when: &str, performer: &str) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "performer": [{"reference": performer}],
        "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": ucum}
    })
}

/// The transaction of one set of vital signs: an Observation per measurement and the NEWS2
/// total, whose `hasMember` names them, with its parts as components.
fn vitals_bundle(v: &Vitals, diastolic: Option<f64>, score: &news2::Score, patient: &str, performer: &str) -> Value {
    let when = view::now_instant();
    let mut entries = Vec::new();
    let mut members = Vec::new();
    let mut add = |resource: Value| {
        let url = format!("urn:uuid:{}", uuid::Uuid::new_v4());
        members.push(json!({"reference": url}));
        entries.push(json!({"fullUrl": url, "resource": resource, "request": {"method": "POST", "url": "Observation"}}));
    };
    if let Some(x) = v.respiratory_rate {
        add(quantity_obs("9279-1", "Respiratory rate", x, "breaths/minute", "/min", patient, &when, performer));
    }
    if let Some(x) = v.spo2 {
        add(quantity_obs("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", x, "%", "%", patient, &when, performer));
    }
    if let Some(x) = v.pulse {
        add(quantity_obs("8867-4", "Heart rate", x, "beats/minute", "/min", patient, &when, performer));
    }
    if let Some(x) = v.temperature {
        add(quantity_obs("8310-5", "Body temperature", x, "°C", "Cel", patient, &when, performer));
    }
    if v.systolic.is_some() || diastolic.is_some() {
        let mut bp = json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"}], "text": "Blood pressure"},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": when,
            "performer": [{"reference": performer}],
            "component": []
        });
        let comps = bp["component"].as_array_mut().expect("array");
        if let Some(x) = v.systolic {
            comps.push(json!({"code": {"coding": [{"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}]}, "valueQuantity": {"value": x, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}));
        }
        if let Some(x) = diastolic {
            comps.push(json!({"code": {"coding": [{"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}]}, "valueQuantity": {"value": x, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}}));
        }
        add(bp);
    }
    if let Some(c) = v.consciousness {
        add(json!({
            "resourceType": "Observation",
            "status": "final",
            "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
            "code": {"coding": [{"system": SNOMED, "code": "1104441000000107", "display": "ACVPU (Alert Confusion Voice Pain Unresponsive) scale score"}], "text": "Consciousness (ACVPU)"},
            "subject": {"reference": format!("Patient/{patient}")},
            "effectiveDateTime": when,
            "performer": [{"reference": performer}],
            "valueCodeableConcept": {"text": c.label()}
        }));
    }
    add(json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": SNOMED, "code": "371825009", "display": "Patient on oxygen"}], "text": "Air or oxygen"},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "performer": [{"reference": performer}],
        "valueBoolean": v.on_oxygen
    }));
    let components: Vec<Value> = score
        .parts
        .iter()
        .map(|(name, points)| json!({"code": {"text": name}, "valueInteger": points}))
        .collect();
    let mut news = json!({
        "resourceType": "Observation",
        "status": if score.complete { "final" } else { "preliminary" },
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "survey", "display": "Survey"}]}],
        "code": {"coding": [{"system": SNOMED, "code": NEWS2_CODE, "display": "Royal College of Physicians NEWS2 (National Early Warning Score 2) total score"}], "text": "NEWS2 score"},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": when,
        "performer": [{"reference": performer}],
        "valueInteger": score.total,
        "interpretation": [{"text": format!("{} clinical risk", score.risk.label())}],
        "hasMember": members.clone(),
        "component": components
    });
    if !score.complete {
        news["note"] = json!([{"text": format!("Incomplete: not measured: {}", score.missing.join(", "))}]);
    }
    entries.push(json!({"fullUrl": format!("urn:uuid:{}", uuid::Uuid::new_v4()), "resource": news, "request": {"method": "POST", "url": "Observation"}}));
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

/// `POST /patients/{id}/vitals`
pub async fn vitals_submit(State(state): State<WebState>, parts: Parts, Clinician(s): Clinician, Path(id): Path<String>, body: Bytes) -> Response {
    let f = VitalsForm { values: form(&body) };
    if !checked(&s, &parts, &f.values) {
        return expired(&state, &s);
    }
    let r = match record::load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let vitals = match f.parse() {
        Ok(v) => v,
        Err(problems) => {
            let body = vitals_form_markup(&s, &id, &f, &problems);
            return crate::html(StatusCode::BAD_REQUEST, crate::record::record_markup(&state, &s, &r, "vitals", "Record vital signs", body));
        }
    };
    let diastolic = f.get("dbp").trim().parse::<f64>().ok();
    let score = news2::score(&vitals);
    let bundle = vitals_bundle(&vitals, diastolic, &score, &id, &s.access.reference());
    match state.edge.engine().bundle(&s.access, bundle, None).await {
        Ok(_) => {
            let note = format!(
                "Vital signs recorded. NEWS2 score {} — {} clinical risk{}. {}",
                score.total,
                score.risk.label().to_lowercase(),
                if score.complete { String::new() } else { format!(" (incomplete: {} not measured)", score.missing.join(", ")) },
                score.risk.response()
            );
            state.sessions.notify(s.key(), note);
            see_other(&format!("/patients/{id}/vitals"))
        }
        Err(e) => {
            let body = html! { (vitals_form_markup(&s, &id, &f, &[("rr".into(), message(&e))])) };
            crate::html(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), crate::record::record_markup(&state, &s, &r, "vitals", "Record vital signs", body))
        }
    }
}

/// The vitals of a form's values, or the problems by field (for property tests).
#[cfg(test)]
pub(crate) fn parse_vitals(values: &HashMap<String, String>) -> Result<Vitals, Vec<(String, String)>> {
    VitalsForm { values: values.clone() }.parse()
}

/// [`allergy_resource`], for property tests.
#[cfg(test)]
pub(crate) fn allergy_for(f: &HashMap<String, String>, patient: &str, recorder: &str) -> Result<Value, Vec<(String, String)>> {
    allergy_resource(f, patient, recorder)
}

// ---------------------------------------------------------------- allergies

const COMMON_ALLERGENS: &[(&str, &str, &str)] = &[
    ("764146007", "Penicillin", "medication"),
    ("387207008", "Ibuprofen", "medication"),
    ("387458008", "Aspirin", "medication"),
    ("373270004", "Penicillin-class antibiotic", "medication"),
    ("111088007", "Latex", "environment"),
    ("256349002", "Peanut", "food"),
    ("102263004", "Eggs", "food"),
    ("3718001", "Cow's milk", "food"),
    ("227037002", "Fish", "food"),
    ("256259004", "Pollen", "environment"),
];

fn allergy_form_markup(s: &Signed, id: &str, f: &HashMap<String, String>, problems: &[(String, String)]) -> Markup {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let err = |k: &str| problems.iter().find(|(f, _)| f == k).map(|(_, m)| m);
    let all: Vec<String> = problems.iter().map(|(_, m)| m.clone()).collect();
    html! {
        (layout::error_summary(&all))
        h2 { "Record an allergy" }
        form method="post" action=(format!("/patients/{id}/allergies/new")) novalidate {
            input type="hidden" name="csrf" value=(s.csrf);
            div class=(if err("substance").is_some() { "nhsuk-form-group nhsuk-form-group--error" } else { "nhsuk-form-group" }) {
                label class="nhsuk-label" for="substance" { "Substance" }
                div class="nhsuk-hint" id="substance-hint" { "Choose a common allergen, or choose Other and describe it" }
                @if let Some(e) = err("substance") { span class="nhsuk-error-message" { (e) } }
                select class="nhsuk-select" id="substance" name="substance" aria-describedby="substance-hint" {
                    option value="" { "Choose" }
                    @for (code, label, _) in COMMON_ALLERGENS { option value=(code) selected[get("substance") == *code] { (label) } }
                    option value="other" selected[get("substance") == "other"] { "Other (describe below)" }
                    option value="nka" selected[get("substance") == "nka"] { "No known allergies" }
                }
            }
            div class=(if err("other").is_some() { "nhsuk-form-group nhsuk-form-group--error" } else { "nhsuk-form-group" }) {
                label class="nhsuk-label" for="other" { "Other substance" }
                @if let Some(e) = err("other") { span class="nhsuk-error-message" { (e) } }
                input class="nhsuk-input" id="other" name="other" type="text" value=(get("other"));
            }
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="reaction" { "Reaction" }
                input class="nhsuk-input" id="reaction" name="reaction" type="text" value=(get("reaction"));
            }
            div class="nhsuk-form-group" {
                fieldset class="nhsuk-fieldset" {
                    legend class="nhsuk-fieldset__legend" { "Criticality" }
                    div class="nhsuk-radios nhsuk-radios--inline" {
                        @for (v, label) in [("low", "Low"), ("high", "High"), ("unable-to-assess", "Unable to assess")] {
                            div class="nhsuk-radios__item" {
                                input class="nhsuk-radios__input" id=(format!("crit-{v}")) name="criticality" type="radio" value=(v) checked[get("criticality") == v || (get("criticality").is_empty() && v == "unable-to-assess")];
                                label class="nhsuk-label nhsuk-radios__label" for=(format!("crit-{v}")) { (label) }
                            }
                        }
                    }
                }
            }
            button class="nhsuk-button" type="submit" { "Save allergy" }
        }
    }
}

/// `GET /patients/{id}/allergies/new`
pub async fn allergy_form(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match record::load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    record_page(&state, &s, &r, "allergy", "Record an allergy", allergy_form_markup(&s, &id, &HashMap::new(), &[]))
}

fn allergy_resource(f: &HashMap<String, String>, patient: &str, recorder: &str) -> Result<Value, Vec<(String, String)>> {
    let get = |k: &str| f.get(k).map(|v| v.trim()).unwrap_or("");
    let (code, category) = match get("substance") {
        "" => return Err(vec![("substance".into(), "Choose the substance the patient is allergic to".into())]),
        "other" if get("other").is_empty() => return Err(vec![("other".into(), "Describe the substance".into())]),
        "other" => (json!({"text": get("other")}), None),
        "nka" => (json!({"coding": [{"system": SNOMED, "code": "716186003", "display": "No known allergy"}], "text": "No known allergies"}), None),
        code => match COMMON_ALLERGENS.iter().find(|(c, _, _)| *c == code) {
            Some((c, label, cat)) => (json!({"coding": [{"system": SNOMED, "code": c, "display": label}], "text": label}), Some(*cat)),
            None => return Err(vec![("substance".into(), "Choose a substance from the list".into())]),
        },
    };
    let criticality = match get("criticality") {
        "low" | "high" | "unable-to-assess" => get("criticality"),
        "" => "unable-to-assess",
        _ => return Err(vec![("criticality".into(), "Choose the criticality".into())]),
    };
    let mut a = json!({
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
        "code": code,
        "patient": {"reference": format!("Patient/{patient}")},
        "recordedDate": view::now_instant(),
        "recorder": {"reference": recorder}
    });
    if get("substance") != "nka" {
        a["criticality"] = json!(criticality);
        if let Some(c) = category {
            a["category"] = json!([c]);
        }
        if !get("reaction").is_empty() {
            a["reaction"] = json!([{"manifestation": [{"text": get("reaction")}]}]);
        }
    }
    Ok(a)
}

/// `POST /patients/{id}/allergies/new`
pub async fn allergy_submit(State(state): State<WebState>, parts: Parts, Clinician(s): Clinician, Path(id): Path<String>, body: Bytes) -> Response {
    let f = form(&body);
    if !checked(&s, &parts, &f) {
        return expired(&state, &s);
    }
    let r = match record::load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let resource = match allergy_resource(&f, &id, &s.access.reference()) {
        Ok(a) => a,
        Err(problems) => {
            return crate::html(StatusCode::BAD_REQUEST, crate::record::record_markup(&state, &s, &r, "allergy", "Record an allergy", allergy_form_markup(&s, &id, &f, &problems)));
        }
    };
    match state.edge.engine().create(&s.access, "AllergyIntolerance", resource, None).await {
        Ok(_) => {
            state.sessions.notify(s.key(), "Allergy recorded.");
            see_other(&format!("/patients/{id}"))
        }
        Err(e) => crate::html(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            crate::record::record_markup(&state, &s, &r, "allergy", "Record an allergy", allergy_form_markup(&s, &id, &f, &[("substance".into(), message(&e))])),
        ),
    }
}

// ---------------------------------------------------------------- notes

const MAX_NOTE: usize = 100_000;

fn note_form_markup(s: &Signed, id: &str, f: &HashMap<String, String>, problems: &[(String, String)]) -> Markup {
    let get = |k: &str| f.get(k).map(String::as_str).unwrap_or("");
    let err = |k: &str| problems.iter().find(|(f, _)| f == k).map(|(_, m)| m);
    let all: Vec<String> = problems.iter().map(|(_, m)| m.clone()).collect();
    html! {
        (layout::error_summary(&all))
        h2 { "Write a clinical note" }
        form method="post" action=(format!("/patients/{id}/notes/new")) novalidate {
            input type="hidden" name="csrf" value=(s.csrf);
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="kind" { "Type of note" }
                select class="nhsuk-select" id="kind" name="kind" {
                    @for (code, label) in NOTE_TYPES { option value=(code) selected[get("kind") == *code] { (label) } }
                }
            }
            div class=(if err("text").is_some() { "nhsuk-form-group nhsuk-form-group--error" } else { "nhsuk-form-group" }) {
                label class="nhsuk-label" for="text" { "Note" }
                @if let Some(e) = err("text") { span class="nhsuk-error-message" { (e) } }
                textarea class="nhsuk-textarea" id="text" name="text" rows="8" { (get("text")) }
            }
            button class="nhsuk-button" type="submit" { "Save note" }
        }
    }
}

/// LOINC document types offered for a note.
const NOTE_TYPES: &[(&str, &str)] = &[("11506-3", "Progress note"), ("34117-2", "History and physical note"), ("28570-0", "Procedure note"), ("18842-5", "Discharge summary")];

/// `GET /patients/{id}/notes/new`
pub async fn note_form(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match record::load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    record_page(&state, &s, &r, "note", "Write a note", note_form_markup(&s, &id, &HashMap::new(), &[]))
}

/// `POST /patients/{id}/notes/new`: a DocumentReference holding the note as `text/plain`.
pub async fn note_submit(State(state): State<WebState>, parts: Parts, Clinician(s): Clinician, Path(id): Path<String>, body: Bytes) -> Response {
    let f = form(&body);
    if !checked(&s, &parts, &f) {
        return expired(&state, &s);
    }
    let r = match record::load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let text = f.get("text").map(|t| t.trim()).unwrap_or("");
    let kind = NOTE_TYPES.iter().find(|(c, _)| Some(*c) == f.get("kind").map(String::as_str)).copied().unwrap_or(NOTE_TYPES[0]);
    let problem = if text.is_empty() {
        Some("Write the note")
    } else if text.len() > MAX_NOTE {
        Some("The note is too long (at most 100,000 characters)")
    } else {
        None
    };
    if let Some(p) = problem {
        return crate::html(StatusCode::BAD_REQUEST, crate::record::record_markup(&state, &s, &r, "note", "Write a note", note_form_markup(&s, &id, &f, &[("text".into(), p.into())])));
    }
    let doc = json!({
        "resourceType": "DocumentReference",
        "status": "current",
        "docStatus": "final",
        "type": {"coding": [{"system": LOINC, "code": kind.0, "display": kind.1}], "text": kind.1},
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category", "code": "clinical-note", "display": "Clinical Note"}]}],
        "subject": {"reference": format!("Patient/{id}")},
        "date": view::now_instant(),
        "author": [{"reference": s.access.reference(), "display": s.access.name}],
        "content": [{"attachment": {"contentType": "text/plain; charset=utf-8", "data": base64::engine::general_purpose::STANDARD.encode(text.as_bytes()), "title": kind.1}}]
    });
    match state.edge.engine().create(&s.access, "DocumentReference", doc, None).await {
        Ok(_) => {
            state.sessions.notify(s.key(), "Note saved.");
            see_other(&format!("/patients/{id}/documents"))
        }
        Err(e) => crate::html(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            crate::record::record_markup(&state, &s, &r, "note", "Write a note", note_form_markup(&s, &id, &f, &[("text".into(), message(&e))])),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vital_signs_set_is_one_transaction_with_the_score() {
        let v = Vitals { respiratory_rate: Some(22.0), spo2: Some(95.0), systolic: Some(105.0), pulse: Some(100.0), temperature: Some(38.5), consciousness: Some(Consciousness::Alert), ..Vitals::default() };
        let score = news2::score(&v);
        let b = vitals_bundle(&v, Some(70.0), &score, "p1", "Practitioner/u");
        assert_eq!(b["type"], "transaction");
        let entries = b["entry"].as_array().unwrap();
        let news = &entries.last().unwrap()["resource"];
        assert_eq!(news["valueInteger"], json!(score.total));
        assert_eq!(news["hasMember"].as_array().unwrap().len(), entries.len() - 1);
    }

    #[test]
    fn an_allergy_needs_a_substance() {
        let mut f = HashMap::new();
        assert!(allergy_resource(&f, "p", "Practitioner/u").is_err());
        f.insert("substance".to_string(), "other".to_string());
        assert!(allergy_resource(&f, "p", "Practitioner/u").is_err());
        f.insert("other".to_string(), "Plasters".to_string());
        let a = allergy_resource(&f, "p", "Practitioner/u").unwrap();
        assert_eq!(a["code"]["text"], "Plasters");
    }
}
