//! A seeded, in-memory, faulty link for deterministic simulation of the sans-I/O core
//! (docs/transport.md "Tests"). Loss (random and Gilbert–Elliott bursts), reordering,
//! duplication, bit corruption, delay with jitter, partitions; each direction has its own
//! [`Faults`], so asymmetric links are one configuration away. Time is simulated.

use super::time::Instant;
use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

/// Faults of one direction.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability a frame is lost.
    pub loss: f64,
    /// Gilbert–Elliott bursts: (P(good→bad), P(bad→good)); every frame is lost while bad.
    pub burst: Option<(f64, f64)>,
    /// Probability a frame is delivered twice.
    pub duplicate: f64,
    /// Probability a frame is held back by `reorder_delay` (so later frames overtake it).
    pub reorder: f64,
    /// Extra delay of a reordered frame.
    pub reorder_delay: Duration,
    /// Probability one random bit of a frame is flipped.
    pub corrupt: f64,
    /// Base one-way delay.
    pub delay: Duration,
    /// Uniform extra delay in `[0, jitter)` (frames stay in order).
    pub jitter: Duration,
    /// Time windows during which everything is lost.
    pub partitions: Vec<(Instant, Instant)>,
}

/// Per-direction counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Frames offered.
    pub sent: u64,
    /// Frames dropped by loss, bursts or partitions.
    pub dropped: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Frames with a flipped bit.
    pub corrupted: u64,
    /// Frames delayed to be overtaken.
    pub reordered: u64,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct InFlight {
    at: Reverse<Instant>,
    order: Reverse<u64>,
    to: usize,
    bytes: Vec<u8>,
}

/// A two-node link (node 0 and node 1).
#[derive(Debug)]
pub struct Link {
    faults: [Faults; 2],
    bad: [bool; 2],
    last_at: [Instant; 2],
    rng: StdRng,
    queue: BinaryHeap<InFlight>,
    order: u64,
    /// Counters per direction (index = sending node).
    pub stats: [LinkStats; 2],
    /// Largest number of frames ever in flight (memory bound).
    pub max_queued: usize,
}

impl Link {
    /// A link with faults `a_to_b` for frames sent by node 0 and `b_to_a` for node 1.
    pub fn new(seed: u64, a_to_b: Faults, b_to_a: Faults) -> Self {
        Link {
            faults: [a_to_b, b_to_a],
            bad: [false; 2],
            last_at: [Instant::ZERO; 2],
            rng: StdRng::seed_from_u64(seed),
            queue: BinaryHeap::new(),
            order: 0,
            stats: Default::default(),
            max_queued: 0,
        }
    }

    /// Replace the faults of the direction sent by `from`.
    pub fn set_faults(&mut self, from: usize, f: Faults) {
        self.faults[from] = f;
    }

    /// Node `from` sends `frame` at `now`.
    pub fn send(&mut self, now: Instant, from: usize, frame: &[u8]) {
        let d = from & 1;
        let f = &self.faults[d];
        self.stats[d].sent += 1;
        let mut lost = f.partitions.iter().any(|&(a, b)| now >= a && now < b);
        if let Some((g2b, b2g)) = f.burst {
            let flip = if self.bad[d] { b2g } else { g2b };
            if self.rng.gen_bool(flip) {
                self.bad[d] = !self.bad[d];
            }
            lost |= self.bad[d];
        }
        if f.loss > 0.0 && self.rng.gen_bool(f.loss) {
            lost = true;
        }
        if lost {
            self.stats[d].dropped += 1;
            return;
        }
        let copies = if f.duplicate > 0.0 && self.rng.gen_bool(f.duplicate) {
            self.stats[d].duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            let f = &self.faults[d];
            let mut at = now + f.delay;
            if f.jitter > Duration::ZERO {
                let j = self.rng.gen_range(0..f.jitter.as_nanos() as u64);
                at = at + Duration::from_nanos(j);
            }
            // Jitter alone never reorders a direction (a real path is FIFO).
            at = at.max(self.last_at[d]);
            self.last_at[d] = at;
            if f.reorder > 0.0 && self.rng.gen_bool(f.reorder) {
                at = at + f.reorder_delay;
                self.stats[d].reordered += 1;
            }
            let mut bytes = frame.to_vec();
            if f.corrupt > 0.0 && self.rng.gen_bool(f.corrupt) && !bytes.is_empty() {
                let bit = self.rng.gen_range(0..bytes.len() * 8);
                bytes[bit / 8] ^= 1 << (bit % 8);
                self.stats[d].corrupted += 1;
            }
            self.order += 1;
            self.queue.push(InFlight {
                at: Reverse(at),
                order: Reverse(self.order),
                to: 1 - d,
                bytes,
            });
        }
        self.max_queued = self.max_queued.max(self.queue.len());
    }

