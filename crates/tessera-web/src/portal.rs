//! The patient portal (`/portal`): a patient signs in with their portal account and sees their
//! own record's summary and results, and who accessed their record — when, from which
//! organisation, and why (the engine's `$access-log`, break-glass reasons included). The
//! patient's access reaches their own record only, read-only (the `Gate` decides it).

use crate::layout::{self, page};
use crate::session::{self, Kind, PortalPatient, Signed};
use crate::view::{self, enc};
use crate::{form, ok, safe_next, see_other, WebState};
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{header, StatusCode};
use maud::{html, Markup};
use serde_json::Value;
use std::collections::HashMap;

fn portal_page(title: &str, s: &Signed, body: Markup) -> Response {
    ok(page(title, layout::portal_header(Some(s)), html! { (layout::notice(s.notice.as_deref())) (body) }))
}

fn sign_in_page(next: &str, username: &str, problem: Option<&str>, status: StatusCode) -> Response {
    crate::html(
        status,
        page(
            "Sign in to your health record",
            layout::portal_header(None),
            html! {
                div class="nhsuk-grid-row" {
                    div class="nhsuk-grid-column-two-thirds" {
                        @if let Some(p) = problem { (layout::error_summary(&[p.to_string()])) }
                        h1 { "Sign in to see your health record" }
                        form method="post" action="/portal/signin" novalidate {
                            input type="hidden" name="next" value=(next);
                            div class="nhsuk-form-group" {
                                label class="nhsuk-label" for="username" { "Username" }
                                input class="nhsuk-input nhsuk-u-width-two-thirds" id="username" name="username" type="text" autocomplete="username" spellcheck="false" value=(username);
                            }
                            div class="nhsuk-form-group" {
                                label class="nhsuk-label" for="password" { "Password" }
                                input class="nhsuk-input nhsuk-u-width-two-thirds" id="password" name="password" type="password" autocomplete="current-password";
                            }
                            button class="nhsuk-button" type="submit" { "Sign in" }
                        }
                        p class="nhsuk-body-s" { "Staff: " a href="/signin" { "sign in to Tessera" } "." }
                    }
                }
            },
        ),
    )
}

/// `GET /portal/signin`
pub async fn signin_form(Query(q): Query<HashMap<String, String>>) -> Response {
    sign_in_page(&safe_next(q.get("next").map(String::as_str), "/portal"), "", None, StatusCode::OK)
}

/// `POST /portal/signin`: the password grant (lockout, rate limit, audit) for portal accounts.
pub async fn signin_submit(State(state): State<WebState>, parts: Parts, body: Bytes) -> Response {
    let f = form(&body);
    let next = safe_next(f.get("next").map(String::as_str), "/portal");
    let next = if next.starts_with("/portal") || next.starts_with("/oauth/") { next } else { "/portal".to_string() };
    let username = f.get("username").map(|s| s.trim()).unwrap_or("");
    let password = f.get("password").map(String::as_str).unwrap_or("");
    if !session::same_origin(&parts.headers) {
        return sign_in_page(&next, username, Some("This form was sent from another site; sign in here."), StatusCode::FORBIDDEN);
    }
    if username.is_empty() || password.is_empty() {
        return sign_in_page(&next, username, Some("Enter your username and password"), StatusCode::BAD_REQUEST);
    }
    if state.edge.engine().domain().portal_account(username).is_none() && state.edge.engine().domain().user(username).is_some() {
        return sign_in_page(&next, username, Some("This is a staff account: sign in to Tessera instead"), StatusCode::BAD_REQUEST);
    }
    match state.edge.sign_in(&parts.extensions, &parts.headers, username, password, (None, None, None)).await {
        Ok(tokens) => {
            let cookie = state.sessions.start(Kind::Patient, &tokens);
            let mut r = see_other(&next);
            r.headers_mut().insert(header::SET_COOKIE, session::set_cookie(&parts.headers, &state, &cookie));
            r
        }
        Err(e) => {
            let status = if e.unavailable { StatusCode::SERVICE_UNAVAILABLE } else if e.retry_after.is_some() { StatusCode::TOO_MANY_REQUESTS } else { StatusCode::UNAUTHORIZED };
            let message = if e.message.contains("invalid username or password") { "The username or password is not right".to_string() } else { e.message };
            sign_in_page(&next, username, Some(&message), status)
        }
    }
}

