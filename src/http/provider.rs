//! Provider API (`/provider/v1`), bearer token.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::console::AdminSummary;
use super::error::{ApiResult, ErrorBody};
use super::extract::{AppState, ClientAddr, JsonBody, Path, ProviderAuth, QueryParams, parse_id};
use super::views::{AuditPage, PageQuery, SubscriptionView};
use crate::domain::FieldError;
use crate::domain::admin::{LoginName, Password, Role};
use crate::domain::audit::Actor;
use crate::domain::ids::{AdminId, OrgId, PartnerId};
use crate::domain::limits::RateRule;
use crate::domain::org::{
    CallThreshold, DisableReason, Disablement, KeyStatus, OrgName, Subscription,
};
use crate::domain::tier::{DisabledBy, HttpUrl, PartnerName, SupportEmail};
use crate::service::keys::{KeyObject, Shown};
use crate::service::orgs::{AdminInput, OrgInput};
use crate::service::partners::Access;
use crate::store::{AuditFilter, KeyGuessState, OrgRecord, PartnerInput, PartnerRecord, UsageRow};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_org, list_orgs))
        .routes(routes!(get_org))
        .routes(routes!(set_subscription))
        .routes(routes!(disable_key))
        .routes(routes!(enable_key))
        .routes(routes!(add_admin))
        .routes(routes!(remove_admin))
        .routes(routes!(clear_key_guesses))
        .routes(routes!(org_audit))
        .routes(routes!(set_limits))
        .routes(routes!(usage))
        .routes(routes!(move_org))
        .routes(routes!(set_base_url))
        .routes(routes!(create_partner, list_partners))
        .routes(routes!(get_partner, update_partner))
}

fn actor(auth: &ProviderAuth) -> Actor {
    Actor::Provider(auth.principal.clone())
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AdminBody {
    login_name: String,
    #[schema(value_type = String)]
    password: SecretString,
    role: Role,
}

impl AdminBody {
    fn parse(&self, prefix: &str) -> Result<AdminInput, FieldError> {
        Ok(AdminInput {
            login: LoginName::parse(&format!("{prefix}loginName"), &self.login_name)?,
            password: Password::parse(&format!("{prefix}password"), self.password.expose_secret())?,
            role: self.role,
        })
    }
}

#[derive(Deserialize, ToSchema, Clone, Copy)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SubscriptionBody {
    enabled: bool,
    /// Unix seconds; null = never. A time in the past expires the subscription now.
    expires_at: Option<i64>,
}

