//! Response shapes shared by more than one router.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use crate::domain::ids::OrgId;
use crate::domain::org::{CallThreshold, KeyStatus};
use crate::service::Services;
use crate::store::{AuditRecord, OrgRecord, Page};

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionView {
    pub enabled: bool,
    /// Unix seconds; null = never.
    pub expires_at: Option<i64>,
    /// `ACTIVE`, `EXPIRED` or `NOT_ENABLED`.
    pub state: &'static str,
}

/// An org as its admins see it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgSummary {
    pub id: OrgId,
    pub name: String,
    pub subscription: SubscriptionView,
    pub has_key: bool,
    /// `ENABLED`, `DISABLED` or `NONE`.
    pub key_status: &'static str,
    pub key_disabled_reason: Option<&'static str>,
    pub base_url: String,
}

impl OrgSummary {
    pub fn of(svc: &Services, org: &OrgRecord) -> Self {
        let sub = org.subscription.state_at(svc.clock.now());
        let status = KeyStatus::of(&org.key_presence(), sub);
        OrgSummary {
            id: org.id,
            name: org.name.clone(),
            subscription: SubscriptionView {
                enabled: org.subscription.enabled,
                expires_at: org.subscription.expires_at,
                state: sub.as_str(),
            },
            has_key: org.key.is_some(),
            key_status: match (&org.key, status.enabled) {
                (None, _) => "NONE",
                (Some(_), true) => "ENABLED",
                (Some(_), false) => "DISABLED",
            },
            key_disabled_reason: status.reason,
            base_url: svc.org_base_url(org),
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ThresholdView {
    pub call_threshold: Option<CallThreshold>,
}

#[derive(Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PageQuery {
    /// 1-based page number (default 1).
    pub page: Option<u32>,
    /// Items per page, 1 to 1000 (default 100).
    pub page_size: Option<u32>,
    /// Case-insensitive substring of the org name (org listings only).
    pub search: Option<String>,
}

impl PageQuery {
    pub fn page(&self) -> Result<Page, ApiError> {
        let number = self.page.unwrap_or(1);
        let size = self.page_size.unwrap_or(100);
        if number == 0 {
            return Err(ApiError::invalid("page", "must be 1 or more"));
        }
        if !(1..=1000).contains(&size) {
            return Err(ApiError::invalid("pageSize", "must be from 1 to 1000"));
        }
        Ok(Page { number, size })
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditPage {
    pub items: Vec<AuditRecord>,
    pub page: u32,
    pub page_size: u32,
    pub total: i64,
}
