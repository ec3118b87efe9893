//! The configuration-space emulator of one function: 4 KiB of PCI Express configuration
//! space with a type 0 (endpoint) or type 1 (bridge / root port) header, BARs, and the
//! standard and extended capability lists.
//!
//! Follows PCI Local Bus 3.0 §6.1–6.2 (type 0 header), PCI-to-PCI Bridge 1.2 §3.2 (type 1),
//! PCIe Base 4.0 §7.5.1 (header registers for PCIe functions) and §7.6 (extended
//! capabilities). Semantics come from [`RegisterBlock`] masks; capabilities are
//! [`Capability`] objects chained here. Modelled on OpenVMM's `pci_core::cfg_space_emu`.

use super::bar::{decode_all, Bar, BarValue};
use super::caps::{CapEvent, Capability, CapabilityId, MsiCap, MsixCap, PciExpressCap};
use super::regs::{ByteMask, RegisterBlock};
use super::spec::{self, bar as b, command, header as h, status};
use super::PciError;

/// Which header layout the function has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderType {
    /// Type 0: endpoints (six BARs, subsystem IDs, expansion ROM at 0x30).
    Endpoint,
    /// Type 1: PCI-to-PCI bridges and root ports (two BARs, bus numbers, windows).
    Bridge,
}

impl HeaderType {
    /// Number of BAR slots.
    pub fn bar_slots(self) -> usize {
        match self {
            HeaderType::Endpoint => 6,
            HeaderType::Bridge => 2,
        }
    }
    fn rom_offset(self) -> usize {
        match self {
            HeaderType::Endpoint => h::ROM_ADDRESS,
            HeaderType::Bridge => h::BRIDGE_ROM_ADDRESS,
        }
    }
}

/// Identity registers of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FunctionIds {
    /// Vendor ID.
    pub vendor_id: u16,
    /// Device ID.
    pub device_id: u16,
    /// Revision ID.
    pub revision: u8,
    /// Class code: base class << 16 | subclass << 8 | programming interface.
    pub class_code: u32,
    /// Subsystem Vendor ID (type 0 only).
    pub subsystem_vendor_id: u16,
    /// Subsystem ID (type 0 only).
    pub subsystem_id: u16,
    /// Interrupt Pin: 0 none, 1 = INTA … 4 = INTD.
    pub interrupt_pin: u8,
    /// Multi-function device bit of the Header Type register.
    pub multifunction: bool,
}

#[derive(Debug)]
struct Placed {
    offset: usize,
    cap: Box<dyn Capability>,
}

impl Placed {
    fn body(&self) -> std::ops::Range<usize> {
        self.offset + self.cap.id().header_len()..self.offset + self.cap.len()
    }
}

/// One function's configuration space.
#[derive(Debug)]
pub struct ConfigSpace {
    header_type: HeaderType,
    regs: RegisterBlock,
    caps: Vec<Placed>,
    next_std: usize,
    next_ext: usize,
    last_std: Option<usize>,
    last_ext: Option<usize>,
    flr_pending: bool,
}

impl ConfigSpace {
    /// A type 0 header with the usual writable fields (Command, Status RW1C, Cache Line
    /// Size, Interrupt Line). Add BARs and capabilities next.
    pub fn endpoint(ids: FunctionIds) -> Self {
        let mut s = Self::blank(HeaderType::Endpoint);
        s.init_ids(ids, spec::header::HEADER_TYPE_NORMAL);
        s.regs
            .init(h::SUBSYSTEM_VENDOR_ID, 2, ids.subsystem_vendor_id as u64);
        s.regs.init(h::SUBSYSTEM_ID, 2, ids.subsystem_id as u64);
        s.common_masks();
        s
    }

    /// A type 1 header (PCI-to-PCI bridge / root port): bus numbers, I/O (16-bit), memory and
    /// 64-bit prefetchable windows, Secondary Status RW1C and Bridge Control are writable.
    pub fn bridge(ids: FunctionIds) -> Self {
        let mut s = Self::blank(HeaderType::Bridge);
        s.init_ids(ids, spec::header::HEADER_TYPE_BRIDGE);
        s.common_masks();
        s.regs.init(h::PREF_MEMORY_BASE, 4, 0x0001_0001);
        s.bridge_masks();
        s
    }

