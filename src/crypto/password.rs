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

#[derive(Clone)]
pub struct PasswordHasher {
    bound: Arc<Semaphore>,
}

impl std::fmt::Debug for PasswordHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PasswordHasher")
            .field("permits", &self.bound.available_permits())
            .finish()
    }
}

fn argon2() -> Argon2<'static> {
    let params =
        Params::new(OWASP_M_KIB, OWASP_T, OWASP_P, None).expect("static argon2 params are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// A hash of a password nobody has, verified when the login name is unknown so that an
/// unknown name costs the same time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(b"keygate-decoy-password-never-valid", &salt)
            .expect("hashing works")
            .to_string()
    })
}

impl PasswordHasher {
    /// `concurrency` bounds how many hashes run at once, so a login storm queues instead of
    /// taking every core (and 19 MiB each).
    pub fn new(concurrency: usize) -> Self {
        Self {
            bound: Arc::new(Semaphore::new(concurrency.max(1))),
        }
    }

    pub async fn hash(&self, password: Password) -> anyhow::Result<String> {
        let _permit = self.bound.acquire().await?;
        tokio::task::spawn_blocking(move || {
            let salt = SaltString::generate(&mut OsRng);
            argon2()
                .hash_password(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("password hashing failed: {e}"))
        })
        .await?
    }

    /// Constant-time verification (inside argon2). `stored = None` verifies against a decoy.
    pub async fn verify(&self, password: Password, stored: Option<String>) -> bool {
        let Ok(_permit) = self.bound.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || {
            let known = stored.is_some();
            let phc = stored.unwrap_or_else(|| decoy_hash().to_owned());
            let Ok(parsed) = PasswordHash::new(&phc) else {
                return false;
            };
            let ok = argon2()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok();
            ok && known
        })
        .await
        .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_and_verify() {
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
}
