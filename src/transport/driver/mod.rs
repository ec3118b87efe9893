//! Threaded drivers: one thread owns an [`Endpoint`] and a link port (in-memory, UDP on mio,
//! or raw Ethernet through AF_PACKET on mio) and talks to the layer above through channels.
//! [`TransportHandle`] is the same for every link: send TLP bytes to a peer, receive
//! delivered TLPs and link events ([`Upcall`]). See docs/transport.md.
//!
//! A port may move many frames per system call ([`Port::send_segments`],
//! [`Port::recv_batch`]): the UDP port uses segmentation offload (`UDP_SEGMENT`, udp(7)) on
//! send and `UDP_GRO` + recvmmsg(2) on receive where the kernel has them. Every frame stays
//! its own datagram on the wire and its own AEAD unit.

mod direct;
mod engine;
pub mod eth;
pub mod mem;
mod shared;
pub mod udp;

use self::engine::Driver;
pub use direct::{Direct, DirectSender, RECV_PER_ROUND};
pub use shared::SharedLink;
pub use udp::UdpOffload;

use super::endpoint::{ConnId, Event};
use super::stats::{EndpointStats, Stats};
use super::{Config, HostId, HostKey, PeerAddr, Psk, PublicKey, SecretKey, SendError};
use crate::tlp::OrderingClass;
use bytes::Bytes;
use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

const CMD_QUEUE: usize = 4096;
const UPCALL_QUEUE: usize = 16384;

/// What one slot of [`Port::recv_batch`] received: `len` bytes holding frames of `stride`
/// bytes each (the last may be shorter), all from `from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Bytes in the slot.
    pub len: usize,
    /// Bytes per frame (equal to `len` for a single frame).
    pub stride: usize,
    /// Sender.
    pub from: PeerAddr,
}

impl Default for Received {
    fn default() -> Self {
        Received {
            len: 0,
            stride: 0,
            from: PeerAddr::Udp(std::net::SocketAddr::from(([0, 0, 0, 0], 0))),
        }
    }
}

/// Most slots one [`Port::recv_batch`] call fills (the engine's batch).
pub const MAX_RECV_SLOTS: usize = 16;

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
    /// The descriptor that becomes readable when a frame waits, for a thread that watches the
    /// link without owning it ([`SharedLink`]); `None` for in-process ports.
    fn readiness_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
    /// Bytes one slot of [`recv_batch`](Self::recv_batch) needs, for frames of up to `mtu`
    /// bytes: one frame, or a coalesced run of them (UDP GRO: 64 KiB).
    fn recv_slot(&self, mtu: usize) -> usize {
        mtu
    }
    /// Slots worth filling per [`recv_batch`](Self::recv_batch) call (recvmmsg).
    fn recv_slots(&self) -> usize {
        1
    }
    /// Receive without blocking into up to `out.len()` slots of `slot` bytes laid end to end
    /// in `buf`, in one system call where the link allows; `out[i]` says what slot `i` holds.
    /// Returns how many slots were filled (0: nothing waiting).
    fn recv_batch(
        &mut self,
        buf: &mut [u8],
        slot: usize,
        out: &mut [Received],
    ) -> io::Result<usize> {
        let (Some(first), Some(slot_buf)) = (out.first_mut(), buf.get_mut(..slot)) else {
            return Ok(0);
        };
        Ok(match self.recv(slot_buf)? {
            Some((len, from)) => {
                *first = Received {
                    len,
                    stride: len,
                    from,
                };
                1
            }
            None => 0,
        })
    }
    /// Most frames one [`send_segments`](Self::send_segments) call carries (1: no offload).
    fn max_segments(&self) -> usize {
        1
    }
    /// Send `frames` to `dst`: consecutive frames of `seg` bytes each, the last possibly
    /// shorter, each its own datagram on the wire, in one system call where the link
    /// segments for us (UDP GSO). Best effort, like [`send`](Self::send).
    fn send_segments(&mut self, frames: &[u8], seg: usize, dst: PeerAddr) -> io::Result<()> {
        let mut r = Ok(());
        for f in frames.chunks(seg.max(1)) {
            if let Err(e) = self.send(f, dst) {
                r = Err(e);
            }
        }
        r
    }
    /// The largest frame the path to `dst` carries, where the link can tell (UDP: the
    /// route's MTU less the IP and UDP headers). `None`: unknown.
    fn path_mtu(&self, _dst: PeerAddr) -> Option<usize> {
        None
    }
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

impl Upcall {
    /// The session it concerns.
    pub fn conn(&self) -> ConnId {
        match self {
            Upcall::Tlp { conn, .. }
            | Upcall::Event { conn, .. }
            | Upcall::Dropped { conn, .. } => *conn,
        }
    }
}

/// Who the driver talks to.
#[derive(Debug, Clone)]
pub enum Peers {
    /// Appliance: accept these hosts (by static public key).
    Accept(Vec<HostKey>),
    /// Host agent: connect to this server.
    Connect {
        /// Server address (for Ethernet, `Eth([0xff; 6])` finds it by broadcast).
        server: PeerAddr,
        /// Our name in events and logs (never sent).
        host: HostId,
        /// The appliance's static public key (pinned).
        server_key: PublicKey,
        /// Optional pre-shared key.
        psk: Option<Psk>,
    },
}

