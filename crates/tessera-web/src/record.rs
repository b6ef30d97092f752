//! The patient's record: banner, summary, encounters, results (with trends), medications,
//! documents and notes, immunisations; breaking the glass; launching SMART apps.
//!
//! Every list is a search as the signed-in user (through the `Gate`, audited); where the
//! search says more exists behind the glass, the page says so and offers the form.

use crate::layout::{self, page, Banner};
use crate::session::{self, Clinician, Signed};
use crate::view::{self, enc, Found};
use crate::{form, ok, see_other, WebState};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use maud::{html, Markup};
use serde_json::Value;
use std::collections::HashMap;
use tessera_domain::Domain;

/// What every page of the record needs.
pub struct Record {
    pub patient: Value,
    pub id: String,
    banner_allergies: Found,
    alerts: Found,
    /// Break-glass access in force until (UTC, `HH:MM` and date).
    grant_until: Option<String>,
}

/// Loads the patient and the banner's facts, or answers with the page that says why not.
pub async fn load(state: &WebState, s: &Signed, id: &str) -> Result<Record, Response> {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let patient = match view::read(engine, &s.access, "Patient", id).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            return Err(crate::signin::refused(state, s, StatusCode::NOT_FOUND, "Patient not found", "There is no record with this identifier that you may see."));
        }
        Err(e) if view::is_behind_glass(&e) => {
            let body = html! {
                h1 { "This record is protected" }
                p { "You have no care relationship with this patient recorded here. If you need to see the record to care for them, break the glass." }
                (layout::break_glass_form(id, &s.csrf, &format!("/patients/{id}")))
            };
            return Err(crate::html(StatusCode::FORBIDDEN, page("Protected record", layout::clinician_header(s, &domain), body)));
        }
        Err(e) => return Err(crate::signin::refused(state, s, StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), "Cannot open the record", &message(&e))),
    };
    let q = format!("patient={}&_count=50", enc(id));
    let banner_allergies = Found::from(view::search(engine, &s.access, "AllergyIntolerance", &q).await);
    let alerts = Found::from(view::search(engine, &s.access, "Flag", &format!("patient={}&status=active&_count=20", enc(id))).await);
    let grant = engine.break_glass_expiry(&s.access.subject, id).await.unwrap_or(0);
    let grant_until = (grant > now_micros()).then(|| instant_words(grant));
    Ok(Record { patient, id: id.to_string(), banner_allergies, alerts, grant_until })
}

fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// A time in microseconds as `14:05 on 7 Dec 2026 (UTC)`.
fn instant_words(micros: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(micros / 1_000_000) {
        Ok(t) => format!("{:02}:{:02} UTC on {}", t.hour(), t.minute(), view::date(&format!("{:04}-{:02}-{:02}", t.year(), u8::from(t.month()), t.day()))),
        Err(_) => "later today".into(),
    }
}

pub fn message(e: &tessera_engine::FhirError) -> String {
    let parts: Vec<String> = e.issues.iter().map(|i| match i.expression.first() {
        Some(at) => format!("{} ({at})", i.diagnostics),
        None => i.diagnostics.clone(),
    }).collect();
    if parts.is_empty() { format!("The request was refused ({})", e.status) } else { parts.join("; ") }
}

fn active_allergy(a: &Value) -> bool {
    let refuted = a.pointer("/verificationStatus/coding/0/code").and_then(Value::as_str).is_some_and(|c| c == "refuted" || c == "entered-in-error");
    let inactive = a.pointer("/clinicalStatus/coding/0/code").and_then(Value::as_str).is_some_and(|c| c == "inactive" || c == "resolved");
    !refuted && !inactive
}

/// Is this a "no known allergies" record (SNOMED 716186003 and friends)?
fn is_no_known_allergy(a: &Value) -> bool {
    a.pointer("/code/coding").and_then(Value::as_array).into_iter().flatten().any(|c| {
        matches!(c.get("code").and_then(Value::as_str), Some("716186003" | "409137002" | "428607008" | "429625007"))
    })
}

