//! The Replay device's configuration space: a real card's `lspci -xxxx` dump presented
//! exactly — header, capability chain, vendor-specific bytes — with BARs sizeable at the
//! sizes the operator gives and the control fields a driver writes opened up.
//!
//! What is writable (everything else reads back the dump, read-only):
//! * header: Command, Status (RW1C), Cache Line Size, Interrupt Line, the BARs (address bits
//!   above the size), the expansion ROM when a `rom=` size is given; for type 1 headers the
//!   bus numbers, windows, Secondary Status (RW1C) and Bridge Control;
//! * PM: PMCSR; MSI: enable, multiple message enable, address, data, mask bits; MSI-X: enable
//!   and function mask, plus a vector table and PBA; PCI Express: Device / Link / Slot / Root
//!   Control and Device / Link Control 2, the status registers' RW1C bits, FLR; AER: status
//!   (RW1C), masks, severity, ECRC enables; SR-IOV: control, NumVFs, system page size (VF BARs
//!   stay read-only); ARI: control.
//!
//! A BAR without a given size gets the largest power of two its dumped address is aligned to,
//! capped at 1 MiB (memory) or 256 bytes (I/O). That is a guess: for the 82576 NIC's dump it
//! gives 128K, 256K, 32, 16K where the real card has 128K, 128K, 32, 16K. Give sizes for
//! anything that matters.

use super::bar::BarSpace;
use super::caps::{AerCap, AriCap, Capability, MsiCap, MsixCap, PciExpressCap, PmCap, SriovCap};
use super::config::{ConfigSpace, HeaderType};
use super::spec::{self, bar as b, cap_id, ext_cap_id, header as h};
use super::walk::walk_capabilities;
use super::PciError;

/// Sizes the operator gives for a replayed card (`bar0=16K,bar2=1M,rom=128K`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplaySizes {
    /// Per BAR slot.
    pub bars: [Option<u64>; 6],
    /// Expansion ROM.
    pub rom: Option<u32>,
}

/// Why a replay configuration could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// A `barN=SIZE` option that does not parse.
    #[error("bad size option {text:?}: expected barN=SIZE or rom=SIZE (N 0-5; SIZE like 16K, 1M, 4096 or 0x4000)")]
    BadOption {
        /// The option.
        text: String,
    },
    /// The dump is too short to hold a header.
    #[error("the dump has {len} bytes; a configuration header needs at least 64")]
    TooShort {
        /// Bytes in the dump.
        len: usize,
    },
    /// A size for the upper half of a 64-bit BAR.
    #[error("BAR {index} is the upper half of 64-bit BAR {}; give the size for BAR {}", index - 1, index - 1)]
    UpperHalf {
        /// Slot given.
        index: usize,
    },
    /// A bad BAR or ROM size.
    #[error(transparent)]
    Pci(#[from] PciError),
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(hex, 16).ok();
    }
    let (num, shift) = match s.char_indices().last()? {
        (i, 'k' | 'K') => (&s[..i], 10),
        (i, 'm' | 'M') => (&s[..i], 20),
        (i, 'g' | 'G') => (&s[..i], 30),
        (i, 't' | 'T') => (&s[..i], 40),
        _ => (s, 0),
    };
    let n: u64 = num.parse().ok()?;
    n.checked_mul(1u64 << shift)
}

impl ReplaySizes {
    /// Parses comma-separated `barN=SIZE` / `rom=SIZE` options.
    pub fn parse(options: &str) -> Result<Self, ReplayError> {
        let mut out = ReplaySizes::default();
        for opt in options.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let bad = || ReplayError::BadOption {
                text: opt.chars().take(80).collect(),
            };
            let (k, v) = opt.split_once('=').ok_or_else(bad)?;
            let size = parse_size(v).ok_or_else(bad)?;
            if k == "rom" {
                out.rom = Some(u32::try_from(size).map_err(|_| bad())?);
            } else {
                let i: usize = k
                    .strip_prefix("bar")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(bad)?;
                *out.bars.get_mut(i).ok_or_else(bad)? = Some(size);
            }
        }
        Ok(out)
    }
}

/// One BAR of a replayed card.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayBar {
    /// Slot.
    pub index: usize,
    /// Size used for sizing.
    pub size: u64,
    /// True when the size was inferred, not given.
    pub inferred: bool,
    /// I/O space.
    pub io: bool,
    /// 64-bit memory.
    pub is_64: bool,
}

/// A replayed card's configuration space and the BAR sizes it ended up with.
#[derive(Debug)]
pub struct Replay {
    /// The configuration space.
    pub config: ConfigSpace,
    /// Implemented BARs.
    pub bars: Vec<ReplayBar>,
}

