//! An NVMe 1.4 controller with one namespace, backed by a file or block device (NVM Express
//! Base Specification 1.4c; PCI header and capabilities per §2 "System Bus (PCI Express)
//! Registers": class code 01 08 02, MSI-X, PCI Express and power management capabilities).
//! The register interface — offsets and fields, queue entries, Identify and log page layouts,
//! status codes — is [`crate::pci::class::nvme`], shared with the host's driver.
//!
//! Split in two halves that share `Ctrl` under a mutex:
//! * the register file (this file), run on the endpoint's TLP thread: CAP/VS/CC/CSTS/AQA/ASQ/
//!   ACQ/INTMS/INTMC reads and writes and the doorbells — quick, never waits for DMA;
//! * the `worker` thread: enable/reset/shutdown transitions, fetching commands, executing
//!   admin and NVM I/O commands with DMA through the function's requester, posting completions
//!   and raising MSI-X or INTx.
//!
//! BAR0 (64-bit, 16 KiB): registers at 0, doorbells at 0x1000 (stride 0), MSI-X table at
//! 0x2000 (17 vectors: admin + 16 I/O queues), PBA at 0x3000.
//!
//! The namespace is a [`Namespace`]: the whole backing store, or — for an SR-IOV physical
//! function built with [`NvmeController::with_vfs`] and its virtual functions — one slice of
//! it each (`sriov.rs`; PCIe r5.0 §9, each VF a controller of its own).

mod admin;
pub mod backend;
mod fetch;
pub mod identify;
mod io;
pub mod namespace;
mod prefetch;
pub mod prp;
pub mod sriov;
mod worker;

use crate::sync::{CondvarExt, MutexExt};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::device::{
    Decode, Device, DeviceContext, DeviceError, DmaHandle, InterruptHandle, MsixLayout, ResetKind,
};
use super::pcicfg::{self, build_config, pci_decode, ModelConfig};
use crate::pci::class::nvme::{
    aer, aqa, cap, cc, csts, log, reg, vs, ErrorLogEntry, CLASS_CODE, MIN_PAGE_SIZE,
};
use crate::pci::class::DEFAULT_VENDOR_ID;
use crate::pci::{Bar, ConfigSpace, FunctionIds, SriovConfig};
pub use backend::{Backend, BackendError};
use identify::{Health, Identity, MAX_IO_QUEUES, MDTS};
pub use namespace::Namespace;
pub use sriov::{NvmeSriov, SliceError, SliceLayout};

/// PCI vendor ID of the NVMe model by default.
pub const DEFAULT_VENDOR: u16 = DEFAULT_VENDOR_ID;
/// PCI device ID of the NVMe model by default.
pub const DEFAULT_DEVICE: u16 = 0x0e01;
/// The SR-IOV capability's VF Device ID by default (what a VF presented standalone reads).
pub const DEFAULT_VF_DEVICE: u16 = 0x0e04;
/// MSI-X vectors: one for the admin queue and one per I/O queue.
pub const MSIX_VECTORS: u16 = MAX_IO_QUEUES + 1;
/// Maximum queue entries (CAP.MQES + 1).
pub const MAX_QUEUE_ENTRIES: u32 = 1024;
/// BAR0 size.
pub const BAR0_SIZE: u64 = 0x4000;

/// Controller Capabilities: MQES 1023, CQR, TO 15 s, DSTRD 0, CSS NVM, MPSMIN = MPSMAX = 4 KiB.
pub const CAP: u64 =
    (MAX_QUEUE_ENTRIES as u64 - 1) | cap::CQR | (30 << cap::TO_SHIFT) | cap::CSS_NVM;
/// Doorbell stride (CAP.DSTRD): doorbells 4 bytes apart.
const DSTRD: u32 = cap::dstrd(CAP);
/// The memory page size (CC.MPS = 0, the only one CAP allows).
pub(crate) const PAGE: usize = MIN_PAGE_SIZE;
/// Most submission-queue entries fetched by one batch (64 entries = 4 KiB).
pub(crate) const FETCH_MAX: usize = 64;
/// Largest data transfer of one command (MDTS).
pub(crate) const MAX_TRANSFER: usize = PAGE << MDTS;

