//! The NVMe controller driven through real TLPs by a small in-process host driver that does
//! what Linux's nvme driver does: enumerate, size and program BAR0, enable bus mastering and
//! MSI-X, bring the controller up, identify, create I/O queues, write and read back with PRP
//! lists, flush, take interrupts (MSI-X and INTx), reset and shut down.

use std::time::{Duration, Instant};

use pcietun::endpoint::loopback::{LoopbackHost, HOST_MEM_BASE, MSI_BASE};
use pcietun::endpoint::nvme::spec::{Command, Completion};
use pcietun::endpoint::nvme::{Backend, NvmeController, NvmeOptions};
use pcietun::endpoint::{Bdf, Endpoint, EndpointConfig};

const BAR: u64 = 0xfe00_0000;
const BDF: Bdf = Bdf::new(1, 0, 0);
const ASQ: u64 = HOST_MEM_BASE;
const ACQ: u64 = HOST_MEM_BASE + 0x1000;
const SQ1: u64 = HOST_MEM_BASE + 0x2000;
const CQ1: u64 = HOST_MEM_BASE + 0x3000;
const IDBUF: u64 = HOST_MEM_BASE + 0x4000;
const LIST: u64 = HOST_MEM_BASE + 0x8000;
const DATA: u64 = HOST_MEM_BASE + 0x10_0000;
const QDEPTH: u16 = 32;
const BLOCKS: u64 = 8192; // 4 MiB namespace

struct Queue {
    sq: u64,
    cq: u64,
    tail: u16,
    head: u16,
    phase: bool,
    qid: u16,
}

struct Drv {
    h: LoopbackHost,
    admin: Queue,
    io: Queue,
    cid: u16,
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
}

fn setup() -> Drv {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.img");
    let backend = Backend::create(&path, BLOCKS * 512).unwrap();
    let (mut ep, rx) = Endpoint::new(EndpointConfig::default());
    ep.add_function(
        Bdf::new(0, 0, 0),
        Box::new(NvmeController::new(backend, NvmeOptions::default())),
    )
    .unwrap();
    let mut h = LoopbackHost::start(ep, rx, 4 << 20);
    // Enumerate: the host's first config write gives the function its bus number.
    let id = h.cfg_read(BDF, 0).unwrap();
    assert_eq!(id, 0x0e01_1b36);
    // Size BAR0 (64-bit), then place it.
    h.cfg_write(BDF, 0x10, 0xffff_ffff).unwrap();
    h.cfg_write(BDF, 0x14, 0xffff_ffff).unwrap();
    assert_eq!(
        h.cfg_read(BDF, 0x10).unwrap(),
        0xffff_c004,
        "16 KiB 64-bit BAR"
    );
    h.cfg_write(BDF, 0x10, BAR as u32).unwrap();
    h.cfg_write(BDF, 0x14, 0).unwrap();
    // Memory decode and bus mastering.
    h.cfg_write(BDF, 0x04, 0x0006).unwrap();
    Drv {
        h,
        admin: Queue {
            sq: ASQ,
            cq: ACQ,
            tail: 0,
            head: 0,
            phase: true,
            qid: 0,
        },
        io: Queue {
            sq: SQ1,
            cq: CQ1,
            tail: 0,
            head: 0,
            phase: true,
            qid: 1,
        },
        cid: 0,
        _dir: dir,
        path,
    }
}

impl Drv {
    fn find_cap(&mut self, id: u8) -> u16 {
        let mut p = (self.h.cfg_read(BDF, 0x34).unwrap() & 0xfc) as u16;
        while p != 0 {
            let v = self.h.cfg_read(BDF, p).unwrap();
            if v as u8 == id {
                return p;
            }
            p = ((v >> 8) & 0xfc) as u16;
        }
        panic!("capability {id:#x} not found");
    }

    fn enable_msix(&mut self) {
        let cap = self.find_cap(0x11);
        for v in 0..17u64 {
            let e = BAR + 0x2000 + v * 16;
            self.h.write64(e, MSI_BASE + v * 4).unwrap();
            self.h.write32(e + 8, 0x100 + v as u32).unwrap();
            self.h.write32(e + 12, 0).unwrap();
        }
        let ctl = self.h.cfg_read(BDF, cap).unwrap();
        self.h.cfg_write(BDF, cap, ctl | (1 << 31)).unwrap();
    }

