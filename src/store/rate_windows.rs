//! Where the nodes keep an org's rate-limit count per window (`service::limits` on
//! PostgreSQL): the `rate_windows` table by default, or Redis (`--rate-limit-redis-url`).
//! Both do the same two atomic operations; neither ever lets a window's count pass its limit.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

use crate::domain::ids::OrgId;

/// One rule's window of one org.
#[derive(Debug, Clone, Copy)]
pub struct WindowRef<'a> {
    pub org: OrgId,
    /// The rule's identity (`RateRule` index, methods, limit and period): a changed rule
    /// counts afresh.
    pub rule: &'a str,
    /// Milliseconds since the epoch, aligned to the rule's period.
    pub start_ms: i64,
    pub end_ms: i64,
}

/// A claim of a window that has not begun yet, made by the upkeep (this node's first in that
/// window).
#[derive(Debug, Clone, Copy)]
pub struct AheadClaim<'a> {
    pub window: WindowRef<'a>,
    pub want: u32,
    pub limit: u32,
}

/// What a claim got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claimed {
    /// Units this node may now admit (0 when the window is spent).
    pub granted: u32,
    /// The window's count after the claim (all nodes' claims, minus what they gave back).
    pub taken: u32,
    /// How many nodes claimed in this window so far.
    pub claimers: u32,
}

