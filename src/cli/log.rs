//! Logging for the long-running commands (`pcietun appliance`, `pcietun host`): one `tracing`
//! subscriber on stderr, filtered by `RUST_LOG` (`tracing_subscriber::EnvFilter` syntax,
//! default `info`), as text or as JSON lines (`--log-format json`, one object per event with
//! `timestamp`, `level`, `target`, `fields`).
//!
//! What is logged is the library's business. Key material must never be (docs/security.md);
//! `tests/log_format.rs` runs both processes at `RUST_LOG=trace` and looks for the key's bytes
//! in everything they print. Warnings a peer can provoke at will are rate-limited where they
//! are raised (`pcietun::ratelimit`).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log collectors).
    Json,
}

/// The logging flags, shared by the commands that log.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log line format on stderr; the level comes from RUST_LOG (default: info).
    #[arg(long, value_enum, global = true, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The filter: `RUST_LOG` if set and valid, else `info`. A malformed `RUST_LOG` is reported
/// once on stderr rather than silently ignored.
fn filter() -> EnvFilter {
    match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("pcietun: warning: RUST_LOG={spec:?} ignored: {e}");
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    }
}

/// Install the process's subscriber (once; a second call changes nothing).
pub fn init(args: &LogArgs) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(false)
            .with_current_span(false)
            .try_init(),
    };
}
