//! The bridge from `crate::pci`'s configuration-space emulator to the endpoint: the [`Decode`]
//! state the proxy routes on (PCIe r5.0 §7.5.1 header and Command register, §7.5.3 Device /
//! Link Control, §7.7.2 MSI-X, §9.3.3 SR-IOV), and the configuration spaces of the appliance's
//! own device models, built from `crate::pci` capabilities.

use super::device::{BarKind, BarSpec, Decode, MsixLayout, SriovDecode};
use crate::pci::replay::ReplayBar;
use crate::pci::{
    Bar, ConfigSpace, ExpressConfig, FunctionIds, MsixCap, PciError, PciExpressCap, PmCap,
    SriovCap, SriovConfig,
};

/// Offsets inside the SR-IOV capability (PCIe r5.0 §9.3.3).
const SRIOV_FIRST_VF_OFFSET: usize = 0x14;
const SRIOV_VF_STRIDE: usize = 0x16;

fn bar_spec(b: &crate::pci::BarValue, size: u64) -> BarSpec {
    BarSpec {
        kind: if b.io {
            BarKind::Io
        } else if b.is_64 {
            BarKind::Mem64
        } else {
            BarKind::Mem32
        },
        size,
        prefetchable: b.prefetchable,
    }
}

fn sriov_decode(cfg: &ConfigSpace) -> Option<SriovDecode> {
    let cap = cfg.capability::<SriovCap>()?;
    let at = usize::from(cfg.capability_offset::<SriovCap>()?);
    let mut vf_bars = [None; 6];
    for b in cap.vf_bars() {
        if b.index < 6 && b.size > 0 {
            vf_bars[b.index] = Some((bar_spec(&b, b.size), b.address));
        }
    }
    Some(SriovDecode {
        vf_enable: cap.vf_enabled(),
        vf_mse: cap.vf_memory_enabled(),
        num_vfs: cap.num_vfs().min(cap.total_vfs()),
        first_offset: cfg.read_u16(at + SRIOV_FIRST_VF_OFFSET),
        stride: cfg.read_u16(at + SRIOV_VF_STRIDE),
        vf_bars,
    })
}

/// [`Device::config_read`](super::Device::config_read) for a model whose config space is a
/// `crate::pci` emulator: the DW at `reg` (low two bits ignored).
pub fn config_read(cfg: &ConfigSpace, reg: u16) -> u32 {
    cfg.read_u32(usize::from(reg & !3))
}

/// [`Device::config_write`](super::Device::config_write) for such a model: the DW at `reg`
/// under byte enables `be`; `true` when the write initiated a Function Level Reset.
pub fn config_write(cfg: &mut ConfigSpace, reg: u16, value: u32, be: u8) -> bool {
    cfg.write_dword(usize::from(reg & !3), value, be)
        .function_level_reset
}

/// The endpoint's decode state from a `crate::pci` configuration space. `sizes` overrides the
/// BAR sizes read from the write masks (a replayed BAR's size is what the operator gave).
pub fn pci_decode(cfg: &ConfigSpace, sizes: &[ReplayBar]) -> Decode {
    let mut bars = [None; 6];
    for b in cfg.bars() {
        if b.index >= 6 {
            continue;
        }
        let size = sizes
            .iter()
            .find(|s| s.index == b.index)
            .map_or(b.size, |s| s.size);
        if size == 0 {
            continue;
        }
        bars[b.index] = Some((bar_spec(&b, size), b.address));
    }
    let (mps, mrrs, ext_tags, ten_bit_tags, rcb) = match cfg.pcie() {
        Some(x) => {
            let link_ctl = cfg
                .capability_offset::<PciExpressCap>()
                .map_or(0, |o| cfg.read_u16(usize::from(o) + 0x10));
            (
                x.max_payload_size().clamp(128, 4096) as u16,
                x.max_read_request_size().clamp(128, 4096) as u16,
                x.extended_tag_enabled(),
                x.ten_bit_tag_requester_enabled(),
                if link_ctl & (1 << 3) != 0 { 128 } else { 64 },
            )
        }
        None => (128, 128, false, false, 64),
    };
    let (msix, msix_enabled, msix_masked) = match cfg.msix() {
        Some(m) => (
            Some(MsixLayout {
                vectors: m.vectors(),
                table_bar: m.table_bar(),
                table_offset: m.table_offset(),
                pba_bar: m.pba_bar(),
                pba_offset: m.pba_offset(),
            }),
            m.enabled(),
            m.function_masked(),
        ),
        None => (None, false, false),
    };
    Decode {
        io_enable: cfg.io_enabled(),
        mem_enable: cfg.memory_enabled(),
        bus_master: cfg.bus_master_enabled(),
        intx_disable: cfg.intx_disabled(),
        int_pin: cfg.read_u8(0x3d),
        bars,
        mps,
        mrrs,
        rcb,
        ext_tags,
        ten_bit_tags,
        msix,
        msix_enabled,
        msix_masked,
        sriov: sriov_decode(cfg),
    }
}

/// How one of the appliance's own device models looks on the bus.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// Identity (for a virtual function: all-ones vendor and device IDs).
    pub ids: FunctionIds,
    /// BARs by slot.
    pub bars: [Bar; 6],
    /// MSI-X vectors and where the table and PBA live.
    pub msix: Option<MsixLayout>,
    /// Max Payload Size Supported.
    pub mps_supported: u16,
    /// SR-IOV capability (physical functions).
    pub sriov: Option<SriovConfig>,
    /// A virtual function: no BAR registers, no power management capability.
    pub vf: bool,
}

/// Build a device model's configuration space: header, BARs, then PM, MSI-X, PCI Express and
/// SR-IOV capabilities. The layouts are fixed by the code, so a failure is a programming error
/// (a BAR size or capability the layout does not allow).
pub fn build_config(m: &ModelConfig) -> Result<ConfigSpace, PciError> {
    let mut cfg = ConfigSpace::endpoint(m.ids);
    if !m.vf {
        for (i, b) in m.bars.iter().enumerate() {
            if *b != Bar::Unused {
                cfg.set_bar(i, *b)?;
            }
        }
        cfg.add_capability(Box::new(PmCap::new()))?;
    }
    if let Some(x) = m.msix {
        cfg.add_capability(Box::new(MsixCap::new(
            x.vectors,
            x.table_bar,
            x.table_offset,
            x.pba_bar,
            x.pba_offset,
        )))?;
    }
    cfg.add_capability(Box::new(PciExpressCap::new(ExpressConfig {
        max_payload_supported: m.mps_supported,
        ..ExpressConfig::default()
    })))?;
    if let Some(s) = m.sriov {
        cfg.add_capability(Box::new(SriovCap::new(s)?))?;
    }
    Ok(cfg)
}
