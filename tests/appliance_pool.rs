//! Two hosts with different keys on one appliance (issue 11, docs/appliance.md "Isolation"):
//! the real `Appliance` in-process on 127.0.0.1:0 and two of this crate's host agents over
//! real UDP, each driving its functions with the project's drivers.
//!
//! Every scenario of the issue's opening now fails for host B: it cannot see, read or
//! overwrite A's card buffer even with its own BARs at the same addresses; A's device-to-host
//! DMA lands in A's memory only; B disconnecting, restarting, or opening a second session of
//! its own id resets B's functions only. Plus concurrent I/O on both hosts' functions with the
//! data verified, and a live move of an NVMe function from A to B while both keep running
//! I/O on their other functions (no error on those; B reads what the namespace held, and the
//! controller's volatile state starts fresh).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pcietun::appliance::inventory::FunctionId;
use pcietun::appliance::{
    Appliance, ApplianceConfig, ControlError, FunctionState, PoolEvent, Running,
};
use pcietun::drivers::dma_engine::{Direction, DmaEngineDriver};
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::{HostConfig, HostEvent, RemoteFunction};
use pcietun::pci::class::dma_engine::reg;
use pcietun::transport::{HostId, SecretKey};

fn key_a() -> SecretKey {
    SecretKey::from_bytes([0x11; 32])
}
fn key_b() -> SecretKey {
    SecretKey::from_bytes([0x44; 32])
}
fn appliance_key() -> SecretKey {
    SecretKey::from_bytes([0x22; 32])
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

const DMA_CLASS: u32 = 0x08_80_00;
const NVME_CLASS: u32 = 0x01_08_02;

/// web1 owns `dma-a` (slot 0 of its view) and the NVMe `ssd`; web2 owns `dma-b` (slot 0 of
/// its view, so both hosts program the same BAR addresses) and `dma-c`.
fn config(dir: &Path) -> ApplianceConfig {
    let key_file = dir.join("appliance.key");
    if !key_file.exists() {
        appliance_key().write_new(&key_file).unwrap();
    }
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
kind = "dma"
name = "dma-a"
buffer = "1M"
assign = "web1"

[[device]]
kind = "dma"
name = "dma-b"
buffer = "1M"
assign = "web2"

[[device]]
kind = "nvme"
name = "ssd"
path = "ns0.img"
size = "4M"
assign = "web1"

[[device]]
kind = "dma"
name = "dma-c"
buffer = "64K"
assign = "web2"
"#,
        a = key_a().public_key(),
        b = key_b().public_key(),
    );
    ApplianceConfig::from_toml(&text, "pool.toml", dir).unwrap()
}

