//! The SQL both stores share. SQLite and PostgreSQL accept the same statements here (`$N`
//! parameters, `RETURNING`, `ON CONFLICT`), so one body of code serves both; `sql_store!`
//! instantiates it for each database's row and connection types. The differences are
//! passed in: how a write transaction locks an org row, and the case-insensitive `LIKE`.

use super::*;

pub(super) fn map_err(e: sqlx::Error) -> StoreError {
    let unavailable = match &e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // PostgreSQL: connection exceptions (08…), shutdown / crash / cannot connect now
        // (57P01–57P03), and serialization or deadlock failures a retry would resolve (40…).
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P") || c.starts_with("40")),
        _ => false,
    };
    crate::telemetry::db_error(unavailable);
    if unavailable {
        StoreError::Unavailable(e.into())
    } else {
        StoreError::Internal(e.into())
    }
}

/// Why PostgreSQL asked for a transaction to be run again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// SQLSTATE 40001 (serialization_failure).
    Serialization,
    /// SQLSTATE 40P01 (deadlock_detected).
    Deadlock,
}

/// How often a write transaction runs at most when PostgreSQL keeps aborting it with 40001
/// or 40P01; after that the error stands (503 `DATABASE_UNAVAILABLE`).
pub const TX_ATTEMPTS: u32 = 5;

/// Rows of usage counters one statement writes or reads at most (4 parameters a row stays
/// far below SQLite's 32,766 and PostgreSQL's 65,535).
pub const USAGE_ROWS_PER_STATEMENT: usize = 500;

/// The reason to run the transaction again, when `e` is one PostgreSQL aborted as a whole
/// (serialization failure or deadlock: it rolled back, nothing of it applied).
pub fn retry_reason(e: &StoreError) -> Option<RetryReason> {
    let StoreError::Unavailable(e) = e else {
        return None;
    };
    let sqlx::Error::Database(d) = e.downcast_ref::<sqlx::Error>()? else {
        return None;
    };
    match d.code()?.as_ref() {
        "40001" => Some(RetryReason::Serialization),
        "40P01" => Some(RetryReason::Deadlock),
        _ => None,
    }
}

/// Waits before attempt `attempt + 1`: full jitter, uniform in [0, cap] with the cap
/// doubling from 5 ms to at most 50 ms, so transactions that collided spread out.
pub async fn retry_backoff(attempt: u32) {
    use rand::Rng;
    let cap_us = (5_000u64 << attempt.saturating_sub(1).min(8)).min(50_000);
    let wait_us = rand::thread_rng().gen_range(0..=cap_us);
    tokio::time::sleep(std::time::Duration::from_micros(wait_us)).await;
}

/// Gives an attempt's async block its result type (`?` inside it needs one).
pub async fn attempt<T>(f: impl std::future::Future<Output = StoreResult<T>>) -> StoreResult<T> {
    f.await
}

/// Runs `$body` — the whole of one write transaction, from `begin` to `commit` — and runs it
/// again from the start when PostgreSQL aborted it with 40001 or 40P01, at most
/// `TX_ATTEMPTS` times with a jittered backoff. A re-run repeats every read and decision, so
/// nothing is ever half applied; any other error, or success, is returned at once.
macro_rules! retry_tx {
    ($body:block) => {{
        let mut tries = 1u32;
        loop {
            let result = $crate::store::sql::attempt(async $body).await;
            match result {
                Err(e) => match $crate::store::sql::retry_reason(&e) {
                    Some(reason) if tries < $crate::store::sql::TX_ATTEMPTS => {
                        $crate::telemetry::tx_retry(reason, true);
                        $crate::store::sql::retry_backoff(tries).await;
                        tries += 1;
                    }
                    Some(reason) => {
                        $crate::telemetry::tx_retry(reason, false);
                        break Err(e);
                    }
                    None => break Err(e),
                },
                done => break done,
            }
        }
    }};
}

pub(crate) use retry_tx;

pub(super) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub(super) const ORG_SELECT: &str = "SELECT o.id, o.name, o.subscription_enabled, o.subscription_expires_at, \
    o.call_threshold_calls, o.call_threshold_period_s, o.rate_limits, o.key_generation, o.created_at, \
    k.id AS key_id, k.sealed, k.disabled_reason, k.disabled_note, k.modified_at, \
    k.modified_by_id, k.modified_by_name, \
    o.partner_id, o.base_url, p.name AS partner_name, p.support_url AS partner_support_url, \
    p.support_email AS partner_support_email, p.created_at AS partner_created_at, \
    k.disabled_tier, k.disabled_partner_id, k.disabled_operator_id \
    FROM orgs o LEFT JOIN api_keys k ON k.org_id = o.id LEFT JOIN partners p ON p.id = o.partner_id";

/// For a batch read's `IN (…)`: the parameters `$1, … $n` and the values to bind, padded to a
/// power of two by repeating the last one, so a handful of statement texts serve every batch
/// size and stay prepared on each connection. `None` for no values.
pub(super) fn padded<T>(values: &[T]) -> Option<(String, impl Iterator<Item = &T>)> {
    let last = values.last()?;
    let n = values.len().next_power_of_two();
    let params = (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    Some((
        params,
        values
            .iter()
            .chain(std::iter::repeat_n(last, n - values.len())),
    ))
}

pub(super) fn subscription_json(s: &Subscription) -> serde_json::Value {
    serde_json::json!({ "enabled": s.enabled, "expiresAt": s.expires_at })
}

/// Which provider console sessions `end_provider_sessions` ends.
#[derive(Clone, Copy)]
pub(super) enum ProviderSessions<'a> {
    /// The session with this id hash (a logout, or one found dead).
    One(&'a str),
    /// Every session last seen before `idle_before` or created before `created_before`.
    DeadBy {
        idle_before: Millis,
        created_before: Millis,
    },
}

/// The store implementation over one database's types:
/// `sql_store!(Type, RowType, ConnectionType, lock_org: Option<&str>, like: &str,
/// delete_api_session: &str, relaxed_commit: Option<&str>)`; `relaxed_commit` is run first
/// in a transaction whose commit need not wait for the disk (login failure counters).
macro_rules! sql_store {
    ($store:ident, $row:ty, $conn:ty, $lock_org:expr, $like:expr, $delete_api_session:expr, $relaxed_commit:expr) => {
        use $crate::store::sql::{ORG_SELECT, ProviderSessions, is_unique_violation, map_err, padded, subscription_json};

        const LIKE: &str = $like;

const API_SESSION_SELECT: &str = "SELECT s.id_hash, s.generation, s.created_at AS s_created, s.last_seen_at, \
        o.key_generation, o.subscription_enabled, o.subscription_expires_at, \
        o.call_threshold_calls, o.call_threshold_period_s, o.rate_limits, \
        a.id, a.org_id, a.login_name, a.password_hash, a.role, \
        k.id AS key_id, k.disabled_reason, k.disabled_note \
    FROM api_sessions s JOIN orgs o ON o.id = s.org_id JOIN admins a ON a.id = s.admin_id \
    LEFT JOIN api_keys k ON k.org_id = s.org_id";

/// `login_failures` rows (`scope, window_start, failures`) as the counters of `scopes`, by index.
fn failure_counts_by_scope(scopes: &[String], rows: &[$row]) -> Vec<Option<FailureCount>> {
    scopes
        .iter()
        .map(|scope| {
            rows.iter()
                .find(|r| r.get::<String, _>(0) == *scope)
                .map(|r| FailureCount {
                    window_start: Millis(r.get::<i64, _>(1)),
                    failures: r.get::<i64, _>(2),
                })
        })
        .collect()
}

fn api_session_from_row(r: &$row) -> StoreResult<ApiSessionView> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    Ok(ApiSessionView {
        call_threshold: call_threshold_from_row(r)?,
        rate_limits: r.try_get("rate_limits").map_err(get)?,
        org_id: OrgId(r.try_get("org_id").map_err(get)?),
        admin: admin_from_row(r)?,
        generation: r.try_get("generation").map_err(get)?,
        created_at: Millis(r.try_get("s_created").map_err(get)?),
        last_seen_at: Millis(r.try_get("last_seen_at").map_err(get)?),
        current_generation: r.try_get("key_generation").map_err(get)?,
        subscription: subscription_from_row(r)?,
        key_present: r
            .try_get::<Option<i64>, _>("key_id")
            .map_err(get)?
            .is_some(),
        key_disabled: disablement_from_row(r)?,
    })
}

/// The org columns `subscription_enabled` and `subscription_expires_at`.
fn subscription_from_row(row: &$row) -> StoreResult<Subscription> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    Ok(Subscription {
        enabled: row.try_get::<bool, _>("subscription_enabled").map_err(get)?,
        expires_at: row.try_get("subscription_expires_at").map_err(get)?,
    })
}

/// The org columns `call_threshold_calls` and `call_threshold_period_s` (both or neither).
fn call_threshold_from_row(row: &$row) -> StoreResult<Option<CallThreshold>> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    let calls: Option<i64> = row.try_get("call_threshold_calls").map_err(get)?;
    let period: Option<i64> = row.try_get("call_threshold_period_s").map_err(get)?;
    Ok(calls.zip(period).map(|(calls, period_seconds)| CallThreshold { calls, period_seconds }))
}

