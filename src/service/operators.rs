//! Operators and their bearer tokens (issue 15): who may manage whom, the bootstrap token's
//! retirement, operator console sign-in, and the throttling of failed bearer tokens.
//!
//! Scope: a platform OWNER manages the platform's operators and any partner's; a partner's
//! OWNER only its own partner's. What a caller may not know exists (another partner's
//! operator or token, another partner) is `NotFound`, never a refusal; a role that does not
//! allow an operation is `Denied`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{FastMap, Services};
use crate::crypto::token::{random_token, token_hash};
use crate::domain::FieldError;
use crate::domain::admin::{LoginName, Password};
use crate::domain::audit::Actor;
use crate::domain::ids::{OperatorId, PartnerId, TokenId};
use crate::domain::tier::{OperatorRole, ProviderPrincipal, Tier};
use crate::domain::time::Millis;
use crate::store::operators::{
    NewOperator, NewToken, OperatorChange, OperatorRecord, TokenRecord, TokenScope,
};
use crate::store::{FailureCount, StoreError};

/// Why an operator or token operation did not happen.
#[derive(Debug)]
pub enum OpError {
    /// The caller's role does not allow it (what it takes).
    Denied(&'static str),
    Invalid(FieldError),
    Store(StoreError),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Store(e)
    }
}

impl From<FieldError> for OpError {
    fn from(e: FieldError) -> Self {
        OpError::Invalid(e)
    }
}

pub type OpResult<T> = Result<T, OpError>;

const MANAGE: &str = "managing operators takes the OWNER role";
const OTHERS_TOKENS: &str = "managing another operator's tokens takes the OWNER role";
const RETIRE: &str = "retiring the bootstrap token takes a platform OWNER";

/// What a create asks for, parsed.
pub struct OperatorInput {
    pub partner: Option<PartnerId>,
    pub login: LoginName,
    pub display_name: String,
    pub password: Password,
    pub role: OperatorRole,
}

/// A new token: its record and its value, shown once.
pub struct IssuedToken {
    pub record: TokenRecord,
    pub value: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("record", &self.record)
            .finish_non_exhaustive()
    }
}

