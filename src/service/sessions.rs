//! Cloud service API sessions (§3.1): login with the obfuscated key, login name and password;
//! the session check every API request (and `/authz`) goes through.

use std::sync::Arc;

use super::Services;
use super::gate::RequestPass;
use super::limits::{RateDenied, RateInfo};
use super::throttle::Failed;
use crate::crypto::token::{TokenTag, random_token, token_hash};
use crate::domain::admin::{LoginName, Password};
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::ids::OrgId;
use crate::domain::login_guard;
use crate::domain::org::{CallThreshold, DisableReason, Disablement, SubscriptionState};
use crate::domain::time::Millis;
use crate::store::{
    AdminRecord, ApiSessionView, GuessCheck, LoginFailure, ProviderKeyAction, StoreError,
    StoreResult,
};

/// A login attempt as the client sent it.
pub struct ApiLoginRequest<'a> {
    pub api_key: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub timestamp_ms: i64,
}

pub enum ApiLoginOutcome {
    /// The new session id, to be set as the `JSESSIONID` cookie.
    Opened(String),
    /// Anything wrong with the key, login, password or timestamp: one answer for all.
    Failed,
    Throttled {
        retry_after_secs: u64,
    },
    /// The password was right, but the admin's key-guessing budget is spent (login_guard).
    Locked {
        retry_after_secs: u64,
    },
    /// All three were right, but the provider disabled the key.
    KeyDisabled(Disablement),
    /// All three were right, but the org has no enabled subscription.
    NoSubscription,
}

/// Why a request with a session is refused.
#[derive(Debug)]
pub enum Denial {
    /// No such session, or it ended (idle, lifetime, key change, logout).
    SessionNotValid,
    NoApiSubscription,
    /// A write while the subscription is expired (R10).
    SubscriptionExpired,
    /// A write by a view-only admin.
    NotAuthorized,
    /// Over one of the org's rate limits.
    RateLimited(RateDenied),
    /// This call exceeded the org's call threshold and the key is now disabled (R9).
    KeyDisabled(Disablement),
}

/// An authorized API caller. Holding it holds the org's gate open for reading, so a key
/// change waits until this request is done (R7).
pub struct ApiPrincipal {
    /// The session as the cache holds it (shared, not copied, on every call).
    session: Arc<ApiSessionView>,
    pub subscription: SubscriptionState,
    /// The rate-limit state after this call was admitted (for the `x-ratelimit-*` headers).
    pub rate: Option<RateInfo>,
    /// When the session was checked: the call is metered, and its key list judged, at this
    /// time too (one clock read).
    pub at: Millis,
    pass: Option<RequestPass>,
}

impl ApiPrincipal {
    pub fn admin(&self) -> &AdminRecord {
        &self.session.admin
    }

    pub fn org_id(&self) -> OrgId {
        self.session.org_id
    }

    /// The org's key generation the session was opened under.
    pub fn generation(&self) -> i64 {
        self.session.generation
    }

    fn call_threshold(&self) -> Option<CallThreshold> {
        self.session.call_threshold
    }

    pub fn holds_gate(&self) -> bool {
        self.pass.is_some()
    }

    /// Lets go of the gate, before this request itself changes the key.
    pub fn release(&mut self) {
        self.pass = None;
    }
}

/// A session's `last_seen_at` is written when it is at least this old (ms).
const TOUCH_EVERY_MS: i64 = 10_000;

/// Whether a method changes anything (refused while the subscription is expired).
pub fn is_write(method: &str) -> bool {
    !["GET", "HEAD", "OPTIONS"]
        .iter()
        .any(|m| method.eq_ignore_ascii_case(m))
}

