//! An attacker on the path (docs/protocol.md §3, §4, §9): forged, replayed and truncated frames
//! and handshakes deliver nothing, are counted, and leave the live session intact. Run with
//! encryption on and off (authentication-only mode must be just as strict).

mod transport_common;
use bytes::BytesMut;
use pcietun::tlp::OrderingClass;
use pcietun::transport::cookie::CookieJar;
use pcietun::transport::handshake::{InitPayload, Initiator, Tai64N, INIT_LEN};
use pcietun::transport::{Config, Instant, PeerAddr, SecretKey};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;
use transport_common::*;

fn drops(sim: &Sim) -> u64 {
    let e = sim.ep[1].endpoint_stats();
    let s = sim.ep[1].stats(sim.conn[1]).unwrap();
    e.drop_bad_header
        + e.drop_unknown_session
        + e.drop_stale_session
        + e.drop_unknown_host
        + e.drop_bad_handshake_mac
        + e.drop_bad_mac1
        + e.drop_replayed_init
        + e.drop_rate_limited
        + e.drop_under_load
        + e.drop_bad_handshake
        + s.drop_bad_tag
        + s.drop_stale_key
        + s.drop_replay
        + s.drop_stale_epoch
        + s.drop_malformed
        + s.drop_wrong_mode
}

/// Send `n` posted writes client → server and check they all arrive in order.
fn traffic(sim: &mut Sim, chk: &mut Checker, n: u32) {
    let start = chk.next[0];
    let mut i = 0;
    let ok = sim.run_until(sim.now + Duration::from_secs(2), |s| {
        while i < n {
            let t = make_tlp(OrderingClass::Posted, start + i, start + i, 2);
            if s.ep[0].send_tlp(s.conn[0], t).is_err() {
                break;
            }
            i += 1;
        }
        while let Some(d) = s.ep[1].poll_delivered(s.now, s.conn[1]) {
            chk.check(d.class, &d.tlp, "legitimate traffic");
        }
        chk.next[0] == start + n
    });
    assert!(ok, "legitimate traffic stalled");
}

/// Inject `frames` into the server; assert nothing is delivered, no event, all counted.
fn inject(sim: &mut Sim, frames: &[Vec<u8>], what: &str) {
    let before = drops(sim);
    let events = sim.events.len();
    for f in frames {
        sim.ep[1].handle_frame(sim.now, PeerAddr::Mem(0), BytesMut::from(&f[..]));
        assert!(
            sim.ep[1].poll_delivered(sim.now, sim.conn[1]).is_none(),
            "{what}: a TLP was delivered"
        );
        assert!(
            sim.ep[1].poll_event().is_none(),
            "{what}: an event was raised"
        );
    }
    assert_eq!(sim.events.len(), events);
    assert_eq!(
        drops(sim) - before,
        frames.len() as u64,
        "{what}: every frame dropped and counted"
    );
}

fn scenario(encrypt: bool) {
    let seed = seed(21);
    let _g = SeedGuard(seed, "attack");
    let cfg = Config {
        encrypt,
        ..config()
    };
    let mut sim = Sim::new(seed, lan(), lan(), cfg);
    sim.tap = Some(Vec::new());
    let mut chk = Checker::default();
    assert!(sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]));
    traffic(&mut sim, &mut chk, 2000);
    let tap = sim.tap.take().unwrap();
    let data: Vec<Vec<u8>> = tap
        .iter()
        .filter(|(n, f)| *n == 0 && f[3] == 3 && f[5] > 0)
        .map(|(_, f)| f.clone())
        .collect();
    let init = tap
        .iter()
        .find(|(n, f)| *n == 0 && f[3] == 1)
        .unwrap()
        .1
        .clone();
    assert!(data.len() > 5);
    assert_eq!(
        data[0][4] & 1 != 0,
        encrypt,
        "encryption flag as configured"
    );

    // 1. Replay every captured data frame.
    inject(&mut sim, &data, "replayed frames");
    // 2. Bit flips anywhere in captured frames.
    let mut rng = StdRng::seed_from_u64(seed);
    let mut forged = Vec::new();
    for f in data.iter().take(50) {
        for _ in 0..20 {
            let mut g = f.clone();
            let bit = rng.gen_range(0..g.len() * 8);
            g[bit / 8] ^= 1 << (bit % 8);
            forged.push(g);
        }
    }
    // Random bodies under a genuine header (fresh packet numbers).
    for k in 0..200u64 {
        let mut g = data[0].clone();
        g[16..24].copy_from_slice(&(1_000_000 + k).to_be_bytes());
        rng.fill(&mut g[24..]);
        forged.push(g);
    }
    inject(&mut sim, &forged, "forged frames");
    // 3. Every truncation of a captured frame, and garbage.
    let mut cut: Vec<Vec<u8>> = (0..data[1].len()).map(|n| data[1][..n].to_vec()).collect();
    cut.push(vec![0xff; 64]);
    inject(&mut sim, &cut, "truncated frames");
    // 4. Handshakes: the old INIT replayed is refused by its timestamp; an INIT from a key
    // that is not on the list, a forged one (valid mac1, garbage inside) and garbage without
    // mac1 are dropped; none makes a session or an event.
    let e0 = sim.ep[1].endpoint_stats().clone();
    let app = sim.keys[1].public_key();
    let stranger = {
        let p = InitPayload {
            timestamp: Tai64N::now(),
            epoch: 5,
            min_version: 1,
            max_version: 1,
            mtu: 1472,
            encrypt: true,
            rekey: false,
            ciphers: 1,
            credits: [64; 6],
        };
        let mut f = [0u8; INIT_LEN];
        Initiator::start(
            &SecretKey::generate(),
            &app,
            None,
            77,
            &p,
            &CookieJar::new(&app),
            sim.now,
            &mut f,
        )
        .unwrap();
        f
    };
    let mut forged = init.clone();
    forged[60..120].fill(0xa5);
    let mac1 = pcietun::transport::cookie::MacKeys::new(&app).mac1(&forged[..24 + 148]);
    forged[24 + 148..24 + 164].copy_from_slice(&mac1);
    let mut no_mac1 = init.clone();
    no_mac1[100] ^= 1;
    let hs: Vec<Vec<u8>> = vec![init.clone(), stranger.to_vec(), forged, no_mac1];
    inject(&mut sim, &hs, "handshakes");
    let e1 = sim.ep[1].endpoint_stats().clone();
    assert_eq!(e1.drop_replayed_init, e0.drop_replayed_init + 1);
    assert_eq!(e1.drop_unknown_host, e0.drop_unknown_host + 1);
    assert_eq!(e1.drop_bad_handshake_mac, e0.drop_bad_handshake_mac + 1);
    assert_eq!(e1.drop_bad_mac1, e0.drop_bad_mac1 + 1);
    assert_eq!(
        e1.handshakes, e0.handshakes,
        "no session from a replayed INIT"
    );
    // 5. The real session carries on, exactly once and in order.
    let events = sim.events.len();
    traffic(&mut sim, &mut chk, 2000);
    assert_eq!(sim.events.len(), events, "no session change");
    assert_eq!(chk.total, 4000);
}

#[test]
fn attacker_gets_nothing_with_encryption() {
    scenario(true);
}

#[test]
fn attacker_gets_nothing_with_authentication_only() {
    scenario(false);
}
