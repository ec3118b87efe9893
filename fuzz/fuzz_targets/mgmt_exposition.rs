//! Fuzz `ctl watch`'s reading of a `/metrics` body: arbitrary bytes as the Prometheus text
//! format, then the counters and rates built from what parsed. Nothing may panic; every sample
//! has a valid metric name and at most `MAX_LABELS` labels, none twice; rates are finite and
//! never negative.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pcietun::mgmt::exposition::{parse, MAX_LABELS};
use pcietun::mgmt::watch::{Counters, Frame};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(samples) = parse(text) else {
        return;
    };
    for s in &samples {
        assert!(!s.name.is_empty() && !s.name.as_bytes()[0].is_ascii_digit());
        assert!(s.labels.len() <= MAX_LABELS);
        for (i, (n, _)) in s.labels.iter().enumerate() {
            assert!(s.labels[..i].iter().all(|(m, _)| m != n), "label {n} twice");
        }
    }
    let c = Counters::from_samples(&samples);
    let frame = Frame::between(&Counters::default(), &c, 1.0);
    let back = Frame::between(&c, &Counters::default(), 1.0);
    for f in frame.functions.iter().chain(&back.functions) {
        for v in [
            f.down_bytes_per_s,
            f.up_bytes_per_s,
            f.down_tlps_per_s,
            f.up_tlps_per_s,
            f.errors_per_s,
            f.throttled,
        ] {
            assert!(v.is_finite() && v >= 0.0, "function rate {v}");
        }
    }
    for h in frame.hosts.iter().chain(&back.hosts) {
        for v in [
            h.down_bytes_per_s,
            h.up_bytes_per_s,
            h.retransmits_per_s,
            h.credit_stalls_per_s,
        ] {
            assert!(v.is_finite() && v >= 0.0, "host rate {v}");
        }
    }
});