/// A display name: 1 to 128 characters after trimming, no control characters.
pub fn parse_display_name(field: &str, raw: &str) -> Result<String, FieldError> {
    let s = raw.trim();
    let n = s.chars().count();
    if !(1..=128).contains(&n) {
        return Err(FieldError::new(
            field,
            format!("must be 1 to 128 characters long; got {n}"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

/// A token label: 1 to 100 characters after trimming, no control characters.
pub fn parse_label(field: &str, raw: &str) -> Result<String, FieldError> {
    let s = raw.trim();
    let n = s.chars().count();
    if !(1..=100).contains(&n) {
        return Err(FieldError::new(
            field,
            format!("must be 1 to 100 characters long; got {n}"),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(s.to_owned())
}

impl Services {
    fn actor_of(p: &ProviderPrincipal) -> Actor {
        Actor::Provider(p.clone())
    }

    /// The operator with this id if the caller's tier may know it exists.
    pub async fn operator_in_scope(
        &self,
        p: &ProviderPrincipal,
        id: OperatorId,
    ) -> OpResult<OperatorRecord> {
        match self.store.get_operator(id).await? {
            Some(op) if p.tier.sees(op.partner_id) => Ok(op),
            _ => Err(StoreError::NotFound("operator").into()),
        }
    }

    pub async fn create_operator(
        &self,
        p: &ProviderPrincipal,
        input: OperatorInput,
        client: Option<String>,
    ) -> OpResult<OperatorRecord> {
        let partner = match (p.tier, input.partner) {
            (Tier::Platform, Some(partner)) => {
                if !self.store.partner_exists(partner).await? {
                    return Err(StoreError::NotFound("partner").into());
                }
                Some(partner)
            }
            (Tier::Platform, None) => None,
            // A partner's operators are its own: the partner is implied.
            (Tier::Partner(own), None) => Some(own),
            (Tier::Partner(own), Some(partner)) if partner == own => Some(own),
            (Tier::Partner(_), Some(_)) => return Err(StoreError::NotFound("partner").into()),
        };
        if !p.may_manage_operators() {
            return Err(OpError::Denied(MANAGE));
        }
        let password_hash = self
            .hasher
            .hash(input.password)
            .await
            .map_err(StoreError::Internal)?;
        let op = NewOperator {
            partner,
            login: input.login,
            display_name: input.display_name,
            role: input.role,
            password_hash,
        };
        let ctx = self.ctx(Self::actor_of(p), client);
        Ok(self.store.create_operator(op, &ctx).await?)
    }

    /// Active operators in the caller's scope (every role may read them).
    pub async fn list_operators(&self, p: &ProviderPrincipal) -> OpResult<Vec<OperatorRecord>> {
        let filter = match p.tier {
            Tier::Platform => None,
            Tier::Partner(own) => Some(Some(own)),
        };
        Ok(self.store.list_operators(filter).await?)
    }

    /// An operator edits its own display name and password; an OWNER anyone's in scope, and
    /// roles.
    pub async fn update_operator(
        &self,
        p: &ProviderPrincipal,
        id: OperatorId,
        display_name: Option<String>,
        role: Option<OperatorRole>,
        password: Option<Password>,
        client: Option<String>,
    ) -> OpResult<OperatorRecord> {
        self.operator_in_scope(p, id).await?;
        let own = p.operator.as_ref().is_some_and(|o| o.id == id);
        if !p.may_manage_operators() && (!own || role.is_some()) {
            return Err(OpError::Denied(MANAGE));
        }
        let password_hash = match password {
            Some(pw) => Some(self.hasher.hash(pw).await.map_err(StoreError::Internal)?),
            None => None,
        };
        let change = OperatorChange {
            display_name,
            role,
            password_hash,
        };
        let ctx = self.ctx(Self::actor_of(p), client);
        Ok(self.store.update_operator(id, change, &ctx).await?)
    }

    pub async fn remove_operator(
        &self,
        p: &ProviderPrincipal,
        id: OperatorId,
        client: Option<String>,
    ) -> OpResult<()> {
        self.operator_in_scope(p, id).await?;
        if !p.may_manage_operators() {
            return Err(OpError::Denied(MANAGE));
        }
        let ctx = self.ctx(Self::actor_of(p), client);
        Ok(self.store.remove_operator(id, &ctx).await?)
    }

    /// May the caller manage the tokens of operator `id`? Its own always; others' as an
    /// OWNER in scope. Another tier's operator is `NotFound`.
    async fn may_manage_tokens_of(&self, p: &ProviderPrincipal, id: OperatorId) -> OpResult<()> {
        if p.operator.as_ref().is_some_and(|o| o.id == id) {
            return Ok(());
        }
        self.operator_in_scope(p, id).await?;
        if !p.may_manage_operators() {
            return Err(OpError::Denied(OTHERS_TOKENS));
        }
        Ok(())
    }

    /// A new personal token (256 random bits, stored as its SHA-256): for `operator`, or the
    /// caller itself.
    pub async fn create_operator_token(
        &self,
        p: &ProviderPrincipal,
        operator: Option<OperatorId>,
        label: String,
        expires_at: Option<Millis>,
        client: Option<String>,
    ) -> OpResult<IssuedToken> {
        let target = match operator.or(p.operator.as_ref().map(|o| o.id)) {
            Some(t) => t,
            None => {
                return Err(FieldError::new(
                    "operatorId",
                    "the bootstrap token has no operator of its own: name the operator",
                )
                .into());
            }
        };
        self.may_manage_tokens_of(p, target).await?;
        if let Some(at) = expires_at
            && at.0 <= self.clock.now().0
        {
            return Err(FieldError::new("expiresAt", "must be in the future").into());
        }
        let value = random_token();
        let t = NewToken {
            hash: token_hash(&value).to_string(),
            label,
            operator: Some(target),
            expires_at,
            console_signin: false,
        };
        let ctx = self.ctx(Self::actor_of(p), client);
        let record = self.store.create_token(t, true, &ctx).await?;
        Ok(IssuedToken { record, value })
    }

    /// The tokens the caller may see: all (the platform's OWNERs and AUDITORs), its partner's
    /// operators' (a partner's OWNERs and AUDITORs: an AUDITOR reads everything in scope), else
    /// its own.
    pub async fn list_operator_tokens(&self, p: &ProviderPrincipal) -> OpResult<Vec<TokenRecord>> {
        let scope = match (p.role, p.tier, &p.operator) {
            (OperatorRole::Owner | OperatorRole::Auditor, Tier::Platform, _) => TokenScope::All,
            (OperatorRole::Owner | OperatorRole::Auditor, Tier::Partner(own), _) => {
                TokenScope::Partner(own)
            }
            (_, _, Some(op)) => TokenScope::Operator(op.id),
            (_, _, None) => TokenScope::All,
        };
        Ok(self.store.list_tokens(scope).await?)
    }

    /// A token the caller may manage: its own, or (OWNER) one of an operator in scope; the
    /// bootstrap token only for a platform OWNER. What it may not know is `NotFound`.
    async fn token_in_scope(&self, p: &ProviderPrincipal, id: TokenId) -> OpResult<TokenRecord> {
        let not_found = || OpError::Store(StoreError::NotFound("token"));
        let token = self.store.get_token(id).await?.ok_or_else(not_found)?;
        match token.operator_id {
            None if p.tier == Tier::Platform => {
                if p.role != OperatorRole::Owner {
                    return Err(OpError::Denied(RETIRE));
                }
            }
            None => return Err(not_found()),
            Some(op) => {
                // A removed operator's tokens are revoked already; its tier still decides.
                if p.operator.as_ref().is_none_or(|o| o.id != op) {
                    match self.may_manage_tokens_of(p, op).await {
                        Err(OpError::Store(StoreError::NotFound(_))) => return Err(not_found()),
                        other => other?,
                    }
                }
            }
        }
        Ok(token)
    }

    /// A token's metadata, to whoever lists it (see [`Self::list_operator_tokens`]): an OWNER or
    /// AUDITOR any in its scope, an OPERATOR only its own. One it does not list is `NotFound`.
    pub async fn get_operator_token(
        &self,
        p: &ProviderPrincipal,
        id: TokenId,
    ) -> OpResult<TokenRecord> {
        match self.token_in_scope(p, id).await {
            // Reading a token's metadata is not managing it: an AUDITOR may.
            Err(OpError::Denied(_)) if p.role == OperatorRole::Auditor => Ok(self
                .store
                .get_token(id)
                .await?
                .ok_or(StoreError::NotFound("token"))?),
            Err(OpError::Denied(_)) => Err(OpError::Store(StoreError::NotFound("token"))),
            other => other,
        }
    }

    /// Revokes a token at once (every node reads tokens from the database on every request).
    /// Revoking the bootstrap token retires it.
    pub async fn revoke_operator_token(
        &self,
        p: &ProviderPrincipal,
        id: TokenId,
        client: Option<String>,
    ) -> OpResult<TokenRecord> {
        let token = self.token_in_scope(p, id).await?;
        if token.operator_id.is_none() {
            self.retire_bootstrap(p, client).await?;
            return Ok(self
                .store
                .get_token(id)
                .await?
                .ok_or(StoreError::NotFound("token"))?);
        }
        let ctx = self.ctx(Self::actor_of(p), client);
        Ok(self.store.revoke_token(id, &ctx).await?)
    }

    /// A new value for a live operator token; the old one is revoked in the same transaction.
    pub async fn rotate_operator_token(
        &self,
        p: &ProviderPrincipal,
        id: TokenId,
        client: Option<String>,
    ) -> OpResult<IssuedToken> {
        let token = self.token_in_scope(p, id).await?;
        if token.operator_id.is_none() {
            return Err(FieldError::new(
                "id",
                "the bootstrap token cannot be rotated: create an owner operator and retire it",
            )
            .into());
        }
        let value = random_token();
        let ctx = self.ctx(Self::actor_of(p), client);
        let record = self
            .store
            .rotate_token(id, &token_hash(&value), &ctx)
            .await?;
        Ok(IssuedToken { record, value })
    }

    /// Retires the bootstrap token for good: refused while the platform has no active OWNER.
    pub async fn retire_bootstrap(
        &self,
        p: &ProviderPrincipal,
        client: Option<String>,
    ) -> OpResult<u64> {
        if !(p.tier == Tier::Platform && p.role == OperatorRole::Owner) {
            return Err(OpError::Denied(RETIRE));
        }
        let ctx = self.ctx(Self::actor_of(p), client);
        Ok(self.store.retire_bootstrap(&ctx).await?)
    }

    /// An operator's console sign-in: its login name and password (argon2, a decoy hash for
    /// unknown names), then a token of its own for the session, unaudited (the sign-in is),
    /// expiring with the session's lifetime and revoked when the session ends sooner. `None`
    /// for wrong credentials.
    pub async fn operator_console_login(
        &self,
        login: &str,
        password: &str,
    ) -> crate::store::StoreResult<Option<ProviderPrincipal>> {
        let op = match LoginName::parse("loginName", login) {
            Ok(name) => self.store.find_operator_by_login(&name).await?,
            Err(_) => None,
        };
        let ok = self
            .hasher
            .verify(
                Password::for_login(password),
                op.as_ref().map(|o| o.password_hash.clone()),
            )
            .await;
        let Some(op) = op.filter(|_| ok) else {
            return Ok(None);
        };
        let now = self.clock.now();
        let t = NewToken {
            hash: token_hash(&random_token()).to_string(),
            label: "console sign-in".into(),
            operator: Some(op.id),
            expires_at: Some(Millis(
                now.0 + self.settings.console_max_lifetime_secs * 1000,
            )),
            console_signin: true,
        };
        let ctx = self.ctx(Actor::System, None);
        let record = self.store.create_token(t, false, &ctx).await?;
        self.store
            .find_provider_principal_by_id(record.id, now)
            .await
    }
}

impl Services {
    /// A wrong bearer token from `addr`: counted on this node and in the database (the
    /// `login_failures` counters, a scope of its own), and the count over all nodes taken as
    /// this node's. `Err(seconds)` when this attempt was beyond the bound. Across K nodes at
    /// most K - 1 attempts beyond it are looked at (each other node's first) before every node
    /// answers the address 429 unseen. When the database does not answer, the node's own
    /// count stands (the bound per node, as without other nodes).
    pub async fn bearer_failed(&self, addr: Option<&str>) -> Result<(), u64> {
        let now = self.clock.now();
        self.sweep_login_failures();
        let key = super::throttle::counted_address(addr);
        let scope = [super::throttle::bearer_scope(&key)];
        // One statement counts the failure and returns the count over all nodes.
        let counted = self
            .store
            .count_login_failure(&scope, BearerThrottle::WINDOW_MS, now)
            .await;
        let across_nodes = match counted {
            Ok(counts) => counts.into_iter().next(),
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "a wrong bearer token is counted on this node only: the database did not answer"
                );
                None
            }
        };
        self.bearer_throttle.after_failure(key, across_nodes, now)
    }
}

/// Failed bearer authentications per client address (issue 15): after `max_failures`
/// (default `MAX_FAILURES`) in a window of `WINDOW_MS` the address is answered 429 until the
/// window ends, whatever it presents. This is each node's view; every failure is also
/// counted in the database, and the count over all nodes becomes the view of the node that
/// counted it ([`Services::bearer_failed`]), so the bound holds across nodes. A request pays
/// one atomic load while no address has failed recently; otherwise a lock and a lookup.
pub struct BearerThrottle {
    max_failures: u32,
    any: AtomicBool,
    /// Counted address → (window start, failures).
    failures: Mutex<FastMap<String, (i64, u32)>>,
}

impl Default for BearerThrottle {
    fn default() -> Self {
        Self::new(Self::MAX_FAILURES)
    }
}

impl BearerThrottle {
    /// The default of `Config::bearer_max_failures`.
    pub const MAX_FAILURES: u32 = 20;

    pub fn new(max_failures: u32) -> Self {
        Self {
            max_failures,
            any: AtomicBool::new(false),
            failures: Mutex::new(FastMap::default()),
        }
    }

    pub const WINDOW_MS: i64 = 60_000;
    /// Addresses remembered at most; past it, ended windows are dropped first, then all.
    const MAX_ADDRESSES: usize = 100_000;

    /// Whether some address's failures are remembered (then `check` must look).
    pub fn active(&self) -> bool {
        self.any.load(Ordering::Relaxed)
    }

    /// `Err(seconds)` while `addr` is throttled at `now`.
    pub fn check(&self, addr: Option<&str>, now: Millis) -> Result<(), u64> {
        if !self.any.load(Ordering::Relaxed) {
            return Ok(());
        }
        let key = super::throttle::counted_address(addr);
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(&key) {
            Some(&(start, n)) if now.0 - start < Self::WINDOW_MS && n >= self.max_failures => {
                return Err(((start + Self::WINDOW_MS - now.0 + 999) / 1000).max(1) as u64);
            }
            Some(&(start, _)) if now.0 - start < Self::WINDOW_MS => {}
            // Its window ended: forgotten, and once no address is left the accepted path is
            // back to one atomic load.
            Some(_) => {
                map.remove(&key);
                if map.is_empty() {
                    self.any.store(false, Ordering::Relaxed);
                }
            }
            None => {}
        }
        Ok(())
    }

    /// A failure of the address counted as `key` at `now`. With `across_nodes`, the failures
    /// counted in the database by every node (this one included), that count becomes this
    /// node's view unless this node saw more in the same window; without it (the database did
    /// not answer), the failure counts here. `Err(seconds)` when the address now has more
    /// failures in its window than the bound: this attempt was beyond it (a node learns of
    /// the others' failures only with its own).
    pub fn after_failure(
        &self,
        key: String,
        across_nodes: Option<FailureCount>,
        now: Millis,
    ) -> Result<(), u64> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::MAX_ADDRESSES {
            map.retain(|_, (start, _)| now.0 - *start < Self::WINDOW_MS);
            if map.len() >= Self::MAX_ADDRESSES {
                map.clear();
            }
        }
        let entry = map.entry(key).or_insert((now.0, 0));
        match across_nodes {
            Some(c) => {
                let failures = u32::try_from(c.failures).unwrap_or(u32::MAX);
                if c.window_start.0 > entry.0 || failures >= entry.1 {
                    *entry = (c.window_start.0, failures);
                }
            }
            None => {
                if now.0 - entry.0 >= Self::WINDOW_MS {
                    *entry = (now.0, 0);
                }
                entry.1 = entry.1.saturating_add(1);
            }
        }
        self.any.store(true, Ordering::Relaxed);
        let (start, n) = *entry;
        if now.0 - start < Self::WINDOW_MS && n > self.max_failures {
            return Err(((start + Self::WINDOW_MS - now.0 + 999) / 1000).max(1) as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_throttled_after_its_failures_until_the_window_ends() {
        let t = BearerThrottle::default();
        let a = Some("192.0.2.1");
        let now = Millis(1_000_000);
        for _ in 0..BearerThrottle::MAX_FAILURES {
            assert!(t.check(a, now).is_ok());
            let _ = t.after_failure(crate::service::throttle::counted_address(a), None, now);
        }
        assert_eq!(t.check(a, now), Err(60));
        // Another address is not.
        assert!(t.check(Some("192.0.2.2"), now).is_ok());
        assert!(
            t.check(a, Millis(now.0 + BearerThrottle::WINDOW_MS))
                .is_ok()
        );
        // Forgotten: back to the one atomic load.
        assert!(!t.active());
    }

    #[test]
    fn labels_and_names_are_checked() {
        assert!(parse_label("label", "  ").is_err());
        assert!(parse_label("label", "a\nb").is_err());
        assert_eq!(parse_label("label", " ci ").unwrap(), "ci");
        assert!(parse_display_name("displayName", &"x".repeat(129)).is_err());
    }
}
