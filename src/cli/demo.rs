//! `pcietun demo`: the newcomer's first run.

use std::process::ExitCode;

/// Arguments of `pcietun demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

pub fn run(_args: DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    println!("pcietun demo: nothing to show yet");
    Ok(ExitCode::SUCCESS)
}
