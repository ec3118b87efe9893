//! Token buckets for handshake processing (docs/protocol.md §3.4, after WireGuard's
//! `ratelimiter.c`): one bucket for the appliance as a whole — when it runs dry the appliance
//! is *under load* and asks for cookies — and one per source address for INITs that carry a
//! valid mac2. Tokens are counted in nanoseconds of credit, so the arithmetic is integer and
//! the time is the caller's (sans-I/O, like everything in the transport).

use super::time::Instant;
use super::PeerAddr;
use crate::ratelimit::TokenBucket;
use std::collections::HashMap;
use std::time::Duration;

/// One token bucket on the transport's clock: `rate` events per second, at most `burst` at
/// once ([`TokenBucket`], the crate's one implementation, plus the time of the last call).
#[derive(Debug, Clone)]
pub struct Bucket {
    tokens: TokenBucket,
    last: Instant,
}

impl Bucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Bucket {
        Bucket {
            tokens: TokenBucket::new(rate, burst),
            last: now,
        }
    }

    /// Take one token if there is one (time going backwards earns nothing).
    pub fn allow(&mut self, now: Instant) -> bool {
        self.tokens.earn(now.saturating_duration_since(self.last));
        self.last = self.last.max(now);
        self.tokens.take()
    }

    fn full_at(&self, now: Instant) -> bool {
        self.tokens
            .full_after(now.saturating_duration_since(self.last))
    }
}

/// Outcome of a per-source check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// This source is over its rate.
    Limited,
    /// The table of sources is full (a flood from many addresses): refuse newcomers.
    TableFull,
}

/// Per-source buckets in a table of bounded size (allocated once, never grown).
#[derive(Debug)]
pub struct SourceLimiter {
    table: HashMap<PeerAddr, Bucket>,
    capacity: usize,
    rate: u32,
    burst: u32,
    next_gc: Instant,
}

/// How often idle sources are dropped from the table.
const GC_INTERVAL: Duration = Duration::from_secs(1);

impl SourceLimiter {
    /// `rate` per second and `burst` per source, for at most `capacity` sources at once.
    pub fn new(rate: u32, burst: u32, capacity: usize) -> SourceLimiter {
        SourceLimiter {
            table: HashMap::with_capacity(capacity),
            capacity,
            rate,
            burst,
            next_gc: Instant::ZERO,
        }
    }

    /// Check one event from `src`.
    pub fn check(&mut self, now: Instant, src: &PeerAddr) -> Verdict {
        if now >= self.next_gc {
            // A source whose bucket is full again is indistinguishable from a new one.
            self.table.retain(|_, b| !b.full_at(now));
            self.next_gc = now + GC_INTERVAL;
        }
        if let Some(b) = self.table.get_mut(src) {
            return if b.allow(now) {
                Verdict::Allow
            } else {
                Verdict::Limited
            };
        }
        if self.table.len() >= self.capacity {
            return Verdict::TableFull;
        }
        let mut b = Bucket::new(self.rate, self.burst, now);
        let ok = b.allow(now);
        self.table.insert(*src, b);
        if ok {
            Verdict::Allow
        } else {
            Verdict::Limited
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn bucket_allows_burst_then_rate() {
        let t0 = Instant::ZERO;
        let mut b = Bucket::new(20, 5, t0);
        assert_eq!((0..10).filter(|_| b.allow(t0)).count(), 5);
        // 20/s: one more every 50 ms
        assert!(!b.allow(t0 + 49 * MS));
        assert!(b.allow(t0 + 50 * MS));
        assert!(!b.allow(t0 + 60 * MS));
        // a long pause refills to the burst, no more
        let t = t0 + Duration::from_secs(100);
        assert_eq!((0..10).filter(|_| b.allow(t)).count(), 5);
        // time going backwards grants nothing
        assert!(!b.allow(t0));
    }

    #[test]
    fn sources_are_limited_separately_and_the_table_is_bounded() {
        let mut l = SourceLimiter::new(20, 5, 3);
        let t0 = Instant::from_nanos(1);
        let a = PeerAddr::Mem(1);
        let b = PeerAddr::Mem(2);
        assert_eq!(
            (0..10)
                .filter(|_| l.check(t0, &a) == Verdict::Allow)
                .count(),
            5
        );
        assert_eq!(l.check(t0, &b), Verdict::Allow);
        assert_eq!(l.check(t0, &PeerAddr::Mem(3)), Verdict::Allow);
        assert_eq!(l.check(t0, &PeerAddr::Mem(4)), Verdict::TableFull);
        assert_eq!(l.len(), 3);
        // after a quiet second the idle sources are forgotten and newcomers fit
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(l.check(t1, &PeerAddr::Mem(4)), Verdict::Allow);
        assert_eq!(l.len(), 1);
        assert!(!l.is_empty());
    }
}
