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
use crate::store::rate_windows::{AheadClaim, Claimed, WindowRef, WindowStore};

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

/// A busy rule's next window is claimed by the upkeep this long (ms) before it starts, so the
/// requests at a window's edge find their share there instead of each node's first one
/// waiting for the store: a fifth of the period, within 150 ms … 1 s (the upkeep runs every
/// 50 ms).
fn ahead_ms(period_ms: i64) -> i64 {
    (period_ms / 5).clamp(150, 1_000)
}

/// A claim's size for `expected` units out of `unclaimed` (at least 1) among `nodes` claiming:
/// with its margin, and one more, but never more than a fair part of what is left (an equal
/// share with one more node), at least 1.
fn ask(expected: u64, unclaimed: u32, nodes: u32) -> u32 {
    let fair = unclaimed.div_ceil(nodes + 1);
    let asked = with_margin(expected, unclaimed, nodes).saturating_add(1);
    (asked.min(u64::from(fair)) as u32).clamp(1, unclaimed)
}

/// What a node asks for when it expects to use `expected` units: half again as much when the
/// window has room to spare (four times that for each node and one more), so that a small rise
/// in traffic does not cost another round trip; exactly what it expects when units are
/// scarce, so none sit unused on one node while another is refused.
fn with_margin(expected: u64, unclaimed: u32, nodes: u32) -> u64 {
    let more = expected.saturating_add(expected / 2);
    let room = more.saturating_mul(4 * (u64::from(nodes) + 1));
    if room <= u64::from(unclaimed) {
        more
    } else {
        expected
    }
}

/// The start of the window of `period_ms` that holds `now` (windows are aligned to the clock,
/// the same on every node).
fn window_start(now: i64, period_ms: i64) -> i64 {
    now.div_euclid(period_ms) * period_ms
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
    /// When this node last claimed in this window, and `demand` then (the window's start and
    /// 0 before its first claim): the rate since, which follows traffic that just started or
    /// grew.
    mark: (i64, u32),
    prev_demand: Option<u32>,
    prev_claimers: u32,
    /// The store did not answer in this window: the share is the local fallback allowance,
    /// and the rest of the window is decided locally.
    fallback: bool,
    /// The next window, claimed ahead by the upkeep: taken over when that window starts.
    ahead: Option<Ahead>,
}

