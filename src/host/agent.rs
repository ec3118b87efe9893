//! The host agent: a [`Host`] root complex on a transport session to one appliance, and the
//! vfio-user sockets of its functions (docs/host.md); several appliances: one `Agent` each,
//! [`super::fleet`].
//!
//! The transport link is a [`SharedLink`]: a requester that waits for a completion runs the
//! link itself (its request leaves from its own thread, the completion wakes it from the
//! socket — no thread hand-off); while nobody waits, the *pump* thread watches the socket and
//! hands what arrives to [`Host::on_tlp`] (DMA requests, interrupts) and session events to
//! [`Host::on_link_up`] / [`Host::on_link_down`]. The *scanner* re-enumerates after every
//! (re)connection, off the pump thread because enumeration waits for completions; it also
//! does the blocking half of slot events (docs/host.md "Hot-plug"): enumerating a card the
//! appliance presented, and for an orderly removal withdrawing the card's vfio-user sockets
//! before acknowledging with `RemovalAck`.

use crate::sync::MutexExt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::control::{BindError, BoundSocket, ControlInfo, ControlServer};
use super::root::{Downlink, Host, HostConfig, LinkError};
use super::sockfile::{remove_if_ours, SocketId};
use super::tlpio::TlpArena;
use super::vfio_user::{Closer, Connection, FunctionServer, ServerConfig, Withdraw};
use crate::tlp::Bdf;
use crate::transport::driver::{
    eth, udp, Direct, DriverConfig, DriverStats, Peers, SharedLink, Upcall,
};
use crate::transport::keys::KeyError;
use crate::transport::{ConnId, Event, HostId, PeerAddr, Psk, PublicKey, SecretKey};

/// Where the appliance is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `udp:IP:PORT`.
    Udp(SocketAddr),
    /// `eth:IFACE[,peer=MAC]`.
    Eth(String),
}

impl std::str::FromStr for Target {
    type Err = AgentError;
    fn from_str(s: &str) -> Result<Self, AgentError> {
        let bad = || AgentError::BadTarget(s.to_string());
        if let Some(a) = s.strip_prefix("udp:") {
            return a.parse().map(Target::Udp).map_err(|_| bad());
        }
        if s.starts_with("eth:") {
            return Ok(Target::Eth(s.to_string()));
        }
        Err(bad())
    }
}

impl std::fmt::Display for Target {
    /// As `--connect` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Udp(a) => write!(f, "udp:{a}"),
            Target::Eth(spec) => f.write_str(spec),
        }
    }
}

/// Errors starting or running the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// `--connect` is neither `udp:IP:PORT` nor `eth:IFACE[,peer=MAC]`.
    #[error("bad --connect {0:?}: expected udp:IP:PORT or eth:IFACE[,peer=MAC]")]
    BadTarget(String),
    /// Socket or interface trouble.
    #[error("{what}: {source}")]
    Io {
        /// What we were doing.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The vfio-user socket directory could not be created.
    #[error("creating {}: {source}", path.display())]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The host ID is not acceptable to the transport.
    #[error("host ID rejected: {0}")]
    Identity(#[source] KeyError),
    /// A key refused (e.g. the development key toward an appliance off loopback).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// No session with the appliance in time.
    #[error("no session with the appliance after {0:?}")]
    NotConnected(Duration),
    /// No function at this BDF below the root port.
    #[error("no tunnelled function at {0}")]
    NoFunction(Bdf),
    /// The vfio-user socket directory or a socket could not be set up.
    #[error(transparent)]
    Socket(#[from] super::vfio_user::socket::SocketError),
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The appliance.
    pub target: Target,
    /// Our host ID.
    pub host_id: String,
    /// Our static private key (None: the built-in development key, refused unless the
    /// appliance is on loopback).
    pub key: Option<SecretKey>,
    /// The appliance's static public key (None: the development appliance's, loopback only).
    pub appliance_key: Option<PublicKey>,
    /// Optional pre-shared key on top of the static keys.
    pub psk: Option<Psk>,
    /// Fraction (0..1) of sent frames to drop on purpose.
    pub inject_loss: f64,
    /// Root complex settings.
    pub host: HostConfig,
}

/// What the scanner thread is woken for.
#[derive(Debug, Clone, Copy)]
enum ScanJob {
    /// A session came up: enumerate the whole tunnel bus.
    Full,
    /// Slot messages arrived: see [`Host::take_slot_work`].
    Slots,
}

/// A consumer of functions beyond their vfio-user socket that must let go before an orderly
/// removal is acknowledged: the VM service (the guest ejects the device). Set with
/// [`Agent::set_removal_gate`].
pub trait RemovalGate: Send + Sync {
    /// Begin releasing function `bdf` for an orderly removal. The function keeps working
    /// until `done` is dropped (or [`Released::done`] is called) — do that once the consumer
    /// let go, gave up, or is gone. Must not block.
    fn release(&self, bdf: Bdf, done: Released);
}

/// Dropping it tells the agent a [`RemovalGate`] released its function.
pub struct Released(Option<Box<dyn FnOnce() + Send>>);

impl Released {
    /// The consumer let go (same as dropping it).
    pub fn done(self) {}

    /// A handle that runs `f` when dropped (for tests of a [`RemovalGate`]).
    pub fn new(f: impl FnOnce() + Send + 'static) -> Released {
        Released(Some(Box::new(f)))
    }
}

impl std::fmt::Debug for Released {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Released")
    }
}

impl Drop for Released {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f();
        }
    }
}

