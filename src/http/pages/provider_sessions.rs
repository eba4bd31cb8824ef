//! Provider console sessions: the provider types its bearer token once into the login form
//! and gets a session cookie instead, so the token is never kept by the browser.
//!
//! Sessions live in this process's memory, keyed by the SHA-256 of the cookie value, with
//! their CSRF token, and end after the console idle timeout or lifetime, at logout, or when
//! the process restarts. (Behind a load balancer over several nodes the console needs sticky
//! sessions; a store-backed table would lift that.)

use std::collections::HashMap;
use std::sync::Mutex;

use crate::crypto::token::{random_token, token_hash};
use crate::domain::time::Millis;

/// Sessions kept at most; the oldest is dropped beyond this.
const MAX_SESSIONS: usize = 10_000;

#[derive(Clone)]
struct Entry {
    token_id: i64,
    csrf: String,
    created_at: Millis,
    last_seen_at: Millis,
}

/// A live provider console session.
pub struct ProviderSession {
    pub token_id: i64,
    pub csrf: String,
    pub id_hash: String,
}

#[derive(Default)]
pub struct ProviderSessions {
    map: Mutex<HashMap<String, Entry>>,
}

pub struct Timeouts {
    pub idle_secs: i64,
    pub lifetime_secs: i64,
}

impl Timeouts {
    fn live(&self, e: &Entry, now: Millis) -> bool {
        now.0 - e.last_seen_at.0 < self.idle_secs * 1000
            && now.0 - e.created_at.0 < self.lifetime_secs * 1000
    }
}

impl ProviderSessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session for provider token `token_id`; returns the cookie value.
    pub fn open(&self, token_id: i64, now: Millis, t: &Timeouts) -> String {
        let cookie = random_token();
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, e| t.live(e, now));
        }
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, e)| e.last_seen_at)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(
            token_hash(&cookie),
            Entry {
                token_id,
                csrf: random_token(),
                created_at: now,
                last_seen_at: now,
            },
        );
        cookie
    }

    /// The live session behind `cookie`, touched; a dead one is removed.
    pub fn resolve(&self, cookie: &str, now: Millis, t: &Timeouts) -> Option<ProviderSession> {
        let id_hash = token_hash(cookie);
        let mut map = self.lock();
        let entry = map.get_mut(&id_hash)?;
        if !t.live(entry, now) {
            map.remove(&id_hash);
            return None;
        }
        entry.last_seen_at = now;
        Some(ProviderSession {
            token_id: entry.token_id,
            csrf: entry.csrf.clone(),
            id_hash,
        })
    }

    pub fn end(&self, id_hash: &str) {
        self.lock().remove(id_hash);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end() {
        let s = ProviderSessions::default();
        let t = Timeouts {
            idle_secs: 60,
            lifetime_secs: 100,
        };
        let t0 = Millis::from_secs(1_000);
        let cookie = s.open(7, t0, &t);
        let got = s.resolve(&cookie, t0.plus_secs(50), &t).expect("live");
        assert_eq!(got.token_id, 7);
        assert!(s.resolve("other", t0, &t).is_none());
        assert!(s.resolve(&cookie, t0.plus_secs(99), &t).is_some());
        assert!(
            s.resolve(&cookie, t0.plus_secs(100), &t).is_none(),
            "lifetime"
        );
        let cookie = s.open(7, t0, &t);
        assert!(s.resolve(&cookie, t0.plus_secs(61), &t).is_none(), "idle");
        let cookie = s.open(7, t0, &t);
        let got = s.resolve(&cookie, t0, &t).unwrap();
        s.end(&got.id_hash);
        assert!(s.resolve(&cookie, t0, &t).is_none(), "ended");
    }
}
