//! Every Unix socket the host agent binds follows one rule (docs/host.md "Sockets",
//! `host::sockfile::bind_socket`): a stale socket at the path is replaced, a live one
//! (somebody accepts — even with a full backlog) is refused and keeps serving, and a file that
//! is not a socket is refused and left alone. Checked here on the two kinds of socket the
//! agent's own control socket tests (`src/host/control/tests.rs`) do not cover: a function's
//! vfio-user socket (`FunctionServer::bind`, what `Agent::serve_function` binds) and the VM
//! control socket (`VmService::serve_control`, `--vm-control`). Plus the one sanitizer of
//! names from outside (`host::names::safe_name`), property-tested.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcietun::host::names::{safe_name, MAX_NAME};
use pcietun::host::sockfile::BindError;
use pcietun::host::vfio_user::socket::SocketError;
use pcietun::host::vfio_user::FunctionServer;
use pcietun::host::vm::{FunctionRef, FunctionSockets, VmAttacher, VmService, VmSettings, VmSpec};
use proptest::prelude::*;

/// A socket file nobody listens on (bound, then its listener closed).
fn stale(path: &Path) {
    drop(UnixListener::bind(path).unwrap());
    assert!(path.exists());
    assert!(UnixStream::connect(path).is_err(), "stale socket accepts");
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn vfio_bind(path: &Path) -> Result<FunctionServer, BindError> {
    match FunctionServer::bind(path) {
        Ok(s) => Ok(s),
        Err(SocketError::Bind(e)) => Err(e),
        Err(e) => panic!("not a bind error: {e}"),
    }
}

#[test]
fn vfio_user_socket_replaces_a_stale_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01:00.0.sock");
    stale(&path);
    let s = vfio_bind(&path).unwrap();
    assert_eq!(mode(&path), 0o660);
    let _c = UnixStream::connect(&path).expect("the new socket accepts");
    drop(s);
    assert!(!path.exists(), "its own socket is removed when it ends");
}

#[test]
fn vfio_user_socket_refuses_a_live_socket_and_leaves_it_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01:00.0.sock");
    let first = vfio_bind(&path).unwrap();
    let e = vfio_bind(&path).unwrap_err();
    assert!(matches!(e, BindError::Live(_)), "{e}");
    assert!(e.to_string().contains("another agent"), "{e}");
    // The first server still owns the path: a client reaches its listener.
    let _c = UnixStream::connect(&path).unwrap();
    drop(first);
    assert!(!path.exists());
}

#[test]
fn vfio_user_socket_refuses_a_live_socket_with_a_full_backlog_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01:00.0.sock");
    // A listener with the smallest backlog that never accepts (std's is the system maximum).
    let busy = rustix::net::socket(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    rustix::net::bind(&busy, &rustix::net::SocketAddrUnix::new(&path).unwrap()).unwrap();
    rustix::net::listen(&busy, 0).unwrap();
    // Fill its backlog: a blocking connect would now wait until somebody accepts.
    let mut held = Vec::new();
    let mut full = false;
    for _ in 0..64 {
        let fd = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::NONBLOCK | rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let addr = rustix::net::SocketAddrUnix::new(&path).unwrap();
        match rustix::net::connect(&fd, &addr) {
            Ok(()) => held.push(fd),
            Err(rustix::io::Errno::AGAIN) => {
                full = true;
                break;
            }
            Err(e) => panic!("filling the backlog: {e}"),
        }
    }
    assert!(full, "the backlog never filled: the test proves nothing");
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || {
        let _ = tx.send(vfio_bind(&p).map(|_| ()));
    });
    let r = rx
        .recv_timeout(Duration::from_secs(5))
        .expect("bind hung on a live socket with a full backlog");
    assert!(matches!(r, Err(BindError::Live(_))), "{r:?}");
}

#[test]
fn vfio_user_socket_refuses_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01:00.0.sock");
    std::fs::write(&path, b"keep me").unwrap();
    let e = vfio_bind(&path).unwrap_err();
    assert!(matches!(e, BindError::NotASocket(_)), "{e}");
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
    // A directory is not a socket either.
    let d = dir.path().join("d.sock");
    std::fs::create_dir(&d).unwrap();
    assert!(matches!(vfio_bind(&d), Err(BindError::NotASocket(_))));
    assert!(d.is_dir());
}

