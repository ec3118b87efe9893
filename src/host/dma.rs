//! DMA windows: an IOMMU in software for each tunnelled function.
//!
//! A card may only touch the memory its consumer registered: the mappings a vfio-user client
//! sends with `VFIO_USER_DMA_MAP` (guest RAM as shared fds, or client memory reached with
//! `VFIO_USER_DMA_READ/WRITE`), or buffers a user-space driver registers through the Rust API.
//! Every upstream memory request of the card (MRd / MWr TLP, PCIe Base Spec §2.2.7) is checked
//! here: a read outside the windows is answered with Unsupported Request by the caller, a write
//! is dropped; both are counted and logged (rate-limited: a card or a consumer can provoke them
//! at line rate).
//!
//! The consumer is not trusted (docs/security.md, "The host agent and its consumers"):
//!
//! * **Shared guest memory** ([`MmapMemory`]) is a [`SharedMapping`] of the consumer's file,
//!   copied in and out through raw pointers only (never Rust references: the guest changes it
//!   concurrently). The file is checked at `DMA_MAP` time — a regular file, long enough for the
//!   window — and no DMA can ever fault the agent: only a shmem file sealed against shrinking
//!   (`F_SEAL_SHRINK`, what QEMU's `memory-backend-memfd` does by default) is accessed
//!   directly; any other file is accessed through the kernel ([`Backing::Volatile`]), so a
//!   page that vanished later (the file shrank) is an error — Unsupported Request for the
//!   card — never SIGBUS.
//! * **Client memory without a descriptor** is reached with messages the client must answer
//!   ([`DmaMemory::may_block`]). The thread that pumps the network must never wait for a
//!   client, so it only calls [`DmaWindows::try_read`] / [`DmaWindows::try_write`], which refuse
//!   such windows with [`DmaWindowError::WouldBlock`]; the caller then hands the request to the
//!   function's own worker ([`DmaWindows::defer`]), which waits for the client (for a bounded
//!   time) while every other function carries on. While a write (or anything else later
//!   traffic may not pass) is queued there, the function is [`busy`](DmaWindows::busy): what it
//!   sends next must wait behind it too (the ordering rules of PCIe Base Spec §2.4.1).

use crate::sync::{MutexExt, RwLockExt};
use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};

use crate::ratelimit::LogLimiter;
use crate::sys::file::{self, FileKind};
use crate::sys::{Backing, Protection, SharedMapping};
use crate::warn_limited;

/// Memory a DMA window is backed by. `offset` is relative to the start of the window.
///
/// The methods are safe to call with any arguments: an implementation checks the range itself
/// ([`check_range`]) and answers an access outside `0..len()` with [`DmaWindowError::OutOfBounds`]
/// (or an access its memory does not allow with [`DmaWindowError::Fault`]) instead of relying on
/// the caller. [`DmaWindows`] checks the windows first, so a card never gets that far.
pub trait DmaMemory: Send + Sync + fmt::Debug {
    /// Length in bytes.
    fn len(&self) -> u64;
    /// Whether the memory is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Copy `buf.len()` bytes at `offset` into `buf`.
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError>;
    /// Copy `data` to `offset`.
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError>;
    /// Whether an access waits for another party (a vfio-user client's reply). Such memory is
    /// never touched from the network thread: [`DmaWindows::try_read`] refuses it.
    fn may_block(&self) -> bool {
        false
    }
}

/// Check that `offset..offset + len` lies inside memory of `size` bytes (without overflow):
/// the bounds check every [`DmaMemory`] implementation makes before it touches its memory.
/// Returns the range as `usize` offsets.
pub fn check_range(
    kind: &'static str,
    offset: u64,
    len: usize,
    size: u64,
) -> Result<std::ops::Range<usize>, DmaWindowError> {
    let oob = DmaWindowError::OutOfBounds {
        kind,
        offset,
        len,
        size,
    };
    let end = offset.checked_add(len as u64).ok_or(oob.clone())?;
    if end > size {
        return Err(oob);
    }
    // `end <= size`, and `size` is the length of memory in this address space.
    let start = usize::try_from(offset).map_err(|_| oob.clone())?;
    let end = usize::try_from(end).map_err(|_| oob)?;
    Ok(start..end)
}

/// Access rights of a window (the vfio-user DMA_MAP `readable`/`writeable` flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    /// The card may read.
    pub read: bool,
    /// The card may write.
    pub write: bool,
}

impl Access {
    /// Read and write.
    pub const RW: Access = Access {
        read: true,
        write: true,
    };
}

/// Why the memory behind a window (client memory reached with `VFIO_USER_DMA_READ/WRITE`)
/// could not be reached. The card gets a Completer Abort for such a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    /// The request could not be sent to the client (gone, or not reading its socket).
    #[error("sending the request to the client failed: {0}")]
    Send(std::io::ErrorKind),
    /// The client answered with an error.
    #[error("the client replied errno {0}")]
    Errno(u32),
    /// No answer within the time limit.
    #[error("no reply from the client within {0:?}")]
    NoReply(std::time::Duration),
    /// An earlier request went unanswered and the client has said nothing since: fail at once
    /// instead of waiting again.
    #[error("the client has not answered an earlier request")]
    Unresponsive,
    /// The answer did not carry the bytes asked for.
    #[error("the reply carried {got} bytes, wanted {wanted}")]
    ShortReply {
        /// Bytes in the reply.
        got: usize,
        /// Bytes requested.
        wanted: usize,
    },
    /// The client has gone away.
    #[error("the client disconnected")]
    Disconnected,
}

/// Why a consumer's file cannot back a DMA window (`DMA_MAP` is refused with `EINVAL`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unmappable {
    /// Only regular files (memfd, tmpfs, hugetlbfs, ordinary files) are mapped.
    #[error("the descriptor is a {0}, not a regular file")]
    NotRegular(&'static str),
    /// The window ends past the end of the file: touching it would fault.
    #[error("the file has only {size:#x} bytes")]
    PastEnd {
        /// The file's size.
        size: u64,
    },
    /// The file may shrink, and the safe copy path (process_vm_readv/writev) is not available
    /// in this process (a seccomp filter?).
    #[error("the file is not sealed against shrinking and process_vm_readv is unavailable")]
    NoGuardedCopy,
}

