//! The NVMe controller model driven by the project's own user-space NVMe driver
//! (`pcietun::drivers::nvme`) on the host stack (`pcietun::host::Host`), the two joined by an
//! in-process pipe that carries every access as TLP bytes: enumeration and BAR sizing,
//! bring-up, Identify, I/O queues, writes and reads with PRP lists, flush, Write Zeroes, error
//! and SMART logs, MSI-X per queue with masking, INTx with INTMS, reset, shutdown, FLR,
//! asynchronous events, batched command fetch with SQ wrap and CQ phase flips, and the
//! prefetch of Write data.
//!
//! The driver is the one the demo and the benchmarks use. Where a test is about a raw register
//! behaviour (CAP, INTMS/INTMC, the MSI-X table and PBA, CC.EN, FLR, Bus Master Enable, a
//! malformed command) it reaches the register or builds the entry itself, with the shared
//! layouts of `pcietun::pci::class::nvme`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::channel;
use pcietun::drivers::mem::DmaBuffer;
use pcietun::drivers::nvme::{Data, IoDone, IoOp, NvmeConfig, NvmeDriver, SlotData, IOVA};
use pcietun::drivers::CompletionMode;
use pcietun::endpoint::loopback::serve_channels;
use pcietun::endpoint::nvme::{Backend, NvmeController, NvmeOptions};
use pcietun::endpoint::{Bdf, Proxy, ProxyConfig};
use pcietun::host::dma::Access;
use pcietun::host::vfio_user::IrqIndex;
use pcietun::host::{ChannelDownlink, Host, HostConfig, RemoteFunction};
use pcietun::pci::class::nvme::identify::nidt;
use pcietun::pci::class::nvme::{
    aer, cap, cns, csts, feat, log, reg, vs, ErrorLogEntry, SmartLog, Sqe, Status, NSID_ALL,
};
use pcietun::pci::spec::{command, msix, status};
use zerocopy::FromBytes;

const BLOCKS: u64 = 8192; // 4 MiB namespace
/// Where tests that build their own PRPs register their memory.
const TEST_IOVA: u64 = 0x60_0000_0000;

/// An NVMe controller on a temporary file behind an endpoint, and a host that enumerated it.
struct Rig {
    host: Arc<Host>,
    f: RemoteFunction,
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.img");
    let backend = Backend::create(&path, BLOCKS * 512).unwrap();
    let (mut ep, out) = Proxy::new(ProxyConfig::default());
    ep.add_function(
        Bdf::new(0, 0, 0),
        Box::new(NvmeController::new(backend, NvmeOptions::default())),
    )
    .unwrap();
    // Host → endpoint through one channel; the endpoint thread answers into the host.
    let (tx, rx) = channel::unbounded::<Vec<u8>>();
    let host = Host::new(Arc::new(ChannelDownlink(tx)), HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (host.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let tick = Duration::from_millis(10);
        serve_channels(&mut ep, &rx, &out, |t| h.on_tlp(t), &s, tick);
    });
    host.on_link_up();
    let fns = host.rescan();
    assert_eq!(fns.len(), 1, "the controller enumerates");
    let f = host.open(fns[0].bdf).unwrap();
    Rig {
        host,
        f,
        path,
        stop,
        thread: Some(thread),
        _dir: dir,
    }
}

impl Rig {
    fn driver(&self, depth: usize, completion: CompletionMode) -> NvmeDriver {
        let cfg = NvmeConfig {
            depth,
            completion,
            ..NvmeConfig::default()
        };
        NvmeDriver::open(self.f.clone(), cfg).unwrap()
    }

    /// Memory of the test's own at [`TEST_IOVA`], for commands whose PRPs it builds.
    fn test_memory(&self, len: usize) -> Arc<DmaBuffer> {
        let mem = Arc::new(DmaBuffer::new(len));
        self.f
            .register_dma(TEST_IOVA, mem.clone(), Access::RW)
            .unwrap();
        mem
    }

    fn interrupts(&self) -> u64 {
        self.host.stats().interrupts.load(Ordering::Relaxed)
    }

    fn csts(&self) -> u32 {
        self.f.bar_read32(0, reg::CSTS).unwrap()
    }

