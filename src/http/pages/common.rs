//! What both web areas share: the page frame, cookies, the CSRF and origin checks, form
//! parsing, the server's error messages, and time formatting.

use askama::Template;
use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::assets;
use crate::crypto::token::{ct_str_eq, random_token};
use crate::http::error::ApiError;
use crate::service::Settings;

/// The cookie holding the CSRF token of a login form (before there is a session).
pub const LOGIN_CSRF_COOKIE: &str = "keygate_login_csrf";

/// Largest form body read; the real forms are far smaller.
const MAX_FORM_BYTES: usize = 16 * 1024;

/// The frame around every page: title, assets, the signed-in user and the logout form.
pub struct Chrome {
    pub title: String,
    /// `portal` or `console`.
    pub area: &'static str,
    pub area_name: &'static str,
    pub css: &'static str,
    pub js: &'static str,
    /// The session's CSRF token (for forms and for the page's script).
    pub csrf: String,
    /// Who is signed in; `None` on login pages.
    pub user: Option<String>,
    pub logout_action: &'static str,
}

impl Chrome {
    pub fn new(area: &'static str, title: impl Into<String>, csrf: String) -> Self {
        Chrome {
            title: title.into(),
            area,
            area_name: if area == "console" {
                "Provider console"
            } else {
                "Admin portal"
            },
            css: assets::css_url(),
            js: assets::js_url(),
            csrf,
            user: None,
            logout_action: if area == "console" {
                "/console/logout"
            } else {
                "/portal/logout"
            },
        }
    }

    pub fn signed_in(mut self, user: String) -> Self {
        self.user = Some(user);
        self
    }
}

/// A plain message page (403 on a refused form, 404, 500).
#[derive(Template)]
#[template(path = "message.html")]
pub struct MessagePage {
    pub chrome: Chrome,
    pub heading: String,
    pub text: String,
    pub back: &'static str,
}

/// Renders `page` with `status` as an HTML response.
pub fn html<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            )],
            body,
        )
            .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "page template failed to render");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

pub fn message(status: StatusCode, area: &'static str, heading: &str, text: &str) -> Response {
    let back = if area == "console" {
        "/console/orgs"
    } else {
        "/portal/key"
    };
    html(
        status,
        &MessagePage {
            chrome: Chrome::new(area, heading, String::new()),
            heading: heading.to_owned(),
            text: text.to_owned(),
            back,
        },
    )
}

/// The answer to a form that failed the CSRF or origin check: nothing was done.
pub fn forbidden(area: &'static str) -> Response {
    message(
        StatusCode::FORBIDDEN,
        area,
        "Request refused",
        "The form was not sent from this site, or its security token is missing or wrong. \
         Nothing was changed. Reload the page and try again.",
    )
}

/// 303 to `location`: the end of every successful POST.
pub fn see_other(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => (StatusCode::SEE_OTHER, [(header::LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "bad redirect").into_response(),
    }
}

/// A `Set-Cookie` value: always `HttpOnly; SameSite=Strict`, `Secure` under https (TLS here or at the public URL).
pub fn cookie(
    settings: &Settings,
    name: &str,
    value: &str,
    path: &str,
    max_age: i64,
) -> HeaderValue {
    let secure = if settings.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path={path}; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static("invalid=; Max-Age=0"))
}

pub use crate::http::extract::cookie_in;

/// The login form's CSRF token: the one already in its cookie, or a new one to set.
pub fn login_csrf(headers: &HeaderMap) -> (String, bool) {
    match cookie_in(headers, LOGIN_CSRF_COOKIE) {
        Some(t) if t.len() <= 128 => (t.to_owned(), false),
        _ => (random_token(), true),
    }
}

/// Whether a login form's token matches its cookie.
pub fn login_csrf_ok(headers: &HeaderMap, presented: &str) -> bool {
    cookie_in(headers, LOGIN_CSRF_COOKIE)
        .is_some_and(|c| !presented.is_empty() && ct_str_eq(c, presented))
}

/// `scheme://host[:port]` of a URL, lower-cased.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next()?;
    if host.is_empty() {
        return None;
    }
    Some(format!("{scheme}://{host}").to_ascii_lowercase())
}

