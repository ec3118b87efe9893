//! A user-space NVMe driver over a tunnelled function (NVM Express Base Specification 1.4c:
//! §3.1 controller registers, §7.6.1 initialization, §7.6.2 shutdown, §4.2/§4.6 submission
//! and completion queue entries, §4.3 PRPs, §5.15 Identify, §5.3/§5.5 Create I/O CQ/SQ,
//! §5.2 Asynchronous Event Request, §5.14 Get Log Page, §5.21 Set Features, §6.9/§6.15
//! Read/Write). The register interface — offsets and fields, [`Sqe`] and [`Cqe`], the
//! Identify structures, status codes — is [`crate::pci::class::nvme`], the one definition the
//! appliance's controller model uses too.
//!
//! Bring-up: disable (CC.EN = 0, wait CSTS.RDY = 0), program AQA/ASQ/ACQ, enable with 4 KiB
//! pages and 64/16-byte entries, wait for RDY (bounded by CAP.TO), Identify controller and
//! namespace 1, ask for one I/O queue pair (Set Features, Number of Queues) and create it.
//!
//! Queues, PRP lists and data buffers all live in one [`DmaBuffer`] registered at [`IOVA`]:
//! the controller fetches commands and PRP lists and moves data over the tunnel; the driver
//! only writes doorbells (posted writes) and reads completions from its own memory — so the
//! I/O hot path issues no MMIO read. Completions are polled or waited for on the MSI-X
//! eventfd of the I/O queue's vector ([`Completion`]).
//!
//! Each of the `depth` command slots owns a data buffer of up to [`MAX_TRANSFER`] bytes and a
//! PRP list page; slot *n* is command identifier *n*. Besides Read and Write, any command can
//! be sent as is ([`NvmeDriver::submit_command`], [`NvmeDriver::admin_command`], as Linux's
//! passthrough ioctls do), entries can be queued and their doorbell rung once for a batch
//! ([`NvmeDriver::stage_command`], [`NvmeDriver::ring_doorbell`]), and admin commands that
//! complete later — Asynchronous Event Requests — are submitted with
//! [`NvmeDriver::admin_submit`] and reaped with [`NvmeDriver::admin_completions`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::mem::DmaBuffer;
use super::Completion;
use crate::host::dma::{Access, DmaError};
use crate::host::requester::RequestError;
use crate::host::vfio_user::{EventFd, IrqIndex};
use crate::host::RemoteFunction;
use crate::pci::class::nvme::identify::ascii;
use crate::pci::class::nvme::{
    aqa, cap, cc, csts, feat, reg, vs, Cqe, IdentifyController, IdentifyNamespace, Sqe, Status,
    CLASS_NVM, CQES_LOG2, CQE_SIZE, IDENTIFY_SIZE, MIN_PAGE_SIZE, SQES_LOG2, SQE_SIZE,
};
use crate::pci::class::nvme::{cns, select};
use crate::pci::spec::msix;

/// Bus address where the driver's memory is registered.
pub const IOVA: u64 = 0x40_0000_0000;
/// Memory page size the driver programs (CC.MPS = 0).
pub const PAGE: usize = MIN_PAGE_SIZE;
/// Largest transfer of one command (the controller's MDTS may lower it).
pub const MAX_TRANSFER: usize = 128 * 1024;
/// Largest queue depth the driver supports.
pub const MAX_DEPTH: usize = 255;
/// Largest data transfer of one [`NvmeDriver::admin_command`].
pub const ADMIN_MAX_TRANSFER: usize = 4 * PAGE;

/// Entries of each admin queue.
const ADMIN_ENTRIES: usize = 32;
/// Admin commands submitted with [`NvmeDriver::admin_submit`] that may be outstanding at once
/// (a bound on what the driver tracks; the admin SQ itself never holds more than one batch).
const MAX_ASYNC_ADMIN: usize = 16;

/// Errors of the NVMe driver.
#[derive(Debug, thiserror::Error)]
pub enum NvmeError {
    /// A register access through the tunnel failed.
    #[error("register access failed: {0}")]
    Request(#[from] RequestError),
    /// Registering or touching DMA memory failed.
    #[error("DMA memory: {0}")]
    Dma(#[from] DmaError),
    /// Arming the MSI-X eventfd failed.
    #[error("interrupt setup: {0}")]
    Irq(#[from] std::io::Error),
    /// The function is not an NVMe controller this driver can run.
    #[error("unsupported controller: {0}")]
    Unsupported(String),
    /// The controller did not reach a state in time.
    #[error("controller did not {what} within {ms} ms")]
    Timeout {
        /// What we waited for.
        what: &'static str,
        /// How long.
        ms: u128,
    },
    /// CSTS.CFS: the controller reported a fatal error.
    #[error("controller fatal status (CSTS.CFS) during {0}")]
    Fatal(&'static str),
    /// A command completed with an error status.
    #[error("{cmd} failed: {status}")]
    Status {
        /// Which command.
        cmd: &'static str,
        /// Its completion status.
        status: Status,
    },
    /// A request the driver cannot express (size, range, depth).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A command got no completion in time.
    #[error("no completion for command {cid} within {ms} ms")]
    CommandTimeout {
        /// Command identifier.
        cid: u16,
        /// How long we waited.
        ms: u128,
    },
}

/// What Identify told us.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControllerInfo {
    /// PCI vendor ID (Identify VID).
    pub vid: u16,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// Firmware revision.
    pub firmware: String,
    /// Version register (major, minor, tertiary).
    pub version: (u16, u8, u8),
    /// Largest transfer per command in bytes (MDTS, capped at [`MAX_TRANSFER`]).
    pub max_transfer: usize,
    /// Namespace 1 size in logical blocks.
    pub blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
}

/// Direction of an I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Device to host.
    Read,
    /// Host to device.
    Write,
}

/// One finished I/O command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDone {
    /// Its slot / command identifier.
    pub slot: u16,
    /// Completion status.
    pub status: Status,
    /// Command-specific DW0 of the completion.
    pub dw0: u32,
    /// The controller's SQ head when it posted the completion.
    pub sq_head: u16,
    /// Time from submission to the driver seeing the completion.
    pub latency: Duration,
}

/// Driver settings.
#[derive(Debug, Clone, Copy)]
pub struct NvmeConfig {
    /// I/O queue depth (command slots), 1..=255.
    pub depth: usize,
    /// Poll or use MSI-X.
    pub completion: Completion,
    /// Timeout of a single command.
    pub command_timeout: Duration,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        Self {
            depth: 32,
            completion: Completion::Interrupt,
            command_timeout: Duration::from_secs(10),
        }
    }
}

