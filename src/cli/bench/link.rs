//! Links for the bench scenarios: port pairs over UDP loopback, a temporary veth pair (raw
//! Ethernet) or memory, and the raw baselines measured straight through those ports
//! (ping-pong RTT, one-way blast), so every scenario compares against the same path.

use super::error::BenchError;
use super::stats::{Latency, Throughput};
use pcietun::transport::driver::{
    eth::{EthPort, EthSpec},
    mem,
    udp::UdpPort,
    Port,
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

/// Two connected ports: (client side, server side).
pub fn ports(kind: LinkKind, veth: Option<&Veth>) -> Res<(Box<dyn Port>, Box<dyn Port>)> {
    Ok(match kind {
        LinkKind::Udp => (
            Box::new(UdpPort::bind("127.0.0.1:0".parse()?)?),
            Box::new(UdpPort::bind("127.0.0.1:0".parse()?)?),
        ),
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

/// Raw one-way blast of `size`-byte datagrams for `secs`.
pub fn raw_blast(mut c: Box<dyn Port>, mut s: Box<dyn Port>, size: usize, secs: f64) -> Throughput {
    let done = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let (d2, b2) = (done.clone(), bytes.clone());
    let dst = s.local_addr();
    let rx = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        let mut n_msgs = 0u64;
        let mut last = Instant::now();
        loop {
            match s.recv(&mut buf) {
                Ok(Some((n, _))) => {
                    b2.fetch_add(n as u64, Ordering::Relaxed);
                    n_msgs += 1;
                    last = Instant::now();
                }
                _ => {
                    if d2.load(Ordering::Relaxed) && last.elapsed() > Duration::from_millis(50) {
                        break;
                    }
                    let _ = s.wait(Some(Duration::from_millis(10)));
                }
            }
        }
        (n_msgs, last)
    });
    let msg = vec![0xa5u8; size];
    let t0 = Instant::now();
    while t0.elapsed().as_secs_f64() < secs {
        for _ in 0..64 {
            let _ = c.send(&msg, dst);
        }
    }
    done.store(true, Ordering::Relaxed);
    let (msgs, last) = rx.join().unwrap_or((0, t0));
    Throughput::new(bytes.load(Ordering::Relaxed), msgs, last.duration_since(t0))
}
