//! User-space drivers that sit on the host's [`RemoteFunction`](crate::host::RemoteFunction)
//! API: they reach their card's registers with BAR reads and writes through the tunnel, give it
//! host memory with `register_dma`, and wait for its MSI-X interrupts on eventfds — the way a
//! VFIO or SPDK driver drives a local card.
//!
//! * [`mem`] — [`DmaBuffer`](mem::DmaBuffer), host memory a driver registers for its card.
//! * [`nvme`] — an NVMe 1.4 driver: controller bring-up, admin queue, Identify, I/O queue
//!   pairs, Read/Write with PRP lists, completions by polling or MSI-X, queue depth up to 255.
//! * [`dma_engine`] — the driver of the DMA engine test device (docs/appliance.md).
//!
//! Layering: drivers import `host` (and nothing above it); the CLI's demo and benchmarks use
//! them.

pub mod dma_engine;
pub mod mem;
pub mod nvme;

/// How a driver learns that its card finished something.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Completion {
    /// Poll (host memory for NVMe completion queues, the STATUS register for the DMA engine).
    Poll,
    /// Sleep on the MSI-X vector's eventfd.
    #[default]
    Interrupt,
}

#[cfg(test)]
mod tests;
