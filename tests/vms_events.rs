//! VM events end to end (issue 15 "Events" and "a Connection can name the target VM"): a real
//! `pcietun appliance --api` process, a `pcietun host` agent process with two VMs configured —
//! `other` (takes every function by its selector, and whose monitor nobody serves) and `target`
//! (a scripted fake QEMU monitor, whose selector takes nothing) — and `pcietun ctl`.
//! `ctl assign dma-a web1 --vm target` makes the agent `device_add` the function into `target`
//! (not `other`): the Connection then shows `Oem.Pcietun.Vm.State = Attached` and an event on
//! the Connection arrives on `ctl events`; `ctl unassign` ejects it (`Detached` event). An
//! assignment naming a VM the agent does not have shows `Failed` on its Connection, at once.
//! After the appliance is SIGKILLed and restarted on the same address, the agent's new session
//! reports the VM that still holds the function, so its Connection shows it again (and nothing
//! is plugged anew).

mod pool_common;
mod vms_common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::transport::SecretKey;
use pool_common::{get_as_admin, PASSWORD};
use serde_json::{json, Value};
use vms_common::{FakeMonitor, Peer, GREETING};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One hot-plug root port `rp1`; what is plugged into it; every `device_add` seen.
#[derive(Default)]
struct Qemu {
    plugged: Option<String>,
    added: Vec<Value>,
}

/// A QEMU with one empty hot-plug port whose guest ejects at once.
fn fake_qemu(m: Arc<Mutex<Qemu>>) -> FakeMonitor {
    FakeMonitor::start(Some(GREETING), move |cmd, p: &mut Peer| {
        let id = cmd["id"].clone();
        let a = &cmd["arguments"];
        let mut m = m.lock().unwrap();
        match cmd["execute"].as_str().unwrap_or("") {
            "qom-list" => {
                let path = a["path"].as_str().unwrap_or("");
                if path == "/machine/peripheral" {
                    let mut l = vec![
                        json!({"name": "type", "type": "string"}),
                        json!({"name": "rp1", "type": "child<pcie-root-port>"}),
                    ];
                    if let Some(d) = &m.plugged {
                        l.push(json!({"name": d, "type": "child<vfio-user-pci>"}));
                    }
                    return p.ret(&id, Value::Array(l));
                }
                let mut l = vec![json!({"name": "type", "type": "string"})];
                if m.plugged.is_some() {
                    l.push(json!({"name": "child[0]", "type": "link<vfio-user-pci>"}));
                }
                p.ret(&id, Value::Array(l))
            }
            "qom-get" => match a["property"].as_str() {
                Some("hotplug") => p.ret(&id, json!(true)),
                Some("realized") if m.plugged.is_some() => p.ret(&id, json!(true)),
                _ => p.err(&id, "GenericError", "Property not found"),
            },
            "device_add" => {
                m.plugged = a["id"].as_str().map(str::to_string);
                m.added.push(a.clone());
                p.ret(&id, json!({}))
            }
            "query-pci" => {
                let inner: Vec<Value> = m
                    .plugged
                    .iter()
                    .map(|d| json!({"qdev_id": d, "slot": 0}))
                    .collect();
                p.ret(
                    &id,
                    json!([{"bus": 0, "devices": [
                        {"qdev_id": "rp1", "pci_bridge": {"bus": {}, "devices": inner}}
                    ]}]),
                )
            }
            "device_del" => {
                let dev = a["id"].as_str().unwrap_or("").to_string();
                if m.plugged.as_deref() != Some(dev.as_str()) {
                    return p.err(&id, "DeviceNotFound", "Device not found");
                }
                m.plugged = None;
                p.ret(&id, json!({}));
                p.event(
                    "DEVICE_DELETED",
                    json!({"device": dev, "path": format!("/machine/peripheral/{dev}")}),
                );
            }
            _ => p.err(&id, "CommandNotFound", "not scripted"),
        }
    })
}

/// A `pcietun host` agent `web1` (key `k1`) toward the appliance at `udp` (key `app_key`),
/// with the VMs `vms` (`NAME=QMP[,function=SEL]`), its vfio-user sockets in `dir/vfu`; its
/// stdout lines, once it said it is ready.
fn start_host(
    dir: &Path,
    udp: &str,
    app_key: &SecretKey,
    k1: &SecretKey,
    vms: &[String],
) -> (Proc, mpsc::Receiver<String>) {
    let vfu = dir.join("vfu");
    std::fs::create_dir(&vfu).unwrap();
    let key_file = dir.join("web1.key");
    k1.write_new(&key_file).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pcietun"));
    cmd.args(["host", "--connect", &format!("udp:{udp}")])
        .args(["--host-id", "web1"])
        .arg("--key")
        .arg(&key_file)
        .args(["--peer-key", &app_key.public_key().to_string()])
        .arg("--vfio-user")
        .arg(&vfu);
    for v in vms {
        cmd.arg("--vm").arg(v);
    }
    let mut host = cmd
        .args(["--no-control", "--vm-grace-ms", "5000"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = lines(&mut host, "host");
    let host = Proc(host);
    wait_for(&out, Duration::from_secs(60), |l| {
        l.starts_with("host ready")
    });
    (host, out)
}

/// `ctl login` as the administrator to the API at `api`, saved in `config`.
fn login(config: &Path, api: &str) {
    let r = ctl(
        config,
        &["--api", api, "login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0);
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
    let r = Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    };
    eprintln!("ctl {args:?}: {} {}{}", r.code, r.stdout, r.stderr);
    r
}

/// A child's stdout lines on a channel (stderr echoed to the test's).
fn lines(child: &mut Child, name: &'static str) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("{name}: {l}");
            let _ = tx.send(l);
        }
    });
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("{name} (stderr): {l}");
            }
        });
    }
    rx
}

