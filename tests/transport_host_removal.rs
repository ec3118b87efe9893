//! Hosts added, removed and re-keyed while the appliance's endpoint runs (issue 14,
//! docs/transport.md "Hosts at run time"): a removed host's session ends at once on the
//! appliance (a `Down` with `DownReason::Removed`), its frames after the removal are dropped
//! and counted, its key no longer handshakes, a re-keyed host's old key cannot come back while
//! the new one can, the host's peer sees its session end, and the slots stay bounded however
//! often hosts come and go.

mod transport_common;
use bytes::BytesMut;
use pcietun::transport::{
    ConnId, DownReason, Endpoint, Event, HostId, Instant, PeerAddr, Role, SecretKey,
};
use std::time::Duration;
use transport_common::*;

/// Every frame `ep` wants to send now.
fn drain(ep: &mut Endpoint, now: Instant) -> Vec<Vec<u8>> {
    let mut buf = vec![0u8; 9000];
    let mut out = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        out.push(buf[..t.len].to_vec());
    }
    out
}

fn deliver(ep: &mut Endpoint, now: Instant, from: u32, frames: &[Vec<u8>]) {
    for f in frames {
        ep.handle_frame(now, PeerAddr::Mem(from), BytesMut::from(&f[..]));
    }
}

fn events(ep: &mut Endpoint) -> Vec<(ConnId, Event)> {
    std::iter::from_fn(|| ep.poll_event()).collect()
}

/// Events an endpoint raised.
type Events = Vec<(ConnId, Event)>;

/// Run the server (node 1) and the client (node 0) for `d` of simulated time in 1 ms steps;
/// every event each side raised.
fn run(
    server: &mut Endpoint,
    client: &mut Endpoint,
    now: &mut Instant,
    d: Duration,
) -> (Events, Events) {
    let (mut se, mut ce) = (Vec::new(), Vec::new());
    let end = after(*now, d);
    while *now < end {
        for _ in 0..8 {
            let c = drain(client, *now);
            deliver(server, *now, 0, &c);
            let s = drain(server, *now);
            deliver(client, *now, 1, &s);
            if c.is_empty() && s.is_empty() {
                break;
            }
        }
        se.extend(events(server));
        ce.extend(events(client));
        *now = after(*now, Duration::from_millis(1));
        server.handle_timeout(*now);
        client.handle_timeout(*now);
    }
    se.extend(events(server));
    ce.extend(events(client));
    (se, ce)
}

fn connected(ev: &[(ConnId, Event)]) -> bool {
    ev.iter().any(|e| matches!(e.1, Event::Connected { .. }))
}

fn down(ev: &[(ConnId, Event)]) -> Option<DownReason> {
    ev.iter().find_map(|e| match e.1 {
        Event::Down { reason, .. } => Some(reason),
        _ => None,
    })
}

fn client(key: &SecretKey, server: &SecretKey, host: HostId) -> Endpoint {
    let mut c = Endpoint::new(config(), Role::Client, key.clone(), 7);
    c.connect(
        Instant::ZERO,
        PeerAddr::Mem(1),
        host,
        server.public_key(),
        None,
    );
    c
}

