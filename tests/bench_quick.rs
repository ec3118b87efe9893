//! Every `pcietun bench` device scenario in its tiny `--quick` mode, as a process: it must
//! finish, and its `--json` must hold the keys docs/bench.md documents with sane values
//! (figures positive, percentiles ordered, ratios equal to the figures they divide). A test of
//! the harness, not a benchmark: no figure is compared with a speed.

mod prereq;
use serde_json::Value;
use std::process::Command;

fn bench(args: &[&str]) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("out.json");
    let out = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("bench")
        .args(args)
        .args(["--quick", "--json"])
        .arg(&json)
        .output()
        .expect("run pcietun bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("commit"),
        "table header names the commit: {stdout}"
    );
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let h = &v["header"];
    assert!(!h["commit"].as_str().unwrap().is_empty());
    assert!(h["cpus"].as_u64().unwrap() >= 1);
    assert_eq!(h["quick"], Value::Bool(true));
    v
}

fn f(v: &Value, k: &str) -> f64 {
    v[k].as_f64()
        .unwrap_or_else(|| panic!("key {k} missing or not a number in {v}"))
}

fn latency_ok(l: &Value) {
    let (p50, p99, p999) = (f(l, "p50_us"), f(l, "p99_us"), f(l, "p999_us"));
    assert!(p50 > 0.0 && p50 <= p99 && p99 <= p999, "{l}");
    assert!(l["n"].as_u64().unwrap() >= 100, "{l}");
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0)
}

#[test]
fn mmio_read_reports_percentiles_and_ratios_with_a_plot() {
    let plots = tempfile::tempdir().unwrap();
    let v = bench(&[
        "mmio-read",
        "--link",
        "udp",
        "--plot",
        plots.path().to_str().unwrap(),
    ]);
    latency_ok(&v["raw_ping_pong"]);
    latency_ok(&v["ours"]);
    latency_ok(&v["ours_no_transport"]);
    assert!(close(
        f(&v, "ratio_p50_no_transport"),
        f(&v["ours_no_transport"], "p50_us") / f(&v["raw_ping_pong"], "p50_us")
    ));
    let r = f(&v, "ratio_p50");
    assert!(r > 0.0);
    assert!(close(
        r,
        f(&v["ours"], "p50_us") / f(&v["raw_ping_pong"], "p50_us")
    ));
    assert!(f(&v, "ratio_p99") > 0.0 && f(&v, "ratio_p999") > 0.0);
    let svg = std::fs::read_to_string(plots.path().join("mmio-read-cdf.svg")).unwrap();
    assert!(
        svg.contains("<svg") && svg.contains("raw ping-pong"),
        "CDF chart"
    );
}

#[test]
fn mmio_read_with_loss_reports_a_bounded_p99() {
    let v = bench(&[
        "mmio-read",
        "--link",
        "mem",
        "--loss",
        "1%",
        "--aead",
        "off",
    ]);
    latency_ok(&v["ours_lossy"]);
    assert_eq!(v["header"]["loss_pct"].as_f64(), Some(1.0));
    assert_eq!(v["header"]["aead"], Value::Bool(false));
}

#[test]
fn mmio_write_reports_rates() {
    let v = bench(&["mmio-write", "--link", "mem"]);
    assert!(f(&v, "raw_datagrams_per_s") > 0.0);
    assert!(f(&v, "ours_writes_per_s") > 0.0);
    assert!(close(
        f(&v, "ratio_rate"),
        f(&v, "ours_writes_per_s") / f(&v, "raw_datagrams_per_s")
    ));
}

