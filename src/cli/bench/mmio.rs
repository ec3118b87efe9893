//! `pcietun bench mmio-read` and `mmio-write`: what a driver feels on register access through
//! the tunnel. mmio-read times 4-byte MRd round trips (the DMA engine's ID register: the host
//! requester, the transport both ways, the endpoint proxy, the device, the completion) against
//! a raw 64-byte ping-pong on the same path. mmio-write counts posted 4-byte MWr per second
//! (ended by one read, which PCIe ordering keeps behind every write) against raw datagrams of
//! the same size per second.

use super::common::{median, median_latency, write_json, Common, ReportHeader};
use super::error::BenchError;
use super::raw::{raw_blast_best, raw_rtt_samples, Res};
use super::rig::{Net, Rig, RigConfig};
use super::stats::{ratio, Latency};
use pcietun::host::RemoteFunction;
use pcietun::pci::class::dma_engine::{reg, ID_VALUE};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Bytes of the raw ping and blast datagrams: about one transport frame carrying one small TLP.
pub const RAW_SMALL: usize = 64;

/// Arguments of `pcietun bench mmio-read` / `mmio-write`.
#[derive(Debug, clap::Args)]
pub struct MmioArgs {
    #[command(flatten)]
    common: Common,
    /// Samples per run (round trips, or posted writes).
    #[arg(long, default_value_t = 20_000)]
    iters: usize,
}

#[derive(Debug, Default, serde::Serialize)]
struct ReadReport {
    header: Option<ReportHeader>,
    raw_ping_pong: Latency,
    ours: Latency,
    ratio_p50: f64,
    ratio_p99: f64,
    ratio_p999: f64,
    ours_no_transport: Latency,
    ratio_p50_no_transport: f64,
    ours_lossy: Option<Latency>,
    lossy_retransmits: Option<u64>,
}

fn dma_rig(net: &Net, cfg: &RigConfig) -> Res<(Rig, RemoteFunction)> {
    let rig = Rig::start(net, cfg)?;
    let f = rig.open(0x0880)?;
    Ok((rig, f))
}

fn reads(f: &RemoteFunction, iters: usize) -> Res<Vec<Duration>> {
    let mut s = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let t0 = Instant::now();
        let v = f.bar_read32(0, reg::ID)?;
        let dt = t0.elapsed();
        if v != ID_VALUE {
            return Err(BenchError::MmioValue {
                got: v,
                want: ID_VALUE,
            }
            .into());
        }
        if i >= iters / 10 {
            s.push(dt);
        }
    }
    Ok(s)
}

/// `pcietun bench mmio-read`.
pub fn run_read(a: MmioArgs) -> Res<ExitCode> {
    let c = &a.common;
    let iters = if c.quick { 500 } else { a.iters.max(100) };
    let net = Net::create(c.link)?;
    let header = ReportHeader::new("mmio-read", c, &net);
    let (mut raws, mut ours, mut direct) = (Vec::new(), Vec::new(), Vec::new());
    let (mut raw_last, mut ours_last) = (Vec::new(), Vec::new());
    for run in 0..c.runs() {
        eprintln!("mmio-read run {}/{}: raw ping-pong…", run + 1, c.runs());
        let (p, q) = net.ports_with(false)?;
        let mut s = raw_rtt_samples(p, q, RAW_SMALL, iters, c.busy_poll);
        raw_last = s.clone();
        raws.push(Latency::from_samples(&mut s));
        eprintln!("mmio-read run {}/{}: ours…", run + 1, c.runs());
        let (rig, f) = dma_rig(&net, &c.rig(0, 64 * 1024))?;
        let mut s = reads(&f, iters)?;
        drop(rig);
        ours_last = s.clone();
        ours.push(Latency::from_samples(&mut s));
        let rig = Rig::start_direct(&c.rig(0, 64 * 1024))?;
        let mut s = reads(&rig.open(0x0880)?, iters)?;
        direct.push(Latency::from_samples(&mut s));
    }
    let mut r = ReadReport {
        raw_ping_pong: median_latency(&raws),
        ours: median_latency(&ours),
        ours_no_transport: median_latency(&direct),
        ..ReadReport::default()
    };
    r.ratio_p50_no_transport = ratio(r.ours_no_transport.p50_us, r.raw_ping_pong.p50_us);
    r.ratio_p50 = ratio(r.ours.p50_us, r.raw_ping_pong.p50_us);
    r.ratio_p99 = ratio(r.ours.p99_us, r.raw_ping_pong.p99_us);
    r.ratio_p999 = ratio(r.ours.p999_us, r.raw_ping_pong.p999_us);
    let mut lossy_samples = Vec::new();
    if c.loss > 0.0 {
        eprintln!("mmio-read: ours at {} % injected loss…", c.loss);
        let mut cfg = c.rig(0, 64 * 1024);
        cfg.loss = c.loss / 100.0;
        let (rig, f) = dma_rig(&net, &cfg)?;
        let mut s = reads(&f, iters)?;
        r.lossy_retransmits = Some(rig.retransmits());
        lossy_samples = s.clone();
        r.ours_lossy = Some(Latency::from_samples(&mut s));
    }
    header.print();
    println!(
        "raw baseline: {RAW_SMALL}-byte ping-pong on plain sockets (sendto/recvfrom), {}",
        if c.busy_poll {
            "both sides spinning"
        } else {
            "both sides blocking"
        }
    );
    println!(
        "{:<28} {:>10} {:>10} {:>8}",
        "4-byte MMIO read", "raw", "ours", "ratio"
    );
    let row = |name: &str, raw: f64, ours: f64, goal: &str| {
        println!(
            "{name:<28} {raw:>10.1} {ours:>10.1} {:>8.2}  {goal}",
            ratio(ours, raw)
        )
    };
    row(
        "p50, µs",
        r.raw_ping_pong.p50_us,
        r.ours.p50_us,
        "(goal ≤ 1.2)",
    );
    row(
        "p99, µs",
        r.raw_ping_pong.p99_us,
        r.ours.p99_us,
        "(goal ≤ 1.5)",
    );
    row("p99.9, µs", r.raw_ping_pong.p999_us, r.ours.p999_us, "");
    row(
        "p50 without transport, µs",
        r.raw_ping_pong.p50_us,
        r.ours_no_transport.p50_us,
        "(host ⇄ endpoint on one pump thread)",
    );
    if let Some(l) = &r.ours_lossy {
        println!(
            "at {} % loss: p50 {:.1} µs, p99 {:.1} µs, p99.9 {:.1} µs ({} retransmits)",
            c.loss,
            l.p50_us,
            l.p99_us,
            l.p999_us,
            r.lossy_retransmits.unwrap_or(0)
        );
    }
    if let Some(dir) = &c.plot {
        std::fs::create_dir_all(dir)?;
        let mut series: Vec<(&str, &[Duration])> = vec![
            ("raw ping-pong", &raw_last),
            ("ours: MMIO read", &ours_last),
        ];
        if !lossy_samples.is_empty() {
            series.push(("ours at injected loss", &lossy_samples));
        }
        let p = dir.join("mmio-read-cdf.svg");
        super::plot::latency_cdf(&p, "4-byte MMIO read vs raw ping-pong", &series)?;
        eprintln!("wrote {}", p.display());
    }
    r.header = Some(header);
    write_json(c, &r)?;
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Default, serde::Serialize)]
struct WriteReport {
    header: Option<ReportHeader>,
    raw_datagrams_per_s: f64,
    /// Which raw variant was the baseline: `plain sendto` or `GSO/GRO` (the faster).
    raw_blast_variant: &'static str,
    ours_writes_per_s: f64,
    ratio_rate: f64,
    ours_lossy_writes_per_s: Option<f64>,
    ratio_lossy_vs_lossless: Option<f64>,
}

