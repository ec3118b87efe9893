//! A shared mapping of (part of) a file, mmap(2) `MAP_SHARED`: guest RAM that a vfio-user
//! client passes with `VFIO_USER_DMA_MAP`.
//!
//! The memory is shared with another process that changes it at any time, so it is never
//! handed out as a Rust reference: [`SharedMapping::read`] and [`SharedMapping::write`] copy
//! through raw pointers, after checking the range and the protection, so no argument can make
//! them touch memory outside the mapping or fault on a protection the mapping lacks.
//!
//! The other process may also take the pages away: truncate the file below the mapping, or
//! punch a hole that cannot be filled again (a hugetlbfs pool that ran dry). A plain load or
//! store there raises SIGBUS and kills us. A mapping made with [`Backing::Volatile`] therefore
//! never touches its memory directly: every copy goes through process_vm_readv(2) /
//! process_vm_writev(2) aimed at our own process, where the kernel resolves the pages with
//! get_user_pages and reports a page it cannot provide as `EFAULT` (or a short copy) instead of
//! a signal. [`Backing::Stable`] is for files that cannot lose pages that way; the caller
//! decides which applies (see `host::dma`).

use std::io;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use super::SysError;

/// What a mapping may be used for (its `PROT_*` bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protection {
    /// `PROT_READ`.
    pub read: bool,
    /// `PROT_WRITE`.
    pub write: bool,
}

/// Whether the pages under a mapping can disappear while it is mapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// They cannot (a shmem file sealed against shrinking, see `host::dma`): copies are plain
    /// memory copies.
    Stable,
    /// They can (the file may shrink, or refilling a hole may fail): every copy goes through
    /// process_vm_readv/writev, so a vanished page is an `EFAULT` error, never SIGBUS.
    Volatile,
}

/// A live `MAP_SHARED` mapping, unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    prot: Protection,
    backing: Backing,
}

