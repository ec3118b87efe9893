//! Liveness and ordering under pressure (docs/protocol.md §6, §7), by deterministic
//! simulation: a blocked Non-Posted stream never stops posted writes; a permanent partition is
//! declared down in time with every outstanding Non-Posted TLP failed upward, then the link
//! reconnects with a new epoch; a restarted peer (either side) is detected at once.

mod transport_common;
use pcietun::tlp::{classify, OrderingClass};
use pcietun::transport::sim::Faults;
use pcietun::transport::{DownReason, Event, Instant};
use std::collections::HashSet;
use std::time::Duration;
use transport_common::*;

const MS: Duration = Duration::from_millis(1);

fn connected(seed: u64) -> Sim {
    let mut sim = Sim::new(seed, lan(), lan(), config());
    assert!(
        sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]),
        "handshake"
    );
    sim
}

/// Submit as many of `gen`'s TLPs as the client queue takes.
fn feed(sim: &mut Sim, next: &mut u32, total: u32, gen: &dyn Fn(u32) -> Bytes) {
    while *next < total {
        if sim.ep[0].send_tlp(sim.conn[0], gen(*next)).is_err() {
            break;
        }
        *next += 1;
    }
}

use bytes::Bytes;

/// Pattern: NP, P, P, NP, P, P, ... with ordering witnesses.
fn pattern(i: u32) -> Bytes {
    let np_before = i.div_ceil(3);
    let p_before = i - np_before;
    if i % 3 == 0 {
        make_tlp(OrderingClass::NonPosted, i / 3, p_before, 0)
    } else {
        make_tlp(OrderingClass::Posted, p_before, p_before, 4)
    }
}

#[test]
fn posted_writes_pass_a_blocked_nonposted_stream() {
    let seed = seed(11);
    let _g = SeedGuard(seed, "posted_writes_pass_a_blocked_nonposted_stream");
    let mut sim = connected(seed);
    let total = 150_000u32;
    let mut next = 0;
    let mut chk = Checker::default();
    // Phase 1: the server's consumer refuses Non-Posted requests (e.g. its device is stuck);
    // it keeps taking posted writes.
    let np_credits = config().credits[2] as usize;
    let limit = after(sim.now, Duration::from_secs(30));
    let ok = sim.run_until(limit, |s| {
        feed(s, &mut next, total, &pattern);
        while let Some(d) = s.ep[1].poll_delivered_class(s.now, s.conn[1], OrderingClass::Posted) {
            chk.check(d.class, &d.tlp, "phase 1");
        }
        assert!(s.ep[1]
            .poll_delivered_class(s.now, s.conn[1], OrderingClass::Completion)
            .is_none());
        chk.next[0] >= 80_000
    });
    assert!(
        ok,
        "posted writes stalled behind blocked reads: only {} delivered",
        chk.next[0]
    );
    assert_eq!(chk.next[1], 0, "no read was taken in phase 1");
    let (_, waiting) = sim.ep[1].recv_depth(sim.conn[1]);
    assert!(
        waiting <= np_credits + 1024,
        "receiver holds {waiting} TLPs: credits must bound it"
    );
    // Phase 2: the consumer takes everything again; nothing was lost or reordered.
    let ok = sim.run_until(after(sim.now, Duration::from_secs(30)), |s| {
        feed(s, &mut next, total, &pattern);
        while let Some(d) = s.ep[1].poll_delivered(s.now, s.conn[1]) {
            chk.check(d.class, &d.tlp, "phase 2");
        }
        chk.total == u64::from(total)
    });
    assert!(ok, "delivered {} of {total}", chk.total);
    assert_eq!(sim.count_events(0, |e| matches!(e, Event::Down { .. })), 0);
}

