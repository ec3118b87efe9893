//! A type 0 configuration space for the appliance's own device models (PCI Local Bus 3.0 §6.1,
//! PCIe Base r5.0 §7.5.1 type 0 header, §7.5.3 PCI Express capability, §7.7.2 MSI-X capability,
//! PCI PM 1.2 §3.2 power management capability).
//!
//! Register semantics are handled once, by per-byte masks: read-only (default), read-write
//! (`wmask`) and write-1-to-clear (`w1c`). BAR sizing falls out of the masks (a BAR's writable
//! bits are its address bits, so writing all-ones reads back the size mask). Devices describe
//! their BARs and capabilities with [`ConfigBuilder`]; the endpoint proxy reads the decode state
//! (command register, BAR addresses, MSI-X and PCIe control bits) back through [`ConfigSpace`].

use super::device::{BarKind, BarSpec, Decode, MsixLayout, SriovDecode, SriovSpec};

/// Size of a PCIe function's configuration space.
pub const CFG_SIZE: usize = 4096;

/// Command register bits (§7.5.1.1.3).
pub mod command {
    /// IO Space Enable.
    pub const IO: u16 = 1 << 0;
    /// Memory Space Enable.
    pub const MEM: u16 = 1 << 1;
    /// Bus Master Enable.
    pub const BUS_MASTER: u16 = 1 << 2;
    /// Parity Error Response.
    pub const PARITY: u16 = 1 << 6;
    /// SERR# Enable.
    pub const SERR: u16 = 1 << 8;
    /// Interrupt Disable.
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Capability IDs used here.
pub mod cap_id {
    /// PCI Power Management.
    pub const PM: u8 = 0x01;
    /// PCI Express.
    pub const PCIE: u8 = 0x10;
    /// MSI-X.
    pub const MSIX: u8 = 0x11;
}

/// Identity of a function: what `lspci -n` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Subsystem vendor ID.
    pub subsys_vendor: u16,
    /// Subsystem ID.
    pub subsys: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code (base class, subclass, programming interface).
    pub class: u32,
}

/// Builds a configuration space: header, BARs and a capability chain.
#[derive(Debug)]
pub struct ConfigBuilder {
    cfg: ConfigSpace,
    next_cap: u8,
    last_cap_next: Option<usize>,
}

impl ConfigBuilder {
    /// A type 0 header with the given identity and INTx pin (0 = none, 1 = INTA…).
    pub fn new(id: Identity, int_pin: u8) -> Self {
        let mut cfg = ConfigSpace {
            bytes: Box::new([0; CFG_SIZE]),
            wmask: Box::new([0; CFG_SIZE]),
            w1c: Box::new([0; CFG_SIZE]),
            init: Box::new([0; CFG_SIZE]),
            bars: [None; 6],
            msix: None,
            pcie: None,
            sriov: None,
        };
        cfg.set16(0x00, id.vendor);
        cfg.set16(0x02, id.device);
        cfg.bytes[0x08] = id.revision;
        cfg.bytes[0x09] = id.class as u8;
        cfg.bytes[0x0a] = (id.class >> 8) as u8;
        cfg.bytes[0x0b] = (id.class >> 16) as u8;
        cfg.set16(0x2c, id.subsys_vendor);
        cfg.set16(0x2e, id.subsys);
        cfg.bytes[0x3d] = int_pin;
        // Command: IO, MEM, BME, parity, SERR, INTx disable are writable.
        let cmd_mask = command::IO
            | command::MEM
            | command::BUS_MASTER
            | command::PARITY
            | command::SERR
            | command::INTX_DISABLE;
        cfg.wmask[0x04..0x06].copy_from_slice(&cmd_mask.to_le_bytes());
        // Status: error bits are RW1C (master data parity, sig/rcv target/master abort, SERR, parity).
        let status_w1c: u16 = 0xf900;
        cfg.w1c[0x06..0x08].copy_from_slice(&status_w1c.to_le_bytes());
        cfg.wmask[0x0c] = 0xff; // cache line size
        cfg.wmask[0x3c] = 0xff; // interrupt line
        ConfigBuilder {
            cfg,
            next_cap: 0x40,
            last_cap_next: None,
        }
    }

