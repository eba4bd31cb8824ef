//! Settings, from flags, `KEYGATE_*` environment variables and the config file (see
//! `cli::settings`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

/// The platform operator as an org's admins are told about it (issue 15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformContact {
    pub name: String,
    pub support_url: Option<String>,
    pub support_email: Option<String>,
}

impl Default for PlatformContact {
    fn default() -> Self {
        Self {
            name: "the platform operator".into(),
            support_url: None,
            support_email: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// `postgres://…` selects the PostgreSQL store (many nodes); unset = embedded SQLite in
    /// `data_dir`.
    pub database_url: Option<SecretString>,
    /// Base URL clients see, without `/api/v1`; defaults to `http://{listen}`.
    pub public_base_url: Option<String>,
    /// The platform operator's name and contacts, on the key page of a key it disabled.
    pub platform: PlatformContact,
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
    /// Wrong provider bearer tokens an address may present in a minute before it is
    /// answered 429 (issue 15).
    pub bearer_max_failures: u32,
    /// Reverse proxies whose forwarding header names the client (audit, login throttling).
    pub trusted_proxies: crate::http::forwarded::TrustedProxies,
    pub max_body_bytes: usize,
    /// How many argon2id hashes may run at once.
    pub password_hash_concurrency: usize,
    /// argon2id cost; OWASP unless a test or benchmark builds the app itself.
    pub password_hash_params: crate::crypto::password::HashParams,
    /// PostgreSQL only: keep a cache of sessions and orgs on this node, kept exact across
    /// nodes by change notifications and leases (`service::peers`). On by default.
    pub node_cache: bool,
    /// PostgreSQL: keep the global rate-limit counts in this Redis instead of the database.
    pub rate_limit_redis_url: Option<secrecy::SecretString>,
    /// PostgreSQL: the N of the local fallback `ceil(limit / N)` when the limit store does
    /// not answer (at least the most nodes seen claiming in one window).
    pub rate_limit_nodes: u32,
    /// How long a node may use its cache without renewing its lease, and so the longest a
    /// change waits for a node that stopped answering.
    pub node_lease: std::time::Duration,
    /// PostgreSQL through a connection pooler in transaction mode (PgBouncer
    /// `pool_mode = transaction`): every statement runs inside a transaction of its own, with
    /// no prepared statement kept across transactions (`store::postgres`).
    pub database_pooler_transaction: bool,
    /// Serve HTTPS with these PEM files (reloaded when they change and on SIGHUP).
    pub tls: Option<TlsFiles>,
    pub connections: ConnectionLimits,
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

#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// How often the files are checked for a change.
    pub watch_interval: Duration,
}

/// What one client may hold of the server (`server::accept_loop`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// For a request's head; also how long a keep-alive connection may sit idle.
    pub header_read_timeout: Duration,
    /// For a request's body, from the end of its head.
    pub body_read_timeout: Duration,
    pub max_connections: usize,
    /// When fewer than this many connections are left, idle keep-alive connections are
    /// closed and new connections get short timeouts.
    pub reserve: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 10_000,
            reserve: 256,
        }
    }
}

impl Config {
    pub fn new(listen: SocketAddr, data_dir: PathBuf) -> Self {
        Self {
            listen,
            data_dir,
            database_url: None,
            public_base_url: None,
            platform: PlatformContact::default(),
            provider_token: None,
            master_key: None,
            console_idle_timeout_secs: 15 * 60,
            console_max_lifetime_secs: 8 * 3600,
            api_timestamp_window_secs: 600,
            api_idle_timeout_secs: 300,
            api_max_lifetime_secs: 8 * 3600,
            login_throttle: Default::default(),
            bearer_max_failures: crate::service::operators::BearerThrottle::MAX_FAILURES,
            trusted_proxies: Default::default(),
            max_body_bytes: 64 * 1024,
            password_hash_concurrency: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            password_hash_params: Default::default(),
            node_cache: true,
            rate_limit_redis_url: None,
            rate_limit_nodes: 1,
            node_lease: std::time::Duration::from_secs(5),
            database_pooler_transaction: false,
            tls: None,
            connections: ConnectionLimits::default(),
            metrics_listen: None,
            metrics_token: None,
        }
    }
}
