//! The NVMe controller's worker thread (NVMe 1.4c §7.6.1 initialization, §7.6.2 shutdown,
//! §7.3 reset, §4.1 queue processing, §5 admin commands, §6 NVM commands).
//!
//! It owns every transition that could race with DMA: enabling (creating the admin queues),
//! resetting (tearing every queue down before CSTS.RDY reads 0, so no DMA follows what the host
//! sees as the end of the controller's activity), and shutdown (flushing the backing store
//! before CSTS.SHST reads "complete"). Commands are fetched in batches, round-robin across
//! submission queues: every entry between the controller's head and the host's tail (bounded by
//! the free slots of the completion queue and by `FETCH_MAX`) comes in with one DMA read, two
//! when the ring wraps — over the tunnel each DMA is a network round trip.

use crate::sync::CondvarExt;
use std::sync::Arc;

use zerocopy::IntoBytes;

use super::fetch;
use super::identify::{self, Identity};
use super::namespace::Namespace;
use super::prefetch::{Geometry, Prefetcher};
use super::prp::{self, HostMemory};
use super::{Cq, Ctrl, Shared, Sq, FETCH_MAX, MAX_TRANSFER, PAGE};
use crate::endpoint::device::{DeviceContext, DmaHandle, InterruptHandle, PendingRead};
use crate::pci::class::nvme::{aqa, cc, csts, Cqe, Sqe, Status, CQE_SIZE, SQE_SIZE as SQE};

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
    /// Fetch and run `n` entries of SQ `qid` starting at slot `first` (the controller's head
    /// has already moved past them, so completions report it after the whole batch).
    Batch {
        qid: u16,
        base: u64,
        size: u16,
        first: u16,
        n: u16,
        epoch: u64,
    },
    Aer {
        cid: u16,
        dw0: u32,
    },
}

/// Result of executing a command.
pub(super) struct Outcome {
    pub(super) status: Status,
    pub(super) dw0: u32,
    /// False for an Asynchronous Event Request, which completes later.
    pub(super) post: bool,
    pub(super) lba: u64,
}

impl Outcome {
    pub(super) fn ok(dw0: u32) -> Self {
        Outcome {
            status: Status::SUCCESS,
            dw0,
            post: true,
            lba: 0,
        }
    }
    pub(super) fn err(status: Status) -> Self {
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
    pub(super) shared: Arc<Shared>,
    pub(super) ns: Arc<Namespace>,
    pub(super) identity: Arc<Identity>,
    pub(super) dma: DmaHandle,
    pub(super) irq: InterruptHandle,
    pub(super) data: Vec<u8>,
    pub(super) segs: Vec<(u64, usize)>,
    pub(super) page: Box<[u8; 4096]>,
    pub(super) log: Vec<u8>,
    /// Submission-queue entries of the current batch.
    pub(super) sqes: Box<[Sqe; FETCH_MAX]>,
    /// Index in the batch of the I/O command running now (for its prefetched data).
    pub(super) current: Option<usize>,
    /// Write data read ahead of its command (see `prefetch`).
    pub(super) prefetch: Prefetcher,
    /// The doorbell-started reads of the current batch's first entries (see `fetch`).
    pub(super) ahead: Vec<PendingRead>,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<Shared>,
        ns: Arc<Namespace>,
        identity: Arc<Identity>,
        ctx: DeviceContext,
    ) -> Self {
        Worker {
            shared,
            ns,
            identity,
            dma: ctx.dma,
            irq: ctx.irq,
            data: vec![0; MAX_TRANSFER],
            segs: Vec::with_capacity(64),
            page: Box::new([0; 4096]),
            log: Vec::with_capacity(512),
            sqes: Box::new([Sqe::default(); FETCH_MAX]),
            current: None,
            prefetch: Prefetcher::new(),
            ahead: Vec::with_capacity(fetch::MAX_READS),
        }
    }

    pub(super) fn run(mut self) {
        while let Some(job) = self.next_job() {
            match job {
                Job::Aer { cid, dw0 } => self.post(0, cid, Outcome::ok(dw0), None),
                Job::Batch {
                    qid,
                    base,
                    size,
                    first,
                    n,
                    epoch,
                } => self.batch(qid, base, size, first, n, epoch),
            }
        }
    }

