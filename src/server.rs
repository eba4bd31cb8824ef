//! Building the application from its configuration, and serving it on a listener the caller
//! bound (so tests use port 0) until the caller's shutdown signal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use std::sync::atomic::{AtomicUsize, Ordering};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{Notify, watch};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::clock::SharedClock;
use crate::config::{Config, ConnectionLimits};
use crate::crypto::{KeyCipher, MasterKey, PasswordHasher};
use crate::http::dispatch::Dispatch;
use crate::service::cache::{CacheMode, NodeCacheMode, NodeCacheOff};
use crate::service::peers::Peers;
use crate::service::{Services, Settings};
use crate::store::Store;
use crate::store::postgres::PostgresStore;
use crate::store::sqlite::SqliteStore;
use crate::tls::{Snapshot, Tls};

pub struct App {
    pub services: Arc<Services>,
    pub router: axum::Router,
    /// A provider token created at first start, to be shown once to the operator.
    pub generated_provider_token: Option<String>,
    /// HTTPS: the certificate loaded at build (a bad pair stops the start) and what its files
    /// held, for the reload task.
    pub tls: Option<(Arc<Tls>, Snapshot)>,
    pub connections: ConnectionLimits,
    pub max_body_bytes: usize,
}

impl App {
    pub async fn build(config: &Config, clock: SharedClock) -> anyhow::Result<App> {
        std::fs::create_dir_all(&config.data_dir).with_context(|| {
            format!("cannot create data directory {}", config.data_dir.display())
        })?;
        let tls = match &config.tls {
            Some(files) => {
                let (tls, snapshot) =
                    Tls::load(files).context("cannot load the TLS certificate")?;
                Some((Arc::new(tls), snapshot))
            }
            None => None,
        };
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
                    PostgresStore::open(
                        url.expose_secret(),
                        cipher,
                        &hint,
                        config.database_pooler_transaction,
                    )
                    .await
                    .context("cannot open the PostgreSQL store")?,
                )
            }
            Some(_) => anyhow::bail!(
                "KEYGATE_DATABASE_URL must be a postgres:// URL (unset it for the embedded SQLite store)"
            ),
            None => Arc::new(SqliteStore::open(&config.data_dir, cipher).await?),
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let public_base_url = config
            .public_base_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", config.listen))
            .trim_end_matches('/')
            .to_owned();
        let secure_cookies = tls.is_some() || public_base_url.starts_with("https://");
        // Exact by itself while this process owns the database (the embedded store); on
        // PostgreSQL only with the other nodes' notifications and a lease.
        let node_cache = node_cache_mode(shared_url.as_deref(), config).await;
        let (cache_mode, peers) = match (&shared_url, &node_cache) {
            (Some(url), NodeCacheMode::On) => {
                let peers = Peers::connect(url, config.node_lease)
                    .await
                    .context("cannot set up the node cache's notifications")?;
                (CacheMode::Leased, Some(Arc::new(peers)))
            }
            (None, _) => (CacheMode::Owned, None),
            (Some(_), _) => (CacheMode::Off, None),
        };
        match node_cache.reason() {
            None => tracing::info!(
                node_cache = node_cache.label(),
                "node cache {}",
                node_cache.label()
            ),
            Some(reason)
                if matches!(node_cache, NodeCacheMode::Off(NodeCacheOff::Unsupported(_))) =>
            {
                tracing::warn!(
                    node_cache = node_cache.label(),
                    %reason,
                    "node cache off: every request reads the database"
                )
            }
            Some(reason) => tracing::info!(
                node_cache = node_cache.label(),
                %reason,
                "node cache off: every request reads the database"
            ),
        }
        // On PostgreSQL an org's limits hold across the nodes: counts in the shared store.
        let rate_limits = match (&shared_url, &config.rate_limit_redis_url) {
            (None, redis) => {
                if redis.is_some() {
                    tracing::warn!(
                        "rate_limit_redis_url is used with PostgreSQL only; the embedded store keeps its limits in memory"
                    );
                }
                crate::service::limits::RateLimits::local()
            }
            (Some(url), redis) => {
                let store: Arc<dyn crate::store::rate_windows::WindowStore> = match redis {
                    Some(r) => Arc::new(crate::store::rate_windows::RedisWindows::new(
                        r.expose_secret(),
                    )?),
                    None => Arc::new(
                        crate::store::rate_windows::PgWindows::connect(
                            url,
                            config.database_pooler_transaction,
                        )
                        .await?,
                    ),
                };
                crate::service::limits::RateLimits::global(
                    clock.clone(),
                    store,
                    config.rate_limit_nodes,
                )
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
                platform: config.platform.clone(),
                console_idle_timeout_secs: config.console_idle_timeout_secs,
                console_max_lifetime_secs: config.console_max_lifetime_secs,
                api_timestamp_window_secs: config.api_timestamp_window_secs,
                api_idle_timeout_secs: config.api_idle_timeout_secs,
                api_max_lifetime_secs: config.api_max_lifetime_secs,
                trusted_proxies: config.trusted_proxies.clone(),
                secure_cookies,
            },
            gate: Default::default(),
            throttle: config.login_throttle,
            throttle_swept: Default::default(),
            console_swept: Default::default(),
            rate_limits,
            meter: Default::default(),
            cache: crate::service::cache::ViewCache::new(cache_mode),
            session_reads: Default::default(),
            org_reads: Default::default(),
            background: tokio_util::task::TaskTracker::new(),
            node_cache,
            peers,
            metrics: match config.metrics_enabled() {
                true => Some(crate::telemetry::Exposition::new(
                    config.metrics_token.as_ref().map(|t| t.expose_secret()),
                )?),
                false => None,
            },
            bearer_throttle: crate::service::operators::BearerThrottle::new(
                config.bearer_max_failures,
            ),
        });
        if let Some(t) = &config.provider_token {
            let n = t.expose_secret().chars().count();
            if n < MIN_PROVIDER_TOKEN_CHARS {
                anyhow::bail!(
                    "provider token (KEYGATE_PROVIDER_TOKEN, --provider-token, provider_token in \
                     the config file) must be at least {MIN_PROVIDER_TOKEN_CHARS} characters; got {n}"
                );
            }
        }
        let generated_provider_token = services
            .bootstrap_provider_token(config.provider_token.as_ref().map(|t| t.expose_secret()))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let router = crate::http::router(services.clone(), config.max_body_bytes);
        Ok(App {
            services,
            router,
            generated_provider_token,
            tls,
            connections: config.connections,
            max_body_bytes: config.max_body_bytes,
        })
    }
}

