//! Finding a patient: search by name, NHS number, local MRN and date of birth (with the
//! patient index's grade of each match), and "My patients" — the patients of the user's
//! wards and clinics, from their current encounters.

use crate::layout::{self, page};
use crate::session::Clinician;
use crate::view::{self, enc};
use crate::{ok, WebState};
use axum::extract::{Query, State};
use axum::response::Response;
use http::StatusCode;
use maud::{html, Markup};
use serde_json::{json, Value};
use std::collections::HashMap;

/// A date of birth as typed (`31/3/1980`, `31-03-1980` or `1980-03-31`) as a FHIR date.
pub fn parse_birth_date(s: &str) -> Option<String> {
    let s = s.trim();
    let parts: Vec<&str> = s.split(['/', '-', '.', ' ']).filter(|p| !p.is_empty()).collect();
    let (y, m, d) = match parts.as_slice() {
        [y, m, d] if y.len() == 4 => (*y, *m, *d),
        [d, m, y] if y.len() == 4 => (*y, *m, *d),
        _ => return None,
    };
    let (y, m, d): (u32, u32, u32) = (y.parse().ok()?, m.parse().ok()?, d.parse().ok()?);
    let valid = (1850..=2200).contains(&y) && (1..=12).contains(&m) && (1..=31).contains(&d);
    valid.then(|| format!("{y:04}-{m:02}-{d:02}"))
}

/// The search form's fields.
struct Criteria {
    name: String,
    nhs: String,
    mrn: String,
    birth: String,
}

impl Criteria {
    fn of(q: &HashMap<String, String>) -> Criteria {
        let get = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
        Criteria { name: get("name"), nhs: get("nhs"), mrn: get("mrn"), birth: get("birthdate") }
    }

    fn is_empty(&self) -> bool {
        self.name.is_empty() && self.nhs.is_empty() && self.mrn.is_empty() && self.birth.is_empty()
    }

    /// The FHIR query, or what is wrong with the form.
    fn query(&self) -> Result<String, Vec<String>> {
        let mut params = vec!["_count=50".to_string()];
        let mut problems = Vec::new();
        for word in self.name.split([' ', ',']).filter(|w| !w.is_empty()).take(4) {
            params.push(format!("name={}", enc(word)));
        }
        if !self.nhs.is_empty() {
            let digits: String = self.nhs.chars().filter(|c| !c.is_whitespace()).collect();
            if tessera_empi::nhs::NhsNumber::parse(&digits).is_err() {
                problems.push("Enter a valid NHS number: 10 digits, like 943 476 5919".to_string());
            } else {
                params.push(format!("identifier={}", enc(&format!("{}|{digits}", tessera_empi::nhs::SYSTEM))));
            }
        }
        if !self.mrn.is_empty() {
            params.push(format!("identifier={}", enc(&self.mrn)));
        }
        if !self.birth.is_empty() {
            match parse_birth_date(&self.birth) {
                Some(d) => params.push(format!("birthdate={d}")),
                None => problems.push("Enter the date of birth as day/month/year, like 31/3/1980".to_string()),
            }
        }
        if problems.is_empty() {
            Ok(params.join("&"))
        } else {
            Err(problems)
        }
    }
}

fn search_form(c: &Criteria) -> Markup {
    html! {
        form method="get" action="/patients" class="tessera-search" role="search" novalidate {
            div class="tessera-search__fields" {
                div class="nhsuk-form-group" {
                    label class="nhsuk-label" for="name" { "Name" }
                    input class="nhsuk-input" id="name" name="name" type="text" value=(c.name) autocomplete="off";
                }
                div class="nhsuk-form-group" {
                    label class="nhsuk-label" for="nhs" { "NHS number" }
                    input class="nhsuk-input" id="nhs" name="nhs" type="text" inputmode="numeric" value=(c.nhs) autocomplete="off";
                }
                div class="nhsuk-form-group" {
                    label class="nhsuk-label" for="mrn" { "Hospital number (MRN)" }
                    input class="nhsuk-input" id="mrn" name="mrn" type="text" value=(c.mrn) autocomplete="off";
                }
                div class="nhsuk-form-group" {
                    label class="nhsuk-label" for="birthdate" { "Date of birth" }
                    div class="nhsuk-hint" id="birthdate-hint" { "For example, 31/3/1980" }
                    input class="nhsuk-input" id="birthdate" name="birthdate" type="text" value=(c.birth) aria-describedby="birthdate-hint" autocomplete="off";
                }
            }
            button class="nhsuk-button" type="submit" { "Search" }
        }
    }
}

