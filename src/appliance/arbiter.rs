//! Priority: how functions share the appliance's link when it is saturated (issue 14
//! "Policy"; docs/api.md "Policy" has what a user reads).
//!
//! Where they compete. Every TLP the appliance sends — a function's DMA requests, writes and
//! interrupts, the completions of a host's requests to it — is routed by the [`Router`] into
//! one queue here per function (the router's own TLPs, refusals of requests that reached no
//! function, have one more), and leaves in **deficit round robin** order by bytes
//! (M. Shreedhar, G. Varghese, "Efficient fair queuing using deficit round robin", SIGCOMM
//! 1995) into the short transmit queue that the serving loop drains into the sessions' send
//! queues. The serving loop submits into a session only while it holds less than about a
//! congestion window of unsent TLPs ([`pump::flush`], `Endpoint::wants_more`), so when the
//! link is saturated the functions' queues back up here, not in the session's own FIFO, and
//! the order in which they leave is the share of the link each one gets at the host: in
//! proportion to its weight, the function's priority. One host or many: the serving loop
//! takes TLPs in this order among the queues whose session wants more
//! ([`Arbiter::pop_where`]), so a slow host's session holds up only its own functions, and
//! the order set here is the order of the link for the others (the transport's own round
//! robin between sessions then only ever sees what this order gave it).
//!
//! DRR, as here: each backlogged queue has a deficit; the queue at the front of the round
//! sends its head while the deficit covers the head's bytes (header and data, what it takes
//! on the wire), and otherwise earns `weight × QUANTUM` bytes and goes to the back. A queue
//! that empties leaves the round and forgets its deficit (no credit is hoarded while idle),
//! so the scheduler is work-conserving: an idle queue's share goes to the others. Over any
//! stretch in which two queues stay backlogged, what each sent divided by its weight differs
//! by less than `2 × QUANTUM + MAX_TLP` bytes (tested); no queue starves: its head waits at
//! most `⌈head bytes / (weight × QUANTUM)⌉` rounds, each round at most `weight × QUANTUM`
//! plus one TLP of every other queue (tested with weights 1 and 100).
//!
//! Sans-I/O with no clock: DRR counts bytes, not time. Allocation-free once warm: the round
//! is a ring with room for every queue (each is in it at most once), and a queue's storage
//! stays allocated after it empties. A weight change takes effect from the queue's next
//! quantum; nothing queued moves, is lost or reordered.
//!
//! [`Router`]: super::Router
//! [`pump::flush`]: super::pump::flush

use std::collections::VecDeque;

use bytes::Bytes;

/// The lowest priority (weight 1).
pub const PRIORITY_MIN: u32 = 1;
/// The highest priority.
pub const PRIORITY_MAX: u32 = 100;
/// The priority of a function whose policy sets none.
pub const PRIORITY_DEFAULT: u32 = 10;
/// Bytes a queue earns per round per unit of weight.
pub const QUANTUM: u64 = 256;
/// TLPs in a function's queue at which the router holds the function's device threads before
/// their next DMA write (and [`BACKLOG_LOW`], below which it releases them). Larger than the
/// shapers' hold ([`HOLD_HIGH`](super::policy::HOLD_HIGH)): the queue must not run dry while
/// a released device thread gets back onto a busy CPU, or the function's share goes to the
/// others (at a 256-byte payload, 512 TLPs are about 1 ms of a 1 Gbit/s link).
pub const BACKLOG_HIGH: usize = 1024;
/// TLPs in a function's queue below which its held device threads are released.
pub const BACKLOG_LOW: usize = BACKLOG_HIGH / 2;
/// The queue of the router's own TLPs (refusals of requests that reached no function).
pub const OWN: usize = 256;
/// Queues: one per appliance device/function number, and [`OWN`].
pub const QUEUES: usize = 257;

#[derive(Debug)]
struct Queue<K> {
    q: VecDeque<(K, Bytes)>,
    weight: u32,
    deficit: u64,
    /// In the round (`active`).
    active: bool,
}

/// The per-function queues and their round (see the module docs).
#[derive(Debug)]
pub struct Arbiter<K> {
    queues: Vec<Queue<K>>,
    /// The backlogged queues, in round order; each at most once.
    active: VecDeque<u16>,
    len: usize,
}

