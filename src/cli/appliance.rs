//! `pcietun appliance`: run the appliance — the cards it fronts (NVMe controllers, DMA engines)
//! behind one endpoint proxy, reachable over the tunnel's listen addresses.
//!
//! Configuration comes from `--config appliance.toml` (schema in docs/appliance.md) and/or
//! quick flags (`--device`, `--listen`, `--key`, `--host`). Everything is validated and every device is
//! built (backing files opened) before anything listens: a bad configuration is an error naming
//! the file, the line and what is wrong, and nothing starts half-configured.

use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use crossbeam::channel::Select;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::pump::{Pump, Serving};
use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::nvme::{Backend, NvmeController, NvmeOptions};
use pcietun::endpoint::replay::ReplayDevice;
use pcietun::endpoint::{Bdf, Device, Endpoint, EndpointConfig};
use pcietun::pci::replay::ReplaySizes;
use pcietun::transport::driver::{self, Direct, DriverConfig, Peers, TransportHandle};
use pcietun::transport::keys::{self, HostSpec};
use pcietun::transport::{ConnId, HostKey, SecretKey};

/// Arguments of `pcietun appliance`.
#[derive(Debug, clap::Args)]
pub struct ApplianceArgs {
    /// Configuration file (TOML, see docs/appliance.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address: udp:IP:PORT or eth:IFACE (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Device: nvme=PATH, dma, or replay=DUMP[,bar0=SIZE,...] (repeatable).
    #[arg(long, value_name = "SPEC")]
    device: Vec<String>,
    /// Our private key file (from `pcietun keygen`; else $PCIETUN_PRIVATE_KEY; else the
    /// development key, loopback only).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A host we accept: NAME=PUBLIC_KEY[,psk=FILE] (repeatable).
    #[arg(long, value_name = "NAME=PUBKEY")]
    host: Vec<String>,
    /// Drop this percentage of sent frames (testing).
    #[arg(long, value_name = "PCT")]
    inject_loss: Option<f64>,
    /// Validate the configuration, build the devices, print what would run, and exit.
    #[arg(long)]
    check: bool,
}

/// A configuration error, located.
#[derive(Debug, thiserror::Error)]
#[error("{origin}{}: {msg}", .line.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
pub struct ConfigError {
    origin: String,
    line: Option<(usize, usize)>,
    msg: String,
}

/// Where a listener binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    /// UDP/IP.
    Udp(std::net::SocketAddr),
    /// Raw Ethernet on an interface.
    Eth(String),
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Listen::Udp(a) => write!(f, "udp:{a}"),
            Listen::Eth(i) => write!(f, "eth:{i}"),
        }
    }
}

/// One device to build.
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceSpec {
    /// NVMe controller over a file or block device.
    Nvme {
        /// Backing path.
        path: PathBuf,
        /// Create the file with this size if it does not exist.
        create_size: Option<u64>,
        /// Serial number override.
        serial: Option<String>,
    },
    /// DMA engine test device.
    Dma {
        /// Buffer size.
        buffer: u64,
        /// SR-IOV virtual functions offered (0 = not an SR-IOV device).
        vfs: u16,
    },
    /// Replay of a real card's config space.
    Replay {
        /// `lspci -xxxx` dump.
        dump: PathBuf,
        /// BAR sizes by index.
        bars: Vec<(u8, u64)>,
    },
}

