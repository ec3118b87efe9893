//! Fuzz the endpoint proxy with arbitrary TLP streams: two DMA-engine functions, the input split
//! into TLPs by a one-byte length prefix. Nothing may panic, and everything the endpoint emits
//! must parse as a TLP.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::wire::{Bdf, Header};
use pcietun::endpoint::{Endpoint, EndpointConfig};

fuzz_target!(|data: &[u8]| {
    let (mut ep, rx) = Endpoint::new(EndpointConfig {
        dma_timeout: Duration::from_millis(1),
        ..EndpointConfig::default()
    });
    let _ = ep.add_function(Bdf::new(0, 0, 0), Box::new(DmaEngine::new(4096)));
    let _ = ep.add_function(Bdf::new(0, 0, 1), Box::new(DmaEngine::new(4096)));
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let _ = ep.handle_tlp(&tail[..n]);
        rest = &tail[n..];
        while let Ok(out) = rx.try_recv() {
            assert!(Header::parse(&out).is_ok(), "endpoint emitted an unparseable TLP");
        }
    }
});
