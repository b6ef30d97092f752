//! SMART App Launch 2.0, the browser's part: `/oauth/authorize` checks the app's request
//! (`tessera_auth::AuthorizeRequest`), signs the user in if needed, asks for consent (and, in
//! a standalone launch asking for `launch/patient`, which patient), and sends the browser
//! back to the app with a one-time code. The code is redeemed at `/auth/token`.
//!
//! An app is offered only to users of the trust that registered it. What it is granted is the
//! intersection of what it asked, what it is registered for and what a user may hold; its
//! token then reads as the user, through the `Gate` — scopes narrow, never widen.

use crate::layout::{self, page};
use crate::session::{self, Kind, Signed};
use crate::view::{self, enc};
use crate::{form, see_other, WebState};
use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::StatusCode;
use maud::{html, Markup};
use serde_json::Value;
use tessera_auth::{AuthorizeError, AuthorizeRequest, CodeGrant, Scopes};

/// The request's parameters (query on GET, form on POST; the form also carries the consent).
fn params_of(pairs: &[(String, String)]) -> Vec<(String, String)> {
    const NAMES: [&str; 9] = ["response_type", "client_id", "redirect_uri", "scope", "state", "aud", "code_challenge", "code_challenge_method", "launch"];
    pairs.iter().filter(|(k, _)| NAMES.contains(&k.as_str())).cloned().collect()
}

