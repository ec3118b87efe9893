//! The NVMe controller's worker thread (NVMe 1.4c §7.6.1 initialization, §7.6.2 shutdown,
//! §7.3 reset, §4.1 queue processing, §5 admin commands, §6 NVM commands).
//!
//! It owns every transition that could race with DMA: enabling (creating the admin queues),
//! resetting (tearing every queue down before CSTS.RDY reads 0, so no DMA follows what the host
//! sees as the end of the controller's activity), and shutdown (flushing the backing store
//! before CSTS.SHST reads "complete"). Commands are fetched one at a time, round-robin across
//! submission queues, only when their completion queue has room.

use std::sync::Arc;

use super::backend::Backend;
use super::identify::{self, ErrorEntry, Identity, MAX_IO_QUEUES, MDTS};
use super::prp::{self, HostMemory};
use super::spec::{admin, cc, csts, feat, nvm, Command, Completion, Status};
use super::{Cq, Ctrl, Shared, Sq, MAX_QUEUE_ENTRIES, MSIX_VECTORS};
use crate::endpoint::device::{DeviceContext, DmaHandle, InterruptHandle};

const PAGE: usize = 4096;
const MAX_TRANSFER: usize = PAGE << MDTS;

struct Dma<'a>(&'a DmaHandle);

impl HostMemory for Dma<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status> {
        self.0.read(addr, buf).map_err(|e| {
            tracing::debug!("nvme: DMA read failed: {e}");
            Status::DATA_TRANSFER
        })
    }
}

/// What the worker does next.
enum Job {
    Command { qid: u16, addr: u64, epoch: u64 },
    Aer { cid: u16, dw0: u32 },
}

/// Result of executing a command.
struct Outcome {
    status: Status,
    dw0: u32,
    /// False for an Asynchronous Event Request, which completes later.
    post: bool,
    lba: u64,
}

impl Outcome {
    fn ok(dw0: u32) -> Self {
        Outcome {
            status: Status::SUCCESS,
            dw0,
            post: true,
            lba: 0,
        }
    }
    fn err(status: Status) -> Self {
        Outcome {
            status,
            dw0: 0,
            post: true,
            lba: 0,
        }
    }
}

impl From<Result<u32, Status>> for Outcome {
    fn from(r: Result<u32, Status>) -> Self {
        match r {
            Ok(v) => Outcome::ok(v),
            Err(s) => Outcome::err(s),
        }
    }
}