/// Errors of the DMA windows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DmaWindowError {
    /// A new window overlaps an existing one (vfio-user wants `EEXIST`).
    #[error("DMA window {iova:#x}+{len:#x} overlaps an existing window")]
    Overlap {
        /// Start of the rejected window.
        iova: u64,
        /// Its length.
        len: u64,
    },
    /// A window of zero length, or one that wraps the address space.
    #[error("DMA window {iova:#x}+{len:#x} is empty or wraps")]
    BadRange {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Unmap of a range that is not exactly a window.
    #[error("no DMA window is exactly {iova:#x}+{len:#x}")]
    NotMapped {
        /// Start.
        iova: u64,
        /// Length.
        len: u64,
    },
    /// Too many windows.
    #[error("too many DMA windows (limit {0})")]
    TooMany(usize),
    /// An access outside every window, or without the right.
    #[error("DMA {kind} of {len} bytes at {iova:#x} is outside the function's windows")]
    Fault {
        /// "read" or "write".
        kind: &'static str,
        /// Address.
        iova: u64,
        /// Length.
        len: usize,
    },
    /// An access to the memory behind a window that does not fit inside it (or whose end
    /// overflows): refused before any byte is touched.
    #[error(
        "{kind} of {len} bytes at offset {offset:#x} does not fit in {size:#x} bytes of DMA memory"
    )]
    OutOfBounds {
        /// "read" or "write".
        kind: &'static str,
        /// Offset into the memory.
        offset: u64,
        /// Length of the access.
        len: usize,
        /// Size of the memory.
        size: u64,
    },
    /// The consumer's file no longer backs this part of the window (it shrank, or a hole
    /// could not be filled): the access failed without touching the memory that is gone.
    #[error("{kind} of {len} bytes at offset {offset:#x}: the consumer's file no longer backs it")]
    Vanished {
        /// "read" or "write".
        kind: &'static str,
        /// Offset into the window's memory.
        offset: u64,
        /// Length of the access.
        len: usize,
    },
    /// The access needs a window whose memory waits for a client
    /// ([`DmaMemory::may_block`]); [`DmaWindows::try_read`] / [`DmaWindows::try_write`] refuse it
    /// without touching anything, so the caller can [`defer`](DmaWindows::defer) it.
    #[error("DMA at {iova:#x} needs the client's answer; served off the network thread")]
    WouldBlock {
        /// Address.
        iova: u64,
    },
    /// The function's deferred-request queue is full: the request was not queued.
    #[error("the function's deferred DMA queue is full ({0} requests)")]
    QueueFull(usize),
    /// Mapping the consumer's file failed.
    #[error("mmap of DMA window fd (offset {offset:#x}, {len:#x} bytes) failed: {errno}")]
    Mmap {
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// errno.
        errno: i32,
    },
    /// The consumer's file cannot back the window.
    #[error("DMA window fd (offset {offset:#x}, {len:#x} bytes) refused: {reason}")]
    Unmappable {
        /// File offset.
        offset: u64,
        /// Length.
        len: u64,
        /// Why.
        reason: Unmappable,
    },
    /// The memory behind the window could not be reached (the vfio-user client did not
    /// answer, answered with an error, or is gone).
    #[error("DMA memory unreachable: {0}")]
    Unreachable(#[from] Unreachable),
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct DmaStats {
    /// Bytes read by the card.
    pub read_bytes: AtomicU64,
    /// Bytes written by the card.
    pub write_bytes: AtomicU64,
    /// Reads refused (answered with UR, or CA when the client did not answer).
    pub read_faults: AtomicU64,
    /// Writes refused (dropped).
    pub write_faults: AtomicU64,
    /// Accesses that failed because the consumer's file no longer backed the window.
    pub vanished: AtomicU64,
    /// Accesses that failed because the client behind a descriptor-less window did not answer.
    pub unreachable: AtomicU64,
    /// Requests handed to the function's worker (they needed a client's answer, or waited
    /// behind one that did).
    pub deferred: AtomicU64,
    /// Requests refused because the worker's queue was full.
    pub queue_full: AtomicU64,
}

#[derive(Debug, Clone)]
struct Window {
    iova: u64,
    len: u64,
    access: Access,
    mem: Arc<dyn DmaMemory>,
}

impl Window {
    fn end(&self) -> u64 {
        self.iova + self.len
    }
}

/// Work for the function's worker: one upstream request, run to its end.
pub type DeferredJob = Box<dyn FnOnce() + Send>;

/// Whether what a function sends later may pass a request deferred to its worker (PCIe Base
/// Spec §2.4.1, Table 2-40: the row of the later request, the column of the deferred one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overtaking {
    /// A read request: later writes, reads and completions may pass it (A3, B3, D3), so they
    /// need not wait for the consumer's answer.
    Allowed,
    /// A posted write or message (A2, B2, D2: nothing passes it) or a completion (the
    /// completions of one request stay in order): everything later waits behind it.
    Forbidden,
}

/// Queued and running jobs, shared with the worker thread.
#[derive(Debug, Default)]
struct DeferState {
    /// Jobs queued or running.
    pending: AtomicUsize,
    /// Of those, the ones later traffic may not pass ([`Overtaking::Forbidden`]).
    barriers: AtomicUsize,
    /// Bytes the queued jobs carry.
    bytes: AtomicUsize,
}

/// The function's worker for requests that wait on a client, started on first use.
struct Deferred {
    state: Arc<DeferState>,
    tx: Mutex<Option<mpsc::SyncSender<Queued>>>,
}

/// A job in the worker's queue, with its byte cost and whether it is a barrier.
type Queued = (usize, Overtaking, DeferredJob);