    /// Fetch a batch of submission-queue entries (one DMA read, two if the ring wraps) and run
    /// them in order, posting each completion as it finishes.
    fn batch(&mut self, qid: u16, base: u64, size: u16, first: u16, n: u16, epoch: u64) {
        let n = usize::from(n);
        crate::probe::hit(crate::probe::Ev::NvmeFetch);
        let entries = &mut self.sqes.as_mut_bytes()[..n * SQE];
        // The entries the doorbell's reads cover first, then the rest (split where the ring
        // wraps).
        let mut done = 0usize;
        let mut fetched = Ok(());
        for read in self.ahead.drain(..) {
            let k = (read.len() / SQE).min(n - done);
            if fetched.is_ok() {
                fetched = read.wait(&mut entries[done * SQE..(done + k) * SQE]);
            }
            done += k;
        }
        while fetched.is_ok() && done < n {
            let slot = (usize::from(first) + done) % usize::from(size);
            let run = (n - done).min(usize::from(size) - slot);
            fetched = self.dma.read(
                base + (slot * SQE) as u64,
                &mut entries[done * SQE..(done + run) * SQE],
            );
            done += run;
        }
        if let Err(e) = fetched {
            // A controller that cannot fetch its commands is dead: Controller Fatal.
            tracing::warn!("nvme: command fetch from SQ {qid} at {base:#x} failed: {e}");
            let mut c = self.shared.lock();
            if c.epoch == epoch {
                c.csts |= csts::CFS;
            }
            return;
        }
        self.prefetch.clear();
        let geometry = Geometry {
            blocks: self.ns.blocks(),
            block_size: self.ns.block_size(),
        };
        for k in 0..n {
            {
                // A reset, disable or stop abandons the rest of the batch: no command may run
                // (and DMA) after the host asked the controller to stop.
                let c = self.shared.lock();
                if c.stop || c.epoch != epoch || c.cc & cc::EN == 0 || c.csts & csts::CFS != 0 {
                    break;
                }
            }
            let cmd = self.sqes[k];
            // The command's data, completion and interrupt leave together.
            let _hold = self.dma.hold_wakeups();
            let out = if qid == 0 {
                self.admin(&cmd)
            } else {
                self.prefetch
                    .prefetch_from(&self.dma, geometry, &self.sqes[..n], k);
                self.current = Some(k);
                let out = self.io(&cmd);
                self.current = None;
                out
            };
            if out.post {
                self.post(qid, cmd.cid.get(), out, Some((epoch, &cmd)));
            }
        }
        self.prefetch.clear();
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
                if let Err(e) = self.ns.flush() {
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
                let n_q = c.sqs.len();
                for k in 0..n_q {
                    let qid = (c.rr + k) % n_q;
                    let Some(sq) = c.sqs[qid] else { continue };
                    if sq.head == sq.tail {
                        continue;
                    }
                    let room = c.cqs[usize::from(sq.cqid)].is_some_and(|q| !q.full());
                    if !room {
                        continue;
                    }
                    // Take every new entry whose completion is sure to find room.
                    let pending = (sq.tail + sq.size - sq.head) % sq.size;
                    let free = c.cqs[usize::from(sq.cqid)].map_or(0, |q| q.free());
                    let n = pending.min(free).min(FETCH_MAX as u16);
                    self.ahead.clear();
                    fetch::take(&mut c, qid, &sq, n, &mut self.ahead);
                    if let Some(s) = c.sqs[qid].as_mut() {
                        s.head = (s.head + n) % s.size;
                    }
                    c.rr = (qid + 1) % n_q;
                    return Some(Job::Batch {
                        qid: qid as u16,
                        base: sq.base,
                        size: sq.size,
                        first: sq.head,
                        n,
                        epoch: c.epoch,
                    });
                }
            }
            crate::probe::hit(crate::probe::Ev::WorkerWait);
            c = self.shared.wake.wait_or_recover(c);
            crate::probe::hit(crate::probe::Ev::WorkerWake);
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
        c.ahead
            .iter_mut()
            .for_each(std::collections::VecDeque::clear);
    }

    fn enable(c: &mut Ctrl) {
        let asqs = aqa::sq_entries(c.aqa);
        let acqs = aqa::cq_entries(c.aqa);
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
    fn post(&mut self, qid: u16, cid: u16, out: Outcome, origin: Option<(u64, &Sqe)>) {
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
                let nsid = cmd.nsid.get();
                let entry = identify::error_entry(count, qid, cid, out.status, out.lba, nsid);
                c.errors.push_back(entry);
            }
        }
        let Some(sq) = c.sqs[usize::from(qid)] else {
            return;
        };
        let cqid = usize::from(sq.cqid);
        let Some(mut cq) = c.cqs[cqid] else { return };
        while cq.full() {
            // Only an AER can find the queue full; wait for the host to consume entries.
            c = self.shared.wake.wait_or_recover(c);
            if c.stop || c.cc & cc::EN == 0 {
                return;
            }
            match c.cqs[cqid] {
                Some(q) => cq = q,
                None => return,
            }
        }
        let entry = Cqe::new(out.dw0, sq.head, qid, cid, out.status, cq.phase);
        let addr = cq.base + u64::from(cq.tail) * CQE_SIZE as u64;
        cq.tail = (cq.tail + 1) % cq.size;
        if cq.tail == 0 {
            cq.phase = !cq.phase;
        }
        c.cqs[cqid] = Some(cq);
        // Posted while holding the lock: a reset cannot slip between this write and the host
        // seeing CSTS.RDY = 0.
        if let Err(e) = self.dma.write(addr, entry.as_bytes()) {
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

    pub(super) fn dma_in(&mut self, len: usize) -> Result<(), Status> {
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

    pub(super) fn dma_out(&mut self, len: usize) -> Result<(), Status> {
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

    pub(super) fn map(&mut self, cmd: &Sqe, len: usize) -> Result<(), Status> {
        if cmd.psdt() != 0 || cmd.fuse() != 0 {
            return Err(Status::INVALID_FIELD);
        }
        prp::segments(
            &Dma(&self.dma),
            cmd.prp1.get(),
            cmd.prp2.get(),
            len,
            PAGE,
            &mut self.segs,
        )
    }

    /// Send `len` bytes of `self.data` to the command's buffer.
    pub(super) fn send_to_host(&mut self, cmd: &Sqe, len: usize) -> Result<(), Status> {
        self.map(cmd, len)?;
        self.dma_out(len)
    }
}
