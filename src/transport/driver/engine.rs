//! The engine shared by both drivers: an [`Endpoint`] plus a [`Port`], the real clock, the
//! receive-buffer pool, injected loss and counters; and the loop of the threaded driver.
//!
//! Frames move in batches where the port allows: one receive call returns runs of frames
//! (GRO) in several slots (recvmmsg), all handled with one clock reading, so the ACK they
//! cause goes out once at the next transmit; a transmit gathers the frames the endpoint has
//! for one peer into one contiguous run of equal-size frames and sends it with one call
//! (GSO). Frames are split off one receive chunk, so delivered TLPs share it without copies.

use super::{Cmd, DriverConfig, DriverStats, Peers, Port, Received, Upcall, MAX_RECV_SLOTS};
use crate::transport::endpoint::{ConnId, Endpoint, Role};
use crate::transport::time::Clock;
use crate::transport::SendError;
use bytes::{Buf, Bytes, BytesMut};
use crossbeam::channel::{Receiver, Sender, TryRecvError, TrySendError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Receive buffer chunk: frames are split off it, so delivered TLPs share it without copies.
/// Large enough for several GRO slots of 64 KiB; a new chunk is allocated only when the
/// frames of the last one are still held and it runs out.
const RX_CHUNK: usize = 1 << 20;
/// Received datagrams up to this size are moved together in the receive chunk; longer ones
/// (GRO runs) are split where they landed.
const COMPACT_MAX: usize = 16 * 1024;
/// Largest run one GSO send may carry (a UDP length field).
const TX_BATCH_BYTES: usize = 65507;

pub(crate) struct Engine {
    pub port: Box<dyn Port>,
    pub ep: Endpoint,
    pub clock: Clock,
    rx: BytesMut,
    /// What each receive slot holds (filled by the port).
    slots: [Received; MAX_RECV_SLOTS],
    tx: Vec<u8>,
    /// Frames one send may carry (the port's GSO limit; 1 without offload).
    max_segments: usize,
    mtu: usize,
    loss: f64,
    rng: StdRng,
    pub busy: bool,
    pub stats: DriverStats,
}

impl Engine {
    pub fn new(port: Box<dyn Port>, cfg: DriverConfig) -> Engine {
        let seed = if cfg.seed == 0 {
            rand::random()
        } else {
            cfg.seed
        };
        let mut tcfg = cfg.transport.clone();
        tcfg.mtu = tcfg.mtu.min(port.mtu());
        if let Peers::Connect { server, .. } = &cfg.peers {
            // Frames must fit the path: the handshake then agrees on the smaller of both
            // ends' sizes (protocol.md §3.2), so the server follows what we found.
            if let Some(path) = port.path_mtu(*server) {
                if path < tcfg.mtu {
                    tracing::info!(
                        configured = tcfg.mtu,
                        path_mtu = path,
                        "frame size lowered to what the path to {server} carries"
                    );
                    tcfg.mtu = path.max(MIN_MTU);
                }
            }
        }
        let mtu = tcfg.mtu;
        let max_segments = port
            .max_segments()
            .clamp(1, (TX_BATCH_BYTES / mtu.max(1)).max(1));
        let clock = Clock::new();
        let role = match &cfg.peers {
            Peers::Accept(_) => Role::Server,
            Peers::Connect { .. } => Role::Client,
        };
        let mut ep = Endpoint::new(tcfg, role, cfg.key.clone(), seed);
        match &cfg.peers {
            Peers::Accept(hosts) => {
                for h in hosts {
                    ep.add_host(h.host, h.public, h.psk.clone());
                }
            }
            Peers::Connect {
                server,
                host,
                server_key,
                psk,
            } => {
                ep.connect(clock.now(), *server, *host, *server_key, psk.clone());
            }
        }
        Engine {
            port,
            ep,
            clock,
            rx: BytesMut::with_capacity(RX_CHUNK),
            slots: [Received::default(); MAX_RECV_SLOTS],
            tx: vec![0; (mtu * max_segments).max(2048)],
            max_segments,
            mtu,
            loss: cfg.inject_loss,
            rng: StdRng::seed_from_u64(seed ^ 0x1055),
            busy: cfg.busy_poll,
            stats: DriverStats::default(),
        }
    }

    /// Read waiting frames into the endpoint: at least one receive call, more until about
    /// `max` frames were taken or nothing waits.
    pub fn receive(&mut self, max: usize) -> io::Result<bool> {
        let mut work = false;
        let slot = self.port.recv_slot(self.mtu).max(self.mtu);
        let mut frames = 0;
        while frames < max.max(1) {
            let k = self
                .port
                .recv_slots()
                .clamp(1, MAX_RECV_SLOTS)
                .min((max - frames).max(1));
            let need = slot * k;
            if self.rx.len() < need {
                if self.rx.capacity() < need {
                    // Reuses the chunk when no delivered frame holds it any more.
                    self.rx.clear();
                    self.rx.reserve(RX_CHUNK.max(need));
                }
                self.rx.resize(need, 0);
            }
            let n = self
                .port
                .recv_batch(&mut self.rx[..need], slot, &mut self.slots[..k])?;
            if n == 0 {
                break;
            }
            work = true;
            // One clock reading for the whole batch.
            let now = self.clock.now();
            let mut pos = 0;
            for i in 0..n.min(k) {
                let Received { len, stride, from } = self.slots[i];
                let start = i * slot;
                let len = len.min(slot);
                if start > pos {
                    if len <= COMPACT_MAX {
                        // A short datagram: moved down to where the last one ended, so the
                        // chunk is used by what arrived, not by whole slots (with many
                        // sessions' small frames per call, skipping the slots' unused rest
                        // took a fresh chunk every few calls, each kept alive by any frame
                        // still held).
                        self.rx.copy_within(start - pos..start - pos + len, 0);
                    } else {
                        self.rx.advance(start - pos);
                        pos = start;
                    }
                }
                let (mut left, stride) = (len, stride.max(1));
                while left > 0 {
                    let l = left.min(stride);
                    let frame = self.rx.split_to(l);
                    pos += l;
                    left -= l;
                    frames += 1;
                    self.stats.frames_in += 1;
                    crate::probe::hit(crate::probe::Ev::FrameIn);
                    self.ep.handle_frame(now, from, frame);
                }
            }
            if n < k {
                break;
            }
        }
        Ok(work)
    }

    /// Run due timers and send every frame the endpoint has: consecutive frames for one peer
    /// of one size (the last may be shorter) go out as one run ([`Port::send_segments`]).
    pub fn transmit(&mut self) -> bool {
        let now = self.clock.now();
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        let mtu = self.mtu;
        // The run being gathered at the front of `tx`: bytes, frame size, frames, peer.
        let (mut len, mut seg, mut count) = (0usize, 0usize, 0usize);
        let mut dst = None;
        let mut any = false;
        loop {
            if self.tx.len() < len + mtu {
                self.tx.resize(len + mtu, 0);
            }
            let Some(t) = self.ep.poll_transmit(now, &mut self.tx[len..len + mtu]) else {
                break;
            };
            any = true;
            if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
                self.stats.injected_drops += 1;
                continue;
            }
            self.stats.frames_out += 1;
            if count > 0 && (dst != Some(t.dst) || t.len > seg) {
                // Does not join the run: send the run, move this frame to the front.
                self.flush(len, seg, count, dst);
                self.tx.copy_within(len..len + t.len, 0);
                (len, count) = (0, 0);
            }
            if count == 0 {
                (seg, dst) = (t.len, Some(t.dst));
            }
            len += t.len;
            count += 1;
            // A shorter frame ends a run, and so does the port's limit.
            if t.len < seg || count >= self.max_segments {
                self.flush(len, seg, count, dst);
                (len, count) = (0, 0);
            }
        }
        if count > 0 {
            self.flush(len, seg, count, dst);
        }
        any
    }

    /// Send the run of `count` frames in `tx[..len]`.
    fn flush(
        &mut self,
        len: usize,
        seg: usize,
        count: usize,
        dst: Option<crate::transport::PeerAddr>,
    ) {
        let Some(dst) = dst else { return };
        let frames = &self.tx[..len];
        crate::probe::hit(crate::probe::Ev::FrameOut);
        let r = if count == 1 {
            self.port.send(frames, dst)
        } else {
            self.port.send_segments(frames, seg, dst)
        };
        if r.is_err() {
            self.stats.send_errors += count as u64;
        }
    }

    /// Hand events and delivered TLPs to `sink` until it refuses one (returned as `Err`).
    pub fn deliver(
        &mut self,
        sink: &mut dyn FnMut(Upcall) -> Result<(), Upcall>,
    ) -> Result<bool, Upcall> {
        let mut any = false;
        while let Some((c, e)) = self.ep.poll_event() {
            any = true;
            if let crate::transport::Event::Connected { peer, .. } = &e {
                let frame = self.ep.stats(c).map_or(0, |s| s.mtu);
                tracing::info!(
                    %peer,
                    frame_bytes = frame,
                    offered = self.mtu,
                    gso_segments = self.max_segments,
                    "session up: frames of up to {frame} B (the smaller of both ends' sizes)"
                );
            }
            sink(Upcall::Event { conn: c, event: e })?;
        }
        let now = self.clock.now();
        // By slot (a removed host's freed slot delivers nothing).
        let conns = self.ep.slot_count();
        for i in 0..conns {
            while let Some(d) = self.ep.poll_delivered(now, ConnId(i)) {
                any = true;
                sink(Upcall::Tlp {
                    conn: ConnId(i),
                    class: d.class,
                    tlp: d.tlp,
                })?;
            }
        }
        Ok(any)
    }

    /// Queue a TLP; `Err(Some(tlp))` when the session queue is full (retry later), an
    /// `Upcall::Dropped` via `Err(None)` is the caller's business otherwise.
    pub fn submit(&mut self, c: ConnId, t: Bytes) -> Result<(), (Bytes, SendError)> {
        self.ep.send_tlp(c, t.clone()).map_err(|e| (t, e))
    }

    /// Accept `h` from now on (see [`Endpoint::add_host`]).
    pub fn add_host(&mut self, h: &crate::transport::HostKey) -> ConnId {
        self.ep.add_host(h.host, h.public, h.psk.clone())
    }

    /// Stop accepting `host` and close its session (see [`Endpoint::remove_host`]); the
    /// session's `Down` event comes with the next delivery.
    pub fn remove_host(&mut self, host: crate::transport::HostId) -> bool {
        let known = self.ep.remove_host(host);
        // Frames the endpoint still held for it are gone with its session.
        self.transmit();
        known
    }

    pub fn snapshot(&self) -> DriverStats {
        let mut s = DriverStats {
            endpoint: self.ep.endpoint_stats().clone(),
            ..self.stats.clone()
        };
        s.sessions = self
            .ep
            .conns()
            .filter_map(|c| self.ep.stats(c).map(|st| (c.0, st)))
            .collect();
        s
    }

    /// Sleep until a frame, a wake-up or the next deadline (at most `cap`).
    pub fn wait(&mut self, cap: Option<Duration>) -> io::Result<()> {
        let mut timeout = self.ep.poll_timeout().map(|t| self.clock.until(t));
        if let Some(c) = cap {
            timeout = Some(timeout.map_or(c, |t| t.min(c)));
        }
        crate::probe::hit(crate::probe::Ev::LinkSleep);
        let r = self.port.wait(timeout);
        crate::probe::hit(crate::probe::Ev::LinkWake);
        r
    }
}

