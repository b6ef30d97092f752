//! Static files (NHS.UK frontend styles and icons, Tessera's stylesheet) and the demo SMART
//! app, compiled into the binary.

use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

const FILES: &[(&str, &str, &[u8])] = &[
    ("nhsuk-frontend.min.css", "text/css; charset=utf-8", include_bytes!("../assets/nhsuk-frontend.min.css")),
    ("tessera.css", "text/css; charset=utf-8", include_bytes!("../assets/tessera.css")),
    ("images/nhsuk-icon-arrow-down.svg", "image/svg+xml", include_bytes!("../assets/images/nhsuk-icon-arrow-down.svg")),
    ("images/nhsuk-icon-arrow-up.svg", "image/svg+xml", include_bytes!("../assets/images/nhsuk-icon-arrow-up.svg")),
    ("images/nhsuk-icon-arrow-up-down.svg", "image/svg+xml", include_bytes!("../assets/images/nhsuk-icon-arrow-up-down.svg")),
    ("images/nhsuk-icon-cross.svg", "image/svg+xml", include_bytes!("../assets/images/nhsuk-icon-cross.svg")),
];

fn serve(content_type: &'static str, bytes: &'static [u8], cache: &'static str) -> Response {
    let mut r = (StatusCode::OK, bytes).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    r
}

/// `GET /static/{file}`
pub async fn file(Path(name): Path<String>) -> Response {
    match FILES.iter().find(|(n, _, _)| *n == name) {
        Some((_, ty, bytes)) => serve(ty, bytes, "public, max-age=3600"),
        None => (StatusCode::NOT_FOUND, "not found").into_response(),
    }
}

/// `GET /apps/demo/`: the demo SMART app (a static page and script).
pub async fn demo_app() -> Response {
    let mut r = serve("text/html; charset=utf-8", include_bytes!("../assets/demo-app/index.html"), "no-store");
    r.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"),
    );
    r
}

/// `GET /apps/demo/app.js`
pub async fn demo_app_js() -> Response {
    serve("text/javascript; charset=utf-8", include_bytes!("../assets/demo-app/app.js"), "no-store")
}
