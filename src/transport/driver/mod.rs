//! Threaded drivers: one thread owns an [`Endpoint`] and a link port (in-memory, UDP on mio,
//! or raw Ethernet through AF_PACKET on mio) and talks to the layer above through channels.
//! [`TransportHandle`] is the same for every link: send TLP bytes to a peer, receive
//! delivered TLPs and link events ([`Upcall`]). See docs/transport.md.

pub mod eth;
pub mod mem;
pub mod udp;

use super::endpoint::{ConnId, Endpoint, Event, Role};
use super::stats::{EndpointStats, Stats};
use super::time::Clock;
use super::{Config, HostId, PeerAddr, Psk, SendError};
use crate::tlp::OrderingClass;
use bytes::{Bytes, BytesMut};
use crossbeam::channel::{self, Receiver, Sender, TryRecvError, TrySendError};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Receive buffer chunk: frames are split off it, so delivered TLPs share it without copies.
const RX_CHUNK: usize = 256 * 1024;
const CMD_QUEUE: usize = 4096;
const UPCALL_QUEUE: usize = 16384;

/// A link port the driver thread polls. Implemented by the UDP, Ethernet and memory ports.
pub trait Port: Send {
    /// Receive one frame without blocking: `Ok(None)` when nothing is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, PeerAddr)>>;
    /// Send one frame (best effort: a full socket buffer drops it, like a lossy link).
    fn send(&mut self, frame: &[u8], dst: PeerAddr) -> io::Result<()>;
    /// Block until a frame may be waiting, [`Waker::wake`] is called, or `timeout` passes.
    fn wait(&mut self, timeout: Option<Duration>) -> io::Result<()>;
    /// A waker for [`wait`](Self::wait).
    fn waker(&self) -> Arc<dyn Wake>;
    /// Our own address on this link.
    fn local_addr(&self) -> PeerAddr;
    /// Largest frame this link carries.
    fn mtu(&self) -> usize;
}

/// Interrupts a blocked [`Port::wait`].
pub trait Wake: Send + Sync {
    /// Wake the driver thread.
    fn wake(&self);
}

/// What the driver thread hands to the layer above.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upcall {
    /// A TLP delivered exactly once, in order.
    Tlp {
        /// From which peer.
        conn: ConnId,
        /// Its ordering class.
        class: OrderingClass,
        /// The bytes.
        tlp: Bytes,
    },
    /// A session event (connected, down with the failed Non-Posted TLPs).
    Event {
        /// Which peer.
        conn: ConnId,
        /// What happened.
        event: Event,
    },
    /// A TLP given to [`TransportHandle::send`] that will never be transmitted (no session, or
    /// the TLP is invalid). A Non-Posted one must be failed by the caller.
    Dropped {
        /// For which peer.
        conn: ConnId,
        /// The TLP.
        tlp: Bytes,
        /// Why.
        error: SendError,
    },
}

/// Who the driver talks to.
#[derive(Debug, Clone)]
pub enum Peers {
    /// Appliance: accept these hosts.
    Accept(Vec<(HostId, Psk)>),
    /// Host agent: connect to this server.
    Connect {
        /// Server address (for Ethernet, `Eth([0xff; 6])` finds it by broadcast).
        server: PeerAddr,
        /// Our identity.
        host: HostId,
        /// Our key.
        psk: Psk,
    },
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Protocol tunables.
    pub transport: Config,
    /// Accept or connect.
    pub peers: Peers,
    /// Fraction of sent frames to drop on purpose (`--inject-loss PCT` / 100).
    pub inject_loss: f64,
    /// Seed for the injected loss and the endpoint's randomness (0: random).
    pub seed: u64,
    /// Spin instead of sleeping in the kernel (lowest latency, burns a core).
    pub busy_poll: bool,
}

impl DriverConfig {
    /// Defaults for `peers`.
    pub fn new(peers: Peers) -> Self {
        DriverConfig {
            transport: Config::default(),
            peers,
            inject_loss: 0.0,
            seed: 0,
            busy_poll: false,
        }
    }
}

/// Counters of a running driver.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct DriverStats {
    /// Endpoint-wide drops.
    pub endpoint: EndpointStats,
    /// Per peer with a session.
    pub sessions: Vec<(usize, Stats)>,
    /// Frames dropped on purpose by `inject_loss`.
    pub injected_drops: u64,
    /// Frames the socket refused to send.
    pub send_errors: u64,
    /// Frames received from the link.
    pub frames_in: u64,
    /// Frames sent to the link.
    pub frames_out: u64,
}

enum Cmd {
    Tlp(ConnId, Bytes),
    Stats(Sender<DriverStats>),
    Stop,
}

/// Handle of a running driver thread. Dropping it stops the thread.
#[derive(Debug)]
pub struct TransportHandle {
    cmd: Sender<Cmd>,
    up: Receiver<Upcall>,
    waker: WakerRef,
    local: PeerAddr,
    thread: Option<JoinHandle<()>>,
}

struct WakerRef {
    sleeping: Arc<AtomicBool>,
    waker: Arc<dyn Wake>,
}

