//! The ZIA audit log report (§3.3): one report per admin, built at once from the audit log
//! and stored until replaced or cancelled, so any node serves it.

use super::Services;
use crate::domain::ids::AdminId;
use crate::domain::time::Millis;
use crate::store::{AuditFilter, Page, StoreError, StoreResult};

/// The most rows one report holds.
pub const MAX_REPORT_ROWS: u32 = 100_000;

#[derive(Debug, Clone)]
pub struct AuditReport {
    pub csv: String,
    pub rows: usize,
    pub finished_at: Millis,
}

impl Services {
    /// Builds the CSV of the org's audit records between `from` and `to` (ms, inclusive),
    /// oldest first, and keeps it as `admin`'s report.
    pub async fn create_audit_report(
        &self,
        admin: AdminId,
        org: crate::domain::ids::OrgId,
        from: Millis,
        to: Millis,
    ) -> StoreResult<AuditReport> {
        let filter = AuditFilter {
            org: Some(org),
            from: Some(from),
            to: Some(to),
        };
        let (mut records, _) = self
            .store
            .list_audit(
                filter,
                Page {
                    number: 1,
                    size: MAX_REPORT_ROWS,
                },
            )
            .await?;
        records.reverse();
        let mut w = csv::Writer::from_writer(Vec::new());
        let io = |e: csv::Error| StoreError::Internal(e.into());
        w.write_record([
            "Time",
            "Action",
            "Actor Type",
            "Actor ID",
            "Actor",
            "Key Suffix",
            "Client IP",
            "Details",
            // Issue 15: who on the provider side (appended, so earlier columns keep their place).
            "Actor Tier",
            "Operator ID",
            "Partner ID",
        ])
        .map_err(io)?;
        for r in &records {
            w.write_record([
                r.time.to_string(),
                r.action.clone(),
                r.actor_type.clone(),
                r.actor_id.to_string(),
                r.actor_name.clone(),
                r.key_suffix.clone().unwrap_or_default(),
                r.client_address.clone().unwrap_or_default(),
                r.details.to_string(),
                r.actor_tier.clone().unwrap_or_default(),
                r.operator_id.map(|i| i.to_string()).unwrap_or_default(),
                r.partner_id.map(|i| i.to_string()).unwrap_or_default(),
            ])
            .map_err(io)?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| StoreError::Internal(anyhow::anyhow!("csv: {e}")))?;
        let report = AuditReport {
            csv: String::from_utf8(bytes).map_err(|e| StoreError::Internal(e.into()))?,
            rows: records.len(),
            finished_at: self.clock.now(),
        };
        self.store.put_audit_report(admin, &report).await?;
        Ok(report)
    }

    pub async fn audit_report(&self, admin: AdminId) -> StoreResult<Option<AuditReport>> {
        self.store.get_audit_report(admin).await
    }
}
