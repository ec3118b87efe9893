//! A whole tunnel in one process, for `pcietun demo` and the benchmarks: an appliance
//! (endpoint proxy with an NVMe controller on a temporary file and a DMA engine) and a host
//! agent (`pcietun::host::Host`), each behind its own transport driver thread, joined by a
//! real link — UDP on loopback, AF_PACKET across two network namespaces, or the in-memory
//! port pair. Everything between them crosses as transport frames: the two sides share no
//! state but the link.
//!
//! Why not the `pcietun appliance` process and `host::agent::Agent`: the rig builds a fresh
//! pair per measured run on any link (including a socket inside each of two namespaces) with
//! the loss, AEAD and busy-poll knobs, and can be torn down between runs. Its host side has
//! the agent's thread shape (transport thread + pump into `Host::on_tlp`); its appliance side
//! receives and sends on one pump thread, one hand-off fewer than `pcietun appliance`, which
//! sends from a separate thread. The demo uses the real appliance process over UDP.

use super::super::pump::Pump;
use super::raw::{LinkKind, NetnsPair, Res};
use bytes::Bytes;
use crossbeam::channel::{self, Receiver};
use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::nvme::backend::Backend;
use pcietun::endpoint::nvme::{NvmeController, NvmeOptions};
use pcietun::endpoint::{Bdf as EpBdf, Endpoint, EndpointConfig};
use pcietun::host::enumerate::FunctionInfo;
use pcietun::host::{Downlink, Host, HostConfig, LinkError, RemoteFunction};
use pcietun::transport::driver::{
    mem, udp::UdpPort, Direct, DriverConfig, DriverStats, Port, SharedLink, Upcall,
};
use pcietun::transport::{ConnId, Event, HostId};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to build.
#[derive(Debug, Clone)]
pub struct RigConfig {
    /// Frame encryption (AEAD) on; off still authenticates every frame.
    pub encrypt: bool,
    /// Fraction of sent frames dropped on purpose, both ways.
    pub loss: f64,
    /// Spin instead of sleeping (transport threads and the rig's pumps).
    pub busy_poll: bool,
    /// NVMe namespace size in bytes (0: no NVMe controller).
    pub nvme_bytes: u64,
    /// DMA engine buffer size (0: no DMA engine).
    pub dma_buffer: usize,
}

/// The link the rig (and the raw baseline) runs on; owns the namespaces for `eth`.
#[derive(Debug)]
pub struct Net {
    kind: LinkKind,
    ns: Option<NetnsPair>,
}

impl Net {
    /// Prepare `kind` (for `eth`: two namespaces and a veth pair; needs root).
    pub fn create(kind: LinkKind) -> Res<Net> {
        let ns = match kind {
            LinkKind::Eth => Some(NetnsPair::create("r")?),
            _ => None,
        };
        Ok(Net { kind, ns })
    }

    /// Which link.
    pub fn kind(&self) -> LinkKind {
        self.kind
    }

    /// Two fresh ports: (host side, appliance side).
    pub fn ports(&self) -> Res<(Box<dyn Port>, Box<dyn Port>)> {
        Ok(match (self.kind, &self.ns) {
            (LinkKind::Udp, _) => (
                Box::new(UdpPort::bind("127.0.0.1:0".parse()?)?),
                Box::new(UdpPort::bind("127.0.0.1:0".parse()?)?),
            ),
            (LinkKind::Mem, _) => {
                let (a, b) = mem::pair();
                (Box::new(a), Box::new(b))
            }
            (LinkKind::Eth, Some(ns)) => (ns.open_eth(1)?, ns.open_eth(0)?),
            (LinkKind::Eth, None) => return Err("no namespaces for the eth link".into()),
        })
    }

    /// Human description of the path.
    pub fn describe(&self) -> String {
        match (&self.ns, self.kind) {
            (Some(ns), _) => format!(
                "raw Ethernet (AF_PACKET, EtherType 0x88B5) over veth {} <-> {} between namespaces {} and {}",
                ns.ifaces[1], ns.ifaces[0], ns.ns[1], ns.ns[0]
            ),
            (None, LinkKind::Udp) => "UDP on 127.0.0.1".into(),
            _ => "in-memory port pair".into(),
        }
    }
}

