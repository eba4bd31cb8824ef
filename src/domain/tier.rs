//! The two tiers above an org (issue 15): the platform and its partners (service providers),
//! their named operators and what each role may do. No I/O.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ids::{OperatorId, PartnerId, TokenId};

/// An operator's role, the same three in either tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperatorRole {
    /// Everything in its tier, including operators and their tokens.
    Owner,
    /// Orgs, subscriptions, keys, limits; not operators or tokens of others.
    Operator,
    /// Reads everything in its scope, changes nothing.
    Auditor,
}

impl OperatorRole {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorRole::Owner => "OWNER",
            OperatorRole::Operator => "OPERATOR",
            OperatorRole::Auditor => "AUDITOR",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "OWNER" => Some(OperatorRole::Owner),
            "OPERATOR" => Some(OperatorRole::Operator),
            "AUDITOR" => Some(OperatorRole::Auditor),
            _ => None,
        }
    }
}

/// Which tier an operator (and what it does) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The platform operator: sees and may act on every org.
    Platform,
    /// A partner: sees only the orgs it owns.
    Partner(PartnerId),
}

impl Tier {
    /// `PLATFORM` or `PARTNER`, as stored and audited.
    pub fn label(self) -> &'static str {
        match self {
            Tier::Platform => "PLATFORM",
            Tier::Partner(_) => "PARTNER",
        }
    }

    pub fn partner(self) -> Option<PartnerId> {
        match self {
            Tier::Platform => None,
            Tier::Partner(p) => Some(p),
        }
    }

    /// Whether this tier may know that an org owned by `owner` (`None` = the platform's own)
    /// exists. What it may not know is answered 404, never 403.
    pub fn sees(self, owner: Option<PartnerId>) -> bool {
        match self {
            Tier::Platform => true,
            Tier::Partner(p) => owner == Some(p),
        }
    }
}

/// Who holds a provider-side credential: resolved from a bearer token or a provider console
/// session before any handler runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderPrincipal {
    /// The token used (for a console session: the token or operator login it came from).
    pub token_id: TokenId,
    /// `None` for the bootstrap token.
    pub operator: Option<OperatorRef>,
    pub role: OperatorRole,
    pub tier: Tier,
}

/// A named operator, as audits and notices name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorRef {
    pub id: OperatorId,
    pub login: String,
    pub name: String,
}

impl ProviderPrincipal {
    /// The bootstrap token: owner of the platform until retired.
    pub fn bootstrap(token_id: TokenId) -> Self {
        Self {
            token_id,
            operator: None,
            role: OperatorRole::Owner,
            tier: Tier::Platform,
        }
    }

    /// Orgs, subscriptions, keys, limits, admins.
    pub fn may_change_orgs(&self) -> bool {
        matches!(self.role, OperatorRole::Owner | OperatorRole::Operator)
    }

    /// Operators and tokens of its tier (an operator may always list and revoke its own
    /// tokens).
    pub fn may_manage_operators(&self) -> bool {
        self.role == OperatorRole::Owner
    }

    /// Partners themselves (create, edit, move orgs between them): the platform only.
    pub fn may_manage_partners(&self) -> bool {
        self.tier == Tier::Platform && self.role == OperatorRole::Owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partner_sees_only_its_own_orgs() {
        let p = Tier::Partner(PartnerId(1));
        assert!(p.sees(Some(PartnerId(1))));
        assert!(!p.sees(Some(PartnerId(2))));
        assert!(!p.sees(None));
        assert!(Tier::Platform.sees(None) && Tier::Platform.sees(Some(PartnerId(2))));
    }

    #[test]
    fn roles_parse_and_print() {
        for r in [
            OperatorRole::Owner,
            OperatorRole::Operator,
            OperatorRole::Auditor,
        ] {
            assert_eq!(OperatorRole::parse(r.as_str()), Some(r));
        }
        assert_eq!(OperatorRole::parse("owner"), None);
    }
}