    /// Status.Interrupt Status: the function's INTx line (PCI Local Bus 3.0 §6.2.3).
    fn intx_level(&self) -> bool {
        let v = self.f.config_read(0x04).unwrap();
        (v >> 16) as u16 & status::INTERRUPT_STATUS != 0
    }
}

/// Poll `what` until it holds, for at most 5 s.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed as u8)
        .collect()
}

fn ok(d: IoDone) {
    assert_eq!(d.status, Status::SUCCESS, "command in slot {}", d.slot);
}

#[test]
fn enumeration_bring_up_and_identify() {
    let r = rig();
    let i = r.f.info();
    assert_eq!((i.vendor, i.device, i.class), (0x1b36, 0x0e01, 0x01_08_02));
    let bar = i.bars[0];
    assert_eq!(
        (bar.size, bar.is64, bar.prefetchable, bar.io),
        (0x4000, true, false, false),
        "BAR0: 16 KiB, 64-bit, non-prefetchable"
    );
    let c = u64::from(r.f.bar_read32(0, reg::CAP).unwrap())
        | (u64::from(r.f.bar_read32(0, reg::CAP + 4).unwrap()) << 32);
    assert_eq!(cap::mqes(c), 1023, "MQES");
    assert_ne!(c & cap::CQR, 0, "CQR");
    assert_eq!(cap::dstrd(c), 0, "doorbell stride 0");
    assert_ne!(c & cap::CSS_NVM, 0, "NVM command set");
    assert_eq!(cap::to(c), 30, "15 s timeout");
    assert_eq!(r.f.bar_read32(0, reg::VS).unwrap(), vs::V1_4_0);

    let mut d = r.driver(4, CompletionMode::Poll);
    assert_eq!(d.info().model, "pcietun NVMe controller");
    assert_eq!(d.info().version, (1, 4, 0));
    assert_eq!((d.info().blocks, d.info().block_size), (BLOCKS, 512));
    assert_eq!(d.info().max_transfer, 128 * 1024, "MDTS 5");

    let ctrl = d.identify_controller().unwrap();
    assert_eq!(ctrl.vid.get(), 0x1b36);
    assert!(ctrl.mn.starts_with(b"pcietun NVMe controller"));
    assert_eq!((ctrl.sqes, ctrl.cqes), (0x66, 0x44), "SQES/CQES");
    assert_eq!(ctrl.nn.get(), 1, "NN");
    assert_eq!(ctrl.ver.get(), vs::V1_4_0);
    assert!(ctrl.subnqn.starts_with(b"nqn.2024-01.dev.pcietun:nvme:"));

    let ns = d.identify_namespace(1).unwrap();
    assert_eq!(ns.nsze.get(), BLOCKS);
    assert_eq!(ns.lba_format().lbads, 9, "512-byte LBA format");
    assert_ne!(ns.nguid, [0; 16]);

    let list = d.identify(cns::ACTIVE_NAMESPACES, 0).unwrap();
    assert_eq!(
        &list[0..8],
        &[1, 0, 0, 0, 0, 0, 0, 0],
        "one active namespace"
    );
    let descs = d.identify(cns::NS_DESCRIPTORS, 1).unwrap();
    // EUI-64 first, then NGUID, which must match Identify Namespace.
    assert_eq!(&descs[0..2], &[nidt::EUI64, 8]);
    assert_eq!(&descs[12..14], &[nidt::NGUID, 16]);
    assert_eq!(&descs[16..32], &ns.nguid[..]);
    // I/O command set specific controller data for NVM (what Linux 6.x asks for).
    d.identify(cns::CSI_CONTROLLER, 0).unwrap();

    // Bad CNS: Invalid Field in Command, DNR.
    let mut page = vec![0u8; 4096];
    let c1 = d
        .admin_command(Sqe::identify(0x7f, 0), Data::FromDevice(&mut page))
        .unwrap();
    assert_eq!(c1.status(), Status::INVALID_FIELD);
    assert_eq!(c1.status().field(), 0x4002);
    // Unknown admin opcode: Invalid Command Opcode.
    let c2 = d.admin_command(Sqe::new(0x7e), Data::None).unwrap();
    assert_eq!(c2.status(), Status::INVALID_OPCODE);
    // SQ head reporting: after 12 admin commands the head is 12 — the driver's bring-up sent
    // 5 (Identify Controller and Namespace, Set Features, Create I/O CQ and SQ), this test 5
    // Identify and the 2 above — and it is where the driver's tail stands.
    assert_eq!((c1.sqhd.get(), c2.sqhd.get()), (11, 12));
    assert_eq!((c1.sqid.get(), c2.sqid.get()), (0, 0));
    let admin = d.admin_queue_pointers();
    assert_eq!((admin.qid, admin.entries), (0, 32));
    assert_eq!(
        admin.sq_tail,
        c2.sqhd.get(),
        "the controller consumed every entry"
    );
    assert_eq!((admin.cq_head, admin.phase), (12, true));
    d.shutdown().unwrap();
}