/// Whether a form post comes from this site: `Sec-Fetch-Site`, then `Origin`, else
/// `Referer`, must name this server (its public URL or the `Host` the request was sent to).
/// A post that carries none of them (not a browser) still needs its CSRF token.
pub fn same_origin(headers: &HeaderMap, settings: &Settings) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text(header::HeaderName::from_static("sec-fetch-site"))
        && !matches!(site, "same-origin" | "none")
    {
        return false;
    }
    let host = text(header::HOST).map(str::to_ascii_lowercase);
    let public = origin_of(&settings.public_base_url);
    let ours = |origin: &str| -> bool {
        let origin = origin.to_ascii_lowercase();
        if public.as_deref() == Some(origin.as_str()) {
            return true;
        }
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        matches!((authority, &host), (Some(a), Some(h)) if a == h)
    };
    if let Some(origin) = headers.get(header::ORIGIN) {
        return origin
            .to_str()
            .ok()
            .filter(|o| *o != "null")
            .is_some_and(ours);
    }
    if let Some(referer) = headers.get(header::REFERER) {
        return referer
            .to_str()
            .ok()
            .and_then(origin_of)
            .is_some_and(|o| ours(&o));
    }
    true
}

/// Only the CSRF field of a form, whatever else it holds.
#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

/// A form body read, with its CSRF token apart; the fields are parsed only after the token
/// has been checked.
pub struct RawForm {
    pub csrf: String,
    bytes: axum::body::Bytes,
}

impl RawForm {
    /// The form's fields. `Err` is the response to send.
    pub fn fields<T: DeserializeOwned>(&self, area: &'static str) -> Result<T, Response> {
        serde_urlencoded::from_bytes::<T>(&self.bytes).map_err(|e| {
            message(
                StatusCode::BAD_REQUEST,
                area,
                "Form not understood",
                &format!("The form could not be read ({e}). Nothing was changed."),
            )
        })
    }
}

/// Reads an `application/x-www-form-urlencoded` body. `Err` is the response to send.
pub async fn read_form(body: Body, area: &'static str) -> Result<RawForm, Response> {
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| {
            message(
                StatusCode::PAYLOAD_TOO_LARGE,
                area,
                "Form too large",
                "The form sent was too large. Nothing was changed.",
            )
        })?;
    let csrf = serde_urlencoded::from_bytes::<CsrfField>(&bytes)
        .map(|f| f.csrf)
        .unwrap_or_default();
    Ok(RawForm { csrf, bytes })
}

/// The status and message the JSON APIs answer with for `e`: the pages show the same words.
pub async fn api_message(e: ApiError) -> (StatusCode, String) {
    let response = e.into_response();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .unwrap_or_default();
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| "An internal error occurred".to_owned());
    (status, message)
}

/// A query parameter's value as a page number (1 when absent or not a number).
pub fn page_number(raw: Option<&String>) -> u32 {
    raw.and_then(|p| p.parse::<u32>().ok())
        .filter(|p| *p >= 1)
        .unwrap_or(1)
}

pub fn page_count(total: i64, size: u32) -> u32 {
    let pages = (total.max(0) as u64).div_ceil(size as u64);
    pages.clamp(1, u32::MAX as u64) as u32
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// (year, month, day) → days since 1970-01-01.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_secs(secs: i64) -> String {
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

pub fn format_millis(ms: i64) -> String {
    format_secs(ms.div_euclid(1000))
}

/// Parses `YYYY-MM-DD`, `YYYY-MM-DD HH:MM` or `YYYY-MM-DDTHH:MM[:SS]` (UTC) into Unix
/// seconds; `Err` says what is wrong.
pub fn parse_utc(input: &str) -> Result<i64, String> {
    const FORMAT: &str = "must be a UTC date and time as YYYY-MM-DD or YYYY-MM-DD HH:MM";
    let input = input.trim();
    let (date, time) = match input.split_once([' ', 'T']) {
        Some((d, t)) => (d, Some(t.trim())),
        None => (input, None),
    };
    let num = |s: &str, len: usize| -> Result<i64, String> {
        if s.len() != len || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(FORMAT.to_owned());
        }
        s.parse::<i64>().map_err(|_| FORMAT.to_owned())
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(FORMAT.to_owned());
    };
    let (y, m, d) = (num(y, 4)?, num(m, 2)?, num(d, 2)?);
    if !(1970..=9999).contains(&y) || !(1..=12).contains(&m) || d < 1 {
        return Err(FORMAT.to_owned());
    }
    let days = days_from_civil(y, m, d);
    if civil_from_days(days) != (y, m, d) {
        return Err(format!("{date} is not a date"));
    }
    let mut secs = days * 86_400;
    if let Some(t) = time {
        let parts: Vec<&str> = t.split(':').collect();
        let (h, min, s) = match parts.as_slice() {
            [h, m] => (num(h, 2)?, num(m, 2)?, 0),
            [h, m, s] => (num(h, 2)?, num(m, 2)?, num(s, 2)?),
            _ => return Err(FORMAT.to_owned()),
        };
        if h > 23 || min > 59 || s > 59 {
            return Err(FORMAT.to_owned());
        }
        secs += h * 3600 + min * 60 + s;
    }
    Ok(secs)
}

