//! `pcietun bench policy`: a per-function cap holding (issue 14 "Policy"; docs/api.md
//! "Policy"). The DMA engine moves `--size` transfers uncapped, then capped at `--fraction` of
//! the uncapped rate, then with the cap lifted, once for DMA writes (the upstream cap,
//! `max_bytes_per_sec_up`) and once for DMA reads (the downstream cap,
//! `max_bytes_per_sec_down`, which paces the function's read requests). It reports the
//! capped rate as a ratio to the cap (the goal: within ±10 %), the rate in the second after
//! the cap was lifted as a ratio to the uncapped one, and the recovery time: from lifting the
//! cap to the end of the first 100 ms window moving at least 80 % of the uncapped rate.
//! The reference here is the cap itself, not the raw path: the figure that matters is how
//! close to X a function capped at X runs.
//!
//! Then priority: two DMA engines (functions of one card, one host) write `--size`
//! transfers back to back from two threads, saturating the link, first at equal priorities
//! (the control: about 1:1), then at `--priority-a` : `--priority-b` (default 30:10). It
//! reports the bytes each moved as a ratio, against the configured one (docs/api.md
//! "Policy": the arbiter shares the link in proportion to the priorities while both are
//! backlogged; a transfer's tail and the gap before the next, when one engine alone is
//! busy, go to whoever has work, so a closed-loop workload lands near, not on, the ratio).

use super::common::{median, write_json, Common, ReportHeader};
use super::error::BenchError;
use super::rig::{Net, Rig};
use pcietun::appliance::{Control, FunctionId, Policy};
use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::CompletionMode;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::raw::Res;

const BUFFER: usize = 1 << 20;

/// Arguments of `pcietun bench policy`.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    #[command(flatten)]
    common: Common,
    /// Seconds per phase (uncapped, capped, lifted) per run.
    #[arg(long, default_value_t = 2.0)]
    secs: f64,
    /// The cap as a fraction of the uncapped rate.
    #[arg(long, default_value_t = 0.25)]
    fraction: f64,
    /// Bytes per DMA transfer.
    #[arg(long, default_value_t = 65536)]
    size: u32,
    /// Priority of the first DMA engine in the priority phase (1..=100).
    #[arg(long, default_value_t = 30)]
    priority_a: u32,
    /// Priority of the second DMA engine in the priority phase (1..=100).
    #[arg(long, default_value_t = 10)]
    priority_b: u32,
    /// Bytes per DMA transfer in the priority phase (large: the engines stay backlogged).
    #[arg(long, default_value_t = 1 << 20)]
    priority_size: u32,
    /// Fraction of frames the priority phase's link drops on purpose, both ways: with loss
    /// the transport's congestion window, not the engines' own threads, limits the rate, so
    /// the link is saturated even where a debug build's device threads are slow. 0 for a
    /// clean link (then a priority shows only if the link is the bottleneck by itself).
    #[arg(long, default_value_t = 0.02)]
    priority_loss: f64,
}

/// The priority phase's figures (medians over the runs).
#[derive(Debug, Default, Clone, serde::Serialize)]
struct PriorityRow {
    priority_a: u32,
    priority_b: u32,
    /// priority_a / priority_b.
    configured_ratio: f64,
    /// Bytes engine A moved / bytes engine B moved, both writing at once.
    achieved_ratio: f64,
    /// The same at equal priorities (the control: near 1).
    equal_ratio: f64,
    /// Both engines' bytes per second together, at the configured priorities.
    total_gbyte_s: f64,
    /// The link's loss in that phase (what made it the bottleneck).
    loss: f64,
}

/// One direction's figures (medians over the runs).
#[derive(Debug, Default, Clone, serde::Serialize)]
struct Row {
    direction: &'static str,
    uncapped_gbyte_s: f64,
    cap_gbyte_s: f64,
    capped_gbyte_s: f64,
    /// capped / cap (goal: 0.9 … 1.1).
    ratio_capped_to_cap: f64,
    /// Rate in the first `secs` after lifting / uncapped.
    ratio_lifted_to_uncapped: f64,
    /// Lift → end of the first 100 ms window at ≥ 80 % of uncapped.
    recovery_ms: f64,
    /// Throttle time the appliance counted under the cap, per second of the capped phase.
    throttled_s_per_s: f64,
}

#[derive(Debug, Default, serde::Serialize)]
struct Report {
    header: Option<ReportHeader>,
    transfer_bytes: u32,
    fraction: f64,
    rows: Vec<Row>,
    priority: Option<PriorityRow>,
}

