//! Deterministic simulation of the transport (docs/protocol.md §5–§7): two sans-I/O endpoints
//! over a seeded faulty in-memory link, 10^6 TLPs of mixed classes per scenario, checking
//! exactly-once in-order delivery, the PCIe ordering rules, bounded memory and liveness.
//!
//! A failing run prints its seed; replay it with `PCIETUN_SIM_SEED=<seed> cargo test --test
//! transport_sim <name>`.

use bytes::Bytes;
use pcietun::tlp::OrderingClass;
use pcietun::transport::sim::{Faults, Link};
use pcietun::transport::{Config, ConnId, Endpoint, Event, HostId, Instant, PeerAddr, Psk, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// TLPs pushed through every scenario.
const TLPS: u64 = 1_000_000;

const US: Duration = Duration::from_micros(1);
const MS: Duration = Duration::from_millis(1);

struct SeedGuard(u64, &'static str);

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

fn seed(default: u64) -> u64 {
    std::env::var("PCIETUN_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A TLP whose bytes 4..16 carry (class sequence, posted submitted before it, length tag).
fn make_tlp(class: OrderingClass, class_seq: u32, posted_before: u32, dws: u16) -> Bytes {
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

fn field(t: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]])
}

/// Checks what one side receives.
#[derive(Default)]
struct Checker {
    next: [u32; 3],
    posted_delivered: u32,
    total: u64,
}

impl Checker {
    fn check(&mut self, class: OrderingClass, t: &[u8], ctx: &str) {
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

struct Sim {
    now: Instant,
    link: Link,
    ep: [Endpoint; 2],
    conn: [ConnId; 2],
    up: [bool; 2],
    events: Vec<(usize, Instant, Event)>,
    buf: Vec<u8>,
    max_memory: usize,
    max_reorder: usize,
}

fn config() -> Config {
    Config {
        encrypt: false, // authentication only; the AEAD path has its own tests
        ..Config::default()
    }
}

impl Sim {
    fn new(seed: u64, ab: Faults, ba: Faults, cfg: Config) -> Sim {
        let host = HostId::new("sim-host").unwrap();
        let psk = Psk([9; 32]);
        let mut server = Endpoint::new(cfg.clone(), Role::Server, seed ^ 0x5e);
        let sconn = server.add_host(host, psk.clone());
        let mut client = Endpoint::new(cfg, Role::Client, seed ^ 0xc1);
        let cconn = client.connect(Instant::ZERO, PeerAddr::Mem(1), host, psk);
        Sim {
            now: Instant::ZERO,
            link: Link::new(seed, ab, ba),
            ep: [client, server],
            conn: [cconn, sconn],
            up: [false; 2],
            events: Vec::new(),
            buf: vec![0; 9000],
            max_memory: 0,
            max_reorder: 0,
        }
    }

    /// One round: transmit everything, receive everything due, run timers, collect events.
    /// Returns whether anything happened.
    fn pump(&mut self) -> bool {
        let mut progress = false;
        for n in 0..2 {
            self.ep[n].handle_timeout(self.now);
            while let Some(t) = self.ep[n].poll_transmit(self.now, &mut self.buf) {
                self.link.send(self.now, n, &self.buf[..t.len]);
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
    fn advance(&mut self, progressed: bool) {
        let mut next = self.link.next_arrival();
        for ep in &self.ep {
            if let Some(t) = ep.poll_timeout() {
                next = Some(next.map_or(t, |n: Instant| n.min(t)));
            }
        }
        let next = next.unwrap_or(self.now + MS);
        if next > self.now {
            self.now = next;
        } else if !progressed {
            self.now = self.now + US;
        }
    }
}

/// Client sends `n` mixed TLPs; the server answers every NP with a completion.
fn run_stream(name: &'static str, default_seed: u64, ab: Faults, ba: Faults, n: u64) -> Sim {
    let seed = seed(default_seed);
    let _g = SeedGuard(seed, name);
    let mut sim = Sim::new(seed, ab, ba, config());
    let mut rng = StdRng::seed_from_u64(seed);
    let (mut sent, mut posted_sent) = (0u64, 0u32);
    let mut class_seq = [0u32; 3];
    let mut replies_due: u32 = 0;
    let mut reply_seq = 0u32;
    let (mut at_server, mut at_client) = (Checker::default(), Checker::default());
    let mut next_tlp: Option<Bytes> = None;
    let mut next_class = OrderingClass::Posted;
    let mut rounds = 0u64;
    while at_server.total < n || at_client.total < u64::from(class_seq[1]) {
        rounds += 1;
        assert!(
            sim.now < Instant::from_nanos(600_000_000_000),
            "{name}: no progress, seed {seed}"
        );
        let mut progress = sim.pump();
        if sim.up[0] {
            // client app: submit until the queue pushes back
            while sent < n {
                if next_tlp.is_none() {
                    let r: u32 = rng.gen_range(0..100);
                    next_class = match r {
                        0..60 => OrderingClass::Posted,
                        60..85 => OrderingClass::NonPosted,
                        _ => OrderingClass::Completion,
                    };
                    let c = next_class.index();
                    let dws = rng.gen_range(1..=if c == 0 { 64 } else { 16 });
                    next_tlp = Some(make_tlp(next_class, class_seq[c], posted_sent, dws));
                }
                let t = next_tlp.clone().unwrap();
                if sim.ep[0].send_tlp(sim.conn[0], t).is_err() {
                    break;
                }
                next_tlp = None;
                class_seq[next_class.index()] += 1;
                if next_class == OrderingClass::Posted {
                    posted_sent += 1;
                }
                sent += 1;
                progress = true;
            }
            while let Some(d) = sim.ep[0].poll_delivered(sim.now, sim.conn[0]) {
                at_client.check(d.class, &d.tlp, name);
                progress = true;
            }
        }
        if sim.up[1] {
            while let Some(d) = sim.ep[1].poll_delivered(sim.now, sim.conn[1]) {
                at_server.check(d.class, &d.tlp, name);
                if d.class == OrderingClass::NonPosted {
                    replies_due += 1;
                }
                progress = true;
            }
            while replies_due > 0 {
                let t = make_tlp(OrderingClass::Completion, reply_seq, 0, 1);
                if sim.ep[1].send_tlp(sim.conn[1], t).is_err() {
                    break;
                }
                reply_seq += 1;
                replies_due -= 1;
                progress = true;
            }
        }
        sim.advance(progress);
    }
    assert_eq!(at_server.total, n, "{name}");
    assert_eq!(
        at_client.next[2], class_seq[1],
        "{name}: every read answered exactly once"
    );
    // Credits bound the memory: queue (1 MiB) + replay buffer + reorder/delivery buffers.
    let cfg = config();
    let credit_bytes = 16 * (cfg.credits[1] + cfg.credits[3] + cfg.credits[5]) as usize
        + 20 * (cfg.credits[0] + cfg.credits[2] + cfg.credits[4]) as usize;
    assert!(
        sim.max_memory <= cfg.max_pending_bytes + 2 * credit_bytes,
        "{name}: memory {} unbounded",
        sim.max_memory
    );
    let window = (cfg.credits[0] + cfg.credits[2] + cfg.credits[4]) as usize;
    assert!(
        sim.max_reorder <= window,
        "{name}: reorder buffer {} > {window}",
        sim.max_reorder
    );
    let downs: Vec<_> = sim
        .events
        .iter()
        .filter(|e| matches!(e.2, Event::Down { .. }))
        .collect();
    assert!(
        downs.is_empty(),
        "{name}: spurious link-down on a live link: {downs:?}"
    );
    let st = sim.ep[0].stats(sim.conn[0]).unwrap();
    eprintln!(
        "{name}: {n} TLPs, sim time {:?}, {rounds} rounds, frames {} retransmits {} (fast {}, rto {}), srtt {:?}, max mem {} B, link {:?}",
        Duration::from_nanos(sim.now.as_nanos()),
        st.frames_sent,
        st.retransmits,
        st.fast_retransmits,
        st.rto_expirations,
        st.srtt,
        sim.max_memory,
        sim.link.stats[0]
    );
    sim
}

fn lan() -> Faults {
    Faults {
        delay: 20 * US,
        jitter: 5 * US,
        ..Faults::default()
    }
}

#[test]
fn clean_link() {
    let sim = run_stream("clean_link", 1, lan(), lan(), TLPS);
    let st = sim.ep[0].stats(sim.conn[0]).unwrap();
    assert_eq!(st.retransmits, 0, "no retransmission without loss");
    assert!(
        st.tlps_sent as f64 / st.frames_sent as f64 > 3.0,
        "TLPs are batched"
    );
}

#[test]
fn one_percent_loss() {
    let f = Faults {
        loss: 0.01,
        ..lan()
    };
    let sim = run_stream("one_percent_loss", 2, f.clone(), f, TLPS);
    assert!(sim.ep[0].stats(sim.conn[0]).unwrap().retransmits > 0);
}

#[test]
fn twenty_percent_loss() {
    let f = Faults { loss: 0.2, ..lan() };
    run_stream("twenty_percent_loss", 3, f.clone(), f, TLPS);
}

#[test]
fn burst_loss() {
    let f = Faults {
        burst: Some((0.01, 0.25)),
        ..lan()
    };
    let sim = run_stream("burst_loss", 4, f.clone(), f, TLPS);
    assert!(sim.link.stats[0].dropped > 0);
}

#[test]
fn reordering() {
    let f = Faults {
        reorder: 0.1,
        reorder_delay: 60 * US,
        jitter: 30 * US,
        ..lan()
    };
    let sim = run_stream("reordering", 5, f.clone(), f, TLPS);
    assert!(sim.link.stats[0].reordered > 0);
}

#[test]
fn duplication() {
    let f = Faults {
        duplicate: 0.1,
        ..lan()
    };
    let sim = run_stream("duplication", 6, f.clone(), f, TLPS);
    let s = sim.ep[1].stats(sim.conn[1]).unwrap();
    assert!(
        s.drop_replay > 0,
        "duplicated frames are caught by the replay window"
    );
}

#[test]
fn corruption() {
    let f = Faults {
        corrupt: 0.05,
        ..lan()
    };
    let sim = run_stream("corruption", 7, f.clone(), f, TLPS);
    let s = sim.ep[1].stats(sim.conn[1]).unwrap();
    let e = sim.ep[1].endpoint_stats();
    assert!(
        s.drop_bad_tag + e.drop_bad_header + e.drop_unknown_session + s.drop_stale_epoch > 0,
        "corrupted frames are dropped and counted"
    );
}

#[test]
fn partition_200ms() {
    let p = vec![(
        Instant::from_nanos(30_000_000),
        Instant::from_nanos(230_000_000),
    )];
    let f = Faults {
        partitions: p,
        ..lan()
    };
    let sim = run_stream("partition_200ms", 8, f.clone(), f, TLPS);
    assert!(
        sim.now > Instant::from_nanos(230_000_000),
        "the stream spans the partition"
    );
    assert!(sim.link.stats[0].dropped > 0);
}

#[test]
fn asymmetric_loss() {
    let f = Faults { loss: 0.2, ..lan() };
    run_stream("asymmetric_loss", 9, f, lan(), TLPS / 4);
}