#[test]
fn write_read_back_with_prp_lists_and_flush() {
    let r = rig();
    let mut d = r.driver(4, CompletionMode::Poll);
    let mine = r.test_memory(1 << 20);

    // One block, PRP1 only.
    let a = pattern(512, 1);
    ok(d.io_command(Sqe::write(1, 3, 1), Data::ToDevice(&a))
        .unwrap());
    // 8 KiB starting 0x800 into a page, as an O_DIRECT user buffer may: PRP1 with an offset
    // and a two-entry PRP list, in memory the test registered and laid out itself.
    let b = pattern(8192, 2);
    mine.write_at(0x1_0800, &b).unwrap();
    let list: Vec<u8> = [0x1_1000u64, 0x1_2000]
        .iter()
        .flat_map(|o| (TEST_IOVA + o).to_le_bytes())
        .collect();
    mine.write_at(0x8000, &list).unwrap();
    let w = Sqe::write(1, 100, 16).with_prps(TEST_IOVA + 0x1_0800, TEST_IOVA + 0x8000);
    ok(d.io_command(w, Data::None).unwrap());
    // 128 KiB (MDTS): PRP1 and a 31-entry list (the driver's own).
    let c = pattern(128 * 1024, 3);
    ok(d.io_command(Sqe::write(1, 1000, 256), Data::ToDevice(&c))
        .unwrap());
    // Flush: fdatasync on the backing file.
    d.flush().unwrap();

    // Read each back.
    for (slba, want) in [(3u64, &a), (100, &b), (1000, &c)] {
        let mut got = vec![0xee; want.len()];
        let blocks = (want.len() / 512) as u32;
        ok(
            d.io_command(Sqe::read(1, slba, blocks), Data::FromDevice(&mut got))
                .unwrap(),
        );
        assert!(&got == want, "LBA {slba}");
    }
    // And the backing file holds the data at the right offsets.
    let file = std::fs::read(&r.path).unwrap();
    assert_eq!(&file[3 * 512..4 * 512], &a[..]);
    assert_eq!(&file[100 * 512..100 * 512 + 8192], &b[..]);
    assert_eq!(&file[1000 * 512..1000 * 512 + 131072], &c[..]);

    // Write Zeroes over part of the 8 KiB region.
    ok(d.io_command(Sqe::write_zeroes(1, 102, 4), Data::None)
        .unwrap());
    let file = std::fs::read(&r.path).unwrap();
    assert!(file[102 * 512..106 * 512].iter().all(|&x| x == 0));
    assert_eq!(&file[106 * 512..116 * 512], &b[6 * 512..]);

    // Out of range: LBA Out of Range, DNR; bad namespace: Invalid Namespace or Format.
    let mut buf = vec![0u8; 1024];
    let oor = d.io_command(Sqe::read(1, BLOCKS - 1, 2), Data::FromDevice(&mut buf));
    assert_eq!(oor.unwrap().status, Status::LBA_OUT_OF_RANGE);
    assert_eq!(Status::LBA_OUT_OF_RANGE.field(), 0x4080);
    let bad_ns = d.io_command(Sqe::read(2, 0, 1), Data::FromDevice(&mut buf[..512]));
    assert_eq!(bad_ns.unwrap().status, Status::INVALID_NAMESPACE);
    // Misaligned PRP1 (not DW aligned): PRP Offset Invalid.
    let misaligned = Sqe::read(1, 0, 1).with_prps(TEST_IOVA + 2, 0);
    let m = d.io_command(misaligned, Data::None).unwrap();
    assert_eq!(m.status, Status::PRP_OFFSET_INVALID);

    // The error log records the failures, newest first.
    let mut errors = vec![0u8; 256];
    d.get_log_page(log::ERROR, 0, &mut errors).unwrap();
    let newest = ErrorLogEntry::ref_from_bytes(&errors[..64]).unwrap();
    assert_eq!(newest.error_count.get(), 3, "3 errors so far");
    assert_eq!(newest.status.get() >> 1, Status::PRP_OFFSET_INVALID.field());
    assert_eq!((newest.sqid.get(), newest.nsid.get()), (1, 1));
    let oldest = ErrorLogEntry::ref_from_bytes(&errors[128..192]).unwrap();
    assert_eq!(
        oldest.lba.get(),
        BLOCKS - 1,
        "the LBA of the out-of-range read"
    );

    // SMART log counts the I/O.
    let mut smart = vec![0u8; 512];
    d.get_log_page(log::SMART, NSID_ALL, &mut smart).unwrap();
    let s = SmartLog::ref_from_bytes(&smart[..]).unwrap();
    assert_eq!(s.host_writes.get(), 3, "host writes");
    assert_eq!(s.host_reads.get(), 3, "host reads");
    assert_eq!(s.temperature.get(), 308);
    d.shutdown().unwrap();
}