fn dma(which: &str) {
    let plots = tempfile::tempdir().unwrap();
    let v = bench(&[which, "--plot", plots.path().to_str().unwrap()]);
    let rows = v["rows"].as_array().unwrap();
    let sizes: Vec<u64> = rows.iter().map(|r| r["size"].as_u64().unwrap()).collect();
    assert_eq!(sizes, vec![4096, 65536]);
    for r in rows {
        assert!(
            f(r, "ours_gbyte_s") > 0.0 && f(r, "raw_gbyte_s") > 0.0,
            "{r}"
        );
        assert!(close(
            f(r, "ratio_throughput"),
            f(r, "ours_gbyte_s") / f(r, "raw_gbyte_s")
        ));
    }
    // The headline ratio is the worst one at 64 KiB and above.
    assert!(close(
        f(&v, "ratio_throughput"),
        f(&rows[1], "ratio_throughput")
    ));
    let svg =
        std::fs::read_to_string(plots.path().join(format!("{which}-throughput.svg"))).unwrap();
    assert!(svg.contains("<svg"));
}

#[test]
fn dma_read_reports_throughput_per_size() {
    dma("dma-read");
}

#[test]
fn dma_write_reports_throughput_per_size() {
    dma("dma-write");
}

#[test]
fn nvme_reports_iops_and_latency_at_qd1_and_qd32() {
    let v = bench(&["nvme"]);
    latency_ok(&v["raw_ping_pong"]);
    assert!(f(&v, "raw_iops_bound") > 0.0);
    let rows = v["rows"].as_array().unwrap();
    let kinds: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap().to_string(),
                r["qd"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("randread".into(), 1),
            ("randread".into(), 32),
            ("randwrite".into(), 1),
            ("randwrite".into(), 32)
        ]
    );
    for r in rows {
        assert!(f(r, "iops") > 0.0, "{r}");
        let l = &r["latency"];
        assert!(
            f(l, "p50_us") > 0.0 && f(l, "p50_us") <= f(l, "p99_us"),
            "{r}"
        );
        assert!(f(r, "ratio_iops_vs_raw_bound") > 0.0);
    }
    assert!(close(
        f(&v, "ratio_iops_qd32"),
        f(&rows[1], "ratio_iops_vs_raw_bound")
    ));
}

