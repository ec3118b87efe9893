//! `pcietun ctl` against an in-process API server: through the library client (every command,
//! every refusal and its exit code), and through the real `pcietun` binary for exit codes,
//! `--json` and the settings file.

mod mgmt_common;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use mgmt_common::*;
use pcietun::mgmt::client::{Client, ClientError, Settings};
use pcietun::mgmt::fake::Completion;

fn client(api: &Api, token: Option<String>) -> Client {
    Client::new(&Settings {
        api: api.url.clone(),
        token,
        ca: None,
        timeout: Duration::from_secs(10),
    })
    .unwrap()
}

fn refused(e: ClientError, want: &str) {
    assert_eq!(e.exit_code(), 1, "{e}");
    let msg = e.to_string();
    assert!(msg.contains(want), "{msg:?} should say {want:?}");
    assert!(!msg.contains('\n'), "one line: {msg:?}");
}

#[test]
fn library_client_drives_the_pool() {
    let api = start();
    let anon = client(&api, None);
    refused(
        anon.login(ADMIN, "bad-password").unwrap_err(),
        "wrong user name or password",
    );
    refused(anon.devices().unwrap_err(), "authentication required");
    let login = anon.login(ADMIN, ADMIN_PW).unwrap();
    let c = client(&api, Some(login.token.clone()));

    let rows = c.devices().unwrap();
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["nvme0", "dma0", "dma0.vf1", "dma0.vf2"]);
    let nvme = &rows[0];
    assert_eq!(
        (nvme.vendor_id.as_str(), nvme.class_code.as_str()),
        ("0x1b36", "0x010802")
    );
    assert_eq!(
        (
            nvme.kind.as_str(),
            nvme.state.as_str(),
            nvme.host.as_deref()
        ),
        ("physical", "unassigned", None)
    );
    assert_eq!(nvme.model, "NVMe controller");
    assert_eq!(rows[3].physical_function.as_deref(), Some("dma0"));
    let hosts = c.hosts().unwrap();
    assert_eq!(hosts[0].id, "alpha");
    assert_eq!(
        (hosts[0].session.as_str(), hosts[0].rtt_us),
        ("connected", Some(42))
    );

    let t = c.assign("nvme0", "alpha").unwrap();
    let t = c.wait(t, Duration::from_secs(5)).unwrap();
    assert_eq!(
        (t.state.as_str(), t.host.as_deref()),
        ("Completed", Some("alpha"))
    );
    assert_eq!(api.state("nvme0"), "assigned");
    assert_eq!(c.hosts().unwrap()[0].functions, ["nvme0"]);
    assert_eq!(c.devices().unwrap()[0].host.as_deref(), Some("alpha"));

    refused(
        c.assign("nvme0", "beta").unwrap_err(),
        "already assigned to host \"alpha\"",
    );
    refused(
        c.assign("nvme9", "alpha").unwrap_err(),
        "unknown function \"nvme9\"",
    );
    refused(
        c.assign("dma0", "gamma").unwrap_err(),
        "unknown host \"gamma\"",
    );
    refused(c.assign("../etc", "alpha").unwrap_err(), "unknown function");
    refused(c.unassign("dma0").unwrap_err(), "not assigned");
    refused(c.unassign("nvme9").unwrap_err(), "unknown function");
    api.pool
        .set_failed("dma0.vf2", "completion timeout on reset");
    refused(
        c.assign("dma0.vf2", "alpha").unwrap_err(),
        "failed: completion timeout on reset",
    );

    let t = c.unassign("nvme0").unwrap();
    let t = c.wait(t, Duration::from_secs(5)).unwrap();
    assert_eq!(
        (t.state.as_str(), t.host.as_deref()),
        ("Completed", Some("alpha"))
    );
    assert_eq!(api.state("nvme0"), "unassigned");

    // A task that fails while ctl waits, and one that does not finish in time.
    api.pool.set_completion(Completion::Manual);
    let t = c.assign("dma0", "alpha").unwrap();
    assert_eq!(t.state, "Running");
    let pool = api.pool.clone();
    let failer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        assert!(pool.fail("dma0", "slot power fault"));
    });
    refused(
        c.wait(t, Duration::from_secs(5)).unwrap_err(),
        "slot power fault",
    );
    failer.join().unwrap();
    let t = c.assign("dma0", "alpha").unwrap();
    let e = c.wait(t, Duration::from_millis(300)).unwrap_err();
    assert!(matches!(e, ClientError::TaskTimeout { .. }), "{e}");
    assert_eq!(e.exit_code(), 1);

    // A ReadOnly session is refused with the API's reason.
    let ro = api.user(&login.token, "viewer", "ReadOnly");
    refused(
        client(&api, Some(ro))
            .assign("dma0.vf1", "alpha")
            .unwrap_err(),
        "lacks the ConfigureComponents privilege",
    );
    c.logout(&login.session).unwrap();
    refused(c.devices().unwrap_err(), "unknown or expired");
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pcietun"));
    cmd.arg("ctl")
        .args(args)
        .env("PCIETUN_CTL_CONFIG", config)
        .env_remove("PCIETUN_TOKEN")
        .env_remove("PCIETUN_API")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
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

