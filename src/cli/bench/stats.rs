//! Latency percentiles and throughput figures shared by the bench scenarios.

use std::time::Duration;

/// Percentiles of a latency sample, in microseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Samples.
    pub n: usize,
    /// Median, µs.
    pub p50_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Mean, µs.
    pub mean_us: f64,
}

impl Latency {
    /// From raw samples (sorted in place).
    pub fn from_samples(s: &mut [Duration]) -> Latency {
        if s.is_empty() {
            return Latency::default();
        }
        s.sort_unstable();
        let at = |q: f64| s[((s.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
        Latency {
            n: s.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            mean_us: s.iter().map(|d| d.as_secs_f64()).sum::<f64>() / s.len() as f64 * 1e6,
        }
    }
}

/// Payload throughput.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Throughput {
    /// Payload bytes that arrived.
    pub bytes: u64,
    /// Over this many seconds.
    pub secs: f64,
    /// Gbit/s of payload.
    pub gbit_s: f64,
    /// Messages (datagrams or TLPs) per second.
    pub msgs_per_s: f64,
}

impl Throughput {
    /// `bytes` in `msgs` messages over `d`.
    pub fn new(bytes: u64, msgs: u64, d: Duration) -> Throughput {
        let secs = d.as_secs_f64().max(1e-9);
        Throughput {
            bytes,
            secs,
            gbit_s: bytes as f64 * 8.0 / secs / 1e9,
            msgs_per_s: msgs as f64 / secs,
        }
    }
}

/// `a / b`, or 0 when `b` is 0.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        a / b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        let l = Latency::from_samples(&mut v);
        assert_eq!(l.n, 100);
        assert!((l.p50_us - 51.0).abs() < 1.01);
        assert!((l.p99_us - 99.0).abs() < 1.01);
        assert!(l.p50_us <= l.p99_us && l.p99_us <= l.p999_us);
        assert!((l.mean_us - 50.5).abs() < 0.01);
        let t = Throughput::new(1_000_000_000, 10, Duration::from_secs(8));
        assert!((t.gbit_s - 1.0).abs() < 1e-9);
        assert_eq!(ratio(1.0, 0.0), 0.0);
    }
}
