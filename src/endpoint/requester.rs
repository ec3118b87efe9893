//! The requester side of a function: DMA to host memory as memory read and write requests
//! (PCIe r5.0 §2.2.6.2 tags incl. 10-bit tags, §2.3.1.1 completion reassembly and Lower
//! Address/Byte Count checks, §2.2.7 Max Read Request Size and 4 KiB boundary, §2.8 completion
//! timeout, §7.5.1.1.3 Bus Master Enable).
//!
//! [`DmaHandle::read`] splits a read at Max Read Request Size and 4 KiB boundaries, gives each
//! request its own tag (5-, 8- or 10-bit tag space as the function's Device Control registers
//! allow), emits the MRd TLPs and blocks until every completion has been reassembled or the
//! completion timeout expires. Completions are delivered on the endpoint's TLP thread through
//! [`Requester::complete`], never on the caller's — so the caller must not be that thread.
//! [`DmaHandle::write`] emits posted MWr TLPs split at Max Payload Size and returns at once.
//! A tag whose request timed out is quarantined until a late completion for it turns up (or a
//! long quarantine passes), so a late completion is never mistaken for a newer request's data.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use thiserror::Error;

use super::function::FunctionShared;
use super::wire::{self, Bdf, CplStatus};

/// Why a DMA transfer failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DmaError {
    /// Bus Master Enable is clear in the function's Command register.
    #[error("DMA blocked: Bus Master Enable is clear")]
    BusMasterDisabled,
    /// No completion arrived within the completion timeout.
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
    /// The endpoint is shutting down (its outbound queue is gone).
    #[error("endpoint is shut down")]
    Shutdown,
    /// The request TLP could not be built (see [`crate::tlp::build`]).
    #[error(transparent)]
    Build(#[from] wire::WireError),
}

/// A DMA read in progress, shared by the caller and the TLP thread.
#[derive(Debug)]
struct Op {
    state: Mutex<OpState>,
    cv: Condvar,
}

#[derive(Debug)]
struct OpState {
    buf: Vec<u8>,
    outstanding: usize,
    error: Option<DmaError>,
}

#[derive(Debug)]
enum Slot {
    Idle,
    InFlight {
        op: Arc<Op>,
        offset: usize,
        len: usize,
        received: usize,
        addr: u64,
    },
    Stale(Instant),
}

/// Tag table of one function.
#[derive(Debug)]
pub(crate) struct Requester {
    slots: Mutex<Vec<Slot>>,
    freed: Condvar,
    timeout: Duration,
}

/// Counters of the requester.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RequesterStats {
    /// Completions that matched no outstanding request (dropped).
    pub unexpected_completions: u64,
}

