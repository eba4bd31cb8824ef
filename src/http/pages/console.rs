//! The provider console: sign in with the provider token, then the orgs table (paged,
//! searchable) and each org's page with its key, subscription, limits, admins and audit.
//! Every action is a confirmed form post that calls the same `Services` method as the
//! provider API.

use crate::telemetry::{self, LoginOutcome, LoginSurface};
use std::collections::HashMap;

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::common::{
    AuditRow, Chrome, LOGIN_CSRF_COOKIE, RawForm, api_message, cookie, cookie_in, forbidden,
    format_millis, format_secs, html, login_csrf, login_fields, page_count, page_number, parse_utc,
    read_form, reason_label, same_origin, see_other,
};
use crate::domain::FieldError;
use crate::domain::admin::{LoginName, Password, Role};
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::ids::PartnerId;
use crate::domain::ids::{AdminId, OrgId};
use crate::domain::org::{
    CallThreshold, DisableReason, Disablement, KeyStatus, OrgName, Subscription, SubscriptionState,
};
use crate::domain::tier::{
    DisabledBy, HttpUrl, PartnerName, ProviderPrincipal, SupportEmail, Tier,
};
use crate::http::error::ApiError;
use crate::http::extract::{AppState, ClientAddr, parse_id};
use crate::service::Services;
use crate::service::auth::ResolvedProviderSession;
use crate::service::keys::Shown;
use crate::service::orgs::{AdminInput, OrgInput};
use crate::service::partners::Access;
use crate::service::throttle::Failed;
use crate::store::{AuditFilter, KeyGuessState, OrgRecord, Page, PartnerInput, PartnerRecord};

mod operators;

const AREA: &str = "console";
const SESSION_COOKIE: &str = "keygate_provider";
/// The session's CSRF token for the pages to write into forms (`HttpOnly`, only its hash is
/// stored with the session), as the portal keeps the admin's.
const CSRF_COOKIE: &str = "keygate_provider_csrf";
const ORG_PAGE_SIZE: u32 = 20;
const AUDIT_PAGE_SIZE: u32 = 10;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { see_other("/console/orgs") }))
        .route("/console/login", get(login_page).post(login))
        .route(
            "/console/operators",
            get(operators::operators_page).post(operators::create_operator),
        )
        .route(
            "/console/operators/{id}/remove",
            post(operators::remove_operator),
        )
        .route(
            "/console/operators/{id}/edit",
            post(operators::edit_operator),
        )
        .route(
            "/console/tokens",
            get(operators::tokens_page).post(operators::create_token),
        )
        .route("/console/tokens/{id}/revoke", post(operators::revoke_token))
        .route("/console/logout", post(logout))
        .route("/console/orgs", get(orgs_page).post(create_org))
        .route("/console/orgs/{id}", get(org_page))
        .route("/console/orgs/{id}/key/disable", post(disable_key))
        .route("/console/orgs/{id}/key/enable", post(enable_key))
        .route("/console/orgs/{id}/subscription", post(subscription))
        .route("/console/orgs/{id}/limits", post(limits))
        .route("/console/orgs/{id}/admins", post(add_admin))
        .route(
            "/console/orgs/{id}/admins/{admin_id}/remove",
            post(remove_admin),
        )
        .route(
            "/console/orgs/{id}/admins/{admin_id}/guesses/clear",
            post(clear_guesses),
        )
        .route("/console/orgs/{id}/base-url", post(base_url))
        .route("/console/orgs/{id}/partner", post(move_org))
        .route("/console/partners", get(partners_page).post(create_partner))
        .route(
            "/console/partners/{id}",
            get(partner_page).post(edit_partner),
        )
}

/// A signed-in provider operator, with the CSRF token the pages write into forms.
pub struct ProviderUser {
    session: ResolvedProviderSession,
    csrf: String,
}

impl ProviderUser {
    fn actor(&self) -> Actor {
        Actor::Provider(self.session.principal.clone())
    }

    /// Who is signed in, as the page header shows it.
    fn who(&self) -> String {
        let p = &self.session.principal;
        let tier = match p.tier.partner() {
            Some(id) => format!("partner {id}"),
            None => "platform".into(),
        };
        match &p.operator {
            Some(op) => format!("{} ({}, {tier})", op.name, p.role.as_str()),
            None => format!("{} ({tier})", crate::domain::audit::BOOTSTRAP_NAME),
        }
    }

    /// Who signed in (issue 15): resolved with the session on every page, so a revoked token
    /// or a removed operator ends it at once.
    pub(super) fn principal(&self) -> &ProviderPrincipal {
        &self.session.principal
    }
}