#[test]
fn the_binary_keeps_its_exit_codes_and_json_keys() {
    let api = start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    let url = api.url.as_str();

    // login reads the password from stdin and keeps the token in a 0600 file.
    let r = ctl(
        &config,
        &["--api", url, "login", "--user", ADMIN],
        Some(&format!("{ADMIN_PW}\n")),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert_eq!(
        std::fs::metadata(&config).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let saved = std::fs::read_to_string(&config).unwrap();
    assert!(saved.contains("token") && saved.contains(url));

    // devices --json: the documented keys, from the saved settings (no --api, no --token).
    let r = ctl(&config, &["devices", "--json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let first = rows[0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "class",
            "class_code",
            "device",
            "device_id",
            "function",
            "health",
            "host",
            "id",
            "kind",
            "model",
            "physical_function",
            "state",
            "subsystem_id",
            "subsystem_vendor_id",
            "vendor_id"
        ]
    );
    assert_eq!(rows.as_array().unwrap().len(), 4);
    let r = ctl(&config, &["devices"], None);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.lines().next().unwrap().starts_with("FUNCTION"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("nvme0") && r.stdout.contains("MassStorageController"));

    let r = ctl(&config, &["hosts", "--json"], None);
    assert_eq!(r.code, 0);
    let hosts: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(
        hosts[0],
        serde_json::json!({"id": "alpha", "session": "connected", "rtt_us": 42, "functions": []})
    );

    // assign waits for its task; --json reports it.
    let r = ctl(&config, &["--json", "assign", "nvme0", "alpha"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(out["state"], "Completed");
    assert_eq!(out["function"], "nvme0");
    assert!(out["task"]
        .as_str()
        .unwrap()
        .starts_with("/redfish/v1/TaskService/Tasks/"));
    assert_eq!(api.state("nvme0"), "assigned");

    // Refused: exit 1 and the API's reason on one line.
    let r = ctl(&config, &["assign", "nvme0", "beta"], None);
    assert_eq!(r.code, 1);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("already assigned to host \"alpha\""),
        "{}",
        r.stderr
    );
    let r = ctl(&config, &["--json", "unassign", "dma0"], None);
    assert_eq!(r.code, 1);
    let err: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(err["exit_code"], 1);
    assert!(err["error"].as_str().unwrap().contains("not assigned"));

    // --no-wait returns at once with the running task.
    api.pool.set_completion(Completion::Manual);
    let r = ctl(&config, &["unassign", "nvme0", "--no-wait", "--json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let out: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(out["state"], "Running");
    assert_eq!(api.state("nvme0"), "detaching");
    assert!(api.pool.complete("nvme0"));

    // Usage: exit 2.
    assert_eq!(ctl(&config, &["assign", "nvme0"], None).code, 2);
    assert_eq!(
        ctl(&config, &["--api", "127.0.0.1:1", "devices"], None).code,
        2
    );
    // Cannot reach: exit 3.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = ctl(
        &config,
        &["--api", &format!("http://127.0.0.1:{port}"), "devices"],
        None,
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("cannot reach the appliance"));

    // A settings file others can read is refused rather than trusted with a token.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(ctl(&config, &["devices"], None).code, 2);
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();

    // logout ends the session and forgets the token.
    let r = ctl(&config, &["logout"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!std::fs::read_to_string(&config).unwrap().contains("token"));
    let r = ctl(&config, &["devices"], None);
    assert_eq!(r.code, 1);
    assert!(r.stderr.contains("authentication required"), "{}", r.stderr);
}

const DEVICES: &str = "/redfish/v1/Chassis/appliance/PCIeDevices";
const ADD_DEVICE: &str = "/redfish/v1/Chassis/appliance/Actions/Oem/Pcietun.AddDevice";

fn remove_device(dev: &str) -> String {
    format!("{DEVICES}/{dev}/Actions/Oem/Pcietun.RemoveDevice")
}

fn device_body(name: Option<&str>, spec: &str) -> String {
    let mut v = serde_json::json!({ "Spec": spec });
    if let Some(n) = name {
        v["Name"] = n.into();
    }
    v.to_string()
}

fn ids(api: &Api) -> Vec<String> {
    use pcietun::mgmt::Pool;
    api.pool.functions().into_iter().map(|f| f.id).collect()
}

#[test]
fn cards_are_added_and_removed_over_the_api_by_administrators_only() {
    let api = start();
    let admin = api.admin();
    let op = api.user(&admin, "operator", "Operator");
    let ro = api.user(&admin, "watcher", "ReadOnly");
    let before = ids(&api);

    // Operator and ReadOnly: 403, nothing added or removed.
    for (who, token) in [("operator", &op), ("watcher", &ro)] {
        let r = api.post(
            ADD_DEVICE,
            Auth::Token(token),
            &device_body(Some("dma9"), "dma"),
        );
        assert_eq!(r.status, 403, "{who}: {}", r.text);
        assert_eq!(r.code(), "Base.1.22.InsufficientPrivilege", "{}", r.text);
        let r = api.post(&remove_device("dma0"), Auth::Token(token), "{}");
        assert_eq!(r.status, 403, "{who}: {}", r.text);
    }
    assert_eq!(ids(&api), before);

    // Bad bodies and specs: 400 naming the problem, nothing added.
    for (body, status, want) in [
        (r#"{"Name":"x"}"#.to_string(), 400, "Spec"),
        (r#"{"Spec":"dma","Colour":1}"#.to_string(), 400, "Colour"),
        (r#"{"Spec":7}"#.to_string(), 400, "Spec"),
        (device_body(None, ""), 400, "Spec"),
        (device_body(None, "floppy=/dev/fd0"), 400, "floppy"),
        (device_body(None, "nvme=/etc/passwd"), 400, "device_dirs"),
        (device_body(Some("a/b"), "dma"), 400, "Name"),
        (device_body(Some("nvme0"), "dma"), 409, "nvme0"),
    ] {
        let r = api.post(ADD_DEVICE, Auth::Token(&admin), &body);
        assert_eq!(r.status, status, "{body}: {}", r.text);
        assert!(
            r.message().contains(want) || r.text.contains(want),
            "{body}: {want:?} in {}",
            r.text
        );
    }
    assert_eq!(ids(&api), before);
    let r = api.post(
        "/redfish/v1/Chassis/elsewhere/Actions/Oem/Pcietun.AddDevice",
        Auth::Token(&admin),
        &device_body(None, "dma"),
    );
    assert_eq!(r.status, 404, "{}", r.text);
    let r = api.post(
        "/redfish/v1/Chassis/appliance/Actions/Oem/Pcietun.Explode",
        Auth::Token(&admin),
        "{}",
    );
    assert_eq!(
        (r.status, r.code()),
        (404, "Base.1.22.ActionNotSupported"),
        "{}",
        r.text
    );
    // The standard collection and resource stay read-only (the DMTF schemas say so).
    assert_eq!(
        api.post(DEVICES, Auth::Token(&admin), &device_body(None, "dma"))
            .status,
        405
    );
    assert_eq!(
        api.delete(&format!("{DEVICES}/nvme0"), Auth::Token(&admin))
            .status,
        405
    );
    // The actions are advertised where Redfish clients look for them.
    let chassis = api.get("/redfish/v1/Chassis/appliance", Auth::Token(&ro));
    assert_eq!(
        chassis.json["Actions"]["Oem"]["#Pcietun.AddDevice"]["target"], ADD_DEVICE,
        "{}",
        chassis.text
    );
    let card = api.get(&format!("{DEVICES}/nvme0"), Auth::Token(&ro));
    assert_eq!(
        card.json["Actions"]["Oem"]["#Pcietun.RemoveDevice"]["target"],
        remove_device("nvme0")
    );

    // An Administrator adds one: 202, a Task that names the new card.
    let r = api.post(
        ADD_DEVICE,
        Auth::Token(&admin),
        &device_body(Some("dma9"), "dma,buffer=64K"),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let task = r.header("Location").expect("task location").to_string();
    let t = api.get(&task, Auth::Token(&ro));
    assert_eq!(t.json["TaskState"], "Completed", "{}", t.text);
    assert_eq!(
        t.json["Oem"]["Pcietun"]["Device"]["@odata.id"],
        format!("{DEVICES}/dma9"),
        "{}",
        t.text
    );
    assert_eq!(
        t.json["Oem"]["Pcietun"]["Functions"],
        serde_json::json!(["dma9"])
    );
    assert_eq!(
        api.get(&format!("{DEVICES}/dma9"), Auth::Token(&ro)).status,
        200
    );
    assert_eq!(api.state("dma9"), "unassigned");
    let r = api.post(
        ADD_DEVICE,
        Auth::Token(&admin),
        &device_body(Some("dma9"), "dma"),
    );
    assert_eq!(
        (r.status, r.code()),
        (409, "Base.1.22.ResourceAlreadyExists"),
        "{}",
        r.text
    );

    // Assigned: removal refused with the owner named; unassigned: removed.
    let r = api.post(ADD_ALPHA, Auth::Token(&op), &add_endpoint_body("dma9"));
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api.post(&remove_device("dma9"), Auth::Token(&admin), "");
    assert_eq!(
        (r.status, r.code()),
        (409, "Base.1.22.ResourceInUse"),
        "{}",
        r.text
    );
    assert!(r.message().contains("alpha"), "{}", r.text);
    let r = api.delete(
        "/redfish/v1/Fabrics/PCIe/Connections/dma9",
        Auth::Token(&op),
    );
    assert_eq!(r.status, 202, "{}", r.text);
    let r = api.req(
        "POST",
        &remove_device("dma9"),
        Auth::Token(&admin),
        &[("If-Match", "W/\"stale\"")],
        Some(b"{}"),
    );
    assert_eq!(r.status, 412, "{}", r.text);
    let r = api.post(
        &remove_device("dma9"),
        Auth::Token(&admin),
        "{\"Force\":true}",
    );
    assert_eq!(r.status, 400, "no parameters: {}", r.text);
    let r = api.post(&remove_device("dma9"), Auth::Token(&admin), "{}");
    assert_eq!(r.status, 202, "{}", r.text);
    let t = api.get(r.header("Location").unwrap(), Auth::Token(&admin));
    assert_eq!(t.json["TaskState"], "Completed", "{}", t.text);
    assert_eq!(
        api.get(&format!("{DEVICES}/dma9"), Auth::Token(&admin))
            .status,
        404
    );
    assert_eq!(ids(&api), before);

    // A card with VFs goes whole; the library client refuses a VF on its own.
    let c = client(&api, Some(admin.clone()));
    refused(c.remove_device("dma0.vf1").unwrap_err(), "virtual function");
    let t = c.remove_device("dma0").unwrap();
    let t = c.wait_device(t, Duration::from_secs(5)).unwrap();
    assert_eq!(t.device.as_deref(), Some("dma0"));
    assert_eq!(t.functions, ["dma0", "dma0.vf1", "dma0.vf2"]);
    assert_eq!(ids(&api), ["nvme0"]);
    let t = c.add_device("dma", None).unwrap();
    let t = c.wait_device(t, Duration::from_secs(5)).unwrap();
    assert_eq!(
        (
            t.state.as_str(),
            t.device.as_deref(),
            t.functions.as_slice()
        ),
        ("Completed", Some("card0"), &["card0".to_string()][..])
    );
    refused(c.remove_device("nope").unwrap_err(), "unknown function");
}

#[test]
fn the_pool_has_room_for_32_cards() {
    let api = start();
    let c = client(&api, Some(api.admin()));
    // The sample has two cards (nvme0, dma0 with its VFs).
    for _ in 0..30 {
        let t = c.add_device("dma", None).unwrap();
        c.wait_device(t, Duration::from_secs(5)).unwrap();
    }
    refused(
        c.add_device("dma", None).unwrap_err(),
        "no free device number",
    );
}

/// `ctl rules`, `ctl assign --lease` and `ctl schedule` (docs/api.md "Rules", "Schedules"):
/// the documented `--json` keys, refusals exit 1 with the API's reason, bad durations and
/// windows are usage errors (exit 2) that never reach the API.
#[test]
fn ctl_rules_leases_and_schedules() {
    let api = start();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ctl.toml");
    let url = api.url.as_str();
    let r = ctl(
        &config,
        &["--api", url, "login", "--user", ADMIN],
        Some(&format!("{ADMIN_PW}\n")),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let json = |r: &Run| -> serde_json::Value {
        serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
    };

    let r = ctl(
        &config,
        &["rules", "--reclaim-after", "10m", "--json"],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        json(&r),
        serde_json::json!({"reclaim_after_s": 600, "pending": [], "leases": []})
    );
    let r = ctl(&config, &["rules"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.starts_with("reclaim after: 10m"), "{}", r.stdout);
    for bad in ["0s", "10", "1.5s", "31d", "soon"] {
        let r = ctl(&config, &["rules", "--reclaim-after", bad], None);
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
    }
    let r = ctl(
        &config,
        &["rules", "--reclaim-after", "never", "--json"],
        None,
    );
    assert_eq!(json(&r)["reclaim_after_s"], serde_json::Value::Null);

    let r = ctl(
        &config,
        &["assign", "nvme0", "alpha", "--lease", "2h", "--json"],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = ctl(&config, &["rules", "--json"], None);
    let leases = &json(&r)["leases"];
    assert_eq!(leases[0]["function"], "nvme0");
    assert_eq!(leases[0]["host"], "alpha");
    assert_eq!(leases[0]["seconds"], 7200);
    assert!(leases[0]["expires_at"]
        .as_str()
        .unwrap()
        .ends_with("+00:00"));
    assert_eq!(
        ctl(
            &config,
            &["assign", "dma0.vf1", "alpha", "--lease", "0s"],
            None
        )
        .code,
        2
    );

    let r = ctl(
        &config,
        &[
            "schedule",
            "add",
            "dma0.vf1",
            "alpha",
            "01:00-03:00",
            "--then",
            "beta",
            "--json",
        ],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rows = json(&r);
    let first = rows[0].as_object().unwrap();
    let mut keys: Vec<&str> = first.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(
        keys,
        ["active", "end", "function", "host", "id", "start", "then"]
    );
    assert_eq!(
        (&rows[0]["id"], &rows[0]["start"], &rows[0]["then"]),
        (
            &serde_json::json!("1"),
            &serde_json::json!("01:00"),
            &serde_json::json!("beta")
        )
    );
    // Overlap: refused by the API, exit 1 with its reason on one line.
    let r = ctl(
        &config,
        &["schedule", "add", "dma0.vf1", "beta", "02:00-04:00"],
        None,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("overlaps schedule 1"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    // The function is the schedule's now.
    let r = ctl(&config, &["assign", "dma0.vf1", "alpha"], None);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("managed by schedule 1"), "{}", r.stderr);
    for bad in ["1-3", "01:00", "25:00-26:00", "01:00/03:00"] {
        let r = ctl(
            &config,
            &["schedule", "add", "dma0.vf2", "alpha", bad],
            None,
        );
        assert_eq!(r.code, 2, "{bad}: {}", r.stderr);
    }
    let r = ctl(&config, &["schedule"], None);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("01:00-03:00 UTC"), "{}", r.stdout);
    let r = ctl(&config, &["schedule", "remove", "1", "--json"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(json(&r), serde_json::json!([]));
    assert_eq!(ctl(&config, &["schedule", "remove", "1"], None).code, 1);
}
