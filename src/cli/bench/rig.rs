//! A whole tunnel in one process, for `pcietun demo` and the benchmarks: the real appliance
//! (`pcietun::appliance::Appliance`: an NVMe controller on a temporary file and a DMA engine,
//! one card with two functions) and a host root complex (`pcietun::host::Host`) on the host
//! agent's link shape, joined by a real link — UDP on loopback, AF_PACKET across two network
//! namespaces, or the in-memory port pair. Everything between them crosses as transport
//! frames: the two sides share no state but the link.
//!
//! The appliance is the library's, started on a port the rig opens (a socket inside a
//! namespace, a memory port), so it runs exactly as `pcietun appliance` does with one listen
//! address: the endpoint on the thread that drives the link. The host side is the host agent
//! (`host::agent::Agent::start_on`) on the rig's other port, with the rig's loss, AEAD, MTU
//! and busy-poll settings. The demo runs the appliance as a child process over UDP.

use super::error::BenchError;
use super::raw::{LinkKind, NetnsPair, Res};
use crossbeam::channel;
use pcietun::appliance::config::{DeviceConfig, DeviceSpec, HostSpec, LinkOptions};
use pcietun::appliance::devices::{self, Scratch};
use pcietun::appliance::{Appliance, ApplianceConfig, Running};
use pcietun::endpoint::loopback::serve_channels;
use pcietun::endpoint::Bdf;
use pcietun::host::agent::Agent;
use pcietun::host::enumerate::FunctionInfo;
use pcietun::host::{ChannelDownlink, Host, HostConfig, RemoteFunction};
use pcietun::transport::driver::{mem, udp::UdpPort, DriverConfig, Peers, Port};
use pcietun::transport::{HostId, SecretKey};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

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
    /// DMA engines (each with `dma_buffer`), as further functions of the card: 1 unless a
    /// scenario needs several (`bench policy`'s priority phase).
    pub dma_engines: u8,
    /// Frame size both ends offer; the host lowers it to what the path carries and the
    /// handshake agrees on the smaller end's.
    pub mtu: usize,
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

    /// Two fresh ports as the transport uses them: (host side, appliance side).
    pub fn ports(&self) -> Res<(Box<dyn Port>, Box<dyn Port>)> {
        self.ports_with(true)
    }

    /// The frame size ours uses here when both ends offer `mtu`: what the port and the
    /// path carry.
    pub fn frame(&self, mtu: usize) -> Res<usize> {
        let (c, s) = self.ports()?;
        let path = c.path_mtu(s.local_addr()).unwrap_or(usize::MAX);
        Ok(mtu.min(c.mtu()).min(s.mtu()).min(path))
    }

    /// Two fresh ports; `offload`: UDP with GSO/GRO where the kernel has them, else plain
    /// sockets (one datagram per call).
    pub fn ports_with(&self, offload: bool) -> Res<(Box<dyn Port>, Box<dyn Port>)> {
        let udp = || -> Res<Box<dyn Port>> {
            let a = "127.0.0.1:0".parse()?;
            Ok(Box::new(if offload {
                UdpPort::bind(a)?
            } else {
                UdpPort::bind_plain(a)?
            }))
        };
        Ok(match (self.kind, &self.ns) {
            (LinkKind::Udp, _) => (udp()?, udp()?),
            (LinkKind::Mem, _) => {
                let (a, b) = mem::pair();
                (Box::new(a), Box::new(b))
            }
            (LinkKind::Eth, Some(ns)) => (ns.open_eth(1)?, ns.open_eth(0)?),
            (LinkKind::Eth, None) => return Err(BenchError::NoEthLink("network namespaces").into()),
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

/// A running appliance + host agent pair.
#[derive(Debug)]
pub struct Rig {
    /// The host agent's root complex.
    pub host: Arc<Host>,
    /// Functions enumerated below the root port.
    pub functions: Vec<FunctionInfo>,
    /// The host agent on the rig's link (`None` for [`Rig::start_direct`]).
    agent: Option<Agent>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// The appliance (`None` for [`Rig::start_direct`]).
    appliance: Option<Running>,
    _scratch: Option<Scratch>,
}

/// The appliance's configuration: one card with an NVMe controller and/or a DMA engine as
/// functions 0 and 1 (below a root port only device 0 exists), one host.
fn appliance_config(cfg: &RigConfig, key_file: Option<PathBuf>, host: HostSpec) -> ApplianceConfig {
    let mut specs = Vec::new();
    if cfg.nvme_bytes > 0 {
        specs.push(DeviceSpec::ScratchNvme {
            size: cfg.nvme_bytes,
        });
    }
    if cfg.dma_buffer > 0 {
        for _ in 0..cfg.dma_engines.max(1) {
            specs.push(DeviceSpec::Dma {
                buffer: cfg.dma_buffer as u64,
                vfs: 0,
            });
        }
    }
    ApplianceConfig {
        devices: specs
            .into_iter()
            .zip(0u8..)
            .map(|(spec, f)| DeviceConfig {
                bdf: Bdf::new(0, 0, f),
                name: None,
                spec,
            })
            .collect(),
        key_file,
        hosts: vec![host],
        inject_loss: cfg.loss * 100.0,
        link: LinkOptions {
            encrypt: cfg.encrypt,
            mtu: Some(cfg.mtu),
            seed: 11,
            busy_poll: cfg.busy_poll,
        },
        ..ApplianceConfig::default()
    }
}

impl Rig {
    /// Host and endpoint joined by one pump thread and two channels, without the transport:
    /// the same TLP processing on both sides, two thread wake-ups per round trip (as a raw
    /// ping-pong has). Only for comparison — nothing crosses a socket, and no session exists,
    /// so the appliance's devices are built but not served by its runtime.
    pub fn start_direct(cfg: &RigConfig) -> Res<Rig> {
        // No session, so no keys are read: any public key names the host.
        let host = HostSpec {
            id: HostId::new("demo-host")?,
            public_key: SecretKey::generate().public_key(),
            psk_file: None,
        };
        let acfg = appliance_config(cfg, None, host);
        let (mut ep, outbound, scratch) = devices::build(&acfg)?.into_parts();
        let (tx, rx) = channel::unbounded::<Vec<u8>>();
        let host = Host::new(Arc::new(ChannelDownlink(tx)), HostConfig::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (h, st) = (host.clone(), stop.clone());
        let pump = std::thread::Builder::new()
            .name("direct-pump".into())
            .spawn(move || {
                let tick = Duration::from_millis(20);
                serve_channels(&mut ep, &rx, &outbound, |t| h.on_tlp(t), &st, tick);
            })?;
        host.on_link_up();
        let mut rig = Rig {
            host,
            functions: Vec::new(),
            agent: None,
            stop,
            threads: vec![pump],
            appliance: None,
            _scratch: Some(scratch),
        };
        rig.functions = rig.host.rescan();
        Ok(rig)
    }

    /// Start the appliance and the host agent on `net`, connect them, enumerate.
    pub fn start(net: &Net, cfg: &RigConfig) -> Res<Rig> {
        let (c_port, s_port) = net.ports()?;
        let host_id = HostId::new("demo-host")?;
        // Fresh static keys for both ends: the appliance reads its own from a file, as
        // `pcietun appliance --key` does, and accepts the host's public key.
        let keys = tempfile::tempdir()?;
        let key_file = keys.path().join("appliance.key");
        let appliance_key = SecretKey::generate();
        appliance_key.write_new(&key_file)?;
        let host_key = SecretKey::generate();
        let host_spec = HostSpec {
            id: host_id,
            public_key: host_key.public_key(),
            psk_file: None,
        };
        // The appliance as `pcietun appliance` runs it, on the rig's port.
        let server = s_port.local_addr();
        let appliance = Appliance::build(appliance_config(cfg, Some(key_file), host_spec))?
            .start_on(vec![s_port])?;
        drop(keys);
        let mut cc = DriverConfig::new(
            host_key,
            Peers::Connect {
                server,
                host: host_id,
                server_key: appliance_key.public_key(),
                psk: None,
            },
        );
        cc.transport.encrypt = cfg.encrypt;
        cc.inject_loss = cfg.loss;
        cc.seed = 12;
        cc.busy_poll = cfg.busy_poll;
        cc.transport.mtu = cfg.mtu;
        // The host agent on the rig's port: it connects, then enumerates.
        let agent = Agent::start_on(c_port, cc, HostConfig::default())?;
        agent
            .wait_scan(Duration::from_secs(5))
            .map_err(|_| BenchError::NoSession("transport session between host and appliance"))?;
        let mut rig = Rig {
            host: agent.host().clone(),
            functions: Vec::new(),
            agent: Some(agent),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
            appliance: Some(appliance),
            _scratch: None,
        };
        rig.functions = rig.host.functions();
        let want = usize::from(cfg.nvme_bytes > 0)
            + usize::from(cfg.dma_buffer > 0) * usize::from(cfg.dma_engines.max(1));
        if rig.functions.len() != want {
            return Err(BenchError::Enumeration {
                found: rig.functions.len(),
                want,
            }
            .into());
        }
        Ok(rig)
    }

    /// The appliance's control handle (`None` for [`Rig::start_direct`]).
    pub fn control(&self) -> Option<pcietun::appliance::Control> {
        self.appliance.as_ref().map(Running::control)
    }

    /// Open the function whose class code starts with `class_prefix` (e.g. 0x0108 for NVMe).
    pub fn open(&self, class_prefix: u32) -> Res<RemoteFunction> {
        self.open_nth(class_prefix, 0)
    }

    /// Open the `n`th function (from 0, in enumeration order) whose class code starts with
    /// `class_prefix`.
    pub fn open_nth(&self, class_prefix: u32, n: usize) -> Res<RemoteFunction> {
        let info = self
            .functions
            .iter()
            .filter(|f| f.class >> 8 == class_prefix)
            .nth(n)
            .ok_or_else(|| {
                format!("no function of class {class_prefix:04x} below the root port")
            })?;
        self.host
            .open(info.bdf)
            .ok_or_else(|| BenchError::Vanished(info.bdf).into())
    }

    /// Retransmissions both transport ends made so far.
    pub fn retransmits(&self) -> u64 {
        let host = self.agent.iter().map(Agent::transport_stats);
        let appliance = self.appliance.iter().flat_map(|a| a.stats().links);
        host.chain(appliance)
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
        if let Some(a) = self.agent.take() {
            a.stop();
        }
        if let Some(a) = self.appliance.take() {
            if let Err(e) = a.shutdown() {
                tracing::warn!("rig: {e}");
            }
        }
    }
}
