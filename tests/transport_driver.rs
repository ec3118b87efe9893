//! The threaded driver handle over the in-memory link and over UDP on loopback (one process):
//! connect, exchange TLPs both ways exactly once and in order, with and without injected loss.

mod prereq;
use bytes::Bytes;
use pcietun::transport::driver::{mem, udp::UdpPort, DriverConfig, Peers, TransportHandle, Upcall};
use pcietun::transport::{ConnId, Event, HostId, HostKey, PeerAddr, Psk, SecretKey};
use std::time::{Duration, Instant};

fn mwr(i: u32) -> Bytes {
    let mut v = vec![0x60, 0, 0, 2];
    v.extend_from_slice(&i.to_be_bytes());
    v.extend_from_slice(&[0; 8]);
    v.extend_from_slice(&i.to_le_bytes());
    v.extend_from_slice(&[0xab; 4]);
    Bytes::from(v)
}

fn wait_connected(h: &TransportHandle) -> ConnId {
    connected(|t| h.recv_timeout(t))
}

/// The session of the first `Connected` that `next(timeout)` yields within 10 s.
fn connected(mut next: impl FnMut(Duration) -> Option<Upcall>) -> ConnId {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(Upcall::Event {
            conn,
            event: Event::Connected { .. },
        }) = next(Duration::from_millis(100))
        {
            return conn;
        }
    }
    panic!("no session within 10 s");
}

