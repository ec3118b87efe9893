//! The SR-IOV VF count changed at run time through a real `pcietun appliance` process and
//! `pcietun ctl vfs` (docs/api.md "SR-IOV VF count"): an NVMe drive configured with two VFs
//! is lowered to none and raised to two again; one VF is given to a host agent that writes and
//! reads its data back through the project's NVMe driver; lowering the count is then refused
//! (exit code 1, the reason) and the host's I/O goes on; once the VF is free the count goes
//! to one, and after a restart of the appliance it is still one (the `VfCounts` record).

mod pool_common;

use std::process::Command;
use std::time::{Duration, Instant};

use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::host::agent::Agent;
use pcietun::transport::SecretKey;
use pool_common::*;

const NVME_CLASS: u32 = 0x01_08_02;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn ctl(config: &std::path::Path, api: &str, args: &[&str], stdin: Option<&str>) -> Run {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["ctl", "--api", api])
        .args(args)
        .env("PCIETUN_CTL_CONFIG", config)
        .env_remove("PCIETUN_TOKEN")
        .env_remove("PCIETUN_API")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
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

fn json(r: &Run) -> serde_json::Value {
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 9) as u8)
        .collect()
}

fn nvme_of(a: &Agent) -> Option<pcietun::host::RemoteFunction> {
    let f = a
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class == NVME_CLASS)?;
    a.host().open(f.bdf)
}

#[test]
fn ctl_vfs_changes_an_nvme_drives_vf_count_and_refuses_while_a_vf_is_in_use() {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate();
    let web1 = SecretKey::from_bytes([0x31; 32]);
    let web2 = SecretKey::generate();
    let img = dir.path().join("ssd.img");
    let devices = format!(
        "\n[[device]]\nkind = \"nvme\"\nname = \"ssd\"\npath = \"{}\"\nsize = \"12M\"\nvfs = 2\nvf_size = \"4M\"\n",
        img.display()
    );
    let hosts = [("web1", &web1), ("web2", &web2)];
    let app = appliance(dir.path(), &key, &hosts, &devices, "");
    let config = dir.path().join("ctl.toml");
    let r = ctl(
        &config,
        &app.api,
        &["login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);

    // As configured: 2 of 2.
    let v = json(&ctl(&config, &app.api, &["--json", "vfs", "ssd"], None));
    assert_eq!(v["num_vfs"], 2, "{v}");
    assert_eq!(v["total_vfs"], 2, "{v}");
    assert_eq!(v["vfs"], serde_json::json!(["ssd.vf0", "ssd.vf1"]));
    // Down to none and up to two again: the same ids.
    let v = json(&ctl(
        &config,
        &app.api,
        &["--json", "vfs", "ssd", "0"],
        None,
    ));
    assert_eq!(v["num_vfs"], 0, "{v}");
    assert_eq!(v["state"], "Completed", "{v}");
    let r = ctl(&config, &app.api, &["vfs", "ssd", "2"], None);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout
            .contains("ssd: 2 of 2 virtual functions: ssd.vf0,ssd.vf1"),
        "{}",
        r.stdout
    );
    // Refusals: above TotalVFs, a function that is no SR-IOV PF, a bad number.
    for (args, want) in [
        (&["vfs", "ssd", "3"][..], "TotalVFs"),
        (
            &["vfs", "ssd.vf0", "1"][..],
            "not an SR-IOV physical function",
        ),
        (&["vfs", "ssd", "x"][..], "invalid value"),
    ] {
        let r = ctl(&config, &app.api, args, None);
        assert_ne!(r.code, 0, "{args:?}: {}", r.stdout);
        assert!(r.stderr.contains(want), "{args:?}: {}", r.stderr);
    }

    // web1 gets ssd.vf1 and does I/O through the NVMe driver.
    let a = agent(&app.udp, "web1", SecretKey::from_bytes([0x31; 32]), &key);
    let r = ctl(&config, &app.api, &["assign", "ssd.vf1", "web1"], None);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    wait_for("web1's VF", || nvme_of(&a).is_some());
    let mut d = NvmeDriver::open(nvme_of(&a).unwrap(), NvmeConfig::default()).unwrap();
    let mut w = pattern(7, 64 << 10);
    d.transfer(IoOp::Write, 0, &mut w, &mut |_| {}).unwrap();

    // While it is assigned the count does not change: exit code 1, the reason, nothing moved.
    let r = ctl(&config, &app.api, &["vfs", "ssd", "1"], None);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("ssd.vf1") && r.stderr.contains("unassign it"),
        "{}",
        r.stderr
    );
    let v = json(&ctl(&config, &app.api, &["--json", "vfs", "ssd"], None));
    assert_eq!(v["num_vfs"], 2, "{v}");
    // The owner's I/O was not disturbed: its data reads back, and more I/O works.
    let mut got = vec![0u8; 64 << 10];
    d.transfer(IoOp::Read, 0, &mut got, &mut |_| {}).unwrap();
    assert_eq!(got, pattern(7, 64 << 10));
    let mut w2 = pattern(9, 64 << 10);
    d.transfer(IoOp::Write, 128, &mut w2, &mut |_| {}).unwrap();
    d.transfer(IoOp::Read, 128, &mut got, &mut |_| {}).unwrap();
    assert_eq!(got, pattern(9, 64 << 10));
    d.flush().unwrap();
    d.shutdown().unwrap();

    // Freed, the count goes to one; it is stored and comes back after a restart.
    let r = ctl(&config, &app.api, &["unassign", "ssd.vf1"], None);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let v = json(&ctl(
        &config,
        &app.api,
        &["--json", "vfs", "ssd", "1"],
        None,
    ));
    assert_eq!(v["num_vfs"], 1, "{v}");
    assert_eq!(v["vfs"], serde_json::json!(["ssd.vf0"]));
    drop(a);
    drop(app);
    // VF 1's slice of the file kept what web1 wrote (4 MiB PF, then VF 0, then VF 1).
    let data = std::fs::read(&img).unwrap();
    let at = 8 << 20;
    assert_eq!(&data[at..at + (64 << 10)], &pattern(7, 64 << 10)[..]);

    for f in ["appliance.key", "admin.pw"] {
        std::fs::remove_file(dir.path().join(f)).unwrap();
    }
    let app = appliance(dir.path(), &key, &hosts, &devices, "");
    let r = ctl(
        &config,
        &app.api,
        &["login", "--user", "admin"],
        Some(&format!("{PASSWORD}\n")),
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    wait_for("the stored VF count", || {
        let v = json(&ctl(&config, &app.api, &["--json", "vfs", "ssd"], None));
        v["num_vfs"] == 1
    });
}
