//! The scale-out store: any number of `keygate serve` nodes share one PostgreSQL database.
//!
//! Write transactions lock the org's row (`SELECT … FOR UPDATE`), so concurrent changes to
//! one org, from any node, serialize; every read of a session reads the generation the last
//! change committed, so a change is visible on every node as soon as it is answered (R7).

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{
    PgConnectOptions, PgPoolOptions, PgQueryResult, PgRow, PgStatement, PgTypeInfo,
};
use sqlx::{Executor, PgConnection, PgPool, Postgres, Row, Transaction};

use super::*;
use crate::crypto::KeyCipher;
use crate::domain::key_change;

pub struct PostgresStore {
    writer: PgPooled,
    reader: PgPooled,
    cipher: Arc<KeyCipher>,
}

impl PostgresStore {
    /// Connects to `url` and applies the migrations. `master_key_hint` names where the master
    /// key comes from, for the error if it does not match the data. `pooler_transaction`: the
    /// URL names a connection pooler in transaction mode (see [`PgPooled`]).
    pub async fn open(
        url: &str,
        cipher: Arc<KeyCipher>,
        master_key_hint: &Path,
        pooler_transaction: bool,
    ) -> anyhow::Result<Self> {
        let mut opts = PgConnectOptions::from_str(url)?;
        if pooler_transaction {
            // Prepared statements are per server connection, and the pooler hands out another
            // one at every transaction: none may be reused (see `PgPooled`).
            opts = opts.statement_cache_capacity(0);
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        let pool = PgPooled {
            pool,
            pinned: pooler_transaction,
        };
        pool.migrate().await?;
        let store = Self {
            writer: pool.clone(),
            reader: pool,
            cipher,
        };
        store
            .verify_master_key(&master_key_hint.display().to_string())
            .await?;
        Ok(store)
    }
}

/// The store's pool. Directly on PostgreSQL it is the pool as is. Through a pooler in
/// transaction mode (PgBouncer's `pool_mode = transaction`, which before 1.21 knows nothing of
/// prepared statements) a server connection belongs to a client only for one transaction, but
/// sqlx prepares a statement with one `Sync` and runs it with the next, and names prepared
/// statements `sqlx_s_N` per client connection: outside a transaction the two halves may
/// reach different servers, and names collide. So here every statement runs inside a
/// transaction (the store's own, or one made for it and committed before the answer), each
/// transaction starts with `DEALLOCATE ALL` (what earlier clients of that server connection
/// prepared is gone) and statements are never cached (`statement_cache_capacity(0)`).
#[derive(Clone, Debug)]
pub struct PgPooled {
    pool: PgPool,
    pinned: bool,
}

impl std::ops::Deref for PgPooled {
    type Target = PgPool;
    fn deref(&self) -> &PgPool {
        &self.pool
    }
}

/// A connection for several reads: from the pool as is, or (through a pooler) inside a
/// transaction, rolled back when dropped (reads only: writes use `begin`).
pub enum PgConn {
    Direct(PoolConnection<Postgres>),
    Pinned(Transaction<'static, Postgres>),
}

impl std::ops::Deref for PgConn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        match self {
            PgConn::Direct(c) => c,
            PgConn::Pinned(t) => t,
        }
    }
}

impl std::ops::DerefMut for PgConn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        match self {
            PgConn::Direct(c) => c,
            PgConn::Pinned(t) => t,
        }
    }
}

impl PgPooled {
    /// `pinned`: the pool's URL names a pooler in transaction mode.
    pub fn new(pool: PgPool, pinned: bool) -> Self {
        Self { pool, pinned }
    }

    pub async fn begin(&self) -> sqlx::Result<Transaction<'static, Postgres>> {
        let mut tx = self.pool.begin().await?;
        if self.pinned {
            simple(&mut tx, "DEALLOCATE ALL").await?;
        }
        Ok(tx)
    }

    pub async fn acquire(&self) -> sqlx::Result<PgConn> {
        if self.pinned {
            Ok(PgConn::Pinned(self.begin().await?))
        } else {
            Ok(PgConn::Direct(self.pool.acquire().await?))
        }
    }

    /// The migrations. Through a pooler the session-level advisory lock sqlx takes would stay
    /// on whichever server connection ran it, so they run in one transaction under a
    /// transaction-level lock instead (nodes starting together apply them once).
    async fn migrate(&self) -> anyhow::Result<()> {
        let mut migrator = sqlx::migrate!("./migrations/postgres");
        if !self.pinned {
            migrator.run(&self.pool).await?;
            return Ok(());
        }
        migrator.set_locking(false);
        let mut tx = self.begin().await?;
        simple(&mut tx, "SELECT pg_advisory_xact_lock(7217370105243081409)").await?;
        migrator.run(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }
}

