//! What a function's configuration space says the endpoint must route on: BARs and their
//! bases, decode enables, Max Payload / Max Read Request Size, tag enables, MSI-X location and
//! SR-IOV state (PCI Local Bus 3.0 §6.2.5.1 BARs, PCIe r5.0 §7.5.1.1.3 Command, §7.5.3.4 Device
//! Control, §7.7.2 MSI-X, §9.3.3 SR-IOV). Plain data, shared by the device models that produce
//! it and the endpoint that consumes it.

use super::wire::Bdf;

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

impl MsixLayout {
    /// Bytes of the table: one 16-byte entry per vector (§7.7.2).
    pub fn table_len(&self) -> u64 {
        u64::from(self.vectors) * crate::pci::spec::msix::ENTRY_SIZE as u64
    }

    /// Bytes of the Pending Bit Array: one bit per vector, in whole QWORDs (§7.7.2).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// Whether the access at `off` of BAR `bar` falls in the table or the PBA, and where in it.
    pub fn locate(&self, bar: u8, off: u64) -> Option<MsixRegion> {
        let (t, p) = (u64::from(self.table_offset), u64::from(self.pba_offset));
        if bar == self.table_bar && off >= t && off - t < self.table_len() {
            return Some(MsixRegion::Table(off - t));
        }
        if bar == self.pba_bar && off >= p && off - p < self.pba_len() {
            return Some(MsixRegion::Pba(off - p));
        }
        None
    }
}

/// Where a BAR access lands in a function's MSI-X structures (see [`MsixLayout::locate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MsixRegion {
    /// At this offset of the vector table.
    Table(u64),
    /// At this offset of the Pending Bit Array.
    Pba(u64),
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
    pub fn vf_ids(&self, pf: Bdf) -> Vec<Bdf> {
        match self.sriov {
            Some(s) if s.vf_enable => (0..s.num_vfs)
                .map(|i| {
                    Bdf(pf
                        .0
                        .wrapping_add(s.first_offset)
                        .wrapping_add(s.stride.wrapping_mul(i)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msix_accesses_are_located_in_the_table_or_the_pba() {
        // 65 vectors: a 1040-byte table at 0x2000 of BAR 0, a 16-byte PBA (two QWORDs) at
        // 0x3000 of BAR 0.
        let m = MsixLayout {
            vectors: 65,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        };
        assert_eq!((m.table_len(), m.pba_len()), (1040, 16));
        assert_eq!(m.locate(0, 0x2000), Some(MsixRegion::Table(0)));
        assert_eq!(m.locate(0, 0x240c), Some(MsixRegion::Table(0x40c)));
        assert_eq!(m.locate(0, 0x2410), None, "one past the table");
        assert_eq!(m.locate(0, 0x300c), Some(MsixRegion::Pba(0xc)));
        assert_eq!(m.locate(0, 0x3010), None, "one past the PBA");
        assert_eq!(m.locate(2, 0x2000), None, "another BAR");
        assert_eq!(m.locate(0, 0x1fff), None);
    }
}