/// The resolved appliance configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct ApplianceConfig {
    /// Listen addresses.
    pub listen: Vec<Listen>,
    /// Devices, with their device/function numbers.
    pub devices: Vec<(Bdf, DeviceSpec)>,
    /// Our private key file (None: $PCIETUN_PRIVATE_KEY, else the development key).
    pub key_file: Option<PathBuf>,
    /// The hosts we accept, by public key.
    pub hosts: Vec<HostSpec>,
    /// Loss injection in percent.
    pub inject_loss: f64,
    /// Completion timeout for device DMA.
    pub dma_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    listen: Vec<Spanned<String>>,
    key_file: Option<String>,
    #[serde(default)]
    host: Vec<FileHost>,
    #[serde(default)]
    device: Vec<FileDevice>,
    #[serde(default)]
    options: Option<FileOptions>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHost {
    id: Spanned<String>,
    public_key: Spanned<String>,
    psk_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDevice {
    kind: Spanned<String>,
    path: Option<Spanned<String>>,
    size: Option<Spanned<String>>,
    serial: Option<String>,
    buffer: Option<Spanned<String>>,
    vfs: Option<Spanned<u16>>,
    dump: Option<Spanned<String>>,
    #[serde(default)]
    bars: std::collections::BTreeMap<String, Spanned<String>>,
    slot: Option<Spanned<u8>>,
    function: Option<Spanned<u8>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOptions {
    inject_loss: Option<Spanned<f64>>,
    dma_timeout_ms: Option<Spanned<u64>>,
}

fn line_col(text: &str, span: &Range<usize>) -> (usize, usize) {
    let upto = &text[..span.start.min(text.len())];
    let line = upto.matches('\n').count() + 1;
    let col = upto.len() - upto.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// Parse a size like `4096`, `64K`, `16M`, `2G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1u64 << 10),
        Some('M') => (&t[..t.len() - 1], 1 << 20),
        Some('G') => (&t[..t.len() - 1], 1 << 30),
        Some('T') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: u64 = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16).map_err(|_| format!("invalid size {s:?}"))?
    } else {
        num.parse().map_err(|_| format!("invalid size {s:?}"))?
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {s:?} overflows"))
}

/// Parse `udp:IP:PORT` or `eth:IFACE`.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if let Some(a) = s.strip_prefix("udp:") {
        a.parse()
            .map(Listen::Udp)
            .map_err(|_| format!("invalid UDP address {a:?} (want udp:IP:PORT)"))
    } else if let Some(i) = s.strip_prefix("eth:") {
        if i.is_empty() || i.len() > 15 || i.contains('/') {
            Err(format!("invalid interface name {i:?}"))
        } else {
            Ok(Listen::Eth(i.to_string()))
        }
    } else {
        Err(format!("listen address {s:?} must start with udp: or eth:"))
    }
}

/// Parse a `--device` flag value.
pub fn parse_device_flag(s: &str) -> Result<DeviceSpec, String> {
    let mut parts = s.split(',');
    let head = parts.next().unwrap_or("");
    let (kind, arg) = head.split_once('=').unwrap_or((head, ""));
    let rest: Vec<&str> = parts.collect();
    match kind {
        "nvme" => {
            if arg.is_empty() {
                return Err("nvme needs a backing path: nvme=PATH".into());
            }
            let mut create_size = None;
            for r in rest {
                match r.split_once('=') {
                    Some(("size", v)) => create_size = Some(parse_size(v)?),
                    _ => return Err(format!("unknown nvme option {r:?} (known: size=SIZE)")),
                }
            }
            Ok(DeviceSpec::Nvme {
                path: arg.into(),
                create_size,
                serial: None,
            })
        }
        "dma" => {
            let mut buffer = 1 << 20;
            let mut vfs = 0;
            for r in rest.iter().copied().chain((!arg.is_empty()).then_some(arg)) {
                match r.split_once('=') {
                    Some(("buffer", v)) => buffer = parse_size(v)?,
                    Some(("vfs", v)) => {
                        vfs = v
                            .parse()
                            .ok()
                            .filter(|n| *n <= 7)
                            .ok_or_else(|| format!("vfs={v:?}: want 0..=7"))?
                    }
                    _ => {
                        return Err(format!(
                            "unknown dma option {r:?} (known: buffer=SIZE, vfs=N)"
                        ))
                    }
                }
            }
            Ok(DeviceSpec::Dma { buffer, vfs })
        }
        "replay" => {
            if arg.is_empty() {
                return Err("replay needs a dump file: replay=DUMP[,bar0=SIZE,...]".into());
            }
            let mut bars = Vec::new();
            for r in rest {
                let (k, v) = r
                    .split_once('=')
                    .ok_or_else(|| format!("replay option {r:?} is not barN=SIZE"))?;
                let n: u8 = k
                    .strip_prefix("bar")
                    .and_then(|n| n.parse().ok())
                    .filter(|n| *n < 6)
                    .ok_or_else(|| format!("unknown replay option {k:?} (want bar0..bar5)"))?;
                bars.push((n, parse_size(v)?));
            }
            Ok(DeviceSpec::Replay {
                dump: arg.into(),
                bars,
            })
        }
        other => Err(format!(
            "unknown device kind {other:?} (known: nvme, dma, replay)"
        )),
    }
}

