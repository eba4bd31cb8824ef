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

/// A session token's name in this node's memory (the session cache's key): SipHash-1-3 with a
/// 128-bit tag under a key drawn when the node starts. Found on every API call, where the
/// token's SHA-256 and its hex cost about 70 ns and this about 20 (BENCHMARKS.md §21); the
/// SHA-256 is still what the database knows a session by, computed only when it is read or
/// written. The key never leaves the process, so no one outside can find two tokens with one
/// tag, and the tag says nothing about the token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenTag(u128);

impl std::fmt::Debug for TokenTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenTag(..)")
    }
}

/// Makes [`TokenTag`]s under this node's own random key.
pub struct TokenTagger {
    key: (u64, u64),
}

impl TokenTagger {
    pub fn new() -> Self {
        let mut rng = rand::rngs::OsRng;
        Self {
            key: (rng.next_u64(), rng.next_u64()),
        }
    }

    pub fn tag(&self, token: &str) -> TokenTag {
        use siphasher::sip128::Hasher128;
        use std::hash::Hasher;
        let mut h = siphasher::sip128::SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write(token.as_bytes());
        TokenTag(h.finish128().as_u128())
    }
}

impl Default for TokenTagger {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for TokenTagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenTagger(..)")
    }
}

pub fn ct_str_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::{TokenTagger, ascii_str};

    #[test]
    fn a_tag_names_one_token_under_one_key_and_shows_nothing() {
        let tagger = TokenTagger::new();
        let token = "Z-eJoGEgCTaXL_kFlqV0dGhQk2JcXyF3b6aHc1uQm8s";
        assert_eq!(tagger.tag(token), tagger.tag(token));
        // One character more, less or changed is another tag.
        assert_ne!(tagger.tag(token), tagger.tag(&token[..42]));
        assert_ne!(tagger.tag(token), tagger.tag(&format!("{token}s")));
        assert_ne!(tagger.tag(token), tagger.tag(&token.replacen('Z', "Y", 1)));
        // Another node (another key) tags the same token differently.
        assert_ne!(tagger.tag(token), TokenTagger::new().tag(token));
        assert_eq!(format!("{:?}", tagger.tag(token)), "TokenTag(..)");
        assert_eq!(format!("{tagger:?}"), "TokenTagger(..)");
    }

    #[test]
    fn reads_ascii_and_other_utf8_alike_and_refuses_what_is_not_utf8() {
        assert_eq!(ascii_str(b"Z-eJoGEgCTaXL_kFl"), Some("Z-eJoGEgCTaXL_kFl"));
        assert_eq!(ascii_str(b""), Some(""));
        assert_eq!(ascii_str("caf\u{e9}".as_bytes()), Some("caf\u{e9}"));
        assert_eq!(ascii_str(b"abc\xff"), None);
        assert_eq!(ascii_str(b"\xc3"), None);
    }
}
