//! `pcietun tlp decode|encode`: a protocol-analyser view of TLP bytes and its JSON form
//! (the schema is in docs/tlp.md; the codec is `pcietun::tlp`).
//!
//! Input comes from the arguments (one TLP or JSON object per argument) or, with none, from
//! stdin (one per line; blank lines and lines starting with `#` are skipped). A line that does
//! not decode gets an error on stderr naming it; the command carries on and exits 1 at the end.

use pcietun::tlp::json::{parse_hex, to_hex, HexError, JsonError, TlpJson};
use pcietun::tlp::Tlp;
use std::io::{BufRead, Write};
use std::process::ExitCode;

/// Arguments of `pcietun tlp`.
#[derive(Debug, clap::Args)]
pub struct TlpArgs {
    #[command(subcommand)]
    command: TlpCommand,
}

#[derive(Debug, clap::Subcommand)]
enum TlpCommand {
    /// Decode TLPs given as hex (whitespace, `_` and `0x` allowed) and print them like a
    /// protocol analyser, or as JSON lines.
    Decode {
        /// Print one JSON object per TLP instead of the analyser line.
        #[arg(long)]
        json: bool,
        /// TLPs in hex, one per argument; read stdin, one per line, when none are given.
        hex: Vec<String>,
    },
    /// Encode TLPs from JSON objects (the `decode --json` schema) and print them as hex.
    Encode {
        /// JSON objects, one per argument; read stdin, one per line, when none are given.
        json: Vec<String>,
    },
}

/// Where an input came from, for error messages.
enum Source {
    Arg,
    Line,
}

fn inputs(args: Vec<String>) -> Box<dyn Iterator<Item = (Source, usize, std::io::Result<String>)>> {
    if args.is_empty() {
        let stdin = std::io::stdin().lock();
        Box::new(
            stdin
                .lines()
                .enumerate()
                .map(|(i, l)| (Source::Line, i + 1, l)),
        )
    } else {
        Box::new(
            args.into_iter()
                .enumerate()
                .map(|(i, a)| (Source::Arg, i + 1, Ok(a))),
        )
    }
}

/// Run `pcietun tlp`.
pub fn run(args: TlpArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let mut out = std::io::stdout().lock();
    let mut failures = 0usize;
    let (is_decode, items) = match args.command {
        TlpCommand::Decode { json, hex } => (Some(json), hex),
        TlpCommand::Encode { json } => (None, json),
    };
    let mut buf = Vec::new();
    for (src, n, line) in inputs(items) {
        let line = line?;
        let text = line.trim();
        if matches!(src, Source::Line) && (text.is_empty() || text.starts_with('#')) {
            continue;
        }
        let what = match src {
            Source::Arg => "argument",
            Source::Line => "line",
        };
        let result = match is_decode {
            Some(json) => decode_one(text, json),
            None => {
                buf.clear();
                TlpJson::from_line(text)
                    .and_then(|j| j.encode(&mut buf))
                    .map(|()| to_hex(&buf))
                    .map_err(LineError::from)
            }
        };
        match result {
            Ok(s) => writeln!(out, "{s}")?,
            Err(e) => {
                out.flush()?;
                eprintln!("pcietun tlp: {what} {n}: {e}");
                failures += 1;
            }
        }
    }
    out.flush()?;
    if failures > 0 {
        eprintln!("pcietun tlp: {failures} input(s) failed");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Why one input line or argument failed.
#[derive(Debug, thiserror::Error)]
enum LineError {
    /// `decode`: the text is not hex bytes.
    #[error(transparent)]
    Hex(#[from] HexError),
    /// `decode`: the bytes are not a TLP.
    #[error(transparent)]
    Tlp(#[from] pcietun::tlp::Error),
    /// `encode`: the JSON does not describe a TLP.
    #[error(transparent)]
    Json(#[from] JsonError),
}

fn decode_one(text: &str, json: bool) -> Result<String, LineError> {
    let bytes = parse_hex(text)?;
    let tlp = Tlp::parse(&bytes)?;
    Ok(if json {
        TlpJson::from_tlp(&tlp).to_line()
    } else {
        tlp.to_string()
    })
}