    /// Declare BAR `index` (for a 64-bit BAR, `index + 1` is its upper half).
    pub fn bar(mut self, index: usize, spec: BarSpec) -> Self {
        let off = 0x10 + index * 4;
        let size = spec.size.next_power_of_two().max(match spec.kind {
            BarKind::Io => 4,
            _ => 16,
        });
        let (low_bits, mask): (u32, u64) = match spec.kind {
            BarKind::Io => (0b01, !(size - 1)),
            BarKind::Mem32 => (u32::from(spec.prefetchable) << 3, !(size - 1)),
            BarKind::Mem64 => (0b100 | u32::from(spec.prefetchable) << 3, !(size - 1)),
        };
        self.cfg.set32(off, low_bits);
        let lo_mask = (mask as u32) & if spec.kind == BarKind::Io { !3 } else { !0xf };
        self.cfg.wmask[off..off + 4].copy_from_slice(&lo_mask.to_le_bytes());
        if spec.kind == BarKind::Mem64 && index < 5 {
            self.cfg.wmask[off + 4..off + 8].copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
        }
        self.cfg.bars[index] = Some(BarSpec { size, ..spec });
        self
    }

    fn add_cap(&mut self, id: u8, len: u8) -> usize {
        let at = self.next_cap as usize;
        if let Some(prev) = self.last_cap_next {
            self.cfg.bytes[prev] = self.next_cap;
        } else {
            self.cfg.bytes[0x34] = self.next_cap;
            self.cfg.bytes[0x06] |= 0x10; // Status: Capabilities List
        }
        self.cfg.bytes[at] = id;
        self.last_cap_next = Some(at + 1);
        self.next_cap = self.next_cap.wrapping_add(len);
        at
    }

    /// Power Management capability, version 3, D0/D3hot, No_Soft_Reset set.
    pub fn power_management(mut self) -> Self {
        let at = self.add_cap(cap_id::PM, 8);
        self.cfg.set16(at + 2, 0x0003);
        self.cfg.set16(at + 4, 0x0008);
        self.cfg.wmask[at + 4] = 0x03; // PowerState
        self.cfg.w1c[at + 5] = 0x80; // PME_Status
        self
    }

    /// PCI Express capability (version 2, endpoint), with FLR, extended and 10-bit tags, and
    /// the given Max Payload Size Supported (bytes: 128..4096).
    pub fn pci_express(mut self, mps_supported: u16) -> Self {
        let at = self.add_cap(cap_id::PCIE, 0x3c);
        self.cfg.set16(at + 2, 0x0002); // version 2, device/port type 0 = endpoint
        let mps_code = mps_supported
            .max(128)
            .trailing_zeros()
            .saturating_sub(7)
            .min(5);
        // DevCap: MPSS, extended tag (bit 5), role-based error reporting (15), FLR (28).
        self.cfg
            .set32(at + 4, mps_code | (1 << 5) | (1 << 15) | (1 << 28));
        // DevCtl: relaxed ordering (4), extended tags (8), no snoop (11), MRRS 512 (010 << 12).
        self.cfg
            .set16(at + 8, (1 << 4) | (1 << 8) | (1 << 11) | (2 << 12));
        // Writable: error reporting enables, RO, MPS, ext tag, phantom, aux PM, no snoop, MRRS,
        // and bit 15 (Initiate FLR, which reads back 0: the proxy acts on it).
        self.cfg.wmask[at + 8..at + 10].copy_from_slice(&0xffffu16.to_le_bytes());
        // DevSta: error detected bits RW1C.
        self.cfg.w1c[at + 10] = 0x0f;
        // LinkCap: 8 GT/s x4, ASPM none, port number 0.
        self.cfg.set32(at + 0x0c, 0x3 | (4 << 4));
        // LinkCtl: RCB (bit 3) and common clock (6) writable.
        self.cfg.wmask[at + 0x10] = 0x48;
        // LinkSta: 8 GT/s x4, slot clock configuration.
        self.cfg.set16(at + 0x12, 0x3 | (4 << 4) | (1 << 12));
        // DevCap2: completion timeout ranges A-D, CT disable, 10-bit tag completer+requester.
        self.cfg
            .set32(at + 0x24, 0xf | (1 << 4) | (1 << 16) | (1 << 17));
        // DevCtl2: completion timeout value/disable, 10-bit tag requester enable writable.
        self.cfg.wmask[at + 0x28] = 0x1f;
        self.cfg.wmask[at + 0x29] = 0x10;
        // LinkCap2: speeds 2.5, 5, 8 GT/s. LinkCtl2: target speed 8 GT/s.
        self.cfg.set32(at + 0x2c, 0b1110);
        self.cfg.set16(at + 0x30, 0x3);
        self.cfg.wmask[at + 0x30] = 0x0f;
        self.cfg.pcie = Some(at);
        self
    }

