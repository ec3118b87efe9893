//! Rate limits: the token bucket, and the log lines that someone else can provoke.
//!
//! A hostile vfio-user client, or a flood from the network, can make the same warning fire
//! tens of thousands of times a second; logging each would cost more than the event and drown
//! everything else. A [`LogLimiter`] is a token bucket (the generic cell rate algorithm): up to
//! `burst` events pass at once, then `per_second` on average. An event that passes reports how
//! many were suppressed since the one before it, so the log still says how much happened:
//! `suppressed=4211` on the next line. Counters, not logs, are the exact record.
//!
//! [`warn_limited!`](crate::warn_limited) and [`info_limited!`](crate::info_limited) wrap
//! `tracing::warn!` / `tracing::info!` with a limiter. Time is a
//! parameter ([`LogLimiter::check_at`]) so the behaviour is tested without sleeping.
//!
//! [`TokenBucket`] is the crate's one token bucket; the transport's handshake budget, per-source
//! limits and log limits drive it on their own sans-I/O clock.
//!
//! A leaf utility: it imports nothing from the crate but the lock helper, and every layer may use
//! it.

use crate::sync::MutexExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket (the generic cell rate algorithm) on the caller's clock: `per_second` events on
/// average, at most `burst` at once. The caller says how much time passed since its last call,
/// so std's clock (the log limiters here) and the transport's sans-I/O clock (its handshake
/// budget and per-source limits) share this one implementation. Integer arithmetic: credit is
/// counted in nanoseconds, one event costs `1 s / per_second`.
///
/// [`TokenBucket::per_unit`] builds a bucket for weighted costs (bytes per second, where one TLP
/// costs its data bytes): credit is then counted in unit-nanoseconds (`rate` per nanosecond
/// elapsed, `10⁹` per unit), which is exact for any rate up to `u64::MAX / 10⁹` units of burst.
/// The appliance's per-function policy (`appliance::policy`) shapes TLPs with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    /// Credit, at most `capacity`.
    credit: u64,
    /// Credit one unit (event) costs.
    interval: u64,
    /// Most credit the bucket holds (`burst` units).
    capacity: u64,
    /// Credit earned per nanosecond.
    rate: u64,
}

impl TokenBucket {
    /// A full bucket: `burst` events (at least 1) at once, then `per_second` (at least 1).
    pub const fn new(per_second: u32, burst: u32) -> Self {
        let per_second = if per_second == 0 { 1 } else { per_second };
        let burst = if burst == 0 { 1 } else { burst };
        let interval = 1_000_000_000 / per_second as u64;
        let capacity = interval * burst as u64;
        TokenBucket {
            credit: capacity,
            interval,
            capacity,
            rate: 1,
        }
    }

    /// A full bucket of weighted units: `per_second` units (at least 1) on average, at most
    /// `burst` units (at least 1) at once; a cost is taken with [`take_n`](Self::take_n).
    pub const fn per_unit(per_second: u64, burst: u64) -> Self {
        let rate = if per_second == 0 { 1 } else { per_second };
        let burst = if burst == 0 { 1 } else { burst };
        let interval: u64 = 1_000_000_000;
        TokenBucket {
            credit: interval.saturating_mul(burst),
            interval,
            capacity: interval.saturating_mul(burst),
            rate,
        }
    }

    /// `elapsed` passed since the last call: earn its credit (up to the burst).
    pub fn earn(&mut self, elapsed: Duration) {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.credit = self
            .credit
            .saturating_add(ns.saturating_mul(self.rate))
            .min(self.capacity);
    }

    /// Take one event's credit if there is enough.
    pub fn take(&mut self) -> bool {
        self.take_n(1)
    }

    /// The credit `n` units cost; a cost above the burst costs the whole burst (so a single
    /// item larger than the burst still passes, once the bucket is full).
    fn cost(&self, n: u64) -> u64 {
        self.interval.saturating_mul(n).min(self.capacity)
    }

    /// Take `n` units' credit if there is enough (all or nothing).
    pub fn take_n(&mut self, n: u64) -> bool {
        let cost = self.cost(n);
        if self.credit >= cost {
            self.credit -= cost;
            true
        } else {
            false
        }
    }

    /// How long until [`take_n`](Self::take_n)`(n)` succeeds (zero: now), with no other take
    /// in between. Rounded up to the next nanosecond.
    pub fn wait_for(&self, n: u64) -> Duration {
        let missing = self.cost(n).saturating_sub(self.credit);
        Duration::from_nanos(missing.div_ceil(self.rate))
    }

    /// Whether the bucket would be full again after `elapsed` more (an idle source, which
    /// can be forgotten: a new full bucket is the same thing).
    pub fn full_after(&self, elapsed: Duration) -> bool {
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.credit.saturating_add(ns.saturating_mul(self.rate)) >= self.capacity
    }
}

#[derive(Debug)]
struct Bucket {
    tokens: TokenBucket,
    last: Option<Instant>,
    suppressed: u64,
}

/// At most `burst` events at once and `per_second` on average; see the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    bucket: Mutex<Bucket>,
}

