//! SR-IOV NVMe: "one SSD, several servers". One NVMe physical function over one backing file,
//! its virtual functions enabled by the appliance (`Proxy::enable_vfs`) and each presented
//! standalone (`Proxy::attach_vf_view`) to a host of its own, where the project's NVMe
//! driver (`pcietun::drivers::nvme`) brings it up as an ordinary NVMe controller.
//!
//! The hosts are full host stacks (`pcietun::host::Host`), every access TLP bytes through an
//! in-process pipe. Between them and the one endpoint sits a minimal per-host router — what
//! the appliance's pool does for real: each host sees only its own function, at 01:00.0 of
//! its own hierarchy; Routing IDs are translated both ways and every TLP from the endpoint
//! goes to the host owning the function named in its bytes 4–5 (Requester ID of DMA and
//! interrupts, Completer ID of completions). Each host gets other BAR windows, as separate
//! machines would, so that the endpoint's address routing cannot confuse them.
//!
//! Covered: concurrent I/O through two VFs (and the PF) with the data verified through the
//! driver and in the backing file, slice isolation and bounds, Identify per VF, MSI-X per VF,
//! FLR of one VF while the other runs I/O, VF MSE / NumVFs / VF Enable semantics and data
//! surviving VFs being disabled and enabled again, the view's configuration space as
//! `lspci -xxxx` text that the real `lspci` decodes as an NVMe controller, and a property
//! test that random configuration writes to one view change nothing of another view or the
//! PF.

#[path = "prereq/mod.rs"]
mod prereq;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crossbeam::channel::{self, Receiver, Sender};
use pcietun::drivers::nvme::{IoOp, NvmeConfig, NvmeDriver};
use pcietun::drivers::CompletionMode;
use pcietun::endpoint::nvme::{Backend, NvmeController, NvmeOptions, NvmeSriov, SliceLayout};
use pcietun::endpoint::wire::{self, CplStatus, ParsedHeader, ParsedKind};
use pcietun::endpoint::{Bdf, Proxy, ProxyConfig, VfError};
use pcietun::host::enumerate::Windows;
use pcietun::host::{Downlink, Host, HostConfig, LinkError, RemoteFunction};
use pcietun::pci::class::nvme::{csts, reg, Sqe, Status};
use pcietun::pci::lspci::{self, PciAddress};
use proptest::prelude::*;

const PF: Bdf = Bdf::new(0, 0, 0);
/// Blocks of each slice with the equal split of a 3-slice store (PF, VF 1, VF 2).
const SLICE: u64 = 4096;
const NVME_CLASS: u32 = 0x01_08_02;

/// Which appliance function a host is given.
#[derive(Debug, Clone, Copy)]
enum Target {
    Pf,
    Vf(u16),
}

type Ctl = Box<dyn FnOnce(&mut Proxy) + Send>;

/// Host k → the endpoint thread.
#[derive(Debug)]
struct Pipe(usize, Sender<(usize, Vec<u8>)>);

impl Downlink for Pipe {
    fn send_tlp(&self, tlp: &[u8]) -> Result<(), LinkError> {
        self.1
            .send((self.0, tlp.to_vec()))
            .map_err(|_| LinkError::Closed)
    }
}

