//! Capabilities as first-class types behind one trait.
//!
//! PCI Local Bus 3.0 §6.7 (capability list) and PCIe Base 4.0 §7.6 (extended capability
//! list). Each capability owns a [`RegisterBlock`] of its full length — header bytes included,
//! though the configuration-space emulator serves the ID / next-pointer bytes itself, so a
//! capability never needs to know where it sits in the chain. Register semantics (RO, RW,
//! RW1C) come from the block's masks; a capability only adds side effects through
//! [`Capability::on_write`].

mod aer;
mod ari;
mod express;
mod msi;
mod msix;
mod pm;
mod sriov;

use std::any::Any;

pub use aer::AerCap;
pub use ari::AriCap;
pub use express::{ExpressConfig, PciExpressCap, PortType, SlotConfig};
pub use msi::{InterruptOutcome, MsiCap, MsiMessage, X86_MSI_WINDOW};
pub use msix::{MsixCap, MsixEntry};
pub use pm::PmCap;
pub use sriov::{SriovCap, SriovConfig};

use super::regs::RegisterBlock;

/// Which list a capability lives in, and its ID.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapabilityId {
    /// A conventional capability (list starting at the Capabilities Pointer, 0x34).
    Standard(u8),
    /// An extended capability (list starting at 0x100) with its version.
    Extended {
        /// The 16-bit ID.
        id: u16,
        /// The 4-bit capability version.
        version: u8,
    },
}

impl CapabilityId {
    /// Bytes of the list header (ID + next pointer): 2 for standard, 4 for extended.
    pub fn header_len(self) -> usize {
        match self {
            CapabilityId::Standard(_) => 2,
            CapabilityId::Extended { .. } => 4,
        }
    }

    /// True for the extended list.
    pub fn is_extended(self) -> bool {
        matches!(self, CapabilityId::Extended { .. })
    }
}

/// Something a configuration write asked the function to do, beyond storing bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapEvent {
    /// The driver initiated a Function Level Reset.
    pub function_level_reset: bool,
    /// A root port's Slot Control register was written (a hot-plug command).
    pub slot_command: bool,
    /// MSI or MSI-X enable / mask state may have changed: deliver pending vectors.
    pub interrupt_config: bool,
    /// SR-IOV VF Enable, VF MSE or NumVFs may have changed.
    pub sriov: bool,
}

impl CapEvent {
    /// Combines two event sets.
    pub fn merge(self, o: CapEvent) -> CapEvent {
        CapEvent {
            function_level_reset: self.function_level_reset || o.function_level_reset,
            slot_command: self.slot_command || o.slot_command,
            interrupt_config: self.interrupt_config || o.interrupt_config,
            sriov: self.sriov || o.sriov,
        }
    }
}

/// A PCI capability structure.
///
/// Implementations keep their registers in a [`RegisterBlock`]; the default methods give the
/// usual semantics, so most capabilities only implement `id`, `regs`, `regs_mut` and the
/// `Any` accessors. Offsets are relative to the start of the capability.
pub trait Capability: std::fmt::Debug + Send + Any {
    /// ID and list.
    fn id(&self) -> CapabilityId;
    /// Human-readable name (for logs and docs).
    fn name(&self) -> &'static str;
    /// The capability's registers, header included.
    fn regs(&self) -> &RegisterBlock;
    /// Mutable registers.
    fn regs_mut(&mut self) -> &mut RegisterBlock;

    /// Length in bytes, header included.
    fn len(&self) -> usize {
        self.regs().len()
    }
    /// True for a zero-length capability (never, for a real one).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads at `offset` (relative to the capability).
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.regs().read(offset, buf)
    }
    /// A configuration write at `offset`: applies the masks, then [`Self::on_write`].
    fn write(&mut self, offset: usize, data: &[u8]) -> CapEvent {
        self.regs_mut().write(offset, data);
        self.on_write(offset, data)
    }
    /// Side effects of a write that already went through the masks.
    fn on_write(&mut self, _offset: usize, _data: &[u8]) -> CapEvent {
        CapEvent::default()
    }
    /// Back to reset defaults (conventional reset or FLR).
    fn reset(&mut self) {
        self.regs_mut().reset()
    }
    /// For typed access through [`crate::pci::ConfigSpace::capability`].
    fn as_any(&self) -> &dyn Any;
    /// For typed access through [`crate::pci::ConfigSpace::capability_mut`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Implements the boilerplate `Capability` accessors for a type with a `regs` field.
macro_rules! cap_boilerplate {
    () => {
        fn regs(&self) -> &$crate::pci::regs::RegisterBlock {
            &self.regs
        }
        fn regs_mut(&mut self) -> &mut $crate::pci::regs::RegisterBlock {
            &mut self.regs
        }
        fn as_any(&self) -> &dyn std::any::Any {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    };
}
pub(crate) use cap_boilerplate;

/// Any other capability: a byte image with a given write mask (read-only by default).
#[derive(Clone, Debug)]
pub struct RawCapability {
    id: CapabilityId,
    regs: RegisterBlock,
}

impl RawCapability {
    /// A read-only capability presenting `image` (header bytes included; they are ignored).
    pub fn new(id: CapabilityId, image: &[u8]) -> Self {
        Self {
            id,
            regs: RegisterBlock::from_image(image),
        }
    }

    /// A capability presenting `image` where bits set in `rw_mask` (same length, shorter
    /// means the rest is read-only) are read-write.
    pub fn with_write_mask(id: CapabilityId, image: &[u8], rw_mask: &[u8]) -> Self {
        let mut c = Self::new(id, image);
        for (i, &m) in rw_mask.iter().enumerate().take(image.len()) {
            c.regs.set_rw(i, 1, m as u64);
        }
        c
    }

    /// Access to the masks for callers that need RW1C fields too.
    pub fn registers_mut(&mut self) -> &mut RegisterBlock {
        &mut self.regs
    }
}

impl Capability for RawCapability {
    fn id(&self) -> CapabilityId {
        self.id
    }
    fn name(&self) -> &'static str {
        "raw"
    }
    cap_boilerplate!();
}
