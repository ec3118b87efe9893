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

/// `pcietun keygen FILE` (prints the public key) and `pcietun pubkey FILE`.
fn keygen(dir: &std::path::Path, name: &str) -> (String, String) {
    let path = dir.join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("keygen")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    (path.to_str().unwrap().to_string(), public)
}

#[test]
fn two_processes_over_udp_loopback_with_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (skey, spub) = keygen(dir.path(), "server.key");
    let (ckey, cpub) = keygen(dir.path(), "client.key");
    for extra in [&[][..], &["--no-encrypt"][..]] {
        let mut sargs = vec![
            "--listen",
            "udp:127.0.0.1:0",
            "--key",
            &skey,
            "--peer-key",
            &cpub,
            "--inject-loss",
            "1",
        ];
        sargs.extend_from_slice(extra);
        let (_srv, addr) = server(&sargs);
        assert!(addr.starts_with("udp:127.0.0.1:"), "{addr}");
        let mut cargs = vec![
            "--connect",
            &addr,
            "--key",
            &ckey,
            "--peer-key",
            &spub,
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
    let dir = tempfile::tempdir().unwrap();
    let (skey, spub) = keygen(dir.path(), "server.key");
    let (_, cpub) = keygen(dir.path(), "client.key");
    let (other, _) = keygen(dir.path(), "other.key");
    let (_srv, addr) = server(&[
        "--listen",
        "udp:127.0.0.1:0",
        "--key",
        &skey,
        "--peer-key",
        &cpub,
    ]);
    let out = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["transport-peer", "--connect", &addr, "--key", &other])
        .args(["--peer-key", &spub, "--count", "10", "--timeout-secs", "2"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a client whose key the server does not list must not get a session"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no session"));
}

/// Key files: `keygen` writes 0600 and never overwrites; `pubkey` derives the same public key
/// from the file or standard input; a key file others can read is refused; the private key
/// never appears on any output.
#[test]
fn keygen_and_pubkey_commands() {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (path, public) = keygen(dir.path(), "a.key");
    assert_eq!(public.len(), 44, "{public}");
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&path).unwrap().trim().to_string();
    assert_ne!(secret, public);
    let again = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["keygen", &path])
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(&path).unwrap().trim(), secret);
    let pubkey = |args: &[&str], stdin: Option<&str>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_pcietun"))
            .arg("pubkey")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(t) = stdin {
            c.stdin.take().unwrap().write_all(t.as_bytes()).unwrap();
        }
        drop(c.stdin.take());
        c.wait_with_output().unwrap()
    };
    let o = pubkey(&[&path], None);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), public);
    let o = pubkey(&[], Some(&secret));
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), public);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = pubkey(&[&path], None);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("readable by group or others"), "{err}");
    assert!(!err.contains(&secret) && !String::from_utf8_lossy(&o.stdout).contains(&secret));
}