impl FromRequestParts<AppState> for ProviderUser {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let to_login = || see_other("/console/login");
        let cookie = cookie_in(&parts.headers, SESSION_COOKIE).ok_or_else(to_login)?;
        // A row in the database: any node serves it, and a logout anywhere ends it.
        let session = match state.resolve_provider_session(cookie).await {
            Ok(Some(s)) => s,
            Ok(None) => return Err(to_login()),
            Err(e) => return Err(error_page(ApiError::from(e)).await),
        };
        let csrf = cookie_in(&parts.headers, CSRF_COOKIE)
            .filter(|c| Services::provider_csrf_matches(&session, c))
            .ok_or_else(to_login)?
            .to_owned();
        Ok(ProviderUser { session, csrf })
    }
}

/// A form post from a signed-in operator: from this site, with the session's CSRF token.
pub struct ConsolePost {
    user: ProviderUser,
    form: RawForm,
}

impl FromRequest<AppState> for ConsolePost {
    type Rejection = Response;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Response> {
        let (mut parts, body) = req.into_parts();
        if !same_origin(&parts.headers, &state.settings) {
            return Err(forbidden(AREA));
        }
        let user = ProviderUser::from_request_parts(&mut parts, state).await?;
        let form = read_form(body, AREA).await?;
        if !Services::provider_csrf_matches(&user.session, &form.csrf) {
            return Err(forbidden(AREA));
        }
        Ok(ConsolePost { user, form })
    }
}

async fn error_page(e: ApiError) -> Response {
    let (status, text) = api_message(e).await;
    super::common::message(status, AREA, "Something went wrong", &text)
}

// ------------------------------------------------------------------ login and logout

#[derive(Template)]
#[template(path = "console/login.html")]
struct LoginPage {
    chrome: Chrome,
    notice: Option<&'static str>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: Option<SecretString>,
    /// An operator's login name and password instead of a token (issue 15).
    #[serde(default, rename = "loginName")]
    login_name: Option<String>,
    #[serde(default)]
    password: Option<SecretString>,
}