/// A claim for the window starting at `start`, made before it started.
struct Ahead {
    start: i64,
    /// `None` while the claim is under way.
    got: Option<(Claimed, i64)>,
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
            mark: (i64::MIN, 0),
            prev_demand: None,
            prev_claimers: 0,
            fallback: false,
            ahead: None,
        }
    }

    /// Moves to the window starting at `start`, taking over what was claimed ahead for it; a
    /// share of an ended window is void. Never back: a request whose time was read just before
    /// its node moved on (a thread preempted between reading the clock and its check) is
    /// counted in the window that is current now, and gives the window it missed no new start.
    fn roll(&mut self, start: i64, period_ms: i64, limit: u32) {
        if self.start >= start {
            return;
        }
        let prev_demand = match self.start {
            i64::MIN => None,
            s if s + period_ms == start => Some(self.demand),
            _ => Some(0),
        };
        let prev_claimers = self.claimers.max(u32::from(self.start != i64::MIN));
        let ahead = self.ahead.take().filter(|a| a.start == start);
        *self = Slot {
            start,
            mark: (start, 0),
            prev_demand,
            prev_claimers,
            ..Slot::new()
        };
        if let Some(a) = ahead {
            // Its claim counted this node among the window's claimers.
            self.joined = true;
            match a.got {
                // Unused until the window starts is not idle: it counts from the start.
                Some((c, at)) => self.granted(c, limit, at.max(start)),
                None => self.ahead = Some(a),
            }
        }
    }

    /// A claim's answer for the current window, at `at` (node clock).
    fn granted(&mut self, c: Claimed, limit: u32, at: i64) {
        self.share += c.granted;
        self.claimed += c.granted;
        self.seen_taken = c.taken;
        self.claimers = c.claimers;
        self.last_use = at;
        self.spent_at = (c.taken >= limit).then_some(at);
    }

    /// This node admitted a request of the rule within the last tenth of the period.
    fn in_use(&self, now: i64, period_ms: i64) -> bool {
        self.demand > 0 && now - self.last_use < idle_ms(period_ms)
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

type GlobalOrgs = FastMap<OrgId, Arc<GlobalOrg>>;

struct GlobalOrg {
    org: OrgId,
    source: String,
    rules: Vec<GlobalRule>,
    slots: Mutex<Vec<Slot>>,
}

impl GlobalOrg {
    /// Rule `i`'s window that starts at `start`, as the shared store knows it.
    fn window(&self, i: usize, start: i64) -> WindowRef<'_> {
        let rule = &self.rules[i];
        WindowRef {
            org: self.org,
            rule: &rule.id,
            start_ms: start,
            end_ms: start + rule.period_ms,
        }
    }
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

/// The most claims ahead, or shares given back, sent to the shared store in one round trip
/// (one statement on PostgreSQL): the upkeep claims the next window of every busy org at about
/// the same moment.
const STORE_BATCH: usize = 256;

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
    /// Orgs in [`LIMIT_SHARDS`] maps by org id, as for [`LocalLimits`]: a request's first
    /// decision is made under its map's lock, so the common case takes no reference out of it.
    orgs: Box<[Mutex<GlobalOrgs>]>,
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
            orgs: (0..LIMIT_SHARDS)
                .map(|_| Mutex::new(FastMap::default()))
                .collect(),
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

    /// `org`'s state for its rules as stored, in `orgs` (its shard, locked): built afresh if
    /// the provider changed them.
    fn org_in<'a>(
        orgs: &'a mut GlobalOrgs,
        org: OrgId,
        stored: Option<&str>,
    ) -> &'a Arc<GlobalOrg> {
        let source = stored.unwrap_or("");
        let current = orgs.get(&org).is_some_and(|o| o.source == source);
        if !current {
            orgs.insert(org, Arc::new(Self::build_org(org, stored)));
        }
        &orgs[&org]
    }

    fn build_org(org: OrgId, stored: Option<&str>) -> GlobalOrg {
        let source = stored.unwrap_or("");
        let rules = rules_of(stored);
        GlobalOrg {
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
        }
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
        let class = RateRule::class_of(method);
        // The common case, decided from this node's share under the shard's lock.
        let (org, first_claim) = {
            let shard = &self.orgs[(org.0 as u64 % LIMIT_SHARDS as u64) as usize];
            let mut orgs = shard.lock().unwrap_or_else(|e| e.into_inner());
            let o = Self::org_in(&mut orgs, org, stored_rules);
            match self.decide(o, class, at.0, true) {
                Step::Admit(info) => return Ok(info),
                Step::Refuse(denied) => return Err(denied),
                Step::Claim(i) => (o.clone(), i),
            }
        };
        let mut last_claim;
        // Each claim either gives this node units or finds the window spent; others may take
        // fresh units first, so a bounded number of such rounds. A claim whose window ended
        // while it was under way (a slow store at a window's edge) says nothing about the
        // limit and does not count, up to a hard bound.
        let (mut contended, mut rounds) = (0, 0);
        let mut step = Step::Claim(first_claim);
        loop {
            match step {
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
            if contended >= org.rules.len() + 4 || rounds >= MAX_ROUNDS {
                break;
            }
            step = self.decide(&org, class, self.clock.now().0, false);
        }
        let rule = &org.rules[last_claim];
        let now = self.clock.now().0;
        let end = window_start(now, rule.period_ms) + rule.period_ms;
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
            let limit = r.rule.limit;
            s.roll(window_start(now, r.period_ms), r.period_ms, limit);
            let start = s.start;
            if count_demand {
                s.demand = s.demand.saturating_add(1);
            }
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

    /// How much to ask for: about what this node will use in the rest of the window, by the
    /// larger of its rate in the window (early in it, in the last window) and its rate since
    /// its last claim (which follows traffic that just started or grew); never more than a
    /// fair part of what is left among the nodes claiming, at least 1.
    fn want(s: &Slot, limit: u32, now: i64, start: i64, period_ms: i64) -> u32 {
        let unclaimed = limit.saturating_sub(s.seen_taken).max(1);
        let nodes = s.claimers.max(s.prev_claimers).max(1);
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
        ask(
            expected.max(Self::at_recent_rate(s, now, period_ms, left)),
            unclaimed,
            nodes,
        )
    }

    /// How much to claim ahead for the next window: this node's rate in the current one (or
    /// since its last claim, if higher) over a whole period, within a fair part of the limit.
    fn want_ahead(s: &Slot, limit: u32, now: i64, period_ms: i64) -> u32 {
        let elapsed = (now - s.start).max(1) as u64;
        let expected = (u64::from(s.demand) * period_ms as u64 / elapsed)
            .max(Self::at_recent_rate(s, now, period_ms, period_ms as u64));
        ask(expected, limit.max(1), s.claimers.max(1))
    }

    /// The requests since this node's last claim in the window, at the same rate for `span`
    /// ms; measured over a tenth of the period at least, so that two requests a millisecond
    /// apart do not read as a flood.
    fn at_recent_rate(s: &Slot, now: i64, period_ms: i64, span: u64) -> u64 {
        let (at, demand) = s.mark;
        let since = u64::from(s.demand.saturating_sub(demand));
        let over = now.saturating_sub(at).max(period_ms / 10).max(1) as u64;
        since.saturating_mul(span) / over
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
        let (start, want, first) = {
            let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
            let s = &mut slots[i];
            s.roll(window_start(now, period), period, limit);
            let start = s.start;
            // A claim finished while this one waited for it.
            if s.share > 0 || s.spent(now, period) {
                return ClaimEnd::Done;
            }
            let first = !s.joined;
            s.joined = true;
            let want = Self::want(s, limit, now, start, period);
            s.mark = (now, s.demand);
            (start, want, first)
        };
        let w = org.window(i, start);
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
                s.granted(c, limit, now);
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

    /// Claims ahead, in one round trip per [`STORE_BATCH`], the next window of each
    /// `(org, rule, start, want)`. Each answer waits in its slot until that window begins, or
    /// joins the share at once if it began meanwhile. A failure changes nothing: the window's
    /// first request claims as usual, and finds out whether the store answers.
    async fn claim_ahead(&self, ahead: &[(Arc<GlobalOrg>, usize, i64, u32)]) {
        for batch in ahead.chunks(STORE_BATCH) {
            let claims: Vec<AheadClaim<'_>> = batch
                .iter()
                .map(|(org, i, start, want)| AheadClaim {
                    window: org.window(*i, *start),
                    want: *want,
                    limit: org.rules[*i].rule.limit,
                })
                .collect();
            let answers =
                match tokio::time::timeout(CLAIM_TIMEOUT, self.store.claim_ahead(&claims)).await {
                    Ok(Ok(answers)) => Some(answers),
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "could not claim rate-limit windows ahead");
                        None
                    }
                    Err(_) => {
                        tracing::debug!("claiming rate-limit windows ahead timed out");
                        None
                    }
                };
            let at = self.clock.now().0;
            for (n, (org, i, start, _)) in batch.iter().enumerate() {
                let answer = answers.as_ref().map(|a| a[n]);
                self.take_ahead_answer(org, *i, *start, answer, at);
            }
        }
    }

    /// The answer to a claim ahead of rule `i`'s window at `start` (`None`: it failed).
    fn take_ahead_answer(
        &self,
        org: &GlobalOrg,
        i: usize,
        start: i64,
        answer: Option<Claimed>,
        at: i64,
    ) {
        let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
        let s = &mut slots[i];
        let Some(c) = answer else {
            s.ahead.take_if(|a| a.start == start);
            return;
        };
        crate::telemetry::rate_limit_claim(self.store.kind(), c.granted > 0);
        self.nodes_seen.fetch_max(c.claimers, Ordering::Relaxed);
        if s.start == start {
            // The window began while the claim was under way (and other claims may have
            // answered since): add the units, keep the most the store has said.
            s.share += c.granted;
            s.claimed += c.granted;
            s.seen_taken = s.seen_taken.max(c.taken);
            s.claimers = s.claimers.max(c.claimers);
            s.last_use = at;
        } else if let Some(a) = s.ahead.as_mut().filter(|a| a.start == start) {
            a.got = Some((c, at));
        }
        // Otherwise that window ended before the answer came: its units are lost, and it
        // admitted fewer.
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
    /// needs), claims ahead the next window of the rules in use whose window is about to end,
    /// and once a minute sweeps ended windows from the store. `keygate serve` calls it every
    /// 50 ms; tests call it after moving their clock.
    pub async fn upkeep(&self) {
        let now = self.clock.now().0;
        let orgs: Vec<Arc<GlobalOrg>> = {
            let held = self.holding.lock().unwrap_or_else(|e| e.into_inner());
            held.values().cloned().collect()
        };
        let claim_ahead = !self.degraded();
        let mut ahead = Vec::new();
        // Shares going back, each with its rule's claim lock, held until the store has them.
        let mut backs = Vec::new();
        for org in &orgs {
            {
                let mut slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
                for (i, s) in slots.iter_mut().enumerate() {
                    let (period, limit) = (org.rules[i].period_ms, org.rules[i].rule.limit);
                    if s.start == i64::MIN {
                        continue;
                    }
                    // A window that began with no request yet: what was claimed ahead for it
                    // becomes its share, and can go back if it stays unused.
                    let current_start = window_start(now, period);
                    s.roll(current_start, period, limit);
                    let current = s.start == current_start;
                    // A share goes back under the rule's claim lock, held until the store has
                    // it: a claim made meanwhile would find the window short of those units and
                    // refuse requests the limit allows. A claim under way: next time.
                    if s.share > 0
                        && !s.fallback
                        && current
                        && now - s.last_use >= idle_ms(period)
                        && let Ok(one) = org.rules[i].claiming.try_lock()
                    {
                        backs.push(((org.window(i, s.start), s.share), one));
                        s.claimed -= s.share;
                        s.seen_taken = s.seen_taken.saturating_sub(s.share);
                        s.spent_at = None;
                        s.share = 0;
                    }
                    let end = s.start.saturating_add(period);
                    if claim_ahead
                        && current
                        && s.in_use(now, period)
                        && !s.fallback
                        && end - now <= ahead_ms(period)
                        && s.ahead.as_ref().is_none_or(|a| a.start != end)
                    {
                        let want = Self::want_ahead(s, limit, now, period);
                        s.ahead = Some(Ahead {
                            start: end,
                            got: None,
                        });
                        ahead.push((org.clone(), i, end, want));
                    }
                }
            }
            {
                // Under the map's lock: a claim granting meanwhile inserts after this. An org
                // in use stays, so that its next window is claimed ahead.
                let mut held = self.holding.lock().unwrap_or_else(|e| e.into_inner());
                let slots = org.slots.lock().unwrap_or_else(|e| e.into_inner());
                let keep = slots.iter().zip(&org.rules).any(|(s, r)| {
                    (s.share > 0 && !s.fallback) || s.ahead.is_some() || s.in_use(now, r.period_ms)
                });
                if !keep {
                    held.remove(&org.org);
                }
            }
        }
        // All in one round trip per batch, like the claims ahead. Lost if it fails: the
        // window then admits fewer, never more.
        for batch in backs.chunks(STORE_BATCH) {
            let shares: Vec<(WindowRef<'_>, u32)> = batch.iter().map(|(share, _)| *share).collect();
            match tokio::time::timeout(CLAIM_TIMEOUT, self.store.give_back(&shares)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "could not give back rate-limit shares"),
                Err(_) => tracing::debug!("giving back rate-limit shares timed out"),
            }
        }
        drop(backs);
        self.claim_ahead(&ahead).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_margin_only_where_the_window_has_room_to_spare() {
        // 1,000 expected of 1,000,000 left, two nodes: half again.
        assert_eq!(with_margin(1_000, 1_000_000, 2), 1_500);
        // Scarce: 300 expected with 1,000 left among three nodes: exactly what is expected.
        assert_eq!(with_margin(300, 1_000, 3), 300);
        // Just at the edge: 1,500 × 4 × 3 = 18,000.
        assert_eq!(with_margin(1_000, 18_000, 2), 1_500);
        assert_eq!(with_margin(1_000, 17_999, 2), 1_000);
        assert_eq!(with_margin(u64::MAX, u32::MAX, u32::MAX), u64::MAX);
    }

    #[test]
    fn a_window_claimed_ahead_becomes_the_share_when_it_starts_and_never_goes_back() {
        let mut s = Slot::new();
        s.roll(1_000, 1_000, 10);
        s.demand = 7;
        s.ahead = Some(Ahead {
            start: 2_000,
            got: Some((
                Claimed {
                    granted: 4,
                    taken: 6,
                    claimers: 2,
                },
                1_900,
            )),
        });
        // A late request's window: nothing moves.
        s.roll(0, 1_000, 10);
        assert_eq!((s.start, s.share), (1_000, 0));
        s.roll(2_000, 1_000, 10);
        assert_eq!(
            (s.start, s.share, s.claimed, s.seen_taken),
            (2_000, 4, 4, 6)
        );
        assert!(s.joined, "its claim counted this node");
        assert_eq!(s.prev_demand, Some(7));
        assert_eq!(
            s.last_use, 2_000,
            "unused before the window began is not idle"
        );
        // A claim ahead for a window that was skipped is void.
        s.ahead = Some(Ahead {
            start: 3_000,
            got: Some((
                Claimed {
                    granted: 4,
                    taken: 4,
                    claimers: 1,
                },
                2_900,
            )),
        });
        s.roll(4_000, 1_000, 10);
        assert_eq!((s.share, s.prev_demand), (0, Some(0)));
    }

    #[test]
    fn traffic_that_starts_mid_window_is_claimed_for_at_its_own_rate() {
        let mut s = Slot::new();
        s.roll(0, 1_000, 1);
        s.roll(1_000, 1_000, 1_000_000);
        assert_eq!(s.prev_demand, Some(0), "the last window was idle");
        // The first request, 351 ms in: one request in 351 ms says little.
        s.demand = 1;
        let first = GlobalLimits::want(&s, 1_000_000, 1_351, 1_000, 1_000);
        assert!(first <= 3, "{first}");
        s.mark = (1_351, 1);
        // 9 more within 2 ms: at least as many per tenth of the period, for what is left.
        s.demand = 10;
        let second = GlobalLimits::want(&s, 1_000_000, 1_353, 1_000, 1_000);
        assert!(second >= 9 * 647 / 100, "{second}");
        // Ahead, the same rate over a whole period.
        assert!(GlobalLimits::want_ahead(&s, 1_000_000, 1_353, 1_000) >= 90);
        // Units scarce (20 among two nodes): a fair part, no more.
        s.claimers = 2;
        assert_eq!(GlobalLimits::want(&s, 20, 1_353, 1_000, 1_000), 7);
    }
}