/// The record's page: header, banner, grant notice, tabs, then `body`.
pub fn record_page(state: &WebState, s: &Signed, r: &Record, tab: &str, title: &str, body: Markup) -> Response {
    ok(record_markup(state, s, r, tab, title, body))
}

pub fn record_markup(state: &WebState, s: &Signed, r: &Record, tab: &str, title: &str, body: Markup) -> Markup {
    let domain = state.edge.engine().domain();
    let allergies: Vec<String> = r.banner_allergies.resources.iter().filter(|a| active_allergy(a) && !is_no_known_allergy(a)).map(|a| view::concept(a.get("code"))).collect();
    let banner = Banner {
        patient: &r.patient,
        allergies,
        allergies_recorded: !r.banner_allergies.resources.is_empty(),
        allergies_behind_glass: r.banner_allergies.behind_glass,
        allergies_unknown: r.banner_allergies.error.is_some(),
        alerts: r.alerts.resources.iter().map(|f| view::concept(f.get("code"))).collect(),
    };
    let apps: Vec<&tessera_domain::SmartApp> = domain
        .apps
        .iter()
        .filter(|a| a.launch_url.is_some() && domain.trust_of(&a.organisation) == domain.trust_of(&s.access.organisation))
        .collect();
    page(
        &format!("{title} – {}", view::person_name(&r.patient)),
        layout::clinician_header(s, &domain),
        html! {
            (layout::patient_banner(&banner, &view::today()))
            (layout::notice(s.notice.as_deref()))
            @if let Some(until) = &r.grant_until {
                div class="nhsuk-warning-callout tessera-grant" data-grant {
                    h3 class="nhsuk-warning-callout__label" { span role="text" { "Break-glass access in force" } }
                    p { "You broke the glass for this record. Your access lasts until " strong { (until) } " and is being reviewed." }
                }
            }
            (layout::record_tabs(&r.id, tab))
            div class="tessera-record" {
                (body)
            }
            @if !apps.is_empty() {
                section class="tessera-apps" aria-label="Apps" {
                    h2 class="nhsuk-heading-s" { "Apps" }
                    @for app in apps {
                        form method="post" action=(format!("/patients/{}/launch/{}", r.id, app.id)) class="tessera-inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button class="nhsuk-button nhsuk-button--secondary nhsuk-button--small" type="submit" data-launch=(app.id) { "Launch " (app.name) }
                        }
                    }
                }
            }
        },
    )
}

/// `Type/id` of a resource, marking its row (for tests and assistive tools).
fn rid(r: &Value) -> String {
    format!("{}/{}", r.get("resourceType").and_then(Value::as_str).unwrap_or(""), r.get("id").and_then(Value::as_str).unwrap_or(""))
}

/// The column naming the owner of each row.
fn owner_cell(r: &Value, domain: &Domain) -> Markup {
    html! { td data-owner=(view::owner_id(r).unwrap_or("")) { (view::owner(r, domain)) } }
}

fn glass(found: &Found, s: &Signed, id: &str, back: &str) -> Markup {
    html! { @if found.behind_glass { (layout::break_glass_form(id, &s.csrf, back)) } }
}

/// What an empty list says: none recorded — or, when the search failed, that the list could
/// not be loaded (never "none" for a list that is unknown).
fn none_recorded(found: &Found, what: &str) -> Markup {
    html! {
        @if let Some(e) = &found.error {
            div class="nhsuk-error-summary" role="alert" data-list-error {
                p { "The " (what) " could not be loaded: " (e) ". Reload the page; if this persists, contact the service desk. Do not assume there are none." }
            }
        } @else {
            p class="nhsuk-body" data-empty { "No " (what) " recorded that you may see." }
        }
    }
}

