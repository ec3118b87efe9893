//! The `pcietun` command: appliance, host agent, benchmark harness and operator tools.

// Raw system calls go through `pcietun::sys`.
#![deny(unsafe_code)]

fn main() -> std::process::ExitCode {
    pcietun_cli::run()
}

#[path = "cli/mod.rs"]
mod pcietun_cli;
