//! One established session: frame protection, the sender and receiver halves, timers
//! (ACK delay, RTO, keepalive, idle, pacing, credit probe, key lifetimes) and DATA frame
//! assembly (docs/protocol.md §3.5, §4–§8). Sans-I/O: fed frames and time, produces frames
//! and deadlines. Its keys change in place ([`KeyRing`]); nothing else does.

use super::congestion::{Controller, DelayBased, Pacer, RttEstimator};
use super::frame::{
    emit_record, flags, record_len, AckBlock, CreditLimits, FrameHeader, FrameType, Records,
    ACK_LEN, DATA_OVERHEAD, HEADER_LEN, RECORD_HDR_LEN, TAG_LEN,
};
use super::keyring::{FrameKeys, KeyLimits, KeyRing, OpenError};
use super::recv::{Delivered, Receiver, RxOutcome};
use super::send::Sender;
use super::stats::Stats;
use super::time::Instant;
use super::{Config, DownReason, PeerAddr, Role, SendError, UNSENT_FRAMES};
use crate::tlp::{classify, OrderingClass};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;
use std::time::Duration;

/// Parameters fixed by the handshake (the keys go to the [`KeyRing`], not here).
#[derive(Debug, Clone)]
pub(crate) struct SessionParams {
    /// Our session id for the first key.
    pub local_session: u32,
    /// The peer's session id for the first key.
    pub peer_session: u32,
    pub local_epoch: u32,
    pub peer_epoch: u32,
    pub peer: PeerAddr,
    pub role: Role,
    pub mtu: usize,
    pub local_credits: CreditLimits,
    pub peer_credits: CreditLimits,
}

/// Why an authenticated-session frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DropReason {
    StaleEpoch,
    /// For a session id this session no longer receives on.
    StaleKey,
    WrongMode,
    Replay,
    BadTag,
    /// A bad tag, and one too many under its key: the session must end.
    TagLimit,
    Malformed,
}

/// Entries of the frame-length ring (a power of two, more than any window of frames).
const FRAME_LEN_RING: usize = 4096;

#[derive(Debug)]
pub(crate) struct Session {
    pub p: SessionParams,
    pub keys: KeyRing,
    next_pn: u64,
    send: Sender,
    recv: Receiver,
    cc: Box<dyn Controller>,
    pacer: Pacer,
    rtt: RttEstimator,
    rto_deadline: Option<Instant>,
    rto_backoff: u32,
    pub last_rx: Instant,
    last_tx: Instant,
    pace_until: Option<Instant>,
    probe_at: Option<Instant>,
    /// Last time data waited for the congestion window (the window only grows when it is
    /// what limits the sender).
    window_limited_at: Option<Instant>,
    /// Length of recently sent frames by packet number (mod [`FRAME_LEN_RING`]): the
    /// controller takes its base delay from full frames only, since on a slow link a small
    /// frame crosses faster than a full one and would make every full frame look queued.
    frame_lens: Box<[u16; FRAME_LEN_RING]>,
    /// Frames carry `DRAIN` until then (server side, during a coordinated drain)…
    drain_until: Option<Instant>,
    /// …and at least one frame does, sent at once (the appliance may have no data for this
    /// session; waiting for a delayed ACK would desynchronise the drain).
    drain_signal: bool,
    /// The peer has proven it holds the keys (an authenticated frame arrived).
    pub confirmed: bool,
    pub stats: Stats,
    cfg: Arc<Config>,
}

