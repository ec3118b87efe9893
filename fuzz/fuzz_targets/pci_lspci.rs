//! Fuzz the `lspci -xxxx` parser and the replay builder: arbitrary text must never panic;
//! whatever parses must survive write → parse unchanged, and replay must present it exactly.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::pci::lspci;
use pcietun::pci::replay::{replay, ReplaySizes};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(funcs) = lspci::parse(&text) else {
        return;
    };
    let again = lspci::parse(&lspci::write(&funcs)).expect("our own output must parse");
    assert_eq!(again.len(), funcs.len());
    for (a, b) in again.iter().zip(&funcs) {
        assert_eq!(a.address, b.address);
        assert_eq!(a.config, b.config);
    }
    for f in &funcs {
        if let Ok(r) = replay(&f.config, &ReplaySizes::default()) {
            assert_eq!(&r.config.snapshot()[..f.config.len()], &f.config[..]);
        }
    }
});
