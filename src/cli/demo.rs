//! `pcietun demo`: the newcomer's first run, with no arguments and no configuration. By default
//! it shows the pool end to end: it starts an appliance (`pcietun appliance` as a child process:
//! an NVMe controller on a temporary backing file, two hosts, its management API on loopback
//! with a generated administrator password) and two host agents (`pcietun::host::agent`) joined
//! to it by the real transport over UDP on 127.0.0.1. Host A sees the function (`lspci -xxx`),
//! brings the controller up with the project's user-space NVMe driver, writes 64 MiB and reads
//! it back with a progress bar and verifies every byte; then the card moves to host B through
//! the management API (`mgmt::client`, the client of `pcietun ctl`: unassign, assign), host A
//! no longer sees it and host B does; host B brings the controller up, reads back what host A
//! wrote, verifies every byte and prints the latency and throughput it saw. Everything is
//! cleaned up; any failure exits non-zero.
//!
//! `--link eth` (raw Ethernet between two network namespaces over a veth pair) and `--link
//! mem` run both halves in this process on the bench rig, with one host: the single-host flow
//! (no pool, no API).

use super::bench::rig::{Net, Rig, RigConfig};
use super::bench::LinkKind;
use indicatif::{ProgressBar, ProgressStyle};
use pcietun::drivers::nvme::{ControllerInfo, IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::enumerate::FunctionInfo;
use pcietun::host::{HostConfig, RemoteFunction};
use pcietun::mgmt::client::{Client, Settings};
use pcietun::pci::class::nvme::reg as nvme_reg;
use pcietun::pci::lspci::{default_description, format_function, PciAddress};
use pcietun::pci::{walk_capabilities, CapabilityId};
use pcietun::tlp::Bdf;
use pcietun::transport::SecretKey;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Arguments of `pcietun demo` (all optional).
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Link between the host agent and the appliance: `udp` (127.0.0.1), `eth` (raw Ethernet
    /// between two network namespaces over a veth pair; root) or `mem` (in-process).
    #[arg(long, value_enum, default_value = "udp")]
    link: LinkKind,
    /// MiB to write and read back.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1024))]
    size_mib: u64,
    /// NVMe queue depth of the driver.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=255))]
    queue_depth: u64,
}

/// The appliance child process; terminated (SIGTERM, then SIGKILL) on every exit path.
struct ApplianceChild(Child);

/// Why the demo failed (beyond the errors of the layers it drives).
#[derive(Debug, thiserror::Error)]
enum DemoError {
    /// The appliance child's stdout was not captured.
    #[error("no stdout from the appliance")]
    NoStdout,
    /// The appliance did not announce its listener and its API in time.
    #[error("the appliance did not report ready within 20 s{0}")]
    NotReady(String),
    /// The appliance's ready line did not carry its address.
    #[error("unexpected appliance output {0:?}")]
    Output(String),
    /// Enumeration found no NVMe controller.
    #[error("no NVMe function below the root port")]
    NoNvme,
    /// A host did not see the card arrive after its assignment.
    #[error("{host} did not see the NVMe function within 10 s of its assignment")]
    NotArrived {
        /// The host.
        host: &'static str,
    },
    /// A host still sees the card after it was unassigned from it.
    #[error("{host} still sees the NVMe function 10 s after it was unassigned")]
    NotGone {
        /// The host.
        host: &'static str,
    },
    /// A host sees a card it was never given.
    #[error("{host} sees the NVMe function, which is not assigned to it")]
    Leak {
        /// The host.
        host: &'static str,
    },
    /// The API's inventory does not show the card where the demo put it.
    #[error("the management API shows {function} as {state} (host {owner:?}), expected assigned to {want}")]
    Inventory {
        /// The function.
        function: String,
        /// Its state.
        state: String,
        /// Its owner.
        owner: Option<String>,
        /// The expected owner.
        want: &'static str,
    },
    /// The NVMe function disappeared between enumeration and use.
    #[error("the NVMe function {0} vanished")]
    Vanished(Bdf),
    /// Every command slot is busy.
    #[error("no free command slot")]
    NoSlot,
    /// A read completed with an error status.
    #[error("4 KiB read failed: {0}")]
    ReadStatus(pcietun::pci::class::nvme::Status),
    /// What was read back differs from what was written.
    #[error(
        "{who}: data mismatch at byte {pos} (block {block}): read {read:#04x}, wrote {wrote:#04x}"
    )]
    Mismatch {
        /// Who read.
        who: &'static str,
        /// Byte offset.
        pos: usize,
        /// Block.
        block: usize,
        /// Byte read.
        read: u8,
        /// Byte written.
        wrote: u8,
    },
}

