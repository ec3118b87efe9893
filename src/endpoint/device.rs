//! The device trait every appliance card implements, and the handles it is given (the rust-vmm
//! `PciDevice` shape: config read/write, BAR read/write, reset).
//!
//! A device never sees the network. The endpoint proxy calls it on the thread that delivers
//! TLPs, so BAR and config handlers must be quick and must never wait for DMA: a device that
//! moves data in response to a doorbell hands the work to its own worker thread, which uses the
//! [`DmaHandle`] (blocking on completions, with a timeout) and the [`InterruptHandle`].

use thiserror::Error;

pub use super::decode::{BarKind, BarSpec, Decode, MsixLayout, MsixRegion, SriovDecode};
pub use super::dma::{DmaHandle, PendingRead, WakeupHold};
pub use super::interrupt::InterruptHandle;
pub use super::requester::DmaError;

/// An error a device reports for an access; the proxy answers a read with Completer Abort.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    /// The access is not supported by this device (Unsupported Request).
    #[error("unsupported access: {0}")]
    Unsupported(&'static str),
    /// The device failed the access (Completer Abort); the reason is a fixed description of
    /// what failed, as for [`DeviceError::Unsupported`].
    #[error("device failed the access: {0}")]
    Failed(&'static str),
}

/// AtomicOp request to a BAR (PCIe r5.0 §6.15), operands in host byte order already decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtomicOp {
    /// FetchAdd of a 4- or 8-byte operand.
    FetchAdd {
        /// Operand size in bytes (4 or 8).
        size: u8,
        /// Addend.
        add: u64,
    },
    /// Swap.
    Swap {
        /// Operand size in bytes (4 or 8).
        size: u8,
        /// New value.
        value: u64,
    },
    /// Compare and swap.
    Cas {
        /// Operand size in bytes (4 or 8; 16-byte CAS is not supported).
        size: u8,
        /// Compare value.
        compare: u64,
        /// Swap value.
        swap: u64,
    },
}

/// How a function is being reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetKind {
    /// Function Level Reset (PCIe r5.0 §6.6.2).
    FunctionLevel,
    /// Conventional (hot/link) reset.
    Conventional,
}

/// What a device gets from the endpoint when it is attached to a function.
#[derive(Debug, Clone)]
pub struct DeviceContext {
    /// Issues DMA to host memory as this function.
    pub dma: DmaHandle,
    /// Raises MSI-X and INTx as this function.
    pub irq: InterruptHandle,
}

/// A PCIe function the appliance presents.
///
/// Config accesses arrive as whole DWs with byte enables; BAR accesses as byte ranges that never
/// straddle the end of a BAR. The MSI-X table and PBA ranges are served by the endpoint itself
/// (from [`Decode::msix`]) and never reach the device.
pub trait Device: Send {
    /// A short name for logs (e.g. `nvme`).
    fn name(&self) -> &str;

    /// Called once, before any access, with the function's DMA and interrupt handles.
    fn attach(&mut self, ctx: DeviceContext);

    /// Read the config DW at `reg` (DW-aligned, < 4096).
    fn config_read(&mut self, reg: u16) -> u32;

    /// Write the config DW at `reg` under byte enables `be`. Returns `true` when the write
    /// initiated a Function Level Reset (the endpoint then calls [`Device::reset`]).
    fn config_write(&mut self, reg: u16, value: u32, be: u8) -> bool;

    /// The decode state derived from config space.
    fn decode(&self) -> Decode;

    /// Read `data.len()` bytes at `offset` of BAR `bar`.
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), DeviceError>;

    /// Write `data` at `offset` of BAR `bar`.
    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError>;

    /// An AtomicOp on a BAR; returns the original value. Devices without AtomicOp completer
    /// support keep the default, which the endpoint answers with Unsupported Request.
    fn bar_atomic(&mut self, bar: u8, offset: u64, op: AtomicOp) -> Result<u64, DeviceError> {
        let _ = (bar, offset, op);
        Err(DeviceError::Unsupported("AtomicOp"))
    }

    /// Build virtual function `index` (0-based) of this physical function, when SR-IOV is
    /// enabled. Its BARs are the PF's VF BARs (the endpoint routes them); the default has none.
    fn create_vf(&mut self, index: u16) -> Option<Box<dyn Device>> {
        let _ = index;
        None
    }

    /// Reset the function: config space to power-on values, device state quiesced, no DMA or
    /// interrupt in flight when this returns.
    fn reset(&mut self, kind: ResetKind);
}

/// Apply an AtomicOp to a little-endian value in plain memory; returns the original value.
pub fn apply_atomic(mem: &mut [u8], op: AtomicOp) -> Result<u64, DeviceError> {
    let size = match op {
        AtomicOp::FetchAdd { size, .. }
        | AtomicOp::Swap { size, .. }
        | AtomicOp::Cas { size, .. } => usize::from(size),
    };
    if size != 4 && size != 8 || mem.len() < size {
        return Err(DeviceError::Unsupported("AtomicOp operand size"));
    }
    let mut raw = [0u8; 8];
    raw[..size].copy_from_slice(&mem[..size]);
    let old = u64::from_le_bytes(raw);
    let mask = if size == 8 {
        u64::MAX
    } else {
        u64::from(u32::MAX)
    };
    let new = match op {
        AtomicOp::FetchAdd { add, .. } => old.wrapping_add(add) & mask,
        AtomicOp::Swap { value, .. } => value & mask,
        AtomicOp::Cas { compare, swap, .. } => {
            if old == compare & mask {
                swap & mask
            } else {
                old
            }
        }
    };
    mem[..size].copy_from_slice(&new.to_le_bytes()[..size]);
    Ok(old)
}
