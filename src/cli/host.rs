//! `pcietun host`: the host agent (a root complex toward each appliance, vfio-user sockets
//! for the tunnelled functions) and its operator tools `host lspci [-x|-xxx|-xxxx]` and
//! `host read|write FUNC BAR OFFSET [VALUE]` (docs/host.md).
//!
//! One appliance (`--connect`, `--peer-key`) or several (`--appliance NAME=ADDR[@PUBKEY]`,
//! repeatable, or `[[appliance]]` in `--config`): the `i`-th appliance's functions are PCI
//! segment `i` (`0001:01:00.0`), the first keeps segment 0000 and plain BDFs
//! ([`pcietun::host::fleet`], docs/host.md "Several appliances").
//!
//! The operator tools first ask the running agent through its control socket (docs/host.md
//! "Control socket"; default `/run/pcietun/host-<id>.sock`, `--control PATH`); only when no
//! agent for the same appliance answers do they open their own short session (saying so in
//! one line on stderr) — a second session with the agent's key would replace the agent's
//! session on the appliance and reset every function.
//!
//! VMs (docs/vms.md): `--vm NAME=QMP[,function=SEL]` / `--config FILE` (`[[vm]]`) make the
//! agent hot-add its functions to running QEMU VMs; `host qemu-args` prints the QEMU options
//! such a VM needs; `host vm --control PATH attach|detach|list` talks to a running agent's
//! VM control socket (`--vm-control PATH`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pcietun::host::agent::AgentConfig;
use pcietun::host::control::{self, ControlInfo, Dump, Request};
use pcietun::host::fleet::{self, ApplianceEntry, ApplianceSpec, Fleet, FleetError};
use pcietun::host::vm::qemu::{self, HotplugMode, QemuArgs};
use pcietun::host::vm::{
    AgentSockets, FunctionSockets, VmAttacher, VmEvent, VmFileConfig, VmService, VmSpec,
};
use pcietun::host::{HostConfig, HostEvent};
use pcietun::transport::keys::KeyError;
use pcietun::transport::{keys, Psk, PublicKey};

/// Arguments of `pcietun host`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct HostArgs {
    #[command(subcommand)]
    cmd: Option<Box<HostCmd>>,
    /// The appliance: udp:IP:PORT or eth:IFACE[,peer=MAC] [default: udp:127.0.0.1:7470].
    #[arg(long, global = true, value_name = "ADDR")]
    connect: Option<String>,
    /// One of several appliances: NAME=ADDR[@PUBKEY] (repeatable; instead of --connect and
    /// --peer-key). The first is PCI segment 0000, the next 0001, ...; address a function of
    /// the second as 0001:01:00.0.
    #[arg(long = "appliance", global = true, value_name = "NAME=ADDR[@KEY]")]
    appliances: Vec<String>,
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
    /// Agent configuration file (TOML) with `[[appliance]]` (docs/host.md) and `[[vm]]`
    /// entries (docs/vms.md).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// How long a guest may take to release a function after device_del before the agent
    /// withdraws it (surprise removal), in milliseconds.
    #[arg(long, value_name = "MS")]
    vm_grace_ms: Option<u64>,
    /// Serve the VM control socket here (`pcietun host vm --control PATH ...`).
    #[arg(long, value_name = "PATH")]
    vm_control: Option<PathBuf>,
    /// The agent's control socket (default /run/pcietun/host-<HOST_ID>.sock): the agent
    /// serves it, `lspci`/`read`/`write` ask it first.
    #[arg(long, value_name = "PATH")]
    control: Option<PathBuf>,
    /// The agent serves no control socket; `lspci`/`read`/`write` open their own session.
    #[arg(long, global = true)]
    no_control: bool,
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
        /// Only this function (e.g. 01:00.0, or 0001:01:00.0 on the second appliance; 00:00.0
        /// is the root port).
        bdf: Option<String>,
        /// The running agent's control socket (default /run/pcietun/host-<HOST_ID>.sock).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Read a BAR register: FUNC BAR OFFSET (offset hex with 0x, or decimal).
    Read {
        /// Function, e.g. 01:00.0 (segment 0) or 0001:01:00.0 (the second appliance).
        bdf: String,
        /// BAR index 0-5.
        bar: usize,
        /// Byte offset in the BAR.
        offset: String,
        /// Access width in bytes: 1, 2, 4 or 8.
        #[arg(long, default_value_t = 4)]
        width: usize,
        /// The running agent's control socket (default /run/pcietun/host-<HOST_ID>.sock).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Write a BAR register: FUNC BAR OFFSET VALUE.
    Write {
        /// Function, e.g. 01:00.0 (segment 0) or 0001:01:00.0 (the second appliance).
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
        /// The running agent's control socket (default /run/pcietun/host-<HOST_ID>.sock).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
}

type Error = Box<dyn std::error::Error>;

/// What an operator asked for that the host tools cannot do.
#[derive(Debug, thiserror::Error)]
enum HostCliError {
    /// `--peer-key` is not a public key.
    #[error("--peer-key: {0}")]
    PeerKey(#[source] KeyError),
    /// `--inject-loss` outside 0..=100.
    #[error("--inject-loss {0} must be 0..=100")]
    Loss(f64),
    /// The agent answered with an error.
    #[error("{0}")]
    Agent(String),
    /// The one-appliance options next to the several-appliance ones.
    #[error("{0} and --appliance / [[appliance]] exclude each other (give each appliance's address and key in its entry)")]
    Mixed(&'static str),
    /// Appliances both on the command line and in the file.
    #[error(
        "appliances both in --appliance and in [[appliance]] of --config: give them in one place"
    )]
    TwoLists,
    /// VMs with several appliances.
    #[error(
        "--vm / [[vm]] with several appliances is not supported yet (docs/host.md \"Limits\")"
    )]
    VmsWithSeveral,
}

