//! Operators and their bearer tokens (issue 15): `/provider/v1/operators`,
//! `/provider/v1/tokens`, `/provider/v1/bootstrap/retire`. Scope and roles are decided in
//! `service::operators`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::error::{ApiError, ApiResult, ErrorBody};
use super::extract::{AppState, ClientAddr, JsonBody, Path, ProviderAuth, parse_id};
use crate::domain::admin::{LoginName, Password};
use crate::domain::ids::{OperatorId, PartnerId, TokenId};
use crate::domain::tier::OperatorRole;
use crate::domain::time::Millis;
use crate::service::operators::{
    IssuedToken, OpError, OperatorInput, parse_display_name, parse_label,
};
use crate::store::operators::{OperatorRecord, TokenRecord};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_operator, list_operators))
        .routes(routes!(get_operator, update_operator, remove_operator))
        .routes(routes!(create_token, list_tokens))
        .routes(routes!(get_token, revoke_token))
        .routes(routes!(rotate_token))
        .routes(routes!(retire_bootstrap))
}

impl From<OpError> for ApiError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Denied(what) => ApiError::RoleNotAllowed(what),
            OpError::Invalid(f) => ApiError::InvalidInput(f),
            OpError::Store(s) => s.into(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOperatorBody {
    login_name: String,
    display_name: String,
    #[schema(value_type = String)]
    password: SecretString,
    role: OperatorRole,
    /// A partner's operator (platform owners only; a partner's owner may omit it). Null =
    /// the platform's.
    #[serde(default)]
    partner_id: Option<PartnerId>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorList {
    items: Vec<OperatorRecord>,
}

/// Create an operator (OWNER).
#[utoipa::path(post, path = "/provider/v1/operators", tag = "provider", request_body = CreateOperatorBody,
    responses((status = 201, body = OperatorRecord), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_operator(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<CreateOperatorBody>,
) -> ApiResult<Response> {
    let input = OperatorInput {
        partner: body.partner_id,
        login: LoginName::parse("loginName", &body.login_name)?,
        display_name: parse_display_name("displayName", &body.display_name)?,
        password: Password::parse("password", body.password.expose_secret())?,
        role: body.role,
    };
    let op = state
        .create_operator(&auth.principal, input, client)
        .await?;
    Ok((StatusCode::CREATED, Json(op)).into_response())
}

/// The active operators in the caller's scope.
#[utoipa::path(get, path = "/provider/v1/operators", tag = "provider",
    responses((status = 200, body = OperatorList)))]
async fn list_operators(
    State(state): State<AppState>,
    auth: ProviderAuth,
) -> ApiResult<Json<OperatorList>> {
    Ok(Json(OperatorList {
        items: state.list_operators(&auth.principal).await?,
    }))
}

fn operator_id(raw: &str) -> ApiResult<OperatorId> {
    Ok(OperatorId(parse_id("id", raw)?))
}

/// One operator.
#[utoipa::path(get, path = "/provider/v1/operators/{id}", tag = "provider", params(("id" = i64, Path)),
    responses((status = 200, body = OperatorRecord), (status = 404, body = ErrorBody)))]
