//! The running agent's control socket with real processes (docs/host.md "Control socket"): a
//! `pcietun appliance` (its default NVMe controller), a `pcietun host` agent serving
//! `--control`, and `pcietun host lspci|read|write` answered through it while the agent's
//! session stays the only one the appliance ever sees. The same tools with `--no-control` open
//! a second session — the appliance logs it — which is what the socket exists to avoid (and
//! shows the observable catches a fallback). A second agent on the same control path is
//! refused before it opens a session.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use pcietun::host::control;

mod host_common;
use host_common::{free_udp_port, pcietun, ready, run_logged, Proc};

/// How many host sessions the appliance has logged so far.
fn sessions(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("appliance: host") && l.contains("connected from"))
        .count()
}

/// Wait until `sessions(log)` is `n` (the appliance writes its log line asynchronously).
fn wait_sessions(log: &Path, n: usize) {
    let t0 = Instant::now();
    while sessions(log) < n && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        sessions(log),
        n,
        "{}",
        std::fs::read_to_string(log).unwrap()
    );
}

struct Rig {
    dir: tempfile::TempDir,
    connect: String,
    app_log: PathBuf,
    agent_log: PathBuf,
    _app: Proc,
    agent: Proc,
}

impl Rig {
    fn control(&self) -> PathBuf {
        self.dir.path().join("ctl").join("agent.sock")
    }

    fn tool(&self, args: &[&str]) -> Output {
        run_logged(
            pcietun()
                .arg("host")
                .args(args)
                .args(["--connect", &self.connect])
                .args(["--control", self.control().to_str().unwrap()]),
            args,
        )
    }
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let port = free_udp_port();
    let connect = format!("udp:127.0.0.1:{port}");
    let app_log = dir.path().join("appliance.stderr");
    let mut app = pcietun()
        .args(["appliance", "--listen", &connect])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&app_log).unwrap())
        .spawn()
        .unwrap();
    ready(&mut app, "appliance ready:");
    let app = Proc(app);
    let agent_log = dir.path().join("agent.stderr");
    let ctl = dir.path().join("ctl").join("agent.sock");
    let mut agent = pcietun()
        .args(["host", "--connect", &connect])
        .args(["--control", ctl.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();
    ready(&mut agent, "host ready:");
    wait_sessions(&app_log, 1);
    Rig {
        dir,
        connect,
        app_log,
        agent_log,
        _app: app,
        agent: Proc(agent),
    }
}

const FALLBACK: &str = "opening a session of our own";

#[test]
fn tools_use_the_running_agent_and_leave_its_session_alone() {
    let rig = rig();
    let ctl = rig.control();
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&ctl).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");

    let st = control::request(&ctl, "status", Duration::from_secs(10)).unwrap();
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["session"], "up");
    assert_eq!(st["target"], rig.connect.as_str());
    assert_eq!(st["functions"][0]["bdf"], "01:00.0");
    assert_eq!(st["functions"][0]["class"], "010802");

    let o = rig.tool(&["lspci"]);
    assert!(o.status.success());
    let list = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(list.starts_with("00:00.0 "), "{list}");
    assert!(list.contains("\n01:00.0 "), "{list}");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(FALLBACK));

    let o = rig.tool(&["lspci", "-xxx", "01:00.0"]);
    assert!(o.status.success());
    let dump = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(dump.starts_with("01:00.0 "), "{dump}");
    let hex_lines = dump
        .lines()
        .filter(|l| l.len() > 4 && &l[2..4] == ": ")
        .count();
    assert_eq!(hex_lines, 16, "256 bytes, 16 per line: {dump}");

    // The appliance saw no second session (a tool with a session of its own makes it log one
    // before it answers anything).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sessions(&rig.app_log),
        1,
        "lspci opened a session of its own"
    );

    // CC (BAR0 + 0x14) is writable and reads back (EN stays 0): a second session would have
    // reset the controller in between.
    let o = rig.tool(&["write", "01:00.0", "0", "0x14", "0x460000"]);
    assert!(o.status.success());
    assert!(o.stdout.is_empty());
    let o = rig.tool(&["read", "01:00.0", "0", "0x14"]);
    assert!(o.status.success());
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0x00460000");
    assert!(!String::from_utf8_lossy(&o.stderr).contains(FALLBACK));

    // Errors come back as today: a one-line reason, a failing exit code.
    let o = rig.tool(&["read", "01:00.7", "0", "0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no tunnelled function at 01:00.7"));

    // All of that went through the agent: the appliance saw one session, the agent's.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sessions(&rig.app_log), 1);
    let st = control::request(&ctl, "status", Duration::from_secs(10)).unwrap();
    assert_eq!(st["session"], "up");

    // The same tool without the socket opens a session of its own: the appliance logs a
    // second one (the observable above would catch a tool that fell back).
    let o = rig.tool(&["--no-control", "read", "01:00.0", "0", "0x14"]);
    assert!(o.status.success());
    wait_sessions(&rig.app_log, 2);
}

#[test]
fn no_agent_falls_back_to_a_session_of_its_own() {
    let rig = rig();
    // Stop the agent (SIGTERM: it removes its socket).
    let pid = rig.agent.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let t0 = Instant::now();
    while rig.control().exists() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !rig.control().exists(),
        "the agent left its control socket behind"
    );
    let o = rig.tool(&["read", "01:00.0", "0", "0x8"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout)
        .trim()
        .starts_with("0x0001"));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err.lines().filter(|l| l.contains(FALLBACK)).count(),
        1,
        "{err}"
    );
}

#[test]
fn a_second_agent_on_the_same_control_path_is_refused() {
    let rig = rig();
    let ctl = rig.control();
    let o = pcietun()
        .args(["host", "--connect", &rig.connect])
        .args(["--control", ctl.to_str().unwrap()])
        .args(["--connect-timeout", "5"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("--control") && err.contains("another agent"),
        "{err}"
    );
    // Refused before it opened a session: the first agent's is the only one.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sessions(&rig.app_log), 1);
    let st = control::request(&ctl, "status", Duration::from_secs(10)).unwrap();
    assert_eq!(st["session"], "up", "{st}");
    let log = std::fs::read_to_string(&rig.agent_log).unwrap();
    assert!(log.contains("control socket"), "{log}");
}
