//! The device trait every appliance card implements, and the handles it is given (the rust-vmm
//! `PciDevice` shape: config read/write, BAR read/write, reset).
//!
//! A device never sees the network. The endpoint proxy calls it on the thread that delivers
//! TLPs, so BAR and config handlers must be quick and must never wait for DMA: a device that
//! moves data in response to a doorbell hands the work to its own worker thread, which uses the
//! [`DmaHandle`] (blocking on completions, with a timeout) and the [`InterruptHandle`].

use thiserror::Error;

pub use super::interrupt::InterruptHandle;
pub use super::requester::{DmaError, DmaHandle};

/// Kind of a Base Address Register (PCI Local Bus 3.0 §6.2.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (occupies two BAR slots).
    Mem64,
    /// IO BAR.
    Io,
}

/// A BAR a device has: kind and size in bytes (a power of two).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSpec {
    /// Kind.
    pub kind: BarKind,
    /// Size in bytes.
    pub size: u64,
    /// Prefetchable (memory BARs).
    pub prefetchable: bool,
}

impl BarSpec {
    /// A 32-bit non-prefetchable memory BAR.
    pub const fn mem32(size: u64) -> Self {
        BarSpec {
            kind: BarKind::Mem32,
            size,
            prefetchable: false,
        }
    }
    /// A 64-bit memory BAR.
    pub const fn mem64(size: u64, prefetchable: bool) -> Self {
        BarSpec {
            kind: BarKind::Mem64,
            size,
            prefetchable,
        }
    }
    /// An IO BAR.
    pub const fn io(size: u64) -> Self {
        BarSpec {
            kind: BarKind::Io,
            size,
            prefetchable: false,
        }
    }
}

/// Where a function's MSI-X table and PBA live (PCIe r5.0 §7.7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (table entries), 1..=2048.
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
    /// BAR holding the Pending Bit Array.
    pub pba_bar: u8,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u32,
}

/// The state the endpoint routes on, read from the function's configuration space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decode {
    /// Command: IO Space Enable.
    pub io_enable: bool,
    /// Command: Memory Space Enable.
    pub mem_enable: bool,
    /// Command: Bus Master Enable (gates all DMA and MSI/MSI-X).
    pub bus_master: bool,
    /// Command: Interrupt Disable (gates INTx).
    pub intx_disable: bool,
    /// Interrupt Pin (0 none, 1..=4 INTA..INTD).
    pub int_pin: u8,
    /// BARs: spec and current base address, by BAR index.
    pub bars: [Option<(BarSpec, u64)>; 6],
    /// Max Payload Size in bytes.
    pub mps: u16,
    /// Max Read Request Size in bytes.
    pub mrrs: u16,
    /// Read Completion Boundary in bytes (64 or 128).
    pub rcb: u16,
    /// Extended (8-bit) tags enabled; without them requests use 5-bit tags.
    pub ext_tags: bool,
    /// 10-bit tag requester enabled.
    pub ten_bit_tags: bool,
    /// MSI-X table location, if the function has MSI-X.
    pub msix: Option<MsixLayout>,
    /// MSI-X Enable.
    pub msix_enabled: bool,
    /// MSI-X Function Mask.
    pub msix_masked: bool,
    /// SR-IOV state, for a physical function with the SR-IOV capability.
    pub sriov: Option<SriovDecode>,
}

/// What a physical function's SR-IOV capability says (SR-IOV 1.1 §3.3, PCIe r5.0 §9.3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SriovDecode {
    /// VF Enable.
    pub vf_enable: bool,
    /// VF Memory Space Enable.
    pub vf_mse: bool,
    /// NumVFs (clamped to TotalVFs).
    pub num_vfs: u16,
    /// First VF Offset (Routing ID distance from the PF to VF 1).
    pub first_offset: u16,
    /// VF Stride.
    pub stride: u16,
    /// VF BARs: spec (size of one VF's slice) and base of VF 1's slice.
    pub vf_bars: [Option<(BarSpec, u64)>; 6],
}

impl Decode {
    /// Routing IDs of the enabled virtual functions, given this PF's Routing ID.
    pub fn vf_ids(&self, pf: super::wire::Bdf) -> Vec<super::wire::Bdf> {
        match self.sriov {
            Some(s) if s.vf_enable => (0..s.num_vfs)
                .map(|i| {
                    super::wire::Bdf(
                        pf.0.wrapping_add(s.first_offset)
                            .wrapping_add(s.stride.wrapping_mul(i)),
                    )
                })
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Which BAR (and offset in it) claims a memory access of `len` bytes at `addr`, if decode
    /// is enabled and the whole access falls inside one BAR.
    pub fn claim_mem(&self, addr: u64, len: u64) -> Option<(u8, u64)> {
        if !self.mem_enable {
            return None;
        }
        self.claim(addr, len, false)
    }

    /// Which IO BAR claims an IO access.
    pub fn claim_io(&self, addr: u64, len: u64) -> Option<(u8, u64)> {
        if !self.io_enable {
            return None;
        }
        self.claim(addr, len, true)
    }

    fn claim(&self, addr: u64, len: u64, io: bool) -> Option<(u8, u64)> {
        for (i, bar) in self.bars.iter().enumerate() {
            let Some((spec, base)) = bar else { continue };
            if (spec.kind == BarKind::Io) != io || *base == 0 {
                continue;
            }
            let end = addr.checked_add(len)?;
            if addr >= *base && end <= base.saturating_add(spec.size) {
                return Some((i as u8, addr - base));
            }
        }
        None
    }
}

/// An error a device reports for an access; the proxy answers a read with Completer Abort.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DeviceError {
    /// The access is not supported by this device (Unsupported Request).
    #[error("unsupported access: {0}")]
    Unsupported(&'static str),
    /// The device failed the access (Completer Abort).
    #[error("device error: {0}")]
    Failed(String),
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