/// Removal closes the session on the appliance at once, drops and counts the host's frames
/// after it, refuses its key, and its peer sees the session end within its idle timeout.
#[test]
fn removed_host_is_disconnected_and_its_frames_dropped() {
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let host = sim_host();
    let (mut server, sconn, mut cl, _) = endpoints(&config(), 3, &keys, host, 1);
    let mut now = Instant::ZERO;
    let (se, ce) = run(&mut server, &mut cl, &mut now, Duration::from_millis(50));
    assert!(connected(&se) && connected(&ce), "the session comes up");
    assert!(server.is_connected(sconn));

    assert!(server.remove_host(host));
    assert!(
        !server.remove_host(host),
        "removing twice: not known any more"
    );
    let ev = events(&mut server);
    assert_eq!(down(&ev), Some(DownReason::Removed), "{ev:?}");
    assert!(!server.is_connected(sconn));
    assert_eq!(server.host(sconn), None);
    assert_eq!(server.conn_of(host), None);
    assert_eq!(server.conns().count(), 0);

    // The host still believes in its session and keeps sending on it (keepalives, ACKs): every
    // such frame is dropped and counted, none is answered.
    let stale0 = server.endpoint_stats().drop_stale_session;
    let unknown0 = server.endpoint_stats().drop_unknown_host;
    let (se, ce) = run(&mut server, &mut cl, &mut now, Duration::from_secs(3));
    assert!(
        !connected(&se),
        "the removed host never gets a session: {se:?}"
    );
    assert!(
        server.endpoint_stats().drop_stale_session > stale0,
        "its frames after the removal are dropped and counted"
    );
    // Its peer's session ends (nothing authenticated comes back), and its reconnection
    // attempts are refused: the key is not on the list any more.
    assert_eq!(down(&ce), Some(DownReason::IdleTimeout), "{ce:?}");
    assert!(!connected(&ce[1..]), "{ce:?}");
    assert!(server.endpoint_stats().drop_unknown_host > unknown0);

    // Added back, it connects again (on the freed slot).
    let again = server.add_host(host, keys[0].public_key(), None);
    assert_eq!(again, sconn, "the freed slot is reused");
    let (se, ce) = run(&mut server, &mut cl, &mut now, Duration::from_secs(2));
    assert!(connected(&se) && connected(&ce), "{se:?} {ce:?}");
    assert!(server.is_connected(again));
}

/// Re-keying (remove, then add with the new key): the old key's session is closed and the
/// old key cannot handshake again; a host with the new key connects.
#[test]
fn rekeyed_host_old_key_refused_new_key_connects() {
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let host = sim_host();
    let (mut server, _, mut old, _) = endpoints(&config(), 5, &keys, host, 1);
    let mut now = Instant::ZERO;
    let (se, _) = run(&mut server, &mut old, &mut now, Duration::from_millis(50));
    assert!(connected(&se));

    let new_key = SecretKey::generate();
    assert!(server.remove_host(host));
    server.add_host(host, new_key.public_key(), None);
    let ev = events(&mut server);
    assert_eq!(down(&ev), Some(DownReason::Removed), "{ev:?}");

    // The old key: its session is gone, and its new handshakes are refused.
    let unknown0 = server.endpoint_stats().drop_unknown_host;
    let (se, ce) = run(&mut server, &mut old, &mut now, Duration::from_secs(3));
    assert!(
        !connected(&se),
        "the old key never handshakes again: {se:?}"
    );
    assert_eq!(down(&ce), Some(DownReason::IdleTimeout), "{ce:?}");
    assert!(server.endpoint_stats().drop_unknown_host > unknown0);
    // A fresh client with the old key fares no better.
    let mut fresh_old = client(&keys[0], &keys[1], host);
    let (se, _) = run(
        &mut server,
        &mut fresh_old,
        &mut now,
        Duration::from_secs(1),
    );
    assert!(!connected(&se), "{se:?}");

    // The new key connects, under the same name.
    let mut new = client(&new_key, &keys[1], host);
    let (se, ce) = run(&mut server, &mut new, &mut now, Duration::from_secs(1));
    assert!(connected(&ce), "{ce:?}");
    assert!(
        se.iter()
            .any(|e| matches!(e.1, Event::Connected { host: h, .. } if h == host)),
        "{se:?}"
    );
}

/// Hosts added and removed for ever (with sessions up in between) keep the endpoint bounded:
/// the freed slot is reused, session ids and keys do not pile up.
#[test]
fn adding_and_removing_hosts_stays_bounded() {
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let host = sim_host();
    let (mut server, _, mut cl, _) = endpoints(&config(), 9, &keys, host, 1);
    let mut now = Instant::ZERO;
    let other = HostId::new("other").unwrap();
    for round in 0..200 {
        let k = SecretKey::generate().public_key();
        server.add_host(other, k, None);
        if round % 20 == 0 {
            let (se, _) = run(&mut server, &mut cl, &mut now, Duration::from_millis(20));
            let _ = se;
        }
        assert!(server.remove_host(other));
    }
    assert_eq!(
        server.slot_count(),
        2,
        "one slot for the host, one reused for the others"
    );
    assert_eq!(server.conns().count(), 1);
    assert_eq!(server.host(server.conn_of(host).unwrap()), Some(host));
}
