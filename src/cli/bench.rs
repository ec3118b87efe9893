//! `pcietun bench SCENARIO`: the benchmark harness. Every scenario measures the raw path in
//! the same run and reports our figures as ratios to it (docs/bench.md). One file
//! per scenario under `bench/`; add mmio-read, dma, nvme as siblings of `transport`.

use std::process::ExitCode;

mod common;
mod dma;
mod error;
mod link;
mod mmio;
mod nvme;
mod peer;
mod plot;
mod policy;
mod raw;
mod sessions;
pub(crate) use link::LinkKind;
pub(crate) mod rig;
mod stats;
mod trace;
mod transport;

/// Arguments of `pcietun bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, clap::Subcommand)]
enum Scenario {
    /// Transport latency and throughput against plain UDP / AF_PACKET on the same path.
    Transport(transport::TransportArgs),
    /// 4-byte MMIO read round trips (p50/p99/p99.9) against a raw ping-pong.
    MmioRead(mmio::MmioArgs),
    /// Posted MMIO write rate against raw datagrams per second.
    MmioWrite(mmio::MmioArgs),
    /// DMA engine reading host memory, 4 KiB…1 MiB: GB/s against a raw blast.
    DmaRead(dma::DmaArgs),
    /// DMA engine writing host memory, 4 KiB…1 MiB: GB/s against a raw blast.
    DmaWrite(dma::DmaArgs),
    /// 4 KiB random read/write at QD1 and QD32 through the user-space NVMe driver.
    Nvme(nvme::NvmeArgs),
    /// Many host sessions on one appliance: memory per session, CPU per TLP, MMIO read
    /// latency at 1, 16 and 256 sessions against the single-session figures.
    Sessions(sessions::SessionsArgs),
    /// A DMA engine function uncapped, capped at a quarter of that (DMA writes: upstream
    /// cap; DMA reads: downstream cap), then lifted: measured / cap and the recovery time.
    Policy(policy::PolicyArgs),
}

pub fn run(args: BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.scenario {
        Scenario::Transport(a) => transport::run(a),
        Scenario::MmioRead(a) => mmio::run_read(a),
        Scenario::MmioWrite(a) => mmio::run_write(a),
        Scenario::DmaRead(a) => dma::run(a, pcietun::drivers::dma_engine::Direction::DmaRead),
        Scenario::DmaWrite(a) => dma::run(a, pcietun::drivers::dma_engine::Direction::DmaWrite),
        Scenario::Nvme(a) => nvme::run(a),
        Scenario::Sessions(a) => sessions::run(a),
        Scenario::Policy(a) => policy::run(a),
    }
}