/// The host agent's downlink: the shared transport link toward the appliance, which a
/// waiting requester runs itself (as `pcietun::host::agent::Agent` does).
#[derive(Debug)]
struct TunnelLink {
    t: Arc<SharedLink>,
    conn: ConnId,
}

impl Downlink for TunnelLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.t
            .send(self.conn, Bytes::copy_from_slice(tlp))
            .map_err(|e| LinkError(e.to_string()))
    }

    fn drive(&self, done: &dyn Fn() -> bool, deadline: Instant) -> bool {
        self.t.drive(done, deadline)
    }
}

/// The host's downlink straight into the appliance pump (no transport): for the
/// `ours_no_transport` figure that isolates what the transport's threads cost.
#[derive(Debug)]
struct DirectLink(channel::Sender<Vec<u8>>);

impl Downlink for DirectLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.0
            .send(tlp.to_vec())
            .map_err(|_| LinkError("appliance gone".into()))
    }
}

/// A running appliance + host agent pair.
#[derive(Debug)]
pub struct Rig {
    /// The host agent's root complex.
    pub host: Arc<Host>,
    /// Functions enumerated below the root port.
    pub functions: Vec<FunctionInfo>,
    /// Host side and appliance side (empty for [`Rig::start_direct`]).
    /// Host side and appliance side counters, published by their pumps (empty for
    /// [`Rig::start_direct`]).
    link_stats: Vec<Arc<Mutex<DriverStats>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

fn wait_connected(d: &mut Direct) -> Res<ConnId> {
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        if let Some(Upcall::Event {
            conn,
            event: Event::Connected { .. },
        }) = d.poll(Some(Duration::from_millis(50)))?
        {
            return Ok(conn);
        }
    }
    Err("transport session between host and appliance not established within 5 s".into())
}

fn endpoint(cfg: &RigConfig) -> Res<(Endpoint, Receiver<Vec<u8>>, Option<tempfile::TempDir>)> {
    let (mut ep, outbound) = Endpoint::new(EndpointConfig::default());
    let mut tmp = None;
    // One card, functions 0 and 1 (below a root port only device 0 exists).
    let mut func = 0u8;
    if cfg.nvme_bytes > 0 {
        let dir = tempfile::tempdir()?;
        let backend = Backend::create(&dir.path().join("nvme0n1.img"), cfg.nvme_bytes)?;
        ep.add_function(
            EpBdf::new(0, 0, func),
            Box::new(NvmeController::new(backend, NvmeOptions::default())),
        )?;
        tmp = Some(dir);
        func += 1;
    }
    if cfg.dma_buffer > 0 {
        ep.add_function(
            EpBdf::new(0, 0, func),
            Box::new(DmaEngine::new(cfg.dma_buffer)),
        )?;
    }
    Ok((ep, outbound, tmp))
}

