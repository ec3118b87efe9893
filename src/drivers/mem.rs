//! Host memory a user-space driver hands to its card: one contiguous buffer registered as a
//! DMA window ([`DmaMemory`]), which the card reads and writes through the host's software
//! IOMMU while the driver fills and inspects it.

use crate::sync::MutexExt;
use std::sync::{Mutex, MutexGuard};

use crate::host::dma::{DmaMemory, DmaWindowError};

/// A zeroed, bounds-checked buffer shared between a driver and its card's DMA.
#[derive(Debug)]
pub struct DmaBuffer {
    bytes: Mutex<Vec<u8>>,
    len: u64,
}

impl DmaBuffer {
    /// `len` zero bytes.
    pub fn new(len: usize) -> Self {
        Self {
            bytes: Mutex::new(vec![0; len]),
            len: len as u64,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.bytes.lock_or_recover()
    }

    fn range(
        &self,
        kind: &'static str,
        offset: u64,
        len: usize,
    ) -> Result<(usize, usize), DmaWindowError> {
        let end = offset.checked_add(len as u64).filter(|&e| e <= self.len);
        match end {
            Some(end) => Ok((offset as usize, end as usize)),
            None => Err(DmaWindowError::Fault {
                kind,
                iova: offset,
                len,
            }),
        }
    }

    /// Copy `data` into the buffer at `offset` (the driver's side).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        let (a, b) = self.range("driver write", offset, data.len())?;
        self.lock()[a..b].copy_from_slice(data);
        Ok(())
    }

    /// Copy `buf.len()` bytes at `offset` out of the buffer.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        let (a, b) = self.range("driver read", offset, buf.len())?;
        buf.copy_from_slice(&self.lock()[a..b]);
        Ok(())
    }

    /// Zero `len` bytes at `offset`.
    pub fn zero(&self, offset: u64, len: usize) -> Result<(), DmaWindowError> {
        let (a, b) = self.range("driver zero", offset, len)?;
        self.lock()[a..b].fill(0);
        Ok(())
    }
}

impl DmaMemory for DmaBuffer {
    fn len(&self) -> u64 {
        self.len
    }
    fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), DmaWindowError> {
        self.read_at(offset, buf)
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), DmaWindowError> {
        self.write_at(offset, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_errors_not_panics() {
        let b = DmaBuffer::new(16);
        b.write_at(12, &[1, 2, 3, 4]).unwrap();
        let mut out = [0u8; 4];
        b.read_at(12, &mut out).unwrap();
        assert_eq!(out, [1, 2, 3, 4]);
        assert!(b.write_at(13, &[0; 4]).is_err());
        assert!(b.read_at(u64::MAX, &mut out).is_err());
        assert!(DmaMemory::write(&b, 16, &[1]).is_err());
    }
}
