//! The host agent against a small fake card on the far side of an in-memory TLP pipe: real TLP
//! bytes both ways (the `pcietun::tlp` codec), a card config space from `pcietun::pci`.
//!
//! Covers enumeration, MMIO, the software IOMMU (a card writing outside its window changes no
//! host memory; reads outside get UR), interrupts (MSI-X programmed by the host, INTx), the
//! completion timeout on a dead link, link-down failing blocked requests, hot-plug reporting at
//! the root port, and the rust-vmm vfio-user client driving the tunnelled card end to end.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use pcietun::host::dma::{Access, HeapMemory};
use pcietun::host::requester::RequestError;
use pcietun::host::tlpio::{MAX_TLP, ROOT_PORT};
use pcietun::host::vfio_user::irq::set_flags;
use pcietun::host::vfio_user::{
    Connection, FunctionServer, IrqIndex, ServerConfig, VfioDevice, CONFIG_REGION,
};
use pcietun::host::{Downlink, Host, HostConfig, HostEvent, LinkError};
use pcietun::pci::{Bar, ConfigSpace, ExpressConfig, FunctionIds, MsixCap, PciExpressCap};
use pcietun::tlp::build::{self, Cpl};
use pcietun::tlp::{Bdf, CplStatus, MemOp, Tlp, TlpHeader};

const CARD: Bdf = Bdf::new(1, 0, 0);
const BAR0: usize = 0x4000;
const MSIX_TABLE: usize = 0x2000;

/// Host → card: TLPs go into a channel the card thread reads.
#[derive(Debug)]
struct PipeLink(Mutex<mpsc::Sender<Vec<u8>>>);

impl Downlink for PipeLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.0
            .lock()
            .unwrap()
            .send(tlp.to_vec())
            .map_err(|_| LinkError::Closed)
    }
}

/// A link whose far end never answers.
#[derive(Debug)]
struct DeadLink;

impl Downlink for DeadLink {
    fn send_tlp(&self, _: &[u8]) -> Result<(), LinkError> {
        Ok(())
    }
}

struct Card {
    host: Arc<Host>,
    bar0: Arc<Mutex<Vec<u8>>>,
    cpl_rx: Mutex<mpsc::Receiver<Vec<u8>>>,
    mute: Arc<AtomicBool>,
}

fn card_config() -> ConfigSpace {
    let mut c = ConfigSpace::endpoint(FunctionIds {
        vendor_id: 0x1b36,
        device_id: 0x0010,
        class_code: 0x010802,
        revision: 2,
        interrupt_pin: 1,
        ..Default::default()
    });
    c.set_bar(
        0,
        Bar::Memory64 {
            size: BAR0 as u64,
            prefetchable: false,
        },
    )
    .unwrap();
    c.add_capability(Box::new(PciExpressCap::new(ExpressConfig::default())))
        .unwrap();
    c.add_capability(Box::new(MsixCap::new(4, 0, MSIX_TABLE as u32, 0, 0x3000)))
        .unwrap();
    c
}

fn send(host: &Host, f: impl FnOnce(&mut [u8]) -> usize) {
    let mut b = vec![0u8; MAX_TLP];
    let n = f(&mut b);
    host.on_tlp(&b[..n]);
}

