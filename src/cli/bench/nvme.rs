//! `pcietun bench nvme`: 4 KiB random reads and writes at queue depth 1 and 32 through the
//! project's user-space NVMe driver (`pcietun::drivers::nvme`) against the NVMe controller on
//! the appliance: IOPS and per-command latency. Raw baseline on the same path: a 64-byte
//! ping-pong (what QD1 latency is compared with) and a blast of frame-sized datagrams, from
//! which the packet rate allows `raw_iops_bound` exchanges of 4 KiB per second (4 KiB of data
//! in ⌈4096 / 1472⌉ frames plus one frame for the command). Also 128 KiB sequential reads
//! and writes at QD16 (`seq_rows`), and with `--peer nbd` the same workloads against nbdkit +
//! fio in the same run (`peer.rs`), with ours as ratios to it. CPU seconds per GB moved come
//! from getrusage(2): this process (host agent and appliance) for ours, the reaped nbdkit and
//! fio for the peer.

use super::common::{median, median_latency, write_json, Common, ReportHeader};
use super::error::BenchError;
use super::mmio::RAW_SMALL;
use super::peer::{self, Job, NbdPeer, PeerKind, PeerResult};
use super::raw::{raw_blast_best, raw_rtt_samples, Blast, Res};
use super::rig::{Net, Rig};
use super::stats::{ratio, Latency};
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::sys::process::{cpu_time, Usage};
use rand::{Rng, SeedableRng};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const NS_BYTES: u64 = 64 << 20;
const IO: usize = 4096;
/// Block size and depth of the sequential workloads.
const SEQ_IO: usize = 128 * 1024;
const SEQ_QD: usize = 16;

/// Arguments of `pcietun bench nvme`.
#[derive(Debug, clap::Args)]
pub struct NvmeArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds per workload per run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// The deep queue's depth.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Poll the completion queue instead of waiting for MSI-X.
    #[arg(long)]
    poll: bool,
    /// Also measure a peer on the same workloads in the same run (`nbd`: nbdkit's file
    /// plugin over TCP on 127.0.0.1, driven by fio's nbd engine).
    #[arg(long, value_enum, default_value = "none")]
    peer: PeerKind,
    /// Instead of the figures: trace N commands of 4 KiB random read and write at QD1 with
    /// the event probes and print where each command's time goes (`trace.rs`).
    #[arg(long, value_name = "N")]
    trace: Option<usize>,
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Row {
    op: &'static str,
    /// Bytes per command.
    bs: usize,
    qd: usize,
    iops: f64,
    /// Payload bytes per second (iops × bs).
    bytes_per_s: f64,
    latency: Latency,
    /// CPU seconds (user + system, both ends) per GB moved.
    cpu_s_per_gb: f64,
    ratio_iops_vs_raw_bound: f64,
    ratio_p50_vs_raw_ping_pong: f64,
    lossy_iops: Option<f64>,
    lossy_latency: Option<Latency>,
    ratio_lossy_vs_lossless: Option<f64>,
    /// The peer on the same workload (`--peer`).
    peer: Option<PeerResult>,
    /// Ours ÷ peer: IOPS, and p50 latency (lower is better for us).
    ratio_iops_vs_peer: Option<f64>,
    ratio_p50_vs_peer: Option<f64>,
    ratio_cpu_vs_peer: Option<f64>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    header: Option<ReportHeader>,
    io_bytes: usize,
    raw_ping_pong: Latency,
    raw_datagrams_per_s: f64,
    /// Bytes of the raw blast's datagrams (our frame size on this path).
    raw_frame_bytes: usize,
    /// Which raw variant was the baseline: `plain sendto` or `GSO/GRO` (the faster).
    raw_blast_variant: &'static str,
    raw_frames_per_io: usize,
    raw_iops_bound: f64,
    rows: Vec<Row>,
    /// 128 KiB sequential read and write at QD16.
    seq_rows: Vec<Row>,
    /// QD32 random-read IOPS ÷ raw_iops_bound (the goal's figure).
    ratio_iops_qd32: f64,
    lossy_retransmits: Option<u64>,
    /// `none` or `nbd`.
    peer: PeerKind,
    /// The peer, in words (`None` without `--peer`).
    peer_path: Option<String>,
    /// Why the peer was not measured (its tools are missing).
    peer_missing: Option<String>,
}

