//! The operations both HTTP APIs (and the CLI's demo) share: one implementation of every rule.

pub mod auth;
pub mod cache;
pub mod gate;
pub mod keys;
pub mod limits;
pub mod meter;
pub mod operators;
pub mod orgs;
pub mod partners;
pub mod peers;
pub mod reads;
pub mod reports;
pub mod sessions;
pub mod throttle;

use std::sync::Arc;

/// The maps looked up on every API call. Their keys are server-made (org ids, SHA-256 digests
/// of session ids), so a fast seeded hash is as safe as std's SipHash and cheaper.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

use crate::clock::SharedClock;
use crate::crypto::PasswordHasher;
use crate::domain::audit::Actor;
use crate::store::{Ctx, Store, StoreError, StoreResult};

#[derive(Debug, Clone)]
pub struct Settings {
    /// Without a trailing slash; the API base URL is this plus `/api/v1`.
    pub public_base_url: String,
    pub console_idle_timeout_secs: i64,
    pub console_max_lifetime_secs: i64,
    /// How far a login's timestamp may be from the server's clock.
    pub api_timestamp_window_secs: i64,
    pub api_idle_timeout_secs: i64,
    pub api_max_lifetime_secs: i64,
    /// Whose forwarding headers say who the client is.
    pub trusted_proxies: crate::http::forwarded::TrustedProxies,
    /// Cookies get `Secure`: served over TLS, or behind a proxy at an https public URL.
    pub secure_cookies: bool,
    /// The platform operator's name and contacts (issue 15).
    pub platform: crate::config::PlatformContact,
}

pub struct Services {
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub hasher: PasswordHasher,
    pub settings: Settings,
    pub gate: gate::OrgGate,
    pub throttle: throttle::ThrottlePolicy,
    /// When this node last swept expired login failure counters (ms).
    pub throttle_swept: std::sync::atomic::AtomicI64,
    /// When this node last swept expired console sessions (ms).
    pub console_swept: std::sync::atomic::AtomicI64,
    pub rate_limits: limits::RateLimits,
    pub meter: meter::Meter,
    pub cache: cache::ViewCache,
    pub session_reads: Arc<reads::Coalesced<reads::SessionRows>>,
    pub org_reads: Arc<reads::Coalesced<reads::OrgRows>>,
    /// Whether the node cache runs, and why not (`/readyz`, the start-up log).
    pub node_cache: cache::NodeCacheMode,
    /// The other nodes, when this one caches on PostgreSQL (`--node-cache`).
    pub peers: Option<Arc<peers::Peers>>,
    /// `/metrics`, when metrics are on (`--metrics-listen` or `--metrics-token`).
    pub metrics: Option<Arc<crate::telemetry::Exposition>>,
    /// Failed provider bearer tokens per client address (issue 15).
    pub bearer_throttle: operators::BearerThrottle,
    /// Writes not waited for by the request that started them (a session's last use, the
    /// sweep of old login failure counters). `serve` waits for them before it returns, so a
    /// graceful shutdown leaves none half done and the store is closed when it returns.
    pub background: tokio_util::task::TaskTracker,
}

impl Services {
    pub fn ctx(&self, actor: Actor, client_addr: Option<String>) -> Ctx {
        Ctx {
            now: self.clock.now(),
            actor,
            client_addr,
        }
    }

    pub fn api_base_url(&self) -> String {
        format!("{}/api/v1", self.settings.public_base_url)
    }

    /// The cloud service API base URL an org's admins use: its own (set by the platform or
    /// its partner, shown as set) or the deployment's.
    pub fn org_base_url(&self, org: &crate::store::OrgRecord) -> String {
        org.base_url.clone().unwrap_or_else(|| self.api_base_url())
    }
}

/// Held by every change to an org: the org's gate for writing, and on drop (after the
/// change committed or failed, before the gate opens) the org's cached entries are forgotten.
/// A guard rather than a call after the change: a request's future can be dropped mid-change
/// (the client went away) after its transaction committed, and the forgetting must still happen.
struct ChangeGuard<'a> {
    services: &'a Services,
    org: crate::domain::ids::OrgId,
    _pass: gate::ChangePass,
}

impl Drop for ChangeGuard<'_> {
    fn drop(&mut self) {
        self.services.cache.forget_org(self.org);
    }
}

impl Services {
    /// Runs `change`, a change to `org`, as every change must run: after the org's requests in
    /// flight on this node, with the org's cached entries forgotten after it, and, with other
    /// caching nodes, returning only once they have forgotten them too (`peers::settle`).
    pub async fn change<T>(
        &self,
        org: crate::domain::ids::OrgId,
        change: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let guard = ChangeGuard {
            services: self,
            org,
            _pass: self.gate.change(org).await,
        };
        let outcome = change.await;
        drop(guard);
        // A refusal committed nothing; after a database error the commit may have happened.
        let may_have_committed = !matches!(
            outcome,
            Err(StoreError::Refused(_)
                | StoreError::NotFound(_)
                | StoreError::LoginNameTaken(_)
                | StoreError::Conflict(_)
                | StoreError::SessionEnded)
        );
        if let Some(peers) = self.peers.as_ref().filter(|_| may_have_committed) {
            let started = std::time::Instant::now();
            peers.settle().await;
            crate::telemetry::change_confirmation(started);
        }
        outcome
    }
}
