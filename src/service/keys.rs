//! Viewing and changing the org's key: the one implementation behind the admin console API
//! and the cloud service API's `/apiKeys`.

use axum::body::Bytes;
use serde::Serialize;

use super::Services;
use crate::domain::key::ApiKeyValue;
use crate::domain::key_change::KeyChange;
use crate::domain::org::{KeyStatus, SubscriptionState};
use crate::store::{AdminRecord, Ctx, OrgRecord, StoreError, StoreResult};

/// Who changed the key last.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NamedRef {
    pub id: i64,
    pub name: String,
}

/// The Zscaler-shaped key object.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyObject {
    pub id: i64,
    /// The full value, or `*********abc` where the API masks it.
    pub key_value: String,
    pub permissions: Vec<&'static str>,
    pub enabled: bool,
    /// `ENABLED` or `DISABLED`.
    pub status: &'static str,
    pub disabled_reason: Option<&'static str>,
    /// The provider's note on a disablement; absent when there is none.
    // keygate's own field (ZIA's key object and PRODUCT.md §3's have none): left out without
    // a note, which also spares bytes on the API's most frequent answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled_note: Option<String>,
    /// Unix seconds.
    pub last_modified_time: i64,
    pub last_modified_by: NamedRef,
    /// The partner (service provider) that owns the org; null for the platform's own orgs.
    pub partner: Option<NamedRef>,
    /// That partner's support URL.
    pub partner_url: Option<String>,
    /// The org's own base URL, or the deployment's.
    pub base_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    Full,
    Masked,
}

/// What an admin asks for; new values are drawn here from the OS CSPRNG.
pub enum KeyChangeRequest {
    Add,
    Edit(ApiKeyValue),
    Regenerate,
    Delete,
}

impl Services {
    pub fn key_object(&self, org: &OrgRecord, shown: Shown) -> StoreResult<Option<KeyObject>> {
        let Some(key) = &org.key else { return Ok(None) };
        let sub = org.subscription.state_at(self.clock.now());
        let status = KeyStatus::of(&org.key_presence(), sub);
        let value = self.store.open_key(org.id, key)?;
        Ok(Some(KeyObject {
            id: key.id.0,
            key_value: match shown {
                Shown::Full => value.expose().to_owned(),
                Shown::Masked => value.masked(),
            },
            permissions: if sub == SubscriptionState::Active {
                vec!["READ", "WRITE"]
            } else {
                vec!["READ"]
            },
            enabled: status.enabled,
            status: if status.enabled {
                "ENABLED"
            } else {
                "DISABLED"
            },
            disabled_reason: status.reason,
            disabled_note: status.note,
            last_modified_time: key.modified_at.as_secs(),
            last_modified_by: NamedRef {
                id: key.modified_by_id,
                name: key.modified_by_name.clone(),
            },
            partner: org.partner.as_ref().map(|p| NamedRef {
                id: p.id.0,
                name: p.name.clone(),
            }),
            partner_url: org.partner.as_ref().and_then(|p| p.support_url.clone()),
            base_url: self.org_base_url(org),
        }))
    }

    /// The body of `GET /api/v1/apiKeys` for an admitted call: the org's key as a JSON array
    /// of zero or one key objects. Rendered once per key generation and subscription state
    /// on the embedded store (the org's cached record would give the same bytes each time).
    pub async fn key_list_json(
        &self,
        p: &crate::service::sessions::ApiPrincipal,
    ) -> StoreResult<Bytes> {
        // The time the call was admitted at: what its session and subscription were judged by.
        let now = p.at;
        if let Some(body) = self.cache.key_list(p.org_id(), p.generation(), now) {
            return Ok(body);
        }
        let since = self.cache.changes();
        let org = self.org_for_request(p).await?;
        let keys: Vec<KeyObject> = self.key_object(&org, Shown::Full)?.into_iter().collect();
        let body =
            Bytes::from(serde_json::to_vec(&keys).map_err(|e| StoreError::Internal(e.into()))?);
        if p.holds_gate() {
            self.cache
                .put_key_list(&org, org.subscription.state_at(now), body.clone(), since);
        }
        Ok(body)
    }

