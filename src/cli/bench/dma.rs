//! `pcietun bench dma-read` / `dma-write`: the DMA engine test device moving 4 KiB … 1 MiB
//! between its buffer and registered host memory through the tunnel (MRd/CplD for DMA reads,
//! posted MWr for DMA writes, an MSI-X interrupt and one STATUS read per transfer), against a
//! raw blast of transport-frame-sized datagrams on the same path. Data is checked once per
//! run: a pattern goes to the card and back and must arrive unchanged.

use super::common::{median, write_json, Common, ReportHeader};
use super::error::BenchError;
use super::raw::{raw_blast_best, Blast, Res};
use super::rig::{Net, Rig, RigConfig};
use super::stats::ratio;
use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::CompletionMode;
use std::process::ExitCode;
use std::time::Instant;

const MAX: usize = 1 << 20;

/// Arguments of `pcietun bench dma-read` / `dma-write`.
#[derive(Debug, clap::Args)]
pub struct DmaArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds per transfer size per run.
    #[arg(long, default_value_t = 1.0)]
    secs: f64,
    /// Poll STATUS instead of waiting for the MSI-X interrupt.
    #[arg(long)]
    poll: bool,
}

/// One transfer size.
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Row {
    size: u64,
    ours_gbyte_s: f64,
    ours_transfers_per_s: f64,
    raw_gbyte_s: f64,
    ratio_throughput: f64,
    ours_lossy_gbyte_s: Option<f64>,
    ratio_lossy_vs_lossless: Option<f64>,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    header: Option<ReportHeader>,
    direction: Option<Direction>,
    raw_blast_gbyte_s: f64,
    raw_frame_bytes: usize,
    /// Which raw variant was the baseline: `plain sendto` or `GSO/GRO` (the faster).
    raw_blast_variant: &'static str,
    rows: Vec<Row>,
    /// Worst ratio over sizes ≥ 64 KiB (the goal's condition).
    ratio_throughput: f64,
    lossy_retransmits: Option<u64>,
}

fn sizes(quick: bool) -> Vec<u64> {
    if quick {
        vec![4096, 65536]
    } else {
        vec![4096, 16384, 65536, 262_144, 1 << 20]
    }
}

fn open(net: &Net, cfg: &RigConfig, poll: bool) -> Res<(Rig, DmaEngineDriver)> {
    let rig = Rig::start(net, cfg)?;
    let f = rig.open(0x0880)?;
    let mode = if poll {
        CompletionMode::Poll
    } else {
        CompletionMode::Interrupt
    };
    let d = DmaEngineDriver::open(f, 2 * MAX, mode)?;
    Ok((rig, d))
}

/// A pattern to the card and back into the other half of host memory: unchanged?
fn verify(d: &DmaEngineDriver, len: u32) -> Res<()> {
    let pattern: Vec<u8> = (0..len)
        .map(|i| (i.wrapping_mul(31) >> 3) as u8 ^ 0xa5)
        .collect();
    d.host_buffer().write_at(0, &pattern)?;
    d.host_buffer().zero(MAX as u64, len as usize)?;
    d.transfer(Direction::DmaRead, 0, 0, len)?;
    d.transfer(Direction::DmaWrite, MAX as u64, 0, len)?;
    let mut back = vec![0u8; len as usize];
    d.host_buffer().read_at(MAX as u64, &mut back)?;
    if back != pattern {
        return Err(BenchError::DataMismatch("DMA").into());
    }
    Ok(())
}

/// Transfers of `size` for `secs`: GB/s and transfers/s.
fn measure(d: &DmaEngineDriver, dir: Direction, size: u64, secs: f64) -> Res<(f64, f64)> {
    for _ in 0..3 {
        d.transfer(dir, 0, 0, size as u32)?; // warm-up
    }
    let t0 = Instant::now();
    let mut n = 0u64;
    while n < 5 || t0.elapsed().as_secs_f64() < secs {
        d.transfer(dir, 0, 0, size as u32)?;
        n += 1;
    }
    let dt = t0.elapsed().as_secs_f64();
    Ok((n as f64 * size as f64 / dt / 1e9, n as f64 / dt))
}

