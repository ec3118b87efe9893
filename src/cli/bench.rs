//! `pcietun bench SCENARIO`: the benchmark harness. Every scenario measures the raw path in
//! the same run and reports our figures as ratios to it (DESIGN.md "How we test" 5). One file
//! per scenario under `bench/`; add mmio-read, dma, nvme as siblings of `transport`.

use std::process::ExitCode;

mod link;
mod stats;
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
}

pub fn run(args: BenchArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    match args.scenario {
        Scenario::Transport(a) => transport::run(a),
    }
}
