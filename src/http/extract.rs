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
use crate::domain::tier::ProviderPrincipal;
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
    let missing = reason.starts_with("missing field");
    let unknown = reason.starts_with("unknown field");
    let name = reason.split('`').nth(1).unwrap_or_default().to_owned();
    let top = path == "." || path.is_empty();
    let field = if missing || unknown {
        // serde_path_to_error's path ends at an unknown key already, and at the parent of a
        // missing one.
        let already = unknown && (path == name || path.ends_with(&format!(".{name}")));
        if already {
            path
        } else if top {
            if name.is_empty() { "body".into() } else { name }
        } else {
            format!("{path}.{name}")
        }
    } else if top {
        "body".into()
    } else {
        path
    };
    let reason = if missing {
        "is required".to_string()
    } else if unknown {
        let expected = reason
            .split("expected")
            .nth(1)
            .map(|s| format!("; expected{s}"))
            .unwrap_or_default();
        format!("is not a known field{expected}")
    } else {
        reason
    };
    ApiError::invalid(shorten(&field, 100), shorten(&elide_quoted(&reason), 400))
}

/// Cuts `s` to at most `max` characters.
fn shorten(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// serde quotes the offending value in its messages (`invalid type: string "…"`): cut long
/// quoted values so that an error never echoes a large input back.
fn elide_quoted(reason: &str) -> String {
    const MAX: usize = 32;
    let mut out = String::with_capacity(reason.len().min(512));
    let mut quote: Option<char> = None;
    let (mut inside, mut escaped) = (0usize, false);
    for c in reason.chars() {
        match quote {
            None => {
                if c == '"' || c == '`' {
                    quote = Some(c);
                    inside = 0;
                }
                out.push(c);
            }
            Some(q) if c == q && !escaped => {
                quote = None;
                out.push(c);
            }
            Some(q) => {
                escaped = !escaped && q == '"' && c == '\\';
                inside += 1;
                if inside <= MAX {
                    out.push(c);
                } else if inside == MAX + 1 {
                    out.push('…');
                }
            }
        }
    }
    out
}

pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid("body", "is empty; send a JSON object"));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.inner();
        // serde_json reports some type errors (an array where an enum goes) as syntax errors:
        // when the document itself is valid JSON, it is the value at `path` that is wrong.
        if inner.is_syntax()
            && !inner.to_string().contains("recursion limit")
            && serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok()
        {
            let field = if path == "." || path.is_empty() {
                "body".to_owned()
            } else {
                shorten(&path, 100)
            };
            return ApiError::invalid(field, "has the wrong type");
        }
        describe_json_error(path, inner)
    })?;
    // One document and nothing after it (`serde_json::from_slice` checks this; a bare
    // `Deserializer` does not).
    de.end()
        .map_err(|e| ApiError::invalid("body", format!("is not valid JSON ({e})")))?;
    Ok(value)
}

/// A JSON object body: `application/json` (or `+json`) required (415), size-limited (413),
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
        // serde reads a struct from an array of its fields in order too; a body is an object.
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first.is_some_and(|b| *b != b'{') {
            return Err(ApiError::invalid("body", "must be a JSON object"));
        }
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

/// Path parameters, like axum's `Path`, but a parameter that does not decode (bad
/// percent-encoding, not UTF-8) is a JSON 400 naming the path instead of axum's plain text.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::PathRejection;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(_)) => Err(ApiError::invalid(
                "path",
                "a path parameter is not valid (bad percent-encoding or not UTF-8)",
            )),
            Err(other) => Err(ApiError::Internal(anyhow::anyhow!(
                "path parameters: {}",
                other.body_text()
            ))),
        }
    }
}

/// A numeric id from the path; anything else is a 400 naming the parameter.
pub fn parse_id(field: &str, raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::invalid(field, "must be a positive integer"))
}

/// The client's address, for audit records and throttling: the TCP peer's, or behind a
/// trusted proxy the one it forwards (`http::forwarded`).
pub struct ClientAddr(pub Option<String>);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(client_address(parts, state)))
    }
}

/// The client's address: the TCP peer's, or what a trusted proxy says.
pub fn client_address(parts: &Parts, state: &AppState) -> Option<String> {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| {
        state
            .settings
            .trusted_proxies
            .client_address(c.0.ip(), &parts.headers)
            .to_string()
    })
}