/// The key columns `disabled_reason` and `disabled_note`; an unknown reason is an error, never
/// an enabled key.
fn disablement_from_row(row: &$row) -> StoreResult<Option<Disablement>> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    let reason: Option<String> = row.try_get("disabled_reason").map_err(get)?;
    let Some(reason) = reason else { return Ok(None) };
    Ok(Some(Disablement {
        reason: crate::domain::org::DisableReason::from_db(&reason).ok_or_else(|| {
            StoreError::Internal(anyhow::anyhow!("unknown disabled_reason in database"))
        })?,
        note: row.try_get("disabled_note").map_err(get)?,
    }))
}

fn org_from_row(row: &$row) -> StoreResult<OrgRecord> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    let key_id: Option<i64> = row.try_get("key_id").map_err(get)?;
    let key = match key_id {
        None => None,
        Some(id) => Some(KeyRecord {
            id: KeyId(id),
            sealed: row.try_get("sealed").map_err(get)?,
            disabled: disablement_from_row(row)?,
            modified_at: Millis(row.try_get("modified_at").map_err(get)?),
            modified_by_id: row.try_get("modified_by_id").map_err(get)?,
            modified_by_name: row.try_get("modified_by_name").map_err(get)?,
            disabled_by: disabled_by_from_row(row)?,
        }),
    };
    let partner = match row.try_get::<Option<i64>, _>("partner_id").map_err(get)? {
        None => None,
        Some(id) => Some(PartnerRecord {
            id: PartnerId(id),
            name: row.try_get("partner_name").map_err(get)?,
            support_url: row.try_get("partner_support_url").map_err(get)?,
            support_email: row.try_get("partner_support_email").map_err(get)?,
            created_at: row.try_get("partner_created_at").map_err(get)?,
        }),
    };
    Ok(OrgRecord {
        id: OrgId(row.try_get("id").map_err(get)?),
        name: row.try_get("name").map_err(get)?,
        subscription: subscription_from_row(row)?,
        call_threshold: call_threshold_from_row(row)?,
        rate_limits: row.try_get("rate_limits").map_err(get)?,
        key_generation: row.try_get("key_generation").map_err(get)?,
        created_at: Millis(row.try_get("created_at").map_err(get)?),
        key,
        partner,
        base_url: row.try_get("base_url").map_err(get)?,
    })
}

/// The key columns `disabled_tier`, `disabled_partner_id`, `disabled_operator_id`.
fn disabled_by_from_row(row: &$row) -> StoreResult<DisabledBy> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    let tier: Option<String> = row.try_get("disabled_tier").map_err(get)?;
    let partner: Option<i64> = row.try_get("disabled_partner_id").map_err(get)?;
    let tier = match (tier.as_deref(), partner) {
        (None, _) => None,
        (Some("PLATFORM"), _) => Some(Tier::Platform),
        (Some("PARTNER"), Some(p)) => Some(Tier::Partner(PartnerId(p))),
        (Some(t), _) => {
            return Err(StoreError::Internal(anyhow::anyhow!("unknown disabled_tier {t} in database")));
        }
    };
    Ok(DisabledBy {
        tier,
        operator: row
            .try_get::<Option<i64>, _>("disabled_operator_id")
            .map_err(get)?
            .map(OperatorId),
    })
}

const PARTNER_COLUMNS: &str = "id, name, support_url, support_email, created_at";

/// The partner an insert or update returned, or the conflict its name caused.
fn partner_written(row: Result<$row, sqlx::Error>, input: &PartnerInput) -> StoreResult<PartnerRecord> {
    match row {
        Ok(r) => partner_from_row(&r),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
            "A partner named {} exists already",
            input.name.as_str()
        ))),
        Err(e) => Err(map_err(e)),
    }
}

fn partner_from_row(row: &$row) -> StoreResult<PartnerRecord> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    Ok(PartnerRecord {
        id: PartnerId(row.try_get("id").map_err(get)?),
        name: row.try_get("name").map_err(get)?,
        support_url: row.try_get("support_url").map_err(get)?,
        support_email: row.try_get("support_email").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
    })
}

fn admin_from_row(row: &$row) -> StoreResult<AdminRecord> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    let role: String = row.try_get("role").map_err(get)?;
    Ok(AdminRecord {
        id: AdminId(row.try_get("id").map_err(get)?),
        org_id: OrgId(row.try_get("org_id").map_err(get)?),
        login: row.try_get("login_name").map_err(get)?,
        role: Role::from_db(&role)
            .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("unknown role in database")))?,
        password_hash: row.try_get("password_hash").map_err(get)?,
    })
}

async fn load_org(conn: &mut $conn, id: OrgId) -> StoreResult<Option<OrgRecord>> {
    let row = sqlx::query(&format!("{ORG_SELECT} WHERE o.id = $1"))
        .bind(id.0)
        .fetch_optional(&mut *conn)
        .await
        .map_err(map_err)?;
    row.as_ref().map(org_from_row).transpose()
}

/// Within a write transaction: the org, locked against concurrent changes until commit.
async fn load_org_required(conn: &mut $conn, id: OrgId) -> StoreResult<OrgRecord> {
    if let Some(lock) = $lock_org {
        sqlx::query(lock).bind(id.0).execute(&mut *conn).await.map_err(map_err)?;
    }
    load_org(conn, id).await?.ok_or(StoreError::NotFound("org"))
}

async fn insert_audit(
    conn: &mut $conn,
    org: Option<OrgId>,
    action: AuditAction,
    key_suffix: Option<String>,
    details: serde_json::Value,
    ctx: &Ctx,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, org_id, actor_kind, actor_id, actor_name, action, key_suffix, details, client_addr, \
         actor_tier, partner_id, operator_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(ctx.now.0)
    .bind(org.map(|o| o.0))
    .bind(ctx.actor.kind())
    .bind(ctx.actor.id())
    .bind(ctx.actor.name())
    .bind(action.as_str())
    .bind(key_suffix)
    .bind(details.to_string())
    .bind(ctx.client_addr.as_deref())
    .bind(ctx.actor.tier())
    .bind(ctx.actor.partner_id())
    .bind(ctx.actor.operator_id())
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(())
}

/// Every key change ends the org's API sessions (R7): they were opened with the old key.
async fn bump_generation(conn: &mut $conn, org: OrgId) -> StoreResult<i64> {
    sqlx::query("DELETE FROM api_sessions WHERE org_id = $1")
        .bind(org.0)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
    sqlx::query_scalar(
        "UPDATE orgs SET key_generation = key_generation + 1 WHERE id = $1 RETURNING key_generation",
    )
    .bind(org.0)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)
}


const PRINCIPAL_SELECT: &str = "SELECT t.id, t.operator_id, o.id AS op_id, o.login_name, o.display_name, o.role, \
        o.partner_id, o.removed_at \
     FROM provider_tokens t LEFT JOIN operators o ON o.id = t.operator_id";
/// A token that is not revoked and not expired at `$2`.
const PRINCIPAL_LIVE: &str = "t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > $2)";