#[test]
fn msix_one_vector_per_queue_with_masking() {
    let r = rig();
    let mut d = r.driver(4, CompletionMode::Interrupt);
    let m = r.f.info().msix.expect("MSI-X");
    assert_eq!(m.vectors, 17, "admin + 16 I/O queues");
    // The driver armed vector 1 (its I/O queue); arm vector 0 (the admin queue's) here. Its
    // completions during bring-up were held as pending while it was masked: drain them.
    let v0 = r.f.interrupt_eventfd(IrqIndex::Msix, 0).unwrap();
    let _ = v0.wait_timeout(Duration::from_millis(200)).unwrap();

    d.get_features(feat::NUM_QUEUES, 0).unwrap();
    assert!(
        v0.wait_timeout(Duration::from_secs(5)).unwrap() >= 1,
        "admin CQ on vector 0"
    );
    // The I/O CQ's completion is one message on vector 1 (the I/O queue's), none on vector 0.
    assert_eq!(d.io_interrupts().unwrap(), 0, "no I/O yet");
    let before = r.interrupts();
    d.flush().unwrap();
    eventually("the I/O completion's interrupt on vector 1", || {
        d.io_interrupts().unwrap() == 1
    });
    assert_eq!(r.interrupts(), before + 1, "one message for one completion");
    assert_eq!(
        v0.wait_timeout(Duration::from_millis(100)).unwrap(),
        0,
        "the I/O CQ has its own vector"
    );
    assert_eq!(d.io_interrupts().unwrap(), 1);

    // Mask vector 1: its completion sets the pending bit instead of sending.
    let bar = usize::from(m.table_bar);
    let ctl1 = u64::from(m.table_offset) + msix::ENTRY_SIZE as u64 + 12;
    let pba = r.f.config_read(m.cap + msix::PBA as u16).unwrap();
    let (pba_bar, pba_off) = ((pba & msix::BIR_MASK) as usize, u64::from(pba & !7));
    r.f.bar_write32(bar, ctl1, msix::VECTOR_MASKED).unwrap();
    let n = r.interrupts();
    d.flush().unwrap();
    eventually("PBA bit 1", || {
        r.f.bar_read32(pba_bar, pba_off).unwrap() & 2 != 0
    });
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(r.interrupts(), n, "no message while masked");
    // Unmask: the pending message goes out, on vector 1, and the bit clears.
    let taken = d.io_interrupts().unwrap();
    r.f.bar_write32(bar, ctl1, 0).unwrap();
    eventually("the pending message", || r.interrupts() == n + 1);
    assert_eq!(r.f.bar_read32(pba_bar, pba_off).unwrap() & 2, 0);
    eventually("the pending message on vector 1", || {
        d.io_interrupts().unwrap() == taken + 1
    });
    assert_eq!(
        v0.wait_timeout(Duration::ZERO).unwrap(),
        0,
        "not on vector 0"
    );
    d.shutdown().unwrap();
}

