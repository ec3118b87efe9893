//! Per-function policy: bandwidth and IOPS caps enforced in the function's TLP path on the
//! appliance (issue 14 "Policy"; docs/api.md "Policy" has the definitions a user reads).
//!
//! A [`Shaper`] is one function's token buckets ([`TokenBucket`], the crate's one bucket) and
//! its bounded hold queue, sans-I/O on the caller's clock. The router offers it every TLP the
//! function sends towards its host, before routing. What counts:
//!
//! * **up** (function → host, the host *reads*): the data bytes of the function's memory writes
//!   (DMA writes, MSI/MSI-X messages included) and of its completions to the host's reads;
//! * **down** (host → function, the host *writes*): the data bytes the function's DMA read
//!   requests ask for (the completions that will carry them), charged when the request goes
//!   up — so a downstream cap paces the function's reads instead of holding the host's TLPs;
//! * **IOPS**: non-posted requests the function issues to its host (memory reads, AtomicOps),
//!   one per TLP.
//!
//! Headers are not counted. A TLP over budget is **delayed, never dropped**: it waits in the
//! hold queue, and once anything waits, every later TLP of the function waits behind it (so a
//! held posted write is never passed by a later completion or interrupt: PCIe ordering within
//! the function). The queue is bounded: at [`HOLD_HIGH`] TLPs the router holds the function's
//! device threads before their next DMA write ([`Proxy::hold_dma_writes`]) until it drains
//! below [`HOLD_LOW`]; DMA read requests are bounded by the function's tags, so the queue never
//! grows past `HOLD_HIGH` plus what was already in the endpoint's bounded outbound queue.
//! The time a TLP at the head waited is counted per limit ([`FunctionTraffic`]).
//!
//! [`Proxy::hold_dma_writes`]: crate::endpoint::Proxy::hold_dma_writes

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use super::arbiter::{PRIORITY_DEFAULT, PRIORITY_MAX, PRIORITY_MIN};
use super::traffic::FunctionTraffic;
use crate::endpoint::wire::{ParsedHeader, ParsedKind as Kind};
use crate::ratelimit::TokenBucket;

/// Held TLPs at which the function's device threads are held before their next DMA write.
pub const HOLD_HIGH: usize = 256;
/// Held TLPs below which they are released again.
pub const HOLD_LOW: usize = HOLD_HIGH / 2;

/// Burst of a bandwidth cap: 10 ms of its rate, at least 8 KiB (two of the largest TLPs).
fn byte_burst(rate: u64) -> u64 {
    (rate / 100).max(8192)
}

/// Burst of an IOPS cap: 10 ms of its rate, at least 4 requests.
fn iops_burst(rate: u64) -> u64 {
    (rate / 100).max(4)
}

/// The caps of one function and its priority; `None` is no cap (or the default priority).
/// Zero is not a cap, and a priority is within [`PRIORITY_MIN`]..=[`PRIORITY_MAX`] (both
/// refused otherwise by [`Policy::check`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// Data bytes per second function → host (DMA writes, completions to host reads).
    pub max_bytes_per_sec_up: Option<u64>,
    /// Data bytes per second host → function (the data of the function's DMA reads).
    pub max_bytes_per_sec_down: Option<u64>,
    /// Non-posted requests per second the function issues (DMA read requests, AtomicOps).
    pub max_iops: Option<u64>,
    /// Its weight when functions share a saturated link ([`super::arbiter`]); `None` is
    /// [`PRIORITY_DEFAULT`].
    #[serde(default)]
    pub priority: Option<u32>,
}

