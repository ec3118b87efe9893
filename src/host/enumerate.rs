//! Enumeration of the functions below the virtual root port, through configuration
//! requests (PCI Local Bus 3.0 §6.2.5.1 BAR sizing, §6.7 capability list; PCIe Base 4.0
//! §7.5.3.4 Device Control MPS/MRRS, §7.5.3.16 Device Control 2 10-bit tags).
//!
//! Walks every device and function of the secondary bus, sizes every
//! BAR, assigns it inside the port's windows, reads the capability list, sets Max Payload Size
//! and Max Read Request Size, enables extended and (when both ends support them) 10-bit tags,
//! then enables memory decoding and bus mastering. Generic over [`ConfigAccess`], so it is
//! tested against configuration spaces directly and used over TLPs by the host.

use crate::pci::spec::{bar as b, cap_id, command, header as h};
use crate::tlp::Bdf;

/// Configuration reads and writes of whole DWs (the host sends CfgRd0/CfgWr0).
pub trait ConfigAccess {
    /// Read the DW at `reg` (DW-aligned) of `bdf`; all-ones when nothing answers.
    fn cfg_read(&mut self, bdf: Bdf, reg: u16) -> u32;
    /// Write the DW at `reg` of `bdf`.
    fn cfg_write(&mut self, bdf: Bdf, reg: u16, value: u32);
}

/// One assigned BAR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BarInfo {
    /// Assigned bus address (0 when absent).
    pub base: u64,
    /// Size in bytes (0 when absent).
    pub size: u64,
    /// I/O space.
    pub io: bool,
    /// 64-bit (occupies the next slot too).
    pub is64: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

/// MSI-X table location (PCI Local Bus 3.0 §6.8.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixInfo {
    /// Capability offset.
    pub cap: u16,
    /// Table size (vectors).
    pub vectors: u16,
    /// BAR holding the table.
    pub table_bar: u8,
    /// Offset of the table in that BAR.
    pub table_offset: u32,
}

/// MSI capability layout (PCI Local Bus 3.0 §6.8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiInfo {
    /// Capability offset.
    pub cap: u16,
    /// Vectors the function can request (1, 2, 4 … 32).
    pub vectors: u16,
    /// 64-bit address capable.
    pub is64: bool,
}

/// What enumeration learned about one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionInfo {
    /// Its address.
    pub bdf: Bdf,
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base << 16 | sub << 8 | prog-if).
    pub class: u32,
    /// BARs 0-5 (the upper half of a 64-bit BAR is absent).
    pub bars: [BarInfo; 6],
    /// Capabilities (id, offset), in list order.
    pub caps: Vec<(u8, u16)>,
    /// PCI Express capability offset.
    pub pcie: Option<u16>,
    /// MSI capability.
    pub msi: Option<MsiInfo>,
    /// MSI-X capability.
    pub msix: Option<MsixInfo>,
    /// Interrupt pin (0 none, 1 INTA …).
    pub interrupt_pin: u8,
    /// Function Level Reset supported.
    pub flr: bool,
    /// Negotiated Max Payload Size in bytes.
    pub mps: u32,
    /// Max Read Request Size in bytes.
    pub mrrs: u32,
    /// The function completes 10-bit tags (the host may use them toward it).
    pub ten_bit_completer: bool,
    /// 10-bit tags enabled for the function's own requests.
    pub ten_bit_requester: bool,
}

/// Address windows of the root port that BARs are assigned from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Windows {
    /// 32-bit non-prefetchable memory: base, size (1 MiB aligned).
    pub mem: (u64, u64),
    /// 64-bit prefetchable memory: base, size (1 MiB aligned).
    pub pref: (u64, u64),
    /// I/O: base, size (4 KiB aligned).
    pub io: (u64, u64),
}

impl Default for Windows {
    fn default() -> Self {
        Self {
            mem: (0xe000_0000, 0x1000_0000),
            pref: (0x40_0000_0000, 0x10_0000_0000),
            io: (0x1000, 0xf000),
        }
    }
}

