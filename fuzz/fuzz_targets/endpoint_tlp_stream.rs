//! Fuzz the endpoint proxy with arbitrary TLP streams: two DMA-engine functions, the input split
//! into TLPs by a one-byte length prefix, the endpoint driven with simulated time. Nothing may
//! panic, and everything the endpoint emits must parse as a TLP.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::wire::{Bdf, ParsedHeader};
use pcietun::endpoint::{Proxy, ProxyConfig};

fuzz_target!(|data: &[u8]| {
    let (mut ep, rx) = Proxy::new(ProxyConfig {
        dma_timeout: Duration::from_millis(1),
        ..ProxyConfig::default()
    });
    let _ = ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(4096)));
    let _ = ep.add_function(Bdf::new(0, 0, 1), Box::new(DmaEngine::new(4096)));
    // Simulated time: every TLP advances the endpoint's clock by 1 ms, so DMA reads the
    // stream starts are issued, time out and meet late completions deterministically.
    let t0 = Instant::now();
    let mut rest = data;
    let mut step = 0u64;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let _ = ep.handle_tlp(&tail[..n]);
        step += 1;
        ep.poll(t0 + Duration::from_millis(step));
        rest = &tail[n..];
        while let Ok(out) = rx.try_recv() {
            assert!(
                ParsedHeader::parse(&out).is_ok(),
                "endpoint emitted an unparseable TLP"
            );
        }
    }
});