/// `GET /patients/{id}`: problems, current medications, allergies, recent encounters (from
/// every organisation, each with its owner), the latest NEWS2.
pub async fn summary(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let domain = engine.domain();
    let p = enc(&id);
    let q0 = format!("patient={p}&_count=50&_sort=-recorded-date");
    let q1 = format!("patient={p}&status=active,on-hold&_count=50&_sort=-authoredon");
    let q2 = format!("patient={p}&_count=10&_sort=-date");
    let q3 = format!("patient={p}&code=http://snomed.info/sct|1104051000000101&_count=1&_sort=-date");
    let (problems, meds, encounters, news) = tokio::join!(
        view::search(engine, &s.access, "Condition", &q0),
        view::search(engine, &s.access, "MedicationRequest", &q1),
        view::search(engine, &s.access, "Encounter", &q2),
        view::search(engine, &s.access, "Observation", &q3),
    );
    let (problems, meds, encounters, news) = (Found::from(problems), Found::from(meds), Found::from(encounters), Found::from(news));
    let active_problems: Vec<&Value> = problems
        .resources
        .iter()
        .filter(|c| c.pointer("/clinicalStatus/coding/0/code").and_then(Value::as_str).is_none_or(|s| matches!(s, "active" | "recurrence" | "relapse")))
        .collect();
    let back = format!("/patients/{id}");
    let body = html! {
        div class="nhsuk-grid-row" {
            div class="nhsuk-grid-column-one-half" {
                h2 { "Problems" }
                @if active_problems.is_empty() { (none_recorded(&problems, "active problems")) } @else {
                    table class="nhsuk-table" data-section="problems" {
                        caption class="nhsuk-u-visually-hidden" { "Active problems" }
                        thead { tr { th scope="col" { "Problem" } th scope="col" { "Since" } th scope="col" { "Organisation" } } }
                        tbody { @for c in &active_problems { tr data-id=(rid(c)) { td { (view::concept(c.get("code"))) } td { (c.get("onsetDateTime").or_else(|| c.get("recordedDate")).and_then(Value::as_str).map(view::date).unwrap_or_default()) } (owner_cell(c, &domain)) } } }
                    }
                }
                (glass(&problems, &s, &id, &back))
                h2 { "Allergies" }
                @if r.banner_allergies.resources.is_empty() { (none_recorded(&r.banner_allergies, "allergies")) } @else {
                    table class="nhsuk-table" data-section="allergies" {
                        caption class="nhsuk-u-visually-hidden" { "Allergies" }
                        thead { tr { th scope="col" { "Allergy" } th scope="col" { "Reaction" } th scope="col" { "Organisation" } } }
                        tbody { @for a in &r.banner_allergies.resources { tr data-id=(rid(a)) { td { (view::concept(a.get("code"))) @if !active_allergy(a) { " (inactive)" } } td { (view::concept(a.pointer("/reaction/0/manifestation/0"))) @if let Some(c) = a.get("criticality").and_then(Value::as_str) { " · criticality " (c) } } (owner_cell(a, &domain)) } } }
                    }
                }
                (glass(&r.banner_allergies, &s, &id, &back))
            }
            div class="nhsuk-grid-column-one-half" {
                h2 { "Current medications" }
                @if meds.resources.is_empty() { (none_recorded(&meds, "current medications")) } @else {
                    table class="nhsuk-table" data-section="medications" {
                        caption class="nhsuk-u-visually-hidden" { "Current medications" }
                        thead { tr { th scope="col" { "Medication" } th scope="col" { "Dose" } th scope="col" { "Organisation" } } }
                        tbody { @for m in &meds.resources { tr data-id=(rid(m)) { td { (medication_name(m)) } td { (m.pointer("/dosageInstruction/0/text").and_then(Value::as_str).unwrap_or("")) } (owner_cell(m, &domain)) } } }
                    }
                }
                (glass(&meds, &s, &id, &back))
                @if let Some(n) = news.resources.first() {
                    h2 { "Latest NEWS2" }
                    p data-news2 { strong { (view::observation_value(n)) } " at " (view::when(n).map(view::date).unwrap_or_default()) " · " (view::owner(n, &domain)) }
                }
            }
        }
        h2 { "Recent encounters" }
        (encounter_table(&encounters, &domain))
        (glass(&encounters, &s, &id, &back))
    };
    record_page(&state, &s, &r, "summary", "Summary", body)
}

