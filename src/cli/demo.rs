//! `pcietun demo`: the newcomer's first run, with no arguments and no configuration. It starts
//! an appliance (`pcietun appliance` as a child process: an NVMe controller on a temporary
//! backing file) and a host agent (`pcietun::host::agent`) joined by the real transport over
//! UDP on 127.0.0.1 (or, in one process on the bench rig, `--link eth`: raw Ethernet between
//! two network namespaces over a veth pair, or `--link mem`), shows the tunnelled function as
//! `lspci -xxx` does, brings the controller up through the tunnel with the project's
//! user-space NVMe driver, writes 64 MiB and reads it back with a progress bar, verifies every
//! byte, prints the latency and throughput it saw, and cleans up. Any failure exits non-zero.

use super::bench::rig::{Net, Rig, RigConfig};
use super::bench::LinkKind;
use indicatif::{ProgressBar, ProgressStyle};
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::{HostConfig, RemoteFunction};
use pcietun::pci::class::nvme::reg as nvme_reg;
use pcietun::pci::lspci::{default_description, format_function, PciAddress};
use pcietun::pci::{walk_capabilities, CapabilityId};
use pcietun::tlp::Bdf;
use pcietun::transport::SecretKey;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitCode, Stdio};
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

/// The two halves of the tunnel the demo runs on.
enum Tunnel {
    /// `pcietun appliance` as a child process, the host agent (`pcietun::host::agent`) here.
    Processes {
        appliance: ApplianceChild,
        agent: Agent,
        _dir: tempfile::TempDir,
    },
    /// Both halves in this process on the bench rig (raw Ethernet between namespaces, memory).
    Rig { rig: Box<Rig>, _net: Net },
}

/// The appliance child process; terminated (SIGTERM, then SIGKILL) on every exit path.
struct ApplianceChild(Child);

/// Why the demo failed (beyond the errors of the layers it drives).
#[derive(Debug, thiserror::Error)]
enum DemoError {
    /// The appliance child's stdout was not captured.
    #[error("no stdout from the appliance")]
    NoStdout,
    /// The appliance printed no ready line in time.
    #[error("the appliance did not report ready within 10 s")]
    NotReady,
    /// The appliance's ready line did not carry its address.
    #[error("unexpected appliance output {0:?}")]
    Output(String),
    /// Enumeration found no NVMe controller.
    #[error("no NVMe function below the root port")]
    NoNvme,
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
    #[error("data mismatch at byte {pos} (block {block}): read {read:#04x}, wrote {wrote:#04x}")]
    Mismatch {
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

impl Tunnel {
    fn processes(ns_bytes: u64) -> Result<Tunnel, Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let img = dir.path().join("nvme0n1.img");
        // Fresh static keys for this run, in key files as `pcietun keygen` writes them.
        let (app_key, host_key) = (SecretKey::generate(), SecretKey::generate());
        let key_file = dir.path().join("appliance.key");
        app_key.write_new(&key_file)?;
        let mut child = ApplianceChild(
            Command::new(std::env::current_exe()?)
                .arg("appliance")
                .arg("--key")
                .arg(&key_file)
                .arg("--host")
                .arg(format!("host={}", host_key.public_key()))
                .args(["--listen", "udp:127.0.0.1:0", "--device"])
                .arg(format!("nvme={},size={}", img.display(), ns_bytes))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?,
        );
        let out = child.0.stdout.take().ok_or(DemoError::NoStdout)?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(out).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| DemoError::NotReady)?;
        let addr = line
            .strip_prefix("appliance ready: listen udp:")
            .and_then(|r| r.split([';', ' ']).next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| DemoError::Output(line.trim().to_string()))?;
        println!(
            "      appliance: `pcietun appliance` (pid {}), NVMe controller on a {} MiB temporary file, listening on udp:{addr}",
            child.0.id(),
            ns_bytes >> 20
        );
        let agent = Agent::connect(
            AgentConfig {
                target: Target::Udp(addr),
                host_id: "host".into(),
                key: Some(host_key),
                appliance_key: Some(app_key.public_key()),
                psk: None,
                inject_loss: 0.0,
                host: HostConfig::default(),
            },
            Duration::from_secs(10),
        )?;
        println!("      link: UDP on 127.0.0.1, two processes");
        println!(
            "      host agent: session up, {} function(s) enumerated below the virtual root port",
            agent.host().functions().len()
        );
        Ok(Tunnel::Processes {
            appliance: child,
            agent,
            _dir: dir,
        })
    }