/// The next line of `rx` for which `f` holds, within `within`.
fn wait_for(rx: &mpsc::Receiver<String>, within: Duration, f: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if f(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no such line within {within:?}: {e}"),
        }
    }
}

/// `Oem.Pcietun.Vm` of the Connection of `function`, once `State` is `want` (within 20 s).
fn wait_vm_state(api: &str, function: &str, want: &str) -> Value {
    wait_vm_state_within(api, function, want, Duration::from_secs(20))
}

/// [`wait_vm_state`] within `within`.
fn wait_vm_state_within(api: &str, function: &str, want: &str, within: Duration) -> Value {
    let uri = format!("{api}/redfish/v1/Fabrics/PCIe/Connections/{function}");
    let deadline = Instant::now() + within;
    loop {
        let c: Value = serde_json::from_str(&get_as_admin(&uri)).unwrap();
        let vm = c["Oem"]["Pcietun"]["Vm"].clone();
        if vm["State"] == want {
            return vm;
        }
        assert!(
            Instant::now() < deadline,
            "Connection {function}: Vm.State never became {want}: {c}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The appliance, its key, web1's key and a fake QEMU (its state, its monitor).
struct Rig {
    app: pool_common::Appliance,
    key: SecretKey,
    k1: SecretKey,
    qemu: Arc<Mutex<Qemu>>,
    mon: FakeMonitor,
}

/// An appliance in `dir` with one DMA engine `dma-a` and two hosts (so it assigns nothing by
/// itself), and a fake QEMU with one empty hot-plug port.
fn rig(dir: &Path) -> Rig {
    let (key, k1, k2) = (
        SecretKey::generate(),
        SecretKey::generate(),
        SecretKey::generate(),
    );
    let app = pool_common::appliance(
        dir,
        &key,
        &[("web1", &k1), ("web2", &k2)],
        "\n[[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n",
        "",
    );
    let qemu = Arc::new(Mutex::new(Qemu::default()));
    let mon = fake_qemu(qemu.clone());
    Rig {
        app,
        key,
        k1,
        qemu,
        mon,
    }
}

#[test]
fn a_connection_names_its_vm_and_shows_its_events() {
    let dir = tempfile::tempdir().unwrap();
    let Rig {
        app,
        key,
        k1,
        qemu,
        mon,
    } = rig(dir.path());
    let vfu = dir.path().join("vfu");
    let (_host, host_out) = start_host(
        dir.path(),
        &app.udp,
        &key,
        &k1,
        &[
            // `other` takes every function by its selector; its monitor does not exist.
            format!("other={}", dir.path().join("none.qmp").display()),
            // `target` takes none by its selector.
            format!("target={},function=1f:00.7", mon.path.display()),
        ],
    );

    let config = dir.path().join("ctl.toml");
    login(&config, &app.api);
    let mut events = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["ctl", "events", "--json"])
        .env("PCIETUN_CTL_CONFIG", &config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ev = lines(&mut events, "events");
    let _events = Proc(events);
    std::thread::sleep(Duration::from_millis(300));
    let conn_event = |state: &'static str| {
        move |l: &str| {
            let v: Value = serde_json::from_str(l).unwrap_or_default();
            let e = &v["Events"][0];
            e["OriginOfCondition"]["@odata.id"] == "/redfish/v1/Fabrics/PCIe/Connections/dma-a"
                && e["Message"]
                    .as_str()
                    .is_some_and(|m| m.contains(&format!("VM target on web1 {state}")))
        }
    };

    // Assign naming `target`: the agent plugs it there, not into `other`.
    let r = ctl(
        &config,
        &["assign", "dma-a", "web1", "--vm", "target"],
        None,
    );
    assert_eq!(r.code, 0);
    let vm = wait_vm_state(&app.api, "dma-a", "Attached");
    assert_eq!(vm["Name"], "target", "{vm}");
    assert_eq!(vm["Message"], "the function's device is in the VM");
    let added = qemu.lock().unwrap().added.clone();
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0]["driver"], "vfio-user-pci");
    assert_eq!(added[0]["bus"], "rp1");
    assert!(
        added[0]["socket"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(vfu.to_str().unwrap())),
        "{added:?}"
    );
    wait_for(&ev, Duration::from_secs(10), conn_event("Attached"));
    wait_for(&host_out, Duration::from_secs(10), |l| {
        l.starts_with("vm event:") && l.contains("\"attached\"") && l.contains("\"target\"")
    });

    // Unassign: the guest ejects, the appliance hears it before the function leaves.
    let r = ctl(&config, &["unassign", "dma-a"], None);
    assert_eq!(r.code, 0);
    wait_for(&ev, Duration::from_secs(10), conn_event("Detached"));
    assert_eq!(qemu.lock().unwrap().plugged, None);
    let rows: Value =
        serde_json::from_str(&ctl(&config, &["devices", "--json"], None).stdout).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "dma-a")
        .cloned()
        .unwrap();
    assert_eq!(row["state"], "unassigned", "{row}");

    // A VM the agent does not have: the Connection says so, no hang, nothing plugged.
    let r = ctl(
        &config,
        &["assign", "dma-a", "web1", "--vm", "nosuch"],
        None,
    );
    assert_eq!(r.code, 0);
    let vm = wait_vm_state(&app.api, "dma-a", "Failed");
    assert_eq!(vm["Name"], "nosuch", "{vm}");
    assert_eq!(qemu.lock().unwrap().added.len(), 1);
    let r = ctl(&config, &["unassign", "dma-a"], None);
    assert_eq!(r.code, 0);

    // A name no host could carry is refused by the API with one line, and nothing starts.
    let r = ctl(&config, &["assign", "dma-a", "web1", "--vm", "a/b"], None);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    drop(app);
}

