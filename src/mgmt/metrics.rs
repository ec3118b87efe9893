//! `/metrics`: the pool's state and counters as a Prometheus exposition, encoded by the
//! `prometheus-client` crate.
//!
//! The metrics are read from the pool at scrape time ([`Pool::metrics`], [`Pool::functions`],
//! [`Pool::hosts`]), through a `prometheus_client` [`Collector`]; nothing is cached here.
//! Names and labels follow the Prometheus naming conventions (one `pcietun_` prefix, base
//! units, `_total` on counters, `_bytes` / `_seconds` units in the name, a label instead of a
//! name per direction). Every family and label is listed in docs/api.md ("Metrics").
//!
//! Two formats, chosen by the request's `Accept` header as the Prometheus server negotiates:
//! OpenMetrics 1.0 text (what the crate encodes, for a scraper that asks for
//! `application/openmetrics-text`) and the Prometheus text format 0.0.4 (everyone else: curl,
//! `promtool check metrics`). The second is derived from the first: the counter families are
//! named with their `_total` suffix, and the `# UNIT` and `# EOF` lines, which the older format
//! does not have, are left out.
//!
//! Not exported: an MMIO read latency histogram. The appliance answers MMIO reads but does not
//! see how long the host's driver waited for them (the time that matters includes the
//! tunnel's round trip and is measured, if anywhere, by the host's root port), and the pool
//! has no per-function latency data to give; RTT per host is exported instead.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::pool::{
    valid_id, FunctionInfo, FunctionMetrics, FunctionState, HostInfo, HostMetrics, HostSession,
    MetricsSnapshot, Pool,
};

/// Content type of the OpenMetrics 1.0 text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Content type of the Prometheus text format 0.0.4.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every state [`FunctionState::name`] can return, for the `pcietun_function_state` state set.
const STATES: [&str; 6] = [
    "unassigned",
    "attaching",
    "assigned",
    "detaching",
    "resetting",
    "failed",
];

/// The exposition format of one scrape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// OpenMetrics 1.0 text.
    OpenMetrics,
    /// Prometheus text format 0.0.4.
    PrometheusText,
}

impl Format {
    /// The format for a request's `Accept` header: OpenMetrics when the client lists it (with
    /// a non-zero quality), the Prometheus text format otherwise.
    pub fn negotiate(accept: Option<&str>) -> Format {
        let wants_openmetrics = accept.is_some_and(|a| {
            a.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let mime = parts.next().unwrap_or("");
                let refused = parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                mime.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Format::OpenMetrics
        } else {
            Format::PrometheusText
        }
    }

    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => OPENMETRICS,
            Format::PrometheusText => PROMETHEUS_TEXT,
        }
    }
}

/// Read the pool and encode its metrics.
pub fn render(pool: &dyn Pool, format: Format) -> String {
    let scrape = Scrape {
        functions: pool.functions(),
        hosts: pool.hosts(),
        metrics: pool.metrics(),
    };
    scrape.encode(format)
}

/// One scrape's data.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The inventory (states and owners).
    pub functions: Vec<FunctionInfo>,
    /// The hosts (session state, RTT).
    pub hosts: Vec<HostInfo>,
    /// The counters.
    pub metrics: MetricsSnapshot,
}

impl Scrape {
    /// Encode in `format`. Entries whose id is not a valid API id are left out (ids become
    /// label values and must need no escaping).
    pub fn encode(self, format: Format) -> String {
        let mut registry = Registry::with_prefix("pcietun");
        registry.register_collector(Box::new(self));
        let mut text = String::new();
        // Writing into a String cannot fail, and the collector's own encoding only fails when
        // the writer does.
        let _ = prometheus_client::encoding::text::encode(&mut text, &registry);
        match format {
            Format::OpenMetrics => text,
            Format::PrometheusText => openmetrics_to_prometheus_text(&text),
        }
    }
}

