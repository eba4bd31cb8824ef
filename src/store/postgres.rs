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

super::sql::sql_store!(
    PostgresStore,
    PgRow,
    PgConnection,
    Some("SELECT id FROM orgs WHERE id = $1 FOR UPDATE"),
    "ILIKE"
);
