//! The host agent: a [`Host`] root complex on a transport session to one appliance, and the
//! vfio-user sockets of its functions (docs/host.md).
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

use super::root::{Downlink, Host, HostConfig, LinkError};
use super::vfio_user::{Connection, FunctionServer, ServerConfig, Withdraw};
use crate::tlp::Bdf;
use crate::transport::driver::{
    eth, udp, Direct, DriverConfig, DriverStats, Peers, SharedLink, Upcall,
};
use crate::transport::keys::KeyError;
use crate::transport::{ConnId, Event, HostId, PeerAddr, Psk, PublicKey, SecretKey};
use bytes::Bytes;

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

/// The blocking half of slot events, on the scanner thread.
fn slot_work(host: &Arc<Host>, served: &Mutex<Vec<Served>>) {
    use crate::tlp::slot::SlotEvent;
    while let Some(m) = host.take_slot_work() {
        match m.event {
            SlotEvent::Present => {
                let found = host.present_slot(m.slot);
                tracing::info!(slot = m.slot, functions = found.len(), "card presented");
            }
            SlotEvent::RemovalRequest => {
                let gone = host.withdraw_slot(m.slot);
                // Withdraw the consumers: the socket path disappears (no new connection),
                // connected consumers see every access fail (the function is marked removed).
                served.lock_or_recover().retain(|sv| {
                    if gone.contains(&sv.bdf) {
                        sv.withdraw.withdraw();
                        let _ = std::fs::remove_file(&sv.path);
                        false
                    } else {
                        true
                    }
                });
                if let Err(e) = host.ack_removal(m.slot, m.generation) {
                    tracing::warn!(slot = m.slot, error = %e, "removal acknowledgement not sent");
                }
            }
            SlotEvent::Removed => {
                // Surprise removal: the host already failed the card's requests; its sockets go.
                served.lock_or_recover().retain(|sv| {
                    if sv.bdf.device() == m.slot {
                        sv.withdraw.withdraw();
                        let _ = std::fs::remove_file(&sv.path);
                        false
                    } else {
                        true
                    }
                });
            }
            SlotEvent::RemovalAck => {}
        }
    }
}

/// [`Downlink`] over the transport session.
#[derive(Debug)]
struct SessionLink {
    handle: Arc<SharedLink>,
    conn: Mutex<Option<ConnId>>,
}

impl Downlink for SessionLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        let conn = self.conn.lock_or_recover().ok_or(LinkError::NoSession)?;
        self.handle
            .send(conn, Bytes::copy_from_slice(tlp))
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
    withdraw: Withdraw,
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
    pump: Mutex<Option<JoinHandle<()>>>,
    _scanner: JoinHandle<()>,
}

impl Agent {
    /// Open the transport toward the appliance and start the pump and scanner threads.
    pub fn start(cfg: AgentConfig) -> Result<Agent, AgentError> {
        let io = |what: &'static str| move |source| AgentError::Io { what, source };
        let host_id = HostId::new(&cfg.host_id).map_err(AgentError::Identity)?;
        let development = cfg.key.is_none() || cfg.appliance_key.is_none();
        if development {
            let target = match &cfg.target {
                Target::Udp(a) => format!("udp:{a}"),
                Target::Eth(spec) => spec.clone(),
            };
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
        });
        let stats = Arc::new(Mutex::new(DriverStats::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let host = Host::new(link.clone(), host_cfg);
        let (scan_tx, scan_rx) = mpsc::channel::<ScanJob>();
        let (done_tx, done_rx) = mpsc::channel::<Vec<Bdf>>();
        let served: Arc<Mutex<Vec<Served>>> = Arc::default();
        let scanner = {
            let host = host.clone();
            let served = served.clone();
            std::thread::Builder::new()
                .name("host-scan".into())
                .spawn(move || {
                    while let Ok(job) = scan_rx.recv() {
                        match job {
                            ScanJob::Full => {
                                let found = host.rescan();
                                let _ = done_tx.send(found.iter().map(|f| f.bdf).collect());
                            }
                            ScanJob::Slots => slot_work(&host, &served),
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
            pump: Mutex::new(Some(pump)),
            _scanner: scanner,
        })
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
        self.stop.store(true, Ordering::Relaxed);
        let pump = self.pump.lock_or_recover().take();
        if let Some(p) = pump {
            let _ = p.join();
        }
        self.transport_stats()
    }

    /// Transport counters (for operators), at most 100 ms old.
    pub fn transport_stats(&self) -> DriverStats {
        self.stats.lock_or_recover().clone()
    }

    /// Create `DIR/<bb>:<dd>.<f>.sock` for every function not served yet and serve each on its
    /// own thread. Returns the new socket paths (they accept connections on return).
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

    /// Serve function `bdf` at `DIR/<bb>:<dd>.<f>.sock` (on its own thread) unless it is served
    /// already; the socket path.
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
        let path = dir.join(format!("{bdf}.sock"));
        let server = FunctionServer::bind(&path)?;
        let withdraw = server.withdrawer();
        let ctx = dev.context();
        let mut conn = Connection::new(dev, ctx, ServerConfig::default());
        std::thread::Builder::new()
            .name(format!("vfio-user {bdf}"))
            .spawn(move || {
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
            withdraw,
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

    /// Connect and enumerate within `timeout` (for the operator tools).
    pub fn connect(cfg: AgentConfig, timeout: Duration) -> Result<Agent, AgentError> {
        let a = Agent::start(cfg)?;
        let t0 = Instant::now();
        a.wait_scan(timeout)?;
        tracing::debug!(took = ?t0.elapsed(), "connected and enumerated");
        Ok(a)
    }
}