/// Smallest frame size the handshake accepts (protocol.md §3.2).
const MIN_MTU: usize = 256;

/// The threaded driver: an [`Engine`] plus the channels of a `TransportHandle`.
pub(crate) struct Driver {
    engine: Engine,
    cmd: Receiver<Cmd>,
    up: Sender<Upcall>,
    sleeping: Arc<AtomicBool>,
    stalled: Option<(ConnId, Bytes)>,
    up_stalled: Option<Upcall>,
}

impl Driver {
    pub fn new(
        port: Box<dyn Port>,
        cfg: DriverConfig,
        cmd: Receiver<Cmd>,
        up: Sender<Upcall>,
        sleeping: Arc<AtomicBool>,
    ) -> Driver {
        Driver {
            engine: Engine::new(port, cfg),
            cmd,
            up,
            sleeping,
            stalled: None,
            up_stalled: None,
        }
    }

    pub fn run(&mut self) -> io::Result<()> {
        loop {
            let mut work = self.engine.receive(256)?;
            if self.commands() {
                return Ok(());
            }
            work |= self.engine.transmit();
            work |= self.deliver();
            if work {
                continue;
            }
            if self.engine.busy {
                // Yield rather than spin: with more pollers than cores (host and appliance
                // on one 2-core box) a hard spin holds the CPU for a whole scheduler tick
                // while the thread that has the answer waits (measured: 8 ms MMIO reads).
                std::thread::yield_now();
                continue;
            }
            self.sleeping.store(true, Ordering::Release);
            if !self.cmd.is_empty() && self.stalled.is_none() {
                self.sleeping.store(false, Ordering::Release);
                continue;
            }
            let cap = (self.up_stalled.is_some() || self.stalled.is_some())
                .then_some(Duration::from_micros(200));
            self.engine.wait(cap)?;
            self.sleeping.store(false, Ordering::Release);
        }
    }

