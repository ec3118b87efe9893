//! Driver of the DMA engine test device (register interface
//! [`crate::pci::class::dma_engine`], documented in docs/appliance.md, "The DMA engine test
//! device"): it registers a host buffer, programs HOST_ADDR / BUF_OFFSET / LENGTH /
//! CONTROL, rings DOORBELL and waits for DONE — by polling STATUS or on the MSI-X vector 0
//! eventfd — then reads and clears STATUS (RW1C).
//!
//! "DMA read" is the card reading host memory into its buffer (host → card); "DMA write" the
//! card writing its buffer into host memory (card → host), as PCIe names them from the
//! card's side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mem::DmaBuffer;
use super::{AccessError, CompletionMode};
use crate::host::dma::Access;
use crate::host::requester::RequestError;
use crate::host::vfio_user::{EventFd, IrqIndex};
use crate::host::RemoteFunction;
use crate::pci::class::dma_engine::{
    control, reg, status, ErrorCode, DEVICE_ID, ID_VALUE, REGS_BAR, VENDOR_ID, VF_DEVICE_ID,
};

/// Bus address where the driver's host buffer is registered.
pub const IOVA: u64 = 0x50_0000_0000;
/// Errors of the DMA engine driver.
#[derive(Debug, thiserror::Error)]
pub enum DmaEngineError {
    /// Reaching the function failed: a register access, DMA memory or an interrupt eventfd.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// Not the DMA engine: its vendor/device IDs differ.
    #[error("not the DMA engine test device: IDs {vendor:04x}:{device:04x}")]
    WrongIds {
        /// Vendor ID found.
        vendor: u16,
        /// Device ID found.
        device: u16,
    },
    /// Not the DMA engine: the ID register holds something else.
    #[error("not the DMA engine test device: ID register {0:#x}")]
    WrongIdRegister(u32),
    /// The function has no MSI-X capability (interrupt completion needs it).
    #[error("the DMA engine has no MSI-X capability")]
    NoMsix,
    /// The transfer does not fit the host buffer or the card's buffer.
    #[error(
        "transfer of {len} bytes at host offset {host_off} / buffer offset {buf_off} does not fit"
    )]
    Range {
        /// Bytes.
        len: u32,
        /// Offset in the host buffer.
        host_off: u64,
        /// Offset in the card's buffer.
        buf_off: u32,
    },
    /// The card reported an error.
    #[error("the card reported error code {code}: {0}", code = .0.code())]
    Device(ErrorCode),
    /// No DONE in time.
    #[error("transfer not done within {0:?}")]
    Timeout(Duration),
}

super::access_error_sources!(DmaEngineError);

/// Which way a transfer moves data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The card reads host memory into its buffer (host → card).
    DmaRead,
    /// The card writes its buffer into host memory (card → host).
    DmaWrite,
}

/// A DMA engine ready to move data.
#[derive(Debug)]
pub struct DmaEngineDriver {
    f: RemoteFunction,
    mem: Arc<DmaBuffer>,
    host_len: u64,
    buf_size: u64,
    irq: Option<EventFd>,
    timeout: Duration,
}

impl DmaEngineDriver {
    /// Check the card, register `host_len` bytes of host memory and arm its interrupt.
    pub fn open(
        f: RemoteFunction,
        host_len: usize,
        completion: CompletionMode,
    ) -> Result<Self, DmaEngineError> {
        let info = f.info();
        // The engine, or one of its SR-IOV VFs presented standalone (same registers).
        if info.vendor != VENDOR_ID || ![DEVICE_ID, VF_DEVICE_ID].contains(&info.device) {
            return Err(DmaEngineError::WrongIds {
                vendor: info.vendor,
                device: info.device,
            });
        }
        let bar = usize::from(REGS_BAR);
        let id = f.bar_read32(bar, reg::ID)?;
        if id != ID_VALUE {
            return Err(DmaEngineError::WrongIdRegister(id));
        }
        let buf_size = u64::from(f.bar_read32(bar, reg::BUF_SIZE_LO)?)
            | (u64::from(f.bar_read32(bar, reg::BUF_SIZE_HI)?) << 32);
        let mem = Arc::new(DmaBuffer::new(host_len));
        let _ = f.unregister_dma(IOVA, host_len as u64);
        f.register_dma(IOVA, mem.clone(), Access::RW)?;
        let irq = if completion == CompletionMode::Interrupt {
            let m = f.info().msix.ok_or(DmaEngineError::NoMsix)?;
            super::enable_msix(&f, m.cap)?;
            Some(f.interrupt_eventfd(IrqIndex::Msix, 0)?)
        } else {
            None
        };
        super::set_max_read_request(&f, super::MAX_READ_REQUEST)?;
        // Clear a DONE/ERROR left over from an earlier user.
        f.bar_write32(bar, reg::STATUS, status::DONE | status::ERROR)?;
        Ok(Self {
            f,
            mem,
            host_len: host_len as u64,
            buf_size,
            irq,
            timeout: Duration::from_secs(10),
        })
    }

