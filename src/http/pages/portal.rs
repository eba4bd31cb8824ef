//! The admin portal: login and the **Cloud Service API Key** page.
//!
//! The session is the admin console's (`keygate_console`, opened by
//! `Services::open_console_session`), so the page's script can call `/admin/v1` with it. The
//! session's CSRF token is kept for the pages in a second cookie (`keygate_portal_csrf`,
//! `HttpOnly`) and written into each form; a post is accepted only when its token matches the
//! session's (`Services::csrf_matches`).

use crate::telemetry::{self, LoginOutcome, LoginSurface};
use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::common::{
    AuditRow, Chrome, LOGIN_CSRF_COOKIE, RawForm, api_message, cookie, cookie_in, forbidden,
    format_secs, html, login_csrf, login_fields, page_count, page_number, read_form, reason_label,
    same_origin, see_other,
};
use crate::domain::admin::Role;
use crate::domain::key::ApiKeyValue;
use crate::domain::org::{KeyPresence, SubscriptionState};
use crate::domain::policy::{Operation, authorize};
use crate::domain::tier::Tier;
use crate::http::error::ApiError;
use crate::http::extract::{AppState, CONSOLE_COOKIE, ClientAddr};
use crate::service::Services;
use crate::service::auth::{LoginFailed, ResolvedSession};
use crate::service::keys::{KeyChangeRequest, Shown};
use crate::store::{AuditFilter, OrgRecord, Page, PartnerRecord};

const AREA: &str = "portal";
const CSRF_COOKIE: &str = "keygate_portal_csrf";
const AUDIT_PAGE_SIZE: u32 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/portal", get(|| async { see_other("/portal/key") }))
        .route("/portal/login", get(login_page).post(login))
        .route("/portal/logout", post(logout))
        .route("/portal/key", get(key_page))
        .route("/portal/key/add", post(add))
        .route("/portal/key/edit", post(edit))
        .route("/portal/key/regenerate", post(regenerate))
        .route("/portal/key/delete", post(delete))
        .route("/portal/key/reveal", post(reveal))
        .route("/portal/key/guesses/clear", post(clear_guesses))
}

/// A signed-in admin, with the CSRF token the pages write into forms.
pub struct PortalUser {
    resolved: ResolvedSession,
    csrf: String,
}

impl FromRequestParts<AppState> for PortalUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_login = || see_other("/portal/login");
        let Some(session_cookie) = cookie_in(&parts.headers, CONSOLE_COOKIE) else {
            return Err(to_login());
        };
        let resolved = match state.resolve_console_session(session_cookie).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(to_login()),
            Err(e) => return Err(error_page(ApiError::from(e)).await),
        };
        // A session opened through the JSON API has no page token: sign in here.
        let csrf = cookie_in(&parts.headers, CSRF_COOKIE)
            .filter(|c| Services::csrf_matches(&resolved.session, c))
            .ok_or_else(to_login)?
            .to_owned();
        Ok(PortalUser { resolved, csrf })
    }
}

/// A form post from a signed-in admin: from this site, with the session's CSRF token.
/// Anything else is answered 403 (or sent to the login page) before the handler runs.
pub struct PortalPost {
    user: PortalUser,
    form: RawForm,
}

impl FromRequest<AppState> for PortalPost {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        if !same_origin(&parts.headers, &state.settings) {
            return Err(forbidden(AREA));
        }
        let user = PortalUser::from_request_parts(&mut parts, state).await?;
        let form = read_form(body, AREA).await?;
        if !Services::csrf_matches(&user.resolved.session, &form.csrf) {
            return Err(forbidden(AREA));
        }
        Ok(PortalPost { user, form })
    }
}

async fn error_page(e: ApiError) -> Response {
    let (status, text) = api_message(e).await;
    super::common::message(status, AREA, "Something went wrong", &text)
}

// ------------------------------------------------------------------ login and logout

#[derive(Template)]
#[template(path = "portal/login.html")]
struct LoginPage {
    chrome: Chrome,
    login_name: String,
    notice: Option<&'static str>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    password: Option<SecretString>,
}