/// A cookie's value from the request's `Cookie` headers; an empty value counts as absent.
/// The first pair named `name` decides, and only its value must be text (UTF-8): other
/// cookies' values need not be, a browser's `Cookie` header holds other sites' cookies too.
/// Byte-wise, the pairs found with `memchr`: this runs on every API call (BENCHMARKS.md §18).
pub fn cookie_in<'a>(headers: &'a axum::http::HeaderMap, name: &str) -> Option<&'a str> {
    let name = name.as_bytes();
    for header in headers.get_all(header::COOKIE) {
        let mut rest = header.as_bytes();
        loop {
            let (pair, next) = match memchr::memchr(b';', rest) {
                Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                None => (rest, None),
            };
            let value = pair
                .trim_ascii_start()
                .strip_prefix(name)
                .and_then(|r| r.strip_prefix(b"="));
            if let Some(value) = value {
                let value = value.trim_ascii_end();
                return crate::crypto::token::ascii_str(value).filter(|v| !v.is_empty());
            }
            match next {
                Some(next) => rest = next,
                None => break,
            }
        }
    }
    None
}

/// A provider operator, by bearer token.
pub struct ProviderAuth {
    /// Who holds the token: its operator, role and tier (issue 15). Every provider handler
    /// scopes what it reads and changes by this.
    pub principal: ProviderPrincipal,
}

impl FromRequestParts<AppState> for ProviderAuth {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Failed tokens are throttled per client address (issue 15): checked before the
        // token, so a throttled address learns nothing more.
        // The address is only worked out while some address has failed recently, or on a
        // failure: the accepted path pays one atomic load.
        let now = state.clock.now();
        if state.bearer_throttle.active()
            && let Err(retry_after_secs) = state
                .bearer_throttle
                .check(client_address(parts, state).as_deref(), now)
        {
            crate::telemetry::bearer_failure(crate::telemetry::BearerFailure::Throttled);
            return Err(ApiError::RateLimited { retry_after_secs });
        }
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The scheme is case-insensitive (RFC 9110 §11.1).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|t| !t.is_empty())
            // No token is not a guess: not counted.
            .ok_or(ApiError::AuthenticationFailed)?;
        let Some(principal) = state.provider_principal(token).await? else {
            // Counted across nodes; an attempt beyond the bound (its failures seen first on
            // other nodes) is answered as a throttled one.
            let addr = client_address(parts, state);
            return Err(match state.bearer_failed(addr.as_deref()).await {
                Ok(()) => {
                    crate::telemetry::bearer_failure(crate::telemetry::BearerFailure::Rejected);
                    ApiError::AuthenticationFailed
                }
                Err(retry_after_secs) => {
                    crate::telemetry::bearer_failure(crate::telemetry::BearerFailure::Throttled);
                    ApiError::RateLimited { retry_after_secs }
                }
            });
        };
        Ok(ProviderAuth { principal })
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
        let cookie = cookie_in(&parts.headers, CONSOLE_COOKIE).ok_or(ApiError::SessionNotValid)?;
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

#[cfg(test)]
mod tests {
    use super::cookie_in;
    use axum::http::{HeaderMap, HeaderValue, header};

    fn with_cookies(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(header::COOKIE, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn finds_the_named_cookie_and_only_it() {
        let h = with_cookies(&["JSESSIONIDX=wrong; a=b;  JSESSIONID=right ; c=d"]);
        assert_eq!(cookie_in(&h, "JSESSIONID"), Some("right"));
        assert_eq!(cookie_in(&h, "a"), Some("b"));
        assert_eq!(cookie_in(&h, "c"), Some("d"));
        assert_eq!(cookie_in(&h, "SESSION"), None);
        // A later `Cookie` header counts too; a value may hold '='.
        let h = with_cookies(&["x=1", "JSESSIONID=v=w"]);
        assert_eq!(cookie_in(&h, "JSESSIONID"), Some("v=w"));
    }

    #[test]
    fn an_empty_first_value_is_absent() {
        let h = with_cookies(&["JSESSIONID=; JSESSIONID=later"]);
        assert_eq!(cookie_in(&h, "JSESSIONID"), None);
        let h = with_cookies(&["JSESSIONID"]);
        assert_eq!(cookie_in(&h, "JSESSIONID"), None);
        let h = with_cookies(&["JSESSIONID =spaced"]);
        assert_eq!(cookie_in(&h, "JSESSIONID"), None);
    }

    #[test]
    fn only_the_value_found_must_be_text() {
        // Another cookie's bytes that are not UTF-8 (obs-text, which a header may carry) do not
        // hide the session cookie beside it.
        let mut h = HeaderMap::new();
        let raw = HeaderValue::from_bytes(b"theme=caf\xe9; JSESSIONID=ok").unwrap();
        h.append(header::COOKIE, raw);
        assert_eq!(cookie_in(&h, "JSESSIONID"), Some("ok"));
        assert_eq!(cookie_in(&h, "theme"), None);
        let raw = HeaderValue::from_bytes(b"JSESSIONID=t\xffken; JSESSIONID=later").unwrap();
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, raw);
        assert_eq!(cookie_in(&h, "JSESSIONID"), None);
    }
}
