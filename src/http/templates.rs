//! Header tables of the hot routes' successful answers, made once. Each answer starts from a
//! copy of its table: copying static names and values costs a fraction of hashing and
//! inserting each header again (callgrind, BENCHMARKS.md §13). The values that change per
//! answer come first, in a known order, and are set by position, so no name is hashed per
//! answer either.
//!
//! `http::dispatch` adds the security headers only to the answers that do not come from here
//! (refusals and errors); the router's security layer finds them present and leaves them.

use std::sync::LazyLock;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;

use super::{SECURITY_HEADERS, limit_header, number_header};
use crate::service::limits::RateInfo;

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");
const ORG_ID_HEADER: HeaderName = HeaderName::from_static("x-keygate-org-id");
const ADMIN_HEADER: HeaderName = HeaderName::from_static("x-keygate-admin");

const RATE_NAMES: [HeaderName; 3] = [RATELIMIT_LIMIT, RATELIMIT_REMAINING, RATELIMIT_RESET];

struct Templates {
    /// The security headers and `content-type: application/json`.
    json: HeaderMap,
    /// The three `x-ratelimit-*` headers, then those of `json`.
    json_rated: HeaderMap,
    /// An `/authz` allowance: `x-keygate-org-id`, `x-keygate-admin`, the three
    /// `x-ratelimit-*` headers, then `cache-control: no-store`. It goes to the reverse proxy,
    /// never to a browser (nginx, Traefik and Envoy pass on only the headers they are told
    /// to, and to the upstream request): it has no body to sniff, frame or refer from, so
    /// the browser security headers would be bytes for nothing. `no-store` stays, so that
    /// nothing between ever reuses a decision (R7: an old session dies at once).
    allowed: HeaderMap,
}

/// A placeholder for a value set per answer.
const UNSET: HeaderValue = HeaderValue::from_static("");

static TEMPLATES: LazyLock<Templates> = LazyLock::new(|| {
    let table = |pairs: &mut dyn Iterator<Item = (HeaderName, HeaderValue)>| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(name, value);
        }
        map
    };
    let json_pairs = || {
        SECURITY_HEADERS
            .into_iter()
            .map(|(n, v)| (n, HeaderValue::from_static(v)))
            .chain([(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )])
    };
    let rate_pairs = || RATE_NAMES.into_iter().map(|n| (n, UNSET));
    Templates {
        json: table(&mut json_pairs()),
        json_rated: table(&mut rate_pairs().chain(json_pairs())),
        allowed: table(
            &mut [(ORG_ID_HEADER, UNSET), (ADMIN_HEADER, UNSET)]
                .into_iter()
                .chain(rate_pairs())
                .chain([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]),
        ),
    }
});

/// Sets the first values of a table copied from a template, in order.
fn set_first(headers: &mut HeaderMap, values: impl IntoIterator<Item = HeaderValue>) {
    for (slot, value) in headers.values_mut().zip(values) {
        *slot = value;
    }
}

fn rate_values(info: &RateInfo) -> [HeaderValue; 3] {
    [
        limit_header(info.limit.into()),
        number_header(info.remaining.into()),
        number_header(info.reset_secs),
    ]
}

/// `response` with `x-ratelimit-limit`, `x-ratelimit-remaining` and `x-ratelimit-reset` when
/// there is rate information: for the answers that do not come from a template (refusals,
/// errors, the router's handlers).
pub fn with_rate_headers(mut response: Response, rate: Option<&RateInfo>) -> Response {
    if let Some(info) = rate {
        let headers = response.headers_mut();
        for (name, value) in RATE_NAMES.into_iter().zip(rate_values(info)) {
            headers.insert(name, value);
        }
    }
    response
}

fn response(status: StatusCode, headers: HeaderMap, body: Body) -> Response {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A JSON body already written, with the security headers.
pub fn json(status: StatusCode, body: Bytes) -> Response {
    response(status, TEMPLATES.json.clone(), Body::from(body))
}

/// [`json`] with the `x-ratelimit-*` headers of `rate`.
pub fn rated_json(status: StatusCode, body: Bytes, rate: Option<&RateInfo>) -> Response {
    let Some(info) = rate else {
        return json(status, body);
    };
    let mut headers = TEMPLATES.json_rated.clone();
    set_first(&mut headers, rate_values(info));
    response(status, headers, Body::from(body))
}

/// `/authz`'s 204: the org, the admin (left out if the login cannot be a header value) and
/// the rate-limit headers (left out without a rule for the method).
pub fn allowed(
    org_id: HeaderValue,
    admin: Option<HeaderValue>,
    rate: Option<&RateInfo>,
) -> Response {
    let mut headers = TEMPLATES.allowed.clone();
    let admin_missing = admin.is_none();
    let [limit, remaining, reset] = rate.map_or([UNSET, UNSET, UNSET], rate_values);
    set_first(
        &mut headers,
        [org_id, admin.unwrap_or(UNSET), limit, remaining, reset],
    );
    if admin_missing {
        headers.remove(ADMIN_HEADER);
    }
    if rate.is_none() {
        for name in RATE_NAMES {
            headers.remove(name);
        }
    }
    response(StatusCode::NO_CONTENT, headers, Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RateInfo {
        RateInfo {
            limit: 5,
            remaining: 1_000_000,
            reset_secs: 3,
        }
    }

    fn names_and_values(r: &Response) -> Vec<(String, String)> {
        r.headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn rated_json_sets_each_rate_header_and_keeps_the_security_headers() {
        let r = rated_json(StatusCode::OK, Bytes::from_static(b"[]"), Some(&info()));
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "1000000");
        assert_eq!(h["x-ratelimit-reset"], "3");
        assert_eq!(h["content-type"], "application/json");
        for (name, value) in SECURITY_HEADERS {
            assert_eq!(h[&name], value, "{name}");
        }
        assert_eq!(
            h.len(),
            SECURITY_HEADERS.len() + 4,
            "{:?}",
            names_and_values(&r)
        );
        // Without rate information: no placeholder is left behind.
        let r = rated_json(StatusCode::OK, Bytes::from_static(b"[]"), None);
        assert!(r.headers().get("x-ratelimit-limit").is_none());
        assert!(r.headers().values().all(|v| !v.is_empty()));
    }

    #[test]
    fn allowed_sets_org_admin_and_rate_and_leaves_out_what_is_missing() {
        let r = allowed(
            HeaderValue::from_static("42"),
            Some(HeaderValue::from_static("admin@example.com")),
            Some(&info()),
        );
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            names_and_values(&r),
            [
                ("x-keygate-org-id", "42"),
                ("x-keygate-admin", "admin@example.com"),
                ("x-ratelimit-limit", "5"),
                ("x-ratelimit-remaining", "1000000"),
                ("x-ratelimit-reset", "3"),
                ("cache-control", "no-store"),
            ]
            .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
        let r = allowed(HeaderValue::from_static("7"), None, None);
        assert_eq!(
            names_and_values(&r),
            [("x-keygate-org-id", "7"), ("cache-control", "no-store")]
                .map(|(n, v)| (n.to_owned(), v.to_owned()))
        );
    }
}
