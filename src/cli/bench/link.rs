//! Links for the bench scenarios: port pairs over UDP loopback, a temporary veth pair (raw
//! Ethernet) or memory, and the raw baselines measured straight through those ports
//! (ping-pong RTT, one-way blast), so every scenario compares against the same path.
//!
//! The baseline is the best raw variant in the same mode as ours: the ping-pong on plain
//! sockets (one sendto/recvfrom per message), spinning when ours busy-polls; the blast both
//! plain and, over UDP, with segmentation offload (GSO send, GRO + recvmmsg receive, as our
//! UDP port uses), and the faster of the two is the baseline ([`raw_blast_best`]).

use super::error::BenchError;
use super::stats::{Latency, Throughput};
use pcietun::transport::driver::{
    eth::{EthPort, EthSpec},
    mem,
    udp::UdpPort,
    Port, Received, MAX_RECV_SLOTS,
};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Which link to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LinkKind {
    /// UDP on 127.0.0.1.
    Udp,
    /// Raw Ethernet over a temporary veth pair (root).
    Eth,
    /// In-process channels.
    Mem,
}

/// A veth pair in the current namespace, removed on drop.
pub struct Veth(pub String, pub String);

impl Veth {
    /// Create `ptb<pid>a` / `ptb<pid>b`, both up (needs root and `ip`).
    pub fn create() -> Res<Veth> {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("ptb{id}a"), format!("ptb{id}b"));
        let ip = |args: &[&str]| -> Res<()> {
            let st = Command::new("ip").args(args).status()?;
            if !st.success() {
                return Err(BenchError::Ip {
                    args: args.join(" "),
                    stderr: String::new(),
                }
                .into());
            }
            Ok(())
        };
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        let v = Veth(a, b);
        ip(&["link", "set", &v.0, "up"])?;
        ip(&["link", "set", &v.1, "up"])?;
        Ok(v)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Two connected ports: (client side, server side). `offload`: UDP with GSO/GRO where the
/// kernel has them (as the transport uses it), else plain sockets.
pub fn ports_with(
    kind: LinkKind,
    veth: Option<&Veth>,
    offload: bool,
) -> Res<(Box<dyn Port>, Box<dyn Port>)> {
    let udp = |offload: bool| -> Res<Box<dyn Port>> {
        let a = "127.0.0.1:0".parse()?;
        Ok(Box::new(if offload {
            UdpPort::bind(a)?
        } else {
            UdpPort::bind_plain(a)?
        }))
    };
    Ok(match kind {
        LinkKind::Udp => (udp(offload)?, udp(offload)?),
        LinkKind::Mem => {
            let (a, b) = mem::pair();
            (Box::new(a), Box::new(b))
        }
        LinkKind::Eth => {
            let v = veth.ok_or(BenchError::NoEthLink("a veth pair"))?;
            let open = |n: &str| -> Res<Box<dyn Port>> {
                Ok(Box::new(EthPort::open(&EthSpec::parse(n)?)?))
            };
            (open(&v.0)?, open(&v.1)?)
        }
    })
}

/// Two connected ports as the transport uses them: (client side, server side).
pub fn ports(kind: LinkKind, veth: Option<&Veth>) -> Res<(Box<dyn Port>, Box<dyn Port>)> {
    ports_with(kind, veth, true)
}

fn wait_or_spin(p: &mut dyn Port, busy: bool, t: Duration) {
    if busy {
        std::hint::spin_loop();
    } else {
        let _ = p.wait(Some(t));
    }
}

/// Raw ping-pong through the ports.
pub fn raw_rtt(
    c: Box<dyn Port>,
    s: Box<dyn Port>,
    size: usize,
    iters: usize,
    busy: bool,
) -> Latency {
    Latency::from_samples(&mut raw_rtt_samples(c, s, size, iters, busy))
}

/// Raw ping-pong: the round-trip samples after a 10 % warm-up, in order (for CDFs).
pub fn raw_rtt_samples(
    mut c: Box<dyn Port>,
    mut s: Box<dyn Port>,
    size: usize,
    iters: usize,
    busy: bool,
) -> Vec<Duration> {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let server_addr = s.local_addr();
    let echo = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !st.load(Ordering::Relaxed) {
            match s.recv(&mut buf) {
                Ok(Some((n, from))) => {
                    let _ = s.send(&buf[..n], from);
                }
                _ => wait_or_spin(s.as_mut(), busy, Duration::from_millis(20)),
            }
        }
    });
    let msg = vec![0x5au8; size];
    let mut buf = vec![0u8; 65536];
    let mut samples = Vec::with_capacity(iters);
    for i in 0..iters + iters / 10 {
        let t0 = Instant::now();
        if c.send(&msg, server_addr).is_err() {
            continue;
        }
        let got = loop {
            if let Ok(Some(_)) = c.recv(&mut buf) {
                break true;
            }
            if t0.elapsed() > Duration::from_millis(200) {
                break false;
            }
            wait_or_spin(c.as_mut(), busy, Duration::from_millis(50));
        };
        if got && i >= iters / 10 {
            samples.push(t0.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    samples
}

/// Raw one-way blast of `size`-byte datagrams for `secs`: one call per datagram on plain
/// ports; runs of datagrams per call (GSO) and coalesced receives (GRO, recvmmsg) on ports
/// that offer them. The receiver spins when `busy`.
pub fn raw_blast(
    mut c: Box<dyn Port>,
    mut s: Box<dyn Port>,
    size: usize,
    secs: f64,
    busy: bool,
) -> Throughput {
    let done = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let (d2, b2) = (done.clone(), bytes.clone());
    let dst = s.local_addr();
    let rx = std::thread::spawn(move || {
        let slot = s.recv_slot(size).max(size);
        let k = s.recv_slots().clamp(1, MAX_RECV_SLOTS);
        let mut buf = vec![0u8; slot * k];
        let mut got = [Received::default(); MAX_RECV_SLOTS];
        let mut n_msgs = 0u64;
        let mut last = Instant::now();
        loop {
            match s.recv_batch(&mut buf, slot, &mut got[..k]) {
                Ok(n) if n > 0 => {
                    for g in &got[..n] {
                        b2.fetch_add(g.len as u64, Ordering::Relaxed);
                        n_msgs += g.len.div_ceil(g.stride.max(1)) as u64;
                    }
                    last = Instant::now();
                }
                _ => {
                    if d2.load(Ordering::Relaxed) && last.elapsed() > Duration::from_millis(50) {
                        break;
                    }
                    wait_or_spin(s.as_mut(), busy, Duration::from_millis(10));
                }
            }
        }
        (n_msgs, last)
    });
    let run = c.max_segments().clamp(1, (65507 / size.max(1)).max(1));
    let msg = vec![0xa5u8; size * run];
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..(64 / run).max(1) {
            if run > 1 {
                let _ = c.send_segments(&msg, size, dst);
            } else {
                let _ = c.send(&msg, dst);
            }
        }
    }
    done.store(true, Ordering::Relaxed);
    let (msgs, last) = rx.join().unwrap_or((0, t0));
    Throughput::new(bytes.load(Ordering::Relaxed), msgs, last.duration_since(t0))
}

/// The raw blast baseline: plain, and with offloads where the link has them; the best wins.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Blast {
    /// The faster variant's figures.
    pub best: Throughput,
    /// Which variant that was: `plain sendto` or `GSO/GRO`.
    pub variant: &'static str,
    /// One datagram per call.
    pub plain: Throughput,
    /// GSO send, GRO + recvmmsg receive (UDP only, where the kernel has it).
    pub gso: Option<Throughput>,
}

