//! MSI-X capability (PCIe Base 4.0 §7.7.2) with the vector table and Pending Bit Array it
//! points at. The table and PBA live in a BAR; the endpoint routes memory accesses that hit
//! [`MsixCap::table_bar`] / [`MsixCap::pba_bar`] to [`MsixCap::read_table`] and friends.

use super::msi::{InterruptOutcome, MsiMessage};
use super::{cap_boilerplate, CapEvent, Capability, CapabilityId};
use crate::pci::regs::RegisterBlock;
use crate::pci::spec::{cap_id, msix};

/// One vector table entry as the driver programmed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message Address.
    pub address: u64,
    /// Message Data.
    pub data: u32,
    /// Vector Control mask bit.
    pub masked: bool,
}

/// MSI-X: control (enable, function mask), table / PBA locations, and the table and PBA
/// storage themselves.
#[derive(Clone, Debug)]
pub struct MsixCap {
    regs: RegisterBlock,
    table: Vec<u8>,
    pba: Vec<u64>,
}

impl MsixCap {
    /// `vectors` (1..=2048, clamped); table at `table_offset` in BAR `table_bar`, PBA at
    /// `pba_offset` in BAR `pba_bar`. Offsets must be 8-byte aligned (low 3 bits dropped).
    pub fn new(
        vectors: u16,
        table_bar: u8,
        table_offset: u32,
        pba_bar: u8,
        pba_offset: u32,
    ) -> Self {
        let n = vectors.clamp(1, 2048);
        let mut regs = RegisterBlock::new(msix::LEN);
        regs.init(msix::CONTROL, 2, (n - 1) as u64);
        regs.init(
            msix::TABLE,
            4,
            ((table_offset & !msix::BIR_MASK) | (table_bar as u32 & msix::BIR_MASK)) as u64,
        );
        regs.init(
            msix::PBA,
            4,
            ((pba_offset & !msix::BIR_MASK) | (pba_bar as u32 & msix::BIR_MASK)) as u64,
        );
        Self::with_masks(regs)
    }

    /// From a real card's bytes (replay); the table starts with every vector masked.
    pub fn from_image(image: &[u8]) -> Self {
        let mut regs = RegisterBlock::new(msix::LEN);
        regs.load(0, &image[..image.len().min(msix::LEN)]);
        Self::with_masks(regs)
    }

    fn with_masks(mut regs: RegisterBlock) -> Self {
        regs.set_rw(
            msix::CONTROL,
            2,
            (msix::CTRL_ENABLE | msix::CTRL_FUNCTION_MASK) as u64,
        );
        let n = (regs.u16(msix::CONTROL) & msix::CTRL_TABLE_SIZE) as usize + 1;
        let mut s = Self {
            regs,
            table: vec![0; n * msix::ENTRY_SIZE],
            pba: vec![0; n.div_ceil(64)],
        };
        s.reset_table();
        s
    }

    fn reset_table(&mut self) {
        self.table.fill(0);
        for e in self.table.chunks_mut(msix::ENTRY_SIZE) {
            e[msix::ENTRY_VECTOR_CONTROL] = msix::VECTOR_MASKED as u8;
        }
        self.pba.fill(0);
    }

    /// Number of vectors (Table Size + 1).
    pub fn vectors(&self) -> u16 {
        (self.regs.u16(msix::CONTROL) & msix::CTRL_TABLE_SIZE) + 1
    }
    /// BAR index (BIR) holding the table.
    pub fn table_bar(&self) -> u8 {
        (self.regs.u32(msix::TABLE) & msix::BIR_MASK) as u8
    }
    /// Offset of the table in its BAR.
    pub fn table_offset(&self) -> u32 {
        self.regs.u32(msix::TABLE) & !msix::BIR_MASK
    }
    /// Size of the table in bytes.
    pub fn table_len(&self) -> usize {
        self.table.len()
    }
    /// BAR index (BIR) holding the PBA.
    pub fn pba_bar(&self) -> u8 {
        (self.regs.u32(msix::PBA) & msix::BIR_MASK) as u8
    }
    /// Offset of the PBA in its BAR.
    pub fn pba_offset(&self) -> u32 {
        self.regs.u32(msix::PBA) & !msix::BIR_MASK
    }
    /// Size of the PBA in bytes (whole QWORDs).
    pub fn pba_len(&self) -> usize {
        self.pba.len() * 8
    }
    /// MSI-X Enable.
    pub fn enabled(&self) -> bool {
        self.regs.u16(msix::CONTROL) & msix::CTRL_ENABLE != 0
    }
    /// Function Mask.
    pub fn function_masked(&self) -> bool {
        self.regs.u16(msix::CONTROL) & msix::CTRL_FUNCTION_MASK != 0
    }