/// A policy value that is not one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The field.
    pub field: &'static str,
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field == "priority" {
            write!(
                f,
                "priority must be within {PRIORITY_MIN}..={PRIORITY_MAX} (omit it for the \
                 default, {PRIORITY_DEFAULT})"
            )
        } else {
            write!(
                f,
                "{} must be at least 1 (omit it for no limit)",
                self.field
            )
        }
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// No cap at all, the default priority.
    pub const UNLIMITED: Policy = Policy {
        max_bytes_per_sec_up: None,
        max_bytes_per_sec_down: None,
        max_iops: None,
        priority: None,
    };

    /// Whether nothing is capped and the priority is the default: no policy at all.
    pub fn is_unlimited(&self) -> bool {
        !self.has_caps() && self.weight() == PRIORITY_DEFAULT
    }

    /// Whether any cap is set (the function then has a [`Shaper`]).
    pub fn has_caps(&self) -> bool {
        self.max_bytes_per_sec_up.is_some()
            || self.max_bytes_per_sec_down.is_some()
            || self.max_iops.is_some()
    }

    /// The function's weight in the [`Arbiter`](super::arbiter::Arbiter).
    pub fn weight(&self) -> u32 {
        self.priority.unwrap_or(PRIORITY_DEFAULT)
    }

    /// Refuse a zero cap (it would stop the function for good; PCIe must not lose TLPs).
    pub fn check(&self) -> Result<(), PolicyError> {
        for (v, field) in [
            (self.max_bytes_per_sec_up, "max_bytes_per_sec_up"),
            (self.max_bytes_per_sec_down, "max_bytes_per_sec_down"),
            (self.max_iops, "max_iops"),
        ] {
            if v == Some(0) {
                return Err(PolicyError { field });
            }
        }
        match self.priority {
            Some(p) if !(PRIORITY_MIN..=PRIORITY_MAX).contains(&p) => {
                Err(PolicyError { field: "priority" })
            }
            _ => Ok(()),
        }
    }
}

/// Which limit a held TLP waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Limit {
    /// [`Policy::max_bytes_per_sec_up`].
    Up,
    /// [`Policy::max_bytes_per_sec_down`].
    Down,
    /// [`Policy::max_iops`].
    Iops,
}

impl Limit {
    /// The cap of `policy` this limit is.
    pub fn of(self, policy: &Policy) -> Option<u64> {
        match self {
            Limit::Up => policy.max_bytes_per_sec_up,
            Limit::Down => policy.max_bytes_per_sec_down,
            Limit::Iops => policy.max_iops,
        }
    }
}

/// Shortest time between two throttling reports of one function, and how long it must go
/// unheld before it is reported as no longer throttled ([`Shaper::throttle_change`]).
pub const THROTTLE_QUIET: Duration = Duration::from_secs(1);

/// A change in whether a function is held by its caps, as the event stream reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleChange {
    /// `true`: it started being held; `false`: it has not been for [`THROTTLE_QUIET`].
    pub throttled: bool,
    /// The limit it was (first) held by.
    pub limit: Limit,
}

/// What one TLP costs: (up bytes, down bytes, non-posted requests).
fn cost(tlp: &[u8]) -> (u64, u64, u64) {
    let Ok(h) = ParsedHeader::parse(tlp) else {
        return (0, 0, 0);
    };
    match h.kind {
        Kind::MemWrite { .. } | Kind::Completion { .. } => (h.payload.len() as u64, 0, 0),
        Kind::MemRead { .. } => (0, u64::from(h.length_dw) * 4, 1),
        Kind::Atomic { .. } => (h.payload.len() as u64, 0, 1),
        _ => (0, 0, 0),
    }
}

/// One function's buckets and hold queue (see the module docs).
#[derive(Debug)]
pub struct Shaper {
    policy: Policy,
    up: Option<TokenBucket>,
    down: Option<TokenBucket>,
    iops: Option<TokenBucket>,
    /// When the buckets last earned.
    last: Instant,
    held: VecDeque<Vec<u8>>,
    /// Since when the head has waited, and for which limit.
    blocked: Option<(Instant, Limit)>,
    /// A TLP was held over budget since the last [`Shaper::throttle_change`] (by this limit).
    newly_held: Option<Limit>,
    /// When a TLP was last held (or the queue last emptied).
    last_held: Instant,
    /// The throttling reported (and by which limit), and when it last changed.
    reported: Option<Limit>,
    reported_at: Option<Instant>,
}