// The statement runs through boxed futures made outside the async functions: awaited
// directly, rustc cannot prove the generic future `Send` ("not general enough").
fn many_on<'a, 'q: 'a, E: 'q + sqlx::Execute<'q, Postgres>>(
    conn: &'a mut PgConnection,
    query: E,
) -> BoxFuture<'a, sqlx::Result<Vec<sqlx::Either<PgQueryResult, PgRow>>>> {
    Box::pin(conn.fetch_many(query).try_collect())
}

fn optional_on<'a, 'q: 'a, E: 'q + sqlx::Execute<'q, Postgres>>(
    conn: &'a mut PgConnection,
    query: E,
) -> BoxFuture<'a, sqlx::Result<Option<PgRow>>> {
    conn.fetch_optional(query)
}

/// A statement without parameters, in the simple protocol (no prepared statement).
fn simple<'a>(
    conn: &'a mut PgConnection,
    sql: &'static str,
) -> BoxFuture<'a, sqlx::Result<PgQueryResult>> {
    conn.execute(sql)
}

fn begin_on(pool: &PgPooled) -> BoxFuture<'_, sqlx::Result<Transaction<'static, Postgres>>> {
    Box::pin(pool.begin())
}

async fn pinned_many<'q, E: 'q + sqlx::Execute<'q, Postgres>>(
    pool: PgPooled,
    query: E,
) -> sqlx::Result<Vec<sqlx::Either<PgQueryResult, PgRow>>> {
    let mut tx = begin_on(&pool).await?;
    let items = many_on(&mut tx, query).await?;
    tx.commit().await?;
    Ok(items)
}

async fn pinned_optional<'q, E: 'q + sqlx::Execute<'q, Postgres>>(
    pool: PgPooled,
    query: E,
) -> sqlx::Result<Option<PgRow>> {
    let mut tx = begin_on(&pool).await?;
    let row = optional_on(&mut tx, query).await?;
    tx.commit().await?;
    Ok(row)
}

impl<'c> sqlx::Executor<'c> for &'c PgPooled {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<sqlx::Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Postgres>,
    {
        if !self.pinned {
            return (&self.pool).fetch_many(query);
        }
        // Collected inside the transaction, which commits before the caller sees a row.
        Box::pin(
            futures_util::stream::once(pinned_many(self.clone(), query))
                .map_ok(|items| futures_util::stream::iter(items.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + sqlx::Execute<'q, Postgres>,
    {
        if !self.pinned {
            return (&self.pool).fetch_optional(query);
        }
        Box::pin(pinned_optional(self.clone(), query))
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<sqlx::Describe<Postgres>, sqlx::Error>>
    where
        'c: 'e,
    {
        (&self.pool).describe(sql)
    }
}

/// Every change locks its org's row first; the same statement tells every node listening
/// (`store::peers`) that the org changed, delivered by PostgreSQL at the commit and only then.
const LOCK_ORG: &str =
    "SELECT pg_notify('keygate_change', id::text) FROM orgs WHERE id = $1 FOR UPDATE";
/// The delete of an API session (logout, or found dead) tells them too.
const DELETE_API_SESSION: &str = "WITH gone AS (DELETE FROM api_sessions WHERE id_hash = $1 RETURNING org_id) \
     SELECT pg_notify('keygate_change', org_id::text) FROM gone";

super::sql::sql_store!(
    PostgresStore,
    PgRow,
    PgConnection,
    Some(LOCK_ORG),
    "ILIKE",
    DELETE_API_SESSION,
    Some("SET LOCAL synchronous_commit TO OFF")
);

super::operators::operator_store!(PostgresStore, PgRow, PgConnection, " FOR UPDATE");

#[cfg(test)]
mod tests {
    #[test]
    fn changes_notify_on_the_channel_the_nodes_listen_on() {
        let channel = format!("pg_notify('{}'", super::super::peers::CHANGE_CHANNEL);
        assert!(super::LOCK_ORG.contains(&channel));
        assert!(super::DELETE_API_SESSION.contains(&channel));
    }
}