/// Options of an NVMe controller.
#[derive(Debug, Clone)]
pub struct NvmeOptions {
    /// Serial number (defaults to one derived from the backing path).
    pub serial: Option<String>,
    /// Model number.
    pub model: String,
    /// PCI vendor and device IDs.
    pub pci_ids: (u16, u16),
    /// VF Device ID of the SR-IOV capability (used by [`NvmeController::with_vfs`]).
    pub vf_device_id: u16,
}

impl Default for NvmeOptions {
    fn default() -> Self {
        NvmeOptions {
            serial: None,
            model: "pcietun NVMe controller".into(),
            pci_ids: (DEFAULT_VENDOR, DEFAULT_DEVICE),
            vf_device_id: DEFAULT_VF_DEVICE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sq {
    pub(crate) base: u64,
    pub(crate) size: u16,
    pub(crate) head: u16,
    pub(crate) tail: u16,
    pub(crate) cqid: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Cq {
    pub(crate) base: u64,
    pub(crate) size: u16,
    pub(crate) head: u16,
    pub(crate) tail: u16,
    pub(crate) phase: bool,
    pub(crate) iv: u16,
    pub(crate) ien: bool,
}

impl Cq {
    pub(crate) fn full(&self) -> bool {
        (self.tail + 1) % self.size == self.head
    }
    pub(crate) fn pending(&self) -> bool {
        self.head != self.tail
    }
    /// Entries the controller may still post before the queue is full (one slot stays empty).
    pub(crate) fn free(&self) -> u16 {
        self.size - 1 - (self.tail + self.size - self.head) % self.size
    }
}

/// Feature values (§5.21.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Features {
    pub(crate) arbitration: u32,
    pub(crate) power: u32,
    pub(crate) temp_over: u16,
    pub(crate) temp_under: u16,
    pub(crate) error_recovery: u32,
    pub(crate) vwc: bool,
    pub(crate) coalescing: u32,
    pub(crate) vector_cd: Vec<bool>,
    pub(crate) write_atomic: u32,
    pub(crate) async_events: u32,
    pub(crate) queues: Option<(u16, u16)>,
}

impl Default for Features {
    fn default() -> Self {
        Features {
            arbitration: 0,
            power: 0,
            temp_over: identify::WCTEMP_K,
            temp_under: 0,
            error_recovery: 0,
            vwc: true,
            coalescing: 0,
            vector_cd: vec![false; usize::from(MSIX_VECTORS)],
            write_atomic: 0,
            async_events: 0,
            queues: None,
        }
    }
}

/// Controller state shared by the register file and the worker.
#[derive(Debug)]
pub(crate) struct Ctrl {
    pub(crate) cc: u32,
    pub(crate) csts: u32,
    pub(crate) aqa: u32,
    pub(crate) asq: u64,
    pub(crate) acq: u64,
    pub(crate) intms: u32,
    pub(crate) sqs: Vec<Option<Sq>>,
    pub(crate) cqs: Vec<Option<Cq>>,
    pub(crate) epoch: u64,
    pub(crate) stop: bool,
    pub(crate) rr: usize,
    pub(crate) feat: Features,
    pub(crate) aer_cids: Vec<u16>,
    pub(crate) aer_events: VecDeque<u32>,
    pub(crate) aer_masked: u8,
    /// The error log's entries, oldest first.
    pub(crate) errors: VecDeque<ErrorLogEntry>,
    pub(crate) health: Health,
    pub(crate) started: Instant,
    /// Fetches of SQ entries started by their doorbells (`fetch.rs`), by qid.
    pub(crate) ahead: fetch::Chains,
}

impl Ctrl {
    fn new() -> Self {
        let n = usize::from(MAX_IO_QUEUES) + 1;
        Ctrl {
            cc: 0,
            csts: 0,
            aqa: 0,
            asq: 0,
            acq: 0,
            intms: 0,
            sqs: vec![None; n],
            cqs: vec![None; n],
            epoch: 0,
            stop: false,
            rr: 0,
            feat: Features::default(),
            aer_cids: Vec::new(),
            aer_events: VecDeque::new(),
            aer_masked: 0,
            errors: VecDeque::new(),
            health: Health::default(),
            started: Instant::now(),
            ahead: fetch::chains(n),
        }
    }

    /// Whether the controller's queues are torn down and it is not ready (reset complete).
    pub(crate) fn quiesced(&self) -> bool {
        self.csts & csts::RDY == 0 && self.sqs.iter().all(Option::is_none)
    }

    /// Queue an asynchronous event (type, info, log page), unless its type is masked.
    pub(crate) fn async_event(&mut self, ty: u8, info: u8, log: u8) {
        if self.aer_masked & (1 << ty) != 0 || self.aer_events.len() >= 16 {
            return;
        }
        self.aer_events.push_back(aer::dw0(ty, info, log));
    }

    /// The INTx level the controller asks for (§7.5.1: any enabled CQ with unconsumed entries,
    /// vector 0 not masked by INTMS).
    pub(crate) fn intx_level(&self) -> bool {
        self.intms & 1 == 0 && self.cqs.iter().flatten().any(|c| c.ien && c.pending())
    }
}

/// Shared between the register file and the worker.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) ctrl: Mutex<Ctrl>,
    /// Wakes the worker (doorbells, CC changes, stop).
    pub(crate) wake: Condvar,
    /// Wakes whoever waits for the worker to quiesce (FLR).
    pub(crate) idle: Condvar,
}

impl Shared {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Ctrl> {
        self.ctrl.lock_or_recover()
    }
}

/// The NVMe controller device model.
#[derive(Debug)]
pub struct NvmeController {
    cfg: ConfigSpace,
    shared: Arc<Shared>,
    ns: Arc<Namespace>,
    identity: Arc<Identity>,
    /// A physical function with SR-IOV: how its virtual functions are built.
    vfs: Option<Arc<sriov::VfPlan>>,
    irq: Option<InterruptHandle>,
    /// The function's DMA, for the fetches a doorbell starts.
    dma: Option<DmaHandle>,
    worker: Option<JoinHandle<()>>,
}

fn derive_ids(seed: &str) -> ([u8; 16], [u8; 8], [u8; 16], String) {
    let h = Sha256::digest(seed.as_bytes());
    let mut nguid = [0u8; 16];
    nguid.copy_from_slice(&h[..16]);
    let mut eui = [0u8; 8];
    eui.copy_from_slice(&h[16..24]);
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&h[8..24]);
    uuid[6] = (uuid[6] & 0x0f) | 0x40; // version 4 layout
    uuid[8] = (uuid[8] & 0x3f) | 0x80;
    let serial: String = h[24..32].iter().map(|b| format!("{b:02X}")).collect();
    (nguid, eui, uuid, format!("PT{serial}"))
}

/// What a controller says about itself: identifiers derived from `seed` (the backing path,
/// plus the VF number for a VF), the serial given or derived.
fn identity(opts: &NvmeOptions, seed: &str, serial: Option<String>, cntlid: u16) -> Identity {
    let (nguid, eui64, uuid, derived_serial) = derive_ids(seed);
    Identity {
        vid: opts.pci_ids.0,
        ssvid: opts.pci_ids.0,
        serial: serial.unwrap_or(derived_serial),
        cntlid,
        model: opts.model.clone(),
        firmware: env!("CARGO_PKG_VERSION").into(),
        nguid,
        eui64,
        uuid,
    }
}

/// The configuration space of a physical function (with its SR-IOV capability, if any) or,
/// with `vf`, of one of its virtual functions: all-ones IDs, no BAR registers and no INTx
/// (PCIe r5.0 §9.3.4), MSI-X and PCI Express capabilities of its own.
fn config_space(opts: &NvmeOptions, sriov: Option<SriovConfig>, vf: bool) -> ConfigSpace {
    let (vendor_id, device_id) = if vf { (0xffff, 0xffff) } else { opts.pci_ids };
    build_config(&ModelConfig {
        ids: FunctionIds {
            vendor_id,
            device_id,
            revision: 1,
            class_code: CLASS_CODE,
            subsystem_vendor_id: opts.pci_ids.0,
            subsystem_id: opts.pci_ids.1,
            interrupt_pin: u8::from(!vf),
            multifunction: false,
        },
        bars: bars(),
        msix: Some(MsixLayout {
            vectors: MSIX_VECTORS,
            table_bar: 0,
            table_offset: 0x2000,
            pba_bar: 0,
            pba_offset: 0x3000,
        }),
        mps_supported: 256,
        sriov,
        vf,
    })
    .expect("the NVMe configuration layout is fixed and valid")
}

/// BAR0: the registers, doorbells and MSI-X (a VF's is its slice of the PF's VF BAR0).
fn bars() -> [Bar; 6] {
    let mut bars = [Bar::Unused; 6];
    bars[0] = Bar::Memory64 {
        size: BAR0_SIZE,
        prefetchable: false,
    };
    bars
}

impl NvmeController {
    /// A controller over `backend`: one namespace, the whole store.
    pub fn new(backend: Backend, opts: NvmeOptions) -> Self {
        let seed = format!("{}", backend.path().display());
        let id = identity(&opts, &seed, opts.serial.clone(), 1);
        let ns = Namespace::whole(Arc::new(backend));
        Self::build(config_space(&opts, None, false), ns, id, None)
    }