impl Session {
    /// A session from a finished handshake. `jitter` seeds the congestion controller's
    /// randomised drain resumption (behaviour only, never key material).
    pub fn new(
        p: SessionParams,
        keys: &FrameKeys,
        cfg: Arc<Config>,
        now: Instant,
        jitter: u64,
    ) -> Self {
        let cc = Box::new(DelayBased::new(
            p.mtu,
            cfg.cc_target,
            cfg.max_window_bytes,
            jitter,
        ));
        Session {
            keys: KeyRing::new(
                p.local_session,
                p.peer_session,
                keys,
                now,
                KeyLimits::from_config(&cfg),
            ),
            next_pn: 1,
            send: Sender::new(p.peer_credits),
            recv: Receiver::new(p.local_credits),
            cc,
            pacer: Pacer::new(16 * p.mtu),
            rtt: RttEstimator::default(),
            rto_deadline: None,
            rto_backoff: 0,
            last_rx: now,
            last_tx: now,
            pace_until: None,
            probe_at: None,
            window_limited_at: None,
            drain_until: None,
            drain_signal: false,
            frame_lens: Box::new([0; FRAME_LEN_RING]),
            confirmed: false,
            stats: Stats::default(),
            cfg,
            p,
        }
    }

    /// An RTT measured by the handshake (Karn: only when nothing was retransmitted): the
    /// first SRTT, for the pacer and the retransmission timer. Not a base delay for the
    /// congestion controller: handshake frames are small, data frames take longer to
    /// serialize on a slow link.
    pub fn seed_rtt(&mut self, rtt: Duration) {
        self.rtt.sample(rtt);
    }

    /// Start a coordinated drain: mark frames `DRAIN` for one RTT and hold back ourselves.
    /// Returns the SRTT (the caller spaces drains by it).
    pub fn begin_drain(&mut self, now: Instant) -> Duration {
        let srtt = self.rtt.srtt_or(self.cfg.initial_rto);
        self.drain_until = Some(now + srtt);
        self.drain_signal = true;
        self.drain(now);
        srtt
    }

    /// Take part in a drain — only when the window is what limits us: a session sending
    /// now and then (MMIO) holds no queue, and its lone TLPs must never wait.
    fn drain(&mut self, now: Instant) {
        let srtt = self.rtt.srtt_or(self.cfg.initial_rto);
        let bulk = self
            .window_limited_at
            .is_some_and(|t| now.saturating_duration_since(t) <= srtt * 4);
        if bulk {
            self.cc.on_drain(now, srtt);
        }
    }

    /// Largest TLP this session can carry.
    pub fn max_tlp(&self) -> usize {
        self.p.mtu - DATA_OVERHEAD - ACK_LEN - RECORD_HDR_LEN
    }

    pub fn send_tlp(&mut self, tlp: Bytes) -> Result<(), SendError> {
        let (class, credits) = classify(&tlp)?;
        if tlp.len() > self.max_tlp() {
            return Err(SendError::TooLarge {
                len: tlp.len(),
                max: self.max_tlp(),
            });
        }
        if !self.send.fits_allocation(class, credits) {
            return Err(SendError::ExceedsCredits);
        }
        if self.send.pending_bytes + tlp.len() > self.cfg.max_pending_bytes {
            return Err(SendError::QueueFull);
        }
        self.send.push(tlp, class, credits);
        self.stats.tlps_submitted += 1;
        Ok(())
    }

    /// Make the next `poll_transmit` send an ACK (the client's key confirmation).
    pub fn force_ack(&mut self) {
        self.recv.ack_pending = true;
        self.recv.ack_immediate = true;
    }

    /// Whether `send_tlp` would currently refuse for lack of queue space.
    pub fn queue_space(&self) -> usize {
        self.cfg
            .max_pending_bytes
            .saturating_sub(self.send.pending_bytes)
    }

    /// Bytes of TLPs queued and not yet framed (not sent once): what waits below whoever
    /// submits, in submission order.
    pub fn unsent_bytes(&self) -> usize {
        self.send.pending_bytes
    }

    /// The most unsent bytes worth holding: one congestion window, and at least
    /// [`UNSENT_FRAMES`] full frames (the window is 0 while paused), so the next transmit
    /// always has a window's worth to send while the rest waits with the submitter.
    pub fn unsent_bound(&self) -> usize {
        self.cc.window().max(UNSENT_FRAMES * self.p.mtu)
    }

