//! A scripted fake QMP monitor for the QMP and VM tests: a UNIX socket that greets, then hands
//! every command line to a script that answers with replies, events, garbage or a hang-up.
#![allow(dead_code)] // each test binary uses its own subset

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::thread::JoinHandle;

use serde_json::{json, Value};

/// QEMU 10.2.2's greeting.
pub const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 2, "minor": 2, "major": 10}, "package": ""}, "capabilities": ["oob"]}}"#;

/// What the script does with one command.
pub struct Peer {
    out: UnixStream,
    /// Set by the script to hang up after this command. The listening socket closes first, as
    /// when QEMU exits: a client that reconnects finds nobody.
    pub hang_up: bool,
    /// With `hang_up`: a QEMU on its way out — the listening socket still accepts one more
    /// connection, which is closed without a greeting, and only then closes.
    pub exit_slowly: bool,
}

impl Peer {
    /// Send one raw line (a `\r\n` is added).
    pub fn line(&mut self, s: &str) {
        let _ = self.out.write_all(s.as_bytes());
        let _ = self.out.write_all(b"\r\n");
    }
    /// Send raw bytes.
    pub fn raw(&mut self, b: &[u8]) {
        let _ = self.out.write_all(b);
    }
    /// `{"return": v, "id": id}`.
    pub fn ret(&mut self, id: &Value, v: Value) {
        self.line(&json!({"return": v, "id": id}).to_string());
    }
    /// `{"error": {...}, "id": id}`.
    pub fn err(&mut self, id: &Value, class: &str, desc: &str) {
        self.line(&json!({"error": {"class": class, "desc": desc}, "id": id}).to_string());
    }
    /// An event.
    pub fn event(&mut self, name: &str, data: Value) {
        self.line(
            &json!({"event": name, "data": data,
                    "timestamp": {"seconds": 1, "microseconds": 2}})
            .to_string(),
        );
    }
}

/// A fake monitor serving one client.
pub struct FakeMonitor {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    thread: Option<JoinHandle<Vec<Value>>>,
}

impl FakeMonitor {
    /// Serve `script(command, peer)` for every command after `qmp_capabilities` (which is
    /// answered with `{}`). `greeting: None` sends none.
    pub fn start<F>(greeting: Option<&str>, mut script: F) -> FakeMonitor
    where
        F: FnMut(&Value, &mut Peer) + Send + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let greeting = greeting.map(str::to_string);
        let thread = std::thread::spawn(move || {
            let mut seen = Vec::new();
            let Ok((stream, _)) = listener.accept() else {
                return seen;
            };
            let mut peer = Peer {
                out: stream.try_clone().unwrap(),
                hang_up: false,
                exit_slowly: false,
            };
            match greeting {
                Some(g) => peer.line(&g),
                None => {
                    // Hold the connection without a word until the client leaves.
                    let mut r = BufReader::new(stream);
                    let mut l = String::new();
                    while r.read_line(&mut l).map(|n| n > 0).unwrap_or(false) {
                        l.clear();
                    }
                    return seen;
                }
            }
            let mut r = BufReader::new(stream);
            let mut l = String::new();
            loop {
                l.clear();
                if r.read_line(&mut l).map(|n| n == 0).unwrap_or(true) {
                    return seen;
                }
                let Ok(cmd) = serde_json::from_str::<Value>(l.trim()) else {
                    continue;
                };
                let id = cmd["id"].clone();
                if cmd["execute"] == "qmp_capabilities" {
                    peer.ret(&id, json!({}));
                    continue;
                }
                seen.push(cmd.clone());
                script(&cmd, &mut peer);
                if peer.hang_up {
                    if peer.exit_slowly {
                        drop(peer);
                        drop(r);
                        if let Ok((late, _)) = listener.accept() {
                            drop(late);
                        }
                    }
                    drop(listener);
                    return seen;
                }
            }
        });
        FakeMonitor {
            path,
            _dir: dir,
            thread: Some(thread),
        }
    }

    /// The commands the script saw (after the client left).
    pub fn commands(mut self) -> Vec<Value> {
        self.thread
            .take()
            .map(|t| t.join().unwrap())
            .unwrap_or_default()
    }
}
