//! Single Root I/O Virtualization extended capability (PCIe Base 4.0 §9.3.3): VF count,
//! routing-ID layout, page size and the VF BARs (sized like ordinary BARs).
//!
//! NumVFs "may only be written when VF Enable is Clear" (§9.3.3.7; the result of a write
//! while it is Set is undefined): a capability built by [`SriovCap::new`] ignores such a write,
//! so the set of VFs can only change by clearing VF Enable first. One replayed from a dump
//! ([`SriovCap::from_image`]) keeps the permissive behaviour of the hardware it mirrors.

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
    /// NumVFs is read-only while VF Enable is set.
    lock_num_vfs: bool,
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
        Ok(Self::with_masks(r, true))
    }

    /// From a real card's bytes (replay). VF BARs stay read-only: their sizes are not in a
    /// dump.
    pub fn from_image(image: &[u8]) -> Self {
        let mut r = RegisterBlock::new(sriov::LEN);
        r.load(0, &image[..image.len().min(sriov::LEN)]);
        Self::with_masks(r, false)
    }

    fn with_masks(mut r: RegisterBlock, lock_num_vfs: bool) -> Self {
        r.set_rw(sriov::CONTROL, 2, sriov::CTRL_WRITABLE as u64);
        r.set_w1c(sriov::STATUS, 2, 1);
        r.set_rw(sriov::NUM_VFS, 2, 0xffff);
        let sps = r.u32(sriov::SUPPORTED_PAGE_SIZES);
        r.set_rw(sriov::SYSTEM_PAGE_SIZE, 4, sps as u64);
        Self {
            regs: r,
            lock_num_vfs,
        }
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
    fn write(&mut self, offset: usize, data: &[u8]) -> CapEvent {
        // VF Enable as it was before this write decides: software clears it first, then
        // changes NumVFs (§9.3.3.3.1, §9.3.3.7).
        let locked = self.lock_num_vfs && self.vf_enabled();
        let num_vfs = self.regs.u16(sriov::NUM_VFS);
        self.regs.write(offset, data);
        if locked {
            self.regs.set(sriov::NUM_VFS, 2, u64::from(num_vfs));
        }
        self.on_write(offset, data)
    }
    fn on_write(&mut self, _offset: usize, _data: &[u8]) -> CapEvent {
        CapEvent {
            sriov: true,
            ..CapEvent::default()
        }
    }
    cap_boilerplate!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap() -> SriovCap {
        let mut vf_bars = [Bar::Unused; 6];
        vf_bars[0] = Bar::Memory64 {
            size: 0x4000,
            prefetchable: false,
        };
        SriovCap::new(SriovConfig {
            initial_vfs: 4,
            total_vfs: 4,
            first_vf_offset: 1,
            vf_stride: 1,
            vf_device_id: 0x0e04,
            supported_page_sizes: 0x553,
            vf_bars,
        })
        .unwrap()
    }

    #[test]
    fn num_vfs_is_read_only_while_vf_enable_is_set() {
        let mut c = cap();
        c.write(sriov::NUM_VFS, &3u16.to_le_bytes());
        assert_eq!(c.num_vfs(), 3, "writable while VF Enable is clear");
        c.write(sriov::CONTROL, &sriov::CTRL_VF_ENABLE.to_le_bytes());
        assert!(c.vf_enabled());
        c.write(sriov::NUM_VFS, &1u16.to_le_bytes());
        assert_eq!(c.num_vfs(), 3, "ignored while VF Enable is set");
        assert_eq!(c.vf_routing_id(0x0100, 2), Some(0x0103));
        // A write spanning Control and NumVFs while enabled leaves NumVFs alone too.
        let mut img = [0u8; 12];
        img[0..2].copy_from_slice(&0u16.to_le_bytes());
        img[8..10].copy_from_slice(&2u16.to_le_bytes());
        c.write(sriov::CONTROL, &img);
        assert!(!c.vf_enabled());
        assert_eq!(c.num_vfs(), 3);
        c.write(sriov::NUM_VFS, &2u16.to_le_bytes());
        assert_eq!(c.num_vfs(), 2, "writable again once VF Enable is clear");
    }

    #[test]
    fn a_replayed_capability_stays_permissive() {
        let mut img = cap().regs.clone();
        img.set(sriov::CONTROL, 2, u64::from(sriov::CTRL_VF_ENABLE));
        let mut bytes = vec![0u8; sriov::LEN];
        img.read(0, &mut bytes);
        let mut c = SriovCap::from_image(&bytes);
        c.write(sriov::NUM_VFS, &7u16.to_le_bytes());
        assert_eq!(c.num_vfs(), 7);
    }
}
