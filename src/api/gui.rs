//! The GUI at `/gui` (Kuma serves its GUI on the API port too): one HTML page, a script and
//! a style sheet, compiled into the binary (`gui/index.html`, `gui/app.js`, `gui/app.css`;
//! no Node build step, no library). The page talks to this API as any client does: a
//! direct loopback browser is the admin, as `localhostIsAdmin` makes it; a remote one signs
//! in with a user token, kept in the tab's `sessionStorage` and sent as
//! `Authorization: Bearer` (no cookie, so no CSRF). What the token may not read, the page
//! cannot show.
//!
//! Every GUI response carries a strict Content-Security-Policy: scripts, styles and
//! requests from this origin only, no inline script or style, no framing
//! (`frame-ancestors 'none'`), no forms posted anywhere, no base URL.

pub(super) mod doc;

use super::AppState;
use super::error::ApiError;
use super::openapi::Routes;
use crate::store::SecretStore;
use axum::extract::Path;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

/// The GUI's Content-Security-Policy.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const INDEX: &str = include_str!("gui/index.html");
const SCRIPT: &str = include_str!("gui/app.js");
const STYLE: &str = include_str!("gui/app.css");

/// The GUI's routes.
pub fn router<S: SecretStore + Clone + 'static>() -> Routes<AppState<S>> {
    Routes::new()
        .add::<doc::__path_gui, _, _>(gui)
        .add::<doc::__path_gui_asset, _, _>(gui_asset)
}

async fn gui() -> Response {
    guarded(file("text/html; charset=utf-8", INDEX))
}

async fn gui_asset(Path(asset): Path<String>) -> Response {
    guarded(match asset.as_str() {
        "index.html" => file("text/html; charset=utf-8", INDEX),
        "app.js" => file("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => file("text/css; charset=utf-8", STYLE),
        _ => ApiError::not_found("No such file in the GUI").into_response(),
    })
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// `response` with the headers every GUI response carries.
fn guarded(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
