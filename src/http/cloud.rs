//! The Zscaler-compatible cloud service API (`/api/v1`): sessions, the key endpoints (the
//! same service as the admin console), and the audit log report.

use axum::Json;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{AppState, ClientAddr, JsonBody, cookie_in, parse_id};
use super::templates::{self, with_rate_headers};
use crate::domain::key::ApiKeyValue;
use crate::domain::time::Millis;
use crate::service::keys::{KeyChangeRequest, KeyObject, Shown};
use crate::service::sessions::{ApiLoginOutcome, ApiLoginRequest, ApiPrincipal, Denial};
use crate::telemetry::{self, DecisionSurface, LoginOutcome, LoginSurface};

pub const SESSION_COOKIE: &str = "JSESSIONID";
/// The session id as a header (what Cloud Connector clients send); built once, since a `&str`
/// name is parsed again on every look-up.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("jsessionid");

pub fn router(state: AppState) -> OpenApiRouter<AppState> {
    let metered = OpenApiRouter::new()
        .routes(routes!(list_keys, add_key))
        .routes(routes!(get_key, edit_key, delete_key))
        .routes(routes!(regenerate_key))
        .routes(routes!(create_report, report_status, cancel_report))
        .routes(routes!(download_report))
        .routes(routes!(activation_status))
        .routes(routes!(activate))
        .route_layer(axum::middleware::from_fn_with_state(state, api_guard));
    OpenApiRouter::new()
        .routes(routes!(zia_login, zia_status, zia_logout))
        .routes(routes!(zcon_login, zcon_status, zcon_logout))
        .routes(routes!(zia_logout_unprefixed))
        .routes(routes!(zcon_logout_unprefixed))
        .merge(metered)
}

/// The session id from the `JSESSIONID` cookie or the `JSessionID` header.
pub fn session_token(headers: &HeaderMap) -> Option<&str> {
    cookie_in(headers, SESSION_COOKIE)
        .or_else(|| headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()))
        .map(str::trim_ascii)
        .filter(|t| !t.is_empty())
}

impl From<Denial> for ApiError {
    fn from(d: Denial) -> Self {
        match d {
            Denial::SessionNotValid => ApiError::SessionNotValid,
            Denial::NoApiSubscription => ApiError::NoApiSubscription,
            Denial::SubscriptionExpired => ApiError::SubscriptionExpired,
            Denial::NotAuthorized => ApiError::NotAuthorized,
            Denial::RateLimited(d) => ApiError::RateLimited {
                retry_after_secs: d.retry_after_secs,
            },
            Denial::KeyDisabled(d) => ApiError::ApiKeyDisabled {
                reason: d.reason.as_str(),
                note: d.note,
            },
        }
    }
}

/// A request with a live session, authorized for its method (R7, R8, R10), not metered:
/// only the session status endpoints use it.
pub struct ApiSession(pub ApiPrincipal);

/// The caller admitted by [`api_guard`]: session, rate limits and metering all passed.
pub struct ApiCall(pub ApiPrincipal);

#[derive(Clone)]
struct AdmittedSlot(Arc<Mutex<Option<ApiPrincipal>>>);

impl<S: Send + Sync> FromRequestParts<S> for ApiCall {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let slot = parts
            .extensions
            .get::<AdmittedSlot>()
            .ok_or(ApiError::SessionNotValid)?;
        let principal = slot
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .ok_or(ApiError::SessionNotValid)?;
        Ok(ApiCall(principal))
    }
}

/// The decision as an HTTP error, with the rate-limit headers when it is a 429.
pub fn denial_response(d: Denial) -> Response {
    let info = match &d {
        Denial::RateLimited(r) => Some(r.info),
        _ => None,
    };
    with_rate_headers(ApiError::from(d).into_response(), info.as_ref())
}

/// The decision on a metered API call (`Services::authorize_api_request`): the admitted
/// caller, or the answer that refuses it.
async fn admit(
    state: &AppState,
    headers: &HeaderMap,
    method: &Method,
) -> Result<ApiPrincipal, Response> {
    let Some(token) = session_token(headers) else {
        if let Some(hot) = telemetry::hot() {
            hot.decision(DecisionSurface::Api, None);
        }
        return Err(ApiError::SessionNotValid.into_response());
    };
    let decision = state.authorize_api_request(token, method.as_str()).await;
    if let Some(hot) = telemetry::hot() {
        hot.decision(DecisionSurface::Api, Some(&decision));
    }
    match decision {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(denial)) => Err(denial_response(denial)),
        Err(e) => Err(ApiError::from(e).into_response()),
    }
}

