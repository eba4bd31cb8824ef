//! Admin console API (`/admin/v1`): login name + password, cookie session, CSRF header on
//! every write. The key operations call the same service as the cloud service API.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{AppState, CONSOLE_COOKIE, ClientAddr, ConsoleAuth, JsonBody, QueryParams};
use super::views::{AuditPage, OrgSummary, PageQuery};
use crate::domain::admin::Role;
use crate::domain::ids::{AdminId, OrgId};
use crate::domain::key::ApiKeyValue;
use crate::service::auth::LoginFailed;
use crate::service::keys::{KeyChangeRequest, KeyObject, Shown};
use crate::store::{AuditFilter, KeyGuessState};
use crate::telemetry::{self, LoginOutcome, LoginSurface};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(org))
        .routes(routes!(get_key, add_key, edit_key, delete_key))
        .routes(routes!(regenerate_key))
        .routes(routes!(reveal_key))
        .routes(routes!(audit))
        .routes(routes!(key_guesses))
        .routes(routes!(clear_key_guesses))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginBody {
    login_name: String,
    #[schema(value_type = String)]
    password: SecretString,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdminSummary {
    pub id: AdminId,
    pub login_name: String,
    pub role: Role,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginResponse {
    /// Send back as `X-CSRF-Token` on every write.
    csrf_token: String,
    admin: AdminSummary,
    org: OrgSummary,
}

fn session_cookie(state: &AppState, value: &str, max_age: i64) -> HeaderValue {
    let secure = if state.settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{CONSOLE_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .expect("cookie built from URL-safe base64 is a valid header")
}

/// Log in with login name and password.
#[utoipa::path(post, path = "/admin/v1/login", tag = "console", request_body = LoginBody,
    responses((status = 200, body = LoginResponse), (status = 401, body = ErrorBody)))]
async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    let admin = state
        .authenticate_admin(&body.login_name, body.password.expose_secret(), client)
        .await?;
    telemetry::login(
        LoginSurface::Console,
        match &admin {
            Ok(_) => LoginOutcome::Success,
            Err(LoginFailed::Throttled { .. }) => LoginOutcome::Throttled,
            Err(_) => LoginOutcome::Failure,
        },
    );
    let admin = admin.map_err(|e| match e {
        LoginFailed::BadCredentials => ApiError::AuthenticationFailed,
        LoginFailed::Throttled { retry_after_secs } => ApiError::RateLimited { retry_after_secs },
    })?;
    let org = state.admin_org(&admin).await?;
    let session = state.open_console_session(&admin).await?;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::SET_COOKIE,
        session_cookie(
            &state,
            &session.cookie,
            state.settings.console_max_lifetime_secs,
        ),
    );
    let body = LoginResponse {
        csrf_token: session.csrf_token.clone(),
        admin: AdminSummary {
            id: admin.id,
            login_name: admin.login.clone(),
            role: admin.role,
        },
        org: OrgSummary::of(&state, &org),
    };
    Ok((headers, Json(body)).into_response())
}

/// End the console session.
#[utoipa::path(post, path = "/admin/v1/logout", tag = "console",
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn logout(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ConsoleAuth(s): ConsoleAuth,
) -> ApiResult<Response> {
    state.end_console_session(&s, client).await?;
    let mut headers = HeaderMap::new();
    headers.insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    Ok((StatusCode::NO_CONTENT, headers).into_response())
}

/// The admin's org: subscription state and key status.
#[utoipa::path(get, path = "/admin/v1/org", tag = "console", responses((status = 200, body = OrgSummary)))]
async fn org(
    State(state): State<AppState>,
    ConsoleAuth(s): ConsoleAuth,
) -> ApiResult<Json<OrgSummary>> {
    let org = state.admin_org(&s.admin).await?;
    Ok(Json(OrgSummary::of(&state, &org)))
}

/// The org's admins whose API logins failed with the right password but a wrong key: someone
/// holds their password. `locked`: their API logins are refused until a FULL admin or the
/// provider clears it.
#[utoipa::path(get, path = "/admin/v1/keyGuesses", tag = "console",
    responses((status = 200, body = Vec<KeyGuessState>), (status = 401, body = ErrorBody)))]
async fn key_guesses(
    State(state): State<AppState>,
    ConsoleAuth(s): ConsoleAuth,
) -> ApiResult<Json<Vec<KeyGuessState>>> {
    Ok(Json(state.key_guess_states(s.admin.org_id).await?))
}