impl ApplianceConfig {
    /// Parse a TOML configuration; `origin` names the file in errors.
    pub fn from_toml(text: &str, origin: &str, base_dir: &Path) -> Result<Self, ConfigError> {
        let err = |span: Option<Range<usize>>, msg: String| ConfigError {
            origin: origin.to_string(),
            line: span.map(|s| line_col(text, &s)),
            msg,
        };
        let file: FileConfig =
            toml::from_str(text).map_err(|e| err(e.span(), e.message().to_string()))?;
        let mut cfg = ApplianceConfig {
            listen: Vec::new(),
            devices: Vec::new(),
            key_file: None,
            hosts: Vec::new(),
            inject_loss: 0.0,
            dma_timeout: Duration::from_secs(2),
        };
        for l in &file.listen {
            cfg.listen
                .push(parse_listen(l.get_ref()).map_err(|m| err(Some(l.span()), m))?);
        }
        let resolve = |p: &str| {
            let p = PathBuf::from(p);
            if p.is_relative() {
                base_dir.join(p)
            } else {
                p
            }
        };
        cfg.key_file = file.key_file.as_deref().map(resolve);
        for h in &file.host {
            let public_key = h
                .public_key
                .get_ref()
                .parse()
                .map_err(|e: keys::KeyError| err(Some(h.public_key.span()), e.to_string()))?;
            keys::HostId::new(h.id.get_ref()).map_err(|e| err(Some(h.id.span()), e.to_string()))?;
            cfg.hosts.push(HostSpec {
                id: h.id.get_ref().clone(),
                public_key,
                psk_file: h.psk_file.as_deref().map(resolve),
            });
        }
        for (i, d) in file.device.iter().enumerate() {
            let need = |f: &Option<Spanned<String>>, name: &str| -> Result<String, ConfigError> {
                f.as_ref().map(|s| s.get_ref().clone()).ok_or_else(|| {
                    err(
                        Some(d.kind.span()),
                        format!("device #{} ({}) needs `{name}`", i + 1, d.kind.get_ref()),
                    )
                })
            };
            let size_of =
                |f: &Spanned<String>| parse_size(f.get_ref()).map_err(|m| err(Some(f.span()), m));
            let spec = match d.kind.get_ref().as_str() {
                "nvme" => DeviceSpec::Nvme {
                    path: resolve(&need(&d.path, "path")?),
                    create_size: d.size.as_ref().map(size_of).transpose()?,
                    serial: d.serial.clone(),
                },
                "dma" => DeviceSpec::Dma {
                    buffer: d
                        .buffer
                        .as_ref()
                        .map(size_of)
                        .transpose()?
                        .unwrap_or(1 << 20),
                    vfs: match &d.vfs {
                        Some(v) if *v.get_ref() > 7 => {
                            return Err(err(Some(v.span()), "vfs must be 0..=7".into()))
                        }
                        Some(v) => *v.get_ref(),
                        None => 0,
                    },
                },
                "replay" => {
                    let mut bars = Vec::new();
                    for (k, v) in &d.bars {
                        let n: u8 = k
                            .strip_prefix("bar")
                            .unwrap_or(k)
                            .parse()
                            .ok()
                            .filter(|n| *n < 6)
                            .ok_or_else(|| {
                                err(
                                    Some(v.span()),
                                    format!("unknown BAR {k:?} (want bar0..bar5)"),
                                )
                            })?;
                        bars.push((n, size_of(v)?));
                    }
                    DeviceSpec::Replay {
                        dump: resolve(&need(&d.dump, "dump")?),
                        bars,
                    }
                }
                other => {
                    return Err(err(
                        Some(d.kind.span()),
                        format!("unknown device kind {other:?} (known: nvme, dma, replay)"),
                    ))
                }
            };
            let slot = d.slot.as_ref().map_or(Ok(i as u8), |s| {
                if *s.get_ref() < 32 {
                    Ok(*s.get_ref())
                } else {
                    Err(err(Some(s.span()), "slot must be 0..=31".into()))
                }
            })?;
            let func = d.function.as_ref().map_or(Ok(0), |s| {
                if *s.get_ref() < 8 {
                    Ok(*s.get_ref())
                } else {
                    Err(err(Some(s.span()), "function must be 0..=7".into()))
                }
            })?;
            let bdf = Bdf::new(0, slot, func);
            if cfg.devices.iter().any(|(b, _)| *b == bdf) {
                return Err(err(
                    Some(d.kind.span()),
                    format!(
                        "device #{} uses slot {slot} function {func}, already taken",
                        i + 1
                    ),
                ));
            }
            cfg.devices.push((bdf, spec));
        }
        if let Some(o) = &file.options {
            if let Some(l) = &o.inject_loss {
                if !(0.0..=100.0).contains(l.get_ref()) {
                    return Err(err(
                        Some(l.span()),
                        "inject_loss must be 0..=100 (percent)".into(),
                    ));
                }
                cfg.inject_loss = *l.get_ref();
            }
            if let Some(t) = &o.dma_timeout_ms {
                if *t.get_ref() == 0 {
                    return Err(err(
                        Some(t.span()),
                        "dma_timeout_ms must be positive".into(),
                    ));
                }
                cfg.dma_timeout = Duration::from_millis(*t.get_ref());
            }
        }
        Ok(cfg)
    }