/// Who holds a live token (`PRINCIPAL_SELECT`): its operator, role and tier; the bootstrap
/// token without an operator; `None` for a token of an operator that is gone or removed.
fn principal_from_row(r: &$row) -> StoreResult<Option<ProviderPrincipal>> {
    let get = |e: sqlx::Error| StoreError::Internal(e.into());
    let token_id = TokenId(r.try_get("id").map_err(get)?);
    let Some(_) = r.try_get::<Option<i64>, _>("operator_id").map_err(get)? else {
        return Ok(Some(ProviderPrincipal::bootstrap(token_id)));
    };
    // A token of an operator that is gone or removed holds nothing.
    let (Some(op_id), None) = (
        r.try_get::<Option<i64>, _>("op_id").map_err(get)?,
        r.try_get::<Option<i64>, _>("removed_at").map_err(get)?,
    ) else {
        return Ok(None);
    };
    let role: String = r.try_get("role").map_err(get)?;
    let role = OperatorRole::parse(&role)
        .ok_or_else(|| StoreError::Internal(anyhow::anyhow!("operator {op_id}: role {role}")))?;
    let tier = match r.try_get::<Option<i64>, _>("partner_id").map_err(get)? {
        Some(p) => Tier::Partner(PartnerId(p)),
        None => Tier::Platform,
    };
    Ok(Some(ProviderPrincipal {
        token_id,
        operator: Some(OperatorRef {
            id: OperatorId(op_id),
            login: r.try_get("login_name").map_err(get)?,
            name: r.try_get("display_name").map_err(get)?,
        }),
        role,
        tier,
    }))
}

/// How many replaced keys an org keeps (sealed), to recognize old scripts and to keep new
/// values distinguishable from them.
const REPLACED_KEYS_KEPT: i64 = 8;