impl Services {
    pub async fn api_login(
        &self,
        req: ApiLoginRequest<'_>,
        client: Option<String>,
    ) -> StoreResult<ApiLoginOutcome> {
        let now = self.clock.now();
        if let Err(secs) = self
            .login_throttled(req.username, client.as_deref())
            .await?
        {
            return Ok(ApiLoginOutcome::Throttled {
                retry_after_secs: secs,
            });
        }
        let login = LoginName::parse("username", req.username).ok();
        let admin = match &login {
            Some(name) => self.store.find_admin_by_login(name).await?,
            None => None,
        };
        // The password is always checked (against a decoy for unknown names), so every
        // failure costs the same.
        let password_ok = self
            .hasher
            .verify(
                Password::for_login(req.password),
                admin.as_ref().map(|a| a.password_hash.clone()),
            )
            .await;
        let org = match &admin {
            Some(a) => self.store.get_org(a.org_id).await?,
            None => None,
        };
        let window_ms = self.settings.api_timestamp_window_secs * 1000;
        let timestamp_ok = (req.timestamp_ms - now.0).abs() <= window_ms;
        // Residues that read too few key positions are refused for everyone (login_guard).
        let charge = login_guard::guess_charge(req.timestamp_ms);
        let stored_key = org.as_ref().and_then(|o| o.key.clone().map(|k| (o.id, k)));
        let failure_reason = match (&admin, password_ok, timestamp_ok, charge, &stored_key) {
            (None, ..) => Some("UNKNOWN_LOGIN"),
            (_, false, ..) => Some("BAD_PASSWORD"),
            (_, _, false, ..) => Some("STALE_TIMESTAMP"),
            (_, _, _, None, _) => Some("REFUSED_TIMESTAMP"),
            (_, _, _, _, None) => Some("NO_KEY"),
            _ => None,
        };
        let admin_org = admin.as_ref().map(|a| a.org_id);
        let (Some(admin), Some(org), Some(charge), Some((org_id, stored)), None) =
            (admin, org, charge, stored_key, failure_reason)
        else {
            // Cut short unless it names an admin: it may be a password in the wrong box.
            let shown = LoginName::shown_in_audit(req.username, admin_org.is_some());
            let failed = Failed {
                org: admin_org,
                action: AuditAction::LoginFailure,
                details: serde_json::json!({"via": "api", "reason": failure_reason.unwrap_or("UNKNOWN")}),
                actor: Actor::Anonymous { login: shown },
            };
            self.login_failed(req.username, client, failed).await?;
            return Ok(ApiLoginOutcome::Failed);
        };
        // The caller holds the password: the key is what is left to check, and a wrong one
        // is charged what it could have won (login_guard). A key the org replaced tests
        // nothing about the current one (they differ at every residue): not charged, and not
        // counted against the login, so an old script does not lock its admin out.
        let key_right = self
            .store
            .open_key(org_id, &stored)?
            .matches_obfuscated(req.timestamp_ms, req.api_key);
        let replaced = !key_right
            && self
                .store
                .replaced_keys(org_id)
                .await?
                .iter()
                .any(|old| old.matches_obfuscated(req.timestamp_ms, req.api_key));
        if !key_right {
            // An old key counts against its address only: not against the admin's login.
            let n = if replaced { 1 } else { 3 };
            self.count_login_failure(req.username, client.as_deref(), n)
                .await?;
        }
        let failure = (!key_right).then(|| LoginFailure {
            org: Some(org_id),
            action: if replaced {
                AuditAction::LoginFailure
            } else {
                AuditAction::KeyGuess
            },
            details: if replaced {
                serde_json::json!({"via": "api", "reason": "REPLACED_KEY"})
            } else {
                serde_json::json!({
                    "via": "api",
                    "reason": "BAD_KEY",
                    "positionsRead": login_guard::positions_read(req.timestamp_ms).count_ones(),
                    "charged": charge,
                })
            },
        });
        let charged = if key_right || replaced { 0.0 } else { charge };
        let ctx = self.ctx(admin.actor(), client.clone());
        match self
            .store
            .key_guess_check(admin.id, charged, login_guard::GUESS_BUDGET, failure, &ctx)
            .await?
        {
            GuessCheck::Locked => {
                let failed = Failed {
                    org: Some(org_id),
                    action: AuditAction::LoginFailure,
                    details: serde_json::json!({"via": "api", "reason": "KEY_GUESS_LOCKED"}),
                    actor: admin.actor(),
                };
                self.login_failed(req.username, client, failed).await?;
                return Ok(ApiLoginOutcome::Locked {
                    retry_after_secs: self.throttle.window_secs as u64,
                });
            }
            GuessCheck::LockedNow => return Ok(ApiLoginOutcome::Failed),
            GuessCheck::Open if !key_right => return Ok(ApiLoginOutcome::Failed),
            GuessCheck::Open => {}
        }
        let refusal = match (org.subscription.state_at(now), org.key_presence()) {
            (SubscriptionState::NotEnabled, _) => Some(ApiLoginOutcome::NoSubscription),
            (_, crate::domain::org::KeyPresence::Disabled(d)) => {
                Some(ApiLoginOutcome::KeyDisabled(d))
            }
            _ => None,
        };
        if let Some(outcome) = refusal {
            let reason = match &outcome {
                ApiLoginOutcome::NoSubscription => "NO_API_SUBSCRIPTION",
                _ => "API_KEY_DISABLED",
            };
            self.store
                .append_audit(
                    Some(org.id),
                    AuditAction::LoginFailure,
                    serde_json::json!({"via": "api", "reason": reason}),
                    &ctx,
                )
                .await?;
            return Ok(outcome);
        }
        let token = random_token();
        match self
            .store
            .create_api_session(&token_hash(&token), &admin, org.key_generation, now)
            .await
        {
            Ok(()) => {}
            // The key changed while this login was being checked: it was checked against
            // a key that is no longer valid.
            Err(StoreError::NotFound(_)) => return Ok(ApiLoginOutcome::Failed),
            Err(e) => return Err(e),
        }
        self.store
            .append_audit(
                Some(org.id),
                AuditAction::LoginSuccess,
                serde_json::json!({"via": "api"}),
                &ctx,
            )
            .await?;
        Ok(ApiLoginOutcome::Opened(token))
    }

