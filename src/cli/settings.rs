//! `serve`'s settings: one list (the `serve_settings!` table below) gives each setting its
//! flag, its `KEYGATE_*` variable and its key in the TOML file given by `--config`.
//! Precedence is flag > environment > file > default: clap tells which of the first two (or
//! its default) a value came from, and a key of the file replaces only a default. A secret can
//! also come from a file of its own (`provider_token_file` …) that only its owner may read.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::config::{Config, ConnectionLimits, TlsFiles};
use crate::http::forwarded::ClientIpHeader;

/// Where a setting's value came from, strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Default,
    File,
    Env,
    Flag,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Default => "default",
            Source::File => "file",
            Source::Env => "env",
            Source::Flag => "flag",
        }
    }
}

/// A setting's type as the file gives it, how `config check` shows it, and its text for the
/// flag's own value parser (so a file's value meets the flag's checks).
trait Setting {
    type File;
    fn set(&mut self, v: Self::File);
    fn show(&self) -> String;
    fn arg_text(v: &Self::File) -> String;
}

macro_rules! plain_setting {
    ($($t:ty),*) => {$(
        impl Setting for $t {
            type File = $t;
            fn set(&mut self, v: $t) { *self = v; }
            fn show(&self) -> String { format!("{self:?}") }
            fn arg_text(v: &$t) -> String { v.to_string() }
        }
    )*};
}
plain_setting!(SocketAddr, i64, u64, usize, bool, String);

impl Setting for PathBuf {
    type File = PathBuf;
    fn set(&mut self, v: PathBuf) {
        *self = v;
    }
    fn show(&self) -> String {
        format!("{self:?}")
    }
    fn arg_text(v: &PathBuf) -> String {
        v.display().to_string()
    }
}

macro_rules! optional_setting {
    ($($t:ty => $text:expr),*) => {$(
        impl Setting for Option<$t> {
            type File = $t;
            fn set(&mut self, v: $t) { *self = Some(v); }
            fn show(&self) -> String {
                match self {
                    Some(v) => format!("{v:?}"),
                    None => "(unset)".into(),
                }
            }
            fn arg_text(v: &$t) -> String { ($text)(v) }
        }
    )*};
}
optional_setting!(
    String => |v: &String| v.clone(),
    PathBuf => |v: &PathBuf| v.display().to_string(),
    Secret => |v: &Secret| v.0.expose_secret().to_owned(),
    SocketAddr => |v: &SocketAddr| v.to_string()
);

impl Setting for TrustedProxyList {
    type File = Vec<String>;
    fn set(&mut self, v: Vec<String>) {
        // Checked with the flag's parser before it is set.
        *self = v.join(",").parse().unwrap_or_default();
    }
    fn show(&self) -> String {
        format!(
            "{:?}",
            self.0.iter().map(|n| n.to_string()).collect::<Vec<_>>()
        )
    }
    fn arg_text(v: &Vec<String>) -> String {
        v.join(",")
    }
}

impl Setting for ClientIpHeader {
    type File = String;
    fn set(&mut self, v: String) {
        *self = v.parse().unwrap_or_default();
    }
    fn show(&self) -> String {
        format!("{:?}", self.as_str())
    }
    fn arg_text(v: &String) -> String {
        v.clone()
    }
}

/// The trusted proxies, comma-separated on the command line and in the environment, an array
/// of strings in the file.
#[derive(Clone, Debug, Default)]
pub struct TrustedProxyList(pub Vec<ipnet::IpNet>);

impl std::str::FromStr for TrustedProxyList {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(crate::http::forwarded::parse_proxy)
            .collect::<Result<_, _>>()
            .map(TrustedProxyList)
    }
}

/// A secret: taken from the file as a string, never shown.
#[derive(Clone)]
pub struct Secret(pub SecretString);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(SecretString::from(s)))
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(|s| Secret(SecretString::from(s)))
    }
}