/// Start a host wired to a fake card thread. The card answers config and memory requests.
fn setup(cfg: HostConfig) -> Card {
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    let host = Host::new(Arc::new(PipeLink(Mutex::new(tx))), cfg);
    let bar0 = Arc::new(Mutex::new(vec![0u8; BAR0]));
    let (cpl_tx, cpl_rx) = mpsc::channel();
    let mute = Arc::new(AtomicBool::new(false));
    let (h, b, m) = (host.clone(), bar0.clone(), mute.clone());
    std::thread::spawn(move || {
        let mut cs = card_config();
        while let Ok(bytes) = rx.recv() {
            if m.load(Ordering::Relaxed) {
                continue;
            }
            let t = Tlp::parse(&bytes).expect("host sent a valid TLP");
            match t.header {
                TlpHeader::Cfg(c) => {
                    let ok = c.target == CARD;
                    let mut data = [0u8; 4];
                    if ok && c.write {
                        for i in 0..4 {
                            if c.first_be & (1 << i) != 0 {
                                cs.write(c.register as usize + i, &t.data[i..i + 1]);
                            }
                        }
                    } else if ok {
                        cs.read(c.register as usize, &mut data);
                    }
                    let (status, payload): (CplStatus, &[u8]) = match (ok, c.write) {
                        (false, _) => (CplStatus::Ur, &[]),
                        (true, true) => (CplStatus::Sc, &[]),
                        (true, false) => (CplStatus::Sc, &data),
                    };
                    send(&h, |buf| {
                        Cpl::new(CARD, ROOT_PORT, c.tag, status)
                            .emit(buf, 4, 0, payload)
                            .unwrap()
                    });
                }
                TlpHeader::Mem(mr) => {
                    let r = pcietun::tlp::split::covered_bytes(
                        mr.address,
                        t.length_dw,
                        mr.first_be,
                        mr.last_be,
                    );
                    let hit = cs.decode(r.address, false);
                    match (mr.op, hit) {
                        (MemOp::Write, Some((0, off))) => {
                            let skip = (r.address & 3) as usize;
                            let off = off as usize;
                            b.lock().unwrap()[off..off + r.len as usize]
                                .copy_from_slice(&t.data[skip..skip + r.len as usize]);
                        }
                        (MemOp::Read, Some((0, off))) => {
                            let dw = (off as usize) & !3;
                            let n = t.length_dw as usize * 4;
                            let payload = b.lock().unwrap()[dw..dw + n].to_vec();
                            send(&h, |buf| {
                                Cpl::new(CARD, ROOT_PORT, mr.tag, CplStatus::Sc)
                                    .emit(buf, r.len as u16, (r.address & 0x7f) as u8, &payload)
                                    .unwrap()
                            });
                        }
                        (MemOp::Read, _) => send(&h, |buf| {
                            Cpl::new(CARD, ROOT_PORT, mr.tag, CplStatus::Ur)
                                .emit(buf, 4, 0, &[])
                                .unwrap()
                        }),
                        _ => {}
                    }
                }
                TlpHeader::Cpl(_) => {
                    let _ = cpl_tx.send(bytes.clone());
                }
                _ => {}
            }
        }
    });
    Card {
        host,
        bar0,
        cpl_rx: Mutex::new(cpl_rx),
        mute,
    }
}

impl Card {
    /// The card writes host memory (DMA or an MSI message).
    fn dma_write(&self, address: u64, data: &[u8]) {
        send(&self.host, |buf| {
            build::mem_write(buf, CARD, address, data).unwrap()
        });
    }

    /// The card reads host memory; `None` when the host answers UR.
    fn dma_read(&self, address: u64, len: usize) -> Option<Vec<u8>> {
        send(&self.host, |buf| {
            build::mem_read(buf, CARD, 0x42, address, len as u32).unwrap()
        });
        let rx = self.cpl_rx.lock().unwrap();
        let mut out = Vec::new();
        loop {
            let bytes = rx.recv_timeout(Duration::from_secs(5)).expect("completion");
            let t = Tlp::parse(&bytes).unwrap();
            let TlpHeader::Cpl(c) = t.header else {
                panic!()
            };
            assert_eq!((c.tag, c.requester_id), (0x42, CARD));
            if c.status != CplStatus::Sc {
                return None;
            }
            let skip = (c.lower_address & 3) as usize;
            let useful = (t.data.len() - skip).min(c.byte_count as usize);
            out.extend_from_slice(&t.data[skip..skip + useful]);
            if useful >= c.byte_count as usize {
                return Some(out);
            }
        }
    }