impl<K> Default for Arbiter<K> {
    fn default() -> Self {
        Arbiter::new()
    }
}

impl<K> Arbiter<K> {
    /// Empty queues, every one at [`PRIORITY_DEFAULT`].
    pub fn new() -> Arbiter<K> {
        Arbiter {
            queues: (0..QUEUES)
                .map(|_| Queue {
                    q: VecDeque::new(),
                    weight: PRIORITY_DEFAULT,
                    deficit: 0,
                    active: false,
                })
                .collect(),
            active: VecDeque::with_capacity(QUEUES),
            len: 0,
        }
    }

    /// The same queues with their keys mapped by `f` (order, weights and deficits kept).
    pub fn map_keys<J>(self, f: impl Fn(K) -> J) -> Arbiter<J> {
        Arbiter {
            queues: self
                .queues
                .into_iter()
                .map(|q| Queue {
                    q: q.q.into_iter().map(|(k, t)| (f(k), t)).collect(),
                    weight: q.weight,
                    deficit: q.deficit,
                    active: q.active,
                })
                .collect(),
            active: self.active,
            len: self.len,
        }
    }

    /// Set queue `queue`'s weight, clamped to [`PRIORITY_MIN`]..=[`PRIORITY_MAX`] (an index
    /// past the last queue is ignored). Takes effect from its next quantum.
    pub fn set_weight(&mut self, queue: usize, weight: u32) {
        if let Some(q) = self.queues.get_mut(queue) {
            q.weight = weight.clamp(PRIORITY_MIN, PRIORITY_MAX);
        }
    }

    /// Queue `queue`'s weight.
    pub fn weight(&self, queue: usize) -> u32 {
        self.queues
            .get(queue)
            .map_or(PRIORITY_DEFAULT, |q| q.weight)
    }

    /// TLPs queued, all queues.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// TLPs in queue `queue`.
    pub fn queue_len(&self, queue: usize) -> usize {
        self.queues.get(queue).map_or(0, |q| q.q.len())
    }

    /// Queue `tlp` for session `key` at the back of queue `queue` (an index past the last
    /// queue goes to [`OWN`]).
    pub fn push(&mut self, queue: usize, key: K, tlp: Bytes) {
        let i = if queue < QUEUES { queue } else { OWN };
        let q = &mut self.queues[i];
        q.q.push_back((key, tlp));
        if !q.active {
            q.active = true;
            q.deficit = 0;
            self.active.push_back(i as u16);
        }
        self.len += 1;
    }

    /// The next TLP in round order: (its queue, its session, the TLP).
    pub fn pop(&mut self) -> Option<(usize, K, Bytes)> {
        self.pop_where(|_| true)
    }

    /// The next TLP in round order among the queues whose head goes to a session for which
    /// `eligible` holds (one that can take more now): a queue whose session cannot is passed
    /// over without earning its quantum and keeps its deficit, so a slow session holds up
    /// only its own functions, never another host's, and the others share in their weights'
    /// proportion meanwhile. `None` when nothing queued is eligible.
    pub fn pop_where(&mut self, mut eligible: impl FnMut(&K) -> bool) -> Option<(usize, K, Bytes)> {
        // Queues passed over in a row: once every queue in the round has been, none is
        // eligible (an eligible one resets the count and earns until it can send).
        let mut passed = 0;
        loop {
            let i = usize::from(*self.active.front()?);
            let q = &mut self.queues[i];
            let Some((key, head)) = q.q.front() else {
                // Cannot happen (an empty queue leaves the round), but never loop on it.
                q.active = false;
                q.deficit = 0;
                self.active.pop_front();
                continue;
            };
            if !eligible(key) {
                passed += 1;
                if passed >= self.active.len() {
                    // None is eligible (an eligible queue would have reset the count): undo
                    // the rotations, so that a call that sends nothing leaves the round as it
                    // was (else every such call would hand the next queue an extra quantum).
                    self.active.rotate_right(passed - 1);
                    return None;
                }
                self.active.rotate_left(1);
                continue;
            }
            passed = 0;
            let need = head.len() as u64;
            if q.deficit >= need {
                q.deficit -= need;
                let (k, t) = q.q.pop_front()?;
                if q.q.is_empty() {
                    q.active = false;
                    q.deficit = 0;
                    self.active.pop_front();
                }
                self.len -= 1;
                return Some((i, k, t));
            }
            q.deficit += u64::from(q.weight) * QUANTUM;
            self.active.rotate_left(1);
        }
    }