/// Why the appliance child did not stop cleanly.
#[derive(Debug, thiserror::Error)]
enum StopError {
    /// It had exited before we asked it to stop.
    #[error("the appliance process exited early")]
    ExitedEarly,
    /// It stopped, but not successfully.
    #[error("the appliance exited with {0}")]
    Failed(std::process::ExitStatus),
    /// It ignored SIGTERM (it was killed).
    #[error("the appliance did not stop on SIGTERM within 5 s")]
    Hung,
}

impl ApplianceChild {
    fn stop(&mut self) -> Result<(), StopError> {
        if let Ok(Some(_)) = self.0.try_wait() {
            return Err(StopError::ExitedEarly);
        }
        let _ = pcietun::sys::process::terminate(&self.0);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            match self.0.try_wait() {
                Ok(Some(st)) if st.success() => return Ok(()),
                Ok(Some(st)) => return Err(StopError::Failed(st)),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        Err(StopError::Hung)
    }
}

impl Drop for ApplianceChild {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The two hosts of the pool run.
const HOST_A: &str = "host-a";
const HOST_B: &str = "host-b";
/// The NVMe card's inventory id (its `name` in the appliance's configuration).
const CARD: &str = "ssd0";
/// How long a host may take to see a card arrive or go.
const SLOT_WAIT: Duration = Duration::from_secs(10);

/// The appliance's recent log lines (stderr), for error messages.
type LogTail = Arc<Mutex<VecDeque<String>>>;

/// The running pool: the appliance child, its API, and the two hosts' agents.
struct PoolRun {
    appliance: ApplianceChild,
    api: String,
    password_file: PathBuf,
    a: Agent,
    b: Agent,
    _dir: tempfile::TempDir,
}

/// Write `text` to a new file only its owner may read (keys, passwords, configurations that
/// name them); an existing file is an error, never overwritten.
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

/// A fresh administrator password from the OS RNG: 18 bytes, 24 characters of base64url.
fn generate_password() -> zeroize::Zeroizing<String> {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut raw = zeroize::Zeroizing::new([0u8; 18]);
    rand::rngs::OsRng.fill_bytes(&mut raw[..]);
    zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&raw[..]))
}

fn tail_text(tail: &LogTail) -> String {
    let lines = tail.lock().map(|t| t.clone()).unwrap_or_default();
    if lines.is_empty() {
        String::new()
    } else {
        let joined: Vec<String> = lines.into_iter().collect();
        format!("; its last log lines:\n  {}", joined.join("\n  "))
    }
}

/// The NVMe function as `agent`'s host sees it now (present and not withdrawn).
fn visible_nvme(agent: &Agent) -> Option<FunctionInfo> {
    let host = agent.host();
    host.functions()
        .into_iter()
        .find(|f| f.class >> 8 == 0x0108 && host.open(f.bdf).is_some_and(|r| !r.is_removed()))
}

