//! The pool driven the way an operator drives it (issues 11 and 14): a real `pcietun appliance`
//! process serving its management API, two host agents with their own keys connected to it over
//! UDP, and `pcietun ctl` as the operator's client. A card in the pool is visible to no host
//! until `ctl assign` gives it to one; that host's agent sees it appear (slot event, no rescan)
//! and drives it; the other host never sees it; a second assign is refused with exit code 1 and
//! a one-line reason; `ctl unassign` takes it away in order; `ctl assign` to the other host
//! moves it there, where it works. Cards are added to and removed from the running appliance
//! with `ctl add-device` / `ctl remove-device` while a host runs I/O, and `ctl events` shows it.

mod pool_common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pcietun::host::agent::Agent;
use pcietun::pci::class::dma_engine::{reg, ID_VALUE};
use pcietun::transport::SecretKey;
use pool_common::{agent, Appliance, PASSWORD};

/// Starts the appliance with hosts web1 and web2 and the DMA engine dma-a (unassigned), and
/// `api_extra` in its `[api]`; returns it with its UDP address and its API's URL.
fn appliance(
    dir: &Path,
    key: &SecretKey,
    web1: &SecretKey,
    web2: &SecretKey,
    api_extra: &str,
) -> (Appliance, String, String) {
    let a = pool_common::appliance(
        dir,
        key,
        &[("web1", web1), ("web2", web2)],
        "\n[[device]]\nkind = \"dma\"\nname = \"dma-a\"\nbuffer = \"64K\"\n",
        api_extra,
    );
    let (udp, api) = (a.udp.clone(), a.api.clone());
    (a, udp, api)
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
    let (app, udp, api) = appliance(dir.path(), &key, &k1, &k2, "");
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

/// Host `a`'s DMA engine buffer, written and read back in a loop until `stop`: (rounds,
/// mismatches or errors).
fn buffer_io(a: &Agent, stop: &std::sync::atomic::AtomicBool) -> (u64, u64) {
    use pcietun::pci::class::dma_engine::BUFFER_BAR;
    use std::sync::atomic::Ordering;
    let info = a
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class >> 8 == 0x0880)
        .expect("the DMA engine");
    let dev = a.host().open(info.bdf).unwrap();
    let (mut rounds, mut bad) = (0u64, 0u64);
    while !stop.load(Ordering::SeqCst) {
        let v = 0x5a5a_0000 ^ (rounds as u32);
        let at = (rounds % 1024) * 4;
        let ok = dev.bar_write32(usize::from(BUFFER_BAR), at, v).is_ok()
            && dev.bar_read32(usize::from(BUFFER_BAR), at).ok() == Some(v);
        if !ok {
            bad += 1;
        }
        rounds += 1;
    }
    (rounds, bad)
}