    /// Apply command-line flags on top (devices and listeners are added; loss overrides).
    fn apply_flags(&mut self, args: &ApplianceArgs) -> Result<(), ConfigError> {
        let flag_err = |flag: &str, v: &str, msg: String| ConfigError {
            origin: format!("command line {flag} {v}"),
            line: None,
            msg,
        };
        for l in &args.listen {
            self.listen
                .push(parse_listen(l).map_err(|m| flag_err("--listen", l, m))?);
        }
        for d in &args.device {
            let spec = parse_device_flag(d).map_err(|m| flag_err("--device", d, m))?;
            let slot = (0..32u8)
                .find(|s| !self.devices.iter().any(|(b, _)| b.device() == *s))
                .ok_or_else(|| flag_err("--device", d, "all 32 slots are taken".into()))?;
            self.devices.push((Bdf::new(0, slot, 0), spec));
        }
        if let Some(k) = &args.key {
            self.key_file = Some(k.clone());
        }
        for h in &args.host {
            self.hosts
                .push(HostSpec::parse_flag(h).map_err(|e| flag_err("--host", h, e.to_string()))?);
        }
        if let Some(l) = args.inject_loss {
            if !(0.0..=100.0).contains(&l) {
                return Err(flag_err(
                    "--inject-loss",
                    &l.to_string(),
                    "must be 0..=100".into(),
                ));
            }
            self.inject_loss = l;
        }
        Ok(())
    }
}

/// Devices built and ready, plus what must live as long as they do.
struct Built {
    endpoint: Endpoint,
    outbound: crossbeam::channel::Receiver<Vec<u8>>,
    _temp: Option<tempfile::TempDir>,
}