#[test]
fn a_vfio_user_server_leaves_a_socket_that_replaced_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01:00.0.sock");
    let s = vfio_bind(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    let _other = UnixListener::bind(&path).unwrap();
    drop(s);
    assert!(path.exists(), "removed another agent's socket");
}

struct NoSockets;

impl FunctionSockets for NoSockets {
    fn serve(&self, _: &FunctionRef) -> Result<PathBuf, String> {
        Err("no sockets in this test".into())
    }
    fn withdraw(&self, _: &FunctionRef) -> bool {
        false
    }
}

fn service(dir: &Path) -> Arc<VmService> {
    let spec = VmSpec::new("vm1", dir.join("absent.qmp"), Vec::new()).unwrap();
    let attacher =
        VmAttacher::new(vec![spec], VmSettings::default(), Arc::new(|_: &_| {})).unwrap();
    Arc::new(VmService::start(Arc::new(attacher), Arc::new(NoSockets)).unwrap())
}

/// One request on the VM control socket at `path`, with a deadline.
fn ask(path: &Path, line: &str) -> std::io::Result<String> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    writeln!(s, "{line}")?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut r = String::new();
    s.read_to_string(&mut r)?;
    Ok(r)
}

#[test]
fn vm_control_socket_replaces_a_stale_socket_and_removes_it_on_stop() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ctl");
    stale(&path);
    let svc = service(dir.path());
    assert_eq!(svc.serve_control(&path).unwrap(), path);
    assert_eq!(mode(&path), 0o600);
    let r = ask(&path, "list").unwrap();
    assert!(r.contains("\"ok\":true"), "{r}");
    let t0 = Instant::now();
    svc.stop();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(!path.exists(), "stop leaves the control socket");
}

#[test]
fn vm_control_socket_refuses_a_live_socket_and_leaves_it_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ctl");
    let first = service(dir.path());
    first.serve_control(&path).unwrap();
    let second = service(dir.path());
    let e = second.serve_control(&path).unwrap_err();
    assert!(matches!(e, BindError::Live(_)), "{e}");
    // The first agent's socket still answers, and the refused one removes nothing on stop.
    second.stop();
    assert!(ask(&path, "list").unwrap().contains("\"ok\":true"));
    first.stop();
    assert!(!path.exists());
}

#[test]
fn vm_control_socket_refuses_a_file_that_is_not_a_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vm.ctl");
    std::fs::write(&path, b"keep me").unwrap();
    let svc = service(dir.path());
    let e = svc.serve_control(&path).unwrap_err();
    assert!(matches!(e, BindError::NotASocket(_)), "{e}");
    svc.stop();
    assert_eq!(std::fs::read(&path).unwrap(), b"keep me");
}

fn allowed(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

#[test]
fn safe_name_examples() {
    assert_eq!(safe_name("web-1"), "web-1");
    assert_eq!(safe_name("01:00.0"), "01_00.0");
    assert_eq!(safe_name("nvme a/1"), "nvme_a_1");
    assert_eq!(safe_name("../x y"), "_._x_y");
    assert_eq!(safe_name(".."), "_.");
    assert_eq!(safe_name(""), "_");
    assert_eq!(safe_name("é\u{0}\n"), "___");
    assert_eq!(safe_name(&"a".repeat(10_000)).len(), MAX_NAME);
}

proptest! {
    #[test]
    fn safe_name_is_a_bounded_file_name_and_qemu_id(s in ".{0,200}") {
        let n = safe_name(&s);
        prop_assert!(!n.is_empty());
        prop_assert!(n.len() <= MAX_NAME);
        prop_assert!(n.chars().all(allowed), "{n:?}");
        prop_assert!(!n.starts_with('.'), "{n:?}");
        // One character out per character in (up to the bound): names stay distinguishable
        // by length and position.
        prop_assert_eq!(n.chars().count(), s.chars().count().clamp(1, MAX_NAME));
        // A file name component, and behind `pcietun-` a QEMU id.
        prop_assert!(n != "." && n != ".." && !n.contains('/'));
        // Idempotent.
        prop_assert_eq!(safe_name(&n), n.clone());
    }

    #[test]
    fn safe_name_keeps_names_that_are_safe_already(s in "[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}") {
        prop_assert_eq!(safe_name(&s), s);
    }
}
