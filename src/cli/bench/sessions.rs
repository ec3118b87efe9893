//! `pcietun bench sessions`: what many hosts on one appliance cost (issue 11, "Scale"). A real
//! `pcietun appliance` process (so its memory and CPU time are its own, read from `/proc`)
//! serves up to `--sessions` host sessions over UDP on loopback; the hosts are host agents in
//! this process, each with its own key. The appliance holds one DMA-engine card per device
//! number (32, the most a bus has), each an SR-IOV physical function whose 7 VFs the appliance
//! pools, and gives VF *i* to host *i*: the first 224 sessions (the most functions one bus
//! holds once every PF is withheld for its VFs) own a function each and drive 4-byte MMIO
//! reads on it, all at once; sessions beyond 224 are connected and idle (keepalives only).
//! Measured at 1, 16 and the full count of sessions in one run: the
//! appliance's resident memory per session (over its resident memory with none), its CPU time
//! per TLP while the reads run, and the p50/p99 of the reads, as ratios to the single-session
//! figures of the same run.

use super::common::{write_json, Common, ReportHeader};
use super::error::BenchError;
use super::raw::{LinkKind, Res};
use super::rig::Net;
use super::stats::{ratio, Latency};
use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::CompletionMode;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::{HostConfig, RemoteFunction};
use pcietun::pci::class::dma_engine::{reg, ID_VALUE};
use pcietun::transport::SecretKey;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// Cards on the appliance: one per device number of its bus.
const CARDS: usize = 32;
/// Pooled VFs of each card: functions 1..=7 of its device number.
const VFS_PER_CARD: usize = 7;
/// Functions the hosts can own: every VF of every card.
const FUNCTIONS: usize = CARDS * VFS_PER_CARD;

/// Arguments of `pcietun bench sessions`.
#[derive(Debug, clap::Args)]
pub struct SessionsArgs {
    #[command(flatten)]
    common: Common,
    /// Host sessions at the last step (the steps are 1, 16 and this).
    #[arg(long, default_value_t = 256)]
    sessions: usize,
    /// MMIO reads each active session does per step.
    #[arg(long, default_value_t = 2_000)]
    reads: usize,
}

/// One step: `sessions` connected, `active` of them reading.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Step {
    sessions: usize,
    active: usize,
    /// The appliance's resident memory with these sessions up, KiB.
    rss_kib: u64,
    /// (rss_kib − the appliance's resident memory before any session) / sessions, KiB.
    rss_per_session_kib: f64,
    /// The appliance's CPU time (user + system) while the reads ran, per TLP it handled (each
    /// read is a request in and a completion out), µs.
    cpu_per_tlp_us: f64,
    /// Reads per second, all active sessions together.
    reads_per_s: f64,
    /// Every read of every active session.
    mmio_read: Latency,
    /// `mmio_read.p50_us` over the single-session step's.
    ratio_p50: f64,
    /// `mmio_read.p99_us` over the single-session step's.
    ratio_p99: f64,
    /// TLP retransmissions of all host sessions while the reads ran (a read whose request or
    /// completion waited past a retransmission timer: on loopback, a starved sender).
    host_retransmits: u64,
    /// Of those, retransmission timeouts (not fast retransmits).
    host_rto_expirations: u64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    header: Option<ReportHeader>,
    /// The appliance's resident memory before any session, KiB.
    rss_idle_kib: u64,
    steps: Vec<Step>,
}

/// The appliance child, killed when dropped.
struct ApplianceProc(Child);

impl Drop for ApplianceProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl ApplianceProc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> Res<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| BenchError::Unsupported(format!("no VmRSS in /proc/{pid}/status")).into())
}

/// User + system CPU time of `pid` so far.
fn cpu_time(pid: u32) -> Res<Duration> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = s.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // utime and stime are fields 14 and 15: indexes 11 and 12 after the state.
    let total = ticks(11) + ticks(12);
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        total.saturating_mul(1_000_000_000) / hz,
    ))
}