    /// Drop everything queued for session `key` (it ended: nothing may reach a later session
    /// that reuses its key); the rest keeps its order. Returns how many TLPs went.
    pub fn discard(&mut self, key: &K) -> usize
    where
        K: PartialEq,
    {
        let before = self.len;
        let queues = &mut self.queues;
        for &i in self.active.iter() {
            let q = &mut queues[usize::from(i)];
            q.q.retain(|(k, _)| k != key);
            if q.q.is_empty() {
                q.active = false;
                q.deficit = 0;
            }
        }
        self.active.retain(|&i| queues[usize::from(i)].active);
        self.len = self
            .active
            .iter()
            .map(|&i| queues[usize::from(i)].q.len())
            .sum();
        before - self.len
    }

    /// Hand `out` everything queued, in round order.
    pub fn drain(&mut self, mut out: impl FnMut(usize, K, Bytes)) {
        while let Some((i, k, t)) = self.pop() {
            out(i, k, t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest TLP the tests queue (4 KiB of data and a 4-DW header).
    const MAX_TLP: u64 = 4096 + 16;

    /// A TLP of `n` bytes whose first 8 bytes are `seq` (to check order).
    fn tlp(n: usize, seq: u64) -> Bytes {
        let mut v = vec![0u8; n.max(8)];
        v[..8].copy_from_slice(&seq.to_le_bytes());
        Bytes::from(v)
    }

    fn seq(t: &Bytes) -> u64 {
        u64::from_le_bytes(t[..8].try_into().unwrap())
    }

    /// A seeded size source: 16..=MAX_TLP bytes, mixing small (MSI-sized) and large TLPs.
    struct Sizes(u64);
    impl Sizes {
        fn next(&mut self) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let r = (self.0 >> 33) as usize;
            match r % 4 {
                0 => 16 + r % 64,
                1 => 16 + 256,
                _ => 16 + r % (MAX_TLP as usize - 15),
            }
        }
    }

    /// Queues `a` and `b` kept backlogged (refilled to `depth`), `pops` TLPs taken; checks at
    /// every step that bytes/weight stay within the DRR bound, and returns the bytes each sent.
    fn run(weights: (u32, u32), pops: usize, seed: u64) -> (u64, u64) {
        let mut arb = Arbiter::<u8>::new();
        arb.set_weight(1, weights.0);
        arb.set_weight(2, weights.1);
        let mut sizes = Sizes(seed);
        let (mut next, mut want) = ([0u64; 3], [0u64; 3]);
        let mut sent = [0u64; 3];
        for _ in 0..pops {
            for f in [1usize, 2] {
                while arb.queue_len(f) < 8 {
                    arb.push(f, f as u8, tlp(sizes.next(), next[f]));
                    next[f] += 1;
                }
            }
            let (i, k, t) = arb.pop().expect("backlogged");
            assert_eq!(usize::from(k), i, "a TLP left with another queue's key");
            assert_eq!(seq(&t), want[i], "queue {i} out of order");
            want[i] += 1;
            sent[i] += t.len() as u64;
            let a = sent[1] as f64 / f64::from(weights.0);
            let b = sent[2] as f64 / f64::from(weights.1);
            assert!(
                (a - b).abs() < (2 * QUANTUM + MAX_TLP) as f64,
                "bytes per weight apart by {} after {:?}",
                (a - b).abs(),
                sent
            );
        }
        (sent[1], sent[2])
    }

    #[test]
    fn two_backlogged_queues_share_in_the_ratio_of_their_weights() {
        for (w, seed) in [
            ((3, 1), 1),
            ((1, 1), 2),
            ((10, 7), 3),
            ((100, 1), 4),
            ((1, 5), 5),
        ] {
            let (a, b) = run(w, 200_000, seed);
            let got = a as f64 / b as f64;
            let want = f64::from(w.0) / f64::from(w.1);
            assert!(
                (got / want - 1.0).abs() < 0.005,
                "weights {w:?}: bytes {a}:{b} = {got:.4}, want {want}"
            );
        }
    }

    #[test]
    fn weight_one_is_never_starved_by_weight_100() {
        let mut arb = Arbiter::<u8>::new();
        arb.set_weight(0, PRIORITY_MAX);
        arb.set_weight(1, PRIORITY_MIN);
        let mut sizes = Sizes(9);
        let mut since_low = 0u64;
        let mut worst = 0u64;
        let mut low = 0;
        for _ in 0..100_000 {
            for f in [0usize, 1] {
                while arb.queue_len(f) < 4 {
                    arb.push(f, f as u8, tlp(sizes.next(), 0));
                }
            }
            let (i, _, t) = arb.pop().unwrap();
            if i == 1 {
                low += 1;
                since_low = 0;
            } else {
                since_low += t.len() as u64;
                worst = worst.max(since_low);
            }
        }
        // The light queue's head needs at most ⌈MAX_TLP / QUANTUM⌉ rounds to earn its bytes;
        // the heavy queue sends at most one quantum (and a TLP) in each.
        let rounds = MAX_TLP.div_ceil(QUANTUM);
        assert!(
            worst <= rounds * (u64::from(PRIORITY_MAX) * QUANTUM + MAX_TLP),
            "weight 1 waited behind {worst} bytes"
        );
        assert!(low > 100, "weight 1 sent {low} TLPs");
    }

    #[test]
    fn an_idle_queue_leaves_its_share_to_the_others_and_hoards_none() {
        let mut arb = Arbiter::<u8>::new();
        arb.set_weight(0, 1);
        arb.set_weight(1, 100);
        // Only the light queue has work: it gets every pop, none is refused.
        for s in 0..1000 {
            arb.push(0, 0, tlp(1000, s));
        }
        for s in 0..1000 {
            let (i, _, t) = arb.pop().expect("work-conserving");
            assert_eq!((i, seq(&t)), (0, s));
        }
        assert!(arb.is_empty() && arb.pop().is_none());
        // The heavy queue was idle all that time and saved no credit: the light queue's first
        // TLP waits only the ⌈1000 / QUANTUM⌉ = 4 rounds it needs to earn its bytes.
        for s in 0..200 {
            arb.push(1, 1, tlp(1000, s));
            arb.push(0, 0, tlp(1000, s));
        }
        let first_light = (0..200)
            .position(|_| arb.pop().unwrap().0 == 0)
            .expect("the light queue is served");
        assert!(
            first_light as u64 * 1000 <= 4 * 100 * QUANTUM + 1000,
            "the light queue waited {first_light} TLPs"
        );
    }

    #[test]
    fn a_weight_change_applies_from_the_next_round_and_moves_nothing() {
        let mut arb = Arbiter::<u8>::new();
        let mut next = [0u64; 2];
        let mut want = [0u64; 2];
        let mut sent = [0u64; 2];
        let mut step = |arb: &mut Arbiter<u8>, sent: &mut [u64; 2]| {
            for (f, n) in next.iter_mut().enumerate() {
                while arb.queue_len(f) < 8 {
                    arb.push(f, 0, tlp(512, *n));
                    *n += 1;
                }
            }
            let (i, _, t) = arb.pop().unwrap();
            assert_eq!(seq(&t), want[i]);
            want[i] += 1;
            sent[i] += t.len() as u64;
        };
        for _ in 0..10_000 {
            step(&mut arb, &mut sent);
        }
        let equal = sent[0] as f64 / sent[1] as f64;
        assert!((equal - 1.0).abs() < 0.01, "{sent:?}");
        arb.set_weight(0, 40);
        arb.set_weight(1, 10);
        sent = [0; 2];
        for _ in 0..50_000 {
            step(&mut arb, &mut sent);
        }
        let r = sent[0] as f64 / sent[1] as f64;
        assert!((r - 4.0).abs() < 0.02, "after the change: {r}");
        // Out of range is clamped, not refused or wrapped.
        arb.set_weight(0, 0);
        arb.set_weight(1, 1_000_000);
        assert_eq!((arb.weight(0), arb.weight(1)), (PRIORITY_MIN, PRIORITY_MAX));
    }

    #[test]
    fn discard_drops_one_session_and_keeps_the_others_in_order() {
        let mut arb = Arbiter::<u8>::new();
        for s in 0..10 {
            arb.push(1, 7, tlp(100, s));
            arb.push(2, 7, tlp(100, s));
            arb.push(2, 8, tlp(100, 100 + s));
        }
        assert_eq!(arb.discard(&7), 20);
        assert_eq!((arb.len(), arb.queue_len(1), arb.queue_len(2)), (10, 0, 10));
        let mut got = Vec::new();
        arb.drain(|i, k, t| got.push((i, k, seq(&t))));
        assert_eq!(got, (0..10).map(|s| (2, 8, 100 + s)).collect::<Vec<_>>());
        // Queue 1 left the round: it comes back as a new one.
        arb.push(1, 7, tlp(100, 0));
        assert_eq!(arb.pop().map(|p| p.0), Some(1));
        assert!(arb.is_empty());
    }

    #[test]
    fn drain_takes_everything_in_round_order_and_map_keys_keeps_it() {
        let mut arb = Arbiter::<u8>::new();
        for s in 0..10 {
            arb.push(5, 1, tlp(100, s));
            arb.push(OWN, 2, tlp(100, s));
            arb.push(9999, 3, tlp(100, s));
        }
        assert_eq!(arb.queue_len(OWN), 20);
        let mut arb = arb.map_keys(|k| u32::from(k) * 10);
        let mut got = Vec::new();
        arb.drain(|i, k, t| got.push((i, k, seq(&t))));
        assert_eq!(got.len(), 30);
        assert!(arb.is_empty());
        assert_eq!(arb.len(), 0);
        let fives: Vec<u64> = got.iter().filter(|g| g.0 == 5).map(|g| g.2).collect();
        assert_eq!(fives, (0..10).collect::<Vec<_>>());
        assert!(got.iter().all(|g| (g.0 == 5) == (g.1 == 10)));
    }

    #[test]
    fn a_session_that_takes_nothing_holds_up_only_its_own_queues() {
        let mut arb = Arbiter::<u8>::new();
        arb.set_weight(1, 30);
        arb.set_weight(2, 10);
        for s in 0..4000 {
            arb.push(1, b'a', tlp(256, s));
            arb.push(2, b'b', tlp(256, s));
            arb.push(3, b'c', tlp(256, s));
        }
        // Session c takes nothing: a and b share in their weights' proportion meanwhile.
        let mut got = [0u64; 2];
        let mut next = [0u64; 2];
        for _ in 0..2000 {
            let (i, k, t) = arb.pop_where(|k| *k != b'c').expect("a and b are eligible");
            assert_ne!(k, b'c');
            let f = i - 1;
            assert_eq!(seq(&t), next[f], "queue {i} out of order");
            next[f] += 1;
            got[f] += 1;
        }
        let r = got[0] as f64 / got[1] as f64;
        assert!(
            (2.9..=3.1).contains(&r),
            "30:10 beside a stalled session: {got:?}"
        );
        assert_eq!(arb.queue_len(3), 4000, "nothing of c's queue went");
        // Nothing eligible: None, nothing lost.
        let before = arb.len();
        let round: Vec<u16> = arb.active.iter().copied().collect();
        assert!(arb.pop_where(|_| false).is_none());
        assert_eq!(arb.len(), before);
        let after: Vec<u16> = arb.active.iter().copied().collect();
        assert_eq!(
            round, after,
            "a pop that sends nothing leaves the round as it was"
        );
        // Once c takes again, its queue goes in order and gets its share.
        let mut c = 0;
        while let Some((i, _, t)) = arb.pop_where(|k| *k == b'c') {
            assert_eq!((i, seq(&t)), (3, c));
            c += 1;
        }
        assert_eq!(c, 4000);
    }
}
