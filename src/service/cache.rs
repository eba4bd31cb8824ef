//! Exact per-node cache of API sessions, org records and rendered key lists.
//!
//! Every change that can affect a session or an org goes through `Services::change`, which
//! forgets the org's entries after the commit and before releasing the org's gate; a request
//! fills or reads the cache only while holding the same gate for reading. On the embedded
//! store one process owns the database (the data directory is locked), so that alone keeps a
//! cached entry no older than the last change answered.
//!
//! On PostgreSQL other nodes change the data too. There the cache is used only while this
//! node holds a lease (`service::peers`): every change's transaction notifies every node,
//! which forgets the org on receipt, and the change is answered only once each node with a
//! live lease has confirmed it, or its lease has run out. A fill is kept only if no change
//! (of this node or another) was counted since the read it comes from began: a read that
//! raced a change elsewhere is not kept.

use super::FastMap;
use crate::telemetry::CacheMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;

use crate::clock::monotonic;
use crate::crypto::token::{TokenTag, TokenTagger};
use crate::domain::ids::OrgId;
use crate::domain::org::{Subscription, SubscriptionState};
use crate::domain::time::Millis;
use crate::store::{ApiSessionView, OrgRecord};

/// A rendered key list and what it was rendered from: the key generation, and the
/// subscription whose state (which moves with time) decides permissions and status.
struct RenderedKeyList {
    generation: i64,
    subscription: Subscription,
    state: SubscriptionState,
    body: Bytes,
}

/// Whether this node runs the node cache and why: what the start-up log line and `/readyz`
/// say. Decided once at start (`server::node_cache_mode`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCacheMode {
    /// The embedded store: the cache is exact by itself (this process owns the database).
    Embedded,
    /// PostgreSQL with the node cache (the default), kept exact by `service::peers`.
    On,
    /// PostgreSQL without it: every request reads the database.
    Off(NodeCacheOff),
}

/// Why a PostgreSQL node runs without the node cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCacheOff {
    /// Turned off by its setting (`--node-cache=false`, `KEYGATE_NODE_CACHE=false`,
    /// `node_cache = false`).
    Disabled,
    /// Found at start not to work here (for example `LISTEN` through a transaction-pooling
    /// PgBouncer); the text says what was found.
    Unsupported(String),
}

impl NodeCacheMode {
    /// `embedded`, `on` or `off`.
    pub fn label(&self) -> &'static str {
        match self {
            NodeCacheMode::Embedded => "embedded",
            NodeCacheMode::On => "on",
            NodeCacheMode::Off(_) => "off",
        }
    }

    /// Why it is off, in words; `None` when it is not.
    pub fn reason(&self) -> Option<String> {
        match self {
            NodeCacheMode::Off(NodeCacheOff::Disabled) => {
                Some("turned off by its setting (node_cache = false)".into())
            }
            NodeCacheMode::Off(NodeCacheOff::Unsupported(why)) => Some(why.clone()),
            _ => None,
        }
    }
}

/// When the cache may be used.
pub enum CacheMode {
    /// Never (PostgreSQL without `--node-cache`): every request reads the database.
    Off,
    /// Always: this process owns the database (embedded store).
    Owned,
    /// While this node's lease runs (PostgreSQL with `--node-cache`, see `service::peers`).
    Leased,
}

/// The end of the lease on this node's monotonic clock (nanoseconds, `clock::monotonic`;
/// 0 = no lease): the lease is measured on this node's own clock from before each renewal was
/// sent, so it ends here before the database sees it end.
struct Lease {
    until: AtomicU64,
}

impl Lease {
    /// Whether the lease runs at the monotonic time `coarse_now` read coarsely: only if it
    /// would still run at the latest time the coarse reading can stand for.
    fn running_at(&self, coarse_now: u64) -> bool {
        coarse_now.saturating_add(monotonic::coarse_slack_ns()) < self.until.load(Ordering::Acquire)
    }
    fn running(&self) -> bool {
        self.running_at(monotonic::coarse_ns())
    }
}

pub struct ViewCache {
    mode: CacheMode,
    lease: Lease,
    /// Names each session in `sessions` and `touched` by its token, without the SHA-256 the
    /// database uses (see `TokenTag`).
    tagger: TokenTagger,
    /// Shared with the requests that use them: a hit costs a reference count, not a copy.
    sessions: Mutex<FastMap<TokenTag, Arc<ApiSessionView>>>,
    orgs: Mutex<FastMap<OrgId, OrgRecord>>,
    /// Each org's `GET /api/v1/apiKeys` body as last rendered, forgotten with the org.
    key_lists: Mutex<FastMap<OrgId, RenderedKeyList>>,
    /// Changes counted (this node's and, with a lease, other nodes'); see [`Self::changes`].
    changes: AtomicU64,
    /// Without the cache: when this node last wrote each session's `last_seen_at`, so one
    /// request per node and interval writes it rather than every request that reads it stale.
    touched: Mutex<FastMap<TokenTag, Millis>>,
}

