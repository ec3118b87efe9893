//! `pcietun host`: the host agent (root complex toward one appliance, vfio-user sockets for
//! the tunnelled functions) and its operator tools `host lspci [-x|-xxx|-xxxx]` and
//! `host read|write BDF BAR OFFSET [VALUE]` (docs/host.md).
//!
//! The operator tools open their own short session to the appliance, enumerate and act; they
//! do not talk to a running agent.
//!
//! VMs (docs/vms.md): `--vm NAME=QMP[,function=SEL]` / `--config FILE` (`[[vm]]`) make the
//! agent hot-add its functions to running QEMU VMs; `host qemu-args` prints the QEMU options
//! such a VM needs; `host vm --control PATH attach|detach|list` talks to a running agent's
//! VM control socket (`--vm-control PATH`).

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pcietun::host::agent::{Agent, AgentConfig};
use pcietun::host::requester::RequestError;
use pcietun::host::vm::qemu::{self, HotplugMode, QemuArgs};
use pcietun::host::vm::{
    AgentSockets, FunctionSockets, VmAttacher, VmEvent, VmFileConfig, VmService, VmSpec,
};
use pcietun::host::{HostConfig, HostEvent};
use pcietun::pci::lspci;
use pcietun::tlp::Bdf;
use pcietun::transport::keys::KeyError;
use pcietun::transport::{keys, Psk, PublicKey};