/// Enumeration settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnumConfig {
    /// Windows to assign from.
    pub windows: Windows,
    /// Largest payload the host side supports.
    pub max_payload: u32,
    /// Max Read Request Size to program.
    pub max_read_request: u32,
    /// The host completes 10-bit tags (the card may use them toward us).
    pub host_ten_bit_completer: bool,
}

impl Default for EnumConfig {
    fn default() -> Self {
        Self {
            windows: Windows::default(),
            max_payload: 256,
            max_read_request: 512,
            host_ten_bit_completer: true,
        }
    }
}

/// Allocation cursor inside one window.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    next: u64,
    end: u64,
}

impl Cursor {
    fn take(&mut self, size: u64) -> Option<u64> {
        let base = self.next.checked_add(size - 1)? & !(size - 1);
        let end = base.checked_add(size)?;
        if end > self.end {
            return None;
        }
        self.next = end;
        Some(base)
    }
}

fn size_code(bytes: u32) -> u32 {
    (bytes.clamp(128, 4096) / 128).trailing_zeros()
}

/// Enumerate and configure every function on `bus`. Functions answering all-ones are absent.
pub fn enumerate(acc: &mut dyn ConfigAccess, bus: u8, cfg: &EnumConfig) -> Vec<FunctionInfo> {
    let w = cfg.windows;
    let mut mem = Cursor {
        next: w.mem.0,
        end: w.mem.0 + w.mem.1,
    };
    let mut pref = Cursor {
        next: w.pref.0,
        end: w.pref.0 + w.pref.1,
    };
    let mut io = Cursor {
        next: w.io.0,
        end: w.io.0 + w.io.1,
    };
    let mut found = Vec::new();
    // Every device number, not only 0: the appliance may present several cards, each at its
    // own device number, and the root port acts as one virtual bus for all of them.
    for dev in 0..32u8 {
        let mut cursors = [&mut mem, &mut pref, &mut io];
        scan_device(acc, bus, dev, cfg, &mut cursors, &mut found);
    }
    found
}

/// Enumerate and configure the functions of one device number `dev` on `bus` (a hot-plugged
/// card, PCIe Base 4.0 §6.7), assigning its BARs above everything `existing` functions hold so
/// no other function's BARs move.
pub fn enumerate_device(
    acc: &mut dyn ConfigAccess,
    bus: u8,
    dev: u8,
    cfg: &EnumConfig,
    existing: &[FunctionInfo],
) -> Vec<FunctionInfo> {
    let w = cfg.windows;
    let above = |lo: u64, size: u64, pick: &dyn Fn(&BarInfo) -> bool| {
        existing
            .iter()
            .flat_map(|f| f.bars.iter())
            .filter(|b| b.size > 0 && pick(b) && b.base >= lo && b.base < lo + size)
            .map(|b| b.base + b.size)
            .max()
            .unwrap_or(lo)
    };
    let mut mem = Cursor {
        next: above(w.mem.0, w.mem.1, &|b| !b.io && !b.prefetchable),
        end: w.mem.0 + w.mem.1,
    };
    let mut pref = Cursor {
        next: above(w.pref.0, w.pref.1, &|b| !b.io && b.prefetchable),
        end: w.pref.0 + w.pref.1,
    };
    let mut io = Cursor {
        next: above(w.io.0, w.io.1, &|b| b.io),
        end: w.io.0 + w.io.1,
    };
    let mut found = Vec::new();
    scan_device(
        acc,
        bus,
        dev,
        cfg,
        &mut [&mut mem, &mut pref, &mut io],
        &mut found,
    );
    found
}

