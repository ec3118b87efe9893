//! End-to-end tests of the controller's batched command fetch (NVMe 1.4c §4.1: the controller
//! may consume every entry up to the SQ tail and reports its head in each completion) and of
//! PRP lists with partly contiguous pages (§4.3), driven through real TLPs by `LoopbackHost`.

use std::time::{Duration, Instant};

use super::spec::{Command, Completion};
use super::{Backend, NvmeController, NvmeOptions};
use crate::endpoint::loopback::{LoopbackHost, HOST_MEM_BASE};
use crate::endpoint::{Bdf, Endpoint, EndpointConfig};

const BAR: u64 = 0xfe00_0000;
const BDF: Bdf = Bdf::new(1, 0, 0);
const ASQ: u64 = HOST_MEM_BASE;
const ACQ: u64 = HOST_MEM_BASE + 0x1000;
const SQ1: u64 = HOST_MEM_BASE + 0x2000;
const CQ1: u64 = HOST_MEM_BASE + 0x4000;
const LIST: u64 = HOST_MEM_BASE + 0x8000;
const WBUF: u64 = HOST_MEM_BASE + 0x10_0000;
const RBUF: u64 = HOST_MEM_BASE + 0x20_0000;
const ADMIN_DEPTH: u16 = 8;
/// SQ 1 slots: a 40-command batch starting at slot 40 wraps.
const SQ_DEPTH: u16 = 48;
const CQ_DEPTH: u16 = 64;

struct Ring {
    sq: u64,
    cq: u64,
    sq_size: u16,
    cq_size: u16,
    tail: u16,
    head: u16,
    phase: bool,
    qid: u16,
}

struct Host {
    h: LoopbackHost,
    admin: Ring,
    io: Ring,
    cid: u16,
    _dir: tempfile::TempDir,
}

impl Host {
    fn start() -> Host {
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Backend::create(&dir.path().join("ns.img"), 4096 * 512).expect("backend");
        let (mut ep, rx) = Endpoint::new(EndpointConfig::default());
        ep.add_function(
            Bdf::new(0, 0, 0),
            Box::new(NvmeController::new(backend, NvmeOptions::default())),
        )
        .expect("add function");
        let mut h = LoopbackHost::start(ep, rx, 4 << 20);
        h.cfg_read(BDF, 0).expect("enumerate");
        h.cfg_write(BDF, 0x10, BAR as u32).expect("bar lo");
        h.cfg_write(BDF, 0x14, 0).expect("bar hi");
        h.cfg_write(BDF, 0x04, 0x0006).expect("command register");
        let q = u32::from(ADMIN_DEPTH - 1);
        h.write32(BAR + 0x24, (q << 16) | q).expect("AQA");
        h.write64(BAR + 0x28, ASQ).expect("ASQ");
        h.write64(BAR + 0x30, ACQ).expect("ACQ");
        h.write32(BAR + 0x14, 1 | (6 << 16) | (4 << 20))
            .expect("CC");
        let deadline = Instant::now() + Duration::from_secs(5);
        while h.read32(BAR + 0x1c).expect("CSTS") & 1 == 0 {
            assert!(Instant::now() < deadline, "controller never became ready");
            std::thread::sleep(Duration::from_millis(1));
        }
        let ring = |sq, cq, sq_size, cq_size, qid| Ring {
            sq,
            cq,
            sq_size,
            cq_size,
            tail: 0,
            head: 0,
            phase: true,
            qid,
        };
        let mut host = Host {
            h,
            admin: ring(ASQ, ACQ, ADMIN_DEPTH, ADMIN_DEPTH, 0),
            io: ring(SQ1, CQ1, SQ_DEPTH, CQ_DEPTH, 1),
            cid: 0,
            _dir: dir,
        };
        host.admin_ok(Command {
            opcode: 0x09, // Set Features: Number of Queues
            cdw: [0x07, 0, 0, 0, 0, 0],
            ..Command::default()
        });
        host.admin_ok(Command {
            opcode: 0x05, // Create I/O CQ 1, physically contiguous, interrupts off
            prp1: CQ1,
            cdw: [1 | (u32::from(CQ_DEPTH - 1) << 16), 1, 0, 0, 0, 0],
            ..Command::default()
        });
        host.admin_ok(Command {
            opcode: 0x01, // Create I/O SQ 1 on CQ 1
            prp1: SQ1,
            cdw: [
                1 | (u32::from(SQ_DEPTH - 1) << 16),
                1 | (1 << 16),
                0,
                0,
                0,
                0,
            ],
            ..Command::default()
        });
        host
    }