fn login_response(
    status: StatusCode,
    headers: &HeaderMap,
    state: &AppState,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Response {
    let (csrf, fresh) = login_csrf(headers);
    let page = LoginPage {
        chrome: Chrome::new(AREA, "Provider sign in", csrf.clone()),
        notice,
        error,
    };
    let mut response = html(status, &page);
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
    login_response(StatusCode::OK, &headers, &state, notice, None)
}

/// Checks the typed token like the provider API's bearer check, with failures throttled per
/// client address and every attempt audited.
async fn login(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    req: Request,
) -> Response {
    let (parts, fields): (_, LoginForm) = match login_fields(&state.settings, req, AREA).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    // Counted like an admin login under one fixed name: per address, and per (name, address).
    const THROTTLE_NAME: &str = "\n provider console";
    // An operator's login is counted under its name, as an admin's is (per address, per
    // (name, address), per name), in a namespace of its own.
    let typed_login = fields
        .login_name
        .as_deref()
        .map(str::trim)
        .filter(|l| !l.is_empty());
    let throttle_name = match typed_login {
        Some(l) => format!("\n operator\n{l}"),
        None => THROTTLE_NAME.to_owned(),
    };
    let throttled = match state
        .login_throttled(&throttle_name, client.as_deref())
        .await
    {
        Ok(t) => t,
        Err(e) => return error_page(e.into()).await,
    };
    let refused = if let Err(retry_after_secs) = throttled {
        telemetry::login(LoginSurface::Provider, LoginOutcome::Throttled);
        ApiError::RateLimited { retry_after_secs }
    } else {
        let token = fields
            .token
            .as_ref()
            .map(|t| t.expose_secret().trim().to_owned())
            .unwrap_or_default();
        let login = fields.login_name.as_deref().map(str::trim).unwrap_or("");
        let found = if !login.is_empty() {
            // An operator's login name and password (issue 15): a console token of its own.
            let password = fields
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            state.operator_console_login(login, &password).await
        } else if token.is_empty() {
            Ok(None)
        } else {
            // Only a live token (not revoked, not expired, of an active operator).
            state.provider_principal(&token).await
        };
        match found {
            Err(e) => ApiError::from(e),
            Ok(Some(principal)) => {
                telemetry::login(LoginSurface::Provider, LoginOutcome::Success);
                let token_id = principal.token_id.0;
                let actor = Actor::Provider(principal);
                let ctx = state.ctx(actor, client);
                let details = serde_json::json!({"via": "provider_console"});
                if let Err(e) = state
                    .store
                    .append_audit(None, AuditAction::LoginSuccess, details, &ctx)
                    .await
                {
                    return error_page(e.into()).await;
                }
                let session = match state.open_provider_session(token_id).await {
                    Ok(s) => s,
                    Err(e) => return error_page(e.into()).await,
                };
                let lifetime = state.settings.console_max_lifetime_secs;
                let mut response = see_other("/console/orgs");
                let h = response.headers_mut();
                for (name, value) in [
                    (SESSION_COOKIE, &session.cookie),
                    (CSRF_COOKIE, &session.csrf_token),
                ] {
                    h.append(
                        header::SET_COOKIE,
                        cookie(&state.settings, name, value, "/console", lifetime),
                    );
                }
                return response;
            }
            Ok(None) => {
                telemetry::login(LoginSurface::Provider, LoginOutcome::Failure);
                let failed = Failed {
                    org: None,
                    action: AuditAction::LoginFailure,
                    details: serde_json::json!({"via": "provider_console"}),
                    actor: Actor::Anonymous {
                        login: typed_login
                            .map(|l| LoginName::shown_in_audit(l, false))
                            .unwrap_or_default(),
                    },
                };
                if let Err(e) = state.login_failed(&throttle_name, client, failed).await {
                    return error_page(e.into()).await;
                }
                ApiError::AuthenticationFailed
            }
        }
    };
    let retry_after = match &refused {
        ApiError::RateLimited { retry_after_secs } => Some(*retry_after_secs),
        _ => None,
    };
    let (status, text) = api_message(refused).await;
    let mut response = login_response(status, &parts.headers, &state, None, Some(text));
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
    post: ConsolePost,
) -> Response {
    if let Err(e) = state.end_provider_session(&post.user.session).await {
        return error_page(e.into()).await;
    }
    let ctx = state.ctx(post.user.actor(), client);
    let details = serde_json::json!({"via": "provider_console"});
    if let Err(e) = state
        .store
        .append_audit(None, AuditAction::Logout, details, &ctx)
        .await
    {
        return error_page(e.into()).await;
    }
    let mut response = see_other("/console/login?done=logged_out");
    for name in [SESSION_COOKIE, CSRF_COOKIE] {
        response.headers_mut().append(
            header::SET_COOKIE,
            cookie(&state.settings, name, "", "/console", 0),
        );
    }
    response
}

// ------------------------------------------------------------------ shared views

/// Subscription, key status and usage of an org, as the table and the org page show them.
struct OrgState {
    sub_state: &'static str,
    subscription: String,
    /// `ENABLED`, `DISABLED` or `NONE`, as the provider API says.
    key_status: &'static str,
    key_reason: Option<String>,
    key_note: Option<String>,
    usage: String,
    over_threshold: bool,
}

async fn org_state(state: &AppState, org: &OrgRecord) -> Result<OrgState, ApiError> {
    let sub = org.subscription.state_at(state.clock.now());
    let status = KeyStatus::of(&org.key_presence(), sub);
    let (period, _start, calls) = state.current_usage(org.id, org.call_threshold).await?;
    let (usage, over) = match org.call_threshold {
        Some(t) => (
            format!(
                "{calls} / {} calls per {}",
                t.calls,
                period_label(t.period_seconds)
            ),
            calls >= t.calls,
        ),
        None => (
            format!("{calls} calls this {} (no threshold)", period_label(period)),
            false,
        ),
    };
    Ok(OrgState {
        sub_state: sub.as_str(),
        subscription: match (sub, org.subscription.expires_at) {
            (SubscriptionState::Active, Some(t)) => format!("Active until {}", format_secs(t)),
            (SubscriptionState::Active, None) => "Active, no expiry".into(),
            (SubscriptionState::Expired, Some(t)) => format!("Expired on {}", format_secs(t)),
            (SubscriptionState::Expired, None) => "Expired".into(),
            (SubscriptionState::NotEnabled, _) => "Not enabled".into(),
        },
        key_status: match (&org.key, status.enabled) {
            (None, _) => "NONE",
            (Some(_), true) => "ENABLED",
            (Some(_), false) => "DISABLED",
        },
        key_reason: status.reason.map(|r| format!("{} ({r})", reason_label(r))),
        key_note: status.note,
        usage,
        over_threshold: over,
    })
}

fn period_label(secs: i64) -> String {
    match secs {
        3600 => "hour".into(),
        86_400 => "day".into(),
        60 => "minute".into(),
        s if s % 86_400 == 0 => format!("{} days", s / 86_400),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s => format!("{s} s"),
    }
}

// ------------------------------------------------------------------ the orgs table

struct OrgRow {
    id: OrgId,
    name: String,
    st: OrgState,
}

/// What the create form held, to show it again after an error (never the passwords).
#[derive(Default, Deserialize)]
struct CreateForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    full_login: String,
    #[serde(default)]
    full_password: Option<SecretString>,
    #[serde(default)]
    view_login: String,
    #[serde(default)]
    view_password: Option<SecretString>,
    #[serde(default)]
    subscription: Option<String>,
    #[serde(default)]
    expires_at: String,
    #[serde(default)]
    threshold_calls: String,
    #[serde(default)]
    threshold_period: String,
    /// The platform's choice of owner; blank = the platform.
    #[serde(default)]
    partner_id: String,
}