    pub(crate) fn bridge_masks(&mut self) {
        let r = &mut self.regs;
        r.set_rw(h::PRIMARY_BUS, 4, 0x00ff_ffff);
        r.set_rw(h::IO_BASE, 2, 0xf0f0);
        r.set_w1c(h::SECONDARY_STATUS, 2, status::RW1C as u64);
        r.set_rw(h::MEMORY_BASE, 4, 0xfff0_fff0);
        r.set_rw(h::PREF_MEMORY_BASE, 4, 0xfff0_fff0);
        r.set_rw(h::PREF_BASE_UPPER32, 4, 0xffff_ffff);
        r.set_rw(h::PREF_LIMIT_UPPER32, 4, 0xffff_ffff);
        r.set_rw(h::BRIDGE_CONTROL, 2, 0x007f);
    }

    /// A configuration space presenting `image` (up to 4096 bytes; the rest reads as zero),
    /// entirely read-only. The replay device starts here and then opens up fields.
    pub fn from_image(image: &[u8]) -> Self {
        let ht = match image.get(h::HEADER_TYPE).copied().unwrap_or(0) & h::HEADER_TYPE_MASK {
            h::HEADER_TYPE_BRIDGE => HeaderType::Bridge,
            _ => HeaderType::Endpoint,
        };
        let mut s = Self::blank(ht);
        s.regs
            .load(0, &image[..image.len().min(spec::CONFIG_SPACE_SIZE)]);
        s
    }

    fn blank(header_type: HeaderType) -> Self {
        Self {
            header_type,
            regs: RegisterBlock::new(spec::CONFIG_SPACE_SIZE),
            caps: Vec::new(),
            next_std: spec::CAP_START,
            next_ext: spec::EXT_CAP_START,
            last_std: None,
            last_ext: None,
            flr_pending: false,
        }
    }

    fn init_ids(&mut self, ids: FunctionIds, ty: u8) {
        let r = &mut self.regs;
        r.init(h::VENDOR_ID, 2, ids.vendor_id as u64);
        r.init(h::DEVICE_ID, 2, ids.device_id as u64);
        r.init(h::REVISION_ID, 1, ids.revision as u64);
        r.init(h::CLASS_PROG, 3, (ids.class_code & 0xff_ffff) as u64);
        let mf = if ids.multifunction {
            h::HEADER_TYPE_MULTIFUNCTION
        } else {
            0
        };
        r.init(h::HEADER_TYPE, 1, (ty | mf) as u64);
        r.init(h::INTERRUPT_PIN, 1, ids.interrupt_pin.min(4) as u64);
    }

    pub(crate) fn common_masks(&mut self) {
        let r = &mut self.regs;
        r.set_rw(h::COMMAND, 2, command::WRITABLE as u64);
        r.set_w1c(h::STATUS, 2, status::RW1C as u64);
        r.set_rw(h::CACHE_LINE_SIZE, 1, 0xff);
        r.set_rw(h::INTERRUPT_LINE, 1, 0xff);
    }

    /// Header layout.
    pub fn header_type(&self) -> HeaderType {
        self.header_type
    }

    pub(crate) fn regs_mut(&mut self) -> &mut RegisterBlock {
        &mut self.regs
    }

    /// Declares BAR `index` (a 64-bit BAR also takes `index + 1`).
    pub fn set_bar(&mut self, index: usize, bar: Bar) -> Result<(), PciError> {
        let slots = self.header_type.bar_slots();
        if index >= slots {
            return Err(PciError::BarIndex { index, slots });
        }
        if index > 0 {
            let prev = self.regs.u32(h::BAR0 + 4 * (index - 1));
            if prev & b::IO_SPACE == 0 && prev & b::MEM_TYPE_MASK == b::MEM_TYPE_64 {
                return Err(PciError::SlotTaken { index });
            }
        }
        bar.install(&mut self.regs, h::BAR0 + 4 * index, index, slots)
    }

    /// Declares an expansion ROM of `size` bytes (a power of two, at least 2 KiB).
    pub fn set_expansion_rom(&mut self, size: u32) -> Result<(), PciError> {
        if !size.is_power_of_two() || size < 2048 {
            return Err(PciError::BadRomSize { size });
        }
        let o = self.header_type.rom_offset();
        self.regs.init(o, 4, 0);
        self.regs.set_rw(
            o,
            4,
            ((!(size - 1) & b::ROM_ADDRESS_MASK) | b::ROM_ENABLE) as u64,
        );
        Ok(())
    }