/// An orderly removal waiting for its consumers.
#[derive(Debug)]
struct PendingRemoval {
    slot: u8,
    generation: u16,
    /// Functions whose consumer has not let go yet.
    waiting: Vec<Bdf>,
}

/// How long a withdrawn function's server thread may take to end before it is left behind.
const SERVER_EXIT: Duration = Duration::from_secs(2);

/// Slot handling shared by the scanner thread and the [`RemovalGate`]'s callbacks.
struct Slots {
    host: Arc<Host>,
    served: Arc<Mutex<Vec<Served>>>,
    pending: Mutex<Vec<PendingRemoval>>,
    gate: Mutex<Option<std::sync::Weak<dyn RemovalGate>>>,
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slots")
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Slots {
    /// The blocking half of slot events, on the scanner thread.
    fn work(self: &Arc<Self>) {
        use crate::tlp::slot::SlotEvent;
        while let Some(m) = self.host.take_slot_work() {
            match m.event {
                SlotEvent::Present => {
                    let found = self.host.present_slot(m.slot);
                    tracing::info!(slot = m.slot, functions = found.len(), "card presented");
                }
                SlotEvent::RemovalRequest => self.removal_request(m.slot, m.generation),
                SlotEvent::Removed => {
                    // Surprise removal (or the appliance's grace ran out): the host already
                    // failed the card's requests; an orderly removal still waiting is moot.
                    self.pending.lock_or_recover().retain(|p| p.slot != m.slot);
                    let gone: Vec<Bdf> = self
                        .served
                        .lock_or_recover()
                        .iter()
                        .map(|s| s.bdf)
                        .filter(|b| b.device() == m.slot)
                        .collect();
                    self.close_sockets(&gone);
                }
                // Handled on the pump thread (`Host::on_slot_message`), or host → appliance.
                SlotEvent::Occupied
                | SlotEvent::RemovalAck
                | SlotEvent::Consumer
                | SlotEvent::VmTarget => {}
            }
        }
    }

    /// An orderly removal: ask the gate (the VMs) to let go of each function and finish once
    /// all did; without a gate at once.
    fn removal_request(self: &Arc<Self>, slot: u8, generation: u16) {
        let bdfs = self.host.slot_functions(slot);
        {
            let mut p = self.pending.lock_or_recover();
            if p.iter()
                .any(|p| p.slot == slot && p.generation == generation)
            {
                return; // a repeated request: the first one is under way
            }
            p.retain(|p| p.slot != slot);
            p.push(PendingRemoval {
                slot,
                generation,
                waiting: bdfs.clone(),
            });
        }
        let gate = self
            .gate
            .lock_or_recover()
            .as_ref()
            .and_then(|g| g.upgrade());
        if bdfs.is_empty() {
            self.finish(slot, generation);
            return;
        }
        for b in bdfs {
            let me = self.clone();
            let done = Released::new(move || me.released(slot, generation, b));
            match &gate {
                Some(g) => {
                    tracing::info!(slot, function = %b, "orderly removal: waiting for the consumer to let go");
                    g.release(b, done);
                }
                None => drop(done),
            }
        }
    }

    /// The consumer of `bdf` let go; the last one finishes the removal.
    fn released(&self, slot: u8, generation: u16, bdf: Bdf) {
        let complete = {
            let mut p = self.pending.lock_or_recover();
            let Some(i) = p
                .iter()
                .position(|p| p.slot == slot && p.generation == generation)
            else {
                return; // superseded (a surprise removal, a newer request)
            };
            p[i].waiting.retain(|w| *w != bdf);
            if p[i].waiting.is_empty() {
                p.remove(i);
                true
            } else {
                false
            }
        };
        if complete {
            self.finish(slot, generation);
        }
    }

    /// Fence the card, close its sockets, acknowledge.
    fn finish(&self, slot: u8, generation: u16) {
        let gone = self.host.withdraw_slot(slot);
        self.close_sockets(&gone);
        if let Err(e) = self.host.ack_removal(slot, generation) {
            tracing::warn!(slot, error = %e, "removal acknowledgement not sent");
        }
        tracing::info!(slot, generation, "orderly removal acknowledged");
    }

    /// End the vfio-user servers of `bdfs`: their consumers see the device vanish, the
    /// threads end and the socket files go.
    fn close_sockets(&self, bdfs: &[Bdf]) {
        let closing: Vec<Served> = {
            let mut served = self.served.lock_or_recover();
            let (gone, keep) = std::mem::take(&mut *served)
                .into_iter()
                .partition(|sv| bdfs.contains(&sv.bdf));
            *served = keep;
            gone
        };
        for sv in closing {
            sv.shut_down();
        }
    }
}

/// [`Downlink`] over the transport session.
#[derive(Debug)]
struct SessionLink {
    handle: Arc<SharedLink>,
    conn: Mutex<Option<ConnId>>,
    /// Where each TLP is copied into the `Bytes` the transport keeps until it is acknowledged.
    arena: TlpArena,
}

impl Downlink for SessionLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        let conn = self.conn.lock_or_recover().ok_or(LinkError::NoSession)?;
        crate::probe::hit(crate::probe::Ev::HostTlpOut);
        self.handle
            .send(conn, self.arena.copy(tlp))
            .map_err(LinkError::from)
    }

    fn drive(&self, done: &dyn Fn() -> bool, deadline: Instant) -> bool {
        self.handle.drive(done, deadline)
    }
}