    /// Whether the session can usefully take another TLP now: its unsent bytes are below
    /// [`unsent_bound`](Self::unsent_bound). A submitter that keeps its own order (the
    /// appliance's priorities) submits only while this holds, so its backlog stays with it
    /// instead of in this FIFO ([`send_tlp`](Self::send_tlp) takes up to
    /// `max_pending_bytes` regardless).
    pub fn wants_more(&self) -> bool {
        self.unsent_bytes() < self.unsent_bound()
    }

    pub fn poll_delivered(&mut self, now: Instant) -> Option<Delivered> {
        let d = self.recv.poll(now)?;
        self.stats.tlps_delivered += 1;
        Some(d)
    }

    pub fn poll_delivered_class(
        &mut self,
        class: OrderingClass,
        now: Instant,
    ) -> Option<Delivered> {
        let d = self.recv.poll_class(class, now)?;
        self.stats.tlps_delivered += 1;
        Some(d)
    }

    fn rto(&self) -> Duration {
        // RTT samples exclude the peer's ACK delay; a lone frame may wait that long for its
        // ACK, so the timer allows for it (QUIC's PTO does the same).
        let base = self
            .rtt
            .rto(self.cfg.min_rto, self.cfg.max_rto, self.cfg.initial_rto)
            + self.cfg.ack_delay;
        (base * 2u32.saturating_pow(self.rto_backoff.min(16))).min(self.cfg.max_rto)
    }

    /// Process a DATA frame addressed to this session.
    pub fn handle_data(
        &mut self,
        now: Instant,
        h: &FrameHeader,
        mut frame: BytesMut,
    ) -> Result<(), DropReason> {
        if h.src_epoch != self.p.peer_epoch {
            self.stats.drop_stale_epoch += 1;
            return Err(DropReason::StaleEpoch);
        }
        let Some(ki) = self.keys.rx_index(h.dst_session) else {
            self.stats.drop_stale_key += 1;
            return Err(DropReason::StaleKey);
        };
        if (h.flags & flags::ENCRYPTED != 0) != self.keys.rx_encrypts(ki) {
            self.stats.drop_wrong_mode += 1;
            return Err(DropReason::WrongMode);
        }
        match self.keys.open(ki, h.pn, &mut frame) {
            Ok(()) => {}
            Err(OpenError::Replay) => {
                self.stats.drop_replay += 1;
                return Err(DropReason::Replay);
            }
            Err(OpenError::BadTag) => {
                self.stats.drop_bad_tag += 1;
                return Err(DropReason::BadTag);
            }
            Err(OpenError::TagLimit) => {
                self.stats.drop_bad_tag += 1;
                return Err(DropReason::TagLimit);
            }
        }
        self.accept_opened(now, h, frame, ki)
    }