    /// Adds a capability at the next free offset of its list and links it into the chain.
    /// Returns its offset.
    pub fn add_capability(&mut self, cap: Box<dyn Capability>) -> Result<u16, PciError> {
        let id = cap.id();
        let len = cap.len().max(id.header_len());
        let (cursor, limit) = if id.is_extended() {
            (self.next_ext, spec::CONFIG_SPACE_SIZE)
        } else {
            (self.next_std, spec::LEGACY_CONFIG_SIZE)
        };
        let offset = cursor;
        if offset + len > limit {
            return Err(PciError::NoRoom {
                name: cap.name(),
                len,
            });
        }
        let next_free = (offset + len + 3) & !3;
        match id {
            CapabilityId::Standard(cid) => {
                self.regs.init(offset, 2, cid as u64);
                match self.last_std {
                    Some(prev) => self.regs.init(prev + 1, 1, offset as u64),
                    None => {
                        self.regs.init(h::CAPABILITIES_POINTER, 1, offset as u64);
                        let st = self.regs.u16(h::STATUS) | status::CAPABILITIES_LIST;
                        self.regs.init(h::STATUS, 2, st as u64);
                    }
                }
                self.last_std = Some(offset);
                self.next_std = next_free;
            }
            CapabilityId::Extended { id: eid, version } => {
                self.regs.init(
                    offset,
                    4,
                    (eid as u32 | ((version as u32 & 0xf) << 16)) as u64,
                );
                if let Some(prev) = self.last_ext {
                    let hdr = self.regs.u32(prev) & 0x000f_ffff;
                    self.regs
                        .init(prev, 4, (hdr | ((offset as u32) << 20)) as u64);
                }
                self.last_ext = Some(offset);
                self.next_ext = next_free;
            }
        }
        self.caps.push(Placed { offset, cap });
        Ok(offset as u16)
    }

    /// Places a capability at `offset` without touching the list headers already in the
    /// image (the replay device, whose chain comes verbatim from a dump).
    pub fn attach_capability(
        &mut self,
        offset: u16,
        cap: Box<dyn Capability>,
    ) -> Result<(), PciError> {
        let offset = offset as usize;
        let end = offset + cap.len();
        let limit = if cap.id().is_extended() {
            spec::CONFIG_SPACE_SIZE
        } else {
            spec::LEGACY_CONFIG_SIZE
        };
        if offset < spec::CAP_START || end > limit {
            return Err(PciError::BadCapabilityOffset {
                offset,
                len: cap.len(),
            });
        }
        if self
            .caps
            .iter()
            .any(|p| p.offset < end && offset < p.offset + p.cap.len())
        {
            return Err(PciError::BadCapabilityOffset {
                offset,
                len: cap.len(),
            });
        }
        self.caps.push(Placed { offset, cap });
        Ok(())
    }

    fn cap_index_at(&self, o: usize) -> Option<usize> {
        self.caps.iter().position(|p| p.body().contains(&o))
    }