impl ViewCache {
    pub fn new(mode: CacheMode) -> Self {
        Self {
            mode,
            lease: Lease {
                until: AtomicU64::new(0),
            },
            tagger: TokenTagger::new(),
            sessions: Mutex::new(FastMap::default()),
            orgs: Mutex::new(FastMap::default()),
            key_lists: Mutex::new(FastMap::default()),
            changes: AtomicU64::new(0),
            touched: Mutex::new(FastMap::default()),
        }
    }

    /// Whether the cache is kept by leases shared with other nodes.
    pub fn leased(&self) -> bool {
        matches!(self.mode, CacheMode::Leased)
    }

    /// Whether the node's lease runs now (`/readyz`: a leased node without one reads the
    /// database for everything and cannot confirm changes to the others).
    pub fn lease_held(&self) -> bool {
        self.lease.running()
    }

    /// Lets the cache be used until `lease` after `renewed_at_ns` (`clock::monotonic::now_ns`,
    /// taken before the renewal was sent). After a lapse the entries are dropped first:
    /// changes may have been answered without this node while it held no lease.
    pub fn extend_lease(&self, renewed_at_ns: u64, lease: Duration) {
        if !self.lease.running() {
            self.clear();
        }
        let until = renewed_at_ns.saturating_add(lease.as_nanos() as u64);
        self.lease.until.fetch_max(until, Ordering::AcqRel);
    }

    /// Stops using the cache at once (the node lost its listener or the database) and drops
    /// its entries.
    pub fn end_lease(&self) {
        self.lease.until.store(0, Ordering::Release);
        self.clear();
    }

