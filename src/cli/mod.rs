//! The command line: `serve`, `demo`, and client commands for every provider and admin
//! operation against a running server.

pub mod client;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use secrecy::SecretString;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::domain::admin::{LoginName, Password, Role};
use crate::domain::audit::Actor;
use crate::domain::org::{OrgName, Subscription};
use crate::server::{App, serve};
use crate::service::orgs::{AdminInput, OrgInput};

#[derive(Parser)]
#[command(
    name = "keygate",
    version,
    about = "One cloud service API key per organization"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(ServeArgs),
    /// Run the service on a throw-away data directory with a demo org, and print its
    /// URL, admin login, password and API key.
    Demo(DemoArgs),
    /// Provider operations against a running server (bearer token).
    Provider(client::ProviderArgs),
    /// Org admin operations on the org's key against a running server (login + password).
    Admin(client::AdminArgs),
}

#[derive(Args, Clone)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Where the embedded database and the master key file live.
    #[arg(long, env = "KEYGATE_DATA_DIR", default_value = "./keygate-data")]
    pub data_dir: PathBuf,
    /// `postgres://…` to share one PostgreSQL database between nodes; default: embedded SQLite.
    #[arg(long, env = "KEYGATE_DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<SecretString>,
    /// Base URL clients reach this service at (shown with the key); default http://LISTEN.
    #[arg(long, env = "KEYGATE_PUBLIC_BASE_URL")]
    pub public_base_url: Option<String>,
    /// Provider bearer token to accept; if unset and none exists, one is created and printed once.
    #[arg(long, env = "KEYGATE_PROVIDER_TOKEN", hide_env_values = true)]
    pub provider_token: Option<SecretString>,
    /// Master key (base64 of 32 bytes); default: DATA_DIR/master.key, created on first start.
    #[arg(long, env = "KEYGATE_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<SecretString>,
    /// Admin console session idle timeout, seconds.
    #[arg(long, env = "KEYGATE_CONSOLE_IDLE_TIMEOUT_SECS", default_value_t = 900)]
    pub console_idle_timeout_secs: i64,
    /// Admin console session absolute lifetime, seconds.
    #[arg(
        long,
        env = "KEYGATE_CONSOLE_MAX_LIFETIME_SECS",
        default_value_t = 28_800
    )]
    pub console_max_lifetime_secs: i64,
    /// Cloud service API login: largest accepted distance of `timestamp` from the server clock, seconds.
    #[arg(long, env = "KEYGATE_API_TIMESTAMP_WINDOW_SECS", default_value_t = 600)]
    pub api_timestamp_window_secs: i64,
    /// Cloud service API session idle timeout, seconds.
    #[arg(long, env = "KEYGATE_API_IDLE_TIMEOUT_SECS", default_value_t = 300)]
    pub api_idle_timeout_secs: i64,
    /// Cloud service API session absolute lifetime, seconds.
    #[arg(long, env = "KEYGATE_API_MAX_LIFETIME_SECS", default_value_t = 28_800)]
    pub api_max_lifetime_secs: i64,
    /// Largest accepted request body, bytes.
    #[arg(long, env = "KEYGATE_MAX_BODY_BYTES", default_value_t = 65_536)]
    pub max_body_bytes: usize,
    /// Log format: text or json.
    #[arg(long, env = "KEYGATE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// PostgreSQL: cache sessions and orgs on each node, kept exact across nodes by change
    /// notifications and leases (off: every request reads the database).
    #[arg(long, env = "KEYGATE_NODE_CACHE", default_value_t = false)]
    pub node_cache: bool,
    /// PostgreSQL with --node-cache: the node's lease, milliseconds (the longest a change
    /// waits for a node that stopped answering).
    #[arg(long, env = "KEYGATE_NODE_LEASE_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(500..=60_000))]
    pub node_lease_ms: u64,
    /// Serve Prometheus metrics at /metrics on this separate address, to anyone who reaches
    /// it (bind it where only the scraper can). Default: metrics off.
    #[arg(long, env = "KEYGATE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics at /metrics on the main listener to `Authorization: Bearer
    /// TOKEN` (404 without it). Default: metrics off.
    #[arg(long, env = "KEYGATE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretString>,
}

