//! The pages' one stylesheet and one script, compiled into the binary and served with a long
//! cache: their URLs carry a hash of their content, so a new build is fetched afresh.

use std::sync::LazyLock;

use axum::Router;
use axum::http::{HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;
use sha2::{Digest, Sha256};

use crate::http::extract::AppState;

const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

const LONG_CACHE: &str = "public, max-age=31536000, immutable";

fn versioned(path: &str, content: &str) -> String {
    let digest = Sha256::digest(content.as_bytes());
    format!("{path}?v={}", &const_hex::encode(digest)[..16])
}

static JS_URL: LazyLock<String> = LazyLock::new(|| versioned("/static/app.js", APP_JS));
static CSS_URL: LazyLock<String> = LazyLock::new(|| versioned("/static/app.css", APP_CSS));

pub fn js_url() -> &'static str {
    JS_URL.as_str()
}

pub fn css_url() -> &'static str {
    CSS_URL.as_str()
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static(LONG_CACHE)),
        ],
        body,
    )
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/static/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/static/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
}
