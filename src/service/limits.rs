//! Per-org rate limits (GCRA, `governor`) driven by the injectable clock.

use super::FastMap;
use std::num::{NonZeroU32, NonZeroU64};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::middleware::StateInformationMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};

use crate::clock::SharedClock;
use crate::domain::ids::OrgId;
use crate::domain::limits::RateRule;

/// governor reads time through this adapter, so tests drive it with the manual clock.
#[derive(Clone)]
pub struct GovernorClock(pub SharedClock);

impl governor::clock::Clock for GovernorClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        Duration::from_millis(self.0.now().0.max(0) as u64)
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
        // An org's rules are only checked under its lock (`OrgLimiters::lock`): no other writer.
        let prev = self.0.load(Ordering::Acquire);
        let (out, next) = f(NonZeroU64::new(prev).map(|n| Nanos::from(n.get())))?;
        self.0.store(next.into(), Ordering::Release);
        Ok(out)
    }
}

type Limiter = RateLimiter<NotKeyed, RuleState, GovernorClock, StateInformationMiddleware>;

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
    /// Held while a request is checked against the rules, so it can be undone as a whole.
    lock: Mutex<()>,
}

pub struct RateLimits {
    clock: GovernorClock,
    orgs: Mutex<FastMap<OrgId, Arc<OrgLimiters>>>,
}

fn quota(rule: &RateRule) -> Quota {
    let limit = NonZeroU32::new(rule.limit.max(1)).unwrap_or(NonZeroU32::MIN);
    let per_cell = Duration::from_secs(rule.period_seconds.max(1) as u64) / limit.get();
    Quota::with_period(per_cell.max(Duration::from_nanos(1)))
        .expect("non-zero period")
        .allow_burst(limit)
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000) as u64
}

impl RateLimits {
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock: GovernorClock(clock),
            orgs: Mutex::new(FastMap::default()),
        }
    }

    fn limiters(&self, org: OrgId, stored: Option<&str>) -> Arc<OrgLimiters> {
        let source = stored.unwrap_or("");
        let mut orgs = self.orgs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = orgs.get(&org).filter(|l| l.source == source) {
            return l.clone();
        }
        // Stored rules were validated when the provider set them; fall back to the defaults
        // rather than run unlimited if they ever fail to parse.
        let rules = stored
            .and_then(|s| serde_json::from_str::<Vec<RateRule>>(s).ok())
            .unwrap_or_else(RateRule::defaults);
        let built = Arc::new(OrgLimiters {
            source: source.to_owned(),
            rules: rules
                .into_iter()
                .map(|r| {
                    let state = RuleState::default();
                    let l = Limiter::new(quota(&r), state.clone(), &self.clock);
                    (r, l, state)
                })
                .collect(),
            lock: Mutex::new(()),
        });
        orgs.insert(org, built.clone());
        built
    }

    /// Takes one request of `method` from each rule that applies to it, or from none of them
    /// when one refuses it.
    pub fn check(
        &self,
        org: OrgId,
        stored_rules: Option<&str>,
        method: &str,
    ) -> Result<Option<RateInfo>, RateDenied> {
        let limiters = self.limiters(org, stored_rules);
        let class = RateRule::class_of(method);
        let _one_at_a_time = limiters.lock.lock().unwrap_or_else(|e| e.into_inner());
        let now = governor::clock::Clock::now(&self.clock);
        let mut tightest: Option<RateInfo> = None;
        let mut taken: Vec<(&RuleState, u64)> = Vec::new();
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
                    let wait = not_until.wait_time_from(now);
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