#[derive(Template)]
#[template(path = "console/orgs.html")]
struct OrgsPage {
    chrome: Chrome,
    rows: Vec<OrgRow>,
    search: String,
    page: u32,
    pages: u32,
    total: i64,
    notice: Option<&'static str>,
    error: Option<String>,
    form: CreateForm,
    form_open: bool,
    subscription_checked: bool,
    /// For the platform's create form: whom the new org may belong to.
    partners: Vec<PartnerRecord>,
    /// OWNER/OPERATOR: the create form is shown.
    can_create: bool,
}

async fn orgs_view(
    state: &AppState,
    user: &ProviderUser,
    search: String,
    page: u32,
    notice: Option<&'static str>,
    error: Option<String>,
    form: Option<CreateForm>,
) -> Result<OrgsPage, ApiError> {
    let filter = Some(search.trim()).filter(|s| !s.is_empty());
    let (orgs, total) = state
        .orgs_for(
            user.principal(),
            Page {
                number: page,
                size: ORG_PAGE_SIZE,
            },
            filter,
        )
        .await?;
    let mut rows = Vec::with_capacity(orgs.len());
    for org in &orgs {
        rows.push(OrgRow {
            id: org.id,
            name: org.name.clone(),
            st: org_state(state, org).await?,
        });
    }
    let form_open = form.is_some();
    let form = form.unwrap_or_default();
    let subscription_checked = !form_open || form.subscription.is_some();
    Ok(OrgsPage {
        chrome: Chrome::new(AREA, "Organizations", user.csrf.clone()).signed_in(user.who()),
        can_create: user.principal().may_change_orgs(),
        partners: if user.principal().tier == Tier::Platform {
            state.store.list_partners().await?
        } else {
            Vec::new()
        },
        rows,
        search,
        page,
        pages: page_count(total, ORG_PAGE_SIZE),
        total,
        notice,
        error,
        form,
        form_open,
        subscription_checked,
    })
}

async fn orgs_page(
    State(state): State<AppState>,
    user: ProviderUser,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let search: String = q
        .get("search")
        .map(|s| s.chars().take(200).collect())
        .unwrap_or_default();
    let notice = match q.get("done").map(String::as_str) {
        Some("logged_in") => Some("Signed in."),
        _ => None,
    };
    match orgs_view(
        &state,
        &user,
        search,
        page_number(q.get("page")),
        notice,
        None,
        None,
    )
    .await
    {
        Ok(page) => html(StatusCode::OK, &page),
        Err(e) => error_page(e).await,
    }
}

fn optional_threshold(
    calls: &str,
    period: &str,
    field: &str,
) -> Result<Option<CallThreshold>, FieldError> {
    let (calls, period) = (calls.trim(), period.trim());
    if calls.is_empty() && period.is_empty() {
        return Ok(None);
    }
    let number = |v: &str, name: &str| {
        v.parse::<i64>()
            .map_err(|_| FieldError::new(format!("{field}.{name}"), "must be a whole number"))
    };
    let t = CallThreshold {
        calls: number(calls, "calls")?,
        period_seconds: if period.is_empty() {
            3600
        } else {
            number(period, "periodSeconds")?
        },
    };
    t.validate(field).map(Some)
}

fn optional_expiry(raw: &str) -> Result<Option<i64>, FieldError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    parse_utc(raw)
        .map(Some)
        .map_err(|reason| FieldError::new("expiresAt", reason))
}

fn create_input(f: &CreateForm) -> Result<OrgInput, FieldError> {
    let name = OrgName::parse("name", &f.name)?;
    let secret = |p: &Option<SecretString>| {
        p.as_ref()
            .map(|s| s.expose_secret().to_owned())
            .unwrap_or_default()
    };
    let mut admins = vec![AdminInput {
        login: LoginName::parse("admins[0].loginName", f.full_login.trim())?,
        password: Password::parse("admins[0].password", &secret(&f.full_password))?,
        role: Role::Full,
    }];
    if !f.view_login.trim().is_empty() {
        admins.push(AdminInput {
            login: LoginName::parse("admins[1].loginName", f.view_login.trim())?,
            password: Password::parse("admins[1].password", &secret(&f.view_password))?,
            role: Role::ViewOnly,
        });
    }
    Ok(OrgInput {
        name,
        subscription: Subscription {
            enabled: f.subscription.is_some(),
            expires_at: optional_expiry(&f.expires_at)?,
        },
        call_threshold: optional_threshold(
            &f.threshold_calls,
            &f.threshold_period,
            "callThreshold",
        )?,
        admins,
        partner: optional_partner(&f.partner_id)?,
    })
}