/// The appliance of `dir` (written by `pool_common::appliance`) again, on its UDP address
/// `udp` (the first one had picked it: written into the configuration now), with the state it
/// kept; killed (SIGKILL) when dropped. Its API's URL.
fn restart_appliance(dir: &Path, udp: &str) -> (Proc, String) {
    let path = dir.join("appliance.toml");
    let config = std::fs::read_to_string(&path).unwrap();
    let fixed = config.replacen("udp:127.0.0.1:0", &format!("udp:{udp}"), 1);
    assert_ne!(fixed, config, "the listener is in the configuration");
    std::fs::write(&path, fixed).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["appliance", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    for out in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                eprintln!("appliance (restarted): {l}");
                let _ = tx.send(l);
            }
        });
    }
    let child = Proc(child);
    // Both lines, in whichever order they come.
    const API: &str = "pcietun appliance: management API on ";
    let (mut api, mut ready) = (None, false);
    while api.is_none() || !ready {
        let line = wait_for(&rx, Duration::from_secs(30), |l| {
            l.starts_with(API) || l.starts_with("appliance ready:")
        });
        match line.strip_prefix(API) {
            Some(url) => api = Some(url.trim().to_string()),
            None => ready = true,
        }
    }
    (child, api.unwrap())
}

#[test]
fn after_an_appliance_restart_the_connection_shows_its_vm_again() {
    let dir = tempfile::tempdir().unwrap();
    let Rig {
        app,
        key,
        k1,
        qemu,
        mon,
    } = rig(dir.path());
    // `target` takes nothing by its selector: only the assignment's name puts the function
    // there.
    let (_host, _host_out) = start_host(
        dir.path(),
        &app.udp,
        &key,
        &k1,
        &[format!("target={},function=1f:00.7", mon.path.display())],
    );
    let config = dir.path().join("ctl.toml");
    login(&config, &app.api);
    let r = ctl(
        &config,
        &["assign", "dma-a", "web1", "--vm", "target"],
        None,
    );
    assert_eq!(r.code, 0);
    let vm = wait_vm_state(&app.api, "dma-a", "Attached");
    assert_eq!(vm["Name"], "target", "{vm}");

    // SIGKILL the appliance; it comes back on the same address with the assignment it kept.
    let udp = app.udp.clone();
    drop(app);
    let (_app, api) = restart_appliance(dir.path(), &udp);
    // The agent's new session: the VM still holds the function (nothing was unplugged), and
    // the agent says so again — the Connection names the VM and shows it attached.
    // (Within a minute: the agent first has to notice its session died.)
    let vm = wait_vm_state_within(&api, "dma-a", "Attached", Duration::from_secs(60));
    assert_eq!(vm["Name"], "target", "{vm}");
    {
        let q = qemu.lock().unwrap();
        assert_eq!(q.added.len(), 1, "plugged once, not again: {:?}", q.added);
        assert!(q.plugged.is_some(), "still in the VM");
    }

    // And the flow goes on against the restarted appliance: unassign ejects it.
    login(&config, &api);
    let r = ctl(&config, &["unassign", "dma-a"], None);
    assert_eq!(r.code, 0);
    assert_eq!(qemu.lock().unwrap().plugged, None);
}