/// A configured bootstrap token shorter than this is refused at start (issue 15).
pub const MIN_PROVIDER_TOKEN_CHARS: usize = 32;

/// Whether this node runs the node cache. The one place that decides it: a check at start
/// that finds the cache cannot work here (such as `LISTEN` through a transaction-pooling
/// PgBouncer) answers `NodeCacheMode::Off(NodeCacheOff::Unsupported(reason))`, and the node
/// then reads the database for every request and says so in its log and on `/readyz`.
async fn node_cache_mode(shared_url: Option<&str>, config: &Config) -> NodeCacheMode {
    match shared_url {
        None => NodeCacheMode::Embedded,
        Some(_) if !config.node_cache => NodeCacheMode::Off(NodeCacheOff::Disabled),
        // No LISTEN through a transaction pooler, not even to check: it would stay on a server
        // connection the pooler then hands to other clients, who would receive notifications
        // they never asked for.
        Some(_) if config.database_pooler_transaction => {
            NodeCacheMode::Off(NodeCacheOff::Unsupported(
                "the database is reached through a pooler in transaction mode (database_pooler = transaction), where LISTEN does not work".into(),
            ))
        }
        Some(url) => match crate::service::peers::node_cache_unavailable(url).await {
            None => NodeCacheMode::On,
            Some(why) => NodeCacheMode::Off(NodeCacheOff::Unsupported(why)),
        },
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
                if let Err(e) = services.sweep_console_sessions().await {
                    tracing::warn!(error = %e, "could not sweep expired console sessions");
                }
            }
        }
    });
    // Global rate limits: give back idle shares, sweep ended windows.
    let limits_upkeep = services.rate_limits.global_limits().map(|g| {
        let g = g.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LIMITS_UPKEEP_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                g.upkeep().await;
            }
        })
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
    let tls = app.tls.map(|(tls, snapshot)| {
        let acceptor = tls.acceptor().clone();
        (acceptor, tokio::spawn(tls.watch(Some(snapshot))))
    });
    let (acceptor, reloader) = match tls {
        Some((a, r)) => (Some(a), Some(r)),
        None => (None, None),
    };
    let dispatch = Dispatch::new(
        app.router,
        services.clone(),
        app.max_body_bytes,
        app.connections.body_read_timeout,
    );
    let served = accept_loop(listener, dispatch, acceptor, app.connections, shutdown).await;
    if let Some(reloader) = reloader {
        reloader.abort();
        let _ = reloader.await;
    }
    flusher.abort();
    let _ = flusher.await;
    if let Some(task) = limits_upkeep {
        task.abort();
        let _ = task.await;
    }
    for task in peer_tasks {
        task.abort();
        let _ = task.await;
    }
    if let Some(peers) = &services.peers {
        peers.leave(&services).await;
    }
    services.background.close();
    services.background.wait().await;
    // Graceful shutdown loses no count.
    services
        .flush_usage()
        .await
        .map_err(|e| anyhow::anyhow!("final usage flush failed: {e}"))?;
    served
}