/// Every metered API call the router serves goes through here: [`admit`], then the handler,
/// then the rate-limit headers.
async fn api_guard(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let principal = match admit(&state, req.headers(), req.method()).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let rate = principal.rate;
    req.extensions_mut()
        .insert(AdmittedSlot(Arc::new(Mutex::new(Some(principal)))));
    with_rate_headers(next.run(req).await, rate.as_ref())
}

/// `GET /api/v1/apiKeys`, the API's most frequent call, as `http::dispatch` answers it
/// without the router: the same [`admit`] and key list as [`api_guard`] and [`list_keys`],
/// its headers from a template (`http::templates`).
pub async fn list_keys_direct(state: &AppState, headers: &HeaderMap, method: &Method) -> Response {
    let principal = match admit(state, headers, method).await {
        Ok(p) => p,
        Err(refused) => return refused,
    };
    let list = state.key_list_json(&principal).await;
    // The org's gate opens before the answer is written, as with the router.
    let rate = principal.rate;
    drop(principal);
    match list {
        Ok(body) => templates::rated_json(StatusCode::OK, body, rate.as_ref()),
        Err(e) => with_rate_headers(ApiError::from(e).into_response(), rate.as_ref()),
    }
}

impl FromRequestParts<AppState> for ApiSession {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = session_token(&parts.headers).ok_or(ApiError::SessionNotValid)?;
        let principal = state
            .authorize_api_request(token, parts.method.as_str())
            .await??;
        Ok(ApiSession(principal))
    }
}

/// The bearer of a session cookie or header, for logout, without any check.
pub struct SessionToken(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for SessionToken {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(SessionToken(
            session_token(&parts.headers).map(str::to_owned),
        ))
    }
}

// ------------------------------------------------------------------------- sessions

/// The cloud service API login (`POST /api/v1/authenticatedSession`, `POST /api/v1/auth`).
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"apiKey": "aBcDeFgHiJkL", "username": "admin@example.com",
    "password": "correct-horse-battery-staple", "timestamp": 1793491200000_i64}))]
pub struct ApiLoginBody {
    /// The key obfuscated with `timestamp`.
    api_key: String,
    username: String,
    password: String,
    /// Unix ms, as a number or a string.
    #[schema(value_type = i64)]
    timestamp: Value,
}

/// The session body Zscaler clients expect.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionBody {
    auth_type: &'static str,
    obfuscate_api_key: bool,
    password_expiry_time: i64,
    password_expiry_days: i64,
}

const SESSION_BODY: SessionBody = SessionBody {
    auth_type: "ADMIN_LOGIN",
    obfuscate_api_key: false,
    password_expiry_time: 0,
    password_expiry_days: 0,
};

/// Unix ms from a JSON number or a string of digits.
fn epoch_millis(field: &str, v: &Value) -> Result<i64, ApiError> {
    let parsed = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.filter(|t| *t >= 0).ok_or_else(|| {
        ApiError::invalid(
            field,
            "must be Unix time in milliseconds, as a number or a string of digits",
        )
    })
}

async fn login(state: AppState, client: Option<String>, body: ApiLoginBody) -> ApiResult<Response> {
    let timestamp_ms = epoch_millis("timestamp", &body.timestamp)?;
    let req = ApiLoginRequest {
        api_key: &body.api_key,
        username: &body.username,
        password: &body.password,
        timestamp_ms,
    };
    let outcome = state.api_login(req, client).await?;
    telemetry::login(
        LoginSurface::Api,
        match &outcome {
            ApiLoginOutcome::Opened(_) => LoginOutcome::Success,
            ApiLoginOutcome::Throttled { .. } => LoginOutcome::Throttled,
            ApiLoginOutcome::Locked { .. } => LoginOutcome::Locked,
            _ => LoginOutcome::Failure,
        },
    );
    match outcome {
        ApiLoginOutcome::Opened(token) => {
            let secure = if state.settings.secure_cookies {
                "; Secure"
            } else {
                ""
            };
            let cookie = HeaderValue::from_str(&format!(
                "{SESSION_COOKIE}={token}; Path=/; HttpOnly{secure}"
            ))
            .map_err(|e| ApiError::Internal(e.into()))?;
            let mut headers = HeaderMap::new();
            headers.insert(header::SET_COOKIE, cookie);
            Ok((headers, Json(SESSION_BODY)).into_response())
        }
        ApiLoginOutcome::Failed => Err(ApiError::AuthenticationFailed),
        // The key-guessing lock answers as the throttle does (only the password's holder
        // ever sees it).
        ApiLoginOutcome::Throttled { retry_after_secs }
        | ApiLoginOutcome::Locked { retry_after_secs } => {
            Err(ApiError::RateLimited { retry_after_secs })
        }
        ApiLoginOutcome::KeyDisabled(d) => Err(ApiError::ApiKeyDisabled {
            reason: d.reason.as_str(),
            note: d.note,
        }),
        ApiLoginOutcome::NoSubscription => Err(ApiError::NoApiSubscription),
    }
}

