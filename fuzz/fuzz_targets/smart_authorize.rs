//! SMART App Launch authorization requests: any query string is answered (a page error or a
//! redirect error or a request) without a panic, an accepted redirect URI is always one the
//! app registered, and the scopes granted never exceed the app's registration.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use tessera_auth::{granted_scopes, AuthorizeError, AuthorizeRequest, Scopes};
use tessera_domain::Domain;

fn domain() -> &'static Domain {
    static D: OnceLock<Domain> = OnceLock::new();
    D.get_or_init(|| {
        let mut d = Domain::bootstrap();
        d.apply_file(tessera_domain::demo::DOMAIN_FILE).expect("the demo domain");
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let params: Vec<(String, String)> = form_urlencoded::parse(data).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    match AuthorizeRequest::parse(domain(), &params, "http://127.0.0.1:8080/fhir") {
        Ok((request, app)) => {
            assert!(app.redirect_uris.iter().any(|r| tessera_auth::redirect_matches(r, &request.redirect_uri)));
            let registered = Scopes::parse_list(&app.scopes).unwrap_or_default();
            for patient in [false, true] {
                let granted = granted_scopes(&request.scopes(), app, patient);
                for s in granted.resource_scopes() {
                    assert!(registered.resource_scopes().any(|r| r.context == s.context), "{s} is within the app's registration");
                }
            }
        }
        Err(AuthorizeError::Redirect { redirect_uri, .. }) => {
            let app = params.iter().find(|(k, _)| k == "client_id").and_then(|(_, id)| domain().app(id)).expect("a redirect only for a known app");
            assert!(app.redirect_uris.iter().any(|r| tessera_auth::redirect_matches(r, &redirect_uri)), "errors go only to a registered redirect URI");
        }
        Err(AuthorizeError::Page(_)) => {}
    }
});