fn build(cfg: &ApplianceConfig, temp: Option<tempfile::TempDir>) -> Result<Built, String> {
    let (mut endpoint, outbound) = Endpoint::new(EndpointConfig {
        dma_timeout: cfg.dma_timeout,
        ..EndpointConfig::default()
    });
    for (bdf, spec) in &cfg.devices {
        let dev: Box<dyn Device> = match spec {
            DeviceSpec::Nvme {
                path,
                create_size,
                serial,
            } => {
                let backend = match create_size {
                    Some(size) if !path.exists() => Backend::create(path, *size),
                    _ => Backend::open(path),
                }
                .map_err(|e| e.to_string())?;
                Box::new(NvmeController::new(
                    backend,
                    NvmeOptions {
                        serial: serial.clone(),
                        ..NvmeOptions::default()
                    },
                ))
            }
            DeviceSpec::Dma { buffer, vfs } => {
                if *buffer > 1 << 30 {
                    return Err(format!(
                        "DMA engine buffer of {buffer} bytes is over the 1 GiB limit"
                    ));
                }
                Box::new(DmaEngine::with_vfs(*buffer as usize, *vfs))
            }
            DeviceSpec::Replay { dump, bars } => {
                let mut sizes = ReplaySizes::default();
                for (i, size) in bars {
                    sizes.bars[usize::from(*i)] = Some(*size);
                }
                let dev = ReplayDevice::from_file(dump, &sizes).map_err(|e| e.to_string())?;
                for b in dev.bars().iter().filter(|b| b.inferred) {
                    eprintln!(
                        "pcietun appliance: warning: {}: BAR {} size not given, guessed {} bytes \
                         (give bar{}=SIZE)",
                        dump.display(),
                        b.index,
                        b.size,
                        b.index
                    );
                }
                Box::new(dev)
            }
        };
        endpoint
            .add_function(*bdf, dev)
            .map_err(|e| e.to_string())?;
    }
    Ok(Built {
        endpoint,
        outbound,
        _temp: temp,
    })
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
}

/// Resolve the configuration from flags and file (or the embedded default).
fn resolve(
    args: &ApplianceArgs,
) -> Result<(ApplianceConfig, Option<tempfile::TempDir>), Box<dyn std::error::Error>> {
    let mut cfg = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let base = path.parent().unwrap_or(Path::new("."));
            ApplianceConfig::from_toml(&text, &path.display().to_string(), base)?
        }
        None => ApplianceConfig {
            listen: Vec::new(),
            devices: Vec::new(),
            key_file: None,
            hosts: Vec::new(),
            inject_loss: 0.0,
            dma_timeout: Duration::from_secs(2),
        },
    };
    cfg.apply_flags(args)?;
    let mut temp = None;
    if cfg.devices.is_empty() {
        // Embedded default: one NVMe controller on a 64 MiB temporary (sparse) file.
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("nvme0.img");
        cfg.devices.push((
            Bdf::new(0, 0, 0),
            DeviceSpec::Nvme {
                path,
                create_size: Some(64 << 20),
                serial: None,
            },
        ));
        temp = Some(dir);
    }
    if cfg.listen.is_empty() {
        cfg.listen.push(Listen::Udp("127.0.0.1:7470".parse()?));
    }
    Ok((cfg, temp))
}