/// A function whose vfio-user socket is being served.
#[derive(Debug)]
struct Served {
    bdf: Bdf,
    path: PathBuf,
    /// The socket file its server bound (removed only if still that file).
    id: SocketId,
    withdraw: Withdraw,
    closer: Closer,
    /// Signalled (by disconnecting) when the server thread ends.
    exited: mpsc::Receiver<()>,
    thread: JoinHandle<()>,
}

impl Served {
    /// End the server: its consumer sees a surprise removal, the thread ends (joined, at most
    /// [`SERVER_EXIT`]) and the socket file is removed.
    fn shut_down(self) {
        self.closer.close();
        match self.exited.recv_timeout(SERVER_EXIT) {
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let _ = self.thread.join();
            }
            _ => {
                tracing::warn!(function = %self.bdf, "vfio-user server thread did not end; left behind")
            }
        }
        remove_if_ours(&self.path, self.id);
    }
}

/// A running host agent.
#[derive(Debug)]
pub struct Agent {
    host: Arc<Host>,
    stats: Arc<Mutex<DriverStats>>,
    stop: Arc<AtomicBool>,
    scans: Mutex<mpsc::Receiver<Vec<Bdf>>>,
    /// Functions with a vfio-user socket: its path and the handle that withdraws its consumer.
    served: Arc<Mutex<Vec<Served>>>,
    slots: Arc<Slots>,
    pump: Mutex<Option<JoinHandle<()>>>,
    /// The control socket (`pcietun host lspci|read|write` of a running agent).
    control: Mutex<Option<ControlServer>>,
    /// The PCI segment this appliance's functions appear under (docs/host.md "Several
    /// appliances"): it prefixes their vfio-user socket names unless it is 0.
    segment: u16,
    _scanner: JoinHandle<()>,
}

