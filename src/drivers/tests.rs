//! Driver tests against the appliance's real device models (NVMe controller on a temporary
//! file, DMA engine) over a direct in-process TLP pipe: host `Host` ⇄ endpoint `Proxy`,
//! every access as TLP bytes. (The transport between them is exercised by the demo and bench
//! tests; here the point is the drivers' behaviour, including their error paths.)

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel;

use super::dma_engine::{Direction, DmaEngineDriver, DmaEngineError};
use super::nvme::{InvalidRequest, IoOp, NvmeConfig, NvmeDriver, NvmeError, Unsupported};
use super::CompletionMode;
use crate::endpoint::dma_engine::DmaEngine;
use crate::endpoint::loopback::serve_channels;
use crate::endpoint::nvme::{Backend, NvmeController, NvmeOptions};
use crate::endpoint::{Bdf, Proxy, ProxyConfig};
use crate::host::{ChannelDownlink, Host, HostConfig, RemoteFunction};
use crate::pci::class::nvme::Status;

struct Rig {
    host: Arc<Host>,
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

impl Rig {
    fn start() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (mut ep, out) = Proxy::new(ProxyConfig::default());
        let backend = Backend::create(&dir.path().join("ns.img"), 8 << 20).unwrap();
        ep.add_function(
            Bdf::new(0, 0, 0),
            Box::new(NvmeController::new(backend, NvmeOptions::default())),
        )
        .unwrap();
        ep.add_function(Bdf::new(0, 0, 1), Box::new(DmaEngine::new(256 * 1024)))
            .unwrap();
        let (tx, rx) = channel::unbounded::<Vec<u8>>();
        let host = Host::new(Arc::new(ChannelDownlink(tx)), HostConfig::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (host.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let tick = Duration::from_millis(10);
            serve_channels(&mut ep, &rx, &out, |t| h.on_tlp(t), &s, tick);
        });
        host.on_link_up();
        assert_eq!(host.rescan().len(), 2, "both functions enumerate");
        Rig {
            host,
            stop,
            thread: Some(thread),
            _dir: dir,
        }
    }

    fn open(&self, class: u32) -> RemoteFunction {
        let f = self.host.functions();
        let info = f.iter().find(|i| i.class >> 8 == class).unwrap();
        self.host.open(info.bdf).unwrap()
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13) ^ (i >> 9) as u8 ^ seed)
        .collect()
}

#[test]
fn nvme_polling_driver_writes_and_reads_back_across_prp_lists() {
    let rig = Rig::start();
    let cfg = NvmeConfig {
        depth: 4,
        completion: CompletionMode::Poll,
        ..NvmeConfig::default()
    };
    let mut d = NvmeDriver::open(rig.open(0x0108), cfg).unwrap();
    assert_eq!(d.info().block_size, 512);
    assert_eq!(d.info().blocks, (8 << 20) / 512);
    assert_eq!(d.info().model, "pcietun NVMe controller");
    assert_eq!(d.info().version, (1, 4, 0));
    // 1 MiB + 1 block: full 128 KiB commands (PRP lists), one 2-page-or-less tail.
    let mut data = pattern((1 << 20) + 512, 7);
    let want = data.clone();
    let mut moved = 0u64;
    d.transfer(IoOp::Write, 100, &mut data, &mut |n| moved += n)
        .unwrap();
    assert_eq!(moved, want.len() as u64);
    let mut back = vec![0u8; want.len()];
    d.transfer(IoOp::Read, 100, &mut back, &mut |_| {}).unwrap();
    assert!(back == want, "read-back differs");
    // Neighbouring blocks were not touched.
    let mut before = vec![0xffu8; 512];
    d.transfer(IoOp::Read, 99, &mut before, &mut |_| {})
        .unwrap();
    assert!(before.iter().all(|&b| b == 0));
    d.shutdown().unwrap();
}

