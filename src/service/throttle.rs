//! Throttling of failed logins (admin console, provider console, cloud service API alike).
//!
//! The policy, chosen so that no one who lacks the password can lock an admin out from
//! another address:
//! - per client address: `max_failures_per_addr` failures in a window throttle that address
//!   for every login (one attacker spraying names stops only itself);
//! - per (login, address): `max_failures_per_login_addr` failures throttle that pair;
//! - per login, over all addresses: once a login has `login_under_attack` failures in a
//!   window, any address that failed for it in that window is throttled for it (a distributed
//!   guesser gets one try per address), while an address with no failures is never blocked
//!   by this bound: the admin calling from elsewhere still logs in.
//!
//! IPv6 addresses are counted by their /64 (one host usually holds a whole /64). The counters
//! live in the database (`login_failures`), so they survive restarts and hold across nodes;
//! only logins read or write them, never authenticated calls. Written by hand rather than with
//! `governor`: it counts failures only (a success costs nothing), shares its state through
//! the database, and reads the injectable clock.

use std::net::IpAddr;

use super::Services;
use crate::crypto::token::token_hash;
use crate::domain::audit::{Actor, AuditAction};
use crate::domain::ids::OrgId;
use crate::domain::time::Millis;
use crate::store::{FailureCount, StoreResult};

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub max_failures_per_addr: u32,
    pub max_failures_per_login_addr: u32,
    pub login_under_attack: u32,
    pub window_secs: i64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            max_failures_per_addr: 20,
            max_failures_per_login_addr: 5,
            login_under_attack: 50,
            window_secs: 300,
        }
    }
}

/// The counted scopes of one attempt, as stored digests: address, (login, address), login.
pub struct Scopes(pub [String; 3]);