#[test]
fn intx_fallback_and_intms() {
    let r = rig();
    // Polled I/O queue, no MSI-X: the admin CQ (interrupts always enabled) drives INTA.
    let mut d = r.driver(4, CompletionMode::Poll);
    let get = || Sqe::get_features(feat::NUM_QUEUES, 0, 0);
    let mut done = Vec::new();
    let mut reap = |d: &mut NvmeDriver| {
        let n0 = done.len();
        eventually("the admin completion", || {
            d.admin_completions(&mut |c| done.push(c)).unwrap();
            done.len() > n0
        });
        assert_eq!(done.last().unwrap().status(), Status::SUCCESS);
    };

    // A completion the driver has not consumed asserts INTA; the CQ head doorbell that
    // consumes it deasserts it.
    let before = r.interrupts();
    d.admin_submit(get()).unwrap();
    eventually("INTA asserted", || r.intx_level());
    assert!(r.interrupts() > before, "an Assert_INTA message");
    reap(&mut d);
    eventually("INTA deasserted", || !r.intx_level());

    // INTMS masks the interrupt; INTMC unmasks it (and the still-pending entry re-asserts).
    r.f.bar_write32(0, reg::INTMS, 1).unwrap();
    assert_eq!(r.f.bar_read32(0, reg::INTMS).unwrap(), 1);
    d.admin_submit(get()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!r.intx_level(), "masked by INTMS");
    r.f.bar_write32(0, reg::INTMC, 1).unwrap();
    eventually("INTA asserted after INTMC", || r.intx_level());
    reap(&mut d);
    eventually("INTA deasserted", || !r.intx_level());

    // Interrupt Disable in the Command register gates the message.
    let cmd = r.f.config_read(0x04).unwrap() & 0xffff;
    let disable = u32::from(command::INTX_DISABLE);
    r.f.config_write(0x04, cmd | disable).unwrap();
    let before = r.interrupts();
    d.admin_submit(get()).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(r.interrupts(), before, "no Assert_INTA while disabled");
    r.f.config_write(0x04, cmd & !disable).unwrap();
    eventually("Assert_INTA once enabled", || r.interrupts() > before);
    reap(&mut d);
    eventually("INTA deasserted", || !r.intx_level());
    d.shutdown().unwrap();
}

#[test]
fn reset_shutdown_and_flr() {
    let r = rig();
    let mut d = r.driver(4, CompletionMode::Poll);
    let data = pattern(512, 5);
    ok(d.io_command(Sqe::write(1, 7, 1), Data::ToDevice(&data))
        .unwrap());

    // Controller reset: RDY drops. A second bring-up then creates I/O queue 1 again, which
    // it could not if the reset had left the old one.
    r.f.bar_write32(0, reg::CC, 0).unwrap();
    eventually("CSTS.RDY = 0", || r.csts() & csts::RDY == 0);
    drop(d);
    let mut d = r.driver(4, CompletionMode::Poll);
    let c = d.admin_command(Sqe::delete_io_sq(5), Data::None).unwrap();
    assert_eq!(c.status(), Status::INVALID_QID, "no SQ 5");
    assert_eq!(c.status().field(), 0x4101);
    // The media kept the data.
    let mut got = vec![0u8; 512];
    ok(d.io_command(Sqe::read(1, 7, 1), Data::FromDevice(&mut got))
        .unwrap());
    assert_eq!(got, data);

    // Queue deletion rules: a CQ still used by an SQ cannot go.
    let c = d.admin_command(Sqe::delete_io_cq(1), Data::None).unwrap();
    assert_eq!(c.status(), Status::INVALID_QUEUE_DELETION);

    // Shutdown: the driver deletes its queues, sets CC.SHN and waits for SHST complete.
    d.shutdown().unwrap();
    assert_eq!(r.csts() & csts::RDY, 0, "disabled after the shutdown");

    // Function Level Reset: config space back to power-on values.
    let pcie = r.f.info().pcie.expect("PCI Express capability");
    let devctl = r.f.config_read(pcie + 8).unwrap() & 0xffff;
    r.f.config_write(pcie + 8, devctl | 0x8000).unwrap();
    assert_eq!(
        r.f.config_read(0x04).unwrap() & 0xffff,
        0,
        "Command cleared"
    );
    assert_eq!(r.f.config_read(0x10).unwrap(), 0x4, "BAR0 cleared");
    // The memory BAR no longer decodes: reads are Unsupported Request.
    assert!(r.f.bar_read32(0, reg::CAP).is_err());
}