fn medication_name(m: &Value) -> String {
    let name = view::concept(m.get("medicationCodeableConcept"));
    if name.is_empty() {
        m.pointer("/medicationReference/display").and_then(Value::as_str).unwrap_or("(medication)").to_string()
    } else {
        name
    }
}

fn encounter_table(encounters: &Found, domain: &Domain) -> Markup {
    html! {
        @if encounters.resources.is_empty() { (none_recorded(encounters, "encounters")) } @else {
            table class="nhsuk-table" data-section="encounters" {
                caption class="nhsuk-u-visually-hidden" { "Encounters" }
                thead { tr { th scope="col" { "When" } th scope="col" { "Type" } th scope="col" { "Where" } th scope="col" { "Status" } th scope="col" { "Organisation" } } }
                tbody {
                    @for e in &encounters.resources {
                        tr data-id=(rid(e)) {
                            td { (e.pointer("/period/start").and_then(Value::as_str).map(view::date).unwrap_or_default())
                                 @if let Some(end) = e.pointer("/period/end").and_then(Value::as_str) { " – " (view::date(end)) } }
                            td { (view::concept(e.pointer("/type/0"))) @if let Some(c) = e.pointer("/class/display").or_else(|| e.pointer("/class/code")).and_then(Value::as_str) { " (" (c) ")" } }
                            td { (e.pointer("/location/0/location/display").and_then(Value::as_str).map(str::to_string)
                                    .or_else(|| view::reference_id(e.pointer("/location/0/location"), "Location").and_then(|l| domain.location(l)).map(|l| l.name.clone()))
                                    .or_else(|| e.pointer("/serviceProvider/display").and_then(Value::as_str).map(str::to_string))
                                    .unwrap_or_default()) }
                            td { (e.get("status").and_then(Value::as_str).unwrap_or("")) }
                            (owner_cell(e, domain))
                        }
                    }
                }
            }
        }
    }
}

/// `GET /patients/{id}/encounters`: every encounter, newest first, across organisations.
pub async fn encounters(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let found = Found::from(view::search(engine, &s.access, "Encounter", &format!("patient={}&_count=200&_sort=-date", enc(&id))).await);
    let domain = engine.domain();
    let body = html! {
        h2 { "Encounters" }
        (encounter_table(&found, &domain))
        (glass(&found, &s, &id, &format!("/patients/{id}/encounters")))
    };
    record_page(&state, &s, &r, "encounters", "Encounters", body)
}

/// `GET /patients/{id}/results`: laboratory results, newest first, each analyte's latest with
/// its flag and range and a link to its trend.
pub async fn results(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let domain = engine.domain();
    let found = Found::from(view::search(engine, &s.access, "Observation", &format!("patient={}&_count=500&_sort=-date", enc(&id))).await);
    let body = results_body(&found, &domain, Some(&id));
    let body = html! { (body) (glass(&found, &s, &id, &format!("/patients/{id}/results"))) };
    record_page(&state, &s, &r, "results", "Results", body)
}