    fn wait_csts(&mut self, mask: u32, want: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let v = self.h.read32(BAR + 0x1c).unwrap();
            if v & mask == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CSTS {v:#x} never reached {want:#x}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn bring_up(&mut self) {
        let cap = self.h.read64(BAR).unwrap();
        assert_eq!(cap & 0xffff, 1023, "MQES");
        assert_ne!(cap & (1 << 16), 0, "CQR");
        assert_eq!((cap >> 32) & 0xf, 0, "doorbell stride 0");
        assert_ne!(cap & (1 << 37), 0, "NVM command set");
        assert_eq!(self.h.read32(BAR + 8).unwrap(), 0x0001_0400);
        self.h.write32(BAR + 0x14, 0).unwrap();
        self.wait_csts(1, 0);
        // Fresh queue memory, as a driver allocates it (stale phase bits would look new).
        self.h.host_write(ASQ, &[0; 0x2000]);
        let q = u32::from(QDEPTH - 1);
        self.h.write32(BAR + 0x24, (q << 16) | q).unwrap();
        self.h.write64(BAR + 0x28, ASQ).unwrap();
        self.h.write64(BAR + 0x30, ACQ).unwrap();
        self.h
            .write32(BAR + 0x14, 1 | (6 << 16) | (4 << 20))
            .unwrap();
        self.wait_csts(1, 1);
        self.admin = Queue {
            sq: ASQ,
            cq: ACQ,
            tail: 0,
            head: 0,
            phase: true,
            qid: 0,
        };
    }

    fn submit(&mut self, io: bool, mut cmd: Command) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        cmd.cid = self.cid;
        let q = if io { &mut self.io } else { &mut self.admin };
        self.h
            .host_write(q.sq + u64::from(q.tail) * 64, &cmd.to_bytes());
        q.tail = (q.tail + 1) % QDEPTH;
        let db = BAR + 0x1000 + u64::from(q.qid) * 8;
        let tail = q.tail;
        self.h.write32(db, u32::from(tail)).unwrap();
        self.cid
    }

