//! What every device scenario shares: the command-line options (link, loss, AEAD, busy-poll,
//! repeats, `--json`, `--plot`, `--quick`), the header naming the machine and the commit, the
//! median of repeated runs, and writing the report.

use super::error::BenchError;
use super::raw::{LinkKind, OnOff, Res};
use super::rig::{Net, RigConfig};
use super::stats::Latency;
use std::path::PathBuf;
use std::process::Command;

/// Options shared by `mmio-read`, `mmio-write`, `dma-read`, `dma-write` and `nvme`.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Link between host agent and appliance (and of the raw baseline).
    #[arg(long, value_enum, default_value = "udp")]
    pub link: LinkKind,
    /// Injected loss in percent of sent frames ("1" or "1%"): adds a lossy run of ours.
    #[arg(long, value_parser = parse_pct, default_value = "0")]
    pub loss: f64,
    /// Frame encryption (off still authenticates every frame).
    #[arg(long, value_enum, default_value = "on")]
    pub aead: OnOff,
    /// Spin on non-blocking sockets instead of sleeping (raw baseline and ours).
    #[arg(long)]
    pub busy_poll: bool,
    /// Frame size both ends offer (bytes of UDP payload or Ethernet frame): the host lowers
    /// it to what the path carries (loopback and veth carry 9000-byte packets) and the
    /// handshake agrees on the smaller end's. The raw blast uses the same size.
    #[arg(long, default_value_t = 8972)]
    pub mtu: usize,
    /// Repeated runs; every figure is the median over them.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// A tiny run (one repeat, few samples) to check that everything works.
    #[arg(long)]
    pub quick: bool,
    /// Also write every figure as JSON to this file (keys in docs/bench.md).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write SVG charts into this directory.
    #[arg(long)]
    pub plot: Option<PathBuf>,
}

/// Why a `--loss` value was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PctError {
    /// Not a number (with an optional `%`).
    #[error("{0:?} is not a percentage")]
    NotANumber(String),
    /// Outside what the lossy runs support.
    #[error("loss {0} % is outside 0..=50 %")]
    OutOfRange(f64),
}

/// "1", "1%", "0.5 %" → 1.0, 1.0, 0.5.
pub fn parse_pct(s: &str) -> Result<f64, PctError> {
    let t = s.trim().trim_end_matches('%').trim();
    let v: f64 = t.parse().map_err(|_| PctError::NotANumber(s.to_string()))?;
    if !(0.0..=50.0).contains(&v) {
        return Err(PctError::OutOfRange(v));
    }
    Ok(v)
}

impl Common {
    /// Repeats to run.
    pub fn runs(&self) -> usize {
        if self.quick {
            1
        } else {
            self.runs.max(1)
        }
    }

    /// Rig settings with the given devices, lossless.
    pub fn rig(&self, nvme_bytes: u64, dma_buffer: usize) -> RigConfig {
        RigConfig {
            encrypt: self.aead == OnOff::On,
            loss: 0.0,
            busy_poll: self.busy_poll,
            nvme_bytes,
            dma_buffer,
            dma_engines: 1,
            mtu: self.mtu.max(512),
        }
    }
}

/// The header of every report: what ran where.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ReportHeader {
    /// Scenario name.
    pub scenario: String,
    /// Seconds since the Unix epoch when the run started.
    pub unix_time: u64,
    /// `git describe`-style commit of the source tree.
    pub commit: String,
    /// Host name.
    pub hostname: String,
    /// CPU model.
    pub cpu: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// 1-minute load average at the start (other work on the machine).
    pub load_avg: f64,
    /// Link name (`udp`, `eth`, `mem`).
    pub link: String,
    /// The path, in words.
    pub path: String,
    /// Frame size ours uses on this path (what both ends offer, lowered to what the path
    /// carries); the raw blast uses the same.
    pub frame_bytes: usize,
    /// Frame encryption.
    pub aead: bool,
    /// Busy-poll mode.
    pub busy_poll: bool,
    /// Injected loss of the lossy run, percent (0: none).
    pub loss_pct: f64,
    /// Repeats; figures are medians over them.
    pub runs: usize,
    /// Quick mode.
    pub quick: bool,
}

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let o = Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

impl ReportHeader {
    /// The header for `scenario` on `net`.
    pub fn new(scenario: &str, c: &Common, net: &Net) -> ReportHeader {
        let dir = env!("CARGO_MANIFEST_DIR");
        let mut commit =
            sh("git", &["-C", dir, "rev-parse", "--short", "HEAD"]).unwrap_or("unknown".into());
        if sh(
            "git",
            &["-C", dir, "status", "--porcelain", "--untracked-files=no"],
        )
        .is_some_and(|s| !s.is_empty())
        {
            commit.push_str("-dirty");
        }
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let load_avg = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        ReportHeader {
            scenario: scenario.into(),
            unix_time: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            commit,
            hostname: std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            load_avg,
            link: format!("{:?}", net.kind()).to_lowercase(),
            path: net.describe(),
            frame_bytes: net.frame(c.mtu).unwrap_or(0),
            aead: c.aead == OnOff::On,
            busy_poll: c.busy_poll,
            loss_pct: c.loss,
            runs: c.runs(),
            quick: c.quick,
        }
    }

    /// Print it above a table.
    pub fn print(&self) {
        println!(
            "pcietun bench {} — commit {}, {} ({} CPUs, load {:.1}), kernel {}",
            self.scenario, self.commit, self.cpu, self.cpus, self.load_avg, self.kernel
        );
        println!(
            "path: {}; frames ≤ {} B; AEAD {}; {}; median of {} run(s){}",
            self.path,
            self.frame_bytes,
            if self.aead { "on" } else { "off" },
            if self.busy_poll {
                "busy-poll (ours and the raw baseline)"
            } else {
                "blocking (ours and the raw baseline)"
            },
            self.runs,
            if self.loss_pct > 0.0 {
                format!("; lossy run at {} % injected loss", self.loss_pct)
            } else {
                String::new()
            }
        );
    }
}

/// Median of `v` (0 when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Field-wise median of latency summaries.
pub fn median_latency(runs: &[Latency]) -> Latency {
    let m = |f: fn(&Latency) -> f64| median(runs.iter().map(f).collect());
    Latency {
        n: runs.iter().map(|l| l.n).sum(),
        p50_us: m(|l| l.p50_us),
        p99_us: m(|l| l.p99_us),
        p999_us: m(|l| l.p999_us),
        mean_us: m(|l| l.mean_us),
    }
}

/// Write `report` as pretty JSON to `--json` if given.
pub fn write_json(c: &Common, report: &impl serde::Serialize) -> Res<()> {
    if let Some(p) = &c.json {
        std::fs::write(p, serde_json::to_string_pretty(report)?).map_err(|source| {
            BenchError::Report {
                path: p.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_and_median() {
        assert_eq!(parse_pct("1%"), Ok(1.0));
        assert_eq!(parse_pct(" 0.5 % "), Ok(0.5));
        assert!(parse_pct("lots").is_err());
        assert!(parse_pct("90").is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
