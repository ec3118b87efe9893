//! `pcietun bench nvme`: 4 KiB random reads and writes at queue depth 1 and 32 through the
//! project's user-space NVMe driver (`pcietun::drivers::nvme`) against the NVMe controller on
//! the appliance: IOPS and per-command latency. Raw baseline on the same path: a 64-byte
//! ping-pong (what QD1 latency is compared with) and a blast of frame-sized datagrams, from
//! which the packet rate allows `raw_iops_bound` exchanges of 4 KiB per second (4 KiB of data
//! in ⌈4096 / 1472⌉ frames plus one frame for the command).

use super::common::{median, median_latency, write_json, Common, ReportHeader};
use super::dma::RAW_FRAME;
use super::error::BenchError;
use super::mmio::RAW_SMALL;
use super::raw::{raw_blast, raw_rtt_samples, Res};
use super::rig::{Net, Rig};
use super::stats::{ratio, Latency};
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use rand::{Rng, SeedableRng};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const NS_BYTES: u64 = 64 << 20;
const IO: usize = 4096;

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
}

#[derive(Debug, Default, Clone, serde::Serialize)]
struct Row {
    op: &'static str,
    qd: usize,
    iops: f64,
    latency: Latency,
    ratio_iops_vs_raw_bound: f64,
    ratio_p50_vs_raw_ping_pong: f64,
    lossy_iops: Option<f64>,
    lossy_latency: Option<Latency>,
    ratio_lossy_vs_lossless: Option<f64>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    header: Option<ReportHeader>,
    io_bytes: usize,
    raw_ping_pong: Latency,
    raw_datagrams_per_s: f64,
    raw_frames_per_io: usize,
    raw_iops_bound: f64,
    rows: Vec<Row>,
    /// QD32 random-read IOPS ÷ raw_iops_bound (the goal's figure).
    ratio_iops_qd32: f64,
    lossy_retransmits: Option<u64>,
}

