//! The requester side of the appliance's functions: device DMA reads of host memory, run on
//! the shared sans-I/O requester [`crate::tlp::requester::Reads`] (PCIe r5.0 §2.2.6.2 tags in
//! the 5-, 8- or 10-bit space Device Control allows, §2.2.7 Max Read Request Size and the
//! 4 KiB rule, §2.3.1.1 completion reassembly with the Byte Count and Lower Address checks,
//! §2.8 completion timeout with quarantine of timed-out tags, §7.5.1.1.3 Bus Master Enable).
//!
//! Two halves meet here:
//! * device threads: [`DmaHandle::read`](super::DmaHandle::read) takes an `Op` from the
//!   function's `DmaQueue` pool, queues it and waits on the op's condition variable — a thin
//!   completion notification, nothing more (its only clock is a backstop for a driver that
//!   stopped polling the endpoint);
//! * the TLP thread: `DmaRequester` (owned by the proxy, never shared) admits queued ops into
//!   the core, emits their Memory Read requests, reassembles completions into the op's buffer
//!   and expires requests — all with the `now` the endpoint's driver passes to
//!   [`Proxy::poll`](super::Proxy::poll); this half reads no clock.
//!
//! Buffers are reused: an op (with its data buffer) goes back to the pool after each read, and
//! the core allocates nothing after construction. What still allocates per TLP is the outbound
//! queue itself, which carries one `Vec<u8>` per TLP to the driver.

use crate::sync::{CondvarExt, MutexExt};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::decode::Decode;
use super::wire::{self, Bdf, CplStatus};
use crate::tlp::requester::{
    CplFault, CplInfo, ReadEvent, Reads, RequestError, RequesterConfig, TagSpace,
};

/// How many reads of one function the core tracks at once; more wait in the queue. Each
/// device thread has at most one read in progress, so this is far above what models use.
const MAX_READS: usize = 64;

/// Why a DMA transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DmaError {
    /// Bus Master Enable is clear in the function's Command register.
    #[error("DMA blocked: Bus Master Enable is clear")]
    BusMasterDisabled,
    /// No completion arrived within the completion timeout (or no tag became free).
    #[error("completion timeout reading {len} bytes at host address {addr:#x}")]
    Timeout {
        /// Address of the first request that did not complete.
        addr: u64,
        /// Bytes requested.
        len: usize,
    },
    /// The host answered Unsupported Request (e.g. the address is outside every DMA window).
    #[error("host returned Unsupported Request for address {addr:#x}")]
    UnsupportedRequest {
        /// Address of the failed request.
        addr: u64,
    },
    /// The host answered Completer Abort.
    #[error("host returned Completer Abort for address {addr:#x}")]
    CompleterAbort {
        /// Address of the failed request.
        addr: u64,
    },
    /// The completion carried poisoned data.
    #[error("poisoned completion for address {addr:#x}")]
    Poisoned {
        /// Address of the failed request.
        addr: u64,
    },
    /// A completion broke the reassembly rules (wrong byte count or lower address).
    #[error("malformed completion for address {addr:#x}: {why}")]
    MalformedCompletion {
        /// Address of the request.
        addr: u64,
        /// What was wrong.
        why: &'static str,
    },
    /// The function was reset (Function Level Reset, hot reset, link down) with the read
    /// outstanding.
    #[error("function reset with a DMA read of host address {addr:#x} outstanding")]
    Reset {
        /// Address of the read.
        addr: u64,
    },
    /// The endpoint is shutting down (or the function was removed).
    #[error("endpoint is shut down")]
    Shutdown,
    /// A request TLP could not be built (an address or length the codec refuses).
    #[error("cannot build the DMA request: {0}")]
    Build(#[from] wire::TlpViewError),
}

impl DmaError {
    /// The DMA error for a failed request of the shared requester.
    fn from_request(e: RequestError, addr: u64, len: usize) -> DmaError {
        match e {
            RequestError::Timeout => DmaError::Timeout { addr, len },
            RequestError::LinkDown | RequestError::Reset => DmaError::Reset { addr },
            RequestError::UnsupportedRequest | RequestError::RetryStatus => {
                DmaError::UnsupportedRequest { addr }
            }
            RequestError::CompleterAbort => DmaError::CompleterAbort { addr },
            RequestError::Poisoned => DmaError::Poisoned { addr },
            RequestError::Malformed(f) => DmaError::MalformedCompletion {
                addr,
                why: match f {
                    CplFault::ByteCount => "byte count does not match the bytes still expected",
                    CplFault::LowerAddress => "lower address does not match the next expected byte",
                    CplFault::NoData => "completion carries no data",
                },
            },
            RequestError::InvalidRequest => DmaError::MalformedCompletion {
                addr,
                why: "request could not be built",
            },
        }
    }
}

