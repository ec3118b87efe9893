//! A user-space NVMe driver over a tunnelled function (NVM Express Base Specification 1.4:
//! §3.1 controller registers, §7.6.1 initialization, §4.2/4.6 submission and completion queue
//! entries, §4.3 PRPs, §5.15 Identify, §5.3/5.4 Create I/O CQ/SQ, §6.9/6.15 Read/Write).
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
//! PRP list page; slot *n* is command identifier *n*.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::mem::DmaBuffer;
use super::Completion;
use crate::host::dma::{Access, DmaError};
use crate::host::requester::RequestError;
use crate::host::vfio_user::{EventFd, IrqIndex};
use crate::host::RemoteFunction;

/// Bus address where the driver's memory is registered.
pub const IOVA: u64 = 0x40_0000_0000;
/// Memory page size the driver programs (CC.MPS = 0).
pub const PAGE: usize = 4096;
/// Largest transfer of one command (the controller's MDTS may lower it).
pub const MAX_TRANSFER: usize = 128 * 1024;
/// Largest queue depth the driver supports.
pub const MAX_DEPTH: usize = 255;

const ADMIN_ENTRIES: usize = 32;

mod reg {
    pub const CAP: u64 = 0x00;
    pub const VS: u64 = 0x08;
    pub const CC: u64 = 0x14;
    pub const CSTS: u64 = 0x1c;
    pub const AQA: u64 = 0x24;
    pub const ASQ: u64 = 0x28;
    pub const ACQ: u64 = 0x30;
    pub const DOORBELLS: u64 = 0x1000;
}

mod opc {
    pub const CREATE_SQ: u8 = 0x01;
    pub const CREATE_CQ: u8 = 0x05;
    pub const DELETE_SQ: u8 = 0x00;
    pub const DELETE_CQ: u8 = 0x04;
    pub const IDENTIFY: u8 = 0x06;
    pub const SET_FEATURES: u8 = 0x09;
    pub const WRITE: u8 = 0x01;
    pub const READ: u8 = 0x02;
}

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
    #[error("{cmd} failed: status code type {sct:#x}, status code {sc:#x}")]
    Status {
        /// Which command.
        cmd: &'static str,
        /// Status Code Type.
        sct: u8,
        /// Status Code.
        sc: u8,
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
    /// Status field (0 = success): SCT in bits 10:8, SC in bits 7:0.
    pub status: u16,
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

#[derive(Debug, Clone, Copy)]
struct Slot {
    busy: bool,
    started: Option<Instant>,
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
    doorbell_stride: u64,
    data_off: u64,
    prp_off: u64,
    ident_off: u64,
    slots: Vec<Slot>,
    free: Vec<u16>,
    irq: Option<EventFd>,
    admin_cid: u16,
    timeout: Duration,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

/// A 64-byte submission queue entry (§4.2).
#[derive(Debug, Default, Clone, Copy)]
struct Sqe {
    opcode: u8,
    cid: u16,
    nsid: u32,
    prp1: u64,
    prp2: u64,
    cdw: [u32; 6],
}

impl Sqe {
    fn bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0] = self.opcode;
        b[2..4].copy_from_slice(&self.cid.to_le_bytes());
        b[4..8].copy_from_slice(&self.nsid.to_le_bytes());
        b[24..32].copy_from_slice(&self.prp1.to_le_bytes());
        b[32..40].copy_from_slice(&self.prp2.to_le_bytes());
        for (i, d) in self.cdw.iter().enumerate() {
            b[40 + 4 * i..44 + 4 * i].copy_from_slice(&d.to_le_bytes());
        }
        b
    }
}

/// A completion queue entry (§4.6) if its phase tag is `phase`: (command id, status field
/// without the phase bit). Any 16 bytes are accepted; the caller checks the command id.
pub fn parse_cqe(cqe: &[u8; 16], phase: bool) -> Option<(u16, u16)> {
    let dw3 = le32(cqe, 12);
    if ((dw3 >> 16) & 1 == 1) != phase {
        return None;
    }
    Some((dw3 as u16, ((dw3 >> 17) & 0x7fff) as u16))
}

