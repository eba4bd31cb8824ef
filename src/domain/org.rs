//! Organizations, their API subscription and the state of their key.

use serde::{Deserialize, Serialize};

use super::FieldError;
use super::time::Millis;

/// An org's display name: 1 to 200 printable characters, trimmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrgName(String);

impl OrgName {
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let trimmed = input.trim();
        let len = trimmed.chars().count();
        if !(1..=200).contains(&len) {
            return Err(FieldError::new(
                field,
                format!("must be 1 to 200 characters long; got {len}"),
            ));
        }
        if trimmed.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(trimmed.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The org's API subscription as the provider set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subscription {
    pub enabled: bool,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionState {
    /// Never enabled, or turned off by the provider (R10a).
    NotEnabled,
    Active,
    /// Enabled but past its expiry (R10).
    Expired,
}

impl Subscription {
    pub fn state_at(&self, now: Millis) -> SubscriptionState {
        match (self.enabled, self.expires_at) {
            (false, _) => SubscriptionState::NotEnabled,
            (true, Some(exp)) if now.as_secs() >= exp => SubscriptionState::Expired,
            (true, _) => SubscriptionState::Active,
        }
    }
}

impl SubscriptionState {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionState::NotEnabled => "NOT_ENABLED",
            SubscriptionState::Active => "ACTIVE",
            SubscriptionState::Expired => "EXPIRED",
        }
    }
}

/// Why the provider (or the system, R9) disabled a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DisableReason {
    CallThresholdExceeded,
    TermsViolation,
    Other,
}

impl DisableReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DisableReason::CallThresholdExceeded => "CALL_THRESHOLD_EXCEEDED",
            DisableReason::TermsViolation => "TERMS_VIOLATION",
            DisableReason::Other => "OTHER",
        }
    }
    pub fn from_db(s: &str) -> Option<Self> {
        match s {
            "CALL_THRESHOLD_EXCEEDED" => Some(Self::CallThresholdExceeded),
            "TERMS_VIOLATION" => Some(Self::TermsViolation),
            "OTHER" => Some(Self::Other),
            _ => None,
        }
    }
}

/// A provider's disable order: the reason, and a note (required for `OTHER`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disablement {
    pub reason: DisableReason,
    pub note: Option<String>,
}

impl Disablement {
    pub fn parse(reason: DisableReason, note: Option<&str>) -> Result<Self, FieldError> {
        let note = note.map(str::trim).filter(|n| !n.is_empty());
        if let Some(n) = note {
            if n.chars().count() > 500 {
                return Err(FieldError::new(
                    "note",
                    "must be at most 500 characters long",
                ));
            }
            if n.chars().any(char::is_control) {
                return Err(FieldError::new(
                    "note",
                    "must not contain control characters",
                ));
            }
        }
        if reason == DisableReason::Other && note.is_none() {
            return Err(FieldError::new("note", "is required when reason is OTHER"));
        }
        Ok(Self {
            reason,
            note: note.map(str::to_owned),
        })
    }
}

/// What the org has in the way of a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPresence {
    Absent,
    Enabled,
    Disabled(Disablement),
}

/// The status shown to people and clients: the key's own state combined with the subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatus {
    pub enabled: bool,
    /// `None` when enabled; otherwise the reason code shown beside `Disabled`.
    pub reason: Option<&'static str>,
    pub note: Option<String>,
}

impl KeyStatus {
    /// A provider's disablement outranks the subscription: it is what must be lifted first.
    pub fn of(presence: &KeyPresence, subscription: SubscriptionState) -> Self {
        match (presence, subscription) {
            (KeyPresence::Disabled(d), _) => KeyStatus {
                enabled: false,
                reason: Some(d.reason.as_str()),
                note: d.note.clone(),
            },
            (_, SubscriptionState::Expired) => KeyStatus {
                enabled: false,
                reason: Some("SUBSCRIPTION_EXPIRED"),
                note: None,
            },
            (_, SubscriptionState::NotEnabled) => KeyStatus {
                enabled: false,
                reason: Some("NO_API_SUBSCRIPTION"),
                note: None,
            },
            _ => KeyStatus {
                enabled: true,
                reason: None,
                note: None,
            },
        }
    }
}

/// The provider's call threshold (R9): at most `calls` per `period_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallThreshold {
    pub calls: i64,
    pub period_seconds: i64,
}

impl CallThreshold {
    pub fn validate(self, field: &str) -> Result<Self, FieldError> {
        if self.calls < 1 {
            return Err(FieldError::new(
                format!("{field}.calls"),
                "must be at least 1",
            ));
        }
        if !(1..=31 * 86_400).contains(&self.period_seconds) {
            return Err(FieldError::new(
                format!("{field}.periodSeconds"),
                "must be from 1 to 2678400 (31 days)",
            ));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscription_states() {
        let now = Millis::from_secs(1_000);
        assert_eq!(
            Subscription {
                enabled: false,
                expires_at: None
            }
            .state_at(now),
            SubscriptionState::NotEnabled
        );
        assert_eq!(
            Subscription {
                enabled: true,
                expires_at: None
            }
            .state_at(now),
            SubscriptionState::Active
        );
        assert_eq!(
            Subscription {
                enabled: true,
                expires_at: Some(1_001)
            }
            .state_at(now),
            SubscriptionState::Active
        );
        assert_eq!(
            Subscription {
                enabled: true,
                expires_at: Some(1_000)
            }
            .state_at(now),
            SubscriptionState::Expired
        );
    }

    #[test]
    fn status_precedence() {
        let d = Disablement::parse(DisableReason::TermsViolation, None).unwrap();
        let s = KeyStatus::of(&KeyPresence::Disabled(d), SubscriptionState::Expired);
        assert_eq!(s.reason, Some("TERMS_VIOLATION"));
        let s = KeyStatus::of(&KeyPresence::Enabled, SubscriptionState::Expired);
        assert_eq!(s.reason, Some("SUBSCRIPTION_EXPIRED"));
        assert!(KeyStatus::of(&KeyPresence::Enabled, SubscriptionState::Active).enabled);
    }

    #[test]
    fn other_needs_a_note() {
        assert!(Disablement::parse(DisableReason::Other, Some("  ")).is_err());
        assert!(Disablement::parse(DisableReason::Other, Some("abuse")).is_ok());
    }
}
