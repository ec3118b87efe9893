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
//! I/O hot path issues no MMIO read. The I/O CQ holds twice the queue depth, so the CQ head
//! doorbell goes out once per `depth` completions rather than after each (the controller
//! still always has room for every command in flight). The driver raises the function's Max
//! Read Request Size to 4 KiB ([`super::MAX_READ_REQUEST`]). Completions are polled or waited for on the MSI-X
//! eventfd of the I/O queue's vector ([`CompletionMode`]).
//!
//! Each of the `depth` command slots owns a data buffer of up to [`MAX_TRANSFER`] bytes and a
//! PRP list page; slot *n* is command identifier *n*. Besides Read and Write, any command can
//! be sent as is ([`NvmeDriver::submit_command`], [`NvmeDriver::admin_command`], as Linux's
//! passthrough ioctls do), entries can be queued and their doorbell rung once for a batch
//! ([`NvmeDriver::stage_command`], [`NvmeDriver::ring_doorbell`]), and admin commands that
//! complete later — Asynchronous Event Requests — are submitted with
//! [`NvmeDriver::admin_submit`] and reaped with [`NvmeDriver::admin_completions`].
//!
//! This file: the types, bring-up, the queue mechanics both queues use, and shutdown;
//! `admin.rs`: the admin queue's API; `io.rs`: the I/O queue's.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use zerocopy::{FromBytes, FromZeros, IntoBytes};

use super::mem::DmaBuffer;
use super::{AccessError, CompletionMode};
use crate::host::dma::Access;
use crate::host::vfio_user::{EventFd, IrqIndex};
use crate::host::RemoteFunction;
use crate::pci::class::nvme::cns;
use crate::pci::class::nvme::identify::ascii;
use crate::pci::class::nvme::{
    aqa, cap, cc, csts, feat, reg, vs, Cqe, IdentifyController, IdentifyNamespace, Sqe, Status,
    CLASS_NVM, CQES_LOG2, CQE_SIZE, IDENTIFY_SIZE, MIN_PAGE_SIZE, SQES_LOG2, SQE_SIZE,
};

mod admin;
mod io;

