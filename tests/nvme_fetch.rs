//! Where a 4 KiB NVMe read's protocol steps run (issue 12), read from the event probes
//! (`pcietun::probe`) on a controller behind an in-process pipe, with the project's driver:
//!
//! * the SQ entry fetch is started by the endpoint's TLP thread in the pass that handled the
//!   doorbell (`endpoint/nvme/fetch.rs`) — the worker issues no read of its own, so no thread
//!   hand-off stands between the doorbell and the one round trip a read needs;
//! * the command's data, completion entry and MSI-X message reach the thread that sends them
//!   with one wake-up (the worker holds wake-ups while it posts);
//! * the driver writes the CQ head doorbell once per `depth` completions, not after each.
//!
//! One test in its own binary: the probes are process-wide.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam::channel;
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::endpoint::loopback::serve_channels;
use pcietun::endpoint::nvme::{Backend, NvmeController, NvmeOptions};
use pcietun::endpoint::{Bdf, Proxy, ProxyConfig};
use pcietun::host::{ChannelDownlink, Host, HostConfig};
use pcietun::probe::{self, Ev, Trace};

const DEPTH: usize = 8;
const COMMANDS: usize = 40;

fn qd1(d: &mut NvmeDriver, op: IoOp, n: usize) {
    for i in 0..n {
        let slot = d.take_slot().expect("a free slot");
        d.submit(slot, op, 8 * i as u64, 8).unwrap();
        while d.in_flight() > 0 {
            d.wait(&mut |c| assert!(c.status.is_success(), "{:?}", c.status))
                .unwrap();
        }
    }
}

/// The thread number of the events `ev`, all of them (they must agree).
fn threads_of(t: &Trace, ev: Ev) -> Vec<u8> {
    let mut v: Vec<u8> = t
        .events
        .iter()
        .filter(|e| e.ev == ev)
        .map(|e| e.thread)
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[test]
fn a_qd1_read_fetches_from_the_doorbell_and_posts_with_one_wakeup() {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::create(&dir.path().join("ns.img"), 4 << 20).unwrap();
    let (mut ep, out) = Proxy::new(ProxyConfig::default());
    ep.add_function(
        Bdf::new(0, 0, 0),
        Box::new(NvmeController::new(backend, NvmeOptions::default())),
    )
    .unwrap();
    let (tx, rx) = channel::unbounded::<Vec<u8>>();
    let host = Host::new(Arc::new(ChannelDownlink(tx)), HostConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (h, s) = (host.clone(), stop.clone());
    let thread = std::thread::Builder::new()
        .name("tlp-thread".into())
        .spawn(move || {
            let tick = Duration::from_millis(10);
            serve_channels(&mut ep, &rx, &out, |t| h.on_tlp(t), &s, tick);
        })
        .unwrap();
    host.on_link_up();
    let fns = host.rescan();
    let f = host.open(fns[0].bdf).unwrap();
    let cfg = NvmeConfig {
        depth: DEPTH,
        completion: CompletionMode::Interrupt,
        ..NvmeConfig::default()
    };
    let mut d = NvmeDriver::open(f, cfg).unwrap();
    qd1(&mut d, IoOp::Write, COMMANDS); // data to read, and a warm-up
    probe::start(1 << 16);
    qd1(&mut d, IoOp::Read, COMMANDS);
    let t = probe::stop();
    d.shutdown().unwrap();
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap();

    let n = COMMANDS as u64;
    assert_eq!(t.count(Ev::DrvSqDoorbell), n);
    assert_eq!(t.count(Ev::NvmeSqDoorbell), n);
    // One read per command — its SQ entry (4 KiB: PRP1 only, no list) — and it is queued
    // on the thread that handled the doorbell.
    assert_eq!(t.count(Ev::DmaReadQueued), n, "one DMA read per command");
    let tlp = threads_of(&t, Ev::NvmeSqDoorbell);
    assert_eq!(tlp.len(), 1);
    assert_eq!(t.thread(tlp[0]), "tlp-thread");
    assert_eq!(
        threads_of(&t, Ev::DmaReadQueued),
        tlp,
        "the SQ fetch is started by the TLP thread, not the worker"
    );
    // 16 data writes at MPS 256, the completion entry and the MSI-X message per command,
    // all sent by the worker under one wake-up hold.
    assert_eq!(t.count(Ev::DmaMwr), n * 17);
    assert_eq!(t.count(Ev::Msi), n);
    let wakes_by_worker = t
        .events
        .iter()
        .filter(|e| e.ev == Ev::OutboundWake && t.thread(e.thread) == "nvme-worker")
        .count() as u64;
    // Each read also kicks once (from the TLP thread); the worker wakes the drainer once
    // per command, for its 18 posted TLPs.
    assert_eq!(wakes_by_worker, n, "one wake-up per command's posted TLPs");
    // The CQ head doorbell: once per DEPTH + 1 completions (the CQ holds 2 × DEPTH + 1).
    let cq = t.count(Ev::DrvCqDoorbell);
    assert!(
        cq <= n / (DEPTH as u64 + 1) + 1,
        "{cq} CQ head doorbells for {n} completions"
    );
    assert_eq!(t.count(Ev::NvmeCqDoorbell), cq);
}
