//! The session handshake against an attacker on the network (issue 13, docs/security.md):
//! replays of the first message are counted and harmless — including the one that used to
//! replace a pending handshake between RESP and the first DATA frame — timestamps only go
//! forward, no host identity crosses the wire in clear, two runs with the same seeds share no
//! key material, the cookie path works, a flood of replays costs no public-key work beyond a
//! fixed budget and never disturbs the established session, the cipher is negotiated and
//! cannot be downgraded, and too many forged frames under one key end the session.

mod transport_common;
use bytes::BytesMut;
use pcietun::tlp::OrderingClass;
use pcietun::transport::cookie::CookieJar;
use pcietun::transport::handshake::{InitPayload, Initiator, Tai64N, INIT_LEN};
use pcietun::transport::{
    Cipher, Config, ConnId, DownReason, Endpoint, Event, Instant, PeerAddr, SecretKey,
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

fn connected(ev: &[(ConnId, Event)]) -> bool {
    ev.iter().any(|e| matches!(e.1, Event::Connected { .. }))
}

/// Issue 13 item 1, the gap replay: recorded INITs of host A replayed by someone without any
/// key between the appliance's RESP and A's first DATA frame. On the old protocol this replaced
/// A's pending handshake (A believed it was connected, the appliance had no session). Now the
/// replays are dropped by their timestamps, counted, cost no allocation and no answer, and the
/// real session comes up.
#[test]
fn gap_replay_does_not_disturb_the_pending_handshake() {
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let (mut server, sconn, mut client, cconn) = endpoints(&config(), 1, &keys, sim_host(), 1);
    let t = Instant::from_nanos(1_000);
    // A first INIT that is lost, then the retry that gets through: two recordings.
    let lost = drain(&mut client, t);
    assert_eq!(lost.len(), 1);
    client.handle_timeout(t + config().handshake_retry);
    let init = drain(&mut client, t + config().handshake_retry);
    assert_eq!(init.len(), 1);
    assert_ne!(init[0], lost[0], "every attempt is a fresh INIT");
    let t = t + config().handshake_retry;
    deliver(&mut server, t, 0, &init);
    let resp = drain(&mut server, t);
    assert_eq!(resp.len(), 1, "RESP");
    // The gap: both recordings replayed, alternately, many times. Within the handshake budget
    // each costs the public-key work and fails the timestamp check; past it the appliance is
    // under load and each costs a BLAKE2s and earns a COOKIE (80 bytes). None earns a RESP.
    let before = server.endpoint_stats().clone();
    for k in 0..200 {
        let f = if k % 2 == 0 { &init } else { &lost };
        deliver(&mut server, t, 0, f);
        for g in drain(&mut server, t) {
            assert_eq!(g[3], 5, "a replay earns at most a COOKIE, never a RESP");
        }
    }
    let after = server.endpoint_stats().clone();
    // The older one fails the timestamp check as surely as the exact copy.
    let replays = after.drop_replayed_init - before.drop_replayed_init;
    let cookies = after.cookies_sent - before.cookies_sent;
    assert!(
        replays + 2 >= u64::from(config().handshake_burst),
        "{after:?}"
    );
    assert_eq!(replays + cookies, 200, "every replay counted");
    assert_eq!(after.handshakes, 0);
    assert!(events(&mut server).is_empty());
    // RESP reaches the host: it sends its key confirmation but is not connected yet.
    deliver(&mut client, t, 1, &resp);
    assert!(
        !client.is_connected(cconn),
        "not before the appliance confirms"
    );
    let confirm = drain(&mut client, t);
    assert!(!confirm.is_empty());
    // More replays after the confirmation left, before it arrives: still nothing.
    deliver(&mut server, t, 0, &init);
    deliver(&mut server, t, 0, &confirm);
    assert!(server.is_connected(sconn), "the real session comes up");
    assert!(connected(&events(&mut server)));
    let ack = drain(&mut server, t);
    deliver(&mut client, t, 1, &ack);
    assert!(client.is_connected(cconn));
    assert!(connected(&events(&mut client)));
    assert_eq!(server.endpoint_stats().handshakes, 1);
    // …and a replay after that leaves the established session alone.
    deliver(&mut server, t, 0, &init);
    assert!(server.is_connected(sconn) && events(&mut server).is_empty());
}

/// An INIT crafted by the host itself with a chosen timestamp: the appliance accepts only
/// strictly newer ones, per host.
#[test]
fn timestamps_must_increase() {
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let (mut server, _, _, _) = endpoints(&config(), 2, &keys, sim_host(), 1);
    let app = keys[1].public_key();
    let jar = CookieJar::new(&app);
    let init = |secs: u64, nanos: u32, sid: u32| {
        let p = InitPayload {
            timestamp: Tai64N::from_unix(secs, nanos),
            epoch: 3,
            min_version: 1,
            max_version: 1,
            mtu: 1472,
            encrypt: true,
            rekey: false,
            ciphers: 1,
            credits: config().credits,
        };
        let mut f = [0u8; INIT_LEN];
        Initiator::start(&keys[0], &app, None, sid, &p, &jar, Instant::ZERO, &mut f).unwrap();
        vec![f.to_vec()]
    };
    let now = Instant::from_nanos(5);
    let answered = |server: &mut Endpoint, f: Vec<Vec<u8>>| {
        deliver(server, now, 0, &f);
        !drain(server, now).is_empty()
    };
    assert!(answered(&mut server, init(2_000_000_000, 10, 1)));
    assert!(!answered(&mut server, init(2_000_000_000, 10, 2)), "equal");
    assert!(!answered(&mut server, init(2_000_000_000, 9, 3)), "older");
    assert!(
        !answered(&mut server, init(1_999_999_999, 999_999_999, 4)),
        "older"
    );
    assert!(answered(&mut server, init(2_000_000_000, 11, 5)), "newer");
    assert_eq!(server.endpoint_stats().drop_replayed_init, 3);
    // An INIT from a key not on the list does not touch anyone's timestamp.
    let mut f = [0u8; INIT_LEN];
    let p = InitPayload {
        timestamp: Tai64N::from_unix(3_000_000_000, 0),
        epoch: 1,
        min_version: 1,
        max_version: 1,
        mtu: 1472,
        encrypt: true,
        rekey: false,
        ciphers: 1,
        credits: config().credits,
    };
    Initiator::start(&SecretKey::generate(), &app, None, 9, &p, &jar, now, &mut f).unwrap();
    assert!(!answered(&mut server, vec![f.to_vec()]));
    assert!(answered(&mut server, init(2_000_000_000, 12, 6)));
    assert_eq!(server.endpoint_stats().drop_unknown_host, 1);
}

/// Identity hiding: no frame of a whole session — handshake or data — carries the host's
/// static public key (any 8-byte window of it) or its name in clear.
#[test]
fn no_host_identity_on_the_wire() {
    let mut sim = Sim::new(3, lan(), lan(), config());
    sim.tap = Some(Vec::new());
    assert!(sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]));
    let mut n = 0;
    sim.run_until(after(sim.now, 10 * MS), |s| {
        while n < 100
            && s.ep[0]
                .send_tlp(s.conn[0], make_tlp(OrderingClass::Posted, n, n, 4))
                .is_ok()
        {
            n += 1;
        }
        while s.ep[1].poll_delivered(s.now, s.conn[1]).is_some() {}
        false
    });
    let tap = sim.tap.take().unwrap();
    assert!(tap.iter().any(|(_, f)| f[3] == 1), "an INIT was seen");
    let key = sim.keys[0].public_key();
    for (_, f) in &tap {
        for w in key.as_bytes().windows(8) {
            assert!(!f.windows(8).any(|x| x == w), "host key bytes on the wire");
        }
        assert!(
            !f.windows(8).any(|x| x == b"sim-host"),
            "host name on the wire"
        );
    }
}

