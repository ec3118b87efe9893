//! RTT estimation (RFC 6298), a delay-based congestion window behind the [`Controller`]
//! trait, and a pacer (docs/protocol.md §8, docs/transport.md "Congestion control").
//!
//! The window ([`DelayBased`]) follows the queuing delay `rtt − base`, where `base` is the
//! minimum RTT of full data frames over the last second ([`BaseDelay`], RFC 6817 §4.4;
//! not the handshake's, whose small frames cross a slow link faster than data can): additive increase while the queue is below the target, a multiplicative
//! decrease proportional to the excess above it (at most once per RTT, as in Swift), slow
//! start up to half the target, and windows below one frame that become a paced rate.
//!
//! A session that joins behind a standing queue takes that queue for its base delay and
//! crowds the others out (LEDBAT's latecomer problem); a session's own slowdowns (LEDBAT++)
//! do not cure it, because the others keep the queue standing. So the appliance runs
//! *coordinated drains*: every drain interval it sends every session a frame flagged `DRAIN`
//! at once, and every window-limited sender — the hosts and the appliance itself — pauses
//! one RTT, resumes at a random point of the next RTT with one frame in flight until 2.5
//! RTTs after the drain began, then slow-starts from half its old window back to it
//! ([`Controller::on_drain`]). The shared
//! queue empties, every session measures the true base delay, and AIMD on a common signal
//! converges to fair shares.

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
    /// Bytes newly acknowledged, with the latest RTT sample, the smoothed RTT, whether the
    /// sender was limited by the window (not by the application) during the last RTT, and
    /// whether the sample came from a full-size frame (only those set the base delay).
    fn on_ack(
        &mut self,
        now: Instant,
        bytes: usize,
        rtt: Duration,
        srtt: Duration,
        limited: bool,
        full_frame: bool,
    );
    /// Loss detected (fast retransmit) of a frame sent at `sent`.
    fn on_loss(&mut self, now: Instant, sent: Instant, srtt: Duration);
    /// The retransmission timer fired.
    fn on_rto(&mut self, now: Instant);
    /// A coordinated drain began (docs/protocol.md §8): pause about one RTT so the shared
    /// queue empties and every session sees the true base delay.
    fn on_drain(&mut self, now: Instant, srtt: Duration);
    /// Time passed (call before asking for the window).
    fn on_tick(&mut self, now: Instant);
    /// When [`on_tick`](Self::on_tick) must run next, if the controller waits for a time.
    fn next_timer(&self) -> Option<Instant>;
    /// Current window in bytes.
    fn window(&self) -> usize;
    /// Pacing rate as a multiple of `window / srtt`.
    fn pacing_gain(&self) -> f64;
    /// The propagation delay the controller measures queuing against.
    fn base_delay(&self) -> Option<Duration>;
}

/// Buckets of the base-delay history.
const BASE_BUCKETS: usize = 10;
/// Span of one bucket: the base delay can rise (a route change) within a second. RFC 6817
/// keeps ten minutes because nothing else empties the queue; here the appliance's
/// coordinated drains do, every 100 ms by default, so a second of history holds true minima.
const BASE_BUCKET: Duration = Duration::from_millis(100);

/// Minimum RTT over the last `BASE_BUCKETS` × `BASE_BUCKET` (RFC 6817 §4.4, shorter): a lower
/// sample counts at once, a higher true base after a route change is adopted when the old
/// buckets age out.
#[derive(Debug, Clone)]
pub struct BaseDelay {
    mins: [Duration; BASE_BUCKETS],
    head: usize,
    head_start: Option<Instant>,
}

impl Default for BaseDelay {
    fn default() -> Self {
        BaseDelay {
            mins: [Duration::MAX; BASE_BUCKETS],
            head: 0,
            head_start: None,
        }
    }
}

impl BaseDelay {
    /// Feed one RTT sample taken at `now`.
    pub fn update(&mut self, now: Instant, rtt: Duration) {
        let start = *self.head_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed >= BASE_BUCKET {
            let steps = (elapsed.as_nanos() / BASE_BUCKET.as_nanos()) as usize;
            for _ in 0..steps.min(BASE_BUCKETS) {
                self.head = (self.head + 1) % BASE_BUCKETS;
                self.mins[self.head] = Duration::MAX;
            }
            self.head_start = Some(start + BASE_BUCKET * steps as u32);
        }
        self.mins[self.head] = self.mins[self.head].min(rtt);
    }