fn rows(r: &Run) -> Vec<serde_json::Value> {
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    serde_json::from_str::<serde_json::Value>(&r.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
        .as_array()
        .unwrap()
        .clone()
}

fn one_line_refusal(r: &Run, want: &str) {
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one line: {}", r.stderr);
    assert!(r.stderr.contains(want), "{want:?} in {}", r.stderr);
}

#[test]
fn ctl_adds_and_removes_a_card_while_a_host_runs_io() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let disks = dir.path().join("disks");
    std::fs::create_dir(&disks).unwrap();
    let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
    let key = SecretKey::generate();
    let (app, udp, api) = appliance(dir.path(), &key, &k1, &k2, "device_dirs = [\"disks\"]");
    let web1 = agent(&udp, "web1", k1, &key);
    let web2 = agent(&udp, "web2", k2, &key);
    let config = dir.path().join("ctl.toml");
    let r = ctl(
        &config,
        &["--api", &api, "login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "login: {}{}", r.stdout, r.stderr);

    // The event stream, followed from before the card comes until after it went.
    let events = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["ctl", "events", "--json"])
        .env("PCIETUN_CTL_CONFIG", &config)
        .env_remove("PCIETUN_TOKEN")
        .env_remove("PCIETUN_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // web1 runs I/O on its card the whole time.
    let r = ctl(&config, &["assign", "dma-a", "web1"], None);
    assert_eq!(r.code, 0, "assign: {}{}", r.stdout, r.stderr);
    assert!(wait_dma(&web1, true, Duration::from_secs(10)));
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let io = scope.spawn(|| buffer_io(&web1, &stop));

        // Add a second DMA engine while serving.
        let r = ctl(
            &config,
            &["add-device", "dma,buffer=64K", "--name", "dma-b", "--json"],
            None,
        );
        assert_eq!(r.code, 0, "add-device: {}{}", r.stdout, r.stderr);
        let added: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(added["action"], "add", "{added}");
        assert_eq!(added["state"], "Completed", "{added}");
        assert_eq!(added["functions"], serde_json::json!(["dma-b"]), "{added}");
        let card = added["device"].as_str().expect("the card's id").to_string();
        let all = rows(&ctl(&config, &["devices", "--json"], None));
        let b = all
            .iter()
            .find(|r| r["id"] == "dma-b")
            .unwrap_or_else(|| panic!("dma-b in {all:?}"));
        assert_eq!(
            (&b["state"], &b["device"]),
            (&"unassigned".into(), &card.clone().into())
        );
        // Same name again: refused, one line.
        let r = ctl(&config, &["add-device", "dma", "--name", "dma-b"], None);
        one_line_refusal(&r, "dma-b");

        // Give it to web2, which sees it appear and drives it.
        let r = ctl(&config, &["assign", "dma-b", "web2"], None);
        assert_eq!(r.code, 0, "assign: {}{}", r.stdout, r.stderr);
        assert!(
            wait_dma(&web2, true, Duration::from_secs(10)),
            "web2 got dma-b"
        );
        assert_eq!(read_id(&web2), ID_VALUE);

        // Removing an assigned card is refused with the owner named.
        let r = ctl(&config, &["remove-device", "dma-b"], None);
        one_line_refusal(&r, "web2");

        let r = ctl(&config, &["unassign", "dma-b"], None);
        assert_eq!(r.code, 0, "unassign: {}{}", r.stdout, r.stderr);
        assert!(
            wait_dma(&web2, false, Duration::from_secs(10)),
            "web2 let go"
        );
        let r = ctl(&config, &["remove-device", "dma-b", "--json"], None);
        assert_eq!(r.code, 0, "remove-device: {}{}", r.stdout, r.stderr);
        let removed: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        assert_eq!(
            (&removed["action"], &removed["state"], &removed["device"]),
            (&"remove".into(), &"Completed".into(), &card.clone().into()),
            "{removed}"
        );
        let all = rows(&ctl(&config, &["devices", "--json"], None));
        assert!(!all.iter().any(|r| r["id"] == "dma-b"), "gone: {all:?}");
        assert!(all
            .iter()
            .any(|r| r["id"] == "dma-a" && r["host"] == "web1"));

        // Path-bearing cards: only under device_dirs, resolved.
        let img = disks.join("a.img");
        let r = ctl(
            &config,
            &[
                "add-device",
                &format!("nvme={},size=1M", img.display()),
                "--name",
                "disk-a",
            ],
            None,
        );
        assert_eq!(
            r.code, 0,
            "nvme under device_dirs: {}{}",
            r.stdout, r.stderr
        );
        assert!(img.exists(), "the backing file was created");
        let r = ctl(
            &config,
            &["add-device", "nvme=/etc/passwd", "--name", "pw"],
            None,
        );
        one_line_refusal(&r, "outside the directories");
        let sneaky = format!("nvme={}/../appliance.key", disks.display());
        let r = ctl(&config, &["add-device", &sneaky], None);
        one_line_refusal(&r, "outside the directories");
        std::os::unix::fs::symlink(dir.path().join("admin.pw"), disks.join("link.img")).unwrap();
        let r = ctl(
            &config,
            &[
                "add-device",
                &format!("nvme={}", disks.join("link.img").display()),
            ],
            None,
        );
        one_line_refusal(&r, "outside the directories");
        let r = ctl(&config, &["add-device", "floppy=/dev/fd0"], None);
        one_line_refusal(&r, "floppy");
        let r = ctl(&config, &["remove-device", "disk-a"], None);
        assert_eq!(r.code, 0, "remove disk-a: {}{}", r.stdout, r.stderr);

        stop.store(true, Ordering::SeqCst);
        let (rounds, bad) = io.join().unwrap();
        eprintln!("web1: {rounds} verified write/read rounds, {bad} bad");
        assert!(rounds > 0, "web1 ran I/O");
        assert_eq!(bad, 0, "web1's I/O was undisturbed over {rounds} rounds");
    });
    assert_eq!(read_id(&web1), ID_VALUE);

    // The stream saw dma-b come and go; SIGINT ends `ctl events` cleanly.
    std::thread::sleep(Duration::from_millis(300));
    let pid = events.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGINT) }, 0);
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("ctl events --json:\n{text}");
    assert_eq!(
        out.status.code(),
        Some(0),
        "ctl events ends cleanly on SIGINT: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let saw = |msg: &str, origin: &str| {
        lines.iter().any(|e| {
            e["Events"][0]["MessageId"]
                .as_str()
                .is_some_and(|m| m.ends_with(msg))
                && e["Events"][0]["OriginOfCondition"]["@odata.id"]
                    .as_str()
                    .is_some_and(|o| o.ends_with(origin))
        })
    };
    assert!(saw("ResourceCreated", "/fn-dma-b"), "added: {text}");
    assert!(saw("ResourceRemoved", "/fn-dma-b"), "removed: {text}");
    drop(web1);
    drop(web2);
    drop(app);
}