fn login_response(
    status: StatusCode,
    headers: &HeaderMap,
    state: &AppState,
    page: impl FnOnce(Chrome) -> LoginPage,
) -> Response {
    let (csrf, fresh) = login_csrf(headers);
    let mut response = html(status, &page(Chrome::new(AREA, "Sign in", csrf.clone())));
    if fresh {
        response.headers_mut().append(
            header::SET_COOKIE,
            cookie(&state.settings, LOGIN_CSRF_COOKIE, &csrf, "/", 3600),
        );
    }
    response
}

async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let notice = match q.get("done").map(String::as_str) {
        Some("logged_out") => Some("You have logged out."),
        _ => None,
    };
    login_response(StatusCode::OK, &headers, &state, |chrome| LoginPage {
        chrome,
        login_name: String::new(),
        notice,
        error: None,
    })
}

async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    req: Request,
) -> Response {
    let (parts, fields): (_, LoginForm) = match login_fields(&state.settings, req, AREA).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let password = fields
        .password
        .as_ref()
        .map(|p| p.expose_secret().to_owned())
        .unwrap_or_default();
    let authenticated = state
        .authenticate_admin(&fields.login_name, &password, client)
        .await;
    if let Ok(outcome) = &authenticated {
        telemetry::login(
            LoginSurface::Console,
            match outcome {
                Ok(_) => LoginOutcome::Success,
                Err(LoginFailed::Throttled { .. }) => LoginOutcome::Throttled,
                Err(_) => LoginOutcome::Failure,
            },
        );
    }
    let refused = match authenticated {
        Err(e) => ApiError::from(e),
        Ok(Err(LoginFailed::BadCredentials)) => ApiError::AuthenticationFailed,
        Ok(Err(LoginFailed::Throttled { retry_after_secs })) => {
            ApiError::RateLimited { retry_after_secs }
        }
        Ok(Ok(admin)) => {
            let session = match state.open_console_session(&admin).await {
                Ok(s) => s,
                Err(e) => return error_page(e.into()).await,
            };
            let lifetime = state.settings.console_max_lifetime_secs;
            let mut response = see_other("/portal/key");
            let h = response.headers_mut();
            h.append(
                header::SET_COOKIE,
                cookie(
                    &state.settings,
                    CONSOLE_COOKIE,
                    &session.cookie,
                    "/",
                    lifetime,
                ),
            );
            h.append(
                header::SET_COOKIE,
                cookie(
                    &state.settings,
                    CSRF_COOKIE,
                    &session.csrf_token,
                    "/portal",
                    lifetime,
                ),
            );
            return response;
        }
    };
    let retry_after = match &refused {
        ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    let (status, text) = api_message(refused).await;
    let login_name: String = fields.login_name.chars().take(128).collect();
    let mut response = login_response(status, &parts.headers, &state, |chrome| LoginPage {
        chrome,
        login_name,
        notice: None,
        error: Some(text),
    });
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

async fn logout(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    if let Err(e) = state.end_console_session(&post.user.resolved, client).await {
        return error_page(e.into()).await;
    }
    let mut response = see_other("/portal/login?done=logged_out");
    let h = response.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie(&state.settings, CONSOLE_COOKIE, "", "/", 0),
    );
    h.append(
        header::SET_COOKIE,
        cookie(&state.settings, CSRF_COOKIE, "", "/portal", 0),
    );
    response
}

// ------------------------------------------------------------------ the key page

struct KeyRow {
    masked: String,
    enabled: bool,
    status: &'static str,
    reason: Option<String>,
    note: Option<String>,
    permissions: String,
    modified_at: String,
    modified_by: String,
}

struct Banner {
    id: &'static str,
    kind: &'static str,
    text: String,
    /// Whom to contact (a disablement's notice): a support URL and e-mail.
    contact_url: Option<String>,
    contact_email: Option<String>,
}

/// Who disabled the org's key and whom to contact, as the key page tells it (issue 15).
struct DisabledNotice {
    /// "your service provider NAME", "NAME" (the platform), or "your service provider"
    /// (R9's automatic disablement and disablements from before tiers).
    by: String,
    url: Option<String>,
    email: Option<String>,
}

async fn disabled_notice(
    state: &AppState,
    org: &OrgRecord,
) -> Result<Option<DisabledNotice>, ApiError> {
    let Some(key) = org.key.as_ref().filter(|k| k.disabled.is_some()) else {
        return Ok(None);
    };
    let platform = &state.settings.platform;
    let partner_notice = |p: &PartnerRecord| DisabledNotice {
        by: format!("your service provider {}", p.name),
        url: p.support_url.clone(),
        email: p.support_email.clone(),
    };
    Ok(Some(match key.disabled_by.tier {
        Some(Tier::Platform) => DisabledNotice {
            by: platform.name.clone(),
            url: platform.support_url.clone(),
            email: platform.support_email.clone(),
        },
        Some(Tier::Partner(p)) => match org.partner.as_ref().filter(|o| o.id == p) {
            Some(owner) => partner_notice(owner),
            None => match state.store.get_partner(p).await? {
                Some(other) => partner_notice(&other),
                None => DisabledNotice {
                    by: "your service provider".into(),
                    url: None,
                    email: None,
                },
            },
        },
        // Automatic (R9) or from before tiers: whoever the org deals with.
        None => match org.partner.as_ref() {
            Some(owner) => DisabledNotice {
                by: "your service provider".into(),
                url: owner.support_url.clone(),
                email: owner.support_email.clone(),
            },
            None => DisabledNotice {
                by: "your service provider".into(),
                url: platform.support_url.clone(),
                email: platform.support_email.clone(),
            },
        },
    }))
}

#[derive(Template)]
#[template(path = "portal/key.html")]
struct KeyPage {
    chrome: Chrome,
    org_name: String,
    role_label: &'static str,
    base_url: String,
    subscription: String,
    key: Option<KeyRow>,
    revealed: Option<String>,
    can_add: bool,
    can_edit: bool,
    can_regenerate: bool,
    can_delete: bool,
    can_reveal: bool,
    banners: Vec<Banner>,
    /// Admins whose password someone else holds (API logins with a wrong key).
    key_guesses: Vec<GuessRow>,
    can_clear_guesses: bool,
    notice: Option<&'static str>,
    error: Option<String>,
    edit_error: Option<String>,
    audit: Vec<AuditRow>,
    audit_total: i64,
    page: u32,
    pages: u32,
}

struct GuessRow {
    admin_id: i64,
    login: String,
    failures: i64,
    last_at: String,
    locked: bool,
}

/// What a key page shows beyond the state: a notice, an error, a revealed value.
#[derive(Default)]
struct Extras {
    page: u32,
    notice: Option<&'static str>,
    error: Option<String>,
    edit_error: Option<String>,
    revealed: Option<String>,
}

fn notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "added" => "The Cloud Service API Key was added. You can start using it immediately.",
        "edited" => "The Cloud Service API Key was changed. The old key is no longer valid.",
        "regenerated" => {
            "A new Cloud Service API Key was generated. The old key is no longer valid."
        }
        "deleted" => {
            "The Cloud Service API Key was deleted. Your organization has no key until one is added."
        }
        _ => return None,
    })
}