/// Posted writes to the card's buffer BAR, ended by a read; writes/s. Checks the last value.
fn writes(f: &RemoteFunction, iters: usize) -> Res<f64> {
    let size = f.info().bars[2].size.max(4);
    let t0 = Instant::now();
    for i in 0..iters {
        f.bar_write32(2, (i as u64 * 4) % size, i as u32)?;
    }
    let last = iters - 1;
    let v = f.bar_read32(2, (last as u64 * 4) % size)?;
    let dt = t0.elapsed();
    if v != last as u32 {
        return Err(BenchError::PostedLost {
            got: v,
            wrote: last as u32,
        }
        .into());
    }
    Ok(iters as f64 / dt.as_secs_f64())
}

/// `pcietun bench mmio-write`.
pub fn run_write(a: MmioArgs) -> Res<ExitCode> {
    let c = &a.common;
    let iters = if c.quick { 2000 } else { a.iters.max(1000) * 5 };
    let secs = if c.quick { 0.2 } else { 1.0 };
    let net = Net::create(c.link)?;
    let header = ReportHeader::new("mmio-write", c, &net);
    let (mut raws, mut ours) = (Vec::new(), Vec::new());
    let mut variant = "plain sendto";
    for run in 0..c.runs() {
        eprintln!("mmio-write run {}/{}…", run + 1, c.runs());
        let b = raw_blast_best(|o| net.ports_with(o), RAW_SMALL, secs, c.busy_poll)?;
        raws.push(b.best.msgs_per_s);
        variant = b.variant;
        let (rig, f) = dma_rig(&net, &c.rig(0, 64 * 1024))?;
        writes(&f, iters / 10)?; // warm-up
        ours.push(writes(&f, iters)?);
        drop(rig);
    }
    let mut r = WriteReport {
        raw_datagrams_per_s: median(raws),
        raw_blast_variant: variant,
        ours_writes_per_s: median(ours),
        ..WriteReport::default()
    };
    r.ratio_rate = ratio(r.ours_writes_per_s, r.raw_datagrams_per_s);
    if c.loss > 0.0 {
        let mut cfg = c.rig(0, 64 * 1024);
        cfg.loss = c.loss / 100.0;
        let (_rig, f) = dma_rig(&net, &cfg)?;
        let w = writes(&f, iters)?;
        r.ours_lossy_writes_per_s = Some(w);
        r.ratio_lossy_vs_lossless = Some(ratio(w, r.ours_writes_per_s));
    }
    header.print();
    println!(
        "{:<36} {:>12} {:>12} {:>8}",
        "posted 4-byte MMIO writes", "raw", "ours", "ratio"
    );
    println!(
        "{:<36} {:>12.0} {:>12.0} {:>8.2}",
        format!("per second (raw: {RAW_SMALL} B datagrams, {variant})"),
        r.raw_datagrams_per_s,
        r.ours_writes_per_s,
        r.ratio_rate
    );
    if let (Some(w), Some(q)) = (r.ours_lossy_writes_per_s, r.ratio_lossy_vs_lossless) {
        println!(
            "at {} % loss: {w:.0} writes/s, {q:.2} × lossless (goal ≥ 0.9)",
            c.loss
        );
    }
    r.header = Some(header);
    write_json(c, &r)?;
    Ok(ExitCode::SUCCESS)
}