    /// A controller over `backend` that is an SR-IOV physical function with up to
    /// `sriov.vfs` virtual functions (First VF Offset 1, VF Stride 1, VF Device ID
    /// `opts.vf_device_id`, VF BAR0 16 KiB). The store is cut into slices ([`SliceLayout`]):
    /// the PF keeps the first, VF *n* (1-based) gets slice *n* as its namespace. Each VF that
    /// VF Enable brings up is a controller of its own — registers, queues, MSI-X, Identify
    /// with its own serial number and controller ID.
    pub fn with_vfs(
        backend: Backend,
        opts: NvmeOptions,
        sriov: NvmeSriov,
    ) -> Result<Self, SliceError> {
        let seed = format!("{}", backend.path().display());
        let layout = SliceLayout::new(&backend, sriov)?;
        let id = identity(&opts, &seed, opts.serial.clone(), 1);
        let plan = sriov::VfPlan::new(Arc::new(backend), layout, &opts, &id.serial, seed);
        let ns = plan.pf_namespace();
        let cfg = config_space(&opts, Some(plan.sriov_config()), false);
        Ok(Self::build(cfg, ns, id, Some(Arc::new(plan))))
    }

    fn build(
        cfg: ConfigSpace,
        ns: Namespace,
        identity: Identity,
        vfs: Option<Arc<sriov::VfPlan>>,
    ) -> Self {
        NvmeController {
            cfg,
            shared: Arc::new(Shared {
                ctrl: Mutex::new(Ctrl::new()),
                wake: Condvar::new(),
                idle: Condvar::new(),
            }),
            ns: Arc::new(ns),
            identity: Arc::new(identity),
            vfs,
            irq: None,
            dma: None,
            worker: None,
        }
    }