/// What the Identify Controller (CNS 01h) and Identify Namespace (CNS 00h) pages say that the
/// driver uses (§5.15.2.1, §5.15.2.2). The pages come from the card: any bytes are handled;
/// a namespace the driver cannot use is an error.
pub fn parse_identify(ctrl: &[u8], ns: &[u8]) -> Result<ControllerInfo, NvmeError> {
    if ctrl.len() < PAGE || ns.len() < PAGE {
        return Err(NvmeError::Unsupported(format!(
            "Identify pages of {} / {} bytes, expected {PAGE}",
            ctrl.len(),
            ns.len()
        )));
    }
    let mdts = ctrl[77];
    let max_transfer = if mdts == 0 {
        MAX_TRANSFER
    } else {
        (PAGE << mdts.min(16)).min(MAX_TRANSFER)
    };
    let nsze = u64::from_le_bytes([ns[0], ns[1], ns[2], ns[3], ns[4], ns[5], ns[6], ns[7]]);
    let flbas = (ns[26] & 0xf) as usize;
    let lbaf = le32(ns, 128 + 4 * flbas);
    let lbads = (lbaf >> 16) & 0xff;
    if !(9..=12).contains(&lbads) || nsze == 0 {
        return Err(NvmeError::Unsupported(format!(
            "namespace 1: {nsze} blocks of 2^{lbads} bytes"
        )));
    }
    Ok(ControllerInfo {
        vid: u16::from_le_bytes([ctrl[0], ctrl[1]]),
        serial: text(&ctrl[4..24]),
        model: text(&ctrl[24..64]),
        firmware: text(&ctrl[64..72]),
        version: (0, 0, 0),
        max_transfer,
        blocks: nsze,
        block_size: 1 << lbads,
    })
}

