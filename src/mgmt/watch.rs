//! What `pcietun ctl watch` shows: per function and per host, the rates between two scrapes of
//! the appliance's `/metrics` ([`crate::mgmt::metrics`], parsed by
//! [`crate::mgmt::exposition`]) — throughput and TLPs per second each way, errors, RTT.
//!
//! [`Counters::from_samples`] picks the families it knows out of one scrape; [`Frame::between`]
//! turns two of them into rates. A counter that went down between two scrapes was reset (the
//! appliance restarted): its rate counts from zero, as Prometheus' `rate()` does. A function or
//! host that appears in only one of the two scrapes shows zero rates.
//!
//! The keys of [`Frame`], [`FunctionRate`] and [`HostRate`] are what `ctl watch --json` prints,
//! one frame per line (docs/api.md, "ctl watch").

use std::collections::BTreeMap;

use serde::Serialize;

use super::exposition::Sample;

/// The metric families `ctl watch` reads, as `/metrics` names them (docs/api.md "Metrics").
pub mod family {
    /// Function state set (`function`, `state`).
    pub const FUNCTION_STATE: &str = "pcietun_function_state";
    /// Owner of a function (`function`, `host`).
    pub const FUNCTION_OWNER: &str = "pcietun_function_owner_info";
    /// TLPs to and from a function (`function`, `direction`).
    pub const FUNCTION_TLPS: &str = "pcietun_function_tlps_total";
    /// TLP bytes to and from a function (`function`, `direction`).
    pub const FUNCTION_BYTES: &str = "pcietun_function_tlp_bytes_total";
    /// Requests answered with UR (`function`).
    pub const FUNCTION_UR: &str = "pcietun_function_unsupported_requests_total";
    /// Requests answered with CA (`function`).
    pub const FUNCTION_CA: &str = "pcietun_function_completer_aborts_total";
    /// DMA reads without a completion (`function`).
    pub const FUNCTION_CTO: &str = "pcietun_function_completion_timeouts_total";
    /// Time held by the policy's caps (`function`, `limit`).
    pub const FUNCTION_THROTTLED: &str = "pcietun_function_throttled_seconds_total";
    /// Whether a host's session is up (`host`).
    pub const HOST_CONNECTED: &str = "pcietun_host_connected";
    /// Smoothed RTT (`host`).
    pub const HOST_RTT: &str = "pcietun_host_rtt_seconds";
    /// TLPs from and to a host (`host`, `direction`).
    pub const HOST_TLPS: &str = "pcietun_host_tlps_total";
    /// Frame bytes from and to a host (`host`, `direction`).
    pub const HOST_FRAME_BYTES: &str = "pcietun_host_frame_bytes_total";
    /// Retransmissions to a host (`host`).
    pub const HOST_RETRANSMITS: &str = "pcietun_host_retransmits_total";
    /// Credit stalls (`host`).
    pub const HOST_CREDIT_STALLS: &str = "pcietun_host_credit_stalls_total";

    /// The function families above (labelled `function`).
    pub const FUNCTION: [&str; 8] = [
        FUNCTION_STATE,
        FUNCTION_OWNER,
        FUNCTION_TLPS,
        FUNCTION_BYTES,
        FUNCTION_UR,
        FUNCTION_CA,
        FUNCTION_CTO,
        FUNCTION_THROTTLED,
    ];
    /// The host families above (labelled `host`).
    pub const HOST: [&str; 6] = [
        HOST_CONNECTED,
        HOST_RTT,
        HOST_TLPS,
        HOST_FRAME_BYTES,
        HOST_RETRANSMITS,
        HOST_CREDIT_STALLS,
    ];
}

/// A counter pair: towards the function or host (`downstream`) and from it (`upstream`).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pair {
    /// `direction="downstream"`.
    pub down: f64,
    /// `direction="upstream"`.
    pub up: f64,
}

impl Pair {
    fn add(&mut self, direction: Option<&str>, v: f64) {
        match direction {
            Some("downstream") => self.down += v,
            Some("upstream") => self.up += v,
            _ => {}
        }
    }
}