fn banners(
    role: Role,
    sub: SubscriptionState,
    presence: &KeyPresence,
    can_add: bool,
    by: Option<DisabledNotice>,
) -> Vec<Banner> {
    let mut out = Vec::new();
    match sub {
        SubscriptionState::NotEnabled => out.push(Banner {
            id: "not-enabled",
            kind: "warning",
            text: "Your organization's API subscription is not enabled: there is no access to \
                   the cloud service API and no API key can be added. Contact your service \
                   provider to enable it."
                .into(),
            contact_url: None,
            contact_email: None,
        }),
        SubscriptionState::Expired => out.push(Banner {
            id: "expired",
            kind: "warning",
            text: "Your API subscription has expired. This page is read-only: you cannot make \
                   any modifications. Your existing API key is still valid but disabled, and is \
                   re-enabled after your subscription is renewed. Contact your service provider."
                .into(),
            contact_url: None,
            contact_email: None,
        }),
        SubscriptionState::Active => {}
    }
    if let KeyPresence::Disabled(d) = presence {
        let note = d
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        let by = by.unwrap_or(DisabledNotice {
            by: "your service provider".into(),
            url: None,
            email: None,
        });
        out.push(Banner {
            id: "disabled",
            kind: "error",
            text: format!(
                "Your cloud service API key was disabled by {who} (reason: {} \
                 — {}{note}). You cannot add, edit, regenerate or delete it. Contact {who} to \
                 re-enable the key.",
                d.reason.as_str(),
                reason_label(d.reason.as_str()),
                who = by.by,
            ),
            contact_url: by.url,
            contact_email: by.email,
        });
    }
    if role == Role::ViewOnly {
        out.push(Banner {
            id: "view-only",
            kind: "info",
            text: "You have view-only access: you can view the Cloud Service API Key page but \
                   not change the key."
                .into(),
            contact_url: None,
            contact_email: None,
        });
    }
    if matches!(presence, KeyPresence::Absent) && can_add {
        out.push(Banner {
            id: "no-key",
            kind: "info",
            text: "Your organization has no cloud service API key. Add one to use the cloud \
                   service API."
                .into(),
            contact_url: None,
            contact_email: None,
        });
    }
    out
}