    fn rig(link: LinkKind, ns_bytes: u64) -> Result<Tunnel, Box<dyn std::error::Error>> {
        let net = Net::create(link)?;
        let rig = Rig::start(
            &net,
            &RigConfig {
                encrypt: true,
                loss: 0.0,
                busy_poll: false,
                nvme_bytes: ns_bytes,
                dma_buffer: 0,
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
        Ok(Tunnel::Rig {
            rig: Box::new(rig),
            _net: net,
        })
    }

    fn nvme(&self) -> Result<RemoteFunction, Box<dyn std::error::Error>> {
        match self {
            Tunnel::Rig { rig, .. } => rig.open(0x0108),
            Tunnel::Processes { agent, .. } => {
                let host = agent.host();
                let info = host
                    .functions()
                    .into_iter()
                    .find(|f| f.class >> 8 == 0x0108)
                    .ok_or(DemoError::NoNvme)?;
                Ok(host.open(info.bdf).ok_or(DemoError::Vanished(info.bdf))?)
            }
        }
    }

    fn close(self) -> Result<(), Box<dyn std::error::Error>> {
        match self {
            Tunnel::Rig { .. } => Ok(()),
            Tunnel::Processes {
                mut appliance,
                agent,
                _dir,
            } => {
                drop(agent);
                Ok(appliance.stop()?)
            }
        }
    }
}

fn step(n: u32, text: &str) {
    println!("\n[{n}/6] {text}");
}

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
    let t_start = Instant::now();
    println!(
        "pcietun demo — an NVMe controller on an appliance, driven from a host through the tunnel"
    );
    let size = args.size_mib << 20;
    let ns_bytes = size + (16 << 20);

    step(1, "starting the appliance and the host agent");
    let tunnel = if args.link == LinkKind::Udp {
        Tunnel::processes(ns_bytes)?
    } else {
        Tunnel::rig(args.link, ns_bytes)?
    };
    println!(
        "      keys: a fresh X25519 key pair per end, made for this run (Noise IK handshake, docs/security.md)"
    );

    step(2, "the tunnelled function, as lspci -xxx shows it");
    let f = tunnel.nvme()?;
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

    step(
        3,
        "bringing the NVMe controller up with the user-space driver",
    );
    let t0 = Instant::now();
    let mut d = NvmeDriver::open(
        f.clone(),
        NvmeConfig {
            depth: args.queue_depth as usize,
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

    step(
        4,
        &format!("writing {} MiB and reading it back", args.size_mib),
    );
    let mut data = pattern(size as usize, 0x7063_6965_7475_6e00);
    let want = data.clone();
    let pb = bar(size, "write");
    let t0 = Instant::now();
    d.transfer(IoOp::Write, 0, &mut data, &mut |n| pb.inc(n))?;
    let write_s = t0.elapsed().as_secs_f64();
    pb.finish();
    data.fill(0);
    let pb = bar(size, "read");
    let t0 = Instant::now();
    d.transfer(IoOp::Read, 0, &mut data, &mut |n| pb.inc(n))?;
    let read_s = t0.elapsed().as_secs_f64();
    pb.finish();

    step(5, "verifying");
    if let Some(pos) = data.iter().zip(&want).position(|(a, b)| a != b) {
        return Err(DemoError::Mismatch {
            pos,
            block: pos / id.block_size as usize,
            read: data[pos],
            wrote: want[pos],
        }
        .into());
    }
    println!("      all {} bytes read back equal what was written", size);

    step(6, "what the tunnel cost");
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
            (i * 7919 % (size / 4096)) * per_io,
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
    let mb = size as f64 / 1e6;
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
    tunnel.close()?;
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
