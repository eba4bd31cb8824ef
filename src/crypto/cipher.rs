//! AEAD sealing of key values at rest (R12). The master key lives outside the database.

use std::io::Write;
use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, OsRng, Payload};
use aes_gcm::{AeadCore, Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::domain::ids::OrgId;
use crate::domain::key::ApiKeyValue;

const SEAL_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const CHECK_AAD: &[u8] = b"keygate/master-key-check/v1";
const CHECK_PLAINTEXT: &[u8] = b"keygate master key check";

/// The 256-bit master key. `Debug` is redacted; the bytes are wiped on drop.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub fn from_base64(text: &str) -> anyhow::Result<Self> {
        let bytes = Zeroizing::new(
            B64.decode(text.trim())
                .map_err(|_| anyhow::anyhow!("master key is not valid base64"))?,
        );
        let arr: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("master key must be 32 bytes (base64 of 32 bytes)"))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    pub fn generate() -> Self {
        let key = Aes256Gcm::generate_key(OsRng);
        let mut arr = [0u8; 32];
        arr.copy_from_slice(&key);
        Self(Zeroizing::new(arr))
    }

    /// Reads `path`, or creates it (mode 0600, never overwritten) holding a new random key.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::from_base64(&text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(0o600);
                }
                let mut file = opts.open(path)?;
                let text = Zeroizing::new(B64.encode(key.0.as_slice()));
                file.write_all(text.as_bytes())?;
                file.sync_all()?;
                Ok(key)
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Seals and opens key values with AES-256-GCM; the org id is bound in as associated data,
/// so a sealed key copied to another org's row does not open.
pub struct KeyCipher {
    aead: Aes256Gcm,
}

impl std::fmt::Debug for KeyCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyCipher(<redacted>)")
    }
}

fn aad(org: OrgId) -> Vec<u8> {
    format!("keygate/api-key/v1/org/{}", org.0).into_bytes()
}

impl KeyCipher {
    pub fn new(master: &MasterKey) -> Self {
        Self {
            aead: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(master.0.as_slice())),
        }
    }

    pub fn seal(&self, org: OrgId, key: &ApiKeyValue) -> Vec<u8> {
        self.seal_raw(&aad(org), key.as_bytes())
    }

    /// A value sealed for no org, stored beside the data to tell whether a master key is the
    /// one the data was sealed with.
    pub fn seal_check(&self) -> Vec<u8> {
        self.seal_raw(CHECK_AAD, CHECK_PLAINTEXT)
    }

    pub fn opens_check(&self, sealed: &[u8]) -> bool {
        self.open_raw(CHECK_AAD, sealed)
            .is_some_and(|p| p.as_slice() == CHECK_PLAINTEXT)
    }

    fn seal_raw(&self, aad: &[u8], msg: &[u8]) -> Vec<u8> {
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let ct = self
            .aead
            .encrypt(&nonce, Payload { msg, aad })
            .expect("AES-GCM encryption of a short value cannot fail");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    fn open_raw(&self, aad: &[u8], sealed: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        if sealed.len() < 1 + NONCE_LEN || sealed[0] != SEAL_VERSION {
            return None;
        }
        let nonce = Nonce::from_slice(&sealed[1..1 + NONCE_LEN]);
        self.aead
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    /// `None` when the blob was not sealed for this org with this master key.
    pub fn open(&self, org: OrgId, sealed: &[u8]) -> Option<ApiKeyValue> {
        ApiKeyValue::from_trusted_bytes(&self.open_raw(&aad(org), sealed)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_bound_to_org() {
        let cipher = KeyCipher::new(&MasterKey::generate());
        let key = ApiKeyValue::parse("k", "ABCDEFGHIJKL").unwrap();
        let sealed = cipher.seal(OrgId(7), &key);
        assert!(!sealed.windows(12).any(|w| w == b"ABCDEFGHIJKL"));
        assert_eq!(
            cipher.open(OrgId(7), &sealed).unwrap().expose(),
            "ABCDEFGHIJKL"
        );
        assert!(cipher.open(OrgId(8), &sealed).is_none());
        let other = KeyCipher::new(&MasterKey::generate());
        assert!(other.open(OrgId(7), &sealed).is_none());
    }

    #[test]
    fn master_key_file_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let a = MasterKey::load_or_create(&path).unwrap();
        let b = MasterKey::load_or_create(&path).unwrap();
        assert_eq!(a.0.as_slice(), b.0.as_slice());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        assert!(MasterKey::from_base64("not base64!").is_err());
        assert!(MasterKey::from_base64("AAAA").is_err());
    }
}
