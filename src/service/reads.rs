//! Reads from the database coalesced: while `MAX_IN_FLIGHT` reads of a kind are under way,
//! the requests that arrive wait together and the next read serves them all with one query.
//! On PostgreSQL every API call reads its session, and a key read its org (no node may trust
//! a copy, R7), so under load this turns one round trip per request into one per batch.
//!
//! Still exact: a request joins only a read that has not started yet, so the read it gets
//! began after the request arrived and sees every change answered before that.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

use crate::domain::ids::OrgId;
use crate::store::{ApiSessionView, OrgRecord, Store, StoreError, StoreResult};

/// Reads of one kind running at once (each holds a pooled connection); the rest of the pool
/// is left to writes and other reads.
const MAX_IN_FLIGHT: usize = 4;
/// The most rows one query asks for.
const MAX_BATCH: usize = 64;

/// One kind of row read by key, many keys per query.
pub trait BatchRead: Send + Sync + 'static {
    type Key: Clone + Eq + Hash + Send + Sync + 'static;
    type Value: Clone + Send + 'static;
    fn fetch(
        store: Arc<dyn Store>,
        keys: Vec<Self::Key>,
    ) -> impl Future<Output = StoreResult<Vec<(Self::Key, Self::Value)>>> + Send;
}

/// API sessions by the hash of their id.
pub struct SessionRows;

impl BatchRead for SessionRows {
    type Key = String;
    type Value = Arc<ApiSessionView>;
    async fn fetch(
        store: Arc<dyn Store>,
        keys: Vec<String>,
    ) -> StoreResult<Vec<(String, Arc<ApiSessionView>)>> {
        let rows = store.get_api_sessions(&keys).await?;
        Ok(rows.into_iter().map(|(k, v)| (k, Arc::new(v))).collect())
    }
}

/// Orgs (with their key) by id.
pub struct OrgRows;

impl BatchRead for OrgRows {
    type Key = OrgId;
    type Value = OrgRecord;
    async fn fetch(
        store: Arc<dyn Store>,
        keys: Vec<OrgId>,
    ) -> StoreResult<Vec<(OrgId, OrgRecord)>> {
        store.get_orgs(&keys).await
    }
}

type Reply<R> = oneshot::Sender<StoreResult<Option<<R as BatchRead>::Value>>>;

struct Waiting<R: BatchRead> {
    requests: Vec<(R::Key, Reply<R>)>,
    /// Whether a task is taking batches off `requests`.
    driver_running: bool,
}

pub struct Coalesced<R: BatchRead> {
    waiting: Mutex<Waiting<R>>,
    slots: Arc<Semaphore>,
}

impl<R: BatchRead> Default for Coalesced<R> {
    fn default() -> Self {
        Self {
            waiting: Mutex::new(Waiting {
                requests: Vec::new(),
                driver_running: false,
            }),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl<R: BatchRead> Coalesced<R> {
    /// The row stored under `key`, read after this call began.
    pub async fn read(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        key: R::Key,
    ) -> StoreResult<Option<R::Value>> {
        let (reply, answer) = oneshot::channel();
        let start_driver = {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.requests.push((key, reply));
            !std::mem::replace(&mut w.driver_running, true)
        };
        if start_driver {
            tokio::spawn(self.clone().drive(store.clone()));
        }
        answer
            .await
            .map_err(|_| StoreError::Unavailable(anyhow::anyhow!("a batched read was abandoned")))?
    }

    /// Takes batches off the waiting list while there are any, one per free slot.
    async fn drive(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let batch: Vec<(R::Key, Reply<R>)> = {
                let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
                if w.requests.is_empty() {
                    w.driver_running = false;
                    return;
                }
                let n = w.requests.len().min(MAX_BATCH);
                w.requests.drain(..n).collect()
            };
            let store = store.clone();
            tokio::spawn(async move {
                answer::<R>(store, batch).await;
                drop(slot);
            });
        }
    }
}

async fn answer<R: BatchRead>(store: Arc<dyn Store>, batch: Vec<(R::Key, Reply<R>)>) {
    let mut keys: Vec<R::Key> = Vec::with_capacity(batch.len());
    for (key, _) in &batch {
        if !keys.contains(key) {
            keys.push(key.clone());
        }
    }
    match R::fetch(store, keys).await {
        Ok(rows) => {
            let found: HashMap<R::Key, R::Value> = rows.into_iter().collect();
            for (key, reply) in batch {
                let _ = reply.send(Ok(found.get(&key).cloned()));
            }
        }
        Err(e) => {
            // Every waiter gets the error; the store's errors are not `Clone`.
            let (unavailable, message) = match &e {
                StoreError::Unavailable(inner) => (true, inner.to_string()),
                other => (false, other.to_string()),
            };
            for (_, reply) in batch {
                let err = anyhow::anyhow!("{message}");
                let _ = reply.send(Err(if unavailable {
                    StoreError::Unavailable(err)
                } else {
                    StoreError::Internal(err)
                }));
            }
        }
    }
}
