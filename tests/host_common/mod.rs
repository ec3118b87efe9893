//! Process helpers of the tests that run `pcietun host` agents (and appliances) as child
//! processes.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output};
use std::time::Duration;

/// A child process killed (and reaped) on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `pcietun` binary under test, logging at `info`.
pub fn pcietun() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pcietun"));
    c.env("RUST_LOG", "info");
    c
}

/// Wait for the first stdout line of `child` (bounded), which must start with `prefix`; the
/// line.
pub fn ready(child: &mut Child, prefix: &str) -> String {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(out);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the child never blocks on a full pipe.
        let mut sink = String::new();
        while r.read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("no ready line");
    assert!(line.starts_with(prefix), "{line:?}");
    line
}

/// Run `cmd` (a `pcietun host` tool, `args` its request words) to completion and log its
/// status and output for the test's report.
pub fn run_logged(cmd: &mut Command, args: &[&str]) -> Output {
    let o = cmd.output().unwrap();
    eprintln!(
        "host {args:?}: {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}
