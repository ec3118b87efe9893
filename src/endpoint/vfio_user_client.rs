//! The appliance as a vfio-user *client*: any vfio-user device server (libvfio-user's samples,
//! QEMU's `x-vfio-user-server`, SPDK) becomes a card the appliance fronts, as an
//! [`endpoint::Device`](super::Device) like its own models.
//!
//! Protocol: QEMU `docs/interop/vfio-user.rst` (0.x) with the VFIO PCI region and IRQ indices of
//! `<linux/vfio.h>`; messages are [`crate::pci::vfio_user`], the codec the host's server uses.
//!
//! * **Connect** ([`VfioUserClient::connect`]): the UNIX socket (retried until
//!   [`ClientConfig::connect_timeout`], so a server still starting is waited for), VERSION with
//!   JSON capabilities (serde_json), DEVICE_GET_INFO, REGION_INFO of BAR0-5 and the config
//!   region, IRQ_INFO, one DMA_MAP without a descriptor for [`ClientConfig::dma_window`] (the
//!   server reaches it with DMA_READ/DMA_WRITE messages), and SET_IRQS handing the server the
//!   INTx eventfd (one eventfd per vector is made for every index; the server holds those of
//!   one index at a time, see below).
//! * **Config space**: the server's config region is read once and presented through
//!   `crate::pci::replay`, as a replayed card is: the appliance virtualizes the BARs (sized from
//!   REGION_INFO, rounded up to a power of two), the ROM is hidden, capabilities are emulated
//!   locally (MSI-X is the endpoint's, from [`Decode::msix`]). Every write except to the ROM is
//!   also posted to the server's config region, so it sees the BAR addresses (QEMU's server
//!   serves a BAR only once it is mapped), Command, MSI/MSI-X enables and its own registers.
//! * **BARs**: reads are REGION_READ matched to their reply by message id; writes are
//!   REGION_WRITE, *posted*: sent without waiting, their replies collected by the reader thread,
//!   at most [`ClientConfig::max_posted`] in flight (a writer past that waits for one). Every
//!   request has [`ClientConfig::request_timeout`]: a read not answered in time fails (the
//!   endpoint answers Completer Abort) and the server is *unresponsive* — later requests fail at
//!   once — until it answers anything again, so a stuck server costs one time limit, not one
//!   per access. The calling thread (the endpoint's) never waits longer than that.
//! * **Interrupts**: a thread waits on the eventfds ([`crate::sys::fd::PollSet`]). MSI-X vectors
//!   go to [`InterruptHandle::signal_msix`]; MSI vectors through the local MSI capability; INTx
//!   asserts the function's INTx, and — as VFIO's INTx emulation does, since an eventfd carries
//!   no level — the next BAR access deasserts it and unmasks the server's INTx, which signals
//!   again if the device still wants service. When MSI-X is enabled every vector is unmasked
//!   from vector 0 (QEMU's server ignores a partial unmask). As in VFIO, one index is enabled
//!   at a time: the server holds the eventfds of MSI-X while it is enabled, else of MSI while
//!   that is enabled, else of INTx; a config write that changes which disables the old index
//!   (SET_IRQS count 0) and hands over the new one. libvfio-user (so QEMU's server) keeps one
//!   eventfd table for all indices, so wiring up two at once loses the first one's interrupts:
//!   QEMU's `pci-serial` offers an MSI vector it never uses, whose eventfd replaced INTx's.
//! * **DMA**: the server's DMA_READ/DMA_WRITE requests become the function's upstream DMA
//!   ([`DmaHandle`]: MRd/MWr through the tunnel to the owning host, checked there against the
//!   host's DMA windows), served by a worker thread so the reader keeps collecting replies.
//! * **Reset**: FLR and conventional reset send DEVICE_RESET and reset the local config space.
//! * **Failure**: a server that disconnects, dies, breaks the framing or answers out of
//!   protocol marks the function *failed* ([`VfioUserClient::health`], [`Health`]): every
//!   access then fails at once (reads Completer Abort), nothing waits for it, nothing panics.
//!   A hostile server's messages are hostile input: sizes are bounded before anything is
//!   allocated, every field is checked ([`parse_server_message`] is what the fuzz target and
//!   the proptests drive).
//!
//! Limits: a server that starts DMA *while* handling a REGION_READ (the endpoint thread is then
//! waiting for that read) sees its DMA_READ time out, because the endpoint cannot run the DMA
//! until the read ends; DMA started by a (posted) write, the usual doorbell, is not affected.
//! QEMU's server honours only DMA mappings backed by a descriptor, so its devices cannot DMA
//! through this client (their DMA is dropped by QEMU, not by us).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Process};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use thiserror::Error;

use super::device::ResetKind;
use super::device::{Decode, Device, DeviceContext, DeviceError, DmaHandle, InterruptHandle};
use super::pcicfg::{self, pci_decode};
use crate::pci::replay::{replay, ReplayBar, ReplayError, ReplaySizes};
use crate::pci::spec::{bar as b, header as h};
use crate::pci::vfio_user::{
    irq, parse_version, region, Command, DeviceInfoRepr, DmaAccessRepr, DmaMapRepr, IrqInfoRepr,
    IrqSetRepr, MessageHeader, MessageHeaderRepr, MessageType, RegionAccessRepr, RegionInfoRepr,
    VersionRepr, WireError, HEADER_LEN,
};
use crate::pci::{ConfigSpace, InterruptOutcome, MsiCap, MsixCap};
use crate::ratelimit::LogLimiter;
use crate::sync::{CondvarExt, MutexExt};
use crate::sys::fd::{EventFd, PollSet};
use crate::sys::socket::{recv_exact_with_fds, send_all_with_fds};
use crate::warn_limited;

/// Largest data transfer we offer and accept in one message (the spec's default).
pub const MAX_DATA_XFER: usize = 1 << 20;
/// Largest message we accept from a server: a data transfer plus its headers.
pub const MAX_MESSAGE: usize = HEADER_LEN + 64 + MAX_DATA_XFER;
/// Most regions a device may report (VFIO PCI has 9; device-specific ones follow).
const MAX_REGIONS: u32 = 64;
/// Most vectors per IRQ index we wire up (MSI-X's architectural maximum).
const MAX_VECTORS: u32 = 2048;
/// Largest BAR we present (a server's region size is hostile input).
const MAX_BAR: u64 = 1 << 40;
/// Descriptors per SET_IRQS message, whatever the server allows.
const FDS_PER_MESSAGE: u32 = 64;

/// How to reach and drive one vfio-user server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// The server's UNIX socket.
    pub socket: PathBuf,
    /// How long to keep trying to connect (the server may still be starting).
    pub connect_timeout: Duration,
    /// Longest wait for any reply.
    pub request_timeout: Duration,
    /// Posted writes in flight before a writer waits for their replies.
    pub max_posted: usize,
    /// The DMA window announced with DMA_MAP: `(address, size)` on the owning host's bus.
    /// The server's DMA must fall inside it; the host checks its own windows as well.
    pub dma_window: (u64, u64),
}

impl ClientConfig {
    /// Defaults for `socket`: connect within 5 s, 1 s per request, 64 posted writes, a DMA
    /// window of the first 8 TiB (libvfio-user's largest).
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(1),
            max_posted: 64,
            dma_window: (0, 8 << 40),
        }
    }
}

