//! Who did what, for the append-only audit log (R11).

use serde::Serialize;

use super::ids::AdminId;
use super::tier::ProviderPrincipal;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Actor {
    /// A provider-side credential: the token used, its operator (none for the bootstrap
    /// token), role and tier.
    Provider(ProviderPrincipal),
    Admin {
        id: AdminId,
        login: String,
    },
    /// An automatic action (R9).
    System,
    /// A login attempt under a name that may not exist.
    Anonymous {
        login: String,
    },
}

/// How the audit names the bootstrap token's holder.
pub const BOOTSTRAP_NAME: &str = "bootstrap token";

impl Actor {
    /// `PLATFORM` / `PARTNER` for a provider-side actor, else `None`.
    pub fn tier(&self) -> Option<&'static str> {
        match self {
            Actor::Provider(p) => Some(p.tier.label()),
            _ => None,
        }
    }
    pub fn partner_id(&self) -> Option<i64> {
        match self {
            Actor::Provider(p) => p.tier.partner().map(|p| p.0),
            _ => None,
        }
    }
    pub fn operator_id(&self) -> Option<i64> {
        match self {
            Actor::Provider(p) => p.operator.as_ref().map(|o| o.id.0),
            _ => None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Actor::Provider { .. } => "PROVIDER",
            Actor::Admin { .. } => "ADMIN",
            Actor::System => "SYSTEM",
            Actor::Anonymous { .. } => "ANONYMOUS",
        }
    }
    pub fn id(&self) -> i64 {
        match self {
            Actor::Provider(p) => p.token_id.0,
            Actor::Admin { id, .. } => id.0,
            Actor::System | Actor::Anonymous { .. } => 0,
        }
    }
    pub fn name(&self) -> String {
        match self {
            Actor::Provider(p) => match &p.operator {
                Some(op) => op.name.clone(),
                None => BOOTSTRAP_NAME.into(),
            },
            Actor::Admin { login, .. } | Actor::Anonymous { login } => login.clone(),
            Actor::System => "system".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuditAction {
    OrgCreate,
    SubscriptionUpdate,
    LimitsUpdate,
    AdminAdd,
    AdminRemove,
    KeyProvision,
    KeyAdd,
    KeyEdit,
    KeyRegenerate,
    KeyDelete,
    KeyReveal,
    KeyDisable,
    KeyEnable,
    LoginSuccess,
    LoginFailure,
    Logout,
    /// An API login with the right password and a wrong key: someone holds the password.
    KeyGuess,
    /// Those failures reached the admin's budget: API logins locked.
    KeyGuessLock,
    /// A FULL admin or the provider cleared the budget and the lock.
    KeyGuessClear,
    /// Operators and their tokens (issue 15); audited with no org.
    OperatorCreate,
    OperatorUpdate,
    OperatorRemove,
    TokenCreate,
    TokenRevoke,
    TokenRotate,
    /// The bootstrap token was retired (revoked for good).
    BootstrapRetire,
    /// Partners (issue 15): created, edited; an org given to another owner; its base URL.
    PartnerCreate,
    PartnerUpdate,
    OrgMove,
    BaseUrlUpdate,
}

impl AuditAction {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::OrgCreate => "ORG_CREATE",
            AuditAction::SubscriptionUpdate => "SUBSCRIPTION_UPDATE",
            AuditAction::LimitsUpdate => "LIMITS_UPDATE",
            AuditAction::AdminAdd => "ADMIN_ADD",
            AuditAction::AdminRemove => "ADMIN_REMOVE",
            AuditAction::KeyProvision => "KEY_PROVISION",
            AuditAction::KeyAdd => "KEY_ADD",
            AuditAction::KeyEdit => "KEY_EDIT",
            AuditAction::KeyRegenerate => "KEY_REGENERATE",
            AuditAction::KeyDelete => "KEY_DELETE",
            AuditAction::KeyReveal => "KEY_REVEAL",
            AuditAction::KeyDisable => "KEY_DISABLE",
            AuditAction::KeyEnable => "KEY_ENABLE",
            AuditAction::LoginSuccess => "LOGIN_SUCCESS",
            AuditAction::LoginFailure => "LOGIN_FAILURE",
            AuditAction::Logout => "LOGOUT",
            AuditAction::KeyGuess => "API_KEY_GUESS",
            AuditAction::KeyGuessLock => "API_KEY_GUESS_LOCK",
            AuditAction::KeyGuessClear => "API_KEY_GUESS_CLEAR",
            AuditAction::OperatorCreate => "OPERATOR_CREATE",
            AuditAction::OperatorUpdate => "OPERATOR_UPDATE",
            AuditAction::OperatorRemove => "OPERATOR_REMOVE",
            AuditAction::TokenCreate => "TOKEN_CREATE",
            AuditAction::TokenRevoke => "TOKEN_REVOKE",
            AuditAction::TokenRotate => "TOKEN_ROTATE",
            AuditAction::BootstrapRetire => "BOOTSTRAP_RETIRE",
            AuditAction::PartnerCreate => "PARTNER_CREATE",
            AuditAction::PartnerUpdate => "PARTNER_UPDATE",
            AuditAction::OrgMove => "ORG_MOVE",
            AuditAction::BaseUrlUpdate => "BASE_URL_UPDATE",
        }
    }
}
