//! Operators and their bearer tokens (issue 15): the records, the `OperatorStore` trait (a
//! supertrait of `Store`) and its one body of SQL for both databases, instantiated next to
//! `sql_store!` by `operator_store!` (so it shares `insert_audit` and the pools).

use async_trait::async_trait;
use serde::Serialize;
use utoipa::ToSchema;

use super::{Ctx, StoreResult};
use crate::domain::admin::LoginName;
use crate::domain::ids::{OperatorId, PartnerId, TokenId};
use crate::domain::tier::OperatorRole;
use crate::domain::time::Millis;

/// A named operator of the platform (`partner_id` null) or of a partner.
#[derive(Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperatorRecord {
    pub id: OperatorId,
    /// Null = an operator of the platform.
    pub partner_id: Option<PartnerId>,
    pub login_name: String,
    pub display_name: String,
    pub role: OperatorRole,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; null = active.
    pub removed_at: Option<i64>,
    #[serde(skip)]
    pub password_hash: String,
}

impl std::fmt::Debug for OperatorRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorRecord")
            .field("id", &self.id)
            .field("partner_id", &self.partner_id)
            .field("login_name", &self.login_name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub struct NewOperator {
    pub partner: Option<PartnerId>,
    pub login: LoginName,
    pub display_name: String,
    pub role: OperatorRole,
    pub password_hash: String,
}

/// What an edit changes; `None` leaves it as it is.
#[derive(Clone, Default)]
pub struct OperatorChange {
    pub display_name: Option<String>,
    pub role: Option<OperatorRole>,
    pub password_hash: Option<String>,
}

/// A bearer token as listed: never its value (only its SHA-256 is stored).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: TokenId,
    pub label: String,
    /// Null = the bootstrap token.
    pub operator_id: Option<OperatorId>,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms; null = never.
    pub expires_at: Option<i64>,
    /// Unix ms; null = not revoked.
    pub revoked_at: Option<i64>,
}

pub struct NewToken {
    pub hash: String,
    pub label: String,
    pub operator: Option<OperatorId>,
    pub expires_at: Option<Millis>,
    /// Made by an operator's console sign-in for its session: revoked when the session ends.
    pub console_signin: bool,
}

/// Which tokens a listing covers.
#[derive(Debug, Clone, Copy)]
pub enum TokenScope {
    /// Every token (a platform owner).
    All,
    /// Tokens of the operators of one partner.
    Partner(PartnerId),
    /// One operator's tokens.
    Operator(OperatorId),
}

#[async_trait]
pub trait OperatorStore: Send + Sync + 'static {
    async fn partner_exists(&self, id: PartnerId) -> StoreResult<bool>;
    /// `StoreError::LoginNameTaken` when the login is an operator's already. Audited.
    async fn create_operator(&self, op: NewOperator, ctx: &Ctx) -> StoreResult<OperatorRecord>;
    /// Active operators; `partner`: `None` = every tier, `Some(None)` = the platform's,
    /// `Some(Some(p))` = partner `p`'s.
    async fn list_operators(
        &self,
        partner: Option<Option<PartnerId>>,
    ) -> StoreResult<Vec<OperatorRecord>>;
    /// An active operator.
    async fn get_operator(&self, id: OperatorId) -> StoreResult<Option<OperatorRecord>>;
    async fn find_operator_by_login(
        &self,
        login: &LoginName,
    ) -> StoreResult<Option<OperatorRecord>>;
    /// Refused (`StoreError::LastOwner`) when it would leave the platform with no active
    /// owner. A new password ends nothing else; tokens stay. Audited.
    async fn update_operator(
        &self,
        id: OperatorId,
        change: OperatorChange,
        ctx: &Ctx,
    ) -> StoreResult<OperatorRecord>;
    /// Marks the operator removed and revokes its tokens (its console sessions end with
    /// them). Refused for the platform's last active owner. Audited.
    async fn remove_operator(&self, id: OperatorId, ctx: &Ctx) -> StoreResult<()>;
    /// Audited unless `audited` is false (the token behind a console sign-in).
    async fn create_token(&self, t: NewToken, audited: bool, ctx: &Ctx)
    -> StoreResult<TokenRecord>;
    async fn list_tokens(&self, scope: TokenScope) -> StoreResult<Vec<TokenRecord>>;
    async fn get_token(&self, id: TokenId) -> StoreResult<Option<TokenRecord>>;
    /// Revokes a live token (a revoked one stays as it is). Audited.
    async fn revoke_token(&self, id: TokenId, ctx: &Ctx) -> StoreResult<TokenRecord>;
    /// A new token with the old one's label, operator and expiry; the old one revoked, in the
    /// same transaction. `StoreError::NotFound` for a revoked token. Audited.
    async fn rotate_token(
        &self,
        id: TokenId,
        new_hash: &str,
        ctx: &Ctx,
    ) -> StoreResult<TokenRecord>;
    /// Revokes every bootstrap token (no operator), for good. Refused
    /// (`StoreError::NoPlatformOwner`) while the platform has no active owner. Audited.
    async fn retire_bootstrap(&self, ctx: &Ctx) -> StoreResult<u64>;
    /// Whether a bootstrap token was ever revoked: then none is installed at start again.
    async fn bootstrap_retired(&self) -> StoreResult<bool>;
}

