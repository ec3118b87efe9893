//! Third-party vfio-user device servers as cards, through the whole tunnel without a guest: a
//! real `pcietun appliance --device vfio-user=SOCKET` process → UDP on loopback → this crate's
//! host `Agent`, which enumerates the card through its root port. The configuration space the
//! host reads equals what the server reports to a vfio-user client directly (a second server
//! process of the same device, read with the client library), apart from the registers the
//! host's enumeration programs; memory BAR reads and writes reach the server.
//!
//! Peers: libvfio-user's `gpio-pci-idio-16` sample (tests/vfio_user_peers/build-libvfio-user.sh)
//! and QEMU's `pci-serial` and `i6300esb` device models over `x-vfio-user-server` (the QEMU of
//! tests/guest/build-qemu.sh, configured with the vfio-user server). A missing peer prints
//! `SKIPPED:` (fails under PCIETUN_REQUIRE_ALL=1). Every wait is bounded.

mod prereq;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use pcietun::endpoint::vfio_user_client::{ClientConfig, VfioUserClient};
use pcietun::host::agent::{Agent, AgentConfig, Target};
use pcietun::host::HostConfig;

/// A child process killed and reaped on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_socket(p: &Path) {
    let end = Instant::now() + Duration::from_secs(20);
    while !p.exists() {
        assert!(Instant::now() < end, "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The QEMU with the vfio-user server (`PCIETUN_QEMU`, else the newest cached build).
fn qemu(what: &str) -> Option<PathBuf> {
    let found = std::env::var("PCIETUN_QEMU")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            let cache =
                std::env::var("PCIETUN_CACHE").unwrap_or_else(|_| "/var/cache/pcietun".into());
            let mut v: Vec<PathBuf> = std::fs::read_dir(Path::new(&cache).join("qemu"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("qemu-system-x86_64"))
                .filter(|p| p.is_file())
                .collect();
            v.sort();
            v.pop()
        });
    let ok = found.as_ref().is_some_and(|q| {
        Command::new(q)
            .args(["-object", "help"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("x-vfio-user-server"))
    });
    if !ok {
        prereq::skip(
            what,
            "no QEMU with x-vfio-user-server (run tests/guest/build-qemu.sh)",
        );
        return None;
    }
    found
}

/// How to start one server process of a device on a socket.
#[derive(Clone)]
enum Peer {
    Sample(PathBuf),
    Qemu(PathBuf, &'static str),
}

impl Peer {
    fn spawn(&self, sock: &Path) -> Proc {
        let _ = std::fs::remove_file(sock);
        let child = match self {
            Peer::Sample(bin) => Command::new(bin)
                .arg(sock)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
            Peer::Qemu(q, device) => Command::new(q)
                .args(["-L", "/usr/share/qemu", "-L", "/usr/share/seabios"])
                .args(["-accel", "tcg", "-nodefaults", "-display", "none"])
                .args(["-machine", "x-remote,vfio-user=on,auto-shutdown=on"])
                .args(["-device", &format!("{device},id=d0")])
                .arg("-object")
                .arg(format!(
                    "x-vfio-user-server,id=v0,type=unix,path={},device=d0",
                    sock.display()
                ))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn(),
        }
        .unwrap();
        let p = Proc(child);
        wait_socket(sock);
        p
    }
}

/// Config space as a server reports it to a client connecting directly.
fn direct_config(peer: &Peer, dir: &Path) -> Vec<u8> {
    let sock = dir.join("direct.sock");
    let _server = peer.spawn(&sock);
    let c = VfioUserClient::connect(&ClientConfig::new(&sock)).unwrap();
    c.info().config.clone()
}

struct Tunnel {
    agent: Agent,
    _appliance: Proc,
    _server: Proc,
    /// The sockets' directory, removed after the processes are gone.
    _dir: Option<tempfile::TempDir>,
}

fn tunnel(peer: &Peer, dir: &Path) -> Tunnel {
    let sock = dir.join("tunnel.sock");
    let server = peer.spawn(&sock);
    let port = free_udp_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["appliance", "--listen", &format!("udp:127.0.0.1:{port}")])
        .arg("--device")
        .arg(format!("vfio-user={}", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let appliance = Proc(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("appliance ready:"), "{line:?}");
    let agent = Agent::connect(
        AgentConfig {
            target: Target::Udp(format!("127.0.0.1:{port}").parse().unwrap()),
            host_id: "host".into(),
            key: None,
            appliance_key: None,
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap();
    Tunnel {
        agent,
        _appliance: appliance,
        _server: server,
        _dir: None,
    }
}

/// Registers the host's enumeration programs (or the appliance owns): Command, BARs,
/// Interrupt Line, and the Status bits a live function may set.
fn programmed(reg: usize) -> bool {
    matches!(reg, 0x04..=0x07 | 0x10..=0x27 | 0x30..=0x33 | 0x3c)
}

/// Compare the config space the host reads through the tunnel with the direct one. Returns
/// the function's info for further checks.
fn compare_config(peer: &Peer, what: &str) -> (Tunnel, pcietun::host::enumerate::FunctionInfo) {
    let dir = tempfile::tempdir().unwrap();
    let direct = direct_config(peer, dir.path());
    let mut t = tunnel(peer, dir.path());
    let fns = t.agent.host().functions();
    assert_eq!(fns.len(), 1, "{what}: one function enumerated");
    let f = fns[0].clone();
    let mut through = Vec::new();
    for reg in (0..direct.len().min(256)).step_by(4) {
        let v = t.agent.host().cfg_read(f.bdf, reg as u16).unwrap();
        through.extend_from_slice(&v.to_le_bytes());
    }
    for (i, (a, b)) in direct.iter().zip(&through).enumerate() {
        if programmed(i) {
            continue;
        }
        assert_eq!(
            a, b,
            "{what}: config byte {i:#x}: server {a:#04x}, through the tunnel {b:#04x}"
        );
    }
    // The BAR types (IO / memory bits) are the server's.
    for bar in 0..6 {
        let o = 0x10 + 4 * bar;
        let d = u32::from_le_bytes(direct[o..o + 4].try_into().unwrap());
        let th = u32::from_le_bytes(through[o..o + 4].try_into().unwrap());
        if th != 0 {
            assert_eq!(d & 1, th & 1, "{what}: BAR{bar} space type");
        }
    }
    t._dir = Some(dir); // the sockets live as long as the tunnel
    (t, f)
}

#[test]
fn gpio_sample_config_space_through_the_tunnel() {
    let Some(bin) =
        prereq::libvfio_user_sample("gpio-pci-idio-16 through the tunnel", "gpio-pci-idio-16")
    else {
        return;
    };
    let (_t, f) = compare_config(&Peer::Sample(bin), "gpio-pci-idio-16");
    assert_eq!((f.vendor, f.device), (0x494f, 0x0dc8), "the sample's IDs");
}

#[test]
fn qemu_pci_serial_config_space_through_the_tunnel() {
    let Some(q) = qemu("QEMU pci-serial through the tunnel") else {
        return;
    };
    let (_t, f) = compare_config(&Peer::Qemu(q, "pci-serial"), "pci-serial");
    assert_eq!(f.class, 0x070002, "a 16550 serial controller");
}

/// Legacy interrupts end to end (issue 16): QEMU's `pci-serial` (a 16550 with no MSI, so
/// INTx is all it has) over `x-vfio-user-server`, fronted by a real appliance process, its
/// function enumerated by the host through the tunnel. Enabling the THR-empty interrupt
/// (IER = 0x02, with Command.INTx Disable clear) makes the UART interrupt at once: QEMU
/// signals the INTx eventfd, the appliance's function sends Assert_INTA, and the host sees it
/// (its interrupt counter, the function's INTx eventfd, Status.Interrupt Status). Reading IIR
/// (a BAR access: INTx's end of interrupt) deasserts the line; a byte sent in loopback mode
/// empties THR again, and that second interrupt arrives too.
#[test]
fn qemu_pci_serial_intx_reaches_the_host_through_the_tunnel() {
    use pcietun::host::vfio_user::IrqIndex;
    use std::sync::atomic::Ordering;

    let Some(q) = qemu("QEMU pci-serial INTx through the tunnel") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let t = tunnel(&Peer::Qemu(q, "pci-serial"), dir.path());
    let host = t.agent.host();
    let fns = host.functions();
    assert_eq!(fns.len(), 1, "one function enumerated");
    let f = fns[0].clone();
    assert_eq!(f.class, 0x070002, "a 16550 serial controller");
    assert_eq!(f.interrupt_pin, 1, "INTA");
    assert!(
        f.bars[0].io && f.bars[0].size >= 8,
        "BAR0: the UART's IO ports"
    );
    let func = host.open(f.bdf).expect("open the function");
    let intx = func.interrupt_eventfd(IrqIndex::Intx, 0).unwrap();
    // IO space on, INTx Disable clear.
    let cmd = func.config_read(0x04).unwrap() & 0xffff;
    func.config_write(0x04, (cmd & !0x0400) | 0x0001).unwrap();
    let stats = host.stats();
    let interrupts = || stats.interrupts.load(Ordering::Relaxed);
    let unknown = || stats.unknown_requester.load(Ordering::Relaxed);
    let status_int =
        |func: &pcietun::host::RemoteFunction| func.config_read(0x04).unwrap() >> 16 & 0x0008 != 0;
    // Wait (bounded) for `ok`, saying what the host counted if it never holds.
    let wait = |what: &str, ok: &dyn Fn() -> bool| {
        let end = Instant::now() + Duration::from_secs(10);
        while !ok() {
            assert!(
                Instant::now() < end,
                "{what} within 10 s (host interrupts {}, unknown requesters {})",
                interrupts(),
                unknown()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    };
    let (before, unknown_before) = (interrupts(), unknown());
    assert!(!status_int(&func), "no interrupt before IER is written");

    // IER: THR-empty interrupt. THR is empty: the UART interrupts at once.
    func.bar_write(0, 1, &[0x02]).unwrap();
    wait("an Assert_INTA at the host", &|| interrupts() > before);
    assert_eq!(
        pcietun::host::RemoteFunction::wait_interrupt(&intx, Duration::from_secs(5)).unwrap(),
        1,
        "the function's INTx eventfd signalled once"
    );
    assert!(
        status_int(&func),
        "Status.Interrupt Status set while asserted"
    );
    assert_eq!(
        unknown(),
        unknown_before,
        "the message came from the function"
    );
    // IIR: THR empty is the pending interrupt; reading it clears it (and the access is the
    // end of interrupt: the line drops).
    let mut iir = [0u8; 1];
    func.bar_read(0, 2, &mut iir).unwrap();
    assert_eq!(iir[0] & 0x0f, 0x02, "IIR: THR empty pending");
    wait("the line deasserted", &|| !status_int(&func));

    // Loopback mode (MCR bit 4), a byte to THR: THR empties again, a second interrupt.
    let n = interrupts();
    func.bar_write(0, 4, &[0x10]).unwrap();
    func.bar_write(0, 0, &[0x5a]).unwrap();
    wait("a second Assert_INTA", &|| interrupts() > n);
    let mut b = [0u8; 1];
    func.bar_read(0, 0, &mut b).unwrap();
    assert_eq!(b[0], 0x5a, "the byte came back through loopback");
    assert_eq!(unknown(), unknown_before);
}

#[test]
fn qemu_i6300esb_config_and_mmio_through_the_tunnel() {
    let Some(q) = qemu("QEMU i6300esb through the tunnel") else {
        return;
    };
    let (t, f) = compare_config(&Peer::Qemu(q, "i6300esb"), "i6300esb");
    assert_eq!(f.class, 0x088000);
    // Its memory BAR0 through the tunnel: reads complete (MRd → REGION_READ → CplD), and the
    // unlock sequence (0x80, 0x86 to the reload register) is a write the server takes.
    let func = t.agent.host().open(f.bdf).expect("open the function");
    func.config_write(0x04, 0x0002).unwrap();
    let mut b = [0u8; 4];
    func.bar_read(0, 0x00, &mut b).unwrap();
    func.bar_write(0, 0x0c, &[0x80, 0, 0, 0]).unwrap();
    func.bar_write(0, 0x0c, &[0x86, 0, 0, 0]).unwrap();
    func.bar_read(0, 0x0c, &mut b).unwrap();
}

/// A server killed mid-I/O (issue 16, docs/vfio-user.md "Failure"), and brought back: the
/// in-process appliance fronts QEMU's i6300esb over vfio-user and a DMA engine, one host
/// reads the watchdog's BAR in a loop; `kill -9` of the server: the reads end (error or
/// all-ones, in bounded time), the inventory shows the function failed, a `FunctionFailed`
/// event is published, the host sees the card removed, and the DMA engine keeps answering.
/// Then the operator starts the server again on the same socket: the appliance reconnects,
/// the function is back (`FunctionRecovered`), given back to its host, which sees it present
/// again and whose watchdog accesses work.
#[test]
fn qemu_server_killed_mid_io_fails_its_function_only() {
    killed_mid_io(false);
}

/// The same with `start = [...]`: the appliance started the server and restarts it itself
/// after the kill; the function comes back with no operator.
#[test]
fn qemu_server_started_by_the_appliance_is_restarted_after_a_kill() {
    killed_mid_io(true);
}

/// The pids of the processes whose command line names `needle`.
fn pids_naming(needle: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&c).contains(needle) {
                v.push(pid);
            }
        }
    }
    v
}

fn killed_mid_io(appliance_starts_it: bool) {
    use pcietun::appliance::{Appliance, ApplianceConfig, FunctionState, PoolEvent};
    use pcietun::transport::SecretKey;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let Some(q) = qemu("vfio-user server killed mid-I/O") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("esb.sock");
    let peer = Peer::Qemu(q.clone(), "i6300esb");
    let mut server = (!appliance_starts_it).then(|| peer.spawn(&sock));
    let start = if appliance_starts_it {
        let argv = [
            q.display().to_string(),
            "-L".into(),
            "/usr/share/qemu".into(),
            "-L".into(),
            "/usr/share/seabios".into(),
            "-accel".into(),
            "tcg".into(),
            "-nodefaults".into(),
            "-display".into(),
            "none".into(),
            "-machine".into(),
            "x-remote,vfio-user=on,auto-shutdown=on".into(),
            "-device".into(),
            "i6300esb,id=d0".into(),
            "-object".into(),
            format!(
                "x-vfio-user-server,id=v0,type=unix,path={},device=d0",
                sock.display()
            ),
        ];
        let quoted: Vec<String> = argv.iter().map(|a| format!("{a:?}")).collect();
        format!("start = [{}]\nconnect_timeout = 20.0", quoted.join(", "))
    } else {
        String::new()
    };
    let host_key = SecretKey::from_bytes([0x11; 32]);
    let app_key = SecretKey::from_bytes([0x22; 32]);
    app_key
        .write_new(&dir.path().join("appliance.key"))
        .unwrap();
    let text = format!(
        r#"
listen = ["udp:127.0.0.1:0"]
key_file = "appliance.key"

[[host]]
id = "web1"
public_key = "{pk}"

[[device]]
kind = "vfio-user"
name = "esb"
socket = "{sock}"
{start}

[[device]]
kind = "dma"
name = "dma"
buffer = "64K"
"#,
        pk = host_key.public_key(),
        sock = sock.display()
    );
    let cfg = ApplianceConfig::from_toml(&text, "fail.toml", dir.path()).unwrap();
    let app = Appliance::build(cfg).unwrap().start().unwrap();
    let control = app.control();
    let events = control.subscribe();
    let agent = Agent::connect(
        AgentConfig {
            target: Target::Udp(app.ready().udp_addr().unwrap()),
            host_id: "web1".into(),
            key: Some(host_key),
            appliance_key: Some(app_key.public_key()),
            psk: None,
            inject_loss: 0.0,
            host: HostConfig::default(),
        },
        Duration::from_secs(20),
    )
    .unwrap();
    let fns = agent.host().functions();
    let esb = fns
        .iter()
        .find(|f| f.class == 0x088000 && f.vendor == 0x8086);
    let esb = esb
        .unwrap_or_else(|| panic!("no i6300esb: {fns:?}"))
        .clone();
    let dma = fns.iter().find(|f| f.bdf.device() != esb.bdf.device());
    let dma = dma
        .unwrap_or_else(|| panic!("no DMA engine: {fns:?}"))
        .clone();
    let efn = agent.host().open(esb.bdf).unwrap();
    efn.config_write(0x04, 0x0002).unwrap();
    let dfn = agent.host().open(dma.bdf).unwrap();
    dfn.config_write(0x04, 0x0002).unwrap();
    let dma_id = dfn.bar_read32(0, 0).unwrap();

    // The host's I/O loop: BAR reads until one fails or reads all-ones.
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = crossbeam::channel::bounded::<(u64, String)>(1);
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            let end = loop {
                if stop.load(Ordering::SeqCst) {
                    break "stopped".to_string();
                }
                match efn.bar_read32(0, 0x0c) {
                    Ok(0xffff_ffff) => break "all-ones".to_string(),
                    Ok(_) => n += 1,
                    Err(e) => break format!("error: {e}"),
                }
            };
            let _ = done_tx.send((n, end));
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // SIGKILL: no orderly goodbye on the socket.
    let first_pid = match &mut server {
        Some(s) => {
            let pid = s.0.id();
            s.0.kill().unwrap();
            let _ = s.0.wait();
            pid
        }
        None => {
            let pids = pids_naming(&format!("path={}", sock.display()));
            assert_eq!(pids.len(), 1, "one server process started by the appliance");
            let st = Command::new("kill")
                .args(["-9", &pids[0].to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            pids[0]
        }
    };
    let (n, end) = done_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the host's reads ended within 10 s of the kill");
    stop.store(true, Ordering::SeqCst);
    reader.join().unwrap();
    assert!(n > 0, "reads completed before the kill");
    assert_ne!(end, "stopped");

    // The pool: the function failed, with its event; the DMA engine unaffected.
    let end = Instant::now() + Duration::from_secs(10);
    let esb_id: pcietun::appliance::inventory::FunctionId = "esb".parse().unwrap();
    loop {
        let failed = control
            .functions()
            .iter()
            .any(|f| f.entry.id == esb_id && f.entry.state == FunctionState::Failed);
        if failed {
            break;
        }
        assert!(
            Instant::now() < end,
            "not failed: {:?}",
            control.functions()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen: Vec<PoolEvent> = events.try_iter().collect();
    assert!(
        seen.contains(&PoolEvent::FunctionFailed(esb_id.clone())),
        "{seen:?}"
    );
    // The host saw the card go (surprise removal), and kept the DMA engine.
    let end = Instant::now() + Duration::from_secs(10);
    while agent
        .host()
        .functions()
        .iter()
        .any(|f| f.bdf.device() == esb.bdf.device())
    {
        assert!(Instant::now() < end, "the host still shows the failed card");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        dfn.bar_read32(0, 0).unwrap(),
        dma_id,
        "the DMA engine still answers"
    );
    let host = pcietun::transport::HostId::new("web1").unwrap();
    if !appliance_starts_it {
        // A failed function is handed to no host (its server is not back: the appliance's
        // reconnects are refused meanwhile, the inventory says so).
        assert!(control
            .assign_wait(esb_id.clone(), host, Duration::from_secs(5))
            .is_err());
        let why = control
            .functions()
            .into_iter()
            .find(|f| f.entry.id == esb_id)
            .and_then(|f| f.entry.failure)
            .unwrap_or_default();
        assert!(
            why.contains("bringing it back") || why.contains("next attempt in"),
            "the reason and what is being done: {why}"
        );
        // The operator starts the server again on the same socket.
        server = Some(peer.spawn(&sock));
    }
    // Back: unassigned, then given back to web1 (still connected, nobody else took it).
    let end = Instant::now() + Duration::from_secs(40);
    loop {
        let st = control
            .functions()
            .into_iter()
            .find(|f| f.entry.id == esb_id)
            .map(|f| f.entry.state);
        if st == Some(FunctionState::Assigned(host)) {
            break;
        }
        assert!(
            Instant::now() < end,
            "not back with web1: {:?}",
            control.functions()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let seen: Vec<PoolEvent> = events.try_iter().collect();
    assert!(
        seen.contains(&PoolEvent::FunctionRecovered(esb_id.clone())),
        "{seen:?}"
    );
    if appliance_starts_it {
        let pids = pids_naming(&format!("path={}", sock.display()));
        assert_eq!(pids.len(), 1, "one server process again");
        assert_ne!(pids[0], first_pid, "a new process");
    }
    // The host sees the card present again, at power-on state, and the watchdog's
    // accesses work: BAR0 reads, the unlock sequence, the reload register read back.
    let end = Instant::now() + Duration::from_secs(20);
    let back = loop {
        let f = agent
            .host()
            .functions()
            .into_iter()
            .find(|f| f.class == 0x088000 && f.vendor == 0x8086);
        if let Some(f) = f {
            break f;
        }
        assert!(Instant::now() < end, "the host never saw the card again");
        std::thread::sleep(Duration::from_millis(20));
    };
    let efn = agent.host().open(back.bdf).unwrap();
    efn.config_write(0x04, 0x0002).unwrap();
    let cmd = efn.config_read(0x04).unwrap();
    assert_eq!(cmd & 0x2, 0x2, "memory space enabled by the host");
    let before = efn.bar_read32(0, 0x0c).unwrap();
    assert_ne!(before, 0xffff_ffff, "the revived server answers");
    efn.bar_write(0, 0x0c, &[0x80, 0, 0, 0]).unwrap();
    efn.bar_write(0, 0x0c, &[0x86, 0, 0, 0]).unwrap();
    for _ in 0..20 {
        assert_ne!(efn.bar_read32(0, 0x0c).unwrap(), 0xffff_ffff);
    }
    assert_eq!(
        dfn.bar_read32(0, 0).unwrap(),
        dma_id,
        "the DMA engine still answers"
    );
    app.shutdown().unwrap();
    drop(server);
}

/// IO BARs end to end (issue 16): libvfio-user's `gpio-pci-idio-16` sample (an IO BAR only:
/// BAR2, 256 bytes; a read of its byte 0 returns `pin++ / 3`) fronted by a real `pcietun
/// appliance --device vfio-user=SOCK` process, a real `pcietun host --vfio-user DIR` process
/// serving the tunnelled function, and the rust-vmm vfio-user client as the consumer: the
/// host offers BAR2 as a readable, writable region; the consumer's reads of it go out as
/// IORd through the tunnel and come back with the sample's counter, in order; its writes are
/// IOWr the sample takes; the sample's `-v` trace shows the accesses.
#[test]
fn gpio_sample_io_bar_through_the_tunnel_to_a_vfio_user_consumer() {
    let Some(bin) =
        prereq::libvfio_user_sample("gpio-pci-idio-16 IO BAR end to end", "gpio-pci-idio-16")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gpio.sock");
    let trace = dir.path().join("gpio.trace");
    let _server = Proc(
        Command::new(&bin)
            .arg("-v")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&trace).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_socket(&sock);
    let port = free_udp_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["appliance", "--listen", &format!("udp:127.0.0.1:{port}")])
        .arg("--device")
        .arg(format!("vfio-user={}", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _appliance = Proc(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("appliance ready:"), "{line:?}");
    let socks = dir.path().join("host");
    std::fs::create_dir(&socks).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .args(["host", "--connect", &format!("udp:127.0.0.1:{port}")])
        .arg("--vfio-user")
        .arg(&socks)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let _host = Proc(child);
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    let path = line
        .strip_prefix("host ready: ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .trim()
        .to_string();
    assert!(
        !path.is_empty() && !path.contains(' '),
        "one socket: {path:?}"
    );

    let mut c = vfio_user::Client::new(Path::new(&path)).unwrap();
    let cfg = |c: &mut vfio_user::Client, off: u64| {
        let mut b = [0u8; 4];
        c.region_read(7, off, &mut b).unwrap();
        u32::from_le_bytes(b)
    };
    assert_eq!(cfg(&mut c, 0), 0x0dc8_494f, "the sample's IDs");
    // BAR2 is an IO BAR, offered as a region (read/write, no mmap).
    let r = c.region(2).expect("BAR2 region");
    assert_eq!(r.size, 0x100, "BAR2 offered with its size");
    assert_eq!(r.flags & 0x3, 0x3, "readable and writable");
    assert_eq!(cfg(&mut c, 0x18) & 1, 1, "BAR2 is IO space in config space");
    for i in [0, 1, 3, 4, 5] {
        assert_eq!(c.region(i).map_or(0, |r| r.size), 0, "BAR{i} absent");
    }
    // IO Space Enable, as the consumer's OS would.
    c.region_write(7, 0x04, &1u16.to_le_bytes()).unwrap();
    let mut got = Vec::new();
    for _ in 0..9 {
        let mut b = [0u8; 1];
        c.region_read(2, 0, &mut b).unwrap();
        got.push(b[0]);
    }
    assert_eq!(got, vec![0, 0, 0, 1, 1, 1, 2, 2, 2], "the sample's counter");
    // A DW read (one IORd with all four byte enables) and a write (IOWr) elsewhere in the
    // BAR: completed, and they do not touch the counter.
    let mut dw = [0u8; 4];
    c.region_read(2, 4, &mut dw).unwrap();
    c.region_write(2, 8, &[0x5a]).unwrap();
    let mut b = [0u8; 1];
    c.region_read(2, 0, &mut b).unwrap();
    assert_eq!(b[0], 3, "the 10th counter read");
    drop(c);
    // The sample's own trace: exactly these accesses reached BAR2, with these sizes.
    let text = std::fs::read_to_string(&trace).unwrap();
    let bar2: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("gpio: region2: "))
        .collect();
    let mut want: Vec<String> = [0, 0, 0, 1, 1, 1, 2, 2, 2]
        .iter()
        .map(|v| {
            format!(
                "read {} from (0:1)",
                if *v == 0 {
                    "0".into()
                } else {
                    format!("{v:#x}")
                }
            )
        })
        .collect();
    want.push("read 0 from (0x4:4)".into());
    want.push("wrote 0x5a to (0x8:1)".into());
    want.push("read 0x3 from (0:1)".into());
    assert_eq!(bar2, want, "the sample's trace:\n{text}");
}