    /// The whole decision on an API call (and an `/authz` sub-request): a live session
    /// (R7, R8, R10), then the org's rate limits, then metering and the call threshold (R9).
    pub async fn authorize_api_request(
        &self,
        token: &str,
        method: &str,
    ) -> StoreResult<Result<ApiPrincipal, Denial>> {
        let mut principal = match self.check_api_session(token, method).await? {
            Ok(p) => p,
            Err(d) => return Ok(Err(d)),
        };
        match self
            .rate_limits
            .check(
                principal.org_id(),
                principal.session.rate_limits.as_deref(),
                method,
                principal.at,
            )
            .await
        {
            Ok(info) => principal.rate = info,
            Err(denied) => return Ok(Err(Denial::RateLimited(denied))),
        }
        let calls = self
            .count_call(principal.org_id(), principal.call_threshold(), principal.at)
            .await?;
        if let Some(t) = principal.call_threshold().filter(|t| calls > t.calls) {
            principal.release();
            let disablement = Disablement {
                reason: DisableReason::CallThresholdExceeded,
                note: Some(format!(
                    "more than {} calls in {} seconds",
                    t.calls, t.period_seconds
                )),
            };
            self.auto_disable(principal.org_id(), disablement.clone())
                .await?;
            crate::telemetry::threshold_trip();
            crate::telemetry::key_change(crate::telemetry::KeyChangeKind::Disable, &Actor::System);
            return Ok(Err(Denial::KeyDisabled(disablement)));
        }
        Ok(Ok(principal))
    }

    /// R9: the system disables the key; its sessions end with the generation bump.
    async fn auto_disable(&self, org: OrgId, d: Disablement) -> StoreResult<()> {
        let ctx = self.ctx(Actor::System, None);
        self.change(
            org,
            self.store
                .provider_key_action(org, ProviderKeyAction::AutoDisable(d), &ctx),
        )
        .await?;
        Ok(())
    }

