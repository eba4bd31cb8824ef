//! Persistence behind one trait. `sqlite` is the embedded default; a PostgreSQL
//! implementation plugs in behind the same trait.
//!
//! Every mutating method runs as one transaction that also writes its audit record (R11),
//! and decides admin key changes with `domain::key_change::decide` on the state it read
//! inside that transaction, so concurrent changes serialize.

pub mod operators;
pub mod peers;
pub mod postgres;
pub mod rate_windows;
pub mod sql;
pub mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

use crate::domain::admin::{LoginName, Role};
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::ids::{AdminId, AuditId, KeyId, OperatorId, OrgId, PartnerId, TokenId};
use crate::domain::key::ApiKeyValue;
use crate::domain::key_change::KeyChange;
use crate::domain::org::{CallThreshold, Disablement, KeyPresence, OrgName, Subscription};
use crate::domain::policy::Refusal;
use crate::domain::tier::{
    DisabledBy, HttpUrl, OperatorRef, OperatorRole, PartnerName, ProviderPrincipal, SupportEmail,
    Tier,
};
use crate::domain::time::Millis;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("login name {0} is already taken")]
    LoginNameTaken(String),
    /// A unique name (a partner's) is in use.
    #[error("{0}")]
    Conflict(String),
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("database unavailable: {0}")]
    Unavailable(anyhow::Error),
    /// The key changed (on any node) after this API session's request was admitted: what
    /// the request would now read belongs to the new key.
    #[error("the session's key generation is no longer current")]
    SessionEnded,
    /// The change would leave the platform with no active owner (issue 15).
    #[error("the platform's last owner")]
    LastOwner,
    /// The bootstrap token cannot retire while the platform has no active owner.
    #[error("no platform owner")]
    NoPlatformOwner,
    #[error("internal store error: {0}")]
    Internal(anyhow::Error),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Context of a mutating call: when it happens, who does it, and from where.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub now: Millis,
    pub actor: Actor,
    pub client_addr: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: KeyId,
    pub sealed: Vec<u8>,
    pub disabled: Option<Disablement>,
    pub modified_at: Millis,
    pub modified_by_id: i64,
    pub modified_by_name: String,
    /// Who disabled it (issue 15); default when enabled.
    pub disabled_by: DisabledBy,
}

#[derive(Debug, Clone)]
pub struct OrgRecord {
    pub id: OrgId,
    pub name: String,
    pub subscription: Subscription,
    pub call_threshold: Option<CallThreshold>,
    /// Per-org rate limits as stored (JSON list of `RateRule`); `None` = deployment default.
    pub rate_limits: Option<String>,
    pub key_generation: i64,
    pub created_at: Millis,
    pub key: Option<KeyRecord>,
    /// The partner that owns the org; `None` = the platform's own (issue 15).
    pub partner: Option<PartnerRecord>,
    /// The org's cloud service base URL; `None` = the deployment's (PRODUCT.md §3).
    pub base_url: Option<String>,
}

impl OrgRecord {
    pub fn partner_id(&self) -> Option<PartnerId> {
        self.partner.as_ref().map(|p| p.id)
    }
}

/// A partner (service provider), as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartnerRecord {
    pub id: PartnerId,
    pub name: String,
    pub support_url: Option<String>,
    pub support_email: Option<String>,
    /// Unix ms.
    pub created_at: i64,
}

/// A partner to create, or a partner's new contact details.
#[derive(Debug, Clone)]
pub struct PartnerInput {
    pub name: PartnerName,
    pub support_url: Option<HttpUrl>,
    pub support_email: Option<SupportEmail>,
}

impl OrgRecord {
    pub fn key_presence(&self) -> KeyPresence {
        match &self.key {
            None => KeyPresence::Absent,
            Some(k) => match &k.disabled {
                Some(d) => KeyPresence::Disabled(d.clone()),
                None => KeyPresence::Enabled,
            },
        }
    }
}

#[derive(Clone)]
pub struct AdminRecord {
    pub id: AdminId,
    pub org_id: OrgId,
    pub login: String,
    pub role: Role,
    pub password_hash: String,
}