impl fmt::Debug for Deferred {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deferred")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

/// Log limiters of one function's windows (per kind of event).
#[derive(Debug)]
struct Limits {
    fault: LogLimiter,
    vanished: LogLimiter,
    unreachable: LogLimiter,
    queue_full: LogLimiter,
}

/// The windows of one function. Cheap to share (`Arc`); lookups take a read lock.
#[derive(Debug)]
pub struct DmaWindows {
    windows: RwLock<Vec<Window>>,
    max_windows: usize,
    stats: DmaStats,
    name: String,
    deferred: Deferred,
    limits: Limits,
}

/// How a walk over the windows may treat memory that waits for a client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blocking {
    /// Refuse it ([`DmaWindowError::WouldBlock`]) before touching anything.
    Refuse,
    /// Wait for it.
    Allow,
}

impl DmaWindows {
    /// Default window limit (the vfio-user default `max_dma_maps`).
    pub const DEFAULT_MAX: usize = 65535;
    /// Most requests the function's worker queues; beyond, reads are aborted and writes
    /// dropped.
    pub const DEFER_QUEUE: usize = 4096;
    /// Most bytes of write data the function's worker queues.
    pub const DEFER_BYTES: usize = 8 << 20;

    /// Empty windows for the function called `name` (used in log lines).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            windows: RwLock::new(Vec::new()),
            max_windows: Self::DEFAULT_MAX,
            stats: DmaStats::default(),
            name: name.into(),
            deferred: Deferred {
                state: Arc::new(DeferState::default()),
                tx: Mutex::new(None),
            },
            limits: Limits {
                fault: LogLimiter::warnings(),
                vanished: LogLimiter::warnings(),
                unreachable: LogLimiter::warnings(),
                queue_full: LogLimiter::warnings(),
            },
        }
    }

    /// Counters.
    pub fn stats(&self) -> &DmaStats {
        &self.stats
    }

    /// The function's name, as in log lines.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Add a window `iova..iova+mem.len()`.
    pub fn map(
        &self,
        iova: u64,
        access: Access,
        mem: Arc<dyn DmaMemory>,
    ) -> Result<(), DmaWindowError> {
        let len = mem.len();
        if len == 0 || iova.checked_add(len).is_none() {
            return Err(DmaWindowError::BadRange { iova, len });
        }
        let mut w = self.windows.write_or_recover();
        if w.len() >= self.max_windows {
            return Err(DmaWindowError::TooMany(self.max_windows));
        }
        let pos = w.partition_point(|x| x.iova < iova);
        let overlaps_prev = pos > 0 && w[pos - 1].end() > iova;
        let overlaps_next = pos < w.len() && w[pos].iova < iova + len;
        if overlaps_prev || overlaps_next {
            return Err(DmaWindowError::Overlap { iova, len });
        }
        w.insert(
            pos,
            Window {
                iova,
                len,
                access,
                mem,
            },
        );
        tracing::debug!(function = %self.name, iova, len, "DMA window mapped");
        Ok(())
    }

    /// Remove the windows inside `iova..iova+len` (normally exactly one window, as the
    /// vfio-user spec demands; a range covering several whole windows removes them all, as
    /// Linux VFIO type1 does). A window only partly inside the range is an error and nothing is
    /// removed. Returns the number of windows removed, once no access uses them any more.
    pub fn unmap(&self, iova: u64, len: u64) -> Result<usize, DmaWindowError> {
        let end = iova
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(DmaWindowError::NotMapped { iova, len })?;
        let mut w = self.windows.write_or_recover();
        let partial = w
            .iter()
            .any(|x| x.iova < end && x.end() > iova && (x.iova < iova || x.end() > end));
        let before = w.len();
        if !partial {
            w.retain(|x| !(x.iova >= iova && x.end() <= end));
        }
        let removed = before - w.len();
        if partial || removed == 0 {
            return Err(DmaWindowError::NotMapped { iova, len });
        }
        tracing::debug!(function = %self.name, iova, len, removed, "DMA window unmapped");
        Ok(removed)
    }

    /// Remove every window.
    pub fn unmap_all(&self) -> usize {
        let mut w = self.windows.write_or_recover();
        let n = w.len();
        w.clear();
        n
    }

    /// Number of windows.
    pub fn len(&self) -> usize {
        self.windows.read_or_recover().len()
    }

    /// Whether there is no window.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Walk `iova..iova+len` over the windows; every byte must be inside a window with the
    /// right access. Calls `f(memory, offset_in_window, start_in_buffer, chunk_len)`.
    fn walk(
        &self,
        kind: &'static str,
        iova: u64,
        len: usize,
        need: fn(&Access) -> bool,
        blocking: Blocking,
        mut f: impl FnMut(&dyn DmaMemory, u64, usize, usize) -> Result<(), DmaWindowError>,
    ) -> Result<(), DmaWindowError> {
        let fault = DmaWindowError::Fault { kind, iova, len };
        if len == 0 {
            return Ok(());
        }
        let end = iova.checked_add(len as u64).ok_or_else(|| fault.clone())?;
        let w = self.windows.read_or_recover();
        // Check the whole range first so a refused access has no partial effect.
        let first = w.partition_point(|x| x.end() <= iova);
        let mut at = iova;
        let mut i = first;
        let mut waits = false;
        while at < end {
            match w.get(i) {
                Some(win) if win.iova <= at && need(&win.access) => {
                    if win.mem.may_block() {
                        if blocking == Blocking::Refuse {
                            return Err(DmaWindowError::WouldBlock { iova });
                        }
                        waits = true;
                    }
                    at = win.end().min(end);
                    i += 1;
                }
                _ => return Err(fault),
            }
        }
        // Each chunk: window `k`, offset in it, start in the buffer, length.
        let chunk = |k: usize| {
            let win = &w[k];
            let (a, b) = (win.iova.max(iova), win.end().min(end));
            (k, a - win.iova, (a - iova) as usize, (b - a) as usize)
        };
        if waits {
            // Memory that waits for a client is accessed without the lock: a waiting writer
            // (a DMA_MAP) would otherwise hold up every later reader, the network thread's
            // `try_read` included, for as long as the client takes. The `Arc`s keep the
            // memory alive; an unmap meanwhile only means the client sees a late request.
            let chunks: Vec<_> = (first..i)
                .map(|k| {
                    let (k, off, start, n) = chunk(k);
                    (w[k].mem.clone(), off, start, n)
                })
                .collect();
            drop(w);
            for (mem, off, start, n) in chunks {
                f(&*mem, off, start, n)?;
            }
            return Ok(());
        }
        // Local memory: the read lock is held through the accesses, so an unmap (which takes
        // the write lock) returns only once no access uses the window any more.
        for k in first..i {
            let (k, off, start, n) = chunk(k);
            f(&*w[k].mem, off, start, n)?;
        }
        Ok(())
    }

    fn account(&self, kind: &'static str, iova: u64, len: usize, r: &Result<(), DmaWindowError>) {
        let (bytes, faults) = if kind == "read" {
            (&self.stats.read_bytes, &self.stats.read_faults)
        } else {
            (&self.stats.write_bytes, &self.stats.write_faults)
        };
        let name = &self.name;
        match r {
            Ok(()) => {
                bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            // Not a fault: the caller serves it elsewhere.
            Err(DmaWindowError::WouldBlock { .. }) => {}
            Err(e @ DmaWindowError::Vanished { .. }) => {
                faults.fetch_add(1, Ordering::Relaxed);
                self.stats.vanished.fetch_add(1, Ordering::Relaxed);
                warn_limited!(self.limits.vanished, function = %name, kind, iova, len, error = %e,
                    "DMA to memory the consumer took away: refused");
            }
            Err(e @ DmaWindowError::Unreachable(_)) => {
                faults.fetch_add(1, Ordering::Relaxed);
                self.stats.unreachable.fetch_add(1, Ordering::Relaxed);
                warn_limited!(self.limits.unreachable, function = %name, kind, iova, len, error = %e,
                    "DMA to client memory failed: the client did not answer");
            }
            Err(e) => {
                faults.fetch_add(1, Ordering::Relaxed);
                warn_limited!(self.limits.fault, function = %name, kind, iova, len, error = %e,
                    "DMA refused (read: Unsupported Request; write: dropped)");
            }
        }
    }

    fn read_with(
        &self,
        iova: u64,
        buf: &mut [u8],
        blocking: Blocking,
    ) -> Result<(), DmaWindowError> {
        let len = buf.len();
        let r = self.walk(
            "read",
            iova,
            len,
            |a| a.read,
            blocking,
            |mem, off, start, n| mem.read(off, &mut buf[start..start + n]),
        );
        self.account("read", iova, len, &r);
        r
    }

    fn write_with(&self, iova: u64, data: &[u8], blocking: Blocking) -> Result<(), DmaWindowError> {
        let len = data.len();
        let r = self.walk(
            "write",
            iova,
            len,
            |a| a.write,
            blocking,
            |mem, off, start, n| mem.write(off, &data[start..start + n]),
        );
        self.account("write", iova, len, &r);
        r
    }

    /// A card reads `buf.len()` bytes at `iova`. On `Err` the caller answers with UR (CA for
    /// [`DmaWindowError::Unreachable`]). May wait for a vfio-user client (for its time limit): never
    /// call it from the network thread — that one uses [`try_read`](Self::try_read).
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        self.read_with(iova, buf, Blocking::Allow)
    }

    /// A card writes `data` at `iova`. On `Err` the write was dropped. May wait for a client,
    /// like [`read`](Self::read).
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        self.write_with(iova, data, Blocking::Allow)
    }

    /// [`read`](Self::read) for the network thread: never waits. A range that needs a client's
    /// memory fails with [`DmaWindowError::WouldBlock`] before anything is read; hand it to
    /// [`defer`](Self::defer).
    pub fn try_read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        self.read_with(iova, buf, Blocking::Refuse)
    }

    /// [`write`](Self::write) for the network thread: never waits; [`DmaWindowError::WouldBlock`]
    /// (nothing written) for a range that needs a client's memory.
    pub fn try_write(&self, iova: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        self.write_with(iova, data, Blocking::Refuse)
    }

    /// Whether requests of this function that later traffic may not pass (writes, messages,
    /// completions: [`Overtaking::Forbidden`]) are queued at or running on its worker. While it
    /// is, everything the function sends upstream must be deferred too, or it would pass them
    /// (PCIe Base Spec §2.4.1: nothing passes a posted write, and an MSI is a posted write).
    /// A deferred *read* holds nothing up.
    pub fn busy(&self) -> bool {
        self.deferred.state.barriers.load(Ordering::Acquire) > 0
    }

    /// Requests queued at or running on the function's worker.
    pub fn deferred_pending(&self) -> usize {
        self.deferred.state.pending.load(Ordering::Acquire)
    }

    /// Run `job` on the function's worker, after every job queued before it. `bytes` is the
    /// data it carries (for the queue's byte limit); `overtaking` says whether what the
    /// function sends later may pass it (see [`busy`](Self::busy)). Never blocks: a full queue
    /// is [`DmaWindowError::QueueFull`] (counted, logged) and the job is dropped unrun.
    pub fn defer(
        &self,
        bytes: usize,
        overtaking: Overtaking,
        job: DeferredJob,
    ) -> Result<(), DmaWindowError> {
        let st = &self.deferred.state;
        let full = || {
            self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            warn_limited!(self.limits.queue_full, function = %self.name,
                "deferred DMA queue full: request refused");
            Err(DmaWindowError::QueueFull(Self::DEFER_QUEUE))
        };
        if st.bytes.load(Ordering::Relaxed).saturating_add(bytes) > Self::DEFER_BYTES {
            return full();
        }
        let mut tx = self.deferred.tx.lock_or_recover();
        if tx.is_none() {
            match self.start_worker() {
                Ok(t) => *tx = Some(t),
                Err(e) => {
                    tracing::error!(function = %self.name, error = %e,
                        "cannot start the deferred DMA worker");
                    return full();
                }
            }
        }
        let Some(sender) = tx.as_ref() else {
            return full();
        };
        let barrier = overtaking == Overtaking::Forbidden;
        st.pending.fetch_add(1, Ordering::AcqRel);
        if barrier {
            st.barriers.fetch_add(1, Ordering::AcqRel);
        }
        st.bytes.fetch_add(bytes, Ordering::Relaxed);
        match sender.try_send((bytes, overtaking, job)) {
            Ok(()) => {
                self.stats.deferred.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            Err(_) => {
                st.pending.fetch_sub(1, Ordering::AcqRel);
                if barrier {
                    st.barriers.fetch_sub(1, Ordering::AcqRel);
                }
                st.bytes.fetch_sub(bytes, Ordering::Relaxed);
                full()
            }
        }
    }

    fn start_worker(&self) -> std::io::Result<mpsc::SyncSender<Queued>> {
        let (tx, rx) = mpsc::sync_channel::<Queued>(Self::DEFER_QUEUE);
        let state = self.deferred.state.clone();
        let name = self.name.clone();
        std::thread::Builder::new()
            .name(format!("dma {name}"))
            .spawn(move || {
                // Ends when the windows (the only sender) are dropped.
                while let Ok((bytes, overtaking, job)) = rx.recv() {
                    state.bytes.fetch_sub(bytes, Ordering::Relaxed);
                    // A job is our own code; should one panic anyway, the function must not stay
                    // busy for ever.
                    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                        tracing::error!(function = %name, "deferred DMA request panicked");
                    }
                    // Release: what the job did is visible to whoever sees the queue idle.
                    if overtaking == Overtaking::Forbidden {
                        state.barriers.fetch_sub(1, Ordering::Release);
                    }
                    state.pending.fetch_sub(1, Ordering::Release);
                }
            })?;
        Ok(tx)
    }
}