/// One patient in a list.
fn patient_row(p: &Value, grade: Option<&str>, why: Option<&str>, today: &str) -> Markup {
    let id = p.get("id").and_then(Value::as_str).unwrap_or("");
    let birth = p.get("birthDate").and_then(Value::as_str);
    html! {
        tr data-patient=(id) {
            td { a href=(format!("/patients/{id}")) { (view::person_name(p)) } }
            td { (view::nhs_number(p).unwrap_or_default()) }
            td { (birth.map(view::date).unwrap_or_default()) @if let Some(a) = birth.and_then(|b| view::age(b, today)) { " (" (a) ")" } }
            td { (p.get("gender").and_then(Value::as_str).unwrap_or("")) }
            td {
                @if let Some(level) = view::confidentiality(p) {
                    strong class="nhsuk-tag nhsuk-tag--purple" data-restricted { @if level == "V" { "Very restricted" } @else { "Restricted" } } " "
                }
                @if let Some(g) = grade { strong class="nhsuk-tag nhsuk-tag--blue" data-match-grade=(g) { "Patient index: " (g) " match" } " " }
                @if let Some(w) = why { span class="nhsuk-body-s" { (w) } }
            }
        }
    }
}

fn patient_table(rows: Markup) -> Markup {
    html! {
        table class="nhsuk-table" {
            caption class="nhsuk-table__caption nhsuk-u-visually-hidden" { "Patients" }
            thead { tr { th scope="col" { "Name" } th scope="col" { "NHS number" } th scope="col" { "Born" } th scope="col" { "Sex" } th scope="col" { "Notes" } } }
            tbody { (rows) }
        }
    }
}

/// `GET /patients?name=&nhs=&mrn=&birthdate=`
pub async fn search(State(state): State<WebState>, Clinician(s): Clinician, Query(q): Query<HashMap<String, String>>) -> Response {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let c = Criteria::of(&q);
    let today = view::today();
    let mut problems = Vec::new();
    let mut results: Vec<Value> = Vec::new();
    let mut grades: HashMap<String, String> = HashMap::new();
    let mut behind_glass = false;
    let mut searched = false;
    if !c.is_empty() {
        match c.query() {
            Err(p) => problems = p,
            Ok(query) => {
                searched = true;
                match view::search(engine, &s.access, "Patient", &query).await {
                    Ok(found) => {
                        behind_glass = found.behind_glass;
                        results = found.resources;
                    }
                    Err(e) => problems.push(e.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_else(|| "The search failed".into())),
                }
                // The patient index grades demographic searches (a name with a date of birth).
                if problems.is_empty() && !c.name.is_empty() && !c.birth.is_empty() {
                    if let Some(graded) = index_matches(&state, &s, &c).await {
                        for (p, grade) in graded {
                            let id = p.get("id").and_then(Value::as_str).unwrap_or("").to_string();
                            if !results.iter().any(|r| r.get("id").and_then(Value::as_str) == Some(id.as_str())) {
                                results.push(p);
                            }
                            grades.insert(id, grade);
                        }
                    }
                }
            }
        }
    }
    let status = if problems.is_empty() { StatusCode::OK } else { StatusCode::BAD_REQUEST };
    crate::html(
        status,
        page(
            "Find a patient",
            layout::clinician_header(&s, &domain),
            html! {
                (layout::error_summary(&problems))
                h1 { "Find a patient" }
                (search_form(&c))
                @if searched && problems.is_empty() {
                    h2 id="results" { (results.len()) " patient" @if results.len() != 1 { "s" } " found" }
                    @if !results.is_empty() {
                        (patient_table(html! { @for p in &results { (patient_row(p, grades.get(p.get("id").and_then(Value::as_str).unwrap_or("")).map(String::as_str), None, &today)) } }))
                    }
                    @if behind_glass {
                        div class="nhsuk-inset-text" data-protected { p { "More patients match but their records are protected. Search by NHS number to open a record and break the glass if you need to." } }
                    }
                }
            },
        ),
    )
}

