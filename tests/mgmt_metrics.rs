//! `/metrics` over real HTTP: authenticated like the Redfish tree, the pool's counters and
//! states in the exposition, both formats by `Accept`, and `promtool check metrics` (Debian
//! package `prometheus`) reporting no problem with the live output. Without promtool the lint
//! is skipped loudly (and fails under `PCIETUN_REQUIRE_ALL=1`).

mod mgmt_common;
mod prereq;

use std::io::Write;
use std::process::{Command, Stdio};

use mgmt_common::*;
use pcietun::mgmt::pool::{Directions, FunctionMetrics, HostMetrics};

fn busy_pool() -> Api {
    let api = start();
    api.pool.set_function_metrics(FunctionMetrics {
        function: "nvme0".into(),
        tlps: Directions {
            downstream: 1_000,
            upstream: 2_000,
        },
        bytes: Directions {
            downstream: 64_000,
            upstream: 4_096_000,
        },
        dma_read_bytes: 4_000_000,
        dma_write_bytes: 123,
        interrupts: 77,
        unsupported_requests: 1,
        completer_aborts: 0,
        completion_timeouts: 2,
        throttled: pcietun::mgmt::pool::Throttled {
            bandwidth_down_nanos: 250_000_000,
            ..Default::default()
        },
    });
    api.pool.set_host_metrics(HostMetrics {
        host: "alpha".into(),
        tlps: Directions {
            downstream: 1_001,
            upstream: 2_002,
        },
        bytes: Directions {
            downstream: 90_000,
            upstream: 4_200_000,
        },
        retransmits: 9,
        credit_stalls: 3,
    });
    api
}

fn has_line(text: &str, line: &str) {
    assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
}

#[test]
fn metrics_need_credentials_and_show_the_pool() {
    let api = busy_pool();
    let r = api.get("/metrics", Auth::None);
    assert_eq!(r.status, 401, "{}", r.text);

    let admin = api.admin();
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    // Any role may read them: a ReadOnly session and HTTP Basic (what scrapers send).
    let viewer = api.user(&admin, "viewer", "ReadOnly");
    let r = api.get("/metrics", Auth::Token(&viewer));
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text;
    has_line(
        &text,
        "pcietun_function_tlps_total{function=\"nvme0\",direction=\"upstream\"} 2000",
    );
    has_line(
        &text,
        "pcietun_function_dma_bytes_total{function=\"nvme0\",operation=\"read\"} 4000000",
    );
    has_line(
        &text,
        "pcietun_function_completion_timeouts_total{function=\"nvme0\"} 2",
    );
    has_line(
        &text,
        "pcietun_function_throttled_seconds_total{function=\"nvme0\",limit=\"bandwidth_down\"} 0.25",
    );
    has_line(
        &text,
        "pcietun_function_state{function=\"nvme0\",state=\"assigned\"} 1",
    );
    has_line(
        &text,
        "pcietun_function_owner_info{function=\"nvme0\",host=\"alpha\"} 1",
    );
    has_line(&text, "pcietun_host_retransmits_total{host=\"alpha\"} 9");
    has_line(&text, "pcietun_host_rtt_seconds{host=\"alpha\"} 0.000042");

    // What `ctl watch` reads of it: every family it knows is served, and the parser of the
    // client reads the live body back to the same figures.
    let samples = pcietun::mgmt::exposition::parse(&text).unwrap();
    use pcietun::mgmt::watch::family;
    for family in family::FUNCTION.iter().chain(&family::HOST) {
        assert!(
            samples.iter().any(|s| s.name == *family),
            "ctl watch reads {family}, /metrics does not serve it:\n{text}"
        );
    }
    let c = pcietun::mgmt::watch::Counters::from_samples(&samples);
    let f = &c.functions["nvme0"];
    assert_eq!((f.tlps.down, f.tlps.up), (1_000.0, 2_000.0));
    assert_eq!((f.bytes.down, f.bytes.up), (64_000.0, 4_096_000.0));
    assert_eq!((f.errors, f.throttled), (3.0, 0.25));
    assert_eq!(f.host.as_deref(), Some("alpha"));
    let h = &c.hosts["alpha"];
    assert_eq!(
        (h.retransmits, h.credit_stalls, h.rtt),
        (9.0, 3.0, Some(0.000042))
    );
    assert_eq!((h.tlps.down, h.frame_bytes.up), (1_001.0, 4_200_000.0));

    let r = api.get("/metrics", Auth::Basic(ADMIN, ADMIN_PW));
    assert_eq!(r.status, 200);

    let r = api.req(
        "GET",
        "/metrics",
        Auth::Token(&viewer),
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
        None,
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Content-Type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    assert!(r.text.ends_with("# EOF\n"), "{}", r.text);

    // Read-only: nothing but GET and HEAD.
    let r = api.post("/metrics", Auth::Token(&admin), "{}");
    assert_eq!(r.status, 405);
}

#[test]
fn promtool_finds_no_problem() {
    let api = busy_pool();
    let admin = api.admin();
    assert_eq!(
        api.post(
            ADD_ALPHA,
            Auth::Token(&admin),
            &add_endpoint_body("dma0.vf1")
        )
        .status,
        202
    );
    api.pool.set_failed("dma0", "AER fatal error");
    let r = api.get("/metrics", Auth::Token(&admin));
    assert_eq!(r.status, 200);
    let text = r.text;
    assert!(text.lines().count() > 50, "{text}");

    if Command::new("promtool").arg("--version").output().is_err() {
        prereq::skip(
            "promtool_finds_no_problem (the metrics lint)",
            "promtool not installed (apt-get install prometheus)",
        );
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {:?}\n{report}\n--- exposition:\n{text}",
        out.status
    );
}

#[test]
fn the_grafana_dashboard_reads_exported_metrics() {
    let api = busy_pool();
    let admin = api.admin();
    assert_eq!(
        api.post(ADD_ALPHA, Auth::Token(&admin), &add_endpoint_body("nvme0"))
            .status,
        202
    );
    let exposed = api.get("/metrics", Auth::Token(&admin)).text;
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/contrib/grafana/pcietun.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(o) => {
                for (k, x) in o {
                    match (k.as_str(), x) {
                        ("expr" | "definition", serde_json::Value::String(s)) => {
                            out.push(s.clone())
                        }
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let bytes = e.as_bytes();
        let mut i = 0;
        while let Some(at) = e[i..].find("pcietun_") {
            let start = i + at;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            names.insert(e[start..end].to_string());
            i = end;
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        assert!(
            exposed.lines().any(|l| l.starts_with(&format!("{name}{{"))),
            "the dashboard queries {name}, which /metrics does not export"
        );
    }
}