#[test]
fn ctl_exit_codes_against_a_real_appliance() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
    let key = SecretKey::generate();
    let (app, _udp, api) = appliance(dir.path(), &key, &k1, &k2, "");
    let config = dir.path().join("ctl.toml");
    let r = ctl(
        &config,
        &["--api", &api, "login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "login: {}{}", r.stdout, r.stderr);

    // 0: success.
    let r = ctl(&config, &["devices"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("dma-a"), "{}", r.stdout);

    // 1: refused, the API's message on one line.
    one_line_refusal(
        &ctl(&config, &["assign", "dma-a", "nobody"], None),
        "nobody",
    );
    one_line_refusal(
        &ctl(&config, &["remove-device", "no-such"], None),
        "no-such",
    );
    // No device_dirs: path-bearing kinds are refused over the API.
    let r = ctl(
        &config,
        &[
            "add-device",
            &format!("nvme={}/x.img,size=1M", dir.path().display()),
        ],
        None,
    );
    one_line_refusal(&r, "device_dirs");
    assert!(!dir.path().join("x.img").exists(), "nothing was created");
    let r = ctl(&config, &["add-device", "dma,buffer=lots", "--json"], None);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    let v: serde_json::Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(v["exit_code"], 1, "{v}");

    // Operators and read-only accounts cannot add or remove cards.
    for (user, role) in [("op", "Operator"), ("ro", "ReadOnly")] {
        let admin_token = toml_token(&config);
        let status = ureq_post(
            &api,
            "/redfish/v1/AccountService/Accounts",
            &admin_token,
            &serde_json::json!({"UserName": user, "Password": "another long password", "RoleId": role}),
        );
        assert_eq!(status, 201, "create {user}");
        let cfg = dir.path().join(format!("{user}.toml"));
        let r = ctl(
            &cfg,
            &["--api", &api, "login", "--user", user],
            Some("another long password\n"),
        );
        assert_eq!(r.code, 0, "login {user}: {}", r.stderr);
        one_line_refusal(&ctl(&cfg, &["add-device", "dma"], None), "privilege");
        one_line_refusal(&ctl(&cfg, &["remove-device", "dma-a"], None), "privilege");
    }

    // 2: usage.
    let r = ctl(&config, &["add-device"], None);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);
    let r = ctl(&config, &["--api", "ftp://x", "devices"], None);
    assert_eq!(r.code, 2, "{}{}", r.stdout, r.stderr);

    // 3: cannot reach the appliance (a closed port), for a command and for the stream.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    for args in [
        vec!["--api", &url, "devices"],
        vec!["--api", &url, "events"],
        vec!["--api", &url, "add-device", "dma"],
    ] {
        let r = ctl(&config, &args, None);
        assert_eq!(r.code, 3, "{args:?}: {}{}", r.stdout, r.stderr);
        assert_eq!(r.stderr.trim().lines().count(), 1, "{}", r.stderr);
    }
    // The appliance going away while `ctl events` follows it: exit 3, one line.
    let events = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["ctl", "events"])
        .env("PCIETUN_CTL_CONFIG", &config)
        .env_remove("PCIETUN_TOKEN")
        .env_remove("PCIETUN_API")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(app);
    let out = events.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("event stream broke"), "{stderr}");
}

