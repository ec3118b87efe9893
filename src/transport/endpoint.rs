//! The endpoint: one per socket, demultiplexes frames to sessions, runs the handshake on both
//! sides (`endpoint/client.rs` for the host, `endpoint/server.rs` for the appliance), detects
//! restarted peers, reconnects, rekeys, and turns session ends into events (docs/protocol.md
//! §3 and §7).
//! Sans-I/O like the sessions it owns.
//!
//! Randomness: session ids, epochs, ephemeral keys, nonces and cookie secrets come from the
//! operating system's generator. The `seed` given to [`Endpoint::new`] only drives behaviour
//! that is not secret (the congestion controller's drain jitter), so simulations stay
//! reproducible while two runs never share key material.

mod client;
mod server;

use super::cookie::{CookieJar, CookieMaker, MacKeys, COOKIE_LEN};
use super::crypto::Cipher;
use super::frame::{FrameHeader, FrameType, HEADER_LEN};
use super::handshake::{cipher_bit, Tai64N, INIT_LEN, RESP_LEN};
use super::keyring::FrameKeys;
use super::keys::{HostId, Psk, PublicKey, SecretKey};
use super::logging::{Kind, LogLimiter};
use super::ratelimit::{Bucket, SourceLimiter};
use super::recv::Delivered;
use super::session::{DropReason, Session};
use super::stats::{EndpointStats, Stats};
use super::time::Instant;
use super::{Config, PeerAddr, SendError};
use crate::tlp::OrderingClass;
use bytes::{Bytes, BytesMut};
use rand::rngs::{OsRng, StdRng};
use rand::{Rng, RngCore, SeedableRng};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

pub use super::event::{ConnId, DownReason, Event, Role, Transmit};

/// What kind of handshake the host runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HsKind {
    /// A new session (first, or after the old one ended).
    Connect,
    /// Beside a running session, after an unauthenticated RESET hint.
    Probe,
    /// New keys for the running session.
    Rekey,
}

/// The host's handshake in flight.
#[derive(Debug)]
struct ClientHs {
    init: super::handshake::Initiator,
    kind: HsKind,
    epoch: u32,
    next_retry: Instant,
    retry: Duration,
    /// When this INIT was queued (every retry is a fresh INIT, so the RESP gives an exact
    /// RTT sample).
    sent: Instant,
    /// This INIT was sent at once on a COOKIE: a further COOKIE waits for the retry timer
    /// (so COOKIEs, even valid ones from an on-path attacker, cannot make us send at their rate).
    after_cookie: bool,
}

/// The appliance's half-open session: keys made, nothing allocated until the host proves
/// it holds them with an authenticated DATA frame.
#[derive(Debug)]
struct Pending {
    sid: u32,
    peer_sid: u32,
    peer_epoch: u32,
    keys: FrameKeys,
    rx: super::crypto::PacketKey,
    mtu: u16,
    peer_credits: super::frame::CreditLimits,
    expires: Instant,
    sent: Instant,
}

#[derive(Debug)]
struct Slot {
    /// Name for logs and events.
    host: HostId,
    /// The peer's static key: the host's (appliance side) or the appliance's (host side).
    public: PublicKey,
    psk: Option<Psk>,
    /// Appliance side: the newest INIT timestamp accepted from this host.
    last_ts: Option<Tai64N>,
    /// Host side: mac keys and cookie for the appliance.
    jar: CookieJar,
    server: Option<PeerAddr>,
    session: Option<Session>,
    /// Host side: a new session whose keys the appliance has not yet confirmed, and until
    /// when we wait before starting over.
    confirming: Option<(Session, Instant, Duration)>,
    hs: Option<ClientHs>,
    pending: Option<Pending>,
    reconnect_at: Option<Instant>,
    backoff: Duration,
    /// Removed by [`Endpoint::remove_host`]: nothing of the host is left, the slot waits on
    /// the free list for the next host added.
    vacant: bool,
}

