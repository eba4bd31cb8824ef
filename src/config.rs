//! Settings, from flags and `KEYGATE_*` environment variables (see `cli`).

use std::net::SocketAddr;
use std::path::PathBuf;

use secrecy::SecretString;

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `postgres://…` selects the PostgreSQL store (many nodes); unset = embedded SQLite in
    /// `data_dir`.
    pub database_url: Option<SecretString>,
    /// Base URL clients see, without `/api/v1`; defaults to `http://{listen}`.
    pub public_base_url: Option<String>,
    /// Provider bearer token to accept (stored hashed).
    pub provider_token: Option<SecretString>,
    /// Base64 of 32 bytes; otherwise `data_dir/master.key` is used (created on first start).
    pub master_key: Option<SecretString>,
    pub console_idle_timeout_secs: i64,
    pub console_max_lifetime_secs: i64,
    /// How far a cloud service API login's timestamp may be from the server's clock.
    pub api_timestamp_window_secs: i64,
    pub api_idle_timeout_secs: i64,
    pub api_max_lifetime_secs: i64,
    pub login_throttle: crate::service::throttle::ThrottlePolicy,
    pub max_body_bytes: usize,
    /// How many argon2id hashes may run at once.
    pub password_hash_concurrency: usize,
    /// argon2id cost; OWASP unless a test or benchmark builds the app itself.
    pub password_hash_params: crate::crypto::password::HashParams,
    /// PostgreSQL only: keep a cache of sessions and orgs on this node, kept exact across
    /// nodes by change notifications and leases (`service::peers`).
    pub node_cache: bool,
    /// How long a node may use its cache without renewing its lease, and so the longest a
    /// change waits for a node that stopped answering.
    pub node_lease: std::time::Duration,
    /// Serve `/metrics` on this separate address (without a token: bind it where only the
    /// scraper reaches it).
    pub metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener to `Authorization: Bearer <this>` (kept hashed).
    pub metrics_token: Option<SecretString>,
}

impl Config {
    /// Whether metrics are recorded: only when they are served somewhere.
    pub fn metrics_enabled(&self) -> bool {
        self.metrics_listen.is_some() || self.metrics_token.is_some()
    }
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            database_url: None,
            public_base_url: None,
            provider_token: None,
            master_key: None,
            console_idle_timeout_secs: 15 * 60,
            console_max_lifetime_secs: 8 * 3600,
            api_timestamp_window_secs: 600,
            api_idle_timeout_secs: 300,
            api_max_lifetime_secs: 8 * 3600,
            login_throttle: Default::default(),
            max_body_bytes: 64 * 1024,
            password_hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            password_hash_params: Default::default(),
            node_cache: false,
            node_lease: std::time::Duration::from_secs(5),
            metrics_listen: None,
            metrics_token: None,
        }
    }
}
