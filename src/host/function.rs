//! One tunnelled function as a consumer sees it: the Rust API for user-space drivers and the
//! [`VfioDevice`] behind its vfio-user server.
//!
//! Config space goes to the card as CfgRd0/CfgWr0, except the registers the host must own
//! (the way Linux vfio-pci virtualizes them): the BARs and expansion ROM keep the host's bus
//! addresses on the card and show the consumer a shadow that sizes correctly (PCI Local Bus
//! 3.0 §6.2.5.1), and the MSI address/data registers (§6.8.1) point the card at the host's
//! interrupt window. When the consumer arms MSI-X vectors, the card's MSI-X table (§6.8.2) is
//! programmed so vector *n* writes *n* to that window; the host turns it into eventfd *n*.
//! A read that fails (completion timeout, link down) returns all-ones, like real hardware.

use crate::sync::MutexExt;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::dma::{Access, DmaMemory, DmaWindowError};
use super::enumerate::FunctionInfo;
use super::requester::RequestError;
use super::vfio_user::irq::set_flags;
use super::vfio_user::{
    EventFd, FunctionContext, IrqIndex, RegionDesc, VfioDevice, VfioDeviceError, CONFIG_REGION,
};
use crate::tlp::Bdf;

#[derive(Debug, Default)]
struct Shadow {
    /// Consumer-visible BAR registers 0x10..0x28 and ROM (0x30).
    bars: [u32; 6],
    rom: u32,
    /// Consumer-visible MSI address low/high and data registers.
    msi: [u32; 3],
}

/// Host-side state of a function, shared by every handle to it.
#[derive(Debug)]
pub struct RemoteFunctionState {
    info: FunctionInfo,
    ctx: FunctionContext,
    shadow: Mutex<Shadow>,
    msix_mode: AtomicBool,
    /// The slot reported the function withdrawn or gone (PCIe Base 4.0 §6.7): every access
    /// through any handle fails with Unsupported Request (all-ones to readers).
    removed: AtomicBool,
    /// Per-BAR (size mask, type flags) of the consumer-visible registers.
    bar_masks: [(u32, u32); 6],
}

impl RemoteFunctionState {
    /// State for a function enumeration found.
    pub fn new(info: FunctionInfo) -> Self {
        let counts = [
            u32::from(info.interrupt_pin != 0),
            info.msi.map_or(0, |m| u32::from(m.vectors)),
            info.msix.map_or(0, |m| u32::from(m.vectors)),
            0,
            0,
        ];
        let ctx = FunctionContext::new(&info.bdf.to_string(), counts);
        let mut masks = [(0u32, 0u32); 6];
        for (i, b) in info.bars.iter().enumerate() {
            if b.size == 0 {
                continue;
            }
            let flags = if b.io {
                1
            } else {
                (if b.is64 { 0b100 } else { 0 }) | (if b.prefetchable { 0b1000 } else { 0 })
            };
            let size_mask = !(b.size - 1);
            masks[i] = (size_mask as u32 & if b.io { !3 } else { !0xf }, flags);
            if b.is64 && i < 5 {
                masks[i + 1] = ((size_mask >> 32) as u32, 0);
            }
        }
        let shadow = Shadow {
            bars: masks.map(|m| m.1),
            ..Shadow::default()
        };
        Self {
            info,
            ctx,
            shadow: Mutex::new(shadow),
            msix_mode: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            bar_masks: masks,
        }
    }

    /// What enumeration found.
    pub fn info(&self) -> &FunctionInfo {
        &self.info
    }

    /// Interrupts and DMA windows.
    pub fn ctx(&self) -> &FunctionContext {
        &self.ctx
    }

    /// Whether the function was withdrawn (removal request) or removed from its slot.
    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    /// Withdraw the function: every later access through any handle fails.
    pub(super) fn mark_removed(&self) {
        self.removed.store(true, Ordering::Release);
    }