/// Arguments of `pcietun host`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct HostArgs {
    #[command(subcommand)]
    cmd: Option<Box<HostCmd>>,
    /// The appliance: udp:IP:PORT or eth:IFACE[,peer=MAC].
    #[arg(
        long,
        global = true,
        value_name = "ADDR",
        default_value = "udp:127.0.0.1:7470"
    )]
    connect: String,
    /// Our name in logs and events (the appliance knows us by our public key).
    #[arg(long, global = true, value_name = "NAME", default_value = "host")]
    host_id: String,
    /// Our private key file (from `pcietun keygen`; else $PCIETUN_PRIVATE_KEY). Without
    /// either, and without --peer-key: the built-in development keys, loopback only.
    #[arg(long, global = true, value_name = "FILE")]
    key: Option<PathBuf>,
    /// The appliance's public key (base64, from `pcietun pubkey` on the appliance).
    #[arg(long, global = true, value_name = "PUBKEY")]
    peer_key: Option<String>,
    /// Optional pre-shared key file (the appliance lists the same file for us).
    #[arg(long, global = true, value_name = "FILE")]
    psk_file: Option<PathBuf>,
    /// Create one vfio-user socket per tunnelled function in DIR (DIR/bb:dd.f.sock).
    #[arg(long, value_name = "DIR")]
    vfio_user: Option<PathBuf>,
    /// Drop this percentage of sent frames (testing the 1 %-loss runs).
    #[arg(long, global = true, value_name = "PCT")]
    inject_loss: Option<f64>,
    /// Completion timeout of every request to the card, in milliseconds.
    #[arg(long, global = true, value_name = "MS", default_value_t = 1000)]
    completion_timeout_ms: u64,
    /// How long to wait for the session and the first enumeration, in seconds.
    #[arg(long, global = true, value_name = "S", default_value_t = 10)]
    connect_timeout: u64,
    #[command(flatten)]
    log: super::log::LogArgs,
    /// Hot-add the functions to this running QEMU VM: NAME=QMP_SOCKET[,function=BDF|ID|next]
    /// (repeatable; without function=, the VM takes every function no other VM names).
    #[arg(long = "vm", value_name = "NAME=QMP")]
    vms: Vec<String>,
    /// Agent configuration file (TOML) with `[[vm]]` entries (docs/vms.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long a guest may take to release a function after device_del before the agent
    /// withdraws it (surprise removal), in milliseconds.
    #[arg(long, value_name = "MS")]
    vm_grace_ms: Option<u64>,
    /// Serve the VM control socket here (`pcietun host vm --control PATH ...`).
    #[arg(long, value_name = "PATH")]
    vm_control: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum HostCmd {
    /// Print the QEMU options a VM needs to take tunnelled functions at run time (QEMU >= 10.1).
    QemuArgs {
        /// Free hot-plug root ports.
        #[arg(long, default_value_t = 4)]
        ports: u8,
        /// Guest memory (shared memfd backend), e.g. 1G.
        #[arg(long, value_name = "SIZE", default_value = "1G")]
        memory: String,
        /// The VM's QMP socket (the path to give the agent's --vm).
        #[arg(long, value_name = "PATH", default_value = "/run/pcietun/vm.qmp")]
        qmp: PathBuf,
        /// Hot-plug signalling: native (PCIe, pciehp) or acpi (q35's default).
        #[arg(long, value_name = "MODE", default_value = "native")]
        hotplug: String,
        /// 32-bit memory window reserved per port.
        #[arg(long, value_name = "SIZE", default_value = "64M")]
        mem_reserve: String,
        /// 64-bit prefetchable window reserved per port.
        #[arg(long, value_name = "SIZE", default_value = "256M")]
        pref64_reserve: String,
        /// I/O window reserved per port (for cards with I/O BARs; I/O space is scarce).
        #[arg(long, value_name = "SIZE", default_value = "0")]
        io_reserve: String,
        /// Print JSON: {"min_qemu", "args", "ports", "qmp", ...}.
        #[arg(long)]
        json: bool,
    },
    /// Talk to a running agent's VM control socket: attach BDF [VM] | detach BDF | list.
    Vm {
        /// The agent's --vm-control socket.
        #[arg(long, value_name = "PATH")]
        control: PathBuf,
        /// The request, e.g. `attach 01:00.0`.
        #[arg(required = true, num_args = 1..)]
        request: Vec<String>,
    },
    /// List the tunnelled functions like lspci; -x: 64 bytes, -xxx: 256, -xxxx: 4096 of config
    /// space, in the format `lspci -F FILE` reads.
    Lspci {
        /// Hex dump of config space (repeat: -x, -xxx, -xxxx).
        #[arg(short = 'x', action = clap::ArgAction::Count)]
        x: u8,
    },
    /// Read a BAR register: BDF BAR OFFSET (offset hex with 0x, or decimal).
    Read {
        /// Function, e.g. 01:00.0.
        bdf: String,
        /// BAR index 0-5.
        bar: usize,
        /// Byte offset in the BAR.
        offset: String,
        /// Access width in bytes: 1, 2, 4 or 8.
        #[arg(long, default_value_t = 4)]
        width: usize,
    },
    /// Write a BAR register: BDF BAR OFFSET VALUE.
    Write {
        /// Function, e.g. 01:00.0.
        bdf: String,
        /// BAR index 0-5.
        bar: usize,
        /// Byte offset in the BAR.
        offset: String,
        /// Value (hex with 0x, or decimal).
        value: String,
        /// Access width in bytes: 1, 2, 4 or 8.
        #[arg(long, default_value_t = 4)]
        width: usize,
    },
}

type Error = Box<dyn std::error::Error>;

/// What an operator asked for that the host tools cannot do.
#[derive(Debug, thiserror::Error)]
enum HostCliError {
    /// An offset or value that is not a number.
    #[error("{0:?} is not a number (use 0x for hex)")]
    NotANumber(String),
    /// `--peer-key` is not a public key.
    #[error("--peer-key: {0}")]
    PeerKey(#[source] KeyError),
    /// `--inject-loss` outside 0..=100.
    #[error("--inject-loss {0} must be 0..=100")]
    Loss(f64),
    /// `--width` other than 1, 2, 4 or 8.
    #[error("--width {0}: use 1, 2, 4 or 8")]
    Width(usize),
    /// A value wider than `--width`.
    #[error("{value} does not fit in {width} bytes")]
    TooWide {
        /// The value as given.
        value: String,
        /// The access width.
        width: usize,
    },
    /// Not a bus:device.function.
    #[error("{0:?} is not a bus:device.function like 01:00.0")]
    NotBdf(String),
    /// Nothing tunnelled at that address.
    #[error("no tunnelled function at {0}")]
    NoFunction(Bdf),
    /// The BAR access failed.
    #[error("{op} {bdf} BAR{bar}+{offset}: {source}")]
    Access {
        /// `read`, `write`, or `write … not confirmed`.
        op: &'static str,
        /// The function.
        bdf: Bdf,
        /// The BAR.
        bar: usize,
        /// The offset as given.
        offset: String,
        /// Why.
        #[source]
        source: RequestError,
    },
}

fn number(s: &str) -> Result<u64, HostCliError> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| HostCliError::NotANumber(s.to_string()))
}

