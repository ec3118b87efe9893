//! `pcietun keygen` and `pcietun pubkey`: static key files (docs/security.md "Key
//! management"). Parsing and printing only; the key handling is `pcietun::transport::keys`.

use pcietun::transport::{Psk, SecretKey};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use zeroize::Zeroizing;

/// Arguments of `pcietun keygen`.
#[derive(Debug, clap::Args)]
pub struct KeygenArgs {
    /// Where to write the private key (created with mode 0600; an existing file is never
    /// overwritten).
    #[arg(value_name = "FILE")]
    out: PathBuf,
    /// Write a random pre-shared key instead (for `--host NAME=KEY,psk=FILE`, `psk_file` and
    /// the host's `--psk-file`); nothing is printed.
    #[arg(long)]
    psk: bool,
}

/// Arguments of `pcietun pubkey`.
#[derive(Debug, clap::Args)]
pub struct PubkeyArgs {
    /// Private key file (mode 0600 or stricter), or `-` / nothing for standard input.
    #[arg(value_name = "FILE")]
    key: Option<PathBuf>,
}

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Run `pcietun keygen`.
pub fn keygen(a: KeygenArgs) -> Res {
    if a.psk {
        Psk::generate().write_new(&a.out)?;
        eprintln!("pre-shared key written to {}", a.out.display());
        return Ok(ExitCode::SUCCESS);
    }
    let k = SecretKey::generate();
    k.write_new(&a.out)?;
    println!("{}", k.public_key());
    Ok(ExitCode::SUCCESS)
}

/// Run `pcietun pubkey`.
pub fn pubkey(a: PubkeyArgs) -> Res {
    let key = match a.key {
        Some(p) if p.as_os_str() != "-" => SecretKey::from_file(&p)?,
        _ => {
            let mut text = Zeroizing::new(String::new());
            std::io::stdin().take(256).read_to_string(&mut text)?;
            SecretKey::from_base64(&text, "standard input")?
        }
    };
    println!("{}", key.public_key());
    Ok(ExitCode::SUCCESS)
}
