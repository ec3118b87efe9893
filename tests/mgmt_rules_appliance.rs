//! The lost-session rule through a real `pcietun appliance` (docs/api.md "Rules"): a `pcietun
//! host` agent process holding a function is SIGKILLed; the function stays with it until
//! `[api] reclaim_after_s` has passed since the kill, and is back in the pool (its Connection
//! gone, a Completed Task naming the reason) soon after.

mod pool_common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pcietun::transport::SecretKey;
use pool_common::*;
use serde_json::{json, Value};

/// The rule under test.
const RECLAIM_AFTER: Duration = Duration::from_secs(4);

/// A child process SIGKILLed and reaped when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `METHOD url` as the administrator (Basic); status and JSON body.
fn call(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    use base64::Engine;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("admin:{PASSWORD}"));
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let req = ureq::http::Request::builder()
        .method(method)
        .uri(url)
        .header("Authorization", format!("Basic {auth}"))
        .header("Content-Type", "application/json")
        .body(body.map(|b| b.to_string().into_bytes()).unwrap_or_default())
        .unwrap();
    let mut r = agent
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let text = r.body_mut().read_to_string().unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Poll `what` every 50 ms until it holds; the moment it first did.
fn until(within: Duration, what: &str, mut ok: impl FnMut() -> bool) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if ok() {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_killed_host_agent_loses_its_function_after_the_configured_time_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let web1 = SecretKey::generate();
    // Two hosts, so the single-host default does not assign the card at start.
    let web2 = SecretKey::generate();
    let app = appliance(
        dir.path(),
        &key,
        &[("web1", &web1), ("web2", &web2)],
        "\n[[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n",
        &format!("reclaim_after_s = {}\n", RECLAIM_AFTER.as_secs()),
    );
    let (_, fabric) = call("GET", &format!("{}/redfish/v1/Fabrics/PCIe", app.api), None);
    assert_eq!(
        fabric["Oem"]["Pcietun"]["Rules"]["ReclaimAfterSeconds"],
        RECLAIM_AFTER.as_secs(),
        "{fabric}"
    );

    // The host agent, a process of its own.
    let key_file = dir.path().join("web1.key");
    web1.write_new(&key_file).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["host", "--connect", &format!("udp:{}", app.udp)])
        .args(["--host-id", "web1", "--key"])
        .arg(&key_file)
        .args(["--peer-key", &key.public_key().to_string()])
        .args(["--connect-timeout", "20"])
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
                eprintln!("web1: {line}");
                let _ = tx.send(line);
            }
        });
    }
    let host = Proc(child);
    let wait_for = |word: &str| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("web1 never logged {word:?}"));
            if line.contains(word) {
                return;
            }
        }
    };
    wait_for("host ready");

    let conn = format!("{}/redfish/v1/Fabrics/PCIe/Connections/dma-a", app.api);
    let (status, task) = call(
        "POST",
        &format!(
            "{}/redfish/v1/Fabrics/PCIe/Zones/web1/Actions/Zone.AddEndpoint",
            app.api
        ),
        Some(&json!({"Endpoint": {"@odata.id": "/redfish/v1/Fabrics/PCIe/Endpoints/fn-dma-a"}})),
    );
    assert_eq!(status, 202, "{task}");
    // The other host never connects: it is lost from the start, but owns nothing.
    let task_url = format!("{}{}", app.api, task["@odata.id"].as_str().unwrap());
    until(Duration::from_secs(30), "the assignment", || {
        call("GET", &task_url, None).1["TaskState"] == "Completed"
    });
    wait_for("FunctionAdded(");
    assert_eq!(
        call("GET", &conn, None).1["Oem"]["Pcietun"]["State"],
        "attached"
    );

    // SIGKILL the agent: no goodbye, the appliance finds out by the session's silence.
    let killed = Instant::now();
    drop(host);
    let system = format!("{}/redfish/v1/Systems/web1", app.api);
    until(Duration::from_secs(10), "web1's session to be lost", || {
        call("GET", &system, None)
            .1
            .to_string()
            .contains("\"disconnected\"")
    });
    let (_, fabric) = call("GET", &format!("{}/redfish/v1/Fabrics/PCIe", app.api), None);
    let pending = &fabric["Oem"]["Pcietun"]["PendingReclaims"];
    assert_eq!(pending[0]["Function"], "dma-a", "{fabric}");
    assert!(pending[0]["ReclaimAt"].is_string(), "{fabric}");

    let gone = until(
        RECLAIM_AFTER + Duration::from_secs(10),
        "the reclaim",
        || call("GET", &conn, None).0 == 404,
    );
    assert!(
        gone.duration_since(killed) >= RECLAIM_AFTER,
        "the function went back {:?} after the kill, before the configured {RECLAIM_AFTER:?}",
        gone.duration_since(killed)
    );
    let (_, tasks) = call(
        "GET",
        &format!("{}/redfish/v1/TaskService/Tasks", app.api),
        None,
    );
    let names: Vec<Value> = tasks["Members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            call(
                "GET",
                &format!("{}{}", app.api, m["@odata.id"].as_str().unwrap()),
                None,
            )
            .1
        })
        .filter(|t| {
            t["Name"]
                .as_str()
                .unwrap_or("")
                .starts_with("Reclaim dma-a from web1")
        })
        .collect();
    assert_eq!(names.len(), 1, "{tasks}");
    until(
        Duration::from_secs(10),
        "the reclaim task to complete",
        || {
            let t = call(
                "GET",
                &format!("{}{}", app.api, names[0]["@odata.id"].as_str().unwrap()),
                None,
            )
            .1;
            t["TaskState"] == "Completed"
        },
    );
    let (_, fabric) = call("GET", &format!("{}/redfish/v1/Fabrics/PCIe", app.api), None);
    assert_eq!(
        fabric["Oem"]["Pcietun"]["PendingReclaims"],
        json!([]),
        "{fabric}"
    );
}
