//! Sender half of a session: per-class pending queues with the PCIe ordering scheduler,
//! credit gating, the replay buffer, ACK/SACK processing and loss detection
//! (docs/protocol.md §5 and §6).

use super::frame::{record_len, AckBlock, CreditLimits};
use super::time::Instant;
use crate::tlp::{Credits, OrderingClass};
use bytes::Bytes;
use std::collections::VecDeque;

const P: usize = 0;

/// Signed distance `a - b` in sequence space.
pub(crate) fn seq_diff(a: u32, b: u32) -> i32 {
    a.wrapping_sub(b) as i32
}

#[derive(Debug)]
struct Pending {
    tlp: Bytes,
    credits: Credits,
    order: u64,
}

#[derive(Debug)]
pub(crate) struct Sent {
    pub tlp: Bytes,
    pub class: u8,
    pub sent: Instant,
    pub pn: u64,
    pub acked: bool,
    pub queued: bool,
    pub in_flight: bool,
    pub retransmitted: bool,
}

/// Outcome of processing an ACK block.
#[derive(Debug, Default)]
pub(crate) struct AckOutcome {
    pub newly_acked_bytes: usize,
    pub rtt_sample_sent: Option<Instant>,
    /// Packet number of the frame that gave the RTT sample.
    pub rtt_sample_pn: u64,
    pub lost: u64,
    pub lost_sent: Option<Instant>,
    pub progress: bool,
}

#[derive(Debug)]
pub(crate) struct Sender {
    pending: [VecDeque<Pending>; 3],
    next_order: u64,
    pub pending_bytes: usize,
    pub unacked: VecDeque<Sent>,
    base_seq: u32,
    pub next_seq: u32,
    pub retx: VecDeque<u32>,
    consumed: CreditLimits,
    limit: CreditLimits,
    peer_initial: CreditLimits,
    pub in_flight: usize,
    rack_pn: u64,
}

fn afford(limit: &CreditLimits, consumed: &CreditLimits, c: usize, cr: Credits) -> bool {
    let ok =
        |i: usize, need: u16| seq_diff(limit[i], consumed[i].wrapping_add(u32::from(need))) >= 0;
    ok(2 * c, cr.header) && ok(2 * c + 1, cr.data)
}

impl Sender {
    pub fn new(peer_initial: CreditLimits) -> Self {
        Sender {
            pending: Default::default(),
            next_order: 0,
            pending_bytes: 0,
            unacked: VecDeque::with_capacity(1024),
            base_seq: 0,
            next_seq: 0,
            retx: VecDeque::with_capacity(256),
            consumed: [0; 6],
            limit: peer_initial,
            peer_initial,
            in_flight: 0,
            rack_pn: 0,
        }
    }

    /// Whether the peer's initial allocation could ever admit this TLP.
    pub fn fits_allocation(&self, class: OrderingClass, cr: Credits) -> bool {
        let c = class.index();
        u32::from(cr.header) <= self.peer_initial[2 * c]
            && u32::from(cr.data) <= self.peer_initial[2 * c + 1]
    }

    pub fn push(&mut self, tlp: Bytes, class: OrderingClass, credits: Credits) {
        self.pending_bytes += tlp.len();
        self.pending[class.index()].push_back(Pending {
            tlp,
            credits,
            order: self.next_order,
        });
        self.next_order += 1;
    }

    pub fn has_pending(&self) -> bool {
        self.pending.iter().any(|q| !q.is_empty())
    }

    /// The class whose front TLP may go next under the PCIe ordering rules and credits.
    pub fn next_eligible(&self) -> Option<usize> {
        let p_front = self.pending[P].front().map(|p| p.order);
        let mut best: Option<(u64, usize)> = None;
        for c in 0..3 {
            let Some(front) = self.pending[c].front() else {
                continue;
            };
            // NP and Cpl never pass an earlier Posted TLP; Posted may pass both.
            if c != P && p_front.is_some_and(|po| po < front.order) {
                continue;
            }
            if !afford(&self.limit, &self.consumed, c, front.credits) {
                continue;
            }
            if best.is_none_or(|(o, _)| front.order < o) {
                best = Some((front.order, c));
            }
        }
        best.map(|(_, c)| c)
    }

    /// Peek the length of the next TLP of class `c`.
    pub fn front_len(&self, c: usize) -> usize {
        self.pending[c].front().map_or(0, |p| p.tlp.len())
    }

