//! Issue 13, the flood on real sockets: inside a private network namespace (created and removed
//! by the test; needs root and `ip`), an appliance and a host agent of this crate run over
//! UDP on the namespace's loopback, through a relay that records the host's handshake
//! messages. While the host reads the DMA engine's ID register in a loop, the relay replays
//! the recorded INIT — from the host's own address, as an attacker on the path would — and
//! garbage, at 50k packets/s for 3 s. No read may fail, the session may not go down, the tail
//! latency stays bounded, a replay earns at most a cookie reply (no public-key work) or is
//! counted as a replay, the garbage is counted, and the process's memory stays bounded.
//!
//! The test re-runs itself inside the namespace (`ip netns exec NS <this binary> ...`), so
//! every socket lives there and nothing touches the machine's real network.

mod prereq;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::appliance::{Appliance, ApplianceConfig};
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;
use pcietun::pci::class::dma_engine::{reg, ID_VALUE};
use pcietun::transport::SecretKey;

const INNER: &str = "PCIETUN_FLOOD_INNER";
/// Frame type byte of a handshake INIT (docs/protocol.md, frame header).
const TYPE_INIT: u8 = 1;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn replay_and_garbage_flood_in_a_namespace_never_disturbs_mmio() {
    if std::env::var_os(INNER).is_some() {
        return flood_inside_the_namespace();
    }
    if !prereq::is_root() {
        return prereq::skip("transport_flood_netns", "not root");
    }
    if !ip(&["-V"]) {
        return prereq::skip("transport_flood_netns", "no `ip` command");
    }
    let ns = format!("ptF{}", std::process::id());
    if !(ip(&["netns", "add", &ns]) && ip(&["-n", &ns, "link", "set", "lo", "up"])) {
        ip(&["netns", "del", &ns]);
        return prereq::skip("transport_flood_netns", "cannot create a network namespace");
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(exe)
        .args([
            "--exact",
            "replay_and_garbage_flood_in_a_namespace_never_disturbs_mmio",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, "1")
        .output()
        .unwrap();
    ip(&["netns", "del", &ns]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    assert!(out.status.success(), "the flood run inside {ns} failed");
    assert!(
        text.contains("1 passed"),
        "the inner test did not run: {text}"
    );
}

fn config(dir: &Path, host: &SecretKey, appliance: &SecretKey) -> ApplianceConfig {
    appliance.write_new(&dir.join("appliance.key")).unwrap();
    let text = format!(
        r#"
listen = ["udp:127.0.0.1:0"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{}"

[[device]]
kind = "dma"
name = "dma-a"
buffer = "64K"
assign = "web1"
"#,
        host.public_key()
    );
    ApplianceConfig::from_toml(&text, "flood.toml", dir).unwrap()
}

/// What the relay recorded and counted.
#[derive(Default)]
struct Relay {
    inits: Mutex<Vec<Vec<u8>>>,
    forwarded: AtomicU64,
}

/// A UDP relay between the host (which talks to `front`) and the appliance: it forwards both
/// ways and records every INIT the host sends. The appliance sees the relay's address as the
/// host's, so frames the relay injects come from the host's own address.
fn relay(
    front: UdpSocket,
    back: Arc<UdpSocket>,
    appliance: SocketAddr,
    rec: Arc<Relay>,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<()>> {
    let host_addr: Arc<Mutex<Option<SocketAddr>>> = Arc::default();
    front
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    back.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let front = Arc::new(front);
    let up = {
        let (front, back, rec, stop, host_addr) = (
            front.clone(),
            back.clone(),
            rec.clone(),
            stop.clone(),
            host_addr.clone(),
        );
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                let Ok((n, from)) = front.recv_from(&mut buf) else {
                    continue;
                };
                *host_addr.lock().unwrap() = Some(from);
                if n > 3 && buf[3] == TYPE_INIT {
                    rec.inits.lock().unwrap().push(buf[..n].to_vec());
                }
                let _ = back.send_to(&buf[..n], appliance);
                rec.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let down = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, _)) = back.recv_from(&mut buf) else {
                continue;
            };
            let to = *host_addr.lock().unwrap();
            if let Some(to) = to {
                let _ = front.send_to(&buf[..n], to);
            }
        }
    });
    vec![up, down]
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

fn flood_inside_the_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let host_key = SecretKey::generate();
    let appliance_key = SecretKey::generate();
    let app = Appliance::build(config(dir.path(), &host_key, &appliance_key))
        .unwrap()
        .start()
        .unwrap();
    let app_addr = app.ready().udp_addr().unwrap();

    let front = UdpSocket::bind("127.0.0.1:0").unwrap();
    let front_addr = front.local_addr().unwrap();
    let back = Arc::new(UdpSocket::bind("127.0.0.1:0").unwrap());
    let rec = Arc::new(Relay::default());
    let stop = Arc::new(AtomicBool::new(false));
    let relays = relay(front, back.clone(), app_addr, rec.clone(), stop.clone());

    let agent = Agent::connect(
        AgentConfig {
            target: Target::Udp(front_addr),
            host_id: "web1".into(),
            key: Some(host_key),
            appliance_key: Some(appliance_key.public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap();
    let info = agent
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class >> 8 == 0x0880)
        .expect("the DMA engine is visible to its owner");
    let f = agent.host().open(info.bdf).unwrap();
    assert_eq!(f.bar_read32(0, reg::ID).unwrap(), ID_VALUE);
    let inits = rec.inits.lock().unwrap().clone();
    assert!(!inits.is_empty(), "the relay recorded the host's INIT");
    // Garbage that still looks like an INIT: one byte of the body flipped (its mac1 fails).
    let mut garbage = inits[0].clone();
    let mid = garbage.len() / 2;
    garbage[mid] ^= 0x55;
    // The serving loop publishes its counters every 100 ms.
    std::thread::sleep(Duration::from_millis(300));
    let before = app.stats();
    assert_eq!(before.links.len(), 1, "{before:?}");
    let rss_before = rss_kib();

    // The flood: 50k packets/s for 3 s from the host's own (relay) address.
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = {
        let (back, inits, flooding) = (back.clone(), inits.clone(), flooding.clone());
        std::thread::spawn(move || {
            let start = Instant::now();
            let mut sent = 0u64;
            while start.elapsed() < Duration::from_secs(3) {
                // 50 per millisecond.
                let due = start.elapsed().as_micros() as u64 / 20;
                while sent < due {
                    let f = if sent % 10 == 9 {
                        &garbage
                    } else {
                        &inits[(sent as usize / 2) % inits.len()]
                    };
                    let _ = back.send_to(f, app_addr);
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            flooding.store(false, Ordering::SeqCst);
            sent
        })
    };
    let mut lat = Vec::new();
    let mut failed = 0u32;
    while flooding.load(Ordering::SeqCst) {
        let t = Instant::now();
        match f.bar_read32(0, reg::ID) {
            Ok(v) if v == ID_VALUE => lat.push(t.elapsed()),
            _ => failed += 1,
        }
    }
    let sent = flooder.join().unwrap();
    let rss_after = rss_kib();
    std::thread::sleep(Duration::from_millis(300));
    let after = app.stats();
    let host_stats = agent.transport_stats();
    stop.store(true, Ordering::SeqCst);
    drop(f);
    drop(agent);
    for r in relays {
        r.join().unwrap();
    }
    app.shutdown().unwrap();

    lat.sort();
    let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
    let e0 = &before.links[0].endpoint;
    let e1 = &after.links[0].endpoint;
    eprintln!(
        "flood: {sent} packets in 3 s; {} MMIO reads, p50 {:?} p99 {:?} max {:?}; \
         replays dropped {} bad mac1 {} handshakes processed {} cookies {}; rss {} -> {} KiB",
        lat.len(),
        p(0.5),
        p(0.99),
        lat.last().unwrap(),
        e1.drop_replayed_init - e0.drop_replayed_init,
        e1.drop_bad_mac1 - e0.drop_bad_mac1,
        e1.handshakes_processed - e0.handshakes_processed,
        e1.cookies_sent - e0.cookies_sent,
        rss_before,
        rss_after
    );
    assert!(sent >= 140_000, "the flood ran at ~50k/s: {sent}");
    assert_eq!(failed, 0, "no MMIO read failed under the flood");
    assert!(lat.len() > 1000, "reads kept flowing: {}", lat.len());
    assert!(
        p(0.99) < Duration::from_millis(50),
        "p99 bounded: {:?}",
        p(0.99)
    );
    assert_eq!(
        e1.sessions_down, e0.sessions_down,
        "the established session never went down"
    );
    assert_eq!(
        host_stats.endpoint.sessions_down, 0,
        "the host never lost its session"
    );
    // Under load a replay with a valid mac1 earns a cookie reply (and no public-key work);
    // otherwise it is dropped as a replay; garbage fails mac1.
    let refused = (e1.cookies_sent - e0.cookies_sent)
        + (e1.drop_replayed_init - e0.drop_replayed_init)
        + (e1.drop_bad_mac1 - e0.drop_bad_mac1)
        + (e1.drop_rate_limited - e0.drop_rate_limited)
        + (e1.drop_under_load - e0.drop_under_load)
        + (e1.drop_bad_handshake - e0.drop_bad_handshake)
        + (e1.handshakes_refused - e0.handshakes_refused);
    assert!(
        refused >= sent * 9 / 10,
        "the replays and the garbage were answered or counted: {refused} of {sent}"
    );
    // Public-key work is bounded by the handshake rate limit (a few hundred a second at
    // most), not by the flood.
    let processed = e1.handshakes_processed - e0.handshakes_processed;
    assert!(processed < sent / 20, "{processed} of {sent} got DH work");
    assert!(
        rss_after < rss_before + 32 * 1024,
        "memory bounded: {rss_before} -> {rss_after} KiB"
    );
}