impl ServeArgs {
    fn config(&self, listen: SocketAddr) -> Config {
        let mut c = Config::new(listen, self.data_dir.clone());
        c.public_base_url = self.public_base_url.clone();
        c.database_url = self.database_url.clone();
        c.provider_token = self.provider_token.clone();
        c.master_key = self.master_key.clone();
        c.console_idle_timeout_secs = self.console_idle_timeout_secs;
        c.console_max_lifetime_secs = self.console_max_lifetime_secs;
        c.max_body_bytes = self.max_body_bytes;
        c.api_timestamp_window_secs = self.api_timestamp_window_secs;
        c.api_idle_timeout_secs = self.api_idle_timeout_secs;
        c.api_max_lifetime_secs = self.api_max_lifetime_secs;
        c.node_cache = self.node_cache;
        c.node_lease = std::time::Duration::from_millis(self.node_lease_ms);
        c.metrics_listen = self.metrics_listen;
        c.metrics_token = self.metrics_token.clone();
        c
    }
}

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, env = "KEYGATE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Serve /metrics on the listener to `Authorization: Bearer TOKEN` (as `serve`).
    #[arg(long, env = "KEYGATE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<SecretString>,
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

async fn bind(listen: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}

async fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_format);
    let (listener, addr) = bind(args.listen).await?;
    let app = App::build(&args.config(addr), Arc::new(SystemClock)).await?;
    if let Some(token) = &app.generated_provider_token {
        // Printed once to the operator's terminal, never logged.
        println!("provider token (shown once, store it now): {token}");
    }
    if let Some(listen) = args.metrics_listen {
        let (metrics_listener, metrics_addr) = bind(listen).await?;
        let router = crate::http::metrics::standalone(app.services.clone());
        // Lives as long as the process: a scraper may read the last counts until it exits.
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics_listener, router).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
        println!("keygate metrics on http://{metrics_addr}/metrics");
    }
    println!("keygate listening on http://{addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "serving");
    serve(listener, app, shutdown_signal()).await
}

async fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    init_logging("text");
    let dir = tempfile_dir()?;
    let (listener, addr) = bind(args.listen).await?;
    let provider_token = crate::crypto::token::random_token();
    let mut config = Config::new(addr, dir.clone());
    config.provider_token = Some(SecretString::from(provider_token.clone()));
    config.metrics_token = args.metrics_token.clone();
    let app = App::build(&config, Arc::new(SystemClock)).await?;
    let password = crate::crypto::token::random_token()[..20].to_string();
    let login = "admin@demo.example";
    let input = OrgInput {
        name: OrgName::parse("name", "Demo Org")?,
        subscription: Subscription {
            enabled: true,
            expires_at: None,
        },
        call_threshold: None,
        admins: vec![AdminInput {
            login: LoginName::parse("loginName", login)?,
            password: Password::parse("password", &password)?,
            role: Role::Full,
        }],
    };
    let svc = app.services.clone();
    let org = svc
        .create_org(input, Actor::System, None)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let key = org
        .key
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("demo org got no key"))?;
    let value = svc
        .store
        .open_key(org.id, key)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "keygate demo is running (data in {}, removed on exit)",
        dir.display()
    );
    println!("  URL:             http://{addr}");
    println!("  API base URL:    {}", svc.api_base_url());
    println!("  admin portal:    http://{addr}/portal");
    println!("  provider console: http://{addr}/console");
    println!("  admin login:     {login}");
    println!("  admin password:  {password}");
    println!("  API key:         {}", value.expose());
    println!("  provider token:  {provider_token}");
    println!("Try:  curl -s -c /tmp/kg -H 'Content-Type: application/json' \\");
    println!(
        "        -d '{{\"loginName\":\"{login}\",\"password\":\"{password}\"}}' http://{addr}/admin/v1/login"
    );
    println!("      curl -s -b /tmp/kg http://{addr}/admin/v1/apiKey");
    println!("Press Ctrl-C to stop.");
    let result = serve(listener, app, shutdown_signal()).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "keygate-demo-{}",
        crate::crypto::token::random_token()[..12].to_owned()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => run_serve(args).await,
            Command::Demo(args) => run_demo(args).await,
            Command::Provider(args) => client::run_provider(args).await,
            Command::Admin(args) => client::run_admin(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
