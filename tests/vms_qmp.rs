//! The QMP client against a scripted fake monitor: negotiation, replies matched by id, events
//! interleaved with (and ahead of) replies, command errors, garbage and oversized lines, a
//! monitor that hangs up mid-command, one that never answers, one that never greets.
//! Deterministic and fast: every wait is bounded and the fakes answer at once.

mod vms_common;

use std::time::{Duration, Instant};

use pcietun::host::qmp::{Qmp, QmpError};
use serde_json::json;
use vms_common::{FakeMonitor, GREETING};

const T: Duration = Duration::from_secs(5);

#[test]
fn negotiates_and_matches_replies_and_events() {
    let m = FakeMonitor::start(Some(GREETING), |cmd, p| {
        let id = cmd["id"].clone();
        match cmd["execute"].as_str().unwrap() {
            "device_del" => {
                // QEMU can finish an unplug before it answers the command.
                p.event(
                    "DEVICE_DELETED",
                    json!({"device": "d1", "path": "/machine/peripheral/d1"}),
                );
                p.ret(&id, json!({}));
            }
            "query-status" => {
                p.event("RTC_CHANGE", json!({"offset": 1}));
                p.ret(&id, json!({"running": true, "status": "running"}));
                p.event("STOP", json!({}));
            }
            _ => p.err(&id, "CommandNotFound", "The command x has not been found"),
        }
    });
    let mut q = Qmp::connect(&m.path, T).unwrap();
    assert_eq!(q.greeting().version.to_string(), "10.2.2");
    let st = q.execute("query-status", None, T).unwrap();
    assert_eq!(st["status"], "running");
    q.execute("device_del", Some(json!({"id": "d1"})), T)
        .unwrap();
    let t0 = Instant::now();
    let ev = q
        .wait_event(Instant::now() + T, |e| e.name == "DEVICE_DELETED")
        .unwrap()
        .expect("the DEVICE_DELETED that came before the reply is kept");
    assert_eq!(ev.str("device"), Some("d1"));
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "it was already queued"
    );
    let rest: Vec<String> = q
        .take_events()
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(rest, ["RTC_CHANGE", "STOP"], "other events stay, in order");
    let e = q.execute("frob", None, T).unwrap_err();
    assert_eq!(e.class(), Some("CommandNotFound"));
    assert!(!e.is_fatal());
    assert!(e.to_string().contains("frob"), "{e}");
    drop(q);
    let cmds = m.commands();
    assert_eq!(cmds.len(), 3);
    assert_eq!(cmds[1]["arguments"]["id"], "d1");
}

#[test]
fn garbage_and_oversized_lines_do_not_derail_the_stream() {
    let m = FakeMonitor::start(Some(GREETING), |cmd, p| {
        let id = cmd["id"].clone();
        p.line("garbage that is not JSON");
        p.line(r#"{"not": "qmp"}"#);
        p.line(r#"{"return": 1, "id": 424242}"#);
        let big = vec![b'x'; (1 << 20) + 4096];
        p.raw(&big);
        p.raw(b"\r\n");
        p.ret(&id, json!(["fine"]));
    });
    let mut q = Qmp::connect(&m.path, T).unwrap();
    let v = q.execute("query-pci", None, T).unwrap();
    assert_eq!(v, json!(["fine"]));
    assert_eq!(q.stats().bad_lines, 4);
}

#[test]
fn a_monitor_that_hangs_up_mid_command_is_reported_at_once() {
    let m = FakeMonitor::start(Some(GREETING), |_, p| p.hang_up = true);
    let mut q = Qmp::connect(&m.path, T).unwrap();
    let t0 = Instant::now();
    let e = q
        .execute("device_add", Some(json!({"driver": "x"})), T)
        .unwrap_err();
    assert!(matches!(e, QmpError::Disconnected { .. }), "{e}");
    assert!(e.is_fatal());
    assert!(t0.elapsed() < Duration::from_secs(2), "EOF, not a timeout");
    assert!(e.to_string().contains("device_add"), "{e}");
    // Later calls fail the same way without touching the socket.
    assert!(matches!(
        q.execute("query-pci", None, T),
        Err(QmpError::Disconnected { .. })
    ));
    assert!(matches!(
        q.wait_event(Instant::now() + T, |_| true),
        Err(QmpError::Disconnected { .. })
    ));
}

#[test]
fn a_silent_monitor_times_out_within_the_bound() {
    let m = FakeMonitor::start(Some(GREETING), |_, _| {});
    let mut q = Qmp::connect(&m.path, T).unwrap();
    let t0 = Instant::now();
    let e = q
        .execute(
            "device_del",
            Some(json!({"id": "x"})),
            Duration::from_millis(300),
        )
        .unwrap_err();
    let took = t0.elapsed();
    assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    assert!(!e.is_fatal());
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(2),
        "{took:?}"
    );
    let t0 = Instant::now();
    let none = q
        .wait_event(Instant::now() + Duration::from_millis(200), |_| true)
        .unwrap();
    assert!(none.is_none());
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn no_greeting_is_a_timeout_that_says_so() {
    let m = FakeMonitor::start(None, |_, _| {});
    let t0 = Instant::now();
    let e = Qmp::connect(&m.path, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("greeting"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn refused_negotiation_and_missing_socket() {
    // A monitor that refuses qmp_capabilities: answer it by hand.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.sock");
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let t = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (mut s, _) = l.accept().unwrap();
        writeln!(s, "{GREETING}").unwrap();
        let mut line = String::new();
        std::io::BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        writeln!(
            s,
            r#"{{"error": {{"class": "GenericError", "desc": "no"}}, "id": 0}}"#
        )
        .unwrap();
        line
    });
    let e = Qmp::connect(&path, T).unwrap_err();
    assert!(matches!(e, QmpError::Protocol { .. }), "{e}");
    assert!(t.join().unwrap().contains("qmp_capabilities"));
    let e = Qmp::connect(&dir.path().join("nope.sock"), T).unwrap_err();
    assert!(matches!(e, QmpError::Connect { .. }), "{e}");
}