    /// When the next frame arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.peek().map(|f| f.at.0)
    }

    /// A frame due at `now`: (receiving node, bytes).
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, BytesMut)> {
        if self.queue.peek()?.at.0 > now {
            return None;
        }
        let f = self.queue.pop()?;
        Some((f.to, BytesMut::from(&f.bytes[..])))
    }

    /// Frames in flight.
    pub fn in_flight(&self) -> usize {
        self.queue.len()
    }
}

/// One direction of a shared bottleneck: a FIFO drop-tail queue of at most `limit` frames
/// waiting to be serialized at `rate` bytes per second, then `delay` of propagation. Frames from
/// every sender share it, so it models a congested switch port (docs/transport.md "Fairness").
#[derive(Debug)]
pub struct Bottleneck {
    rate: f64,
    limit: usize,
    delay: Duration,
    /// (serialization finished, arrival, routing tag, bytes), in FIFO order.
    queue: std::collections::VecDeque<(Instant, Instant, usize, Vec<u8>)>,
    busy_until: Instant,
    /// Frames offered.
    pub offered: u64,
    /// Frames dropped because the queue was full.
    pub dropped: u64,
    /// Bytes that finished serialization (left the queue).
    pub bytes_forwarded: u64,
    /// Largest backlog (frames waiting or being serialized) seen by an arriving frame.
    pub max_depth: usize,
    depth_sum: u64,
}

impl Bottleneck {
    /// A port serializing `rate` bytes per second with room for `limit` frames.
    pub fn new(rate: u64, limit: usize, delay: Duration) -> Self {
        Bottleneck {
            rate: rate as f64,
            limit,
            delay,
            queue: Default::default(),
            busy_until: Instant::ZERO,
            offered: 0,
            dropped: 0,
            bytes_forwarded: 0,
            max_depth: 0,
            depth_sum: 0,
        }
    }

    /// Frames not yet fully serialized at `now`.
    pub fn depth(&self, now: Instant) -> usize {
        self.queue.len() - self.queue.partition_point(|e| e.0 <= now)
    }

    /// Mean backlog seen by arriving frames (including dropped ones).
    pub fn mean_depth(&self) -> f64 {
        self.depth_sum as f64 / self.offered.max(1) as f64
    }

    /// Offer `frame` at `now`; returns whether it was queued (drop-tail). `tag` comes back
    /// from [`pop_due`](Self::pop_due) (the receiving node, or the sender on a many-to-one port).
    pub fn send(&mut self, now: Instant, tag: usize, frame: &[u8]) -> bool {
        self.offered += 1;
        let depth = self.depth(now);
        self.depth_sum += depth as u64;
        self.max_depth = self.max_depth.max(depth);
        if depth >= self.limit {
            self.dropped += 1;
            return false;
        }
        let start = self.busy_until.max(now);
        let done = start + Duration::from_secs_f64(frame.len() as f64 / self.rate);
        self.busy_until = done;
        self.bytes_forwarded += frame.len() as u64;
        self.queue
            .push_back((done, done + self.delay, tag, frame.to_vec()));
        true
    }

    /// When the next frame arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.front().map(|e| e.1)
    }

    /// A frame due at `now`: (tag, bytes).
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, BytesMut)> {
        if self.queue.front()?.1 > now {
            return None;
        }
        let (_, _, to, bytes) = self.queue.pop_front()?;
        Some((to, BytesMut::from(&bytes[..])))
    }
}