fn optional_partner(raw: &str) -> Result<Option<PartnerId>, FieldError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    raw.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(|n| Some(PartnerId(n)))
        .ok_or_else(|| FieldError::new("partnerId", "must be a positive integer"))
}

async fn create_org(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: ConsolePost,
) -> Response {
    let mut form: CreateForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let created = match create_input(&form) {
        Ok(mut input) => match state
            .owner_for_new_org(post.user.principal(), input.partner)
            .await
        {
            Ok(owner) => {
                input.partner = owner;
                state
                    .create_org(input, post.user.actor(), client)
                    .await
                    .map_err(ApiError::from)
            }
            Err(e) => Err(ApiError::from(e)),
        },
        Err(e) => Err(ApiError::from(e)),
    };
    match created {
        Ok(org) => see_other(&format!("/console/orgs/{}?done=created", org.id)),
        Err(e) => {
            let (status, text) = api_message(e).await;
            form.full_password = None;
            form.view_password = None;
            match orgs_view(
                &state,
                &post.user,
                String::new(),
                1,
                None,
                Some(text),
                Some(form),
            )
            .await
            {
                Ok(page) => html(status, &page),
                Err(e) => error_page(e).await,
            }
        }
    }
}

// ------------------------------------------------------------------ one org

struct AdminRow {
    id: AdminId,
    login: String,
    role: &'static str,
}

#[derive(Template)]
#[template(path = "console/org.html")]
struct OrgPage {
    chrome: Chrome,
    /// The owning partner's name, or "the platform".
    owner: String,
    owner_id: Option<PartnerId>,
    /// The owner's id for the move form (0 = the platform).
    owner_raw: i64,
    /// The org's own base URL (blank = the deployment's) and the one its admins see.
    base_url: String,
    effective_base_url: String,
    /// OWNER/OPERATOR: the change forms are shown; AUDITOR: read only.
    can_change: bool,
    /// The platform's OWNERs: the move form.
    can_move: bool,
    partners: Vec<PartnerRecord>,
    id: OrgId,
    name: String,
    created: String,
    st: OrgState,
    sub_enabled: bool,
    sub_active: bool,
    masked_key: Option<String>,
    key_modified: String,
    key_disabled: bool,
    threshold_calls: String,
    threshold_period: String,
    rate_limits: String,
    admins: Vec<AdminRow>,
    /// Admins whose password someone else holds (API logins with a wrong key).
    key_guesses: Vec<KeyGuessState>,
    audit: Vec<AuditRow>,
    audit_total: i64,
    page: u32,
    pages: u32,
    notice: Option<&'static str>,
    error: Option<String>,
}

fn org_notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "created" => "The organization was created.",
        "disabled" => "The organization's API key was disabled.",
        "enabled" => "The organization's API key was re-enabled.",
        "expired" => "The API subscription was expired.",
        "renewed" => "The API subscription was renewed.",
        "turned_off" => "The API subscription was turned off.",
        "limits" => "The limits were saved.",
        "admin_added" => "The admin was added.",
        "admin_removed" => "The admin was removed.",
        "base_url" => "The base URL was saved.",
        "moved" => "The organization was given to its new owner.",
        "guesses_cleared" => {
            "The admin's failed key guesses were cleared; their API logins are accepted again."
        }
        _ => return None,
    })
}

/// The org a path names as the signed-in operator may know it (`Services::org_for`): a
/// 404 page for one that does not exist or that its tier may not see.
async fn load_org(
    state: &AppState,
    user: &ProviderUser,
    raw_id: &str,
    access: Access,
) -> Result<OrgRecord, ApiError> {
    let id = OrgId(parse_id("id", raw_id)?);
    Ok(state.org_for(user.principal(), id, access).await?)
}