/// The address as counted: IPv6 by its /64, IPv4 (and IPv4-mapped IPv6) as is.
pub(crate) fn counted_address(addr: Option<&str>) -> String {
    match addr.and_then(|a| a.parse::<IpAddr>().ok()) {
        Some(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Some(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_default(),
        Some(IpAddr::V4(v4)) => v4.to_string(),
        None => addr.unwrap_or("-").to_owned(),
    }
}

/// `login` is what was typed (compared case-insensitively, as login names are).
pub fn scopes(login: &str, addr: Option<&str>) -> Scopes {
    let addr = counted_address(addr);
    let login = login.to_lowercase();
    Scopes([
        token_hash(&format!("addr\n{addr}")).to_string(),
        token_hash(&format!("login-addr\n{login}\n{addr}")).to_string(),
        token_hash(&format!("login\n{login}")).to_string(),
    ])
}

/// The stored digest under which an address (as counted) has its wrong provider bearer
/// tokens counted: a namespace of its own beside the login scopes of [`scopes`].
pub(crate) fn bearer_scope(counted_address: &str) -> String {
    token_hash(&format!("bearer-addr\n{counted_address}")).to_string()
}

impl ThrottlePolicy {
    pub fn window_ms(&self) -> i64 {
        self.window_secs * 1000
    }

    /// `Err(seconds to wait)` while the attempt's address or (login, address) is throttled,
    /// from the counters of its [`Scopes`] (in their order).
    pub fn verdict(&self, counts: &[Option<FailureCount>], now: Millis) -> Result<(), u64> {
        let [addr, pair, login] = [0, 1, 2].map(|i| counts.get(i).copied().flatten());
        let over = |c: Option<FailureCount>, limit: u32| c.filter(|c| c.failures >= limit as i64);
        let blocking = [
            over(addr, self.max_failures_per_addr),
            over(pair, self.max_failures_per_login_addr),
            // Under attack, only addresses that failed for this login are held back.
            over(login, self.login_under_attack).and(over(pair, 1)),
        ];
        let ends = blocking
            .iter()
            .flatten()
            .map(|c| c.window_start.0 + self.window_ms())
            .max();
        match ends {
            Some(end) if end > now.0 => Err(((end - now.0 + 999) / 1000) as u64),
            _ => Ok(()),
        }
    }
}

/// A failed attempt, as audited.
pub struct Failed {
    pub org: Option<OrgId>,
    pub action: AuditAction,
    pub details: serde_json::Value,
    pub actor: Actor,
}

impl Services {
    /// `Err(seconds)` while this login from this address is throttled.
    pub async fn login_throttled(
        &self,
        login: &str,
        client: Option<&str>,
    ) -> StoreResult<Result<(), u64>> {
        self.sweep_login_failures();
        let now = self.clock.now();
        let Scopes(scopes) = scopes(login, client);
        let counts = self
            .store
            .login_failure_counts(&scopes, self.throttle.window_ms(), now)
            .await?;
        Ok(self.throttle.verdict(&counts, now))
    }

    /// Deletes counters whose window ended, at most once a minute per node and off the
    /// failure's own transaction (a sweep there made concurrent failures wait on each other).
    pub fn sweep_login_failures(&self) {
        let now = self.clock.now();
        let last = self
            .throttle_swept
            .load(std::sync::atomic::Ordering::Relaxed);
        if now.0 - last < 60_000
            || self
                .throttle_swept
                .compare_exchange(
                    last,
                    now.0,
                    std::sync::atomic::Ordering::Relaxed,
                    std::sync::atomic::Ordering::Relaxed,
                )
                .is_err()
        {
            return;
        }
        let store = self.store.clone();
        let before = Millis(now.0 - self.throttle.window_ms());
        self.background.spawn(async move {
            if let Err(e) = store.sweep_login_failures(before).await {
                tracing::warn!(error = %e, "could not sweep expired login failure counters");
            }
        });
    }

    /// Counts a failed attempt against all three of its scopes, then audits it.
    pub async fn login_failed(
        &self,
        login: &str,
        client: Option<String>,
        failed: Failed,
    ) -> StoreResult<()> {
        self.count_login_failure(login, client.as_deref(), 3)
            .await?;
        let ctx = self.ctx(failed.actor, client);
        self.store
            .append_audit(failed.org, failed.action, failed.details, &ctx)
            .await
    }

    /// Counts a failure in the first `n` of the attempt's scopes (address, pair, login).
    pub async fn count_login_failure(
        &self,
        login: &str,
        client: Option<&str>,
        n: usize,
    ) -> StoreResult<()> {
        let Scopes(scopes) = scopes(login, client);
        self.store
            .count_login_failure(
                &scopes[..n.min(3)],
                self.throttle.window_ms(),
                self.clock.now(),
            )
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(failures: i64) -> Option<FailureCount> {
        Some(FailureCount {
            window_start: Millis(1_000_000),
            failures,
        })
    }

    #[test]
    fn each_bound_holds_only_where_it_should() {
        let p = ThrottlePolicy::default();
        let now = Millis(1_000_000 + 60_000);
        assert_eq!(p.verdict(&[None, None, None], now), Ok(()));
        assert_eq!(p.verdict(&[count(20), None, None], now), Err(240));
        assert_eq!(p.verdict(&[count(5), count(5), count(5)], now), Err(240));
        assert_eq!(p.verdict(&[count(4), count(4), count(49)], now), Ok(()));
        // Under attack: an address that failed for the login is held back, a clean one is not.
        assert_eq!(p.verdict(&[count(1), count(1), count(500)], now), Err(240));
        assert_eq!(p.verdict(&[None, None, count(100_000)], now), Ok(()));
        // After the window, nothing holds.
        let later = Millis(1_000_000 + 300_000);
        assert_eq!(
            p.verdict(&[count(99), count(99), count(999)], later),
            Ok(())
        );
    }

    #[test]
    fn scopes_fold_case_and_ipv6_hosts_of_one_network() {
        let a = scopes("Admin@X.com", Some("2001:db8:1:2:aaaa::1"));
        let b = scopes("admin@x.com", Some("2001:db8:1:2:bbbb::9"));
        assert_eq!(a.0, b.0);
        let c = scopes("admin@x.com", Some("2001:db8:1:3::1"));
        assert_ne!(a.0[0], c.0[0]);
        assert_eq!(a.0[2], c.0[2]);
        assert_eq!(
            scopes("a", Some("::ffff:10.0.0.1")).0,
            scopes("a", Some("10.0.0.1")).0
        );
        // Stored as digests: neither the name nor the address appears.
        assert!(
            a.0.iter()
                .all(|s| !s.contains("admin") && !s.contains("2001"))
        );
    }
}
