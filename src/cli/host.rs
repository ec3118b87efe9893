//! `pcietun host`: the host agent (root complex toward one appliance, vfio-user sockets for
//! the tunnelled functions) and its operator tools `host lspci [-x|-xxx|-xxxx]` and
//! `host read|write BDF BAR OFFSET [VALUE]` (CONTRACT.md "Host agent", docs/host.md).
//!
//! The operator tools open their own short session to the appliance, enumerate and act; they
//! do not talk to a running agent.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use pcietun::host::agent::{Agent, AgentConfig};
use pcietun::host::{HostConfig, HostEvent};
use pcietun::pci::lspci;
use pcietun::tlp::Bdf;
use pcietun::transport::{keys, Psk, PublicKey};

/// Arguments of `pcietun host`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = false)]
pub struct HostArgs {
    #[command(subcommand)]
    cmd: Option<HostCmd>,
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
}

#[derive(Debug, clap::Subcommand)]
enum HostCmd {
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

fn number(s: &str) -> Result<u64, Error> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("{s:?} is not a number (use 0x for hex)").into())
}

fn agent_config(a: &HostArgs) -> Result<AgentConfig, Error> {
    let key = keys::load_secret(a.key.as_deref())?;
    let appliance_key: Option<PublicKey> = a
        .peer_key
        .as_deref()
        .map(|k| k.parse().map_err(|e| format!("--peer-key: {e}")))
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
        return Err("--inject-loss must be 0..=100".into());
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

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn install_signal_handlers() {
    let handler: extern "C" fn(libc::c_int) = on_signal;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
    }
}

/// Run `pcietun host …`.
pub fn run(args: HostArgs) -> Result<ExitCode, Error> {
    super::init_logging();
    let cfg = agent_config(&args)?;
    let timeout = Duration::from_secs(args.connect_timeout);
    match &args.cmd {
        None => run_agent(cfg, timeout, args.vfio_user.clone()),
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
                .map_err(|e| format!("read {bdf} BAR{bar}+{offset}: {e}"))?;
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
                return Err(format!("{value} does not fit in {w} bytes").into());
            }
            f.bar_write(*bar, number(offset)?, &v.to_le_bytes()[..w])
                .map_err(|e| format!("write {bdf} BAR{bar}+{offset}: {e}"))?;
            // A read behind the posted write on the same link: it has arrived when this returns.
            f.config_read(0)
                .map_err(|e| format!("write {bdf} BAR{bar}+{offset} not confirmed: {e}"))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_width(w: usize) -> Result<usize, Error> {
    match w {
        1 | 2 | 4 | 8 => Ok(w),
        _ => Err(format!("--width {w}: use 1, 2, 4 or 8").into()),
    }
}

fn open(agent: &Agent, bdf: &str) -> Result<pcietun::host::RemoteFunction, Error> {
    let b: Bdf = bdf
        .parse()
        .map_err(|_| format!("{bdf:?} is not a bus:device.function like 01:00.0"))?;
    agent
        .host()
        .open(b)
        .ok_or_else(|| format!("no tunnelled function at {b}").into())
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

fn run_agent(cfg: AgentConfig, timeout: Duration, dir: Option<PathBuf>) -> Result<ExitCode, Error> {
    install_signal_handlers();
    let mut agent = Agent::start(cfg)?;
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
        }
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