async fn render_key_page(
    state: &AppState,
    user: &PortalUser,
    extras: Extras,
    status: StatusCode,
) -> Response {
    match key_page_view(state, user, extras).await {
        Ok(page) => html(status, &page),
        Err(e) => error_page(e).await,
    }
}

async fn key_page_view(
    state: &AppState,
    user: &PortalUser,
    extras: Extras,
) -> Result<KeyPage, ApiError> {
    let admin = &user.resolved.admin;
    let org = state.admin_org(admin).await?;
    let sub = org.subscription.state_at(state.clock.now());
    let presence = org.key_presence();
    // The same table the server decides with.
    let allowed = |op| authorize(op, admin.role, sub, &presence).is_ok();
    let key = state.key_object(&org, Shown::Masked)?.map(|k| KeyRow {
        masked: k.key_value,
        enabled: k.enabled,
        status: if k.enabled { "Enabled" } else { "Disabled" },
        reason: k
            .disabled_reason
            .map(|r| format!("{} ({r})", reason_label(r))),
        note: k.disabled_note,
        permissions: k.permissions.join(", "),
        modified_at: format_secs(k.last_modified_time),
        modified_by: k.last_modified_by.name,
    });
    let page = extras.page.max(1);
    let (records, total) = state
        .store
        .list_audit(
            AuditFilter {
                org: Some(org.id),
                ..Default::default()
            },
            Page {
                number: page,
                size: AUDIT_PAGE_SIZE,
            },
        )
        .await?;
    let can_add = allowed(Operation::Add);
    Ok(KeyPage {
        chrome: Chrome::new(AREA, "Cloud Service API Key", user.csrf.clone())
            .signed_in(admin.login.clone()),
        org_name: org.name.clone(),
        role_label: match admin.role {
            Role::Full => "Full access",
            Role::ViewOnly => "View only",
        },
        base_url: state.org_base_url(&org),
        subscription: match (sub, org.subscription.expires_at) {
            (SubscriptionState::Active, Some(t)) => format!("Active until {}", format_secs(t)),
            (SubscriptionState::Active, None) => "Active".into(),
            (SubscriptionState::Expired, Some(t)) => format!("Expired on {}", format_secs(t)),
            (SubscriptionState::Expired, None) => "Expired".into(),
            (SubscriptionState::NotEnabled, _) => "Not enabled".into(),
        },
        banners: banners(
            admin.role,
            sub,
            &presence,
            can_add,
            disabled_notice(state, &org).await?,
        ),
        key_guesses: state
            .key_guess_states(org.id)
            .await?
            .into_iter()
            .map(|g| GuessRow {
                admin_id: g.admin_id.0,
                login: g.login_name,
                failures: g.failures,
                last_at: g
                    .last_at
                    .map(|ms| format_secs(ms / 1000))
                    .unwrap_or_default(),
                locked: g.locked,
            })
            .collect(),
        can_clear_guesses: admin.role == Role::Full,
        can_add,
        can_edit: allowed(Operation::Edit),
        can_regenerate: allowed(Operation::Regenerate),
        can_delete: allowed(Operation::Delete),
        can_reveal: allowed(Operation::Reveal),
        key,
        revealed: extras.revealed,
        notice: extras.notice,
        error: extras.error,
        edit_error: extras.edit_error,
        audit: records.iter().map(AuditRow::of).collect(),
        audit_total: total,
        page,
        pages: page_count(total, AUDIT_PAGE_SIZE),
    })
}