impl Blast {
    /// One line naming the variants.
    pub fn describe(&self) -> String {
        match self.gso {
            Some(g) => format!(
                "best of plain sendto {:.3} Gbit/s and GSO/GRO {:.3} Gbit/s: {}",
                self.plain.gbit_s, g.gbit_s, self.variant
            ),
            None => format!("plain sendto {:.3} Gbit/s", self.plain.gbit_s),
        }
    }
}

/// [`raw_blast`] on fresh plain ports from `mk(false)`, and on offloaded ones from
/// `mk(true)` when those offer GSO; the faster is the baseline.
pub fn raw_blast_best(
    mut mk: impl FnMut(bool) -> Res<(Box<dyn Port>, Box<dyn Port>)>,
    size: usize,
    secs: f64,
    busy: bool,
) -> Res<Blast> {
    let (c, s) = mk(false)?;
    let plain = raw_blast(c, s, size, secs, busy);
    let (c, s) = mk(true)?;
    let gso = (c.max_segments() > 1).then(|| raw_blast(c, s, size, secs, busy));
    let (best, variant) = match gso {
        Some(g) if g.gbit_s > plain.gbit_s => (g, "GSO/GRO"),
        _ => (plain, "plain sendto"),
    };
    Ok(Blast {
        best,
        variant,
        plain,
        gso,
    })
}
