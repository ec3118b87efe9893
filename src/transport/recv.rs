//! Receiver half of a session: duplicate suppression, the reorder buffer, in-order delivery
//! with per-class taking under the PCIe ordering rules, credit return and ACK generation
//! (docs/protocol.md §5 and §6).

use super::frame::{AckBlock, CreditLimits, MAX_SACK};
use super::send::seq_diff;
use super::time::Instant;
use crate::tlp::{Credits, OrderingClass};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::Duration;

/// A TLP delivered to the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Its ordering class.
    pub class: OrderingClass,
    /// The TLP bytes (a slice of the received frame: no copy).
    pub tlp: Bytes,
}

#[derive(Debug)]
struct Held {
    tlp: Bytes,
    class: OrderingClass,
    credits: Credits,
    order: u64,
}

/// What happened to one received TLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxOutcome {
    New,
    Duplicate,
    OutOfWindow,
}

#[derive(Debug)]
pub(crate) struct Receiver {
    next_expected: u32,
    reorder: VecDeque<Option<Held>>,
    window: usize,
    ready: [VecDeque<Held>; 3],
    next_order: u64,
    limits: CreditLimits,
    last_adv: CreditLimits,
    initial: CreditLimits,
    pub ack_pending: bool,
    pub ack_immediate: bool,
    ack_since: Option<Instant>,
    /// Arrival of the newest ACK-eliciting frame: the sender samples RTT on the newest frame
    /// an ACK covers, so the ACK delay it subtracts is counted from here (QUIC's rule).
    latest_at: Option<Instant>,
    eliciting: u32,
    pub held: usize,
}

impl Receiver {
    pub fn new(initial: CreditLimits) -> Self {
        let window = (initial[0] + initial[2] + initial[4]) as usize;
        Receiver {
            next_expected: 0,
            reorder: VecDeque::with_capacity(window.min(4096)),
            window,
            ready: Default::default(),
            next_order: 0,
            limits: initial,
            last_adv: initial,
            initial,
            ack_pending: false,
            ack_immediate: false,
            ack_since: None,
            latest_at: None,
            eliciting: 0,
            held: 0,
        }
    }

    pub fn on_tlp(
        &mut self,
        seq: u32,
        tlp: Bytes,
        class: OrderingClass,
        credits: Credits,
    ) -> RxOutcome {
        let off = seq_diff(seq, self.next_expected);
        if off < 0 {
            self.ack_immediate = true;
            return RxOutcome::Duplicate;
        }
        let off = off as usize;
        if off >= self.window {
            return RxOutcome::OutOfWindow;
        }
        if off >= self.reorder.len() {
            self.reorder.resize_with(off + 1, || None);
        }
        if self.reorder[off].is_some() {
            self.ack_immediate = true;
            return RxOutcome::Duplicate;
        }
        if off > 0 {
            self.ack_immediate = true; // a gap: tell the sender at once
        }
        self.held += tlp.len();
        self.reorder[off] = Some(Held {
            tlp,
            class,
            credits,
            order: 0,
        });
        while let Some(Some(_)) = self.reorder.front() {
            if let Some(Some(mut h)) = self.reorder.pop_front() {
                h.order = self.next_order;
                self.next_order += 1;
                self.ready[h.class.index()].push_back(h);
            }
            self.next_expected = self.next_expected.wrapping_add(1);
        }
        RxOutcome::New
    }

    /// A frame carrying TLPs arrived: schedule an ACK.
    pub fn on_eliciting(&mut self, now: Instant) {
        self.ack_pending = true;
        self.eliciting += 1;
        self.latest_at = Some(now);
        if self.ack_since.is_none() {
            self.ack_since = Some(now);
        }
        if self.eliciting >= 2 {
            self.ack_immediate = true;
        }
    }

    pub fn ack_deadline(&self, delay: Duration) -> Option<Instant> {
        if self.ack_immediate {
            return Some(Instant::ZERO);
        }
        if self.ack_pending {
            return Some(self.ack_since.map_or(Instant::ZERO, |t| t + delay));
        }
        None
    }

    pub fn ack_due(&self, now: Instant, delay: Duration) -> bool {
        self.ack_deadline(delay).is_some_and(|d| d <= now)
    }