/// The data of a command the driver moves for its caller ([`NvmeDriver::admin_command`],
/// [`NvmeDriver::io_command`]).
#[derive(Debug)]
pub enum Data<'a> {
    /// No data from the driver: the command's PRP entries are sent as they are.
    None,
    /// The controller writes into this buffer (e.g. Identify, Get Log Page, Read).
    FromDevice(&'a mut [u8]),
    /// The controller reads this buffer (e.g. Write, Dataset Management ranges).
    ToDevice(&'a [u8]),
}

/// Where an I/O command submitted with [`NvmeDriver::submit_command`] moves its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotData {
    /// The first `len` bytes of the slot's buffer (the driver sets PRP1/PRP2 and a PRP list).
    Buffer(usize),
    /// The command's PRP entries are sent as they are (memory the caller registered itself,
    /// or a malformed pointer on purpose).
    AsGiven,
}

#[derive(Debug)]
struct Queue {
    qid: u16,
    sq_off: u64,
    cq_off: u64,
    entries: u16,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
}

impl Queue {
    fn new(qid: u16, sq_off: u64, cq_off: u64, entries: u16) -> Self {
        Self {
            qid,
            sq_off,
            cq_off,
            entries,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
        }
    }
}

/// Where a command slot is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// On the free list.
    Free,
    /// Handed out by `take_slot`, not submitted.
    Taken,
    /// Submitted (maybe only staged), waiting for its completion.
    Busy(Instant),
}

/// Where things live in the driver's DMA memory (offsets from [`IOVA`]).
#[derive(Debug, Clone, Copy)]
struct Layout {
    /// Admin command data and its PRP list page.
    admin_data: u64,
    admin_prp: u64,
    /// One PRP list page per slot.
    prp: u64,
    /// One [`MAX_TRANSFER`] buffer per slot.
    data: u64,
}

/// A running NVMe controller with one I/O queue pair.
#[derive(Debug)]
pub struct NvmeDriver {
    f: RemoteFunction,
    mem: Arc<DmaBuffer>,
    cfg: NvmeConfig,
    info: ControllerInfo,
    admin: Queue,
    io: Queue,
    dstrd: u32,
    at: Layout,
    slots: Vec<SlotState>,
    free: Vec<u16>,
    /// Entries written to the I/O SQ whose doorbell is not rung yet.
    staged: usize,
    irq: Option<EventFd>,
    admin_cid: u16,
    /// Command identifiers of outstanding [`NvmeDriver::admin_submit`] commands.
    async_cids: Vec<u16>,
    /// Their completions seen while waiting for another admin command.
    async_done: VecDeque<Cqe>,
    timeout: Duration,
}

/// What the Identify Controller (CNS 01h) and Identify Namespace (CNS 00h) pages say that the
/// driver uses (§5.15.2.2, §5.15.2.1). The pages come from the card: any bytes are handled;
/// a namespace the driver cannot use is an error.
pub fn parse_identify(ctrl: &[u8], ns: &[u8]) -> Result<ControllerInfo, NvmeError> {
    let short = || {
        NvmeError::Unsupported(format!(
            "Identify pages of {} / {} bytes, expected {IDENTIFY_SIZE}",
            ctrl.len(),
            ns.len()
        ))
    };
    let (c, _) = IdentifyController::ref_from_prefix(ctrl).map_err(|_| short())?;
    let (n, _) = IdentifyNamespace::ref_from_prefix(ns).map_err(|_| short())?;
    let max_transfer = if c.mdts == 0 {
        MAX_TRANSFER
    } else {
        (PAGE << c.mdts.min(16)).min(MAX_TRANSFER)
    };
    let nsze = n.nsze.get();
    let lbads = n.lba_format().lbads;
    if !(9..=12).contains(&lbads) || nsze == 0 {
        return Err(NvmeError::Unsupported(format!(
            "namespace 1: {nsze} blocks of 2^{lbads} bytes"
        )));
    }
    Ok(ControllerInfo {
        vid: c.vid.get(),
        serial: ascii(&c.sn),
        model: ascii(&c.mn),
        firmware: ascii(&c.fr),
        version: (0, 0, 0),
        max_transfer,
        blocks: nsze,
        block_size: 1 << lbads,
    })
}

/// Write PRP1/PRP2 into `sqe` for `len` bytes of driver memory at `off` (page aligned): PRP1
/// the first page, PRP2 the second one or a PRP list at `list_off` of the rest (§4.3).
fn set_prps(
    mem: &DmaBuffer,
    sqe: &mut Sqe,
    off: u64,
    len: usize,
    list_off: u64,
) -> Result<(), NvmeError> {
    let buf = IOVA + off;
    let pages = len.div_ceil(PAGE);
    let prp2 = match pages {
        0 | 1 => 0,
        2 => buf + PAGE as u64,
        _ => {
            let mut list = [0u8; MAX_TRANSFER / PAGE * 8];
            for i in 1..pages {
                let e = buf + (i * PAGE) as u64;
                list[(i - 1) * 8..i * 8].copy_from_slice(&e.to_le_bytes());
            }
            mem.write_at(list_off, &list[..(pages - 1) * 8])?;
            IOVA + list_off
        }
    };
    sqe.prp1.set(buf);
    sqe.prp2.set(prp2);
    Ok(())
}