#[test]
fn permanent_partition_is_declared_down_and_fails_nonposted_then_reconnects() {
    let seed = seed(12);
    let _g = SeedGuard(seed, "permanent_partition");
    let mut sim = connected(seed);
    let idle = config().idle_timeout;
    let first_epoch = match &sim.events.iter().find(|e| e.0 == 1).unwrap().2 {
        Event::Connected { peer_epoch, .. } => *peer_epoch,
        e => panic!("{e:?}"),
    };
    // Traffic in flight, then the network disappears.
    let mut next = 0;
    let mut delivered_np = HashSet::new();
    sim.run_until(after(sim.now, 5 * MS), |s| {
        feed(s, &mut next, 1_000_000, &pattern);
        while let Some(d) = s.ep[1].poll_delivered(s.now, s.conn[1]) {
            if d.class == OrderingClass::NonPosted {
                delivered_np.insert(u32::from_be_bytes([d.tlp[4], d.tlp[5], d.tlp[6], d.tlp[7]]));
            }
        }
        false
    });
    let cut = sim.now;
    let forever = vec![(cut, Instant::from_nanos(u64::MAX))];
    for n in 0..2 {
        sim.link.set_faults(
            n,
            Faults {
                partitions: forever.clone(),
                ..lan()
            },
        );
    }
    feed(&mut sim, &mut next, 1_000_000, &pattern);
    let submitted_np = next.div_ceil(3);
    let down = sim.run_until(after(cut, 3 * idle), |s| {
        s.count_events(0, |e| matches!(e, Event::Down { .. })) > 0
            && s.count_events(1, |e| matches!(e, Event::Down { .. })) > 0
    });
    assert!(down, "partition never declared down");
    let mut failed = HashSet::new();
    for (n, t, e) in &sim.events {
        if let Event::Down {
            reason,
            failed_nonposted,
        } = e
        {
            assert_eq!(*reason, DownReason::IdleTimeout);
            assert!(
                *t <= after(cut, idle + 25 * MS),
                "node {n} declared down late: {t:?}"
            );
            assert!(
                *t >= after(cut, idle - 25 * MS),
                "node {n} declared down early: {t:?}"
            );
            if *n == 0 {
                for tlp in failed_nonposted {
                    assert_eq!(classify(tlp).unwrap().0, OrderingClass::NonPosted);
                    failed.insert(u32::from_be_bytes([tlp[4], tlp[5], tlp[6], tlp[7]]));
                }
            }
        }
    }
    assert!(!failed.is_empty(), "reads were outstanding at the cut");
    for np in 0..submitted_np {
        assert!(
            failed.contains(&np) || delivered_np.contains(&np),
            "read {np} neither delivered nor failed upward: it would hang"
        );
    }
    // The network comes back: the host reconnects by itself, with a new epoch.
    for n in 0..2 {
        sim.link.set_faults(n, lan());
    }
    let back = sim.run_until(after(sim.now, 5 * idle), |s| s.up[0] && s.up[1]);
    assert!(back, "no automatic reconnection");
    let epochs: Vec<u32> = sim
        .events
        .iter()
        .filter_map(|e| match (&e.0, &e.2) {
            (1, Event::Connected { peer_epoch, .. }) => Some(*peer_epoch),
            _ => None,
        })
        .collect();
    assert_eq!(epochs.len(), 2);
    assert_ne!(epochs[1], first_epoch, "a new session has a new epoch");
    // and TLPs flow on the new session
    let mut next = 0;
    let mut chk = Checker::default();
    let ok = sim.run_until(after(sim.now, Duration::from_secs(5)), |s| {
        feed(s, &mut next, 1000, &pattern);
        while let Some(d) = s.ep[1].poll_delivered(s.now, s.conn[1]) {
            chk.check(d.class, &d.tlp, "after reconnect");
        }
        chk.total == 1000
    });
    assert!(ok);
}

/// When node `n` reported its peer restarted.
fn restart_time(sim: &Sim, n: usize) -> Instant {
    sim.events
        .iter()
        .find(|e| {
            e.0 == n
                && matches!(
                    e.2,
                    Event::Down {
                        reason: DownReason::PeerRestarted,
                        ..
                    }
                )
        })
        .map(|e| e.1)
        .unwrap()
}

#[test]
fn restarted_server_is_detected_at_once() {
    let seed = seed(13);
    let _g = SeedGuard(seed, "restarted_server_is_detected_at_once");
    let mut sim = connected(seed);
    let mut next = 0;
    sim.run_until(after(sim.now, 2 * MS), |s| {
        feed(s, &mut next, 3000, &pattern);
        false
    });
    sim.restart_node(1, seed ^ 0xdead);
    let t0 = sim.now;
    let ok = sim.run_until(after(t0, config().idle_timeout), |s| {
        feed(s, &mut next, 3000, &pattern);
        s.count_events(0, |e| {
            matches!(
                e,
                Event::Down {
                    reason: DownReason::PeerRestarted,
                    ..
                }
            )
        }) > 0
            && s.up[0]
            && s.up[1]
    });
    assert!(ok, "client did not notice the restarted server");
    let t = restart_time(&sim, 0);
    assert!(t < after(t0, 5 * MS), "detection took {:?}", t - t0);
    assert!(sim.ep[1].endpoint_stats().resets_sent > 0);
}

#[test]
fn restarted_client_replaces_its_old_session() {
    let seed = seed(14);
    let _g = SeedGuard(seed, "restarted_client_replaces_its_old_session");
    let mut sim = connected(seed);
    let mut next = 0;
    sim.run_until(after(sim.now, 2 * MS), |s| {
        feed(s, &mut next, 3000, &pattern);
        false
    });
    sim.restart_node(0, seed ^ 0xbeef);
    let t0 = sim.now;

    let ok = sim.run_until(after(t0, config().idle_timeout), |s| {
        s.count_events(1, |e| {
            matches!(
                e,
                Event::Down {
                    reason: DownReason::PeerRestarted,
                    ..
                }
            )
        }) > 0
            && s.up[0]
            && s.up[1]
    });
    assert!(ok, "server kept the dead session");
    let t = restart_time(&sim, 1);
    assert!(t < after(t0, MS), "replacement took {:?}", t - t0);
}