    /// Act on a DATA frame that key `ki` already opened (the appliance opens the frame that
    /// confirms a new session before the session exists).
    pub fn accept_opened(
        &mut self,
        now: Instant,
        h: &FrameHeader,
        frame: BytesMut,
        ki: usize,
    ) -> Result<(), DropReason> {
        let frame = frame.freeze();
        let body_end = HEADER_LEN + usize::from(h.body_len);
        let mut rec_start = HEADER_LEN;
        let ack = if h.flags & flags::ACK != 0 {
            match AckBlock::parse(&frame[HEADER_LEN..body_end]) {
                Ok(a) => {
                    rec_start += ACK_LEN;
                    Some(a)
                }
                Err(_) => {
                    self.stats.drop_malformed += 1;
                    return Err(DropReason::Malformed);
                }
            }
        } else {
            None
        };
        // Validate every record before acting on any (an authenticated but buggy peer).
        let recs = &frame[rec_start..body_end];
        for r in Records::new(recs, h.n_records) {
            let ok = r.ok().and_then(|r| {
                let (class, _) = classify(&recs[r.range]).ok()?;
                (class.index() == usize::from(r.class)).then_some(())
            });
            if ok.is_none() {
                self.stats.drop_malformed += 1;
                return Err(DropReason::Malformed);
            }
        }
        self.keys.accept(ki, h.pn, now, self.next_pn);
        if h.flags & flags::REKEY != 0 && self.p.role == Role::Client {
            self.keys.on_rekey_request();
        }
        self.confirmed = true;
        self.last_rx = now;
        self.stats.frames_received += 1;
        self.stats.bytes_received += frame.len() as u64;
        if let Some(a) = ack {
            self.on_ack(now, &a);
        }
        for r in Records::new(recs, h.n_records).flatten() {
            let tlp = frame.slice(rec_start + r.range.start..rec_start + r.range.end);
            let Ok((class, credits)) = classify(&tlp) else {
                continue;
            };
            match self.recv.on_tlp(r.seq, tlp, class, credits) {
                RxOutcome::New => {}
                RxOutcome::Duplicate => self.stats.dup_tlps += 1,
                RxOutcome::OutOfWindow => self.stats.out_of_window_tlps += 1,
            }
        }
        if h.n_records > 0 {
            self.recv.on_eliciting(now);
        }
        if h.flags & flags::DRAIN != 0 {
            self.drain(now);
        }
        if h.flags & flags::ACK_REQ != 0 {
            self.recv.ack_pending = true;
            self.recv.ack_immediate = true;
        }
        Ok(())
    }