    /// Wait for the next completion on a queue; does not ring the CQ head doorbell.
    fn reap_no_ack(&mut self, io: bool) -> Completion {
        let deadline = Instant::now() + Duration::from_secs(5);
        let q = if io { &mut self.io } else { &mut self.admin };
        loop {
            let raw = self.h.host_read(q.cq + u64::from(q.head) * 16, 16);
            let c = Completion::parse(raw.as_slice().try_into().unwrap());
            if c.phase == q.phase {
                q.head = (q.head + 1) % QDEPTH;
                if q.head == 0 {
                    q.phase = !q.phase;
                }
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "no completion on queue {}",
                q.qid
            );
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn ack(&mut self, io: bool) {
        let q = if io { &self.io } else { &self.admin };
        let db = BAR + 0x1000 + u64::from(q.qid) * 8 + 4;
        let head = q.head;
        self.h.write32(db, u32::from(head)).unwrap();
    }

    fn cmd(&mut self, io: bool, cmd: Command) -> Completion {
        let cid = self.submit(io, cmd);
        let c = self.reap_no_ack(io);
        self.ack(io);
        assert_eq!(c.cid, cid);
        c
    }

    fn admin_ok(&mut self, cmd: Command) -> u32 {
        let c = self.cmd(false, cmd);
        assert_eq!(
            c.status, 0,
            "admin opcode {:#x} failed: {:#x}",
            cmd.opcode, c.status
        );
        c.dw0
    }

    fn create_io_queues(&mut self, iv: u16) {
        self.h.host_write(SQ1, &[0; 0x2000]);
        let dw0 = self.admin_ok(Command {
            opcode: 0x09,
            cdw: [0x07, 0x0003_0003, 0, 0, 0, 0],
            ..Command::default()
        });
        assert_eq!(dw0, 0x0003_0003, "4 SQs and 4 CQs granted");
        self.admin_ok(Command {
            opcode: 0x05,
            prp1: CQ1,
            cdw: [
                1 | (u32::from(QDEPTH - 1) << 16),
                0b11 | (u32::from(iv) << 16),
                0,
                0,
                0,
                0,
            ],
            ..Command::default()
        });
        self.admin_ok(Command {
            opcode: 0x01,
            prp1: SQ1,
            cdw: [1 | (u32::from(QDEPTH - 1) << 16), 1 | (1 << 16), 0, 0, 0, 0],
            ..Command::default()
        });
        self.io = Queue {
            sq: SQ1,
            cq: CQ1,
            tail: 0,
            head: 0,
            phase: true,
            qid: 1,
        };
    }

    fn identify(&mut self, cns: u32, nsid: u32) -> Vec<u8> {
        self.admin_ok(Command {
            opcode: 0x06,
            nsid,
            prp1: IDBUF,
            cdw: [cns, 0, 0, 0, 0, 0],
            ..Command::default()
        });
        self.h.host_read(IDBUF, 4096)
    }

    /// Build PRP1/PRP2 for `len` bytes at `buf` (any DW-aligned start), writing a PRP list at
    /// LIST when needed.
    fn prps(&self, buf: u64, len: usize) -> (u64, u64) {
        let first = 4096 - (buf % 4096) as usize;
        if len <= first {
            return (buf, 0);
        }
        let rest = len - first;
        let next = buf + first as u64;
        if rest <= 4096 {
            return (buf, next);
        }
        let mut list = Vec::new();
        let mut a = next;
        while a < buf + len as u64 {
            list.extend_from_slice(&a.to_le_bytes());
            a += 4096;
        }
        self.h.host_write(LIST, &list);
        (buf, LIST)
    }

    fn rw(&mut self, write: bool, slba: u64, nlb: u16, buf: u64) -> Completion {
        let (prp1, prp2) = self.prps(buf, usize::from(nlb) * 512);
        self.cmd(
            true,
            Command {
                opcode: if write { 0x01 } else { 0x02 },
                nsid: 1,
                prp1,
                prp2,
                cdw: [
                    slba as u32,
                    (slba >> 32) as u32,
                    u32::from(nlb - 1),
                    0,
                    0,
                    0,
                ],
                ..Command::default()
            },
        )
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

#[test]
fn bring_up_and_identify() {
    let mut d = setup();
    d.bring_up();
    let ctrl = d.identify(1, 0);
    assert_eq!(u16::from_le_bytes([ctrl[0], ctrl[1]]), 0x1b36);
    assert!(ctrl[24..64].starts_with(b"pcietun NVMe controller"));
    assert_eq!((ctrl[512], ctrl[513]), (0x66, 0x44), "SQES/CQES");
    assert_eq!(
        u32::from_le_bytes(ctrl[516..520].try_into().unwrap()),
        1,
        "NN"
    );
    assert_eq!(&ctrl[80..84], &[0, 4, 1, 0], "VER 1.4");
    assert!(ctrl[768..].starts_with(b"nqn.2024-01.dev.pcietun:nvme:"));

    let ns = d.identify(0, 1);
    assert_eq!(u64::from_le_bytes(ns[0..8].try_into().unwrap()), BLOCKS);
    assert_eq!(ns[130], 9, "512-byte LBA format");
    let nguid = ns[104..120].to_vec();
    assert_ne!(nguid, vec![0; 16]);

    let list = d.identify(2, 0);
    assert_eq!(
        &list[0..8],
        &[1, 0, 0, 0, 0, 0, 0, 0],
        "one active namespace"
    );
    let descs = d.identify(3, 1);
    // EUI-64 first, then NGUID, which must match Identify Namespace.
    assert_eq!(&descs[0..2], &[1, 8]);
    assert_eq!(&descs[12..14], &[2, 16]);
    assert_eq!(&descs[16..32], &nguid[..]);
    // I/O command set specific controller data for NVM (what Linux 6.x asks for).
    d.identify(6, 0);

    // Bad CNS: Invalid Field in Command, DNR.
    let c = d.cmd(
        false,
        Command {
            opcode: 0x06,
            prp1: IDBUF,
            cdw: [0x7f, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!(c.status, 0x4002);
    // Unknown admin opcode: Invalid Command Opcode.
    let c = d.cmd(
        false,
        Command {
            opcode: 0x7e,
            ..Command::default()
        },
    );
    assert_eq!(c.status, 0x4001);
    // SQ head reporting: after 7 admin commands the head is 7.
    assert_eq!(c.sq_head, 7);
}

#[test]
fn write_read_back_with_prp_lists_and_flush() {
    let mut d = setup();
    d.bring_up();
    d.create_io_queues(1);

    // One block, PRP1 only.
    let a = pattern(512, 1);
    d.h.host_write(DATA, &a);
    assert_eq!(d.rw(true, 3, 1, DATA).status, 0);
    // 8 KiB starting 0x800 into a page: PRP1 + a two-entry PRP list.
    let b = pattern(8192, 2);
    d.h.host_write(DATA + 0x1_0800, &b);
    assert_eq!(d.rw(true, 100, 16, DATA + 0x1_0800).status, 0);
    // 128 KiB (MDTS): PRP1 + a 31-entry list.
    let c = pattern(128 * 1024, 3);
    d.h.host_write(DATA + 0x4_0000, &c);
    assert_eq!(d.rw(true, 1000, 256, DATA + 0x4_0000).status, 0);
    // Flush: fdatasync on the backing file.
    let fl = d.cmd(
        true,
        Command {
            opcode: 0x00,
            nsid: 1,
            ..Command::default()
        },
    );
    assert_eq!(fl.status, 0);

    // Read each back into a different place.
    let out = DATA + 0x20_0000;
    for (slba, nlb, want) in [(3u64, 1u16, &a), (100, 16, &b), (1000, 256, &c)] {
        d.h.host_write(out + 0x400, &vec![0xee; want.len()]);
        assert_eq!(d.rw(false, slba, nlb, out + 0x400).status, 0);
        assert_eq!(&d.h.host_read(out + 0x400, want.len()), want, "LBA {slba}");
    }
    // And the backing file holds the data at the right offsets.
    let file = std::fs::read(&d.path).unwrap();
    assert_eq!(&file[100 * 512..100 * 512 + 8192], &b[..]);
    assert_eq!(&file[1000 * 512..1000 * 512 + 131072], &c[..]);

    // Write Zeroes over part of the 8 KiB region.
    let wz = d.cmd(
        true,
        Command {
            opcode: 0x08,
            nsid: 1,
            cdw: [102, 0, 3, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!(wz.status, 0);
    let file = std::fs::read(&d.path).unwrap();
    assert!(file[102 * 512..106 * 512].iter().all(|&x| x == 0));
    assert_eq!(&file[106 * 512..116 * 512], &b[6 * 512..]);

    // Out of range: LBA Out of Range, DNR; bad namespace: Invalid Namespace or Format.
    assert_eq!(d.rw(false, BLOCKS - 1, 2, out).status, 0x4080);
    let bad_ns = d.cmd(
        true,
        Command {
            opcode: 0x02,
            nsid: 2,
            prp1: out,
            ..Command::default()
        },
    );
    assert_eq!(bad_ns.status, 0x400b);
    // Misaligned PRP1 (not DW aligned): PRP Offset Invalid.
    let misaligned = d.cmd(
        true,
        Command {
            opcode: 0x02,
            nsid: 1,
            prp1: out + 2,
            ..Command::default()
        },
    );
    assert_eq!(misaligned.status, 0x4013);

    // The error log records the failures, newest first.
    d.admin_ok(Command {
        opcode: 0x02,
        prp1: IDBUF,
        cdw: [0x01 | (63 << 16), 0, 0, 0, 0, 0],
        ..Command::default()
    });
    let log = d.h.host_read(IDBUF, 256);
    assert_eq!(
        u64::from_le_bytes(log[0..8].try_into().unwrap()),
        3,
        "3 errors so far"
    );
    assert_eq!(u16::from_le_bytes([log[12], log[13]]) >> 1, 0x4013);

    // SMART log counts the I/O.
    d.admin_ok(Command {
        opcode: 0x02,
        nsid: 0xffff_ffff,
        prp1: IDBUF,
        cdw: [0x02 | (127 << 16), 0, 0, 0, 0, 0],
        ..Command::default()
    });
    let smart = d.h.host_read(IDBUF, 512);
    assert_eq!(
        u64::from_le_bytes(smart[80..88].try_into().unwrap()),
        3,
        "host writes"
    );
    assert_eq!(
        u64::from_le_bytes(smart[64..72].try_into().unwrap()),
        3,
        "host reads"
    );
    assert_eq!(u16::from_le_bytes([smart[1], smart[2]]), 308);
}

#[test]
fn msix_one_vector_per_queue_with_masking() {
    let mut d = setup();
    d.enable_msix();
    d.bring_up();
    d.identify(1, 0);
    assert!(d.h.wait_msi_count(1, Duration::from_secs(5)));
    assert_eq!(d.h.msi_log()[0], (MSI_BASE, 0x100), "admin CQ on vector 0");
    d.create_io_queues(3);
    let before = d.h.msi_log().len();
    d.h.host_write(DATA, &pattern(4096, 9));
    assert_eq!(d.rw(true, 0, 8, DATA).status, 0);
    assert!(d.h.wait_msi_count(before + 1, Duration::from_secs(5)));
    assert_eq!(
        *d.h.msi_log().last().unwrap(),
        (MSI_BASE + 12, 0x103),
        "I/O CQ on vector 3"
    );

    // Mask vector 3: the completion sets its pending bit instead of sending.
    d.h.write32(BAR + 0x2000 + 3 * 16 + 12, 1).unwrap();
    let n = d.h.msi_log().len();
    d.submit(
        true,
        Command {
            opcode: 0x00,
            nsid: 1,
            ..Command::default()
        },
    );
    let c = d.reap_no_ack(true);
    assert_eq!(c.status, 0);
    d.ack(true);
    assert_eq!(
        d.h.read32(BAR + 0x3000).unwrap() & (1 << 3),
        1 << 3,
        "PBA bit 3"
    );
    assert_eq!(d.h.msi_log().len(), n, "no message while masked");
    // Unmask: the pending message goes out and the bit clears.
    d.h.write32(BAR + 0x2000 + 3 * 16 + 12, 0).unwrap();
    assert!(d.h.wait_msi_count(n + 1, Duration::from_secs(5)));
    assert_eq!(*d.h.msi_log().last().unwrap(), (MSI_BASE + 12, 0x103));
    assert_eq!(d.h.read32(BAR + 0x3000).unwrap(), 0);
}

#[test]
fn intx_fallback_and_intms() {
    let mut d = setup();
    d.bring_up();
    // No MSI-X: the admin completion asserts INTA until the CQ head doorbell consumes it.
    d.submit(
        false,
        Command {
            opcode: 0x0a,
            cdw: [0x07, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    let c = d.reap_no_ack(false);
    assert_eq!(c.status, 0);
    assert!(d.h.wait_intx(true, Duration::from_secs(5)), "INTA asserted");
    assert_ne!(
        d.h.cfg_read(BDF, 0x04).unwrap() & (1 << 19),
        0,
        "Status.Interrupt Status"
    );
    d.ack(false);
    assert!(
        d.h.wait_intx(false, Duration::from_secs(5)),
        "INTA deasserted"
    );

    // INTMS masks the interrupt; INTMC unmasks it (and the still-pending entry re-asserts).
    d.h.write32(BAR + 0x0c, 1).unwrap();
    assert_eq!(d.h.read32(BAR + 0x0c).unwrap(), 1);
    d.submit(
        false,
        Command {
            opcode: 0x0a,
            cdw: [0x07, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    let _ = d.reap_no_ack(false);
    assert!(
        !d.h.wait_intx(true, Duration::from_millis(100)),
        "masked by INTMS"
    );
    d.h.write32(BAR + 0x10, 1).unwrap();
    assert!(d.h.wait_intx(true, Duration::from_secs(5)));
    d.ack(false);
    assert!(d.h.wait_intx(false, Duration::from_secs(5)));

    // Interrupt Disable in the Command register gates INTx too.
    d.h.cfg_write(BDF, 0x04, 0x0406).unwrap();
    d.submit(
        false,
        Command {
            opcode: 0x0a,
            cdw: [0x07, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    let _ = d.reap_no_ack(false);
    assert!(!d.h.wait_intx(true, Duration::from_millis(100)));
    d.h.cfg_write(BDF, 0x04, 0x0006).unwrap();
    assert!(d.h.wait_intx(true, Duration::from_secs(5)));
    d.ack(false);
    assert!(d.h.wait_intx(false, Duration::from_secs(5)));
}

#[test]
fn reset_shutdown_and_flr() {
    let mut d = setup();
    d.bring_up();
    d.create_io_queues(1);
    d.h.host_write(DATA, &pattern(512, 5));
    assert_eq!(d.rw(true, 7, 1, DATA).status, 0);

    // Controller reset: RDY drops, I/O queues are gone; bring-up again works.
    d.h.write32(BAR + 0x14, 0).unwrap();
    d.wait_csts(1, 0);
    d.bring_up();
    let c = d.cmd(
        false,
        Command {
            opcode: 0x00, // Delete I/O SQ 1: it no longer exists
            cdw: [1, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!(c.status, 0x4101, "Invalid Queue Identifier");
    d.create_io_queues(1);
    assert_eq!(d.rw(false, 7, 1, DATA + 0x1000).status, 0);
    assert_eq!(d.h.host_read(DATA + 0x1000, 512), pattern(512, 5));

    // Queue deletion rules: a CQ still used by an SQ cannot go.
    let c = d.cmd(
        false,
        Command {
            opcode: 0x04,
            cdw: [1, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!(c.status, 0x410c, "Invalid Queue Deletion");

    // Shutdown: SHST goes to complete.
    d.h.write32(BAR + 0x14, 1 | (6 << 16) | (4 << 20) | (1 << 14))
        .unwrap();
    d.wait_csts(0b1100, 0b1000);

    // Function Level Reset: config space back to power-on values.
    let pcie = d.find_cap(0x10);
    d.h.cfg_write(BDF, pcie + 8, 0x8000 | 0x2810).unwrap();
    assert_eq!(
        d.h.cfg_read(BDF, 0x04).unwrap() & 0xffff,
        0,
        "Command cleared"
    );
    assert_eq!(d.h.cfg_read(BDF, 0x10).unwrap(), 0x4, "BAR0 cleared");
    // The memory BAR no longer decodes: reads are Unsupported Request.
    assert!(d.h.read32(BAR).is_err());
}

#[test]
fn async_event_on_temperature_threshold() {
    let mut d = setup();
    d.bring_up();
    let cid = d.submit(
        false,
        Command {
            opcode: 0x0c,
            ..Command::default()
        },
    );
    // Enable SMART temperature notices, then drop the over-temperature threshold below 308 K.
    let c1 = d.cmd(
        false,
        Command {
            opcode: 0x09,
            cdw: [0x0b, 0x02, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!((c1.status, c1.cid), (0, cid + 1));
    let c2 = d.cmd(
        false,
        Command {
            opcode: 0x09,
            cdw: [0x04, 300, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!(c2.status, 0);
    let aer = d.reap_no_ack(false);
    d.ack(false);
    assert_eq!(aer.cid, cid, "the AER completes");
    assert_eq!(
        aer.dw0, 0x0002_0101,
        "SMART/health, temperature threshold, log page 2"
    );
    let over = d.cmd(
        false,
        Command {
            opcode: 0x0a,
            cdw: [0x04, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    assert_eq!(over.dw0, 300);
    d.admin_ok(Command {
        opcode: 0x02,
        prp1: IDBUF,
        cdw: [0x02 | (127 << 16), 0, 0, 0, 0, 0],
        ..Command::default()
    });
    assert_eq!(
        d.h.host_read(IDBUF, 1)[0] & 2,
        2,
        "critical warning: temperature"
    );
    // AERL is 3: a fifth outstanding AER is refused.
    for _ in 0..5 {
        d.submit(
            false,
            Command {
                opcode: 0x0c,
                ..Command::default()
            },
        );
    }
    let c = d.reap_no_ack(false);
    d.ack(false);
    assert_eq!(
        c.status, 0x4105,
        "Asynchronous Event Request Limit Exceeded"
    );
}

#[test]
fn dma_blocked_without_bus_master() {
    let mut d = setup();
    d.bring_up();
    d.identify(1, 0);
    // Clear Bus Master Enable: the next command cannot even be fetched; the controller goes
    // fatal rather than touching host memory.
    d.h.cfg_write(BDF, 0x04, 0x0002).unwrap();
    d.submit(
        false,
        Command {
            opcode: 0x06,
            prp1: IDBUF,
            cdw: [1, 0, 0, 0, 0, 0],
            ..Command::default()
        },
    );
    d.wait_csts(0b10, 0b10);
}