/// Rewrite OpenMetrics text, as `prometheus_client` writes it, into the Prometheus text
/// format 0.0.4: counter families are named with `_total` (their samples already are), and
/// `# UNIT` and `# EOF` lines are dropped. Nothing else in our output differs between the two
/// (no exemplars, no `_created` samples, no info or state-set types).
fn openmetrics_to_prometheus_text(om: &str) -> String {
    let mut out = String::with_capacity(om.len());
    let mut help: Option<&str> = None;
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest);
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').unwrap_or((rest, ""));
            let family = if ty == "counter" {
                format!("{name}_total")
            } else {
                name.to_string()
            };
            if let Some(h) = help.take() {
                let text = h.split_once(' ').map_or("", |(_, t)| t);
                out.push_str(&format!("# HELP {family} {text}\n"));
            }
            out.push_str(&format!("# TYPE {family} {ty}\n"));
            continue;
        }
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let functions: Vec<&FunctionInfo> =
            self.functions.iter().filter(|f| valid_id(&f.id)).collect();
        let hosts: Vec<&HostInfo> = self.hosts.iter().filter(|h| valid_id(&h.id)).collect();
        let fm: Vec<_> = self
            .metrics
            .functions
            .iter()
            .filter(|m| valid_id(&m.function))
            .collect();
        let hm: Vec<_> = self
            .metrics
            .hosts
            .iter()
            .filter(|m| valid_id(&m.host))
            .collect();

        // --- assignment state ---
        gauge(
            &mut enc,
            "function_state",
            "Life-cycle state of a function: 1 for its current state, 0 for the others.",
            None,
            functions.iter().flat_map(|f| {
                STATES.iter().map(move |s| {
                    (
                        vec![("function", f.id.clone()), ("state", s.to_string())],
                        i64::from(f.state.name() == *s),
                    )
                })
            }),
        )?;
        gauge(
            &mut enc,
            "function_owner_info",
            "The host a function belongs to (attaching, assigned or detaching); always 1.",
            None,
            functions.iter().filter_map(|f| {
                f.state
                    .host()
                    .filter(|h| valid_id(h))
                    .map(|h| (vec![("function", f.id.clone()), ("host", h.to_string())], 1))
            }),
        )?;
        gauge(
            &mut enc,
            "function_failed",
            "Whether a function is out of service (1) or not (0).",
            None,
            functions.iter().map(|f| {
                (
                    vec![("function", f.id.clone())],
                    i64::from(matches!(f.state, FunctionState::Failed { .. })),
                )
            }),
        )?;

        // --- per function traffic and errors ---
        let directional: [Family<FunctionMetrics, (u64, u64)>; 2] = [
            (
                "function_tlps",
                "TLPs to (downstream) and from (upstream) a function.",
                None,
                |m| (m.tlps.downstream, m.tlps.upstream),
            ),
            (
                "function_tlp",
                "Bytes of the TLPs (header and data) to and from a function.",
                Some(Unit::Bytes),
                |m| (m.bytes.downstream, m.bytes.upstream),
            ),
        ];
        for (name, help, unit, pick) in directional {
            counter(
                &mut enc,
                name,
                help,
                unit.as_ref(),
                fm.iter().flat_map(|m| {
                    let (down, up) = pick(m);
                    [("downstream", down), ("upstream", up)]
                        .into_iter()
                        .map(move |(d, v)| {
                            (
                                vec![("function", m.function.clone()), ("direction", d.into())],
                                v,
                            )
                        })
                }),
            )?;
        }
        counter(
            &mut enc,
            "function_dma",
            "Data bytes a function read from (read) or wrote to (write) host memory.",
            Some(&Unit::Bytes),
            fm.iter().flat_map(|m| {
                [("read", m.dma_read_bytes), ("write", m.dma_write_bytes)]
                    .into_iter()
                    .map(move |(op, v)| {
                        (
                            vec![("function", m.function.clone()), ("operation", op.into())],
                            v,
                        )
                    })
            }),
        )?;
        let per_function: [Simple<FunctionMetrics>; 4] = [
            (
                "function_interrupts",
                "Interrupt messages (MSI, MSI-X) a function sent.",
                |m| m.interrupts,
            ),
            (
                "function_unsupported_requests",
                "Requests to a function answered with Unsupported Request (UR).",
                |m| m.unsupported_requests,
            ),
            (
                "function_completer_aborts",
                "Requests to a function answered with Completer Abort (CA).",
                |m| m.completer_aborts,
            ),
            (
                "function_completion_timeouts",
                "Non-posted requests of a function (DMA reads) that got no completion in time.",
                |m| m.completion_timeouts,
            ),
        ];
        for (name, help, pick) in per_function {
            counter(
                &mut enc,
                name,
                help,
                None,
                fm.iter()
                    .map(|m| (vec![("function", m.function.clone())], pick(m))),
            )?;
        }
        {
            let mut m = enc.encode_descriptor(
                "function_throttled",
                "Time a function's TLPs waited for its policy's caps, by cap (bandwidth_up, \
                 bandwidth_down, iops).",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?;
            for f in &fm {
                let t = f.throttled;
                for (limit, ns) in [
                    ("bandwidth_up", t.bandwidth_up_nanos),
                    ("bandwidth_down", t.bandwidth_down_nanos),
                    ("iops", t.iops_nanos),
                ] {
                    let labels: Labels =
                        vec![("function", f.function.clone()), ("limit", limit.into())];
                    ConstCounter::new(ns as f64 / 1e9).encode(m.encode_family(&labels)?)?;
                }
            }
        }

        // --- per host session ---
        gauge(
            &mut enc,
            "host_connected",
            "Whether a host's session is up (1) or not (0).",
            None,
            hosts.iter().map(|h| {
                (
                    vec![("host", h.id.clone())],
                    i64::from(h.session == HostSession::Connected),
                )
            }),
        )?;
        {
            let rtts: Vec<_> = hosts
                .iter()
                .filter(|h| h.session == HostSession::Connected)
                .filter_map(|h| {
                    h.rtt
                        .map(|r| (vec![("host", h.id.clone())], r.as_secs_f64()))
                })
                .collect();
            let mut m = enc.encode_descriptor(
                "host_rtt",
                "Smoothed round-trip time of a host's session (connected hosts only).",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (labels, v) in &rtts {
                ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
            }
        }
        let host_directional: [Family<HostMetrics, (u64, u64)>; 2] = [
            (
                "host_tlps",
                "TLPs received from (downstream) and sent to (upstream) a host.",
                None,
                |m| (m.tlps.downstream, m.tlps.upstream),
            ),
            (
                "host_frame",
                "Frame bytes on the wire from (downstream) and to (upstream) a host.",
                Some(Unit::Bytes),
                |m| (m.bytes.downstream, m.bytes.upstream),
            ),
        ];
        for (name, help, unit, pick) in host_directional {
            counter(
                &mut enc,
                name,
                help,
                unit.as_ref(),
                hm.iter().flat_map(|m| {
                    let (down, up) = pick(m);
                    [("downstream", down), ("upstream", up)]
                        .into_iter()
                        .map(move |(d, v)| {
                            (vec![("host", m.host.clone()), ("direction", d.into())], v)
                        })
                }),
            )?;
        }
        let per_host: [Simple<HostMetrics>; 2] = [
            ("host_retransmits", "TLP retransmissions to a host.", |m| {
                m.retransmits
            }),
            (
                "host_credit_stalls",
                "Times TLPs for a host waited because the session had no credits.",
                |m| m.credit_stalls,
            ),
        ];
        for (name, help, pick) in per_host {
            counter(
                &mut enc,
                name,
                help,
                None,
                hm.iter().map(|m| (vec![("host", m.host.clone())], pick(m))),
            )?;
        }
        Ok(())
    }
}