/// Wait up to `within` for the NVMe function to be visible to `agent` (`present`) or not.
fn wait_nvme(agent: &Agent, present: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if visible_nvme(agent).is_some() == present {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line per host: what each host's enumeration shows of the NVMe function.
fn per_host_view(run: &PoolRun) {
    for (name, agent) in [(HOST_A, &run.a), (HOST_B, &run.b)] {
        match visible_nvme(agent) {
            Some(f) => println!(
                "      {name} sees: {} NVMe controller [{:04x}:{:04x}]",
                f.bdf, f.vendor, f.device
            ),
            None => println!("      {name} sees: no NVMe function (nothing assigned to it)"),
        }
    }
}

fn open_nvme(agent: &Agent) -> Result<RemoteFunction, Box<dyn std::error::Error>> {
    let info = visible_nvme(agent).ok_or(DemoError::NoNvme)?;
    Ok(agent
        .host()
        .open(info.bdf)
        .ok_or(DemoError::Vanished(info.bdf))?)
}

impl PoolRun {
    /// Start `pcietun appliance` with two hosts, the NVMe card assigned to host A and the API
    /// on loopback, then both hosts' agents.
    fn start(ns_bytes: u64) -> Result<PoolRun, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let img = dir.path().join("nvme0n1.img");
        // Fresh static keys for this run, in key files as `pcietun keygen` writes them; the
        // hosts' public keys go in the configuration, no secret on a command line.
        let app_key = SecretKey::generate();
        let (key_a, key_b) = (SecretKey::generate(), SecretKey::generate());
        app_key.write_new(&dir.path().join("appliance.key"))?;
        let password = generate_password();
        let password_file = dir.path().join("admin.pw");
        write_private(&password_file, &format!("{}\n", password.as_str()))?;
        let config = format!(
            r#"# written by `pcietun demo`
listen = ["udp:127.0.0.1:0"]
key_file = "appliance.key"

[[host]]
id = "{HOST_A}"
public_key = "{}"

[[host]]
id = "{HOST_B}"
public_key = "{}"

[[device]]
kind = "nvme"
name = "{CARD}"
path = "{}"
size = "{ns_bytes}"
assign = "{HOST_A}"

[api]
listen = "127.0.0.1:0"
admin = "admin"
admin_password_file = "admin.pw"
"#,
            key_a.public_key(),
            key_b.public_key(),
            img.display()
        );
        let config_file = dir.path().join("appliance.toml");
        std::fs::write(&config_file, config)?;
        let mut child = ApplianceChild(
            Command::new(std::env::current_exe()?)
                .args(["appliance", "--config"])
                .arg(&config_file)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?,
        );
        let out = child.0.stdout.take().ok_or(DemoError::NoStdout)?;
        let err = child.0.stderr.take().ok_or(DemoError::NoStdout)?;
        let tail: LogTail = Arc::default();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        // Both pipes are drained for the appliance's whole life (a full pipe would block it);
        // stderr's last lines are kept for error messages.
        for (pipe, keep) in [
            (Box::new(out) as Box<dyn std::io::Read + Send>, None),
            (Box::new(err), Some(tail.clone())),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(t) = &keep {
                        if let Ok(mut t) = t.lock() {
                            if t.len() == 8 {
                                t.pop_front();
                            }
                            t.push_back(line.clone());
                        }
                    }
                    let _ = tx.send(line);
                }
            });
        }
        drop(tx);
        let (mut udp, mut api) = (None::<std::net::SocketAddr>, None::<String>);
        let deadline = Instant::now() + Duration::from_secs(20);
        while udp.is_none() || api.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .map_err(|_| DemoError::NotReady(tail_text(&tail)))?;
            if let Some(rest) = line.strip_prefix("appliance ready: listen udp:") {
                udp = Some(
                    rest.split([';', ' '])
                        .next()
                        .and_then(|a| a.parse().ok())
                        .ok_or_else(|| DemoError::Output(line.trim().to_string()))?,
                );
            }
            if let Some(url) = line.strip_prefix("pcietun appliance: management API on ") {
                api = Some(url.trim().to_string());
            }
        }
        let (udp, api) = match (udp, api) {
            (Some(u), Some(a)) => (u, a),
            _ => return Err(DemoError::NotReady(tail_text(&tail)).into()),
        };
        println!(
            "      appliance: `pcietun appliance` (pid {}), NVMe controller {CARD} on a {} MiB temporary file, listening on udp:{udp}",
            child.0.id(),
            ns_bytes >> 20
        );
        println!(
            "      pool: two hosts, {HOST_A} and {HOST_B}; {CARD} assigned to {HOST_A} at start"
        );
        println!("      management API: {api} (loopback only)");
        println!(
            "      administrator: admin, password {} (generated for this run, in {})",
            password.as_str(),
            password_file.display()
        );
        let connect = |id: &str, key: SecretKey| {
            Agent::connect(
                AgentConfig {
                    target: Target::Udp(udp),
                    host_id: id.into(),
                    key: Some(key),
                    appliance_key: Some(app_key.public_key()),
                    psk: None,
                    inject_loss: 0.0,
                    host: HostConfig::default(),
                },
                Duration::from_secs(10),
            )
        };
        let a = connect(HOST_A, key_a)?;
        let b = connect(HOST_B, key_b)?;
        println!(
            "      link: UDP on 127.0.0.1 between two processes (the appliance; this one runs both host agents)"
        );
        Ok(PoolRun {
            appliance: child,
            api,
            password_file,
            a,
            b,
            _dir: dir,
        })
    }

    fn close(self) -> Result<(), Box<dyn std::error::Error>> {
        let PoolRun {
            mut appliance,
            a,
            b,
            _dir,
            ..
        } = self;
        drop(a);
        drop(b);
        Ok(appliance.stop()?)
    }
}