/// Why the client could not set up, or why a request failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// Connecting to the socket failed until the connect timeout.
    #[error("cannot connect to vfio-user server {path}: {source}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// The last error.
        #[source]
        source: io::Error,
    },
    /// The server process could not be started.
    #[error("cannot start vfio-user server {program:?}: {source}")]
    Start {
        /// The program.
        program: String,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Sending to the server failed (the connection is then closed).
    #[error("vfio-user send failed: {0}")]
    Send(#[source] io::Error),
    /// Setting up a thread or descriptor failed.
    #[error("vfio-user client setup: {0}")]
    Setup(#[source] io::Error),
    /// A reply did not parse.
    #[error("vfio-user {command:?} reply: {source}")]
    Wire {
        /// The request.
        command: Command,
        /// What was wrong.
        #[source]
        source: WireError,
    },
    /// A reply was well-formed but not what the protocol allows.
    #[error("vfio-user {command:?} reply: {what}")]
    Protocol {
        /// The request.
        command: Command,
        /// What was wrong (a fixed description).
        what: &'static str,
    },
    /// The server answered with an error.
    #[error("vfio-user server refused {command:?}: errno {errno}")]
    Refused {
        /// The request.
        command: Command,
        /// The errno it returned.
        errno: u32,
    },
    /// The server did not answer in time.
    #[error("vfio-user server did not answer {command:?} within {after:?}")]
    Timeout {
        /// The request.
        command: Command,
        /// The time limit.
        after: Duration,
    },
    /// An earlier request went unanswered; requests fail at once until the server answers.
    #[error("vfio-user server is unresponsive")]
    Unresponsive,
    /// The function has failed ([`Health::Failed`]).
    #[error("vfio-user server connection failed: {0}")]
    Failed(FailReason),
    /// The server's configuration space cannot be presented.
    #[error("vfio-user server's config space: {0}")]
    Config(#[from] ReplayError),
}

/// Why a function fronting a vfio-user server has failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FailReason {
    /// The server closed the connection.
    #[error("the server disconnected")]
    Disconnected,
    /// Reading or writing the socket failed.
    #[error("socket error: {0}")]
    Io(io::ErrorKind),
    /// The server broke the protocol (a fixed description); the connection was closed.
    #[error("protocol violation: {0}")]
    Protocol(&'static str),
    /// The server process the client started has exited (its exit code, if any).
    #[error("the server process exited (code {0:?})")]
    Exited(Option<i32>),
    /// The client was shut down.
    #[error("the client was shut down")]
    Closed,
}

/// Whether the server behind a function is serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Connected and answering.
    Serving,
    /// An earlier request went unanswered within the time limit.
    Unresponsive,
    /// Gone for good; the function fails every access.
    Failed(FailReason),
}

/// A request waiting for its reply.
enum Pending {
    /// A caller blocked on the reply.
    Call(Command, mpsc::Sender<Result<Vec<u8>, ClientError>>),
    /// A posted write: nobody waits; an error reply is counted and logged.
    Posted(Instant),
}

/// The connection, shared by the device, the reader, the DMA worker and the IRQ thread.
struct Conn {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u16, Pending>>,
    /// Signalled when a posted write's reply arrives or the connection fails.
    posted_cv: Condvar,
    next_id: AtomicU16,
    failed: OnceLock<FailReason>,
    unresponsive: AtomicBool,
    posted_errors: AtomicU64,
    timeout: Duration,
    max_posted: usize,
    limit: LogLimiter,
}

impl Conn {
    fn fail(&self, why: FailReason) {
        if self.failed.set(why).is_ok() {
            if why != FailReason::Closed {
                tracing::warn!(reason = %why, "vfio-user server failed; the function fails every access");
            }
            let _ = self
                .writer
                .lock_or_recover()
                .shutdown(std::net::Shutdown::Both);
        }
        let waiters = std::mem::take(&mut *self.pending.lock_or_recover());
        for (_, p) in waiters {
            if let Pending::Call(_, tx) = p {
                let _ = tx.send(Err(ClientError::Failed(why)));
            }
        }
        self.posted_cv.notify_all();
    }

    fn health(&self) -> Health {
        match self.failed.get() {
            Some(r) => Health::Failed(*r),
            None if self.unresponsive.load(Ordering::Acquire) => Health::Unresponsive,
            None => Health::Serving,
        }
    }

    fn usable(&self) -> Result<(), ClientError> {
        match self.health() {
            Health::Failed(r) => Err(ClientError::Failed(r)),
            Health::Unresponsive => Err(ClientError::Unresponsive),
            Health::Serving => Ok(()),
        }
    }

    fn send(&self, msg: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), ClientError> {
        let w = self.writer.lock_or_recover();
        send_all_with_fds(&*w, msg, fds).map_err(|e| {
            drop(w);
            // Part of a message may be out: the framing is lost.
            self.fail(FailReason::Io(e.kind()));
            ClientError::Send(e)
        })
    }

    /// A message: header for `cmd` with a fresh id, then `body` parts.
    fn frame(&self, cmd: Command, parts: &[&[u8]], out: &mut Vec<u8>) -> u16 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let size: usize = HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>();
        out.clear();
        out.resize(HEADER_LEN, 0);
        MessageHeaderRepr {
            id,
            command: cmd,
            size: size as u32,
            kind: MessageType::Command,
            no_reply: false,
            error: None,
        }
        .emit_bytes(out);
        for p in parts {
            out.extend_from_slice(p);
        }
        id
    }

    /// Send a request and wait for its reply body.
    fn call(
        &self,
        cmd: Command,
        parts: &[&[u8]],
        fds: &[BorrowedFd<'_>],
    ) -> Result<Vec<u8>, ClientError> {
        self.usable()?;
        let mut msg = Vec::new();
        let id = self.frame(cmd, parts, &mut msg);
        let (tx, rx) = mpsc::channel();
        self.pending
            .lock_or_recover()
            .insert(id, Pending::Call(cmd, tx));
        if let Err(e) = self.send(&msg, fds) {
            self.pending.lock_or_recover().remove(&id);
            return Err(e);
        }
        match rx.recv_timeout(self.timeout) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                self.pending.lock_or_recover().remove(&id);
                if self.unresponsive.swap(true, Ordering::AcqRel) {
                    tracing::debug!(command = ?cmd, "vfio-user request timed out again");
                } else {
                    warn_limited!(self.limit, command = ?cmd, timeout = ?self.timeout,
                        "vfio-user server did not answer; failing its accesses until it does");
                }
                Err(ClientError::Timeout {
                    command: cmd,
                    after: self.timeout,
                })
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Failed(
                self.failed.get().copied().unwrap_or(FailReason::Closed),
            )),
        }
    }

    /// Send a request whose reply nobody waits for (a posted write).
    fn post(&self, cmd: Command, parts: &[&[u8]], msg: &mut Vec<u8>) -> Result<(), ClientError> {
        self.usable()?;
        {
            let mut p = self.pending.lock_or_recover();
            let deadline = Instant::now() + self.timeout;
            loop {
                let posted = p
                    .values()
                    .filter(|v| matches!(v, Pending::Posted(_)))
                    .count();
                if posted < self.max_posted {
                    break;
                }
                self.usable()?;
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.unresponsive.store(true, Ordering::Release);
                    return Err(ClientError::Timeout {
                        command: cmd,
                        after: self.timeout,
                    });
                }
                p = self.posted_cv.wait_timeout_or_recover(p, left).0;
            }
            let id = self.frame(cmd, parts, msg);
            p.insert(id, Pending::Posted(Instant::now()));
        }
        self.send(msg, &[])
    }

    /// A reply arrived (from the reader thread).
    fn deliver(&self, hdr: &MessageHeaderRepr, body: &[u8]) {
        self.unresponsive.store(false, Ordering::Release);
        let p = self.pending.lock_or_recover().remove(&hdr.id);
        match p {
            Some(Pending::Call(cmd, tx)) => {
                let r = if hdr.command != cmd {
                    Err(ClientError::Protocol {
                        command: cmd,
                        what: "the reply names another command",
                    })
                } else if let Some(errno) = hdr.error {
                    Err(ClientError::Refused {
                        command: cmd,
                        errno,
                    })
                } else {
                    Ok(body.to_vec())
                };
                let _ = tx.send(r);
            }
            Some(Pending::Posted(sent)) => {
                if let Some(errno) = hdr.error {
                    self.posted_errors.fetch_add(1, Ordering::Relaxed);
                    warn_limited!(self.limit, command = ?hdr.command, errno,
                        after = ?sent.elapsed(), "vfio-user server refused a posted write");
                }
                self.posted_cv.notify_all();
            }
            None => tracing::debug!(%hdr, "vfio-user reply to no pending request"),
        }
    }
}

/// A message from the server, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMessage<'a> {
    /// A reply to request `hdr.id`; `body` follows the header.
    Reply {
        /// Its header.
        hdr: MessageHeaderRepr,
        /// The body.
        body: &'a [u8],
    },
    /// `VFIO_USER_DMA_READ`: the server reads `count` bytes at `address`.
    DmaRead {
        /// Message id, for the reply.
        id: u16,
        /// The access.
        access: DmaAccessRepr,
    },
    /// `VFIO_USER_DMA_WRITE`: the server writes `data` at `address`.
    DmaWrite {
        /// Message id, for the reply.
        id: u16,
        /// The access.
        access: DmaAccessRepr,
        /// The bytes.
        data: &'a [u8],
    },
    /// A well-framed command we do not serve (answered ENOSYS unless `no_reply`).
    Unsupported {
        /// Its header.
        hdr: MessageHeaderRepr,
    },
    /// A DMA command whose body is malformed (answered EINVAL unless `no_reply`).
    Malformed {
        /// Its header.
        hdr: MessageHeaderRepr,
        /// What is wrong.
        what: &'static str,
    },
}

/// Parse one whole message from a server (`msg` is exactly the header's size). A header that
/// does not parse, or a size that disagrees with `msg`, is an error (the framing is lost); a
/// bad DMA body is [`ServerMessage::Malformed`] (the connection survives, the request fails).
pub fn parse_server_message(msg: &[u8]) -> Result<ServerMessage<'_>, WireError> {
    let hdr = MessageHeaderRepr::parse(&MessageHeader::new_checked(msg)?)?;
    if hdr.size as usize != msg.len() {
        return Err(WireError::Truncated {
            what: "message",
            need: hdr.size as usize,
            got: msg.len(),
        });
    }
    let body = &msg[HEADER_LEN..];
    if hdr.kind == MessageType::Reply {
        return Ok(ServerMessage::Reply { hdr, body });
    }
    let malformed = |what| Ok(ServerMessage::Malformed { hdr, what });
    match hdr.command {
        Command::DmaRead | Command::DmaWrite => {
            let Ok(access) = DmaAccessRepr::parse(body) else {
                return malformed("DMA body shorter than its fixed part");
            };
            if access.count == 0 || access.count > MAX_DATA_XFER as u64 {
                return malformed("DMA count is 0 or above max_data_xfer_size");
            }
            if access.address.checked_add(access.count).is_none() {
                return malformed("DMA range wraps the address space");
            }
            let data = &body[DmaAccessRepr::LEN..];
            if hdr.command == Command::DmaRead {
                if !data.is_empty() {
                    return malformed("DMA_READ request carries data");
                }
                Ok(ServerMessage::DmaRead { id: hdr.id, access })
            } else {
                if data.len() as u64 != access.count {
                    return malformed("DMA_WRITE data length differs from its count");
                }
                Ok(ServerMessage::DmaWrite {
                    id: hdr.id,
                    access,
                    data,
                })
            }
        }
        _ => Ok(ServerMessage::Unsupported { hdr }),
    }
}

/// What the server says about its device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// Its VERSION reply (major, minor).
    pub version: (u16, u16),
    /// Its `max_msg_fds` (1 when it says nothing).
    pub max_msg_fds: u32,
    /// Its `max_data_xfer_size` (clamped to [`MAX_DATA_XFER`]).
    pub max_data_xfer: usize,
    /// REGION_INFO of BAR0-5, ROM and config, by index (size 0 = absent).
    pub regions: Vec<RegionInfoRepr>,
    /// Vectors of INTx, MSI, MSI-X.
    pub irqs: [u32; 3],
    /// Config region bytes as the server reported them at connect.
    pub config: Vec<u8>,
}

/// Parse a VERSION reply body: `(major, minor, max_msg_fds, max_data_xfer)`.
pub fn parse_version_reply(body: &[u8]) -> Result<(u16, u16, u32, usize), ClientError> {
    let command = Command::Version;
    let (v, text) = parse_version(body).map_err(|source| ClientError::Wire { command, source })?;
    if v.major != 0 {
        return Err(ClientError::Protocol {
            command,
            what: "unsupported major version (this client speaks 0.x)",
        });
    }
    let json: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(text).map_err(|_| ClientError::Protocol {
            command,
            what: "version data is not JSON",
        })?
    };
    let caps = json.get("capabilities");
    let num = |name: &str| -> Result<Option<u64>, ClientError> {
        match caps.and_then(|c| c.get(name)) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or(ClientError::Protocol {
                command,
                what: "a capability is not a non-negative integer",
            }),
        }
    };
    let fds = num("max_msg_fds")?
        .unwrap_or(1)
        .min(u64::from(FDS_PER_MESSAGE)) as u32;
    let xfer = num("max_data_xfer_size")?
        .unwrap_or(MAX_DATA_XFER as u64)
        .clamp(4, MAX_DATA_XFER as u64) as usize;
    Ok((v.major, v.minor, fds, xfer))
}