/// The default `--connect`.
const DEFAULT_CONNECT: &str = "udp:127.0.0.1:7470";

/// What `--config FILE` holds: `[[appliance]]` entries and the VM settings.
#[derive(Debug, Default)]
struct FileConfig {
    appliances: Vec<ApplianceSpec>,
    vm: VmFileConfig,
}

fn load_file(args: &HostArgs) -> Result<FileConfig, Error> {
    let Some(p) = &args.config else {
        return Ok(FileConfig::default());
    };
    let text =
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", p.display());
    let mut table: toml::Table = text.parse().map_err(|e| at(&e))?;
    let appliances = match table.remove("appliance") {
        None => Vec::new(),
        Some(v) => {
            let entries: Vec<ApplianceEntry> = v
                .try_into()
                .map_err(|e| at(&format_args!("[[appliance]]: {e}")))?;
            entries
                .iter()
                .map(ApplianceEntry::spec)
                .collect::<Result<_, _>>()
                .map_err(|e| at(&e))?
        }
    };
    let vm: VmFileConfig = toml::Value::Table(table).try_into().map_err(|e| at(&e))?;
    Ok(FileConfig { appliances, vm })
}

/// The appliances: `--appliance` entries, else `[[appliance]]` of the file, else the one of
/// `--connect` / `--peer-key` (named `appliance`). Checked ([`fleet::check`]).
fn appliance_specs(a: &HostArgs, file: &FileConfig) -> Result<Vec<ApplianceSpec>, Error> {
    let listed: Vec<ApplianceSpec> = a
        .appliances
        .iter()
        .map(|s| s.parse::<ApplianceSpec>())
        .collect::<Result<_, _>>()?;
    if !listed.is_empty() && !file.appliances.is_empty() {
        return Err(HostCliError::TwoLists.into());
    }
    let several = if listed.is_empty() {
        file.appliances.clone()
    } else {
        listed
    };
    let specs = if several.is_empty() {
        let key: Option<PublicKey> = a
            .peer_key
            .as_deref()
            .map(|k| k.parse().map_err(HostCliError::PeerKey))
            .transpose()?;
        let connect = a.connect.as_deref().unwrap_or(DEFAULT_CONNECT);
        vec![ApplianceSpec {
            name: "appliance".into(),
            target: connect.parse()?,
            key,
        }]
    } else {
        if a.connect.is_some() {
            return Err(HostCliError::Mixed("--connect").into());
        }
        if a.peer_key.is_some() {
            return Err(HostCliError::Mixed("--peer-key").into());
        }
        several
    };
    fleet::check(&specs)?;
    Ok(specs)
}

