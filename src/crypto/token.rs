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
pub fn token_hash(token: &str) -> String {
    // Into a stack buffer first: `hex::encode` pushes one char at a time, and this runs on
    // every API request.
    let mut hex = [0u8; 64];
    match hex::encode_to_slice(Sha256::digest(token.as_bytes()), &mut hex) {
        Ok(()) => String::from_utf8(hex.to_vec()).unwrap_or_default(),
        Err(_) => unreachable!("a SHA-256 digest is 32 bytes, 64 hex digits"),
    }
}

pub fn ct_str_eq(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}