/// Issue 13 item 3: with the seeds fixed, two runs used to produce byte-identical handshakes
/// (identical keys and nonces). Now every handshake byte that depends on randomness differs,
/// and so do the data frames.
#[test]
fn same_seeds_give_different_handshakes() {
    let run = || {
        let mut sim = Sim::new(42, lan(), lan(), config());
        sim.keys = [
            SecretKey::from_bytes([1; 32]),
            SecretKey::from_bytes([2; 32]),
        ];
        sim.restart_node(1, 42);
        sim.restart_node(0, 42);
        sim.tap = Some(Vec::new());
        assert!(sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]));
        sim.tap.take().unwrap()
    };
    let (a, b) = (run(), run());
    let first = |t: &[(usize, Vec<u8>)], ty: u8| t.iter().find(|f| f.1[3] == ty).unwrap().1.clone();
    for ty in [1, 2, 3] {
        let (x, y) = (first(&a, ty), first(&b, ty));
        assert_eq!(x.len(), y.len());
        assert_ne!(x, y, "frame type {ty} identical across runs");
    }
    // the INIT's ephemeral key and sender id in particular
    assert_ne!(first(&a, 1)[24..60], first(&b, 1)[24..60]);
}

/// Under load the appliance answers an INIT with a COOKIE instead of doing the public-key
/// work; the host retries at once with mac2, and the session comes up one round trip later.
/// A cookie is bound to the source address.
#[test]
fn cookie_path_under_load() {
    let cfg = Config {
        handshake_rate: 1,
        handshake_burst: 1,
        ..config()
    };
    let mut sim = Sim::new(4, lan(), lan(), cfg.clone());
    // Someone else spent the budget.
    let stranger = {
        let p = InitPayload {
            timestamp: Tai64N::now(),
            epoch: 1,
            min_version: 1,
            max_version: 1,
            mtu: 1472,
            encrypt: false,
            rekey: false,
            ciphers: 1,
            credits: cfg.credits,
        };
        let app = sim.keys[1].public_key();
        let mut f = [0u8; INIT_LEN];
        Initiator::start(
            &SecretKey::generate(),
            &app,
            None,
            5,
            &p,
            &CookieJar::new(&app),
            sim.now,
            &mut f,
        )
        .unwrap();
        f
    };
    sim.ep[1].handle_frame(sim.now, PeerAddr::Mem(9), BytesMut::from(&stranger[..]));
    let _ = drain(&mut sim.ep[1], sim.now);
    assert!(sim.run_until(Instant::from_nanos(50_000_000), |s| s.up[0] && s.up[1]));
    let (s, c) = (sim.ep[1].endpoint_stats(), sim.ep[0].endpoint_stats());
    assert_eq!(s.cookies_sent, 1, "{s:?}");
    assert_eq!(c.cookies_received, 1, "{c:?}");
    assert_eq!(
        s.handshakes_processed, 2,
        "the stranger's and the host's INIT with mac2"
    );
    assert!(
        sim.now < Instant::from_nanos(2_000_000),
        "one extra round trip, not a retry timer"
    );
    // The same INIT with its (valid) mac2 from another address is not admitted.
    sim.tap = Some(Vec::new());
    sim.restart_node(0, 4);
    sim.run_until(after(sim.now, 5 * MS), |s| s.up[0] && s.up[1]);
    let init_with_mac2 = sim
        .tap
        .take()
        .unwrap()
        .into_iter()
        .filter(|(n, f)| *n == 0 && f[3] == 1)
        .map(|(_, f)| f)
        .find(|f| f[24 + 164..24 + 180] != [0; 16])
        .expect("an INIT with mac2");
    let before = sim.ep[1].endpoint_stats().clone();
    sim.ep[1].handle_frame(
        sim.now,
        PeerAddr::Mem(9),
        BytesMut::from(&init_with_mac2[..]),
    );
    let after = sim.ep[1].endpoint_stats();
    assert_eq!(after.handshakes_processed, before.handshakes_processed);
    assert_eq!(
        after.cookies_sent,
        before.cookies_sent + 1,
        "it earns a cookie for its own address"
    );
}

