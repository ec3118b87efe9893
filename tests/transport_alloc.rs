//! The hot path does not allocate (docs/transport.md): once warmed up, pushing TLPs through
//! two endpoints — queueing, framing, sealing, opening, ACK/SACK, credit return, delivery —
//! costs no heap allocation per TLP. Receive buffers come from one chunk that is split per
//! frame and reclaimed, as the socket drivers do.

mod alloc_common;

use pcietun::transport::{BytesMut, Config, Endpoint, HostId, Instant, PeerAddr, Role, SecretKey};

struct Pair {
    ep: [Endpoint; 2],
    pool: BytesMut,
    buf: Vec<u8>,
    now: u64,
}

impl Pair {
    fn step(&mut self) {
        self.now += 5_000;
        let now = Instant::from_nanos(self.now);
        for n in 0..2 {
            self.ep[n].handle_timeout(now);
            while let Some(t) = self.ep[n].poll_transmit(now, &mut self.buf) {
                if self.pool.capacity() < t.len {
                    self.pool.reserve(256 * 1024);
                }
                self.pool.extend_from_slice(&self.buf[..t.len]);
                let f = self.pool.split();
                self.ep[1 - n].handle_frame(now, PeerAddr::Mem(n as u32), f);
            }
        }
    }
}

#[test]
fn steady_state_is_allocation_free() {
    let host = HostId::new("alloc").unwrap();
    let (skey, ckey) = (SecretKey::generate(), SecretKey::generate());
    let mut server = Endpoint::new(Config::default(), Role::Server, skey.clone(), 1);
    let sc = server.add_host(host, ckey.public_key(), None);
    let mut client = Endpoint::new(Config::default(), Role::Client, ckey, 2);
    let cc = client.connect(
        Instant::ZERO,
        PeerAddr::Mem(1),
        host,
        skey.public_key(),
        None,
    );
    let mut p = Pair {
        ep: [client, server],
        pool: BytesMut::with_capacity(256 * 1024),
        buf: vec![0; 2048],
        now: 0,
    };
    for _ in 0..10 {
        p.step();
    }
    assert!(p.ep[0].is_connected(cc) && p.ep[1].is_connected(sc));
    // A 64-byte posted write and a read, shared buffers (cloning a Bytes does not allocate).
    let mut w = vec![0x60, 0, 0, 12];
    w.resize(64, 7);
    let mwr = pcietun::transport::Bytes::from(w);
    let mrd =
        pcietun::transport::Bytes::from(vec![0x20, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let _ = (mwr.clone(), mrd.clone());
    let run = |p: &mut Pair, n: u64| {
        let mut sent = 0;
        let mut got = 0;
        while got < n {
            while sent < n {
                let t = if sent % 4 == 3 {
                    mrd.clone()
                } else {
                    mwr.clone()
                };
                if p.ep[0].send_tlp(cc, t).is_err() {
                    break;
                }
                sent += 1;
            }
            p.step();
            let now = Instant::from_nanos(p.now);
            while p.ep[1].poll_delivered(now, sc).is_some() {
                got += 1;
            }
        }
    };
    run(&mut p, 100_000); // warm-up: queues and buffers reach their working size
    let before = alloc_common::allocations();
    let n = 200_000;
    run(&mut p, n);
    let allocs = alloc_common::allocations() - before;
    eprintln!("{allocs} allocations for {n} TLPs");
    // Only the receive chunk is refilled now and then (256 KiB at a time).
    assert!(
        (allocs as f64) < n as f64 / 500.0,
        "{allocs} allocations for {n} TLPs: the hot path allocates"
    );
}