/// Bytes per second over `secs` of back-to-back transfers.
fn rate(d: &DmaEngineDriver, dir: Direction, size: u32, secs: f64) -> Res<f64> {
    let t0 = Instant::now();
    let mut n = 0u64;
    while n < 3 || t0.elapsed().as_secs_f64() < secs {
        d.transfer(dir, 0, 0, size)?;
        n += 1;
    }
    Ok(n as f64 * f64::from(size) / t0.elapsed().as_secs_f64())
}

/// After the cap was lifted: (rate over `secs`, ms until the end of the first 100 ms window
/// at ≥ 80 % of `uncapped`, or the whole phase if none).
fn recovery(
    d: &DmaEngineDriver,
    dir: Direction,
    size: u32,
    secs: f64,
    uncapped: f64,
) -> Res<(f64, f64)> {
    let t0 = Instant::now();
    let window = Duration::from_millis(100);
    let (mut w0, mut wbytes) = (t0, 0u64);
    let mut total = 0u64;
    let mut recovered: Option<Duration> = None;
    while t0.elapsed().as_secs_f64() < secs {
        d.transfer(dir, 0, 0, size)?;
        total += u64::from(size);
        wbytes += u64::from(size);
        let now = Instant::now();
        if now - w0 >= window {
            if recovered.is_none() && wbytes as f64 / (now - w0).as_secs_f64() >= 0.8 * uncapped {
                recovered = Some(now - t0);
            }
            (w0, wbytes) = (now, 0);
        }
    }
    let dt = t0.elapsed();
    Ok((
        total as f64 / dt.as_secs_f64(),
        recovered.unwrap_or(dt).as_secs_f64() * 1e3,
    ))
}

fn throttled(ctl: &Control, f: &FunctionId, dir: Direction) -> u64 {
    ctl.functions()
        .into_iter()
        .find(|s| &s.entry.id == f)
        .map_or(0, |s| match dir {
            Direction::DmaWrite => s.traffic.throttled_nanos_up,
            Direction::DmaRead => s.traffic.throttled_nanos_down,
        })
}

fn one_run(a: &PolicyArgs, net: &Net, secs: f64) -> Res<Vec<Row>> {
    let c = &a.common;
    let rig = Rig::start(net, &c.rig(0, BUFFER))?;
    let ctl = rig
        .control()
        .ok_or_else(|| BenchError::Unsupported("the rig has no appliance".into()))?;
    let fid = ctl
        .functions()
        .into_iter()
        .find(|f| f.entry.ids.class >> 8 == 0x0880)
        .map(|f| f.entry.id)
        .ok_or_else(|| BenchError::Unsupported("no DMA engine in the pool".into()))?;
    let d = DmaEngineDriver::open(rig.open(0x0880)?, BUFFER, CompletionMode::Interrupt)?;
    let size = a.size.clamp(4, BUFFER as u32);
    let mut rows = Vec::new();
    for dir in [Direction::DmaWrite, Direction::DmaRead] {
        let name = match dir {
            Direction::DmaWrite => "write (upstream cap)",
            Direction::DmaRead => "read (downstream cap)",
        };
        for _ in 0..3 {
            d.transfer(dir, 0, 0, size)?;
        }
        let uncapped = rate(&d, dir, size, secs)?;
        let cap = ((uncapped * a.fraction) as u64).max(1);
        let policy = match dir {
            Direction::DmaWrite => Policy {
                max_bytes_per_sec_up: Some(cap),
                ..Policy::UNLIMITED
            },
            Direction::DmaRead => Policy {
                max_bytes_per_sec_down: Some(cap),
                ..Policy::UNLIMITED
            },
        };
        ctl.set_policy_wait(fid.clone(), policy, Duration::from_secs(5))?;
        // Let the burst and what the uncapped phase left go before measuring.
        rate(&d, dir, size, 0.1)?;
        std::thread::sleep(Duration::from_millis(150));
        let th0 = throttled(&ctl, &fid, dir);
        let t0 = Instant::now();
        let capped = rate(&d, dir, size, secs)?;
        let phase = t0.elapsed().as_secs_f64();
        ctl.set_policy_wait(fid.clone(), Policy::UNLIMITED, Duration::from_secs(5))?;
        let (lifted, recovery_ms) = recovery(&d, dir, size, secs.min(1.0), uncapped)?;
        // Snapshots are published every 100 ms.
        std::thread::sleep(Duration::from_millis(250));
        let th = throttled(&ctl, &fid, dir).saturating_sub(th0);
        eprintln!(
            "policy {name}: uncapped {:.3} GB/s, cap {:.3} GB/s, capped {:.3} GB/s, lifted {:.3} GB/s in {recovery_ms:.0} ms",
            uncapped / 1e9,
            cap as f64 / 1e9,
            capped / 1e9,
            lifted / 1e9
        );
        rows.push(Row {
            direction: match dir {
                Direction::DmaWrite => "write",
                Direction::DmaRead => "read",
            },
            uncapped_gbyte_s: uncapped / 1e9,
            cap_gbyte_s: cap as f64 / 1e9,
            capped_gbyte_s: capped / 1e9,
            ratio_capped_to_cap: capped / cap as f64,
            ratio_lifted_to_uncapped: lifted / uncapped,
            recovery_ms,
            throttled_s_per_s: th as f64 / 1e9 / phase,
        });
    }
    Ok(rows)
}

