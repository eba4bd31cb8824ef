//! PostgreSQL's part in keeping the nodes' caches exact (the protocol is `service::peers`):
//! the leases in `cache_nodes`, and three notification channels.
//!
//! - [`CHANGE_CHANNEL`] (payload: the org id) is sent by every change's own transaction (the
//!   org-row lock in `postgres.rs`, the delete of an API session), so it reaches every
//!   listening node at the commit, even if the changing node dies right after it.
//! - [`SYNC_CHANNEL`] (`origin:seq`) is sent by a node after its change, or to itself as a
//!   ping; PostgreSQL delivers notifications in commit order, so a node that reads it has
//!   already read every change committed before it.
//! - [`ACK_CHANNEL`] (`origin:seq:node`) answers a sync.

use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};

use crate::domain::ids::OrgId;

pub const CHANGE_CHANNEL: &str = "keygate_change";
pub const SYNC_CHANNEL: &str = "keygate_sync";
pub const ACK_CHANNEL: &str = "keygate_ack";

/// What a node hears from the others (and from itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    Changed(OrgId),
    Sync { origin: i64, seq: u64 },
    Ack { origin: i64, seq: u64, node: i64 },
}

impl PeerEvent {
    fn parse(channel: &str, payload: &str) -> Option<Self> {
        let mut fields = payload.split(':');
        let mut next = || fields.next().and_then(|f| f.parse::<i64>().ok());
        match channel {
            CHANGE_CHANNEL => Some(PeerEvent::Changed(OrgId(next()?))),
            SYNC_CHANNEL => Some(PeerEvent::Sync {
                origin: next()?,
                seq: u64::try_from(next()?).ok()?,
            }),
            ACK_CHANNEL => Some(PeerEvent::Ack {
                origin: next()?,
                seq: u64::try_from(next()?).ok()?,
                node: next()?,
            }),
            _ => None,
        }
    }
}

/// A small pool of its own, so that leases and acknowledgements are not queued behind the
/// request traffic of the store's pool.
#[derive(Clone)]
pub struct PeerDb {
    pool: PgPool,
}