    /// The card fires MSI-X `vector` as its table says.
    fn msix(&self, vector: usize) {
        let e = MSIX_TABLE + 16 * vector;
        let (addr, data, masked) = {
            let b = self.bar0.lock().unwrap();
            let u = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
            (
                u64::from(u(e)) | u64::from(u(e + 4)) << 32,
                u(e + 8),
                u(e + 12) & 1 != 0,
            )
        };
        assert!(!masked, "vector {vector} is masked in the card's table");
        self.dma_write(addr, &data.to_le_bytes());
    }

    fn intx(&self, assert: bool) {
        send(&self.host, |buf| build::intx(buf, CARD, 0, assert).unwrap());
    }
}

fn drain(host: &Host) -> Vec<HostEvent> {
    std::iter::from_fn(|| host.next_event(Duration::from_millis(0))).collect()
}

fn root_port_pcie_cap(host: &Host) -> usize {
    let snap = host.root_port_snapshot();
    pcietun::pci::walk_capabilities(&snap)
        .into_iter()
        .find(|c| c.id == pcietun::pci::CapabilityId::Standard(0x10))
        .map(|c| c.offset as usize)
        .expect("root port has a PCIe capability")
}

#[test]
fn enumeration_mmio_and_user_space_driver_api() {
    let card = setup(HostConfig::default());
    let host = &card.host;
    host.on_link_up();
    let found = host.rescan();
    assert_eq!(found.len(), 1);
    let f = &found[0];
    assert_eq!(
        (f.bdf, f.vendor, f.device, f.class),
        (CARD, 0x1b36, 0x0010, 0x010802)
    );
    assert_eq!(f.bars[0].size, BAR0 as u64);
    assert_eq!(f.msix.map(|m| m.vectors), Some(4));
    let events = drain(host);
    assert!(
        events.contains(&HostEvent::FunctionAdded(CARD)),
        "{events:?}"
    );

    let dev = host.open(CARD).unwrap();
    assert_eq!(dev.config_read(0).unwrap(), 0x0010_1b36);
    dev.bar_write32(0, 0x100, 0xdead_beef).unwrap();
    assert_eq!(dev.bar_read32(0, 0x100).unwrap(), 0xdead_beef);
    // Unaligned, multi-DW access.
    dev.bar_write(0, 0x203, b"0123456789").unwrap();
    let mut b = [0u8; 10];
    dev.bar_read(0, 0x203, &mut b).unwrap();
    assert_eq!(&b, b"0123456789");
    // Out of the BAR: refused locally, nothing sent.
    assert_eq!(
        dev.bar_read32(0, BAR0 as u64),
        Err(RequestError::UnsupportedRequest)
    );
    // The host's requester got exactly-once completions for everything.
    assert_eq!(
        host.stats().unexpected_completions.load(Ordering::Relaxed),
        0
    );
}

#[test]
fn dma_windows_confine_the_card() {
    let card = setup(HostConfig::default());
    let host = &card.host;
    host.on_link_up();
    host.rescan();
    let dev = host.open(CARD).unwrap();
    let mem = Arc::new(HeapMemory::new(0xc00));
    dev.register_dma(0x10_0000, mem.clone(), Access::RW)
        .unwrap();

    // Inside the window: lands in host memory, reads back through completions (split at RCB).
    card.dma_write(0x10_0010, b"written by the card");
    assert_eq!(&mem.snapshot()[0x10..0x23], b"written by the card");
    mem.fill(0x200, &[7u8; 300]).unwrap();
    let got = card.dma_read(0x10_01f8, 316).unwrap();
    assert_eq!(got.len(), 316);
    assert_eq!(got[8..308], [7u8; 300][..]);
    assert_eq!(got[..8], [0u8; 8]);

    // Outside: the write changes no host memory, the read gets Unsupported Request.
    let before = mem.snapshot();
    card.dma_write(0x10_0bfc, b"straddles the end");
    card.dma_write(0x20_0000, b"elsewhere");
    card.dma_write(0x0f_fff0, &[1; 16]);
    assert_eq!(mem.snapshot(), before);
    assert_eq!(card.dma_read(0x20_0000, 4), None);
    assert_eq!(host.stats().dma_write_faults.load(Ordering::Relaxed), 3);
    assert_eq!(host.stats().dma_read_faults.load(Ordering::Relaxed), 1);
    let faults = drain(host)
        .into_iter()
        .filter(|e| matches!(e, HostEvent::DmaFault { .. }))
        .count();
    assert_eq!(faults, 4);

    // After unregistering, the same write is refused too.
    dev.unregister_dma(0x10_0000, 0xc00).unwrap();
    card.dma_write(0x10_0010, b"late");
    assert_eq!(&mem.snapshot()[0x10..0x14], b"writ");
}