    /// Forgets everything, counting it as a change (a read begun before is not kept).
    pub fn clear(&self) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        locked(&self.orgs).clear();
        locked(&self.key_lists).clear();
        locked(&self.sessions).clear();
    }

    /// How many changes this node has counted: a read made while it stayed the same is as
    /// current as one made after it, and only such a read may fill the cache.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    /// Whether the cache may be used now.
    pub fn enabled(&self) -> bool {
        match self.mode {
            CacheMode::Off => false,
            CacheMode::Owned => true,
            CacheMode::Leased => self.lease.running(),
        }
    }

    /// Whether a read that began when [`Self::changes`] was `since` may fill the cache. Asked
    /// under the lock of the map being filled: a change counted later forgets that map's
    /// entries after counting itself, so it removes what this lets in.
    fn may_fill(&self, since: u64) -> bool {
        self.enabled() && self.changes() == since
    }

    /// What `f` takes from the entry under `key`, while the cache may be used.
    fn look_up<K, Q, V, R>(
        &self,
        (map, name): (&Mutex<FastMap<K, V>>, CacheMap),
        key: &Q,
        f: impl FnOnce(&V) -> Option<R>,
    ) -> Option<R>
    where
        K: Borrow<Q> + Hash + Eq,
        Q: Hash + Eq + ?Sized,
    {
        if !self.enabled() {
            return None;
        }
        let found = locked(map).get(key).and_then(f);
        if let Some(hot) = crate::telemetry::hot() {
            hot.cache_lookup(name, found.is_some());
        }
        found
    }

    /// Keeps `value` under `key` if it comes from a read begun when [`Self::changes`] was
    /// `since` and no change was counted since (see [`Self::may_fill`]).
    fn fill<K: Hash + Eq, V>(&self, map: &Mutex<FastMap<K, V>>, since: u64, key: K, value: V) {
        let mut entries = locked(map);
        if self.may_fill(since) {
            entries.insert(key, value);
        }
    }

    /// What this node's session maps know the session of `token` by.
    pub fn tag(&self, token: &str) -> TokenTag {
        self.tagger.tag(token)
    }

    pub fn session(&self, tag: &TokenTag) -> Option<Arc<ApiSessionView>> {
        self.look_up((&self.sessions, CacheMap::Session), tag, |v| {
            Some(v.clone())
        })
    }

    /// Keeps `view`, read from the database by a read begun when [`Self::changes`] was `since`.
    pub fn put_session(&self, tag: TokenTag, view: &Arc<ApiSessionView>, since: u64) {
        self.fill(&self.sessions, since, tag, view.clone());
    }

    /// Whether this caller is the one to write the session's `last_seen_at` at `now`: true for
    /// the first request that finds the cached one `every_ms` old (it is moved to `now` at
    /// once, so the requests running beside it do not write it too); without the cache, the
    /// first request of this node in each `every_ms`.
    pub fn claim_touch(&self, tag: TokenTag, now: Millis, every_ms: i64) -> bool {
        if !self.enabled() {
            let mut touched = locked(&self.touched);
            return match touched.get_mut(&tag) {
                Some(at) if now.0 - at.0 < every_ms => false,
                Some(at) => {
                    *at = now;
                    true
                }
                None => {
                    touched.insert(tag, now);
                    true
                }
            };
        }
        match locked(&self.sessions).get_mut(&tag) {
            Some(v) if now.0 - v.last_seen_at.0 < every_ms => false,
            Some(v) => {
                // Copies the view only if a request still holds it (once per interval).
                Arc::make_mut(v).last_seen_at = now;
                true
            }
            None => true,
        }
    }

    pub fn forget_session(&self, tag: &TokenTag) {
        locked(&self.sessions).remove(tag);
    }

    pub fn org(&self, id: OrgId) -> Option<OrgRecord> {
        self.look_up((&self.orgs, CacheMap::Org), &id, |org| Some(org.clone()))
    }

    /// Keeps `org`, read by a read begun when [`Self::changes`] was `since`.
    pub fn put_org(&self, org: &OrgRecord, since: u64) {
        self.fill(&self.orgs, since, org.id, org.clone());
    }

    /// The org's key list as rendered at key generation `generation`, if the subscription
    /// is still in the state it was rendered in at `now`.
    pub fn key_list(&self, org: OrgId, generation: i64, now: Millis) -> Option<Bytes> {
        self.look_up((&self.key_lists, CacheMap::KeyList), &org, |r| {
            (r.generation == generation && r.subscription.state_at(now) == r.state)
                .then(|| r.body.clone())
        })
    }

    /// Keeps `body`, the key list of `org` rendered with its subscription in `state`, `org`
    /// read as for [`Self::put_org`]. Only a caller holding the org's gate may.
    pub fn put_key_list(&self, org: &OrgRecord, state: SubscriptionState, body: Bytes, since: u64) {
        let rendered = RenderedKeyList {
            generation: org.key_generation,
            subscription: org.subscription,
            state,
            body,
        };
        self.fill(&self.key_lists, since, org.id, rendered);
    }

    /// Called by every change to an org (key, subscription, limits, admins) while it holds
    /// the org's gate for writing, and on another node's change to the org. Counted first,
    /// so a fill that checks the count after this has begun is refused (see `may_fill`).
    pub fn forget_org(&self, id: OrgId) {
        self.changes.fetch_add(1, Ordering::AcqRel);
        locked(&self.orgs).remove(&id);
        locked(&self.key_lists).remove(&id);
        locked(&self.sessions).retain(|_, v| v.org_id != id);
    }

    /// Drops sessions that can no longer be valid, so memory follows live sessions only.
    pub fn sweep(&self, now: Millis, idle_secs: i64, lifetime_secs: i64) {
        locked(&self.touched).retain(|_, at| now.0 - at.0 < idle_secs * 1000);
        locked(&self.sessions).retain(|_, v| {
            now.0 - v.last_seen_at.0 < idle_secs * 1000
                && now.0 - v.created_at.0 < lifetime_secs * 1000
        });
    }
}

/// The map behind `m`. A panic while it was held left it whole (every use is one map
/// operation), so a poisoned lock is taken as it is rather than disabling the cache.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_read_on_the_coarse_clock_ends_early_by_the_slack_never_late() {
        let cache = ViewCache::new(CacheMode::Leased);
        assert!(!cache.enabled(), "no lease yet");
        let now = monotonic::now_ns();
        cache.extend_lease(now, Duration::from_secs(1));
        assert!(cache.enabled() && cache.lease_held());
        let until = now + 1_000_000_000;
        let slack = monotonic::coarse_slack_ns();
        // A coarse reading stands for any time up to `slack` after it.
        assert!(cache.lease.running_at(until - slack - 1));
        assert!(!cache.lease.running_at(until - slack));
        assert!(!cache.lease.running_at(until));
        // A renewal never shortens it; ending it stops the cache at once.
        cache.extend_lease(now - 500_000_000, Duration::from_secs(1));
        assert!(cache.lease.running_at(until - slack - 1));
        cache.end_lease();
        assert!(!cache.enabled() && !cache.lease_held());
    }
}
