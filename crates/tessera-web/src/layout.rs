//! The page shell (NHS.UK frontend patterns): header, the context banner that says who is
//! working in which role where, the patient banner, the record's tabs, messages and errors.

use crate::session::Signed;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde_json::Value;
use tessera_domain::Domain;

/// A whole page.
pub fn page(title: &str, header: Markup, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en-GB" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " – Tessera" }
                link rel="stylesheet" href="/static/nhsuk-frontend.min.css";
                link rel="stylesheet" href="/static/tessera.css";
            }
            body {
                a class="nhsuk-skip-link" href="#main-content" { "Skip to main content" }
                (header)
                div class="nhsuk-width-container" {
                    main class="nhsuk-main-wrapper nhsuk-main-wrapper--s" id="main-content" role="main" {
                        (body)
                    }
                }
                footer role="contentinfo" {
                    div class="nhsuk-footer" {
                        div class="nhsuk-width-container" {
                            p class="nhsuk-body-s" { "Tessera shared care record. Every access is recorded." }
                        }
                    }
                }
            }
        }
    }
}

/// The header of the clinician's application, with the context banner.
pub fn clinician_header(signed: &Signed, domain: &Domain) -> Markup {
    html! {
        header class="nhsuk-header" role="banner" {
            div class="nhsuk-header__container nhsuk-width-container" {
                div class="nhsuk-header__service" {
                    a class="nhsuk-header__service-name tessera-brand" href="/patients" { "Tessera" }
                }
                nav class="tessera-nav" aria-label="Main" {
                    a href="/patients/mine" { "My patients" }
                    a href="/patients" { "Find a patient" }
                    form method="post" action="/signout" class="tessera-inline" {
                        input type="hidden" name="csrf" value=(signed.csrf);
                        button class="tessera-link-button" type="submit" { "Sign out" }
                    }
                }
            }
        }
        (context_banner(signed, domain))
    }
}

/// Who is signed in, in which role, at which organisation, site and location — on every page.
pub fn context_banner(signed: &Signed, domain: &Domain) -> Markup {
    let a = &signed.access;
    let role = a.role.as_deref().and_then(|r| domain.role(r)).map(|r| r.name.clone()).unwrap_or_default();
    let org = domain.organisation(&a.organisation);
    let trust = domain.trust_of(&a.organisation);
    let trust_name = domain.organisation(trust).map(|o| o.name.clone()).unwrap_or_default();
    let location = a.location.as_deref().and_then(|l| domain.location(l)).map(|l| l.name.clone());
    html! {
        div class="tessera-context" role="region" aria-label="Your working context" {
            div class="nhsuk-width-container tessera-context__inner" {
                p class="tessera-context__text" id="context" {
                    strong { (signed.claims.name) }
                    " · " span data-role { (role) }
                    " · " span data-organisation { (org.map(|o| o.name.as_str()).unwrap_or(&a.organisation)) }
                    @if trust != a.organisation { " (" (trust_name) ")" }
                    @if let Some(l) = location { " · " span data-location { (l) } }
                }
                a class="tessera-context__switch" href="/context" { "Switch role or location" }
            }
        }
    }
}

/// The header of the patient portal.
pub fn portal_header(signed: Option<&Signed>) -> Markup {
    html! {
        header class="nhsuk-header" role="banner" {
            div class="nhsuk-header__container nhsuk-width-container" {
                div class="nhsuk-header__service" {
                    a class="nhsuk-header__service-name tessera-brand" href="/portal" { "Tessera – your health record" }
                }
                @if let Some(s) = signed {
                    nav class="tessera-nav" aria-label="Main" {
                        a href="/portal" { "Summary" }
                        a href="/portal/results" { "Test results" }
                        a href="/portal/access" { "Who has looked at my record" }
                        form method="post" action="/portal/signout" class="tessera-inline" {
                            input type="hidden" name="csrf" value=(s.csrf);
                            button class="tessera-link-button" type="submit" { "Sign out" }
                        }
                    }
                }
            }
        }
    }
}

/// A header for pages before sign-in.
pub fn plain_header() -> Markup {
    html! {
        header class="nhsuk-header" role="banner" {
            div class="nhsuk-header__container nhsuk-width-container" {
                div class="nhsuk-header__service" {
                    a class="nhsuk-header__service-name tessera-brand" href="/" { "Tessera" }
                }
            }
        }
    }
}

/// What the patient banner shows.
pub struct Banner<'a> {
    pub patient: &'a Value,
    pub allergies: Vec<String>,
    /// No allergy record visible, and none behind the glass: "not recorded".
    pub allergies_recorded: bool,
    pub allergies_behind_glass: bool,
    /// The allergies could not be loaded: the banner must not read "none".
    pub allergies_unknown: bool,
    pub alerts: Vec<String>,
}