/// Both engines writing `size` transfers back to back for `secs`: (bytes of A, bytes of B).
fn race(d: [&DmaEngineDriver; 2], size: u32, secs: f64) -> Res<(u64, u64)> {
    let go = std::sync::Barrier::new(2);
    let one = |d: &DmaEngineDriver| -> Result<u64, String> {
        go.wait();
        let t0 = Instant::now();
        let mut n = 0u64;
        while t0.elapsed().as_secs_f64() < secs {
            d.transfer(Direction::DmaWrite, 0, 0, size)
                .map_err(|e| e.to_string())?;
            n += u64::from(size);
        }
        Ok(n)
    };
    let (ra, rb) = std::thread::scope(|s| {
        let a = s.spawn(|| one(d[0]));
        let b = one(d[1]);
        (a.join(), b)
    });
    let ra = ra.map_err(|_| BenchError::Unsupported("a DMA thread panicked".into()))?;
    Ok((ra?, rb?))
}

fn set_priority(ctl: &Control, f: &FunctionId, p: u32) -> Res<()> {
    ctl.set_policy_wait(
        f.clone(),
        Policy {
            priority: Some(p),
            ..Policy::UNLIMITED
        },
        Duration::from_secs(5),
    )?;
    Ok(())
}

/// Two DMA engines sharing the link at equal, then at the configured, priorities.
fn priority_run(a: &PolicyArgs, net: &Net, secs: f64) -> Res<PriorityRow> {
    let mut cfg = a.common.rig(0, BUFFER);
    cfg.dma_engines = 2;
    cfg.loss = a.priority_loss.clamp(0.0, 0.5);
    let rig = Rig::start(net, &cfg)?;
    let ctl = rig
        .control()
        .ok_or_else(|| BenchError::Unsupported("the rig has no appliance".into()))?;
    let ids: Vec<FunctionId> = ctl
        .functions()
        .into_iter()
        .filter(|f| f.entry.ids.class >> 8 == 0x0880)
        .map(|f| f.entry.id)
        .collect();
    if ids.len() != 2 {
        return Err(BenchError::Unsupported(format!("{} DMA engines, not 2", ids.len())).into());
    }
    // The host enumerates in the appliance's function order: A is ids[0].
    let da = DmaEngineDriver::open(rig.open_nth(0x0880, 0)?, BUFFER, CompletionMode::Interrupt)?;
    let db = DmaEngineDriver::open(rig.open_nth(0x0880, 1)?, BUFFER, CompletionMode::Interrupt)?;
    let size = a.priority_size.clamp(4, BUFFER as u32);
    for d in [&da, &db] {
        d.transfer(Direction::DmaWrite, 0, 0, size)?;
    }
    let (ea, eb) = race([&da, &db], size, secs)?;
    set_priority(&ctl, &ids[0], a.priority_a)?;
    set_priority(&ctl, &ids[1], a.priority_b)?;
    let t0 = Instant::now();
    let (pa, pb) = race([&da, &db], size, secs)?;
    let dt = t0.elapsed().as_secs_f64();
    let ratio = |x: u64, y: u64| x as f64 / (y.max(1)) as f64;
    let row = PriorityRow {
        priority_a: a.priority_a,
        priority_b: a.priority_b,
        configured_ratio: f64::from(a.priority_a) / f64::from(a.priority_b),
        achieved_ratio: ratio(pa, pb),
        equal_ratio: ratio(ea, eb),
        total_gbyte_s: (pa + pb) as f64 / dt / 1e9,
        loss: cfg.loss,
    };
    eprintln!(
        "priority {}:{}: A {pa} B {pb} bytes = {:.2} (equal priorities: {:.2}), {:.3} GB/s together",
        a.priority_a, a.priority_b, row.achieved_ratio, row.equal_ratio, row.total_gbyte_s
    );
    Ok(row)
}

