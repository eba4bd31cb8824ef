//! Liveness and readiness.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::AppState;
use super::json_response;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(healthz))
        .routes(routes!(readyz))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    status: &'static str,
}

/// The process is up.
#[utoipa::path(get, path = "/healthz", tag = "operations", responses((status = 200, body = Health)))]
async fn healthz() -> Response {
    healthz_response()
}

/// Also answered directly by `http::dispatch`.
pub fn healthz_response() -> Response {
    json_response(StatusCode::OK, &Health { status: "ok" })
}

/// `/readyz`'s answer: ready, and whether the node cache runs (`embedded`, `on`, `off`), with
/// the reason when it is off.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    status: &'static str,
    node_cache: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    node_cache_reason: Option<String>,
}

/// The node can serve: its database answers and, with the node cache, it holds its lease.
/// 503 `NOT_READY` or `DATABASE_UNAVAILABLE` (with the reason) otherwise; `/healthz` only
/// says the process is up.
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = Ready), (status = 503, body = ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> ApiResult<Json<Ready>> {
    if state.cache.leased() && !state.cache.lease_held() {
        return Err(ApiError::NotReady(
            "This node holds no node-cache lease (it cannot reach the database's notifications)",
        ));
    }
    // A pool waiting for an unreachable database would hold the probe past its own timeout.
    match tokio::time::timeout(READY_DB_TIMEOUT, state.store.ready()).await {
        Ok(Ok(())) => Ok(Json(Ready {
            status: "ready",
            node_cache: state.node_cache.label(),
            node_cache_reason: state.node_cache.reason(),
        })),
        Ok(Err(e)) => Err(ApiError::Unavailable(anyhow::anyhow!("{e}"))),
        Err(_) => Err(ApiError::Unavailable(anyhow::anyhow!(
            "the database did not answer within {READY_DB_TIMEOUT:?}"
        ))),
    }
}

const READY_DB_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
