//! The software peer for docs/bench.md: what a 4-byte MMIO read costs when a device lives in
//! another local process behind vfio-user over a UNIX socket, measured with the rust-vmm
//! `vfio_user` crate on both ends (its `Server` in a child process, its `Client` here).
//! In the same run it measures a raw 64-byte UNIX-stream ping-pong between two processes, so
//! the figures can be read as ratios like every `pcietun bench` figure.
//!
//! `cargo run --release --example vfio_user_peer -- [ITERS] [--json FILE]`

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{IrqInfo, Server, ServerBackend, ServerRegion};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// A device with one 4 KiB memory BAR.
struct Bar0(Vec<u8>);

impl ServerBackend for Bar0 {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> std::io::Result<()> {
        let o = offset as usize;
        match self.0.get(o..o + data.len()) {
            Some(s) if region == VFIO_PCI_BAR0_REGION_INDEX => {
                data.copy_from_slice(s);
                Ok(())
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let o = offset as usize;
        match self.0.get_mut(o..o + data.len()) {
            Some(s) if region == VFIO_PCI_BAR0_REGION_INDEX => {
                s.copy_from_slice(data);
                Ok(())
            }
            _ => Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
    }
    fn dma_map(
        &mut self,
        _: vfio_user::DmaMapFlags,
        _: u64,
        _: u64,
        _: u64,
        _: Option<std::fs::File>,
    ) -> std::io::Result<()> {
        Ok(())
    }
    fn dma_unmap(&mut self, _: vfio_user::DmaUnmapFlags, _: u64, _: u64) -> std::io::Result<()> {
        Ok(())
    }
    fn reset(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn set_irqs(
        &mut self,
        _: u32,
        _: u32,
        _: u32,
        _: u32,
        _: Vec<std::fs::File>,
    ) -> std::io::Result<()> {
        Ok(())
    }
}

fn serve(path: &Path) -> Res<()> {
    let regions = (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let mut info = vfio_region_info {
                argsz: std::mem::size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            if index == VFIO_PCI_BAR0_REGION_INDEX {
                info.size = 4096;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            }
            ServerRegion {
                region_info: info,
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect();
    let irqs = (0..VFIO_PCI_NUM_IRQS)
        .map(|index| IrqInfo {
            index,
            count: 0,
            flags: 0,
        })
        .collect();
    let server = Server::new(path, true, irqs, regions).map_err(|e| format!("{e:?}"))?;
    let mut bar = Bar0(vec![0; 4096]);
    bar.0[..4].copy_from_slice(&0x3141_4d44u32.to_le_bytes());
    // Returns when the client hangs up.
    let _ = server.run(&mut bar);
    Ok(())
}

fn echo(path: &Path) -> Res<()> {
    let l = std::os::unix::net::UnixListener::bind(path)?;
    let (mut s, _) = l.accept()?;
    let mut b = [0u8; 64];
    while s.read_exact(&mut b).is_ok() {
        s.write_all(&b)?;
    }
    Ok(())
}

fn pct(s: &mut [Duration], q: f64) -> f64 {
    s.sort_unstable();
    s[((s.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6
}

fn child(mode: &str, path: &Path) -> Res<std::process::Child> {
    let c = Command::new(std::env::current_exe()?)
        .arg(mode)
        .arg(path)
        .stdin(Stdio::null())
        .spawn()?;
    let t0 = Instant::now();
    while !path.exists() {
        if t0.elapsed() > Duration::from_secs(5) {
            return Err(format!("{mode} child did not create {}", path.display()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(c)
}

fn main() -> Res<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => return serve(Path::new(&args[2])),
        Some("echo") => return echo(Path::new(&args[2])),
        _ => {}
    }
    let iters: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(50_000);
    let json = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
        .map(PathBuf::from);
    let dir = tempfile::tempdir()?;

    // Raw: 64-byte ping-pong over a UNIX stream socket between two processes.
    let p = dir.path().join("echo.sock");
    let mut c = child("echo", &p)?;
    let mut s = UnixStream::connect(&p)?;
    let mut raw = Vec::with_capacity(iters);
    let mut b = [0x5au8; 64];
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
        if i >= iters / 10 {
            raw.push(t.elapsed());
        }
    }
    drop(s);
    c.wait()?;

    // vfio-user: 4-byte REGION_READ of BAR0 through rust-vmm's client and server.
    let p = dir.path().join("dev.sock");
    let mut c = child("server", &p)?;
    let mut client = vfio_user::Client::new(&p).map_err(|e| format!("{e:?}"))?;
    let mut v = Vec::with_capacity(iters);
    let mut d = [0u8; 4];
    for i in 0..iters + iters / 10 {
        let t = Instant::now();
        client
            .region_read(VFIO_PCI_BAR0_REGION_INDEX, 0, &mut d)
            .map_err(|e| format!("{e:?}"))?;
        if i >= iters / 10 {
            v.push(t.elapsed());
        }
        if d != 0x3141_4d44u32.to_le_bytes() {
            return Err("region read returned the wrong value".into());
        }
    }
    let _ = client.shutdown();
    drop(client);
    c.wait()?;

    let (r50, r99, r999) = (
        pct(&mut raw, 0.5),
        pct(&mut raw, 0.99),
        pct(&mut raw, 0.999),
    );
    let (v50, v99, v999) = (pct(&mut v, 0.5), pct(&mut v, 0.99), pct(&mut v, 0.999));
    println!("vfio-user software peer, {iters} samples, two local processes");
    println!(
        "{:<44} {:>8} {:>8} {:>8}",
        "", "p50 µs", "p99 µs", "p99.9 µs"
    );
    println!(
        "{:<44} {r50:>8.1} {r99:>8.1} {r999:>8.1}",
        "raw UNIX-stream ping-pong, 64 B"
    );
    println!(
        "{:<44} {v50:>8.1} {v99:>8.1} {v999:>8.1}",
        "vfio-user 4-byte REGION_READ (rust-vmm)"
    );
    println!("ratio p50 {:.2}, p99 {:.2}", v50 / r50, v99 / r99);
    if let Some(j) = json {
        let out = serde_json::json!({
            "raw_unix_ping_pong": {"p50_us": r50, "p99_us": r99, "p999_us": r999},
            "vfio_user_region_read": {"p50_us": v50, "p99_us": v99, "p999_us": v999},
            "ratio_p50": v50 / r50,
            "ratio_p99": v99 / r99,
            "samples": iters,
        });
        std::fs::write(j, serde_json::to_string_pretty(&out)?)?;
    }
    Ok(())
}