/// `operator_store!(Store, Row, Connection, for_update: &str)`: the `OperatorStore` impl in
/// the module that instantiated `sql_store!`. `for_update` is appended to the read of the
/// platform's owners inside a write transaction (`" FOR UPDATE"` on PostgreSQL, so two
/// concurrent demotions cannot both pass the last-owner check; SQLite has one writer).
macro_rules! operator_store {
    ($store:ident, $row:ty, $conn:ty, $for_update:expr) => {
        mod operator_store_impl {
            use super::*;
            use $crate::domain::audit::AuditAction;
            use $crate::domain::ids::{OperatorId, PartnerId, TokenId};
            use $crate::domain::tier::OperatorRole;
            use $crate::store::operators::*;
            use $crate::store::sql::{is_unique_violation, map_err};

            const OWNERS: &str = concat!(
                "SELECT id FROM operators WHERE partner_id IS NULL AND role = 'OWNER' \
                 AND removed_at IS NULL ORDER BY id",
                $for_update
            );

            fn operator_from_row(r: &$row) -> StoreResult<OperatorRecord> {
                let get = |e: sqlx::Error| StoreError::Internal(e.into());
                let role: String = r.try_get("role").map_err(get)?;
                Ok(OperatorRecord {
                    id: OperatorId(r.try_get("id").map_err(get)?),
                    partner_id: r
                        .try_get::<Option<i64>, _>("partner_id")
                        .map_err(get)?
                        .map(PartnerId),
                    login_name: r.try_get("login_name").map_err(get)?,
                    display_name: r.try_get("display_name").map_err(get)?,
                    role: OperatorRole::parse(&role).ok_or_else(|| {
                        StoreError::Internal(anyhow::anyhow!("unknown operator role in database"))
                    })?,
                    created_at: r.try_get("created_at").map_err(get)?,
                    removed_at: r.try_get("removed_at").map_err(get)?,
                    password_hash: r.try_get("password_hash").map_err(get)?,
                })
            }

            fn token_from_row(r: &$row) -> StoreResult<TokenRecord> {
                let get = |e: sqlx::Error| StoreError::Internal(e.into());
                Ok(TokenRecord {
                    id: TokenId(r.try_get("id").map_err(get)?),
                    label: r.try_get("label").map_err(get)?,
                    operator_id: r
                        .try_get::<Option<i64>, _>("operator_id")
                        .map_err(get)?
                        .map(OperatorId),
                    created_at: r.try_get("created_at").map_err(get)?,
                    expires_at: r.try_get("expires_at").map_err(get)?,
                    revoked_at: r.try_get("revoked_at").map_err(get)?,
                })
            }

            const TOKEN_COLUMNS: &str =
                "id, label, operator_id, created_at, expires_at, revoked_at";

            /// The platform's active owners, locked on PostgreSQL until commit.
            async fn platform_owners(conn: &mut $conn) -> StoreResult<Vec<i64>> {
                sqlx::query_scalar(OWNERS)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(map_err)
            }

            async fn load_operator(conn: &mut $conn, id: OperatorId) -> StoreResult<OperatorRecord> {
                let row = sqlx::query("SELECT * FROM operators WHERE id = $1 AND removed_at IS NULL")
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(map_err)?;
                operator_from_row(&row.ok_or(StoreError::NotFound("operator"))?)
            }

            async fn load_token(conn: &mut $conn, id: TokenId) -> StoreResult<TokenRecord> {
                let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM provider_tokens WHERE id = $1"))
                    .bind(id.0)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(map_err)?;
                token_from_row(&row.ok_or(StoreError::NotFound("token"))?)
            }

            async fn insert_token(conn: &mut $conn, t: &NewToken, now: Millis) -> StoreResult<TokenRecord> {
                let row = sqlx::query(&format!(
                    "INSERT INTO provider_tokens (token_hash, label, created_at, operator_id, expires_at, console_signin) \
                     VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLUMNS}"
                ))
                .bind(&t.hash)
                .bind(&t.label)
                .bind(now.0)
                .bind(t.operator.map(|o| o.0))
                .bind(t.expires_at.map(|m| m.0))
                .bind(t.console_signin)
                .fetch_one(&mut *conn)
                .await
                .map_err(map_err)?;
                token_from_row(&row)
            }

            /// Ends the console sessions signed in with the token.
            async fn end_sessions_of_token(conn: &mut $conn, id: i64) -> StoreResult<()> {
                sqlx::query("DELETE FROM provider_console_sessions WHERE token_id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await
                    .map_err(map_err)?;
                Ok(())
            }

            fn token_details(t: &TokenRecord) -> serde_json::Value {
                serde_json::json!({
                    "tokenId": t.id, "label": t.label, "operatorId": t.operator_id,
                    "expiresAt": t.expires_at,
                })
            }

            #[async_trait::async_trait]
            impl OperatorStore for $store {
                async fn partner_exists(&self, id: PartnerId) -> StoreResult<bool> {
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM partners WHERE id = $1")
                        .bind(id.0)
                        .fetch_one(&self.reader)
                        .await
                        .map_err(map_err)?;
                    Ok(n > 0)
                }

                async fn create_operator(&self, op: NewOperator, ctx: &Ctx) -> StoreResult<OperatorRecord> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        let row = sqlx::query(
                            "INSERT INTO operators (partner_id, login_name, display_name, password_hash, role, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6) RETURNING *",
                        )
                        .bind(op.partner.map(|p| p.0))
                        .bind(op.login.as_str())
                        .bind(&op.display_name)
                        .bind(&op.password_hash)
                        .bind(op.role.as_str())
                        .bind(ctx.now.0)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(|e| {
                            if is_unique_violation(&e) {
                                StoreError::LoginNameTaken(op.login.as_str().to_owned())
                            } else {
                                map_err(e)
                            }
                        })?;
                        let record = operator_from_row(&row)?;
                        insert_audit(
                            &mut tx,
                            None,
                            AuditAction::OperatorCreate,
                            None,
                            serde_json::json!({
                                "operatorId": record.id, "loginName": record.login_name,
                                "displayName": record.display_name, "role": record.role,
                                "partnerId": record.partner_id,
                            }),
                            ctx,
                        )
                        .await?;
                        tx.commit().await.map_err(map_err)?;
                        Ok(record)
                    })
                }

                async fn list_operators(
                    &self,
                    partner: Option<Option<PartnerId>>,
                ) -> StoreResult<Vec<OperatorRecord>> {
                    let rows = match partner {
                        None => sqlx::query("SELECT * FROM operators WHERE removed_at IS NULL ORDER BY id")
                            .fetch_all(&self.reader)
                            .await,
                        Some(None) => sqlx::query(
                            "SELECT * FROM operators WHERE removed_at IS NULL AND partner_id IS NULL ORDER BY id",
                        )
                        .fetch_all(&self.reader)
                        .await,
                        Some(Some(p)) => sqlx::query(
                            "SELECT * FROM operators WHERE removed_at IS NULL AND partner_id = $1 ORDER BY id",
                        )
                        .bind(p.0)
                        .fetch_all(&self.reader)
                        .await,
                    }
                    .map_err(map_err)?;
                    rows.iter().map(operator_from_row).collect()
                }

                async fn get_operator(&self, id: OperatorId) -> StoreResult<Option<OperatorRecord>> {
                    let row = sqlx::query("SELECT * FROM operators WHERE id = $1 AND removed_at IS NULL")
                        .bind(id.0)
                        .fetch_optional(&self.reader)
                        .await
                        .map_err(map_err)?;
                    row.as_ref().map(operator_from_row).transpose()
                }

                async fn find_operator_by_login(
                    &self,
                    login: &LoginName,
                ) -> StoreResult<Option<OperatorRecord>> {
                    let row = sqlx::query(
                        "SELECT * FROM operators WHERE login_name = $1 AND removed_at IS NULL",
                    )
                    .bind(login.as_str())
                    .fetch_optional(&self.reader)
                    .await
                    .map_err(map_err)?;
                    row.as_ref().map(operator_from_row).transpose()
                }

                async fn update_operator(
                    &self,
                    id: OperatorId,
                    change: OperatorChange,
                    ctx: &Ctx,
                ) -> StoreResult<OperatorRecord> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        let owners = platform_owners(&mut tx).await?;
                        let before = load_operator(&mut tx, id).await?;
                        let demoted = before.role == OperatorRole::Owner
                            && change.role.is_some_and(|r| r != OperatorRole::Owner);
                        if demoted && before.partner_id.is_none() && owners == [id.0] {
                            return Err(StoreError::LastOwner);
                        }
                        let row = sqlx::query(
                            "UPDATE operators SET display_name = COALESCE($2, display_name), \
                             role = COALESCE($3, role), password_hash = COALESCE($4, password_hash) \
                             WHERE id = $1 RETURNING *",
                        )
                        .bind(id.0)
                        .bind(change.display_name.as_deref())
                        .bind(change.role.map(|r| r.as_str()))
                        .bind(change.password_hash.as_deref())
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        let after = operator_from_row(&row)?;
                        insert_audit(
                            &mut tx,
                            None,
                            AuditAction::OperatorUpdate,
                            None,
                            serde_json::json!({
                                "operatorId": id, "loginName": after.login_name,
                                "partnerId": after.partner_id,
                                "displayName": change.display_name.as_ref().map(|_| &after.display_name),
                                "role": change.role,
                                "passwordChanged": change.password_hash.is_some(),
                            }),
                            ctx,
                        )
                        .await?;
                        tx.commit().await.map_err(map_err)?;
                        Ok(after)
                    })
                }

                async fn remove_operator(&self, id: OperatorId, ctx: &Ctx) -> StoreResult<()> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        let owners = platform_owners(&mut tx).await?;
                        let before = load_operator(&mut tx, id).await?;
                        if before.partner_id.is_none() && owners == [id.0] {
                            return Err(StoreError::LastOwner);
                        }
                        sqlx::query("UPDATE operators SET removed_at = $2 WHERE id = $1")
                            .bind(id.0)
                            .bind(ctx.now.0)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        sqlx::query(
                            "DELETE FROM provider_console_sessions WHERE token_id IN \
                             (SELECT id FROM provider_tokens WHERE operator_id = $1)",
                        )
                        .bind(id.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        sqlx::query(
                            "UPDATE provider_tokens SET revoked_at = $2 WHERE operator_id = $1 AND revoked_at IS NULL",
                        )
                        .bind(id.0)
                        .bind(ctx.now.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        insert_audit(
                            &mut tx,
                            None,
                            AuditAction::OperatorRemove,
                            None,
                            serde_json::json!({
                                "operatorId": id, "loginName": before.login_name,
                                "role": before.role, "partnerId": before.partner_id,
                            }),
                            ctx,
                        )
                        .await?;
                        tx.commit().await.map_err(map_err)?;
                        Ok(())
                    })
                }

                async fn create_token(&self, t: NewToken, audited: bool, ctx: &Ctx) -> StoreResult<TokenRecord> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        if let Some(op) = t.operator {
                            load_operator(&mut tx, op).await?;
                        }
                        let record = insert_token(&mut tx, &t, ctx.now).await?;
                        if audited {
                            insert_audit(&mut tx, None, AuditAction::TokenCreate, None, token_details(&record), ctx)
                                .await?;
                        }
                        tx.commit().await.map_err(map_err)?;
                        Ok(record)
                    })
                }

                async fn list_tokens(&self, scope: TokenScope) -> StoreResult<Vec<TokenRecord>> {
                    let rows = match scope {
                        TokenScope::All => sqlx::query(&format!(
                            "SELECT {TOKEN_COLUMNS} FROM provider_tokens ORDER BY id"
                        ))
                        .fetch_all(&self.reader)
                        .await,
                        TokenScope::Partner(p) => sqlx::query(&format!(
                            "SELECT {TOKEN_COLUMNS} FROM provider_tokens WHERE operator_id IN \
                             (SELECT id FROM operators WHERE partner_id = $1) ORDER BY id"
                        ))
                        .bind(p.0)
                        .fetch_all(&self.reader)
                        .await,
                        TokenScope::Operator(o) => sqlx::query(&format!(
                            "SELECT {TOKEN_COLUMNS} FROM provider_tokens WHERE operator_id = $1 ORDER BY id"
                        ))
                        .bind(o.0)
                        .fetch_all(&self.reader)
                        .await,
                    }
                    .map_err(map_err)?;
                    rows.iter().map(token_from_row).collect()
                }

                async fn get_token(&self, id: TokenId) -> StoreResult<Option<TokenRecord>> {
                    let row = sqlx::query(&format!("SELECT {TOKEN_COLUMNS} FROM provider_tokens WHERE id = $1"))
                        .bind(id.0)
                        .fetch_optional(&self.reader)
                        .await
                        .map_err(map_err)?;
                    row.as_ref().map(token_from_row).transpose()
                }

                async fn revoke_token(&self, id: TokenId, ctx: &Ctx) -> StoreResult<TokenRecord> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        let before = load_token(&mut tx, id).await?;
                        if before.revoked_at.is_some() {
                            return Ok(before);
                        }
                        sqlx::query("UPDATE provider_tokens SET revoked_at = $2 WHERE id = $1")
                            .bind(id.0)
                            .bind(ctx.now.0)
                            .execute(&mut *tx)
                            .await
                            .map_err(map_err)?;
                        end_sessions_of_token(&mut tx, id.0).await?;
                        insert_audit(&mut tx, None, AuditAction::TokenRevoke, None, token_details(&before), ctx)
                            .await?;
                        tx.commit().await.map_err(map_err)?;
                        Ok(TokenRecord {
                            revoked_at: Some(ctx.now.0),
                            ..before
                        })
                    })
                }

                async fn rotate_token(
                    &self,
                    id: TokenId,
                    new_hash: &str,
                    ctx: &Ctx,
                ) -> StoreResult<TokenRecord> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        let old = load_token(&mut tx, id).await?;
                        if old.revoked_at.is_some() || old.operator_id.is_none() {
                            return Err(StoreError::NotFound("live operator token"));
                        }
                        let n = sqlx::query(
                            "UPDATE provider_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                        )
                        .bind(id.0)
                        .bind(ctx.now.0)
                        .execute(&mut *tx)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                        if n != 1 {
                            return Err(StoreError::NotFound("live operator token"));
                        }
                        end_sessions_of_token(&mut tx, id.0).await?;
                        let new = insert_token(
                            &mut tx,
                            &NewToken {
                                hash: new_hash.to_owned(),
                                label: old.label.clone(),
                                operator: old.operator_id,
                                expires_at: old.expires_at.map(Millis),
                                // Its new value is known to whoever rotated it: theirs now.
                                console_signin: false,
                            },
                            ctx.now,
                        )
                        .await?;
                        insert_audit(
                            &mut tx,
                            None,
                            AuditAction::TokenRotate,
                            None,
                            serde_json::json!({
                                "tokenId": old.id, "newTokenId": new.id, "label": new.label,
                                "operatorId": new.operator_id,
                            }),
                            ctx,
                        )
                        .await?;
                        tx.commit().await.map_err(map_err)?;
                        Ok(new)
                    })
                }

                async fn retire_bootstrap(&self, ctx: &Ctx) -> StoreResult<u64> {
                    $crate::store::sql::retry_tx!({
                        let mut tx = self.writer.begin().await.map_err(map_err)?;
                        if platform_owners(&mut tx).await?.is_empty() {
                            return Err(StoreError::NoPlatformOwner);
                        }
                        let ids: Vec<i64> = sqlx::query_scalar(
                            "UPDATE provider_tokens SET revoked_at = $1 \
                             WHERE operator_id IS NULL AND revoked_at IS NULL RETURNING id",
                        )
                        .bind(ctx.now.0)
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(map_err)?;
                        for id in &ids {
                            end_sessions_of_token(&mut tx, *id).await?;
                        }
                        insert_audit(
                            &mut tx,
                            None,
                            AuditAction::BootstrapRetire,
                            None,
                            serde_json::json!({ "tokenIds": ids }),
                            ctx,
                        )
                        .await?;
                        tx.commit().await.map_err(map_err)?;
                        Ok(ids.len() as u64)
                    })
                }

                async fn bootstrap_retired(&self) -> StoreResult<bool> {
                    let n: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM provider_tokens WHERE operator_id IS NULL AND revoked_at IS NOT NULL",
                    )
                    .fetch_one(&self.reader)
                    .await
                    .map_err(map_err)?;
                    Ok(n > 0)
                }
            }
        }
    };
}

pub(crate) use operator_store;