async fn org_view(
    state: &AppState,
    user: &ProviderUser,
    org: &OrgRecord,
    page: u32,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Result<OrgPage, ApiError> {
    let st = org_state(state, org).await?;
    let key = state.key_object(org, Shown::Masked)?;
    let admins = state.store.list_admins(org.id).await?;
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
    Ok(OrgPage {
        chrome: Chrome::new(AREA, org.name.clone(), user.csrf.clone()).signed_in(user.who()),
        owner: org
            .partner
            .as_ref()
            .map(|p| p.name.clone())
            .unwrap_or_else(|| "the platform".into()),
        owner_id: org.partner_id(),
        owner_raw: org.partner_id().map_or(0, |p| p.0),
        base_url: org.base_url.clone().unwrap_or_default(),
        effective_base_url: state.org_base_url(org),
        can_change: user.principal().may_change_orgs(),
        can_move: user.principal().may_manage_partners(),
        partners: if user.principal().may_manage_partners() {
            state.store.list_partners().await?
        } else {
            Vec::new()
        },
        id: org.id,
        name: org.name.clone(),
        created: format_millis(org.created_at.0),
        sub_enabled: org.subscription.enabled,
        sub_active: st.sub_state == SubscriptionState::Active.as_str(),
        st,
        masked_key: key.as_ref().map(|k| k.key_value.clone()),
        key_modified: key
            .as_ref()
            .map(|k| {
                format!(
                    "{} by {}",
                    format_secs(k.last_modified_time),
                    k.last_modified_by.name
                )
            })
            .unwrap_or_default(),
        key_disabled: org.key.as_ref().is_some_and(|k| k.disabled.is_some()),
        threshold_calls: org
            .call_threshold
            .map(|t| t.calls.to_string())
            .unwrap_or_default(),
        threshold_period: org
            .call_threshold
            .map(|t| t.period_seconds.to_string())
            .unwrap_or_default(),
        rate_limits: org
            .rate_limits
            .clone()
            .unwrap_or_else(|| "deployment defaults".into()),
        admins: admins
            .into_iter()
            .map(|a| AdminRow {
                id: a.id,
                login: a.login,
                role: a.role.as_str(),
            })
            .collect(),
        key_guesses: state.key_guess_states(org.id).await?,
        audit: records.iter().map(AuditRow::of).collect(),
        audit_total: total,
        page,
        pages: page_count(total, AUDIT_PAGE_SIZE),
        notice,
        error,
    })
}

async fn org_page(
    State(state): State<AppState>,
    user: ProviderUser,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let org = match load_org(&state, &user, &id, Access::Read).await {
        Ok(o) => o,
        Err(e) => return error_page(e).await,
    };
    let notice = org_notice(q.get("done").map(String::as_str));
    match org_view(
        &state,
        &user,
        &org,
        page_number(q.get("page")),
        notice,
        None,
    )
    .await
    {
        Ok(page) => html(StatusCode::OK, &page),
        Err(e) => error_page(e).await,
    }
}

/// Runs one provider action on the org named in the path: 303 back to its page on success,
/// the page with the server's message otherwise.
async fn org_action<F, Fut>(
    state: &AppState,
    user: &ProviderUser,
    raw_id: &str,
    done: &str,
    access: Access,
    action: F,
) -> Response
where
    F: FnOnce(OrgRecord) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let org = match load_org(state, user, raw_id, access).await {
        Ok(o) => o,
        Err(e) => return error_page(e).await,
    };
    let id = org.id;
    match action(org).await {
        Ok(()) => see_other(&format!("/console/orgs/{id}?done={done}")),
        Err(e) => {
            let (status, text) = api_message(e).await;
            let org = match load_org(state, user, raw_id, Access::Read).await {
                Ok(o) => o,
                Err(e) => return error_page(e).await,
            };
            match org_view(state, user, &org, 1, None, Some(text)).await {
                Ok(page) => html(status, &page),
                Err(e) => error_page(e).await,
            }
        }
    }
}

#[derive(Deserialize)]
struct DisableForm {
    #[serde(default)]
    reason: String,
    #[serde(default)]
    note: String,
}

async fn disable_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let fields: DisableForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let actor = post.user.actor();
    let by = DisabledBy::of(post.user.principal());
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "disabled",
        Access::Change,
        |org| async move {
            let reason = DisableReason::from_db(fields.reason.trim()).ok_or_else(|| {
                FieldError::new(
                    "reason",
                    "must be CALL_THRESHOLD_EXCEEDED, TERMS_VIOLATION or OTHER",
                )
            })?;
            let d = Disablement::parse(reason, Some(fields.note.as_str()))?;
            svc.disable_key(org.id, d, by, actor, client).await?;
            Ok(())
        },
    )
    .await
}

async fn enable_key(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let actor = post.user.actor();
    let tier = post.user.principal().tier;
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "enabled",
        Access::Change,
        |org| async move {
            svc.enable_key(org.id, tier, actor, client).await?;
            Ok(())
        },
    )
    .await
}

#[derive(Deserialize)]
struct SubscriptionForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    expires_at: String,
}

/// Expire now, renew (until a date or for good), or turn the subscription off.
async fn subscription(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let fields: SubscriptionForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let done = match fields.action.as_str() {
        "expire" => "expired",
        "renew" => "renewed",
        "off" => "turned_off",
        _ => "",
    };
    let actor = post.user.actor();
    let now = state.clock.now().as_secs();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        done,
        Access::Change,
        |org| async move {
            let subscription = match fields.action.as_str() {
                "expire" => Subscription {
                    enabled: true,
                    expires_at: Some(now),
                },
                "renew" => Subscription {
                    enabled: true,
                    expires_at: optional_expiry(&fields.expires_at)?,
                },
                "off" => Subscription {
                    enabled: false,
                    expires_at: org.subscription.expires_at,
                },
                _ => return Err(ApiError::invalid("action", "must be expire, renew or off")),
            };
            svc.set_subscription(org.id, subscription, actor, client)
                .await?;
            Ok(())
        },
    )
    .await
}