    /// Place `cmd` in the SQ without ringing the doorbell; returns its CID.
    fn queue(&mut self, io: bool, mut cmd: Command) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        cmd.cid = self.cid;
        let q = if io { &mut self.io } else { &mut self.admin };
        self.h
            .host_write(q.sq + u64::from(q.tail) * 64, &cmd.to_bytes());
        q.tail = (q.tail + 1) % q.sq_size;
        self.cid
    }

    fn ring_sq(&mut self, io: bool) {
        let q = if io { &self.io } else { &self.admin };
        let (db, tail) = (BAR + 0x1000 + u64::from(q.qid) * 8, q.tail);
        self.h.write32(db, u32::from(tail)).expect("SQ doorbell");
    }

    fn reap(&mut self, io: bool) -> Completion {
        let deadline = Instant::now() + Duration::from_secs(10);
        let q = if io { &mut self.io } else { &mut self.admin };
        loop {
            let raw = self.h.host_read(q.cq + u64::from(q.head) * 16, 16);
            let c = Completion::parse(raw.as_slice().try_into().expect("16 bytes"));
            if c.phase == q.phase {
                q.head = (q.head + 1) % q.cq_size;
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
        let (db, head) = (BAR + 0x1000 + u64::from(q.qid) * 8 + 4, q.head);
        self.h.write32(db, u32::from(head)).expect("CQ doorbell");
    }

    fn admin_ok(&mut self, cmd: Command) {
        let cid = self.queue(false, cmd);
        self.ring_sq(false);
        let c = self.reap(false);
        self.ack(false);
        assert_eq!(
            (c.cid, c.status),
            (cid, 0),
            "admin opcode {:#x}",
            cmd.opcode
        );
    }
}

fn rw(write: bool, slba: u64, nlb: u16, prp1: u64, prp2: u64) -> Command {
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
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed as u8)
        .collect()
}

/// Submit `n` commands with one doorbell; reap and check all of them: success, their own CIDs
/// (in submission order: the controller runs a batch in order), SQ 1, and an SQ head that
/// covers the whole batch (every entry was fetched before the first completion was posted).
fn batch(host: &mut Host, cmds: &[Command]) {
    let cids: Vec<u16> = cmds.iter().map(|c| host.queue(true, *c)).collect();
    let tail = host.io.tail;
    host.ring_sq(true);
    for (i, cid) in cids.iter().enumerate() {
        let c = host.reap(true);
        assert_eq!(c.cid, *cid, "completion {i} out of order");
        assert_eq!(c.status, 0, "command {i} (cid {cid}) failed");
        assert_eq!(c.sq_id, 1);
        assert_eq!(c.sq_head, tail, "SQ head in completion {i}");
    }
    host.ack(true);
}

#[test]
fn one_doorbell_batches_of_40_with_sq_wrap_and_cq_phase_flip() {
    let mut host = Host::start();
    let n = 40usize;
    // 40 writes of 4 KiB each (PRP1 only) to LBAs 8*i, data distinct per command.
    for i in 0..n {
        host.h
            .host_write(WBUF + i as u64 * 4096, &pattern(4096, i as u32 + 1));
    }
    let writes: Vec<Command> = (0..n)
        .map(|i| rw(true, 8 * i as u64, 8, WBUF + i as u64 * 4096, 0))
        .collect();
    batch(&mut host, &writes);
    assert_eq!(host.io.tail, 40);
    // 40 reads starting at SQ slot 40 wrap around the 48-slot ring; their 40 completions take
    // CQ slots 40..64 and 0..16 (so the phase tag flips mid-batch).
    let reads: Vec<Command> = (0..n)
        .map(|i| rw(false, 8 * i as u64, 8, RBUF + i as u64 * 4096, 0))
        .collect();
    batch(&mut host, &reads);
    assert_eq!(host.io.tail, 32, "the read batch wrapped the SQ");
    assert!(!host.io.phase, "the CQ wrapped");
    for i in 0..n {
        let got = host.h.host_read(RBUF + i as u64 * 4096, 4096);
        assert!(got == pattern(4096, i as u32 + 1), "data of command {i}");
    }
    // A later single command still completes with a correct head after the wrapped batch.
    batch(&mut host, &[rw(false, 0, 8, RBUF, 0)]);
    assert_eq!(host.h.host_read(RBUF, 4096), pattern(4096, 1));
}