    /// Build the ACK block and reset the ACK state.
    pub fn make_ack(&mut self, now: Instant) -> AckBlock {
        let mut a = AckBlock {
            cum_ack: self.next_expected,
            ack_delay_us: self.latest_at.map_or(0, |t| {
                u32::try_from((now - t).as_micros()).unwrap_or(u32::MAX)
            }),
            limits: self.limits,
            ..Default::default()
        };
        let mut n = 0;
        let mut i = 0;
        let len = self.reorder.len();
        while i < len && n < MAX_SACK {
            if self.reorder[i].is_some() {
                let start = i;
                while i < len && self.reorder[i].is_some() {
                    i += 1;
                }
                a.sack[n] = (
                    self.next_expected.wrapping_add(start as u32),
                    self.next_expected.wrapping_add(i as u32),
                );
                n += 1;
            } else {
                i += 1;
            }
        }
        a.n_sack = n as u8;
        self.last_adv = self.limits;
        self.ack_pending = false;
        self.ack_immediate = false;
        self.ack_since = None;
        self.latest_at = None;
        self.eliciting = 0;
        a
    }

    fn release(&mut self, h: &Held, now: Instant) {
        let c = h.class.index();
        self.held -= h.tlp.len();
        self.limits[2 * c] = self.limits[2 * c].wrapping_add(h.credits.header.into());
        self.limits[2 * c + 1] = self.limits[2 * c + 1].wrapping_add(h.credits.data.into());
        // Return credits promptly once a quarter of an allocation is free again.
        let big = (0..6).any(|i| {
            self.initial[i] > 0
                && self.limits[i].wrapping_sub(self.last_adv[i]) >= self.initial[i].div_ceil(4)
        });
        if big {
            self.ack_immediate = true;
        }
        self.ack_pending = true;
        if self.ack_since.is_none() {
            self.ack_since = Some(now);
        }
    }

    /// Next TLP in order, any class.
    pub fn poll(&mut self, now: Instant) -> Option<Delivered> {
        let c = (0..3)
            .filter_map(|c| self.ready[c].front().map(|h| (h.order, c)))
            .min()?
            .1;
        self.take(c, now)
    }

    /// Next TLP of `class`, if the ordering rules allow taking it now.
    pub fn poll_class(&mut self, class: OrderingClass, now: Instant) -> Option<Delivered> {
        let c = class.index();
        let front = self.ready[c].front()?.order;
        if class != OrderingClass::Posted && self.ready[0].front().is_some_and(|p| p.order < front)
        {
            return None; // NP and Cpl never pass an earlier Posted TLP
        }
        self.take(c, now)
    }

    fn take(&mut self, c: usize, now: Instant) -> Option<Delivered> {
        let h = self.ready[c].pop_front()?;
        self.release(&h, now);
        Some(Delivered {
            class: h.class,
            tlp: h.tlp,
        })
    }

    /// TLPs ready for the layer above.
    pub fn ready_len(&self) -> usize {
        self.ready.iter().map(VecDeque::len).sum()
    }

    /// Slots in the reorder buffer.
    pub fn reorder_len(&self) -> usize {
        self.reorder.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CR: Credits = Credits { header: 1, data: 1 };

    #[test]
    fn reorders_dedups_and_orders_classes() {
        let mut r = Receiver::new([8, 8, 8, 8, 8, 8]);
        let t = Instant::ZERO;
        assert_eq!(
            r.on_tlp(1, Bytes::from_static(b"np"), OrderingClass::NonPosted, CR),
            RxOutcome::New
        );
        assert!(r.poll(t).is_none(), "gap at 0");
        let a = r.make_ack(t);
        assert_eq!((a.cum_ack, a.n_sack, a.sack[0]), (0, 1, (1, 2)));
        assert_eq!(
            r.on_tlp(0, Bytes::from_static(b"p"), OrderingClass::Posted, CR),
            RxOutcome::New
        );
        assert_eq!(
            r.on_tlp(0, Bytes::from_static(b"p"), OrderingClass::Posted, CR),
            RxOutcome::Duplicate
        );
        assert_eq!(
            r.on_tlp(2, Bytes::from_static(b"p2"), OrderingClass::Posted, CR),
            RxOutcome::New
        );
        assert_eq!(
            r.on_tlp(99, Bytes::from_static(b"x"), OrderingClass::Posted, CR),
            RxOutcome::OutOfWindow
        );
        // NP may not pass the earlier posted write; posted may be taken first.
        assert!(r.poll_class(OrderingClass::NonPosted, t).is_none());
        assert_eq!(
            &r.poll_class(OrderingClass::Posted, t).unwrap().tlp[..],
            b"p"
        );
        // Now the NP (seq 1) is older than the remaining posted (seq 2).
        assert_eq!(&r.poll(t).unwrap().tlp[..], b"np");
        assert_eq!(&r.poll(t).unwrap().tlp[..], b"p2");
        let a = r.make_ack(t);
        assert_eq!(a.cum_ack, 3);
        assert_eq!(
            a.limits,
            [10, 10, 9, 9, 8, 8],
            "credits returned on consumption"
        );
    }
}