#[derive(Deserialize)]
struct LimitsForm {
    #[serde(default)]
    calls: String,
    #[serde(default)]
    period_seconds: String,
}

/// Sets the call threshold; the org's rate limits are kept as they are.
async fn limits(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let fields: LimitsForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let actor = post.user.actor();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "limits",
        Access::Change,
        |org| async move {
            let threshold =
                optional_threshold(&fields.calls, &fields.period_seconds, "callThreshold")?;
            svc.set_limits(org.id, threshold, org.rate_limits.clone(), actor, client)
                .await?;
            Ok(())
        },
    )
    .await
}

#[derive(Deserialize)]
struct AdminForm {
    #[serde(default)]
    login_name: String,
    #[serde(default)]
    password: Option<SecretString>,
    #[serde(default)]
    role: String,
}

async fn add_admin(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let fields: AdminForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let actor = post.user.actor();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "admin_added",
        Access::Change,
        |org| async move {
            let password = fields
                .password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default();
            let input = AdminInput {
                login: LoginName::parse("loginName", fields.login_name.trim())?,
                password: Password::parse("password", &password)?,
                role: Role::from_db(fields.role.trim())
                    .ok_or_else(|| FieldError::new("role", "must be FULL or VIEW_ONLY"))?,
            };
            svc.add_admin(org.id, input, actor, client).await?;
            Ok(())
        },
    )
    .await
}

async fn remove_admin(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path((id, admin_id)): Path<(String, String)>,
    post: ConsolePost,
) -> Response {
    let actor = post.user.actor();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "admin_removed",
        Access::Change,
        |org| async move {
            let admin = AdminId(parse_id("adminId", &admin_id)?);
            svc.remove_admin(org.id, admin, actor, client).await?;
            Ok(())
        },
    )
    .await
}

/// Clears an admin's key-guessing failures and the lock on their API logins.
async fn clear_guesses(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path((id, admin_id)): Path<(String, String)>,
    post: ConsolePost,
) -> Response {
    let actor = post.user.actor();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "guesses_cleared",
        Access::Change,
        |org| async move {
            let admin = AdminId(parse_id("adminId", &admin_id)?);
            svc.clear_key_guesses(org.id, admin, actor, client).await?;
            Ok(())
        },
    )
    .await
}

// ------------------------------------------------------------------ base URL, owner (issue 15)

#[derive(Deserialize)]
struct BaseUrlForm {
    #[serde(default)]
    base_url: String,
}

/// Sets the org's base URL (blank: the deployment's).
async fn base_url(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let fields: BaseUrlForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let actor = post.user.actor();
    let who = post.user.principal().clone();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "base_url",
        Access::Change,
        |org| async move {
            let raw = fields.base_url.trim();
            let url = if raw.is_empty() {
                None
            } else {
                Some(HttpUrl::parse("baseUrl", raw)?)
            };
            svc.set_base_url(&who, org.id, url, actor, client).await?;
            Ok(())
        },
    )
    .await
}

#[derive(Deserialize)]
struct MoveForm {
    #[serde(default)]
    partner_id: String,
}

/// Gives the org to another partner (blank: the platform). The platform's OWNERs only.
async fn move_org(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let fields: MoveForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let actor = post.user.actor();
    let who = post.user.principal().clone();
    let svc = state.clone();
    org_action(
        &state,
        &post.user,
        &id,
        "moved",
        Access::Read,
        |org| async move {
            let partner = optional_partner(&fields.partner_id)?;
            svc.move_org(&who, org.id, partner, actor, client).await?;
            Ok(())
        },
    )
    .await
}

// ------------------------------------------------------------------ partners (issue 15)

#[derive(Default, Deserialize)]
struct PartnerForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    support_url: String,
    #[serde(default)]
    support_email: String,
}

impl PartnerForm {
    fn of(p: &PartnerRecord) -> Self {
        Self {
            name: p.name.clone(),
            support_url: p.support_url.clone().unwrap_or_default(),
            support_email: p.support_email.clone().unwrap_or_default(),
        }
    }

    fn parse(&self) -> Result<PartnerInput, FieldError> {
        let url = self.support_url.trim();
        let email = self.support_email.trim();
        Ok(PartnerInput {
            name: PartnerName::parse("name", &self.name)?,
            support_url: (!url.is_empty())
                .then(|| HttpUrl::parse("supportUrl", url))
                .transpose()?,
            support_email: (!email.is_empty())
                .then(|| SupportEmail::parse("supportEmail", email))
                .transpose()?,
        })
    }
}

