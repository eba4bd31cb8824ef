//! An admin's change to the org's key, decided against the state read inside the transaction.

use super::admin::Role;
use super::key::ApiKeyValue;
use super::org::{KeyPresence, SubscriptionState};
use super::policy::{Operation, Refusal, authorize};

/// What an admin asked for. New values are made (and validated) before the transaction.
#[derive(Debug)]
pub enum KeyChange {
    Add(ApiKeyValue),
    Edit(ApiKeyValue),
    Regenerate(ApiKeyValue),
    Delete,
}

impl KeyChange {
    pub fn operation(&self) -> Operation {
        match self {
            KeyChange::Add(_) => Operation::Add,
            KeyChange::Edit(_) => Operation::Edit,
            KeyChange::Regenerate(_) => Operation::Regenerate,
            KeyChange::Delete => Operation::Delete,
        }
    }

    /// The value the org holds after the change; `None` after a delete.
    pub fn new_value(&self) -> Option<&ApiKeyValue> {
        match self {
            KeyChange::Add(v) | KeyChange::Edit(v) | KeyChange::Regenerate(v) => Some(v),
            KeyChange::Delete => None,
        }
    }
}

/// Decides whether `change` may happen given the state read inside the change's transaction.
/// `current` is the org's present key value, if any.
pub fn decide(
    change: &KeyChange,
    role: Role,
    subscription: SubscriptionState,
    presence: &KeyPresence,
    current: Option<&ApiKeyValue>,
) -> Result<(), Refusal> {
    authorize(change.operation(), role, subscription, presence)?;
    match (change, current) {
        (KeyChange::Edit(new), Some(cur)) if new.ct_eq(cur) => Err(Refusal::SameAsCurrentKey),
        // A regenerated key equal to the old one (odds 62^-12) would leave the old key valid.
        (KeyChange::Regenerate(new), Some(cur)) if new.ct_eq(cur) => Err(Refusal::SameAsCurrentKey),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> ApiKeyValue {
        ApiKeyValue::parse("k", s).unwrap()
    }

    #[test]
    fn edit_to_same_value_is_refused() {
        let cur = k("AAAAAAAAAAAA");
        let r = decide(
            &KeyChange::Edit(k("AAAAAAAAAAAA")),
            Role::Full,
            SubscriptionState::Active,
            &KeyPresence::Enabled,
            Some(&cur),
        );
        assert_eq!(r, Err(Refusal::SameAsCurrentKey));
        let r = decide(
            &KeyChange::Edit(k("BBBBBBBBBBBB")),
            Role::Full,
            SubscriptionState::Active,
            &KeyPresence::Enabled,
            Some(&cur),
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn role_is_checked_before_sameness() {
        let cur = k("AAAAAAAAAAAA");
        let r = decide(
            &KeyChange::Edit(k("AAAAAAAAAAAA")),
            Role::ViewOnly,
            SubscriptionState::Active,
            &KeyPresence::Enabled,
            Some(&cur),
        );
        assert_eq!(r, Err(Refusal::NotAuthorized));
    }
}
