//! SR-IOV virtual functions as pool entries (issue 11, docs/appliance.md "SR-IOV VFs in the
//! pool"): "one SSD, several servers". The real `Appliance` in-process on 127.0.0.1:0 fronts
//! one NVMe drive whose two VFs it enables itself (`vfs = 2`), and a DMA engine with two VFs;
//! two host agents with their own keys connect over real UDP and each is given one VF of each.
//!
//! Shown: each host sees only its VFs, as ordinary functions at slots of its own; both write
//! and verify their own data concurrently through the project's NVMe driver (DMA and MSI-X
//! of a VF reach its owner only), and the data sits in that VF's slice of the backing file;
//! the DMA engine's VFs run device-to-host DMA for their owner; the PF is never given to a
//! host; one VF moves from B to A while A keeps running I/O on its own VF, and A then reads
//! what B had written there.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{Appliance, ApplianceConfig, ControlError, FunctionState, Running};
use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::{HostConfig, RemoteFunction};
use pcietun::transport::{HostId, SecretKey};

const NVME_CLASS: u32 = 0x01_08_02;
const DMA_CLASS: u32 = 0x08_80_00;
/// Each NVMe VF's namespace.
const VF_BYTES: u64 = 4 << 20;
/// The PF keeps the first slice.
const STORE_BYTES: u64 = 12 << 20;
const BLOCK: u64 = 512;

fn key_a() -> SecretKey {
    SecretKey::from_bytes([0x31; 32])
}
fn key_b() -> SecretKey {
    SecretKey::from_bytes([0x52; 32])
}
fn appliance_key() -> SecretKey {
    SecretKey::from_bytes([0x63; 32])
}
fn web1() -> HostId {
    HostId::new("web1").unwrap()
}
fn web2() -> HostId {
    HostId::new("web2").unwrap()
}
fn fid(s: &str) -> FunctionId {
    s.parse().unwrap()
}

