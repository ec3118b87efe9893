//! Per-function and per-host traffic as the pool's router and the transport count it: what the
//! control API's snapshots carry and `/metrics` exports (docs/api.md, "Metrics").

/// The traffic of one function since it joined the pool (monotonic; a card added later at
/// the same device number starts from zero). *Downstream* is host → function (MMIO requests,
/// completions of the function's DMA reads), *upstream* function → host (completions of MMIO
/// reads, DMA requests, interrupt messages). Counted by the router, which sees every TLP of
/// every session: allocation-free, one array indexed by device/function number.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FunctionTraffic {
    /// TLPs host → function.
    pub tlps_down: u64,
    /// TLPs function → host.
    pub tlps_up: u64,
    /// Bytes of those TLPs (header and data) host → function.
    pub bytes_down: u64,
    /// Bytes of those TLPs (header and data) function → host.
    pub bytes_up: u64,
    /// Data bytes the function read from its host's memory (successful DMA read completions).
    pub dma_read_bytes: u64,
    /// Data bytes the function wrote to its host's memory (DMA writes, not interrupts).
    pub dma_write_bytes: u64,
    /// Interrupts sent: MSI/MSI-X writes (into [`X86_MSI_WINDOW`]) and INTx Assert messages.
    ///
    /// [`X86_MSI_WINDOW`]: crate::pci::caps::X86_MSI_WINDOW
    pub interrupts: u64,
    /// The host's requests to this function it answered with Unsupported Request.
    pub unsupported_requests: u64,
    /// The host's requests to this function it answered with Completer Abort.
    pub completer_aborts: u64,
    /// The function's DMA reads that got no completion in time.
    pub completion_timeouts: u64,
    /// Nanoseconds its TLPs waited for the upstream bandwidth cap (`appliance::policy`).
    pub throttled_nanos_up: u64,
    /// Nanoseconds its DMA read requests waited for the downstream bandwidth cap.
    pub throttled_nanos_down: u64,
    /// Nanoseconds its non-posted requests waited for the IOPS cap.
    pub throttled_nanos_iops: u64,
}

/// The transport traffic of one host over all its sessions since the appliance started
/// (monotonic: a new session continues where the last one ended).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostTraffic {
    /// TLPs received from the host.
    pub tlps_down: u64,
    /// TLPs sent to the host (first transmissions).
    pub tlps_up: u64,
    /// Frame bytes received from the host.
    pub bytes_down: u64,
    /// Frame bytes sent to the host.
    pub bytes_up: u64,
    /// TLP retransmissions to the host.
    pub retransmits: u64,
    /// Times TLPs for the host waited for credits.
    pub credit_stalls: u64,
}

impl HostTraffic {
    /// The counters of one session.
    pub fn of_session(s: &crate::transport::Stats) -> HostTraffic {
        HostTraffic {
            tlps_down: s.tlps_delivered,
            tlps_up: s.tlps_sent,
            bytes_down: s.bytes_received,
            bytes_up: s.bytes_sent,
            retransmits: s.retransmits,
            credit_stalls: s.credit_stalls,
        }
    }

    /// `self` plus `o`, field by field.
    pub fn plus(self, o: HostTraffic) -> HostTraffic {
        HostTraffic {
            tlps_down: self.tlps_down + o.tlps_down,
            tlps_up: self.tlps_up + o.tlps_up,
            bytes_down: self.bytes_down + o.bytes_down,
            bytes_up: self.bytes_up + o.bytes_up,
            retransmits: self.retransmits + o.retransmits,
            credit_stalls: self.credit_stalls + o.credit_stalls,
        }
    }
}