    /// Take the front TLP of class `c`, charge its credits, give it a seq; returns the seq.
    pub fn take(&mut self, c: usize, now: Instant, pn: u64) -> Option<(u32, &Sent)> {
        let p = self.pending[c].pop_front()?;
        self.pending_bytes -= p.tlp.len();
        self.consumed[2 * c] = self.consumed[2 * c].wrapping_add(p.credits.header.into());
        self.consumed[2 * c + 1] = self.consumed[2 * c + 1].wrapping_add(p.credits.data.into());
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.in_flight += record_len(p.tlp.len());
        self.unacked.push_back(Sent {
            tlp: p.tlp,
            class: c as u8,
            sent: now,
            pn,
            acked: false,
            queued: false,
            in_flight: true,
            retransmitted: false,
        });
        self.unacked.back().map(|s| (seq, s))
    }

    /// Entry for a seq in the replay buffer.
    pub fn entry_mut(&mut self, seq: u32) -> Option<&mut Sent> {
        let off = seq_diff(seq, self.base_seq);
        if off < 0 {
            return None;
        }
        self.unacked.get_mut(off as usize)
    }

    /// Mark an entry as retransmitted now in frame `pn`.
    pub fn on_retransmit(&mut self, seq: u32, now: Instant, pn: u64) {
        let mut add = 0;
        if let Some(e) = self.entry_mut(seq) {
            e.sent = now;
            e.pn = pn;
            e.queued = false;
            e.retransmitted = true;
            if !e.in_flight {
                e.in_flight = true;
                add = record_len(e.tlp.len());
            }
        }
        self.in_flight += add;
    }

    /// Whether anything sent is still unacknowledged.
    pub fn has_outstanding(&self) -> bool {
        self.unacked.iter().any(|e| !e.acked)
    }

    pub fn on_ack(&mut self, ack: &AckBlock) -> AckOutcome {
        for i in 0..6 {
            if seq_diff(ack.limits[i], self.limit[i]) > 0 {
                self.limit[i] = ack.limits[i];
            }
        }
        let mut out = AckOutcome::default();
        let len = self.unacked.len();
        let cum = seq_diff(ack.cum_ack, self.base_seq);
        if cum as i64 > len as i64 {
            return out; // acknowledges TLPs never sent: ignore (peer bug)
        }
        let mut best_pn = 0u64;
        let mark = |s: &mut Self, idx: usize, out: &mut AckOutcome, best: &mut u64| {
            let e = &mut s.unacked[idx];
            if e.acked {
                return;
            }
            e.acked = true;
            let n = record_len(e.tlp.len());
            out.newly_acked_bytes += n;
            if e.in_flight {
                e.in_flight = false;
                s.in_flight -= n;
            }
            if e.pn > *best {
                *best = e.pn;
                out.rtt_sample_sent = (!e.retransmitted).then_some(e.sent);
                out.rtt_sample_pn = e.pn;
            }
            e.tlp = Bytes::new();
        };
        if cum > 0 {
            for idx in 0..cum as usize {
                mark(self, idx, &mut out, &mut best_pn);
            }
        }
        for &(start, end) in ack.sack.iter().take(ack.n_sack.into()) {
            let s = seq_diff(start, self.base_seq).max(0) as i64;
            let e = (seq_diff(end, self.base_seq) as i64).min(len as i64);
            let mut i = s;
            while i < e {
                mark(self, i as usize, &mut out, &mut best_pn);
                i += 1;
            }
        }
        while self.unacked.front().is_some_and(|e| e.acked) {
            self.unacked.pop_front();
            self.base_seq = self.base_seq.wrapping_add(1);
        }
        out.progress = out.newly_acked_bytes > 0;
        if best_pn > self.rack_pn {
            self.rack_pn = best_pn;
        }
        // Fast retransmit: anything sent 3 or more frames before an acknowledged frame.
        let rack = self.rack_pn;
        for i in 0..self.unacked.len() {
            let e = &mut self.unacked[i];
            if !e.retransmitted && e.pn + 3 > rack {
                break; // first transmissions are in pn order: nothing later qualifies
            }
            if e.acked || e.queued || e.pn + 3 > rack {
                continue;
            }
            e.queued = true;
            if e.in_flight {
                e.in_flight = false;
                self.in_flight -= record_len(e.tlp.len());
            }
            out.lost += 1;
            out.lost_sent = Some(out.lost_sent.map_or(e.sent, |t: Instant| t.max(e.sent)));
            let seq = self.base_seq.wrapping_add(i as u32);
            self.retx.push_back(seq);
        }
        out
    }