fn start(dir: &Path) -> Running {
    appliance_key()
        .write_new(&dir.join("appliance.key"))
        .unwrap();
    let text = format!(
        r#"
listen = ["udp:127.0.0.1:0"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{a}"

[[host]]
id = "web2"
public_key = "{b}"

[[device]]
kind = "nvme"
name = "ssd"
path = "ssd.img"
size = "{STORE_BYTES}"
vfs = 2
vf_size = "{VF_BYTES}"

[[device]]
kind = "dma"
name = "dma"
buffer = "64K"
vfs = 2

[[assign]]
function = "ssd.vf0"
host = "web1"

[[assign]]
function = "ssd.vf1"
host = "web2"

[[assign]]
function = "dma.vf0"
host = "web1"

[[assign]]
function = "dma.vf1"
host = "web2"
"#,
        a = key_a().public_key(),
        b = key_b().public_key(),
    );
    let cfg = ApplianceConfig::from_toml(&text, "vfs.toml", dir).unwrap();
    Appliance::build(cfg).unwrap().start().unwrap()
}

fn agent(app: &Running, host: &str, key: SecretKey) -> Agent {
    Agent::connect(
        AgentConfig {
            target: Target::Udp(app.ready().udp_addr().unwrap()),
            host_id: host.into(),
            key: Some(key),
            appliance_key: Some(appliance_key().public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap()
}

fn classes(a: &Agent) -> Vec<(u8, u8, u32)> {
    let mut v: Vec<(u8, u8, u32)> = a
        .host()
        .functions()
        .iter()
        .map(|f| (f.bdf.device(), f.bdf.function(), f.class))
        .collect();
    v.sort();
    v
}

fn open(a: &Agent, class: u32) -> Vec<RemoteFunction> {
    let mut fs: Vec<_> = a
        .host()
        .functions()
        .into_iter()
        .filter(|f| f.class == class)
        .collect();
    fs.sort_by_key(|f| f.bdf.0);
    fs.into_iter()
        .map(|f| a.host().open(f.bdf).unwrap())
        .collect()
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
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

/// Write `rounds` × 64 KiB at LBA 0.. of the VF's namespace through the driver, reading
/// each back; returns the last pattern written.
fn nvme_io(f: RemoteFunction, seed: u8, rounds: usize) -> Result<Vec<u8>, String> {
    let mut d = NvmeDriver::open(f, NvmeConfig::default()).map_err(|e| format!("open: {e}"))?;
    let mut last = Vec::new();
    for r in 0..rounds {
        let lba = (r as u64 % 16) * 128;
        let mut w = pattern(seed ^ r as u8, 64 << 10);
        d.transfer(IoOp::Write, lba, &mut w, &mut |_| {})
            .map_err(|e| format!("write {r}: {e}"))?;
        let mut got = vec![0u8; 64 << 10];
        d.transfer(IoOp::Read, lba, &mut got, &mut |_| {})
            .map_err(|e| format!("read {r}: {e}"))?;
        if got != pattern(seed ^ r as u8, 64 << 10) {
            return Err(format!("round {r}: read back other data"));
        }
        last = got;
    }
    // The last round's data, at its LBA, for the file check; all of it on the media.
    d.flush().map_err(|e| format!("flush: {e}"))?;
    d.shutdown().map_err(|e| format!("shutdown: {e}"))?;
    let lba = ((rounds - 1) as u64 % 16) * 128;
    let mut tagged = lba.to_le_bytes().to_vec();
    tagged.extend(last);
    Ok(tagged)
}

#[test]
fn two_hosts_share_one_ssd_and_one_dma_engine_through_their_vfs() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let ctl = app.control();

    // The inventory: PFs and their VFs, each VF assigned as configured.
    let state = |id: &str| {
        ctl.functions()
            .into_iter()
            .find(|f| f.entry.id == fid(id))
            .map(|f| f.entry.state)
    };
    assert_eq!(state("ssd"), Some(FunctionState::Unassigned));
    assert_eq!(state("ssd.vf0"), Some(FunctionState::Assigned(web1())));
    assert_eq!(state("ssd.vf1"), Some(FunctionState::Assigned(web2())));
    assert_eq!(state("dma.vf1"), Some(FunctionState::Assigned(web2())));

    // The PF holds its VFs' life: never given to a host.
    assert_eq!(
        ctl.assign_wait(fid("ssd"), web1(), Duration::from_secs(5)),
        Err(ControlError::PooledVfs(fid("ssd")))
    );
    assert_eq!(
        ctl.assign_wait(fid("dma"), web2(), Duration::from_secs(5)),
        Err(ControlError::PooledVfs(fid("dma")))
    );

    let a = agent(&app, "web1", key_a());
    let b = agent(&app, "web2", key_b());
    // Each host sees its own VFs only, each as function 0 of a slot of its own.
    for h in [&a, &b] {
        let c = classes(h);
        assert_eq!(c.len(), 2, "{c:?}");
        assert!(c.iter().all(|(_, func, _)| *func == 0), "{c:?}");
        let mut kinds: Vec<u32> = c.iter().map(|(_, _, class)| *class).collect();
        kinds.sort();
        assert_eq!(kinds, [NVME_CLASS, DMA_CLASS], "{c:?}");
    }

    // Concurrent NVMe I/O, each host through its own VF.
    let [na] = <[RemoteFunction; 1]>::try_from(open(&a, NVME_CLASS))
        .ok()
        .unwrap();
    let a_own = na.bdf();
    let [nb] = <[RemoteFunction; 1]>::try_from(open(&b, NVME_CLASS))
        .ok()
        .unwrap();
    let ta = std::thread::spawn(move || nvme_io(na, 0xa1, 24));
    let tb = std::thread::spawn(move || nvme_io(nb, 0xb2, 24));
    let la = ta.join().unwrap().expect("A's I/O through ssd.vf0");
    let lb = tb.join().unwrap().expect("B's I/O through ssd.vf1");

    // Each host's data sits in its VF's slice of the one backing file.
    let file = std::fs::File::open(dir.path().join("ssd.img")).unwrap();
    for (i, last) in [&la, &lb].iter().enumerate() {
        let lba = u64::from_le_bytes(last[..8].try_into().unwrap());
        let at = STORE_BYTES - 2 * VF_BYTES + i as u64 * VF_BYTES + lba * BLOCK;
        let mut on_disk = vec![0u8; last.len() - 8];
        file.read_exact_at(&mut on_disk, at).unwrap();
        assert!(on_disk == last[8..], "VF {i}'s data at {at:#x} of the file");
    }

    // Device-to-host DMA of each host's DMA-engine VF lands in that host's memory only.
    let [da] = <[RemoteFunction; 1]>::try_from(open(&a, DMA_CLASS))
        .ok()
        .unwrap();
    let [db] = <[RemoteFunction; 1]>::try_from(open(&b, DMA_CLASS))
        .ok()
        .unwrap();
    let dra = DmaEngineDriver::open(da.clone(), 64 << 10, CompletionMode::Poll).unwrap();
    let drb = DmaEngineDriver::open(db.clone(), 64 << 10, CompletionMode::Poll).unwrap();
    let card = pattern(0x77, 16 << 10);
    for (i, chunk) in card.chunks(4096).enumerate() {
        da.bar_write(2, (i * 4096) as u64, chunk).unwrap();
    }
    dra.transfer(Direction::DmaWrite, 0, 0, card.len() as u32)
        .unwrap();
    let mut mem = vec![0u8; card.len()];
    dra.host_buffer().read_at(0, &mut mem).unwrap();
    assert!(mem == card, "A's VF DMA landed in A's memory");
    drb.host_buffer().read_at(0, &mut mem).unwrap();
    assert!(mem.iter().all(|&x| x == 0), "B received nothing of it");
    drop((dra, drb));

    // A live move: ssd.vf1 from B to A, while A keeps running I/O on its DMA-engine VF.
    let stop = Arc::new(AtomicBool::new(false));
    let io = {
        let (f, s) = (da.clone(), stop.clone());
        std::thread::spawn(move || -> Result<u64, String> {
            let mut n = 0u64;
            let mut got = vec![0u8; 512];
            while !s.load(Ordering::Relaxed) {
                let v = pattern(n as u8, 512);
                f.bar_write(2, (n % 32) * 512, &v)
                    .map_err(|e| format!("write: {e}"))?;
                f.bar_read(2, (n % 32) * 512, &mut got)
                    .map_err(|e| format!("read: {e}"))?;
                if got != v {
                    return Err(format!("round {n}: other data"));
                }
                n += 1;
            }
            Ok(n)
        })
    };
    ctl.unassign_wait(fid("ssd.vf1"), Duration::from_secs(20))
        .unwrap();
    wait_for("B to lose its NVMe VF", Duration::from_secs(10), || {
        open(&b, NVME_CLASS).is_empty()
    });
    ctl.assign_wait(fid("ssd.vf1"), web1(), Duration::from_secs(5))
        .unwrap();
    wait_for(
        "A to enumerate its second NVMe VF",
        Duration::from_secs(20),
        || open(&a, NVME_CLASS).len() == 2,
    );
    stop.store(true, Ordering::Relaxed);
    let n = io.join().unwrap().expect("A's I/O went on during the move");
    assert!(n > 0);

    // A drives the moved VF from scratch and reads what B left on its namespace.
    let moved = open(&a, NVME_CLASS)
        .into_iter()
        .find(|f| f.bdf() != a_own)
        .unwrap();
    let mut d = NvmeDriver::open(moved, NvmeConfig::default()).unwrap();
    let lba = u64::from_le_bytes(lb[..8].try_into().unwrap());
    let mut r = vec![0u8; lb.len() - 8];
    d.transfer(IoOp::Read, lba, &mut r, &mut |_| {}).unwrap();
    assert!(
        r == lb[8..],
        "A reads what B wrote through the VF that moved"
    );
    d.shutdown().unwrap();

    // Nothing crossed, nothing had to be dropped on the way.
    std::thread::sleep(Duration::from_millis(250));
    let s = app.stats().routing;
    assert_eq!(s.unowned_outbound, 0, "{s:?}");
    assert_eq!(s.foreign_completions, 0, "{s:?}");
    a.stop();
    b.stop();
    app.shutdown().unwrap();
}