/// `POST /portal/signout`
pub async fn sign_out(State(state): State<WebState>, parts: Parts, body: Bytes) -> Response {
    let f = form(&body);
    if let Some(s) = session::load(&state, &parts).await {
        if !session::check_csrf(&s, f.get("csrf").map(String::as_str)) {
            return crate::html(StatusCode::FORBIDDEN, layout::error_page("Sign out", "The form has expired; reload the page and try again.", layout::portal_header(None)));
        }
    }
    session::sign_out(&state, &parts).await;
    let mut r = crate::html(
        StatusCode::OK,
        page("Signed out", layout::portal_header(None), html! { h1 { "You have signed out" } p { a href="/portal/signin" { "Sign in again" } } }),
    );
    r.headers_mut().insert(header::SET_COOKIE, session::clear_cookie());
    r
}

fn own_id(s: &Signed) -> String {
    s.access.patient.clone().unwrap_or_default()
}

/// `GET /portal`: the patient's summary.
pub async fn summary(State(state): State<WebState>, PortalPatient(s): PortalPatient) -> Response {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let id = own_id(&s);
    let p = enc(&id);
    let patient = view::read(engine, &s.access, "Patient", &id).await.ok().flatten();
    let q0 = format!("patient={p}&_count=50");
    let q1 = format!("patient={p}&_count=50");
    let q2 = format!("patient={p}&status=active&_count=50");
    let q3 = format!("patient={p}&_count=10&_sort=-date");
    let (problems, allergies, meds, encounters) = tokio::join!(
        view::search(engine, &s.access, "Condition", &q0),
        view::search(engine, &s.access, "AllergyIntolerance", &q1),
        view::search(engine, &s.access, "MedicationRequest", &q2),
        view::search(engine, &s.access, "Encounter", &q3),
    );
    let (problems, allergies, meds, encounters) = (view::Found::from(problems), view::Found::from(allergies), view::Found::from(meds), view::Found::from(encounters));
    let list = |found: &view::Found, items: Vec<(String, String)>, empty: &str| -> Markup {
        html! {
            @if let Some(e) = &found.error { p data-list-error { "This could not be loaded (" (e) "). Please try again later." } }
            @else if items.is_empty() { p { (empty) } } @else {
                ul class="nhsuk-list nhsuk-list--bullet" { @for (what, who) in items { li { (what) span class="nhsuk-body-s" { " — " (who) } } } }
            }
        }
    };
    let body = html! {
        h1 { "Your health record" }
        @if let Some(p) = &patient {
            p class="nhsuk-lede-text" data-portal-patient { (view::person_name(p)) " · NHS number " (view::nhs_number(p).unwrap_or_default()) }
        }
        h2 { "Health problems" }
        (list(&problems, problems.resources.iter().map(|c| (view::concept(c.get("code")), view::owner(c, &domain))).collect(), "None recorded."))
        h2 { "Allergies" }
        (list(&allergies, allergies.resources.iter().map(|a| (view::concept(a.get("code")), view::owner(a, &domain))).collect(), "None recorded."))
        h2 { "Medicines" }
        (list(&meds, meds.resources.iter().map(|m| (view::concept(m.get("medicationCodeableConcept")), view::owner(m, &domain))).collect(), "None recorded."))
        h2 { "Recent appointments and stays" }
        (list(
            &encounters,
            encounters.resources.iter().map(|e| (format!("{} {}", e.pointer("/period/start").and_then(Value::as_str).map(view::date).unwrap_or_default(), view::concept(e.pointer("/type/0"))), view::owner(e, &domain))).collect(),
            "None recorded."
        ))
        p { a href="/portal/results" { "See your test results" } " · " a href="/portal/access" { "See who has looked at your record" } }
    };
    portal_page("Your health record", &s, body)
}

/// `GET /portal/results`
pub async fn results(State(state): State<WebState>, PortalPatient(s): PortalPatient) -> Response {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let id = own_id(&s);
    let found = view::Found::from(view::search(engine, &s.access, "Observation", &format!("patient={}&category=laboratory&_count=300&_sort=-date", enc(&id))).await);
    portal_page("Your test results", &s, html! { h1 { "Your test results" } (crate::record::results_body(&found, &domain, None)) })
}