    /// Whether the consumer armed MSI-X (rather than MSI) vectors.
    pub fn uses_msix(&self) -> bool {
        self.msix_mode.load(Ordering::Acquire)
    }

    /// An MSI/MSI-X write with this data arrived from the card.
    pub fn deliver_msi(&self, data: u32) {
        if self.msix_mode.load(Ordering::Acquire) {
            self.ctx.irqs.trigger(IrqIndex::Msix, data & 0x7ff);
        } else {
            self.ctx.irqs.trigger(IrqIndex::Msi, data & 0x1f);
        }
    }
}

/// What a function handle needs from the root complex above it: the requests it sends toward
/// its card, and the window the card's MSI/MSI-X writes must target. The host's
/// [`Host`](crate::host::Host) implements it; a handle holds this narrow interface rather than
/// the whole host (and this module does not depend on the root complex).
pub trait RootComplex: Send + Sync + std::fmt::Debug {
    /// CfgRd0 of the DW at `reg` of `bdf`.
    fn cfg_read(&self, bdf: Bdf, reg: u16) -> Result<u32, RequestError>;
    /// CfgWr0 of the bytes of `value` selected by `first_be` at `reg` of `bdf`.
    fn cfg_write(&self, bdf: Bdf, reg: u16, first_be: u8, value: u32) -> Result<(), RequestError>;
    /// Memory read of `buf.len()` bytes at bus address `address`.
    fn mem_read(&self, address: u64, buf: &mut [u8]) -> Result<(), RequestError>;
    /// Posted memory write of `data` at bus address `address`.
    fn mem_write(&self, address: u64, data: &[u8]) -> Result<(), RequestError>;
    /// IORd of the bytes `first_be` selects of the DW at IO address `address` (of `target`).
    fn io_read(&self, target: Bdf, address: u32, first_be: u8) -> Result<u32, RequestError>;
    /// IOWr of the bytes `first_be` selects of `value` at the DW at IO address `address`.
    fn io_write(
        &self,
        target: Bdf,
        address: u32,
        first_be: u8,
        value: u32,
    ) -> Result<(), RequestError>;
    /// Base address of the window where memory writes are interrupts (MSI/MSI-X).
    fn msi_base(&self) -> u64;
}

/// A handle on one tunnelled function (the user-space driver API; also a vfio-user
/// [`VfioDevice`]).
#[derive(Debug, Clone)]
pub struct RemoteFunction {
    root: Arc<dyn RootComplex>,
    f: Arc<RemoteFunctionState>,
}

impl RemoteFunction {
    pub(crate) fn new(root: Arc<dyn RootComplex>, f: Arc<RemoteFunctionState>) -> Self {
        Self { root, f }
    }

    /// Its address below the root port.
    pub fn bdf(&self) -> Bdf {
        self.f.info.bdf
    }

    /// What enumeration found.
    pub fn info(&self) -> &FunctionInfo {
        &self.f.info
    }

    /// Interrupts and DMA windows (hand this to a vfio-user server).
    pub fn context(&self) -> FunctionContext {
        self.f.ctx.clone()
    }

    /// Raw configuration read of the DW at `reg` (no virtualization).
    pub fn config_read(&self, reg: u16) -> Result<u32, RequestError> {
        self.alive()?;
        self.root.cfg_read(self.bdf(), reg & !3)
    }

    /// Raw configuration write of a DW.
    pub fn config_write(&self, reg: u16, value: u32) -> Result<(), RequestError> {
        self.alive()?;
        self.root.cfg_write(self.bdf(), reg & !3, 0xf, value)
    }

    /// Whether the function was withdrawn from its slot.
    pub fn is_removed(&self) -> bool {
        self.f.is_removed()
    }

    /// A withdrawn or removed function answers nothing: Unsupported Request, as a root port
    /// completes requests to an empty slot.
    fn alive(&self) -> Result<(), RequestError> {
        if self.f.is_removed() {
            Err(RequestError::UnsupportedRequest)
        } else {
            Ok(())
        }
    }