impl NvmeDriver {
    /// Bring the controller behind `f` up and create one I/O queue pair of `cfg.depth` slots.
    pub fn open(f: RemoteFunction, cfg: NvmeConfig) -> Result<Self, NvmeError> {
        let info = f.info();
        if info.class >> 8 != CLASS_NVM {
            return Err(NvmeError::Unsupported(format!(
                "class {:06x} is not NVM Express (0108xx)",
                info.class
            )));
        }
        if info.bars[0].size < 0x2000 {
            return Err(NvmeError::Unsupported("BAR0 smaller than 8 KiB".into()));
        }
        if cfg.depth == 0 || cfg.depth > MAX_DEPTH {
            return Err(NvmeError::Invalid(format!(
                "queue depth {} not in 1..={MAX_DEPTH}",
                cfg.depth
            )));
        }
        let entries = (cfg.depth + 1) as u16;
        // Layout: admin SQ, admin CQ, admin data and its PRP list, I/O SQ, I/O CQ, PRP pages,
        // data.
        let pages = |bytes: usize| bytes.div_ceil(PAGE) as u64 * PAGE as u64;
        let asq = 0u64;
        let acq = asq + pages(ADMIN_ENTRIES * SQE_SIZE);
        let admin_data = acq + pages(ADMIN_ENTRIES * CQE_SIZE);
        let admin_prp = admin_data + ADMIN_MAX_TRANSFER as u64;
        let iosq = admin_prp + PAGE as u64;
        let iocq = iosq + pages(entries as usize * SQE_SIZE);
        let prp = iocq + pages(entries as usize * CQE_SIZE);
        let data = prp + (cfg.depth * PAGE) as u64;
        let total = data + (cfg.depth * MAX_TRANSFER) as u64;
        let mem = Arc::new(DmaBuffer::new(total as usize));
        // A window left over from a previous driver instance on this function goes first.
        let _ = f.unregister_dma(IOVA, total);
        f.register_dma(IOVA, mem.clone(), Access::RW)?;
        let mut d = NvmeDriver {
            f,
            mem,
            cfg,
            info: ControllerInfo {
                vid: 0,
                serial: String::new(),
                model: String::new(),
                firmware: String::new(),
                version: (0, 0, 0),
                max_transfer: MAX_TRANSFER,
                blocks: 0,
                block_size: 512,
            },
            admin: Queue::new(0, asq, acq, ADMIN_ENTRIES as u16),
            io: Queue::new(1, iosq, iocq, entries),
            dstrd: 0,
            at: Layout {
                admin_data,
                admin_prp,
                prp,
                data,
            },
            slots: vec![SlotState::Free; cfg.depth],
            free: (0..cfg.depth as u16).rev().collect(),
            staged: 0,
            irq: None,
            admin_cid: 0,
            async_cids: Vec::with_capacity(MAX_ASYNC_ADMIN),
            async_done: VecDeque::with_capacity(MAX_ASYNC_ADMIN),
            timeout: Duration::from_secs(15),
        };
        d.bring_up()?;
        Ok(d)
    }

    /// What Identify reported.
    pub fn info(&self) -> &ControllerInfo {
        &self.info
    }

    /// The function this driver runs.
    pub fn function(&self) -> &RemoteFunction {
        &self.f
    }

    /// Queue depth (command slots).
    pub fn depth(&self) -> usize {
        self.cfg.depth
    }