/// Start the appliance for `hosts` (their public keys) with [`CARDS`] cards of
/// [`VFS_PER_CARD`] pooled VFs each, VF *i* assigned to host *i*; returns it and its UDP
/// address.
fn start_appliance(
    dir: &Path,
    key: &SecretKey,
    hosts: &[SecretKey],
) -> Res<(ApplianceProc, String)> {
    key.write_new(&dir.join("appliance.key"))?;
    let mut config = String::from("listen = [\"udp:127.0.0.1:0\"]\nkey_file = \"appliance.key\"\n");
    for (i, k) in hosts.iter().enumerate() {
        config += &format!(
            "\n[[host]]\nid = \"h{i:03}\"\npublic_key = \"{}\"\n",
            k.public_key()
        );
    }
    let owned = FUNCTIONS.min(hosts.len());
    for c in 0..owned.div_ceil(VFS_PER_CARD) {
        config += &format!(
            "\n[[device]]\nkind = \"dma\"\nname = \"dma-{c:02}\"\nbuffer = \"4K\"\nvfs = {VFS_PER_CARD}\n"
        );
    }
    for i in 0..owned {
        let (c, v) = (i / VFS_PER_CARD, i % VFS_PER_CARD);
        config += &format!("\n[[assign]]\nfunction = \"dma-{c:02}.vf{v}\"\nhost = \"h{i:03}\"\n");
    }
    crate::pcietun_cli::demo::write_private(&dir.join("appliance.toml"), &config)?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["appliance", "--config"])
        .arg(dir.join("appliance.toml"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    for out in [
        Box::new(
            child
                .stdout
                .take()
                .ok_or(BenchError::NoSession("appliance stdout"))?,
        ) as Box<dyn std::io::Read + Send>,
        Box::new(
            child
                .stderr
                .take()
                .ok_or(BenchError::NoSession("appliance stderr"))?,
        ),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let child = ApplianceProc(child);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .map_err(|_| BenchError::NoSession("the appliance (no \"appliance ready\" line)"))?;
        if let Some(rest) = line.strip_prefix("appliance ready: listen udp:") {
            let addr = rest
                .split([';', ' '])
                .next()
                .unwrap_or_default()
                .to_string();
            // Keep draining its output so it never blocks on a full pipe.
            std::thread::spawn(move || while rx.recv().is_ok() {});
            return Ok((child, addr));
        }
    }
}

/// A connected host, and its card when it owns one.
struct Session {
    agent: Agent,
    card: Option<DmaEngineDriver>,
}

/// (retransmissions, retransmission timeouts) of every host session so far.
fn retransmits(sessions: &[Session]) -> (u64, u64) {
    let mut t = (0, 0);
    for s in sessions {
        for (_, st) in s.agent.transport_stats().sessions {
            t.0 += st.retransmits;
            t.1 += st.rto_expirations;
        }
    }
    t
}

fn connect(addr: &str, i: usize, key: SecretKey, appliance: &SecretKey) -> Res<Session> {
    let agent = Agent::connect(
        AgentConfig {
            target: Target::Udp(addr.parse()?),
            host_id: format!("h{i:03}"),
            key: Some(key),
            appliance_key: Some(appliance.public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(30),
    )?;
    let card = if i < FUNCTIONS {
        let deadline = Instant::now() + Duration::from_secs(20);
        let info = loop {
            if let Some(f) = agent
                .host()
                .functions()
                .into_iter()
                .find(|f| f.class >> 8 == 0x0880)
            {
                break f;
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Enumeration { found: 0, want: 1 }.into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let f: RemoteFunction = agent
            .host()
            .open(info.bdf)
            .ok_or(BenchError::Vanished(info.bdf))?;
        let d = DmaEngineDriver::open(f, 4096, CompletionMode::Poll)?;
        // One tiny transfer: the card is really this host's, both ways.
        d.host_buffer().write_at(0, &[0x5a; 64])?;
        d.transfer(Direction::DmaRead, 0, 0, 64)?;
        Some(d)
    } else {
        None
    };
    Ok(Session { agent, card })
}

/// `reads` timed ID-register reads on `f`.
fn read_loop(f: &RemoteFunction, reads: usize) -> Res<Vec<Duration>> {
    let mut s = Vec::with_capacity(reads);
    for _ in 0..reads {
        let t0 = Instant::now();
        let v = f.bar_read32(0, reg::ID)?;
        s.push(t0.elapsed());
        if v != ID_VALUE {
            return Err(BenchError::MmioValue {
                got: v,
                want: ID_VALUE,
            }
            .into());
        }
    }
    Ok(s)
}

/// Every active session reads at once; all samples, and the wall time.
fn read_all(sessions: &[Session], reads: usize) -> Res<(Vec<Duration>, Duration)> {
    let t0 = Instant::now();
    let results: Vec<Result<Vec<Duration>, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .iter()
            .filter_map(|x| x.card.as_ref())
            .map(|c| s.spawn(move || read_loop(c.function(), reads).map_err(|e| e.to_string())))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(BenchError::ThreadPanicked("reader").to_string()))
            })
            .collect()
    });
    let wall = t0.elapsed();
    let mut all = Vec::new();
    for r in results {
        all.extend(r.map_err(BenchError::Worker)?);
    }
    Ok((all, wall))
}