    /// MSI-X capability with `vectors` entries; table and PBA in the given BAR(s) at the given
    /// offsets (8-byte aligned).
    pub fn msix(mut self, layout: MsixLayout) -> Self {
        let at = self.add_cap(cap_id::MSIX, 12);
        self.cfg
            .set16(at + 2, layout.vectors.saturating_sub(1) & 0x7ff);
        self.cfg.wmask[at + 3] = 0xc0; // MSI-X Enable, Function Mask
        self.cfg.set32(
            at + 4,
            (layout.table_offset & !7) | u32::from(layout.table_bar & 7),
        );
        self.cfg.set32(
            at + 8,
            (layout.pba_offset & !7) | u32::from(layout.pba_bar & 7),
        );
        self.cfg.msix = Some((at, layout));
        self
    }

    /// SR-IOV extended capability at 0x100 (PCIe r5.0 §9.3.3), with its VF BARs sized per VF.
    pub fn sriov(mut self, spec: SriovSpec) -> Self {
        let at = 0x100usize;
        self.cfg.set32(at, 0x0010 | (1 << 16)); // ID 0x0010, version 1, end of list
        self.cfg.set32(at + 0x04, 0); // SR-IOV Capabilities
        self.cfg.wmask[at + 0x08] = 0x19; // VF Enable, VF MSE, ARI Capable Hierarchy
        self.cfg.set16(at + 0x0c, spec.total_vfs); // InitialVFs
        self.cfg.set16(at + 0x0e, spec.total_vfs); // TotalVFs
        self.cfg.wmask[at + 0x10..at + 0x12].copy_from_slice(&[0xff, 0xff]); // NumVFs
        self.cfg.set16(at + 0x14, spec.first_offset);
        self.cfg.set16(at + 0x16, spec.stride);
        self.cfg.set16(at + 0x1a, spec.vf_device);
        self.cfg.set32(at + 0x1c, 0x553); // supported page sizes 4K, 8K, 64K, 256K, 1M, 4M
        self.cfg.set32(at + 0x20, 1); // system page size 4K
        self.cfg.wmask[at + 0x20..at + 0x24].copy_from_slice(&0x553u32.to_le_bytes());
        let mut sizes = [None; 6];
        for (i, b) in spec.vf_bars.iter().enumerate() {
            let Some(b) = b else { continue };
            let off = at + 0x24 + i * 4;
            let size = b.size.next_power_of_two().max(4096);
            let low =
                if b.kind == BarKind::Mem64 { 0b100 } else { 0 } | u32::from(b.prefetchable) << 3;
            self.cfg.set32(off, low);
            let mask = !(size - 1);
            self.cfg.wmask[off..off + 4].copy_from_slice(&((mask as u32) & !0xf).to_le_bytes());
            if b.kind == BarKind::Mem64 && i < 5 {
                self.cfg.wmask[off + 4..off + 8]
                    .copy_from_slice(&((mask >> 32) as u32).to_le_bytes());
            }
            sizes[i] = Some(BarSpec { size, ..*b });
        }
        self.cfg.sriov = Some((at, sizes));
        self
    }

    /// Finish: the reset state is what was built.
    pub fn build(mut self) -> ConfigSpace {
        self.cfg.init.copy_from_slice(&self.cfg.bytes[..]);
        self.cfg
    }
}

/// A function's configuration space with its register semantics.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    bytes: Box<[u8; CFG_SIZE]>,
    wmask: Box<[u8; CFG_SIZE]>,
    w1c: Box<[u8; CFG_SIZE]>,
    init: Box<[u8; CFG_SIZE]>,
    bars: [Option<BarSpec>; 6],
    msix: Option<(usize, MsixLayout)>,
    pcie: Option<usize>,
    sriov: Option<(usize, [Option<BarSpec>; 6])>,
}

