//! Real sockets, real processes: two `pcietun transport-peer` processes over UDP on loopback
//! (IPv4, with 1 % injected loss, encrypted and authentication-only), the client checking
//! that every TLP comes back exactly once and in order.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start an echo server; returns it and the address from its ready line.
fn server(args: &[&str]) -> (Kill, String) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("transport-peer")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn server");
    let out = c.stdout.take().unwrap();
    let k = Kill(c);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("transport-peer ready: ")
        .unwrap_or_else(|| panic!("bad ready line {line:?}"))
        .trim()
        .to_string();
    (k, addr)
}

fn client(args: &[&str]) -> String {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("transport-peer")
        .args(args)
        .output()
        .expect("spawn client");
    assert!(start.elapsed() < Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "client failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn two_processes_over_udp_loopback_with_loss() {
    let psk = "11".repeat(32);
    for extra in [&[][..], &["--no-encrypt"][..]] {
        let mut sargs = vec![
            "--listen",
            "udp:127.0.0.1:0",
            "--psk",
            &psk,
            "--inject-loss",
            "1",
        ];
        sargs.extend_from_slice(extra);
        let (_srv, addr) = server(&sargs);
        assert!(addr.starts_with("udp:127.0.0.1:"), "{addr}");
        let mut cargs = vec![
            "--connect",
            &addr,
            "--psk",
            &psk,
            "--count",
            "20000",
            "--inject-loss",
            "1",
        ];
        cargs.extend_from_slice(extra);
        let out = client(&cargs);
        assert!(
            out.contains("20000 TLPs echoed exactly once, in order"),
            "{out}"
        );
    }
}

#[test]
fn wrong_key_process_is_refused() {
    let (_srv, addr) = server(&["--listen", "udp:127.0.0.1:0", "--psk", &"11".repeat(32)]);
    let out = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args([
            "transport-peer",
            "--connect",
            &addr,
            "--psk",
            &"22".repeat(32),
        ])
        .args(["--count", "10", "--timeout-secs", "2"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a client with the wrong key must not get a session"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session"));
}
