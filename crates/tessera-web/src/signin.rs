//! Signing in and out, and choosing the role, organisation and location to work in.

use crate::layout::{self, page};
use crate::session::{self, Clinician, Kind};
use crate::{form as read_form, ok, safe_next, see_other, WebState};
use axum::extract::{Query, State};
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::{header, StatusCode};
use maud::html;
use std::collections::HashMap;

/// `/`: the signed-in clinician's patients, else the sign-in page.
pub async fn home(State(state): State<WebState>, parts: Parts) -> Response {
    match session::load(&state, &parts).await {
        Some(s) if s.kind == Kind::Clinician => see_other("/patients/mine"),
        Some(_) => see_other("/portal"),
        None => see_other("/signin"),
    }
}

fn sign_in_page(next: &str, username: &str, problem: Option<&str>, status: StatusCode) -> Response {
    crate::html(
        status,
        page(
            "Sign in",
            layout::plain_header(),
            html! {
                div class="nhsuk-grid-row" {
                    div class="nhsuk-grid-column-two-thirds" {
                        @if let Some(p) = problem { (layout::error_summary(&[p.to_string()])) }
                        h1 { "Sign in to Tessera" }
                        p { "For staff of the organisations of this shared care record. Patients: " a href="/portal/signin" { "sign in to see your own record" } "." }
                        form method="post" action="/signin" novalidate {
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
                    }
                }
            },
        ),
    )
}

/// `GET /signin`
pub async fn form(Query(q): Query<HashMap<String, String>>) -> Response {
    sign_in_page(&safe_next(q.get("next").map(String::as_str), "/patients/mine"), "", None, StatusCode::OK)
}

/// `POST /signin`: the password grant of the token endpoint (lockout, rate limit, audit).
pub async fn submit(State(state): State<WebState>, parts: Parts, body: Bytes) -> Response {
    let f = read_form(&body);
    let next = safe_next(f.get("next").map(String::as_str), "/patients/mine");
    let username = f.get("username").map(|s| s.trim()).unwrap_or("");
    let password = f.get("password").map(String::as_str).unwrap_or("");
    if !session::same_origin(&parts.headers) {
        return sign_in_page(&next, username, Some("This form was sent from another site; sign in here."), StatusCode::FORBIDDEN);
    }
    if username.is_empty() || password.is_empty() {
        return sign_in_page(&next, username, Some("Enter your username and password"), StatusCode::BAD_REQUEST);
    }
    if state.edge.engine().domain().user(username).is_none() && state.edge.engine().domain().portal_account(username).is_some() {
        return sign_in_page(&next, username, Some("This is a patient's account: sign in to the patient portal instead"), StatusCode::BAD_REQUEST);
    }
    match state.edge.sign_in(&parts.extensions, &parts.headers, username, password, (None, None, None)).await {
        Ok(tokens) => {
            let cookie = state.sessions.start(Kind::Clinician, &tokens);
            let domain = state.edge.engine().domain();
            let several = domain.user(username).is_some_and(|u| u.roles.len() > 1 || u.roles.iter().any(|r| r.locations.len() > 1));
            let to = if several { format!("/context?next={}", crate::view::enc(&next)) } else { next };
            let mut r = see_other(&to);
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

/// `POST /signout`
pub async fn sign_out(State(state): State<WebState>, parts: Parts, body: Bytes) -> Response {
    let f = read_form(&body);
    if let Some(s) = session::load(&state, &parts).await {
        if !session::check_csrf(&s, f.get("csrf").map(String::as_str)) {
            return crate::html(StatusCode::FORBIDDEN, layout::error_page("Sign out", "The form has expired; reload the page and try again.", layout::plain_header()));
        }
    }
    session::sign_out(&state, &parts).await;
    let mut r = crate::html(
        StatusCode::OK,
        page("Signed out", layout::plain_header(), html! { h1 { "You have signed out" } p { a href="/signin" { "Sign in again" } } }),
    );
    r.headers_mut().insert(header::SET_COOKIE, session::clear_cookie());
    r
}

/// `GET /context`: the user's role assignments and locations to choose from.
pub async fn context_form(State(state): State<WebState>, Clinician(s): Clinician, Query(q): Query<HashMap<String, String>>) -> Response {
    let domain = state.edge.engine().domain();
    let next = safe_next(q.get("next").map(String::as_str), "/patients/mine");
    let Some(user) = domain.user(&s.claims.sub) else {
        return see_other("/signin");
    };
    let mut options = Vec::new();
    for a in &user.roles {
        let role = domain.role(&a.role).map(|r| r.name.clone()).unwrap_or_else(|| a.role.clone());
        let org = domain.organisation(&a.organisation).map(|o| o.name.clone()).unwrap_or_else(|| a.organisation.clone());
        if a.locations.is_empty() {
            options.push((format!("{}|{}|", a.role, a.organisation), format!("{role} at {org}")));
        }
        for l in &a.locations {
            let loc = domain.location(l).map(|x| x.name.clone()).unwrap_or_else(|| l.clone());
            options.push((format!("{}|{}|{l}", a.role, a.organisation), format!("{role} at {org}, {loc}")));
        }
    }
    let current = format!("{}|{}|{}", s.access.role.as_deref().unwrap_or(""), s.access.organisation, s.access.location.as_deref().unwrap_or(""));
    ok(page(
        "Choose your role",
        layout::clinician_header(&s, &domain),
        html! {
            form method="post" action="/context" novalidate {
                input type="hidden" name="csrf" value=(s.csrf);
                input type="hidden" name="next" value=(next);
                div class="nhsuk-form-group" {
                    fieldset class="nhsuk-fieldset" {
                        legend class="nhsuk-fieldset__legend nhsuk-fieldset__legend--l" { h1 class="nhsuk-fieldset__heading" { "Choose your role and location" } }
                        div class="nhsuk-radios" {
                            @for (i, (value, label)) in options.iter().enumerate() {
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id=(format!("ctx-{i}")) name="context" type="radio" value=(value) checked[*value == current];
                                    label class="nhsuk-label nhsuk-radios__label" for=(format!("ctx-{i}")) { (label) }
                                }
                            }
                        }
                    }
                }
                button class="nhsuk-button" type="submit" { "Continue" }
            }
        },
    ))
}

/// `POST /context`: switches the session's context (the old token stops working).
pub async fn switch(State(state): State<WebState>, parts: Parts, Clinician(s): Clinician, body: Bytes) -> Response {
    let f = read_form(&body);
    let domain = state.edge.engine().domain();
    if !session::check_csrf(&s, f.get("csrf").map(String::as_str)) || !session::same_origin(&parts.headers) {
        return crate::html(StatusCode::FORBIDDEN, layout::error_page("Switch role", "The form has expired; reload the page and try again.", layout::clinician_header(&s, &domain)));
    }
    let next = safe_next(f.get("next").map(String::as_str), "/patients/mine");
    let choice = f.get("context").cloned().unwrap_or_default();
    let mut parts_iter = choice.splitn(3, '|');
    let (Some(role), Some(org)) = (parts_iter.next(), parts_iter.next()) else {
        return crate::html(StatusCode::BAD_REQUEST, layout::error_page("Switch role", "Choose a role and location.", layout::clinician_header(&s, &domain)));
    };
    let location = parts_iter.next().filter(|l| !l.is_empty());
    let unchanged = Some(role) == s.access.role.as_deref() && org == s.access.organisation && location == s.access.location.as_deref();
    if unchanged {
        return see_other(&next);
    }
    match state.edge.switch(&parts.extensions, &parts.headers, s.access_token(), role, org, location).await {
        Ok(tokens) => {
            session::switched(&state, &s, &tokens);
            state.sessions.notify(s.key(), "Your role and location have changed.");
            see_other(&next)
        }
        Err(e) => crate::html(StatusCode::BAD_REQUEST, layout::error_page("Switch role", &e.message, layout::clinician_header(&s, &domain))),
    }
}

/// A clinician's page refusing a request with a readable message.
pub fn refused(state: &WebState, s: &session::Signed, status: StatusCode, title: &str, message: &str) -> Response {
    let domain = state.edge.engine().domain();
    crate::html(status, layout::error_page(title, message, layout::clinician_header(s, &domain)))
}
