//! The endpoint: one per socket, demultiplexes frames to sessions, runs the handshake on both
//! sides, detects restarted peers, reconnects, and turns session ends into events
//! (docs/protocol.md §3 and §7). Sans-I/O like the sessions it owns.

use super::frame::{FrameHeader, FrameType, HEADER_LEN};
use super::handshake::{derive_keys, Init, Psk, Resp, FRAME_LEN};
use super::recv::Delivered;
use super::session::{Session, SessionParams};
use super::stats::{EndpointStats, Stats};
use super::time::Instant;
use super::{Config, HostId, PeerAddr, SendError};
use crate::tlp::OrderingClass;
use bytes::{Bytes, BytesMut};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub use super::event::{ConnId, DownReason, Event, Role, Transmit};

#[derive(Debug)]
struct ClientHs {
    init: Init,
    frame: [u8; FRAME_LEN],
    next_retry: Instant,
    retry: Duration,
    /// When the INIT was first queued, and whether it was sent again since (Karn: then the
    /// handshake gives no RTT sample).
    sent: Instant,
    resent: bool,
    /// Started by a RESET hint beside a running session.
    probe: bool,
}

#[derive(Debug)]
struct Pending {
    client_nonce: [u8; 16],
    resp: [u8; FRAME_LEN],
    session: Session,
    expires: Instant,
    /// When the RESPONSE was first queued, and whether it was sent again since.
    sent: Instant,
    resent: bool,
}

#[derive(Debug)]
struct Slot {
    host: HostId,
    psk: Psk,
    server: Option<PeerAddr>,
    session: Option<Session>,
    hs: Option<ClientHs>,
    pending: Option<Pending>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
}

#[derive(Debug, Clone, Copy)]
enum SidRef {
    Session(usize),
    Pending(usize),
    Handshake(usize),
}

const RESET_LEN: usize = HEADER_LEN + 4;
const MAX_QUEUED_HS: usize = 64;
const RETIRED: usize = 256;

/// Demultiplexer and handshake engine for one socket.
#[derive(Debug)]
pub struct Endpoint {
    cfg: Arc<Config>,
    role: Role,
    /// Server role: when the next coordinated drain starts.
    next_drain: Option<Instant>,
    epoch: u32,
    next_epoch: u32,
    slots: Vec<Slot>,
    by_host: HashMap<HostId, usize>,
    by_sid: HashMap<u32, SidRef>,
    retired: VecDeque<u32>,
    events: VecDeque<(ConnId, Event)>,
    out: VecDeque<(PeerAddr, [u8; FRAME_LEN], usize)>,
    rng: StdRng,
    stats: EndpointStats,
    rr: usize,
}

