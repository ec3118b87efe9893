//! The appliance side of the tunnel: the endpoint proxy that terminates TLPs for the cards the
//! appliance fronts, the device trait those cards implement, and the cards themselves.
//!
//! * [`device`] — the [`Device`] trait (rust-vmm shape) and the DMA and
//!   interrupt handles a device gets; a device never sees the network.
//! * [`proxy`] — the sans-I/O [`Proxy`]: TLPs in, TLPs out (completer and requester sides),
//!   time given explicitly by its driver.
//! * [`requester`] — device DMA reads on the shared requester core ([`crate::tlp::requester`]).
//! * [`nvme`] — an NVMe 1.4 controller backed by a file or block device.
//! * [`dma_engine`] — the DMA engine test device the benchmarks drive.
//! * [`replay`] — a real card's configuration space replayed from its `lspci -xxxx` dump.
//! * [`vf_view`] — an SR-IOV virtual function presented to a host as a standalone function
//!   (as Linux `vfio-pci` presents a VF to a VM).
//! * [`vfio_user_client`] — any vfio-user device server as a card: the appliance as a
//!   vfio-user client (codec shared with the host's server, [`crate::pci::vfio_user`]).
//! * [`loopback`] — an in-process TLP pipe with a minimal host, for tests and examples.
//!
//! Module dependencies form a DAG (no two files import each other): `decode` and `msix` are
//! plain state; `requester` holds the DMA queue and the TLP-thread requester; `function` is the
//! state a function's handles share with the proxy; `dma` and `interrupt` are those handles;
//! `device` is the trait and re-exports them; `vf_view` is the synthesised header of a VF
//! presented standalone; `proxied` is the proxy's per-function record; `sriov` creates virtual
//! functions and their views; `proxy` ties it together.
//!
//! Layering: this module imports `tlp` and `pci` (and nothing above); it never imports
//! `host`.

mod decode;
pub mod device;
mod dma;
pub mod dma_engine;
mod function;
pub mod interrupt;
pub mod loopback;
mod msix;
pub mod nvme;
pub mod pcicfg;
mod proxied;
pub mod proxy;
pub mod replay;
pub mod requester;
mod sriov;
pub mod vf_view;
pub mod vfio_user_client;
pub mod wire;

pub use device::{Device, DeviceContext, DeviceError, DmaError, DmaHandle, InterruptHandle};
pub use proxy::{FunctionSet, Proxy, ProxyConfig, ProxyError, ProxyStats};
pub use vf_view::VfError;
pub use wire::Bdf;
