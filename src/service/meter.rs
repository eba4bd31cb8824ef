//! Metering (R9): calls are counted in memory on the request path and written to the store
//! in the background (`flush`, every second, and once more on graceful shutdown). A crash
//! loses at most the calls counted since the last flush; on one node the in-memory count is
//! the authority, so a threshold trips exactly when it is exceeded.

use super::FastMap;
use std::sync::Mutex;

use super::Services;
use crate::domain::ids::OrgId;
use crate::domain::org::CallThreshold;
use crate::domain::time::Millis;
use crate::store::StoreResult;

/// Periods of orgs without a threshold are counted by the hour.
pub const DEFAULT_PERIOD_SECS: i64 = 3600;

#[derive(Debug, Clone, Copy)]
struct Counter {
    period_seconds: i64,
    period_start: i64,
    /// Calls in the period, persisted or not.
    calls: i64,
    /// Calls not yet written to the store.
    unflushed: i64,
}

#[derive(Default)]
pub struct Meter {
    counters: Mutex<FastMap<OrgId, Counter>>,
    /// Unflushed calls of periods that have ended.
    pending: Mutex<Vec<(OrgId, i64, i64, i64)>>,
    /// Held by a flush from taking the counts until it has read the totals back (and by a
    /// reset), so a recount never reads the store while this node's counts are on their way
    /// to it.
    flushing: tokio::sync::Mutex<()>,
}

/// The period a call at `now` falls in: `(period_seconds, period_start)`.
pub fn period_of(threshold: Option<CallThreshold>, now: Millis) -> (i64, i64) {
    let period = threshold
        .map(|t| t.period_seconds)
        .unwrap_or(DEFAULT_PERIOD_SECS)
        .max(1);
    let secs = now.as_secs();
    (period, secs - secs.rem_euclid(period))
}

impl Meter {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<OrgId, Counter>> {
        self.counters.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one call if the org's counter is current; `None` when it must be loaded first.
    fn try_count(&self, org: OrgId, period: (i64, i64)) -> Option<i64> {
        let mut counters = self.lock();
        let c = counters.get_mut(&org)?;
        if (c.period_seconds, c.period_start) != period {
            return None;
        }
        c.calls += 1;
        c.unflushed += 1;
        Some(c.calls)
    }

    /// Installs a counter for the current period starting from `persisted` calls, then counts.
    fn install_and_count(&self, org: OrgId, period: (i64, i64), persisted: i64) -> i64 {
        let mut counters = self.lock();
        match counters.get_mut(&org) {
            Some(c) if (c.period_seconds, c.period_start) == period => {}
            other => {
                if let Some(old) = other.filter(|c| c.unflushed > 0) {
                    self.pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((org, old.period_seconds, old.period_start, old.unflushed));
                }
                counters.insert(
                    org,
                    Counter {
                        period_seconds: period.0,
                        period_start: period.1,
                        calls: persisted,
                        unflushed: 0,
                    },
                );
            }
        }
        let c = counters.get_mut(&org).expect("just inserted");
        c.calls += 1;
        c.unflushed += 1;
        c.calls
    }

    /// Takes every unflushed count, to be written.
    fn drain(&self) -> Vec<(OrgId, i64, i64, i64)> {
        let mut out = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        for (org, c) in self.lock().iter_mut() {
            if c.unflushed > 0 {
                out.push((*org, c.period_seconds, c.period_start, c.unflushed));
                c.unflushed = 0;
            }
        }
        out
    }

    /// After a flush: every node's counts are in the store, so the store's total for the
    /// period plus what this node counted since is the deployment-wide count (R9 across
    /// nodes, at most one flush interval behind).
    fn sync(&self, org: OrgId, period: (i64, i64), stored_total: i64) {
        if let Some(c) = self
            .lock()
            .get_mut(&org)
            .filter(|c| (c.period_seconds, c.period_start) == period)
        {
            c.calls = stored_total + c.unflushed;
        }
    }

    /// The counters of periods still running at `now`; ended, fully written ones are dropped
    /// so the map holds only active orgs.
    fn current_periods(&self, now: Millis) -> Vec<(OrgId, i64, i64)> {
        let mut counters = self.lock();
        counters
            .retain(|_, c| c.unflushed > 0 || now.as_secs() < c.period_start + c.period_seconds);
        counters
            .iter()
            .map(|(o, c)| (*o, c.period_seconds, c.period_start))
            .collect()
    }

