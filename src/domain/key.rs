//! The cloud service API key value: exactly 12 ASCII alphanumerics.

use rand::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use super::FieldError;

pub const KEY_LEN: usize = 12;
const ALPHABET: &[u8; 62] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A key value. `parse` and `generate` are the only ways to get one, so holding one means
/// it is well formed. Its `Debug` is redacted, comparison is constant time, and the bytes
/// are wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ApiKeyValue([u8; KEY_LEN]);

impl ApiKeyValue {
    /// Validates a client-supplied key (R4). `field` names the input in the error.
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        if input.is_empty() {
            return Err(FieldError::new(
                field,
                "must not be empty; give 12 letters or digits (A-Z, a-z, 0-9)",
            ));
        }
        if let Some(bad) = input.chars().find(|c| !c.is_ascii_alphanumeric()) {
            let shown = if bad.is_ascii_graphic() {
                format!("'{bad}'")
            } else {
                format!("U+{:04X}", bad as u32)
            };
            return Err(FieldError::new(
                field,
                format!("must be alphanumeric (A-Z, a-z, 0-9 only); found {shown}"),
            ));
        }
        if input.len() != KEY_LEN {
            return Err(FieldError::new(
                field,
                format!(
                    "must be exactly {KEY_LEN} characters long; got {}",
                    input.len()
                ),
            ));
        }
        let mut bytes = [0u8; KEY_LEN];
        bytes.copy_from_slice(input.as_bytes());
        Ok(Self(bytes))
    }

    /// A uniformly random key (R5). Rejection sampling over bytes avoids modulo bias:
    /// 62 * 4 = 248, so bytes 248..=255 are drawn again.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut out = [0u8; KEY_LEN];
        let mut filled = 0;
        let mut buf = [0u8; 32];
        while filled < KEY_LEN {
            rng.fill_bytes(&mut buf);
            for &b in buf.iter() {
                if b < 248 && filled < KEY_LEN {
                    out[filled] = ALPHABET[(b % 62) as usize];
                    filled += 1;
                }
            }
        }
        buf.zeroize();
        Self(out)
    }

    /// Restores a value that was validated before it was sealed; fails on anything else.
    pub fn from_trusted_bytes(bytes: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(bytes).ok()?;
        Self::parse("key", s).ok()
    }

    /// The full value. Callers: the key endpoints and the sealing code, nothing else.
    pub fn expose(&self) -> &str {
        // Always ASCII by construction.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The last three characters: the most an audit record or a masked view may carry.
    pub fn suffix(&self) -> String {
        self.expose()[KEY_LEN - 3..].to_string()
    }

    pub fn masked(&self) -> String {
        format!("{}{}", "*".repeat(KEY_LEN - 3), self.suffix())
    }

    pub fn ct_eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }

    /// The key as the cloud service API login sends it, obfuscated with the timestamp (ms):
    /// with `n` the timestamp's last six digits and `r = n >> 1` as six digits, the key's
    /// characters at each digit of `n`, then at each digit of `r` plus two.
    pub fn obfuscate(&self, timestamp_ms: i64) -> Zeroizing<[u8; KEY_LEN]> {
        let n = timestamp_ms.rem_euclid(1_000_000);
        let r = n >> 1;
        let mut out = Zeroizing::new([0u8; KEY_LEN]);
        for i in 0..6 {
            let place = 10i64.pow(5 - i as u32);
            out[i] = self.0[((n / place) % 10) as usize];
            out[6 + i] = self.0[((r / place) % 10) as usize + 2];
        }
        out
    }

    /// Constant-time check of an obfuscated login value against this key.
    pub fn matches_obfuscated(&self, timestamp_ms: i64, presented: &str) -> bool {
        let expected = self.obfuscate(timestamp_ms);
        let presented = presented.as_bytes();
        presented.len() == KEY_LEN && bool::from(expected.as_slice().ct_eq(presented))
    }
}

impl std::fmt::Debug for ApiKeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKeyValue(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_twelve_alphanumerics() {
        let k = ApiKeyValue::parse("keyValue", "abcDEF012xyZ").unwrap();
        assert_eq!(k.expose(), "abcDEF012xyZ");
        assert_eq!(k.suffix(), "xyZ");
        assert_eq!(k.masked(), "*********xyZ");
    }

    #[test]
    fn rejects_bad_values_with_reason() {
        for (input, needle) in [
            ("", "empty"),
            ("abcdefghijk", "exactly 12"),
            ("abcdefghijklm", "exactly 12"),
            ("abc-def_ghi!", "alphanumeric"),
            ("abcdéfghijkl", "alphanumeric"),
            ("abcdefghijk٣", "alphanumeric"),
            ("abcdef ghijk", "alphanumeric"),
        ] {
            let err = ApiKeyValue::parse("keyValue", input).unwrap_err();
            assert_eq!(err.field, "keyValue");
            assert!(err.reason.contains(needle), "{input:?}: {}", err.reason);
        }
    }

    #[test]
    fn debug_is_redacted() {
        let k = ApiKeyValue::parse("k", "SECRETsecret").unwrap();
        assert!(!format!("{k:?}").contains("SECRET"));
    }

    #[test]
    fn generated_keys_are_valid_and_cover_the_alphabet_evenly() {
        let mut rng = rand::rngs::OsRng;
        let mut counts = [0u32; 62];
        let draws = 5000;
        for _ in 0..draws {
            let k = ApiKeyValue::generate(&mut rng);
            assert!(ApiKeyValue::parse("k", k.expose()).is_ok());
            for b in k.as_bytes() {
                counts[ALPHABET.iter().position(|a| a == b).unwrap()] += 1;
            }
        }
        // 60,000 symbols: each expected ~967.7; chi-square with 61 d.o.f. stays far below 120
        // unless the distribution is skewed (a modulo bias over 256 would push it past 200).
        let expected = (draws * KEY_LEN as u32) as f64 / 62.0;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        assert!(chi2 < 120.0, "chi-square {chi2}");
        assert!(counts.iter().all(|&c| c > 0));
    }

    #[test]
    fn obfuscation_matches_the_specification_example() {
        let k = ApiKeyValue::parse("k", "ABCDEFGHIJKL").unwrap();
        assert_eq!(&k.obfuscate(1_700_000_123_456)[..], b"BCDEFGCIDJEK");
        assert!(k.matches_obfuscated(1_700_000_123_456, "BCDEFGCIDJEK"));
        assert!(!k.matches_obfuscated(1_700_000_123_457, "BCDEFGCIDJEK"));
        assert!(!k.matches_obfuscated(1_700_000_123_456, "BCDEFGCIDJE"));
        // n = 000001, r = 000000: leading zeros count as digits.
        assert_eq!(&k.obfuscate(1_700_000_000_001)[..], b"AAAAABCCCCCC");
    }

    #[test]
    fn constant_time_equality() {
        let a = ApiKeyValue::parse("k", "AAAAAAAAAAAA").unwrap();
        let b = ApiKeyValue::parse("k", "AAAAAAAAAAAB").unwrap();
        assert!(a.ct_eq(&a.clone()));
        assert!(!a.ct_eq(&b));
    }
}