pub(super) struct Worker {
    shared: Arc<Shared>,
    backend: Arc<Backend>,
    identity: Arc<Identity>,
    dma: DmaHandle,
    irq: InterruptHandle,
    data: Vec<u8>,
    segs: Vec<(u64, usize)>,
    page: Box<[u8; 4096]>,
    log: Vec<u8>,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        backend: Arc<Backend>,
        identity: Arc<Identity>,
        ctx: DeviceContext,
    ) -> Self {
        Worker {
            shared,
            backend,
            identity,
            dma: ctx.dma,
            irq: ctx.irq,
            data: vec![0; MAX_TRANSFER],
            segs: Vec::with_capacity(64),
            page: Box::new([0; 4096]),
            log: Vec::with_capacity(512),
        }
    }

    pub(super) fn run(mut self) {
        while let Some(job) = self.next_job() {
            match job {
                Job::Aer { cid, dw0 } => self.post(0, cid, Outcome::ok(dw0), None),
                Job::Command { qid, addr, epoch } => {
                    let mut raw = [0u8; 64];
                    if let Err(e) = self.dma.read(addr, &mut raw) {
                        // A controller that cannot fetch its commands is dead: Controller Fatal.
                        tracing::warn!("nvme: command fetch at {addr:#x} failed: {e}");
                        let mut c = self.shared.lock();
                        if c.epoch == epoch {
                            c.csts |= csts::CFS;
                        }
                        continue;
                    }
                    let cmd = Command::parse(&raw);
                    let out = if qid == 0 {
                        self.admin(&cmd)
                    } else {
                        self.io(&cmd)
                    };
                    if out.post {
                        self.post(qid, cmd.cid, out, Some((epoch, &cmd)));
                    }
                }
            }
        }
    }

    /// Wait for something to do; perform state transitions on the way. `None` = stop.
    fn next_job(&mut self) -> Option<Job> {
        let mut c = self.shared.lock();
        loop {
            if c.stop {
                return None;
            }
            if c.cc & cc::EN == 0 {
                if !c.quiesced() || c.csts & csts::CFS != 0 {
                    Self::reset(&mut c);
                    self.irq.set_intx(false);
                    self.shared.idle.notify_all();
                    continue;
                }
            } else if c.csts & (csts::RDY | csts::CFS) == 0 {
                Self::enable(&mut c);
                continue;
            }
            if cc::shn(c.cc) != 0 && c.csts & csts::SHST_MASK == csts::SHST_OCCURRING {
                drop(c);
                if let Err(e) = self.backend.flush() {
                    tracing::warn!("nvme: flush at shutdown failed: {e}");
                }
                c = self.shared.lock();
                c.csts = (c.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                continue;
            }
            if c.csts & csts::RDY != 0 && c.csts & csts::CFS == 0 {
                // Pending asynchronous events with an outstanding request.
                let admin_cq_room = c.cqs[0].is_some_and(|q| !q.full());
                if admin_cq_room && !c.aer_events.is_empty() && !c.aer_cids.is_empty() {
                    let dw0 = c.aer_events.pop_front().unwrap_or(0);
                    let cid = c.aer_cids.remove(0);
                    c.aer_masked |= 1 << (dw0 & 7);
                    return Some(Job::Aer { cid, dw0 });
                }
                let n = c.sqs.len();
                for k in 0..n {
                    let qid = (c.rr + k) % n;
                    let Some(sq) = c.sqs[qid] else { continue };
                    if sq.head == sq.tail {
                        continue;
                    }
                    let room = c.cqs[usize::from(sq.cqid)].is_some_and(|q| !q.full());
                    if !room {
                        continue;
                    }
                    let addr = sq.base + u64::from(sq.head) * 64;
                    if let Some(s) = c.sqs[qid].as_mut() {
                        s.head = (s.head + 1) % s.size;
                    }
                    c.rr = (qid + 1) % n;
                    return Some(Job::Command {
                        qid: qid as u16,
                        addr,
                        epoch: c.epoch,
                    });
                }
            }
            c = self.shared.wake.wait(c).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn reset(c: &mut Ctrl) {
        c.sqs.iter_mut().for_each(|q| *q = None);
        c.cqs.iter_mut().for_each(|q| *q = None);
        c.csts &= csts::SHST_MASK;
        c.epoch += 1;
        c.feat = super::Features::default();
        c.aer_cids.clear();
        c.aer_events.clear();
        c.aer_masked = 0;
        c.health.critical_warning = 0;
    }

    fn enable(c: &mut Ctrl) {
        let asqs = (c.aqa & 0xfff) + 1;
        let acqs = ((c.aqa >> 16) & 0xfff) + 1;
        let ok = cc::css(c.cc) == 0
            && cc::mps(c.cc) == 0
            && asqs >= 2
            && acqs >= 2
            && c.asq != 0
            && c.acq != 0;
        if !ok {
            tracing::warn!(
                "nvme: enable with invalid configuration (CC {:#x}, AQA {:#x}): controller fatal",
                c.cc,
                c.aqa
            );
            c.csts |= csts::CFS;
            return;
        }
        c.sqs[0] = Some(Sq {
            base: c.asq,
            size: asqs as u16,
            head: 0,
            tail: 0,
            cqid: 0,
        });
        c.cqs[0] = Some(Cq {
            base: c.acq,
            size: acqs as u16,
            head: 0,
            tail: 0,
            phase: true,
            iv: 0,
            ien: true,
        });
        c.csts |= csts::RDY;
    }

    /// Post a completion for a command from `qid` (the AER uses qid 0 and no epoch check).
    fn post(&mut self, qid: u16, cid: u16, out: Outcome, origin: Option<(u64, &Command)>) {
        let mut c = self.shared.lock();
        if let Some((epoch, _)) = origin {
            if c.epoch != epoch {
                return; // the controller was reset meanwhile: the command is gone
            }
        }
        if !out.status.is_success() {
            if let Some((_, cmd)) = origin {
                let count = c.health.error_entries + 1;
                c.health.error_entries = count;
                if c.errors.len() >= identify::ERROR_LOG_ENTRIES {
                    c.errors.pop_front();
                }
                c.errors.push_back(ErrorEntry {
                    count,
                    sqid: qid,
                    cid,
                    status: out.status.field(),
                    lba: out.lba,
                    nsid: cmd.nsid,
                });
            }
        }
        let Some(sq) = c.sqs[usize::from(qid)] else {
            return;
        };
        let cqid = usize::from(sq.cqid);
        let Some(mut cq) = c.cqs[cqid] else { return };
        while cq.full() {
            // Only an AER can find the queue full; wait for the host to consume entries.
            c = self.shared.wake.wait(c).unwrap_or_else(|e| e.into_inner());
            if c.stop || c.cc & cc::EN == 0 {
                return;
            }
            match c.cqs[cqid] {
                Some(q) => cq = q,
                None => return,
            }
        }
        let entry = Completion {
            dw0: out.dw0,
            sq_head: sq.head,
            sq_id: qid,
            cid,
            phase: cq.phase,
            status: out.status.field(),
        };
        let addr = cq.base + u64::from(cq.tail) * 16;
        cq.tail = (cq.tail + 1) % cq.size;
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        c.cqs[cqid] = Some(cq);
        // Posted while holding the lock: a reset cannot slip between this write and the host
        // seeing CSTS.RDY = 0.
        if let Err(e) = self.dma.write(addr, &entry.to_bytes()) {
            tracing::debug!("nvme: completion write failed: {e}");
            return;
        }
        if cq.ien {
            if self.irq.msix_enabled() {
                self.irq.signal_msix(cq.iv);
            } else {
                self.irq.set_intx(c.intx_level());
            }
        }
    }

    fn dma_in(&mut self, len: usize) -> Result<(), Status> {
        let mut at = 0;
        for &(addr, n) in &self.segs {
            self.dma
                .read(addr, &mut self.data[at..at + n])
                .map_err(|_| Status::DATA_TRANSFER)?;
            at += n;
        }
        debug_assert_eq!(at, len);
        Ok(())
    }

    fn dma_out(&mut self, len: usize) -> Result<(), Status> {
        let mut at = 0;
        for &(addr, n) in &self.segs {
            if at >= len {
                break;
            }
            let n = n.min(len - at);
            self.dma
                .write(addr, &self.data[at..at + n])
                .map_err(|_| Status::DATA_TRANSFER)?;
            at += n;
        }
        Ok(())
    }

    fn map(&mut self, cmd: &Command, len: usize) -> Result<(), Status> {
        if cmd.psdt != 0 || cmd.fuse != 0 {
            return Err(Status::INVALID_FIELD);
        }
        prp::segments(
            &Dma(&self.dma),
            cmd.prp1,
            cmd.prp2,
            len,
            PAGE,
            &mut self.segs,
        )
    }

    /// Send `len` bytes of `self.data` to the command's buffer.
    fn send_to_host(&mut self, cmd: &Command, len: usize) -> Result<(), Status> {
        self.map(cmd, len)?;
        self.dma_out(len)
    }

    fn admin(&mut self, cmd: &Command) -> Outcome {
        match cmd.opcode {
            admin::IDENTIFY => self.identify(cmd).into(),
            admin::CREATE_CQ => self.create_cq(cmd).into(),
            admin::CREATE_SQ => self.create_sq(cmd).into(),
            admin::DELETE_SQ => self.delete_sq(cmd).into(),
            admin::DELETE_CQ => self.delete_cq(cmd).into(),
            admin::GET_LOG_PAGE => self.get_log(cmd).into(),
            admin::SET_FEATURES => self.set_features(cmd).into(),
            admin::GET_FEATURES => self.get_features(cmd).into(),
            admin::ABORT => Outcome::ok(1), // bit 0 set: command not aborted
            admin::KEEP_ALIVE => Outcome::ok(0),
            admin::ASYNC_EVENT => {
                let mut c = self.shared.lock();
                if c.aer_cids.len() >= identify::AER_LIMIT {
                    return Outcome::err(Status::AER_LIMIT);
                }
                c.aer_cids.push(cmd.cid);
                self.shared.wake.notify_all();
                Outcome {
                    status: Status::SUCCESS,
                    dw0: 0,
                    post: false,
                    lba: 0,
                }
            }
            _ => Outcome::err(Status::INVALID_OPCODE),
        }
    }

    fn identify(&mut self, cmd: &Command) -> Result<u32, Status> {
        let cns = cmd.cdw(10) & 0xff;
        let csi = cmd.cdw(11) >> 24;
        match cns {
            0x00 => {
                if cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::namespace(&self.identity, self.backend.blocks(), 9, &mut self.page);
            }
            0x01 => identify::controller(&self.identity, &mut self.page),
            0x02 => {
                if cmd.nsid >= 0xffff_fffe {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::active_ns_list(cmd.nsid, &mut self.page);
            }
            0x03 => {
                if cmd.nsid != 1 {
                    return Err(Status::INVALID_NAMESPACE);
                }
                identify::ns_descriptors(&self.identity, &mut self.page);
            }
            // I/O Command Set specific Identify Controller for the NVM command set: no limits.
            0x06 if csi == 0 => self.page.fill(0),
            _ => return Err(Status::INVALID_FIELD),
        }
        self.data[..4096].copy_from_slice(&self.page[..]);
        self.send_to_host(cmd, 4096)?;
        Ok(0)
    }

    fn queue_limits(c: &Ctrl) -> (u16, u16) {
        c.feat
            .queues
            .map(|(s, q)| (s + 1, q + 1))
            .unwrap_or((MAX_IO_QUEUES, MAX_IO_QUEUES))
    }

    fn create_cq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = (cmd.cdw(10) & 0xffff) as u16;
        let size = (cmd.cdw(10) >> 16) + 1;
        let pc = cmd.cdw(11) & 1 != 0;
        let ien = cmd.cdw(11) & 2 != 0;
        let iv = (cmd.cdw(11) >> 16) as u16;
        let mut c = self.shared.lock();
        let (_, ncq) = Self::queue_limits(&c);
        if qid == 0 || qid > ncq || c.cqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Err(Status::INVALID_QSIZE);
        }
        if !pc || cmd.prp1 & 0xfff != 0 || cc::iocqes(c.cc) != 4 {
            return Err(Status::INVALID_FIELD);
        }
        if iv >= MSIX_VECTORS {
            return Err(Status::INVALID_VECTOR);
        }
        c.cqs[usize::from(qid)] = Some(Cq {
            base: cmd.prp1,
            size: size as u16,
            head: 0,
            tail: 0,
            phase: true,
            iv,
            ien,
        });
        Ok(0)
    }

    fn create_sq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = (cmd.cdw(10) & 0xffff) as u16;
        let size = (cmd.cdw(10) >> 16) + 1;
        let pc = cmd.cdw(11) & 1 != 0;
        let cqid = (cmd.cdw(11) >> 16) as u16;
        let mut c = self.shared.lock();
        let (nsq, _) = Self::queue_limits(&c);
        if qid == 0 || qid > nsq || c.sqs[usize::from(qid)].is_some() {
            return Err(Status::INVALID_QID);
        }
        if cqid == 0 || cqid > MAX_IO_QUEUES || c.cqs[usize::from(cqid)].is_none() {
            return Err(Status::CQ_INVALID);
        }
        if !(2..=MAX_QUEUE_ENTRIES).contains(&size) {
            return Err(Status::INVALID_QSIZE);
        }
        if !pc || cmd.prp1 & 0xfff != 0 || cc::iosqes(c.cc) != 6 {
            return Err(Status::INVALID_FIELD);
        }
        c.sqs[usize::from(qid)] = Some(Sq {
            base: cmd.prp1,
            size: size as u16,
            head: 0,
            tail: 0,
            cqid,
        });
        Ok(0)
    }

    fn delete_sq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = usize::from((cmd.cdw(10) & 0xffff) as u16);
        let mut c = self.shared.lock();
        if qid == 0 || qid > usize::from(MAX_IO_QUEUES) || c.sqs[qid].is_none() {
            return Err(Status::INVALID_QID);
        }
        c.sqs[qid] = None;
        Ok(0)
    }

    fn delete_cq(&mut self, cmd: &Command) -> Result<u32, Status> {
        let qid = (cmd.cdw(10) & 0xffff) as u16;
        let mut c = self.shared.lock();
        if qid == 0 || qid > MAX_IO_QUEUES || c.cqs[usize::from(qid)].is_none() {
            return Err(Status::INVALID_QID);
        }
        if c.sqs.iter().flatten().any(|s| s.cqid == qid) {
            return Err(Status::INVALID_QUEUE_DELETION);
        }
        c.cqs[usize::from(qid)] = None;
        let level = c.intx_level();
        drop(c);
        if !self.irq.msix_enabled() {
            self.irq.set_intx(level);
        }
        Ok(0)
    }

    fn get_log(&mut self, cmd: &Command) -> Result<u32, Status> {
        let lid = (cmd.cdw(10) & 0xff) as u8;
        let rae = cmd.cdw(10) & (1 << 15) != 0;
        let numd = (((cmd.cdw(11) & 0xffff) << 16) | (cmd.cdw(10) >> 16)) as usize + 1;
        let offset = u64::from(cmd.cdw(12)) | (u64::from(cmd.cdw(13)) << 32);
        let len = numd * 4;
        if len > MAX_TRANSFER || offset & 3 != 0 {
            return Err(Status::INVALID_FIELD);
        }
        {
            let mut c = self.shared.lock();
            match lid {
                0x01 => {
                    let entries: Vec<ErrorEntry> = c.errors.iter().copied().collect();
                    identify::error_log(&entries, &mut self.log);
                    if !rae {
                        c.aer_masked &= !1;
                    }
                }
                0x02 => {
                    let mut h = c.health;
                    h.power_on_hours = c.started.elapsed().as_secs() / 3600;
                    identify::smart_log(&h, &mut self.log);
                    if !rae {
                        c.aer_masked &= !2;
                    }
                }
                0x03 => identify::firmware_log(&self.identity.firmware, &mut self.log),
                _ => return Err(Status::INVALID_LOG_PAGE),
            }
            self.shared.wake.notify_all();
        }
        if offset >= self.log.len() as u64 {
            return Err(Status::INVALID_FIELD);
        }
        let src = &self.log[offset as usize..];
        let n = src.len().min(len);
        self.data[..len].fill(0);
        self.data[..n].copy_from_slice(&src[..n]);
        self.send_to_host(cmd, len)?;
        Ok(0)
    }

    fn set_features(&mut self, cmd: &Command) -> Result<u32, Status> {
        let fid = (cmd.cdw(10) & 0xff) as u8;
        if cmd.cdw(10) & (1 << 31) != 0 {
            return Err(Status::FEATURE_NOT_SAVEABLE);
        }
        let v = cmd.cdw(11);
        let mut c = self.shared.lock();
        match fid {
            feat::ARBITRATION => c.feat.arbitration = v,
            feat::POWER_MGMT => {
                if v & 0x1f != 0 {
                    return Err(Status::INVALID_FIELD); // only power state 0 exists
                }
                c.feat.power = v & 0xff;
            }
            feat::TEMP_THRESHOLD => {
                let tmpth = (v & 0xffff) as u16;
                let tmpsel = (v >> 16) & 0xf;
                let thsel = (v >> 20) & 3;
                if tmpsel != 0 || thsel > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                if thsel == 0 {
                    c.feat.temp_over = tmpth;
                } else {
                    c.feat.temp_under = tmpth;
                }
                let hot = identify::TEMPERATURE_K >= c.feat.temp_over
                    || identify::TEMPERATURE_K <= c.feat.temp_under;
                let was = c.health.critical_warning & 2 != 0;
                if hot {
                    c.health.critical_warning |= 2;
                    if !was && c.feat.async_events & 2 != 0 {
                        // SMART / health status, temperature threshold, SMART log.
                        c.async_event(1, 0x01, 0x02);
                        self.shared.wake.notify_all();
                    }
                } else {
                    c.health.critical_warning &= !2;
                }
            }
            feat::ERROR_RECOVERY => c.feat.error_recovery = v & 0x1_ffff,
            feat::VOLATILE_WC => c.feat.vwc = v & 1 != 0,
            feat::NUM_QUEUES => {
                let nsq = (v & 0xffff) as u16;
                let ncq = (v >> 16) as u16;
                if nsq == 0xffff || ncq == 0xffff {
                    return Err(Status::INVALID_FIELD);
                }
                if c.sqs[1..].iter().any(Option::is_some) || c.cqs[1..].iter().any(Option::is_some)
                {
                    return Err(Status::SEQUENCE_ERROR);
                }
                let s = nsq.min(MAX_IO_QUEUES - 1);
                let q = ncq.min(MAX_IO_QUEUES - 1);
                c.feat.queues = Some((s, q));
                return Ok(u32::from(s) | (u32::from(q) << 16));
            }
            feat::IRQ_COALESCE => c.feat.coalescing = v & 0xffff,
            feat::IRQ_CONFIG => {
                let iv = (v & 0xffff) as usize;
                if iv >= c.feat.vector_cd.len() {
                    return Err(Status::INVALID_FIELD);
                }
                c.feat.vector_cd[iv] = v & (1 << 16) != 0;
            }
            feat::WRITE_ATOMIC => c.feat.write_atomic = v & 1,
            feat::ASYNC_EVENT => c.feat.async_events = v & 0x3ff,
            _ => return Err(Status::INVALID_FIELD),
        }
        Ok(0)
    }

    fn get_features(&mut self, cmd: &Command) -> Result<u32, Status> {
        let fid = (cmd.cdw(10) & 0xff) as u8;
        let sel = (cmd.cdw(10) >> 8) & 7;
        let c = self.shared.lock();
        let default = super::Features::default();
        let f = if sel == 1 { &default } else { &c.feat };
        if sel == 3 {
            // Supported capabilities: everything here is changeable, nothing saveable.
            return match fid {
                feat::ARBITRATION..=feat::ASYNC_EVENT if fid != 3 => Ok(0b100),
                _ => Err(Status::INVALID_FIELD),
            };
        }
        if sel > 3 {
            return Err(Status::INVALID_FIELD);
        }
        Ok(match fid {
            feat::ARBITRATION => f.arbitration,
            feat::POWER_MGMT => f.power,
            feat::TEMP_THRESHOLD => {
                let v = cmd.cdw(11);
                if (v >> 16) & 0xf != 0 || (v >> 20) & 3 > 1 {
                    return Err(Status::INVALID_FIELD);
                }
                let t = if (v >> 20) & 3 == 0 {
                    f.temp_over
                } else {
                    f.temp_under
                };
                u32::from(t)
            }
            feat::ERROR_RECOVERY => f.error_recovery,
            feat::VOLATILE_WC => u32::from(f.vwc),
            feat::NUM_QUEUES => {
                let (s, q) = f.queues.unwrap_or((MAX_IO_QUEUES - 1, MAX_IO_QUEUES - 1));
                u32::from(s) | (u32::from(q) << 16)
            }
            feat::IRQ_COALESCE => f.coalescing,
            feat::IRQ_CONFIG => {
                let iv = (cmd.cdw(11) & 0xffff) as usize;
                let cd = *f.vector_cd.get(iv).ok_or(Status::INVALID_FIELD)?;
                iv as u32 | (u32::from(cd) << 16)
            }
            feat::WRITE_ATOMIC => f.write_atomic,
            feat::ASYNC_EVENT => f.async_events,
            _ => return Err(Status::INVALID_FIELD),
        })
    }

    fn io(&mut self, cmd: &Command) -> Outcome {
        let blocks = self.backend.blocks();
        let bs = u64::from(self.backend.block_size());
        if !(cmd.opcode == nvm::FLUSH && cmd.nsid == 0xffff_ffff) && cmd.nsid != 1 {
            return Outcome::err(Status::INVALID_NAMESPACE);
        }
        let slba = u64::from(cmd.cdw(10)) | (u64::from(cmd.cdw(11)) << 32);
        let nlb = u64::from(cmd.cdw(12) & 0xffff) + 1;
        let in_range = slba.checked_add(nlb).is_some_and(|e| e <= blocks);
        let fail = |status: Status| Outcome {
            status,
            dw0: 0,
            post: true,
            lba: slba,
        };
        match cmd.opcode {
            nvm::READ | nvm::WRITE => {
                if !in_range {
                    return fail(Status::LBA_OUT_OF_RANGE);
                }
                let len = (nlb * bs) as usize;
                if len > MAX_TRANSFER {
                    return fail(Status::INVALID_FIELD);
                }
                if let Err(s) = self.map(cmd, len) {
                    return fail(s);
                }
                let off = slba * bs;
                if cmd.opcode == nvm::READ {
                    if let Err(e) = self.backend.read_at(&mut self.data[..len], off) {
                        tracing::warn!("nvme: {e}");
                        self.shared.lock().health.media_errors += 1;
                        return fail(Status::READ_ERROR);
                    }
                    if let Err(s) = self.dma_out(len) {
                        return fail(s);
                    }
                    let mut c = self.shared.lock();
                    c.health.read_cmds += 1;
                    c.health.units_read += nlb;
                } else {
                    if let Err(s) = self.dma_in(len) {
                        return fail(s);
                    }
                    let fua = cmd.cdw(12) & (1 << 30) != 0;
                    let write_through = !self.shared.lock().feat.vwc;
                    let res = self
                        .backend
                        .write_at(&self.data[..len], off)
                        .and_then(|()| {
                            if fua || write_through {
                                self.backend.flush()
                            } else {
                                Ok(())
                            }
                        });
                    if let Err(e) = res {
                        tracing::warn!("nvme: {e}");
                        self.shared.lock().health.media_errors += 1;
                        return fail(Status::WRITE_FAULT);
                    }
                    let mut c = self.shared.lock();
                    c.health.write_cmds += 1;
                    c.health.units_written += nlb;
                }
                Outcome::ok(0)
            }
            nvm::FLUSH => match self.backend.flush() {
                Ok(()) => Outcome::ok(0),
                Err(e) => {
                    tracing::warn!("nvme: {e}");
                    fail(Status::WRITE_FAULT)
                }
            },
            nvm::WRITE_ZEROES => {
                if !in_range {
                    return fail(Status::LBA_OUT_OF_RANGE);
                }
                match self.backend.write_zeroes(slba * bs, nlb * bs) {
                    Ok(()) => Outcome::ok(0),
                    Err(e) => {
                        tracing::warn!("nvme: {e}");
                        fail(Status::WRITE_FAULT)
                    }
                }
            }
            nvm::DSM => {
                let nr = (cmd.cdw(10) & 0xff) as usize + 1;
                let deallocate = cmd.cdw(11) & (1 << 2) != 0;
                let len = nr * 16;
                if let Err(s) = self.map(cmd, len).and_then(|()| self.dma_in(len)) {
                    return Outcome::err(s);
                }
                let mut ranges = Vec::with_capacity(nr);
                for r in self.data[..len].chunks_exact(16) {
                    let n = u64::from(u32::from_le_bytes([r[4], r[5], r[6], r[7]]));
                    let s =
                        u64::from_le_bytes([r[8], r[9], r[10], r[11], r[12], r[13], r[14], r[15]]);
                    if s.checked_add(n).is_none_or(|e| e > blocks) {
                        return fail(Status::LBA_OUT_OF_RANGE);
                    }
                    ranges.push((s, n));
                }
                if deallocate {
                    for (s, n) in ranges {
                        if let Err(e) = self.backend.deallocate(s * bs, n * bs) {
                            tracing::warn!("nvme: {e}");
                            return fail(Status::WRITE_FAULT);
                        }
                    }
                }
                Outcome::ok(0)
            }
            _ => Outcome::err(Status::INVALID_OPCODE),
        }
    }
}