fn start(dir: &Path) -> Running {
    Appliance::build(config(dir)).unwrap().start().unwrap()
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

/// The function of `class` at `slot` of the agent's tunnel bus.
fn open(a: &Agent, class: u32, slot: u8) -> RemoteFunction {
    let info = a
        .host()
        .functions()
        .into_iter()
        .find(|f| f.class == class && f.bdf.device() == slot)
        .unwrap_or_else(|| panic!("no {class:06x} at slot {slot}: {:?}", a.host().functions()));
    a.host().open(info.bdf).unwrap()
}

fn classes(a: &Agent) -> Vec<(u8, u32)> {
    let mut v: Vec<(u8, u32)> = a
        .host()
        .functions()
        .iter()
        .map(|f| (f.bdf.device(), f.class))
        .collect();
    v.sort();
    v
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn each_host_sees_reads_writes_and_receives_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let a = agent(&app, "web1", key_a());
    let b = agent(&app, "web2", key_b());
    // Each host's view holds only its own functions, from slot 0 up.
    assert_eq!(classes(&a), [(0, DMA_CLASS), (1, NVME_CLASS)]);
    assert_eq!(classes(&b), [(0, DMA_CLASS), (1, DMA_CLASS)]);

    let fa = open(&a, DMA_CLASS, 0);
    let fb = open(&b, DMA_CLASS, 0);
    // Both hosts gave their card the same bus addresses: only the session tells them apart.
    assert_eq!(fa.info().bars[2].base, fb.info().bars[2].base);
    assert_eq!(fa.info().bars[0].base, fb.info().bars[0].base);

    // A's data in its card buffer; B writes its own at the same address, reads its own back.
    let pa = vec![0xaa; 4096];
    let pb = vec![0xbb; 4096];
    fa.bar_write(2, 0, &pa).unwrap();
    fb.bar_write(2, 0, &pb).unwrap();
    let mut got = vec![0u8; 4096];
    fb.bar_read(2, 0, &mut got).unwrap();
    assert!(got == pb, "B reads its own buffer, not A's");
    fa.bar_read(2, 0, &mut got).unwrap();
    assert!(got == pa, "B's writes did not land in A's buffer");

    // Device-to-host DMA of A's card lands in A's memory and nowhere else (both drivers map
    // the same IOVA).
    let da = DmaEngineDriver::open(fa.clone(), 1 << 20, CompletionMode::Poll).unwrap();
    let db = DmaEngineDriver::open(fb.clone(), 1 << 20, CompletionMode::Poll).unwrap();
    let card: Vec<u8> = (0..1u32 << 20).map(|i| (i * 7 + 3) as u8).collect();
    for (i, chunk) in card.chunks(4096).enumerate() {
        fa.bar_write(2, (i * 4096) as u64, chunk).unwrap();
    }
    da.transfer(Direction::DmaWrite, 0, 0, 1 << 20).unwrap();
    let host_mem = |d: &DmaEngineDriver| {
        let mut m = vec![0u8; 1 << 20];
        d.host_buffer().read_at(0, &mut m).unwrap();
        m
    };
    assert!(host_mem(&da) == card, "A got all of its DMA");
    assert!(
        host_mem(&db).iter().all(|&x| x == 0),
        "B received nothing of A's DMA"
    );

    // Host-to-device DMA of B's card reads B's memory and writes B's card only.
    let mine = vec![0x5c; 8192];
    db.host_buffer().write_at(0, &mine).unwrap();
    db.transfer(Direction::DmaRead, 0, 0, 8192).unwrap();
    let mut back = vec![0u8; 8192];
    fb.bar_read(2, 0, &mut back[..4096]).unwrap();
    fb.bar_read(2, 4096, &mut back[4096..]).unwrap();
    assert!(back == mine, "B's card holds B's memory");
    fa.bar_read(2, 0, &mut got).unwrap();
    assert!(got == card[..4096], "A's card untouched by B's DMA");

    // Nothing crossed, nothing had to be dropped on the way.
    std::thread::sleep(Duration::from_millis(250));
    let s = app.stats().routing;
    assert_eq!(s.unowned_outbound, 0, "{s:?}");
    assert_eq!(s.foreign_completions, 0, "{s:?}");
    drop((da, db));
    a.stop();
    b.stop();
    app.shutdown().unwrap();
}

#[test]
fn a_host_leaving_restarting_or_reconnecting_resets_only_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let events = app.control().subscribe();
    let a = agent(&app, "web1", key_a());
    let b = agent(&app, "web2", key_b());
    let fa = open(&a, DMA_CLASS, 0);
    fa.bar_write32(0, reg::HOST_ADDR_LO, 0xabcd_0000).unwrap();
    fa.bar_write(2, 0, &[0x77; 64]).unwrap();
    let fb = open(&b, DMA_CLASS, 0);
    fb.bar_write32(0, reg::HOST_ADDR_LO, 0x1111_0000).unwrap();
    drop(fb);

    // B goes away: its session ends, its functions are reset; A's state is all there.
    b.stop();
    drop(b);
    let lost = |e: &PoolEvent| matches!(e, PoolEvent::HostLost(h) if *h == web2());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let e = events
            .recv_deadline(deadline)
            .expect("web2's session is seen going down");
        if lost(&e) {
            break;
        }
    }
    assert_eq!(fa.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0xabcd_0000);
    let mut got = [0u8; 64];
    fa.bar_read(2, 0, &mut got).unwrap();
    assert_eq!(got, [0x77; 64]);

    // B comes back (a new epoch): its card is reset, A's is not.
    let b = agent(&app, "web2", key_b());
    let fb = open(&b, DMA_CLASS, 0);
    assert_eq!(fb.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0);
    fb.bar_write32(0, reg::HOST_ADDR_LO, 0x2222_0000).unwrap();
    assert_eq!(fa.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0xabcd_0000);

    // A second session of web2 (another process with the same key, while the first runs)
    // replaces the first and resets web2's functions; web1 keeps running undisturbed.
    let resets = app.stats().routing.host_resets;
    let b2 = agent(&app, "web2", key_b());
    let fb2 = open(&b2, DMA_CLASS, 0);
    assert_eq!(fb2.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0);
    assert_eq!(fa.bar_read32(0, reg::HOST_ADDR_LO).unwrap(), 0xabcd_0000);
    fa.bar_read(2, 0, &mut got).unwrap();
    assert_eq!(got, [0x77; 64]);
    std::thread::sleep(Duration::from_millis(250));
    let s = app.stats().routing;
    assert!(s.host_resets > resets, "{s:?}");
    let hosts = app.control().hosts();
    let w1 = hosts.iter().find(|h| h.id == web1()).unwrap();
    assert!(w1.connected);
    assert_eq!(w1.functions, [fid("dma-a"), fid("ssd")]);
    drop((fb, fb2));
    a.stop();
    b.stop();
    b2.stop();
    app.shutdown().unwrap();
}