/// A family's name, help, unit and how to read its value(s) from an entry.
type Family<M, V> = (&'static str, &'static str, Option<Unit>, fn(&M) -> V);

/// A family without a unit and with one value per entry.
type Simple<M> = (&'static str, &'static str, fn(&M) -> u64);

/// Labels of one sample.
type Labels = Vec<(&'static str, String)>;

/// One counter family (the crate adds `_total` to the samples).
fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl Iterator<Item = (Labels, u64)>,
) -> Result<(), fmt::Error> {
    let samples: Vec<_> = samples.collect();
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, v) in &samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// One integer gauge family.
fn gauge(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    samples: impl Iterator<Item = (Labels, i64)>,
) -> Result<(), fmt::Error> {
    let samples: Vec<_> = samples.collect();
    let mut m = enc.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, v) in &samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::fake::FakePool;
    use crate::mgmt::pool::Directions;

    #[test]
    fn negotiation() {
        assert_eq!(Format::negotiate(None), Format::PrometheusText);
        assert_eq!(Format::negotiate(Some("*/*")), Format::PrometheusText);
        assert_eq!(
            Format::negotiate(Some(
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
            )),
            Format::OpenMetrics
        );
        assert_eq!(
            Format::negotiate(Some("application/openmetrics-text; q=0, text/plain")),
            Format::PrometheusText
        );
    }

    fn sample() -> FakePool {
        let pool = FakePool::sample();
        pool.set_function_metrics(FunctionMetrics {
            function: "nvme0".into(),
            tlps: Directions {
                downstream: 10,
                upstream: 7,
            },
            bytes: Directions {
                downstream: 4096,
                upstream: 512,
            },
            dma_read_bytes: 8192,
            dma_write_bytes: 1 << 40,
            interrupts: 3,
            unsupported_requests: 1,
            completer_aborts: 2,
            completion_timeouts: 5,
            throttled: crate::mgmt::pool::Throttled {
                bandwidth_up_nanos: 1_500_000_000,
                ..Default::default()
            },
        });
        pool.set_host_metrics(HostMetrics {
            host: "alpha".into(),
            tlps: Directions {
                downstream: 11,
                upstream: 12,
            },
            bytes: Directions {
                downstream: 1500,
                upstream: 3000,
            },
            retransmits: 4,
            credit_stalls: 6,
        });
        pool
    }

    #[test]
    fn prometheus_text_has_the_values() {
        let text = render(&sample(), Format::PrometheusText);
        for line in [
            "# TYPE pcietun_function_tlps_total counter",
            "pcietun_function_tlps_total{function=\"nvme0\",direction=\"downstream\"} 10",
            "pcietun_function_tlps_total{function=\"nvme0\",direction=\"upstream\"} 7",
            "pcietun_function_tlp_bytes_total{function=\"nvme0\",direction=\"downstream\"} 4096",
            "pcietun_function_dma_bytes_total{function=\"nvme0\",operation=\"write\"} 1099511627776",
            "pcietun_function_interrupts_total{function=\"nvme0\"} 3",
            "pcietun_function_unsupported_requests_total{function=\"nvme0\"} 1",
            "pcietun_function_completer_aborts_total{function=\"nvme0\"} 2",
            "pcietun_function_completion_timeouts_total{function=\"nvme0\"} 5",
            "pcietun_function_throttled_seconds_total{function=\"nvme0\",limit=\"bandwidth_up\"} 1.5",
            "pcietun_function_throttled_seconds_total{function=\"nvme0\",limit=\"iops\"} 0.0",
            "pcietun_function_state{function=\"nvme0\",state=\"unassigned\"} 1",
            "pcietun_function_state{function=\"nvme0\",state=\"assigned\"} 0",
            "pcietun_function_interrupts_total{function=\"dma0.vf2\"} 0",
            "pcietun_host_connected{host=\"alpha\"} 1",
            "pcietun_host_connected{host=\"beta\"} 0",
            "pcietun_host_rtt_seconds{host=\"alpha\"} 0.000042",
            "pcietun_host_tlps_total{host=\"alpha\",direction=\"upstream\"} 12",
            "pcietun_host_frame_bytes_total{host=\"alpha\",direction=\"downstream\"} 1500",
            "pcietun_host_retransmits_total{host=\"alpha\"} 4",
            "pcietun_host_credit_stalls_total{host=\"alpha\"} 6",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} missing:\n{text}");
        }
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        assert!(
            !text.contains("host=\"beta\"} 0.") && !text.contains("rtt_seconds{host=\"beta\""),
            "a disconnected host has no RTT:\n{text}"
        );
        assert!(
            !text.contains("function_owner_info{"),
            "nothing is assigned"
        );
    }

    #[test]
    fn openmetrics_ends_with_eof() {
        let text = render(&sample(), Format::OpenMetrics);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE pcietun_function_tlps counter\n"));
        assert!(text.contains("# UNIT pcietun_host_rtt_seconds seconds\n"));
    }

    #[test]
    fn owner_and_invalid_ids() {
        use crate::mgmt::pool::{Completer, Pool};
        let pool = sample();
        pool.assign("nvme0", "alpha", Completer::ignored()).unwrap();
        let mut scrape = Scrape {
            functions: pool.functions(),
            hosts: pool.hosts(),
            metrics: pool.metrics(),
        };
        // Ids that would need escaping in a label value are left out, wherever they come from.
        let mut bad = scrape.functions[0].clone();
        bad.id = "bad\"id".into();
        scrape.functions.push(bad);
        scrape.metrics.functions.push(FunctionMetrics {
            function: "bad\\id".into(),
            ..FunctionMetrics::default()
        });
        scrape.metrics.hosts.push(HostMetrics {
            host: "bad\nhost".into(),
            ..HostMetrics::default()
        });
        let text = scrape.encode(Format::PrometheusText);
        assert!(text
            .lines()
            .any(|l| l == "pcietun_function_owner_info{function=\"nvme0\",host=\"alpha\"} 1"));
        assert!(text
            .lines()
            .any(|l| l == "pcietun_function_state{function=\"nvme0\",state=\"assigned\"} 1"));
        assert!(!text.contains("bad"), "{text}");
    }
}
