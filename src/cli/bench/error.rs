//! What can go wrong in a bench scenario, beyond the errors of the layers it drives.

use std::path::PathBuf;

use pcietun::tlp::Bdf;

/// Why a bench scenario failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// An `ip` command (veth pair, network namespace) failed.
    #[error("ip {args} failed (need root){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Ip {
        /// Its arguments.
        args: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The Ethernet link needs a veth pair (or namespaces) that were not created.
    #[error("the eth link needs {0}, which were not created")]
    NoEthLink(&'static str),
    /// A worker thread of a scenario failed (its error, as text: it crossed threads).
    #[error("a worker failed: {0}")]
    Worker(String),
    /// A scenario asked for what it cannot do (the message says what).
    #[error("{0}")]
    Unsupported(String),
    /// A transport session (or a process, a handshake) did not come up.
    #[error("{0} not established in time")]
    NoSession(&'static str),
    /// A ping-pong echo did not come back.
    #[error("{0} lost")]
    EchoLost(&'static str),
    /// The stream of posted writes stopped arriving.
    #[error("stream stalled after {0} TLPs")]
    Stalled(u64),
    /// Enumeration found other functions than the rig created.
    #[error("enumeration through the tunnel found {found} functions, expected {want}")]
    Enumeration {
        /// Functions found.
        found: usize,
        /// Functions the rig has.
        want: usize,
    },
    /// A function disappeared between enumeration and use.
    #[error("function {0} vanished")]
    Vanished(Bdf),
    /// An MMIO read returned the wrong value.
    #[error("MMIO read returned {got:#x}, expected {want:#x}")]
    MmioValue {
        /// Read.
        got: u32,
        /// Expected.
        want: u32,
    },
    /// A read behind posted writes did not see the last one.
    #[error("posted writes lost: read back {got:#x}, wrote {wrote:#x}")]
    PostedLost {
        /// Read back.
        got: u32,
        /// Last value written.
        wrote: u32,
    },
    /// NVMe commands completed with an error status.
    #[error("{0} NVMe commands failed")]
    NvmeErrors(u64),
    /// Data read back differs from what was written.
    #[error("{0} data check failed: what came back differs from what went out")]
    DataMismatch(&'static str),
    /// A helper thread panicked.
    #[error("the {0} thread panicked")]
    ThreadPanicked(&'static str),
    /// A tool of the peer (`nbdkit`, `fio`) could not be started.
    #[error("starting {tool}: {source}")]
    PeerSpawn {
        /// Which tool.
        tool: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool of the peer failed.
    #[error("{tool} failed ({status}): {stderr}")]
    PeerFailed {
        /// Which tool.
        tool: &'static str,
        /// Its exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// `--peer` was asked for, its tools are missing, and PCIETUN_REQUIRE_ALL=1.
    #[error("the peer cannot run: {0}")]
    PeerMissing(String),
    /// nbdkit did not accept connections in time.
    #[error("nbdkit is not listening on {0} after 5 s")]
    PeerNotListening(std::net::SocketAddr),
    /// fio's report lacks what was asked for.
    #[error("fio's JSON report has {0}")]
    FioReport(&'static str),
    /// The `--json` report could not be written.
    #[error("writing {}: {source}", path.display())]
    Report {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
