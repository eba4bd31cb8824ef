//! Org admins: login names, passwords and roles.

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::FieldError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Role {
    Full,
    ViewOnly,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Full => "FULL",
            Role::ViewOnly => "VIEW_ONLY",
        }
    }
    pub fn from_db(s: &str) -> Option<Self> {
        match s {
            "FULL" => Some(Role::Full),
            "VIEW_ONLY" => Some(Role::ViewOnly),
            _ => None,
        }
    }
}

/// A login name: 3 to 128 characters of letters, digits and `. _ @ + -` (e-mail addresses fit).
/// Compared case-insensitively, so it is stored lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LoginName(String);

impl LoginName {
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let len = input.chars().count();
        if !(3..=128).contains(&len) {
            return Err(FieldError::new(
                field,
                format!("must be 3 to 128 characters long; got {len}"),
            ));
        }
        if let Some(bad) = input
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._@+-".contains(*c)))
        {
            let shown = if bad.is_ascii_graphic() {
                format!("'{bad}'")
            } else {
                format!("U+{:04X}", bad as u32)
            };
            return Err(FieldError::new(
                field,
                format!("may hold only letters, digits and . _ @ + -; found {shown}"),
            ));
        }
        Ok(Self(input.to_ascii_lowercase()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How the name typed in a failed login is written to the audit log. A name that belongs
    /// to an admin is shown whole; any other may be a password typed into the wrong box, so
    /// only its first three characters are kept, and nothing of a name that is not plausible.
    pub fn shown_in_audit(typed: &str, known: bool) -> String {
        match Self::parse("loginName", typed) {
            Ok(name) if known => name.0,
            Ok(name) => {
                let head: String = name.0.chars().take(3).collect();
                format!("{head}…")
            }
            Err(_) => String::new(),
        }
    }
}

/// A password as given by a person: 12 to 256 bytes (OWASP ASVS length rule).
/// Its `Debug` is redacted and it is wiped on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Password(String);

impl Password {
    pub const MIN_LEN: usize = 12;
    pub const MAX_LEN: usize = 256;

    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let chars = input.chars().count();
        if chars < Self::MIN_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at least {} characters long", Self::MIN_LEN),
            ));
        }
        if input.len() > Self::MAX_LEN {
            return Err(FieldError::new(
                field,
                format!("must be at most {} bytes long", Self::MAX_LEN),
            ));
        }
        Ok(Self(input.to_owned()))
    }

    /// For login attempts: any string is checked against the stored hash, whatever its shape,
    /// so a malformed password fails the same way a wrong one does.
    pub fn for_login(input: &str) -> Self {
        Self(input.chars().take(Self::MAX_LEN).collect())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names() {
        assert_eq!(
            LoginName::parse("loginName", "Admin@Acme.com")
                .unwrap()
                .as_str(),
            "admin@acme.com"
        );
        assert!(
            LoginName::parse("loginName", "ab")
                .unwrap_err()
                .reason
                .contains("3 to 128")
        );
        assert!(
            LoginName::parse("loginName", "a b c")
                .unwrap_err()
                .reason
                .contains("found")
        );
        assert!(LoginName::parse("loginName", "ünï").is_err());
    }

    #[test]
    fn failed_login_names_in_the_audit_log() {
        assert_eq!(
            LoginName::shown_in_audit("Admin@Acme.com", true),
            "admin@acme.com"
        );
        assert_eq!(
            LoginName::shown_in_audit("correct-horse-battery-staple", false),
            "cor…"
        );
        assert_eq!(LoginName::shown_in_audit("a b", false), "");
    }

    #[test]
    fn passwords() {
        assert!(Password::parse("password", "short").is_err());
        assert!(Password::parse("password", &"x".repeat(257)).is_err());
        let p = Password::parse("password", "correct horse battery").unwrap();
        assert!(!format!("{p:?}").contains("horse"));
    }
}
