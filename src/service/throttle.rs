//! Throttling of failed logins, per login name and per client address.
//!
//! Written by hand rather than with `governor`: it counts failures only (a success costs
//! nothing), and it reads the injectable clock, so tests can drive it without sleeping.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::domain::time::Millis;

#[derive(Debug, Clone, Copy)]
pub struct ThrottlePolicy {
    pub max_failures_per_login: u32,
    pub max_failures_per_addr: u32,
    pub window_secs: i64,
}

impl Default for ThrottlePolicy {
    fn default() -> Self {
        Self {
            max_failures_per_login: 5,
            max_failures_per_addr: 20,
            window_secs: 300,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Millis,
    failures: u32,
}

pub struct LoginThrottle {
    policy: ThrottlePolicy,
    windows: Mutex<HashMap<String, Window>>,
}

/// Entries kept before expired ones are swept; bounds memory under a spray of names.
const SWEEP_AT: usize = 100_000;

impl LoginThrottle {
    pub fn new(policy: ThrottlePolicy) -> Self {
        Self {
            policy,
            windows: Mutex::new(HashMap::new()),
        }
    }

    fn keys(&self, login: &str, addr: Option<&str>) -> Vec<(String, u32)> {
        let mut keys = vec![(
            format!("login:{}", login.to_ascii_lowercase()),
            self.policy.max_failures_per_login,
        )];
        if let Some(a) = addr {
            keys.push((format!("addr:{a}"), self.policy.max_failures_per_addr));
        }
        keys
    }

    /// `Err(seconds)` while either the login name or the address is locked out.
    pub fn check(&self, login: &str, addr: Option<&str>, now: Millis) -> Result<(), u64> {
        let windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window_ms = self.policy.window_secs * 1000;
        let mut wait_ms = 0i64;
        for (key, limit) in self.keys(login, addr) {
            if let Some(w) = windows.get(&key) {
                let ends = w.start.0 + window_ms;
                if w.failures >= limit && now.0 < ends {
                    wait_ms = wait_ms.max(ends - now.0);
                }
            }
        }
        if wait_ms > 0 {
            Err(((wait_ms + 999) / 1000) as u64)
        } else {
            Ok(())
        }
    }

    pub fn record_failure(&self, login: &str, addr: Option<&str>, now: Millis) {
        let mut windows = self.windows.lock().unwrap_or_else(|e| e.into_inner());
        let window_ms = self.policy.window_secs * 1000;
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, w| now.0 < w.start.0 + window_ms);
        }
        for (key, _) in self.keys(login, addr) {
            let w = windows.entry(key).or_insert(Window {
                start: now,
                failures: 0,
            });
            if now.0 >= w.start.0 + window_ms {
                *w = Window {
                    start: now,
                    failures: 0,
                };
            }
            w.failures += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locks_after_limit_and_unlocks_after_window() {
        let t = LoginThrottle::new(ThrottlePolicy {
            max_failures_per_login: 3,
            max_failures_per_addr: 5,
            window_secs: 60,
        });
        let t0 = Millis(1_000_000);
        for _ in 0..3 {
            assert!(t.check("a@x", Some("1.2.3.4"), t0).is_ok());
            t.record_failure("a@x", Some("1.2.3.4"), t0);
        }
        assert_eq!(t.check("a@x", Some("9.9.9.9"), t0), Err(60));
        assert_eq!(t.check("A@X", None, t0.plus_secs(30)), Err(30));
        assert!(t.check("b@x", Some("9.9.9.9"), t0).is_ok());
        assert!(t.check("a@x", None, t0.plus_secs(60)).is_ok());
        // Per address: five failures under different names lock the address.
        for i in 0..2 {
            t.record_failure(&format!("n{i}"), Some("1.2.3.4"), t0);
        }
        assert!(t.check("fresh", Some("1.2.3.4"), t0).is_err());
        assert!(t.check("fresh", Some("5.6.7.8"), t0).is_ok());
    }
}