    fn on_ack(&mut self, now: Instant, a: &AckBlock) {
        let out = self.send.on_ack(a);
        if let Some(sent) = out.rtt_sample_sent {
            let raw = now - sent;
            let delay = Duration::from_micros(a.ack_delay_us.into());
            let sample = if raw > delay + Duration::from_micros(1) {
                raw - delay
            } else {
                raw
            };
            self.rtt.sample(sample);
            // RFC 6298 §5.7 (Karn): a backed-off timer stays backed off until a frame that
            // was never retransmitted is acknowledged. Resetting on any progress would let
            // an RTT that grew past the RTO retransmit everything, forever, with no sample.
            self.rto_backoff = 0;
        }
        if out.progress {
            let srtt = self.rtt.srtt_or(self.cfg.initial_rto);
            let limited = self
                .window_limited_at
                .is_some_and(|t| now.saturating_duration_since(t) <= srtt);
            let full = usize::from(self.frame_lens[out.rtt_sample_pn as usize % FRAME_LEN_RING])
                >= self.p.mtu * 3 / 4;
            self.cc.on_ack(
                now,
                out.newly_acked_bytes,
                self.rtt.latest(),
                srtt,
                limited,
                full && out.rtt_sample_sent.is_some(),
            );
            self.rto_deadline = self.send.has_outstanding().then(|| now + self.rto());
        }
        if out.lost > 0 {
            self.stats.fast_retransmits += out.lost;
            let srtt = self.rtt.srtt_or(self.cfg.initial_rto);
            self.cc.on_loss(now, out.lost_sent.unwrap_or(now), srtt);
        }
        self.probe_at = None;
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.last_rx + self.cfg.idle_timeout;
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = t.min(x);
            }
        };
        min(self.recv.ack_deadline(self.cfg.ack_delay));
        min(self.rto_deadline);
        min(Some(self.last_tx + self.cfg.keepalive_interval));
        min(self.pace_until);
        min(self.probe_at);
        min(self.cc.next_timer());
        min(Some(self.keys.deadline(self.p.role == Role::Client)));
        Some(t)
    }

    /// Run the timers due at `now`; `Some` when the session is down (silent past the idle
    /// timeout, or its key spent without a rekey).
    pub fn handle_timeout(&mut self, now: Instant) -> Option<DownReason> {
        if now >= self.last_rx + self.cfg.idle_timeout {
            return Some(DownReason::IdleTimeout);
        }
        if let Some(r) = self.keys.on_timeout(now) {
            return Some(r);
        }
        self.cc.on_tick(now);
        if self.rto_deadline.is_some_and(|d| d <= now) {
            self.rto_deadline = None;
            let n = self.send.on_rto();
            if n > 0 {
                self.stats.rto_expirations += 1;
                self.rto_backoff += 1;
                self.cc.on_rto(now);
            }
        }
        if self.pace_until.is_some_and(|d| d <= now) {
            self.pace_until = None;
        }
        None
    }

    /// Host side: how long to wait for the RESP of a rekey before sending a fresh INIT: a
    /// few round trips (the session knows them), at least the minimum RTO.
    pub fn rekey_retry(&self) -> Duration {
        (self.rtt.srtt_or(self.cfg.initial_rto) * 4)
            .clamp(self.cfg.min_rto, self.cfg.handshake_retry)
    }

    /// Host side: whether this session's keys are due for renewal.
    pub fn wants_rekey(&self, now: Instant) -> bool {
        self.keys.wants_rekey(now, self.next_pn)
    }

    /// Host side: install the keys of a finished rekey (receive on `rx_sid`, send to
    /// `tx_sid`); the next frame goes out under them.
    pub fn rekeyed(&mut self, rx_sid: u32, tx_sid: u32, keys: &FrameKeys, now: Instant) {
        self.keys
            .add_initiator(rx_sid, tx_sid, keys, now, self.next_pn);
        self.stats.rekeys = self.keys.rekeys;
        // Show the appliance the new key at once (it switches on the first frame under it).
        self.force_ack();
    }

    /// Assemble the next DATA frame into `buf`; returns its length.
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<usize> {
        if !self.keys.can_seal(self.next_pn) {
            // The key sealed its limit: nothing more under it until the rekey lands.
            return None;
        }
        let mtu = self.p.mtu.min(buf.len());
        self.cc.on_tick(now);
        let ack_due = self.recv.ack_due(now, self.cfg.ack_delay);
        let keepalive = now >= self.last_tx + self.cfg.keepalive_interval;
        let probe = self.probe_at.is_some_and(|p| p <= now);
        let want_data = !self.send.retx.is_empty() || self.send.next_eligible().is_some();
        if self.cc.window() == 0 {
            self.pacer.reset(now);
        }
        let mut data_ok = want_data && self.send.in_flight < self.cc.window();
        // Pacing spreads a flight; the first frame of a flight (a lone TLP) never waits unless
        // congestion shrank the window below one frame (then the window is a rate).
        if data_ok && (self.send.in_flight > 0 || self.cc.window() < mtu) {
            let srtt = self.rtt.srtt_or(self.cfg.initial_rto);
            let gain = self.cc.pacing_gain();
            match self.pacer.delay(now, mtu, self.cc.window(), srtt, gain) {
                None => self.pace_until = None,
                Some(t) => {
                    self.pace_until = Some(t);
                    data_ok = false;
                }
            }
        }
        if want_data && !data_ok {
            // The window (or the pacing derived from it) holds data back.
            self.window_limited_at = Some(now);
        }
        // Credit-blocked with nothing in flight: ask the peer for a fresh credit update.
        if self.send.has_pending() && !want_data && self.send.unacked.is_empty() {
            self.stats.credit_stalls += u64::from(self.probe_at.is_none());
            if self.probe_at.is_none() {
                self.probe_at = Some(now + self.rto());
            }
        }
        let drain_signal = self.drain_signal;
        if !(ack_due || keepalive || probe || data_ok || drain_signal) {
            return None;
        }
        let pn = self.next_pn;
        let include_ack =
            self.recv.ack_pending || ack_due || keepalive || probe || drain_signal || !data_ok;
        let mut off = HEADER_LEN;
        let mut fl = 0;
        if self.keys.tx_encrypts() {
            fl |= flags::ENCRYPTED;
        }
        if self.p.role == Role::Server && self.keys.asks_rekey(now, self.next_pn) {
            fl |= flags::REKEY;
        }
        if drain_signal || self.drain_until.is_some_and(|t| now < t) {
            fl |= flags::DRAIN;
            self.drain_signal = false;
        }
        if include_ack {
            let a = self.recv.make_ack(now);
            a.emit(&mut buf[off..off + ACK_LEN]);
            off += ACK_LEN;
            fl |= flags::ACK;
        }
        let mut n: u8 = 0;
        if data_ok {
            while n < u8::MAX {
                let Some(&seq) = self.send.retx.front() else {
                    break;
                };
                let Some(e) = self.send.entry_mut(seq) else {
                    self.send.retx.pop_front();
                    continue;
                };
                if e.acked || !e.queued {
                    self.send.retx.pop_front();
                    continue;
                }
                let need = record_len(e.tlp.len());
                if off + need + TAG_LEN > mtu {
                    break;
                }
                off += emit_record(&mut buf[off..], seq, e.class, &e.tlp);
                self.send.retx.pop_front();
                self.send.on_retransmit(seq, now, pn);
                self.stats.retransmits += 1;
                n += 1;
            }
            while n < u8::MAX && self.send.retx.is_empty() {
                let Some(c) = self.send.next_eligible() else {
                    break;
                };
                let need = record_len(self.send.front_len(c));
                if off + need + TAG_LEN > mtu {
                    break;
                }
                let Some((seq, e)) = self.send.take(c, now, pn) else {
                    break;
                };
                off += emit_record(&mut buf[off..], seq, e.class, &e.tlp);
                self.stats.tlps_sent += 1;
                n += 1;
            }
        }
        if n == 0 && !include_ack {
            return None;
        }
        if probe {
            fl |= flags::ACK_REQ;
            self.probe_at = None;
        }
        let len = off + TAG_LEN;
        FrameHeader {
            ty: FrameType::Data,
            flags: fl,
            n_records: n,
            body_len: (off - HEADER_LEN) as u16,
            dst_session: self.keys.tx_sid(),
            src_epoch: self.p.local_epoch,
            pn,
        }
        .emit(buf);
        self.keys.seal(pn, &mut buf[..len]);
        self.next_pn += 1;
        self.last_tx = now;
        self.stats.frames_sent += 1;
        self.stats.bytes_sent += len as u64;
        if n == 0 {
            self.stats.ack_only_sent += 1;
            if keepalive && !ack_due {
                self.stats.keepalives_sent += 1;
            }
        } else {
            self.pacer.on_sent(len);
            self.frame_lens[pn as usize % FRAME_LEN_RING] = len as u16;
            if self.rto_deadline.is_none() {
                self.rto_deadline = Some(now + self.rto());
            }
        }
        Some(len)
    }

    /// The session is going away: every Non-Posted TLP it still held.
    pub fn fail_nonposted(&mut self) -> Vec<Bytes> {
        self.send.drain_nonposted()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.rekeys = self.keys.rekeys;
        s.cipher = Some(self.keys.cipher());
        s.srtt = self.rtt.srtt_or(Duration::ZERO);
        s.min_rtt = self.cc.base_delay().unwrap_or_default();
        s.cwnd = self.cc.window();
        s.mtu = self.p.mtu;
        s
    }

    /// Bytes of TLPs this session holds (queued, unacknowledged, reordering, undelivered).
    pub fn memory(&self) -> usize {
        self.send.held_bytes() + self.recv.held
    }

    /// Reorder slots and TLPs awaiting pickup (for bound checks).
    pub fn recv_depth(&self) -> (usize, usize) {
        (self.recv.reorder_len(), self.recv.ready_len())
    }

    /// Whether the sender still has anything queued or unacknowledged.
    pub fn busy(&self) -> bool {
        self.send.has_pending() || !self.send.unacked.is_empty()
    }
}
