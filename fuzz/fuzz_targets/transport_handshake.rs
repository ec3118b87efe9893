//! Fuzz the handshake messages (docs/protocol.md §3): the INIT view and the Noise read of an
//! INIT, both payload parsers, and a RESP read against a real handshake in flight. Random
//! bytes never authenticate; nothing panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::transport::cookie::{CookieJar, MacKeys};
use pcietun::transport::handshake::{
    InitFrame, InitPayload, Initiator, RespPayload, Responder, Tai64N, INIT_LEN,
};
use pcietun::transport::{Instant, SecretKey};

fuzz_target!(|data: &[u8]| {
    let app = SecretKey::from_bytes([7; 32]);
    let host = SecretKey::from_bytes([9; 32]);
    let _ = InitPayload::parse(data);
    let _ = RespPayload::parse(data);
    if let Ok(v) = InitFrame::new_checked(data) {
        let _ = (
            v.sender(),
            v.mac1(),
            v.mac2(),
            v.mac1_input(),
            v.mac2_input(),
        );
        assert!(
            Responder::read(&app, v).is_err(),
            "random INIT authenticated"
        );
    }
    let payload = InitPayload {
        timestamp: Tai64N::from_unix(1, 0),
        epoch: 1,
        min_version: 1,
        max_version: 1,
        mtu: 1472,
        encrypt: true,
        rekey: false,
        ciphers: 3,
        credits: [1; 6],
    };
    let mut f = [0u8; INIT_LEN];
    let jar = CookieJar::new(&app.public_key());
    let Ok(mut i) = Initiator::start(
        &host,
        &app.public_key(),
        None,
        1,
        &payload,
        &jar,
        Instant::ZERO,
        &mut f,
    ) else {
        return;
    };
    // A RESP that is not the appliance's never completes the handshake.
    let mut resp = data.to_vec();
    if resp.len() >= 12 {
        resp[8..12].copy_from_slice(&1u32.to_be_bytes());
    }
    assert!(i.finish(&resp, &MacKeys::new(&host.public_key())).is_err());
});
