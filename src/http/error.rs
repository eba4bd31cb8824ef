//! The one error type of the HTTP layer and its one status-code match. Internal errors are
//! logged with an id and never described to the client.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::domain::FieldError;
use crate::domain::policy::Refusal;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("authentication failed")]
    AuthenticationFailed,
    #[error("session not valid")]
    SessionNotValid,
    #[error("api key disabled")]
    ApiKeyDisabled {
        reason: &'static str,
        note: Option<String>,
    },
    #[error("subscription expired")]
    SubscriptionExpired,
    #[error("no api subscription")]
    NoApiSubscription,
    #[error("not authorized")]
    NotAuthorized,
    /// A provider operator's role or tier does not allow this operation (issue 15).
    #[error("forbidden")]
    Forbidden(String),
    #[error("disabled by the platform")]
    DisabledByPlatform,
    #[error("csrf token missing or wrong")]
    CsrfFailed,
    #[error("invalid input: {0}")]
    InvalidInput(FieldError),
    #[error("key already exists")]
    KeyAlreadyExists,
    #[error("same as current key")]
    SameAsCurrentKey,
    #[error("not found: {0}")]
    NotFound(String),
    #[error("login name taken")]
    LoginNameTaken(String),
    /// A unique name in use (a partner's).
    #[error("conflict")]
    Conflict(String),
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("request body timeout")]
    BodyTimeout,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("database unavailable")]
    Unavailable(anyhow::Error),
    /// `/readyz`: why this node should get no traffic now.
    #[error("not ready")]
    NotReady(&'static str),
    /// An operator's role does not allow this (issue 15): which role it takes.
    #[error("role not allowed")]
    RoleNotAllowed(&'static str),
    /// Would leave the platform with no active owner.
    #[error("last owner")]
    LastOwner,
    /// The bootstrap token cannot be retired yet.
    #[error("no platform owner")]
    NoPlatformOwner,
    #[error("internal error")]
    Internal(anyhow::Error),
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
    /// The offending input, on `INVALID_INPUT_ARGUMENT`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(rename = "Retry-After", skip_serializing_if = "Option::is_none")]
    pub retry_after: Option<String>,
}

impl ApiError {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        ApiError::InvalidInput(FieldError::new(field, reason))
    }

    fn parts(&self) -> (StatusCode, &'static str, String) {
        use ApiError::*;
        match self {
            AuthenticationFailed => (StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", "Authentication failed".into()),
            SessionNotValid => (StatusCode::UNAUTHORIZED, "SESSION_NOT_VALID", "The session is not valid; log in again".into()),
            ApiKeyDisabled { reason, note } => (
                StatusCode::FORBIDDEN,
                "API_KEY_DISABLED",
                match note {
                    Some(n) => format!("The API key was disabled by your service provider (reason: {reason}: {n})"),
                    None => format!("The API key was disabled by your service provider (reason: {reason})"),
                },
            ),
            SubscriptionExpired => (
                StatusCode::FORBIDDEN,
                "SUBSCRIPTION_EXPIRED",
                "The API subscription has expired: the key is read-only until it is renewed".into(),
            ),
            NoApiSubscription => (
                StatusCode::FORBIDDEN,
                "NO_API_SUBSCRIPTION",
                "The organization has no enabled API subscription".into(),
            ),
            NotAuthorized => (StatusCode::FORBIDDEN, "NOT_AUTHORIZED", "Your role does not allow this change".into()),
            Forbidden(why) => (StatusCode::FORBIDDEN, "FORBIDDEN", why.clone()),
            DisabledByPlatform => (
                StatusCode::FORBIDDEN,
                "DISABLED_BY_PLATFORM",
                "The key was disabled by the platform operator; only the platform can re-enable it".into(),
            ),
            CsrfFailed => (
                StatusCode::FORBIDDEN,
                "CSRF_TOKEN_INVALID",
                "Missing or wrong X-CSRF-Token header (take it from the login response)".into(),
            ),
            InvalidInput(e) => (StatusCode::BAD_REQUEST, "INVALID_INPUT_ARGUMENT", format!("{}: {}", e.field, e.reason)),
            KeyAlreadyExists => (
                StatusCode::CONFLICT,
                "KEY_ALREADY_EXISTS",
                "The organization already has an API key; delete the existing key before adding a new one".into(),
            ),
            SameAsCurrentKey => (
                StatusCode::BAD_REQUEST,
                "SAME_AS_CURRENT_KEY",
                "keyValue: the new key must differ from the current key".into(),
            ),
            NotFound(what) => (StatusCode::NOT_FOUND, "NOT_FOUND", what.clone()),
            LoginNameTaken(login) => {
                (StatusCode::CONFLICT, "LOGIN_NAME_TAKEN", format!("The login name {login} is already in use"))
            }
            Conflict(why) => (StatusCode::CONFLICT, "NAME_TAKEN", why.clone()),
            RateLimited { retry_after_secs } => (
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                format!("Rate limit exceeded; retry after {retry_after_secs} seconds"),
            ),
            UnsupportedMediaType => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UNSUPPORTED_MEDIA_TYPE",
                "The request body must be JSON with Content-Type: application/json".into(),
            ),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", "The request body is too large".into()),
            BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "REQUEST_TIMEOUT",
                "The request body did not arrive in time".into(),
            ),
            MethodNotAllowed => {
                (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "This method is not allowed on this path".into())
            }
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
                "The database is unavailable; try again shortly".into(),
            ),
            NotReady(reason) => (StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", (*reason).into()),
            RoleNotAllowed(what) => (
                StatusCode::FORBIDDEN,
                "OPERATOR_ROLE_NOT_ALLOWED",
                format!("Your operator role does not allow this: {what}"),
            ),
            LastOwner => (
                StatusCode::CONFLICT,
                "LAST_OWNER",
                "The platform must keep at least one active OWNER operator".into(),
            ),
            NoPlatformOwner => (
                StatusCode::CONFLICT,
                "NO_PLATFORM_OWNER",
                "Create a platform OWNER operator (and a token for it) before retiring the bootstrap token".into(),
            ),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL_ERROR", "An internal error occurred".into()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = %e, "internal error"),
            ApiError::Unavailable(e) => tracing::warn!(error = %e, "database unavailable"),
            _ => {}
        }
        let (status, code, message) = self.parts();
        let retry_after = match &self {
            ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        };
        let field = match &self {
            ApiError::InvalidInput(e) => Some(e.field.clone()),
            ApiError::SameAsCurrentKey => Some("keyValue".into()),
            _ => None,
        };
        let body = ErrorBody {
            code,
            message,
            field,
            retry_after: retry_after.map(|s| format!("{s} seconds")),
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::InvalidInput(e)
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::NotAuthorized => ApiError::NotAuthorized,
            Refusal::NoApiSubscription => ApiError::NoApiSubscription,
            Refusal::SubscriptionExpired => ApiError::SubscriptionExpired,
            Refusal::KeyDisabled(d) => ApiError::ApiKeyDisabled {
                reason: d.reason.as_str(),
                note: d.note,
            },
            Refusal::KeyAlreadyExists => ApiError::KeyAlreadyExists,
            Refusal::NoKey => ApiError::NotFound("The organization has no API key".into()),
            Refusal::SameAsCurrentKey => ApiError::SameAsCurrentKey,
            Refusal::OperatorRole { role, what } => ApiError::Forbidden(format!(
                "Your operator role {} does not allow this: {what}",
                role.as_str()
            )),
            Refusal::DisabledByPlatform => ApiError::DisabledByPlatform,
            Refusal::TooSimilar { previous } => ApiError::InvalidInput(FieldError::new(
                "keyValue",
                format!(
                    "is too similar to {} for the login protocol: a login reads only some of the \
                     key's positions, chosen by its timestamp, and at some timestamps it reads \
                     only positions where the two keys have the same characters, so the old key \
                     would still log in there; change more characters",
                    if previous {
                        "a key this organization replaced recently"
                    } else {
                        "the current key"
                    }
                ),
            )),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound("key") => {
                ApiError::NotFound("The organization has no API key".into())
            }
            StoreError::NotFound(what) => ApiError::NotFound(format!("No such {what}")),
            StoreError::LoginNameTaken(l) => ApiError::LoginNameTaken(l),
            StoreError::Conflict(why) => ApiError::Conflict(why),
            StoreError::Refused(r) => r.into(),
            StoreError::Unavailable(e) => ApiError::Unavailable(e),
            StoreError::SessionEnded => ApiError::SessionNotValid,
            StoreError::LastOwner => ApiError::LastOwner,
            StoreError::NoPlatformOwner => ApiError::NoPlatformOwner,
            StoreError::Internal(e) => ApiError::Internal(e),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