impl Requester {
    pub(crate) fn new(timeout: Duration) -> Self {
        let mut v = Vec::with_capacity(1024);
        v.resize_with(1024, || Slot::Idle);
        Requester {
            slots: Mutex::new(v),
            freed: Condvar::new(),
            timeout,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take a free tag below `limit`, waiting (until `deadline`) while all are busy.
    fn alloc(&self, limit: usize, deadline: Instant) -> Option<(usize, MutexGuard<'_, Vec<Slot>>)> {
        let mut slots = self.lock();
        loop {
            let now = Instant::now();
            let quarantine = self.timeout * 4;
            let found = slots[..limit].iter().position(|s| match s {
                Slot::Idle => true,
                Slot::Stale(t) => now.duration_since(*t) > quarantine,
                Slot::InFlight { .. } => false,
            });
            if let Some(tag) = found {
                return Some((tag, slots));
            }
            if now >= deadline {
                return None;
            }
            let (g, _) = self
                .freed
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(|e| e.into_inner());
            slots = g;
        }
    }

    /// Deliver a completion addressed to this function. Returns `false` when it matched no
    /// outstanding request (an Unexpected Completion, which the caller counts).
    pub(crate) fn complete(
        &self,
        tag: u16,
        status: CplStatus,
        byte_count: u16,
        lower_addr: u8,
        poisoned: bool,
        payload: &[u8],
    ) -> bool {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(usize::from(tag)) else {
            return false;
        };
        let (op, offset, len, received, addr) = match slot {
            Slot::InFlight {
                op,
                offset,
                len,
                received,
                addr,
            } => (op.clone(), *offset, *len, received, *addr),
            Slot::Stale(_) => {
                *slot = Slot::Idle;
                self.freed.notify_all();
                return true;
            }
            Slot::Idle => return false,
        };
        let remaining = len - *received;
        let cur = addr + *received as u64;
        let bc = if byte_count == 0 {
            4096
        } else {
            usize::from(byte_count)
        };
        let mut err = None;
        let done;
        if status != CplStatus::Sc {
            err = Some(match status {
                CplStatus::Ca => DmaError::CompleterAbort { addr: cur },
                _ => DmaError::UnsupportedRequest { addr: cur },
            });
            done = true;
        } else if poisoned {
            err = Some(DmaError::Poisoned { addr: cur });
            done = true;
        } else if bc != remaining {
            err = Some(DmaError::MalformedCompletion {
                addr: cur,
                why: "byte count does not match the bytes still expected",
            });
            done = true;
        } else if u64::from(lower_addr) != cur & 0x7f {
            err = Some(DmaError::MalformedCompletion {
                addr: cur,
                why: "lower address does not match the next expected byte",
            });
            done = true;
        } else {
            let lead = usize::from(lower_addr & 3);
            let avail = payload.len().saturating_sub(lead).min(remaining);
            if avail == 0 {
                err = Some(DmaError::MalformedCompletion {
                    addr: cur,
                    why: "completion carries no data",
                });
                done = true;
            } else {
                let mut st = op.state.lock().unwrap_or_else(|e| e.into_inner());
                let at = offset + *received;
                st.buf[at..at + avail].copy_from_slice(&payload[lead..lead + avail]);
                drop(st);
                *received += avail;
                done = *received == len;
            }
        }
        if done {
            *slot = Slot::Idle;
            self.freed.notify_all();
            let mut st = op.state.lock().unwrap_or_else(|e| e.into_inner());
            st.outstanding -= 1;
            if st.error.is_none() {
                st.error = err;
            }
            op.cv.notify_all();
        }
        true
    }

    /// Forget every outstanding request (link reset, FLR): waiters see a timeout, tags are
    /// quarantined until a late completion or the quarantine period.
    pub(crate) fn abandon_all(&self) {
        let mut slots = self.lock();
        let now = Instant::now();
        for s in slots.iter_mut() {
            if let Slot::InFlight { op, .. } = s {
                let mut st = op.state.lock().unwrap_or_else(|e| e.into_inner());
                st.outstanding = st.outstanding.saturating_sub(1);
                if st.error.is_none() {
                    st.error = Some(DmaError::Timeout { addr: 0, len: 0 });
                }
                op.cv.notify_all();
                drop(st);
                *s = Slot::Stale(now);
            }
        }
    }
}

/// Issues DMA as one function. Cheap to clone; usable from any thread except the one that
/// delivers TLPs to the endpoint.
#[derive(Debug, Clone)]
pub struct DmaHandle {
    pub(crate) f: Arc<FunctionShared>,
}

impl DmaHandle {
    /// Whether Bus Master Enable is set.
    pub fn bus_master_enabled(&self) -> bool {
        self.f.decode().bus_master
    }

    /// Read `buf.len()` bytes of host memory at `addr`.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        if buf.is_empty() {
            return Ok(());
        }
        let d = self.f.decode();
        if !d.bus_master {
            return Err(DmaError::BusMasterDisabled);
        }
        let req = &self.f.requester;
        let tag_limit = if d.ten_bit_tags {
            1024
        } else if d.ext_tags {
            256
        } else {
            32
        };
        let op = Arc::new(Op {
            state: Mutex::new(OpState {
                buf: vec![0; buf.len()],
                outstanding: 0,
                error: None,
            }),
            cv: Condvar::new(),
        });
        let deadline = Instant::now() + req.timeout;
        let mrrs = usize::from(d.mrrs.max(128));
        let bdf = self.f.bdf();
        let mut off = 0usize;
        while off < buf.len() {
            let a = addr.wrapping_add(off as u64);
            let to_4k = 4096 - (a & 0xfff) as usize;
            let n = (buf.len() - off).min(mrrs).min(to_4k);
            let Some((tag, mut slots)) = req.alloc(tag_limit, deadline) else {
                self.fail_op(&op);
                return Err(DmaError::Timeout {
                    addr: a,
                    len: buf.len(),
                });
            };
            slots[tag] = Slot::InFlight {
                op: op.clone(),
                offset: off,
                len: n,
                received: 0,
                addr: a,
            };
            op.state
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .outstanding += 1;
            drop(slots);
            let mut tlp = Vec::with_capacity(16);
            if let Err(e) = wire::emit_mem_read(&mut tlp, bdf, tag as u16, a, n as u32) {
                self.fail_op(&op);
                return Err(e.into());
            }
            if !self.f.send(tlp) {
                self.fail_op(&op);
                return Err(DmaError::Shutdown);
            }
            off += n;
        }
        let mut st = op.state.lock().unwrap_or_else(|e| e.into_inner());
        while st.outstanding > 0 && st.error.is_none() {
            let now = Instant::now();
            if now >= deadline {
                drop(st);
                self.fail_op(&op);
                return Err(DmaError::Timeout {
                    addr,
                    len: buf.len(),
                });
            }
            st = op
                .cv
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if let Some(e) = st.error.clone() {
            drop(st);
            self.fail_op(&op);
            return Err(e);
        }
        buf.copy_from_slice(&st.buf);
        Ok(())
    }

    /// Quarantine the tags still held by `op`.
    fn fail_op(&self, op: &Arc<Op>) {
        let mut slots = self.f.requester.lock();
        let now = Instant::now();
        for s in slots.iter_mut() {
            if matches!(s, Slot::InFlight { op: o, .. } if Arc::ptr_eq(o, op)) {
                *s = Slot::Stale(now);
            }
        }
    }

    /// Write `data` to host memory at `addr` (posted: returns once queued).
    pub fn write(&self, addr: u64, data: &[u8]) -> Result<(), DmaError> {
        let d = self.f.decode();
        if !d.bus_master {
            return Err(DmaError::BusMasterDisabled);
        }
        let mps = usize::from(d.mps.max(128));
        let bdf = self.f.bdf();
        let mut off = 0usize;
        while off < data.len() {
            let a = addr.wrapping_add(off as u64);
            let to_4k = 4096 - (a & 0xfff) as usize;
            // Keep each TLP's DW-aligned span within MPS.
            let lead = (a & 3) as usize;
            let n = (data.len() - off).min(mps - lead).min(to_4k);
            let mut tlp = Vec::with_capacity(16 + n + 4);
            wire::emit_mem_write(&mut tlp, bdf, a, &data[off..off + n])?;
            if !self.f.send(tlp) {
                return Err(DmaError::Shutdown);
            }
            off += n;
        }
        Ok(())
    }

    /// The function's current Routing ID (the bus number is captured from config writes).
    pub fn requester_id(&self) -> Bdf {
        self.f.bdf()
    }
}
