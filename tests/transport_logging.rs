//! Logging of the transport (issue 13 item 7, docs/security.md "Logging"): sessions
//! established and lost are logged, and so are refusals — at a bounded pace under attack, the
//! next line saying how many were suppressed. Alone in its test binary: `tracing` caches
//! per-callsite interest process-wide, so a scoped subscriber in a test that shares the
//! process with others can miss events those others hit first.

mod transport_common;
use bytes::BytesMut;
use pcietun::transport::{Event, Instant, PeerAddr};
use std::time::Duration;
use transport_common::*;

/// Logging (issue 13 item 7): sessions established and lost are logged, and so are refusals —
/// at a bounded pace under attack, the next line saying how many were suppressed.
#[test]
fn events_are_logged_and_rate_limited_under_attack() {
    use std::sync::{Arc, Mutex};
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let w = buf.clone();
    let sub = tracing_subscriber::fmt()
        .with_writer(move || w.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let downs = tracing::subscriber::with_default(sub, || {
        let cfg = pcietun::transport::Config {
            handshake_burst: 100,
            ..config()
        };
        let mut sim = Sim::new(9, lan(), lan(), cfg);
        sim.tap = Some(Vec::new());
        assert!(sim.run_until(Instant::from_nanos(1_000_000_000), |s| s.up[0] && s.up[1]));
        let init = sim
            .tap
            .take()
            .unwrap()
            .into_iter()
            .find(|(n, f)| *n == 0 && f[3] == 1)
            .unwrap()
            .1;
        // 50 replays within the budget: each is refused by its timestamp.
        for _ in 0..50 {
            sim.ep[1].handle_frame(sim.now, PeerAddr::Mem(7), BytesMut::from(&init[..]));
        }
        sim.run_until(after(sim.now, Duration::from_millis(1100)), |_| false);
        sim.ep[1].handle_frame(sim.now, PeerAddr::Mem(7), BytesMut::from(&init[..]));
        sim.restart_node(1, 10);
        sim.run_until(after(sim.now, Duration::from_secs(2)), |s| {
            s.count_events(0, |e| matches!(e, Event::Down { .. })) > 0 && s.up[0] && s.up[1]
        });
        sim.count_events(0, |e| matches!(e, Event::Down { .. }))
    });
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let count = |s: &str| text.lines().filter(|l| l.contains(s)).count();
    assert!(count("session established") >= 4, "{text}");
    assert_eq!(
        count("replayed INIT"),
        6,
        "5 in the first second, then one: {text}"
    );
    assert!(text.contains("suppressed=45"), "{text}");
    assert_eq!(downs, 1);
    assert!(count("session lost") >= 1, "{text}");
    assert!(
        !text.contains("SecretKey") && !text.contains("Psk("),
        "no key material"
    );
}