async fn key_page(
    State(state): State<AppState>,
    user: PortalUser,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let extras = Extras {
        page: page_number(q.get("page")),
        notice: notice(q.get("done").map(String::as_str)),
        ..Default::default()
    };
    render_key_page(&state, &user, extras, StatusCode::OK).await
}

/// Applies a change through the one key service; 303 to the page on success, the page with
/// the server's message otherwise.
async fn apply(
    state: &AppState,
    user: &PortalUser,
    request: Result<KeyChangeRequest, ApiError>,
    client: Option<String>,
    done: &str,
    in_edit_dialog: bool,
) -> Response {
    let outcome = match request {
        Ok(request) => state
            .change_key(&user.resolved.admin, request, client)
            .await
            .map(|_| ())
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match outcome {
        Ok(()) => see_other(&format!("/portal/key?done={done}")),
        Err(e) => {
            let (status, text) = api_message(e).await;
            let extras = if in_edit_dialog {
                Extras {
                    edit_error: Some(text),
                    ..Default::default()
                }
            } else {
                Extras {
                    error: Some(text),
                    ..Default::default()
                }
            };
            render_key_page(state, user, extras, status).await
        }
    }
}

async fn add(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    apply(
        &state,
        &post.user,
        Ok(KeyChangeRequest::Add),
        client,
        "added",
        false,
    )
    .await
}

async fn regenerate(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    apply(
        &state,
        &post.user,
        Ok(KeyChangeRequest::Regenerate),
        client,
        "regenerated",
        false,
    )
    .await
}

async fn delete(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    apply(
        &state,
        &post.user,
        Ok(KeyChangeRequest::Delete),
        client,
        "deleted",
        false,
    )
    .await
}

#[derive(Deserialize)]
struct EditForm {
    #[serde(default)]
    key_value: String,
}

async fn edit(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    let fields: EditForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    // The same parse, field name and message as `PUT /admin/v1/apiKey`.
    let request = ApiKeyValue::parse("keyValue", &fields.key_value)
        .map(KeyChangeRequest::Edit)
        .map_err(ApiError::from);
    apply(&state, &post.user, request, client, "edited", true).await
}

/// Without script, Reveal posts here and the page comes back with the full value in its
/// body (never in a URL); with script, the page asks `/admin/v1/apiKey/reveal` instead.
/// Either way the server audits the reveal.
async fn reveal(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    match state.reveal_key(&post.user.resolved.admin, client).await {
        Ok(value) => {
            let extras = Extras {
                revealed: Some(value.expose().to_owned()),
                ..Default::default()
            };
            render_key_page(&state, &post.user, extras, StatusCode::OK).await
        }
        Err(e) => {
            let (status, text) = api_message(e.into()).await;
            let extras = Extras {
                error: Some(text),
                ..Default::default()
            };
            render_key_page(&state, &post.user, extras, status).await
        }
    }
}

#[derive(Deserialize)]
struct ClearGuessesForm {
    #[serde(default)]
    admin_id: String,
}

/// A FULL admin clears another (or their own) admin's key-guessing lock.
async fn clear_guesses(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: PortalPost,
) -> Response {
    let fields: ClearGuessesForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let admin = &post.user.resolved.admin;
    let outcome = match crate::http::extract::parse_id("adminId", &fields.admin_id) {
        Err(e) => Err(e),
        Ok(_) if admin.role != Role::Full => Err(ApiError::NotAuthorized),
        Ok(id) => state
            .clear_key_guesses(
                admin.org_id,
                crate::domain::ids::AdminId(id),
                admin.actor(),
                client,
            )
            .await
            .map_err(ApiError::from),
    };
    let (extras, status) = match outcome {
        Ok(()) => (
            Extras {
                notice: Some(
                    "The admin's failed key guesses were cleared; their API logins are accepted again.",
                ),
                ..Default::default()
            },
            StatusCode::OK,
        ),
        Err(e) => {
            let (status, text) = api_message(e).await;
            (
                Extras {
                    error: Some(text),
                    ..Default::default()
                },
                status,
            )
        }
    };
    render_key_page(&state, &post.user, extras, status).await
}
