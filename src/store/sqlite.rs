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
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqliteConnection, SqlitePool};

use super::*;
use crate::crypto::KeyCipher;
use crate::domain::key_change;

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    cipher: Arc<KeyCipher>,
    /// Held for the life of the store: one process per data directory, which is what lets
    /// the services cache sessions exactly.
    _dir_lock: std::fs::File,
}

/// Takes `dir/keygate.lock` exclusively, or fails if another keygate holds it.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("keygate.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::io::AsRawFd;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            anyhow::bail!(
                "the data directory {} is in use by another keygate process (for several nodes, use PostgreSQL)",
                dir.display()
            );
        }
    }
    Ok(file)
}

impl SqliteStore {
    /// Opens (creating if needed) `dir/keygate.db` and applies the migrations.
    pub async fn open(dir: &Path, cipher: Arc<KeyCipher>) -> anyhow::Result<Self> {
        let dir_lock = lock_data_dir(dir)?;
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
        let store = Self {
            writer,
            reader,
            cipher,
            _dir_lock: dir_lock,
        };
        store
            .verify_master_key(&dir.join("master.key").display().to_string())
            .await?;
        Ok(store)
    }
}

// One writer connection serializes write transactions: no row lock needed.
super::sql::sql_store!(
    SqliteStore,
    SqliteRow,
    SqliteConnection,
    None::<&str>,
    "LIKE",
    "DELETE FROM api_sessions WHERE id_hash = $1",
    // One writer connection: no row waits, and `synchronous = FULL` stays as it is.
    None::<&str>
);

super::operators::operator_store!(SqliteStore, SqliteRow, SqliteConnection, "");