    /// The base delay, once a sample was seen.
    pub fn get(&self) -> Option<Duration> {
        let m = self.mins.iter().copied().min().unwrap_or(Duration::MAX);
        (m != Duration::MAX).then_some(m)
    }
}

/// Phases of [`DelayBased`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Doubling per RTT up to `ssthresh` or half the target delay.
    SlowStart,
    /// Additive increase, delay-proportional multiplicative decrease.
    Avoidance,
    /// A drain: nothing new is sent until the instant, then [`Phase::Probing`].
    Paused(Instant),
    /// After a pause: one frame in flight until the instant (every session's probe crosses
    /// a queue of single frames, not of others' ramps), then slow start from half the old
    /// window.
    Probing(Instant),
}

/// Initial window, frames (RFC 6928's ten).
const INITIAL_FRAMES: f64 = 10.0;
/// Smallest window, frames. Below one frame the window is a rate: one frame in flight, paced
/// at `window / srtt` (as in Swift), so hundreds of sessions behind one port can still drain
/// its queue — whole-frame minimums times N sessions would hold a standing queue of their own.
const MIN_FRAMES: f64 = 0.125;
/// Window on resuming after a drain, frames.
const RESUME_FRAMES: f64 = 1.0;
/// Multiplicative-decrease gain: `cwnd ·= 1 − β·(q − target)/q` (Swift's β).
const BETA: f64 = 0.8;
/// Flow scaling (Swift): the target delay rises by up to one more target as the window
/// shrinks from [`FS_MAX_FRAMES`] to [`FS_MIN_FRAMES`], so a session squeezed below its share
/// tolerates more delay than the large ones and wins its share back; it also blunts the
/// effect of a base-delay estimate that is a frame time off.
const FS_MIN_FRAMES: f64 = 1.0;
/// See [`FS_MIN_FRAMES`].
const FS_MAX_FRAMES: f64 = 64.0;

/// Deepest decrease per RTT.
const MAX_DECREASE: f64 = 0.5;

/// Delay-based window (LEDBAT++ / Swift lineage; see the module docs).
#[derive(Debug, Clone)]
pub struct DelayBased {
    cwnd: f64,
    ssthresh: f64,
    mss: f64,
    min: f64,
    max: f64,
    target: Duration,
    base: BaseDelay,
    phase: Phase,
    /// Latest queuing-delay estimate.
    queuing: Duration,
    last_decrease: Option<Instant>,
    recovery_until: Instant,
    /// Start of the last drain.
    slowdown_start: Option<Instant>,
    /// xorshift state for the resume jitter.
    jitter: u64,
    /// End of the probing part of the current drain.
    probe_end: Instant,
}

impl DelayBased {
    /// A controller for frames of `mss` bytes, window in `[mss / 8, max_bytes]`; `seed`
    /// spreads the sessions' resume times after a drain.
    pub fn new(mss: usize, target: Duration, max_bytes: usize, seed: u64) -> Self {
        let mss = mss as f64;
        let max = (max_bytes as f64).max(mss * 8.0);
        DelayBased {
            cwnd: (mss * INITIAL_FRAMES).min(max),
            ssthresh: max,
            mss,
            min: mss * MIN_FRAMES,
            max,
            target,
            base: BaseDelay::default(),
            phase: Phase::SlowStart,
            queuing: Duration::ZERO,
            last_decrease: None,
            recovery_until: Instant::ZERO,
            slowdown_start: None,
            jitter: seed | 1,
            probe_end: Instant::ZERO,
        }
    }

