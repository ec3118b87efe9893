//! User-space drivers that sit on the host's [`RemoteFunction`]
//! API: they reach their card's registers with BAR reads and writes through the tunnel, give it
//! host memory with `register_dma`, and wait for its MSI-X interrupts on eventfds — the way a
//! VFIO or SPDK driver drives a local card.
//!
//! * [`mem`] — [`DmaBuffer`](mem::DmaBuffer), host memory a driver registers for its card.
//! * [`nvme`] — an NVMe 1.4 driver: controller bring-up, admin queue, Identify, I/O queue
//!   pairs, Read/Write with PRP lists, completions by polling or MSI-X, queue depth up to 255,
//!   passthrough of any admin or I/O command, batched doorbells, asynchronous events.
//! * [`dma_engine`] — the driver of the DMA engine test device (docs/appliance.md).
//!
//! What they share: [`AccessError`] (how reaching the function fails, the `Access` variant of
//! each driver's error), the MSI-X enable, and [`CompletionMode`].
//!
//! The register interfaces they speak are [`crate::pci::class`], the definitions the
//! appliance's device models implement. Layering: drivers import `host` and `pci` (nothing
//! above them); the CLI's demo and benchmarks use them.

pub mod dma_engine;
pub mod mem;
pub mod nvme;

use crate::host::dma::DmaWindowError;
use crate::host::requester::RequestError;
use crate::host::RemoteFunction;
use crate::pci::spec::msix;

/// How a driver's use of its function fails, whatever the card: a register access through the
/// tunnel, its DMA memory, or arming an interrupt eventfd. Each driver's error holds it as its
/// `Access` variant, with `From` impls for each source so `?` reaches it.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A register access through the tunnel failed.
    #[error("register access failed: {0}")]
    Request(#[from] RequestError),
    /// Registering or touching DMA memory failed.
    #[error("DMA memory: {0}")]
    Dma(#[from] DmaWindowError),
    /// Arming the MSI-X eventfd failed.
    #[error("interrupt setup: {0}")]
    Irq(#[from] std::io::Error),
}

/// `impl From<source> for $error` for each source of [`AccessError`], through the error's
/// `Access` variant, so that `?` works on a register access, a DMA window call or an eventfd.
macro_rules! access_error_sources {
    ($error:ident) => {
        impl From<$crate::host::requester::RequestError> for $error {
            fn from(e: $crate::host::requester::RequestError) -> Self {
                Self::Access(e.into())
            }
        }
        impl From<$crate::host::dma::DmaWindowError> for $error {
            fn from(e: $crate::host::dma::DmaWindowError) -> Self {
                Self::Access(e.into())
            }
        }
        impl From<std::io::Error> for $error {
            fn from(e: std::io::Error) -> Self {
                Self::Access(e.into())
            }
        }
    };
}
use access_error_sources;

/// Set MSI-X Enable and clear Function Mask in Message Control of the MSI-X capability at
/// config offset `cap` (PCI Local Bus 3.0 §6.8.2.3), keeping the rest of the register.
fn enable_msix(f: &RemoteFunction, cap: u16) -> Result<(), RequestError> {
    let dw = f.config_read(cap)?;
    let ctl = ((dw >> 16) as u16 | msix::CTRL_ENABLE) & !msix::CTRL_FUNCTION_MASK;
    f.config_write(cap, (dw & 0xffff) | (u32::from(ctl) << 16))
}

/// The Max Read Request Size the drivers ask for: the largest PCIe allows, so a card's DMA
/// read of host memory takes one request (and one round of tags) per 4 KiB, not per 512 B.
pub const MAX_READ_REQUEST: u32 = 4096;

/// Set the function's Max Read Request Size to `bytes` (a power of two, 128..=4096) in its
/// PCI Express Device Control (PCIe r5.0 §7.5.3.4), as Linux drivers do with
/// `pcie_set_readrq`: MRRS is the function's own setting (unlike Max Payload Size, which the
/// whole path must agree on), so its driver may raise it. Device Status, the upper half of
/// the DW, is RW1C and written as zeros (nothing cleared). No PCI Express capability: no-op.
fn set_max_read_request(f: &RemoteFunction, bytes: u32) -> Result<(), RequestError> {
    let Some(p) = f.info().pcie else {
        return Ok(());
    };
    let dw = f.config_read(p + 8)?;
    let code = (bytes.clamp(128, 4096) / 128).trailing_zeros();
    let ctl = (dw & 0xffff & !(7 << 12)) | (code << 12);
    f.config_write(p + 8, ctl)
}

/// How a driver learns that its card finished something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompletionMode {
    /// Poll (host memory for NVMe completion queues, the STATUS register for the DMA engine).
    Poll,
    /// Sleep on the MSI-X vector's eventfd.
    #[default]
    Interrupt,
}

#[cfg(test)]
mod tests;
