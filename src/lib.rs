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
//! `docs/architecture.md`. [`sys`] stands beside the layers: the system calls, behind safe
//! wrappers, and the only module allowed `unsafe`; so does [`ratelimit`], the token bucket
//! that keeps warnings a peer can provoke from flooding the log.

#![forbid(unsafe_op_in_unsafe_fn)]
// Raw system calls live in `sys`, the one module allowed `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod drivers;
pub mod endpoint;
pub mod host;
pub mod pci;
pub mod ratelimit;
pub mod sys;
pub mod tlp;
pub mod transport;