/// A server process the client started, supervised: its exit fails the function.
struct Supervised {
    child: Arc<Mutex<Child>>,
    watcher: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// State the IRQ thread shares with the device.
struct Local {
    cfg: ConfigSpace,
    intx_asserted: bool,
}

/// A PCI function served by a vfio-user server.
pub struct VfioUserClient {
    conn: Arc<Conn>,
    info: ServerInfo,
    bars: Vec<ReplayBar>,
    local: Arc<Mutex<Local>>,
    irq_handle: Arc<OnceLock<InterruptHandle>>,
    dma_handle: Arc<OnceLock<DmaHandle>>,
    stop_irq: Arc<EventFd>,
    /// The eventfds the server signals: kept open for the life of the client.
    eventfds: Arc<Vec<EventFd>>,
    threads: Vec<JoinHandle<()>>,
    supervised: Option<Supervised>,
    scratch: Vec<u8>,
    msix_unmasked: bool,
    /// Which IRQ index the server has our eventfds for (see [`IrqWiring`]).
    wiring: IrqWiring,
}

/// The eventfds of each IRQ index and the one index the server holds them for.
///
/// VFIO has one interrupt index enabled at a time (INTx, MSI or MSI-X), and a vfio-user
/// server may rely on it: libvfio-user — and so QEMU's `x-vfio-user-server` — keeps a single
/// eventfd table for all three indices, indexed by vector only, so a SET_IRQS of MSI vector 0
/// replaces (and closes) the INTx eventfd, and the INTx the server then raises arrives on the
/// MSI vector's eventfd. So the client hands the server the eventfds of the index the
/// function's config space selects — MSI-X when enabled, else MSI when enabled, else INTx —
/// and, when that changes, disables the old index before it hands over the new one.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IrqWiring {
    /// Positions in the eventfd list of INTx, MSI and MSI-X's vectors.
    ranges: [std::ops::Range<usize>; 3],
    /// The index the server has the eventfds of (`None`: none).
    active: Option<u32>,
}

impl IrqWiring {
    /// The index the function's config space selects, among those with eventfds.
    fn wanted(&self, cfg: &ConfigSpace) -> Option<u32> {
        let has = |i: u32| !self.ranges[i as usize].is_empty();
        if has(irq::MSIX) && cfg.capability::<MsixCap>().is_some_and(|c| c.enabled()) {
            Some(irq::MSIX)
        } else if has(irq::MSI) && cfg.capability::<MsiCap>().is_some_and(|c| c.enabled()) {
            Some(irq::MSI)
        } else if has(irq::INTX) {
            Some(irq::INTX)
        } else {
            None
        }
    }
}

impl std::fmt::Debug for VfioUserClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioUserClient")
            .field("info", &self.info)
            .field("health", &self.conn.health())
            .finish_non_exhaustive()
    }
}

fn connect_retrying(path: &Path, timeout: Duration) -> Result<UnixStream, ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(ClientError::Connect {
                    path: path.to_path_buf(),
                    source: e,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Which index of the eventfd list serves what.
#[derive(Debug, Clone, Copy)]
enum Vector {
    Intx,
    Msi(u32),
    Msix(u16),
}

impl VfioUserClient {
    /// Start `argv` (the server, which must create `cfg.socket`), then [`connect`](Self::connect);
    /// the process is supervised: its exit fails the function, and dropping the client stops it.
    pub fn start(argv: &[String], cfg: &ClientConfig) -> Result<Self, ClientError> {
        let (program, args) = argv.split_first().ok_or_else(|| ClientError::Start {
            program: String::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "empty start command"),
        })?;
        let _ = std::fs::remove_file(&cfg.socket);
        let child = Process::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|source| ClientError::Start {
                program: program.clone(),
                source,
            })?;
        let child = Arc::new(Mutex::new(child));
        let mut client = match Self::connect(cfg) {
            Ok(c) => c,
            Err(e) => {
                let mut c = child.lock_or_recover();
                let _ = c.kill();
                let _ = c.wait();
                return Err(e);
            }
        };
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, s2, conn) = (child.clone(), stop.clone(), client.conn.clone());
        let watcher = std::thread::Builder::new()
            .name("vfio-user-supervise".into())
            .spawn(move || loop {
                if s2.load(Ordering::Acquire) {
                    return;
                }
                match c2.lock_or_recover().try_wait() {
                    Ok(Some(status)) => {
                        conn.fail(FailReason::Exited(status.code()));
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        conn.fail(FailReason::Io(e.kind()));
                        return;
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            })
            .map_err(ClientError::Setup)?;
        client.supervised = Some(Supervised {
            child,
            watcher: Some(watcher),
            stop,
        });
        Ok(client)
    }

    /// Connect to the server at `cfg.socket` and learn its device.
    pub fn connect(cfg: &ClientConfig) -> Result<Self, ClientError> {
        let stream = connect_retrying(&cfg.socket, cfg.connect_timeout)?;
        let timeout = cfg.request_timeout.max(Duration::from_millis(1));
        stream
            .set_write_timeout(Some(timeout))
            .map_err(ClientError::Setup)?;
        let conn = Arc::new(Conn {
            writer: Mutex::new(stream.try_clone().map_err(ClientError::Setup)?),
            pending: Mutex::new(HashMap::new()),
            posted_cv: Condvar::new(),
            next_id: AtomicU16::new(0),
            failed: OnceLock::new(),
            unresponsive: AtomicBool::new(false),
            posted_errors: AtomicU64::new(0),
            timeout,
            max_posted: cfg.max_posted.max(1),
            limit: LogLimiter::warnings(),
        });
        let dma_handle: Arc<OnceLock<DmaHandle>> = Arc::new(OnceLock::new());
        let (dma_tx, dma_rx) = mpsc::sync_channel::<Vec<u8>>(4);
        let mut threads = Vec::new();
        {
            let conn = conn.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("vfio-user-client-rx".into())
                    .spawn(move || reader(&stream, &conn, &dma_tx))
                    .map_err(ClientError::Setup)?,
            );
        }
        let mut client_threads = threads;
        let fail_setup = |conn: &Conn, threads: Vec<JoinHandle<()>>, e: ClientError| {
            conn.fail(FailReason::Closed);
            for t in threads {
                let _ = t.join();
            }
            e
        };
        let info = match handshake(&conn) {
            Ok(i) => i,
            Err(e) => return Err(fail_setup(&conn, client_threads, e)),
        };
        {
            let (conn2, dma2, window) = (conn.clone(), dma_handle.clone(), cfg.dma_window);
            match std::thread::Builder::new()
                .name("vfio-user-client-dma".into())
                .spawn(move || dma_worker(&conn2, &dma2, window, &dma_rx))
            {
                Ok(t) => client_threads.push(t),
                Err(e) => {
                    return Err(fail_setup(&conn, client_threads, ClientError::Setup(e)));
                }
            }
        }
        match Self::finish(conn.clone(), info, cfg, dma_handle, client_threads) {
            Ok(c) => Ok(c),
            Err((e, threads)) => Err(fail_setup(&conn, threads, e)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn finish(
        conn: Arc<Conn>,
        info: ServerInfo,
        cfg: &ClientConfig,
        dma_handle: Arc<OnceLock<DmaHandle>>,
        mut threads: Vec<JoinHandle<()>>,
    ) -> Result<Self, (ClientError, Vec<JoinHandle<()>>)> {
        let (config, bars) = match present_config(&info) {
            Ok(v) => v,
            Err(e) => return Err((e, threads)),
        };
        // DMA: one window, reached by DMA_READ/DMA_WRITE messages (no descriptor).
        let (base, size) = cfg.dma_window;
        if size > 0 {
            let mut map = [0u8; DmaMapRepr::LEN];
            DmaMapRepr {
                argsz: DmaMapRepr::LEN as u32,
                flags: 0x3, // VFIO_USER_F_DMA_REGION_READ | _WRITE
                offset: 0,
                address: base,
                size,
            }
            .emit(&mut map);
            if let Err(e) = conn.call(Command::DmaMap, &[&map], &[]) {
                return Err((e, threads));
            }
        }
        // Interrupts: one eventfd per vector; the server gets those of one index at a time
        // (`IrqWiring`), INTx's at power-on.
        let [n_intx, n_msi, n_msix] = info.irqs;
        let has_pin = config.read_u8(h::INTERRUPT_PIN) != 0;
        let mut vectors = Vec::new();
        let mut ranges: [std::ops::Range<usize>; 3] = [0..0, 0..0, 0..0];
        let counts = [
            if n_intx > 0 && has_pin { 1 } else { 0 },
            n_msi.min(32),
            n_msix,
        ];
        for (index, &count) in counts.iter().enumerate() {
            let first = vectors.len();
            for v in 0..count {
                vectors.push(match index as u32 {
                    irq::INTX => Vector::Intx,
                    irq::MSI => Vector::Msi(v),
                    _ => Vector::Msix(v as u16),
                });
            }
            ranges[index] = first..vectors.len();
        }
        let mut eventfds = Vec::with_capacity(vectors.len());
        for _ in 0..vectors.len() {
            match EventFd::new_nonblocking() {
                Ok(e) => eventfds.push(e),
                Err(e) => return Err((ClientError::Setup(e), threads)),
            }
        }
        let mut wiring = IrqWiring {
            ranges,
            active: None,
        };
        if let Some(index) = wiring.wanted(&config) {
            let fds = &eventfds[wiring.ranges[index as usize].clone()];
            if let Err(e) = hand_over(&conn, index, fds, info.max_msg_fds) {
                return Err((e, threads));
            }
            wiring.active = Some(index);
        }
        let stop_irq = match EventFd::new_nonblocking() {
            Ok(e) => Arc::new(e),
            Err(e) => return Err((ClientError::Setup(e), threads)),
        };
        let eventfds = Arc::new(eventfds);
        let local = Arc::new(Mutex::new(Local {
            cfg: config,
            intx_asserted: false,
        }));
        let irq_handle: Arc<OnceLock<InterruptHandle>> = Arc::new(OnceLock::new());
        {
            let (efds, stop, loc, ih) = (
                eventfds.clone(),
                stop_irq.clone(),
                local.clone(),
                irq_handle.clone(),
            );
            let mut raw: Vec<RawFd> = vec![stop.as_raw_fd()];
            raw.extend(efds.iter().map(|e| e.as_raw_fd()));
            match std::thread::Builder::new()
                .name("vfio-user-client-irq".into())
                .spawn(move || irq_loop(&efds, &stop, &raw, &vectors, &loc, &ih))
            {
                Ok(t) => threads.push(t),
                Err(e) => return Err((ClientError::Setup(e), threads)),
            }
        }
        Ok(Self {
            conn,
            info,
            bars,
            local,
            irq_handle,
            dma_handle,
            stop_irq,
            eventfds,
            threads,
            supervised: None,
            scratch: Vec::with_capacity(256),
            msix_unmasked: false,
            wiring,
        })
    }

    /// What the server reported at connect.
    pub fn info(&self) -> &ServerInfo {
        &self.info
    }

    /// Whether the server is serving; [`Health::Failed`] is final.
    pub fn health(&self) -> Health {
        self.conn.health()
    }

    /// A handle that reports [`health`](Self::health) from any thread (for an inventory).
    pub fn health_handle(&self) -> HealthHandle {
        HealthHandle(self.conn.clone())
    }

    /// A handle for region accesses from any thread, beside the endpoint's: for diagnostics
    /// and for accesses no PCIe request can make (an 8-byte I/O access, say).
    pub fn port(&self) -> RegionPort {
        RegionPort {
            conn: self.conn.clone(),
            max_xfer: self.info.max_data_xfer,
        }
    }

    /// Posted writes the server refused so far.
    pub fn posted_errors(&self) -> u64 {
        self.conn.posted_errors.load(Ordering::Relaxed)
    }

    /// Read `data.len()` bytes of region `index` at `offset` (chunked at the server's
    /// transfer limit).
    pub fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), ClientError> {
        region_read(&self.conn, self.info.max_data_xfer, index, offset, data)
    }

    /// Write `data` to region `index` at `offset`, posted (returns once sent).
    pub fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), ClientError> {
        for (i, chunk) in data.chunks(self.info.max_data_xfer).enumerate() {
            let mut acc = [0u8; RegionAccessRepr::LEN];
            RegionAccessRepr {
                offset: offset + (i * self.info.max_data_xfer) as u64,
                region: index,
                count: chunk.len() as u32,
            }
            .emit(&mut acc);
            self.conn
                .post(Command::RegionWrite, &[&acc, chunk], &mut self.scratch)?;
        }
        Ok(())
    }

    /// Give the server the eventfds of the IRQ index the config space now selects (see
    /// [`IrqWiring`]), disabling the one it had first; `force` hands them over again even if
    /// the index is the same (after a reset). A server that refuses is logged: the function
    /// keeps working without those interrupts.
    fn rewire(&mut self, force: bool) {
        let want = self.wiring.wanted(&self.local.lock_or_recover().cfg);
        if want == self.wiring.active && !force {
            return;
        }
        if self.conn.health() != Health::Serving {
            return;
        }
        if let Some(old) = self.wiring.active.take() {
            if Some(old) != want {
                // Count 0 with no data: the index's triggers are disabled.
                if let Err(e) = set_irqs(
                    &self.conn,
                    old,
                    irq::SET_DATA_NONE | irq::SET_ACTION_TRIGGER,
                    0,
                    0,
                    &[],
                ) {
                    warn_limited!(self.conn.limit, index = old, error = %e, "vfio-user SET_IRQS (disable) failed");
                }
                if old == irq::INTX
                    && std::mem::replace(&mut self.local.lock_or_recover().intx_asserted, false)
                {
                    if let Some(ih) = self.irq_handle.get() {
                        ih.set_intx(false);
                    }
                }
            }
        }
        if let Some(new) = want {
            let fds = &self.eventfds[self.wiring.ranges[new as usize].clone()];
            match hand_over(&self.conn, new, fds, self.info.max_msg_fds) {
                Ok(()) => self.wiring.active = Some(new),
                Err(e) => {
                    warn_limited!(self.conn.limit, index = new, error = %e, "vfio-user SET_IRQS (eventfds) failed")
                }
            }
        }
        if self.wiring.active != Some(irq::MSIX) {
            self.msix_unmasked = false;
        }
    }

    /// INTx end-of-interrupt, as VFIO emulates it: a BAR access deasserts a signalled INTx and
    /// unmasks the server's, which signals again if the device still wants service.
    fn intx_eoi(&mut self) {
        let was = std::mem::replace(&mut self.local.lock_or_recover().intx_asserted, false);
        if was {
            if let Some(ih) = self.irq_handle.get() {
                ih.set_intx(false);
            }
            let mut set = [0u8; IrqSetRepr::LEN];
            IrqSetRepr {
                argsz: IrqSetRepr::LEN as u32,
                flags: irq::SET_DATA_NONE | irq::SET_ACTION_UNMASK,
                index: irq::INTX,
                start: 0,
                count: 1,
            }
            .emit(&mut set);
            let _ = self
                .conn
                .post(Command::DeviceSetIrqs, &[&set], &mut self.scratch);
        }
    }

    fn bar_region(&self, bar: u8, offset: u64, len: usize) -> Result<(), DeviceError> {
        let r = self
            .info
            .regions
            .get(usize::from(bar))
            .filter(|r| bar < 6 && r.size > 0)
            .ok_or(DeviceError::Unsupported(
                "no such BAR on the vfio-user server",
            ))?;
        // Past the server's region (a BAR rounded up to a power of two): not decoded.
        if offset.checked_add(len as u64).is_none_or(|e| e > r.size) {
            return Err(DeviceError::Unsupported(
                "beyond the vfio-user server's region",
            ));
        }
        Ok(())
    }
}

/// Region reads and writes on a client's connection, from any thread ([`VfioUserClient::port`]).
#[derive(Clone)]
pub struct RegionPort {
    conn: Arc<Conn>,
    max_xfer: usize,
}

impl RegionPort {
    /// Read `data.len()` bytes of region `index` at `offset`, waiting for the reply.
    pub fn read(&self, index: u32, offset: u64, data: &mut [u8]) -> Result<(), ClientError> {
        region_read(&self.conn, self.max_xfer, index, offset, data)
    }

    /// Write `data` to region `index` at `offset` and wait for the server to take it.
    pub fn write(&self, index: u32, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        for (i, chunk) in data.chunks(self.max_xfer).enumerate() {
            let mut acc = [0u8; RegionAccessRepr::LEN];
            RegionAccessRepr {
                offset: offset + (i * self.max_xfer) as u64,
                region: index,
                count: chunk.len() as u32,
            }
            .emit(&mut acc);
            self.conn.call(Command::RegionWrite, &[&acc, chunk], &[])?;
        }
        Ok(())
    }

    /// The server's health.
    pub fn health(&self) -> Health {
        self.conn.health()
    }
}

impl std::fmt::Debug for RegionPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionPort")
            .field("health", &self.health())
            .finish()
    }
}

