//! Backing store of an NVMe namespace: a regular file or a block device, addressed in logical
//! blocks. Flush is `fdatasync(2)`, so a completed NVMe Flush has reached stable storage.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors opening or using a backing store.
#[derive(Debug, Error)]
pub enum BackendError {
    /// The file could not be opened.
    #[error("cannot open NVMe backing store {path}: {source}")]
    Open {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The store is smaller than one logical block.
    #[error("NVMe backing store {path} is {size} bytes: too small for one {block}-byte block")]
    TooSmall {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Logical block size.
        block: u32,
    },
    /// An access beyond the namespace it was made through (refused before the store).
    #[error("{path}: {len} bytes at LBA {lba} lie outside a namespace of {blocks} blocks")]
    OutOfRange {
        /// The path.
        path: PathBuf,
        /// First logical block of the access.
        lba: u64,
        /// Its length in bytes.
        len: u64,
        /// Blocks of the namespace.
        blocks: u64,
    },
    /// An I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A namespace's storage.
#[derive(Debug)]
pub struct Backend {
    file: File,
    path: PathBuf,
    blocks: u64,
    block_size: u32,
    regular: bool,
}

impl Backend {
    /// Open `path` read-write (a file or a block device), with 512-byte logical blocks.
    pub fn open(path: &Path) -> Result<Backend, BackendError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| BackendError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| BackendError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| BackendError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let block_size = 512u32;
        let blocks = size / u64::from(block_size);
        if blocks == 0 {
            return Err(BackendError::TooSmall {
                path: path.to_path_buf(),
                size,
                block: block_size,
            });
        }
        Ok(Backend {
            file,
            path: path.to_path_buf(),
            blocks,
            block_size,
            regular: meta.is_file(),
        })
    }

    /// Create (or truncate) a regular file of `size` bytes and open it.
    pub fn create(path: &Path, size: u64) -> Result<Backend, BackendError> {
        let f = File::create(path).map_err(|source| BackendError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        f.set_len(size).map_err(|source| BackendError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        drop(f);
        Self::open(path)
    }

    /// Number of logical blocks.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Logical block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> BackendError {
        BackendError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Read at byte offset.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> Result<(), BackendError> {
        self.file.read_exact_at(buf, off).map_err(|e| self.io(e))
    }

    /// Write at byte offset.
    pub fn write_at(&self, buf: &[u8], off: u64) -> Result<(), BackendError> {
        self.file.write_all_at(buf, off).map_err(|e| self.io(e))
    }

    /// Make every completed write durable (`fdatasync`).
    pub fn flush(&self) -> Result<(), BackendError> {
        self.file.sync_data().map_err(|e| self.io(e))
    }

    /// Write zeroes over `len` bytes at `off`.
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<(), BackendError> {
        let zero = [0u8; 64 * 1024];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zero.len() as u64) as usize;
            self.write_at(&zero[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Deallocate (advisory): punch a hole in a regular file; a no-op on a block device.
    pub fn deallocate(&self, off: u64, len: u64) -> Result<(), BackendError> {
        if !self.regular || len == 0 {
            return Ok(());
        }
        if let Err(e) = crate::sys::fd::punch_hole(&self.file, off, len) {
            // Filesystems without hole punching: deallocation is advisory, so ignore.
            if e.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Ok(());
            }
            return Err(self.io(e));
        }
        Ok(())
    }
}