/// One serving loop for many sessions — the appliance's: one thread, one socket — run as
/// passes (issue 11, docs/transport.md "Many sessions on one serving loop"). A pass takes up
/// to `per_pass` frames that wait in the socket and costs `fixed` (the scans of every session
/// and function a pass makes, whatever it received) plus `per_frame` for each frame it took;
/// with probability `stall_prob` a pass starts `stall` late (the thread descheduled on a busy
/// machine). Frames arrive `delay` after they were sent into a receive buffer of `buffer`
/// bytes, each charged its length plus `overhead` (the kernel's per-datagram truesize); a
/// frame that does not fit is dropped, as `RcvbufErrors` counts.
#[derive(Debug)]
pub struct ServingLoop {
    fixed: Duration,
    per_frame: Duration,
    per_pass: usize,
    buffer: usize,
    overhead: usize,
    delay: Duration,
    stall: (f64, Duration),
    rng: StdRng,
    /// (arrival, routing tag, bytes), in arrival order.
    queue: std::collections::VecDeque<(Instant, usize, Vec<u8>)>,
    queued_bytes: usize,
    busy_until: Instant,
    /// Frames offered.
    pub offered: u64,
    /// Frames dropped because the receive buffer was full.
    pub dropped: u64,
    /// Passes run.
    pub passes: u64,
    /// Most bytes the receive buffer held.
    pub max_queued_bytes: usize,
}

impl ServingLoop {
    /// A loop taking up to `per_pass` frames per pass, each pass costing `fixed` +
    /// `per_frame` × frames taken, behind a receive buffer of `buffer` bytes.
    pub fn new(
        seed: u64,
        (fixed, per_frame, per_pass): (Duration, Duration, usize),
        (buffer, overhead): (usize, usize),
        stall: (f64, Duration),
        delay: Duration,
    ) -> Self {
        ServingLoop {
            fixed,
            per_frame,
            per_pass: per_pass.max(1),
            buffer,
            overhead,
            delay,
            stall,
            rng: StdRng::seed_from_u64(seed),
            queue: Default::default(),
            queued_bytes: 0,
            busy_until: Instant::ZERO,
            offered: 0,
            dropped: 0,
            passes: 0,
            max_queued_bytes: 0,
        }
    }

    /// Offer `frame` at `now` (times must not decrease); returns whether the buffer took it.
    /// `tag` comes back from [`pass`](Self::pass).
    pub fn send(&mut self, now: Instant, tag: usize, frame: &[u8]) -> bool {
        self.offered += 1;
        let charge = frame.len() + self.overhead;
        if self.queued_bytes + charge > self.buffer {
            self.dropped += 1;
            return false;
        }
        self.queued_bytes += charge;
        self.max_queued_bytes = self.max_queued_bytes.max(self.queued_bytes);
        self.queue
            .push_back((now + self.delay, tag, frame.to_vec()));
        true
    }

    /// When the loop is free for its next pass.
    pub fn free_at(&self) -> Instant {
        self.busy_until
    }

    /// When the next pass with a frame to take can start (`None`: nothing waits).
    pub fn next_pass(&self) -> Option<Instant> {
        let first = self.queue.front()?.0;
        Some(first.max(self.busy_until))
    }