    /// The BAR `bar` covering `offset..offset+len`: its base and whether it is an IO BAR.
    fn bar_range(&self, bar: usize, offset: u64, len: usize) -> Result<(u64, bool), RequestError> {
        self.alive()?;
        let b = self
            .f
            .info
            .bars
            .get(bar)
            .filter(|b| b.size > 0)
            .ok_or(RequestError::UnsupportedRequest)?;
        let end = offset
            .checked_add(len as u64)
            .ok_or(RequestError::UnsupportedRequest)?;
        if end > b.size {
            return Err(RequestError::UnsupportedRequest);
        }
        Ok((b.base + offset, b.io))
    }

    /// Read `buf.len()` bytes at `offset` of BAR `bar`: memory reads, or for an IO BAR one
    /// IORd per DW the bytes touch (byte enables select them; PCIe IO requests carry one DW).
    pub fn bar_read(&self, bar: usize, offset: u64, buf: &mut [u8]) -> Result<(), RequestError> {
        let (a, io) = self.bar_range(bar, offset, buf.len())?;
        if !io {
            return self.root.mem_read(a, buf);
        }
        for (dw, lanes, bytes) in io_spans(a, buf.len())? {
            let v = self.root.io_read(self.bdf(), dw, lane_enables(&lanes))?;
            buf[bytes].copy_from_slice(&v.to_le_bytes()[lanes]);
        }
        Ok(())
    }

    /// Write `data` at `offset` of BAR `bar`: posted memory writes, or for an IO BAR one
    /// IOWr per DW (non-posted: each completes before the next).
    pub fn bar_write(&self, bar: usize, offset: u64, data: &[u8]) -> Result<(), RequestError> {
        let (a, io) = self.bar_range(bar, offset, data.len())?;
        if !io {
            return self.root.mem_write(a, data);
        }
        for (dw, lanes, bytes) in io_spans(a, data.len())? {
            let mut v = [0u8; 4];
            v[lanes.clone()].copy_from_slice(&data[bytes]);
            self.root
                .io_write(self.bdf(), dw, lane_enables(&lanes), u32::from_le_bytes(v))?;
        }
        Ok(())
    }