#[test]
fn nvme_with_the_nbd_peer_reports_ratios_to_it() {
    let have = |t: &str| {
        Command::new(t)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("nbdkit") || !have("fio") {
        prereq::skip(
            "bench nvme --peer nbd",
            "nbdkit or fio missing (apt-get install nbdkit fio)",
        );
        return;
    }
    let v = bench(&["nvme", "--peer", "nbd"]);
    assert_eq!(v["peer"], "nbd");
    assert!(v["peer_missing"].is_null(), "{}", v["peer_missing"]);
    let seq = v["seq_rows"].as_array().unwrap();
    let kinds: Vec<(&str, u64, u64)> = seq
        .iter()
        .map(|r| {
            (
                r["op"].as_str().unwrap(),
                r["bs"].as_u64().unwrap(),
                r["qd"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("seqread", 131072, 16), ("seqwrite", 131072, 16)]
    );
    let rows = v["rows"].as_array().unwrap();
    for r in rows.iter().chain(seq) {
        let p = &r["peer"];
        assert!(f(p, "iops") > 0.0, "{r}");
        assert!(f(p, "cpu_s_per_gb") > 0.0, "{r}");
        assert!(f(r, "cpu_s_per_gb") > 0.0, "{r}");
        let l = &p["latency"];
        assert!(
            f(l, "p50_us") > 0.0 && f(l, "p50_us") <= f(l, "p99_us"),
            "{r}"
        );
        assert!(close(
            f(r, "ratio_iops_vs_peer"),
            f(r, "iops") / f(p, "iops")
        ));
        assert!(close(
            f(r, "ratio_p50_vs_peer"),
            f(&r["latency"], "p50_us") / f(l, "p50_us")
        ));
        assert!(close(f(r, "bytes_per_s"), f(r, "iops") * f(r, "bs")));
    }
}

#[test]
fn mmio_read_over_raw_ethernet_between_namespaces() {
    if !prereq::root_and_ip("bench --link eth") {
        return;
    }
    let v = bench(&["mmio-read", "--link", "eth"]);
    assert_eq!(v["header"]["link"], "eth");
    assert!(v["header"]["path"]
        .as_str()
        .unwrap()
        .contains("between namespaces"));
    latency_ok(&v["raw_ping_pong"]);
    latency_ok(&v["ours"]);
    assert!(f(&v, "ratio_p50") > 0.0);
}

#[test]
fn sessions_reports_memory_cpu_and_latency_per_step() {
    let v = bench(&["sessions", "--sessions", "40"]);
    assert!(f(&v, "rss_idle_kib") > 0.0);
    let steps = v["steps"].as_array().expect("steps");
    let counts: Vec<u64> = steps
        .iter()
        .map(|s| s["sessions"].as_u64().unwrap())
        .collect();
    assert_eq!(counts, [1, 16, 40]);
    let active: Vec<u64> = steps
        .iter()
        .map(|s| s["active"].as_u64().unwrap())
        .collect();
    assert_eq!(
        active,
        [1, 16, 40],
        "one reader per pooled VF (224 on one bus)"
    );
    let base = &steps[0]["mmio_read"];
    for s in steps {
        latency_ok(&s["mmio_read"]);
        assert!(f(s, "rss_kib") >= f(&v, "rss_idle_kib"), "{s}");
        assert!(f(s, "rss_per_session_kib") >= 0.0 && f(s, "cpu_per_tlp_us") >= 0.0);
        assert!(f(s, "reads_per_s") > 0.0, "{s}");
        let r50 = f(&s["mmio_read"], "p50_us") / f(base, "p50_us");
        assert!((f(s, "ratio_p50") - r50).abs() < 1e-9, "{s}");
        let r99 = f(&s["mmio_read"], "p99_us") / f(base, "p99_us");
        assert!((f(s, "ratio_p99") - r99).abs() < 1e-9, "{s}");
    }
    assert_eq!(f(&steps[0], "ratio_p50"), 1.0);
}

#[test]
fn policy_holds_a_cap_within_ten_percent_both_ways_and_recovers() {
    let v = bench(&["policy"]);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{v}");
    for r in rows {
        // The bucket's correctness, not a performance claim: a function capped at X moves X.
        let q = f(r, "ratio_capped_to_cap");
        assert!((0.9..=1.1).contains(&q), "capped/cap {q}: {r}");
        assert!(f(r, "uncapped_gbyte_s") > f(r, "cap_gbyte_s"), "{r}");
        // Lifted: faster than the cap again, within the second.
        assert!(f(r, "ratio_lifted_to_uncapped") > 0.4, "{r}");
        assert!(f(r, "recovery_ms") <= 1000.0, "{r}");
        assert!(
            f(r, "throttled_s_per_s") > 0.1,
            "the appliance counted the wait: {r}"
        );
    }
    // Priority: two DMA engines writing at once, at equal priorities and at 30:10. The share
    // itself is asserted deterministically, at the host's end of a saturated session, in
    // tests/appliance_policy.rs (3.00 at 30:10). Here, on a loaded 2-CPU debug build, the CPU
    // rather than the link is often the bottleneck and the closed-loop engines are not always
    // backlogged: 30:10 was measured at 0.60-2.88, equal priorities at 0.88-1.90
    // (docs/bench.md). So only what never flakes: the scenario runs and reports, equal
    // priorities share within 2x, and the 30:10 row is a real ratio of two moving engines.
    let p = &v["priority"];
    assert_eq!(f(p, "configured_ratio"), 3.0, "{p}");
    let equal = f(p, "equal_ratio");
    assert!(
        (0.5..=2.0).contains(&equal),
        "equal priorities shared {equal}:1: {p}"
    );
    let got = f(p, "achieved_ratio");
    assert!(got > 0.3, "priority 30:10 shared {got}:1: {p}");
    assert!(f(p, "total_gbyte_s") > 0.0, "{p}");
}