impl Endpoint {
    /// A new endpoint. `seed` drives nonces, session ids and epochs (use a random seed in
    /// production, a fixed one in simulations).
    pub fn new(cfg: Config, role: Role, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seed);
        let epoch = rng.gen_range(1..u32::MAX / 2);
        Endpoint {
            cfg: Arc::new(cfg),
            role,
            next_drain: None,
            epoch,
            next_epoch: epoch,
            slots: Vec::new(),
            by_host: HashMap::new(),
            by_sid: HashMap::new(),
            retired: VecDeque::with_capacity(RETIRED),
            events: VecDeque::new(),
            out: VecDeque::new(),
            rng,
            stats: EndpointStats::default(),
            rr: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Server: accept `host` with key `psk`. Returns its stable handle.
    pub fn add_host(&mut self, host: HostId, psk: Psk) -> ConnId {
        if let Some(&i) = self.by_host.get(&host) {
            self.slots[i].psk = psk;
            return ConnId(i);
        }
        self.slots.push(Slot {
            host,
            psk,
            server: None,
            session: None,
            hs: None,
            pending: None,
            reconnect_at: None,
            backoff: Duration::from_millis(10),
        });
        self.by_host.insert(host, self.slots.len() - 1);
        ConnId(self.slots.len() - 1)
    }

    /// Client: start connecting to `server` as `host`. Reconnects by itself after a failure.
    pub fn connect(&mut self, now: Instant, server: PeerAddr, host: HostId, psk: Psk) -> ConnId {
        let id = self.add_host(host, psk);
        self.slots[id.0].server = Some(server);
        self.start_handshake(now, id.0, false);
        id
    }

    fn fresh_sid(&mut self) -> u32 {
        loop {
            let s: u32 = self.rng.gen();
            if s != 0 && !self.by_sid.contains_key(&s) && !self.retired.contains(&s) {
                return s;
            }
        }
    }

    fn retire(&mut self, sid: u32) {
        self.by_sid.remove(&sid);
        if self.retired.len() == RETIRED {
            self.retired.pop_front();
        }
        self.retired.push_back(sid);
    }

    fn start_handshake(&mut self, now: Instant, i: usize, probe: bool) {
        if let Some(old) = self.slots[i].hs.take() {
            self.retire(old.init.session);
        }
        let Some(server) = self.slots[i].server else {
            return;
        };
        self.next_epoch = self.next_epoch.wrapping_add(1).max(1);
        let sid = self.fresh_sid();
        let init = Init {
            host_id: self.slots[i].host,
            nonce: self.rng.gen(),
            session: sid,
            epoch: self.next_epoch,
            min_version: 1,
            max_version: 1,
            mtu: self.cfg.mtu as u16,
            encrypt: self.cfg.encrypt,
            credits: self.cfg.credits,
        };
        let mut frame = [0u8; FRAME_LEN];
        init.emit(&self.slots[i].psk, &mut frame);
        self.queue(server, frame, FRAME_LEN);
        self.by_sid.insert(sid, SidRef::Handshake(i));
        let retry = self.cfg.handshake_retry;
        self.slots[i].hs = Some(ClientHs {
            init,
            frame,
            next_retry: now + retry,
            retry,
            sent: now,
            resent: false,
            probe,
        });
        self.slots[i].reconnect_at = None;
    }

    fn queue(&mut self, dst: PeerAddr, frame: [u8; FRAME_LEN], len: usize) {
        if self.out.len() < MAX_QUEUED_HS {
            self.out.push_back((dst, frame, len));
        }
    }

    /// Feed one received frame.
    pub fn handle_frame(&mut self, now: Instant, from: PeerAddr, frame: BytesMut) {
        let h = match FrameHeader::parse(&frame) {
            Ok(h) => h,
            Err(_) => {
                self.stats.drop_bad_header += 1;
                return;
            }
        };
        match h.ty {
            FrameType::Init => self.on_init(now, from, &frame),
            FrameType::Resp => self.on_resp(now, from, &h, &frame),
            FrameType::Data => self.on_data(now, from, &h, frame),
            FrameType::Reset => self.on_reset(now, &h),
        }
    }

    fn on_init(&mut self, now: Instant, from: PeerAddr, frame: &[u8]) {
        if self.role != Role::Server {
            self.stats.drop_bad_handshake += 1;
            return;
        }
        let Ok(init) = Init::parse_unverified(frame) else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let Some(&i) = self.by_host.get(&init.host_id) else {
            self.stats.drop_unknown_host += 1;
            return;
        };
        if Init::verify(frame, &self.slots[i].psk).is_err() {
            self.stats.drop_bad_handshake_mac += 1;
            return;
        }
        if init.min_version > 1 || init.max_version < 1 {
            self.stats.drop_bad_handshake += 1;
            return;
        }
        if let Some(p) = &self.slots[i].pending {
            if p.client_nonce == init.nonce {
                let resp = p.resp;
                if let Some(p) = self.slots[i].pending.as_mut() {
                    p.resent = true;
                }
                self.queue(from, resp, FRAME_LEN);
                return;
            }
        }
        if let Some(old) = self.slots[i].pending.take() {
            self.retire(old.session.p.local_session);
        }
        let sid = self.fresh_sid();
        let resp = Resp {
            nonce: self.rng.gen(),
            client_nonce: init.nonce,
            session: sid,
            client_session: init.session,
            epoch: self.epoch,
            version: 1,
            encrypt: init.encrypt || self.cfg.encrypt,
            mtu: init.mtu.min(self.cfg.mtu as u16),
            credits: self.cfg.credits,
        };
        let mut rf = [0u8; FRAME_LEN];
        resp.emit(&self.slots[i].psk, frame, &mut rf);
        let keys = derive_keys(&self.slots[i].psk, &init, &resp);
        let params = SessionParams {
            local_session: sid,
            peer_session: init.session,
            local_epoch: self.epoch,
            peer_epoch: init.epoch,
            peer: from,
            tx_key: keys.s2c,
            rx_key: keys.c2s,
            encrypt: resp.encrypt,
            mtu: resp.mtu.into(),
            local_credits: self.cfg.credits,
            peer_credits: init.credits,
        };
        let session = Session::new(params, self.cfg.clone(), now);
        self.by_sid.insert(sid, SidRef::Pending(i));
        self.slots[i].pending = Some(Pending {
            client_nonce: init.nonce,
            resp: rf,
            session,
            expires: now + self.cfg.idle_timeout,
            sent: now,
            resent: false,
        });
        self.queue(from, rf, FRAME_LEN);
    }

    fn on_resp(&mut self, now: Instant, from: PeerAddr, h: &FrameHeader, frame: &[u8]) {
        let Some(&SidRef::Handshake(i)) = self.by_sid.get(&h.dst_session) else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let Some(hs) = &self.slots[i].hs else {
            self.stats.drop_bad_handshake += 1;
            return;
        };
        let resp = match Resp::parse_verified(frame, &hs.frame, &self.slots[i].psk) {
            Ok(r) => r,
            Err(_) => {
                self.stats.drop_bad_handshake_mac += 1;
                return;
            }
        };
        let Some(hs) = self.slots[i].hs.take() else {
            return;
        };
        if hs.probe {
            if let Some(s) = &self.slots[i].session {
                if s.p.peer_epoch == resp.epoch {
                    // The RESET was not a server restart: keep the running session.
                    self.by_sid.remove(&hs.init.session);
                    return;
                }
            }
        }
        if self.slots[i].session.is_some() {
            self.stats.peer_restarts += 1;
            self.end_session(i, DownReason::PeerRestarted);
        }
        let keys = derive_keys(&self.slots[i].psk, &hs.init, &resp);
        let params = SessionParams {
            local_session: hs.init.session,
            peer_session: resp.session,
            local_epoch: hs.init.epoch,
            peer_epoch: resp.epoch,
            peer: from,
            tx_key: keys.c2s,
            rx_key: keys.s2c,
            encrypt: resp.encrypt,
            mtu: resp.mtu.into(),
            local_credits: self.cfg.credits,
            peer_credits: resp.credits,
        };
        let mut s = Session::new(params, self.cfg.clone(), now);
        if !hs.resent {
            s.seed_rtt(now.saturating_duration_since(hs.sent));
        }
        s.confirmed = true;
        s.force_ack();
        self.by_sid.insert(hs.init.session, SidRef::Session(i));
        self.slots[i].session = Some(s);
        self.slots[i].backoff = Duration::from_millis(10);
        self.stats.handshakes += 1;
        self.events.push_back((
            ConnId(i),
            Event::Connected {
                host: self.slots[i].host,
                peer: from,
                peer_epoch: resp.epoch,
            },
        ));
    }

    fn on_data(&mut self, now: Instant, from: PeerAddr, h: &FrameHeader, frame: BytesMut) {
        match self.by_sid.get(&h.dst_session).copied() {
            Some(SidRef::Session(i)) => {
                let Some(s) = self.slots[i].session.as_mut() else {
                    return;
                };
                if s.handle_data(now, h, frame).is_ok() {
                    s.p.peer = from;
                }
            }
            Some(SidRef::Pending(i)) => {
                let Some(p) = self.slots[i].pending.as_mut() else {
                    return;
                };
                if p.session.handle_data(now, h, frame).is_err() {
                    return;
                }
                // The client proved it holds the keys: install the session.
                let Some(p) = self.slots[i].pending.take() else {
                    return;
                };
                if self.slots[i].session.is_some() {
                    self.stats.peer_restarts += 1;
                    self.end_session(i, DownReason::PeerRestarted);
                }
                let mut s = p.session;
                if !p.resent {
                    s.seed_rtt(now.saturating_duration_since(p.sent));
                }
                s.p.peer = from;
                let (sid, epoch) = (s.p.local_session, s.p.peer_epoch);
                self.by_sid.insert(sid, SidRef::Session(i));
                self.slots[i].session = Some(s);
                self.stats.handshakes += 1;
                // A newcomer measures its base delay behind everyone's queue: drain soon
                // (LEDBAT++'s initial slowdown, coordinated).
                let interval = self.cfg.cc_drain_interval;
                if !interval.is_zero() {
                    let t = now + interval / 5;
                    self.next_drain = Some(self.next_drain.map_or(t, |n| n.min(t)));
                }
                self.events.push_back((
                    ConnId(i),
                    Event::Connected {
                        host: self.slots[i].host,
                        peer: from,
                        peer_epoch: epoch,
                    },
                ));
            }
            Some(SidRef::Handshake(_)) => self.stats.drop_unknown_session += 1,
            None => {
                if self.retired.contains(&h.dst_session) {
                    self.stats.drop_stale_session += 1;
                } else {
                    self.stats.drop_unknown_session += 1;
                    if self.role == Role::Server {
                        let mut f = [0u8; FRAME_LEN];
                        FrameHeader {
                            ty: FrameType::Reset,
                            flags: 0,
                            n_records: 0,
                            body_len: 4,
                            dst_session: h.dst_session,
                            src_epoch: self.epoch,
                            pn: 0,
                        }
                        .emit(&mut f);
                        f[HEADER_LEN..RESET_LEN].copy_from_slice(&self.epoch.to_be_bytes());
                        self.stats.resets_sent += 1;
                        self.queue(from, f, RESET_LEN);
                    }
                }
            }
        }
    }

    fn on_reset(&mut self, now: Instant, h: &FrameHeader) {
        self.stats.resets_received += 1;
        if self.role != Role::Client {
            return;
        }
        // The RESET names the session id the server did not know: our peer's id.
        let Some(i) = self.slots.iter().position(|s| {
            s.session
                .as_ref()
                .is_some_and(|s| s.p.peer_session == h.dst_session)
        }) else {
            return;
        };
        if self.slots[i].hs.is_none() {
            self.start_handshake(now, i, true);
        }
    }

    fn end_session(&mut self, i: usize, reason: DownReason) {
        let Some(mut s) = self.slots[i].session.take() else {
            return;
        };
        self.retire(s.p.local_session);
        self.stats.sessions_down += 1;
        let failed = s.fail_nonposted();
        self.events.push_back((
            ConnId(i),
            Event::Down {
                reason,
                failed_nonposted: failed,
            },
        ));
    }

    /// Next frame to send, written into `buf` (at least the configured MTU long).
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some((dst, f, len)) = self.out.pop_front() {
            buf[..len].copy_from_slice(&f[..len]);
            return Some(Transmit { dst, len });
        }
        let n = self.slots.len();
        for k in 0..n {
            let i = (self.rr + k) % n;
            if let Some(s) = self.slots[i].session.as_mut() {
                if let Some(len) = s.poll_transmit(now, buf) {
                    self.rr = (i + 1) % n;
                    return Some(Transmit { dst: s.p.peer, len });
                }
            }
        }
        None
    }

