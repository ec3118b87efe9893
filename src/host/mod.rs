//! Host side of the tunnel: what a server that *uses* remote cards runs (docs/host.md).
//!
//! * [`root`] — the root complex: virtual root port with a hot-plug slot, requester, the
//!   completer for the card's DMA, interrupt delivery; [`Host`] is the entry point.
//! * [`enumerate`] — walking and configuring the functions below the root port.
//! * [`function`] — one tunnelled function: the user-space driver API ([`RemoteFunction`]) and
//!   the vfio-user [`vfio_user::VfioDevice`] behind its socket.
//! * [`dma`] — the DMA windows of each function, an IOMMU in software.
//! * [`requester`] — tags, outstanding requests, completion reassembly and timeout.
//! * [`tlpio`] — the TLPs the host builds and receives; `upstream` — the completer and the
//!   dispatch of what a card sends (completions, DMA, interrupts).
//! * [`vfio_user`] — the vfio-user server that hands a function to a VM or another consumer.
//! * [`control`] — the running agent's control socket (`pcietun host lspci|read|write`).
//! * [`sockfile`] — binding the agent's Unix sockets (one rule: stale replaced, live or
//!   not-a-socket refused); [`names`] — the sanitizer of names from outside.
//! * [`fleet`] — an agent with several appliances at once, one PCI segment each.
//! * [`qmp`] — a client of QEMU's monitor protocol; [`vm`] — hot-adding and removing
//!   tunnelled functions in running VMs through it (docs/vms.md).

pub mod agent;
pub mod control;
pub mod dma;
pub mod enumerate;
pub mod fleet;
pub mod function;
pub mod names;
pub mod qmp;
pub mod requester;
pub mod root;
pub mod sockfile;
pub mod tlpio;
mod upstream;
pub mod vfio_user;
pub mod vm;

pub use function::RemoteFunction;
pub use root::{ChannelDownlink, Downlink, Host, HostConfig, HostEvent, LinkError};