impl NvmeDriver {
    /// Bring the controller behind `f` up and create one I/O queue pair of `cfg.depth` slots.
    pub fn open(f: RemoteFunction, cfg: NvmeConfig) -> Result<Self, NvmeError> {
        let info = f.info();
        if info.class >> 8 != 0x0108 {
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
        // Layout: admin SQ, admin CQ, identify page, I/O SQ, I/O CQ, PRP pages, data.
        let pages = |bytes: usize| bytes.div_ceil(PAGE) as u64 * PAGE as u64;
        let asq = 0u64;
        let acq = asq + pages(ADMIN_ENTRIES * 64);
        let ident = acq + pages(ADMIN_ENTRIES * 16);
        let iosq = ident + PAGE as u64;
        let iocq = iosq + pages(entries as usize * 64);
        let prp = iocq + pages(entries as usize * 16);
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
            doorbell_stride: 4,
            data_off: data,
            prp_off: prp,
            ident_off: ident,
            slots: vec![
                Slot {
                    busy: false,
                    started: None
                };
                cfg.depth
            ],
            free: (0..cfg.depth as u16).rev().collect(),
            irq: None,
            admin_cid: 0,
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
            if csts & 2 != 0 && what != "disable" {
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
        let mqes = (cap & 0xffff) as usize + 1;
        if mqes < self.io.entries as usize {
            return Err(NvmeError::Invalid(format!(
                "queue depth {} exceeds the controller's {} entries",
                self.cfg.depth,
                mqes - 1
            )));
        }
        if (cap >> 37) & 1 == 0 {
            return Err(NvmeError::Unsupported(
                "controller lacks the NVM command set".into(),
            ));
        }
        let mpsmin = (cap >> 48) & 0xf;
        if mpsmin > 0 {
            return Err(NvmeError::Unsupported(format!(
                "minimum page size {} KiB > 4 KiB",
                4 << mpsmin
            )));
        }
        self.doorbell_stride = 4 << ((cap >> 32) & 0xf);
        self.timeout = Duration::from_millis(((cap >> 24) & 0xff).max(1) * 500);
        let vs = self.r32(reg::VS)?;
        self.info.version = ((vs >> 16) as u16, (vs >> 8) as u8, vs as u8);

        // §7.6.1: disable, wait for RDY = 0.
        let cc = self.r32(reg::CC)?;
        if cc & 1 != 0 {
            self.w32(reg::CC, cc & !1)?;
        }
        self.wait_csts("disable", |c| c & 1 == 0)?;
        let zero_q = |q: &Queue, esz: usize| self.mem.zero(q.sq_off, q.entries as usize * esz);
        zero_q(&self.admin, 64)?;
        self.mem.zero(self.admin.cq_off, ADMIN_ENTRIES * 16)?;
        let aqa = ((ADMIN_ENTRIES as u32 - 1) << 16) | (ADMIN_ENTRIES as u32 - 1);
        self.w32(reg::AQA, aqa)?;
        self.w64(reg::ASQ, IOVA + self.admin.sq_off)?;
        self.w64(reg::ACQ, IOVA + self.admin.cq_off)?;
        // EN, CSS = NVM, MPS = 4 KiB, round robin, IOSQES = 6, IOCQES = 4.
        self.w32(reg::CC, 1 | (6 << 16) | (4 << 20))?;
        self.wait_csts("become ready", |c| c & 1 == 1)?;

        // Identify controller (CNS 01h).
        let ctrl = self.identify(1, 0)?;
        // Identify namespace 1 (CNS 00h).
        let ns = self.identify(0, 1)?;
        let version = self.info.version;
        self.info = parse_identify(&ctrl, &ns)?;
        self.info.version = version;

        // One I/O queue pair (Number of Queues, 0-based counts).
        self.admin_cmd(
            "Set Features (Number of Queues)",
            Sqe {
                opcode: opc::SET_FEATURES,
                cdw: [0x07, 0, 0, 0, 0, 0],
                ..Sqe::default()
            },
        )?;
        let interrupts = self.cfg.completion == Completion::Interrupt;
        if interrupts {
            self.enable_msix()?;
            self.irq = Some(self.f.interrupt_eventfd(IrqIndex::Msix, 1)?);
        }
        self.mem
            .zero(self.io.sq_off, self.io.entries as usize * 64)?;
        self.mem
            .zero(self.io.cq_off, self.io.entries as usize * 16)?;
        let qsize = u32::from(self.io.entries - 1) << 16;
        self.admin_cmd(
            "Create I/O Completion Queue",
            Sqe {
                opcode: opc::CREATE_CQ,
                prp1: IOVA + self.io.cq_off,
                // QID 1; IV 1, IEN when interrupts are used, PC.
                cdw: [
                    qsize | 1,
                    (1 << 16) | (u32::from(interrupts) << 1) | 1,
                    0,
                    0,
                    0,
                    0,
                ],
                ..Sqe::default()
            },
        )?;
        self.admin_cmd(
            "Create I/O Submission Queue",
            Sqe {
                opcode: opc::CREATE_SQ,
                prp1: IOVA + self.io.sq_off,
                // QID 1, CQID 1, PC.
                cdw: [qsize | 1, (1 << 16) | 1, 0, 0, 0, 0],
                ..Sqe::default()
            },
        )?;
        Ok(())
    }

    /// MSI-X Enable, Function Mask clear (PCI Local Bus 3.0 §6.8.2.3).
    fn enable_msix(&self) -> Result<(), NvmeError> {
        let Some(m) = self.f.info().msix else {
            return Err(NvmeError::Unsupported("no MSI-X capability".into()));
        };
        let dw = self.f.config_read(m.cap)?;
        let ctl = ((dw >> 16) | 0x8000) & !0x4000;
        self.f.config_write(m.cap, (dw & 0xffff) | (ctl << 16))?;
        Ok(())
    }

    fn identify(&mut self, cns: u32, nsid: u32) -> Result<Vec<u8>, NvmeError> {
        self.mem.zero(self.ident_off, PAGE)?;
        self.admin_cmd(
            "Identify",
            Sqe {
                opcode: opc::IDENTIFY,
                nsid,
                prp1: IOVA + self.ident_off,
                cdw: [cns, 0, 0, 0, 0, 0],
                ..Sqe::default()
            },
        )?;
        let mut page = vec![0u8; PAGE];
        self.mem.read_at(self.ident_off, &mut page)?;
        Ok(page)
    }

    fn sq_doorbell(&self, q: &Queue) -> u64 {
        reg::DOORBELLS + 2 * u64::from(q.qid) * self.doorbell_stride
    }

    fn cq_doorbell(&self, q: &Queue) -> u64 {
        self.sq_doorbell(q) + self.doorbell_stride
    }

    /// Write an entry at the tail and ring the doorbell.
    fn push(&self, q: &mut Queue, sqe: &Sqe) -> Result<(), NvmeError> {
        self.mem
            .write_at(q.sq_off + u64::from(q.sq_tail) * 64, &sqe.bytes())?;
        q.sq_tail = (q.sq_tail + 1) % q.entries;
        self.w32(self.sq_doorbell(q), u32::from(q.sq_tail))
    }

    /// The next completion of `q`, if the controller posted one: (cid, status).
    fn pop(&self, q: &mut Queue) -> Result<Option<(u16, u16)>, NvmeError> {
        let mut cqe = [0u8; 16];
        self.mem
            .read_at(q.cq_off + u64::from(q.cq_head) * 16, &mut cqe)?;
        let Some(c) = parse_cqe(&cqe, q.phase) else {
            return Ok(None);
        };
        q.cq_head += 1;
        if q.cq_head == q.entries {
            q.cq_head = 0;
            q.phase = !q.phase;
        }
        Ok(Some(c))
    }

    fn admin_cmd(&mut self, cmd: &'static str, mut sqe: Sqe) -> Result<(), NvmeError> {
        self.admin_cid = self.admin_cid.wrapping_add(1);
        sqe.cid = self.admin_cid;
        let mut q = std::mem::replace(&mut self.admin, Queue::new(0, 0, 0, 1));
        let r = self.admin_roundtrip(&mut q, cmd, &sqe);
        self.admin = q;
        r
    }

    fn admin_roundtrip(
        &self,
        q: &mut Queue,
        cmd: &'static str,
        sqe: &Sqe,
    ) -> Result<(), NvmeError> {
        self.push(q, sqe)?;
        let t0 = Instant::now();
        loop {
            if let Some((cid, status)) = self.pop(q)? {
                self.w32(self.cq_doorbell(q), u32::from(q.cq_head))?;
                if cid != sqe.cid {
                    continue; // a stale completion (e.g. an earlier timed-out command)
                }
                if status != 0 {
                    return Err(NvmeError::Status {
                        cmd,
                        sct: ((status >> 8) & 7) as u8,
                        sc: status as u8,
                    });
                }
                return Ok(());
            }
            if t0.elapsed() > self.timeout {
                return Err(NvmeError::CommandTimeout {
                    cid: sqe.cid,
                    ms: self.timeout.as_millis(),
                });
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Copy `data` into the buffer of `slot` (before submitting a write from it).
    pub fn fill_slot(&self, slot: u16, data: &[u8]) -> Result<(), NvmeError> {
        if slot as usize >= self.cfg.depth || data.len() > MAX_TRANSFER {
            return Err(NvmeError::Invalid(format!(
                "slot {slot} / {} bytes",
                data.len()
            )));
        }
        self.mem
            .write_at(self.data_off + slot as u64 * MAX_TRANSFER as u64, data)?;
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
        self.mem
            .read_at(self.data_off + slot as u64 * MAX_TRANSFER as u64, buf)?;
        Ok(())
    }

    /// A free slot, if any (fill it, then [`submit`](Self::submit) it).
    pub fn take_slot(&mut self) -> Option<u16> {
        self.free.pop()
    }

    /// Submit Read or Write of `blocks` blocks at `lba` using `slot`'s buffer.
    pub fn submit(&mut self, slot: u16, op: IoOp, lba: u64, blocks: u32) -> Result<(), NvmeError> {
        let bytes = blocks as usize * self.info.block_size as usize;
        let s = self
            .slots
            .get(slot as usize)
            .copied()
            .ok_or_else(|| NvmeError::Invalid(format!("no slot {slot}")))?;
        if s.busy {
            return Err(NvmeError::Invalid(format!("slot {slot} is in flight")));
        }
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
        let buf = IOVA + self.data_off + u64::from(slot) * MAX_TRANSFER as u64;
        let pages = bytes.div_ceil(PAGE);
        // §4.3: PRP1 the first page; PRP2 the second page, or a PRP list of the rest.
        let prp2 = match pages {
            1 => 0,
            2 => buf + PAGE as u64,
            _ => {
                let list_off = self.prp_off + u64::from(slot) * PAGE as u64;
                let mut list = [0u8; MAX_TRANSFER / PAGE * 8];
                for i in 1..pages {
                    let e = buf + (i * PAGE) as u64;
                    list[(i - 1) * 8..i * 8].copy_from_slice(&e.to_le_bytes());
                }
                self.mem.write_at(list_off, &list[..(pages - 1) * 8])?;
                IOVA + list_off
            }
        };
        let sqe = Sqe {
            opcode: if op == IoOp::Read {
                opc::READ
            } else {
                opc::WRITE
            },
            cid: slot,
            nsid: 1,
            prp1: buf,
            prp2,
            cdw: [lba as u32, (lba >> 32) as u32, blocks - 1, 0, 0, 0],
        };
        self.slots[slot as usize] = Slot {
            busy: true,
            started: Some(Instant::now()),
        };
        let mut q = std::mem::replace(&mut self.io, Queue::new(1, 0, 0, 1));
        let r = self.push(&mut q, &sqe);
        self.io = q;
        r
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
        while let Some((cid, status)) = self.pop(q)? {
            let Some(s) = self.slots.get_mut(cid as usize).filter(|s| s.busy) else {
                tracing::warn!(cid, "completion for a command not in flight");
                continue;
            };
            let latency = s.started.map(|t| t.elapsed()).unwrap_or_default();
            *s = Slot {
                busy: false,
                started: None,
            };
            self.free.push(cid);
            n += 1;
            on_done(IoDone {
                slot: cid,
                status,
                latency,
            });
        }
        if n > 0 {
            self.w32(self.cq_doorbell(q), u32::from(q.cq_head))?;
        }
        Ok(n)
    }

    /// Wait until at least one command completes (or the command timeout passes) and reap.
    pub fn wait(&mut self, on_done: &mut impl FnMut(IoDone)) -> Result<usize, NvmeError> {
        let t0 = Instant::now();
        loop {
            let n = self.poll(on_done)?;
            if n > 0 || self.in_flight() == 0 {
                return Ok(n);
            }
            if t0.elapsed() > self.cfg.command_timeout {
                let cid = self.slots.iter().position(|s| s.busy).unwrap_or(0) as u16;
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
                if d.status != 0 {
                    failed.get_or_insert(NvmeError::Status {
                        cmd: if op == IoOp::Read { "Read" } else { "Write" },
                        sct: ((d.status >> 8) & 7) as u8,
                        sc: d.status as u8,
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
        self.admin_cmd(
            "Delete I/O Submission Queue",
            Sqe {
                opcode: opc::DELETE_SQ,
                cdw: [1, 0, 0, 0, 0, 0],
                ..Sqe::default()
            },
        )?;
        self.admin_cmd(
            "Delete I/O Completion Queue",
            Sqe {
                opcode: opc::DELETE_CQ,
                cdw: [1, 0, 0, 0, 0, 0],
                ..Sqe::default()
            },
        )?;
        let cc = self.r32(reg::CC)?;
        self.w32(reg::CC, (cc & !(3 << 14)) | (1 << 14))?;
        self.wait_csts("finish shutdown", |c| (c >> 2) & 3 == 2)?;
        self.w32(reg::CC, 0)?;
        self.wait_csts("disable", |c| c & 1 == 0)?;
        Ok(())
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use proptest::prelude::*;

    fn pages(nsze: u64, lbads: u8, mdts: u8) -> (Vec<u8>, Vec<u8>) {
        let mut c = vec![0u8; PAGE];
        c[0..2].copy_from_slice(&0x1b36u16.to_le_bytes());
        c[4..24].copy_from_slice(b"SERIAL01            ");
        c[24..64].copy_from_slice(&[b' '; 40]);
        c[24..29].copy_from_slice(b"MODEL");
        c[64..72].copy_from_slice(b"1.0     ");
        c[77] = mdts;
        let mut n = vec![0u8; PAGE];
        n[0..8].copy_from_slice(&nsze.to_le_bytes());
        n[26] = 1; // LBA format 1
        n[128 + 4 + 2] = lbads;
        (c, n)
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
    fn cqe_phase_and_status() {
        let mut e = [0u8; 16];
        // CID 7, phase 1, status SCT 0 / SC 0x80 (LBA out of range).
        e[12..16].copy_from_slice(&(7u32 | (1 << 16) | (0x80 << 17)).to_le_bytes());
        assert_eq!(parse_cqe(&e, true), Some((7, 0x80)));
        assert_eq!(parse_cqe(&e, false), None);
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

        #[test]
        fn any_cqe_parses(e in any::<[u8; 16]>(), phase in any::<bool>()) {
            let dw3 = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
            let got = parse_cqe(&e, phase);
            prop_assert_eq!(got.is_some(), ((dw3 >> 16) & 1 == 1) == phase);
            if let Some((cid, _)) = got {
                prop_assert_eq!(cid, dw3 as u16);
            }
        }
    }
}