impl std::fmt::Debug for WakerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WakerRef")
    }
}

impl WakerRef {
    fn wake(&self) {
        if self.sleeping.swap(false, Ordering::AcqRel) {
            self.waker.wake();
        }
    }
}

/// Why a handle call failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The driver thread has stopped.
    #[error("transport driver stopped")]
    Stopped,
    /// `try_send` only: the command queue is full.
    #[error("transport send queue full")]
    Full(Bytes),
}

impl TransportHandle {
    /// Start a driver thread over `port`.
    pub fn spawn(port: Box<dyn Port>, cfg: DriverConfig) -> io::Result<TransportHandle> {
        let (cmd_tx, cmd_rx) = channel::bounded(CMD_QUEUE);
        let (up_tx, up_rx) = channel::bounded(UPCALL_QUEUE);
        let sleeping = Arc::new(AtomicBool::new(false));
        let waker = WakerRef {
            sleeping: sleeping.clone(),
            waker: port.waker(),
        };
        let local = port.local_addr();
        let thread = std::thread::Builder::new()
            .name("pcietun-transport".into())
            .spawn(move || {
                let mut d = Driver::new(port, cfg, cmd_rx, up_tx, sleeping);
                if let Err(e) = d.run() {
                    tracing::error!("transport driver stopped: {e}");
                }
            })?;
        Ok(TransportHandle {
            cmd: cmd_tx,
            up: up_rx,
            waker,
            local,
            thread: Some(thread),
        })
    }

    /// Our address on the link (the bound UDP port, our MAC, our memory node).
    pub fn local_addr(&self) -> PeerAddr {
        self.local
    }

    /// Send a TLP to `conn`, blocking while the send queue is full (back-pressure).
    pub fn send(&self, conn: ConnId, tlp: Bytes) -> Result<(), HandleError> {
        self.cmd
            .send(Cmd::Tlp(conn, tlp))
            .map_err(|_| HandleError::Stopped)?;
        self.waker.wake();
        Ok(())
    }

    /// Send without blocking.
    pub fn try_send(&self, conn: ConnId, tlp: Bytes) -> Result<(), HandleError> {
        match self.cmd.try_send(Cmd::Tlp(conn, tlp)) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(Cmd::Tlp(_, t))) => {
                self.waker.wake();
                Err(HandleError::Full(t))
            }
            Err(_) => Err(HandleError::Stopped),
        }
    }

    /// Next upcall, waiting at most `timeout`.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Upcall> {
        self.up.recv_timeout(timeout).ok()
    }

    /// Next upcall if one is ready.
    pub fn try_recv(&self) -> Option<Upcall> {
        self.up.try_recv().ok()
    }

    /// Next upcall, waiting as long as it takes (`None` once the driver stopped).
    pub fn recv(&self) -> Option<Upcall> {
        self.up.recv().ok()
    }

    /// The upcall channel, for `select!` with other channels.
    pub fn upcalls(&self) -> &Receiver<Upcall> {
        &self.up
    }

    /// A snapshot of all counters.
    pub fn stats(&self) -> Result<DriverStats, HandleError> {
        let (tx, rx) = channel::bounded(1);
        self.cmd
            .send(Cmd::Stats(tx))
            .map_err(|_| HandleError::Stopped)?;
        self.waker.waker.wake();
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| HandleError::Stopped)
    }

    /// Stop the thread and wait for it.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.cmd.send(Cmd::Stop);
        self.waker.waker.wake();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for TransportHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Driver {
    port: Box<dyn Port>,
    ep: Endpoint,
    clock: Clock,
    cmd: Receiver<Cmd>,
    up: Sender<Upcall>,
    sleeping: Arc<AtomicBool>,
    stalled: Option<(ConnId, Bytes)>,
    up_stalled: Option<Upcall>,
    rx: BytesMut,
    tx: Vec<u8>,
    mtu: usize,
    loss: f64,
    rng: StdRng,
    busy: bool,
    stats: DriverStats,
}

impl Driver {
    fn new(
        port: Box<dyn Port>,
        cfg: DriverConfig,
        cmd: Receiver<Cmd>,
        up: Sender<Upcall>,
        sleeping: Arc<AtomicBool>,
    ) -> Driver {
        let seed = if cfg.seed == 0 {
            rand::random()
        } else {
            cfg.seed
        };
        let mut tcfg = cfg.transport.clone();
        tcfg.mtu = tcfg.mtu.min(port.mtu());
        let mtu = tcfg.mtu;
        let clock = Clock::new();
        let (role, connect) = match &cfg.peers {
            Peers::Accept(_) => (Role::Server, None),
            Peers::Connect { server, host, psk } => {
                (Role::Client, Some((*server, *host, psk.clone())))
            }
        };
        let mut ep = Endpoint::new(tcfg, role, seed);
        if let Peers::Accept(hosts) = &cfg.peers {
            for (h, k) in hosts {
                ep.add_host(*h, k.clone());
            }
        }
        if let Some((server, host, psk)) = connect {
            ep.connect(clock.now(), server, host, psk);
        }
        Driver {
            port,
            ep,
            clock,
            cmd,
            up,
            sleeping,
            stalled: None,
            up_stalled: None,
            rx: BytesMut::with_capacity(RX_CHUNK),
            tx: vec![0; mtu.max(2048)],
            mtu,
            loss: cfg.inject_loss,
            rng: StdRng::seed_from_u64(seed ^ 0x1055),
            busy: cfg.busy_poll,
            stats: DriverStats::default(),
        }
    }

