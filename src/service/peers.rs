//! Several nodes on one PostgreSQL database, each with its own cache (`--node-cache`).
//!
//! R7 needs every node to stop answering from what it cached about an org once a change to
//! it is answered. So:
//!
//! - **Every change's transaction notifies** (`store::peers::CHANGE_CHANNEL`, sent at the
//!   commit by PostgreSQL itself): each listening node forgets the org when it reads that.
//! - **A change is answered only after the others confirmed** ([`Peers::settle`]): the
//!   changing node sends a sync after its commit and waits until every node with a live
//!   lease has answered it (a node reads notifications in commit order, so when it answers
//!   it has forgotten the org), or until those leases have ended.
//! - **A node uses its cache only under a lease**: it renews its row in `cache_nodes` and
//!   then pings itself through its own listener; only when the ping comes back, so every
//!   change committed before the renewal has been read, may it use its cache until `lease`
//!   (less a tenth, for clock-rate differences) after the renewal began. A node that loses its
//!   listener stops at once; one that cannot renew stops when its lease ends; a lapse drops
//!   the whole cache. So a change waits at most one lease for a node that does not answer.
//!
//! The timing assumption is the usual one for leases: the clocks of the nodes and of the
//! database run at about the same rate (not: show the same time).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;

use super::Services;
use crate::store::peers::{PeerDb, PeerEvent};

/// The part of the lease kept back for clock-rate differences between nodes and database.
const LEASE_MARGIN_DIVISOR: u32 = 10;

pub struct Peers {
    db: PeerDb,
    /// Random: node ids need no coordination, and a restarted node is a new node.
    node: i64,
    lease: Duration,
    next_seq: AtomicU64,
    /// Syncs and pings of this node still waiting for answers, by sequence number.
    waits: Mutex<HashMap<u64, Wait>>,
    /// Changes of listener (each loss counts one), and whether one is listening now; held
    /// while the lease is extended or ended, so an extension never follows a loss.
    listening: Mutex<(u64, bool)>,
}

struct Wait {
    pending: HashSet<i64>,
    done: Option<oneshot::Sender<()>>,
}

/// How long a node waits at start for its own notification (see [`node_cache_unavailable`]).
pub const NOTIFY_CHECK: Duration = Duration::from_secs(3);

/// Whether the node cache can run on `url`: `None` if it can, else why not. At start a node
/// listens and notifies itself; if that notification does not arrive within
/// [`NOTIFY_CHECK`] (PgBouncer in transaction mode passes `LISTEN` but never delivers), the
/// node runs without the cache (every request reads the database, as exact), and says so.
pub async fn node_cache_unavailable(url: &str) -> Option<String> {
    crate::store::peers::notifications_arrive(url, NOTIFY_CHECK)
        .await
        .err()
}

impl Peers {
    pub async fn connect(url: &str, lease: Duration) -> anyhow::Result<Self> {
        let node = (rand::random::<u64>() >> 1) as i64;
        Ok(Self {
            db: PeerDb::connect(url, node).await?,
            node,
            lease,
            next_seq: AtomicU64::new(1),
            waits: Mutex::new(HashMap::new()),
            listening: Mutex::new((0, false)),
        })
    }

    pub fn node(&self) -> i64 {
        self.node
    }