/// Keep writing and reading back a pattern on a DMA engine's buffer until `stop`; the number
/// of rounds, or the first error.
fn io_loop(f: RemoteFunction, seed: u8, stop: Arc<AtomicBool>) -> Result<u64, String> {
    let mut n = 0u64;
    let mut got = vec![0u8; 512];
    while !stop.load(Ordering::Relaxed) {
        let v: Vec<u8> = (0..512).map(|i| (i as u8) ^ seed ^ (n as u8)).collect();
        let off = (n % 64) * 512;
        f.bar_write(2, off, &v).map_err(|e| format!("write: {e}"))?;
        f.bar_read(2, off, &mut got)
            .map_err(|e| format!("read: {e}"))?;
        if got != v {
            return Err(format!("round {n}: read back other data"));
        }
        n += 1;
    }
    Ok(n)
}

#[test]
fn an_nvme_function_moves_from_a_to_b_while_both_run_io() {
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let ctl = app.control();
    let a = agent(&app, "web1", key_a());
    let b = agent(&app, "web2", key_b());

    // A writes a pattern to the namespace and leaves some volatile state behind.
    let data: Vec<u8> = (0..64 * 1024u32).map(|i| (i % 251) as u8).collect();
    {
        let nvme = open(&a, NVME_CLASS, 1);
        let mut d = NvmeDriver::open(nvme, NvmeConfig::default()).unwrap();
        let mut w = data.clone();
        d.transfer(IoOp::Write, 8, &mut w, &mut |_| {}).unwrap();
        d.flush().unwrap();
        // Not shut down: its queues stay configured on the controller, as a crashed
        // driver's would.
        std::mem::forget(d);
    }

    // Both hosts keep I/O running on the functions that do not move.
    let stop = Arc::new(AtomicBool::new(false));
    let ta = {
        let (f, s) = (open(&a, DMA_CLASS, 0), stop.clone());
        std::thread::spawn(move || io_loop(f, 0x11, s))
    };
    let tb = {
        let (f, s) = (open(&b, DMA_CLASS, 0), stop.clone());
        std::thread::spawn(move || io_loop(f, 0x22, s))
    };
    std::thread::sleep(Duration::from_millis(200));

    // Refusals first: typed, and nothing changes.
    assert_eq!(
        ctl.assign_wait(fid("ssd"), web2(), Duration::from_secs(5)),
        Err(ControlError::AlreadyAssigned {
            function: fid("ssd"),
            owner: web1()
        })
    );
    assert_eq!(
        ctl.unassign_wait(fid("nope"), Duration::from_secs(5)),
        Err(ControlError::UnknownFunction(fid("nope")))
    );
    assert_eq!(
        ctl.assign_wait(
            fid("ssd"),
            HostId::new("db9").unwrap(),
            Duration::from_secs(5)
        ),
        Err(ControlError::UnknownHost(HostId::new("db9").unwrap()))
    );

    // The orderly move: A's agent withdraws the function and acknowledges, the appliance
    // detaches and resets it, then B's slot shows it.
    ctl.unassign_wait(fid("ssd"), Duration::from_secs(20))
        .unwrap();
    let ssd = ctl
        .functions()
        .into_iter()
        .find(|f| f.entry.id == fid("ssd"))
        .unwrap();
    assert_eq!(ssd.entry.state, FunctionState::Unassigned);
    wait_for(
        "A to lose the NVMe function",
        Duration::from_secs(10),
        || classes(&a) == [(0, DMA_CLASS)],
    );
    ctl.assign_wait(fid("ssd"), web2(), Duration::from_secs(5))
        .unwrap();
    wait_for(
        "B to enumerate the NVMe function",
        Duration::from_secs(20),
        || classes(&b).contains(&(2, NVME_CLASS)),
    );
    let mut added = false;
    while let Some(e) = b.host().next_event(Duration::from_millis(0)) {
        added |= matches!(e, HostEvent::FunctionAdded(bdf) if bdf.device() == 2);
    }
    assert!(added, "B's agent raised FunctionAdded");

    // B drives the controller from scratch (nothing of A's queues is left: a fresh
    // controller accepts a fresh driver) and reads what the namespace held.
    let nvme = open(&b, NVME_CLASS, 2);
    let mut d = NvmeDriver::open(nvme, NvmeConfig::default()).unwrap();
    let mut r = vec![0u8; data.len()];
    d.transfer(IoOp::Read, 8, &mut r, &mut |_| {}).unwrap();
    assert!(r == data, "B reads what A wrote to the namespace");
    d.shutdown().unwrap();

    // The functions that did not move never saw an error.
    stop.store(true, Ordering::Relaxed);
    let na = ta.join().unwrap().expect("A's I/O on dma-a");
    let nb = tb.join().unwrap().expect("B's I/O on dma-b");
    assert!(na > 0 && nb > 0, "{na} {nb}");
    let hosts = ctl.hosts();
    let w2 = hosts.iter().find(|h| h.id == web2()).unwrap();
    assert_eq!(w2.functions, [fid("dma-b"), fid("ssd"), fid("dma-c")]);
    a.stop();
    b.stop();
    app.shutdown().unwrap();
}