/// One workload: what, how big, how deep, random or sequential.
#[derive(Debug, Clone, Copy)]
struct Work {
    op: IoOp,
    io: usize,
    qd: usize,
    seq: bool,
}

impl Work {
    fn name(&self) -> &'static str {
        match (self.op, self.seq) {
            (IoOp::Read, false) => "randread",
            (IoOp::Write, false) => "randwrite",
            (IoOp::Read, true) => "seqread",
            (IoOp::Write, true) => "seqwrite",
        }
    }

    /// The same workload for fio.
    fn fio(&self) -> Job {
        Job {
            rw: match (self.op, self.seq) {
                (IoOp::Read, false) => "randread",
                (IoOp::Write, false) => "randwrite",
                (IoOp::Read, true) => "read",
                (IoOp::Write, true) => "write",
            },
            bs: self.io,
            qd: self.qd,
        }
    }
}

/// `w` for `secs`: IOPS, latency samples and CPU seconds used by this process (both ends).
fn workload(d: &mut NvmeDriver, w: Work, secs: f64, seed: u64) -> Res<(f64, Vec<Duration>, f64)> {
    let (op, qd, io) = (w.op, w.qd, w.io);
    let bs = d.info().block_size as u64;
    let per_io = io as u64 / bs;
    let ios = NS_BYTES.min(d.info().blocks * bs) / io as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut next = 0u64;
    let mut pattern = vec![0u8; io];
    let mut samples = Vec::with_capacity(200_000);
    let mut errors = 0u64;
    let mut submit = |d: &mut NvmeDriver, rng: &mut rand::rngs::StdRng| -> Res<()> {
        let Some(slot) = d.take_slot() else {
            return Ok(());
        };
        let lba = if w.seq {
            next = (next + 1) % ios;
            next * per_io
        } else {
            rng.gen_range(0..ios) * per_io
        };
        if op == IoOp::Write {
            pattern[..8].copy_from_slice(&lba.to_le_bytes());
            d.fill_slot(slot, &pattern)?;
        }
        d.submit(slot, op, lba, per_io as u32)?;
        Ok(())
    };
    let t0 = Instant::now();
    let mut done = 0u64;
    let mut warm = true;
    let mut tm = t0;
    let mut cpu0 = cpu_time(Usage::This)?;
    loop {
        while d.in_flight() < qd.min(d.depth()) {
            submit(d, &mut rng)?;
        }
        let now = Instant::now();
        if warm && now.duration_since(t0).as_secs_f64() > secs / 10.0 {
            warm = false;
            tm = now;
            done = 0;
            samples.clear();
            cpu0 = cpu_time(Usage::This)?;
        }
        if !warm && now.duration_since(tm).as_secs_f64() >= secs {
            break;
        }
        d.wait(&mut |c| {
            if !c.status.is_success() {
                errors += 1;
            }
            done += 1;
            samples.push(c.latency);
        })?;
    }
    let dt = tm.elapsed().as_secs_f64();
    let cpu = cpu_time(Usage::This)?.saturating_sub(cpu0).as_secs_f64();
    while d.in_flight() > 0 {
        d.wait(&mut |_| {})?;
    }
    if errors > 0 {
        return Err(BenchError::NvmeErrors(errors).into());
    }
    let gb = done as f64 * io as f64 / 1e9;
    Ok((
        done as f64 / dt,
        samples,
        if gb > 0.0 { cpu / gb } else { 0.0 },
    ))
}

fn open(rig: &Rig, qd: usize, poll: bool) -> Res<NvmeDriver> {
    let f = rig.open(0x0108)?;
    Ok(NvmeDriver::open(
        f,
        NvmeConfig {
            depth: qd.max(1),
            completion: if poll {
                CompletionMode::Poll
            } else {
                CompletionMode::Interrupt
            },
            ..NvmeConfig::default()
        },
    )?)
}