impl Agent {
    /// Open the transport toward the appliance and start the pump and scanner threads.
    pub fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let io = |what: &'static str| move |source| AgentError::Io { what, source };
        let host_id = HostId::new(&cfg.host_id).map_err(AgentError::Identity)?;
        let development = cfg.key.is_none() || cfg.appliance_key.is_none();
        if development {
            let target = cfg.target.to_string();
            crate::transport::keys::require_loopback([target.as_str()])?;
        }
        let key = cfg.key.unwrap_or_else(SecretKey::development_host);
        let server_key = cfg
            .appliance_key
            .unwrap_or_else(|| SecretKey::development_appliance().public_key());
        let (port, server): (Box<dyn crate::transport::driver::Port>, PeerAddr) = match &cfg.target
        {
            Target::Udp(a) => {
                let local: SocketAddr = if a.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
                    .parse()
                    .map_err(|_| AgentError::BadTarget(a.to_string()))?;
                let p = udp::UdpPort::bind(local).map_err(io("binding a UDP socket"))?;
                (Box::new(p), PeerAddr::Udp(*a))
            }
            Target::Eth(spec) => {
                let body = spec.strip_prefix("eth:").unwrap_or(spec);
                let s = eth::EthSpec::parse(body).map_err(io("parsing the Ethernet target"))?;
                // `peer=MAC` picks the appliance; without it the handshake is broadcast.
                let peer = match body.split(',').find_map(|p| p.strip_prefix("peer=")) {
                    Some(m) => eth::parse_mac(m).map_err(io("parsing peer=MAC"))?,
                    None => [0xff; 6],
                };
                let p = eth::EthPort::open(&s).map_err(io("opening the Ethernet interface"))?;
                (Box::new(p), PeerAddr::Eth(peer))
            }
        };
        let mut dcfg = DriverConfig::new(
            key,
            Peers::Connect {
                server,
                host: host_id,
                server_key,
                psk: cfg.psk,
            },
        );
        dcfg.inject_loss = cfg.inject_loss;
        Agent::start_on(port, dcfg, cfg.host)
    }

    /// Start on a port the caller opened, with transport settings of its own (`dcfg`, whose
    /// peers name the appliance: [`Peers::Connect`]) — the pump and scanner threads as
    /// [`Agent::start`] runs them. For rigs that pick the link and the knobs themselves (the
    /// benchmarks' loss, AEAD, MTU and busy-poll).
    pub fn start_on(
        port: Box<dyn crate::transport::driver::Port>,
        dcfg: DriverConfig,
        host_cfg: HostConfig,
    ) -> Result<Agent, AgentError> {
        let io = |what: &'static str| move |source| AgentError::Io { what, source };
        let shared = Arc::new(
            SharedLink::new(Direct::new(port, dcfg)).map_err(io("starting the transport"))?,
        );
        let link = Arc::new(SessionLink {
            handle: shared.clone(),
            conn: Mutex::new(None),
            arena: TlpArena::default(),
        });
        let stats = Arc::new(Mutex::new(DriverStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let host = Host::new(link.clone(), host_cfg);
        let (scan_tx, scan_rx) = mpsc::channel::<ScanJob>();
        let (done_tx, done_rx) = mpsc::channel::<Vec<Bdf>>();
        let served: Arc<Mutex<Vec<Served>>> = Arc::default();
        let slots = Arc::new(Slots {
            host: host.clone(),
            served: served.clone(),
            pending: Mutex::new(Vec::new()),
            gate: Mutex::new(None),
        });
        let scanner = {
            let host = host.clone();
            let slots = slots.clone();
            std::thread::Builder::new()
                .name("host-scan".into())
                .spawn(move || {
                    while let Ok(job) = scan_rx.recv() {
                        match job {
                            ScanJob::Full => {
                                let found = host.rescan();
                                let _ = done_tx.send(found.iter().map(|f| f.bdf).collect());
                            }
                            ScanJob::Slots => slots.work(),
                        }
                    }
                })
                .map_err(io("starting the scanner"))?
        };
        {
            // Upcalls run on whichever thread drives the link. Weak references: the link
            // belongs to the host, not the other way round.
            let (host, link) = (Arc::downgrade(&host), Arc::downgrade(&link));
            let scan_tx = Mutex::new(scan_tx);
            shared.set_dispatch(Box::new(move |up| {
                let (Some(host), Some(link)) = (host.upgrade(), link.upgrade()) else {
                    return;
                };
                match up {
                    Upcall::Tlp { tlp, .. } => {
                        host.on_tlp(&tlp);
                        if host.has_slot_work() {
                            let _ = scan_tx.lock_or_recover().send(ScanJob::Slots);
                        }
                    }
                    Upcall::Event { conn, event } => match event {
                        Event::Connected { .. } => {
                            *link.conn.lock_or_recover() = Some(conn);
                            host.on_link_up();
                            let _ = scan_tx.lock_or_recover().send(ScanJob::Full);
                        }
                        Event::Down { reason, .. } => {
                            tracing::warn!(?reason, "session with the appliance down");
                            *link.conn.lock_or_recover() = None;
                            host.on_link_down();
                        }
                    },
                    Upcall::Dropped { error, tlp, .. } => {
                        tracing::debug!(%error, "TLP not transmitted");
                        host.on_dropped(&tlp);
                    }
                }
            }));
        }
        let pump = {
            let (shared, stats, stop) = (shared.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("host-pump".into())
                .spawn(move || {
                    let publish = |d: &Direct| {
                        *stats.lock_or_recover() = d.stats();
                    };
                    if let Err(e) = shared.run_watcher(&stop, publish) {
                        tracing::error!(error = %e, "transport link failed");
                    }
                })
                .map_err(io("starting the pump"))?
        };
        Ok(Agent {
            host,
            stats,
            stop,
            scans: Mutex::new(done_rx),
            served,
            slots,
            pump: Mutex::new(Some(pump)),
            control: Mutex::new(None),
            segment: 0,
            _scanner: scanner,
        })
    }

    /// Put this appliance's functions under PCI segment `segment` (one agent per appliance of
    /// a host agent with several, [`super::fleet`]): their vfio-user sockets become
    /// `DIR/<ssss>:<bb>:<dd>.<f>.sock` so they never collide with another appliance's.
    /// Segment 0 (the default) keeps the plain names. Call before serving sockets.
    pub fn with_segment(mut self, segment: u16) -> Agent {
        self.segment = segment;
        self
    }

    /// The PCI segment of this appliance's functions.
    pub fn segment(&self) -> u16 {
        self.segment
    }

    /// The socket file name of function `bdf`: `<bb>:<dd>.<f>.sock`, with `<ssss>:` in front
    /// in a segment other than 0.
    pub fn socket_name(&self, bdf: Bdf) -> String {
        format!("{}.sock", super::control::Addr::new(self.segment, bdf))
    }

    /// The root complex (Rust API for user-space drivers: [`Host::open`]).
    pub fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Wait for the first enumeration after a session came up; the functions found.
    pub fn wait_scan(&self, timeout: Duration) -> Result<Vec<Bdf>, AgentError> {
        self.scans
            .lock_or_recover()
            .recv_timeout(timeout)
            .map_err(|_| AgentError::NotConnected(timeout))
    }

    /// Stop the pump (the link goes quiet; the appliance sees the session time out) and
    /// return the final transport counters.
    pub fn stop(&self) -> DriverStats {
        self.close_control();
        self.stop.store(true, Ordering::Relaxed);
        let pump = self.pump.lock_or_recover().take();
        if let Some(p) = pump {
            let _ = p.join();
        }
        self.transport_stats()
    }

    /// Serve the control socket `bound` (docs/host.md "Control socket"): `status`, `lspci`,
    /// `config`, `read`, `write` against this agent's session. Replaces (closes) a control
    /// socket this agent served before.
    pub fn serve_control(
        &self,
        bound: BoundSocket,
        info: ControlInfo,
    ) -> Result<PathBuf, BindError> {
        let server = ControlServer::start(bound, self.host.clone(), info)?;
        let p = server.path().to_path_buf();
        let old = self.control.lock_or_recover().replace(server);
        drop(old);
        Ok(p)
    }

    /// Stop serving the control socket and remove it (also done by [`Agent::stop`]).
    pub fn close_control(&self) {
        let old = self.control.lock_or_recover().take();
        drop(old);
    }

    /// Transport counters (for operators), at most 100 ms old.
    pub fn transport_stats(&self) -> DriverStats {
        self.stats.lock_or_recover().clone()
    }

    /// Create `DIR/<bb>:<dd>.<f>.sock` ([`Agent::socket_name`]) for every function not served
    /// yet and serve each on its own thread. Returns the new socket paths (they accept connections on return).
    pub fn serve_vfio_user(&self, dir: &Path) -> Result<Vec<PathBuf>, AgentError> {
        let mut paths = Vec::new();
        for info in self.host.functions() {
            if self.vfio_user_socket(info.bdf).is_some() {
                continue;
            }
            paths.push(self.serve_function(dir, info.bdf)?);
        }
        Ok(paths)
    }

    /// The socket of function `bdf`, if it is served.
    pub fn vfio_user_socket(&self, bdf: Bdf) -> Option<PathBuf> {
        let served = self.served.lock_or_recover();
        served.iter().find(|s| s.bdf == bdf).map(|s| s.path.clone())
    }

    /// Serve function `bdf` at `DIR/<bb>:<dd>.<f>.sock` ([`Agent::socket_name`], on its own
    /// thread) unless it is served already; the socket path.
    pub fn serve_function(&self, dir: &Path, bdf: Bdf) -> Result<PathBuf, AgentError> {
        let mut served = self.served.lock_or_recover();
        if let Some(s) = served.iter().find(|s| s.bdf == bdf) {
            return Ok(s.path.clone());
        }
        std::fs::create_dir_all(dir).map_err(|source| AgentError::SocketDir {
            path: dir.to_path_buf(),
            source,
        })?;
        let dev = self.host.open(bdf).ok_or(AgentError::NoFunction(bdf))?;
        let path = dir.join(self.socket_name(bdf));
        let server = FunctionServer::bind(&path)?;
        let withdraw = server.withdrawer();
        let id = server.socket_id();
        let closer = server.closer().map_err(|source| AgentError::Io {
            what: "duplicating a vfio-user listening socket",
            source,
        })?;
        let ctx = dev.context();
        let mut conn = Connection::new(dev, ctx, ServerConfig::default());
        let (exit_tx, exited) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(format!("vfio-user {bdf}"))
            .spawn(move || {
                let _exit = exit_tx; // dropped when the thread ends
                if let Err(e) = server.serve_forever(&mut conn) {
                    tracing::error!(error = %e, "vfio-user server stopped");
                }
            })
            .map_err(|source| AgentError::Io {
                what: "starting a vfio-user server thread",
                source,
            })?;
        served.push(Served {
            bdf,
            path: path.clone(),
            id,
            withdraw,
            closer,
            exited,
            thread,
        });
        Ok(path)
    }

    /// Close the vfio-user connection of function `bdf`'s consumer (it sees a surprise
    /// removal); the socket stays for the next one. False when nobody was connected.
    pub fn withdraw_vfio_user(&self, bdf: Bdf) -> bool {
        let served = self.served.lock_or_recover();
        served
            .iter()
            .find(|s| s.bdf == bdf)
            .is_some_and(|s| s.withdraw.withdraw())
    }

    /// Let `gate` (the VM service) release a function before an orderly removal fences it
    /// and acknowledges (docs/host.md "Hot-plug"). Held weakly: the gate holds the agent.
    pub fn set_removal_gate(&self, gate: std::sync::Weak<dyn RemovalGate>) {
        *self.slots.gate.lock_or_recover() = Some(gate);
    }

    /// Orderly removals waiting for a consumer to let go: (slot, generation).
    pub fn pending_removals(&self) -> Vec<(u8, u16)> {
        let p = self.slots.pending.lock_or_recover();
        p.iter().map(|p| (p.slot, p.generation)).collect()
    }

    /// End every vfio-user server (threads joined, socket files removed): for a clean stop.
    pub fn close_vfio_user(&self) {
        let all: Vec<Bdf> = self
            .served
            .lock_or_recover()
            .iter()
            .map(|s| s.bdf)
            .collect();
        self.slots.close_sockets(&all);
    }

    /// Connect and enumerate within `timeout` (for the operator tools).
    pub fn connect(cfg: AgentConfig, timeout: Duration) -> Result<Agent, AgentError> {
        let a = Agent::start(cfg)?;
        let t0 = Instant::now();
        a.wait_scan(timeout)?;
        tracing::debug!(took = ?t0.elapsed(), "connected and enumerated");
        Ok(a)
    }
}
