//! `pcietun appliance`: run the appliance — the cards it fronts (NVMe controllers, DMA engines,
//! replays) behind one endpoint proxy, reachable over the tunnel's listen addresses.
//!
//! This file only parses flags and prints; the runtime is `pcietun::appliance`
//! (configuration schema and behaviour in docs/appliance.md). Everything is validated and every
//! device is built before anything listens: a bad configuration is an error naming the file,
//! the line and what is wrong, and nothing starts half-configured.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

use pcietun::appliance::{Appliance, ApplianceConfig, ConfigFlags, Ready};

/// Arguments of `pcietun appliance`.
#[derive(Debug, clap::Args)]
pub struct ApplianceArgs {
    /// Configuration file (TOML, see docs/appliance.md).
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Listen address: udp:IP:PORT or eth:IFACE (repeatable).
    #[arg(long, value_name = "ADDR")]
    listen: Vec<String>,
    /// Device: nvme=PATH, dma, replay=DUMP[,bar0=SIZE,...] or
    /// vfio-user=SOCKET_PATH[,connect_timeout=SECONDS] (repeatable).
    #[arg(long, value_name = "SPEC")]
    device: Vec<String>,
    /// Our private key file (from `pcietun keygen`; else $PCIETUN_PRIVATE_KEY; else the
    /// development key, loopback only).
    #[arg(long, value_name = "FILE")]
    key: Option<PathBuf>,
    /// A host we accept: NAME=PUBLIC_KEY[,psk=FILE] (repeatable).
    #[arg(long, value_name = "NAME=PUBKEY")]
    host: Vec<String>,
    /// Drop this percentage of sent frames (testing).
    #[arg(long, value_name = "PCT")]
    inject_loss: Option<f64>,
    /// Validate the configuration, build the devices, print what would run, and exit.
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    log: super::log::LogArgs,
}

static STOP: AtomicBool = AtomicBool::new(false);

fn install_signal_handlers() {
    if let Err(e) = pcietun::sys::process::on_terminate(&STOP) {
        tracing::warn!(error = %e, "cannot install the SIGINT/SIGTERM handlers");
    }
}

/// The configuration from the file (if any), the flags on top, then the defaults.
fn resolve(args: &ApplianceArgs) -> Result<ApplianceConfig, Box<dyn std::error::Error>> {
    let mut cfg = match &args.config {
        Some(path) => ApplianceConfig::load(path)?,
        None => ApplianceConfig::default(),
    };
    cfg.apply_flags(&ConfigFlags {
        listen: args.listen.clone(),
        device: args.device.clone(),
        key: args.key.clone(),
        host: args.host.clone(),
        inject_loss: args.inject_loss,
    })?;
    cfg.fill_defaults();
    Ok(cfg)
}

fn joined<T: ToString>(items: &[T], sep: &str) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(sep)
}

/// The one line that says the appliance serves (tests and the demo wait for it).
fn announce(r: &Ready) -> std::io::Result<()> {
    println!(
        "appliance ready: listen {}; {} function(s): {}",
        joined(&r.listen, " "),
        r.functions.len(),
        joined(&r.functions, ", ")
    );
    std::io::stdout().flush()
}

/// Run `pcietun appliance`.
pub fn run(args: ApplianceArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    super::log::init(&args.log);
    let cfg = resolve(&args)?;
    if cfg.uses_development_key() {
        eprintln!(
            "pcietun appliance: warning: no --key/--host given; using the built-in development \
             keys (loopback only) — the link is NOT secure"
        );
    }
    let listen = joined(&cfg.listen, " ");
    let app = Appliance::build(cfg)?;
    for w in app.warnings() {
        eprintln!("pcietun appliance: warning: {w}");
    }
    if args.check {
        let fns = app.functions();
        println!(
            "appliance configuration ok: listen {listen}; {} function(s): {}",
            fns.len(),
            joined(fns, ", ")
        );
        return Ok(ExitCode::SUCCESS);
    }
    install_signal_handlers();
    let counters = app.counters();
    let mut served = false;
    let result = app.serve(&STOP, |r| {
        served = true;
        announce(r)
    });
    if served {
        for l in counters.snapshot().links {
            eprintln!("pcietun appliance: transport {}", l.summary());
        }
        eprintln!("pcietun appliance: stopped");
    }
    result?;
    Ok(ExitCode::SUCCESS)
}