async fn logout(
    state: AppState,
    client: Option<String>,
    token: Option<String>,
) -> ApiResult<StatusCode> {
    if let Some(t) = token {
        state.end_api_session(&t, client).await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Open a session (ZIA).
#[utoipa::path(post, path = "/api/v1/authenticatedSession", tag = "cloud", request_body = ApiLoginBody,
    responses((status = 200, body = SessionBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn zia_login(
    State(s): State<AppState>,
    ClientAddr(c): ClientAddr,
    JsonBody(b): JsonBody<ApiLoginBody>,
) -> ApiResult<Response> {
    login(s, c, b).await
}

/// Whether the session is valid (ZIA).
#[utoipa::path(get, path = "/api/v1/authenticatedSession", tag = "cloud",
    responses((status = 200, body = SessionBody), (status = 401, body = ErrorBody)))]
async fn zia_status(_s: ApiSession) -> Json<SessionBody> {
    Json(SESSION_BODY)
}

/// End the session (ZIA).
#[utoipa::path(delete, path = "/api/v1/authenticatedSession", tag = "cloud", responses((status = 204)))]
async fn zia_logout(
    State(s): State<AppState>,
    ClientAddr(c): ClientAddr,
    SessionToken(t): SessionToken,
) -> ApiResult<StatusCode> {
    logout(s, c, t).await
}

/// End the session (ZIA, without the `/api/v1` prefix).
#[utoipa::path(delete, path = "/authenticatedSession", tag = "cloud", responses((status = 204)))]
async fn zia_logout_unprefixed(
    State(s): State<AppState>,
    ClientAddr(c): ClientAddr,
    SessionToken(t): SessionToken,
) -> ApiResult<StatusCode> {
    logout(s, c, t).await
}

/// Open a session (Cloud Connector).
#[utoipa::path(post, path = "/api/v1/auth", tag = "cloud", request_body = ApiLoginBody,
    responses((status = 200, body = SessionBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
async fn zcon_login(
    State(s): State<AppState>,
    ClientAddr(c): ClientAddr,
    JsonBody(b): JsonBody<ApiLoginBody>,
) -> ApiResult<Response> {
    login(s, c, b).await
}

/// Whether the session is valid (Cloud Connector).
#[utoipa::path(get, path = "/api/v1/auth", tag = "cloud",
    responses((status = 200, body = SessionBody), (status = 401, body = ErrorBody)))]
async fn zcon_status(_s: ApiSession) -> Json<SessionBody> {
    Json(SESSION_BODY)
}

/// End the session (Cloud Connector).
#[utoipa::path(delete, path = "/api/v1/auth", tag = "cloud", responses((status = 204)))]
async fn zcon_logout(
    State(s): State<AppState>,
    ClientAddr(c): ClientAddr,
    SessionToken(t): SessionToken,
) -> ApiResult<StatusCode> {
    logout(s, c, t).await
}

/// End the session (Cloud Connector, without the `/api/v1` prefix).
#[utoipa::path(delete, path = "/auth", tag = "cloud", responses((status = 204)))]
async fn zcon_logout_unprefixed(
    State(s): State<AppState>,
    ClientAddr(c): ClientAddr,
    SessionToken(t): SessionToken,
) -> ApiResult<StatusCode> {
    logout(s, c, t).await
}

// ------------------------------------------------------------------------- keys

/// The org's key if its id is `raw_id`; 404 otherwise.
async fn key_by_id(state: &AppState, p: &ApiPrincipal, raw_id: &str) -> ApiResult<KeyObject> {
    let id = parse_id("id", raw_id)?;
    let org = state.org_for_request(p).await?;
    match state.key_object(&org, Shown::Full)? {
        Some(k) if k.id == id => Ok(k),
        _ => Err(ApiError::NotFound(format!("No API key with id {id}"))),
    }
}

/// Changes the key through the shared service; the caller's own session ends with it.
async fn change(
    state: &AppState,
    mut p: ApiPrincipal,
    req: KeyChangeRequest,
    client: Option<String>,
) -> ApiResult<Option<KeyObject>> {
    p.release();
    let (_, key) = state.change_key_in_session(&p, req, client).await?;
    Ok(key)
}

fn some_key(key: Option<KeyObject>) -> ApiResult<KeyObject> {
    key.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a key change left no key")))
}

/// The org's key: an array of zero or one key objects.
#[utoipa::path(get, path = "/api/v1/apiKeys", tag = "cloud",
    params(("includePartnerKeys" = Option<bool>, Query, description = "accepted and ignored")),
    responses((status = 200, body = [KeyObject]), (status = 401, body = ErrorBody)))]