/// `GET /portal/access`: who accessed the record — when, who, from which organisation, what
/// they did and why.
pub async fn access_log(State(state): State<WebState>, PortalPatient(s): PortalPatient, Query(q): Query<HashMap<String, String>>) -> Response {
    let engine = state.edge.engine();
    let domain = engine.domain();
    let id = own_id(&s);
    let mut query = "_count=100".to_string();
    if let Some(c) = q.get("_cursor").filter(|c| c.bytes().all(|b| b.is_ascii_digit())) {
        query.push_str(&format!("&_cursor={c}"));
    }
    let (rows, next, problem) = match engine.access_log(&s.access, &id, &query).await {
        Ok(bundle) => {
            let value: Value = serde_json::from_slice(bundle.as_bytes()).unwrap_or(Value::Null);
            let next = value.get("link").and_then(Value::as_array).into_iter().flatten().find(|l| l.get("relation").and_then(Value::as_str) == Some("next")).and_then(|l| l.get("url").and_then(Value::as_str)).and_then(|u| u.split("_cursor=").nth(1)).map(|c| c.split('&').next().unwrap_or("").to_string());
            let rows: Vec<Value> = value.get("entry").and_then(Value::as_array).into_iter().flatten().filter_map(|e| e.get("resource").cloned()).collect();
            (rows, next, None)
        }
        Err(e) => (Vec::new(), None, Some(crate::record::message(&e))),
    };
    let body = html! {
        h1 { "Who has looked at your record" }
        p { "Every time someone opens or changes your record it is recorded. If you do not recognise an access, contact the organisation named." }
        @if let Some(p) = problem { (layout::error_summary(&[p])) }
        @if rows.is_empty() { p data-empty { "No one has accessed your record yet." } } @else {
            table class="nhsuk-table" data-section="access-log" {
                caption class="nhsuk-u-visually-hidden" { "Accesses to your record, newest first" }
                thead { tr { th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Organisation" } th scope="col" { "What" } th scope="col" { "Why" } } }
                tbody { @for e in &rows { (access_row(e, &domain)) } }
            }
        }
        @if let Some(c) = next { p { a href=(format!("/portal/access?_cursor={c}")) { "Older accesses" } } }
    };
    portal_page("Who has looked at your record", &s, body)
}

fn access_row(e: &Value, domain: &tessera_domain::Domain) -> Markup {
    let agent = e.get("agent").and_then(Value::as_array).and_then(|a| a.iter().find(|x| x.get("requestor").and_then(Value::as_bool) == Some(true)).or_else(|| a.first()));
    let who = agent.and_then(|a| a.get("name").or_else(|| a.pointer("/who/display")).and_then(Value::as_str)).map(str::to_string).unwrap_or_else(|| {
        agent.and_then(|a| a.pointer("/who/reference").and_then(Value::as_str)).unwrap_or("A system").to_string()
    });
    let role = agent.and_then(|a| a.pointer("/role/0/coding/0/code").and_then(Value::as_str)).and_then(|r| domain.role(r)).map(|r| r.name.clone());
    let org = e
        .get("agent")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|a| a.pointer("/who/reference").and_then(Value::as_str).and_then(|r| r.strip_prefix("Organization/")))
        .map(|o| domain.organisation(o).map(|x| x.name.clone()).unwrap_or_else(|| o.to_string()))
        .unwrap_or_default();
    let what = e.pointer("/subtype/0/display").or_else(|| e.pointer("/subtype/0/code")).or_else(|| e.pointer("/type/display")).and_then(Value::as_str).unwrap_or("");
    let purposes: Vec<&Value> = agent
        .and_then(|a| a.get("purposeOfUse"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(e.get("purposeOfEvent").and_then(Value::as_array).into_iter().flatten())
        .collect();
    let break_glass = purposes.iter().any(|c| c.pointer("/coding/0/code").and_then(Value::as_str) == Some("BTG")) || e.pointer("/subtype/0/code").and_then(Value::as_str) == Some("110127");
    let mut reasons: Vec<String> = purposes.iter().map(|c| c.get("text").and_then(Value::as_str).map(str::to_string).unwrap_or_else(|| view::concept(Some(c)))).collect();
    reasons.dedup();
    let purpose = reasons.join("; ");
    html! {
        tr data-break-glass[break_glass] {
            td { (e.get("recorded").and_then(Value::as_str).map(view::date).unwrap_or_default()) }
            td { (who) @if let Some(r) = role { span class="nhsuk-body-s" { " (" (r) ")" } } }
            td data-organisation { (org) }
            td { (what) }
            td { @if break_glass { strong class="nhsuk-tag nhsuk-tag--orange" { "Emergency access" } " " } (purpose) }
        }
    }
}