#[test]
fn nvme_interrupt_driver_reopens_and_rejects_bad_requests() {
    let rig = Rig::start();
    let f = rig.open(0x0108);
    let d = NvmeDriver::open(f.clone(), NvmeConfig::default()).unwrap();
    assert_eq!(d.depth(), 32);
    d.shutdown().unwrap();
    // A second bring-up of the same controller (disable, re-enable) works.
    let mut d = NvmeDriver::open(f.clone(), NvmeConfig::default()).unwrap();
    let blocks = d.info().blocks;
    let slot = d.take_slot().unwrap();
    assert!(matches!(
        d.submit(slot, IoOp::Read, blocks - 1, 2),
        Err(NvmeError::Invalid(InvalidRequest::BeyondNamespace { lba, blocks: 2, size }))
            if lba == blocks - 1 && size == blocks
    ));
    assert!(matches!(
        d.submit(slot, IoOp::Read, 0, 1024),
        Err(NvmeError::Invalid(InvalidRequest::TransferSize {
            blocks: 1024,
            ..
        }))
    ));
    d.submit(slot, IoOp::Read, blocks - 8, 8).unwrap();
    assert!(matches!(
        d.submit(slot, IoOp::Read, 0, 8),
        Err(NvmeError::Invalid(InvalidRequest::SlotBusy(s))) if s == slot
    ));
    let mut got = Vec::new();
    while d.in_flight() > 0 {
        d.wait(&mut |c| got.push(c)).unwrap();
    }
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].slot, got[0].status), (slot, Status::SUCCESS));
    let mut odd = vec![0u8; 100];
    assert!(matches!(
        d.transfer(IoOp::Read, 0, &mut odd, &mut |_| {}),
        Err(NvmeError::Invalid(InvalidRequest::NotBlocks {
            len: 100,
            ..
        }))
    ));
    drop(d);
    let bad = NvmeConfig {
        depth: 0,
        ..NvmeConfig::default()
    };
    assert!(matches!(
        NvmeDriver::open(f, bad),
        Err(NvmeError::Invalid(InvalidRequest::Depth(0)))
    ));
    // The DMA engine is not an NVMe controller.
    assert!(matches!(
        NvmeDriver::open(rig.open(0x0880), NvmeConfig::default()),
        Err(NvmeError::Unsupported(Unsupported::NotNvme(class))) if class >> 8 == 0x0880
    ));
}

#[test]
fn dma_engine_moves_data_both_ways_in_both_completion_modes() {
    let rig = Rig::start();
    for mode in [CompletionMode::Poll, CompletionMode::Interrupt] {
        let d = DmaEngineDriver::open(rig.open(0x0880), 512 * 1024, mode).unwrap();
        assert_eq!(d.card_buffer_size(), 256 * 1024);
        let before = d.completions().unwrap();
        let p = pattern(200 * 1024, 3);
        d.host_buffer().write_at(4096, &p).unwrap();
        d.transfer(Direction::DmaRead, 4096, 1024, p.len() as u32)
            .unwrap();
        d.transfer(Direction::DmaWrite, 300 * 1024, 1024, p.len() as u32)
            .unwrap();
        let mut back = vec![0u8; p.len()];
        d.host_buffer().read_at(300 * 1024, &mut back).unwrap();
        assert!(back == p, "{mode:?}: data changed on the way");
        assert_eq!(d.completions().unwrap(), before + 2);
        assert!(d.last_duration().unwrap() > Duration::ZERO);
        // Too big for the card's buffer / the host buffer: refused before touching the card.
        assert!(matches!(
            d.transfer(Direction::DmaRead, 0, 0, 256 * 1024 + 4),
            Err(DmaEngineError::Range { .. })
        ));
        assert!(matches!(
            d.transfer(Direction::DmaWrite, 512 * 1024 - 4, 0, 8),
            Err(DmaEngineError::Range { .. })
        ));
    }
    assert!(matches!(
        DmaEngineDriver::open(rig.open(0x0108), 4096, CompletionMode::Poll),
        Err(DmaEngineError::WrongIds { .. })
    ));
}