/// Reports a client's [`Health`] from any thread.
#[derive(Clone)]
pub struct HealthHandle(Arc<Conn>);

impl HealthHandle {
    /// The server's health now.
    pub fn health(&self) -> Health {
        self.0.health()
    }
}

impl std::fmt::Debug for HealthHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("HealthHandle").field(&self.health()).finish()
    }
}

fn region_read(
    conn: &Conn,
    max_xfer: usize,
    index: u32,
    offset: u64,
    data: &mut [u8],
) -> Result<(), ClientError> {
    let command = Command::RegionRead;
    for (i, chunk) in data.chunks_mut(max_xfer).enumerate() {
        let req = RegionAccessRepr {
            offset: offset + (i * max_xfer) as u64,
            region: index,
            count: chunk.len() as u32,
        };
        let mut acc = [0u8; RegionAccessRepr::LEN];
        req.emit(&mut acc);
        let body = conn.call(command, &[&acc], &[])?;
        let got = RegionAccessRepr::parse(&body)
            .map_err(|source| ClientError::Wire { command, source })?;
        let bytes = &body[RegionAccessRepr::LEN..];
        if got.count as usize != chunk.len() || bytes.len() != chunk.len() {
            return Err(ClientError::Protocol {
                command,
                what: "the reply's byte count differs from the request's",
            });
        }
        chunk.copy_from_slice(bytes);
    }
    Ok(())
}

