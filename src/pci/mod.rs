//! Configuration space: type 0/1 headers, BARs, capability lists, register masks, and the
//! `lspci -xxxx` text format — shared by the appliance's device models and the host's
//! virtual root port.
//!
//! * [`ConfigSpace`] — the emulator of one function (4 KiB, PCIe Base 4.0 §7).
//! * [`caps`] — capabilities as types behind [`Capability`]: PM, MSI, MSI-X, PCI Express
//!   (endpoint and root port with hot-plug slot), AER, SR-IOV, ARI, raw.
//! * [`lspci`] — parse and write `lspci -xxxx` dumps (what `lspci -F` reads).
//! * [`replay`] — a configuration space that presents a real card's dump exactly.
//! * [`spec`] — the register offsets and bits, in one place.
//! * [`vfio_user`] — the vfio-user message codec (header and command bodies), shared by the
//!   host's vfio-user server and the appliance's vfio-user client.
//! * [`class`] — register interfaces of device classes (NVMe, the DMA engine): what a model and
//!   its driver share.
//!
//! See `docs/pci.md` for how a device model and a root port use it.

mod bar;
pub mod caps;
pub mod class;
mod config;
pub mod lspci;
mod regs;
pub mod replay;
pub mod spec;
pub mod vfio_user;
mod walk;

pub use bar::{Bar, BarValue};
pub use caps::{
    AerCap, AriCap, CapEvent, Capability, CapabilityId, ExpressConfig, MsiCap, MsixCap, MsixEntry,
    PciExpressCap, PmCap, PortType, RawCapability, SlotConfig, SriovCap, SriovConfig,
};
pub use caps::{InterruptOutcome, MsiMessage};
pub use config::{ConfigSpace, FunctionIds, HeaderType};
pub use regs::{ByteMask, RegisterBlock};
pub use walk::{walk_capabilities, FoundCapability};

/// Errors building a configuration space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PciError {
    /// A BAR size that is not a power of two in the allowed range.
    #[error("BAR {index}: size {size:#x} must be a power of two between {min:#x} and {max:#x}")]
    BadBarSize {
        /// BAR slot.
        index: usize,
        /// Requested size.
        size: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A 64-bit BAR in the last slot.
    #[error("BAR {index}: a 64-bit BAR needs the next slot too, and there is none")]
    Bar64NoRoom {
        /// BAR slot.
        index: usize,
    },
    /// The slot holds the upper half of a 64-bit BAR.
    #[error("BAR {index} is the upper half of the 64-bit BAR before it")]
    SlotTaken {
        /// BAR slot.
        index: usize,
    },
    /// A BAR slot the header does not have.
    #[error("BAR {index} does not exist (this header has {slots} BARs)")]
    BarIndex {
        /// Requested slot.
        index: usize,
        /// Slots available.
        slots: usize,
    },
    /// An expansion ROM size that is not a power of two of at least 2 KiB.
    #[error("expansion ROM size {size:#x} must be a power of two of at least 2 KiB")]
    BadRomSize {
        /// Requested size.
        size: u32,
    },
    /// The capability list area is full.
    #[error("no room left for the {name} capability ({len} bytes)")]
    NoRoom {
        /// Capability name.
        name: &'static str,
        /// Its length.
        len: usize,
    },
    /// A capability placed outside its area or over another one.
    #[error(
        "capability at {offset:#x} ({len} bytes) is outside its list area or overlaps another"
    )]
    BadCapabilityOffset {
        /// Offset asked for.
        offset: usize,
        /// Capability length.
        len: usize,
    },
}
