//! Alternative Routing-ID Interpretation extended capability (PCIe Base 4.0 §7.8.7).

use super::{cap_boilerplate, Capability, CapabilityId};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{ari, ext_cap_id};

/// ARI: the next function number in the device (read-only) and the MFVC / ACS function-group
/// enables (read-write).
#[derive(Clone, Debug)]
pub struct AriCap {
    regs: RegisterBlock,
}

impl AriCap {
    /// `next_function`: the function number of the next function of this device (0 = last).
    pub fn new(next_function: u8) -> Self {
        let mut regs = RegisterBlock::new(ari::LEN);
        regs.init(ari::CAPABILITY, 2, (next_function as u64) << 8);
        Self::with_masks(regs)
    }

    /// From a real card's bytes (replay).
    pub fn from_image(image: &[u8]) -> Self {
        let mut regs = RegisterBlock::new(ari::LEN);
        regs.load(0, image);
        Self::with_masks(regs)
    }

    fn with_masks(mut regs: RegisterBlock) -> Self {
        regs.set_rw(ari::CONTROL, 2, ari::CTRL_WRITABLE as u64);
        Self { regs }
    }

    /// The Next Function Number field.
    pub fn next_function(&self) -> u8 {
        (self.regs.u16(ari::CAPABILITY) >> 8) as u8
    }
}

impl Capability for AriCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Extended {
            id: ext_cap_id::ARI,
            version: 1,
        }
    }
    fn name(&self) -> &'static str {
        "ARI"
    }
    cap_boilerplate!();
}