    /// Commands submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.cfg.depth - self.free.len()
    }

    fn r32(&self, off: u64) -> Result<u32, NvmeError> {
        Ok(self.f.bar_read32(0, off)?)
    }

    fn w32(&self, off: u64, v: u32) -> Result<(), NvmeError> {
        Ok(self.f.bar_write32(0, off, v)?)
    }

    fn w64(&self, off: u64, v: u64) -> Result<(), NvmeError> {
        self.w32(off, v as u32)?;
        self.w32(off + 4, (v >> 32) as u32)
    }

    fn wait_csts(&self, what: &'static str, done: impl Fn(u32) -> bool) -> Result<u32, NvmeError> {
        let t0 = Instant::now();
        loop {
            let csts = self.r32(reg::CSTS)?;
            if csts == u32::MAX {
                return Err(NvmeError::Unsupported(
                    "CSTS reads all-ones (controller gone or link down)".into(),
                ));
            }
            if done(csts) {
                return Ok(csts);
            }
            if csts & csts::CFS != 0 && what != "disable" {
                return Err(NvmeError::Fatal(what));
            }
            if t0.elapsed() > self.timeout {
                return Err(NvmeError::Timeout {
                    what,
                    ms: self.timeout.as_millis(),
                });
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    fn bring_up(&mut self) -> Result<(), NvmeError> {
        let cap = u64::from(self.r32(reg::CAP)?) | (u64::from(self.r32(reg::CAP + 4)?) << 32);
        if cap == u64::MAX {
            return Err(NvmeError::Unsupported("CAP reads all-ones".into()));
        }
        let mqes = usize::from(cap::mqes(cap)) + 1;
        if mqes < self.io.entries as usize {
            return Err(NvmeError::Invalid(format!(
                "queue depth {} exceeds the controller's {} entries",
                self.cfg.depth,
                mqes - 1
            )));
        }
        if cap & cap::CSS_NVM == 0 {
            return Err(NvmeError::Unsupported(
                "controller lacks the NVM command set".into(),
            ));
        }
        let mpsmin = cap::mpsmin(cap);
        if mpsmin > 0 {
            return Err(NvmeError::Unsupported(format!(
                "minimum page size {} KiB > 4 KiB",
                4 << mpsmin
            )));
        }
        self.dstrd = cap::dstrd(cap);
        self.timeout = Duration::from_millis(u64::from(cap::to(cap)).max(1) * 500);
        self.info.version = vs::split(self.r32(reg::VS)?);

        // §7.6.1: disable, wait for RDY = 0.
        let cc = self.r32(reg::CC)?;
        if cc & cc::EN != 0 {
            self.w32(reg::CC, cc & !cc::EN)?;
        }
        self.wait_csts("disable", |c| c & csts::RDY == 0)?;
        self.mem.zero(self.admin.sq_off, ADMIN_ENTRIES * SQE_SIZE)?;
        self.mem.zero(self.admin.cq_off, ADMIN_ENTRIES * CQE_SIZE)?;
        self.admin = Queue::new(
            0,
            self.admin.sq_off,
            self.admin.cq_off,
            ADMIN_ENTRIES as u16,
        );
        self.w32(
            reg::AQA,
            aqa::new(ADMIN_ENTRIES as u16, ADMIN_ENTRIES as u16),
        )?;
        self.w64(reg::ASQ, IOVA + self.admin.sq_off)?;
        self.w64(reg::ACQ, IOVA + self.admin.cq_off)?;
        // EN, CSS = NVM, MPS = 4 KiB, round robin, IOSQES = 6, IOCQES = 4.
        self.w32(
            reg::CC,
            cc::EN | (SQES_LOG2 << cc::IOSQES_SHIFT) | (CQES_LOG2 << cc::IOCQES_SHIFT),
        )?;
        self.wait_csts("become ready", |c| c & csts::RDY != 0)?;

        let ctrl = self.identify(cns::CONTROLLER, 0)?;
        let ns = self.identify(cns::NAMESPACE, 1)?;
        let version = self.info.version;
        self.info = parse_identify(&ctrl, &ns)?;
        self.info.version = version;

        // One I/O queue pair (Number of Queues, 0-based counts).
        self.set_features(feat::NUM_QUEUES, feat::num_queues(0, 0))?;
        let interrupts = self.cfg.completion == Completion::Interrupt;
        if interrupts {
            self.enable_msix()?;
            self.irq = Some(self.f.interrupt_eventfd(IrqIndex::Msix, 1)?);
        }
        let entries = self.io.entries;
        self.mem
            .zero(self.io.sq_off, usize::from(entries) * SQE_SIZE)?;
        self.mem
            .zero(self.io.cq_off, usize::from(entries) * CQE_SIZE)?;
        // QID 1 on vector 1 (interrupts enabled when MSI-X is used), physically contiguous.
        let cq = Sqe::create_io_cq(1, u32::from(entries), IOVA + self.io.cq_off, 1, interrupts);
        self.admin_ok("Create I/O Completion Queue", cq, Data::None)?;
        let sq = Sqe::create_io_sq(1, u32::from(entries), IOVA + self.io.sq_off, 1);
        self.admin_ok("Create I/O Submission Queue", sq, Data::None)?;
        Ok(())
    }

    /// MSI-X Enable, Function Mask clear (PCI Local Bus 3.0 §6.8.2.3).
    fn enable_msix(&self) -> Result<(), NvmeError> {
        let Some(m) = self.f.info().msix else {
            return Err(NvmeError::Unsupported("no MSI-X capability".into()));
        };
        let dw = self.f.config_read(m.cap)?;
        let ctl = ((dw >> 16) as u16 | msix::CTRL_ENABLE) & !msix::CTRL_FUNCTION_MASK;
        self.f
            .config_write(m.cap, (dw & 0xffff) | (u32::from(ctl) << 16))?;
        Ok(())
    }

    // --- Admin queue ---

    fn sq_doorbell(&self, q: &Queue) -> u64 {
        reg::sq_tail_doorbell(q.qid, self.dstrd)
    }

    fn cq_doorbell(&self, q: &Queue) -> u64 {
        reg::cq_head_doorbell(q.qid, self.dstrd)
    }

    /// Write an entry at the tail (the doorbell is the caller's).
    fn write_entry(&self, q: &mut Queue, sqe: &Sqe) -> Result<(), NvmeError> {
        self.mem.write_at(
            q.sq_off + u64::from(q.sq_tail) * SQE_SIZE as u64,
            sqe.as_bytes(),
        )?;
        q.sq_tail = (q.sq_tail + 1) % q.entries;
        Ok(())
    }

    /// Write an entry at the tail and ring the doorbell.
    fn push(&self, q: &mut Queue, sqe: &Sqe) -> Result<(), NvmeError> {
        self.write_entry(q, sqe)?;
        self.w32(self.sq_doorbell(q), u32::from(q.sq_tail))
    }

    /// The next completion of `q`, if the controller posted one.
    fn pop(&self, q: &mut Queue) -> Result<Option<Cqe>, NvmeError> {
        let mut cqe = Cqe::new_zeroed();
        self.mem.read_at(
            q.cq_off + u64::from(q.cq_head) * CQE_SIZE as u64,
            cqe.as_mut_bytes(),
        )?;
        if cqe.phase() != q.phase {
            return Ok(None);
        }
        q.cq_head += 1;
        if q.cq_head == q.entries {
            q.cq_head = 0;
            q.phase = !q.phase;
        }
        Ok(Some(cqe))
    }

    fn next_admin_cid(&mut self) -> u16 {
        loop {
            self.admin_cid = self.admin_cid.wrapping_add(1);
            if !self.async_cids.contains(&self.admin_cid) {
                return self.admin_cid;
            }
        }
    }

    /// Run admin command `cmd` and wait for its completion, whatever its status: the driver
    /// sets the command identifier and, for `data`, the data pointer (at most
    /// [`ADMIN_MAX_TRANSFER`] bytes, copied through the driver's admin buffer); with
    /// [`Data::None`] the PRP entries of `cmd` are sent as they are.
    pub fn admin_command(&mut self, mut cmd: Sqe, data: Data<'_>) -> Result<Cqe, NvmeError> {
        let len = match &data {
            Data::None => 0,
            Data::FromDevice(b) => b.len(),
            Data::ToDevice(b) => b.len(),
        };
        if len > ADMIN_MAX_TRANSFER {
            return Err(NvmeError::Invalid(format!(
                "admin data of {len} bytes (at most {ADMIN_MAX_TRANSFER})"
            )));
        }
        match &data {
            Data::None => {}
            Data::FromDevice(_) => self.mem.zero(self.at.admin_data, len)?,
            Data::ToDevice(b) => self.mem.write_at(self.at.admin_data, b)?,
        }
        if !matches!(data, Data::None) {
            set_prps(
                &self.mem,
                &mut cmd,
                self.at.admin_data,
                len,
                self.at.admin_prp,
            )?;
        }
        cmd.cid.set(self.next_admin_cid());
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let r = self.admin_roundtrip(&mut q, &cmd);
        self.admin = q;
        let cqe = r?;
        if let Data::FromDevice(b) = data {
            self.mem.read_at(self.at.admin_data, b)?;
        }
        Ok(cqe)
    }

    /// [`admin_command`](Self::admin_command), with an error status as an error.
    fn admin_ok(&mut self, name: &'static str, cmd: Sqe, data: Data<'_>) -> Result<Cqe, NvmeError> {
        let cqe = self.admin_command(cmd, data)?;
        match cqe.status() {
            s if s.is_success() => Ok(cqe),
            status => Err(NvmeError::Status { cmd: name, status }),
        }
    }

    fn admin_roundtrip(&mut self, q: &mut Queue, sqe: &Sqe) -> Result<Cqe, NvmeError> {
        self.push(q, sqe)?;
        let t0 = Instant::now();
        loop {
            if let Some(cqe) = self.pop(q)? {
                self.w32(self.cq_doorbell(q), u32::from(q.cq_head))?;
                let cid = cqe.cid.get();
                if cid == sqe.cid.get() {
                    return Ok(cqe);
                }
                if let Some(i) = self.async_cids.iter().position(|&c| c == cid) {
                    // An earlier admin_submit command (e.g. an AER) completed meanwhile.
                    self.async_cids.swap_remove(i);
                    self.async_done.push_back(cqe);
                } else {
                    // A stale completion (e.g. of an earlier timed-out command).
                    tracing::debug!(cid, "admin completion for no outstanding command");
                }
                continue;
            }
            if t0.elapsed() > self.timeout {
                return Err(NvmeError::CommandTimeout {
                    cid: sqe.cid.get(),
                    ms: self.timeout.as_millis(),
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Submit admin command `cmd` as it is (PRP entries included) without waiting: it stays
    /// outstanding until [`admin_completions`](Self::admin_completions) reaps it — the way an
    /// Asynchronous Event Request is used. Returns its command identifier.
    pub fn admin_submit(&mut self, mut cmd: Sqe) -> Result<u16, NvmeError> {
        if self.async_cids.len() >= MAX_ASYNC_ADMIN {
            return Err(NvmeError::Invalid(format!(
                "{MAX_ASYNC_ADMIN} admin commands already outstanding"
            )));
        }
        let cid = self.next_admin_cid();
        cmd.cid.set(cid);
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let r = self.push(&mut q, &cmd);
        self.admin = q;
        r?;
        self.async_cids.push(cid);
        Ok(cid)
    }

    /// Reap the completions of [`admin_submit`](Self::admin_submit) commands posted so far
    /// (and ring the admin CQ head doorbell); returns how many `on_done` got. Does not wait.
    pub fn admin_completions(&mut self, on_done: &mut impl FnMut(Cqe)) -> Result<usize, NvmeError> {
        let mut n = 0;
        while let Some(c) = self.async_done.pop_front() {
            on_done(c);
            n += 1;
        }
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let mut reaped = 0;
        let r = loop {
            match self.pop(&mut q) {
                Ok(Some(c)) => {
                    reaped += 1;
                    let cid = c.cid.get();
                    if let Some(i) = self.async_cids.iter().position(|&x| x == cid) {
                        self.async_cids.swap_remove(i);
                        on_done(c);
                        n += 1;
                    } else {
                        tracing::debug!(cid, "admin completion for no outstanding command");
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        let rang = if reaped > 0 {
            self.w32(self.cq_doorbell(&q), u32::from(q.cq_head))
        } else {
            Ok(())
        };
        self.admin = q;
        r.and(rang).map(|()| n)
    }

    /// Admin commands submitted with [`admin_submit`](Self::admin_submit) not reaped yet.
    pub fn admin_outstanding(&self) -> usize {
        self.async_cids.len() + self.async_done.len()
    }

    /// The raw Identify data structure `cns` of namespace `nsid` (§5.15).
    pub fn identify(&mut self, cns: u8, nsid: u32) -> Result<Vec<u8>, NvmeError> {
        let mut page = vec![0u8; IDENTIFY_SIZE];
        self.admin_ok(
            "Identify",
            Sqe::identify(cns, nsid),
            Data::FromDevice(&mut page),
        )?;
        Ok(page)
    }

    /// Identify Controller (CNS 01h).
    pub fn identify_controller(&mut self) -> Result<Box<IdentifyController>, NvmeError> {
        let page = self.identify(cns::CONTROLLER, 0)?;
        Ok(Box::new(
            IdentifyController::read_from_bytes(&page)
                .map_err(|_| NvmeError::Unsupported("short Identify page".into()))?,
        ))
    }

    /// Identify Namespace `nsid` (CNS 00h).
    pub fn identify_namespace(&mut self, nsid: u32) -> Result<Box<IdentifyNamespace>, NvmeError> {
        let page = self.identify(cns::NAMESPACE, nsid)?;
        Ok(Box::new(
            IdentifyNamespace::read_from_bytes(&page)
                .map_err(|_| NvmeError::Unsupported("short Identify page".into()))?,
        ))
    }

    /// Get Log Page `lid` of namespace `nsid` into `buf` (a whole number of dwords, at most
    /// [`ADMIN_MAX_TRANSFER`] bytes), from offset 0, Retain Asynchronous Event clear.
    pub fn get_log_page(&mut self, lid: u8, nsid: u32, buf: &mut [u8]) -> Result<(), NvmeError> {
        if buf.is_empty() || buf.len() % 4 != 0 {
            return Err(NvmeError::Invalid(format!(
                "log page read of {} bytes: not a whole number of dwords",
                buf.len()
            )));
        }
        let cmd = Sqe::get_log_page(lid, nsid, (buf.len() / 4) as u32, 0, false);
        self.admin_ok("Get Log Page", cmd, Data::FromDevice(buf))?;
        Ok(())
    }

    /// Set Features `fid` to `value`; returns the completion's DW0.
    pub fn set_features(&mut self, fid: u8, value: u32) -> Result<u32, NvmeError> {
        let c = self.admin_ok("Set Features", Sqe::set_features(fid, value), Data::None)?;
        Ok(c.dw0.get())
    }

    /// The current value of feature `fid` (`arg`: CDW11, e.g. the interrupt vector).
    pub fn get_features(&mut self, fid: u8, arg: u32) -> Result<u32, NvmeError> {
        let cmd = Sqe::get_features(fid, select::CURRENT, arg);
        let c = self.admin_ok("Get Features", cmd, Data::None)?;
        Ok(c.dw0.get())
    }

    // --- I/O queue ---

    fn slot_off(&self, slot: u16) -> u64 {
        self.at.data + u64::from(slot) * MAX_TRANSFER as u64
    }

    /// Copy `data` into the buffer of `slot` (before submitting a write from it).
    pub fn fill_slot(&self, slot: u16, data: &[u8]) -> Result<(), NvmeError> {
        if slot as usize >= self.cfg.depth || data.len() > MAX_TRANSFER {
            return Err(NvmeError::Invalid(format!(
                "slot {slot} / {} bytes",
                data.len()
            )));
        }
        self.mem.write_at(self.slot_off(slot), data)?;
        Ok(())
    }

    /// Copy the start of `slot`'s buffer into `buf` (after a read into it completed).
    pub fn slot_data(&self, slot: u16, buf: &mut [u8]) -> Result<(), NvmeError> {
        if slot as usize >= self.cfg.depth || buf.len() > MAX_TRANSFER {
            return Err(NvmeError::Invalid(format!(
                "slot {slot} / {} bytes",
                buf.len()
            )));
        }
        self.mem.read_at(self.slot_off(slot), buf)?;
        Ok(())
    }

    /// A free slot, if any (fill it, then [`submit`](Self::submit) it).
    pub fn take_slot(&mut self) -> Option<u16> {
        let slot = self.free.pop()?;
        self.slots[slot as usize] = SlotState::Taken;
        Some(slot)
    }

    /// Submit Read or Write of `blocks` blocks at `lba` using `slot`'s buffer.
    pub fn submit(&mut self, slot: u16, op: IoOp, lba: u64, blocks: u32) -> Result<(), NvmeError> {
        self.check_slot(slot)?;
        let bytes = blocks as usize * self.info.block_size as usize;
        if blocks == 0 || bytes > self.info.max_transfer {
            return Err(NvmeError::Invalid(format!(
                "{blocks} blocks ({bytes} bytes): not in 1..={} bytes",
                self.info.max_transfer
            )));
        }
        if lba
            .checked_add(u64::from(blocks))
            .is_none_or(|e| e > self.info.blocks)
        {
            return Err(NvmeError::Invalid(format!(
                "LBA {lba}+{blocks} beyond the namespace's {} blocks",
                self.info.blocks
            )));
        }
        let cmd = match op {
            IoOp::Read => Sqe::read(1, lba, blocks),
            IoOp::Write => Sqe::write(1, lba, blocks),
        };
        self.submit_command(slot, cmd, SlotData::Buffer(bytes))
    }

    fn check_slot(&self, slot: u16) -> Result<(), NvmeError> {
        match self.slots.get(slot as usize) {
            None => Err(NvmeError::Invalid(format!("no slot {slot}"))),
            Some(SlotState::Busy(_)) => {
                Err(NvmeError::Invalid(format!("slot {slot} is in flight")))
            }
            Some(_) => Ok(()),
        }
    }

    /// Submit I/O command `cmd` as it is, using `slot` (its command identifier becomes the
    /// slot) and ring the doorbell. With [`SlotData::Buffer`] the driver points the command
    /// at the slot's buffer; with [`SlotData::AsGiven`] its PRP entries are sent unchanged.
    /// No other field is checked: this is the passthrough of a command the caller built.
    pub fn submit_command(&mut self, slot: u16, cmd: Sqe, data: SlotData) -> Result<(), NvmeError> {
        self.stage_command(slot, cmd, data)?;
        self.ring_doorbell()
    }

    /// [`submit_command`](Self::submit_command) without ringing the doorbell: the controller
    /// sees this entry, and every other one staged, at the next
    /// [`ring_doorbell`](Self::ring_doorbell) — one posted write for a whole batch.
    pub fn stage_command(
        &mut self,
        slot: u16,
        mut cmd: Sqe,
        data: SlotData,
    ) -> Result<(), NvmeError> {
        self.check_slot(slot)?;
        if let SlotData::Buffer(len) = data {
            if len > MAX_TRANSFER {
                return Err(NvmeError::Invalid(format!(
                    "{len} bytes: a slot holds at most {MAX_TRANSFER}"
                )));
            }
            let list = self.at.prp + u64::from(slot) * PAGE as u64;
            set_prps(&self.mem, &mut cmd, self.slot_off(slot), len, list)?;
        }
        cmd.cid.set(slot);
        let mut q = std::mem::replace(&mut self.io, Queue::new(1, 0, 0, 1));
        let r = self.write_entry(&mut q, &cmd);
        self.io = q;
        r?;
        if self.slots[slot as usize] == SlotState::Free {
            // Submitted without take_slot: it leaves the free list here.
            self.free.retain(|&s| s != slot);
        }
        self.slots[slot as usize] = SlotState::Busy(Instant::now());
        self.staged += 1;
        Ok(())
    }

    /// Ring the I/O SQ tail doorbell for the entries staged since the last ring, if any.
    pub fn ring_doorbell(&mut self) -> Result<(), NvmeError> {
        if self.staged == 0 {
            return Ok(());
        }
        self.staged = 0;
        self.w32(self.sq_doorbell(&self.io), u32::from(self.io.sq_tail))
    }

    /// Put `slot` back on the free list (once).
    fn release(&mut self, slot: u16) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            if *s != SlotState::Free {
                *s = SlotState::Free;
                self.free.push(slot);
            }
        }
    }

    /// Reap every completion already posted; returns how many `on_done` got.
    pub fn poll(&mut self, on_done: &mut impl FnMut(IoDone)) -> Result<usize, NvmeError> {
        let mut q = std::mem::replace(&mut self.io, Queue::new(1, 0, 0, 1));
        let r = self.reap(&mut q, on_done);
        self.io = q;
        r
    }

    fn reap(
        &mut self,
        q: &mut Queue,
        on_done: &mut impl FnMut(IoDone),
    ) -> Result<usize, NvmeError> {
        let mut n = 0;
        let mut reaped = 0;
        while let Some(c) = self.pop(q)? {
            reaped += 1;
            let cid = c.cid.get();
            let Some(&SlotState::Busy(started)) = self.slots.get(cid as usize) else {
                tracing::warn!(cid, "completion for a command not in flight");
                continue;
            };
            let latency = started.elapsed();
            self.release(cid);
            n += 1;
            on_done(IoDone {
                slot: cid,
                status: c.status(),
                dw0: c.dw0.get(),
                sq_head: c.sqhd.get(),
                latency,
            });
        }
        if reaped > 0 {
            self.w32(self.cq_doorbell(q), u32::from(q.cq_head))?;
        }
        Ok(n)
    }

    /// Wait until at least one command completes (or the command timeout passes) and reap.
    /// Staged commands are made visible first (their doorbell is rung).
    pub fn wait(&mut self, on_done: &mut impl FnMut(IoDone)) -> Result<usize, NvmeError> {
        self.ring_doorbell()?;
        let t0 = Instant::now();
        loop {
            let n = self.poll(on_done)?;
            if n > 0 || self.in_flight() == 0 {
                return Ok(n);
            }
            if t0.elapsed() > self.cfg.command_timeout {
                let busy = |s: &SlotState| matches!(s, SlotState::Busy(_));
                let cid = self.slots.iter().position(busy).unwrap_or(0) as u16;
                return Err(NvmeError::CommandTimeout {
                    cid,
                    ms: self.cfg.command_timeout.as_millis(),
                });
            }
            match &self.irq {
                // The eventfd counts interrupts, so one raised between the poll and this wait
                // is not lost. The timeout only bounds a lost interrupt.
                Some(fd) => {
                    fd.wait_timeout(Duration::from_millis(5))?;
                }
                None => std::hint::spin_loop(),
            }
        }
    }

    /// Run I/O command `cmd` on its own and wait for it, whatever its status: `data` goes
    /// through a slot's buffer (at most [`MAX_TRANSFER`] bytes); with [`Data::None`] the PRP
    /// entries of `cmd` are sent as they are. The queue must be idle (no command in flight).
    pub fn io_command(&mut self, cmd: Sqe, data: Data<'_>) -> Result<IoDone, NvmeError> {
        if self.in_flight() > 0 {
            return Err(NvmeError::Invalid(format!(
                "io_command needs an idle queue ({} commands in flight)",
                self.in_flight()
            )));
        }
        let slot = self
            .take_slot()
            .ok_or_else(|| NvmeError::Invalid("no free slot".into()))?;
        let ptr = match &data {
            Data::None => SlotData::AsGiven,
            Data::FromDevice(b) => SlotData::Buffer(b.len()),
            Data::ToDevice(b) => {
                if let Err(e) = self.fill_slot(slot, b) {
                    self.release(slot);
                    return Err(e);
                }
                SlotData::Buffer(b.len())
            }
        };
        if let Err(e) = self.submit_command(slot, cmd, ptr) {
            self.release(slot);
            return Err(e);
        }
        let mut done = None;
        while done.is_none() {
            self.wait(&mut |d| done = Some(d))?;
        }
        let done = done.ok_or_else(|| NvmeError::Invalid("no completion".into()))?;
        if let Data::FromDevice(b) = data {
            self.slot_data(slot, b)?;
        }
        Ok(done)
    }

    /// Flush the volatile write cache of namespace 1 (§6.8).
    pub fn flush(&mut self) -> Result<(), NvmeError> {
        let d = self.io_command(Sqe::flush(1), Data::None)?;
        if d.status.is_success() {
            Ok(())
        } else {
            Err(NvmeError::Status {
                cmd: "Flush",
                status: d.status,
            })
        }
    }

    /// Run `len` bytes of `op` at `lba` through the queue, keeping it as full as the depth
    /// allows: `data` is written (Write) or filled (Read). `progress` gets bytes done.
    pub fn transfer(
        &mut self,
        op: IoOp,
        lba: u64,
        data: &mut [u8],
        progress: &mut impl FnMut(u64),
    ) -> Result<(), NvmeError> {
        let bs = self.info.block_size as usize;
        if data.len() % bs != 0 {
            return Err(NvmeError::Invalid(format!(
                "{} bytes is not a multiple of the {bs}-byte block",
                data.len()
            )));
        }
        let chunk = self.info.max_transfer;
        // Chunk offset each in-flight slot serves.
        let mut at = vec![0usize; self.cfg.depth];
        let mut next = 0usize;
        let mut failed: Option<NvmeError> = None;
        let mut done = Vec::with_capacity(self.cfg.depth);
        while next < data.len() || self.in_flight() > 0 {
            while next < data.len() && failed.is_none() {
                let Some(slot) = self.take_slot() else { break };
                let n = chunk.min(data.len() - next);
                if op == IoOp::Write {
                    self.fill_slot(slot, &data[next..next + n])?;
                }
                at[slot as usize] = next;
                self.submit(slot, op, lba + (next / bs) as u64, (n / bs) as u32)?;
                next += n;
            }
            self.wait(&mut |d| done.push(d))?;
            for d in done.drain(..) {
                let off = at[d.slot as usize];
                let n = chunk.min(data.len() - off);
                if !d.status.is_success() {
                    failed.get_or_insert(NvmeError::Status {
                        cmd: if op == IoOp::Read { "Read" } else { "Write" },
                        status: d.status,
                    });
                    continue;
                }
                if op == IoOp::Read {
                    self.slot_data(d.slot, &mut data[off..off + n])?;
                }
                progress(n as u64);
            }
            if failed.is_some() && self.in_flight() == 0 {
                break;
            }
        }
        failed.map_or(Ok(()), Err)
    }

    /// Delete the I/O queues and shut the controller down (CC.SHN normal, then disable).
    pub fn shutdown(mut self) -> Result<(), NvmeError> {
        let r = self.stop();
        let _ = self.f.unregister_dma(IOVA, self.mem_len());
        r
    }

    fn mem_len(&self) -> u64 {
        crate::host::dma::DmaMemory::len(&*self.mem)
    }

    fn stop(&mut self) -> Result<(), NvmeError> {
        self.admin_ok(
            "Delete I/O Submission Queue",
            Sqe::delete_io_sq(1),
            Data::None,
        )?;
        self.admin_ok(
            "Delete I/O Completion Queue",
            Sqe::delete_io_cq(1),
            Data::None,
        )?;
        let cc = self.r32(reg::CC)?;
        self.w32(reg::CC, (cc & !cc::SHN_MASK) | cc::SHN_NORMAL)?;
        self.wait_csts("finish shutdown", |c| {
            c & csts::SHST_MASK == csts::SHST_COMPLETE
        })?;
        self.w32(reg::CC, 0)?;
        self.wait_csts("disable", |c| c & csts::RDY == 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use proptest::prelude::*;

    fn pages(nsze: u64, lbads: u8, mdts: u8) -> (Vec<u8>, Vec<u8>) {
        let mut c = IdentifyController::new_zeroed();
        c.vid.set(0x1b36);
        c.sn.copy_from_slice(b"SERIAL01            ");
        c.mn.fill(b' ');
        c.mn[..5].copy_from_slice(b"MODEL");
        c.fr.copy_from_slice(b"1.0     ");
        c.mdts = mdts;
        let mut n = IdentifyNamespace::new_zeroed();
        n.nsze.set(nsze);
        n.flbas = 1; // LBA format 1
        n.lbaf[1].lbads = lbads;
        (c.as_bytes().to_vec(), n.as_bytes().to_vec())
    }

    #[test]
    fn identify_fields() {
        let (c, n) = pages(2048, 12, 3);
        let i = parse_identify(&c, &n).unwrap();
        assert_eq!(
            (i.vid, i.serial.as_str(), i.model.as_str()),
            (0x1b36, "SERIAL01", "MODEL")
        );
        assert_eq!(
            (i.blocks, i.block_size, i.max_transfer),
            (2048, 4096, 32 * 1024)
        );
        let (c, n) = pages(2048, 8, 0);
        assert!(matches!(
            parse_identify(&c, &n),
            Err(NvmeError::Unsupported(_))
        ));
        assert!(parse_identify(&c[..100], &n).is_err());
    }

    #[test]
    fn prps_for_one_two_and_many_pages() {
        let mem = DmaBuffer::new(8 * PAGE);
        let mut s = Sqe::read(1, 0, 1);
        set_prps(&mem, &mut s, 0x1000, 512, 0).unwrap();
        assert_eq!((s.prp1.get(), s.prp2.get()), (IOVA + 0x1000, 0));
        set_prps(&mem, &mut s, 0x1000, 2 * PAGE, 0).unwrap();
        assert_eq!((s.prp1.get(), s.prp2.get()), (IOVA + 0x1000, IOVA + 0x2000));
        set_prps(&mem, &mut s, 0x1000, 3 * PAGE + 1, 0).unwrap();
        assert_eq!((s.prp1.get(), s.prp2.get()), (IOVA + 0x1000, IOVA));
        let mut list = [0u8; 24];
        mem.read_at(0, &mut list).unwrap();
        let e = |i: usize| u64::from_le_bytes(list[i * 8..i * 8 + 8].try_into().unwrap());
        assert_eq!(
            (e(0), e(1), e(2)),
            (IOVA + 0x2000, IOVA + 0x3000, IOVA + 0x4000)
        );
    }

    proptest! {
        #[test]
        fn any_identify_pages_parse_or_fail_cleanly(
            c in proptest::collection::vec(any::<u8>(), 0..4200),
            n in proptest::collection::vec(any::<u8>(), 0..4200),
        ) {
            if let Ok(i) = parse_identify(&c, &n) {
                prop_assert!(i.blocks > 0);
                prop_assert!((512..=4096).contains(&i.block_size));
                prop_assert!(i.max_transfer >= PAGE && i.max_transfer <= MAX_TRANSFER);
            }
        }
    }
}