    /// The host buffer the card reads from and writes to.
    pub fn host_buffer(&self) -> &DmaBuffer {
        &self.mem
    }

    /// Size of the card's buffer.
    pub fn card_buffer_size(&self) -> u64 {
        self.buf_size
    }

    /// The function driven.
    pub fn function(&self) -> &RemoteFunction {
        &self.f
    }

    /// Move `len` bytes between host offset `host_off` and card buffer offset `buf_off`, and
    /// wait until the card reports it done.
    pub fn transfer(
        &self,
        dir: Direction,
        host_off: u64,
        buf_off: u32,
        len: u32,
    ) -> Result<(), DmaEngineError> {
        let fits_host = host_off
            .checked_add(u64::from(len))
            .is_some_and(|e| e <= self.host_len);
        let fits_card = u64::from(buf_off) + u64::from(len) <= self.buf_size;
        if !fits_host || !fits_card || len == 0 {
            return Err(DmaEngineError::Range {
                len,
                host_off,
                buf_off,
            });
        }
        let addr = IOVA + host_off;
        let f = &self.f;
        let bar = usize::from(REGS_BAR);
        f.bar_write32(bar, reg::HOST_ADDR_LO, addr as u32)?;
        f.bar_write32(bar, reg::HOST_ADDR_HI, (addr >> 32) as u32)?;
        f.bar_write32(bar, reg::BUF_OFFSET, buf_off)?;
        f.bar_write32(bar, reg::LENGTH, len)?;
        let mut ctl = 0;
        if dir == Direction::DmaWrite {
            ctl |= control::TO_HOST;
        }
        if self.irq.is_some() {
            ctl |= control::IRQ_EN;
        }
        f.bar_write32(bar, reg::CONTROL, ctl)?;
        f.bar_write32(bar, reg::DOORBELL, 1)?;
        let t0 = Instant::now();
        let st = loop {
            // A lost interrupt must not hang us: after the wait, look at STATUS anyway.
            if let Some(fd) = &self.irq {
                fd.wait_timeout(Duration::from_millis(100))?;
            }
            let s = f.bar_read32(bar, reg::STATUS)?;
            if s == u32::MAX {
                return Err(RequestError::LinkDown.into());
            }
            if s & status::BUSY == 0 && s & (status::DONE | status::ERROR) != 0 {
                break s;
            }
            if t0.elapsed() > self.timeout {
                return Err(DmaEngineError::Timeout(self.timeout));
            }
        };
        f.bar_write32(bar, reg::STATUS, status::DONE | status::ERROR)?;
        if st & status::ERROR != 0 {
            return Err(DmaEngineError::Device(ErrorCode::from_code(status::code(
                st,
            ))));
        }
        Ok(())
    }

    /// The card's own measure of the last transfer (LAST_NS).
    pub fn last_duration(&self) -> Result<Duration, DmaEngineError> {
        Ok(Duration::from_nanos(u64::from(
            self.f.bar_read32(usize::from(REGS_BAR), reg::LAST_NS)?,
        )))
    }

    /// Transfers the card has finished since it was reset.
    pub fn completions(&self) -> Result<u32, DmaEngineError> {
        Ok(self.f.bar_read32(usize::from(REGS_BAR), reg::COMPLETIONS)?)
    }
}

impl Drop for DmaEngineDriver {
    fn drop(&mut self) {
        let _ = self.f.unregister_dma(IOVA, self.host_len);
    }
}