fn agent_config(a: &HostArgs) -> Result<AgentConfig, Error> {
    let key = keys::load_secret(a.key.as_deref())?;
    let appliance_key: Option<PublicKey> = a
        .peer_key
        .as_deref()
        .map(|k| k.parse().map_err(HostCliError::PeerKey))
        .transpose()?;
    let psk = a.psk_file.as_deref().map(Psk::from_file).transpose()?;
    if key.is_none() || appliance_key.is_none() {
        eprintln!(
            "pcietun host: warning: no --key/--peer-key given; using the built-in development \
             keys (loopback only) — the link is NOT secure"
        );
    }
    let loss = a.inject_loss.unwrap_or(0.0);
    if !(0.0..=100.0).contains(&loss) {
        return Err(HostCliError::Loss(loss).into());
    }
    Ok(AgentConfig {
        target: a.connect.parse()?,
        host_id: a.host_id.clone(),
        key,
        appliance_key,
        psk,
        inject_loss: loss / 100.0,
        host: HostConfig {
            completion_timeout: Duration::from_millis(a.completion_timeout_ms.max(1)),
            ..HostConfig::default()
        },
    })
}

static STOP: AtomicBool = AtomicBool::new(false);

fn install_signal_handlers() {
    if let Err(e) = pcietun::sys::process::on_terminate(&STOP) {
        tracing::warn!(error = %e, "cannot install the SIGINT/SIGTERM handlers");
    }
}

