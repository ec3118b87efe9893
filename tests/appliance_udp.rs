//! `pcietun appliance` as a process over real UDP on loopback: it announces readiness, answers
//! configuration and memory requests from a host session through the transport, masters DMA
//! to the host, and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use pcietun::endpoint::wire::{self, CplStatus, ParsedHeader, ParsedKind};
use pcietun::endpoint::Bdf;
use pcietun::pci::class::dma_engine::{self, reg};
use pcietun::pci::class::nvme::{self, Cqe, Sqe, Status};
use pcietun::transport::driver::{self, DriverConfig, Peers, TransportHandle, Upcall};
use pcietun::transport::{ConnId, Event, HostId, PeerAddr, SecretKey};
use zerocopy::{FromBytes, IntoBytes};

struct Appliance(Child);

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(args: &[&str]) -> (Appliance, std::net::SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_pcietun"))
        .arg("appliance")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line).unwrap();
    assert!(line.starts_with("appliance ready:"), "{line}");
    let addr = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("udp:"))
        .and_then(|a| a.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no udp address in {line:?}"));
    (Appliance(child), addr)
}

struct Host {
    t: TransportHandle,
    conn: ConnId,
    tag: u8,
}

impl Host {
    fn connect(addr: std::net::SocketAddr) -> Host {
        let port = driver::open("udp:127.0.0.1:0").unwrap();
        // The appliance runs with the development keys (loopback).
        let cfg = DriverConfig::new(
            SecretKey::development_host(),
            Peers::Connect {
                server: PeerAddr::Udp(addr),
                host: HostId::new("host").unwrap(),
                server_key: SecretKey::development_appliance().public_key(),
                psk: None,
            },
        );
        let t = TransportHandle::spawn(port, cfg).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match t.recv_timeout(left) {
                Some(Upcall::Event {
                    conn,
                    event: Event::Connected { .. },
                }) => return Host { t, conn, tag: 0 },
                Some(_) => {}
                None => panic!("no session with the appliance"),
            }
        }
    }

    /// Wait for the completion of `tag`, answering device DMA reads from `mem` meanwhile.
    fn wait_cpl(&mut self, tag: u8, mem: &mut [u8]) -> Vec<u8> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(up) = self.t.recv_timeout(left) else {
                panic!("no completion for tag {tag}")
            };
            let Upcall::Tlp { tlp, .. } = up else {
                continue;
            };
            let h = ParsedHeader::parse(&tlp).unwrap();
            match h.kind {
                ParsedKind::Completion { status, .. } if h.tag == u16::from(tag) => {
                    assert_eq!(status, CplStatus::Sc);
                    return tlp[h.payload].to_vec();
                }
                ParsedKind::MemRead { addr } => self.serve_read(&h, addr, mem),
                ParsedKind::MemWrite { addr } => {
                    let a = (addr + u64::from(h.first_byte_offset())) as usize;
                    let n = h.byte_count() as usize;
                    let lead = h.first_byte_offset() as usize;
                    mem[a..a + n].copy_from_slice(&tlp[h.payload.start + lead..][..n]);
                }
                _ => {}
            }
        }
    }

    fn serve_read(&mut self, h: &ParsedHeader, addr: u64, mem: &[u8]) {
        let first = addr + u64::from(h.first_byte_offset());
        let n = h.byte_count() as usize;
        let mut data = vec![0u8; (first as usize % 4 + n).div_ceil(4) * 4];
        data[first as usize % 4..][..n].copy_from_slice(&mem[first as usize..][..n]);
        let mut c = Vec::new();
        wire::emit_completion(
            &mut c,
            Bdf(0),
            h.requester,
            h.tag,
            CplStatus::Sc,
            n as u16 & 0xfff,
            (first & 0x7f) as u8,
            0,
            &data,
        )
        .unwrap();
        self.t.send(self.conn, Bytes::from(c)).unwrap();
    }

    fn cfg(&mut self, bdf: Bdf, reg: u16, value: Option<u32>) -> u32 {
        self.tag = self.tag.wrapping_add(1);
        let mut t = vec![0u8; 12];
        t[0] = if value.is_some() { 0x44 } else { 0x04 };
        t[3] = 1;
        t[6] = self.tag;
        t[7] = 0x0f;
        t[8..10].copy_from_slice(&bdf.0.to_be_bytes());
        t[11] = reg as u8;
        if let Some(v) = value {
            t.extend_from_slice(&v.to_le_bytes());
        }
        self.t.send(self.conn, Bytes::from(t)).unwrap();
        let d = self.wait_cpl(self.tag, &mut []);
        d.get(..4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn read32(&mut self, addr: u64, mem: &mut [u8]) -> u32 {
        self.tag = self.tag.wrapping_add(1);
        let mut t = Vec::new();
        wire::emit_mem_read(&mut t, Bdf(0), u16::from(self.tag), addr, 4).unwrap();
        self.t.send(self.conn, Bytes::from(t)).unwrap();
        let d = self.wait_cpl(self.tag, mem);
        u32::from_le_bytes([d[0], d[1], d[2], d[3]])
    }

    fn write32(&mut self, addr: u64, v: u32) {
        let mut t = Vec::new();
        wire::emit_mem_write(&mut t, Bdf(0), addr, &v.to_le_bytes()).unwrap();
        self.t.send(self.conn, Bytes::from(t)).unwrap();
    }
}

#[test]
fn appliance_serves_config_mmio_and_dma_over_udp() {
    let (mut app, addr) = start(&["--listen", "udp:127.0.0.1:0", "--device", "dma,buffer=64K"]);
    let mut h = Host::connect(addr);
    let f = Bdf::new(1, 0, 0);
    assert_eq!(h.cfg(f, 0, None), 0x0e02_1b36, "DMA engine vendor/device");
    let regs = 0xfe00_0000u64;
    h.cfg(f, 0x10, Some(regs as u32));
    h.cfg(f, 0x14, Some(0));
    h.cfg(f, 0x04, Some(0x0006));
    let mut mem = vec![0u8; 1 << 16];
    assert_eq!(h.read32(regs, &mut mem), dma_engine::ID_VALUE);
    // DMA 4 KiB from host memory into the engine, then back to another place.
    for (i, b) in mem[0x1000..0x2000].iter_mut().enumerate() {
        *b = (i * 3) as u8;
    }
    for (dir, host) in [(0u32, 0x1000u32), (1, 0x8000)] {
        h.write32(regs + reg::STATUS, dma_engine::status::DONE);
        h.write32(regs + reg::HOST_ADDR_LO, host);
        h.write32(regs + reg::HOST_ADDR_HI, 0);
        h.write32(regs + reg::LENGTH, 4096);
        h.write32(regs + reg::CONTROL, dir);
        h.write32(regs + reg::DOORBELL, 1);
        let deadline = Instant::now() + Duration::from_secs(10);
        while h.read32(regs + reg::STATUS, &mut mem) & dma_engine::status::DONE == 0 {
            assert!(Instant::now() < deadline, "DMA over UDP never finished");
        }
    }
    assert_eq!(mem[0x8000..0x9000], mem[0x1000..0x2000]);
    // SIGTERM: a clean exit.
    // SAFETY: signalling our own child process by pid.
    unsafe { libc::kill(app.0.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(st) = app.0.try_wait().unwrap() {
            assert!(st.success(), "exit status {st:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "appliance did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An NVMe submission: write the entry into host memory, ring the doorbell, and poll (serving
/// the controller's DMA meanwhile) until the completion's phase tag flips.
fn nvme_cmd(
    h: &mut Host,
    mem: &mut [u8],
    q: &mut (u64, u64, u16, u16),
    bar: u64,
    qid: u16,
    cid: u16,
    mut sqe: Sqe,
) -> Status {
    let (sq, cq, tail, head) = *q;
    let at = (sq + u64::from(tail) * 64) as usize;
    sqe.cid.set(cid);
    mem[at..at + 64].copy_from_slice(sqe.as_bytes());
    let tail = (tail + 1) % 8;
    h.write32(bar + nvme::reg::sq_tail_doorbell(qid, 0), u32::from(tail));
    let c = (cq + u64::from(head) * 16) as usize;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Cqe::read_from_bytes(&mem[c..c + 16]).unwrap().phase() {
        h.read32(bar + nvme::reg::CSTS, mem);
        assert!(Instant::now() < deadline, "no NVMe completion over UDP");
    }
    let cqe = Cqe::read_from_bytes(&mem[c..c + 16]).unwrap();
    assert_eq!(cqe.cid.get(), cid);
    let head = head + 1;
    h.write32(bar + nvme::reg::cq_head_doorbell(qid, 0), u32::from(head));
    *q = (sq, cq, tail, head);
    cqe.status()
}

#[test]
fn appliance_serves_nvme_over_udp() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ns.img");
    let dev = format!("nvme={},size=1M", img.display());
    let (_app, addr) = start(&["--listen", "udp:127.0.0.1:0", "--device", &dev]);
    let mut h = Host::connect(addr);
    let f = Bdf::new(1, 0, 0);
    assert_eq!(h.cfg(f, 8, None) >> 8, 0x01_08_02, "NVMe class code");
    let bar = 0xfe00_0000u64;
    h.cfg(f, 0x10, Some(bar as u32));
    h.cfg(f, 0x14, Some(0));
    h.cfg(f, 0x04, Some(0x0006));
    let mut mem = vec![0u8; 1 << 20];
    h.write32(bar + nvme::reg::AQA, nvme::aqa::new(8, 8));
    h.write32(bar + nvme::reg::ASQ, 0x1000);
    h.write32(bar + nvme::reg::ASQ + 4, 0);
    h.write32(bar + nvme::reg::ACQ, 0x2000);
    h.write32(bar + nvme::reg::ACQ + 4, 0);
    h.write32(bar + nvme::reg::CC, 1 | (6 << 16) | (4 << 20));
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.read32(bar + nvme::reg::CSTS, &mut mem) & nvme::csts::RDY == 0 {
        assert!(Instant::now() < deadline, "CSTS.RDY never set");
    }
    let mut admin = (0x1000u64, 0x2000u64, 0u16, 0u16);
    // Identify Controller.
    let identify = Sqe::identify(nvme::cns::CONTROLLER, 0).with_prps(0x3000, 0);
    let st = nvme_cmd(&mut h, &mut mem, &mut admin, bar, 0, 1, identify);
    assert_eq!(st, Status::SUCCESS);
    assert!(mem[0x3000 + 24..].starts_with(b"pcietun NVMe controller"));
    // I/O queues (interrupts off: polled), then write 8 KiB across two pages and read it back.
    let cq = Sqe::create_io_cq(1, 8, 0x5000, 0, false);
    let st = nvme_cmd(&mut h, &mut mem, &mut admin, bar, 0, 2, cq);
    assert_eq!(st, Status::SUCCESS);
    let sq = Sqe::create_io_sq(1, 8, 0x4000, 1);
    let st = nvme_cmd(&mut h, &mut mem, &mut admin, bar, 0, 3, sq);
    assert_eq!(st, Status::SUCCESS);
    let mut io = (0x4000u64, 0x5000u64, 0u16, 0u16);
    for (i, b) in mem[0x10000..0x12000].iter_mut().enumerate() {
        *b = (i * 7 + 1) as u8;
    }
    let write = Sqe::write(1, 8, 16).with_prps(0x10000, 0x11000);
    let st = nvme_cmd(&mut h, &mut mem, &mut io, bar, 1, 4, write);
    assert_eq!(st, Status::SUCCESS);
    let st = nvme_cmd(&mut h, &mut mem, &mut io, bar, 1, 5, Sqe::flush(1));
    assert_eq!(st, Status::SUCCESS, "flush");
    let read = Sqe::read(1, 8, 16).with_prps(0x20000, 0x21000);
    let st = nvme_cmd(&mut h, &mut mem, &mut io, bar, 1, 6, read);
    assert_eq!(st, Status::SUCCESS);
    assert_eq!(mem[0x20000..0x22000], mem[0x10000..0x12000]);
    let file = std::fs::read(&img).unwrap();
    assert_eq!(file[8 * 512..8 * 512 + 8192], mem[0x10000..0x12000]);
}