/// Accepts connections until `shutdown`, then waits for those open to finish their requests
/// (idle keep-alive connections are closed at once).
///
/// At most `max_connections` are open (a connection past it is closed as soon as accepted);
/// once fewer than `reserve` are left, every idle keep-alive connection is asked to close, so
/// the reserve stays free for new connections (load balancers' `/healthz` and `/readyz`
/// among them). Stalled heads and bodies are ended by the header and body timeouts.
async fn accept_loop(
    listener: TcpListener,
    dispatch: Dispatch,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let budget = open_files_budget();
    if budget < limits.max_connections {
        tracing::warn!(
            max_connections = limits.max_connections,
            budget,
            "the open files limit allows fewer connections than max_connections; using it"
        );
    }
    let max = limits.max_connections.min(budget);
    let pressure = max.saturating_sub(limits.reserve);
    let open = Arc::new(Open::default());
    // Bumped to ask idle connections to close (under pressure) and, with `stop`, all.
    let (shed, _) = watch::channel(0u64);
    let (stop, _) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused_logged = false;
    let mut last_shed: Option<std::time::Instant> = None;
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
        let now_open = open.count.load(Ordering::Relaxed);
        if now_open >= max {
            if !refused_logged {
                tracing::warn!(max, "connection limit reached; closing new connections");
                refused_logged = true;
            }
            drop(stream);
            continue;
        }
        refused_logged = false;
        // Every connection wakes to a shed: at most one per interval, not one per accept.
        if now_open >= pressure && last_shed.is_none_or(|t| t.elapsed() >= SHED_INTERVAL) {
            shed.send_modify(|g| *g += 1);
            last_shed = Some(std::time::Instant::now());
        }
        // Answers are one write each; Nagle would only hold them back.
        let _ = stream.set_nodelay(true);
        let guard = open.enter();
        let conn = Conn {
            dispatch: dispatch.clone(),
            peer,
            header_read_timeout: limits.header_read_timeout,
            shed: shed.subscribe(),
            stop: stop.subscribe(),
        };
        match &tls {
            None => {
                tokio::spawn(async move {
                    conn.serve(TokioIo::new(stream)).await;
                    drop(guard);
                });
            }
            Some(acceptor) => {
                let accept = acceptor.accept(stream);
                tokio::spawn(async move {
                    // The handshake gets the same time as a request's head.
                    match tokio::time::timeout(limits.header_read_timeout, accept).await {
                        Ok(Ok(stream)) => conn.serve(TokioIo::new(stream)).await,
                        Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(guard);
                });
            }
        }
    }
    drop(listener);
    let _ = stop.send(true);
    open.wait_empty().await;
    Ok(())
}

