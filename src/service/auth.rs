//! Who is calling: admins by login name and password, console sessions, provider tokens.

use super::Services;
use super::throttle::Failed;
use crate::crypto::token::{ct_str_eq, random_token, token_hash};
use crate::domain::admin::{LoginName, Password};
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::ids::{AdminId, OrgId};
use crate::domain::login_guard;
use crate::domain::time::Millis;
use crate::store::{AdminRecord, ConsoleSession, KeyGuessState, StoreResult};

/// A login that failed. Deliberately carries no reason: every failure looks the same.
#[derive(Debug)]
pub enum LoginFailed {
    /// Wrong name or password: one answer for both.
    BadCredentials,
    /// Too many recent failures for this name or address.
    Throttled { retry_after_secs: u64 },
}

/// What a new console session hands the browser: the cookie value and the CSRF token.
pub struct NewConsoleSession {
    pub cookie: String,
    pub csrf_token: String,
}

impl std::fmt::Debug for NewConsoleSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NewConsoleSession(<redacted>)")
    }
}

pub struct ResolvedSession {
    pub admin: AdminRecord,
    pub session: ConsoleSession,
    pub id_hash: String,
}

/// A live provider console session, as a request of the console sees it.
pub struct ResolvedProviderSession {
    pub token_id: i64,
    pub csrf_hash: String,
    pub id_hash: String,
    /// Who holds the session's token now (issue 15): a session of a revoked or expired token,
    /// or of a removed operator, resolves to nothing.
    pub principal: crate::domain::tier::ProviderPrincipal,
}

impl std::fmt::Debug for ResolvedProviderSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolvedProviderSession")
            .field("token_id", &self.token_id)
            .finish_non_exhaustive()
    }
}

impl Services {
    /// Checks login name and password; audits success and failure alike (R11).
    pub async fn authenticate_admin(
        &self,
        login: &str,
        password: &str,
        client: Option<String>,
    ) -> StoreResult<Result<AdminRecord, LoginFailed>> {
        if let Err(secs) = self.login_throttled(login, client.as_deref()).await? {
            return Ok(Err(LoginFailed::Throttled {
                retry_after_secs: secs,
            }));
        }
        let admin = match LoginName::parse("loginName", login) {
            Ok(name) => self.store.find_admin_by_login(&name).await?,
            Err(_) => None,
        };
        let ok = self
            .hasher
            .verify(
                Password::for_login(password),
                admin.as_ref().map(|a| a.password_hash.clone()),
            )
            .await;
        match admin {
            Some(admin) if ok => {
                let ctx = self.ctx(admin.actor(), client);
                self.store
                    .append_audit(
                        Some(admin.org_id),
                        AuditAction::LoginSuccess,
                        serde_json::json!({"via": "console"}),
                        &ctx,
                    )
                    .await?;
                Ok(Ok(admin))
            }
            other => {
                // The name as typed, cut short unless it is an admin's: it may be a mistyped
                // password.
                let shown = LoginName::shown_in_audit(login, other.is_some());
                let failed = Failed {
                    org: other.map(|a| a.org_id),
                    action: AuditAction::LoginFailure,
                    details: serde_json::json!({"via": "console"}),
                    actor: Actor::Anonymous { login: shown },
                };
                self.login_failed(login, client, failed).await?;
                Ok(Err(LoginFailed::BadCredentials))
            }
        }
    }

    pub async fn open_console_session(
        &self,
        admin: &AdminRecord,
    ) -> StoreResult<NewConsoleSession> {
        let cookie = random_token();
        let csrf_token = random_token();
        self.store
            .create_console_session(
                &token_hash(&cookie),
                admin.id,
                &token_hash(&csrf_token),
                self.clock.now(),
            )
            .await?;
        Ok(NewConsoleSession { cookie, csrf_token })
    }

    /// The session behind a cookie, if it is live: within the idle timeout and the absolute
    /// lifetime, and its admin still exists. A dead one is deleted.
    pub async fn resolve_console_session(
        &self,
        cookie: &str,
    ) -> StoreResult<Option<ResolvedSession>> {
        let id_hash = token_hash(cookie);
        let Some(session) = self.store.get_console_session(&id_hash).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        let live = self.console_session_live(session.created_at, session.last_seen_at, now);
        let admin = self.store.get_admin(session.admin_id).await?;
        match admin {
            Some(admin) if live => {
                self.store.touch_console_session(&id_hash, now).await?;
                Ok(Some(ResolvedSession {
                    admin,
                    session,
                    id_hash: id_hash.to_string(),
                }))
            }
            _ => {
                self.store.delete_console_session(&id_hash).await?;
                Ok(None)
            }
        }
    }

    pub fn csrf_matches(session: &ConsoleSession, presented: &str) -> bool {
        ct_str_eq(&session.csrf_hash, &token_hash(presented))
    }

    pub async fn end_console_session(
        &self,
        resolved: &ResolvedSession,
        client: Option<String>,
    ) -> StoreResult<()> {
        self.store.delete_console_session(&resolved.id_hash).await?;
        let ctx = self.ctx(resolved.admin.actor(), client);
        self.store
            .append_audit(
                Some(resolved.admin.org_id),
                AuditAction::Logout,
                serde_json::json!({"via": "console"}),
                &ctx,
            )
            .await
    }