    /// The namespace's size in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.ns.blocks()
    }

    /// The namespace (which blocks of the backing store it is).
    pub fn namespace(&self) -> &Namespace {
        &self.ns
    }

    /// Serial number (Identify Controller SN).
    pub fn serial(&self) -> &str {
        &self.identity.serial
    }

    fn regs_image(&self) -> [u8; 0x40] {
        let c = self.shared.lock();
        let mut b = [0u8; 0x40];
        let mut put = |off: u64, v: &[u8]| {
            let at = off as usize;
            b[at..at + v.len()].copy_from_slice(v);
        };
        put(reg::CAP, &CAP.to_le_bytes());
        put(reg::VS, &vs::V1_4_0.to_le_bytes());
        // INTMS and INTMC both read the mask (§3.1.3, §3.1.4).
        put(reg::INTMS, &c.intms.to_le_bytes());
        put(reg::INTMC, &c.intms.to_le_bytes());
        put(reg::CC, &c.cc.to_le_bytes());
        put(reg::CSTS, &c.csts.to_le_bytes());
        put(reg::AQA, &c.aqa.to_le_bytes());
        put(reg::ASQ, &c.asq.to_le_bytes());
        put(reg::ACQ, &c.acq.to_le_bytes());
        b
    }

    /// Apply a register DW write; `mask` says which bytes were written.
    fn write_reg(&mut self, off: u64, value: u32, mask: u32) {
        let mut c = self.shared.lock();
        let merge = |old: u32| (old & !mask) | (value & mask);
        match off {
            reg::INTMS => {
                c.intms |= value & mask;
                self.sync_intx(&c);
            }
            reg::INTMC => {
                c.intms &= !(value & mask);
                self.sync_intx(&c);
            }
            reg::CC => {
                let new = merge(c.cc) & cc::DEFINED;
                let old = c.cc;
                c.cc = new;
                if cc::shn(new) != 0 && cc::shn(old) == 0 {
                    c.csts = (c.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
                }
                if cc::shn(new) == 0 && new & cc::EN != old & cc::EN {
                    c.csts &= !csts::SHST_MASK;
                }
                self.shared.wake.notify_all();
            }
            reg::NSSR => {} // NVM subsystem reset is not supported (CAP.NSSRS = 0)
            reg::AQA if c.cc & cc::EN == 0 => c.aqa = merge(c.aqa) & aqa::DEFINED,
            reg::ASQ if c.cc & cc::EN == 0 => {
                c.asq = (c.asq & !0xffff_ffff) | u64::from(merge(c.asq as u32) & !0xfff)
            }
            o if o == reg::ASQ + 4 && c.cc & cc::EN == 0 => {
                c.asq = (c.asq & 0xffff_ffff) | (u64::from(merge((c.asq >> 32) as u32)) << 32)
            }
            reg::ACQ if c.cc & cc::EN == 0 => {
                c.acq = (c.acq & !0xffff_ffff) | u64::from(merge(c.acq as u32) & !0xfff)
            }
            o if o == reg::ACQ + 4 && c.cc & cc::EN == 0 => {
                c.acq = (c.acq & 0xffff_ffff) | (u64::from(merge((c.acq >> 32) as u32)) << 32)
            }
            o => {
                if let Some((qid, is_cq)) = reg::doorbell(o, DSTRD) {
                    if qid <= MAX_IO_QUEUES {
                        self.doorbell(&mut c, usize::from(qid), is_cq, value);
                    }
                }
            }
        }
    }

    /// A doorbell write: SQ `qid`'s new tail, or (`is_cq`) CQ `qid`'s new head. A write to a
    /// queue that does not exist, or with a value the queue cannot take, is an Error event.
    fn doorbell(&self, c: &mut Ctrl, qid: usize, is_cq: bool, value: u32) {
        let v = (value & 0xffff) as u16;
        let (missing, bad_value) = (
            aer::ERROR_INVALID_DOORBELL,
            aer::ERROR_INVALID_DOORBELL_VALUE,
        );
        if !is_cq {
            match c.sqs[qid].as_mut() {
                Some(sq) if v < sq.size => {
                    crate::probe::hit(crate::probe::Ev::NvmeSqDoorbell);
                    sq.tail = v;
                    // The fetch leaves in this pass of the TLP thread, before the worker is
                    // even awake.
                    if let Some(dma) = &self.dma {
                        fetch::on_doorbell(c, dma, qid);
                    }
                    self.shared.wake.notify_all();
                }
                Some(_) => c.async_event(aer::TYPE_ERROR, bad_value, log::ERROR),
                None => c.async_event(aer::TYPE_ERROR, missing, log::ERROR),
            }
        } else {
            match c.cqs[qid].as_mut() {
                Some(cq) if v < cq.size && cq_head_valid(cq, v) => {
                    crate::probe::hit(crate::probe::Ev::NvmeCqDoorbell);
                    cq.head = v;
                    self.sync_intx(c);
                    self.shared.wake.notify_all();
                }
                Some(_) => c.async_event(aer::TYPE_ERROR, bad_value, log::ERROR),
                None => c.async_event(aer::TYPE_ERROR, missing, log::ERROR),
            }
        }
        self.shared.wake.notify_all();
    }

    fn sync_intx(&self, c: &Ctrl) {
        if let Some(irq) = &self.irq {
            if !irq.msix_enabled() {
                irq.set_intx(c.intx_level());
            }
        }
    }
}

/// A CQ head may only move over entries the controller has posted.
fn cq_head_valid(cq: &Cq, new_head: u16) -> bool {
    let posted = (cq.tail + cq.size - cq.head) % cq.size;
    let advance = (new_head + cq.size - cq.head) % cq.size;
    advance <= posted
}

impl Drop for NvmeController {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
    }
}

