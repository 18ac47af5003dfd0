//! `GET /`: the sales dashboard, one self-contained HTML page (inline CSS and
//! script, no other host) compiled into the binary. It asks for the viewer token,
//! reads `GET /api/v1/dashboard/sales`, and follows `GET /api/v1/events/live` to
//! reload the view after each event (with `?min_position=`, read-your-writes).

use axum::http::{HeaderValue, header};
use axum::response::{Html, IntoResponse};

/// The page itself (`api/src/dashboard.html`).
const PAGE: &str = include_str!("dashboard.html");

/// The page talks only to this server, with inline script and style: anything
/// else (an injected script source, a form posted elsewhere, framing) is refused.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The sales dashboard page (it asks for a viewer token, then updates live).
#[utoipa::path(
    get,
    path = "/",
    tag = "dashboard",
    responses((status = 200, description = "The dashboard page", body = String, content_type = "text/html"))
)]
pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        ],
        Html(PAGE),
    )
}