    /// Reads the vector table at `offset` (bytes past the table read as zero).
    pub fn read_table(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.table.get(offset + i).copied().unwrap_or(0);
        }
    }

    /// Writes the vector table at `offset`: address and data are read-write, only the mask
    /// bit of Vector Control is writable. Returns true when a vector may have been unmasked
    /// (call [`MsixCap::poll_pending`]).
    pub fn write_table(&mut self, offset: usize, data: &[u8]) -> bool {
        let mut unmask = false;
        for (i, &d) in data.iter().enumerate() {
            let o = offset + i;
            let Some(b) = self.table.get_mut(o) else {
                break;
            };
            match o % msix::ENTRY_SIZE {
                msix::ENTRY_VECTOR_CONTROL => {
                    unmask |= d & 1 == 0 && *b & 1 == 1;
                    *b = (*b & !1) | (d & 1);
                }
                13..=15 => {}
                _ => *b = d,
            }
        }
        unmask
    }

    /// Reads the Pending Bit Array at `offset` (writes to the PBA are ignored by hardware).
    pub fn read_pba(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            let o = offset + i;
            *b = self
                .pba
                .get(o / 8)
                .map(|q| (q >> (8 * (o % 8))) as u8)
                .unwrap_or(0);
        }
    }

    /// The table entry for `vector`.
    pub fn entry(&self, vector: u16) -> Option<MsixEntry> {
        let base = vector as usize * msix::ENTRY_SIZE;
        let e = self.table.get(base..base + msix::ENTRY_SIZE)?;
        let dw = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
        Some(MsixEntry {
            address: (dw(4) as u64) << 32 | dw(0) as u64,
            data: dw(8),
            masked: dw(12) & msix::VECTOR_MASKED != 0,
        })
    }

    /// Is `vector`'s pending bit set?
    pub fn is_pending(&self, vector: u16) -> bool {
        let v = vector as usize;
        self.pba
            .get(v / 64)
            .is_some_and(|q| q & (1 << (v % 64)) != 0)
    }

    /// Device side: raise `vector`.
    pub fn raise(&mut self, vector: u16) -> InterruptOutcome {
        let Some(e) = self.entry(vector) else {
            return InterruptOutcome::Disabled;
        };
        if !self.enabled() {
            return InterruptOutcome::Disabled;
        }
        if e.masked || self.function_masked() {
            let v = vector as usize;
            self.pba[v / 64] |= 1 << (v % 64);
            return InterruptOutcome::Pending;
        }
        InterruptOutcome::Send(MsiMessage {
            address: e.address,
            data: e.data,
        })
    }

    /// Device side: one pending vector that is now deliverable, with its message; clears its
    /// pending bit. Call until `None` after an unmask (table write returning true, or a
    /// configuration write reporting `interrupt_config`).
    pub fn poll_pending(&mut self) -> Option<(u16, MsiMessage)> {
        if !self.enabled() || self.function_masked() {
            return None;
        }
        for (qi, q) in self.pba.iter().enumerate() {
            let mut bits = *q;
            while bits != 0 {
                let b = bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let v = (qi * 64 + b) as u16;
                if let Some(e) = self.entry(v).filter(|e| !e.masked) {
                    self.pba[qi] &= !(1 << b);
                    return Some((
                        v,
                        MsiMessage {
                            address: e.address,
                            data: e.data,
                        },
                    ));
                }
            }
        }
        None
    }
}

impl Capability for MsixCap {
    fn id(&self) -> CapabilityId {
        CapabilityId::Standard(cap_id::MSIX)
    }
    fn name(&self) -> &'static str {
        "MSI-X"
    }
    fn on_write(&mut self, _offset: usize, _data: &[u8]) -> CapEvent {
        CapEvent {
            interrupt_config: true,
            ..CapEvent::default()
        }
    }
    fn reset(&mut self) {
        self.regs.reset();
        self.reset_table();
    }
    cap_boilerplate!();
}
