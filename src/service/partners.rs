//! Partners and the scoping of every provider operation by tier and role (issue 15): the one
//! place that decides whether a provider principal may know an org (or partner) exists and
//! may change it. Handlers of the provider API and the provider console call these and
//! nothing else to load what a path names.

use super::Services;
use crate::domain::audit::Actor;
use crate::domain::ids::{OrgId, PartnerId};
use crate::domain::policy::Refusal;
use crate::domain::tier::{HttpUrl, ProviderPrincipal, Tier};
use crate::store::{OrgRecord, Page, PartnerInput, PartnerRecord, StoreError, StoreResult};

/// What a principal means to do with what it loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// Orgs, subscriptions, keys, limits, admins: OWNER and OPERATOR.
    Change,
}

fn refuse(who: &ProviderPrincipal, what: &'static str) -> StoreError {
    StoreError::Refused(Refusal::OperatorRole {
        role: who.role,
        what,
    })
}

impl Services {
    /// Refused (403) unless `who` may change orgs: AUDITORs read only.
    pub fn require_org_changes(who: &ProviderPrincipal) -> StoreResult<()> {
        if who.may_change_orgs() {
            Ok(())
        } else {
            Err(refuse(who, "it reads only"))
        }
    }

    /// Refused (403) unless `who` may manage partners: the platform's OWNERs.
    pub fn require_partner_management(who: &ProviderPrincipal) -> StoreResult<()> {
        if who.may_manage_partners() {
            Ok(())
        } else {
            Err(refuse(
                who,
                "only the platform's OWNERs manage partners and move orgs between them",
            ))
        }
    }

    /// The org `id` as `who` may know it. An org that does not exist and an org `who` may not
    /// see are the same `NotFound` (404), checked before the role, so that a refusal never
    /// tells that an org exists; a change `who`'s role does not allow is then refused (403).
    pub async fn org_for(
        &self,
        who: &ProviderPrincipal,
        id: OrgId,
        access: Access,
    ) -> StoreResult<OrgRecord> {
        let org = self
            .store
            .get_org(id)
            .await?
            .filter(|o| who.tier.sees(o.partner_id()))
            .ok_or(StoreError::NotFound("org"))?;
        if access == Access::Change {
            Self::require_org_changes(who)?;
        }
        Ok(org)
    }

    /// The orgs `who` may see, by id, with their total.
    pub async fn orgs_for(
        &self,
        who: &ProviderPrincipal,
        page: Page,
        search: Option<&str>,
    ) -> StoreResult<(Vec<OrgRecord>, i64)> {
        self.store
            .list_orgs_of(page, search, who.tier.partner())
            .await
    }

    /// Who owns an org `who` creates: a partner's own orgs are its own (naming another
    /// partner is naming one it may not know: 404); the platform may create for any partner
    /// (`requested`) or for itself.
    pub async fn owner_for_new_org(
        &self,
        who: &ProviderPrincipal,
        requested: Option<PartnerId>,
    ) -> StoreResult<Option<PartnerId>> {
        Self::require_org_changes(who)?;
        match (who.tier, requested) {
            (Tier::Partner(p), None) => Ok(Some(p)),
            (Tier::Partner(p), Some(q)) if p == q => Ok(Some(p)),
            (Tier::Partner(_), Some(_)) => Err(StoreError::NotFound("partner")),
            (Tier::Platform, None) => Ok(None),
            (Tier::Platform, Some(q)) => {
                self.store
                    .get_partner(q)
                    .await?
                    .ok_or(StoreError::NotFound("partner"))?;
                Ok(Some(q))
            }
        }
    }

    /// The partner `id` as `who` may know it: the platform knows every partner, a partner
    /// only itself (any other id is `NotFound`, like one that does not exist).
    pub async fn partner_for(
        &self,
        who: &ProviderPrincipal,
        id: PartnerId,
    ) -> StoreResult<PartnerRecord> {
        if !matches!(who.tier, Tier::Platform) && who.tier.partner() != Some(id) {
            return Err(StoreError::NotFound("partner"));
        }
        self.store
            .get_partner(id)
            .await?
            .ok_or(StoreError::NotFound("partner"))
    }

    /// The partners `who` may know: all for the platform, itself for a partner.
    pub async fn partners_for(&self, who: &ProviderPrincipal) -> StoreResult<Vec<PartnerRecord>> {
        match who.tier {
            Tier::Platform => self.store.list_partners().await,
            Tier::Partner(p) => Ok(self.store.get_partner(p).await?.into_iter().collect()),
        }
    }

    pub async fn create_partner(
        &self,
        who: &ProviderPrincipal,
        input: PartnerInput,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<PartnerRecord> {
        Self::require_partner_management(who)?;
        let ctx = self.ctx(actor, client);
        self.store.create_partner(input, &ctx).await
    }

    /// Sets a partner's name and contacts. Its orgs' key objects name it, so every node's
    /// cached entries of them are dropped before the answer.
    pub async fn update_partner(
        &self,
        who: &ProviderPrincipal,
        id: PartnerId,
        input: PartnerInput,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<PartnerRecord> {
        self.partner_for(who, id).await?;
        Self::require_partner_management(who)?;
        let ctx = self.ctx(actor, client);
        let updated = self.store.update_partner(id, input, &ctx).await?;
        // The store notified the other nodes about each of the partner's orgs; this node
        // forgets everything, and answers once the others have forgotten too.
        self.cache.clear();
        if let Some(peers) = self.peers.as_ref() {
            peers.settle().await;
        }
        Ok(updated)
    }

    /// Gives an org to another partner (`None`: the platform's own). The platform only.
    pub async fn move_org(
        &self,
        who: &ProviderPrincipal,
        org: OrgId,
        partner: Option<PartnerId>,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        let org = self.org_for(who, org, Access::Read).await?;
        Self::require_partner_management(who)?;
        let ctx = self.ctx(actor, client);
        self.change(org.id, self.store.move_org(org.id, partner, &ctx))
            .await
    }

    /// Sets the org's base URL (`None`: the deployment's): the platform or the owning partner.
    pub async fn set_base_url(
        &self,
        who: &ProviderPrincipal,
        org: OrgId,
        url: Option<HttpUrl>,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        let org = self.org_for(who, org, Access::Change).await?;
        let ctx = self.ctx(actor, client);
        let url = url.map(|u| u.as_str().to_owned());
        self.change(org.id, self.store.set_base_url(org.id, url, &ctx))
            .await
    }
}