/// Random 4 KiB I/O at depth `qd` for `secs`: IOPS and latency samples.
fn workload(
    d: &mut NvmeDriver,
    op: IoOp,
    qd: usize,
    secs: f64,
    seed: u64,
) -> Res<(f64, Vec<Duration>)> {
    let bs = d.info().block_size as u64;
    let per_io = IO as u64 / bs;
    let ios = NS_BYTES.min(d.info().blocks * bs) / IO as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pattern = [0u8; IO];
    let mut samples = Vec::with_capacity(200_000);
    let mut errors = 0u64;
    let mut submit = |d: &mut NvmeDriver, rng: &mut rand::rngs::StdRng| -> Res<()> {
        let Some(slot) = d.take_slot() else {
            return Ok(());
        };
        let lba = rng.gen_range(0..ios) * per_io;
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
    while d.in_flight() > 0 {
        d.wait(&mut |_| {})?;
    }
    if errors > 0 {
        return Err(BenchError::NvmeErrors(errors).into());
    }
    Ok((done as f64 / dt, samples))
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

/// `pcietun bench nvme`.
pub fn run(a: NvmeArgs) -> Res<ExitCode> {
    let c = &a.common;
    let secs = if c.quick { 0.3 } else { a.secs.max(0.1) };
    let iters = if c.quick { 500 } else { 10_000 };
    let net = Net::create(c.link)?;
    let header = ReportHeader::new("nvme", c, &net);
    let workloads = [
        (IoOp::Read, 1),
        (IoOp::Read, a.qd),
        (IoOp::Write, 1),
        (IoOp::Write, a.qd),
    ];
    let (mut pings, mut blasts) = (Vec::new(), Vec::new());
    let mut ours: Vec<Vec<(f64, Latency)>> = vec![Vec::new(); workloads.len()];
    for run in 0..c.runs() {
        eprintln!(
            "nvme run {}/{}: raw ping-pong and blast…",
            run + 1,
            c.runs()
        );
        let (p, q) = net.ports()?;
        let mut s = raw_rtt_samples(p, q, RAW_SMALL, iters, c.busy_poll);
        pings.push(Latency::from_samples(&mut s));
        let (p, q) = net.ports()?;
        blasts.push(raw_blast(p, q, RAW_FRAME, secs).msgs_per_s);
        eprintln!("nvme run {}/{}: ours…", run + 1, c.runs());
        let rig = Rig::start(&net, &c.rig(NS_BYTES, 0))?;
        let mut d = open(&rig, a.qd, a.poll)?;
        verify(&mut d)?;
        for (i, &(op, qd)) in workloads.iter().enumerate() {
            let (iops, mut s) = workload(&mut d, op, qd, secs, run as u64 * 10 + i as u64)?;
            ours[i].push((iops, Latency::from_samples(&mut s)));
        }
        d.shutdown()?;
    }
    let frames = IO.div_ceil(RAW_FRAME) + 1;
    let mut r = Report {
        io_bytes: IO,
        raw_ping_pong: median_latency(&pings),
        raw_datagrams_per_s: median(blasts),
        raw_frames_per_io: frames,
        ..Report::default()
    };
    r.raw_iops_bound = r.raw_datagrams_per_s / frames as f64;
    for (i, &(op, qd)) in workloads.iter().enumerate() {
        let iops = median(ours[i].iter().map(|x| x.0).collect());
        let lats: Vec<Latency> = ours[i].iter().map(|x| x.1).collect();
        let latency = median_latency(&lats);
        r.rows.push(Row {
            op: if op == IoOp::Read {
                "randread"
            } else {
                "randwrite"
            },
            qd,
            iops,
            latency,
            ratio_iops_vs_raw_bound: ratio(iops, r.raw_iops_bound),
            ratio_p50_vs_raw_ping_pong: ratio(latency.p50_us, r.raw_ping_pong.p50_us),
            ..Row::default()
        });
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
        let mut d = open(&rig, a.qd, a.poll)?;
        verify(&mut d)?;
        for (i, &(op, qd)) in workloads.iter().enumerate() {
            let (iops, mut s) = workload(&mut d, op, qd, secs, 99 + i as u64)?;
            let row = &mut r.rows[i];
            row.lossy_iops = Some(iops);
            row.lossy_latency = Some(Latency::from_samples(&mut s));
            row.ratio_lossy_vs_lossless = Some(ratio(iops, row.iops));
        }
        r.lossy_retransmits = Some(rig.retransmits());
        d.shutdown()?;
    }
    header.print();
    println!(
        "raw path: ping-pong p50 {:.1} µs / p99 {:.1} µs; {:.0} datagrams/s of {RAW_FRAME} B → {:.0} 4 KiB exchanges/s ({} frames each)",
        r.raw_ping_pong.p50_us, r.raw_ping_pong.p99_us, r.raw_datagrams_per_s, r.raw_iops_bound, frames
    );
    println!(
        "{:<10} {:>4} {:>10} {:>10} {:>10} {:>10} {:>11} {:>11}",
        "4 KiB", "QD", "IOPS", "p50 µs", "p99 µs", "p99.9 µs", "IOPS/bound", "p50/raw"
    );
    for x in &r.rows {
        println!(
            "{:<10} {:>4} {:>10.0} {:>10.1} {:>10.1} {:>10.1} {:>11.2} {:>11.2}{}",
            x.op,
            x.qd,
            x.iops,
            x.latency.p50_us,
            x.latency.p99_us,
            x.latency.p999_us,
            x.ratio_iops_vs_raw_bound,
            x.ratio_p50_vs_raw_ping_pong,
            match (x.lossy_iops, x.lossy_latency) {
                (Some(i), Some(l)) => format!("   lossy: {i:.0} IOPS, p99 {:.1} µs", l.p99_us),
                _ => String::new(),
            }
        );
    }
    println!(
        "QD{} random-read IOPS vs raw bound: {:.2} (goal ≥ 0.7)",
        a.qd, r.ratio_iops_qd32
    );
    r.header = Some(header);
    write_json(c, &r)?;
    Ok(ExitCode::SUCCESS)
}