/// `pcietun bench dma-read` (`dir` = DmaRead) or `dma-write`.
pub fn run(a: DmaArgs, dir: Direction) -> Res<ExitCode> {
    let c = &a.common;
    let secs = if c.quick { 0.1 } else { a.secs.max(0.05) };
    let name = match dir {
        Direction::DmaRead => "dma-read",
        Direction::DmaWrite => "dma-write",
    };
    let net = Net::create(c.link)?;
    let header = ReportHeader::new(name, c, &net);
    let sizes = sizes(c.quick);
    let mut raw = Vec::new();
    let mut blast = Blast::default();
    let frame = net.frame(c.mtu)?;
    let mut ours: Vec<Vec<(f64, f64)>> = vec![Vec::new(); sizes.len()];
    for run in 0..c.runs() {
        eprintln!("{name} run {}/{}: raw blast…", run + 1, c.runs());
        blast = raw_blast_best(|o| net.ports_with(o), frame, secs, c.busy_poll)?;
        raw.push(blast.best.gbit_s / 8.0);
        eprintln!("{name} run {}/{}: ours…", run + 1, c.runs());
        let (rig, d) = open(&net, &c.rig(0, MAX), a.poll)?;
        verify(&d, 256 * 1024)?;
        for (i, &s) in sizes.iter().enumerate() {
            ours[i].push(measure(&d, dir, s, secs)?);
        }
        drop(d);
        drop(rig);
    }
    let mut r = Report {
        direction: Some(dir),
        raw_blast_gbyte_s: median(raw),
        raw_frame_bytes: frame,
        raw_blast_variant: blast.variant,
        ..Report::default()
    };
    for (i, &s) in sizes.iter().enumerate() {
        let g = median(ours[i].iter().map(|x| x.0).collect());
        r.rows.push(Row {
            size: s,
            ours_gbyte_s: g,
            ours_transfers_per_s: median(ours[i].iter().map(|x| x.1).collect()),
            raw_gbyte_s: r.raw_blast_gbyte_s,
            ratio_throughput: ratio(g, r.raw_blast_gbyte_s),
            ..Row::default()
        });
    }
    r.ratio_throughput = r
        .rows
        .iter()
        .filter(|row| row.size >= 65536)
        .map(|row| row.ratio_throughput)
        .fold(f64::INFINITY, f64::min);
    if !r.ratio_throughput.is_finite() {
        r.ratio_throughput = 0.0;
    }
    if c.loss > 0.0 {
        eprintln!("{name}: ours at {} % injected loss…", c.loss);
        let mut cfg = c.rig(0, MAX);
        cfg.loss = c.loss / 100.0;
        let (rig, d) = open(&net, &cfg, a.poll)?;
        verify(&d, 256 * 1024)?;
        for row in r.rows.iter_mut() {
            let (g, _) = measure(&d, dir, row.size, secs)?;
            row.ours_lossy_gbyte_s = Some(g);
            row.ratio_lossy_vs_lossless = Some(ratio(g, row.ours_gbyte_s));
        }
        r.lossy_retransmits = Some(rig.retransmits());
    }
    header.print();
    println!(
        "{:<10} {:>12} {:>12} {:>8} {:>12}{}",
        "size",
        "raw GB/s",
        "ours GB/s",
        "ratio",
        "transfers/s",
        if c.loss > 0.0 {
            "   lossy GB/s (× lossless)"
        } else {
            ""
        }
    );
    for row in &r.rows {
        let lossy = match (row.ours_lossy_gbyte_s, row.ratio_lossy_vs_lossless) {
            (Some(g), Some(q)) => format!("   {g:.3} ({q:.2})"),
            _ => String::new(),
        };
        println!(
            "{:<10} {:>12.3} {:>12.3} {:>8.2} {:>12.0}{lossy}",
            human(row.size),
            row.raw_gbyte_s,
            row.ours_gbyte_s,
            row.ratio_throughput,
            row.ours_transfers_per_s
        );
    }
    println!(
        "worst ratio at ≥ 64 KiB: {:.2} (goal ≥ 0.8); raw: {} B datagrams, {} (last run)",
        r.ratio_throughput,
        frame,
        blast.describe()
    );
    if let Some(dir_path) = &c.plot {
        std::fs::create_dir_all(dir_path)?;
        let p = dir_path.join(format!("{name}-throughput.svg"));
        let mut series = vec![
            (
                "raw blast",
                r.rows.iter().map(|x| (x.size, x.raw_gbyte_s)).collect(),
            ),
            (
                "ours",
                r.rows
                    .iter()
                    .map(|x| (x.size, x.ours_gbyte_s))
                    .collect::<Vec<_>>(),
            ),
        ];
        if c.loss > 0.0 {
            series.push((
                "ours at injected loss",
                r.rows
                    .iter()
                    .map(|x| (x.size, x.ours_lossy_gbyte_s.unwrap_or(0.0)))
                    .collect(),
            ));
        }
        super::plot::throughput_vs_size(
            &p,
            &format!("{name}: throughput vs transfer size"),
            &series,
        )?;
        eprintln!("wrote {}", p.display());
    }
    r.header = Some(header);
    write_json(c, &r)?;
    Ok(ExitCode::SUCCESS)
}

/// 4096 → "4 KiB".
pub fn human(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{} MiB", b >> 20)
    } else {
        format!("{} KiB", b >> 10)
    }
}