async fn list_keys(State(state): State<AppState>, ApiCall(p): ApiCall) -> ApiResult<Response> {
    key_list(&state, &p).await
}

/// The org's key as an array of zero or one key objects, the body of `GET /api/v1/apiKeys`.
async fn key_list(state: &AppState, p: &ApiPrincipal) -> ApiResult<Response> {
    Ok(templates::json(
        StatusCode::OK,
        state.key_list_json(p).await?,
    ))
}

/// One key by id.
#[utoipa::path(get, path = "/api/v1/apiKeys/{id}", tag = "cloud", params(("id" = i64, Path)),
    responses((status = 200, body = KeyObject), (status = 404, body = ErrorBody)))]
async fn get_key(
    State(state): State<AppState>,
    ApiCall(p): ApiCall,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyObject>> {
    Ok(Json(key_by_id(&state, &p, &id).await?))
}

/// Add a key (only when the org has none).
#[utoipa::path(post, path = "/api/v1/apiKeys", tag = "cloud",
    responses((status = 201, body = KeyObject), (status = 409, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn add_key(
    State(state): State<AppState>,
    ClientAddr(c): ClientAddr,
    ApiCall(p): ApiCall,
) -> ApiResult<Response> {
    let key = some_key(change(&state, p, KeyChangeRequest::Add, c).await?)?;
    Ok((StatusCode::CREATED, Json(key)).into_response())
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EditBody {
    key_value: String,
}

/// Replace the key with a value of the admin's choosing.
#[utoipa::path(put, path = "/api/v1/apiKeys/{id}", tag = "cloud", params(("id" = i64, Path)), request_body = EditBody,
    responses((status = 200, body = KeyObject), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn edit_key(
    State(state): State<AppState>,
    ClientAddr(c): ClientAddr,
    ApiCall(p): ApiCall,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<EditBody>,
) -> ApiResult<Json<KeyObject>> {
    key_by_id(&state, &p, &id).await?;
    let value = ApiKeyValue::parse("keyValue", &body.key_value)?;
    Ok(Json(some_key(
        change(&state, p, KeyChangeRequest::Edit(value), c).await?,
    )?))
}

/// Delete the key.
#[utoipa::path(delete, path = "/api/v1/apiKeys/{id}", tag = "cloud", params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_key(
    State(state): State<AppState>,
    ClientAddr(c): ClientAddr,
    ApiCall(p): ApiCall,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    key_by_id(&state, &p, &id).await?;
    change(&state, p, KeyChangeRequest::Delete, c).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Replace the key with a new random one.
#[utoipa::path(post, path = "/api/v1/apiKeys/{id}/regenerate", tag = "cloud", params(("id" = i64, Path)),
    responses((status = 200, body = KeyObject), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn regenerate_key(
    State(state): State<AppState>,
    ClientAddr(c): ClientAddr,
    ApiCall(p): ApiCall,
    Path(id): Path<String>,
) -> ApiResult<Json<KeyObject>> {
    key_by_id(&state, &p, &id).await?;
    Ok(Json(some_key(
        change(&state, p, KeyChangeRequest::Regenerate, c).await?,
    )?))
}

// ------------------------------------------------------------------------- audit report

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportBody {
    /// Unix ms, number or string.
    #[schema(value_type = i64)]
    start_time: Value,
    /// Unix ms, number or string.
    #[schema(value_type = i64)]
    end_time: Value,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReportStatus {
    /// `COMPLETE`, or null when no report exists.
    status: Option<&'static str>,
    progress_items_complete: usize,
    progress_end_time: Option<i64>,
    error_message: Option<String>,
    error_code: Option<String>,
}

/// Build the audit log report of the org for a time range (replaces the previous one).
#[utoipa::path(post, path = "/api/v1/auditlogEntryReport", tag = "cloud", request_body = ReportBody,
    responses((status = 204), (status = 400, body = ErrorBody)))]
async fn create_report(
    State(state): State<AppState>,
    ApiCall(p): ApiCall,
    JsonBody(body): JsonBody<ReportBody>,
) -> ApiResult<StatusCode> {
    let from = epoch_millis("startTime", &body.start_time)?;
    let to = epoch_millis("endTime", &body.end_time)?;
    if from > to {
        return Err(ApiError::invalid("endTime", "must not be before startTime"));
    }
    state
        .create_audit_report(p.admin().id, p.org_id(), Millis(from), Millis(to))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The state of the admin's audit log report.
#[utoipa::path(get, path = "/api/v1/auditlogEntryReport", tag = "cloud", responses((status = 200, body = ReportStatus)))]
async fn report_status(
    State(state): State<AppState>,
    ApiCall(p): ApiCall,
) -> ApiResult<Json<ReportStatus>> {
    let report = state.audit_report(p.admin().id).await?;
    Ok(Json(ReportStatus {
        status: report.as_ref().map(|_| "COMPLETE"),
        progress_items_complete: report.as_ref().map_or(0, |r| r.rows),
        progress_end_time: report.as_ref().map(|r| r.finished_at.0),
        error_message: None,
        error_code: None,
    }))
}

/// Cancel (discard) the admin's audit log report.
#[utoipa::path(delete, path = "/api/v1/auditlogEntryReport", tag = "cloud", responses((status = 204)))]
async fn cancel_report(
    State(state): State<AppState>,
    ApiCall(p): ApiCall,
) -> ApiResult<StatusCode> {
    state.store.delete_audit_report(p.admin().id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The report as CSV.
#[utoipa::path(get, path = "/api/v1/auditlogEntryReport/download", tag = "cloud",
    responses((status = 200, content_type = "text/csv", body = String), (status = 404, body = ErrorBody)))]
async fn download_report(
    State(state): State<AppState>,
    ApiCall(p): ApiCall,
) -> ApiResult<Response> {
    let report = state
        .audit_report(p.admin().id)
        .await?
        .ok_or_else(|| ApiError::NotFound("No audit log report; create one first".into()))?;
    Ok((
        [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
        report.csv,
    )
        .into_response())
}

// ------------------------------------------------------------------------- activation

/// ZIA's configuration activation states. keygate applies every change when it is made, so
/// nothing is ever pending: it always answers `ACTIVE`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum ActivationState {
    Active,
    Pending,
    Inprogress,
}

#[derive(Serialize, ToSchema)]
pub struct ActivationStatus {
    status: ActivationState,
}

const ACTIVE: ActivationStatus = ActivationStatus {
    status: ActivationState::Active,
};

/// The activation status, as ZIA's `GET /status` (clients also use it to check a session).
#[utoipa::path(get, path = "/api/v1/status", tag = "cloud",
    responses((status = 200, body = ActivationStatus)))]
async fn activation_status(ApiCall(_p): ApiCall) -> Json<ActivationStatus> {
    Json(ACTIVE)
}

/// Activates pending changes, as ZIA's `POST /status/activate`: there are none, every change
/// is live when answered. A write like any POST: refused to a view-only admin and while the
/// subscription is expired. Any request body (ZIA clients send `{}`) is ignored.
#[utoipa::path(post, path = "/api/v1/status/activate", tag = "cloud",
    responses((status = 200, body = ActivationStatus)))]
async fn activate(ApiCall(_p): ApiCall) -> Json<ActivationStatus> {
    Json(ACTIVE)
}
