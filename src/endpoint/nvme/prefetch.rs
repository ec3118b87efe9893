//! Overlapped data fetch for Write commands (NVMe 1.4c §6.15; §4.1 lets a controller execute
//! the commands of a submission queue in any order).
//!
//! Over the tunnel a DMA read is a network round trip, and a Write needs one before it can
//! complete. When a fetched batch holds several Writes, the worker reads the data of up to
//! `SLOTS` of them at once (one scoped thread each, into preallocated buffers), then executes
//! the commands in order as before; a Write whose data is already here uses it. Only the data
//! read is overlapped: media writes and completions stay in submission order on the worker.

use super::prp::{self, HostMemory};
use super::spec::{nvm, Command, Status};
use super::worker::{Worker, PAGE};
use crate::endpoint::device::DmaHandle;

/// Writes whose data is read concurrently.
pub(super) const SLOTS: usize = 8;
/// Largest Write prefetched (bigger ones read their data when they run).
pub(super) const MAX_LEN: usize = 32 * 1024;

/// One prefetched Write's data.
pub(super) struct Slot {
    /// Index in the batch of the command this slot holds, if any.
    pub(super) cmd: Option<usize>,
    pub(super) len: usize,
    pub(super) data: Vec<u8>,
    pub(super) segs: Vec<(u64, usize)>,
    pub(super) result: Result<(), Status>,
}

impl Slot {
    pub(super) fn new() -> Self {
        Slot {
            cmd: None,
            len: 0,
            data: vec![0; MAX_LEN],
            segs: Vec::with_capacity(16),
            result: Ok(()),
        }
    }

    fn fetch(&mut self, dma: &DmaHandle, cmd: &Command) {
        struct Mem<'a>(&'a DmaHandle);
        impl HostMemory for Mem<'_> {
            fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Status> {
                self.0.read(addr, buf).map_err(|_| Status::DATA_TRANSFER)
            }
        }
        let len = self.len;
        self.result = prp::segments(&Mem(dma), cmd.prp1, cmd.prp2, len, PAGE, &mut self.segs)
            .and_then(|()| {
                let mut at = 0;
                for &(addr, n) in &self.segs {
                    dma.read(addr, &mut self.data[at..at + n])
                        .map_err(|_| Status::DATA_TRANSFER)?;
                    at += n;
                }
                Ok(())
            });
    }
}

impl Worker {
    /// The data length of `cmd` if it is a Write worth prefetching (valid in every way the
    /// Write path checks before its data transfer).
    fn prefetchable(&self, cmd: &Command) -> Option<usize> {
        if cmd.opcode != nvm::WRITE || cmd.nsid != 1 || cmd.psdt != 0 || cmd.fuse != 0 {
            return None;
        }
        let slba = u64::from(cmd.cdw(10)) | (u64::from(cmd.cdw(11)) << 32);
        let nlb = u64::from(cmd.cdw(12) & 0xffff) + 1;
        if slba
            .checked_add(nlb)
            .is_none_or(|e| e > self.backend.blocks())
        {
            return None;
        }
        let len = nlb * u64::from(self.backend.block_size());
        (len <= MAX_LEN as u64).then_some(len as usize)
    }

    /// Before running command `k` of the current batch (`n` commands in `self.sqes`): if it is
    /// a prefetchable Write whose data is not here yet, read the data of it and of the next
    /// prefetchable Writes of the batch (up to `SLOTS`) concurrently.
    pub(super) fn prefetch_from(&mut self, k: usize, n: usize) {
        if self.slots.iter().any(|s| s.cmd == Some(k)) {
            return;
        }
        let cmd = self.sqe(k);
        if self.prefetchable(&cmd).is_none() {
            return;
        }
        let mut used = 0;
        for j in k..n {
            if used == SLOTS {
                break;
            }
            let c = self.sqe(j);
            if let Some(len) = self.prefetchable(&c) {
                let slot = &mut self.slots[used];
                slot.cmd = Some(j);
                slot.len = len;
                used += 1;
            }
        }
        self.slots[used..].iter_mut().for_each(|s| s.cmd = None);
        if used < 2 {
            // Nothing to overlap: the Write reads its data itself.
            self.slots[0].cmd = None;
            return;
        }
        let dma = &self.dma;
        let sqes: &[u8] = &self.sqes[..];
        std::thread::scope(|s| {
            for slot in self.slots[..used].iter_mut() {
                let Some(j) = slot.cmd.take() else { continue };
                let cmd = parse(sqes, j);
                // The slot is claimed only once its data is here; if no thread can be made,
                // the Write simply reads its data itself when it runs.
                let spawned = std::thread::Builder::new()
                    .name("nvme-prefetch".into())
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        slot.fetch(dma, &cmd);
                        slot.cmd = Some(j);
                    });
                if let Err(e) = spawned {
                    tracing::debug!("nvme: no prefetch thread: {e}");
                }
            }
        });
    }

    /// Take the prefetched data of batch command `k` into `self.data`, if there is any.
    pub(super) fn take_prefetched(&mut self, len: usize) -> Option<Result<(), Status>> {
        let k = self.current?;
        let slot = self.slots.iter_mut().find(|s| s.cmd == Some(k))?;
        slot.cmd = None;
        if slot.len != len {
            return None;
        }
        if slot.result.is_ok() {
            self.data[..len].copy_from_slice(&slot.data[..len]);
        }
        Some(slot.result)
    }

    pub(super) fn sqe(&self, k: usize) -> Command {
        parse(&self.sqes[..], k)
    }
}

fn parse(sqes: &[u8], k: usize) -> Command {
    let mut raw = [0u8; 64];
    raw.copy_from_slice(&sqes[k * 64..(k + 1) * 64]);
    Command::parse(&raw)
}