/// Open connections, and a wake-up when the last one closes (graceful shutdown waits for it).
#[derive(Default)]
struct Open {
    count: AtomicUsize,
    empty: Notify,
}

struct OpenGuard(Arc<Open>);

impl Open {
    fn enter(self: &Arc<Self>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.clone())
    }

    async fn wait_empty(&self) {
        loop {
            let notified = self.empty.notified();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.empty.notify_waiters();
        }
    }
}

/// One connection's service and the signals it obeys.
struct Conn {
    dispatch: Dispatch,
    peer: std::net::SocketAddr,
    header_read_timeout: Duration,
    shed: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn serve<I>(mut self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        // Requests in flight on this connection: under pressure only idle ones are closed.
        let busy = Arc::new(AtomicUsize::new(0));
        let service = {
            let (dispatch, peer, busy) = (self.dispatch.clone(), self.peer, busy.clone());
            hyper::service::service_fn(move |req| {
                let dispatch = dispatch.clone();
                let busy = busy.clone();
                async move {
                    busy.fetch_add(1, Ordering::Relaxed);
                    let response = dispatch.handle(req, peer).await;
                    busy.fetch_sub(1, Ordering::Relaxed);
                    response
                }
            })
        };
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // Head and body in one buffer, one `write`: with `writev` the kernel copies each
            // piece at its own alignment, and on CPUs with fast-short-`rep movsb` (AMD EPYC
            // here) a copy whose destination lies 1–15 bytes past its source mod 64 takes
            // 20–30 times as long. 2–4% less CPU per request on every route (BENCHMARKS §24).
            .writev(false)
            .header_read_timeout(self.header_read_timeout)
            .serve_connection(io, service);
        let mut conn = std::pin::pin!(conn);
        let mut closing = false;
        loop {
            tokio::select! {
                ended = conn.as_mut() => {
                    if let Err(e) = ended {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                }
                changed = self.stop.changed(), if !closing => {
                    let _ = changed;
                    // Lets a request in flight finish; an idle connection closes now.
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                changed = self.shed.changed(), if !closing => {
                    if changed.is_err() || busy.load(Ordering::Relaxed) == 0 {
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                }
            }
        }
    }
}

/// Raises the open files soft limit to the hard limit (connections are files) and returns how
/// many connections fit in it, leaving room for the database, logs and listeners.
fn open_files_budget() -> usize {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct passed.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return usize::MAX;
            }
            if lim.rlim_cur < lim.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: lim.rlim_max,
                    rlim_max: lim.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    lim.rlim_cur = lim.rlim_max;
                }
            }
        }
        let budget = (lim.rlim_cur as usize).saturating_sub(OPEN_FILES_KEPT);
        tracing::debug!(budget, "open files available for connections");
        budget
    }
    #[cfg(not(unix))]
    {
        usize::MAX
    }
}

/// Under pressure, idle connections are asked to close at most this often.
const SHED_INTERVAL: Duration = Duration::from_millis(100);

/// Open files kept for everything but client connections.
const OPEN_FILES_KEPT: usize = 256;

/// Usage counts are written this often: the most calls a crash can lose are those counted
/// in one interval.
pub const USAGE_FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How often idle rate-limit shares are given back (PostgreSQL): well under the 100 ms a
/// one-second window's share may sit unused.
pub const LIMITS_UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