    /// A fraction in [0, 1) (xorshift64; spreads resume times, nothing secret).
    fn next_jitter(&mut self) -> f64 {
        let mut x = self.jitter;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.jitter = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn leave_slow_start(&mut self) {
        self.phase = Phase::Avoidance;
        self.ssthresh = self.cwnd;
    }

    /// The target queuing delay at the current window, seconds.
    fn target_secs(&self) -> f64 {
        let w = (self.cwnd / self.mss).clamp(FS_MIN_FRAMES, FS_MAX_FRAMES);
        let lo = 1.0 / FS_MAX_FRAMES.sqrt();
        let hi = 1.0 / FS_MIN_FRAMES.sqrt();
        let scale = (1.0 / w.sqrt() - lo) / (hi - lo);
        self.target.as_secs_f64() * (1.0 + scale)
    }

    fn clamp(&mut self) {
        self.cwnd = self.cwnd.clamp(self.min, self.max);
    }
}

impl Controller for DelayBased {
    fn on_ack(
        &mut self,
        now: Instant,
        bytes: usize,
        rtt: Duration,
        srtt: Duration,
        limited: bool,
        full_frame: bool,
    ) {
        if full_frame {
            self.base.update(now, rtt);
        }
        let base = self.base.get().unwrap_or(rtt);
        let q = rtt.saturating_sub(base);
        self.queuing = q;
        let target = self.target_secs();
        let qs = q.as_secs_f64();
        let bytes = bytes as f64;
        match self.phase {
            Phase::Paused(_) | Phase::Probing(_) => return,
            Phase::SlowStart => {
                if qs > target / 2.0 {
                    self.leave_slow_start();
                } else if limited {
                    self.cwnd += bytes;
                    if self.cwnd >= self.ssthresh {
                        self.cwnd = self.ssthresh;
                        self.leave_slow_start();
                    }
                }
            }
            Phase::Avoidance => {
                if qs <= target {
                    if limited {
                        // One frame per RTT at the target, up to four with an empty queue.
                        // Per ACK at most the bytes acknowledged (no faster than slow start,
                        // which matters below one frame).
                        let gain = 1.0 + 3.0 * (target - qs) / target;
                        self.cwnd += (gain * bytes * self.mss / self.cwnd).min(bytes);
                    }
                } else if self.last_decrease.is_none_or(|t| now >= t + srtt) {
                    let cut = (BETA * (qs - target) / qs).min(MAX_DECREASE);
                    self.cwnd *= 1.0 - cut;
                    self.last_decrease = Some(now);
                }
            }
        }
        self.clamp();
    }

    fn on_drain(&mut self, now: Instant, srtt: Duration) {
        // One drain at a time: the flag arrives on every frame for an RTT.
        let recent = self.slowdown_start.is_some_and(|t| now < t + srtt * 4);
        if matches!(self.phase, Phase::Paused(_) | Phase::Probing(_)) || recent {
            return;
        }
        self.slowdown_start = Some(now);
        self.ssthresh = self.cwnd;
        // Pause one RTT (every sender at once: the queue empties), then resume at a spread
        // instant within half an RTT, so each session's first frame crosses an empty queue
        // rather than a burst of everyone's first frames.
        let spread = srtt.mul_f64(self.next_jitter());
        self.phase = Phase::Paused(now + srtt + spread);
        self.probe_end = now + srtt * 2 + srtt / 2;
    }

    fn on_tick(&mut self, now: Instant) {
        if let Phase::Paused(until) = self.phase {
            if now >= until {
                self.cwnd = (self.mss * RESUME_FRAMES).min(self.ssthresh);
                self.phase = Phase::Probing(self.probe_end);
            }
        }
        if let Phase::Probing(until) = self.phase {
            if now >= until {
                // Half the window from before the drain, then slow start (which stops at the
                // old window or at half the target delay): one RTT back on a long path, where
                // a slow start from one frame would cost log2(window) RTTs per drain, and no
                // synchronised burst of every session's full window into the emptied queue.
                self.cwnd = (self.ssthresh / 2.0).max(self.mss * RESUME_FRAMES);
                self.phase = Phase::SlowStart;
            }
        }
    }

    fn next_timer(&self) -> Option<Instant> {
        match self.phase {
            Phase::Paused(t) | Phase::Probing(t) => Some(t),
            _ => None,
        }
    }

    fn on_loss(&mut self, now: Instant, sent: Instant, srtt: Duration) {
        if sent < self.recovery_until {
            return;
        }
        self.recovery_until = now + srtt;
        // A loss behind a queue is congestion; a loss with no queue is most likely the link's.
        let congested = self.queuing >= self.target / 2;
        self.cwnd *= if congested { 0.5 } else { 7.0 / 8.0 };
        self.clamp();
        if self.phase == Phase::SlowStart {
            self.leave_slow_start();
        }
    }

    fn on_rto(&mut self, _now: Instant) {
        self.ssthresh = (self.cwnd / 2.0).max(self.mss);
        self.cwnd = self.mss;
        if !matches!(self.phase, Phase::Paused(_) | Phase::Probing(_)) {
            self.phase = Phase::SlowStart;
        }
    }

    fn window(&self) -> usize {
        match self.phase {
            Phase::Paused(_) => 0,
            _ => self.cwnd as usize,
        }
    }

