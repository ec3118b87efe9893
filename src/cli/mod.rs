//! Command-line front-end: one `pcietun` command with a subcommand per job.
//!
//! Each subcommand lives in its own file; this module only parses arguments and dispatches.

use clap::{Parser, Subcommand};
use std::process::ExitCode;

mod demo;
mod tlp;

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
    /// Decode and encode PCIe TLPs (protocol-analyser and JSON views).
    Tlp(tlp::TlpArgs),
}

/// Parse the command line and run the chosen subcommand.
pub fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Tlp(args) => tlp::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("pcietun: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
