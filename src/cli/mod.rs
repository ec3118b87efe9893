//! Command-line front-end: one `pcietun` command with a subcommand per job.
//!
//! Each subcommand lives in its own file; this module only parses arguments and dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod appliance;
mod bench;
mod ctl;
mod demo;
mod host;
mod keys;
mod log;
mod pool;
mod tlp;
mod transport_peer;

/// PCIe-over-Ethernet tunnelling.
#[derive(Debug, Parser)]
#[command(name = "pcietun", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Debug, Subcommand)]
enum CliCommand {
    /// Run the main job end to end on an embedded default (no configuration needed).
    Demo(demo::DemoArgs),
    /// Decode and encode PCIe TLPs (protocol-analyser and JSON views).
    Tlp(tlp::TlpArgs),
    /// Measure against the raw network path in the same run (table + --json).
    Bench(bench::BenchArgs),
    /// Test helper: a bare transport endpoint (echo server or checking client).
    #[command(hide = true, name = "transport-peer")]
    TransportPeer(transport_peer::PeerArgs),
    /// Run the appliance: the cards it fronts (NVMe, DMA engine, replay) behind the tunnel.
    Appliance(appliance::ApplianceArgs),
    /// Run the host agent (a root port per appliance, vfio-user sockets) or its operator tools.
    Host(host::HostArgs),
    /// Create a static key pair: write the private key file (mode 0600), print the public key.
    Keygen(keys::KeygenArgs),
    /// Print the public key of a private key file (or of a key on standard input).
    Pubkey(keys::PubkeyArgs),
    /// Manage the appliance through its API: devices, hosts, assign, unassign.
    Ctl(ctl::CtlArgs),
}

/// Parse the command line and run the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        CliCommand::Demo(args) => demo::run(args),
        CliCommand::Tlp(args) => tlp::run(args),
        CliCommand::Bench(args) => bench::run(args),
        CliCommand::TransportPeer(args) => transport_peer::run(args),
        CliCommand::Appliance(args) => appliance::run(args),
        CliCommand::Host(args) => host::run(args),
        CliCommand::Keygen(args) => keys::keygen(args),
        CliCommand::Pubkey(args) => keys::pubkey(args),
        CliCommand::Ctl(args) => ctl::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pcietun: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