    /// Whether a session created at `created_at` and last seen at `last_seen_at` is live at
    /// `now` under the console's idle timeout and lifetime (admin and provider alike).
    fn console_session_live(&self, created_at: Millis, last_seen_at: Millis, now: Millis) -> bool {
        now.0 - last_seen_at.0 < self.settings.console_idle_timeout_secs * 1000
            && now.0 - created_at.0 < self.settings.console_max_lifetime_secs * 1000
    }

    /// Opens a provider console session for provider token `token_id`: a row in the database
    /// (hashes only), so every node serves it.
    pub async fn open_provider_session(&self, token_id: i64) -> StoreResult<NewConsoleSession> {
        let cookie = random_token();
        let csrf_token = random_token();
        self.store
            .create_provider_session(
                &token_hash(&cookie),
                token_id,
                &token_hash(&csrf_token),
                self.clock.now(),
            )
            .await?;
        Ok(NewConsoleSession { cookie, csrf_token })
    }

    /// The provider console session behind a cookie, if it is live (same idle timeout and
    /// lifetime as the admin console's); touched. A dead one is deleted.
    pub async fn resolve_provider_session(
        &self,
        cookie: &str,
    ) -> StoreResult<Option<ResolvedProviderSession>> {
        let id_hash = token_hash(cookie);
        let Some(session) = self.store.get_provider_session(&id_hash).await? else {
            return Ok(None);
        };
        let now = self.clock.now();
        if !self.console_session_live(session.created_at, session.last_seen_at, now) {
            self.store.delete_provider_session(&id_hash, now).await?;
            return Ok(None);
        }
        let Some(principal) = self
            .store
            .find_provider_principal_by_id(crate::domain::ids::TokenId(session.token_id), now)
            .await?
        else {
            self.store.delete_provider_session(&id_hash, now).await?;
            return Ok(None);
        };
        self.store.touch_provider_session(&id_hash, now).await?;
        Ok(Some(ResolvedProviderSession {
            token_id: session.token_id,
            csrf_hash: session.csrf_hash,
            id_hash: id_hash.to_string(),
            principal,
        }))
    }

    /// Whether `presented` is the provider session's CSRF token.
    pub fn provider_csrf_matches(session: &ResolvedProviderSession, presented: &str) -> bool {
        !presented.is_empty() && ct_str_eq(&session.csrf_hash, &token_hash(presented))
    }

    pub async fn end_provider_session(&self, session: &ResolvedProviderSession) -> StoreResult<()> {
        self.store
            .delete_provider_session(&session.id_hash, self.clock.now())
            .await
    }

    /// Deletes expired admin and provider console sessions, at most once a minute per node
    /// (they are refused when read anyway; this keeps the tables small).
    pub async fn sweep_console_sessions(&self) -> StoreResult<u64> {
        let now = self.clock.now();
        let last = self
            .console_swept
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.0 - last < 60_000 {
            return Ok(0);
        }
        self.console_swept
            .store(now.0, std::sync::atomic::Ordering::Relaxed);
        let s = &self.settings;
        self.store
            .sweep_console_sessions(
                Millis(now.0 - s.console_idle_timeout_secs * 1000),
                Millis(now.0 - s.console_max_lifetime_secs * 1000),
                now,
            )
            .await
    }

    /// Who holds the provider token presented, if it is live: its operator, role and tier
    /// (the bootstrap token: owner of the platform). Read from the database on every request,
    /// so a revocation holds on every node at once.
    pub async fn provider_principal(
        &self,
        token: &str,
    ) -> StoreResult<Option<crate::domain::tier::ProviderPrincipal>> {
        self.store
            .find_provider_principal(&token_hash(token), self.clock.now())
            .await
    }

    /// Installs `configured` if given; otherwise, on a deployment with no token yet, creates
    /// one and returns it so that the caller can print it once.
    pub async fn bootstrap_provider_token(
        &self,
        configured: Option<&str>,
    ) -> StoreResult<Option<String>> {
        let now = self.clock.now();
        // Once retired (issue 15), no bootstrap token comes back: not the old one, not a new
        // configured value, not a generated one.
        if self.store.bootstrap_retired().await? {
            if configured.is_some() {
                tracing::warn!(
                    "KEYGATE_PROVIDER_TOKEN is set but the bootstrap token was retired: ignored \
                     (operators use their own tokens; unset the setting)"
                );
            }
            return Ok(None);
        }
        if let Some(token) = configured {
            self.store
                .add_provider_token(&token_hash(token), "KEYGATE_PROVIDER_TOKEN", now)
                .await?;
            return Ok(None);
        }
        if self.store.count_provider_tokens().await? > 0 {
            return Ok(None);
        }
        let token = random_token();
        self.store
            .add_provider_token(&token_hash(&token), "generated at first start", now)
            .await?;
        Ok(Some(token))
    }

    /// The org's admins whose API logins failed with the right password and a wrong key:
    /// someone else holds their password.
    pub async fn key_guess_states(&self, org: OrgId) -> StoreResult<Vec<KeyGuessState>> {
        self.store
            .key_guess_states(org, login_guard::GUESS_BUDGET)
            .await
    }

    /// Clears an admin's key-guessing budget, and so the lock on their API logins.
    pub async fn clear_key_guesses(
        &self,
        org: OrgId,
        admin: AdminId,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<()> {
        let ctx = self.ctx(actor, client);
        self.store.clear_key_guesses(org, admin, &ctx).await
    }
}