/// Clear an admin's key-guessing failures and the lock on their API logins (FULL admins).
#[utoipa::path(delete, path = "/admin/v1/keyGuesses/{adminId}", tag = "console",
    params(("adminId" = i64, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn clear_key_guesses(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ConsoleAuth(s): ConsoleAuth,
    super::extract::Path(admin_id): super::extract::Path<String>,
) -> ApiResult<StatusCode> {
    if s.admin.role != Role::Full {
        return Err(ApiError::NotAuthorized);
    }
    let admin_id = AdminId(super::extract::parse_id("adminId", &admin_id)?);
    state
        .clear_key_guesses(s.admin.org_id, admin_id, s.admin.actor(), client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The org's key, value masked; 404 when the org has none.
#[utoipa::path(get, path = "/admin/v1/apiKey", tag = "console",
    responses((status = 200, body = KeyObject), (status = 404, body = ErrorBody)))]
async fn get_key(
    State(state): State<AppState>,
    ConsoleAuth(s): ConsoleAuth,
) -> ApiResult<Json<KeyObject>> {
    let org = state.admin_org(&s.admin).await?;
    state
        .key_object(&org, Shown::Masked)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound("The organization has no API key".into()))
}

async fn change(
    state: &AppState,
    s: &ConsoleAuth,
    req: KeyChangeRequest,
    client: Option<String>,
) -> ApiResult<Option<KeyObject>> {
    let (_, key) = state.change_key(&s.0.admin, req, client).await?;
    Ok(key)
}

fn created(key: Option<KeyObject>, status: StatusCode) -> ApiResult<Response> {
    let key = key.ok_or_else(|| ApiError::Internal(anyhow::anyhow!("a key change left no key")))?;
    Ok((status, Json(key)).into_response())
}

/// Add a key (only when the org has none).
#[utoipa::path(post, path = "/admin/v1/apiKey", tag = "console",
    responses((status = 201, body = KeyObject), (status = 409, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn add_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    auth: ConsoleAuth,
) -> ApiResult<Response> {
    let key = change(&state, &auth, KeyChangeRequest::Add, client).await?;
    created(key, StatusCode::CREATED)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EditKeyBody {
    /// 12 letters or digits, different from the current key.
    pub key_value: String,
}

/// Replace the key with a value of the admin's choosing.
#[utoipa::path(put, path = "/admin/v1/apiKey", tag = "console", request_body = EditKeyBody,
    responses((status = 200, body = KeyObject), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn edit_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    auth: ConsoleAuth,
    JsonBody(body): JsonBody<EditKeyBody>,
) -> ApiResult<Response> {
    let value = ApiKeyValue::parse("keyValue", &body.key_value)?;
    let key = change(&state, &auth, KeyChangeRequest::Edit(value), client).await?;
    created(key, StatusCode::OK)
}

/// Replace the key with a new random one.
#[utoipa::path(post, path = "/admin/v1/apiKey/regenerate", tag = "console",
    responses((status = 200, body = KeyObject), (status = 403, body = ErrorBody)))]
async fn regenerate_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    auth: ConsoleAuth,
) -> ApiResult<Response> {
    let key = change(&state, &auth, KeyChangeRequest::Regenerate, client).await?;
    created(key, StatusCode::OK)
}

/// Delete the key; the org has none until an admin adds one.
#[utoipa::path(delete, path = "/admin/v1/apiKey", tag = "console",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn delete_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    auth: ConsoleAuth,
) -> ApiResult<StatusCode> {
    change(&state, &auth, KeyChangeRequest::Delete, client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevealedKey {
    pub key_value: String,
    pub org_id: OrgId,
}

/// The full key value (audited).
#[utoipa::path(post, path = "/admin/v1/apiKey/reveal", tag = "console",
    responses((status = 200, body = RevealedKey), (status = 404, body = ErrorBody)))]
async fn reveal_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    ConsoleAuth(s): ConsoleAuth,
) -> ApiResult<Json<RevealedKey>> {
    let value = state.reveal_key(&s.admin, client).await?;
    Ok(Json(RevealedKey {
        key_value: value.expose().to_owned(),
        org_id: s.admin.org_id,
    }))
}

/// The org's audit records, newest first.
#[utoipa::path(get, path = "/admin/v1/audit", tag = "console", params(PageQuery),
    responses((status = 200, body = AuditPage)))]
async fn audit(
    State(state): State<AppState>,
    ConsoleAuth(s): ConsoleAuth,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<AuditPage>> {
    let page = q.page()?;
    let filter = AuditFilter {
        org: Some(s.admin.org_id),
        ..Default::default()
    };
    let (items, total) = state.store.list_audit(filter, page).await?;
    Ok(Json(AuditPage {
        items,
        page: page.number,
        page_size: page.size,
        total,
    }))
}