fn start_rig(link: LinkKind, ns_bytes: u64) -> Result<(Box<Rig>, Net), Box<dyn std::error::Error>> {
    let net = Net::create(link)?;
    let rig = Rig::start(
        &net,
        &RigConfig {
            encrypt: true,
            loss: 0.0,
            busy_poll: false,
            nvme_bytes: ns_bytes,
            dma_buffer: 0,
            dma_engines: 1,
            mtu: 8972,
        },
    )?;
    println!(
        "      appliance: NVMe controller on a {} MiB temporary file (in this process)",
        ns_bytes >> 20
    );
    println!("      link: {}", net.describe());
    println!(
        "      host agent: session up, {} function(s) enumerated below the virtual root port",
        rig.functions.len()
    );
    Ok((Box::new(rig), net))
}

/// Numbered steps out of a known total.
struct Steps {
    n: u32,
    total: u32,
}

impl Steps {
    fn next(&mut self, text: &str) {
        self.n += 1;
        println!("\n[{}/{}] {text}", self.n, self.total);
    }
}

/// Print `f`'s configuration space as `lspci -xxx` does, with its regions and capabilities.
fn show_lspci(f: &RemoteFunction) -> Result<(), Box<dyn std::error::Error>> {
    let mut cfg = vec![0u8; 256];
    for (i, dw) in cfg.chunks_mut(4).enumerate() {
        dw.copy_from_slice(&f.config_read((i * 4) as u16)?.to_le_bytes());
    }
    let bdf = f.bdf();
    let addr = PciAddress {
        domain: None,
        bus: bdf.bus(),
        device: bdf.device(),
        function: bdf.function(),
    };
    let text = format_function(&addr, &default_description(&cfg), &cfg);
    for line in text.lines().filter(|l| !l.is_empty()) {
        println!("      {line}");
    }
    let info = f.info();
    for (i, b) in info.bars.iter().enumerate().filter(|(_, b)| b.size > 0) {
        println!(
            "      Region {i}: Memory at {:#x} ({}-bit, {}) [size={}K]",
            b.base,
            if b.is64 { 64 } else { 32 },
            if b.prefetchable {
                "prefetchable"
            } else {
                "non-prefetchable"
            },
            b.size >> 10
        );
    }
    let caps: Vec<String> = walk_capabilities(&cfg)
        .iter()
        .map(|c| {
            let name = match c.id {
                CapabilityId::Standard(0x01) => "Power Management".to_string(),
                CapabilityId::Standard(0x05) => "MSI".to_string(),
                CapabilityId::Standard(0x10) => "Express Endpoint".to_string(),
                CapabilityId::Standard(0x11) => {
                    format!("MSI-X: {} vectors", info.msix.map_or(0, |m| m.vectors))
                }
                other => format!("{other:?}"),
            };
            format!("[{:02x}] {name}", c.offset)
        })
        .collect();
    println!("      Capabilities: {}", caps.join(", "));
    Ok(())
}

