//! Logging of both processes (`src/cli/log.rs`): a real `pcietun appliance` and a
//! `pcietun host lspci` talking to it over UDP on loopback, both with `--log-format json` and
//! `RUST_LOG=trace`. Every line either writes on stderr is one JSON object with a timestamp,
//! a level, a target and a message; the appliance records the host's session; `RUST_LOG`
//! decides what is logged; and no secret — either private key, the pre-shared key — appears
//! anywhere in anything either process prints, in any spelling (base64, hex, decimal bytes,
//! raw).

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use pcietun::transport::{Psk, SecretKey};

/// The secrets of this test: distinctive non-text bytes, so any leak is unmistakable.
const HOST_KEY: [u8; 32] = [0xc1; 32];
const APPLIANCE_KEY: [u8; 32] = [0xd2; 32];
const PSK: [u8; 32] = [0xe3; 32];

/// Key files for both processes: `host.key`, `appliance.key`, `test-host.psk`, and the two
/// public keys (base64).
struct Keys {
    dir: tempfile::TempDir,
    host_public: String,
    appliance_public: String,
}

impl Keys {
    fn new() -> Keys {
        let dir = tempfile::tempdir().unwrap();
        let (h, a) = (
            SecretKey::from_bytes(HOST_KEY),
            SecretKey::from_bytes(APPLIANCE_KEY),
        );
        h.write_new(&dir.path().join("host.key")).unwrap();
        a.write_new(&dir.path().join("appliance.key")).unwrap();
        Psk::from_bytes(PSK)
            .write_new(&dir.path().join("test-host.psk"))
            .unwrap();
        Keys {
            dir,
            host_public: h.public_key().to_string(),
            appliance_public: a.public_key().to_string(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// The ways a secret could be spelt in a log line: base64, hex either case, whole or its first
/// half; the `Debug` of its bytes (`[193, 193, …`); and the raw bytes.
fn assert_no_key(what: &str, output: &[u8]) {
    let text = String::from_utf8_lossy(output);
    for k in [HOST_KEY, APPLIANCE_KEY, PSK] {
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(k);
        let half = &hex[..32];
        for needle in [
            b64.clone(),
            b64[..22].to_string(),
            hex.clone(),
            hex.to_uppercase(),
            half.to_string(),
            half.to_uppercase(),
            k[..8]
                .iter()
                .map(|b| b.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            k[..8]
                .iter()
                .map(|b| format!("{b:#04x}"))
                .collect::<Vec<_>>()
                .join(", "),
        ] {
            assert!(
                !text.contains(&needle),
                "{what} printed key material ({needle}):\n{text}"
            );
        }
        assert!(
            !output.windows(8).any(|w| w == &k[..8]),
            "{what} printed the raw key bytes"
        );
    }
}

/// Every non-empty line is a JSON object with the fields a log collector needs, except the
/// commands' own notices to the operator (`pcietun appliance: …` summaries and warnings,
/// printed before logging starts or after it ends). Returns the parsed lines.
fn json_lines(what: &str, stderr: &[u8]) -> Vec<serde_json::Value> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("pcietun "))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{what}: not a JSON line ({e}): {l}"));
            for field in ["timestamp", "level", "target"] {
                assert!(v.get(field).is_some(), "{what}: no {field} in {l}");
            }
            assert!(
                v["fields"]["message"].is_string(),
                "{what}: no fields.message in {l}"
            );
            v
        })
        .collect()
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn json_logs_from_both_processes_and_no_key_bytes() {
    let bin = env!("CARGO_BIN_EXE_pcietun");
    let port = free_udp_port();
    let keys = Keys::new();
    let app_err_path = keys.dir.path().join("appliance.stderr");
    let mut app = Command::new(bin)
        .args(["appliance", "--device", "dma", "--log-format", "json"])
        .args(["--listen", &format!("udp:127.0.0.1:{port}")])
        .args(["--key", &keys.path("appliance.key")])
        .args([
            "--host",
            &format!(
                "test-host={},psk={}",
                keys.host_public,
                keys.path("test-host.psk")
            ),
        ])
        .env("RUST_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&app_err_path).unwrap())
        .spawn()
        .unwrap();
    let mut app_out = BufReader::new(app.stdout.take().unwrap());
    let mut ready = String::new();
    app_out.read_line(&mut ready).unwrap();
    assert!(ready.starts_with("appliance ready:"), "{ready}");

    let host = |rust_log: &str| {
        Command::new(bin)
            .args(["host", "lspci", "--log-format", "json"])
            .args(["--connect", &format!("udp:127.0.0.1:{port}")])
            .args(["--host-id", "test-host", "--key", &keys.path("host.key")])
            .args(["--peer-key", &keys.appliance_public])
            .args(["--psk-file", &keys.path("test-host.psk")])
            .env("RUST_LOG", rust_log)
            .output()
            .unwrap()
    };
    let out = host("trace");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("01:00.0"));
    let lines = json_lines("host", &out.stderr);
    assert!(!lines.is_empty(), "the host logged nothing at trace");
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["target"].as_str().unwrap().starts_with("pcietun")),
        "no info line of ours from the host"
    );
    assert_no_key("host stderr", &out.stderr);
    assert_no_key("host stdout", &out.stdout);

    // RUST_LOG decides: with `error`, a successful run says nothing.
    let quiet = host("error");
    assert!(quiet.status.success());
    assert!(
        json_lines("host", &quiet.stderr).is_empty(),
        "{}",
        String::from_utf8_lossy(&quiet.stderr)
    );

    pcietun::sys::process::terminate(&app).unwrap();
    let _ = app.wait();
    let mut rest = Vec::new();
    app_out.read_to_end(&mut rest).unwrap();
    // Let the file settle (the child is gone; its writes are done).
    std::thread::sleep(Duration::from_millis(50));
    let app_err = std::fs::read(&app_err_path).unwrap();
    let lines = json_lines("appliance", &app_err);
    assert!(
        lines.iter().any(|l| {
            let m = l["fields"]["message"].as_str().unwrap_or("");
            m.contains("test-host") || l["fields"]["host"] == "test-host"
        }),
        "the appliance did not record the host's session:\n{}",
        String::from_utf8_lossy(&app_err)
    );
    assert_no_key("appliance stderr", &app_err);
    assert_no_key("appliance stdout", ready.as_bytes());
    assert_no_key("appliance stdout", &rest);
}

#[test]
fn text_is_the_default_and_a_bad_rust_log_is_reported() {
    let keys = Keys::new();
    let out = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["host", "lspci", "--connect", "udp:127.0.0.1:9"])
        .args(["--connect-timeout", "1", "--host-id", "test-host"])
        .args(["--key", &keys.path("host.key")])
        .args(["--peer-key", &keys.appliance_public])
        .args(["--psk-file", &keys.path("test-host.psk")])
        .env("RUST_LOG", "pcietun=[bad")
        .output()
        .unwrap();
    assert!(!out.status.success(), "nothing answers on port 9");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RUST_LOG"), "{err}");
    assert!(
        !err.lines().any(|l| l.trim_start().starts_with('{')),
        "text, not JSON: {err}"
    );
    assert_no_key("host stderr", &out.stderr);
    let mut sink = Vec::new();
    out.stdout.as_slice().read_to_end(&mut sink).unwrap();
    assert_no_key("host stdout", &sink);
}