/// The results table (shared with the portal). `trend_base`: the patient whose trend pages
/// the analytes link to (none: no links).
pub fn results_body(found: &Found, domain: &Domain, trend_base: Option<&str>) -> Markup {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for o in &found.resources {
        let key = view::code_key(o.get("code")).unwrap_or_else(|| view::concept(o.get("code")));
        *counts.entry(key).or_default() += 1;
    }
    // Every result is shown, grouped by category: laboratory, vital signs, then the others.
    let category = |o: &Value| -> &'static str {
        let codes: Vec<&str> = o.get("category").and_then(Value::as_array).into_iter().flatten().flat_map(|c| c.get("coding").and_then(Value::as_array).into_iter().flatten()).filter_map(|c| c.get("code").and_then(Value::as_str)).collect();
        if codes.contains(&"laboratory") {
            "Laboratory results"
        } else if codes.contains(&"vital-signs") {
            "Vital signs"
        } else {
            "Other observations"
        }
    };
    let groups: Vec<(&str, Vec<&Value>)> = ["Laboratory results", "Vital signs", "Other observations"]
        .into_iter()
        .map(|g| (g, found.resources.iter().filter(|o| category(o) == g).collect::<Vec<_>>()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    html! {
        h2 { "Results" }
        @if found.resources.is_empty() { (none_recorded(found, "results")) }
        @for (title, rows) in &groups {
            h3 { (title) }
            table class="nhsuk-table tessera-results" data-section="results" {
                caption class="nhsuk-u-visually-hidden" { (title) ", newest first" }
                thead { tr { th scope="col" { "Test" } th scope="col" { "Result" } th scope="col" { "Flag" } th scope="col" { "Reference range" } th scope="col" { "Taken" } th scope="col" { "Organisation" } } }
                tbody {
                    @for o in rows {
                        @let flag = view::abnormal_flag(o);
                        @let key = view::code_key(o.get("code"));
                        tr class=[flag.as_ref().map(|_| "tessera-abnormal")] data-id=(rid(o)) {
                            td {
                                @match (trend_base, &key) {
                                    (Some(pid), Some(k)) if counts.get(k).copied().unwrap_or(0) > 1 && o.get("valueQuantity").is_some() => {
                                        a href=(format!("/patients/{pid}/results/trend?code={}", enc(k))) { (view::concept(o.get("code"))) }
                                    }
                                    _ => { (view::concept(o.get("code"))) }
                                }
                            }
                            td { (view::observation_value(o)) }
                            td { @if let Some(f) = &flag { strong class="nhsuk-tag nhsuk-tag--red" data-flag=(f) { (view::flag_words(f)) " (" (f) ")" } } }
                            td { (view::reference_range(o).2) }
                            td { (view::when(o).map(view::date).unwrap_or_default()) }
                            (owner_cell(o, domain))
                        }
                    }
                }
            }
        }
        @if !found.resources.is_empty() {
            p class="nhsuk-body-s" { (counts.len()) " tests, " (found.resources.len()) " results."
                @if found.resources.len() >= 500 { " Only the newest 500 are listed: open a test's trend for its whole history." } }
        }
    }
}

/// `GET /patients/{id}/results/trend?code=system|code`: one analyte over time, as an SVG chart
/// drawn on the server, with the values in a table beneath.
pub async fn trend(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>, Query(q): Query<HashMap<String, String>>) -> Response {
    let Some(code) = q.get("code").filter(|c| !c.is_empty()) else {
        return see_other(&format!("/patients/{id}/results"));
    };
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let domain = engine.domain();
    let found = Found::from(view::search(engine, &s.access, "Observation", &format!("patient={}&code={}&_count=500&_sort=date", enc(&id), enc(code))).await);
    let title = found.resources.first().map(|o| view::concept(o.get("code"))).unwrap_or_else(|| code.clone());
    let unit = found.resources.iter().find_map(|o| o.pointer("/valueQuantity/unit").and_then(Value::as_str)).unwrap_or("").to_string();
    let (low, high, _) = found.resources.last().map(view::reference_range).unwrap_or((None, None, String::new()));
    let points: Vec<crate::chart::Point> = found
        .resources
        .iter()
        .filter_map(|o| {
            let value = o.get("valueQuantity").and_then(view::number)?;
            let at = view::when(o).and_then(parse_seconds)?;
            Some(crate::chart::Point { at, value, abnormal: view::abnormal_flag(o).is_some() })
        })
        .collect();
    let svg = crate::chart::trend_svg(&title, &unit, &points, low, high);
    let body = html! {
        h2 { "Trend: " (title) }
        figure class="tessera-chart" data-chart {
            (layout::trusted(svg))
            figcaption class="nhsuk-body-s" { (points.len()) " results" @if !unit.is_empty() { " in " (unit) } ". Abnormal results are drawn as red diamonds; the shaded band is the reference range." }
        }
        (results_body(&found, &domain, None))
        (glass(&found, &s, &id, &format!("/patients/{id}/results")))
        p { a href=(format!("/patients/{id}/results")) { "All results" } }
    };
    record_page(&state, &s, &r, "results", "Trend", body)
}

/// A FHIR date or dateTime as Unix seconds (a date is taken at midnight UTC).
fn parse_seconds(s: &str) -> Option<i64> {
    let full = if s.len() == 10 { format!("{s}T00:00:00Z") } else { s.to_string() };
    time::OffsetDateTime::parse(&full, &time::format_description::well_known::Rfc3339).ok().map(|t| t.unix_timestamp())
}

/// `GET /patients/{id}/medications`
pub async fn medications(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let domain = engine.domain();
    let found = Found::from(view::search(engine, &s.access, "MedicationRequest", &format!("patient={}&_count=200&_sort=-authoredon", enc(&id))).await);
    let body = html! {
        h2 { "Medications" }
        @if found.resources.is_empty() { (none_recorded(&found, "medications")) } @else {
            table class="nhsuk-table" data-section="medications" {
                caption class="nhsuk-u-visually-hidden" { "Medications" }
                thead { tr { th scope="col" { "Medication" } th scope="col" { "Dose" } th scope="col" { "Status" } th scope="col" { "Prescribed" } th scope="col" { "Organisation" } } }
                tbody { @for m in &found.resources { tr data-id=(rid(m)) {
                    td { (medication_name(m)) }
                    td { (m.pointer("/dosageInstruction/0/text").and_then(Value::as_str).unwrap_or("")) }
                    td { (m.get("status").and_then(Value::as_str).unwrap_or("")) }
                    td { (m.get("authoredOn").and_then(Value::as_str).map(view::date).unwrap_or_default()) }
                    (owner_cell(m, &domain))
                } } }
            }
        }
        (glass(&found, &s, &id, &format!("/patients/{id}/medications")))
    };
    record_page(&state, &s, &r, "medications", "Medications", body)
}

/// The text of a note: a `text/plain` attachment's data, else the narrative, else the title.
fn note_text(d: &Value) -> String {
    use base64::Engine as _;
    for c in d.get("content").and_then(Value::as_array).into_iter().flatten() {
        let att = &c["attachment"];
        if att.get("contentType").and_then(Value::as_str).is_some_and(|t| t.starts_with("text/plain")) {
            if let Some(data) = att.get("data").and_then(Value::as_str) {
                if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(data) {
                    return String::from_utf8_lossy(&bytes).into_owned();
                }
            }
        }
    }
    d.get("description").and_then(Value::as_str).or_else(|| d.pointer("/content/0/attachment/title").and_then(Value::as_str)).unwrap_or("").to_string()
}

/// `GET /patients/{id}/documents`: documents and notes (DocumentReference and Composition).
pub async fn documents(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let domain = engine.domain();
    let p = enc(&id);
    let q0 = format!("patient={p}&_count=100&_sort=-date");
    let q1 = format!("patient={p}&_count=100&_sort=-date");
    let (docs, comps) = tokio::join!(
        view::search(engine, &s.access, "DocumentReference", &q0),
        view::search(engine, &s.access, "Composition", &q1),
    );
    let (docs, comps) = (Found::from(docs), Found::from(comps));
    let body = html! {
        h2 { "Documents and notes" }
        @if docs.resources.is_empty() && comps.resources.is_empty() { (none_recorded(if docs.error.is_some() { &docs } else { &comps }, "documents or notes")) }
        @for d in &docs.resources {
            article class="nhsuk-card tessera-note" data-document=(d.get("id").and_then(Value::as_str).unwrap_or("")) data-id=(rid(d)) {
                div class="nhsuk-card__content" {
                    h3 class="nhsuk-card__heading nhsuk-heading-s" { (view::concept(d.get("type"))) }
                    p class="nhsuk-body-s" { (d.get("date").and_then(Value::as_str).map(view::date).unwrap_or_default()) " · " (d.pointer("/author/0/display").and_then(Value::as_str).unwrap_or("")) " · " span data-owner=(view::owner_id(d).unwrap_or("")) { (view::owner(d, &domain)) } }
                    p class="tessera-note__text" { (note_text(d)) }
                }
            }
        }
        @for c in &comps.resources {
            article class="nhsuk-card tessera-note" data-id=(rid(c)) {
                div class="nhsuk-card__content" {
                    h3 class="nhsuk-card__heading nhsuk-heading-s" { (c.get("title").and_then(Value::as_str).unwrap_or("Composition")) }
                    p class="nhsuk-body-s" { (c.get("date").and_then(Value::as_str).map(view::date).unwrap_or_default()) " · " span data-owner=(view::owner_id(c).unwrap_or("")) { (view::owner(c, &domain)) } }
                    @for section in c.get("section").and_then(Value::as_array).into_iter().flatten() {
                        h4 class="nhsuk-heading-xs" { (section.get("title").and_then(Value::as_str).unwrap_or("")) }
                    }
                }
            }
        }
        (glass(&docs, &s, &id, &format!("/patients/{id}/documents")))
        @if !docs.behind_glass { (glass(&comps, &s, &id, &format!("/patients/{id}/documents"))) }
    };
    record_page(&state, &s, &r, "documents", "Documents and notes", body)
}

/// `GET /patients/{id}/immunisations`
pub async fn immunisations(State(state): State<WebState>, Clinician(s): Clinician, Path(id): Path<String>) -> Response {
    let r = match load(&state, &s, &id).await {
        Ok(r) => r,
        Err(page) => return page,
    };
    let engine = state.edge.engine();
    let domain = engine.domain();
    let found = Found::from(view::search(engine, &s.access, "Immunization", &format!("patient={}&_count=200&_sort=-date", enc(&id))).await);
    let body = html! {
        h2 { "Immunisations" }
        @if found.resources.is_empty() { (none_recorded(&found, "immunisations")) } @else {
            table class="nhsuk-table" data-section="immunisations" {
                caption class="nhsuk-u-visually-hidden" { "Immunisations" }
                thead { tr { th scope="col" { "Vaccine" } th scope="col" { "Given" } th scope="col" { "Status" } th scope="col" { "Organisation" } } }
                tbody { @for i in &found.resources { tr data-id=(rid(i)) {
                    td { (view::concept(i.get("vaccineCode"))) }
                    td { (i.get("occurrenceDateTime").and_then(Value::as_str).map(view::date).unwrap_or_default()) }
                    td { (i.get("status").and_then(Value::as_str).unwrap_or("")) }
                    (owner_cell(i, &domain))
                } } }
            }
        }
        (glass(&found, &s, &id, &format!("/patients/{id}/immunisations")))
    };
    record_page(&state, &s, &r, "immunisations", "Immunisations", body)
}

/// `POST /patients/{id}/break-glass`: the engine's `$break-glass` (audited, alerted), then
/// back to the page, which now shows the data and the grant in force.
pub async fn break_glass(State(state): State<WebState>, parts: Parts, Clinician(s): Clinician, Path(id): Path<String>, body: Bytes) -> Response {
    let f = form(&body);
    if !session::check_csrf(&s, f.get("csrf").map(String::as_str)) || !session::same_origin(&parts.headers) {
        return crate::signin::refused(&state, &s, StatusCode::FORBIDDEN, "Break the glass", "The form has expired; reload the page and try again.");
    }
    let back = crate::safe_next(f.get("back").map(String::as_str), &format!("/patients/{id}"));
    let reason = f.get("reason").map(String::as_str).unwrap_or("");
    let text = f.get("text").map(String::as_str).unwrap_or("");
    match state.edge.engine().break_glass(&s.access, &id, reason, text).await {
        Ok(granted) => {
            let until = granted
                .get("parameter")
                .and_then(Value::as_array)
                .and_then(|p| p.iter().find(|x| x.get("name").and_then(Value::as_str) == Some("expires")))
                .and_then(|x| x.get("valueInstant").and_then(Value::as_str))
                .map(view::date)
                .unwrap_or_default();
            state.sessions.notify(s.key(), format!("You broke the glass for this record until {until} (UTC). This is recorded and will be reviewed."));
            see_other(&back)
        }
        Err(e) => {
            let domain = state.edge.engine().domain();
            let body = html! {
                (layout::error_summary(&[message(&e)]))
                h1 { "The glass was not broken" }
                (layout::break_glass_form(&id, &s.csrf, &back))
            };
            crate::html(StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST), page("Break the glass", layout::clinician_header(&s, &domain), body))
        }
    }
}

