//! What the handlers' annotations cannot say by themselves, added to the assembled document
//! in one place so it holds for every operation: the security schemes and which applies to
//! each operation (by the API its path belongs to), operationIds made unique (the console and
//! the cloud API both have `get_key` …), and the error answers every operation can give for
//! reasons common to all of its API (authentication, input, rate limits).

use std::collections::BTreeMap;

use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

pub const PROVIDER: &str = "provider_token";
pub const CONSOLE: &str = "console_session";
pub const CSRF: &str = "csrf_token";
pub const API_SESSION: &str = "api_session";

/// Which credentials a path's operations take.
#[derive(Clone, Copy, PartialEq)]
enum Area {
    Provider,
    Console,
    Cloud,
    Open,
}

fn area(path: &str) -> Area {
    if path.starts_with("/provider/") {
        Area::Provider
    } else if path.starts_with("/admin/") {
        Area::Console
    } else if path.starts_with("/api/")
        || path == "/authz"
        || path.ends_with("authenticatedSession")
        || path == "/auth"
    {
        Area::Cloud
    } else {
        Area::Open
    }
}

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    [
        ("get", item.get.as_mut()),
        ("put", item.put.as_mut()),
        ("post", item.post.as_mut()),
        ("delete", item.delete.as_mut()),
        ("patch", item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
    .collect()
}

fn no_scopes() -> Vec<String> {
    Vec::new()
}

/// The security an operation needs; `None`: none (a login, health).
fn security(area: Area, method: &str, path: &str) -> Option<Vec<SecurityRequirement>> {
    let login = method == "post"
        && matches!(
            path,
            "/admin/v1/login" | "/api/v1/authenticatedSession" | "/api/v1/auth"
        );
    let logout = method == "delete"
        && matches!(
            path,
            "/api/v1/authenticatedSession" | "/api/v1/auth" | "/authenticatedSession" | "/auth"
        );
    match area {
        _ if login => None,
        Area::Provider => Some(vec![SecurityRequirement::new(PROVIDER, no_scopes())]),
        Area::Console if method == "get" => {
            Some(vec![SecurityRequirement::new(CONSOLE, no_scopes())])
        }
        Area::Console => Some(vec![
            SecurityRequirement::new(CONSOLE, no_scopes()).add(CSRF, no_scopes()),
        ]),
        // Logging out without a session is answered 204 too.
        Area::Cloud if logout => Some(vec![
            SecurityRequirement::new(API_SESSION, no_scopes()),
            SecurityRequirement::default(),
        ]),
        Area::Cloud => Some(vec![SecurityRequirement::new(API_SESSION, no_scopes())]),
        Area::Open => None,
    }
}

/// The error answers common to every operation of its kind.
fn common_errors(area: Area, method: &str, path: &str, op: &Operation) -> Vec<(u16, &'static str)> {
    let mut codes = Vec::new();
    let has_body = op.request_body.is_some();
    let has_params = path.contains('{')
        || op.parameters.as_ref().is_some_and(|ps| {
            ps.iter()
                .any(|p| !matches!(p.parameter_in, ParameterIn::Header))
        });
    if has_body || has_params {
        codes.push((400, "Invalid input: `field` names what is wrong"));
    }
    if has_body {
        codes.push((413, "Request body larger than the limit"));
        codes.push((
            415,
            "Request body is not JSON (Content-Type: application/json)",
        ));
    }
    if path.contains('{') {
        codes.push((404, "No such resource"));
    }
    match security(area, method, path) {
        // Required credentials (a logout without a valid session is answered 204 too).
        Some(req) if !req.contains(&SecurityRequirement::default()) => {
            codes.push((401, "Missing, wrong or expired credentials"));
            match area {
                Area::Console if method != "get" => codes.push((
                    403,
                    "CSRF token missing or wrong, or the role does not allow it",
                )),
                Area::Provider => {
                    codes.push((403, "The operator's role does not allow it"));
                    codes.push((
                        429,
                        "Too many wrong bearer tokens from this address; Retry-After says when to try again",
                    ));
                }
                Area::Cloud => {
                    codes.push((
                        403,
                        "Key disabled, no or expired subscription, or the role does not allow it",
                    ));
                    codes.push((429, "Rate limit exceeded (x-ratelimit-* headers)"));
                }
                _ => {}
            }
        }
        _ => {}
    }
    if matches!(area, Area::Cloud | Area::Console) && security(area, method, path).is_none() {
        // Logins: throttled after repeated failures.
        codes.push((
            429,
            "Too many failed logins; Retry-After says when to try again",
        ));
    }
    codes
}

fn error_response(description: &str) -> RefOr<utoipa::openapi::Response> {
    RefOr::T(
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ErrorBody")))
                    .build(),
            )
            .build(),
    )
}

/// Completes the document assembled from the handlers' annotations.
pub fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        PROVIDER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some("The provider token"))
                .build(),
        ),
    );
    components.add_security_scheme(
        CONSOLE,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            "keygate_console",
            "The admin console session, set by POST /admin/v1/login",
        ))),
    );
    components.add_security_scheme(
        CSRF,
        SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
            "X-CSRF-Token",
            "`csrfToken` of the console login response; required on every console write",
        ))),
    );
    components.add_security_scheme(
        API_SESSION,
        SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
            "JSESSIONID",
            "The cloud service API session, set by POST /api/v1/authenticatedSession (also accepted as a JSESSIONID header)",
        ))),
    );

    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations(item) {
            if let Some(id) = &op.operation_id {
                *seen.entry(id.clone()).or_default() += 1;
            }
        }
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        let area = area(path);
        for (method, op) in operations(item) {
            // A name two APIs share gets its API's tag in front.
            if let Some(id) = op.operation_id.clone().filter(|id| seen[id] > 1) {
                let tag = op
                    .tags
                    .as_ref()
                    .and_then(|t| t.first().cloned())
                    .unwrap_or_default();
                op.operation_id = Some(format!("{tag}_{id}"));
            }
            let errors = common_errors(area, method, path, op);
            op.security = Some(security(area, method, path).unwrap_or_default());
            for (status, description) in errors {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| error_response(description));
            }
        }
    }
}
