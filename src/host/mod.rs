//! Host side of the tunnel: what a server that *uses* remote cards runs (DESIGN.md "Front-ends
//! on the host").
//!
//! * [`dma`] — the DMA windows of each function, an IOMMU in software.
//! * [`requester`] — tags, outstanding requests, completion reassembly and timeout.
//! * [`vfio_user`] — the vfio-user server that hands a function to a VM or another consumer.

pub mod dma;
pub mod requester;
pub mod vfio_user;