impl ConfigSpace {
    fn set16(&mut self, off: usize, v: u16) {
        self.bytes[off..off + 2].copy_from_slice(&v.to_le_bytes());
    }
    fn set32(&mut self, off: usize, v: u32) {
        self.bytes[off..off + 4].copy_from_slice(&v.to_le_bytes());
    }
    fn get16(&self, off: usize) -> u16 {
        u16::from_le_bytes([self.bytes[off], self.bytes[off + 1]])
    }
    fn get32(&self, off: usize) -> u32 {
        u32::from_le_bytes([
            self.bytes[off],
            self.bytes[off + 1],
            self.bytes[off + 2],
            self.bytes[off + 3],
        ])
    }

    /// Read the DW at `reg` (any offset; bits 1:0 ignored, beyond 4 KiB reads 0).
    pub fn read(&self, reg: u16) -> u32 {
        let off = usize::from(reg & !3);
        if off + 4 > CFG_SIZE {
            return 0;
        }
        self.get32(off)
    }

    /// Write `value` to the DW at `reg` under byte enables `be` (bit i = byte i).
    ///
    /// Returns `true` when the write asked for a Function Level Reset; the caller resets the
    /// function (this space included, with [`ConfigSpace::reset`]).
    pub fn write(&mut self, reg: u16, value: u32, be: u8) -> bool {
        let off = usize::from(reg & !3);
        if off + 4 > CFG_SIZE {
            return false;
        }
        let vb = value.to_le_bytes();
        for (i, v) in vb.iter().enumerate() {
            if be & (1 << i) == 0 {
                continue;
            }
            let o = off + i;
            let keep = self.bytes[o] & !self.wmask[o];
            let mut nb = keep | (v & self.wmask[o]);
            nb &= !(v & self.w1c[o]);
            self.bytes[o] = nb;
        }
        // Initiate FLR reads back as 0.
        if let Some(at) = self.pcie {
            let ctl_hi = at + 9;
            if (off..off + 4).contains(&ctl_hi) && be & (1 << (ctl_hi - off)) != 0 {
                let asked = self.bytes[ctl_hi] & 0x80 != 0;
                self.bytes[ctl_hi] &= 0x7f;
                return asked;
            }
        }
        false
    }

    /// Return every register to its power-on value (FLR or conventional reset).
    pub fn reset(&mut self) {
        self.bytes.copy_from_slice(&self.init[..]);
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        self.get16(0x04)
    }

    /// Current decode state: what the endpoint routes on.
    pub fn decode(&self) -> Decode {
        let cmd = self.command();
        let mut bars = [None; 6];
        let mut i = 0;
        while i < 6 {
            if let Some(spec) = self.bars[i] {
                let lo = self.get32(0x10 + i * 4);
                let base = match spec.kind {
                    BarKind::Io => u64::from(lo & !3),
                    BarKind::Mem32 => u64::from(lo & !0xf),
                    BarKind::Mem64 => {
                        let hi = if i < 5 { self.get32(0x14 + i * 4) } else { 0 };
                        (u64::from(hi) << 32) | u64::from(lo & !0xf)
                    }
                };
                bars[i] = Some((spec, base));
                if spec.kind == BarKind::Mem64 {
                    i += 1;
                }
            }
            i += 1;
        }
        let (mps, mrrs, ext_tags, ten_bit_tags, rcb) = match self.pcie {
            Some(at) => {
                let ctl = self.get16(at + 8);
                let ctl2 = self.get16(at + 0x28);
                let link_ctl = self.get16(at + 0x10);
                (
                    128u16 << ((ctl >> 5) & 7).min(5),
                    128u16 << ((ctl >> 12) & 7).min(5),
                    ctl & (1 << 8) != 0,
                    ctl2 & (1 << 12) != 0,
                    if link_ctl & (1 << 3) != 0 { 128 } else { 64 },
                )
            }
            None => (128, 128, false, false, 64),
        };
        let (msix_enabled, msix_masked, msix) = match self.msix {
            Some((at, layout)) => {
                let ctl = self.get16(at + 2);
                (ctl & 0x8000 != 0, ctl & 0x4000 != 0, Some(layout))
            }
            None => (false, false, None),
        };
        let sriov = self.sriov.map(|(at, specs)| {
            let ctl = self.get16(at + 0x08);
            let total = self.get16(at + 0x0e);
            let mut vf_bars = [None; 6];
            let mut i = 0;
            while i < 6 {
                if let Some(spec) = specs[i] {
                    let lo = self.get32(at + 0x24 + i * 4) & !0xf;
                    let hi = if spec.kind == BarKind::Mem64 && i < 5 {
                        self.get32(at + 0x28 + i * 4)
                    } else {
                        0
                    };
                    vf_bars[i] = Some((spec, (u64::from(hi) << 32) | u64::from(lo)));
                    if spec.kind == BarKind::Mem64 {
                        i += 1;
                    }
                }
                i += 1;
            }
            SriovDecode {
                vf_enable: ctl & 1 != 0,
                vf_mse: ctl & 8 != 0,
                num_vfs: self.get16(at + 0x10).min(total),
                first_offset: self.get16(at + 0x14),
                stride: self.get16(at + 0x16),
                vf_bars,
            }
        });
        Decode {
            sriov,
            io_enable: cmd & command::IO != 0,
            mem_enable: cmd & command::MEM != 0,
            bus_master: cmd & command::BUS_MASTER != 0,
            intx_disable: cmd & command::INTX_DISABLE != 0,
            int_pin: self.bytes[0x3d],
            bars,
            mps,
            mrrs,
            rcb,
            ext_tags,
            ten_bit_tags,
            msix,
            msix_enabled,
            msix_masked,
        }
    }