/// Bus address where the driver's memory is registered.
pub const IOVA: u64 = 0x40_0000_0000;
/// Memory page size the driver programs (CC.MPS = 0).
pub const PAGE: usize = MIN_PAGE_SIZE;
/// Largest transfer of one command (the controller's MDTS may lower it).
pub const MAX_TRANSFER: usize = 128 * 1024;
/// Largest queue depth the driver supports.
pub const MAX_DEPTH: usize = 255;
/// The MSI-X vector of the I/O completion queue (vector 0 is the admin queue's, §3.1.4).
pub const IO_VECTOR: u16 = 1;
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
    /// Reaching the function failed: a register access, DMA memory or an interrupt eventfd.
    #[error(transparent)]
    Access(#[from] AccessError),
    /// The function is not an NVMe controller this driver can run.
    #[error("unsupported controller: {0}")]
    Unsupported(#[from] Unsupported),
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
    Invalid(#[from] InvalidRequest),
    /// A command got no completion in time.
    #[error("no completion for command {cid} within {ms} ms")]
    CommandTimeout {
        /// Command identifier.
        cid: u16,
        /// How long we waited.
        ms: u128,
    },
}

super::access_error_sources!(NvmeError);

/// Why a function is not an NVMe controller this driver can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Unsupported {
    /// The class code is not NVM Express (01 08 xx).
    #[error("class {0:06x} is not NVM Express (0108xx)")]
    NotNvme(u32),
    /// BAR0 cannot hold the registers and the doorbells.
    #[error("BAR0 of {0} bytes is smaller than 8 KiB")]
    SmallBar0(u64),
    /// CAP reads all-ones.
    #[error("CAP reads all-ones")]
    CapAllOnes,
    /// CSTS reads all-ones.
    #[error("CSTS reads all-ones (controller gone or link down)")]
    CstsAllOnes,
    /// CAP.CSS lacks the NVM command set.
    #[error("controller lacks the NVM command set")]
    NoNvmCommandSet,
    /// CAP.MPSMIN is above the 4 KiB pages this driver uses.
    #[error("minimum page size {0} KiB > 4 KiB")]
    MinPageSize(u64),
    /// No MSI-X capability (the driver's interrupt mode needs it).
    #[error("no MSI-X capability")]
    NoMsix,
    /// An Identify data structure shorter than [`IDENTIFY_SIZE`].
    #[error("Identify CNS {cns:02x}h data of {len} bytes, expected {IDENTIFY_SIZE}")]
    IdentifySize {
        /// Which structure (Controller or Namespace Structure value).
        cns: u8,
        /// Bytes given.
        len: usize,
    },
    /// Namespace 1 is empty or has a block size outside 512 B..=4 KiB.
    #[error("namespace 1: {blocks} blocks of 2^{lbads} bytes")]
    Namespace {
        /// NSZE.
        blocks: u64,
        /// LBA data size exponent of the formatted LBA format.
        lbads: u8,
    },
}

/// A request the driver cannot express.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidRequest {
    /// The configured queue depth is outside what the driver supports.
    #[error("queue depth {0} not in 1..={MAX_DEPTH}")]
    Depth(usize),
    /// The configured queue depth exceeds CAP.MQES.
    #[error("queue depth {depth} exceeds the controller's {max} entries")]
    DepthOverController {
        /// Configured depth.
        depth: usize,
        /// The controller's largest depth.
        max: usize,
    },
    /// No such slot, or a buffer larger than a slot's.
    #[error("slot {slot} / {len} bytes")]
    SlotBuffer {
        /// The slot.
        slot: u16,
        /// Bytes given.
        len: usize,
    },
    /// No such slot.
    #[error("no slot {0}")]
    NoSlot(u16),
    /// The slot is in flight.
    #[error("slot {0} is in flight")]
    SlotBusy(u16),
    /// Every slot is in use.
    #[error("no free slot")]
    NoFreeSlot,
    /// An operation that needs an idle I/O queue while commands are in flight.
    #[error("needs an idle queue ({0} commands in flight)")]
    QueueBusy(usize),
    /// Zero blocks, or more than one command may move.
    #[error("{blocks} blocks ({bytes} bytes): not in 1..={max} bytes")]
    TransferSize {
        /// Blocks asked for.
        blocks: u32,
        /// Their bytes.
        bytes: usize,
        /// Largest transfer.
        max: usize,
    },
    /// More data than a slot's buffer holds.
    #[error("{0} bytes: a slot holds at most {MAX_TRANSFER}")]
    SlotTransfer(usize),
    /// More admin command data than the admin buffer holds.
    #[error("admin data of {0} bytes (at most {ADMIN_MAX_TRANSFER})")]
    AdminTransfer(usize),
    /// Too many [`NvmeDriver::admin_submit`] commands outstanding.
    #[error("{MAX_ASYNC_ADMIN} admin commands already outstanding")]
    AdminOutstanding,
    /// A log page read that is empty or not a whole number of dwords.
    #[error("log page read of {0} bytes: not a whole number of dwords")]
    LogPageSize(usize),
    /// The range runs past the namespace.
    #[error("LBA {lba}+{blocks} beyond the namespace's {size} blocks")]
    BeyondNamespace {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Namespace size in blocks.
        size: u64,
    },
    /// A buffer that is not whole blocks.
    #[error("{len} bytes is not a multiple of the {block}-byte block")]
    NotBlocks {
        /// Bytes given.
        len: usize,
        /// Block size.
        block: usize,
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
    /// The submission queue the completion names (the driver's I/O SQ is 1).
    pub sq_id: u16,
    /// Time from submission to the driver seeing the completion.
    pub latency: Duration,
}

/// Driver settings.
#[derive(Debug, Clone, Copy)]
pub struct NvmeConfig {
    /// I/O queue depth (command slots), 1..=255.
    pub depth: usize,
    /// Poll or use MSI-X.
    pub completion: CompletionMode,
    /// Timeout of a single command.
    pub command_timeout: Duration,
}

impl Default for NvmeConfig {
    fn default() -> Self {
        Self {
            depth: 32,
            completion: CompletionMode::Interrupt,
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

/// Where the driver's pointers into one queue pair stand (diagnostics: what a test or a
/// debugger checks the controller against, e.g. that a completion batch wrapped the CQ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueuePointers {
    /// Queue identifier (0 admin, 1 I/O).
    pub qid: u16,
    /// Entries of the submission ring.
    pub entries: u16,
    /// Entries of the completion ring (the I/O CQ holds twice the depth).
    pub cq_entries: u16,
    /// The next SQ slot the driver writes (the tail it rings, or will ring, the doorbell with).
    pub sq_tail: u16,
    /// The next CQ slot the driver reads (the head it reports in the CQ head doorbell).
    pub cq_head: u16,
    /// The phase tag the driver expects of a new entry at `cq_head` (§4.6: it starts at 1
    /// and inverts each time the controller wraps the CQ).
    pub phase: bool,
}

#[derive(Debug)]
struct Queue {
    qid: u16,
    sq_off: u64,
    cq_off: u64,
    /// Entries of the SQ.
    entries: u16,
    /// Entries of the CQ (the I/O CQ is larger than its SQ, see [`Queue::lazy`]).
    cq_entries: u16,
    sq_tail: u16,
    cq_head: u16,
    phase: bool,
    /// Completions reaped since the CQ head doorbell was last written.
    unreported: u16,
    /// How many reaped completions may go unreported: 0 rings the CQ head doorbell after
    /// every reap.
    lazy: u16,
}

impl Queue {
    fn pointers(&self) -> QueuePointers {
        QueuePointers {
            qid: self.qid,
            entries: self.entries,
            cq_entries: self.cq_entries,
            sq_tail: self.sq_tail,
            cq_head: self.cq_head,
            phase: self.phase,
        }
    }

    fn new(qid: u16, sq_off: u64, cq_off: u64, entries: u16) -> Self {
        Self::with_cq(qid, sq_off, cq_off, entries, entries, 0)
    }

    /// A queue pair whose CQ has `cq_entries` and whose CQ head doorbell is written once
    /// `lazy` + 1 completions were reaped.
    fn with_cq(
        qid: u16,
        sq_off: u64,
        cq_off: u64,
        entries: u16,
        cq_entries: u16,
        lazy: u16,
    ) -> Self {
        Self {
            qid,
            sq_off,
            cq_off,
            entries,
            cq_entries,
            sq_tail: 0,
            cq_head: 0,
            phase: true,
            unreported: 0,
            lazy,
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
struct MemLayout {
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
    at: MemLayout,
    slots: Vec<SlotState>,
    free: Vec<u16>,
    /// Entries written to the I/O SQ whose doorbell is not rung yet.
    staged: usize,
    irq: Option<EventFd>,
    /// Interrupts counted on `irq` so far.
    io_interrupts: u64,
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
    let short = |cns, len| Unsupported::IdentifySize { cns, len };
    let (c, _) = IdentifyController::ref_from_prefix(ctrl)
        .map_err(|_| short(cns::CONTROLLER, ctrl.len()))?;
    let (n, _) =
        IdentifyNamespace::ref_from_prefix(ns).map_err(|_| short(cns::NAMESPACE, ns.len()))?;
    let max_transfer = if c.mdts == 0 {
        MAX_TRANSFER
    } else {
        (PAGE << c.mdts.min(16)).min(MAX_TRANSFER)
    };
    let nsze = n.nsze.get();
    let lbads = n.lba_format().lbads;
    if !(9..=12).contains(&lbads) || nsze == 0 {
        return Err(Unsupported::Namespace {
            blocks: nsze,
            lbads,
        }
        .into());
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
            return Err(Unsupported::NotNvme(info.class).into());
        }
        if info.bars[0].size < 0x2000 {
            return Err(Unsupported::SmallBar0(info.bars[0].size).into());
        }
        if cfg.depth == 0 || cfg.depth > MAX_DEPTH {
            return Err(InvalidRequest::Depth(cfg.depth).into());
        }
        let entries = (cfg.depth + 1) as u16;
        // The I/O CQ holds twice the depth: the controller always has room for every command
        // in flight as long as at most `depth` reaped entries go unreported, so the CQ head
        // doorbell is written once per `depth` completions instead of after each one (a
        // posted write less per command, and no burst behind the next SQ doorbell). §4.1:
        // the head a controller sees may lag; it only limits what the controller posts.
        let cq_entries = 2 * cfg.depth as u16 + 1;
        // Layout: admin SQ, admin CQ, admin data and its PRP list, I/O SQ, I/O CQ, PRP pages,
        // data.
        let pages = |bytes: usize| bytes.div_ceil(PAGE) as u64 * PAGE as u64;
        let asq = 0u64;
        let acq = asq + pages(ADMIN_ENTRIES * SQE_SIZE);
        let admin_data = acq + pages(ADMIN_ENTRIES * CQE_SIZE);
        let admin_prp = admin_data + ADMIN_MAX_TRANSFER as u64;
        let iosq = admin_prp + PAGE as u64;
        let iocq = iosq + pages(entries as usize * SQE_SIZE);
        let prp = iocq + pages(cq_entries as usize * CQE_SIZE);
        let data = prp + (cfg.depth * PAGE) as u64;
        let total = data + (cfg.depth * MAX_TRANSFER) as u64;
        let mem = Arc::new(DmaBuffer::new(total as usize));
        super::set_max_read_request(&f, super::MAX_READ_REQUEST)?;
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
            io: Queue::with_cq(1, iosq, iocq, entries, cq_entries, 0),
            dstrd: 0,
            at: MemLayout {
                admin_data,
                admin_prp,
                prp,
                data,
            },
            slots: vec![SlotState::Free; cfg.depth],
            free: (0..cfg.depth as u16).rev().collect(),
            staged: 0,
            irq: None,
            io_interrupts: 0,
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

    /// The driver's pointers into the admin queue pair (diagnostics).
    pub fn admin_queue_pointers(&self) -> QueuePointers {
        self.admin.pointers()
    }

    /// The driver's pointers into the I/O queue pair (diagnostics).
    pub fn io_queue_pointers(&self) -> QueuePointers {
        self.io.pointers()
    }

    /// Interrupts the I/O queue's MSI-X vector ([`IO_VECTOR`]) has signalled so far, those not
    /// yet consumed by a [`wait`](Self::wait) included (diagnostics: it proves where the
    /// controller routes I/O completions). Always 0 with [`CompletionMode::Poll`].
    pub fn io_interrupts(&mut self) -> Result<u64, NvmeError> {
        if let Some(fd) = &self.irq {
            self.io_interrupts += fd.wait_timeout(Duration::ZERO)?;
        }
        Ok(self.io_interrupts)
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
                return Err(Unsupported::CstsAllOnes.into());
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
            return Err(Unsupported::CapAllOnes.into());
        }
        let mqes = usize::from(cap::mqes(cap)) + 1;
        if mqes < self.io.entries as usize {
            return Err(InvalidRequest::DepthOverController {
                depth: self.cfg.depth,
                max: mqes - 1,
            }
            .into());
        }
        // A CQ as large as the controller allows, up to twice the depth; what it holds beyond
        // `depth` entries is how many completions may go unreported (see `open`).
        self.io.cq_entries = self.io.cq_entries.min(mqes as u16);
        self.io.lazy = self.io.cq_entries - 1 - self.cfg.depth as u16;
        if cap & cap::CSS_NVM == 0 {
            return Err(Unsupported::NoNvmCommandSet.into());
        }
        let mpsmin = cap::mpsmin(cap);
        if mpsmin > 0 {
            return Err(Unsupported::MinPageSize(4u64 << mpsmin).into());
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
        let interrupts = self.cfg.completion == CompletionMode::Interrupt;
        if interrupts {
            self.enable_msix()?;
            self.irq = Some(
                self.f
                    .interrupt_eventfd(IrqIndex::Msix, u32::from(IO_VECTOR))?,
            );
        }
        let (entries, cq_entries) = (self.io.entries, self.io.cq_entries);
        self.mem
            .zero(self.io.sq_off, usize::from(entries) * SQE_SIZE)?;
        self.mem
            .zero(self.io.cq_off, usize::from(cq_entries) * CQE_SIZE)?;
        // QID 1 on IO_VECTOR (interrupts enabled when MSI-X is used), physically contiguous.
        let cq = Sqe::create_io_cq(
            1,
            u32::from(cq_entries),
            IOVA + self.io.cq_off,
            IO_VECTOR,
            interrupts,
        );
        self.admin_ok("Create I/O Completion Queue", cq, Data::None)?;
        let sq = Sqe::create_io_sq(1, u32::from(entries), IOVA + self.io.sq_off, 1);
        self.admin_ok("Create I/O Submission Queue", sq, Data::None)?;
        Ok(())
    }

    fn enable_msix(&self) -> Result<(), NvmeError> {
        let Some(m) = self.f.info().msix else {
            return Err(Unsupported::NoMsix.into());
        };
        Ok(super::enable_msix(&self.f, m.cap)?)
    }

    // --- Queue mechanics (admin and I/O) ---

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
        if q.cq_head == q.cq_entries {
            q.cq_head = 0;
            q.phase = !q.phase;
        }
        Ok(Some(cqe))
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
mod tests;