fn exchange(server: TransportHandle, client: TransportHandle, n: u32) {
    let c = wait_connected(&client);
    // the server sees the session once the client's first protected frame arrives
    let s = wait_connected(&server);
    let sender = std::thread::spawn(move || {
        for i in 0..n {
            client.send(c, mwr(i)).unwrap();
        }
        client
    });
    let mut next = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < n {
        assert!(Instant::now() < deadline, "only {next} of {n} TLPs arrived");
        match server.recv_timeout(Duration::from_millis(200)) {
            Some(Upcall::Tlp { conn, tlp, .. }) => {
                assert_eq!(conn, s);
                let got = u32::from_be_bytes([tlp[4], tlp[5], tlp[6], tlp[7]]);
                assert_eq!(got, next, "exactly once, in order");
                assert_eq!(tlp, mwr(got));
                next += 1;
            }
            Some(Upcall::Event { event, .. }) => panic!("unexpected event {event:?}"),
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    let client = sender.join().unwrap();
    let st = client.stats().unwrap();
    assert!(st.sessions[0].1.tlps_sent >= u64::from(n));
}

fn cfgs(loss: f64) -> (DriverConfig, DriverConfig, HostId) {
    let host = HostId::new("h1").unwrap();
    let (s, mut c) = DriverConfig::pair(host, PeerAddr::Mem(1));
    c.inject_loss = loss;
    c.seed = 7;
    (s, c, host)
}

#[test]
fn mem_link_delivers_exactly_once_in_order() {
    let (a, b) = mem::pair();
    let (s, c, _) = cfgs(0.0);
    let server = TransportHandle::spawn(Box::new(b), s).unwrap();
    let client = TransportHandle::spawn(Box::new(a), c).unwrap();
    exchange(server, client, 50_000);
}

#[test]
fn mem_link_with_injected_loss() {
    let (a, b) = mem::pair();
    let (s, c, _) = cfgs(0.05);
    let server = TransportHandle::spawn(Box::new(b), s).unwrap();
    let client = TransportHandle::spawn(Box::new(a), c).unwrap();
    exchange(server, client, 20_000);
}

#[test]
fn udp_loopback_ipv4_and_ipv6() {
    for bind in ["127.0.0.1:0", "[::1]:0"] {
        let sp = match UdpPort::bind(bind.parse().unwrap()) {
            Ok(p) => p,
            Err(e) if bind.starts_with('[') => {
                prereq::skip("UDP over IPv6 loopback", &format!("no IPv6 loopback ({e})"));
                continue;
            }
            Err(e) => panic!("{e}"),
        };
        let saddr = sp.addr();
        let cp = UdpPort::bind(
            if bind.starts_with('[') {
                "[::1]:0"
            } else {
                "127.0.0.1:0"
            }
            .parse()
            .unwrap(),
        )
        .unwrap();
        let (s, mut c, _) = cfgs(0.01);
        if let Peers::Connect { server, .. } = &mut c.peers {
            *server = PeerAddr::Udp(saddr);
        }
        let server = TransportHandle::spawn(Box::new(sp), s).unwrap();
        let client = TransportHandle::spawn(Box::new(cp), c).unwrap();
        exchange(server, client, 20_000);
    }
}

#[test]
fn wrong_key_never_connects() {
    let (a, b) = mem::pair();
    // A host key the appliance does not list.
    let (s, mut c, _) = cfgs(0.0);
    c.key = SecretKey::generate();
    let server = TransportHandle::spawn(Box::new(b), s).unwrap();
    let client = TransportHandle::spawn(Box::new(a), c).unwrap();
    assert!(server.recv_timeout(Duration::from_millis(400)).is_none());
    assert!(client.try_recv().is_none());
    let st = server.stats().unwrap();
    assert!(st.endpoint.drop_unknown_host > 0, "{:?}", st.endpoint);
    // sending without a session is reported back, never silently lost
    client.send(ConnId(0), mwr(1)).unwrap();
    match client.recv_timeout(Duration::from_secs(2)) {
        Some(Upcall::Dropped { tlp, .. }) => assert_eq!(tlp, mwr(1)),
        other => panic!("expected Dropped, got {other:?}"),
    }
}

#[test]
fn several_hosts_share_one_server_socket() {
    let sp = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let saddr = sp.addr();
    // Three hosts, each its own key; one also with a PSK.
    let keys: Vec<SecretKey> = (0..3).map(|_| SecretKey::generate()).collect();
    let psk = Psk::generate();
    let hosts: Vec<HostKey> = (0..3)
        .map(|i| HostKey {
            host: HostId::new(&format!("host-{i}")).unwrap(),
            public: keys[i].public_key(),
            psk: (i == 2).then(|| psk.clone()),
        })
        .collect();
    let skey = SecretKey::generate();
    let server_key = skey.public_key();
    let server = TransportHandle::spawn(
        Box::new(sp),
        DriverConfig::new(skey, Peers::Accept(hosts.clone())),
    )
    .unwrap();
    let clients: Vec<TransportHandle> = hosts
        .iter()
        .zip(&keys)
        .map(|(h, k)| {
            let port = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
            let cfg = DriverConfig::new(
                k.clone(),
                Peers::Connect {
                    server: PeerAddr::Udp(saddr),
                    host: h.host,
                    server_key,
                    psk: h.psk.clone(),
                },
            );
            TransportHandle::spawn(Box::new(port), cfg).unwrap()
        })
        .collect();
    let conns: Vec<ConnId> = clients.iter().map(wait_connected).collect();
    // every client streams its own numbered writes; the server tells them apart by ConnId
    let n = 5000u32;
    for (c, conn) in clients.iter().zip(&conns) {
        for i in 0..n {
            c.send(*conn, mwr(i)).unwrap();
        }
    }
    let mut next = std::collections::HashMap::new();
    let mut connected = std::collections::HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while next.values().filter(|v| **v == n).count() < hosts.len() {
        assert!(Instant::now() < deadline, "streams incomplete: {next:?}");
        match server.recv_timeout(Duration::from_millis(100)) {
            Some(Upcall::Tlp { conn, tlp, .. }) => {
                let e = next.entry(conn).or_insert(0u32);
                assert_eq!(
                    u32::from_be_bytes([tlp[4], tlp[5], tlp[6], tlp[7]]),
                    *e,
                    "{conn:?}"
                );
                *e += 1;
            }
            Some(Upcall::Event {
                conn,
                event: Event::Connected { host, .. },
            }) => {
                assert!(hosts.iter().any(|h| h.host == host));
                connected.insert(conn);
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert_eq!(connected.len(), 3, "one session per host on one socket");
    assert_eq!(next.len(), 3);
}

/// The single-threaded driver with a queue for other threads (the host agent's and the
/// appliance's pumps): TLPs queued by several threads through `DirectSender`s arrive exactly
/// once and in each sender's order, with 5 % injected loss; the pump thread sleeps in the
/// kernel between frames and is woken by the senders.
#[test]
fn direct_sender_from_other_threads() {
    use pcietun::transport::driver::Direct;
    let (a, b) = mem::pair();
    let (s, c, _) = cfgs(0.05);
    let server = TransportHandle::spawn(Box::new(b), s).unwrap();
    let mut client = Direct::new(Box::new(a), c);
    let conn = connected(|t| client.poll_wake(Some(t)).unwrap());
    let per = 5_000u32;
    let senders: Vec<_> = (0..3u32)
        .map(|k| {
            let tx = client.sender();
            std::thread::spawn(move || {
                for i in 0..per {
                    tx.send(conn, mwr(k << 24 | i)).unwrap();
                    if i % 1000 == 0 {
                        // Let the pump fall asleep, so the next send must wake it.
                        std::thread::sleep(Duration::from_millis(5));
                    }
                }
            })
        })
        .collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pump = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                client.poll_wake(Some(Duration::from_millis(100))).unwrap();
            }
            client
        })
    };
    let s = wait_connected(&server);
    let mut next = [0u32; 3];
    let deadline = Instant::now() + Duration::from_secs(60);
    while next.iter().sum::<u32>() < 3 * per {
        assert!(Instant::now() < deadline, "only {next:?} arrived");
        if let Some(Upcall::Tlp { conn, tlp, .. }) = server.recv_timeout(Duration::from_millis(200))
        {
            assert_eq!(conn, s);
            let got = u32::from_be_bytes([tlp[4], tlp[5], tlp[6], tlp[7]]);
            let (k, i) = ((got >> 24) as usize, got & 0xff_ffff);
            assert_eq!(i, next[k], "sender {k}: exactly once, in order");
            next[k] += 1;
        }
    }
    for t in senders {
        t.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let client = pump.join().unwrap();
    let st = client.stats();
    assert!(st.injected_drops > 0, "the loss run dropped frames");
    assert!(st.sessions[0].1.tlps_sent >= u64::from(3 * per));
}

/// The leader/follower link of the host agent over UDP loopback: a requester that waits for
/// an answer runs the link itself (`drive` returns true and the answer arrives on its
/// thread), while TLPs nobody waits for (the appliance's own requests) are handed up by the
/// watcher thread; everything exactly once, in order.
#[test]
fn shared_link_requesters_drive_and_the_watcher_covers_idle_time() {
    use pcietun::transport::driver::{Direct, SharedLink};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    let sp = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let server_addr = PeerAddr::Udp(sp.addr());
    let cp = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (s, mut c, _) = cfgs(0.0);
    c.seed = 0;
    if let Peers::Connect { server, .. } = &mut c.peers {
        *server = server_addr;
    }
    let server = TransportHandle::spawn(Box::new(sp), s).unwrap();
    let mut client = Direct::new(Box::new(cp), c);
    let conn = connected(|t| client.poll(Some(t)).unwrap());
    let link = Arc::new(SharedLink::new(client).unwrap());
    // Answers (even sequence numbers) and unsolicited TLPs (odd), by the thread that got them.
    let got: Arc<Mutex<Vec<(u32, String)>>> = Arc::default();
    {
        let got = got.clone();
        link.set_dispatch(Box::new(move |u| {
            if let Upcall::Tlp { tlp, .. } = u {
                let n = u32::from_be_bytes([tlp[4], tlp[5], tlp[6], tlp[7]]);
                let who = std::thread::current().name().unwrap_or("?").to_string();
                got.lock().unwrap().push((n, who));
            }
        }));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (link, stop) = (link.clone(), stop.clone());
        std::thread::Builder::new()
            .name("watcher".into())
            .spawn(move || link.run_watcher(&stop, |_| {}).unwrap())
            .unwrap()
    };
    // The server echoes every request with an answer of the same number.
    let s = wait_connected(&server);
    let answered = Arc::new(AtomicU32::new(0));
    let echo = {
        let answered = answered.clone();
        std::thread::spawn(move || {
            let mut seen = 0;
            while seen < 200 {
                if let Some(Upcall::Tlp { tlp, .. }) = server.recv_timeout(Duration::from_secs(5)) {
                    server.send(s, tlp).unwrap();
                    answered.fetch_add(1, Ordering::Relaxed);
                    seen += 1;
                }
            }
            // Then TLPs nobody waits for.
            for i in 0..100u32 {
                server.send(s, mwr(2 * i + 1)).unwrap();
            }
            server
        })
    };
    let requester = {
        let (link, got) = (link.clone(), got.clone());
        std::thread::Builder::new()
            .name("requester".into())
            .spawn(move || {
                let mut driven = 0;
                for i in 0..200u32 {
                    let n = 2 * i;
                    link.send(conn, mwr(n)).unwrap();
                    let done = || got.lock().unwrap().iter().any(|(m, _)| *m == n);
                    if link.drive(&done, Instant::now() + Duration::from_secs(5)) {
                        driven += 1;
                    }
                    let t0 = Instant::now();
                    while !done() {
                        assert!(t0.elapsed() < Duration::from_secs(5), "answer {n} lost");
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                driven
            })
            .unwrap()
    };
    let driven = requester.join().unwrap();
    let _server = echo.join().unwrap();
    let t0 = Instant::now();
    while got.lock().unwrap().len() < 300 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "unsolicited TLPs not handed up"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    stop.store(true, Ordering::Relaxed);
    watcher.join().unwrap();
    let got = got.lock().unwrap();
    let answers: Vec<u32> = got.iter().map(|g| g.0).filter(|n| n % 2 == 0).collect();
    assert_eq!(
        answers,
        (0..200).map(|i| 2 * i).collect::<Vec<_>>(),
        "answers once, in order"
    );
    let odd: Vec<u32> = got.iter().map(|g| g.0).filter(|n| n % 2 == 1).collect();
    assert_eq!(
        odd,
        (0..100).map(|i| 2 * i + 1).collect::<Vec<_>>(),
        "unsolicited once, in order"
    );
    assert!(
        got.iter()
            .filter(|g| g.0 % 2 == 1)
            .all(|g| g.1 == "watcher"),
        "with no requester waiting, the watcher hands TLPs up"
    );
    let by_requester = got.iter().filter(|g| g.1 == "requester").count();
    eprintln!("{driven} of 200 waits drove the link; {by_requester} answers arrived on the requester's thread");
    assert!(
        driven > 100,
        "requesters mostly drive the link themselves: {driven} of 200"
    );
    assert!(
        by_requester > 100,
        "answers mostly wake the requester directly: {by_requester}"
    );
    assert_eq!(answered.load(Ordering::Relaxed), 200);
}

/// Issue 13 item 1 over real sockets: recorded INITs of the host (old timestamps) replayed at
/// 50 000 frames/s for 2 s from another socket on loopback, with garbage among them, while the
/// session streams TLPs. The public-key work stays within the appliance's handshake budget
/// (the rest is answered with 80-byte COOKIEs), the session never goes down, and every TLP
/// arrives exactly once and in order.
#[test]
fn udp_replay_flood_leaves_the_session_alone() {
    use pcietun::transport::cookie::CookieJar;
    use pcietun::transport::handshake::{InitPayload, Initiator, Tai64N, INIT_LEN};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    let sp = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let saddr = sp.addr();
    let cp = UdpPort::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let (s, c) = DriverConfig::pair(HostId::new("h1").unwrap(), PeerAddr::Udp(saddr));
    let (budget_burst, budget_rate) = (s.transport.handshake_burst, s.transport.handshake_rate);
    let ckey = c.key.clone();
    let Peers::Connect { server_key, .. } = c.peers else {
        unreachable!()
    };
    let server = TransportHandle::spawn(Box::new(sp), s).unwrap();
    let client = TransportHandle::spawn(Box::new(cp), c).unwrap();
    let cc = wait_connected(&client);
    let sc = wait_connected(&server);
    // What a recording of two of the host's INITs looks like: genuine, and old.
    let old = Tai64N::now();
    let recs: Vec<Vec<u8>> = (0..2u32)
        .map(|k| {
            let p = InitPayload {
                timestamp: old,
                epoch: 9 + k,
                min_version: 1,
                max_version: 1,
                mtu: 1472,
                encrypt: true,
                rekey: false,
                ciphers: 1,
                credits: [64; 6],
            };
            let mut f = [0u8; INIT_LEN];
            let jar = CookieJar::new(&server_key);
            Initiator::start(
                &ckey,
                &server_key,
                None,
                100 + k,
                &p,
                &jar,
                Default::default(),
                &mut f,
            )
            .unwrap();
            f.to_vec()
        })
        .collect();
    let mut garbage = recs[0].clone();
    garbage[100] ^= 1;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (stop, sent) = (stop.clone(), sent.clone());
        std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let t0 = Instant::now();
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) && t0.elapsed() < Duration::from_secs(2) {
                // 50 frames per millisecond
                let due = (t0.elapsed().as_micros() as u64) / 20;
                while n < due {
                    let f = if n % 10 == 9 {
                        &garbage
                    } else {
                        &recs[(n as usize / 2) % 2]
                    };
                    let _ = sock.send_to(f, saddr);
                    n += 1;
                }
                std::thread::sleep(Duration::from_micros(500));
            }
            sent.store(n, Ordering::Relaxed);
        })
    };
    // Meanwhile: TLPs in batches, checked in order.
    let (mut next_send, mut next_recv) = (0u32, 0u32);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2300) {
        for _ in 0..200 {
            client.send(cc, mwr(next_send)).unwrap();
            next_send += 1;
        }
        let slot = Instant::now() + Duration::from_millis(20);
        while let Some(u) = server.recv_timeout(slot.saturating_duration_since(Instant::now())) {
            match u {
                Upcall::Tlp { conn, tlp, .. } => {
                    assert_eq!(conn, sc);
                    assert_eq!(tlp, mwr(next_recv), "exactly once, in order");
                    next_recv += 1;
                }
                Upcall::Event { event, .. } => panic!("session event during the flood: {event:?}"),
                Upcall::Dropped { .. } => panic!("a TLP was dropped"),
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    attacker.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while next_recv < next_send {
        assert!(
            Instant::now() < deadline,
            "{next_recv} of {next_send} arrived"
        );
        if let Some(Upcall::Tlp { tlp, .. }) = server.recv_timeout(Duration::from_millis(100)) {
            assert_eq!(tlp, mwr(next_recv));
            next_recv += 1;
        }
    }
    let flood = sent.load(Ordering::Relaxed);
    let st = server.stats().unwrap();
    let e = &st.endpoint;
    eprintln!("flood of {flood}: {e:?}");
    assert!(flood > 50_000, "the attacker sent {flood}");
    let budget = u64::from(budget_burst) + 3 * u64::from(budget_rate) + 2;
    assert!(
        e.handshakes_processed <= budget,
        "{} INITs got public-key work, budget {budget}",
        e.handshakes_processed
    );
    assert!(e.drop_replayed_init > 0 && e.cookies_sent > 0 && e.drop_bad_mac1 > 0);
    assert_eq!(e.sessions_down, 0);
    assert_eq!(e.handshakes, 1);
    assert!(client.try_recv().is_none(), "no event on the host either");
}

/// One round of a [`Direct`] takes every frame waiting (up to `RECV_PER_ROUND`, 64), not one:
/// a caller with per-round work that grows with its sessions (the appliance's serving loop)
/// then pays it once per batch, not once per frame (issue 11, docs/transport.md "Many
/// sessions on one serving loop").
#[test]
fn a_direct_round_takes_every_waiting_frame() {
    use pcietun::transport::driver::Direct;
    let (a, b) = mem::pair();
    let (s, c, _) = cfgs(0.0);
    let mut server = Direct::new(Box::new(b), s);
    let mut client = Direct::new(Box::new(a), c);
    // Both ends on this thread, in turn, until both see the session and nothing moves.
    let (mut cc, mut sc) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut quiet = 0;
    while cc.is_none() || sc.is_none() || quiet < 20 {
        assert!(Instant::now() < deadline, "no session within 10 s");
        quiet += 1;
        for (d, slot) in [(&mut client, &mut cc), (&mut server, &mut sc)] {
            match d.poll_wake(Some(Duration::from_millis(1))).unwrap() {
                Some(Upcall::Event {
                    conn,
                    event: Event::Connected { .. },
                }) => {
                    *slot = Some(conn);
                    quiet = 0;
                }
                Some(u) => panic!("unexpected {u:?}"),
                None => {}
            }
        }
    }
    let (cc, sc) = (cc.unwrap(), sc.unwrap());
    let frames0 = client.stats().frames_out;
    const K: u32 = 12;
    for i in 0..K {
        client.send(cc, mwr(i)).unwrap();
    }
    // Every TLP leaves (pacing may hold some back for a moment); the server has not run.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.stats().sessions[0].1.tlps_sent < u64::from(K) {
        assert!(Instant::now() < deadline, "the client did not send");
        assert!(client
            .poll_wake(Some(Duration::from_micros(100)))
            .unwrap()
            .is_none());
    }
    let frames = client.stats().frames_out - frames0;
    assert!(
        frames >= 2 && frames <= u64::from(K),
        "the TLPs went out in several frames: {frames}"
    );
    // One round of the server: every frame's TLP is ready, with no further round.
    let mut got = Vec::new();
    let first = server.poll_wake(Some(Duration::ZERO)).unwrap();
    for u in first
        .into_iter()
        .chain(std::iter::from_fn(|| server.take_queued()))
    {
        match u {
            Upcall::Tlp { conn, tlp, .. } => {
                assert_eq!(conn, sc);
                got.push(u32::from_be_bytes([tlp[4], tlp[5], tlp[6], tlp[7]]));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        got,
        (0..K).collect::<Vec<_>>(),
        "one round took all {frames} frames, in order"
    );
}