impl Rig {
    /// Host and endpoint joined by one pump thread and two channels, without the transport:
    /// the same TLP processing on both sides, two thread wake-ups per round trip (as a raw
    /// ping-pong has). Only for comparison — nothing crosses a socket.
    pub fn start_direct(cfg: &RigConfig) -> Res<Rig> {
        let (mut ep, outbound, tmp) = endpoint(cfg)?;
        let (tx, rx) = channel::unbounded::<Vec<u8>>();
        let host = Host::new(Arc::new(DirectLink(tx)), HostConfig::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (host.clone(), stop.clone());
        let pump = std::thread::Builder::new()
            .name("direct-pump".into())
            .spawn(move || {
                while !st.load(Ordering::Relaxed) {
                    channel::select! {
                        recv(rx) -> t => if let Ok(t) = t { let _ = ep.handle_tlp(&t); },
                        recv(outbound) -> t => if let Ok(t) = t { h.on_tlp(&t); },
                        default(Duration::from_millis(20)) => {}
                    }
                }
            })?;
        host.on_link_up();
        let mut rig = Rig {
            host,
            functions: Vec::new(),
            link_stats: Vec::new(),
            stop,
            threads: vec![pump],
            _tmp: tmp,
        };
        rig.functions = rig.host.rescan();
        Ok(rig)
    }

    /// Start the appliance and the host agent on `net`, connect them, enumerate.
    pub fn start(net: &Net, cfg: &RigConfig) -> Res<Rig> {
        let (ep, outbound, tmp) = endpoint(cfg)?;
        let (c_port, s_port) = net.ports()?;
        let (mut sc, mut cc) = DriverConfig::pair(HostId::new("demo-host")?, s_port.local_addr());
        for (c, seed) in [(&mut sc, 11), (&mut cc, 12)] {
            c.transport.encrypt = cfg.encrypt;
            c.inject_loss = cfg.loss;
            c.seed = seed;
            c.busy_poll = cfg.busy_poll;
            c.transport.mtu = 1472;
        }
        // The appliance as `pcietun appliance` runs it: the endpoint on the link's own thread.
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut pump = Pump::new(Direct::new(s_port, sc), &ep);
        let server_stats = pump.stats_handle();
        {
            let stop = stop.clone();
            let (mut ep, outbound) = (ep, outbound);
            threads.push(std::thread::Builder::new().name("appliance".into()).spawn(
                move || {
                    if let Err(e) = pump.run(&mut ep, &outbound, &stop) {
                        tracing::error!("appliance pump: {e}");
                    }
                },
            )?);
        }
        let mut client = Direct::new(c_port, cc);
        let conn = wait_connected(&mut client)?;
        let shared = Arc::new(SharedLink::new(client)?);
        let host = Host::new(
            Arc::new(TunnelLink {
                t: shared.clone(),
                conn,
            }),
            HostConfig::default(),
        );
        {
            let h = Arc::downgrade(&host);
            shared.set_dispatch(Box::new(move |u| {
                let Some(host) = h.upgrade() else { return };
                match u {
                    Upcall::Tlp { tlp, .. } => host.on_tlp(&tlp),
                    Upcall::Event {
                        event: Event::Connected { .. },
                        ..
                    } => host.on_link_up(),
                    Upcall::Event {
                        event: Event::Down { .. },
                        ..
                    } => host.on_link_down(),
                    Upcall::Dropped { tlp, .. } => host.on_dropped(&tlp),
                }
            }));
        }
        host.on_link_up();
        let client_stats = Arc::new(Mutex::new(DriverStats::default()));
        {
            let (shared, stats, stop) = (shared.clone(), client_stats.clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("host-agent".into())
                    .spawn(move || {
                        let publish = |d: &Direct| {
                            *stats.lock().unwrap_or_else(|e| e.into_inner()) = d.stats();
                        };
                        if let Err(e) = shared.run_watcher(&stop, publish) {
                            tracing::error!("host link: {e}");
                        }
                    })?,
            );
        }
        let mut rig = Rig {
            host,
            functions: Vec::new(),
            link_stats: vec![client_stats, server_stats],
            stop,
            threads,
            _tmp: tmp,
        };
        rig.functions = rig.host.rescan();
        let want = usize::from(cfg.nvme_bytes > 0) + usize::from(cfg.dma_buffer > 0);
        if rig.functions.len() != want {
            return Err(format!(
                "enumeration through the tunnel found {} functions, expected {want}",
                rig.functions.len()
            )
            .into());
        }
        Ok(rig)
    }

    /// Open the function whose class code starts with `class_prefix` (e.g. 0x0108 for NVMe).
    pub fn open(&self, class_prefix: u32) -> Res<RemoteFunction> {
        let info = self
            .functions
            .iter()
            .find(|f| f.class >> 8 == class_prefix)
            .ok_or_else(|| {
                format!("no function of class {class_prefix:04x} below the root port")
            })?;
        self.host
            .open(info.bdf)
            .ok_or_else(|| format!("function {} vanished", info.bdf).into())
    }

    /// Retransmissions both transport ends made so far.
    pub fn retransmits(&self) -> u64 {
        self.link_stats
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .flat_map(|s| s.sessions.into_iter().map(|x| x.1.retransmits))
            .sum()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