fn set_irqs(
    conn: &Conn,
    index: u32,
    flags: u32,
    start: u32,
    count: u32,
    fds: &[BorrowedFd<'_>],
) -> Result<(), ClientError> {
    let mut set = [0u8; IrqSetRepr::LEN];
    IrqSetRepr {
        argsz: IrqSetRepr::LEN as u32,
        flags,
        index,
        start,
        count,
    }
    .emit(&mut set);
    conn.call(Command::DeviceSetIrqs, &[&set], fds).map(|_| ())
}

/// Give the server the eventfds of IRQ `index` (vector 0 first), at most `max_fds` a message.
fn hand_over(
    conn: &Conn,
    index: u32,
    eventfds: &[EventFd],
    max_fds: u32,
) -> Result<(), ClientError> {
    let per = max_fds.max(1) as usize;
    for (i, chunk) in eventfds.chunks(per).enumerate() {
        let fds: Vec<BorrowedFd<'_>> = chunk.iter().map(|e| e.as_fd()).collect();
        set_irqs(
            conn,
            index,
            irq::SET_DATA_EVENTFD | irq::SET_ACTION_TRIGGER,
            (i * per) as u32,
            chunk.len() as u32,
            &fds,
        )?;
    }
    Ok(())
}

/// VERSION, DEVICE_GET_INFO, REGION_INFO, IRQ_INFO and the config region.
fn handshake(conn: &Conn) -> Result<ServerInfo, ClientError> {
    let caps = serde_json::json!({
        "capabilities": {
            "max_msg_fds": crate::sys::socket::MAX_FDS,
            "max_data_xfer_size": MAX_DATA_XFER,
        }
    })
    .to_string();
    let mut ver = vec![0u8; VersionRepr::LEN];
    VersionRepr { major: 0, minor: 1 }.emit(&mut ver);
    ver.extend_from_slice(caps.as_bytes());
    ver.push(0);
    let body = conn.call(Command::Version, &[&ver], &[])?;
    let (major, minor, max_msg_fds, max_data_xfer) = parse_version_reply(&body)?;

    let command = Command::DeviceGetInfo;
    let mut req = [0u8; DeviceInfoRepr::LEN];
    DeviceInfoRepr {
        argsz: DeviceInfoRepr::LEN as u32,
        ..Default::default()
    }
    .emit(&mut req);
    let body = conn.call(command, &[&req], &[])?;
    let dev =
        DeviceInfoRepr::parse(&body).map_err(|source| ClientError::Wire { command, source })?;
    if dev.num_regions <= region::CONFIG || dev.num_regions > MAX_REGIONS {
        return Err(ClientError::Protocol {
            command,
            what: "a PCI device has between 8 and 64 regions",
        });
    }

    let command = Command::DeviceGetRegionInfo;
    let mut regions = Vec::new();
    for index in 0..=region::CONFIG {
        let mut req = [0u8; RegionInfoRepr::LEN];
        RegionInfoRepr {
            argsz: RegionInfoRepr::LEN as u32,
            index,
            ..Default::default()
        }
        .emit(&mut req);
        let body = conn.call(command, &[&req], &[])?;
        let r =
            RegionInfoRepr::parse(&body).map_err(|source| ClientError::Wire { command, source })?;
        if r.index != index {
            return Err(ClientError::Protocol {
                command,
                what: "the reply describes another region",
            });
        }
        if index < 6 && r.size > MAX_BAR {
            return Err(ClientError::Protocol {
                command,
                what: "a BAR region above 1 TiB",
            });
        }
        regions.push(r);
    }
    let cfg_size = regions[region::CONFIG as usize].size;
    if !(64..=4096).contains(&cfg_size) {
        return Err(ClientError::Protocol {
            command,
            what: "the config region is not 64 to 4096 bytes",
        });
    }

    let command = Command::DeviceGetIrqInfo;
    let mut irqs = [0u32; 3];
    for index in [irq::INTX, irq::MSI, irq::MSIX] {
        if index >= dev.num_irqs {
            break;
        }
        let mut req = [0u8; IrqInfoRepr::LEN];
        IrqInfoRepr {
            argsz: IrqInfoRepr::LEN as u32,
            index,
            ..Default::default()
        }
        .emit(&mut req);
        let body = conn.call(command, &[&req], &[])?;
        let r =
            IrqInfoRepr::parse(&body).map_err(|source| ClientError::Wire { command, source })?;
        let max = [1, 32, MAX_VECTORS][index as usize];
        if r.index != index || r.count > max {
            return Err(ClientError::Protocol {
                command,
                what: "IRQ info for another index, or more vectors than the index allows",
            });
        }
        irqs[index as usize] = if r.flags & irq::INFO_EVENTFD != 0 || r.count > 0 {
            r.count
        } else {
            0
        };
    }

    let mut config = vec![0u8; cfg_size as usize];
    region_read(conn, max_data_xfer, region::CONFIG, 0, &mut config)?;
    Ok(ServerInfo {
        version: (major, minor),
        max_msg_fds,
        max_data_xfer,
        regions,
        irqs,
        config,
    })
}

/// The server's config bytes as the appliance presents them: BARs typed from the server's
/// registers and sized from its regions (rounded up to a power of two), unused BARs and the ROM
/// cleared, then replayed with the appliance's capability emulation.
pub fn present_config(info: &ServerInfo) -> Result<(ConfigSpace, Vec<ReplayBar>), ClientError> {
    let mut img = info.config.clone();
    img.resize(img.len().max(64), 0);
    let mut sizes = ReplaySizes::default();
    let mut i = 0;
    while i < 6 {
        let o = h::BAR0 + 4 * i;
        let raw = u32::from_le_bytes([img[o], img[o + 1], img[o + 2], img[o + 3]]);
        let size = info.regions.get(i).map_or(0, |r| r.size);
        let io = raw & b::IO_SPACE != 0;
        let is_64 = !io && raw & b::MEM_TYPE_MASK == b::MEM_TYPE_64 && i < 5;
        let keep = if size == 0 {
            0
        } else if io {
            b::IO_SPACE
        } else {
            raw & !b::MEM_ADDRESS_MASK
        };
        img[o..o + 4].copy_from_slice(&keep.to_le_bytes());
        if size > 0 {
            let min = if io { 4 } else { 16 };
            sizes.bars[i] = Some(size.next_power_of_two().max(min));
        }
        if size > 0 && is_64 {
            img[o + 4..o + 8].fill(0);
            i += 2;
        } else {
            i += 1;
        }
    }
    img[h::ROM_ADDRESS..h::ROM_ADDRESS + 4].fill(0);
    // Interrupt Pin is the server's: QEMU's `x-vfio-user-server` offers an INTx vector for
    // every device model, also for those without a pin (i6300esb), and QEMU's own
    // `vfio-user-pci` then shows no pin and routes no INTx — so does the tunnel (a guest sees
    // the same config space either way; tests/guest/cards.sh). libvfio-user sets the pin of a
    // device it gives an INTx vector.
    let r = replay(&img, &sizes)?;
    Ok((r.config, r.bars))
}

/// The reader thread: frame messages until the server goes away or breaks the protocol.
fn reader(stream: &UnixStream, conn: &Conn, dma_tx: &mpsc::SyncSender<Vec<u8>>) {
    let why = read_loop(stream, conn, dma_tx);
    conn.fail(why);
}

fn read_loop(stream: &UnixStream, conn: &Conn, dma_tx: &mpsc::SyncSender<Vec<u8>>) -> FailReason {
    let mut msg = Vec::with_capacity(4096);
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        if let Some(r) = conn.failed.get() {
            return *r;
        }
        let mut truncated = false;
        msg.clear();
        msg.resize(HEADER_LEN, 0);
        match recv_exact_with_fds(stream, &mut msg, &mut fds, &mut truncated) {
            Ok(true) => {}
            Ok(false) => return FailReason::Disconnected,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return FailReason::Disconnected,
            Err(e) => {
                return conn
                    .failed
                    .get()
                    .copied()
                    .unwrap_or(FailReason::Io(e.kind()))
            }
        }
        let size = match MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&msg[..])) {
            Ok(h) => h.size as usize,
            Err(_) => return FailReason::Protocol("unparseable message header"),
        };
        if size > MAX_MESSAGE {
            return FailReason::Protocol("message larger than the client accepts");
        }
        msg.resize(size, 0);
        match recv_exact_with_fds(stream, &mut msg[HEADER_LEN..], &mut fds, &mut truncated) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return FailReason::Disconnected,
            Err(e) => {
                return conn
                    .failed
                    .get()
                    .copied()
                    .unwrap_or(FailReason::Io(e.kind()))
            }
        }
        // A server has no reason to send descriptors; drop any.
        fds.clear();
        match parse_server_message(&msg) {
            Err(_) => return FailReason::Protocol("message does not parse"),
            Ok(ServerMessage::Reply { hdr, body }) => conn.deliver(&hdr, body),
            Ok(ServerMessage::DmaRead { .. } | ServerMessage::DmaWrite { .. }) => {
                // The worker parses it again (cheap) and answers; bounded queue.
                if dma_tx.send(std::mem::take(&mut msg)).is_err() {
                    return FailReason::Closed;
                }
            }
            Ok(ServerMessage::Unsupported { hdr }) => {
                if !answer_error(conn, &hdr, libc::ENOSYS) {
                    return conn.failed.get().copied().unwrap_or(FailReason::Closed);
                }
            }
            Ok(ServerMessage::Malformed { hdr, what }) => {
                warn_limited!(conn.limit, %hdr, what, "malformed request from the vfio-user server");
                if !answer_error(conn, &hdr, libc::EINVAL) {
                    return conn.failed.get().copied().unwrap_or(FailReason::Closed);
                }
            }
        }
    }
}

/// Send an error reply to a server command (unless it wants none). False when sending failed.
fn answer_error(conn: &Conn, hdr: &MessageHeaderRepr, errno: i32) -> bool {
    if hdr.no_reply {
        return true;
    }
    let mut r = hdr.reply(HEADER_LEN as u32);
    r.error = Some(errno as u32);
    let mut out = [0u8; HEADER_LEN];
    r.emit_bytes(&mut out);
    conn.send(&out, &[]).is_ok()
}

/// The DMA worker: serve the server's DMA_READ/DMA_WRITE with the function's DMA.
fn dma_worker(
    conn: &Conn,
    dma: &OnceLock<DmaHandle>,
    (base, size): (u64, u64),
    rx: &mpsc::Receiver<Vec<u8>>,
) {
    let mut buf: Vec<u8> = Vec::new();
    let mut out: Vec<u8> = Vec::new();
    while let Ok(msg) = rx.recv() {
        let Ok(m) = parse_server_message(&msg) else {
            continue;
        };
        let (hdr, access, data) = match m {
            ServerMessage::DmaRead { access, .. } => (dma_header(&msg), access, None),
            ServerMessage::DmaWrite { access, data, .. } => (dma_header(&msg), access, Some(data)),
            _ => continue,
        };
        let Some(hdr) = hdr else { continue };
        // In the window announced with DMA_MAP (parse checked the range does not wrap).
        let inside =
            access.address >= base && access.address + access.count <= base.saturating_add(size);
        let result = match dma.get() {
            _ if !inside => Err(libc::EFAULT),
            None => Err(libc::EAGAIN),
            Some(d) => match data {
                Some(bytes) => d.write(access.address, bytes).map_err(|e| {
                    tracing::debug!(error = %e, "vfio-user DMA_WRITE failed");
                    libc::EFAULT
                }),
                None => {
                    buf.clear();
                    buf.resize(access.count as usize, 0);
                    d.read(access.address, &mut buf).map_err(|e| {
                        tracing::debug!(error = %e, "vfio-user DMA_READ failed");
                        libc::EFAULT
                    })
                }
            },
        };
        if hdr.no_reply {
            continue;
        }
        out.clear();
        let payload = match (&result, data) {
            (Ok(()), None) => buf.len(),
            _ => 0,
        };
        let size = HEADER_LEN + DmaAccessRepr::LEN + payload;
        out.resize(size, 0);
        let mut r = hdr.reply(size as u32);
        if let Err(errno) = result {
            r.error = Some(errno as u32);
        }
        r.emit_bytes(&mut out);
        access.emit(&mut out[HEADER_LEN..]);
        if payload > 0 {
            out[HEADER_LEN + DmaAccessRepr::LEN..].copy_from_slice(&buf);
        }
        if conn.send(&out, &[]).is_err() {
            return;
        }
    }
}

fn dma_header(msg: &[u8]) -> Option<MessageHeaderRepr> {
    MessageHeaderRepr::parse(&MessageHeader::new_checked(msg).ok()?).ok()
}

/// The IRQ thread: eventfds the server signals become the function's interrupts.
fn irq_loop(
    eventfds: &[EventFd],
    stop: &EventFd,
    raw: &[RawFd],
    vectors: &[Vector],
    local: &Mutex<Local>,
    irq_handle: &OnceLock<InterruptHandle>,
) {
    let mut set = PollSet::new(raw);
    loop {
        if set.wait(Duration::from_secs(1)).is_err() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if set.ready(0) {
            return;
        }
        let _ = stop;
        for (i, (e, v)) in eventfds.iter().zip(vectors).enumerate() {
            if !set.ready(i + 1) || e.drain().unwrap_or(0) == 0 {
                continue;
            }
            let Some(ih) = irq_handle.get() else {
                continue; // not attached yet: nobody to interrupt
            };
            match *v {
                Vector::Intx => {
                    local.lock_or_recover().intx_asserted = true;
                    ih.set_intx(true);
                }
                Vector::Msix(n) => {
                    ih.signal_msix(n);
                }
                Vector::Msi(n) => {
                    let out = local
                        .lock_or_recover()
                        .cfg
                        .capability_mut::<MsiCap>()
                        .map(|c| c.raise(n));
                    if let Some(InterruptOutcome::Send(m)) = out {
                        if ih.f.decode().bus_master {
                            ih.f.send_msi(m.address, m.data);
                        }
                    }
                }
            }
        }
    }
}

