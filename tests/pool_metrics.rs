//! The live appliance's traffic in `/metrics` (issue 14, Monitoring): a real `pcietun appliance`
//! process, a host agent driving its DMA engine over UDP, and the counters scraped from the
//! management API afterwards. The router counts each function's TLPs as they pass (allocation-
//! free), the transport each host's; this checks the figures against what the test itself did:
//! exact DMA byte counts, at least one interrupt per transfer, every MMIO read counted both
//! ways, the host's RTT and TLPs, and nothing at all for the host that owns nothing.

mod pool_common;

use std::time::{Duration, Instant};

use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::CompletionMode;
use pcietun::pci::class::dma_engine::reg;
use pcietun::transport::SecretKey;
use pool_common::*;

/// The value of the sample `name{labels}` in a Prometheus text exposition.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_count_what_a_host_did_to_its_card() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2, key) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let app = appliance(
        dir.path(),
        &key,
        &[("web1", &k1), ("web2", &k2)],
        "\n[[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\nassign = \"web1\"\n",
        "",
    );
    let web1 = agent(&app.udp, "web1", k1, &key);
    let _web2 = agent(&app.udp, "web2", k2, &key);
    let deadline = Instant::now() + Duration::from_secs(10);
    let info = loop {
        if let Some(f) = web1
            .host()
            .functions()
            .into_iter()
            .find(|f| f.class >> 8 == 0x0880)
        {
            break f;
        }
        assert!(Instant::now() < deadline, "web1 sees its DMA engine");
        std::thread::sleep(Duration::from_millis(50));
    };
    let f = web1.host().open(info.bdf).unwrap();
    let drv = DmaEngineDriver::open(f, 64 * 1024, CompletionMode::Interrupt).unwrap();
    let pattern: Vec<u8> = (0..32 * 1024u32).map(|i| (i * 7 + 3) as u8).collect();
    drv.host_buffer().write_at(0, &pattern).unwrap();
    drv.transfer(Direction::DmaRead, 0, 0, 32 * 1024).unwrap();
    drv.transfer(Direction::DmaWrite, 32 * 1024, 0, 32 * 1024)
        .unwrap();
    let mut back = vec![0u8; 32 * 1024];
    drv.host_buffer().read_at(32 * 1024, &mut back).unwrap();
    assert_eq!(back, pattern, "the card moved the data both ways");
    const READS: u64 = 200;
    for _ in 0..READS {
        drv.function().bar_read32(0, reg::ID).unwrap();
    }

    // The serving loop publishes every 100 ms: scrape until the last reads are in.
    let url = format!("{}/metrics", app.api);
    let fun = |m: &str, l: &str| format!("pcietun_function_{m}{{function=\"dma-a\"{l}}}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = get_as_admin(&url);
        let down = sample(&text, &fun("tlps_total", ",direction=\"downstream\""));
        if down.is_some_and(|d| d >= READS as f64) || Instant::now() >= deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let get = |series: String| {
        sample(&text, &series).unwrap_or_else(|| panic!("{series} not in:\n{text}"))
    };
    // Exactly the bytes the two transfers moved: reads are counted from the completions that
    // came back, writes from the card's MWr payloads (its MSI-X writes count as interrupts).
    assert_eq!(get(fun("dma_bytes_total", ",operation=\"read\"")), 32768.0);
    assert_eq!(get(fun("dma_bytes_total", ",operation=\"write\"")), 32768.0);
    assert!(
        get(fun("interrupts_total", "")) >= 2.0,
        "one MSI-X per transfer"
    );
    // Every MMIO read is a request down and a completion up (plus the driver's own accesses,
    // the DMA read completions down, the DMA requests up).
    let down = get(fun("tlps_total", ",direction=\"downstream\""));
    let up = get(fun("tlps_total", ",direction=\"upstream\""));
    assert!(down >= READS as f64 + 8.0, "downstream TLPs {down}");
    assert!(up >= READS as f64 + 8.0, "upstream TLPs {up}");
    let bytes_up = get(fun("tlp_bytes_total", ",direction=\"upstream\""));
    assert!(
        bytes_up >= 32768.0 + 16.0 * READS as f64,
        "upstream bytes {bytes_up}"
    );
    assert_eq!(get(fun("unsupported_requests_total", "")), 0.0);
    assert_eq!(get(fun("completion_timeouts_total", "")), 0.0);

    // The host's session: its TLPs include all of the function's, its RTT was measured.
    let host = |m: &str, h: &str, l: &str| format!("pcietun_host_{m}{{host=\"{h}\"{l}}}");
    let host_down = get(host("tlps_total", "web1", ",direction=\"downstream\""));
    assert!(
        host_down >= down,
        "web1 sent {host_down} TLPs, its card got {down}"
    );
    let rtt = get(host("rtt_seconds", "web1", ""));
    assert!(rtt > 0.0 && rtt < 1.0, "web1 RTT {rtt} s");
    assert!(get(host("frame_bytes_total", "web1", ",direction=\"upstream\"")) > 32768.0);
    // web2 owns nothing: the enumeration it did is all it sent, and nothing was routed to it
    // from a function.
    let web2_up = get(host("tlps_total", "web2", ",direction=\"upstream\""));
    assert!(web2_up < down, "web2 got {web2_up} TLPs");
}