/// Heap memory registered by a user-space driver through the Rust API (and used in tests).
#[derive(Debug)]
pub struct HeapMemory {
    bytes: std::sync::Mutex<Vec<u8>>,
    len: u64,
}

impl HeapMemory {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        Self {
            bytes: std::sync::Mutex::new(vec![0; len]),
            len: len as u64,
        }
    }

    /// A copy of the contents.
    pub fn snapshot(&self) -> Vec<u8> {
        self.bytes.lock_or_recover().clone()
    }

    /// Overwrite part of the contents (the driver filling a buffer).
    pub fn fill(&self, offset: usize, data: &[u8]) -> Result<(), DmaWindowError> {
        let mut b = self.bytes.lock_or_recover();
        let end = offset.checked_add(data.len()).filter(|&e| e <= b.len());
        match end {
            Some(end) => {
                b[offset..end].copy_from_slice(data);
                Ok(())
            }
            None => Err(DmaWindowError::Fault {
                kind: "fill",
                iova: offset as u64,
                len: data.len(),
            }),
        }
    }
}

impl DmaMemory for HeapMemory {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        let r = check_range("read", offset, buf.len(), self.len)?;
        let b = self.bytes.lock_or_recover();
        buf.copy_from_slice(&b[r]);
        Ok(())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        let r = check_range("write", offset, data.len(), self.len)?;
        let mut b = self.bytes.lock_or_recover();
        b[r].copy_from_slice(data);
        Ok(())
    }
}