/// Config registers never forwarded: the expansion ROM (the appliance hides it). BAR writes
/// are forwarded: the server's own BAR emulation sees the owning host's addresses and sizing,
/// as with any vfio-user client (QEMU's server serves a BAR only once it is mapped in its
/// machine, i.e. programmed and enabled).
fn appliance_owned(reg: u16) -> bool {
    (h::ROM_ADDRESS..h::ROM_ADDRESS + 4).contains(&usize::from(reg))
}

impl Device for VfioUserClient {
    fn name(&self) -> &str {
        "vfio-user"
    }

    fn attach(&mut self, ctx: DeviceContext) {
        let _ = self.dma_handle.set(ctx.dma);
        let _ = self.irq_handle.set(ctx.irq);
    }

    fn config_read(&mut self, reg: u16) -> u32 {
        pcicfg::config_read(&self.local.lock_or_recover().cfg, reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, be: u8) -> bool {
        let reg = reg & !3;
        let (flr, msix_on) = {
            let mut l = self.local.lock_or_recover();
            let flr = pcicfg::config_write(&mut l.cfg, reg, value, be);
            let msix_on = l.cfg.capability::<MsixCap>().is_some_and(|c| c.enabled());
            (flr, msix_on)
        };
        if !appliance_owned(reg) && self.conn.health() == Health::Serving {
            // Each run of enabled bytes as one write to the server's config region.
            let bytes = value.to_le_bytes();
            let mut i = 0;
            while i < 4 {
                if be & (1 << i) == 0 {
                    i += 1;
                    continue;
                }
                let start = i;
                while i < 4 && be & (1 << i) != 0 {
                    i += 1;
                }
                let off = u64::from(reg) + start as u64;
                if off < self.info.regions[region::CONFIG as usize].size {
                    let _ = self.region_write(region::CONFIG, off, &bytes[start..i]);
                }
            }
        }
        self.rewire(false);
        if msix_on && !self.msix_unmasked && self.info.irqs[2] > 0 {
            // Unmask every vector from 0 (QEMU's server ignores a partial unmask).
            self.msix_unmasked = set_irqs(
                &self.conn,
                irq::MSIX,
                irq::SET_DATA_NONE | irq::SET_ACTION_UNMASK,
                0,
                self.info.irqs[2],
                &[],
            )
            .is_ok();
        } else if !msix_on {
            self.msix_unmasked = false;
        }
        flr
    }

    fn decode(&self) -> Decode {
        pci_decode(&self.local.lock_or_recover().cfg, &self.bars)
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        self.bar_region(bar, offset, data.len())?;
        self.intx_eoi();
        region_read(
            &self.conn,
            self.info.max_data_xfer,
            u32::from(bar),
            offset,
            data,
        )
        .map_err(|e| {
            warn_limited!(self.conn.limit, bar, offset, error = %e, "vfio-user BAR read failed");
            DeviceError::Failed("the vfio-user server did not complete the read")
        })
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        self.bar_region(bar, offset, data.len())?;
        self.intx_eoi();
        self.region_write(u32::from(bar), offset, data).map_err(|e| {
            warn_limited!(self.conn.limit, bar, offset, error = %e, "vfio-user BAR write failed");
            DeviceError::Failed("the vfio-user server did not take the write")
        })
    }

    fn reset(&mut self, kind: ResetKind) {
        if let Err(e) = self.conn.call(Command::DeviceReset, &[], &[]) {
            warn_limited!(self.conn.limit, ?kind, error = %e, "vfio-user DEVICE_RESET failed");
        }
        {
            let mut l = self.local.lock_or_recover();
            l.cfg.reset();
            if std::mem::replace(&mut l.intx_asserted, false) {
                if let Some(ih) = self.irq_handle.get() {
                    ih.set_intx(false);
                }
            }
        }
        self.msix_unmasked = false;
        // Power-on state: INTx's eventfd again (handed over anew: the server may have dropped
        // its descriptors with the reset).
        self.rewire(true);
    }
}

impl Drop for VfioUserClient {
    fn drop(&mut self) {
        self.conn.fail(FailReason::Closed);
        let _ = self.stop_irq.signal();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        if let Some(mut s) = self.supervised.take() {
            s.stop.store(true, Ordering::Release);
            if let Some(w) = s.watcher.take() {
                let _ = w.join();
            }
            let mut c = s.child.lock_or_recover();
            if crate::sys::process::terminate(&c).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(2);
                while Instant::now() < deadline {
                    if matches!(c.try_wait(), Ok(Some(_))) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(
        id: u16,
        cmd: Command,
        size: usize,
        kind: MessageType,
        error: Option<u32>,
    ) -> Vec<u8> {
        let mut m = vec![0u8; HEADER_LEN];
        MessageHeaderRepr {
            id,
            command: cmd,
            size: size as u32,
            kind,
            no_reply: false,
            error,
        }
        .emit_bytes(&mut m);
        m
    }

    fn dma_msg(cmd: Command, address: u64, count: u64, data: &[u8]) -> Vec<u8> {
        let size = HEADER_LEN + DmaAccessRepr::LEN + data.len();
        let mut m = header(9, cmd, size, MessageType::Command, None);
        m.resize(HEADER_LEN + DmaAccessRepr::LEN, 0);
        DmaAccessRepr { address, count }.emit(&mut m[HEADER_LEN..]);
        m.extend_from_slice(data);
        m
    }

    #[test]
    fn dma_requests_are_checked() {
        let m = dma_msg(Command::DmaWrite, 0x1000, 4, b"abcd");
        assert_eq!(
            parse_server_message(&m).unwrap(),
            ServerMessage::DmaWrite {
                id: 9,
                access: DmaAccessRepr {
                    address: 0x1000,
                    count: 4
                },
                data: b"abcd"
            }
        );
        for (m, what) in [
            (dma_msg(Command::DmaWrite, 0, 5, b"abcd"), "length differs"),
            (dma_msg(Command::DmaRead, 0, 4, b"x"), "carries data"),
            (dma_msg(Command::DmaRead, 0, 0, b""), "count is 0"),
            (dma_msg(Command::DmaRead, u64::MAX - 1, 4, b""), "wraps"),
            (
                dma_msg(Command::DmaRead, 0, MAX_DATA_XFER as u64 + 1, b""),
                "above max",
            ),
        ] {
            match parse_server_message(&m).unwrap() {
                ServerMessage::Malformed { what: w, .. } => assert!(w.contains(what), "{w}"),
                other => panic!("{other:?} for {what}"),
            }
        }
        // Short of its fixed part.
        let mut m = header(
            1,
            Command::DmaRead,
            HEADER_LEN + 8,
            MessageType::Command,
            None,
        );
        m.extend_from_slice(&[0; 8]);
        assert!(matches!(
            parse_server_message(&m).unwrap(),
            ServerMessage::Malformed { .. }
        ));
        // A size that disagrees with the bytes loses the framing.
        let mut m = dma_msg(Command::DmaRead, 0, 4, b"");
        m.push(0);
        assert!(parse_server_message(&m).is_err());
        // Other commands are refused, not failed.
        let m = header(3, Command::DmaMap, HEADER_LEN, MessageType::Command, None);
        assert!(matches!(
            parse_server_message(&m).unwrap(),
            ServerMessage::Unsupported { .. }
        ));
    }

    #[test]
    fn version_replies() {
        let mut b = vec![0, 0, 1, 0];
        b.extend_from_slice(br#"{"capabilities":{"max_msg_fds":8,"max_data_xfer_size":65536}}"#);
        b.push(0);
        assert_eq!(parse_version_reply(&b).unwrap(), (0, 1, 8, 65536));
        // Absent capabilities: the spec's defaults; oversized ones clamped.
        assert_eq!(
            parse_version_reply(&[0, 0, 0, 0]).unwrap(),
            (0, 0, 1, MAX_DATA_XFER)
        );
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(br#"{"capabilities":{"max_msg_fds":99999,"max_data_xfer_size":1e30}}"#);
        b.push(0);
        assert!(parse_version_reply(&b).is_err(), "a float is not a count");
        let mut b = vec![1, 0, 0, 0];
        b.extend_from_slice(b"{}\0");
        assert!(parse_version_reply(&b).is_err(), "major 1");
        let mut b = vec![0, 0, 0, 0];
        b.extend_from_slice(b"{not json\0");
        assert!(parse_version_reply(&b).is_err());
    }

    fn info_with(config: Vec<u8>, sizes: [u64; 6], intx: u32) -> ServerInfo {
        let mut regions: Vec<RegionInfoRepr> = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| RegionInfoRepr {
                index: i as u32,
                size,
                ..Default::default()
            })
            .collect();
        regions.push(RegionInfoRepr::default());
        regions.push(RegionInfoRepr {
            index: 7,
            size: config.len() as u64,
            ..Default::default()
        });
        ServerInfo {
            version: (0, 1),
            max_msg_fds: 1,
            max_data_xfer: MAX_DATA_XFER,
            regions,
            irqs: [intx, 0, 0],
            config,
        }
    }

    #[test]
    fn config_is_presented_with_virtual_bars() {
        // libvfio-user style: every BAR without VFU_REGION_FLAG_MEM has the IO bit, even
        // unused ones; a 64-bit memory BAR at 2.
        let mut cfg = vec![0u8; 256];
        cfg[0..4].copy_from_slice(&0xbeef_deadu32.to_le_bytes());
        for i in 0..6 {
            cfg[0x10 + 4 * i] = 1;
        }
        cfg[0x18..0x1c].copy_from_slice(&0x0000_000cu32.to_le_bytes()); // mem64 prefetchable
        cfg[0x30] = 0xff;
        let info = info_with(cfg, [8, 0x3000, 0x10000, 0, 0, 0], 1);
        let (c, bars) = present_config(&info).unwrap();
        let got: Vec<(usize, u64, bool, bool)> = bars
            .iter()
            .map(|b| (b.index, b.size, b.io, b.is_64))
            .collect();
        assert_eq!(
            got,
            [
                (0, 8, true, false),
                (1, 0x4000, true, false),
                (2, 0x10000, false, true)
            ]
        );
        assert_eq!(c.read_u32(0x10), 1, "IO BAR, address cleared");
        assert_eq!(c.read_u32(0x18), 0xc);
        assert_eq!(
            c.read_u32(0x20),
            0,
            "unused BAR4 reads 0 despite the IO bit"
        );
        assert_eq!(c.read_u32(0x30), 0, "no ROM");
        assert_eq!(
            c.read_u8(0x3d),
            0,
            "Interrupt Pin stays the server's 0 despite its INTx vector (as QEMU's client shows it)"
        );
        let mut cfg = info.config.clone();
        cfg[0x3d] = 1;
        let (c, _) = present_config(&info_with(cfg, [8, 0x3000, 0x10000, 0, 0, 0], 1)).unwrap();
        assert_eq!(c.read_u8(0x3d), 1, "and the server's INTA is kept");
    }

    /// A fake server on a socket pair-like listener: answers VERSION with `reply`.
    fn hostile(reply: Vec<u8>) -> Result<VfioUserClient, ClientError> {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut hdr = [0u8; HEADER_LEN];
            use std::io::{Read, Write};
            s.read_exact(&mut hdr).unwrap();
            let size = MessageHeader::new_unchecked(&hdr[..]).size() as usize;
            let mut rest = vec![0u8; size - HEADER_LEN];
            s.read_exact(&mut rest).unwrap();
            let _ = s.write_all(&reply);
            std::thread::sleep(Duration::from_millis(300));
        });
        let mut cfg = ClientConfig::new(&sock);
        cfg.request_timeout = Duration::from_millis(500);
        let r = VfioUserClient::connect(&cfg);
        t.join().unwrap();
        r
    }

    #[test]
    fn hostile_servers_fail_the_connection_not_the_appliance() {
        // A header announcing 4 GiB.
        let mut h = header(0, Command::Version, HEADER_LEN, MessageType::Reply, None);
        h[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        let e = hostile(h).unwrap_err();
        assert!(
            matches!(e, ClientError::Failed(FailReason::Protocol(_))),
            "{e}"
        );
        // A reply to our id naming another command.
        let h = header(
            0,
            Command::DeviceReset,
            HEADER_LEN,
            MessageType::Reply,
            None,
        );
        let e = hostile(h).unwrap_err();
        assert!(matches!(e, ClientError::Protocol { .. }), "{e}");
        // An error reply.
        let h = header(
            0,
            Command::Version,
            HEADER_LEN,
            MessageType::Reply,
            Some(22),
        );
        let e = hostile(h).unwrap_err();
        assert!(matches!(e, ClientError::Refused { errno: 22, .. }), "{e}");
        // Garbage flags (message type 7).
        let mut h = header(0, Command::Version, HEADER_LEN, MessageType::Reply, None);
        h[8] = 7;
        let e = hostile(h).unwrap_err();
        assert!(
            matches!(e, ClientError::Failed(FailReason::Protocol(_))),
            "{e}"
        );
    }

    /// A scripted server: answers the handshake for a device with one 4 KiB memory BAR0 and
    /// no interrupts, records every REGION_WRITE (region, offset, bytes), and stops answering
    /// writes once `answer_writes` is false.
    /// REGION_WRITEs a scripted server saw: (region, offset, bytes).
    type Writes = Arc<Mutex<Vec<(u32, u64, Vec<u8>)>>>;

    struct FakeServer {
        writes: Writes,
        answer_writes: Arc<AtomicBool>,
        _dir: tempfile::TempDir,
        sock: PathBuf,
    }

    fn fake_server() -> FakeServer {
        use std::io::{Read, Write};
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fake.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let writes: Writes = Arc::new(Mutex::new(Vec::new()));
        let answer_writes = Arc::new(AtomicBool::new(true));
        let (w2, a2) = (writes.clone(), answer_writes.clone());
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut cfg = vec![0u8; 256];
            cfg[0..4].copy_from_slice(&0x1234_abcdu32.to_le_bytes());
            cfg[0x10] = 0x0; // 32-bit memory BAR0
            loop {
                let mut hdr = [0u8; HEADER_LEN];
                if s.read_exact(&mut hdr).is_err() {
                    return;
                }
                let h = MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&hdr[..])).unwrap();
                let mut body = vec![0u8; h.body_len()];
                if s.read_exact(&mut body).is_err() {
                    return;
                }
                let reply: Vec<u8> = match h.command {
                    Command::Version => {
                        let mut b = vec![0, 0, 1, 0];
                        b.extend_from_slice(b"{}\0");
                        b
                    }
                    Command::DeviceGetInfo => {
                        let mut b = [0u8; DeviceInfoRepr::LEN];
                        DeviceInfoRepr {
                            argsz: 16,
                            flags: 3,
                            num_regions: 9,
                            num_irqs: 0,
                        }
                        .emit(&mut b);
                        b.to_vec()
                    }
                    Command::DeviceGetRegionInfo => {
                        let mut r = RegionInfoRepr::parse(&body).unwrap();
                        r.size = match r.index {
                            0 => 4096,
                            7 => 256,
                            _ => 0,
                        };
                        let mut b = [0u8; RegionInfoRepr::LEN];
                        r.emit(&mut b);
                        b.to_vec()
                    }
                    Command::RegionRead => {
                        let a = RegionAccessRepr::parse(&body).unwrap();
                        let mut b = body[..RegionAccessRepr::LEN].to_vec();
                        let o = a.offset as usize;
                        if a.region == 7 {
                            b.extend_from_slice(&cfg[o..o + a.count as usize]);
                        } else {
                            b.extend(std::iter::repeat_n(0x5a, a.count as usize));
                        }
                        b
                    }
                    Command::RegionWrite => {
                        let a = RegionAccessRepr::parse(&body).unwrap();
                        w2.lock_or_recover().push((
                            a.region,
                            a.offset,
                            body[RegionAccessRepr::LEN..].to_vec(),
                        ));
                        if !a2.load(Ordering::Acquire) {
                            continue;
                        }
                        body[..RegionAccessRepr::LEN].to_vec()
                    }
                    _ => Vec::new(),
                };
                let mut out = vec![0u8; HEADER_LEN];
                h.reply((HEADER_LEN + reply.len()) as u32)
                    .emit_bytes(&mut out);
                out.extend_from_slice(&reply);
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        });
        FakeServer {
            writes,
            answer_writes,
            _dir: dir,
            sock,
        }
    }