/// Configure the functions of device `dev` on `bus` into `found`, their BARs from `cursors`
/// (memory, prefetchable, I/O). A function whose Vendor ID reads all-ones (or zero) is absent;
/// function 0 absent means no device, and only a multi-function device (Header Type bit 7,
/// PCIe r5.0 §7.5.1.1.9) has functions 1..=7.
fn scan_device(
    acc: &mut dyn ConfigAccess,
    bus: u8,
    dev: u8,
    cfg: &EnumConfig,
    cursors: &mut [&mut Cursor; 3],
    found: &mut Vec<FunctionInfo>,
) {
    let [mem, pref, io] = cursors;
    for func in 0..8u8 {
        let bdf = Bdf::new(bus, dev, func);
        let id = acc.cfg_read(bdf, 0);
        if id == 0xffff_ffff || id & 0xffff == 0xffff || id == 0 {
            if func == 0 {
                break;
            }
            continue;
        }
        let hdr = acc.cfg_read(bdf, 0x0c);
        let header_type = (hdr >> 16) as u8;
        found.push(configure(acc, bdf, id, cfg, mem, pref, io));
        if func == 0 && header_type & h::HEADER_TYPE_MULTIFUNCTION == 0 {
            break;
        }
    }
}

fn configure(
    acc: &mut dyn ConfigAccess,
    bdf: Bdf,
    id: u32,
    cfg: &EnumConfig,
    mem: &mut Cursor,
    pref: &mut Cursor,
    io: &mut Cursor,
) -> FunctionInfo {
    let class = acc.cfg_read(bdf, 0x08) >> 8;
    // Decoding off while BARs move.
    let cmd = acc.cfg_read(bdf, h::COMMAND as u16);
    acc.cfg_write(bdf, h::COMMAND as u16, cmd & 0xffff_0000);
    let mut bars = [BarInfo::default(); 6];
    let mut i = 0;
    while i < 6 {
        let reg = (h::BAR0 + 4 * i) as u16;
        let orig = acc.cfg_read(bdf, reg);
        acc.cfg_write(bdf, reg, 0xffff_ffff);
        let probe = acc.cfg_read(bdf, reg);
        let isio = orig & b::IO_SPACE != 0;
        let is64 = !isio && orig & b::MEM_TYPE_MASK == b::MEM_TYPE_64 && i < 5;
        let mut mask = if isio {
            u64::from(probe & b::IO_ADDRESS_MASK) | 0xffff_ffff_0000_0000
        } else {
            u64::from(probe & b::MEM_ADDRESS_MASK)
        };
        if is64 {
            let hreg = reg + 4;
            acc.cfg_write(bdf, hreg, 0xffff_ffff);
            mask |= u64::from(acc.cfg_read(bdf, hreg)) << 32;
        } else if !isio {
            mask |= 0xffff_ffff_0000_0000;
        }
        let size = if probe == 0 || probe == 0xffff_ffff && orig == 0xffff_ffff {
            0
        } else {
            (!mask).wrapping_add(1)
        };
        let prefetchable = !isio && orig & b::MEM_PREFETCHABLE != 0;
        let base = if size == 0 {
            None
        } else if isio {
            io.take(size.max(4))
        } else if is64 && prefetchable {
            pref.take(size.max(16))
        } else {
            mem.take(size.max(16))
        };
        match base {
            Some(base) => {
                acc.cfg_write(bdf, reg, base as u32 | (orig & 0xf));
                if is64 {
                    acc.cfg_write(bdf, reg + 4, (base >> 32) as u32);
                }
                bars[i] = BarInfo {
                    base,
                    size,
                    io: isio,
                    is64,
                    prefetchable,
                };
            }
            None => {
                if size != 0 {
                    tracing::warn!(%bdf, bar = i, size, "BAR does not fit the root port windows");
                }
                acc.cfg_write(bdf, reg, orig);
                if is64 {
                    acc.cfg_write(bdf, reg + 4, 0);
                }
            }
        }
        i += if is64 { 2 } else { 1 };
    }
    // Capability list (bounded walk: at most 48 entries, pointers inside 0x40..0x100).
    let mut caps = Vec::new();
    let status = acc.cfg_read(bdf, h::COMMAND as u16) >> 16;
    if status & 0x10 != 0 {
        let mut ptr = (acc.cfg_read(bdf, 0x34) & 0xfc) as u16;
        while (0x40..0x100).contains(&ptr) && caps.len() < 48 {
            let dw = acc.cfg_read(bdf, ptr);
            caps.push(((dw & 0xff) as u8, ptr));
            ptr = ((dw >> 8) & 0xfc) as u16;
        }
    }
    let find = |id: u8| caps.iter().find(|c| c.0 == id).map(|c| c.1);
    let pcie = find(cap_id::PCI_EXPRESS);
    let msi = find(cap_id::MSI).map(|cap| {
        let ctl = acc.cfg_read(bdf, cap) >> 16;
        MsiInfo {
            cap,
            vectors: 1 << ((ctl >> 1) & 7).min(5),
            is64: ctl & 0x80 != 0,
        }
    });
    let msix = find(cap_id::MSIX).map(|cap| {
        let ctl = acc.cfg_read(bdf, cap) >> 16;
        let table = acc.cfg_read(bdf, cap + 4);
        MsixInfo {
            cap,
            vectors: ((ctl & 0x7ff) + 1) as u16,
            table_bar: (table & 7) as u8,
            table_offset: table & !7,
        }
    });
    let mut flr = false;
    let (mut mps, mut mrrs) = (128, 128);
    let (mut ten_c, mut ten_r) = (false, false);
    if let Some(p) = pcie {
        let devcap = acc.cfg_read(bdf, p + 4);
        flr = devcap & (1 << 28) != 0;
        let dev_mps = 128u32 << (devcap & 7);
        mps = dev_mps.min(cfg.max_payload).clamp(128, 4096);
        mrrs = cfg.max_read_request.clamp(128, 4096);
        let ext_tag = devcap & (1 << 5) != 0;
        let devcap2 = acc.cfg_read(bdf, p + 0x24);
        ten_c = devcap2 & (1 << 16) != 0;
        let dev_ten_r = devcap2 & (1 << 17) != 0;
        ten_r = dev_ten_r && cfg.host_ten_bit_completer;
        let ctl = acc.cfg_read(bdf, p + 8);
        let mut devctl = ctl & 0xffff;
        devctl &= !((7 << 5) | (7 << 12) | (1 << 8) | (1 << 15));
        devctl |= size_code(mps) << 5 | size_code(mrrs) << 12;
        if ext_tag {
            devctl |= 1 << 8;
        }
        acc.cfg_write(bdf, p + 8, devctl);
        let ctl2 = acc.cfg_read(bdf, p + 0x28) & 0xffff;
        let ctl2 = if ten_r {
            ctl2 | (1 << 12)
        } else {
            ctl2 & !(1 << 12)
        };
        acc.cfg_write(bdf, p + 0x28, ctl2);
    }
    // MSI-X vectors start masked (function mask off, every entry masked by reset default).
    let pin = ((acc.cfg_read(bdf, 0x3c) >> 8) & 0xff) as u8;
    let any_io = bars.iter().any(|b| b.io && b.size > 0);
    let any_mem = bars.iter().any(|b| !b.io && b.size > 0);
    let mut en = u32::from(command::BUS_MASTER);
    if any_mem {
        en |= u32::from(command::MEMORY_SPACE);
    }
    if any_io {
        en |= u32::from(command::IO_SPACE);
    }
    acc.cfg_write(bdf, h::COMMAND as u16, (cmd & 0xffff & !0x7) | en);
    FunctionInfo {
        bdf,
        vendor: (id & 0xffff) as u16,
        device: (id >> 16) as u16,
        class,
        bars,
        caps,
        pcie,
        msi,
        msix,
        interrupt_pin: pin,
        flr,
        mps,
        mrrs,
        ten_bit_completer: ten_c,
        ten_bit_requester: ten_r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::{Bar, ConfigSpace, ExpressConfig, FunctionIds, MsixCap, PciExpressCap};

    struct Fake(Vec<(Bdf, ConfigSpace)>);

    impl ConfigAccess for Fake {
        fn cfg_read(&mut self, bdf: Bdf, reg: u16) -> u32 {
            match self.0.iter().find(|f| f.0 == bdf) {
                Some(f) => f.1.read_u32(reg as usize),
                None => 0xffff_ffff,
            }
        }
        fn cfg_write(&mut self, bdf: Bdf, reg: u16, value: u32) {
            if let Some(f) = self.0.iter_mut().find(|f| f.0 == bdf) {
                f.1.write_u32(reg as usize, value);
            }
        }
    }

    pub(crate) fn nvme_like() -> ConfigSpace {
        let mut c = ConfigSpace::endpoint(FunctionIds {
            vendor_id: 0x1b36,
            device_id: 0x0010,
            class_code: 0x010802,
            interrupt_pin: 1,
            ..Default::default()
        });
        c.set_bar(
            0,
            Bar::Memory64 {
                size: 0x4000,
                prefetchable: false,
            },
        )
        .unwrap();
        c.set_bar(
            2,
            Bar::Memory64 {
                size: 0x10_0000,
                prefetchable: true,
            },
        )
        .unwrap();
        c.add_capability(Box::new(PciExpressCap::new(ExpressConfig::default())))
            .unwrap();
        c.add_capability(Box::new(MsixCap::new(8, 0, 0x2000, 0, 0x3000)))
            .unwrap();
        c
    }

    #[test]
    fn enumerates_sizes_and_assigns_bars_inside_the_windows() {
        let mut fake = Fake(vec![(Bdf::new(1, 0, 0), nvme_like())]);
        let cfg = EnumConfig::default();
        let found = enumerate(&mut fake, 1, &cfg);
        assert_eq!(found.len(), 1);
        let f = &found[0];
        assert_eq!((f.vendor, f.device, f.class), (0x1b36, 0x0010, 0x010802));
        // 64-bit non-prefetchable BAR0 lands in the 32-bit window, prefetchable in the high one.
        assert_eq!(f.bars[0].size, 0x4000);
        assert!(f.bars[0].base >= cfg.windows.mem.0);
        assert!(f.bars[0].base + 0x4000 <= cfg.windows.mem.0 + cfg.windows.mem.1);
        assert_eq!(f.bars[0].base % 0x4000, 0);
        assert_eq!(f.bars[2].size, 0x10_0000);
        assert!(f.bars[2].base >= cfg.windows.pref.0);
        assert_eq!(f.bars[1].size, 0, "upper half of BAR0");
        // The function now decodes at those addresses.
        let cs = &fake.0[0].1;
        assert_eq!(
            u64::from(cs.read_u32(0x10) & !0xf) | u64::from(cs.read_u32(0x14)) << 32,
            f.bars[0].base
        );
        assert!(cs.memory_enabled() && cs.bus_master_enabled());
        // Capabilities, MPS/MRRS, tags.
        assert!(f.pcie.is_some());
        let m = f.msix.unwrap();
        assert_eq!((m.vectors, m.table_bar, m.table_offset), (8, 0, 0x2000));
        let pcie = cs.pcie().unwrap();
        assert_eq!(pcie.max_payload_size(), 256);
        assert_eq!(pcie.max_read_request_size(), 512);
        assert!(pcie.extended_tag_enabled());
        assert!(f.ten_bit_requester && pcie.ten_bit_tag_requester_enabled());
        assert!(f.ten_bit_completer);
    }

    #[test]
    fn empty_bus_and_bars_that_do_not_fit() {
        let mut fake = Fake(vec![]);
        assert!(enumerate(&mut fake, 1, &EnumConfig::default()).is_empty());
        let mut fake = Fake(vec![(Bdf::new(1, 0, 0), nvme_like())]);
        let cfg = EnumConfig {
            windows: Windows {
                mem: (0xe000_0000, 0x1000),
                ..Windows::default()
            },
            ..Default::default()
        };
        let f = &enumerate(&mut fake, 1, &cfg)[0];
        assert_eq!(f.bars[0].base, 0, "16 KiB BAR does not fit a 4 KiB window");
        assert_eq!(f.bars[0].size, 0);
    }
}
