//! MSI capability (PCIe Base 4.0 §7.7.1): 32/64-bit address, multiple message, per-vector
//! masking with pending bits.

use super::{cap_boilerplate, CapEvent, Capability, CapabilityId};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{cap_id, msi};

/// Where interrupt messages land on x86: the local APIC's address window
/// `0xFEE0_0000..0xFEF0_0000` (Intel SDM vol. 3A §11.11.1). A memory write into it from a
/// function is an MSI/MSI-X, not DMA — for the host's root port and for the appliance's
/// per-function counters alike.
pub const X86_MSI_WINDOW: std::ops::Range<u64> = 0xfee0_0000..0xfef0_0000;

/// An interrupt message: a posted memory write of `data` (32 bits, little-endian on the wire
/// for MSI-X; MSI sends the 16-bit data zero-extended) to `address`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsiMessage {
    /// Target address.
    pub address: u64,
    /// Message data.
    pub data: u32,
}

/// What raising a vector amounted to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptOutcome {
    /// Send this memory write now.
    Send(MsiMessage),
    /// The vector is masked: its pending bit is now set; it is sent when unmasked
    /// (see `poll_pending`).
    Pending,
    /// MSI / MSI-X is disabled or the vector does not exist (fall back to INTx if enabled).
    Disabled,
}

/// MSI: control (enable, multiple message enable), address, data, and with per-vector
/// masking the mask (read-write) and pending (read-only, device-set) bits.
#[derive(Clone, Debug)]
pub struct MsiCap {
    regs: RegisterBlock,
    is64: bool,
    per_vector_mask: bool,
    max_vectors: u32,
}

fn layout_len(is64: bool, pvm: bool) -> usize {
    match (is64, pvm) {
        (false, false) => 0x0a,
        (true, false) => 0x0e,
        (false, true) => 0x14,
        (true, true) => 0x18,
    }
}

impl MsiCap {
    /// `vectors` requested (rounded up to a power of two, at most 32).
    pub fn new(vectors: u32, is64: bool, per_vector_mask: bool) -> Self {
        let mmc = vectors.clamp(1, 32).next_power_of_two().trailing_zeros() as u16;
        let mut ctrl = mmc << msi::CTRL_MMC_SHIFT;
        if is64 {
            ctrl |= msi::CTRL_64BIT;
        }
        if per_vector_mask {
            ctrl |= msi::CTRL_PER_VECTOR_MASK;
        }
        let mut regs = RegisterBlock::new(layout_len(is64, per_vector_mask));
        regs.init(msi::CONTROL, 2, ctrl as u64);
        Self::with_masks(regs)
    }

    /// From a real card's bytes (replay): the control register decides the layout.
    pub fn from_image(image: &[u8]) -> Self {
        let ctrl = u16::from_le_bytes([
            image.get(2).copied().unwrap_or(0),
            image.get(3).copied().unwrap_or(0),
        ]);
        let len = layout_len(
            ctrl & msi::CTRL_64BIT != 0,
            ctrl & msi::CTRL_PER_VECTOR_MASK != 0,
        );
        let mut regs = RegisterBlock::new(len);
        regs.load(0, &image[..image.len().min(len)]);
        Self::with_masks(regs)
    }

    fn with_masks(mut regs: RegisterBlock) -> Self {
        let ctrl = regs.u16(msi::CONTROL);
        let is64 = ctrl & msi::CTRL_64BIT != 0;
        let per_vector_mask = ctrl & msi::CTRL_PER_VECTOR_MASK != 0;
        let mmc = ((ctrl >> msi::CTRL_MMC_SHIFT) & 7).min(5);
        let max_vectors = 1u32 << mmc;
        regs.set_rw(
            msi::CONTROL,
            2,
            (msi::CTRL_ENABLE | msi::CTRL_MME_MASK) as u64,
        );
        regs.set_rw(msi::ADDRESS_LO, 4, 0xffff_fffc);
        let mut s = Self {
            regs,
            is64,
            per_vector_mask,
            max_vectors,
        };
        if is64 {
            s.regs.set_rw(0x08, 4, 0xffff_ffff);
        }
        let data = s.data_offset();
        s.regs.set_rw(data, 2, 0xffff);
        if per_vector_mask {
            let m = if max_vectors == 32 {
                u32::MAX
            } else {
                (1u32 << max_vectors) - 1
            };
            s.regs.set_rw(s.mask_offset(), 4, m as u64);
        }
        s
    }

