//! Building the application from its configuration, and serving it on a listener the caller
//! bound (so tests use port 0) until the caller's shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::clock::SharedClock;
use crate::config::Config;
use crate::crypto::{KeyCipher, MasterKey, PasswordHasher};
use crate::http::dispatch::Dispatch;
use crate::service::cache::CacheMode;
use crate::service::peers::Peers;
use crate::service::{Services, Settings};
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;

pub struct App {
    pub services: Arc<Services>,
    pub router: axum::Router,
    /// A provider token created at first start, to be shown once to the operator.
    pub generated_provider_token: Option<String>,
}

impl App {
    pub async fn build(config: &Config, clock: SharedClock) -> anyhow::Result<App> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let master = match &config.master_key {
            Some(k) => MasterKey::from_base64(k.expose_secret())?,
            None => MasterKey::load_or_create(&config.data_dir.join("master.key"))?,
        };
        let cipher = Arc::new(KeyCipher::new(&master));
        let shared_url = config
            .database_url
            .as_ref()
            .map(|u| u.expose_secret().to_owned());
        let store: Arc<dyn Store> = match &config.database_url {
            Some(url)
                if url.expose_secret().starts_with("postgres://")
                    || url.expose_secret().starts_with("postgresql://") =>
            {
                let hint = match &config.master_key {
                    Some(_) => std::path::PathBuf::from("KEYGATE_MASTER_KEY"),
                    None => config.data_dir.join("master.key"),
                };
                Arc::new(
                    PostgresStore::open(url.expose_secret(), cipher, &hint)
                        .await
                        .context("cannot open the PostgreSQL store")?,
                )
            }
            Some(_) => anyhow::bail!(
                "KEYGATE_DATABASE_URL must be a postgres:// URL (unset it for the embedded SQLite store)"
            ),
            None => Arc::new(SqliteStore::open(&config.data_dir, cipher).await?),
        };
        let public_base_url = config
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", config.listen))
            .trim_end_matches('/')
            .to_owned();
        // Exact by itself while this process owns the database (the embedded store); on
        // PostgreSQL only with the other nodes' notifications and a lease.
        let (cache_mode, peers) = match (&shared_url, config.node_cache) {
            (None, _) => (CacheMode::Owned, None),
            (Some(_), false) => (CacheMode::Off, None),
            (Some(url), true) => {
                let peers = Peers::connect(url, config.node_lease)
                    .await
                    .context("cannot set up the node cache's notifications")?;
                (CacheMode::Leased, Some(Arc::new(peers)))
            }
        };
        let services = Arc::new(Services {
            store,
            clock: clock.clone(),
            hasher: PasswordHasher::with_params(
                config.password_hash_concurrency,
                config.password_hash_params,
            ),
            settings: Settings {
                public_base_url,
                console_idle_timeout_secs: config.console_idle_timeout_secs,
                console_max_lifetime_secs: config.console_max_lifetime_secs,
                api_timestamp_window_secs: config.api_timestamp_window_secs,
                api_idle_timeout_secs: config.api_idle_timeout_secs,
                api_max_lifetime_secs: config.api_max_lifetime_secs,
            },
            gate: Default::default(),
            throttle: crate::service::throttle::LoginThrottle::new(config.login_throttle),
            rate_limits: crate::service::limits::RateLimits::new(clock.clone()),
            meter: Default::default(),
            cache: crate::service::cache::ViewCache::new(cache_mode),
            session_reads: Default::default(),
            org_reads: Default::default(),
            peers,
            metrics: match config.metrics_enabled() {
                true => Some(crate::telemetry::Exposition::new(
                    config.metrics_token.as_ref().map(|t| t.expose_secret()),
                )?),
                false => None,
            },
        });
        let generated_provider_token = services
            .bootstrap_provider_token(config.provider_token.as_ref().map(|t| t.expose_secret()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let router = crate::http::router(services.clone(), config.max_body_bytes);
        Ok(App {
            services,
            router,
            generated_provider_token,
        })
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve(
    listener: TcpListener,
    app: App,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let services = app.services.clone();
    let flusher = tokio::spawn({
        let services = services.clone();
        async move {
            let mut tick = tokio::time::interval(USAGE_FLUSH_INTERVAL);
            loop {
                tick.tick().await;
                if let Err(e) = services.flush_usage().await {
                    tracing::warn!(error = %e, "usage flush failed; will retry");
                }
                let s = &services.settings;
                services.cache.sweep(
                    services.clock.now(),
                    s.api_idle_timeout_secs,
                    s.api_max_lifetime_secs,
                );
            }
        }
    });
    // With other caching nodes: hear their changes, and hold a lease while hearing them.
    let peer_tasks: Vec<_> = match &services.peers {
        Some(peers) => vec![
            tokio::spawn({
                let (services, peers) = (services.clone(), peers.clone());
                async move { peers.listen(&services).await }
            }),
            tokio::spawn({
                let (services, peers) = (services.clone(), peers.clone());
                async move { peers.keep_lease(&services).await }
            }),
        ],
        None => Vec::new(),
    };
    let served = accept_loop(
        listener,
        Dispatch::new(app.router, services.clone()),
        shutdown,
    )
    .await;
    flusher.abort();
    let _ = flusher.await;
    for task in peer_tasks {
        task.abort();
        let _ = task.await;
    }
    if let Some(peers) = &services.peers {
        peers.leave(&services).await;
    }
    // Graceful shutdown loses no count.
    services
        .flush_usage()
        .await
        .map_err(|e| anyhow::anyhow!("final usage flush failed: {e}"))?;
    served
}

/// Accepts connections until `shutdown`, then waits for those open to finish their requests
/// (idle keep-alive connections are closed at once).
async fn accept_loop(
    listener: TcpListener,
    dispatch: Dispatch,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of descriptors or memory: wait rather than spin; the listener stays.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Answers are one write each; Nagle would only hold them back.
        let _ = stream.set_nodelay(true);
        let dispatch = dispatch.clone();
        let service = hyper::service::service_fn(move |req| {
            let dispatch = dispatch.clone();
            async move { dispatch.handle(req, peer).await }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A client has this long to send a request's head (slow-header attacks).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Usage counts are written this often: the most calls a crash can lose are those counted
/// in one interval.
pub const USAGE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