#[async_trait]
pub trait WindowStore: Send + Sync + 'static {
    /// Adds `min(want, limit - taken)` to the window's count, atomically, and says how much.
    /// `first`: this node's first claim in the window (counted in `claimers`).
    async fn claim(
        &self,
        w: &WindowRef<'_>,
        want: u32,
        limit: u32,
        first: bool,
    ) -> anyhow::Result<Claimed>;
    /// [`Self::claim`] of each window of `claims` (`first`: true), all in one round trip where
    /// the store can: the upkeep claims the next window of every busy org at about the same
    /// moment, and one statement per org and node each second would grow the shared store's
    /// load with the number of orgs. Answers in the order of `claims`, all or none: after an
    /// error, units may still have been taken for some windows (Redis has no transaction
    /// across them), and those windows then admit fewer, never more.
    async fn claim_ahead(&self, claims: &[AheadClaim<'_>]) -> anyhow::Result<Vec<Claimed>>;
    /// Takes each share's `n` unused units off its window's count (never below 0), all in one
    /// round trip where the store can, as [`Self::claim_ahead`].
    async fn give_back(&self, shares: &[(WindowRef<'_>, u32)]) -> anyhow::Result<()>;
    /// Forgets windows that ended before `before_ms`.
    async fn sweep(&self, before_ms: i64) -> anyhow::Result<()>;
    /// For logs and metric labels: `postgres` or `redis`.
    fn kind(&self) -> &'static str;
}

// ------------------------------------------------------------------ PostgreSQL

/// The `rate_windows` table, through a small pool of its own (`keygate-limits`), so claims do
/// not queue behind request traffic and a slow table shows as a quick error, not a stall.
pub struct PgWindows {
    /// Through a transaction pooler each claim runs in a transaction of its own that starts
    /// with `DEALLOCATE ALL` (see `PgPooled`).
    pool: crate::store::postgres::PgPooled,
}

impl PgWindows {
    /// `url` is the store's database, already migrated. `pooler_transaction`: the URL names
    /// PgBouncer in transaction mode, which refuses the `options` start-up parameter and hands
    /// each transaction whichever server connection is free (see `PgPooled`).
    pub async fn connect(url: &str, pooler_transaction: bool) -> anyhow::Result<Self> {
        let mut opts = PgConnectOptions::from_str(url)?.application_name("keygate-limits");
        opts = if pooler_transaction {
            opts.statement_cache_capacity(0)
        } else {
            // A claim that cannot take its row lock quickly is answered from the local
            // fallback instead; a lost claim at a crash only means a few units less.
            opts.options([
                ("lock_timeout", "250"),
                ("statement_timeout", "500"),
                ("synchronous_commit", "off"),
            ])
        };
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .min_connections(0)
            // Connections only while claims are being made: PostgreSQL's slots are shared.
            .idle_timeout(Duration::from_secs(30))
            .acquire_timeout(Duration::from_millis(500))
            .connect_lazy_with(opts);
        Ok(Self {
            pool: crate::store::postgres::PgPooled::new(pool, pooler_transaction),
        })
    }
}

#[async_trait]
impl WindowStore for PgWindows {
    async fn claim(
        &self,
        w: &WindowRef<'_>,
        want: u32,
        limit: u32,
        first: bool,
    ) -> anyhow::Result<Claimed> {
        // SET expressions read the row as it was, so `last_grant` is what this claim added.
        let row = sqlx::query(
            "INSERT INTO rate_windows AS w \
               (org_id, rule, window_start, window_end, taken, claimers, last_grant) \
             VALUES ($1, $2, $3, $4, LEAST($5, $6), 1, LEAST($5, $6)) \
             ON CONFLICT (org_id, rule, window_start) DO UPDATE SET \
               taken = w.taken + LEAST($5, GREATEST($6 - w.taken, 0)), \
               claimers = w.claimers + $7, \
               last_grant = LEAST($5, GREATEST($6 - w.taken, 0)) \
             RETURNING taken, claimers, last_grant",
        )
        .bind(w.org.0)
        .bind(w.rule)
        .bind(w.start_ms)
        .bind(w.end_ms)
        .bind(want as i32)
        .bind(limit as i32)
        .bind(i32::from(first))
        .fetch_one(&self.pool)
        .await?;
        claimed_in(&row)
    }

    async fn claim_ahead(&self, claims: &[AheadClaim<'_>]) -> anyhow::Result<Vec<Claimed>> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let (orgs, rules, starts) = key_columns(claims.iter().map(|c| &c.window));
        let ends: Vec<i64> = claims.iter().map(|c| c.window.end_ms).collect();
        let wants: Vec<i32> = claims.iter().map(|c| c.want as i32).collect();
        let limits: Vec<i32> = claims.iter().map(|c| c.limit as i32).collect();
        // The same arithmetic as `claim`, row by row. The rows are locked in key order, the
        // same on every node, so two nodes' batches cannot deadlock on each other. The SET
        // expressions read each row as it was, so `last_grant` is what this claim added.
        let rows = sqlx::query(
            "WITH input AS ( \
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], \
                                    $5::int[], $6::int[]) \
                 AS t(org_id, rule, window_start, window_end, want, lim)) \
             INSERT INTO rate_windows AS w \
               (org_id, rule, window_start, window_end, taken, claimers, last_grant) \
             SELECT org_id, rule, window_start, window_end, LEAST(want, lim), 1, LEAST(want, lim) \
               FROM input ORDER BY org_id, rule, window_start \
             ON CONFLICT (org_id, rule, window_start) DO UPDATE SET \
               taken = w.taken + (SELECT LEAST(i.want, GREATEST(i.lim - w.taken, 0)) FROM input i \
                 WHERE i.org_id = w.org_id AND i.rule = w.rule AND i.window_start = w.window_start), \
               claimers = w.claimers + 1, \
               last_grant = (SELECT LEAST(i.want, GREATEST(i.lim - w.taken, 0)) FROM input i \
                 WHERE i.org_id = w.org_id AND i.rule = w.rule AND i.window_start = w.window_start) \
             RETURNING org_id, rule, window_start, taken, claimers, last_grant",
        )
        .bind(&orgs)
        .bind(&rules)
        .bind(&starts)
        .bind(&ends)
        .bind(&wants)
        .bind(&limits)
        .fetch_all(&self.pool)
        .await?;
        let mut answers = std::collections::HashMap::with_capacity(rows.len());
        for row in rows {
            let key: (i64, String, i64) = (
                row.try_get("org_id")?,
                row.try_get("rule")?,
                row.try_get("window_start")?,
            );
            answers.insert(key, claimed_in(&row)?);
        }
        claims
            .iter()
            .map(|c| {
                let w = &c.window;
                answers
                    .remove(&(w.org.0, w.rule.to_owned(), w.start_ms))
                    .ok_or_else(|| anyhow::anyhow!("no answer for a claimed window"))
            })
            .collect()
    }

    async fn give_back(&self, shares: &[(WindowRef<'_>, u32)]) -> anyhow::Result<()> {
        if shares.is_empty() {
            return Ok(());
        }
        let (orgs, rules, starts) = key_columns(shares.iter().map(|(w, _)| w));
        let units: Vec<i32> = shares.iter().map(|(_, n)| *n as i32).collect();
        // The rows are locked in key order first, as `claim_ahead` takes them, so that two
        // nodes' batches cannot deadlock on each other.
        sqlx::query(
            "WITH back AS ( \
               SELECT * FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::int[]) \
                 AS t(org_id, rule, window_start, n)), \
             locked AS MATERIALIZED ( \
               SELECT w.org_id, w.rule, w.window_start FROM rate_windows w \
                 JOIN back b USING (org_id, rule, window_start) \
               ORDER BY w.org_id, w.rule, w.window_start FOR UPDATE OF w) \
             UPDATE rate_windows AS w SET taken = GREATEST(w.taken - b.n, 0) \
               FROM back b JOIN locked l USING (org_id, rule, window_start) \
             WHERE w.org_id = b.org_id AND w.rule = b.rule AND w.window_start = b.window_start",
        )
        .bind(&orgs)
        .bind(&rules)
        .bind(&starts)
        .bind(&units)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn sweep(&self, before_ms: i64) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM rate_windows WHERE window_end < $1")
            .bind(before_ms)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// What a claim statement's returned row says.
fn claimed_in(row: &sqlx::postgres::PgRow) -> anyhow::Result<Claimed> {
    let get = |c: &str| -> anyhow::Result<u32> { Ok(row.try_get::<i32, _>(c)?.max(0) as u32) };
    Ok(Claimed {
        granted: get("last_grant")?,
        taken: get("taken")?,
        claimers: get("claimers")?,
    })
}

/// The windows' keys as the array parameters of a batch statement: org ids, rules, starts.
fn key_columns<'a>(
    windows: impl Iterator<Item = &'a WindowRef<'a>>,
) -> (Vec<i64>, Vec<&'a str>, Vec<i64>) {
    let (mut orgs, mut rules, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    for w in windows {
        orgs.push(w.org.0);
        rules.push(w.rule);
        starts.push(w.start_ms);
    }
    (orgs, rules, starts)
}

// ------------------------------------------------------------------ Redis

/// One hash per window (`t`: taken, `c`: claimers), expiring a minute after the window ends.
const CLAIM_SCRIPT: &str = r"
local taken = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
local grant = math.min(tonumber(ARGV[1]), math.max(tonumber(ARGV[2]) - taken, 0))
taken = redis.call('HINCRBY', KEYS[1], 't', grant)
local claimers = redis.call('HINCRBY', KEYS[1], 'c', tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {grant, taken, claimers}
";

const GIVE_BACK_SCRIPT: &str = r"
local taken = tonumber(redis.call('HGET', KEYS[1], 't') or '0')
if taken > 0 then
  redis.call('HSET', KEYS[1], 't', math.max(taken - tonumber(ARGV[1]), 0))
end
return 0
";

/// Kept after a window's end, so a node whose clock is a little behind still finds its count.
const REDIS_GRACE_MS: i64 = 60_000;

pub struct RedisWindows {
    client: redis::Client,
    /// One multiplexed connection, made again after an error.
    conn: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    claim: redis::Script,
    give_back: redis::Script,
}

impl RedisWindows {
    /// Does not connect yet: a Redis that is down at start is the same as one that went away.
    pub fn new(url: &str) -> anyhow::Result<Self> {
        let client = redis::Client::open(url)
            .map_err(|e| anyhow::anyhow!("invalid rate-limit Redis URL: {:?}", e.kind()))?;
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            claim: redis::Script::new(CLAIM_SCRIPT),
            give_back: redis::Script::new(GIVE_BACK_SCRIPT),
        })
    }

    async fn connection(&self) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let mut held = self.conn.lock().await;
        if let Some(c) = held.as_ref() {
            return Ok(c.clone());
        }
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Duration::from_millis(500))
            .set_response_timeout(Duration::from_millis(500));
        let c = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        *held = Some(c.clone());
        Ok(c)
    }

    async fn forget_connection(&self) {
        *self.conn.lock().await = None;
    }

    /// Runs a script on the shared connection; a failure drops the connection, so the next
    /// call connects again.
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> anyhow::Result<T> {
        let mut conn = self.connection().await?;
        match script.invoke_async(&mut conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                self.forget_connection().await;
                Err(e.into())
            }
        }
    }

    async fn give_back_one(&self, w: &WindowRef<'_>, n: u32) -> anyhow::Result<()> {
        let _: i64 = self.run(self.give_back.key(Self::key(w)).arg(n)).await?;
        Ok(())
    }

    fn key(w: &WindowRef<'_>) -> String {
        format!("keygate:rl:{}:{}:{}", w.org.0, w.rule, w.start_ms)
    }
}

#[async_trait]
impl WindowStore for RedisWindows {
    async fn claim(
        &self,
        w: &WindowRef<'_>,
        want: u32,
        limit: u32,
        first: bool,
    ) -> anyhow::Result<Claimed> {
        let ttl = (w.end_ms - w.start_ms).max(1) + REDIS_GRACE_MS;
        let (granted, taken, claimers): (i64, i64, i64) = self
            .run(
                self.claim
                    .key(Self::key(w))
                    .arg(want)
                    .arg(limit)
                    .arg(i32::from(first))
                    .arg(ttl),
            )
            .await?;
        Ok(Claimed {
            granted: granted.max(0) as u32,
            taken: taken.max(0) as u32,
            claimers: claimers.max(0) as u32,
        })
    }

    async fn claim_ahead(&self, claims: &[AheadClaim<'_>]) -> anyhow::Result<Vec<Claimed>> {
        // All sent at once on the one multiplexed connection: pipelined, one round trip.
        futures_util::future::try_join_all(
            claims
                .iter()
                .map(|c| self.claim(&c.window, c.want, c.limit, true)),
        )
        .await
    }

    async fn give_back(&self, shares: &[(WindowRef<'_>, u32)]) -> anyhow::Result<()> {
        futures_util::future::try_join_all(shares.iter().map(|(w, n)| self.give_back_one(w, *n)))
            .await?;
        Ok(())
    }

    async fn sweep(&self, _before_ms: i64) -> anyhow::Result<()> {
        // Keys expire by themselves.
        Ok(())
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}