    /// The raw 4 KiB (for dumps).
    pub fn bytes(&self) -> &[u8; CFG_SIZE] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ConfigSpace {
        ConfigBuilder::new(
            Identity {
                vendor: 0x1234,
                device: 0x5678,
                subsys_vendor: 0x1234,
                subsys: 1,
                revision: 2,
                class: 0x010802,
            },
            1,
        )
        .bar(0, BarSpec::mem64(0x4000, false))
        .bar(2, BarSpec::mem32(0x1000))
        .power_management()
        .msix(MsixLayout {
            vectors: 4,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        })
        .pci_express(256)
        .build()
    }

    #[test]
    fn header_identity_and_cap_chain() {
        let c = sample();
        assert_eq!(c.read(0), 0x5678_1234);
        assert_eq!(c.read(8), 0x0108_0202);
        assert_eq!(c.read(0x34) & 0xff, 0x40);
        assert_eq!(c.read(0x40) & 0xffff, 0x4801); // PM, next 0x48
        assert_eq!(c.read(0x48) & 0xffff, 0x5411); // MSI-X, next 0x54
        assert_eq!(c.read(0x48) >> 16, 3); // table size - 1
        assert_eq!(c.read(0x54) & 0xffff, 0x0010); // PCIe, end of chain
        assert_ne!(c.read(0x04) & (0x10 << 16), 0);
    }

    #[test]
    fn bar_sizing_64_and_32() {
        let mut c = sample();
        c.write(0x10, 0xffff_ffff, 0xf);
        c.write(0x14, 0xffff_ffff, 0xf);
        assert_eq!(c.read(0x10), 0xffff_c004);
        assert_eq!(c.read(0x14), 0xffff_ffff);
        c.write(0x18, 0xffff_ffff, 0xf);
        assert_eq!(c.read(0x18), 0xffff_f000);
        c.write(0x10, 0xfe00_0000, 0xf);
        c.write(0x14, 0x1, 0xf);
        assert_eq!(c.decode().bars[0].unwrap().1, 0x1_fe00_0000);
        // BAR1 is the upper half of BAR0: not a BAR of its own.
        assert!(c.decode().bars[1].is_none());
    }

    #[test]
    fn command_mask_status_w1c_and_flr() {
        let mut c = sample();
        c.write(0x04, 0xffff_ffff, 0x3);
        assert_eq!(c.command(), 0x0547);
        c.bytes[0x07] = 0xf9;
        c.write(0x04, 0x8000_0000, 0xc);
        assert_eq!(c.read(0x04) >> 24, 0x79);
        // Initiate FLR: reported, reads back 0.
        assert!(c.write(0x54 + 8, 0x8000, 0x3));
        assert_eq!(c.read(0x54 + 8) & 0x8000, 0);
        c.reset();
        assert_eq!(c.command(), 0);
    }

    #[test]
    fn decode_reads_mps_mrrs_and_msix() {
        let mut c = sample();
        let d = c.decode();
        assert_eq!((d.mps, d.mrrs, d.rcb), (128, 512, 64));
        c.write(0x54 + 8, (1 << 5) | (5 << 12) | (1 << 8), 0x3);
        c.write(0x48, 0xc000_0000, 0x8);
        let d = c.decode();
        assert_eq!((d.mps, d.mrrs), (256, 4096));
        assert!(d.msix_enabled && d.msix_masked);
    }
}
