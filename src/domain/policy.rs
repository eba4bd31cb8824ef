//! The one table of which key operation is allowed in which state for which role.

use super::admin::Role;
use super::org::{Disablement, KeyPresence, SubscriptionState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    View,
    Reveal,
    Add,
    Edit,
    Regenerate,
    Delete,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::View,
        Operation::Reveal,
        Operation::Add,
        Operation::Edit,
        Operation::Regenerate,
        Operation::Delete,
    ];

    pub fn is_change(self) -> bool {
        !matches!(self, Operation::View | Operation::Reveal)
    }
}

/// Why an operation is refused. Each maps to one error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    NotAuthorized,
    NoApiSubscription,
    SubscriptionExpired,
    KeyDisabled(Disablement),
    KeyAlreadyExists,
    NoKey,
    SameAsCurrentKey,
    /// An edit to a value that some login timestamp cannot tell from the current key (or,
    /// with `previous`, from a key the org replaced recently): the old key would log in there.
    TooSimilar {
        previous: bool,
    },
    /// A provider operator's role does not allow the operation (issue 15): `what` says which.
    OperatorRole {
        role: crate::domain::tier::OperatorRole,
        what: &'static str,
    },
    /// A partner asked to re-enable a key the platform disabled.
    DisabledByPlatform,
}

/// Checks, in this order: role, subscription, provider disablement, presence of a key.
/// The order is what a person needs to hear first: a view-only admin cannot change anything
/// whatever the state, and a lapsed subscription outranks anything the admin could fix.
pub fn authorize(
    op: Operation,
    role: Role,
    subscription: SubscriptionState,
    key: &KeyPresence,
) -> Result<(), Refusal> {
    if !op.is_change() {
        return match (op, key) {
            (Operation::Reveal, KeyPresence::Absent) => Err(Refusal::NoKey),
            _ => Ok(()),
        };
    }
    if role == Role::ViewOnly {
        return Err(Refusal::NotAuthorized);
    }
    match subscription {
        SubscriptionState::NotEnabled => return Err(Refusal::NoApiSubscription),
        SubscriptionState::Expired => return Err(Refusal::SubscriptionExpired),
        SubscriptionState::Active => {}
    }
    match (op, key) {
        (_, KeyPresence::Disabled(d)) => Err(Refusal::KeyDisabled(d.clone())),
        (Operation::Add, KeyPresence::Enabled) => Err(Refusal::KeyAlreadyExists),
        (Operation::Add, KeyPresence::Absent) => Ok(()),
        (_, KeyPresence::Absent) => Err(Refusal::NoKey),
        (_, KeyPresence::Enabled) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::org::DisableReason;
    use Operation::*;

    fn disabled() -> KeyPresence {
        KeyPresence::Disabled(Disablement {
            reason: DisableReason::TermsViolation,
            note: None,
        })
    }

    /// Every cell of the table: 6 operations x 2 roles x 3 subscription states x 3 key states.
    #[test]
    fn whole_table() {
        use SubscriptionState::*;
        let roles = [Role::Full, Role::ViewOnly];
        let subs = [NotEnabled, Active, Expired];
        let keys = [KeyPresence::Absent, KeyPresence::Enabled, disabled()];
        let mut cells = 0;
        for op in Operation::ALL {
            for role in roles {
                for sub in subs {
                    for key in &keys {
                        cells += 1;
                        let got = authorize(op, role, sub, key);
                        let want = expected(op, role, sub, key);
                        assert_eq!(got, want, "{op:?} {role:?} {sub:?} {key:?}");
                    }
                }
            }
        }
        assert_eq!(cells, 108);
    }

    /// The table written out as the product rules state it, independently of `authorize`.
    fn expected(
        op: Operation,
        role: Role,
        sub: SubscriptionState,
        key: &KeyPresence,
    ) -> Result<(), Refusal> {
        let has_key = !matches!(key, KeyPresence::Absent);
        match op {
            View => Ok(()),
            Reveal if has_key => Ok(()),
            Reveal => Err(Refusal::NoKey),
            _ if role == Role::ViewOnly => Err(Refusal::NotAuthorized),
            _ if sub == SubscriptionState::NotEnabled => Err(Refusal::NoApiSubscription),
            _ if sub == SubscriptionState::Expired => Err(Refusal::SubscriptionExpired),
            _ if matches!(key, KeyPresence::Disabled(_)) => {
                Err(Refusal::KeyDisabled(Disablement {
                    reason: DisableReason::TermsViolation,
                    note: None,
                }))
            }
            Add if has_key => Err(Refusal::KeyAlreadyExists),
            Add => Ok(()),
            _ if !has_key => Err(Refusal::NoKey),
            _ => Ok(()),
        }
    }

    #[test]
    fn spot_checks() {
        use SubscriptionState::*;
        assert_eq!(
            authorize(Add, Role::Full, Active, &KeyPresence::Enabled),
            Err(Refusal::KeyAlreadyExists)
        );
        assert_eq!(
            authorize(Edit, Role::Full, Expired, &KeyPresence::Enabled),
            Err(Refusal::SubscriptionExpired)
        );
        assert_eq!(
            authorize(Delete, Role::ViewOnly, Active, &KeyPresence::Enabled),
            Err(Refusal::NotAuthorized)
        );
        assert!(matches!(
            authorize(Regenerate, Role::Full, Active, &disabled()),
            Err(Refusal::KeyDisabled(_))
        ));
        assert_eq!(
            authorize(View, Role::ViewOnly, Expired, &disabled()),
            Ok(())
        );
    }
}