    /// 32-bit BAR read.
    pub fn bar_read32(&self, bar: usize, offset: u64) -> Result<u32, RequestError> {
        let mut b = [0u8; 4];
        self.bar_read(bar, offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    /// 32-bit BAR write.
    pub fn bar_write32(&self, bar: usize, offset: u64, v: u32) -> Result<(), RequestError> {
        self.bar_write(bar, offset, &v.to_le_bytes())
    }

    /// Let the card DMA to `iova..iova+mem.len()`.
    pub fn register_dma(
        &self,
        iova: u64,
        mem: Arc<dyn DmaMemory>,
        access: Access,
    ) -> Result<(), DmaWindowError> {
        self.f.ctx.dma.map(iova, access, mem)
    }

    /// Withdraw a DMA window.
    pub fn unregister_dma(&self, iova: u64, len: u64) -> Result<usize, DmaWindowError> {
        self.f.ctx.dma.unmap(iova, len)
    }

    /// An eventfd signalled by interrupt `vector` of `index` (arming the card).
    pub fn interrupt_eventfd(&self, index: IrqIndex, vector: u32) -> std::io::Result<EventFd> {
        let e = EventFd::new()?;
        self.f
            .ctx
            .irqs
            .set_irqs(
                set_flags::DATA_EVENTFD | set_flags::ACTION_TRIGGER,
                index as u32,
                vector,
                1,
                &[],
                vec![e.try_clone_fd()?],
            )
            .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
        let mut me = self.clone();
        me.irqs_changed(index);
        Ok(e)
    }

    /// Wait up to `timeout` for an interrupt on `fd`; the number of interrupts since last time.
    pub fn wait_interrupt(fd: &EventFd, timeout: Duration) -> std::io::Result<u64> {
        fd.wait_timeout(timeout)
    }

    fn msi_regs(&self) -> Option<(u16, u16, u16)> {
        // (address low, address high or 0, data) offsets.
        self.f.info.msi.map(|m| {
            if m.is64 {
                (m.cap + 4, m.cap + 8, m.cap + 12)
            } else {
                (m.cap + 4, 0, m.cap + 8)
            }
        })
    }

    /// Consumer view of one config DW.
    fn virtual_dw(&self, reg: u16) -> Option<u32> {
        let s = self.f.shadow.lock_or_recover();
        match reg {
            0x10..=0x27 => return Some(s.bars[(reg as usize - 0x10) / 4]),
            0x30 => return Some(s.rom),
            _ => {}
        }
        let (lo, hi, data) = self.msi_regs()?;
        if reg == lo {
            Some(s.msi[0])
        } else if hi != 0 && reg == hi {
            Some(s.msi[1])
        } else if reg == data {
            // Message data is 16 bits; the upper half (extended data / reserved) reads back.
            Some(s.msi[2])
        } else {
            None
        }
    }

    fn virtual_write(&self, reg: u16, value: u32) -> bool {
        let mut s = self.f.shadow.lock_or_recover();
        match reg {
            0x10..=0x27 => {
                let i = (reg as usize - 0x10) / 4;
                let (mask, flags) = self.f.bar_masks[i];
                s.bars[i] = (value & mask) | flags;
                return true;
            }
            0x30 => {
                s.rom = 0;
                return true;
            }
            _ => {}
        }
        let Some((lo, hi, data)) = self.msi_regs() else {
            return false;
        };
        if reg == lo {
            s.msi[0] = value & !3;
        } else if hi != 0 && reg == hi {
            s.msi[1] = value;
        } else if reg == data {
            s.msi[2] = value;
        } else {
            return false;
        }
        true
    }

    fn fail_read(&self, e: RequestError, data: &mut [u8]) {
        tracing::warn!(function = %self.bdf(), error = %e, "read failed: all-ones returned");
        data.fill(0xff);
    }

    fn program_msix(&self) -> Result<(), RequestError> {
        let Some(m) = self.f.info.msix else {
            return Ok(());
        };
        let base = self.root.msi_base();
        let mut table = Vec::with_capacity(m.vectors as usize * 16);
        let mut any = false;
        for v in 0..u32::from(m.vectors) {
            let armed = self.f.ctx.irqs.is_armed(IrqIndex::Msix, v);
            any |= armed;
            table.extend_from_slice(&(base as u32).to_le_bytes());
            table.extend_from_slice(&((base >> 32) as u32).to_le_bytes());
            table.extend_from_slice(&v.to_le_bytes());
            table.extend_from_slice(&u32::from(!armed).to_le_bytes());
        }
        self.f.msix_mode.store(any, Ordering::Release);
        let bar = self.f.info.bars[(m.table_bar as usize).min(5)];
        self.root
            .mem_write(bar.base + u64::from(m.table_offset), &table)
    }

    fn program_msi(&self) -> Result<(), RequestError> {
        let Some((lo, hi, data)) = self.msi_regs() else {
            return Ok(());
        };
        self.f.msix_mode.store(false, Ordering::Release);
        let base = self.root.msi_base();
        let bdf = self.bdf();
        self.root.cfg_write(bdf, lo, 0xf, base as u32)?;
        if hi != 0 {
            self.root.cfg_write(bdf, hi, 0xf, (base >> 32) as u32)?;
        }
        self.root.cfg_write(bdf, data, 0x3, 0)
    }

    /// Restore what the host programmed at enumeration (after a Function Level Reset).
    fn restore(&self) -> Result<(), RequestError> {
        let bdf = self.bdf();
        let info = &self.f.info;
        for (i, b) in info.bars.iter().enumerate() {
            if b.size == 0 {
                continue;
            }
            let reg = 0x10 + 4 * i as u16;
            self.root
                .cfg_write(bdf, reg, 0xf, b.base as u32 | self.f.bar_masks[i].1)?;
            if b.is64 {
                self.root
                    .cfg_write(bdf, reg + 4, 0xf, (b.base >> 32) as u32)?;
            }
        }
        if let Some(p) = info.pcie {
            let code = |n: u32| (n.clamp(128, 4096) / 128).trailing_zeros();
            let ctl = (code(info.mps) << 5) | (code(info.mrrs) << 12) | (1 << 8);
            self.root.cfg_write(bdf, p + 8, 0x3, ctl)?;
        }
        let cmd = self.root.cfg_read(bdf, 0x04)?;
        self.root.cfg_write(bdf, 0x04, 0x3, (cmd & 0xffff) | 0x6)
    }
}

/// The part of a configuration-region access that falls in one DW.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DwSpan {
    /// The DW-aligned register.
    reg: u16,
    /// Where the part starts in the DW (0..4).
    lane: usize,
    /// The part's bytes in the caller's buffer.
    bytes: Range<usize>,
}

impl DwSpan {
    /// The part's bytes within the DW.
    fn lanes(&self) -> Range<usize> {
        self.lane..self.lane + self.bytes.len()
    }