/// One DMA read, shared by the device thread that waits for it and the TLP thread that runs
/// it. Reused from read to read (see [`DmaQueue::take_op`]).
#[derive(Debug, Default)]
pub(crate) struct Op {
    st: Mutex<OpState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
pub(crate) struct OpState {
    /// Host address of the first byte.
    pub(crate) addr: u64,
    /// The bytes, as they arrive.
    pub(crate) buf: Vec<u8>,
    /// Set once, by the TLP thread, when the read is over.
    pub(crate) result: Option<Result<(), DmaError>>,
}

impl Op {
    pub(crate) fn lock(&self) -> MutexGuard<'_, OpState> {
        self.st.lock_or_recover()
    }

    /// The read is over: record the result and wake the waiter.
    fn finish(&self, r: Result<(), DmaError>) {
        crate::probe::hit(crate::probe::Ev::DmaReadDone);
        let mut st = self.lock();
        if st.result.is_none() {
            st.result = Some(r);
        }
        self.cv.notify_all();
    }

    /// Wait until the read is over, or until `backstop` passes (a driver that stopped
    /// polling the endpoint), then let `f` copy the data out of a successful read. The flag
    /// says whether the TLP thread finished the read (and is done with the op).
    pub(crate) fn wait(
        &self,
        backstop: Duration,
        f: impl FnOnce(&OpState),
    ) -> (Result<(), DmaError>, bool) {
        let until = Instant::now() + backstop;
        let mut st = self.lock();
        loop {
            if let Some(r) = st.result.take() {
                crate::probe::hit(crate::probe::Ev::DmaReadWoken);
                if r.is_ok() {
                    f(&st);
                }
                return (r, true);
            }
            let now = Instant::now();
            if now >= until {
                let e = DmaError::Timeout {
                    addr: st.addr,
                    len: st.buf.len(),
                };
                return (Err(e), false);
            }
            st = self.cv.wait_timeout_or_recover(st, until - now).0;
        }
    }
}

#[derive(Debug, Default)]
struct QueueState {
    ops: VecDeque<Arc<Op>>,
    /// The function is gone: nothing more is accepted.
    closed: bool,
}

/// Where a function's device threads queue reads for the TLP thread, and the pool of ops they
/// reuse. Shared through the function's state.
#[derive(Debug, Default)]
pub(crate) struct DmaQueue {
    q: Mutex<QueueState>,
    pool: Mutex<Vec<Arc<Op>>>,
}

impl DmaQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.q.lock_or_recover()
    }

    /// An op for a new read: a pooled one when available (its buffer keeps its capacity).
    pub(crate) fn take_op(&self) -> Arc<Op> {
        self.pool.lock_or_recover().pop().unwrap_or_default()
    }

    /// Give back an op the TLP thread is done with.
    pub(crate) fn recycle(&self, op: Arc<Op>) {
        self.pool.lock_or_recover().push(op);
    }

    /// Queue a read. `allowed` is checked under the queue's lock, so a reset that clears Bus
    /// Master Enable and then drains the queue never leaves a read behind.
    pub(crate) fn push(
        &self,
        op: Arc<Op>,
        allowed: impl FnOnce() -> Result<(), DmaError>,
    ) -> Result<(), DmaError> {
        let mut q = self.lock();
        if q.closed {
            return Err(DmaError::Shutdown);
        }
        allowed()?;
        q.ops.push_back(op);
        Ok(())
    }

    fn pop(&self) -> Option<Arc<Op>> {
        self.lock().ops.pop_front()
    }

    /// Fail every queued read (`Reset`, or `Shutdown` when `close`: accept nothing more).
    fn drain(&self, close: bool) {
        let mut q = self.lock();
        q.closed |= close;
        for op in q.ops.drain(..) {
            let addr = op.lock().addr;
            op.finish(Err(if close {
                DmaError::Shutdown
            } else {
                DmaError::Reset { addr }
            }));
        }
    }
}

/// A function's DMA reads as the TLP thread runs them: the shared requester core plus the ops
/// its reads belong to.
#[derive(Debug)]
pub(crate) struct DmaRequester {
    reads: Reads<u16>,
    /// The op of each read the core tracks, by the index the core names it with.
    ops: Vec<Option<Arc<Op>>>,
    free: Vec<u16>,
}

impl DmaRequester {
    /// A requester with completion timeout `timeout` (quarantine: four timeouts).
    pub(crate) fn new(timeout: Duration) -> Self {
        DmaRequester {
            reads: Reads::new(RequesterConfig::with_timeout(timeout), MAX_READS),
            ops: vec![None; MAX_READS],
            free: (0..MAX_READS as u16).rev().collect(),
        }
    }

    /// Counters of the core.
    pub(crate) fn stats(&self) -> crate::tlp::requester::RequesterStats {
        self.reads.requester().stats()
    }

    fn release(&mut self, j: u16) -> Option<Arc<Op>> {
        release(&mut self.ops, &mut self.free, j)
    }