/// Write a block, read it back: the driver moves real data.
fn verify(d: &mut NvmeDriver) -> Res<()> {
    let mut data: Vec<u8> = (0..2 * IO).map(|i| (i * 7 + 3) as u8).collect();
    let want = data.clone();
    d.transfer(IoOp::Write, 8, &mut data, &mut |_| {})?;
    let mut back = vec![0u8; 2 * IO];
    d.transfer(IoOp::Read, 8, &mut back, &mut |_| {})?;
    if back != want {
        return Err(BenchError::DataMismatch("NVMe").into());
    }
    Ok(())
}

/// Median of each figure of `runs` for workload `w`.
fn row(w: Work, runs: &[(f64, Latency, f64)], peers: &[PeerResult]) -> Row {
    let iops = median(runs.iter().map(|x| x.0).collect());
    let lats: Vec<Latency> = runs.iter().map(|x| x.1).collect();
    let latency = median_latency(&lats);
    let cpu = median(runs.iter().map(|x| x.2).collect());
    let peer = (!peers.is_empty()).then(|| {
        let lats: Vec<Latency> = peers.iter().map(|p| p.latency).collect();
        PeerResult {
            iops: median(peers.iter().map(|p| p.iops).collect()),
            bytes_per_s: median(peers.iter().map(|p| p.bytes_per_s).collect()),
            latency: median_latency(&lats),
            cpu_s_per_gb: median(peers.iter().map(|p| p.cpu_s_per_gb).collect()),
        }
    });
    Row {
        op: w.name(),
        bs: w.io,
        qd: w.qd,
        iops,
        bytes_per_s: iops * w.io as f64,
        latency,
        cpu_s_per_gb: cpu,
        ratio_iops_vs_peer: peer.map(|p| ratio(iops, p.iops)),
        ratio_p50_vs_peer: peer.map(|p| ratio(latency.p50_us, p.latency.p50_us)),
        ratio_cpu_vs_peer: peer.map(|p| ratio(cpu, p.cpu_s_per_gb)),
        peer,
        ..Row::default()
    }
}

/// Exactly `n` commands of `op` at QD1, 4 KiB at random LBAs.
fn qd1(d: &mut NvmeDriver, op: IoOp, n: usize, seed: u64) -> Res<()> {
    let bs = d.info().block_size as u64;
    let per_io = IO as u64 / bs;
    let ios = NS_BYTES.min(d.info().blocks * bs) / IO as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let pattern = vec![0x5au8; IO];
    let mut errors = 0u64;
    for _ in 0..n {
        let slot = d.take_slot().ok_or("no free slot at QD1")?;
        if op == IoOp::Write {
            d.fill_slot(slot, &pattern)?;
        }
        d.submit(slot, op, rng.gen_range(0..ios) * per_io, per_io as u32)?;
        while d.in_flight() > 0 {
            d.wait(&mut |c| errors += u64::from(!c.status.is_success()))?;
        }
    }
    if errors > 0 {
        return Err(BenchError::NvmeErrors(errors).into());
    }
    Ok(())
}

/// `pcietun bench nvme --trace N`.
fn run_trace(a: &NvmeArgs, n: usize) -> Res<ExitCode> {
    let c = &a.common;
    let net = Net::create(c.link)?;
    let header = ReportHeader::new("nvme", c, &net);
    let rig = Rig::start(&net, &c.rig(NS_BYTES, 0))?;
    // The depth the figures use (QD1 is one command in flight on it).
    let mut d = open(&rig, a.qd.max(SEQ_QD), a.poll)?;
    verify(&mut d)?;
    header.print();
    for (op, name) in [
        (IoOp::Read, "4 KiB randread"),
        (IoOp::Write, "4 KiB randwrite"),
    ] {
        qd1(&mut d, op, 200, 1)?;
        let t = super::trace::record(n, || qd1(&mut d, op, n, 2))?;
        super::trace::report(name, &t);
    }
    d.shutdown()?;
    Ok(ExitCode::SUCCESS)
}