macro_rules! serve_settings {
    ($( $(#[$attr:meta])* $name:ident : $ty:ty, )*) => {
        #[derive(Args, Clone)]
        pub struct ServeArgs {
            /// TOML file with any of these settings (keys as the flags, with `_`); flags and
            /// environment variables override it.
            #[arg(long, env = "KEYGATE_CONFIG")]
            pub config: Option<PathBuf>,
            $( $(#[$attr])* pub $name: $ty, )*
        }

        /// The config file: every key optional, none other allowed.
        #[derive(Deserialize, Default)]
        #[serde(deny_unknown_fields)]
        struct FileSettings {
            $( $name: Option<toml::Spanned<<$ty as Setting>::File>>, )*
        }

        impl ServeArgs {
            /// Fills every setting neither flag nor environment gave from the file, after
            /// checking the file's value with the flag's own parser; returns each setting's
            /// source.
            fn merge(
                &mut self,
                m: &ArgMatches,
                file: FileSettings,
                text: &str,
            ) -> anyhow::Result<Vec<(&'static str, Source)>> {
                let cmd = <ServeArgs as Args>::augment_args(clap::Command::new("serve"));
                let path = self.config.clone().unwrap_or_default();
                let mut sources = Vec::new();
                $(
                    let source = match m.value_source(stringify!($name)) {
                        Some(ValueSource::CommandLine) => Source::Flag,
                        Some(ValueSource::EnvVariable) => Source::Env,
                        _ => match file.$name {
                            Some(v) => {
                                let arg_text = <$ty as Setting>::arg_text(v.get_ref());
                                check_with_parser(&cmd, stringify!($name), &arg_text).map_err(|e| {
                                    anyhow::anyhow!(
                                        "config file {}: line {}: key `{}`: {e}",
                                        path.display(),
                                        line_of(text, v.span().start),
                                        stringify!($name)
                                    )
                                })?;
                                Setting::set(&mut self.$name, v.into_inner());
                                Source::File
                            }
                            None => Source::Default,
                        },
                    };
                    sources.push((stringify!($name), source));
                )*
                Ok(sources)
            }

            fn shown(&self) -> Vec<(&'static str, String)> {
                vec![$( (stringify!($name), Setting::show(&self.$name)), )*]
            }
        }
    };
}

serve_settings! {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Where the embedded database and the master key file live.
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./keygate-data")]
    data_dir: PathBuf,
    /// `postgres://…` to share one PostgreSQL database between nodes; default: embedded SQLite.
    #[arg(long, env = "KEYGATE_DATABASE_URL", hide_env_values = true)]
    database_url: Option<Secret>,
    /// File holding the database URL (readable by its owner only).
    #[arg(long, env = "KEYGATE_DATABASE_URL_FILE")]
    database_url_file: Option<PathBuf>,
    /// Base URL clients reach this service at (shown with the key); default http(s)://LISTEN.
    #[arg(long, env = "KEYGATE_PUBLIC_BASE_URL")]
    public_base_url: Option<String>,
    /// The platform operator's name, on the key page of a key it disabled ("Disabled by NAME").
    #[arg(long, env = "KEYGATE_PLATFORM_NAME", default_value = "the platform operator",
          value_parser = platform_name)]
    platform_name: String,
    /// Where an org whose key the platform disabled gets help: an http(s) URL.
    #[arg(long, env = "KEYGATE_PLATFORM_SUPPORT_URL", value_parser = platform_support_url)]
    platform_support_url: Option<String>,
    /// The platform's support e-mail address, shown with the same notice.
    #[arg(long, env = "KEYGATE_PLATFORM_SUPPORT_EMAIL", value_parser = platform_support_email)]
    platform_support_email: Option<String>,
    /// Provider bearer token to accept; if unset and none exists, one is created and printed once.
    #[arg(long, env = "KEYGATE_PROVIDER_TOKEN", hide_env_values = true)]
    provider_token: Option<Secret>,
    /// File holding the provider token (readable by its owner only).
    #[arg(long, env = "KEYGATE_PROVIDER_TOKEN_FILE")]
    provider_token_file: Option<PathBuf>,
    /// Master key (base64 of 32 bytes); default: DATA_DIR/master.key, created on first start.
    #[arg(long, env = "KEYGATE_MASTER_KEY", hide_env_values = true)]
    master_key: Option<Secret>,
    /// File holding the master key as base64 (readable by its owner only).
    #[arg(long, env = "KEYGATE_MASTER_KEY_FILE")]
    master_key_file: Option<PathBuf>,
    /// Admin console session idle timeout, seconds.
    #[arg(long, env = "KEYGATE_CONSOLE_IDLE_TIMEOUT_SECS", default_value_t = 900)]
    console_idle_timeout_secs: i64,
    /// Admin console session absolute lifetime, seconds.
    #[arg(long, env = "KEYGATE_CONSOLE_MAX_LIFETIME_SECS", default_value_t = 28_800)]
    console_max_lifetime_secs: i64,
    /// Cloud service API login: largest accepted distance of `timestamp` from the server clock, seconds.
    #[arg(long, env = "KEYGATE_API_TIMESTAMP_WINDOW_SECS", default_value_t = 600)]
    api_timestamp_window_secs: i64,
    /// Cloud service API session idle timeout, seconds.
    #[arg(long, env = "KEYGATE_API_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    api_idle_timeout_secs: i64,
    /// Cloud service API session absolute lifetime, seconds.
    #[arg(long, env = "KEYGATE_API_MAX_LIFETIME_SECS", default_value_t = 28_800)]
    api_max_lifetime_secs: i64,
    /// Largest accepted request body, bytes.
    #[arg(long, env = "KEYGATE_MAX_BODY_BYTES", default_value_t = 65_536)]
    max_body_bytes: usize,
    /// Log format: text or json.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", default_value = "text")]
    log_format: String,
    /// PostgreSQL: cache sessions and orgs on each node, kept exact across nodes by change
    /// notifications and leases; on by default, `--node-cache=false` turns it off (every
    /// request then reads the database).
    #[arg(long, env = "KEYGATE_NODE_CACHE", default_value_t = true, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", action = clap::ArgAction::Set,
          value_parser = clap::builder::BoolishValueParser::new())]
    node_cache: bool,
    /// PostgreSQL with --node-cache: the node's lease, milliseconds, 500 to 60000 (the
    /// longest a change waits for a node that stopped answering).
    #[arg(long, env = "KEYGATE_NODE_LEASE_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(500..=60_000))]
    node_lease_ms: u64,
    /// PostgreSQL: keep the global rate-limit counts in Redis (`redis://host:6379/0`) instead
    /// of the database's `rate_windows` table.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_REDIS_URL", hide_env_values = true)]
    rate_limit_redis_url: Option<Secret>,
    /// PostgreSQL: while the rate-limit store does not answer, each node admits at most
    /// ceil(limit / this) per window on its own (at least the most nodes it saw claiming in
    /// one window); set it to the number of nodes.
    #[arg(long, env = "KEYGATE_RATE_LIMIT_NODES", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    rate_limit_nodes: u64,
    /// PostgreSQL reached through a connection pooler: `none`, or `transaction` for PgBouncer
    /// in `pool_mode = transaction` (each statement in a transaction of its own, no prepared
    /// statements kept; the node cache checks its notifications and stays off without them).
    #[arg(long, env = "KEYGATE_DATABASE_POOLER", default_value = "none",
          value_parser = ["none", "transaction"])]
    database_pooler: String,
    /// Reverse proxies (addresses or CIDR networks, comma-separated; an array in the file)
    /// whose forwarding header names the client; from any other peer the headers are ignored.
    #[arg(long, env = "KEYGATE_TRUSTED_PROXIES", default_value = "")]
    trusted_proxies: TrustedProxyList,
    /// The header the trusted proxies set: x-forwarded-for, forwarded or x-real-ip.
    #[arg(long, env = "KEYGATE_CLIENT_IP_HEADER", default_value = "x-forwarded-for")]
    client_ip_header: ClientIpHeader,
    /// Serve `/metrics` on this separate address, without a token (bind it where only the
    /// scraper reaches it).
    #[arg(long, env = "KEYGATE_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Serve `/metrics` on the main listener to `Authorization: Bearer <this>`.
    #[arg(long, env = "KEYGATE_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<Secret>,
    /// File holding the metrics token (readable by its owner only).
    #[arg(long, env = "KEYGATE_METRICS_TOKEN_FILE")]
    metrics_token_file: Option<PathBuf>,
    /// PEM certificate chain to serve HTTPS with (with --tls-key); reloaded on SIGHUP and when
    /// the files change.
    #[arg(long, env = "KEYGATE_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (readable by its owner only).
    #[arg(long, env = "KEYGATE_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// How often the certificate files are checked for changes, milliseconds.
    #[arg(long, env = "KEYGATE_TLS_WATCH_INTERVAL_MS", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    tls_watch_interval_ms: u64,
    /// A client has this long to send a request's head, and an idle keep-alive connection is
    /// closed after it; seconds.
    #[arg(long, env = "KEYGATE_HEADER_READ_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    header_read_timeout_secs: u64,
    /// A request's body must arrive within this long after its head, seconds (else 408 and
    /// the connection is closed).
    #[arg(long, env = "KEYGATE_BODY_READ_TIMEOUT_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=3_600))]
    body_read_timeout_secs: u64,
    /// Most connections open at once; past it new connections are closed at once (the open
    /// files limit is raised to fit it at start).
    #[arg(long, env = "KEYGATE_MAX_CONNECTIONS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    max_connections: u64,
    /// Of --max-connections, how many are kept for new connections: when fewer are left,
    /// idle keep-alive connections are closed and new ones get short timeouts.
    #[arg(long, env = "KEYGATE_CONNECTION_RESERVE", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    connection_reserve: u64,
}

