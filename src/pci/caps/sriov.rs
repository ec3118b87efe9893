//! Single Root I/O Virtualization extended capability (PCIe Base 4.0 §9.3.3): VF count,
//! routing-ID layout, page size and the VF BARs (sized like ordinary BARs).

use super::{cap_boilerplate, CapEvent, Capability, CapabilityId};
use crate::pci::bar::{decode_all, Bar, BarValue};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{ext_cap_id, sriov};
use crate::pci::PciError;

/// The read-only SR-IOV parameters of a physical function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SriovConfig {
    /// InitialVFs.
    pub initial_vfs: u16,
    /// TotalVFs.
    pub total_vfs: u16,
    /// First VF Offset (routing-ID distance from the PF to VF 1).
    pub first_vf_offset: u16,
    /// VF Stride.
    pub vf_stride: u16,
    /// VF Device ID.
    pub vf_device_id: u16,
    /// Supported Page Sizes bitmap (bit n = 4 KiB << n).
    pub supported_page_sizes: u32,
    /// Per-VF BARs.
    pub vf_bars: [Bar; 6],
}

/// The SR-IOV capability.
#[derive(Clone, Debug)]
pub struct SriovCap {
    regs: RegisterBlock,
}

impl SriovCap {
    /// Builds the capability; fails on an invalid VF BAR.
    pub fn new(cfg: SriovConfig) -> Result<Self, PciError> {
        let mut r = RegisterBlock::new(sriov::LEN);
        r.init(sriov::INITIAL_VFS, 2, cfg.initial_vfs as u64);
        r.init(sriov::TOTAL_VFS, 2, cfg.total_vfs as u64);
        r.init(sriov::FIRST_VF_OFFSET, 2, cfg.first_vf_offset as u64);
        r.init(sriov::VF_STRIDE, 2, cfg.vf_stride as u64);
        r.init(sriov::VF_DEVICE_ID, 2, cfg.vf_device_id as u64);
        r.init(
            sriov::SUPPORTED_PAGE_SIZES,
            4,
            cfg.supported_page_sizes as u64,
        );
        r.init(sriov::SYSTEM_PAGE_SIZE, 4, 1);
        let mut i = 0;
        while i < 6 {
            let bar = cfg.vf_bars[i];
            bar.install(&mut r, sriov::VF_BAR0 + 4 * i, i, 6)?;
            i += if matches!(bar, Bar::Memory64 { .. }) {
                2
            } else {
                1
            };
        }
        Ok(Self::with_masks(r))
    }

    /// From a real card's bytes (replay). VF BARs stay read-only: their sizes are not in a
    /// dump.
    pub fn from_image(image: &[u8]) -> Self {
        let mut r = RegisterBlock::new(sriov::LEN);
        r.load(0, &image[..image.len().min(sriov::LEN)]);
        Self::with_masks(r)
    }

    fn with_masks(mut r: RegisterBlock) -> Self {
        r.set_rw(sriov::CONTROL, 2, sriov::CTRL_WRITABLE as u64);
        r.set_w1c(sriov::STATUS, 2, 1);
        r.set_rw(sriov::NUM_VFS, 2, 0xffff);
        let sps = r.u32(sriov::SUPPORTED_PAGE_SIZES);
        r.set_rw(sriov::SYSTEM_PAGE_SIZE, 4, sps as u64);
        Self { regs: r }
    }

    /// NumVFs as the driver set it.
    pub fn num_vfs(&self) -> u16 {
        self.regs.u16(sriov::NUM_VFS)
    }
    /// TotalVFs.
    pub fn total_vfs(&self) -> u16 {
        self.regs.u16(sriov::TOTAL_VFS)
    }
    /// VF Enable.
    pub fn vf_enabled(&self) -> bool {
        self.regs.u16(sriov::CONTROL) & sriov::CTRL_VF_ENABLE != 0
    }
    /// VF Memory Space Enable.
    pub fn vf_memory_enabled(&self) -> bool {
        self.regs.u16(sriov::CONTROL) & sriov::CTRL_VF_MSE != 0
    }
    /// VF Device ID.
    pub fn vf_device_id(&self) -> u16 {
        self.regs.u16(sriov::VF_DEVICE_ID)
    }
    /// Routing ID of VF `vf` (0-based) for a PF at routing ID `pf`, if that VF exists now
    /// (VF Enable set and `vf` < NumVFs, capped at TotalVFs).
    pub fn vf_routing_id(&self, pf: u16, vf: u16) -> Option<u16> {
        let n = self.num_vfs().min(self.total_vfs());
        if !self.vf_enabled() || vf >= n {
            return None;
        }
        let off = self.regs.u16(sriov::FIRST_VF_OFFSET) as u32
            + vf as u32 * self.regs.u16(sriov::VF_STRIDE) as u32;
        u16::try_from(pf as u32 + off).ok()
    }
    /// The VF BARs as programmed (VF `n`'s BAR is at address + n × size).
    pub fn vf_bars(&self) -> Vec<BarValue> {
        decode_all(&self.regs, sriov::VF_BAR0, 6).collect()
    }
}

impl Capability for SriovCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Extended {
            id: ext_cap_id::SRIOV,
            version: 1,
        }
    }
    fn name(&self) -> &'static str {
        "SR-IOV"
    }
    fn on_write(&mut self, _offset: usize, _data: &[u8]) -> CapEvent {
        CapEvent {
            sriov: true,
            ..CapEvent::default()
        }
    }
    cap_boilerplate!();
}
