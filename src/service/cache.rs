//! Exact per-node cache of API sessions and org records, for the embedded store only.
//!
//! It is exact because one process owns an embedded database (the data directory is locked),
//! and every change that can affect a session or an org goes through `OrgGate::change`,
//! which forgets the org's entries after the commit and before releasing the gate; a
//! request fills or reads the cache only while holding the same gate for reading. So a
//! cached entry is never older than the last change answered. With PostgreSQL other nodes
//! change the data, so the cache is off and every request reads the database.

use super::FastMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Bytes;

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

pub struct ViewCache {
    enabled: bool,
    sessions: Mutex<FastMap<String, ApiSessionView>>,
    orgs: Mutex<FastMap<OrgId, OrgRecord>>,
    /// Each org's `GET /api/v1/apiKeys` body as last rendered, forgotten with the org.
    key_lists: Mutex<FastMap<OrgId, RenderedKeyList>>,
    /// Changes this node has finished (counted on either store).
    changes: AtomicU64,
    /// Without the cache: when this node last wrote each session's `last_seen_at`, so one
    /// request per node and interval writes it rather than every request that reads it stale.
    touched: Mutex<FastMap<String, Millis>>,
}

impl ViewCache {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            sessions: Mutex::new(FastMap::default()),
            orgs: Mutex::new(FastMap::default()),
            key_lists: Mutex::new(FastMap::default()),
            changes: AtomicU64::new(0),
            touched: Mutex::new(FastMap::default()),
        }
    }

    /// How many changes this node has finished: a read made while it stayed the same is
    /// as current, for this node's changes, as one made after it.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Acquire)
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn session(&self, hash: &str) -> Option<ApiSessionView> {
        if !self.enabled {
            return None;
        }
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .cloned()
    }

    /// The org of a cached session, without copying the session (the first look-up of every
    /// API call, before it enters the org's gate).
    pub fn session_org(&self, hash: &str) -> Option<OrgId> {
        if !self.enabled {
            return None;
        }
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(hash)
            .map(|v| v.org_id)
    }

    pub fn put_session(&self, hash: &str, view: &ApiSessionView) {
        if self.enabled {
            self.sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(hash.to_owned(), view.clone());
        }
    }

    pub fn touch_session(&self, hash: &str, now: Millis) {
        if let Some(v) = self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(hash)
        {
            v.last_seen_at = now;
        }
    }

    /// Whether this caller is the one to write the session's `last_seen_at` at `now`: true for
    /// the first request that finds the cached one `every_ms` old (it is moved to `now` at
    /// once, so the requests running beside it do not write it too); without the cache, the
    /// first request of this node in each `every_ms`.
    pub fn claim_touch(&self, hash: &str, now: Millis, every_ms: i64) -> bool {
        if !self.enabled {
            let mut touched = self.touched.lock().unwrap_or_else(|e| e.into_inner());
            return match touched.get_mut(hash) {
                Some(at) if now.0 - at.0 < every_ms => false,
                Some(at) => {
                    *at = now;
                    true
                }
                None => {
                    touched.insert(hash.to_owned(), now);
                    true
                }
            };
        }
        match self
            .sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_mut(hash)
        {
            Some(v) if now.0 - v.last_seen_at.0 < every_ms => false,
            Some(v) => {
                v.last_seen_at = now;
                true
            }
            None => true,
        }
    }

    pub fn forget_session(&self, hash: &str) {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(hash);
    }

    pub fn org(&self, id: OrgId) -> Option<OrgRecord> {
        if !self.enabled {
            return None;
        }
        self.orgs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    pub fn put_org(&self, org: &OrgRecord) {
        if self.enabled {
            self.orgs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(org.id, org.clone());
        }
    }

    /// The org's key list as rendered at key generation `generation`, if the subscription
    /// is still in the state it was rendered in at `now`.
    pub fn key_list(&self, org: OrgId, generation: i64, now: Millis) -> Option<Bytes> {
        if !self.enabled {
            return None;
        }
        self.key_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&org)
            .filter(|r| r.generation == generation && r.subscription.state_at(now) == r.state)
            .map(|r| r.body.clone())
    }

    /// Keeps `body`, the key list of `org` rendered with its subscription in `state`. Only a
    /// caller holding the org's gate may, as for [`Self::put_org`].
    pub fn put_key_list(&self, org: &OrgRecord, state: SubscriptionState, body: Bytes) {
        if self.enabled {
            let rendered = RenderedKeyList {
                generation: org.key_generation,
                subscription: org.subscription,
                state,
                body,
            };
            self.key_lists
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(org.id, rendered);
        }
    }

    /// Called by every change to an org (key, subscription, limits, admins) while it holds
    /// the org's gate for writing.
    pub fn forget_org(&self, id: OrgId) {
        self.orgs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.key_lists
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, v| v.org_id != id);
        self.changes.fetch_add(1, Ordering::AcqRel);
    }

    /// Drops sessions that can no longer be valid, so memory follows live sessions only.
    pub fn sweep(&self, now: Millis, idle_secs: i64, lifetime_secs: i64) {
        self.touched
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, at| now.0 - at.0 < idle_secs * 1000);
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, v| {
                now.0 - v.last_seen_at.0 < idle_secs * 1000
                    && now.0 - v.created_at.0 < lifetime_secs * 1000
            });
    }
}
