//! `pcietun demo` end to end as a process: an appliance and a host agent joined by the real
//! transport, the NVMe controller brought up by the user-space driver, data written and read
//! back through the tunnel and verified. Not timed (speed is `pcietun bench`'s job).

mod prereq;
use std::process::Command;

/// Run the demo: (success, stdout, stderr, child pid).
fn demo(args: &[&str]) -> (bool, String, String, u32) {
    let child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("demo")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run pcietun demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for pcietun demo");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        pid,
    )
}

fn check_output(stdout: &str) {
    // lspci view of the tunnelled NVMe function (class 0108, the model's IDs).
    assert!(
        stdout.contains("01:00.0 Class 0108: Device 1b36:0e01"),
        "{stdout}"
    );
    assert!(stdout.contains("00: 36 1b 01 0e"), "{stdout}");
    // The driver identified the controller through the tunnel.
    assert!(
        stdout.contains("model \"pcietun NVMe controller\""),
        "{stdout}"
    );
    // Data verified, figures printed, cleaned up.
    assert!(
        stdout.contains("read back equal what was written"),
        "{stdout}"
    );
    assert!(stdout.contains("MMIO read (CSTS register)"), "{stdout}");
    assert!(stdout.contains("MB/s"), "{stdout}");
    assert!(stdout.contains("tunnel closed"), "{stdout}");
}

#[test]
fn demo_without_arguments_verifies_64_mib_over_udp() {
    let (ok, stdout, stderr, _) = demo(&[]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    check_output(&stdout);
    assert!(
        stdout.contains("UDP on 127.0.0.1, two processes"),
        "{stdout}"
    );
    assert!(stdout.contains("`pcietun appliance` (pid"), "{stdout}");
    assert!(
        stdout.contains("all 67108864 bytes read back"),
        "the default run moves 64 MiB: {stdout}"
    );
}

#[test]
fn demo_over_raw_ethernet_between_namespaces() {
    if !prereq::root_and_ip("demo --link eth") {
        return;
    }
    let (ok, stdout, stderr, pid) = demo(&["--link", "eth", "--size-mib", "8"]);
    assert!(ok, "demo --link eth failed:\n{stdout}\n{stderr}");
    check_output(&stdout);
    assert!(stdout.contains("between namespaces"), "{stdout}");
    assert!(
        stdout.contains("namespaces and veth pair deleted"),
        "{stdout}"
    );
    // Nothing left behind.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let name = format!("ptr{}a", pid % 100_000);
    assert!(
        !String::from_utf8_lossy(&ns.stdout).contains(&name),
        "namespaces left behind: {}",
        String::from_utf8_lossy(&ns.stdout)
    );
}

#[test]
fn demo_failure_exits_non_zero() {
    // An impossible request must fail loudly, not pretend.
    let (ok, _, stderr, _) = demo(&["--size-mib", "0"]);
    assert!(!ok);
    assert!(stderr.contains("size-mib"), "{stderr}");
}
