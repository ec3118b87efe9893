//! Base Address Registers: what a function asks for, and the masks that make BAR sizing
//! work (PCI Local Bus 3.0 §6.2.5.1; PCIe Base 4.0 §7.5.1.2.1). Shared by the type 0 / type 1
//! headers and the SR-IOV VF BARs.

use super::regs::RegisterBlock;
use super::spec::bar as b;
use super::PciError;

/// One BAR slot as the device model declares it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Bar {
    /// Not implemented: hardwired to zero (sizing reads back 0).
    #[default]
    Unused,
    /// 32-bit memory BAR of `size` bytes (a power of two, at least 16).
    Memory32 {
        /// Size in bytes.
        size: u32,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory BAR; occupies this slot and the next one.
    Memory64 {
        /// Size in bytes.
        size: u64,
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O space BAR of `size` bytes (a power of two, 4 … 65536).
    Io {
        /// Size in bytes.
        size: u32,
    },
}

impl Bar {
    /// Size in bytes (0 for unused).
    pub fn size(self) -> u64 {
        match self {
            Bar::Unused => 0,
            Bar::Memory32 { size, .. } | Bar::Io { size } => size as u64,
            Bar::Memory64 { size, .. } => size,
        }
    }

    /// True for I/O space.
    pub fn is_io(self) -> bool {
        matches!(self, Bar::Io { .. })
    }

    fn flags(self) -> u32 {
        match self {
            Bar::Unused => 0,
            Bar::Io { .. } => b::IO_SPACE,
            Bar::Memory32 { prefetchable, .. } => {
                if prefetchable {
                    b::MEM_PREFETCHABLE
                } else {
                    0
                }
            }
            Bar::Memory64 { prefetchable, .. } => {
                b::MEM_TYPE_64 | if prefetchable { b::MEM_PREFETCHABLE } else { 0 }
            }
        }
    }

    fn validate(self, index: usize, slots: usize) -> Result<(), PciError> {
        let (min, max) = match self {
            Bar::Unused => return Ok(()),
            Bar::Memory32 { .. } => (16, 1 << 31),
            Bar::Memory64 { .. } => (16, 1 << 63),
            Bar::Io { .. } => (4, 1 << 16),
        };
        let size = self.size();
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BadBarSize {
                index,
                size,
                min,
                max,
            });
        }
        if matches!(self, Bar::Memory64 { .. }) && index + 1 >= slots {
            return Err(PciError::Bar64NoRoom { index });
        }
        Ok(())
    }

    /// Installs the BAR at `offset` (slot `index` of `slots`) in `regs`: flag bits become
    /// read-only defaults, address bits above the size become read-write. Base address
    /// starts at zero.
    pub(crate) fn install(
        self,
        regs: &mut RegisterBlock,
        offset: usize,
        index: usize,
        slots: usize,
    ) -> Result<(), PciError> {
        self.validate(index, slots)?;
        regs.init(offset, 4, self.flags() as u64);
        let size = self.size();
        match self {
            Bar::Unused => regs.set_rw(offset, 4, 0),
            Bar::Memory32 { .. } => {
                regs.set_rw(offset, 4, (!(size as u32 - 1) & b::MEM_ADDRESS_MASK) as u64)
            }
            Bar::Io { .. } => {
                regs.set_rw(offset, 4, (!(size as u32 - 1) & b::IO_ADDRESS_MASK) as u64)
            }
            Bar::Memory64 { .. } => {
                let m = !(size - 1);
                regs.set_rw(offset, 4, (m as u32 & b::MEM_ADDRESS_MASK) as u64);
                regs.init(offset + 4, 4, 0);
                regs.set_rw(offset + 4, 4, m >> 32);
            }
        }
        Ok(())
    }
}

/// The programmed state of one implemented BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarValue {
    /// Slot index (the lower slot of a 64-bit BAR).
    pub index: usize,
    /// Base address the driver programmed.
    pub address: u64,
    /// Size in bytes (from the write mask; 0 if the BAR is not sizeable, e.g. replay).
    pub size: u64,
    /// I/O space.
    pub io: bool,
    /// 64-bit memory BAR.
    pub is_64: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// Decodes `slots` (at most 6) BARs starting at `offset`, without allocating: implemented
/// ones in slot order, upper halves of 64-bit BARs skipped. A BAR counts as implemented when
/// it has writable address bits or a non-zero value (a read-only replayed BAR).
pub(crate) fn decode_all(
    regs: &RegisterBlock,
    offset: usize,
    slots: usize,
) -> impl Iterator<Item = BarValue> {
    let mut out: [Option<BarValue>; 6] = [None; 6];
    let slots = slots.min(6);
    let mut i = 0;
    while i < slots {
        let o = offset + i * 4;
        let lo = regs.u32(o);
        let mask_lo = regs.rw_mask(o, 4) as u32;
        if mask_lo == 0 && lo == 0 {
            i += 1;
            continue;
        }
        if lo & b::IO_SPACE != 0 {
            let m = mask_lo & b::IO_ADDRESS_MASK;
            out[i] = Some(BarValue {
                index: i,
                address: (lo & b::IO_ADDRESS_MASK) as u64,
                size: if m == 0 {
                    0
                } else {
                    (!m).wrapping_add(1) as u64 & 0xffff_ffff
                },
                io: true,
                is_64: false,
                prefetchable: false,
            });
            i += 1;
            continue;
        }
        let prefetchable = lo & b::MEM_PREFETCHABLE != 0;
        if lo & b::MEM_TYPE_MASK == b::MEM_TYPE_64 && i + 1 < slots {
            let hi = regs.u32(o + 4) as u64;
            let m = ((regs.rw_mask(o + 4, 4)) << 32) | (mask_lo & b::MEM_ADDRESS_MASK) as u64;
            out[i] = Some(BarValue {
                index: i,
                address: (hi << 32) | (lo & b::MEM_ADDRESS_MASK) as u64,
                size: if m == 0 { 0 } else { (!m).wrapping_add(1) },
                io: false,
                is_64: true,
                prefetchable,
            });
            i += 2;
            continue;
        }
        let m = mask_lo & b::MEM_ADDRESS_MASK;
        out[i] = Some(BarValue {
            index: i,
            address: (lo & b::MEM_ADDRESS_MASK) as u64,
            size: if m == 0 {
                0
            } else {
                (!m).wrapping_add(1) as u64
            },
            io: false,
            is_64: false,
            prefetchable,
        });
        i += 1;
    }
    out.into_iter().flatten()
}
