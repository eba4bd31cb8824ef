//! Reads of API sessions from the database, coalesced: while `MAX_IN_FLIGHT` reads are
//! under way, the requests that arrive wait together and the next read serves them all
//! with one query. On PostgreSQL every API call reads its session (no node may trust a
//! copy, R7), so under load this turns one round trip per request into one per batch.
//!
//! Still exact: a request joins only a read that has not started yet, so the read it gets
//! began after the request arrived and sees every change answered before that.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Semaphore, oneshot};

use crate::store::{ApiSessionView, Store, StoreError, StoreResult};

/// Reads running at once (each holds a pooled connection); the rest of the pool is left
/// to writes and the other reads.
const MAX_IN_FLIGHT: usize = 4;
/// The most sessions one query asks for.
const MAX_BATCH: usize = 64;

type Reply = oneshot::Sender<StoreResult<Option<ApiSessionView>>>;

#[derive(Default)]
struct Waiting {
    requests: Vec<(String, Reply)>,
    /// Whether a task is taking batches off `requests`.
    driver_running: bool,
}

pub struct SessionReads {
    waiting: Mutex<Waiting>,
    slots: Arc<Semaphore>,
}

impl Default for SessionReads {
    fn default() -> Self {
        Self {
            waiting: Mutex::default(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl SessionReads {
    /// The session stored under `hash`, read after this call began.
    pub async fn read(
        self: &Arc<Self>,
        store: &Arc<dyn Store>,
        hash: &str,
    ) -> StoreResult<Option<ApiSessionView>> {
        let (reply, answer) = oneshot::channel();
        let start_driver = {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            w.requests.push((hash.to_owned(), reply));
            !std::mem::replace(&mut w.driver_running, true)
        };
        if start_driver {
            tokio::spawn(self.clone().drive(store.clone()));
        }
        answer.await.map_err(|_| {
            StoreError::Unavailable(anyhow::anyhow!("the session read was abandoned"))
        })?
    }

    /// Takes batches off the waiting list while there are any, one per free slot.
    async fn drive(self: Arc<Self>, store: Arc<dyn Store>) {
        loop {
            let Ok(slot) = self.slots.clone().acquire_owned().await else {
                return;
            };
            let batch: Vec<(String, Reply)> = {
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
                answer(&*store, batch).await;
                drop(slot);
            });
        }
    }
}

async fn answer(store: &dyn Store, batch: Vec<(String, Reply)>) {
    let mut hashes: Vec<String> = batch.iter().map(|(h, _)| h.clone()).collect();
    hashes.sort_unstable();
    hashes.dedup();
    match store.get_api_sessions(&hashes).await {
        Ok(rows) => {
            let found: HashMap<String, ApiSessionView> = rows.into_iter().collect();
            for (hash, reply) in batch {
                let _ = reply.send(Ok(found.get(&hash).cloned()));
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