fn pairs(bytes: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(bytes).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

fn error_answer(e: AuthorizeError) -> Response {
    match e.location() {
        Some(to) => see_other(&to),
        None => crate::html(StatusCode::BAD_REQUEST, layout::error_page("The app cannot be authorised", e.message(), layout::plain_header())),
    }
}

/// What a scope lets the app do, in words.
fn scope_words(scope: &str) -> String {
    match scope {
        "launch" => "Know that it was opened from your record".into(),
        "launch/patient" => "Know which patient it is working on".into(),
        "offline_access" => "Keep its access after you close it, until your session ends".into(),
        "online_access" => "Keep its access while you are signed in".into(),
        "openid" | "fhirUser" => "Know who you are".into(),
        other => {
            let (context, rest) = other.split_once('/').unwrap_or(("", other));
            let (ty, perms) = rest.split_once('.').unwrap_or((rest, ""));
            let what = if ty == "*" { "all kinds of data".to_string() } else { format!("{ty} data") };
            let verbs: Vec<&str> = match perms {
                "read" => vec!["read"],
                "write" => vec!["write"],
                "*" => vec!["read", "write"],
                p => {
                    let mut v = Vec::new();
                    if p.contains('r') || p.contains('s') {
                        v.push("read");
                    }
                    if p.contains('c') || p.contains('u') {
                        v.push("write");
                    }
                    if p.contains('d') {
                        v.push("delete");
                    }
                    v
                }
            };
            let whose = match context {
                "patient" => "of this patient only",
                "user" => "that you may see",
                _ => "",
            };
            format!("{} {what} {whose}", capitalise(&verbs.join(" and ")))
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_uppercase().chain(c).collect()).unwrap_or_default()
}

fn hidden(params: &[(String, String)]) -> Markup {
    html! { @for (k, v) in params { input type="hidden" name=(k) value=(v); } }
}

/// `GET /oauth/authorize`
pub async fn authorize(State(state): State<WebState>, parts: Parts) -> Response {
    let query = parts.uri.query().unwrap_or("");
    let all = pairs(query.as_bytes());
    let params = params_of(&all);
    let domain = state.edge.engine().domain();
    let (request, app) = match AuthorizeRequest::parse(&domain, &params, &state.edge.fhir_base()) {
        Ok(x) => x,
        Err(e) => return error_answer(e),
    };
    let s = match session::load(&state, &parts).await {
        Some(s) if s.kind == Kind::Clinician => s,
        Some(_) => return error_answer(request.error("access_denied", "apps are available to staff of the organisations of this domain")),
        None => {
            let next = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/oauth/authorize");
            return see_other(&format!("/signin?next={}", enc(next)));
        }
    };
    if domain.trust_of(&app.organisation) != domain.trust_of(&s.access.organisation) {
        return error_answer(request.error("access_denied", format!("the app `{}` is not registered for your organisation", app.id)));
    }
    // The patient: an EHR launch names it; a standalone launch asks.
    let mut patient: Option<String> = None;
    if let Some(launch) = &request.launch {
        match state.edge.launch(launch).await {
            Some(ctx) if ctx.client_id == app.id && ctx.user == s.access.subject => patient = Some(ctx.patient),
            _ => return error_answer(request.error("invalid_request", "the launch has expired or is not this app's; launch the app again from the record")),
        }
    }
    let wants_patient = request.wants_patient();
    let chosen = all.iter().find(|(k, _)| k == "patient").map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    if patient.is_none() && wants_patient {
        patient = chosen;
    }
    let granted = tessera_auth::granted_scopes(&request.scopes(), app, wants_patient);
    let patient_value = match &patient {
        Some(p) => match view::read(state.edge.engine(), &s.access, "Patient", p).await {
            Ok(Some(v)) => Some(v),
            _ => return error_answer(request.error("access_denied", "you may not see this patient's record")),
        },
        None => None,
    };
    let picker = if wants_patient && patient.is_none() { Some(patient_picker(&state, &s, &all, &params).await) } else { None };
    let org = domain.organisation(&app.organisation).map(|o| o.name.clone()).unwrap_or_default();
    let body = html! {
        h1 { "Allow " (app.name) "?" }
        p class="nhsuk-lede-text" { (app.name) ", registered by " (org) ", asks to work with the record as you, " (s.claims.name) ". It can never see more than you can." }
        @if let Some(p) = &patient_value {
            p data-consent-patient { "Patient: " strong { (view::person_name(p)) } " · NHS number " (view::nhs_number(p).unwrap_or_default()) }
        }
        h2 class="nhsuk-heading-s" { "It will be able to" }
        ul class="nhsuk-list nhsuk-list--bullet" data-scopes=(granted.to_string()) {
            @for scope in granted.iter() { li { (scope_words(&scope.to_string())) } }
        }
        @if let Some(picker) = picker { (picker) } @else {
            form method="post" action="/oauth/authorize" class="tessera-inline" {
                input type="hidden" name="csrf" value=(s.csrf);
                (hidden(&params))
                @if let Some(p) = &patient { input type="hidden" name="patient" value=(p); }
                button class="nhsuk-button" type="submit" name="decision" value="allow" { "Allow" }
                " "
                button class="nhsuk-button nhsuk-button--secondary" type="submit" name="decision" value="deny" { "Deny" }
            }
        }
    };
    crate::ok(page("Allow an app", layout::clinician_header(&s, &domain), body))
}

/// The standalone launch's patient picker: the user's patients (or the search results), each a
/// choice that continues the authorization with `patient=<id>`.
async fn patient_picker(state: &WebState, s: &Signed, all: &[(String, String)], params: &[(String, String)]) -> Markup {
    let engine = state.edge.engine();
    let find = all.iter().find(|(k, _)| k == "find").map(|(_, v)| v.trim().to_string()).unwrap_or_default();
    let query = if find.is_empty() {
        None
    } else {
        let digits: String = find.chars().filter(|c| !c.is_whitespace()).collect();
        Some(if digits.len() == 10 && digits.bytes().all(|b| b.is_ascii_digit()) {
            format!("identifier={}&_count=20", enc(&format!("{}|{digits}", tessera_empi::nhs::SYSTEM)))
        } else {
            format!("name={}&_count=20", enc(&find))
        })
    };
    let patients: Vec<Value> = match query {
        Some(q) => view::search(engine, &s.access, "Patient", &q).await.map(|f| f.resources).unwrap_or_default(),
        None => {
            let filter = if s.access.locations.is_empty() {
                format!("service-provider=Organization/{}", enc(&s.access.organisation))
            } else {
                format!("location={}", s.access.locations.iter().map(|l| enc(&format!("Location/{l}"))).collect::<Vec<_>>().join(","))
            };
            let found = view::search(engine, &s.access, "Encounter", &format!("{filter}&status=planned,arrived,triaged,in-progress,onleave&_include=Encounter:subject&_count=100")).await.unwrap_or_default();
            found.included.into_iter().filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Patient")).collect()
        }
    };
    html! {
        h2 class="nhsuk-heading-m" { "Choose the patient" }
        form method="get" action="/oauth/authorize" class="tessera-search" role="search" {
            (hidden(params))
            div class="nhsuk-form-group" {
                label class="nhsuk-label" for="find" { "Name or NHS number" }
                input class="nhsuk-input nhsuk-u-width-one-half" id="find" name="find" type="text" value=(find);
            }
            button class="nhsuk-button nhsuk-button--secondary" type="submit" { "Find" }
        }
        @if patients.is_empty() { p data-empty { "No patients to choose from; search above." } } @else {
            form method="post" action="/oauth/authorize" {
                input type="hidden" name="csrf" value=(s.csrf);
                (hidden(params))
                div class="nhsuk-form-group" {
                    fieldset class="nhsuk-fieldset" {
                        legend class="nhsuk-fieldset__legend" { "Patient" }
                        div class="nhsuk-radios" {
                            @for (i, p) in patients.iter().enumerate() {
                                @let id = p.get("id").and_then(Value::as_str).unwrap_or("");
                                div class="nhsuk-radios__item" {
                                    input class="nhsuk-radios__input" id=(format!("patient-{i}")) name="patient" type="radio" value=(id) checked[i == 0];
                                    label class="nhsuk-label nhsuk-radios__label" for=(format!("patient-{i}")) { (view::person_name(p)) " · " (view::nhs_number(p).unwrap_or_default()) }
                                }
                            }
                        }
                    }
                }
                button class="nhsuk-button" type="submit" name="decision" value="allow" { "Allow for this patient" }
                " "
                button class="nhsuk-button nhsuk-button--secondary" type="submit" name="decision" value="deny" { "Deny" }
            }
        }
    }
}

/// `POST /oauth/authorize`: the user's decision. Allow: a one-time code for the app, bound to
/// its redirect URI and PKCE challenge, for this user's context, the granted scopes and the
/// patient; deny: `access_denied`.
pub async fn decide(State(state): State<WebState>, parts: Parts, body: Bytes) -> Response {
    let all = pairs(&body);
    let params = params_of(&all);
    let f = form(&body);
    let domain = state.edge.engine().domain();
    let (request, app) = match AuthorizeRequest::parse(&domain, &params, &state.edge.fhir_base()) {
        Ok(x) => x,
        Err(e) => return error_answer(e),
    };
    let Some(s) = session::load(&state, &parts).await.filter(|s| s.kind == Kind::Clinician) else {
        return error_answer(request.error("access_denied", "the user is not signed in"));
    };
    if !session::check_csrf(&s, f.get("csrf").map(String::as_str)) || !session::same_origin(&parts.headers) {
        return crate::signin::refused(&state, &s, StatusCode::FORBIDDEN, "Allow an app", "The form has expired; start the app again.");
    }
    if f.get("decision").map(String::as_str) != Some("allow") {
        return error_answer(request.error("access_denied", "the user did not allow the app"));
    }
    if domain.trust_of(&app.organisation) != domain.trust_of(&s.access.organisation) {
        return error_answer(request.error("access_denied", format!("the app `{}` is not registered for your organisation", app.id)));
    }
    let mut patient = None;
    let mut ehr_launch = false;
    if let Some(launch) = &request.launch {
        match state.edge.launch(launch).await {
            Some(ctx) if ctx.client_id == app.id && ctx.user == s.access.subject => {
                patient = Some(ctx.patient);
                ehr_launch = true;
            }
            _ => return error_answer(request.error("invalid_request", "the launch has expired or is not this app's; launch the app again from the record")),
        }
    }
    let wants_patient = request.wants_patient();
    if patient.is_none() && wants_patient {
        patient = f.get("patient").filter(|p| !p.is_empty()).cloned();
        if patient.is_none() {
            return error_answer(request.error("invalid_request", "no patient was chosen"));
        }
    }
    if let Some(p) = &patient {
        if !matches!(view::read(state.edge.engine(), &s.access, "Patient", p).await, Ok(Some(_))) {
            return error_answer(request.error("access_denied", "you may not see this patient's record"));
        }
    }
    let granted: Scopes = tessera_auth::granted_scopes(&request.scopes(), app, patient.is_some());
    if granted.resource_scopes().next().is_none() {
        return error_answer(request.error("invalid_scope", "none of the data scopes asked for can be granted to this app"));
    }
    let grant = CodeGrant {
        client_id: app.id.clone(),
        redirect_uri: request.redirect_uri.clone(),
        code_challenge: request.code_challenge.clone(),
        user: s.access.subject.clone(),
        role: s.access.role.clone(),
        org: s.access.organisation.clone(),
        loc: s.access.location.clone(),
        scope: granted.to_string(),
        patient,
        exp: tessera_auth::now() + tessera_auth::CODE_SECONDS,
        ehr_launch,
    };
    match state.edge.issue_code(&grant).await {
        Ok(code) => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("code", &code);
            if let Some(st) = &request.state {
                q.append_pair("state", st);
            }
            see_other(&tessera_auth::authorize::with_query(&request.redirect_uri, &q.finish()))
        }
        Err(_) => error_answer(request.error("temporarily_unavailable", "the server cannot issue a code now; try again")),
    }
}
