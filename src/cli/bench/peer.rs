//! The peer of `pcietun bench nvme --peer nbd`: a remote disk served the way people do it
//! today, measured in the same run as ours. `nbdkit file` exports a file of the same size as
//! our NVMe namespace over TCP on 127.0.0.1 (NBD protocol, nbdkit(1), nbdkit-file-plugin(1)),
//! and `fio --ioengine=nbd` (fio(1), "nbd" engine over libnbd) runs the same block sizes and
//! queue depths against it. For CPU cost, each workload starts its own nbdkit, so the CPU time
//! of both processes (server and load generator) comes from getrusage(2) of reaped children.
//!
//! Debian packages `nbdkit` and `fio` (scripts/setup.sh installs them).

use super::error::BenchError;
use super::raw::Res;
use super::stats::Latency;
use pcietun::sys::process::{self, Usage};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which peer to measure beside ours.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerKind {
    /// No peer.
    #[default]
    None,
    /// nbdkit (file plugin) over TCP on 127.0.0.1, driven by fio's nbd engine.
    Nbd,
}

/// One fio workload.
#[derive(Debug, Clone, Copy)]
pub struct Job {
    /// fio `--rw`: randread, randwrite, read, write.
    pub rw: &'static str,
    /// Block size in bytes.
    pub bs: usize,
    /// Queue depth.
    pub qd: usize,
}

/// What the peer did in one workload.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct PeerResult {
    /// I/O operations per second.
    pub iops: f64,
    /// Payload bytes per second.
    pub bytes_per_s: f64,
    /// Total latency (submission to completion) of every I/O.
    pub latency: Latency,
    /// CPU seconds (user + system) of nbdkit and fio together per GB moved.
    pub cpu_s_per_gb: f64,
}

/// Which of the peer's tools are missing, in words (`None`: both there).
pub fn missing_tools() -> Option<String> {
    let missing: Vec<&str> = ["nbdkit", "fio"]
        .into_iter()
        .filter(|t| {
            !Command::new(t)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "{} not found (Debian: apt-get install nbdkit fio; scripts/setup.sh does it)",
            missing.join(" and ")
        )
    })
}

/// The exported file (same size as our namespace) in a temporary directory.
#[derive(Debug)]
pub struct NbdPeer {
    image: PathBuf,
    _dir: tempfile::TempDir,
}

/// A running nbdkit, stopped and reaped on drop.
struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = process::terminate(&self.child);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: nbdkit binds it next).
fn free_port() -> Res<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

impl NbdPeer {
    /// A zero-filled file of `bytes` bytes to export.
    pub fn new(bytes: u64) -> Res<NbdPeer> {
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("peer.img");
        let f = std::fs::File::create(&image)?;
        f.set_len(bytes)?;
        Ok(NbdPeer { image, _dir: dir })
    }

    fn serve(image: &Path) -> Res<(Server, u16)> {
        let port = free_port()?;
        let child = Command::new("nbdkit")
            .args(["-f", "-p", &port.to_string(), "-i", "127.0.0.1", "file"])
            .arg(image)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| BenchError::PeerSpawn {
                tool: "nbdkit",
                source,
            })?;
        let mut server = Server { child };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
                return Ok((server, port));
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let mut stderr = String::new();
                if let Some(mut e) = server.child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
                }
                return Err(BenchError::PeerFailed {
                    tool: "nbdkit",
                    status,
                    stderr: stderr.trim().to_string(),
                }
                .into());
            }
            if Instant::now() > deadline {
                return Err(BenchError::PeerNotListening(addr).into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Run `job` for `secs` (after a warm-up of a tenth of that) against a fresh nbdkit.
    pub fn run(&self, job: Job, secs: f64) -> Res<PeerResult> {
        let cpu0 = process::cpu_time(Usage::Children)?;
        let (server, port) = Self::serve(&self.image)?;
        let out = Command::new("fio")
            .args([
                "--name=peer",
                "--ioengine=nbd",
                &format!("--uri=nbd://127.0.0.1:{port}"),
                &format!("--rw={}", job.rw),
                &format!("--bs={}", job.bs),
                &format!("--iodepth={}", job.qd),
                &format!("--runtime={:.3}", secs.max(0.1)),
                &format!("--ramp_time={:.3}", (secs / 10.0).max(0.05)),
                "--time_based",
                "--lat_percentiles=1",
                "--percentile_list=50:99:99.9",
                "--output-format=json",
            ])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| BenchError::PeerSpawn {
                tool: "fio",
                source,
            })?;
        drop(server);
        let cpu = process::cpu_time(Usage::Children)?.saturating_sub(cpu0);
        if !out.status.success() {
            return Err(BenchError::PeerFailed {
                tool: "fio",
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            }
            .into());
        }
        parse_fio(&out.stdout, job, cpu)
    }
}

/// Read fio's JSON report (which follows a "connected to NBD server" line on stdout).
fn parse_fio(stdout: &[u8], job: Job, cpu: Duration) -> Res<PeerResult> {
    let text = String::from_utf8_lossy(stdout);
    let start = text
        .find('{')
        .ok_or(BenchError::FioReport("no JSON object at all"))?;
    let v: serde_json::Value = serde_json::from_str(&text[start..])?;
    let dir = if job.rw.contains("read") {
        "read"
    } else {
        "write"
    };
    let side = &v["jobs"][0][dir];
    let num = |x: &serde_json::Value| x.as_f64().unwrap_or(0.0);
    let iops = num(&side["iops"]);
    if iops <= 0.0 {
        return Err(BenchError::FioReport("no I/O in the direction of the workload").into());
    }
    let lat = &side["lat_ns"];
    let pct = |k: &str| num(&lat["percentile"][k]) / 1e3;
    let bytes_per_s = num(&side["bw_bytes"]);
    let moved = num(&side["io_bytes"]);
    Ok(PeerResult {
        iops,
        bytes_per_s,
        latency: Latency {
            n: num(&lat["N"]) as usize,
            p50_us: pct("50.000000"),
            p99_us: pct("99.000000"),
            p999_us: pct("99.900000"),
            mean_us: num(&lat["mean"]) / 1e3,
        },
        cpu_s_per_gb: if moved > 0.0 {
            cpu.as_secs_f64() / (moved / 1e9)
        } else {
            0.0
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fio_json_after_the_banner() {
        let out = br#"fio: connected to NBD server
{"jobs":[{"read":{"iops":1000.0,"bw_bytes":4096000,"io_bytes":8192000,
 "lat_ns":{"N":2000,"mean":50000.0,"percentile":{"50.000000":40000,"99.000000":90000,"99.900000":120000}}},
 "write":{"iops":0}}]}"#;
        let job = Job {
            rw: "randread",
            bs: 4096,
            qd: 1,
        };
        let r = parse_fio(out, job, Duration::from_millis(100)).unwrap();
        assert_eq!(r.iops, 1000.0);
        assert_eq!(r.latency.p50_us, 40.0);
        assert_eq!(r.latency.p999_us, 120.0);
        assert!((r.cpu_s_per_gb - 0.1 / 0.008192).abs() < 1e-9);
        let w = Job { rw: "write", ..job };
        assert!(parse_fio(out, w, Duration::ZERO).is_err(), "no write I/O");
        assert!(parse_fio(b"fio: oops", job, Duration::ZERO).is_err());
    }
}
