//! Shared harness of the tests that run a real `pcietun appliance` process with its management
//! API and connect in-process host agents to it over UDP on loopback.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;
use pcietun::transport::SecretKey;

/// The administrator's password of every appliance these tests start.
pub const PASSWORD: &str = "correct horse battery staple";

/// A running appliance process (killed when dropped) and where it serves.
pub struct Appliance {
    child: Child,
    /// Its UDP listener, `IP:PORT`.
    pub udp: String,
    /// Its management API's base URL.
    pub api: String,
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Write `text` to a new file readable only by its owner (a key or password file).
pub fn write_private(path: &Path, text: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

/// Start `pcietun appliance` in `dir` with key `key`, one `[[host]]` per `(id, key)` of
/// `hosts`, then `rest` (devices, assignments) and an `[api]` on 127.0.0.1:0 with the
/// administrator `admin` / [`PASSWORD`] and the keys `api_extra`. Waits for its UDP listener
/// and API to be announced.
pub fn appliance(
    dir: &Path,
    key: &SecretKey,
    hosts: &[(&str, &SecretKey)],
    rest: &str,
    api_extra: &str,
) -> Appliance {
    appliance_on(dir, "udp:127.0.0.1:0", key, hosts, rest, api_extra)
}

/// [`appliance`] listening on `listen` (e.g. a restart on the UDP port it had before).
pub fn appliance_on(
    dir: &Path,
    listen: &str,
    key: &SecretKey,
    hosts: &[(&str, &SecretKey)],
    rest: &str,
    api_extra: &str,
) -> Appliance {
    key.write_new(&dir.join("appliance.key")).unwrap();
    write_private(&dir.join("admin.pw"), &format!("{PASSWORD}\n"));
    let mut config = format!("listen = [\"{listen}\"]\nkey_file = \"appliance.key\"\n");
    for (id, k) in hosts {
        config += &format!(
            "\n[[host]]\nid = \"{id}\"\npublic_key = \"{}\"\n",
            k.public_key()
        );
    }
    config += rest;
    config += "\n[api]\nlisten = \"127.0.0.1:0\"\nadmin = \"admin\"\nadmin_password_file = \"admin.pw\"\n";
    config += api_extra;
    config += "\n";
    std::fs::write(dir.join("appliance.toml"), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["appliance", "--config"])
        .arg(dir.join("appliance.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("appliance: {line}");
                let _ = tx.send(line);
            }
        });
    }
    let mut a = Appliance {
        child,
        udp: String::new(),
        api: String::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.udp.is_empty() || a.api.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the appliance announced its UDP listener and its API");
        if let Some(rest) = line.strip_prefix("appliance ready: listen udp:") {
            a.udp = rest
                .split([';', ' '])
                .next()
                .unwrap_or_default()
                .to_string();
        }
        if let Some(url) = line.strip_prefix("pcietun appliance: management API on ") {
            a.api = url.trim().to_string();
        }
    }
    a
}

/// A host agent `id` with `key`, connected to the appliance at `addr`.
pub fn agent(addr: &str, id: &str, key: SecretKey, appliance: &SecretKey) -> Agent {
    Agent::connect(
        AgentConfig {
            target: Target::Udp(addr.parse().unwrap()),
            host_id: id.into(),
            key: Some(key),
            appliance_key: Some(appliance.public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap()
}

/// GET `url` with the administrator's Basic credentials; the body.
pub fn get_as_admin(url: &str) -> String {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(url)
        .header("Authorization", format!("Basic {auth}"))
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(r.status().as_u16(), 200, "GET {url}");
    r.body_mut().read_to_string().unwrap()
}