    /// The earliest deadline at which [`handle_timeout`](Self::handle_timeout) must run.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.out.is_empty() {
            return Some(Instant::ZERO);
        }
        let mut t: Option<Instant> = None;
        let mut min = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for s in &self.slots {
            min(s.session.as_ref().and_then(Session::poll_timeout));
            min(s.hs.as_ref().map(|h| h.next_retry));
            min(s.pending.as_ref().map(|p| p.expires));
            min(s.reconnect_at);
        }
        min(self.next_drain);
        t
    }

    /// Server role: schedule and run coordinated drains (docs/protocol.md §8).
    fn drain_timer(&mut self, now: Instant) {
        let interval = self.cfg.cc_drain_interval;
        let any = self.slots.iter().any(|s| s.session.is_some());
        if self.role != Role::Server || interval.is_zero() || !any {
            self.next_drain = None;
            return;
        }
        match self.next_drain {
            None => self.next_drain = Some(now + interval),
            Some(t) if t <= now => {
                let mut srtt = Duration::ZERO;
                for s in self.slots.iter_mut().filter_map(|s| s.session.as_mut()) {
                    srtt = srtt.max(s.begin_drain(now));
                }
                self.stats.drains += 1;
                self.next_drain = Some(now + interval.max(srtt * 40));
            }
            Some(_) => {}
        }
    }

    /// Run the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.drain_timer(now);
        for i in 0..self.slots.len() {
            if let Some(s) = self.slots[i].session.as_mut() {
                if s.handle_timeout(now) {
                    self.end_session(i, DownReason::IdleTimeout);
                    if self.role == Role::Client {
                        let b = self.slots[i].backoff;
                        self.slots[i].reconnect_at = Some(now + b);
                        self.slots[i].backoff = (b * 2).min(self.cfg.reconnect_max);
                    }
                }
            }
            if self.slots[i]
                .pending
                .as_ref()
                .is_some_and(|p| p.expires <= now)
            {
                if let Some(p) = self.slots[i].pending.take() {
                    self.retire(p.session.p.local_session);
                }
            }
            if self.slots[i].reconnect_at.is_some_and(|t| t <= now) {
                self.start_handshake(now, i, false);
            }
            let mut resend = None;
            let no_session = self.slots[i].session.is_none();
            if let Some(hs) = self.slots[i].hs.as_mut() {
                if hs.next_retry <= now {
                    hs.retry = (hs.retry * 2).min(self.cfg.reconnect_max);
                    hs.resent = true;
                    hs.next_retry = now + hs.retry;
                    resend = Some(hs.frame);
                    if hs.probe && no_session {
                        hs.probe = false;
                    }
                }
            }
            if let (Some(f), Some(dst)) = (resend, self.slots[i].server) {
                self.queue(dst, f, FRAME_LEN);
            }
        }
    }

    /// Queue a TLP for `conn`.
    pub fn send_tlp(&mut self, conn: ConnId, tlp: Bytes) -> Result<(), SendError> {
        self.session_mut(conn)
            .ok_or(SendError::NotConnected)?
            .send_tlp(tlp)
    }

    /// Bytes `send_tlp` would still accept for `conn` (0 when not connected).
    pub fn queue_space(&self, conn: ConnId) -> usize {
        self.session(conn).map_or(0, Session::queue_space)
    }

    /// Next delivered TLP of `conn`, in order. Taking it returns its credits to the peer.
    pub fn poll_delivered(&mut self, now: Instant, conn: ConnId) -> Option<Delivered> {
        self.session_mut(conn)?.poll_delivered(now)
    }

    /// Next delivered TLP of one class, if PCIe ordering allows taking it before the others
    /// (Posted: always; NP / Cpl: only when no earlier Posted TLP is waiting).
    pub fn poll_delivered_class(
        &mut self,
        now: Instant,
        conn: ConnId,
        class: OrderingClass,
    ) -> Option<Delivered> {
        self.session_mut(conn)?.poll_delivered_class(class, now)
    }

    /// Next event.
    pub fn poll_event(&mut self) -> Option<(ConnId, Event)> {
        self.events.pop_front()
    }

    /// Whether `conn` has an established session.
    pub fn is_connected(&self, conn: ConnId) -> bool {
        self.session(conn).is_some()
    }

    /// Handles of every peer.
    pub fn conns(&self) -> impl Iterator<Item = ConnId> {
        (0..self.slots.len()).map(ConnId)
    }

    /// The host of `conn`.
    pub fn host(&self, conn: ConnId) -> Option<HostId> {
        self.slots.get(conn.0).map(|s| s.host)
    }

    /// Counters of `conn`'s current session.
    pub fn stats(&self, conn: ConnId) -> Option<Stats> {
        self.session(conn).map(Session::stats)
    }

    /// Endpoint-wide drop counters.
    pub fn endpoint_stats(&self) -> &EndpointStats {
        &self.stats
    }

    /// Bytes of TLPs held by `conn`'s session (for memory-bound checks).
    pub fn memory(&self, conn: ConnId) -> usize {
        self.session(conn).map_or(0, Session::memory)
    }

    /// Whether `conn` still has TLPs queued or unacknowledged.
    pub fn busy(&self, conn: ConnId) -> bool {
        self.session(conn).is_some_and(Session::busy)
    }

    /// (reorder slots, undelivered TLPs) of `conn`'s receiver.
    pub fn recv_depth(&self, conn: ConnId) -> (usize, usize) {
        self.session(conn).map_or((0, 0), Session::recv_depth)
    }

    fn session(&self, conn: ConnId) -> Option<&Session> {
        self.slots.get(conn.0)?.session.as_ref()
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        self.slots.get_mut(conn.0)?.session.as_mut()
    }
}
