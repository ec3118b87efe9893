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

    /// The space it decodes (`None` when unused).
    fn space(self) -> Option<BarSpace> {
        match self {
            Bar::Unused => None,
            Bar::Memory32 { .. } => Some(BarSpace::Mem32),
            Bar::Memory64 { .. } => Some(BarSpace::Mem64),
            Bar::Io { .. } => Some(BarSpace::Io),
        }
    }

    fn validate(self, index: usize, slots: usize) -> Result<(), PciError> {
        let Some(space) = self.space() else {
            return Ok(());
        };
        space.check_size(index, self.size())?;
        if space == BarSpace::Mem64 && index + 1 >= slots {
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
        match self.space() {
            None => regs.set_rw(offset, 4, 0),
            Some(space) => {
                if space == BarSpace::Mem64 {
                    regs.init(offset + 4, 4, 0);
                }
                space.open_address_bits(regs, offset, self.size());
            }
        }
        Ok(())
    }
}

/// The address space a BAR decodes, which fixes the sizes it may ask for and which of its
/// bits hold the address (PCI Local Bus 3.0 §6.2.5.1). The one copy of that knowledge, used
/// by the BARs a device model declares ([`Bar`]) and the BARs a replayed dump has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BarSpace {
    /// I/O space.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory: this slot and the next.
    Mem64,
}

impl BarSpace {
    /// Smallest and largest size a BAR of this space may have.
    pub(crate) const fn size_limits(self) -> (u64, u64) {
        match self {
            BarSpace::Io => (4, 1 << 16),
            BarSpace::Mem32 => (16, 1 << 31),
            BarSpace::Mem64 => (16, 1 << 63),
        }
    }

    /// `size` is a power of two within [`size_limits`](Self::size_limits) (`index`: the slot,
    /// for the error).
    pub(crate) fn check_size(self, index: usize, size: u64) -> Result<(), PciError> {
        let (min, max) = self.size_limits();
        if !size.is_power_of_two() || size < min || size > max {
            return Err(PciError::BadBarSize {
                index,
                size,
                min,
                max,
            });
        }
        Ok(())
    }

    /// Make the address bits above `size` (a checked size) of the BAR at `offset` read-write,
    /// both DWs of a 64-bit BAR: what makes sizing by writing all-ones work.
    pub(crate) fn open_address_bits(self, regs: &mut RegisterBlock, offset: usize, size: u64) {
        let m = !(size - 1);
        match self {
            BarSpace::Io => regs.set_rw(offset, 4, (m as u32 & b::IO_ADDRESS_MASK) as u64),
            BarSpace::Mem32 => regs.set_rw(offset, 4, (m as u32 & b::MEM_ADDRESS_MASK) as u64),
            BarSpace::Mem64 => {
                regs.set_rw(offset, 4, (m as u32 & b::MEM_ADDRESS_MASK) as u64);
                regs.set_rw(offset + 4, 4, m >> 32);
            }
        }
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