    #[test]
    fn config_writes_reach_the_server_except_the_rom() {
        let f = fake_server();
        let mut c = VfioUserClient::connect(&ClientConfig::new(&f.sock)).unwrap();
        assert_eq!(c.config_read(0), 0x1234_abcd);
        // Command (two bytes of the DW), a BAR address, the ROM, a split byte-enable write.
        assert!(!c.config_write(0x04, 0x0000_0006, 0b0011));
        assert!(!c.config_write(0x10, 0xfebf_0000, 0xf));
        assert!(!c.config_write(0x30, 0xffff_f800, 0xf));
        assert!(!c.config_write(0x3c, 0xaabb_ccdd, 0b0101));
        // A read is ordered after the posted writes: when it returns they have arrived.
        let mut b = [0u8; 4];
        c.bar_read(0, 0, &mut b).unwrap();
        assert_eq!(b, [0x5a; 4]);
        let w = f.writes.lock_or_recover().clone();
        assert_eq!(
            w,
            [
                (7, 0x04, vec![0x06, 0x00]),
                (7, 0x10, vec![0x00, 0x00, 0xbf, 0xfe]),
                (7, 0x3c, vec![0xdd]),
                (7, 0x3e, vec![0xbb]),
            ]
        );
        // The BAR is the appliance's: sized from the region, address as written.
        assert_eq!(
            c.decode().bars[0].map(|(s, a)| (s.size, a)),
            Some((4096, 0xfebf_0000))
        );
        // Past the region: not decoded, nothing sent.
        assert!(c.bar_read(0, 4096, &mut b).is_err());
    }

    /// SET_IRQS requests a fake server saw: (index, flags, start, count, descriptors).
    type SetIrqsLog = Arc<Mutex<Vec<(u32, u32, u32, u32, usize)>>>;

    /// A server with libvfio-user's interrupt bookkeeping (`lib/irq.c`): one eventfd table
    /// for INTx, MSI and MSI-X alike, indexed by vector only (SET_IRQS with eventfds puts
    /// them at `start..`; count 0 closes `0..count of the index`), and a trigger of vector n
    /// signals slot n, whatever the index. It offers INTx and one MSI vector with no MSI
    /// capability in its config space, as QEMU's `pci-serial` over `x-vfio-user-server` does.
    struct SharedTableServer {
        /// The table; `raise` signals slot 0, as QEMU's INTx does (`vfu_irq_trigger(ctx, 0)`).
        efds: Arc<Mutex<Vec<Option<OwnedFd>>>>,
        /// Every SET_IRQS.
        set_irqs: SetIrqsLog,
        _dir: tempfile::TempDir,
        sock: PathBuf,
    }

    impl SharedTableServer {
        fn raise(&self) -> bool {
            match self.efds.lock_or_recover().first() {
                Some(Some(fd)) => crate::sys::fd::signal_eventfd(fd).is_ok(),
                _ => false,
            }
        }
    }