    fn pacing_gain(&self) -> f64 {
        if self.phase == Phase::SlowStart {
            2.0
        } else {
            1.25
        }
    }

    fn base_delay(&self) -> Option<Duration> {
        self.base.get()
    }
}

/// Token-bucket pacer: `rate = gain · window / srtt` (gain from [`Controller::pacing_gain`]),
/// bursts of `burst` bytes.
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

    fn refill(&mut self, now: Instant, window: usize, srtt: Duration, gain: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        let rate = gain * window as f64 / srtt.as_secs_f64().max(1e-6);
        self.tokens = (self.tokens + dt * rate).min(self.burst.max(window as f64 / 4.0));
    }

    /// When a frame of `bytes` may leave: `None` = now.
    pub fn delay(
        &mut self,
        now: Instant,
        bytes: usize,
        window: usize,
        srtt: Duration,
        gain: f64,
    ) -> Option<Instant> {
        self.refill(now, window, srtt, gain);
        if self.tokens >= bytes as f64 {
            return None;
        }
        let rate = gain * window as f64 / srtt.as_secs_f64().max(1e-6);
        let wait = (bytes as f64 - self.tokens) / rate;
        Some(now + Duration::from_secs_f64(wait.min(1.0)))
    }

    /// Forget the credit saved while the sender was held back (a drain's pause), so that
    /// sessions resuming together do not all burst at once.
    pub fn reset(&mut self, now: Instant) {
        self.tokens = self.tokens.min(0.0);
        self.last = now;
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

    const MSS: usize = 1500;

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    fn at_us(n: u64) -> Instant {
        Instant::from_nanos(n * 1000)
    }

    /// Acknowledge one full frame per `step_us`, each with RTT `rtt`.
    fn feed(c: &mut DelayBased, from_us: u64, n: u64, step_us: u64, rtt: Duration) -> u64 {
        let mut t = from_us;
        for _ in 0..n {
            c.on_tick(at_us(t));
            c.on_ack(at_us(t), MSS, rtt, rtt, true, true);
            t += step_us;
        }
        t
    }

    #[test]
    fn slow_start_then_delay_steers_the_window() {
        let mut c = DelayBased::new(MSS, Duration::from_millis(1), 10_000_000, 7);
        assert_eq!(c.window(), 10 * MSS, "RFC 6928 initial window");
        // No queue: slow start roughly doubles per window of ACKs.
        let t = feed(&mut c, 0, 10, 10, us(100));
        assert!(c.window() >= 19 * MSS, "slow start: {}", c.window());
        // Queuing far above the target: leaves slow start, then cuts at most once per RTT.
        let w = c.window();
        let t = feed(&mut c, t, 1, 10, us(5100));
        assert_eq!(
            c.window(),
            w,
            "the first queued sample only ends slow start"
        );
        let t = feed(&mut c, t, 1, 10, us(5100));
        let cut = c.window();
        assert!(
            cut < w && cut >= w / 2,
            "one bounded decrease: {w} -> {cut}"
        );
        let t = feed(&mut c, t, 5, 10, us(5100));
        assert_eq!(c.window(), cut, "no second decrease within an RTT");
        // Back under the target: additive increase, about a frame per window of ACKs.
        let before = c.window();
        let frames = before / MSS;
        feed(&mut c, t + 10_000, frames as u64, 10, us(150));
        let grown = c.window() - before;
        assert!(
            (MSS..=5 * MSS).contains(&grown),
            "additive increase over one window: {grown} bytes"
        );
    }

    #[test]
    fn window_only_grows_when_it_limits_the_sender() {
        let mut c = DelayBased::new(MSS, Duration::from_millis(1), 10_000_000, 7);
        for i in 0..100 {
            c.on_ack(at_us(i * 10), MSS, us(100), us(100), false, true);
        }
        assert_eq!(
            c.window(),
            10 * MSS,
            "an application-limited sender keeps its window"
        );
    }

    #[test]
    fn below_one_frame_the_window_is_a_rate() {
        let mut c = DelayBased::new(MSS, Duration::from_millis(1), 10_000_000, 7);
        feed(&mut c, 0, 1, 10, us(100)); // base 100 µs
        let mut t = 1000;
        for _ in 0..200 {
            t = feed(&mut c, t, 1, 2000, us(10_000)); // 9.9 ms of queue, once per RTT
        }
        assert!(c.window() < MSS, "window {}", c.window());
        assert!(c.window() >= MSS / 8, "floor of an eighth of a frame");
    }

    #[test]
    fn random_loss_without_queue_costs_little_congestion_loss_halves() {
        let mut c = DelayBased::new(MSS, Duration::from_millis(1), 10_000_000, 7);
        let t = feed(&mut c, 0, 30, 10, us(100));
        let w = c.window() as f64;
        c.on_loss(at_us(t), at_us(t - 5), us(100));
        assert!((c.window() as f64 - w * 7.0 / 8.0).abs() < 2.0);
        // A second loss from the same flight is the same event.
        c.on_loss(at_us(t + 1), at_us(t - 4), us(100));
        assert!((c.window() as f64 - w * 7.0 / 8.0).abs() < 2.0);
        let t = feed(&mut c, t + 200, 1, 10, us(2100)); // now there is a queue
        let w = c.window() as f64;
        c.on_loss(at_us(t + 500), at_us(t + 400), us(100));
        assert!(
            (c.window() as f64 - w / 2.0).abs() < 2.0,
            "{} vs {w}",
            c.window()
        );
        c.on_rto(at_us(t + 600));
        assert_eq!(c.window(), MSS, "an RTO restarts from one frame");
    }

    #[test]
    fn a_drain_pauses_then_resumes_from_one_frame() {
        let mut c = DelayBased::new(MSS, Duration::from_millis(1), 10_000_000, 7);
        let t = feed(&mut c, 0, 40, 10, us(100));
        let w = c.window();
        let srtt = us(400);
        c.on_drain(at_us(t), srtt);
        assert_eq!(c.window(), 0, "paused");
        let resume = c.next_timer().expect("a resume timer");
        assert!(resume >= at_us(t) + srtt && resume < at_us(t) + srtt * 2);
        // ACKs of frames already in flight do not end the pause early.
        c.on_ack(at_us(t + 10), MSS, us(300), srtt, true, true);
        c.on_tick(at_us(t + 10));
        assert_eq!(c.window(), 0);
        // A second DRAIN flag in the same drain is ignored.
        c.on_drain(at_us(t + 20), srtt);
        assert_eq!(c.next_timer(), Some(resume));
        c.on_tick(resume);
        assert_eq!(c.window(), MSS, "resumes with one frame");
        // …and probes with that one frame until 2.5 RTTs after the drain began.
        let probe_end = at_us(t) + srtt * 2 + srtt / 2;
        assert_eq!(c.next_timer(), Some(probe_end));
        c.on_ack(resume, MSS, us(100), srtt, true, true);
        assert_eq!(c.window(), MSS, "no growth while probing");
        c.on_tick(probe_end);
        assert_eq!(c.next_timer(), None);
        assert_eq!(c.window(), w / 2, "half the window from before the drain");
        feed(&mut c, 20_000, 30, 10, us(100));
        assert!(
            c.window() >= w,
            "slow start back to it: {} < {w}",
            c.window()
        );
    }

    #[test]
    fn base_delay_follows_the_minimum_and_expires_after_ten_buckets() {
        let mut b = BaseDelay::default();
        assert_eq!(b.get(), None);
        let s = Instant::from_nanos(0);
        b.update(s, us(300));
        b.update(s + Duration::from_millis(50), us(200));
        assert_eq!(b.get(), Some(us(200)));
        // The route changes and the true base rises to 500 µs: it is adopted once the old
        // minimum has aged out of the ten 100 ms buckets.
        for k in 1..=9 {
            b.update(s + BASE_BUCKET * k, us(500));
            assert_eq!(b.get(), Some(us(200)), "after {k} buckets");
        }
        b.update(s + BASE_BUCKET * 10, us(500));
        assert_eq!(b.get(), Some(us(500)));
        // A long silence clears every bucket.
        b.update(s + Duration::from_secs(100), us(700));
        assert_eq!(b.get(), Some(us(700)));
    }

    #[test]
    fn pacer_spaces_frames() {
        let mut p = Pacer::new(3000);
        let srtt = Duration::from_millis(1);
        let now = Instant::from_nanos(1);
        assert!(p.delay(now, 1500, 15000, srtt, 1.25).is_none());
        p.on_sent(1500);
        assert!(p.delay(now, 1500, 15000, srtt, 1.25).is_none());
        p.on_sent(1500);
        let next = p.delay(now, 1500, 15000, srtt, 1.25).expect("must wait");
        assert!(next > now);
    }
}
