//! Command-line front-end: one `pcietun` command with a subcommand per job.
//!
//! Each subcommand lives in its own file; this module only parses arguments and dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod appliance;
mod demo;

/// PCIe-over-Ethernet tunnelling.
#[derive(Debug, Parser)]
#[command(name = "pcietun", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the main job end to end on an embedded default (no configuration needed).
    Demo(demo::DemoArgs),
    /// Run the appliance: the cards it fronts (NVMe, DMA engine, replay) behind the tunnel.
    Appliance(appliance::ApplianceArgs),
}

/// Parse the command line and run the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Appliance(args) => appliance::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pcietun: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