/// Issue 13 item 1, the flood: two recorded INITs of the host, replayed alternately at 50k
/// frames/s from the host's own (spoofed) address for 2 s, plus garbage, while TLPs flow and
/// the session rekeys every 250 ms. The public-key work stays within the fixed budget (the
/// rest costs a BLAKE2s and at most a cookie), the session never goes down, keeps rekeying,
/// delivers everything exactly once, and the appliance's handshake state stays bounded.
#[test]
fn replay_flood_costs_no_public_key_work_and_never_stalls_the_session() {
    let cfg = Config {
        rekey_after: Duration::from_millis(250),
        ..config()
    };
    let mut sim = Sim::new(5, lan(), lan(), cfg.clone());
    sim.tap = Some(Vec::new());
    assert!(sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]));
    // A second recording: the first rekey's INIT.
    assert!(sim.run_until(after(sim.now, Duration::from_secs(1)), |s| {
        s.ep[0].stats(s.conn[0]).is_some_and(|st| st.rekeys >= 1)
    }));
    let inits: Vec<Vec<u8>> = sim
        .tap
        .take()
        .unwrap()
        .into_iter()
        .filter(|(n, f)| *n == 0 && f[3] == 1)
        .map(|(_, f)| f)
        .collect();
    assert!(inits.len() >= 2);
    let before = sim.ep[1].endpoint_stats().clone();
    let rekeys_before = sim.ep[0].stats(sim.conn[0]).unwrap().rekeys;
    let t0 = sim.now;
    let end = after(t0, Duration::from_secs(2));
    let mut garbage = inits[0].clone();
    garbage[100] ^= 1;
    let mut next_inject = t0;
    let mut injected = 0u64;
    let (mut sent, mut chk, mut worst) = (0u32, Checker::default(), Duration::ZERO);
    let mut sent_at: std::collections::VecDeque<Instant> = Default::default();
    sim.run_until(end, |s| {
        while next_inject <= s.now && next_inject < end {
            let f: &[u8] = if injected % 10 == 9 {
                &garbage[..]
            } else {
                &inits[(injected as usize / 2) % 2][..]
            };
            s.ep[1].handle_frame(next_inject, PeerAddr::Mem(0), BytesMut::from(f));
            injected += 1;
            next_inject = next_inject + Duration::from_micros(20);
        }
        // An MMIO-like stream: a few posted writes at a time, their delivery time tracked.
        while sent < chk.next[0] + 8
            && s.ep[0]
                .send_tlp(s.conn[0], make_tlp(OrderingClass::Posted, sent, sent, 2))
                .is_ok()
        {
            sent_at.push_back(s.now);
            sent += 1;
        }
        while let Some(d) = s.ep[1].poll_delivered(s.now, s.conn[1]) {
            chk.check(d.class, &d.tlp, "flood");
            if let Some(t) = sent_at.pop_front() {
                worst = worst.max(s.now - t);
            }
        }
        false
    });
    assert!(injected >= 99_000, "{injected}");
    let e = sim.ep[1].endpoint_stats();
    let processed = e.handshakes_processed - before.handshakes_processed;
    let budget = u64::from(cfg.handshake_burst) + 2 * u64::from(cfg.handshake_rate) + 20;
    assert!(
        processed <= budget,
        "{processed} INITs got public-key work (budget {budget}) of {injected}"
    );
    assert!(e.cookies_sent > before.cookies_sent, "under load: cookies");
    assert!(
        e.drop_replayed_init > before.drop_replayed_init,
        "replays counted"
    );
    assert!(
        e.drop_bad_mac1 >= before.drop_bad_mac1 + injected / 10,
        "garbage counted"
    );
    assert_eq!(
        sim.count_events(1, |e| matches!(e, Event::Down { .. })),
        0,
        "the established session never went down"
    );
    assert_eq!(sim.count_events(0, |e| matches!(e, Event::Down { .. })), 0);
    let rekeys = sim.ep[0].stats(sim.conn[0]).unwrap().rekeys - rekeys_before;
    assert!(
        rekeys >= 4,
        "the host kept rekeying through the flood ({rekeys})"
    );
    assert!(chk.total > 10_000, "traffic flowed: {}", chk.total);
    assert!(worst < Duration::from_millis(50), "a TLP waited {worst:?}");
    assert!(sim.link.max_queued < 10_000, "bounded output");
}

