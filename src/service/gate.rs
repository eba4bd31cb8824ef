//! R7 on one node: a key change waits for the org's in-flight API requests to finish, and
//! requests that arrive during the change wait for it, so no request is authorized with a
//! session of the old key once the change has been answered.
//!
//! The locks are striped (a fixed number, by org id), so memory does not grow with the
//! number of orgs; two orgs sharing a stripe only ever wait for each other's key changes.
//!
//! `async-lock`'s lock, not tokio's: a request enters and leaves with one atomic operation
//! each, where tokio's read guard takes the lock's waiter mutex on every release (callgrind,
//! BENCHMARKS.md §20). Both favour a waiting change: once it waits, new requests queue behind
//! it, so a busy org cannot starve its own key change.

use std::sync::Arc;

use async_lock::{RwLock, RwLockReadGuardArc, RwLockWriteGuardArc};

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
pub type RequestPass = RwLockReadGuardArc<()>;
/// Held by a key change from before its transaction until after its commit.
pub type ChangePass = RwLockWriteGuardArc<()>;

impl OrgGate {
    fn stripe(&self, org: OrgId) -> &Arc<RwLock<()>> {
        &self.stripes[(org.0 as u64 % STRIPES as u64) as usize]
    }

    pub async fn enter(&self, org: OrgId) -> RequestPass {
        let stripe = self.stripe(org);
        // Without a change waiting or under way, no waiter is set up (the lock's future would
        // make one first). A waiting change fails `try_read_arc` just as it blocks `read_arc`.
        match stripe.try_read_arc() {
            Some(pass) => pass,
            None => stripe.read_arc().await,
        }
    }

    pub async fn change(&self, org: OrgId) -> ChangePass {
        self.stripe(org).write_arc().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lets every other task of the test's single-threaded runtime run until it waits.
    async fn settle() {
        for _ in 0..16 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_change_waits_for_requests_in_flight_and_requests_wait_for_a_waiting_change() {
        let gate = Arc::new(OrgGate::default());
        let org = OrgId(7);
        let in_flight = gate.enter(org).await;
        let change = tokio::spawn({
            let gate = gate.clone();
            async move { gate.change(org).await }
        });
        settle().await;
        assert!(
            !change.is_finished(),
            "the change went ahead of a request in flight"
        );
        // A request arriving now queues behind the waiting change, or a steady stream of
        // requests would starve it.
        let late = tokio::spawn({
            let gate = gate.clone();
            async move {
                let _pass = gate.enter(org).await;
            }
        });
        settle().await;
        assert!(!late.is_finished(), "a request overtook a waiting change");
        drop(in_flight);
        let pass = change.await.unwrap();
        settle().await;
        assert!(!late.is_finished(), "a request entered during the change");
        drop(pass);
        late.await.unwrap();
    }

    #[tokio::test]
    async fn requests_of_one_org_do_not_wait_for_each_other_nor_for_another_orgs_change() {
        let gate = OrgGate::default();
        let a = gate.enter(OrgId(1)).await;
        let b = gate.enter(OrgId(1)).await;
        let change = gate.change(OrgId(2)).await;
        let c = gate.enter(OrgId(1));
        let c = futures_util::FutureExt::now_or_never(c);
        assert!(c.is_some(), "a request waited for another org's change");
        drop((a, b, change));
    }
}
