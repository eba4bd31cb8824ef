//! Per-org rate limits, decided at the instant the caller gives (the request's own time, read
//! once per decision from the injectable clock).
//!
//! On the embedded store one process serves every request: GCRA (`governor`) in memory
//! ([`LocalLimits`]). On PostgreSQL every node admits against counts shared through a
//! [`WindowStore`] ([`GlobalLimits`]): fixed windows aligned to the clock, from which each node
//! claims a share and admits locally while it lasts, so no window ever admits more than its
//! limit across the nodes.

use super::FastMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;
use crate::domain::ids::OrgId;
use crate::domain::limits::RateRule;
use crate::domain::time::Millis;
use crate::store::rate_windows::{WindowRef, WindowStore};

/// What governor reads as "now": the instant of the check under way in its shard, which
/// [`LocalLimits::check`] sets under the shard's lock. So the limit is decided at the same
/// instant as the session it admits, and one API call reads the clock once.
#[derive(Clone, Default)]
struct CheckInstant(Arc<AtomicU64>);

impl CheckInstant {
    fn set(&self, at: Millis) {
        self.0.store(at.0.max(0) as u64, Ordering::Relaxed);
    }
}

impl governor::clock::Clock for CheckInstant {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }
}

/// One rule's GCRA state (governor's theoretical arrival time; 0 = none yet), kept where
/// [`RateLimits::check`] can put it back: a request refused by one rule must not spend the
/// allowance of the rules checked before it.
#[derive(Clone, Default)]
struct RuleState(Arc<AtomicU64>);

impl StateStore for RuleState {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // An org's rules are only checked under its map's lock (`LocalLimits::check`): no other
        // writer.
        let prev = self.0.load(Ordering::Acquire);
        let (out, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
        self.0.store(next.into(), Ordering::Release);
        Ok(out)
    }
}

type Limiter = RateLimiter<NotKeyed, RuleState, CheckInstant, StateInformationMiddleware>;

/// What the `x-ratelimit-*` headers say: the rule closest to refusing this request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until that rule's allowance is whole again.
    pub reset_secs: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct RateDenied {
    pub info: RateInfo,
    pub retry_after_secs: u64,
}

struct OrgLimiters {
    /// The rules as stored (JSON, or empty for the defaults), to notice a change.
    source: String,
    rules: Vec<(RateRule, Limiter, RuleState)>,
}

/// Orgs' limiters are kept in this many maps, by org id. A request is checked against its
/// org's rules under its map's lock, so it can be undone as a whole: one lock per API call
/// (rather than the map's and then the org's own), and orgs in other maps never wait for it.
const LIMIT_SHARDS: usize = 64;

pub struct LocalLimits {
    shards: Box<[LimitShard]>,
}

/// Some orgs' limiters, and the instant they are checked at (set under `orgs`' lock).
#[derive(Default)]
struct LimitShard {
    orgs: Mutex<FastMap<OrgId, OrgLimiters>>,
    instant: CheckInstant,
}