#[test]
fn prp_list_with_partly_contiguous_pages() {
    let mut host = Host::start();
    // 32 KiB starting mid-page: PRP1 covers 3 KiB, the list 8 more pages laid out in three
    // contiguous runs (2 pages after PRP1's, 3 elsewhere, then 3 scattered singles).
    let len = 32 * 1024usize;
    let prp1 = WBUF + 0x400;
    let pages = [
        WBUF + 0x1000,
        WBUF + 0x2000,
        WBUF + 0x8000,
        WBUF + 0x9000,
        WBUF + 0xa000,
        WBUF + 0x4000,
        WBUF + 0x6000,
        WBUF + 0xc000,
    ];
    let data = pattern(len, 77);
    host.h.host_write(prp1, &data[..3072]);
    let mut at = 3072;
    for p in pages {
        let n = (len - at).min(4096);
        host.h.host_write(p, &data[at..at + n]);
        at += n;
    }
    let list: Vec<u8> = pages.iter().flat_map(|p| p.to_le_bytes()).collect();
    host.h.host_write(LIST, &list);
    batch(&mut host, &[rw(true, 100, 64, prp1, LIST)]);
    // Read back into one contiguous buffer (the whole list is one run) and compare.
    let rlist: Vec<u8> = (1..=8u64)
        .flat_map(|k| (RBUF + k * 0x1000).to_le_bytes())
        .collect();
    host.h.host_write(LIST + 0x800, &rlist);
    batch(&mut host, &[rw(false, 100, 64, RBUF + 0x400, LIST + 0x800)]);
    let got = host.h.host_read(RBUF + 0x400, len);
    assert!(got == data, "read-back of the scattered write differs");
    // And the on-media layout is the logical order: read LBAs 106.. (bytes 3072..) alone.
    batch(&mut host, &[rw(false, 106, 8, RBUF, 0)]);
    assert!(host.h.host_read(RBUF, 4096) == data[3072..3072 + 4096]);
}

#[test]
fn mixed_batch_with_prefetched_writes_and_a_bad_prp() {
    // 20 commands in one doorbell: 16 KiB writes through their own PRP lists (their data is
    // read ahead, several at once), a few 4 KiB reads between them, and one write whose PRP2
    // is misaligned: it alone fails, with PRP Offset Invalid, and writes nothing.
    let mut host = Host::start();
    let len = 16 * 1024usize;
    let mut cmds = Vec::new();
    let mut expect = Vec::new(); // (slba, seed) written
    for i in 0..20u64 {
        let slba = 32 * i;
        if i % 5 == 4 {
            cmds.push(rw(false, 0, 8, RBUF + 0x10_0000 + i * 0x1000, 0));
            continue;
        }
        let buf = WBUF + i * 0x8000 + 0x200;
        host.h.host_write(buf, &pattern(len, i as u32 + 9));
        let list = LIST + i * 0x40;
        // The buffer starts 0x200 into a page: PRP1 covers 0xe00 bytes, the list 4 pages.
        let pages: Vec<u8> = (1..5u64)
            .flat_map(|p| ((buf & !0xfff) + p * 0x1000).to_le_bytes())
            .collect();
        host.h.host_write(list, &pages);
        let prp2 = if i == 7 { list + 4 } else { list };
        cmds.push(rw(true, slba, 32, buf, prp2));
        if i != 7 {
            expect.push((slba, i as u32 + 9));
        }
    }
    let cids: Vec<u16> = cmds.iter().map(|c| host.queue(true, *c)).collect();
    host.ring_sq(true);
    for (i, cid) in cids.iter().enumerate() {
        let c = host.reap(true);
        assert_eq!(c.cid, *cid, "completion {i} out of order");
        let want = if i == 7 { 0x13 | (1 << 14) } else { 0 };
        assert_eq!(c.status, want, "status of command {i}");
        assert_eq!(c.sq_head, 20);
    }
    host.ack(true);
    let rlist: Vec<u8> = (1..4u64)
        .flat_map(|p| (RBUF + p * 0x1000).to_le_bytes())
        .collect();
    host.h.host_write(LIST + 0xc00, &rlist);
    for (slba, seed) in expect {
        batch(&mut host, &[rw(false, slba, 32, RBUF, LIST + 0xc00)]);
        let got = host.h.host_read(RBUF, len);
        assert!(got == pattern(len, seed), "data written at LBA {slba}");
    }
    batch(&mut host, &[rw(false, 7 * 32, 32, RBUF, LIST + 0xc00)]);
    assert!(
        host.h.host_read(RBUF, len).iter().all(|&b| b == 0),
        "the failed write left its LBAs untouched"
    );
}
