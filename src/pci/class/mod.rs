//! Register interfaces of device classes: what a device model and its driver share.
//!
//! A card's programming interface — BAR register offsets and bits, the byte layout of the
//! structures it exchanges with its driver through host memory (queue entries, identify
//! pages, log pages), opcodes and status codes — is written here once. The appliance's models
//! (`src/endpoint`) implement it and the host's user-space drivers (`src/drivers`) speak it;
//! both import this module, which sits below them, and so never each other.
//!
//! * [`nvme`] — NVM Express (NVM Express Base Specification 1.4c).
//! * [`dma_engine`] — the DMA engine test device of this project (docs/appliance.md).
//!
//! Byte layouts are `zerocopy` structs with little-endian fields: reading one from untrusted
//! bytes cannot fail or panic (any bit pattern is a value), and each has its size asserted at
//! compile time and its field offsets checked against the specification's tables in tests.

pub mod dma_engine;
pub mod nvme;

/// PCI vendor ID the project's device models use by default (the range Red Hat reserves for
/// virtual devices, as QEMU's models use it; every model lets it be configured).
pub const DEFAULT_VENDOR_ID: u16 = 0x1b36;