fn platform_name(s: &str) -> Result<String, String> {
    crate::domain::tier::PartnerName::parse("platform_name", s)
        .map(|n| n.as_str().to_owned())
        .map_err(|e| e.reason)
}

fn platform_support_url(s: &str) -> Result<String, String> {
    crate::domain::tier::HttpUrl::parse("platform_support_url", s)
        .map(|u| u.as_str().to_owned())
        .map_err(|e| e.reason)
}

fn platform_support_email(s: &str) -> Result<String, String> {
    crate::domain::tier::SupportEmail::parse("platform_support_email", s)
        .map(|e| e.as_str().to_owned())
        .map_err(|e| e.reason)
}

/// The settings after merging, with where each came from.
pub struct Effective {
    pub args: ServeArgs,
    pub sources: Vec<(&'static str, Source)>,
}

impl Effective {
    /// `keygate config check`'s report: every setting, secrets redacted, and its source.
    pub fn report(&self) -> String {
        let mut out = String::new();
        if let Some(path) = &self.args.config {
            out.push_str(&format!("# config file: {}\n", path.display()));
        }
        for ((key, value), (_, source)) in self.args.shown().iter().zip(&self.sources) {
            out.push_str(&format!("{key} = {value}  # {}\n", source.as_str()));
        }
        out
    }