fn quota(rule: &RateRule) -> Quota {
    let limit = NonZeroU32::new(rule.limit.max(1)).unwrap_or(NonZeroU32::MIN);
    let per_cell = Duration::from_secs(rule.period_seconds.max(1) as u64) / limit.get();
    Quota::with_period(per_cell.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(limit)
}

/// An org's rules as stored (JSON; `None` = the defaults). They were validated when the
/// provider set them; fall back to the defaults rather than run unlimited if they ever fail
/// to parse.
fn rules_of(stored: Option<&str>) -> Vec<RateRule> {
    stored
        .and_then(|s| serde_json::from_str::<Vec<RateRule>>(s).ok())
        .unwrap_or_else(RateRule::defaults)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

impl LocalLimits {
    pub fn new() -> Self {
        Self {
            shards: (0..LIMIT_SHARDS).map(|_| LimitShard::default()).collect(),
        }
    }

    fn build(instant: &CheckInstant, stored: Option<&str>) -> OrgLimiters {
        OrgLimiters {
            source: stored.unwrap_or("").to_owned(),
            rules: rules_of(stored)
                .into_iter()
                .map(|r| {
                    let state = RuleState::default();
                    let l = Limiter::new(quota(&r), state.clone(), instant);
                    (r, l, state)
                })
                .collect(),
        }
    }

    /// Takes one request of `method` at `at` from each rule that applies to it, or from none
    /// of them when one refuses it.
    pub fn check(
        &self,
        org: OrgId,
        stored_rules: Option<&str>,
        method: &str,
        at: Millis,
    ) -> Result<Option<RateInfo>, RateDenied> {
        let shard = &self.shards[(org.0 as u64 % LIMIT_SHARDS as u64) as usize];
        let mut orgs = shard.orgs.lock().unwrap_or_else(|e| e.into_inner());
        shard.instant.set(at);
        let limiters = orgs
            .entry(org)
            .or_insert_with(|| Self::build(&shard.instant, stored_rules));
        if limiters.source != stored_rules.unwrap_or("") {
            // The provider changed the org's rules: they start afresh.
            *limiters = Self::build(&shard.instant, stored_rules);
        }
        let limiters = &*limiters;
        let class = RateRule::class_of(method);
        let mut tightest: Option<RateInfo> = None;
        // On the stack for the usual few rules: this runs on every API call.
        let mut taken: smallvec::SmallVec<[(&RuleState, u64); 4]> = smallvec::SmallVec::new();
        for (rule, limiter, state) in limiters.rules.iter().filter(|(r, ..)| r.applies_to(class)) {
            let before = state.0.load(Ordering::Acquire);
            match limiter.check() {
                Ok(snapshot) => {
                    taken.push((state, before));
                    let remaining = snapshot.remaining_burst_capacity();
                    let used = rule.limit.saturating_sub(remaining);
                    let info = RateInfo {
                        limit: rule.limit,
                        remaining,
                        reset_secs: ceil_secs(quota(rule).replenish_interval() * used),
                    };
                    if tightest.is_none_or(|t| info.remaining < t.remaining) {
                        tightest = Some(info);
                    }
                }
                Err(not_until) => {
                    // Refused: give back what the rules before this one took.
                    for (state, before) in taken {
                        state.0.store(before, Ordering::Release);
                    }
                    // The instant governor judged by (this check's `at`).
                    let wait =
                        not_until.wait_time_from(governor::clock::Clock::now(&shard.instant));
                    let retry = ceil_secs(wait).max(1);
                    let info = RateInfo {
                        limit: rule.limit,
                        remaining: 0,
                        reset_secs: ceil_secs(quota(rule).replenish_interval() * rule.limit),
                    };
                    return Err(RateDenied {
                        info,
                        retry_after_secs: retry,
                    });
                }
            }
        }
        Ok(tightest)
    }
}

impl Default for LocalLimits {
    fn default() -> Self {
        Self::new()
    }
}

// ------------------------------------------------------------------ which one runs

/// The limits this node applies: [`LocalLimits`] on the embedded store, [`GlobalLimits`] on
/// PostgreSQL.
pub enum RateLimits {
    Local(LocalLimits),
    Global(Arc<GlobalLimits>),
}

impl RateLimits {
    /// One process owns the database: its own GCRA buckets are the whole truth.
    pub fn local() -> Self {
        Self::Local(LocalLimits::new())
    }

    /// Counts shared by every node through `store`; `fallback_nodes` is the N of the local
    /// fallback's `ceil(limit / N)` while the store does not answer.
    pub fn global(clock: SharedClock, store: Arc<dyn WindowStore>, fallback_nodes: u32) -> Self {
        Self::Global(Arc::new(GlobalLimits::new(clock, store, fallback_nodes)))
    }

    pub fn global_limits(&self) -> Option<&Arc<GlobalLimits>> {
        match self {
            Self::Global(g) => Some(g),
            Self::Local(_) => None,
        }
    }

    /// Takes one request of `method` at `at` (the request's time, as its session was judged)
    /// from each rule that applies to it, or from none of them when one refuses it. Awaits
    /// only when a node must claim more from the shared store.
    pub async fn check(
        &self,
        org: OrgId,
        stored_rules: Option<&str>,
        method: &str,
        at: Millis,
    ) -> Result<Option<RateInfo>, RateDenied> {
        match self {
            Self::Local(l) => l.check(org, stored_rules, method, at),
            Self::Global(g) => g.check(org, stored_rules, method, at).await,
        }
    }
}

// ------------------------------------------------------------------ global (PostgreSQL)

/// A claim that has not answered by then is treated as a store that does not answer.
const CLAIM_TIMEOUT: Duration = Duration::from_millis(600);
/// While the store does not answer, one claim per this long (ms, node clock) tries it again;
/// the others go straight to the local fallback.
const PROBE_EVERY_MS: i64 = 1_000;
/// Windows that ended this long ago (ms) are swept from the store, once per this long.
const SWEEP_AFTER_MS: i64 = 60_000;

/// A share unused this long is given back, so a node that went quiet does not sit on
/// allowance another node needs: a tenth of the period, within 50 ms … 1 s.
fn idle_ms(period_ms: i64) -> i64 {
    (period_ms / 10).clamp(50, 1_000)
}

/// A node that found its window spent asks again after this long (others may have given back
/// units meanwhile); requests in between are refused without a round trip.
fn recheck_ms(period_ms: i64) -> i64 {
    (period_ms / 20).clamp(25, 1_000)
}

fn ceil_ms_to_secs(ms: i64) -> u64 {
    (ms.max(0) as u64).div_ceil(1000)
}

/// One rule of one org on this node, in the window it last saw.
struct Slot {
    /// Window start (ms); `i64::MIN` before the first request.
    start: i64,
    /// Units claimed from the store and not yet spent: what this node admits without asking.
    share: u32,
    /// The window's count (all nodes' claims) as the last answer of the store said, minus
    /// what this node gave back since.
    seen_taken: u32,
    /// Nodes that claimed in this window, as last seen.
    claimers: u32,
    /// This node has claimed in this window (and so counts among `claimers`).
    joined: bool,
    /// What this node holds of the window's count (claimed minus given back): bounds the
    /// local fallback.
    claimed: u32,
    /// When the store last said the window is spent.
    spent_at: Option<i64>,
    /// When the share was last used or topped up.
    last_use: i64,
    /// Requests that asked this rule in this window (admitted or not): sizes the next claim.
    demand: u32,
    prev_demand: Option<u32>,
    prev_claimers: u32,
    /// The store did not answer in this window: the share is the local fallback allowance,
    /// and the rest of the window is decided locally.
    fallback: bool,
}

impl Slot {
    fn new() -> Self {
        Slot {
            start: i64::MIN,
            share: 0,
            seen_taken: 0,
            claimers: 0,
            joined: false,
            claimed: 0,
            spent_at: None,
            last_use: 0,
            demand: 0,
            prev_demand: None,
            prev_claimers: 0,
            fallback: false,
        }
    }

    /// Moves to the window starting at `start`; a share of an ended window is void.
    fn roll(&mut self, start: i64, period_ms: i64) {
        if self.start == start {
            return;
        }
        let prev_demand = match self.start {
            i64::MIN => None,
            s if s + period_ms == start => Some(self.demand),
            _ => Some(0),
        };
        let prev_claimers = self.claimers.max(u32::from(self.start != i64::MIN));
        *self = Slot {
            start,
            prev_demand,
            prev_claimers,
            ..Slot::new()
        };
    }

    fn spent(&self, now: i64, period_ms: i64) -> bool {
        self.fallback
            || self
                .spent_at
                .is_some_and(|at| now - at < recheck_ms(period_ms))
    }
}

struct GlobalRule {
    rule: RateRule,
    /// The rule's identity in the store.
    id: String,
    period_ms: i64,
    /// Held while this node claims for the rule: requests that find no share meanwhile wait
    /// for that one claim instead of each sending their own.
    claiming: tokio::sync::Mutex<()>,
}

struct GlobalOrg {
    org: OrgId,
    source: String,
    rules: Vec<GlobalRule>,
    slots: Mutex<Vec<Slot>>,
}

/// How a claim ended, for the bound on a check's rounds.
#[derive(Debug, PartialEq, Eq)]
enum ClaimEnd {
    /// Its answer (or the fallback) applies to the current window, or another claim's did.
    Done,
    /// The window ended while it was under way: its answer applies to no window now.
    WindowMoved,
}

/// In an org's first window on a node, a claim asks for this many times the requests seen so
/// far (at most a fair part of what is left).
const FIRST_CLAIM_FACTOR: u64 = 4;

/// The most rounds of one check, whatever ended them (each window move costs one).
const MAX_ROUNDS: usize = 16;

enum Step {
    Admit(Option<RateInfo>),
    Refuse(RateDenied),
    Claim(usize),
}

/// An org's limits across all nodes: fixed windows aligned to the clock (window =
/// floor(now / period)), each counted in the shared store, which only grows by claims that
/// never take it past the limit. So in every window at most `limit` requests are admitted by
/// all nodes together, as long as the store answers (`docs/deploy.md` for the fallback).
pub struct GlobalLimits {
    clock: SharedClock,
    store: Arc<dyn WindowStore>,
    fallback_nodes: u32,
    /// The most nodes seen claiming in one window: the fallback divides by at least this.
    nodes_seen: AtomicU32,
    orgs: Mutex<FastMap<OrgId, Arc<GlobalOrg>>>,
    /// The orgs this node holds units of (or was granted some since the last upkeep): the
    /// only ones the upkeep visits, so its cost follows the busy orgs, not all of them.
    holding: Mutex<FastMap<OrgId, Arc<GlobalOrg>>>,
    degraded: AtomicBool,
    next_probe: AtomicI64,
    swept_at: AtomicI64,
    /// Windows of a rule decided by the local fallback, and the last error that caused one.
    fallbacks: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl GlobalLimits {
    pub fn new(clock: SharedClock, store: Arc<dyn WindowStore>, fallback_nodes: u32) -> Self {
        Self {
            clock,
            store,
            fallback_nodes: fallback_nodes.max(1),
            nodes_seen: AtomicU32::new(1),
            orgs: Mutex::new(FastMap::default()),
            holding: Mutex::new(FastMap::default()),
            degraded: AtomicBool::new(false),
            next_probe: AtomicI64::new(0),
            swept_at: AtomicI64::new(i64::MIN),
            fallbacks: AtomicU64::new(0),
            last_error: Mutex::new(None),
        }
    }

    /// Whether the last claim found the store unreachable.
    pub fn degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// How many windows of a rule this node decided by the local fallback, and why the last.
    pub fn fallbacks(&self) -> (u64, Option<String>) {
        let why = self
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (self.fallbacks.load(Ordering::Relaxed), why)
    }

    /// The N of the fallback allowance `ceil(limit / N)`.
    pub fn fallback_divisor(&self) -> u32 {
        self.fallback_nodes
            .max(self.nodes_seen.load(Ordering::Relaxed))
    }

    fn org(&self, org: OrgId, stored: Option<&str>) -> Arc<GlobalOrg> {
        let source = stored.unwrap_or("");
        let mut orgs = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = orgs.get(&org).filter(|o| o.source == source) {
            return o.clone();
        }
        let rules = rules_of(stored);
        let built = Arc::new(GlobalOrg {
            org,
            source: source.to_owned(),
            slots: Mutex::new(rules.iter().map(|_| Slot::new()).collect()),
            rules: rules
                .into_iter()
                .enumerate()
                .map(|(i, rule)| GlobalRule {
                    id: format!(
                        "{i}:{}:{}/{}",
                        rule.methods.join(","),
                        rule.limit,
                        rule.period_seconds
                    ),
                    period_ms: i64::from(rule.period_seconds.max(1)) * 1000,
                    rule,
                    claiming: tokio::sync::Mutex::new(()),
                })
                .collect(),
        });
        orgs.insert(org, built.clone());
        built
    }

    /// [`RateLimits::check`]: decided at `at` while this node's shares last; after a claim
    /// (which awaits the store) at the clock's time then.
    pub async fn check(
        &self,
        org: OrgId,
        stored_rules: Option<&str>,
        method: &str,
        at: Millis,
    ) -> Result<Option<RateInfo>, RateDenied> {
        let org = self.org(org, stored_rules);
        let class = RateRule::class_of(method);
        let mut last_claim = 0;
        // Each claim either gives this node units or finds the window spent; others may take
        // fresh units first, so a bounded number of such rounds. A claim whose window ended
        // while it was under way (a slow store at a window's edge) says nothing about the
        // limit and does not count, up to a hard bound.
        let (mut contended, mut rounds) = (0, 0);
        while contended < org.rules.len() + 4 && rounds < MAX_ROUNDS {
            let now = if rounds == 0 {
                at.0
            } else {
                self.clock.now().0
            };
            match self.decide(&org, class, now, rounds == 0) {
                Step::Admit(info) => return Ok(info),
                Step::Refuse(denied) => return Err(denied),
                Step::Claim(i) => {
                    last_claim = i;
                    if self.claim(&org, i).await != ClaimEnd::WindowMoved {
                        contended += 1;
                    }
                }
            }
            rounds += 1;
        }
        let rule = &org.rules[last_claim];
        let now = self.clock.now().0;
        let end = now.div_euclid(rule.period_ms) * rule.period_ms + rule.period_ms;
        let reset_secs = ceil_ms_to_secs(end - now);
        Err(RateDenied {
            info: RateInfo {
                limit: rule.rule.limit,
                remaining: 0,
                reset_secs,
            },
            retry_after_secs: 1,
        })
    }

    /// The local part of a check (no await): take one unit from each applicable rule's share,
    /// or put back what was taken and say which rule needs a claim, or refuse.
    fn decide(&self, org: &GlobalOrg, class: &str, now: i64, count_demand: bool) -> Step {
        let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut took: u64 = 0;
        let mut tightest: Option<RateInfo> = None;
        let mut stop = None;
        for (i, r) in org.rules.iter().enumerate() {
            if !r.rule.applies_to(class) {
                continue;
            }
            let s = &mut slots[i];
            let start = now.div_euclid(r.period_ms) * r.period_ms;
            s.roll(start, r.period_ms);
            if count_demand {
                s.demand = s.demand.saturating_add(1);
            }
            let limit = r.rule.limit;
            let reset_secs = ceil_ms_to_secs(start + r.period_ms - now);
            if s.share > 0 {
                s.share -= 1;
                took |= 1u64 << (i % 64);
                // What the node knows is left: the unclaimed part as last seen, plus its own
                // unspent share (in the fallback, only the local allowance).
                let remaining = if s.fallback {
                    s.share
                } else {
                    limit
                        .saturating_sub(s.seen_taken)
                        .saturating_add(s.share)
                        .min(limit.saturating_sub(1))
                };
                let info = RateInfo {
                    limit,
                    remaining,
                    reset_secs,
                };
                if tightest.is_none_or(|t| info.remaining < t.remaining) {
                    tightest = Some(info);
                }
                continue;
            }
            stop = Some(if s.spent(now, r.period_ms) {
                Step::Refuse(RateDenied {
                    info: RateInfo {
                        limit,
                        remaining: 0,
                        reset_secs,
                    },
                    retry_after_secs: reset_secs.max(1),
                })
            } else {
                Step::Claim(i)
            });
            break;
        }
        match stop {
            None => {
                // Only a unit spent counts as use: a share that only ever gets put back (its
                // requests refused by another rule) is idle and goes back to the store.
                for (i, s) in slots.iter_mut().enumerate() {
                    if took & (1u64 << (i % 64)) != 0 {
                        s.last_use = now;
                    }
                }
                Step::Admit(tightest)
            }
            Some(step) => {
                // Refused or waiting: the rules before this one give their unit back.
                for (i, s) in slots.iter_mut().enumerate() {
                    if took & (1u64 << (i % 64)) != 0 {
                        s.share += 1;
                    }
                }
                step
            }
        }
    }

    /// How much to ask for: about what this node will use in the rest of the window (from
    /// its demand so far, or in the last window), never more than a fair part of what is
    /// left among the nodes claiming, at least 1.
    fn want(s: &Slot, limit: u32, now: i64, start: i64, period_ms: i64) -> u32 {
        let unclaimed = limit.saturating_sub(s.seen_taken).max(1);
        let nodes = s.claimers.max(s.prev_claimers).max(1);
        let fair = unclaimed.div_ceil(nodes + 1);
        let left = (start + period_ms - now).max(1) as u64;
        let elapsed = now - start;
        let expected = if elapsed * 10 >= period_ms {
            u64::from(s.demand) * left / elapsed.max(1) as u64
        } else {
            match s.prev_demand {
                Some(d) => u64::from(d) * left / period_ms as u64,
                // No history (an org's first window on this node): a few times what has
                // asked so far, not a fair part of the limit. Taking half the limit on the
                // first request left a third node nothing for a tenth of the window (a 429
                // under a limit of 1,000,000 on the 3rd call of a sequential client).
                None => u64::from(s.demand).saturating_mul(FIRST_CLAIM_FACTOR),
            }
        };
        (expected.saturating_add(1).min(u64::from(fair)) as u32).clamp(1, unclaimed)
    }

    fn may_try_store(&self, now: i64) -> bool {
        if !self.degraded.load(Ordering::Relaxed) {
            return true;
        }
        let next = self.next_probe.load(Ordering::Relaxed);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now + PROBE_EVERY_MS,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// Claims more of rule `i`'s window for this node, or, if the store does not answer,
    /// switches that window to the local fallback. One claim at a time per rule.
    async fn claim(&self, org: &Arc<GlobalOrg>, i: usize) -> ClaimEnd {
        let rule = &org.rules[i];
        let _one = rule.claiming.lock().await;
        let now = self.clock.now().0;
        let (period, limit) = (rule.period_ms, rule.rule.limit);
        let start = now.div_euclid(period) * period;
        let (want, first) = {
            let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut slots[i];
            s.roll(start, period);
            // A claim finished while this one waited for it.
            if s.share > 0 || s.spent(now, period) {
                return ClaimEnd::Done;
            }
            let first = !s.joined;
            s.joined = true;
            (Self::want(s, limit, now, start, period), first)
        };
        let w = WindowRef {
            org: org.org,
            rule: &rule.id,
            start_ms: start,
            end_ms: start + period,
        };
        let answer = if self.may_try_store(now) {
            match tokio::time::timeout(CLAIM_TIMEOUT, self.store.claim(&w, want, limit, first))
                .await
            {
                Ok(answer) => answer,
                Err(_) => Err(anyhow::anyhow!("no answer within {CLAIM_TIMEOUT:?}")),
            }
        } else {
            Err(anyhow::anyhow!("still unreachable"))
        };
        let now = self.clock.now().0;
        let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut slots[i];
        if s.start != start {
            return ClaimEnd::WindowMoved;
        }
        match answer {
            Ok(c) => {
                self.store_answers();
                crate::telemetry::rate_limit_claim(self.store.kind(), c.granted > 0);
                s.share += c.granted;
                s.claimed += c.granted;
                s.seen_taken = c.taken;
                s.claimers = c.claimers;
                s.last_use = now;
                s.spent_at = (c.taken >= limit).then_some(now);
                self.nodes_seen.fetch_max(c.claimers, Ordering::Relaxed);
                if c.granted > 0 {
                    drop(slots);
                    self.holding
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(org.org, org.clone());
                }
            }
            Err(e) => {
                self.store_failed(now, &e);
                let allowance = limit.div_ceil(self.fallback_divisor());
                s.fallback = true;
                s.share += allowance.saturating_sub(s.claimed);
                s.claimed = s.claimed.max(allowance);
                s.last_use = now;
            }
        }
        ClaimEnd::Done
    }

    fn store_answers(&self) {
        if self.degraded.swap(false, Ordering::AcqRel) {
            tracing::info!(
                store = self.store.kind(),
                "rate-limit store answers again: limits are global again from the next window"
            );
        }
    }

    fn store_failed(&self, now: i64, e: &anyhow::Error) {
        crate::telemetry::rate_limit_fallback(self.store.kind());
        self.fallbacks.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
        if !self.degraded.swap(true, Ordering::AcqRel) {
            self.next_probe
                .store(now + PROBE_EVERY_MS, Ordering::Relaxed);
            tracing::warn!(
                store = self.store.kind(),
                error = %e,
                fallback_nodes = self.fallback_divisor(),
                "rate-limit store unreachable: this node admits at most ceil(limit / N) per window on its own until it answers"
            );
        }
    }

    /// Gives back shares unused for a while (so a quiet node does not hold what a busy one
    /// needs), and once a minute sweeps ended windows from the store. `keygate serve` calls
    /// it every 50 ms; tests call it after moving their clock.
    pub async fn upkeep(&self) {
        let now = self.clock.now().0;
        let orgs: Vec<Arc<GlobalOrg>> = {
            let held = self.holding.lock().unwrap_or_else(|e| e.into_inner());
            held.values().cloned().collect()
        };
        for org in orgs {
            let back: Vec<(usize, u32, i64)> = {
                let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
                let mut back = Vec::new();
                for (i, s) in slots.iter_mut().enumerate() {
                    let period = org.rules[i].period_ms;
                    let current = now.div_euclid(period) * period == s.start;
                    if s.share > 0 && !s.fallback && current && now - s.last_use >= idle_ms(period)
                    {
                        back.push((i, s.share, s.start));
                        s.claimed -= s.share;
                        s.seen_taken = s.seen_taken.saturating_sub(s.share);
                        s.spent_at = None;
                        s.share = 0;
                    }
                }
                back
            };
            {
                // Under the map's lock: a claim granting meanwhile inserts after this.
                let mut held = self.holding.lock().unwrap_or_else(|e| e.into_inner());
                let slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
                if !slots.iter().any(|s| s.share > 0 && !s.fallback) {
                    held.remove(&org.org);
                }
            }
            for (i, n, start) in back {
                let rule = &org.rules[i];
                let w = WindowRef {
                    org: org.org,
                    rule: &rule.id,
                    start_ms: start,
                    end_ms: start + rule.period_ms,
                };
                // Lost if it fails: the window then admits fewer, never more.
                match tokio::time::timeout(CLAIM_TIMEOUT, self.store.give_back(&w, n)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "could not give back a rate-limit share")
                    }
                    Err(_) => tracing::debug!("giving back a rate-limit share timed out"),
                }
            }
        }
        let swept = self.swept_at.load(Ordering::Relaxed);
        if now.saturating_sub(swept) >= SWEEP_AFTER_MS && !self.degraded() {
            self.swept_at.store(now, Ordering::Relaxed);
            if let Ok(Err(e)) =
                tokio::time::timeout(CLAIM_TIMEOUT, self.store.sweep(now - SWEEP_AFTER_MS)).await
            {
                tracing::debug!(error = %e, "could not sweep ended rate-limit windows");
            }
        }
    }
}