impl std::fmt::Debug for AdminRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminRecord")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("login", &self.login)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

impl AdminRecord {
    pub fn actor(&self) -> Actor {
        Actor::Admin {
            id: self.id,
            login: self.login.clone(),
        }
    }
}

#[derive(Clone)]
pub struct NewAdmin {
    pub login: LoginName,
    pub password_hash: String,
    pub role: Role,
}

pub struct NewOrg {
    pub name: OrgName,
    /// The owner; `None` = the platform.
    pub partner: Option<PartnerId>,
    pub subscription: Subscription,
    pub call_threshold: Option<CallThreshold>,
    pub admins: Vec<NewAdmin>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditRecord {
    pub id: AuditId,
    /// Unix ms.
    pub time: i64,
    pub org_id: Option<OrgId>,
    pub actor_type: String,
    pub actor_id: i64,
    pub actor_name: String,
    /// `PLATFORM` or `PARTNER` for a provider-side actor (issue 15), else null.
    pub actor_tier: Option<String>,
    /// The actor's partner, for a partner's operator.
    pub partner_id: Option<i64>,
    /// The named operator; null for the bootstrap token and non-provider actors.
    pub operator_id: Option<i64>,
    pub action: String,
    /// The last three characters of the key concerned, at most.
    pub key_suffix: Option<String>,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
    pub client_address: Option<String>,
}

/// A 1-based page.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub number: u32,
    pub size: u32,
}

impl Page {
    pub fn offset(self) -> i64 {
        (self.number.saturating_sub(1) as i64) * self.size as i64
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct AuditFilter {
    pub org: Option<OrgId>,
    pub from: Option<Millis>,
    pub to: Option<Millis>,
}

#[derive(Debug, Clone)]
pub struct ConsoleSession {
    pub admin_id: AdminId,
    pub csrf_hash: String,
    pub created_at: Millis,
    pub last_seen_at: Millis,
}

/// A provider console session (`http::pages::console`): only hashes of its id and CSRF token.
#[derive(Debug, Clone)]
pub struct ProviderConsoleSession {
    pub token_id: i64,
    pub csrf_hash: String,
    pub created_at: Millis,
    pub last_seen_at: Millis,
}

/// A cloud service API session with what a request needs to decide on it, read in one go.
#[derive(Debug, Clone)]
pub struct ApiSessionView {
    pub org_id: OrgId,
    pub admin: AdminRecord,
    /// The org's key generation when the session was opened.
    pub generation: i64,
    pub created_at: Millis,
    pub last_seen_at: Millis,
    /// The org's key generation now.
    pub current_generation: i64,
    pub subscription: Subscription,
    pub key_present: bool,
    pub key_disabled: Option<Disablement>,
    pub call_threshold: Option<CallThreshold>,
    pub rate_limits: Option<String>,
}

/// Calls counted for one org in one period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    pub period_seconds: i64,
    /// Unix seconds.
    pub period_start: i64,
    pub calls: i64,
}

#[derive(Clone)]
pub enum ProviderKeyAction {
    /// A provider's disable, recording who (tier, partner, operator).
    Disable(Disablement, DisabledBy),
    /// The system's disable (R9): does nothing if the key is already disabled.
    AutoDisable(Disablement),
    /// A provider's re-enable by this tier: refused when the key was disabled by the platform
    /// and this is a partner (`DisabledBy::may_enable`).
    Enable(Tier),
}

/// The audit record of a failed login.
#[derive(Clone)]
pub struct LoginFailure {
    pub org: Option<OrgId>,
    pub action: AuditAction,
    pub details: serde_json::Value,
}

/// A login failure counter as read: failures since `window_start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureCount {
    pub window_start: Millis,
    pub failures: i64,
}

/// What an admin's key-guessing budget said to one login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuessCheck {
    /// Below the budget (after this login's charge, if any).
    Open,
    /// This login's charge reached the budget: locked from now on.
    LockedNow,
    /// Already locked; nothing was charged or recorded.
    Locked,
}

