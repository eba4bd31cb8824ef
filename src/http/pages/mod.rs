//! Server-rendered web pages: the admin portal with the **Cloud Service API Key** page
//! (`/portal`) and the provider console (`/console`).
//!
//! The pages hold no rule of their own: every read and change goes through the same
//! `Services` methods as the JSON APIs (`/admin/v1`, `/provider/v1`), every error is the
//! API's `ApiError` and its message is shown as is, and which buttons a page shows is
//! decided by `domain::policy::authorize`, the table the server enforces.
//!
//! Security: every state-changing form is a POST carrying a CSRF token and is refused (403,
//! nothing changed) when the token is missing or wrong or when `Origin`/`Referer`/
//! `Sec-Fetch-Site` show another site; successes answer 303 to a GET (POST-redirect-GET);
//! cookies are `HttpOnly; SameSite=Strict` (`Secure` when served over TLS or the public URL is https); every
//! page carries a Content-Security-Policy without `unsafe-inline` and with
//! `frame-ancestors 'none'`; a key value never appears in a URL.

// Handlers here answer with a whole page, so their helpers return `Result<_, Response>`, as
// axum's own rejections do; boxing every error page would buy nothing.
#![allow(clippy::result_large_err)]

mod assets;
mod common;
mod console;
mod portal;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::routing::get;
use tower_http::set_header::SetResponseHeaderLayer;

use super::extract::AppState;

/// The policy of every page: scripts, styles and fetches from this origin only, no inline
/// code, forms post only here, and no framing.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
    base-uri 'none'";

/// The routes of both web areas and their static assets.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { common::see_other("/portal/key") }))
        .merge(portal::router())
        .merge(console::router())
        .merge(assets::router())
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        // `no-referrer` (the API default) would make browsers send `Origin: null` with the
        // pages' own form posts; `same-origin` keeps both headers for this site only.
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
        .layer(SetResponseHeaderLayer::overriding(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
}