/// `pcietun bench policy`.
pub fn run(a: PolicyArgs) -> Res<ExitCode> {
    let c = &a.common;
    if !(a.fraction > 0.0 && a.fraction < 1.0) {
        return Err(BenchError::Unsupported(format!(
            "--fraction {} is not between 0 and 1",
            a.fraction
        ))
        .into());
    }
    for p in [a.priority_a, a.priority_b] {
        if !(1..=100).contains(&p) {
            return Err(
                BenchError::Unsupported(format!("priority {p} is not within 1..=100")).into(),
            );
        }
    }
    let secs = if c.quick { 0.5 } else { a.secs.max(0.2) };
    let net = Net::create(c.link)?;
    let header = ReportHeader::new("policy", c, &net);
    let mut runs: Vec<Vec<Row>> = Vec::new();
    let mut prio: Vec<PriorityRow> = Vec::new();
    for run in 0..c.runs() {
        eprintln!("policy run {}/{}…", run + 1, c.runs());
        runs.push(one_run(&a, &net, secs)?);
        prio.push(priority_run(&a, &net, secs.max(1.0))?);
    }
    let pm = |f: fn(&PriorityRow) -> f64| median(prio.iter().map(f).collect());
    let priority = PriorityRow {
        priority_a: a.priority_a,
        priority_b: a.priority_b,
        configured_ratio: f64::from(a.priority_a) / f64::from(a.priority_b),
        achieved_ratio: pm(|r| r.achieved_ratio),
        equal_ratio: pm(|r| r.equal_ratio),
        total_gbyte_s: pm(|r| r.total_gbyte_s),
        loss: a.priority_loss.clamp(0.0, 0.5),
    };
    let mut rows = Vec::new();
    for i in 0..runs[0].len() {
        let m = |f: fn(&Row) -> f64| median(runs.iter().map(|r| f(&r[i])).collect());
        rows.push(Row {
            direction: runs[0][i].direction,
            uncapped_gbyte_s: m(|r| r.uncapped_gbyte_s),
            cap_gbyte_s: m(|r| r.cap_gbyte_s),
            capped_gbyte_s: m(|r| r.capped_gbyte_s),
            ratio_capped_to_cap: m(|r| r.ratio_capped_to_cap),
            ratio_lifted_to_uncapped: m(|r| r.ratio_lifted_to_uncapped),
            recovery_ms: m(|r| r.recovery_ms),
            throttled_s_per_s: m(|r| r.throttled_s_per_s),
        });
    }
    header.print();
    println!(
        "{:<8} {:>14} {:>10} {:>13} {:>12} {:>15} {:>12} {:>11}",
        "dma",
        "uncapped GB/s",
        "cap GB/s",
        "capped GB/s",
        "capped/cap",
        "lifted/uncapped",
        "recovery ms",
        "throttled/s"
    );
    for r in &rows {
        println!(
            "{:<8} {:>14.3} {:>10.3} {:>13.3} {:>12.3} {:>15.2} {:>12.0} {:>11.2}",
            r.direction,
            r.uncapped_gbyte_s,
            r.cap_gbyte_s,
            r.capped_gbyte_s,
            r.ratio_capped_to_cap,
            r.ratio_lifted_to_uncapped,
            r.recovery_ms,
            r.throttled_s_per_s
        );
    }
    println!(
        "goal: capped/cap within 0.90..1.10, recovery within 1000 ms; {} B transfers, cap = {} × uncapped",
        a.size, a.fraction
    );
    println!(
        "{:<10} {:>11} {:>14} {:>14} {:>11}",
        "priority", "configured", "achieved A:B", "equal A:B", "total GB/s"
    );
    println!(
        "{:<10} {:>11.2} {:>14.2} {:>14.2} {:>11.3}",
        format!("{}:{}", a.priority_a, a.priority_b),
        priority.configured_ratio,
        priority.achieved_ratio,
        priority.equal_ratio,
        priority.total_gbyte_s
    );
    println!(
        "two DMA engines writing {} B transfers at once on one link ({} % loss); the share follows the priorities while both are backlogged",
        a.priority_size,
        priority.loss * 100.0
    );
    let report = Report {
        header: Some(header),
        transfer_bytes: a.size,
        fraction: a.fraction,
        rows,
        priority: Some(priority),
    };
    write_json(c, &report)?;
    Ok(ExitCode::SUCCESS)
}
