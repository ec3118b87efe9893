//! The appliance's vfio-user client backend (`endpoint::vfio_user_client`) against real
//! vfio-user servers: libvfio-user's samples, built by tests/vfio_user_peers/build-libvfio-user.sh.
//! Each test drives the client as an `endpoint::Device` inside a `Proxy`, reached through the
//! in-process loopback host, so every access and every DMA crosses as TLP bytes.
//!
//! Real processes, UNIX sockets in a private temporary directory, every wait bounded. A missing
//! sample prints `SKIPPED:` (or fails under PCIETUN_REQUIRE_ALL=1).

mod prereq;

use std::path::Path;
use std::time::{Duration, Instant};

use pcietun::endpoint::dma_engine::DmaEngine;
use pcietun::endpoint::loopback::{LoopbackHost, HOST_MEM_BASE};
use pcietun::endpoint::vfio_user_client::{ClientConfig, FailReason, Health, VfioUserClient};
use pcietun::endpoint::wire::{self, CplStatus};
use pcietun::endpoint::{Bdf, Proxy, ProxyConfig};

const F0: Bdf = Bdf(0);
const F1: Bdf = Bdf(1);
/// Where the loopback host puts the sample's IO BARs.
const IO_BAR0: u32 = 0x1000;
const IO_BAR1: u32 = 0x4000;

fn config(sock: &Path) -> ClientConfig {
    let mut c = ClientConfig::new(sock);
    c.dma_window = (HOST_MEM_BASE, 1 << 20);
    c.request_timeout = Duration::from_secs(2);
    c
}

/// An IORd (no data) or IOWr of one DW at `addr` (PCIe r5.0 §2.2.7: 3 DW header, Length 1,
/// First DW BE 0xf), from requester 00:00.0.
fn io_tlp(tag: u16, addr: u32, data: Option<[u8; 4]>) -> Vec<u8> {
    let dw0: u32 = if data.is_some() {
        0x4200_0001
    } else {
        0x0200_0001
    };
    let dw1: u32 = (u32::from(tag & 0xff) << 8) | 0xf;
    let mut t = Vec::new();
    t.extend_from_slice(&dw0.to_be_bytes());
    t.extend_from_slice(&dw1.to_be_bytes());
    t.extend_from_slice(&(addr & !3).to_be_bytes());
    if let Some(d) = data {
        t.extend_from_slice(&d);
    }
    t
}

fn io_write(h: &mut LoopbackHost, addr: u32, data: [u8; 4]) -> CplStatus {
    let tag = h.tag();
    h.request(io_tlp(tag, addr, Some(data)), tag).unwrap().0
}