/// The patient index's candidates for the search (`Patient/$match`, through the `Gate`), with
/// their grade.
async fn index_matches(state: &WebState, s: &crate::session::Signed, c: &Criteria) -> Option<Vec<(Value, String)>> {
    let birth = parse_birth_date(&c.birth)?;
    let words: Vec<&str> = c.name.split([' ', ',']).filter(|w| !w.is_empty()).collect();
    let (family, given) = words.split_last()?;
    let mut name = json!({"family": family});
    if !given.is_empty() {
        name["given"] = json!(given);
    }
    let parameters = json!({
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": {"resourceType": "Patient", "name": [name], "birthDate": birth}}, {"name": "count", "valueInteger": 10}]
    });
    let bundle = state.edge.engine().patient_match(&s.access, parameters).await.ok()?;
    let value: Value = serde_json::from_slice(bundle.as_bytes()).ok()?;
    let mut out = Vec::new();
    for e in value.get("entry").and_then(Value::as_array).into_iter().flatten() {
        let Some(r) = e.get("resource").filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient")) else { continue };
        let grade = e
            .pointer("/search/extension")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find_map(|x| x.get("valueCode").and_then(Value::as_str))
            .unwrap_or("possible")
            .to_string();
        out.push((r.clone(), grade));
    }
    Some(out)
}

/// `GET /patients/mine`: the patients with a current encounter at the user's locations (or,
/// without locations, at their organisation).
pub async fn mine(State(state): State<WebState>, Clinician(s): Clinician) -> Response {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let today = view::today();
    let filter = if s.access.locations.is_empty() {
        format!("service-provider=Organization/{}", enc(&s.access.organisation))
    } else {
        format!("location={}", s.access.locations.iter().map(|l| enc(&format!("Location/{l}"))).collect::<Vec<_>>().join(","))
    };
    let query = format!("{filter}&status=planned,arrived,triaged,in-progress,onleave&_include=Encounter:subject&_count=200");
    let (rows, problem) = match view::search(engine, &s.access, "Encounter", &query).await {
        Ok(found) => {
            let mut seen = std::collections::HashSet::new();
            let mut rows = Vec::new();
            for enc in &found.resources {
                let Some(pid) = view::reference_id(enc.get("subject"), "Patient") else { continue };
                if !seen.insert(pid.to_string()) {
                    continue;
                }
                let place = enc
                    .pointer("/location/0/location/display")
                    .and_then(Value::as_str)
                    .map(str::to_string)
                    .or_else(|| view::reference_id(enc.pointer("/location/0/location"), "Location").and_then(|l| domain.location(l)).map(|l| l.name.clone()));
                let why = format!(
                    "{} {}{}",
                    view::concept(enc.pointer("/type/0")).trim(),
                    enc.pointer("/class/display").or_else(|| enc.pointer("/class/code")).and_then(Value::as_str).unwrap_or(""),
                    place.map(|p| format!(" · {p}")).unwrap_or_default()
                );
                if let Some(p) = found.included.iter().find(|p| p.get("id").and_then(Value::as_str) == Some(pid)) {
                    rows.push((p.clone(), why));
                }
            }
            (rows, None)
        }
        Err(e) => (Vec::new(), Some(e.issues.first().map(|i| i.diagnostics.clone()).unwrap_or_default())),
    };
    let where_ = if s.access.locations.is_empty() {
        domain.organisation(&s.access.organisation).map(|o| o.name.clone()).unwrap_or_default()
    } else {
        s.access.locations.iter().filter_map(|l| domain.location(l)).map(|l| l.name.clone()).collect::<Vec<_>>().join(", ")
    };
    ok(page(
        "My patients",
        layout::clinician_header(&s, &domain),
        html! {
            (layout::notice(s.notice.as_deref()))
            h1 { "My patients" }
            p class="nhsuk-lede-text" { "Patients with a current encounter at " (where_) "." }
            @if let Some(p) = problem { (layout::error_summary(&[p])) }
            @if rows.is_empty() {
                p data-empty { "No patients with a current encounter here." }
            } @else {
                (patient_table(html! { @for (p, why) in &rows { (patient_row(p, None, Some(why), &today)) } }))
            }
            p { a href="/patients" { "Find another patient" } }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_of_birth_are_read_the_british_way() {
        assert_eq!(parse_birth_date("31/3/1980").as_deref(), Some("1980-03-31"));
        assert_eq!(parse_birth_date("1980-03-31").as_deref(), Some("1980-03-31"));
        assert_eq!(parse_birth_date("3/31/1980"), None);
        assert_eq!(parse_birth_date("yesterday"), None);
    }
}