    fn source(&self, key: &str) -> Source {
        self.sources
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, s)| *s)
            .unwrap_or(Source::Default)
    }
}

/// Reads the config file named by `--config`/`KEYGATE_CONFIG` (if any) into `args`.
pub fn effective(mut args: ServeArgs, m: &ArgMatches) -> anyhow::Result<Effective> {
    let (file, text) = match &args.config {
        Some(path) => read_file(path)?,
        None => (FileSettings::default(), String::new()),
    };
    let sources = args.merge(m, file, &text)?;
    Ok(Effective { args, sources })
}

/// Runs `text` through the value parser of `--{id}` (ranges, formats), as if given as a flag.
fn check_with_parser(cmd: &clap::Command, id: &str, text: &str) -> Result<(), String> {
    let Some(arg) = cmd.get_arguments().find(|a| a.get_id() == id) else {
        return Ok(());
    };
    if !arg.get_action().takes_values() {
        return Ok(());
    }
    let Some(long) = arg.get_long() else {
        return Ok(());
    };
    clap::Command::new("check")
        .arg(arg.clone())
        .try_get_matches_from(["check".to_owned(), format!("--{long}={text}")])
        .map(|_| ())
        .map_err(|e| {
            // clap's first line without its "error: " prefix (secrets parse infallibly, so
            // no secret is ever in it).
            let msg = e.to_string();
            msg.lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ")
                .to_owned()
        })
}

fn read_file(path: &Path) -> anyhow::Result<(FileSettings, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let de = toml::Deserializer::parse(&text).map_err(|e| file_error(path, &text, None, &e))?;
    let file: FileSettings = serde_path_to_error::deserialize(de).map_err(|e| {
        // The path ends in serde_spanned's private field name; the key is its first part.
        let key = e.path().to_string();
        let key = key.split('.').next().unwrap_or("").to_owned();
        file_error(path, &text, Some(key), e.inner())
    })?;
    // A secret written into the file makes the file a secret too.
    let holds_secret = file.provider_token.is_some()
        || file.master_key.is_some()
        || file.database_url.is_some()
        || file.rate_limit_redis_url.is_some();
    if holds_secret && loosely_readable(path)? {
        bail!(
            "config file {} holds a secret and is readable by group or others; chmod 600 it",
            path.display()
        );
    }
    Ok((file, text))
}

fn file_error(path: &Path, text: &str, key: Option<String>, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|s| format!(" line {}:", line_of(text, s.start)))
        .unwrap_or_default();
    let key = key
        .filter(|k| !k.is_empty() && k != ".")
        .map(|k| format!(" key `{k}`:"))
        .unwrap_or_default();
    anyhow::anyhow!("config file {}:{line}{key} {}", path.display(), e.message())
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

