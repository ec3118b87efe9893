//! pcietun — PCIe-over-Ethernet tunnelling.
//!
//! Real PCIe cards sit in an *appliance*; servers on an ordinary Ethernet or IP network see
//! them as native PCIe devices and drive them with their own, unmodified drivers.
//!
//! The crate is layered, and imports only ever point down this list (`tests/layering.rs`
//! enforces it; `docs/architecture.md` draws the map):
//!
//! * [`tlp`] — PCIe Transaction Layer Packets: wire format, constructors, the requester core.
//! * [`pci`] — configuration space, capabilities, `lspci` text, replay; [`pci::class`] holds
//!   the register interfaces a device model and its driver share.
//! * [`transport`] — reliable, authenticated delivery of TLPs over raw Ethernet and UDP/IP.
//! * [`endpoint`] — the appliance side: endpoint proxy, device trait, device models.
//! * [`host`] — the host side: root port, enumeration, hot-plug slots, DMA windows, vfio-user,
//!   host agent, VM hot-plug.
//!   `endpoint` and `host` never import each other: they meet only on the wire.
//! * [`drivers`] — user-space drivers for our models over the host API.
//! * [`appliance`] — the appliance runtime: configuration, devices, sessions, serving loop.
//!
//! [`sys`] stands beside the layers: the system calls, behind safe wrappers, and the only
//! module allowed `unsafe`; so do [`sync`], the lock helpers (a poisoned lock is recovered),
//! and [`ratelimit`], the token bucket that keeps warnings a peer can provoke from flooding
//! the log, and [`probe`], the event probes that latency breakdowns are measured with.

#![forbid(unsafe_op_in_unsafe_fn)]
// Raw system calls live in `sys`, the one module allowed `unsafe`.
#![deny(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod appliance;
pub mod drivers;
pub mod endpoint;
pub mod host;
pub mod mgmt;
pub mod pci;
pub mod probe;
pub mod ratelimit;
pub mod sync;
pub mod sys;
pub mod tlp;
pub mod transport;
