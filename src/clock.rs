//! Time is a parameter: everything asks a [`Clock`], so tests can drive it.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::domain::time::Millis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

pub type SharedClock = Arc<dyn Clock>;

/// The wall clock. The only place the process reads the system time.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Millis(since_epoch.as_millis() as i64)
    }
}

/// A clock that only moves when told to (tests).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Millis) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(start.0)))
    }
    pub fn set(&self, at: Millis) {
        self.0.store(at.0, Ordering::SeqCst);
    }
    pub fn advance_secs(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }
    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.0.load(Ordering::SeqCst))
    }
}

/// The monotonic clock read directly (`CLOCK_MONOTONIC`, the clock behind
/// `std::time::Instant`), and its coarse reading for checks that run on every request.
///
/// A lease check runs several times per API call; on a virtual machine a precise read costs
/// about 20 ns there, the coarse one a few. The coarse reading is the same clock as of the
/// last tick: never ahead of the precise one and behind it by at most its resolution, which
/// [`monotonic::coarse_slack_ns`] gives so that a check can allow for it. These are the only
/// raw clock reads of the process besides [`SystemClock`]: std offers no coarse clock.
pub mod monotonic {
    use std::sync::OnceLock;

    const ZERO: libc::timespec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };

    fn nanos(ts: libc::timespec) -> u64 {
        (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64)
    }

    fn read(clock: libc::clockid_t) -> u64 {
        let mut ts = ZERO;
        // SAFETY: clock_gettime only writes the struct passed; both clocks exist on every
        // Linux since 2.6.32, and a failure leaves 0 (read as "long ago", never as later).
        unsafe { libc::clock_gettime(clock, &mut ts) };
        nanos(ts)
    }

    /// Nanoseconds on the monotonic clock, exact.
    pub fn now_ns() -> u64 {
        read(libc::CLOCK_MONOTONIC)
    }

    /// Nanoseconds on the monotonic clock as of its last tick: at most
    /// [`coarse_slack_ns`] behind [`now_ns`].
    pub fn coarse_ns() -> u64 {
        read(libc::CLOCK_MONOTONIC_COARSE)
    }

    /// How far [`coarse_ns`] may lag [`now_ns`]: twice the coarse clock's resolution (one
    /// tick, 1–10 ms), so a late tick is allowed for too.
    pub fn coarse_slack_ns() -> u64 {
        static SLACK: OnceLock<u64> = OnceLock::new();
        *SLACK.get_or_init(|| {
            let mut res = ZERO;
            // SAFETY: clock_getres only writes the struct passed.
            let ok = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut res) } == 0;
            let res_ns = nanos(res);
            // Unknown resolution: assume the coarsest tick Linux has (HZ=100).
            2 * if ok && res_ns > 0 { res_ns } else { 10_000_000 }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::monotonic;

    #[test]
    fn the_coarse_monotonic_clock_lags_the_exact_one_by_at_most_its_slack() {
        let slack = monotonic::coarse_slack_ns();
        assert!(slack > 0 && slack <= 20_000_000, "slack {slack} ns");
        for _ in 0..10_000 {
            let exact_before = monotonic::now_ns();
            let coarse = monotonic::coarse_ns();
            let exact_after = monotonic::now_ns();
            assert!(
                coarse <= exact_after,
                "coarse {coarse} ahead of {exact_after}"
            );
            assert!(
                coarse + slack >= exact_before,
                "coarse {coarse} more than {slack} ns behind {exact_before}"
            );
        }
    }
}