/// `pcietun bench sessions`.
pub fn run(a: SessionsArgs) -> Res<ExitCode> {
    let c = &a.common;
    if c.link != LinkKind::Udp || c.busy_poll || c.loss > 0.0 {
        return Err(BenchError::Unsupported(
            "bench sessions runs over UDP on loopback, blocking, without injected loss \
             (the appliance is a child process with its defaults)"
                .into(),
        )
        .into());
    }
    let max = a.sessions.clamp(1, 1024);
    let reads = if c.quick { 100 } else { a.reads.max(100) };
    let mut counts: Vec<usize> = [1, 16, max].into_iter().filter(|&n| n <= max).collect();
    counts.dedup();
    let net = Net::create(LinkKind::Udp)?;
    // One run: the steps build on each other (the sessions of a step stay for the next).
    let once = Common {
        runs: 1,
        ..c.clone()
    };
    let header = ReportHeader::new("sessions", &once, &net);

    let dir = tempfile::tempdir()?;
    let app_key = SecretKey::generate();
    let keys: Vec<SecretKey> = (0..max).map(|_| SecretKey::generate()).collect();
    let (app, addr) = start_appliance(dir.path(), &app_key, &keys)?;
    // Let it settle, then its footprint with no session.
    std::thread::sleep(Duration::from_millis(300));
    let rss_idle = rss_kib(app.pid())?;
    let mut report = Report {
        rss_idle_kib: rss_idle,
        ..Report::default()
    };
    let mut sessions: Vec<Session> = Vec::with_capacity(max);
    let mut keys = keys.into_iter();
    for &n in &counts {
        eprintln!("sessions: connecting up to {n}…");
        while sessions.len() < n {
            let i = sessions.len();
            let k = keys.next().ok_or(BenchError::NoSession("host key"))?;
            sessions.push(
                connect(&addr, i, k, &app_key)
                    .map_err(|e| BenchError::Worker(format!("session {} of {n}: {e}", i + 1)))?,
            );
            if (i + 1) % 32 == 0 {
                eprintln!("sessions: {} connected", i + 1);
            }
        }
        // Sessions settle (handshakes, enumeration, first keepalives) before measuring.
        std::thread::sleep(Duration::from_millis(500));
        let rss = rss_kib(app.pid())?;
        let active = sessions.iter().filter(|s| s.card.is_some()).count();
        eprintln!("sessions: {n} up, {active} reading ({reads} reads each)…");
        let cpu0 = cpu_time(app.pid())?;
        let rtx0 = retransmits(&sessions);
        let (mut samples, wall) = read_all(&sessions, reads).inspect_err(|_| {
            let rtx = retransmits(&sessions);
            eprintln!(
                "sessions: the step failed; host retransmissions meanwhile: {} ({} timeouts)",
                rtx.0.saturating_sub(rtx0.0),
                rtx.1.saturating_sub(rtx0.1)
            );
        })?;
        let cpu = cpu_time(app.pid())?.saturating_sub(cpu0);
        let rtx = retransmits(&sessions);
        let tlps = 2 * samples.len() as u64;
        report.steps.push(Step {
            sessions: n,
            active,
            rss_kib: rss,
            rss_per_session_kib: rss.saturating_sub(rss_idle) as f64 / n as f64,
            cpu_per_tlp_us: cpu.as_secs_f64() * 1e6 / tlps.max(1) as f64,
            reads_per_s: samples.len() as f64 / wall.as_secs_f64().max(1e-9),
            mmio_read: Latency::from_samples(&mut samples),
            host_retransmits: rtx.0.saturating_sub(rtx0.0),
            host_rto_expirations: rtx.1.saturating_sub(rtx0.1),
            ..Step::default()
        });
    }
    let (b50, b99) = report
        .steps
        .first()
        .map(|s| (s.mmio_read.p50_us, s.mmio_read.p99_us))
        .unwrap_or_default();
    for s in &mut report.steps {
        s.ratio_p50 = ratio(s.mmio_read.p50_us, b50);
        s.ratio_p99 = ratio(s.mmio_read.p99_us, b99);
    }
    drop(sessions);
    drop(app);

    header.print();
    println!(
        "one appliance process, {max} host agents in this process over UDP on 127.0.0.1; \
         {CARDS} DMA-engine cards with {VFS_PER_CARD} pooled VFs each, VF i owned by host i; \
         sessions beyond {FUNCTIONS} are idle"
    );
    println!(
        "appliance resident memory with no session: {:.1} MiB; baseline: the 1-session step",
        rss_idle as f64 / 1024.0
    );
    println!(
        "{:>8} {:>6} {:>9} {:>12} {:>10} {:>11} {:>9} {:>9} {:>7} {:>7} {:>8} {:>6}",
        "sessions",
        "active",
        "RSS MiB",
        "KiB/session",
        "CPU µs/TLP",
        "reads/s",
        "p50 µs",
        "p99 µs",
        "p50 ×",
        "p99 ×",
        "retrans",
        "RTOs"
    );
    for s in &report.steps {
        println!(
            "{:>8} {:>6} {:>9.1} {:>12.1} {:>10.2} {:>11.0} {:>9.1} {:>9.1} {:>7.2} {:>7.2} {:>8} {:>6}",
            s.sessions,
            s.active,
            s.rss_kib as f64 / 1024.0,
            s.rss_per_session_kib,
            s.cpu_per_tlp_us,
            s.reads_per_s,
            s.mmio_read.p50_us,
            s.mmio_read.p99_us,
            s.ratio_p50,
            s.ratio_p99,
            s.host_retransmits,
            s.host_rto_expirations
        );
    }
    report.header = Some(header);
    write_json(c, &report)?;
    Ok(ExitCode::SUCCESS)
}
