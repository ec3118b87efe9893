//! The handle a device model issues DMA with (PCIe r5.0 §2.2.7 memory requests, §7.5.1.1.3
//! Bus Master Enable).
//!
//! [`DmaHandle::read`] queues the read for the endpoint's TLP thread and blocks the calling
//! device thread until it is over ([`DmaHandle::start_read`] queues it and returns a
//! [`PendingRead`] to wait on later — from any thread, the TLP thread included, which may
//! start a read but never wait for one): tags, Max Read Request Size splitting, completion
//! reassembly and the completion timeout are the shared requester's
//! ([`crate::tlp::requester`], run by `requester.rs` with the driver's explicit time); the wait
//! here is only the notification. The caller must therefore not be the thread that runs the
//! endpoint. [`DmaHandle::write`] emits posted MWr TLPs split at Max Payload Size and 4 KiB
//! and returns at once.

use std::sync::Arc;

use super::function::FunctionShared;
use super::requester::{DmaError, Op};
use super::wire::{self, Bdf};

/// Issues DMA as one function. Cheap to clone; usable from any thread except the one that
/// runs the endpoint.
#[derive(Debug, Clone)]
pub struct DmaHandle {
    pub(crate) f: Arc<FunctionShared>,
}

impl DmaHandle {
    /// Whether Bus Master Enable is set.
    pub fn bus_master_enabled(&self) -> bool {
        self.f.decode().bus_master
    }

    /// Read `buf.len()` bytes of host memory at `addr`, blocking until every completion has
    /// arrived or the read failed.
    pub fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), DmaError> {
        if buf.is_empty() {
            return Ok(());
        }
        self.start_read(addr, buf.len())?.wait(buf)
    }

    /// Start reading `len` (> 0) bytes of host memory at `addr` and return at once: the TLP
    /// thread issues the requests at its next poll while the caller does other work, and
    /// [`PendingRead::wait`] collects the data. Never blocks, so the TLP thread itself may
    /// call it (e.g. to fetch what a doorbell announced in the same pass that handled it).
    pub fn start_read(&self, addr: u64, len: usize) -> Result<PendingRead, DmaError> {
        if !self.f.decode().bus_master {
            return Err(DmaError::BusMasterDisabled);
        }
        let op = self.f.dma.take_op();
        {
            let mut st = op.lock();
            st.addr = addr;
            st.buf.clear();
            st.buf.resize(len.max(1), 0);
            st.result = None;
        }
        if let Err(e) = self.f.submit_dma(op.clone()) {
            self.f.dma.recycle(op);
            return Err(e);
        }
        Ok(PendingRead {
            f: self.f.clone(),
            op: Some(op),
            len,
        })
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
            if !self.f.wait_until_released() {
                return Err(DmaError::BusMasterDisabled);
            }
            crate::probe::hit(crate::probe::Ev::DmaMwr);
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

    /// Hold the wake-ups of the thread that sends the function's TLPs until the returned
    /// guard is dropped: DMA writes and MSI-X messages queued meanwhile go out together
    /// (a command's data, completion and interrupt in one frame where they fit). Long
    /// transfers still stream (a wake-up every 64 TLPs); DMA reads are never held.
    pub fn hold_wakeups(&self) -> WakeupHold {
        self.f.hold_wakeups();
        WakeupHold { f: self.f.clone() }
    }
}

/// Wake-ups held by [`DmaHandle::hold_wakeups`]; dropping it releases them.
#[derive(Debug)]
pub struct WakeupHold {
    f: Arc<FunctionShared>,
}

impl Drop for WakeupHold {
    fn drop(&mut self) {
        self.f.release_wakeups();
    }
}

/// A DMA read in progress ([`DmaHandle::start_read`]). Dropping it abandons the read: the
/// TLP thread still finishes it and the data goes nowhere.
#[derive(Debug)]
pub struct PendingRead {
    f: Arc<FunctionShared>,
    op: Option<Arc<Op>>,
    len: usize,
}

impl PendingRead {
    /// Bytes being read.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the read is of nothing (never: [`DmaHandle::start_read`] reads ≥ 1 byte).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Wait until the read is over and copy its first `buf.len()` bytes (at most
    /// [`len`](Self::len)) into `buf`. Must not be called on the TLP thread.
    pub fn wait(mut self, buf: &mut [u8]) -> Result<(), DmaError> {
        let Some(op) = self.op.take() else {
            return Err(DmaError::Shutdown);
        };
        let (r, finished) = op.wait(self.f.dma_backstop, |st| {
            let n = buf.len().min(st.buf.len());
            buf[..n].copy_from_slice(&st.buf[..n]);
        });
        // Only a read the TLP thread has finished goes back to the pool; after a backstop
        // timeout the op stays with the TLP thread, which drops it when done with it.
        if finished {
            self.f.dma.recycle(op);
        }
        r
    }
}

impl Drop for PendingRead {
    fn drop(&mut self) {
        // An abandoned read the TLP thread is done with goes back to the pool; one still in
        // flight stays with the TLP thread, which drops it when done.
        if let Some(op) = self.op.take() {
            if op.lock().result.is_some() {
                self.f.dma.recycle(op);
            }
        }
    }
}