    /// Start a pass at `now` if the loop is free: the frames it takes go to `out` as (tag,
    /// bytes); returns when the pass ends (what it sends leaves then). `None`: still busy.
    pub fn pass(&mut self, now: Instant, out: &mut Vec<(usize, BytesMut)>) -> Option<Instant> {
        if now < self.busy_until {
            return None;
        }
        let mut start = now;
        if self.stall.0 > 0.0 && self.rng.gen_bool(self.stall.0) {
            start = start + self.stall.1;
        }
        let mut n = 0u32;
        while (n as usize) < self.per_pass {
            match self.queue.front() {
                Some(f) if f.0 <= start => {}
                _ => break,
            }
            let Some((_, tag, bytes)) = self.queue.pop_front() else {
                break;
            };
            self.queued_bytes -= bytes.len() + self.overhead;
            out.push((tag, BytesMut::from(&bytes[..])));
            n += 1;
        }
        self.passes += 1;
        self.busy_until = start + self.fixed + self.per_frame * n;
        Some(self.busy_until)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_seeded_and_counted() {
        let f = Faults {
            loss: 0.3,
            duplicate: 0.1,
            corrupt: 0.1,
            delay: Duration::from_micros(10),
            ..Default::default()
        };
        let run = || {
            let mut l = Link::new(42, f.clone(), Faults::default());
            let mut got = 0;
            for i in 0..1000u64 {
                l.send(Instant::from_nanos(i), 0, &[1, 2, 3, 4]);
            }
            while l.pop_due(Instant::from_nanos(1_000_000)).is_some() {
                got += 1;
            }
            (got, l.stats[0].clone())
        };
        let (a, sa) = run();
        let (b, sb) = run();
        assert_eq!((a, &sa), (b, &sb), "same seed, same run");
        assert!(sa.dropped > 200 && sa.dropped < 400, "{sa:?}");
        assert_eq!(a as u64, 1000 - sa.dropped + sa.duplicated);
        // a partition drops everything inside it
        let mut l = Link::new(
            1,
            Faults {
                partitions: vec![(Instant::from_nanos(10), Instant::from_nanos(20))],
                ..Default::default()
            },
            Faults::default(),
        );
        for i in 0..30 {
            l.send(Instant::from_nanos(i), 0, &[0]);
        }
        assert_eq!(l.stats[0].dropped, 10);
    }

    #[test]
    fn bottleneck_serializes_and_drops_tail() {
        // 1000 bytes/s, room for 2 frames, 1 ms propagation.
        let mut b = Bottleneck::new(1000, 2, Duration::from_millis(1));
        let t0 = Instant::ZERO;
        assert!(b.send(t0, 1, &[0; 100]));
        assert!(b.send(t0, 2, &[0; 100]));
        assert!(
            !b.send(t0, 3, &[0; 100]),
            "third frame finds the queue full"
        );
        assert_eq!((b.offered, b.dropped, b.max_depth), (3, 1, 2));
        // first frame is serialized in 100 ms and arrives 1 ms later
        assert_eq!(b.next_arrival(), Some(Instant::from_nanos(101_000_000)));
        assert!(b.pop_due(Instant::from_nanos(100_000_000)).is_none());
        assert_eq!(
            b.pop_due(Instant::from_nanos(101_000_000)).map(|f| f.0),
            Some(1)
        );
        assert_eq!(b.depth(Instant::from_nanos(150_000_000)), 1);
        assert_eq!(b.next_arrival(), Some(Instant::from_nanos(201_000_000)));
    }
    #[test]
    fn serving_loop_takes_a_batch_per_pass_and_drops_when_full() {
        let us = Duration::from_micros(1);
        // 10 µs per pass + 1 µs per frame, up to 2 frames a pass; room for 3 frames of 10 B.
        let mut l = ServingLoop::new(1, (10 * us, us, 2), (3 * 12, 2), (0.0, us), us);
        let t0 = Instant::ZERO;
        for tag in 0..4 {
            assert_eq!(l.send(t0, tag, &[0; 10]), tag < 3, "frame {tag}");
        }
        assert_eq!((l.offered, l.dropped), (4, 1));
        assert_eq!(l.next_pass(), Some(t0 + us), "after the propagation delay");
        let mut out = Vec::new();
        let end = l.pass(t0 + us, &mut out).unwrap();
        assert_eq!(out.iter().map(|f| f.0).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(end, t0 + us + 12 * us, "fixed + 2 frames");
        assert!(
            l.pass(t0 + 12 * us, &mut out).is_none(),
            "busy until the pass ends"
        );
        assert!(l.send(end, 9, &[0; 10]), "room again");
        out.clear();
        assert_eq!(l.pass(end, &mut out), Some(end + 11 * us));
        assert_eq!(out.iter().map(|f| f.0).collect::<Vec<_>>(), [2]);
        assert_eq!(l.next_pass(), Some(end + 11 * us));
    }
}
