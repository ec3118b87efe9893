//! One `pcietun host` agent with two appliances at once (docs/host.md "Several appliances"),
//! all real processes on loopback: appliance `a` fronts an NVMe controller, appliance `b` a
//! DMA engine, each with its own key; the agent (`--appliance a=…@KEY --appliance b=…@KEY`)
//! shows a's functions under segment 0000 and b's under 0001, serves their vfio-user sockets
//! under names that do not collide, and `pcietun host lspci|read|write` reach each through
//! its control socket. SIGKILL b: a's controller keeps answering through the agent all the
//! while, b's function goes away (an error naming it) — and comes back, fresh, when b is
//! restarted on the same port, as the one-appliance agent reconnects.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use pcietun::host::control;
use pcietun::transport::SecretKey;

mod host_common;
mod pool_common;
use host_common::{pcietun, ready, run_logged, Proc};
use pool_common::{appliance, appliance_on};

const FALLBACK: &str = "opening a session of our own";
const NVME: &str = "[[device]]\nkind = \"nvme\"\nname = \"ssd\"\npath = \"ns0.img\"\nsize = \"1M\"\nassign = \"h\"\n";
const DMA: &str = "[[device]]\nkind = \"dma\"\nname = \"dma\"\nbuffer = \"64K\"\nassign = \"h\"\n";

struct Rig {
    key_file: PathBuf,
    ctl: PathBuf,
    appliances: Vec<String>,
}

impl Rig {
    /// `pcietun host ARGS` with the agent's own appliance list, key and control socket.
    fn tool(&self, args: &[&str]) -> Output {
        let mut c = pcietun();
        c.arg("host").args(args);
        for a in &self.appliances {
            c.args(["--appliance", a]);
        }
        c.args(["--host-id", "h", "--key"])
            .arg(&self.key_file)
            .arg("--control")
            .arg(&self.ctl);
        let o = run_logged(&mut c, args);
        assert!(
            !String::from_utf8_lossy(&o.stderr).contains(FALLBACK),
            "the tool opened sessions of its own"
        );
        o
    }