#[cfg(unix)]
fn loosely_readable(path: &Path) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .permissions()
        .mode();
    Ok(mode & 0o077 != 0)
}

#[cfg(not(unix))]
fn loosely_readable(_: &Path) -> anyhow::Result<bool> {
    Ok(false)
}

/// Reads a secret from a file only its owner can read; the trailing newline is dropped.
pub fn secret_file(path: &Path) -> anyhow::Result<SecretString> {
    if loosely_readable(path)? {
        bail!(
            "secret file {} is readable by group or others; chmod 600 it",
            path.display()
        );
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read secret file {}", path.display()))?,
    );
    Ok(SecretString::from(text.trim_end_matches(['\n', '\r'])))
}

impl Effective {
    /// A secret given directly or as a file: the stronger source wins; both from the same
    /// place is an error.
    fn secret(
        &self,
        key: &str,
        direct: &Option<Secret>,
        file: &Option<PathBuf>,
    ) -> anyhow::Result<Option<SecretString>> {
        let file_key = format!("{key}_file");
        match (direct, file) {
            (Some(d), Some(f)) => {
                let (sd, sf) = (self.source(key), self.source(&file_key));
                if sd == sf {
                    bail!(
                        "both `{key}` and `{file_key}` are given ({}); give one",
                        sd.as_str()
                    );
                }
                if sd > sf {
                    Ok(Some(d.0.clone()))
                } else {
                    secret_file(f).map(Some)
                }
            }
            (Some(d), None) => Ok(Some(d.0.clone())),
            (None, Some(f)) => secret_file(f).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Checks the secret files too (`config check` fails where `serve` would).
    pub fn config(&self, listen: SocketAddr) -> anyhow::Result<Config> {
        let a = &self.args;
        let mut c = Config::new(listen, a.data_dir.clone());
        c.public_base_url = a.public_base_url.clone();
        c.platform = crate::config::PlatformContact {
            name: a.platform_name.clone(),
            support_url: a.platform_support_url.clone(),
            support_email: a.platform_support_email.clone(),
        };
        c.database_url = self.secret("database_url", &a.database_url, &a.database_url_file)?;
        c.provider_token =
            self.secret("provider_token", &a.provider_token, &a.provider_token_file)?;
        c.master_key = self.secret("master_key", &a.master_key, &a.master_key_file)?;
        c.console_idle_timeout_secs = a.console_idle_timeout_secs;
        c.console_max_lifetime_secs = a.console_max_lifetime_secs;
        c.max_body_bytes = a.max_body_bytes;
        c.api_timestamp_window_secs = a.api_timestamp_window_secs;
        c.api_idle_timeout_secs = a.api_idle_timeout_secs;
        c.api_max_lifetime_secs = a.api_max_lifetime_secs;
        c.node_cache = a.node_cache;
        c.node_lease = std::time::Duration::from_millis(a.node_lease_ms);
        c.rate_limit_redis_url = a.rate_limit_redis_url.as_ref().map(|s| s.0.clone());
        c.rate_limit_nodes = a.rate_limit_nodes as u32;
        c.database_pooler_transaction = a.database_pooler == "transaction";
        c.metrics_listen = a.metrics_listen;
        c.metrics_token = self.secret("metrics_token", &a.metrics_token, &a.metrics_token_file)?;
        c.trusted_proxies = crate::http::forwarded::TrustedProxies {
            nets: a.trusted_proxies.0.clone(),
            header: a.client_ip_header,
        };
        c.tls = match (&a.tls_cert, &a.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                watch_interval: std::time::Duration::from_millis(a.tls_watch_interval_ms),
            }),
            (None, None) => None,
            _ => bail!("`tls_cert` and `tls_key` go together: give both or neither"),
        };
        if a.connection_reserve >= a.max_connections {
            bail!("`connection_reserve` must be less than `max_connections`");
        }
        c.connections = ConnectionLimits {
            header_read_timeout: std::time::Duration::from_secs(a.header_read_timeout_secs),
            body_read_timeout: std::time::Duration::from_secs(a.body_read_timeout_secs),
            max_connections: a.max_connections as usize,
            reserve: a.connection_reserve as usize,
        };
        if !matches!(a.log_format.as_str(), "text" | "json") {
            bail!("`log_format` must be text or json");
        }
        Ok(c)
    }
}