#[test]
fn async_event_on_temperature_threshold() {
    let r = rig();
    let mut d = r.driver(4, CompletionMode::Poll);
    let cid = d.admin_submit(Sqe::async_event_request()).unwrap();
    // Enable SMART temperature notices, then drop the over-temperature threshold below 308 K.
    d.set_features(feat::ASYNC_EVENT, feat::AEC_TEMPERATURE)
        .unwrap();
    d.set_features(feat::TEMP_THRESHOLD, 300).unwrap();
    let mut events = Vec::new();
    eventually("the AER completes", || {
        d.admin_completions(&mut |c| events.push(c)).unwrap();
        !events.is_empty()
    });
    assert_eq!(events[0].cid.get(), cid, "the AER completes");
    assert_eq!(
        events[0].dw0.get(),
        aer::dw0(aer::TYPE_SMART, aer::SMART_TEMPERATURE, log::SMART),
        "SMART/health, temperature threshold, log page 2"
    );
    assert_eq!(events[0].dw0.get(), 0x0002_0101);
    assert_eq!(d.get_features(feat::TEMP_THRESHOLD, 0).unwrap(), 300);
    let mut smart = vec![0u8; 512];
    d.get_log_page(log::SMART, 0, &mut smart).unwrap();
    assert_eq!(smart[0] & 2, 2, "critical warning: temperature");
    // AERL is 3: with four outstanding, a fifth is refused at once.
    for _ in 0..5 {
        d.admin_submit(Sqe::async_event_request()).unwrap();
    }
    let mut refused = Vec::new();
    eventually("the fifth AER completes", || {
        d.admin_completions(&mut |c| refused.push(c)).unwrap();
        !refused.is_empty()
    });
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].status(), Status::AER_LIMIT);
    assert_eq!(refused[0].status().field(), 0x4105);
    assert_eq!(d.admin_outstanding(), 4);
}

#[test]
fn dma_blocked_without_bus_master() {
    let r = rig();
    let mut d = r.driver(4, CompletionMode::Poll);
    d.identify_controller().unwrap();
    // Clear Bus Master Enable: the next command cannot even be fetched; the controller goes
    // fatal rather than touching host memory.
    r.f.config_write(0x04, u32::from(command::MEMORY_SPACE))
        .unwrap();
    d.admin_submit(Sqe::identify(cns::CONTROLLER, 0).with_prps(IOVA, 0))
        .unwrap();
    eventually("CSTS.CFS", || r.csts() & csts::CFS != 0);
}

/// One command of a [`batch`]: the entry, where its data is, and what to put in its slot's
/// buffer first (if anything).
type Cmd = (Sqe, SlotData, Vec<u8>);

/// Stage `cmds` (each in its own slot) and ring the SQ doorbell once; reap them all and
/// check: completions in submission order (the controller runs a batch in order), each
/// reporting the SQ head `head` — every entry was fetched before the first completion was
/// posted. Returns the completions, in order.
fn batch(d: &mut NvmeDriver, cmds: &[Cmd], head: u16) -> Vec<IoDone> {
    let mut slots = Vec::new();
    for (cmd, data, fill) in cmds {
        let slot = d.take_slot().expect("a free slot");
        d.fill_slot(slot, fill).unwrap();
        d.stage_command(slot, *cmd, *data).unwrap();
        slots.push(slot);
    }
    d.ring_doorbell().unwrap();
    let mut done = Vec::new();
    while done.len() < cmds.len() {
        d.wait(&mut |c| done.push(c)).unwrap();
    }
    let order: Vec<u16> = done.iter().map(|c| c.slot).collect();
    assert_eq!(order, slots, "completions out of order");
    for (i, c) in done.iter().enumerate() {
        assert_eq!(c.sq_head, head, "SQ head in completion {i}");
        assert_eq!(c.sq_id, 1, "SQ of completion {i}");
    }
    assert_eq!(
        d.io_queue_pointers().sq_tail,
        head,
        "every staged entry was fetched"
    );
    done
}

/// A command whose PRPs the test set.
fn given(sqe: Sqe) -> Cmd {
    (sqe, SlotData::AsGiven, Vec::new())
}