/// A shared mapping of a consumer's file (guest RAM passed with `VFIO_USER_DMA_MAP`).
#[derive(Debug)]
pub struct MmapMemory {
    map: SharedMapping,
    len: u64,
    /// The rights the mapping was made with: an access it does not allow is refused.
    access: Access,
    _fd: OwnedFd,
}

impl MmapMemory {
    /// Map `len` bytes of `fd` at file offset `offset`, shared, with the given access.
    ///
    /// Only a regular file is accepted, and only if the window lies inside it (else
    /// [`DmaWindowError::Unmappable`], `EINVAL` for vfio-user). How the memory is then copied
    /// decides whether a DMA can fault the agent later, when the consumer takes pages away:
    ///
    /// * A file **sealed against shrinking** on shmem (a memfd, what QEMU's
    ///   `memory-backend-memfd` makes by default) keeps every byte of the window for as long
    ///   as it exists: copied directly ([`Backing::Stable`]). Pages the consumer punches out
    ///   are refilled on access; that can fail only when the kernel refuses to overcommit
    ///   (`vm.overcommit_memory = 2`), so then it is treated as below.
    /// * Anything else — an unsealed file, which the consumer may truncate at any time, or a
    ///   hugetlbfs file, where refilling a punched hole fails when the huge page pool is empty
    ///   — is copied through the kernel ([`Backing::Volatile`]): a page that is gone is
    ///   [`DmaWindowError::Vanished`], never SIGBUS.
    ///
    /// The seals are read before the size: a file sealed when we look cannot shrink later, so
    /// the size read afterwards holds for ever (the other order would let the consumer shrink
    /// the file between the two and seal it after).
    pub fn new(fd: OwnedFd, offset: u64, len: u64, access: Access) -> Result<Self, DmaWindowError> {
        let err = |errno| DmaWindowError::Mmap { offset, len, errno };
        let io_err = |e: std::io::Error| err(e.raw_os_error().unwrap_or(libc::EIO));
        let refuse = |reason| DmaWindowError::Unmappable {
            offset,
            len,
            reason,
        };
        let size = usize::try_from(len).map_err(|_| err(libc::EINVAL))?;
        if size == 0 || i64::try_from(offset).is_err() {
            return Err(err(libc::EINVAL));
        }
        let end = offset.checked_add(len).ok_or(err(libc::EINVAL))?;
        let seals = file::seals(&fd).map_err(io_err)?.unwrap_or_default();
        let file_size = match file::kind(&fd).map_err(io_err)? {
            FileKind::Regular { size } => size,
            FileKind::Other(kind) => return Err(refuse(Unmappable::NotRegular(kind))),
        };
        if end > file_size {
            return Err(refuse(Unmappable::PastEnd { size: file_size }));
        }
        let hugetlbfs = file::on_hugetlbfs(&fd).map_err(io_err)?;
        let backing = if seals.shrink && !hugetlbfs && !file::strict_overcommit() {
            Backing::Stable
        } else {
            Backing::Volatile
        };
        let prot = Protection {
            read: access.read,
            write: access.write,
        };
        let map = SharedMapping::new(&fd, offset, size, prot, backing).map_err(|e| {
            if e.kind() == std::io::ErrorKind::Unsupported {
                refuse(Unmappable::NoGuardedCopy)
            } else {
                io_err(e)
            }
        })?;
        tracing::debug!(
            offset,
            len,
            ?backing,
            ?seals,
            hugetlbfs,
            "consumer file mapped for DMA"
        );
        Ok(Self {
            map,
            len,
            access,
            _fd: fd,
        })
    }

