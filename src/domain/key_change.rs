//! An admin's change to the org's key, decided against the state read inside the transaction.

use rand::{CryptoRng, RngCore};

use super::admin::Role;
use super::key::ApiKeyValue;
use super::login_guard::distinguishable;
use super::org::{KeyPresence, SubscriptionState};
use super::policy::{Operation, Refusal, authorize};

/// What an admin asked for. New values are made (and validated) before the transaction.
#[derive(Debug, Clone)]
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
/// `current` is the org's present key value, if any; `replaced` the keys it replaced
/// recently. A new value must be distinguishable from all of them at every login timestamp
/// (`login_guard::distinguishable`), or a replaced key would still log in: a random value
/// (add, regenerate) is drawn again with `rng` until it is, an edit to one that is not is
/// refused.
pub fn decide<R: RngCore + CryptoRng>(
    change: &mut KeyChange,
    role: Role,
    subscription: SubscriptionState,
    presence: &KeyPresence,
    current: Option<&ApiKeyValue>,
    replaced: &[ApiKeyValue],
    rng: &mut R,
) -> Result<(), Refusal> {
    authorize(change.operation(), role, subscription, presence)?;
    let clashes = |new: &ApiKeyValue| {
        current
            .into_iter()
            .chain(replaced)
            .any(|old| !distinguishable(old, new))
    };
    match change {
        KeyChange::Edit(new) => {
            if current.is_some_and(|cur| new.ct_eq(cur)) {
                return Err(Refusal::SameAsCurrentKey);
            }
            let near_current = current.is_some_and(|cur| !distinguishable(cur, new));
            if near_current || clashes(new) {
                return Err(Refusal::TooSimilar {
                    previous: !near_current,
                });
            }
        }
        KeyChange::Add(new) | KeyChange::Regenerate(new) => {
            while clashes(new) {
                *new = ApiKeyValue::generate(rng);
            }
        }
        KeyChange::Delete => {}
    }
    Ok(())
}

/// A provisioned key (R2), drawn again until it is distinguishable from every key the org
/// replaced.
pub fn fresh_provision<R: RngCore + CryptoRng>(
    mut value: ApiKeyValue,
    replaced: &[ApiKeyValue],
    rng: &mut R,
) -> ApiKeyValue {
    while replaced.iter().any(|old| !distinguishable(old, &value)) {
        value = ApiKeyValue::generate(rng);
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn k(s: &str) -> ApiKeyValue {
        ApiKeyValue::parse("k", s).unwrap()
    }

    #[test]
    fn edit_to_same_value_is_refused() {
        let cur = k("AAAAAAAAAAAA");
        let r = decide(
            &mut KeyChange::Edit(k("AAAAAAAAAAAA")),
            Role::Full,
            SubscriptionState::Active,
            &KeyPresence::Enabled,
            Some(&cur),
            &[],
            &mut OsRng,
        );
        assert_eq!(r, Err(Refusal::SameAsCurrentKey));
        let r = decide(
            &mut KeyChange::Edit(k("BBBBBBBBBBBB")),
            Role::Full,
            SubscriptionState::Active,
            &KeyPresence::Enabled,
            Some(&cur),
            &[],
            &mut OsRng,
        );
        assert_eq!(r, Ok(()));
    }

    #[test]
    fn role_is_checked_before_sameness() {
        let cur = k("AAAAAAAAAAAA");
        let r = decide(
            &mut KeyChange::Edit(k("AAAAAAAAAAAA")),
            Role::ViewOnly,
            SubscriptionState::Active,
            &KeyPresence::Enabled,
            Some(&cur),
            &[],
            &mut OsRng,
        );
        assert_eq!(r, Err(Refusal::NotAuthorized));
    }

    #[test]
    fn an_edit_near_the_current_or_a_replaced_key_is_refused() {
        let cur = k("ABCDEFGHIJKL");
        let old = k("MNOPQRSTUVWX");
        let decide_edit = |v: &str| {
            decide(
                &mut KeyChange::Edit(k(v)),
                Role::Full,
                SubscriptionState::Active,
                &KeyPresence::Enabled,
                Some(&cur),
                std::slice::from_ref(&old),
                &mut OsRng,
            )
        };
        // Same as the current key at positions 0, 2 and 3: residue 200000 reads only those.
        assert_eq!(
            decide_edit("AxCDxxxxxxxx"),
            Err(Refusal::TooSimilar { previous: false })
        );
        assert_eq!(
            decide_edit("MNOPQRSTUVWX"),
            Err(Refusal::TooSimilar { previous: true })
        );
        assert_eq!(decide_edit("abcdefghijkl"), Ok(()));
    }

    /// After a regenerate or an add, the value decided is distinguishable from the current key
    /// and every replaced one, even when the first draw was not.
    #[test]
    fn random_values_are_drawn_again_until_distinguishable() {
        let cur = k("ABCDEFGHIJKL");
        let old = k("MNOPQRSTUVWX");
        for first in ["ABCDEFGHIJKL", "AxCDxxxxxxxx", "MNOPQRSTUVWX"] {
            let mut change = KeyChange::Regenerate(k(first));
            decide(
                &mut change,
                Role::Full,
                SubscriptionState::Active,
                &KeyPresence::Enabled,
                Some(&cur),
                std::slice::from_ref(&old),
                &mut OsRng,
            )
            .unwrap();
            let new = change.new_value().unwrap();
            assert!(distinguishable(&cur, new) && distinguishable(&old, new));
        }
        let v = fresh_provision(k("MNOPQRSTUVWX"), std::slice::from_ref(&old), &mut OsRng);
        assert!(distinguishable(&old, &v));
    }
}
