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
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::{PgConnection, PgPool, Row};

use super::*;
use crate::crypto::KeyCipher;
use crate::domain::key_change;

pub struct PostgresStore {
    writer: PgPool,
    reader: PgPool,
    cipher: Arc<KeyCipher>,
}

impl PostgresStore {
    /// Connects to `url` and applies the migrations. `master_key_hint` names where the master
    /// key comes from, for the error if it does not match the data.
    pub async fn open(
        url: &str,
        cipher: Arc<KeyCipher>,
        master_key_hint: &Path,
    ) -> anyhow::Result<Self> {
        let opts = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn changes_notify_on_the_channel_the_nodes_listen_on() {
        let channel = format!("pg_notify('{}'", super::super::peers::CHANGE_CHANNEL);
        assert!(super::LOCK_ORG.contains(&channel));
        assert!(super::DELETE_API_SESSION.contains(&channel));
    }
}