    /// The First DW Byte Enables of a configuration write of just this part.
    fn byte_enables(&self) -> u8 {
        ((1u8 << self.bytes.len()) - 1) << self.lane
    }
}

/// The DWs an access of `len` bytes at byte `offset` of configuration space touches, in order.
fn dw_spans(offset: u64, len: usize) -> impl Iterator<Item = DwSpan> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        if at >= len {
            return None;
        }
        let o = offset as usize + at;
        let lane = o & 3;
        let n = (4 - lane).min(len - at);
        let span = DwSpan {
            reg: (o & !3) as u16,
            lane,
            bytes: at..at + n,
        };
        at += n;
        Some(span)
    })
}

/// The DWs an IO access of `len` bytes at IO address `a` touches: (DW address, byte lanes
/// within the DW, the bytes of the caller's buffer). IO space is 32-bit. No allocation.
fn io_spans(
    a: u64,
    len: usize,
) -> Result<impl Iterator<Item = (u32, std::ops::Range<usize>, std::ops::Range<usize>)>, RequestError>
{
    let end = a
        .checked_add(len as u64)
        .filter(|e| *e <= 1 << 32)
        .ok_or(RequestError::UnsupportedRequest)?;
    let mut at = a;
    Ok(std::iter::from_fn(move || {
        if at >= end {
            return None;
        }
        let dw = at & !3;
        let lane = (at - dw) as usize;
        let n = (4 - lane).min((end - at) as usize);
        let from = (at - a) as usize;
        at += n as u64;
        Some((dw as u32, lane..lane + n, from..from + n))
    }))
}

/// First DW byte enables for the lanes `r`.
fn lane_enables(r: &std::ops::Range<usize>) -> u8 {
    r.clone().fold(0u8, |be, l| be | 1 << l)
}

impl VfioDevice for RemoteFunction {
    fn region(&self, index: u32) -> RegionDesc {
        match index {
            0..=5 => {
                // Memory and IO BARs alike (a consumer such as QEMU's vfio-user-pci maps an IO
                // BAR as port I/O, from the BAR's space bit in config space).
                let b = self.f.info.bars[index as usize];
                if b.size == 0 {
                    RegionDesc::NONE
                } else {
                    RegionDesc::rw(b.size)
                }
            }
            CONFIG_REGION => RegionDesc::rw(if self.f.info.pcie.is_some() {
                4096
            } else {
                256
            }),
            _ => RegionDesc::NONE,
        }
    }