/// Run `pcietun host …`.
pub fn run(args: HostArgs) -> Result<ExitCode, Error> {
    super::log::init(&args.log);
    match args.cmd.as_deref() {
        Some(HostCmd::QemuArgs {
            ports,
            memory,
            qmp,
            hotplug,
            mem_reserve,
            pref64_reserve,
            io_reserve,
            json,
        }) => {
            let q = QemuArgs {
                ports: *ports,
                memory: qemu::parse_size(memory)?,
                qmp: qmp.clone(),
                hotplug: hotplug.parse::<HotplugMode>()?,
                mem_reserve: qemu::parse_size(mem_reserve)?,
                pref64_reserve: qemu::parse_size(pref64_reserve)?,
                io_reserve: qemu::parse_size(io_reserve)?,
                ..QemuArgs::default()
            };
            q.validate()?;
            if *json {
                println!("{}", q.to_json());
            } else {
                println!(
                    "# QEMU >= {} (the first with vfio-user-pci); add your own disk, network, kernel:",
                    qemu::MIN_QEMU
                );
                println!("{}", q.shell_line());
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(HostCmd::Vm { control, request }) => return vm_request(control, &request.join(" ")),
        _ => {}
    }
    let cfg = agent_config(&args)?;
    let timeout = Duration::from_secs(args.connect_timeout);
    match args.cmd.as_deref() {
        Some(HostCmd::QemuArgs { .. } | HostCmd::Vm { .. }) => unreachable!("handled above"),
        None => run_agent(cfg, timeout, &args),
        Some(HostCmd::Lspci { x }) => {
            let agent = Agent::connect(cfg, timeout)?;
            print!("{}", lspci_text(&agent, *x));
            Ok(ExitCode::SUCCESS)
        }
        Some(HostCmd::Read {
            bdf,
            bar,
            offset,
            width,
        }) => {
            let agent = Agent::connect(cfg, timeout)?;
            let f = open(&agent, bdf)?;
            let mut b = vec![0u8; check_width(*width)?];
            f.bar_read(*bar, number(offset)?, &mut b)
                .map_err(|source| HostCliError::Access {
                    op: "read",
                    bdf: f.bdf(),
                    bar: *bar,
                    offset: offset.clone(),
                    source,
                })?;
            let mut v = [0u8; 8];
            v[..b.len()].copy_from_slice(&b);
            println!("{:#0w$x}", u64::from_le_bytes(v), w = 2 + 2 * b.len());
            Ok(ExitCode::SUCCESS)
        }
        Some(HostCmd::Write {
            bdf,
            bar,
            offset,
            value,
            width,
        }) => {
            let agent = Agent::connect(cfg, timeout)?;
            let f = open(&agent, bdf)?;
            let w = check_width(*width)?;
            let v = number(value)?;
            if w < 8 && v >> (8 * w) != 0 {
                return Err(HostCliError::TooWide {
                    value: value.clone(),
                    width: w,
                }
                .into());
            }
            let access = |op, source| HostCliError::Access {
                op,
                bdf: f.bdf(),
                bar: *bar,
                offset: offset.clone(),
                source,
            };
            f.bar_write(*bar, number(offset)?, &v.to_le_bytes()[..w])
                .map_err(|e| access("write", e))?;
            // A read behind the posted write on the same link: it has arrived when this returns.
            f.config_read(0)
                .map_err(|e| access("write (not confirmed)", e))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_width(w: usize) -> Result<usize, HostCliError> {
    match w {
        1 | 2 | 4 | 8 => Ok(w),
        _ => Err(HostCliError::Width(w)),
    }
}

fn open(agent: &Agent, bdf: &str) -> Result<pcietun::host::RemoteFunction, Error> {
    let b: Bdf = bdf
        .parse()
        .map_err(|_| HostCliError::NotBdf(bdf.to_string()))?;
    agent
        .host()
        .open(b)
        .ok_or_else(|| HostCliError::NoFunction(b).into())
}

/// The lspci listing (root port first, then the functions below it).
pub fn lspci_text(agent: &Agent, x: u8) -> String {
    let len = match x {
        0 => 0,
        1 | 2 => 64,
        3 => 256,
        _ => 4096,
    };
    let host = agent.host();
    let mut out = String::new();
    let mut emit = |bus: u8, dev: u8, func: u8, config: &[u8]| {
        let address = lspci::PciAddress {
            domain: None,
            bus,
            device: dev,
            function: func,
        };
        let desc = lspci::default_description(config);
        if len == 0 {
            out.push_str(&format!("{address} {desc}\n"));
        } else {
            out.push_str(&lspci::format_function(&address, &desc, &config[..len]));
        }
    };
    emit(0, 0, 0, &host.root_port_snapshot());
    for f in host.functions() {
        let mut config = vec![0xffu8; 4096];
        let dwords = if len > 64 { len / 4 } else { 16 };
        for i in 0..dwords {
            if let Ok(v) = host.cfg_read(f.bdf, (i * 4) as u16) {
                config[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        emit(f.bdf.bus(), f.bdf.device(), f.bdf.function(), &config);
    }
    out
}

/// One request to a running agent's VM control socket; prints the reply line.
fn vm_request(control: &std::path::Path, line: &str) -> Result<ExitCode, Error> {
    let mut s = std::os::unix::net::UnixStream::connect(control)
        .map_err(|e| format!("cannot connect to {}: {e}", control.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    writeln!(s, "{line}")?;
    let mut reply = String::new();
    std::io::BufReader::new(&s).read_line(&mut reply)?;
    let v: serde_json::Value = serde_json::from_str(reply.trim())
        .map_err(|e| format!("bad reply from {}: {e}", control.display()))?;
    println!("{}", reply.trim());
    if v["ok"] == true {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "pcietun host vm: {}",
            v["error"].as_str().unwrap_or("request failed")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// The VM worker from `--vm`, `--config` and `--vm-grace-ms` (None without VMs).
fn vm_service(args: &HostArgs, agent: &Arc<Agent>) -> Result<Option<Arc<VmService>>, Error> {
    let file = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?;
            VmFileConfig::parse(&text).map_err(|e| format!("{}: {e}", p.display()))?
        }
        None => VmFileConfig::default(),
    };
    let mut specs = file.specs()?;
    for v in &args.vms {
        specs.push(v.parse::<VmSpec>()?);
    }
    if specs.is_empty() {
        if args.vm_control.is_some() {
            return Err("--vm-control needs at least one --vm or [[vm]]".into());
        }
        return Ok(None);
    }
    let Some(dir) = &args.vfio_user else {
        return Err(
            "--vm needs --vfio-user DIR (the VMs connect to the functions' sockets)".into(),
        );
    };
    let mut settings = file.settings();
    if let Some(ms) = args.vm_grace_ms {
        settings.grace = Duration::from_millis(ms);
    }
    // Every attach/detach (and failure) as one JSON line on stdout, for operators and tests;
    // the appliance gets them once the management API carries host events.
    let sink = Arc::new(|e: &VmEvent| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "vm event: {}",
            serde_json::to_string(e).unwrap_or_default()
        );
        let _ = out.flush();
    });
    let attacher = Arc::new(VmAttacher::new(specs, settings, sink)?);
    let sockets: Arc<dyn FunctionSockets> = Arc::new(AgentSockets::new(agent.clone(), dir.clone()));
    let svc = Arc::new(VmService::start(attacher, sockets)?);
    // An unassign waits for the guest's eject before the agent fences and acknowledges.
    svc.gate(agent);
    if let Some(p) = &args.vm_control {
        svc.serve_control(p)
            .map_err(|e| format!("--vm-control {}: {e}", p.display()))?;
    }
    Ok(Some(svc))
}

fn run_agent(cfg: AgentConfig, timeout: Duration, args: &HostArgs) -> Result<ExitCode, Error> {
    install_signal_handlers();
    let dir = args.vfio_user.clone();
    let agent = Arc::new(Agent::start(cfg)?);
    let vms = vm_service(args, &agent)?;
    let found = agent.wait_scan(timeout)?;
    for f in agent.host().functions() {
        eprintln!(
            "pcietun host: {} {:04x}:{:04x} class {:06x}",
            f.bdf, f.vendor, f.device, f.class
        );
    }
    let mut stdout = std::io::stdout();
    match &dir {
        Some(d) => {
            let paths = agent.serve_vfio_user(d)?;
            let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
            writeln!(stdout, "host ready: {}", list.join(" "))?;
        }
        None => {
            let list: Vec<String> = found.iter().map(ToString::to_string).collect();
            writeln!(
                stdout,
                "host ready: {} function(s): {}",
                found.len(),
                list.join(" ")
            )?;
        }
    }
    stdout.flush()?;
    while !STOP.load(Ordering::SeqCst) {
        if let Some(ev) = agent.host().next_event(Duration::from_millis(200)) {
            if let (HostEvent::FunctionAdded(_), Some(d)) = (&ev, &dir) {
                // A function that appeared after a reconnect gets its socket now.
                for p in agent.serve_vfio_user(d)? {
                    eprintln!("pcietun host: new vfio-user socket {}", p.display());
                }
            }
            if let Some(v) = &vms {
                v.on_host_event(&ev);
            }
        }
    }
    if let Some(v) = &vms {
        // Functions still in VMs lose their connection with the agent (surprise removal);
        // `host vm detach` first for an orderly removal.
        v.stop();
    }
    if let Some(p) = &args.vm_control {
        let _ = std::fs::remove_file(p);
    }
    if let Some(d) = &dir {
        for f in agent.host().functions() {
            let _ = std::fs::remove_file(d.join(format!("{}.sock", f.bdf)));
        }
    }
    eprintln!("pcietun host: transport {}", agent.stop().summary());
    let st = agent.host().stats();
    let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    eprintln!(
        "pcietun host: stopped; interrupts {}, DMA faults {} read / {} write, malformed TLPs {}, \
         unexpected completions {}",
        n(&st.interrupts),
        n(&st.dma_read_faults),
        n(&st.dma_write_faults),
        n(&st.malformed),
        n(&st.unexpected_completions)
    );
    Ok(ExitCode::SUCCESS)
}