/// One function's counters in one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FunctionCounters {
    /// Its state (`unassigned`, `assigned`, …), if the scrape had it.
    pub state: Option<String>,
    /// Its owner, if any.
    pub host: Option<String>,
    /// TLPs each way.
    pub tlps: Pair,
    /// TLP bytes each way.
    pub bytes: Pair,
    /// UR + CA + completion timeouts.
    pub errors: f64,
    /// Seconds held by its caps, all limits together.
    pub throttled: f64,
}

/// One host's counters in one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostCounters {
    /// Session up.
    pub connected: bool,
    /// Smoothed RTT in seconds (connected hosts only).
    pub rtt: Option<f64>,
    /// TLPs each way.
    pub tlps: Pair,
    /// Frame bytes each way.
    pub frame_bytes: Pair,
    /// Retransmissions.
    pub retransmits: f64,
    /// Credit stalls.
    pub credit_stalls: f64,
}

/// What `ctl watch` keeps of one scrape.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// By function id.
    pub functions: BTreeMap<String, FunctionCounters>,
    /// By host id.
    pub hosts: BTreeMap<String, HostCounters>,
}

impl Counters {
    /// Picks the known families out of one scrape; samples without their id label, and
    /// families it does not know, are ignored.
    pub fn from_samples(samples: &[Sample<'_>]) -> Self {
        let mut c = Counters::default();
        for s in samples {
            let v = if s.value.is_finite() { s.value } else { 0.0 };
            if let Some(id) = s.label("function") {
                if !family::FUNCTION.contains(&s.name) {
                    continue;
                }
                let f = c.functions.entry(id.to_string()).or_default();
                match s.name {
                    family::FUNCTION_STATE if v == 1.0 => {
                        f.state = s.label("state").map(str::to_string)
                    }
                    family::FUNCTION_OWNER => f.host = s.label("host").map(str::to_string),
                    family::FUNCTION_TLPS => f.tlps.add(s.label("direction"), v),
                    family::FUNCTION_BYTES => f.bytes.add(s.label("direction"), v),
                    family::FUNCTION_UR | family::FUNCTION_CA | family::FUNCTION_CTO => {
                        f.errors += v
                    }
                    family::FUNCTION_THROTTLED => f.throttled += v,
                    _ => {}
                }
            } else if let Some(id) = s.label("host") {
                if !family::HOST.contains(&s.name) {
                    continue;
                }
                let h = c.hosts.entry(id.to_string()).or_default();
                match s.name {
                    family::HOST_CONNECTED => h.connected = v == 1.0,
                    family::HOST_RTT => h.rtt = Some(v),
                    family::HOST_TLPS => h.tlps.add(s.label("direction"), v),
                    family::HOST_FRAME_BYTES => h.frame_bytes.add(s.label("direction"), v),
                    family::HOST_RETRANSMITS => h.retransmits += v,
                    family::HOST_CREDIT_STALLS => h.credit_stalls += v,
                    _ => {}
                }
            }
        }
        c
    }
}

/// Per second between two scrapes; a counter that went down restarted from zero. What a
/// hostile or broken exposition could make of it (negative, infinite, NaN) is zero or clamped:
/// rates are finite and never negative.
fn rate(before: f64, after: f64, secs: f64) -> f64 {
    let delta = if after >= before {
        after - before
    } else {
        after
    };
    if secs > 0.0 && delta.is_finite() && delta > 0.0 {
        (delta / secs).min(f64::MAX)
    } else {
        0.0
    }
}

/// One function's row of a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FunctionRate {
    /// Function id.
    pub function: String,
    /// State (`unassigned`, `assigned`, …; empty if unknown).
    pub state: String,
    /// Owner (`null` when none).
    pub host: Option<String>,
    /// TLP bytes per second towards the function (host writes, completions to its reads).
    pub down_bytes_per_s: f64,
    /// TLP bytes per second from the function (its DMA writes, completions to host reads).
    pub up_bytes_per_s: f64,
    /// TLPs per second towards the function.
    pub down_tlps_per_s: f64,
    /// TLPs per second from the function.
    pub up_tlps_per_s: f64,
    /// UR, CA and completion timeouts per second.
    pub errors_per_s: f64,
    /// Fraction of the interval its TLPs waited for its caps (0 … number of limits).
    pub throttled: f64,
}