    fn region_read(
        &mut self,
        index: u32,
        offset: u64,
        data: &mut [u8],
    ) -> Result<(), VfioDeviceError> {
        if index == CONFIG_REGION {
            for s in dw_spans(offset, data.len()) {
                let dw = match self.virtual_dw(s.reg) {
                    Some(v) => v,
                    None => match self.root.cfg_read(self.bdf(), s.reg) {
                        Ok(v) => v,
                        Err(e) => {
                            tracing::warn!(function = %self.bdf(), reg = s.reg, error = %e, "config read failed: all-ones");
                            0xffff_ffff
                        }
                    },
                };
                data[s.bytes.clone()].copy_from_slice(&dw.to_le_bytes()[s.lanes()]);
            }
            return Ok(());
        }
        if let Err(e) = self.bar_read(index as usize, offset, data) {
            self.fail_read(e, data);
        }
        Ok(())
    }

    fn region_write(
        &mut self,
        index: u32,
        offset: u64,
        data: &[u8],
    ) -> Result<(), VfioDeviceError> {
        if index == CONFIG_REGION {
            for s in dw_spans(offset, data.len()) {
                let part = &data[s.bytes.clone()];
                if let Some(cur) = self.virtual_dw(s.reg) {
                    let mut merged = cur.to_le_bytes();
                    merged[s.lanes()].copy_from_slice(part);
                    self.virtual_write(s.reg, u32::from_le_bytes(merged));
                } else {
                    let mut bytes = [0u8; 4];
                    bytes[s.lanes()].copy_from_slice(part);
                    self.root.cfg_write(
                        self.bdf(),
                        s.reg,
                        s.byte_enables(),
                        u32::from_le_bytes(bytes),
                    )?;
                }
            }
            return Ok(());
        }
        Ok(self.bar_write(index as usize, offset, data)?)
    }

    fn reset(&mut self) -> Result<(), VfioDeviceError> {
        let bdf = self.bdf();
        if let (true, Some(p)) = (self.f.info.flr, self.f.info.pcie) {
            let ctl = self.root.cfg_read(bdf, p + 8)?;
            self.root
                .cfg_write(bdf, p + 8, 0x3, (ctl & 0xffff) | (1 << 15))?;
            // PCIe §6.6.2: the function must be ready 100 ms after the FLR.
            std::thread::sleep(Duration::from_millis(100));
        }
        *self.f.shadow.lock_or_recover() = Shadow {
            bars: std::array::from_fn(|i| self.f.bar_masks[i].1),
            ..Shadow::default()
        };
        self.restore()?;
        Ok(self.program_msix()?)
    }

    fn irqs_changed(&mut self, index: IrqIndex) {
        let r = match index {
            IrqIndex::Msix => self.program_msix(),
            IrqIndex::Msi => self.program_msi(),
            _ => Ok(()),
        };
        if let Err(e) = r {
            tracing::warn!(function = %self.bdf(), error = %e, "could not program the card's interrupts");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_accesses_split_into_one_dw_requests() {
        let spans: Vec<_> = io_spans(0x1006, 7)
            .unwrap()
            .map(|(dw, lanes, bytes)| (dw, lane_enables(&lanes), bytes))
            .collect();
        assert_eq!(
            spans,
            [
                (0x1004, 0b1100, 0..2),
                (0x1008, 0b1111, 2..6),
                (0x100c, 0b0001, 6..7)
            ]
        );
        assert_eq!(io_spans(0x1000, 0).unwrap().count(), 0);
        assert!(io_spans(0xffff_fffe, 4).is_err(), "IO space is 32-bit");
    }

    #[test]
    fn config_accesses_split_into_dw_spans() {
        let spans: Vec<_> = dw_spans(0x0e, 7)
            .map(|s| (s.reg, s.lanes(), s.bytes.clone(), s.byte_enables()))
            .collect();
        assert_eq!(
            spans,
            [
                (0x0c, 2..4, 0..2, 0b1100),
                (0x10, 0..4, 2..6, 0b1111),
                (0x14, 0..1, 6..7, 0b0001),
            ]
        );
        assert_eq!(dw_spans(0x40, 0).count(), 0);
        let one: Vec<_> = dw_spans(0x41, 2).map(|s| s.byte_enables()).collect();
        assert_eq!(one, [0b0110]);
    }
}