fn negotiated(client: Option<Cipher>, server: Option<Cipher>) -> Option<Cipher> {
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let c = Config {
        cipher: client,
        ..config()
    };
    let s = Config {
        cipher: server,
        ..config()
    };
    let (mut sv, sconn, _, _) = endpoints(&s, 6, &keys, sim_host(), 1);
    let (_, _, mut cl, _) = endpoints(&c, 6, &keys, sim_host(), 1);
    let mut now = Instant::from_nanos(1);
    for _ in 0..4 {
        let f = drain(&mut cl, now);
        deliver(&mut sv, now, 0, &f);
        let g = drain(&mut sv, now);
        deliver(&mut cl, now, 1, &g);
        now = now + Duration::from_micros(50);
    }
    sv.stats(sconn).and_then(|s| s.cipher)
}

/// The frame AEAD is negotiated inside the handshake: AES-256-GCM when both ends offer it,
/// ChaCha20-Poly1305 when either lacks it, and nothing at all without a common one (an
/// attacker cannot change the offer: tests in src/transport/handshake/tests.rs flip every bit).
#[test]
fn cipher_negotiation() {
    use Cipher::*;
    assert_eq!(
        negotiated(Some(Aes256Gcm), Some(Aes256Gcm)),
        Some(Aes256Gcm)
    );
    assert_eq!(
        negotiated(None, Some(ChaCha20Poly1305)),
        Some(ChaCha20Poly1305)
    );
    assert_eq!(
        negotiated(Some(ChaCha20Poly1305), None),
        Some(ChaCha20Poly1305)
    );
    assert_eq!(negotiated(Some(ChaCha20Poly1305), Some(Aes256Gcm)), None);
    let auto = negotiated(None, None);
    assert_eq!(
        auto,
        Some(if Cipher::hardware_aes() {
            Aes256Gcm
        } else {
            ChaCha20Poly1305
        })
    );
}