impl Device for NvmeController {
    fn name(&self) -> &str {
        "nvme"
    }

    fn attach(&mut self, ctx: DeviceContext) {
        self.irq = Some(ctx.irq.clone());
        self.dma = Some(ctx.dma.clone());
        let w = worker::Worker::new(
            self.shared.clone(),
            self.ns.clone(),
            self.identity.clone(),
            ctx,
        );
        self.worker = std::thread::Builder::new()
            .name("nvme-worker".into())
            .spawn(move || w.run())
            .ok();
    }

    fn config_read(&mut self, reg: u16) -> u32 {
        pcicfg::config_read(&self.cfg, reg)
    }

    fn config_write(&mut self, reg: u16, value: u32, be: u8) -> bool {
        pcicfg::config_write(&mut self.cfg, reg, value, be)
    }

    fn decode(&self) -> Decode {
        pci_decode(&self.cfg, &[])
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) -> Result<(), DeviceError> {
        if bar != 0 {
            return Err(DeviceError::Unsupported("NVMe has only BAR0"));
        }
        let img = self.regs_image();
        for (i, b) in data.iter_mut().enumerate() {
            let o = offset as usize + i;
            *b = img.get(o).copied().unwrap_or(0);
        }
        Ok(())
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) -> Result<(), DeviceError> {
        if bar != 0 {
            return Err(DeviceError::Unsupported("NVMe has only BAR0"));
        }
        // Split into DW-wise register writes with a byte mask.
        let mut i = 0usize;
        while i < data.len() {
            let o = offset + i as u64;
            let dw = o & !3;
            let mut v = [0u8; 4];
            let mut mask = 0u32;
            let mut k = (o - dw) as usize;
            while k < 4 && i < data.len() {
                v[k] = data[i];
                mask |= 0xff << (k * 8);
                k += 1;
                i += 1;
            }
            self.write_reg(dw, u32::from_le_bytes(v), mask);
        }
        Ok(())
    }

    fn create_vf(&mut self, index: u16) -> Option<Box<dyn Device>> {
        let vf = self.vfs.as_ref()?.controller(index)?;
        Some(Box::new(vf))
    }

    fn reset(&mut self, _kind: ResetKind) {
        self.cfg.reset();
        let mut c = self.shared.lock();
        c.cc = 0;
        c.aqa = 0;
        c.asq = 0;
        c.acq = 0;
        c.intms = 0;
        self.shared.wake.notify_all();
        // Wait (bounded) for the worker to tear the queues down, so no DMA follows the reset.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !c.quiesced() && self.worker.is_some() {
            let now = Instant::now();
            if now >= deadline {
                tracing::warn!("nvme: worker did not quiesce within 5 s of a reset");
                break;
            }
            c = self
                .shared
                .idle
                .wait_timeout_or_recover(c, deadline - now)
                .0;
        }
        c.csts = 0;
    }
}
