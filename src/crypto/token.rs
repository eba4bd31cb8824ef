//! Random bearer secrets (sessions, CSRF, provider tokens) and their stored hashes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// 256 bits from the OS CSPRNG, URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    B64URL.encode(bytes)
}

/// What the database stores in place of a high-entropy token. A fast hash is right here:
/// the token has 256 bits, so there is nothing to brute-force.
pub fn token_hash(token: &str) -> TokenHash {
    let mut hex = [0u8; 64];
    match const_hex::encode_to_slice(Sha256::digest(token.as_bytes()), &mut hex) {
        Ok(()) => TokenHash(hex),
        Err(_) => unreachable!("a SHA-256 digest is 32 bytes, 64 hex digits"),
    }
}

/// A token's SHA-256 in lower-case hex, on the stack: looking a session up by it (every API
/// call) allocates nothing. `to_string()` where an owned copy is kept.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash([u8; 64]);

impl TokenHash {
    pub fn as_str(&self) -> &str {
        // Only ever hex digits (ASCII).
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::ops::Deref for TokenHash {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

pub fn ct_str_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}
