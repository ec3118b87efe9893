//! Fuzz the cookie path (docs/protocol.md §3.4): COOKIE replies at a host with a handshake in
//! flight, and INITs at an appliance that is under load (every INIT needs mac2, or earns a
//! COOKIE). Nothing panics, random bytes never yield a cookie or a session, and the
//! appliance's output stays bounded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::transport::cookie::CookieJar;
use pcietun::transport::{BytesMut, Config, Endpoint, HostId, Instant, PeerAddr, Role, SecretKey};

fuzz_target!(|data: &[u8]| {
    let app = SecretKey::from_bytes([7; 32]);
    let host = SecretKey::from_bytes([9; 32]);
    let mut jar = CookieJar::new(&app.public_key());
    assert!(jar.consume(Instant::ZERO, data, &[0; 16]).is_err());
    assert!(!jar.has_cookie(Instant::ZERO));

    // An appliance with no handshake budget: under load from the first INIT.
    let cfg = Config {
        handshake_rate: 1,
        handshake_burst: 1,
        ..Config::default()
    };
    let mut server = Endpoint::new(cfg.clone(), Role::Server, app.clone(), 1);
    let conn = server.add_host(HostId::new("fuzz").unwrap(), host.public_key(), None);
    let mut client = Endpoint::new(cfg, Role::Client, host, 2);
    client.connect(
        Instant::ZERO,
        PeerAddr::Mem(1),
        HostId::new("fuzz").unwrap(),
        app.public_key(),
        None,
    );
    let mut buf = vec![0u8; 2048];
    let now = Instant::from_nanos(1000);
    // Spend the budget with the genuine INIT, then the fuzz input as INIT and as COOKIE.
    while let Some(t) = client.poll_transmit(now, &mut buf) {
        server.handle_frame(now, PeerAddr::Mem(0), BytesMut::from(&buf[..t.len]));
    }
    let mut f = data.to_vec();
    if f.len() >= 4 {
        f[3] = 1; // INIT
    }
    server.handle_frame(now, PeerAddr::Mem(0), BytesMut::from(&f[..]));
    server.handle_frame(now, PeerAddr::Mem(0), BytesMut::from(data));
    if f.len() >= 4 {
        f[3] = 5; // COOKIE
    }
    client.handle_frame(now, PeerAddr::Mem(1), BytesMut::from(&f[..]));
    assert!(!server.is_connected(conn));
    let mut out = 0;
    while server.poll_transmit(now, &mut buf).is_some() {
        out += 1;
    }
    assert!(out <= 64, "handshake output is bounded");
});