// SAFETY: the mapping is plain shared memory that belongs to this value alone; every access
// is a raw-pointer copy, valid from any thread while the mapping lives (it is unmapped only in
// Drop, which needs ownership).
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `read`/`write` take `&self` and copy through raw pointers, so concurrent
// calls are concurrent memory accesses of the kind real DMA makes, never aliasing references.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// Map `len` bytes of `fd` from file offset `offset` (a multiple of the page size), shared.
    /// Without read or write the mapping is `PROT_NONE` and refuses every access. `backing`
    /// says how its memory is copied (see [`Backing`]); a volatile mapping fails with
    /// `Unsupported` where process_vm_readv is not available ([`guarded_copy_available`]).
    pub fn new(
        fd: impl AsFd,
        offset: u64,
        len: usize,
        prot: Protection,
        backing: Backing,
    ) -> io::Result<Self> {
        if backing == Backing::Volatile && !guarded_copy_available() {
            return Err(SysError::NoGuardedCopy.io(io::ErrorKind::Unsupported));
        }
        if len == 0 {
            return Err(SysError::EmptyMapping.io(io::ErrorKind::InvalidInput));
        }
        let mut flags = ProtFlags::empty();
        if prot.read {
            flags |= ProtFlags::READ;
        }
        if prot.write {
            flags |= ProtFlags::WRITE;
        }
        // SAFETY: a fresh mapping at an address the kernel chooses (null hint, no MAP_FIXED),
        // so no existing memory is replaced; it is owned by the value returned and unmapped
        // exactly once, in Drop.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                flags,
                MapFlags::SHARED,
                fd,
                offset,
            )?
        };
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| SysError::NullMapping.io(io::ErrorKind::Other))?;
        Ok(Self {
            ptr,
            len,
            prot,
            backing,
        })
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: [`new`](Self::new) refuses zero lengths).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The protection it was mapped with.
    pub fn protection(&self) -> Protection {
        self.prot
    }

    /// How its memory is copied.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// `offset..offset + len` if it lies inside the mapping.
    fn range(&self, offset: usize, len: usize, allowed: bool) -> io::Result<usize> {
        if !allowed {
            return Err(SysError::Protection.io(io::ErrorKind::PermissionDenied));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(offset),
            _ => Err(SysError::OutsideMapping {
                len,
                offset,
                size: self.len,
            }
            .io(io::ErrorKind::InvalidInput)),
        }
    }

    /// Copy `buf.len()` bytes at `offset` out of the mapping. On a volatile mapping, a page
    /// that is gone fails the copy with `EFAULT` (`buf` may then be partly written).
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let at = self.range(offset, buf.len(), self.prot.read)?;
        if buf.is_empty() {
            return Ok(());
        }
        match self.backing {
            Backing::Stable => {
                // SAFETY: `at..at + buf.len()` lies inside the live mapping (checked above),
                // which is readable (PROT_READ, checked above) and whose pages cannot vanish
                // (the `Stable` contract); `buf` is a distinct, writable Rust buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        self.ptr.as_ptr().add(at),
                        buf.as_mut_ptr(),
                        buf.len(),
                    )
                };
                Ok(())
            }
            Backing::Volatile => {
                // SAFETY: `at..at + len` is inside the live mapping (checked above); the kernel
                // reads it on our behalf and reports a missing page as an error, never a signal.
                let src = unsafe { self.ptr.as_ptr().add(at) };
                guarded_copy(buf.as_mut_ptr(), src, buf.len(), Direction::FromMapping)
            }
        }
    }

    /// Copy `data` into the mapping at `offset`. On a volatile mapping, a page that is gone
    /// fails the copy with `EFAULT` (a prefix may have been written).
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let at = self.range(offset, data.len(), self.prot.write)?;
        if data.is_empty() {
            return Ok(());
        }
        match self.backing {
            Backing::Stable => {
                // SAFETY: `at..at + data.len()` lies inside the live mapping (checked above),
                // which is writable (PROT_WRITE, checked above) and whose pages cannot vanish
                // (the `Stable` contract); `data` is a distinct Rust buffer.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        data.as_ptr(),
                        self.ptr.as_ptr().add(at),
                        data.len(),
                    )
                };
                Ok(())
            }
            Backing::Volatile => {
                // SAFETY: as in `read`: inside the live mapping; the kernel does the stores.
                let dst = unsafe { self.ptr.as_ptr().add(at) };
                guarded_copy(
                    data.as_ptr().cast_mut(),
                    dst,
                    data.len(),
                    Direction::ToMapping,
                )
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Direction {
    FromMapping,
    ToMapping,
}

/// Copy `len` bytes between our buffer `local` and mapped memory `mapped` with
/// process_vm_readv/writev on our own pid. A page the kernel cannot provide ends the copy
/// early: the error is `EFAULT` either way.
fn guarded_copy(local: *mut u8, mapped: *mut u8, len: usize, dir: Direction) -> io::Result<()> {
    let l = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let r = libc::iovec {
        iov_base: mapped.cast(),
        iov_len: len,
    };
    // SAFETY: one iovec each side, both valid for `len` bytes in our own address space (the
    // local one is a live Rust buffer, writable for a read; the remote one is inside a live
    // mapping, checked by the caller). The kernel copies through get_user_pages and never
    // raises a signal for a page it cannot provide; the buffers outlive the call.
    let n = unsafe {
        let pid = libc::getpid();
        match dir {
            Direction::FromMapping => libc::process_vm_readv(pid, &l, 1, &r, 1, 0),
            Direction::ToMapping => libc::process_vm_writev(pid, &l, 1, &r, 1, 0),
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if n as usize != len {
        // Part of the range was copied, then a page was missing.
        return Err(io::Error::from_raw_os_error(libc::EFAULT));
    }
    Ok(())
}

/// Whether process_vm_readv/writev work in this process (a seccomp filter may refuse them):
/// probed once, by copying a word of our own stack.
pub fn guarded_copy_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        let mut src = 0x5a5a_u64;
        let mut dst = 0u64;
        let ok = guarded_copy(
            std::ptr::from_mut(&mut dst).cast(),
            std::ptr::from_mut(&mut src).cast(),
            8,
            Direction::FromMapping,
        );
        ok.is_ok() && dst == src
    })
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in `new`, once; no access can be in flight,
        // because accesses borrow `self`.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    const RW: Protection = Protection {
        read: true,
        write: true,
    };

    #[test]
    fn writes_reach_the_file_and_reads_see_it() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8192).unwrap();
        let m = SharedMapping::new(&f, 4096, 4096, RW, Backing::Stable).unwrap();
        m.write(8, b"shared").unwrap();
        let mut b = [0u8; 6];
        f.read_exact_at(&mut b, 4096 + 8).unwrap();
        assert_eq!(&b, b"shared");
        f.write_all_at(b"other!", 4096 + 100).unwrap();
        m.read(100, &mut b).unwrap();
        assert_eq!(&b, b"other!");
    }

    #[test]
    fn accesses_outside_or_against_protection_are_refused() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let m = SharedMapping::new(&f, 0, 4096, RW, Backing::Stable).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(
            m.read(4089, &mut b).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert!(m.write(usize::MAX - 2, b"abcd").is_err());
        m.read(4088, &mut b).unwrap();
        let ro = SharedMapping::new(
            &f,
            0,
            4096,
            Protection {
                read: true,
                write: false,
            },
            Backing::Stable,
        )
        .unwrap();
        assert_eq!(
            ro.write(0, b"x").unwrap_err().kind(),
            io::ErrorKind::PermissionDenied
        );
        let none = SharedMapping::new(
            &f,
            0,
            4096,
            Protection {
                read: false,
                write: false,
            },
            Backing::Stable,
        )
        .unwrap();
        assert!(none.read(0, &mut b).is_err());
        assert!(SharedMapping::new(&f, 0, 0, RW, Backing::Stable).is_err());
        // Not page-aligned: the kernel refuses.
        assert!(SharedMapping::new(&f, 100, 4096, RW, Backing::Volatile).is_err());
    }

    /// The reason `Volatile` exists: the file shrinks under the mapping, and copies from the
    /// lost pages fail with EFAULT instead of killing the process with SIGBUS.
    #[test]
    fn volatile_mapping_survives_the_file_shrinking() {
        assert!(guarded_copy_available(), "process_vm_readv refused here");
        let f = tempfile::tempfile().unwrap();
        f.set_len(3 * 4096).unwrap();
        let m = SharedMapping::new(&f, 0, 3 * 4096, RW, Backing::Volatile).unwrap();
        m.write(4096 + 10, b"second page").unwrap();
        let mut b = [0u8; 11];
        f.read_exact_at(&mut b, 4096 + 10).unwrap();
        assert_eq!(&b, b"second page");
        m.read(4096 + 10, &mut b).unwrap();
        assert_eq!(&b, b"second page");

        f.set_len(4096).unwrap();
        // Past the new end: an error, both ways, and the process is still here.
        let e = m.read(4096 + 10, &mut b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        let e = m.write(2 * 4096, b"gone").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EFAULT));
        // A copy straddling the new end fails as a whole.
        let mut big = vec![0u8; 200];
        assert!(m.read(4096 - 100, &mut big).is_err());
        // The page that is still there works, and the failed write did not grow the file.
        m.write(8, b"first").unwrap();
        let mut b = [0u8; 5];
        m.read(8, &mut b).unwrap();
        assert_eq!(&b, b"first");
        assert_eq!(f.metadata().unwrap().len(), 4096);
        assert_eq!(m.backing(), Backing::Volatile);
    }
}