/// With one appliance, its agent's error as it always read; with several, which appliance.
fn fleet_error(e: FleetError, specs: &[ApplianceSpec]) -> Error {
    match e {
        FleetError::Agent { source, .. } if specs.len() == 1 => source.into(),
        e => e.into(),
    }
}

/// The agent settings of the first appliance (`specs[0]`); the others differ only in their
/// target and key ([`Fleet::start`]).
fn agent_config(a: &HostArgs, specs: &[ApplianceSpec]) -> Result<AgentConfig, Error> {
    let key = keys::load_secret(a.key.as_deref())?;
    let first = specs.first().ok_or(FleetError::Empty)?;
    let psk = a.psk_file.as_deref().map(Psk::from_file).transpose()?;
    if key.is_none() || specs.iter().any(|s| s.key.is_none()) {
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
        target: first.target.clone(),
        host_id: a.host_id.clone(),
        key,
        appliance_key: first.key,
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
    let file = load_file(&args)?;
    let specs = appliance_specs(&args, &file)?;
    let cfg = agent_config(&args, &specs)?;
    let timeout = Duration::from_secs(args.connect_timeout);
    let op = |req: &Request, control: &Option<PathBuf>| {
        operator(&args, &cfg, &specs, timeout, control.as_deref(), req)
    };
    match args.cmd.as_deref() {
        Some(HostCmd::QemuArgs { .. } | HostCmd::Vm { .. }) => unreachable!("handled above"),
        None => run_agent(&cfg, &specs, file.vm, timeout, &args),
        Some(HostCmd::Lspci { x, bdf, control }) => {
            let req = Request::Lspci {
                dump: Dump::from_count(*x),
                bdf: bdf.as_deref().map(control::address).transpose()?,
            };
            op(&req, control)
        }
        Some(HostCmd::Read {
            bdf,
            bar,
            offset,
            width,
            control,
        }) => {
            let req = Request::Read {
                bdf: control::address(bdf)?,
                bar: control::bar(&bar.to_string())?,
                offset: control::number(offset)?,
                width: control::width(&width.to_string())?,
            };
            op(&req, control)
        }
        Some(HostCmd::Write {
            bdf,
            bar,
            offset,
            value,
            width,
            control,
        }) => {
            let w = control::width(&width.to_string())?;
            let req = Request::Write {
                bdf: control::address(bdf)?,
                bar: control::bar(&bar.to_string())?,
                offset: control::number(offset)?,
                width: w,
                value: control::value(value, w)?,
            };
            op(&req, control)
        }
    }
}

/// Longest wait for the agent's reply (an lspci -xxxx of many functions is thousands of
/// round trips).
const AGENT_REPLY: Duration = Duration::from_secs(300);

/// Who we are toward the control socket: our host id and the (first) appliance.
fn control_info(args: &HostArgs, cfg: &AgentConfig) -> ControlInfo {
    ControlInfo {
        host_id: args.host_id.clone(),
        target: cfg.target.to_string(),
    }
}

/// The control socket the agent serves and the tools ask (None: --no-control).
fn control_path(args: &HostArgs, sub: Option<&Path>) -> Option<PathBuf> {
    if args.no_control {
        return None;
    }
    Some(
        sub.or(args.control.as_deref())
            .map(Path::to_path_buf)
            .unwrap_or_else(|| control::default_path(&args.host_id)),
    )
}

/// Ask the running agent at `path`. `Ok(Err(why))`: no agent for this appliance and host id
/// answers there (why: for the one line on stderr); `Ok(Ok(reply))`: its answer.
fn ask_agent(
    path: &Path,
    me: &ControlInfo,
    req: &Request,
) -> Result<Result<serde_json::Value, String>, Error> {
    let mut c = match control::Client::connect(path, AGENT_REPLY) {
        Ok(c) => c,
        Err(control::ClientError::Connect { source, .. }) => {
            return Ok(Err(format!(
                "no agent answers on {}: {source}",
                path.display()
            )))
        }
        Err(e) => return Err(e.into()),
    };
    let st = c.ask("status")?;
    if st["ok"] != true {
        let why = st["error"].as_str().unwrap_or("status failed");
        return Err(format!("the agent on {}: {why}", path.display()).into());
    }
    if st["target"] != me.target.as_str() || st["host_id"] != me.host_id.as_str() {
        return Ok(Err(format!(
            "the agent on {} is {} toward {}, not {} toward {}",
            path.display(),
            st["host_id"].as_str().unwrap_or("?"),
            st["target"].as_str().unwrap_or("?"),
            me.host_id,
            me.target
        )));
    }
    // Past this point the request may have been carried out: no fallback (a write would
    // happen twice), errors are errors.
    Ok(Ok(c.ask(&req.to_string())?))
}

/// `lspci` / `read` / `write`: through the running agent, else through sessions of our own
/// (one per appliance, segments as the agent numbers them).
fn operator(
    args: &HostArgs,
    cfg: &AgentConfig,
    specs: &[ApplianceSpec],
    timeout: Duration,
    sub_control: Option<&Path>,
    req: &Request,
) -> Result<ExitCode, Error> {
    let me = control_info(args, cfg);
    if let Some(path) = control_path(args, sub_control) {
        match ask_agent(&path, &me, req)? {
            Ok(reply) => {
                if reply["ok"] != true {
                    let why = reply["error"].as_str().unwrap_or("request failed");
                    return Err(HostCliError::Agent(why.to_string()).into());
                }
                print!("{}", reply["output"].as_str().unwrap_or_default());
                std::io::stdout().flush()?;
                return Ok(ExitCode::SUCCESS);
            }
            Err(why) => tracing::info!("{why}; opening a session of our own"),
        }
    }
    let fleet = Fleet::start(cfg, specs).map_err(|e| fleet_error(e, specs))?;
    fleet
        .wait_scan(timeout)
        .map_err(|e| fleet_error(e, specs))?;
    let answer = control::execute(&fleet.fabric(), req)?;
    print!("{}", answer.output);
    Ok(ExitCode::SUCCESS)
}

/// One request to a running agent's VM control socket; prints the reply line.
fn vm_request(control: &Path, line: &str) -> Result<ExitCode, Error> {
    let (reply, v) = control::Client::connect(control, Duration::from_secs(600))?.ask_line(line)?;
    println!("{reply}");
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

/// The VM worker from `--vm`, `--config` and `--vm-grace-ms` (None without VMs); `fleet`'s
/// appliances (VMs only with one).
fn vm_service(
    args: &HostArgs,
    file: &VmFileConfig,
    fleet: &Fleet,
) -> Result<Option<Arc<VmService>>, Error> {
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
    let [member] = fleet.members() else {
        return Err(HostCliError::VmsWithSeveral.into());
    };
    let agent = &member.agent;
    let Some(dir) = &args.vfio_user else {
        return Err(
            "--vm needs --vfio-user DIR (the VMs connect to the functions' sockets)".into(),
        );
    };
    let mut settings = file.settings();
    if let Some(ms) = args.vm_grace_ms {
        settings.grace = Duration::from_millis(ms);
    }
    // Every attach/detach (and failure) as one JSON line on stdout, for operators and tests,
    // and as a consumer report on the function's slot to the appliance (its Connection and
    // event stream show it). A report that cannot be sent (no session, or a card the agent
    // found at session start, whose assignment generation it was never told) is dropped;
    // the stdout line stays.
    let host = Arc::downgrade(agent.host());
    let sink = Arc::new(move |e: &VmEvent| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "vm event: {}",
            serde_json::to_string(e).unwrap_or_default()
        );
        let _ = out.flush();
        if let Some(h) = host.upgrade() {
            let slot = e.function().bdf.device();
            match h.report_consumer(slot, e.consumer_event(), e.vm()) {
                Ok(true) => {}
                Ok(false) => tracing::debug!(slot, "VM event not reported: no assignment known"),
                Err(err) => tracing::info!(slot, error = %err, "VM event not reported"),
            }
        }
    });
    let attacher = Arc::new(VmAttacher::new(specs, settings, sink)?);
    let sockets: Arc<dyn FunctionSockets> = Arc::new(AgentSockets::new(agent.clone(), dir.clone()));
    let svc = Arc::new(VmService::start(attacher, sockets)?);
    // An assignment that names a VM goes to that VM.
    svc.names_from(agent.host());
    // An unassign waits for the guest's eject before the agent fences and acknowledges.
    svc.gate(agent);
    if let Some(p) = &args.vm_control {
        svc.serve_control(p)
            .map_err(|e| format!("--vm-control {}: {e}", p.display()))?;
    }
    Ok(Some(svc))
}