/// Builds the replay configuration space of the function whose raw configuration bytes
/// (64, 256 or 4096 of them) are `dump`.
pub fn replay(dump: &[u8], sizes: &ReplaySizes) -> Result<Replay, ReplayError> {
    if dump.len() < 64 {
        return Err(ReplayError::TooShort { len: dump.len() });
    }
    let mut cfg = ConfigSpace::from_image(dump);
    cfg.common_masks();
    let ty = cfg.header_type();
    if ty == HeaderType::Bridge {
        cfg.bridge_masks();
    }
    let bars = open_bars(&mut cfg, dump, ty, sizes)?;
    if let Some(rom) = sizes.rom {
        if !rom.is_power_of_two() || rom < 2048 {
            return Err(PciError::BadRomSize { size: rom }.into());
        }
        let o = if ty == HeaderType::Bridge {
            h::BRIDGE_ROM_ADDRESS
        } else {
            h::ROM_ADDRESS
        };
        cfg.regs_mut().set_rw(
            o,
            4,
            ((!(rom - 1) & b::ROM_ADDRESS_MASK) | b::ROM_ENABLE) as u64,
        );
    }
    attach_caps(&mut cfg, dump);
    Ok(Replay { config: cfg, bars })
}

fn open_bars(
    cfg: &mut ConfigSpace,
    dump: &[u8],
    ty: HeaderType,
    sizes: &ReplaySizes,
) -> Result<Vec<ReplayBar>, ReplayError> {
    let slots = ty.bar_slots();
    let val = |i: usize| {
        let o = h::BAR0 + 4 * i;
        u32::from_le_bytes([dump[o], dump[o + 1], dump[o + 2], dump[o + 3]])
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < slots {
        let lo = val(i);
        let io = lo & b::IO_SPACE != 0;
        let is_64 = !io && lo & b::MEM_TYPE_MASK == b::MEM_TYPE_64 && i + 1 < slots;
        if is_64 && sizes.bars.get(i + 1).copied().flatten().is_some() {
            return Err(ReplayError::UpperHalf { index: i + 1 });
        }
        let given = sizes.bars[i];
        if lo == 0 && given.is_none() {
            i += 1;
            continue;
        }
        let addr = if io {
            (lo & b::IO_ADDRESS_MASK) as u64
        } else if is_64 {
            (val(i + 1) as u64) << 32 | (lo & b::MEM_ADDRESS_MASK) as u64
        } else {
            (lo & b::MEM_ADDRESS_MASK) as u64
        };
        let space = if io {
            BarSpace::Io
        } else if is_64 {
            BarSpace::Mem64
        } else {
            BarSpace::Mem32
        };
        // The guess for a size not given: capped at 256 bytes (I/O) or 1 MiB (memory).
        let (min, _) = space.size_limits();
        let cap = if io { 256 } else { 1 << 20 };
        let size = match given {
            Some(s) => s,
            None if addr == 0 => cap,
            None => (1u64 << addr.trailing_zeros()).clamp(min, cap),
        };
        space.check_size(i, size)?;
        space.open_address_bits(cfg.regs_mut(), h::BAR0 + 4 * i, size);
        out.push(ReplayBar {
            index: i,
            size,
            inferred: given.is_none(),
            io,
            is_64,
        });
        i += if is_64 { 2 } else { 1 };
    }
    Ok(out)
}

fn attach_caps(cfg: &mut ConfigSpace, dump: &[u8]) {
    let found = walk_capabilities(dump);
    let mut root_port = false;
    for fc in &found {
        let o = fc.offset as usize;
        let ext = fc.id.is_extended();
        let area_end = if ext {
            dump.len().min(spec::CONFIG_SPACE_SIZE)
        } else {
            spec::LEGACY_CONFIG_SIZE.min(dump.len())
        };
        // A capability may not run into the next one of the same list.
        let room = found
            .iter()
            .filter(|f| f.id.is_extended() == ext && f.offset as usize > o)
            .map(|f| f.offset as usize)
            .min()
            .unwrap_or(area_end)
            .min(area_end)
            .saturating_sub(o);
        if room == 0 {
            continue; // the capability lies outside the dumped bytes
        }
        let image = &dump[o..o + room];
        let cap: Option<Box<dyn Capability>> = match fc.id {
            super::CapabilityId::Standard(cap_id::POWER_MANAGEMENT) => {
                Some(Box::new(PmCap::from_image(image)))
            }
            super::CapabilityId::Standard(cap_id::MSI) => Some(Box::new(MsiCap::from_image(image))),
            super::CapabilityId::Standard(cap_id::MSIX) => {
                Some(Box::new(MsixCap::from_image(image)))
            }
            super::CapabilityId::Standard(cap_id::PCI_EXPRESS) => {
                let c = PciExpressCap::from_image(image);
                root_port = c.port_type() == super::PortType::RootPort;
                Some(Box::new(c))
            }
            super::CapabilityId::Extended {
                id: ext_cap_id::AER,
                ..
            } => {
                let len = if root_port {
                    spec::aer::LEN_ROOT_PORT
                } else {
                    spec::aer::LEN_ENDPOINT
                };
                Some(Box::new(AerCap::from_image(&image[..image.len().min(len)])))
            }
            super::CapabilityId::Extended {
                id: ext_cap_id::SRIOV,
                ..
            } => Some(Box::new(SriovCap::from_image(image))),
            super::CapabilityId::Extended {
                id: ext_cap_id::ARI,
                ..
            } => Some(Box::new(AriCap::from_image(image))),
            _ => None,
        };
        // Anything unknown, or a structure that would not fit, stays read-only in the image.
        if let Some(cap) = cap.filter(|c| c.len() <= room) {
            let _ = cfg.attach_capability(fc.offset, cap);
        }
    }
}