impl Slot {
    fn new(host: HostId, public: PublicKey, psk: Option<Psk>) -> Slot {
        Slot {
            host,
            public,
            psk,
            last_ts: None,
            jar: CookieJar::new(&public),
            server: None,
            session: None,
            confirming: None,
            hs: None,
            pending: None,
            reconnect_at: None,
            backoff: Duration::from_millis(10),
            vacant: false,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum SidRef {
    Session(usize),
    Confirming(usize),
    Pending(usize),
    Handshake(usize),
}

const RESET_LEN: usize = HEADER_LEN + 4;
/// Largest handshake-layer frame queued by the endpoint.
const HS_FRAME: usize = INIT_LEN;
const _: () = assert!(RESP_LEN <= HS_FRAME && COOKIE_LEN <= HS_FRAME && RESET_LEN <= HS_FRAME);
/// Handshake-layer frames queued at most: more than the drivers read in one batch (256), so
/// the answers to one batch are never dropped for lack of room.
const MAX_QUEUED_HS: usize = 320;
const RETIRED: usize = 256;
/// Sources the appliance tracks for its per-source handshake limit.
const RATE_SOURCES: usize = 4096;
/// How long the appliance stays under load after its handshake budget ran dry.
const LOAD_HOLD: Duration = Duration::from_secs(1);

/// Demultiplexer and handshake engine for one socket.
#[derive(Debug)]
pub struct Endpoint {
    cfg: Arc<Config>,
    role: Role,
    local: SecretKey,
    public: PublicKey,
    /// mac1 keys of messages to us.
    own_macs: MacKeys,
    cookies: CookieMaker,
    load: Bucket,
    under_load_until: Option<Instant>,
    reset_budget: Bucket,
    sources: SourceLimiter,
    /// Wall-clock time at `Instant::ZERO` (read once): INIT timestamps are this plus `now`.
    wall_origin: Tai64N,
    last_ts: Option<Tai64N>,
    hardware_aes: bool,
    /// Non-secret behaviour randomness (congestion jitter), seeded.
    jitter: StdRng,
    /// Server role: when the next coordinated drain starts.
    next_drain: Option<Instant>,
    epoch: u32,
    next_epoch: u32,
    slots: Vec<Slot>,
    /// Slots of removed hosts, reused by the next [`Endpoint::add_host`] (so adding and
    /// removing hosts for ever keeps as many slots as hosts were ever there at once).
    free: Vec<usize>,
    by_key: HashMap<PublicKey, usize>,
    by_sid: HashMap<u32, SidRef>,
    retired: VecDeque<u32>,
    events: VecDeque<(ConnId, Event)>,
    out: VecDeque<(PeerAddr, [u8; HS_FRAME], usize)>,
    stats: EndpointStats,
    log: LogLimiter,
    rr: usize,
}

impl Endpoint {
    /// A new endpoint with static key `key`. `seed` drives only non-secret behaviour (see the
    /// module documentation); keys, nonces, session ids and epochs come from the OS.
    pub fn new(cfg: Config, role: Role, key: SecretKey, seed: u64) -> Self {
        let epoch = OsRng.gen_range(1..u32::MAX / 2);
        let public = key.public_key();
        let now = Instant::ZERO;
        Endpoint {
            load: Bucket::new(cfg.handshake_rate, cfg.handshake_burst, now),
            reset_budget: Bucket::new(cfg.reset_rate, cfg.reset_rate / 10, now),
            sources: SourceLimiter::new(
                cfg.source_handshake_rate,
                cfg.source_handshake_burst,
                if role == Role::Server {
                    RATE_SOURCES
                } else {
                    0
                },
            ),
            cfg: Arc::new(cfg),
            role,
            own_macs: MacKeys::new(&public),
            cookies: CookieMaker::new(&public),
            under_load_until: None,
            wall_origin: Tai64N::now(),
            last_ts: None,
            hardware_aes: Cipher::hardware_aes(),
            jitter: StdRng::seed_from_u64(seed),
            local: key,
            public,
            next_drain: None,
            epoch,
            next_epoch: epoch,
            slots: Vec::new(),
            free: Vec::new(),
            by_key: HashMap::new(),
            by_sid: HashMap::new(),
            retired: VecDeque::with_capacity(RETIRED),
            events: VecDeque::new(),
            out: VecDeque::with_capacity(MAX_QUEUED_HS),
            stats: EndpointStats::default(),
            log: LogLimiter::default(),
            rr: 0,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Our static public key.
    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    fn slot(&mut self, host: HostId, public: PublicKey, psk: Option<Psk>) -> usize {
        if let Some(&i) = self.by_key.get(&public) {
            self.slots[i].host = host;
            self.slots[i].psk = psk;
            return i;
        }
        let fresh = Slot::new(host, public, psk);
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = fresh;
                i
            }
            None => {
                self.slots.push(fresh);
                self.slots.len() - 1
            }
        };
        self.by_key.insert(public, i);
        i
    }

    /// Server: accept the host with static key `public` (named `host` in events and logs),
    /// optionally with a PSK. Returns its stable handle; adding the same key again updates
    /// its name and PSK.
    pub fn add_host(&mut self, host: HostId, public: PublicKey, psk: Option<Psk>) -> ConnId {
        ConnId(self.slot(host, public, psk))
    }

    /// Server: stop accepting `host` and close its session, at run time. Its session ends
    /// (a [`Event::Down`] with [`DownReason::Removed`] and its failed Non-Posted TLPs), its
    /// half-open handshake and replay state go, its session ids are retired (a frame for them
    /// is dropped and counted as `drop_stale_session`), its key is forgotten (an INIT with it
    /// is refused and counted as `drop_unknown_host`) and its slot is freed for the next
    /// [`add_host`](Self::add_host). The peer sees its session end when nothing authenticated
    /// comes back within its idle timeout. Returns whether `host` was known.
    ///
    /// Re-keying a host is `remove_host` then `add_host` with the new key: the old key's
    /// session is closed and cannot come back.
    pub fn remove_host(&mut self, host: HostId) -> bool {
        let found: Vec<usize> = (0..self.slots.len())
            .filter(|&i| !self.slots[i].vacant && self.slots[i].host == host)
            .collect();
        for &i in &found {
            self.end_session(i, DownReason::Removed);
            let slot = &mut self.slots[i];
            let mut sids: Vec<u32> = Vec::new();
            if let Some(p) = slot.pending.take() {
                sids.push(p.sid);
            }
            if let Some(hs) = slot.hs.take() {
                sids.push(hs.init.sid());
            }
            if let Some((mut c, _, _)) = slot.confirming.take() {
                sids.extend(c.keys.rx_sids());
                sids.append(&mut c.keys.retired);
            }
            let public = slot.public;
            // Nothing of the host stays: keys, replay state, cookie, timers.
            *slot = Slot::new(host, public, None);
            slot.vacant = true;
            for sid in sids {
                self.retire(sid);
            }
            self.by_key.remove(&public);
            self.free.push(i);
            tracing::info!(%host, "transport: host removed; its key is no longer accepted");
        }
        !found.is_empty()
    }

    /// The handle of `host`, if it is accepted (server) or connected to (client).
    pub fn conn_of(&self, host: HostId) -> Option<ConnId> {
        self.slots
            .iter()
            .position(|s| !s.vacant && s.host == host)
            .map(ConnId)
    }

    /// Slots held, including freed ones waiting for reuse (for memory-bound checks).
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// Client: start connecting to the appliance at `server` whose static key is
    /// `server_key`. `host` names the session locally (it is not sent). Reconnects by itself
    /// after a failure.
    pub fn connect(
        &mut self,
        now: Instant,
        server: PeerAddr,
        host: HostId,
        server_key: PublicKey,
        psk: Option<Psk>,
    ) -> ConnId {
        let i = self.slot(host, server_key, psk);
        self.slots[i].server = Some(server);
        self.start_handshake(now, i, HsKind::Connect, self.cfg.handshake_retry);
        ConnId(i)
    }

    fn fresh_sid(&mut self) -> u32 {
        loop {
            let s = OsRng.next_u32();
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

    /// Forget the receive ids the sessions of slot `i` stopped using.
    fn collect_retired(&mut self, i: usize) {
        let mut gone = [0u32; 8];
        let mut n = 0;
        let slot = &mut self.slots[i];
        for s in slot
            .session
            .iter_mut()
            .chain(slot.confirming.iter_mut().map(|c| &mut c.0))
        {
            while n < gone.len() {
                let Some(sid) = s.keys.retired.pop() else {
                    break;
                };
                gone[n] = sid;
                n += 1;
            }
        }
        for &sid in &gone[..n] {
            self.retire(sid);
        }
    }

    /// Queue a handshake-layer frame; false (and nothing queued) when the queue is full.
    fn queue(&mut self, dst: PeerAddr, frame: &[u8]) -> bool {
        if self.out.len() >= MAX_QUEUED_HS {
            return false;
        }
        let mut f = [0u8; HS_FRAME];
        f[..frame.len()].copy_from_slice(frame);
        self.out.push_back((dst, f, frame.len()));
        true
    }

    /// The frame AEADs we offer or accept, as offer bits.
    fn ciphers(&self) -> u8 {
        match self.cfg.cipher {
            Some(c) => cipher_bit(c),
            None => {
                cipher_bit(Cipher::ChaCha20Poly1305)
                    | if self.hardware_aes {
                        cipher_bit(Cipher::Aes256Gcm)
                    } else {
                        0
                    }
            }
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
            FrameType::Cookie => self.on_cookie(now, &h, &frame),
            FrameType::Data => self.on_data(now, from, &h, frame),
            FrameType::Reset => self.on_reset(now, &h),
        }
    }

    fn on_data(&mut self, now: Instant, from: PeerAddr, h: &FrameHeader, frame: BytesMut) {
        match self.by_sid.get(&h.dst_session).copied() {
            Some(SidRef::Session(i)) => {
                let idle = self.role == Role::Client && self.slots[i].hs.is_none();
                let Some(s) = self.slots[i].session.as_mut() else {
                    return;
                };
                match s.handle_data(now, h, frame) {
                    Ok(()) => {
                        s.p.peer = from;
                        let rekey = idle && s.wants_rekey(now);
                        if rekey {
                            self.start_rekey(now, i);
                        }
                    }
                    Err(DropReason::TagLimit) => {
                        tracing::warn!(
                            host = %self.slots[i].host,
                            peer = %from,
                            limit = self.cfg.max_failed_tags,
                            "transport: too many frames failed the tag check under one key; ending the session"
                        );
                        self.end_session(i, DownReason::TooManyBadTags);
                    }
                    Err(DropReason::BadTag) => {
                        if let Some(sup) = self.log.allow(Kind::BadTag, now) {
                            tracing::warn!(
                                host = %self.slots[i].host,
                                peer = %from,
                                suppressed = sup,
                                "transport: frame failed the tag check (forged or corrupted)"
                            );
                        }
                    }
                    Err(_) => {}
                }
                self.collect_retired(i);
            }
            Some(SidRef::Confirming(i)) => self.on_confirming_data(now, from, i, h, frame),
            Some(SidRef::Pending(i)) => self.on_pending_data(now, from, i, h, frame),
            Some(SidRef::Handshake(_)) => self.stats.drop_unknown_session += 1,
            None => {
                if self.retired.contains(&h.dst_session) {
                    self.stats.drop_stale_session += 1;
                } else {
                    self.stats.drop_unknown_session += 1;
                    if self.role == Role::Server && self.reset_budget.allow(now) {
                        let mut f = [0u8; RESET_LEN];
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
                        if self.queue(from, &f) {
                            self.stats.resets_sent += 1;
                        }
                    }
                }
            }
        }
    }

    fn end_session(&mut self, i: usize, reason: DownReason) {
        if let Some(hs) = self.slots[i].hs.take_if(|h| h.kind == HsKind::Rekey) {
            self.retire(hs.init.sid());
        }
        let Some(mut s) = self.slots[i].session.take() else {
            return;
        };
        let mut sids: Vec<u32> = s.keys.rx_sids().collect();
        sids.append(&mut s.keys.retired);
        for sid in sids {
            self.retire(sid);
        }
        self.stats.sessions_down += 1;
        let failed = s.fail_nonposted();
        tracing::info!(
            host = %self.slots[i].host,
            peer = %s.p.peer,
            %reason,
            failed_nonposted = failed.len(),
            "transport: session lost"
        );
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
            let slot = &mut self.slots[i];
            for s in slot
                .session
                .iter_mut()
                .chain(slot.confirming.iter_mut().map(|c| &mut c.0))
            {
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
            if let Some((c, deadline, _)) = &s.confirming {
                min(c.poll_timeout());
                min(Some(*deadline));
            }
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
                if let Some(reason) = s.handle_timeout(now) {
                    self.end_session(i, reason);
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
                    self.retire(p.sid);
                }
            }
            if self.role == Role::Client {
                self.client_timers(now, i);
            }
            self.collect_retired(i);
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

    /// Bytes of `conn`'s TLPs queued and not yet framed (0 when not connected).
    pub fn unsent_bytes(&self, conn: ConnId) -> usize {
        self.session(conn).map_or(0, Session::unsent_bytes)
    }

    /// Whether `conn` can usefully take another TLP now: its unsent bytes are below about a
    /// congestion window, at least [`UNSENT_FRAMES`](super::UNSENT_FRAMES) full frames. A
    /// submitter that keeps its own order (the appliance's priorities) submits only while
    /// this holds, so its backlog stays with it rather than in the session's FIFO (which
    /// `send_tlp` fills up to `max_pending_bytes` regardless). `true` when not connected
    /// (`send_tlp` then says why).
    pub fn wants_more(&self, conn: ConnId) -> bool {
        self.session(conn).is_none_or(Session::wants_more)
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
    pub fn conns(&self) -> impl Iterator<Item = ConnId> + '_ {
        (0..self.slots.len())
            .filter(|&i| !self.slots[i].vacant)
            .map(ConnId)
    }

    /// The host of `conn`.
    pub fn host(&self, conn: ConnId) -> Option<HostId> {
        self.slots.get(conn.0).filter(|s| !s.vacant).map(|s| s.host)
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

    /// Whether the appliance currently considers itself under load (cookies required).
    pub fn under_load(&self, now: Instant) -> bool {
        self.under_load_until.is_some_and(|t| now < t)
    }

    fn session(&self, conn: ConnId) -> Option<&Session> {
        self.slots.get(conn.0)?.session.as_ref()
    }

    fn session_mut(&mut self, conn: ConnId) -> Option<&mut Session> {
        self.slots.get_mut(conn.0)?.session.as_mut()
    }
}