/// Forged frames under the session's own id: at half the limit the appliance asks for a rekey
/// (and gets it); a burst that reaches the limit under one key ends the session, counted and
/// logged, and the host reconnects.
#[test]
fn failed_tag_limit() {
    let cfg = Config {
        max_failed_tags: 64,
        ..config()
    };
    let mut sim = Sim::new(7, lan(), lan(), cfg);
    sim.tap = Some(Vec::new());
    assert!(sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]));
    let data = |sim: &mut Sim| -> Vec<u8> {
        let tap = sim.tap.as_mut().unwrap();
        let f = tap
            .iter()
            .rev()
            .find(|(n, f)| *n == 0 && f[3] == 3)
            .unwrap()
            .1
            .clone();
        tap.clear();
        f
    };
    let forge = |sim: &mut Sim, f: &[u8], n: u64| {
        for k in 0..n {
            let mut g = f.to_vec();
            g[16..24].copy_from_slice(&(1_000_000 + k).to_be_bytes());
            let last = g.len() - 1;
            g[last] ^= 0x55;
            sim.ep[1].handle_frame(sim.now, PeerAddr::Mem(0), BytesMut::from(&g[..]));
        }
    };
    // Half the limit: a rekey request, honoured.
    sim.run_until(after(sim.now, 2 * MS), |_| false);
    let f = data(&mut sim);
    forge(&mut sim, &f, 32);
    assert!(sim.run_until(after(sim.now, 100 * MS), |s| {
        s.ep[0].stats(s.conn[0]).is_some_and(|st| st.rekeys >= 1)
    }));
    assert_eq!(sim.count_events(1, |e| matches!(e, Event::Down { .. })), 0);
    // The full limit under the new key, at once: the session ends.
    sim.run_until(after(sim.now, 5 * MS), |_| false);
    let f = data(&mut sim);
    let bad_before = sim.ep[1].stats(sim.conn[1]).unwrap().drop_bad_tag;
    forge(&mut sim, &f, 64);
    assert!(bad_before >= 32);
    assert!(
        sim.run_until(after(sim.now, MS), |s| s.count_events(1, |e| matches!(
            e,
            Event::Down {
                reason: DownReason::TooManyBadTags,
                ..
            }
        )) == 1)
    );
    // The host's session goes silent (its frames go to a retired id); it times out and
    // comes back with a new session.
    assert!(
        sim.run_until(after(sim.now, Duration::from_secs(2)), |s| s.up[0]
            && s.up[1])
    );
}

/// COOKIEs cannot drive the host: the first for an INIT makes it retry at once with mac2, a
/// COOKIE for that retry only waits for the retry timer — even a valid one (an on-path
/// attacker who saw the INIT can make those).
#[test]
fn cookies_cannot_drive_the_host() {
    use pcietun::transport::cookie::{CookieMaker, COOKIE_LEN};
    let keys = [SecretKey::generate(), SecretKey::generate()];
    let (_, _, mut client, _) = endpoints(&config(), 8, &keys, sim_host(), 1);
    let mut maker = CookieMaker::new(&keys[1].public_key());
    let now = Instant::from_nanos(10);
    let cookie_for = |maker: &mut CookieMaker, init: &[u8]| {
        let sid = u32::from_be_bytes([init[24], init[25], init[26], init[27]]);
        let mut f = [0u8; COOKIE_LEN];
        maker.reply(
            now,
            &PeerAddr::Mem(0),
            sid,
            &init[24 + 148..24 + 164],
            &mut f,
        );
        vec![f.to_vec()]
    };
    let first = drain(&mut client, now);
    deliver(&mut client, now, 1, &cookie_for(&mut maker, &first[0]));
    let second = drain(&mut client, now);
    assert_eq!(second.len(), 1, "retried at once");
    assert_ne!(second[0][24 + 164..24 + 180], [0; 16], "with mac2");
    deliver(&mut client, now, 1, &cookie_for(&mut maker, &second[0]));
    assert!(
        drain(&mut client, now).is_empty(),
        "a second COOKIE waits for the timer"
    );
    let later = now + config().handshake_retry;
    client.handle_timeout(later);
    let third = drain(&mut client, later);
    assert_eq!(third.len(), 1);
    assert_eq!(client.endpoint_stats().cookies_received, 2);
}