#[test]
fn the_driver_raises_max_read_request_size_to_4_kib() {
    let r = rig();
    let p = r.f.info().pcie.expect("a PCI Express capability");
    let mrrs = |f: &RemoteFunction| 128u32 << ((f.config_read(p + 8).unwrap() >> 12) & 7);
    assert_eq!(mrrs(&r.f), 512, "enumeration programs 512 B");
    let mut d = r.driver(4, CompletionMode::Poll);
    assert_eq!(mrrs(d.function()), 4096);
    // A 64 KiB write (its data read by the controller 4 KiB per request) and its read back.
    let data = pattern(64 * 1024, 5);
    d.transfer(IoOp::Write, 64, &mut data.clone(), &mut |_| {})
        .unwrap();
    let mut back = vec![0u8; data.len()];
    d.transfer(IoOp::Read, 64, &mut back, &mut |_| {}).unwrap();
    assert!(back == data, "data changed on the way");
}

#[test]
fn one_doorbell_batches_of_40_with_sq_wrap_and_cq_phase_flip() {
    let r = rig();
    // 47 slots: an SQ of 48 entries and a CQ of 95 (twice the depth, so the CQ head
    // doorbell may lag by up to 47 completions).
    let mut d = r.driver(47, CompletionMode::Poll);
    let n = 40usize;
    // 40 writes of 4 KiB each (PRP1 only) to LBAs 8*i, data distinct per command.
    let writes: Vec<Cmd> = (0..n)
        .map(|i| {
            let w = Sqe::write(1, 8 * i as u64, 8);
            (w, SlotData::Buffer(4096), pattern(4096, i as u32 + 1))
        })
        .collect();
    batch(&mut d, &writes, 40).into_iter().for_each(ok);
    let io = d.io_queue_pointers();
    assert_eq!((io.qid, io.entries, io.cq_entries), (1, 48, 95));
    assert_eq!(
        (io.cq_head, io.phase),
        (40, true),
        "CQ slots 0..40, phase 1"
    );
    // 40 reads starting at SQ slot 40 wrap around the 48-entry ring (tail 40 → 32); their
    // completions take CQ slots 40..80. Then 40 more: SQ 32 → 24, CQ slots 80..95 and
    // 0..25, so the phase tag flips mid-batch.
    let reads: Vec<Cmd> = (0..n)
        .map(|i| {
            (
                Sqe::read(1, 8 * i as u64, 8),
                SlotData::Buffer(4096),
                Vec::new(),
            )
        })
        .collect();
    for (head, cq) in [(32, (80, true)), (24, (25, false))] {
        for (i, c) in batch(&mut d, &reads, head).into_iter().enumerate() {
            ok(c);
            let mut got = vec![0u8; 4096];
            d.slot_data(c.slot, &mut got).unwrap();
            assert!(got == pattern(4096, i as u32 + 1), "data of command {i}");
        }
        let io = d.io_queue_pointers();
        assert_eq!(io.sq_tail, head, "the read batch wrapped the SQ");
        assert_eq!(
            (io.cq_head, io.phase),
            cq,
            "CQ head and phase after the batch"
        );
    }
    // A later single command still completes with a correct head after the wrapped batch.
    let one = batch(
        &mut d,
        &[(Sqe::read(1, 0, 8), SlotData::Buffer(4096), Vec::new())],
        25,
    );
    let mut got = vec![0u8; 4096];
    d.slot_data(one[0].slot, &mut got).unwrap();
    assert!(got == pattern(4096, 1));
    let io = d.io_queue_pointers();
    assert_eq!((io.sq_tail, io.cq_head, io.phase), (25, 26, false));
}

