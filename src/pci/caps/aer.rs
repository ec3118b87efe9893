//! Advanced Error Reporting extended capability (PCIe Base 4.0 §7.8.4).

use super::{cap_boilerplate, Capability, CapabilityId};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{aer, ext_cap_id};

/// AER: uncorrectable / correctable status (RW1C), masks and severity (RW), ECRC enables,
/// the header log, and for root ports the root error command / status registers.
#[derive(Clone, Debug)]
pub struct AerCap {
    regs: RegisterBlock,
}

impl AerCap {
    /// Version 2 AER; `root_port` adds the root error registers.
    pub fn new(root_port: bool) -> Self {
        let len = if root_port {
            aer::LEN_ROOT_PORT
        } else {
            aer::LEN_ENDPOINT
        };
        let mut regs = RegisterBlock::new(len);
        regs.init(aer::UNCOR_SEVERITY, 4, aer::UNCOR_SEVERITY_DEFAULT as u64);
        regs.init(aer::COR_MASK, 4, aer::COR_MASK_DEFAULT as u64);
        Self::with_masks(regs)
    }

    /// From a real card's bytes (replay). The length decides whether root registers exist.
    pub fn from_image(image: &[u8]) -> Self {
        Self::with_masks(RegisterBlock::from_image(image))
    }

    fn with_masks(mut regs: RegisterBlock) -> Self {
        regs.set_w1c(aer::UNCOR_STATUS, 4, aer::UNCOR_BITS as u64);
        regs.set_rw(aer::UNCOR_MASK, 4, aer::UNCOR_BITS as u64);
        regs.set_rw(aer::UNCOR_SEVERITY, 4, aer::UNCOR_BITS as u64);
        regs.set_w1c(aer::COR_STATUS, 4, aer::COR_BITS as u64);
        regs.set_rw(aer::COR_MASK, 4, aer::COR_BITS as u64);
        regs.set_rw(aer::CAP_CONTROL, 4, aer::CAP_CONTROL_WRITABLE as u64);
        if regs.len() >= aer::LEN_ROOT_PORT {
            regs.set_rw(aer::ROOT_COMMAND, 4, aer::ROOT_COMMAND_WRITABLE as u64);
            regs.set_w1c(aer::ROOT_STATUS, 4, aer::ROOT_STATUS_RW1C as u64);
        }
        Self { regs }
    }

    /// Device side: records uncorrectable error `bits` (spec bit positions, e.g. 1 << 20 for
    /// Unsupported Request) and logs `header` (the offending TLP's first 16 bytes) if no
    /// error was pending. Returns the bits that are not masked.
    pub fn record_uncorrectable(&mut self, bits: u32, header: Option<&[u8; 16]>) -> u32 {
        let bits = bits & aer::UNCOR_BITS;
        if self.regs.u32(aer::UNCOR_STATUS) == 0 {
            if let Some(h) = header {
                for (i, chunk) in h.chunks(4).enumerate() {
                    let dw = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
                    self.regs.set(aer::HEADER_LOG + 4 * i, 4, dw as u64);
                }
            }
            let first = bits.trailing_zeros().min(31);
            let cc = self.regs.u32(aer::CAP_CONTROL) & !0x1f;
            self.regs.set(aer::CAP_CONTROL, 4, (cc | first) as u64);
        }
        self.regs.set_bits32(aer::UNCOR_STATUS, bits);
        bits & !self.regs.u32(aer::UNCOR_MASK)
    }

    /// Device side: records correctable error `bits`; returns the unmasked ones.
    pub fn record_correctable(&mut self, bits: u32) -> u32 {
        let bits = bits & aer::COR_BITS;
        self.regs.set_bits32(aer::COR_STATUS, bits);
        bits & !self.regs.u32(aer::COR_MASK)
    }

    /// Uncorrectable Error Status.
    pub fn uncorrectable_status(&self) -> u32 {
        self.regs.u32(aer::UNCOR_STATUS)
    }

    /// Correctable Error Status.
    pub fn correctable_status(&self) -> u32 {
        self.regs.u32(aer::COR_STATUS)
    }
}

impl Capability for AerCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Extended {
            id: ext_cap_id::AER,
            version: 2,
        }
    }
    fn name(&self) -> &'static str {
        "Advanced Error Reporting"
    }
    cap_boilerplate!();
}
