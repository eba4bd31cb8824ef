//! The embedded default store: SQLite in WAL mode with durable (`synchronous = FULL`) commits.
//!
//! Writes go through a pool of exactly one connection, so write transactions queue in the
//! pool instead of failing with SQLITE_BUSY (and need no row locks); reads use their own pool
//! and, under WAL, never wait for a writer.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::*;
use crate::crypto::KeyCipher;
use crate::domain::key_change;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    cipher: Arc<KeyCipher>,
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/keygate.db` and applies the migrations.
    pub async fn open(dir: &Path, cipher: Arc<KeyCipher>) -> anyhow::Result<Self> {
        let path = dir.join("keygate.db");
        let opts = SqliteConnectOptions::from_str("sqlite://")?
            .filename(&path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await?;
        sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        let store = Self { writer, reader, cipher };
        store.verify_master_key(&dir.join("master.key").display().to_string()).await?;
        Ok(store)
    }
}

// One writer connection serializes write transactions: no row lock needed.
super::sql::sql_store!(SqliteStore, SqliteRow, SqliteConnection, None::<&str>, "LIKE");
