//! R7 on one node: a key change waits for the org's in-flight API requests to finish, and
//! requests that arrive during the change wait for it, so no request is authorized with a
//! session of the old key once the change has been answered.
//!
//! The locks are striped (a fixed number, by org id), so memory does not grow with the
//! number of orgs; two orgs sharing a stripe only ever wait for each other's key changes.

use std::sync::Arc;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::domain::ids::OrgId;

const STRIPES: usize = 1024;

pub struct OrgGate {
    stripes: Vec<Arc<RwLock<()>>>,
}

impl Default for OrgGate {
    fn default() -> Self {
        Self {
            stripes: (0..STRIPES).map(|_| Arc::new(RwLock::new(()))).collect(),
        }
    }
}

/// Held by an API request from its session check until its response is built.
pub type RequestPass = OwnedRwLockReadGuard<()>;
/// Held by a key change from before its transaction until after its commit.
pub type ChangePass = OwnedRwLockWriteGuard<()>;

impl OrgGate {
    fn stripe(&self, org: OrgId) -> Arc<RwLock<()>> {
        self.stripes[(org.0 as u64 % STRIPES as u64) as usize].clone()
    }

    pub async fn enter(&self, org: OrgId) -> RequestPass {
        self.stripe(org).read_owned().await
    }

    pub async fn change(&self, org: OrgId) -> ChangePass {
        self.stripe(org).write_owned().await
    }
}