async fn get_operator(
    State(state): State<AppState>,
    auth: ProviderAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<OperatorRecord>> {
    let id = operator_id(&id)?;
    Ok(Json(state.operator_in_scope(&auth.principal, id).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateOperatorBody {
    #[serde(default)]
    display_name: Option<String>,
    /// OWNER only.
    #[serde(default)]
    role: Option<OperatorRole>,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    password: Option<SecretString>,
}

/// Change an operator's display name, role or password. An operator may change its own
/// display name and password; the rest takes an OWNER. The platform's last OWNER cannot be
/// demoted.
#[utoipa::path(patch, path = "/provider/v1/operators/{id}", tag = "provider", params(("id" = i64, Path)),
    request_body = UpdateOperatorBody,
    responses((status = 200, body = OperatorRecord), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_operator(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateOperatorBody>,
) -> ApiResult<Json<OperatorRecord>> {
    let id = operator_id(&id)?;
    let display_name = body
        .display_name
        .as_deref()
        .map(|d| parse_display_name("displayName", d))
        .transpose()?;
    let password = body
        .password
        .as_ref()
        .map(|p| Password::parse("password", p.expose_secret()))
        .transpose()?;
    if display_name.is_none() && body.role.is_none() && password.is_none() {
        return Err(ApiError::invalid(
            "displayName",
            "give at least one of displayName, role, password",
        ));
    }
    let op = state
        .update_operator(
            &auth.principal,
            id,
            display_name,
            body.role,
            password,
            client,
        )
        .await?;
    Ok(Json(op))
}

/// Remove an operator (OWNER): its tokens are revoked and its console sessions end. The
/// platform's last OWNER cannot be removed.
#[utoipa::path(delete, path = "/provider/v1/operators/{id}", tag = "provider", params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn remove_operator(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = operator_id(&id)?;
    state.remove_operator(&auth.principal, id, client).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateTokenBody {
    label: String,
    /// Unix seconds; null = never.
    #[serde(default)]
    expires_at: Option<i64>,
    /// Whose token; default: the caller's own. Another operator's takes an OWNER.
    #[serde(default)]
    operator_id: Option<OperatorId>,
}

/// A token just made: its value is shown this once and never again.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuedTokenView {
    #[serde(flatten)]
    token: TokenRecord,
    /// The bearer token. Store it now: keygate keeps only its SHA-256.
    value: String,
}

impl From<IssuedToken> for IssuedTokenView {
    fn from(t: IssuedToken) -> Self {
        IssuedTokenView {
            token: t.record,
            value: t.value,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenList {
    items: Vec<TokenRecord>,
}

/// Create a personal bearer token (256 random bits); the value is in this answer only.
#[utoipa::path(post, path = "/provider/v1/tokens", tag = "provider", request_body = CreateTokenBody,
    responses((status = 201, body = IssuedTokenView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<CreateTokenBody>,
) -> ApiResult<Response> {
    let label = parse_label("label", &body.label)?;
    let expires_at = match body.expires_at {
        None => None,
        Some(t) if (0..=253_402_300_799).contains(&t) => Some(Millis(t * 1000)),
        Some(_) => {
            return Err(ApiError::invalid(
                "expiresAt",
                "must be Unix seconds between 0 and 253402300799 (year 9999)",
            ));
        }
    };
    let issued = state
        .create_operator_token(&auth.principal, body.operator_id, label, expires_at, client)
        .await?;
    Ok((StatusCode::CREATED, Json(IssuedTokenView::from(issued))).into_response())
}

/// The tokens the caller may see (never their values): all of its scope for an OWNER, its
/// own otherwise.
#[utoipa::path(get, path = "/provider/v1/tokens", tag = "provider",
    responses((status = 200, body = TokenList)))]
async fn list_tokens(
    State(state): State<AppState>,
    auth: ProviderAuth,
) -> ApiResult<Json<TokenList>> {
    Ok(Json(TokenList {
        items: state.list_operator_tokens(&auth.principal).await?,
    }))
}

fn token_id(raw: &str) -> ApiResult<TokenId> {
    Ok(TokenId(parse_id("id", raw)?))
}

/// One token's metadata, to whoever lists it: an OPERATOR only its own (404 otherwise).
#[utoipa::path(get, path = "/provider/v1/tokens/{id}", tag = "provider", params(("id" = i64, Path)),
    responses((status = 200, body = TokenRecord), (status = 404, body = ErrorBody)))]
async fn get_token(
    State(state): State<AppState>,
    auth: ProviderAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<TokenRecord>> {
    let id = token_id(&id)?;
    Ok(Json(state.get_operator_token(&auth.principal, id).await?))
}

/// Revoke a token, at once on every node. Revoking the bootstrap token retires it (refused
/// while the platform has no OWNER operator).
#[utoipa::path(delete, path = "/provider/v1/tokens/{id}", tag = "provider", params(("id" = i64, Path)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn revoke_token(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = token_id(&id)?;
    state
        .revoke_operator_token(&auth.principal, id, client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new value for a live token (same label, operator and expiry); the old value is revoked
/// in the same transaction.
#[utoipa::path(post, path = "/provider/v1/tokens/{id}/rotate", tag = "provider", params(("id" = i64, Path)),
    responses((status = 201, body = IssuedTokenView), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn rotate_token(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let id = token_id(&id)?;
    let issued = state
        .rotate_operator_token(&auth.principal, id, client)
        .await?;
    Ok((StatusCode::CREATED, Json(IssuedTokenView::from(issued))).into_response())
}

/// Retire the bootstrap token for good (platform OWNER; refused while the platform has no
/// OWNER operator). A restart with `KEYGATE_PROVIDER_TOKEN` set does not bring it back.
#[utoipa::path(post, path = "/provider/v1/bootstrap/retire", tag = "provider",
    responses((status = 204), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn retire_bootstrap(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
) -> ApiResult<StatusCode> {
    state.retire_bootstrap(&auth.principal, client).await?;
    Ok(StatusCode::NO_CONTENT)
}