impl SubscriptionBody {
    fn parse(self, prefix: &str) -> Result<Subscription, FieldError> {
        if let Some(t) = self.expires_at
            && !(0..=253_402_300_799).contains(&t)
        {
            return Err(FieldError::new(
                format!("{prefix}expiresAt"),
                "must be Unix seconds between 0 and 253402300799 (year 9999)",
            ));
        }
        Ok(Subscription {
            enabled: self.enabled,
            expires_at: self.expires_at,
        })
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOrgBody {
    name: String,
    #[serde(default)]
    admins: Vec<AdminBody>,
    subscription: SubscriptionBody,
    #[serde(default)]
    call_threshold: Option<CallThreshold>,
    /// The partner that will own the org (the platform only; a partner's orgs are its own).
    #[serde(default)]
    partner_id: Option<PartnerId>,
}

/// An org as the provider sees it; the key value is always masked here.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgView {
    id: OrgId,
    name: String,
    /// Unix ms.
    created_at: i64,
    subscription: SubscriptionView,
    call_threshold: Option<CallThreshold>,
    /// Per-org rate limits; null = the deployment defaults.
    rate_limits: Option<Vec<RateRule>>,
    /// Calls in the current metering period.
    usage: CurrentUsage,
    key_generation: i64,
    /// The owning partner; null = the platform's own org.
    partner_id: Option<PartnerId>,
    partner_name: Option<String>,
    /// The org's own cloud service API base URL; null = the deployment's.
    base_url: Option<String>,
    api_key: Option<KeyObject>,
    /// `ENABLED`, `DISABLED` or `NONE`.
    key_status: &'static str,
    key_disabled_reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admins: Option<Vec<AdminSummary>>,
    /// Admins whose API logins failed with the right password but a wrong key: someone holds
    /// their password. `locked`: API logins refused until cleared.
    key_guesses: Vec<KeyGuessState>,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CurrentUsage {
    period_seconds: i64,
    /// Unix seconds.
    period_start: i64,
    calls: i64,
    /// Calls left before the threshold trips; null without a threshold.
    remaining: Option<i64>,
}

async fn current_usage(state: &AppState, org: &OrgRecord) -> ApiResult<CurrentUsage> {
    let (period_seconds, period_start, calls) =
        state.current_usage(org.id, org.call_threshold).await?;
    Ok(CurrentUsage {
        period_seconds,
        period_start,
        calls,
        remaining: org.call_threshold.map(|t| (t.calls - calls).max(0)),
    })
}

async fn org_view(state: &AppState, org: &OrgRecord, with_admins: bool) -> ApiResult<OrgView> {
    let now = state.clock.now();
    let sub = org.subscription.state_at(now);
    let status = KeyStatus::of(&org.key_presence(), sub);
    let admins = if with_admins {
        let list = state.store.list_admins(org.id).await?;
        Some(
            list.into_iter()
                .map(|a| AdminSummary {
                    id: a.id,
                    login_name: a.login,
                    role: a.role,
                })
                .collect(),
        )
    } else {
        None
    };
    Ok(OrgView {
        id: org.id,
        name: org.name.clone(),
        created_at: org.created_at.0,
        subscription: SubscriptionView {
            enabled: org.subscription.enabled,
            expires_at: org.subscription.expires_at,
            state: sub.as_str(),
        },
        call_threshold: org.call_threshold,
        rate_limits: org
            .rate_limits
            .as_deref()
            .and_then(|r| serde_json::from_str(r).ok()),
        usage: current_usage(state, org).await?,
        key_generation: org.key_generation,
        partner_id: org.partner_id(),
        partner_name: org.partner.as_ref().map(|p| p.name.clone()),
        base_url: org.base_url.clone(),
        api_key: state.key_object(org, Shown::Masked)?,
        key_status: match (&org.key, status.enabled) {
            (None, _) => "NONE",
            (Some(_), true) => "ENABLED",
            (Some(_), false) => "DISABLED",
        },
        key_disabled_reason: status.reason,
        admins,
        key_guesses: state.key_guess_states(org.id).await?,
    })
}

/// The org a path names, as the caller may know it (`Services::org_for`): 404 for one that
/// does not exist or that the caller's tier may not see, 403 for a change its role forbids.
async fn load_org(
    state: &AppState,
    auth: &ProviderAuth,
    id: &str,
    access: Access,
) -> ApiResult<OrgRecord> {
    let id = OrgId(parse_id("id", id)?);
    Ok(state.org_for(&auth.principal, id, access).await?)
}

/// Onboard an org with its admins; an enabled subscription provisions its key (R2).
#[utoipa::path(post, path = "/provider/v1/orgs", tag = "provider", request_body = CreateOrgBody,
    responses((status = 201, body = OrgView), (status = 400, body = ErrorBody),
        (status = 404, description = "`partnerId` names no partner the caller may see", body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn create_org(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<CreateOrgBody>,
) -> ApiResult<Response> {
    let partner = state
        .owner_for_new_org(&auth.principal, body.partner_id)
        .await?;
    let name = OrgName::parse("name", &body.name)?;
    let subscription = body.subscription.parse("subscription.")?;
    let call_threshold = body
        .call_threshold
        .map(|t| t.validate("callThreshold"))
        .transpose()?;
    if body.admins.len() > 100 {
        return Err(FieldError::new("admins", "at most 100 admins at creation").into());
    }
    let mut admins = Vec::with_capacity(body.admins.len());
    for (i, a) in body.admins.iter().enumerate() {
        let parsed = a.parse(&format!("admins[{i}]."))?;
        if admins.iter().any(|x: &AdminInput| x.login == parsed.login) {
            return Err(FieldError::new(
                format!("admins[{i}].loginName"),
                "appears twice in this request",
            )
            .into());
        }
        admins.push(parsed);
    }
    let org = state
        .create_org(
            OrgInput {
                name,
                subscription,
                call_threshold,
                admins,
                partner,
            },
            actor(&auth),
            client,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(org_view(&state, &org, true).await?),
    )
        .into_response())
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgPage {
    items: Vec<OrgView>,
    page: u32,
    page_size: u32,
    total: i64,
}

/// Orgs by id, paged; `search` filters by name.
#[utoipa::path(get, path = "/provider/v1/orgs", tag = "provider", params(PageQuery),
    responses((status = 200, body = OrgPage)))]
async fn list_orgs(
    State(state): State<AppState>,
    auth: ProviderAuth,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<OrgPage>> {
    let page = q.page()?;
    let search = q.search.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (orgs, total) = state.orgs_for(&auth.principal, page, search).await?;
    let mut items = Vec::with_capacity(orgs.len());
    for org in &orgs {
        items.push(org_view(&state, org, false).await?);
    }
    Ok(Json(OrgPage {
        items,
        page: page.number,
        page_size: page.size,
        total,
    }))
}

/// One org, with its admins.
#[utoipa::path(get, path = "/provider/v1/orgs/{id}", tag = "provider", params(("id" = i64, Path)),
    responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
async fn get_org(
    State(state): State<AppState>,
    auth: ProviderAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<OrgView>> {
    let org = load_org(&state, &auth, &id, Access::Read).await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

/// Enable, turn off, expire or renew the API subscription (R10, R10a).
#[utoipa::path(put, path = "/provider/v1/orgs/{id}/subscription", tag = "provider", params(("id" = i64, Path)),
    request_body = SubscriptionBody, responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
async fn set_subscription(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SubscriptionBody>,
) -> ApiResult<Json<OrgView>> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let subscription = body.parse("")?;
    let org = state
        .set_subscription(org.id, subscription, actor(&auth), client)
        .await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DisableBody {
    reason: DisableReason,
    #[serde(default)]
    note: Option<String>,
}

/// Disable the org's key (R8).
#[utoipa::path(post, path = "/provider/v1/orgs/{id}/apiKey/disable", tag = "provider", params(("id" = i64, Path)),
    request_body = DisableBody, responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
async fn disable_key(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<DisableBody>,
) -> ApiResult<Json<OrgView>> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let d = Disablement::parse(body.reason, body.note.as_deref())?;
    let by = DisabledBy::of(&auth.principal);
    let org = state
        .disable_key(org.id, d, by, actor(&auth), client)
        .await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

/// Re-enable the org's key.
#[utoipa::path(post, path = "/provider/v1/orgs/{id}/apiKey/enable", tag = "provider", params(("id" = i64, Path)),
    responses((status = 200, body = OrgView), (status = 404, body = ErrorBody)))]
async fn enable_key(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
) -> ApiResult<Json<OrgView>> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let org = state
        .enable_key(org.id, auth.principal.tier, actor(&auth), client)
        .await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

/// Add an admin to the org.
#[utoipa::path(post, path = "/provider/v1/orgs/{id}/admins", tag = "provider", params(("id" = i64, Path)),
    request_body = AdminBody, responses((status = 201, body = AdminSummary), (status = 409, body = ErrorBody)))]
async fn add_admin(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AdminBody>,
) -> ApiResult<Response> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let input = body.parse("")?;
    let admin = state.add_admin(org.id, input, actor(&auth), client).await?;
    let view = AdminSummary {
        id: admin.id,
        login_name: admin.login,
        role: admin.role,
    };
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Remove an admin; their console sessions end.
#[utoipa::path(delete, path = "/provider/v1/orgs/{id}/admins/{adminId}", tag = "provider",
    params(("id" = i64, Path), ("adminId" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn remove_admin(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path((id, admin_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let admin_id = AdminId(parse_id("adminId", &admin_id)?);
    state
        .remove_admin(org.id, admin_id, actor(&auth), client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Clear an admin's key-guessing failures and the lock on their API logins (after making sure
/// the password someone else holds was changed).
#[utoipa::path(delete, path = "/provider/v1/orgs/{id}/admins/{adminId}/keyGuesses", tag = "provider",
    params(("id" = i64, Path), ("adminId" = i64, Path)),
    responses((status = 204), (status = 404, body = ErrorBody)))]
async fn clear_key_guesses(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path((id, admin_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let admin_id = AdminId(parse_id("adminId", &admin_id)?);
    state
        .clear_key_guesses(org.id, admin_id, actor(&auth), client)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The org's audit records, newest first.
#[utoipa::path(get, path = "/provider/v1/orgs/{id}/audit", tag = "provider", params(("id" = i64, Path), PageQuery),
    responses((status = 200, body = AuditPage)))]
async fn org_audit(
    State(state): State<AppState>,
    auth: ProviderAuth,
    Path(id): Path<String>,
    QueryParams(q): QueryParams<PageQuery>,
) -> ApiResult<Json<AuditPage>> {
    let org = load_org(&state, &auth, &id, Access::Read).await?;
    let page = q.page()?;
    let (items, total) = state
        .store
        .list_audit(
            AuditFilter {
                org: Some(org.id),
                ..Default::default()
            },
            page,
        )
        .await?;
    Ok(Json(AuditPage {
        items,
        page: page.number,
        page_size: page.size,
        total,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LimitsBody {
    /// null = no threshold.
    #[serde(default)]
    call_threshold: Option<CallThreshold>,
    /// null = the deployment defaults (ZIA's).
    #[serde(default)]
    rate_limits: Option<Vec<RateRule>>,
}

/// Set the org's call threshold (R9) and rate limits.
#[utoipa::path(put, path = "/provider/v1/orgs/{id}/limits", tag = "provider", params(("id" = i64, Path)),
    request_body = LimitsBody, responses((status = 200, body = OrgView), (status = 400, body = ErrorBody)))]
async fn set_limits(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<LimitsBody>,
) -> ApiResult<Json<OrgView>> {
    let org = load_org(&state, &auth, &id, Access::Change).await?;
    let threshold = body
        .call_threshold
        .map(|t| t.validate("callThreshold"))
        .transpose()?;
    let rules = body
        .rate_limits
        .map(|r| RateRule::validate_all(r, "rateLimits"))
        .transpose()?;
    let stored = rules
        .map(|r| serde_json::to_string(&r))
        .transpose()
        .map_err(|e| super::error::ApiError::Internal(e.into()))?;
    let org = state
        .set_limits(org.id, threshold, stored, actor(&auth), client)
        .await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageView {
    org_id: OrgId,
    call_threshold: Option<CallThreshold>,
    current: CurrentUsage,
    /// Stored periods, newest first (written every second).
    history: Vec<UsageRow>,
}

/// The org's API calls per period, against its threshold.
#[utoipa::path(get, path = "/provider/v1/orgs/{id}/usage", tag = "provider", params(("id" = i64, Path)),
    responses((status = 200, body = UsageView), (status = 404, body = ErrorBody)))]
async fn usage(
    State(state): State<AppState>,
    auth: ProviderAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<UsageView>> {
    let org = load_org(&state, &auth, &id, Access::Read).await?;
    Ok(Json(UsageView {
        org_id: org.id,
        call_threshold: org.call_threshold,
        current: current_usage(&state, &org).await?,
        history: state.store.list_usage(org.id, 48).await?,
    }))
}

// ------------------------------------------------------------------ partners (issue 15)

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MoveOrgBody {
    /// The new owner; null = the platform's own org.
    partner_id: Option<PartnerId>,
}

/// Give the org to another partner, or to the platform (the platform's OWNERs only). The
/// org's visibility moves with it: the old partner no longer sees it.
#[utoipa::path(put, path = "/provider/v1/orgs/{id}/partner", tag = "provider", params(("id" = i64, Path)),
    request_body = MoveOrgBody, responses((status = 200, body = OrgView), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn move_org(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<MoveOrgBody>,
) -> ApiResult<Json<OrgView>> {
    let id = OrgId(parse_id("id", &id)?);
    let org = state
        .move_org(&auth.principal, id, body.partner_id, actor(&auth), client)
        .await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BaseUrlBody {
    /// The cloud service API base URL the org's admins use, exactly as shown to them
    /// (absolute http(s)); null = the deployment's.
    base_url: Option<String>,
}

/// Set the org's cloud service API base URL (PRODUCT.md §3): the platform or the owning
/// partner.
#[utoipa::path(put, path = "/provider/v1/orgs/{id}/baseUrl", tag = "provider", params(("id" = i64, Path)),
    request_body = BaseUrlBody, responses((status = 200, body = OrgView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn set_base_url(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<BaseUrlBody>,
) -> ApiResult<Json<OrgView>> {
    let id = OrgId(parse_id("id", &id)?);
    let url = body
        .base_url
        .as_deref()
        .map(|u| HttpUrl::parse("baseUrl", u))
        .transpose()?;
    let org = state
        .set_base_url(&auth.principal, id, url, actor(&auth), client)
        .await?;
    Ok(Json(org_view(&state, &org, true).await?))
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PartnerBody {
    name: String,
    /// Shown to the partner's orgs with its disablement notice.
    #[serde(default)]
    support_url: Option<String>,
    #[serde(default)]
    support_email: Option<String>,
}

impl PartnerBody {
    fn parse(&self) -> Result<PartnerInput, FieldError> {
        fn blank(v: &Option<String>) -> Option<&str> {
            v.as_deref().map(str::trim).filter(|s| !s.is_empty())
        }
        Ok(PartnerInput {
            name: PartnerName::parse("name", &self.name)?,
            support_url: blank(&self.support_url)
                .map(|u| HttpUrl::parse("supportUrl", u))
                .transpose()?,
            support_email: blank(&self.support_email)
                .map(|e| SupportEmail::parse("supportEmail", e))
                .transpose()?,
        })
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartnerList {
    items: Vec<PartnerRecord>,
}

/// Create a partner (service provider): the platform's OWNERs only.
#[utoipa::path(post, path = "/provider/v1/partners", tag = "provider", request_body = PartnerBody,
    responses((status = 201, body = PartnerRecord), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn create_partner(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    JsonBody(body): JsonBody<PartnerBody>,
) -> ApiResult<Response> {
    crate::service::Services::require_partner_management(&auth.principal)?;
    let input = body.parse()?;
    let partner = state
        .create_partner(&auth.principal, input, actor(&auth), client)
        .await?;
    Ok((StatusCode::CREATED, Json(partner)).into_response())
}

/// The partners the caller may know: all of them for the platform, its own for a partner.
#[utoipa::path(get, path = "/provider/v1/partners", tag = "provider",
    responses((status = 200, body = PartnerList)))]
async fn list_partners(
    State(state): State<AppState>,
    auth: ProviderAuth,
) -> ApiResult<Json<PartnerList>> {
    Ok(Json(PartnerList {
        items: state.partners_for(&auth.principal).await?,
    }))
}

/// One partner; a partner's operators may read only their own.
#[utoipa::path(get, path = "/provider/v1/partners/{id}", tag = "provider", params(("id" = i64, Path)),
    responses((status = 200, body = PartnerRecord), (status = 404, body = ErrorBody)))]
async fn get_partner(
    State(state): State<AppState>,
    auth: ProviderAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<PartnerRecord>> {
    let id = PartnerId(parse_id("id", &id)?);
    Ok(Json(state.partner_for(&auth.principal, id).await?))
}

/// Edit a partner's name and contacts (the whole record): the platform's OWNERs only.
#[utoipa::path(put, path = "/provider/v1/partners/{id}", tag = "provider", params(("id" = i64, Path)),
    request_body = PartnerBody,
    responses((status = 200, body = PartnerRecord), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn update_partner(
    State(state): State<AppState>,
    auth: ProviderAuth,
    ClientAddr(client): ClientAddr,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PartnerBody>,
) -> ApiResult<Json<PartnerRecord>> {
    let id = PartnerId(parse_id("id", &id)?);
    state.partner_for(&auth.principal, id).await?;
    crate::service::Services::require_partner_management(&auth.principal)?;
    let input = body.parse()?;
    Ok(Json(
        state
            .update_partner(&auth.principal, id, input, actor(&auth), client)
            .await?,
    ))
}
