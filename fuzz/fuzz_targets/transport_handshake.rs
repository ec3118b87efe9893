//! Fuzz the handshake parsers (docs/protocol.md §3): INIT, RESP, and MAC checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::transport::handshake::{Init, Psk, Resp};

fuzz_target!(|data: &[u8]| {
    let psk = Psk([7; 32]);
    let _ = Init::parse_unverified(data);
    // Random bytes never carry a valid MAC.
    assert!(Init::verify(data, &psk).is_err() || data.len() == 128);
    let (a, b) = data.split_at(data.len() / 2);
    let _ = Resp::parse_verified(a, b, &psk);
    let _ = Resp::parse_verified(data, data, &psk);
});