impl PeerDb {
    /// Its connections are named `keygate-peers-NODE` (`pg_stat_activity.application_name`).
    pub async fn connect(url: &str, node: i64) -> anyhow::Result<Self> {
        let opts =
            PgConnectOptions::from_str(url)?.application_name(&format!("keygate-peers-{node}"));
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(2))
            .connect_with(opts)
            .await?;
        // Rows of nodes gone for long are only clutter: a lapsed lease is never waited for.
        sqlx::query("DELETE FROM cache_nodes WHERE lease_until < now() - interval '1 hour'")
            .execute(&pool)
            .await?;
        Ok(Self { pool })
    }

    /// A connection of its own that listens on the three channels.
    pub async fn listen(&self) -> sqlx::Result<PeerListener> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener
            .listen_all([CHANGE_CHANNEL, SYNC_CHANNEL, ACK_CHANNEL])
            .await?;
        Ok(PeerListener { listener })
    }

    /// Sets this node's lease to end `lease` from now, by the database's clock.
    pub async fn renew(&self, node: i64, lease: Duration) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO cache_nodes (id, lease_until) \
             VALUES ($1, now() + $2 * interval '1 millisecond') \
             ON CONFLICT (id) DO UPDATE SET lease_until = EXCLUDED.lease_until",
        )
        .bind(node)
        .bind(lease.as_millis() as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The other nodes whose lease has not ended, and how long each has left.
    pub async fn live_peers(&self, node: i64) -> sqlx::Result<Vec<(i64, Duration)>> {
        let rows = sqlx::query(
            "SELECT id, CAST(EXTRACT(EPOCH FROM (lease_until - now())) * 1000 AS BIGINT) AS ms_left \
             FROM cache_nodes WHERE lease_until > now() AND id <> $1",
        )
        .bind(node)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let ms: i64 = r.try_get("ms_left")?;
                Ok((r.try_get("id")?, Duration::from_millis(ms.max(0) as u64)))
            })
            .collect()
    }

    pub async fn sync(&self, origin: i64, seq: u64) -> sqlx::Result<()> {
        self.notify(SYNC_CHANNEL, &format!("{origin}:{seq}")).await
    }

    pub async fn ack(&self, origin: i64, seq: u64, node: i64) -> sqlx::Result<()> {
        self.notify(ACK_CHANNEL, &format!("{origin}:{seq}:{node}"))
            .await
    }

    async fn notify(&self, channel: &str, payload: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Ends this node's lease (graceful shutdown), so no change waits for it.
    pub async fn leave(&self, node: i64) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM cache_nodes WHERE id = $1")
            .bind(node)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Whether a notification sent through `url` reaches a listener on `url` within `within`:
/// `Err` says why not. Through a pooler in transaction mode (PgBouncer) `LISTEN` holds only
/// for the one transaction, so nothing arrives. Only the simple protocol is used here (no
/// prepared statement), which every pooler passes.
pub async fn notifications_arrive(url: &str, within: Duration) -> Result<(), String> {
    use sqlx::{Connection, Executor};
    let opts = PgConnectOptions::from_str(url)
        .map_err(|e| format!("bad database URL: {e}"))?
        .statement_cache_capacity(0)
        .application_name("keygate-notify-check");
    let token = format!("{:016x}", rand::random::<u64>());
    let channel = format!("keygate_check_{token}");
    let check = async {
        let mut listener = PgListener::connect_with(
            &PgPoolOptions::new()
                .max_connections(1)
                .acquire_timeout(within)
                .connect_lazy_with(opts.clone()),
        )
        .await?;
        listener.listen(&channel).await?;
        let mut sender = sqlx::PgConnection::connect_with(&opts).await?;
        // Through PgBouncer the sender may get the server connection that ran LISTEN, and with
        // it the notification (sqlx then reports an unexpected message): it went astray, which
        // is what the wait below finds out.
        if let Err(e) = sender
            .execute(format!("NOTIFY {channel}, '{token}'").as_str())
            .await
        {
            tracing::debug!(error = %e, "the notification check's NOTIFY");
        }
        let _ = sender.close().await;
        loop {
            match listener.try_recv().await? {
                Some(n) if n.channel() == channel && n.payload() == token => return Ok(()),
                Some(_) => continue,
                None => return Err(sqlx::Error::PoolClosed),
            }
        }
    };
    match tokio::time::timeout(within, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("the notification check failed: {e}")),
        Err(_) => Err(format!(
            "a notification sent to this node did not arrive within {} ms (a pooler in \
             transaction mode between the node and PostgreSQL?)",
            within.as_millis()
        )),
    }
}

pub struct PeerListener {
    listener: PgListener,
}

impl PeerListener {
    /// The next event; `None` once the connection is lost (the caller starts a new listener
    /// and treats everything before as missed). Payloads it cannot read are skipped.
    pub async fn next(&mut self) -> Option<PeerEvent> {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) => {
                    if let Some(event) = PeerEvent::parse(n.channel(), n.payload()) {
                        return Some(event);
                    }
                    tracing::warn!(channel = n.channel(), "unreadable peer notification");
                }
                Ok(None) | Err(_) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse_and_bad_ones_do_not() {
        assert_eq!(
            PeerEvent::parse(CHANGE_CHANNEL, "42"),
            Some(PeerEvent::Changed(OrgId(42)))
        );
        assert_eq!(
            PeerEvent::parse(SYNC_CHANNEL, "7:3"),
            Some(PeerEvent::Sync { origin: 7, seq: 3 })
        );
        assert_eq!(
            PeerEvent::parse(ACK_CHANNEL, "7:3:9"),
            Some(PeerEvent::Ack {
                origin: 7,
                seq: 3,
                node: 9
            })
        );
        for (channel, payload) in [
            (CHANGE_CHANNEL, ""),
            (CHANGE_CHANNEL, "x"),
            (SYNC_CHANNEL, "7"),
            (SYNC_CHANNEL, "7:-1"),
            (ACK_CHANNEL, "7:3"),
            ("other", "1"),
        ] {
            assert_eq!(
                PeerEvent::parse(channel, payload),
                None,
                "{channel} {payload}"
            );
        }
    }
}