fn run_agent(
    cfg: &AgentConfig,
    specs: &[ApplianceSpec],
    vm_file: VmFileConfig,
    timeout: Duration,
    args: &HostArgs,
) -> Result<ExitCode, Error> {
    if specs.len() > 1 && !(args.vms.is_empty() && vm_file.vm.is_empty()) {
        return Err(HostCliError::VmsWithSeveral.into());
    }
    install_signal_handlers();
    let dir = args.vfio_user.clone();
    let me = control_info(args, cfg);
    // Bound before the sessions open: an agent refused the path (another agent holds it)
    // stops before it could replace that agent's sessions.
    let bound = match control_path(args, None) {
        None => None,
        Some(path) => match control::BoundSocket::bind(&path) {
            Ok(b) => Some(b),
            // The default path: another agent (or no /run/pcietun) must not stop this one.
            Err(e) if args.control.is_none() => {
                eprintln!(
                    "pcietun host: warning: no control socket: {e} (--control PATH picks another)"
                );
                None
            }
            Err(e) => return Err(format!("--control: {e}").into()),
        },
    };
    let fleet = Fleet::start(cfg, specs).map_err(|e| fleet_error(e, specs))?;
    let vms = vm_service(args, &vm_file, &fleet)?;
    let found = fleet
        .wait_scan(timeout)
        .map_err(|e| fleet_error(e, specs))?;
    // With several appliances the control socket serves them all (closed before the stop).
    let mut fabric_control = None;
    if let Some(b) = bound {
        let path = if let [m] = fleet.members() {
            // One appliance: the agent's own control socket, as always.
            m.agent.serve_control(b, me)?
        } else {
            let s = control::ControlServer::start_fabric(b, fleet.fabric())?;
            let p = s.path().to_path_buf();
            fabric_control = Some(s);
            p
        };
        eprintln!("pcietun host: control socket {}", path.display());
    }
    let several = fleet.members().len() > 1;
    for m in fleet.members() {
        if several {
            eprintln!(
                "pcietun host: appliance {} {} (segment {:04x})",
                m.name,
                m.target,
                m.agent.segment()
            );
        }
        for f in m.agent.host().functions() {
            eprintln!(
                "pcietun host: {} {:04x}:{:04x} class {:06x}",
                control::Addr::new(m.agent.segment(), f.bdf),
                f.vendor,
                f.device,
                f.class
            );
        }
    }
    let mut stdout = std::io::stdout();
    match &dir {
        Some(d) => {
            let paths = fleet.serve_vfio_user(d)?;
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
    // Each appliance's events in turn; together about one 200 ms poll per round.
    let poll = Duration::from_millis((200 / fleet.members().len() as u64).max(10));
    while !STOP.load(Ordering::SeqCst) {
        for m in fleet.members() {
            let Some(ev) = m.agent.host().next_event(poll) else {
                continue;
            };
            if let (HostEvent::FunctionAdded(_), Some(d)) = (&ev, &dir) {
                // A function that appeared after a reconnect gets its socket now.
                for p in m.agent.serve_vfio_user(d)? {
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
    drop(fabric_control);
    if let Some(d) = &dir {
        for m in fleet.members() {
            for f in m.agent.host().functions() {
                let _ = std::fs::remove_file(d.join(m.agent.socket_name(f.bdf)));
            }
        }
    }
    for (name, stats) in fleet.stop() {
        if several {
            eprintln!(
                "pcietun host: appliance {name}: transport {}",
                stats.summary()
            );
        } else {
            eprintln!("pcietun host: transport {}", stats.summary());
        }
    }
    for m in fleet.members() {
        let st = m.agent.host().stats();
        let n = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let who = if several {
            format!(" appliance {}:", m.name)
        } else {
            String::new()
        };
        eprintln!(
            "pcietun host:{who} stopped; interrupts {}, DMA faults {} read / {} write, malformed \
             TLPs {}, unexpected completions {}",
            n(&st.interrupts),
            n(&st.dma_read_faults),
            n(&st.dma_write_faults),
            n(&st.malformed),
            n(&st.unexpected_completions)
        );
    }
    Ok(ExitCode::SUCCESS)
}
