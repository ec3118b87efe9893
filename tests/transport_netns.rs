//! Raw Ethernet between two network namespaces joined by a veth pair (created and removed by
//! the test; needs root and `ip`): a `transport-peer` echo server in one namespace, a checking
//! client in the other, finding the server by broadcast, over EtherType 0x88B5, plain and with
//! an 802.1Q priority tag.

mod prereq;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            ip(&["netns", "del", n]);
        }
    }
}

#[test]
fn raw_ethernet_between_namespaces() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return prereq::skip("transport_netns", "not root");
    }
    if !ip(&["-V"]) {
        return prereq::skip("transport_netns", "no `ip` command");
    }
    let id = std::process::id();
    let (a, b) = (format!("ptA{id}"), format!("ptB{id}"));
    let ns = Netns(vec![a.clone(), b.clone()]);
    let ok = ip(&["netns", "add", &a])
        && ip(&["netns", "add", &b])
        && ip(&[
            "link", "add", "vA", "netns", &a, "type", "veth", "peer", "name", "vB", "netns", &b,
        ])
        && ip(&["-n", &a, "link", "set", "vA", "up"])
        && ip(&["-n", &b, "link", "set", "vB", "up"]);
    if !ok {
        drop(ns);
        return prereq::skip(
            "transport_netns",
            "cannot create namespaces / veth (no netns support?)",
        );
    }
    let bin = env!("CARGO_BIN_EXE_pcietun");
    // Real keys: the development keys are refused off loopback.
    let keys = tempfile::tempdir().unwrap();
    let keygen = |name: &str| {
        let path = keys.path().join(name);
        let out = Command::new(bin).arg("keygen").arg(&path).output().unwrap();
        assert!(out.status.success());
        let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
        (path.to_str().unwrap().to_string(), public)
    };
    let (skey, spub) = keygen("server.key");
    let (ckey, cpub) = keygen("client.key");
    for opts in ["", ",pcp=5"] {
        let listen = format!("eth:vA{opts}");
        let mut srv = Command::new("ip")
            .args([
                "netns",
                "exec",
                &a,
                bin,
                "transport-peer",
                "--listen",
                &listen,
                "--no-encrypt",
                "--key",
                &skey,
                "--peer-key",
                &cpub,
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(srv.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("transport-peer ready: eth:"), "{line:?}");
        let connect = format!("eth:vB{opts}");
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &b,
                bin,
                "transport-peer",
                "--connect",
                &connect,
                "--key",
                &ckey,
                "--peer-key",
                &spub,
            ])
            .args([
                "--no-encrypt",
                "--count",
                "20000",
                "--inject-loss",
                "1",
                "--timeout-secs",
                "60",
            ])
            .output()
            .unwrap();
        let _ = srv.kill();
        let _ = srv.wait();
        let stdout = String::from_utf8_lossy(&out.stdout);
        eprintln!("eth{opts}: {stdout}");
        assert!(
            out.status.success() && stdout.contains("20000 TLPs echoed exactly once, in order"),
            "raw Ethernet run ({opts:?}) failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(10));
    drop(ns);
    assert!(!ip(&["netns", "exec", &a, "true"]), "namespace removed");
}