impl $store {
    async fn load_replaced(&self, conn: &mut $conn, org: OrgId) -> StoreResult<Vec<ApiKeyValue>> {
        let sealed: Vec<Vec<u8>> = sqlx::query_scalar(
            "SELECT sealed FROM replaced_keys WHERE org_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(org.0)
        .bind(REPLACED_KEYS_KEPT)
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
        sealed
            .iter()
            .map(|s| {
                self.cipher.open(org, s).ok_or_else(|| {
                    StoreError::Internal(anyhow::anyhow!("a replaced key does not open"))
                })
            })
            .collect()
    }

    async fn remember_replaced(
        &self,
        conn: &mut $conn,
        org: OrgId,
        old: &ApiKeyValue,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO replaced_keys (org_id, sealed, replaced_at) VALUES ($1, $2, $3)")
            .bind(org.0)
            .bind(self.cipher.seal(org, old))
            .bind(now.0)
            .execute(&mut *conn)
            .await
            .map_err(map_err)?;
        sqlx::query(
            "DELETE FROM replaced_keys WHERE org_id = $1 AND id NOT IN \
             (SELECT id FROM replaced_keys WHERE org_id = $1 ORDER BY id DESC LIMIT $2)",
        )
        .bind(org.0)
        .bind(REPLACED_KEYS_KEPT)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    /// Console and API sessions are rows keyed by the hash of their id, in two tables.
    async fn touch_session_row(&self, table: &'static str, id_hash: &str, now: Millis) -> StoreResult<()> {
        sqlx::query(&format!("UPDATE {table} SET last_seen_at = $1 WHERE id_hash = $2"))
            .bind(now.0)
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn delete_session_row(&self, table: &'static str, id_hash: &str) -> StoreResult<()> {
        sqlx::query(&format!("DELETE FROM {table} WHERE id_hash = $1"))
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    /// Deletes provider console sessions and, in the same transaction, revokes at `now` the
    /// live tokens that operator sign-ins made for them: such a token lives exactly as long as
    /// its session. How many sessions went.
    async fn end_provider_sessions(&self, which: ProviderSessions<'_>, now: Millis) -> StoreResult<u64> {
        let (condition, params) = match which {
            ProviderSessions::One(_) => ("id_hash = $1", 1),
            ProviderSessions::DeadBy { .. } => ("last_seen_at < $1 OR created_at < $2", 2),
        };
        let revoke = format!(
            "UPDATE provider_tokens SET revoked_at = ${} WHERE console_signin AND revoked_at IS NULL \
             AND id IN (SELECT token_id FROM provider_console_sessions WHERE {condition})",
            params + 1
        );
        let delete = format!("DELETE FROM provider_console_sessions WHERE {condition}");
        $crate::store::sql::retry_tx!({
            let mut tx = self.writer.begin().await.map_err(map_err)?;
            let (mut revoke, mut delete) = (sqlx::query(&revoke), sqlx::query(&delete));
            match which {
                ProviderSessions::One(id_hash) => {
                    revoke = revoke.bind(id_hash);
                    delete = delete.bind(id_hash);
                }
                ProviderSessions::DeadBy { idle_before, created_before } => {
                    revoke = revoke.bind(idle_before.0).bind(created_before.0);
                    delete = delete.bind(idle_before.0).bind(created_before.0);
                }
            }
            revoke.bind(now.0).execute(&mut *tx).await.map_err(map_err)?;
            let gone = delete.execute(&mut *tx).await.map_err(map_err)?.rows_affected();
            tx.commit().await.map_err(map_err)?;
            Ok(gone)
        })
    }

    /// Refuses a master key that does not open the check value sealed at first start, so a
    /// wrong key fails the start instead of every key operation later.
    async fn verify_master_key(&self, where_it_lives: &str) -> anyhow::Result<()> {
        let check: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'master_key_check'").fetch_optional(&self.writer).await?;
        match check {
            Some(sealed) if !self.cipher.opens_check(&sealed) => anyhow::bail!(
                "the master key does not match this database (was KEYGATE_MASTER_KEY or {where_it_lives} changed?)"
            ),
            Some(_) => Ok(()),
            None => {
                sqlx::query("INSERT INTO meta (name, value) VALUES ('master_key_check', $1) ON CONFLICT DO NOTHING")
                    .bind(self.cipher.seal_check())
                    .execute(&self.writer)
                    .await?;
                Ok(())
            }
        }
    }

    async fn insert_admin(
        conn: &mut $conn,
        org: OrgId,
        admin: &NewAdmin,
        now: Millis,
    ) -> StoreResult<AdminId> {
        let res = sqlx::query(
            "INSERT INTO admins (org_id, login_name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(org.0)
        .bind(admin.login.as_str())
        .bind(&admin.password_hash)
        .bind(admin.role.as_str())
        .bind(now.0)
        .fetch_one(&mut *conn)
        .await;
        match res {
            Ok(row) => Ok(AdminId(row.get::<i64, _>(0))),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::LoginNameTaken(admin.login.as_str().to_owned()))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn insert_key(
        &self,
        conn: &mut $conn,
        org: OrgId,
        value: &ApiKeyValue,
        ctx: &Ctx,
    ) -> StoreResult<()> {
        let res = sqlx::query(
            "INSERT INTO api_keys (org_id, sealed, modified_at, modified_by_id, modified_by_name) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(org.0)
        .bind(self.cipher.seal(org, value))
        .bind(ctx.now.0)
        .bind(ctx.actor.id())
        .bind(ctx.actor.name())
        .execute(&mut *conn)
        .await;
        match res {
            Ok(_) => Ok(()),
            // R1 held by the database even if a caller's check was wrong.
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::Refused(Refusal::KeyAlreadyExists))
            }
            Err(e) => Err(map_err(e)),
        }
    }

    async fn provision(
        &self,
        conn: &mut $conn,
        org: OrgId,
        value: &ApiKeyValue,
        ctx: &Ctx,
    ) -> StoreResult<()> {
        let replaced = self.load_replaced(conn, org).await?;
        let value = &key_change::fresh_provision(value.clone(), &replaced, &mut rand::rngs::OsRng);
        self.insert_key(conn, org, value, ctx).await?;
        let generation = bump_generation(conn, org).await?;
        insert_audit(
            conn,
            Some(org),
            AuditAction::KeyProvision,
            Some(value.suffix()),
            serde_json::json!({ "generation": generation }),
            ctx,
        )
        .await
    }
}


#[async_trait]
impl Store for $store {
    async fn ready(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn create_org(
        &self,
        org: NewOrg,
        provision: ApiKeyValue,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO orgs (name, subscription_enabled, subscription_expires_at, call_threshold_calls, \
             call_threshold_period_s, created_at, partner_id) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        )
        .bind(org.name.as_str())
        .bind(org.subscription.enabled)
        .bind(org.subscription.expires_at)
        .bind(org.call_threshold.map(|t| t.calls))
        .bind(org.call_threshold.map(|t| t.period_seconds))
        .bind(ctx.now.0)
        .bind(org.partner.map(|p| p.0))
        .fetch_one(&mut *tx)
        .await
        .map_err(map_err)?;
        let org_id = OrgId(id);
        insert_audit(
            &mut tx,
            Some(org_id),
            AuditAction::OrgCreate,
            None,
            serde_json::json!({
                "name": org.name.as_str(),
                "subscription": subscription_json(&org.subscription),
                "callThreshold": org.call_threshold,
                "partnerId": org.partner,
            }),
            ctx,
        )
        .await?;
        for admin in &org.admins {
            let admin_id = Self::insert_admin(&mut tx, org_id, admin, ctx.now).await?;
            insert_audit(
                &mut tx,
                Some(org_id),
                AuditAction::AdminAdd,
                None,
                serde_json::json!({ "adminId": admin_id, "loginName": admin.login.as_str(), "role": admin.role }),
                ctx,
            )
            .await?;
        }
        if org.subscription.enabled {
            self.provision(&mut tx, org_id, &provision, ctx).await?;
        }
        let record = load_org_required(&mut tx, org_id).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn get_org(&self, id: OrgId) -> StoreResult<Option<OrgRecord>> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        load_org(&mut conn, id).await
    }

    async fn list_orgs(
        &self,
        page: Page,
        name_contains: Option<&str>,
    ) -> StoreResult<(Vec<OrgRecord>, i64)> {
        self.list_orgs_of(page, name_contains, None).await
    }

    async fn set_subscription(
        &self,
        org: OrgId,
        subscription: Subscription,
        provision: ApiKeyValue,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let before = load_org_required(&mut tx, org).await?;
        sqlx::query(
            "UPDATE orgs SET subscription_enabled = $1, subscription_expires_at = $2 WHERE id = $3",
        )
        .bind(subscription.enabled)
        .bind(subscription.expires_at)
        .bind(org.0)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::SubscriptionUpdate,
            None,
            serde_json::json!({
                "previous": subscription_json(&before.subscription),
                "subscription": subscription_json(&subscription),
            }),
            ctx,
        )
        .await?;
        if subscription.enabled && !before.subscription.enabled && before.key.is_none() {
            self.provision(&mut tx, org, &provision, ctx).await?;
        }
        let record = load_org_required(&mut tx, org).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn provider_key_action(
        &self,
        org: OrgId,
        action: ProviderKeyAction,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        // Each attempt starts from what the caller asked.
        let action = action.clone();
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let before = load_org_required(&mut tx, org).await?;
        let key = before.key.as_ref().ok_or(StoreError::NotFound("key"))?;
        let suffix = self.open_key(org, key)?.suffix();
        let action = match action {
            ProviderKeyAction::AutoDisable(_) if key.disabled.is_some() => {
                tx.rollback().await.map_err(map_err)?;
                return Ok(before);
            }
            ProviderKeyAction::AutoDisable(d) => ProviderKeyAction::Disable(d, DisabledBy::default()),
            other => other,
        };
        match action {
            ProviderKeyAction::AutoDisable(_) => unreachable!("mapped to Disable above"),
            ProviderKeyAction::Disable(d, by) => {
                sqlx::query(
                    "UPDATE api_keys SET disabled_reason = $1, disabled_note = $2, disabled_tier = $3, \
                     disabled_partner_id = $4, disabled_operator_id = $5 WHERE org_id = $6",
                )
                .bind(d.reason.as_str())
                .bind(&d.note)
                .bind(by.tier.map(|t| t.label()))
                .bind(by.tier.and_then(|t| t.partner()).map(|p| p.0))
                .bind(by.operator.map(|o| o.0))
                .bind(org.0)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let generation = bump_generation(&mut tx, org).await?;
                insert_audit(
                    &mut tx,
                    Some(org),
                    AuditAction::KeyDisable,
                    Some(suffix),
                    serde_json::json!({
                        "reason": d.reason, "note": d.note, "generation": generation,
                        "disabledTier": by.tier.map(|t| t.label()),
                        "disabledPartnerId": by.tier.and_then(|t| t.partner()),
                    }),
                    ctx,
                )
                .await?;
            }
            ProviderKeyAction::Enable(tier) => {
                if key.disabled.is_none() {
                    // Already enabled: nothing changes, so nothing to audit.
                    tx.rollback().await.map_err(map_err)?;
                    return Ok(before);
                }
                if !key.disabled_by.may_enable(tier) {
                    tx.rollback().await.map_err(map_err)?;
                    return Err(StoreError::Refused(Refusal::DisabledByPlatform));
                }
                sqlx::query(
                    "UPDATE api_keys SET disabled_reason = NULL, disabled_note = NULL, disabled_tier = NULL, \
                     disabled_partner_id = NULL, disabled_operator_id = NULL WHERE org_id = $1",
                )
                    .bind(org.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let tripped = key.disabled.as_ref().map(|d| d.reason)
                    == Some(crate::domain::org::DisableReason::CallThresholdExceeded);
                if tripped {
                    // After R9 the period's count starts afresh, in the same transaction, so
                    // no node trips the key again on the old total.
                    let (period, start) = crate::service::meter::period_of(before.call_threshold, ctx.now);
                    sqlx::query(
                        "INSERT INTO usage_counters (org_id, period_seconds, period_start, calls) VALUES ($1, $2, $3, 0) \
                         ON CONFLICT (org_id, period_seconds, period_start) DO UPDATE SET calls = 0",
                    )
                    .bind(org.0)
                    .bind(period)
                    .bind(start)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                }
                let generation = bump_generation(&mut tx, org).await?;
                insert_audit(
                    &mut tx,
                    Some(org),
                    AuditAction::KeyEnable,
                    Some(suffix),
                    serde_json::json!({ "generation": generation }),
                    ctx,
                )
                .await?;
            }
        }
        let record = load_org_required(&mut tx, org).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn add_admin(&self, org: OrgId, admin: NewAdmin, ctx: &Ctx) -> StoreResult<AdminRecord> {
        $crate::store::sql::retry_tx!({
        // Each attempt starts from what the caller asked.
        let admin = admin.clone();
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        load_org_required(&mut tx, org).await?;
        let id = Self::insert_admin(&mut tx, org, &admin, ctx.now).await?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::AdminAdd,
            None,
            serde_json::json!({ "adminId": id, "loginName": admin.login.as_str(), "role": admin.role }),
            ctx,
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(AdminRecord {
            id,
            org_id: org,
            login: admin.login.as_str().to_owned(),
            role: admin.role,
            password_hash: admin.password_hash,
        })
    })
    }

    async fn remove_admin(&self, org: OrgId, admin: AdminId, ctx: &Ctx) -> StoreResult<()> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row = sqlx::query("SELECT * FROM admins WHERE id = $1 AND org_id = $2")
            .bind(admin.0)
            .bind(org.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let record = admin_from_row(&row.ok_or(StoreError::NotFound("admin"))?)?;
        for table in ["console_sessions", "api_sessions", "audit_reports"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE admin_id = $1"))
                .bind(admin.0)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
        }
        sqlx::query("DELETE FROM admins WHERE id = $1")
            .bind(admin.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::AdminRemove,
            None,
            serde_json::json!({ "adminId": admin, "loginName": record.login, "role": record.role }),
            ctx,
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    })
    }

    async fn list_admins(&self, org: OrgId) -> StoreResult<Vec<AdminRecord>> {
        let rows = sqlx::query("SELECT * FROM admins WHERE org_id = $1 ORDER BY id")
            .bind(org.0)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(admin_from_row).collect()
    }

    async fn find_admin_by_login(&self, login: &LoginName) -> StoreResult<Option<AdminRecord>> {
        let row = sqlx::query("SELECT * FROM admins WHERE login_name = $1")
            .bind(login.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(admin_from_row).transpose()
    }

    async fn get_admin(&self, id: AdminId) -> StoreResult<Option<AdminRecord>> {
        let row = sqlx::query("SELECT * FROM admins WHERE id = $1")
            .bind(id.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(admin_from_row).transpose()
    }

    async fn change_key(
        &self,
        org: OrgId,
        admin: AdminId,
        change: KeyChange,
        expected_generation: Option<i64>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        // Each attempt starts from what the caller asked.
        let change = change.clone();
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        // The admin's role is read inside the transaction: a demotion or removal that
        // committed first wins.
        let admin_row = sqlx::query("SELECT * FROM admins WHERE id = $1 AND org_id = $2")
            .bind(admin.0)
            .bind(org.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?;
        let admin = admin_from_row(&admin_row.ok_or(StoreError::Refused(Refusal::NotAuthorized))?)?;
        let before = load_org_required(&mut tx, org).await?;
        let current = before
            .key
            .as_ref()
            .map(|k| self.open_key(org, k))
            .transpose()?;
        if expected_generation.is_some_and(|g| g != before.key_generation) {
            return Err(StoreError::SessionEnded);
        }
        let replaced = self.load_replaced(&mut tx, org).await?;
        let mut change = change;
        key_change::decide(
            &mut change,
            admin.role,
            before.subscription.state_at(ctx.now),
            &before.key_presence(),
            current.as_ref(),
            &replaced,
            &mut rand::rngs::OsRng,
        )
        .map_err(StoreError::Refused)?;
        if let Some(old) = &current {
            self.remember_replaced(&mut tx, org, old, ctx.now).await?;
        }

        let (action, suffix) = match &change {
            KeyChange::Add(value) => {
                self.insert_key(&mut tx, org, value, ctx).await?;
                (AuditAction::KeyAdd, value.suffix())
            }
            KeyChange::Edit(value) | KeyChange::Regenerate(value) => {
                sqlx::query(
                    "UPDATE api_keys SET sealed = $1, modified_at = $2, modified_by_id = $3, modified_by_name = $4 \
                     WHERE org_id = $5",
                )
                .bind(self.cipher.seal(org, value))
                .bind(ctx.now.0)
                .bind(ctx.actor.id())
                .bind(ctx.actor.name())
                .bind(org.0)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
                let action = if matches!(change, KeyChange::Edit(_)) {
                    AuditAction::KeyEdit
                } else {
                    AuditAction::KeyRegenerate
                };
                (action, value.suffix())
            }
            KeyChange::Delete => {
                sqlx::query("DELETE FROM api_keys WHERE org_id = $1")
                    .bind(org.0)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
                let old = current
                    .as_ref()
                    .map(ApiKeyValue::suffix)
                    .unwrap_or_default();
                (AuditAction::KeyDelete, old)
            }
        };
        let generation = bump_generation(&mut tx, org).await?;
        insert_audit(
            &mut tx,
            Some(org),
            action,
            Some(suffix),
            serde_json::json!({
                "previousKeySuffix": current.as_ref().map(ApiKeyValue::suffix),
                "generation": generation,
            }),
            ctx,
        )
        .await?;
        let record = load_org_required(&mut tx, org).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn reveal_key(&self, org: OrgId, ctx: &Ctx) -> StoreResult<ApiKeyValue> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let record = load_org_required(&mut tx, org).await?;
        let key = record
            .key
            .as_ref()
            .ok_or(StoreError::Refused(Refusal::NoKey))?;
        let value = self.open_key(org, key)?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::KeyReveal,
            Some(value.suffix()),
            serde_json::json!({}),
            ctx,
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(value)
    })
    }

    fn open_key(&self, org: OrgId, key: &KeyRecord) -> StoreResult<ApiKeyValue> {
        self.cipher.open(org, &key.sealed).ok_or_else(|| {
            StoreError::Internal(anyhow::anyhow!(
                "a stored key does not open: wrong master key or damaged row"
            ))
        })
    }

    async fn append_audit(
        &self,
        org: Option<OrgId>,
        action: AuditAction,
        details: serde_json::Value,
        ctx: &Ctx,
    ) -> StoreResult<()> {
        // A transaction of its own: through a transaction-mode pooler a write commits only there.
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        insert_audit(&mut tx, org, action, None, details, ctx).await?;
        tx.commit().await.map_err(map_err)
    }

    async fn list_audit(
        &self,
        filter: AuditFilter,
        page: Page,
    ) -> StoreResult<(Vec<AuditRecord>, i64)> {
        const WHERE: &str = "WHERE ($1 IS NULL OR org_id = $1) AND ($2 IS NULL OR at >= $2) AND ($3 IS NULL OR at <= $3)";
        let rows = sqlx::query(&format!(
            "SELECT * FROM audit_log {WHERE} ORDER BY id DESC LIMIT $4 OFFSET $5"
        ))
        .bind(filter.org.map(|o| o.0))
        .bind(filter.from.map(|m| m.0))
        .bind(filter.to.map(|m| m.0))
        .bind(page.size as i64)
        .bind(page.offset())
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        let total: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM audit_log {WHERE}"))
            .bind(filter.org.map(|o| o.0))
            .bind(filter.from.map(|m| m.0))
            .bind(filter.to.map(|m| m.0))
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)?;
        let get = |e: sqlx::Error| StoreError::Internal(e.into());
        let records = rows
            .iter()
            .map(|r| {
                let details: String = r.try_get("details").map_err(get)?;
                Ok(AuditRecord {
                    id: AuditId(r.try_get("id").map_err(get)?),
                    time: r.try_get("at").map_err(get)?,
                    org_id: r
                        .try_get::<Option<i64>, _>("org_id")
                        .map_err(get)?
                        .map(OrgId),
                    actor_type: r.try_get("actor_kind").map_err(get)?,
                    actor_id: r.try_get("actor_id").map_err(get)?,
                    actor_name: r.try_get("actor_name").map_err(get)?,
                    actor_tier: r.try_get("actor_tier").map_err(get)?,
                    partner_id: r.try_get("partner_id").map_err(get)?,
                    operator_id: r.try_get("operator_id").map_err(get)?,
                    action: r.try_get("action").map_err(get)?,
                    key_suffix: r.try_get("key_suffix").map_err(get)?,
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                    client_address: r.try_get("client_addr").map_err(get)?,
                })
            })
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((records, total))
    }

    async fn add_provider_token(
        &self,
        token_hash: &str,
        label: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO provider_tokens (token_hash, label, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(token_hash)
            .bind(label)
            .bind(now.0)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn count_provider_tokens(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT count(*) FROM provider_tokens")
            .fetch_one(&self.reader)
            .await
            .map_err(map_err)
    }

    async fn find_provider_principal(
        &self,
        token_hash: &str,
        now: Millis,
    ) -> StoreResult<Option<ProviderPrincipal>> {
        let row = sqlx::query(&format!("{PRINCIPAL_SELECT} WHERE t.token_hash = $1 AND {PRINCIPAL_LIVE}"))
        .bind(token_hash)
        .bind(now.0)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        row.as_ref().map(principal_from_row).transpose().map(Option::flatten)
    }

    async fn create_console_session(
        &self,
        id_hash: &str,
        admin: AdminId,
        csrf_hash: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, admin_id, csrf_hash, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(admin.0)
        .bind(csrf_hash)
        .bind(now.0)
        .bind(now.0)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_console_session(&self, id_hash: &str) -> StoreResult<Option<ConsoleSession>> {
        let row = sqlx::query("SELECT admin_id, csrf_hash, created_at, last_seen_at FROM console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.map(|r| ConsoleSession {
            admin_id: AdminId(r.get("admin_id")),
            csrf_hash: r.get("csrf_hash"),
            created_at: Millis(r.get("created_at")),
            last_seen_at: Millis(r.get("last_seen_at")),
        }))
    }

    async fn touch_console_session(&self, id_hash: &str, now: Millis) -> StoreResult<()> {
        self.touch_session_row("console_sessions", id_hash, now).await
    }

    async fn delete_console_session(&self, id_hash: &str) -> StoreResult<()> {
        self.delete_session_row("console_sessions", id_hash).await
    }

    async fn create_provider_session(
        &self,
        id_hash: &str,
        token_id: i64,
        csrf_hash: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO provider_console_sessions (id_hash, token_id, csrf_hash, created_at, last_seen_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(id_hash)
        .bind(token_id)
        .bind(csrf_hash)
        .bind(now.0)
        .bind(now.0)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_provider_session(&self, id_hash: &str) -> StoreResult<Option<ProviderConsoleSession>> {
        let row = sqlx::query("SELECT token_id, csrf_hash, created_at, last_seen_at FROM provider_console_sessions WHERE id_hash = $1")
            .bind(id_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.map(|r| ProviderConsoleSession {
            token_id: r.get("token_id"),
            csrf_hash: r.get("csrf_hash"),
            created_at: Millis(r.get("created_at")),
            last_seen_at: Millis(r.get("last_seen_at")),
        }))
    }

    async fn touch_provider_session(&self, id_hash: &str, now: Millis) -> StoreResult<()> {
        self.touch_session_row("provider_console_sessions", id_hash, now).await
    }

    async fn delete_provider_session(&self, id_hash: &str, now: Millis) -> StoreResult<()> {
        self.end_provider_sessions(ProviderSessions::One(id_hash), now).await.map(drop)
    }

    async fn sweep_console_sessions(&self, idle_before: Millis, created_before: Millis, now: Millis) -> StoreResult<u64> {
        let gone = sqlx::query("DELETE FROM console_sessions WHERE last_seen_at < $1 OR created_at < $2")
            .bind(idle_before.0)
            .bind(created_before.0)
            .execute(&self.writer)
            .await
            .map_err(map_err)?
            .rows_affected();
        let dead = ProviderSessions::DeadBy { idle_before, created_before };
        Ok(gone + self.end_provider_sessions(dead, now).await?)
    }

    async fn put_audit_report(&self, admin: AdminId, report: &crate::service::reports::AuditReport) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO audit_reports (admin_id, csv, rows_count, finished_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (admin_id) DO UPDATE SET csv = excluded.csv, rows_count = excluded.rows_count, \
             finished_at = excluded.finished_at",
        )
        .bind(admin.0)
        .bind(&report.csv)
        .bind(report.rows as i64)
        .bind(report.finished_at.0)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn get_audit_report(&self, admin: AdminId) -> StoreResult<Option<crate::service::reports::AuditReport>> {
        let row = sqlx::query("SELECT csv, rows_count, finished_at FROM audit_reports WHERE admin_id = $1")
            .bind(admin.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(row.map(|r| crate::service::reports::AuditReport {
            csv: r.get(0),
            rows: r.get::<i64, _>(1) as usize,
            finished_at: Millis(r.get(2)),
        }))
    }

    async fn delete_audit_report(&self, admin: AdminId) -> StoreResult<()> {
        sqlx::query("DELETE FROM audit_reports WHERE admin_id = $1").bind(admin.0).execute(&self.writer).await.map_err(map_err)?;
        Ok(())
    }

    async fn create_api_session(
        &self,
        id_hash: &str,
        admin: &AdminRecord,
        generation: i64,
        now: Millis,
    ) -> StoreResult<()> {
        // Only if the generation is still current: a key change that committed after the
        // login checked the key must not let this session through.
        let res = sqlx::query(
            "INSERT INTO api_sessions (id_hash, org_id, admin_id, generation, created_at, last_seen_at) \
             SELECT $1, id, $2, key_generation, $3, $4 FROM orgs WHERE id = $5 AND key_generation = $6",
        )
        .bind(id_hash)
        .bind(admin.id.0)
        .bind(now.0)
        .bind(now.0)
        .bind(admin.org_id.0)
        .bind(generation)
        .execute(&self.writer)
        .await
        .map_err(map_err)?;
        if res.rows_affected() == 1 {
            Ok(())
        } else {
            Err(StoreError::NotFound("current key generation"))
        }
    }

    async fn get_api_session(&self, id_hash: &str) -> StoreResult<Option<ApiSessionView>> {
        let sql = format!("{API_SESSION_SELECT} WHERE s.id_hash = $1");
        let row = sqlx::query(&sql)
            .bind(id_hash)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(api_session_from_row).transpose()
    }

    async fn get_orgs(&self, ids: &[OrgId]) -> StoreResult<Vec<(OrgId, OrgRecord)>> {
        let Some((params, ids)) = padded(ids) else { return Ok(Vec::new()) };
        let sql = format!("{ORG_SELECT} WHERE o.id IN ({params})");
        let query = ids.fold(sqlx::query(&sql), |q, id| q.bind(id.0));
        let rows = query.fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter()
            .map(|r| org_from_row(r).map(|org| (org.id, org)))
            .collect()
    }

    async fn get_api_sessions(&self, id_hashes: &[String]) -> StoreResult<Vec<(String, ApiSessionView)>> {
        let Some((params, hashes)) = padded(id_hashes) else { return Ok(Vec::new()) };
        let sql = format!("{API_SESSION_SELECT} WHERE s.id_hash IN ({params})");
        let query = hashes.fold(sqlx::query(&sql), |q, hash| q.bind(hash));
        let rows = query.fetch_all(&self.reader).await.map_err(map_err)?;
        rows.iter()
            .map(|r| {
                let hash: String = r.try_get("id_hash").map_err(|e| StoreError::Internal(e.into()))?;
                Ok((hash, api_session_from_row(r)?))
            })
            .collect()
    }

    async fn touch_api_session(&self, id_hash: &str, now: Millis) -> StoreResult<()> {
        self.touch_session_row("api_sessions", id_hash, now).await
    }

    async fn delete_api_session(&self, id_hash: &str) -> StoreResult<()> {
        sqlx::query($delete_api_session)
            .bind(id_hash)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn login_failure_counts(
        &self,
        scopes: &[String],
        window_ms: i64,
        now: Millis,
    ) -> StoreResult<Vec<Option<FailureCount>>> {
        let Some((params, values)) = padded(scopes) else {
            return Ok(Vec::new());
        };
        let n = scopes.len().next_power_of_two();
        let sql = format!(
            "SELECT scope, window_start, failures FROM login_failures WHERE scope IN ({params}) AND window_start > ${}",
            n + 1
        );
        let mut query = sqlx::query(&sql);
        for v in values {
            query = query.bind(v);
        }
        let rows = query
            .bind(now.0 - window_ms)
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        Ok(failure_counts_by_scope(scopes, &rows))
    }

    async fn sweep_login_failures(&self, before: Millis) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM login_failures WHERE window_start < $1")
            .bind(before.0)
            .execute(&self.writer)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn count_login_failure(
        &self,
        scopes: &[String],
        window_ms: i64,
        now: Millis,
    ) -> StoreResult<Vec<FailureCount>> {
        $crate::store::sql::retry_tx!({
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        if let Some(relaxed) = $relaxed_commit {
            sqlx::query(relaxed).execute(&mut *tx).await.map_err(map_err)?;
        }
        // One statement, rows in the same order (address, pair, login) in every transaction,
        // so concurrent ones never wait for each other in a cycle.
        let values = (0..scopes.len())
            .map(|i| format!("(${}, $1, 1)", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO login_failures (scope, window_start, failures) VALUES {values} \
             ON CONFLICT (scope) DO UPDATE SET \
             failures = CASE WHEN login_failures.window_start + $2 <= $1 THEN 1 ELSE login_failures.failures + 1 END, \
             window_start = CASE WHEN login_failures.window_start + $2 <= $1 THEN $1 ELSE login_failures.window_start END \
             RETURNING scope, window_start, failures"
        );
        let mut query = sqlx::query(&sql).bind(now.0).bind(window_ms);
        for scope in scopes {
            query = query.bind(scope);
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(map_err)?;
        tx.commit().await.map_err(map_err)?;
        failure_counts_by_scope(scopes, &rows)
            .into_iter()
            .map(|count| count.ok_or_else(|| StoreError::Internal(anyhow::anyhow!("a counted scope was not returned"))))
            .collect()
    })
    }

    async fn key_guess_check(
        &self,
        admin: AdminId,
        charge: f64,
        budget: f64,
        failure: Option<LoginFailure>,
        ctx: &Ctx,
    ) -> StoreResult<GuessCheck> {
        $crate::store::sql::retry_tx!({
        // Each attempt starts from what the caller asked.
        let failure = failure.clone();
        if charge == 0.0 {
            // Nothing to charge: a read places this check in the order of the charges as well
            // as the row lock would (it sees every charge committed before it), and many
            // logins of one admin at once (an old script's retries) do not queue on the row.
            let spent: Option<f64> = sqlx::query_scalar("SELECT key_guess_spent FROM admins WHERE id = $1")
                .bind(admin.0)
                .fetch_optional(&self.reader)
                .await
                .map_err(map_err)?;
            if !spent.is_some_and(|s| s < budget) {
                return Ok(GuessCheck::Locked);
            }
            if let Some(f) = failure {
                self.append_audit(f.org, f.action, f.details, ctx).await?;
            }
            return Ok(GuessCheck::Open);
        }
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        // One statement both checks and charges, under the row's lock: concurrent guesses
        // are charged one after another and none passes a budget that another reached.
        let spent: Option<f64> = sqlx::query_scalar(
            "UPDATE admins SET key_guess_spent = key_guess_spent + $2, \
             key_guess_failures = key_guess_failures + CASE WHEN $2 > 0 THEN 1 ELSE 0 END, \
             key_guess_last_at = CASE WHEN $2 > 0 THEN $4 ELSE key_guess_last_at END \
             WHERE id = $1 AND key_guess_spent < $3 RETURNING key_guess_spent",
        )
        .bind(admin.0)
        .bind(charge)
        .bind(budget)
        .bind(ctx.now.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?;
        let Some(spent) = spent else {
            return Ok(GuessCheck::Locked);
        };
        let org = failure.as_ref().and_then(|f| f.org);
        if let Some(f) = failure {
            insert_audit(&mut tx, f.org, f.action, None, f.details, ctx).await?;
        }
        let locked_now = charge > 0.0 && spent >= budget;
        if locked_now {
            insert_audit(
                &mut tx,
                org,
                AuditAction::KeyGuessLock,
                None,
                serde_json::json!({ "via": "api", "charged": spent, "budget": budget }),
                ctx,
            )
            .await?;
        }
        tx.commit().await.map_err(map_err)?;
        Ok(if locked_now { GuessCheck::LockedNow } else { GuessCheck::Open })
    })
    }

    async fn clear_key_guesses(&self, org: OrgId, admin: AdminId, ctx: &Ctx) -> StoreResult<()> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row = sqlx::query(
            "SELECT login_name, key_guess_failures, key_guess_spent FROM admins WHERE id = $1 AND org_id = $2",
        )
        .bind(admin.0)
        .bind(org.0)
        .fetch_optional(&mut *tx)
        .await
        .map_err(map_err)?
        .ok_or(StoreError::NotFound("admin"))?;
        sqlx::query("UPDATE admins SET key_guess_spent = 0, key_guess_failures = 0 WHERE id = $1")
            .bind(admin.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::KeyGuessClear,
            None,
            serde_json::json!({
                "adminId": admin,
                "loginName": row.get::<String, _>(0),
                "failures": row.get::<i64, _>(1),
                "charged": row.get::<f64, _>(2),
            }),
            ctx,
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(())
    })
    }

    async fn key_guess_states(&self, org: OrgId, budget: f64) -> StoreResult<Vec<KeyGuessState>> {
        let rows = sqlx::query(
            "SELECT id, login_name, key_guess_failures, key_guess_spent, key_guess_last_at FROM admins \
             WHERE org_id = $1 AND key_guess_failures > 0 ORDER BY id",
        )
        .bind(org.0)
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| {
                let charged: f64 = r.get(3);
                KeyGuessState {
                    admin_id: AdminId(r.get(0)),
                    login_name: r.get(1),
                    failures: r.get(2),
                    charged,
                    last_at: r.get(4),
                    locked: charged >= budget,
                }
            })
            .collect())
    }

    async fn replaced_keys(&self, org: OrgId) -> StoreResult<Vec<ApiKeyValue>> {
        let mut conn = self.reader.acquire().await.map_err(map_err)?;
        self.load_replaced(&mut conn, org).await
    }

    async fn set_limits(
        &self,
        org: OrgId,
        threshold: Option<CallThreshold>,
        rate_limits: Option<String>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let before = load_org_required(&mut tx, org).await?;
        sqlx::query(
            "UPDATE orgs SET call_threshold_calls = $1, call_threshold_period_s = $2, rate_limits = $3 WHERE id = $4",
        )
        .bind(threshold.map(|t| t.calls))
        .bind(threshold.map(|t| t.period_seconds))
        .bind(&rate_limits)
        .bind(org.0)
        .execute(&mut *tx)
        .await
        .map_err(map_err)?;
        let rules: Option<serde_json::Value> = rate_limits.as_deref().and_then(|r| serde_json::from_str(r).ok());
        let previous: Option<serde_json::Value> = before.rate_limits.as_deref().and_then(|r| serde_json::from_str(r).ok());
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::LimitsUpdate,
            None,
            serde_json::json!({
                "callThreshold": threshold, "rateLimits": rules,
                "previous": {"callThreshold": before.call_threshold, "rateLimits": previous},
            }),
            ctx,
        )
        .await?;
        let record = load_org_required(&mut tx, org).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn add_usage(&self, deltas: &[(OrgId, i64, i64, i64)]) -> StoreResult<()> {
        // One row per period (a failed flush's counts may come back beside newer ones: one
        // statement may not update a row twice), in one global order, so flushes of several
        // nodes lock rows alike and cannot deadlock.
        let mut summed: std::collections::BTreeMap<(i64, i64, i64), i64> = Default::default();
        for (org, period, start, calls) in deltas {
            *summed.entry((org.0, *period, *start)).or_default() += calls;
        }
        let rows: Vec<_> = summed.into_iter().collect();
        $crate::store::sql::retry_tx!({
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        // One statement per chunk instead of one round trip per org.
        for chunk in rows.chunks($crate::store::sql::USAGE_ROWS_PER_STATEMENT) {
            let mut insert = sqlx::QueryBuilder::<<$row as sqlx::Row>::Database>::new(
                "INSERT INTO usage_counters (org_id, period_seconds, period_start, calls) ",
            );
            insert.push_values(chunk, |mut b, ((org, period, start), calls)| {
                b.push_bind(*org).push_bind(*period).push_bind(*start).push_bind(*calls);
            });
            insert.push(
                " ON CONFLICT (org_id, period_seconds, period_start) \
                 DO UPDATE SET calls = usage_counters.calls + excluded.calls",
            );
            // Not kept prepared: one text per batch size would crowd the hot statements out
            // of each connection's statement cache, for a write made once a second.
            insert.build().persistent(false).execute(&mut *tx).await.map_err(map_err)?;
        }
        tx.commit().await.map_err(map_err)
    })
    }

    async fn usage_calls(&self, org: OrgId, period_seconds: i64, period_start: i64) -> StoreResult<i64> {
        let calls: Option<i64> = sqlx::query_scalar(
            "SELECT calls FROM usage_counters WHERE org_id = $1 AND period_seconds = $2 AND period_start = $3",
        )
        .bind(org.0)
        .bind(period_seconds)
        .bind(period_start)
        .fetch_optional(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(calls.unwrap_or(0))
    }

    async fn usage_calls_of(&self, periods: &[(OrgId, i64, i64)]) -> StoreResult<Vec<i64>> {
        let mut found: std::collections::HashMap<(i64, i64, i64), i64> = Default::default();
        for chunk in periods.chunks($crate::store::sql::USAGE_ROWS_PER_STATEMENT) {
            let mut select = sqlx::QueryBuilder::<<$row as sqlx::Row>::Database>::new(
                "SELECT org_id, period_seconds, period_start, calls FROM usage_counters \
                 WHERE (org_id, period_seconds, period_start) IN (",
            );
            // Padded to a power of two as `padded` does, so a handful of statement texts stay
            // prepared instead of one per batch size.
            let Some(last) = chunk.last() else { continue };
            let rows = chunk
                .iter()
                .chain(std::iter::repeat_n(last, chunk.len().next_power_of_two() - chunk.len()));
            select.push_values(rows, |mut b, (org, period, start)| {
                b.push_bind(org.0).push_bind(*period).push_bind(*start);
            });
            select.push(")");
            for r in select.build().fetch_all(&self.reader).await.map_err(map_err)? {
                let get = |e: sqlx::Error| StoreError::Internal(e.into());
                found.insert(
                    (
                        r.try_get(0).map_err(get)?,
                        r.try_get(1).map_err(get)?,
                        r.try_get(2).map_err(get)?,
                    ),
                    r.try_get(3).map_err(get)?,
                );
            }
        }
        Ok(periods
            .iter()
            .map(|(org, period, start)| found.get(&(org.0, *period, *start)).copied().unwrap_or(0))
            .collect())
    }

    async fn list_usage(&self, org: OrgId, limit: u32) -> StoreResult<Vec<UsageRow>> {
        let rows = sqlx::query(
            "SELECT period_seconds, period_start, calls FROM usage_counters WHERE org_id = $1 \
             ORDER BY period_start DESC, period_seconds LIMIT $2",
        )
        .bind(org.0)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        Ok(rows
            .iter()
            .map(|r| UsageRow { period_seconds: r.get(0), period_start: r.get(1), calls: r.get(2) })
            .collect())
    }

    async fn list_orgs_of(
        &self,
        page: Page,
        name_contains: Option<&str>,
        owner: Option<PartnerId>,
    ) -> StoreResult<(Vec<OrgRecord>, i64)> {
        let pattern = name_contains.map(|s| {
            let escaped = s
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let name = format!("($1 IS NULL OR o.name {LIKE} $1 ESCAPE '\\')");
        let rows = sqlx::query(&format!(
            "{ORG_SELECT} WHERE {name} AND ($4 IS NULL OR o.partner_id = $4) ORDER BY o.id LIMIT $2 OFFSET $3"
        ))
        .bind(&pattern)
        .bind(page.size as i64)
        .bind(page.offset())
        .bind(owner.map(|p| p.0))
        .fetch_all(&self.reader)
        .await
        .map_err(map_err)?;
        let total: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM orgs o WHERE {name} AND ($2 IS NULL OR o.partner_id = $2)"
        ))
        .bind(&pattern)
        .bind(owner.map(|p| p.0))
        .fetch_one(&self.reader)
        .await
        .map_err(map_err)?;
        let orgs = rows
            .iter()
            .map(org_from_row)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok((orgs, total))
    }

    async fn create_partner(&self, input: PartnerInput, ctx: &Ctx) -> StoreResult<PartnerRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let row = sqlx::query(
            &format!("INSERT INTO partners (name, support_url, support_email, created_at) VALUES ($1, $2, $3, $4) \
             RETURNING {PARTNER_COLUMNS}"),
        )
        .bind(input.name.as_str())
        .bind(input.support_url.as_ref().map(|u| u.as_str()))
        .bind(input.support_email.as_ref().map(|e| e.as_str()))
        .bind(ctx.now.0)
        .fetch_one(&mut *tx)
        .await;
        let partner = partner_written(row, &input)?;
        insert_audit(
            &mut tx,
            None,
            AuditAction::PartnerCreate,
            None,
            serde_json::json!({ "partnerId": partner.id, "name": partner.name,
                "supportUrl": partner.support_url, "supportEmail": partner.support_email }),
            ctx,
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(partner)
    })
    }

    async fn get_partner(&self, id: PartnerId) -> StoreResult<Option<PartnerRecord>> {
        let row = sqlx::query(&format!("SELECT {PARTNER_COLUMNS} FROM partners WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(partner_from_row).transpose()
    }

    async fn list_partners(&self) -> StoreResult<Vec<PartnerRecord>> {
        let rows = sqlx::query(&format!("SELECT {PARTNER_COLUMNS} FROM partners ORDER BY id"))
            .fetch_all(&self.reader)
            .await
            .map_err(map_err)?;
        rows.iter().map(partner_from_row).collect()
    }

    async fn update_partner(
        &self,
        id: PartnerId,
        input: PartnerInput,
        ctx: &Ctx,
    ) -> StoreResult<PartnerRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let before = sqlx::query(&format!("SELECT {PARTNER_COLUMNS} FROM partners WHERE id = $1"))
            .bind(id.0)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_err)?
            .as_ref()
            .map(partner_from_row)
            .transpose()?
            .ok_or(StoreError::NotFound("partner"))?;
        let row = sqlx::query(
            &format!("UPDATE partners SET name = $1, support_url = $2, support_email = $3 WHERE id = $4 \
             RETURNING {PARTNER_COLUMNS}"),
        )
        .bind(input.name.as_str())
        .bind(input.support_url.as_ref().map(|u| u.as_str()))
        .bind(input.support_email.as_ref().map(|e| e.as_str()))
        .bind(id.0)
        .fetch_one(&mut *tx)
        .await;
        let partner = partner_written(row, &input)?;
        // Its orgs' key objects name it: lock (and on PostgreSQL notify) each, so that every
        // node's cache forgets them.
        if let Some(lock) = $lock_org {
            let orgs: Vec<i64> = sqlx::query_scalar("SELECT id FROM orgs WHERE partner_id = $1 ORDER BY id")
                .bind(id.0)
                .fetch_all(&mut *tx)
                .await
                .map_err(map_err)?;
            for org in orgs {
                sqlx::query(lock).bind(org).execute(&mut *tx).await.map_err(map_err)?;
            }
        }
        insert_audit(
            &mut tx,
            None,
            AuditAction::PartnerUpdate,
            None,
            serde_json::json!({ "partnerId": partner.id, "name": partner.name,
                "supportUrl": partner.support_url, "supportEmail": partner.support_email,
                "previous": { "name": before.name, "supportUrl": before.support_url,
                    "supportEmail": before.support_email } }),
            ctx,
        )
        .await?;
        tx.commit().await.map_err(map_err)?;
        Ok(partner)
    })
    }

    async fn move_org(
        &self,
        org: OrgId,
        partner: Option<PartnerId>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let before = load_org_required(&mut tx, org).await?;
        if let Some(p) = partner {
            let found: Option<i64> = sqlx::query_scalar("SELECT id FROM partners WHERE id = $1")
                .bind(p.0)
                .fetch_optional(&mut *tx)
                .await
                .map_err(map_err)?;
            if found.is_none() {
                return Err(StoreError::NotFound("partner"));
            }
        }
        sqlx::query("UPDATE orgs SET partner_id = $1 WHERE id = $2")
            .bind(partner.map(|p| p.0))
            .bind(org.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::OrgMove,
            None,
            serde_json::json!({ "partnerId": partner, "previous": before.partner_id() }),
            ctx,
        )
        .await?;
        let record = load_org_required(&mut tx, org).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn set_base_url(
        &self,
        org: OrgId,
        base_url: Option<String>,
        ctx: &Ctx,
    ) -> StoreResult<OrgRecord> {
        $crate::store::sql::retry_tx!({
        let mut tx = self.writer.begin().await.map_err(map_err)?;
        let before = load_org_required(&mut tx, org).await?;
        sqlx::query("UPDATE orgs SET base_url = $1 WHERE id = $2")
            .bind(&base_url)
            .bind(org.0)
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        insert_audit(
            &mut tx,
            Some(org),
            AuditAction::BaseUrlUpdate,
            None,
            serde_json::json!({ "baseUrl": base_url, "previous": before.base_url }),
            ctx,
        )
        .await?;
        let record = load_org_required(&mut tx, org).await?;
        tx.commit().await.map_err(map_err)?;
        Ok(record)
    })
    }

    async fn find_provider_principal_by_id(
        &self,
        token_id: TokenId,
        now: Millis,
    ) -> StoreResult<Option<ProviderPrincipal>> {
        let row = sqlx::query(&format!("{PRINCIPAL_SELECT} WHERE t.id = $1 AND {PRINCIPAL_LIVE}"))
            .bind(token_id.0)
            .bind(now.0)
            .fetch_optional(&self.reader)
            .await
            .map_err(map_err)?;
        row.as_ref().map(principal_from_row).transpose().map(Option::flatten)
    }

    async fn live_sessions(&self, now: Millis, api: (i64, i64), console: (i64, i64)) -> StoreResult<(i64, i64)> {
        let live = |table: &'static str, (idle, lifetime): (i64, i64)| {
            sqlx::query_scalar::<_, i64>(if table == "api" {
                "SELECT COUNT(*) FROM api_sessions WHERE last_seen_at > $1 AND created_at > $2"
            } else {
                "SELECT COUNT(*) FROM console_sessions WHERE last_seen_at > $1 AND created_at > $2"
            })
            .bind(now.0 - idle * 1000)
            .bind(now.0 - lifetime * 1000)
            .fetch_one(&self.reader)
        };
        let api = live("api", api).await.map_err(map_err)?;
        let console = live("console", console).await.map_err(map_err)?;
        Ok((api, console))
    }

    fn pool_stats(&self) -> Vec<$crate::store::PoolStat> {
        let stat = |pool, p: &sqlx::Pool<_>| $crate::store::PoolStat { pool, size: p.size(), idle: p.num_idle() };
        // PostgreSQL reads and writes share one pool.
        if $lock_org.is_some() {
            vec![stat("shared", &self.writer)]
        } else {
            vec![stat("writer", &self.writer), stat("reader", &self.reader)]
        }
    }
}

    };
}

pub(crate) use sql_store;