    /// How the memory is copied (see [`MmapMemory::new`]).
    pub fn backing(&self) -> Backing {
        self.map.backing()
    }
}

/// The error for a failed copy of a consumer's mapping: a page that is gone, or (which the
/// checks before make impossible) a refused range.
fn copy_error(e: std::io::Error, kind: &'static str, offset: u64, len: usize) -> DmaWindowError {
    if e.raw_os_error() == Some(libc::EFAULT) {
        DmaWindowError::Vanished { kind, offset, len }
    } else {
        DmaWindowError::Fault {
            kind,
            iova: offset,
            len,
        }
    }
}

impl DmaMemory for MmapMemory {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        let r = check_range("read", offset, buf.len(), self.len)?;
        let len = buf.len();
        if !self.access.read {
            return Err(DmaWindowError::Fault {
                kind: "read",
                iova: offset,
                len,
            });
        }
        // The mapping checks the range and its protection again; both hold here.
        self.map
            .read(r.start, buf)
            .map_err(|e| copy_error(e, "read", offset, len))
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        let r = check_range("write", offset, data.len(), self.len)?;
        if !self.access.write {
            return Err(DmaWindowError::Fault {
                kind: "write",
                iova: offset,
                len: data.len(),
            });
        }
        self.map
            .write(r.start, data)
            .map_err(|e| copy_error(e, "write", offset, data.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap(n: usize) -> Arc<HeapMemory> {
        Arc::new(HeapMemory::new(n))
    }

    #[test]
    fn inside_window_reads_and_writes() {
        let w = DmaWindows::new("t");
        let m = heap(4096);
        w.map(0x10000, Access::RW, m.clone()).unwrap();
        w.write(0x10010, b"hello").unwrap();
        let mut b = [0u8; 5];
        w.read(0x10010, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        assert_eq!(&m.snapshot()[0x10..0x15], b"hello");
        assert_eq!(w.stats().write_bytes.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn outside_window_write_changes_nothing() {
        let w = DmaWindows::new("t");
        let m = heap(4096);
        w.map(0x10000, Access::RW, m.clone()).unwrap();
        // Straddles the end of the window: refused as a whole.
        assert!(matches!(
            w.write(0x10ffe, b"abcd"),
            Err(DmaWindowError::Fault { kind: "write", .. })
        ));
        assert!(w.write(0x20000, b"abcd").is_err());
        assert!(w.write(u64::MAX - 1, b"abcd").is_err());
        assert!(m.snapshot().iter().all(|&b| b == 0));
        assert_eq!(w.stats().write_faults.load(Ordering::Relaxed), 3);
        let mut b = [0u8; 4];
        assert!(w.read(0xfffe, &mut b).is_err());
        assert_eq!(w.stats().read_faults.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn access_rights_are_enforced() {
        let w = DmaWindows::new("t");
        let m = heap(64);
        w.map(
            0,
            Access {
                read: true,
                write: false,
            },
            m.clone(),
        )
        .unwrap();
        assert!(w.write(0, b"x").is_err());
        let mut b = [0u8; 1];
        assert!(w.read(0, &mut b).is_ok());
    }

    #[test]
    fn adjacent_windows_serve_one_access() {
        let w = DmaWindows::new("t");
        let (a, b) = (heap(16), heap(16));
        w.map(0, Access::RW, a.clone()).unwrap();
        w.map(16, Access::RW, b.clone()).unwrap();
        w.write(12, b"01234567").unwrap();
        assert_eq!(&a.snapshot()[12..], b"0123");
        assert_eq!(&b.snapshot()[..4], b"4567");
    }

    #[test]
    fn overlap_and_exact_unmap() {
        let w = DmaWindows::new("t");
        w.map(0x1000, Access::RW, heap(0x1000)).unwrap();
        assert!(matches!(
            w.map(0x1800, Access::RW, heap(0x1000)),
            Err(DmaWindowError::Overlap { .. })
        ));
        assert!(matches!(
            w.map(0x0800, Access::RW, heap(0x1000)),
            Err(DmaWindowError::Overlap { .. })
        ));
        w.map(0x2000, Access::RW, heap(0x1000)).unwrap();
        assert!(matches!(
            w.unmap(0x1000, 0x800),
            Err(DmaWindowError::NotMapped { .. })
        ));
        assert_eq!(w.unmap(0x1000, 0x1000), Ok(1));
        assert_eq!(w.len(), 1);
        w.map(0x1000, Access::RW, heap(0x1000)).unwrap();
        assert_eq!(w.unmap(0x1000, 0x2000), Ok(2));
        assert!(w.is_empty());
        let mut b = [0u8; 1];
        assert!(w.read(0x1000, &mut b).is_err());
    }

    /// Safe code calling the memory directly (not through the windows) cannot reach past it.
    #[test]
    fn memory_refuses_out_of_range_access() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let mmap = MmapMemory::new(OwnedFd::from(f), 4096, 4096, Access::RW).unwrap();
        let heap = HeapMemory::new(4096);
        for m in [&mmap as &dyn DmaMemory, &heap] {
            let mut b = [0u8; 8];
            // The last eight bytes are fine, one more is not.
            m.write(4088, b"lastbyte").unwrap();
            m.read(4088, &mut b).unwrap();
            assert_eq!(&b, b"lastbyte");
            assert!(matches!(
                m.read(4089, &mut b),
                Err(DmaWindowError::OutOfBounds {
                    kind: "read",
                    offset: 4089,
                    len: 8,
                    size: 4096
                })
            ));
            assert!(matches!(
                m.write(4096, b"x"),
                Err(DmaWindowError::OutOfBounds { kind: "write", .. })
            ));
            assert!(m.read(1 << 40, &mut b).is_err());
            // Nothing at the end changed.
            m.read(4088, &mut b).unwrap();
            assert_eq!(&b, b"lastbyte");
        }
    }

    /// `offset + len` overflowing u64 is refused, not wrapped to a small offset.
    #[test]
    fn memory_refuses_offset_overflow() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let mmap = MmapMemory::new(OwnedFd::from(f), 0, 4096, Access::RW).unwrap();
        let heap = HeapMemory::new(4096);
        for m in [&mmap as &dyn DmaMemory, &heap] {
            let mut b = [0u8; 16];
            assert!(matches!(
                m.read(u64::MAX - 7, &mut b),
                Err(DmaWindowError::OutOfBounds { kind: "read", .. })
            ));
            assert!(matches!(
                m.write(u64::MAX, b"ab"),
                Err(DmaWindowError::OutOfBounds { kind: "write", .. })
            ));
            // Zero-length accesses at the very end are in range; past it they are not.
            m.read(4096, &mut []).unwrap();
            assert!(m.read(u64::MAX, &mut []).is_err());
        }
        assert_eq!(
            check_range("read", u64::MAX - 1, 2, u64::MAX),
            Err(DmaWindowError::OutOfBounds {
                kind: "read",
                offset: u64::MAX - 1,
                len: 2,
                size: u64::MAX
            })
        );
    }

    /// A window past the end of the consumer's file is refused at DMA_MAP time (SIGBUS later).
    #[test]
    fn mmap_past_the_end_of_the_file_is_refused() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let fd = || OwnedFd::from(f.try_clone().unwrap());
        assert!(matches!(
            MmapMemory::new(fd(), 4096, 8192, Access::RW),
            Err(DmaWindowError::Unmappable {
                reason: Unmappable::PastEnd { size: 8192 },
                ..
            })
        ));
        assert!(matches!(
            MmapMemory::new(fd(), u64::MAX - 4095, 4096, Access::RW),
            Err(DmaWindowError::Mmap {
                errno: libc::EINVAL,
                ..
            })
        ));
        assert!(MmapMemory::new(fd(), 4096, 4096, Access::RW).is_ok());
    }

    /// A read-only mapping refuses a write instead of faulting on it.
    #[test]
    fn mmap_memory_enforces_its_protection() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let ro = Access {
            read: true,
            write: false,
        };
        let m = MmapMemory::new(OwnedFd::from(f), 0, 4096, ro).unwrap();
        assert!(matches!(
            m.write(0, b"x"),
            Err(DmaWindowError::Fault { kind: "write", .. })
        ));
        let mut b = [1u8; 4];
        m.read(0, &mut b).unwrap();
        assert_eq!(b, [0; 4]);
    }

    #[test]
    fn mmap_memory_is_shared_with_the_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let dup = f.try_clone().unwrap();
        let m = MmapMemory::new(OwnedFd::from(dup), 4096, 4096, Access::RW).unwrap();
        let w = DmaWindows::new("t");
        w.map(0x8000, Access::RW, Arc::new(m)).unwrap();
        w.write(0x8004, b"dma!").unwrap();
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 4];
        f.read_exact_at(&mut b, 4096 + 4).unwrap();
        assert_eq!(&b, b"dma!");
    }

    fn memfd(len: u64, seal_shrink: bool) -> std::fs::File {
        use rustix::fs::{fcntl_add_seals, memfd_create, MemfdFlags, SealFlags};
        let f = std::fs::File::from(
            memfd_create("guest", MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING).unwrap(),
        );
        f.set_len(len).unwrap();
        if seal_shrink {
            fcntl_add_seals(&f, SealFlags::SHRINK | SealFlags::GROW).unwrap();
        }
        f
    }

    /// Only a file sealed against shrinking is copied directly; everything else through the
    /// kernel.
    #[test]
    fn the_seals_decide_how_memory_is_copied() {
        let sealed = memfd(8192, true);
        let m = MmapMemory::new(OwnedFd::from(sealed), 0, 8192, Access::RW).unwrap();
        if crate::sys::file::strict_overcommit() {
            assert_eq!(m.backing(), Backing::Volatile);
        } else {
            assert_eq!(m.backing(), Backing::Stable);
        }
        let open = memfd(8192, false);
        let m = MmapMemory::new(OwnedFd::from(open), 0, 8192, Access::RW).unwrap();
        assert_eq!(m.backing(), Backing::Volatile);
        // An ordinary file cannot be sealed at all.
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let m = MmapMemory::new(OwnedFd::from(f), 0, 4096, Access::RW).unwrap();
        assert_eq!(m.backing(), Backing::Volatile);
    }

    /// The consumer shrinks its file after DMA_MAP: the card's DMA past the new end is refused
    /// (the caller answers UR), counted, and the process lives; what is left still works.
    #[test]
    fn a_file_shrunk_after_the_map_fails_the_dma_instead_of_faulting() {
        let f = memfd(4 * 4096, false);
        let m = MmapMemory::new(
            OwnedFd::from(f.try_clone().unwrap()),
            0,
            4 * 4096,
            Access::RW,
        )
        .unwrap();
        let w = DmaWindows::new("t");
        w.map(0x10_0000, Access::RW, Arc::new(m)).unwrap();
        w.write(0x10_0000 + 3 * 4096, b"before").unwrap();
        f.set_len(4096).unwrap();
        let mut b = [0u8; 6];
        assert!(matches!(
            w.read(0x10_0000 + 3 * 4096, &mut b),
            Err(DmaWindowError::Vanished { kind: "read", .. })
        ));
        assert!(matches!(
            w.try_write(0x10_0000 + 2 * 4096, b"after"),
            Err(DmaWindowError::Vanished { kind: "write", .. })
        ));
        assert_eq!(w.stats().vanished.load(Ordering::Relaxed), 2);
        assert_eq!(w.stats().read_faults.load(Ordering::Relaxed), 1);
        assert_eq!(w.stats().write_faults.load(Ordering::Relaxed), 1);
        // The failed write did not grow the consumer's file.
        assert_eq!(f.metadata().unwrap().len(), 4096);
        // The first page is still there.
        w.try_write(0x10_0010, b"alive!").unwrap();
        w.try_read(0x10_0010, &mut b).unwrap();
        assert_eq!(&b, b"alive!");
    }

    /// Only regular files back a window: a pipe, a socket or an eventfd is refused.
    #[test]
    fn a_descriptor_that_is_not_a_file_is_refused() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            MmapMemory::new(OwnedFd::from(a), 0, 4096, Access::RW),
            Err(DmaWindowError::Unmappable {
                reason: Unmappable::NotRegular("socket"),
                ..
            })
        ));
        let e = crate::sys::EventFd::new().unwrap();
        assert!(matches!(
            MmapMemory::new(e.try_clone_fd().unwrap(), 0, 4096, Access::RW),
            Err(DmaWindowError::Unmappable {
                reason: Unmappable::NotRegular(_),
                ..
            })
        ));
        // A short memfd declared long is refused too.
        let short = memfd(4096, true);
        assert!(matches!(
            MmapMemory::new(OwnedFd::from(short), 0, 1 << 20, Access::RW),
            Err(DmaWindowError::Unmappable {
                reason: Unmappable::PastEnd { size: 4096 },
                ..
            })
        ));
    }

    /// Memory behind a client that must answer: counts its accesses.
    #[derive(Debug, Default)]
    struct Remote {
        touched: AtomicU64,
    }

    impl DmaMemory for Remote {
        fn len(&self) -> u64 {
            0x1000
        }
        fn read(&self, _: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
            self.touched.fetch_add(1, Ordering::Relaxed);
            buf.fill(0x5a);
            Ok(())
        }
        fn write(&self, _: u64, _: &[u8]) -> Result<(), DmaWindowError> {
            self.touched.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        fn may_block(&self) -> bool {
            true
        }
    }

    /// The network thread's calls never reach memory that waits on a client, not even
    /// partly: an access spanning a local and a remote window is refused whole.
    #[test]
    fn try_access_refuses_client_memory_before_touching_anything() {
        let w = DmaWindows::new("t");
        let local = heap(0x1000);
        let remote = Arc::new(Remote::default());
        w.map(0, Access::RW, local.clone()).unwrap();
        w.map(0x1000, Access::RW, remote.clone()).unwrap();
        let mut b = [0u8; 32];
        assert_eq!(
            w.try_read(0xff0, &mut b),
            Err(DmaWindowError::WouldBlock { iova: 0xff0 })
        );
        assert_eq!(
            w.try_write(0xff0, &[1; 32]),
            Err(DmaWindowError::WouldBlock { iova: 0xff0 })
        );
        assert_eq!(remote.touched.load(Ordering::Relaxed), 0);
        assert!(local.snapshot().iter().all(|&x| x == 0), "no partial write");
        // Not a fault: nothing counted as one.
        assert_eq!(w.stats().read_faults.load(Ordering::Relaxed), 0);
        assert_eq!(w.stats().write_faults.load(Ordering::Relaxed), 0);
        // The local window alone is served at once; the worker's calls reach the client.
        w.try_write(0x10, b"here").unwrap();
        w.read(0xff0, &mut b).unwrap();
        assert_eq!(&b[16..], &[0x5a; 16]);
        assert_eq!(remote.touched.load(Ordering::Relaxed), 1);
    }

    /// Deferred jobs run in order on the function's worker; the function is busy until the
    /// last one finished, and a full queue refuses without blocking.
    #[test]
    fn deferred_jobs_run_in_order_and_the_queue_is_bounded() {
        let w = Arc::new(DmaWindows::new("t"));
        assert!(!w.busy());
        let (gate_tx, gate_rx) = mpsc::channel::<()>();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        // A read first: it holds nothing up.
        w.defer(
            0,
            Overtaking::Allowed,
            Box::new(move || {
                let _ = gate_rx.recv();
                o.lock().unwrap().push(0);
            }),
        )
        .unwrap();
        assert!(!w.busy(), "later traffic may pass a read");
        assert_eq!(w.deferred_pending(), 1);
        for i in 1..=3 {
            let o = order.clone();
            w.defer(
                0,
                Overtaking::Forbidden,
                Box::new(move || o.lock().unwrap().push(i)),
            )
            .unwrap();
        }
        assert!(w.busy(), "nothing passes a write");
        // Too many bytes for the queue: refused at once.
        assert_eq!(
            w.defer(
                DmaWindows::DEFER_BYTES + 1,
                Overtaking::Allowed,
                Box::new(|| {})
            ),
            Err(DmaWindowError::QueueFull(DmaWindows::DEFER_QUEUE))
        );
        assert_eq!(w.stats().queue_full.load(Ordering::Relaxed), 1);
        gate_tx.send(()).unwrap();
        let t0 = std::time::Instant::now();
        while w.deferred_pending() > 0 {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(w.stats().deferred.load(Ordering::Relaxed), 4);
        assert!(!w.busy());
        // A job that panics does not leave the function busy.
        w.defer(0, Overtaking::Forbidden, Box::new(|| panic!("job panics")))
            .unwrap();
        let t0 = std::time::Instant::now();
        while w.busy() {
            assert!(t0.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