    fn run(&mut self) -> io::Result<()> {
        loop {
            let mut work = false;
            // 1. frames in
            for _ in 0..256 {
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
            // 2. commands from the layer above
            if self.commands()? {
                return Ok(());
            }
            // 3. timers, frames out
            let now = self.clock.now();
            if self.ep.poll_timeout().is_some_and(|t| t <= now) {
                self.ep.handle_timeout(now);
            }
            work |= self.transmit();
            // 4. deliveries and events up
            work |= self.deliver();
            if work {
                continue;
            }
            if self.busy {
                std::hint::spin_loop();
                continue;
            }
            // 5. sleep until a frame, a command or the next deadline
            self.sleeping.store(true, Ordering::Release);
            if !self.cmd.is_empty() && self.stalled.is_none() {
                self.sleeping.store(false, Ordering::Release);
                continue;
            }
            let mut timeout = self.ep.poll_timeout().map(|t| self.clock.until(t));
            if self.up_stalled.is_some() || self.stalled.is_some() {
                let short = Duration::from_micros(200);
                timeout = Some(timeout.map_or(short, |t| t.min(short)));
            }
            self.port.wait(timeout)?;
            self.sleeping.store(false, Ordering::Release);
        }
    }

    /// Returns true when asked to stop.
    fn commands(&mut self) -> io::Result<bool> {
        if let Some((c, t)) = self.stalled.take() {
            if !self.submit(c, t) {
                return Ok(false);
            }
        }
        loop {
            match self.cmd.try_recv() {
                Ok(Cmd::Tlp(c, t)) => {
                    if !self.submit(c, t) {
                        return Ok(false);
                    }
                }
                Ok(Cmd::Stats(reply)) => {
                    let mut s = DriverStats {
                        endpoint: self.ep.endpoint_stats().clone(),
                        ..self.stats.clone()
                    };
                    s.sessions = self
                        .ep
                        .conns()
                        .filter_map(|c| self.ep.stats(c).map(|st| (c.0, st)))
                        .collect();
                    let _ = reply.send(s);
                }
                Ok(Cmd::Stop) | Err(TryRecvError::Disconnected) => return Ok(true),
                Err(TryRecvError::Empty) => return Ok(false),
            }
        }
    }

    /// Returns false when the TLP had to be parked (queue full).
    fn submit(&mut self, c: ConnId, t: Bytes) -> bool {
        match self.ep.send_tlp(c, t.clone()) {
            Ok(()) => true,
            Err(SendError::QueueFull) => {
                self.stalled = Some((c, t));
                false
            }
            Err(error) => {
                self.push_up(Upcall::Dropped {
                    conn: c,
                    tlp: t,
                    error,
                });
                true
            }
        }
    }

    fn push_up(&mut self, u: Upcall) -> bool {
        match self.up.try_send(u) {
            Ok(()) => true,
            Err(TrySendError::Full(u)) | Err(TrySendError::Disconnected(u)) => {
                self.up_stalled = Some(u);
                false
            }
        }
    }

    fn transmit(&mut self) -> bool {
        let mut any = false;
        let now = self.clock.now();
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

    fn deliver(&mut self) -> bool {
        if let Some(u) = self.up_stalled.take() {
            if !self.push_up(u) {
                return false;
            }
        }
        let mut any = false;
        while let Some((c, e)) = self.ep.poll_event() {
            any = true;
            if !self.push_up(Upcall::Event { conn: c, event: e }) {
                return true;
            }
        }
        let now = self.clock.now();
        let conns: usize = self.ep.conns().count();
        for i in 0..conns {
            while let Some(d) = self.ep.poll_delivered(now, ConnId(i)) {
                any = true;
                if !self.push_up(Upcall::Tlp {
                    conn: ConnId(i),
                    class: d.class,
                    tlp: d.tlp,
                }) {
                    return true;
                }
            }
        }
        any
    }
}

/// Open a port from a link specification: `udp:IP:PORT` (bind), `eth:IFACE[,vlan=ID][,pcp=N]`,
/// or an in-memory port built with [`mem::pair`].
pub fn open(spec: &str) -> io::Result<Box<dyn Port>> {
    if let Some(rest) = spec.strip_prefix("udp:") {
        let addr = rest
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{rest}: {e}")))?;
        return Ok(Box::new(udp::UdpPort::bind(addr)?));
    }
    if let Some(rest) = spec.strip_prefix("eth:") {
        return Ok(Box::new(eth::EthPort::open(&eth::EthSpec::parse(rest)?)?));
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("link {spec:?}: expected udp:IP:PORT or eth:IFACE"),
    ))
}