/// Driver settings.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Protocol tunables.
    pub transport: Config,
    /// Our static private key.
    pub key: SecretKey,
    /// Accept or connect.
    pub peers: Peers,
    /// Fraction of sent frames to drop on purpose (`--inject-loss PCT` / 100).
    pub inject_loss: f64,
    /// Seed for the injected loss and the congestion jitter (0: random). Never key material:
    /// keys, nonces and session ids always come from the operating system.
    pub seed: u64,
    /// Spin instead of sleeping in the kernel (lowest latency, burns a core).
    pub busy_poll: bool,
}

impl DriverConfig {
    /// Defaults for static key `key` and `peers`.
    pub fn new(key: SecretKey, peers: Peers) -> Self {
        DriverConfig {
            transport: Config::default(),
            key,
            peers,
            inject_loss: 0.0,
            seed: 0,
            busy_poll: false,
        }
    }

    /// An appliance configuration and a host configuration that accept each other, with
    /// fresh keys from the OS: both ends in one process (benchmarks, tests, loopback demos).
    /// The host connects to `server` as `host`.
    pub fn pair(host: HostId, server: PeerAddr) -> (DriverConfig, DriverConfig) {
        let (skey, ckey) = (SecretKey::generate(), SecretKey::generate());
        let accept = vec![HostKey {
            host,
            public: ckey.public_key(),
            psk: None,
        }];
        let server_key = skey.public_key();
        (
            DriverConfig::new(skey, Peers::Accept(accept)),
            DriverConfig::new(
                ckey,
                Peers::Connect {
                    server,
                    host,
                    server_key,
                    psk: None,
                },
            ),
        )
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

impl DriverStats {
    /// One `key=value` line for logs: what an operator (or a test) checks after a run.
    pub fn summary(&self) -> String {
        let sum = |f: fn(&Stats) -> u64| self.sessions.iter().map(|(_, s)| f(s)).sum::<u64>();
        format!(
            "frames_in={} frames_out={} injected_drops={} send_errors={} tlps_delivered={} \
             retransmits={} rto_expirations={}",
            self.frames_in,
            self.frames_out,
            self.injected_drops,
            self.send_errors,
            sum(|s| s.tlps_delivered),
            sum(|s| s.retransmits),
            sum(|s| s.rto_expirations),
        )
    }
}

pub(crate) enum Cmd {
    Tlp(ConnId, Bytes),
    Stats(Sender<DriverStats>),
    AddHost(HostKey),
    RemoveHost(HostId),
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

    /// Accept the host `h` from now on (its key, name and PSK), while the driver runs;
    /// adding a known key again updates its name and PSK. Server role.
    pub fn add_host(&self, h: HostKey) -> Result<(), HandleError> {
        self.cmd
            .send(Cmd::AddHost(h))
            .map_err(|_| HandleError::Stopped)?;
        self.waker.wake();
        Ok(())
    }

    /// Stop accepting `host` and close its session while the driver runs (its `Down` event,
    /// reason `Removed`, comes as an upcall). Server role.
    pub fn remove_host(&self, host: HostId) -> Result<(), HandleError> {
        self.cmd
            .send(Cmd::RemoveHost(host))
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

/// Why a link specification (`udp:IP:PORT`, `eth:IFACE[,vlan=ID][,pcp=N]`, a MAC address)
/// does not parse. The link functions return it inside an [`io::Error`] of kind
/// `InvalidInput`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkSpecError {
    /// Neither `udp:` nor `eth:`.
    #[error("link {0:?}: expected udp:IP:PORT or eth:IFACE")]
    Scheme(String),
    /// `udp:` followed by something that is not IP:PORT.
    #[error("{addr}: {source}")]
    UdpAddress {
        /// What followed `udp:`.
        addr: String,
        /// Why it is not an address.
        source: std::net::AddrParseError,
    },
    /// An empty interface name, or one too long for the kernel.
    #[error("bad interface name {0:?}")]
    Interface(String),
    /// `vlan=` without a number.
    #[error("bad vlan {0:?}")]
    Vlan(String),
    /// A VLAN id outside 0..4095.
    #[error("vlan {0} out of range")]
    VlanRange(u16),
    /// `pcp=` without a number.
    #[error("bad pcp {0:?}")]
    Pcp(String),
    /// A priority outside 0..=7.
    #[error("pcp {0} out of range 0..=7")]
    PcpRange(u8),
    /// Not six colon-separated hex bytes.
    #[error("bad MAC {0:?}")]
    Mac(String),
}

impl From<LinkSpecError> for io::Error {
    fn from(e: LinkSpecError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// Open a port from a link specification: `udp:IP:PORT` (bind), `eth:IFACE[,vlan=ID][,pcp=N]`,
/// or an in-memory port built with [`mem::pair`].
pub fn open(spec: &str) -> io::Result<Box<dyn Port>> {
    if let Some(rest) = spec.strip_prefix("udp:") {
        let addr = rest.parse().map_err(|source| LinkSpecError::UdpAddress {
            addr: rest.to_string(),
            source,
        })?;
        return Ok(Box::new(udp::UdpPort::bind(addr)?));
    }
    if let Some(rest) = spec.strip_prefix("eth:") {
        return Ok(Box::new(eth::EthPort::open(&eth::EthSpec::parse(rest)?)?));
    }
    Err(LinkSpecError::Scheme(spec.to_string()).into())
}