/// One host's row of a frame.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostRate {
    /// Host id.
    pub host: String,
    /// Session up.
    pub connected: bool,
    /// Smoothed RTT in microseconds (`null` when not connected).
    pub rtt_us: Option<f64>,
    /// Frame bytes per second from the host.
    pub down_bytes_per_s: f64,
    /// Frame bytes per second to the host.
    pub up_bytes_per_s: f64,
    /// TLPs per second from the host.
    pub down_tlps_per_s: f64,
    /// TLPs per second to the host.
    pub up_tlps_per_s: f64,
    /// Retransmissions per second.
    pub retransmits_per_s: f64,
    /// Credit stalls per second.
    pub credit_stalls_per_s: f64,
}

/// One refresh of `ctl watch`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Frame {
    /// Seconds between the two scrapes.
    pub interval_s: f64,
    /// Rows by function id.
    pub functions: Vec<FunctionRate>,
    /// Rows by host id.
    pub hosts: Vec<HostRate>,
}

impl Frame {
    /// The rates from `before` to `after`, `secs` apart.
    pub fn between(before: &Counters, after: &Counters, secs: f64) -> Frame {
        let functions = after
            .functions
            .iter()
            .map(|(id, a)| {
                let b = before.functions.get(id).unwrap_or(a);
                FunctionRate {
                    function: id.clone(),
                    state: a.state.clone().unwrap_or_default(),
                    host: a.host.clone(),
                    down_bytes_per_s: rate(b.bytes.down, a.bytes.down, secs),
                    up_bytes_per_s: rate(b.bytes.up, a.bytes.up, secs),
                    down_tlps_per_s: rate(b.tlps.down, a.tlps.down, secs),
                    up_tlps_per_s: rate(b.tlps.up, a.tlps.up, secs),
                    errors_per_s: rate(b.errors, a.errors, secs),
                    throttled: rate(b.throttled, a.throttled, secs),
                }
            })
            .collect();
        let hosts = after
            .hosts
            .iter()
            .map(|(id, a)| {
                let b = before.hosts.get(id).unwrap_or(a);
                HostRate {
                    host: id.clone(),
                    connected: a.connected,
                    rtt_us: a.rtt.filter(|_| a.connected).map(|r| r * 1e6),
                    down_bytes_per_s: rate(b.frame_bytes.down, a.frame_bytes.down, secs),
                    up_bytes_per_s: rate(b.frame_bytes.up, a.frame_bytes.up, secs),
                    down_tlps_per_s: rate(b.tlps.down, a.tlps.down, secs),
                    up_tlps_per_s: rate(b.tlps.up, a.tlps.up, secs),
                    retransmits_per_s: rate(b.retransmits, a.retransmits, secs),
                    credit_stalls_per_s: rate(b.credit_stalls, a.credit_stalls, secs),
                }
            })
            .collect();
        Frame {
            interval_s: secs,
            functions,
            hosts,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::exposition::parse;

    const ONE: &str = "\
pcietun_function_state{function=\"nvme0\",state=\"unassigned\"} 0
pcietun_function_state{function=\"nvme0\",state=\"assigned\"} 1
pcietun_function_owner_info{function=\"nvme0\",host=\"web1\"} 1
pcietun_function_tlps_total{function=\"nvme0\",direction=\"downstream\"} 100
pcietun_function_tlps_total{function=\"nvme0\",direction=\"upstream\"} 50
pcietun_function_tlp_bytes_total{function=\"nvme0\",direction=\"downstream\"} 4000
pcietun_function_tlp_bytes_total{function=\"nvme0\",direction=\"upstream\"} 9000
pcietun_function_unsupported_requests_total{function=\"nvme0\"} 1
pcietun_function_completer_aborts_total{function=\"nvme0\"} 0
pcietun_function_throttled_seconds_total{function=\"nvme0\",limit=\"iops\"} 0.25
pcietun_function_state{function=\"dma0\",state=\"unassigned\"} 1
pcietun_host_connected{host=\"web1\"} 1
pcietun_host_rtt_seconds{host=\"web1\"} 0.000031
pcietun_host_tlps_total{host=\"web1\",direction=\"downstream\"} 100
pcietun_host_frame_bytes_total{host=\"web1\",direction=\"upstream\"} 20000
pcietun_host_retransmits_total{host=\"web1\"} 3
pcietun_host_connected{host=\"web2\"} 0
pcietun_host_rtt_seconds{host=\"web2\"} 0.5
";

    fn counters(text: &str) -> Counters {
        Counters::from_samples(&parse(text).unwrap())
    }

    #[test]
    fn picks_each_family_by_its_labels() {
        let c = counters(ONE);
        let f = &c.functions["nvme0"];
        assert_eq!(f.state.as_deref(), Some("assigned"));
        assert_eq!(f.host.as_deref(), Some("web1"));
        assert_eq!(
            f.tlps,
            Pair {
                down: 100.0,
                up: 50.0
            }
        );
        assert_eq!(
            f.bytes,
            Pair {
                down: 4000.0,
                up: 9000.0
            }
        );
        assert_eq!((f.errors, f.throttled), (1.0, 0.25));
        assert_eq!(c.functions["dma0"].state.as_deref(), Some("unassigned"));
        assert_eq!(c.functions["dma0"].host, None);
        let h = &c.hosts["web1"];
        assert!(h.connected);
        assert_eq!(h.rtt, Some(0.000031));
        assert_eq!(h.frame_bytes.up, 20000.0);
        assert_eq!(h.retransmits, 3.0);
        assert!(!c.hosts["web2"].connected);
    }

    #[test]
    fn rates_are_deltas_over_the_interval_and_survive_a_reset() {
        let before = counters(ONE);
        let after = counters(
            &ONE.replace("\"downstream\"} 100\n", "\"downstream\"} 300\n")
                .replace("} 9000", "} 10000")
                .replace(
                    "retransmits_total{host=\"web1\"} 3",
                    "retransmits_total{host=\"web1\"} 1",
                ),
        );
        let f = Frame::between(&before, &after, 2.0);
        let nvme = f.functions.iter().find(|r| r.function == "nvme0").unwrap();
        assert_eq!(nvme.down_tlps_per_s, 100.0);
        assert_eq!(nvme.up_bytes_per_s, 500.0);
        assert_eq!(nvme.up_tlps_per_s, 0.0);
        assert_eq!(nvme.host.as_deref(), Some("web1"));
        let web1 = f.hosts.iter().find(|r| r.host == "web1").unwrap();
        assert_eq!(web1.down_tlps_per_s, 100.0);
        // The counter went 3 → 1: the appliance restarted, so 1 since then.
        assert_eq!(web1.retransmits_per_s, 0.5);
        assert!((web1.rtt_us.unwrap() - 31.0).abs() < 1e-9);
        let web2 = f.hosts.iter().find(|r| r.host == "web2").unwrap();
        assert_eq!(
            web2.rtt_us, None,
            "no RTT shown for a host that is not connected"
        );
    }

    #[test]
    fn a_newcomer_shows_zero_rates_and_nothing_is_divided_by_zero() {
        let before = Counters::default();
        let after = counters(ONE);
        let f = Frame::between(&before, &after, 1.0);
        assert!(f.functions.iter().all(|r| r.down_tlps_per_s == 0.0));
        let f = Frame::between(&after, &after, 0.0);
        assert!(f.hosts.iter().all(|r| r.retransmits_per_s == 0.0));
    }
}
