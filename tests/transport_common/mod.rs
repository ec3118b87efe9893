//! Shared harness of the transport simulations: TLP generator with ordering witnesses, a
//! receiver-side checker, and a two-endpoint simulator over [`pcietun::transport::sim::Link`].
#![allow(dead_code)]

use bytes::Bytes;
use pcietun::tlp::OrderingClass;
use pcietun::transport::sim::{Faults, Link};
use pcietun::transport::{
    Config, ConnId, Endpoint, Event, HostId, Instant, PeerAddr, PublicKey, Role, SecretKey,
};
use std::time::Duration;

pub const US: Duration = Duration::from_micros(1);
pub const MS: Duration = Duration::from_millis(1);

pub struct SeedGuard(pub u64, pub &'static str);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "FAILING SEED {} — replay: PCIETUN_SIM_SEED={} cargo test --test transport_sim {}",
                self.0, self.0, self.1
            );
        }
    }
}

pub fn seed(default: u64) -> u64 {
    std::env::var("PCIETUN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A TLP whose bytes 4..16 carry (class sequence, posted submitted before it, length tag).
pub fn make_tlp(class: OrderingClass, class_seq: u32, posted_before: u32, dws: u16) -> Bytes {
    let (b0, dws) = match class {
        OrderingClass::Posted => (0x60, dws.max(1)),     // MWr64
        OrderingClass::NonPosted => (0x20, 0),           // MRd64 (no data)
        OrderingClass::Completion => (0x4a, dws.max(1)), // CplD
    };
    let len_field = if class == OrderingClass::NonPosted {
        1
    } else {
        dws
    };
    let mut v = Vec::with_capacity(16 + 4 * dws as usize);
    v.extend_from_slice(&[b0, 0, (len_field >> 8) as u8 & 3, len_field as u8]);
    v.extend_from_slice(&class_seq.to_be_bytes());
    v.extend_from_slice(&posted_before.to_be_bytes());
    v.extend_from_slice(&(class_seq ^ 0xa5a5_5a5a).to_be_bytes());
    for i in 0..4 * dws as usize {
        v.push((class_seq as usize + i) as u8);
    }
    Bytes::from(v)
}

pub fn field(t: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]])
}

/// Checks what one side receives.
#[derive(Default)]
pub struct Checker {
    pub next: [u32; 3],
    pub posted_delivered: u32,
    pub total: u64,
}

impl Checker {
    pub fn check(&mut self, class: OrderingClass, t: &[u8], ctx: &str) {
        let c = class.index();
        let seq = field(t, 4);
        assert_eq!(
            seq, self.next[c],
            "{ctx}: class {class:?} out of order / lost / duplicated"
        );
        assert_eq!(
            field(t, 12),
            seq ^ 0xa5a5_5a5a,
            "{ctx}: corrupted TLP delivered"
        );
        for (i, b) in t[16..].iter().enumerate() {
            assert_eq!(
                *b,
                (seq as usize + i) as u8,
                "{ctx}: corrupted payload delivered"
            );
        }
        if class != OrderingClass::Posted {
            assert!(
                self.posted_delivered >= field(t, 8),
                "{ctx}: {class:?} passed an earlier posted write"
            );
        } else {
            self.posted_delivered += 1;
        }
        self.next[c] += 1;
        self.total += 1;
    }
}

pub struct Sim {
    pub now: Instant,
    pub link: Link,
    pub ep: [Endpoint; 2],
    pub conn: [ConnId; 2],
    pub up: [bool; 2],
    pub events: Vec<(usize, Instant, Event)>,
    pub buf: Vec<u8>,
    pub max_memory: usize,
    pub max_reorder: usize,
    /// When set, every transmitted frame is recorded here as (sending node, bytes).
    pub tap: Option<Vec<(usize, Vec<u8>)>>,
    /// The static keys: node 0 (host), node 1 (appliance).
    pub keys: [SecretKey; 2],
}

/// The host name the simulations use.
pub fn sim_host() -> HostId {
    HostId::new("sim-host").unwrap()
}

/// A server endpoint accepting `client`, and a client endpoint connecting to it at
/// `Mem(server_node)`.
pub fn endpoints(
    cfg: &Config,
    seed: u64,
    keys: &[SecretKey; 2],
    host: HostId,
    server_node: u32,
) -> (Endpoint, ConnId, Endpoint, ConnId) {
    let mut server = Endpoint::new(cfg.clone(), Role::Server, keys[1].clone(), seed ^ 0x5e);
    let sconn = server.add_host(host, keys[0].public_key(), None);
    let mut client = Endpoint::new(cfg.clone(), Role::Client, keys[0].clone(), seed ^ 0xc1);
    let cconn = client.connect(
        Instant::ZERO,
        PeerAddr::Mem(server_node),
        host,
        keys[1].public_key(),
        None,
    );
    (server, sconn, client, cconn)
}

