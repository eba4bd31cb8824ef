//! `GET /metrics`: the Prometheus text exposition, on the main listener only to the metrics
//! bearer token (404 otherwise, as for a path that does not exist), or on its own listener.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::error::ApiError;
use super::extract::AppState;

const EXPOSITION_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// On the main listener. Not in the OpenAPI document: it is not part of the API.
pub fn router() -> Router<AppState> {
    Router::new().route("/metrics", get(on_main_listener))
}

async fn on_main_listener(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match &state.metrics {
        Some(m) if m.token_accepted(authorization) => exposition(&state).await,
        _ => ApiError::NotFound("No such endpoint".into()).into_response(),
    }
}

/// The whole service of `--metrics-listen`: `/metrics` to anyone who reaches the address.
pub fn standalone(state: AppState) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AppState>| async move { exposition(&s).await }),
        )
        .fallback(|| async { ApiError::NotFound("No such endpoint".into()) })
        .with_state(state)
}

async fn exposition(state: &AppState) -> Response {
    let Some(m) = &state.metrics else {
        return ApiError::NotFound("No such endpoint".into()).into_response();
    };
    let mut response = Response::new(Body::from(m.render(state).await));
    *response.status_mut() = StatusCode::OK;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(EXPOSITION_TYPE),
    );
    response
}
