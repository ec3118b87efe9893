//! RTT estimation (RFC 6298), a delay-based congestion window behind the [`Controller`]
//! trait, and a pacer (docs/protocol.md §5 and §8).

use super::time::Instant;
use std::time::Duration;

/// RFC 6298 estimator.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    srtt: Option<Duration>,
    rttvar: Duration,
    min_rtt: Duration,
    latest: Duration,
}

impl Default for RttEstimator {
    fn default() -> Self {
        RttEstimator {
            srtt: None,
            rttvar: Duration::ZERO,
            min_rtt: Duration::MAX,
            latest: Duration::ZERO,
        }
    }
}

impl RttEstimator {
    /// Feed one sample.
    pub fn sample(&mut self, rtt: Duration) {
        self.latest = rtt;
        self.min_rtt = self.min_rtt.min(rtt);
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(s) => {
                let diff = s.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + diff) / 4;
                self.srtt = Some((s * 7 + rtt) / 8);
            }
        }
    }

    /// Smoothed RTT (or `initial` before any sample).
    pub fn srtt_or(&self, initial: Duration) -> Duration {
        self.srtt.unwrap_or(initial)
    }

    /// Smallest sample seen.
    pub fn min_rtt(&self) -> Option<Duration> {
        (self.min_rtt != Duration::MAX).then_some(self.min_rtt)
    }

    /// Last sample.
    pub fn latest(&self) -> Duration {
        self.latest
    }

    /// SRTT + 4·RTTVAR, clamped.
    pub fn rto(&self, min: Duration, max: Duration, initial: Duration) -> Duration {
        match self.srtt {
            None => initial,
            Some(s) => (s + (self.rttvar * 4).max(Duration::from_micros(50))).clamp(min, max),
        }
    }
}

/// A congestion controller: decides how many bytes may be in flight.
pub trait Controller: Send + std::fmt::Debug {
    /// Bytes newly acknowledged, with the latest RTT sample and the minimum seen.
    fn on_ack(&mut self, now: Instant, bytes: usize, rtt: Duration, min_rtt: Duration);
    /// Loss detected (fast retransmit) of a frame sent at `sent`.
    fn on_loss(&mut self, now: Instant, sent: Instant, srtt: Duration);
    /// The retransmission timer fired.
    fn on_rto(&mut self);
    /// Current window in bytes.
    fn window(&self) -> usize;
}

/// LEDBAT-like delay-based window.
#[derive(Debug, Clone)]
pub struct DelayBased {
    cwnd: f64,
    mss: f64,
    min: f64,
    max: f64,
    target: Duration,
    recovery_until: Instant,
}

impl DelayBased {
    /// A controller for frames of `mss` bytes, window in `[min_frames, max_bytes]`.
    pub fn new(mss: usize, target: Duration, max_bytes: usize) -> Self {
        let mss = mss as f64;
        DelayBased {
            cwnd: mss * 64.0,
            mss,
            min: mss * 4.0,
            max: (max_bytes as f64).max(mss * 8.0),
            target,
            recovery_until: Instant::ZERO,
        }
    }
}

impl Controller for DelayBased {
    fn on_ack(&mut self, _now: Instant, bytes: usize, rtt: Duration, min_rtt: Duration) {
        let queuing = rtt.saturating_sub(min_rtt).as_secs_f64();
        let target = self.target.as_secs_f64();
        let off = ((target - queuing) / target).clamp(-1.0, 1.0);
        // Gain 1: at most one MSS per window per RTT growth, like LEDBAT; faster when far off.
        let grow = if off > 0.0 { 2.0 } else { 1.0 };
        self.cwnd += grow * off * bytes as f64 * self.mss / self.cwnd;
        self.cwnd = self.cwnd.clamp(self.min, self.max);
    }

    fn on_loss(&mut self, now: Instant, sent: Instant, srtt: Duration) {
        if sent < self.recovery_until {
            return;
        }
        self.recovery_until = now + srtt;
        self.cwnd = (self.cwnd * 7.0 / 8.0).max(self.min);
    }

    fn on_rto(&mut self) {
        self.cwnd = (self.cwnd / 2.0).max(self.min);
    }

    fn window(&self) -> usize {
        self.cwnd as usize
    }
}

/// Token-bucket pacer: `rate = 1.25 · window / srtt`, burst of `burst` frames.
#[derive(Debug, Clone)]
pub struct Pacer {
    tokens: f64,
    last: Instant,
    burst: f64,
}

impl Pacer {
    /// A pacer allowing bursts of `burst_bytes`.
    pub fn new(burst_bytes: usize) -> Self {
        Pacer {
            tokens: burst_bytes as f64,
            last: Instant::ZERO,
            burst: burst_bytes as f64,
        }
    }

    fn refill(&mut self, now: Instant, window: usize, srtt: Duration) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let rate = 1.25 * window as f64 / srtt.as_secs_f64().max(1e-6);
        self.tokens = (self.tokens + dt * rate).min(self.burst.max(window as f64 / 4.0));
    }

    /// When a frame of `bytes` may leave: `None` = now.
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: usize,
        window: usize,
        srtt: Duration,
    ) -> Option<Instant> {
        self.refill(now, window, srtt);
        if self.tokens >= bytes as f64 {
            return None;
        }
        let rate = 1.25 * window as f64 / srtt.as_secs_f64().max(1e-6);
        let wait = (bytes as f64 - self.tokens) / rate;
        Some(now + Duration::from_secs_f64(wait.min(1.0)))
    }

    /// A frame of `bytes` left.
    pub fn on_sent(&mut self, bytes: usize) {
        self.tokens -= bytes as f64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtt_follows_rfc6298() {
        let mut r = RttEstimator::default();
        let ms = Duration::from_millis;
        assert_eq!(r.rto(ms(1), ms(100), ms(10)), ms(10));
        r.sample(ms(4));
        assert_eq!(r.srtt_or(ms(0)), ms(4));
        assert_eq!(r.rto(ms(1), ms(100), ms(10)), ms(4) + ms(8));
        r.sample(ms(8));
        assert_eq!(r.srtt_or(ms(0)), ms(4) + ms(1) / 2);
        assert_eq!(r.min_rtt(), Some(ms(4)));
        assert_eq!(r.rto(ms(1), ms(5), ms(10)), ms(5));
    }

    #[test]
    fn window_shrinks_with_queuing_and_grows_without() {
        let mut c = DelayBased::new(1500, Duration::from_millis(1), 10_000_000);
        let w0 = c.window();
        let t = Instant::ZERO;
        for _ in 0..1000 {
            c.on_ack(
                t,
                1500,
                Duration::from_micros(100),
                Duration::from_micros(100),
            );
        }
        assert!(c.window() > w0);
        let w1 = c.window();
        for _ in 0..1000 {
            c.on_ack(
                t,
                1500,
                Duration::from_millis(5),
                Duration::from_micros(100),
            );
        }
        assert!(c.window() < w1);
        c.on_rto();
        assert!(c.window() >= 6000);
    }

    #[test]
    fn pacer_spaces_frames() {
        let mut p = Pacer::new(3000);
        let srtt = Duration::from_millis(1);
        let now = Instant::from_nanos(1);
        assert!(p.delay(now, 1500, 15000, srtt).is_none());
        p.on_sent(1500);
        assert!(p.delay(now, 1500, 15000, srtt).is_none());
        p.on_sent(1500);
        let next = p.delay(now, 1500, 15000, srtt).expect("must wait");
        assert!(next > now);
    }
}
