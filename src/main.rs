//! The `pcietun` command: appliance, host agent, benchmark harness and operator tools.

fn main() -> std::process::ExitCode {
    pcietun_cli::run()
}

#[path = "cli/mod.rs"]
mod pcietun_cli;