    /// Puts counts back after a failed write, so they are tried again.
    fn restore(&self, deltas: Vec<(OrgId, i64, i64, i64)>) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(deltas);
    }

    /// The in-memory count of the org's current period, if it is loaded.
    pub fn current(&self, org: OrgId, period: (i64, i64)) -> Option<i64> {
        self.lock()
            .get(&org)
            .filter(|c| (c.period_seconds, c.period_start) == period)
            .map(|c| c.calls)
    }

    fn reset(&self, org: OrgId, period: (i64, i64)) {
        self.lock().insert(
            org,
            Counter {
                period_seconds: period.0,
                period_start: period.1,
                calls: 0,
                unflushed: 0,
            },
        );
    }
}

impl Services {
    /// Counts one call of `org`; returns the calls in the current period including this one.
    pub async fn count_call(
        &self,
        org: OrgId,
        threshold: Option<CallThreshold>,
        now: Millis,
    ) -> StoreResult<i64> {
        let period = period_of(threshold, now);
        let n = match self.meter.try_count(org, period) {
            Some(n) => n,
            None => {
                let persisted = self.store.usage_calls(org, period.0, period.1).await?;
                self.meter.install_and_count(org, period, persisted)
            }
        };
        match threshold {
            Some(t) if n > t.calls => self.recount(org, period).await,
            _ => Ok(n),
        }
    }

    /// This node's count went over the threshold: before the key is disabled for it, count
    /// again from the deployment-wide total. The count may predate a reset that another node
    /// made (a provider re-enabling the key there starts the period from zero); otherwise the
    /// store only grows, so this never lowers a count that is not stale.
    async fn recount(&self, org: OrgId, period: (i64, i64)) -> StoreResult<i64> {
        let _flushing = self.meter.flushing.lock().await;
        let total = self.store.usage_calls(org, period.0, period.1).await?;
        self.meter.sync(org, period, total);
        Ok(self.meter.current(org, period).unwrap_or(total))
    }

    /// Writes the counts gathered since the last flush, then reads back each active org's
    /// deployment-wide total (other nodes flush theirs too).
    pub async fn flush_usage(&self) -> StoreResult<()> {
        let _flushing = self.meter.flushing.lock().await;
        let started = std::time::Instant::now();
        let flushed = self.flush_locked().await;
        crate::telemetry::meter_flush(started, flushed.is_ok());
        flushed
    }

    async fn flush_locked(&self) -> StoreResult<()> {
        let deltas = self.meter.drain();
        if let Err(e) = self.store.add_usage(&deltas).await {
            self.meter.restore(deltas);
            return Err(e);
        }
        let periods = self.meter.current_periods(self.clock.now());
        let totals = self.store.usage_calls_of(&periods).await?;
        for ((org, period_seconds, period_start), total) in periods.into_iter().zip(totals) {
            self.meter.sync(org, (period_seconds, period_start), total);
        }
        Ok(())
    }

    /// Starts the org's current period from zero (on re-enable after R9).
    /// Runs `change` after this node's counts are written, with no flush in between.
    pub async fn with_usage_flushed<T>(
        &self,
        change: impl std::future::Future<Output = StoreResult<T>>,
    ) -> StoreResult<T> {
        let _flushing = self.meter.flushing.lock().await;
        self.flush_locked().await?;
        change.await
    }

    /// Restarts this node's count of the org's current period from zero.
    pub fn restart_local_usage(&self, org: OrgId, threshold: Option<CallThreshold>) {
        self.meter
            .reset(org, period_of(threshold, self.clock.now()));
    }

    /// The calls of the org's current period: the in-memory count, else the stored one.
    pub async fn current_usage(
        &self,
        org: OrgId,
        threshold: Option<CallThreshold>,
    ) -> StoreResult<(i64, i64, i64)> {
        let period = period_of(threshold, self.clock.now());
        let calls = match self.meter.current(org, period) {
            Some(n) => n,
            None => self.store.usage_calls(org, period.0, period.1).await?,
        };
        Ok((period.0, period.1, calls))
    }
}
