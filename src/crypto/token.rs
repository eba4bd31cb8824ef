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
        ascii_str(&self.0).unwrap_or_default()
    }
}

/// `bytes` as text. Tokens, session ids and their hashes are ASCII: that is checked a word at
/// a time, where `str::from_utf8` costs about 140 instructions for a session id (callgrind,
/// BENCHMARKS.md §20). Other text goes through `str::from_utf8` as before.
pub fn ascii_str(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: every ASCII byte string is valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
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

#[cfg(test)]
mod ascii_str_tests {
    use super::ascii_str;

    #[test]
    fn reads_ascii_and_other_utf8_alike_and_refuses_what_is_not_utf8() {
        assert_eq!(ascii_str(b"Z-eJoGEgCTaXL_kFl"), Some("Z-eJoGEgCTaXL_kFl"));
        assert_eq!(ascii_str(b""), Some(""));
        assert_eq!(ascii_str("caf\u{e9}".as_bytes()), Some("caf\u{e9}"));
        assert_eq!(ascii_str(b"abc\xff"), None);
        assert_eq!(ascii_str(b"\xc3"), None);
    }
}
