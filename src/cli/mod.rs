//! The command line: `serve`, `demo`, and client commands for every provider and admin
//! operation against a running server.

pub mod client;
pub mod settings;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use secrecy::SecretString;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::domain::admin::{LoginName, Password, Role};
use crate::domain::audit::Actor;
use crate::domain::org::{OrgName, Subscription};
use crate::server::{App, serve};
use crate::service::orgs::{AdminInput, OrgInput};
pub use settings::ServeArgs;

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
    /// The configuration: `config check`.
    Config(ConfigArgs),
}

#[derive(Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Print the settings `serve` would run with (same flags, environment and --config),
    /// secrets redacted, each with where it came from; fails where `serve` would.
    Check(ServeArgs),
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

async fn run_serve(settings: settings::Effective) -> anyhow::Result<()> {
    let args = &settings.args;
    // Before binding: a bad secret file or setting stops the start.
    settings.config(args.listen)?;
    init_logging(&args.log_format);
    let (listener, addr) = bind(args.listen).await?;
    let config = settings.config(addr)?;
    let app = App::build(&config, Arc::new(SystemClock)).await?;
    if let Some(token) = &app.generated_provider_token {
        // Printed once to the operator's terminal, never logged.
        println!("provider token (shown once, store it now): {token}");
    }
    if let Some(listen) = config.metrics_listen {
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
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("keygate listening on {scheme}://{addr}");
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "serving");
    serve(listener, app, shutdown_signal()).await
}

fn config_check(settings: settings::Effective) -> anyhow::Result<()> {
    settings.config(settings.args.listen)?;
    print!("{}", settings.report());
    Ok(())
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
        partner: None,
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
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `serve` and `config check` read the config file with their matches (which tell a
    // flag or variable from a default).
    let settings = match &cli.command {
        Command::Serve(args) => Some((args, matches.subcommand_matches("serve"))),
        Command::Config(ConfigArgs {
            command: ConfigCommand::Check(args),
        }) => Some((
            args,
            matches
                .subcommand_matches("config")
                .and_then(|m| m.subcommand_matches("check")),
        )),
        _ => None,
    }
    .map(|(args, m)| settings::effective(args.clone(), m.expect("subcommand matches")));
    let settings = match settings.transpose() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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
            Command::Serve(_) => run_serve(settings.expect("serve settings")).await,
            Command::Config(_) => config_check(settings.expect("check settings")),
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