impl LogLimiter {
    /// A limiter letting `burst` events through at once (at least 1), then `per_second` (at
    /// least 1) on average.
    pub const fn new(per_second: u32, burst: u32) -> Self {
        Self {
            bucket: Mutex::new(Bucket {
                tokens: TokenBucket::new(per_second, burst),
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Ten per second, bursts of twenty: the default for warnings a peer can provoke.
    pub const fn warnings() -> Self {
        Self::new(10, 20)
    }

    /// An event happens now: `Some(suppressed)` if it may be logged (with the number of events
    /// suppressed since the last one logged), `None` if it is suppressed.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }

    /// [`check`](Self::check) at time `now` (which should not go backwards; if it does, no
    /// credit is earned).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut b = self.bucket.lock_or_recover();
        let earned = b
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        b.tokens.earn(earned);
        b.last = Some(now);
        if b.tokens.take() {
            Some(std::mem::take(&mut b.suppressed))
        } else {
            b.suppressed = b.suppressed.saturating_add(1);
            None
        }
    }

    /// Events suppressed since the last one that passed.
    pub fn suppressed(&self) -> u64 {
        self.bucket.lock_or_recover().suppressed
    }
}

impl Default for LogLimiter {
    /// [`LogLimiter::warnings`].
    fn default() -> Self {
        Self::warnings()
    }
}

/// `tracing::warn!` through a [`LogLimiter`]: logs only when the limiter lets the event pass,
/// with a `suppressed` field counting the events dropped since the last line.
///
/// ```
/// use pcietun::ratelimit::LogLimiter;
/// static FAULTS: LogLimiter = LogLimiter::warnings();
/// let address = 0x1000u64;
/// pcietun::warn_limited!(FAULTS, address, "DMA outside the windows");
/// ```
#[macro_export]
macro_rules! warn_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let ::std::option::Option::Some(suppressed) = $limiter.check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    };
}

/// `tracing::info!` through a [`LogLimiter`], like [`warn_limited!`](crate::warn_limited), for
/// routine events a peer can repeat at will (connects, disconnects).
#[macro_export]
macro_rules! info_limited {
    ($limiter:expr, $($arg:tt)+) => {
        if let ::std::option::Option::Some(suppressed) = $limiter.check() {
            ::tracing::info!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds_and_suppressions_are_counted() {
        let l = LogLimiter::new(10, 3);
        let t0 = Instant::now();
        // The burst.
        for _ in 0..3 {
            assert_eq!(l.check_at(t0), Some(0));
        }
        // Then nothing until credit for one event (100 ms) has built up.
        for _ in 0..1000 {
            assert_eq!(l.check_at(t0 + Duration::from_millis(50)), None);
        }
        assert_eq!(l.suppressed(), 1000);
        assert_eq!(l.check_at(t0 + Duration::from_millis(100)), Some(1000));
        assert_eq!(l.check_at(t0 + Duration::from_millis(100)), None);
        // A flood over ten seconds: about ten a second get through, never more.
        let mut passed = 0;
        for ms in 0..10_000u64 {
            for _ in 0..50 {
                if l.check_at(t0 + Duration::from_millis(200 + ms)).is_some() {
                    passed += 1;
                }
            }
        }
        assert!((95..=104).contains(&passed), "{passed} passed");
    }

    #[test]
    fn a_weighted_bucket_holds_its_byte_rate_and_says_when_the_next_cost_fits() {
        // 1 MB/s, 8 KiB burst.
        let mut b = TokenBucket::per_unit(1_000_000, 8192);
        assert!(b.take_n(8192));
        assert!(!b.take_n(1));
        // 4096 bytes at 1 MB/s: 4.096 ms.
        assert_eq!(b.wait_for(4096), Duration::from_micros(4096));
        b.earn(Duration::from_micros(4095));
        assert!(!b.take_n(4096));
        assert_eq!(b.wait_for(4096), Duration::from_micros(1));
        b.earn(Duration::from_micros(1));
        assert_eq!(b.wait_for(4096), Duration::ZERO);
        assert!(b.take_n(4096));
        // Over one simulated second of 256-byte items, ~1 MB passes (plus the burst).
        let mut b = TokenBucket::per_unit(1_000_000, 8192);
        let mut passed = 0u64;
        for _ in 0..1_000_000 {
            b.earn(Duration::from_micros(1));
            while b.take_n(256) {
                passed += 256;
            }
        }
        assert!((1_000_000..=1_000_000 + 8192).contains(&passed), "{passed}");
        // An item above the burst passes once the bucket is full, and empties it.
        let mut b = TokenBucket::per_unit(1000, 100);
        assert!(b.take_n(5000));
        assert!(!b.take_n(1));
        assert_eq!(b.wait_for(5000), Duration::from_millis(100));
        // A huge rate neither overflows nor stalls.
        let mut b = TokenBucket::per_unit(u64::MAX / 2, 1 << 20);
        assert!(b.take_n(1 << 20));
        b.earn(Duration::from_secs(3600));
        assert!(b.take_n(1 << 20));
        assert!(b.wait_for(1).as_nanos() <= 1);
    }

    #[test]
    fn credit_is_capped_at_the_burst() {
        let l = LogLimiter::new(1, 2);
        let t0 = Instant::now();
        assert!(l.check_at(t0).is_some());
        // An hour of quiet earns two events, not 3600.
        let later = t0 + Duration::from_secs(3600);
        assert!(l.check_at(later).is_some());
        assert!(l.check_at(later).is_some());
        assert!(l.check_at(later).is_none());
        // Time going backwards earns nothing and breaks nothing.
        assert!(l.check_at(t0).is_none());
    }
}