/// The patient banner: on every page of the record.
pub fn patient_banner(b: &Banner, today: &str) -> Markup {
    let p = b.patient;
    let birth = p.get("birthDate").and_then(Value::as_str);
    let age = birth.and_then(|d| crate::view::age(d, today));
    let restricted = crate::view::confidentiality(p);
    let sex = p.get("gender").and_then(Value::as_str).map(|g| match g {
        "male" => "Male",
        "female" => "Female",
        "other" => "Other",
        _ => "Unknown",
    });
    html! {
        section class="tessera-banner" aria-label="Patient" {
            h1 class="tessera-banner__name" id="patient-name" { (crate::view::person_name(p)) }
            dl class="tessera-banner__facts" {
                div { dt { "NHS number" } dd data-nhs-number { (crate::view::nhs_number(p).unwrap_or_else(|| "Not recorded".into())) } }
                div { dt { "Born" } dd { (birth.map(crate::view::date).unwrap_or_else(|| "Not recorded".into())) @if let Some(a) = age { " (" (a) " years)" } } }
                div { dt { "Sex" } dd { (sex.unwrap_or("Not recorded")) } }
            }
            div class="tessera-banner__flags" {
                @if let Some(level) = restricted {
                    strong class="nhsuk-tag nhsuk-tag--purple" data-restricted {
                        @if level == "V" { "Very restricted record" } @else { "Restricted record" }
                    }
                }
                @if b.allergies.is_empty() {
                    @if b.allergies_unknown {
                        strong class="nhsuk-tag nhsuk-tag--red" data-allergies { "Allergies could not be loaded: check before prescribing" }
                    } @else if b.allergies_behind_glass {
                        strong class="nhsuk-tag nhsuk-tag--orange" data-allergies { "Allergies: more exists behind the glass" }
                    } @else if b.allergies_recorded {
                        strong class="nhsuk-tag nhsuk-tag--grey" data-allergies { "No known allergies" }
                    } @else {
                        strong class="nhsuk-tag nhsuk-tag--yellow" data-allergies { "Allergies not recorded" }
                    }
                } @else {
                    strong class="nhsuk-tag nhsuk-tag--red" data-allergies { "Allergies: " (b.allergies.join(", ")) }
                    @if b.allergies_behind_glass { " " strong class="nhsuk-tag nhsuk-tag--orange" { "more behind the glass" } }
                }
                @for alert in &b.alerts {
                    strong class="nhsuk-tag nhsuk-tag--orange" data-alert { "Alert: " (alert) }
                }
            }
        }
    }
}

/// The record's tabs.
pub fn record_tabs(patient_id: &str, current: &str) -> Markup {
    let tabs = [
        ("summary", "Summary", format!("/patients/{patient_id}")),
        ("encounters", "Encounters", format!("/patients/{patient_id}/encounters")),
        ("results", "Results", format!("/patients/{patient_id}/results")),
        ("medications", "Medications", format!("/patients/{patient_id}/medications")),
        ("documents", "Documents and notes", format!("/patients/{patient_id}/documents")),
        ("immunisations", "Immunisations", format!("/patients/{patient_id}/immunisations")),
        ("vitals", "Record vital signs", format!("/patients/{patient_id}/vitals")),
        ("allergy", "Record an allergy", format!("/patients/{patient_id}/allergies/new")),
        ("note", "Write a note", format!("/patients/{patient_id}/notes/new")),
    ];
    html! {
        nav class="tessera-tabs" aria-label="Record" {
            ul {
                @for (key, label, href) in &tabs {
                    li {
                        @if *key == current {
                            a href=(href) aria-current="page" { (label) }
                        } @else {
                            a href=(href) { (label) }
                        }
                    }
                }
            }
        }
    }
}

/// A one-off message (after a write).
pub fn notice(message: Option<&str>) -> Markup {
    html! {
        @if let Some(m) = message {
            div class="nhsuk-inset-text tessera-notice" role="status" { p { (m) } }
        }
    }
}

/// An error summary (NHS pattern) with the problems, each naming what to fix.
pub fn error_summary(problems: &[String]) -> Markup {
    html! {
        @if !problems.is_empty() {
            div class="nhsuk-error-summary" aria-labelledby="error-summary-title" role="alert" tabindex="-1" {
                h2 class="nhsuk-error-summary__title" id="error-summary-title" { "There is a problem" }
                div class="nhsuk-error-summary__body" {
                    ul class="nhsuk-list nhsuk-error-summary__list" {
                        @for p in problems { li { (p) } }
                    }
                }
            }
        }
    }
}

/// "More exists — break the glass to view", with the form for the reason.
pub fn break_glass_form(patient_id: &str, csrf: &str, back: &str) -> Markup {
    html! {
        div class="nhsuk-warning-callout tessera-glass" {
            h3 class="nhsuk-warning-callout__label" { span role="text" { span class="nhsuk-u-visually-hidden" { "Important: " } "More exists — break the glass to view" } }
            p { "Some of this patient's record is held by other organisations and is shared with you only for a stated reason. Breaking the glass is recorded, reported to privacy officers and lasts a limited time." }
            form method="post" action=(format!("/patients/{patient_id}/break-glass")) novalidate {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="back" value=(back);
                div class="nhsuk-form-group" {
                    label class="nhsuk-label" for="reason" { "Reason" }
                    select class="nhsuk-select" id="reason" name="reason" {
                        @for (code, label) in tessera_engine::privacy::BREAK_GLASS_REASONS {
                            option value=(code) { (label) }
                        }
                    }
                }
                div class="nhsuk-form-group" {
                    label class="nhsuk-label" for="text" { "Why you need to see it" }
                    textarea class="nhsuk-textarea" id="text" name="text" rows="2" {}
                }
                button class="nhsuk-button nhsuk-button--warning" type="submit" data-break-glass { "Break the glass" }
            }
        }
    }
}

/// The page of an error for people.
pub fn error_page(title: &str, message: &str, header: Markup) -> Markup {
    page(
        title,
        header,
        html! {
            h1 { (title) }
            p class="nhsuk-body" data-error { (message) }
            p { a href="javascript:history.back()" { "Go back" } }
        },
    )
}

/// Raw, trusted markup (a server-drawn SVG).
pub fn trusted(svg: String) -> PreEscaped<String> {
    PreEscaped(svg)
}
