//! The pool driven the way an operator drives it (issues 11 and 14): a real `pcietun appliance`
//! process serving its management API, two host agents with their own keys connected to it over
//! UDP, and `pcietun ctl` as the operator's client. A card in the pool is visible to no host
//! until `ctl assign` gives it to one; that host's agent sees it appear (slot event, no rescan)
//! and drives it; the other host never sees it; a second assign is refused with exit code 1 and
//! a one-line reason; `ctl unassign` takes it away in order; `ctl assign` to the other host
//! moves it there, where it works.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;
use pcietun::pci::class::dma_engine::{reg, ID_VALUE};
use pcietun::transport::SecretKey;

const PASSWORD: &str = "correct horse battery staple";

struct Appliance(Child);

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_private(path: &Path, text: &str) {
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

/// Starts the appliance; returns it with its UDP address and its API's URL.
fn appliance(
    dir: &Path,
    key: &SecretKey,
    web1: &SecretKey,
    web2: &SecretKey,
) -> (Appliance, String, String) {
    key.write_new(&dir.join("appliance.key")).unwrap();
    write_private(&dir.join("admin.pw"), &format!("{PASSWORD}\n"));
    let config = format!(
        r#"
listen = ["udp:127.0.0.1:0"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{}"

[[host]]
id = "web2"
public_key = "{}"

[[device]]
kind = "dma"
name = "dma-a"
buffer = "64K"

[api]
listen = "127.0.0.1:0"
admin = "admin"
admin_password_file = "admin.pw"
"#,
        web1.public_key(),
        web2.public_key()
    );
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
    let child = Appliance(child);
    let (mut udp, mut api) = (None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while udp.is_none() || api.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the appliance announced its UDP listener and its API");
        if let Some(rest) = line.strip_prefix("appliance ready: listen udp:") {
            udp = rest.split([';', ' ']).next().map(str::to_string);
        }
        if let Some(url) = line.strip_prefix("pcietun appliance: management API on ") {
            api = Some(url.trim().to_string());
        }
    }
    (child, udp.unwrap(), api.unwrap())
}

fn agent(addr: &str, id: &str, key: SecretKey, appliance: &SecretKey) -> Agent {
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

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(config: &Path, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("ctl")
        .args(args)
        .env("PCIETUN_CTL_CONFIG", config)
        .env_remove("PCIETUN_TOKEN")
        .env_remove("PCIETUN_API")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(s) = stdin {
        child.stdin.take().unwrap().write_all(s.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// The DMA engine as `a` sees it, waiting up to `within` for it to appear (or, with
/// `present == false`, to be gone).
fn wait_dma(a: &Agent, present: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        let found = a.host().functions().into_iter().any(|f| {
            f.class >> 8 == 0x0880 && a.host().open(f.bdf).is_some_and(|r| !r.is_removed())
        });
        if found == present {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read_id(a: &Agent) -> u32 {
    let info = a
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class >> 8 == 0x0880 && a.host().open(f.bdf).is_some_and(|r| !r.is_removed()))
        .expect("the DMA engine");
    a.host()
        .open(info.bdf)
        .unwrap()
        .bar_read32(0, reg::ID)
        .unwrap()
}

#[test]
fn ctl_assigns_and_moves_a_card_between_two_running_hosts() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
    let key = SecretKey::generate();
    let (app, udp, api) = appliance(dir.path(), &key, &k1, &k2);
    let web1 = agent(&udp, "web1", k1, &key);
    let web2 = agent(&udp, "web2", k2, &key);
    // Nothing is assigned: neither host sees the card.
    assert!(wait_dma(&web1, false, Duration::ZERO));
    assert!(wait_dma(&web2, false, Duration::ZERO));

    let config = dir.path().join("ctl.toml");
    let r = ctl(
        &config,
        &["--api", &api, "login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "login: {}{}", r.stdout, r.stderr);
    assert!(
        !std::fs::read_to_string(&config).unwrap().contains(PASSWORD),
        "the password is not stored"
    );

    let r = ctl(&config, &["devices", "--json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let dma = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "dma-a")
        .unwrap_or_else(|| panic!("dma-a in {rows}"));
    assert_eq!(dma["state"], "unassigned", "{dma}");
    let r = ctl(&config, &["hosts", "--json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let hosts: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    for h in ["web1", "web2"] {
        let row = hosts
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["id"] == h)
            .unwrap_or_else(|| panic!("{h} in {hosts}"));
        assert_eq!(row["session"], "connected", "{row}");
    }

    // Assign: web1's agent sees the card appear and drives it; web2 does not see it.
    let r = ctl(&config, &["assign", "dma-a", "web1"], None);
    assert_eq!(r.code, 0, "assign: {}{}", r.stdout, r.stderr);
    assert!(
        wait_dma(&web1, true, Duration::from_secs(10)),
        "web1 got the card"
    );
    assert_eq!(read_id(&web1), ID_VALUE);
    assert!(wait_dma(&web2, false, Duration::ZERO), "web2 sees nothing");

    // A second owner is refused with a reason on one line.
    let r = ctl(&config, &["assign", "dma-a", "web2"], None);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    assert!(r.stderr.contains("web1"), "names the owner: {}", r.stderr);
    let r = ctl(&config, &["assign", "no-such-card", "web2"], None);
    assert_eq!(r.code, 1, "{}", r.stderr);

    // Move it: unassign (orderly; web1 lets go), then assign to web2.
    let r = ctl(&config, &["unassign", "dma-a"], None);
    assert_eq!(r.code, 0, "unassign: {}{}", r.stdout, r.stderr);
    assert!(
        wait_dma(&web1, false, Duration::from_secs(10)),
        "web1 let go of the card"
    );
    let r = ctl(&config, &["assign", "dma-a", "web2"], None);
    assert_eq!(r.code, 0, "assign to web2: {}{}", r.stdout, r.stderr);
    assert!(
        wait_dma(&web2, true, Duration::from_secs(10)),
        "web2 got the card"
    );
    assert_eq!(read_id(&web2), ID_VALUE);
    assert!(wait_dma(&web1, false, Duration::ZERO));

    let r = ctl(&config, &["devices", "--json"], None);
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let dma = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "dma-a")
        .unwrap();
    assert_eq!(dma["host"], "web2", "{dma}");
    drop(web1);
    drop(web2);
    drop(app);
}