    fn data_offset(&self) -> usize {
        if self.is64 {
            0x0c
        } else {
            0x08
        }
    }
    fn mask_offset(&self) -> usize {
        self.data_offset() + 4
    }
    fn pending_offset(&self) -> usize {
        self.data_offset() + 8
    }

    /// MSI Enable.
    pub fn enabled(&self) -> bool {
        self.regs.u16(msi::CONTROL) & msi::CTRL_ENABLE != 0
    }

    /// Vectors the driver enabled (Multiple Message Enable, capped at what is capable).
    pub fn enabled_vectors(&self) -> u32 {
        let mme = (self.regs.u16(msi::CONTROL) & msi::CTRL_MME_MASK) >> msi::CTRL_MME_SHIFT;
        (1u32 << mme.min(5)).min(self.max_vectors)
    }

    /// Vectors the function is capable of.
    pub fn max_vectors(&self) -> u32 {
        self.max_vectors
    }

    /// The message for `vector` (data low bits carry the vector number).
    pub fn message(&self, vector: u32) -> MsiMessage {
        let lo = self.regs.u32(msi::ADDRESS_LO) as u64;
        let hi = if self.is64 {
            self.regs.u32(0x08) as u64
        } else {
            0
        };
        let n = self.enabled_vectors();
        let base = self.regs.u16(self.data_offset()) as u32;
        MsiMessage {
            address: (hi << 32) | lo,
            data: (base & !(n - 1)) | (vector & (n - 1)),
        }
    }

    /// Is `vector` masked (per-vector masking)?
    pub fn is_masked(&self, vector: u32) -> bool {
        self.per_vector_mask
            && vector < 32
            && self.regs.u32(self.mask_offset()) & (1 << vector) != 0
    }

    /// The Pending Bits register (0 without per-vector masking).
    pub fn pending_bits(&self) -> u32 {
        if self.per_vector_mask {
            self.regs.u32(self.pending_offset())
        } else {
            0
        }
    }

    /// Device side: raise `vector`.
    pub fn raise(&mut self, vector: u32) -> InterruptOutcome {
        if !self.enabled() || vector >= self.enabled_vectors() {
            return InterruptOutcome::Disabled;
        }
        if self.is_masked(vector) {
            let p = self.pending_offset();
            self.regs.set_bits32(p, 1 << vector);
            return InterruptOutcome::Pending;
        }
        InterruptOutcome::Send(self.message(vector))
    }

    /// Device side: one pending vector that is now unmasked, with its message; clears its
    /// pending bit. Call until `None` after a configuration write reports
    /// `interrupt_config`.
    pub fn poll_pending(&mut self) -> Option<(u32, MsiMessage)> {
        if !self.enabled() {
            return None;
        }
        let pending = self.pending_bits();
        let v =
            (0..self.enabled_vectors()).find(|&v| pending & (1 << v) != 0 && !self.is_masked(v))?;
        let p = self.pending_offset();
        let cur = self.regs.u32(p) & !(1 << v);
        self.regs.set(p, 4, cur as u64);
        Some((v, self.message(v)))
    }
}

impl Capability for MsiCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Standard(cap_id::MSI)
    }
    fn name(&self) -> &'static str {
        "MSI"
    }
    fn on_write(&mut self, _offset: usize, _data: &[u8]) -> CapEvent {
        CapEvent {
            interrupt_config: true,
            ..CapEvent::default()
        }
    }
    cap_boilerplate!();
}
