//! Push event subscriptions on a real `pcietun appliance` process: a subscription pointed at
//! a tiny HTTP receiver on loopback gets the assignment events in order with its Context; the
//! appliance is SIGKILLed and restarted on the same state file, and the subscription is still
//! there and still delivering.

mod mgmt_push_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mgmt_push_common::*;
use pcietun::transport::SecretKey;
use serde_json::{json, Value};

const PASSWORD: &str = "correct horse battery staple";
const WAIT: Duration = Duration::from_secs(20);

/// A child process killed (SIGKILL) and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    SecretKey::generate()
        .write_new(&dir.join("appliance.key"))
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dir.join("admin.pw"))
        .unwrap();
    f.write_all(format!("{PASSWORD}\n").as_bytes()).unwrap();
    let config = format!(
        "listen = [\"udp:127.0.0.1:0\"]\nkey_file = \"appliance.key\"\n\
         \n[[host]]\nid = \"web1\"\npublic_key = \"{}\"\n\
         \n[[host]]\nid = \"web2\"\npublic_key = \"{}\"\n\
         \n[[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n\
         \n[api]\nlisten = \"127.0.0.1:0\"\nadmin = \"admin\"\nadmin_password_file = \"admin.pw\"\n",
        SecretKey::generate().public_key(),
        SecretKey::generate().public_key()
    );
    let path = dir.join("appliance.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts the appliance; returns it with its API URL once it serves.
fn start_appliance(config: &Path) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["appliance", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
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
    let child = Proc(child);
    let (mut api, mut ready) = (None, false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while api.is_none() || !ready {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .expect("the appliance announces its API and readiness");
        if let Some(url) = line.strip_prefix("pcietun appliance: management API on ") {
            api = Some(url.trim().to_string());
        }
        ready |= line.starts_with("appliance ready:");
    }
    (child, api.unwrap())
}

struct Api {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Api {
    fn login(base: &str) -> Api {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut api = Api {
            agent,
            base: base.into(),
            token: String::new(),
        };
        let (status, headers, _) = api.call(
            "POST",
            "/redfish/v1/SessionService/Sessions",
            Some(json!({"UserName": "admin", "Password": PASSWORD})),
        );
        assert_eq!(status, 201);
        api.token = headers.unwrap();
        api
    }

    /// (status, X-Auth-Token or Location, body).
    fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (u16, Option<String>, Value) {
        let mut b = ureq::http::Request::builder()
            .method(method)
            .uri(format!("{}{uri}", self.base))
            .header("X-Auth-Token", &self.token);
        let data = match body {
            Some(v) => {
                b = b.header("Content-Type", "application/json");
                serde_json::to_vec(&v).unwrap()
            }
            None => Vec::new(),
        };
        let mut resp = self.agent.run(b.body(data).unwrap()).unwrap();
        let h = |n: &str| {
            resp.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let extra = h("X-Auth-Token").or_else(|| h("Location"));
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            extra,
            serde_json::from_str(&text).unwrap_or(Value::Null),
        )
    }
}

/// The next event's record messages, skipping none.
fn next_messages(rx: &Receiver) -> (String, Vec<String>, u64) {
    let ev = rx.event(WAIT);
    let id = ev["Id"].as_str().unwrap().parse().unwrap();
    (
        ev["Context"].as_str().unwrap_or("").to_string(),
        records(&ev).into_iter().map(|(_, m)| m).collect(),
        id,
    )
}

#[test]
fn a_subscription_on_a_real_appliance_delivers_in_order_and_survives_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let rx = Receiver::start(200);
    let (appliance, base) = start_appliance(&config);
    let api = Api::login(&base);
    let (status, loc, v) = api.call(
        "POST",
        "/redfish/v1/EventService/Subscriptions",
        Some(json!({"Destination": rx.url, "Protocol": "Redfish", "Context": "rack-7",
                    "OriginResources": [{"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-dma-a"}]})),
    );
    assert_eq!(status, 201, "{v}");
    let loc = loc.unwrap();
    let add = "/redfish/v1/Fabrics/PCIe/Zones/web2/Actions/Zone.AddEndpoint";
    let body = json!({"Endpoint": {"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-dma-a"}});
    // Its hosts never connect, so each change completes at once: assigned, unassigned,
    // assigned again — in that order, each with the Context, ids increasing.
    let conn = "/redfish/v1/Fabrics/PCIe/Connections/dma-a";
    let mut seen: Vec<(u64, String)> = Vec::new();
    for (method, uri, until) in [
        ("POST", add, "changed to assigned (web2)."),
        ("DELETE", conn, "changed to unassigned."),
        ("POST", add, "changed to assigned (web2)."),
    ] {
        let b = (method == "POST").then(|| body.clone());
        let (status, _, v) = api.call(method, uri, b);
        assert_eq!(status, 202, "{v}");
        loop {
            let (ctx, m, id) = next_messages(&rx);
            assert_eq!(ctx, "rack-7");
            assert_eq!(m.len(), 1);
            seen.push((id, m[0].clone()));
            if m[0].ends_with(until) {
                break;
            }
        }
    }
    assert!(
        seen.windows(2).all(|w| w[1].0 > w[0].0),
        "in order: {seen:?}"
    );
    let finals: Vec<&str> = seen
        .iter()
        .map(|(_, m)| m.rsplit("changed to ").next().unwrap())
        .filter(|s| s.starts_with("assigned") || s.starts_with("unassigned"))
        .collect();
    assert_eq!(
        finals,
        vec!["assigned (web2).", "unassigned.", "assigned (web2)."],
        "{seen:?}"
    );

    drop(appliance); // SIGKILL
    let (_appliance, base) = start_appliance(&config);
    let api = Api::login(&base);
    let (status, _, v) = api.call("GET", &loc, None);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["Context"], "rack-7");
    assert_eq!(v["Status"]["State"], "Enabled");
    // The restored assignment's events (if any) and then the unassignment's reach it.
    let (status, _, v) = api.call("DELETE", "/redfish/v1/Fabrics/PCIe/Connections/dma-a", None);
    assert_eq!(status, 202, "{v}");
    let deadline = Instant::now() + WAIT;
    let mut last = Vec::new();
    while !last
        .iter()
        .any(|m: &String| m.ends_with("changed to unassigned."))
    {
        assert!(Instant::now() < deadline, "no unassigned event: {last:?}");
        let (ctx, m, _) = next_messages(&rx);
        assert_eq!(ctx, "rack-7");
        last = m;
    }
}