/// The token `ctl login` saved.
fn toml_token(config: &Path) -> String {
    let text = std::fs::read_to_string(config).unwrap();
    let v: toml::Value = toml::from_str(&text).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// POST JSON with a token; the status.
fn ureq_post(api: &str, uri: &str, token: &str, body: &serde_json::Value) -> u16 {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    agent
        .post(&format!("{api}{uri}"))
        .header("X-Auth-Token", token)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap()
        .status()
        .as_u16()
}

/// `ctl policy` (issue 14) against a real appliance: caps set with units, shown, lifted one by
/// one and all at once; bad rates are usage errors (2); a function with no Connection is refused
/// on one line (1); the caps are what the API's Connection shows.
#[test]
fn ctl_policy_sets_shows_and_lifts_caps() {
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
    let key = SecretKey::generate();
    let (app, udp, api) = appliance(dir.path(), &key, &k1, &k2, "");
    let web1 = agent(&udp, "web1", k1, &key);
    let config = dir.path().join("ctl.toml");
    let r = ctl(
        &config,
        &["--api", &api, "login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "login: {}{}", r.stdout, r.stderr);
    // Not assigned: no Connection to carry caps.
    one_line_refusal(&ctl(&config, &["policy", "dma-a"], None), "dma-a");

    let r = ctl(&config, &["assign", "dma-a", "web1"], None);
    assert_eq!(r.code, 0, "assign: {}{}", r.stdout, r.stderr);
    assert!(wait_dma(&web1, true, Duration::from_secs(10)));
    let policy = |args: &[&str]| -> serde_json::Value {
        let mut a = vec!["policy", "dma-a", "--json"];
        a.extend_from_slice(args);
        let r = ctl(&config, &a, None);
        assert_eq!(r.code, 0, "{a:?}: {}{}", r.stdout, r.stderr);
        serde_json::from_str(r.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
    };
    let none = serde_json::json!({"function": "dma-a", "max_bytes_per_sec_up": null,
        "max_bytes_per_sec_down": null, "max_iops": null, "priority": 10});
    assert_eq!(policy(&[]), none, "no caps by default");
    let set = policy(&[
        "--max-bw",
        "8MB/s",
        "--max-down-bw",
        "1MiB/s",
        "--max-iops",
        "100k",
    ]);
    assert_eq!(set["max_bytes_per_sec_up"], 8_000_000, "{set}");
    assert_eq!(set["max_bytes_per_sec_down"], 1_048_576, "{set}");
    assert_eq!(set["max_iops"], 100_000, "{set}");
    assert_eq!(policy(&[]), set, "shown as set");
    // What the API's Connection shows, read without ctl.
    let token = toml_token(&config);
    let text = ureq::get(format!("{api}/redfish/v1/Fabrics/PCIe/Connections/dma-a"))
        .header("X-Auth-Token", &token)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let conn: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        conn["Oem"]["Pcietun"]["Policy"]["MaxBytesPerSecondDown"], 1_048_576,
        "{conn}"
    );
    let up_lifted = policy(&["--max-up-bw", "none"]);
    assert_eq!(up_lifted["max_bytes_per_sec_up"], serde_json::Value::Null);
    assert_eq!(
        up_lifted["max_bytes_per_sec_down"], 1_048_576,
        "the others stay"
    );
    let r = ctl(&config, &["policy", "dma-a"], None);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("1048576 B/s") && r.stdout.contains("none"),
        "{}",
        r.stdout
    );
    let prio = policy(&["--priority", "30"]);
    assert_eq!(prio["priority"], 30, "{prio}");
    assert_eq!(prio["max_bytes_per_sec_down"], 1_048_576, "the caps stay");
    let r = ctl(&config, &["policy", "dma-a"], None);
    assert!(
        r.stdout.contains("priority                   30"),
        "{}",
        r.stdout
    );
    assert_eq!(policy(&["--priority", "default"])["priority"], 10);
    assert_eq!(policy(&["--priority", "7"])["priority"], 7);
    assert_eq!(
        policy(&["--clear"]),
        none,
        "--clear lifts every cap and the priority"
    );

    for bad in [
        vec!["policy", "dma-a", "--max-bw", "0"],
        vec!["policy", "dma-a", "--max-bw", "fast"],
        vec!["policy", "dma-a", "--max-iops", "2GB"],
        vec!["policy", "dma-a", "--clear", "--max-iops", "5"],
        vec!["policy", "dma-a", "--priority", "0"],
        vec!["policy", "dma-a", "--priority", "101"],
        vec!["policy", "dma-a", "--clear", "--priority", "5"],
    ] {
        let r = ctl(&config, &bad, None);
        assert_eq!(r.code, 2, "{bad:?}: {}{}", r.stdout, r.stderr);
    }
    assert_eq!(policy(&[]), none, "nothing changed by the refused ones");
    drop(web1);
    drop(app);
}

/// `ctl watch` against a real appliance while host web1 runs I/O on its DMA engine: one JSON
/// frame per refresh with the function's and the hosts' rates from `/metrics`. Each round of
/// the I/O is one MWr and one MRd to the function and one CplD back, so the function's
/// downstream TLP rate is twice its upstream one; once the I/O stops the rates fall to zero.
#[test]
fn ctl_watch_shows_the_rates_of_a_running_host() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let dir = tempfile::tempdir().unwrap();
    let (k1, k2) = (SecretKey::generate(), SecretKey::generate());
    let key = SecretKey::generate();
    let (app, udp, api) = appliance(dir.path(), &key, &k1, &k2, "");
    let web1 = agent(&udp, "web1", k1, &key);
    let config = dir.path().join("ctl.toml");
    let r = ctl(
        &config,
        &["--api", &api, "login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "login: {}{}", r.stdout, r.stderr);
    let r = ctl(&config, &["assign", "dma-a", "web1"], None);
    assert_eq!(r.code, 0, "assign: {}{}", r.stdout, r.stderr);
    assert!(wait_dma(&web1, true, Duration::from_secs(10)));

    let frames = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut a = vec!["watch", "--json"];
        a.extend_from_slice(args);
        let r = ctl(&config, &a, None);
        assert_eq!(r.code, 0, "{a:?}: {}{}", r.stdout, r.stderr);
        r.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    };
    let row = |f: &serde_json::Value, key: &str, id: &str| -> serde_json::Value {
        f[key]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r[&key[..key.len() - 1]] == id))
            .unwrap_or_else(|| panic!("no {id} in {f}"))
            .clone()
    };
    let stop = AtomicBool::new(false);
    let (busy, (rounds, bad)) = std::thread::scope(|s| {
        let io = s.spawn(|| buffer_io(&web1, &stop));
        std::thread::sleep(Duration::from_millis(200));
        let busy = frames(&["--interval", "0.5", "--count", "3"]);
        stop.store(true, Ordering::SeqCst);
        (busy, io.join().unwrap())
    });
    assert_eq!(bad, 0);
    assert_eq!(busy.len(), 3, "one frame per refresh: {busy:?}");
    let mut up_tlps = 0.0;
    for f in &busy {
        let secs = f["interval_s"].as_f64().unwrap();
        assert!((0.45..5.0).contains(&secs), "interval {secs}");
        let d = row(f, "functions", "dma-a");
        assert_eq!(
            (d["state"].as_str(), d["host"].as_str()),
            (Some("assigned"), Some("web1"))
        );
        let (down, up) = (
            d["down_tlps_per_s"].as_f64().unwrap(),
            d["up_tlps_per_s"].as_f64().unwrap(),
        );
        assert!(up > 10.0, "I/O runs: {d}");
        assert!(
            (1.8..=2.2).contains(&(down / up)),
            "a MWr and a MRd per CplD: {d}"
        );
        assert!(
            d["down_bytes_per_s"].as_f64().unwrap() > 0.0 && d["errors_per_s"] == 0.0,
            "{d}"
        );
        up_tlps += up * secs;
        let h = row(f, "hosts", "web1");
        assert_eq!(h["connected"], true, "{h}");
        assert!(h["rtt_us"].as_f64().unwrap() > 0.0, "{h}");
        assert!(
            h["down_tlps_per_s"].as_f64().unwrap() >= down * 0.9,
            "the host carries the function's TLPs: {h} {d}"
        );
        let other = row(f, "hosts", "web2");
        assert_eq!(
            (other["connected"].as_bool(), other["rtt_us"].is_null()),
            (Some(false), true),
            "{other}"
        );
    }
    assert!(
        up_tlps <= rounds as f64 + 10.0,
        "watch saw {up_tlps} reads, the host made {rounds}"
    );
    // The appliance publishes its counters every 100 ms: let the last of the I/O reach them.
    std::thread::sleep(Duration::from_millis(400));
    let idle = frames(&["--interval", "0.3", "--count", "1"]);
    let d = row(&idle[0], "functions", "dma-a");
    assert_eq!(
        (d["down_tlps_per_s"].as_f64(), d["up_tlps_per_s"].as_f64()),
        (Some(0.0), Some(0.0)),
        "idle: {d}"
    );

    let r = ctl(
        &config,
        &["watch", "--count", "1", "--interval", "0.2"],
        None,
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in [
        "FUNCTION",
        "dma-a",
        "assigned",
        "HOST",
        "web1",
        "connected",
        "disconnected",
    ] {
        assert!(
            r.stdout.contains(want),
            "{want:?} in the table:\n{}",
            r.stdout
        );
    }
    for bad in [["--interval", "0"], ["--interval", "x"], ["--count", "0"]] {
        let mut a = vec!["watch"];
        a.extend_from_slice(&bad);
        assert_eq!(ctl(&config, &a, None).code, 2, "{bad:?}");
    }
    let r = ctl(
        &config,
        &["--api", "http://127.0.0.1:1", "watch", "--count", "1"],
        None,
    );
    assert_eq!(r.code, 3, "unreachable: {}{}", r.stdout, r.stderr);
    drop(web1);
    drop(app);
}
