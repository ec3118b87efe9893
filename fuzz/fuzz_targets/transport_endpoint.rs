//! Fuzz a server endpoint with an established session (docs/protocol.md §9): arbitrary frames,
//! including ones under the genuine session id, must never panic nor deliver a TLP.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::transport::BytesMut;
use pcietun::transport::{Config, Endpoint, HostId, Instant, PeerAddr, Role, SecretKey};

fuzz_target!(|data: &[u8]| {
    let host = HostId::new("fuzz").unwrap();
    let (skey, ckey) = (
        SecretKey::from_bytes([1; 32]),
        SecretKey::from_bytes([2; 32]),
    );
    let mut server = Endpoint::new(Config::default(), Role::Server, skey.clone(), 1);
    let sconn = server.add_host(host, ckey.public_key(), None);
    let mut client = Endpoint::new(Config::default(), Role::Client, ckey, 2);
    client.connect(
        Instant::ZERO,
        PeerAddr::Mem(1),
        host,
        skey.public_key(),
        None,
    );
    let mut buf = vec![0u8; 2048];
    let now = Instant::from_nanos(1000);
    // Handshake: INIT -> RESP -> key confirmation -> ACK.
    for _ in 0..4 {
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            server.handle_frame(now, PeerAddr::Mem(0), BytesMut::from(&buf[..t.len]));
        }
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            client.handle_frame(now, PeerAddr::Mem(1), BytesMut::from(&buf[..t.len]));
        }
    }
    // Splice the genuine session id into the fuzz input so it reaches session code.
    let mut f = data.to_vec();
    if f.len() >= 24 {
        if let Some(t) = client.poll_transmit(Instant::from_nanos(100_000_000), &mut buf) {
            f[8..12].copy_from_slice(&buf[8..12]);
            f[12..16].copy_from_slice(&buf[12..16]);
            let _ = t;
        }
    }
    server.handle_frame(now, PeerAddr::Mem(0), BytesMut::from(&f[..]));
    server.handle_frame(now, PeerAddr::Mem(0), BytesMut::from(data));
    assert!(server.poll_delivered(now, sconn).is_none());
    server.handle_timeout(now);
    while server.poll_transmit(now, &mut buf).is_some() {}
});