/// Run `pcietun appliance`.
pub fn run(args: ApplianceArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    super::init_logging();
    let (cfg, temp) = resolve(&args)?;
    let listen: Vec<String> = cfg.listen.iter().map(ToString::to_string).collect();
    let (key, hosts, development) = keys::appliance_identity(
        cfg.key_file.as_deref(),
        &cfg.hosts,
        listen.iter().map(String::as_str),
    )?;
    if development {
        eprintln!(
            "pcietun appliance: warning: no --key/--host given; using the built-in development \
             keys (loopback only) — the link is NOT secure"
        );
    }
    let built = build(&cfg, temp)?;
    let listen: Vec<String> = cfg.listen.iter().map(ToString::to_string).collect();
    let names = built.endpoint.function_names();
    let fns: Vec<String> = built
        .endpoint
        .functions()
        .iter()
        .zip(&names)
        .map(|(b, n)| format!("{:02x}.{} {n}", b.device(), b.function()))
        .collect();
    if args.check {
        println!(
            "appliance configuration ok: listen {}; {} function(s): {}",
            listen.join(" "),
            fns.len(),
            fns.join(", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    install_signal_handlers();
    serve(built, &cfg, &fns, key, hosts)
}

/// Serve the endpoint over the transport until SIGINT/SIGTERM.
fn announce(bound: &[String], fns: &[String]) -> std::io::Result<()> {
    println!(
        "appliance ready: listen {}; {} function(s): {}",
        bound.join(" "),
        fns.len(),
        fns.join(", ")
    );
    std::io::stdout().flush()
}

/// One link (the usual case): the endpoint runs on the thread that drives the link
/// ([`super::pump::Pump`]), so a request and its completion cross no thread in the appliance.
fn serve_direct(
    mut endpoint: pcietun::endpoint::Endpoint,
    outbound: crossbeam::channel::Receiver<Vec<u8>>,
    cfg: &ApplianceConfig,
    l: &Listen,
    key: SecretKey,
    hosts: Vec<HostKey>,
    fns: &[String],
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let port = driver::open(&l.to_string()).map_err(|e| format!("cannot listen on {l}: {e}"))?;
    let mut dc = DriverConfig::new(key, Peers::Accept(hosts));
    dc.inject_loss = cfg.inject_loss / 100.0;
    let d = Direct::new(port, dc);
    let bound = [d.local_addr().to_string()];
    let mut pump = Pump::new(d, &endpoint);
    announce(&bound, fns)?;
    let result = pump.run(&mut endpoint, &outbound, &STOP);
    // Orderly stop: devices first (their workers end), then the link.
    drop(endpoint);
    eprintln!("pcietun appliance: transport {}", pump.stats().summary());
    eprintln!("pcietun appliance: stopped");
    match result {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(format!("transport on {l}: {e}").into()),
    }
}

fn serve(
    built: Built,
    cfg: &ApplianceConfig,
    fns: &[String],
    key: SecretKey,
    hosts: Vec<HostKey>,
) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let Built {
        mut endpoint,
        outbound,
        _temp,
    } = built;
    if let [l] = cfg.listen.as_slice() {
        return serve_direct(endpoint, outbound, cfg, l, key, hosts, fns);
    }
    // Several links: a threaded driver per link, the endpoint on this thread, a sender thread.
    // Open every listener before announcing anything: all or nothing.
    let mut links = Vec::new();
    for l in &cfg.listen {
        let port =
            driver::open(&l.to_string()).map_err(|e| format!("cannot listen on {l}: {e}"))?;
        let mut dc = DriverConfig::new(key.clone(), Peers::Accept(hosts.clone()));
        dc.inject_loss = cfg.inject_loss / 100.0;
        links.push(TransportHandle::spawn(port, dc).map_err(|e| format!("{l}: {e}"))?);
    }
    let links = Arc::new(links);
    // The appliance answers the session that last sent it a TLP.
    let owner: Arc<Mutex<Option<(usize, ConnId)>>> = Arc::new(Mutex::new(None));
    let pump = {
        let links = links.clone();
        let owner = owner.clone();
        std::thread::Builder::new()
            .name("appliance-tx".into())
            .spawn(move || {
                for tlp in outbound {
                    let dst = *owner.lock().unwrap_or_else(|e| e.into_inner());
                    match dst {
                        Some((i, conn)) => {
                            if links[i].send(conn, Bytes::from(tlp)).is_err() {
                                break;
                            }
                        }
                        None => tracing::debug!("appliance: no host session; TLP dropped"),
                    }
                }
            })?
    };
    let bound: Vec<String> = links.iter().map(|l| l.local_addr().to_string()).collect();
    announce(&bound, fns)?;

    let mut serving = Serving::default();
    let mut result = Ok(ExitCode::SUCCESS);
    'serve: while !STOP.load(Ordering::SeqCst) {
        let mut sel = Select::new();
        for l in links.iter() {
            sel.recv(l.upcalls());
        }
        let Ok(op) = sel.select_timeout(Duration::from_millis(100)) else {
            continue;
        };
        let i = op.index();
        let up = match op.recv(links[i].upcalls()) {
            Ok(up) => up,
            Err(_) => {
                result = Err(format!("transport on {} stopped", cfg.listen[i]).into());
                break 'serve;
            }
        };
        let mut publish = |o: Option<(usize, ConnId)>| {
            *owner.lock().unwrap_or_else(|e| e.into_inner()) = o;
        };
        serving.on_upcall(&mut endpoint, (i, up.conn()), up, &mut publish);
    }
    // Orderly stop: devices first (their workers end), then the sender, then the links.
    drop(endpoint);
    let _ = pump.join();
    if let Ok(l) = Arc::try_unwrap(links) {
        for t in l {
            if let Ok(st) = t.stats() {
                eprintln!("pcietun appliance: transport {}", st.summary());
            }
            t.shutdown();
        }
    }
    eprintln!("pcietun appliance: stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_errors_name_file_line_and_problem() {
        let text = "listen = [\"udp:127.0.0.1:7470\"]\n\n[[device]]\nkind = \"nvme\"\n";
        let e = ApplianceConfig::from_toml(text, "a.toml", Path::new(".")).unwrap_err();
        assert_eq!(e.to_string(), "a.toml:4:8: device #1 (nvme) needs `path`");
        let text = "listen = [\"tcp:1.2.3.4:5\"]\n";
        let e = ApplianceConfig::from_toml(text, "a.toml", Path::new(".")).unwrap_err();
        assert!(
            e.to_string().starts_with("a.toml:1:11: listen address"),
            "{e}"
        );
        let text = "[[device]]\nkind = \"dma\"\nbufer = \"1M\"\n";
        let e = ApplianceConfig::from_toml(text, "b.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().starts_with("b.toml:3:1:"), "{e}");
        assert!(e.to_string().contains("bufer"), "{e}");
    }

    #[test]
    fn toml_full_schema() {
        let text = r#"
listen = ["udp:0.0.0.0:7470", "eth:eth1"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs="
psk_file = "/etc/pt/web1.psk"

[[device]]
kind = "nvme"
path = "disk.img"
size = "1G"
serial = "S1"

[[device]]
kind = "dma"
buffer = "4M"
slot = 5

[[device]]
kind = "replay"
dump = "/tmp/x.lspci"
bars = { bar0 = "16K", bar2 = "1M" }

[options]
inject_loss = 1.0
dma_timeout_ms = 500
"#;
        let c = ApplianceConfig::from_toml(text, "c.toml", Path::new("/etc/pt")).unwrap();
        assert_eq!(c.listen[1], Listen::Eth("eth1".into()));
        assert_eq!(
            c.key_file.as_deref(),
            Some(Path::new("/etc/pt/appliance.key"))
        );
        assert_eq!(c.hosts[0].id, "web1");
        assert_eq!(
            c.hosts[0].public_key.to_string(),
            "qbwNFB0vWMgKxHS4j6E5lhLrNI0ZMHsE1SaNjgLCZGs="
        );
        assert_eq!(
            c.hosts[0].psk_file.as_deref(),
            Some(Path::new("/etc/pt/web1.psk"))
        );
        let bad = "[[host]]\nid = \"a\"\npublic_key = \"nope\"\n";
        let e = ApplianceConfig::from_toml(bad, "k.toml", Path::new(".")).unwrap_err();
        assert!(e.to_string().starts_with("k.toml:3:14:"), "{e}");
        let old = "[[host]]\nid = \"a\"\npsk = \"00\"\n";
        assert!(ApplianceConfig::from_toml(old, "o.toml", Path::new(".")).is_err());
        assert_eq!(
            c.devices[0].1,
            DeviceSpec::Nvme {
                path: "/etc/pt/disk.img".into(),
                create_size: Some(1 << 30),
                serial: Some("S1".into())
            }
        );
        assert_eq!(c.devices[1].0, Bdf::new(0, 5, 0));
        assert_eq!(
            c.devices[2].1,
            DeviceSpec::Replay {
                dump: "/tmp/x.lspci".into(),
                bars: vec![(0, 16384), (2, 1 << 20)]
            }
        );
        assert_eq!(c.dma_timeout, Duration::from_millis(500));
    }

    #[test]
    fn device_flags() {
        assert_eq!(
            parse_device_flag("replay=card.txt,bar0=16K,bar2=0x100000").unwrap(),
            DeviceSpec::Replay {
                dump: "card.txt".into(),
                bars: vec![(0, 16384), (2, 1 << 20)]
            }
        );
        assert_eq!(
            parse_device_flag("dma").unwrap(),
            DeviceSpec::Dma {
                buffer: 1 << 20,
                vfs: 0
            }
        );
        assert_eq!(
            parse_device_flag("dma,vfs=3").unwrap(),
            DeviceSpec::Dma {
                buffer: 1 << 20,
                vfs: 3
            }
        );
        assert!(parse_device_flag("nvme").is_err());
        assert!(parse_device_flag("gpu=1").is_err());
        assert!(parse_device_flag("replay=x,bar7=1").is_err());
    }
}