/// `POST /patients/{id}/launch/{app}`: an EHR launch — a launch id for this user and patient,
/// and the browser sent to the app's launch URL with `iss` and `launch`.
pub async fn launch(State(state): State<WebState>, parts: Parts, Clinician(s): Clinician, Path((id, app_id)): Path<(String, String)>, body: Bytes) -> Response {
    let f = form(&body);
    if !session::check_csrf(&s, f.get("csrf").map(String::as_str)) || !session::same_origin(&parts.headers) {
        return crate::signin::refused(&state, &s, StatusCode::FORBIDDEN, "Launch an app", "The form has expired; reload the page and try again.");
    }
    let domain = state.edge.engine().domain();
    let Some(app) = domain.app(&app_id).filter(|a| domain.trust_of(&a.organisation) == domain.trust_of(&s.access.organisation)) else {
        return crate::signin::refused(&state, &s, StatusCode::NOT_FOUND, "Launch an app", "This app is not available to your organisation.");
    };
    let Some(url) = app.launch_url.clone() else {
        return crate::signin::refused(&state, &s, StatusCode::BAD_REQUEST, "Launch an app", "This app cannot be launched from the record.");
    };
    // The patient must be one the user may see now.
    if load(&state, &s, &id).await.is_err() {
        return crate::signin::refused(&state, &s, StatusCode::FORBIDDEN, "Launch an app", "You may not see this record, so no app can be launched for it.");
    }
    let context = tessera_auth::LaunchContext { client_id: app.id.clone(), user: s.access.subject.clone(), patient: id.clone(), exp: tessera_auth::now() + tessera_auth::LAUNCH_SECONDS };
    match state.edge.issue_launch(&context).await {
        Ok(launch) => {
            let query = format!("iss={}&launch={}", enc(&state.edge.fhir_base()), enc(&launch));
            see_other(&tessera_auth::authorize::with_query(&url, &query))
        }
        Err(e) => crate::signin::refused(&state, &s, StatusCode::SERVICE_UNAVAILABLE, "Launch an app", &message(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_that_failed_never_reads_as_none() {
        let failed = Found::from(Err::<Found, _>(tessera_engine::FhirError::new(503, tessera_fhir::IssueType::Exception, "the database is not answering")));
        let html = none_recorded(&failed, "allergies").into_string();
        assert!(html.contains("could not be loaded") && html.contains("the database is not answering"), "{html}");
        assert!(!html.contains("No allergies recorded"), "{html}");
        let empty = none_recorded(&Found::default(), "allergies").into_string();
        assert!(empty.contains("No allergies recorded"));
    }
}
