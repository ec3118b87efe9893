//! A shared mapping of (part of) a file, mmap(2) `MAP_SHARED`: guest RAM that a vfio-user
//! client passes with `VFIO_USER_DMA_MAP`.
//!
//! The memory is shared with another process that changes it at any time, so it is never
//! handed out as a Rust reference: [`SharedMapping::read`] and [`SharedMapping::write`] copy
//! through raw pointers, after checking the range and the protection, so no argument can make
//! them touch memory outside the mapping or fault on a protection the mapping lacks.

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

/// A live `MAP_SHARED` mapping, unmapped on drop.
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    prot: Protection,
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
    /// Without read or write the mapping is `PROT_NONE` and refuses every access.
    pub fn new(fd: impl AsFd, offset: u64, len: usize, prot: Protection) -> io::Result<Self> {
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
        Ok(Self { ptr, len, prot })
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

    /// Copy `buf.len()` bytes at `offset` out of the mapping.
    pub fn read(&self, offset: usize, buf: &mut [u8]) -> io::Result<()> {
        let at = self.range(offset, buf.len(), self.prot.read)?;
        // SAFETY: `at..at + buf.len()` lies inside the live mapping (checked above), which is
        // readable (PROT_READ, checked above); `buf` is a distinct, writable Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(at), buf.as_mut_ptr(), buf.len())
        };
        Ok(())
    }

    /// Copy `data` into the mapping at `offset`.
    pub fn write(&self, offset: usize, data: &[u8]) -> io::Result<()> {
        let at = self.range(offset, data.len(), self.prot.write)?;
        // SAFETY: `at..at + data.len()` lies inside the live mapping (checked above), which is
        // writable (PROT_WRITE, checked above); `data` is a distinct Rust buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(at), data.len())
        };
        Ok(())
    }
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
        let m = SharedMapping::new(&f, 4096, 4096, RW).unwrap();
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
        let m = SharedMapping::new(&f, 0, 4096, RW).unwrap();
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
        )
        .unwrap();
        assert!(none.read(0, &mut b).is_err());
        assert!(SharedMapping::new(&f, 0, 0, RW).is_err());
        // Not page-aligned: the kernel refuses.
        assert!(SharedMapping::new(&f, 100, 4096, RW).is_err());
    }
}