/// `pcietun bench nvme`.
pub fn run(a: NvmeArgs) -> Res<ExitCode> {
    if let Some(n) = a.trace {
        return run_trace(&a, n.max(1));
    }
    let c = &a.common;
    let secs = if c.quick { 0.3 } else { a.secs.max(0.1) };
    let iters = if c.quick { 500 } else { 10_000 };
    let net = Net::create(c.link)?;
    let header = ReportHeader::new("nvme", c, &net);
    let rand = |op, qd| Work {
        op,
        io: IO,
        qd,
        seq: false,
    };
    let seq = |op| Work {
        op,
        io: SEQ_IO,
        qd: SEQ_QD,
        seq: true,
    };
    let workloads = [
        rand(IoOp::Read, 1),
        rand(IoOp::Read, a.qd),
        rand(IoOp::Write, 1),
        rand(IoOp::Write, a.qd),
        seq(IoOp::Read),
        seq(IoOp::Write),
    ];
    let depth = a.qd.max(SEQ_QD);
    let peer_missing = match a.peer {
        PeerKind::None => None,
        PeerKind::Nbd => peer::missing_tools(),
    };
    if let Some(why) = &peer_missing {
        eprintln!("nvme: the NBD peer cannot run: {why}");
        if std::env::var("PCIETUN_REQUIRE_ALL").as_deref() == Ok("1") {
            return Err(BenchError::PeerMissing(why.clone()).into());
        }
    }
    let nbd = match (a.peer, &peer_missing) {
        (PeerKind::Nbd, None) => Some(NbdPeer::new(NS_BYTES)?),
        _ => None,
    };
    let (mut pings, mut blasts) = (Vec::new(), Vec::new());
    let frame = net.frame(c.mtu)?;
    let mut blast = Blast::default();
    let mut ours: Vec<Vec<(f64, Latency, f64)>> = vec![Vec::new(); workloads.len()];
    let mut peers: Vec<Vec<PeerResult>> = vec![Vec::new(); workloads.len()];
    for run in 0..c.runs() {
        eprintln!(
            "nvme run {}/{}: raw ping-pong and blast…",
            run + 1,
            c.runs()
        );
        let (p, q) = net.ports_with(false)?;
        let mut s = raw_rtt_samples(p, q, RAW_SMALL, iters, c.busy_poll);
        pings.push(Latency::from_samples(&mut s));
        blast = raw_blast_best(|o| net.ports_with(o), frame, secs, c.busy_poll)?;
        blasts.push(blast.best.msgs_per_s);
        eprintln!("nvme run {}/{}: ours…", run + 1, c.runs());
        let rig = Rig::start(&net, &c.rig(NS_BYTES, 0))?;
        let mut d = open(&rig, depth, a.poll)?;
        verify(&mut d)?;
        for (i, &w) in workloads.iter().enumerate() {
            let (iops, mut s, cpu) = workload(&mut d, w, secs, run as u64 * 10 + i as u64)?;
            ours[i].push((iops, Latency::from_samples(&mut s), cpu));
        }
        d.shutdown()?;
        drop(rig);
        if let Some(p) = &nbd {
            eprintln!("nvme run {}/{}: peer (nbdkit + fio)…", run + 1, c.runs());
            for (i, w) in workloads.iter().enumerate() {
                peers[i].push(p.run(w.fio(), secs)?);
            }
        }
    }
    let frames = IO.div_ceil(frame) + 1;
    let mut r = Report {
        io_bytes: IO,
        raw_ping_pong: median_latency(&pings),
        raw_datagrams_per_s: median(blasts),
        raw_frames_per_io: frames,
        raw_frame_bytes: frame,
        raw_blast_variant: blast.variant,
        peer: a.peer,
        peer_path: nbd
            .as_ref()
            .map(|_| "nbdkit file plugin over TCP on 127.0.0.1, fio --ioengine=nbd".to_string()),
        peer_missing,
        ..Report::default()
    };
    r.raw_iops_bound = r.raw_datagrams_per_s / frames as f64;
    for (i, &w) in workloads.iter().enumerate() {
        let mut x = row(w, &ours[i], &peers[i]);
        if w.seq {
            r.seq_rows.push(x);
            continue;
        }
        x.ratio_iops_vs_raw_bound = ratio(x.iops, r.raw_iops_bound);
        x.ratio_p50_vs_raw_ping_pong = ratio(x.latency.p50_us, r.raw_ping_pong.p50_us);
        r.rows.push(x);
    }
    r.ratio_iops_qd32 = r
        .rows
        .iter()
        .find(|x| x.op == "randread" && x.qd == a.qd)
        .map_or(0.0, |x| x.ratio_iops_vs_raw_bound);
    if c.loss > 0.0 {
        eprintln!("nvme: ours at {} % injected loss…", c.loss);
        let mut cfg = c.rig(NS_BYTES, 0);
        cfg.loss = c.loss / 100.0;
        let rig = Rig::start(&net, &cfg)?;
        let mut d = open(&rig, depth, a.poll)?;
        verify(&mut d)?;
        for (i, &w) in workloads.iter().enumerate() {
            let (iops, mut s, _) = workload(&mut d, w, secs, 99 + i as u64)?;
            let row = if w.seq {
                &mut r.seq_rows[i - r.rows.len()]
            } else {
                &mut r.rows[i]
            };
            row.lossy_iops = Some(iops);
            row.lossy_latency = Some(Latency::from_samples(&mut s));
            row.ratio_lossy_vs_lossless = Some(ratio(iops, row.iops));
        }
        r.lossy_retransmits = Some(rig.retransmits());
        d.shutdown()?;
    }
    header.print();
    println!(
        "raw path: ping-pong p50 {:.1} µs / p99 {:.1} µs (plain sockets); {:.0} datagrams/s of {frame} B → {:.0} 4 KiB exchanges/s ({} frames each); blast {} (last run)",
        r.raw_ping_pong.p50_us, r.raw_ping_pong.p99_us, r.raw_datagrams_per_s, r.raw_iops_bound, frames,
        blast.describe()
    );
    match (&r.peer_path, &r.peer_missing) {
        (Some(p), _) => println!("peer: {p} (same file size, block sizes and depths)"),
        (None, Some(why)) => println!("peer: NOT MEASURED — {why}"),
        _ => {}
    }
    println!(
        "{:<10} {:>7} {:>4} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>8}",
        "workload",
        "bs",
        "QD",
        "IOPS",
        "MB/s",
        "p50 µs",
        "p99 µs",
        "CPU s/GB",
        "IOPS/bound",
        "p50/raw"
    );
    for x in r.rows.iter().chain(&r.seq_rows) {
        let bound = if x.bs == IO {
            format!(
                "{:>10.2} {:>8.2}",
                x.ratio_iops_vs_raw_bound, x.ratio_p50_vs_raw_ping_pong
            )
        } else {
            format!("{:>10} {:>8}", "", "")
        };
        println!(
            "{:<10} {:>7} {:>4} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>8.2} {bound}{}",
            x.op,
            x.bs,
            x.qd,
            x.iops,
            x.bytes_per_s / 1e6,
            x.latency.p50_us,
            x.latency.p99_us,
            x.cpu_s_per_gb,
            match (x.lossy_iops, x.lossy_latency) {
                (Some(i), Some(l)) => format!("   lossy: {i:.0} IOPS, p99 {:.1} µs", l.p99_us),
                _ => String::new(),
            }
        );
        if let Some(p) = &x.peer {
            println!(
                "{:<10} {:>7} {:>4} {:>9.0} {:>9.1} {:>9.1} {:>9.1} {:>8.2}   ours ÷ peer: IOPS {:.2}, p50 {:.2}, CPU/GB {:.2}",
                "  peer",
                x.bs,
                x.qd,
                p.iops,
                p.bytes_per_s / 1e6,
                p.latency.p50_us,
                p.latency.p99_us,
                p.cpu_s_per_gb,
                x.ratio_iops_vs_peer.unwrap_or(0.0),
                x.ratio_p50_vs_peer.unwrap_or(0.0),
                x.ratio_cpu_vs_peer.unwrap_or(0.0),
            );
        }
    }
    println!(
        "QD{} random-read IOPS vs raw bound: {:.2} (goal ≥ 0.7)",
        a.qd, r.ratio_iops_qd32
    );
    r.header = Some(header);
    write_json(c, &r)?;
    Ok(ExitCode::SUCCESS)
}
