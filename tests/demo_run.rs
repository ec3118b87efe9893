//! `pcietun demo` end to end as a process. By default (UDP) the pool: an appliance child with two
//! hosts and its management API, host A's driver writes and verifies the data, the card moves to
//! host B through the API, host B reads back and verifies what A wrote. With `--link eth` the
//! single-host flow on the bench rig. Not timed (speed is `pcietun bench`'s job).

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
    assert!(stdout.contains("read back equal what"), "{stdout}");
    assert!(stdout.contains("MMIO read (CSTS register)"), "{stdout}");
    assert!(stdout.contains("MB/s"), "{stdout}");
    assert!(stdout.contains("tunnel closed"), "{stdout}");
}

/// The line index of the first line containing `needle` (panics with the output if none).
fn line_of(stdout: &str, needle: &str) -> usize {
    stdout
        .lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{stdout}"))
}

#[test]
fn demo_without_arguments_moves_the_card_between_two_hosts_over_udp() {
    let (ok, stdout, stderr, _) = demo(&[]);
    assert!(ok, "demo failed:\n{stdout}\n{stderr}");
    check_output(&stdout);
    assert!(
        stdout.contains("UDP on 127.0.0.1 between two processes"),
        "{stdout}"
    );
    assert!(stdout.contains("`pcietun appliance` (pid"), "{stdout}");
    assert!(
        stdout.contains("management API: http://127.0.0.1:"),
        "{stdout}"
    );
    // A generated password, printed with its private file; never a built-in one.
    let pw_line = &stdout
        .lines()
        .nth(line_of(&stdout, "administrator: admin, password "))
        .unwrap();
    let pw = pw_line
        .split("password ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .unwrap();
    assert_eq!(pw.len(), 24, "{pw_line}");
    // The pool, in order: A sees the card and B does not; A writes and verifies; the move
    // through the API; then A does not see it and B does; B reads back what A wrote.
    let a_has = line_of(&stdout, "host-a sees: 01:00.0 NVMe controller [1b36:0e01]");
    let b_none = line_of(&stdout, "host-b sees: no NVMe function");
    let a_ok = line_of(
        &stdout,
        "host-a: all 67108864 bytes read back equal what was written",
    );
    let inv_a = line_of(
        &stdout,
        "API inventory: ssd0 (nvme, class 0x010802) assigned to host-a",
    );
    let unassigned = line_of(&stdout, "ssd0 unassigned from host-a in");
    let assigned = line_of(&stdout, "ssd0 assigned to host-b in");
    let inv_b = line_of(
        &stdout,
        "API inventory: ssd0 (nvme, class 0x010802) assigned to host-b",
    );
    let a_none = line_of(&stdout, "host-a sees: no NVMe function");
    let b_has = line_of(&stdout, "host-b sees: 01:00.0 NVMe controller [1b36:0e01]");
    let b_up = line_of(&stdout, "host-b: bringing the NVMe controller up");
    let b_ok = line_of(
        &stdout,
        "host-b: all 67108864 bytes read back equal what host-a wrote",
    );
    assert!(a_has < b_none && b_none < a_ok, "{stdout}");
    assert!(
        a_ok < inv_a && inv_a < unassigned && unassigned < assigned,
        "{stdout}"
    );
    assert!(
        assigned < inv_b && inv_b < a_none && a_none < b_has,
        "{stdout}"
    );
    assert!(b_has < b_up && b_up < b_ok, "{stdout}");
    // The ctl commands a user could type for the same move.
    assert!(stdout.contains("pcietun ctl unassign ssd0"), "{stdout}");
    assert!(
        stdout.contains("pcietun ctl assign ssd0 host-b"),
        "{stdout}"
    );
    assert!(stdout.contains("MB/s (host-b)"), "{stdout}");
    assert!(stdout.contains("the appliance stopped"), "{stdout}");
}

#[test]
fn demo_over_memory_keeps_the_single_host_flow() {
    let (ok, stdout, stderr, _) = demo(&["--link", "mem", "--size-mib", "4"]);
    assert!(ok, "demo --link mem failed:\n{stdout}\n{stderr}");
    check_output(&stdout);
    assert!(
        stdout.contains("all 4194304 bytes read back equal what was written"),
        "{stdout}"
    );
    assert!(!stdout.contains("host-b"), "no pool on the rig: {stdout}");
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