    /// Decides on a request carrying session `token` with HTTP `method`, without counting it.
    /// On success the principal holds the org's gate until it is dropped.
    pub async fn check_api_session(
        &self,
        token: &str,
        method: &str,
    ) -> StoreResult<Result<ApiPrincipal, Denial>> {
        // The cache knows the session by its tag; the database by its hash, computed only
        // where the database is asked.
        let tag = self.cache.tag(token);
        let changes_before = self.cache.changes();
        // The session found before the gate: in the cache, or else read from the database.
        let (org_id, cached, read) = match self.cache.session(&tag) {
            Some(v) => (v.org_id, Some(v), None),
            None => match self
                .session_reads
                .read(&self.store, token_hash(token).to_string())
                .await?
            {
                Some(v) => (v.org_id, None, Some(v)),
                None => return Ok(Err(Denial::SessionNotValid)),
            },
        };
        let pass = self.gate.enter(org_id).await;
        // Look again under the gate if a change may have been counted since the look above
        // (a change of this node under way then has finished now: it holds the gate until
        // after it counts itself and forgets the org's cached sessions). Otherwise what was
        // found is as current as a second look: that spares a database read per request on
        // PostgreSQL, and a second cache look-up everywhere. A cached entry also needs the
        // cache still usable (a lease can run out while waiting for the gate).
        let unchanged = self.cache.changes() == changes_before;
        let read = read.filter(|_| unchanged);
        let cached = cached.filter(|_| unchanged && self.cache.enabled());
        let now = self.clock.now();
        let s = &self.settings;
        let live = |v: &ApiSessionView| {
            v.generation == v.current_generation
                && v.key_present
                && v.key_disabled.is_none()
                && now.0 - v.last_seen_at.0 < s.api_idle_timeout_secs * 1000
                && now.0 - v.created_at.0 < s.api_max_lifetime_secs * 1000
        };
        let view = match cached.or_else(|| self.cache.session(&tag)) {
            // With other nodes, a session they kept in use is idle only in this node's copy.
            Some(v) if !live(&v) && self.cache.leased() => {
                self.cache.forget_session(&tag);
                self.read_session_to_cache(token, tag).await?
            }
            Some(v) => Some(v),
            None => match read {
                Some(v) => {
                    self.cache.put_session(tag, &v, changes_before);
                    Some(v)
                }
                None => self.read_session_to_cache(token, tag).await?,
            },
        };
        let Some(view) = view else {
            return Ok(Err(Denial::SessionNotValid));
        };
        if !live(&view) {
            drop(pass);
            self.cache.forget_session(&tag);
            self.store.delete_api_session(&token_hash(token)).await?;
            return Ok(Err(Denial::SessionNotValid));
        }
        let subscription = view.subscription.state_at(now);
        match subscription {
            SubscriptionState::NotEnabled => return Ok(Err(Denial::NoApiSubscription)),
            SubscriptionState::Expired if is_write(method) => {
                return Ok(Err(Denial::SubscriptionExpired));
            }
            _ => {}
        }
        // A view-only admin makes read-only calls (§1), here and behind `/authz` alike.
        if view.admin.role == crate::domain::admin::Role::ViewOnly && is_write(method) {
            return Ok(Err(Denial::NotAuthorized));
        }
        // Idle time is tracked to within this granularity, to spare a write per request. Only
        // the first request to find it stale writes it (the others would queue on the same
        // durable write). On the embedded store the cache is what idle time is judged by, and
        // the stored value only outlives it across a restart, so the write is not waited for.
        if now.0 - view.last_seen_at.0 >= TOUCH_EVERY_MS
            && self.cache.claim_touch(tag, now, TOUCH_EVERY_MS)
        {
            let hashed = token_hash(token);
            if self.cache.enabled() {
                let store = self.store.clone();
                self.background.spawn(async move {
                    if let Err(e) = store.touch_api_session(&hashed, now).await {
                        tracing::warn!(error = %e, "could not record a session's last use");
                    }
                });
            } else {
                self.store.touch_api_session(&hashed, now).await?;
            }
        }
        Ok(Ok(ApiPrincipal {
            subscription,
            rate: None,
            at: now,
            session: view,
            pass: Some(pass),
        }))
    }

    /// The session of `token` (cache tag `tag`), read now; kept in the cache if no change was
    /// counted since the read began.
    async fn read_session_to_cache(
        &self,
        token: &str,
        tag: TokenTag,
    ) -> StoreResult<Option<Arc<ApiSessionView>>> {
        let since = self.cache.changes();
        let view = self
            .session_reads
            .read(&self.store, token_hash(token).to_string())
            .await?;
        if let Some(v) = &view {
            self.cache.put_session(tag, v, since);
        }
        Ok(view)
    }

    /// Ends the session behind `token` (logout), if there is one.
    pub async fn end_api_session(&self, token: &str, client: Option<String>) -> StoreResult<bool> {
        let hash = token_hash(token);
        let Some(view) = self.store.get_api_session(&hash).await? else {
            return Ok(false);
        };
        // As a change: a request of the org that read this session before the delete
        // must not put it back in the cache after it.
        self.change(view.org_id, self.store.delete_api_session(&hash))
            .await?;
        let ctx = self.ctx(view.admin.actor(), client);
        self.store
            .append_audit(
                Some(view.org_id),
                AuditAction::Logout,
                serde_json::json!({"via": "api"}),
                &ctx,
            )
            .await?;
        Ok(true)
    }
}