#[test]
fn prp_list_with_partly_contiguous_pages() {
    let r = rig();
    let mut d = r.driver(4, CompletionMode::Poll);
    let mine = r.test_memory(4 << 20);
    let (wbuf, rbuf, list) = (0x10_0000u64, 0x20_0000u64, 0x8000u64);
    let at = |off: u64| TEST_IOVA + off;
    // 32 KiB starting mid-page: PRP1 covers 3 KiB, the list 8 more pages laid out in three
    // contiguous runs (2 pages after PRP1's, 3 elsewhere, then 3 scattered singles).
    let len = 32 * 1024usize;
    let prp1 = wbuf + 0x400;
    let pages = [
        wbuf + 0x1000,
        wbuf + 0x2000,
        wbuf + 0x8000,
        wbuf + 0x9000,
        wbuf + 0xa000,
        wbuf + 0x4000,
        wbuf + 0x6000,
        wbuf + 0xc000,
    ];
    let data = pattern(len, 77);
    mine.write_at(prp1, &data[..3072]).unwrap();
    let mut o = 3072;
    for p in pages {
        let n = (len - o).min(4096);
        mine.write_at(p, &data[o..o + n]).unwrap();
        o += n;
    }
    let entries: Vec<u8> = pages.iter().flat_map(|&p| at(p).to_le_bytes()).collect();
    mine.write_at(list, &entries).unwrap();
    let w = Sqe::write(1, 100, 64).with_prps(at(prp1), at(list));
    batch(&mut d, &[given(w)], 1).into_iter().for_each(ok);
    // Read back into one contiguous buffer (the whole list is one run) and compare.
    let rlist: Vec<u8> = (1..=8u64)
        .flat_map(|k| at(rbuf + k * 0x1000).to_le_bytes())
        .collect();
    mine.write_at(list + 0x800, &rlist).unwrap();
    let rd = Sqe::read(1, 100, 64).with_prps(at(rbuf + 0x400), at(list + 0x800));
    batch(&mut d, &[given(rd)], 2).into_iter().for_each(ok);
    let mut got = vec![0u8; len];
    mine.read_at(rbuf + 0x400, &mut got).unwrap();
    assert!(got == data, "read-back of the scattered write differs");
    // And the on-media layout is the logical order: LBAs 106.. (bytes 3072..) alone.
    let file = std::fs::read(&r.path).unwrap();
    assert!(file[106 * 512..106 * 512 + 4096] == data[3072..3072 + 4096]);
}

#[test]
fn mixed_batch_with_prefetched_writes_and_a_bad_prp() {
    // 20 commands in one doorbell: 16 KiB writes through their own PRP lists (their data is
    // read ahead, several at once), a few 4 KiB reads between them, and one write whose PRP2
    // is misaligned: it alone fails, with PRP Offset Invalid, and writes nothing.
    let r = rig();
    let mut d = r.driver(20, CompletionMode::Poll);
    let mine = r.test_memory(4 << 20);
    let (wbuf, rbuf, list) = (0x10_0000u64, 0x30_0000u64, 0x8000u64);
    let at = |off: u64| TEST_IOVA + off;
    let len = 16 * 1024usize;
    let mut cmds = Vec::new();
    let mut expect = Vec::new(); // (slba, seed) written
    for i in 0..20u64 {
        let slba = 32 * i;
        if i % 5 == 4 {
            let rd = Sqe::read(1, 0, 8).with_prps(at(rbuf + i * 0x1000), 0);
            cmds.push(given(rd));
            continue;
        }
        let buf = wbuf + i * 0x8000 + 0x200;
        mine.write_at(buf, &pattern(len, i as u32 + 9)).unwrap();
        let l = list + i * 0x40;
        // The buffer starts 0x200 into a page: PRP1 covers 0xe00 bytes, the list 4 pages.
        let pages: Vec<u8> = (1..5u64)
            .flat_map(|p| at((buf & !0xfff) + p * 0x1000).to_le_bytes())
            .collect();
        mine.write_at(l, &pages).unwrap();
        let prp2 = if i == 7 { at(l + 4) } else { at(l) };
        cmds.push(given(Sqe::write(1, slba, 32).with_prps(at(buf), prp2)));
        if i != 7 {
            expect.push((slba, i as u32 + 9));
        }
    }
    for (i, c) in batch(&mut d, &cmds, 20).into_iter().enumerate() {
        let want = if i == 7 {
            Status::PRP_OFFSET_INVALID
        } else {
            Status::SUCCESS
        };
        assert_eq!(c.status, want, "status of command {i}");
    }
    assert_eq!(Status::PRP_OFFSET_INVALID.field(), 0x13 | (1 << 14));
    let mut got = vec![0u8; len];
    for (slba, seed) in expect {
        ok(
            d.io_command(Sqe::read(1, slba, 32), Data::FromDevice(&mut got))
                .unwrap(),
        );
        assert!(got == pattern(len, seed), "data written at LBA {slba}");
    }
    ok(
        d.io_command(Sqe::read(1, 7 * 32, 32), Data::FromDevice(&mut got))
            .unwrap(),
    );
    assert!(
        got.iter().all(|&b| b == 0),
        "the failed write left its LBAs untouched"
    );
}