    /// RTO: everything unacknowledged is presumed lost. Returns how many.
    pub fn on_rto(&mut self) -> u64 {
        let mut n = 0;
        for i in 0..self.unacked.len() {
            let e = &mut self.unacked[i];
            if e.acked || e.queued {
                continue;
            }
            e.queued = true;
            if e.in_flight {
                e.in_flight = false;
                self.in_flight -= record_len(e.tlp.len());
            }
            self.retx.push_back(self.base_seq.wrapping_add(i as u32));
            n += 1;
        }
        n
    }

    /// Every Non-Posted TLP not yet acknowledged (pending or in the replay buffer).
    pub fn drain_nonposted(&mut self) -> Vec<Bytes> {
        let np = OrderingClass::NonPosted.index();
        let mut v: Vec<Bytes> = self
            .unacked
            .iter()
            .filter(|e| !e.acked && usize::from(e.class) == np)
            .map(|e| e.tlp.clone())
            .collect();
        v.extend(self.pending[np].drain(..).map(|p| p.tlp));
        v
    }

    /// Memory held (bytes of TLPs queued or unacknowledged).
    pub fn held_bytes(&self) -> usize {
        self.pending_bytes + self.unacked.iter().map(|e| e.tlp.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cr(h: u16, d: u16) -> Credits {
        Credits { header: h, data: d }
    }

    #[test]
    fn posted_passes_blocked_nonposted_but_not_the_reverse() {
        // NP has no header credits at all.
        let mut s = Sender::new([10, 100, 0, 100, 10, 100]);
        s.push(
            Bytes::from_static(b"np"),
            OrderingClass::NonPosted,
            cr(1, 0),
        );
        s.push(Bytes::from_static(b"p1"), OrderingClass::Posted, cr(1, 1));
        s.push(
            Bytes::from_static(b"c1"),
            OrderingClass::Completion,
            cr(1, 1),
        );
        assert_eq!(s.next_eligible(), Some(0), "posted passes the blocked NP");
        s.take(0, Instant::ZERO, 1);
        assert_eq!(
            s.next_eligible(),
            Some(2),
            "completion passes the blocked NP"
        );
        s.take(2, Instant::ZERO, 1);
        assert_eq!(s.next_eligible(), None);

        // Posted blocked: a later NP must wait behind it.
        let mut s = Sender::new([0, 0, 10, 10, 10, 10]);
        s.push(Bytes::from_static(b"p"), OrderingClass::Posted, cr(1, 1));
        s.push(Bytes::from_static(b"n"), OrderingClass::NonPosted, cr(1, 0));
        s.push(
            Bytes::from_static(b"c"),
            OrderingClass::Completion,
            cr(1, 0),
        );
        assert_eq!(s.next_eligible(), None, "NP/Cpl never pass posted");
        s.on_ack(&AckBlock {
            limits: [1, 1, 10, 10, 10, 10],
            ..Default::default()
        });
        assert_eq!(s.next_eligible(), Some(0));
    }

    #[test]
    fn sack_and_fast_retransmit() {
        let mut s = Sender::new([100, 100, 100, 100, 100, 100]);
        for i in 0..6u64 {
            s.push(Bytes::from_static(b"abcd"), OrderingClass::Posted, cr(1, 1));
            s.take(0, Instant::from_nanos(i), i + 1);
        }
        // seq 0 lost; 1..6 received.
        let out = s.on_ack(&AckBlock {
            cum_ack: 0,
            n_sack: 1,
            sack: [(1, 6), (0, 0), (0, 0)],
            ..Default::default()
        });
        assert_eq!(out.lost, 1);
        assert_eq!(s.retx.front(), Some(&0));
        assert_eq!(s.unacked.len(), 6);
        let out = s.on_ack(&AckBlock {
            cum_ack: 6,
            ..Default::default()
        });
        assert!(out.progress);
        assert!(s.unacked.is_empty());
        assert_eq!(s.in_flight, 0);
        // ack for never-sent TLPs is ignored
        let out = s.on_ack(&AckBlock {
            cum_ack: 100,
            ..Default::default()
        });
        assert!(!out.progress);
    }
}