    fn next_body_start_after(&self, o: usize) -> usize {
        self.caps
            .iter()
            .map(|p| p.body().start)
            .filter(|&s| s > o)
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Reads `buf.len()` bytes at `offset` (beyond 4 KiB reads as zero, like an unimplemented
    /// register).
    pub fn read(&self, offset: usize, buf: &mut [u8]) {
        if offset >= spec::CONFIG_SPACE_SIZE {
            buf.fill(0);
            return;
        }
        let buf_len = buf.len().min(spec::CONFIG_SPACE_SIZE - offset);
        let (buf, rest) = buf.split_at_mut(buf_len);
        rest.fill(0);
        let mut i = 0;
        while i < buf.len() {
            let o = offset + i;
            let n = if let Some(ci) = self.cap_index_at(o) {
                let p = &self.caps[ci];
                let n = (p.body().end - o).min(buf.len() - i);
                p.cap.read(o - p.offset, &mut buf[i..i + n]);
                n
            } else {
                let n = (self.next_body_start_after(o) - o).min(buf.len() - i);
                self.regs.read(o, &mut buf[i..i + n]);
                n
            };
            i += n;
        }
    }

    /// A configuration write at `offset`. Applies every mask, runs capability side effects,
    /// and performs a Function Level Reset when one was initiated (see
    /// [`ConfigSpace::take_flr`]). Bytes beyond 4 KiB are dropped. Returns what the write
    /// asked the device to do.
    pub fn write(&mut self, offset: usize, data: &[u8]) -> CapEvent {
        let mut ev = CapEvent::default();
        if offset >= spec::CONFIG_SPACE_SIZE {
            return ev;
        }
        let data = &data[..data.len().min(spec::CONFIG_SPACE_SIZE - offset)];
        let mut i = 0;
        while i < data.len() {
            let o = offset + i;
            if let Some(ci) = self.cap_index_at(o) {
                let p = &mut self.caps[ci];
                let n = (p.body().end - o).min(data.len() - i);
                ev = ev.merge(p.cap.write(o - p.offset, &data[i..i + n]));
                i += n;
            } else {
                let n = (self.next_body_start_after(o) - o).min(data.len() - i);
                self.regs.write(o, &data[i..i + n]);
                i += n;
            }
        }
        if ev.function_level_reset {
            self.reset();
            self.flr_pending = true;
        }
        ev
    }

    /// A CfgWr as it arrives in a TLP: the dword at `dword_offset` (a multiple of 4) with
    /// `byte_enables` (bit n = byte n of `value`, little-endian). Each run of enabled bytes is
    /// written as one access; non-contiguous enables are allowed for configuration writes.
    pub fn write_dword(&mut self, dword_offset: usize, value: u32, byte_enables: u8) -> CapEvent {
        let bytes = value.to_le_bytes();
        let base = dword_offset & !3;
        let mut ev = CapEvent::default();
        let mut i = 0;
        while i < 4 {
            if byte_enables & (1 << i) == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < 4 && byte_enables & (1 << i) != 0 {
                i += 1;
            }
            ev = ev.merge(self.write(base + start, &bytes[start..i]));
        }
        ev
    }

    /// 32-bit read (little-endian).
    pub fn read_u32(&self, offset: usize) -> u32 {
        let mut b = [0; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }
    /// 16-bit read.
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }
    /// 8-bit read.
    pub fn read_u8(&self, offset: usize) -> u8 {
        let mut b = [0; 1];
        self.read(offset, &mut b);
        b[0]
    }
    /// 32-bit write.
    pub fn write_u32(&mut self, offset: usize, v: u32) -> CapEvent {
        self.write(offset, &v.to_le_bytes())
    }
    /// 16-bit write.
    pub fn write_u16(&mut self, offset: usize, v: u16) -> CapEvent {
        self.write(offset, &v.to_le_bytes())
    }

    /// The whole 4 KiB as the driver would read it.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut v = vec![0; spec::CONFIG_SPACE_SIZE];
        self.read(0, &mut v);
        v
    }

    /// The write semantics of the byte at `offset` (what a configuration write may change).
    pub fn byte_mask(&self, offset: usize) -> ByteMask {
        match self.cap_index_at(offset) {
            Some(ci) => {
                let p = &self.caps[ci];
                p.cap.regs().mask(offset - p.offset)
            }
            None => self.regs.mask(offset),
        }
    }

    /// Conventional reset: every register and capability back to its default.
    pub fn reset(&mut self) {
        self.regs.reset();
        for p in &mut self.caps {
            p.cap.reset();
        }
    }

    /// True (once) after a Function Level Reset was performed by a configuration write: the
    /// device must now reset its own state (queues, DMA, interrupts).
    pub fn take_flr(&mut self) -> bool {
        std::mem::take(&mut self.flr_pending)
    }

    /// Command register.
    pub fn command(&self) -> u16 {
        self.regs.u16(h::COMMAND)
    }
    /// Memory Space Enable: memory BARs decode.
    pub fn memory_enabled(&self) -> bool {
        self.command() & command::MEMORY_SPACE != 0
    }
    /// I/O Space Enable: I/O BARs decode.
    pub fn io_enabled(&self) -> bool {
        self.command() & command::IO_SPACE != 0
    }
    /// Bus Master Enable: the function may issue DMA and MSI/MSI-X writes.
    pub fn bus_master_enabled(&self) -> bool {
        self.command() & command::BUS_MASTER != 0
    }
    /// Interrupt Disable: INTx messages must not be sent.
    pub fn intx_disabled(&self) -> bool {
        self.command() & command::INTX_DISABLE != 0
    }
    /// Status register.
    pub fn status(&self) -> u16 {
        self.regs.u16(h::STATUS)
    }
    /// Device side: Interrupt Status reflects the INTx line state.
    pub fn set_intx_status(&mut self, asserted: bool) {
        if asserted {
            self.regs.set_bits16(h::STATUS, status::INTERRUPT_STATUS);
        } else {
            self.regs.clear_bits16(h::STATUS, status::INTERRUPT_STATUS);
        }
    }
    /// Device side: sets error bits of the Status register (e.g.
    /// `spec::status::SIGNALED_TARGET_ABORT` when completing with Completer Abort).
    pub fn signal_status(&mut self, bits: u16) {
        self.regs.set_bits16(h::STATUS, bits & status::RW1C);
    }

    /// Every implemented BAR with its programmed address and size.
    pub fn bars(&self) -> Vec<BarValue> {
        decode_all(&self.regs, h::BAR0, self.header_type.bar_slots()).collect()
    }

    /// BAR `index` as programmed, if implemented (no allocation).
    pub fn bar(&self, index: usize) -> Option<BarValue> {
        decode_all(&self.regs, h::BAR0, self.header_type.bar_slots()).find(|v| v.index == index)
    }

    /// The BAR that decodes `address` (memory or I/O) right now, honouring the Command
    /// register's decode enables, with the offset inside it. Does not allocate (MMIO path).
    pub fn decode(&self, address: u64, io: bool) -> Option<(usize, u64)> {
        let enabled = if io {
            self.io_enabled()
        } else {
            self.memory_enabled()
        };
        if !enabled {
            return None;
        }
        decode_all(&self.regs, h::BAR0, self.header_type.bar_slots())
            .filter(|v| v.io == io && v.size > 0 && v.address != 0)
            .find(|v| address >= v.address && address - v.address < v.size)
            .map(|v| (v.index, address - v.address))
    }

    /// Type 1: (primary, secondary, subordinate) bus numbers.
    pub fn bus_numbers(&self) -> (u8, u8, u8) {
        (
            self.regs.u8(h::PRIMARY_BUS),
            self.regs.u8(h::SECONDARY_BUS),
            self.regs.u8(h::SUBORDINATE_BUS),
        )
    }
    /// Type 1: the memory window `[base, limit]`, `None` when closed (base > limit).
    pub fn memory_window(&self) -> Option<(u64, u64)> {
        let base = ((self.regs.u16(h::MEMORY_BASE) & 0xfff0) as u64) << 16;
        let limit = (((self.regs.u16(h::MEMORY_LIMIT) & 0xfff0) as u64) << 16) | 0xf_ffff;
        (base <= limit).then_some((base, limit))
    }
    /// Type 1: the prefetchable memory window, 64-bit.
    pub fn prefetchable_window(&self) -> Option<(u64, u64)> {
        let base = ((self.regs.u32(h::PREF_BASE_UPPER32) as u64) << 32)
            | (((self.regs.u16(h::PREF_MEMORY_BASE) & 0xfff0) as u64) << 16);
        let limit = ((self.regs.u32(h::PREF_LIMIT_UPPER32) as u64) << 32)
            | (((self.regs.u16(h::PREF_MEMORY_LIMIT) & 0xfff0) as u64) << 16)
            | 0xf_ffff;
        (base <= limit).then_some((base, limit))
    }
    /// Type 1: the I/O window (16-bit decode).
    pub fn io_window(&self) -> Option<(u32, u32)> {
        let base = ((self.regs.u8(h::IO_BASE) & 0xf0) as u32) << 8;
        let limit = (((self.regs.u8(h::IO_LIMIT) & 0xf0) as u32) << 8) | 0xfff;
        (base <= limit).then_some((base, limit))
    }
    /// Type 1: Bridge Control register.
    pub fn bridge_control(&self) -> u16 {
        self.regs.u16(h::BRIDGE_CONTROL)
    }

    /// The attached capability objects: (offset, id, name), in the order they were added.
    pub fn capabilities(&self) -> impl Iterator<Item = (u16, CapabilityId, &'static str)> + '_ {
        self.caps
            .iter()
            .map(|p| (p.offset as u16, p.cap.id(), p.cap.name()))
    }

    /// The first capability of type `T`.
    pub fn capability<T: Capability>(&self) -> Option<&T> {
        self.caps
            .iter()
            .find_map(|p| p.cap.as_any().downcast_ref::<T>())
    }
    /// The first capability of type `T`, mutable.
    pub fn capability_mut<T: Capability>(&mut self) -> Option<&mut T> {
        self.caps
            .iter_mut()
            .find_map(|p| p.cap.as_any_mut().downcast_mut::<T>())
    }
    /// Offset of the first capability of type `T`.
    pub fn capability_offset<T: Capability>(&self) -> Option<u16> {
        self.caps
            .iter()
            .find(|p| p.cap.as_any().is::<T>())
            .map(|p| p.offset as u16)
    }
    /// Shortcut: the MSI-X capability.
    pub fn msix(&self) -> Option<&MsixCap> {
        self.capability()
    }
    /// Shortcut: the MSI-X capability, mutable (to raise vectors, serve table accesses).
    pub fn msix_mut(&mut self) -> Option<&mut MsixCap> {
        self.capability_mut()
    }
    /// Shortcut: the MSI capability, mutable.
    pub fn msi_mut(&mut self) -> Option<&mut MsiCap> {
        self.capability_mut()
    }
    /// Shortcut: the PCI Express capability.
    pub fn pcie(&self) -> Option<&PciExpressCap> {
        self.capability()
    }
    /// Shortcut: the PCI Express capability, mutable (slot events on a root port).
    pub fn pcie_mut(&mut self) -> Option<&mut PciExpressCap> {
        self.capability_mut()
    }
}