#[test]
fn a_card_is_added_used_and_removed_while_another_host_runs_io() {
    use pcietun::appliance::config::DeviceSpec;
    let dir = tempfile::tempdir().unwrap();
    let app = start(dir.path());
    let ctl = app.control();
    let events = ctl.subscribe();
    let a = agent(&app, "web1", key_a());
    let b = agent(&app, "web2", key_b());
    let stop = Arc::new(AtomicBool::new(false));
    let io_a = {
        let f = open(&a, DMA_CLASS, 0);
        let stop = stop.clone();
        std::thread::spawn(move || io_loop(f, 0x5a, stop))
    };
    let t = Duration::from_secs(10);
    let dma = DeviceSpec::Dma {
        buffer: 64 << 10,
        vfs: 0,
    };
    let id = ctl.add_function_wait(&dma, Some("hot"), t).unwrap();
    assert_eq!(id, fid("hot"));
    wait_for("FunctionAdded", t, || {
        events
            .try_iter()
            .any(|e| e == PoolEvent::FunctionAdded(fid("hot")))
    });
    let st = ctl
        .functions()
        .into_iter()
        .find(|f| f.entry.id == id)
        .unwrap();
    assert_eq!(st.entry.state, FunctionState::Unassigned);
    // A name in use, a spec that cannot be built: refused, nothing added.
    assert_eq!(
        ctl.add_function_wait(&dma, Some("dma-a"), t),
        Err(ControlError::Inventory(
            pcietun::appliance::inventory::InventoryError::DuplicateId(fid("dma-a"))
        ))
    );
    let missing = DeviceSpec::Nvme {
        path: dir.path().join("missing.img"),
        create_size: None,
        serial: None,
        sriov: None,
    };
    let e = ctl.add_function_wait(&missing, None, t).unwrap_err();
    assert!(matches!(e, ControlError::BadDevice(_)), "{e}");
    assert!(e.to_string().contains("missing.img"), "{e}");
    assert_eq!(ctl.functions().len(), 5);

    // web2 gets it at its next free slot and uses it.
    ctl.assign_wait(id.clone(), web2(), t).unwrap();
    wait_for("web2 sees the new card", t, || {
        classes(&b).contains(&(2, DMA_CLASS))
    });
    let f = open(&b, DMA_CLASS, 2);
    let v: Vec<u8> = (0..256).map(|i| i as u8).collect();
    f.bar_write(2, 0, &v).unwrap();
    let mut got = vec![0u8; 256];
    f.bar_read(2, 0, &mut got).unwrap();
    assert_eq!(got, v);
    drop(f);
    // Assigned: removal refused.
    assert_eq!(
        ctl.remove_function_wait(id.clone(), t),
        Err(ControlError::AlreadyAssigned {
            function: id.clone(),
            owner: web2()
        })
    );
    ctl.unassign_wait(id.clone(), t).unwrap();
    ctl.remove_function_wait(id.clone(), t).unwrap();
    assert!(ctl.functions().iter().all(|f| f.entry.id != id));
    assert_eq!(
        ctl.remove_function_wait(id.clone(), t),
        Err(ControlError::UnknownFunction(id.clone()))
    );
    // The device number is free again: the next card lands there, under its derived id.
    let again = ctl.add_function_wait(&dma, None, t).unwrap();
    assert_eq!(again, fid("04.0"));
    ctl.remove_function_wait(again, t).unwrap();

    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let n = io_a.join().unwrap().expect("web1's I/O saw no error");
    assert!(n > 0);
    // web2's own cards are where they were.
    assert_eq!(classes(&b), [(0, DMA_CLASS), (1, DMA_CLASS)]);
}