    /// Returns true when asked to stop.
    fn commands(&mut self) -> bool {
        if let Some((c, t)) = self.stalled.take() {
            if !self.submit(c, t) {
                return false;
            }
        }
        loop {
            match self.cmd.try_recv() {
                Ok(Cmd::Tlp(c, t)) => {
                    if !self.submit(c, t) {
                        return false;
                    }
                }
                Ok(Cmd::Stats(reply)) => {
                    let _ = reply.send(self.engine.snapshot());
                }
                Ok(Cmd::AddHost(h)) => {
                    self.engine.add_host(&h);
                }
                Ok(Cmd::RemoveHost(host)) => {
                    if self
                        .stalled
                        .as_ref()
                        .is_some_and(|(c, _)| self.engine.ep.host(*c) == Some(host))
                    {
                        self.stalled = None;
                    }
                    self.engine.remove_host(host);
                }
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => return true,
                Err(TryRecvError::Empty) => return false,
            }
        }
    }

    /// Returns false when the TLP had to be parked (queue full).
    fn submit(&mut self, c: ConnId, t: Bytes) -> bool {
        match self.engine.submit(c, t) {
            Ok(()) => true,
            Err((t, SendError::QueueFull)) => {
                self.stalled = Some((c, t));
                false
            }
            Err((t, error)) => {
                let u = Upcall::Dropped {
                    conn: c,
                    tlp: t,
                    error,
                };
                if let Err(TrySendError::Full(u)) | Err(TrySendError::Disconnected(u)) =
                    self.up.try_send(u)
                {
                    self.up_stalled = Some(u);
                }
                true
            }
        }
    }

    fn deliver(&mut self) -> bool {
        if let Some(u) = self.up_stalled.take() {
            if let Err(TrySendError::Full(u)) | Err(TrySendError::Disconnected(u)) =
                self.up.try_send(u)
            {
                self.up_stalled = Some(u);
                return false;
            }
        }
        let up = &self.up;
        let mut sink = |u: Upcall| match up.try_send(u) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(u)) | Err(TrySendError::Disconnected(u)) => Err(u),
        };
        match self.engine.deliver(&mut sink) {
            Ok(any) => any,
            Err(u) => {
                self.up_stalled = Some(u);
                true
            }
        }
    }
}