    /// Take queued reads into the core (as it has room), issue what tags allow, expire what
    /// timed out. `send` queues one TLP for the host.
    pub(crate) fn poll(
        &mut self,
        now: Instant,
        queue: &DmaQueue,
        d: &Decode,
        bdf: Bdf,
        mut send: impl FnMut(Vec<u8>),
    ) {
        let (ops, free) = (&mut self.ops, &mut self.free);
        self.reads.handle_timeout(now, |j, addr| {
            fail(ops, free, j, RequestError::Timeout, addr);
        });
        while self.reads.has_room() {
            let Some(op) = queue.pop() else { break };
            if !d.bus_master {
                op.finish(Err(DmaError::BusMasterDisabled));
                continue;
            }
            let (addr, len) = {
                let st = op.lock();
                (st.addr, st.buf.len())
            };
            let mrrs = u32::from(d.mrrs).clamp(128, 4096).next_power_of_two();
            let Some(j) = self.free.pop() else {
                op.finish(Err(DmaError::Shutdown));
                continue;
            };
            match self.reads.submit(now, j, addr, len as u32, mrrs) {
                Ok(()) => self.ops[usize::from(j)] = Some(op),
                Err(e) => {
                    self.free.push(j);
                    tracing::warn!("endpoint: DMA read of {len} bytes at {addr:#x} refused: {e}");
                    op.finish(Err(DmaError::MalformedCompletion {
                        addr,
                        why: "read could not be split into requests",
                    }));
                }
            }
        }
        self.reads
            .set_tag_space(TagSpace::from_device_control(d.ext_tags, d.ten_bit_tags));
        self.reads.poll_transmit(now, |tag, addr, len| {
            // The outbound queue takes ownership: one buffer per TLP.
            let mut tlp = Vec::with_capacity(24);
            match wire::emit_mem_read(&mut tlp, bdf, tag, addr, len) {
                Ok(()) => {
                    crate::probe::hit(crate::probe::Ev::DmaMrd);
                    send(tlp)
                }
                // The split hands out only valid requests; should one ever fail to build, the
                // read runs into its completion timeout instead of a malformed TLP going out.
                Err(e) => {
                    tracing::error!(%bdf, addr, len, error = %e, "cannot build a DMA read request")
                }
            }
        });
    }

    /// When [`DmaRequester::poll`] next has a timer to run.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.reads.poll_timeout()
    }

    /// A completion addressed to this function. `false` when it matched no request (an
    /// Unexpected Completion, which the caller counts).
    pub(crate) fn on_completion(
        &mut self,
        tag: u16,
        status: CplStatus,
        byte_count: u16,
        lower_address: u8,
        poisoned: bool,
        payload: &[u8],
    ) -> bool {
        let cpl = CplInfo {
            tag,
            status,
            byte_count,
            lower_address,
            poisoned,
        };
        crate::probe::hit(crate::probe::Ev::DmaCpl);
        match self.reads.on_completion(cpl, payload) {
            ReadEvent::Unexpected => false,
            ReadEvent::Absorbed => true,
            ReadEvent::Data {
                job,
                offset,
                bytes,
                done,
            } => {
                if let Some(op) = self.ops.get(usize::from(job)).and_then(Option::as_ref) {
                    let o = offset as usize;
                    if let Some(dst) = op.lock().buf.get_mut(o..o + bytes.len()) {
                        dst.copy_from_slice(bytes);
                    }
                }
                if done {
                    if let Some(op) = self.release(job) {
                        op.finish(Ok(()));
                    }
                }
                true
            }
            ReadEvent::Failed { job, error, addr } => {
                fail(&mut self.ops, &mut self.free, job, error, addr);
                true
            }
        }
    }

    /// Fail every read of the function, queued or in flight. `error`: [`RequestError::Reset`]
    /// (Function Level Reset: tags in flight are quarantined from `now`, the host may still
    /// answer), [`RequestError::LinkDown`] (hot reset, link down: every tag is free). `close`:
    /// the function is going away and accepts no more reads.
    pub(crate) fn fail_all(
        &mut self,
        now: Option<Instant>,
        queue: &DmaQueue,
        error: RequestError,
        close: bool,
    ) {
        queue.drain(close);
        let (ops, free) = (&mut self.ops, &mut self.free);
        let mut f = |j| {
            if let Some(op) = release(ops, free, j) {
                let addr = op.lock().addr;
                op.finish(Err(if close {
                    DmaError::Shutdown
                } else {
                    DmaError::Reset { addr }
                }));
            }
        };
        match now {
            Some(now) if error != RequestError::LinkDown => self.reads.reset(now, &mut f),
            // Without a time nothing was ever issued (reads start in `poll`): no tag to keep.
            _ => self.reads.link_down(&mut f),
        }
    }
}

fn release(ops: &mut [Option<Arc<Op>>], free: &mut Vec<u16>, j: u16) -> Option<Arc<Op>> {
    let op = ops.get_mut(usize::from(j))?.take()?;
    free.push(j);
    Some(op)
}

/// Read `j` failed at `addr`.
fn fail(ops: &mut [Option<Arc<Op>>], free: &mut Vec<u16>, j: u16, e: RequestError, addr: u64) {
    if let Some(op) = release(ops, free, j) {
        let len = op.lock().buf.len();
        op.finish(Err(DmaError::from_request(e, addr, len)));
    }
}