/// An admin whose API logins failed with the right password and a wrong key.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyGuessState {
    pub admin_id: AdminId,
    pub login_name: String,
    /// Charged failures since the budget was last cleared.
    pub failures: i64,
    /// The win probability they were charged.
    pub charged: f64,
    /// Epoch ms of the last one.
    pub last_at: Option<i64>,
    /// API logins refused until a FULL admin or the provider clears it.
    pub locked: bool,
}

#[async_trait]
pub trait Store: operators::OperatorStore + Send + Sync + 'static {
    async fn ready(&self) -> StoreResult<()>;

    // --- orgs and subscriptions
    /// Creates the org with its admins; provisions `provision` as its key when the
    /// subscription is enabled (R2).
    async fn create_org(
        &self,
        org: NewOrg,
        provision: ApiKeyValue,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;
    async fn get_org(&self, id: OrgId) -> StoreResult<Option<OrgRecord>>;
    /// Orgs by id, with the total count; `name_contains` filters case-insensitively.
    async fn list_orgs(
        &self,
        page: Page,
        name_contains: Option<&str>,
    ) -> StoreResult<(Vec<OrgRecord>, i64)>;
    /// Sets the subscription; turning it on provisions `provision` if the org has no key (R2, R10a).
    async fn set_subscription(
        &self,
        org: OrgId,
        subscription: Subscription,
        provision: ApiKeyValue,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;
    async fn provider_key_action(
        &self,
        org: OrgId,
        action: ProviderKeyAction,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;

    // --- admins
    async fn add_admin(&self, org: OrgId, admin: NewAdmin, ctx: &Ctx) -> StoreResult<AdminRecord>;
    /// Removes the admin and ends their console sessions.
    async fn remove_admin(&self, org: OrgId, admin: AdminId, ctx: &Ctx) -> StoreResult<()>;
    async fn list_admins(&self, org: OrgId) -> StoreResult<Vec<AdminRecord>>;
    async fn find_admin_by_login(&self, login: &LoginName) -> StoreResult<Option<AdminRecord>>;
    async fn get_admin(&self, id: AdminId) -> StoreResult<Option<AdminRecord>>;

    // --- the key, as an admin changes it (R3-R6); the acting admin is `ctx.actor`
    /// With `expected_generation` (a change through an API session), the change is refused
    /// with `SessionEnded` unless the org is still at that generation when its row is locked:
    /// a session of a replaced key must not change (and so learn) the current one.
    async fn change_key(
        &self,
        org: OrgId,
        admin: AdminId,
        change: KeyChange,
        expected_generation: Option<i64>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;
    /// Returns the full key value and writes the audit record of its reveal, together.
    async fn reveal_key(&self, org: OrgId, ctx: &Ctx) -> StoreResult<ApiKeyValue>;
    /// Opens a sealed key of `org`.
    fn open_key(&self, org: OrgId, key: &KeyRecord) -> StoreResult<ApiKeyValue>;

    // --- audit
    async fn append_audit(
        &self,
        org: Option<OrgId>,
        action: AuditAction,
        details: serde_json::Value,
        ctx: &Ctx,
    ) -> StoreResult<()>;
    /// Newest first, with the total count.
    async fn list_audit(
        &self,
        filter: AuditFilter,
        page: Page,
    ) -> StoreResult<(Vec<AuditRecord>, i64)>;

    // --- provider tokens (stored as hashes)
    async fn add_provider_token(
        &self,
        token_hash: &str,
        label: &str,
        now: Millis,
    ) -> StoreResult<()>;
    async fn count_provider_tokens(&self) -> StoreResult<i64>;
    /// Who holds the token with this hash: a live token (not revoked, not expired at `now`)
    /// of an active operator, or the bootstrap token (no operator). `None` otherwise.
    async fn find_provider_principal(
        &self,
        token_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<ProviderPrincipal>>;

    // --- admin console sessions (stored as hashes)
    async fn create_console_session(
        &self,
        id_hash: &str,
        admin: AdminId,
        csrf_hash: &str,
        now: Millis,
    ) -> StoreResult<()>;
    async fn get_console_session(&self, id_hash: &str) -> StoreResult<Option<ConsoleSession>>;
    async fn touch_console_session(&self, id_hash: &str, now: Millis) -> StoreResult<()>;
    async fn delete_console_session(&self, id_hash: &str) -> StoreResult<()>;

    // --- provider console sessions (stored as hashes)
    async fn create_provider_session(
        &self,
        id_hash: &str,
        token_id: i64,
        csrf_hash: &str,
        now: Millis,
    ) -> StoreResult<()>;
    async fn get_provider_session(
        &self,
        id_hash: &str,
    ) -> StoreResult<Option<ProviderConsoleSession>>;
    async fn touch_provider_session(&self, id_hash: &str, now: Millis) -> StoreResult<()>;
    /// Ends a provider console session; the token its operator sign-in made for it is revoked
    /// at `now` in the same transaction.
    async fn delete_provider_session(&self, id_hash: &str, now: Millis) -> StoreResult<()>;
    /// Deletes the admin and provider console sessions last seen before `idle_before` or
    /// created before `created_before` (both are dead by then), revoking at `now` the tokens
    /// that operator sign-ins made for them; how many sessions went.
    async fn sweep_console_sessions(
        &self,
        idle_before: Millis,
        created_before: Millis,
        now: Millis,
    ) -> StoreResult<u64>;

    // --- limits and usage
    /// Sets the call threshold and rate limits (`None` = deployment default), audited.
    async fn set_limits(
        &self,
        org: OrgId,
        threshold: Option<CallThreshold>,
        rate_limits: Option<String>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;
    /// Adds counted calls: `(org, period_seconds, period_start, calls)`.
    async fn add_usage(&self, deltas: &[(OrgId, i64, i64, i64)]) -> StoreResult<()>;
    async fn usage_calls(
        &self,
        org: OrgId,
        period_seconds: i64,
        period_start: i64,
    ) -> StoreResult<i64>;
    /// The stored calls of each `(org, period_seconds, period_start)`, in the order asked
    /// (0 where none are stored): one round trip for all the orgs a flush reads back.
    async fn usage_calls_of(&self, periods: &[(OrgId, i64, i64)]) -> StoreResult<Vec<i64>>;
    /// The org's most recent periods, newest first.
    async fn list_usage(&self, org: OrgId, limit: u32) -> StoreResult<Vec<UsageRow>>;

    // --- ZIA audit log reports, one per admin
    async fn put_audit_report(
        &self,
        admin: AdminId,
        report: &crate::service::reports::AuditReport,
    ) -> StoreResult<()>;
    async fn get_audit_report(
        &self,
        admin: AdminId,
    ) -> StoreResult<Option<crate::service::reports::AuditReport>>;
    async fn delete_audit_report(&self, admin: AdminId) -> StoreResult<()>;

    // --- cloud service API sessions (stored as hashes); every key change deletes the org's
    async fn create_api_session(
        &self,
        id_hash: &str,
        admin: &AdminRecord,
        generation: i64,
        now: Millis,
    ) -> StoreResult<()>;
    async fn get_api_session(&self, id_hash: &str) -> StoreResult<Option<ApiSessionView>>;
    /// Several orgs in one query (those that exist, in any order).
    async fn get_orgs(&self, ids: &[OrgId]) -> StoreResult<Vec<(OrgId, OrgRecord)>>;
    /// Several sessions in one query (those that exist, with their hashes, in any order).
    async fn get_api_sessions(
        &self,
        id_hashes: &[String],
    ) -> StoreResult<Vec<(String, ApiSessionView)>>;
    async fn touch_api_session(&self, id_hash: &str, now: Millis) -> StoreResult<()>;
    async fn delete_api_session(&self, id_hash: &str) -> StoreResult<()>;

    // --- login hardening (domain::login_guard, service::throttle)
    /// The counters of these scopes that are still inside their window at `now`, by index.
    async fn login_failure_counts(
        &self,
        scopes: &[String],
        window_ms: i64,
        now: Millis,
    ) -> StoreResult<Vec<Option<FailureCount>>>;
    /// Deletes the counters whose window started before `before`.
    async fn sweep_login_failures(&self, before: Millis) -> StoreResult<u64>;
    /// Counts one failure in each of these scopes (`service::throttle::scopes`, stored
    /// digests), in one short transaction of its own: a client address failing many logins at
    /// once makes its counter a hot row, so nothing else waits behind its lock. On PostgreSQL
    /// it commits asynchronously (a database crash may lose the last moment's counts).
    /// Returns each scope's counter as this failure left it, by index (one round trip for a
    /// caller that judges by the count, as the wrong-bearer-token throttle does).
    async fn count_login_failure(
        &self,
        scopes: &[String],
        window_ms: i64,
        now: Millis,
    ) -> StoreResult<Vec<FailureCount>>;
    /// Charges `charge` to the admin's key-guessing budget unless it is already at `budget`
    /// (a charge of 0 only checks, without locking the admin's row); with `failure`, audits it
    /// (with a charge, in the same transaction), and audits the lock when this charge reaches
    /// the budget. Charges are serialized per admin, so concurrent guesses cannot overrun the
    /// budget.
    async fn key_guess_check(
        &self,
        admin: AdminId,
        charge: f64,
        budget: f64,
        failure: Option<LoginFailure>,
        ctx: &Ctx,
    ) -> StoreResult<GuessCheck>;
    /// Clears an admin's key-guessing budget (and so its lock), audited.
    async fn clear_key_guesses(&self, org: OrgId, admin: AdminId, ctx: &Ctx) -> StoreResult<()>;
    /// The org's admins with charged key-guessing failures.
    async fn key_guess_states(&self, org: OrgId, budget: f64) -> StoreResult<Vec<KeyGuessState>>;
    /// The keys the org replaced (edited, regenerated or deleted), newest first, opened.
    async fn replaced_keys(&self, org: OrgId) -> StoreResult<Vec<ApiKeyValue>>;

    // --- partners and org ownership (issue 15)
    /// Orgs by id like `list_orgs`, only those owned by `owner` when given (a partner's view).
    async fn list_orgs_of(
        &self,
        page: Page,
        name_contains: Option<&str>,
        owner: Option<PartnerId>,
    ) -> StoreResult<(Vec<OrgRecord>, i64)>;
    /// Creates a partner, audited; a name in use is `Conflict`.
    async fn create_partner(&self, input: PartnerInput, ctx: &Ctx) -> StoreResult<PartnerRecord>;
    async fn get_partner(&self, id: PartnerId) -> StoreResult<Option<PartnerRecord>>;
    /// All partners by id (there are few).
    async fn list_partners(&self) -> StoreResult<Vec<PartnerRecord>>;
    /// Sets a partner's name and contacts, audited.
    async fn update_partner(
        &self,
        id: PartnerId,
        input: PartnerInput,
        ctx: &Ctx,
    ) -> StoreResult<PartnerRecord>;
    /// Gives the org to `partner` (`None` = the platform), audited.
    async fn move_org(
        &self,
        org: OrgId,
        partner: Option<PartnerId>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;
    /// Sets the org's base URL (`None` = the deployment's), audited.
    async fn set_base_url(
        &self,
        org: OrgId,
        base_url: Option<String>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord>;
    /// The principal behind a provider token by its id (for a console session), with the
    /// same liveness rules as `find_provider_principal`.
    async fn find_provider_principal_by_id(
        &self,
        token_id: TokenId,
        now: Millis,
    ) -> StoreResult<Option<ProviderPrincipal>>;

    // --- for the metrics
    /// Live (API, console) sessions at `now`; each timeout pair is (idle, lifetime) seconds.
    async fn live_sessions(
        &self,
        now: Millis,
        api: (i64, i64),
        console: (i64, i64),
    ) -> StoreResult<(i64, i64)>;
    /// The connection pools' sizes and idle connections.
    fn pool_stats(&self) -> Vec<PoolStat>;
}

/// One connection pool's use, for the metrics.
pub struct PoolStat {
    pub pool: &'static str,
    pub size: u32,
    pub idle: usize,
}