/// Bring the controller up with the user-space driver and print what it identified.
fn bring_up(
    f: &RemoteFunction,
    depth: u64,
) -> Result<(NvmeDriver, ControllerInfo), Box<dyn std::error::Error>> {
    let t0 = Instant::now();
    let d = NvmeDriver::open(
        f.clone(),
        NvmeConfig {
            depth: depth as usize,
            completion: CompletionMode::Interrupt,
            ..NvmeConfig::default()
        },
    )?;
    let id = d.info().clone();
    println!(
        "      ready in {:.1} ms: NVMe {}.{}.{}, model {:?}, serial {}, firmware {}",
        t0.elapsed().as_secs_f64() * 1e3,
        id.version.0,
        id.version.1,
        id.version.2,
        id.model,
        id.serial,
        id.firmware
    );
    println!(
        "      namespace 1: {} blocks of {} bytes ({} MiB); max transfer {} KiB; I/O queue depth {}, MSI-X completions",
        id.blocks,
        id.block_size,
        (id.blocks * u64::from(id.block_size)) >> 20,
        id.max_transfer >> 10,
        d.depth()
    );
    Ok((d, id))
}

/// Transfer `data` at block 0 with a progress bar; returns the seconds it took.
fn transfer(
    d: &mut NvmeDriver,
    op: IoOp,
    data: &mut [u8],
    what: &str,
) -> Result<f64, Box<dyn std::error::Error>> {
    let pb = bar(data.len() as u64, what);
    let t0 = Instant::now();
    d.transfer(op, 0, data, &mut |n| pb.inc(n))?;
    let s = t0.elapsed().as_secs_f64();
    pb.finish();
    Ok(s)
}

/// Every byte of `got` equals `want`, or the first difference as an error.
fn verify(who: &'static str, got: &[u8], want: &[u8], block_size: u32) -> Result<(), DemoError> {
    match got.iter().zip(want).position(|(a, b)| a != b) {
        Some(pos) => Err(DemoError::Mismatch {
            who,
            pos,
            block: pos / block_size as usize,
            read: got[pos],
            wrote: want[pos],
        }),
        None => Ok(()),
    }
}

/// Round-trip latencies: MMIO reads of CSTS and 4 KiB reads at queue depth 1 over `span`
/// bytes of the namespace.
fn latencies(
    f: &RemoteFunction,
    d: &mut NvmeDriver,
    id: &ControllerInfo,
    span: u64,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut mmio = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        f.bar_read32(0, nvme_reg::CSTS)?;
        mmio.push(t.elapsed());
    }
    let mut qd1 = Vec::with_capacity(500);
    let per_io = 4096 / u64::from(id.block_size);
    for i in 0..500u64 {
        let slot = d.take_slot().ok_or(DemoError::NoSlot)?;
        d.submit(
            slot,
            IoOp::Read,
            (i * 7919 % (span / 4096).max(1)) * per_io,
            per_io as u32,
        )?;
        let mut failed = None;
        while d.in_flight() > 0 {
            d.wait(&mut |c| {
                if !c.status.is_success() {
                    failed = Some(c.status);
                }
                qd1.push(c.latency);
            })?;
        }
        if let Some(status) = failed {
            return Err(DemoError::ReadStatus(status).into());
        }
    }
    println!(
        "      MMIO read (CSTS register), 1000 round trips: p50 {:.1} µs, p99 {:.1} µs",
        pct(&mut mmio, 0.5),
        pct(&mut mmio, 0.99)
    );
    println!(
        "      4 KiB NVMe read at queue depth 1, 500 commands: p50 {:.1} µs, p99 {:.1} µs",
        pct(&mut qd1, 0.5),
        pct(&mut qd1, 0.99)
    );
    Ok(())
}

/// The data pattern of a run (host A writes it, host B reads it back).
const SEED: u64 = 0x7063_6965_7475_6e00;

/// Deterministic pseudo-random bytes (xorshift64*), so every block differs.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(
            "      {msg:<8} [{bar:40.cyan/blue}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    pb.set_message(what.to_string());
    pb
}