    fn shared_table_server(msi_cap: bool) -> SharedTableServer {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("vfu.sock");
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let efds: Arc<Mutex<Vec<Option<OwnedFd>>>> =
            Arc::new(Mutex::new((0..4).map(|_| None).collect()));
        let set_log: SetIrqsLog = Arc::new(Mutex::new(Vec::new()));
        let (e2, l2) = (efds.clone(), set_log.clone());
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut cfg = vec![0u8; 256];
            cfg[0..4].copy_from_slice(&0x0002_1b36u32.to_le_bytes());
            cfg[0x10] = 0x1; // IO BAR0
            cfg[0x3d] = 1; // INTA
            if msi_cap {
                // An MSI capability (32-bit, one vector) at 0x50.
                cfg[0x06] = 0x10;
                cfg[0x34] = 0x50;
                cfg[0x50] = 0x05;
            }
            let irq_count = [1u32, 1, 0];
            loop {
                let mut hdr = [0u8; HEADER_LEN];
                let mut fds = Vec::new();
                let mut trunc = false;
                if !matches!(
                    recv_exact_with_fds(&s, &mut hdr, &mut fds, &mut trunc),
                    Ok(true)
                ) {
                    return;
                }
                let h = MessageHeaderRepr::parse(&MessageHeader::new_unchecked(&hdr[..])).unwrap();
                let mut body = vec![0u8; h.body_len()];
                if recv_exact_with_fds(&s, &mut body, &mut fds, &mut trunc).is_err() {
                    return;
                }
                let reply: Vec<u8> = match h.command {
                    Command::Version => {
                        let mut b = vec![0, 0, 1, 0];
                        b.extend_from_slice(br#"{"capabilities":{"max_msg_fds":8}}"#);
                        b.push(0);
                        b
                    }
                    Command::DeviceGetInfo => {
                        let mut b = [0u8; DeviceInfoRepr::LEN];
                        DeviceInfoRepr {
                            argsz: 16,
                            flags: 3,
                            num_regions: 9,
                            num_irqs: 5,
                        }
                        .emit(&mut b);
                        b.to_vec()
                    }
                    Command::DeviceGetRegionInfo => {
                        let mut r = RegionInfoRepr::parse(&body).unwrap();
                        r.size = match r.index {
                            0 => 8,
                            7 => 256,
                            _ => 0,
                        };
                        let mut b = [0u8; RegionInfoRepr::LEN];
                        r.emit(&mut b);
                        b.to_vec()
                    }
                    Command::DeviceGetIrqInfo => {
                        let mut r = IrqInfoRepr::parse(&body).unwrap();
                        r.flags = irq::INFO_EVENTFD;
                        r.count = irq_count.get(r.index as usize).copied().unwrap_or(0);
                        let mut b = [0u8; IrqInfoRepr::LEN];
                        r.emit(&mut b);
                        b.to_vec()
                    }
                    Command::DeviceSetIrqs => {
                        let r = IrqSetRepr::parse(&body).unwrap();
                        l2.lock_or_recover()
                            .push((r.index, r.flags, r.start, r.count, fds.len()));
                        let mut t = e2.lock_or_recover();
                        let trigger = r.flags & irq::SET_ACTION_TRIGGER != 0;
                        if trigger && r.flags & irq::SET_DATA_NONE != 0 && r.count == 0 {
                            let n = irq_count.get(r.index as usize).copied().unwrap_or(0);
                            for slot in t.iter_mut().take(n as usize) {
                                *slot = None;
                            }
                        } else if trigger && r.flags & irq::SET_DATA_EVENTFD != 0 {
                            for (j, fd) in fds.drain(..).enumerate() {
                                if let Some(slot) = t.get_mut(r.start as usize + j) {
                                    *slot = Some(fd);
                                }
                            }
                        }
                        Vec::new()
                    }
                    Command::RegionRead => {
                        let a = RegionAccessRepr::parse(&body).unwrap();
                        let mut b = body[..RegionAccessRepr::LEN].to_vec();
                        let o = a.offset as usize;
                        if a.region == 7 {
                            b.extend_from_slice(&cfg[o..o + a.count as usize]);
                        } else {
                            b.extend(std::iter::repeat_n(0, a.count as usize));
                        }
                        b
                    }
                    Command::RegionWrite => body[..RegionAccessRepr::LEN].to_vec(),
                    _ => Vec::new(),
                };
                let mut out = vec![0u8; HEADER_LEN];
                h.reply((HEADER_LEN + reply.len()) as u32)
                    .emit_bytes(&mut out);
                out.extend_from_slice(&reply);
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        });
        SharedTableServer {
            efds,
            set_irqs: set_log,
            _dir: dir,
            sock,
        }
    }

    /// The INTx a server with one shared eventfd table raises reaches the host as
    /// Assert_INTA: the client hands the server only INTx's eventfd while MSI and MSI-X are
    /// off, so an MSI vector the server offers (and the function cannot use) does not take
    /// INTx's place. (Wiring INTx, then MSI, at connect lost every INTx of QEMU's pci-serial.)
    #[test]
    fn intx_of_a_server_with_one_eventfd_table_reaches_the_host() {
        use crate::endpoint::loopback::LoopbackHost;
        use crate::endpoint::{Bdf, Proxy, ProxyConfig};
        let f = shared_table_server(false);
        let c = VfioUserClient::connect(&ClientConfig::new(&f.sock)).unwrap();
        assert_eq!(c.info().irqs, [1, 1, 0], "INTx and one MSI vector offered");
        let (mut ep, rx) = Proxy::new(ProxyConfig::default());
        ep.add_function(Bdf(0), Box::new(c)).unwrap();
        let mut h = LoopbackHost::start(ep, rx, 1 << 16);
        h.cfg_write(Bdf(0), 0x10, 0x1000).unwrap();
        h.cfg_write(Bdf(0), 0x04, 0x0001).unwrap();
        assert_eq!(h.cfg_read(Bdf(0), 0x3c).unwrap() >> 8 & 0xff, 1, "INTA");
        assert!(f.raise(), "the server has an eventfd in slot 0");
        assert!(
            h.wait_intx(true, Duration::from_secs(5)),
            "the server's INTx reached the host as Assert_INTA"
        );
        assert_eq!(h.intx_messages(), 1);
        // Only INTx's eventfd was handed over: the MSI index (not enabled) has none.
        let sets = f.set_irqs.lock_or_recover().clone();
        assert_eq!(
            sets,
            [(
                irq::INTX,
                irq::SET_DATA_EVENTFD | irq::SET_ACTION_TRIGGER,
                0,
                1,
                1
            )]
        );
    }

    /// Enabling MSI moves the server from INTx's eventfd to MSI's (INTx disabled first, with
    /// SET_IRQS count 0), so the server's vector 0 is then an MSI message; disabling MSI goes
    /// back to INTx.
    #[test]
    fn enabling_msi_hands_the_server_msi_eventfds_instead_of_intx() {
        use crate::endpoint::loopback::LoopbackHost;
        use crate::endpoint::{Bdf, Proxy, ProxyConfig};
        let f = shared_table_server(true);
        let c = VfioUserClient::connect(&ClientConfig::new(&f.sock)).unwrap();
        let (mut ep, rx) = Proxy::new(ProxyConfig::default());
        ep.add_function(Bdf(0), Box::new(c)).unwrap();
        let mut h = LoopbackHost::start(ep, rx, 1 << 16);
        h.cfg_write(Bdf(0), 0x10, 0x1000).unwrap();
        h.cfg_write(Bdf(0), 0x04, 0x0005).unwrap(); // IO, Bus Master
        h.cfg_write(Bdf(0), 0x54, 0xfee0_0000).unwrap();
        h.cfg_write(Bdf(0), 0x58, 0x0000_0041).unwrap();
        h.cfg_write(Bdf(0), 0x50, 0x0001_0005).unwrap(); // MSI Enable
        let trig = irq::SET_DATA_EVENTFD | irq::SET_ACTION_TRIGGER;
        let off = irq::SET_DATA_NONE | irq::SET_ACTION_TRIGGER;
        assert_eq!(
            f.set_irqs.lock_or_recover().clone(),
            [
                (irq::INTX, trig, 0, 1, 1),
                (irq::INTX, off, 0, 0, 0),
                (irq::MSI, trig, 0, 1, 1)
            ]
        );
        assert!(f.raise());
        assert!(
            h.wait_msi_count(1, Duration::from_secs(5)),
            "vector 0 is an MSI"
        );
        assert_eq!(h.msi_log(), [(0xfee0_0000, 0x41)]);
        assert_eq!(h.intx_messages(), 0);
        // MSI off: INTx again.
        h.cfg_write(Bdf(0), 0x50, 0x0000_0005).unwrap();
        assert_eq!(
            f.set_irqs.lock_or_recover()[3..],
            [(irq::MSI, off, 0, 0, 0), (irq::INTX, trig, 0, 1, 1)]
        );
        assert!(f.raise());
        assert!(h.wait_intx(true, Duration::from_secs(5)));
    }

    #[test]
    fn posted_writes_pipeline_up_to_the_limit_then_time_out() {
        let f = fake_server();
        let mut cfg = ClientConfig::new(&f.sock);
        cfg.max_posted = 4;
        cfg.request_timeout = Duration::from_millis(300);
        let mut c = VfioUserClient::connect(&cfg).unwrap();
        f.answer_writes.store(false, Ordering::Release);
        let t0 = Instant::now();
        for i in 0..4u64 {
            c.bar_write(0, i * 4, &[1, 2, 3, 4]).unwrap();
        }
        assert!(
            t0.elapsed() < Duration::from_millis(200),
            "posted: no waiting"
        );
        // The fifth waits for a reply that never comes, for one time limit.
        let e = c.bar_write(0, 16, &[5; 4]);
        assert!(e.is_err());
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert_eq!(c.health(), Health::Unresponsive);
        // Unresponsive: the next access fails at once.
        let t1 = Instant::now();
        let mut b = [0u8; 4];
        assert!(c.bar_read(0, 0, &mut b).is_err());
        assert!(t1.elapsed() < Duration::from_millis(100));
        assert_eq!(f.writes.lock_or_recover().len(), 4);
    }

    proptest! {
        #[test]
        fn any_server_bytes_parse_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..128)) {
            match parse_server_message(&bytes) {
                Ok(ServerMessage::Reply { body, .. }) => prop_assert_eq!(body, &bytes[HEADER_LEN..]),
                Ok(ServerMessage::DmaWrite { access, data, .. }) => {
                    prop_assert_eq!(data.len() as u64, access.count);
                    prop_assert!(access.address.checked_add(access.count).is_some());
                }
                Ok(ServerMessage::DmaRead { access, .. }) => {
                    prop_assert!(access.count > 0 && access.count <= MAX_DATA_XFER as u64);
                }
                Ok(_) => {}
                Err(_) => {}
            }
            let _ = parse_version_reply(&bytes);
        }

        #[test]
        fn dma_messages_round_trip(write: bool, address in 0u64..(1 << 62), data in proptest::collection::vec(any::<u8>(), 1..64)) {
            let cmd = if write { Command::DmaWrite } else { Command::DmaRead };
            let payload: &[u8] = if write { &data } else { &[] };
            let m = dma_msg(cmd, address, data.len() as u64, payload);
            let want = DmaAccessRepr { address, count: data.len() as u64 };
            match parse_server_message(&m).unwrap() {
                ServerMessage::DmaWrite { access, data: d, .. } => {
                    prop_assert!(write);
                    prop_assert_eq!(access, want);
                    prop_assert_eq!(d, &data[..]);
                }
                ServerMessage::DmaRead { access, .. } => {
                    prop_assert!(!write);
                    prop_assert_eq!(access, want);
                }
                other => prop_assert!(false, "{:?}", other),
            }
        }

        #[test]
        fn any_config_and_region_sizes_present_or_refuse(
            cfg in proptest::collection::vec(any::<u8>(), 64..=256),
            sizes in proptest::array::uniform6(prop_oneof![Just(0u64), 1u64..=(1 << 40)]),
            intx in 0u32..=1,
        ) {
            let info = info_with(cfg, sizes, intx);
            if let Ok((_, bars)) = present_config(&info) {
                for b in bars {
                    prop_assert!(b.size >= sizes[b.index] && b.size.is_power_of_two());
                }
            }
        }
    }
}