#[test]
fn interrupts_reach_eventfds() {
    let card = setup(HostConfig::default());
    let host = &card.host;
    host.on_link_up();
    host.rescan();
    let dev = host.open(CARD).unwrap();
    // Arming vector 2 programs the card's MSI-X table entry 2 (and leaves the others masked).
    let e2 = dev.interrupt_eventfd(IrqIndex::Msix, 2).unwrap();
    // The table write is posted; a read behind it on the same link orders after it.
    dev.bar_read32(0, 0).unwrap();
    {
        let b = card.bar0.lock().unwrap();
        let ctrl = |v: usize| b[MSIX_TABLE + 16 * v + 12] & 1;
        assert_eq!((ctrl(0), ctrl(2)), (1, 0));
    }
    card.msix(2);
    assert_eq!(e2.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    // INTx: assert is delivered once (automasked), deassert clears the level.
    let ei = dev.interrupt_eventfd(IrqIndex::Intx, 0).unwrap();
    card.intx(true);
    assert_eq!(ei.wait_timeout(Duration::from_secs(5)).unwrap(), 1);
    card.intx(false);
    assert_eq!(host.stats().interrupts.load(Ordering::Relaxed), 2);
}

#[test]
fn completion_timeout_on_a_dead_link_returns_all_ones() {
    let timeout = Duration::from_millis(50);
    let card = setup(HostConfig {
        completion_timeout: timeout,
        ..HostConfig::default()
    });
    let host = &card.host;
    host.on_link_up();
    host.rescan();
    let mut dev = host.open(CARD).unwrap();
    drain(host);
    // The card stops answering (a dead link that still accepts frames).
    card.mute.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    assert_eq!(dev.bar_read32(0, 0), Err(RequestError::Timeout));
    let took = t0.elapsed();
    assert!(took >= timeout, "waited the completion timeout");
    assert!(took < timeout * 40, "but not much longer ({took:?})");
    // Through the vfio-user device view: all-ones, like a surprise-removed card.
    let mut data = [0u8; 4];
    dev.region_read(0, 0, &mut data).unwrap();
    assert_eq!(data, [0xff; 4]);
    let mut cfg = [0u8; 4];
    dev.region_read(CONFIG_REGION, 0, &mut cfg).unwrap();
    assert_eq!(cfg, [0xff; 4]);
    let events = drain(host);
    assert!(
        events
            .iter()
            .filter(|e| matches!(e, HostEvent::CompletionTimeout { .. }))
            .count()
            >= 3
    );

    // A host whose link swallows everything: even enumeration ends (finds nothing).
    let dead = Host::new(
        Arc::new(DeadLink),
        HostConfig {
            completion_timeout: Duration::from_millis(5),
            ..HostConfig::default()
        },
    );
    dead.on_link_up();
    assert!(dead.rescan().is_empty());
    assert_eq!(dead.cfg_read(CARD, 0), Err(RequestError::Timeout));
}

#[test]
fn link_down_fails_blocked_requests_at_once() {
    let card = setup(HostConfig {
        completion_timeout: Duration::from_secs(30),
        ..HostConfig::default()
    });
    let host = card.host.clone();
    host.on_link_up();
    host.rescan();
    let dev = host.open(CARD).unwrap();
    card.mute.store(true, Ordering::Relaxed);
    let reader = std::thread::spawn(move || dev.bar_read32(0, 0));
    std::thread::sleep(Duration::from_millis(50));
    host.on_link_down();
    assert_eq!(reader.join().unwrap(), Err(RequestError::LinkDown));
    // Everything after fails fast too.
    assert_eq!(host.cfg_read(CARD, 0), Err(RequestError::LinkDown));
    assert!(host.functions().is_empty());
}

#[test]
fn hot_plug_is_reported_at_the_root_port_slot() {
    let card = setup(HostConfig::default());
    let host = &card.host;
    let cap = root_port_pcie_cap(host);
    let rd16 = |off: usize| {
        let mut b = [0u8; 2];
        host.root_port_read(cap + off, &mut b);
        u16::from_le_bytes(b)
    };
    // The OS enables presence-detect, DLL-state-changed and hot-plug interrupts.
    let sltctl: u16 = (1 << 3) | (1 << 5) | (1 << 12);
    host.root_port_write(cap + 0x18, &sltctl.to_le_bytes());
    assert_eq!(rd16(0x1a) & (1 << 6), 0, "slot empty before the link is up");

    host.on_link_up();
    host.rescan();
    let sltsta = rd16(0x1a);
    assert_ne!(sltsta & (1 << 6), 0, "presence detect state");
    assert_ne!(sltsta & (1 << 3), 0, "presence detect changed");
    assert_ne!(sltsta & (1 << 8), 0, "data link layer state changed");
    assert_ne!(rd16(0x12) & (1 << 13), 0, "DLL link active");
    let ev = drain(host);
    assert!(ev.contains(&HostEvent::FunctionAdded(CARD)), "{ev:?}");
    assert!(ev.contains(&HostEvent::HotPlugInterrupt), "{ev:?}");
    // The OS acknowledges (RW1C), then the card goes away.
    host.root_port_write(cap + 0x1a, &((1u16 << 3) | (1 << 8)).to_le_bytes());
    assert_eq!(rd16(0x1a) & ((1 << 3) | (1 << 8)), 0);
    host.on_link_down();
    let sltsta = rd16(0x1a);
    assert_eq!(sltsta & (1 << 6), 0, "presence gone");
    assert_ne!(sltsta & (1 << 3), 0, "presence detect changed again");
    assert_eq!(rd16(0x12) & (1 << 13), 0, "link inactive");
    let ev = drain(host);
    assert!(ev.contains(&HostEvent::FunctionRemoved(CARD)), "{ev:?}");
    assert!(ev.contains(&HostEvent::HotPlugInterrupt), "{ev:?}");
    // Bridge header: bus numbers set for the tunnelled bus.
    let mut bus = [0u8; 3];
    host.root_port_read(0x18, &mut bus);
    assert_eq!(bus, [0, 1, 1]);
}

fn memfd(len: u64) -> std::fs::File {
    // SAFETY: plain syscall with a NUL-terminated name; the result is checked.
    let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fresh descriptor we own.
    let f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    f.set_len(len).unwrap();
    f
}

#[test]
fn rust_vmm_vfio_user_client_drives_the_tunnelled_card() {
    let card = setup(HostConfig::default());
    let host = &card.host;
    host.on_link_up();
    host.rescan();
    let dev = host.open(CARD).unwrap();
    let ctx = dev.context();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("01:00.0.sock");
    let server = FunctionServer::bind(&path).unwrap();
    let mut conn = Connection::new(dev, ctx.clone(), ServerConfig::default());
    std::thread::spawn(move || server.serve_forever(&mut conn));

    let mut c = vfio_user::Client::new(&path).unwrap();
    assert_eq!(c.region(0).map(|r| r.size), Some(BAR0 as u64));
    assert_eq!(c.region(CONFIG_REGION).map(|r| r.size), Some(4096));
    let mut id = [0u8; 4];
    c.region_read(CONFIG_REGION, 0, &mut id).unwrap();
    assert_eq!(
        u32::from_le_bytes(id),
        0x0010_1b36,
        "IDs through CfgRd0 TLPs"
    );
    // BAR sizing is virtualized: the guest sees the size, the card keeps the host's address.
    c.region_write(CONFIG_REGION, 0x10, &[0xff; 4]).unwrap();
    c.region_read(CONFIG_REGION, 0x10, &mut id).unwrap();
    assert_eq!(u32::from_le_bytes(id), !(BAR0 as u32 - 1) | 0b100);
    assert_eq!(card.host.functions()[0].bars[0].base % BAR0 as u64, 0);
    // BAR write and read through MWr/MRd TLPs.
    c.region_write(0, 0x40, b"vfio-user over a tunnel").unwrap();
    let mut back = [0u8; 23];
    c.region_read(0, 0x40, &mut back).unwrap();
    assert_eq!(&back, b"vfio-user over a tunnel");
    assert_eq!(
        &card.bar0.lock().unwrap()[0x40..0x57],
        b"vfio-user over a tunnel"
    );

    // Interrupts: MSI-X vector 1 armed with an eventfd; the card fires it.
    let efd = pcietun::host::vfio_user::EventFd::new().unwrap();
    c.set_irqs(
        2,
        set_flags::DATA_EVENTFD | set_flags::ACTION_TRIGGER,
        1,
        1,
        &[efd.as_raw_fd()],
    )
    .unwrap();
    c.region_read(0, 0, &mut id).unwrap(); // orders behind the table write
    card.msix(1);
    assert_eq!(efd.wait_timeout(Duration::from_secs(5)).unwrap(), 1);

    // DMA into guest RAM shared by memfd; outside the mapping nothing changes.
    let ram = memfd(0x10000);
    c.dma_map(0, 0x8000_0000, 0x10000, ram.as_raw_fd()).unwrap();
    card.dma_write(0x8000_0100, b"card DMA into guest RAM");
    let mut got = [0u8; 23];
    ram.read_exact_at(&mut got, 0x100).unwrap();
    assert_eq!(&got, b"card DMA into guest RAM");
    card.dma_write(0x8001_0000, b"past the end");
    card.dma_write(0x7fff_fff0, &[9; 16]);
    let mut all = vec![0u8; 0x10000];
    ram.read_exact_at(&mut all, 0).unwrap();
    assert!(all.iter().filter(|&&b| b == 9).count() == 0);
    assert_eq!(
        card.dma_read(0x8000_0100, 23).unwrap(),
        b"card DMA into guest RAM"
    );
    c.dma_unmap(0x8000_0000, 0x10000).unwrap();
    assert_eq!(card.dma_read(0x8000_0100, 4), None);
    assert!(ctx.dma.is_empty());
}

/// A link that accepts TLPs but keeps them (the transport later reports them dropped).
#[derive(Debug, Default)]
struct CaptureLink(Mutex<Vec<Vec<u8>>>);

impl Downlink for CaptureLink {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.0.lock().unwrap().push(tlp.to_vec());
        Ok(())
    }
}

#[test]
fn a_request_the_transport_drops_fails_at_once() {
    let link = Arc::new(CaptureLink::default());
    let host = Host::new(
        link.clone(),
        HostConfig {
            completion_timeout: Duration::from_secs(30),
            ..HostConfig::default()
        },
    );
    host.on_link_up();
    let h = host.clone();
    let reader = std::thread::spawn(move || h.cfg_read(CARD, 0));
    let t0 = Instant::now();
    let sent = loop {
        if let Some(t) = link.0.lock().unwrap().first().cloned() {
            break t;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "request never sent");
        std::thread::sleep(Duration::from_millis(1));
    };
    host.on_dropped(&sent);
    assert_eq!(reader.join().unwrap(), Err(RequestError::LinkDown));
    assert!(t0.elapsed() < Duration::from_secs(10));
    // A dropped posted write or a TLP that is not ours changes nothing.
    host.on_dropped(&[0u8; 3]);
}