impl Shaper {
    /// Full buckets for `policy` at `now`, nothing held.
    pub fn new(policy: Policy, now: Instant) -> Shaper {
        let mut s = Shaper {
            policy,
            up: None,
            down: None,
            iops: None,
            last: now,
            // Room for the bound and what the endpoint's queue may still hold beyond it
            // without reallocating in the common case.
            held: VecDeque::with_capacity(2 * HOLD_HIGH),
            blocked: None,
            newly_held: None,
            last_held: now,
            reported: None,
            reported_at: None,
        };
        s.set_policy(policy, now);
        s
    }

    /// Change the caps at run time: the buckets start full at the new rates, what is held
    /// stays in order (and goes as the new budget allows).
    pub fn set_policy(&mut self, policy: Policy, now: Instant) {
        self.policy = policy;
        self.up = policy
            .max_bytes_per_sec_up
            .map(|r| TokenBucket::per_unit(r, byte_burst(r)));
        self.down = policy
            .max_bytes_per_sec_down
            .map(|r| TokenBucket::per_unit(r, byte_burst(r)));
        self.iops = policy
            .max_iops
            .map(|r| TokenBucket::per_unit(r, iops_burst(r)));
        self.last = now;
    }

    /// The caps.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// TLPs held now.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    fn earn(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last);
        self.last = self.last.max(now);
        for b in [&mut self.up, &mut self.down, &mut self.iops]
            .into_iter()
            .flatten()
        {
            b.earn(dt);
        }
    }

    /// The first limit that cannot pay for `c` now, if any.
    fn short(&self, c: (u64, u64, u64)) -> Option<Limit> {
        let lacks = |b: &Option<TokenBucket>, n: u64| {
            n > 0 && b.as_ref().is_some_and(|b| b.wait_for(n) > Duration::ZERO)
        };
        if lacks(&self.up, c.0) {
            Some(Limit::Up)
        } else if lacks(&self.down, c.1) {
            Some(Limit::Down)
        } else if lacks(&self.iops, c.2) {
            Some(Limit::Iops)
        } else {
            None
        }
    }

    fn pay(&mut self, c: (u64, u64, u64)) {
        for (b, n) in [
            (&mut self.up, c.0),
            (&mut self.down, c.1),
            (&mut self.iops, c.2),
        ] {
            if let (Some(b), true) = (b.as_mut(), n > 0) {
                b.take_n(n);
            }
        }
    }

    /// Count the head's wait, which ended at `now`.
    fn unblock(&mut self, now: Instant, t: &mut FunctionTraffic) {
        if let Some((since, limit)) = self.blocked.take() {
            let ns =
                u64::try_from(now.saturating_duration_since(since).as_nanos()).unwrap_or(u64::MAX);
            let c = match limit {
                Limit::Up => &mut t.throttled_nanos_up,
                Limit::Down => &mut t.throttled_nanos_down,
                Limit::Iops => &mut t.throttled_nanos_iops,
            };
            *c = c.saturating_add(ns);
        }
    }

    /// A TLP of the function at `now`: `Some` (the same buffer) when it may go at once,
    /// `None` when it is held (behind what is held already, or over budget).
    pub fn offer(&mut self, now: Instant, tlp: Vec<u8>) -> Option<Vec<u8>> {
        if !self.held.is_empty() {
            self.held.push_back(tlp);
            return None;
        }
        self.earn(now);
        let c = cost(&tlp);
        match self.short(c) {
            None => {
                self.pay(c);
                Some(tlp)
            }
            Some(limit) => {
                self.blocked = Some((now, limit));
                self.newly_held = Some(limit);
                self.last_held = now;
                self.held.push_back(tlp);
                None
            }
        }
    }

    /// Whether the function started or stopped being held by its caps, for the event stream:
    /// a start as soon as a TLP was held over budget, a stop once nothing was held for
    /// [`THROTTLE_QUIET`]; never two changes within [`THROTTLE_QUIET`] (a function that
    /// flickers at its cap is reported once, not at every TLP).
    pub fn throttle_change(&mut self, now: Instant) -> Option<ThrottleChange> {
        let spaced = self
            .reported_at
            .is_none_or(|t| now.saturating_duration_since(t) >= THROTTLE_QUIET);
        if !self.held.is_empty() {
            self.last_held = now;
        }
        match self.reported {
            None => {
                let limit = self.newly_held?;
                if !spaced {
                    // Still held: reported once the spacing allows; else forgotten.
                    if self.held.is_empty() {
                        self.newly_held = None;
                    }
                    return None;
                }
                self.newly_held = None;
                self.reported = Some(limit);
                self.reported_at = Some(now);
                Some(ThrottleChange {
                    throttled: true,
                    limit,
                })
            }
            Some(limit) => {
                self.newly_held = None;
                if !spaced || now.saturating_duration_since(self.last_held) < THROTTLE_QUIET {
                    return None;
                }
                self.reported = None;
                self.reported_at = Some(now);
                Some(ThrottleChange {
                    throttled: false,
                    limit,
                })
            }
        }
    }

    /// The throttling last reported and not yet reported as over (by which limit).
    pub fn throttling(&self) -> Option<Limit> {
        self.reported
    }

    /// Hand `out` every held TLP the budget allows at `now`, in order.
    pub fn release(&mut self, now: Instant, t: &mut FunctionTraffic, mut out: impl FnMut(Vec<u8>)) {
        if self.held.is_empty() {
            return;
        }
        self.last_held = now;
        self.earn(now);
        while let Some(head) = self.held.front() {
            let c = cost(head);
            if let Some(limit) = self.short(c) {
                match self.blocked {
                    // Still waiting for the same limit: the wait goes on.
                    Some((_, l)) if l == limit => {}
                    _ => {
                        self.unblock(now, t);
                        self.blocked = Some((now, limit));
                    }
                }
                return;
            }
            self.pay(c);
            self.unblock(now, t);
            if let Some(tlp) = self.held.pop_front() {
                out(tlp);
            }
        }
    }

    /// Hand `out` everything held, budget or not (the function is reset or detached, or its
    /// caps were lifted).
    pub fn flush(&mut self, now: Instant, t: &mut FunctionTraffic, mut out: impl FnMut(Vec<u8>)) {
        self.unblock(now, t);
        while let Some(tlp) = self.held.pop_front() {
            out(tlp);
        }
    }

    /// When the head of the queue can go (`None`: nothing held).
    pub fn deadline(&self) -> Option<Instant> {
        let head = self.held.front()?;
        let c = cost(head);
        let wait = [(&self.up, c.0), (&self.down, c.1), (&self.iops, c.2)]
            .into_iter()
            .filter_map(|(b, n)| b.as_ref().filter(|_| n > 0).map(|b| b.wait_for(n)))
            .max()
            .unwrap_or(Duration::ZERO);
        Some(self.last + wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::endpoint::wire::{self, Bdf};

    fn mwr(n: usize, tag: u8) -> Vec<u8> {
        let mut t = Vec::new();
        let data = vec![tag; n];
        wire::emit_mem_write(&mut t, Bdf::new(0, 1, 0), 0x1000, &data).unwrap();
        t
    }

    fn mrd(n: u32) -> Vec<u8> {
        let mut t = Vec::new();
        wire::emit_mem_read(&mut t, Bdf::new(0, 1, 0), 7, 0x2000, n).unwrap();
        t
    }

    fn up(rate: u64) -> Policy {
        Policy {
            max_bytes_per_sec_up: Some(rate),
            ..Policy::UNLIMITED
        }
    }

    #[test]
    fn costs_are_the_data_bytes_and_the_non_posted_requests() {
        assert_eq!(cost(&mwr(256, 0)), (256, 0, 0));
        assert_eq!(cost(&mrd(512)), (0, 512, 1));
        assert_eq!(cost(&[0u8; 3]), (0, 0, 0));
    }

    #[test]
    fn a_cap_holds_in_order_drops_nothing_and_says_when_the_next_one_goes() {
        let t0 = Instant::now();
        let mut tr = FunctionTraffic::default();
        // 1 MB/s: burst 10 000 bytes (10 ms of it).
        let mut s = Shaper::new(up(1_000_000), t0);
        let mut sent = Vec::new();
        // 39 × 256 = 9984 bytes pass at once; the 40th is held, and everything after it.
        for i in 0..100u8 {
            if let Some(t) = s.offer(t0, mwr(256, i)) {
                sent.push(t);
            }
        }
        assert_eq!(sent.len(), 39);
        assert_eq!(s.len(), 61);
        // The head needs 256 bytes, 16 are left: 240 µs at 1 MB/s.
        assert_eq!(s.deadline(), Some(t0 + Duration::from_micros(240)));
        s.release(t0 + Duration::from_micros(239), &mut tr, |t| sent.push(t));
        assert_eq!(sent.len(), 39);
        s.release(t0 + Duration::from_micros(240), &mut tr, |t| sent.push(t));
        assert_eq!(sent.len(), 40);
        assert_eq!(tr.throttled_nanos_up, 240_000);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_micros(240 + 256)));
        // A long quiet earns one burst, not more: 39 more go.
        s.release(t0 + Duration::from_secs(1), &mut tr, |t| sent.push(t));
        assert_eq!(sent.len(), 79);
        // A later TLP offered while some are held waits behind them, even with budget.
        assert!(s
            .offer(t0 + Duration::from_secs(2), mwr(256, 100))
            .is_none());
        for ms in 1..=100u64 {
            s.release(
                t0 + Duration::from_secs(2) + Duration::from_millis(ms),
                &mut tr,
                |t| sent.push(t),
            );
        }
        assert_eq!(sent.len(), 101);
        assert!(s.is_empty());
        assert_eq!(s.deadline(), None);
        // Nothing dropped, nothing reordered.
        for (i, t) in sent.iter().enumerate() {
            assert_eq!(t[t.len() - 1], i as u8, "TLP {i} out of order");
        }
    }

    #[test]
    fn the_rate_over_a_simulated_second_is_the_cap() {
        let t0 = Instant::now();
        let mut tr = FunctionTraffic::default();
        let mut s = Shaper::new(up(10_000_000), t0);
        let mut bytes = 0u64;
        let mut now = t0;
        // A producer that always has a TLP ready (kept at the bound), polled every 50 µs.
        while now < t0 + Duration::from_secs(1) {
            while s.len() < HOLD_HIGH {
                if s.offer(now, mwr(256, 0)).is_some() {
                    bytes += 256;
                }
            }
            s.release(now, &mut tr, |_| bytes += 256);
            now += Duration::from_micros(50);
        }
        // 10 MB plus the 100 kB burst, within one TLP.
        assert!(
            (10_000_000..=10_100_000 + 256).contains(&bytes),
            "{bytes} bytes in a second at a 10 MB/s cap"
        );
        assert!(tr.throttled_nanos_up > 900_000_000, "{tr:?}");
    }

    #[test]
    fn reads_are_paced_by_the_downstream_cap_and_by_iops() {
        let t0 = Instant::now();
        let mut tr = FunctionTraffic::default();
        let mut s = Shaper::new(
            Policy {
                max_bytes_per_sec_down: Some(1_000_000),
                ..Policy::UNLIMITED
            },
            t0,
        );
        // 10 000 bytes of burst: 19 reads of 512, the 20th waits; writes up are not capped
        // but queue behind it.
        let mut n = 0;
        for _ in 0..20 {
            n += usize::from(s.offer(t0, mrd(512)).is_some());
        }
        assert_eq!(n, 19);
        assert!(s.offer(t0, mwr(64, 0)).is_none());
        s.release(t0 + Duration::from_secs(1), &mut tr, |_| n += 1);
        assert_eq!(n, 21);
        assert!(tr.throttled_nanos_down > 0 && tr.throttled_nanos_up == 0);
        let mut s = Shaper::new(
            Policy {
                max_iops: Some(1000),
                ..Policy::UNLIMITED
            },
            t0,
        );
        // Burst 10: the 11th read waits 1 ms.
        let passed = (0..11).filter(|_| s.offer(t0, mrd(4)).is_some()).count();
        assert_eq!(passed, 10);
        assert_eq!(s.deadline(), Some(t0 + Duration::from_millis(1)));
    }

    #[test]
    fn lifting_the_cap_lets_the_held_ones_go_in_order_and_flush_empties() {
        let t0 = Instant::now();
        let mut tr = FunctionTraffic::default();
        let mut s = Shaper::new(up(1000), t0);
        let mut sent = Vec::new();
        for i in 0..40u8 {
            if let Some(t) = s.offer(t0, mwr(256, i)) {
                sent.push(t);
            }
        }
        assert!(!s.is_empty());
        s.set_policy(up(u64::MAX / 4), t0);
        s.release(t0, &mut tr, |t| sent.push(t));
        assert_eq!(sent.len(), 40);
        for (i, t) in sent.iter().enumerate() {
            assert_eq!(t[t.len() - 1], i as u8);
        }
        let mut s = Shaper::new(up(1000), t0);
        for i in 0..40u8 {
            let _ = s.offer(t0, mwr(256, i));
        }
        let mut n = 0;
        s.flush(t0, &mut tr, |_| n += 1);
        assert!(n > 0 && s.is_empty());
    }

    #[test]
    fn throttling_is_reported_when_it_starts_and_after_a_quiet_second_and_never_faster() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut tr = FunctionTraffic::default();
        let mut s = Shaper::new(up(1_000_000), t0);
        // Within the burst: nothing held, nothing to report.
        assert!(s.offer(t0, mwr(256, 0)).is_some());
        assert_eq!(s.throttle_change(t0), None);
        for i in 0..100u8 {
            let _ = s.offer(t0, mwr(256, i));
        }
        let started = Some(ThrottleChange {
            throttled: true,
            limit: Limit::Up,
        });
        let stopped = Some(ThrottleChange {
            throttled: false,
            limit: Limit::Up,
        });
        assert_eq!(s.throttle_change(t0), started);
        assert_eq!(s.throttling(), Some(Limit::Up));
        // Held at the cap for a while: one report, not one per TLP or per poll.
        for n in 1..=30 {
            s.release(ms(n), &mut tr, |_| {});
            assert_eq!(s.throttle_change(ms(n)), None, "at {n} ms");
        }
        assert!(s.is_empty(), "15.6 kB at 1 MB/s drain in 16 ms");
        // Not quiet for a second yet.
        assert_eq!(s.throttle_change(ms(500)), None);
        assert_eq!(s.throttle_change(ms(1020)), stopped);
        assert_eq!(s.throttling(), None);
        assert_eq!(s.throttle_change(ms(1030)), None);
        // Held again 80 ms after the stop was reported: reported once the second is up.
        for i in 0..100u8 {
            let _ = s.offer(ms(1100), mwr(256, i));
        }
        assert!(!s.is_empty());
        assert_eq!(
            s.throttle_change(ms(1100)),
            None,
            "a second between reports"
        );
        assert_eq!(s.throttle_change(ms(2030)), started);
    }

    #[test]
    fn zero_is_refused_none_is_no_cap() {
        assert!(Policy::UNLIMITED.check().is_ok());
        assert!(Policy::UNLIMITED.is_unlimited());
        let e = Policy {
            max_iops: Some(0),
            ..Policy::UNLIMITED
        }
        .check()
        .unwrap_err();
        assert_eq!(e.field, "max_iops");
        for (p, ok) in [(0, false), (1, true), (100, true), (101, false)] {
            let r = Policy {
                priority: Some(p),
                ..Policy::UNLIMITED
            }
            .check();
            assert_eq!(r.is_ok(), ok, "priority {p}");
        }
        let only_priority = Policy {
            priority: Some(3),
            ..Policy::UNLIMITED
        };
        assert!(!only_priority.has_caps() && !only_priority.is_unlimited());
        assert_eq!(only_priority.weight(), 3);
        assert_eq!(Policy::UNLIMITED.weight(), PRIORITY_DEFAULT);
        assert!(Policy {
            priority: Some(PRIORITY_DEFAULT),
            ..Policy::UNLIMITED
        }
        .is_unlimited());
    }
}
