//! Power Management capability (PCI Bus Power Management Interface Specification 1.2 §3.2).

use super::{cap_boilerplate, Capability, CapabilityId};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{cap_id, pm};

/// Power Management: PMC (read-only) and PMCSR (power state and PME enable read-write, PME
/// status write-one-to-clear).
#[derive(Clone, Debug)]
pub struct PmCap {
    regs: RegisterBlock,
}

impl PmCap {
    /// Version 3 (PM 1.2), D0 and D3hot only, No_Soft_Reset set (state survives D3hot → D0).
    pub fn new() -> Self {
        let mut regs = RegisterBlock::new(pm::LEN);
        regs.init(pm::PMC, 2, 0x0003);
        regs.init(pm::PMCSR, 2, pm::PMCSR_NO_SOFT_RESET as u64);
        Self::with_masks(regs)
    }

    /// From a real card's bytes (replay): same masks as [`PmCap::new`].
    pub fn from_image(image: &[u8]) -> Self {
        let mut regs = RegisterBlock::new(pm::LEN);
        regs.load(0, image);
        Self::with_masks(regs)
    }

    fn with_masks(mut regs: RegisterBlock) -> Self {
        regs.set_rw(
            pm::PMCSR,
            2,
            (pm::PMCSR_POWER_STATE | pm::PMCSR_PME_ENABLE | pm::PMCSR_DATA_SELECT) as u64,
        );
        regs.set_w1c(pm::PMCSR, 2, pm::PMCSR_PME_STATUS as u64);
        Self { regs }
    }

    /// Current power state: 0 = D0 … 3 = D3hot.
    pub fn power_state(&self) -> u8 {
        (self.regs.u16(pm::PMCSR) & pm::PMCSR_POWER_STATE) as u8
    }
}

impl Default for PmCap {
    fn default() -> Self {
        Self::new()
    }
}

impl Capability for PmCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Standard(cap_id::POWER_MANAGEMENT)
    }
    fn name(&self) -> &'static str {
        "Power Management"
    }
    cap_boilerplate!();
}
