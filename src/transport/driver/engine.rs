//! The engine shared by both drivers: an [`Endpoint`] plus a [`Port`], the real clock, the
//! receive-buffer pool, injected loss and counters; and the loop of the threaded driver.

use super::{Cmd, DriverConfig, DriverStats, Peers, Port, Upcall};
use crate::transport::endpoint::{ConnId, Endpoint, Role};
use crate::transport::time::Clock;
use crate::transport::SendError;
use bytes::{Bytes, BytesMut};
use crossbeam::channel::{Receiver, Sender, TryRecvError, TrySendError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Receive buffer chunk: frames are split off it, so delivered TLPs share it without copies.
const RX_CHUNK: usize = 64 * 1024;

pub(crate) struct Engine {
    pub port: Box<dyn Port>,
    pub ep: Endpoint,
    pub clock: Clock,
    rx: BytesMut,
    tx: Vec<u8>,
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
        let mtu = tcfg.mtu;
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
            tx: vec![0; mtu.max(2048)],
            mtu,
            loss: cfg.inject_loss,
            rng: StdRng::seed_from_u64(seed ^ 0x1055),
            busy: cfg.busy_poll,
            stats: DriverStats::default(),
        }
    }

    /// Read up to `max` waiting frames into the endpoint.
    pub fn receive(&mut self, max: usize) -> io::Result<bool> {
        let mut work = false;
        for _ in 0..max {
            if self.rx.capacity() < self.mtu {
                self.rx.reserve(RX_CHUNK);
            }
            self.rx.resize(self.mtu, 0);
            match self.port.recv(&mut self.rx[..])? {
                Some((n, from)) => {
                    let frame = self.rx.split_to(n);
                    self.rx.clear();
                    self.stats.frames_in += 1;
                    self.ep.handle_frame(self.clock.now(), from, frame);
                    work = true;
                }
                None => {
                    self.rx.clear();
                    break;
                }
            }
        }
        Ok(work)
    }

    /// Run due timers and send every frame the endpoint has.
    pub fn transmit(&mut self) -> bool {
        let now = self.clock.now();
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        let mut any = false;
        while let Some(t) = self.ep.poll_transmit(now, &mut self.tx) {
            any = true;
            if self.loss > 0.0 && self.rng.gen_bool(self.loss) {
                self.stats.injected_drops += 1;
                continue;
            }
            self.stats.frames_out += 1;
            if self.port.send(&self.tx[..t.len], t.dst).is_err() {
                self.stats.send_errors += 1;
            }
        }
        any
    }

    /// Hand events and delivered TLPs to `sink` until it refuses one (returned as `Err`).
    pub fn deliver(
        &mut self,
        sink: &mut dyn FnMut(Upcall) -> Result<(), Upcall>,
    ) -> Result<bool, Upcall> {
        let mut any = false;
        while let Some((c, e)) = self.ep.poll_event() {
            any = true;
            sink(Upcall::Event { conn: c, event: e })?;
        }
        let now = self.clock.now();
        let conns = self.ep.conns().count();
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
        self.port.wait(timeout)
    }
}

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
