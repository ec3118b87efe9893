//! A namespace: a contiguous slice of logical blocks of a backing store (NVMe 1.4c §1.6.21
//! "namespace", §6 NVM commands address it by LBA from 0). Every data access of the NVM
//! command set goes through here, and here is where a slice is enforced: an access beyond the
//! namespace's last block is refused before it reaches the store, so the namespaces of an
//! SR-IOV controller's functions — slices of one backing file — can never touch each other's
//! blocks, whatever a command asks for.

use std::sync::Arc;

use super::backend::{Backend, BackendError};

/// A namespace over blocks `[first, first + blocks)` of a backing store.
#[derive(Debug, Clone)]
pub struct Namespace {
    backend: Arc<Backend>,
    first: u64,
    blocks: u64,
}

impl Namespace {
    /// The whole backing store as one namespace.
    pub fn whole(backend: Arc<Backend>) -> Namespace {
        let blocks = backend.blocks();
        Namespace {
            backend,
            first: 0,
            blocks,
        }
    }

    /// Blocks `[first, first + blocks)` of `backend`; `None` when that is empty or does not
    /// fit the store.
    pub fn slice(backend: Arc<Backend>, first: u64, blocks: u64) -> Option<Namespace> {
        let end = first.checked_add(blocks)?;
        (blocks > 0 && end <= backend.blocks()).then_some(Namespace {
            backend,
            first,
            blocks,
        })
    }

    /// Size in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.backend.block_size()
    }

    /// The backing store's block this namespace's LBA 0 is.
    pub fn first_block(&self) -> u64 {
        self.first
    }

    /// The backing store.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Byte offset in the store of `len` bytes at LBA `lba`, if they lie inside the namespace.
    fn offset(&self, lba: u64, len: u64) -> Result<u64, BackendError> {
        let bs = u64::from(self.block_size());
        let inside = lba
            .checked_mul(bs)
            .and_then(|o| o.checked_add(len))
            .is_some_and(|end| end <= self.blocks * bs);
        if !inside {
            return Err(BackendError::OutOfRange {
                path: self.backend.path().to_path_buf(),
                lba,
                len,
                blocks: self.blocks,
            });
        }
        Ok((self.first + lba) * bs)
    }

    /// Read `buf.len()` bytes from LBA `lba` on.
    pub fn read(&self, lba: u64, buf: &mut [u8]) -> Result<(), BackendError> {
        let off = self.offset(lba, buf.len() as u64)?;
        self.backend.read_at(buf, off)
    }

    /// Write `buf` from LBA `lba` on.
    pub fn write(&self, lba: u64, buf: &[u8]) -> Result<(), BackendError> {
        let off = self.offset(lba, buf.len() as u64)?;
        self.backend.write_at(buf, off)
    }

    /// Write zeroes over `nlb` blocks from LBA `lba`.
    pub fn write_zeroes(&self, lba: u64, nlb: u64) -> Result<(), BackendError> {
        let len = nlb.saturating_mul(u64::from(self.block_size()));
        let off = self.offset(lba, len)?;
        self.backend.write_zeroes(off, len)
    }

    /// Deallocate (advisory) `nlb` blocks from LBA `lba`.
    pub fn deallocate(&self, lba: u64, nlb: u64) -> Result<(), BackendError> {
        let len = nlb.saturating_mul(u64::from(self.block_size()));
        let off = self.offset(lba, len)?;
        self.backend.deallocate(off, len)
    }

    /// Make every completed write durable. The store is shared by all slices, so this
    /// flushes theirs too — harmless, and what one flush of a file can do.
    pub fn flush(&self) -> Result<(), BackendError> {
        self.backend.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slice_reads_and_writes_only_its_own_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(Backend::create(&dir.path().join("s.img"), 64 * 512).unwrap());
        let a = Namespace::slice(b.clone(), 16, 16).unwrap();
        let c = Namespace::slice(b.clone(), 32, 16).unwrap();
        assert!(Namespace::slice(b.clone(), 60, 8).is_none(), "past the end");
        assert!(Namespace::slice(b.clone(), 0, 0).is_none(), "empty");
        assert!(
            Namespace::slice(b.clone(), u64::MAX, 2).is_none(),
            "overflow"
        );
        a.write(15, &[0xaa; 512]).unwrap();
        assert!(matches!(
            a.write(15, &[0xaa; 1024]),
            Err(BackendError::OutOfRange { lba: 15, .. })
        ));
        assert!(a.write_zeroes(0, 17).is_err());
        assert!(a.deallocate(u64::MAX / 512, 1).is_err());
        assert!(a.read(u64::MAX, &mut [0; 512]).is_err());
        let mut got = [0u8; 512];
        c.read(0, &mut got).unwrap();
        assert_eq!(got, [0; 512], "the next slice's LBA 0 is untouched");
        Namespace::whole(b.clone()).read(31, &mut got).unwrap();
        assert_eq!(got, [0xaa; 512], "slice LBA 15 is store block 31");
        assert_eq!((a.first_block(), a.blocks(), a.block_size()), (16, 16, 512));
    }
}