    fn waits(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Wait>> {
        self.waits.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn listening(&self) -> std::sync::MutexGuard<'_, (u64, bool)> {
        self.listening.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a wait for answers from `nodes` before the sync is sent.
    fn expect(&self, nodes: HashSet<i64>) -> (u64, oneshot::Receiver<()>) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.waits().insert(
            seq,
            Wait {
                pending: nodes,
                done: Some(tx),
            },
        );
        (seq, rx)
    }

    fn answered(&self, seq: u64, node: i64) {
        let mut waits = self.waits();
        if let Some(wait) = waits.get_mut(&seq) {
            wait.pending.remove(&node);
            if wait.pending.is_empty() {
                if let Some(done) = wait.done.take() {
                    let _ = done.send(());
                }
                waits.remove(&seq);
            }
        }
    }

    /// After a change of this node committed (its transaction has notified every node):
    /// returns once every other node with a live lease has read that, or its lease ended.
    pub async fn settle(&self) {
        let peers = match self.db.live_peers(self.node).await {
            Ok(peers) => peers,
            Err(e) => {
                // Who holds a lease is unknown: any lease running now ends within one.
                tracing::warn!(error = %e, "cannot list the caching nodes; waiting out a lease");
                tokio::time::sleep(self.lease).await;
                return;
            }
        };
        let Some(longest) = peers.iter().map(|(_, left)| *left).max() else {
            return;
        };
        let (seq, answered) = self.expect(peers.iter().map(|(id, _)| *id).collect());
        let deadline = longest + self.lease / LEASE_MARGIN_DIVISOR;
        match self.db.sync(self.node, seq).await {
            Ok(()) => {
                if tokio::time::timeout(deadline, answered).await.is_err() {
                    tracing::warn!("a caching node did not confirm a change; its lease has ended");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot ask the caching nodes to confirm; waiting out their leases");
                tokio::time::sleep(deadline).await;
            }
        }
        self.waits().remove(&seq);
    }

    fn handle(&self, services: &Services, event: PeerEvent) {
        match event {
            PeerEvent::Changed(org) => services.cache.forget_org(org),
            PeerEvent::Sync { origin, seq } if origin == self.node => self.answered(seq, origin),
            PeerEvent::Sync { origin, seq } => {
                // Everything committed before this sync has been handled above, in order.
                let (db, node) = (self.db.clone(), self.node);
                tokio::spawn(async move {
                    if let Err(e) = db.ack(origin, seq, node).await {
                        tracing::warn!(error = %e, "could not confirm another node's change");
                    }
                });
            }
            PeerEvent::Ack { origin, seq, node } if origin == self.node => self.answered(seq, node),
            PeerEvent::Ack { .. } => {}
        }
    }

    /// Keeps a listener connected and hands it what it hears; runs until the process ends.
    pub async fn listen(&self, services: &Services) {
        loop {
            match self.db.listen().await {
                Ok(mut listener) => {
                    {
                        // What was sent while no one listened is lost: start from nothing.
                        services.cache.clear();
                        self.listening().1 = true;
                    }
                    while let Some(event) = listener.next().await {
                        self.handle(services, event);
                    }
                    let mut listening = self.listening();
                    *listening = (listening.0 + 1, false);
                    services.cache.end_lease();
                    tracing::warn!(
                        "lost the PostgreSQL notification connection; node cache off until it is back"
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for other nodes' changes"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Renews this node's lease every quarter lease while it listens; runs until the process ends.
    pub async fn keep_lease(&self, services: &Services) {
        loop {
            let (generation, listening) = *self.listening();
            if listening {
                let began = crate::clock::monotonic::now_ns();
                let renewed = tokio::time::timeout(self.lease / 2, self.renew_and_ping()).await;
                match renewed {
                    Ok(Ok(())) => {
                        let listening = self.listening();
                        if *listening == (generation, true) {
                            let usable = self.lease - self.lease / LEASE_MARGIN_DIVISOR;
                            services.cache.extend_lease(began, usable);
                        }
                    }
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot renew the node's cache lease"),
                    Err(_) => tracing::warn!("renewing the node's cache lease timed out"),
                }
            }
            tokio::time::sleep(self.lease / 4).await;
        }
    }

    /// The lease row, then a ping through this node's own listener: when it returns, every
    /// change committed before the renewal has been read.
    async fn renew_and_ping(&self) -> anyhow::Result<()> {
        self.db.renew(self.node, self.lease).await?;
        let (seq, back) = self.expect(HashSet::from([self.node]));
        let pinged = async {
            self.db.sync(self.node, seq).await?;
            back.await?;
            anyhow::Ok(())
        }
        .await;
        self.waits().remove(&seq);
        pinged
    }

    /// Graceful shutdown: no change waits for this node any more.
    pub async fn leave(&self, services: &Services) {
        {
            let mut listening = self.listening();
            *listening = (listening.0 + 1, false);
            services.cache.end_lease();
        }
        if let Err(e) = self.db.leave(self.node).await {
            tracing::warn!(error = %e, "could not end the node's cache lease; it lapses by itself");
        }
    }
}