    /// The admin's org, from the cache if it holds it. Never fills the cache: only a caller
    /// holding the org's gate may (see `org_for_request`).
    pub async fn admin_org(&self, admin: &AdminRecord) -> StoreResult<OrgRecord> {
        match self.cache.org(admin.org_id) {
            Some(org) => Ok(org),
            None => self
                .store
                .get_org(admin.org_id)
                .await?
                .ok_or(StoreError::NotFound("org")),
        }
    }

    /// The org of an admitted API call. It must still be at the key generation the session
    /// was opened under: on another node a change may have committed since this request was
    /// admitted, and its data must not reach a session of the old key (R7 across nodes).
    /// Fills the cache: the call holds the org's gate, so no change of this node can commit
    /// between the read and the fill.
    pub async fn org_for_request(
        &self,
        p: &crate::service::sessions::ApiPrincipal,
    ) -> StoreResult<OrgRecord> {
        let org = match self.cache.org(p.org_id()) {
            Some(org) => org,
            None => {
                let since = self.cache.changes();
                let org = self
                    .org_reads
                    .read(&self.store, p.org_id())
                    .await?
                    .ok_or(StoreError::NotFound("org"))?;
                if p.holds_gate() {
                    self.cache.put_org(&org, since);
                }
                org
            }
        };
        if org.key_generation != p.generation() {
            return Err(StoreError::SessionEnded);
        }
        Ok(org)
    }

    /// Applies an admin's change and returns the key afterwards (`None` after a delete).
    pub async fn change_key(
        &self,
        admin: &AdminRecord,
        request: KeyChangeRequest,
        client_addr: Option<String>,
    ) -> StoreResult<(OrgRecord, Option<KeyObject>)> {
        self.apply_key_change(admin, request, None, client_addr)
            .await
    }

    /// A change through a cloud service API session: applied only if the key is still the
    /// one the session was opened with (any node may have changed it since).
    pub async fn change_key_in_session(
        &self,
        p: &crate::service::sessions::ApiPrincipal,
        request: KeyChangeRequest,
        client_addr: Option<String>,
    ) -> StoreResult<(OrgRecord, Option<KeyObject>)> {
        self.apply_key_change(p.admin(), request, Some(p.generation()), client_addr)
            .await
    }

    async fn apply_key_change(
        &self,
        admin: &AdminRecord,
        request: KeyChangeRequest,
        expected_generation: Option<i64>,
        client_addr: Option<String>,
    ) -> StoreResult<(OrgRecord, Option<KeyObject>)> {
        use crate::telemetry::KeyChangeKind as K;
        let kind = match &request {
            KeyChangeRequest::Add => K::Add,
            KeyChangeRequest::Edit(_) => K::Edit,
            KeyChangeRequest::Regenerate => K::Regenerate,
            KeyChangeRequest::Delete => K::Delete,
        };
        let change = match request {
            KeyChangeRequest::Add => KeyChange::Add(ApiKeyValue::generate(&mut rand::rngs::OsRng)),
            KeyChangeRequest::Edit(v) => KeyChange::Edit(v),
            KeyChangeRequest::Regenerate => {
                KeyChange::Regenerate(ApiKeyValue::generate(&mut rand::rngs::OsRng))
            }
            KeyChangeRequest::Delete => KeyChange::Delete,
        };
        let ctx: Ctx = self.ctx(admin.actor(), client_addr);
        let org = self
            .change(
                admin.org_id,
                self.store
                    .change_key(admin.org_id, admin.id, change, expected_generation, &ctx),
            )
            .await?;
        crate::telemetry::key_change(kind, &ctx.actor);
        let key = self.key_object(&org, Shown::Full)?;
        Ok((org, key))
    }

    pub async fn reveal_key(
        &self,
        admin: &AdminRecord,
        client_addr: Option<String>,
    ) -> StoreResult<ApiKeyValue> {
        let ctx = self.ctx(admin.actor(), client_addr);
        self.store.reveal_key(admin.org_id, &ctx).await
    }
}