fn pct(s: &mut [Duration], q: f64) -> f64 {
    if s.is_empty() {
        return 0.0;
    }
    s.sort_unstable();
    s[((s.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

/// Run the demo.
pub fn run(args: DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    if args.link == LinkKind::Udp {
        run_pool(&args)
    } else {
        run_single(&args)
    }
}

/// The single-host flow on the bench rig (`--link eth|mem`): one host, no pool, no API.
fn run_single(args: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let t_start = Instant::now();
    println!(
        "pcietun demo — an NVMe controller on an appliance, driven from a host through the tunnel"
    );
    let size = args.size_mib << 20;
    let ns_bytes = size + (16 << 20);
    let mut steps = Steps { n: 0, total: 6 };

    steps.next("starting the appliance and the host agent");
    let (rig, net) = start_rig(args.link, ns_bytes)?;
    println!(
        "      keys: a fresh X25519 key pair per end, made for this run (Noise IK handshake, docs/security.md)"
    );

    steps.next("the tunnelled function, as lspci -xxx shows it");
    let f = rig.open(0x0108)?;
    show_lspci(&f)?;

    steps.next("bringing the NVMe controller up with the user-space driver");
    let (mut d, id) = bring_up(&f, args.queue_depth)?;

    steps.next(&format!(
        "writing {} MiB and reading it back",
        args.size_mib
    ));
    let want = pattern(size as usize, SEED);
    let mut data = want.clone();
    let write_s = transfer(&mut d, IoOp::Write, &mut data, "write")?;
    data.fill(0);
    let read_s = transfer(&mut d, IoOp::Read, &mut data, "read")?;

    steps.next("verifying");
    verify("host", &data, &want, id.block_size)?;
    println!("      all {} bytes read back equal what was written", size);

    steps.next("what the tunnel cost");
    latencies(&f, &mut d, &id, size)?;
    let mb = size as f64 / 1e6;
    println!(
        "      throughput at queue depth {} with {} KiB commands: write {:.1} MB/s, read {:.1} MB/s",
        d.depth(),
        id.max_transfer >> 10,
        mb / write_s,
        mb / read_s
    );
    println!(
        "      (pcietun bench measures these against the raw network path; see docs/bench.md)"
    );

    d.shutdown()?;
    drop(f);
    drop(rig);
    drop(net);
    println!(
        "\ndone in {:.1} s: controller shut down, tunnel closed, temporary file removed{}",
        t_start.elapsed().as_secs_f64(),
        if args.link == LinkKind::Eth {
            ", namespaces and veth pair deleted"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// Check that the API's inventory shows the card assigned to `want`.
fn check_inventory(client: &Client, want: &'static str) -> Result<(), Box<dyn std::error::Error>> {
    let rows = client.devices()?;
    let row = rows
        .iter()
        .find(|r| r.id == CARD)
        .ok_or_else(|| DemoError::Inventory {
            function: CARD.into(),
            state: "absent".into(),
            owner: None,
            want,
        })?;
    if row.host.as_deref() != Some(want) || row.state != "assigned" {
        return Err(DemoError::Inventory {
            function: CARD.into(),
            state: row.state.clone(),
            owner: row.host.clone(),
            want,
        }
        .into());
    }
    println!(
        "      API inventory: {} ({}, class {}) {} to {want}",
        row.id, row.model, row.class_code, row.state
    );
    Ok(())
}

/// The pool flow (default, UDP): two hosts, an assignment, a move through the API.
fn run_pool(args: &DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let t_start = Instant::now();
    println!(
        "pcietun demo — a pool: one appliance, two hosts; an NVMe card used by host A, then moved to host B"
    );
    let size = args.size_mib << 20;
    let ns_bytes = size + (16 << 20);
    let mut steps = Steps { n: 0, total: 8 };

    steps.next("starting the appliance (two hosts, management API) and both host agents");
    let run = PoolRun::start(ns_bytes)?;
    println!(
        "      keys: a fresh X25519 key pair for the appliance and for each host, made for this run (Noise IK handshake, docs/security.md)"
    );
    if !wait_nvme(&run.a, true, SLOT_WAIT) {
        return Err(DemoError::NotArrived { host: HOST_A }.into());
    }
    if visible_nvme(&run.b).is_some() {
        return Err(DemoError::Leak { host: HOST_B }.into());
    }
    per_host_view(&run);

    steps.next(&format!(
        "{HOST_A}: the tunnelled function, as lspci -xxx shows it"
    ));
    let f = open_nvme(&run.a)?;
    show_lspci(&f)?;

    steps.next(&format!(
        "{HOST_A}: bringing the NVMe controller up with the user-space driver"
    ));
    let (mut d, id) = bring_up(&f, args.queue_depth)?;

    steps.next(&format!(
        "{HOST_A}: writing {} MiB, reading it back, verifying",
        args.size_mib
    ));
    let want = pattern(size as usize, SEED);
    let mut data = want.clone();
    let write_s = transfer(&mut d, IoOp::Write, &mut data, "write")?;
    data.fill(0);
    let read_a_s = transfer(&mut d, IoOp::Read, &mut data, "read")?;
    verify(HOST_A, &data, &want, id.block_size)?;
    println!("      {HOST_A}: all {size} bytes read back equal what was written");
    // The controller is shut down (its writes are on the media) before the card moves.
    d.shutdown()?;
    drop(f);
    println!("      {HOST_A}: controller shut down");

    steps.next(&format!(
        "moving {CARD} from {HOST_A} to {HOST_B} through the management API"
    ));
    println!("      the same with pcietun ctl:");
    println!(
        "        pcietun ctl --api {} login --user admin --password-file {}",
        run.api,
        run.password_file.display()
    );
    println!("        pcietun ctl unassign {CARD}");
    println!("        pcietun ctl assign {CARD} {HOST_B}");
    let anonymous = Client::new(&Settings {
        api: run.api.clone(),
        timeout: Duration::from_secs(10),
        ..Settings::default()
    })?;
    let password = pcietun::mgmt::config::read_password_file(&run.password_file)?;
    let login = anonymous.login("admin", &password)?;
    drop(password);
    let client = Client::new(&Settings {
        api: run.api.clone(),
        token: Some(login.token.clone()),
        timeout: Duration::from_secs(10),
        ..Settings::default()
    })?;
    println!("      logged in to {} as admin", client.api());
    check_inventory(&client, HOST_A)?;
    let t0 = Instant::now();
    let task = client.unassign(CARD)?;
    client.wait(task, Duration::from_secs(30))?;
    println!(
        "      {CARD} unassigned from {HOST_A} in {:.0} ms (orderly: {HOST_A}'s agent let go, the function was reset)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    if !wait_nvme(&run.a, false, SLOT_WAIT) {
        return Err(DemoError::NotGone { host: HOST_A }.into());
    }
    let t0 = Instant::now();
    let task = client.assign(CARD, HOST_B)?;
    client.wait(task, Duration::from_secs(30))?;
    if !wait_nvme(&run.b, true, SLOT_WAIT) {
        return Err(DemoError::NotArrived { host: HOST_B }.into());
    }
    println!(
        "      {CARD} assigned to {HOST_B} in {:.0} ms (hot-plugged into its slot, no rescan)",
        t0.elapsed().as_secs_f64() * 1e3
    );
    if visible_nvme(&run.a).is_some() {
        return Err(DemoError::Leak { host: HOST_A }.into());
    }
    check_inventory(&client, HOST_B)?;
    per_host_view(&run);

    steps.next(&format!(
        "{HOST_B}: bringing the NVMe controller up with the user-space driver"
    ));
    let f = open_nvme(&run.b)?;
    let (mut d, id) = bring_up(&f, args.queue_depth)?;

    steps.next(&format!(
        "{HOST_B}: reading back the {} MiB {HOST_A} wrote, verifying",
        args.size_mib
    ));
    data.fill(0);
    let read_b_s = transfer(&mut d, IoOp::Read, &mut data, "read")?;
    verify(HOST_B, &data, &want, id.block_size)?;
    println!(
        "      {HOST_B}: all {size} bytes read back equal what {HOST_A} wrote (the media moved with the card)"
    );

    steps.next(&format!("what the tunnel cost ({HOST_B})"));
    latencies(&f, &mut d, &id, size)?;
    let mb = size as f64 / 1e6;
    println!(
        "      throughput at queue depth {} with {} KiB commands: write {:.1} MB/s ({HOST_A}), read {:.1} MB/s ({HOST_A}), read {:.1} MB/s ({HOST_B})",
        d.depth(),
        id.max_transfer >> 10,
        mb / write_s,
        mb / read_a_s,
        mb / read_b_s
    );
    println!(
        "      (pcietun bench measures these against the raw network path; see docs/bench.md)"
    );

    d.shutdown()?;
    drop(f);
    let _ = client.logout(&login.session);
    drop(client);
    run.close()?;
    println!(
        "\ndone in {:.1} s: controller shut down, API session closed, both host agents and the appliance stopped, tunnel closed, temporary files removed",
        t_start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