/// One NVMe PF with two VFs on a file, one endpoint, and one host per target.
struct Pool {
    hosts: Vec<Arc<Host>>,
    /// The appliance function of each host (PF or the VF's view).
    functions: Vec<Bdf>,
    ctl: Sender<Ctl>,
    /// TLPs from the endpoint that named no host's function.
    unrouted: Arc<AtomicU64>,
    layout: SliceLayout,
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The Routing ID host `k` sees its function at.
fn visible(host: &Host) -> Bdf {
    Bdf::new(host.config().bus, 0, 0)
}

fn set_id(t: &mut [u8], at: usize, id: Bdf) {
    t[at..at + 2].copy_from_slice(&id.0.to_be_bytes());
}

/// A TLP from host `k`: its configuration requests reach only its function (01:00.0 ↔ the
/// appliance's), its completions (to DMA reads) go to its function's requester, the rest
/// (memory requests by address, messages) as they are.
fn inbound(ep: &mut Proxy, hosts: &[Arc<Host>], functions: &[Bdf], k: usize, mut t: Vec<u8>) {
    // Neither host stack sends TLP prefixes, so the ID fields sit at their fixed offsets.
    let Ok(h) = ParsedHeader::parse(&t).map_err(|_| ()).and_then(|h| {
        if t[0] >> 5 == 0b100 {
            Err(())
        } else {
            Ok(h)
        }
    }) else {
        let _ = ep.handle_tlp(&t);
        return;
    };
    match h.kind {
        ParsedKind::Config { target, .. } => {
            if target.device() != 0 || target.function() != 0 {
                let mut c = Vec::new();
                wire::emit_completion(
                    &mut c,
                    target,
                    h.requester,
                    h.tag,
                    CplStatus::Ur,
                    4,
                    0,
                    h.attr & 3,
                    &[],
                )
                .expect("a UR completion for a valid request");
                hosts[k].on_tlp(&c);
                return;
            }
            set_id(&mut t, 8, functions[k]);
        }
        ParsedKind::Completion { .. } => {
            if Bdf(u16::from_be_bytes([t[8], t[9]])) != visible(&hosts[k]) {
                return;
            }
            set_id(&mut t, 8, functions[k]);
        }
        _ => {}
    }
    let _ = ep.handle_tlp(&t);
}

/// A TLP from the endpoint: to the host owning the function its bytes 4–5 name.
fn outbound(hosts: &[Arc<Host>], functions: &[Bdf], unrouted: &AtomicU64, mut t: Vec<u8>) {
    let id = Bdf(u16::from_be_bytes([t[4], t[5]]));
    match functions.iter().position(|f| *f == id) {
        Some(k) => {
            set_id(&mut t, 4, visible(&hosts[k]));
            hosts[k].on_tlp(&t);
        }
        None => {
            unrouted.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn host_config(k: usize) -> HostConfig {
    let mut cfg = HostConfig::default();
    let k = k as u64;
    cfg.enumeration.windows = Windows {
        mem: (0xc000_0000 + k * 0x1000_0000, 0x1000_0000),
        pref: (0x40_0000_0000 + k * 0x10_0000_0000, 0x10_0000_0000),
        io: (0x1000, 0xf000),
    };
    cfg
}

fn pool(sriov: NvmeSriov, blocks: u64, targets: &[Target]) -> Pool {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ssd.img");
    let backend = Backend::create(&path, blocks * 512).unwrap();
    let layout = SliceLayout::new(&backend, sriov).unwrap();
    let ctrl = NvmeController::with_vfs(backend, NvmeOptions::default(), sriov).unwrap();
    let (mut ep, out) = Proxy::new(ProxyConfig::default());
    ep.add_function(PF, Box::new(ctrl)).unwrap();
    let vfs = ep.enable_vfs(PF, sriov.vfs).unwrap();
    assert_eq!(vfs.len(), usize::from(sriov.vfs), "every VF is created");
    let functions: Vec<Bdf> = targets
        .iter()
        .map(|t| match t {
            Target::Pf => PF,
            Target::Vf(i) => ep.attach_vf_view(PF, *i).unwrap(),
        })
        .collect();
    let (tx, rx) = channel::unbounded::<(usize, Vec<u8>)>();
    let hosts: Vec<Arc<Host>> = (0..targets.len())
        .map(|k| Host::new(Arc::new(Pipe(k, tx.clone())), host_config(k)))
        .collect();
    let (ctl, ctl_rx) = channel::unbounded::<Ctl>();
    let stop = Arc::new(AtomicBool::new(false));
    let unrouted = Arc::new(AtomicU64::new(0));
    let thread = {
        let (hosts, functions) = (hosts.clone(), functions.clone());
        let (stop, unrouted) = (stop.clone(), unrouted.clone());
        std::thread::spawn(move || serve(ep, out, rx, ctl_rx, &hosts, &functions, &stop, &unrouted))
    };
    for h in &hosts {
        h.on_link_up();
    }
    let p = Pool {
        hosts,
        functions,
        ctl,
        unrouted,
        layout,
        path,
        stop,
        thread: Some(thread),
        _dir: dir,
    };
    for k in 0..targets.len() {
        assert_eq!(
            p.hosts[k].rescan().len(),
            1,
            "host {k} sees exactly its function"
        );
    }
    p
}

/// The endpoint's driver: TLPs in from every host, its outbound queue out to their owners,
/// control closures from the test, `poll` with the time after every event.
#[allow(clippy::too_many_arguments)]
fn serve(
    mut ep: Proxy,
    out: Receiver<Vec<u8>>,
    rx: Receiver<(usize, Vec<u8>)>,
    ctl: Receiver<Ctl>,
    hosts: &[Arc<Host>],
    functions: &[Bdf],
    stop: &AtomicBool,
    unrouted: &AtomicU64,
) {
    let kicks = ep.kicks();
    while !stop.load(Ordering::Relaxed) {
        let wait = ep.poll_wait(Instant::now(), Duration::from_millis(10));
        channel::select! {
            recv(rx) -> m => if let Ok((k, t)) = m { inbound(&mut ep, hosts, functions, k, t) },
            recv(out) -> t => if let Ok(t) = t { outbound(hosts, functions, unrouted, t) },
            recv(ctl) -> c => if let Ok(c) = c { c(&mut ep) },
            recv(kicks) -> _ => {}
            default(wait) => {}
        }
        ep.poll(Instant::now());
    }
}

impl Pool {
    /// Run `op` on the endpoint's thread, between TLPs.
    fn ctl<R: Send + 'static>(&self, op: impl FnOnce(&mut Proxy) -> R + Send + 'static) -> R {
        let (tx, rx) = channel::bounded(1);
        self.ctl
            .send(Box::new(move |ep: &mut Proxy| {
                let _ = tx.send(op(ep));
            }))
            .unwrap();
        rx.recv_timeout(Duration::from_secs(10)).unwrap()
    }

    /// Host `k`'s function (after its last rescan).
    fn function(&self, k: usize) -> RemoteFunction {
        let h = &self.hosts[k];
        h.open(visible(h))
            .expect("the host enumerated its function")
    }

    fn driver(&self, k: usize) -> NvmeDriver {
        let cfg = NvmeConfig {
            depth: 8,
            completion: CompletionMode::Interrupt,
            ..NvmeConfig::default()
        };
        NvmeDriver::open(self.function(k), cfg).unwrap()
    }

    /// Bytes of the backing file at store block `first`.
    fn file(&self, first: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.path).unwrap();
        let mut b = vec![0u8; len];
        f.read_exact_at(&mut b, first * 512).unwrap();
        b
    }

    /// PF configuration write on the endpoint's thread, as the PF's driver would.
    fn pf_config_write(&self, reg: u16, value: u32) {
        self.ctl(move |ep| {
            ep.handle_tlp(&cfg_tlp(PF, reg, 0xf, 0x99, Some(value)))
                .unwrap()
        });
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len)
        .map(|i| {
            ((i as u32).wrapping_mul(2_654_435_761) >> 13) as u8 ^ (seed as u8).wrapping_mul(37)
        })
        .collect()
}

fn config_image(f: &RemoteFunction) -> Vec<u8> {
    (0..4096u16)
        .step_by(4)
        .flat_map(|r| f.config_read(r).unwrap().to_le_bytes())
        .collect()
}

fn equal_split() -> NvmeSriov {
    NvmeSriov {
        vfs: 2,
        vf_size: None,
    }
}

#[test]
fn two_vfs_on_two_hosts_run_io_concurrently_in_their_own_slices() {
    let p = pool(
        equal_split(),
        3 * SLICE,
        &[Target::Vf(0), Target::Vf(1), Target::Pf],
    );
    assert_eq!(p.layout.pf(), (0, SLICE));
    assert_eq!(p.layout.vf(0), Some((SLICE, SLICE)));
    assert_eq!(p.layout.vf(1), Some((2 * SLICE, SLICE)));
    assert_eq!(
        p.functions,
        [Bdf::new(0, 0, 1), Bdf::new(0, 0, 2), PF],
        "the views answer at the VFs' Routing IDs"
    );

    // Each VF is an ordinary NVMe function to its host: PF vendor, VF Device ID, NVMe class,
    // a 16 KiB BAR0 of its own, MSI-X, no INTx.
    for k in 0..2 {
        let i = p.function(k).info().clone();
        assert_eq!(
            (i.vendor, i.device, i.class),
            (0x1b36, 0x0e04, NVME_CLASS),
            "host {k}"
        );
        assert_eq!((i.bars[0].size, i.bars[0].is64), (0x4000, true));
        assert!(i.msix.is_some() && i.flr, "MSI-X and FLR");
        assert_eq!(i.interrupt_pin, 0, "VFs have no INTx");
    }
    let pf = p.function(2).info().clone();
    assert_eq!((pf.vendor, pf.device), (0x1b36, 0x0e01));
    assert_ne!(
        p.function(0).info().bars[0].base,
        p.function(1).info().bars[0].base,
        "each host programmed its own BAR"
    );

    // Three drivers, three controllers: own serial, controller ID and namespace size.
    let mut drivers: Vec<NvmeDriver> = (0..3).map(|k| p.driver(k)).collect();
    let mut serials = Vec::new();
    for (k, d) in drivers.iter_mut().enumerate() {
        assert_eq!(d.info().blocks, SLICE, "host {k}: namespace = its slice");
        let c = d.identify_controller().unwrap();
        let cntlid = c.cntlid.get();
        assert_eq!(cntlid, [2, 3, 1][k], "CNTLID: PF 1, VF n 1 + n");
        serials.push(d.info().serial.clone());
        let ns = d.identify_namespace(1).unwrap();
        assert_eq!(ns.nsze.get(), SLICE);
    }
    assert!(
        serials[0].ends_with("V1") && serials[1].ends_with("V2"),
        "{serials:?}"
    );
    assert!(
        serials[0].starts_with(&serials[2]),
        "VF serials extend the PF's: {serials:?}"
    );

    // Concurrently: every host writes its whole namespace with its own pattern, reads it
    // back and checks it.
    let len = (SLICE * 512) as usize;
    let start = Arc::new(Barrier::new(3));
    let results: Vec<Result<NvmeDriver, String>> = std::thread::scope(|s| {
        let handles: Vec<_> = drivers
            .into_iter()
            .enumerate()
            .map(|(k, mut d)| {
                let start = start.clone();
                s.spawn(move || {
                    let mut data = pattern(len, k as u32 + 1);
                    start.wait();
                    d.transfer(IoOp::Write, 0, &mut data, &mut |_| {})
                        .map_err(|e| format!("host {k} write: {e}"))?;
                    let mut got = vec![0u8; len];
                    d.transfer(IoOp::Read, 0, &mut got, &mut |_| {})
                        .map_err(|e| format!("host {k} read: {e}"))?;
                    if got != data {
                        return Err(format!("host {k} read back other data"));
                    }
                    d.flush().map_err(|e| format!("host {k} flush: {e}"))?;
                    Ok(d)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut drivers: Vec<NvmeDriver> = results.into_iter().map(|r| r.unwrap()).collect();

    // The file holds each function's data in its slice and nothing else anywhere.
    assert_eq!(p.file(0, len), pattern(len, 3), "PF slice: the PF's data");
    assert_eq!(
        p.file(SLICE, len),
        pattern(len, 1),
        "VF 1 slice: VF 1's data"
    );
    assert_eq!(
        p.file(2 * SLICE, len),
        pattern(len, 2),
        "VF 2 slice: VF 2's data"
    );

    // A VF cannot reach past its slice: the LBA after its last is out of range, and a
    // write straddling the end is refused whole.
    let d = &mut drivers[0];
    let c = d
        .io_command(
            Sqe::write(1, SLICE, 1),
            pcietun::drivers::nvme::Data::ToDevice(&[0xee; 512]),
        )
        .unwrap();
    assert_eq!(c.status, Status::LBA_OUT_OF_RANGE);
    let c = d
        .io_command(
            Sqe::write(1, SLICE - 1, 2),
            pcietun::drivers::nvme::Data::ToDevice(&[0xee; 1024]),
        )
        .unwrap();
    assert_eq!(c.status, Status::LBA_OUT_OF_RANGE);
    assert_eq!(
        p.file(2 * SLICE, 512),
        pattern(len, 2)[..512].to_vec(),
        "VF 2's first block is VF 2's"
    );
    assert_eq!(
        p.unrouted.load(Ordering::Relaxed),
        0,
        "every TLP had an owner"
    );
    for d in drivers {
        d.shutdown().unwrap();
    }
}

#[test]
fn flr_of_one_vf_leaves_the_other_running() {
    let p = pool(equal_split(), 3 * SLICE, &[Target::Vf(0), Target::Vf(1)]);
    let mut a = p.driver(0);
    let mut b = p.driver(1);
    let mine = pattern(64 * 1024, 9);
    a.transfer(IoOp::Write, 100, &mut mine.clone(), &mut |_| {})
        .unwrap();
    let fb = p.function(1);

    let stop = AtomicBool::new(false);
    let b_rounds = AtomicU64::new(0);
    let (b_result, a_result) = std::thread::scope(|s| {
        let worker = s.spawn(|| -> Result<(), String> {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let mut data = pattern(32 * 1024, 100 + round);
                let lba = u64::from(round % 64) * 64;
                b.transfer(IoOp::Write, lba, &mut data, &mut |_| {})
                    .map_err(|e| format!("round {round}: {e}"))?;
                let mut got = vec![0u8; data.len()];
                b.transfer(IoOp::Read, lba, &mut got, &mut |_| {})
                    .map_err(|e| format!("round {round}: {e}"))?;
                if got != data {
                    return Err(format!("round {round}: other data read back"));
                }
                round += 1;
                b_rounds.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        });
        // B's rounds reach `n` (false if B stopped or 10 s passed).
        let rounds_reach = |n: u64| {
            let deadline = Instant::now() + Duration::from_secs(10);
            while b_rounds.load(Ordering::Relaxed) < n {
                if worker.is_finished() || Instant::now() > deadline {
                    return false;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            true
        };
        // Host A resets its VF while B's I/O runs, then brings it back (as Linux restores
        // config space after an FLR) and runs a new driver.
        let a_side = || -> Result<(), String> {
            if !rounds_reach(2) {
                return Err("B made no progress before the FLR".into());
            }
            let fa = p.function(0);
            let pcie = fa.info().pcie.ok_or("no PCI Express capability")?;
            let devctl = fa.config_read(pcie + 8).map_err(|e| e.to_string())? & 0xffff;
            fa.config_write(pcie + 8, devctl | 0x8000)
                .map_err(|e| e.to_string())?;
            let cmd = fa.config_read(0x04).map_err(|e| e.to_string())? & 0xffff;
            let bar0 = fa.config_read(0x10).map_err(|e| e.to_string())?;
            if (cmd, bar0) != (0, 0x4) {
                return Err(format!("after FLR: Command {cmd:#x}, BAR0 {bar0:#x}"));
            }
            if fa.bar_read32(0, reg::CSTS).is_ok() {
                return Err("BAR0 still decodes after the FLR".into());
            }
            if p.hosts[0].rescan().len() != 1 {
                return Err("A's function is gone after the FLR".into());
            }
            let mut a2 = p.driver(0);
            let mut got = vec![0u8; mine.len()];
            a2.transfer(IoOp::Read, 100, &mut got, &mut |_| {})
                .map_err(|e| e.to_string())?;
            if got != mine {
                return Err("A's data did not survive its FLR".into());
            }
            a2.shutdown().map_err(|e| e.to_string())?;
            let at_flr = b_rounds.load(Ordering::Relaxed);
            if !rounds_reach(at_flr + 2) {
                return Err("B made no progress after the FLR".into());
            }
            Ok(())
        };
        let a_result = a_side();
        stop.store(true, Ordering::Relaxed);
        (worker.join().unwrap(), a_result)
    });
    b_result.expect("B's I/O never failed");
    a_result.expect("A's FLR and bring-up");
    assert_ne!(
        fb.bar_read32(0, reg::CSTS).unwrap() & csts::RDY,
        0,
        "B's controller stayed ready throughout"
    );
    assert_ne!(
        fb.config_read(0x04).unwrap() & 0x6,
        0,
        "B's Command untouched"
    );
    b.shutdown().unwrap();
}

#[test]
fn the_pf_controls_its_vfs_as_the_sriov_spec_says() {
    let sriov = NvmeSriov {
        vfs: 2,
        vf_size: Some(1024 * 512),
    };
    let p = pool(sriov, 4096, &[Target::Vf(0), Target::Vf(1)]);
    assert_eq!(
        p.layout.pf(),
        (0, 2048),
        "the PF keeps what the VFs do not take"
    );
    assert_eq!(p.layout.vf(1), Some((3072, 1024)));
    let mut a = p.driver(0);
    assert_eq!(a.info().blocks, 1024);
    let mut data = pattern(8192, 4);
    a.transfer(IoOp::Write, 1000, &mut data, &mut |_| {})
        .unwrap();
    a.flush().unwrap();
    assert_eq!(
        p.file(2048 + 1000, 8192),
        data,
        "VF 1 LBA 1000 is store block 3048"
    );
    drop(a);
    let fa = p.function(0);

    // SR-IOV capability at 0x100: VF MSE gates every VF's memory decode.
    let sriov_ctl = 0x108;
    p.pf_config_write(sriov_ctl, 0x1); // VF Enable, VF MSE clear
    assert!(
        fa.bar_read32(0, reg::VS).is_err(),
        "no decode without VF MSE"
    );
    p.pf_config_write(sriov_ctl, 0x9);
    assert!(
        fa.bar_read32(0, reg::VS).is_ok(),
        "decodes again with VF MSE"
    );
    p.pf_config_write(sriov_ctl, 0x1);
    assert_eq!(
        p.ctl(|ep| ep.enable_vfs(PF, 2)).unwrap().len(),
        2,
        "enable_vfs with the VFs there only sets VF MSE"
    );
    assert!(fa.bar_read32(0, reg::VS).is_ok(), "the same view decodes");

    // NumVFs cannot change while VF Enable is set: the write is ignored, the VFs stay.
    p.pf_config_write(0x110, 1);
    assert_eq!(
        p.ctl(|ep| ep.virtual_functions(PF)),
        [Bdf::new(0, 0, 1), Bdf::new(0, 0, 2)]
    );
    assert_eq!(
        fa.config_read(0).unwrap(),
        0x0e04_1b36,
        "VF 1's view is still there"
    );

    // The appliance's own PF-driver calls refuse what the PF does not offer.
    assert_eq!(
        p.ctl(|ep| ep.enable_vfs(PF, 3)),
        Err(VfError::TooManyVfs {
            pf: PF,
            requested: 3,
            total: 2
        })
    );
    assert_eq!(
        p.ctl(|ep| ep.detach_vf_view(PF)),
        Err(VfError::NotAView(PF))
    );
    assert_eq!(
        p.ctl(|ep| ep.attach_vf_view(Bdf::new(0, 5, 0), 0)),
        Err(VfError::NoSuchFunction(Bdf::new(0, 5, 0)))
    );
    assert_eq!(
        p.ctl(|ep| ep.enable_vfs(PF, 2)).unwrap().len(),
        2,
        "enabling what is enabled changes nothing"
    );
    assert_eq!(
        fa.config_read(0).unwrap(),
        0x0e04_1b36,
        "and keeps the views"
    );

    // VF Enable cleared: the VFs, and so the views, are gone.
    assert!(p.ctl(|ep| ep.enable_vfs(PF, 0)).unwrap().is_empty());
    assert!(
        fa.config_read(0).is_err(),
        "nothing answers at VF 1's Routing ID"
    );
    assert_eq!(
        p.ctl(|ep| ep.attach_vf_view(PF, 0)),
        Err(VfError::NoSuchVf { pf: PF, index: 0 })
    );
    // Enabled again, with another NumVFs, and presented again: VF 1's namespace holds what
    // it held.
    assert_eq!(
        p.ctl(|ep| ep.enable_vfs(PF, 1)),
        Ok(vec![Bdf::new(0, 0, 1)])
    );
    assert_eq!(p.ctl(|ep| ep.attach_vf_view(PF, 0)), Ok(Bdf::new(0, 0, 1)));
    assert_eq!(p.hosts[0].rescan().len(), 1);
    let mut a = p.driver(0);
    let mut got = vec![0u8; data.len()];
    a.transfer(IoOp::Read, 1000, &mut got, &mut |_| {}).unwrap();
    assert_eq!(got, data, "the slice is the same whatever NumVFs is");

    // Withdrawn: the VF no longer answers as a standalone NVMe function.
    p.ctl(|ep| ep.detach_vf_view(Bdf::new(0, 0, 1))).unwrap();
    assert_eq!(
        p.function(0).config_read(0).unwrap(),
        0xffff_ffff,
        "a bare VF reads all-ones IDs"
    );
}

#[test]
fn a_vf_view_dumps_as_lspci_text_that_decodes_as_an_nvme_controller() {
    let p = pool(equal_split(), 3 * SLICE, &[Target::Vf(1), Target::Pf]);
    let d = p.driver(0); // MSI-X enabled, queues up: what a running VF looks like
    let vf = config_image(&p.function(0));
    let pf = config_image(&p.function(1));
    assert_eq!(&vf[0..4], &[0x36, 0x1b, 0x04, 0x0e], "1b36:0e04");
    assert_eq!(&vf[9..12], &[0x02, 0x08, 0x01], "class 01 08 02");
    assert_eq!(vf[0x0e], 0, "header type 0, single function");
    let at = |bus| PciAddress {
        domain: None,
        bus,
        device: 0,
        function: 0,
    };
    let text = [(at(1), &vf), (at(2), &pf)]
        .iter()
        .map(|(a, c)| lspci::format_function(a, &lspci::default_description(c), c))
        .collect::<String>();
    let parsed = lspci::parse(&text).unwrap();
    assert_eq!(parsed.len(), 2);
    assert_eq!(parsed[0].config, vf, "the text round-trips");
    let caps = pcietun::pci::walk_capabilities(&vf);
    assert!(
        caps.iter()
            .any(|c| c.id == pcietun::pci::CapabilityId::Standard(0x11)),
        "MSI-X in the VF's capability list: {caps:?}"
    );

    if Command::new("lspci").arg("--version").output().is_err() {
        prereq::skip(
            "lspci decoding of a VF view",
            "pciutils' lspci is not installed",
        );
        return;
    }
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), &text).unwrap();
    let o = Command::new("lspci")
        .arg("-F")
        .arg(f.path())
        .args(["-nn", "-vvv"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let (vf_text, pf_text) = out.split_at(out.find("02:00.0").expect("both functions"));
    assert!(
        vf_text.contains("Non-Volatile memory controller [0108]"),
        "{vf_text}"
    );
    assert!(vf_text.contains("[1b36:0e04]"), "{vf_text}");
    assert!(vf_text.contains("NVM Express"), "{vf_text}");
    assert!(vf_text.contains("Region 0: Memory at"), "{vf_text}");
    assert!(vf_text.contains("(64-bit, non-prefetchable)"), "{vf_text}");
    assert!(vf_text.contains("MSI-X: Enable+"), "{vf_text}");
    assert!(vf_text.contains("Express (v2) Endpoint"), "{vf_text}");
    assert!(vf_text.contains("FLReset+"), "{vf_text}");
    assert!(!vf_text.contains("Interrupt: pin"), "no INTx: {vf_text}");
    assert!(!vf_text.contains("SR-IOV"), "{vf_text}");
    assert!(pf_text.contains("[1b36:0e01]"), "{pf_text}");
    assert!(
        pf_text.contains("Single Root I/O Virtualization (SR-IOV)"),
        "{pf_text}"
    );
    assert!(
        pf_text.contains("Total VFs: 2, Number of VFs: 2"),
        "{pf_text}"
    );
    assert!(
        pf_text.contains("VF offset: 1, stride: 1, Device ID: 0e04"),
        "{pf_text}"
    );
    d.shutdown().unwrap();
}

// ---- sans-I/O: configuration writes to one view never reach another function ----

const PROBE_TAG: u8 = 0xee;
const PROBE_RID: Bdf = Bdf(0x0100);
const VIEW_A: Bdf = Bdf::new(0, 0, 1);
const VIEW_B: Bdf = Bdf::new(0, 0, 2);
const B_BAR0: u64 = 0x8_0000_0000;
const PF_BAR0: u64 = 0x9_0000_0000;

fn cfg_tlp(bdf: Bdf, reg: u16, be: u8, tag: u8, value: Option<u32>) -> Vec<u8> {
    let mut t = vec![0u8; 12];
    t[0] = if value.is_some() { 0x44 } else { 0x04 };
    t[3] = 1;
    t[4..6].copy_from_slice(&PROBE_RID.0.to_be_bytes());
    t[6] = tag;
    t[7] = be & 0xf;
    t[8..10].copy_from_slice(&bdf.0.to_be_bytes());
    t[10] = (reg >> 8) as u8 & 0xf;
    t[11] = reg as u8 & 0xfc;
    if let Some(v) = value {
        t.extend_from_slice(&v.to_le_bytes());
    }
    t
}

/// Feed one TLP; the payload of the completions to our probe tag.
fn probe(ep: &mut Proxy, rx: &Receiver<Vec<u8>>, tlp: &[u8]) -> Vec<u8> {
    ep.handle_tlp(tlp).unwrap();
    let mut data = Vec::new();
    while let Ok(c) = rx.try_recv() {
        let h = ParsedHeader::parse(&c).unwrap();
        if matches!(h.kind, ParsedKind::Completion { .. }) && h.tag == u16::from(PROBE_TAG) {
            data.extend_from_slice(&c[h.payload]);
        }
    }
    data
}

/// Configuration space of `bdf`, and the first 64 bytes of the BAR0 at `bar0` (registers).
fn snapshot(ep: &mut Proxy, rx: &Receiver<Vec<u8>>, bdf: Bdf, bar0: u64) -> Vec<u8> {
    let mut out = Vec::new();
    for r in (0..4096u16).step_by(4) {
        out.extend(probe(ep, rx, &cfg_tlp(bdf, r, 0xf, PROBE_TAG, None)));
    }
    let mut t = Vec::new();
    wire::emit_mem_read(&mut t, PROBE_RID, u16::from(PROBE_TAG), bar0, 64).unwrap();
    let regs = probe(ep, rx, &t);
    assert_eq!(regs.len(), 64, "BAR0 of {bdf} decodes at {bar0:#x}");
    out.extend(regs);
    out
}

struct Bench {
    ep: Proxy,
    rx: Receiver<Vec<u8>>,
    /// View A's PCI Express capability.
    pcie_a: u16,
    _dir: tempfile::TempDir,
}

fn cfg_read(ep: &mut Proxy, rx: &Receiver<Vec<u8>>, bdf: Bdf, reg: u16) -> u32 {
    let d = probe(ep, rx, &cfg_tlp(bdf, reg, 0xf, PROBE_TAG, None));
    u32::from_le_bytes(d[..4].try_into().unwrap())
}

fn bench() -> Bench {
    let dir = tempfile::tempdir().unwrap();
    let backend = Backend::create(&dir.path().join("ssd.img"), 3 * 64 * 512).unwrap();
    let ctrl = NvmeController::with_vfs(backend, NvmeOptions::default(), equal_split()).unwrap();
    let (mut ep, rx) = Proxy::new(ProxyConfig::default());
    ep.add_function(PF, Box::new(ctrl)).unwrap();
    ep.enable_vfs(PF, 2).unwrap();
    assert_eq!(ep.attach_vf_view(PF, 0), Ok(VIEW_A));
    assert_eq!(ep.attach_vf_view(PF, 1), Ok(VIEW_B));
    let caps = (0..1024u16)
        .flat_map(|dw| cfg_read(&mut ep, &rx, VIEW_A, dw * 4).to_le_bytes())
        .collect::<Vec<u8>>();
    let pcie_a = pcietun::pci::walk_capabilities(&caps)
        .iter()
        .find(|c| c.id == pcietun::pci::CapabilityId::Standard(0x10))
        .expect("the VF's PCI Express capability")
        .offset;
    let mut b = Bench {
        ep,
        rx,
        pcie_a,
        _dir: dir,
    };
    for (bdf, bar0) in [(VIEW_B, B_BAR0), (PF, PF_BAR0)] {
        for (r, v) in [
            (0x10, bar0 as u32 | 4),
            (0x14, (bar0 >> 32) as u32),
            (0x04, 0x6),
        ] {
            probe(&mut b.ep, &b.rx, &cfg_tlp(bdf, r, 0xf, 1, Some(v)));
        }
    }
    b
}

/// BAR sizing and Command writes through one view: that view reads the size mask and its own
/// bits, the other view's BAR and Command stay as its host programmed them, and it still
/// decodes there.
#[test]
fn bar_sizing_and_command_of_one_view_are_invisible_to_the_other() {
    let mut b = bench();
    let (ep, rx) = (&mut b.ep, &b.rx);
    let w = |ep: &mut Proxy, bdf, r, v| {
        probe(ep, rx, &cfg_tlp(bdf, r, 0xf, 1, Some(v)));
    };
    w(ep, VIEW_A, 0x10, u32::MAX);
    w(ep, VIEW_A, 0x14, u32::MAX);
    assert_eq!(
        cfg_read(ep, rx, VIEW_A, 0x10),
        0xffff_c004,
        "16 KiB, 64-bit"
    );
    assert_eq!(cfg_read(ep, rx, VIEW_A, 0x14), u32::MAX);
    assert_eq!(cfg_read(ep, rx, VIEW_B, 0x10), B_BAR0 as u32 | 4);
    assert_eq!(cfg_read(ep, rx, VIEW_B, 0x14), (B_BAR0 >> 32) as u32);
    w(ep, VIEW_A, 0x04, 0xffff);
    assert_eq!(
        cfg_read(ep, rx, VIEW_A, 0x04) & 0xffff,
        0x0546,
        "Memory, Bus Master, Parity, SERR, Interrupt Disable; no I/O Space"
    );
    assert_eq!(cfg_read(ep, rx, VIEW_B, 0x04) & 0xffff, 0x0006);
    assert_eq!(cfg_read(ep, rx, VIEW_A, 0x00), 0x0e04_1b36);
    assert_eq!(cfg_read(ep, rx, VIEW_A, 0x08) >> 8, NVME_CLASS);
    assert_eq!(cfg_read(ep, rx, VIEW_A, 0x3c) >> 8 & 0xff, 0, "no INTx pin");
    let mut t = Vec::new();
    wire::emit_mem_read(&mut t, PROBE_RID, u16::from(PROBE_TAG), B_BAR0 + reg::VS, 4).unwrap();
    assert_eq!(
        probe(ep, rx, &t),
        0x0001_0400u32.to_le_bytes(),
        "B's VS at B's BAR0"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random configuration writes to view A — BAR sizing and moves, Command bits, MSI-X,
    /// Device Control, FLR, anything — leave view B and the PF exactly as they were: their
    /// configuration spaces byte for byte and their BAR0 registers where they were mapped.
    #[test]
    fn config_writes_to_one_view_touch_no_other_function(
        writes in proptest::collection::vec((
            prop_oneof![0u16..16, 16u16..64, 0u16..1024], // header, capabilities, anywhere
            prop_oneof![Just(u32::MAX), Just(0u32), any::<u32>()],
            1u8..16,
        ), 1..40),
    ) {
        let mut b = bench();
        let before_b = snapshot(&mut b.ep, &b.rx, VIEW_B, B_BAR0);
        let before_pf = snapshot(&mut b.ep, &b.rx, PF, PF_BAR0);
        for (dw, value, be) in writes {
            probe(&mut b.ep, &b.rx, &cfg_tlp(VIEW_A, dw * 4, be, 2, Some(value)));
        }
        // A's BARs may now overlap B's: without a host session to scope the addresses (the
        // pool's job), the endpoint would route by whichever claims first. An FLR of A puts
        // its BARs back to zero so B's can be probed by address alone.
        let devctl = b.pcie_a + 8;
        probe(&mut b.ep, &b.rx, &cfg_tlp(VIEW_A, devctl, 0x3, 3, Some(0x8000)));
        prop_assert_eq!(probe(&mut b.ep, &b.rx, &cfg_tlp(VIEW_A, 0x10, 0xf, PROBE_TAG, None)), 4u32.to_le_bytes().to_vec());
        prop_assert_eq!(snapshot(&mut b.ep, &b.rx, VIEW_B, B_BAR0), before_b);
        prop_assert_eq!(snapshot(&mut b.ep, &b.rx, PF, PF_BAR0), before_pf);
        prop_assert_eq!(b.ep.virtual_functions(PF), vec![VIEW_A, VIEW_B]);
    }
}