impl Sim {
    /// A fresh endpoint for node `n` (same static keys, new everything else), as a restarted
    /// process would be.
    pub fn restart_node(&mut self, n: usize, seed: u64) {
        let host = sim_host();
        if n == 1 {
            let mut ep = Endpoint::new(config(), Role::Server, self.keys[1].clone(), seed);
            self.conn[1] = ep.add_host(host, self.keys[0].public_key(), None);
            self.ep[1] = ep;
        } else {
            let mut ep = Endpoint::new(config(), Role::Client, self.keys[0].clone(), seed);
            let server: PublicKey = self.keys[1].public_key();
            self.conn[0] = ep.connect(self.now, PeerAddr::Mem(1), host, server, None);
            self.ep[0] = ep;
        }
        self.up[n] = false;
    }
}

pub fn config() -> Config {
    Config {
        encrypt: false, // authentication only; the AEAD path has its own tests
        ..Config::default()
    }
}

impl Sim {
    pub fn new(seed: u64, ab: Faults, ba: Faults, cfg: Config) -> Sim {
        let keys = [SecretKey::generate(), SecretKey::generate()];
        let (server, sconn, client, cconn) = endpoints(&cfg, seed, &keys, sim_host(), 1);
        Sim {
            keys,
            now: Instant::ZERO,
            link: Link::new(seed, ab, ba),
            ep: [client, server],
            conn: [cconn, sconn],
            up: [false; 2],
            events: Vec::new(),
            buf: vec![0; 9000],
            max_memory: 0,
            max_reorder: 0,
            tap: None,
        }
    }

    /// One round: transmit everything, receive everything due, run timers, collect events.
    /// Returns whether anything happened.
    pub fn pump(&mut self) -> bool {
        let mut progress = false;
        for n in 0..2 {
            self.ep[n].handle_timeout(self.now);
            while let Some(t) = self.ep[n].poll_transmit(self.now, &mut self.buf) {
                self.link.send(self.now, n, &self.buf[..t.len]);
                if let Some(tap) = self.tap.as_mut() {
                    tap.push((n, self.buf[..t.len].to_vec()));
                }
                progress = true;
            }
        }
        while let Some((to, frame)) = self.link.pop_due(self.now) {
            let from = PeerAddr::Mem(1 - to as u32);
            self.ep[to].handle_frame(self.now, from, frame);
            progress = true;
        }
        for n in 0..2 {
            while let Some((c, e)) = self.ep[n].poll_event() {
                assert_eq!(c, self.conn[n]);
                match &e {
                    Event::Connected { .. } => self.up[n] = true,
                    Event::Down { .. } => self.up[n] = false,
                }
                self.events.push((n, self.now, e));
                progress = true;
            }
            self.max_memory = self.max_memory.max(self.ep[n].memory(self.conn[n]));
            self.max_reorder = self.max_reorder.max(self.ep[n].recv_depth(self.conn[n]).0);
        }
        progress
    }

    /// Advance time to the next event.
    pub fn advance(&mut self, progressed: bool) {
        // Something happened at `now` (a frame arrived, an ACK opened the window): go round
        // again before time moves, as a real driver calls poll_transmit after every input.
        if progressed {
            return;
        }
        let mut next = self.link.next_arrival();
        for ep in &self.ep {
            if let Some(t) = ep.poll_timeout() {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        }
        let next = next.unwrap_or(self.now + MS);
        self.now = if next > self.now { next } else { self.now + US };
    }
}

/// A LAN-like link: 20 µs one way, 5 µs jitter, no faults.
pub fn lan() -> Faults {
    Faults {
        delay: 20 * US,
        jitter: 5 * US,
        ..Faults::default()
    }
}

impl Sim {
    /// Pump until `done(self)` or the simulated clock passes `limit`; returns whether done.
    pub fn run_until(&mut self, limit: Instant, mut done: impl FnMut(&mut Sim) -> bool) -> bool {
        loop {
            if done(self) {
                return true;
            }
            if self.now > limit {
                return false;
            }
            let p = self.pump();
            self.advance(p);
        }
    }

    /// Events of node `n` so far, matching `f`.
    pub fn count_events(&self, n: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.events.iter().filter(|e| e.0 == n && f(&e.2)).count()
    }
}

/// `t + d`.
pub fn after(t: Instant, d: Duration) -> Instant {
    t + d
}