#[derive(Template)]
#[template(path = "console/partners.html")]
struct PartnersPage {
    chrome: Chrome,
    partners: Vec<PartnerRecord>,
    can_manage: bool,
    form: PartnerForm,
    form_open: bool,
    notice: Option<&'static str>,
    error: Option<String>,
}

async fn partners_view(
    state: &AppState,
    user: &ProviderUser,
    form: Option<PartnerForm>,
    error: Option<String>,
) -> Result<PartnersPage, ApiError> {
    Ok(PartnersPage {
        chrome: Chrome::new(AREA, "Partners", user.csrf.clone()).signed_in(user.who()),
        partners: state.partners_for(user.principal()).await?,
        can_manage: user.principal().may_manage_partners(),
        form_open: form.is_some(),
        form: form.unwrap_or_default(),
        notice: None,
        error,
    })
}

/// The partners the operator may know: all for the platform, its own for a partner.
async fn partners_page(State(state): State<AppState>, user: ProviderUser) -> Response {
    match partners_view(&state, &user, None, None).await {
        Ok(page) => html(StatusCode::OK, &page),
        Err(e) => error_page(e).await,
    }
}

async fn create_partner(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    post: ConsolePost,
) -> Response {
    let form: PartnerForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let who = post.user.principal();
    let created = match crate::service::Services::require_partner_management(who) {
        Err(e) => Err(ApiError::from(e)),
        Ok(()) => match form.parse() {
            Err(e) => Err(ApiError::from(e)),
            Ok(input) => state
                .create_partner(who, input, post.user.actor(), client)
                .await
                .map_err(ApiError::from),
        },
    };
    match created {
        Ok(p) => see_other(&format!("/console/partners/{}?done=created", p.id)),
        Err(e) => {
            let (status, text) = api_message(e).await;
            match partners_view(&state, &post.user, Some(form), Some(text)).await {
                Ok(page) => html(status, &page),
                Err(e) => error_page(e).await,
            }
        }
    }
}

#[derive(Template)]
#[template(path = "console/partner.html")]
struct PartnerPage {
    chrome: Chrome,
    partner: PartnerRecord,
    can_manage: bool,
    form: PartnerForm,
    orgs: Vec<OrgRow>,
    orgs_total: i64,
    notice: Option<&'static str>,
    error: Option<String>,
}

async fn partner_view(
    state: &AppState,
    user: &ProviderUser,
    raw_id: &str,
    form: Option<PartnerForm>,
    notice: Option<&'static str>,
    error: Option<String>,
) -> Result<PartnerPage, ApiError> {
    let id = PartnerId(parse_id("id", raw_id)?);
    let partner = state.partner_for(user.principal(), id).await?;
    let (orgs, total) = state
        .store
        .list_orgs_of(
            Page {
                number: 1,
                size: 100,
            },
            None,
            Some(partner.id),
        )
        .await?;
    let mut rows = Vec::with_capacity(orgs.len());
    for org in &orgs {
        rows.push(OrgRow {
            id: org.id,
            name: org.name.clone(),
            st: org_state(state, org).await?,
        });
    }
    Ok(PartnerPage {
        chrome: Chrome::new(AREA, partner.name.clone(), user.csrf.clone()).signed_in(user.who()),
        can_manage: user.principal().may_manage_partners(),
        form: form.unwrap_or_else(|| PartnerForm::of(&partner)),
        partner,
        orgs: rows,
        orgs_total: total,
        notice,
        error,
    })
}

async fn partner_page(
    State(state): State<AppState>,
    user: ProviderUser,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let notice = match q.get("done").map(String::as_str) {
        Some("created") => Some("The partner was created."),
        Some("saved") => Some("The partner was saved."),
        _ => None,
    };
    match partner_view(&state, &user, &id, None, notice, None).await {
        Ok(page) => html(StatusCode::OK, &page),
        Err(e) => error_page(e).await,
    }
}

async fn edit_partner(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    post: ConsolePost,
) -> Response {
    let form: PartnerForm = match post.form.fields(AREA) {
        Ok(f) => f,
        Err(r) => return r,
    };
    let who = post.user.principal();
    let saved = async {
        let pid = PartnerId(parse_id("id", &id)?);
        state.partner_for(who, pid).await?;
        crate::service::Services::require_partner_management(who)?;
        let input = form.parse()?;
        state
            .update_partner(who, pid, input, post.user.actor(), client)
            .await?;
        Ok::<_, ApiError>(pid)
    }
    .await;
    match saved {
        Ok(pid) => see_other(&format!("/console/partners/{pid}?done=saved")),
        Err(ApiError::NotFound(what)) => error_page(ApiError::NotFound(what)).await,
        Err(e) => {
            let (status, text) = api_message(e).await;
            match partner_view(&state, &post.user, &id, Some(form), None, Some(text)).await {
                Ok(page) => html(status, &page),
                Err(e) => error_page(e).await,
            }
        }
    }
}
