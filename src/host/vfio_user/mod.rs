//! The vfio-user server: hands one tunnelled PCI function to an out-of-process consumer (QEMU
//! `vfio-user-pci`, cloud-hypervisor `--user-device`, SPDK, the rust-vmm client).
//!
//! Specification: QEMU `docs/interop/vfio-user.rst` (protocol 0.x), with the Linux VFIO PCI
//! region and IRQ index conventions of `<linux/vfio.h>`.
//!
//! * [`wire`] — message header and bodies (parse/emit, no panics): [`crate::pci::vfio_user`],
//!   shared with the appliance's vfio-user client, re-exported here under its old name.
//! * [`server`] — [`Connection`], the sans-I/O protocol engine: one message in, one reply out.
//! * [`irq`] — eventfds and masks of SET_IRQS; [`Interrupts::trigger`] delivers an interrupt.
//! * [`socket`] — the UNIX socket with SCM_RIGHTS, the serve loop, and DMA_READ/DMA_WRITE.
//! * [`memdev`] — a small in-memory PCI function, the reference backend for tests.
//!
//! The server is generic over [`VfioDevice`]: config space and BAR access, reset, and a hook when
//! the consumer changes interrupt routing. Interrupts and DMA windows live in a
//! [`FunctionContext`] shared by the server and the device.

pub mod irq;
pub mod memdev;
pub mod server;
pub mod socket;
pub use crate::pci::vfio_user as wire;

use std::sync::Arc;

pub use irq::{EventFd, Interrupts, IrqIndex};
pub use server::{Connection, ServerConfig};
pub use socket::{serve_connection, Closer, FunctionServer, Withdraw};

use crate::host::dma::DmaWindows;

/// `VFIO_PCI_BAR0_REGION_INDEX` .. `VFIO_PCI_BAR5_REGION_INDEX` are 0..=5.
pub const BAR_REGIONS: std::ops::Range<u32> = 0..6;
/// `VFIO_PCI_ROM_REGION_INDEX`.
pub const ROM_REGION: u32 = 6;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const CONFIG_REGION: u32 = 7;
/// `VFIO_PCI_NUM_REGIONS` (BAR0-5, ROM, config, VGA).
pub const NUM_REGIONS: u32 = 9;

/// What a device region looks like to the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionDesc {
    /// Size in bytes (0 = absent).
    pub size: u64,
    /// The consumer may read it.
    pub readable: bool,
    /// The consumer may write it.
    pub writable: bool,
}

impl RegionDesc {
    /// An absent region.
    pub const NONE: RegionDesc = RegionDesc {
        size: 0,
        readable: false,
        writable: false,
    };

    /// A read/write region of `size` bytes.
    pub const fn rw(size: u64) -> Self {
        Self {
            size,
            readable: true,
            writable: true,
        }
    }
}

/// Why a device access failed. The server answers the consumer with an error reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VfioDeviceError {
    /// The access is outside the region or has an unsupported width.
    #[error("access to region {region} at {offset:#x} (+{len}) is not allowed")]
    BadAccess {
        /// Region index.
        region: u32,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
    },
    /// The remote function did not answer in time (completion timeout).
    #[error("completion timeout")]
    Timeout,
    /// The tunnel to the appliance is down.
    #[error("link down")]
    LinkDown,
    /// The remote function answered with an error completion.
    #[error("remote function returned {0}")]
    Completion(&'static str),
}

impl VfioDeviceError {
    /// The errno a vfio-user error reply carries for this error.
    pub fn errno(&self) -> u32 {
        match self {
            Self::BadAccess { .. } => libc::EINVAL as u32,
            Self::Timeout => libc::ETIMEDOUT as u32,
            Self::LinkDown => libc::ENOTCONN as u32,
            Self::Completion(_) => libc::EIO as u32,
        }
    }
}

/// The interrupt table and DMA windows of one function, shared by the vfio-user server (which
/// fills them from SET_IRQS and DMA_MAP) and the device (which triggers interrupts and serves
/// the card's DMA from the windows).
#[derive(Debug, Clone)]
pub struct FunctionContext {
    /// Eventfds per IRQ index and vector.
    pub irqs: Arc<Interrupts>,
    /// The function's DMA windows.
    pub dma: Arc<DmaWindows>,
}

impl FunctionContext {
    /// A context with `irq_counts` vectors per IRQ index (INTx, MSI, MSI-X, ERR, REQ).
    pub fn new(name: &str, irq_counts: [u32; IrqIndex::COUNT]) -> Self {
        Self {
            irqs: Arc::new(Interrupts::new(irq_counts)),
            dma: Arc::new(DmaWindows::new(name)),
        }
    }
}

/// A PCI function as the vfio-user server sees it.
///
/// Region indexes follow Linux VFIO: 0-5 the BARs, 6 the expansion ROM, 7 config space.
/// The server checks that every access lies inside the region before calling the device.
pub trait VfioDevice: Send {
    /// The region with this index ([`RegionDesc::NONE`] if absent).
    fn region(&self, index: u32) -> RegionDesc;
    /// Read `data.len()` bytes at `offset` of region `index`.
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), VfioDeviceError>;
    /// Write `data` at `offset` of region `index`.
    fn region_write(&mut self, index: u32, offset: u64, data: &[u8])
        -> Result<(), VfioDeviceError>;
    /// Reset the function (a Function Level Reset for a tunnelled card).
    fn reset(&mut self) -> Result<(), VfioDeviceError>;
    /// The consumer changed interrupt routing of `index` (e.g. armed MSI-X vectors): a
    /// tunnelled function reprograms the card's MSI/MSI-X so its writes reach the host.
    fn irqs_changed(&mut self, _index: IrqIndex) {}
}

impl<D: VfioDevice + ?Sized> VfioDevice for Box<D> {
    fn region(&self, index: u32) -> RegionDesc {
        (**self).region(index)
    }
    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), VfioDeviceError> {
        (**self).region_read(index, offset, data)
    }
    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), VfioDeviceError> {
        (**self).region_write(index, offset, data)
    }
    fn reset(&mut self) -> Result<(), VfioDeviceError> {
        (**self).reset()
    }
    fn irqs_changed(&mut self, index: IrqIndex) {
        (**self).irqs_changed(index)
    }
}
