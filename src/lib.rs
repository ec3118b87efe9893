//! pcietun — PCIe-over-Ethernet tunnelling.
//!
//! Real PCIe cards sit in an *appliance*; servers on an ordinary Ethernet or IP network see
//! them as native PCIe devices and drive them with their own, unmodified drivers.
//!
//! The crate is layered, and imports only ever point down this list:
//!
//! * [`tlp`] — PCIe Transaction Layer Packets: the wire format, no I/O, no allocation on decode.
//!
//! Further layers (`pci`, `transport`, `endpoint`, `host`, `mgmt`) are described in
//! `docs/architecture.md`.

#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_debug_implementations)]

pub mod drivers;
pub mod endpoint;
pub mod host;
pub mod mgmt;
pub mod pci;
pub mod tlp;
pub mod transport;
