//! The links of the device scenarios beyond `link.rs` (which holds the raw baseline shared
//! with `bench transport`: port pairs, ping-pong, blast): two network namespaces joined by a
//! veth pair, created for the run and removed on every path, with sockets opened inside each.

use super::error::BenchError;
pub use super::link::{raw_blast_best, raw_rtt_samples, Blast, LinkKind};
pub use super::transport::OnOff;
use pcietun::transport::driver::{
    eth::{EthPort, EthSpec},
    Port,
};
use std::process::Command;

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn ip(args: &[&str]) -> Res<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(BenchError::Ip {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        }
        .into());
    }
    Ok(())
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
            let file = std::fs::File::open(&path)?;
            pcietun::sys::process::enter_netns(&file)?;
            f()
        });
        Ok(h.join()
            .map_err(|_| BenchError::ThreadPanicked("namespace"))??)
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
