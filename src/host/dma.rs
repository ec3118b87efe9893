//! DMA windows: an IOMMU in software for each tunnelled function.
//!
//! A card may only touch the memory its consumer registered: the mappings a vfio-user client
//! sends with `VFIO_USER_DMA_MAP` (guest RAM as shared fds, or client memory reached with
//! `VFIO_USER_DMA_READ/WRITE`), or buffers a user-space driver registers through the Rust API.
//! Every upstream memory request of the card (MRd / MWr TLP, PCIe Base Spec §2.2.7) is checked
//! here: a read outside the windows is answered with Unsupported Request by the caller, a write
//! is dropped; both are counted and logged.
//!
//! Memory behind a window is any [`DmaMemory`]. Shared guest memory ([`MmapMemory`]) is a
//! [`crate::sys::SharedMapping`], copied in and out through raw pointers only (never Rust
//! references): the guest changes it concurrently.

use crate::sync::{MutexExt, RwLockExt};
use std::fmt;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::sys::{Protection, SharedMapping};

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
    /// The memory behind the window could not be reached (e.g. the vfio-user client is gone).
    #[error("DMA memory unreachable: {0}")]
    Unreachable(#[from] Unreachable),
}

/// Why the memory behind a window (client memory reached with `VFIO_USER_DMA_READ/WRITE`)
/// could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unreachable {
    /// The request could not be sent to the client.
    #[error("sending the request to the client failed: {0}")]
    Send(std::io::ErrorKind),
    /// The client answered with an error.
    #[error("the client replied errno {0}")]
    Errno(u32),
    /// No answer within the timeout.
    #[error("no reply from the client")]
    NoReply,
    /// The answer did not carry the bytes asked for.
    #[error("the reply carried {got} bytes, wanted {wanted}")]
    ShortReply {
        /// Bytes in the reply.
        got: usize,
        /// Bytes requested.
        wanted: usize,
    },
}

/// Counters, readable at any time.
#[derive(Debug, Default)]
pub struct DmaStats {
    /// Bytes read by the card.
    pub read_bytes: AtomicU64,
    /// Bytes written by the card.
    pub write_bytes: AtomicU64,
    /// Reads refused (answered with UR).
    pub read_faults: AtomicU64,
    /// Writes refused (dropped).
    pub write_faults: AtomicU64,
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

/// The windows of one function. Cheap to share (`Arc`); lookups take a read lock.
#[derive(Debug)]
pub struct DmaWindows {
    windows: RwLock<Vec<Window>>,
    max_windows: usize,
    stats: DmaStats,
    name: String,
}

impl DmaWindows {
    /// Default window limit (the vfio-user default `max_dma_maps`).
    pub const DEFAULT_MAX: usize = 65535;

    /// Empty windows for the function called `name` (used in log lines).
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            windows: RwLock::new(Vec::new()),
            max_windows: Self::DEFAULT_MAX,
            stats: DmaStats::default(),
            name: name.into(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> &DmaStats {
        &self.stats
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
    /// right access. Calls `f(window, offset_in_window, start_in_buffer, chunk_len)`.
    fn walk(
        &self,
        kind: &'static str,
        iova: u64,
        len: usize,
        need: fn(&Access) -> bool,
        mut f: impl FnMut(&Window, u64, usize, usize) -> Result<(), DmaWindowError>,
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
        while at < end {
            match w.get(i) {
                Some(win) if win.iova <= at && need(&win.access) => {
                    at = win.end().min(end);
                    i += 1;
                }
                _ => return Err(fault),
            }
        }
        let mut at = iova;
        let mut i = first;
        while at < end {
            let win = &w[i];
            let chunk_end = win.end().min(end);
            f(
                win,
                at - win.iova,
                (at - iova) as usize,
                (chunk_end - at) as usize,
            )?;
            at = chunk_end;
            i += 1;
        }
        Ok(())
    }

    /// A card reads `buf.len()` bytes at `iova`. On `Err` the caller answers with UR.
    pub fn read(&self, iova: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        let len = buf.len();
        let r = self.walk(
            "read",
            iova,
            len,
            |a| a.read,
            |win, off, start, n| win.mem.read(off, &mut buf[start..start + n]),
        );
        match &r {
            Ok(()) => {
                self.stats
                    .read_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.read_faults.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(function = %self.name, error = %e, "DMA read refused: Unsupported Request");
            }
        }
        r
    }

    /// A card writes `data` at `iova`. On `Err` the write was dropped.
    pub fn write(&self, iova: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        let len = data.len();
        let r = self.walk(
            "write",
            iova,
            len,
            |a| a.write,
            |win, off, start, n| win.mem.write(off, &data[start..start + n]),
        );
        match &r {
            Ok(()) => {
                self.stats
                    .write_bytes
                    .fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.write_faults.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(function = %self.name, error = %e, "DMA write dropped");
            }
        }
        r
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
    /// A range that ends past the end of a regular file (a memfd, a hugetlbfs or tmpfs file) is
    /// refused with `EINVAL`: touching such a mapping would raise SIGBUS at the first DMA.
    pub fn new(fd: OwnedFd, offset: u64, len: u64, access: Access) -> Result<Self, DmaWindowError> {
        let err = |errno| DmaWindowError::Mmap { offset, len, errno };
        let io_err = |e: std::io::Error| err(e.raw_os_error().unwrap_or(libc::EIO));
        let size = usize::try_from(len).map_err(|_| err(libc::EINVAL))?;
        if size == 0 || i64::try_from(offset).is_err() {
            return Err(err(libc::EINVAL));
        }
        let file = std::fs::File::from(fd);
        let meta = file.metadata().map_err(io_err)?;
        let end = offset.checked_add(len).ok_or(err(libc::EINVAL))?;
        if meta.is_file() && end > meta.len() {
            return Err(err(libc::EINVAL));
        }
        let prot = Protection {
            read: access.read,
            write: access.write,
        };
        let map = SharedMapping::new(&file, offset, size, prot).map_err(io_err)?;
        Ok(Self {
            map,
            len,
            access,
            _fd: OwnedFd::from(file),
        })
    }
}

impl DmaMemory for MmapMemory {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        let r = check_range("read", offset, buf.len(), self.len)?;
        let len = buf.len();
        let fault = || DmaWindowError::Fault {
            kind: "read",
            iova: offset,
            len,
        };
        if !self.access.read {
            return Err(fault());
        }
        // The mapping checks the range and its protection again; both hold here.
        self.map.read(r.start, buf).map_err(|_| fault())
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        let r = check_range("write", offset, data.len(), self.len)?;
        let fault = || DmaWindowError::Fault {
            kind: "write",
            iova: offset,
            len: data.len(),
        };
        if !self.access.write {
            return Err(fault());
        }
        self.map.write(r.start, data).map_err(|_| fault())
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
            Err(DmaWindowError::Mmap {
                errno: libc::EINVAL,
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
}