fn io_read(h: &mut LoopbackHost, addr: u32) -> (CplStatus, Vec<u8>) {
    let tag = h.tag();
    let (st, parts) = h.request(io_tlp(tag, addr, None), tag).unwrap();
    let data = parts
        .first()
        .map(|c| {
            let p = wire::ParsedHeader::parse(c).unwrap();
            c[p.payload].to_vec()
        })
        .unwrap_or_default();
    (st, data)
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The `server` sample: identity, BARs, arming by an 8-byte BAR0 write (only a vfio-user
/// client can make it), INTx through the eventfd, and its DMA_WRITE/DMA_READ served from the
/// function's DMA path byte for byte (the loopback host's memory).
#[test]
fn server_sample_interrupts_and_dmas_through_the_function() {
    let Some(server) = prereq::libvfio_user_sample("vfio-user client vs server sample", "server")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("server.sock");
    let argv = vec![
        server.display().to_string(),
        "-v".into(),
        sock.display().to_string(),
    ];
    let client = VfioUserClient::start(&argv, &config(&sock)).unwrap();
    let info = client.info().clone();
    // BAR0 is sizeof(time_t), BAR1 0x3000 (not a power of two: presented as 16 KiB).
    assert_eq!(info.regions[0].size, 8);
    assert_eq!(info.regions[1].size, 0x3000);
    assert_eq!(info.irqs[0], 1, "the sample has one INTx vector");
    let port = client.port();
    let health = client.health_handle();

    let (mut ep, rx) = Proxy::new(ProxyConfig::default());
    ep.add_function(F0, Box::new(client)).unwrap();
    let mut h = LoopbackHost::start(ep, rx, 1 << 20);
    // Identity as the sample sets it (vfu_pci_set_id 0xdead 0xbeef 0xcafe 0xbabe).
    assert_eq!(h.cfg_read(F0, 0x00).unwrap(), 0xbeef_dead);
    assert_eq!(h.cfg_read(F0, 0x2c).unwrap(), 0xbabe_cafe);
    // BAR sizing: both are IO BARs; BAR1 rounds up to 0x4000.
    h.cfg_write(F0, 0x14, 0xffff_ffff).unwrap();
    assert_eq!(h.cfg_read(F0, 0x14).unwrap(), 0xffff_c001);
    h.cfg_write(F0, 0x10, 0xffff_ffff).unwrap();
    assert_eq!(h.cfg_read(F0, 0x10).unwrap(), 0xffff_fff9);
    h.cfg_write(F0, 0x10, IO_BAR0).unwrap();
    h.cfg_write(F0, 0x14, IO_BAR1).unwrap();
    // IO space, bus master (the sample's DMA is the function's upstream DMA).
    h.cfg_write(F0, 0x04, 0x0005).unwrap();
    assert_ne!(h.cfg_read(F0, 0x3c).unwrap() >> 8 & 0xff, 0, "an INTx pin");

    // IORd/IOWr reach the server's BAR1 (its memory): write a pattern, read it back.
    for (i, v) in [0x1122_3344u32, 0x5566_7788, 0x99aa_bbcc]
        .iter()
        .enumerate()
    {
        assert_eq!(
            io_write(&mut h, IO_BAR1 + 4 * i as u32, v.to_le_bytes()),
            CplStatus::Sc
        );
    }
    // (The sample's BAR1 read returns from the start of its buffer whatever the offset.)
    let (st, data) = io_read(&mut h, IO_BAR1);
    assert_eq!(st, CplStatus::Sc);
    assert_eq!(data, 0x1122_3344u32.to_le_bytes());
    // Past the server's 0x3000-byte region, inside the 16 KiB BAR: not decoded.
    let (st, _) = io_read(&mut h, IO_BAR1 + 0x3000);
    assert_ne!(st, CplStatus::Sc);
    // A 4-byte IO access to the 8-byte BAR0 is refused by the sample: Completer Abort.
    let (st, _) = io_read(&mut h, IO_BAR0);
    assert_eq!(st, CplStatus::Ca);
    assert_eq!(
        health.health(),
        Health::Serving,
        "an error reply is not a failure"
    );

    // Arm: BAR0 holds the time at which to interrupt (now + 1 s), an 8-byte access.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    port.write(0, 0, &(now + 1).to_le_bytes()).unwrap();
    assert!(
        h.wait_intx(true, Duration::from_secs(10)),
        "the sample's INTx reached the host"
    );
    // Then it DMA-writes 4 KiB of 'A' at the start of the window and reads it back; it exits
    // with an error if what it reads differs. Both went through the function's DMA.
    wait_for("the sample's DMA_WRITE", Duration::from_secs(10), || {
        h.host_read(HOST_MEM_BASE, 4096) == vec![b'A'; 4096]
    });
    assert_eq!(h.host_read(HOST_MEM_BASE + 4096, 16), vec![0u8; 16]);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        health.health(),
        Health::Serving,
        "the sample read back what it wrote (it exits on a mismatch)"
    );
    assert_eq!(h.bad_dma(), 0);
    // A BAR access is INTx's end of interrupt: the line drops.
    let _ = io_read(&mut h, IO_BAR1);
    assert!(h.wait_intx(false, Duration::from_secs(5)));
}

/// A server killed in the middle of I/O: the function fails (Completer Abort at once, no
/// hang), the appliance's other function keeps working.
#[test]
fn a_killed_server_fails_its_function_and_nothing_else() {
    let Some(server) = prereq::libvfio_user_sample("vfio-user client, server killed", "server")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("server.sock");
    let mut child = std::process::Command::new(&server)
        .arg(&sock)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let client = VfioUserClient::connect(&config(&sock)).unwrap();
    let health = client.health_handle();
    let (mut ep, rx) = Proxy::new(ProxyConfig::default());
    ep.add_function(F0, Box::new(client)).unwrap();
    ep.add_function(F1, Box::new(DmaEngine::new(1 << 16)))
        .unwrap();
    let mut h = LoopbackHost::start(ep, rx, 1 << 20);
    h.cfg_write(F0, 0x14, IO_BAR1).unwrap();
    h.cfg_write(F0, 0x04, 0x0001).unwrap();
    h.cfg_write(F1, 0x10, 0x8000_0000).unwrap();
    h.cfg_write(F1, 0x14, 0).unwrap();
    h.cfg_write(F1, 0x04, 0x0002).unwrap();

    // I/O in flight from another thread while the server is killed.
    let (st, _) = io_read(&mut h, IO_BAR1);
    assert_eq!(st, CplStatus::Sc);
    child.kill().unwrap();
    child.wait().unwrap();
    wait_for("the function to fail", Duration::from_secs(5), || {
        matches!(health.health(), Health::Failed(_))
    });
    assert_eq!(health.health(), Health::Failed(FailReason::Disconnected));
    let t0 = Instant::now();
    for _ in 0..20 {
        let (st, _) = io_read(&mut h, IO_BAR1);
        assert_eq!(st, CplStatus::Ca);
        assert_eq!(io_write(&mut h, IO_BAR1, [1, 2, 3, 4]), CplStatus::Ca);
    }
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "a failed function answers at once ({:?})",
        t0.elapsed()
    );
    // The other function is untouched: its ID register reads.
    assert_eq!(
        h.read32(0x8000_0000).unwrap(),
        pcietun::pci::class::dma_engine::ID_VALUE
    );
    // Config space of the failed function still answers (it is the appliance's).
    assert_eq!(h.cfg_read(F0, 0).unwrap(), 0xbeef_dead);
}

/// A server that accepts and then never answers: connecting fails within the time limit,
/// it never hangs.
#[test]
fn a_silent_server_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("silent.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let keep = std::thread::spawn(move || {
        let s = listener.accept().unwrap();
        std::thread::sleep(Duration::from_secs(3));
        drop(s);
    });
    let mut cfg = ClientConfig::new(&sock);
    cfg.request_timeout = Duration::from_millis(300);
    let t0 = Instant::now();
    let e = VfioUserClient::connect(&cfg).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert!(e.to_string().contains("did not answer"), "{e}");
    keep.join().unwrap();
}
