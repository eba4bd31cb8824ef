//! argon2id password hashes at OWASP parameters, on the blocking pool with a concurrency bound.

use std::sync::{Arc, OnceLock};

use argon2::password_hash::{
    PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString, rand_core::OsRng,
};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::admin::Password;

/// OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
pub const OWASP_M_KIB: u32 = 19_456;
pub const OWASP_T: u32 = 2;
pub const OWASP_P: u32 = 1;

/// argon2id cost. `keygate serve` always uses [`HashParams::OWASP`]; tests and benchmarks
/// that log in thousands of times may build an `App` with a cheaper one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl HashParams {
    pub const OWASP: HashParams = HashParams {
        m_kib: OWASP_M_KIB,
        t: OWASP_T,
        p: OWASP_P,
    };
}

impl Default for HashParams {
    fn default() -> Self {
        Self::OWASP
    }
}

#[derive(Clone)]
pub struct PasswordHasher {
    bound: Arc<Semaphore>,
    params: HashParams,
    decoy: Arc<OnceLock<String>>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("permits", &self.bound.available_permits())
            .field("params", &self.params)
            .finish()
    }
}

/// Runs `f` at the lowest CPU priority (nice 19 for this thread), then restores the thread's
/// niceness. A login storm then takes mostly the CPU the API's requests leave over instead of
/// half the core (BENCHMARKS.md, scenario 6; `SCHED_IDLE` was tried and starved in one run).
/// If the niceness cannot be restored (an unprivileged process), the blocking-pool thread stays
/// at nice 19; nothing else of keygate's runs there.
fn at_idle_priority<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: these calls read and change only the calling thread's niceness.
        let tid = unsafe { libc::gettid() } as libc::id_t;
        let previous = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) };
        let out = f();
        unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, previous) };
        out
    }
    #[cfg(not(target_os = "linux"))]
    f()
}

fn argon2(p: HashParams) -> Argon2<'static> {
    let params = Params::new(p.m_kib, p.t, p.p, None)
        .or_else(|_| Params::new(OWASP_M_KIB, OWASP_T, OWASP_P, None))
        .expect("OWASP argon2 params are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

impl PasswordHasher {
    /// `concurrency` bounds how many hashes run at once, so a login storm queues instead of
    /// taking every core (and 19 MiB each).
    pub fn new(concurrency: usize) -> Self {
        Self::with_params(concurrency, HashParams::OWASP)
    }

    pub fn with_params(concurrency: usize, params: HashParams) -> Self {
        Self {
            bound: Arc::new(Semaphore::new(concurrency.max(1))),
            params,
            decoy: Arc::new(OnceLock::new()),
        }
    }

    /// A hash of a password nobody has, verified when the login name is unknown so that an
    /// unknown name costs the same time as a wrong password.
    fn decoy_hash(&self) -> String {
        self.decoy
            .get_or_init(|| {
                let salt = SaltString::generate(&mut OsRng);
                argon2(self.params)
                    .hash_password(b"keygate-decoy-password-never-valid", &salt)
                    .expect("hashing works")
                    .to_string()
            })
            .clone()
    }

    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
        let _permit = self.bound.acquire().await?;
        let params = self.params;
        tokio::task::spawn_blocking(move || {
            at_idle_priority(|| {
                let salt = SaltString::generate(&mut OsRng);
                argon2(params)
                    .hash_password(password.expose().as_bytes(), &salt)
                    .map(|h| h.to_string())
                    .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
            })
        })
        .await?
    }

    /// Constant-time verification (inside argon2). `stored = None` verifies against a decoy.
    pub async fn verify(&self, password: Password, stored: Option<String>) -> bool {
        let Ok(_permit) = self.bound.acquire().await else {
            return false;
        };
        let known = stored.is_some();
        let phc = match stored {
            Some(s) => s,
            None => self.decoy_hash(),
        };
        let params = self.params;
        tokio::task::spawn_blocking(move || {
            at_idle_priority(|| {
                let Ok(parsed) = PasswordHash::new(&phc) else {
                    return false;
                };
                let ok = argon2(params)
                    .verify_password(password.expose().as_bytes(), &parsed)
                    .is_ok();
                ok && known
            })
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify_at_owasp_parameters() {
        let h = PasswordHasher::new(2);
        let pw = Password::parse("p", "correct horse battery").unwrap();
        let stored = h.hash(pw.clone()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert!(!stored.contains("horse"));
        assert!(h.verify(pw, Some(stored.clone())).await);
        assert!(
            !h.verify(Password::for_login("wrong horse battery"), Some(stored))
                .await
        );
        assert!(
            !h.verify(
                Password::for_login("keygate-decoy-password-never-valid"),
                None
            )
            .await
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn hashing_runs_at_idle_priority_and_restores_the_thread() {
        let tid = unsafe { libc::gettid() } as libc::id_t;
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, tid) };
        let before = nice();
        let during = at_idle_priority(nice);
        assert_eq!(during, 19);
        // Restoring needs privilege on some systems; as root it must happen.
        let after = nice();
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(after, before);
        }
    }

    #[tokio::test]
    async fn cheaper_parameters_are_recorded_in_the_hash() {
        let h = PasswordHasher::with_params(
            1,
            HashParams {
                m_kib: 1024,
                t: 1,
                p: 1,
            },
        );
        let pw = Password::parse("p", "correct horse battery").unwrap();
        let stored = h.hash(pw.clone()).await.unwrap();
        assert!(stored.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"));
        // A hash made at OWASP cost still verifies: the parameters travel in the hash.
        let owasp = PasswordHasher::new(1).hash(pw.clone()).await.unwrap();
        assert!(h.verify(pw, Some(owasp)).await);
    }
}
