//! `pcietun demo`: the newcomer's first run. Until the tunnel exists it decodes a built-in
//! sample of realistic TLPs — a driver's MMIO read and its completion, a DMA write, an MSI,
//! configuration reads — and prints them the way a protocol analyser does.

use pcietun::tlp::json::parse_hex;
use pcietun::tlp::{classify, Tlp};
use std::process::ExitCode;

/// Arguments of `pcietun demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {}

/// The sample trace: (what happens, TLP bytes in hex).
const SAMPLE: &[(&str, &str)] = &[
    (
        "config read: vendor/device ID of 01:00.0",
        "04000001 0000000f 01000000",
    ),
    (
        "its completion: NVMe controller 144d:a808",
        "4a000001 01000004 00000000 4d1408a8",
    ),
    (
        "driver reads BAR0 CAP (64-bit BAR above 4 GiB)",
        "20000002 00000aff 00000060 00000000",
    ),
    (
        "completion with the 8 bytes",
        "4a000002 01000008 00000a00 ff0f0340 20000000",
    ),
    (
        "device DMA-writes 64 bytes of a completion queue entry page",
        "60000010 010000ff 00000001 7fe0c000 \
         00000000 00000000 00000100 00000001 11111111 22222222 33333333 44444444 \
         55555555 66666666 77777777 88888888 99999999 aaaaaaaa bbbbbbbb cccccccc",
    ),
    (
        "MSI-X: 1 DW posted write to the APIC",
        "40000001 0100000f fee00000 00000041",
    ),
    (
        "legacy interrupt: Assert_INTA",
        "34000000 01000020 00000000 00000000",
    ),
    (
        "a root port reports ERR_COR",
        "30000000 00080030 00000000 00000000",
    ),
];

/// Run `pcietun demo`.
pub fn run(_args: DemoArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    println!("pcietun demo: decoding a built-in TLP trace (the tunnel itself comes later)\n");
    for (i, (what, hex)) in SAMPLE.iter().enumerate() {
        let bytes = parse_hex(hex)?;
        let tlp = Tlp::parse(&bytes)?;
        let (class, credits) = classify(&bytes)?;
        println!("#{i:<2} {what}");
        println!(
            "    {tlp}\n    class {class:?}, credits {} hdr + {} data\n",
            credits.header, credits.data
        );
    }
    println!("try: pcietun tlp decode --json \"40000001 0100000f fee00000 00000041\"");
    Ok(ExitCode::SUCCESS)
}
