//! `/authz`: a reverse proxy's sub-request (nginx `auth_request`, Traefik ForwardAuth, Envoy
//! ext_authz HTTP) decided exactly as an API call: the same `authorize_api_request`.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use utoipa_axum::router::OpenApiRouter;

use super::cloud::{denial_response, session_token};
use super::error::{ApiError, ErrorBody};
use super::extract::AppState;
use super::templates;
use crate::service::sessions::Denial;
use crate::telemetry::{self, DecisionSurface};

/// The refusal's `code`, also sent as the `X-Keygate-Code` header: a proxy cannot pass the
/// sub-request's body on (nginx `auth_request` keeps only its status and headers), but it can
/// put this header into the answer it makes itself.
pub const CODE_HEADER: &str = "x-keygate-code";

const ORIGINAL_METHOD: HeaderName = HeaderName::from_static("x-original-method");
const FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");

fn denial_code(d: &Denial) -> &'static str {
    match d {
        Denial::SessionNotValid => "SESSION_NOT_VALID",
        Denial::NoApiSubscription => "NO_API_SUBSCRIPTION",
        Denial::SubscriptionExpired => "SUBSCRIPTION_EXPIRED",
        Denial::NotAuthorized => "NOT_AUTHORIZED",
        Denial::RateLimited(_) => "RATE_LIMIT_EXCEEDED",
        Denial::KeyDisabled(_) => "API_KEY_DISABLED",
    }
}

fn refused(d: Denial) -> Response {
    let code = HeaderValue::from_static(denial_code(&d));
    let mut response = denial_response(d);
    response.headers_mut().insert(CODE_HEADER, code);
    response
}

/// Any method: Envoy's ext_authz sends the sub-request with the original method. (Its
/// OpenAPI entry is listed in `http::ApiDoc`, since `routes!` would register GET only.)
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .route("/authz", axum::routing::any(authz))
        // Envoy's `path_prefix` appends the original path.
        .route("/authz/{*original_path}", axum::routing::any(authz))
}

/// The original method: `X-Original-Method` (nginx), `X-Forwarded-Method` (Traefik), else the
/// sub-request's own method (Envoy forwards the original method as it is).
fn original_method<'a>(headers: &'a HeaderMap, own: &'a Method) -> &'a str {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    text(ORIGINAL_METHOD)
        .or_else(|| text(FORWARDED_METHOD))
        .map(str::trim_ascii)
        .filter(|m| !m.is_empty())
        .unwrap_or(own.as_str())
}

/// 204 with `X-Keygate-Org-Id` and `X-Keygate-Admin` when the call may go through; otherwise
/// 401/403/429 with the API's codes, in the body and in `X-Keygate-Code`.
#[utoipa::path(get, path = "/authz", tag = "authz",
    params(
        ("X-Original-Method" = Option<String>, Header, description = "the method of the request being decided"),
        ("X-Forwarded-Method" = Option<String>, Header, description = "same, as Traefik sends it"),
    ),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn authz(State(state): State<AppState>, method: Method, headers: HeaderMap) -> Response {
    decide(&state, &headers, &method).await
}

/// The decision on a sub-request with these headers and method: what [`authz`] answers, also
/// called directly by the connection service (`http::dispatch`) for every `/authz` request.
pub async fn decide(state: &AppState, headers: &HeaderMap, method: &Method) -> Response {
    let Some(token) = session_token(headers) else {
        if let Some(hot) = telemetry::hot() {
            hot.decision(DecisionSurface::Authz, None);
        }
        return refused(Denial::SessionNotValid);
    };
    let method = original_method(headers, method);
    let decision = state.authorize_api_request(token, method).await;
    if let Some(hot) = telemetry::hot() {
        hot.decision(DecisionSurface::Authz, Some(&decision));
    }
    match decision {
        Ok(Ok(principal)) => {
            // Org ids are positive (SQLite/PostgreSQL identity columns).
            let org_id = u64::try_from(principal.org_id().0)
                .map(super::number_header)
                .unwrap_or_else(|_| HeaderValue::from(principal.org_id().0));
            let admin = HeaderValue::from_str(&principal.admin().login).ok();
            templates::allowed(org_id, admin, principal.rate.as_ref())
        }
        Ok(Err(denial)) => refused(denial),
        Err(e) => ApiError::from(e).into_response(),
    }
}
