//! The raw network path every scenario is compared against (DESIGN.md "How we test" 5): the
//! same link ports our transport drives (mio UDP socket, AF_PACKET socket or in-memory
//! channel), used bare — a ping-pong for latency and a one-way blast for throughput — plus the
//! links themselves: a veth pair in the current namespace, or two network namespaces joined
//! by a veth pair, created for the run and removed on every path.

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

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

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

/// on / off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Enabled.
    On,
    /// Disabled.
    Off,
}

fn ip(args: &[&str]) -> Res<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(format!(
            "ip {} failed (need root): {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(())
}

/// A veth pair in the current namespace, removed on drop.
pub struct Veth(pub String, pub String);

impl Veth {
    /// Create `ptb<pid>a` / `ptb<pid>b`, both up.
    pub fn create() -> Res<Veth> {
        let id = std::process::id() % 100_000;
        let (a, b) = (format!("ptb{id}a"), format!("ptb{id}b"));
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        let v = Veth(a, b);
        ip(&["link", "set", &v.0, "up"])?;
        ip(&["link", "set", &v.1, "up"])?;
        Ok(v)
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).output();
    }
}

/// Two network namespaces joined by a veth pair (MTU 9000), removed on drop. Interface `a`
/// lives in namespace `ns_a`, `b` in `ns_b`; sockets are opened inside them with
/// [`NetnsPair::open_eth`].
#[derive(Debug)]
pub struct NetnsPair {
    /// Namespace names (under /run/netns).
    pub ns: [String; 2],
    /// Interface names, one per namespace.
    pub ifaces: [String; 2],
}

impl NetnsPair {
    /// Create the namespaces and the pair; `tag` keeps names unique between users in one process.
    pub fn create(tag: &str) -> Res<NetnsPair> {
        let id = std::process::id() % 100_000;
        let p = NetnsPair {
            ns: [format!("pt{tag}{id}a"), format!("pt{tag}{id}b")],
            ifaces: [format!("pt{tag}{id}x"), format!("pt{tag}{id}y")],
        };
        for ns in &p.ns {
            ip(&["netns", "add", ns])?;
        }
        // From here on Drop removes whatever exists.
        ip(&[
            "link",
            "add",
            &p.ifaces[0],
            "mtu",
            "9000",
            "type",
            "veth",
            "peer",
            "name",
            &p.ifaces[1],
            "mtu",
            "9000",
        ])?;
        for i in 0..2 {
            ip(&["link", "set", &p.ifaces[i], "netns", &p.ns[i]])?;
            ip(&["-n", &p.ns[i], "link", "set", &p.ifaces[i], "up"])?;
            ip(&["-n", &p.ns[i], "link", "set", "lo", "up"])?;
        }
        Ok(p)
    }

    /// Run `f` on a thread that has entered namespace `i` (sockets it creates stay there).
    /// Like `ip netns exec`, the thread also gets its own mount namespace with a fresh sysfs,
    /// so `/sys/class/net` shows the namespace's interfaces.
    pub fn in_ns<T: Send + 'static>(
        &self,
        i: usize,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Res<T> {
        let path = format!("/run/netns/{}", self.ns[i]);
        let h = std::thread::spawn(move || -> std::io::Result<T> {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path)?;
            let check = |rc: libc::c_int| {
                if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            // SAFETY: plain syscalls on valid arguments; they change only this short-lived
            // thread's namespaces (it does not share its fs struct after CLONE_FS).
            unsafe {
                check(libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                ))?;
                check(libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH))?;
                check(libc::mount(
                    c"sysfs".as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                ))?;
            }
            f()
        });
        Ok(h.join().map_err(|_| "namespace thread panicked")??)
    }

    /// An AF_PACKET port on the interface of namespace `i`.
    pub fn open_eth(&self, i: usize) -> Res<Box<dyn Port>> {
        let spec = EthSpec::parse(&self.ifaces[i])?;
        let p = self.in_ns(i, move || EthPort::open(&spec))?;
        Ok(Box::new(p))
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        for ns in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
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
            let v = veth.ok_or("no veth pair")?;
            let open = |n: &str| -> Res<Box<dyn Port>> {
                Ok(Box::new(EthPort::open(&EthSpec::parse(n)?)?))
            };
            (open(&v.0)?, open(&v.1)?)
        }
    })
}

pub fn wait_or_spin(p: &mut dyn Port, busy: bool, t: Duration) {
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
    let mut samples = raw_rtt_samples(c, s, size, iters, busy);
    Latency::from_samples(&mut samples)
}

/// Raw ping-pong: the round-trip samples after a 10 % warm-up (unsorted, in order).
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
