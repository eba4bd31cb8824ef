//! The provider's operations on orgs, subscriptions, keys and admins.

use super::Services;
use crate::domain::admin::{LoginName, Password, Role};
use crate::domain::audit::Actor;
use crate::domain::ids::{AdminId, OrgId, PartnerId};
use crate::domain::key::ApiKeyValue;
use crate::domain::org::{CallThreshold, Disablement, OrgName, Subscription};
use crate::domain::tier::{DisabledBy, Tier};
use crate::store::{
    AdminRecord, NewAdmin, NewOrg, OrgRecord, ProviderKeyAction, StoreError, StoreResult,
};

pub struct AdminInput {
    pub login: LoginName,
    pub password: Password,
    pub role: Role,
}

pub struct OrgInput {
    pub name: OrgName,
    pub subscription: Subscription,
    pub call_threshold: Option<CallThreshold>,
    pub admins: Vec<AdminInput>,
    /// The owner (`Services::owner_for_new_org`); `None` = the platform.
    pub partner: Option<PartnerId>,
}

impl Services {
    async fn new_admin(&self, input: AdminInput) -> StoreResult<NewAdmin> {
        let password_hash = self
            .hasher
            .hash(input.password)
            .await
            .map_err(StoreError::Internal)?;
        Ok(NewAdmin {
            login: input.login,
            password_hash,
            role: input.role,
        })
    }

    pub async fn create_org(
        &self,
        input: OrgInput,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        let mut admins = Vec::with_capacity(input.admins.len());
        for a in input.admins {
            admins.push(self.new_admin(a).await?);
        }
        let org = NewOrg {
            name: input.name,
            subscription: input.subscription,
            call_threshold: input.call_threshold,
            admins,
            partner: input.partner,
        };
        let ctx = self.ctx(actor, client);
        let created = self
            .store
            .create_org(org, ApiKeyValue::generate(&mut rand::rngs::OsRng), &ctx)
            .await?;
        crate::telemetry::key_change(crate::telemetry::KeyChangeKind::Provision, &ctx.actor);
        Ok(created)
    }

    pub async fn set_subscription(
        &self,
        org: OrgId,
        subscription: Subscription,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        let ctx = self.ctx(actor, client);
        let new_key = ApiKeyValue::generate(&mut rand::rngs::OsRng);
        self.change(
            org,
            self.store
                .set_subscription(org, subscription, new_key, &ctx),
        )
        .await
    }

    pub async fn disable_key(
        &self,
        org: OrgId,
        d: Disablement,
        by: DisabledBy,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        let ctx = self.ctx(actor, client);
        let after = self
            .change(
                org,
                self.store
                    .provider_key_action(org, ProviderKeyAction::Disable(d, by), &ctx),
            )
            .await?;
        crate::telemetry::key_change(crate::telemetry::KeyChangeKind::Disable, &ctx.actor);
        Ok(after)
    }

    pub async fn enable_key(
        &self,
        org: OrgId,
        tier: Tier,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        // Re-enabling after R9 starts the period's count afresh (the store zeroes it in the
        // enable's own transaction, so no node counts on from the old total); this node's
        // counts are written first, and its in-memory count restarts after.
        let kind_actor = actor.clone();
        let after = self
            .change(org, async {
                let after = self
                    .with_usage_flushed(async {
                        let ctx = self.ctx(actor, client);
                        self.store
                            .provider_key_action(org, ProviderKeyAction::Enable(tier), &ctx)
                            .await
                    })
                    .await?;
                self.restart_local_usage(org, after.call_threshold);
                Ok(after)
            })
            .await?;
        crate::telemetry::key_change(crate::telemetry::KeyChangeKind::Enable, &kind_actor);
        Ok(after)
    }

    pub async fn add_admin(
        &self,
        org: OrgId,
        input: AdminInput,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<AdminRecord> {
        let admin = self.new_admin(input).await?;
        let ctx = self.ctx(actor, client);
        self.store.add_admin(org, admin, &ctx).await
    }

    pub async fn remove_admin(
        &self,
        org: OrgId,
        admin: AdminId,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<()> {
        let ctx = self.ctx(actor, client);
        self.change(org, self.store.remove_admin(org, admin, &ctx))
            .await
    }
}

impl Services {
    pub async fn set_limits(
        &self,
        org: OrgId,
        threshold: Option<CallThreshold>,
        rate_limits: Option<String>,
        actor: Actor,
        client: Option<String>,
    ) -> StoreResult<OrgRecord> {
        let ctx = self.ctx(actor, client);
        self.change(
            org,
            self.store.set_limits(org, threshold, rate_limits, &ctx),
        )
        .await
    }
}
