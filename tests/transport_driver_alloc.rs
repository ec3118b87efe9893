//! The driver's data path does not allocate per TLP (docs/transport.md): two `Direct` drivers
//! over real UDP sockets on loopback — with segmentation offload (GSO send, GRO + recvmmsg
//! receive) where the kernel has it — once warmed up, echo requests and stream posted writes
//! with no heap allocation per TLP: frames are built in the engine's transmit buffer, sent as
//! runs, received into one chunk that is split per frame and reclaimed once its TLPs are
//! dropped. The counting allocator of tests/alloc_common, as tests/transport_alloc.rs (which checks the
//! sans-I/O endpoint alone).

mod alloc_common;

use pcietun::transport::driver::{udp::UdpPort, Direct, DriverConfig, Upcall};
use pcietun::transport::{Bytes, ConnId, Event, HostId, PeerAddr};
use std::time::{Duration, Instant};

/// Run `d` once without sleeping; count the TLPs it hands up.
fn pump(d: &mut Direct, got: &mut u64, last: &mut Option<(ConnId, Bytes)>) {
    while let Some(u) = d.poll(Some(Duration::ZERO)).unwrap() {
        if let Upcall::Tlp { conn, tlp, .. } = u {
            *got += 1;
            *last = Some((conn, tlp));
        }
    }
}

fn connect(client: &mut Direct, server: &mut Direct) -> (ConnId, ConnId) {
    let (mut cc, mut sc) = (None, None);
    let end = Instant::now() + Duration::from_secs(5);
    while (cc.is_none() || sc.is_none()) && Instant::now() < end {
        for (d, c) in [(&mut *client, &mut cc), (&mut *server, &mut sc)] {
            while let Some(u) = d.poll(Some(Duration::ZERO)).unwrap() {
                if let Upcall::Event {
                    conn,
                    event: Event::Connected { .. },
                } = u
                {
                    *c = Some(conn);
                }
            }
        }
    }
    (cc.expect("client connected"), sc.expect("server connected"))
}

#[test]
fn udp_direct_steady_state_allocates_nothing_per_tlp() {
    let lo = "127.0.0.1:0".parse().unwrap();
    let (cp, sp) = (UdpPort::bind(lo).unwrap(), UdpPort::bind(lo).unwrap());
    eprintln!("offload: {:?}", cp.offload());
    let (mut scfg, mut ccfg) =
        DriverConfig::pair(HostId::new("alloc").unwrap(), PeerAddr::Udp(sp.addr()));
    scfg.seed = 1;
    ccfg.seed = 2;
    let mut server = Direct::new(Box::new(sp), scfg);
    let mut client = Direct::new(Box::new(cp), ccfg);
    let (cc, _) = connect(&mut client, &mut server);
    let mut w = vec![0x60, 0, 0, 62];
    w.resize(16 + 248, 7);
    let mwr = Bytes::from(w);
    // Echo: a TLP to the server, the same bytes back. Then a stream of posted writes.
    let rounds = |client: &mut Direct, server: &mut Direct, n: u64| {
        let (mut got_s, mut got_c) = (0u64, 0u64);
        let mut last = None;
        for i in 0..n {
            client.send(cc, mwr.clone()).unwrap();
            let end = Instant::now() + Duration::from_secs(5);
            while got_s <= i && Instant::now() < end {
                pump(server, &mut got_s, &mut last);
                pump(client, &mut got_c, &mut None);
            }
            if let Some((conn, tlp)) = last.take() {
                server.send(conn, tlp).unwrap();
            }
            while got_c <= i && Instant::now() < end {
                pump(client, &mut got_c, &mut None);
                pump(server, &mut got_s, &mut None);
            }
        }
        assert_eq!((got_s, got_c), (n, n), "every echo came back");
        // The stream: as many as the session takes, drained by the server.
        let (mut sent, mut got) = (0u64, 0u64);
        let end = Instant::now() + Duration::from_secs(10);
        while got < 20 * n && Instant::now() < end {
            // As the appliance's serving loop submits: only while the session wants more (its
            // unsent bytes below about a window), the rest of a backlog waiting above it.
            while sent < 20 * n && client.wants_more(cc) && client.submit(cc, mwr.clone()).is_ok() {
                sent += 1;
            }
            pump(client, &mut 0, &mut None);
            pump(server, &mut got, &mut None);
        }
        assert_eq!(got, 20 * n, "every posted write arrived");
    };
    rounds(&mut client, &mut server, 2_000); // warm-up: queues and buffers reach their size
    let before = alloc_common::allocations();
    let n = 5_000;
    rounds(&mut client, &mut server, n);
    let allocs = alloc_common::allocations() - before;
    let tlps = n * 2 + 20 * n;
    eprintln!("{allocs} allocations for {tlps} TLPs through two UDP drivers");
    // Only a receive chunk that is still held when it runs out is replaced (1 MiB at a time).
    assert!(
        allocs * 200 < tlps,
        "{allocs} allocations for {tlps} TLPs: the driver path allocates per TLP"
    );
}