    /// `tool` that must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let o = self.tool(args);
        assert!(o.status.success(), "{args:?}");
        String::from_utf8(o.stdout).unwrap()
    }

    /// One request on the control socket (quicker than a tool process, for polling).
    fn ask(&self, line: &str) -> serde_json::Value {
        control::request(&self.ctl, line, Duration::from_secs(10)).unwrap()
    }

    /// `status`: the function address of segment `seg` (its only one), if it has one.
    fn function_of(&self, seg: &str) -> Option<String> {
        let st = self.ask("status");
        let fs = st["functions"].as_array().unwrap();
        let mine: Vec<&serde_json::Value> = fs.iter().filter(|f| f["segment"] == seg).collect();
        assert!(mine.len() <= 1, "{st}");
        mine.first().map(|f| f["bdf"].as_str().unwrap().to_string())
    }

    fn session(&self, seg: usize) -> String {
        self.ask("status")["appliances"][seg]["session"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

/// The NVMe controller's CC register (BAR0 + 0x14) through the agent: its value.
fn cc(rig: &Rig, nvme: &str) -> serde_json::Value {
    rig.ask(&format!("read {nvme} 0 0x14 4"))
}

fn sockets(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn two_appliances_under_their_own_segments_and_one_lost_leaves_the_other_alone() {
    let dir = tempfile::tempdir().unwrap();
    let host_key = SecretKey::generate();
    let (ka, kb) = (SecretKey::generate(), SecretKey::generate());
    let sub = |n: &str| {
        let d = dir.path().join(n);
        std::fs::create_dir(&d).unwrap();
        d
    };
    let hosts = [("h", &host_key)];
    let a = appliance(&sub("a"), &ka, &hosts, NVME, "");
    let b = appliance(&sub("b"), &kb, &hosts, DMA, "");
    let key_file = dir.path().join("host.key");
    host_key.write_new(&key_file).unwrap();
    let rig = Rig {
        key_file,
        ctl: dir.path().join("ctl").join("agent.sock"),
        appliances: vec![
            format!("a=udp:{}@{}", a.udp, ka.public_key()),
            format!("b=udp:{}@{}", b.udp, kb.public_key()),
        ],
    };

    // A name given twice is refused before any session opens, in one line.
    let o = pcietun()
        .args(["host", "--appliance", &rig.appliances[0]])
        .args(["--appliance", &rig.appliances[0].replace(&a.udp, &b.udp)])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("appliance \"a\" is given twice"), "{err}");

    let socks = dir.path().join("vfio");
    let mut agent = pcietun();
    agent.arg("host");
    for a in &rig.appliances {
        agent.args(["--appliance", a]);
    }
    let mut agent = agent
        .args(["--host-id", "h", "--key"])
        .arg(&rig.key_file)
        .arg("--control")
        .arg(&rig.ctl)
        .arg("--vfio-user")
        .arg(&socks)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = ready(&mut agent, "host ready:");
    let _agent = Proc(agent);

    // Each appliance's function under its own segment; plain BDF for segment 0.
    let st = rig.ask("status");
    assert_eq!(st["ok"], true, "{st}");
    assert_eq!(st["appliances"][0]["name"], "a");
    assert_eq!(st["appliances"][1]["name"], "b");
    assert_eq!(st["appliances"][1]["segment"], "0001");
    assert_eq!(rig.session(0), "up");
    assert_eq!(rig.session(1), "up");
    let fs = st["functions"].as_array().unwrap();
    assert_eq!(fs.len(), 2, "{st}");
    let nvme = rig.function_of("0000").expect("a's NVMe");
    let dma = rig.function_of("0001").expect("b's DMA engine");
    assert!(
        !nvme.contains("0000:"),
        "segment 0 prints plain BDFs: {nvme}"
    );
    assert!(dma.starts_with("0001:"), "{dma}");
    assert!(fs
        .iter()
        .any(|f| f["class"] == "010802" && f["bdf"] == nvme.as_str()));
    assert!(fs
        .iter()
        .any(|f| f["device"] == "0e02" && f["bdf"] == dma.as_str()));

    // Sockets that do not collide, even when both functions have the same BDF.
    let names = sockets(&socks);
    assert_eq!(
        names,
        [format!("{dma}.sock"), format!("{nvme}.sock")],
        "{line}"
    );
    for n in &names {
        assert!(line.contains(n.as_str()), "{line}");
    }

    // lspci shows both segments, root port first in each.
    let list = rig.ok(&["lspci"]);
    let addrs: Vec<&str> = list.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(
        addrs,
        [
            "0000:00:00.0".to_string(),
            format!("0000:{nvme}"),
            "0001:00:00.0".to_string(),
            dma.clone()
        ],
        "{list}"
    );
    let one = rig.ok(&["lspci", "-x", &dma]);
    assert!(one.starts_with(&format!("{dma} ")), "{one}");
    let hex_lines = one
        .lines()
        .filter(|l| l.len() > 4 && &l[2..4] == ": ")
        .count();
    assert_eq!(hex_lines, 4, "64 bytes, 16 per line: {one}");

    // read/write reach each appliance's function, and only it.
    assert!(rig
        .ok(&["write", &nvme, "0", "0x14", "0x460000"])
        .is_empty());
    assert!(rig
        .ok(&["write", &dma, "2", "0x40", "0x12345678"])
        .is_empty());
    assert_eq!(rig.ok(&["read", &nvme, "0", "0x14"]).trim(), "0x00460000");
    assert_eq!(rig.ok(&["read", &dma, "2", "0x40"]).trim(), "0x12345678");
    let o = rig.tool(&["read", "0002:01:00.0", "0", "0"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("no appliance at segment 0002"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // SIGKILL b. a's controller answers through the agent the whole time, with the value it
    // held; b's session goes down and its function away.
    let b_udp = b.udp.clone();
    drop(b);
    let t0 = Instant::now();
    let mut reads = 0;
    let mut down_at = None;
    while down_at.is_none_or(|d: Instant| d.elapsed() < Duration::from_secs(2)) {
        assert!(t0.elapsed() < Duration::from_secs(30), "b never went down");
        let r = cc(&rig, &nvme);
        assert_eq!(r["value"], 0x46_0000, "a disturbed after b was killed: {r}");
        reads += 1;
        if down_at.is_none() && rig.session(1) == "down" && rig.function_of("0001").is_none() {
            down_at = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(reads > 20, "{reads}");
    assert_eq!(rig.session(0), "up");
    let o = rig.tool(&["read", &dma, "2", "0x40"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(&format!("no tunnelled function at {dma}")),
        "{err}"
    );
    assert!(
        rig.ok(&["lspci"]).contains("0001:00:00.0 "),
        "b's root port stays"
    );

    // b restarts on its port with its key: the agent reconnects, b's function is back, fresh
    // (a new process: its buffer is zero), and a was not touched.
    let _b2 = appliance_on(&sub("b2"), &format!("udp:{b_udp}"), &kb, &hosts, DMA, "");
    let t0 = Instant::now();
    while rig.function_of("0001").as_deref() != Some(dma.as_str()) {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "b's function did not come back"
        );
        assert_eq!(cc(&rig, &nvme)["value"], 0x46_0000);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(rig.session(1), "up");
    assert_eq!(rig.ok(&["read", &dma, "2", "0x40"]).trim(), "0x00000000");
    assert!(rig.ok(&["write", &dma, "2", "0x40", "0xcafe"]).is_empty());
    assert_eq!(rig.ok(&["read", &dma, "2", "0x40"]).trim(), "0x0000cafe");
    assert_eq!(rig.ok(&["read", &nvme, "0", "0x14"]).trim(), "0x00460000");
}
