//! Extractors that turn every kind of bad input into an `ApiError` with a code, the field and
//! the reason, instead of axum's plain-text rejections.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use serde::de::DeserializeOwned;

use super::error::ApiError;
use crate::service::Services;
use crate::service::auth::ResolvedSession;

pub type AppState = Arc<Services>;

pub const CONSOLE_COOKIE: &str = "keygate_console";
pub const CSRF_HEADER: &str = "x-csrf-token";

/// Names the field a serde error is about, and says why without serde's line/column noise.
fn describe_json_error(path: String, err: &serde_json::Error) -> ApiError {
    if err.is_syntax() || err.is_eof() {
        return ApiError::invalid("body", format!("is not valid JSON ({err})"));
    }
    let text = err.to_string();
    let reason = match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    };
    let from_backticks = || reason.split('`').nth(1).map(str::to_owned);
    let field = if path == "." || path.is_empty() {
        if reason.starts_with("missing field") || reason.starts_with("unknown field") {
            from_backticks().unwrap_or_else(|| "body".into())
        } else {
            "body".into()
        }
    } else if reason.starts_with("missing field") || reason.starts_with("unknown field") {
        format!("{path}.{}", from_backticks().unwrap_or_default())
    } else {
        path
    };
    let reason = if reason.starts_with("missing field") {
        "is required".to_string()
    } else if reason.starts_with("unknown field") {
        let expected = reason
            .split("expected")
            .nth(1)
            .map(|s| format!("; expected{s}"))
            .unwrap_or_default();
        format!("is not a known field{expected}")
    } else {
        reason
    };
    ApiError::invalid(field, reason)
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "is empty; send a JSON object"));
    }
    let de = &mut serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        describe_json_error(path, e.inner())
    })?;
    Ok(value)
}

/// A JSON body: `application/json` (or `+json`) required (415), size-limited (413),
/// and a 400 that names the field otherwise.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let is_json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|m| {
                let m = m.trim().to_ascii_lowercase();
                m == "application/json" || (m.starts_with("application/") && m.ends_with("+json"))
            })
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|r| {
            if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge
            } else {
                ApiError::invalid("body", "could not be read")
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Query parameters with the same error shape as bodies.
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or("");
        serde_urlencoded::from_str(query)
            .map(QueryParams)
            .map_err(|e| ApiError::invalid("query", e.to_string()))
    }
}

/// A numeric id from the path; anything else is a 400 naming the parameter.
pub fn parse_id(field: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid(field, "must be a positive integer"))
}

/// The peer address, for audit records and throttling.
pub struct ClientAddr(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(
            parts
                .extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip().to_string()),
        ))
    }
}

pub fn cookie_value<'a>(parts: &'a Parts, name: &str) -> Option<&'a str> {
    parts
        .headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A provider operator, by bearer token.
pub struct ProviderAuth {
    pub token_id: i64,
}

impl FromRequestParts<AppState> for ProviderAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(ApiError::AuthenticationFailed)?;
        let token_id = state
            .provider_token_id(token)
            .await?
            .ok_or(ApiError::AuthenticationFailed)?;
        Ok(ProviderAuth { token_id })
    }
}

/// An admin with a live console session. Any method other than GET/HEAD must also carry the
/// session's CSRF token in `X-CSRF-Token`.
pub struct ConsoleAuth(pub ResolvedSession);

impl FromRequestParts<AppState> for ConsoleAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let cookie = cookie_value(parts, CONSOLE_COOKIE).ok_or(ApiError::SessionNotValid)?;
        let resolved = state
            .resolve_console_session(cookie)
            .await?
            .ok_or(ApiError::SessionNotValid)?;
        if parts.method != Method::GET && parts.method != Method::HEAD {
            let presented = parts
                .headers
                .get(CSRF_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if !Services::csrf_matches(&resolved.session, presented) {
                return Err(ApiError::CsrfFailed);
            }
        }
        Ok(ConsoleAuth(resolved))
    }
}
