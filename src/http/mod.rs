//! HTTP: one router per feature, merged here with the cross-cutting layers.

pub mod authz;
pub mod cloud;
pub mod console;
pub mod dispatch;
pub mod error;
pub mod extract;
pub mod forwarded;
pub mod health;
pub mod metrics;
pub mod openapi;
pub mod operators;
pub mod pages;
pub mod provider;
pub mod templates;
pub mod views;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use tower::util::MapResponseLayer;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

use error::ApiError;
use extract::AppState;

#[derive(OpenApi)]
#[openapi(
    paths(authz::authz),
    info(title = "keygate", description = "One cloud service API key per organization (Zscaler ZIA / Cloud Connector compatible)"),
    tags(
        (name = "provider", description = "Provider API, bearer token"),
        (name = "console", description = "Admin console API, login name + password"),
        (name = "cloud", description = "Zscaler-compatible cloud service API, JSESSIONID session"),
        (name = "operations", description = "Health and readiness"),
        (name = "authz", description = "Decisions for a reverse proxy in front of the provider's own API"),
    )
)]
struct ApiDoc;

/// The routers of every feature and the OpenAPI document they describe.
pub fn routes(state: AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(provider::router())
        .merge(operators::router())
        .merge(console::router())
        .merge(cloud::router(state.clone()))
        .merge(authz::router())
        .split_for_parts();
    let mut doc = doc;
    openapi::finish(&mut doc);
    (routes, doc)
}

// Responses may carry a key value: never cached.
pub(crate) const SECURITY_HEADERS: [(HeaderName, &str); 6] = [
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "no-referrer"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'none'; frame-ancestors 'none'",
    ),
    (header::CACHE_CONTROL, "no-store"),
    (
        HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    ),
];

/// Sets each security header a handler did not set itself (the pages set their own CSP). One
/// pass over the response, where a layer per header would wrap every request six times.
pub fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    // Grown once, not once per header.
    headers.reserve(SECURITY_HEADERS.len());
    for (name, value) in SECURITY_HEADERS {
        if let header::Entry::Vacant(slot) = headers.entry(name) {
            slot.insert(HeaderValue::from_static(value));
        }
    }
    response
}

/// Numbers below this are header values made once: the rate-limit headers (ZIA's limits and
/// what is left of them are small), the reset seconds and small org ids.
const NUMBER_HEADERS: u64 = 4096;

/// `n` as a header value. Below [`NUMBER_HEADERS`] a copy of one made at first use (static
/// bytes: no allocation, no formatting); above, formatted.
pub fn number_header(n: u64) -> HeaderValue {
    static TABLE: std::sync::OnceLock<Vec<HeaderValue>> = std::sync::OnceLock::new();
    if n >= NUMBER_HEADERS {
        return formatted_number_header(n);
    }
    let table = TABLE.get_or_init(|| {
        // One string with every number, kept for the life of the process.
        let mut all = String::new();
        let mut ends = Vec::with_capacity(NUMBER_HEADERS as usize);
        for i in 0..NUMBER_HEADERS {
            all.push_str(&i.to_string());
            ends.push(all.len());
        }
        let all: &'static str = all.leak();
        let mut start = 0;
        ends.into_iter()
            .map(|end| {
                let value = HeaderValue::from_static(&all[start..end]);
                start = end;
                value
            })
            .collect()
    });
    table[n as usize].clone()
}

/// `n` formatted, in one allocation (`HeaderValue::from(u64)` makes two: a buffer with room
/// to spare, then a shared handle for it, since its length is not its capacity).
fn formatted_number_header(n: u64) -> HeaderValue {
    HeaderValue::from_bytes(itoa::Buffer::new().format(n).as_bytes())
        .expect("decimal digits are a valid header value")
}

/// A rate limit as a header value: [`number_header`], and above the table the last one this
/// thread made is used again (a rule's limit is the same on each of its answers, where what
/// is left of it is not).
pub fn limit_header(n: u64) -> HeaderValue {
    thread_local! {
        static LAST: std::cell::RefCell<Option<(u64, HeaderValue)>> = const { std::cell::RefCell::new(None) };
    }
    if n < NUMBER_HEADERS {
        return number_header(n);
    }
    LAST.with_borrow_mut(|last| match last {
        Some((made_for, value)) if *made_for == n => value.clone(),
        _ => {
            let value = formatted_number_header(n);
            *last = Some((n, value.clone()));
            value
        }
    })
}

/// `value` as a JSON response, like `axum::Json` but written into a buffer large enough for
/// a small object at once and with its headers from a template.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response {
    let mut body = Vec::with_capacity(256);
    match serde_json::to_writer(&mut body, value) {
        Ok(()) => templates::json(status, body.into()),
        Err(e) => ApiError::Internal(e.into()).into_response(),
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    let (routes, openapi) = routes(state.clone());
    let openapi = Arc::new(openapi);
    let mut routes = routes
        .merge(pages::router())
        .merge(metrics::router())
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(openapi.as_ref().clone()) }),
        );
    if state.metrics.is_some() {
        // Tells `dispatch` which route answered (routes only: added before the fallbacks).
        routes = routes.route_layer(axum::middleware::from_fn(keep_matched_path));
    }
    let router = routes
        .fallback(|| async { ApiError::NotFound("No such endpoint".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state);
    router
        .layer(MapResponseLayer::new(
            security_headers as fn(Response) -> Response,
        ))
        .layer(TraceLayer::new_for_http())
}

/// Copies the matched route's template into the response, where `dispatch` reads it.
async fn keep_matched_path(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let matched = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let mut response = next.run(req).await;
    if let Some(m) = matched {
        response.extensions_mut().insert(m);
    }
    response
}

#[cfg(test)]
mod number_header_tests {
    use super::{limit_header, number_header};

    #[test]
    fn every_number_reads_back_as_itself() {
        for n in [
            0u64,
            1,
            9,
            10,
            99,
            1000,
            4095,
            4096,
            4097,
            1_000_000,
            u64::MAX,
        ] {
            assert_eq!(number_header(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }

    /// The memo of the last limit never answers for another one.
    #[test]
    fn a_limit_reads_back_as_itself_whatever_came_before() {
        for n in [
            1_000_000u64,
            1_000_000,
            1_000_001,
            5,
            1_000_000,
            4096,
            u64::MAX,
            4096,
        ] {
            assert_eq!(limit_header(n).to_str().unwrap(), n.to_string(), "{n}");
        }
    }
}
