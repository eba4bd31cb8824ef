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

// ------------------------------------------------------------------ partners (issue 15)

use super::FieldError;

/// A partner's display name: 1 to 200 printable characters, trimmed; unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartnerName(String);

impl PartnerName {
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let t = input.trim();
        let len = t.chars().count();
        if !(1..=200).contains(&len) {
            return Err(FieldError::new(
                field,
                format!("must be 1 to 200 characters long; got {len}"),
            ));
        }
        if t.chars().any(char::is_control) {
            return Err(FieldError::new(
                field,
                "must not contain control characters",
            ));
        }
        Ok(Self(t.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An absolute `http` or `https` URL with a host and no credentials, at most 2,048
/// characters: an org's cloud service base URL (PRODUCT.md §3), a support URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);

impl HttpUrl {
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let t = input.trim();
        let bad = |why: &str| Err(FieldError::new(field, why.to_owned()));
        if t.is_empty() || t.len() > 2048 {
            return bad("must be an absolute http(s) URL of at most 2048 characters");
        }
        if t.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return bad("must not contain spaces or control characters");
        }
        let Ok(uri) = t.parse::<axum::http::Uri>() else {
            return bad("is not a valid URL");
        };
        match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
            _ => return bad("must be an absolute URL starting with http:// or https://"),
        }
        let Some(auth) = uri.authority() else {
            return bad("must name a host");
        };
        if auth.as_str().contains('@') {
            return bad("must not carry a user name or password");
        }
        if auth.host().is_empty() {
            return bad("must name a host");
        }
        // Kept as given but without a trailing slash, so `…/api/v1` can follow it.
        Ok(Self(t.trim_end_matches('/').to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A support e-mail address: `local@domain`, printable, at most 254 characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupportEmail(String);

impl SupportEmail {
    pub fn parse(field: &str, input: &str) -> Result<Self, FieldError> {
        let t = input.trim();
        let ok = t.len() <= 254
            && !t.chars().any(|c| c.is_control() || c.is_whitespace())
            && t.split_once('@').is_some_and(|(l, d)| {
                !l.is_empty() && !d.is_empty() && !d.contains('@') && d.contains('.')
            });
        if !ok {
            return Err(FieldError::new(
                field,
                "must be an e-mail address (name@domain), at most 254 characters",
            ));
        }
        Ok(Self(t.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Who disabled a key, as recorded with it: the tier (`None` for R9's automatic
/// disablement and for disablements made before tiers existed), the partner, the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DisabledBy {
    pub tier: Option<Tier>,
    pub operator: Option<OperatorId>,
}

impl DisabledBy {
    pub fn of(p: &ProviderPrincipal) -> Self {
        Self {
            tier: Some(p.tier),
            operator: p.operator.as_ref().map(|o| o.id),
        }
    }

    /// Only the tier that disabled a key, or the platform, re-enables it: a partner cannot
    /// re-enable a platform disablement. R9's automatic disablement (no tier) may be
    /// re-enabled by the owning partner or the platform (whoever sees the org).
    pub fn may_enable(&self, by: Tier) -> bool {
        match (self.tier, by) {
            (_, Tier::Platform) => true,
            (Some(Tier::Platform), Tier::Partner(_)) => false,
            (Some(Tier::Partner(p)), Tier::Partner(q)) => p == q,
            (None, Tier::Partner(_)) => true,
        }
    }
}

#[cfg(test)]
mod partner_tests {
    use super::*;

    #[test]
    fn urls_are_absolute_http() {
        assert_eq!(
            HttpUrl::parse("u", " https://api.example.com/ ")
                .unwrap()
                .as_str(),
            "https://api.example.com"
        );
        assert!(HttpUrl::parse("u", "http://h:8080/x").is_ok());
        for bad in [
            "",
            "ftp://h",
            "/relative",
            "example.com",
            "https://",
            "https://u:p@h",
            "https://h/a b",
            "javascript:alert(1)",
        ] {
            assert!(HttpUrl::parse("u", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_that_tier_or_the_platform_re_enables() {
        let (p, q) = (Tier::Partner(PartnerId(1)), Tier::Partner(PartnerId(2)));
        let by = |t| DisabledBy {
            tier: t,
            operator: None,
        };
        assert!(!by(Some(Tier::Platform)).may_enable(p));
        assert!(by(Some(Tier::Platform)).may_enable(Tier::Platform));
        assert!(by(Some(p)).may_enable(p) && by(Some(p)).may_enable(Tier::Platform));
        assert!(!by(Some(p)).may_enable(q));
        assert!(by(None).may_enable(p) && by(None).may_enable(Tier::Platform));
    }

    #[test]
    fn emails() {
        assert!(SupportEmail::parse("e", "help@p.example").is_ok());
        for bad in ["", "a", "a@b", "@b.c", "a@@b.c", "a b@c.d"] {
            assert!(SupportEmail::parse("e", bad).is_err(), "{bad}");
        }
    }
}