/// A reason code in words, as the key page and the console show it next to the code.
pub fn reason_label(code: &str) -> &'static str {
    match code {
        "CALL_THRESHOLD_EXCEEDED" => "Call threshold exceeded",
        "TERMS_VIOLATION" => "Terms and conditions violation",
        "OTHER" => "Other",
        "SUBSCRIPTION_EXPIRED" => "API subscription expired",
        "NO_API_SUBSCRIPTION" => "No API subscription",
        _ => "",
    }
}

/// One row of an audit trail as shown.
pub struct AuditRow {
    pub time: String,
    pub action: String,
    pub actor: String,
    pub key_suffix: String,
    pub client: String,
    pub details: String,
}

impl AuditRow {
    pub fn of(r: &crate::store::AuditRecord) -> Self {
        let details = match &r.details {
            serde_json::Value::Object(m) if m.is_empty() => String::new(),
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        AuditRow {
            time: format_millis(r.time),
            action: r.action.clone(),
            actor: match (&r.actor_tier, r.actor_name.is_empty()) {
                (_, true) => r.actor_type.to_ascii_lowercase(),
                // A provider-side actor: the operator (or the bootstrap token) and its tier.
                (Some(tier), false) => match r.operator_id {
                    Some(op) => format!(
                        "{} (operator #{op}, {})",
                        r.actor_name,
                        tier.to_ascii_lowercase()
                    ),
                    None => format!("{} ({})", r.actor_name, tier.to_ascii_lowercase()),
                },
                (None, false) => {
                    format!("{} ({})", r.actor_name, r.actor_type.to_ascii_lowercase())
                }
            },
            key_suffix: r
                .key_suffix
                .as_deref()
                .map(|s| format!("…{s}"))
                .unwrap_or_default(),
            client: r.client_address.clone().unwrap_or_default(),
            details,
        }
    }
}

/// What every login form goes through first: same origin, the login form's own CSRF token,
/// then its fields (returned with the request's head).
pub async fn login_fields<T: DeserializeOwned>(
    settings: &Settings,
    req: axum::extract::Request,
    area: &'static str,
) -> Result<(axum::http::request::Parts, T), Response> {
    let (parts, body) = req.into_parts();
    if !same_origin(&parts.headers, settings) {
        return Err(forbidden(area));
    }
    let form = read_form(body, area).await?;
    if !login_csrf_ok(&parts.headers, &form.csrf) {
        return Err(forbidden(area));
    }
    Ok((parts, form.fields(area)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(format_secs(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_secs(1_793_491_200), "2026-11-01 00:00:00 UTC");
        assert_eq!(parse_utc("2026-11-01"), Ok(1_793_491_200));
        assert_eq!(parse_utc("2026-11-01 01:02"), Ok(1_793_491_200 + 3720));
        assert_eq!(parse_utc("2026-11-01T01:02:03"), Ok(1_793_491_200 + 3723));
        assert_eq!(parse_utc("2024-02-29"), Ok(1_709_164_800));
        assert!(parse_utc("2023-02-29").is_err());
        assert!(parse_utc("tomorrow").is_err());
        assert!(parse_utc("2026-13-01").is_err());
        assert!(parse_utc("2026-11-01 24:00").is_err());
        assert_eq!(format_secs(253_402_300_799), "9999-12-31 23:59:59 UTC");
    }

    #[test]
    fn origins() {
        let settings = Settings {
            public_base_url: "https://keys.example.com".into(),
            platform: Default::default(),
            console_idle_timeout_secs: 1,
            console_max_lifetime_secs: 1,
            api_timestamp_window_secs: 1,
            api_idle_timeout_secs: 1,
            api_max_lifetime_secs: 1,
            trusted_proxies: Default::default(),
            secure_cookies: true,
        };
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("127.0.0.1:8080"));
        assert!(
            same_origin(&h, &settings),
            "no browser headers: token decides"
        );
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://keys.example.com"),
        );
        assert!(same_origin(&h, &settings));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:8080"),
        );
        assert!(same_origin(&h, &settings));
        h.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://evil.example"),
        );
        assert!(!same_origin(&h, &settings));
        h.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(!same_origin(&h, &settings));
        h.remove(header::ORIGIN);
        h.insert(
            header::REFERER,
            HeaderValue::from_static("https://evil.example/x?y"),
        );
        assert!(!same_origin(&h, &settings));
        h.insert(
            header::REFERER,
            HeaderValue::from_static("https://keys.example.com/portal/key"),
        );
        assert!(same_origin(&h, &settings));
        h.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(!same_origin(&h, &settings));
    }
}
